//! Agent policies: parse (TOML with spans) and validate.
//!
//! The stages are separate so that nothing reaches the kernel unless the whole file is valid:
//! [`Policy::load`] returns either a fully validated [`Policy`] or one [`PolicyError`] that
//! points at `file:line:col`. Stage 1 ([`raw`]) is the file as written; stage 2 ([`validate`])
//! parses every rule ([`path`], [`net`]), checks it against the kernel's limits, and numbers,
//! deduplicates and orders the rules. Turning a validated policy into the kernel's map contents
//! is [`crate::compile`]'s job.
//!
//! The format is documented in `policies/README.md`.

mod budget;
mod error;
mod net;
mod path;
mod raw;
mod unix;
mod validate;

use std::path::Path;

use serde::Deserialize;

pub use self::{
    budget::{Budget, MAX_BUDGET_WINDOW},
    error::{line_col, PolicyError},
    net::{parse_cidr, Protocol},
    path::{parse_path_pattern, PathPattern},
    unix::{parse_unix_pattern, UnixPattern, UnixSpecificity},
};

/// The JSON Schema (draft 2020-12) of policy files, derived from the types serde reads them
/// into: it accepts what the parser reads. What it cannot say (paths normalised, networks
/// valid, at most so many rules) the parser checks, with the line and column of the error.
pub fn schema() -> serde_json::Value {
    let mut schema = schemars::schema_for!(raw::RawPolicy).to_value();
    drop_null(&mut schema);
    if let Some(object) = schema.as_object_mut() {
        object.insert(
            "$id".to_owned(),
            "https://github.com/oxd/oxd/policies/oxd-policy.schema.json".into(),
        );
    }
    schema
}

/// Removes what the schema says about `null` (how serde sees an absent `Option`): TOML has no
/// null, an absent key is how a policy leaves something out. `"type": [T, "null"]` becomes
/// `"type": T`, and `"anyOf": [S, {"type": "null"}]` becomes S.
fn drop_null(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Object(object) => {
            if let Some(Value::Array(types)) = object.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let only = types.remove(0);
                    object.insert("type".to_owned(), only);
                }
            }
            let null = serde_json::json!({ "type": "null" });
            if let Some(Value::Array(any)) = object.get_mut("anyOf") {
                any.retain(|s| *s != null);
                if let [Value::Object(only)] = any.as_slice() {
                    let only = only.clone();
                    object.remove("anyOf");
                    for (key, v) in only {
                        object.entry(key).or_insert(v);
                    }
                }
            }
            object.values_mut().for_each(drop_null);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_null),
        _ => {}
    }
}

/// Allow or deny.
#[derive(
    Clone, Copy, Debug, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }
}

/// `enforce` (the default) denies what the policy denies; `audit` only records it.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Audit,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Audit => "audit",
        }
    }
}

/// Identity and text of one rule, as named in audit records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleInfo {
    /// e.g. `exec.allow[2]`.
    pub id: String,
    /// The rule as written, e.g. `/usr/bin/**`.
    pub text: String,
    pub action: Action,
}

/// A validated path rule (exec, file read or file write).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathRule {
    pub pattern: PathPattern,
    pub action: Action,
    /// Index into [`Policy::rules`].
    pub rule: u32,
}

/// A validated network rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkRule {
    /// IPv6 network (IPv4 rules as IPv4-mapped, prefix + 96).
    pub net: ipnet::Ipv6Net,
    pub ports: (u16, u16),
    pub protocol: Protocol,
    pub action: Action,
    /// Index into [`Policy::rules`].
    pub rule: u32,
    /// At most so many of the actions the rule allows per window (allow rules only).
    pub budget: Option<Budget>,
    /// Each action the rule allows needs a grant for exactly that action (allow rules only;
    /// not with a budget).
    pub requires_grant: bool,
    /// At most so many sockets that reached the rule open at once (allow rules only).
    pub max_connections: Option<u32>,
}

/// The exec category.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecPolicy {
    pub default: Action,
    /// At most one rule per pattern (deny kept where allow and deny name the same pattern).
    pub rules: Vec<PathRule>,
    /// `[exec] budget`: at most so many of the execs the rules allow per window.
    pub budget: Option<OperationBudget>,
}

/// A budget on every action of one kind (`[exec] budget`), named like a rule in records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OperationBudget {
    pub budget: Budget,
    /// Index into [`Policy::rules`] (`exec.budget`).
    pub rule: u32,
}

/// A file rule as written: a pattern and the accesses it governs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRule {
    pub pattern: PathPattern,
    pub read: bool,
    pub write: bool,
    pub action: Action,
    /// Index into [`Policy::rules`].
    pub rule: u32,
}

/// The file category: one rule set per access, as the kernel holds them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilePolicy {
    pub read_default: Action,
    pub write_default: Action,
    /// Rules governing opens for reading, at most one per pattern (deny kept on a tie).
    pub read: Vec<PathRule>,
    /// Rules governing opens for writing, at most one per pattern (deny kept on a tie).
    pub write: Vec<PathRule>,
}

/// The network category.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkPolicy {
    pub default: Action,
    /// Ordered from most to least specific, deny before allow among equals: the first match
    /// decides.
    pub rules: Vec<NetworkRule>,
    // sockets
    /// ICMP ping sockets: the `icmp` switch, or the default when it is absent.
    pub icmp: SocketSwitch,
    /// Raw sockets: the `raw` switch, or the default when it is absent.
    pub raw: SocketSwitch,
}

/// What a `[network]` socket switch (`icmp`, `raw`) decides: sockets that no address rule can
/// govern, allowed or denied as a whole when they are created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketSwitch {
    pub action: Action,
    /// The switch's index into [`Policy::rules`]; `None` when the policy does not set it and
    /// the network default decides.
    pub rule: Option<u32>,
}

/// Acting through other tasks, sockets and terminals. Tasks outside the agent's confinement
/// can never be ptraced or signalled, and terminal input injection is never allowed; only Unix
/// sockets outside the confinement have a setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpcPolicy {
    /// Connecting or sending to a Unix socket created outside the agent's confinement, when
    /// no rule of [`Self::unix_rules`] matches it: the default.
    pub unix: Action,
    /// `unix_allow` and `unix_deny`: at most one rule per pattern (deny kept on a tie).
    pub unix_rules: Vec<UnixRule>,
    /// Whether the policy has an `[ipc]` section (then it cannot be enforced without BPF-LSM;
    /// without one, every policy still governs ipc where BPF-LSM runs).
    pub written: bool,
}

/// A validated Unix socket rule (`[ipc] unix_allow` / `unix_deny`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnixRule {
    pub pattern: UnixPattern,
    pub action: Action,
    /// Index into [`Policy::rules`].
    pub rule: u32,
}

/// A validated policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    /// SHA-256 of the policy file, hex.
    pub sha256: String,
    pub mode: Mode,
    /// Absent when the policy has no `[exec]` section: execs are not decided at all.
    pub exec: Option<ExecPolicy>,
    /// Absent when the policy has no `[file]` section: opens are not decided at all.
    pub file: Option<FilePolicy>,
    /// Absent when the policy has no `[network]` section: connects are not decided at all.
    pub network: Option<NetworkPolicy>,
    /// Present in every policy (an agent confined at all may not act through others, nor ask
    /// a service outside, such as systemd, to start a process for it): acting on tasks,
    /// sockets and terminals outside the confinement is decided.
    pub ipc: Option<IpcPolicy>,
    /// Every rule, indexed by the ids the kernel reports.
    pub rules: Vec<RuleInfo>,
    /// `[process] namespaces`: present in every policy, the switch (default deny).
    pub namespaces: Option<NamespacePolicy>,
    /// `[process] max_processes`: the most tasks (processes and threads) the agent may have
    /// at once, enforced by its cgroup's `pids.max` (a fork or clone beyond it fails with
    /// `EAGAIN`).
    pub max_processes: Option<u32>,
}

/// The largest `max_processes`: the kernel's `PID_MAX_LIMIT` on 64-bit machines.
pub const MAX_PROCESSES: u32 = 4_194_304;

/// `[process] namespaces`: whether confined tasks may create user namespaces, mount, unmount,
/// move or pivot mounts, chroot, or enter existing namespaces. A namespace, a mount or a
/// chroot changes what a path names, and exec and file rules judge paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NamespacePolicy {
    pub action: Action,
    /// Index into [`Policy::rules`]: the switch is named `process.namespaces` in records.
    pub rule: u32,
}

impl Policy {
    /// Reads, parses and validates the policy at `path`.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates policy `text`; `path` is used in messages and as the default name.
    pub fn parse(path: &Path, text: &str) -> Result<Self, PolicyError> {
        let invalid = |span: std::ops::Range<usize>, message: String| PolicyError::Invalid {
            path: path.to_owned(),
            source_text: text.to_owned(),
            span,
            message,
        };
        let raw: raw::RawPolicy = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            invalid(span, e.message().trim_end().to_owned())
        })?;
        validate::Validator::default()
            .validate(path, text, raw)
            .map_err(|(span, message)| invalid(span, message))
    }

    /// Whether enforcing this policy needs BPF-LSM hooks.
    pub fn needs_lsm(&self) -> bool {
        self.exec.is_some() || self.file.is_some() || self.ipc.as_ref().is_some_and(|i| i.written)
    }

    /// The rule named by a kernel rule id.
    pub fn rule(&self, id: u32) -> Option<&RuleInfo> {
        self.rules.get(id as usize)
    }
}

#[cfg(test)]
mod tests;
