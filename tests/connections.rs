//! Connection limits (`max_connections = N` on a network rule): at most N sockets of a confined
//! target that reached the rule are open at once, counted in the kernel across processes; the
//! N+1th is denied with a record naming the limit; a slot frees when its socket is closed (or
//! its process exits). Network rules need no BPF-LSM: these run on the host and in the guests
//! alike.

use std::{net::TcpListener, os::unix::fs::PermissionsExt as _, process::Command};

use super::common::*;

fn limit_policy(name: &str, port: u16, protocol: &str, max: u32) -> String {
    format!(
        "name = \"{name}\"\n[network]\ndefault = \"deny\"\n\
         [[network.allow]]\ncidr = \"127.0.0.1\"\nports = {port}\nprotocol = \"{protocol}\"\n\
         max_connections = {max}\n"
    )
}

/// Asserts that every denial among `records` (to `target`) is the connection limit's, naming
/// the rule and its limit; returns how many there are.
fn limit_denials(records: &[&serde_json::Value], max: u32) -> usize {
    records
        .iter()
        .filter(|r| r["decision"] == "deny")
        .inspect(|r| {
            assert!(
                r["reason"]
                    .as_str()
                    .is_some_and(|s| s.contains("connection limit")),
                "a denial by the connection limit must say so: {r}"
            );
            assert_eq!(r["rule"], "network.allow[0]", "{r}");
            assert!(
                r["rule_text"]
                    .as_str()
                    .is_some_and(|t| t.ends_with(&format!("at most {max} open at once"))),
                "the record names the limit: {r}"
            );
        })
        .count()
}

#[test]
fn connection_limit_denies_beyond_n_open_and_frees_a_slot_on_close() {
    let scratch = Scratch::new("connections-tcp");
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen on loopback");
    let port = listener.local_addr().expect("local addr").port();
    let policy = scratch.policy(&limit_policy("connections-tcp", port, "tcp", 3));
    let log = scratch.path("audit.jsonl");
    let probe = probe_bin();
    let probe = probe.to_str().expect("utf-8 path");
    let hold = format!("hold:5:connect:127.0.0.1:{port}");
    // Twice in one process: the second round finds every slot of the first given back.
    let output = oxd_run(&policy, &log, &[probe, &hold, &hold]);
    assert!(output.status.success(), "oxd run failed: {output:?}");
    let results = probe_results(&output);
    assert_eq!(results.len(), 2, "{results:#?}");
    for result in &results {
        assert_eq!(
            counts(result),
            (3, 2, 0),
            "3 open at once: the 4th and 5th are denied: {result}"
        );
        assert_eq!(
            result["after_close_ok"], true,
            "closing one gives its slot back: {result}"
        );
    }
    let records = audit_records(&log);
    let target = format!("127.0.0.1:{port}");
    let connects = records_for(&records, "connect", &target);
    assert_eq!(connects.len(), 2 * 6, "{connects:#?}");
    assert_eq!(limit_denials(&connects, 3), 4, "{connects:#?}");
    // `oxd explain` says the limit applies.
    let explained = Command::new(oxd_bin())
        .args(["explain", "--policy"])
        .arg(&policy)
        .args(["--connect", &target])
        .output()
        .expect("run oxd explain");
    let stdout = String::from_utf8_lossy(&explained.stdout);
    assert!(
        explained.status.success() && stdout.contains("while fewer than 3 sockets"),
        "{explained:?}"
    );
    drop(listener);
}

/// As an ordinary user, two processes share one limit: the sockets one keeps open leave the
/// other fewer slots; a socket sending again counts once; a slot frees when its process exits.
#[test]
fn connection_limit_is_shared_across_processes_and_freed_on_exit() {
    let scratch = Scratch::new("connections-udp");
    let port = {
        let free = std::net::UdpSocket::bind("127.0.0.1:0").expect("find a free port");
        free.local_addr().expect("local addr").port()
    };
    let policy = scratch.policy(&limit_policy("connections-udp", port, "udp", 3));
    let log = scratch.path("audit.jsonl");
    let sync = scratch.path("sync");
    std::fs::create_dir(&sync).expect("make the sync directory");
    std::fs::set_permissions(&sync, std::fs::Permissions::from_mode(0o777))
        .expect("open the sync directory to the agent");
    std::fs::set_permissions(scratch.path(""), std::fs::Permissions::from_mode(0o755))
        .expect("open the scratch directory to the agent");
    let probe = probe_bin();
    let probe = probe.to_str().expect("utf-8 path");
    let sync = sync.to_str().expect("utf-8 path");
    let addr = format!("127.0.0.1:{port}");
    let keep = format!("keep:2:{sync}:udp:{addr}");
    let hold = format!("hold:3:udp:{addr}");
    let script = format!(
        "set -e\n{probe} {keep} &\n{probe} wait:{sync}/held {hold}\ntouch {sync}/release\n\
         wait\n{probe} {hold}\n"
    );
    let output = oxd_run_as_nobody(&policy, &log, &["/bin/sh", "-c", &script]);
    assert!(output.status.success(), "oxd run failed: {output:?}");
    let results = probe_results(&output);
    let kept = result_of(&results, &keep);
    assert_eq!(counts(kept), (2, 0, 0), "{kept}");
    let holds: Vec<_> = results.iter().filter(|r| r["action"] == hold).collect();
    assert_eq!(holds.len(), 2, "{results:#?}");
    assert_eq!(
        counts(holds[0]),
        (1, 2, 0),
        "2 of 3 slots are the other process's: {}",
        holds[0]
    );
    assert_eq!(
        holds[0]["resend_ok"], true,
        "a socket that holds a slot sends again: {}",
        holds[0]
    );
    assert_eq!(holds[0]["after_close_ok"], true, "{}", holds[0]);
    assert_eq!(
        counts(holds[1]),
        (3, 0, 0),
        "the other process exited: its slots are free: {}",
        holds[1]
    );
    let records = audit_records(&log);
    let sends = records_for(&records, "sendmsg", &addr);
    assert_eq!(limit_denials(&sends, 3), 2, "{sends:#?}");
    assert!(
        sends.iter().all(|r| r["uid"] == 65534),
        "the agent ran as uid 65534: {sends:#?}"
    );
}

/// Under the daemon: `oxd ctl list` shows the sockets open; a replacement that keeps the rule
/// keeps counting them under its new limit; release forgets them.
#[test]
fn connection_limit_is_listed_and_survives_a_replacement() {
    let scratch = Scratch::new("connections-daemon");
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen on loopback");
    let port = listener.local_addr().expect("local addr").port();
    let file = scratch.path("limit.toml");
    let write = |max: u32| {
        std::fs::write(&file, limit_policy("connections-daemon", port, "tcp", max))
            .expect("write the policy");
    };
    write(3);
    let bpffs = BpffsMount::new(&scratch, "bpffs");
    let mut daemon = Daemon::new(&scratch, "connections", &[]);
    daemon.bpffs = bpffs.path.join("oxd");
    daemon.start();
    let cgroup = TestCgroup::new("connections-daemon");
    daemon.confine_cgroup(&cgroup, &file);
    let sync = scratch.path("sync");
    std::fs::create_dir(&sync).expect("make the sync directory");
    let sync_str = sync.to_str().expect("utf-8 path");
    let addr = format!("127.0.0.1:{port}");
    let mut keeper = cgroup
        .command(probe_bin())
        .arg(format!("keep:2:{sync_str}:connect:{addr}"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn the keeping probe");
    wait_for("the probe to hold its sockets", WAIT, || {
        sync.join("held").exists().then_some(())
    });
    let open = |daemon: &Daemon| {
        let entry = daemon.target(&cgroup).expect("listed");
        let limit = &entry["connections"][0];
        assert_eq!(limit["rule"], "network.allow[0]", "{entry}");
        (limit["open"].as_u64(), limit["max"].as_u64())
    };
    assert_eq!(open(&daemon), (Some(2), Some(3)));

    // The same rule with a lower limit: the 2 open count against it.
    write(2);
    daemon.ctl(&["replace", "--policy", file.to_str().expect("utf-8 path")]);
    assert_eq!(open(&daemon), (Some(2), Some(2)));
    let results = probe_in(&cgroup, &[&format!("hold:1:connect:{addr}")]);
    assert_eq!(counts(&results[0]), (0, 1, 0), "{results:#?}");
    // `oxd explain` on the target says why, from the live count.
    let explain = |daemon: &Daemon| daemon.explain(&cgroup, &["--connect", &addr]);
    let (code, stdout) = explain(&daemon);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("now:     connections of network.allow[0]: 2 of 2 open")
            && stdout.contains("so now:  deny"),
        "{stdout}"
    );

    std::fs::write(sync.join("release"), b"").expect("release the keeping probe");
    assert!(keeper.wait().expect("wait for the probe").success());
    wait_for("the closed sockets' slots to come back", WAIT, || {
        (open(&daemon) == (Some(0), Some(2))).then_some(())
    });
    let (code, stdout) = explain(&daemon);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("0 of 2 open"), "{stdout}");
    let results = probe_in(&cgroup, &[&format!("hold:3:connect:{addr}")]);
    assert_eq!(counts(&results[0]), (2, 1, 0), "{results:#?}");

    daemon.ctl(&["release", "--cgroup", cgroup.path_str()]);
    assert!(daemon.target(&cgroup).is_none(), "released");
    assert_audit_log_verifies(&daemon.audit_log);
    drop(listener);
}

/// A socket that holds a slot of one limit is denied what another limited rule would allow
/// it, and keeps its slot: a connected UDP socket whose connect to a second destination is
/// denied stays connected to the first, so giving its slot back would let another socket
/// take it while the first still talks there.
#[test]
fn a_socket_keeps_its_slot_when_another_limited_rule_is_denied_it() {
    let scratch = Scratch::new("connections-switch");
    let free_port = || {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("find a free port");
        socket.local_addr().expect("local addr").port()
    };
    let (a, b) = (free_port(), free_port());
    let policy = scratch.policy(&format!(
        "{}[[network.allow]]\ncidr = \"127.0.0.1\"\nports = {b}\nprotocol = \"udp\"\n\
         max_connections = 1\n",
        limit_policy("connections-switch", a, "udp", 1)
    ));
    let log = scratch.path("audit.jsonl");
    let probe = probe_bin();
    let action = format!("udp-switch:127.0.0.1:{a},127.0.0.1:{b}");
    let output = oxd_run(
        &policy,
        &log,
        &[probe.to_str().expect("utf-8 path"), &action],
    );
    assert!(output.status.success(), "oxd run failed: {output:?}");
    let results = probe_results(&output);
    let r = result_of(&results, &action);
    assert_eq!(r["s0_send"], serde_json::Value::Null, "B's only slot: {r}");
    assert_eq!(
        r["s1_connect_a"],
        serde_json::Value::Null,
        "A's only slot: {r}"
    );
    assert_eq!(
        r["s1_connect_b"], 1,
        "B is full, and S1 holds A's slot: {r}"
    );
    assert_eq!(
        r["s2_connect_a"], 1,
        "S1 still holds A's slot (and is still connected there): {r}"
    );
}

/// The routes to the same destination an agent has: an IPv6 socket with the IPv4-mapped
/// address, the unspecified address, TCP Fast Open's `sendto`. Each reaches the same rule, so
/// each needs a slot of its limit: with the only slot held, all are denied (as uid 65534); once
/// it is free, the same connect goes through.
#[test]
fn connection_limit_holds_for_every_route_to_the_rules_destination() {
    let scratch = Scratch::new("connections-routes");
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen on loopback");
    let port = listener.local_addr().expect("local addr").port();
    let policy = scratch.policy(&limit_policy("connections-routes", port, "tcp", 1));
    let log = scratch.path("audit.jsonl");
    let sync = scratch.path("sync");
    std::fs::create_dir(&sync).expect("make the sync directory");
    let sync = sync.to_str().expect("utf-8 path");
    let probe = probe_bin();
    let probe = probe.to_str().expect("utf-8 path");
    let attack = attack_bin();
    let attack = attack.to_str().expect("utf-8 path");
    let token = format!("oxd-connections-{}", std::process::id());
    let attacks = [
        format!("tcp '[::ffff:127.0.0.1]:{port}' {token}"),
        format!("tcp '0.0.0.0:{port}' {token}"),
        format!("tcp-fastopen '127.0.0.1:{port}' {token}"),
    ];
    let mut script = format!(
        "set -e\n{probe} keep:1:{sync}:connect:127.0.0.1:{port} &\n{probe} wait:{sync}/held\n"
    );
    for args in &attacks {
        script.push_str(&format!(
            "echo '--- attack'\n{attack} --as 65534:65534 {args}\n"
        ));
    }
    script.push_str(&format!(
        "touch {sync}/release\nwait\necho '--- attack'\n{attack} --as 65534:65534 {}\n",
        attacks[0]
    ));
    let output = oxd_run(&policy, &log, &["/bin/sh", "-c", &script]);
    assert!(output.status.success(), "oxd run failed: {output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut steps: Vec<Vec<serde_json::Value>> = Vec::new();
    for line in stdout.lines() {
        if line == "--- attack" {
            steps.push(Vec::new());
        } else if let Some(last) = steps.last_mut().filter(|_| line.starts_with('{')) {
            last.push(serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}")));
        }
    }
    assert_eq!(steps.len(), 4, "{stdout}");
    let first = |steps: &[serde_json::Value]| steps.first().cloned().unwrap_or_default();
    for (args, s) in attacks.iter().zip(&steps) {
        let s = first(s);
        assert!(
            s["ok"] == false && s["errno"] == 1,
            "{args}: the only slot is taken, so EPERM: {s}"
        );
    }
    assert_eq!(
        first(&steps[3])["ok"],
        true,
        "with the slot free, the same connect goes through: {:?}",
        steps[3]
    );
    let records = audit_records(&log);
    let denied: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["op"] == "connect" && r["decision"] == "deny")
        .collect();
    assert_eq!(limit_denials(&denied, 1), 3, "{denied:#?}");
    assert!(denied.iter().all(|r| r["uid"] == 65534), "{denied:#?}");
    drop(listener);
}
