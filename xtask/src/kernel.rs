//! Guest kernels: finding the current Debian package, downloading and unpacking it into the
//! cache, collecting the modules the guest needs, and building its initramfs.
//!
//! Cache layout, per kernel package (`~/.cache/oxd-xtask/kernels/NAME/`):
//! - `vmlinuz`, `release`  the kernel image and its release string (`uname -r`)
//! - `modules/NAME.ko`     decompressed modules, and `modules/order` (load order, one a line)
//! - `prepared`            marker written last by the preparation step (holds its recipe)
//! - `initramfs.cpio`      busybox + modules + `/init`, with `initramfs.stamp` (its inputs)

use std::{
    collections::{BTreeMap, BTreeSet},
    env, fmt, fs,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{anyhow, bail, Context, Result};
use clap::ValueEnum;

use crate::util::{self, read_optional, write_file};

/// The modules the guest must load to mount its root; their dependencies come along.
/// `virtio_pci` is not a dependency of the 9p transport but provides its PCI device.
pub(crate) const ROOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

/// Bump when the preparation or the initramfs layout changes, to rebuild cached results.
const RECIPE_VERSION: u32 = 2;

/// Where busybox-static installs its binary on the host.
pub(crate) const BUSYBOX: &str = "/bin/busybox";

/// The guest kernel series the project is tested on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Series {
    #[value(name = "6.1")]
    V6_1,
    #[value(name = "6.12")]
    V6_12,
}

impl Series {
    pub(crate) const ALL: [Series; 2] = [Series::V6_1, Series::V6_12];

    /// The regular expression given to `apt-cache search --names-only`.
    pub(crate) fn apt_pattern(self) -> &'static str {
        match self {
            Series::V6_1 => r"^linux-image-6\.1\.0-[0-9]+-amd64$",
            Series::V6_12 => r"^linux-image-6\.12\.[0-9]+\+deb12-amd64$",
        }
    }

    /// The number that orders packages of this series (the ABI number on 6.1, the patch level
    /// on 6.12), or `None` if the name is not a package of this series.
    pub(crate) fn package_rank(self, name: &str) -> Option<u64> {
        let middle = match self {
            Series::V6_1 => name
                .strip_prefix("linux-image-6.1.0-")?
                .strip_suffix("-amd64")?,
            Series::V6_12 => name
                .strip_prefix("linux-image-6.12.")?
                .strip_suffix("+deb12-amd64")?,
        };
        if middle.is_empty() || !middle.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        middle.parse().ok()
    }
}

impl fmt::Display for Series {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Series::V6_1 => "6.1",
            Series::V6_12 => "6.12",
        })
    }
}

/// A kernel ready to boot.
#[derive(Clone, Debug)]
pub(crate) struct PreparedKernel {
    pub series: Series,
    pub package: String,
    pub release: String,
    pub vmlinuz: PathBuf,
    pub initramfs: PathBuf,
    /// Modules in load order (for reports).
    pub modules: Vec<String>,
}

/// Picks the newest package of `series` from `apt-cache search` output.
pub(crate) fn pick_package(series: Series, apt_cache_output: &str) -> Option<String> {
    apt_cache_output
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|name| series.package_rank(name).map(|rank| (rank, name)))
        .max()
        .map(|(_, name)| name.to_string())
}

/// The cache directory of xtask: `${XDG_CACHE_HOME:-$HOME/.cache}/oxd-xtask`.
pub(crate) fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("oxd-xtask"));
    }
    let home = env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| anyhow!("neither XDG_CACHE_HOME nor HOME is set"))?;
    Ok(PathBuf::from(home).join(".cache").join("oxd-xtask"))
}

fn apt_search(series: Series) -> Result<String> {
    util::output(
        Command::new("apt-cache")
            .args(["search", "--names-only"])
            .arg(series.apt_pattern()),
    )
}

/// Finds the newest kernel package of a series, refreshing the package lists once if needed.
pub(crate) fn resolve_package(series: Series, log: &dyn Fn(&str)) -> Result<String> {
    if let Some(name) = pick_package(series, &apt_search(series)?) {
        return Ok(name);
    }
    log(&format!(
        "no {series} kernel package known to apt; running apt-get update"
    ));
    crate::setup::apt_get_update()?;
    pick_package(series, &apt_search(series)?).ok_or_else(|| {
        anyhow!(
            "apt-cache finds no package matching {} even after apt-get update",
            series.apt_pattern()
        )
    })
}

/// The kernel packages of `series` already prepared in the cache, newest first (the fallback
/// when the archive cannot be reached).
fn cached_packages(series: Series) -> Result<Vec<String>> {
    let dir = cache_dir()?.join("kernels");
    let Ok(entries) = fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut found: Vec<(u64, String)> = entries
        .filter_map(std::result::Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|name| series.package_rank(&name).map(|rank| (rank, name)))
        .filter(|(_, name)| dir.join(name).join("prepared").is_file())
        .collect();
    found.sort();
    Ok(found.into_iter().rev().map(|(_, name)| name).collect())
}

/// Resolves, downloads, unpacks and prepares the newest kernel of `series`, and builds its
/// initramfs. Everything is cached; `log` receives one line per action taken.
pub(crate) fn prepare(series: Series, log: &dyn Fn(&str)) -> Result<PreparedKernel> {
    let package = match resolve_package(series, log) {
        Ok(name) => name,
        Err(err) => match cached_packages(series)?.into_iter().next() {
            Some(name) => {
                log(&format!(
                    "warning: {err:#}; using the cached kernel package {name}"
                ));
                name
            }
            None => return Err(err),
        },
    };
    let dir = cache_dir()?.join("kernels").join(&package);
    match prepare_package(series, &package, &dir, log) {
        Ok(kernel) => Ok(kernel),
        Err(err) => {
            // A newer package that cannot be fetched should not stop work with an older one.
            let fallback = cached_packages(series)?
                .into_iter()
                .find(|name| *name != package);
            match fallback {
                Some(name) => {
                    log(&format!(
                        "warning: cannot prepare {package}: {err:#}; using the cached {name}"
                    ));
                    let dir = cache_dir()?.join("kernels").join(&name);
                    prepare_package(series, &name, &dir, log)
                }
                None => Err(err),
            }
        }
    }
}

fn recipe() -> String {
    format!(
        "recipe {RECIPE_VERSION}\nmodules {}\n",
        ROOT_MODULES.join(" ")
    )
}

fn prepare_package(
    series: Series,
    package: &str,
    dir: &Path,
    log: &dyn Fn(&str),
) -> Result<PreparedKernel> {
    let modules_dir = dir.join("modules");
    let vmlinuz = dir.join("vmlinuz");
    let release_file = dir.join("release");
    let marker = dir.join("prepared");
    if read_optional(&marker)?.as_deref() != Some(recipe().as_str()) {
        // Work in a directory of our own, so that concurrent runs do not collide, and keep
        // only what booting needs: the unpacked package is large.
        let scratch = dir.join(format!("scratch.{}", std::process::id()));
        let prepared = prepare_in_scratch(package, &scratch, dir, log);
        remove_if_exists(&scratch)?;
        prepared?;
        write_file(&marker, recipe())?;
    }
    let release = fs::read_to_string(&release_file)
        .with_context(|| format!("cannot read {}", release_file.display()))?
        .trim()
        .to_string();
    let order_file = modules_dir.join("order");
    let modules: Vec<String> = fs::read_to_string(&order_file)
        .with_context(|| format!("cannot read {}", order_file.display()))?
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    let initramfs = build_initramfs(dir, &modules_dir, &modules, log)?;
    Ok(PreparedKernel {
        series,
        package: package.to_string(),
        release,
        vmlinuz,
        initramfs,
        modules,
    })
}

/// Downloads and unpacks the package in `scratch`, then moves the kernel image, its release
/// string and the needed modules into the kernel's cache directory `dir`.
fn prepare_in_scratch(package: &str, scratch: &Path, dir: &Path, log: &dyn Fn(&str)) -> Result<()> {
    remove_if_exists(scratch)?;
    let modules_dir = dir.join("modules");
    let root = download_and_unpack(package, scratch, log)?;
    let release = find_release(&root)?;
    log(&format!("collecting modules of {release}"));
    let new_modules = scratch.join("modules");
    let order = collect_modules(&root, &release, &new_modules)?;
    write_file(&new_modules.join("order"), order.join("\n") + "\n")?;
    let boot_image = root.join("boot").join(format!("vmlinuz-{release}"));
    let new_vmlinuz = scratch.join("vmlinuz");
    fs::copy(&boot_image, &new_vmlinuz).with_context(|| {
        format!(
            "cannot copy {} (missing from the package?)",
            boot_image.display()
        )
    })?;
    remove_if_exists(&modules_dir)?;
    rename(&new_modules, &modules_dir)?;
    rename(&new_vmlinuz, &dir.join("vmlinuz"))?;
    write_file(&dir.join("release"), format!("{release}\n"))?;
    Ok(())
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to)
        .with_context(|| format!("cannot rename {} to {}", from.display(), to.display()))
}

/// Downloads the package into `scratch` and unpacks it there; returns the unpacked tree.
fn download_and_unpack(package: &str, scratch: &Path, log: &dyn Fn(&str)) -> Result<PathBuf> {
    let download = scratch.join("download");
    fs::create_dir_all(&download)
        .with_context(|| format!("cannot create {}", download.display()))?;
    log(&format!("downloading {package}"));
    util::output(
        Command::new("apt-get")
            .arg("download")
            .arg(package)
            .current_dir(&download),
    )?;
    let deb = fs::read_dir(&download)
        .with_context(|| format!("cannot list {}", download.display()))?
        .filter_map(std::result::Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| anyhow!("apt-get download {package} left no .deb file"))?;
    log(&format!("unpacking {}", deb.display()));
    let root = scratch.join("root");
    util::output(Command::new("dpkg").arg("-x").arg(&deb).arg(&root))?;
    remove_if_exists(&download)?;
    Ok(root)
}

/// The kernel release: the single directory under `lib/modules/`.
fn find_release(root: &Path) -> Result<String> {
    let modules = root.join("lib/modules");
    let mut names: Vec<String> = fs::read_dir(&modules)
        .with_context(|| format!("cannot list {}", modules.display()))?
        .filter_map(std::result::Result::ok)
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    match names.len() {
        1 => Ok(names.remove(0)),
        0 => bail!("no kernel release directory under {}", modules.display()),
        _ => bail!(
            "several kernel releases under {}: {}",
            modules.display(),
            names.join(", ")
        ),
    }
}

/// The name the kernel gives a module file: its base name without `.ko*`, `-` read as `_`.
pub(crate) fn module_name(file_name: &str) -> Option<String> {
    let stem = file_name
        .strip_suffix(".ko")
        .or_else(|| file_name.strip_suffix(".ko.xz"))
        .or_else(|| file_name.strip_suffix(".ko.zst"))
        .or_else(|| file_name.strip_suffix(".ko.gz"))?;
    Some(stem.replace('-', "_"))
}

fn index_modules(dir: &Path, index: &mut BTreeMap<String, PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let path = entry.path();
        let kind = entry
            .file_type()
            .with_context(|| format!("cannot stat {}", path.display()))?;
        if kind.is_dir() {
            index_modules(&path, index)?;
        } else if let Some(name) = entry.file_name().to_str().and_then(module_name) {
            index.insert(name, path);
        }
    }
    Ok(())
}

/// Names of the modules built into the kernel, from `modules.builtin`.
pub(crate) fn parse_builtin(modules_builtin: &str) -> BTreeSet<String> {
    modules_builtin
        .lines()
        .filter_map(|line| line.trim().rsplit('/').next())
        .filter_map(module_name)
        .collect()
}

/// Computes a load order for `roots` and their dependencies (dependencies first).
/// `depends(name)` returns `Ok(Some(deps))` for a loadable module and `Ok(None)` for one built
/// into the kernel (which is left out, along with anything only it would need).
pub(crate) fn load_order(
    roots: &[&str],
    mut depends: impl FnMut(&str) -> Result<Option<Vec<String>>>,
) -> Result<Vec<String>> {
    fn visit(
        name: &str,
        depends: &mut dyn FnMut(&str) -> Result<Option<Vec<String>>>,
        visiting: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) -> Result<()> {
        if done.contains(name) {
            return Ok(());
        }
        if visiting.iter().any(|v| v == name) {
            bail!(
                "module dependency cycle: {} -> {name}",
                visiting.join(" -> ")
            );
        }
        visiting.push(name.to_string());
        if let Some(deps) = depends(name)? {
            for dep in deps {
                visit(&dep, depends, visiting, done, order)
                    .with_context(|| format!("needed by module {name}"))?;
            }
            order.push(name.to_string());
        }
        visiting.pop();
        done.insert(name.to_string());
        Ok(())
    }
    let mut visiting = Vec::new();
    let mut done = BTreeSet::new();
    let mut order = Vec::new();
    for root in roots {
        visit(root, &mut depends, &mut visiting, &mut done, &mut order)?;
    }
    Ok(order)
}

/// Parses `modinfo -F depends` output: a comma-separated list, possibly empty.
pub(crate) fn parse_depends(s: &str) -> Vec<String> {
    s.split([',', '\n'])
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.replace('-', "_"))
        .collect()
}

/// Decompresses a module file into `dest` (a plain `.ko`).
fn decompress_module(src: &Path, dest: &Path) -> Result<()> {
    let name = src.to_string_lossy();
    let tool = if name.ends_with(".ko.xz") {
        Some("xz")
    } else if name.ends_with(".ko.zst") {
        Some("zstd")
    } else if name.ends_with(".ko.gz") {
        Some("gzip")
    } else {
        None
    };
    let Some(tool) = tool else {
        fs::copy(src, dest)
            .with_context(|| format!("cannot copy {} to {}", src.display(), dest.display()))?;
        return Ok(());
    };
    let out =
        fs::File::create(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    let mut cmd = Command::new(tool);
    cmd.arg("-dc").arg(src).stdout(out);
    util::run(&mut cmd).with_context(|| format!("cannot decompress {}", src.display()))
}

/// Copies the needed modules, decompressed, into `out_dir` and returns their load order.
fn collect_modules(root: &Path, release: &str, out_dir: &Path) -> Result<Vec<String>> {
    let tree = root.join("lib/modules").join(release);
    let mut index = BTreeMap::new();
    index_modules(&tree.join("kernel"), &mut index)?;
    let builtin_file = tree.join("modules.builtin");
    let builtin = parse_builtin(&read_optional(&builtin_file)?.unwrap_or_default());
    remove_if_exists(out_dir)?;
    fs::create_dir_all(out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    load_order(ROOT_MODULES, |name| {
        let Some(src) = index.get(name) else {
            if builtin.contains(name) {
                return Ok(None);
            }
            bail!(
                "module {name} is neither in {} nor listed in {}",
                tree.join("kernel").display(),
                builtin_file.display()
            );
        };
        let dest = out_dir.join(format!("{name}.ko"));
        decompress_module(src, &dest)?;
        let deps = util::output(
            Command::new(util::system_tool("modinfo"))
                .args(["-F", "depends"])
                .arg(&dest),
        )?;
        Ok(Some(parse_depends(&deps)))
    })
}

/// Stage 1 of the guest: runs from the initramfs, mounts the host's root (read-only, under a
/// tmpfs overlay) and the repository, and switches into them. Per-run settings come from the
/// run directory named by `oxd.run=` on the kernel command line (relative to the repository).
const INIT_SCRIPT: &str = r#"#!/bin/busybox sh
# oxd xtask guest init (stage 1), generated by `cargo xtask setup`.
B=/bin/busybox
fail() {
    echo "oxd-vm init: $*" >&2
    $B poweroff -f
    $B sleep 10
}
$B mkdir -p /proc /sys /dev /lower /layers /newroot /repo
$B mount -t proc proc /proc || fail "cannot mount /proc"
while read -r module; do
    [ -n "$module" ] || continue
    $B insmod "/modules/$module.ko" || fail "cannot load module $module"
done < /modules/order
P9=trans=virtio,version=9p2000.L,msize=512000
$B mount -t 9p -o "$P9,ro" hostroot /lower || fail "cannot mount the host root (9p tag hostroot)"
$B mount -t tmpfs -o mode=0755 layers /layers || fail "cannot mount the overlay's tmpfs"
$B mkdir -p /layers/upper /layers/work
$B mount -t overlay -o lowerdir=/lower,upperdir=/layers/upper,workdir=/layers/work overlay /newroot \
    || fail "cannot mount the overlay root"
# /tmp and /run are mounted here, before the repository, so that a repository that lives
# under one of them (a clone in /tmp) is mounted on top of the tmpfs, not hidden by it.
$B mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /newroot/tmp || fail "cannot mount /tmp"
$B mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /newroot/run || fail "cannot mount /run"
$B mount -t 9p -o "$P9" repo /repo || fail "cannot mount the repository (9p tag repo)"
RUN=
for arg in $($B cat /proc/cmdline); do
    case "$arg" in
        oxd.run=*) RUN="${arg#oxd.run=}" ;;
    esac
done
[ -n "$RUN" ] || fail "no oxd.run= on the kernel command line"
[ -f "/repo/$RUN/stage1.env" ] || fail "/repo/$RUN/stage1.env is missing"
. "/repo/$RUN/stage1.env"
[ -n "$OXD_VM_REPO" ] || fail "stage1.env does not set OXD_VM_REPO"
$B mkdir -p "/newroot$OXD_VM_REPO" || fail "cannot create $OXD_VM_REPO in the new root"
$B mount --move /repo "/newroot$OXD_VM_REPO" || fail "cannot move the repository mount"
$B umount /proc
exec $B switch_root /newroot /bin/sh "$OXD_VM_REPO/$RUN/guest.sh"
"#;

/// Builds (or reuses) the initramfs of a prepared kernel.
fn build_initramfs(
    dir: &Path,
    modules_dir: &Path,
    modules: &[String],
    log: &dyn Fn(&str),
) -> Result<PathBuf> {
    let busybox = Path::new(BUSYBOX);
    let meta = fs::metadata(busybox)
        .with_context(|| format!("cannot find {BUSYBOX} (Debian package busybox-static)"))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let stamp_text = format!(
        "{}busybox {} {mtime}\nmodules {}\n{INIT_SCRIPT}",
        recipe(),
        meta.len(),
        modules.join(" ")
    );
    let image = dir.join("initramfs.cpio");
    let stamp = dir.join("initramfs.stamp");
    if image.is_file() && read_optional(&stamp)?.as_deref() == Some(stamp_text.as_str()) {
        return Ok(image);
    }
    log(&format!("building {}", image.display()));
    let staging = dir.join(format!("initramfs.root.{}", std::process::id()));
    remove_if_exists(&staging)?;
    for sub in ["bin", "modules", "dev", "proc", "sys"] {
        fs::create_dir_all(staging.join(sub))
            .with_context(|| format!("cannot create {}", staging.join(sub).display()))?;
    }
    fs::copy(busybox, staging.join("bin/busybox"))
        .with_context(|| format!("cannot copy {BUSYBOX}"))?;
    for module in modules {
        let src = modules_dir.join(format!("{module}.ko"));
        fs::copy(&src, staging.join("modules").join(format!("{module}.ko")))
            .with_context(|| format!("cannot copy {}", src.display()))?;
    }
    write_file(&staging.join("modules/order"), modules.join("\n") + "\n")?;
    write_file(&staging.join("init"), INIT_SCRIPT)?;
    set_executable(&staging.join("init"))?;
    set_executable(&staging.join("bin/busybox"))?;

    let mut entries = Vec::new();
    list_tree(&staging, Path::new("."), &mut entries)?;
    entries.sort();
    let partial = dir.join(format!("initramfs.cpio.{}", std::process::id()));
    let out = fs::File::create(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let mut child = Command::new("cpio")
        .args(["--quiet", "-o", "-H", "newc", "-R", "0:0"])
        .current_dir(&staging)
        .stdin(Stdio::piped())
        .stdout(out)
        .spawn()
        .context("cannot start cpio (Debian package cpio)")?;
    {
        let mut stdin = child.stdin.take().context("cpio has no stdin")?;
        for entry in &entries {
            writeln!(stdin, "{entry}").context("cannot feed cpio")?;
        }
    }
    let status = child.wait().context("cannot wait for cpio")?;
    if !status.success() {
        bail!("cpio failed ({status})");
    }
    fs::rename(&partial, &image).with_context(|| format!("cannot rename {}", partial.display()))?;
    write_file(&stamp, stamp_text)?;
    fs::remove_dir_all(&staging).with_context(|| format!("cannot remove {}", staging.display()))?;
    Ok(image)
}

fn set_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot chmod {}", path.display()))
}

fn list_tree(base: &Path, rel: &Path, out: &mut Vec<String>) -> Result<()> {
    let dir = base.join(rel);
    for entry in fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let rel_path = rel.join(entry.file_name());
        let text = rel_path
            .to_str()
            .ok_or_else(|| anyhow!("non-UTF-8 path {}", rel_path.display()))?
            .to_string();
        out.push(text);
        if entry
            .file_type()
            .with_context(|| format!("cannot stat {}", rel_path.display()))?
            .is_dir()
        {
            list_tree(base, &rel_path, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const APT_OUTPUT: &str = "\
linux-image-6.1.0-47-amd64 - Linux 6.1 for 64-bit PCs (signed)
linux-image-6.1.0-50-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
linux-image-6.1.0-9-amd64 - Linux 6.1 for 64-bit PCs (signed)
linux-image-6.12.100+deb12-amd64 - Linux 6.12 for 64-bit PCs (signed)
linux-image-6.12.117+deb12-rt-amd64 - Linux 6.12 for 64-bit PCs (signed), PREEMPT_RT
linux-image-6.12.99+deb12-amd64 - Linux 6.12 for 64-bit PCs (signed)
linux-image-6.12-amd64 - Linux for 64-bit PCs (meta-package)
linux-image-6.1.0-56-amd64 - Linux 6.1 for 64-bit PCs (signed)
linux-image-6.1.0-56-rt-amd64 - Linux 6.1 for 64-bit PCs, PREEMPT_RT (signed)
";

    #[test]
    fn picks_highest_abi_numerically() {
        assert_eq!(
            pick_package(Series::V6_1, APT_OUTPUT).as_deref(),
            Some("linux-image-6.1.0-56-amd64")
        );
        assert_eq!(
            pick_package(Series::V6_12, APT_OUTPUT).as_deref(),
            Some("linux-image-6.12.100+deb12-amd64")
        );
        assert_eq!(pick_package(Series::V6_1, ""), None);
    }

    #[test]
    fn ranks_only_plain_amd64_flavours() {
        assert_eq!(
            Series::V6_1.package_rank("linux-image-6.1.0-56-amd64"),
            Some(56)
        );
        assert_eq!(
            Series::V6_1.package_rank("linux-image-6.1.0-56-cloud-amd64"),
            None
        );
        assert_eq!(
            Series::V6_1.package_rank("linux-image-6.12.1+deb12-amd64"),
            None
        );
        assert_eq!(
            Series::V6_12.package_rank("linux-image-6.12.117+deb12-amd64"),
            Some(117)
        );
        assert_eq!(Series::V6_12.package_rank("linux-image-6.12-amd64"), None);
        assert_eq!(
            Series::V6_12.package_rank("linux-image-6.12.5+deb12-rt-amd64"),
            None
        );
    }

    #[test]
    fn module_names_follow_the_kernel() {
        assert_eq!(
            module_name("9pnet_virtio.ko.xz").as_deref(),
            Some("9pnet_virtio")
        );
        assert_eq!(module_name("virtio-rng.ko").as_deref(), Some("virtio_rng"));
        assert_eq!(module_name("overlay.ko.zst").as_deref(), Some("overlay"));
        assert_eq!(module_name("modules.order"), None);
    }

    #[test]
    fn parses_builtin_list() {
        let builtin = parse_builtin("kernel/drivers/virtio/virtio.ko\nkernel/fs/ext4/ext4.ko\n\n");
        assert!(builtin.contains("virtio"));
        assert!(builtin.contains("ext4"));
        assert_eq!(builtin.len(), 2);
    }

    #[test]
    fn parses_depends_field() {
        assert_eq!(
            parse_depends("9pnet,fscache,netfs\n"),
            ["9pnet", "fscache", "netfs"]
        );
        assert!(parse_depends("\n").is_empty());
        assert_eq!(parse_depends("virtio-ring"), ["virtio_ring"]);
    }

    fn order_with(
        roots: &[&str],
        graph: &[(&str, &[&str])],
        builtin: &[&str],
    ) -> Result<Vec<String>> {
        let graph: BTreeMap<&str, Vec<String>> = graph
            .iter()
            .map(|(m, deps)| (*m, deps.iter().map(ToString::to_string).collect()))
            .collect();
        load_order(roots, |name| {
            if builtin.contains(&name) {
                return Ok(None);
            }
            graph
                .get(name)
                .cloned()
                .map(Some)
                .ok_or_else(|| anyhow!("no module {name}"))
        })
    }

    #[test]
    fn orders_dependencies_first_like_debian_6_1() {
        let graph: &[(&str, &[&str])] = &[
            (
                "virtio_pci",
                &[
                    "virtio_ring",
                    "virtio_pci_modern_dev",
                    "virtio_pci_legacy_dev",
                    "virtio",
                ],
            ),
            ("virtio_ring", &[]),
            ("virtio_pci_modern_dev", &[]),
            ("virtio_pci_legacy_dev", &[]),
            ("virtio", &[]),
            ("9pnet_virtio", &["virtio_ring", "9pnet", "virtio"]),
            ("9pnet", &[]),
            ("9p", &["9pnet", "fscache", "netfs"]),
            ("fscache", &["netfs"]),
            ("netfs", &[]),
            ("overlay", &[]),
        ];
        let order = order_with(ROOT_MODULES, graph, &[]).expect("orders");
        assert_eq!(order.len(), 11, "each module once: {order:?}");
        let pos = |m: &str| order.iter().position(|o| o == m).expect("present");
        for (module, deps) in graph {
            for dep in *deps {
                assert!(pos(dep) < pos(module), "{dep} before {module} in {order:?}");
            }
        }
    }

    #[test]
    fn skips_builtin_modules_like_debian_6_12() {
        let graph: &[(&str, &[&str])] = &[
            ("9pnet_virtio", &["9pnet"]),
            ("9pnet", &[]),
            ("9p", &["9pnet", "netfs"]),
            ("netfs", &[]),
            ("overlay", &[]),
        ];
        let order = order_with(ROOT_MODULES, graph, &["virtio_pci"]).expect("orders");
        assert_eq!(order, ["9pnet", "9pnet_virtio", "netfs", "9p", "overlay"]);
    }

    #[test]
    fn reports_cycles_and_missing_modules() {
        let cycle = order_with(&["a"], &[("a", &["b"]), ("b", &["a"])], &[]);
        let err = format!("{:#}", cycle.expect_err("cycle"));
        assert!(err.contains("cycle"), "{err}");
        let missing = order_with(&["a"], &[("a", &["zz"])], &[]);
        let err = format!("{:#}", missing.expect_err("missing"));
        assert!(
            err.contains("no module zz") && err.contains("needed by module a"),
            "{err}"
        );
    }
}
