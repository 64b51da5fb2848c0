//! Integration tests run directly on the host, as root. The host's kernel refuses BPF-LSM
//! programs but runs cgroup hooks, so network-only policies are enforced here, and a policy that
//! needs BPF-LSM must be refused before the command starts.

#[path = "budget.rs"]
mod budget;
mod common;
#[path = "connections.rs"]
mod connections;
#[path = "grant.rs"]
mod grant;

use std::{
    fs,
    io::BufReader,
    net::{TcpListener, TcpStream, UdpSocket},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use common::*;

fn net_policy(port: u16) -> String {
    format!(
        r#"
name = "host-net"
[network]
default = "deny"
[[network.allow]]
cidr = "127.0.0.1"
ports = {port}
"#
    )
}

#[test]
fn network_only_policy_is_enforced_without_bpf_lsm() {
    let scratch = Scratch::new("host-net");
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen on loopback");
    let port = listener.local_addr().expect("local addr").port();
    let denied_port = if port == u16::MAX { port - 1 } else { port + 1 };
    let policy = scratch.policy(&net_policy(port));
    let log = scratch.path("audit.jsonl");
    let probe = probe_bin();
    let allowed = format!("connect:127.0.0.1:{port}");
    let denied = format!("connect:127.0.0.1:{denied_port}");
    let output = oxd_run(
        &policy,
        &log,
        &[probe.to_str().expect("utf-8"), &allowed, &denied],
    );
    assert!(
        output.status.success(),
        "oxd run failed: {:?}",
        output.status
    );
    let results = probe_results(&output);
    assert_ok(&results, &allowed);
    assert_eperm(&results, &denied);
    let records = audit_records(&log);
    assert_record(
        &records,
        "connect",
        &format!("127.0.0.1:{port}"),
        "allow",
        "network.allow[0]",
    );
    assert_record(
        &records,
        "connect",
        &format!("127.0.0.1:{denied_port}"),
        "deny",
        "default",
    );
    assert!(
        records
            .iter()
            .filter(|r| r["op"] != "counts")
            .all(|r| r["policy"] == "host-net" && r["protocol"] == "tcp"),
        "{records:#?}"
    );
    assert_eq!(
        records.last().expect("records")["op"],
        "counts",
        "{records:#?}"
    );
}

/// The `sock_create` hook needs no BPF-LSM either: raw and other non-TCP/UDP sockets are
/// decided here too (ping sockets need a `ping_group_range` the host's root namespace does not
/// grant; the guests' attack suite covers them).
#[test]
fn raw_and_other_protocol_sockets_are_decided_without_bpf_lsm() {
    let scratch = Scratch::new("host-sock");
    let policy =
        scratch.policy("name = \"host-sock\"\n[network]\ndefault = \"allow\"\nraw = \"deny\"\n");
    let log = scratch.path("audit.jsonl");
    let probe = probe_bin();
    let output = oxd_run(
        &policy,
        &log,
        &[
            probe.to_str().expect("utf-8"),
            "socket:raw4",
            "socket:raw6",
            "socket:udplite4",
        ],
    );
    assert!(
        output.status.success(),
        "oxd run failed: {:?}",
        output.status
    );
    let results = probe_results(&output);
    assert_eperm(&results, "socket:raw4");
    assert_eperm(&results, "socket:raw6");
    assert_ok(&results, "socket:udplite4");
    let records = audit_records(&log);
    assert_record(
        &records,
        "socket",
        "ipv4 raw proto 1",
        "deny",
        "network.raw",
    );
    assert_record(
        &records,
        "socket",
        "ipv6 raw proto 58",
        "deny",
        "network.raw",
    );
    assert_record(
        &records,
        "socket",
        "ipv4 dgram proto 136",
        "allow",
        "default",
    );
}

#[test]
fn connects_outside_the_agent_cgroup_are_not_affected() {
    let scratch = Scratch::new("host-outside");
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen on loopback");
    let port = listener.local_addr().expect("local addr").port();
    let other = TcpListener::bind("127.0.0.1:0").expect("listen on loopback");
    let other_port = other.local_addr().expect("local addr").port();
    let policy = scratch.policy(&net_policy(port));
    let log = scratch.path("audit.jsonl");
    let go = scratch.path("go");
    let denied = format!("connect:127.0.0.1:{other_port}");
    let wait = format!("wait:{}", go.display());
    let probe = probe_bin();
    let mut child = oxd_run_spawn(
        &policy,
        &log,
        &[probe.to_str().expect("utf-8"), &denied, &wait],
    );
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let confined = next_probe_line(&mut stdout);
    assert_eq!(
        confined["ok"], false,
        "the confined connect must be denied: {confined}"
    );
    assert_eq!(confined["errno"], EPERM, "{confined}");
    // The programs are attached now; this process is outside the agent's cgroup.
    let outside = TcpStream::connect(("127.0.0.1", other_port));
    fs::write(&go, b"").expect("release the probe");
    let status = child.wait().expect("wait for oxd run");
    assert!(
        outside.is_ok(),
        "connect outside the agent's cgroup must succeed: {outside:?}"
    );
    assert!(status.success(), "{status:?}");
    let records = audit_records(&log);
    assert_eq!(
        records_for(&records, "connect", &format!("127.0.0.1:{other_port}")).len(),
        1,
        "only the confined connect is recorded: {records:#?}"
    );
}

#[test]
fn exec_policy_on_a_kernel_without_bpf_lsm_stops_before_the_command() {
    let scratch = Scratch::new("host-nolsm");
    let marker = scratch.path("ran");
    let log = scratch.path("audit.jsonl");
    let policy = repo().join("policies/example.toml");
    let output = oxd_run(
        &policy,
        &log,
        &["/usr/bin/touch", marker.to_str().expect("utf-8")],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(125),
        "oxd must fail itself: {stderr}"
    );
    assert!(!marker.exists(), "the command must not have run");
    assert!(stderr.contains("BPF-LSM"), "{stderr}");
    assert!(
        stderr.contains("CONFIG_BPF_LSM"),
        "the error names the kernel option: {stderr}"
    );
    assert!(
        stderr.contains("lsm="),
        "the error names the boot parameter: {stderr}"
    );
}

#[test]
fn exit_status_of_the_command_is_oxds_exit_status() {
    let scratch = Scratch::new("host-status");
    let policy = scratch.policy(&net_policy(9));
    let log = scratch.path("audit.jsonl");
    let output = oxd_run(&policy, &log, &["/bin/sh", "-c", "exit 7"]);
    assert_eq!(output.status.code(), Some(7));
    let output = oxd_run(&policy, &log, &["/bin/sh", "-c", "kill -TERM $$"]);
    assert_eq!(output.status.code(), Some(128 + 15));
    let output = oxd_run(&policy, &log, &["/nonexistent/agent"]);
    assert_eq!(output.status.code(), Some(127));
}

#[test]
fn nothing_the_agent_started_outlives_oxd_run() {
    let scratch = Scratch::new("host-leftover");
    let policy = scratch.policy(&net_policy(9));
    let log = scratch.path("audit.jsonl");
    let pidfile = scratch.path("pid");
    let script = format!("sleep 300 & echo $! > {}", pidfile.display());
    let output = oxd_run(&policy, &log, &["/bin/sh", "-c", &script]);
    assert!(output.status.success(), "{:?}", output.status);
    let pid = fs::read_to_string(&pidfile).expect("the agent wrote its child's pid");
    let proc_dir = Path::new("/proc").join(pid.trim());
    // Killed means gone, or a zombie waiting for its new parent to reap it.
    let alive = || {
        fs::read_to_string(proc_dir.join("stat")).is_ok_and(|stat| {
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next());
            !matches!(state, Some("Z" | "X"))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !alive(),
        "the agent's background process {} survived oxd run",
        pid.trim()
    );
}

#[test]
fn check_points_at_file_line_and_column() {
    let scratch = Scratch::new("host-check");
    let policy = scratch.policy("name = \"bad\"\n[exec]\nallow = [\"/usr/bin/**\", \"bin/ls\"]\n");
    let output = Command::new(oxd_bin())
        .arg("check")
        .arg(&policy)
        .output()
        .expect("run oxd check");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    let location = format!("{}:3:25:", policy.display());
    assert!(
        stderr.contains(&location),
        "expected {location} in: {stderr}"
    );
    assert!(stderr.contains("absolute path"), "{stderr}");

    let output = Command::new(oxd_bin())
        .arg("check")
        .arg(repo().join("policies/example.toml"))
        .output()
        .expect("run oxd check");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn no_network_example_policy_runs_without_bpf_lsm_and_denies_loopback() {
    let scratch = Scratch::new("host-no-network");
    let log = scratch.path("audit.jsonl");
    let policy = repo().join("policies/no-network.toml");
    let probe = probe_bin();
    let output = oxd_run(
        &policy,
        &log,
        &[
            probe.to_str().expect("utf-8"),
            "udp:127.0.0.1:9",
            "connect:[::1]:9",
        ],
    );
    assert!(output.status.success(), "{:?}", output.status);
    let results = probe_results(&output);
    assert_eperm(&results, "udp:127.0.0.1:9");
    assert_eperm(&results, "connect:[::1]:9");
    let records = audit_records(&log);
    assert_record(&records, "sendmsg", "127.0.0.1:9", "deny", "default");
    assert_record(&records, "connect", "[::1]:9", "deny", "default");
}

#[test]
fn doctor_names_bpf_lsm_as_missing_on_this_host() {
    let output = Command::new(oxd_bin())
        .arg("doctor")
        .output()
        .expect("run oxd doctor");
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}");
    assert_eq!(
        output.status.code(),
        Some(1),
        "something is missing here: {stdout}"
    );
    let line = |name: &str| {
        stdout
            .lines()
            .find(|l| {
                l.split_whitespace()
                    .skip(1)
                    .collect::<Vec<_>>()
                    .join(" ")
                    .starts_with(name)
            })
            .unwrap_or_else(|| panic!("no {name} line in {stdout}"))
            .to_owned()
    };
    assert!(line("BPF-LSM").starts_with("MISSING"), "{stdout}");
    assert!(
        stdout.contains("CONFIG_BPF_LSM") && stdout.contains("lsm="),
        "the fix: {stdout}"
    );
    for present in ["kernel BTF", "cgroup v2", "cgroup hooks", "capabilities"] {
        assert!(line(present).starts_with("ok"), "{present}: {stdout}");
    }
    // Without BPF-LSM there is no guard: doctor says so, and what to do.
    assert!(line("guard").starts_with("warn"), "{stdout}");
    assert!(stdout.contains("--user"), "{stdout}");
    // And what the host's own settings add, as this host has them.
    let unprivileged_bpf = fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled")
        .expect("read kernel.unprivileged_bpf_disabled");
    let expected = if unprivileged_bpf.trim() == "0" {
        "warn"
    } else {
        "ok"
    };
    assert!(line("unprivileged BPF").starts_with(expected), "{stdout}");
    for hardening in ["lockdown hardening", "module loading", "ptrace scope"] {
        line(hardening);
    }
}

/// `oxd run` under a flood that overruns its ring buffer: the log still accounts for every
/// decision. Two confined processes send 20,000 UDP datagrams each through a 16 KiB ring (about
/// 128 records); the decision records number what the kernel submitted, the `lost` records add
/// up to what it lost, and `oxd audit verify` checks both against the run's `counts` record.
#[test]
fn oxd_run_under_a_flood_accounts_for_every_decision() {
    const SENDS: u64 = 20_000;
    let scratch = Scratch::new("host-run-flood");
    let sink = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP sink on loopback");
    let port = sink.local_addr().expect("local addr").port();
    let policy = scratch.policy(&net_policy(port));
    let log = scratch.path("audit.jsonl");
    let workload = oxd_bin().with_file_name("oxd-bench-workload");
    assert!(
        workload.is_file(),
        "oxd-bench-workload not found next to oxd at {} (build oxd-tests)",
        workload.display()
    );
    let flood = format!(
        "W='{}'; \"$W\" udp {port} {SENDS} & \"$W\" udp {port} {SENDS} & wait",
        workload.display()
    );
    let output = Command::new(oxd_bin())
        .args(["run", "--ring-size", "16384", "--policy"])
        .arg(&policy)
        .arg("--audit-log")
        .arg(&log)
        .args(["--", "/bin/sh", "-c", &flood])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("spawn oxd run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "oxd run failed: {:?}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    // Both loops ran to the end, every send allowed.
    let loops: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(loops.len(), 2, "{stdout}");
    for l in &loops {
        assert_eq!(l["iterations"], SENDS, "{l}");
        assert_eq!(l["errors"], 0, "{l}");
    }

    let records = audit_records(&log);
    let counts: Vec<&serde_json::Value> = records.iter().filter(|r| r["op"] == "counts").collect();
    assert_eq!(counts.len(), 1, "one counts record closes the run");
    let counts = counts[0];
    assert_eq!(counts["complete"], true, "{counts}");
    let decisions = records
        .iter()
        .filter(|r| r["op"] != "lost" && r["op"] != "counts")
        .count() as u64;
    let reported_lost: u64 = records
        .iter()
        .filter(|r| r["op"] == "lost")
        .map(|r| r["count"].as_u64().expect("a lost record has a count"))
        .sum();
    let submitted = counts["submitted"].as_u64().expect("submitted");
    let lost_total = counts["lost_total"].as_u64().expect("lost_total");
    eprintln!("{decisions} decision records, {submitted} submitted, {lost_total} lost");
    assert!(lost_total > 0, "a 16 KiB ring cannot hold 40,000 records");
    assert_eq!(decisions, submitted, "every submitted decision is a record");
    assert_eq!(
        reported_lost, lost_total,
        "every lost decision is in a lost record"
    );
    assert!(
        submitted + lost_total >= 2 * SENDS,
        "each send was decided: {submitted} + {lost_total}"
    );
    let verify = Command::new(oxd_bin())
        .args(["audit", "verify"])
        .arg(&log)
        .output()
        .expect("run oxd audit verify");
    let out = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{out}");
    assert!(
        out.contains("the records of 1 run(s) match the kernel's counts"),
        "{out}"
    );
    drop(sink);
}

/// Runs `oxd run` with `flags` on the network policy allowing `port`, the agent running
/// `oxd-bench-workload udp PORT N` for each `(PORT, N)` of `sends` one after the other; returns
/// the workload's result lines and the audit log's records, after `audit verify` passed.
fn run_udp_sends(
    scratch: &Scratch,
    flags: &[&str],
    port: u16,
    sends: &[(u16, u64)],
) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
    let policy = scratch.policy(&net_policy(port));
    let log = scratch.path("audit.jsonl");
    let workload = oxd_bin().with_file_name("oxd-bench-workload");
    assert!(
        workload.is_file(),
        "oxd-bench-workload not found next to oxd at {} (build oxd-tests)",
        workload.display()
    );
    let script = sends
        .iter()
        .map(|(port, n)| format!("\"$W\" udp {port} {n}"))
        .collect::<Vec<_>>()
        .join("; ");
    let output = Command::new(oxd_bin())
        .arg("run")
        .args(flags)
        .arg("--policy")
        .arg(&policy)
        .arg("--audit-log")
        .arg(&log)
        .args(["--", "/bin/sh", "-c"])
        .arg(format!("W='{}'; {script}; true", workload.display()))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("spawn oxd run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "oxd run failed: {:?}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let results: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(results.len(), sends.len(), "{stdout}");
    let verify = Command::new(oxd_bin())
        .args(["audit", "verify"])
        .arg(&log)
        .output()
        .expect("run oxd audit verify");
    let out = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success() && out.contains("match the kernel's counts"),
        "{out}"
    );
    (results, audit_records(&log))
}

/// The sum of the counts of the `tally` records with `why`, and of what they count, by
/// (op, decision, rule).
fn tallies(records: &[serde_json::Value], why: &str) -> u64 {
    records
        .iter()
        .filter(|r| r["op"] == "tally" && r["why"] == why)
        .map(|r| r["count"].as_u64().expect("a tally has a count"))
        .sum()
}

#[test]
fn record_counted_counts_allowed_decisions_in_the_kernel_and_records_each_denial() {
    const ALLOWED: u64 = 3000;
    const DENIED: u64 = 7;
    let scratch = Scratch::new("host-record-counted");
    let sink = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP sink on loopback");
    let port = sink.local_addr().expect("local addr").port();
    let denied_port = if port == 65535 { port - 1 } else { port + 1 };
    let (results, records) = run_udp_sends(
        &scratch,
        &["--record", "counted"],
        port,
        &[(port, ALLOWED), (denied_port, DENIED)],
    );
    assert_eq!(results[0]["errors"], 0, "{results:?}");
    assert_eq!(results[1]["errors"], DENIED, "{results:?}");
    // No allowed decision is a record of its own; each denial is.
    let allowed_records = records
        .iter()
        .filter(|r| r["decision"] == "allow" && r["op"] != "tally");
    assert_eq!(allowed_records.count(), 0, "{records:#?}");
    let denials = records
        .iter()
        .filter(|r| r["op"] == "sendmsg" && r["decision"] == "deny")
        .count() as u64;
    assert_eq!(denials, DENIED, "{records:#?}");
    // The allowed sends, counted under the rule that allowed them.
    let counted: Vec<_> = records.iter().filter(|r| r["op"] == "tally").collect();
    assert!(!counted.is_empty(), "{records:#?}");
    for t in &counted {
        assert_eq!(
            (
                &t["of"],
                &t["decision"],
                &t["rule"],
                &t["why"],
                &t["policy"]
            ),
            (
                &serde_json::json!("sendmsg"),
                &serde_json::json!("allow"),
                &serde_json::json!("network.allow[0]"),
                &serde_json::json!("counted"),
                &serde_json::json!("host-net"),
            ),
            "{t}"
        );
    }
    assert_eq!(tallies(&records, "counted"), ALLOWED, "{counted:#?}");
    let counts = records
        .iter()
        .find(|r| r["op"] == "counts")
        .expect("counts");
    assert_eq!(counts["tallied"], ALLOWED, "{counts}");
    assert_eq!(counts["submitted"], DENIED, "{counts}");
    drop(sink);
}

#[test]
fn record_rate_limits_an_agents_records_in_the_kernel_and_counts_the_rest() {
    const DENIED: u64 = 20_000;
    const RATE: u64 = 50;
    let scratch = Scratch::new("host-record-rate");
    let sink = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP sink on loopback");
    let port = sink.local_addr().expect("local addr").port();
    let denied_port = if port == 65535 { port - 1 } else { port + 1 };
    let started = Instant::now();
    let (results, records) = run_udp_sends(
        &scratch,
        &["--record-rate", &RATE.to_string()],
        port,
        &[(denied_port, DENIED)],
    );
    let seconds = started.elapsed().as_secs() + 2;
    // Every send was refused: the limit is on records, never on decisions.
    assert_eq!(results[0]["errors"], DENIED, "{results:?}");
    let recorded = records
        .iter()
        .filter(|r| r["op"] == "sendmsg" && r["decision"] == "deny")
        .count() as u64;
    let suppressed = tallies(&records, "rate-limited");
    eprintln!("{recorded} denials recorded, {suppressed} rate-limited");
    assert_eq!(
        recorded + suppressed,
        DENIED,
        "each denial recorded or counted"
    );
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    assert!(
        recorded <= RATE * cpus * seconds,
        "{recorded} records in about {seconds} s on {cpus} CPUs at {RATE}/s each"
    );
    assert!(
        recorded >= RATE.min(DENIED),
        "the first {RATE} are recorded: {recorded}"
    );
    let counts = records
        .iter()
        .find(|r| r["op"] == "counts")
        .expect("counts");
    assert_eq!(counts["suppressed"], suppressed, "{counts}");
    for t in records.iter().filter(|r| r["op"] == "tally") {
        assert_eq!(
            (&t["of"], &t["decision"], &t["rule"]),
            (
                &serde_json::json!("sendmsg"),
                &serde_json::json!("deny"),
                &serde_json::json!("default")
            ),
            "{t}"
        );
    }
    drop(sink);
}

#[test]
fn audit_log_hash_chain_verifies_and_catches_an_edit() {
    let scratch = Scratch::new("host-audit-chain");
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen on loopback");
    let port = listener.local_addr().expect("local addr").port();
    let policy = scratch.policy(&net_policy(port));
    let log = scratch.path("audit.jsonl");
    let probe = probe_bin();
    let probe = probe.to_str().expect("utf-8");
    let allowed = format!("connect:127.0.0.1:{port}");
    // Two runs appending to one log: one chain.
    for _ in 0..2 {
        let output = oxd_run(
            &policy,
            &log,
            &[probe, &allowed, "udp:127.0.0.1:9", &allowed],
        );
        assert!(output.status.success(), "{:?}", output.status);
    }
    let records = audit_records(&log);
    // Three decisions and the closing `counts` record of each run.
    assert_eq!(records.len(), 8, "{records:#?}");
    assert_eq!(records.iter().filter(|r| r["op"] == "counts").count(), 2);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["seq"], i as u64, "{r}");
    }
    let oxd = |args: &[&str]| {
        let output = Command::new(oxd_bin())
            .args(args)
            .output()
            .expect("run oxd");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let log_s = log.to_str().expect("utf-8");
    let (code, out) = oxd(&["audit", "verify", log_s]);
    assert_eq!(code, Some(0), "{out}");
    // Six decisions and the `counts` record that closes each run; each run's three decision
    // records are what its kernel counters say were submitted.
    assert!(
        out.contains(
            "8 records, hash chain intact, the records of 2 run(s) match the kernel's counts"
        ),
        "{out}"
    );

    let (code, out) = oxd(&["audit", "tail", "--denied", log_s]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(out.lines().count(), 2, "two denied sends: {out}");
    assert!(
        out.lines()
            .all(|l| l.contains("deny") && l.contains("127.0.0.1:9")),
        "{out}"
    );

    // Flip one decision, as someone covering their tracks would.
    let text = fs::read_to_string(&log).expect("read log");
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    assert!(lines[1].contains("\"decision\":\"deny\""), "{}", lines[1]);
    lines[1] = lines[1].replace("\"decision\":\"deny\"", "\"decision\":\"allow\"");
    fs::write(&log, lines.join("\n") + "\n").expect("rewrite log");
    let (code, out) = oxd(&["audit", "verify", log_s]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains(&format!("{log_s}:2: record edited")), "{out}");
}

#[test]
fn audit_tail_shows_a_forged_command_name_escaped_on_one_line() {
    use std::os::unix::ffi::OsStrExt as _;

    let scratch = Scratch::new("host-audit-escape");
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen on loopback");
    let port = listener.local_addr().expect("local addr").port();
    let policy = scratch.policy(&net_policy(port));
    let log = scratch.path("audit.jsonl");
    // The agent names its program: the kernel's `comm` is the name it executes, here one that
    // would clear the screen, end the line, and carry a byte that is not UTF-8 and a bidi
    // override.
    let name: &[u8] = b"\x1b[2J\n\xff\xe2\x80\xae";
    let program = scratch.path("x").join(std::ffi::OsStr::from_bytes(name));
    fs::create_dir_all(program.parent().expect("parent")).expect("mkdir");
    std::os::unix::fs::symlink(probe_bin(), &program).expect("symlink to the probe");
    let output = Command::new(oxd_bin())
        .arg("run")
        .arg("--policy")
        .arg(&policy)
        .arg("--audit-log")
        .arg(&log)
        .arg("--")
        // `exec -a`: the probe's argv[0] stays UTF-8 (it reads its arguments as text); the
        // kernel names the task after the file executed.
        .args(["/bin/bash", "-c", "exec -a oxd-probe \"$0\" \"$1\""])
        .arg(&program)
        .arg(format!("connect:127.0.0.1:{port}"))
        .output()
        .expect("run oxd");
    assert!(output.status.success(), "{output:?}");
    let records = audit_records(&log);
    let connect: Vec<&serde_json::Value> =
        records.iter().filter(|r| r["op"] == "connect").collect();
    assert_eq!(connect.len(), 1, "{records:#?}");
    assert_eq!(
        connect[0]["comm_bytes"], "1b5b324a0affe280ae",
        "{}",
        connect[0]
    );

    let output = Command::new(oxd_bin())
        .args(["audit", "tail"])
        .arg(&log)
        .output()
        .expect("run oxd audit tail");
    assert!(output.status.success(), "{output:?}");
    let out = String::from_utf8(output.stdout).expect("tail prints UTF-8");
    assert_eq!(
        out.lines().count(),
        records.len(),
        "one line per record: {out}"
    );
    assert!(
        !out.contains(['\x1b', '\r', '\u{202e}', '\u{fffd}']),
        "raw control characters in {out:?}"
    );
    assert!(
        out.contains(r"[\x1b[2J\n\xff\u{202e} pid "),
        "the name shown escaped: {out}"
    );
}

#[test]
fn record_denied_writes_only_denials() {
    let scratch = Scratch::new("host-record-denied");
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen on loopback");
    let port = listener.local_addr().expect("local addr").port();
    let policy = scratch.policy(&net_policy(port));
    let log = scratch.path("audit.jsonl");
    let probe = probe_bin();
    let allowed = format!("connect:127.0.0.1:{port}");
    let output = Command::new(oxd_bin())
        .args(["run", "--record", "denied", "--policy"])
        .arg(&policy)
        .arg("--audit-log")
        .arg(&log)
        .arg("--")
        .args([probe.to_str().expect("utf-8"), &allowed, "udp:127.0.0.1:9"])
        .output()
        .expect("run oxd");
    assert!(output.status.success(), "{output:?}");
    let records = audit_records(&log);
    let (decisions, counts): (Vec<_>, Vec<_>) = records.iter().partition(|r| r["op"] != "counts");
    assert!(!decisions.is_empty());
    assert!(
        decisions.iter().all(|r| r["decision"] == "deny"),
        "{records:#?}"
    );
    // Decided in the kernel: the allowed connect was never submitted.
    assert_eq!(counts.len(), 1, "{records:#?}");
    assert_eq!(
        counts[0]["submitted"],
        decisions.len() as u64,
        "{records:#?}"
    );
    assert_eq!(counts[0]["lost_total"], 0, "{records:#?}");
}

/// GET <http://ADDR/metrics>, or None if nothing answers yet.
fn scrape(addr: &str) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: oxd\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

#[test]
fn metrics_count_decisions_and_name_the_policy() {
    let scratch = Scratch::new("host-metrics");
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen on loopback");
    let port = listener.local_addr().expect("local addr").port();
    let metrics_port = {
        let free = TcpListener::bind("127.0.0.1:0").expect("find a free port");
        free.local_addr().expect("local addr").port()
    };
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let policy = scratch.policy(&net_policy(port));
    let log = scratch.path("audit.jsonl");
    let go = scratch.path("go");
    let probe = probe_bin();
    let allowed = format!("connect:127.0.0.1:{port}");
    let wait = format!("wait:{}", go.display());
    let mut child = Command::new(oxd_bin())
        .args(["run", "--metrics", &metrics_addr, "--policy"])
        .arg(&policy)
        .arg("--audit-log")
        .arg(&log)
        .arg("--")
        .args([
            probe.to_str().expect("utf-8"),
            &allowed,
            "udp:127.0.0.1:9",
            "udp:127.0.0.1:9",
            &wait,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn oxd run");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    for _ in 0..3 {
        next_probe_line(&mut stdout);
    }
    // The three decisions are made; poll until the reader has counted them.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut text = String::new();
    while Instant::now() < deadline {
        text = scrape(&metrics_addr).unwrap_or_default();
        if text.contains(r#"oxd_decisions_total{op="sendmsg",decision="deny",enforced="true"} 2"#) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    fs::write(&go, b"").expect("release the probe");
    let status = child.wait().expect("wait for oxd run");
    assert!(status.success(), "{status:?}");
    assert!(
        text.starts_with("HTTP/1.") && text.contains(" 200 "),
        "{text}"
    );
    assert!(
        text.contains(r#"oxd_decisions_total{op="sendmsg",decision="deny",enforced="true"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"oxd_decisions_total{op="connect",decision="allow",enforced="true"} 1"#),
        "{text}"
    );
    assert!(text.contains("oxd_ringbuf_lost 0"), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("oxd_policy_generation{")
            && l.contains(r#"policy="host-net""#)
            && l.ends_with(" 1")),
        "{text}"
    );
}

/// The daemon on a kernel without BPF-LSM: it runs, says so, enforces network-only policies
/// (pinned, so they survive `kill -9`), and refuses a policy with exec rules, naming the fix.
#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one daemon's life, step by step: confine, kill, adopt, prune, refuse"
)]
fn daemon_without_bpf_lsm_enforces_network_policies_pinned_and_refuses_exec_policies() {
    let scratch = Scratch::new("host-daemon");
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen on loopback");
    let port = listener.local_addr().expect("local addr").port();
    let denied_port = if port == u16::MAX { port - 1 } else { port + 1 };
    let allowed = format!("connect:127.0.0.1:{port}");
    let denied = format!("connect:127.0.0.1:{denied_port}");
    let net = scratch.path("net.toml");
    fs::write(&net, net_policy(port)).expect("write the network policy");
    let exec = scratch.path("exec.toml");
    fs::write(&exec, "name = \"host-exec\"\n[exec]\ndefault = \"allow\"\n")
        .expect("write the exec policy");
    let cgroup = TestCgroup::new("host-daemon");
    let other = TestCgroup::new("host-daemon-exec");

    // This host has no bpffs at /sys/fs/bpf: the daemon pins into a private one.
    let bpffs = BpffsMount::new(&scratch, "bpffs");
    let metrics_addr = {
        let free = TcpListener::bind("127.0.0.1:0").expect("find a free port");
        free.local_addr().expect("local addr").to_string()
    };
    let mut daemon = Daemon::new(&scratch, "host", &["--metrics", &metrics_addr]);
    daemon.bpffs = bpffs.path.join("oxd");
    daemon.start();
    let status = daemon.status();
    assert_eq!(status["lsm"], false, "this host has no BPF-LSM: {status}");
    // A second daemon on the same pins is refused before it touches them.
    let second = output_within(
        Command::new(oxd_bin())
            .arg("daemon")
            .arg("--socket")
            .arg(scratch.path("second.sock"))
            .arg("--state-dir")
            .arg(scratch.path("second-state"))
            .arg("--bpffs")
            .arg(&daemon.bpffs)
            .arg("--audit-log")
            .arg(scratch.path("second-audit.jsonl")),
        WAIT,
    )
    .expect("a second daemon must exit");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        !second.status.success() && stderr.contains("another oxd daemon uses the pins"),
        "{second:?}"
    );

    daemon.confine_cgroup(&cgroup, &net);
    let results = probe_in(&cgroup, &[&allowed, &denied]);
    assert_ok(&results, &allowed);
    assert_eperm(&results, &denied);
    // Outside the cgroup nothing changes.
    TcpStream::connect(("127.0.0.1", port)).expect("connect from outside the cgroup");
    // The metrics name the policy in force for the target and count the decisions.
    let series = format!(
        r#"oxd_policy_generation{{target="{}",policy="host-net""#,
        cgroup.path_str()
    );
    let text = wait_for("the daemon's metrics to count the denial", WAIT, || {
        scrape(&metrics_addr).filter(|t| {
            t.contains(&series)
                && t.contains(
                    r#"oxd_decisions_total{op="connect",decision="deny",enforced="true"} 1"#,
                )
        })
    });
    assert!(text.contains("oxd_ringbuf_lost 0"), "{text}");

    let refused = daemon.ctl_output(&[
        "confine",
        "--cgroup",
        other.path_str(),
        "--policy",
        exec.to_str().expect("utf-8 path"),
    ]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("CONFIG_BPF_LSM"),
        "a policy with exec rules must be refused, naming the fix: {refused:?}"
    );
    assert!(daemon.target(&other).is_none(), "nothing was confined");

    // kill -9: the pinned links keep deciding.
    daemon.signal(libc::SIGKILL);
    daemon.wait_exit();
    let results = probe_in(&cgroup, &[&allowed, &denied]);
    assert_ok(&results, &allowed);
    assert_eperm(&results, &denied);

    // The pinned ring buffer cannot change size: a daemon asking for another is refused,
    // saying what to do, and leaves the pins as they were.
    let resized = output_within(
        Command::new(oxd_bin())
            .arg("daemon")
            .arg("--socket")
            .arg(scratch.path("resized.sock"))
            .arg("--state-dir")
            .arg(&daemon.state_dir)
            .arg("--bpffs")
            .arg(&daemon.bpffs)
            .arg("--audit-log")
            .arg(scratch.path("resized-audit.jsonl"))
            .args(["--ring-size", "65536"]),
        WAIT,
    )
    .expect("a daemon with another ring size must exit");
    let stderr = String::from_utf8_lossy(&resized.stderr);
    assert!(
        !resized.status.success()
            && stderr.contains("holds 4194304 bytes, not the 65536 asked for")
            && stderr.contains("--ring-size 4194304"),
        "{resized:?}"
    );

    // A new daemon adopts the target, records its decisions, and can release it.
    daemon.start();
    assert_eq!(daemon.status()["adopted"], true);
    assert!(daemon.target(&cgroup).is_some(), "the target was adopted");
    let results = probe_in(&cgroup, &[&denied]);
    assert_eperm(&results, &denied);
    let target = format!("127.0.0.1:{denied_port}");
    wait_for("the adopted daemon to record the denial", WAIT, || {
        let records = audit_records_so_far(&daemon.audit_log);
        let n = records
            .iter()
            .filter(|r| r["op"] == "connect" && r["target"] == target.as_str())
            .filter(|r| r["decision"] == "deny")
            .count();
        (n >= 3).then_some(())
    });
    daemon.ctl(&["release", "--cgroup", cgroup.path_str()]);
    let results = probe_in(&cgroup, &[&denied]);
    let r = result_of(&results, &denied);
    assert_ne!(
        r["errno"], EPERM,
        "released: the connect is no longer denied: {r}"
    );

    // A confined cgroup that is removed is forgotten.
    let short_lived = TestCgroup::new("host-daemon-gone");
    daemon.confine_cgroup(&short_lived, &net);
    let id = short_lived.id();
    assert!(daemon.target(&short_lived).is_some(), "confined");
    drop(short_lived);
    wait_for("the daemon to forget the removed cgroup", WAIT, || {
        let list = daemon.list();
        (!list.iter().any(|t| t["cgroup_id"].as_u64() == Some(id))).then_some(())
    });
    assert_eq!(daemon.status()["targets"], 0);
    assert_audit_log_verifies(&daemon.audit_log);
}

/// Whether process `pid` is alive (not gone and not a zombie).
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next());
        !matches!(state, Some("Z" | "X"))
    })
}

/// The pid of the child of `parent` named `comm`, if there is one.
fn child_named(parent: u32, comm: &str) -> Option<u32> {
    fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
        let (name, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
        let parent_pid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
        (parent_pid == parent && name == comm).then_some(pid)
    })
}

/// An agent whose background process, started with `setsid` so it is neither oxd's child nor
/// in its session, keeps trying a denied connect (to `denied`, where the test listens) and
/// writes its pid to `pidfile`.
fn persistent_agent(probe: &Path, denied: u16, pidfile: &Path) -> String {
    format!(
        "setsid sh -c 'echo $$ > {pidfile}; while :; do {probe} connect:127.0.0.1:{denied} \
         >/dev/null 2>&1; done' & sleep 300",
        pidfile = pidfile.display(),
        probe = probe.display(),
    )
}

/// Whether `listener` (non-blocking) has accepted a connection.
fn accepted_any(listener: &TcpListener) -> bool {
    match listener.accept() {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(e) => panic!("accept: {e}"),
    }
}

/// Issue 10, item 4: when oxd dies under `oxd run` (here: SIGKILL from outside), nothing the
/// agent started runs on unconfined. The watchdog keeps the programs attached while it kills
/// the agent's cgroup, so the agent's background process, which keeps trying a denied connect,
/// never gets one through and is gone soon after.
#[test]
fn killing_oxd_run_kills_the_agent_which_stays_confined_to_the_end() {
    let scratch = Scratch::new("host-oxd-killed");
    let denied = TcpListener::bind("127.0.0.1:0").expect("listen on loopback");
    denied.set_nonblocking(true).expect("non-blocking");
    let denied_port = denied.local_addr().expect("local addr").port();
    let policy = scratch.policy(&net_policy(9));
    let log = scratch.path("audit.jsonl");
    let pidfile = scratch.path("agent.pid");
    let script = persistent_agent(&probe_bin(), denied_port, &pidfile);
    let mut oxd = oxd_run_spawn(&policy, &log, &["/bin/sh", "-c", &script]);
    let oxd_pid = oxd.id();
    let agent: u32 = wait_for(
        "the agent's background process",
        Duration::from_secs(30),
        || fs::read_to_string(&pidfile).ok()?.trim().parse().ok(),
    );
    let cgroup = Path::new("/sys/fs/cgroup/oxd").join(format!("run-{oxd_pid}"));
    // Its attempts are being denied and recorded.
    wait_for("a recorded denial", Duration::from_secs(30), || {
        audit_records_so_far(&log)
            .iter()
            .any(|r| r["op"] == "connect" && r["decision"] == "deny")
            .then_some(())
    });
    let watchdog = child_named(oxd_pid, "oxd-watchdog").expect("oxd run has a watchdog");
    oxd.kill().expect("SIGKILL oxd run");
    oxd.wait().expect("reap oxd run");
    wait_for("the agent to be killed", Duration::from_secs(20), || {
        (!alive(agent)).then_some(())
    });
    wait_for("the watchdog to exit", Duration::from_secs(20), || {
        (!alive(watchdog)).then_some(())
    });
    assert!(
        !accepted_any(&denied),
        "a denied connect got through after oxd died"
    );
    assert!(
        !cgroup.exists(),
        "the watchdog left the agent's cgroup {} behind",
        cgroup.display()
    );
}

/// If the watchdog dies while oxd lives, oxd's own death would no longer be covered: the run
/// ends, the agent is killed, and oxd says why (exit status 125).
#[test]
fn killing_the_watchdog_ends_the_run() {
    let scratch = Scratch::new("host-watchdog-killed");
    let denied = TcpListener::bind("127.0.0.1:0").expect("listen on loopback");
    denied.set_nonblocking(true).expect("non-blocking");
    let denied_port = denied.local_addr().expect("local addr").port();
    let policy = scratch.policy(&net_policy(9));
    let log = scratch.path("audit.jsonl");
    let pidfile = scratch.path("agent.pid");
    let script = persistent_agent(&probe_bin(), denied_port, &pidfile);
    let mut cmd = oxd_run_command(&policy, &log, &["/bin/sh", "-c", &script]);
    cmd.stderr(std::process::Stdio::piped());
    let oxd = cmd.spawn().expect("spawn oxd run");
    let oxd_pid = oxd.id();
    let agent: u32 = wait_for(
        "the agent's background process",
        Duration::from_secs(30),
        || fs::read_to_string(&pidfile).ok()?.trim().parse().ok(),
    );
    let watchdog = wait_for("the watchdog", Duration::from_secs(10), || {
        child_named(oxd_pid, "oxd-watchdog")
    });
    let status = Command::new("kill")
        .args(["-KILL", &watchdog.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "cannot kill the watchdog");
    let output = oxd.wait_with_output().expect("wait for oxd run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("watchdog"), "{stderr}");
    assert!(!alive(agent), "the agent outlived the run");
    assert!(!accepted_any(&denied), "a denied connect got through");
}

/// Issue 10, item 2: `oxd run --user` runs the agent without privileges: its user, group and
/// supplementary groups are the ones named, no capability is left in any set (bounding
/// included), and `no_new_privs` keeps set-user-ID programs from giving any back.
#[test]
fn run_user_drops_every_privilege_before_the_command() {
    let scratch = Scratch::new("host-run-user");
    let policy = scratch.policy(&net_policy(9));
    let log = scratch.path("audit.jsonl");
    let script = "id -u; id -g; id -G; grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs)' \
                  /proc/self/status";
    let output = oxd_run_command(&policy, &log, &["/bin/sh", "-c", script])
        .output()
        .expect("spawn oxd run");
    assert!(output.status.success(), "{output:?}");
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("CapEff:\t0000000000000000"),
        "without --user, the agent is root with capabilities: {output:?}"
    );
    let mut cmd = Command::new(oxd_bin());
    cmd.args(["run", "--user", "65534:65534", "--policy"])
        .arg(&policy)
        .arg("--audit-log")
        .arg(&log)
        .args(["--", "/bin/sh", "-c", script])
        .stdin(std::process::Stdio::null());
    let output = cmd.output().expect("spawn oxd run --user");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(&lines[..3], &["65534", "65534", "65534"], "{stdout}");
    for field in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert!(
            lines.contains(&format!("{field}:\t0000000000000000").as_str()),
            "{field} is not empty: {stdout}"
        );
    }
    assert!(lines.contains(&"NoNewPrivs:\t1"), "{stdout}");
    // Root is not a user to drop to.
    let mut cmd = Command::new(oxd_bin());
    cmd.args(["run", "--user", "root", "--policy"])
        .arg(&policy)
        .args(["--", "/bin/true"]);
    let output = cmd.output().expect("spawn oxd run --user root");
    assert_eq!(output.status.code(), Some(125), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("is root"),
        "{output:?}"
    );
}

/// Issue 10, item 3: a cgroup inside a tree delegated to an ordinary user (here: its parent's
/// `cgroup.procs` belongs to uid 65534, as systemd's `Delegate=` leaves it) is refused where
/// no guard can deny the move out of it (this host has no BPF-LSM), naming the delegation
/// root; the same cgroup is confined once the delegation is undone.
#[test]
fn daemon_refuses_a_cgroup_in_a_delegated_tree_without_the_guard() {
    let scratch = Scratch::new("host-delegated");
    let policy = scratch.path("net.toml");
    fs::write(&policy, net_policy(9)).expect("write the policy");
    let tree = TestCgroup::new("host-delegated");
    let agent = tree.path().join("agent");
    fs::create_dir(&agent).expect("create the agent's cgroup");
    let procs = tree.path().join("cgroup.procs");
    std::os::unix::fs::chown(&procs, Some(65534), Some(65534)).expect("delegate the tree");
    let bpffs = BpffsMount::new(&scratch, "bpffs");
    let mut daemon = Daemon::new(&scratch, "delegated", &[]);
    daemon.bpffs = bpffs.path.join("oxd");
    daemon.start();
    let agent_str = agent.to_str().expect("utf-8");
    let policy_str = policy.to_str().expect("utf-8");
    let confine = ["confine", "--cgroup", agent_str, "--policy", policy_str];
    let output = daemon.ctl_output(&confine);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a delegated cgroup was confined");
    assert!(
        stderr.contains(&format!("{} is delegated to uid 65534", tree.path_str())),
        "{stderr}"
    );
    assert!(daemon.list().is_empty(), "nothing may be half-confined");
    std::os::unix::fs::chown(&procs, Some(0), Some(0)).expect("undo the delegation");
    daemon.ctl(&confine);
    assert_eq!(daemon.list().len(), 1);
    daemon.ctl(&["release", "--cgroup", agent_str]);
    fs::remove_dir(&agent).expect("remove the agent's cgroup");
}

/// A seeded pseudo-random generator (splitmix64): the same seed makes the same policies.
struct NetRng(u64);

impl NetRng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn next_u32(&mut self) -> u32 {
        u32::try_from(self.next() >> 32).expect("32 bits")
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The first `len` bits of `addr` kept, the rest random.
fn net_randomize_below(rng: &mut NetRng, addr: std::net::IpAddr, len: u32) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    match addr {
        IpAddr::V4(v4) => {
            let keep = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            let bits = (u32::from(v4) & keep) | (rng.next_u32() & !keep);
            IpAddr::V4(Ipv4Addr::from(bits))
        }
        IpAddr::V6(v6) => {
            let keep = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            let random = u128::from(rng.next()) << 64 | u128::from(rng.next());
            IpAddr::V6(Ipv6Addr::from((u128::from(v6) & keep) | (random & !keep)))
        }
    }
}

/// A network rule's CIDR around `anchor`: `len` bits kept, host bits zero.
fn net_cidr(anchor: std::net::IpAddr, len: u32) -> String {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    match anchor {
        IpAddr::V4(v4) => {
            let keep = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            format!("{}/{len}", Ipv4Addr::from(u32::from(v4) & keep))
        }
        IpAddr::V6(v6) => {
            let keep = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            format!("{}/{len}", Ipv6Addr::from(u128::from(v6) & keep))
        }
    }
}

/// Number of CIDR rules in each generated policy.
const LARGE_NET_RULES: usize = 10_000;

/// A `[network]` policy of [`LARGE_NET_RULES`] rules around random anchor addresses (IPv4 and
/// IPv6, nested prefixes of every length, port ranges, tcp/udp/any, allow and deny), the
/// anchors, and the ports worth probing.
fn large_net_policy(rng: &mut NetRng, index: usize) -> (String, Vec<std::net::IpAddr>, Vec<u16>) {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let default = if rng.chance(50) { "allow" } else { "deny" };
    let mut text = format!("name = \"large-net-{index}\"\n[network]\ndefault = \"{default}\"\n");
    let mut anchors: Vec<IpAddr> = vec![
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    while anchors.len() < 1500 {
        let anchor = if rng.chance(60) {
            IpAddr::V4(Ipv4Addr::from(rng.next_u32()))
        } else {
            // Global unicast space (2000::/3).
            let random = u128::from(rng.next()) << 64 | u128::from(rng.next());
            IpAddr::V6(Ipv6Addr::from((random >> 3) | (1u128 << 125)))
        };
        anchors.push(anchor);
    }
    let base: u16 = 1000 + u16::try_from(rng.below(30_000)).expect("below 30000");
    let mut ports = vec![1, base, u16::MAX];
    for _ in 0..LARGE_NET_RULES {
        let anchor = anchors[usize::try_from(rng.below(anchors.len() as u64)).expect("index")];
        let bits = if anchor.is_ipv4() { 32 } else { 128 };
        let len = match rng.below(100) {
            // A few wide networks (::/0 and 0.0.0.0/0 included), which nest everything.
            0 => u32::try_from(rng.below(8)).expect("below 8"),
            1..=10 => bits / 4 + u32::try_from(rng.below(u64::from(bits / 4))).expect("len"),
            11..=40 => bits / 2 + u32::try_from(rng.below(u64::from(bits / 4))).expect("len"),
            _ => bits - u32::try_from(rng.below(u64::from(bits / 4) + 1)).expect("len"),
        };
        let mut body = format!("cidr = \"{}\"\n", net_cidr(anchor, len));
        // Wide networks only on some ports, so that the default still decides somewhere.
        let wide = len < bits / 4;
        match rng.below(10) {
            0..=3 if !wide => {}
            0..=6 => {
                let p = base + u16::try_from(rng.below(12)).expect("below 12");
                body.push_str(&format!("ports = {p}\n"));
                ports.extend([p - 1, p, p + 1]);
            }
            _ => {
                let lo = base + u16::try_from(rng.below(10)).expect("below 10");
                let hi = lo + u16::try_from(rng.below(400)).expect("below 400");
                body.push_str(&format!("ports = \"{lo}-{hi}\"\n"));
                ports.extend([lo - 1, lo, hi, hi + 1]);
            }
        }
        body.push_str(match rng.below(4) {
            0 => "protocol = \"tcp\"\n",
            1 => "protocol = \"udp\"\n",
            2 => "protocol = \"any\"\n",
            _ => "",
        });
        let list = if rng.chance(50) { "allow" } else { "deny" };
        text.push_str(&format!("[[network.{list}]]\n{body}"));
    }
    ports.sort_unstable();
    ports.dedup();
    (text, anchors, ports)
}

/// 10,000-rule network policies, loaded into the kernel's prefix trie and decided there, agree
/// with the reference evaluator on destinations inside and around the rules and outside them,
/// IPv4, IPv6 and IPv4-mapped, TCP connects and UDP sends: the decision (EPERM or not) and the
/// rule in the audit record. The agent runs in a network namespace of its own with no
/// interface up, so nothing is sent anywhere: the cgroup hooks decide before the route lookup,
/// which then fails (`ENETUNREACH`) for every allowed destination.
#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario: generate, run confined, compare destination by destination"
)]
fn large_network_policies_decide_in_the_kernel_as_the_reference_evaluator() {
    use std::{
        collections::BTreeMap,
        net::{IpAddr, SocketAddr},
    };

    use oxd::{
        evaluate::{reached_address, Reason, Request},
        policy::Policy,
    };

    const DESTINATIONS: usize = 600;
    let seed = std::env::var("OXD_NET_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6f78_645f_6e65_7473_u64);
    eprintln!("large network policies: seed {seed} (OXD_NET_SEED)");
    let mut rng = NetRng(seed);
    let scratch = Scratch::new("host-large-net");
    let probe = probe_bin();
    let mut mismatches = Vec::new();
    let mut decided: BTreeMap<(&'static str, bool), usize> = BTreeMap::new();
    for index in 0..2 {
        let (text, anchors, ports) = large_net_policy(&mut rng, index);
        let path = scratch.policy(&text);
        let policy = Policy::parse(&path, &text)
            .unwrap_or_else(|e| panic!("generated policy {index} is invalid: {e}"));
        assert_eq!(
            policy.network.as_ref().map(|n| n.rules.len()),
            Some(LARGE_NET_RULES)
        );
        let mut actions = Vec::new();
        let mut cases = Vec::new();
        for _ in 0..DESTINATIONS {
            let anchor = anchors[usize::try_from(rng.below(anchors.len() as u64)).expect("i")];
            let bits: u32 = if anchor.is_ipv4() { 32 } else { 128 };
            let mut ip = match rng.below(10) {
                0..=4 => anchor,
                // Around the anchor: inside some of its networks, outside the narrower ones.
                5..=8 => {
                    let keep = u32::try_from(rng.below(u64::from(bits) + 1)).expect("bits");
                    net_randomize_below(&mut rng, anchor, keep)
                }
                _ => net_randomize_below(&mut rng, anchor, 0),
            };
            if ip.is_unspecified() || ip.to_canonical().is_unspecified() {
                ip = anchor;
            }
            let udp = rng.chance(50);
            if let IpAddr::V4(v4) = ip {
                if rng.chance(25) {
                    ip = IpAddr::V6(v4.to_ipv6_mapped());
                }
            }
            let port = if rng.chance(80) {
                ports[usize::try_from(rng.below(ports.len() as u64)).expect("i")]
            } else {
                1 + u16::try_from(rng.below(u64::from(u16::MAX))).expect("port")
            };
            let addr = SocketAddr::new(ip, port);
            actions.push(format!("{}:{addr}", if udp { "udp" } else { "connect" }));
            cases.push((addr, udp));
        }
        let log = scratch.path(&format!("large-net-{index}.jsonl"));
        let mut args: Vec<&str> = vec!["unshare", "-n", probe.to_str().expect("utf-8")];
        args.extend(actions.iter().map(String::as_str));
        let output = oxd_run(&path, &log, &args);
        assert!(
            output.status.success(),
            "oxd run failed under large policy {index}: {:?}",
            output.status
        );
        let results = probe_results(&output);
        assert_eq!(
            results.len(),
            cases.len(),
            "the probe reported every action"
        );
        let records = audit_records(&log);
        let lost: Vec<_> = records.iter().filter(|r| r["op"] == "lost").collect();
        assert!(
            lost.is_empty(),
            "records were lost under policy {index}: {lost:?}"
        );
        for ((addr, udp), result) in cases.iter().zip(&results) {
            let decision = policy.evaluate(&Request::Connect {
                addr: *addr,
                udp: *udp,
                send: *udp,
            });
            let label = decision.rule_label(&policy);
            *decided
                .entry((
                    decision.action.as_str(),
                    matches!(decision.reason, Reason::Rule(_)),
                ))
                .or_default() += 1;
            let denied = result["ok"] == false && result["errno"] == libc::EPERM;
            let action = result["action"].as_str().unwrap_or_default();
            if denied != (decision.action == oxd::policy::Action::Deny) {
                mismatches.push(format!(
                    "policy {index}: {action}: the evaluator says {} ({label}), the probe \
                     reported {result}",
                    decision.action.as_str()
                ));
                continue;
            }
            // A UDP send to an IPv4-mapped address goes through the IPv4 path and is recorded
            // with the IPv4 address.
            let reached = reached_address(*addr);
            let target = match reached {
                SocketAddr::V6(v6) if *udp => v6.ip().to_ipv4_mapped().map_or_else(
                    || reached.to_string(),
                    |v4| SocketAddr::new(IpAddr::V4(v4), v6.port()).to_string(),
                ),
                _ => reached.to_string(),
            };
            let op = if *udp { "sendmsg" } else { "connect" };
            let found = records_for(&records, op, &target);
            if found.is_empty()
                || found.iter().any(|r| {
                    r["rule"] != label.as_str() || r["decision"] != decision.action.as_str()
                })
            {
                mismatches.push(format!(
                    "policy {index}: {action}: the evaluator says {} ({label}), records {found:?}",
                    decision.action.as_str()
                ));
            }
        }
    }
    eprintln!("large network policies: decisions (action, by a rule): {decided:?}");
    assert!(
        mismatches.is_empty(),
        "{} of {} destinations disagree:\n{}",
        mismatches.len(),
        2 * DESTINATIONS,
        mismatches.join("\n")
    );
    // The corpus exercises what it claims: rules allow and deny, and the default decides some.
    for key in [("allow", true), ("deny", true)] {
        assert!(
            decided.get(&key).copied().unwrap_or(0) >= 20,
            "too few destinations decided {key:?}: {decided:?}"
        );
    }
    assert!(
        decided.get(&("allow", false)).copied().unwrap_or(0)
            + decided.get(&("deny", false)).copied().unwrap_or(0)
            >= 20,
        "too few destinations left to the default: {decided:?}"
    );
}

/// Two 10,000-rule network policies fit the kernel's prefix trie at once (a replacement needs
/// two slots); clearing a slot removes its prefixes and no other slot's, and the slot can be
/// filled again.
#[test]
fn network_prefixes_of_two_large_policies_fit_and_clearing_a_slot_removes_its_own() {
    use oxd::{
        compile::compile,
        enforcer::{Enforcer, LoadOptions},
        policy::Policy,
    };

    let mut rng = NetRng(0x0063_6c65_6172);
    let (first, _, _) = large_net_policy(&mut rng, 0);
    let (second, _, _) = large_net_policy(&mut rng, 1);
    let parse = |text: &str| Policy::parse(Path::new("large.toml"), text).expect("a valid policy");
    let (first, second) = (parse(&first), parse(&second));
    let mut enforcer = Enforcer::open(&LoadOptions {
        lsm: false,
        pin_dir: None,
        ..LoadOptions::default()
    })
    .expect("load the programs and maps");
    let no_files = |_: &Path| None;
    let a = compile(&first, 3, 1, &no_files).expect("compiles");
    let b = compile(&second, 4, 2, &no_files).expect("compiles");
    assert!(
        a.net().len() > 5_000 && b.net().len() > 5_000,
        "mostly distinct networks"
    );
    enforcer.write_slot(&a).expect("write slot 3");
    enforcer.write_slot(&b).expect("write slot 4");
    assert_eq!(enforcer.net_prefix_count(3).expect("count"), a.net().len());
    assert_eq!(enforcer.net_prefix_count(4).expect("count"), b.net().len());
    enforcer.clear_slot(3).expect("clear slot 3");
    assert_eq!(enforcer.net_prefix_count(3).expect("count"), 0);
    assert_eq!(enforcer.net_prefix_count(4).expect("count"), b.net().len());
    // The slot is reused by the next generation.
    let again = compile(&second, 3, 3, &no_files).expect("compiles");
    enforcer.write_slot(&again).expect("write slot 3 again");
    assert_eq!(
        enforcer.net_prefix_count(3).expect("count"),
        again.net().len()
    );
    enforcer.clear_slot(4).expect("clear slot 4");
    enforcer.clear_slot(3).expect("clear slot 3");
    assert_eq!(enforcer.net_prefix_count(3).expect("count"), 0);
    assert_eq!(enforcer.net_prefix_count(4).expect("count"), 0);
}

/// The Python client's unit tests (`clients/python/tests`, standard library only), against a
/// stand-in daemon; the guests run it against a real one (`tests/python.rs`).
#[test]
fn python_client_unit_tests_pass() {
    let tests = repo().join("clients/python/tests");
    let out = Command::new("python3")
        .args(["-m", "unittest", "discover", "-v", "-s"])
        .arg(&tests)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 (needed for the Python client): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the Python client's tests failed:\n{text}"
    );
    assert!(
        text.contains("Ran ") && text.contains("\nOK"),
        "no Python test ran:\n{text}"
    );
}
