//! oxd's kernel programs, one module per hook family:
//!
//! - [`exec`]: `exec_check` (BPF-LSM, `bprm_check_security`) decides every exec of a confined
//!   task on the path and identity of the file the kernel is about to execute; `mmap_file` and
//!   `file_mprotect` (BPF-LSM, same hooks) decide every executable mapping of a file by the
//!   same rules (how the dynamic loader loads libraries, and runs a program without exec).
//! - [`file`]: `file_open` (BPF-LSM, `file_open`) decides every open of a confined task, for
//!   reading and for writing, on the resolved path and identity of the file being opened.
//! - [`net`]: `connect4` / `connect6` / `sendmsg4` / `sendmsg6` (cgroup `sock_addr` hooks,
//!   attached to the agent's cgroup) decide every `connect`, and every UDP send with a
//!   destination, of a confined task on the destination address, port and protocol.
//! - [`conn`]: `sock_release` (cgroup `sock_release` hook, attached with the `sock_addr`
//!   programs) gives back the connection-limit slot a socket took at its connect or send.
//! - [`sock`]: the `sock_create` program (cgroup `sock_create` hook, attached to the agent's
//!   cgroup) decides the creation of inet sockets no destination hook can judge: ICMP ping
//!   sockets, raw sockets, and protocols other than TCP and UDP.
//! - [`ns`]: `[process] namespaces` (BPF-LSM `userns_create`, `sb_mount`, `sb_umount`,
//!   `move_mount`, `sb_pivotroot`, `path_chroot`, `capable`, the mount namespace check in
//!   `file_open`, and `ns_exec_check` beside the exec hook): no user namespace, mount or chroot, no
//!   entering another namespace, no file of another mount namespace, while the policy denies
//!   namespaces, so paths keep the meaning exec and file rules judge them by.
//! - [`ipc`]: `ptrace_access_check`, `ptrace_traceme`, `task_kill` (BPF-LSM) deny a confined
//!   task ptrace access to, and signals to, tasks outside its confinement; `tty_ioctl`
//!   (BPF-LSM, `file_ioctl`, and `file_ioctl_compat` from 6.8) denies `TIOCSTI`/`TIOCLINUX`;
//!   `unix_stream_connect` / `unix_may_send` (BPF-LSM) decide Unix sockets outside it, by
//!   the `[ipc]` socket rules ([`unix`]: the listening socket's bound path in the host's view,
//!   or its abstract name).
//! - [`sigio`]: `file_fcntl` (BPF-LSM), and `tty_ioctl` for the `ioctl` forms, let a confined
//!   task name only itself as the owner of a file's I/O signals, with the default signal.
//! - [`write`]: the BPF-LSM `path_*` hooks (`path_unlink`, `path_rmdir`, `path_mkdir`,
//!   `path_mknod`, `path_symlink`, `path_truncate`, `path_chmod`, `path_chown`, `path_rename`,
//!   `path_link`) decide every change to the file system as a write to the changed path(s).
//! - [`attr`]: `inode_setxattr`, `inode_removexattr`, `inode_set_acl`, `inode_remove_acl`
//!   and `inode_setattr` (time changes) (BPF-LSM) decide the changes the kernel hands over as
//!   a dentry without a mount, as writes to every path the agent's mount namespace has to it.
//!
//! - [`guard`]: what every confined task is denied whatever its policy, uid and capabilities,
//!   so that it cannot switch oxd off, leave its confinement or change the kernel;
//!   [`guard_files`]: no change to oxd's own files (`file_open` and the `path_*` hooks).
//! - [`guard_kernel`]: the guard's programs about oxd's own processes (signals, ptrace,
//!   scheduling), the kernel (module, kexec and policy loads, module autoloading, machine-wide
//!   capabilities), block devices opened for writing, and packet and raw sockets.
//! - [`guard_fs`]: `bpf` and `inode_permission` (BPF-LSM): no `bpf()` at all, no write to a
//!   cgroup outside the confinement (nor a move across its border), to bpffs, sysfs, `/proc/sys`
//!   and the other kernel interface file systems, or to `/proc/PID` entries of oxd's processes.
//!
//! Every hook starts at the same gate ([`confine::Gate`]): whether the task is confined, under
//! which policy slot, and whether that policy governs the hook's category. What the hooks
//! share lives apart: [`maps`] (every map, by the names user space knows them by), [`offsets`]
//! (kernel struct fields at offsets set at load time), [`path`] (path resolution and rule
//! lookups by path and by file identity) and [`event`] (verdicts, audit records, counters).
//!
//! Every decision the slot records (all, or only denials: `Config::record`) is sent to user
//! space through the `EVENTS` ring buffer, as its header and the bytes of its path used, built
//! in the per-CPU scratch map and output in one copy. A failed output does not change the
//! decision; it is counted in `COUNTERS[RINGBUF_LOST]`, a successful one in
//! `COUNTERS[SUBMITTED]`.
//! Whatever cannot be decided exactly (unresolvable or over-long path, missing configuration) is
//! denied and recorded with its reason: fail closed.
//!
//! The crate is built for the kernel (`bpfel-unknown-none`, by oxd's build script). It also
//! builds on the host, as an empty program, so that `cargo clippy --workspace --all-targets`
//! checks it with everything else: there, `std` is linked (the workspace's feature
//! unification gives `oxd-common` its `aya` dependency) and provides the panic handler.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(
    target_arch = "bpf",
    expect(
        internal_features,
        reason = "`budget` needs the compare-and-exchange intrinsic"
    )
)]
// What the workspace's pedantic lints would change here is what the verifier checks; these
// exceptions hold for the whole kernel crate.
#![expect(
    clippy::inline_always,
    reason = "every helper is inlined into its program: the verifier then checks each program as \
              one function, with no calls between BPF functions to restrict argument types"
)]
#![expect(
    clippy::needless_pass_by_value,
    reason = "aya's program macros hand each program its context by value"
)]
#![expect(
    clippy::cast_ptr_alignment,
    reason = "kernel struct fields are read at offsets from the kernel's BTF, aligned for their \
              type, and the verifier checks every such load"
)]
#![expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "the casts take the halves of helper results (pid/tgid, uid/gid) and lengths the \
              code has just bounded; checked conversions would add branches the verifier walks"
)]

mod atomic;
mod attr;
mod budget;
mod confine;
mod conn;
mod event;
mod exec;
mod file;
mod grant;
mod guard;
mod guard_files;
mod guard_fs;
mod guard_kernel;
mod ipc;
mod maps;
mod net;
mod ns;
mod offsets;
mod path;
mod sigio;
mod sock;
mod unix;
mod write;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The host build's entry point: the programs only run in the kernel.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
