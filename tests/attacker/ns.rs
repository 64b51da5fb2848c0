//! Techniques of the `ns` family: changing what a path names (user and mount namespaces, bind
//! mounts, chroot, another process's root, entering an existing namespace), so that a denied
//! file is reached under a name the policy allows.
//!
//! - `ns-bind-exec DENIED ALLOWED`: a user and mount namespace, `DENIED` bind-mounted over
//!   `ALLOWED`, then exec of `ALLOWED` (the process becomes whichever program that is).
//! - `ns-bind-read SECRET_DIR PUBLIC_DIR NAME`: a user and mount namespace, `SECRET_DIR`
//!   bind-mounted over `PUBLIC_DIR`, then a read of `PUBLIC_DIR/NAME`.
//! - `ns-chroot-read DIR NAME`: a user namespace, `chroot(DIR)`, then a read of `/NAME`.
//! - `ns-new-mount-api DIR`: a user and mount namespace, then `open_tree(DIR, OPEN_TREE_CLONE)`
//!   and `move_mount` of it onto `DIR` (the new mount API).
//! - `ns-read PATH`: a read of `PATH` (e.g. `/proc/PID/root/...` of a process in another mount
//!   namespace, or `/proc/self/root/...`).
//! - `ns-setns PID PATH [USERNS_FILE MNTNS_FILE]`: `setns` into the user and mount namespaces
//!   of process `PID` through a pidfd, then through `/proc/PID/ns/*`, then through the given
//!   namespace files (bind mounts of them, as tools pin namespaces), then a read of `PATH` (as
//!   seen from wherever it got).
//! - `ns-hold SECRET_DIR PUBLIC_DIR [UID:GID]`: (run unconfined, as the set-up of the two
//!   above) a user and mount namespace with `SECRET_DIR` bind-mounted over `PUBLIC_DIR`; prints
//!   `{"step":"ready","pid":N}` and holds them until its stdin closes. With `UID:GID` (run as
//!   root): a mount namespace only, as root makes one for a user's service (a sandbox, a
//!   private /tmp), then it becomes that user.
//!
//! A read step prints the data it read in `data`; a failed step its errno, like every step.

use std::{
    ffi::CString,
    io::{Read as _, Write as _},
    os::fd::AsRawFd as _,
};

use crate::{check, step, Outcome};

/// Runs `technique` if it belongs to this family.
pub(crate) fn run(technique: &str, args: &[String]) -> Option<Outcome> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    if technique.starts_with("ns-") {
        // `--as` changed the uid, which leaves a process non-dumpable: its /proc files become
        // root's (no `uid_map` to write) and other processes of its user may not look into it.
        // A program the user started is dumpable; so are these.
        // SAFETY: a plain system call on this process.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) };
    }
    Some(match (technique, args.as_slice()) {
        ("ns-bind-exec", [denied, allowed]) => bind_exec(denied, allowed),
        ("ns-bind-read", [secret, public, name]) => bind_read(secret, public, name),
        ("ns-chroot-read", [dir, name]) => chroot_read(dir, name),
        ("ns-new-mount-api", [dir]) => new_mount_api(dir),
        ("ns-read", [path]) => {
            read_step("read", path);
            Outcome::Done
        }
        ("ns-setns", [pid, path]) => setns(pid, path, &[]),
        ("ns-setns", [pid, path, files @ ..]) => setns(pid, path, files),
        ("ns-hold", [secret, public]) => hold(secret, public, None),
        ("ns-hold", [secret, public, user]) => hold(secret, public, Some(user)),
        (
            "ns-bind-exec" | "ns-bind-read" | "ns-chroot-read" | "ns-new-mount-api" | "ns-read"
            | "ns-setns" | "ns-hold",
            _,
        ) => Outcome::Usage(format!(
            "wrong arguments: {args:?} (see tests/attacker/ns.rs)"
        )),
        _ => return None,
    })
}

fn c_string(s: &str) -> CString {
    CString::new(s).expect("no NUL in arguments")
}

/// `unshare(flags)`, then (for a new user namespace) maps the caller's uid and gid to root
/// inside it, as `unshare -r` does. Returns whether the namespace was made.
fn unshare(flags: libc::c_int) -> bool {
    // SAFETY: a plain system call.
    let ids = unsafe { (libc::getuid(), libc::getgid()) };
    // SAFETY: a plain system call.
    let made = check(unsafe { libc::unshare(flags) }.into());
    step("unshare", &made);
    if made.is_err() {
        return false;
    }
    if flags & libc::CLONE_NEWUSER != 0 {
        let maps = std::fs::write("/proc/self/setgroups", "deny")
            .and_then(|()| std::fs::write("/proc/self/uid_map", format!("0 {} 1", ids.0)))
            .and_then(|()| std::fs::write("/proc/self/gid_map", format!("0 {} 1", ids.1)));
        step("id-maps", &maps);
        // Entering a user namespace left the process non-dumpable again (its capabilities are
        // no subset of the old ones).
        // SAFETY: a plain system call on this process.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) };
    }
    if flags & libc::CLONE_NEWNS != 0 {
        // As `unshare -m` does: nothing done here propagates back.
        let root = c_string("/");
        // SAFETY: valid C strings; a plain system call.
        let private = check(
            unsafe {
                libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                )
            }
            .into(),
        );
        step("make-private", &private);
    }
    true
}

/// `mount --bind SOURCE TARGET`, as a step; whether it worked.
fn bind(source: &str, target: &str) -> bool {
    let (source, target) = (c_string(source), c_string(target));
    // SAFETY: valid C strings; a plain system call.
    let bound = check(
        unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        }
        .into(),
    );
    step("bind-mount", &bound);
    bound.is_ok()
}

/// Reads `path` as step `name`, printing what it read.
fn read_step(name: &str, path: &str) {
    let line = match std::fs::read(path) {
        Ok(data) => serde_json::json!({
            "step": name,
            "ok": true,
            "data": String::from_utf8_lossy(&data),
        }),
        Err(e) => serde_json::json!({
            "step": name,
            "ok": false,
            "errno": e.raw_os_error(),
            "error": e.to_string(),
        }),
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn bind_exec(denied: &str, allowed: &str) -> Outcome {
    // The bind mount is tried even when the namespace is refused: it must fail on its own.
    unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS);
    bind(denied, allowed);
    let program = c_string(allowed);
    let argv = [program.as_ptr(), std::ptr::null()];
    // SAFETY: a NUL-terminated argument vector of valid C strings; returns only on failure.
    let failed = check(unsafe { libc::execv(program.as_ptr(), argv.as_ptr()) }.into());
    step("exec", &failed);
    Outcome::Done
}

fn bind_read(secret: &str, public: &str, name: &str) -> Outcome {
    unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS);
    bind(secret, public);
    read_step("read", &format!("{public}/{name}"));
    Outcome::Done
}

fn chroot_read(dir: &str, name: &str) -> Outcome {
    unshare(libc::CLONE_NEWUSER);
    let dir = c_string(dir);
    // SAFETY: a valid C string; a plain system call.
    let rooted = check(unsafe { libc::chroot(dir.as_ptr()) }.into());
    step("chroot", &rooted);
    read_step("read", &format!("/{name}"));
    Outcome::Done
}

fn new_mount_api(dir: &str) -> Outcome {
    unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS);
    let path = c_string(dir);
    // SAFETY: a valid C string; a plain system call.
    let tree = check(unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC,
        )
    });
    step("open-tree", &tree);
    let Ok(tree) = tree else {
        return Outcome::Done;
    };
    let empty = c_string("");
    // SAFETY: valid C strings and fds; a plain system call.
    let moved = check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree,
            empty.as_ptr(),
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    });
    step("move-mount", &moved);
    Outcome::Done
}

fn setns(pid: &str, path: &str, files: &[&str]) -> Outcome {
    let Ok(pid) = pid.parse::<libc::pid_t>() else {
        return Outcome::Usage(format!("not a pid: {pid}"));
    };
    // SAFETY: a plain system call.
    let pidfd = check(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) });
    step("pidfd-open", &pidfd);
    if let Ok(pidfd) = pidfd {
        // SAFETY: a plain system call on the fd just opened.
        let entered = check(
            unsafe {
                libc::setns(
                    i32::try_from(pidfd).unwrap_or(-1),
                    libc::CLONE_NEWUSER | libc::CLONE_NEWNS,
                )
            }
            .into(),
        );
        step("setns-pidfd", &entered);
    }
    for (name, kind) in [("user", libc::CLONE_NEWUSER), ("mnt", libc::CLONE_NEWNS)] {
        let file = std::fs::File::open(format!("/proc/{pid}/ns/{name}"));
        step(&format!("open-ns-{name}"), &file);
        if let Ok(file) = file {
            // SAFETY: a plain system call on an open fd.
            let entered = check(unsafe { libc::setns(file.as_raw_fd(), kind) }.into());
            step(&format!("setns-{name}"), &entered);
        }
    }
    for (file, (name, kind)) in files.iter().zip([
        ("user-file", libc::CLONE_NEWUSER),
        ("mnt-file", libc::CLONE_NEWNS),
    ]) {
        let file = std::fs::File::open(file);
        step(&format!("open-{name}"), &file);
        if let Ok(file) = file {
            // SAFETY: a plain system call on an open fd.
            let entered = check(unsafe { libc::setns(file.as_raw_fd(), kind) }.into());
            step(&format!("setns-{name}"), &entered);
        }
    }
    read_step("read", path);
    Outcome::Done
}

fn hold(secret: &str, public: &str, user: Option<&str>) -> Outcome {
    let flags = match user {
        Some(_) => libc::CLONE_NEWNS,
        None => libc::CLONE_NEWUSER | libc::CLONE_NEWNS,
    };
    if !unshare(flags) {
        return Outcome::Setup("cannot create the namespaces".into());
    }
    if !bind(secret, public) {
        return Outcome::Setup(format!("cannot bind-mount {secret} over {public}"));
    }
    if let Some(user) = user {
        if let Err(e) = crate::drop_to(user) {
            return Outcome::Setup(e);
        }
        // SAFETY: a plain system call on this process (the uid change made it non-dumpable).
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) };
    }
    let line = serde_json::json!({ "step": "ready", "pid": std::process::id() });
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    Outcome::Done
}
