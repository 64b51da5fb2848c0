//! The whole promise at once (issue 9, "Done when"): an unprivileged agent under
//! `policies/coding-agent.toml`, as shipped, tries one thing of each kind the policy denies: run
//! a denied program, read a denied file, change a file outside its write rules, reach a denied
//! address by any socket, act through a process, a socket or a terminal outside its cgroup. Each
//! attempt must fail, have no effect, and be in the audit log; the things the policy allows must
//! still work.
//!
//! Two substitutions only, both of them what a user of the policy does: the workspace
//! (`/workspace`) is a scratch directory, and the test's attack program is allowed to run. The
//! files it must not change live in `/dev/shm` (writable by everyone, named by no write rule);
//! the address it must not reach is one the test adds to the loopback device.

use std::{
    fs,
    io::ErrorKind,
    net::{TcpListener, UdpSocket},
    os::unix::{
        fs::{MetadataExt as _, PermissionsExt as _},
        net::UnixListener,
        process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use super::ipc::{openpty, pending_input};
use crate::{common::*, require_bpf_lsm};

const NOBODY: u32 = 65534;
const SSH_CONFIG: &str = "/etc/ssh/ssh_config";
const KEEP: &str = "kept as it was\n";

/// `policies/coding-agent.toml` with the workspace moved to `workspace` and `attack` allowed.
fn coding_agent_policy(workspace: &Path, attack: &Path) -> String {
    let text = fs::read_to_string(repo().join("policies/coding-agent.toml"))
        .expect("read policies/coding-agent.toml");
    let allow_exec = "allow = [\n    \"/usr/bin/**\",";
    assert!(
        text.contains(allow_exec),
        "the exec allow list changed shape"
    );
    assert!(
        text.contains("\"/workspace/**\""),
        "the workspace rule changed shape"
    );
    text.replacen(
        allow_exec,
        &format!("{allow_exec}\n    \"{}\",", attack.display()),
        1,
    )
    .replace(
        "\"/workspace/**\"",
        &format!("\"{}/**\"", workspace.display()),
    )
}

/// An address the policy does not name, on the guest's loopback device (so the test's traffic
/// never leaves the machine): 10.213.0.2/32 on `lo`, removed when dropped.
struct DeniedAddress;

impl DeniedAddress {
    const IP: &'static str = "10.213.0.2";

    fn add() -> Self {
        let status = Command::new("ip")
            .args(["addr", "add", "10.213.0.2/32", "dev", "lo"])
            .status()
            .expect("run ip");
        assert!(status.success(), "cannot add {} to lo: {status}", Self::IP);
        Self
    }
}

impl Drop for DeniedAddress {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["addr", "del", "10.213.0.2/32", "dev", "lo"])
            .status();
    }
}

/// The agent's output: `== LABEL` lines, each followed by its JSON step lines.
pub(crate) fn groups(stdout: &str) -> Vec<(String, Vec<Value>)> {
    let mut out: Vec<(String, Vec<Value>)> = Vec::new();
    for line in stdout.lines() {
        if let Some(label) = line.strip_prefix("== ") {
            out.push((label.to_owned(), Vec::new()));
        } else if line.starts_with('{') {
            let value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("bad step line {line:?}: {e}"));
            out.last_mut()
                .unwrap_or_else(|| panic!("step before any label: {line}"))
                .1
                .push(value);
        }
    }
    out
}

/// The step `step` of the attempt `label`.
pub(crate) fn step<'a>(groups: &'a [(String, Vec<Value>)], label: &str, step: &str) -> &'a Value {
    let (_, steps) = groups
        .iter()
        .find(|(l, _)| l == label)
        .unwrap_or_else(|| panic!("the agent did not run {label}: {groups:#?}"));
    steps
        .iter()
        .find(|s| s["step"] == step)
        .unwrap_or_else(|| panic!("{label} reported no {step} step: {steps:#?}"))
}

pub(crate) fn assert_refused(groups: &[(String, Vec<Value>)], label: &str, name: &str) {
    let s = step(groups, label, name);
    assert_eq!(s["ok"], false, "{label}: {name} must be refused: {s}");
    if let Some(errno) = s.get("errno") {
        assert_eq!(*errno, EPERM, "{label}: {name} must fail with EPERM: {s}");
    }
}

pub(crate) fn assert_worked(groups: &[(String, Vec<Value>)], label: &str, name: &str) {
    let s = step(groups, label, name);
    assert_eq!(s["ok"], true, "{label}: {name} must work: {s}");
}

/// At least one enforced deny of `op` whose target satisfies `target`, by the agent's uid
/// `uid`.
fn assert_denied_by(uid: u32, records: &[Value], op: &str, target: impl Fn(&str) -> bool) {
    let found: Vec<_> = records
        .iter()
        .filter(|r| r["op"] == op && r["target"].as_str().is_some_and(&target))
        .collect();
    assert!(
        !found.is_empty(),
        "no {op} record for the attempt in {records:#?}"
    );
    for r in found {
        assert_eq!(r["decision"], "deny", "{r}");
        assert_eq!(r["enforced"], true, "{r}");
        assert_eq!(r["uid"], uid, "{r}");
        assert_eq!(r["policy"], "coding-agent", "{r}");
    }
}

#[test]
fn an_agent_under_the_coding_agent_policy_cannot_route_around_it() {
    coding_agent_scenario(NOBODY, "", |_, _| {});
}

/// What the agent did: its attempts (`== LABEL` groups) and the audit records.
pub(crate) type Outcome<'a> = (&'a [(String, Vec<Value>)], &'a [Value]);

/// The scenario, as uid `uid` (0: a root agent, started by `oxd run` as it is; otherwise
/// dropped to `uid` with `setpriv`), with `extra` appended to the agent's script (`$A` is the
/// attack program, `$W` the workspace, `$O` the directory it must not change; `label` and
/// `try` as in the script) and `check` run on the outcome after the common checks.
#[allow(clippy::too_many_lines)] // one scenario, checked attempt by attempt
pub(crate) fn coding_agent_scenario(uid: u32, extra: &str, check: impl FnOnce(Outcome<'_>, &Path)) {
    require_bpf_lsm();
    assert!(
        Path::new(SSH_CONFIG).exists(),
        "the test reads {SSH_CONFIG}, a file every user may read and the policy denies"
    );
    let scratch = Scratch::new("agent");
    fs::set_permissions(scratch.path(""), fs::Permissions::from_mode(0o755)).expect("chmod");
    let workspace = scratch.path("workspace");
    fs::create_dir(&workspace).expect("mkdir workspace");
    fs::set_permissions(&workspace, fs::Permissions::from_mode(0o777)).expect("chmod");
    let policy = scratch.policy(&coding_agent_policy(&workspace, &attack_bin()));
    let log = scratch.path("audit.jsonl");

    // What the agent must not change: its own files, outside the write rules.
    let outside = PathBuf::from(format!("/dev/shm/oxd-agent-{}", std::process::id()));
    let _ = fs::remove_dir_all(&outside);
    fs::create_dir(&outside).expect("mkdir in /dev/shm");
    let keep = outside.join("keep");
    fs::write(&keep, KEEP).expect("write keep");
    fs::set_permissions(&keep, fs::Permissions::from_mode(0o644)).expect("chmod keep");
    for path in [&outside, &keep] {
        std::os::unix::fs::chown(path, Some(uid), Some(uid)).expect("chown to the agent's uid");
    }
    let keep_mode = fs::metadata(&keep).expect("stat keep").mode();

    // What the agent must not reach: a server outside its cgroup, an unconfined process of its
    // own uid, an address the network rules do not name, the caller's terminal.
    let socket_path = outside.join("server.sock");
    let unix_server = UnixListener::bind(&socket_path).expect("bind the Unix server");
    unix_server.set_nonblocking(true).expect("nonblocking");
    fs::set_permissions(&socket_path, fs::Permissions::from_mode(0o777)).expect("chmod sock");
    let mut victim = Command::new("sleep");
    victim.arg("600").uid(uid).gid(uid).stdin(Stdio::null());
    let mut victim = KillOnDrop(victim.spawn().expect("start the victim"));
    let _denied_address = DeniedAddress::add();
    // Ping sockets open to every group, as systemd sets it: only oxd refuses the agent's.
    let _ping_range = super::net::PingRange::open_to_all();
    let receiver = UdpSocket::bind((DeniedAddress::IP, 0)).expect("bind the receiver");
    let denied_udp = receiver.local_addr().expect("receiver address");
    let local = TcpListener::bind("127.0.0.1:0").expect("bind a loopback listener");
    let local_port = local.local_addr().expect("listener address").port();
    let (_master, slave) = openpty();

    let script = scratch.path("agent.sh");
    fs::write(
        &script,
        format!(
            r#"A='{attack}'; W='{workspace}'; O='{outside}'
label() {{ echo "== $1"; }}
try() {{ n=$1; shift; if "$@" 2>/dev/null; then echo "{{\"step\":\"$n\",\"ok\":true}}"; else echo "{{\"step\":\"$n\",\"ok\":false}}"; fi; }}
label allowed
try write sh -c "echo ok > $W/ok"
try git git --version
"$A" tcp 127.0.0.1:{local_port} hello
label exec; "$A" exec /usr/bin/mount --version
label copy-exec; "$A" copy-exec /usr/bin/mount "$W/mount" --version
label memfd-exec; "$A" memfd-exec /usr/bin/mount --version
label read
try cat sh -c "cat {SSH_CONFIG} > $W/stolen"
try cat-symlink sh -c "ln -s {SSH_CONFIG} $W/alias && cat $W/alias >> $W/stolen"
label write
try create sh -c "echo pwned > $O/new"
try append sh -c "echo pwned >> $O/keep"
try truncate truncate -s 0 "$O/keep"
try unlink rm -f "$O/keep"
try rename mv "$O/keep" "$O/moved"
try chmod chmod 666 "$O/keep"
try mkdir mkdir "$O/dir"
try symlink ln -s keep "$O/sym"
label network
"$A" ping 127.0.0.1 ping-token
"$A" udp-sendto {denied_udp} udp-token
"$A" tcp {inside}:443 tcp-token
label unix; "$A" unix-connect "$O/server.sock"
label signal; "$A" kill {victim_pid} 15
label tiocsti; "$A" tiocsti 'id>/tmp/pwned
'
label userns; try unshare unshare -U true
{extra}
"#,
            attack = attack_bin().display(),
            workspace = workspace.display(),
            outside = outside.display(),
            inside = DeniedAddress::IP,
            victim_pid = victim.0.id(),
        ),
    )
    .expect("write the agent's script");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).expect("chmod script");

    // An ordinary user's agent is dropped to its uid by `oxd run --user` (the recommended
    // setup); a root agent runs as oxd started it.
    let mut cmd = Command::new(oxd_bin());
    cmd.arg("run");
    if uid != 0 {
        cmd.arg("--user").arg(format!("{uid}:{uid}"));
    }
    cmd.arg("--policy")
        .arg(&policy)
        .arg("--audit-log")
        .arg(&log)
        .arg("--")
        .arg("/bin/sh")
        .arg(&script);
    cmd.stdin(Stdio::from(slave.try_clone().expect("dup the slave")));
    let output = cmd.output().expect("run oxd run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!(
        "--- stdout\n{stdout}--- stderr\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "oxd run failed: {}", output.status);
    let groups = groups(&stdout);
    let records = audit_records(&log);

    // What the policy allows still works.
    assert_worked(&groups, "allowed", "write");
    assert_worked(&groups, "allowed", "git");
    assert_worked(&groups, "allowed", "connect");
    assert_eq!(
        fs::read_to_string(workspace.join("ok")).expect("the workspace file"),
        "ok\n"
    );

    // A denied program, directly, copied into the workspace, or from memory.
    for label in ["exec", "copy-exec"] {
        assert_refused(&groups, label, "exec");
    }
    assert_refused(&groups, "memfd-exec", "memfd-mmap-exec");
    assert_refused(&groups, "memfd-exec", "memfd-fexecve");
    assert_worked(&groups, "copy-exec", "copy");
    assert_denied_by(uid, &records, "exec", |t| t == "/usr/bin/mount");
    let copy = workspace.join("mount");
    assert_denied_by(uid, &records, "exec", |t| Path::new(t) == copy);
    assert_denied_by(uid, &records, "exec", |t| t.starts_with("/memfd:"));

    // A denied file, directly and through a symlink.
    assert_refused(&groups, "read", "cat");
    assert_refused(&groups, "read", "cat-symlink");
    let secret = fs::read_to_string(SSH_CONFIG).expect("read ssh_config as root");
    let stolen = fs::read_to_string(workspace.join("stolen")).unwrap_or_default();
    assert!(
        secret.is_empty() || !stolen.contains(secret.trim()),
        "the agent read {SSH_CONFIG}"
    );
    assert_denied_by(uid, &records, "open", |t| t == SSH_CONFIG);

    // Changes outside the write rules: every attempt refused, nothing changed.
    for name in [
        "create", "append", "truncate", "unlink", "rename", "chmod", "mkdir", "symlink",
    ] {
        assert_refused(&groups, "write", name);
    }
    assert_eq!(
        fs::read_to_string(&keep).expect("keep is still there"),
        KEEP
    );
    assert_eq!(fs::metadata(&keep).expect("stat keep").mode(), keep_mode);
    for gone in ["new", "moved", "dir", "sym"] {
        assert!(
            fs::symlink_metadata(outside.join(gone)).is_err(),
            "{gone} was made outside the write rules"
        );
    }
    let at = |name: &str| {
        let path = outside.join(name);
        move |t: &str| Path::new(t) == path
    };
    assert_denied_by(uid, &records, "create", at("new"));
    assert_denied_by(uid, &records, "open", at("keep"));
    assert_denied_by(uid, &records, "unlink", at("keep"));
    assert_denied_by(uid, &records, "rename-from", at("keep"));
    assert_denied_by(uid, &records, "chmod", at("keep"));
    assert_denied_by(uid, &records, "mkdir", at("dir"));
    assert_denied_by(uid, &records, "symlink", at("sym"));

    // Denied addresses, by ICMP, UDP and TCP.
    assert_refused(&groups, "network", "socket");
    assert_refused(&groups, "network", "sendto");
    let connect = step(&groups, "network", "connect");
    assert_eq!(
        connect["errno"], EPERM,
        "TCP to a denied address: {connect}"
    );
    assert_denied_by(uid, &records, "socket", |t| t == "ipv4 dgram proto 1");
    let udp_target = denied_udp.to_string();
    assert_denied_by(uid, &records, "sendmsg", |t| t == udp_target);
    let tcp_target = format!("{}:443", DeniedAddress::IP);
    assert_denied_by(uid, &records, "connect", |t| t == tcp_target);
    // A datagram sent now from outside the confinement arrives; one the agent got through
    // would be ahead of it (both go through the loopback device's queue).
    UdpSocket::bind(("127.0.0.1", 0))
        .and_then(|s| s.send_to(b"control", denied_udp))
        .expect("send the control datagram");
    receiver
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    let n = receiver.recv(&mut buf).expect("the control datagram");
    assert_eq!(
        &buf[..n],
        b"control",
        "the agent's datagram reached the namespace"
    );

    // Acting through others: a Unix server, a process of the same uid, the terminal.
    assert_refused(&groups, "unix", "connect");
    match unix_server.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the Unix server outside was reached: {other:?}"),
    }
    let sock = socket_path.to_str().expect("utf-8").to_owned();
    assert_denied_by(uid, &records, "unix-connect", |t| t == sock);
    assert_refused(&groups, "signal", "kill");
    assert!(
        victim.0.try_wait().expect("poll the victim").is_none(),
        "the agent's signal killed a process outside its cgroup"
    );
    let victim_target = format!("pid {}", victim.0.id());
    assert_denied_by(uid, &records, "signal", |t| t == victim_target);
    assert_refused(&groups, "tiocsti", "tiocsti");
    let pending = pending_input(&slave);
    assert!(
        pending.is_empty(),
        "input was pushed into the caller's terminal: {:?}",
        String::from_utf8_lossy(&pending)
    );
    assert_denied_by(uid, &records, "tty-inject", |t| t == "TIOCSTI");

    // A user namespace, the first step of every path rewrite.
    assert_refused(&groups, "userns", "unshare");
    assert_denied_by(uid, &records, "userns-create", |_| true);

    check((&groups, &records), &outside);
    let _ = fs::remove_dir_all(&outside);
}

/// Issue 10, "Done when": a root agent under `policies/coding-agent.toml` fails every technique
/// an ordinary user's agent fails, and every way root has to switch oxd off or leave its
/// confinement: out of its cgroup, a sysctl that makes the kernel start a program outside it,
/// a bind mount, chroot or the new mount API, a raw socket, signals to or ptrace of `oxd run`
/// and its watchdog. Each attempt fails and is recorded; `oxd run` keeps recording to the end.
#[test]
fn a_root_agent_under_the_coding_agent_policy_cannot_switch_oxd_off() {
    let core_pattern = fs::read_to_string("/proc/sys/kernel/core_pattern").expect("read");
    let extra = r#"label root
echo "{\"step\":\"oxd\",\"ok\":true,\"pid\":$PPID}"
label root-cgroup
try escape sh -c 'echo $$ > /sys/fs/cgroup/cgroup.procs'
sh -c 'echo $$ > /sys/fs/cgroup/cgroup.procs 2>/dev/null; echo "{\"step\":\"where\",\"ok\":true,\"cgroup\":\"$(cat /proc/self/cgroup)\"}"'
label root-sysctl
try core-pattern sh -c "echo '|/bin/false' > /proc/sys/kernel/core_pattern"
label root-mount
mkdir -p "$W/public" && echo public > "$W/public/key"
"$A" ns-bind-read "$O" "$W/public" keep
"$A" ns-chroot-read "$O" keep
mkdir -p "$W/m"; "$A" ns-new-mount-api "$W/m"
label root-raw
"$A" raw 127.0.0.1 raw-token
label root-oxd
"$A" kill $PPID 19
"$A" kill $PPID 18
"$A" kill $PPID 9
"$A" ptrace-attach $PPID
label root-watchdog
"$A" kill "$(pgrep -x -P $PPID oxd-watchdog)" 9
"#;
    coding_agent_scenario(0, extra, |(groups, records), _outside| {
        let oxd_pid = step(groups, "root", "oxd")["pid"]
            .as_u64()
            .expect("the agent named oxd's pid");
        // Still in its cgroup, below oxd's.
        assert_refused(groups, "root-cgroup", "escape");
        let cgroup = step(groups, "root-cgroup", "where")["cgroup"]
            .as_str()
            .expect("the agent's cgroup")
            .to_owned();
        assert!(
            cgroup.contains("/oxd/run-"),
            "the agent left its cgroup: {cgroup}"
        );
        assert_refused(groups, "root-sysctl", "core-pattern");
        assert_eq!(
            fs::read_to_string("/proc/sys/kernel/core_pattern").expect("read"),
            core_pattern,
            "the agent changed kernel.core_pattern"
        );
        assert_refused(groups, "root-mount", "bind-mount");
        assert_refused(groups, "root-mount", "chroot");
        assert_refused(groups, "root-mount", "move-mount");
        assert_refused(groups, "root-raw", "socket");
        assert_refused(groups, "root-oxd", "kill");
        assert_refused(groups, "root-oxd", "ptrace-attach");
        assert_refused(groups, "root-watchdog", "kill");
        let guarded = |op: &str, target: &dyn Fn(&str) -> bool| {
            assert_denied_by(0, records, op, target);
        };
        guarded("mount", &|t| t.ends_with("/public"));
        guarded("move-mount", &|_| true);
        guarded("socket", &|t| t == "ipv4 raw proto 1");
        let oxd_target = format!("pid {oxd_pid}");
        guarded("signal", &|t| t == oxd_target);
        guarded("ptrace", &|t| t == oxd_target);
        assert!(
            records
                .iter()
                .any(|r| r["reason"].as_str().is_some_and(|s| s.starts_with("guard"))),
            "no guard record: {records:#?}"
        );
    });
}
