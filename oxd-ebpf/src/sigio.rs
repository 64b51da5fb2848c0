//! Signals by file ownership: a file's owner (`F_SETOWN`) gets its `SIGIO`/`SIGURG`, or the
//! signal `F_SETSIG` names, whenever I/O happens on it. The kernel sends these without asking
//! `task_kill`, only checking that the owner's uid matches, so a confined task that could name
//! an owner outside its confinement could kill an unconfined process of its uid (`F_SETSIG`
//! with `SIGKILL`). And `O_ASYNC` on a terminal makes the terminal's foreground process group
//! the owner.
//!
//! A confined task may therefore only name itself (or nobody) as a file's owner, with the
//! default signal, and may not turn on `O_ASYNC`; the `ioctl` forms (`FIOSETOWN`, `SIOCSPGRP`,
//! `FIOASYNC`) pass their argument in memory the task can change after the check, and are
//! denied. The kernel cannot tell, in these hooks, which task another pid names (6.1 has no
//! helper that looks a pid up), so "itself" is the only owner that can be checked.
//!
//! Checked where the owner is chosen (BPF-LSM `file_fcntl`, and `file_ioctl` through
//! [`crate::ipc`]), not where the signal is sent (`file_send_sigiotask`): that hook runs in
//! whichever task's context the I/O completes, often an interrupted one, so its "current task"
//! says nothing about who chose the owner.

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::lsm, programs::LsmContext};
use oxd_common::{action, governs, op, reason, RULE_DEFAULT};

use crate::{
    confine::Gate,
    event::{refuse, start_event, Verdict, EPERM},
};

const F_SETFL: u32 = 4;
const F_SETOWN: u32 = 8;
const F_SETSIG: u32 = 10;
const F_SETOWN_EX: u32 = 15;
/// `O_ASYNC` (`FASYNC`) in `F_SETFL`'s flags.
const O_ASYNC: u64 = 0o20000;

/// `ioctl` commands that choose a file's owner or turn on its I/O signals.
pub(crate) const FIOSETOWN: u32 = 0x8901;
pub(crate) const SIOCSPGRP: u32 = 0x8902;
pub(crate) const FIOASYNC: u32 = 0x5452;

/// `fcntl` by a confined task (BPF-LSM `file_fcntl`): decides the commands that choose where a
/// file's I/O signals go; every other command is left alone.
#[lsm(hook = "file_fcntl")]
fn file_fcntl(ctx: LsmContext) -> i32 {
    // int file_fcntl(struct file *file, unsigned int cmd, unsigned long arg), then the previous
    // LSM's verdict.
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    let cmd: u32 = ctx.arg(1);
    let arg: u64 = ctx.arg(2);
    let allowed = match cmd {
        F_SETFL => {
            if arg & O_ASYNC == 0 {
                return 0;
            }
            false
        }
        F_SETOWN => {
            // The kernel takes the argument as an int: a pid, or minus a process group.
            let owner = (arg as u32).cast_signed();
            let tgid = ((bpf_get_current_pid_tgid() >> 32) as u32).cast_signed();
            owner == 0 || owner == tgid
        }
        F_SETSIG => arg == 0,
        F_SETOWN_EX => false,
        _ => return 0,
    };
    decide(cmd, arg as u32, allowed)
}

/// The decision on an owner-choosing `ioctl` (`FIOSETOWN`, `SIOCSPGRP`, `FIOASYNC`): denied,
/// as its argument cannot be checked. Called by [`crate::ipc`]'s `file_ioctl` programs.
#[inline(always)]
pub(crate) fn decide_ioctl(cmd: u32) -> i32 {
    decide(cmd, 0, false)
}

#[inline(always)]
fn decide(cmd: u32, arg: u32, allowed: bool) -> i32 {
    let gate = Gate::open(governs::IPC);
    if !gate.decide {
        return 0;
    }
    let verdict = if !gate.configured {
        Verdict::deny(gate.missing_reason())
    } else if allowed {
        Verdict {
            decision: action::ALLOW,
            reason: reason::IPC_INSIDE,
            rule_id: RULE_DEFAULT,
        }
    } else {
        Verdict::deny(reason::SIGNAL_OWNER)
    };
    if let Some(mut entry) = start_event(op::SIGNAL_OWNER, &gate, &verdict) {
        let event = entry.as_mut_ptr();
        // SAFETY: the event is ours until submitted.
        unsafe {
            (*event).detail = cmd;
            (*event).peer_pid = arg;
        }
        entry.submit(0);
    }
    if refuse(&verdict, &gate) {
        return -EPERM;
    }
    0
}
