//! Agent policies: parse (TOML with spans), validate, and compile into the kernel's map contents.
//!
//! The stages are separate so that nothing reaches the kernel unless the whole file is valid:
//! [`Policy::load`] returns either a fully compiled [`Policy`] or one [`PolicyError`] that points
//! at `file:line:col`.
//!
//! The format is documented in `policies/README.md`.

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr},
    ops::Range,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use oxd_common::{action, mode, proto, NetRule, MAX_NET_RULES, MAX_PATH_RULES, MAX_RULE_PATH_LEN};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::Spanned;

/// A policy error, located in the policy file.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{path}: cannot read the policy")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", render_located(path, source_text, span, message))]
    Invalid {
        path: PathBuf,
        source_text: String,
        span: Range<usize>,
        message: String,
    },
}

fn render_located(path: &Path, text: &str, span: &Range<usize>, message: &str) -> String {
    let (line, col) = line_col(text, span.start);
    let mut out = format!("{}:{line}:{col}: {message}", path.display());
    if let Some(source_line) = text.lines().nth(line - 1) {
        let width = text[span.clone()]
            .lines()
            .next()
            .map_or(1, |l| l.chars().count().max(1));
        let width = width.min(source_line.chars().count().saturating_sub(col - 1).max(1));
        out.push_str(&format!(
            "\n{line:>5} | {source_line}\n      | {}{}",
            " ".repeat(col - 1),
            "^".repeat(width)
        ));
    }
    out
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = text[line_start..offset].chars().count() + 1;
    (line, col)
}

/// Allow or deny.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
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

    pub fn to_kernel(self) -> u32 {
        match self {
            Self::Allow => action::ALLOW,
            Self::Deny => action::DENY,
        }
    }
}

/// Enforce or only record.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
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

    pub fn to_kernel(self) -> u32 {
        match self {
            Self::Enforce => mode::ENFORCE,
            Self::Audit => mode::AUDIT,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Stage 1: the file as written.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: Option<Spanned<String>>,
    #[serde(default)]
    mode: Mode,
    exec: Option<RawPathSection>,
    file: Option<RawFileSection>,
    network: Option<RawNetSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFileSection {
    /// `"allow"`, `"deny"`, or `{ read = ..., write = ... }`.
    default: Option<Spanned<toml::Value>>,
    /// Each a path (read and write) or `{ path = ..., access = [...] }`.
    #[serde(default)]
    allow: Vec<Spanned<toml::Value>>,
    #[serde(default)]
    deny: Vec<Spanned<toml::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPathSection {
    default: Option<Action>,
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    #[serde(default)]
    deny: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetSection {
    default: Option<Action>,
    #[serde(default)]
    allow: Vec<Spanned<RawNetRule>>,
    #[serde(default)]
    deny: Vec<Spanned<RawNetRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetRule {
    cidr: Spanned<String>,
    ports: Option<Spanned<RawPorts>>,
    #[serde(default)]
    protocol: Protocol,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawPorts {
    One(i64),
    Range(String),
}

/// Transport protocols a network rule applies to.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    #[default]
    Any,
}

impl Protocol {
    fn bits(self) -> u32 {
        match self {
            Self::Tcp => proto::TCP,
            Self::Udp => proto::UDP,
            Self::Any => proto::ANY,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Any => "any",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Stage 2: validated rules.

/// A path pattern: one file, or a directory and everything below it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathPattern {
    /// Exactly this path.
    Exact(String),
    /// This directory (given with its trailing `/`) and everything below it.
    Subtree(String),
}

impl PathPattern {
    /// The LPM key bytes and the prefix length in bits.
    pub fn key(&self) -> (Vec<u8>, u32) {
        match self {
            Self::Exact(p) => {
                let mut bytes = p.as_bytes().to_vec();
                bytes.push(0);
                let bits = bytes.len() as u32 * 8;
                (bytes, bits)
            }
            Self::Subtree(dir) => {
                let bytes = dir.as_bytes().to_vec();
                let bits = bytes.len() as u32 * 8;
                (bytes, bits)
            }
        }
    }

    /// Whether `path` (absolute, normalised) is matched, for the reference semantics.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(p) => p == path,
            Self::Subtree(dir) => path.starts_with(dir.as_str()),
        }
    }

    /// Specificity: the number of key bytes. Longer is more specific.
    pub fn specificity(&self) -> usize {
        self.key().0.len()
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(p) => f.write_str(p),
            Self::Subtree(dir) if dir == "/" => f.write_str("/**"),
            Self::Subtree(dir) => write!(f, "{dir}**"),
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

/// A compiled exec rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathRule {
    pub pattern: PathPattern,
    pub action: Action,
    /// Index into [`Policy::rules`].
    pub rule: u32,
}

/// A compiled network rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkRule {
    /// IPv6 network (IPv4 rules as IPv4-mapped, prefix + 96).
    pub net: ipnet::Ipv6Net,
    pub ports: (u16, u16),
    pub protocol: Protocol,
    pub action: Action,
    /// Index into [`Policy::rules`].
    pub rule: u32,
}

impl NetworkRule {
    pub fn to_kernel(&self) -> NetRule {
        NetRule {
            addr: self.net.network().octets(),
            mask: self.net.netmask().octets(),
            port_lo: self.ports.0,
            port_hi: self.ports.1,
            proto: self.protocol.bits(),
            action: self.action.to_kernel(),
            rule_id: self.rule,
        }
    }
}

/// The exec category.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecPolicy {
    pub default: Action,
    /// At most one rule per pattern (deny kept where allow and deny name the same pattern).
    pub rules: Vec<PathRule>,
}

/// A compiled file rule.
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
}

/// A validated, compiled policy.
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
    /// Every rule, indexed by the ids the kernel reports.
    pub rules: Vec<RuleInfo>,
}

impl Policy {
    /// Reads, parses, validates and compiles the policy at `path`.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses, validates and compiles policy `text`; `path` is used in messages and as the
    /// default name.
    pub fn parse(path: &Path, text: &str) -> Result<Self, PolicyError> {
        let invalid = |span: Range<usize>, message: String| PolicyError::Invalid {
            path: path.to_owned(),
            source_text: text.to_owned(),
            span,
            message,
        };
        let raw: RawPolicy = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            invalid(span, e.message().trim_end().to_owned())
        })?;
        Compiler::default()
            .compile(path, text, raw)
            .map_err(|(span, message)| invalid(span, message))
    }

    /// Whether enforcing this policy needs BPF-LSM hooks.
    pub fn needs_lsm(&self) -> bool {
        self.exec.is_some() || self.file.is_some()
    }

    /// The rule named by a kernel rule id.
    pub fn rule(&self, id: u32) -> Option<&RuleInfo> {
        self.rules.get(id as usize)
    }
}

type CompileResult<T> = Result<T, (Range<usize>, String)>;

#[derive(Default)]
struct Compiler {
    rules: Vec<RuleInfo>,
}

impl Compiler {
    fn compile(mut self, path: &Path, text: &str, raw: RawPolicy) -> CompileResult<Policy> {
        let name = match raw.name {
            Some(name) => {
                let span = name.span();
                let name = name.into_inner();
                if name.is_empty() || name.chars().any(|c| c.is_control()) {
                    return Err((
                        span,
                        "a policy name must be non-empty printable text".into(),
                    ));
                }
                name
            }
            None => path
                .file_stem()
                .map_or_else(|| "policy".to_owned(), |s| s.to_string_lossy().into_owned()),
        };
        let exec = raw.exec.map(|section| self.exec(section)).transpose()?;
        let file = raw.file.map(|section| self.file(section)).transpose()?;
        let network = raw
            .network
            .map(|section| self.network(section))
            .transpose()?;
        let sha256 = Sha256::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Policy {
            name,
            sha256,
            mode: raw.mode,
            exec,
            file,
            network,
            rules: self.rules,
        })
    }

    fn add_rule(&mut self, id: String, text: String, action: Action) -> u32 {
        self.rules.push(RuleInfo { id, text, action });
        (self.rules.len() - 1) as u32
    }

    fn exec(&mut self, section: RawPathSection) -> CompileResult<ExecPolicy> {
        let mut rules: Vec<PathRule> = Vec::new();
        let total = section.allow.len() + section.deny.len();
        // Deny rules first, so that on a pattern named by both lists the deny rule is the one
        // kept: on equal specificity deny wins.
        for (list, action) in [(section.deny, Action::Deny), (section.allow, Action::Allow)] {
            for (index, entry) in list.into_iter().enumerate() {
                let span = entry.span();
                if total > MAX_PATH_RULES as usize {
                    let hint = "use a directory rule (`/dir/**`) to cover many files";
                    return Err((span, too_many("exec", total, MAX_PATH_RULES, hint)));
                }
                let pattern = parse_path_pattern(entry.get_ref()).map_err(|m| (span.clone(), m))?;
                if rules.iter().any(|r| r.pattern == pattern) {
                    continue;
                }
                let id = format!("exec.{}[{index}]", action.as_str());
                let rule = self.add_rule(id, pattern.to_string(), action);
                rules.push(PathRule {
                    pattern,
                    action,
                    rule,
                });
            }
        }
        Ok(ExecPolicy {
            default: section.default.unwrap_or(Action::Deny),
            rules,
        })
    }

    fn file(&mut self, section: RawFileSection) -> CompileResult<FilePolicy> {
        let (read_default, write_default) = match section.default {
            None => (Action::Deny, Action::Deny),
            Some(value) => parse_file_default(value.get_ref()).map_err(|m| (value.span(), m))?,
        };
        let total = section.allow.len() + section.deny.len();
        let mut policy = FilePolicy {
            read_default,
            write_default,
            read: Vec::new(),
            write: Vec::new(),
        };
        for (list, action) in [(section.deny, Action::Deny), (section.allow, Action::Allow)] {
            for (index, entry) in list.into_iter().enumerate() {
                let span = entry.span();
                if total > MAX_PATH_RULES as usize {
                    let hint = "use a directory rule (`/dir/**`) to cover many files";
                    return Err((span, too_many("file", total, MAX_PATH_RULES, hint)));
                }
                let (path, read, write) =
                    parse_file_rule(entry.get_ref()).map_err(|m| (span.clone(), m))?;
                let pattern = parse_path_pattern(&path).map_err(|m| (span.clone(), m))?;
                let mut access = Vec::new();
                if read {
                    access.push("read");
                }
                if write {
                    access.push("write");
                }
                let id = format!("file.{}[{index}]", action.as_str());
                let text = format!("{pattern} ({})", access.join(", "));
                let rule = self.add_rule(id, text, action);
                for (wanted, rules) in [(read, &mut policy.read), (write, &mut policy.write)] {
                    if wanted && !rules.iter().any(|r: &PathRule| r.pattern == pattern) {
                        rules.push(PathRule {
                            pattern: pattern.clone(),
                            action,
                            rule,
                        });
                    }
                }
            }
        }
        Ok(policy)
    }

    fn network(&mut self, section: RawNetSection) -> CompileResult<NetworkPolicy> {
        let total = section.allow.len() + section.deny.len();
        let mut rules = Vec::new();
        for (list, action) in [(section.allow, Action::Allow), (section.deny, Action::Deny)] {
            for (index, entry) in list.into_iter().enumerate() {
                let span = entry.span();
                if total > MAX_NET_RULES as usize {
                    let hint = "merge neighbouring CIDRs or port ranges";
                    return Err((span, too_many("network", total, MAX_NET_RULES, hint)));
                }
                let raw = entry.into_inner();
                let net = parse_cidr(raw.cidr.get_ref()).map_err(|m| (raw.cidr.span(), m))?;
                let ports = match raw.ports {
                    None => (0, u16::MAX),
                    Some(ports) => {
                        let span = ports.span();
                        parse_ports(ports.get_ref()).map_err(|m| (span, m))?
                    }
                };
                let text = format!(
                    "{} ports {}-{} {}",
                    raw.cidr.get_ref().trim(),
                    ports.0,
                    ports.1,
                    raw.protocol.as_str()
                );
                let id = format!("network.{}[{index}]", action.as_str());
                let rule = self.add_rule(id, text, action);
                rules.push(NetworkRule {
                    net,
                    ports,
                    protocol: raw.protocol,
                    action,
                    rule,
                });
            }
        }
        // Most specific first: longer prefix, then narrower port range, then single protocol;
        // deny before allow among equals. The sort is stable, so file order breaks what is left.
        rules.sort_by_key(|r| {
            (
                std::cmp::Reverse(r.net.prefix_len()),
                r.ports.1 - r.ports.0,
                r.protocol == Protocol::Any,
                r.action != Action::Deny,
            )
        });
        Ok(NetworkPolicy {
            default: section.default.unwrap_or(Action::Deny),
            rules,
        })
    }
}

/// Parses an exec path pattern: an absolute, normalised path, optionally ending in `/**`.
pub fn parse_path_pattern(text: &str) -> Result<PathPattern, String> {
    if !text.starts_with('/') {
        return Err(format!(
            "`{text}` is not an absolute path: write the full path, e.g. `/usr/bin/{}`",
            text.trim_start_matches("./")
        ));
    }
    if text == "/" {
        return Err("`/` is a directory: write `/**` for the whole file system".into());
    }
    let (dir, subtree) = match text.strip_suffix("/**") {
        Some(dir) => (dir, true),
        None => (text, false),
    };
    if dir.contains('*') || dir.contains('?') || dir.contains('[') {
        return Err(format!(
            "`{text}`: wildcards are only supported as a trailing `/**` (a directory and \
             everything below it)"
        ));
    }
    if text.ends_with('/') && text != "/" {
        return Err(format!(
            "`{text}` ends with `/`: write `{}**` for the directory and everything below it",
            text
        ));
    }
    if text.contains('\0') {
        return Err("a path cannot contain a NUL byte".into());
    }
    for component in dir.split('/').skip(1) {
        match component {
            "" => return Err(format!("`{text}` contains an empty component (`//`)")),
            "." | ".." => {
                return Err(format!(
                    "`{text}` contains `{component}`: write the normalised path (rules match the \
                     path the kernel resolves, with symlinks, `.` and `..` already followed)"
                ))
            }
            _ => {}
        }
    }
    let pattern = if subtree {
        PathPattern::Subtree(format!("{dir}/"))
    } else {
        PathPattern::Exact(dir.to_owned())
    };
    let (key, _) = pattern.key();
    if key.len() > MAX_RULE_PATH_LEN + 1 {
        return Err(format!(
            "`{text}` is {} bytes long; oxd's kernel keys hold paths of at most {MAX_RULE_PATH_LEN} \
             bytes: name a shorter parent directory with `/**`",
            dir.len()
        ));
    }
    Ok(pattern)
}

/// Parses a CIDR (`10.0.0.0/8`, `::1/128`) or a single address into an IPv6 network, IPv4 as
/// IPv4-mapped.
pub fn parse_cidr(text: &str) -> Result<ipnet::Ipv6Net, String> {
    let text = text.trim();
    let net = match text.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => match text.parse::<IpAddr>() {
            Ok(addr) => IpNet::from(addr),
            Err(_) => {
                return Err(format!(
                    "`{text}` is not an IP network: write a CIDR such as `10.0.0.0/8`, \
                     `192.0.2.7/32` or `2001:db8::/32`, or a single address"
                ))
            }
        },
    };
    if net.network() != net.addr() {
        return Err(format!(
            "`{text}` has host bits set: did you mean `{}`?",
            net.trunc()
        ));
    }
    Ok(match net {
        IpNet::V4(v4) => {
            let mapped: Ipv6Addr = v4.network().to_ipv6_mapped();
            ipnet::Ipv6Net::new(mapped, v4.prefix_len() + 96)
                .map_err(|e| format!("`{text}`: {e}"))?
        }
        IpNet::V6(v6) => v6,
    })
}

/// The message for a section with more rules than the kernel's maps hold.
fn too_many(category: &str, total: usize, max: u32, hint: &str) -> String {
    format!("too many {category} rules ({total}); oxd supports at most {max}: {hint}")
}

fn parse_action(value: &toml::Value) -> Result<Action, String> {
    match value.as_str() {
        Some("allow") => Ok(Action::Allow),
        Some("deny") => Ok(Action::Deny),
        _ => Err(format!("expected \"allow\" or \"deny\", found {value}")),
    }
}

/// `"allow"`, `"deny"`, or `{ read = "...", write = "..." }` (an absent access defaults to deny).
fn parse_file_default(value: &toml::Value) -> Result<(Action, Action), String> {
    if let Some(table) = value.as_table() {
        let mut read = Action::Deny;
        let mut write = Action::Deny;
        for (key, v) in table {
            match key.as_str() {
                "read" => read = parse_action(v)?,
                "write" => write = parse_action(v)?,
                other => {
                    return Err(format!(
                        "unknown key `{other}` in the file default: use `read` and `write`"
                    ))
                }
            }
        }
        return Ok((read, write));
    }
    parse_action(value).map(|a| (a, a)).map_err(|_| {
        format!(
            "expected \"allow\", \"deny\" or {{ read = \"allow\", write = \"deny\" }}, found {value}"
        )
    })
}

/// A file rule: `"/path"` (read and write) or `{ path = "/path", access = ["read"] }`.
fn parse_file_rule(value: &toml::Value) -> Result<(String, bool, bool), String> {
    if let Some(path) = value.as_str() {
        return Ok((path.to_owned(), true, true));
    }
    let Some(table) = value.as_table() else {
        return Err(format!(
            "a file rule is a path or {{ path = \"/dir/**\", access = [\"read\"] }}, found {value}"
        ));
    };
    let mut path = None;
    let mut access = (true, true);
    for (key, v) in table {
        match key.as_str() {
            "path" => {
                path = Some(
                    v.as_str()
                        .ok_or_else(|| format!("`path` must be a string, found {v}"))?
                        .to_owned(),
                )
            }
            "access" => {
                let list = v.as_array().ok_or_else(|| {
                    format!("`access` must be a list such as [\"read\"], found {v}")
                })?;
                let names = list
                    .iter()
                    .map(|a| {
                        a.as_str()
                            .map(str::to_owned)
                            .ok_or_else(|| format!("`access` entries are strings, found {a}"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                access = parse_access(&names)?;
            }
            other => {
                return Err(format!(
                    "unknown key `{other}` in a file rule: use `path` and `access`"
                ))
            }
        }
    }
    let path = path.ok_or("a file rule needs a `path`")?;
    Ok((path, access.0, access.1))
}

fn parse_access(access: &[String]) -> Result<(bool, bool), String> {
    let mut read = false;
    let mut write = false;
    for a in access {
        match a.as_str() {
            "read" => read = true,
            "write" => write = true,
            other => {
                return Err(format!(
                    "unknown access `{other}`: write `access = [\"read\"]`, `[\"write\"]` or \
                     `[\"read\", \"write\"]`"
                ))
            }
        }
    }
    if !read && !write {
        return Err("`access` is empty: name `read`, `write` or both".into());
    }
    Ok((read, write))
}

fn parse_ports(ports: &RawPorts) -> Result<(u16, u16), String> {
    let one = |n: i64| {
        u16::try_from(n).map_err(|_| format!("port {n} is out of range: ports are 0 to 65535"))
    };
    match ports {
        RawPorts::One(n) => one(*n).map(|p| (p, p)),
        RawPorts::Range(text) => {
            let parse = |s: &str| {
                s.trim().parse::<i64>().map_err(|_| {
                    format!("`{text}` is not a port range: write `443`, or `8000-8999` as a string")
                })
            };
            let (lo, hi) = match text.split_once('-') {
                Some((lo, hi)) => (one(parse(lo)?)?, one(parse(hi)?)?),
                None => {
                    let p = one(parse(text)?)?;
                    (p, p)
                }
            };
            if lo > hi {
                return Err(format!(
                    "port range `{text}` is empty: write it as `{hi}-{lo}`"
                ));
            }
            Ok((lo, hi))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Policy, String> {
        Policy::parse(Path::new("test.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn example_policy_compiles() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/example.toml");
        let policy = Policy::load(&path).expect("example policy must compile");
        assert_eq!(policy.name, "example");
        assert!(policy.exec.is_some());
        assert!(policy.network.is_some());
    }

    #[test]
    fn every_shipped_policy_compiles() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).expect("policies/ exists") {
            let path = entry.expect("directory entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                Policy::load(&path).unwrap_or_else(|e| panic!("{e}"));
                count += 1;
            }
        }
        assert!(count >= 4, "expected the example policies, found {count}");
    }

    #[test]
    fn path_patterns() {
        assert_eq!(
            parse_path_pattern("/usr/bin/git"),
            Ok(PathPattern::Exact("/usr/bin/git".into()))
        );
        assert_eq!(
            parse_path_pattern("/usr/bin/**"),
            Ok(PathPattern::Subtree("/usr/bin/".into()))
        );
        assert_eq!(
            parse_path_pattern("/**"),
            Ok(PathPattern::Subtree("/".into()))
        );
        for bad in [
            "usr/bin",
            "/usr/bin/",
            "/usr/*/git",
            "/usr//bin",
            "/usr/../bin",
            "/",
            "/a/./b",
        ] {
            assert!(parse_path_pattern(bad).is_err(), "{bad} should be rejected");
        }
        let long = format!("/{}", "a".repeat(MAX_RULE_PATH_LEN));
        assert!(parse_path_pattern(&long).is_err());
        let fits = format!("/{}", "a".repeat(MAX_RULE_PATH_LEN - 1));
        assert!(parse_path_pattern(&fits).is_ok());
    }

    #[test]
    fn exact_key_includes_terminator_so_prefixes_do_not_match() {
        let (key, bits) = PathPattern::Exact("/bin/sh".into()).key();
        assert_eq!(key, b"/bin/sh\0");
        assert_eq!(bits, 64);
        assert!(!PathPattern::Exact("/bin/sh".into()).matches("/bin/shred"));
        assert!(!PathPattern::Subtree("/usr/bin/".into()).matches("/usr/binx/a"));
        assert!(PathPattern::Subtree("/usr/bin/".into()).matches("/usr/bin/a"));
    }

    #[test]
    fn deny_wins_on_the_same_pattern() {
        let policy =
            parse("[exec]\nallow = [\"/usr/bin/curl\"]\ndeny = [\"/usr/bin/curl\"]\n").unwrap();
        let exec = policy.exec.unwrap();
        assert_eq!(exec.rules.len(), 1);
        assert_eq!(exec.rules[0].action, Action::Deny);
        assert_eq!(policy.rules[exec.rules[0].rule as usize].id, "exec.deny[0]");
    }

    #[test]
    fn errors_point_at_line_and_column() {
        let err = parse("mode = \"enforce\"\n[exec]\nallow = [\"bin/ls\"]\n").unwrap_err();
        assert!(err.starts_with("test.toml:3:10: "), "{err}");
        assert!(err.contains("not an absolute path"), "{err}");

        let err = parse("[exec]\ndefualt = \"deny\"\n").unwrap_err();
        assert!(err.starts_with("test.toml:2:1: "), "{err}");
        assert!(err.contains("unknown field `defualt`"), "{err}");

        let err = parse("[network]\n[[network.allow]]\ncidr = \"10.0.0.1/8\"\n").unwrap_err();
        assert!(err.starts_with("test.toml:3:8: "), "{err}");
        assert!(err.contains("10.0.0.0/8"), "{err}");

        let err =
            parse("[network]\n[[network.allow]]\ncidr = \"::1\"\nports = \"90-80\"\n").unwrap_err();
        assert!(err.starts_with("test.toml:4:9: "), "{err}");
    }

    #[test]
    fn network_rules_are_ordered_most_specific_first_deny_first() {
        let policy = parse(
            r#"
[network]
default = "allow"
[[network.allow]]
cidr = "10.0.0.0/8"
[[network.allow]]
cidr = "10.1.0.0/16"
ports = 443
[[network.deny]]
cidr = "10.1.0.0/16"
ports = 443
[[network.deny]]
cidr = "10.1.0.0/16"
"#,
        )
        .unwrap();
        let net = policy.network.unwrap();
        let ids: Vec<_> = net
            .rules
            .iter()
            .map(|r| policy.rules[r.rule as usize].id.as_str())
            .collect();
        assert_eq!(
            ids,
            [
                "network.deny[0]",
                "network.allow[1]",
                "network.deny[1]",
                "network.allow[0]"
            ]
        );
        assert_eq!(net.default, Action::Allow);
    }

    #[test]
    fn rule_limits_reject_the_whole_policy() {
        let mut text = String::from("[network]\n");
        for i in 0..=MAX_NET_RULES {
            text.push_str(&format!(
                "[[network.allow]]\ncidr = \"10.0.{}.{}\"\n",
                i / 256,
                i % 256
            ));
        }
        let err = parse(&text).unwrap_err();
        assert!(err.contains("too many network rules (257)"), "{err}");
        let many: Vec<String> = (0..=MAX_PATH_RULES)
            .map(|i| format!("\"/bin/f{i}\""))
            .collect();
        let err = parse(&format!("[exec]\nallow = [{}]\n", many.join(", "))).unwrap_err();
        assert!(err.contains("too many exec rules (4097)"), "{err}");
    }

    #[test]
    fn ipv4_rules_are_ipv4_mapped() {
        let net = parse_cidr("127.0.0.0/8").unwrap();
        assert_eq!(net.prefix_len(), 104);
        assert_eq!(
            net.network(),
            "::ffff:127.0.0.0".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(parse_cidr("192.0.2.7").unwrap().prefix_len(), 128);
    }

    #[test]
    fn sections_default_to_deny_and_absent_sections_are_not_enforced() {
        let policy = parse("[exec]\nallow = [\"/usr/bin/**\"]\n").unwrap();
        assert_eq!(policy.exec.as_ref().map(|e| e.default), Some(Action::Deny));
        assert!(policy.network.is_none());
        assert!(policy.needs_lsm());
        let policy = parse("[network]\n").unwrap();
        assert!(!policy.needs_lsm());
    }
}
