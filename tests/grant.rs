//! One-shot grants (`requires_grant = true` on a network rule, `oxd ctl grant`): the kernel
//! allows exactly the granted action, as many times as granted, until the grant expires; a
//! repeat is denied; grants and their use are in the audit log. Network rules need no BPF-LSM:
//! these run on the host and in the guests alike.

use std::{net::TcpListener, path::Path};

use serde_json::Value;

use super::common::*;

fn grant_policy(port: u16) -> String {
    format!(
        "name = \"granted\"\n[network]\ndefault = \"deny\"\n[[network.allow]]\ncidr = \
         \"127.0.0.1\"\nports = {port}\nrequires_grant = true\n"
    )
}

/// The `times:` report of a probe: (allowed, refused with EPERM, failed otherwise).
fn counts(result: &Value) -> (u64, u64, u64) {
    let n = |field: &str| {
        result[field]
            .as_u64()
            .unwrap_or_else(|| panic!("no {field} in {result}"))
    };
    (n("allowed"), n("eperm"), n("other"))
}

/// `oxd ctl grant` for `cgroup`; the grant's number.
fn grant(daemon: &Daemon, cgroup: &TestCgroup, action: &[&str]) -> u64 {
    let mut args = vec!["grant", "--cgroup", cgroup.path_str()];
    args.extend_from_slice(action);
    let message = daemon.ctl(&args);
    let number = message
        .strip_prefix("grant ")
        .and_then(|rest| rest.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no grant number in {message:?}"));
    assert!(
        message.contains("allowed"),
        "the daemon says what it granted: {message}"
    );
    number
}

fn records_with_reason(log: &Path, target: &str, reason: &str) -> Vec<Value> {
    audit_records_so_far(log)
        .into_iter()
        .filter(|r| {
            r["target"] == target && r["reason"].as_str().is_some_and(|s| s.contains(reason))
        })
        .collect()
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one grant's life after another: none, once, replay, several, race, expiry, revoke"
)]
fn a_grant_allows_exactly_the_granted_action_as_often_as_granted() {
    let scratch = Scratch::new("grant");
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen on loopback");
    let port = listener.local_addr().expect("local addr").port();
    let file = scratch.path("granted.toml");
    std::fs::write(&file, grant_policy(port)).expect("write the policy");
    let bpffs = BpffsMount::new(&scratch, "bpffs");
    let mut daemon = Daemon::new(&scratch, "grant", &[]);
    daemon.bpffs = bpffs.path.join("oxd");
    daemon.start();
    let cgroup = TestCgroup::new("grant");
    let neighbour = TestCgroup::new("grant-2");
    daemon.confine_cgroup(&cgroup, &file);
    daemon.confine_cgroup(&neighbour, &file);
    let target = format!("127.0.0.1:{port}");
    let connect = format!("connect:{target}");
    let times = |n: u32| format!("times:{n}:connect:{target}");

    // No grant: denied, and the record says a grant is required (the approval request).
    let results = probe_in(&cgroup, &[&connect]);
    assert_eperm(&results, &connect);
    wait_for("the denial's record", WAIT, || {
        (!records_with_reason(&daemon.audit_log, &target, "requires a grant").is_empty())
            .then_some(())
    });

    // One grant: one connect, then the repeat (a replay) is denied.
    let first = grant(&daemon, &cgroup, &["--connect", &target]);
    let results = probe_in(&cgroup, &[&times(3)]);
    assert_eq!(
        counts(&results[0]),
        (1, 2, 0),
        "exactly one use: {results:?}"
    );
    // Another target has no grant: a grant is for one target.
    let results = probe_in(&neighbour, &[&connect]);
    assert_eperm(&results, &connect);
    // A UDP grant does not allow a TCP connect; a grant for another port is refused, since no
    // rule requiring a grant decides there.
    grant(
        &daemon,
        &cgroup,
        &["--connect", &target, "--protocol", "udp", "--uses", "5"],
    );
    let results = probe_in(&cgroup, &[&connect]);
    assert_eperm(&results, &connect);
    let other = format!(
        "127.0.0.1:{}",
        if port == u16::MAX { port - 1 } else { port + 1 }
    );
    let refused = daemon.ctl_output(&["grant", "--cgroup", cgroup.path_str(), "--connect", &other]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("would change nothing"),
        "{refused:?}"
    );

    // Several uses, taken by processes racing on every CPU: exactly that many pass.
    // (A new grant for the same action replaces the used-up one.)
    let raced = grant(&daemon, &cgroup, &["--connect", &target, "--uses", "10"]);
    let script = format!(
        "for i in 1 2 3 4; do {} {} & done; wait",
        probe_bin().display(),
        times(5)
    );
    let output = output_within(cgroup.command("/bin/sh").args(["-c", &script]), WAIT)
        .expect("the racing probes finish");
    let results = probe_results(&output);
    assert_eq!(results.len(), 4, "{output:?}");
    let allowed: u64 = results.iter().map(|r| counts(r).0).sum();
    let eperm: u64 = results.iter().map(|r| counts(r).1).sum();
    assert_eq!((allowed, eperm), (10, 10), "{results:#?}");

    // `list` shows the target's grants, the used-up ones included until they expire.
    let entry = daemon.target(&cgroup).expect("listed");
    let grants = entry["grants"].as_array().expect("grants listed");
    assert!(
        grants.iter().any(|g| g["id"] == raced
            && g["uses"] == 0
            && g["action"] == format!("connect {target}/tcp")),
        "{entry}"
    );

    // An expired grant allows nothing.
    grant(&daemon, &cgroup, &["--connect", &target, "--expires", "1s"]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let results = probe_in(&cgroup, &[&connect]);
    assert_eperm(&results, &connect);

    // A revoked grant allows nothing.
    let revoked = grant(&daemon, &cgroup, &["--connect", &target, "--uses", "5"]);
    daemon.ctl(&["revoke", &revoked.to_string()]);
    let results = probe_in(&cgroup, &[&connect]);
    assert_eperm(&results, &connect);

    // The audit log: every grant and the revocation, each allowed connect naming its grant,
    // the replays and the expired use named as such.
    let records = wait_for("the records of the grants' use", WAIT, || {
        let records = audit_records_so_far(&daemon.audit_log);
        let expired = records
            .iter()
            .any(|r| r["reason"].as_str().is_some_and(|s| s.contains("expired")));
        let revoke = records
            .iter()
            .any(|r| r["op"] == "grant" && r["action"] == "revoke");
        (expired && revoke).then_some(records)
    });
    let granted: Vec<&Value> = records
        .iter()
        .filter(|r| r["op"] == "grant" && r["action"] == "grant")
        .collect();
    assert_eq!(granted.len(), 5, "{granted:#?}");
    assert_eq!(granted[0]["grant"], first);
    assert_eq!(granted[0]["allows"], format!("connect {target}/tcp"));
    let allowed: Vec<&Value> = records
        .iter()
        .filter(|r| {
            r["op"] == "connect" && r["target"] == target.as_str() && r["decision"] == "allow"
        })
        .collect();
    assert_eq!(allowed.len(), 11, "1 + 10 granted connects: {allowed:#?}");
    assert!(allowed.iter().all(|r| r["grant"].is_u64()), "{allowed:#?}");
    assert_eq!(allowed[0]["grant"], first);
    let used = records_with_reason(&daemon.audit_log, &target, "used up");
    assert!(used.len() >= 12, "the replays are recorded: {used:#?}");
    assert!(used.iter().any(|r| r["grant"] == first));
    assert_audit_log_verifies(&daemon.audit_log);

    // Released, its grants go.
    grant(&daemon, &cgroup, &["--connect", &target, "--uses", "5"]);
    daemon.ctl(&["release", "--cgroup", cgroup.path_str()]);
    daemon.confine_cgroup(&cgroup, &file);
    let results = probe_in(&cgroup, &[&connect]);
    assert_eperm(&results, &connect);
    drop(listener);
}
