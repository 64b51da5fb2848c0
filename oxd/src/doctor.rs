//! The checks behind `oxd doctor`: what enforcement needs from this host, and what to change.
//!
//! Each check prints one line: `ok`, `MISSING` (enforcement that needs it cannot work) or `warn`
//! (works, with a caveat), with what was found and, when something is missing, the fix. The
//! kernel-side checks load oxd's own programs (without attaching them), so they answer exactly
//! the question `oxd run` will ask.

use std::{fs, path::Path};

use anyhow::Result;

use crate::{
    btf::{Btf, KernelOffsets, VMLINUX_BTF},
    enforcer,
    enforcer::{Enforcer, EnforcerError},
    host,
    policy::Policy,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    Warn,
    Missing,
}

/// The result of one check.
#[derive(Debug)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub found: String,
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, found: impl Into<String>) -> Self {
        Self {
            name,
            status: Status::Ok,
            found: found.into(),
            fix: None,
        }
    }

    fn warn(name: &'static str, found: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name,
            status: Status::Warn,
            found: found.into(),
            fix: Some(fix.into()),
        }
    }

    fn missing(name: &'static str, found: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name,
            status: Status::Missing,
            found: found.into(),
            fix: Some(fix.into()),
        }
    }
}

fn btf_check() -> Check {
    match Btf::from_kernel().and_then(|btf| KernelOffsets::read(&btf)) {
        Ok(o) => Check::ok(
            "kernel BTF",
            format!(
                "{VMLINUX_BTF}: linux_binprm.file at {}, file.f_path at {}, file.f_mode at {}",
                o.bprm_file, o.file_f_path, o.file_f_mode
            ),
        ),
        Err(e) => Check::missing(
            "kernel BTF",
            format!("{e:#}"),
            "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (oxd reads struct layouts from it)",
        ),
    }
}

fn cgroup_check() -> Check {
    match host::cgroup2_mount() {
        Ok(path) => Check::ok("cgroup v2", format!("mounted at {}", path.display())),
        Err(e) => Check::missing(
            "cgroup v2",
            e.to_string(),
            "mount the unified hierarchy: mount -t cgroup2 none /sys/fs/cgroup",
        ),
    }
}

fn bpffs_check() -> Check {
    let mounts = host::bpffs_mounts();
    match mounts.first() {
        Some(path) => Check::ok("bpffs", format!("mounted at {}", path.display())),
        None => Check::warn(
            "bpffs",
            "not mounted (oxd run does not need it; oxd daemon does, to pin enforcement beyond its own life)",
            "mount -t bpf bpf /sys/fs/bpf",
        ),
    }
}

fn lockdown_check() -> Check {
    match host::lockdown() {
        Some(active) if active == "confidentiality" => Check::missing(
            "lockdown",
            "confidentiality: BPF may not read kernel memory, which oxd's programs do",
            "boot with lockdown=integrity (or none)",
        ),
        Some(active) => Check::ok("lockdown", format!("{active} (BPF may read kernel memory)")),
        None => Check::warn(
            "lockdown",
            format!("unknown: {} is not readable", host::LOCKDOWN_FILE),
            "mount securityfs to see it: mount -t securityfs securityfs /sys/kernel/security",
        ),
    }
}

/// Capability bits oxd needs, with their names.
const CAPABILITIES: [(u32, &str); 4] = [
    (21, "CAP_SYS_ADMIN"),
    (12, "CAP_NET_ADMIN"),
    (38, "CAP_PERFMON"),
    (39, "CAP_BPF"),
];

fn capability_check() -> Check {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok());
    let Some(effective) = effective else {
        return Check::missing(
            "capabilities",
            "cannot read CapEff from /proc/self/status",
            "run oxd as root",
        );
    };
    let missing: Vec<&str> = CAPABILITIES
        .iter()
        .filter(|(bit, _)| effective & (1 << bit) == 0)
        .map(|(_, name)| *name)
        .collect();
    if missing.is_empty() {
        Check::ok(
            "capabilities",
            "CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_PERFMON, CAP_BPF",
        )
    } else {
        Check::missing(
            "capabilities",
            format!("missing {}", missing.join(", ")),
            "run oxd as root (it loads BPF programs and creates cgroups)",
        )
    }
}

fn policy(text: &str) -> Result<Policy> {
    Ok(Policy::parse(Path::new("oxd-doctor.toml"), text)?)
}

fn cgroup_hooks_check() -> Check {
    let result = policy("[network]\ndefault = \"allow\"\n")
        .and_then(|p| Ok(Enforcer::load(&p)?))
        .and_then(|mut e| Ok(e.load_cgroup_programs()?));
    match result {
        Ok(()) => Check::ok(
            "cgroup hooks",
            "connect4, connect6, sendmsg4, sendmsg6, sock_create, sock_release load (network \
             rules can be enforced)",
        ),
        Err(e) => Check::missing(
            "cgroup hooks",
            format!("{e:#}"),
            "use a kernel with CONFIG_CGROUP_BPF=y, BPF ring buffers and the sock_release hook \
             (Linux 5.9 or later)",
        ),
    }
}

fn bpf_lsm_check() -> Check {
    let policy = match policy("[exec]\ndefault = \"allow\"\n[file]\ndefault = \"allow\"\n") {
        Ok(p) => p,
        Err(e) => return Check::missing("BPF-LSM", format!("{e:#}"), "report this as a bug"),
    };
    match Enforcer::load(&policy).and_then(|mut e| e.load_lsm()) {
        Ok(()) => Check::ok(
            "BPF-LSM",
            "bprm_check_security, mmap_file, file_mprotect and file_open programs load (exec \
             and file rules can be enforced)",
        ),
        Err(EnforcerError::LsmRefused { source, active, .. }) => Check::missing(
            "BPF-LSM",
            format!("the kernel refuses BPF-LSM programs ({source}); active LSMs: {active}"),
            enforcer::LSM_FIX,
        ),
        Err(e @ EnforcerError::VerifierRejected { .. }) => Check::missing(
            "BPF-LSM",
            e.to_string(),
            "this kernel runs BPF-LSM, but rejects one of oxd's programs: report it (with `oxd \
             --version`, `uname -r` and the log above)",
        ),
        Err(EnforcerError::LsmInactive { active }) => Check::missing(
            "BPF-LSM",
            format!("bpf is not among the active LSMs ({active})"),
            enforcer::LSM_FIX,
        ),
        Err(e) => Check::missing(
            "BPF-LSM",
            format!("{:#}", anyhow::Error::from(e)),
            enforcer::LSM_FIX,
        ),
    }
}

/// A sysctl's value, trimmed; `None` when this kernel does not have it.
fn sysctl(name: &str) -> Option<String> {
    fs::read_to_string(Path::new("/proc/sys").join(name.replace('.', "/")))
        .ok()
        .map(|v| v.trim().to_owned())
}

/// Whether the guard runs: with BPF-LSM, root agents cannot switch oxd off or leave their
/// confinement; without it only the kernel's own permission checks stand in their way.
fn guard_check(lsm: &Check) -> Check {
    if lsm.status == Status::Ok {
        Check::ok(
            "guard",
            "runs with every policy: a confined agent, root or not, cannot use bpf(), move out of \
             its cgroup, load kernel modules, write kernel file systems, raw devices or oxd's \
             pins, or signal oxd",
        )
    } else {
        Check::warn(
            "guard",
            "off (needs BPF-LSM): an agent running as root could switch oxd off",
            "enable BPF-LSM (see above), and run agents as an ordinary user: oxd run --user NAME",
        )
    }
}

/// What the host's own configuration adds to the guard (each is defence in depth: the guard
/// denies these to confined agents either way, but the setting also covers what runs
/// unconfined, and oxd's bugs).
fn hardening_checks() -> Vec<Check> {
    let mut out = Vec::new();
    out.push(match sysctl("kernel.unprivileged_bpf_disabled").as_deref() {
        Some("1" | "2") => Check::ok(
            "unprivileged BPF",
            "disabled (kernel.unprivileged_bpf_disabled): only privileged processes may use bpf()",
        ),
        Some(v) => Check::warn(
            "unprivileged BPF",
            format!("allowed (kernel.unprivileged_bpf_disabled = {v})"),
            "sysctl -w kernel.unprivileged_bpf_disabled=2",
        ),
        None => Check::warn(
            "unprivileged BPF",
            "unknown (no kernel.unprivileged_bpf_disabled)",
            "use a kernel with CONFIG_BPF_UNPRIV_DEFAULT_OFF=y",
        ),
    });
    out.push(match host::lockdown().as_deref() {
        Some("integrity" | "confidentiality") => Check::ok(
            "lockdown hardening",
            "the kernel itself refuses unsigned modules, kexec, /dev/mem and raw I/O to root",
        ),
        _ => Check::warn(
            "lockdown hardening",
            "none: root outside oxd's confinement can still change the running kernel",
            "boot with lockdown=integrity (module signing) for a second line of defence",
        ),
    });
    out.push(match sysctl("kernel.modules_disabled").as_deref() {
        Some("1") => Check::ok("module loading", "disabled (kernel.modules_disabled = 1)"),
        _ => Check::warn(
            "module loading",
            "allowed to root (the guard denies it to confined agents)",
            "sysctl -w kernel.modules_disabled=1 once the host's modules are loaded",
        ),
    });
    out.push(match sysctl("kernel.yama.ptrace_scope").as_deref() {
        Some(v @ ("1" | "2" | "3")) => Check::ok(
            "ptrace scope",
            format!("restricted (kernel.yama.ptrace_scope = {v})"),
        ),
        Some(v) => Check::warn(
            "ptrace scope",
            format!("unrestricted (kernel.yama.ptrace_scope = {v})"),
            "sysctl -w kernel.yama.ptrace_scope=1",
        ),
        None => Check::warn(
            "ptrace scope",
            "Yama is not active",
            "boot with yama in lsm= and set kernel.yama.ptrace_scope=1",
        ),
    });
    out
}

/// Runs every check.
pub fn checks() -> Vec<Check> {
    let lsm = bpf_lsm_check();
    let guard = guard_check(&lsm);
    let mut checks = vec![
        capability_check(),
        btf_check(),
        cgroup_check(),
        cgroup_hooks_check(),
        lsm,
        guard,
        lockdown_check(),
        bpffs_check(),
    ];
    checks.extend(hardening_checks());
    checks
}
