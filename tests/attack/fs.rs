//! Attacks of the `fs` family: see `tests/attacker/fs.rs` for the techniques. The agent runs as
//! uid 65534 inside `oxd run`; the files it attacks are on their own tmpfs (not the guest's
//! overlay root, whose internal opens would decide some attempts a second time), owned by the
//! agent so that nothing but oxd stands in the way.

use std::{
    ffi::CString,
    fs,
    os::unix::{
        ffi::OsStrExt as _,
        fs::{chown, PermissionsExt as _},
    },
    path::{Path, PathBuf},
};

use serde_json::Value;

use crate::common::*;

/// The unprivileged agent.
const AGENT: &str = "65534:65534";
const AGENT_ID: u32 = 65534;

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn new(dir: &Path) -> Self {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let target = CString::new(dir.as_os_str().as_bytes()).expect("no NUL");
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

    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Ok(target) = CString::new(self.0.as_os_str().as_bytes()) {
            // SAFETY: umount2(2) on a NUL-terminated path.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// A scratch directory the agent can reach (tempfile makes it 0700), with a tmpfs in it.
fn setup(test: &str) -> (Scratch, Tmpfs) {
    let scratch = Scratch::new(test);
    fs::set_permissions(scratch.path(""), fs::Permissions::from_mode(0o755))
        .expect("open the scratch directory to the agent");
    let tmpfs = Tmpfs::new(&scratch.path("fs"));
    // The agent owns the tmpfs's root, so it may create, rename and remove names in it.
    chown(&tmpfs.0, Some(AGENT_ID), Some(AGENT_ID)).expect("chown the tmpfs root");
    (scratch, tmpfs)
}

/// A directory or file owned by the agent.
fn agent_dir(path: &Path) {
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    chown(path, Some(AGENT_ID), Some(AGENT_ID)).expect("chown a directory");
}

fn agent_file(path: &Path, contents: &str) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).expect("chmod a file");
    chown(path, Some(AGENT_ID), Some(AGENT_ID)).expect("chown a file");
}

fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 test paths")
}

/// Runs `oxd-attack --as 65534:65534 TECHNIQUE ARGS` under `policy`; its steps and the audit
/// records.
fn attack(scratch: &Scratch, policy: &str, args: &[&str]) -> (Vec<Value>, Vec<Value>) {
    let policy = scratch.policy(policy);
    let log = scratch.path("audit.jsonl");
    let attacker = attack_bin();
    let mut command = vec![s(&attacker), "--as", AGENT];
    command.extend_from_slice(args);
    let output = oxd_run(&policy, &log, &command);
    assert!(
        output.status.success(),
        "oxd-attack {args:?} did not run to its end: {:?}",
        output.status
    );
    (probe_results(&output), audit_records(&log))
}

fn step<'a>(steps: &'a [Value], name: &str) -> &'a Value {
    steps
        .iter()
        .find(|r| r["step"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {steps:#?}"))
}

fn assert_step_eperm(steps: &[Value], name: &str) {
    let r = step(steps, name);
    assert_eq!(r["ok"], false, "{name} should have been refused: {r}");
    assert_eq!(r["errno"], EPERM, "{name} should fail with EPERM: {r}");
}

fn assert_step_ok(steps: &[Value], name: &str) {
    let r = step(steps, name);
    assert_eq!(r["ok"], true, "{name} should have succeeded: {r}");
}

/// At least one record of `op` on `target`, each a deny by `rule`, enforced, by the agent.
fn assert_denied(records: &[Value], op: &str, target: &Path, rule: &str) {
    let found = records_for(records, op, s(target));
    assert!(
        !found.is_empty(),
        "no {op} record for {}: {records:#?}",
        target.display()
    );
    for r in found {
        assert_eq!(r["decision"], "deny", "{op} {}: {r}", target.display());
        assert_eq!(r["enforced"], true, "{r}");
        assert_eq!(r["rule"], rule, "{op} {}: {r}", target.display());
        assert_eq!(r["uid"], AGENT_ID, "{r}");
    }
}

fn assert_allowed(records: &[Value], op: &str, target: &Path) {
    let found = records_for(records, op, s(target));
    assert!(
        !found.is_empty() && found.iter().all(|r| r["decision"] == "allow"),
        "expected allowed {op} records for {}, found {found:#?}",
        target.display()
    );
}

/// With writing denied in `protected/`, no change to it gets through: truncating open,
/// truncate, unlink, rmdir, rename out of and into it, links out of and into it, a new symbolic
/// link, a symbolic link renamed over a file, mkdir, mkfifo, creating a file (`O_CREAT`),
/// chmod, chown to the agent's own ids. The
/// same changes in the agent's work directory (controls) succeed.
#[test]
fn writes_without_opening_for_write_are_decided() {
    let (scratch, t) = setup("fs-writes");
    let (p, w) = (t.path("protected"), t.path("work"));
    agent_dir(&p);
    agent_dir(&p.join("dir"));
    agent_dir(&w);
    let victim = p.join("victim");
    agent_file(&victim, "precious");
    agent_file(&w.join("mine"), "mine");
    agent_file(&w.join("junk"), "junk");
    let policy = format!(
        "name = \"attack-fs-writes\"\n[file]\ndefault = \"allow\"\ndeny = [{{ path = \"{}/**\", \
         access = [\"write\"] }}]\n",
        s(&p)
    );
    let (steps, records) = attack(&scratch, &policy, &["fs-writes", s(&p), s(&w)]);
    let rule = "file.deny[0]";

    for name in [
        "open-rdonly-trunc",
        "truncate",
        "unlink",
        "rmdir",
        "rename-out",
        "rename-in",
        "link-out",
        "link-in",
        "symlink",
        "symlink-replace",
        "mkdir",
        "mkfifo",
        "create",
        "chmod",
        "chown",
    ] {
        assert_step_eperm(&steps, name);
    }
    for name in [
        "control-chmod",
        "control-rename",
        "control-unlink",
        "control-mkdir",
        "control-create",
    ] {
        assert_step_ok(&steps, name);
    }

    // The effects: nothing in `protected/` changed.
    assert_eq!(
        fs::read_to_string(&victim).expect("the victim is still there"),
        "precious"
    );
    let meta = fs::symlink_metadata(&victim).expect("victim metadata");
    assert!(meta.file_type().is_file(), "the victim was replaced");
    assert_eq!(meta.permissions().mode() & 0o7777, 0o644, "mode changed");
    assert!(p.join("dir").is_dir(), "rmdir happened");
    for gone in ["linked", "symlink", "newdir", "fifo", "created"] {
        assert!(
            fs::symlink_metadata(p.join(gone)).is_err(),
            "{gone} was created in the protected directory"
        );
    }
    assert!(
        fs::symlink_metadata(w.join("stolen")).is_err(),
        "renamed out"
    );
    assert!(
        fs::symlink_metadata(w.join("hardlink")).is_err(),
        "linked out"
    );
    assert!(w.join("mine").is_file(), "renamed in");
    assert!(
        w.join("newdir").is_dir(),
        "the control mkdir did not happen"
    );

    // The records: each attempt denied by the write rule, under its own op.
    let open: Vec<&Value> = records_for(&records, "open", s(&victim))
        .into_iter()
        .filter(|r| r["access"] == "read,write")
        .collect();
    assert!(
        !open.is_empty()
            && open
                .iter()
                .all(|r| r["decision"] == "deny" && r["rule"] == rule && r["enforced"] == true),
        "an O_RDONLY|O_TRUNC open is a write: {open:#?}"
    );
    for op in [
        "truncate",
        "unlink",
        "rename-from",
        "rename-to",
        "link-from",
        "chmod",
        "chown",
    ] {
        assert_denied(&records, op, &victim, rule);
    }
    assert_denied(&records, "rmdir", &p.join("dir"), rule);
    assert_denied(&records, "link-to", &p.join("linked"), rule);
    assert_denied(&records, "symlink", &p.join("symlink"), rule);
    assert_denied(&records, "mkdir", &p.join("newdir"), rule);
    assert_denied(&records, "mknod", &p.join("fifo"), rule);
    assert_denied(&records, "create", &p.join("created"), rule);
    assert_allowed(&records, "create", &w.join("created"));
    // The allowed ends of the two-ended operations are recorded too.
    assert_allowed(&records, "rename-to", &w.join("stolen"));
    assert_allowed(&records, "rename-from", &w.join("mine"));
    assert_allowed(&records, "link-to", &w.join("hardlink"));
    assert_allowed(&records, "link-from", &w.join("mine"));
    assert_allowed(&records, "unlink", &w.join("junk2"));
    assert_allowed(&records, "mkdir", &w.join("newdir"));
}

/// A read-denied subtree has no readable other name: `ln secret/key work/k2`,
/// `mv secret work/other` and `mv proj work/moved` (`secret`'s parent) are refused (the source
/// of a link or rename must be readable, `secret/**` covers `secret` itself, and a directory
/// above a denied path cannot be moved), so no new name reads the secret.
#[test]
fn read_denied_files_cannot_be_linked_or_moved_out() {
    let (scratch, t) = setup("fs-identity");
    let (proj, w) = (t.path("proj"), t.path("work"));
    let secret = proj.join("secret");
    agent_dir(&proj);
    agent_dir(&secret);
    agent_dir(&w);
    agent_file(&secret.join("key"), "SECRET");
    let policy = format!(
        "name = \"attack-fs-identity\"\n[file]\ndefault = \"allow\"\ndeny = [{{ path = \
         \"{}/**\", access = [\"read\"] }}]\n",
        s(&secret)
    );
    let (steps, records) = attack(&scratch, &policy, &["fs-identity", s(&secret), s(&w)]);
    let rule = "file.deny[0]";
    assert_step_eperm(&steps, "ln-secret-key");
    assert_step_eperm(&steps, "mv-secret");
    assert_step_eperm(&steps, "mv-parent");
    for read in ["read-k2", "read-other-key", "read-moved-key"] {
        assert_eq!(step(&steps, read)["ok"], false, "{read} read the secret");
    }
    assert!(fs::symlink_metadata(w.join("k2")).is_err(), "linked out");
    assert!(fs::symlink_metadata(w.join("other")).is_err(), "moved out");
    assert!(
        fs::symlink_metadata(w.join("moved")).is_err(),
        "parent moved"
    );
    assert_eq!(
        fs::read_to_string(secret.join("key")).expect("the secret is still in place"),
        "SECRET"
    );
    for (op, target) in [
        ("link-from", secret.join("key")),
        ("rename-from", secret.clone()),
        ("rename-from", proj.clone()),
    ] {
        assert_denied(&records, op, &target, rule);
        assert!(
            records_for(&records, op, s(&target))
                .iter()
                .all(|r| r["access"] == "read,write"),
            "a source is judged for reading and writing: {records:#?}"
        );
    }
}

/// The classic routes around `open` reach `file_open` or fail: an `io_uring` `IORING_OP_OPENAT`
/// of a read-denied file is decided like `openat` (EPERM, recorded); `open_by_handle_at` needs
/// `CAP_DAC_READ_SEARCH`, so the kernel refuses it to uid 65534 with EPERM before any open (no
/// record: nothing was opened); an `O_PATH` descriptor opens nothing, and reopening it through
/// `/proc/self/fd` is an open of the real file, denied and recorded.
#[test]
fn uring_handles_and_o_path_do_not_open_denied_files() {
    let (scratch, t) = setup("fs-classic");
    let secret = t.path("secret");
    agent_dir(&secret);
    let key = secret.join("key");
    agent_file(&key, "SECRET");
    let policy = format!(
        "name = \"attack-fs-classic\"\n[file]\ndefault = \"allow\"\ndeny = [{{ path = \
         \"{}/**\", access = [\"read\"] }}]\n",
        s(&secret)
    );
    let (steps, records) = attack(&scratch, &policy, &["fs-classic", s(&key)]);
    assert_step_eperm(&steps, "io-uring-openat");
    assert_step_ok(&steps, "name-to-handle-at");
    assert_step_eperm(&steps, "open-by-handle-at");
    assert_step_ok(&steps, "o-path");
    assert_step_eperm(&steps, "o-path-reopen");
    // Two opens reached file_open (io_uring's and the reopen), both denied.
    let opens = records_for(&records, "open", s(&key));
    assert_eq!(opens.len(), 2, "{records:#?}");
    assert_denied(&records, "open", &key, "file.deny[0]");
}
