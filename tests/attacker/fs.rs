//! Techniques of the `fs` family (see the crate documentation): changing files without opening
//! them for writing, moving or linking a file out of a read-denied subtree, the classic ways
//! around `open` (`io_uring`, `open_by_handle_at`, `O_PATH`), and changing a file's extended
//! attributes, ACLs and times.

use std::{ffi::CString, io, os::unix::ffi::OsStrExt as _, path::Path};

use crate::{check, step, Outcome};

/// Runs `technique` if it belongs to this family.
pub(crate) fn run(technique: &str, args: &[String]) -> Option<Outcome> {
    Some(match technique {
        "fs-writes" => match args {
            [protected, work] => writes(Path::new(protected), Path::new(work)),
            _ => Outcome::Usage("fs-writes PROTECTED_DIR WORK_DIR".into()),
        },
        "fs-identity" => match args {
            [secret, work] => identity(Path::new(secret), Path::new(work)),
            _ => Outcome::Usage("fs-identity SECRET_DIR WORK_DIR".into()),
        },
        "fs-classic" => match args {
            [secret_file] => classic(Path::new(secret_file)),
            _ => Outcome::Usage("fs-classic SECRET_FILE".into()),
        },
        "fs-attrs" => match args {
            [protected, work] => attrs(Path::new(protected), Path::new(work)),
            _ => Outcome::Usage("fs-attrs PROTECTED_DIR WORK_DIR".into()),
        },
        "fs-rotation-race" => match args {
            [log, denied] => rotation_race(Path::new(log), Path::new(denied)),
            _ => Outcome::Usage("fs-rotation-race LOG DENIED_FILE".into()),
        },
        _ => return None,
    })
}

/// Appends to the log's name [`rotation_race`] tries at least.
const RACE_ATTEMPTS: u32 = 2500;

/// Races oxd's rotation of its audit log `log`: opens of `denied` make records until `log.1`
/// appears, then (for at least a second and 2,500 tries) the log's name and every hidden name
/// next to it are opened for appending as fast as possible, and `forged` written where one
/// opens. The refused appends
/// are records too: the log goes on rotating while the agent tries.
fn rotation_race(log: &Path, denied: &Path) -> Outcome {
    use std::{
        fs::OpenOptions,
        io::Write as _,
        sync::atomic::{AtomicBool, Ordering},
        time::{Duration, Instant},
    };
    static STOP: AtomicBool = AtomicBool::new(false);
    let denied = denied.to_owned();
    let noise = std::thread::spawn(move || {
        while !STOP.load(Ordering::Relaxed) {
            let _ = std::fs::File::open(&denied);
        }
    });
    let mut first = log.as_os_str().to_owned();
    first.push(".1");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::symlink_metadata(&first).is_err() {
        if Instant::now() > deadline {
            STOP.store(true, Ordering::Relaxed);
            let _ = noise.join();
            return Outcome::Setup("the log never rotated in 30 s".into());
        }
        std::hint::spin_loop();
    }
    // From here on the refused appends make the records that rotate the log.
    STOP.store(true, Ordering::Relaxed);
    let _ = noise.join();
    let dir = log.parent().unwrap_or(Path::new("."));
    // The log's name is also created if missing; a hidden name is not (it may have been renamed
    // to the log's name since it was listed: a file made there would be the agent's own).
    let append = |path: &Path, create: bool| {
        OpenOptions::new()
            .append(true)
            .create(create)
            .open(path)
            .and_then(|mut f| f.write_all(b"forged\n"))
    };
    let (mut by_name, mut hidden) = (append(log, true), None);
    // At least a second and RACE_ATTEMPTS appends by name (each refused one a record:
    // thousands of rotations however slow the machine), at most 30 s.
    let started = Instant::now();
    let mut attempts = 1;
    while (attempts < RACE_ATTEMPTS || started.elapsed() < Duration::from_secs(1))
        && started.elapsed() < Duration::from_secs(30)
    {
        if by_name.is_err() {
            by_name = append(log, true);
        }
        attempts += 1;
        if attempts % 8 != 0 {
            continue;
        }
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name();
            if name.as_bytes().starts_with(b".") && hidden.as_ref().is_none_or(Result::is_err) {
                match append(&entry.path(), false) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    tried => hidden = Some(tried),
                }
            }
        }
    }
    step("append-to-the-log-after-rotation", &by_name);
    step(
        "append-to-a-hidden-name-beside-it",
        &hidden.unwrap_or_else(|| Err(io::Error::other("no hidden name seen"))),
    );
    Outcome::Done
}

fn c(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("no NUL in test paths")
}

/// `Ok(())` or the last OS error, for a libc call returning an int.
fn ok(ret: libc::c_int) -> io::Result<()> {
    check(libc::c_long::from(ret)).map(|_| ())
}

/// Every way to change `protected/victim` (and `protected/dir`) without opening it for
/// writing, then the same kind of change in `work` as a control. `work` holds `mine` (a file
/// of the agent's) and `junk` (for the control).
fn writes(p: &Path, w: &Path) -> Outcome {
    let victim = c(&p.join("victim"));
    let mine = c(&w.join("mine"));
    // SAFETY: plain system calls on NUL-terminated paths that outlive them.
    unsafe {
        let fd = libc::open(victim.as_ptr(), libc::O_RDONLY | libc::O_TRUNC);
        step("open-rdonly-trunc", &ok(fd));
        if fd >= 0 {
            libc::close(fd);
        }
        step("truncate", &ok(libc::truncate(victim.as_ptr(), 0)));
        step("unlink", &ok(libc::unlink(victim.as_ptr())));
        step("rmdir", &ok(libc::rmdir(c(&p.join("dir")).as_ptr())));
        step(
            "rename-out",
            &ok(libc::rename(victim.as_ptr(), c(&w.join("stolen")).as_ptr())),
        );
        step(
            "rename-in",
            &ok(libc::rename(mine.as_ptr(), victim.as_ptr())),
        );
        step(
            "link-out",
            &ok(libc::link(victim.as_ptr(), c(&w.join("hardlink")).as_ptr())),
        );
        step(
            "link-in",
            &ok(libc::link(mine.as_ptr(), c(&p.join("linked")).as_ptr())),
        );
        step(
            "symlink",
            &ok(libc::symlink(mine.as_ptr(), c(&p.join("symlink")).as_ptr())),
        );
        // Replace the victim by a symbolic link made where writing is allowed.
        let staged = c(&w.join("staged-link"));
        let made = ok(libc::symlink(
            c(Path::new("/etc/hostname")).as_ptr(),
            staged.as_ptr(),
        ));
        if made.is_err() {
            return Outcome::Setup(format!("symlink in the work directory: {made:?}"));
        }
        step(
            "symlink-replace",
            &ok(libc::rename(staged.as_ptr(), victim.as_ptr())),
        );
        step(
            "mkdir",
            &ok(libc::mkdir(c(&p.join("newdir")).as_ptr(), 0o755)),
        );
        step(
            "mkfifo",
            &ok(libc::mknod(
                c(&p.join("fifo")).as_ptr(),
                libc::S_IFIFO | 0o644,
                0,
            )),
        );
        // O_RDONLY, so that only the creation itself is at stake.
        let fd = libc::open(
            c(&p.join("created")).as_ptr(),
            libc::O_RDONLY | libc::O_CREAT,
            0o644,
        );
        step("create", &ok(fd));
        if fd >= 0 {
            libc::close(fd);
        }
        step("chmod", &ok(libc::chmod(victim.as_ptr(), 0o777)));
        step(
            "chown",
            &ok(libc::chown(victim.as_ptr(), libc::getuid(), libc::getgid())),
        );
        // Controls: the same kinds of change where writing is allowed.
        let junk = c(&w.join("junk"));
        step("control-chmod", &ok(libc::chmod(junk.as_ptr(), 0o600)));
        step(
            "control-rename",
            &ok(libc::rename(junk.as_ptr(), c(&w.join("junk2")).as_ptr())),
        );
        step(
            "control-unlink",
            &ok(libc::unlink(c(&w.join("junk2")).as_ptr())),
        );
        let fd = libc::open(
            c(&w.join("created")).as_ptr(),
            libc::O_RDONLY | libc::O_CREAT,
            0o644,
        );
        step("control-create", &ok(fd));
        if fd >= 0 {
            libc::close(fd);
        }
        step(
            "control-mkdir",
            &ok(libc::mkdir(c(&w.join("newdir")).as_ptr(), 0o755)),
        );
    }
    Outcome::Done
}

/// Gives a read-denied file a readable name: `ln secret/key work/k2`, `mv secret work/other`
/// and `mv PARENT work/moved` (`secret`'s parent directory), then tries to read through the
/// new names.
fn identity(secret: &Path, w: &Path) -> Outcome {
    let read = |path: &Path| std::fs::read(path);
    // SAFETY: plain system calls on NUL-terminated paths that outlive them.
    unsafe {
        step(
            "ln-secret-key",
            &ok(libc::link(
                c(&secret.join("key")).as_ptr(),
                c(&w.join("k2")).as_ptr(),
            )),
        );
        step("read-k2", &read(&w.join("k2")));
        step(
            "mv-secret",
            &ok(libc::rename(
                c(secret).as_ptr(),
                c(&w.join("other")).as_ptr(),
            )),
        );
        step("read-other-key", &read(&w.join("other/key")));
        let parent = secret.parent().unwrap_or(Path::new("/"));
        let name = secret.file_name().unwrap_or_default();
        step(
            "mv-parent",
            &ok(libc::rename(
                c(parent).as_ptr(),
                c(&w.join("moved")).as_ptr(),
            )),
        );
        step(
            "read-moved-key",
            &read(&w.join("moved").join(name).join("key")),
        );
    }
    Outcome::Done
}

/// The classic routes around `open`: `io_uring`'s `IORING_OP_OPENAT`, `open_by_handle_at`, and an
/// `O_PATH` descriptor reopened through `/proc/self/fd`.
fn classic(secret: &Path) -> Outcome {
    let path = c(secret);
    match uring_openat(&path) {
        Ok(opened) => step("io-uring-openat", &opened),
        Err(e) => return Outcome::Setup(format!("io_uring: {e}")),
    }
    // open_by_handle_at: the handle can be had by anyone; opening it needs CAP_DAC_READ_SEARCH.
    // SAFETY: `handle` is a `struct file_handle` with room for MAX_HANDLE_SZ (128) bytes.
    unsafe {
        let mut handle = [0u32; 2 + 32];
        handle[0] = 128;
        let mut mount_id = 0;
        let named = check(libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            path.as_ptr(),
            handle.as_mut_ptr(),
            &raw mut mount_id,
            0,
        ));
        step("name-to-handle-at", &named);
        // The mount's root (the secret's grandparent, readable): the secret's own directory is
        // read-denied too, and 6.12 opens the mount descriptor before the capability check.
        let mount_root = secret.parent().and_then(Path::parent);
        let dir = c(mount_root.unwrap_or(Path::new("/")));
        let dir_fd = libc::open(dir.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
        let fd = check(libc::syscall(
            libc::SYS_open_by_handle_at,
            dir_fd,
            handle.as_mut_ptr(),
            libc::O_RDONLY,
        ));
        step("open-by-handle-at", &fd);
        if let Ok(fd) = fd.map(libc::c_int::try_from) {
            libc::close(fd.unwrap_or(-1));
        }
        if dir_fd >= 0 {
            libc::close(dir_fd);
        }
        // O_PATH opens nothing for reading (no file_open); reopening it through /proc does.
        let opath = libc::open(path.as_ptr(), libc::O_PATH);
        step("o-path", &ok(opath));
        if opath >= 0 {
            let proc_path = c(Path::new(&format!("/proc/self/fd/{opath}")));
            let fd = libc::open(proc_path.as_ptr(), libc::O_RDONLY);
            step("o-path-reopen", &ok(fd));
            if fd >= 0 {
                libc::close(fd);
            }
            libc::close(opath);
        }
    }
    Outcome::Done
}

/// `struct io_uring_params` (120 bytes).
#[repr(C)]
#[derive(Default)]
struct UringParams {
    sq_entries: u32,
    cq_entries: u32,
    flags: u32,
    sq_thread_cpu: u32,
    sq_thread_idle: u32,
    features: u32,
    wq_fd: u32,
    resv: [u32; 3],
    /// `struct io_sqring_offsets`: `head`, `tail`, `ring_mask`, `ring_entries`, `flags`,
    /// `dropped`, `array`, `resv1`, `user_addr`.
    sq_off: [u32; 10],
    /// `struct io_cqring_offsets`: `head`, `tail`, `ring_mask`, `ring_entries`, `overflow`,
    /// `cqes`, `flags`, `resv1`, `user_addr`.
    cq_off: [u32; 10],
}

const IORING_OP_OPENAT: u8 = 18;
const IORING_ENTER_GETEVENTS: u32 = 1;
const IORING_OFF_SQ_RING: i64 = 0;
const IORING_OFF_CQ_RING: i64 = 0x800_0000;
const IORING_OFF_SQES: i64 = 0x1000_0000;

/// Opens `path` for reading through one `IORING_OP_OPENAT` request: the opened descriptor, or
/// the error the request completed with; the outer error if the ring cannot be used at all.
#[expect(
    clippy::cast_ptr_alignment,
    clippy::cast_possible_truncation,
    reason = "the rings are page-aligned mappings laid out by the kernel at the offsets it gave; \
              the ring's descriptor is an int"
)]
fn uring_openat(path: &CString) -> io::Result<io::Result<i32>> {
    // SAFETY: the ring is set up, mapped and used as io_uring(7) describes; every pointer is
    // inside the mappings the kernel sized in `params`.
    unsafe {
        let mut params = UringParams::default();
        let ring =
            check(libc::syscall(libc::SYS_io_uring_setup, 4, &raw mut params))? as libc::c_int;
        let map = |len: usize, off: i64| {
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                ring,
                off,
            );
            if p == libc::MAP_FAILED {
                Err(io::Error::last_os_error())
            } else {
                Ok(p.cast::<u8>())
            }
        };
        let sq_len = params.sq_off[6] as usize + params.sq_entries as usize * 4;
        let cq_len = params.cq_off[5] as usize + params.cq_entries as usize * 16;
        let sq = map(sq_len, IORING_OFF_SQ_RING)?;
        let cq = map(cq_len, IORING_OFF_CQ_RING)?;
        let sqes = map(params.sq_entries as usize * 64, IORING_OFF_SQES)?;
        // One SQE: opcode, flags, ioprio, fd, off, addr, len, open_flags, user_data.
        let sqe = sqes;
        std::ptr::write_bytes(sqe, 0, 64);
        *sqe = IORING_OP_OPENAT;
        *sqe.add(4).cast::<i32>() = libc::AT_FDCWD;
        *sqe.add(16).cast::<u64>() = path.as_ptr() as u64;
        *sqe.add(28).cast::<u32>() = libc::O_RDONLY as u32;
        *sqe.add(32).cast::<u64>() = 7;
        let mask = *sq.add(params.sq_off[2] as usize).cast::<u32>();
        let tail = sq.add(params.sq_off[1] as usize).cast::<u32>();
        let index = *tail & mask;
        *sq.add(params.sq_off[6] as usize)
            .cast::<u32>()
            .add(index as usize) = 0;
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        *tail += 1;
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        check(libc::syscall(
            libc::SYS_io_uring_enter,
            ring,
            1,
            1,
            IORING_ENTER_GETEVENTS,
            std::ptr::null::<u8>(),
            0,
        ))?;
        let cq_mask = *cq.add(params.cq_off[2] as usize).cast::<u32>();
        let head = *cq.add(params.cq_off[0] as usize).cast::<u32>();
        // One CQE: user_data, res, flags.
        let cqe = cq.add(params.cq_off[5] as usize + (head & cq_mask) as usize * 16);
        let res = *cqe.add(8).cast::<i32>();
        libc::close(ring);
        if res < 0 {
            Ok(Err(io::Error::from_raw_os_error(-res)))
        } else {
            libc::close(res);
            Ok(Ok(res))
        }
    }
}

/// The access ACL `attrs` sets (`system.posix_acl_access`, in the kernel's xattr format:
/// version 2, then (tag, permissions, id) entries sorted by tag): `user::rw-`, `user:1000:rw-`,
/// `group::r--`, `mask::rw-`, `other::r--`. It names a user, so the file system stores it (an
/// ACL that only restates the mode would not be).
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

/// `fsetxattr` of an ACL and `futimens` on a read-only descriptor of `victim`,
/// `fremovexattr` of the ACL on one of `acl_file`.
fn by_descriptor(
    victim: &CString,
    acl_file: &CString,
    acl: &[u8],
    times: &[libc::timespec; 2],
) -> Result<(), Outcome> {
    let acl_name = c"system.posix_acl_access";
    let open = |path: &CString| {
        // SAFETY: open(2) on a NUL-terminated path.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY) };
        if fd < 0 {
            return Err(Outcome::Setup(format!(
                "open {path:?} for reading: {}",
                io::Error::last_os_error()
            )));
        }
        Ok(fd)
    };
    let fd = open(victim)?;
    // SAFETY: system calls on our descriptor, NUL-terminated names and buffers that outlive them.
    unsafe {
        step(
            "fsetxattr-acl",
            &ok(libc::fsetxattr(
                fd,
                acl_name.as_ptr(),
                acl.as_ptr().cast(),
                acl.len(),
                0,
            )),
        );
        step("futimens", &ok(libc::futimens(fd, times.as_ptr())));
        libc::close(fd);
    }
    let fd = open(acl_file)?;
    // SAFETY: as above.
    unsafe {
        step(
            "fremovexattr-acl",
            &ok(libc::fremovexattr(fd, acl_name.as_ptr())),
        );
        libc::close(fd);
    }
    Ok(())
}

/// Changes the extended attributes, ACL and times of `protected/victim` (which has no ACL) and
/// `protected/acl` (which has one) without opening them for writing: by path, without
/// following (`l*`), by descriptor (opened read-only), and through aliases in `work`: `sym`
/// (a symbolic link to the victim) and `alias` (a hard link to `work/exact`, which an exact
/// rule denies). Then the same changes to `work/mine` as controls.
fn attrs(p: &Path, w: &Path) -> Outcome {
    let victim = c(&p.join("victim"));
    let acl_file = c(&p.join("acl"));
    let sym = c(&w.join("sym"));
    let alias = c(&w.join("alias"));
    let mine = c(&w.join("mine"));
    let acl = acl_blob();
    let acl_name = c"system.posix_acl_access";
    let user_name = c"user.oxd";
    let value = b"planted";
    // 2001-09-09, as `touch -d` would set.
    let when = libc::timespec {
        tv_sec: 1_000_000_000,
        tv_nsec: 0,
    };
    let times = [when, when];
    // The control's times: 2009-02-13.
    let control = libc::timespec {
        tv_sec: 1_234_567_890,
        tv_nsec: 0,
    };
    let control_times = [control, control];
    let set_acl = |path: &CString| {
        // SAFETY: NUL-terminated strings and a buffer that outlive the call.
        ok(unsafe {
            libc::setxattr(
                path.as_ptr(),
                acl_name.as_ptr(),
                acl.as_ptr().cast(),
                acl.len(),
                0,
            )
        })
    };
    let touch = |path: &CString, times: Option<&[libc::timespec; 2]>| {
        // SAFETY: a NUL-terminated path, and times (or null: now) that outlive the call.
        ok(unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                path.as_ptr(),
                times.map_or(std::ptr::null(), |t| t.as_ptr()),
                0,
            )
        })
    };
    // SAFETY: plain system calls on NUL-terminated strings and buffers that outlive them.
    unsafe {
        step(
            "setxattr-user",
            &ok(libc::setxattr(
                victim.as_ptr(),
                user_name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )),
        );
        step(
            "lsetxattr-user",
            &ok(libc::lsetxattr(
                victim.as_ptr(),
                user_name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )),
        );
        step("setxattr-acl", &set_acl(&victim));
        step(
            "removexattr-acl",
            &ok(libc::removexattr(acl_file.as_ptr(), acl_name.as_ptr())),
        );
        step(
            "lremovexattr-user",
            &ok(libc::lremovexattr(victim.as_ptr(), user_name.as_ptr())),
        );
        if let Err(setup) = by_descriptor(&victim, &acl_file, &acl, &times) {
            return setup;
        }
        step("utimensat-now", &touch(&victim, None));
        step("utimensat-set", &touch(&victim, Some(&times)));
        step("setxattr-symlink-alias", &set_acl(&sym));
        step("utimes-symlink-alias", &touch(&sym, Some(&times)));
        step("setxattr-hardlink-alias", &set_acl(&alias));
        step("utimes-hardlink-alias", &touch(&alias, Some(&times)));
        // Controls: the same changes where writing is allowed.
        step("control-setxattr-acl", &set_acl(&mine));
        step(
            "control-removexattr-acl",
            &ok(libc::removexattr(mine.as_ptr(), acl_name.as_ptr())),
        );
        step("control-utimensat", &touch(&mine, Some(&control_times)));
    }
    Outcome::Done
}
