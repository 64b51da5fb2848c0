//! The Python client (`clients/python`) against a real daemon: `guest_check.py` confines,
//! replaces, halts and resumes through it, wraps tool calls with its example, and answers a
//! request for approval with a grant; this test then reads what the daemon's audit log says
//! happened.

use std::process::Command;

use serde_json::Value;

use crate::{common::*, require_bpf_lsm};

#[test]
fn python_client_drives_a_real_daemon_and_its_example_wraps_tool_calls() {
    require_bpf_lsm();
    let scratch = Scratch::new("python");
    let allow = scratch.path("py-allow.toml");
    std::fs::write(
        &allow,
        "name = \"py-allow\"\n[exec]\ndefault = \"allow\"\n[file]\ndefault = \"allow\"\n",
    )
    .expect("write the allowing policy");
    let deny = scratch.path("py-deny.toml");
    std::fs::write(
        &deny,
        "name = \"py-deny\"\n[exec]\ndefault = \"allow\"\ndeny = [\"/usr/bin/id\"]\n",
    )
    .expect("write the denying policy");
    let root = TestCgroup::new("python");
    let mut daemon = Daemon::new(&scratch, "python", &[]);
    daemon.start();

    let script = repo().join("clients/python/tests/guest_check.py");
    let out = output_within(
        Command::new("python3")
            .arg(&script)
            .arg(&daemon.socket)
            .arg(&allow)
            .arg(&deny)
            .arg(root.path()),
        WAIT * 3,
    )
    .expect("guest_check.py finished within three minutes");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(
        out.status.success() && text.contains("every check passed"),
        "guest_check.py failed ({}):\n{text}",
        out.status
    );

    let records = wait_for("the approved connect's record", WAIT, || {
        let records = audit_records_so_far(&daemon.audit_log);
        records
            .iter()
            .any(|r| r["op"] == "connect" && r["policy"] == "py-grant" && r["decision"] == "allow")
            .then_some(records)
    });
    let switches: Vec<(&str, &str)> = records
        .iter()
        .filter(|r| r["op"] == "kill-switch")
        .map(|r| {
            (
                r["action"].as_str().unwrap_or("?"),
                r["cgroup"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    let tool = format!("{}/oxd-tool-", root.path_str());
    assert!(
        switches
            .iter()
            .any(|(action, cgroup)| *action == "kill" && cgroup.starts_with(&tool)),
        "the example's timeout kill is not in the log: {switches:?}"
    );
    let by_hand: Vec<&str> = switches
        .iter()
        .filter(|(_, cgroup)| cgroup.starts_with(&format!("{}/oxd-python-", root.path_str())))
        .map(|(action, _)| *action)
        .collect();
    assert_eq!(
        by_hand,
        ["deny-all", "resume", "freeze", "resume", "kill"],
        "{switches:?}"
    );
    let id: Vec<&Value> = records_for(&records, "exec", "/usr/bin/id");
    assert!(
        id.iter()
            .any(|r| r["decision"] == "deny" && r["policy"] == "py-deny"),
        "the denied tool's exec is not in the log: {id:#?}"
    );
    // The approval round trip: the request, the grant, and the one connect it allowed.
    let granted: Vec<&Value> = records
        .iter()
        .filter(|r| r["op"] == "grant" && r["policy"] == "py-grant")
        .collect();
    assert_eq!(granted.len(), 1, "{granted:#?}");
    let used: Vec<&Value> = records
        .iter()
        .filter(|r| r["op"] == "connect" && r["policy"] == "py-grant" && r["decision"] == "allow")
        .collect();
    assert_eq!(used.len(), 1, "{used:#?}");
    assert_eq!(used[0]["grant"], granted[0]["grant"]);
    assert_audit_log_verifies(&daemon.audit_log);
}
