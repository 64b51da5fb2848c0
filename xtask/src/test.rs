//! `cargo xtask test`: the project's single test command. Builds everything, runs the test
//! executables on the host and the `vm` test executable in guests on every supported kernel,
//! writes `target/oxd-test-report.json` and ends with a line `N passed, N failed`.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::{
    kernel::Series,
    setup,
    util::{self, write_file},
    vm::{self, VmOptions},
};

/// The test target that must run inside the guests (package `oxd-tests`).
const VM_TARGET: &str = "vm";
const TESTS_PACKAGE: &str = "oxd-tests";
/// How long one guest may run the whole `vm` test executable.
const VM_TIMEOUT: Duration = Duration::from_mins(40);

/// The outcome of one test as libtest reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LibtestOutcome {
    Ok,
    Failed,
    Ignored,
}

/// What a libtest executable printed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct LibtestRun {
    /// One entry per test, in the order printed.
    pub results: Vec<(String, LibtestOutcome)>,
    /// The sum of `running N tests` announcements, when any was seen.
    pub announced: Option<usize>,
}

fn classify(word: &str) -> Option<LibtestOutcome> {
    let word = word.trim();
    if word == "ok" {
        Some(LibtestOutcome::Ok)
    } else if word == "FAILED" {
        Some(LibtestOutcome::Failed)
    } else if word == "ignored" || word.starts_with("ignored,") {
        Some(LibtestOutcome::Ignored)
    } else {
        None
    }
}

/// Parses libtest's human output (`test NAME ... ok|FAILED|ignored`). A result that stray
/// output pushed onto a later line (`test NAME ... noise` then `ok`) is still found.
pub(crate) fn parse_libtest(output: &str) -> LibtestRun {
    let mut run = LibtestRun::default();
    let mut pending: Option<String> = None;
    for line in output.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(count) = line
            .strip_prefix("running ")
            .and_then(|rest| {
                rest.strip_suffix(" tests")
                    .or_else(|| rest.strip_suffix(" test"))
            })
            .and_then(|n| n.trim().parse::<usize>().ok())
        {
            *run.announced.get_or_insert(0) += count;
            continue;
        }
        if let Some((name, rest)) = line
            .strip_prefix("test ")
            .and_then(|rest| rest.split_once(" ... "))
        {
            let name = name.trim();
            let name = name.strip_suffix(" - should panic").unwrap_or(name).trim();
            match classify(rest) {
                Some(outcome) => {
                    run.results.push((name.to_string(), outcome));
                    pending = None;
                }
                None => pending = Some(name.to_string()),
            }
            continue;
        }
        if let Some(outcome) = classify(line) {
            if let Some(name) = pending.take() {
                run.results.push((name, outcome));
            }
        }
    }
    run
}

/// A test executable built by `cargo test --no-run`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TestExecutable {
    pub package: String,
    pub target: String,
    pub kind: String,
    pub path: PathBuf,
    /// The package's directory, where `cargo test` would run the executable.
    pub package_dir: Option<PathBuf>,
}

/// The package name in a cargo package id (`path+file:///w/tests#oxd-tests@0.1.0`,
/// `path+file:///w/xtask#0.1.0`, `registry+...#name@1.0`, or the old `name 0.1.0 (...)`).
pub(crate) fn package_name(package_id: &str) -> String {
    if let Some((url, fragment)) = package_id.split_once('#') {
        if let Some((name, _version)) = fragment.split_once('@') {
            return name.to_string();
        }
        let path = url.trim_end_matches('/');
        return path.rsplit('/').next().unwrap_or(path).to_string();
    }
    package_id
        .split_whitespace()
        .next()
        .unwrap_or(package_id)
        .to_string()
}

/// Collects the test executables from `cargo test --no-run --message-format=json` output.
pub(crate) fn parse_test_executables(json_lines: &str) -> Vec<TestExecutable> {
    let mut found = Vec::new();
    for line in json_lines.lines() {
        let Ok(msg) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" || msg["profile"]["test"] != Value::Bool(true) {
            continue;
        }
        let Some(path) = msg["executable"].as_str() else {
            continue;
        };
        let exe = TestExecutable {
            package: package_name(msg["package_id"].as_str().unwrap_or_default()),
            target: msg["target"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            kind: msg["target"]["kind"][0]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            path: PathBuf::from(path),
            package_dir: msg["manifest_path"]
                .as_str()
                .and_then(|m| Path::new(m).parent())
                .map(Path::to_path_buf),
        };
        if !found.contains(&exe) {
            found.push(exe);
        }
    }
    found
}

/// The prefix of test names from each executable: its target name, with the kind added where
/// two targets share a name (a library and a binary both called `oxd`).
pub(crate) fn name_prefixes(exes: &[TestExecutable]) -> Vec<String> {
    exes.iter()
        .map(|exe| {
            let shared = exes
                .iter()
                .filter(|other| other.target == exe.target)
                .count()
                > 1;
            if shared && exe.kind != "lib" {
                format!("{}({})", exe.target, exe.kind)
            } else {
                exe.target.clone()
            }
        })
        .collect()
}

/// One line of the report.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub(crate) struct ReportEntry {
    pub test: String,
    pub environment: String,
    pub kernel: String,
    pub outcome: Outcome,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Outcome {
    Passed,
    Failed,
}

/// Turns one executable's output and exit status into report entries. Ignored tests count as
/// failed (nothing may be skipped); a non-zero exit without a failed test, or fewer results
/// than announced, adds a failed pseudo-test so that nothing fails silently.
pub(crate) fn entries_for_run(
    prefix: &str,
    environment: &str,
    kernel: &str,
    output: &str,
    exit_status: Option<i32>,
) -> Vec<ReportEntry> {
    let parsed = parse_libtest(output);
    let entry = |test: String, outcome| ReportEntry {
        test,
        environment: environment.to_string(),
        kernel: kernel.to_string(),
        outcome,
    };
    let mut entries: Vec<ReportEntry> = parsed
        .results
        .iter()
        .map(|(name, outcome)| {
            let outcome = match outcome {
                LibtestOutcome::Ok => Outcome::Passed,
                LibtestOutcome::Failed | LibtestOutcome::Ignored => Outcome::Failed,
            };
            entry(format!("{prefix}::{name}"), outcome)
        })
        .collect();
    let any_failed = entries.iter().any(|e| e.outcome == Outcome::Failed);
    if exit_status != Some(0) && !any_failed {
        let how = match exit_status {
            Some(code) => format!("exit status {code}"),
            None => "killed by a signal".to_string(),
        };
        entries.push(entry(
            format!("{prefix}::<binary crashed: {how}>"),
            Outcome::Failed,
        ));
    }
    if let Some(announced) = parsed.announced {
        if parsed.results.len() < announced {
            entries.push(entry(
                format!(
                    "{prefix}::<{} of {announced} test results missing from the output>",
                    announced - parsed.results.len()
                ),
                Outcome::Failed,
            ));
        }
    }
    entries
}

fn say(msg: &str) {
    println!("[test] {msg}");
}

fn host_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_string(), |s| s.trim().to_string())
}

/// Build profile of the binaries a test stage runs: the host stage runs the debug build (quick
/// to compile, with debug assertions); the guests run the release build, because every test
/// there starts `oxd`, and a debug `oxd` spends seconds of emulated CPU parsing the kernel's BTF
/// and loading its programs (about 7 s against 2 s per `oxd run` in a 6.12 guest).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Profile {
    Debug,
    Release,
}

impl Profile {
    /// The directory under `target/` that holds this profile's binaries.
    pub(crate) fn dir_name(self) -> &'static str {
        match self {
            Self::Debug => "debug",
            Self::Release => "release",
        }
    }

    /// The cargo flags that select this profile.
    fn cargo_args(self) -> &'static [&'static str] {
        match self {
            Self::Debug => &[],
            Self::Release => &["--release"],
        }
    }
}

/// The environment a test executable needs: where the binaries of `profile` are.
fn test_env(profile: Profile) -> Vec<(String, String)> {
    let dir = util::target_dir().join(profile.dir_name());
    vec![
        ("OXD_BIN".into(), dir.join("oxd").display().to_string()),
        (
            "OXD_PROBE".into(),
            dir.join("oxd-probe").display().to_string(),
        ),
        (
            "OXD_ATTACK".into(),
            dir.join("oxd-attack").display().to_string(),
        ),
        ("OXD_REPO".into(), util::repo_root().display().to_string()),
    ]
}

/// Records a failure of the driver itself (a stage that could not run).
fn stage_failure(report: &mut Vec<ReportEntry>, test: &str, environment: &str, kernel: &str) {
    report.push(ReportEntry {
        test: test.to_string(),
        environment: environment.to_string(),
        kernel: kernel.to_string(),
        outcome: Outcome::Failed,
    });
}

/// Builds the binaries and the `vm` test executable the guests run, in release mode; returns
/// the `vm` executable, or `None` (with a failure recorded) when the build failed.
fn build_guest_tests(host_kernel: &str, report: &mut Vec<ReportEntry>) -> Option<TestExecutable> {
    let profile = Profile::Release;
    say(&format!(
        "build: cargo build {} --package oxd --package {TESTS_PACKAGE} (for the guests)",
        profile.cargo_args().join(" ")
    ));
    let mut cmd = util::cargo();
    cmd.arg("build").args(profile.cargo_args()).args([
        "--package",
        "oxd",
        "--package",
        TESTS_PACKAGE,
    ]);
    if let Err(err) = util::run(&mut cmd) {
        say(&format!("build FAILED: {err:#}"));
        stage_failure(
            report,
            "xtask::<cargo build --release failed>",
            "host",
            host_kernel,
        );
        return None;
    }
    let mut cmd = util::cargo();
    cmd.arg("test")
        .args(profile.cargo_args())
        .args([
            "--package",
            TESTS_PACKAGE,
            "--test",
            VM_TARGET,
            "--no-run",
            "--message-format=json",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    say(&format!("build: {}", util::describe(&cmd)));
    let exe = match cmd.output() {
        Ok(out) if out.status.success() => {
            parse_test_executables(&String::from_utf8_lossy(&out.stdout))
                .into_iter()
                .find(is_vm_target)
        }
        Ok(out) => {
            say(&format!(
                "build FAILED: cargo test --no-run exited with {}",
                out.status
            ));
            None
        }
        Err(err) => {
            say(&format!("build FAILED: cannot start cargo: {err}"));
            None
        }
    };
    if exe.is_none() {
        stage_failure(
            report,
            "xtask::<cargo test --release --no-run failed>",
            "host",
            host_kernel,
        );
    }
    exe
}

fn build(host_kernel: &str, report: &mut Vec<ReportEntry>) -> Vec<TestExecutable> {
    say("build: cargo build --package oxd --package oxd-tests");
    if let Err(err) =
        util::run(util::cargo().args(["build", "--package", "oxd", "--package", TESTS_PACKAGE]))
    {
        say(&format!("build FAILED: {err:#}"));
        stage_failure(report, "xtask::<cargo build failed>", "host", host_kernel);
    }
    say("build: cargo test --workspace --exclude oxd-ebpf --no-run --message-format=json");
    let mut cmd = util::cargo();
    cmd.args([
        "test",
        "--workspace",
        "--exclude",
        "oxd-ebpf",
        "--no-run",
        "--message-format=json",
    ]);
    let out = match cmd.stdin(Stdio::null()).stderr(Stdio::inherit()).output() {
        Ok(out) => out,
        Err(err) => {
            say(&format!("build FAILED: cannot start cargo: {err}"));
            stage_failure(
                report,
                "xtask::<cargo test --no-run failed>",
                "host",
                host_kernel,
            );
            return Vec::new();
        }
    };
    if !out.status.success() {
        say(&format!(
            "build FAILED: cargo test --no-run exited with {}",
            out.status
        ));
        stage_failure(
            report,
            "xtask::<cargo test --no-run failed>",
            "host",
            host_kernel,
        );
    }
    let mut exes = parse_test_executables(&String::from_utf8_lossy(&out.stdout));
    // Cargo reports artifacts in completion order; run them in a stable one.
    exes.sort_by(|a, b| (&a.package, &a.target, &a.kind).cmp(&(&b.package, &b.target, &b.kind)));
    for exe in &exes {
        say(&format!(
            "built {}/{} ({}): {}",
            exe.package,
            exe.target,
            exe.kind,
            exe.path.display()
        ));
    }
    exes
}

/// Runs one test executable on the host, echoing and returning its stdout and exit status.
fn run_on_host(exe: &TestExecutable) -> Result<(String, Option<i32>)> {
    let cwd = exe.package_dir.clone().unwrap_or_else(util::repo_root);
    let exe = exe.path.as_path();
    let mut cmd = Command::new(exe);
    cmd.arg("--test-threads=1")
        .envs(test_env(Profile::Debug))
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    let stdout = child
        .stdout
        .take()
        .context("test executable has no stdout")?;
    let mut output = String::new();
    let mut echo = std::io::stdout();
    for line in BufReader::new(stdout).split(b'\n') {
        let line = line.with_context(|| format!("cannot read the output of {}", exe.display()))?;
        let line = String::from_utf8_lossy(&line);
        // Echo is best effort; the captured copy is what counts.
        let _ = writeln!(echo, "{line}");
        output.push_str(&line);
        output.push('\n');
    }
    let status = child
        .wait()
        .with_context(|| format!("cannot wait for {}", exe.display()))?;
    Ok((output, status.code()))
}

fn host_stage(
    exes: &[TestExecutable],
    prefixes: &[String],
    host_kernel: &str,
    report: &mut Vec<ReportEntry>,
) {
    for (exe, prefix) in exes.iter().zip(prefixes) {
        if is_vm_target(exe) {
            continue;
        }
        say(&format!(
            "host: {} --test-threads=1 ({}/{})",
            exe.path.display(),
            exe.package,
            exe.target
        ));
        match run_on_host(exe) {
            Ok((output, status)) => {
                report.extend(entries_for_run(
                    prefix,
                    "host",
                    host_kernel,
                    &output,
                    status,
                ));
            }
            Err(err) => {
                say(&format!(
                    "host: FAILED to run {}: {err:#}",
                    exe.path.display()
                ));
                stage_failure(
                    report,
                    &format!("{prefix}::<could not run>"),
                    "host",
                    host_kernel,
                );
            }
        }
    }
}

fn is_vm_target(exe: &TestExecutable) -> bool {
    exe.target == VM_TARGET && exe.package == TESTS_PACKAGE
}

fn vm_stage(setup: &setup::Setup, vm_exe: Option<&TestExecutable>, report: &mut Vec<ReportEntry>) {
    let vm_exe = vm_exe.map(|exe| (exe, VM_TARGET));
    for series in Series::ALL {
        let kernel = setup.kernel(series);
        let release = kernel.map_or_else(|| series.to_string(), |k| k.release.clone());
        let Some(kernel) = kernel else {
            say(&format!(
                "vm {series}: FAILED: no guest kernel (setup failed)"
            ));
            stage_failure(
                report,
                &format!("{VM_TARGET}::<no guest kernel>"),
                "vm",
                &release,
            );
            continue;
        };
        let Some((exe, prefix)) = vm_exe else {
            say(&format!(
                "vm {series}: FAILED: the {TESTS_PACKAGE}/{VM_TARGET} test executable was not built"
            ));
            stage_failure(report, &format!("{VM_TARGET}::<not built>"), "vm", &release);
            continue;
        };
        say(&format!(
            "vm {series}: running {} --test-threads=1 in a guest booting {} ({})",
            exe.path.display(),
            kernel.release,
            kernel.package
        ));
        let argv = vec![
            exe.path.display().to_string(),
            "--test-threads=1".to_string(),
        ];
        let opts = VmOptions {
            timeout: VM_TIMEOUT,
            env: test_env(Profile::Release),
            capture_stdout: true,
            echo_console: true,
            cwd: exe.package_dir.clone(),
        };
        match vm::run_in_vm(kernel, &argv, &opts) {
            Ok(outcome) => {
                say(&format!(
                    "vm {series}: guest {} finished in {:.1} s with exit status {}",
                    outcome.kernel_release,
                    outcome.elapsed.as_secs_f64(),
                    outcome.status
                ));
                report.extend(entries_for_run(
                    prefix,
                    "vm",
                    &outcome.kernel_release,
                    outcome.stdout.as_deref().unwrap_or_default(),
                    Some(outcome.status),
                ));
            }
            Err(err) => {
                say(&format!("vm {series}: FAILED: {err:#}"));
                stage_failure(report, &format!("{prefix}::<guest failed>"), "vm", &release);
            }
        }
    }
}

/// Prints the per-environment summary; returns (passed, failed).
fn summarize(report: &[ReportEntry]) -> (usize, usize) {
    let mut groups: BTreeMap<(&str, &str), (usize, usize)> = BTreeMap::new();
    for entry in report {
        let counts = groups
            .entry((entry.environment.as_str(), entry.kernel.as_str()))
            .or_default();
        match entry.outcome {
            Outcome::Passed => counts.0 += 1,
            Outcome::Failed => counts.1 += 1,
        }
    }
    say("summary:");
    for ((environment, kernel), (passed, failed)) in &groups {
        println!("  {environment:<4} {kernel:<24} {passed} passed, {failed} failed");
    }
    let failed: Vec<&ReportEntry> = report
        .iter()
        .filter(|e| e.outcome == Outcome::Failed)
        .collect();
    if !failed.is_empty() {
        say("failed:");
        for entry in &failed {
            println!("  {} [{} {}]", entry.test, entry.environment, entry.kernel);
        }
    }
    (report.len() - failed.len(), failed.len())
}

fn write_report(report: &[ReportEntry]) -> Result<PathBuf> {
    let path = util::repo_root()
        .join("target")
        .join("oxd-test-report.json");
    let json = serde_json::to_string_pretty(report).context("cannot serialize the report")?;
    write_file(&path, json + "\n")?;
    Ok(path)
}

/// The source checks, each one report entry: clippy under the workspace lints (every crate,
/// every target, warnings denied) and rustfmt (nightly: rustfmt.toml uses its options).
fn lint_stage(host_kernel: &str, report: &mut Vec<ReportEntry>) {
    let checks: [(&str, Command); 2] = [
        ("xtask::lint::clippy_workspace_all_targets_deny_warnings", {
            let mut cmd = util::cargo();
            cmd.args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]);
            cmd
        }),
        ("xtask::lint::rustfmt_check", {
            let mut cmd = Command::new("rustup");
            cmd.args(["run", "nightly", "cargo", "fmt", "--all", "--check"]);
            cmd
        }),
    ];
    for (test, mut cmd) in checks {
        say(&format!("lint: {}", util::describe(&cmd)));
        let outcome = match util::run(cmd.current_dir(util::repo_root())) {
            Ok(()) => Outcome::Passed,
            Err(err) => {
                say(&format!("lint FAILED: {err:#}"));
                Outcome::Failed
            }
        };
        report.push(ReportEntry {
            test: test.to_string(),
            environment: "host".to_string(),
            kernel: host_kernel.to_string(),
            outcome,
        });
    }
}

/// Runs the whole test suite; returns whether everything passed.
pub(crate) fn run() -> bool {
    let host_kernel = host_release();
    let mut report = Vec::new();

    say("setup");
    let setup = setup::run(true);
    for (step, err) in &setup.failures {
        say(&format!("setup FAILED: {step}: {err:#}"));
        stage_failure(
            &mut report,
            &format!("xtask::<setup: {step} failed>"),
            "host",
            &host_kernel,
        );
    }

    let exes = build(&host_kernel, &mut report);
    let prefixes = name_prefixes(&exes);
    let guest_tests = build_guest_tests(&host_kernel, &mut report);
    lint_stage(&host_kernel, &mut report);

    say(&format!(
        "host: running tests on the host kernel {host_kernel}"
    ));
    if !util::is_root() {
        say("warning: not running as root; tests that need BPF or cgroups will fail");
    }
    host_stage(&exes, &prefixes, &host_kernel, &mut report);

    say("vm: running the vm tests in guests");
    vm_stage(&setup, guest_tests.as_ref(), &mut report);

    let written = write_report(&report);
    match &written {
        Ok(path) => say(&format!("report written to {}", path.display())),
        Err(err) => say(&format!("FAILED to write the report: {err:#}")),
    }
    let (passed, failed) = summarize(&report);
    println!("{passed} passed, {failed} failed");
    failed == 0 && written.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIBTEST: &str = "\
running 4 tests
test policy::tests::parses_example ... ok
test policy::tests::rejects_bad ... FAILED
test slow::one ... ignored
test slow::two ... ignored, needs a VM
test panics - should panic ... ok

failures:

---- policy::tests::rejects_bad stdout ----
test result: FAILED. 2 passed; 1 failed; 2 ignored; 0 measured; 0 filtered out
";

    #[test]
    fn parses_libtest_lines() {
        let run = parse_libtest(LIBTEST);
        assert_eq!(run.announced, Some(4));
        assert_eq!(
            run.results,
            vec![
                (
                    "policy::tests::parses_example".to_string(),
                    LibtestOutcome::Ok
                ),
                (
                    "policy::tests::rejects_bad".to_string(),
                    LibtestOutcome::Failed
                ),
                ("slow::one".to_string(), LibtestOutcome::Ignored),
                ("slow::two".to_string(), LibtestOutcome::Ignored),
                ("panics".to_string(), LibtestOutcome::Ok),
            ]
        );
    }

    #[test]
    fn finds_results_pushed_to_a_later_line() {
        let run = parse_libtest(
            "running 2 tests\r\ntest a ... child says hi\r\nok\r\ntest b ... \nnoise\nFAILED\n",
        );
        assert_eq!(
            run.results,
            vec![
                ("a".to_string(), LibtestOutcome::Ok),
                ("b".to_string(), LibtestOutcome::Failed),
            ]
        );
    }

    #[test]
    fn ignored_tests_fail_and_names_carry_the_target() {
        let entries = entries_for_run("oxd", "host", "6.18", LIBTEST, Some(101));
        let outcome = |name: &str| entries.iter().find(|e| e.test == name).map(|e| e.outcome);
        assert_eq!(
            outcome("oxd::policy::tests::parses_example"),
            Some(Outcome::Passed)
        );
        assert_eq!(
            outcome("oxd::policy::tests::rejects_bad"),
            Some(Outcome::Failed)
        );
        assert_eq!(outcome("oxd::slow::one"), Some(Outcome::Failed));
        assert_eq!(
            entries.len(),
            5,
            "no pseudo-test when a failure explains the status"
        );
        assert!(entries
            .iter()
            .all(|e| e.environment == "host" && e.kernel == "6.18"));
    }

    #[test]
    fn crashes_and_missing_results_become_failures() {
        let crashed = entries_for_run(
            "vm",
            "vm",
            "6.1.0-56-amd64",
            "running 3 tests\ntest a ... ok\ntest b ... ",
            Some(134),
        );
        let names: Vec<&str> = crashed.iter().map(|e| e.test.as_str()).collect();
        assert_eq!(
            names,
            [
                "vm::a",
                "vm::<binary crashed: exit status 134>",
                "vm::<2 of 3 test results missing from the output>"
            ]
        );
        assert!(entries_for_run("t", "host", "k", "", None)
            .iter()
            .any(|e| e.test == "t::<binary crashed: killed by a signal>"));
        assert!(entries_for_run("t", "host", "k", "running 0 tests\n", Some(0)).is_empty());
    }

    #[test]
    fn reads_package_names_from_ids() {
        assert_eq!(
            package_name("path+file:///work/main/tests#oxd-tests@0.1.0"),
            "oxd-tests"
        );
        assert_eq!(package_name("path+file:///work/main/xtask#0.1.0"), "xtask");
        assert_eq!(
            package_name("registry+https://github.com/rust-lang/crates.io-index#serde@1.0.200"),
            "serde"
        );
        assert_eq!(
            package_name("oxd 0.1.0 (path+file:///work/main/oxd)"),
            "oxd"
        );
    }

    #[test]
    fn collects_test_executables_from_cargo_json() {
        let json = r#"{"reason":"compiler-artifact","package_id":"path+file:///w/oxd#0.1.0","target":{"kind":["lib"],"name":"oxd"},"profile":{"test":true},"executable":"/w/target/debug/deps/oxd-1"}
{"reason":"compiler-artifact","package_id":"path+file:///w/oxd#0.1.0","target":{"kind":["bin"],"name":"oxd"},"profile":{"test":true},"executable":"/w/target/debug/deps/oxd-2"}
{"reason":"compiler-artifact","package_id":"path+file:///w/oxd#0.1.0","target":{"kind":["bin"],"name":"oxd"},"profile":{"test":false},"executable":"/w/target/debug/oxd"}
{"reason":"compiler-artifact","package_id":"path+file:///w/tests#oxd-tests@0.1.0","manifest_path":"/w/tests/Cargo.toml","target":{"kind":["test"],"name":"vm"},"profile":{"test":true},"executable":"/w/target/debug/deps/vm-3"}
{"reason":"compiler-artifact","package_id":"path+file:///w/oxd-common#0.1.0","target":{"kind":["lib"],"name":"oxd_common"},"profile":{"test":false},"executable":null}
{"reason":"build-finished","success":true}
not json"#;
        let exes = parse_test_executables(json);
        assert_eq!(exes.len(), 3);
        assert_eq!(exes[2].package, "oxd-tests");
        assert_eq!(exes[2].target, "vm");
        assert!(is_vm_target(&exes[2]));
        assert_eq!(exes[2].path, PathBuf::from("/w/target/debug/deps/vm-3"));
        assert_eq!(exes[2].package_dir, Some(PathBuf::from("/w/tests")));
        assert_eq!(exes[0].package_dir, None);
        assert_eq!(name_prefixes(&exes), ["oxd", "oxd(bin)", "vm"]);
    }

    #[test]
    fn report_uses_the_agreed_field_names() {
        let entry = ReportEntry {
            test: "vm::x".into(),
            environment: "vm".into(),
            kernel: "6.12.117+deb12-amd64".into(),
            outcome: Outcome::Passed,
        };
        let json = serde_json::to_value(&entry).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({"test": "vm::x", "environment": "vm", "kernel": "6.12.117+deb12-amd64", "outcome": "passed"})
        );
    }
}
