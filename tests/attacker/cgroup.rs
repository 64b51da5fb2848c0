//! Techniques of the `cgroup` family: switching oxd off or leaving the confinement through the
//! kernel's own interfaces: `bpf()`, cgroup files, bpffs, `/proc/sys`. One technique runs a
//! sequence of steps, so one `oxd run` tries them all:
//!
//! `guard-seq STEP ARGS... [STEP ARGS...]...`, each step one of:
//! - `write NAME PATH TEXT`: open `PATH` for writing and write `TEXT` (in both, `$PID` and
//!   `$PPID` stand for this process's pid and its parent's).
//! - `write-own NAME MOUNT REL TEXT`: the same on `MOUNT/<own cgroup>/REL` (this process's
//!   cgroup v2, read from `/proc/self/cgroup`).
//! - `write-fd NAME FD TEXT`: write `TEXT` to the inherited descriptor `FD`.
//! - `read NAME PATH`: read `PATH` (the data in the step's `data`).
//! - `mkdir NAME PATH`, `mkdir-own NAME MOUNT REL`, `rmdir NAME PATH`, `unlink NAME PATH`,
//!   `create NAME PATH`.
//! - `cgroup NAME`: this process's cgroup v2 path, in `data`.
//! - `clone-into NAME DIR`: `clone3(CLONE_INTO_CGROUP)` into the cgroup directory `DIR`
//!   (the child exits at once).
//! - `bpf-prog-load NAME`: `BPF_PROG_LOAD` of a two-instruction socket filter.
//! - `bpf-next-id NAME CMD`: `bpf(CMD)` with start id 0 (`BPF_PROG_GET_NEXT_ID` = 11,
//!   `BPF_LINK_GET_NEXT_ID` = 31, ...), the found id in `data`.
//! - `bpf-map-create NAME`: `BPF_MAP_CREATE` of a one-element array.
//! - `bpf-obj-get NAME PATH`: `BPF_OBJ_GET` of the pinned object at `PATH`.
//! - `bpf-pin NAME PATH`: (set-up, unconfined) creates an array map and pins it at `PATH`.

use std::{
    ffi::CString,
    io::Write as _,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use crate::{check, step, Outcome};

/// Runs `technique` if it belongs to this family.
pub(crate) fn run(technique: &str, args: &[String]) -> Option<Outcome> {
    if technique != "guard-seq" {
        return None;
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut rest = args.as_slice();
    while !rest.is_empty() {
        rest = match one_step(rest) {
            Ok(rest) => rest,
            Err(outcome) => return Some(outcome),
        };
    }
    Some(Outcome::Done)
}

/// Runs the step at the front of `args`; returns what follows it.
fn one_step<'a>(args: &'a [&'a str]) -> Result<&'a [&'a str], Outcome> {
    let usage = || {
        Outcome::Usage(format!(
            "bad step at {args:?} (see tests/attacker/cgroup.rs)"
        ))
    };
    let (taken, result): (usize, std::io::Result<Option<String>>) = match args {
        ["write", name, path, text, ..] => (4, write_path(name, path, text)),
        ["write-own", name, mount, rel, text, ..] => (5, {
            own_path(mount, rel).and_then(|path| write_path(name, &path, text))
        }),
        ["write-fd", _, fd, text, ..] => {
            let fd: i32 = fd.parse().map_err(|_| usage())?;
            let text = expand(text);
            // SAFETY: a plain system call on a descriptor the caller says is inherited.
            let ret = unsafe { libc::write(fd, text.as_ptr().cast(), text.len()) };
            (4, check(ret as libc::c_long).map(|_| None))
        }
        ["read", _, path, ..] => (3, std::fs::read_to_string(expand(path)).map(Some)),
        ["mkdir", _, path, ..] => (3, std::fs::create_dir(path).map(|()| None)),
        ["mkdir-own", _, mount, rel, ..] => (
            4,
            own_path(mount, rel).and_then(|p| std::fs::create_dir(p).map(|()| None)),
        ),
        ["rmdir", _, path, ..] => (3, std::fs::remove_dir(path).map(|()| None)),
        ["unlink", _, path, ..] => (3, std::fs::remove_file(path).map(|()| None)),
        ["create", _, path, ..] => (
            3,
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .map(|_| None),
        ),
        ["cgroup", ..] => (2, own_cgroup().map(Some)),
        ["clone-into", _, dir, ..] => (3, clone_into(dir).map(|()| None)),
        ["bpf-prog-load", ..] => (2, bpf_prog_load().map(|_| None)),
        ["bpf-next-id", _, cmd, ..] => {
            let cmd: i64 = cmd.parse().map_err(|_| usage())?;
            (3, bpf_next_id(cmd).map(|id| Some(id.to_string())))
        }
        ["bpf-map-create", ..] => (2, bpf_map_create().map(|_| None)),
        ["bpf-obj-get", _, path, ..] => (3, bpf_obj_get(path).map(|_| None)),
        ["bpf-pin", _, path, ..] => (3, bpf_pin(path).map(|()| None)),
        _ => return Err(usage()),
    };
    report(args[1], &result);
    Ok(&args[taken..])
}

/// Prints a step's result, with its data when it has some.
fn report(name: &str, result: &std::io::Result<Option<String>>) {
    match result {
        Ok(Some(data)) => {
            let line = serde_json::json!({ "step": name, "ok": true, "data": data });
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
        _ => step(name, result),
    }
}

/// `text` (a path or what to write) with `$PID` and `$PPID` replaced by this process's and its
/// parent's pids.
fn expand(text: &str) -> String {
    // SAFETY: a plain system call.
    let ppid = unsafe { libc::getppid() };
    text.replace("$PPID", &ppid.to_string())
        .replace("$PID", &std::process::id().to_string())
}

fn write_path(_name: &str, path: &str, text: &str) -> std::io::Result<Option<String>> {
    let mut file = std::fs::OpenOptions::new().write(true).open(expand(path))?;
    file.write_all(expand(text).as_bytes())?;
    Ok(None)
}

/// This process's cgroup v2 path (`/oxd/run-42`), from `/proc/self/cgroup`.
fn own_cgroup() -> std::io::Result<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup")?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
        .ok_or_else(|| std::io::Error::other("no cgroup v2 line in /proc/self/cgroup"))
}

fn own_path(mount: &str, rel: &str) -> std::io::Result<String> {
    Ok(format!("{mount}{}/{rel}", own_cgroup()?))
}

/// A system call's result as a descriptor (or pid).
fn as_fd(ret: libc::c_long) -> std::io::Result<i32> {
    i32::try_from(ret).map_err(std::io::Error::other)
}

/// `clone3` with `CLONE_INTO_CGROUP` into `dir`; the child exits at once, the parent reaps it.
fn clone_into(dir: &str) -> std::io::Result<()> {
    let path = CString::new(dir).map_err(std::io::Error::other)?;
    // SAFETY: a plain system call; the descriptor is owned below.
    let fd = check(
        unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        }
        .into(),
    )?;
    // SAFETY: `open` just returned it.
    let dirfd = unsafe { OwnedFd::from_raw_fd(as_fd(fd)?) };
    // struct clone_args (CLONE_ARGS_SIZE_VER2): flags, pidfd, child_tid, parent_tid,
    // exit_signal, stack, stack_size, tls, set_tid, set_tid_size, cgroup.
    let mut args = [0_u64; 11];
    args[0] = 0x2_0000_0000; // CLONE_INTO_CGROUP
    args[4] = libc::SIGCHLD as u64;
    args[10] = u64::from(dirfd.as_raw_fd().cast_unsigned());
    // SAFETY: clone3 with a valid argument block; the child only calls `_exit`.
    let pid = unsafe { libc::syscall(libc::SYS_clone3, args.as_mut_ptr(), size_of_val(&args)) };
    if pid == 0 {
        // SAFETY: the child leaves at once.
        unsafe { libc::_exit(0) };
    }
    let pid = check(pid)?;
    let mut status = 0;
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(as_fd(pid)?, &raw mut status, 0) };
    Ok(())
}

/// The size of the `union bpf_attr` passed: large enough for every command used here (the
/// kernel accepts a larger, zero-padded one).
const BPF_ATTR_SIZE: usize = 144;

fn bpf(cmd: i64, attr: &mut [u8; BPF_ATTR_SIZE]) -> std::io::Result<libc::c_long> {
    // SAFETY: `bpf()` with a buffer of the size given.
    check(unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), BPF_ATTR_SIZE) })
}

fn put_u32(attr: &mut [u8], at: usize, value: u32) {
    attr[at..at + 4].copy_from_slice(&value.to_ne_bytes());
}

fn put_u64(attr: &mut [u8], at: usize, value: u64) {
    attr[at..at + 8].copy_from_slice(&value.to_ne_bytes());
}

/// `BPF_PROG_LOAD` (5) of `r0 = 0; exit` as a socket filter.
fn bpf_prog_load() -> std::io::Result<libc::c_long> {
    // mov64 r0, 0; exit
    let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
    let license = b"GPL\0";
    let mut attr = [0_u8; BPF_ATTR_SIZE];
    put_u32(&mut attr, 0, 1); // prog_type BPF_PROG_TYPE_SOCKET_FILTER
    put_u32(&mut attr, 4, 2); // insn_cnt
    put_u64(&mut attr, 8, insns.as_ptr() as u64);
    put_u64(&mut attr, 16, license.as_ptr() as u64);
    bpf(5, &mut attr)
}

/// A `*_GET_NEXT_ID` command from id 0: the next id.
fn bpf_next_id(cmd: i64) -> std::io::Result<u32> {
    let mut attr = [0_u8; BPF_ATTR_SIZE];
    bpf(cmd, &mut attr)?;
    Ok(u32::from_ne_bytes([attr[4], attr[5], attr[6], attr[7]]))
}

/// `BPF_MAP_CREATE` (0) of an array of one 4-byte element.
fn bpf_map_create() -> std::io::Result<libc::c_long> {
    let mut attr = [0_u8; BPF_ATTR_SIZE];
    put_u32(&mut attr, 0, 2); // BPF_MAP_TYPE_ARRAY
    put_u32(&mut attr, 4, 4); // key_size
    put_u32(&mut attr, 8, 4); // value_size
    put_u32(&mut attr, 12, 1); // max_entries
    bpf(0, &mut attr)
}

/// `BPF_OBJ_GET` (7) of `path`.
fn bpf_obj_get(path: &str) -> std::io::Result<libc::c_long> {
    let path = CString::new(path).map_err(std::io::Error::other)?;
    let mut attr = [0_u8; BPF_ATTR_SIZE];
    put_u64(&mut attr, 0, path.as_ptr() as u64);
    bpf(7, &mut attr)
}

/// Creates an array map and pins it (`BPF_OBJ_PIN`, 6) at `path`.
fn bpf_pin(path: &str) -> std::io::Result<()> {
    let fd = bpf_map_create()?;
    // SAFETY: `bpf` just returned it.
    let map = unsafe { OwnedFd::from_raw_fd(as_fd(fd)?) };
    let path = CString::new(path).map_err(std::io::Error::other)?;
    let mut attr = [0_u8; BPF_ATTR_SIZE];
    put_u64(&mut attr, 0, path.as_ptr() as u64);
    put_u32(&mut attr, 8, map.as_raw_fd().cast_unsigned());
    bpf(6, &mut attr).map(|_| ())
}
