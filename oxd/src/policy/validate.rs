//! Stage 2: from the file as written ([`super::raw`]) to the validated [`Policy`]: every rule
//! parsed, checked against the kernel's limits, deduplicated and ordered, each error located.

use std::{ops::Range, path::Path};

use oxd_common::{MAX_BUDGETS, MAX_CONNECTION_LIMIT, MAX_NET_RULES, MAX_PATH_RULES, NET_LIST_LEN};
use sha2::{Digest, Sha256};

use super::{
    budget::{parse_budget, RawBudget},
    net::{parse_cidr, parse_ports},
    path::parse_path_pattern,
    raw::{
        RawFileSection, RawIpcSection, RawNetSection, RawPathSection, RawPolicy, RawProcessSection,
    },
    unix::parse_unix_pattern,
    Action, Budget, ExecPolicy, FilePolicy, IpcPolicy, NamespacePolicy, NetworkPolicy, NetworkRule,
    OperationBudget, PathRule, Policy, Protocol, RuleInfo, SocketSwitch, UnixRule, MAX_PROCESSES,
};

/// An error at a byte range of the policy text.
pub(super) type ValidateResult<T> = Result<T, (Range<usize>, String)>;

/// Validates one policy, numbering its rules as it goes.
#[derive(Default)]
pub(super) struct Validator {
    rules: Vec<RuleInfo>,
    /// Budgets and connection limits so far (the kernel holds at most `MAX_BUDGETS`).
    budgets: u32,
}

impl Validator {
    pub(super) fn validate(
        mut self,
        path: &Path,
        text: &str,
        raw: RawPolicy,
    ) -> ValidateResult<Policy> {
        let name = match raw.name {
            Some(name) => {
                let span = name.span();
                let name = name.into_inner();
                if name.is_empty() || name.chars().any(char::is_control) {
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
        // An agent confined at all may not act through others: governing exec or file governs
        // ipc too, with its defaults.
        let ipc = match raw.ipc {
            Some(section) => Some(self.ipc(section)?),
            None => Some(IpcPolicy {
                unix: Action::Deny,
                unix_rules: Vec::new(),
                written: false,
            }),
        };
        let max_processes = raw
            .process
            .as_ref()
            .and_then(|p| p.max_processes.clone())
            .map(|n| {
                let span = n.span();
                u32::try_from(*n.get_ref())
                    .ok()
                    .filter(|n| (1..=MAX_PROCESSES).contains(n))
                    .ok_or_else(|| {
                        (
                            span,
                            format!(
                                "max_processes must be a number of tasks from 1 to {MAX_PROCESSES}"
                            ),
                        )
                    })
            })
            .transpose()?;
        let namespaces = Some(self.namespaces(raw.process));
        let sha256 = format!("{:x}", Sha256::digest(text.as_bytes()));
        Ok(Policy {
            name,
            sha256,
            mode: raw.mode,
            exec,
            file,
            network,
            ipc,
            rules: self.rules,
            namespaces,
            max_processes,
        })
    }

    /// `[ipc]`: the `unix` default (deny) and the Unix socket rules, deny rules first so that
    /// a pattern named by both lists keeps its deny rule.
    fn ipc(&mut self, section: RawIpcSection) -> ValidateResult<IpcPolicy> {
        let total = section.unix_allow.len() + section.unix_deny.len();
        let mut unix_rules: Vec<UnixRule> = Vec::new();
        for (list, action, name) in [
            (section.unix_deny, Action::Deny, "unix_deny"),
            (section.unix_allow, Action::Allow, "unix_allow"),
        ] {
            for (index, entry) in list.into_iter().enumerate() {
                let span = entry.span();
                if total > MAX_PATH_RULES as usize {
                    let hint = "use a directory rule (`/dir/**`) or a prefix (`@prefix*`)";
                    return Err((span, too_many("Unix socket", total, MAX_PATH_RULES, hint)));
                }
                let pattern = parse_unix_pattern(entry.get_ref()).map_err(|m| (span.clone(), m))?;
                if unix_rules.iter().any(|r| r.pattern == pattern) {
                    continue;
                }
                let id = format!("ipc.{name}[{index}]");
                let rule = self.add_rule(id, pattern.to_string(), action);
                unix_rules.push(UnixRule {
                    pattern,
                    action,
                    rule,
                });
            }
        }
        Ok(IpcPolicy {
            unix: section.unix.unwrap_or(Action::Deny),
            unix_rules,
            written: true,
        })
    }

    /// `[process] namespaces`, governed by every policy (default deny: a namespace, mount or
    /// chroot rewrites what paths mean, and a mount can hide oxd's own files); numbered after
    /// every other rule, so the other rules' ids do not depend on it.
    fn namespaces(&mut self, section: Option<RawProcessSection>) -> NamespacePolicy {
        let written = section.and_then(|s| s.namespaces);
        let (action, text) = match written {
            Some(value) => {
                let action = *value.get_ref();
                (action, format!("namespaces = \"{}\"", action.as_str()))
            }
            None => (Action::Deny, "namespaces = \"deny\" (default)".to_owned()),
        };
        let rule = self.add_rule("process.namespaces".to_owned(), text, action);
        NamespacePolicy { action, rule }
    }

    fn add_rule(&mut self, id: String, text: String, action: Action) -> u32 {
        self.rules.push(RuleInfo { id, text, action });
        // The rule counts are checked against the kernel's limits before any rule is added.
        u32::try_from(self.rules.len() - 1).expect("rule ids fit in u32")
    }

    fn exec(&mut self, section: RawPathSection) -> ValidateResult<ExecPolicy> {
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
        let budget = match section.budget {
            None => None,
            Some(raw) => {
                let budget =
                    rule_budget(Some(&raw), Action::Allow, &raw.span(), &mut self.budgets)?
                        .expect("a budget was written");
                let text = format!("budget {}", budget.text());
                let rule = self.add_rule("exec.budget".to_owned(), text, Action::Deny);
                Some(OperationBudget { budget, rule })
            }
        };
        Ok(ExecPolicy {
            default: section.default.unwrap_or(Action::Deny),
            rules,
            budget,
        })
    }

    fn file(&mut self, section: RawFileSection) -> ValidateResult<FilePolicy> {
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

    fn network(&mut self, section: RawNetSection) -> ValidateResult<NetworkPolicy> {
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
                let budget = rule_budget(raw.budget.as_ref(), action, &span, &mut self.budgets)?;
                let requires_grant =
                    rule_requires_grant(raw.requires_grant.as_ref(), action, budget.is_some())?;
                let max_connections =
                    rule_max_connections(raw.max_connections.as_ref(), action, &mut self.budgets)?;
                let mut text = format!(
                    "{} ports {}-{} {}",
                    raw.cidr.get_ref().trim(),
                    ports.0,
                    ports.1,
                    raw.protocol.as_str()
                );
                if let Some(budget) = &budget {
                    text.push_str(&format!(", budget {}", budget.text()));
                }
                if requires_grant {
                    text.push_str(", requires a grant");
                }
                if let Some(max) = max_connections {
                    text.push_str(&format!(", at most {max} open at once"));
                }
                let id = format!("network.{}[{index}]", action.as_str());
                let rule = self.add_rule(id, text, action);
                let rule = NetworkRule {
                    net,
                    ports,
                    protocol: raw.protocol,
                    action,
                    rule,
                    budget,
                    requires_grant,
                    max_connections,
                };
                rules.push((rule, span));
            }
        }
        // Most specific first: longer prefix, then narrower port range, then single protocol;
        // deny before allow among equals. The sort is stable, so file order breaks what is left.
        rules.sort_by_key(|(r, _)| {
            (
                std::cmp::Reverse(r.net.prefix_len()),
                r.ports.1 - r.ports.0,
                r.protocol == Protocol::Any,
                r.action != Action::Deny,
            )
        });
        let (rules, spans): (Vec<NetworkRule>, Vec<Range<usize>>) = rules.into_iter().unzip();
        // The kernel holds, per network, the rules that can decide there (see
        // `net_prefix_lists`): at most `NET_LIST_LEN` of them.
        if let Err(overflow) = crate::compile::net_prefix_lists(&rules) {
            let network = crate::compile::network_text(overflow.network);
            return Err((
                spans[overflow.rule].clone(),
                format!(
                    "too many rules can decide a destination in {network}: oxd holds at most \
                     {NET_LIST_LEN} per network (its own and those of the wider networks around \
                     it, less those an earlier one covers), and this one does not fit: merge \
                     neighbouring port ranges or networks"
                ),
            ));
        }
        let default = section.default.unwrap_or(Action::Deny);
        let mut switch = |name: &str, value: Option<toml::Spanned<Action>>| match value {
            None => SocketSwitch {
                action: default,
                rule: None,
            },
            Some(value) => {
                let action = *value.get_ref();
                let text = format!("{name} = \"{}\"", action.as_str());
                let rule = self.add_rule(format!("network.{name}"), text, action);
                SocketSwitch {
                    action,
                    rule: Some(rule),
                }
            }
        };
        let icmp = switch("icmp", section.icmp);
        let raw = switch("raw", section.raw);
        Ok(NetworkPolicy {
            default,
            rules,
            icmp,
            raw,
        })
    }
}

/// A rule's budget (`budget` is the rule's, `span` the rule's), counting the policy's budgets.
fn rule_budget(
    budget: Option<&toml::Spanned<RawBudget>>,
    action: Action,
    span: &Range<usize>,
    budgets: &mut u32,
) -> ValidateResult<Option<Budget>> {
    let Some(budget) = budget else {
        return Ok(None);
    };
    if action == Action::Deny {
        return Err((
            span.clone(),
            "a budget limits what a rule allows: a deny rule cannot have one".to_owned(),
        ));
    }
    *budgets += 1;
    if *budgets > MAX_BUDGETS {
        return Err((
            budget.span(),
            format!("too many budgets and connection limits: a policy has at most {MAX_BUDGETS}"),
        ));
    }
    parse_budget(budget.get_ref()).map(Some)
}

/// A rule's connection limit (`max` is its `max_connections`), counted with the policy's
/// budgets (they share the kernel's table).
fn rule_max_connections(
    max: Option<&toml::Spanned<i64>>,
    action: Action,
    budgets: &mut u32,
) -> ValidateResult<Option<u32>> {
    let Some(max) = max else {
        return Ok(None);
    };
    if action == Action::Deny {
        return Err((
            max.span(),
            "a connection limit limits what a rule allows: a deny rule cannot have one".to_owned(),
        ));
    }
    let value = u32::try_from(*max.get_ref())
        .ok()
        .filter(|n| (1..=MAX_CONNECTION_LIMIT).contains(n))
        .ok_or_else(|| {
            (
                max.span(),
                format!(
                    "max_connections must be a number of sockets from 1 to \
                     {MAX_CONNECTION_LIMIT}"
                ),
            )
        })?;
    *budgets += 1;
    if *budgets > MAX_BUDGETS {
        return Err((
            max.span(),
            format!("too many budgets and connection limits: a policy has at most {MAX_BUDGETS}"),
        ));
    }
    Ok(Some(value))
}

/// Whether a rule requires a grant (`flag` is its `requires_grant`).
fn rule_requires_grant(
    flag: Option<&toml::Spanned<bool>>,
    action: Action,
    has_budget: bool,
) -> ValidateResult<bool> {
    let Some(flag) = flag.filter(|f| *f.get_ref()) else {
        return Ok(false);
    };
    if action == Action::Deny {
        return Err((
            flag.span(),
            "a grant allows an action: a deny rule cannot require one".to_owned(),
        ));
    }
    if has_budget {
        return Err((
            flag.span(),
            "a rule that requires a grant cannot also have a budget: each action is granted one \
             by one"
                .to_owned(),
        ));
    }
    Ok(true)
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
                );
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
