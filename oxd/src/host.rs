//! What this host offers oxd, read in one place: the active LSMs, the kernel lockdown mode,
//! the mounted file systems (the cgroup v2 hierarchy, bpf file systems), and whether a
//! directory lies on a bpf file system. `oxd doctor`, `oxd run` and the daemon all ask here.

use std::{
    fs,
    path::{Path, PathBuf},
};

/// The kernel's list of active LSMs (securityfs).
pub const LSM_FILE: &str = "/sys/kernel/security/lsm";

/// The kernel's lockdown mode (securityfs).
pub const LOCKDOWN_FILE: &str = "/sys/kernel/security/lockdown";

const MOUNTINFO: &str = "/proc/self/mountinfo";

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no cgroup v2 hierarchy is mounted (looked in {MOUNTINFO}); mount one with `mount -t \
         cgroup2 none /sys/fs/cgroup`"
    )]
    NoCgroup2,
    #[error("cannot inspect the file system of {path}")]
    Statfs {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error(
        "{} is not on a bpf file system, so enforcement cannot be pinned: mount one (`mount -t \
         bpf bpf /sys/fs/bpf`) or give --bpffs a directory inside one",
        path.display()
    )]
    NotBpffs { path: PathBuf },
}

/// The active LSMs, in the kernel's order; `None` if [`LSM_FILE`] cannot be read (securityfs
/// not mounted, or no permission).
pub fn active_lsms() -> Option<Vec<String>> {
    let text = fs::read_to_string(LSM_FILE).ok()?;
    Some(parse_lsm_list(&text))
}

fn parse_lsm_list(text: &str) -> Vec<String> {
    text.trim()
        .split(',')
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Whether `bpf` is among the active LSMs (false if that cannot be read).
pub fn bpf_lsm_active() -> bool {
    active_lsms().is_some_and(|lsms| lsms.iter().any(|l| l == "bpf"))
}

/// The active LSMs for a message: `lockdown,capability,bpf`, or why they are unknown.
pub fn describe_active_lsms() -> String {
    active_lsms().map_or_else(
        || format!("unknown, {LSM_FILE} is not readable"),
        |lsms| lsms.join(","),
    )
}

/// The kernel's lockdown mode (`none`, `integrity`, `confidentiality`); `None` if
/// [`LOCKDOWN_FILE`] cannot be read.
pub fn lockdown() -> Option<String> {
    fs::read_to_string(LOCKDOWN_FILE)
        .ok()
        .and_then(|text| parse_lockdown(&text))
}

/// The bracketed word of `none [integrity] confidentiality`.
fn parse_lockdown(text: &str) -> Option<String> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix('[')?.strip_suffix(']'))
        .map(str::to_owned)
}

/// One mounted file system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub point: PathBuf,
    pub fstype: String,
}

/// The file systems mounted in this process's mount namespace.
pub fn mounts() -> Result<Vec<Mount>, HostError> {
    let text = fs::read_to_string(MOUNTINFO).map_err(|source| HostError::Read {
        path: PathBuf::from(MOUNTINFO),
        source,
    })?;
    Ok(parse_mountinfo(&text))
}

/// Parses `/proc/PID/mountinfo`: the mount point is the fifth field, the file system type the
/// first after the ` - ` separator.
fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split(' ').next()?;
            let point = left.split(' ').nth(4)?;
            Some(Mount {
                point: PathBuf::from(unescape_mountinfo(point)),
                fstype: fstype.to_owned(),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount point of the cgroup v2 hierarchy (e.g. `/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on hybrid systems).
pub fn cgroup2_mount() -> Result<PathBuf, HostError> {
    cgroup2_in(&mounts()?).ok_or(HostError::NoCgroup2)
}

fn cgroup2_in(mounts: &[Mount]) -> Option<PathBuf> {
    mounts
        .iter()
        .find(|m| m.fstype == "cgroup2")
        .map(|m| m.point.clone())
}

/// Where bpf file systems are mounted (none if mountinfo cannot be read).
pub fn bpffs_mounts() -> Vec<PathBuf> {
    mounts()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.fstype == "bpf")
        .map(|m| m.point)
        .collect()
}

/// Checks that `dir` (or, if it does not exist yet, its nearest existing ancestor) is on a bpf
/// file system, where pins can be made.
pub fn check_bpffs(dir: &Path) -> Result<(), HostError> {
    let mut probe = dir;
    while !probe.exists() {
        probe = probe.parent().unwrap_or(Path::new("/"));
    }
    let stat = nix::sys::statfs::statfs(probe).map_err(|source| HostError::Statfs {
        path: probe.to_owned(),
        source,
    })?;
    // `f_type`'s C type differs between C libraries and architectures.
    let magic = stat.filesystem_type().0 as i64;
    if magic != BPF_FS_MAGIC {
        return Err(HostError::NotBpffs {
            path: dir.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mountinfo() {
        let info = "24 31 0:22 / /sys rw,nosuid shared:7 - sysfs sysfs rw\n\
                    35 24 0:30 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw\n\
                    36 24 0:31 / /sys/fs/bpf rw - bpf bpf rw\n\
                    37 24 0:32 / /mnt/a\\040b rw - bpf bpf rw\n\
                    garbage\n";
        let mounts = parse_mountinfo(info);
        assert_eq!(mounts.len(), 4);
        assert_eq!(
            cgroup2_in(&mounts),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let bpf: Vec<&Path> = mounts
            .iter()
            .filter(|m| m.fstype == "bpf")
            .map(|m| m.point.as_path())
            .collect();
        assert_eq!(bpf, [Path::new("/sys/fs/bpf"), Path::new("/mnt/a b")]);
        assert_eq!(
            cgroup2_in(&parse_mountinfo("24 31 0:22 / /sys rw - sysfs sysfs rw\n")),
            None
        );
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
        assert_eq!(unescape_mountinfo(r"/a\04"), r"/a\04");
    }

    #[test]
    fn reads_the_lsm_list_and_lockdown() {
        assert_eq!(
            parse_lsm_list("lockdown,capability,landlock,bpf\n"),
            ["lockdown", "capability", "landlock", "bpf"]
        );
        assert!(parse_lsm_list("\n").is_empty());
        assert_eq!(
            parse_lockdown("none [integrity] confidentiality\n").as_deref(),
            Some("integrity")
        );
        assert_eq!(parse_lockdown("none integrity\n"), None);
    }

    #[test]
    fn a_directory_outside_bpffs_is_refused() {
        let dir = std::env::temp_dir().join("oxd-host-test/not/yet/there");
        let err = check_bpffs(&dir).expect_err("the temporary directory is not on bpffs");
        assert!(matches!(err, HostError::NotBpffs { .. }), "{err}");
    }
}
