//! VM tests of `oxd daemon` and `oxd ctl`: policies replaced under load without mixing
//! generations, enforcement that outlives a killed daemon and is adopted by the next one, loss
//! reporting when the ring buffer overflows, confinement by pid, and what SIGTERM leaves behind.
//!
//! Every daemon gets its own socket, state directory and audit log in the test's scratch
//! directory and its own bpffs directory; its guard releases what it confined, kills it and
//! removes its pins even when an assertion fails.

use std::{
    collections::{btree_map::Entry, BTreeMap},
    fs,
    io::BufReader,
    net::TcpListener,
    os::unix::process::ExitStatusExt as _,
    path::Path,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::{common::*, require_bpf_lsm};

/// The SHA-256 of a policy's text, as records and `oxd ctl list` name it.
fn sha256_hex(text: &str) -> String {
    format!("{:x}", Sha256::digest(text.as_bytes()))
}

/// An exec policy named `name` that denies `/usr/bin/id` and `/usr/bin/whoami` and allows
/// everything else.
fn deny_id_policy(name: &str) -> String {
    format!(
        r#"name = "{name}"
[exec]
default = "allow"
deny = ["/usr/bin/id", "/usr/bin/whoami"]
"#
    )
}

/// Checks a `list --json` entry: the cgroup's path, the policy's name and hash, a generation.
fn assert_target_entry(entry: &Value, cgroup: &TestCgroup, policy: &str, sha256: &str) -> u64 {
    assert_eq!(entry["cgroup"], cgroup.path_str(), "cgroup path in {entry}");
    assert_eq!(entry["policy"], policy, "policy name in {entry}");
    assert_eq!(entry["sha256"], sha256, "policy hash in {entry}");
    entry["generation"]
        .as_u64()
        .unwrap_or_else(|| panic!("no numeric generation in {entry}"))
}

/// The probe lines written so far to `path` (complete lines only).
fn probe_lines(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad probe line {l:?}: {e}")))
        .collect()
}

/// A loopback TCP listener that accepts (and closes) connections until dropped, so that a
/// connecting agent never waits on a full backlog.
struct Acceptor {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Acceptor {
    fn new() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("listen on loopback");
        let port = listener.local_addr().expect("local address").port();
        listener
            .set_nonblocking(true)
            .expect("make the listener non-blocking");
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if listener.accept().is_err() {
                        thread::sleep(Duration::from_millis(5));
                    }
                }
            })
        };
        Self {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One of the two policies the replace test alternates between: both are named
/// [`FLIP_NAME`], allow every exec and connect by default, and each allows by rule what the
/// other denies by rule.
struct Flip {
    exec_allow: &'static str,
    exec_deny: &'static str,
    port_allow: u16,
    port_deny: u16,
    text: String,
    sha256: String,
}

const FLIP_NAME: &str = "daemon-flip";

impl Flip {
    fn new(
        exec_allow: &'static str,
        exec_deny: &'static str,
        port_allow: u16,
        port_deny: u16,
    ) -> Self {
        let text = format!(
            r#"name = "{FLIP_NAME}"
[exec]
default = "allow"
allow = ["{exec_allow}"]
deny = ["{exec_deny}"]

[network]
default = "allow"
[[network.allow]]
cidr = "127.0.0.1"
ports = {port_allow}
protocol = "tcp"
[[network.deny]]
cidr = "127.0.0.1"
ports = {port_deny}
protocol = "tcp"
"#
        );
        let sha256 = sha256_hex(&text);
        Self {
            exec_allow,
            exec_deny,
            port_allow,
            port_deny,
            text,
            sha256,
        }
    }

    /// The decision and rule this policy gives for `op` on `target`.
    fn decide(&self, op: &str, target: &str) -> (&'static str, &'static str) {
        match op {
            "exec" if target == self.exec_allow => ("allow", "exec.allow[0]"),
            "exec" if target == self.exec_deny => ("deny", "exec.deny[0]"),
            "connect" if target == format!("127.0.0.1:{}", self.port_allow) => {
                ("allow", "network.allow[0]")
            }
            "connect" if target == format!("127.0.0.1:{}", self.port_deny) => {
                ("deny", "network.deny[0]")
            }
            "exec" | "connect" => ("allow", "default"),
            _ => panic!("the agent made no {op} that the policies decide (target {target})"),
        }
    }

    /// Whether this policy lets the probe action `action` happen.
    fn allows(&self, action: &str) -> bool {
        let (op, target) = op_target(action);
        self.decide(op, &target).0 == "allow"
    }
}

/// The audit record `op` and `target` of a probe action (`exec:PATH` or `connect:ADDR`).
fn op_target(action: &str) -> (&'static str, String) {
    if let Some(path) = action.strip_prefix("exec:") {
        ("exec", path.to_owned())
    } else if let Some(addr) = action.strip_prefix("connect:") {
        ("connect", addr.to_owned())
    } else {
        panic!("no record target for {action}")
    }
}

/// Whether a probe result is an action that happened (`Some(true)`), one denied with EPERM
/// (`Some(false)`), or anything else (`None`).
fn outcome(result: &Value) -> Option<bool> {
    if result["ok"] == true {
        let exec = result["action"]
            .as_str()
            .is_some_and(|a| a.starts_with("exec:"));
        (!exec || result["status"] == 0).then_some(true)
    } else {
        (result["errno"] == EPERM).then_some(false)
    }
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario, step by step: load, replace under load, then check every record"
)]
fn daemon_policy_replaced_40_times_under_load_never_mixes_generations() {
    // Each replace is two `oxd ctl` runs next to a busy agent on one emulated CPU (about 2 s
    // in the guests): 40 swaps keep the test near a minute and a half, with the agent's
    // actions interleaved with every swap.
    const REPLACES: usize = 40;
    require_bpf_lsm();
    let scratch = Scratch::new("daemon-replace");
    let cgroup = TestCgroup::new("replace");
    let (p1, p2) = (Acceptor::new(), Acceptor::new());
    let a = Flip::new("/usr/bin/id", "/usr/bin/whoami", p1.port, p2.port);
    let b = Flip::new("/usr/bin/whoami", "/usr/bin/id", p2.port, p1.port);
    let a_file = scratch.path("a.toml");
    let b_file = scratch.path("b.toml");
    fs::write(&a_file, &a.text).expect("write policy A");
    fs::write(&b_file, &b.text).expect("write policy B");
    let mut daemon = Daemon::new(&scratch, "replace", &[]);
    daemon.start();
    daemon.confine_cgroup(&cgroup, &a_file);
    let first = daemon
        .target(&cgroup)
        .expect("`oxd ctl list` shows the cgroup just confined");
    // generation -> policy hash, as `oxd ctl list` reported them after the confine and after
    // every replace.
    let mut listed = BTreeMap::new();
    let mut generation = assert_target_entry(&first, &cgroup, FLIP_NAME, &a.sha256);
    listed.insert(generation, a.sha256.clone());

    let actions = [
        "exec:/usr/bin/id".to_owned(),
        "exec:/usr/bin/whoami".to_owned(),
        format!("connect:127.0.0.1:{}", p1.port),
        format!("connect:127.0.0.1:{}", p2.port),
    ];
    let stop = scratch.path("stop");
    let loop_output = scratch.path("agent.jsonl");
    let mut agent = KillOnDrop(
        cgroup
            .command(probe_bin())
            .arg(format!("repeat:{}", stop.display()))
            .args(&actions)
            .stdout(fs::File::create(&loop_output).expect("create the agent's output"))
            .spawn()
            .expect("spawn the agent loop"),
    );
    wait_for("the agent's first round", WAIT, || {
        (probe_lines(&loop_output).len() >= actions.len()).then_some(())
    });

    let started = Instant::now();
    for i in 1..=REPLACES {
        let (policy, file) = if i % 2 == 1 {
            (&b, &b_file)
        } else {
            (&a, &a_file)
        };
        daemon.ctl(&[
            "replace",
            "--policy",
            file.to_str().expect("utf-8 policy path"),
        ]);
        let entry = daemon
            .target(&cgroup)
            .unwrap_or_else(|| panic!("the cgroup is no longer listed after replace {i}"));
        let next = assert_target_entry(&entry, &cgroup, FLIP_NAME, &policy.sha256);
        assert!(
            next > generation,
            "replace {i}: the generation went from {generation} to {next}"
        );
        listed.insert(next, policy.sha256.clone());
        generation = next;
    }
    let rounds_during = probe_lines(&loop_output).len() / actions.len();
    eprintln!(
        "{REPLACES} replaces in {:?}; the agent did about {rounds_during} rounds",
        started.elapsed()
    );
    let status = daemon.status();
    assert_eq!(status["targets"], 1, "{status}");
    assert_eq!(
        status["generation"].as_u64(),
        Some(generation),
        "the newest generation is the last replace's: {status}"
    );

    fs::write(&stop, b"").expect("stop the agent loop");
    let exit = wait_for("the agent loop to stop", WAIT, || {
        agent.0.try_wait().expect("wait for the agent")
    });
    assert!(exit.success(), "the agent loop failed: {exit}");
    let mut results = probe_lines(&loop_output);
    // The last replace installed A: one more round outside the loop sees exactly A.
    let action_refs: Vec<&str> = actions.iter().map(String::as_str).collect();
    let last_round = probe_in(&cgroup, &action_refs);
    for action in &actions {
        if a.allows(action) {
            assert_ok(&last_round, action);
        } else {
            assert_eperm(&last_round, action);
        }
    }
    results.extend(last_round);

    // Every outcome the agent saw is one that A or B gives (they disagree on every action, so
    // that is: it happened, or it failed with EPERM), and B's were seen.
    for r in &results {
        assert!(
            outcome(r).is_some(),
            "neither policy gives this outcome: {r}"
        );
    }
    let b_outcomes = results
        .iter()
        .filter(|r| {
            let action = r["action"].as_str().expect("probe action");
            outcome(r) == Some(b.allows(action))
        })
        .count();
    assert!(
        b_outcomes > 0,
        "the agent never saw policy B in force in {} results",
        results.len()
    );

    // Wait until the daemon has recorded every decision (or reported some lost).
    let cgroup_id = cgroup.id();
    let count_of = |records: &[Value], action: &str| {
        let (op, target) = op_target(action);
        records
            .iter()
            .filter(|r| r["cgroup_id"] == cgroup_id && r["op"] == op && r["target"] == target)
            .count()
    };
    let expected_count = |action: &str| results.iter().filter(|r| r["action"] == action).count();
    let records = wait_for("every decision of the agent to be recorded", WAIT, || {
        let records = audit_records_so_far(&daemon.audit_log);
        let lost = records.iter().any(|r| r["op"] == "lost");
        let complete = actions
            .iter()
            .all(|action| count_of(&records, action) >= expected_count(action));
        (lost || complete).then_some(records)
    });
    let lost: Vec<&Value> = records.iter().filter(|r| r["op"] == "lost").collect();
    for r in &lost {
        assert!(
            r["count"].as_u64().is_some_and(|c| c > 0),
            "a lost record must count what it lost: {r}"
        );
    }

    // Every decision record of the cgroup: a normal reason, a generation, and the decision of
    // the policy its hash names, which is the policy `oxd ctl list` showed for that generation.
    let ours: Vec<&Value> = records
        .iter()
        .filter(|r| r["cgroup_id"] == cgroup_id && r.get("decision").is_some())
        .collect();
    let mut recorded: BTreeMap<u64, String> = BTreeMap::new();
    let mut previous = 0;
    for r in &ours {
        let reason = r["reason"].as_str().unwrap_or_default();
        assert!(
            reason == "rule" || reason == "default",
            "a decision under replacement failed closed or has no reason: {r}"
        );
        assert_eq!(r["policy"], FLIP_NAME, "{r}");
        assert_eq!(r["enforced"], true, "{r}");
        let generation = r["generation"]
            .as_u64()
            .unwrap_or_else(|| panic!("record without a numeric generation: {r}"));
        let sha = r["policy_sha256"].as_str().unwrap_or_default();
        let policy = if sha == a.sha256 {
            &a
        } else if sha == b.sha256 {
            &b
        } else {
            panic!(
                "record under a policy that is neither A ({}) nor B ({}): {r}",
                a.sha256, b.sha256
            )
        };
        let op = r["op"].as_str().unwrap_or_default();
        let target = r["target"].as_str().unwrap_or_default();
        let (decision, rule) = policy.decide(op, target);
        let which = if std::ptr::eq(policy, &raw const a) {
            "A"
        } else {
            "B"
        };
        assert_eq!(
            r["decision"], decision,
            "policy {which} decides otherwise: {r}"
        );
        assert_eq!(
            r["rule"], rule,
            "policy {which} decides by another rule: {r}"
        );
        match recorded.entry(generation) {
            Entry::Vacant(e) => {
                e.insert(sha.to_owned());
            }
            Entry::Occupied(e) => assert_eq!(
                e.get(),
                sha,
                "generation {generation} is recorded under two policies: {r}"
            ),
        }
        assert_eq!(
            listed.get(&generation).map(String::as_str),
            Some(sha),
            "generation {generation} of {r} is not what `oxd ctl list` reported: {listed:?}"
        );
        assert!(
            generation >= previous,
            "the agent's decisions went back from generation {previous}: {r}"
        );
        previous = generation;
    }
    assert!(
        recorded.len() >= 2,
        "the agent's decisions were all made under one generation: {recorded:?}"
    );
    eprintln!(
        "{} decision records under {} generations, {} lost records",
        ours.len(),
        recorded.len(),
        lost.len()
    );

    // With nothing lost, each action's records are, in order, what the agent saw.
    if lost.is_empty() {
        for action in &actions {
            let (op, target) = op_target(action);
            let seen: Vec<&Value> = results.iter().filter(|r| r["action"] == **action).collect();
            let decided: Vec<&&Value> = ours
                .iter()
                .filter(|r| r["op"] == op && r["target"] == target)
                .collect();
            assert_eq!(
                decided.len(),
                seen.len(),
                "one record per {action} the agent made"
            );
            for (i, (s, d)) in seen.iter().zip(&decided).enumerate() {
                assert_eq!(
                    outcome(s) == Some(true),
                    d["decision"] == "allow",
                    "{action} #{i}: the agent saw {s} but the record says {d}"
                );
            }
            let newest = decided.last().expect("at least the last round's record");
            assert_eq!(
                newest["generation"].as_u64(),
                Some(generation),
                "the last round runs under the last replace: {newest}"
            );
        }
    }
    assert_audit_log_verifies(&daemon.audit_log);
}

#[test]
fn daemon_sigkill_leaves_targets_confined_and_restart_adopts() {
    require_bpf_lsm();
    let scratch = Scratch::new("daemon-kill");
    let cgroup = TestCgroup::new("kill");
    let text = deny_id_policy("daemon-kill");
    let sha = sha256_hex(&text);
    let policy = scratch.policy(&text);
    let mut daemon = Daemon::new(&scratch, "kill", &[]);
    daemon.start();
    daemon.confine_cgroup(&cgroup, &policy);

    // Confined, and so is a cgroup the agent makes below its own.
    let results = probe_in(
        &cgroup,
        &["exec:/usr/bin/id", "subcgroup:nested", "exec:/bin/id"],
    );
    assert_eperm(&results, "exec:/usr/bin/id");
    assert_ok(&results, "subcgroup:nested");
    assert_eperm(&results, "exec:/bin/id");
    let cgroup_id = cgroup.id();
    wait_for("the record of the denied id", WAIT, || {
        audit_records_so_far(&daemon.audit_log)
            .iter()
            .any(|r| {
                r["op"] == "exec"
                    && r["target"] == "/usr/bin/id"
                    && r["cgroup_id"] == cgroup_id
                    && r["decision"] == "deny"
            })
            .then_some(())
    });

    daemon.signal(libc::SIGKILL);
    let status = daemon.wait_exit();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    let results = probe_in(&cgroup, &["exec:/usr/bin/id"]);
    assert_eperm(&results, "exec:/usr/bin/id");
    let outside = Command::new("/usr/bin/id")
        .output()
        .expect("exec id outside the cgroup");
    assert!(
        outside.status.success(),
        "id outside the confined cgroup must run with no daemon: {outside:?}"
    );

    let before = fs::read_to_string(&daemon.audit_log).expect("read the audit log");
    let before = &before[..before.rfind('\n').map_or(0, |end| end + 1)];
    let last_seq = audit_records_so_far(&daemon.audit_log)
        .last()
        .and_then(|r| r["seq"].as_u64())
        .expect("the first daemon wrote numbered records");

    daemon.start();
    let entry = daemon
        .target(&cgroup)
        .expect("the restarted daemon lists the cgroup it adopted");
    assert_target_entry(&entry, &cgroup, "daemon-kill", &sha);
    let results = probe_in(&cgroup, &["exec:/usr/bin/whoami"]);
    assert_eperm(&results, "exec:/usr/bin/whoami");
    let records = wait_for("the record of the denied whoami", WAIT, || {
        let records = audit_records_so_far(&daemon.audit_log);
        records
            .iter()
            .any(|r| r["op"] == "exec" && r["target"] == "/usr/bin/whoami")
            .then_some(records)
    });
    let whoami = records_for(&records, "exec", "/usr/bin/whoami");
    assert_eq!(whoami.len(), 1, "{whoami:#?}");
    let r = whoami[0];
    assert_eq!(r["decision"], "deny", "{r}");
    assert_eq!(r["rule"], "exec.deny[1]", "{r}");
    assert_eq!(r["cgroup_id"], cgroup_id, "{r}");
    assert_eq!(r["policy"], "daemon-kill", "{r}");
    assert_eq!(r["policy_sha256"], sha.as_str(), "{r}");
    assert!(r["generation"].is_u64(), "{r}");
    assert!(
        r["seq"].as_u64().is_some_and(|seq| seq > last_seq),
        "the restarted daemon continues the numbering after {last_seq}: {r}"
    );
    let after = fs::read_to_string(&daemon.audit_log).expect("read the audit log");
    assert!(
        after.starts_with(before),
        "the restarted daemon must append to the audit log, not rewrite it"
    );
    assert_audit_log_verifies(&daemon.audit_log);

    daemon.ctl(&["release", "--cgroup", cgroup.path_str()]);
    let results = probe_in(&cgroup, &["exec:/usr/bin/id"]);
    assert_ok(&results, "exec:/usr/bin/id");
    assert!(
        daemon.target(&cgroup).is_none(),
        "a released cgroup is not listed"
    );
}

#[test]
fn daemon_ring_buffer_flood_reports_loss() {
    // A 64 KiB ring holds a few hundred decisions (a 128-byte header and the path each).
    const RING: &str = "65536";
    const OPENS: u64 = 4_000;
    require_bpf_lsm();
    let scratch = Scratch::new("daemon-flood");
    let cgroup = TestCgroup::new("flood");
    let file = scratch.path("flooded");
    fs::write(&file, "x").expect("write the flooded file");
    let file = fs::canonicalize(&file).expect("canonical path");
    let file = file.to_str().expect("utf-8 path").to_owned();
    let policy = scratch.policy("name = \"daemon-flood\"\n[file]\ndefault = \"allow\"\n");
    let mut daemon = Daemon::new(&scratch, "flood", &["--ring-size", RING]);
    daemon.start();
    daemon.confine_cgroup(&cgroup, &policy);
    let cgroup_id = cgroup.id();
    let opens_of = |records: &[Value]| {
        records
            .iter()
            .filter(|r| r["op"] == "open" && r["target"] == file.as_str())
            .filter(|r| r["cgroup_id"] == cgroup_id)
            .count() as u64
    };

    // The daemon records opens while it runs...
    let read = format!("read:{file}");
    assert_ok(&probe_in(&cgroup, &[&read]), &read);
    wait_for("the record of one open", WAIT, || {
        (opens_of(&audit_records_so_far(&daemon.audit_log)) >= 1).then_some(())
    });

    // ...but not while it is stopped: the ring buffer fills up.
    daemon.signal(libc::SIGSTOP);
    let flood = format!("flood:{OPENS}:{file}");
    let results = probe_in(&cgroup, &[&flood]);
    daemon.signal(libc::SIGCONT);
    assert_ok(&results, &flood);

    let records = wait_for("an `op: lost` record", WAIT, || {
        let records = audit_records_so_far(&daemon.audit_log);
        records.iter().any(|r| r["op"] == "lost").then_some(records)
    });
    let lost: Vec<&Value> = records.iter().filter(|r| r["op"] == "lost").collect();
    for r in &lost {
        assert!(
            r["count"].as_u64().is_some_and(|c| c > 0),
            "a lost record counts at least one decision: {r}"
        );
    }
    // Every open of the flood is either recorded or counted as lost.
    let (recorded, lost) = wait_for(
        "every open of the flood to be recorded or counted lost",
        WAIT,
        || {
            let records = audit_records_so_far(&daemon.audit_log);
            let lost: u64 = records
                .iter()
                .filter(|r| r["op"] == "lost")
                .filter_map(|r| r["count"].as_u64())
                .sum();
            let recorded = opens_of(&records);
            // The flood's opens and the one before it.
            (recorded + lost > OPENS).then_some((recorded, lost))
        },
    );
    eprintln!("{recorded} opens recorded, {lost} decisions lost");
    let status = daemon.status();
    assert!(
        status["ringbuf_lost"].as_u64().is_some_and(|n| n > 0),
        "status reports the loss: {status}"
    );
    assert_audit_log_verifies(&daemon.audit_log);
}

#[test]
fn daemon_confine_by_pid_and_release() {
    require_bpf_lsm();
    let scratch = Scratch::new("daemon-pid");

    // A client with no daemon behind its socket fails and names the socket.
    let missing = scratch.path("missing.sock");
    let output = output_within(
        Command::new(oxd_bin())
            .arg("ctl")
            .arg("--socket")
            .arg(&missing)
            .arg("status"),
        WAIT,
    )
    .expect("oxd ctl with no daemon must not hang");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "oxd ctl with no daemon must fail: {output:?}"
    );
    assert!(
        stderr.contains(&missing.display().to_string()),
        "the error names the socket {}: {stderr}",
        missing.display()
    );

    let cgroup = TestCgroup::new("pid");
    let text = deny_id_policy("daemon-pid");
    let sha = sha256_hex(&text);
    let policy = scratch.policy(&text);
    let mut daemon = Daemon::new(&scratch, "pid", &[]);
    daemon.start();

    // The agent is already running when it is confined.
    let go1 = scratch.path("go1");
    let go2 = scratch.path("go2");
    let mut agent = KillOnDrop(
        cgroup
            .command(probe_bin())
            .arg(format!("wait:{}", go1.display()))
            .arg("exec:/usr/bin/id")
            .arg(format!("wait:{}", go2.display()))
            .arg("exec:/bin/id")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the agent"),
    );
    let pid = agent.0.id().to_string();
    daemon.ctl(&[
        "confine",
        "--pid",
        &pid,
        "--policy",
        policy.to_str().expect("utf-8 policy path"),
    ]);
    // The socket option also goes after the subcommand.
    let output = output_within(
        Command::new(oxd_bin())
            .args(["ctl", "list", "--json", "--socket"])
            .arg(&daemon.socket),
        WAIT,
    )
    .expect("oxd ctl list must not hang");
    assert!(
        output.status.success(),
        "oxd ctl list --json --socket PATH: {output:?}"
    );
    let list = parse_list(&String::from_utf8_lossy(&output.stdout));
    let entry = find_target(&list, &cgroup)
        .unwrap_or_else(|| panic!("confining pid {pid} confines its cgroup: {list:#?}"));
    assert_target_entry(&entry, &cgroup, "daemon-pid", &sha);
    assert_eq!(daemon.status()["targets"], 1);

    let mut stdout = BufReader::new(agent.0.stdout.take().expect("piped stdout"));
    fs::write(&go1, b"").expect("let the agent go on");
    assert_eq!(next_probe_line(&mut stdout)["ok"], true);
    let denied = next_probe_line(&mut stdout);
    assert_eq!(denied["action"], "exec:/usr/bin/id");
    assert_eq!(
        denied["ok"], false,
        "the confined agent's id is denied: {denied}"
    );
    assert_eq!(denied["errno"], EPERM, "{denied}");

    daemon.ctl(&["release", "--pid", &pid]);
    assert!(
        daemon.target(&cgroup).is_none(),
        "a released cgroup is not listed"
    );
    assert_eq!(daemon.status()["targets"], 0);
    fs::write(&go2, b"").expect("let the agent go on");
    assert_eq!(next_probe_line(&mut stdout)["ok"], true);
    let allowed = next_probe_line(&mut stdout);
    assert_eq!(allowed["action"], "exec:/bin/id");
    assert_eq!(
        allowed["ok"], true,
        "after release the agent's id runs: {allowed}"
    );
    let exit = wait_for("the agent to finish", WAIT, || {
        agent.0.try_wait().expect("wait for the agent")
    });
    assert!(exit.success(), "{exit}");
}

#[test]
fn daemon_sigterm_keep_and_release() {
    require_bpf_lsm();
    let scratch = Scratch::new("daemon-term");
    let policy = scratch.policy(&deny_id_policy("daemon-term"));

    // --on-exit keep: the daemon goes, the confinement stays pinned.
    {
        let cgroup = TestCgroup::new("term-keep");
        let mut daemon = Daemon::new(&scratch, "keep", &["--on-exit", "keep"]);
        daemon.start();
        daemon.confine_cgroup(&cgroup, &policy);
        assert_eperm(
            &probe_in(&cgroup, &["exec:/usr/bin/id"]),
            "exec:/usr/bin/id",
        );
        daemon.signal(libc::SIGTERM);
        let status = daemon.wait_exit();
        assert_eq!(status.code(), Some(0), "SIGTERM is a clean exit: {status}");
        assert!(
            !pinned_files(&daemon.bpffs).is_empty(),
            "--on-exit keep leaves pins in {}",
            daemon.bpffs.display()
        );
        assert_eperm(
            &probe_in(&cgroup, &["exec:/usr/bin/id"]),
            "exec:/usr/bin/id",
        );
    }

    // --on-exit release: the daemon releases its targets and removes its pins.
    let cgroup = TestCgroup::new("term-release");
    let mut daemon = Daemon::new(&scratch, "release", &["--on-exit", "release"]);
    daemon.start();
    daemon.confine_cgroup(&cgroup, &policy);
    assert_eperm(
        &probe_in(&cgroup, &["exec:/usr/bin/id"]),
        "exec:/usr/bin/id",
    );
    daemon.signal(libc::SIGTERM);
    let status = daemon.wait_exit();
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean exit: {status}");
    let left = pinned_files(&daemon.bpffs);
    assert!(
        left.is_empty(),
        "--on-exit release removes every pin: {left:?}"
    );
    assert_ok(
        &probe_in(&cgroup, &["exec:/usr/bin/id"]),
        "exec:/usr/bin/id",
    );
}

/// A policy named `name` that governs file opens and allows every one; `salt` changes its text
/// (so its hash) but not what it decides.
fn allow_files_policy(name: &str, salt: &str) -> String {
    format!("# {salt}\nname = \"{name}\"\n[file]\ndefault = \"allow\"\n")
}

/// The records of opens of `file` by `cgroup_id`.
fn opens_of<'a>(records: &'a [Value], file: &str, cgroup_id: u64) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["op"] == "open" && r["target"] == file && r["cgroup_id"] == cgroup_id)
        .collect()
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario: flood, requests, replace, SIGTERM, then check every record"
)]
fn daemon_answers_control_requests_during_a_flood() {
    require_bpf_lsm();
    let scratch = Scratch::new("daemon-busy");
    let cgroup = TestCgroup::new("busy");
    let file = scratch.path("flooded");
    fs::write(&file, "x").expect("write the flooded file");
    let file = fs::canonicalize(&file).expect("canonical path");
    let file = file.to_str().expect("utf-8 path").to_owned();
    let (a, b) = (
        allow_files_policy("daemon-busy", "a"),
        allow_files_policy("daemon-busy", "b"),
    );
    let (a_sha, b_sha) = (sha256_hex(&a), sha256_hex(&b));
    let a_file = scratch.path("a.toml");
    let b_file = scratch.path("b.toml");
    fs::write(&a_file, &a).expect("write policy A");
    fs::write(&b_file, &b).expect("write policy B");
    let mut daemon = Daemon::new(&scratch, "busy", &[]);
    daemon.start();
    daemon.confine_cgroup(&cgroup, &a_file);
    let entry = daemon.target(&cgroup).expect("confined");
    let a_generation = assert_target_entry(&entry, &cgroup, "daemon-busy", &a_sha);
    let cgroup_id = cgroup.id();

    // Two agent processes open the file as fast as they can until told to stop.
    let stop = scratch.path("stop");
    let flooder = || {
        KillOnDrop(
            cgroup
                .command(probe_bin())
                .arg(format!("repeat:{}", stop.display()))
                .arg(format!("flood:1000:{file}"))
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn a flooding agent"),
        )
    };
    let mut agents = [flooder(), flooder()];
    wait_for("the flood's first records", WAIT, || {
        (!opens_of(&audit_records_so_far(&daemon.audit_log), &file, cgroup_id).is_empty())
            .then_some(())
    });

    // Requests are answered while the flood goes on, a replacement included.
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let started = Instant::now();
        let status = daemon.status();
        slowest = slowest.max(started.elapsed());
        assert_eq!(status["targets"], 1, "{status}");
    }
    let started = Instant::now();
    daemon.ctl(&[
        "replace",
        "--policy",
        b_file.to_str().expect("utf-8 policy path"),
    ]);
    slowest = slowest.max(started.elapsed());
    let entry = daemon.target(&cgroup).expect("still confined");
    let b_generation = assert_target_entry(&entry, &cgroup, "daemon-busy", &b_sha);
    let status = daemon.status();
    assert!(
        status["records"].as_u64().is_some_and(|n| n > 0),
        "status counts the records written: {status}"
    );
    eprintln!("slowest `oxd ctl` answer during the flood (process start included): {slowest:?}");
    // The daemon's own latency: requests written straight to its socket.
    let mut round_trips: Vec<Duration> = (0..20)
        .map(|_| {
            let (response, elapsed) = daemon.status_round_trip();
            assert_eq!(response["ok"], true, "{response}");
            elapsed
        })
        .collect();
    round_trips.sort();
    eprintln!(
        "status over the socket during the flood: median {:?}, slowest {:?} (of 20)",
        round_trips[10], round_trips[19]
    );
    slowest = slowest.max(round_trips[19]);
    assert!(
        slowest < Duration::from_secs(20),
        "a control request waited {slowest:?} behind the flood"
    );

    // The flood goes on under B, then stops.
    wait_for("records under the replacement", WAIT, || {
        opens_of(&audit_records_so_far(&daemon.audit_log), &file, cgroup_id)
            .iter()
            .any(|r| r["generation"] == b_generation)
            .then_some(())
    });
    // SIGTERM while both still flood: the daemon stops draining after what the ring held
    // when the signal came, and exits cleanly; the agents stay confined (keep is the default).
    let started = Instant::now();
    daemon.signal(libc::SIGTERM);
    let status = daemon.wait_exit();
    eprintln!(
        "exit after SIGTERM during the flood: {:?}",
        started.elapsed()
    );
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean exit: {status}");
    fs::write(&stop, b"").expect("stop the agents");
    for agent in &mut agents {
        let exit = wait_for("the agents to stop", WAIT, || {
            agent.0.try_wait().expect("wait for an agent")
        });
        assert!(exit.success(), "a flooding agent failed: {exit}");
    }

    // Each record names the policy of the generation that decided, before and after the
    // replacement (which retired A while its decisions were still being written).
    let records = audit_records_so_far(&daemon.audit_log);
    let opens = opens_of(&records, &file, cgroup_id);
    for r in &opens {
        let generation = r["generation"].as_u64().expect("numeric generation");
        let expected = if generation == a_generation {
            &a_sha
        } else if generation == b_generation {
            &b_sha
        } else {
            panic!("a record under neither A's nor B's generation: {r}");
        };
        assert_eq!(r["policy_sha256"], expected.as_str(), "{r}");
        assert_eq!(r["policy"], "daemon-busy", "{r}");
        assert_eq!(r["decision"], "allow", "{r}");
    }
    let lost: u64 = records
        .iter()
        .filter(|r| r["op"] == "lost")
        .filter_map(|r| r["count"].as_u64())
        .sum();
    eprintln!("{} opens recorded, {lost} decisions lost", opens.len());
    assert_audit_log_verifies(&daemon.audit_log);
}

/// With `--on-exit release`, SIGTERM releases every target and then writes every decision
/// left in the ring (with `keep`, the default, the final drain is bounded in time and the
/// pinned ring keeps the rest for the next daemon).
#[test]
fn daemon_sigterm_writes_every_decision_left_in_the_ring() {
    // Far fewer than the ring buffer holds: nothing is lost.
    const OPENS: usize = 300;
    require_bpf_lsm();
    let scratch = Scratch::new("daemon-drain");
    let cgroup = TestCgroup::new("drain");
    let file = scratch.path("opened");
    fs::write(&file, "x").expect("write the opened file");
    let file = fs::canonicalize(&file).expect("canonical path");
    let file = file.to_str().expect("utf-8 path").to_owned();
    let policy = scratch.policy(&allow_files_policy("daemon-drain", "drain"));
    let mut daemon = Daemon::new(&scratch, "drain", &["--on-exit", "release"]);
    daemon.start();
    daemon.confine_cgroup(&cgroup, &policy);

    // The decisions wait in the ring buffer while the daemon is stopped; SIGTERM arrives
    // before it runs again.
    daemon.signal(libc::SIGSTOP);
    let flood = format!("flood:{OPENS}:{file}");
    let results = probe_in(&cgroup, &[&flood]);
    daemon.signal(libc::SIGTERM);
    daemon.signal(libc::SIGCONT);
    assert_ok(&results, &flood);
    let status = daemon.wait_exit();
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean exit: {status}");

    let records = audit_records_so_far(&daemon.audit_log);
    let opens = opens_of(&records, &file, cgroup.id()).len();
    assert!(
        opens >= OPENS,
        "every open made before SIGTERM is recorded: {opens} of {OPENS}"
    );
    assert!(
        !records.iter().any(|r| r["op"] == "lost"),
        "nothing was lost"
    );
    assert_audit_log_verifies(&daemon.audit_log);
}
