//! `[process] max_processes`: the agent's cgroup's `pids.max`, under `oxd run` and the daemon.

use std::fs;

use serde_json::Value;

use crate::{common::*, require_bpf_lsm};

/// `EAGAIN`: what a fork beyond a pids limit fails with.
const EAGAIN: i64 = 11;

fn limited_policy(name: &str, max: Option<u32>) -> String {
    let limit = max.map_or_else(String::new, |n| format!("[process]\nmax_processes = {n}\n"));
    format!("name = \"{name}\"\n[file]\ndefault = \"allow\"\n{limit}")
}

/// The probe's `forks:N` result.
fn forks_result(results: &[Value], n: u32) -> &Value {
    result_of(results, &format!("forks:{n}"))
}

fn limit_records(records: &[Value]) -> Vec<&Value> {
    records.iter().filter(|r| r["op"] == "limit").collect()
}

#[test]
fn oxd_run_limits_the_agents_processes_and_a_slot_frees_on_exit() {
    require_bpf_lsm();
    let scratch = Scratch::new("limit-run");
    let policy = scratch.policy(&limited_policy("limit-run", Some(4)));
    let log = scratch.path("audit.jsonl");
    let out = oxd_run(
        &policy,
        &log,
        &[probe_bin().to_str().expect("utf-8"), "forks:10"],
    );
    assert!(out.status.success(), "{out:?}");
    let results = probe_results(&out);
    let r = forks_result(&results, 10);
    // The probe is one of the four tasks.
    assert_eq!(r["forked"], 3, "{r}");
    assert_eq!(r["errno"], EAGAIN, "{r}");
    assert_eq!(
        r["after_exit_ok"], true,
        "a slot frees when a child exits: {r}"
    );
    let records = audit_records(&log);
    let limits = limit_records(&records);
    assert_eq!(limits.len(), 1, "{limits:#?}");
    let l = limits[0];
    assert_eq!(l["count"], 1, "{l}");
    assert_eq!(l["max"], 4, "{l}");
    assert_eq!(l["of"], "fork", "{l}");
    assert_eq!(l["decision"], "deny", "{l}");
    assert_eq!(l["rule"], "process.max_processes", "{l}");
    assert_eq!(l["policy"], "limit-run", "{l}");
    assert_audit_log_verifies(&log);
}

#[test]
fn the_daemon_sets_replaces_and_restores_a_targets_process_limit() {
    require_bpf_lsm();
    let scratch = Scratch::new("limit-daemon");
    // `pids.max` exists where the parent enables the pids controller for its children.
    let root = oxd::host::cgroup2_mount().expect("a cgroup2 mount");
    fs::write(root.join("cgroup.subtree_control"), "+pids")
        .expect("enable the pids controller below the root cgroup");
    let cgroup = TestCgroup::new("limit");
    let pids_max = || {
        fs::read_to_string(cgroup.path().join("pids.max"))
            .expect("read pids.max")
            .trim()
            .to_owned()
    };
    assert_eq!(pids_max(), "max");
    let policy = scratch.path("limit.toml");
    fs::write(&policy, limited_policy("limit-daemon", Some(3))).expect("write the policy");
    let mut daemon = Daemon::new(&scratch, "limit", &[]);
    daemon.start();
    daemon.confine_cgroup(&cgroup, &policy);
    assert_eq!(pids_max(), "3");
    let r = probe_in(&cgroup, &["forks:10"]);
    let r = forks_result(&r, 10);
    assert_eq!(
        (&r["forked"], &r["errno"]),
        (&Value::from(2), &Value::from(EAGAIN)),
        "{r}"
    );

    // A replacement changes the limit for every target under the policy.
    fs::write(&policy, limited_policy("limit-daemon", Some(5))).expect("rewrite the policy");
    daemon.ctl(&["replace", "--policy", policy.to_str().expect("utf-8")]);
    assert_eq!(pids_max(), "5");
    let r = probe_in(&cgroup, &["forks:10"]);
    let r = forks_result(&r, 10);
    assert_eq!(
        (&r["forked"], &r["errno"]),
        (&Value::from(4), &Value::from(EAGAIN)),
        "{r}"
    );
    let records = wait_for("both refusals in the log", WAIT, || {
        let records = audit_records_so_far(&daemon.audit_log);
        let counted: u64 = limit_records(&records)
            .iter()
            .filter_map(|r| r["count"].as_u64())
            .sum();
        (counted >= 2).then_some(records)
    });
    let limits = limit_records(&records);
    let counted: u64 = limits.iter().filter_map(|r| r["count"].as_u64()).sum();
    assert_eq!(counted, 2, "{limits:#?}");
    for l in &limits {
        assert_eq!(l["cgroup_id"], cgroup.id(), "{l}");
        assert_eq!(l["policy"], "limit-daemon", "{l}");
    }

    // Without a limit in the policy, the cgroup's own value comes back; so on release.
    fs::write(&policy, limited_policy("limit-daemon", None)).expect("rewrite the policy");
    daemon.ctl(&["replace", "--policy", policy.to_str().expect("utf-8")]);
    assert_eq!(pids_max(), "max");
    fs::write(&policy, limited_policy("limit-daemon", Some(7))).expect("rewrite the policy");
    daemon.ctl(&["replace", "--policy", policy.to_str().expect("utf-8")]);
    assert_eq!(pids_max(), "7");
    daemon.ctl(&["release", "--cgroup", cgroup.path_str()]);
    assert_eq!(pids_max(), "max");
    assert_audit_log_verifies(&daemon.audit_log);
}

/// `[exec] budget`: at most `count` execs the rules allow per window, counted in the kernel for
/// the whole agent (the command `oxd run` starts included); the next is denied with a record
/// naming `exec.budget`, and the window refills. Run as an ordinary user.
#[test]
fn the_exec_budget_denies_beyond_its_count_and_refills_after_the_window() {
    require_bpf_lsm();
    let scratch = Scratch::new("exec-budget");
    let policy = scratch.policy(
        "name = \"exec-budget\"\n[exec]\ndefault = \"allow\"\n\
         budget = { count = 3, per = \"2s\" }\n",
    );
    fs::set_permissions(
        scratch.path(""),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("open the scratch directory to the agent");
    let log = scratch.path("audit.jsonl");
    let probe = probe_bin();
    let exec = "exec:/usr/bin/true";
    // The window starts with the probe's own exec: 2 more fit, then 2 are denied; 2.5 s later
    // a new window lets 3 through and denies the 4th.
    let probe = probe.to_str().expect("utf-8 path");
    let output = oxd_run_as_nobody(
        &policy,
        &log,
        &[
            probe,
            exec,
            exec,
            exec,
            exec,
            "sleep:2500",
            exec,
            exec,
            exec,
            exec,
        ],
    );
    assert!(output.status.success(), "oxd run failed: {output:?}");
    let results = probe_results(&output);
    let allowed: Vec<bool> = results
        .iter()
        .filter(|r| r["action"] == exec)
        .map(|r| r["ok"] == true)
        .collect();
    assert_eq!(
        allowed,
        [true, true, false, false, true, true, true, false],
        "{results:#?}"
    );
    for r in results
        .iter()
        .filter(|r| r["action"] == exec && r["ok"] == false)
    {
        assert_eq!(r["errno"], 1, "denied with EPERM: {r}");
    }
    let records = audit_records(&log);
    let execs: Vec<&Value> = records
        .iter()
        .filter(|r| r["op"] == "exec" && r["target"] == "/usr/bin/true")
        .collect();
    assert_eq!(execs.len(), 8, "{execs:#?}");
    let denied: Vec<&&Value> = execs.iter().filter(|r| r["decision"] == "deny").collect();
    assert_eq!(denied.len(), 3, "{execs:#?}");
    for r in denied {
        assert_eq!(r["rule"], "exec.budget", "{r}");
        assert_eq!(r["rule_text"], "budget 3 per 2s", "{r}");
        assert!(
            r["reason"].as_str().is_some_and(|s| s.contains("budget")),
            "{r}"
        );
        assert_eq!(r["uid"], 65534, "{r}");
    }
}
