//! Techniques of the `exec` family: running a program the exec rules deny, or getting its code
//! (or a library's) mapped executable, without an exec of the denied path.
//!
//! - `exec PATH [ARG...]`: exec PATH as given (a `..` path, a `/proc/self/root/...` path, the
//!   dynamic loader with the denied program as its argument).
//! - `symlink-exec TARGET LINK [ARG...]`: make LINK a symbolic link to TARGET, exec LINK.
//! - `hardlink-exec TARGET LINK [ARG...]`: make LINK a hard link to TARGET, exec LINK.
//! - `copy-exec SOURCE DEST [ARG...]`: copy SOURCE to DEST (mode 0755), exec DEST.
//! - `fd-exec PATH [ARG...]`: open PATH, exec `/proc/self/fd/N`.
//! - `fexecve PATH [ARG...]`: open PATH, `execveat(fd, "", AT_EMPTY_PATH)`.
//! - `opath-fexecve PATH [ARG...]`: open PATH with `O_PATH` (no read access needed),
//!   `execveat(fd, "", AT_EMPTY_PATH)`.
//! - `memfd-exec SOURCE [ARG...]`: copy SOURCE into a memfd; map the memfd executable, then
//!   `fexecve` it.
//! - `shebang-exec SCRIPT INTERPRETER [ARG...]`: write a script whose `#!` line names
//!   INTERPRETER (with ARG... as its arguments), exec the script.
//! - `ld-preload SOURCE DEST MARKER PROGRAM`: copy the library SOURCE to DEST, run PROGRAM with
//!   `LD_PRELOAD=DEST` and `OXD_MARKER=MARKER` (the payload library's constructor creates
//!   MARKER).
//! - `dlopen SOURCE DEST MARKER`: copy the library SOURCE to DEST, `dlopen` it (with
//!   `OXD_MARKER=MARKER`).
//! - `mmap-exec PATH`: map PATH with `PROT_READ | PROT_EXEC`.
//! - `mprotect-exec PATH`: map PATH with `PROT_READ`, then `mprotect` it to
//!   `PROT_READ | PROT_EXEC`, and report whether `/proc/self/maps` shows it executable.
//! - `anon-exec`: anonymous memory made executable (what JITs do), private and shared: write a
//!   `ret` instruction, make it executable, call it. (Not an attack: it must keep working.)
//!
//! An exec that succeeds replaces the technique (its output is the program's); one that fails
//! prints its step.

use std::{
    ffi::{CString, OsStr},
    fs,
    io::{self, Write as _},
    os::unix::{
        ffi::OsStrExt as _,
        fs::PermissionsExt as _,
        io::{AsRawFd as _, FromRawFd as _, OwnedFd},
    },
    process::Command,
};

use crate::{check, step, Outcome};

/// Runs `technique` if it belongs to this family.
pub(crate) fn run(technique: &str, args: &[String]) -> Option<Outcome> {
    let outcome = match technique {
        "exec" => with_path(args, |path, rest| exec(path, "exec", rest)),
        "symlink-exec" => with_two(args, |target, link, rest| {
            let made = std::os::unix::fs::symlink(target, link);
            step("symlink", &made);
            exec(link, "exec", rest)
        }),
        "hardlink-exec" => with_two(args, |target, link, rest| {
            let made = fs::hard_link(target, link);
            step("hardlink", &made);
            if made.is_err() {
                return Outcome::Setup(format!("cannot hard-link {target} as {link}"));
            }
            exec(link, "exec", rest)
        }),
        "copy-exec" => with_two(args, |source, dest, rest| {
            let copied = fs::copy(source, dest)
                .and_then(|_| fs::set_permissions(dest, fs::Permissions::from_mode(0o755)));
            step("copy", &copied);
            if copied.is_err() {
                return Outcome::Setup(format!("cannot copy {source} to {dest}"));
            }
            exec(dest, "exec", rest)
        }),
        "fd-exec" => with_path(args, |path, rest| match fs::File::open(path) {
            Ok(file) => {
                let via = format!("/proc/self/fd/{}", file.as_raw_fd());
                // The descriptor must stay open across the exec.
                std::mem::forget(file);
                exec(&via, "exec", rest)
            }
            Err(e) => Outcome::Setup(format!("cannot open {path}: {e}")),
        }),
        "fexecve" => with_path(args, |path, rest| match fs::File::open(path) {
            Ok(file) => fexecve(&file.into(), "fexecve", path, rest),
            Err(e) => Outcome::Setup(format!("cannot open {path}: {e}")),
        }),
        "opath-fexecve" => with_path(args, |path, rest| {
            use std::os::unix::fs::OpenOptionsExt as _;
            match fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH)
                .open(path)
            {
                Ok(file) => fexecve(&file.into(), "fexecve", path, rest),
                Err(e) => Outcome::Setup(format!("cannot open {path} with O_PATH: {e}")),
            }
        }),
        "memfd-exec" => with_path(args, memfd_exec),
        "shebang-exec" => with_two(args, |script, interpreter, rest| {
            let text = format!("#!{interpreter} {}\n", rest.join(" "));
            let written = fs::write(script, text)
                .and_then(|()| fs::set_permissions(script, fs::Permissions::from_mode(0o755)));
            step("write-script", &written);
            if written.is_err() {
                return Outcome::Setup(format!("cannot write {script}"));
            }
            exec(script, "exec", &[])
        }),
        "ld-preload" => ld_preload(args),
        "dlopen" => match args {
            [source, dest, marker] => {
                if let Err(e) = copy_library(source, dest) {
                    return Some(Outcome::Setup(e));
                }
                std::env::set_var("OXD_MARKER", marker);
                step("dlopen", &dlopen(dest));
                Outcome::Done
            }
            _ => Outcome::Usage("wants SOURCE DEST MARKER".to_owned()),
        },
        "mmap-exec" => with_path(args, |path, _| {
            match fs::File::open(path) {
                Ok(file) => step(
                    "mmap-exec",
                    &map(&file, libc::PROT_READ | libc::PROT_EXEC, libc::MAP_PRIVATE),
                ),
                Err(e) => return Outcome::Setup(format!("cannot open {path}: {e}")),
            }
            Outcome::Done
        }),
        "mprotect-exec" => with_path(args, mprotect_exec),
        "anon-exec" => {
            for (name, flags) in [
                ("private", libc::MAP_PRIVATE | libc::MAP_ANONYMOUS),
                ("shared", libc::MAP_SHARED | libc::MAP_ANONYMOUS),
            ] {
                step(&format!("{name}-jit"), &jit(flags));
            }
            Outcome::Done
        }
        _ => return None,
    };
    Some(outcome)
}

fn ld_preload(args: &[String]) -> Outcome {
    let [source, dest, marker, program] = args else {
        return Outcome::Usage("wants SOURCE DEST MARKER PROGRAM".to_owned());
    };
    if let Err(e) = copy_library(source, dest) {
        return Outcome::Setup(e);
    }
    let ran = Command::new(program)
        .env("LD_PRELOAD", dest)
        .env("OXD_MARKER", marker)
        .status()
        .map(|status| {
            println!(
                "{}",
                serde_json::json!({ "step": "run", "status": status.code() })
            );
        });
    step("spawn", &ran);
    Outcome::Done
}

fn mprotect_exec(path: &str, _: &[String]) -> Outcome {
    let file = match fs::File::open(path) {
        Ok(file) => file,
        Err(e) => return Outcome::Setup(format!("cannot open {path}: {e}")),
    };
    let mapped = map(&file, libc::PROT_READ, libc::MAP_PRIVATE);
    step("mmap-read", &mapped);
    let Ok(addr) = mapped else {
        return Outcome::Setup(format!("cannot map {path} for reading"));
    };
    step(
        "mprotect-exec",
        &protect(addr, libc::PROT_READ | libc::PROT_EXEC),
    );
    step("executable", &executable(addr));
    Outcome::Done
}

fn with_path(args: &[String], f: impl FnOnce(&str, &[String]) -> Outcome) -> Outcome {
    match args.split_first() {
        Some((path, rest)) => f(path, rest),
        None => Outcome::Usage("wants PATH [ARG...]".to_owned()),
    }
}

fn with_two(args: &[String], f: impl FnOnce(&str, &str, &[String]) -> Outcome) -> Outcome {
    match args {
        [a, b, rest @ ..] => f(a, b, rest),
        _ => Outcome::Usage("wants two paths [ARG...]".to_owned()),
    }
}

fn c_string(s: impl AsRef<OsStr>) -> CString {
    CString::new(s.as_ref().as_bytes()).expect("no NUL in arguments")
}

/// `argv`: `argv0`, then `rest`.
fn argv(argv0: &str, rest: &[String]) -> Vec<CString> {
    std::iter::once(c_string(argv0))
        .chain(rest.iter().map(c_string))
        .collect()
}

fn pointers(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// The current environment, for the `execve` family.
fn environment() -> Vec<CString> {
    std::env::vars_os()
        .map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).expect("no NUL in the environment")
        })
        .collect()
}

/// Execs `path` (argv[0] = `path`); prints the step if the exec fails.
fn exec(path: &str, name: &str, rest: &[String]) -> Outcome {
    let args = argv(path, rest);
    let env = environment();
    let _ = io::stdout().flush();
    // SAFETY: NUL-terminated arrays of NUL-terminated strings that outlive the call.
    let result = unsafe {
        libc::execve(
            c_string(path).as_ptr(),
            pointers(&args).as_ptr(),
            pointers(&env).as_ptr(),
        )
    };
    step(name, &check(libc::c_long::from(result)));
    Outcome::Done
}

/// `execveat(fd, "", argv, envp, AT_EMPTY_PATH)`: what `fexecve` does.
fn fexecve(fd: &OwnedFd, name: &str, argv0: &str, rest: &[String]) -> Outcome {
    let args = argv(argv0, rest);
    let env = environment();
    let empty = c_string("");
    let _ = io::stdout().flush();
    // SAFETY: as in `exec`; `fd` is open.
    let result = unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd.as_raw_fd(),
            empty.as_ptr(),
            pointers(&args).as_ptr(),
            pointers(&env).as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    step(name, &check(result));
    Outcome::Done
}

fn memfd_exec(source: &str, rest: &[String]) -> Outcome {
    let bytes = match fs::read(source) {
        Ok(b) => b,
        Err(e) => return Outcome::Setup(format!("cannot read {source}: {e}")),
    };
    let name = c_string("agent-payload");
    // SAFETY: a NUL-terminated name; the result is checked.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
    if fd < 0 {
        return Outcome::Setup(format!("memfd_create: {}", io::Error::last_os_error()));
    }
    // SAFETY: a descriptor we just created and own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut file = fs::File::from(fd.try_clone().expect("dup the memfd"));
    if let Err(e) = file.write_all(&bytes) {
        return Outcome::Setup(format!("write the memfd: {e}"));
    }
    step(
        "memfd-mmap-exec",
        &map(&file, libc::PROT_READ | libc::PROT_EXEC, libc::MAP_PRIVATE),
    );
    fexecve(&fd, "memfd-fexecve", "agent-payload", rest)
}

fn copy_library(source: &str, dest: &str) -> Result<(), String> {
    let copied = fs::copy(source, dest).map(drop);
    step("copy", &copied);
    copied.map_err(|e| format!("cannot copy {source} to {dest}: {e}"))
}

fn dlopen(path: &str) -> io::Result<()> {
    let name = c_string(path);
    // SAFETY: a NUL-terminated path; the handle is checked and never closed (the library's
    // constructor has run by then, which is what the test looks for).
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW) };
    if handle.is_null() {
        // SAFETY: dlerror returns a NUL-terminated message or null.
        let message = unsafe {
            let e = libc::dlerror();
            if e.is_null() {
                "dlopen failed".to_owned()
            } else {
                std::ffi::CStr::from_ptr(e).to_string_lossy().into_owned()
            }
        };
        return Err(io::Error::other(message));
    }
    Ok(())
}

/// Maps the first page of `file`; returns its address.
fn map(file: &fs::File, prot: libc::c_int, flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: a fresh mapping chosen by the kernel; the result is checked.
    let addr = unsafe { libc::mmap(std::ptr::null_mut(), 4096, prot, flags, file.as_raw_fd(), 0) };
    if addr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(addr as usize)
}

fn protect(addr: usize, prot: libc::c_int) -> io::Result<libc::c_long> {
    // SAFETY: a page this process mapped.
    check(libc::c_long::from(unsafe {
        libc::mprotect(addr as *mut libc::c_void, 4096, prot)
    }))
}

/// `Ok` when `/proc/self/maps` shows the mapping at `addr` executable; `EACCES` when not.
fn executable(addr: usize) -> io::Result<()> {
    let maps = fs::read_to_string("/proc/self/maps")?;
    let start = format!("{addr:x}-");
    let line = maps
        .lines()
        .find(|l| l.starts_with(&start))
        .ok_or_else(|| io::Error::other(format!("no mapping at {addr:#x}")))?;
    match line.split_whitespace().nth(1) {
        Some(perms) if perms.contains('x') => Ok(()),
        _ => Err(io::Error::from_raw_os_error(libc::EACCES)),
    }
}

/// A JIT's life: writable anonymous memory, one `ret` written, made executable, called.
fn jit(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: a fresh anonymous mapping, written within its page, made executable and called
    // as a function that only returns.
    unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            -1,
            0,
        );
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        addr.cast::<u8>().write(0xc3);
        protect(addr as usize, libc::PROT_READ | libc::PROT_EXEC)?;
        let f: extern "C" fn() = std::mem::transmute(addr);
        f();
    }
    Ok(())
}
