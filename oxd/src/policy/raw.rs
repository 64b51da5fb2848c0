//! Stage 1: the policy file as written, as serde reads it (with spans for messages). The JSON
//! Schema of policy files (`oxd schema`) is derived from these types, so it follows them: the
//! doc comments of the fields are its descriptions.

use schemars::JsonSchema;
use serde::Deserialize;
use toml::Spanned;

use super::{budget::RawBudget, Action, Mode, Protocol};

/// An oxd policy: what a confined agent may execute, open, reach on the network and do to the
/// system, decided in the kernel. See policies/README.md.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "oxd policy")]
pub(super) struct RawPolicy {
    /// The policy's name in audit records and `oxd ctl list` (default: the file's name).
    #[schemars(with = "Option<String>", length(min = 1))]
    pub(super) name: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) mode: Mode,
    /// Which programs may run (BPF-LSM `bprm_check_security`, and executable mappings).
    pub(super) exec: Option<RawPathSection>,
    /// Which files may be opened for reading and for writing, and changed.
    pub(super) file: Option<RawFileSection>,
    /// Which destinations connects and UDP sends may reach.
    pub(super) network: Option<RawNetSection>,
    /// Acting through someone else: Unix sockets outside the agent's confinement.
    pub(super) ipc: Option<RawIpcSection>,
    /// What confined tasks may do to their own view of the system.
    pub(super) process: Option<RawProcessSection>,
}

/// `[process]`: what confined tasks may do to their own view of the system.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProcessSection {
    /// `"deny"` (default) or `"allow"`: user namespaces, mounts, `pivot_root`, `chroot`.
    #[schemars(with = "Option<Action>")]
    pub(super) namespaces: Option<Spanned<Action>>,
    /// The most tasks the agent may have at once (its cgroup's `pids.max`).
    #[schemars(with = "Option<i64>", range(min = 1, max = 4_194_304))]
    pub(super) max_processes: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFileSection {
    /// `"allow"`, `"deny"`, or `{ read = ..., write = ... }` (default `"deny"`).
    #[schemars(with = "Option<FileDefaultSchema>")]
    pub(super) default: Option<Spanned<toml::Value>>,
    /// Each a path (read and write) or `{ path = ..., access = [...] }`.
    #[serde(default)]
    #[schemars(with = "Vec<FileRuleSchema>")]
    pub(super) allow: Vec<Spanned<toml::Value>>,
    /// As `allow`; on the same path, deny wins.
    #[serde(default)]
    #[schemars(with = "Vec<FileRuleSchema>")]
    pub(super) deny: Vec<Spanned<toml::Value>>,
}

// The schema of `[file]`'s values, which the validator reads from a `toml::Value` (to say
// exactly what is wrong with one): these types only describe them.

/// One action for reading and writing, or `{ read = ..., write = ... }`.
#[derive(JsonSchema)]
#[serde(untagged)]
#[expect(dead_code, reason = "describes the schema only")]
enum FileDefaultSchema {
    Both(Action),
    Split(FileDefaultSplit),
}

/// The default of each access.
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[expect(dead_code, reason = "describes the schema only")]
struct FileDefaultSplit {
    /// Opening for reading (default `"deny"`).
    read: Option<Action>,
    /// Opening for writing, and changes (default `"deny"`).
    write: Option<Action>,
}

/// A path (`/etc/passwd`) or subtree (`/workspace/**`) for reading and writing, or
/// `{ path = ..., access = [...] }`.
#[derive(JsonSchema)]
#[serde(untagged)]
#[expect(dead_code, reason = "describes the schema only")]
enum FileRuleSchema {
    Path(#[schemars(regex(pattern = "^/"))] String),
    Rule(FileRuleTable),
}

/// A file rule for some accesses.
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[expect(dead_code, reason = "describes the schema only")]
struct FileRuleTable {
    /// A path (`/etc/passwd`) or subtree (`/workspace/**`).
    #[schemars(regex(pattern = "^/"))]
    path: String,
    /// The accesses the rule governs (default both).
    access: Option<Vec<FileAccessSchema>>,
}

/// `read`: opening for reading; `write`: opening for writing, and changes.
#[derive(JsonSchema)]
#[serde(rename_all = "lowercase")]
#[expect(dead_code, reason = "describes the schema only")]
enum FileAccessSchema {
    Read,
    Write,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPathSection {
    /// What no rule names gets (default `"deny"`).
    pub(super) default: Option<Action>,
    /// Paths (`/usr/bin/git`) and subtrees (`/usr/lib/git-core/**`) that may run.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub(super) allow: Vec<Spanned<String>>,
    /// Paths and subtrees that may not run; on the same path, deny wins.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub(super) deny: Vec<Spanned<String>>,
    /// `{ count = N, per = "1m" }`: at most N execs allowed per window.
    #[schemars(with = "Option<RawBudget>")]
    pub(super) budget: Option<Spanned<RawBudget>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNetSection {
    /// What no rule names gets (default `"deny"`).
    pub(super) default: Option<Action>,
    /// Destinations connects and UDP sends may reach.
    #[serde(default)]
    #[schemars(with = "Vec<RawNetRule>")]
    pub(super) allow: Vec<Spanned<RawNetRule>>,
    /// Destinations they may not reach; the most specific rule wins, deny on a tie.
    #[serde(default)]
    #[schemars(with = "Vec<RawNetRule>")]
    pub(super) deny: Vec<Spanned<RawNetRule>>,
    // sockets
    /// ICMP ping sockets: `"allow"` or `"deny"` (absent: the default decides).
    #[schemars(with = "Option<Action>")]
    pub(super) icmp: Option<Spanned<Action>>,
    /// Raw sockets: `"allow"` or `"deny"` (absent: the default decides).
    #[schemars(with = "Option<Action>")]
    pub(super) raw: Option<Spanned<Action>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNetRule {
    /// A network (`10.0.0.0/8`, `2001:db8::/32`) or one address, IPv4 or IPv6.
    #[schemars(with = "String")]
    pub(super) cidr: Spanned<String>,
    /// A port (`443`) or an inclusive range as a string (`"8000-8999"`); absent: every port.
    #[schemars(with = "Option<RawPorts>")]
    pub(super) ports: Option<Spanned<RawPorts>>,
    #[serde(default)]
    pub(super) protocol: Protocol,
    /// `{ count = N, per = "1m" }`: at most N connects and sends the rule allows per window.
    #[schemars(with = "Option<RawBudget>")]
    pub(super) budget: Option<Spanned<RawBudget>>,
    /// Each connect or send the rule allows needs a grant for exactly it (`oxd ctl grant`).
    #[schemars(with = "Option<bool>")]
    pub(super) requires_grant: Option<Spanned<bool>>,
    /// At most N sockets that reached the rule open at once.
    #[schemars(with = "Option<i64>", range(min = 1, max = 65_536))]
    pub(super) max_connections: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub(super) enum RawPorts {
    One(#[schemars(range(min = 0, max = 65_535))] i64),
    Range(#[schemars(regex(pattern = r"^\s*\d+\s*-\s*\d+\s*$"))] String),
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIpcSection {
    /// Unix sockets outside the agent's confinement: `"allow"` or `"deny"` (the default).
    pub(super) unix: Option<Action>,
    /// Unix sockets outside the confinement that may be reached: socket paths (`/dir/**`
    /// subtrees) and abstract names (`@name`, `@prefix*`).
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub(super) unix_allow: Vec<Spanned<String>>,
    /// Unix sockets outside the confinement that may not be reached.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub(super) unix_deny: Vec<Spanned<String>>,
}
