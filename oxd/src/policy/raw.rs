//! Stage 1: the policy file as written, as serde reads it (with spans for messages).

use serde::Deserialize;
use toml::Spanned;

use super::{budget::RawBudget, Action, Mode, Protocol};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub(super) name: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) mode: Mode,
    pub(super) exec: Option<RawPathSection>,
    pub(super) file: Option<RawFileSection>,
    pub(super) network: Option<RawNetSection>,
    pub(super) ipc: Option<RawIpcSection>,
    pub(super) process: Option<RawProcessSection>,
}

/// `[process]`: what confined tasks may do to their own view of the system.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProcessSection {
    /// `"deny"` (default) or `"allow"`: user namespaces, mounts, `pivot_root`, `chroot`.
    pub(super) namespaces: Option<Spanned<Action>>,
    /// The most tasks the agent may have at once (its cgroup's `pids.max`).
    pub(super) max_processes: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFileSection {
    /// `"allow"`, `"deny"`, or `{ read = ..., write = ... }`.
    pub(super) default: Option<Spanned<toml::Value>>,
    /// Each a path (read and write) or `{ path = ..., access = [...] }`.
    #[serde(default)]
    pub(super) allow: Vec<Spanned<toml::Value>>,
    #[serde(default)]
    pub(super) deny: Vec<Spanned<toml::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPathSection {
    pub(super) default: Option<Action>,
    #[serde(default)]
    pub(super) allow: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) deny: Vec<Spanned<String>>,
    /// `{ count = N, per = "1m" }`: at most N execs allowed per window.
    pub(super) budget: Option<Spanned<RawBudget>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNetSection {
    pub(super) default: Option<Action>,
    #[serde(default)]
    pub(super) allow: Vec<Spanned<RawNetRule>>,
    #[serde(default)]
    pub(super) deny: Vec<Spanned<RawNetRule>>,
    // sockets
    /// ICMP ping sockets: `"allow"` or `"deny"` (absent: the default decides).
    pub(super) icmp: Option<Spanned<Action>>,
    /// Raw sockets: `"allow"` or `"deny"` (absent: the default decides).
    pub(super) raw: Option<Spanned<Action>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNetRule {
    pub(super) cidr: Spanned<String>,
    pub(super) ports: Option<Spanned<RawPorts>>,
    #[serde(default)]
    pub(super) protocol: Protocol,
    /// `{ count = N, per = "1m" }`: at most N connects and sends the rule allows per window.
    pub(super) budget: Option<Spanned<RawBudget>>,
    /// Each connect or send the rule allows needs a grant for exactly it (`oxd ctl grant`).
    pub(super) requires_grant: Option<Spanned<bool>>,
    /// At most N sockets that reached the rule open at once.
    pub(super) max_connections: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawPorts {
    One(i64),
    Range(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIpcSection {
    /// Unix sockets outside the agent's confinement: `"allow"` or `"deny"` (the default).
    pub(super) unix: Option<Action>,
    /// Unix sockets outside the confinement that may be reached: socket paths (`/dir/**`
    /// subtrees) and abstract names (`@name`, `@prefix*`).
    #[serde(default)]
    pub(super) unix_allow: Vec<Spanned<String>>,
    /// Unix sockets outside the confinement that may not be reached.
    #[serde(default)]
    pub(super) unix_deny: Vec<Spanned<String>>,
}
