//! `cargo xtask verifier-stats`: boots each guest kernel, loads every kernel program there (the
//! `vm` test `verifier_instruction_counts`) and prints how many instructions the verifier
//! processed for each: the number to watch when a change makes a hook harder to verify.

use std::{process::Stdio, time::Duration};

use anyhow::{bail, Context, Result};

use crate::{
    kernel::Series,
    setup,
    test::parse_test_executables,
    util,
    vm::{self, VmOptions},
};

/// The test that loads the programs and prints their counts.
const STATS_TEST: &str = "verifier_instruction_counts";
/// The prefix of its output lines.
const LINE_PREFIX: &str = "verifier: ";
const VM_TIMEOUT: Duration = Duration::from_mins(10);

/// One program on one kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Row {
    pub program: String,
    pub kernel: String,
    pub verified_insns: String,
    pub xlated_insns: String,
}

/// Collects the rows the test printed (`verifier: PROGRAM KERNEL VERIFIED XLATED`), skipping
/// its header and anything else on the console.
pub(crate) fn parse_rows(output: &str) -> Vec<Row> {
    output
        .lines()
        .filter_map(|line| {
            let rest = line.trim_end_matches('\r').strip_prefix(LINE_PREFIX)?;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let [program, kernel, verified, xlated] = fields[..] else {
                return None;
            };
            if program == "program" {
                return None;
            }
            Some(Row {
                program: program.to_string(),
                kernel: kernel.to_string(),
                verified_insns: verified.to_string(),
                xlated_insns: xlated.to_string(),
            })
        })
        .collect()
}

/// The table: one line per program and kernel, columns aligned.
pub(crate) fn format_table(rows: &[Row]) -> String {
    let header = Row {
        program: "program".into(),
        kernel: "kernel".into(),
        verified_insns: "verified_insns".into(),
        xlated_insns: "xlated_insns".into(),
    };
    let all: Vec<&Row> = std::iter::once(&header).chain(rows).collect();
    let width = |f: fn(&Row) -> &str| all.iter().map(|r| f(r).len()).max().unwrap_or(0);
    let (w_program, w_kernel, w_verified) = (
        width(|r| &r.program),
        width(|r| &r.kernel),
        width(|r| &r.verified_insns),
    );
    let mut table = String::new();
    for r in all {
        table.push_str(&format!(
            "{:<w_program$}  {:<w_kernel$}  {:>w_verified$}  {:>12}\n",
            r.program, r.kernel, r.verified_insns, r.xlated_insns
        ));
    }
    table
}

/// Builds the `vm` test executable and returns its path and package directory.
fn build_vm_tests() -> Result<(String, Option<std::path::PathBuf>)> {
    eprintln!("[verifier] building: cargo test -p oxd-tests --test vm --no-run");
    let out = util::cargo()
        .args([
            "test",
            "--package",
            "oxd-tests",
            "--test",
            "vm",
            "--no-run",
            "--message-format=json",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("cannot start cargo")?;
    if !out.status.success() {
        bail!("building the vm tests failed: {}", out.status);
    }
    let exes = parse_test_executables(&String::from_utf8_lossy(&out.stdout));
    let exe = exes
        .into_iter()
        .find(|e| e.package == "oxd-tests" && e.target == "vm")
        .context("cargo built no oxd-tests/vm test executable")?;
    Ok((exe.path.display().to_string(), exe.package_dir))
}

/// Runs the statistics test on each kernel of `series` and prints the table; fails if any
/// guest did not report every program.
pub(crate) fn run(series: &[Series]) -> Result<()> {
    let setup = setup::run(true);
    let (exe, cwd) = build_vm_tests()?;
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for &series in series {
        let Some(kernel) = setup.kernel(series) else {
            failed.push(format!("{series}: setup prepared no guest kernel"));
            continue;
        };
        eprintln!(
            "[verifier] {series}: loading the programs in a guest booting {}",
            kernel.release
        );
        let argv = [
            exe.clone(),
            STATS_TEST.to_string(),
            "--exact".to_string(),
            "--nocapture".to_string(),
            "--test-threads=1".to_string(),
        ];
        let opts = VmOptions {
            timeout: VM_TIMEOUT,
            capture_stdout: true,
            echo_console: false,
            cwd: cwd.clone(),
            ..VmOptions::default()
        };
        let outcome = match vm::run_in_vm(kernel, &argv, &opts) {
            Ok(outcome) => outcome,
            Err(err) => {
                failed.push(format!("{series}: {err:#}"));
                continue;
            }
        };
        let output = outcome.stdout.unwrap_or_default();
        let found = parse_rows(&output);
        if outcome.status != 0 || found.is_empty() {
            eprintln!("{output}");
            failed.push(format!(
                "{series}: the test exited with status {} and reported {} programs",
                outcome.status,
                found.len()
            ));
        }
        rows.extend(found);
    }
    print!("{}", format_table(&rows));
    if !failed.is_empty() {
        bail!("{}", failed.join("\n"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rows_and_skips_the_header_and_noise() {
        let output = "running 1 test\n\
            verifier: program kernel verified_insns xlated_insns\n\
            verifier: exec_check 6.12.57+deb12-amd64 1234 600\r\n\
            [    3.1] some console line\n\
            verifier: connect4 6.12.57+deb12-amd64 - -\n\
            verifier: truncated 6.1\n\
            test verifier_instruction_counts ... ok\n";
        let rows = parse_rows(output);
        assert_eq!(
            rows,
            vec![
                Row {
                    program: "exec_check".into(),
                    kernel: "6.12.57+deb12-amd64".into(),
                    verified_insns: "1234".into(),
                    xlated_insns: "600".into(),
                },
                Row {
                    program: "connect4".into(),
                    kernel: "6.12.57+deb12-amd64".into(),
                    verified_insns: "-".into(),
                    xlated_insns: "-".into(),
                },
            ]
        );
    }

    #[test]
    fn table_has_a_header_and_one_line_per_row() {
        let rows = parse_rows("verifier: file_open 6.1.0-40-amd64 98765 1100\n");
        let table = format_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("program"), "{table}");
        assert!(lines[1].starts_with("file_open"), "{table}");
        assert!(lines[1].contains("98765"), "{table}");
    }
}
