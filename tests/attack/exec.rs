//! Attacks of the `exec` family: see `tests/attacker/exec.rs` for the techniques.
//!
//! Every test runs one technique as uid 65534 inside `oxd run` under an exec allowlist, in an
//! arena on its own tmpfs (not the guest's overlay root, whose second open of the underlying
//! file would decide some tricks by accident):
//!
//! - `bin/`: an allowed directory, empty; `denied/touch`: a copy of `touch` that an exact rule
//!   denies (owned by the agent's user, so it may hard-link it);
//! - `ws/`: writable by the agent and allowed (a workspace whose scripts may run);
//! - `tmp/`: writable by the agent, not allowed; `out/`: where a payload leaves its marker.
//!
//! The denied code's effect is a marker file (`touch MARKER`, or the payload library's
//! constructor); each test fails if the marker appears, and checks the attempt's record.

use std::{
    fs,
    os::unix::fs::{chown, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::OnceLock,
};

use serde_json::Value;

use crate::common::*;

const AGENT: &str = "65534:65534";
const AGENT_UID: u32 = 65534;

/// The payload library: its constructor creates the file `$OXD_MARKER` names.
const PAYLOAD_C: &str = r#"
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
__attribute__((constructor)) static void payload(void) {
    const char *marker = getenv("OXD_MARKER");
    if (marker) {
        int fd = open(marker, O_WRONLY | O_CREAT, 0644);
        if (fd >= 0) close(fd);
    }
}
"#;

/// Builds the payload library once per test process (with the C compiler Rust links with).
fn payload() -> &'static Path {
    static PAYLOAD: OnceLock<PathBuf> = OnceLock::new();
    PAYLOAD.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("oxd-test-payload-")
            .tempdir()
            .expect("create the payload directory")
            .keep();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        let source = dir.join("payload.c");
        fs::write(&source, PAYLOAD_C).expect("write payload.c");
        let library = dir.join("libpayload.so");
        let status = Command::new("cc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(&library)
            .arg(&source)
            .status()
            .expect("run cc");
        assert!(status.success(), "cc failed to build the payload library");
        fs::set_permissions(&library, fs::Permissions::from_mode(0o644)).expect("chmod");
        library
    })
}

/// A tmpfs, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

struct Arena {
    // Field order: unmount before the scratch directory goes.
    _fs: Tmpfs,
    _scratch: Scratch,
    /// The arena's root (canonical).
    root: String,
    policy: PathBuf,
    log: PathBuf,
}

impl Arena {
    fn new(name: &str) -> Self {
        Self::with_exec(name, None)
    }

    /// `exec`: the policy's `[exec]` section instead of the allowlist.
    fn with_exec(name: &str, exec: Option<&str>) -> Self {
        let scratch = Scratch::new(&format!("attack-exec-{name}"));
        let dir = fs::canonicalize(scratch.path("")).expect("canonical scratch directory");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod scratch");
        let root = dir.join("fs");
        fs::create_dir(&root).expect("create the arena");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "mode=0755", "oxd-attack-exec"])
            .arg(&root)
            .status()
            .expect("run mount");
        assert!(mounted.success(), "mount a tmpfs on {}", root.display());
        let fs_guard = Tmpfs(root.clone());
        for (sub, mode) in [
            ("bin", 0o755),
            ("denied", 0o755),
            ("ws", 0o777),
            ("tmp", 0o777),
            ("out", 0o777),
        ] {
            let path = root.join(sub);
            fs::create_dir(&path).expect("create an arena directory");
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
        }
        let touch = root.join("denied/touch");
        fs::copy("/usr/bin/touch", &touch).expect("copy touch");
        chown(&touch, Some(AGENT_UID), Some(AGENT_UID)).expect("chown the denied binary");
        let root = root.to_str().expect("utf-8 arena").to_owned();
        let attack = fs::canonicalize(attack_bin()).expect("canonical oxd-attack");
        let attack = attack.to_str().expect("utf-8 oxd-attack path");
        let exec = exec.map_or_else(
            || {
                format!(
                    r#"
default = "deny"
allow = ["{attack}", "{root}/bin/**", "{root}/ws/**", "/usr/bin/true", {LIBRARIES}]
deny = ["{root}/denied/touch"]
"#
                )
            },
            str::to_owned,
        );
        let policy = scratch.policy(&format!("name = \"attack-exec\"\n[exec]\n{exec}"));
        let log = scratch.path("audit.jsonl");
        Self {
            _fs: fs_guard,
            _scratch: scratch,
            root,
            policy,
            log,
        }
    }

    fn path(&self, rel: &str) -> String {
        format!("{}/{rel}", self.root)
    }

    fn denied(&self) -> String {
        self.path("denied/touch")
    }

    fn marker(&self) -> String {
        self.path("out/marker")
    }

    /// Runs `oxd-attack --as 65534:65534 TECHNIQUE ARGS...` confined; returns the output and
    /// the steps it printed.
    fn attack(&self, technique: &str, args: &[&str]) -> (Output, Vec<Value>) {
        let attack = attack_bin();
        let attack = attack.to_str().expect("utf-8 oxd-attack path");
        let mut command = vec![attack, "--as", AGENT, technique];
        command.extend_from_slice(args);
        let output = oxd_run(&self.policy, &self.log, &command);
        let steps = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.get("step").is_some())
            .collect();
        (output, steps)
    }

    fn records(&self) -> Vec<Value> {
        audit_records(&self.log)
    }

    /// Fails if the denied code left its marker.
    fn assert_no_marker(&self, output: &Output) {
        assert!(
            !Path::new(&self.marker()).exists(),
            "the denied code ran (its marker exists)\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Asserts a denied, enforced record of the agent for (op, target) by `rule`.
    fn assert_denied(&self, op: &str, target: &str, rule: &str) {
        let records = self.records();
        let found = records_for(&records, op, target);
        assert!(
            found.iter().any(|r| r["decision"] == "deny"
                && r["enforced"] == true
                && r["rule"] == rule
                && r["uid"] == AGENT_UID),
            "no denied {op} record of uid {AGENT_UID} for {target} by {rule}: {found:#?}\nall: \
             {records:#?}"
        );
        assert!(
            found
                .iter()
                .all(|r| r["reason"] == "rule" || r["reason"] == "default"),
            "decided by the rules, not failed closed: {found:#?}"
        );
    }
}

fn step<'a>(steps: &'a [Value], name: &str) -> &'a Value {
    steps
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {steps:#?}"))
}

/// Asserts that step `name` failed with EPERM.
fn assert_step_eperm(steps: &[Value], name: &str) {
    let s = step(steps, name);
    assert_eq!(s["ok"], false, "{name} must be refused: {s}");
    assert_eq!(s["errno"], EPERM, "{name} must fail with EPERM: {s}");
}

/// An exec trick on the denied binary: refused with EPERM, the binary did not run, and the exec
/// is recorded as denied by the exact rule, under the binary's real path.
fn exec_trick(name: &str, technique: &str, args: impl FnOnce(&Arena) -> Vec<String>) {
    let arena = Arena::new(name);
    let args = args(&arena);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (output, steps) = arena.attack(technique, &args);
    arena.assert_no_marker(&output);
    assert_step_eperm(&steps, "exec");
    arena.assert_denied("exec", &arena.denied(), "exec.deny[0]");
}

#[test]
fn symlink_to_a_denied_binary_is_denied() {
    exec_trick("symlink", "symlink-exec", |a| {
        vec![a.denied(), a.path("ws/link"), a.marker()]
    });
}

#[test]
fn hard_link_to_a_denied_binary_is_denied() {
    // The link is in an allowed, writable directory: the exact deny rule names the file by
    // identity too, so the link (recorded under its own path) is denied by that rule.
    let arena = Arena::new("hardlink");
    let link = arena.path("ws/link");
    let (output, steps) = arena.attack("hardlink-exec", &[&arena.denied(), &link, &arena.marker()]);
    arena.assert_no_marker(&output);
    assert_eq!(step(&steps, "hardlink")["ok"], true, "{steps:#?}");
    assert_step_eperm(&steps, "exec");
    arena.assert_denied("exec", &link, "exec.deny[0]");
}

#[test]
fn dotdot_path_to_a_denied_binary_is_denied() {
    exec_trick("dotdot", "exec", |a| {
        vec![a.path("bin/../denied/touch"), a.marker()]
    });
}

#[test]
fn proc_self_root_path_to_a_denied_binary_is_denied() {
    exec_trick("proc-root", "exec", |a| {
        vec![format!("/proc/self/root{}", a.denied()), a.marker()]
    });
}

#[test]
fn proc_self_fd_exec_of_a_denied_binary_is_denied() {
    exec_trick("proc-fd", "fd-exec", |a| vec![a.denied(), a.marker()]);
}

#[test]
fn fexecve_of_a_denied_binary_is_denied() {
    let arena = Arena::new("fexecve");
    let (output, steps) = arena.attack("fexecve", &[&arena.denied(), &arena.marker()]);
    arena.assert_no_marker(&output);
    assert_step_eperm(&steps, "fexecve");
    arena.assert_denied("exec", &arena.denied(), "exec.deny[0]");
}

#[test]
fn exec_through_an_o_path_descriptor_of_a_denied_binary_is_denied() {
    let arena = Arena::new("opath");
    let (output, steps) = arena.attack("opath-fexecve", &[&arena.denied(), &arena.marker()]);
    arena.assert_no_marker(&output);
    assert_step_eperm(&steps, "fexecve");
    arena.assert_denied("exec", &arena.denied(), "exec.deny[0]");
}

#[test]
fn copy_of_a_denied_binary_to_a_writable_directory_is_denied() {
    let arena = Arena::new("copy");
    let copy = arena.path("tmp/touch");
    let (output, steps) = arena.attack("copy-exec", &[&arena.denied(), &copy, &arena.marker()]);
    arena.assert_no_marker(&output);
    assert_eq!(
        step(&steps, "copy")["ok"],
        true,
        "the copy itself is allowed"
    );
    assert_step_eperm(&steps, "exec");
    arena.assert_denied("exec", &copy, "default");
}

#[test]
fn fileless_exec_from_a_memfd_is_denied() {
    let arena = Arena::new("memfd");
    let (output, steps) = arena.attack("memfd-exec", &[&arena.denied(), &arena.marker()]);
    arena.assert_no_marker(&output);
    assert_step_eperm(&steps, "memfd-mmap-exec");
    assert_step_eperm(&steps, "memfd-fexecve");
    // bpf_d_path names a memfd "/memfd:NAME (deleted)": no allow rule matches it.
    let target = "/memfd:agent-payload (deleted)";
    arena.assert_denied("mmap-exec", target, "default");
    arena.assert_denied("exec", target, "default");
}

#[test]
fn dynamic_loader_running_a_denied_binary_is_denied() {
    let arena = Arena::new("ldso");
    let loader = fs::canonicalize("/lib64/ld-linux-x86-64.so.2").expect("the dynamic loader");
    let loader = loader.to_str().expect("utf-8").to_owned();
    let (output, _) = arena.attack("exec", &[&loader, &arena.denied(), &arena.marker()]);
    arena.assert_no_marker(&output);
    assert!(
        !output.status.success(),
        "the loader must fail to map the denied binary"
    );
    arena.assert_denied("mmap-exec", &arena.denied(), "exec.deny[0]");
}

#[test]
fn shebang_script_with_a_denied_interpreter_is_denied() {
    let arena = Arena::new("shebang");
    let script = arena.path("ws/script");
    let (output, steps) =
        arena.attack("shebang-exec", &[&script, &arena.denied(), &arena.marker()]);
    arena.assert_no_marker(&output);
    assert_step_eperm(&steps, "exec");
    // The script itself is allowed (ws/**); its interpreter is not.
    let records = arena.records();
    let script_records = records_for(&records, "exec", &script);
    assert!(
        script_records.iter().any(|r| r["decision"] == "allow"),
        "{records:#?}"
    );
    arena.assert_denied("exec", &arena.denied(), "exec.deny[0]");
}

#[test]
fn ld_preload_of_a_library_the_agent_wrote_is_denied() {
    let arena = Arena::new("preload");
    let library = arena.path("tmp/libpayload.so");
    let payload = payload().to_str().expect("utf-8").to_owned();
    let (output, steps) = arena.attack(
        "ld-preload",
        &[&payload, &library, &arena.marker(), "/usr/bin/true"],
    );
    arena.assert_no_marker(&output);
    assert_eq!(step(&steps, "copy")["ok"], true, "{steps:#?}");
    arena.assert_denied("mmap-exec", &library, "default");
}

#[test]
fn dlopen_of_a_library_the_agent_wrote_is_denied() {
    let arena = Arena::new("dlopen");
    let library = arena.path("tmp/libpayload.so");
    let payload = payload().to_str().expect("utf-8").to_owned();
    let (output, steps) = arena.attack("dlopen", &[&payload, &library, &arena.marker()]);
    arena.assert_no_marker(&output);
    assert_eq!(step(&steps, "dlopen")["ok"], false, "{steps:#?}");
    arena.assert_denied("mmap-exec", &library, "default");
}

#[test]
fn mapping_a_denied_binary_executable_is_denied() {
    let arena = Arena::new("mmap");
    let (_, steps) = arena.attack("mmap-exec", &[&arena.denied()]);
    assert_step_eperm(&steps, "mmap-exec");
    arena.assert_denied("mmap-exec", &arena.denied(), "exec.deny[0]");
}

#[test]
fn mprotect_of_a_mapped_denied_binary_to_executable_is_denied() {
    let arena = Arena::new("mprotect");
    let (_, steps) = arena.attack("mprotect-exec", &[&arena.denied()]);
    assert_eq!(
        step(&steps, "mmap-read")["ok"],
        true,
        "mapping it readable is allowed"
    );
    assert_step_eperm(&steps, "mprotect-exec");
    let executable = step(&steps, "executable");
    assert_eq!(
        executable["ok"], false,
        "the mapping must not be executable: {executable}"
    );
    arena.assert_denied("mprotect-exec", &arena.denied(), "exec.deny[0]");
}

#[test]
fn anonymous_executable_memory_stays_allowed() {
    let arena = Arena::new("jit");
    let (output, steps) = arena.attack("anon-exec", &[]);
    for name in ["private-jit", "shared-jit"] {
        assert_eq!(
            step(&steps, name)["ok"],
            true,
            "{name}: {steps:#?}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let records = arena.records();
    assert!(
        !records
            .iter()
            .any(|r| r["op"] == "mprotect-exec" || r["decision"] == "deny"),
        "nothing is denied: {records:#?}"
    );
}

/// The techniques do what the tests above look for when nothing stops them: the library
/// payload leaves its marker and a mapping becomes executable (so the tests can fail).
#[test]
fn attack_techniques_take_effect_where_the_policy_allows_them() {
    let arena = Arena::with_exec("control", Some("default = \"allow\"\n"));
    let library = arena.path("tmp/libpayload.so");
    let payload = payload().to_str().expect("utf-8").to_owned();
    let (output, _) = arena.attack(
        "ld-preload",
        &[&payload, &library, &arena.marker(), "/usr/bin/true"],
    );
    assert!(
        Path::new(&arena.marker()).exists(),
        "LD_PRELOAD must work where allowed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (_, steps) = arena.attack("mprotect-exec", &[&arena.denied()]);
    assert_eq!(step(&steps, "mprotect-exec")["ok"], true, "{steps:#?}");
    assert_eq!(step(&steps, "executable")["ok"], true, "{steps:#?}");
    let (_, steps) = arena.attack("symlink-exec", &[&arena.denied(), &arena.path("ws/l")]);
    assert!(
        steps.iter().all(|s| s["step"] != "exec"),
        "the exec must succeed (no failed step): {steps:#?}"
    );
}
