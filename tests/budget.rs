//! Budgets (`budget = { count, per }` on a network rule): counted in the kernel, per confined
//! target, atomically across CPUs and processes; the N+1th action of a window is denied with a
//! record naming the budget; the window refills; a replacement that keeps the rule keeps the
//! count. Network rules need no BPF-LSM: these run on the host and in the guests alike.

use std::net::TcpListener;

use super::common::*;

fn budget_policy(name: &str, rules: &str) -> String {
    format!("name = \"{name}\"\n[network]\ndefault = \"deny\"\n{rules}")
}

fn tcp_rule(port: u16, budget: &str) -> String {
    format!(
        "[[network.allow]]\ncidr = \"127.0.0.1\"\nports = {port}\nprotocol = \"tcp\"\n\
         budget = {budget}\n"
    )
}

fn budget_denials(records: &[serde_json::Value], target: &str) -> usize {
    records
        .iter()
        .filter(|r| r["target"] == target && r["decision"] == "deny")
        .inspect(|r| {
            assert!(
                r["reason"].as_str().is_some_and(|s| s.contains("budget")),
                "a denial by a spent budget must say so: {r}"
            );
        })
        .count()
}

#[test]
fn budget_denies_beyond_its_count_and_refills_after_the_window() {
    let scratch = Scratch::new("budget-window");
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen on loopback");
    let port = listener.local_addr().expect("local addr").port();
    let policy = scratch.policy(&budget_policy(
        "budget-window",
        &tcp_rule(port, r#"{ count = 3, per = "2s" }"#),
    ));
    let log = scratch.path("audit.jsonl");
    let probe = probe_bin();
    let probe = probe.to_str().expect("utf-8 path");
    let first = format!("times:5:connect:127.0.0.1:{port}");
    let second = format!("times:4:connect:127.0.0.1:{port}");
    // The first window starts with the first connect; the second round starts 2.5 s later.
    let script = format!("{probe} {first} && sleep 2.5 && {probe} {second}");
    let output = oxd_run(&policy, &log, &["/bin/sh", "-c", &script]);
    assert!(output.status.success(), "oxd run failed: {output:?}");
    let results = probe_results(&output);
    assert_eq!(
        counts(result_of(&results, &first)),
        (3, 2, 0),
        "3 per window: the 4th and 5th connects are denied"
    );
    assert_eq!(
        counts(result_of(&results, &second)),
        (3, 1, 0),
        "the window refilled: 3 more, then denied again"
    );
    let records = audit_records(&log);
    let target = format!("127.0.0.1:{port}");
    let connects: Vec<_> = records_for(&records, "connect", &target);
    assert_eq!(connects.len(), 9, "{connects:#?}");
    for r in &connects {
        assert_eq!(r["rule"], "network.allow[0]", "{r}");
        assert!(
            r["rule_text"]
                .as_str()
                .is_some_and(|t| t.ends_with("budget 3 per 2s")),
            "the record names the budget: {r}"
        );
    }
    assert_eq!(budget_denials(&records, &target), 3, "{connects:#?}");
    drop(listener);
}

/// Processes racing for the last units of a budget on every CPU: exactly `count` actions pass,
/// however the sends interleave.
#[test]
fn budget_is_counted_atomically_across_processes() {
    let scratch = Scratch::new("budget-race");
    let port = {
        let free = std::net::UdpSocket::bind("127.0.0.1:0").expect("find a free port");
        free.local_addr().expect("local addr").port()
    };
    let policy = scratch.policy(&budget_policy(
        "budget-race",
        &format!(
            "[[network.allow]]\ncidr = \"127.0.0.1\"\nports = {port}\nprotocol = \"udp\"\n\
             budget = {{ count = 100, per = \"1h\" }}\n"
        ),
    ));
    let log = scratch.path("audit.jsonl");
    let probe = probe_bin();
    let action = format!("times:60:udp:127.0.0.1:{port}");
    let script = format!(
        "for i in 1 2 3 4; do {} {action} & done; wait",
        probe.display()
    );
    let output = oxd_run(&policy, &log, &["/bin/sh", "-c", &script]);
    assert!(output.status.success(), "oxd run failed: {output:?}");
    let results = probe_results(&output);
    assert_eq!(results.len(), 4, "{results:#?}");
    let (mut allowed, mut eperm) = (0, 0);
    for r in &results {
        let (a, e, other) = counts(r);
        assert_eq!(
            other, 0,
            "every send is allowed or refused by the budget: {r}"
        );
        allowed += a;
        eperm += e;
    }
    assert_eq!(
        (allowed, eperm),
        (100, 140),
        "exactly the budget's count passes: {results:#?}"
    );
    let records = audit_records(&log);
    let target = format!("127.0.0.1:{port}");
    assert_eq!(budget_denials(&records, &target), 140);
    assert_eq!(
        records_for(&records, "sendmsg", &target)
            .iter()
            .filter(|r| r["decision"] == "allow")
            .count(),
        100,
        "every allowed send is recorded"
    );
}

/// Under the daemon: each target has its own count; a replacement policy that keeps the rule
/// and its budget keeps the count, and one that changes the budget starts afresh.
#[test]
fn budget_survives_a_replacement_that_keeps_its_rule_and_is_per_target() {
    let scratch = Scratch::new("budget-replace");
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen on loopback");
    let port = listener.local_addr().expect("local addr").port();
    let other_port = if port == u16::MAX { port - 1 } else { port + 1 };
    let file = scratch.path("budget.toml");
    let write = |rules: &str| {
        std::fs::write(&file, budget_policy("budget-replace", rules)).expect("write the policy");
    };
    write(&tcp_rule(port, r#"{ count = 3, per = "1h" }"#));
    let bpffs = BpffsMount::new(&scratch, "bpffs");
    let mut daemon = Daemon::new(&scratch, "budget", &[]);
    daemon.bpffs = bpffs.path.join("oxd");
    daemon.start();
    let cgroup = TestCgroup::new("budget-replace");
    let neighbour = TestCgroup::new("budget-replace-2");
    daemon.confine_cgroup(&cgroup, &file);
    daemon.confine_cgroup(&neighbour, &file);
    let times = |n: u32| format!("times:{n}:connect:127.0.0.1:{port}");

    let results = probe_in(&cgroup, &[&times(2)]);
    assert_eq!(counts(&results[0]), (2, 0, 0));
    // `oxd ctl list` says what is left, from the kernel's counter.
    let entry = daemon.target(&cgroup).expect("listed");
    let budget = &entry["budgets"][0];
    assert_eq!(
        (
            &budget["rule"],
            &budget["count"],
            &budget["per"],
            &budget["used"]
        ),
        (
            &serde_json::json!("network.allow[0]"),
            &serde_json::json!(3),
            &serde_json::json!("1h"),
            &serde_json::json!(2)
        ),
        "{entry}"
    );
    let refills = budget["refills_in_ms"]
        .as_u64()
        .expect("a window is running");
    assert!(refills > 0 && refills <= 3_600_000, "{entry}");
    // The neighbour's budget is its own.
    let results = probe_in(&neighbour, &[&times(4)]);
    assert_eq!(counts(&results[0]), (3, 1, 0), "a target's own budget");
    // `oxd explain` on each target says what is left, and whether that stops a connect now.
    let connect = format!("127.0.0.1:{port}");
    let (code, stdout) = daemon.explain(&cgroup, &["--connect", &connect]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains("now:     budget of network.allow[0]: 2 of 3 per 1h used, refills in"),
        "{stdout}"
    );
    let (code, stdout) = daemon.explain(&neighbour, &["--connect", &connect]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("3 of 3 per 1h used") && stdout.contains(": spent"),
        "{stdout}"
    );

    // Same rule and budget, one more rule: the count goes on (1 left).
    let mut rules = tcp_rule(port, r#"{ count = 3, per = "1h" }"#);
    rules.push_str(&format!(
        "[[network.allow]]\ncidr = \"127.0.0.1\"\nports = {other_port}\n"
    ));
    write(&rules);
    let replace = |daemon: &Daemon| {
        daemon.ctl(&["replace", "--policy", file.to_str().expect("utf-8 path")]);
    };
    replace(&daemon);
    let results = probe_in(&cgroup, &[&times(2)]);
    assert_eq!(
        counts(&results[0]),
        (1, 1, 0),
        "an unchanged rule keeps its budget's count across the replacement"
    );

    // A changed budget is a new budget: it starts afresh.
    write(&tcp_rule(port, r#"{ count = 5, per = "1h" }"#));
    replace(&daemon);
    let results = probe_in(&cgroup, &[&times(6)]);
    assert_eq!(
        counts(&results[0]),
        (5, 1, 0),
        "a changed budget starts afresh"
    );

    // Released, its counters go; confined again, it starts afresh.
    daemon.ctl(&["release", "--cgroup", cgroup.path_str()]);
    daemon.confine_cgroup(&cgroup, &file);
    let results = probe_in(&cgroup, &[&times(6)]);
    assert_eq!(
        counts(&results[0]),
        (5, 1, 0),
        "a new confinement starts afresh"
    );
    assert_audit_log_verifies(&daemon.audit_log);
    drop(listener);
}
