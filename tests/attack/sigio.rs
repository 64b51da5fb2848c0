//! Attacks of the `sigio` family: see `tests/attacker/sigio.rs`. The agent (uid 65534, in
//! `oxd run`) tries to point a file's I/O signals at an unconfined process of its own uid; the
//! kernel sends those without asking `task_kill`, so only the owner-choosing calls stand
//! between the agent and a `SIGKILL` to any process of its user.

use std::process::{Command, Stdio};

use serde_json::Value;

use crate::{common::*, require_bpf_lsm};

const AGENT: &str = "65534:65534";

fn step<'a>(steps: &'a [Value], name: &str) -> &'a Value {
    steps
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("no {name} step in {steps:#?}"))
}

#[test]
fn pointing_a_files_signals_at_an_outside_process_is_denied() {
    require_bpf_lsm();
    let scratch = Scratch::new("sigio");
    let policy = scratch.policy(
        r#"
name = "sigio"
[exec]
default = "allow"
"#,
    );
    let log = scratch.path("audit.jsonl");
    let mut victim = Command::new("setpriv");
    victim
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sleep",
            "600",
        ])
        .stdin(Stdio::null());
    let mut victim = KillOnDrop(victim.spawn().expect("start the victim"));
    let pid = victim.0.id();
    let attack = attack_bin();
    let output = oxd_run(
        &policy,
        &log,
        &[
            attack.to_str().expect("utf-8"),
            "--as",
            AGENT,
            "sigio-owner",
            &pid.to_string(),
        ],
    );
    assert!(output.status.success(), "oxd run failed: {}", output.status);
    let steps = probe_results(&output);
    for name in ["f_setown-self", "f_setown-none", "write"] {
        assert_eq!(
            step(&steps, name)["ok"],
            true,
            "{name} must work: {steps:#?}"
        );
    }
    for name in [
        "f_setown-pgrp",
        "f_setown_ex",
        "f_setsig",
        "f_setown",
        "f_setfl-async",
        "fioasync",
        "fiosetown",
        "siocspgrp",
    ] {
        let s = step(&steps, name);
        assert_eq!(s["ok"], false, "{name} must be refused: {s}");
        assert_eq!(s["errno"], EPERM, "{name} must fail with EPERM: {s}");
    }
    assert!(
        victim.0.try_wait().expect("poll the victim").is_none(),
        "the victim outside the confinement was signalled"
    );

    let records = audit_records(&log);
    let owner: Vec<&Value> = records
        .iter()
        .filter(|r| r["op"] == "signal-owner")
        .collect();
    let target = |t: &str| {
        owner
            .iter()
            .find(|r| r["target"] == t)
            .unwrap_or_else(|| panic!("no signal-owner record for {t}: {owner:#?}"))
    };
    let me_allowed = owner
        .iter()
        .find(|r| r["decision"] == "allow" && r["target"] != "F_SETOWN none")
        .unwrap_or_else(|| panic!("no allowed F_SETOWN of the agent itself: {owner:#?}"));
    assert_eq!(me_allowed["peer_pid"], me_allowed["pid"], "{me_allowed}");
    assert_eq!(target("F_SETOWN none")["decision"], "allow");
    for t in [
        format!("F_SETOWN pid {pid}"),
        format!("F_SETOWN pgrp {pid}"),
        "F_SETOWN_EX".to_owned(),
        "F_SETSIG 9".to_owned(),
        "F_SETFL O_ASYNC".to_owned(),
        "FIOASYNC".to_owned(),
        "FIOSETOWN".to_owned(),
        "SIOCSPGRP".to_owned(),
    ] {
        let r = target(&t);
        assert_eq!(r["decision"], "deny", "{r}");
        assert_eq!(r["enforced"], true, "{r}");
        assert_eq!(r["uid"], 65534, "{r}");
        assert!(
            r["reason"]
                .as_str()
                .is_some_and(|s| s.starts_with("a file's I/O signals")),
            "{r}"
        );
    }
    assert_eq!(target(&format!("F_SETOWN pid {pid}"))["peer_pid"], pid);
}
