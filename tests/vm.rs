//! Integration tests that need a kernel with BPF-LSM. `cargo xtask test` runs them inside QEMU
//! guests booting Debian's 6.1 and 6.12 kernels (`cargo xtask vm`); on a host without BPF-LSM
//! they fail, by design, rather than being skipped.

#[path = "attack/mod.rs"]
mod attack;
#[path = "budget.rs"]
mod budget;
mod common;
#[path = "connections.rs"]
mod connections;
#[path = "daemon.rs"]
mod daemon;
#[path = "differential.rs"]
mod differential;
#[path = "grant.rs"]
mod grant;
#[path = "limits.rs"]
mod limits;
#[path = "python.rs"]
mod python;
#[path = "semantics.rs"]
mod semantics;
#[path = "switch.rs"]
mod switch;

use std::{fs, io::BufReader, net::TcpListener, process::Command};

use common::*;

fn require_bpf_lsm() {
    let lsm = fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
    assert!(
        lsm.split(',').any(|l| l.trim() == "bpf"),
        "these tests need BPF-LSM (active LSMs: {lsm:?}); run them with `cargo xtask test`, which \
         boots a kernel that has it"
    );
}

/// An exec policy that allows the probe and `/usr/bin/true` only.
fn exec_policy(extra: &str) -> String {
    format!(
        r#"
name = "vm-exec"
[exec]
default = "deny"
allow = ["{probe}", "/usr/bin/true", {LIBRARIES}]
{extra}
"#,
        probe = probe_bin().display()
    )
}

#[test]
fn exec_of_allowed_binary_succeeds_and_of_other_binary_fails_with_eperm() {
    require_bpf_lsm();
    let scratch = Scratch::new("exec");
    let policy = scratch.policy(&exec_policy(""));
    let log = scratch.path("audit.jsonl");
    let probe = probe_bin();
    let probe = probe.to_str().expect("utf-8 path");

    let output = oxd_run(
        &policy,
        &log,
        &[
            probe,
            "exec:/usr/bin/true",
            "exec:/usr/bin/id",
            "exec:/bin/true",
        ],
    );
    assert!(
        output.status.success(),
        "oxd run failed: {:?}",
        output.status
    );
    let results = probe_results(&output);
    assert_ok(&results, "exec:/usr/bin/true");
    assert_eq!(result_of(&results, "exec:/usr/bin/true")["status"], 0);
    assert_eperm(&results, "exec:/usr/bin/id");
    // /bin is a symlink to /usr/bin on this system: the rule applies to the file executed.
    assert_ok(&results, "exec:/bin/true");

    let records = audit_records(&log);
    assert_record(&records, "exec", probe, "allow", "exec.allow[0]");
    assert_record(&records, "exec", "/usr/bin/id", "deny", "default");
    let true_records = records_for(&records, "exec", "/usr/bin/true");
    assert_eq!(
        true_records.len(),
        2,
        "both execs of true are recorded under the resolved path: {records:#?}"
    );
    for r in true_records {
        assert_eq!(r["decision"], "allow", "{r}");
        assert_eq!(r["rule"], "exec.allow[1]", "{r}");
        assert_eq!(r["rule_text"], "/usr/bin/true", "{r}");
    }
}

/// The decision records of a log (not `lost` nor `counts`), and its one `counts` record.
fn decisions_and_counts(
    records: &[serde_json::Value],
) -> (Vec<&serde_json::Value>, &serde_json::Value) {
    let decisions = records
        .iter()
        .filter(|r| r["op"] != "lost" && r["op"] != "counts" && r["op"] != "tally")
        .collect();
    let counts: Vec<&serde_json::Value> = records.iter().filter(|r| r["op"] == "counts").collect();
    assert_eq!(
        counts.len(),
        1,
        "one counts record at the end of a run: {records:#?}"
    );
    assert_eq!(
        records.last().map(|r| &r["op"]),
        Some(&serde_json::json!("counts")),
        "the counts record closes the run"
    );
    (decisions, counts[0])
}

/// The event path from the kernel: `--record denied` is decided in the kernel (allowed
/// decisions are not submitted: the kernel's own count says so), every submitted decision is a
/// record in the log, and records carry their whole path, short or 3 KB long.
#[test]
#[expect(
    clippy::too_many_lines,
    reason = "two oxd runs of one guest test (each costs ~18 s), checked in one place"
)]
fn events_are_recorded_as_the_slot_says_whole_and_all_of_them() {
    require_bpf_lsm();
    let scratch = Scratch::new("events");
    let short = scratch.path("s");
    fs::write(&short, "x").expect("write a file");
    let allowed = scratch.path("allowed");
    fs::write(&allowed, "x").expect("write a file");
    // Longer than a rule key (so denied, fail closed) and than 3000 bytes, recorded whole.
    let mut long = scratch.path("l");
    while long.as_os_str().len() < 3200 {
        long.push("d".repeat(200));
    }
    fs::create_dir_all(&long).expect("create a deep directory");
    let long = long.join("f");
    fs::write(&long, "x").expect("write a file");
    let long = long.to_str().expect("utf-8 path").to_owned();
    let short = short.to_str().expect("utf-8 path").to_owned();
    let allowed = allowed.to_str().expect("utf-8 path").to_owned();
    assert!(long.len() > 3000, "{}", long.len());
    let policy = scratch.policy(&format!(
        r#"
name = "vm-events"
[file]
default = {{ read = "allow", write = "allow" }}
deny = [{{ path = "{short}", access = ["read"] }}]
"#
    ));
    let probe = probe_bin();
    let probe = probe.to_str().expect("utf-8 path");
    let (read_short, read_long, read_allowed) = (
        format!("read:{short}"),
        format!("read:{long}"),
        format!("read:{allowed}"),
    );
    let actions = [
        probe,
        read_allowed.as_str(),
        read_short.as_str(),
        read_long.as_str(),
        read_allowed.as_str(),
    ];

    let command = |log: &std::path::Path, extra: &[&str]| {
        let mut cmd = Command::new(oxd_bin());
        cmd.arg("run")
            .arg("--policy")
            .arg(&policy)
            .arg("--audit-log")
            .arg(log)
            .args(extra)
            .arg("--")
            .args(actions)
            .stdin(std::process::Stdio::null());
        cmd
    };
    // A ring size that is not a power of two is refused before anything runs.
    let never = scratch.path("never.jsonl");
    let refused = command(&never, &["--ring-size", "12288"])
        .output()
        .expect("spawn oxd run");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("power of two"), "{stderr}");
    assert!(!never.exists(), "nothing ran");

    let run = |log: &std::path::Path, extra: &[&str]| {
        let output = command(log, extra).output().expect("spawn oxd run");
        eprintln!(
            "oxd run {extra:?}: {}\n--- stderr\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success(),
            "oxd run failed: {:?}",
            output.status
        );
        let results = probe_results(&output);
        assert_ok(&results, &read_allowed);
        assert_eperm(&results, &read_short);
        assert_eperm(&results, &read_long);
        audit_records(log)
    };

    // Only denials, in a 64 KiB ring.
    let denied_log = scratch.path("denied.jsonl");
    let records = run(&denied_log, &["--record", "denied", "--ring-size", "65536"]);
    let (decisions, counts) = decisions_and_counts(&records);
    assert!(
        decisions.iter().all(|r| r["decision"] == "deny"),
        "only denials reach the log: {decisions:#?}"
    );
    assert_eq!(
        counts["submitted"],
        decisions.len() as u64,
        "the kernel submitted only the denials (the allowed opens never reached the ring), and \
         each one is a record: {records:#?}"
    );
    assert_eq!(counts["lost_total"], 0, "{counts}");
    assert!(!records.iter().any(|r| r["op"] == "lost"), "{records:#?}");
    let short_records = records_for(&records, "open", &short);
    assert_eq!(short_records.len(), 1, "{records:#?}");
    assert_eq!(short_records[0]["reason"], "rule", "{}", short_records[0]);
    let long_records = records_for(&records, "open", &long);
    assert_eq!(
        long_records.len(),
        1,
        "the {}-byte path arrives whole: {records:#?}",
        long.len()
    );
    assert_eq!(
        long_records[0]["reason"], "path too long for the kernel's rule keys (fail closed)",
        "{}",
        long_records[0]
    );
    assert!(
        records_for(&records, "open", &allowed).is_empty(),
        "{records:#?}"
    );

    // Everything, in the default ring: the same actions make allowed decisions, all recorded.
    let all_log = scratch.path("all.jsonl");
    let records = run(&all_log, &[]);
    let (decisions, counts) = decisions_and_counts(&records);
    assert_eq!(
        counts["submitted"],
        decisions.len() as u64,
        "every submitted decision is a record: {counts}"
    );
    assert_eq!(counts["lost_total"], 0, "{counts}");
    let allowed_records = records_for(&records, "open", &allowed);
    assert_eq!(allowed_records.len(), 2, "{records:#?}");
    assert!(allowed_records.iter().all(|r| r["decision"] == "allow"));
    assert!(
        decisions
            .iter()
            .filter(|r| r["decision"] == "allow")
            .count()
            > 2,
        "the probe's own opens (libraries) are allowed decisions too"
    );
    assert_eq!(
        records_for(&records, "open", &long).len(),
        1,
        "{records:#?}"
    );
    assert_eq!(
        records_for(&records, "open", &short).len(),
        1,
        "{records:#?}"
    );
    let allowed_in_all = decisions
        .iter()
        .filter(|r| r["decision"] == "allow")
        .count() as u64;

    // Denials one by one, allowed decisions counted in the kernel: the same actions, so as
    // many allowed decisions as recorded above, now in `tally` records by rule.
    let counted_log = scratch.path("counted.jsonl");
    let records = run(&counted_log, &["--record", "counted"]);
    let (decisions, counts) = decisions_and_counts(&records);
    assert!(
        decisions.iter().all(|r| r["decision"] == "deny"),
        "only denials are records of their own: {decisions:#?}"
    );
    assert_eq!(counts["submitted"], decisions.len() as u64, "{counts}");
    assert_eq!(records_for(&records, "open", &short).len(), 1);
    assert_eq!(records_for(&records, "open", &long).len(), 1);
    let tallies: Vec<_> = records.iter().filter(|r| r["op"] == "tally").collect();
    let counted_total: u64 = tallies.iter().filter_map(|t| t["count"].as_u64()).sum();
    assert!(
        tallies
            .iter()
            .all(|t| t["decision"] == "allow" && t["why"] == "counted" && t["of"] != ""),
        "{tallies:#?}"
    );
    assert!(
        tallies
            .iter()
            .any(|t| t["of"] == "open" && t["rule"] == "default"),
        "the allowed opens, under the file default: {tallies:#?}"
    );
    assert_eq!(counts["tallied"], counted_total, "{counts}");
    assert_eq!(
        counted_total, allowed_in_all,
        "every allowed decision recorded in the `all` run is counted here"
    );

    assert_audit_log_verifies(&denied_log);
    assert_audit_log_verifies(&all_log);
    assert_audit_log_verifies(&counted_log);
}

#[test]
fn exec_deny_rule_beats_allowed_subtree() {
    require_bpf_lsm();
    let scratch = Scratch::new("exec-deny");
    let policy = scratch.policy(&format!(
        r#"
[exec]
default = "deny"
allow = ["{probe}", "/usr/bin/**", {LIBRARIES}]
deny = ["/usr/bin/id"]
"#,
        probe = probe_bin().display()
    ));
    let log = scratch.path("audit.jsonl");
    let probe = probe_bin();
    let probe = probe.to_str().expect("utf-8 path");
    let output = oxd_run(
        &policy,
        &log,
        &[probe, "exec:/usr/bin/id", "exec:/usr/bin/true"],
    );
    assert!(
        output.status.success(),
        "oxd run failed: {:?}",
        output.status
    );
    let results = probe_results(&output);
    assert_eperm(&results, "exec:/usr/bin/id");
    assert_ok(&results, "exec:/usr/bin/true");
    let records = audit_records(&log);
    assert_record(&records, "exec", "/usr/bin/id", "deny", "exec.deny[0]");
    assert_record(&records, "exec", "/usr/bin/true", "allow", "exec.allow[1]");
}

#[test]
fn exec_outside_the_agent_cgroup_is_not_affected_while_oxd_runs() {
    require_bpf_lsm();
    let scratch = Scratch::new("outside");
    let policy = scratch.policy(&exec_policy(""));
    let log = scratch.path("audit.jsonl");
    let go = scratch.path("go");
    let go_arg = format!("wait:{}", go.display());
    let probe = probe_bin();
    let probe = probe.to_str().expect("utf-8 path");

    let mut child = oxd_run_spawn(&policy, &log, &[probe, "exec:/usr/bin/id", &go_arg]);
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    // The confined exec has been decided (and denied): the programs are attached right now.
    let confined = next_probe_line(&mut stdout);
    assert_eq!(confined["action"], "exec:/usr/bin/id");
    assert_eq!(
        confined["ok"], false,
        "confined exec of id must be denied: {confined}"
    );
    assert_eq!(confined["errno"], EPERM, "{confined}");

    let outside = Command::new("/usr/bin/id")
        .output()
        .expect("exec id outside the cgroup");
    fs::write(&go, b"").expect("release the probe");
    let status = child.wait().expect("wait for oxd run");
    assert!(
        outside.status.success(),
        "id outside the agent's cgroup must run: {outside:?}"
    );
    assert!(status.success(), "oxd run failed: {status:?}");

    let records = audit_records(&log);
    let id_records = records_for(&records, "exec", "/usr/bin/id");
    assert_eq!(
        id_records.len(),
        1,
        "only the confined exec is decided and recorded: {records:#?}"
    );
    assert_eq!(id_records[0]["decision"], "deny");
}

#[test]
fn connect_to_allowed_address_succeeds_and_to_others_fails_with_eperm() {
    require_bpf_lsm();
    let scratch = Scratch::new("connect");
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen on loopback");
    let port = listener.local_addr().expect("local addr").port();
    let listener6 = TcpListener::bind("[::1]:0").expect("listen on ::1");
    let port6 = listener6.local_addr().expect("local addr").port();
    let policy = scratch.policy(&format!(
        r#"
[exec]
default = "deny"
allow = ["{probe}", {LIBRARIES}]

[network]
default = "deny"
[[network.allow]]
cidr = "127.0.0.1/32"
ports = {port}
protocol = "tcp"
"#,
        probe = probe_bin().display()
    ));
    let log = scratch.path("audit.jsonl");
    let probe = probe_bin();
    let probe = probe.to_str().expect("utf-8 path");
    let allowed = format!("connect:127.0.0.1:{port}");
    let other_port = format!("connect:127.0.0.1:{}", port.wrapping_add(1).max(1));
    let other_addr = format!("connect:127.0.0.2:{port}");
    let v6 = format!("connect:[::1]:{port6}");
    let mapped = format!("connect:[::ffff:127.0.0.1]:{port}");

    let output = oxd_run(
        &policy,
        &log,
        &[probe, &allowed, &other_port, &other_addr, &v6, &mapped],
    );
    assert!(
        output.status.success(),
        "oxd run failed: {:?}",
        output.status
    );
    let results = probe_results(&output);
    assert_ok(&results, &allowed);
    assert_eperm(&results, &other_port);
    assert_eperm(&results, &other_addr);
    assert_eperm(&results, &v6);
    // An IPv4-mapped IPv6 destination is judged as its IPv4 address.
    assert_ok(&results, &mapped);

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
        &format!("127.0.0.1:{}", port.wrapping_add(1).max(1)),
        "deny",
        "default",
    );
    assert_record(
        &records,
        "connect",
        &format!("127.0.0.2:{port}"),
        "deny",
        "default",
    );
    assert_record(
        &records,
        "connect",
        &format!("[::1]:{port6}"),
        "deny",
        "default",
    );
    assert_record(
        &records,
        "connect",
        &format!("[::ffff:127.0.0.1]:{port}"),
        "allow",
        "network.allow[0]",
    );

    // Outside the agent's cgroup the same connects are not decided.
    let outside = std::net::TcpStream::connect(("127.0.0.2", port));
    assert!(
        !matches!(&outside, Err(e) if e.raw_os_error() == Some(libc::EPERM)),
        "connect outside the agent's cgroup must not be denied: {outside:?}"
    );
}

#[test]
fn example_policy_confines_a_real_shell() {
    require_bpf_lsm();
    let scratch = Scratch::new("example");
    let log = scratch.path("audit.jsonl");
    let policy = repo().join("policies/example.toml");
    // The example allows /usr/bin/** but denies wget and su: the shell runs, ls runs, su is
    // refused with EPERM (the shell reports "Permission denied"/"Operation not permitted").
    let output = oxd_run(
        &policy,
        &log,
        &[
            "/usr/bin/bash",
            "-c",
            "ls / >/dev/null && echo ls-ok; /usr/bin/su -c true; echo su-exit=$?",
        ],
    );
    assert!(
        output.status.success(),
        "oxd run failed: {:?}",
        output.status
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("ls-ok"), "{stdout}");
    assert!(
        stdout.contains("su-exit=126"),
        "su must be denied (exit 126 from bash): {stdout}"
    );
    let records = audit_records(&log);
    assert_record(&records, "exec", "/usr/bin/bash", "allow", "exec.allow[0]");
    assert_record(&records, "exec", "/usr/bin/su", "deny", "exec.deny[1]");
    assert!(
        records.iter().all(|r| r["policy"] == "example"),
        "{records:#?}"
    );
}

#[test]
fn coding_agent_example_policy_lets_git_work_in_the_workspace_and_guards_secrets() {
    require_bpf_lsm();
    let scratch = Scratch::new("coding-agent");
    let log = scratch.path("audit.jsonl");
    let policy = repo().join("policies/coding-agent.toml");
    fs::create_dir_all("/workspace").expect("create /workspace in the guest");
    fs::create_dir_all("/root/.ssh").expect("create ~/.ssh in the guest");
    fs::write("/root/.ssh/id_test", "secret").expect("write a fake key");
    let script = "set -u
cd /workspace && rm -rf repo && git init -q repo && cd repo
echo hello > README && git add README
git -c user.email=agent@example.invalid -c user.name=agent commit -qm first && echo commit-ok
cat /root/.ssh/id_test; echo key-exit=$?
echo x > /etc/oxd-agent-write; echo etc-exit=$?
su -c true; echo su-exit=$?
python3 -c 'print(\"python-ok\")'
";
    let output = oxd_run(&policy, &log, &["/usr/bin/bash", "-c", script]);
    assert!(
        output.status.success(),
        "oxd run failed: {:?}",
        output.status
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("commit-ok"),
        "git works in the workspace: {stdout}"
    );
    assert!(
        stdout.contains("key-exit=1"),
        "the key is unreadable: {stdout}"
    );
    assert!(
        !stdout.contains("secret"),
        "the key's content leaked: {stdout}"
    );
    assert!(
        stdout.contains("etc-exit=1"),
        "/etc is not writable: {stdout}"
    );
    assert!(stdout.contains("su-exit=126"), "su is denied: {stdout}");
    assert!(stdout.contains("python-ok"), "python runs: {stdout}");
    let records = audit_records(&log);
    let key = records_for(&records, "open", "/root/.ssh/id_test");
    assert!(
        !key.is_empty()
            && key
                .iter()
                .all(|r| r["decision"] == "deny" && r["rule"] == "file.deny[0]"),
        "{key:#?}"
    );
    assert_record(&records, "exec", "/usr/bin/su", "deny", "exec.deny[1]");
}

#[test]
fn doctor_finds_everything_in_a_kernel_with_bpf_lsm() {
    require_bpf_lsm();
    let output = Command::new(oxd_bin())
        .arg("doctor")
        .output()
        .expect("run oxd doctor");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "nothing may be missing: {stdout}"
    );
    assert!(!stdout.contains("MISSING"), "{stdout}");
    for name in [
        "BPF-LSM",
        "kernel BTF",
        "cgroup v2",
        "cgroup hooks",
        "lockdown",
        "bpffs",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("ok") && l.contains(name)),
            "{name} ok: {stdout}"
        );
    }
}

/// Loads every kernel program and prints how many instructions the verifier processed for
/// each, one line per program: `verifier: PROGRAM KERNEL VERIFIED_INSNS XLATED_INSNS`
/// (`cargo xtask verifier-stats` collects these lines from every guest kernel). The counts
/// depend on the kernel and grow with features, so only their presence is checked here.
#[test]
fn verifier_instruction_counts() {
    require_bpf_lsm();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .expect("read the kernel release")
        .trim()
        .to_string();
    let stats = oxd::progstats::verifier_stats().expect("load every program");
    let names: Vec<&str> = stats.iter().map(|s| s.name).collect();
    let expected = oxd::enforcer::LSM_PROGRAMS
        .iter()
        .chain(&oxd::enforcer::IPC_LSM_PROGRAMS)
        .map(|(name, _)| *name)
        .chain(oxd::enforcer::SOCK_ADDR_PROGRAMS)
        .chain(oxd::enforcer::SOCK_PROGRAMS);
    for name in expected {
        assert!(
            names.contains(&name),
            "no verifier statistics for {name}: {stats:#?}"
        );
    }
    println!("verifier: program kernel verified_insns xlated_insns");
    for s in &stats {
        let show = |n: Option<u32>| n.map_or_else(|| "-".to_string(), |n| n.to_string());
        println!(
            "verifier: {} {kernel} {} {}",
            s.name,
            show(s.verified_insns),
            show(s.xlated_insns)
        );
    }
    for s in &stats {
        assert!(
            s.verified_insns.is_some_and(|n| n > 0),
            "{} loaded but the kernel reports no verified instruction count: {s:?}",
            s.name
        );
    }
}
