//! oxd's kernel programs, one module per hook family:
//!
//! - [`exec`]: `exec_check` (BPF-LSM, `bprm_check_security`) decides every exec of a confined
//!   task on the path and identity of the file the kernel is about to execute; `mmap_file`
//!   (BPF-LSM, `mmap_file`) refuses executable mappings of files an exec rule denies (how the
//!   dynamic loader runs a program without exec).
//! - [`file`]: `file_open` (BPF-LSM, `file_open`) decides every open of a confined task, for
//!   reading and for writing, on the resolved path and identity of the file being opened.
//! - [`net`]: `connect4` / `connect6` / `sendmsg4` / `sendmsg6` (cgroup `sock_addr` hooks,
//!   attached to the agent's cgroup) decide every `connect`, and every UDP send with a
//!   destination, of a confined task on the destination address, port and protocol.
//!
//! Every hook starts at the same gate ([`confine::Gate`]): whether the task is confined, under
//! which policy slot, and whether that policy governs the hook's category. What the hooks
//! share lives apart: [`maps`] (every map, by the names user space knows them by), [`offsets`]
//! (kernel struct fields at offsets set at load time), [`path`] (path resolution and rule
//! lookups by path and by file identity) and [`event`] (verdicts, audit records, counters).
//!
//! Every decision is sent to user space through the `EVENTS` ring buffer. A failed reservation
//! does not change the decision; it is counted in `COUNTERS[RINGBUF_LOST]`.
//! Whatever cannot be decided exactly (unresolvable or over-long path, missing configuration) is
//! denied and recorded with its reason: fail closed.
#![no_std]
#![no_main]

mod confine;
mod event;
mod exec;
mod file;
mod maps;
mod net;
mod offsets;
mod path;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
