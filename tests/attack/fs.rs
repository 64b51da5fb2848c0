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

/// `oxd-attack`'s access ACL (`user:1000:rw-` and the mode's entries), in the kernel's xattr
/// format.
fn acl_blob() -> Vec<u8> {
    const UNDEFINED: u32 = u32::MAX;
    let mut blob = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, 6u16, UNDEFINED),
        (0x02, 6, 1000),
        (0x04, 4, UNDEFINED),
        (0x10, 6, UNDEFINED),
        (0x20, 4, UNDEFINED),
    ] {
        blob.extend_from_slice(&tag.to_le_bytes());
        blob.extend_from_slice(&perm.to_le_bytes());
        blob.extend_from_slice(&id.to_le_bytes());
    }
    blob
}

const ACL_XATTR: &std::ffi::CStr = c"system.posix_acl_access";

/// The value of extended attribute `name` of `path` (not following a final symlink), `None`
/// if it has none.
fn xattr(path: &Path, name: &std::ffi::CStr) -> Option<Vec<u8>> {
    let target = CString::new(path.as_os_str().as_bytes()).expect("no NUL");
    let mut buf = vec![0u8; 256];
    // SAFETY: NUL-terminated strings and a buffer of the length given, all outliving the call.
    let len = unsafe {
        libc::lgetxattr(
            target.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if len < 0 {
        let err = std::io::Error::last_os_error();
        assert!(
            matches!(err.raw_os_error(), Some(libc::ENODATA | libc::EOPNOTSUPP)),
            "getxattr {name:?} of {}: {err}",
            path.display()
        );
        return None;
    }
    buf.truncate(usize::try_from(len).expect("a length"));
    Some(buf)
}

/// Sets the access and modification times of `path` to `secs`.
fn set_mtime(path: &Path, secs: i64) {
    let target = CString::new(path.as_os_str().as_bytes()).expect("no NUL");
    let when = libc::timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    // SAFETY: a NUL-terminated path and times that outlive the call.
    let ret = unsafe { libc::utimensat(libc::AT_FDCWD, target.as_ptr(), [when, when].as_ptr(), 0) };
    assert_eq!(ret, 0, "set the times of {}", path.display());
}

fn mtime(path: &Path) -> i64 {
    use std::os::unix::fs::MetadataExt as _;
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .mtime()
}

/// The times the files of `attributes_and_times_are_writes` start with (2017-07-14).
const OLD: i64 = 1_500_000_000;

/// With writing denied in `protected/` (and an exact rule denying `work/exact`), extended
/// attributes, ACLs and times cannot be changed there: `setxattr`/`lsetxattr` of a `user.`
/// attribute, setting and removing the access ACL by path and by a read-only descriptor,
/// `utimensat` (now, and set times as `touch -d`), `futimens`, and the same through a symbolic
/// link in `work` to the victim and a hard link in `work` to `work/exact` (denied by identity).
/// The same changes to the agent's own file in `work` (controls) succeed and are recorded as
/// allowed.
#[test]
fn attributes_and_times_are_writes() {
    let (scratch, t) = setup("fs-attrs");
    let (p, w) = (t.path("protected"), t.path("work"));
    agent_dir(&p);
    agent_dir(&w);
    let victim = p.join("victim");
    let acl_file = p.join("acl");
    let exact = w.join("exact");
    let (sym, alias, mine) = (w.join("sym"), w.join("alias"), w.join("mine"));
    for file in [&victim, &acl_file, &exact, &mine] {
        agent_file(file, "data");
    }
    std::os::unix::fs::symlink(&victim, &sym).expect("symlink work/sym to the victim");
    fs::hard_link(&exact, &alias).expect("hard link work/alias to work/exact");
    let acl = acl_blob();
    let acl_target = CString::new(acl_file.as_os_str().as_bytes()).expect("no NUL");
    // SAFETY: NUL-terminated strings and a buffer that outlive the call.
    let ret = unsafe {
        libc::setxattr(
            acl_target.as_ptr(),
            ACL_XATTR.as_ptr(),
            acl.as_ptr().cast(),
            acl.len(),
            0,
        )
    };
    assert_eq!(
        ret,
        0,
        "give protected/acl an ACL: {}",
        std::io::Error::last_os_error()
    );
    for file in [&victim, &exact, &mine] {
        set_mtime(file, OLD);
    }
    let policy = format!(
        "name = \"attack-fs-attrs\"\n[file]\ndefault = \"allow\"\ndeny = [{{ path = \"{}/**\", \
         access = [\"write\"] }}, {{ path = \"{}\", access = [\"write\"] }}]\n",
        s(&p),
        s(&exact)
    );
    let (steps, records) = attack(&scratch, &policy, &["fs-attrs", s(&p), s(&w)]);

    for name in [
        "setxattr-user",
        "lsetxattr-user",
        "setxattr-acl",
        "removexattr-acl",
        "lremovexattr-user",
        "fsetxattr-acl",
        "fremovexattr-acl",
        "futimens",
        "utimensat-now",
        "utimensat-set",
        "setxattr-symlink-alias",
        "utimes-symlink-alias",
        "setxattr-hardlink-alias",
        "utimes-hardlink-alias",
    ] {
        assert_step_eperm(&steps, name);
    }
    for name in [
        "control-setxattr-acl",
        "control-removexattr-acl",
        "control-utimensat",
    ] {
        assert_step_ok(&steps, name);
    }

    // The effects: no attribute planted or removed, no time changed.
    assert_eq!(xattr(&victim, c"user.oxd"), None, "user.oxd was set");
    assert_eq!(
        xattr(&victim, ACL_XATTR),
        None,
        "an ACL was set on the victim"
    );
    assert_eq!(
        xattr(&exact, ACL_XATTR),
        None,
        "an ACL was set through the alias"
    );
    assert_eq!(
        xattr(&acl_file, ACL_XATTR).as_deref(),
        Some(&acl[..]),
        "the ACL of protected/acl was removed"
    );
    assert_eq!(mtime(&victim), OLD, "the victim's times changed");
    assert_eq!(
        mtime(&exact),
        OLD,
        "work/exact's times changed through the alias"
    );
    assert_eq!(
        mtime(&mine),
        1_234_567_890,
        "the control utimensat did not happen"
    );
    assert_eq!(
        xattr(&mine, ACL_XATTR),
        None,
        "the control removexattr did not happen"
    );

    // The records: each attempt denied under its own op, by the subtree rule or, through the
    // hard link, by the exact rule naming the file.
    for op in ["setxattr", "removexattr", "utimes"] {
        assert_denied(&records, op, &victim, "file.deny[0]");
    }
    assert_denied(&records, "removexattr", &acl_file, "file.deny[0]");
    for op in ["setxattr", "utimes"] {
        assert_denied(&records, op, &alias, "file.deny[1]");
    }
    // Five setxattr attempts on the victim reach the hook (user. by path and without
    // following, the ACL by path, by descriptor and through the symlink), and four utimes.
    assert_eq!(
        records_for(&records, "setxattr", s(&victim)).len(),
        5,
        "{records:#?}"
    );
    assert_eq!(
        records_for(&records, "utimes", s(&victim)).len(),
        4,
        "{records:#?}"
    );
    for op in ["setxattr", "removexattr", "utimes"] {
        assert_allowed(&records, op, &mine);
    }
}
