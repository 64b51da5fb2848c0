//! Every map of the object. User space finds them by these names (and the daemon pins them
//! under them): renaming one breaks it.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{
        lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf,
    },
};
use oxd_common::{
    counter, BudgetKey, BudgetSpec, Config, Event, GrantKey, GrantValue, InodeKey, InodeRules,
    MappedFile, NetKey, NetPrefix, PathKey, RateWindow, RuleValue, TallyKey, MAX_BUDGETS,
    MAX_BUDGET_STATES, MAX_CONFINED_CGROUPS, MAX_GRANTS, MAX_MAPPED_FILES, MAX_POLICY_SLOTS,
    MAX_PROTECTED_FILES, MAX_PROTECTED_TASKS, MAX_SOCKET_HOLDS, MAX_TALLIES, NET_PREFIX_CAPACITY,
    PATH_RULE_CAPACITY, RING_BUF_BYTES,
};

/// Policy settings, one element per policy slot.
#[map]
pub(crate) static CONFIG: Array<Config> = Array::with_max_entries(MAX_POLICY_SLOTS, 0);

/// Confined cgroups (and so every cgroup below them): cgroup id -> policy slot. Replacing a
/// policy repoints this one value, so a decision sees either the old slot or the new one.
#[map]
pub(crate) static CONFINED: HashMap<u64, u32> = HashMap::with_max_entries(MAX_CONFINED_CGROUPS, 0);

/// oxd's own processes (the daemon, `oxd run` and its watchdog), by thread-group id: no
/// confined task may signal, trace or otherwise act on them (the guard). The value is unused.
#[map]
pub(crate) static PROTECTED: HashMap<u32, u32> = HashMap::with_max_entries(MAX_PROTECTED_TASKS, 0);

/// oxd's own files (its binary, the policy files, the audit log, the daemon's state
/// directory), by identity (`slot` unused, 0): no confined task may open them for writing,
/// remove, rename, truncate, chmod or chown them, or (for a directory, `PROTECTED_DIR`) change
/// anything in it (the guard).
#[map]
pub(crate) static PROTECTED_FILES: HashMap<InodeKey, u32> =
    HashMap::with_max_entries(MAX_PROTECTED_FILES, 0);

/// Registration of a file into `PROTECTED_FILES` as the kernel sees it: `tgid << 32 | flags`
/// while oxd (process `tgid`) opens the file to protect, 0 otherwise. The kernel's view of a
/// file's identity can differ from `stat`'s (on overlayfs, `stat` names the underlying file),
/// so oxd lets `file_open` (its guard check) record the identity its hooks will compare.
#[map]
pub(crate) static REGISTRAR: Array<u64> = Array::with_max_entries(1, 0);

/// Exec rules: longest matching prefix of (slot, the executed file's resolved path).
#[map]
pub(crate) static EXEC_RULES: LpmTrie<PathKey, RuleValue> =
    LpmTrie::with_max_entries(PATH_RULE_CAPACITY, 0);

/// File rules for opening to read: longest matching prefix of (slot, resolved path).
#[map]
pub(crate) static FILE_READ_RULES: LpmTrie<PathKey, RuleValue> =
    LpmTrie::with_max_entries(PATH_RULE_CAPACITY, 0);

/// File rules for opening to write: longest matching prefix of (slot, resolved path).
#[map]
pub(crate) static FILE_WRITE_RULES: LpmTrie<PathKey, RuleValue> =
    LpmTrie::with_max_entries(PATH_RULE_CAPACITY, 0);

/// Files named by exact deny rules, by (identity, slot): their other names (hard links) are
/// denied too. Not preallocated: written only by user space, and mostly near-empty, so no
/// reason to allocate all of it at every load.
#[map]
pub(crate) static DENIED_INODES: HashMap<InodeKey, InodeRules> =
    HashMap::with_max_entries(PATH_RULE_CAPACITY, BPF_F_NO_PREALLOC);

/// Network rules: longest matching prefix of (slot, destination address), whose value lists
/// every rule that can decide a destination there, in order of precedence (see `NetPrefix`).
#[map]
pub(crate) static NET_PREFIXES: LpmTrie<NetKey, NetPrefix> =
    LpmTrie::with_max_entries(NET_PREFIX_CAPACITY, 0);

/// Decisions for the audit log: each record an event's header and the bytes of its path used.
/// User space sets the size (`--ring-size`); this is the default.
#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BUF_BYTES, 0);

/// Counters, see `oxd_common::counter`.
#[map]
pub(crate) static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Decisions counted instead of recorded (allowed ones under `record::COUNTED`, and those over
/// a slot's record rate), by `TallyKey`; user space writes the sums as `tally` records. Not
/// preallocated: a preallocated per-CPU hash of this size is one per-CPU allocation per
/// element at every load (milliseconds on a real machine, much more in an emulated one), and
/// a session uses a few dozen keys. An insert that cannot allocate fails, and the decision is
/// then recorded instead (see `event::tally`).
#[map]
pub(crate) static TALLIES: PerCpuHashMap<TallyKey, u64> =
    PerCpuHashMap::with_max_entries(MAX_TALLIES, BPF_F_NO_PREALLOC);

/// Each slot's record-rate window, on each CPU.
#[map]
pub(crate) static RATE: PerCpuArray<RateWindow> =
    PerCpuArray::with_max_entries(MAX_POLICY_SLOTS, 0);

/// What [`SCRATCH`] holds: the event being built (see `event::start_event`), whose `path` is
/// where the path resolvers write a resolved path, and the rule-trie key built from it. The
/// event's header sits right before the path, so the ring buffer record (header and the path
/// bytes used) is one contiguous piece of this map value, output without a copy of the path.
#[repr(C)]
pub(crate) struct Scratch {
    pub(crate) key: Key<PathKey>,
    pub(crate) event: Event,
}

/// Per-CPU scratch space: paths do not fit on the 512-byte stack.
#[map]
pub(crate) static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// The exec rules' decision on every file a confined task maps, by the address of its
/// `struct file`: made in `mmap_file`, used by `file_mprotect`, which cannot resolve paths.
#[map]
pub(crate) static MAPPED_FILES: LruHashMap<u64, MappedFile> =
    LruHashMap::with_max_entries(MAX_MAPPED_FILES, 0);

/// Per-CPU room to build a [`MAPPED_FILES`] value in (too large for the stack).
#[map]
pub(crate) static MAPPED_FILE: PerCpuArray<MappedFile> = PerCpuArray::with_max_entries(1, 0);

/// Unix socket rules (`[ipc] unix_allow`/`unix_deny`): longest matching prefix of (slot, the
/// listening socket's bound path), or of (slot, abstract-name key); see
/// `oxd_common::UNIX_ABSTRACT_EXACT`.
#[map]
pub(crate) static UNIX_RULES: LpmTrie<PathKey, RuleValue> =
    LpmTrie::with_max_entries(PATH_RULE_CAPACITY, 0);

/// Each slot's budgets (see `BudgetSpec`): elements `slot * MAX_BUDGETS ..`, the rule entries'
/// `budget` minus one after that.
#[map]
pub(crate) static BUDGET_SPECS: Array<BudgetSpec> =
    Array::with_max_entries(MAX_POLICY_SLOTS * MAX_BUDGETS, 0);

/// Budget counters, by confined target and budget id: the window's start and the actions
/// counted in it (see `BudgetSpec`). Made by the kernel at a budget's first action, removed by
/// user space when the target is released (or the budget leaves its policy). Not preallocated:
/// a session uses a handful.
#[map]
pub(crate) static BUDGET_STATE: HashMap<BudgetKey, u64> =
    HashMap::with_max_entries(MAX_BUDGET_STATES, BPF_F_NO_PREALLOC);

/// Sockets holding a slot of a connection limit: socket cookie -> (target, limit id), the
/// counter in `BUDGET_STATE` the slot is counted on. Made by the `sock_addr` programs, removed
/// by `sock_release` when the socket is closed (or by user space, with the target's counters).
/// Not preallocated: mostly near-empty.
#[map]
pub(crate) static SOCKET_HOLDS: HashMap<u64, BudgetKey> =
    HashMap::with_max_entries(MAX_SOCKET_HOLDS, BPF_F_NO_PREALLOC);

/// Grants: exact actions of a confined target that a supervisor allowed for rules that require
/// a grant, with the uses left and an expiry (see `GrantKey`). Written by the daemon; the
/// kernel only takes uses. Not preallocated: mostly empty.
#[map]
pub(crate) static GRANTS: HashMap<GrantKey, GrantValue> =
    HashMap::with_max_entries(MAX_GRANTS, BPF_F_NO_PREALLOC);
