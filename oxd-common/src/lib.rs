//! Types shared by oxd's kernel programs (`oxd-ebpf`) and its user-space side (`oxd`).
//!
//! Everything here is `#[repr(C)]` with explicit padding and fixed-width integers only, so the
//! layout is the same on both sides of the kernel boundary. Enumerations are plain `u32`
//! constants; the user side converts them with `TryFrom`.
#![no_std]

/// Size of the buffer the kernel side resolves a path into (the kernel's `PATH_MAX`).
pub const PATH_BUF_LEN: usize = 4096;

/// Bytes of path data in a path-rule key: the kernel's limit for LPM trie keys
/// (`LPM_DATA_SIZE_MAX`, 256 bytes) less the 2-byte policy slot that starts every key. A
/// resolved path (with its terminating NUL) longer than this cannot be matched exactly and is
/// denied (fail closed).
pub const PATH_KEY_LEN: usize = 254;

/// Longest path, in bytes and without the terminating NUL, that a path rule can name.
pub const MAX_RULE_PATH_LEN: usize = PATH_KEY_LEN - 1;

/// Most path rules of one category (exec, file read, file write) in one policy.
pub const MAX_PATH_RULES: u32 = 4096;

/// Policy slots: each loaded policy generation occupies one. A confined cgroup points at the
/// slot of its policy; replacing the policy fills a free slot and then repoints the cgroup in a
/// single map update, so every decision is made by exactly one generation.
pub const MAX_POLICY_SLOTS: u32 = 64;

/// Capacity of each path-rule trie and of the denied-file map, shared by all slots: room for
/// four full-size policies at once (a replacement needs two).
pub const PATH_RULE_CAPACITY: u32 = 4 * MAX_PATH_RULES;

/// Version of the layout of the maps oxd pins in bpffs. A daemon only adopts pins of its own
/// layout version (they live in a directory named after it).
pub const MAP_LAYOUT_VERSION: u32 = 9;

/// Most network rules in one policy.
pub const MAX_NET_RULES: u32 = 16384;

/// Capacity of the network prefix trie (`NET_PREFIXES`), shared by all slots: a policy takes
/// one entry per distinct network its rules name, so this is room for four full-size policies
/// at once (a replacement needs two).
pub const NET_PREFIX_CAPACITY: u32 = 4 * MAX_NET_RULES;

/// Most entries in one network prefix's list ([`NetPrefix`]): the rules that can decide a
/// destination whose longest matching rule network is that prefix, once the rules that can
/// never be the first match are left out. A policy that needs more is refused when compiled.
pub const NET_LIST_LEN: usize = 32;

/// Bits of a network prefix key ([`NetKey`]) taken by the slot.
pub const NET_SLOT_PREFIX_BITS: u32 = 32;

/// How many cgroups one oxd instance can confine.
pub const MAX_CONFINED_CGROUPS: u32 = 1024;

/// How many of oxd's own processes the guard protects at once (`PROTECTED` map).
pub const MAX_PROTECTED_TASKS: u32 = 64;

/// How many of oxd's own files and directories the guard protects at once (`PROTECTED_FILES`):
/// the binary, policy files, the state directory, and each audit log with its rotated parts
/// (at most [`MAX_AUDIT_KEEP`] each; a part is forgotten when rotation deletes it).
pub const MAX_PROTECTED_FILES: u32 = 512;

/// The most rotated audit log parts oxd keeps (`--audit-keep`), each one protected.
pub const MAX_AUDIT_KEEP: u32 = 256;

/// In `PROTECTED_FILES`: the file itself is protected.
pub const PROTECTED_FILE: u32 = 1;
/// In `PROTECTED_FILES`: a directory whose entries are protected too (created, removed,
/// renamed, written).
pub const PROTECTED_DIR: u32 = 2;

/// How deep below the root cgroup an agent's cgroup (or one it creates) may sit and still be
/// recognised as confined.
pub const MAX_CGROUP_DEPTH: i32 = 32;

/// Default size of the decision ring buffer in bytes (a power of two, a multiple of the page
/// size); `oxd run` and `oxd daemon` take another with `--ring-size`.
pub const RING_BUF_BYTES: u32 = 4 << 20;

/// Bytes of an [`Event`] before its `path`: what every ring buffer record holds, followed by
/// the `path_len` bytes of `path` used (none when `path_len` is 0).
pub const EVENT_HEADER_LEN: usize = core::mem::offset_of!(Event, path);

/// What a policy slot records ([`Config::record`]).
pub mod record {
    /// Every decision of a governed category that its operation records.
    pub const ALL: u32 = 0;
    /// Only denials: those enforced, those audit mode would have enforced, and every guard
    /// denial. Allowed decisions never reach the ring buffer.
    pub const DENIED: u32 = 1;
    /// Every denial; allowed decisions counted in the kernel per rule and operation (`TALLIES`,
    /// [`super::tally::COUNTED`]) instead of one record each. When the tally map is full an
    /// allowed decision is recorded as under [`ALL`]: none goes uncounted.
    pub const COUNTED: u32 = 2;
}

/// Why a decision was counted in `TALLIES` ([`TallyKey::kind`]) instead of recorded.
pub mod tally {
    /// An allowed decision under [`super::record::COUNTED`].
    pub const COUNTED: u8 = 1;
    /// A decision over the slot's [`super::Config::record_rate`].
    pub const SUPPRESSED: u8 = 2;
}

/// Key of the `TALLIES` per-CPU hash: decisions counted instead of recorded, by the generation,
/// rule, operation and decision that a record would have named, and why ([`tally`]). User space
/// reads the sums and writes them as `tally` records.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TallyKey {
    pub generation: u64,
    pub rule_id: u32,
    /// The [`op`].
    pub op: u16,
    /// [`action::ALLOW`] or [`action::DENY`].
    pub decision: u8,
    /// [`tally::COUNTED`] or [`tally::SUPPRESSED`].
    pub kind: u8,
}

/// Most keys in `TALLIES`. When it is full, decisions are recorded one by one again.
pub const MAX_TALLIES: u32 = 16384;

/// A slot's record-rate window on one CPU (`RATE` per-CPU array, by slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateWindow {
    /// `boot_ns >> RATE_WINDOW_SHIFT` of the window.
    pub window: u64,
    /// Records sent in the window.
    pub sent: u64,
}

/// A rate window is 2^30 ns (1.07 s).
pub const RATE_WINDOW_SHIFT: u32 = 30;

/// Operations the kernel side decides.
pub mod op {
    /// `execve`/`execveat`, decided in `bprm_check_security`.
    pub const EXEC: u32 = 1;
    /// `connect` on an IPv4 socket (cgroup `connect4`).
    pub const CONNECT4: u32 = 2;
    /// `connect` on an IPv6 socket (cgroup `connect6`).
    pub const CONNECT6: u32 = 3;
    /// `sendmsg`/`sendto` with a destination on an IPv4 UDP socket (cgroup `sendmsg4`).
    pub const SENDMSG4: u32 = 4;
    /// `sendmsg`/`sendto` with a destination on an IPv6 UDP socket (cgroup `sendmsg6`).
    pub const SENDMSG6: u32 = 5;
    /// Opening a file, decided in `file_open`.
    pub const OPEN: u32 = 6;
    /// Mapping a file executable (`mmap` with `PROT_EXEC`), decided in `mmap_file` by the exec
    /// rules (default included): how the dynamic loader loads libraries (`LD_PRELOAD`,
    /// `dlopen`) and, run as a command (`ld.so BINARY`), its program. Recorded when denied, and
    /// in audit mode also when allowed. `detail`: the `PROT_*` bits asked for.
    pub const MMAP_EXEC: u32 = 7;
    // mappings: 8-15
    /// Making a file mapping executable (`mprotect` adding `PROT_EXEC` to a file-backed
    /// mapping), decided in `file_mprotect` by the exec rules, as [`MMAP_EXEC`]. Recorded as
    /// [`MMAP_EXEC`] is. `detail`: the `PROT_*` bits asked for.
    pub const MPROTECT_EXEC: u32 = 8;

    // sockets
    /// Creating an inet socket that the address hooks cannot judge by destination (cgroup
    /// `sock_create`): an ICMP ping socket (`SOCK_DGRAM` with `IPPROTO_ICMP`/`IPPROTO_ICMPV6`),
    /// a raw socket (`SOCK_RAW`, any protocol), or a socket of a protocol other than TCP and
    /// UDP (SCTP, MPTCP, UDP-Lite, ...). TCP and UDP sockets are not decided here (their
    /// connects and sends are). `detail` = `family << 24 | type << 16 | protocol` (`AF_INET`
    /// or `AF_INET6`, `SOCK_*`, the IP protocol number); `proto` = [`super::proto::ICMP`],
    /// [`super::proto::RAW`], or 0 for another protocol.
    pub const SOCKET: u32 = 48;

    // namespaces and mounts (`[process] namespaces`): each governed by the policy's switch,
    // decided in the hook named. `detail` as noted; `path` where the hook may resolve one.
    /// Creating a user namespace (`unshare`/`clone` with `CLONE_NEWUSER`), decided in
    /// `userns_create` (kernel 6.1+).
    pub const USERNS_CREATE: u32 = 40;
    /// `mount(2)` of any kind (new, bind, move, remount, propagation), decided in `sb_mount`;
    /// `path` is the mount point, `detail` the low 32 bits of the mount flags.
    pub const MOUNT: u32 = 41;
    /// `umount2(2)`, decided in `sb_umount`; `detail` holds its flags.
    pub const UMOUNT: u32 = 42;
    /// `move_mount(2)` (attaching a mount made by `fsmount` or `open_tree`), decided in
    /// `move_mount`.
    pub const MOVE_MOUNT: u32 = 43;
    /// `pivot_root(2)`, decided in `sb_pivotroot`.
    pub const PIVOT_ROOT: u32 = 44;
    /// `chroot(2)`, decided in `path_chroot`.
    pub const CHROOT: u32 = 45;
    /// A capability the commoncap module grants, checked against a user namespace other than
    /// the task's own, or `CAP_SYS_CHROOT` (how `setns` into an existing user or mount
    /// namespace is checked), decided in `capable`; recorded only when denied. `detail` is the
    /// capability number.
    pub const CAPABLE: u32 = 46;

    // ipc / process (56-63)
    /// A confined task's ptrace access to another task (BPF-LSM `ptrace_access_check`):
    /// `ptrace(2)` attach, `process_vm_readv`/`writev`, `pidfd_getfd`, `/proc/PID/mem`, and the
    /// `/proc/PID` files that need `PTRACE_MODE_READ` (`environ`, `root`, `cwd`, `fd`, `ns/*`,
    /// ...), and `PTRACE_TRACEME` (BPF-LSM `ptrace_traceme`). `detail`: the `PTRACE_MODE_*`
    /// bits of the access check, 0 for `PTRACE_TRACEME`; `peer_pid`: the other task (for
    /// `PTRACE_TRACEME`, the would-be tracer).
    pub const PTRACE: u32 = 56;
    /// A signal from a confined task to another task (BPF-LSM `task_kill`). `detail`: the signal
    /// number; `peer_pid`: the receiving task.
    pub const SIGNAL: u32 = 57;
    /// `TIOCSTI` or `TIOCLINUX` by a confined task (BPF-LSM `file_ioctl`). `detail`: the ioctl
    /// command.
    pub const TTY_INJECT: u32 = 58;
    /// `connect` on a Unix stream or seqpacket socket (BPF-LSM `unix_stream_connect`). `path`:
    /// for a listening socket outside the confinement bound to a path, that path resolved in
    /// the host's view (with its NUL); otherwise its address as bound (abstract names start
    /// with a NUL); `path_len` its length; `peer_pid`: the listening process.
    pub const UNIX_CONNECT: u32 = 59;
    /// `connect` or a send on a Unix datagram socket (BPF-LSM `unix_may_send`). `path`,
    /// `path_len` and `peer_pid` as for [`UNIX_CONNECT`] (the receiving socket).
    pub const UNIX_SEND: u32 = 60;
    /// Choosing who gets a file's I/O signals (`SIGIO`, `SIGURG`, or the signal `F_SETSIG`
    /// names), which the kernel sends without asking `task_kill`: `fcntl` `F_SETOWN`,
    /// `F_SETOWN_EX`, `F_SETSIG` and `F_SETFL` with `O_ASYNC` (BPF-LSM `file_fcntl`), `ioctl`
    /// `FIOSETOWN`, `SIOCSPGRP` and `FIOASYNC` (BPF-LSM `file_ioctl`). `detail`: the command;
    /// `peer_pid`: the argument of `fcntl` (the owner `F_SETOWN` names, negative for a process
    /// group; the signal of `F_SETSIG`; the flags of `F_SETFL`), 0 for an `ioctl`.
    pub const SIGNAL_OWNER: u32 = 63;

    // guard (64-79): actions that could switch oxd off, leave the confinement or change the
    // kernel, denied for every confined task (`governs::GUARD`, reason `GUARD`).
    // cgroups, bpf, kernel file systems: 64-68; kernel, devices, sockets, oxd's tasks: 70-79.
    /// A change to one of oxd's own files (its binary, the policy files, the audit log, the
    /// daemon's state), or to an entry of one of its directories (`governs::GUARD`): opening
    /// for writing, removing, renaming, truncating, chmod, chown, creating. `detail`: which
    /// (see `oxd-ebpf/src/guard_files.rs`).
    pub const PROTECTED_WRITE: u32 = 69;
    /// Loading something into the kernel (BPF-LSM `kernel_read_file`, `kernel_load_data`):
    /// `finit_module`/`init_module`, `kexec_file_load`/`kexec_load`, IMA policies and X.509
    /// certificates; firmware is left alone. `detail`: the kernel's `kernel_read_file_id` /
    /// `kernel_load_data_id` (the same numbers: 2 module, 3 kexec image, 4 kexec initramfs, 5
    /// policy, 6 X.509 certificate, 0 unknown).
    pub const KERNEL_LOAD: u32 = 70;
    /// The kernel asked to load a module on a confined task's behalf (autoloading, BPF-LSM
    /// `kernel_module_request`). `path`: the requested name (`net-pf-5`, ...), with its NUL.
    pub const MODULE_REQUEST: u32 = 71;
    /// A capability that acts on the whole machine, checked against the initial user namespace
    /// (BPF-LSM `capable`): `CAP_SYS_MODULE`, `CAP_SYS_RAWIO`, `CAP_SYS_BOOT`, `CAP_MKNOD`,
    /// `CAP_MAC_ADMIN`, `CAP_MAC_OVERRIDE`, `CAP_BPF`, `CAP_PERFMON`, `CAP_NET_ADMIN`,
    /// `CAP_SYS_TIME`, `CAP_AUDIT_CONTROL`. Recorded unless the kernel checks it without
    /// auditing (`CAP_OPT_NOAUDIT`: a probe, denied as well). `detail`: the capability number.
    pub const CAPABILITY: u32 = 72;
    /// Opening a block device for writing (BPF-LSM `file_open`): raw disk writes pass no path
    /// rule. `detail`: the device number (`MKDEV(major, minor)`: major in the top 12 bits).
    pub const DEVICE_WRITE: u32 = 73;
    /// Changing the scheduling of one of oxd's own processes (BPF-LSM `task_setnice`,
    /// `task_setioprio`, `task_setscheduler`, `task_movememory`). `detail`: the hook, 1 to 4 in
    /// that order; `peer_pid`: oxd's process. (Signals to and ptrace of oxd's processes are
    /// recorded as [`SIGNAL`] and [`PTRACE`], with reason `GUARD`.)
    pub const SCHED: u32 = 74;
    /// A `bpf()` system call by a confined task (BPF-LSM `bpf`): every command is denied.
    /// `detail`: the command (`BPF_PROG_LOAD`, `BPF_LINK_DETACH`, ...).
    pub const BPF: u32 = 64;
    /// A write to a cgroup file system outside the agent's confinement (BPF-LSM
    /// `inode_permission` with `MAY_WRITE`): opening a cgroup's files for writing, creating or
    /// removing a cgroup, and the kernel's migration check on the common ancestor's
    /// `cgroup.procs` (moving a process across the confinement's border, `clone3` with
    /// `CLONE_INTO_CGROUP`); every write to a cgroup v1 hierarchy. `detail`: the low 32 bits of
    /// the cgroup's id (0 for cgroup v1 or when it cannot be read).
    pub const CGROUP_WRITE: u32 = 65;
    /// A write to a kernel interface file system (BPF-LSM `inode_permission` with
    /// `MAY_WRITE`): bpffs, sysfs, securityfs, debugfs, tracefs, configfs, `binfmt_misc`, pstore,
    /// efivarfs, and procfs entries that are not a process's own (`/proc/sys`,
    /// `/proc/sysrq-trigger`, ...) or are oxd's processes'. `detail`: the file system's magic
    /// number; `peer_pid`: for a `/proc/PID` entry of oxd's, that process.
    pub const KERNEL_FS_WRITE: u32 = 66;

    // Changes to the file system (16-39), each decided by the file write rules on the path it
    // changes (BPF-LSM `path_*` hooks). `access` holds the accesses judged: `WRITE`, and also
    // `READ` for the source of a rename or a link (a file that cannot be read cannot be moved
    // or linked to a readable name). `detail` is 0 unless said otherwise.
    /// Creating a regular file (`open` with `O_CREAT`, `mknod` of `S_IFREG`), `path_mknod`;
    /// `detail`: the file mode.
    pub const CREATE: u32 = 16;
    /// `truncate(2)` (and, on 6.1, the truncation of an `O_TRUNC` open), `path_truncate`.
    pub const TRUNCATE: u32 = 17;
    /// Removing a name (`unlink`), `path_unlink`.
    pub const UNLINK: u32 = 18;
    /// Removing a directory, `path_rmdir`.
    pub const RMDIR: u32 = 19;
    /// Creating a directory, `path_mkdir`; `detail`: the mode.
    pub const MKDIR: u32 = 20;
    /// Creating a device node, FIFO or socket, `path_mknod`; `detail`: the mode (file type
    /// bits included).
    pub const MKNOD: u32 = 21;
    /// Creating a symbolic link (its new name), `path_symlink`.
    pub const SYMLINK: u32 = 22;
    /// The old name of a rename, `path_rename`; `detail`: the `RENAME_*` flags.
    pub const RENAME_FROM: u32 = 23;
    /// The new name of a rename, `path_rename`; `detail`: the `RENAME_*` flags.
    pub const RENAME_TO: u32 = 24;
    /// The existing name of a hard link, `path_link`.
    pub const LINK_FROM: u32 = 25;
    /// The new name of a hard link, `path_link`.
    pub const LINK_TO: u32 = 26;
    /// Changing a file's mode, `path_chmod`; `detail`: the new mode.
    pub const CHMOD: u32 = 27;
    /// Changing a file's owner or group, `path_chown`; `detail`: the new uid (`u32::MAX`:
    /// unchanged).
    pub const CHOWN: u32 = 28;
    // Changes the hooks are given as a dentry without a mount (BPF-LSM `inode_*` hooks, see
    // `oxd-ebpf/src/attr.rs`): judged on the file's path through every mount of its file
    // system in the agent's mount namespace (all must allow). `path`: a denied path, or the
    // last allowed one.
    /// Setting an extended attribute (`setxattr`, `lsetxattr`, `fsetxattr`; on 6.2+ also
    /// POSIX ACLs, `setfacl`), `inode_setxattr` (and `inode_set_acl` from 6.2); `detail`: the
    /// `XATTR_CREATE`/`XATTR_REPLACE` flags (0 for an ACL).
    pub const SETXATTR: u32 = 29;
    /// Removing an extended attribute (`removexattr` and its variants; on 6.2+ also removing
    /// a POSIX ACL), `inode_removexattr` (and `inode_remove_acl` from 6.2).
    pub const REMOVEXATTR: u32 = 30;
    /// Changing a file's access or modification time (`utimes`, `utimensat`, `futimens`,
    /// `touch`), `inode_setattr` when it changes times only; `detail`: the `ATTR_*` bits
    /// (`ia_valid`).
    pub const UTIMES: u32 = 31;
}

/// Access bits of a file open.
pub mod access {
    pub const READ: u32 = 1;
    pub const WRITE: u32 = 2;
}

/// `fmode_t` bits of `struct file` (stable kernel ABI since 2.6).
pub mod fmode {
    pub const READ: u32 = 0x1;
    pub const WRITE: u32 = 0x2;
    /// Opened by the kernel to execute it: governed by the exec rules, not the file rules.
    pub const EXEC: u32 = 0x20;
    /// `__FMODE_EXEC` in `f_flags`: the open flag the kernel's exec path uses (user space
    /// cannot pass it to open(2)).
    pub const EXEC_OPEN_FLAG: u32 = 0x20;
    /// `O_TRUNC` in `f_flags`: the open empties the file, whatever its access mode (the
    /// kernel's own permission check asks for write access too).
    pub const TRUNC_OPEN_FLAG: u32 = 0o1000;
}

/// Rule actions and decisions.
pub mod action {
    pub const ALLOW: u32 = 1;
    pub const DENY: u32 = 2;
}

/// Why the kernel decided as it did.
pub mod reason {
    /// A rule matched; `rule_id` names it.
    pub const RULE: u32 = 0;
    /// No rule matched; the category's default decided.
    pub const DEFAULT: u32 = 1;
    /// The resolved path is longer than a rule key can hold: denied, fail closed.
    pub const PATH_TOO_LONG: u32 = 2;
    /// The kernel could not resolve the path (`bpf_d_path` failed): denied, fail closed.
    pub const PATH_UNRESOLVED: u32 = 3;
    /// The policy configuration map could not be read: denied, fail closed.
    pub const NO_CONFIG: u32 = 4;
    /// The confined cgroup points at an empty policy slot: denied, fail closed.
    pub const EMPTY_SLOT: u32 = 5;
    /// The target was stopped by the kill switch (`oxd ctl deny-all`, `freeze` or `kill`):
    /// every action is denied until `oxd ctl resume`.
    pub const HALTED: u32 = 6;
    /// The rule matched and allows, but its budget ([`super::BudgetSpec`]) is spent for the
    /// current window (or could not be counted): denied until the window refills.
    pub const BUDGET: u32 = 7;
    /// The rule matched and allows, but as many sockets as its connection limit allows are
    /// open on it (or the slot could not be counted): denied until one of them is closed.
    pub const CONNECTIONS: u32 = 40;

    // grants (20-23)
    /// The rule requires a grant, and a grant for exactly this action allowed it (one use
    /// taken).
    pub const GRANTED: u32 = 20;
    /// The rule requires a grant, and there is none for this action.
    pub const GRANT_REQUIRED: u32 = 21;
    /// The rule requires a grant, and the grant for this action is used up (a replay).
    pub const GRANT_USED: u32 = 22;
    /// The rule requires a grant, and the grant for this action has expired.
    pub const GRANT_EXPIRED: u32 = 23;
    // mappings: 8-11
    /// `mprotect` made a file mapping executable that oxd did not decide when it was mapped
    /// (mapped before the task was confined or under another policy generation, or its
    /// decision was evicted from `MAPPED_FILES`): denied, fail closed.
    pub const MAPPING_UNDECIDED: u32 = 8;

    // namespaces
    /// An `open` or `exec` of a file that lives in a mount namespace other than the task's
    /// (reached through `/proc/PID/root` or `/proc/PID/cwd` of a process in another
    /// namespace), where its path means something else: denied while the policy denies
    /// namespaces, whatever the path rules say.
    pub const FOREIGN_MOUNT_NS: u32 = 16;

    // writes (12-15)
    /// A change the kernel gives without a mount (`setxattr`, `removexattr`, `utimes`) to a
    /// file that no mount in the agent's mount namespace reaches (or whose file system has more
    /// mounts than the kernel side scans): its path cannot be judged, so it is denied.
    pub const NO_PATH_IN_NS: u32 = 12;

    // ipc (24-27)
    /// The other task or socket is outside the agent's confinement.
    pub const IPC_OUTSIDE: u32 = 24;
    /// The other task or socket is inside the agent's confinement: allowed.
    pub const IPC_INSIDE: u32 = 25;
    /// The other task's or socket's cgroup could not be read: denied, fail closed.
    pub const IPC_PEER_UNKNOWN: u32 = 26;
    /// Pushing input into a terminal (`TIOCSTI`, `TIOCLINUX`) is never allowed.
    pub const TTY_INJECT: u32 = 27;
    /// A file's I/O signals may go only to the agent's own process, with the default signal:
    /// an owner or signal a confined task names otherwise is denied (the kernel cannot tell
    /// whether another process it names is inside, and an `ioctl`'s argument is in memory the
    /// agent can change after the check).
    pub const SIGNAL_OWNER: u32 = 28;

    // guard (32-39)
    /// The action could switch oxd off, let the agent leave its confinement or change the
    /// kernel: denied for every confined task whatever its uid, capabilities or policy mode.
    pub const GUARD: u32 = 32;
}

/// Policy modes.
pub mod mode {
    /// Deny what the policy denies.
    pub const ENFORCE: u32 = 0;
    /// Deny nothing; record what would have been denied.
    pub const AUDIT: u32 = 1;
}

/// Protocol bits of a network rule.
pub mod proto {
    pub const TCP: u32 = 1;
    pub const UDP: u32 = 2;
    pub const ANY: u32 = TCP | UDP;
    /// Recorded only (no rule has it): an ICMP ping socket, decided by `[network] icmp`.
    pub const ICMP: u32 = 4;
    /// Recorded only (no rule has it): a raw socket, decided by `[network] raw`.
    pub const RAW: u32 = 8;
}

/// `rule_id` of a decision made by a category's default.
pub const RULE_DEFAULT: u32 = u32::MAX;

/// The `CONFINED` value of a target stopped by the kill switch: a slot no policy can have, so
/// every hook fails closed for the target's tasks (the path every hook already takes for an
/// empty or unreadable slot), with [`reason::HALTED`]. One map update halts the target: the
/// next action of any of its tasks is denied.
pub const HALTED_SLOT: u32 = u32::MAX - 1;

/// In [`InodeRules`]: no rule for this category.
pub const RULE_NONE: u32 = u32::MAX - 1;

/// Identity of a file: the kernel's `sb->s_dev` (`MKDEV(major, minor)`, major in the top 12
/// bits) and `inode->i_ino`, within one policy slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InodeKey {
    pub ino: u64,
    pub dev: u32,
    /// Policy slot the rule belongs to.
    pub slot: u32,
}

/// Exact deny rules that name a file, by the file's identity, so every name of the file (hard
/// links) is denied too. Each field is a rule id, or [`RULE_NONE`].
#[expect(
    clippy::pub_underscore_fields,
    reason = "explicit padding, set by whichever side of the kernel boundary builds the value"
)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InodeRules {
    pub exec: u32,
    pub read: u32,
    pub write: u32,
    pub _pad: u32,
}

/// Categories a policy governs (bits of [`Config::governs`]). An ungoverned category is
/// neither decided nor recorded.
pub mod governs {
    pub const EXEC: u32 = 1;
    pub const FILE: u32 = 2;
    pub const NETWORK: u32 = 4;
    /// `[process] namespaces`: user namespaces, mounts, `pivot_root`, `chroot`. Set by every
    /// policy (default deny).
    pub const PROCESS: u32 = 8;
    /// Acting through other tasks, sockets and terminals (ptrace, signals, terminal input
    /// injection, Unix sockets).
    pub const IPC: u32 = 16;
    /// Guarding oxd and the kernel against the agent (`bpf()`, cgroup moves, kernel modules,
    /// raw devices, signals to oxd, ...): set by every policy. Guard decisions deny in every
    /// mode (audit mode learns a policy; it does not let the agent switch oxd off).
    pub const GUARD: u32 = 32;
}

/// Settings of the policy in one slot: element `slot` of the `CONFIG` array map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Generation of the policy in this slot; 0 marks an empty slot (fail closed).
    pub generation: u64,
    /// [`governs`] bits.
    pub governs: u32,
    /// [`mode::ENFORCE`] or [`mode::AUDIT`].
    pub mode: u32,
    /// Default [`action`] for exec.
    pub exec_default: u32,
    /// Default [`action`] for network.
    pub net_default: u32,
    /// Number of network rules in the policy; with none, the kernel skips the prefix lookup.
    pub net_rule_count: u32,
    /// Default [`action`] for opening a file for reading.
    pub file_read_default: u32,
    /// Default [`action`] for opening a file for writing.
    pub file_write_default: u32,
    /// What is recorded: [`record::ALL`], [`record::DENIED`] or [`record::COUNTED`].
    pub record: u32,
    // sockets
    /// [`action`] for ICMP ping sockets: the `[network] icmp` switch, else the network default.
    pub net_icmp: u32,
    /// Rule id of the `icmp` switch, or [`RULE_DEFAULT`] when the default decides.
    pub net_icmp_rule: u32,
    /// [`action`] for raw sockets: the `[network] raw` switch, else the network default.
    pub net_raw: u32,
    /// Rule id of the `raw` switch, or [`RULE_DEFAULT`] when the default decides.
    pub net_raw_rule: u32,
    // namespaces
    /// [`action`] of `[process] namespaces`: whether confined tasks may create user namespaces,
    /// mount, unmount, move or pivot mounts, chroot, or enter other namespaces.
    pub namespaces: u32,
    /// Rule id of the `process.namespaces` switch (it is named like a rule in audit records).
    pub namespaces_rule: u32,
    // ipc
    /// [`action`] for a Unix socket connect or send to a socket outside the agent's
    /// confinement.
    pub ipc_unix_default: u32,
    /// The most records the slot sends per rate window ([`RATE_WINDOW_SHIFT`]) on each CPU;
    /// beyond, decisions are counted as [`tally::SUPPRESSED`] instead. 0: no limit.
    pub record_rate: u32,
    // operation budgets
    /// The `[exec] budget`: 0 none, else 1 + its index in the slot's budgets ([`BudgetSpec`]).
    /// An exec the rules allow takes one unit of it, or is denied.
    pub exec_budget: u32,
    /// Rule id of the `exec.budget` (the rule a denial by it names).
    pub exec_budget_rule: u32,
}

/// Key data of a path rule in an LPM trie: the policy slot, then the path bytes, NUL-padded.
/// Every prefix length covers the whole slot (16 bits) first. Subtree rules end with `/` and
/// their prefix length stops there; exact rules include the terminating NUL in their prefix
/// length, so `/bin/sh` never matches `/bin/shred`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathKey {
    pub slot: u16,
    pub path: [u8; PATH_KEY_LEN],
}

/// Bits of a path-rule prefix taken by the slot.
pub const SLOT_PREFIX_BITS: u32 = 16;

/// Set in a [`PathKey`]'s `slot` for the keys of the file write trie that name the directories
/// above a deny rule (exact keys, with their NUL): moving such a directory would move the
/// denied path, so the source of a rename may not be one (writes).
pub const ANCESTOR_SLOT_BIT: u16 = 0x8000;

/// Unix socket rules (`[ipc] unix_allow`/`unix_deny`) live in their own trie (`UNIX_RULES`),
/// keyed like the other path tries: a socket path with its NUL (or a subtree's directory with its
/// `/`). Abstract names, which may hold any byte (NUL included) and always start with a NUL in
/// `sun_path`, have key spaces of their own, told apart from paths (which start with `/`) by
/// their first byte: an exact name `@NAME` is keyed `[UNIX_ABSTRACT_EXACT, len, NAME...]` (the
/// length byte makes the key end where the name ends), a prefix `@NAME*` is keyed
/// `[UNIX_ABSTRACT_PREFIX, 0, NAME...]` with its prefix length ending after `NAME`. The kernel
/// looks an abstract name up in the exact space first (an exact name is the most specific rule
/// there is), then in the prefix space (longest prefix wins).
pub const UNIX_ABSTRACT_EXACT: u8 = 1;
/// See [`UNIX_ABSTRACT_EXACT`].
pub const UNIX_ABSTRACT_PREFIX: u8 = 2;
/// Longest abstract name (without the NUL that starts it in `sun_path`): `sun_path` is 108 bytes.
pub const UNIX_ABSTRACT_NAME_MAX: usize = 107;

/// Value of a path rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleValue {
    /// Index of the rule in the compiled policy's rule table.
    pub rule_id: u32,
    /// [`action::ALLOW`] or [`action::DENY`].
    pub action: u32,
}

/// Key of the network prefix trie (`NET_PREFIXES`): the policy slot, then an IPv6 address in
/// network byte order, IPv4 ones as IPv4-mapped (`::ffff:a.b.c.d`), so an IPv4-mapped IPv6
/// destination is judged exactly as its IPv4 address. Every prefix length covers the slot
/// ([`NET_SLOT_PREFIX_BITS`]) first.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetKey {
    pub slot: u32,
    pub addr: [u8; 16],
}

/// One network rule as a prefix's list holds it: the address part is the trie's.
#[expect(
    clippy::pub_underscore_fields,
    reason = "explicit padding, set by whichever side of the kernel boundary builds the value"
)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetEntry {
    /// First port of the range, host byte order.
    pub port_lo: u16,
    /// Last port of the range (inclusive), host byte order.
    pub port_hi: u16,
    /// [`proto`] bits.
    pub proto: u8,
    /// [`action::ALLOW`] or [`action::DENY`].
    pub action: u8,
    /// What the rule asks beyond its action: 0 nothing; 1 to [`MAX_BUDGETS`], its budget (1 +
    /// its index in the slot's budgets, see [`BudgetSpec`]); [`NET_CHECK_GRANT`], a grant for
    /// each action (see [`GrantKey`]).
    pub check: u16,
    /// Index of the rule in the compiled policy's rule table.
    pub rule_id: u32,
    /// The rule's connection limit: 0 none; 1 to [`MAX_BUDGETS`], 1 + its index in the slot's
    /// budgets (a [`BudgetSpec`] with `per_ms` 0, see there).
    pub limit: u16,
    pub _pad: u16,
}

/// Value of the network prefix trie for one prefix `P` a policy's rules name: the rules of `P`
/// and of every shorter rule network that contains `P`, in the policy's order of precedence
/// (longer prefix, narrower port range, single protocol, deny first). A destination's longest
/// matching prefix alone thus holds every rule that can match it; its first entry that matches
/// the port and protocol decides, none matching leaves it to the default.
#[expect(
    clippy::pub_underscore_fields,
    reason = "explicit padding, set by whichever side of the kernel boundary builds the value"
)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetPrefix {
    /// Valid entries at the start of `entries`.
    pub count: u32,
    pub _pad: u32,
    pub entries: [NetEntry; NET_LIST_LEN],
}

/// Most budgets and connection limits one policy may have, together: a slot's are elements
/// `slot * MAX_BUDGETS .. (slot + 1) * MAX_BUDGETS` of `BUDGET_SPECS`.
pub const MAX_BUDGETS: u32 = 256;

/// Most budget counters (`BUDGET_STATE` keys) at once, over every confined target. When it is
/// full, an action that would start a new counter is denied (fail closed).
pub const MAX_BUDGET_STATES: u32 = 16384;

/// The largest `count` of a budget: its counter has 24 bits (see [`BudgetSpec`]).
pub const MAX_BUDGET_COUNT: u32 = (1 << 24) - 1;

/// A rule's budget: at most `count` actions the rule allows in a window of `per_ms`
/// milliseconds. A window starts with the first action counted after the previous window
/// ended. Element `slot * MAX_BUDGETS + index` of `BUDGET_SPECS`.
///
/// The counter (the value of `BUDGET_STATE`, keyed by the confined target and `id`) packs the
/// window's start, in milliseconds of boot time, in its top 40 bits and the actions counted in
/// it in its low 24, so one compare-and-exchange moves both. `id` is derived from the rule and
/// its budget as written, so a replacement policy with the same rule and budget keeps counting
/// on the same counter.
///
/// With `per_ms` 0 the element is a rule's connection limit instead: at most `count` sockets
/// hold a slot of it at once. A socket takes one at its first connect or addressed send the
/// rule allows, and gives it back when it is closed (see `SOCKET_HOLDS`); the counter is then
/// the number of slots taken, and `id` derives from the rule alone, so a replacement that
/// changes only the limit keeps counting the sockets open.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BudgetSpec {
    /// Stable identity of the budget; 0 marks an unused element (fail closed).
    pub id: u64,
    /// Actions allowed per window, 1 to [`MAX_BUDGET_COUNT`] (or sockets open at once, 1 to
    /// [`MAX_CONNECTION_LIMIT`]).
    pub count: u32,
    /// Length of a window, milliseconds (at least 1); 0 for a connection limit.
    pub per_ms: u32,
}

/// Key of `BUDGET_STATE`: the confined target (the cgroup id whose `CONFINED` entry decides,
/// the same for every cgroup below it and across policy replacements) and the budget's
/// [`BudgetSpec::id`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BudgetKey {
    pub target: u64,
    pub id: u64,
}

/// Most sockets holding a connection-limit slot at once (`SOCKET_HOLDS`), over every confined
/// target: when it is full, a connect that would take a slot is denied (fail closed).
pub const MAX_SOCKET_HOLDS: u32 = 65536;

/// The largest connection limit of a rule.
pub const MAX_CONNECTION_LIMIT: u32 = MAX_SOCKET_HOLDS;

/// [`NetEntry::check`] of a rule that requires a grant.
pub const NET_CHECK_GRANT: u16 = 0x8000;

/// Most grants at once (used-up and expired ones included, until the daemon removes them).
pub const MAX_GRANTS: u32 = 4096;

/// What a grant is for ([`GrantKey::kind`]).
pub mod grant_kind {
    /// A connect, or a datagram sent with a destination: `addr`, `port`, `proto`.
    pub const NETWORK: u8 = 1;
}

/// Key of `GRANTS`: one exact action of one confined target, which a supervisor allowed
/// (`oxd ctl grant`) for a rule that requires a grant.
#[expect(
    clippy::pub_underscore_fields,
    reason = "explicit padding, set by whichever side of the kernel boundary builds the value"
)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GrantKey {
    /// The confined target (as [`BudgetKey::target`]).
    pub target: u64,
    /// Network: the destination (IPv4 as IPv4-mapped IPv6), network byte order.
    pub addr: [u8; 16],
    /// Network: the destination port, host byte order.
    pub port: u16,
    /// Network: the [`proto`] bit (TCP or UDP).
    pub proto: u8,
    /// [`grant_kind`].
    pub kind: u8,
    pub _pad: u32,
}

/// Value of `GRANTS`: how many more times the action may happen, until when.
#[expect(
    clippy::pub_underscore_fields,
    reason = "explicit padding, set by whichever side of the kernel boundary builds the value"
)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrantValue {
    /// Uses left; the kernel takes one per action with a compare-and-exchange, so two racing
    /// actions never both take the last.
    pub uses: u64,
    /// `bpf_ktime_get_boot_ns()` (`CLOCK_BOOTTIME`) after which the grant allows nothing.
    pub expires_ns: u64,
    /// The grant's number, named in the records of the actions it decides.
    pub id: u32,
    pub _pad: u32,
}

/// Bits of a budget counter that hold the actions counted in the window.
pub const BUDGET_COUNT_BITS: u32 = 24;

/// One decision, sent from the kernel to user space through the ring buffer.
#[expect(
    clippy::pub_underscore_fields,
    reason = "explicit padding, set by whichever side of the kernel boundary builds the value"
)]
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Event {
    /// `bpf_ktime_get_boot_ns()` at the decision.
    pub boot_ns: u64,
    /// cgroup v2 id of the acting task.
    pub cgroup_id: u64,
    /// Generation of the policy that decided.
    pub generation: u64,
    /// Thread group id (the process id).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    /// [`op`].
    pub op: u32,
    /// [`action::ALLOW`] or [`action::DENY`]: what the policy decided.
    pub decision: u32,
    /// [`reason`].
    pub reason: u32,
    /// Rule that decided, or [`RULE_DEFAULT`].
    pub rule_id: u32,
    /// [`mode`] in force: under [`mode::AUDIT`] a deny was recorded but not enforced.
    pub mode: u32,
    /// Network: [`proto`] bit of the socket (0 for exec).
    pub proto: u32,
    /// Bytes of `path` used (a resolved path with its NUL, or the name or address the operation
    /// documents); 0 when there is none or it could not be resolved. The ring buffer record
    /// holds [`EVENT_HEADER_LEN`] bytes and then exactly these.
    pub path_len: u32,
    /// Open: the [`access`] bits requested.
    pub access: u32,
    /// Operation-specific detail (see each [`op`]); 0 where the operation has none.
    pub detail: u32,
    /// Network: destination port, host byte order.
    pub port: u16,
    pub _pad0: u16,
    /// Operations on another task or its socket: that task's process id; 0 otherwise.
    pub peer_pid: u32,
    pub _pad1: u32,
    /// Network: destination address (IPv4 as IPv4-mapped IPv6), network byte order.
    pub addr: [u8; 16],
    /// `comm` of the acting task.
    pub comm: [u8; 16],
    /// The path (see `path_len`): only its first `path_len` bytes are meaningful, and only they
    /// travel through the ring buffer.
    pub path: [u8; PATH_BUF_LEN],
}

/// Most files whose mapping decision `MAPPED_FILES` keeps (least recently used ones go first).
pub const MAX_MAPPED_FILES: u32 = 8192;

/// The exec rules' decision on a mapped file, made in `mmap_file` (where the kernel lets a
/// program resolve the file's path) and kept for `file_mprotect` (where it does not): the value
/// of the `MAPPED_FILES` map, keyed by the address of the `struct file`. The file's identity
/// is kept too, so an entry left by a file that is gone never decides for another file.
#[expect(
    clippy::pub_underscore_fields,
    reason = "explicit padding, set by whichever side of the kernel boundary builds the value"
)]
#[repr(C)]
#[derive(Clone, Copy)]
pub struct MappedFile {
    /// Generation of the policy that decided.
    pub generation: u64,
    /// `inode->i_ino` of the file.
    pub ino: u64,
    /// `sb->s_dev` of the file.
    pub dev: u32,
    /// Policy slot that decided.
    pub slot: u32,
    /// [`action::ALLOW`] or [`action::DENY`].
    pub decision: u32,
    /// [`reason`].
    pub reason: u32,
    /// Rule that decided, or [`RULE_DEFAULT`].
    pub rule_id: u32,
    /// Bytes of `path` used, including the NUL; 0 when not kept (unresolved or too long).
    pub path_len: u32,
    /// The resolved path, NUL-padded (what a rule key holds).
    pub path: [u8; PATH_KEY_LEN],
    pub _pad: [u8; 2],
}

/// Indexes of the `COUNTERS` per-CPU array.
pub mod counter {
    /// Ring buffer outputs that failed (the ring was full): decisions made but not recorded.
    pub const RINGBUF_LOST: u32 = 0;
    /// Actions denied (and enforced).
    pub const DENIED: u32 = 1;
    /// Decisions put into the ring buffer (outputs that succeeded): each one is a record for
    /// user space to read.
    pub const SUBMITTED: u32 = 2;
    /// Allowed decisions counted in `TALLIES` instead of recorded ([`super::record::COUNTED`]).
    pub const TALLIED: u32 = 3;
    /// Decisions over the record rate, counted in `TALLIES` instead of recorded.
    pub const SUPPRESSED: u32 = 4;
    /// Number of counters.
    pub const COUNT: u32 = 5;
}

#[cfg(feature = "user")]
mod user {
    use super::{
        BudgetKey, BudgetSpec, Config, Event, GrantKey, GrantValue, InodeKey, InodeRules,
        MappedFile, NetKey, NetPrefix, PathKey, RateWindow, RuleValue, TallyKey,
    };

    // SAFETY: all of these are `#[repr(C)]`, contain only integers and byte arrays, and have no
    // implicit padding, so every bit pattern is valid and they can be copied to and from maps.
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for PathKey {}
    unsafe impl aya::Pod for RuleValue {}
    unsafe impl aya::Pod for NetKey {}
    unsafe impl aya::Pod for NetPrefix {}
    unsafe impl aya::Pod for Event {}
    unsafe impl aya::Pod for InodeKey {}
    unsafe impl aya::Pod for InodeRules {}
    unsafe impl aya::Pod for MappedFile {}
    unsafe impl aya::Pod for TallyKey {}
    unsafe impl aya::Pod for RateWindow {}
    unsafe impl aya::Pod for BudgetSpec {}
    unsafe impl aya::Pod for BudgetKey {}
    unsafe impl aya::Pod for GrantKey {}
    unsafe impl aya::Pod for GrantValue {}
}

#[cfg(test)]
mod tests {
    extern crate std;

    use core::mem::{align_of, size_of};

    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(
            size_of::<Config>(),
            8 + 4 * 8 + 4 * 4 + 4 * 2 + 4 * 2 + 4 * 2
        );
        assert_eq!(size_of::<RuleValue>(), 8);
        assert_eq!(size_of::<TallyKey>(), 16);
        assert_eq!(size_of::<RateWindow>(), 16);
        assert_eq!(size_of::<PathKey>(), 2 + PATH_KEY_LEN);
        assert_eq!(size_of::<InodeKey>(), 16);
        assert_eq!(size_of::<NetKey>(), 4 + 16);
        assert_eq!(size_of::<NetEntry>(), 2 * 6 + 4);
        assert_eq!(size_of::<BudgetSpec>(), 16);
        assert_eq!(size_of::<BudgetKey>(), 16);
        assert_eq!(size_of::<GrantKey>(), 32);
        assert_eq!(size_of::<GrantValue>(), 24);
        assert_eq!(size_of::<NetPrefix>(), 8 + 16 * NET_LIST_LEN);
        let event_fields = 8 * 3 + 4 * 15 + 2 * 2 + 16 + 16 + PATH_BUF_LEN;
        assert_eq!(size_of::<Event>(), event_fields);
        assert_eq!(align_of::<Event>(), 8);
        assert_eq!(EVENT_HEADER_LEN, event_fields - PATH_BUF_LEN);
        assert_eq!(EVENT_HEADER_LEN % 8, 0);
        assert_eq!(size_of::<MappedFile>(), 8 * 2 + 4 * 6 + PATH_KEY_LEN + 2);
    }
}
