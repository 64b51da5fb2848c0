//! Attacks of the `net` family: see `tests/attacker/net.rs` for the techniques. Each test runs
//! them as an ordinary user (uid 65534) inside `oxd run`, against listeners this test holds on
//! loopback outside the agent's cgroup: it fails if a listener receives what the policy denies
//! (a connection, a datagram, an echo request carrying the attack's token), and checks the
//! attempt's audit record. Each also sends to an allowed listener the same way, so a technique
//! that reaches nothing at all cannot pass for a denial.

use std::{
    io::{ErrorKind, Read as _},
    net::{SocketAddr, TcpListener, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    process::Output,
    sync::Mutex,
    time::Duration,
};

use serde_json::Value;

use crate::common::*;

/// The ordinary user the agent runs as.
const AGENT: &str = "65534:65534";

/// A token no other traffic carries.
fn token(name: &str) -> String {
    format!("oxd-attack-{name}-{}", std::process::id())
}

/// Runs `attacks` (each `[technique, args...]`, as `AGENT` unless `as_root`) one after the
/// other inside one `oxd run` under `policy`; returns the steps each printed and the audit
/// records.
fn run_attacks(
    scratch: &Scratch,
    policy: &str,
    attacks: &[Vec<String>],
    as_root: bool,
) -> (Vec<Vec<Value>>, Vec<Value>) {
    let policy = scratch.policy(policy);
    let log = scratch.path("audit.jsonl");
    let attack = attack_bin();
    let attack = attack.to_str().expect("utf-8 path");
    let mut script = String::from("set -e\n");
    for args in attacks {
        script.push_str("echo '--- attack'\n");
        script.push_str(attack);
        if !as_root {
            script.push_str(&format!(" --as {AGENT}"));
        }
        for arg in args {
            script.push_str(&format!(" '{arg}'"));
        }
        script.push('\n');
    }
    let output = oxd_run(&policy, &log, &["/bin/sh", "-c", &script]);
    assert!(
        output.status.success(),
        "oxd run or a technique failed: {:?}",
        output.status
    );
    (steps(&output, attacks.len()), audit_records(&log))
}

/// The steps each attack printed, in order.
fn steps(output: &Output, attacks: usize) -> Vec<Vec<Value>> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut out: Vec<Vec<Value>> = Vec::new();
    for line in stdout.lines() {
        if line == "--- attack" {
            out.push(Vec::new());
        } else if line.starts_with('{') {
            let value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
            out.last_mut().expect("a step after a header").push(value);
        }
    }
    assert_eq!(out.len(), attacks, "not every attack ran:\n{stdout}");
    out
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

/// Asserts `count` records for (op, target), each a denial enforced by `rule`.
fn assert_denied(records: &[Value], op: &str, target: &str, rule: &str, count: usize) {
    let found = records_for(records, op, target);
    assert_eq!(
        found.len(),
        count,
        "expected {count} {op} records for {target}, got {found:#?}\nall: {records:#?}"
    );
    for r in found {
        assert_eq!(r["decision"], "deny", "{r}");
        assert_eq!(r["enforced"], true, "{r}");
        assert_eq!(r["rule"], rule, "{r}");
    }
}

fn attack(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

/// A TCP listener on `ip` (any port), non-blocking: what the agent must not reach.
fn tcp_listener(ip: &str) -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind((ip, 0)).expect("listen on loopback");
    listener.set_nonblocking(true).expect("non-blocking");
    let addr = listener.local_addr().expect("its address");
    (listener, addr)
}

/// Whether a connection is waiting on `listener` (it stays queued after the client is gone).
fn tcp_reached(listener: &TcpListener) -> bool {
    match listener.accept() {
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(e) => panic!("accept: {e}"),
    }
}

fn udp_listener(ip: &str) -> (UdpSocket, SocketAddr) {
    let socket = UdpSocket::bind((ip, 0)).expect("bind on loopback");
    socket.set_nonblocking(true).expect("non-blocking");
    let addr = socket.local_addr().expect("its address");
    (socket, addr)
}

/// The datagrams waiting on `socket`.
fn udp_received(socket: &UdpSocket) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    loop {
        match socket.recv(&mut buf) {
            Ok(n) => out.push(buf[..n].to_vec()),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return out,
            Err(e) => panic!("recv: {e}"),
        }
    }
}

/// A raw ICMP (or `ICMPv6`) socket of the test, outside the agent's cgroup: it gets a copy of
/// every ICMP packet on the host, whoever sent it, and keeps them.
struct IcmpWatch(OwnedFd, std::cell::RefCell<Vec<Vec<u8>>>);

impl IcmpWatch {
    fn new(ipv6: bool) -> Self {
        let (family, protocol) = if ipv6 {
            (libc::AF_INET6, libc::IPPROTO_ICMPV6)
        } else {
            (libc::AF_INET, libc::IPPROTO_ICMP)
        };
        // SAFETY: plain system call; the descriptor is owned from here on.
        let fd = unsafe {
            libc::socket(
                family,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        assert!(
            fd >= 0,
            "raw ICMP socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `fd` is new and ours.
        Self(
            unsafe { OwnedFd::from_raw_fd(fd) },
            std::cell::RefCell::default(),
        )
    }

    /// Whether any packet received so far carries `token`.
    fn saw(&self, token: &str) -> bool {
        let mut buf = [0u8; 2048];
        let mut packets = self.1.borrow_mut();
        loop {
            // SAFETY: the buffer is valid for its length.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            let Ok(n) = usize::try_from(n) else {
                let e = std::io::Error::last_os_error();
                assert_eq!(e.kind(), ErrorKind::WouldBlock, "recv: {e}");
                return packets
                    .iter()
                    .any(|p| p.windows(token.len()).any(|w| w == token.as_bytes()));
            };
            packets.push(buf[..n].to_vec());
        }
    }
}

/// Serialises the tests that change `ping_group_range`.
static PING_RANGE: Mutex<()> = Mutex::new(());

/// Lets every group make ping sockets (as systemd sets `net.ipv4.ping_group_range`) while it
/// lives; restores the setting when dropped. IPv4 and IPv6 ping sockets share the setting. The
/// differential test uses it too.
pub(crate) struct PingRange {
    saved: String,
    _lock: std::sync::MutexGuard<'static, ()>,
}

const PING_RANGE_PATH: &str = "/proc/sys/net/ipv4/ping_group_range";

impl PingRange {
    pub(crate) fn open_to_all() -> Self {
        let lock = PING_RANGE
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let saved = std::fs::read_to_string(PING_RANGE_PATH).expect("read ping_group_range");
        std::fs::write(PING_RANGE_PATH, "0 2147483647").expect("set ping_group_range");
        Self { saved, _lock: lock }
    }
}

impl Drop for PingRange {
    fn drop(&mut self) {
        let _ = std::fs::write(PING_RANGE_PATH, self.saved.trim());
    }
}

#[test]
fn ping_socket_under_default_deny_sends_nothing_and_is_recorded() {
    let _range = PingRange::open_to_all();
    let scratch = Scratch::new("net-ping");
    let watch4 = IcmpWatch::new(false);
    let watch6 = IcmpWatch::new(true);
    let (denied4, denied6) = (token("ping4-denied"), token("ping6-denied"));
    let attacks = [
        attack(&["ping", "127.0.0.1", &denied4]),
        attack(&["ping", "::1", &denied6]),
    ];
    let policy = "name = \"net-ping\"\n[network]\ndefault = \"deny\"\n";
    let (steps, records) = run_attacks(&scratch, policy, &attacks, false);
    for s in &steps {
        assert_step_eperm(s, "socket");
    }
    assert!(!watch4.saw(&denied4), "an ICMP echo left the ping socket");
    assert!(!watch6.saw(&denied6), "an ICMPv6 echo left the ping socket");
    assert_denied(&records, "socket", "ipv4 dgram proto 1", "default", 1);
    assert_denied(&records, "socket", "ipv6 dgram proto 58", "default", 1);
    for r in records_for(&records, "socket", "ipv4 dgram proto 1") {
        assert_eq!(r["protocol"], "icmp", "{r}");
        assert_eq!(r["uid"], 65534, "{r}");
    }

    // The control: with `icmp = "allow"` the same echo requests go out, and are recorded.
    let (allowed4, allowed6) = (token("ping4-allowed"), token("ping6-allowed"));
    let connected = token("ping4-connected");
    let attacks = [
        attack(&["ping", "127.0.0.1", &allowed4]),
        attack(&["ping", "::1", &allowed6]),
        // Its connect passes `connect4` (kernels from 6.0) and is decided by the same switch.
        attack(&["ping-connect", "127.0.0.1", &connected]),
    ];
    let policy = "name = \"net-ping\"\n[network]\ndefault = \"deny\"\nicmp = \"allow\"\n";
    let (steps, records) = run_attacks(&Scratch::new("net-ping-allowed"), policy, &attacks, false);
    for s in &steps[..2] {
        assert_step_ok(s, "sendto");
    }
    assert_step_ok(&steps[2], "send");
    assert!(watch4.saw(&allowed4), "the allowed ICMP echo was not seen");
    assert!(
        watch6.saw(&allowed6),
        "the allowed ICMPv6 echo was not seen"
    );
    assert!(
        watch4.saw(&connected),
        "the connected ping socket's echo was not seen"
    );
    let connects = records_for(&records, "connect", "127.0.0.1:0");
    assert_eq!(connects.len(), 1, "{records:#?}");
    let c = connects[0];
    assert_eq!(
        (&c["protocol"], &c["decision"], &c["rule"]),
        (&"icmp".into(), &"allow".into(), &"network.icmp".into()),
        "{c}"
    );
    let sockets = records_for(&records, "socket", "ipv4 dgram proto 1");
    assert_eq!(sockets.len(), 2, "{records:#?}");
    for r in sockets {
        assert_eq!(r["decision"], "allow", "{r}");
        assert_eq!(r["rule"], "network.icmp", "{r}");
    }
    assert_record(
        &records,
        "socket",
        "ipv6 dgram proto 58",
        "allow",
        "network.icmp",
    );
}

/// An ordinary user cannot make raw sockets at all (no `CAP_NET_RAW`): the agent runs as root
/// here, to show that the policy refuses them.
#[test]
fn raw_socket_of_root_agent_is_denied_by_policy_and_recorded() {
    let scratch = Scratch::new("net-raw");
    let watch4 = IcmpWatch::new(false);
    let watch6 = IcmpWatch::new(true);
    let (t4, t6) = (token("raw4"), token("raw6"));
    let attacks = [
        attack(&["raw", "127.0.0.1", &t4]),
        attack(&["raw", "::1", &t6]),
    ];
    // Everything else allowed: only the missing `raw = "allow"` denies.
    let policy = "name = \"net-raw\"\n[network]\ndefault = \"allow\"\nraw = \"deny\"\n";
    let (steps, records) = run_attacks(&scratch, policy, &attacks, true);
    for s in &steps {
        assert_step_eperm(s, "socket");
    }
    assert!(!watch4.saw(&t4), "an ICMP packet left the raw socket");
    assert!(!watch6.saw(&t6), "an ICMPv6 packet left the raw socket");
    assert_denied(&records, "socket", "ipv4 raw proto 1", "network.raw", 1);
    assert_denied(&records, "socket", "ipv6 raw proto 58", "network.raw", 1);
    for r in records_for(&records, "socket", "ipv4 raw proto 1") {
        assert_eq!(r["protocol"], "raw", "{r}");
        assert_eq!(r["uid"], 0, "{r}");
    }
}

/// An ordinary user gets `CAP_NET_RAW` in a user and network namespace it makes: the policy
/// still refuses the raw socket there (the cgroup hook runs whatever the namespace). Every
/// policy governs namespaces (issue 10), a network-only one too: by default the namespace is
/// refused first; a policy that allows namespaces still refuses the raw socket.
#[test]
fn raw_socket_in_own_user_and_network_namespace_is_denied_and_recorded() {
    let scratch = Scratch::new("net-raw-userns");
    let attacks = [attack(&["raw-userns", "127.0.0.1", &token("raw-userns")])];
    let policy = scratch.policy("name = \"net-raw-userns\"\n[network]\ndefault = \"deny\"\n");
    let log = scratch.path("audit.jsonl");
    let output = oxd_run(
        &policy,
        &log,
        &[
            "/usr/bin/setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            "/usr/bin/unshare",
            "-U",
            "-n",
            "true",
        ],
    );
    assert!(
        !output.status.success(),
        "the namespaces were made: {output:?}"
    );
    let records = audit_records(&log);
    assert!(
        records
            .iter()
            .any(|r| r["op"] == "userns-create" && r["decision"] == "deny" && r["uid"] == 65534),
        "{records:#?}"
    );

    let scratch = Scratch::new("net-raw-userns-allowed");
    let policy = "name = \"net-raw-userns\"\n[network]\ndefault = \"deny\"\n\
                  [process]\nnamespaces = \"allow\"\n";
    let (steps, records) = run_attacks(&scratch, policy, &attacks, false);
    assert_step_ok(&steps[0], "unshare");
    assert_step_eperm(&steps[0], "socket");
    assert_denied(&records, "socket", "ipv4 raw proto 1", "default", 1);
    for r in records_for(&records, "socket", "ipv4 raw proto 1") {
        assert_eq!(r["uid"], 65534, "{r}");
    }
}

/// A policy that denies the listeners' ports on loopback and allows everything else.
fn loopback_deny_policy(name: &str, v4_port: u16, v6_port: u16) -> String {
    format!(
        "name = \"{name}\"\n[network]\ndefault = \"allow\"\n\
         [[network.deny]]\ncidr = \"127.0.0.1\"\nports = {v4_port}\n\
         [[network.deny]]\ncidr = \"::1\"\nports = {v6_port}\n"
    )
}

#[test]
fn tcp_to_unspecified_and_v4_mapped_addresses_reaches_no_denied_loopback_listener() {
    let scratch = Scratch::new("net-tcp");
    let (denied4, d4) = tcp_listener("127.0.0.1");
    let (denied6, d6) = tcp_listener("::1");
    let (allowed4, a4) = tcp_listener("127.0.0.1");
    let (allowed6, a6) = tcp_listener("::1");
    let t = token("tcp");
    let (p4, p6) = (d4.port(), d6.port());
    let targets = [
        format!("0.0.0.0:{p4}"),
        format!("[::ffff:0.0.0.0]:{p4}"),
        format!("[::ffff:127.0.0.1]:{p4}"),
        format!("[::]:{p6}"),
    ];
    let mut attacks: Vec<Vec<String>> = targets.iter().map(|a| attack(&["tcp", a, &t])).collect();
    // Controls: the same unspecified addresses do reach loopback listeners the policy allows.
    attacks.push(attack(&["tcp", &format!("0.0.0.0:{}", a4.port()), &t]));
    attacks.push(attack(&["tcp", &format!("[::]:{}", a6.port()), &t]));
    let policy = loopback_deny_policy("net-tcp", p4, p6);
    let (steps, records) = run_attacks(&scratch, &policy, &attacks, false);
    for s in &steps[..4] {
        assert_step_eperm(s, "connect");
    }
    assert!(
        !tcp_reached(&denied4),
        "a denied connection reached 127.0.0.1:{p4}"
    );
    assert!(
        !tcp_reached(&denied6),
        "a denied connection reached [::1]:{p6}"
    );
    for s in &steps[4..] {
        assert_step_ok(s, "connect");
    }
    assert!(
        tcp_reached(&allowed4),
        "0.0.0.0 did not reach the allowed listener"
    );
    assert!(
        tcp_reached(&allowed6),
        "[::] did not reach the allowed listener"
    );
    // Each judged (and recorded) as the loopback address it reaches.
    let rule4 = "network.deny[0]";
    assert_denied(&records, "connect", &format!("127.0.0.1:{p4}"), rule4, 1);
    assert_denied(
        &records,
        "connect",
        &format!("[::ffff:127.0.0.1]:{p4}"),
        rule4,
        2,
    );
    assert_denied(
        &records,
        "connect",
        &format!("[::1]:{p6}"),
        "network.deny[1]",
        1,
    );
}

#[test]
fn udp_sendto_and_connected_send_reach_no_denied_loopback_listener() {
    let scratch = Scratch::new("net-udp");
    let (denied4, d4) = udp_listener("127.0.0.1");
    let (denied6, d6) = udp_listener("::1");
    let (allowed4, a4) = udp_listener("127.0.0.1");
    let t = token("udp");
    let (p4, p6) = (d4.port(), d6.port());
    let attacks = [
        attack(&["udp-sendto", &format!("127.0.0.1:{p4}"), &t]),
        attack(&["udp-sendto", &format!("0.0.0.0:{p4}"), &t]),
        attack(&["udp-sendto", &format!("[::ffff:127.0.0.1]:{p4}"), &t]),
        attack(&["udp-sendto", &format!("[::ffff:0.0.0.0]:{p4}"), &t]),
        attack(&["udp-sendto", &format!("[::]:{p6}"), &t]),
        attack(&["udp-send", &format!("0.0.0.0:{p4}"), &t]),
        attack(&["udp-send", &format!("[::ffff:127.0.0.1]:{p4}"), &t]),
        attack(&["udp-send", &format!("[::]:{p6}"), &t]),
        // Control: an allowed listener, through the unspecified address.
        attack(&["udp-sendto", &format!("0.0.0.0:{}", a4.port()), &t]),
    ];
    let policy = loopback_deny_policy("net-udp", p4, p6);
    let (steps, records) = run_attacks(&scratch, &policy, &attacks, false);
    for s in &steps[..5] {
        assert_step_eperm(s, "sendto");
    }
    for s in &steps[5..8] {
        assert_step_eperm(s, "connect");
    }
    assert_step_ok(&steps[8], "sendto");
    assert!(
        udp_received(&denied4).is_empty(),
        "a denied datagram reached 127.0.0.1:{p4}"
    );
    assert!(
        udp_received(&denied6).is_empty(),
        "a denied datagram reached [::1]:{p6}"
    );
    assert_eq!(
        udp_received(&allowed4),
        vec![t.as_bytes().to_vec()],
        "the allowed datagram did not arrive"
    );
    let rule4 = "network.deny[0]";
    let rule6 = "network.deny[1]";
    // Sends to IPv4-mapped addresses take the kernel's IPv4 path (sendmsg4).
    assert_denied(&records, "sendmsg", &format!("127.0.0.1:{p4}"), rule4, 4);
    assert_denied(&records, "sendmsg", &format!("[::1]:{p6}"), rule6, 1);
    assert_denied(&records, "connect", &format!("127.0.0.1:{p4}"), rule4, 1);
    assert_denied(
        &records,
        "connect",
        &format!("[::ffff:127.0.0.1]:{p4}"),
        rule4,
        1,
    );
    assert_denied(&records, "connect", &format!("[::1]:{p6}"), rule6, 1);
}

#[test]
fn tcp_fast_open_to_a_denied_address_reaches_nothing() {
    let scratch = Scratch::new("net-tfo");
    let (denied4, d4) = tcp_listener("127.0.0.1");
    let (denied6, d6) = tcp_listener("::1");
    let (allowed4, a4) = tcp_listener("127.0.0.1");
    let t = token("tfo");
    let (p4, p6) = (d4.port(), d6.port());
    let attacks = [
        attack(&["tcp-fastopen", &format!("127.0.0.1:{p4}"), &t]),
        attack(&["tcp-fastopen", &format!("0.0.0.0:{p4}"), &t]),
        attack(&["tcp-fastopen", &format!("[::1]:{p6}"), &t]),
        attack(&["tcp-fastopen", &format!("127.0.0.1:{}", a4.port()), &t]),
    ];
    let policy = loopback_deny_policy("net-tfo", p4, p6);
    let (steps, records) = run_attacks(&scratch, &policy, &attacks, false);
    for s in &steps[..3] {
        assert_step_eperm(s, "sendto");
    }
    assert_step_ok(&steps[3], "sendto");
    assert!(!tcp_reached(&denied4), "fast open reached 127.0.0.1:{p4}");
    assert!(!tcp_reached(&denied6), "fast open reached [::1]:{p6}");
    let mut conn = match allowed4.accept() {
        Ok((conn, _)) => conn,
        Err(e) => panic!("the allowed fast open connection is not there: {e}"),
    };
    conn.set_nonblocking(false).expect("blocking");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut got = Vec::new();
    let _ = conn.read_to_end(&mut got);
    assert_eq!(
        got,
        t.as_bytes(),
        "the allowed fast open data did not arrive"
    );
    assert_denied(
        &records,
        "connect",
        &format!("127.0.0.1:{p4}"),
        "network.deny[0]",
        2,
    );
    assert_denied(
        &records,
        "connect",
        &format!("[::1]:{p6}"),
        "network.deny[1]",
        1,
    );
}

/// Killing the daemon does not lift the socket decision: `sock_create` is pinned per cgroup
/// like the address hooks. A restarted daemon adopts the pinned link, and attaches it where it
/// is missing (a cgroup confined by a daemon that predates the hook); a release detaches it.
#[test]
fn raw_socket_stays_denied_across_daemon_kill_and_is_attached_on_adoption() {
    let scratch = Scratch::new("net-daemon");
    let cgroup = TestCgroup::new("net-daemon");
    let policy = scratch.policy("name = \"net-daemon\"\n[network]\ndefault = \"deny\"\n");
    let mut daemon = Daemon::new(&scratch, "net-daemon", &[]);
    daemon.start();
    daemon.confine_cgroup(&cgroup, &policy);
    let raw = "socket:raw4";
    assert_eperm(&probe_in(&cgroup, &[raw]), raw);

    daemon.signal(libc::SIGKILL);
    daemon.wait_exit();
    assert_eperm(&probe_in(&cgroup, &[raw]), raw);

    // As a daemon from before this hook left it: no sock_create link for the cgroup.
    let pin = daemon
        .bpffs
        .join(format!("v{}", oxd::oxd_common::MAP_LAYOUT_VERSION))
        .join("links")
        .join(format!("cg{}-sock_create", cgroup.id()));
    std::fs::remove_file(&pin).unwrap_or_else(|e| panic!("unpin {}: {e}", pin.display()));
    assert_ok(&probe_in(&cgroup, &[raw]), raw);

    daemon.start();
    assert!(
        pin.exists(),
        "the restarted daemon did not pin sock_create again"
    );
    assert_eperm(&probe_in(&cgroup, &[raw]), raw);
    let records = wait_for("the records of the denied raw sockets", WAIT, || {
        let records = audit_records_so_far(&daemon.audit_log);
        (records_for(&records, "socket", "ipv4 raw proto 1").len() >= 2).then_some(records)
    });
    for r in records_for(&records, "socket", "ipv4 raw proto 1") {
        assert_eq!(r["decision"], "deny", "{r}");
        assert_eq!(r["enforced"], true, "{r}");
        assert_eq!(r["rule"], "default", "{r}");
    }

    daemon.ctl(&["release", "--cgroup", cgroup.path_str()]);
    assert!(
        !pin.exists(),
        "the release left the sock_create link pinned"
    );
    assert_ok(&probe_in(&cgroup, &[raw]), raw);
}
