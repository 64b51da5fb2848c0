//! `cargo xtask setup`: installs what building and testing oxd needs on Debian 12, idempotently.

use std::process::Command;

use anyhow::{Context, Result};

use crate::{
    kernel::{self, PreparedKernel, Series},
    util,
};

/// Debian packages the build (bpf-linker against LLVM 22) and the VM tests need.
pub(crate) const DEBIAN_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "kmod",
    "xz-utils",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// What setup produced: the guest kernels ready to boot, and the steps that failed. Every step
/// is attempted even when an earlier one fails, so that `test` can go on with what works.
pub(crate) struct Setup {
    pub kernels: Vec<PreparedKernel>,
    /// One `(step, error)` per failed step.
    pub failures: Vec<(String, anyhow::Error)>,
}

impl Setup {
    pub(crate) fn kernel(&self, series: Series) -> Option<&PreparedKernel> {
        self.kernels.iter().find(|k| k.series == series)
    }

    /// Fails with every step's error unless all steps succeeded.
    pub(crate) fn into_result(self) -> Result<Setup> {
        if self.failures.is_empty() {
            return Ok(self);
        }
        let all = self
            .failures
            .iter()
            .map(|(step, err)| format!("{step}: {err:#}"))
            .collect::<Vec<_>>()
            .join("\n");
        anyhow::bail!("setup failed:\n{all}")
    }
}

/// Prints `[setup] ...` lines; in quiet mode (setup run by another task) the "ok" lines are
/// left out and the others go to stderr, keeping stdout for that task's own output.
struct Log {
    quiet: bool,
}

impl Log {
    fn act(&self, msg: &str) {
        if self.quiet {
            eprintln!("[setup] {msg}");
        } else {
            println!("[setup] {msg}");
        }
    }
    fn ok(&self, msg: &str) {
        if !self.quiet {
            println!("[setup] ok: {msg}");
        }
    }
}

/// Runs every setup step. `quiet` hides the lines of steps that had nothing to do.
pub(crate) fn run(quiet: bool) -> Setup {
    let log = Log { quiet };
    let mut failures = Vec::new();
    let mut step = |name: &str, result: Result<()>| {
        if let Err(err) = result {
            log.act(&format!("FAILED: {name}: {err:#}"));
            failures.push((name.to_string(), err));
        }
    };
    step("Debian packages", debian_packages(&log));
    step(
        "rust-src for nightly",
        rust_component(&log, "nightly", "rust-src"),
    );
    step(
        "rustfmt for nightly",
        rust_component(&log, "nightly", "rustfmt"),
    );
    step("clippy", rust_component(&log, "stable", "clippy"));
    step("bpf-linker", bpf_linker(&log));
    let mut kernels = Vec::new();
    for series in Series::ALL {
        match kernel::prepare(series, &|msg| log.act(&format!("kernel {series}: {msg}"))) {
            Ok(kernel) => {
                log.ok(&format!(
                    "kernel {series}: {} ({}), modules: {}",
                    kernel.package,
                    kernel.release,
                    if kernel.modules.is_empty() {
                        "none".to_string()
                    } else {
                        kernel.modules.join(" ")
                    }
                ));
                kernels.push(kernel);
            }
            Err(err) => step(&format!("guest kernel {series}"), Err(err)),
        }
    }
    Setup { kernels, failures }
}

/// Whether `dpkg-query -W -f='${Status}'` output says the package is installed.
pub(crate) fn dpkg_status_installed(status: &str) -> bool {
    status.contains("install ok installed")
}

fn missing_packages() -> Result<Vec<&'static str>> {
    let mut missing = Vec::new();
    for package in DEBIAN_PACKAGES {
        let out = util::raw_output(
            Command::new("dpkg-query")
                .args(["-W", "-f=${Status}"])
                .arg(package),
        )?;
        if !(out.status.success() && dpkg_status_installed(&String::from_utf8_lossy(&out.stdout))) {
            missing.push(*package);
        }
    }
    Ok(missing)
}

/// `apt-get` (through sudo when not root).
fn apt_get() -> Command {
    if !util::is_root() && util::on_path("sudo") {
        let mut cmd = Command::new("sudo");
        cmd.args(["DEBIAN_FRONTEND=noninteractive", "apt-get"]);
        cmd
    } else {
        let mut cmd = Command::new("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    }
}

pub(crate) fn apt_get_update() -> Result<()> {
    util::run(apt_get().arg("update"))
}

fn debian_packages(log: &Log) -> Result<()> {
    let missing = missing_packages()?;
    if missing.is_empty() {
        log.ok(&format!("Debian packages: {}", DEBIAN_PACKAGES.join(" ")));
        return Ok(());
    }
    log.act(&format!(
        "installing Debian packages: {}",
        missing.join(" ")
    ));
    apt_get_update()?;
    util::run(apt_get().args(["install", "-y"]).args(&missing))?;
    let still = missing_packages()?;
    if !still.is_empty() {
        anyhow::bail!("still not installed after apt-get: {}", still.join(" "));
    }
    Ok(())
}

/// Makes sure `toolchain` (`nightly`, or `stable` for the default) has `component`
/// (`rust-src`, `rustfmt`, `clippy`).
fn rust_component(log: &Log, toolchain: &str, component: &str) -> Result<()> {
    let installed = util::output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        toolchain,
        "--installed",
    ]))
    .with_context(|| {
        format!("is the {toolchain} toolchain installed (rustup toolchain install {toolchain})?")
    })?;
    if component_listed(&installed, component) {
        log.ok(&format!("{component} ({toolchain})"));
        return Ok(());
    }
    log.act(&format!(
        "rustup component add {component} --toolchain {toolchain}"
    ));
    util::run(Command::new("rustup").args([
        "component",
        "add",
        component,
        "--toolchain",
        toolchain,
    ]))
}

/// Whether `rustup component list --installed` lists `component` (`rust-src`, or with its
/// target: `rustfmt-x86_64-unknown-linux-gnu`).
fn component_listed(list: &str, component: &str) -> bool {
    list.lines().map(str::trim).any(|line| {
        line == component
            || line
                .strip_prefix(component)
                .is_some_and(|rest| rest.starts_with('-') && rest.contains("-linux-"))
    })
}

/// Whether `bpf-linker --version` output names the wanted release series (0.13.x).
pub(crate) fn bpf_linker_version_ok(version_output: &str) -> bool {
    let series = BPF_LINKER_VERSION
        .rsplit_once('.')
        .map_or(BPF_LINKER_VERSION, |(major_minor, _)| major_minor);
    version_output.split_whitespace().any(|word| {
        word.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix('.'))
            .is_some_and(|patch| !patch.is_empty() && patch.bytes().all(|b| b.is_ascii_digit()))
    })
}

fn bpf_linker(log: &Log) -> Result<()> {
    let current = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if let Some(version) = current.as_deref().filter(|v| bpf_linker_version_ok(v)) {
        log.ok(version);
        return Ok(());
    }
    log.act(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (takes a minute or two; found: {})",
        current.as_deref().unwrap_or("none")
    ));
    util::run(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", LLVM_PREFIX),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_installed_components_with_or_without_their_target() {
        let list = "cargo-x86_64-unknown-linux-gnu\nrust-src\nrustfmt-x86_64-unknown-linux-gnu\n";
        assert!(component_listed(list, "rust-src"));
        assert!(component_listed(list, "rustfmt"));
        assert!(!component_listed(list, "clippy"));
        assert!(!component_listed("rust-src-extra\n", "rust-src"));
    }

    #[test]
    fn reads_dpkg_status() {
        assert!(dpkg_status_installed("install ok installed"));
        assert!(!dpkg_status_installed("deinstall ok config-files"));
        assert!(!dpkg_status_installed("unknown ok not-installed"));
        assert!(!dpkg_status_installed(""));
    }

    #[test]
    fn accepts_only_bpf_linker_0_13() {
        assert!(bpf_linker_version_ok("bpf-linker 0.13.0"));
        assert!(bpf_linker_version_ok("bpf-linker 0.13.12\n"));
        assert!(!bpf_linker_version_ok("bpf-linker 0.9.13"));
        assert!(!bpf_linker_version_ok("bpf-linker 0.14.0"));
        assert!(!bpf_linker_version_ok("bpf-linker 0.130.0"));
        assert!(!bpf_linker_version_ok(""));
    }
}
