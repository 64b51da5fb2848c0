//! `cargo xtask bench`: what confinement costs, against the bare kernel, on this host.
//!
//! Every figure is a loop timed inside the process that runs it: `oxd-bench-workload` (the
//! tests crate) runs N iterations of one operation and prints how long they took; the bench
//! starts it bare, and confined by `oxd run` under generated network-only policies. Runs are
//! interleaved (each round runs every setup once, starting with a different one each round) so
//! that the machine's noise falls on all sides; a figure is the median over the rounds, and
//! its ratio the median of the per-round ratios against the bare run of the same round.
//!
//! The host's kernel refuses BPF-LSM programs: only the cgroup network hooks run here. The
//! open and fork+exec figures therefore show what network-only confinement costs those
//! operations (nothing decides them); LSM figures need the guests: `--guest SERIES` runs the
//! open and fork+exec figures in a QEMU guest under a policy with exec and file rules.
//!
//! The kernel's own run time of each program (`bpf_prog_info.run_time_ns / run_cnt`) comes
//! from separate confined runs with `kernel.bpf_stats_enabled` at 1: the workload reads the
//! counters of the programs in effect on its cgroup before and after its loop.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader},
    net::UdpSocket,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Instant, SystemTime},
};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::{kernel::Series, setup, util, vm};

/// What `cargo xtask bench` runs.
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct Options {
    /// Rounds (each runs every setup once; figures are medians over rounds).
    #[arg(long, default_value_t = 9)]
    pub(crate) rounds: usize,
    /// Use the release binaries already built.
    #[arg(long)]
    pub(crate) no_build: bool,
    /// Network rule counts for the connect figure (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "0,1,1000,10000")]
    pub(crate) rules: Vec<usize>,
    /// TCP connects per run (at most 4,096: the listener's backlog).
    #[arg(long, default_value_t = 2000)]
    pub(crate) connects: u64,
    /// Opens per run.
    #[arg(long, default_value_t = 50_000)]
    pub(crate) opens: u64,
    /// Fork+execs per run.
    #[arg(long, default_value_t = 300)]
    pub(crate) execs: u64,
    /// UDP sends per run (each a recorded decision when confined).
    #[arg(long, default_value_t = 50_000)]
    pub(crate) sends: u64,
    /// Cold starts per setup and round.
    #[arg(long, default_value_t = 3)]
    pub(crate) starts: usize,
    /// Instead, run the open/close and fork+exec figures in a QEMU guest booting this
    /// kernel series (repeatable), under a policy with [exec] and [file] rules so that
    /// BPF-LSM decides them; emulated (TCG), so only the ratios mean something. Holds
    /// /tmp/oxd-vm.lock while a guest runs. Each `oxd run` takes seconds there: keep
    /// --rounds, --opens and --execs small.
    #[arg(long, value_enum)]
    pub(crate) guest: Vec<Series>,
    /// The guest's side of --guest (run inside the guest).
    #[arg(long, hide = true)]
    pub(crate) in_guest: bool,
}

/// What one run of `oxd-bench-workload` printed.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Loop {
    iterations: u64,
    elapsed_ns: u64,
    errors: u64,
    first_errno: Option<i64>,
    /// With `bpf-stats`: what each BPF program in effect on the workload's cgroup ran during
    /// the loop.
    bpf: Vec<ProgramRun>,
}

/// How much one BPF program ran during a loop (from `bpf_prog_info`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct ProgramRun {
    name: String,
    run_time_ns: u64,
    run_cnt: u64,
}

impl Loop {
    fn ns_per_op(&self) -> f64 {
        to_f64(self.elapsed_ns) / to_f64(self.iterations.max(1))
    }
}

#[expect(
    clippy::cast_precision_loss,
    reason = "counts and nanoseconds far below 2^52 in a bench"
)]
fn to_f64(n: u64) -> f64 {
    n as f64
}

/// The workload's result line: the last line of `stdout` that is a JSON object with
/// `elapsed_ns` (`oxd run` may print around it).
fn parse_loop(stdout: &str) -> Result<Loop> {
    let value = stdout
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .find(|v| v.get("elapsed_ns").is_some())
        .with_context(|| format!("no workload result in its output: {stdout:?}"))?;
    let n = |key: &str| {
        value
            .get(key)
            .and_then(Value::as_u64)
            .with_context(|| format!("workload result without a number `{key}`: {value}"))
    };
    Ok(Loop {
        iterations: n("iterations")?,
        elapsed_ns: n("elapsed_ns")?,
        errors: n("errors")?,
        first_errno: value.get("first_errno").and_then(Value::as_i64),
        bpf: match value.get("bpf") {
            None => Vec::new(),
            Some(list) => parse_programs(list)?,
        },
    })
}

/// The workload's `"bpf"` array.
fn parse_programs(list: &Value) -> Result<Vec<ProgramRun>> {
    let list = list
        .as_array()
        .with_context(|| format!("`bpf` is not an array: {list}"))?;
    list.iter()
        .map(|p| {
            let n = |key: &str| {
                p.get(key)
                    .and_then(Value::as_u64)
                    .with_context(|| format!("BPF program without a number `{key}`: {p}"))
            };
            Ok(ProgramRun {
                name: p
                    .get("name")
                    .and_then(Value::as_str)
                    .with_context(|| format!("BPF program without a name: {p}"))?
                    .to_owned(),
                run_time_ns: n("run_time_ns")?,
                run_cnt: n("run_cnt")?,
            })
        })
        .collect()
}

/// The median of `values` (the mean of the middle two for an even count); `None` if empty.
fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        f64::midpoint(v[mid - 1], v[mid])
    })
}

/// The median of the per-round ratios `confined[i] / bare[i]` (rounds where both ran).
fn paired_ratio(confined: &[Option<f64>], bare: &[Option<f64>]) -> Option<f64> {
    let ratios: Vec<f64> = confined
        .iter()
        .zip(bare)
        .filter_map(|(c, b)| Some((*c)? / (*b)?))
        .collect();
    median(&ratios)
}

/// A network-only policy with `rules` CIDR rules: none (and everything allowed) for 0;
/// otherwise `rules - 1` allows of `10.x.y.0/24` networks that never match loopback, then the
/// one allow of `127.0.0.1` the workload needs, last, with everything else denied.
fn network_policy(rules: usize) -> String {
    let mut text = format!("name = \"bench-{rules}-rules\"\n\n[network]\n");
    if rules == 0 {
        text.push_str("default = \"allow\"\n");
        return text;
    }
    text.push_str("default = \"deny\"\n");
    for i in 0..rules - 1 {
        let _ = write!(
            text,
            "\n[[network.allow]]\ncidr = \"10.{}.{}.0/24\"\n",
            (i >> 8) & 0xff,
            i & 0xff
        );
    }
    text.push_str("\n[[network.allow]]\ncidr = \"127.0.0.1\"\n");
    text
}

/// `ns` readably: `850 ns`, `12.3 µs`, `4.56 ms`.
fn human_ns(ns: f64) -> String {
    if ns < 1_000.0 {
        format!("{ns:.0} ns")
    } else if ns < 1_000_000.0 {
        format!("{:.2} µs", ns / 1_000.0)
    } else if ns < 1_000_000_000.0 {
        format!("{:.2} ms", ns / 1_000_000.0)
    } else {
        format!("{:.2} s", ns / 1_000_000_000.0)
    }
}

/// One line of the table: a figure under one setup.
#[derive(Debug, Serialize)]
struct Figure {
    name: &'static str,
    setup: String,
    /// `ns/op` (nanoseconds per iteration), `ns` (one run), or `records/s`.
    unit: &'static str,
    /// One value per round, in round order (`null`: that round did not run it).
    samples: Vec<Option<f64>>,
    median: Option<f64>,
    /// Median of the per-round ratios against the bare kernel in the same round.
    ratio: Option<f64>,
    /// Why there is no figure: `refused: ...` (`oxd check` refused the policy) or
    /// `failed: ...`.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

impl Figure {
    fn new(name: &'static str, setup: impl Into<String>, unit: &'static str) -> Self {
        Self {
            name,
            setup: setup.into(),
            unit,
            samples: Vec::new(),
            median: None,
            ratio: None,
            error: None,
            note: None,
        }
    }

    fn values(&self) -> Vec<f64> {
        self.samples.iter().flatten().copied().collect()
    }

    /// Sets `median`, and `ratio` against `bare` (the same figure's bare-kernel line).
    fn finish(&mut self, bare: Option<&Figure>) {
        self.median = median(&self.values());
        self.ratio = bare.and_then(|b| paired_ratio(&self.samples, &b.samples));
    }

    fn shown(&self) -> String {
        if let Some(e) = &self.error {
            return e.clone();
        }
        match (self.median, self.unit) {
            (None, _) => "no value".to_owned(),
            (Some(m), "ns/op") => format!("{}/op", human_ns(m)),
            (Some(m), "ns") => human_ns(m),
            (Some(m), unit) => format!("{m:.0} {unit}"),
        }
    }
}

/// The table as printed.
fn table(figures: &[Figure]) -> String {
    let mut out = format!(
        "{:<28} {:<36} {:>16} {:>7}\n",
        "figure", "setup", "median", "ratio"
    );
    let mut last = "";
    for f in figures {
        let name = if f.name == last { "" } else { f.name };
        last = f.name;
        let ratio = f.ratio.map_or("-".to_owned(), |r| format!("{r:.2}x"));
        let shown = match f.error.as_deref().and_then(|e| e.split_once(": ")) {
            Some((kind, _)) => kind.to_owned(),
            None => f.shown(),
        };
        let _ = writeln!(out, "{name:<28} {:<36} {shown:>16} {ratio:>7}", f.setup);
        for note in f.error.iter().chain(&f.note) {
            let _ = writeln!(out, "{:<28}   {note}", "");
        }
    }
    out
}

/// Where and on what the bench ran.
#[derive(Debug, Serialize)]
struct Machine {
    kernel: String,
    cpu_model: String,
    cores: usize,
    load_average_before: String,
    load_average_after: String,
    build_profile: &'static str,
    oxd_commit: String,
    unix_time: u64,
    rounds: usize,
}

/// The three load averages of `/proc/loadavg`.
fn load_average() -> String {
    read_trimmed("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn read_trimmed(path: &str) -> String {
    fs::read_to_string(path).map_or_else(|e| format!("unknown ({e})"), |s| s.trim().to_owned())
}

fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

fn commit() -> String {
    let root = util::repo_root();
    let head = util::output(
        Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(["rev-parse", "HEAD"]),
    )
    .map_or_else(|e| format!("unknown ({e:#})"), |s| s.trim().to_owned());
    let dirty = util::output(Command::new("git").arg("-C").arg(&root).args([
        "status",
        "--porcelain",
        "--untracked-files=no",
    ]))
    .is_ok_and(|s| !s.trim().is_empty());
    if dirty {
        format!("{head}-dirty")
    } else {
        head
    }
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("oxd-bench-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The connect figure's listener: `oxd-bench-workload listen`, killed on drop.
struct Listener {
    child: Child,
    port: String,
}

impl Listener {
    fn start(workload: &Path) -> Result<Self> {
        let mut child = Command::new(workload)
            .arg("listen")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {} listen", workload.display()))?;
        let mut line = String::new();
        let read = child
            .stdout
            .take()
            .map(|out| BufReader::new(out).read_line(&mut line));
        let port = line.trim().to_owned();
        let listener = Self { child, port };
        if !matches!(read, Some(Ok(n)) if n > 0) || listener.port.parse::<u16>().is_err() {
            // Dropping the listener kills the child.
            bail!("the listener did not say its port ({read:?}, {line:?})");
        }
        Ok(listener)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An `oxd run` holding its programs in the kernel (a shell waiting in its cgroup) while the
/// bench times processes outside it: what confinement costs the rest of the machine. Stopped
/// with SIGTERM on drop (`oxd run` forwards it to the shell and cleans up).
struct Loaded {
    child: Child,
}

impl Loaded {
    fn start(bench: &mut Bench, policy: &Path) -> Result<Self> {
        let log = bench.new_log();
        let mut cmd = bench.oxd_run(
            policy,
            &log,
            &["/bin/sh", "-c", "echo ready; exec sleep 100000"],
        );
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start `{}`", util::describe(&cmd)))?;
        let mut line = String::new();
        let read = child
            .stdout
            .take()
            .map(|out| BufReader::new(out).read_line(&mut line));
        let loaded = Self { child };
        // The shell runs confined only once the programs are attached.
        if line.trim() != "ready" {
            bail!("the confined shell did not start ({read:?}, {line:?})");
        }
        Ok(loaded)
    }
}

impl Drop for Loaded {
    fn drop(&mut self) {
        let stopped = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .is_ok_and(|s| s.success());
        if !stopped {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A setup of the connect figure: its policy, or why `oxd check` refused it.
struct Policy {
    rules: usize,
    path: PathBuf,
    refused: Option<String>,
}

impl Policy {
    fn setup(&self) -> String {
        format!(
            "oxd run, {} network rule{}",
            self.rules,
            if self.rules == 1 { "" } else { "s" }
        )
    }
}

/// The programs the bench runs, and its scratch files.
struct Bench {
    oxd: PathBuf,
    workload: PathBuf,
    scratch: Scratch,
    runs: u64,
}

impl Bench {
    fn policy(&self, rules: usize) -> Result<Policy> {
        let path = self.scratch.0.join(format!("net-{rules}.toml"));
        util::write_file(&path, network_policy(rules))?;
        let out = util::raw_output(Command::new(&self.oxd).arg("check").arg(&path))?;
        let refused = (!out.status.success()).then(|| {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
            let first = text.lines().next().unwrap_or("").trim();
            format!("refused: {}", refusal(first, &path))
        });
        Ok(Policy {
            rules,
            path,
            refused,
        })
    }

    fn new_log(&mut self) -> PathBuf {
        self.runs += 1;
        self.scratch.0.join(format!("audit-{}.jsonl", self.runs))
    }

    /// `oxd run` of `argv` under `policy`, its records going to `log`.
    fn oxd_run(&self, policy: &Path, log: &Path, argv: &[&str]) -> Command {
        let mut cmd = Command::new(&self.oxd);
        cmd.arg("run")
            .arg("--policy")
            .arg(policy)
            .arg("--audit-log")
            .arg(log)
            .arg("--")
            .args(argv);
        cmd
    }

    /// Runs the workload with `args`, under `policy` if given; its loop, the audit log it
    /// left (removed unless `keep_log`) and the run's wall time.
    fn workload(
        &mut self,
        policy: Option<&Path>,
        args: &[&str],
        keep_log: bool,
    ) -> Result<(Loop, Option<PathBuf>, f64)> {
        let program = self.workload.to_string_lossy().into_owned();
        let command: Vec<&str> = std::iter::once(program.as_str())
            .chain(args.iter().copied())
            .collect();
        let log = self.new_log();
        let mut cmd = if let Some(p) = policy {
            self.oxd_run(p, &log, &command)
        } else {
            let mut c = Command::new(&self.workload);
            c.args(args);
            c
        };
        let start = Instant::now();
        let out = util::raw_output(&mut cmd)?;
        let wall = start.elapsed().as_secs_f64() * 1e9;
        let result =
            check_run(&cmd, &out).and_then(|()| parse_loop(&String::from_utf8_lossy(&out.stdout)));
        let result = result.and_then(|l| {
            if l.errors > 0 {
                bail!(
                    "{} of {} iterations failed (first errno {:?})",
                    l.errors,
                    l.iterations,
                    l.first_errno
                );
            }
            Ok(l)
        });
        if !keep_log || result.is_err() {
            let _ = fs::remove_file(&log);
        }
        Ok((result?, (keep_log && policy.is_some()).then_some(log), wall))
    }

    /// The wall time of `oxd run --policy P -- /bin/true` (`policy` given) or of `/bin/true`.
    fn cold_start(&mut self, policy: Option<&Path>) -> Result<f64> {
        let log = self.new_log();
        let mut cmd = match policy {
            Some(p) => self.oxd_run(p, &log, &["/bin/true"]),
            None => Command::new("/bin/true"),
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let start = Instant::now();
        let out = cmd
            .output()
            .with_context(|| format!("cannot start `{}`", util::describe(&cmd)))?;
        let wall = start.elapsed().as_secs_f64() * 1e9;
        let _ = fs::remove_file(&log);
        check_run(&cmd, &out)?;
        Ok(wall)
    }
}

/// `oxd check`'s first line of output without its `oxd: error: FILE:LINE:COLUMN: ` prefix.
fn refusal<'a>(line: &'a str, policy: &Path) -> &'a str {
    let line = line.trim_start_matches("oxd: error: ");
    let Some(rest) = line.strip_prefix(&*policy.to_string_lossy()) else {
        return line;
    };
    let mut parts = rest.splitn(4, ':');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(""), Some(l), Some(c), Some(message))
            if [l, c]
                .iter()
                .all(|n| n.chars().all(|ch| ch.is_ascii_digit())) =>
        {
            message.trim()
        }
        _ => line,
    }
}

fn check_run(cmd: &Command, out: &Output) -> Result<()> {
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}{}",
            util::describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(())
}

/// What an audit log holds: records of `op`, and decisions reported lost.
fn count_records(log: &Path, op: &str) -> Result<(u64, u64)> {
    let text = fs::read_to_string(log).with_context(|| format!("cannot read {}", log.display()))?;
    let (mut records, mut lost) = (0, 0);
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        match v.get("op").and_then(Value::as_str) {
            Some("lost") => lost += v.get("count").and_then(Value::as_u64).unwrap_or(0),
            Some(o) if o == op => records += 1,
            _ => {}
        }
    }
    Ok((records, lost))
}

/// Runs `f` for each round's sample of `figure`, unless it already failed; a failure is kept
/// as the figure's error and ends its runs.
fn sample(figure: &mut Figure, round: usize, f: impl FnOnce() -> Result<f64>) {
    figure.samples.resize(round + 1, None);
    if figure.error.is_some() {
        return;
    }
    match f() {
        Ok(v) => figure.samples[round] = Some(v),
        Err(e) => figure.error = Some(format!("failed: {e:#}")),
    }
}

/// The setups of a round in the order they run: rotated by the round so none always goes
/// first.
fn round_order(setups: usize, round: usize) -> Vec<usize> {
    (0..setups).map(|i| (i + round) % setups.max(1)).collect()
}

const NOTES: [&str; 7] = [
    "unconfined: the bare loop again, outside any confinement, while an `oxd run` of the \
     one-rule policy holds its programs in the kernel (a shell waiting in its cgroup): what oxd \
     costs the rest of the machine",
    "host kernel: the cgroup network hooks are real; this kernel refuses BPF-LSM, so exec and \
     file rules are not enforced here and the open and fork+exec figures show what \
     network-only confinement costs them (no hook decides them)",
    "every confined run records all decisions (`oxd run` default, --record all) to an audit log \
     in a temporary directory",
    "LSM figures (exec and file rules decided by BPF-LSM) are measured in guests: \
     `cargo xtask bench --guest 6.12` (emulated)",
    "policy swap: the round trip of a `replace` request on an `oxd daemon`'s control socket \
     (the daemon does not report its own swap time): it reads, checks and compiles the policy, \
     writes the new generation's slot and points the confined cgroup (one, empty) at it; the \
     table shows the median over rounds",
    "BPF program run time: the kernel's run_time_ns / run_cnt (bpf_prog_info) of each program \
     in effect on the workload's cgroup, over one loop, from separate confined runs with \
     kernel.bpf_stats_enabled = 1 (restored afterwards); the timed rounds above run without \
     it, since counting adds to every program run",
    "audit records/s: the records of one confined loop of UDP sends divided by the time from the \
     loop's start to the end of `oxd run` (its wall time less the same round's cold start); \
     sends not in the log as records or lost counts are reported as unaccounted",
];

/// The arguments of each workload, and the policies they run under.
struct Plan {
    connect: Vec<String>,
    open: Vec<String>,
    exec: Vec<String>,
    udp: Vec<String>,
    /// The connect figure's policies, by rule count.
    policies: Vec<Policy>,
    /// The one-rule policy of the other figures.
    one: PathBuf,
    /// The cold start's policies: none (bare `/bin/true`), the one-rule policy, the largest
    /// accepted.
    cold: Vec<Option<PathBuf>>,
}

const BARE: &str = "bare kernel";
const ONE_RULE: &str = "oxd run, 1 network rule";
const UNCONFINED: &str = "unconfined, oxd run loaded (1 rule)";

/// Every figure of a bench, filled round by round.
struct Figures {
    connect: Vec<Figure>,
    /// Bare, unconfined while `oxd run` is loaded, confined.
    open: [Figure; 3],
    exec: [Figure; 3],
    udp: [Figure; 3],
    cold: Vec<Figure>,
    audit: Figure,
    /// Sends, records logged, decisions reported lost, sends neither logged nor counted lost.
    audit_counts: (u64, u64, u64, i64),
}

impl Figures {
    fn new(plan: &Plan, largest: Option<&Policy>) -> Self {
        const CONNECT: &str = "loopback TCP connect+close";
        const COLD: &str = "cold start (`-- true`)";
        let mut connect = vec![Figure::new(CONNECT, BARE, "ns/op")];
        for p in &plan.policies {
            let mut f = Figure::new(CONNECT, p.setup(), "ns/op");
            f.error.clone_from(&p.refused);
            connect.push(f);
        }
        let pair = |name| {
            [
                Figure::new(name, BARE, "ns/op"),
                Figure::new(name, UNCONFINED, "ns/op"),
                Figure::new(name, ONE_RULE, "ns/op"),
            ]
        };
        let mut cold = vec![
            Figure::new(COLD, "/bin/true, bare", "ns"),
            Figure::new(COLD, ONE_RULE, "ns"),
        ];
        if let Some(p) = largest {
            cold.push(Figure::new(COLD, p.setup(), "ns"));
        }
        Self {
            connect,
            open: pair("open+close of a file"),
            exec: pair("fork+exec of /bin/true"),
            udp: pair("UDP sendto (loopback)"),
            cold,
            audit: Figure::new("audit records/s to file", ONE_RULE, "records/s"),
            audit_counts: (0, 0, 0, 0),
        }
    }

    /// All figures, medians and ratios set, in table order.
    fn finish(self) -> Vec<Figure> {
        let Self {
            connect,
            open,
            exec,
            udp,
            cold,
            mut audit,
            audit_counts: (sent, logged, lost, unaccounted),
        } = self;
        let mut figures: Vec<Figure> = Vec::new();
        for mut group in [connect, open.into(), exec.into(), udp.into(), cold] {
            let (bare, rest) = group.split_at_mut(1);
            bare[0].finish(None);
            for f in rest {
                f.finish(Some(&bare[0]));
            }
            figures.extend(group);
        }
        audit.finish(None);
        audit.note = Some(format!(
            "{sent} sends, {logged} records logged, {lost} reported lost, {unaccounted} \
             unaccounted"
        ));
        figures.push(audit);
        figures
    }
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// One round: every setup of every figure once, in an order rotated by the round.
fn round(bench: &mut Bench, plan: &Plan, figures: &mut Figures, round: usize, starts: usize) {
    for i in round_order(figures.connect.len(), round) {
        let policy = (i > 0).then(|| plan.policies[i - 1].path.as_path());
        sample(&mut figures.connect[i], round, || {
            Ok(bench
                .workload(policy, &strs(&plan.connect), false)?
                .0
                .ns_per_op())
        });
    }
    for (pair, args) in [
        (&mut figures.open, &plan.open),
        (&mut figures.exec, &plan.exec),
    ] {
        for i in round_order(3, round) {
            let policy = (i == 2).then_some(plan.one.as_path());
            sample(&mut pair[i], round, || {
                let _loaded = (i == 1)
                    .then(|| Loaded::start(bench, &plan.one))
                    .transpose()?;
                Ok(bench.workload(policy, &strs(args), false)?.0.ns_per_op())
            });
        }
    }
    // Several starts per round, interleaved: the round's sample is their median.
    let mut values: Vec<Vec<f64>> = vec![Vec::new(); figures.cold.len()];
    for _ in 0..starts {
        for i in round_order(figures.cold.len(), round) {
            if figures.cold[i].error.is_some() {
                continue;
            }
            match bench.cold_start(plan.cold[i].as_deref()) {
                Ok(v) => values[i].push(v),
                Err(e) => figures.cold[i].error = Some(format!("failed: {e:#}")),
            }
        }
    }
    for (f, v) in figures.cold.iter_mut().zip(&values) {
        sample(f, round, || median(v).context("no start"));
    }
    let round_cold = figures.cold[1].samples.get(round).copied().flatten();
    let mut audit_rate = None;
    for i in round_order(3, round) {
        if i < 2 {
            sample(&mut figures.udp[i], round, || {
                let _loaded = (i == 1)
                    .then(|| Loaded::start(bench, &plan.one))
                    .transpose()?;
                Ok(bench.workload(None, &strs(&plan.udp), false)?.0.ns_per_op())
            });
            continue;
        }
        let counts = &mut figures.audit_counts;
        sample(&mut figures.udp[2], round, || {
            let (result, log, wall) = bench.workload(Some(&plan.one), &strs(&plan.udp), true)?;
            let log = log.context("no audit log")?;
            let counted = count_records(&log, "sendmsg");
            let _ = fs::remove_file(&log);
            let (records, lost) = counted?;
            counts.0 += result.iterations;
            counts.1 += records;
            counts.2 += lost;
            counts.3 += i64::try_from(result.iterations).unwrap_or(i64::MAX)
                - i64::try_from(records + lost).unwrap_or(i64::MAX);
            if let Some(c) = round_cold {
                audit_rate = Some(to_f64(records) / ((wall - c).max(1.0) / 1e9));
            }
            Ok(result.ns_per_op())
        });
    }
    figures.audit.samples.resize(round + 1, None);
    figures.audit.samples[round] = audit_rate;
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// `kernel.bpf_stats_enabled` at 1 while this lives; its old value is restored on drop, also
/// when the bench fails on the way.
struct BpfStats {
    old: String,
}

impl BpfStats {
    fn enable() -> Result<Self> {
        let old = fs::read_to_string(BPF_STATS)
            .with_context(|| format!("cannot read {BPF_STATS}"))?
            .trim()
            .to_owned();
        fs::write(BPF_STATS, "1").with_context(|| format!("cannot write 1 to {BPF_STATS}"))?;
        Ok(Self { old })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Err(e) = fs::write(BPF_STATS, &self.old) {
            eprintln!("[bench] cannot restore {BPF_STATS} to {}: {e}", self.old);
        }
    }
}

/// The mount point of the cgroup v2 hierarchy in `mountinfo` (`/proc/self/mountinfo`'s text).
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        (fs.split_whitespace().next() == Some("cgroup2"))
            .then(|| mount.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// One request on a daemon's control socket and its answer, which must say `"ok":true`.
fn control(socket: &Path, request: &Value) -> Result<Value> {
    use std::{io::Write as _, os::unix::net::UnixStream};
    let mut stream = UnixStream::connect(socket)
        .with_context(|| format!("cannot connect to {}", socket.display()))?;
    stream.set_read_timeout(Some(std::time::Duration::from_mins(1)))?;
    stream.write_all(format!("{request}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    let answer: Value = serde_json::from_str(line.trim())
        .with_context(|| format!("the daemon answered {line:?}"))?;
    if answer.get("ok") != Some(&Value::Bool(true)) {
        bail!("the daemon refused {}: {answer}", request["op"]);
    }
    Ok(answer)
}

/// A replace request for `text` (whose name is already loaded).
fn replace_request(path: &Path, text: &str) -> Value {
    serde_json::json!({
        "op": "replace",
        "policy": { "path": path.to_string_lossy(), "text": text },
    })
}

/// An `oxd daemon` of the bench's own (socket, state, bpffs pins, audit log, one cgroup),
/// stopped and cleaned up on drop.
struct SwapDaemon {
    child: Child,
    socket: PathBuf,
    bpffs: PathBuf,
    cgroup: PathBuf,
}

impl SwapDaemon {
    fn start(oxd: &Path, scratch: &Path) -> Result<Self> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
        let mount = cgroup2_mount(&mountinfo).context("no cgroup2 mount in mountinfo")?;
        let pid = std::process::id();
        let cgroup = mount.join(format!("oxd-bench-{pid}"));
        fs::create_dir(&cgroup).with_context(|| format!("cannot create {}", cgroup.display()))?;
        // A private bpf file system for the pins (a host may have none at /sys/fs/bpf),
        // unmounted on drop.
        let bpffs = scratch.join("bpffs");
        fs::create_dir_all(&bpffs)?;
        let mounted =
            util::raw_output(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&bpffs))
                .and_then(|out| check_run(&Command::new("mount"), &out));
        if let Err(e) = mounted {
            let _ = fs::remove_dir(&cgroup);
            bail!(
                "cannot mount a bpf file system at {}: {e:#}",
                bpffs.display()
            );
        }
        let socket = scratch.join("daemon.sock");
        let output = fs::File::create(scratch.join("daemon.log"))?;
        let spawned = Command::new(oxd)
            .arg("daemon")
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(scratch.join("daemon-state"))
            .arg("--bpffs")
            .arg(bpffs.join("oxd"))
            .arg("--audit-log")
            .arg(scratch.join("daemon-audit.jsonl"))
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            .spawn();
        let child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let _ = Command::new("umount").arg("-l").arg(&bpffs).status();
                let _ = fs::remove_dir(&cgroup);
                bail!("cannot start oxd daemon: {e}");
            }
        };
        let mut daemon = Self {
            child,
            socket,
            bpffs,
            cgroup,
        };
        let started = Instant::now();
        while control(&daemon.socket, &serde_json::json!({"op": "status"})).is_err() {
            if let Some(status) = daemon.child.try_wait()? {
                bail!(
                    "oxd daemon exited ({status}): {}",
                    read_trimmed(&scratch.join("daemon.log").to_string_lossy())
                );
            }
            if started.elapsed().as_secs() > 60 {
                bail!("oxd daemon did not answer `status` within 60 s");
            }
            thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(daemon)
    }
}

impl Drop for SwapDaemon {
    fn drop(&mut self) {
        let _ = control(
            &self.socket,
            &serde_json::json!({"op": "release", "all": true}),
        );
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .stderr(Stdio::null())
            .status();
        let started = Instant::now();
        while matches!(self.child.try_wait(), Ok(None)) && started.elapsed().as_secs() < 5 {
            thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("umount").arg("-l").arg(&self.bpffs).status();
        let _ = fs::remove_dir(&self.cgroup);
    }
}

/// `network_policy(rules)` under the one name the swap replaces, in one of two variants that
/// differ in text (a comment), so that every replace loads a new generation.
fn swap_policy(rules: usize, variant: usize) -> String {
    let text = network_policy(rules);
    let body = text
        .split_once('\n')
        .map_or(text.as_str(), |(_, rest)| rest);
    format!("name = \"bench-swap\"\n# variant {variant}\n{body}")
}

const SWAP: &str = "policy swap (`replace`)";

/// The round trip of a `replace` request on the daemon's socket, for policies of each accepted
/// rule count, `rounds` times each (alternating two texts): one daemon confining one empty
/// cgroup, first under the same policy.
fn swap_times(bench: &Bench, policies: &[Policy], rounds: usize) -> Result<Vec<Figure>> {
    let daemon = SwapDaemon::start(&bench.oxd, &bench.scratch.0)?;
    let mut figures = Vec::new();
    for p in policies {
        let mut f = Figure::new(SWAP, p.setup().replace("oxd run, ", "oxd daemon, "), "ns");
        if let Some(refused) = &p.refused {
            f.error = Some(refused.clone());
            figures.push(f);
            continue;
        }
        eprintln!("[bench] policy swap, {} rules", p.rules);
        let path = bench.scratch.0.join(format!("swap-{}.toml", p.rules));
        let confine = serde_json::json!({
            "op": "confine",
            "target": { "cgroup": daemon.cgroup.to_string_lossy() },
            "policy": { "path": path.to_string_lossy(), "text": swap_policy(p.rules, 0) },
        });
        let measured = control(&daemon.socket, &confine).and_then(|_| {
            for r in 0..rounds {
                let request = replace_request(&path, &swap_policy(p.rules, (r + 1) % 2));
                let start = Instant::now();
                let answer = control(&daemon.socket, &request)?;
                f.samples.push(Some(start.elapsed().as_secs_f64() * 1e9));
                f.note = answer
                    .get("message")
                    .and_then(Value::as_str)
                    .map(|m| format!("last answer: {m}"));
            }
            control(
                &daemon.socket,
                &serde_json::json!({"op": "release", "all": true}),
            )
        });
        if let Err(e) = measured {
            f.error = Some(format!("failed: {e:#}"));
        }
        f.finish(None);
        figures.push(f);
    }
    Ok(figures)
}

const PROGRAM_RUN: &str = "BPF program run time";

/// A figure that could not be measured at all, with why.
fn failed_figure(
    name: &'static str,
    setup: &str,
    unit: &'static str,
    error: &anyhow::Error,
) -> Figure {
    let mut f = Figure::new(name, setup, unit);
    f.error = Some(format!("failed: {error:#}"));
    f
}

/// The confined setups whose programs are timed: (label, policy, workload arguments).
fn program_setups(plan: &Plan) -> Vec<(String, &Path, Vec<&str>)> {
    let mut setups: Vec<(String, &Path, Vec<&str>)> = plan
        .policies
        .iter()
        .filter(|p| p.refused.is_none())
        .map(|p| {
            (
                format!(
                    "connect, {} rule{}",
                    p.rules,
                    if p.rules == 1 { "" } else { "s" }
                ),
                p.path.as_path(),
                strs(&plan.connect),
            )
        })
        .collect();
    for (label, args) in [
        ("open, 1 rule", &plan.open),
        ("fork+exec, 1 rule", &plan.exec),
        ("UDP sendto, 1 rule", &plan.udp),
    ] {
        setups.push((label.to_owned(), plan.one.as_path(), strs(args)));
    }
    setups
}

/// Adds one loop's program runs to `figures` (one figure per setup and program that ran).
fn add_program_runs(figures: &mut Vec<Figure>, label: &str, round: usize, runs: &[ProgramRun]) {
    for run in runs.iter().filter(|r| r.run_cnt > 0) {
        let setup = format!("{}: {label}", run.name);
        let index = figures
            .iter()
            .position(|f| f.setup == setup)
            .unwrap_or_else(|| {
                figures.push(Figure::new(PROGRAM_RUN, setup, "ns/run"));
                figures.len() - 1
            });
        let f = &mut figures[index];
        f.samples.resize(round + 1, None);
        f.samples[round] = Some(to_f64(run.run_time_ns) / to_f64(run.run_cnt));
        f.note = Some(format!("{} run(s) in the last loop", run.run_cnt));
    }
}

/// The kernel's per-program run time (`run_time_ns / run_cnt`) in each confined setup, from
/// separate runs with `kernel.bpf_stats_enabled` at 1 (counting costs every program run a
/// little, so the timed rounds run without it).
fn program_runs(bench: &mut Bench, plan: &Plan, rounds: usize) -> Result<Vec<Figure>> {
    let _stats = BpfStats::enable()?;
    let setups = program_setups(plan);
    let mut figures = Vec::new();
    for r in 0..rounds {
        eprintln!("[bench] BPF statistics, round {} of {rounds}", r + 1);
        for i in round_order(setups.len(), r) {
            let (label, policy, args) = &setups[i];
            let mut args = args.clone();
            args.push("bpf-stats");
            match bench.workload(Some(policy), &args, false) {
                Ok((l, _, _)) => add_program_runs(&mut figures, label, r, &l.bpf),
                Err(e) => {
                    let mut f = Figure::new(PROGRAM_RUN, label.clone(), "ns/run");
                    f.error = Some(format!("failed: {e:#}"));
                    figures.push(f);
                }
            }
        }
    }
    for f in &mut figures {
        f.samples.resize(rounds, None);
        f.finish(None);
    }
    Ok(figures)
}

/// Prints the table and writes target/bench.json.
fn report(
    machine: &Machine,
    options: &Options,
    figures: &[Figure],
    audit: (u64, u64, u64, i64),
) -> Result<()> {
    println!(
        "kernel {}, {} ({} cores), {} build, oxd {}, {} rounds, load {} -> {}",
        machine.kernel,
        machine.cpu_model,
        machine.cores,
        machine.build_profile,
        machine.oxd_commit,
        machine.rounds,
        machine.load_average_before,
        machine.load_average_after
    );
    print!("{}", table(figures));
    for note in NOTES {
        println!("note: {note}");
    }
    let (sends, records, lost, unaccounted) = audit;
    let json = serde_json::json!({
        "machine": machine,
        "iterations": {
            "connect": options.connects,
            "open": options.opens,
            "exec": options.execs,
            "udp_sends": options.sends,
            "cold_starts_per_round": options.starts,
        },
        "figures": figures,
        "audit": { "sends": sends, "records": records, "lost": lost, "unaccounted": unaccounted },
        "notes": NOTES,
    });
    let out = util::target_dir().join("bench.json");
    util::write_file(&out, serde_json::to_string_pretty(&json)? + "\n")?;
    println!("written to {}", out.display());
    Ok(())
}

fn build() -> Result<()> {
    eprintln!("[bench] building: cargo build --release -p oxd -p oxd-tests");
    util::run(util::cargo().args([
        "build",
        "--release",
        "-p",
        "oxd",
        "-p",
        "oxd-tests",
        "--bin",
        "oxd",
        "--bin",
        "oxd-bench-workload",
    ]))
}

/// The guest bench's policy: exec allowed from the system's directories and the workload's,
/// files read anywhere but credentials and written only in /tmp and /dev, every network
/// allowed; so that the exec, mmap and file-open hooks decide every iteration.
fn lsm_policy(workload_dir: &Path) -> String {
    format!(
        "name = \"bench-lsm\"\n\n[exec]\ndefault = \"deny\"\nallow = [\"/usr/**\", \"/bin/**\", \
         \"/lib/**\", \"/lib64/**\", \"{}/**\"]\ndeny = [\"/usr/bin/sudo\"]\n\n[file]\n\
         default = {{ read = \"allow\", write = \"deny\" }}\nallow = [\"/tmp/**\", \"/dev/**\"]\n\
         deny = [\"/root/.ssh/**\", \"/etc/shadow\"]\n\n[network]\ndefault = \"allow\"\n",
        workload_dir.display()
    )
}

const LSM: &str = "oxd run, [exec] and [file] rules";
const LSM_UNCONFINED: &str = "unconfined, oxd run loaded";

const GUEST_NOTE: &str = "emulated (TCG): ratios only indicative; the guest kernel has BPF-LSM, \
                          so the exec and file-open hooks decide every iteration under the \
                          policy's [exec] and [file] rules; every confined run records all \
                          decisions to an audit log on the guest's tmpfs; unconfined: the bare \
                          loop while an `oxd run` of that policy holds its programs (the LSM \
                          hooks run for every task of the machine)";

/// `--guest`: boots each kernel and runs [`run_in_guest`] there, one guest at a time on this
/// machine (holding `/tmp/oxd-vm.lock`).
fn run_guests(options: &Options) -> Result<()> {
    if !options.no_build {
        build()?;
    }
    let setup = setup::run(true);
    let exe = std::env::current_exe().context("cannot find the xtask executable")?;
    let mut failed = Vec::new();
    for &series in &options.guest {
        let Some(kernel) = setup.kernel(series) else {
            failed.push(format!("{series}: setup prepared no guest kernel"));
            continue;
        };
        let argv: Vec<String> = [
            exe.to_string_lossy().into_owned(),
            "bench".to_owned(),
            "--in-guest".to_owned(),
            "--no-build".to_owned(),
            format!("--rounds={}", options.rounds),
            format!("--opens={}", options.opens),
            format!("--execs={}", options.execs),
        ]
        .into();
        let lock = fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/tmp/oxd-vm.lock")
            .context("cannot open /tmp/oxd-vm.lock")?;
        eprintln!("[bench] {series}: waiting for /tmp/oxd-vm.lock");
        lock.lock().context("cannot lock /tmp/oxd-vm.lock")?;
        eprintln!("[bench] {series}: booting {}", kernel.release);
        let opts = vm::VmOptions {
            timeout: std::time::Duration::from_hours(1),
            ..vm::VmOptions::default()
        };
        let outcome = vm::run_in_vm(kernel, &argv, &opts);
        drop(lock);
        match outcome {
            Ok(o) if o.status == 0 => {}
            Ok(o) => failed.push(format!(
                "{series}: the guest bench exited with {}",
                o.status
            )),
            Err(e) => failed.push(format!("{series}: {e:#}")),
        }
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("\n"));
    }
    Ok(())
}

impl Bench {
    /// A bench of the release binaries in `bin`, which must exist, with a new scratch folder.
    fn release(bin: &Path) -> Result<Self> {
        let bench = Self {
            oxd: bin.join("oxd"),
            workload: bin.join("oxd-bench-workload"),
            scratch: Scratch::new()?,
            runs: 0,
        };
        for b in [&bench.oxd, &bench.workload] {
            if !b.is_file() {
                bail!("{} is missing: build it (drop --no-build)", b.display());
            }
        }
        Ok(bench)
    }
}

/// `--in-guest`: the open/close and fork+exec figures, bare and under [`lsm_policy`]; prints
/// the table and writes `target/bench-guest-RELEASE.json`.
fn run_in_guest(options: &Options) -> Result<()> {
    let bin = util::target_dir().join("release");
    let mut bench = Bench::release(&bin)?;
    let load_before = load_average();
    let policy = bench.scratch.0.join("lsm.toml");
    util::write_file(&policy, lsm_policy(&bin))?;
    let out = util::raw_output(Command::new(&bench.oxd).arg("check").arg(&policy))?;
    check_run(&Command::new("oxd check"), &out)?;
    let file = bench.scratch.0.join("file");
    util::write_file(&file, "oxd bench\n")?;
    let file = file.to_string_lossy().into_owned();
    let (opens, execs) = (options.opens.to_string(), options.execs.to_string());
    let plans: [(&str, Vec<&str>); 2] = [
        ("open+close of a file", vec!["open", &file, &opens]),
        ("fork+exec of /bin/true", vec!["exec", "/bin/true", &execs]),
    ];
    let mut groups: Vec<[Figure; 3]> = plans
        .iter()
        .map(|(name, _)| {
            [
                Figure::new(name, BARE, "ns/op"),
                Figure::new(name, LSM_UNCONFINED, "ns/op"),
                Figure::new(name, LSM, "ns/op"),
            ]
        })
        .collect();
    for r in 0..options.rounds {
        eprintln!("[bench] guest round {} of {}", r + 1, options.rounds);
        for (group, (_, args)) in groups.iter_mut().zip(&plans) {
            for i in round_order(3, r) {
                let p = (i == 2).then_some(policy.as_path());
                sample(&mut group[i], r, || {
                    let _loaded = (i == 1)
                        .then(|| Loaded::start(&mut bench, &policy))
                        .transpose()?;
                    Ok(bench.workload(p, args, false)?.0.ns_per_op())
                });
            }
        }
    }
    let mut figures = Vec::new();
    for [mut bare, mut unconfined, mut lsm] in groups {
        bare.finish(None);
        unconfined.finish(Some(&bare));
        lsm.finish(Some(&bare));
        figures.extend([bare, unconfined, lsm]);
    }
    let machine = machine(options, load_before);
    println!(
        "guest kernel {}, {} ({} cores), release build, oxd {}, {} rounds, load {} -> {}",
        machine.kernel,
        machine.cpu_model,
        machine.cores,
        machine.oxd_commit,
        machine.rounds,
        machine.load_average_before,
        machine.load_average_after
    );
    print!("{}", table(&figures));
    println!("note: {GUEST_NOTE}");
    let json = serde_json::json!({
        "machine": machine,
        "emulated": true,
        "iterations": { "open": options.opens, "exec": options.execs },
        "policy": lsm_policy(&bin),
        "figures": figures,
        "notes": [GUEST_NOTE],
    });
    let out = util::target_dir().join(format!("bench-guest-{}.json", machine.kernel));
    util::write_file(&out, serde_json::to_string_pretty(&json)? + "\n")?;
    println!("written to {}", out.display());
    Ok(())
}

fn machine(options: &Options, load_before: String) -> Machine {
    Machine {
        kernel: read_trimmed("/proc/sys/kernel/osrelease"),
        cpu_model: cpu_model(),
        cores: thread::available_parallelism().map_or(0, usize::from),
        load_average_before: load_before,
        load_average_after: load_average(),
        build_profile: "release",
        oxd_commit: commit(),
        unix_time: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        rounds: options.rounds,
    }
}

pub(crate) fn run(options: &Options) -> Result<()> {
    if !util::is_root() {
        bail!("`cargo xtask bench` runs `oxd run`, which needs root: run it as root");
    }
    if options.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if options.in_guest {
        return run_in_guest(options);
    }
    if !options.guest.is_empty() {
        return run_guests(options);
    }
    if !options.no_build {
        build()?;
    }
    let bin = util::target_dir().join("release");
    let mut bench = Bench::release(&bin)?;
    let load_before = load_average();

    let listener = Listener::start(&bench.workload)?;
    let tcp_port = listener.port.clone();
    let sink = UdpSocket::bind("127.0.0.1:0").context("cannot bind a UDP socket on 127.0.0.1")?;
    let udp_port = sink.local_addr()?.port().to_string();
    let file = bench.scratch.0.join("file");
    util::write_file(&file, "oxd bench\n")?;
    let file = file.to_string_lossy().into_owned();

    let mut policies = Vec::new();
    for &rules in &options.rules {
        policies.push(bench.policy(rules)?);
    }
    let one = bench.policy(1)?;
    if let Some(refused) = &one.refused {
        bail!("the one-rule network policy was {refused}");
    }
    let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let mut cold = vec![None, Some(one.path.clone())];
    cold.extend(largest_of(&policies).map(|p| Some(p.path.clone())));
    let plan = Plan {
        connect: args(&["connect", &tcp_port, &options.connects.to_string()]),
        open: args(&["open", &file, &options.opens.to_string()]),
        exec: args(&["exec", "/bin/true", &options.execs.to_string()]),
        udp: args(&["udp", &udp_port, &options.sends.to_string()]),
        one: one.path.clone(),
        cold,
        policies,
    };
    let mut figures = Figures::new(&plan, largest_of(&plan.policies));
    for r in 0..options.rounds {
        eprintln!("[bench] round {} of {}", r + 1, options.rounds);
        round(&mut bench, &plan, &mut figures, r, options.starts);
    }
    // Neither of these ends the bench when it cannot run: its line says why.
    let programs = program_runs(&mut bench, &plan, options.rounds)
        .unwrap_or_else(|e| vec![failed_figure(PROGRAM_RUN, "every setup", "ns/run", &e)]);
    let swap_sizes = swap_policies(&mut bench, &plan.policies)?;
    let swaps = swap_times(&bench, &swap_sizes, options.rounds)
        .unwrap_or_else(|e| vec![failed_figure(SWAP, "oxd daemon", "ns", &e)]);
    drop(sink);
    drop(listener);
    let audit = figures.audit_counts;
    let mut figures = figures.finish();
    figures.extend(programs);
    figures.extend(swaps);
    let machine = machine(options, load_before);
    report(&machine, options, &figures, audit)
}

/// The swap's policy sizes: the connect figure's, and 256 rules when a larger one was refused
/// (the largest size every oxd so far accepts).
fn swap_policies(bench: &mut Bench, policies: &[Policy]) -> Result<Vec<Policy>> {
    let mut out: Vec<Policy> = policies
        .iter()
        .map(|p| Policy {
            rules: p.rules,
            path: p.path.clone(),
            refused: p.refused.clone(),
        })
        .collect();
    if policies.iter().any(|p| p.refused.is_some()) && !policies.iter().any(|p| p.rules == 256) {
        out.push(bench.policy(256)?);
    }
    Ok(out)
}

/// The accepted policy with the most rules (more than one), for the cold start.
fn largest_of(policies: &[Policy]) -> Option<&Policy> {
    policies
        .iter()
        .filter(|p| p.refused.is_none() && p.rules > 1)
        .max_by_key(|p| p.rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_result_is_read_from_the_last_result_line() {
        let out = "noise\n{\"op\":\"open\",\"iterations\":4,\"elapsed_ns\":400,\"errors\":0}\n\
                   {\"other\":1}\n";
        let l = parse_loop(out).unwrap();
        assert_eq!(
            l,
            Loop {
                iterations: 4,
                elapsed_ns: 400,
                errors: 0,
                first_errno: None,
                bpf: Vec::new(),
            }
        );
        assert!((l.ns_per_op() - 100.0).abs() < f64::EPSILON);
        let failed = parse_loop(
            "{\"op\":\"connect\",\"iterations\":2,\"elapsed_ns\":9,\"errors\":2,\"first_errno\":1}",
        )
        .unwrap();
        assert_eq!((failed.errors, failed.first_errno), (2, Some(1)));
        assert!(parse_loop("oxd: error: no\n").is_err());
        assert!(parse_loop("{\"elapsed_ns\":\"x\",\"iterations\":1,\"errors\":0}").is_err());
    }

    #[test]
    fn program_runs_are_read_and_become_figures_per_setup_and_program() {
        let out = "{\"op\":\"connect\",\"iterations\":10,\"elapsed_ns\":1000,\"errors\":0,\
                   \"bpf\":[{\"id\":7,\"name\":\"connect4\",\"attach_type\":10,\
                   \"run_time_ns\":5000,\"run_cnt\":10},{\"id\":8,\"name\":\"connect6\",\
                   \"attach_type\":11,\"run_time_ns\":0,\"run_cnt\":0}]}";
        let l = parse_loop(out).unwrap();
        assert_eq!(
            l.bpf,
            [
                ProgramRun {
                    name: "connect4".to_owned(),
                    run_time_ns: 5000,
                    run_cnt: 10
                },
                ProgramRun {
                    name: "connect6".to_owned(),
                    run_time_ns: 0,
                    run_cnt: 0
                }
            ]
        );
        assert!(parse_loop(
            "{\"iterations\":1,\"elapsed_ns\":1,\"errors\":0,\"bpf\":[{\"name\":\"x\"}]}"
        )
        .is_err());
        assert!(parse_loop("{\"iterations\":1,\"elapsed_ns\":1,\"errors\":0,\"bpf\":3}").is_err());
        let mut figures = Vec::new();
        add_program_runs(&mut figures, "connect, 1 rule", 0, &l.bpf);
        let later = [ProgramRun {
            name: "connect4".to_owned(),
            run_time_ns: 3000,
            run_cnt: 10,
        }];
        add_program_runs(&mut figures, "connect, 1 rule", 2, &later);
        // The program that did not run has no figure; the other one a sample per round.
        assert_eq!(figures.len(), 1);
        assert_eq!(figures[0].setup, "connect4: connect, 1 rule");
        assert_eq!(figures[0].samples, [Some(500.0), None, Some(300.0)]);
        figures[0].finish(None);
        assert_eq!(figures[0].median, Some(400.0));
        assert!(
            table(&figures).contains("400 ns/run"),
            "{}",
            table(&figures)
        );
    }

    #[test]
    fn the_swap_finds_cgroup2_and_alternates_two_texts_of_one_policy() {
        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                      35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_mount("30 1 0:27 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            cgroup2_mount("31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"),
            None
        );
        let (a, b) = (swap_policy(300, 0), swap_policy(300, 1));
        assert_ne!(a, b);
        for text in [&a, &b] {
            assert!(text.starts_with("name = \"bench-swap\"\n"), "{text}");
            assert_eq!(text.matches("name =").count(), 1);
            assert_eq!(text.matches("[[network.allow]]").count(), 300);
        }
        let r = replace_request(Path::new("/tmp/p.toml"), &a);
        assert_eq!(r["op"], "replace");
        assert_eq!(r["policy"]["text"], a.as_str());
    }

    #[test]
    fn the_guest_policy_lets_the_workload_run_and_has_exec_and_file_rules() {
        let text = lsm_policy(Path::new("/repo/target/release"));
        for section in ["[exec]", "[file]", "[network]"] {
            assert_eq!(text.matches(section).count(), 1, "{section} in {text}");
        }
        assert!(text.contains("\"/repo/target/release/**\""), "{text}");
        assert!(text.contains("\"/usr/**\""), "{text}");
        assert!(
            text.contains("default = { read = \"allow\", write = \"deny\" }"),
            "{text}"
        );
    }

    #[test]
    fn median_and_paired_ratio() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
        // Per-round ratios 2, 3, 1.5 (the round without a bare run is left out): median 2.
        let confined = [Some(20.0), Some(30.0), Some(3.0), Some(7.0)];
        let bare = [Some(10.0), Some(10.0), Some(2.0), None];
        assert_eq!(paired_ratio(&confined, &bare), Some(2.0));
        assert_eq!(paired_ratio(&[None], &[Some(1.0)]), None);
    }

    #[test]
    fn rounds_rotate_the_order() {
        assert_eq!(round_order(3, 0), [0, 1, 2]);
        assert_eq!(round_order(3, 1), [1, 2, 0]);
        assert_eq!(round_order(3, 5), [2, 0, 1]);
        assert_eq!(round_order(1, 3), [0]);
    }

    #[test]
    fn policies_have_the_asked_number_of_rules_and_one_loopback_allow() {
        let count = |text: &str| text.matches("[[network.allow]]").count();
        let none = network_policy(0);
        assert_eq!(count(&none), 0);
        assert!(none.contains("default = \"allow\""));
        for n in [1, 1000, 10_000] {
            let text = network_policy(n);
            assert_eq!(count(&text), n, "{n}");
            assert!(text.contains("default = \"deny\""));
            assert_eq!(text.matches("cidr = \"127.0.0.1\"").count(), 1);
            let cidrs: std::collections::HashSet<&str> =
                text.lines().filter(|l| l.starts_with("cidr")).collect();
            assert_eq!(cidrs.len(), n, "every rule distinct");
        }
    }

    #[test]
    fn figures_are_written_with_their_samples_ratio_and_error() {
        let mut bare = Figure::new("connect", "bare kernel", "ns/op");
        bare.samples = vec![Some(1000.0), Some(1200.0), Some(1100.0)];
        bare.finish(None);
        let mut confined = Figure::new("connect", "oxd run, 1 network rule", "ns/op");
        confined.samples = vec![Some(2000.0), Some(2400.0), Some(3300.0)];
        confined.finish(Some(&bare));
        assert_eq!(bare.median, Some(1100.0));
        assert_eq!(confined.ratio, Some(2.0));
        let mut refused = Figure::new("connect", "oxd run, 10000 network rules", "ns/op");
        refused.error = Some("refused: too many network rules (10000)".to_owned());
        refused.finish(Some(&bare));
        let v = serde_json::to_value([&bare, &confined, &refused]).unwrap();
        assert_eq!(v[1]["ratio"], 2.0);
        assert_eq!(v[1]["samples"][2], 3300.0);
        assert_eq!(v[2]["error"], "refused: too many network rules (10000)");
        assert!(v[2]["median"].is_null());
        assert!(v[0].get("error").is_none());
        let t = table(&[bare, confined, refused]);
        assert!(t.contains("1.10 µs/op"), "{t}");
        assert!(t.contains("2.00x"), "{t}");
        assert!(t.contains("refused: too many network rules (10000)"), "{t}");
        assert_eq!(human_ns(850.0), "850 ns");
        let policy = Path::new("/tmp/b/net-1000.toml");
        assert_eq!(
            refusal(
                "oxd: error: /tmp/b/net-1000.toml:6:1: too many network rules (1000); at most 256",
                policy
            ),
            "too many network rules (1000); at most 256"
        );
        assert_eq!(refusal("oxd: error: cannot read", policy), "cannot read");
        assert_eq!(human_ns(4_560_000.0), "4.56 ms");
    }

    #[test]
    fn audit_logs_are_counted_by_op_and_losses() {
        let dir = std::env::temp_dir().join(format!("oxd-bench-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join("a.jsonl");
        fs::write(
            &log,
            "{\"op\":\"sendmsg\"}\n{\"op\":\"lost\",\"count\":5}\n{\"op\":\"connect\"}\n\
             {\"op\":\"sendmsg\"}\nnot json\n{\"op\":\"lost\",\"count\":2}\n",
        )
        .unwrap();
        assert_eq!(count_records(&log, "sendmsg").unwrap(), (2, 7));
        fs::remove_dir_all(&dir).unwrap();
    }
}
