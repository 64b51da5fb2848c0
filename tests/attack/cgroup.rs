//! Attacks of the `cgroup` family (the guard's `bpf()`, cgroup and kernel file-system part):
//! see `tests/attacker/cgroup.rs` for the techniques. The agent runs as root inside
//! `oxd run` (and as uid 65534 for a delegated cgroup); every test checks that the forbidden
//! effect did not happen (the agent's cgroup, the file's content) and that the attempt was
//! recorded as a denied, enforced guard decision, and that the agent is still confined
//! afterwards (a denied read still denied).

use std::{
    fs,
    os::unix::{
        fs::{MetadataExt as _, PermissionsExt as _},
        process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::Value;

use crate::{common::*, require_bpf_lsm};

/// The descriptor a test passes into the agent (a cgroup file opened outside).
const PASSED_FD: i32 = 50;

/// A scratch directory with a secret the policy denies reading, and that policy.
struct Setup {
    scratch: Scratch,
    policy: PathBuf,
    log: PathBuf,
    secret: String,
}

impl Setup {
    fn new(test: &str) -> Self {
        require_bpf_lsm();
        let scratch = Scratch::new(test);
        fs::set_permissions(scratch.path(""), fs::Permissions::from_mode(0o755))
            .expect("chmod scratch");
        let secret = scratch.path("secret");
        fs::write(&secret, "guard-secret").expect("write the secret");
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o644)).expect("chmod secret");
        let secret = secret.to_str().expect("utf-8 path").to_owned();
        let policy = scratch.policy(&format!(
            r#"
name = "guard-{test}"
[exec]
default = "allow"
[file]
default = "allow"
deny = [{{ path = "{secret}", access = ["read"] }}]
"#
        ));
        let log = scratch.path("audit.jsonl");
        Self {
            scratch,
            policy,
            log,
            secret,
        }
    }

    /// `oxd-attack [--as USER] guard-seq STEPS... read still-confined SECRET`, confined by
    /// `oxd run` (started by `command`, which may place or prepare it); returns the steps
    /// and `oxd run`'s pid.
    fn run_with(&self, user: Option<&str>, steps: &[&str], mut command: Command) -> Vec<Value> {
        let attack = attack_bin();
        command
            .arg("run")
            .arg("--policy")
            .arg(&self.policy)
            .arg("--audit-log")
            .arg(&self.log)
            .arg("--")
            .arg(&attack);
        if let Some(user) = user {
            command.args(["--as", user]);
        }
        command
            .arg("guard-seq")
            .args(steps)
            .args(["read", "still-confined", &self.secret])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let output = command.output().expect("run oxd run");
        eprintln!(
            "oxd run {steps:?}: {}\n--- stdout\n{}--- stderr\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success(),
            "oxd run failed: {:?}",
            output.status
        );
        let steps = probe_results(&output);
        // Whatever the agent tried, it is still confined: the denied read is still denied.
        assert_step_eperm(&steps, "still-confined");
        let records = audit_records(&self.log);
        assert!(
            records.iter().any(|r| r["op"] == "open"
                && r["target"] == self.secret.as_str()
                && r["decision"] == "deny"),
            "the read after the attacks was not denied by the policy: {records:#?}"
        );
        steps
    }

    fn run(&self, steps: &[&str]) -> Vec<Value> {
        self.run_with(None, steps, Command::new(oxd_bin()))
    }
}

fn step_of<'a>(steps: &'a [Value], name: &str) -> &'a Value {
    steps
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {steps:#?}"))
}

fn assert_step_eperm(steps: &[Value], name: &str) {
    let s = step_of(steps, name);
    assert_eq!(s["ok"], false, "{name} should have been denied: {s}");
    assert_eq!(s["errno"], EPERM, "{name} should fail with EPERM: {s}");
}

fn assert_step_ok(steps: &[Value], name: &str) {
    let s = step_of(steps, name);
    assert_eq!(s["ok"], true, "{name} should have succeeded: {s}");
}

fn data<'a>(steps: &'a [Value], name: &str) -> &'a str {
    assert_step_ok(steps, name);
    step_of(steps, name)["data"]
        .as_str()
        .unwrap_or_else(|| panic!("step {name} has no data"))
}

/// The guard records of `op` with `target`: at least `min`, each a denial, enforced, for the
/// reason of the guard, by `uid`.
fn assert_guard_denied(log: &Path, op: &str, target: &str, min: usize, uid: u32) -> Vec<Value> {
    let all = audit_records(log);
    let found: Vec<Value> = all
        .iter()
        .filter(|r| r["op"] == op && r["target"] == target)
        .cloned()
        .collect();
    assert!(
        found.len() >= min,
        "expected at least {min} {op} records on {target}, got {}: {all:#?}",
        found.len()
    );
    for r in &found {
        assert_eq!(r["decision"], "deny", "{r}");
        assert_eq!(r["enforced"], true, "{r}");
        assert_eq!(r["uid"], uid, "{r}");
        assert!(
            r["reason"]
                .as_str()
                .is_some_and(|s| s.starts_with("guard:")),
            "{r}"
        );
    }
    found
}

/// The cgroup v2 mount, as a string.
fn mount() -> String {
    oxd::host::cgroup2_mount()
        .expect("a cgroup2 mount")
        .to_str()
        .expect("utf-8 path")
        .to_owned()
}

/// The cgroup v2 path of process `pid` (`/oxd/run-42`).
fn cgroup_of(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .expect("read /proc/PID/cgroup")
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 line")
        .to_owned()
}

/// The id (directory inode) of the cgroup at `rel` (a cgroup v2 path) as an audit target.
fn cgroup_target(rel: &str) -> String {
    let ino = fs::metadata(format!("{}{rel}", mount()))
        .unwrap_or_else(|e| panic!("stat cgroup {rel}: {e}"))
        .ino();
    format!("cgroup {}", ino & 0xffff_ffff)
}

/// The deepest cgroup both `a` and `b` (cgroup v2 paths) are in.
fn common_ancestor(a: &str, b: &str) -> String {
    let common: Vec<&str> = a
        .split('/')
        .zip(b.split('/'))
        .take_while(|(x, y)| x == y)
        .map(|(x, _)| x)
        .collect();
    let joined = common.join("/");
    if joined.is_empty() {
        "/".to_owned()
    } else {
        joined
    }
}

#[test]
fn bpf_commands_of_a_root_agent_are_denied_and_oxds_pins_stay() {
    let setup = Setup::new("bpf");
    let bpffs = BpffsMount::new(&setup.scratch, "bpffs");
    let pin = bpffs.path.join("map");
    let pin = pin.to_str().expect("utf-8 path");
    let made = Command::new(attack_bin())
        .args(["guard-seq", "bpf-pin", "pin", pin])
        .output()
        .expect("pin a map");
    assert!(
        String::from_utf8_lossy(&made.stdout).contains("\"ok\":true"),
        "cannot pin a map at {pin}: {made:?}"
    );
    let created = bpffs.path.join("new");
    let dir = bpffs.path.join("dir");
    let steps = setup.run(&[
        "bpf-prog-load",
        "prog-load",
        "bpf-next-id",
        "link-next-id",
        "31",
        "bpf-next-id",
        "prog-next-id",
        "11",
        "bpf-map-create",
        "map-create",
        "bpf-obj-get",
        "obj-get",
        pin,
        "unlink",
        "pin-unlink",
        pin,
        "create",
        "pin-create",
        created.to_str().expect("utf-8 path"),
        "mkdir",
        "pin-mkdir",
        dir.to_str().expect("utf-8 path"),
    ]);
    for name in [
        "prog-load",
        "link-next-id",
        "prog-next-id",
        "map-create",
        "obj-get",
        "pin-unlink",
        "pin-create",
        "pin-mkdir",
    ] {
        assert_step_eperm(&steps, name);
    }
    // The effect: the pin is still there, nothing new is.
    assert!(Path::new(pin).exists(), "the agent removed the pin");
    assert!(!created.exists(), "the agent created a file on bpffs");
    assert!(!dir.exists(), "the agent created a directory on bpffs");
    for (target, detail) in [
        ("BPF_PROG_LOAD", 5),
        ("BPF_LINK_GET_NEXT_ID", 31),
        ("BPF_PROG_GET_NEXT_ID", 11),
        ("BPF_MAP_CREATE", 0),
        ("BPF_OBJ_GET", 7),
    ] {
        let records = assert_guard_denied(&setup.log, "bpf", target, 1, 0);
        assert_eq!(records[0]["detail"], detail, "{}", records[0]);
    }
    let records = assert_guard_denied(&setup.log, "kernel-fs-write", "bpf", 3, 0);
    assert_eq!(records[0]["detail"], 0xcafe_4a11_u32, "{}", records[0]);
}

/// Makes `command`'s process hold `file` as [`PASSED_FD`] (not closed on exec).
fn pass_fd(command: &mut Command, file: &fs::File) {
    use std::os::fd::AsRawFd as _;
    let fd = file.as_raw_fd();
    // SAFETY: the closure makes one async-signal-safe system call (dup2, whose copy stays open
    // across exec).
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(fd, PASSED_FD) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Nothing the agent did inside its own subtree (its cgroup, then the child it made: the
/// cgroups its records were made in) was denied.
fn assert_no_denial_inside(log: &Path) {
    let records = audit_records(log);
    let own: Vec<String> = records
        .iter()
        .filter_map(|r| r["cgroup_id"].as_u64())
        .map(|id| format!("cgroup {}", id & 0xffff_ffff))
        .collect();
    assert!(own.len() >= 2, "{records:#?}");
    assert!(
        !records
            .iter()
            .any(|r| r["op"] == "cgroup-write" && own.iter().any(|o| r["target"] == o.as_str())),
        "a write inside the agent's own cgroups was denied: {records:#?}"
    );
}

#[test]
fn cgroup_escapes_of_a_root_agent_are_denied_and_its_own_subtree_is_not() {
    let setup = Setup::new("cgroup");
    let mount = mount();
    // oxd run runs in a cgroup of its own (the agent tries to freeze it); a sibling cgroup
    // outside the agent's; an outside process the agent tries to pull in.
    let oxds = TestCgroup::new("guard-oxd");
    let sibling = TestCgroup::new("guard-sibling");
    let outsider = KillOnDrop(
        Command::new("sleep")
            .arg("60")
            .stdin(Stdio::null())
            .spawn()
            .expect("start sleep"),
    );
    let outsider_pid = outsider.0.id();
    let outsider_cgroup = cgroup_of(outsider_pid);
    let core_pattern = fs::read_to_string("/proc/sys/kernel/core_pattern").expect("read");
    // The root cgroup's cgroup.procs, opened for writing outside, passed into the agent.
    let root_procs = fs::OpenOptions::new()
        .write(true)
        .open(format!("{mount}/cgroup.procs"))
        .expect("open the root cgroup.procs");
    let mut command = oxds.command(oxd_bin());
    pass_fd(&mut command, &root_procs);
    let (sibling_dir, oxds_dir) = (sibling.path_str(), oxds.path_str());
    // The steps, as words (no path here has a space in it).
    let script = format!(
        "cgroup before \
         write root-procs {mount}/cgroup.procs 0 \
         write sibling-procs {sibling_dir}/cgroup.procs 0 \
         mkdir sibling-mkdir {sibling_dir}/sub \
         clone-into clone-into-root {mount} \
         write-own pull-in {mount} cgroup.procs {outsider_pid} \
         write-fd passed-fd {PASSED_FD} 0 \
         write freeze-oxd {oxds_dir}/cgroup.freeze 1 \
         write core-pattern /proc/sys/kernel/core_pattern |/bin/false \
         cgroup denied-moves \
         mkdir-own sub-mkdir {mount} sub \
         write-own sub-move {mount} sub/cgroup.procs 0 \
         cgroup after"
    );
    let words: Vec<&str> = script.split_whitespace().collect();
    let steps = setup.run_with(None, &words, command);
    let sibling_sub = format!("{sibling_dir}/sub");
    let freeze = format!("{oxds_dir}/cgroup.freeze");
    let denied = "root-procs sibling-procs sibling-mkdir clone-into-root pull-in passed-fd \
                  freeze-oxd core-pattern";
    for name in denied.split_whitespace() {
        assert_step_eperm(&steps, name);
    }
    // The effects: the agent is where oxd put it, then in a child of its own cgroup; the
    // outsider, the sibling, oxd's cgroup and core_pattern are untouched.
    let before = data(&steps, "before").trim().to_owned();
    assert!(before.starts_with("/oxd/run-"), "agent cgroup {before}");
    assert_eq!(data(&steps, "denied-moves").trim(), before);
    assert_step_ok(&steps, "sub-mkdir");
    assert_step_ok(&steps, "sub-move");
    assert_eq!(data(&steps, "after").trim(), format!("{before}/sub"));
    assert_eq!(
        cgroup_of(outsider_pid),
        outsider_cgroup,
        "the outsider was moved"
    );
    assert!(
        !Path::new(&sibling_sub).exists(),
        "the agent made a cgroup in its sibling"
    );
    assert_eq!(
        fs::read_to_string(&freeze)
            .expect("read cgroup.freeze")
            .trim(),
        "0"
    );
    assert_eq!(
        fs::read_to_string("/proc/sys/kernel/core_pattern").expect("read"),
        core_pattern
    );
    // The records: opening the root's and the sibling's files, the kernel's migration check
    // on the common ancestor (clone3, the passed descriptor, pulling the outsider in).
    let pulled_from = common_ancestor(&outsider_cgroup, &before);
    let at_root = if pulled_from == "/" { 4 } else { 3 };
    assert_guard_denied(&setup.log, "cgroup-write", &cgroup_target("/"), at_root, 0);
    assert_guard_denied(
        &setup.log,
        "cgroup-write",
        &cgroup_target(sibling_rel(&sibling, &mount).as_str()),
        2,
        0,
    );
    assert_guard_denied(
        &setup.log,
        "cgroup-write",
        &cgroup_target(&pulled_from),
        1,
        0,
    );
    assert_guard_denied(
        &setup.log,
        "cgroup-write",
        &cgroup_target(sibling_rel_path(oxds.path(), &mount).as_str()),
        1,
        0,
    );
    let records = assert_guard_denied(&setup.log, "kernel-fs-write", "proc", 1, 0);
    assert_eq!(records[0]["detail"], 0x9fa0, "{}", records[0]);
    assert_no_denial_inside(&setup.log);
}

/// The cgroup v2 path of a test cgroup.
fn sibling_rel(cgroup: &TestCgroup, mount: &str) -> String {
    sibling_rel_path(cgroup.path(), mount)
}

fn sibling_rel_path(path: &Path, mount: &str) -> String {
    path.to_str()
        .expect("utf-8 path")
        .strip_prefix(mount)
        .expect("a cgroup below the mount")
        .to_owned()
}

/// A sysfs file root may write, with a harmless value different from its own (this kernel
/// may lack `uevent_helper`).
fn sysfs_target() -> (&'static str, &'static str) {
    if Path::new("/sys/kernel/uevent_helper").exists() {
        ("/sys/kernel/uevent_helper", "/oxd-guard-test")
    } else {
        ("/sys/kernel/mm/ksm/run", "2")
    }
}

#[test]
fn proc_and_sys_writes_of_a_root_agent_reach_its_own_entries_but_not_oxds() {
    let setup = Setup::new("proc");
    let (sysfs, value) = sysfs_target();
    let sysfs_before = fs::read_to_string(sysfs).expect("read the sysfs file");
    let child = Command::new(oxd_bin())
        .arg("run")
        .arg("--policy")
        .arg(&setup.policy)
        .arg("--audit-log")
        .arg(&setup.log)
        .arg("--")
        .arg(attack_bin())
        .args([
            "guard-seq",
            "write",
            "own-oom",
            "/proc/self/oom_score_adj",
            "100",
            "read",
            "own-oom-after",
            "/proc/self/oom_score_adj",
            "read",
            "oxd-oom-before",
            "/proc/$PPID/oom_score_adj",
            "write",
            "oxd-oom",
            "/proc/$PPID/oom_score_adj",
            "999",
            "read",
            "oxd-oom-after",
            "/proc/$PPID/oom_score_adj",
            "write",
            "sysrq",
            "/proc/sysrq-trigger",
            "h",
            "write",
            "sysfs",
            sysfs,
            value,
            "read",
            "still-confined",
            &setup.secret,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn oxd run");
    let oxd_pid = child.id();
    let output = child.wait_with_output().expect("wait for oxd run");
    eprintln!("{}", String::from_utf8_lossy(&output.stdout));
    let sysfs_after = fs::read_to_string(sysfs).expect("read the sysfs file");
    if sysfs_after != sysfs_before {
        let _ = fs::write(sysfs, sysfs_before.trim());
    }
    assert!(
        output.status.success(),
        "oxd run failed: {:?}",
        output.status
    );
    let steps = probe_results(&output);
    assert_step_ok(&steps, "own-oom");
    assert_eq!(data(&steps, "own-oom-after").trim(), "100");
    assert_step_eperm(&steps, "oxd-oom");
    let before = data(&steps, "oxd-oom-before").trim().to_owned();
    assert_ne!(before, "999");
    assert_eq!(
        data(&steps, "oxd-oom-after").trim(),
        before,
        "oxd's oom_score_adj changed"
    );
    assert_step_eperm(&steps, "sysrq");
    assert_step_eperm(&steps, "sysfs");
    assert_eq!(sysfs_after, sysfs_before, "the agent changed {sysfs}");
    assert_step_eperm(&steps, "still-confined");
    let records = assert_guard_denied(
        &setup.log,
        "kernel-fs-write",
        &format!("proc pid {oxd_pid}"),
        1,
        0,
    );
    assert_eq!(records[0]["peer_pid"], oxd_pid, "{}", records[0]);
    assert_guard_denied(&setup.log, "kernel-fs-write", "proc", 1, 0);
    let records = assert_guard_denied(&setup.log, "kernel-fs-write", "sysfs", 1, 0);
    assert_eq!(records[0]["detail"], 0x6265_6572, "{}", records[0]);
}

/// A cgroup directory made by a test below `/sys/fs/cgroup/oxd`, emptied and removed when
/// dropped.
struct CgroupDir(PathBuf);

impl CgroupDir {
    fn new(path: PathBuf) -> Self {
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self(path)
    }
}

impl Drop for CgroupDir {
    fn drop(&mut self) {
        let _ = fs::write(self.0.join("cgroup.kill"), "1");
        for _ in 0..500 {
            match fs::remove_dir(&self.0) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                _ => return,
            }
        }
    }
}

/// Gives a file to uid 65534 while it lives; gives it back to root when dropped.
struct Chowned(PathBuf);

impl Chowned {
    fn new(path: PathBuf) -> Self {
        std::os::unix::fs::chown(&path, Some(65534), Some(65534))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
        Self(path)
    }
}

impl Drop for Chowned {
    fn drop(&mut self) {
        let _ = std::os::unix::fs::chown(&self.0, Some(0), Some(0));
    }
}

#[test]
fn a_non_root_agent_cannot_move_to_a_sibling_cgroup_delegated_to_it() {
    let setup = Setup::new("delegated");
    let mount = mount();
    // `oxd run` puts the agent in /oxd/run-PID; the test delegates a sibling of that cgroup
    // to uid 65534 (the directory and its files) and the right to move processes below their
    // common parent (its cgroup.procs), as a systemd delegation would.
    let parent = PathBuf::from(format!("{mount}/oxd"));
    if !parent.exists() {
        fs::create_dir(&parent).expect("create the oxd cgroup");
    }
    let sibling = CgroupDir::new(parent.join(format!("oxd-test-delegated-{}", std::process::id())));
    let start = CgroupDir::new(parent.join(format!("oxd-test-start-{}", std::process::id())));
    let _owned: Vec<Chowned> = [
        parent.join("cgroup.procs"),
        sibling.0.clone(),
        sibling.0.join("cgroup.procs"),
        sibling.0.join("cgroup.threads"),
        sibling.0.join("cgroup.subtree_control"),
    ]
    .into_iter()
    .map(Chowned::new)
    .collect();
    let target = format!("{}/cgroup.procs", sibling.0.display());
    let sibling_rel = sibling_rel_path(&sibling.0, &mount);

    // Control: unconfined, uid 65534 in another cgroup below the same parent may move there,
    // so only oxd stands in the way below.
    let procs = fs::OpenOptions::new()
        .write(true)
        .open(start.0.join("cgroup.procs"))
        .expect("open the start cgroup");
    let mut control = Command::new(attack_bin());
    control.args([
        "--as",
        "65534:65534",
        "guard-seq",
        "write",
        "move",
        &target,
        "0",
        "cgroup",
        "after",
    ]);
    {
        use std::os::fd::AsRawFd as _;
        let fd = procs.as_raw_fd();
        // SAFETY: the closure makes one async-signal-safe system call (write).
        unsafe {
            control.pre_exec(move || {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let output = control.output().expect("run the control");
    let steps = probe_results(&output);
    assert_step_ok(&steps, "move");
    assert_eq!(
        data(&steps, "after").trim(),
        sibling_rel,
        "the control did not move"
    );

    // The agent, confined: the same move is denied and recorded.
    let steps = setup.run_with(
        Some("65534:65534"),
        &[
            "cgroup", "before", "write", "move", &target, "0", "cgroup", "after",
        ],
        Command::new(oxd_bin()),
    );
    assert_step_eperm(&steps, "move");
    let before = data(&steps, "before").trim().to_owned();
    assert!(before.starts_with("/oxd/run-"), "agent cgroup {before}");
    assert_eq!(
        data(&steps, "after").trim(),
        before,
        "the agent left its cgroup"
    );
    assert_guard_denied(
        &setup.log,
        "cgroup-write",
        &cgroup_target(&sibling_rel),
        1,
        65534,
    );
}

/// A root agent may not lift the limits and switches set on its confined cgroup from outside
/// (`pids.max`, `memory.max`, `cgroup.freeze`, `cgroup.kill`, ...): of that cgroup only the
/// files the kernel's delegation model hands to a delegatee are writable (`cgroup.procs`,
/// `cgroup.threads`, `cgroup.subtree_control`), while the cgroups it makes below its own stay
/// its own to manage.
#[test]
fn a_root_agent_cannot_change_its_confined_cgroups_limits() {
    require_bpf_lsm();
    let scratch = Scratch::new("cgroup-limits");
    // `pids.max` exists where the parent enables the pids controller for its children.
    let root = PathBuf::from(mount());
    fs::write(root.join("cgroup.subtree_control"), "+pids")
        .expect("enable the pids controller below the root cgroup");
    let cgroup = TestCgroup::new("limits");
    assert!(
        cgroup.path().join("pids.max").exists(),
        "no pids.max in {} although the root enables the pids controller",
        cgroup.path().display()
    );
    let policy = scratch.policy("name = \"limits\"\n[file]\ndefault = \"allow\"\n");
    let mut daemon = Daemon::new(&scratch, "limits", &[]);
    daemon.start();
    daemon.confine_cgroup(&cgroup, &policy);
    let own = |file: &str| format!("write:{}/{file}", cgroup.path_str());
    let limits = [
        "pids.max",
        "cgroup.freeze",
        "cgroup.kill",
        "cgroup.max.descendants",
    ];
    let delegated = ["cgroup.procs", "cgroup.threads", "cgroup.subtree_control"];
    let inner = format!("write:{}/inner/cgroup.max.descendants", cgroup.path_str());
    let mut actions: Vec<String> = limits.iter().chain(&delegated).map(|f| own(f)).collect();
    actions.push("subcgroup:inner".to_owned());
    actions.push(inner.clone());
    let results = probe_in(
        &cgroup,
        &actions.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    for file in limits {
        assert_eperm(&results, &own(file));
    }
    for file in delegated {
        assert_ok(&results, &own(file));
    }
    assert_ok(&results, "subcgroup:inner");
    assert_ok(&results, &inner);
    let pids_max = fs::read_to_string(cgroup.path().join("pids.max")).unwrap_or_default();
    assert_eq!(pids_max.trim(), "max", "the limit was not touched");
    let id = cgroup.id();
    let denied = wait_for("the guard's records", WAIT, || {
        let denied: Vec<Value> = audit_records_so_far(&daemon.audit_log)
            .into_iter()
            .filter(|r| {
                r["op"] == "cgroup-write"
                    && r["decision"] == "deny"
                    && r["target"] == format!("cgroup {}", id & 0xffff_ffff)
            })
            .collect();
        (denied.len() >= limits.len()).then_some(denied)
    });
    for r in &denied {
        assert_eq!(r["enforced"], true, "{r}");
        assert!(
            r["reason"]
                .as_str()
                .is_some_and(|s| s.starts_with("guard:")),
            "{r}"
        );
    }
}
