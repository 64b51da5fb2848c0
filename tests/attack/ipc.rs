//! Attacks of the `ipc` family: see `tests/attacker/ipc.rs` for the techniques. The agent runs
//! as uid 65534 in `oxd run`; its victim is an unconfined process of the same uid started by
//! the test, so only oxd stands between them.

use std::{
    fs,
    io::{BufReader, Write as _},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::fs::PermissionsExt as _,
    },
    path::{Path, PathBuf},
    process::{ChildStdin, Command, Stdio},
};

use serde_json::Value;

use crate::{common::*, require_bpf_lsm};

const AGENT: &str = "65534:65534";
const EACCES: i64 = 13;

/// What the victim holds: its environment, and a file the agent's policy denies reading.
const ENV_SECRET: &str = "victim-env-s3cr3t";
const FILE_SECRET: &str = "victim-file-s3cr3t";

fn attack() -> String {
    attack_bin().to_str().expect("utf-8 path").to_owned()
}

/// A scratch directory an ordinary user can enter, with a policy that lets the agent run
/// anything and read anything except `secret`: only ipc decides what the attacks try.
struct Setup {
    scratch: Scratch,
    policy: PathBuf,
    log: PathBuf,
    secret: PathBuf,
}

impl Setup {
    fn new(test: &str, extra: &str) -> Self {
        require_bpf_lsm();
        let scratch = Scratch::new(test);
        let dir = scratch.path("");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod scratch");
        let secret = scratch.path("secret");
        fs::write(&secret, FILE_SECRET).expect("write the secret");
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o644)).expect("chmod secret");
        let policy = scratch.policy(&format!(
            r#"
name = "ipc-{test}"
[exec]
default = "allow"
[file]
default = "allow"
deny = [{{ path = "{secret}", access = ["read"] }}]
{extra}
"#,
            secret = secret.display()
        ));
        let log = scratch.path("audit.jsonl");
        Self {
            scratch,
            policy,
            log,
            secret,
        }
    }

    /// Runs `oxd-attack --as 65534:65534 ARGS...` confined.
    fn run(&self, args: &[&str]) -> Vec<Value> {
        let attack = attack();
        let mut full = vec![attack.as_str(), "--as", AGENT];
        full.extend_from_slice(args);
        let output = oxd_run(&self.policy, &self.log, &full);
        assert!(
            output.status.success(),
            "oxd run failed: {:?}",
            output.status
        );
        probe_results(&output)
    }
}

/// The unconfined victim: uid 65534, outside any confinement, holding the secret file open,
/// with the secret in its environment. Killed when dropped.
struct Victim {
    child: KillOnDrop,
    stdin: ChildStdin,
    lines: BufReader<std::process::ChildStdout>,
    pid: u32,
    addr: u64,
    fd: i64,
}

impl Victim {
    fn start(setup: &Setup) -> Self {
        let mut child = Command::new(attack_bin())
            .args(["--as", AGENT, "victim"])
            .arg(&setup.secret)
            .env("VICTIM_SECRET", ENV_SECRET)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the victim");
        let stdin = child.stdin.take().expect("victim stdin");
        let mut lines = BufReader::new(child.stdout.take().expect("victim stdout"));
        let hello = next_probe_line(&mut lines);
        let pid = hello["pid"].as_u64().expect("victim pid");
        Self {
            child: KillOnDrop(child),
            stdin,
            lines,
            pid: u32::try_from(pid).expect("pid"),
            addr: hello["addr"].as_u64().expect("victim buffer address"),
            fd: hello["fd"].as_i64().expect("victim fd"),
        }
    }

    fn pid(&self) -> String {
        self.pid.to_string()
    }

    /// What the victim's buffer holds now.
    fn buffer(&mut self) -> String {
        writeln!(self.stdin, "?").expect("ask the victim");
        let line = next_probe_line(&mut self.lines);
        line["buffer"].as_str().expect("buffer").to_owned()
    }

    fn alive(&mut self) -> bool {
        self.child
            .0
            .try_wait()
            .expect("wait for the victim")
            .is_none()
    }
}

fn step<'a>(results: &'a [Value], name: &str) -> &'a Value {
    results
        .iter()
        .find(|r| r["step"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {results:#?}"))
}

fn assert_step_fails(results: &[Value], name: &str, errno: i64) {
    let r = step(results, name);
    assert_eq!(r["ok"], false, "{name} should have been denied: {r}");
    assert_eq!(
        r["errno"], errno,
        "{name} should fail with errno {errno}: {r}"
    );
}

fn assert_step_ok(results: &[Value], name: &str) {
    let r = step(results, name);
    assert_eq!(r["ok"], true, "{name} should have succeeded: {r}");
}

/// The ipc records of `op` about `peer_pid` (any peer when `None`).
fn ipc_records(log: &Path, op: &str, peer_pid: Option<u32>) -> Vec<Value> {
    audit_records(log)
        .into_iter()
        .filter(|r| r["op"] == op && peer_pid.is_none_or(|p| r["peer_pid"] == p))
        .collect()
}

/// Asserts that `op` on `peer_pid` was denied and enforced, and returns the records.
fn assert_denied(log: &Path, op: &str, peer_pid: Option<u32>) -> Vec<Value> {
    let records = ipc_records(log, op, peer_pid);
    assert!(
        !records.is_empty(),
        "no {op} record for peer {peer_pid:?}: {:#?}",
        audit_records(log)
    );
    for r in &records {
        assert_eq!(r["decision"], "deny", "{r}");
        assert_eq!(r["enforced"], true, "{r}");
        assert_eq!(
            r["policy"].as_str().map(|p| p.starts_with("ipc-")),
            Some(true),
            "{r}"
        );
        assert_eq!(r["uid"], 65534, "{r}");
    }
    records
}

#[test]
fn ptrace_attach_to_an_unconfined_process_is_denied() {
    let setup = Setup::new("ptrace", "");
    let mut victim = Victim::start(&setup);
    let results = setup.run(&["ptrace-attach", &victim.pid()]);
    assert_step_fails(&results, "ptrace-attach", EPERM);
    assert_step_fails(&results, "ptrace-seize", EPERM);
    assert!(victim.alive());
    assert_eq!(victim.buffer(), "UNTOUCHED-------");
    let records = assert_denied(&setup.log, "ptrace", Some(victim.pid));
    assert_eq!(records[0]["target"], format!("pid {}", victim.pid));
    assert_eq!(records[0]["reason"], "outside the agent's confinement");
    // PTRACE_MODE_ATTACH (2) | PTRACE_MODE_REALCREDS (16).
    assert_eq!(records[0]["detail"], 2 | 16, "{}", records[0]);
}

#[test]
fn process_vm_writev_into_an_unconfined_process_is_denied() {
    let setup = Setup::new("process-vm", "");
    let mut victim = Victim::start(&setup);
    let addr = victim.addr.to_string();
    let results = setup.run(&["process-vm", &victim.pid(), &addr]);
    assert_step_fails(&results, "process_vm_writev", EPERM);
    assert_step_fails(&results, "process_vm_readv", EPERM);
    assert_eq!(
        victim.buffer(),
        "UNTOUCHED-------",
        "the victim's memory was written"
    );
    assert!(
        results.iter().all(|r| r.get("read").is_none()),
        "{results:#?}"
    );
    assert!(assert_denied(&setup.log, "ptrace", Some(victim.pid)).len() >= 2);
}

#[test]
fn pidfd_getfd_of_an_unconfined_process_is_denied() {
    let setup = Setup::new("pidfd-getfd", "");
    let victim = Victim::start(&setup);
    let fd = victim.fd.to_string();
    let results = setup.run(&["pidfd-getfd", &victim.pid(), &fd]);
    assert_step_fails(&results, "pidfd_getfd", EPERM);
    let text = serde_json::to_string(&results).expect("json");
    assert!(
        !text.contains(FILE_SECRET),
        "the agent read the secret: {text}"
    );
    assert_denied(&setup.log, "ptrace", Some(victim.pid));
}

#[test]
fn signals_to_an_unconfined_process_are_denied() {
    let setup = Setup::new("kill", "");
    let mut victim = Victim::start(&setup);
    let pid = victim.pid();
    let attack = attack();
    // Signal 0 first (an existence probe: allowed, not decided), then SIGKILL.
    let script = format!("{attack} --as {AGENT} kill {pid} 0; {attack} --as {AGENT} kill {pid} 9");
    let output = oxd_run(&setup.policy, &setup.log, &["/bin/sh", "-c", &script]);
    assert!(
        output.status.success(),
        "oxd run failed: {:?}",
        output.status
    );
    let results = probe_results(&output);
    assert_eq!(results.len(), 2, "{results:#?}");
    assert_eq!(results[0]["ok"], true, "signal 0 is allowed: {results:#?}");
    assert_eq!(results[1]["ok"], false, "{results:#?}");
    assert_eq!(results[1]["errno"], EPERM, "{results:#?}");
    assert!(victim.alive(), "the victim was killed");
    let records = assert_denied(&setup.log, "signal", Some(victim.pid));
    assert_eq!(records.len(), 1, "signal 0 is not recorded: {records:#?}");
    assert_eq!(records[0]["detail"], 9);
    assert_eq!(records[0]["target"], format!("pid {pid}"));
}

#[test]
fn proc_files_of_an_unconfined_process_are_denied() {
    let setup = Setup::new("proc-read", "");
    let victim = Victim::start(&setup);
    let results = setup.run(&["proc-read", &victim.pid()]);
    // The kernel turns a refused ptrace access check into EACCES for /proc files.
    assert_step_fails(&results, "read-environ", EACCES);
    assert_step_fails(&results, "readlink-root", EACCES);
    assert_step_fails(&results, "readlink-cwd", EACCES);
    let text = serde_json::to_string(&results).expect("json");
    assert!(
        !text.contains(ENV_SECRET),
        "the agent read the environment: {text}"
    );
    let records = assert_denied(&setup.log, "ptrace", Some(victim.pid));
    assert!(records.len() >= 3, "{records:#?}");
    // PTRACE_MODE_READ (1) | PTRACE_MODE_FSCREDS (8).
    assert!(records.iter().all(|r| r["detail"] == 1 | 8), "{records:#?}");
}

#[test]
fn ptrace_traceme_under_an_outside_parent_is_denied() {
    let setup = Setup::new("traceme", "");
    let results = setup.run(&["traceme"]);
    assert_step_fails(&results, "traceme", EPERM);
    let records = assert_denied(&setup.log, "ptrace", None);
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["detail"], 0, "{}", records[0]);
}

/// A pseudo-terminal pair: (master, slave).
pub(crate) fn openpty() -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two descriptors; no name, termios or window size.
    let ret = unsafe {
        libc::openpty(
            &raw mut master,
            &raw mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(ret, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty just returned these descriptors, owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

/// What is waiting to be read on `tty` now (raw mode, so injected bytes show at once).
pub(crate) fn pending_input(tty: &OwnedFd) -> Vec<u8> {
    let fd = tty.as_raw_fd();
    // SAFETY: termios calls and a non-blocking read on a terminal we own.
    unsafe {
        let mut termios = std::mem::zeroed();
        libc::tcgetattr(fd, &raw mut termios);
        libc::cfmakeraw(&raw mut termios);
        libc::tcsetattr(fd, libc::TCSANOW, &raw const termios);
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        let mut buf = [0u8; 256];
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        buf[..usize::try_from(n).unwrap_or(0)].to_vec()
    }
}

#[test]
fn tiocsti_into_the_callers_terminal_is_denied() {
    let setup = Setup::new("tiocsti", "");
    let (_master, slave) = openpty();
    let attack = attack();
    let mut cmd = oxd_run_command(
        &setup.policy,
        &setup.log,
        &[&attack, "--as", AGENT, "tiocsti", "id>/tmp/pwned\n"],
    );
    cmd.stdin(Stdio::from(slave.try_clone().expect("dup the slave")));
    let output = cmd.output().expect("run oxd run");
    eprintln!(
        "--- stdout\n{}--- stderr\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "oxd run failed: {:?}",
        output.status
    );
    let results = probe_results(&output);
    assert_step_fails(&results, "tiocsti", EPERM);
    assert_step_fails(&results, "tiocsti-new-session", EPERM);
    let pending = pending_input(&slave);
    assert!(
        pending.is_empty(),
        "input was pushed into the caller's terminal: {:?}",
        String::from_utf8_lossy(&pending)
    );
    let records = assert_denied(&setup.log, "tty-inject", None);
    assert!(records.len() >= 2, "{records:#?}");
    assert!(records
        .iter()
        .all(|r| r["target"] == "TIOCSTI" && r["detail"] == 0x5412));
}

#[test]
fn acting_on_its_own_child_still_works() {
    let setup = Setup::new("inside", "");
    let results = setup.run(&["inside"]);
    assert_step_ok(&results, "ptrace-seize-child");
    assert_step_ok(&results, "process_vm_readv-child");
    assert_step_ok(&results, "kill-child");
    let end = results
        .iter()
        .find_map(|r| r.get("child_signal"))
        .unwrap_or_else(|| panic!("no child_signal in {results:#?}"));
    assert_eq!(end, libc::SIGTERM, "the child died of the agent's SIGTERM");
    let records = audit_records(&setup.log);
    // SIGKILL to the traced child, SIGTERM to the other: both inside, both allowed.
    let signals: Vec<_> = records.iter().filter(|r| r["op"] == "signal").collect();
    assert!(
        signals.iter().all(|r| r["decision"] == "allow"),
        "{signals:#?}"
    );
    let signal = signals
        .iter()
        .find(|r| r["detail"] == libc::SIGTERM)
        .unwrap_or_else(|| panic!("no SIGTERM record: {records:#?}"));
    assert_eq!(
        signal["reason"], "inside the agent's confinement",
        "{signal}"
    );
    let ptrace: Vec<_> = records.iter().filter(|r| r["op"] == "ptrace").collect();
    assert!(ptrace.len() >= 2, "{records:#?}");
    assert!(
        ptrace.iter().all(|r| r["decision"] == "allow"),
        "{ptrace:#?}"
    );
}

/// A Unix stream listener at a path an ordinary user can connect to, outside the agent's
/// confinement (the test's own).
fn listener(setup: &Setup) -> (std::os::unix::net::UnixListener, PathBuf) {
    let path = setup.scratch.path("outside.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o777)).expect("chmod socket");
    listener.set_nonblocking(true).expect("nonblocking");
    (listener, path)
}

#[test]
fn unix_connect_to_an_outside_server_is_denied() {
    use std::os::linux::net::SocketAddrExt as _;

    let setup = Setup::new("unix", "");
    let (listener, path) = listener(&setup);
    let path = path.to_str().expect("utf-8 path").to_owned();
    let name = format!("oxd-test-ipc-{}", std::process::id());
    let abstract_addr =
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("name");
    let datagram =
        std::os::unix::net::UnixDatagram::bind_addr(&abstract_addr).expect("bind abstract");
    datagram.set_nonblocking(true).expect("nonblocking");

    let attack = attack();
    let script = format!(
        "{attack} --as {AGENT} unix-connect {path}; {attack} --as {AGENT} unix-send @{name}"
    );
    let output = oxd_run(&setup.policy, &setup.log, &["/bin/sh", "-c", &script]);
    assert!(
        output.status.success(),
        "oxd run failed: {:?}",
        output.status
    );
    let results = probe_results(&output);
    assert_step_fails(&results, "connect", EPERM);
    assert_step_fails(&results, "sendto", EPERM);
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the outside server got a connection"
    );
    let mut buf = [0u8; 16];
    assert!(
        matches!(datagram.recv(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the outside socket got a datagram"
    );
    let me = std::process::id();
    let connect = assert_denied(&setup.log, "unix-connect", Some(me));
    assert_eq!(connect[0]["target"], path.as_str(), "{}", connect[0]);
    assert_eq!(connect[0]["rule"], "default", "{}", connect[0]);
    let send = assert_denied(&setup.log, "unix-send", None);
    assert_eq!(send[0]["target"], format!("@{name}"), "{}", send[0]);
}

#[test]
fn unix_connect_outside_is_allowed_when_the_policy_says_so() {
    let setup = Setup::new("unix-allow", "[ipc]\nunix = \"allow\"\n");
    let (listener, path) = listener(&setup);
    let path = path.to_str().expect("utf-8 path").to_owned();
    let results = setup.run(&["unix-connect", &path]);
    assert_step_ok(&results, "connect");
    assert_step_ok(&results, "send");
    let (mut conn, _) = listener.accept().expect("the connection is queued");
    conn.set_nonblocking(false).expect("blocking");
    let mut hello = String::new();
    std::io::Read::read_to_string(&mut conn, &mut hello).expect("read");
    assert_eq!(hello, "HELLO");
    let records = ipc_records(&setup.log, "unix-connect", Some(std::process::id()));
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["decision"], "allow", "{}", records[0]);
    assert_eq!(records[0]["target"], path.as_str(), "{}", records[0]);
    assert_eq!(records[0]["reason"], "default", "{}", records[0]);
}

/// The name of the terminal open as `fd`.
fn tty_name(fd: &OwnedFd) -> String {
    let mut buf = [0u8; 128];
    // SAFETY: ttyname_r writes at most buf.len() bytes.
    let ret = unsafe { libc::ttyname_r(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(ret, 0, "ttyname_r");
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[test]
fn run_gives_the_agent_its_own_session_and_terminal() {
    let setup = Setup::new("pty", "");
    let (master, slave) = openpty();
    let caller_tty = tty_name(&slave);
    let script = "tty; read -r _ _ _ _ _ sid _ < /proc/self/stat; echo \"sid:$sid pid:$$\"; \
                  ls -l /proc/$$/fd; read -r line; echo \"got:$line\"";
    let mut cmd = oxd_run_command(&setup.policy, &setup.log, &["/bin/sh", "-c", script]);
    cmd.stdin(Stdio::from(slave.try_clone().expect("dup the slave")))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn oxd run");
    // Typed on the caller's terminal: relayed to the agent's.
    let mut keyboard = fs::File::from(master.try_clone().expect("dup the master"));
    keyboard.write_all(b"hello\n").expect("type");
    let output = child.wait_with_output().expect("wait for oxd run");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    eprintln!(
        "--- stdout\n{stdout}--- stderr\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "oxd run failed: {:?}",
        output.status
    );
    assert!(
        stdout.contains("got:hello"),
        "the keys did not reach the agent: {stdout}"
    );
    let agent_tty = stdout
        .lines()
        .find(|l| l.starts_with("/dev/"))
        .unwrap_or_else(|| panic!("no tty line: {stdout}"));
    assert!(agent_tty.starts_with("/dev/pts/"), "{agent_tty}");
    assert_ne!(
        agent_tty, caller_tty,
        "the agent holds the caller's terminal"
    );
    assert!(
        !stdout.contains(&format!("-> {caller_tty}")),
        "the agent has a descriptor of the caller's terminal: {stdout}"
    );
    let ids = stdout
        .lines()
        .find_map(|l| l.strip_prefix("sid:"))
        .unwrap_or_else(|| panic!("no sid line: {stdout}"));
    let (sid, pid) = ids.split_once(" pid:").expect("sid and pid");
    assert_eq!(sid, pid, "the agent leads its own session: {ids}");
    // SAFETY: a plain system call.
    let own_sid = unsafe { libc::getsid(0) };
    assert_ne!(
        sid,
        own_sid.to_string(),
        "the agent is in the caller's session"
    );
}

// Unix socket rules (`[ipc] unix_allow` / `unix_deny`): outside servers are judged by the path
// their socket was bound at (in the host's view) or by their abstract name, whatever name the
// agent reaches them by.

/// A tmpfs mounted for one test (the sockets live on a plain file system, not the guest's
/// overlay root), unmounted when dropped. Also used by the differential test.
pub(crate) struct Tmpfs(pub(crate) PathBuf);

impl Tmpfs {
    pub(crate) fn new(dir: &Path) -> Self {
        use std::os::unix::ffi::OsStrExt as _;
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let target = std::ffi::CString::new(dir.as_os_str().as_bytes()).expect("no NUL");
        // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
        let ret = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                c"mode=0755".as_ptr().cast(),
            )
        };
        assert_eq!(
            ret,
            0,
            "mount a tmpfs on {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
        Self(fs::canonicalize(dir).expect("canonicalize the tmpfs"))
    }

    /// `rel` inside the tmpfs, as a string (the form rules and records take).
    pub(crate) fn path(&self, rel: &str) -> String {
        self.0.join(rel).to_str().expect("utf-8 path").to_owned()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        use std::os::unix::ffi::OsStrExt as _;
        if let Ok(target) = std::ffi::CString::new(self.0.as_os_str().as_bytes()) {
            // SAFETY: umount2(2) on a NUL-terminated path; detaching takes the bind mounts on it
            // along.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// A scratch directory the agent can enter, a tmpfs in it with the directories `allowed` and
/// `denied`, and a policy (named `ipc-TEST`) that lets the agent run and read anything, with
/// the `[ipc]` section `ipc` (`{fs}` in it stands for the tmpfs).
fn unix_setup(test: &str, ipc: &str) -> (Scratch, Tmpfs, PathBuf, PathBuf) {
    require_bpf_lsm();
    let scratch = Scratch::new(test);
    fs::set_permissions(scratch.path(""), fs::Permissions::from_mode(0o755))
        .expect("open the scratch directory to the agent");
    let tmpfs = Tmpfs::new(&scratch.path("fs"));
    for dir in ["allowed", "denied"] {
        fs::create_dir(tmpfs.path(dir)).expect("create a socket directory");
        fs::set_permissions(tmpfs.path(dir), fs::Permissions::from_mode(0o755))
            .expect("chmod a socket directory");
    }
    let ipc = ipc.replace("{fs}", tmpfs.0.to_str().expect("utf-8 path"));
    let policy = scratch.policy(&format!(
        "name = \"ipc-{test}\"\n[exec]\ndefault = \"allow\"\n[file]\ndefault = \"allow\"\n\
         [ipc]\n{ipc}\n"
    ));
    let log = scratch.path("audit.jsonl");
    (scratch, tmpfs, policy, log)
}

/// A stream listener at `path` that any user may connect to, outside the agent's confinement.
fn listen_at(path: &str) -> std::os::unix::net::UnixListener {
    let listener = std::os::unix::net::UnixListener::bind(path).expect("bind");
    fs::set_permissions(path, fs::Permissions::from_mode(0o777)).expect("chmod socket");
    listener.set_nonblocking(true).expect("nonblocking");
    listener
}

/// Every connection `listener` has queued, with what each sent.
fn accepted(listener: &std::os::unix::net::UnixListener) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        match listener.accept() {
            Ok((mut conn, _)) => {
                conn.set_nonblocking(false).expect("blocking");
                let mut text = String::new();
                std::io::Read::read_to_string(&mut conn, &mut text).expect("read");
                got.push(text);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return got,
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// Every datagram `socket` has queued.
fn received(socket: &std::os::unix::net::UnixDatagram) -> Vec<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        match socket.recv(&mut buf) {
            Ok(n) => got.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return got,
            Err(e) => panic!("recv: {e}"),
        }
    }
}

/// Runs `oxd-attack --as 65534:65534 unix-reach KIND ADDRS...` confined.
fn reach(policy: &Path, log: &Path, kind: &str, addrs: &[&str]) -> Vec<Value> {
    let attack = attack();
    let mut args = vec![attack.as_str(), "--as", AGENT, "unix-reach", kind];
    args.extend_from_slice(addrs);
    let output = oxd_run(policy, log, &args);
    assert!(
        output.status.success(),
        "oxd run failed: {:?}",
        output.status
    );
    probe_results(&output)
}

/// The one `op` record about `target`, checked for `decision`, `rule` and enforcement.
fn unix_record(log: &Path, op: &str, target: &str, decision: &str, rule: &str) -> Vec<Value> {
    let records: Vec<Value> = ipc_records(log, op, None)
        .into_iter()
        .filter(|r| r["target"] == target)
        .collect();
    assert!(
        !records.is_empty(),
        "no {op} record for {target}: {:#?}",
        audit_records(log)
    );
    for r in &records {
        assert_eq!(r["decision"], decision, "{r}");
        assert_eq!(r["rule"], rule, "{r}");
        assert_eq!(r["enforced"], true, "{r}");
        assert_eq!(r["uid"], 65534, "{r}");
        assert_eq!(
            r["policy"].as_str().map(|p| p.starts_with("ipc-")),
            Some(true),
            "{r}"
        );
        if op == "unix-connect" {
            // The listening process (a datagram socket has no peer credentials).
            assert_eq!(r["peer_pid"], std::process::id(), "{r}");
        }
    }
    records
}

#[test]
fn unix_rules_judge_outside_servers_by_their_bound_path() {
    let (_scratch, tmpfs, policy, log) = unix_setup(
        "unix-paths",
        "unix = \"deny\"\nunix_allow = [\"{fs}/allowed/**\"]\n\
         unix_deny = [\"{fs}/allowed/secret.sock\"]",
    );
    let ok = tmpfs.path("allowed/ok.sock");
    let secret = tmpfs.path("allowed/secret.sock");
    let denied = tmpfs.path("denied/no.sock");
    let ok_server = listen_at(&ok);
    let secret_server = listen_at(&secret);
    let denied_server = listen_at(&denied);
    // Other names of the denied socket, in the allowed directory, made by someone else: a
    // symlink, a hard link, and a bind mount of the socket file over an allowed file.
    let symlink = tmpfs.path("allowed/sym.sock");
    std::os::unix::fs::symlink("../denied/no.sock", &symlink).expect("symlink");
    let hardlink = tmpfs.path("allowed/hard.sock");
    fs::hard_link(&denied, &hardlink).expect("hard link the socket");
    let bind = tmpfs.path("allowed/bind.sock");
    fs::write(&bind, "").expect("create the mount point");
    {
        let src = std::ffi::CString::new(denied.as_str()).expect("no NUL");
        let dst = std::ffi::CString::new(bind.as_str()).expect("no NUL");
        // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
        let ret = unsafe {
            libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        assert_eq!(ret, 0, "bind mount: {}", std::io::Error::last_os_error());
    }

    let results = reach(
        &policy,
        &log,
        "stream",
        &[&ok, &secret, &denied, &symlink, &hardlink, &bind],
    );
    assert_step_ok(&results, &format!("connect:{ok}"));
    for name in [&secret, &denied, &symlink, &hardlink, &bind] {
        assert_step_fails(&results, &format!("connect:{name}"), EPERM);
    }
    // The effect: only the allowed server heard from the agent.
    assert_eq!(accepted(&ok_server), ["HELLO"]);
    assert!(
        accepted(&secret_server).is_empty(),
        "the denied server got a connection"
    );
    assert!(
        accepted(&denied_server).is_empty(),
        "the denied server got a connection through another name"
    );
    // The records: the allowed one by its rule; each attempt on the denied server under its
    // bound path, whichever name the agent used (four attempts), by the default; the carved-out
    // socket by its deny rule.
    unix_record(&log, "unix-connect", &ok, "allow", "ipc.unix_allow[0]");
    unix_record(&log, "unix-connect", &secret, "deny", "ipc.unix_deny[0]");
    let through_names = unix_record(&log, "unix-connect", &denied, "deny", "default");
    assert_eq!(through_names.len(), 4, "{through_names:#?}");
    for name in [&symlink, &hardlink, &bind] {
        assert!(
            records_for(&audit_records(&log), "unix-connect", name).is_empty(),
            "a record names {name} instead of the bound path"
        );
    }
}

#[test]
fn unix_rules_decide_abstract_names_and_datagrams() {
    use std::os::linux::net::SocketAddrExt as _;

    let me = std::process::id();
    let (_scratch, tmpfs, policy, log) = unix_setup(
        "unix-abstract",
        &format!(
            "unix_allow = [\"@oxd-ok-{me}\", \"@oxd-pre-{me}-*\", \"{{fs}}/allowed/**\"]\n\
             unix_deny = [\"@oxd-pre-{me}-no\"]"
        ),
    );
    let abstract_listener = |name: &str| {
        let addr =
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("name");
        let listener =
            std::os::unix::net::UnixListener::bind_addr(&addr).expect("bind an abstract name");
        listener.set_nonblocking(true).expect("nonblocking");
        listener
    };
    let ok = format!("oxd-ok-{me}");
    let prefixed = format!("oxd-pre-{me}-yes");
    let carved = format!("oxd-pre-{me}-no");
    // Longer than an allowed name: exact names do not match as prefixes.
    let longer = format!("oxd-ok-{me}x");
    let servers: Vec<_> = [&ok, &prefixed, &carved, &longer]
        .into_iter()
        .map(|name| abstract_listener(name))
        .collect();
    let datagram = |path: &str| {
        let socket = std::os::unix::net::UnixDatagram::bind(path).expect("bind a datagram");
        fs::set_permissions(path, fs::Permissions::from_mode(0o777)).expect("chmod socket");
        socket.set_nonblocking(true).expect("nonblocking");
        socket
    };
    let dgram_ok = tmpfs.path("allowed/dgram.sock");
    let dgram_no = tmpfs.path("denied/dgram.sock");
    let dgram_ok_socket = datagram(&dgram_ok);
    let dgram_no_socket = datagram(&dgram_no);

    let at = |name: &str| format!("@{name}");
    let attack = attack();
    let script = format!(
        "{attack} --as {AGENT} unix-reach stream {} {} {} {}; \
         {attack} --as {AGENT} unix-reach dgram {dgram_ok} {dgram_no}",
        at(&ok),
        at(&prefixed),
        at(&carved),
        at(&longer),
    );
    let output = oxd_run(&policy, &log, &["/bin/sh", "-c", &script]);
    assert!(
        output.status.success(),
        "oxd run failed: {:?}",
        output.status
    );
    let results = probe_results(&output);
    assert_step_ok(&results, &format!("connect:@{ok}"));
    assert_step_ok(&results, &format!("connect:@{prefixed}"));
    assert_step_fails(&results, &format!("connect:@{carved}"), EPERM);
    assert_step_fails(&results, &format!("connect:@{longer}"), EPERM);
    assert_step_ok(&results, &format!("sendto:{dgram_ok}"));
    assert_step_fails(&results, &format!("sendto:{dgram_no}"), EPERM);
    assert_eq!(accepted(&servers[0]), ["HELLO"]);
    assert_eq!(accepted(&servers[1]), ["HELLO"]);
    assert!(
        accepted(&servers[2]).is_empty(),
        "the denied name got a connection"
    );
    assert!(
        accepted(&servers[3]).is_empty(),
        "the longer name got a connection"
    );
    assert_eq!(received(&dgram_ok_socket), ["HELLO"]);
    assert!(
        received(&dgram_no_socket).is_empty(),
        "the denied socket got a datagram"
    );
    unix_record(&log, "unix-connect", &at(&ok), "allow", "ipc.unix_allow[0]");
    unix_record(
        &log,
        "unix-connect",
        &at(&prefixed),
        "allow",
        "ipc.unix_allow[1]",
    );
    unix_record(
        &log,
        "unix-connect",
        &at(&carved),
        "deny",
        "ipc.unix_deny[0]",
    );
    unix_record(&log, "unix-connect", &at(&longer), "deny", "default");
    unix_record(&log, "unix-send", &dgram_ok, "allow", "ipc.unix_allow[2]");
    unix_record(&log, "unix-send", &dgram_no, "deny", "default");
}
