//! Loads oxd's kernel programs, writes a compiled policy into their maps, and attaches them.

use std::{fs, path::Path};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf},
    programs::{CgroupAttachMode, CgroupSockAddr, Lsm},
    Ebpf, EbpfLoader,
};
use oxd_common::{counter, Config, InodeKey, InodeRules, PathKey, RuleValue, PATH_KEY_LEN};

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

fn describe_active_lsms() -> String {
    active_lsms().unwrap_or_else(|| format!("unknown, {LSM_FILE} is not readable"))
}

/// The kernel side of one policy: loaded programs and filled maps.
pub struct Enforcer {
    ebpf: Ebpf,
    /// The BPF-LSM programs the policy needs: (program, hook).
    lsm_programs: Vec<(&'static str, &'static str)>,
    enforces_network: bool,
}

impl Enforcer {
    /// Loads the object and writes `policy` into its maps. Attaches nothing yet.
    pub fn load(policy: &Policy) -> Result<Self> {
        let needs_lsm = policy.needs_lsm();
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
        let ebpf = EbpfLoader::new()
            .override_global("BPRM_FILE_OFFSET", &offsets.bprm_file, true)
            .override_global("FILE_F_PATH_OFFSET", &offsets.file_f_path, true)
            .override_global("FILE_F_MODE_OFFSET", &offsets.file_f_mode, true)
            .override_global("FILE_F_FLAGS_OFFSET", &offsets.file_f_flags, true)
            .override_global("FILE_F_INODE_OFFSET", &offsets.file_f_inode, true)
            .override_global("INODE_I_INO_OFFSET", &offsets.inode_i_ino, true)
            .override_global("INODE_I_SB_OFFSET", &offsets.inode_i_sb, true)
            .override_global("SB_S_DEV_OFFSET", &offsets.sb_s_dev, true)
            .load(OBJECT)?;
        let mut enforcer = Self {
            ebpf,
            lsm_programs: [
                policy
                    .exec
                    .as_ref()
                    .map(|_| ("exec_check", "bprm_check_security")),
                policy.exec.as_ref().map(|_| ("mmap_file", "mmap_file")),
                policy.file.as_ref().map(|_| ("file_open", "file_open")),
            ]
            .into_iter()
            .flatten()
            .collect(),
            enforces_network: policy.network.is_some(),
        };
        enforcer.write_policy(policy)?;
        Ok(enforcer)
    }

    fn write_policy(&mut self, policy: &Policy) -> Result<()> {
        let config = Config {
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
        };
        if let Some(exec) = &policy.exec {
            self.fill_path_rules("EXEC_RULES", &exec.rules)?;
        }
        if let Some(file) = &policy.file {
            self.fill_path_rules("FILE_READ_RULES", &file.read)?;
            self.fill_path_rules("FILE_WRITE_RULES", &file.write)?;
        }
        if policy.needs_lsm() {
            let mut inodes: HashMap<_, InodeKey, InodeRules> = HashMap::try_from(
                self.ebpf
                    .map_mut("DENIED_INODES")
                    .ok_or(EnforcerError::Missing("DENIED_INODES map"))?,
            )
            .map_err(map_err("open the denied-file map"))?;
            for (key, rules) in policy.denied_identities() {
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
                    .set(i as u32, rule.to_kernel(), 0)
                    .map_err(map_err(format!("insert network rule {i}")))?;
            }
        }
        // The configuration goes last: until it is there, confined actions fail closed.
        let mut config_map: Array<_, Config> = Array::try_from(
            self.ebpf
                .map_mut("CONFIG")
                .ok_or(EnforcerError::Missing("CONFIG map"))?,
        )
        .map_err(map_err("open the configuration map"))?;
        config_map
            .set(0, config, 0)
            .map_err(map_err("write the policy configuration"))?;
        Ok(())
    }

    fn fill_path_rules(&mut self, map: &'static str, rules: &[PathRule]) -> Result<()> {
        let mut trie: LpmTrie<_, PathKey, RuleValue> =
            LpmTrie::try_from(self.ebpf.map_mut(map).ok_or(EnforcerError::Missing(map))?)
                .map_err(map_err(format!("open the rule map {map}")))?;
        for rule in rules {
            let (bytes, bits) = rule.pattern.key();
            let mut data = PathKey {
                path: [0; PATH_KEY_LEN],
            };
            data.path[..bytes.len()].copy_from_slice(&bytes);
            let value = RuleValue {
                rule_id: rule.rule,
                action: rule.action.to_kernel(),
            };
            trie.insert(&Key::new(bits, data), value, 0)
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
    pub fn attach_lsm(&mut self) -> Result<()> {
        self.load_lsm()?;
        let active = describe_active_lsms();
        for i in 0..self.lsm_programs.len() {
            let (name, hook) = self.lsm_programs[i];
            self.lsm_program(name)?
                .attach()
                .map_err(|source| lsm_error(source, hook, &active))?;
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

    /// Marks `cgroup` as confined and attaches the cgroup programs to it.
    pub fn confine(&mut self, cgroup: &AgentCgroup) -> Result<()> {
        let mut confined: HashMap<_, u64, u32> = HashMap::try_from(
            self.ebpf
                .map_mut("CONFINED")
                .ok_or(EnforcerError::Missing("CONFINED map"))?,
        )
        .map_err(map_err("open the confined-cgroup map"))?;
        confined.insert(cgroup.id(), 1, 0).map_err(map_err(format!(
            "confine cgroup {}",
            cgroup.path().display()
        )))?;
        if self.enforces_network {
            self.load_cgroup_programs()?;
            let dir = cgroup.open_dir()?;
            for name in SOCK_ADDR_PROGRAMS {
                self.sock_addr_program(name)?
                    .attach(&dir, CgroupAttachMode::Single)
                    .map_err(prog_err(format!(
                        "attach the {name} program to {}",
                        cgroup.path().display()
                    )))?;
            }
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

    /// Decisions that could not be recorded because the ring buffer was full.
    pub fn lost_events(&self) -> Result<u64> {
        let counters: PerCpuArray<_, u64> = PerCpuArray::try_from(
            self.ebpf
                .map("COUNTERS")
                .ok_or(EnforcerError::Missing("COUNTERS map"))?,
        )
        .map_err(map_err("open the counters"))?;
        let values = counters
            .get(&counter::RINGBUF_LOST, 0)
            .map_err(map_err("read the lost-decision counter"))?;
        Ok(values.iter().sum())
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
