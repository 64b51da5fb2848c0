//! `oxd-attack`: the techniques a hostile agent uses to route around its policy, one per
//! invocation, so the attack suite (`tests/attack/`) can run each inside `oxd run` and check
//! that the forbidden effect did not happen and that the attempt is in the audit log.
//!
//! Usage: `oxd-attack [--as UID:GID] TECHNIQUE [ARGS...]`
//!
//! `--as` drops to that user and group (clearing supplementary groups) before anything else,
//! so the technique runs as an ordinary, unprivileged agent would. Each technique prints one
//! JSON line per step it tries, `{"step":"...","ok":true}` or
//! `{"step":"...","ok":false,"errno":1,"error":"..."}`, and exits 0 when it ran to its end
//! (whatever the kernel decided), 2 on bad usage and 3 when the set-up it needs failed.
//!
//! Each family of techniques lives in its own module; `run` of a module returns `None` for a
//! technique it does not know.

#![allow(
    dead_code,
    reason = "the shared helpers are used by the technique modules as they are filled in"
)]

mod cgroup;
mod exec;
mod fs;
mod ipc;
mod kernel;
mod net;
mod ns;
mod sigio;

use std::{io::Write as _, process::ExitCode};

/// How a technique ended.
pub(crate) enum Outcome {
    /// It ran to its end; the steps' results are already printed.
    Done,
    /// Bad arguments (exit 2).
    Usage(String),
    /// Its set-up failed, so it proves nothing (exit 3).
    Setup(String),
}

/// Prints one step's result as a JSON line.
pub(crate) fn step<T>(name: &str, result: &std::io::Result<T>) {
    let line = match result {
        Ok(_) => serde_json::json!({ "step": name, "ok": true }),
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

/// `Err(last OS error)` when a libc call returned -1.
pub(crate) fn check(ret: libc::c_long) -> std::io::Result<libc::c_long> {
    if ret == -1 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn drop_to(spec: &str) -> Result<(), String> {
    let (uid, gid) = spec
        .split_once(':')
        .and_then(|(u, g)| Some((u.parse::<u32>().ok()?, g.parse::<u32>().ok()?)))
        .ok_or_else(|| format!("--as wants UID:GID, got {spec:?}"))?;
    // SAFETY: plain system calls on this process's credentials.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setresgid(gid, gid, gid) != 0
            || libc::setresuid(uid, uid, uid) != 0
        {
            return Err(format!(
                "cannot become {uid}:{gid}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--as") {
        if args.len() < 2 {
            eprintln!("oxd-attack: --as needs UID:GID");
            return ExitCode::from(2);
        }
        if let Err(e) = drop_to(&args[1]) {
            eprintln!("oxd-attack: {e}");
            return ExitCode::from(3);
        }
        args.drain(..2);
    }
    let Some((technique, rest)) = args.split_first() else {
        eprintln!("usage: oxd-attack [--as UID:GID] TECHNIQUE [ARGS...]");
        return ExitCode::from(2);
    };
    let outcome = exec::run(technique, rest)
        .or_else(|| cgroup::run(technique, rest))
        .or_else(|| fs::run(technique, rest))
        .or_else(|| ipc::run(technique, rest))
        .or_else(|| kernel::run(technique, rest))
        .or_else(|| net::run(technique, rest))
        .or_else(|| ns::run(technique, rest))
        .or_else(|| sigio::run(technique, rest));
    match outcome {
        Some(Outcome::Done) => ExitCode::SUCCESS,
        Some(Outcome::Usage(msg)) => {
            eprintln!("oxd-attack {technique}: {msg}");
            ExitCode::from(2)
        }
        Some(Outcome::Setup(msg)) => {
            eprintln!("oxd-attack {technique}: set-up failed: {msg}");
            ExitCode::from(3)
        }
        None => {
            eprintln!("oxd-attack: unknown technique {technique:?}");
            ExitCode::from(2)
        }
    }
}
