//! Attacks of the `kernel` family: see `tests/attacker/kernel.rs` for the techniques. The agent
//! runs as root inside `oxd run`, under a policy that allows every exec and every file (so only
//! the guard stands in the way): it acts on `oxd run` itself, tries to change the kernel, to
//! write a block device, and to make packet and raw sockets. Each test fails if the forbidden
//! effect happens, and checks the attempts' audit records.

use std::{
    fs,
    process::{Command, Output, Stdio},
};

use serde_json::Value;

use crate::{common::*, require_bpf_lsm};

/// A policy under which only the guard denies anything, plus `extra`.
fn open_policy(name: &str, extra: &str) -> String {
    format!("name = \"kernel-{name}\"\n[exec]\ndefault = \"allow\"\n[file]\ndefault = \"allow\"\n{extra}")
}

/// Runs the shell `script` (each attack line prefixed by `--- attack`, see [`attack_line`]) as
/// root in `oxd run` under `policy`; returns `oxd run`'s pid, its output, the steps each attack
/// printed, and the audit records.
fn run_script(
    scratch: &Scratch,
    policy: &str,
    attacks: &[String],
) -> (u32, Output, Vec<Vec<Value>>, Vec<Value>) {
    let policy = scratch.policy(policy);
    let log = scratch.path("audit.jsonl");
    let mut script = String::from("set -e\n");
    for line in attacks {
        script.push_str("echo '--- attack'\n");
        script.push_str(line);
        script.push('\n');
    }
    script.push_str("echo '--- end'\n");
    let child = oxd_run_command(&policy, &log, &["/bin/sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn oxd run");
    let pid = child.id();
    let output = child.wait_with_output().expect("wait for oxd run");
    eprintln!(
        "oxd run: {}\n--- stdout\n{}--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "oxd run or a technique failed: {:?}",
        output.status
    );
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut steps: Vec<Vec<Value>> = Vec::new();
    for line in stdout.lines() {
        if line == "--- attack" {
            steps.push(Vec::new());
        } else if line.starts_with('{') {
            let value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
            steps.last_mut().expect("a step after a header").push(value);
        }
    }
    assert_eq!(
        steps.len(),
        attacks.len(),
        "not every attack ran:\n{stdout}"
    );
    assert!(
        stdout.contains("--- end"),
        "the agent did not finish:\n{stdout}"
    );
    let records = audit_records(&log);
    assert_audit_log_verifies(&log);
    (pid, output, steps, records)
}

/// The shell line that runs `oxd-attack ARGS...` as root (ARGS are quoted unless they start
/// with `$`).
fn attack_line(args: &[&str]) -> String {
    let mut line = attack_bin().to_str().expect("utf-8 path").to_owned();
    for arg in args {
        if arg.starts_with('$') {
            line.push_str(&format!(" {arg}"));
        } else {
            line.push_str(&format!(" '{arg}'"));
        }
    }
    line
}

fn step<'a>(steps: &'a [Value], name: &str) -> &'a Value {
    steps
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {steps:?}"))
}

fn assert_step_eperm(steps: &[Value], name: &str) {
    let s = step(steps, name);
    assert!(
        s["ok"] == false && s["errno"] == EPERM,
        "{name} should fail with EPERM: {s}"
    );
}

fn assert_step_ok(steps: &[Value], name: &str) {
    let s = step(steps, name);
    assert_eq!(s["ok"], true, "{name} should succeed: {s}");
}

/// The records of `op` whose `field` is `value`.
fn records_with<'a>(records: &'a [Value], op: &str, field: &str, value: &Value) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["op"] == op && &r[field] == value)
        .collect()
}

/// Asserts at least one record of `op` with `field` = `value`, each a guard denial, enforced,
/// by root; returns them.
fn assert_guard_denied<'a>(
    records: &'a [Value],
    op: &str,
    field: &str,
    value: impl Into<Value>,
) -> Vec<&'a Value> {
    let value = value.into();
    let found = records_with(records, op, field, &value);
    assert!(
        !found.is_empty(),
        "no {op} record with {field} = {value}: {records:#?}"
    );
    for r in &found {
        assert_eq!(r["decision"], "deny", "{r}");
        assert_eq!(r["enforced"], true, "{r}");
        assert_eq!(r["rule"], "default", "{r}");
        assert!(
            r["reason"].as_str().is_some_and(|s| s.starts_with("guard")),
            "{r}"
        );
        assert_eq!(r["uid"], 0, "{r}");
    }
    found
}

/// A root agent cannot kill, stop, trace or reschedule `oxd run`: every attempt fails with
/// EPERM and is recorded, and `oxd run` lives on to record them and return the agent's status.
#[test]
fn root_agent_cannot_signal_trace_or_reschedule_oxd() {
    require_bpf_lsm();
    let scratch = Scratch::new("kernel-oxd-task");
    // The shell's parent is `oxd run`.
    let attacks = [attack_line(&["oxd-task", "$PPID"])];
    let (pid, _, steps, records) = run_script(&scratch, &open_policy("oxd-task", ""), &attacks);
    let steps = &steps[0];
    for name in [
        "kill-9",
        "kill-stop",
        "pidfd-kill",
        "tgkill",
        "ptrace-attach",
        "ptrace-seize",
        "process-vm-readv",
        "setpriority",
        "ioprio-set",
        "sched-setscheduler",
        "sched-setaffinity",
    ] {
        assert_step_eperm(steps, name);
    }
    assert_step_ok(steps, "pidfd-open");
    assert_step_ok(steps, "alive");
    let signals = assert_guard_denied(&records, "signal", "peer_pid", pid);
    for sig in [9, 19, 15] {
        assert!(
            signals.iter().any(|r| r["detail"] == sig),
            "no signal {sig} record: {signals:#?}"
        );
    }
    assert_eq!(signals[0]["target"], format!("pid {pid}"));
    assert_guard_denied(&records, "ptrace", "peer_pid", pid);
    let sched = assert_guard_denied(&records, "sched", "peer_pid", pid);
    for hook in [1, 2, 3] {
        assert!(
            sched.iter().any(|r| r["detail"] == hook),
            "no sched record for hook {hook}: {sched:#?}"
        );
    }
}

/// Whether `lo` holds 10.213.9.9 (the address the netlink attack tries to add).
fn lo_has_attack_address() -> bool {
    let out = Command::new("ip")
        .args(["-4", "addr", "show", "dev", "lo"])
        .output()
        .expect("run ip");
    String::from_utf8_lossy(&out.stdout).contains("10.213.9.9")
}

/// A root agent cannot load or unload a kernel module, kexec, reboot, reach raw memory or I/O
/// ports, make a device node, change the network's configuration or the clock: each attempt
/// fails with EPERM (not the error the kernel would give otherwise) and is recorded with the
/// capability the kernel checked; module autoloading on its behalf is refused and recorded.
#[test]
fn root_agent_cannot_change_the_kernel() {
    require_bpf_lsm();
    let scratch = Scratch::new("kernel-load");
    let image = scratch.path("not-a-module");
    fs::write(&image, b"\x7fELF but not a module").expect("write the file");
    let dir = scratch.path("");
    let attacks = [attack_line(&[
        "kernel",
        image.to_str().expect("utf-8"),
        dir.to_str().expect("utf-8"),
    ])];
    let (_, _, steps, records) = run_script(&scratch, &open_policy("load", ""), &attacks);
    let steps = &steps[0];
    let by_cap: [(&[&str], u32, &str); 6] = [
        (
            &["finit-module", "init-module", "delete-module"],
            16,
            "CAP_SYS_MODULE",
        ),
        (&["kexec-file-load", "reboot-cad-off"], 22, "CAP_SYS_BOOT"),
        (
            &["open-dev-mem", "open-dev-port", "open-kcore", "iopl"],
            17,
            "CAP_SYS_RAWIO",
        ),
        (&["mknod-blk"], 27, "CAP_MKNOD"),
        (&["rcvbufforce", "netlink-newaddr"], 12, "CAP_NET_ADMIN"),
        (&["clock-settime"], 25, "CAP_SYS_TIME"),
    ];
    for (names, cap, name) in by_cap {
        for step_name in names {
            assert_step_eperm(steps, step_name);
        }
        let found = assert_guard_denied(&records, "capability", "detail", cap);
        assert_eq!(found[0]["target"], name);
    }
    assert!(
        !scratch.path("blk").exists(),
        "the block device node was made"
    );
    assert!(!lo_has_attack_address(), "the agent added an address to lo");
    // socket(AF_APPLETALK): the family's module would be loaded on the agent's behalf.
    assert_eq!(step(steps, "module-autoload")["ok"], false);
    let requests = assert_guard_denied(&records, "module-request", "target", "net-pf-5");
    assert_eq!(requests[0]["decision"], "deny");
}

/// Loading an IMA policy named by path (the one load into the kernel that checks no capability
/// first; module and kexec loads are refused earlier, by their capability) is refused and
/// recorded. The agent's write to `/sys/kernel/security/ima/policy` is refused when it opens
/// securityfs for writing (`kernel-fs-write`), before the kernel would read the file (where
/// `kernel_read_file` would refuse it next: no agent action reaches that hook any more).
#[test]
fn root_agent_cannot_load_an_ima_policy() {
    require_bpf_lsm();
    assert!(
        std::path::Path::new("/sys/kernel/security/ima/policy").exists(),
        "this test needs a kernel with IMA (/sys/kernel/security/ima/policy), as Debian's have"
    );
    let scratch = Scratch::new("kernel-ima");
    let policy_file = scratch.path("ima-policy");
    fs::write(&policy_file, "dont_measure fsmagic=0x9fa0\n").expect("write the IMA policy");
    let attacks = [attack_line(&[
        "ima-policy",
        policy_file.to_str().expect("utf-8"),
    ])];
    let (_, _, steps, records) = run_script(&scratch, &open_policy("ima", ""), &attacks);
    assert_step_eperm(&steps[0], "ima-policy");
    let found = assert_guard_denied(&records, "kernel-fs-write", "target", "securityfs");
    assert_eq!(found[0]["detail"], 0x7363_6673, "securityfs's magic");
}

/// A block device node, made outside the agent (on devtmpfs: the guest's /tmp is `nodev`),
/// removed when dropped.
struct BlockNode(std::path::PathBuf);

impl BlockNode {
    fn new() -> Self {
        let path = std::path::PathBuf::from(format!("/dev/oxd-test-blk-{}", std::process::id()));
        let status = Command::new("mknod")
            .arg(&path)
            .args(["b", "7", "0"])
            .status()
            .expect("run mknod");
        assert!(status.success(), "cannot make {}", path.display());
        Self(path)
    }
}

impl Drop for BlockNode {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// A root agent cannot open a block device for writing whatever the file rules allow: EPERM
/// before the driver is asked (which would say ENXIO: there is no loop device 0 here), and
/// recorded with the device number. Opening it for reading is left to the file rules.
#[test]
fn root_agent_cannot_open_a_block_device_for_writing() {
    require_bpf_lsm();
    let scratch = Scratch::new("kernel-blk");
    let node = BlockNode::new();
    let attacks = [attack_line(&[
        "device-open",
        node.0.to_str().expect("utf-8"),
    ])];
    let (_, _, steps, records) = run_script(&scratch, &open_policy("blk", ""), &attacks);
    assert_step_eperm(&steps[0], "open-write");
    let read = step(&steps[0], "open-read");
    assert!(
        read["ok"] == true || read["errno"] != EPERM,
        "a read-only open is not the guard's: {read}"
    );
    let found = assert_guard_denied(&records, "device-write", "target", "block 7:0");
    assert_eq!(found[0]["detail"], 7 << 20);
}

/// Packet sockets, and raw inet sockets under a policy without `[network]`, are denied to a root
/// agent unless the policy allows raw sockets; under `[network]` the raw inet socket is the
/// cgroup hook's (decided by the `raw` switch, as before).
#[test]
fn packet_and_raw_sockets_need_the_policys_raw_switch() {
    require_bpf_lsm();
    let attacks = [attack_line(&["raw-sockets"])];
    let network = "[network]\ndefault = \"deny\"\n[[network.allow]]\ncidr = \"127.0.0.0/8\"\n";
    let packet = "packet raw proto 768";

    // No [network]: the guard denies both kinds.
    let scratch = Scratch::new("kernel-raw-none");
    let (_, _, steps, records) = run_script(&scratch, &open_policy("raw-none", ""), &attacks);
    for name in ["packet", "raw4", "raw6"] {
        assert_step_eperm(&steps[0], name);
    }
    assert!(steps[0].iter().all(|s| s["step"] != "packet-send"));
    for target in [packet, "ipv4 raw proto 1", "ipv6 raw proto 58"] {
        let found = assert_guard_denied(&records, "socket", "target", target);
        assert_eq!(found[0]["protocol"], "raw");
    }

    // A coding-agent-like [network]: the packet socket by the guard, raw ones by the policy.
    let scratch = Scratch::new("kernel-raw-net");
    let (_, _, steps, records) = run_script(&scratch, &open_policy("raw-net", network), &attacks);
    for name in ["packet", "raw4", "raw6"] {
        assert_step_eperm(&steps[0], name);
    }
    assert_guard_denied(&records, "socket", "target", packet);
    for target in ["ipv4 raw proto 1", "ipv6 raw proto 58"] {
        let found = records_for(&records, "socket", target);
        assert_eq!(found.len(), 1, "{records:#?}");
        assert_eq!(found[0]["decision"], "deny");
        assert_eq!(found[0]["reason"], "default");
    }

    // raw = "allow": everything is made, and the packet socket sends.
    let scratch = Scratch::new("kernel-raw-allow");
    let allow = "[network]\ndefault = \"deny\"\nraw = \"allow\"\n\
                 [[network.allow]]\ncidr = \"127.0.0.0/8\"\n";
    let (_, _, steps, records) = run_script(&scratch, &open_policy("raw-allow", allow), &attacks);
    for name in ["packet", "packet-send", "raw4", "raw6"] {
        assert_step_ok(&steps[0], name);
    }
    assert!(
        records
            .iter()
            .all(|r| r["op"] != "socket" || r["decision"] == "allow"),
        "{records:#?}"
    );
}
