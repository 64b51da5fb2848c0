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

    // `oxd explain` on the target: allowed by the rule, but no grant now.
    let (code, stdout) = daemon.explain(&cgroup, &["--connect", &target]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("no usable grant for connect {target}/tcp")),
        "{stdout}"
    );

    // One grant: one connect, then the repeat (a replay) is denied.
    let first = grant(&daemon, &cgroup, &["--connect", &target]);
    let (code, stdout) = daemon.explain(&cgroup, &["--connect", &target]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "grant #{first} for connect {target}/tcp: 1 use(s) left"
        )),
        "{stdout}"
    );
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

/// `oxd approve` on `socket`, its output gathered as it comes (a prompt ends without a newline)
/// by the thread returned.
fn start_approve(
    socket: &Path,
) -> (
    std::process::Child,
    std::sync::Arc<std::sync::Mutex<String>>,
    std::thread::JoinHandle<()>,
) {
    use std::io::Read as _;
    let mut approve = std::process::Command::new(oxd_bin())
        .arg("approve")
        .arg("--socket")
        .arg(socket)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start oxd approve");
    let shown = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut out = approve.stdout.take().expect("its stdout");
    let reader = {
        let shown = std::sync::Arc::clone(&shown);
        std::thread::spawn(move || {
            let mut byte = [0u8; 1];
            while out.read(&mut byte).is_ok_and(|n| n == 1) {
                shown.lock().expect("lock").push(char::from(byte[0]));
            }
        })
    };
    (approve, shown, reader)
}

/// The approval round trip: the agent's connect is denied for want of a grant; `oxd approve`
/// (subscribed to the daemon's requests for approval) shows it, and a `y` grants exactly that
/// action once; the agent's retry succeeds, and a repeat after it is denied.
#[test]
fn oxd_approve_grants_one_retry_of_the_request_it_shows() {
    use std::{io::Write as _, process::Stdio};

    let scratch = Scratch::new("approve");
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen on loopback");
    let port = listener.local_addr().expect("local addr").port();
    let file = scratch.path("granted.toml");
    std::fs::write(&file, grant_policy(port)).expect("write the policy");
    let bpffs = BpffsMount::new(&scratch, "bpffs");
    let mut daemon = Daemon::new(&scratch, "approve", &[]);
    daemon.bpffs = bpffs.path.join("oxd");
    daemon.start();
    let cgroup = TestCgroup::new("approve");
    daemon.confine_cgroup(&cgroup, &file);
    let target = format!("127.0.0.1:{port}");

    let (mut approve, shown, reader) = start_approve(&daemon.socket);
    let seen = |text: &str| shown.lock().expect("lock").contains(text);
    wait_for("oxd approve to subscribe", WAIT, || {
        seen("waiting for requests").then_some(())
    });

    // The agent retries for up to a minute; the first attempt is the request.
    let retry = format!("retry:60:connect:{target}");
    let agent = cgroup
        .command(probe_bin())
        .arg(&retry)
        .arg(format!("connect:{target}"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the agent");
    wait_for("the request to be shown", WAIT, || {
        seen("approve? [y/N]").then_some(())
    });
    {
        let prompt = shown.lock().expect("lock").clone();
        assert!(
            prompt.contains(&format!("wants connect {target}/tcp")) && prompt.contains("oxd-probe"),
            "the prompt names the action and the process: {prompt}"
        );
    }
    let mut input = approve.stdin.take().expect("its stdin");
    input.write_all(b"y\n").expect("answer y");
    let output = agent.wait_with_output().expect("the agent ends");
    let results = probe_results(&output);
    let retried = result_of(&results, &retry);
    assert_eq!(
        retried["ok"], true,
        "the approved retry succeeds: {retried}"
    );
    assert!(
        retried["attempts"].as_u64().is_some_and(|n| n >= 2),
        "{retried}"
    );
    // The grant was for one connect: the repeat is denied.
    assert_eperm(&results, &format!("connect:{target}"));
    wait_for("oxd approve to report the grant", WAIT, || {
        seen("allowed 1 time(s)").then_some(())
    });
    drop(input);
    // It reads its input only to answer a request: it waits for the next one until stopped.
    let _ = approve.kill();
    let _ = approve.wait();
    reader.join().expect("the reader ends");

    let records = wait_for("the records of the round trip", WAIT, || {
        let records = audit_records_so_far(&daemon.audit_log);
        records
            .iter()
            .any(|r| r["reason"].as_str().is_some_and(|s| s.contains("used up")))
            .then_some(records)
    });
    let ours: Vec<&Value> = records
        .iter()
        .filter(|r| r["target"] == target.as_str() || r["op"] == "grant")
        .collect();
    let allowed: Vec<&&Value> = ours.iter().filter(|r| r["decision"] == "allow").collect();
    assert_eq!(allowed.len(), 1, "one connect allowed: {ours:#?}");
    let granted = ours
        .iter()
        .find(|r| r["op"] == "grant")
        .expect("the grant is recorded");
    assert_eq!(allowed[0]["grant"], granted["grant"], "{ours:#?}");
    assert_eq!(granted["uses"], 1);
    assert!(
        ours.iter()
            .any(|r| r["reason"].as_str().is_some_and(|s| s.contains("used up"))),
        "the repeat is recorded as such: {ours:#?}"
    );
    drop(listener);
}
