//! Issue 10, "Done when": the daemon's enforcement outlives any action of a root agent it
//! confines. The agent tries to remove the daemon's pins, overwrite its state, unmount bpffs,
//! kill the daemon, and leave its cgroup; each attempt fails and is recorded, and afterwards
//! the daemon still runs, its pins are all there, and the agent is still denied what its
//! policy denies.

use std::{fs, process::Stdio};

use super::agent::{assert_refused, groups, step};
use crate::{
    common::{daemon::*, *},
    require_bpf_lsm,
};

const SECRET: &str = "/etc/hostname";

#[test]
fn a_root_agent_cannot_undo_the_daemons_enforcement() {
    require_bpf_lsm();
    let scratch = Scratch::new("daemon-guard");
    let policy = scratch.policy(&format!(
        "name = \"daemon-guard\"\n[exec]\ndefault = \"allow\"\n[file]\ndefault = \"allow\"\n\
         deny = [\"{SECRET}\"]\n"
    ));
    let cgroup = TestCgroup::new("daemon-guard");
    let mut daemon = Daemon::new(&scratch, "guard", &[]);
    daemon.start();
    daemon.confine_cgroup(&cgroup, &policy);
    let pins_before = pinned_files(&daemon.bpffs);
    assert!(!pins_before.is_empty(), "the daemon pinned nothing");
    let state = daemon.state_dir.join("state.json");
    let state_before = fs::read(&state).expect("read the daemon's state");

    let script = format!(
        r#"B='{bpffs}'; S='{state_dir}'; D={daemon_pid}; L='{log}'
label() {{ echo "== $1"; }}
try() {{ n=$1; shift; if "$@" 2>/dev/null; then echo "{{\"step\":\"$n\",\"ok\":true}}"; else echo "{{\"step\":\"$n\",\"ok\":false}}"; fi; }}
P=$(ls -d "$B"/v*/links)
label pins
try unlink sh -c "ls $P/* >/dev/null && rm $P/*"
try create sh -c ": > $P/forged"
try umount umount -l /sys/fs/bpf
label state
try overwrite sh -c "echo '{{}}' > $S/state.json"
try create sh -c ": > $S/forged"
try unlink rm -f "$S/state.json"
try log sh -c "echo forged >> $L"
label daemon
try kill kill -9 $D
try stop kill -STOP $D
label cgroup
try escape sh -c 'echo $$ > /sys/fs/cgroup/cgroup.procs'
label secret
try read cat {SECRET}
"#,
        bpffs = daemon.bpffs.display(),
        state_dir = daemon.state_dir.display(),
        daemon_pid = daemon.pid(),
        log = daemon.audit_log.display(),
    );
    let output = output_within(
        cgroup
            .command("/bin/sh")
            .args(["-c", &script])
            .stdout(Stdio::piped()),
        WAIT,
    )
    .expect("the agent finishes");
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!(
        "--- agent\n{stdout}--- stderr\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let groups = groups(&stdout);
    for (label, name) in [
        ("pins", "unlink"),
        ("pins", "create"),
        ("pins", "umount"),
        ("state", "overwrite"),
        ("state", "create"),
        ("state", "unlink"),
        ("state", "log"),
        ("daemon", "kill"),
        ("daemon", "stop"),
        ("cgroup", "escape"),
        ("secret", "read"),
    ] {
        assert_refused(&groups, label, name);
    }
    let _ = step(&groups, "secret", "read");

    // The daemon runs and answers, its pins and state are as they were, and it still denies
    // (and records) what the policy denies.
    let status = daemon.status();
    assert_eq!(status["lsm"], true, "{status}");
    assert_eq!(pinned_files(&daemon.bpffs), pins_before, "a pin changed");
    assert_eq!(fs::read(&state).expect("read the state"), state_before);
    let records = wait_for("the agent's records", WAIT, || {
        let records = audit_records_so_far(&daemon.audit_log);
        records
            .iter()
            .any(|r| r["op"] == "open" && r["target"] == SECRET)
            .then_some(records)
    });
    let denied = |op: &str| {
        records
            .iter()
            .filter(|r| r["op"] == op && r["decision"] == "deny" && r["enforced"] == true)
            .count()
    };
    for op in ["protected-write", "signal", "umount", "open"] {
        assert!(denied(op) > 0, "no enforced {op} denial: {records:#?}");
    }
    assert!(
        !fs::read_to_string(&daemon.audit_log)
            .expect("read the log")
            .contains("forged"),
        "the agent wrote into the audit log"
    );
}
