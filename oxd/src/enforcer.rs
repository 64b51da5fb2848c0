//! Loads oxd's kernel programs, writes a compiled policy into their maps, and attaches them.

use std::{
    fs,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, RingBuf},
    programs::{links::FdLink, CgroupAttachMode, CgroupSockAddr, Lsm},
    Ebpf, EbpfLoader,
};
use oxd_common::{
    counter, governs, Config, InodeKey, InodeRules, PathKey, RuleValue, MAX_NET_RULES,
    MAX_POLICY_SLOTS, PATH_KEY_LEN, SLOT_PREFIX_BITS,
};

use crate::{
    btf::{Btf, BtfError, KernelOffsets},
    cgroup::AgentCgroup,
    policy::{Action, PathRule, Policy},
};

/// The eBPF object built by build.rs from `oxd-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/oxd"));

const LSM_FILE: &str = "/sys/kernel/security/lsm";

/// The cgroup programs that decide egress.
const SOCK_ADDR_PROGRAMS: [&str; 4] = ["connect4", "connect6", "sendmsg4", "sendmsg6"];

/// Every BPF-LSM program: (program, hook).
pub const LSM_PROGRAMS: [(&str, &str); 3] = [
    ("exec_check", "bprm_check_security"),
    ("mmap_file", "mmap_file"),
    ("file_open", "file_open"),
];

/// The maps a daemon pins, so enforcement and its state outlive the daemon process.
const PINNED_MAPS: [&str; 9] = [
    "CONFIG",
    "CONFINED",
    "EXEC_RULES",
    "FILE_READ_RULES",
    "FILE_WRITE_RULES",
    "DENIED_INODES",
    "NET_RULES",
    "EVENTS",
    "COUNTERS",
];

pub(crate) const LSM_FIX: &str =
    "oxd decides execs and file opens with BPF-LSM: it needs a kernel built \
     with CONFIG_BPF_LSM=y and booted with `bpf` in its `lsm=` boot parameter (for example \
     lsm=lockdown,capability,landlock,bpf). A policy with only a [network] section runs without \
     BPF-LSM.";

#[derive(Debug, thiserror::Error)]
pub enum EnforcerError {
    #[error("BPF-LSM is not active on this kernel (active LSMs: {active}). {LSM_FIX}")]
    LsmInactive { active: String },
    #[error("the kernel refused oxd's BPF-LSM program for {hook}: {cause}. This kernel does not run BPF-LSM programs (active LSMs: {active}). {LSM_FIX}")]
    LsmRefused {
        hook: &'static str,
        active: String,
        cause: String,
    },
    #[error("cannot read the kernel's struct layout")]
    Btf(#[from] BtfError),
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
    #[error("oxd's eBPF object has no {0}; the build is broken")]
    Missing(&'static str),
    #[error("cannot {what} in bpffs at {path}")]
    Pin {
        what: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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

fn active_lsms() -> Option<String> {
    fs::read_to_string(LSM_FILE)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Whether `bpf` is among the kernel's active LSMs (false if that cannot be read).
pub fn bpf_lsm_active() -> bool {
    active_lsms().is_some_and(|active| active.split(',').any(|l| l == "bpf"))
}

fn describe_active_lsms() -> String {
    active_lsms().unwrap_or_else(|| format!("unknown, {LSM_FILE} is not readable"))
}

fn pin_err(what: impl Into<String>, path: &Path) -> impl FnOnce(std::io::Error) -> EnforcerError {
    let what = what.into();
    let path = path.to_owned();
    move |source| EnforcerError::Pin { what, path, source }
}

/// Pins `link` (of program `name`) at `pin`; the link stays attached as long as the pin exists.
fn pin_link(link: FdLink, pin: &Path, name: &str) -> Result<()> {
    link.pin(pin).map_err(|e| {
        pin_err(format!("pin the {name} link"), pin)(std::io::Error::other(e.to_string()))
    })?;
    Ok(())
}

/// Settings of a policy for slot `generation`, from its sections.
fn config_for(policy: &Policy, generation: u64) -> Config {
    let mut governed = 0;
    if policy.exec.is_some() {
        governed |= governs::EXEC;
    }
    if policy.file.is_some() {
        governed |= governs::FILE;
    }
    if policy.network.is_some() {
        governed |= governs::NETWORK;
    }
    Config {
        generation,
        governs: governed,
        mode: policy.mode.to_kernel(),
        exec_default: policy
            .exec
            .as_ref()
            .map_or(Action::Allow, |e| e.default)
            .to_kernel(),
        net_default: policy
            .network
            .as_ref()
            .map_or(Action::Allow, |n| n.default)
            .to_kernel(),
        net_rule_count: policy.network.as_ref().map_or(0, |n| n.rules.len() as u32),
        file_read_default: policy
            .file
            .as_ref()
            .map_or(Action::Allow, |f| f.read_default)
            .to_kernel(),
        file_write_default: policy
            .file
            .as_ref()
            .map_or(Action::Allow, |f| f.write_default)
            .to_kernel(),
        _pad: 0,
    }
}

/// How to load oxd's kernel side.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Load the BPF-LSM programs (needs a kernel with BPF-LSM and BTF).
    pub lsm: bool,
    /// Pin maps and links under this bpffs directory, reusing what is already pinned there.
    pub pin_dir: Option<PathBuf>,
}

/// oxd's kernel side: loaded programs and their maps, holding one policy per slot.
pub struct Enforcer {
    ebpf: Ebpf,
    /// The BPF-LSM programs to attach: (program, hook).
    lsm_programs: Vec<(&'static str, &'static str)>,
    enforces_network: bool,
    pin_dir: Option<PathBuf>,
}

impl Enforcer {
    /// Loads the object for `oxd run` and writes `policy` into slot 0 as generation 1. Attaches
    /// nothing yet.
    pub fn load(policy: &Policy) -> Result<Self> {
        let mut enforcer = Self::open(&LoadOptions {
            lsm: policy.needs_lsm(),
            pin_dir: None,
        })?;
        enforcer.lsm_programs = [
            policy.exec.as_ref().map(|_| LSM_PROGRAMS[0]),
            policy.exec.as_ref().map(|_| LSM_PROGRAMS[1]),
            policy.file.as_ref().map(|_| LSM_PROGRAMS[2]),
        ]
        .into_iter()
        .flatten()
        .collect();
        enforcer.enforces_network = policy.network.is_some();
        enforcer.write_slot(0, 1, policy)?;
        Ok(enforcer)
    }

    /// Loads the object. With `options.lsm`, every BPF-LSM program will be attached by
    /// [`Self::attach_lsm`]; with `options.pin_dir`, maps are pinned there (or adopted from
    /// there if already pinned) and links pinned as they are made.
    pub fn open(options: &LoadOptions) -> Result<Self> {
        let needs_lsm = options.lsm;
        let offsets = if needs_lsm {
            if let Some(active) = active_lsms() {
                if !active.split(',').any(|l| l == "bpf") {
                    return Err(EnforcerError::LsmInactive { active });
                }
            }
            KernelOffsets::read(&Btf::from_kernel()?)?
        } else {
            // Never read: the exec program is not loaded.
            KernelOffsets::default()
        };
        let mut loader = EbpfLoader::new();
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
            loader.map_pin_path(name, path.as_path());
        }
        let ebpf = loader
            .override_global("BPRM_FILE_OFFSET", &offsets.bprm_file, true)
            .override_global("FILE_F_PATH_OFFSET", &offsets.file_f_path, true)
            .override_global("FILE_F_MODE_OFFSET", &offsets.file_f_mode, true)
            .override_global("FILE_F_FLAGS_OFFSET", &offsets.file_f_flags, true)
            .override_global("FILE_F_INODE_OFFSET", &offsets.file_f_inode, true)
            .override_global("INODE_I_INO_OFFSET", &offsets.inode_i_ino, true)
            .override_global("INODE_I_SB_OFFSET", &offsets.inode_i_sb, true)
            .override_global("SB_S_DEV_OFFSET", &offsets.sb_s_dev, true)
            .load(OBJECT)?;
        Ok(Self {
            ebpf,
            lsm_programs: if needs_lsm {
                LSM_PROGRAMS.to_vec()
            } else {
                Vec::new()
            },
            enforces_network: true,
            pin_dir: options.pin_dir.clone(),
        })
    }

    /// Writes `policy` as `generation` into `slot`, which must be empty: the rules first, the
    /// configuration (which makes the slot valid) last. Nothing points at the slot yet, so no
    /// decision sees it half-written.
    pub fn write_slot(&mut self, slot: u32, generation: u64, policy: &Policy) -> Result<()> {
        assert!(slot < MAX_POLICY_SLOTS && generation != 0);
        let config = config_for(policy, generation);
        if let Some(exec) = &policy.exec {
            self.fill_path_rules("EXEC_RULES", slot, &exec.rules)?;
        }
        if let Some(file) = &policy.file {
            self.fill_path_rules("FILE_READ_RULES", slot, &file.read)?;
            self.fill_path_rules("FILE_WRITE_RULES", slot, &file.write)?;
        }
        if policy.needs_lsm() {
            let mut inodes: HashMap<_, InodeKey, InodeRules> = HashMap::try_from(
                self.ebpf
                    .map_mut("DENIED_INODES")
                    .ok_or(EnforcerError::Missing("DENIED_INODES map"))?,
            )
            .map_err(map_err("open the denied-file map"))?;
            for (mut key, rules) in policy.denied_identities() {
                key.slot = slot;
                tracing::debug!(
                    dev = key.dev,
                    ino = key.ino,
                    ?rules,
                    "deny by file identity"
                );
                inodes
                    .insert(key, rules, 0)
                    .map_err(map_err("insert a denied file identity"))?;
            }
        }
        if let Some(network) = &policy.network {
            let mut table: Array<_, oxd_common::NetRule> = Array::try_from(
                self.ebpf
                    .map_mut("NET_RULES")
                    .ok_or(EnforcerError::Missing("NET_RULES map"))?,
            )
            .map_err(map_err("open the network rule map"))?;
            for (i, rule) in network.rules.iter().enumerate() {
                table
                    .set(slot * MAX_NET_RULES + i as u32, rule.to_kernel(), 0)
                    .map_err(map_err(format!("insert network rule {i}")))?;
            }
        }
        // The configuration goes last: until it is there, confined actions fail closed.
        let mut config_map = self.config_map()?;
        config_map
            .set(slot, config, 0)
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
        for map in ["EXEC_RULES", "FILE_READ_RULES", "FILE_WRITE_RULES"] {
            let mut trie: LpmTrie<_, PathKey, RuleValue> =
                LpmTrie::try_from(self.ebpf.map_mut(map).ok_or(EnforcerError::Missing(map))?)
                    .map_err(map_err(format!("open the rule map {map}")))?;
            let keys: Vec<Key<PathKey>> = trie
                .keys()
                .filter_map(std::result::Result::ok)
                .filter(|k| u32::from(k.data().slot) == slot)
                .collect();
            for key in keys {
                trie.remove(&key)
                    .map_err(map_err(format!("remove a rule from {map}")))?;
            }
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

    fn fill_path_rules(&mut self, map: &'static str, slot: u32, rules: &[PathRule]) -> Result<()> {
        let mut trie: LpmTrie<_, PathKey, RuleValue> =
            LpmTrie::try_from(self.ebpf.map_mut(map).ok_or(EnforcerError::Missing(map))?)
                .map_err(map_err(format!("open the rule map {map}")))?;
        for rule in rules {
            let (bytes, bits) = rule.pattern.key();
            let mut data = PathKey {
                slot: slot as u16,
                path: [0; PATH_KEY_LEN],
            };
            data.path[..bytes.len()].copy_from_slice(&bytes);
            let value = RuleValue {
                rule_id: rule.rule,
                action: rule.action.to_kernel(),
            };
            trie.insert(&Key::new(SLOT_PREFIX_BITS + bits, data), value, 0)
                .map_err(map_err(format!("insert rule {} into {map}", rule.pattern)))?;
        }
        Ok(())
    }

    /// Loads (verifies) the BPF-LSM programs the policy needs, without attaching them. This is
    /// the step a kernel without BPF-LSM refuses.
    pub fn load_lsm(&mut self) -> Result<()> {
        if self.lsm_programs.is_empty() {
            return Ok(());
        }
        let active = describe_active_lsms();
        let btf = aya::Btf::from_sys_fs().map_err(|e| {
            EnforcerError::Btf(BtfError::Read {
                path: Path::new(crate::btf::VMLINUX_BTF).to_owned(),
                source: std::io::Error::other(e.to_string()),
            })
        })?;
        for i in 0..self.lsm_programs.len() {
            let (name, hook) = self.lsm_programs[i];
            let program = self.lsm_program(name)?;
            if program.fd().is_err() {
                program
                    .load(hook, &btf)
                    .map_err(|source| lsm_error(source, hook, &active))?;
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
        let active = describe_active_lsms();
        for i in 0..self.lsm_programs.len() {
            let (name, hook) = self.lsm_programs[i];
            let pin = self.link_pin(&format!("lsm-{name}"));
            if pin.as_ref().is_some_and(|p| p.exists()) {
                continue;
            }
            let program = self.lsm_program(name)?;
            let id = program
                .attach()
                .map_err(|source| lsm_error(source, hook, &active))?;
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
                .map_err(|e| {
                    pin_err(format!("pin the {name} link (not a bpf_link)"), &pin)(
                        std::io::Error::other(e.to_string()),
                    )
                })?;
                pin_link(link, &pin, name)?;
            }
        }
        Ok(())
    }

    /// Detaches the pinned cgroup programs of `cgroup_id` (removing a pin drops the link).
    pub fn detach_network(&mut self, cgroup_id: u64) -> Result<()> {
        for name in SOCK_ADDR_PROGRAMS {
            self.unpin_link(&format!("cg{cgroup_id}-{name}"), name)?;
        }
        Ok(())
    }

    /// Detaches the pinned BPF-LSM programs.
    pub fn detach_lsm(&mut self) -> Result<()> {
        for (name, _) in LSM_PROGRAMS {
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
                    .map_err(prog_err(format!("load the {name} program")))?;
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
        let Some(Map::PerCpuArray(data)) = self.ebpf.map("COUNTERS") else {
            return Err(EnforcerError::Missing("COUNTERS map"));
        };
        let fd = data.fd().as_fd().try_clone_to_owned().map_err(|io_error| {
            map_err("duplicate the counters' fd")(
                aya::sys::SyscallError {
                    call: "fcntl(F_DUPFD_CLOEXEC)",
                    io_error,
                }
                .into(),
            )
        })?;
        let data = MapData::from_fd(fd).map_err(map_err("reopen the counters"))?;
        PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(map_err("open the counters"))
    }
}

fn lsm_error(
    source: aya::programs::ProgramError,
    hook: &'static str,
    active: &str,
) -> EnforcerError {
    EnforcerError::LsmRefused {
        hook,
        active: active.to_owned(),
        cause: source.to_string(),
    }
}
