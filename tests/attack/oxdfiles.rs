//! The guard over oxd's own files (issue 10): a root agent, under a policy whose file rules
//! allow every write, still cannot change the policy file, the audit log (nor the new file a
//! rotation opens), or oxd's binary, by any name: open for writing, truncate, remove, rename
//! away, rename over, chmod, or write through a hard link it made.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::Path,
    process::{Command, Stdio},
};

use serde_json::Value;

use super::agent::{assert_refused, assert_worked, groups, step};
use crate::{common::*, require_bpf_lsm};

/// Every record of the audit log at `log` and its rotated parts (`LOG.1`, `LOG.2`, ...).
fn all_records(log: &Path) -> Vec<Value> {
    let mut records = audit_records(log);
    for n in 1..10 {
        let part = Path::new(&format!("{}.{n}", log.display())).to_owned();
        if part.exists() {
            records.extend(audit_records(&part));
        }
    }
    records
}

/// Every line of the audit log at `log` and its rotated parts.
fn all_lines(log: &Path) -> Vec<String> {
    let parts = (1..10).map(|n| Path::new(&format!("{}.{n}", log.display())).to_owned());
    std::iter::once(log.to_owned())
        .chain(parts)
        .filter_map(|p| fs::read_to_string(p).ok())
        .flat_map(|text| text.lines().map(str::to_owned).collect::<Vec<_>>())
        .collect()
}

fn protected_denials(records: &[Value], attempt: &str) -> usize {
    records
        .iter()
        .filter(|r| {
            r["op"] == "protected-write"
                && r["target"] == format!("oxd's own file: {attempt}")
                && r["decision"] == "deny"
                && r["enforced"] == true
                && r["uid"] == 0
        })
        .count()
}

/// Every write allowed by the file rules: only the guard stands in the way.
const POLICY: &str =
    "name = \"oxd-files\"\n[exec]\ndefault = \"allow\"\n[file]\ndefault = \"allow\"\n";

#[test]
#[allow(clippy::too_many_lines)] // one agent, attempt by attempt
fn a_root_agent_cannot_change_oxds_own_files() {
    require_bpf_lsm();
    let scratch = Scratch::new("oxd-files");
    let policy = scratch.policy(POLICY);
    let log = scratch.path("audit.jsonl");
    let policy_text = fs::read_to_string(&policy).expect("read the policy");
    let oxd = oxd_bin();
    let oxd_mode = fs::metadata(&oxd).expect("stat oxd").mode() & 0o7777;
    let work = scratch.path("work");
    fs::create_dir(&work).expect("mkdir work");
    let script = format!(
        r#"P='{policy}'; L='{log}'; X='{oxd}'; S='{work}'
label() {{ echo "== $1"; }}
try() {{ n=$1; shift; if "$@" 2>/dev/null; then echo "{{\"step\":\"$n\",\"ok\":true}}"; else echo "{{\"step\":\"$n\",\"ok\":false}}"; fi; }}
label policy
try append sh -c "echo '[exec]' >> $P"
try truncate python3 -c 'import os, sys; os.truncate(sys.argv[1], 0)' "$P"
try rename mv "$P" "$S/moved"
try unlink rm -f "$P"
try chmod chmod 666 "$P"
try link ln "$P" "$S/alias"
try write-alias sh -c "echo x >> $S/alias"
try rename-over sh -c "echo fake > $S/fake && mv -f $S/fake $P"
label log
try append sh -c "echo forged >> $L"
try truncate python3 -c 'import os, sys; os.truncate(sys.argv[1], 0)' "$L"
try unlink rm -f "$L"
label binary
try chmod chmod {oxd_mode:o} "$X"
try append sh -c ": >> $X"
python3 -c 'import json, os, sys
try:
    os.setxattr(sys.argv[1], "trusted.oxd", b"pwned")
    print(json.dumps({{"step": "setxattr", "ok": True}}))
except OSError as e:
    print(json.dumps({{"step": "setxattr", "ok": False, "errno": e.errno}}))' "$X"
label allowed
try write sh -c "echo ok > $S/ok"
"#,
        policy = policy.display(),
        log = log.display(),
        oxd = oxd.display(),
        work = work.display(),
    );
    let output = oxd_run(&policy, &log, &["/bin/sh", "-c", &script]);
    assert!(output.status.success(), "oxd run failed: {output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let groups = groups(&stdout);
    for name in [
        "append",
        "truncate",
        "rename",
        "unlink",
        "chmod",
        "write-alias",
        "rename-over",
    ] {
        assert_refused(&groups, "policy", name);
    }
    // A hard link elsewhere is allowed: the same file, protected under its new name too.
    assert_worked(&groups, "policy", "link");
    for name in ["append", "truncate", "unlink"] {
        assert_refused(&groups, "log", name);
    }
    assert_refused(&groups, "binary", "chmod");
    assert_refused(&groups, "binary", "append");
    // EPERM from the guard, before the file system is asked (whether it has trusted.*).
    assert_eq!(
        step(&groups, "binary", "setxattr")["errno"],
        EPERM,
        "{groups:#?}"
    );
    assert_worked(&groups, "allowed", "write");

    // Nothing changed.
    assert_eq!(
        fs::read_to_string(&policy).expect("the policy is there"),
        policy_text
    );
    assert_eq!(
        fs::metadata(&oxd).expect("stat oxd").mode() & 0o7777,
        oxd_mode
    );
    let records = all_records(&log);
    assert!(
        records.iter().all(|r| r.get("op").is_some()),
        "the log holds only oxd's records"
    );
    assert!(
        !fs::read_to_string(&log)
            .expect("read the log")
            .contains("forged"),
        "the agent wrote into the audit log"
    );
    for attempt in [
        "open for writing",
        "truncate",
        "rename",
        "unlink",
        "chmod",
        "extended attribute",
    ] {
        assert!(
            protected_denials(&records, attempt) > 0,
            "no protected-write record of {attempt}: {records:#?}"
        );
    }
    assert_audit_log_verifies(&log);
}

/// A rotation opens a new audit log file: it is protected before the log's name reaches it.
/// The agent spins until `LOG.1` appears and then, for at least a second and 2,500 tries
/// (thousands of rotations), appends to the log's name and to every hidden name beside it as
/// fast as it can.
#[test]
fn the_file_a_rotation_opens_is_protected_too() {
    require_bpf_lsm();
    let scratch = Scratch::new("oxd-files-rotated");
    let policy = scratch.policy(
        "name = \"rotated\"\n[exec]\ndefault = \"allow\"\n[file]\ndefault = \"allow\"\ndeny = \
         [\"/etc/hostname\"]\n",
    );
    let log = scratch.path("audit.jsonl");
    let output = Command::new(oxd_bin())
        .args(["run", "--audit-max-bytes", "1024", "--policy"])
        .arg(&policy)
        .arg("--audit-log")
        .arg(&log)
        .arg("--")
        .arg(attack_bin())
        .args(["fs-rotation-race"])
        .arg(&log)
        .arg("/etc/hostname")
        .stdin(Stdio::null())
        .output()
        .expect("run oxd run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let steps: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON step"))
        .collect();
    let groups = vec![("race".to_owned(), steps)];
    assert_refused(&groups, "race", "append-to-the-log-after-rotation");
    assert_eq!(
        step(&groups, "race", "append-to-a-hidden-name-beside-it")["ok"],
        false,
        "{groups:#?}"
    );
    let records = all_records(&log);
    assert!(
        records.iter().all(|r| r.get("op").is_some()),
        "the logs hold only oxd's records"
    );
    assert!(
        protected_denials(&records, "open for writing") > 0,
        "no protected-write record: {records:#?}"
    );
    // Each rotation is a new file the guard protects and (once the oldest part goes) forgets:
    // more rotations than the guard has room for must not leave a file unguarded. A part holds
    // at most 1024 bytes, so at most 1024 / (shortest line) records.
    let last_seq = records
        .iter()
        .filter_map(|r| r["seq"].as_u64())
        .max()
        .expect("records");
    let shortest = all_lines(&log)
        .iter()
        .map(|l| l.len() + 1)
        .min()
        .expect("lines");
    let rotations = last_seq / (1024 / shortest) as u64;
    eprintln!("{last_seq} records, at least {rotations} rotations");
    let room = u64::from(oxd::oxd_common::MAX_PROTECTED_FILES);
    for part in std::iter::once(log.clone())
        .chain((1..=5).map(|n| Path::new(&format!("{}.{n}", log.display())).to_owned()))
    {
        let size = fs::metadata(&part).expect("the log and 5 parts").len();
        assert!(
            size <= 1024,
            "{} has {size} bytes: a rotation failed",
            part.display()
        );
    }
    assert!(
        rotations > room,
        "at least {rotations} rotations ({last_seq} records): more than the guard's {room} \
         files are needed to show it forgets deleted parts"
    );
}
