//! Loads oxd's kernel programs, writes compiled policy slots ([`SlotImage`]) into their maps,
//! clears slots, and attaches and pins the programs.

use std::{
    fs,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, RingBuf},
    programs::{links::FdLink, CgroupAttachMode, CgroupSock, CgroupSockAddr, Lsm},
    Ebpf, EbpfLoader,
};
use oxd_common::{
    counter, record, BudgetKey, BudgetSpec, Config, GrantKey, GrantValue, InodeKey, InodeRules,
    NetKey, NetPrefix, PathKey, RuleValue, ANCESTOR_SLOT_BIT, MAX_BUDGETS, MAX_POLICY_SLOTS,
    RING_BUF_BYTES,
};

/// Kept here until every caller asks [`crate::host`].
pub use crate::host::bpf_lsm_active;
use crate::{
    btf::{Btf, BtfError, KernelOffsets},
    cgroup::AgentCgroup,
    compile::{compile, file_identity, CompileError, PathEntry, PathTable, SlotImage},
    host,
    policy::Policy,
};

/// The eBPF object built by build.rs from `oxd-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/oxd"));

/// The cgroup programs that decide egress.
pub const SOCK_ADDR_PROGRAMS: [&str; 4] = ["connect4", "connect6", "sendmsg4", "sendmsg6"];

/// The cgroup `sock` programs, attached and pinned with [`SOCK_ADDR_PROGRAMS`]: `sock_create`
/// decides ICMP, raw and other non-TCP/UDP inet sockets when they are created; `sock_release`
/// gives back the connection-limit slot a closed socket held.
pub const SOCK_PROGRAMS: [&str; 2] = ["sock_create", "sock_release"];

/// Every BPF-LSM program: (program, hook). One program per hook where one concern runs beside
/// another (the guard's checks run first in `file_open`, the write programs, `task_kill` and
/// `ptrace_access_check`; the mount namespace check in `file_open`): every program attached or
/// detached rebuilds its hook's trampoline, most of what starting and stopping costs the kernel.
pub const LSM_PROGRAMS: [(&str, &str); 12] = [
    ("exec_check", "bprm_check_security"),
    ("mmap_file", "mmap_file"),
    ("file_open", "file_open"),
    ("file_mprotect", "file_mprotect"),
    // namespaces ([process] namespaces): NS_PROGRAMS
    ("userns_create", "userns_create"),
    ("sb_mount", "sb_mount"),
    ("sb_umount", "sb_umount"),
    ("move_mount", "move_mount"),
    ("sb_pivotroot", "sb_pivotroot"),
    ("path_chroot", "path_chroot"),
    ("capable", "capable"),
    ("ns_exec_check", "bprm_check_security"),
];

/// The BPF-LSM programs of `[process] namespaces`, attached when the policy governs it.
pub const NS_PROGRAMS: std::ops::Range<usize> = 4..12;

/// The BPF-LSM programs of the policy's sections that also carry guard checks, so attached
/// whenever BPF-LSM programs are, whatever the policy: `file_open`, the write programs, and these
/// two of [`IPC_LSM_PROGRAMS`].
const GUARDED_IPC_PROGRAMS: [(&str, &str); 2] = [IPC_LSM_PROGRAMS[0], IPC_LSM_PROGRAMS[2]];
/// The BPF-LSM programs that decide acting through other tasks, sockets and terminals
/// (policies that govern ipc): (program, hook).
pub const IPC_LSM_PROGRAMS: [(&str, &str); 7] = [
    ("ptrace_access_check", "ptrace_access_check"),
    ("ptrace_traceme", "ptrace_traceme"),
    ("task_kill", "task_kill"),
    ("tty_ioctl", "file_ioctl"),
    ("unix_stream_connect", "unix_stream_connect"),
    ("unix_may_send", "unix_may_send"),
    ("file_fcntl", "file_fcntl"),
];

/// `TIOCSTI`/`TIOCLINUX` from 32-bit callers: the kernel has this hook from 6.8 (before, the
/// compat path calls `file_ioctl`). Attached with [`IPC_LSM_PROGRAMS`] where it exists.
pub const IPC_COMPAT_LSM_PROGRAM: (&str, &str) = ("tty_ioctl_compat", "file_ioctl_compat");

/// The BPF-LSM programs that decide changes to the file system (`[file]` write rules):
/// (program, hook). Attached with `file_open` whenever a policy has a `[file]` section.
pub const WRITE_LSM_PROGRAMS: [(&str, &str); 12] = [
    ("path_unlink", "path_unlink"),
    ("path_rmdir", "path_rmdir"),
    ("path_mkdir", "path_mkdir"),
    ("path_mknod", "path_mknod"),
    ("path_symlink", "path_symlink"),
    ("path_truncate", "path_truncate"),
    ("path_chmod", "path_chmod"),
    ("path_chown", "path_chown"),
    ("path_rename", "path_rename"),
    ("path_link", "path_link"),
    // Given a dentry without a mount (oxd-ebpf/src/attr.rs).
    ("inode_setxattr", "inode_setxattr"),
    ("inode_removexattr", "inode_removexattr"),
];

/// The BPF-LSM programs of the guard (`oxd-ebpf/src/guard.rs`): what every confined task is
/// denied whatever its policy, so that it cannot switch oxd off, leave its confinement or
/// change the kernel. Attached whenever BPF-LSM programs are: (program, hook).
pub const GUARD_LSM_PROGRAMS: &[(&str, &str)] = &[
    // cgroups, bpf(), kernel file systems
    ("bpf", "bpf"),
    ("inode_permission", "inode_permission"),
    // kernel, devices, sockets, oxd's own tasks (oxd's own files, in file_open and the write
    // programs; block devices, in file_open; signals and ptrace to oxd, in task_kill and
    // ptrace_access_check)
    ("oxd_setnice", "task_setnice"),
    ("oxd_setioprio", "task_setioprio"),
    ("oxd_setscheduler", "task_setscheduler"),
    ("oxd_movememory", "task_movememory"),
    ("kernel_read_file", "kernel_read_file"),
    ("kernel_load_data", "kernel_load_data"),
    ("kernel_module_request", "kernel_module_request"),
    ("kernel_capable", "capable"),
    ("raw_socket_create", "socket_create"),
];

/// The write programs that depend on the kernel, attached with [`WRITE_LSM_PROGRAMS`]: the
/// POSIX ACL hooks, which kernels from 6.2 have (they set and remove ACLs through them rather
/// than `inode_setxattr`/`inode_removexattr`), and one of the two `inode_setattr` programs,
/// by the hook's arguments (6.12 passes a `struct mnt_idmap *` first, 6.1 does not).
pub const ATTR_LSM_PROGRAMS: [(&str, &str); 4] = [
    ("inode_set_acl", "inode_set_acl"),
    ("inode_remove_acl", "inode_remove_acl"),
    ("inode_setattr", "inode_setattr"),
    ("inode_setattr_dentry", "inode_setattr"),
];

/// The [`ATTR_LSM_PROGRAMS`] for the kernel of `btf`: the ACL hooks it has, and the
/// `inode_setattr` program for its hook's arguments.
fn attr_programs_for(btf: &Btf, offsets: &KernelOffsets) -> Vec<(&'static str, &'static str)> {
    let mut programs: Vec<_> = ATTR_LSM_PROGRAMS[..2]
        .iter()
        .filter(|(_, hook)| btf.has_function(&format!("bpf_lsm_{hook}")))
        .copied()
        .collect();
    programs.push(if offsets.inode_setattr_idmap != 0 {
        ATTR_LSM_PROGRAMS[2]
    } else {
        ATTR_LSM_PROGRAMS[3]
    });
    programs
}

/// Sets the offsets the programs of `oxd-ebpf/src/attr.rs` read.
fn override_attr_offsets<'a>(loader: &mut EbpfLoader<'a>, offsets: &'a KernelOffsets) {
    loader
        .override_global("DENTRY_D_SB_OFFSET", &offsets.dentry_d_sb, true)
        .override_global("SB_S_MOUNTS_OFFSET", &offsets.sb_s_mounts, true)
        .override_global("MOUNT_SB_LINK_OFFSET", &offsets.mount_sb_link, true)
        .override_global("SB_MOUNTS_LIST", &offsets.sb_mounts_list, true)
        .override_global("TASK_CRED_OFFSET", &offsets.task_cred, true)
        .override_global("TASK_REAL_CRED_OFFSET", &offsets.task_real_cred, true)
        .override_global("IATTR_IA_VALID_OFFSET", &offsets.iattr_ia_valid, true);
}

/// The guard's map of oxd's own files, by identity (see [`Enforcer::protect_files`]).
pub struct FileGuard {
    map: HashMap<MapData, InodeKey, u32>,
    registrar: Array<MapData, u64>,
}

/// One registration at a time in this process (`REGISTRAR` holds one).
static REGISTERING: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl FileGuard {
    /// Forgets every protected file (a daemon starting over pins an earlier one left).
    pub fn clear(&mut self) -> Result<()> {
        let keys: Vec<InodeKey> = self.map.keys().flatten().collect();
        for key in keys {
            match self.map.remove(&key) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err("forget a protected file")(e)),
            }
        }
        Ok(())
    }

    /// Protects `path` (and, if `dir`, every entry in it); a missing file is skipped. The
    /// identity is recorded twice: as `stat` gives it, and as the kernel's hooks see it (oxd
    /// opens the file while `REGISTRAR` names this process, and `file_open` records the
    /// opened dentry's inode: on overlayfs the two differ).
    pub fn protect(&mut self, path: &Path, dir: bool) -> Result<()> {
        let Some(id) = file_identity(path) else {
            return Ok(());
        };
        let key = InodeKey {
            ino: id.ino,
            dev: id.dev,
            slot: 0,
        };
        let flags = if dir {
            oxd_common::PROTECTED_FILE | oxd_common::PROTECTED_DIR
        } else {
            oxd_common::PROTECTED_FILE
        };
        self.map
            .insert(key, flags, 0)
            .map_err(map_err(format!("protect {}", path.display())))?;
        self.register(path, flags)
    }

    /// Stops protecting `path` (a file about to go: oxd deletes its oldest rotated audit log
    /// part with a descriptor still open, and names it `/proc/self/fd/N` here), both
    /// identities: `stat`'s, and the hooks' through a registration without flags.
    pub fn unprotect(&mut self, path: &Path) -> Result<()> {
        let Some(id) = file_identity(path) else {
            return Ok(());
        };
        let key = InodeKey {
            ino: id.ino,
            dev: id.dev,
            slot: 0,
        };
        match self.map.remove(&key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err(format!("unprotect {}", path.display()))(e)),
        }
        self.register(path, 0)
    }

    /// Opens `path` while `REGISTRAR` names this process with `flags`: the guard's `file_open`
    /// records (or, with no flags, forgets) the file's identity as the hooks see it.
    fn register(&mut self, path: &Path, flags: u32) -> Result<()> {
        let _one = REGISTERING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let registration = u64::from(std::process::id()) << 32 | u64::from(flags);
        self.registrar
            .set(0, registration, 0)
            .map_err(map_err("start registering a protected file"))?;
        let opened = fs::File::open(path);
        self.registrar
            .set(0, 0, 0)
            .map_err(map_err("stop registering a protected file"))?;
        opened.map_err(pin_err("open (to protect)", path))?;
        Ok(())
    }
}

/// Sets the offsets the programs of `oxd-ebpf/src/guard_fs.rs` read.
fn override_guard_fs_offsets<'a>(loader: &mut EbpfLoader<'a>, offsets: &'a KernelOffsets) {
    loader
        .override_global("SB_S_MAGIC_OFFSET", &offsets.sb_s_magic, true)
        .override_global("INODE_I_PRIVATE_OFFSET", &offsets.inode_i_private, true)
        .override_global("KERNFS_NODE_PRIV_OFFSET", &offsets.kernfs_node_priv, true)
        .override_global(
            "KERNFS_NODE_PARENT_OFFSET",
            &offsets.kernfs_node_parent,
            true,
        )
        .override_global("KERNFS_NODE_FLAGS_OFFSET", &offsets.kernfs_node_flags, true)
        .override_global("KERNFS_NODE_NAME_OFFSET", &offsets.kernfs_node_name, true)
        .override_global(
            "PROC_INODE_VFS_INODE_OFFSET",
            &offsets.proc_inode_vfs_inode,
            true,
        )
        .override_global("PROC_INODE_PID_OFFSET", &offsets.proc_inode_pid, true)
        .override_global("PID_TASKS_OFFSET", &offsets.pid_tasks, true)
        .override_global("TASK_PID_LINKS_OFFSET", &offsets.task_pid_links, true);
}

/// The maps a daemon pins, so enforcement and its state outlive the daemon process.
const PINNED_MAPS: [&str; 20] = [
    "CONFIG",
    "CONFINED",
    "EXEC_RULES",
    "FILE_READ_RULES",
    "FILE_WRITE_RULES",
    "DENIED_INODES",
    "NET_PREFIXES",
    "EVENTS",
    "COUNTERS",
    "MAPPED_FILES",
    "UNIX_RULES",
    "PROTECTED",
    "PROTECTED_FILES",
    "REGISTRAR",
    "TALLIES",
    "RATE",
    "BUDGET_SPECS",
    "BUDGET_STATE",
    "GRANTS",
    "SOCKET_HOLDS",
];

pub(crate) const LSM_FIX: &str =
    "oxd decides execs and file opens with BPF-LSM: it needs a kernel built \
     with CONFIG_BPF_LSM=y and booted with `bpf` in its `lsm=` boot parameter (for example \
     lsm=lockdown,capability,landlock,bpf). A policy with only a [network] section runs without \
     BPF-LSM.";

#[derive(Debug, thiserror::Error)]
pub enum EnforcerError {
    /// The daemon would adopt a pinned ring buffer of another size than asked: a map's size
    /// cannot change, and replacing the ring would drop the records it holds.
    #[error(
        "the pinned decision ring buffer {path} holds {pinned} bytes, not the {asked} asked for: \
         start the daemon with --ring-size {pinned}, or stop it with --on-exit release (which \
         removes the pins, after its last drain) and start it again with the new size"
    )]
    RingSizeMismatch {
        path: PathBuf,
        pinned: u32,
        asked: u32,
    },
    #[error("BPF-LSM is not active on this kernel (active LSMs: {active}). {LSM_FIX}")]
    LsmInactive { active: String },
    /// The kernel refused to load a BPF-LSM program without a word from the verifier (`EPERM`
    /// and an empty verifier log): it does not run BPF-LSM programs at all.
    #[error("the kernel refused oxd's BPF-LSM program for {hook}: this kernel does not run BPF-LSM programs (active LSMs: {active}). {LSM_FIX} The kernel said")]
    LsmRefused {
        hook: &'static str,
        active: String,
        #[source]
        source: std::io::Error,
    },
    /// The verifier rejected one of oxd's programs: a bug in oxd or an incompatibility with
    /// this kernel, not a missing kernel feature. `log` is the verifier's whole log.
    #[error(
        "the kernel's verifier rejected oxd's {program} program ({errno}): this is a bug in oxd \
         or an incompatibility with this kernel, please report it with the verifier log. Its \
         last lines:\n{}",
        log_tail(log, VERIFIER_LOG_TAIL)
    )]
    VerifierRejected {
        program: &'static str,
        errno: std::io::Error,
        log: String,
    },
    #[error("cannot read the kernel's struct layout")]
    Btf(#[from] BtfError),
    #[error("cannot read the kernel's BTF for loading the BPF-LSM programs")]
    KernelBtf(#[source] aya::BtfError),
    #[error("cannot load oxd's eBPF object")]
    Load(#[from] aya::EbpfError),
    #[error("cannot {what}")]
    Program {
        what: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("cannot {what}")]
    Map {
        what: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    #[error("cannot compile the policy into a policy slot")]
    Compile(#[from] CompileError),
    #[error("oxd's eBPF object has no {0}; the build is broken")]
    Missing(&'static str),
    #[error("cannot {what} in bpffs at {path}")]
    Pin {
        what: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot pin the {program} link at {path}")]
    PinLink {
        program: &'static str,
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("the {program} link cannot be pinned: it is not a bpf_link")]
    NotAnFdLink {
        program: &'static str,
        #[source]
        source: aya::programs::links::LinkError,
    },
}

/// Lines of a verifier log shown in an error message (the rejection is at its end).
const VERIFIER_LOG_TAIL: usize = 40;

/// The last `lines` lines of `log`, with a note of how many were left out.
/// Refuses a pinned ring buffer at `pin` whose size is not `asked` (nothing pinned there yet
/// is fine: it is created with that size).
fn check_pinned_ring(pin: &Path, asked: u32) -> Result<()> {
    if !pin.exists() {
        return Ok(());
    }
    let map = MapData::from_pin(pin).map_err(map_err("open the pinned decision ring buffer"))?;
    let pinned = map
        .info()
        .map_err(map_err("read the pinned decision ring buffer's size"))?
        .max_entries();
    if pinned != asked {
        return Err(EnforcerError::RingSizeMismatch {
            path: pin.to_path_buf(),
            pinned,
            asked,
        });
    }
    Ok(())
}

fn log_tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.trim_end().lines().collect();
    let start = all.len().saturating_sub(lines);
    let mut out = String::new();
    if start > 0 {
        out.push_str(&format!("[{start} earlier lines left out]\n"));
    }
    out.push_str(&all[start..].join("\n"));
    out
}

impl EnforcerError {
    /// The verifier's whole log, if this is a verifier rejection.
    pub fn verifier_log(&self) -> Option<(&'static str, &str)> {
        match self {
            Self::VerifierRejected { program, log, .. } => Some((program, log)),
            _ => None,
        }
    }
}

type Result<T, E = EnforcerError> = std::result::Result<T, E>;

fn map_err(what: impl Into<String>) -> impl FnOnce(aya::maps::MapError) -> EnforcerError {
    let what = what.into();
    move |source| EnforcerError::Map { what, source }
}

fn prog_err(what: impl Into<String>) -> impl FnOnce(aya::programs::ProgramError) -> EnforcerError {
    let what = what.into();
    move |source| EnforcerError::Program { what, source }
}

fn pin_err(what: impl Into<String>, path: &Path) -> impl FnOnce(std::io::Error) -> EnforcerError {
    let what = what.into();
    let path = path.to_owned();
    move |source| EnforcerError::Pin { what, path, source }
}

/// Pins `link` (of program `name`) at `pin`; the link stays attached as long as the pin exists.
fn pin_link(link: FdLink, pin: &Path, name: &'static str) -> Result<()> {
    link.pin(pin).map_err(|source| EnforcerError::PinLink {
        program: name,
        path: pin.to_owned(),
        source,
    })?;
    Ok(())
}

/// How to load oxd's kernel side.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Load the BPF-LSM programs (needs a kernel with BPF-LSM and BTF).
    pub lsm: bool,
    /// Pin maps and links under this bpffs directory, reusing what is already pinned there.
    pub pin_dir: Option<PathBuf>,
    /// Size of the decision ring buffer in bytes (see [`check_ring_size`]). A pinned ring of
    /// another size is refused: its size cannot change while it is adopted.
    pub ring_size: u32,
    /// What every slot records ([`oxd_common::record`]), written into each slot's
    /// configuration: the kernel then puts only those decisions into the ring buffer.
    pub record: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            lsm: false,
            pin_dir: None,
            ring_size: RING_BUF_BYTES,
            record: record::ALL,
        }
    }
}

/// The kernel's setting ([`oxd_common::record`]) for a `--record` choice.
pub fn record_setting(filter: crate::audit::RecordFilter) -> u32 {
    match filter {
        crate::audit::RecordFilter::All => record::ALL,
        crate::audit::RecordFilter::Denied => record::DENIED,
        crate::audit::RecordFilter::Counted => record::COUNTED,
    }
}

/// Smallest ring buffer `--ring-size` accepts: room for two records of the longest path.
pub const MIN_RING_SIZE: u64 = 16 << 10;

/// Largest ring buffer `--ring-size` accepts.
pub const MAX_RING_SIZE: u64 = 1 << 30;

/// Checks a decision ring buffer size: a power of two, a multiple of the page size, between
/// [`MIN_RING_SIZE`] and [`MAX_RING_SIZE`] (the kernel refuses sizes that are not a power of
/// two or not page-aligned).
///
/// # Errors
///
/// A message saying what is wrong with `bytes`.
pub fn check_ring_size(bytes: u64) -> Result<u32, String> {
    // SAFETY: sysconf has no preconditions.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    if !bytes.is_power_of_two() {
        return Err(format!(
            "the ring buffer size must be a power of two, not {bytes}"
        ));
    }
    if !bytes.is_multiple_of(page) {
        return Err(format!(
            "the ring buffer size must be a multiple of the page size ({page} bytes), not {bytes}"
        ));
    }
    if !(MIN_RING_SIZE..=MAX_RING_SIZE).contains(&bytes) {
        return Err(format!(
            "the ring buffer size must be between {MIN_RING_SIZE} and {MAX_RING_SIZE} bytes, \
             not {bytes}"
        ));
    }
    u32::try_from(bytes).map_err(|_| format!("ring buffer size {bytes} is too large"))
}

/// oxd's kernel side: loaded programs and their maps, holding one policy per slot.
pub struct Enforcer {
    ebpf: Ebpf,
    /// The BPF-LSM programs to attach: (program, hook).
    lsm_programs: Vec<(&'static str, &'static str)>,
    /// The ipc programs this kernel has hooks for.
    ipc_programs: Vec<(&'static str, &'static str)>,
    /// The [`ATTR_LSM_PROGRAMS`] for this kernel.
    attr_programs: Vec<(&'static str, &'static str)>,
    enforces_network: bool,
    pin_dir: Option<PathBuf>,
    /// What every slot records ([`LoadOptions::record`]).
    record: u32,
    /// Every slot's record rate ([`Self::set_record_rate`]).
    record_rate: u32,
    /// The kernel's BTF as aya parsed it for the load, kept for attaching the BPF-LSM programs
    /// (one parse of `/sys/kernel/btf/vmlinux`, not one per use: parsing it is a noticeable part
    /// of a start); `None` if the kernel has none.
    kernel_btf: Option<aya::Btf>,
}

impl Enforcer {
    /// Loads the object for `oxd run`, compiles `policy` for slot 0 as generation 1 (with the
    /// identities its exact deny rules name now) and writes it. Attaches nothing yet.
    pub fn load(policy: &Policy) -> Result<Self> {
        Self::load_with(policy, RING_BUF_BYTES, record::ALL)
    }

    /// [`Self::load`] with a ring buffer of `ring_size` bytes, recording `record`
    /// ([`oxd_common::record`]).
    pub fn load_with(policy: &Policy, ring_size: u32, record: u32) -> Result<Self> {
        // Exec, file and ipc rules need BPF-LSM; the guard and namespaces run wherever it is
        // active, whatever the policy (a network-only policy runs without it otherwise).
        let lsm = policy.needs_lsm() || bpf_lsm_active();
        let mut enforcer = Self::open(&LoadOptions {
            lsm,
            pin_dir: None,
            ring_size,
            record,
        })?;
        let ipc_programs = if lsm && policy.ipc.is_some() {
            enforcer.ipc_programs.clone()
        } else {
            Vec::new()
        };
        // `file_open`, the write programs, `task_kill` and `ptrace_access_check` carry guard
        // checks: attached whenever BPF-LSM is (their policy parts decide only for a policy
        // that governs their category).
        enforcer.lsm_programs = [
            policy.exec.as_ref().map(|_| LSM_PROGRAMS[0]),
            policy.exec.as_ref().map(|_| LSM_PROGRAMS[1]),
            lsm.then_some(LSM_PROGRAMS[2]),
            policy.exec.as_ref().map(|_| LSM_PROGRAMS[3]),
        ]
        .into_iter()
        .flatten()
        .chain(ipc_programs)
        .chain(lsm.then_some(WRITE_LSM_PROGRAMS).into_iter().flatten())
        .chain(
            policy
                .file
                .iter()
                .flat_map(|_| enforcer.attr_programs.clone()),
        )
        .collect();
        if lsm {
            for program in GUARDED_IPC_PROGRAMS {
                if !enforcer.lsm_programs.contains(&program) {
                    enforcer.lsm_programs.push(program);
                }
            }
            enforcer
                .lsm_programs
                .extend(GUARD_LSM_PROGRAMS.iter().copied());
            if policy.namespaces.is_some() {
                enforcer
                    .lsm_programs
                    .extend_from_slice(&LSM_PROGRAMS[NS_PROGRAMS]);
            }
        }
        enforcer.enforces_network = policy.network.is_some();
        let image = compile(policy, 0, 1, &file_identity)?;
        enforcer.write_slot(&image)?;
        Ok(enforcer)
    }

    /// The names of the programs this enforcer loads: its BPF-LSM programs (those this kernel
    /// has hooks for), then the cgroup programs.
    pub fn program_names(&self) -> Vec<&'static str> {
        self.lsm_programs
            .iter()
            .map(|(name, _)| *name)
            .chain(SOCK_ADDR_PROGRAMS)
            .chain(SOCK_PROGRAMS)
            .collect()
    }

    /// Loads the object. With `options.lsm`, every BPF-LSM program will be attached by
    /// [`Self::attach_lsm`]; with `options.pin_dir`, maps are pinned there (or adopted from
    /// there if already pinned) and links pinned as they are made.
    #[expect(
        clippy::too_many_lines,
        reason = "one load-time global per kernel offset, in one chain of the loader"
    )]
    pub fn open(options: &LoadOptions) -> Result<Self> {
        let needs_lsm = options.lsm;
        let mut ipc_programs = Vec::new();
        let mut attr_programs = Vec::new();
        let offsets = if needs_lsm {
            if let Some(active) = host::active_lsms() {
                if !active.iter().any(|l| l == "bpf") {
                    return Err(EnforcerError::LsmInactive {
                        active: active.join(","),
                    });
                }
            }
            let btf = Btf::from_kernel()?;
            ipc_programs.extend(IPC_LSM_PROGRAMS);
            if btf.has_function(&format!("bpf_lsm_{}", IPC_COMPAT_LSM_PROGRAM.1)) {
                ipc_programs.push(IPC_COMPAT_LSM_PROGRAM);
            }
            let offsets = KernelOffsets::read(&btf)?;
            attr_programs = attr_programs_for(&btf, &offsets);
            offsets
        } else {
            // Never read: the exec program is not loaded.
            KernelOffsets::default()
        };
        let kernel_btf = aya::Btf::from_sys_fs().ok();
        let mut loader = EbpfLoader::new();
        loader.btf(kernel_btf.as_ref());
        let map_paths: Vec<(&str, PathBuf)> = match &options.pin_dir {
            Some(dir) => {
                let maps = dir.join("maps");
                fs::create_dir_all(&maps).map_err(pin_err("create a directory", &maps))?;
                fs::create_dir_all(dir.join("links"))
                    .map_err(pin_err("create a directory", &dir.join("links")))?;
                PINNED_MAPS
                    .iter()
                    .map(|name| (*name, maps.join(name)))
                    .collect()
            }
            None => Vec::new(),
        };
        for (name, path) in &map_paths {
            if *name == "EVENTS" {
                check_pinned_ring(path, options.ring_size)?;
            }
            loader.map_pin_path(name, path.as_path());
        }
        loader.map_max_entries("EVENTS", options.ring_size);
        override_attr_offsets(&mut loader, &offsets);
        override_guard_fs_offsets(&mut loader, &offsets);
        let ebpf = loader
            .override_global("BPRM_FILE_OFFSET", &offsets.bprm_file, true)
            .override_global("FILE_F_PATH_OFFSET", &offsets.file_f_path, true)
            .override_global("FILE_F_MODE_OFFSET", &offsets.file_f_mode, true)
            .override_global("FILE_F_FLAGS_OFFSET", &offsets.file_f_flags, true)
            .override_global("FILE_F_INODE_OFFSET", &offsets.file_f_inode, true)
            .override_global("INODE_I_INO_OFFSET", &offsets.inode_i_ino, true)
            .override_global("INODE_I_SB_OFFSET", &offsets.inode_i_sb, true)
            .override_global("SB_S_DEV_OFFSET", &offsets.sb_s_dev, true)
            .override_global("VMA_VM_FILE_OFFSET", &offsets.vma_vm_file, true)
            .override_global("VMA_VM_FLAGS_OFFSET", &offsets.vma_vm_flags, true)
            .override_global("INODE_I_FLAGS_OFFSET", &offsets.inode_i_flags, true)
            .override_global("CRED_USER_NS_OFFSET", &offsets.cred_user_ns, true)
            .override_global("TASK_NSPROXY_OFFSET", &offsets.task_nsproxy, true)
            .override_global("NSPROXY_MNT_NS_OFFSET", &offsets.nsproxy_mnt_ns, true)
            .override_global("MOUNT_MNT_OFFSET", &offsets.mount_mnt, true)
            .override_global("MOUNT_MNT_NS_OFFSET", &offsets.mount_mnt_ns, true)
            .override_global("TASK_CGROUPS_OFFSET", &offsets.task_cgroups, true)
            .override_global("TASK_TGID_OFFSET", &offsets.task_tgid, true)
            .override_global("CSS_SET_DFL_CGRP_OFFSET", &offsets.css_set_dfl_cgrp, true)
            .override_global("CGROUP_KN_OFFSET", &offsets.cgroup_kn, true)
            .override_global("CGROUP_PARENT_CSS_OFFSET", &offsets.cgroup_parent_css, true)
            .override_global("CSS_CGROUP_OFFSET", &offsets.css_cgroup, true)
            .override_global("KERNFS_NODE_ID_OFFSET", &offsets.kernfs_node_id, true)
            .override_global("SOCKET_SK_OFFSET", &offsets.socket_sk, true)
            .override_global("SOCK_CGROUP_OFFSET", &offsets.sock_cgroup, true)
            .override_global("SOCK_PEER_PID_OFFSET", &offsets.sock_peer_pid, true)
            .override_global("PID_NR_OFFSET", &offsets.pid_nr, true)
            .override_global("UNIX_SOCK_ADDR_OFFSET", &offsets.unix_sock_addr, true)
            .override_global("UNIX_ADDRESS_LEN_OFFSET", &offsets.unix_address_len, true)
            .override_global("UNIX_ADDRESS_NAME_OFFSET", &offsets.unix_address_name, true)
            .override_global("PATH_MNT_OFFSET", &offsets.path_mnt, true)
            .override_global("PATH_DENTRY_OFFSET", &offsets.path_dentry, true)
            .override_global("VFSMOUNT_MNT_ROOT_OFFSET", &offsets.vfsmount_mnt_root, true)
            .override_global("DENTRY_D_PARENT_OFFSET", &offsets.dentry_d_parent, true)
            .override_global("DENTRY_D_NAME_OFFSET", &offsets.dentry_d_name, true)
            .override_global("DENTRY_D_INODE_OFFSET", &offsets.dentry_d_inode, true)
            .override_global("QSTR_LEN_OFFSET", &offsets.qstr_len, true)
            .override_global("QSTR_NAME_OFFSET", &offsets.qstr_name, true)
            .override_global("MOUNT_MNT_PARENT_OFFSET", &offsets.mount_mnt_parent, true)
            .override_global(
                "MOUNT_MNT_MOUNTPOINT_OFFSET",
                &offsets.mount_mnt_mountpoint,
                true,
            )
            .override_global("UNIX_SOCK_PATH_OFFSET", &offsets.unix_sock_path, true)
            .override_global("USER_NS_LEVEL_OFFSET", &offsets.user_ns_level, true)
            .override_global("INODE_I_MODE_OFFSET", &offsets.inode_i_mode, true)
            .override_global("INODE_I_RDEV_OFFSET", &offsets.inode_i_rdev, true)
            .load(OBJECT)?;
        Ok(Self {
            ebpf,
            lsm_programs: if needs_lsm {
                LSM_PROGRAMS
                    .iter()
                    .chain(&ipc_programs)
                    .chain(&WRITE_LSM_PROGRAMS)
                    .chain(&attr_programs)
                    .chain(GUARD_LSM_PROGRAMS)
                    .copied()
                    .collect()
            } else {
                Vec::new()
            },
            ipc_programs,
            attr_programs,
            enforces_network: true,
            pin_dir: options.pin_dir.clone(),
            record: options.record,
            record_rate: 0,
            kernel_btf,
        })
    }

    /// Writes `image` into its slot, which must be empty: the rules first, the configuration
    /// (which makes the slot valid) last. Nothing points at the slot yet, so no decision sees it
    /// half-written.
    pub fn write_slot(&mut self, image: &SlotImage) -> Result<()> {
        for table in PathTable::ALL {
            let entries = image.paths(table);
            if !entries.is_empty() {
                self.write_path_rules(path_map(table), entries)?;
            }
            let dirs = image.dir_paths(table);
            if !dirs.is_empty() {
                self.write_path_rules(path_map(table), dirs)?;
            }
            if table == PathTable::FileWrite && !image.ancestor_paths().is_empty() {
                self.write_path_rules(path_map(table), image.ancestor_paths())?;
            }
        }
        if !image.unix_paths().is_empty() {
            self.write_path_rules(UNIX_RULES_MAP, image.unix_paths())?;
        }
        if !image.inodes().is_empty() {
            let mut inodes: HashMap<_, InodeKey, InodeRules> = HashMap::try_from(
                self.ebpf
                    .map_mut("DENIED_INODES")
                    .ok_or(EnforcerError::Missing("DENIED_INODES map"))?,
            )
            .map_err(map_err("open the denied-file map"))?;
            for entry in image.inodes() {
                tracing::debug!(
                    dev = entry.key.dev,
                    ino = entry.key.ino,
                    rules = ?entry.rules,
                    "deny by file identity"
                );
                inodes
                    .insert(entry.key, entry.rules, 0)
                    .map_err(map_err("insert a denied file identity"))?;
            }
        }
        if !image.net().is_empty() {
            let net = image.net();
            let keys: Vec<_> = net.iter().map(|e| Key::new(e.prefix_len, e.key)).collect();
            let values: Vec<_> = net.iter().map(|e| e.value).collect();
            self.write_trie("NET_PREFIXES", &keys, &values, |i| {
                let network = crate::compile::network_text(net[i].network());
                format!("insert the rules of network {network}")
            })?;
        }
        if !image.budgets().is_empty() {
            let mut specs = self.budget_specs_map()?;
            for (i, spec) in (0..).zip(image.budgets()) {
                specs
                    .set(image.slot() * MAX_BUDGETS + i, *spec, 0)
                    .map_err(map_err("write a budget"))?;
            }
        }
        // The configuration goes last: until it is there, confined actions fail closed.
        let config = Config {
            record: self.record,
            record_rate: self.record_rate,
            ..*image.config()
        };
        let mut config_map = self.config_map()?;
        config_map
            .set(image.slot(), config, 0)
            .map_err(map_err("write the policy configuration"))?;
        Ok(())
    }

    /// Empties `slot`: its configuration first (so anything still pointing at it fails
    /// closed), then its rules.
    pub fn clear_slot(&mut self, slot: u32) -> Result<()> {
        let mut config_map = self.config_map()?;
        config_map
            .set(slot, Config::default(), 0)
            .map_err(map_err("clear a policy configuration"))?;
        for map in PathTable::ALL
            .map(path_map)
            .into_iter()
            .chain([UNIX_RULES_MAP])
        {
            let mut trie: LpmTrie<_, PathKey, RuleValue> =
                LpmTrie::try_from(self.ebpf.map_mut(map).ok_or(EnforcerError::Missing(map))?)
                    .map_err(map_err(format!("open the rule map {map}")))?;
            let keys: Vec<Key<PathKey>> = trie
                .keys()
                .filter_map(std::result::Result::ok)
                .filter(|k| u32::from(k.data().slot & !ANCESTOR_SLOT_BIT) == slot)
                .collect();
            for key in keys {
                trie.remove(&key)
                    .map_err(map_err(format!("remove a rule from {map}")))?;
            }
        }
        let mut trie = self.net_prefix_map()?;
        let keys: Vec<Key<NetKey>> = trie
            .keys()
            .filter_map(std::result::Result::ok)
            .filter(|k| k.data().slot == slot)
            .collect();
        for key in keys {
            trie.remove(&key)
                .map_err(map_err("remove a network prefix"))?;
        }
        let mut inodes: HashMap<_, InodeKey, InodeRules> = HashMap::try_from(
            self.ebpf
                .map_mut("DENIED_INODES")
                .ok_or(EnforcerError::Missing("DENIED_INODES map"))?,
        )
        .map_err(map_err("open the denied-file map"))?;
        let keys: Vec<InodeKey> = inodes
            .keys()
            .filter_map(std::result::Result::ok)
            .filter(|k| k.slot == slot)
            .collect();
        for key in keys {
            inodes
                .remove(&key)
                .map_err(map_err("remove a denied file identity"))?;
        }
        let mut specs = self.budget_specs_map()?;
        for i in 0..MAX_BUDGETS {
            let index = slot * MAX_BUDGETS + i;
            if specs.get(&index, 0).map_err(map_err("read a budget"))?.id == 0 {
                break;
            }
            specs
                .set(index, BudgetSpec::default(), 0)
                .map_err(map_err("clear a budget"))?;
        }
        Ok(())
    }

    fn budget_specs_map(&mut self) -> Result<Array<&mut MapData, BudgetSpec>> {
        Array::try_from(
            self.ebpf
                .map_mut("BUDGET_SPECS")
                .ok_or(EnforcerError::Missing("BUDGET_SPECS map"))?,
        )
        .map_err(map_err("open the budget map"))
    }

    fn budget_state_map(&mut self) -> Result<HashMap<&mut MapData, BudgetKey, u64>> {
        HashMap::try_from(
            self.ebpf
                .map_mut("BUDGET_STATE")
                .ok_or(EnforcerError::Missing("BUDGET_STATE map"))?,
        )
        .map_err(map_err("open the budget counter map"))
    }

    /// The counters of confined target `target` (its cgroup id), raw: budget id -> the window's
    /// start and the actions counted in it (see [`BudgetCounter::from_raw`]), or connection
    /// limit id -> the sockets holding one of its slots.
    pub fn budget_counters(&self, target: u64) -> Result<Vec<(u64, u64)>> {
        let map: HashMap<&MapData, BudgetKey, u64> = HashMap::try_from(
            self.ebpf
                .map("BUDGET_STATE")
                .ok_or(EnforcerError::Missing("BUDGET_STATE map"))?,
        )
        .map_err(map_err("open the budget counter map"))?;
        Ok(map
            .iter()
            .filter_map(std::result::Result::ok)
            .filter(|(key, _)| key.target == target)
            .map(|(key, value)| (key.id, value))
            .collect())
    }

    fn grants_map(&mut self) -> Result<HashMap<&mut MapData, GrantKey, GrantValue>> {
        HashMap::try_from(
            self.ebpf
                .map_mut("GRANTS")
                .ok_or(EnforcerError::Missing("GRANTS map"))?,
        )
        .map_err(map_err("open the grant map"))
    }

    /// Every grant the kernel holds (used-up and expired ones included).
    pub fn grants(&self) -> Result<Vec<(GrantKey, GrantValue)>> {
        let map: HashMap<&MapData, GrantKey, GrantValue> = HashMap::try_from(
            self.ebpf
                .map("GRANTS")
                .ok_or(EnforcerError::Missing("GRANTS map"))?,
        )
        .map_err(map_err("open the grant map"))?;
        Ok(map.iter().filter_map(std::result::Result::ok).collect())
    }

    /// Puts a grant in force (replacing one for the same action).
    pub fn insert_grant(&mut self, key: GrantKey, value: GrantValue) -> Result<()> {
        self.grants_map()?
            .insert(key, value, 0)
            .map_err(map_err("insert a grant (at most 4096 grants at once)"))
    }

    /// Removes the grants `keep` refuses.
    pub fn remove_grants(
        &mut self,
        keep: impl Fn(&GrantKey, &GrantValue) -> bool,
    ) -> Result<usize> {
        let mut map = self.grants_map()?;
        let gone: Vec<GrantKey> = map
            .iter()
            .filter_map(std::result::Result::ok)
            .filter(|(key, value)| !keep(key, value))
            .map(|(key, _)| key)
            .collect();
        for key in &gone {
            match map.remove(key) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err("remove a grant")(e)),
            }
        }
        Ok(gone.len())
    }

    /// Forgets the budget and connection counters of `target` whose id is not in `keep`, with
    /// the sockets' holds on the connection counters: all of them when the target is released,
    /// those a replacement policy no longer has when it is replaced. The holds go first: a
    /// socket closed in between gives its slot back to a counter about to go (or already gone:
    /// the kernel then does nothing).
    pub fn forget_budgets(&mut self, target: u64, keep: &[u64]) -> Result<()> {
        let stale = |key: &BudgetKey| key.target == target && !keep.contains(&key.id);
        let mut holds: HashMap<&mut MapData, u64, BudgetKey> = HashMap::try_from(
            self.ebpf
                .map_mut("SOCKET_HOLDS")
                .ok_or(EnforcerError::Missing("SOCKET_HOLDS map"))?,
        )
        .map_err(map_err("open the socket hold map"))?;
        let gone: Vec<u64> = holds
            .iter()
            .filter_map(std::result::Result::ok)
            .filter(|(_, key)| stale(key))
            .map(|(cookie, _)| cookie)
            .collect();
        for cookie in gone {
            match holds.remove(&cookie) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err("forget a socket's connection slot")(e)),
            }
        }
        let mut map = self.budget_state_map()?;
        let gone: Vec<BudgetKey> = map
            .keys()
            .filter_map(std::result::Result::ok)
            .filter(stale)
            .collect();
        for key in gone {
            match map.remove(&key) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err("forget a budget counter")(e)),
            }
        }
        Ok(())
    }

    /// The generation in each non-empty slot.
    pub fn slot_generations(&mut self) -> Result<Vec<(u32, u64)>> {
        let config_map = self.config_map()?;
        let mut out = Vec::new();
        for slot in 0..MAX_POLICY_SLOTS {
            let config = config_map
                .get(&slot, 0)
                .map_err(map_err("read a policy configuration"))?;
            if config.generation != 0 {
                out.push((slot, config.generation));
            }
        }
        Ok(out)
    }

    fn config_map(&mut self) -> Result<Array<&mut MapData, Config>> {
        Array::try_from(
            self.ebpf
                .map_mut("CONFIG")
                .ok_or(EnforcerError::Missing("CONFIG map"))?,
        )
        .map_err(map_err("open the configuration map"))
    }

    /// How many network prefixes the kernel holds for `slot` (entries of `NET_PREFIXES`).
    pub fn net_prefix_count(&mut self, slot: u32) -> Result<usize> {
        let trie = self.net_prefix_map()?;
        Ok(trie
            .keys()
            .filter_map(std::result::Result::ok)
            .filter(|k| k.data().slot == slot)
            .count())
    }

    fn net_prefix_map(&mut self) -> Result<LpmTrie<&mut MapData, NetKey, NetPrefix>> {
        LpmTrie::try_from(
            self.ebpf
                .map_mut("NET_PREFIXES")
                .ok_or(EnforcerError::Missing("NET_PREFIXES map"))?,
        )
        .map_err(map_err("open the network prefix map"))
    }

    fn confined_map(&mut self) -> Result<HashMap<&mut MapData, u64, u32>> {
        HashMap::try_from(
            self.ebpf
                .map_mut("CONFINED")
                .ok_or(EnforcerError::Missing("CONFINED map"))?,
        )
        .map_err(map_err("open the confined-cgroup map"))
    }

    /// Points confined cgroup `cgroup_id` at `slot`, in one map update: the switch from one
    /// policy generation to another is atomic for every decision.
    pub fn set_confined(&mut self, cgroup_id: u64, slot: u32) -> Result<()> {
        self.confined_map()?
            .insert(cgroup_id, slot, 0)
            .map_err(map_err(format!("confine cgroup {cgroup_id}")))
    }

    /// Makes `tgids` (oxd's own processes) the ones the guard protects from every confined
    /// task (signals, ptrace and the like toward them are denied), forgetting those an earlier
    /// process left in a pinned map.
    pub fn protect(&mut self, tgids: &[u32]) -> Result<()> {
        let mut map: HashMap<_, u32, u32> = HashMap::try_from(
            self.ebpf
                .map_mut("PROTECTED")
                .ok_or(EnforcerError::Missing("PROTECTED map"))?,
        )
        .map_err(map_err("open the protected-task map"))?;
        for &tgid in tgids {
            map.insert(tgid, 1, 0)
                .map_err(map_err(format!("protect process {tgid}")))?;
        }
        let stale: Vec<u32> = map
            .keys()
            .flatten()
            .filter(|k| !tgids.contains(k))
            .collect();
        for tgid in stale {
            match map.remove(&tgid) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(format!("forget process {tgid}"))(e)),
            }
        }
        Ok(())
    }

    /// Protects oxd's own files from every confined task: each `(path, directory)` is
    /// protected itself and, for a directory, so is every entry in it (see
    /// `oxd-ebpf/src/guard_files.rs`). Files that do not exist are skipped. Adds to what is
    /// protected already.
    pub fn protect_files(&mut self, files: &[(&Path, bool)]) -> Result<()> {
        let mut guard = self.file_guard()?;
        for &(path, dir) in files {
            guard.protect(path, dir)?;
        }
        Ok(())
    }

    /// A handle on the protected-file map that lives apart from the enforcer (the audit
    /// writer protects each new file a rotation opens).
    pub fn file_guard(&self) -> Result<FileGuard> {
        let map = HashMap::try_from(self.reopen("PROTECTED_FILES")?)
            .map_err(map_err("open the protected-file map"))?;
        let registrar = Array::try_from(self.reopen("REGISTRAR")?)
            .map_err(map_err("open the protected-file registrar"))?;
        Ok(FileGuard { map, registrar })
    }

    /// A second handle on map `name`, independent of the enforcer's.
    fn reopen(&self, name: &'static str) -> Result<Map> {
        let map = self.ebpf.map(name).ok_or(EnforcerError::Missing(name))?;
        let (Map::HashMap(data) | Map::Array(data)) = map else {
            return Err(EnforcerError::Missing(name));
        };
        let fd = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| EnforcerError::Pin {
                what: "duplicate the descriptor of".to_owned(),
                path: PathBuf::from(name),
                source,
            })?;
        let data = MapData::from_fd(fd).map_err(map_err(format!("reopen the {name} map")))?;
        Ok(match map {
            Map::HashMap(_) => Map::HashMap(data),
            _ => Map::Array(data),
        })
    }

    /// Stops confining `cgroup_id` (its processes are decided by nothing any more).
    pub fn remove_confined(&mut self, cgroup_id: u64) -> Result<()> {
        match self.confined_map()?.remove(&cgroup_id) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(format!("release cgroup {cgroup_id}"))(e)),
        }
    }

    /// Every confined cgroup and its slot.
    pub fn confined(&mut self) -> Result<Vec<(u64, u32)>> {
        Ok(self
            .confined_map()?
            .iter()
            .filter_map(std::result::Result::ok)
            .collect())
    }

    fn write_path_rules(&mut self, map: &'static str, entries: &[PathEntry]) -> Result<()> {
        let keys: Vec<_> = entries
            .iter()
            .map(|e| Key::new(e.prefix_len, e.key))
            .collect();
        let values: Vec<_> = entries.iter().map(|e| e.value).collect();
        self.write_trie(map, &keys, &values, |i| {
            format!("insert rule {} into {map}", entries[i].pattern())
        })
    }

    /// Writes `keys[i] -> values[i]` into the trie `map`: in batches where the kernel can (see
    /// [`crate::batch`]), else one by one. `what(i)` says what element `i` is, for an error
    /// (built only then: thousands of rules are written here).
    fn write_trie<K: aya::Pod, V: aya::Pod>(
        &mut self,
        map: &'static str,
        keys: &[Key<K>],
        values: &[V],
        what: impl Fn(usize) -> String,
    ) -> Result<()> {
        let Some(Map::LpmTrie(data)) = self.ebpf.map(map) else {
            return Err(EnforcerError::Missing(map));
        };
        // SAFETY: `K` and `V` are the trie's key and value types (as for the inserts below).
        match unsafe { crate::batch::update(data.fd().as_fd(), keys, values) } {
            Ok(()) => return Ok(()),
            Err(crate::batch::BatchError::Failed { done, source }) => {
                let error = aya::sys::SyscallError {
                    call: "bpf_map_update_batch",
                    io_error: source,
                };
                return Err(map_err(what(done))(error.into()));
            }
            Err(crate::batch::BatchError::Unsupported) => {}
        }
        let mut trie: LpmTrie<_, K, V> =
            LpmTrie::try_from(self.ebpf.map_mut(map).ok_or(EnforcerError::Missing(map))?)
                .map_err(map_err(format!("open the map {map}")))?;
        for (i, (key, value)) in keys.iter().zip(values).enumerate() {
            trie.insert(key, value, 0)
                .map_err(|e| map_err(what(i))(e))?;
        }
        Ok(())
    }

    /// Loads (verifies) the BPF-LSM programs the policy needs, without attaching them. This is
    /// the step a kernel without BPF-LSM refuses.
    pub fn load_lsm(&mut self) -> Result<()> {
        if self.lsm_programs.is_empty() {
            return Ok(());
        }
        let mut loaded = true;
        for i in 0..self.lsm_programs.len() {
            let (name, _) = self.lsm_programs[i];
            loaded &= self.lsm_program(name)?.fd().is_ok();
        }
        if loaded {
            return Ok(());
        }
        let active = host::describe_active_lsms();
        // Dropped after the load: nothing needs it later.
        let btf = match self.kernel_btf.take() {
            Some(btf) => btf,
            None => aya::Btf::from_sys_fs().map_err(EnforcerError::KernelBtf)?,
        };
        for i in 0..self.lsm_programs.len() {
            let (name, hook) = self.lsm_programs[i];
            let program = self.lsm_program(name)?;
            if program.fd().is_err() {
                program
                    .load(hook, &btf)
                    .map_err(|source| load_error(source, name, Some(hook), &active))?;
            }
        }
        Ok(())
    }

    fn lsm_program(&mut self, name: &str) -> Result<&mut Lsm> {
        self.ebpf
            .program_mut(name)
            .ok_or(EnforcerError::Missing("BPF-LSM program"))?
            .try_into()
            .map_err(prog_err(format!("open the {name} program")))
    }

    /// Loads and attaches the BPF-LSM programs the policy needs (exec, file open). Done before
    /// any agent starts, so a kernel without BPF-LSM stops `oxd run` before the command runs.
    ///
    /// With a pin directory, each link is pinned there; a link already pinned there (by an
    /// earlier daemon) is left as it is.
    pub fn attach_lsm(&mut self) -> Result<()> {
        self.load_lsm()?;
        for i in 0..self.lsm_programs.len() {
            let (name, hook) = self.lsm_programs[i];
            let pin = self.link_pin(&format!("lsm-{name}"));
            if pin.as_ref().is_some_and(|p| p.exists()) {
                continue;
            }
            let program = self.lsm_program(name)?;
            let id = program
                .attach()
                .map_err(prog_err(format!("attach the {name} program to {hook}")))?;
            if let Some(pin) = pin {
                let link = FdLink::from(
                    program
                        .take_link(id)
                        .map_err(prog_err(format!("take the {name} link")))?,
                );
                pin_link(link, &pin, name)?;
            }
        }
        Ok(())
    }

    fn link_pin(&self, name: &str) -> Option<PathBuf> {
        self.pin_dir.as_ref().map(|d| d.join("links").join(name))
    }

    /// Attaches the cgroup programs to the cgroup open as `dir` (id `cgroup_id`), pinning the
    /// links. Links already pinned for this cgroup are kept.
    pub fn attach_network(&mut self, dir: impl AsFd, cgroup_id: u64, label: &str) -> Result<()> {
        self.load_cgroup_programs()?;
        for name in SOCK_ADDR_PROGRAMS {
            let pin = self.link_pin(&format!("cg{cgroup_id}-{name}"));
            if pin.as_ref().is_some_and(|p| p.exists()) {
                continue;
            }
            let program = self.sock_addr_program(name)?;
            let id = program
                .attach(&dir, CgroupAttachMode::Single)
                .map_err(prog_err(format!("attach the {name} program to {label}")))?;
            if let Some(pin) = pin {
                let link = FdLink::try_from(
                    program
                        .take_link(id)
                        .map_err(prog_err(format!("take the {name} link")))?,
                )
                .map_err(|source| EnforcerError::NotAnFdLink {
                    program: name,
                    source,
                })?;
                pin_link(link, &pin, name)?;
            }
        }
        for name in SOCK_PROGRAMS {
            self.attach_sock_program(&dir, name, cgroup_id, label)?;
        }
        Ok(())
    }

    /// Attaches the `sock` program `name` to the cgroup, as [`Self::attach_network`] does the
    /// `sock_addr` programs: a link already pinned for this cgroup is kept (a daemon adopting
    /// what an earlier one attached).
    fn attach_sock_program(
        &mut self,
        dir: impl AsFd,
        name: &'static str,
        cgroup_id: u64,
        label: &str,
    ) -> Result<()> {
        let pin = self.link_pin(&format!("cg{cgroup_id}-{name}"));
        if pin.as_ref().is_some_and(|p| p.exists()) {
            return Ok(());
        }
        let program = self.sock_program(name)?;
        let id = program
            .attach(&dir, CgroupAttachMode::Single)
            .map_err(prog_err(format!("attach the {name} program to {label}")))?;
        if let Some(pin) = pin {
            let link = FdLink::try_from(
                program
                    .take_link(id)
                    .map_err(prog_err(format!("take the {name} link")))?,
            )
            .map_err(|source| EnforcerError::NotAnFdLink {
                program: name,
                source,
            })?;
            pin_link(link, &pin, name)?;
        }
        Ok(())
    }

    fn sock_program(&mut self, name: &str) -> Result<&mut CgroupSock> {
        self.ebpf
            .program_mut(name)
            .ok_or(EnforcerError::Missing("cgroup sock program"))?
            .try_into()
            .map_err(prog_err(format!("open the {name} program")))
    }

    /// Detaches the pinned cgroup programs of `cgroup_id` (removing a pin drops the link).
    pub fn detach_network(&mut self, cgroup_id: u64) -> Result<()> {
        for name in SOCK_ADDR_PROGRAMS.into_iter().chain(SOCK_PROGRAMS) {
            self.unpin_link(&format!("cg{cgroup_id}-{name}"), name)?;
        }
        Ok(())
    }

    /// Detaches the pinned BPF-LSM programs.
    pub fn detach_lsm(&mut self) -> Result<()> {
        for (name, _) in LSM_PROGRAMS
            .iter()
            .chain(&IPC_LSM_PROGRAMS)
            .chain([&IPC_COMPAT_LSM_PROGRAM])
            .chain(&WRITE_LSM_PROGRAMS)
            .chain(&ATTR_LSM_PROGRAMS)
        {
            self.unpin_link(&format!("lsm-{name}"), name)?;
        }
        Ok(())
    }

    /// Removes the pin `pin_name` of program `name`'s link, if there is one: with its last
    /// reference gone, the link is destroyed and the program detached.
    fn unpin_link(&self, pin_name: &str, name: &str) -> Result<()> {
        if let Some(pin) = self.link_pin(pin_name) {
            if pin.exists() {
                fs::remove_file(&pin).map_err(pin_err(format!("unpin the {name} link"), &pin))?;
            }
        }
        Ok(())
    }

    /// Loads (verifies) the cgroup programs, without attaching them.
    pub fn load_cgroup_programs(&mut self) -> Result<()> {
        for name in SOCK_ADDR_PROGRAMS {
            let program = self.sock_addr_program(name)?;
            if program.fd().is_err() {
                program
                    .load()
                    .map_err(|source| load_error(source, name, None, ""))?;
            }
        }
        for name in SOCK_PROGRAMS {
            let program = self.sock_program(name)?;
            if program.fd().is_err() {
                program
                    .load()
                    .map_err(|source| load_error(source, name, None, ""))?;
            }
        }
        Ok(())
    }

    fn sock_addr_program(&mut self, name: &str) -> Result<&mut CgroupSockAddr> {
        self.ebpf
            .program_mut(name)
            .ok_or(EnforcerError::Missing("cgroup sock_addr program"))?
            .try_into()
            .map_err(prog_err(format!("open the {name} program")))
    }

    /// Marks `cgroup` as confined under slot 0 (`oxd run`) and attaches the cgroup programs
    /// to it if the policy has network rules.
    pub fn confine(&mut self, cgroup: &AgentCgroup) -> Result<()> {
        self.set_confined(cgroup.id(), 0)?;
        if self.enforces_network {
            let dir = cgroup.open_dir()?;
            let label = cgroup.path().display().to_string();
            self.attach_network(&dir, cgroup.id(), &label)?;
        }
        Ok(())
    }

    /// Moves the decision ring buffer out, for the reader.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or(EnforcerError::Missing("EVENTS map"))?;
        RingBuf::try_from(map).map_err(map_err("open the decision ring buffer"))
    }

    /// Decisions that could not be recorded because the ring buffer was full (since the
    /// counters were created).
    pub fn lost_events(&self) -> Result<u64> {
        self.counter_total(counter::RINGBUF_LOST)
    }

    /// Sets what every valid slot records ([`oxd_common::record`]), and what slots written
    /// from now on will: for policies adopted from pins, written under another setting.
    pub fn set_record(&mut self, record: u32) -> Result<()> {
        self.record = record;
        let mut config_map = self.config_map()?;
        for slot in 0..MAX_POLICY_SLOTS {
            let config = config_map
                .get(&slot, 0)
                .map_err(map_err("read a policy configuration"))?;
            if config.generation == 0 || config.record == record {
                continue;
            }
            // Only `record` changes: a decision that reads the element meanwhile sees the same
            // policy either way.
            config_map
                .set(slot, Config { record, ..config }, 0)
                .map_err(map_err("write the policy configuration"))?;
        }
        Ok(())
    }

    /// Sets how many records every valid slot, and every slot written from now on, sends per
    /// rate window (about a second) on each CPU; the decisions beyond are counted in the
    /// kernel's tallies and written as `tally` records. 0: no limit.
    pub fn set_record_rate(&mut self, rate: u32) -> Result<()> {
        self.record_rate = rate;
        let mut config_map = self.config_map()?;
        for slot in 0..MAX_POLICY_SLOTS {
            let config = config_map
                .get(&slot, 0)
                .map_err(map_err("read a policy configuration"))?;
            if config.generation == 0 || config.record_rate == rate {
                continue;
            }
            config_map
                .set(
                    slot,
                    Config {
                        record_rate: rate,
                        ..config
                    },
                    0,
                )
                .map_err(map_err("write the policy configuration"))?;
        }
        Ok(())
    }

    /// Decisions put into the ring buffer (since the counters were created).
    pub fn submitted_events(&self) -> Result<u64> {
        self.counter_total(counter::SUBMITTED)
    }

    /// Denials enforced (since the counters were created).
    pub fn denied_events(&self) -> Result<u64> {
        self.counter_total(counter::DENIED)
    }

    fn counter_total(&self, index: u32) -> Result<u64> {
        let counters: PerCpuArray<_, u64> = PerCpuArray::try_from(
            self.ebpf
                .map("COUNTERS")
                .ok_or(EnforcerError::Missing("COUNTERS map"))?,
        )
        .map_err(map_err("open the counters"))?;
        let values = counters.get(&index, 0).map_err(map_err("read a counter"))?;
        Ok(values.iter().sum())
    }

    /// A second handle on the counters (a duplicate of the map's fd), for a reader on another
    /// thread: the event pump reads the lost-decision count with it.
    pub fn counters(&self) -> Result<PerCpuArray<MapData, u64>> {
        let data = self.duplicate("COUNTERS", "the counters")?;
        PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(map_err("open the counters"))
    }

    /// A second handle on the tallies (decisions counted instead of recorded), for the event
    /// pump.
    pub fn tallies(&self) -> Result<aya::maps::PerCpuHashMap<MapData, oxd_common::TallyKey, u64>> {
        let data = self.duplicate("TALLIES", "the tallies")?;
        aya::maps::PerCpuHashMap::try_from(Map::PerCpuHashMap(data))
            .map_err(map_err("open the tallies"))
    }

    /// The map `name` (`what`, in messages) reopened on a duplicate of its fd.
    fn duplicate(&self, name: &'static str, what: &str) -> Result<MapData> {
        let Some(Map::PerCpuArray(data) | Map::PerCpuHashMap(data)) = self.ebpf.map(name) else {
            return Err(EnforcerError::Missing(name));
        };
        let fd = data.fd().as_fd().try_clone_to_owned().map_err(|io_error| {
            map_err(format!("duplicate {what}' fd"))(
                aya::sys::SyscallError {
                    call: "fcntl(F_DUPFD_CLOEXEC)",
                    io_error,
                }
                .into(),
            )
        })?;
        MapData::from_fd(fd).map_err(map_err(format!("reopen {what}")))
    }
}

/// The trie that holds the `[ipc]` Unix socket rules ([`SlotImage::unix_paths`]).
const UNIX_RULES_MAP: &str = "UNIX_RULES";

/// The trie that holds a path-rule table.
fn path_map(table: PathTable) -> &'static str {
    match table {
        PathTable::Exec => "EXEC_RULES",
        PathTable::FileRead => "FILE_READ_RULES",
        PathTable::FileWrite => "FILE_WRITE_RULES",
    }
}

/// How a program load failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LoadFailure {
    /// `EPERM` with nothing from the verifier: the kernel does not run this kind of program
    /// (a kernel without BPF-LSM, or one that blocks BPF trampolines).
    Refused,
    /// The verifier looked at the program and said no: the log says why.
    Rejected,
    /// Anything else (a failed system call before verification).
    Other,
}

fn classify_load_failure(errno: Option<i32>, verifier_log: &str) -> LoadFailure {
    if !verifier_log.trim().is_empty() {
        LoadFailure::Rejected
    } else if errno == Some(libc::EPERM) {
        LoadFailure::Refused
    } else {
        LoadFailure::Other
    }
}

/// The error for a failed load of program `name` on LSM hook `hook` (`None` for other
/// programs): the kernel refusing BPF-LSM, a verifier rejection with its log, or another
/// failure, each reported as what it is.
fn load_error(
    source: aya::programs::ProgramError,
    name: &'static str,
    hook: Option<&'static str>,
    active: &str,
) -> EnforcerError {
    let aya::programs::ProgramError::LoadError {
        io_error,
        verifier_log,
    } = source
    else {
        return prog_err(format!("load the {name} program"))(source);
    };
    let log = verifier_log.to_string();
    match (classify_load_failure(io_error.raw_os_error(), &log), hook) {
        (LoadFailure::Refused, Some(hook)) => EnforcerError::LsmRefused {
            hook,
            active: active.to_owned(),
            source: io_error,
        },
        (LoadFailure::Rejected, _) => EnforcerError::VerifierRejected {
            program: name,
            errno: io_error,
            log,
        },
        _ => prog_err(format!("load the {name} program"))(aya::programs::ProgramError::LoadError {
            io_error,
            verifier_log,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_failure_is_reported_as_what_it_is() {
        assert_eq!(
            classify_load_failure(Some(libc::EPERM), ""),
            LoadFailure::Refused
        );
        assert_eq!(
            classify_load_failure(Some(libc::EPERM), "\n"),
            LoadFailure::Refused
        );
        let log =
            "0: R1=ctx() R10=fp0\n1: (79) r2 = *(u64 *)(r1 +0)\ninvalid mem access 'scalar'\n";
        assert_eq!(
            classify_load_failure(Some(libc::EACCES), log),
            LoadFailure::Rejected
        );
        // EPERM with a verifier log is a rejection (e.g. a pointer leak), not a missing LSM.
        assert_eq!(
            classify_load_failure(Some(libc::EPERM), log),
            LoadFailure::Rejected
        );
        assert_eq!(
            classify_load_failure(Some(libc::E2BIG), ""),
            LoadFailure::Other
        );
    }

    #[test]
    fn a_verifier_rejection_shows_the_end_of_its_log() {
        let log = (0..100).fold(String::new(), |mut log, i| {
            log.push_str(&format!("line {i}\n"));
            log
        });
        let error = EnforcerError::VerifierRejected {
            program: "file_open",
            errno: std::io::Error::from_raw_os_error(libc::EACCES),
            log: log.clone(),
        };
        let message = error.to_string();
        assert!(
            message.contains("verifier rejected oxd's file_open program"),
            "{message}"
        );
        assert!(message.contains("[60 earlier lines left out]"), "{message}");
        assert!(
            message.contains("line 60\n") && message.ends_with("line 99"),
            "{message}"
        );
        assert!(!message.contains("line 59\n"), "{message}");
        assert_eq!(error.verifier_log(), Some(("file_open", log.as_str())));
    }
}

/// A budget counter as the kernel keeps it (see `oxd_common::BudgetSpec`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetCounter {
    /// Start of the current (or last) window, milliseconds of boot time
    /// (`CLOCK_BOOTTIME`).
    pub start_ms: u64,
    /// Actions counted in that window.
    pub used: u32,
}

impl BudgetCounter {
    pub fn from_raw(value: u64) -> Self {
        Self {
            start_ms: value >> oxd_common::BUDGET_COUNT_BITS,
            used: u32::try_from(value & ((1 << oxd_common::BUDGET_COUNT_BITS) - 1))
                .unwrap_or(u32::MAX),
        }
    }
}
