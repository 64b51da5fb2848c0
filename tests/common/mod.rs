//! Helpers shared by the host and VM integration tests: where the binaries are, scratch
//! directories, running `oxd run`, and reading probe results and audit logs.
//!
//! Tests panic with context rather than returning errors, so a failure says where it happened.

#![allow(dead_code, reason = "each test target uses a different subset")]

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
};

use serde_json::Value;

pub(crate) mod daemon;

pub(crate) use daemon::*;

pub(crate) const EPERM: i64 = 1;

/// Exec rules for the directories dynamically linked programs (the probe, coreutils, python3)
/// load their shared libraries from: mapping a file executable is decided by the exec rules,
/// default included, so every exec allowlist in the tests ends with these (at the end, so the
/// indices of the rules before them stay as the tests name them).
pub(crate) const LIBRARIES: &str = r#""/usr/lib/x86_64-linux-gnu/**", "/lib/x86_64-linux-gnu/**""#;

fn target_dir_binary(name: &str) -> PathBuf {
    // Test executables live in target/<profile>/deps/; binaries in target/<profile>/.
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .map(|dir| dir.join(name))
        .expect("test executable has no target directory")
}

fn binary(env: &str, name: &str) -> PathBuf {
    let path = std::env::var_os(env).map_or_else(|| target_dir_binary(name), PathBuf::from);
    assert!(
        path.is_file(),
        "{name} not found at {} (build it with `cargo build -p oxd -p oxd-tests`, or set {env})",
        path.display()
    );
    path
}

/// The `oxd` binary under test.
pub(crate) fn oxd_bin() -> PathBuf {
    binary("OXD_BIN", "oxd")
}

/// The `oxd-probe` helper.
pub(crate) fn probe_bin() -> PathBuf {
    binary("OXD_PROBE", "oxd-probe")
}

/// The `oxd-attack` helper (the attack suite's techniques).
pub(crate) fn attack_bin() -> PathBuf {
    binary("OXD_ATTACK", "oxd-attack")
}

/// The repository root.
pub(crate) fn repo() -> PathBuf {
    std::env::var_os("OXD_REPO").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."),
        PathBuf::from,
    )
}

/// A scratch directory removed when dropped.
pub(crate) struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    pub(crate) fn new(test: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("oxd-test-{test}-"))
            .tempdir()
            .expect("create a scratch directory");
        Self { dir }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a policy file and returns its path.
    pub(crate) fn policy(&self, text: &str) -> PathBuf {
        let path = self.path("policy.toml");
        fs::write(&path, text).expect("write the policy");
        path
    }
}

/// `oxd run --policy POLICY --audit-log LOG -- ARGS...`, waited for.
pub(crate) fn oxd_run(policy: &Path, log: &Path, args: &[&str]) -> Output {
    let output = oxd_run_command(policy, log, args)
        .output()
        .expect("spawn oxd run");
    eprintln!(
        "oxd run {args:?}: {}\n--- stdout\n{}--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `oxd run --user 65534:65534 --policy POLICY --audit-log LOG -- ARGS...`: the agent as an
/// ordinary user, waited for.
pub(crate) fn oxd_run_as_nobody(policy: &Path, log: &Path, args: &[&str]) -> Output {
    let output = Command::new(oxd_bin())
        .args(["run", "--user", "65534:65534", "--policy"])
        .arg(policy)
        .arg("--audit-log")
        .arg(log)
        .arg("--")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("spawn oxd run --user");
    eprintln!(
        "oxd run --user 65534:65534 {args:?}: {}\n--- stdout\n{}--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

pub(crate) fn oxd_run_command(policy: &Path, log: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(oxd_bin());
    cmd.arg("run")
        .arg("--policy")
        .arg(policy)
        .arg("--audit-log")
        .arg(log)
        .arg("--");
    cmd.args(args);
    cmd.stdin(Stdio::null());
    cmd
}

/// `oxd run` in the background with its stdout piped.
pub(crate) fn oxd_run_spawn(policy: &Path, log: &Path, args: &[&str]) -> Child {
    oxd_run_command(policy, log, args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn oxd run")
}

/// Reads the next probe result line from a running probe's stdout.
pub(crate) fn next_probe_line(reader: &mut impl std::io::BufRead) -> Value {
    let mut line = String::new();
    reader.read_line(&mut line).expect("read probe output");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad probe line {line:?}: {e}"))
}

/// Probe results of a finished run, keyed by action, in order.
pub(crate) fn probe_results(output: &Output) -> Vec<Value> {
    BufReader::new(&output.stdout[..])
        .lines()
        .map(|l| l.expect("probe output is text"))
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(&l).unwrap_or_else(|e| panic!("bad probe line {l:?}: {e}")))
        .collect()
}

/// The result of one action; panics if the probe did not report it.
pub(crate) fn result_of<'a>(results: &'a [Value], action: &str) -> &'a Value {
    results
        .iter()
        .find(|r| r["action"] == action)
        .unwrap_or_else(|| panic!("no result for {action} in {results:#?}"))
}

/// The counts of a probe's `times:`, `hold:` or `keep:` report: (allowed, refused with EPERM,
/// failed otherwise).
pub(crate) fn counts(result: &Value) -> (u64, u64, u64) {
    let n = |field: &str| {
        result[field]
            .as_u64()
            .unwrap_or_else(|| panic!("no {field} in {result}"))
    };
    (n("allowed"), n("eperm"), n("other"))
}

pub(crate) fn assert_ok(results: &[Value], action: &str) {
    let r = result_of(results, action);
    assert_eq!(r["ok"], true, "{action} should have succeeded: {r}");
}

pub(crate) fn assert_eperm(results: &[Value], action: &str) {
    let r = result_of(results, action);
    assert_eq!(r["ok"], false, "{action} should have been denied: {r}");
    assert_eq!(r["errno"], EPERM, "{action} should fail with EPERM: {r}");
}

/// Every record of an audit log.
pub(crate) fn audit_records(log: &Path) -> Vec<Value> {
    let text = fs::read_to_string(log)
        .unwrap_or_else(|e| panic!("cannot read audit log {}: {e}", log.display()));
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad audit line {l:?}: {e}")))
        .collect()
}

/// The audit records for `op` on `target`.
pub(crate) fn records_for<'a>(records: &'a [Value], op: &str, target: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["op"] == op && r["target"] == target)
        .collect()
}

/// Asserts exactly one record for (op, target), with the given decision and rule.
pub(crate) fn assert_record(records: &[Value], op: &str, target: &str, decision: &str, rule: &str) {
    let found = records_for(records, op, target);
    assert_eq!(
        found.len(),
        1,
        "expected one {op} record for {target}, got {found:#?}\nall: {records:#?}"
    );
    let r = found[0];
    assert_eq!(r["decision"], decision, "decision for {op} {target}: {r}");
    assert_eq!(r["rule"], rule, "rule for {op} {target}: {r}");
    assert_eq!(r["enforced"], true, "{r}");
    for field in [
        "time",
        "pid",
        "uid",
        "comm",
        "cgroup_id",
        "policy",
        "policy_sha256",
        "reason",
    ] {
        assert!(!r[field].is_null(), "record lacks {field}: {r}");
    }
}

/// A cgroup made for a test, directly below the cgroup2 mount. Dropping it kills every process
/// inside (and in the cgroups below it) and removes it, deepest first.
pub(crate) struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    /// Creates `oxd-test-NAME-PID` below the cgroup2 mount (`/sys/fs/cgroup`, or
    /// `/sys/fs/cgroup/unified` on a hybrid host).
    pub(crate) fn new(name: &str) -> Self {
        let root = oxd::host::cgroup2_mount().expect("a cgroup2 mount");
        let root = root.as_path();
        assert!(
            root.join("cgroup.controllers").exists(),
            "{} is not a cgroup2 mount",
            root.display()
        );
        let path = root.join(format!("oxd-test-{name}-{}", std::process::id()));
        fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("cannot create cgroup {}: {e}", path.display()));
        Self { path }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn path_str(&self) -> &str {
        self.path.to_str().expect("utf-8 cgroup path")
    }

    /// The id the kernel and the audit records use: the directory's inode.
    pub(crate) fn id(&self) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        fs::metadata(&self.path)
            .unwrap_or_else(|e| panic!("cannot stat {}: {e}", self.path.display()))
            .ino()
    }

    /// A command whose process joins this cgroup before it executes `program`.
    pub(crate) fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        use std::os::unix::{io::AsRawFd as _, process::CommandExt as _};
        let procs_path = self.path.join("cgroup.procs");
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(&procs_path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", procs_path.display()));
        let mut cmd = Command::new(program);
        cmd.stdin(Stdio::null());
        // SAFETY: the closure makes one async-signal-safe system call (write).
        unsafe {
            cmd.pre_exec(move || {
                if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// Pids in this cgroup and below.
    fn pids(dir: &Path) -> Vec<i32> {
        let mut pids: Vec<i32> = fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        for sub in Self::subdirs(dir) {
            pids.extend(Self::pids(&sub));
        }
        pids
    }

    fn subdirs(dir: &Path) -> Vec<PathBuf> {
        fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn remove_tree(dir: &Path) {
        for sub in Self::subdirs(dir) {
            Self::remove_tree(&sub);
        }
        for _ in 0..500 {
            match fs::remove_dir(dir) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    eprintln!("cannot remove cgroup {}: {e}", dir.display());
                    return;
                }
                _ => return,
            }
        }
        eprintln!("cgroup {} stayed busy", dir.display());
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !Self::pids(&self.path).is_empty() && std::time::Instant::now() < deadline {
            // cgroup.kill kills the whole subtree, including processes forked meanwhile.
            let _ = fs::write(self.path.join("cgroup.kill"), "1");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Self::remove_tree(&self.path);
    }
}

/// A child process killed and reaped when dropped.
pub(crate) struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads a pipe to its end in a thread.
fn collect_pipe(
    pipe: Option<impl std::io::Read + Send + 'static>,
) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}

/// Runs `cmd` with stdin closed and its output captured; `None` if it did not finish within
/// `timeout` (it is then killed).
pub(crate) fn output_within(cmd: &mut Command, timeout: std::time::Duration) -> Option<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
    let stdout = collect_pipe(child.stdout.take());
    let stderr = collect_pipe(child.stderr.take());
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                // The reader threads are left behind: a grandchild may still hold the pipes.
                return None;
            }
            Err(e) => panic!("cannot wait for {cmd:?}: {e}"),
        }
    };
    Some(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Polls `check` every 50 ms until it returns `Some`, for at most `timeout`; panics naming
/// `what` if it never does.
pub(crate) fn wait_for<T>(
    what: &str,
    timeout: std::time::Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The complete records of an audit log that may still be being written (a trailing partial
/// line is left out; a missing file has none).
pub(crate) fn audit_records_so_far(log: &Path) -> Vec<Value> {
    let text = match fs::read_to_string(log) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("cannot read audit log {}: {e}", log.display()),
    };
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad audit line {l:?}: {e}")))
        .collect()
}

/// `oxd audit verify LOG`; panics with its output unless it exits 0.
pub(crate) fn assert_audit_log_verifies(log: &Path) {
    let output = Command::new(oxd_bin())
        .args(["audit", "verify"])
        .arg(log)
        .output()
        .expect("run oxd audit verify");
    assert!(
        output.status.success(),
        "oxd audit verify {} failed ({}):\n{}{}",
        log.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A private bpf file system mounted on a scratch directory (a host may have none at
/// /sys/fs/bpf); unmounted when dropped.
pub(crate) struct BpffsMount {
    pub path: PathBuf,
}

impl BpffsMount {
    pub(crate) fn new(scratch: &Scratch, name: &str) -> Self {
        let path = scratch.path(name);
        fs::create_dir_all(&path).expect("create the bpffs mount point");
        let status = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&path)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "cannot mount a bpf file system at {}",
            path.display()
        );
        Self { path }
    }
}

impl Drop for BpffsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
