//! Compile: a validated [`Policy`] becomes the contents of one policy slot in the kernel's maps.
//!
//! This is the one place that knows how a policy is encoded for the kernel programs: the
//! slot's [`Config`], the path-rule keys of the exec and file tries, the file identities named
//! by exact deny rules, and the network prefix trie. [`compile`] is pure: it touches neither the
//! kernel nor the file system. The file identities it needs come from the caller, normally
//! [`file_identity`]; [`crate::enforcer::Enforcer::write_slot`] then writes the [`SlotImage`]
//! as it is.

mod identity;
mod unix;

use std::path::Path;

use oxd_common::{
    action, governs, mode, proto, record, BudgetSpec, Config, InodeKey, InodeRules, NetEntry,
    NetKey, NetPrefix, PathKey, RuleValue, ANCESTOR_SLOT_BIT, MAX_NET_RULES, MAX_PATH_RULES,
    MAX_POLICY_SLOTS, NET_CHECK_GRANT, NET_LIST_LEN, NET_SLOT_PREFIX_BITS, PATH_KEY_LEN,
    RULE_DEFAULT, RULE_NONE, SLOT_PREFIX_BITS,
};
use sha2::{Digest, Sha256};

pub use self::{
    identity::{file_identity, FileId},
    unix::unix_key,
};
use crate::policy::{
    Action, Budget, Mode, NetworkRule, OperationBudget, PathPattern, PathRule, Policy, Protocol,
};

/// Why a policy cannot be compiled into a slot. A validated policy loaded into a free slot
/// never fails: these are the kernel's limits, checked again where the entries are made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error("policy slot {slot} does not exist: there are {MAX_POLICY_SLOTS} slots")]
    SlotOutOfRange { slot: u32 },
    #[error("generation 0 marks an empty slot: a policy's generation starts at 1")]
    GenerationZero,
    #[error("too many {category} rules ({count}): a policy slot holds at most {max}")]
    TooManyRules {
        category: &'static str,
        count: usize,
        max: u32,
    },
    #[error(
        "the {category} rule `{pattern}` needs a {len}-byte key: path-rule keys hold at most \
         {PATH_KEY_LEN} bytes"
    )]
    KeyTooLong {
        category: &'static str,
        pattern: String,
        len: usize,
    },
    #[error(
        "network {network}: a destination there can be decided by more than {NET_LIST_LEN} rules \
         (its own and those of the wider networks around it, once those that can never decide \
         are left out); {rule} does not fit: merge neighbouring port ranges or networks"
    )]
    NetListTooLong { network: String, rule: String },
}

/// The path-rule maps: one LPM trie per category.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathTable {
    Exec,
    FileRead,
    FileWrite,
}

impl PathTable {
    pub const ALL: [Self; 3] = [Self::Exec, Self::FileRead, Self::FileWrite];

    /// The category's name in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exec => "exec",
            Self::FileRead => "file read",
            Self::FileWrite => "file write",
        }
    }
}

/// One entry of a path-rule trie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathEntry {
    /// Prefix length in bits, the slot's [`SLOT_PREFIX_BITS`] included: an exact rule's path
    /// and its terminating NUL, or a subtree's directory up to its trailing `/`.
    pub prefix_len: u32,
    /// The slot, then the path bytes, NUL-padded.
    pub key: PathKey,
    pub value: RuleValue,
}

impl PathEntry {
    /// The key's path bytes inside the prefix (an exact rule's with its NUL).
    pub fn prefix(&self) -> &[u8] {
        let len = (self.prefix_len.saturating_sub(SLOT_PREFIX_BITS) / 8) as usize;
        &self.key.path[..len.min(PATH_KEY_LEN)]
    }

    /// The rule's pattern as written in a policy (`/bin/sh`, `/usr/bin/**`), for messages.
    pub fn pattern(&self) -> String {
        match self.prefix() {
            [path @ .., 0] => String::from_utf8_lossy(path).into_owned(),
            b"/" => "/**".to_owned(),
            dir => format!("{}**", String::from_utf8_lossy(dir)),
        }
    }
}

/// One entry of the denied-file map: the exact deny rules that name a file, by identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InodeEntry {
    pub key: InodeKey,
    pub rules: InodeRules,
}

/// One entry of the network prefix trie (`NET_PREFIXES`): a network that rules name, and the
/// list of every rule that can decide a destination whose longest matching rule network it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetPrefixEntry {
    /// Prefix length in bits, the slot's [`NET_SLOT_PREFIX_BITS`] included.
    pub prefix_len: u32,
    pub key: NetKey,
    pub value: NetPrefix,
}

impl NetPrefixEntry {
    /// The network, IPv4 ones as IPv4-mapped IPv6.
    pub fn network(&self) -> ipnet::Ipv6Net {
        let len = u8::try_from(self.prefix_len - NET_SLOT_PREFIX_BITS).unwrap_or(128);
        ipnet::Ipv6Net::new(self.key.addr.into(), len).unwrap_or_default()
    }

    /// The valid entries of the list, in order of precedence.
    pub fn entries(&self) -> &[NetEntry] {
        &self.value.entries[..(self.value.count as usize).min(NET_LIST_LEN)]
    }
}

/// A network whose list of rules that can decide there is longer than [`NET_LIST_LEN`]:
/// `rule` (an index into the rules given to [`net_prefix_lists`]) is the first that does not
/// fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetListOverflow {
    pub network: ipnet::Ipv6Net,
    pub rule: usize,
}

/// Everything the kernel's maps hold for one policy in one slot. Only [`compile`] makes one,
/// so every entry is within the kernel's limits and carries the image's slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotImage {
    slot: u32,
    config: Config,
    exec: Vec<PathEntry>,
    file_read: Vec<PathEntry>,
    file_write: Vec<PathEntry>,
    inodes: Vec<InodeEntry>,
    net: Vec<NetPrefixEntry>,
    /// The directories of subtree rules, per table (see [`Self::dir_paths`]).
    dirs: [Vec<PathEntry>; 3],
    /// The directories above deny rules (see [`Self::ancestor_paths`]).
    ancestors: Vec<PathEntry>,
    /// The `[ipc]` Unix socket rules (see [`Self::unix_paths`]).
    unix: Vec<PathEntry>,
    /// The budgets of the rules, in the order their entries name them (see
    /// [`Self::budgets`]).
    budgets: Vec<BudgetSpec>,
}

impl SlotImage {
    /// The slot every entry belongs to.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// The generation the policy is loaded as (never 0).
    pub fn generation(&self) -> u64 {
        self.config.generation
    }

    /// Element `slot` of the `CONFIG` array: written last, it makes the slot valid.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The entries of one path-rule trie.
    pub fn paths(&self, table: PathTable) -> &[PathEntry] {
        match table {
            PathTable::Exec => &self.exec,
            PathTable::FileRead => &self.file_read,
            PathTable::FileWrite => &self.file_write,
        }
    }

    /// The entries that make a subtree rule `DIR/**` cover `DIR` itself: an exact key for the
    /// directory (`DIR` and its NUL, as long as the subtree's key `DIR/`), with the subtree
    /// rule's value. None where an exact rule names the directory (it is the more specific), nor
    /// for `/**` (whose key `/` already matches `/`). They go into the same trie as
    /// [`Self::paths`], so a subtree rule takes two entries.
    pub fn dir_paths(&self, table: PathTable) -> &[PathEntry] {
        match table {
            PathTable::Exec => &self.dirs[0],
            PathTable::FileRead => &self.dirs[1],
            PathTable::FileWrite => &self.dirs[2],
        }
    }

    /// The directories above the paths that deny rules name (of every category), each with the
    /// first such rule: exact keys in the file write trie, in the slot's ancestor namespace
    /// (`slot | ANCESTOR_SLOT_BIT`). Renaming such a directory would move what the rule denies
    /// to a path it does not name, so it cannot be the source of a rename. `/` is not one (it
    /// cannot be renamed).
    pub fn ancestor_paths(&self) -> &[PathEntry] {
        &self.ancestors
    }

    /// The entries of the `UNIX_RULES` trie: the `[ipc]` Unix socket rules (with the exact
    /// keys that make a subtree rule cover its directory), see [`unix_key`].
    pub fn unix_paths(&self) -> &[PathEntry] {
        &self.unix
    }

    /// The denied-file entries, one per file.
    pub fn inodes(&self) -> &[InodeEntry] {
        &self.inodes
    }

    /// The network prefix trie's entries, one per network the rules name.
    pub fn net(&self) -> &[NetPrefixEntry] {
        &self.net
    }

    /// The slot's budgets: element `i` is `BUDGET_SPECS[slot * MAX_BUDGETS + i]`, named by
    /// rule entries as `budget = i + 1`.
    pub fn budgets(&self) -> &[BudgetSpec] {
        &self.budgets
    }

    /// The exact deny rules that name file `id` (what the kernel finds in `DENIED_INODES`).
    pub fn denied(&self, id: FileId) -> Option<InodeRules> {
        let key = id.key(self.slot);
        self.inodes
            .iter()
            .find_map(|entry| (entry.key == key).then_some(entry.rules))
    }
}

/// Compiles `policy` into the contents of `slot` as `generation`. `identity` tells the identity
/// of the file at a path (or `None` if there is none): [`file_identity`] for the real one.
///
/// # Errors
///
/// [`CompileError`] if the slot does not exist, the generation is 0, or the policy does not fit
/// a slot's share of the maps (a [`Policy`] from [`Policy::parse`] always fits).
pub fn compile(
    policy: &Policy,
    slot: u32,
    generation: u64,
    identity: &dyn Fn(&Path) -> Option<FileId>,
) -> Result<SlotImage, CompileError> {
    let key_slot = u16::try_from(slot)
        .ok()
        .filter(|_| slot < MAX_POLICY_SLOTS)
        .ok_or(CompileError::SlotOutOfRange { slot })?;
    if generation == 0 {
        return Err(CompileError::GenerationZero);
    }
    let no_rules: &[PathRule] = &[];
    let exec_rules = policy.exec.as_ref().map_or(no_rules, |e| &e.rules);
    let (read_rules, write_rules) = policy
        .file
        .as_ref()
        .map_or((no_rules, no_rules), |f| (&f.read, &f.write));
    let net_rules = policy.network.as_ref().map_or(&[][..], |n| &n.rules);
    // Every limit is checked before `identity` is asked anything.
    let config = config(policy, generation)?;
    let exec = path_entries(PathTable::Exec, key_slot, exec_rules)?;
    let file_read = path_entries(PathTable::FileRead, key_slot, read_rules)?;
    let file_write = path_entries(PathTable::FileWrite, key_slot, write_rules)?;
    let budgets = budget_specs(policy);
    let net = net_entries(slot, net_rules, policy)?;
    let unix = unix::unix_entries(
        key_slot,
        policy.ipc.as_ref().map_or(&[][..], |i| &i.unix_rules),
    )?;
    let ancestors = ancestor_entries(key_slot, &[exec_rules, read_rules, write_rules]);
    let dirs = [
        dir_entries(key_slot, exec_rules),
        dir_entries(key_slot, read_rules),
        dir_entries(key_slot, write_rules),
    ];
    let inodes = denied_files(policy, identity)
        .into_iter()
        .map(|(id, rules)| InodeEntry {
            key: id.key(slot),
            rules,
        })
        .collect();
    Ok(SlotImage {
        slot,
        config,
        exec,
        file_read,
        file_write,
        inodes,
        net,
        dirs,
        ancestors,
        unix,
        budgets,
    })
}

/// The stable identity of a network rule's budget: a hash of the rule (network, ports,
/// protocol) and of the budget, so the same rule with the same budget in a replacement policy
/// counts on the same counter, and a changed one starts afresh. Never 0 (an unused element).
pub fn net_budget_id(rule: &NetworkRule, budget: Budget) -> u64 {
    counter_id(&format!(
        "network allow {} {}-{} {} budget {} per {}ms",
        rule.net,
        rule.ports.0,
        rule.ports.1,
        rule.protocol.as_str(),
        budget.count,
        budget.per_ms
    ))
}

/// A counter's id: the first 8 bytes of the SHA-256 of what identifies it, never 0.
fn counter_id(text: &str) -> u64 {
    let digest = Sha256::digest(text.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(bytes).max(1)
}

/// The stable identity of a network rule's connection limit: a hash of the rule (network,
/// ports, protocol) alone, so a replacement that keeps the rule keeps counting the sockets
/// open on it whatever its new limit (they are still open). Never 0 (an unused element).
pub fn net_connections_id(rule: &NetworkRule) -> u64 {
    counter_id(&format!(
        "network allow {} {}-{} {} connections",
        rule.net,
        rule.ports.0,
        rule.ports.1,
        rule.protocol.as_str(),
    ))
}

/// The ids of every budget and connection limit of `policy` (the counters a target keeps when
/// it takes this policy).
pub fn budget_ids(policy: &Policy) -> Vec<u64> {
    budgets_by_rule(policy)
        .into_iter()
        .map(|(_, id, _)| id)
        .chain(
            connection_limits_by_rule(policy)
                .into_iter()
                .map(|(_, id, _)| id),
        )
        .collect()
}

/// Every connection limit of `policy`: the rule that has it, its id and the limit, in rule
/// order.
pub fn connection_limits_by_rule(policy: &Policy) -> Vec<(u32, u64, u32)> {
    policy
        .network
        .as_ref()
        .map_or(&[][..], |n| &n.rules)
        .iter()
        .filter_map(|rule| {
            let max = rule.max_connections?;
            Some((rule.rule, net_connections_id(rule), max))
        })
        .collect()
}

/// Every budget of `policy`: the rule that has it, its id and the budget; the network rules'
/// in rule order, then the operation budgets.
pub fn budgets_by_rule(policy: &Policy) -> Vec<(u32, u64, Budget)> {
    policy
        .network
        .as_ref()
        .map_or(&[][..], |n| &n.rules)
        .iter()
        .filter_map(|rule| {
            let budget = rule.budget?;
            Some((rule.rule, net_budget_id(rule, budget), budget))
        })
        .chain(exec_budget(policy).map(|b| (b.rule, exec_budget_id(b.budget), b.budget)))
        .collect()
}

/// The `[exec] budget`, if the policy has one.
fn exec_budget(policy: &Policy) -> Option<OperationBudget> {
    policy.exec.as_ref().and_then(|e| e.budget)
}

/// The stable identity of the `[exec] budget`: a replacement that keeps it keeps its count.
pub fn exec_budget_id(budget: Budget) -> u64 {
    counter_id(&format!(
        "exec budget {} per {}ms",
        budget.count, budget.per_ms
    ))
}

/// The budgets and connection limits of the network rules, in rule order (a rule's budget
/// before its limit): an entry names the `i`th as `i + 1` (see [`net_checks`]); then the
/// `[exec] budget` (`Config::exec_budget`).
fn budget_specs(policy: &Policy) -> Vec<BudgetSpec> {
    let rules = policy.network.as_ref().map_or(&[][..], |n| &n.rules);
    let exec = exec_budget(policy).map(|b| BudgetSpec {
        id: exec_budget_id(b.budget),
        count: b.budget.count,
        per_ms: b.budget.per_ms,
    });
    rules
        .iter()
        .flat_map(|rule| {
            let budget = rule.budget.map(|budget| BudgetSpec {
                id: net_budget_id(rule, budget),
                count: budget.count,
                per_ms: budget.per_ms,
            });
            let limit = rule.max_connections.map(|max| BudgetSpec {
                id: net_connections_id(rule),
                count: max,
                per_ms: 0,
            });
            budget.into_iter().chain(limit)
        })
        .chain(exec)
        .collect()
}

/// What each rule's entries ask beyond its action, by rule position: [`NetEntry::check`]
/// ([`NET_CHECK_GRANT`] if it requires a grant, 1 + its budget's index in [`budget_specs`] if
/// it has one, else 0) and [`NetEntry::limit`] (1 + its connection limit's index there, or 0).
/// Made once per policy: a wide rule is in many prefixes' lists.
fn net_checks(rules: &[NetworkRule]) -> Vec<(u16, u16)> {
    let mut specs = 0usize;
    // Past `MAX_BUDGETS` (validation refuses it) the kernel denies: never "none".
    let mut next = || {
        specs += 1;
        u16::try_from(specs).unwrap_or(u16::MAX)
    };
    rules
        .iter()
        .map(|rule| {
            // Numbered as `budget_specs` lists them, whatever else the rule asks.
            let budget = rule.budget.map_or(0, |_| next());
            let limit = rule.max_connections.map_or(0, |_| next());
            let check = if rule.requires_grant {
                NET_CHECK_GRANT
            } else {
                budget
            };
            (check, limit)
        })
        .collect()
}

/// The directories strictly above each path a deny rule names, in rule order (exec, read,
/// write), each with the first rule below it; `/` excluded.
pub fn protected_ancestors(rules: &[&[PathRule]]) -> Vec<(String, u32)> {
    let mut out: Vec<(String, u32)> = Vec::new();
    for rule in rules
        .iter()
        .flat_map(|r| r.iter())
        .filter(|r| r.action == Action::Deny)
    {
        let named = match &rule.pattern {
            PathPattern::Exact(path) => path.as_str(),
            PathPattern::Subtree(dir) => dir.trim_end_matches('/'),
        };
        let mut end = named.len();
        while let Some(slash) = named[..end].rfind('/') {
            if slash == 0 {
                break;
            }
            let dir = &named[..slash];
            if !out.iter().any(|(known, _)| known == dir) {
                out.push((dir.to_owned(), rule.rule));
            }
            end = slash;
        }
    }
    out
}

fn ancestor_entries(slot: u16, rules: &[&[PathRule]]) -> Vec<PathEntry> {
    protected_ancestors(rules)
        .into_iter()
        .filter_map(|(dir, rule_id)| {
            let (bytes, bits) = pattern_key(&PathPattern::Exact(dir));
            if bytes.len() > PATH_KEY_LEN {
                return None;
            }
            let mut key = PathKey {
                slot: slot | ANCESTOR_SLOT_BIT,
                path: [0; PATH_KEY_LEN],
            };
            key.path[..bytes.len()].copy_from_slice(&bytes);
            Some(PathEntry {
                prefix_len: SLOT_PREFIX_BITS + bits,
                key,
                value: RuleValue {
                    rule_id,
                    action: action::DENY,
                },
            })
        })
        .collect()
}

/// The exact keys that make each subtree rule `DIR/**` cover `DIR` itself (see
/// [`SlotImage::dir_paths`]). Called on rules that [`path_entries`] accepted, so every key fits.
fn dir_entries(slot: u16, rules: &[PathRule]) -> Vec<PathEntry> {
    rules
        .iter()
        .filter_map(|rule| {
            let PathPattern::Subtree(dir) = &rule.pattern else {
                return None;
            };
            let dir = dir.strip_suffix('/').filter(|d| !d.is_empty())?;
            let named_exactly = rules
                .iter()
                .any(|r| matches!(&r.pattern, PathPattern::Exact(p) if p == dir));
            if named_exactly {
                return None;
            }
            let (bytes, bits) = pattern_key(&PathPattern::Exact(dir.to_owned()));
            let mut key = PathKey {
                slot,
                path: [0; PATH_KEY_LEN],
            };
            key.path[..bytes.len()].copy_from_slice(&bytes);
            Some(PathEntry {
                prefix_len: SLOT_PREFIX_BITS + bits,
                key,
                value: RuleValue {
                    rule_id: rule.rule,
                    action: action_bits(rule.action),
                },
            })
        })
        .collect()
}

/// The files named by exact deny rules, by identity, with the first such rule per category
/// (exec, read, write), in the order the rules first name them: every other name of such a
/// file (a hard link) is denied by the same rule. Allow rules and subtree rules name no
/// identity; files that do not exist (`identity` says `None`) are matched by path only.
pub fn denied_files(
    policy: &Policy,
    identity: &dyn Fn(&Path) -> Option<FileId>,
) -> Vec<(FileId, InodeRules)> {
    let mut out: Vec<(FileId, InodeRules)> = Vec::new();
    let none = InodeRules {
        exec: RULE_NONE,
        read: RULE_NONE,
        write: RULE_NONE,
        _pad: 0,
    };
    let mut add = |rules: &[PathRule], field: fn(&mut InodeRules) -> &mut u32| {
        for rule in rules.iter().filter(|r| r.action == Action::Deny) {
            let PathPattern::Exact(path) = &rule.pattern else {
                continue;
            };
            let Some(id) = identity(Path::new(path)) else {
                continue;
            };
            let index = out
                .iter()
                .position(|(known, _)| *known == id)
                .unwrap_or_else(|| {
                    out.push((id, none));
                    out.len() - 1
                });
            let slot = field(&mut out[index].1);
            if *slot == RULE_NONE {
                *slot = rule.rule;
            }
        }
    };
    if let Some(exec) = &policy.exec {
        add(&exec.rules, |r| &mut r.exec);
    }
    if let Some(file) = &policy.file {
        add(&file.read, |r| &mut r.read);
        add(&file.write, |r| &mut r.write);
    }
    out
}

/// The slot's settings: which categories it governs, its mode and defaults. An ungoverned
/// category's default is allow (never consulted: the kernel skips ungoverned categories).
fn config(policy: &Policy, generation: u64) -> Result<Config, CompileError> {
    // Every policy guards oxd and the kernel against its agent.
    let mut governed = governs::GUARD;
    if policy.exec.is_some() {
        governed |= governs::EXEC;
    }
    if policy.file.is_some() {
        governed |= governs::FILE;
    }
    if policy.network.is_some() {
        governed |= governs::NETWORK;
    }
    if policy.namespaces.is_some() {
        governed |= governs::PROCESS;
    }
    if policy.ipc.is_some() {
        governed |= governs::IPC;
    }
    let net_rules = policy.network.as_ref().map_or(0, |n| n.rules.len());
    Ok(Config {
        generation,
        governs: governed,
        mode: mode_bits(policy.mode),
        exec_default: action_bits(policy.exec.as_ref().map_or(Action::Allow, |e| e.default)),
        net_default: action_bits(policy.network.as_ref().map_or(Action::Allow, |n| n.default)),
        net_rule_count: check_count("network", net_rules, MAX_NET_RULES)?,
        file_read_default: action_bits(
            policy
                .file
                .as_ref()
                .map_or(Action::Allow, |f| f.read_default),
        ),
        file_write_default: action_bits(
            policy
                .file
                .as_ref()
                .map_or(Action::Allow, |f| f.write_default),
        ),
        record: record::ALL,
        // sockets
        net_icmp: action_bits(
            policy
                .network
                .as_ref()
                .map_or(Action::Allow, |n| n.icmp.action),
        ),
        net_icmp_rule: switch_rule(policy.network.as_ref().and_then(|n| n.icmp.rule)),
        net_raw: action_bits(
            policy
                .network
                .as_ref()
                .map_or(Action::Allow, |n| n.raw.action),
        ),
        net_raw_rule: switch_rule(policy.network.as_ref().and_then(|n| n.raw.rule)),
        namespaces: action_bits(policy.namespaces.map_or(Action::Allow, |n| n.action)),
        namespaces_rule: policy.namespaces.map_or(RULE_DEFAULT, |n| n.rule),
        ipc_unix_default: action_bits(policy.ipc.as_ref().map_or(Action::Allow, |i| i.unix)),
        record_rate: 0,
        // The operation budgets follow the network rules' in `budget_specs`.
        exec_budget: exec_budget(policy).map_or(0, |_| {
            u32::try_from(budget_specs(policy).len()).unwrap_or(u32::MAX)
        }),
        exec_budget_rule: exec_budget(policy).map_or(RULE_DEFAULT, |b| b.rule),
    })
}

/// The rule id a socket switch is reported as: its own, or [`RULE_DEFAULT`] when the policy
/// leaves it to the network default.
fn switch_rule(rule: Option<u32>) -> u32 {
    rule.unwrap_or(RULE_DEFAULT)
}

fn check_count(category: &'static str, count: usize, max: u32) -> Result<u32, CompileError> {
    u32::try_from(count)
        .ok()
        .filter(|&n| n <= max)
        .ok_or(CompileError::TooManyRules {
            category,
            count,
            max,
        })
}

/// The LPM key bytes of a pattern and its prefix length in bits, without the slot: an exact
/// path with its terminating NUL (so `/bin/sh` never matches `/bin/shred`), a subtree's
/// directory up to and including its trailing `/`.
fn pattern_key(pattern: &PathPattern) -> (Vec<u8>, u32) {
    let bytes = match pattern {
        PathPattern::Exact(path) => {
            let mut bytes = path.as_bytes().to_vec();
            bytes.push(0);
            bytes
        }
        PathPattern::Subtree(dir) => dir.as_bytes().to_vec(),
    };
    let bits = u32::try_from(bytes.len()).map_or(u32::MAX, |len| len.saturating_mul(8));
    (bytes, bits)
}

fn path_entries(
    table: PathTable,
    slot: u16,
    rules: &[PathRule],
) -> Result<Vec<PathEntry>, CompileError> {
    check_count(table.as_str(), rules.len(), MAX_PATH_RULES)?;
    rules
        .iter()
        .map(|rule| {
            let (bytes, bits) = pattern_key(&rule.pattern);
            if bytes.len() > PATH_KEY_LEN {
                return Err(CompileError::KeyTooLong {
                    category: table.as_str(),
                    pattern: rule.pattern.to_string(),
                    len: bytes.len(),
                });
            }
            let mut key = PathKey {
                slot,
                path: [0; PATH_KEY_LEN],
            };
            key.path[..bytes.len()].copy_from_slice(&bytes);
            Ok(PathEntry {
                prefix_len: SLOT_PREFIX_BITS + bits,
                key,
                value: RuleValue {
                    rule_id: rule.rule,
                    action: action_bits(rule.action),
                },
            })
        })
        .collect()
}

/// For each network the rules name, the positions (into `rules`, which are in order of
/// precedence: most specific first, deny first among equals) of every rule that can decide a
/// destination whose longest matching rule network it is: the rules of that network and of
/// every wider one around it (a destination inside a network is inside every network around
/// it, and in no other network the rules name that is not inside it), in order of precedence.
/// A rule is left out where an earlier one in the list covers all its ports and protocols: it
/// could never be the first match there. The first entry of a destination's list that matches
/// its port and protocol is then the first rule of all `rules` that matches it.
///
/// # Errors
///
/// [`NetListOverflow`] when a list would hold more than [`NET_LIST_LEN`] rules.
pub fn net_prefix_lists(
    rules: &[NetworkRule],
) -> Result<Vec<(ipnet::Ipv6Net, Vec<usize>)>, NetListOverflow> {
    use std::collections::{BTreeMap, HashMap};
    // Positions of each network's own rules, in order; networks in a stable order.
    let mut own: BTreeMap<ipnet::Ipv6Net, Vec<usize>> = BTreeMap::new();
    for (position, rule) in rules.iter().enumerate() {
        own.entry(rule.net).or_default().push(position);
    }
    let lookup: HashMap<ipnet::Ipv6Net, &Vec<usize>> = own.iter().map(|(n, v)| (*n, v)).collect();
    // Only the prefix lengths some rule has can hold a wider rule network: a few, not 129
    // (which made compiling 10,000 rules a million lookups).
    let lengths: std::collections::BTreeSet<u8> =
        own.keys().map(ipnet::Ipv6Net::prefix_len).collect();
    let mut out = Vec::with_capacity(own.len());
    for &network in own.keys() {
        let mut positions: Vec<usize> = Vec::new();
        for &len in lengths.range(..=network.prefix_len()) {
            let wider = ipnet::Ipv6Net::new(network.network(), len).map_or(network, |n| n.trunc());
            if let Some(found) = lookup.get(&wider) {
                positions.extend(found.iter().copied());
            }
        }
        positions.sort_unstable();
        let mut kept: Vec<usize> = Vec::new();
        for position in positions {
            let rule = &rules[position];
            let covered = kept.iter().any(|&k| {
                let earlier = &rules[k];
                earlier.ports.0 <= rule.ports.0
                    && rule.ports.1 <= earlier.ports.1
                    && protocol_bits(earlier.protocol) & protocol_bits(rule.protocol)
                        == protocol_bits(rule.protocol)
            });
            if covered {
                continue;
            }
            if kept.len() == NET_LIST_LEN {
                return Err(NetListOverflow {
                    network,
                    rule: position,
                });
            }
            kept.push(position);
        }
        out.push((network, kept));
    }
    Ok(out)
}

/// A network in messages, as written in a policy: IPv4-mapped ones as IPv4.
pub fn network_text(network: ipnet::Ipv6Net) -> String {
    match network.network().to_ipv4_mapped() {
        Some(v4) if network.prefix_len() >= 96 => format!("{v4}/{}", network.prefix_len() - 96),
        _ => network.to_string(),
    }
}

fn net_entries(
    slot: u32,
    rules: &[NetworkRule],
    policy: &Policy,
) -> Result<Vec<NetPrefixEntry>, CompileError> {
    check_count("network", rules.len(), MAX_NET_RULES)?;
    let lists = net_prefix_lists(rules).map_err(|overflow| {
        let rule = &rules[overflow.rule];
        let rule = policy.rules.get(rule.rule as usize).map_or_else(
            || format!("rule {}", rule.rule),
            |info| format!("{} ({})", info.id, info.text),
        );
        CompileError::NetListTooLong {
            network: network_text(overflow.network),
            rule,
        }
    })?;
    let checks = net_checks(rules);
    Ok(lists
        .into_iter()
        .map(|(network, positions)| {
            let mut value = NetPrefix {
                count: u32::try_from(positions.len()).unwrap_or(0),
                _pad: 0,
                entries: [NetEntry::default(); NET_LIST_LEN],
            };
            for (slot_entry, &position) in value.entries.iter_mut().zip(&positions) {
                let rule = &rules[position];
                *slot_entry = NetEntry {
                    port_lo: rule.ports.0,
                    port_hi: rule.ports.1,
                    proto: u8::try_from(protocol_bits(rule.protocol)).unwrap_or(u8::MAX),
                    action: u8::try_from(action_bits(rule.action)).unwrap_or(u8::MAX),
                    check: checks[position].0,
                    rule_id: rule.rule,
                    limit: checks[position].1,
                    _pad: 0,
                };
            }
            NetPrefixEntry {
                prefix_len: NET_SLOT_PREFIX_BITS + u32::from(network.prefix_len()),
                key: NetKey {
                    slot,
                    addr: network.network().octets(),
                },
                value,
            }
        })
        .collect())
}

fn action_bits(action: Action) -> u32 {
    match action {
        Action::Allow => action::ALLOW,
        Action::Deny => action::DENY,
    }
}

fn mode_bits(mode: Mode) -> u32 {
    match mode {
        Mode::Enforce => mode::ENFORCE,
        Mode::Audit => mode::AUDIT,
    }
}

fn protocol_bits(protocol: Protocol) -> u32 {
    match protocol {
        Protocol::Tcp => proto::TCP,
        Protocol::Udp => proto::UDP,
        Protocol::Any => proto::ANY,
    }
}

#[cfg(test)]
mod tests;
