//! Attacks of the `ns` family: see `tests/attacker/ns.rs` for the techniques. Each runs as uid
//! 65534 inside `oxd run`, on files of their own tmpfs (not the guest's overlay root, whose own
//! internal opens would stop some of these by accident), and fails if the denied file is
//! reached under another name, or if the attempt is not recorded.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::Value;

use crate::{common::*, require_bpf_lsm};

/// The agent's user and group.
const AGENT: &str = "65534:65534";

/// A scratch directory with a tmpfs of its own (unmounted when dropped) holding:
/// `secret/key` (what the policy denies), `public/key`, `allowed/tool` (a copy of `true`) and
/// `denied/tool` (a copy of `id`), all readable by the agent.
struct Place {
    scratch: Scratch,
    fs: PathBuf,
    secret_text: String,
}

impl Place {
    fn new(test: &str) -> Self {
        let scratch = Scratch::new(test);
        let root = scratch.path("");
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).expect("chmod scratch");
        let fs_dir = scratch.path("fs");
        fs::create_dir(&fs_dir).expect("create the tmpfs mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "mode=755", "oxd-ns-test"])
            .arg(&fs_dir)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "cannot mount a tmpfs on {}",
            fs_dir.display()
        );
        let secret_text = format!("SECRET-{test}-{}", std::process::id());
        for (dir, key) in [("secret", secret_text.as_str()), ("public", "public")] {
            fs::create_dir(fs_dir.join(dir)).expect("create a directory");
            fs::write(fs_dir.join(dir).join("key"), key).expect("write a key");
        }
        for (dir, program) in [("allowed", "/usr/bin/true"), ("denied", "/usr/bin/id")] {
            fs::create_dir(fs_dir.join(dir)).expect("create a directory");
            let tool = fs_dir.join(dir).join("tool");
            fs::copy(program, &tool).expect("copy a program");
            fs::set_permissions(&tool, fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        Self {
            scratch,
            fs: fs_dir,
            secret_text,
        }
    }

    /// A path below the tmpfs, as a string.
    fn at(&self, rel: &str) -> String {
        self.fs.join(rel).to_str().expect("utf-8 path").to_owned()
    }

    fn log(&self) -> PathBuf {
        self.scratch.path("audit.jsonl")
    }

    /// A policy with a `[file]` section denying `secret/**`, plus `extra`.
    fn file_policy(&self, extra: &str) -> PathBuf {
        self.scratch.policy(&format!(
            "name = \"attack-ns\"\n{extra}\n[file]\ndefault = \"allow\"\ndeny = [\"{}\"]\n",
            self.at("secret/**")
        ))
    }

    /// Runs the attacker inside `oxd run` under `policy` as the agent user.
    fn attack(&self, policy: &Path, args: &[&str]) -> (std::process::Output, Vec<Value>) {
        let attack = attack_bin();
        let mut all = vec![attack.to_str().expect("utf-8 path"), "--as", AGENT];
        all.extend_from_slice(args);
        let output = oxd_run(policy, &self.log(), &all);
        let steps = steps(&output.stdout);
        (output, steps)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.fs).status();
    }
}

/// The technique's step lines.
fn steps(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter(|l| l.starts_with("{\"step\"") || l.starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
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

/// The forbidden effect: the secret's text anywhere in what the agent printed.
fn assert_secret_not_read(place: &Place, output: &std::process::Output) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        !stdout.contains(&place.secret_text),
        "the agent read the denied file under another name:\n{stdout}"
    );
}

/// The one record of `op` on `target` by the agent, with its decision and whether enforced.
fn ns_record<'a>(records: &'a [Value], op: &str, target: &str) -> &'a Value {
    let found: Vec<&Value> = records
        .iter()
        .filter(|r| r["op"] == op && r["target"] == target && r["uid"] == 65534)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {op} record for {target:?}, got {found:#?}\nall: {records:#?}"
    );
    found[0]
}

/// Asserts a record of the `[process] namespaces` switch: decision, enforced, rule.
fn assert_switch_record(record: &Value, decision: &str, enforced: bool) {
    assert_eq!(record["decision"], decision, "{record}");
    assert_eq!(record["enforced"], enforced, "{record}");
    assert_eq!(record["rule"], "process.namespaces", "{record}");
    assert_eq!(record["reason"], "rule", "{record}");
}

#[test]
fn bind_mounting_a_denied_binary_over_an_allowed_one_in_a_user_namespace_is_denied() {
    require_bpf_lsm();
    let place = Place::new("ns-bind-exec");
    let attack = attack_bin();
    let policy = place.scratch.policy(&format!(
        "name = \"attack-ns\"\n[exec]\ndefault = \"deny\"\nallow = [\"{}\", \"{}\", {LIBRARIES}]\n",
        attack.display(),
        place.at("allowed/tool")
    ));
    let (denied, allowed) = (place.at("denied/tool"), place.at("allowed/tool"));
    let (output, steps) = place.attack(&policy, &["ns-bind-exec", &denied, &allowed]);
    assert_step_eperm(&steps, "unshare");
    assert_step_eperm(&steps, "bind-mount");
    // The allowed program ran (`true`), not the denied one (`id`, which prints `uid=`).
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        !stdout.contains("uid="),
        "the denied program ran:\n{stdout}"
    );
    assert!(output.status.success(), "true failed: {:?}", output.status);

    let records = audit_records(&place.log());
    assert_switch_record(ns_record(&records, "userns-create", ""), "deny", true);
    let mount = ns_record(&records, "mount", &allowed);
    assert_switch_record(mount, "deny", true);
    assert_eq!(mount["detail"], libc::MS_BIND, "{mount}");
    let exec = ns_record(&records, "exec", &allowed);
    assert_eq!(exec["decision"], "allow", "{exec}");
    assert!(
        records_for(&records, "exec", &denied).is_empty(),
        "{records:#?}"
    );
}

#[test]
fn bind_mounting_a_denied_directory_in_a_user_namespace_is_denied() {
    require_bpf_lsm();
    let place = Place::new("ns-bind-read");
    let policy = place.file_policy("");
    let (secret, public) = (place.at("secret"), place.at("public"));
    let (output, steps) = place.attack(&policy, &["ns-bind-read", &secret, &public, "key"]);
    assert_step_eperm(&steps, "unshare");
    assert_step_eperm(&steps, "bind-mount");
    assert_eq!(step_of(&steps, "read")["data"], "public", "{steps:#?}");
    assert_secret_not_read(&place, &output);

    let records = audit_records(&place.log());
    assert_switch_record(ns_record(&records, "userns-create", ""), "deny", true);
    assert_switch_record(ns_record(&records, "mount", &public), "deny", true);
}

#[test]
fn chroot_into_a_denied_directory_in_a_user_namespace_is_denied() {
    require_bpf_lsm();
    let place = Place::new("ns-chroot");
    let policy = place.file_policy("");
    let secret = place.at("secret");
    let (output, steps) = place.attack(&policy, &["ns-chroot-read", &secret, "key"]);
    assert_step_eperm(&steps, "unshare");
    // Without a user namespace the agent has no CAP_SYS_CHROOT: the capability module refuses
    // before `path_chroot` is asked (so that refusal is not oxd's to record).
    assert_step_eperm(&steps, "chroot");
    assert_eq!(step_of(&steps, "read")["ok"], false, "{steps:#?}");
    assert_secret_not_read(&place, &output);

    let records = audit_records(&place.log());
    assert_switch_record(ns_record(&records, "userns-create", ""), "deny", true);
}

/// An unconfined process of the agent's user holding a mount namespace in which the secret
/// directory is bind-mounted over the public one; killed when dropped.
struct Holder {
    _child: KillOnDrop,
    pid: u32,
}

impl Holder {
    /// Made by the user (a user and a mount namespace), or by root for the user (a mount
    /// namespace owned by the initial user namespace, as for a service's private /tmp).
    fn new(place: &Place, by_root: bool) -> Self {
        let (secret, public) = (place.at("secret"), place.at("public"));
        let mut command = Command::new(attack_bin());
        if by_root {
            command.args(["ns-hold", &secret, &public, AGENT]);
        } else {
            command.args(["--as", AGENT, "ns-hold", &secret, &public]);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the namespace holder");
        let stdout = child.stdout.take().expect("the holder's stdout is piped");
        let mut reader = BufReader::new(stdout);
        let mut pid = None;
        let mut seen = Vec::new();
        let mut line = String::new();
        while pid.is_none() {
            line.clear();
            if reader.read_line(&mut line).expect("read the holder") == 0 {
                break;
            }
            seen.push(line.clone());
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v["step"] == "ready" {
                    pid = v["pid"].as_u64();
                }
            }
        }
        let pid = pid.unwrap_or_else(|| panic!("the holder did not get ready: {seen:?}"));
        Self {
            _child: KillOnDrop(child),
            pid: u32::try_from(pid).expect("a pid"),
        }
    }
}

#[test]
fn reading_through_the_root_of_a_process_in_another_mount_namespace_is_denied() {
    require_bpf_lsm();
    let place = Place::new("ns-proc-root");
    let holder = Holder::new(&place, true);
    let policy = place.file_policy("");
    // Through the holder's root, `public/key` is the secret (its mount namespace's bind mount),
    // and the kernel resolves the path in that namespace: `.../public/key`.
    let foreign = format!("/proc/{}/root{}", holder.pid, place.at("public/key"));
    let (output, steps) = place.attack(&policy, &["ns-read", &foreign]);
    assert_secret_not_read(&place, &output);
    // Two decisions stand in the way, and whichever the kernel asks first refuses: looking
    // into a task outside the agent's confinement (`[ipc]`, in `ptrace_access_check`: the
    // kernel turns that refusal into EACCES for /proc/PID/root), then the file of another
    // mount namespace (`[process] namespaces`, in `file_open`: EPERM).
    let read = step_of(&steps, "read");
    assert_eq!(
        read["ok"], false,
        "the read should have been denied: {read}"
    );
    let records = audit_records(&place.log());
    if read["errno"] == libc::EACCES {
        let ptrace: Vec<&Value> = records
            .iter()
            .filter(|r| {
                r["op"] == "ptrace"
                    && r["peer_pid"] == holder.pid
                    && r["uid"] == 65534
                    && r["decision"] == "deny"
                    && r["enforced"] == true
            })
            .collect();
        assert!(
            !ptrace.is_empty(),
            "no denied ptrace record for the holder: {records:#?}"
        );
    } else {
        assert_eq!(read["errno"], EPERM, "{read}");
        let open = ns_record(&records, "open", &place.at("public/key"));
        assert_eq!(open["decision"], "deny", "{open}");
        assert_eq!(open["enforced"], true, "{open}");
        assert_eq!(open["rule"], "process.namespaces", "{open}");
        assert_eq!(
            open["reason"], "the file is in another mount namespace (namespaces denied)",
            "{open}"
        );
    }

    // Through the agent's own root, the path is the host's: the file rule decides.
    let own = format!("/proc/self/root{}", place.at("secret/key"));
    let (output, steps) = place.attack(&policy, &["ns-read", &own]);
    assert_step_eperm(&steps, "read");
    assert_secret_not_read(&place, &output);
    let records = audit_records(&place.log());
    let open = ns_record(&records, "open", &place.at("secret/key"));
    assert_eq!(open["decision"], "deny", "{open}");
    assert_eq!(open["rule"], "file.deny[0]", "{open}");
    drop(holder);
}

#[test]
fn entering_or_looking_into_a_user_namespace_made_by_the_same_user_is_denied() {
    require_bpf_lsm();
    let place = Place::new("ns-setns");
    let holder = Holder::new(&place, false);
    let policy = place.file_policy("");
    let pid = holder.pid.to_string();
    let public_key = place.at("public/key");
    // The holder's namespaces pinned by bind mounts of their nsfs files (as tools pin
    // namespaces), which the agent may open without looking into the holder.
    let ns_files = ["userns", "mntns"].map(|name| place.at(name));
    for (name, file) in ["user", "mnt"].iter().zip(&ns_files) {
        fs::write(file, "").expect("create a mount point for a namespace file");
        let status = Command::new("mount")
            .arg("--bind")
            .arg(format!("/proc/{pid}/ns/{name}"))
            .arg(file)
            .status()
            .expect("run mount");
        assert!(status.success(), "cannot pin the holder's {name} namespace");
    }
    let (output, steps) = place.attack(
        &policy,
        &["ns-setns", &pid, &public_key, &ns_files[0], &ns_files[1]],
    );
    assert_step_ok(&steps, "pidfd-open");
    // setns through a pidfd first checks that the caller may look into the target.
    assert_step_eperm(&steps, "setns-pidfd");
    assert_step_ok(&steps, "open-user-file");
    assert_step_eperm(&steps, "setns-user-file");
    assert_step_ok(&steps, "open-mnt-file");
    assert_step_eperm(&steps, "setns-mnt-file");
    // /proc/PID/ns/* of a process in a user namespace the agent owns: looking into it needs
    // CAP_SYS_PTRACE there, which the agent would have as its owner.
    for name in ["open-ns-user", "open-ns-mnt"] {
        let s = step_of(&steps, name);
        assert_eq!(s["ok"], false, "{name} should have been denied: {s}");
        assert_eq!(s["errno"], libc::EACCES, "{s}");
    }
    assert_eq!(step_of(&steps, "read")["data"], "public", "{steps:#?}");
    assert_secret_not_read(&place, &output);

    // The same through its root directory.
    let foreign = format!("/proc/{pid}/root{public_key}");
    let (output, steps) = place.attack(&policy, &["ns-read", &foreign]);
    let read = step_of(&steps, "read");
    assert_eq!(read["errno"], libc::EACCES, "{read}");
    assert_secret_not_read(&place, &output);

    // Entering a user namespace, or a mount namespace it owns, checks CAP_SYS_ADMIN (21) in
    // it; looking into a process in one, CAP_SYS_PTRACE (19).
    let records = audit_records(&place.log());
    let capable: Vec<&Value> = records
        .iter()
        .filter(|r| r["op"] == "capable" && r["uid"] == 65534)
        .collect();
    for record in &capable {
        assert_switch_record(record, "deny", true);
        assert_eq!(record["target"], "", "{record}");
    }
    for cap in [19, 21] {
        assert!(
            capable.iter().any(|r| r["detail"] == cap),
            "no denial of capability {cap}: {records:#?}"
        );
    }
    drop(holder);
}

#[test]
fn namespaces_allow_lets_the_agent_make_namespaces_and_mounts_and_records_them() {
    require_bpf_lsm();
    let place = Place::new("ns-allow");
    let policy = place.file_policy("[process]\nnamespaces = \"allow\"\n");
    let (secret, public) = (place.at("secret"), place.at("public"));
    let (output, steps) = place.attack(&policy, &["ns-bind-read", &secret, &public, "key"]);
    assert!(output.status.success(), "{:?}", output.status);
    assert_step_ok(&steps, "unshare");
    assert_step_ok(&steps, "id-maps");
    assert_step_ok(&steps, "bind-mount");
    // What the switch gives away: the bind mount renames the denied directory.
    assert_eq!(step_of(&steps, "read")["data"], place.secret_text.as_str());
    let records = audit_records(&place.log());
    assert_switch_record(ns_record(&records, "userns-create", ""), "allow", true);
    assert_switch_record(ns_record(&records, "mount", &public), "allow", true);
}

#[test]
fn in_audit_mode_namespaces_are_recorded_as_denied_but_happen() {
    require_bpf_lsm();
    let place = Place::new("ns-audit");
    let policy = place.file_policy("mode = \"audit\"\n");
    let (secret, public) = (place.at("secret"), place.at("public"));
    let (_, steps) = place.attack(&policy, &["ns-bind-read", &secret, &public, "key"]);
    assert_step_ok(&steps, "unshare");
    assert_step_ok(&steps, "bind-mount");
    let records = audit_records(&place.log());
    assert_switch_record(ns_record(&records, "userns-create", ""), "deny", false);
    assert_switch_record(ns_record(&records, "mount", &public), "deny", false);
}

/// How many mounts have `path` as their mount point, in the test's mount namespace.
fn mounts_at(path: &str) -> usize {
    fs::read_to_string("/proc/self/mountinfo")
        .expect("read mountinfo")
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(path))
        .count()
}

#[test]
fn attaching_a_mount_with_the_new_mount_api_is_denied() {
    require_bpf_lsm();
    let place = Place::new("ns-move-mount");
    let policy = place.file_policy("");
    let public = place.at("public");
    let before = mounts_at(&public);
    // As root: cloning a mount tree (`open_tree`) needs no user namespace then, so the attach
    // (`move_mount`) is what the kernel asks oxd about.
    let attack = attack_bin();
    let output = oxd_run(
        &policy,
        &place.log(),
        &[
            attack.to_str().expect("utf-8 path"),
            "ns-new-mount-api",
            &public,
        ],
    );
    let steps = steps(&output.stdout);
    assert_step_ok(&steps, "open-tree");
    assert_step_eperm(&steps, "move-mount");
    assert_eq!(
        mounts_at(&public),
        before,
        "a mount was attached at {public}"
    );

    let records = audit_records(&place.log());
    let moves: Vec<&Value> = records.iter().filter(|r| r["op"] == "move-mount").collect();
    assert_eq!(moves.len(), 1, "{records:#?}");
    assert_switch_record(moves[0], "deny", true);
    assert_eq!(moves[0]["uid"], 0, "{}", moves[0]);
}
