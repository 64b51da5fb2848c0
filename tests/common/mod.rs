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

pub const EPERM: i64 = 1;

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
pub fn oxd_bin() -> PathBuf {
    binary("OXD_BIN", "oxd")
}

/// The `oxd-probe` helper.
pub fn probe_bin() -> PathBuf {
    binary("OXD_PROBE", "oxd-probe")
}

/// The repository root.
pub fn repo() -> PathBuf {
    std::env::var_os("OXD_REPO").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."),
        PathBuf::from,
    )
}

/// A scratch directory removed when dropped.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new(test: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("oxd-test-{test}-"))
            .tempdir()
            .expect("create a scratch directory");
        Self { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a policy file and returns its path.
    pub fn policy(&self, text: &str) -> PathBuf {
        let path = self.path("policy.toml");
        fs::write(&path, text).expect("write the policy");
        path
    }
}

/// `oxd run --policy POLICY --audit-log LOG -- ARGS...`, waited for.
pub fn oxd_run(policy: &Path, log: &Path, args: &[&str]) -> Output {
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

pub fn oxd_run_command(policy: &Path, log: &Path, args: &[&str]) -> Command {
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
pub fn oxd_run_spawn(policy: &Path, log: &Path, args: &[&str]) -> Child {
    oxd_run_command(policy, log, args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn oxd run")
}

/// Reads the next probe result line from a running probe's stdout.
pub fn next_probe_line(reader: &mut impl std::io::BufRead) -> Value {
    let mut line = String::new();
    reader.read_line(&mut line).expect("read probe output");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad probe line {line:?}: {e}"))
}

/// Probe results of a finished run, keyed by action, in order.
pub fn probe_results(output: &Output) -> Vec<Value> {
    BufReader::new(&output.stdout[..])
        .lines()
        .map(|l| l.expect("probe output is text"))
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(&l).unwrap_or_else(|e| panic!("bad probe line {l:?}: {e}")))
        .collect()
}

/// The result of one action; panics if the probe did not report it.
pub fn result_of<'a>(results: &'a [Value], action: &str) -> &'a Value {
    results
        .iter()
        .find(|r| r["action"] == action)
        .unwrap_or_else(|| panic!("no result for {action} in {results:#?}"))
}

pub fn assert_ok(results: &[Value], action: &str) {
    let r = result_of(results, action);
    assert_eq!(r["ok"], true, "{action} should have succeeded: {r}");
}

pub fn assert_eperm(results: &[Value], action: &str) {
    let r = result_of(results, action);
    assert_eq!(r["ok"], false, "{action} should have been denied: {r}");
    assert_eq!(r["errno"], EPERM, "{action} should fail with EPERM: {r}");
}

/// Every record of an audit log.
pub fn audit_records(log: &Path) -> Vec<Value> {
    let text = fs::read_to_string(log)
        .unwrap_or_else(|e| panic!("cannot read audit log {}: {e}", log.display()));
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad audit line {l:?}: {e}")))
        .collect()
}

/// The audit records for `op` on `target`.
pub fn records_for<'a>(records: &'a [Value], op: &str, target: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["op"] == op && r["target"] == target)
        .collect()
}

/// Asserts exactly one record for (op, target), with the given decision and rule.
pub fn assert_record(records: &[Value], op: &str, target: &str, decision: &str, rule: &str) {
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
