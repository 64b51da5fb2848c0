//! `oxd explain`: what the policy decides for one action, and which rule decides it.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};

use crate::{
    compile::{denied_files, file_identity},
    evaluate::{reached_address, Decision, NamespaceOp, Reason, Request, SocketKind},
    policy::{Action, Mode, Policy},
};

/// The action to explain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Executing this file.
    Exec(PathBuf),
    /// Opening this file for reading and/or writing (neither: judged as a read).
    Open {
        path: PathBuf,
        read: bool,
        write: bool,
    },
    /// Mapping this file executable (`mmap`/`mprotect` with `PROT_EXEC`: a shared library, or
    /// a program the dynamic loader runs).
    MapExec(PathBuf),
    /// Connecting to this address, on a UDP socket or a TCP one.
    Connect { addr: SocketAddr, udp: bool },
    /// Creating an inet socket that is neither TCP nor UDP.
    Socket(SocketKind),
    /// A namespace, mount or chroot operation (`[process] namespaces`).
    Namespace(NamespaceOp),
    /// Ptrace access to a task inside or outside the agent's confinement.
    Ptrace { inside: bool },
    /// Sending a signal to a task inside or outside the agent's confinement.
    Signal { sig: i32, inside: bool },
    /// `TIOCSTI`/`TIOCLINUX` on a terminal.
    TtyInject,
    /// Connecting or sending to a Unix socket (`@name`: abstract) created inside or outside
    /// the agent's confinement.
    Unix { path: String, inside: bool },
    /// Choosing who gets a file's I/O signals: the agent's own process (`own`) or another.
    SignalOwner { own: bool },
    /// Changing the file system at this path, by operation `op` (an audit `op` name of
    /// [`CHANGE_OPS`]).
    Change { op: String, path: PathBuf },
}

/// The file-system changes `oxd explain --change` knows: (audit `op`, whether it is the source
/// of a rename or link, judged as a read too, whether the kernel follows a final symlink).
pub const CHANGE_OPS: [(&str, bool, bool); 16] = [
    ("create", false, false),
    ("truncate", false, true),
    ("unlink", false, false),
    ("rmdir", false, false),
    ("mkdir", false, false),
    ("mknod", false, false),
    ("symlink", false, false),
    ("rename-from", true, false),
    ("rename-to", false, false),
    ("link-from", true, false),
    ("link-to", false, false),
    ("chmod", false, true),
    ("chown", false, true),
    ("setxattr", false, true),
    ("removexattr", false, true),
    ("utimes", false, true),
];

/// Resolves the name a change acts on: the directory as the kernel resolves it, then the name
/// itself (a final symlink is the name removed, renamed or linked, not followed).
fn resolve_name(path: &Path) -> Result<PathBuf> {
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            Ok(resolve(parent)?.join(name))
        }
        _ => resolve(path),
    }
}

/// Where the other party of an ipc probe stands, in words.
fn side(inside: bool) -> &'static str {
    if inside {
        "inside the agent's confinement"
    } else {
        "outside the agent's confinement"
    }
}

/// What a policy decides for one action, and why, in words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    /// The action, with the path it resolves to (`exec /bin/sh (resolves to /usr/bin/dash)`).
    pub what: String,
    pub decision: Decision,
    /// `allow`, `deny (fails with EPERM)`, or a deny not enforced in audit mode.
    pub verdict: String,
    /// The rule that decided, or why none did.
    pub why: String,
    /// Whether the action would happen (allowed, or denied only in audit mode).
    pub happens: bool,
}

/// Resolves a path as the kernel will see it: symlinks, `.` and `..` followed. A file that does
/// not exist yet (an open that creates it) is resolved through its parent directory.
fn resolve(path: &Path) -> Result<PathBuf> {
    if let Ok(real) = std::fs::canonicalize(path) {
        return Ok(real);
    }
    if let (Some(parent), Some(name)) = (path.parent(), path.file_name()) {
        if let Ok(parent) = std::fs::canonicalize(if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        }) {
            return Ok(parent.join(name));
        }
    }
    if path.is_absolute() {
        Ok(path.to_owned())
    } else {
        bail!("cannot resolve {}: give an absolute path", path.display())
    }
}

fn path_string(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_owned)
        .with_context(|| format!("{} is not valid UTF-8", path.display()))
}

/// Decides `probe` under `policy` as the kernel would, resolving its path first as the kernel
/// does (symlinks, `.`, `..`) and taking exact deny rules by file identity into account.
pub fn explain(policy: &Policy, probe: &Probe) -> Result<Explanation> {
    let (request, what) = request_for(probe)?;
    let denied = denied_identity(policy, &request);
    let decision = policy.evaluate_with(&request, denied);
    let verdict = match (decision.action, policy.mode) {
        (Action::Allow, _) => match net_rule(policy, &request, decision.reason) {
            Some(rule) if rule.requires_grant => "allow, only with a grant for exactly this \
                action (`oxd ctl grant`), one use per action: without one, or once it is used \
                up or expired, denied"
                .to_owned(),
            rule => {
                let mut limits = Vec::new();
                if let Some(budget) = rule.and_then(|r| r.budget) {
                    limits.push(format!(
                        "within its budget: at most {}, counted per confined target (beyond it, \
                         denied until the window refills)",
                        budget.text()
                    ));
                }
                if let Some(max) = rule.and_then(|r| r.max_connections) {
                    limits.push(format!(
                        "while fewer than {max} sockets that reached it are open in the confined \
                         target (beyond that, denied until one is closed)"
                    ));
                }
                let exec_budget = policy.exec.as_ref().and_then(|e| e.budget);
                if let (Request::Exec { .. }, Some(b)) = (&request, exec_budget) {
                    limits.push(format!(
                        "within the exec budget: at most {} execs per {}, counted per confined \
                         target (beyond it, denied until the window refills)",
                        b.budget.count,
                        b.budget.per_text()
                    ));
                }
                if limits.is_empty() {
                    "allow".to_owned()
                } else {
                    format!(
                        "allow, {}; `oxd ctl list` shows what is used",
                        limits.join(", and ")
                    )
                }
            }
        },
        (Action::Deny, Mode::Enforce) => "deny (fails with EPERM)".to_owned(),
        (Action::Deny, Mode::Audit) => {
            "deny, not enforced (audit mode: recorded, allowed)".to_owned()
        }
    };
    let why = why(policy, probe, &request, decision.reason);
    let happens = decision.action == Action::Allow || policy.mode == Mode::Audit;
    Ok(Explanation {
        what,
        decision,
        verdict,
        why,
        happens,
    })
}

/// The network rule that decided, if one did.
fn net_rule<'a>(
    policy: &'a Policy,
    request: &Request,
    reason: Reason,
) -> Option<&'a crate::policy::NetworkRule> {
    let (Request::Connect { .. }, Reason::Rule(id)) = (request, reason) else {
        return None;
    };
    policy
        .network
        .as_ref()?
        .rules
        .iter()
        .find(|rule| rule.rule == id)
}

/// The evaluator's request for `probe` (paths resolved as the kernel resolves them), and the
/// action in words.
fn request_for(probe: &Probe) -> Result<(Request, String)> {
    Ok(match probe {
        Probe::Exec(path) => {
            let real = resolve(path)?;
            (
                Request::Exec {
                    path: path_string(&real)?,
                },
                describe("exec", path, &real),
            )
        }
        Probe::MapExec(path) => {
            let real = resolve(path)?;
            (
                Request::MapExec {
                    path: path_string(&real)?,
                },
                describe("map executable", path, &real),
            )
        }
        Probe::Open { path, read, write } => {
            let real = resolve(path)?;
            let access = match (read, write) {
                (true, true) => "read,write",
                (false, true) => "write",
                _ => "read",
            };
            (
                Request::Open {
                    path: path_string(&real)?,
                    read: *read,
                    write: *write,
                },
                format!("{} for {access}", describe("open", path, &real)),
            )
        }
        Probe::Connect { addr, udp } => {
            let proto = if *udp { "udp" } else { "tcp" };
            let reached = reached_address(*addr);
            let judged = if reached == *addr {
                String::new()
            } else {
                format!(" (reaches {reached}: judged as that)")
            };
            (
                Request::Connect {
                    addr: *addr,
                    udp: *udp,
                    send: false,
                },
                format!("connect {addr} ({proto}){judged}"),
            )
        }
        Probe::Socket(kind) => (
            Request::Socket { kind: *kind },
            match kind {
                SocketKind::Ping => "create an ICMP ping socket",
                SocketKind::Raw => "create a raw socket",
                SocketKind::Other => "create a socket of a protocol other than TCP, UDP or ICMP",
            }
            .to_owned(),
        ),
        Probe::Change { op, path } => change_request(op, path)?,
        Probe::Namespace(op) => (Request::Namespace { op: *op }, op.as_str().to_owned()),
        Probe::Ptrace { inside } => (
            Request::Ptrace { inside: *inside },
            format!("ptrace a task {}", side(*inside)),
        ),
        Probe::Signal { sig, inside } => (
            Request::Signal {
                sig: *sig,
                inside: *inside,
            },
            format!("signal {sig} to a task {}", side(*inside)),
        ),
        Probe::TtyInject => (
            Request::TtyInject,
            "TIOCSTI/TIOCLINUX on a terminal".to_owned(),
        ),
        Probe::Unix { path, inside } => unix_request(path, *inside)?,
        Probe::SignalOwner { own } => (
            Request::SignalOwner { own: *own },
            if *own {
                "naming the agent's own process as a file's signal owner".to_owned()
            } else {
                "naming another process, process group or signal for a file's I/O signals"
                    .to_owned()
            },
        ),
    })
}

/// Reaching the Unix socket `path`: a socket path is judged as the path the kernel resolves it
/// to (the socket's bound path in the host's view); an abstract name (`@NAME`) as it is.
fn unix_request(path: &str, inside: bool) -> Result<(Request, String)> {
    let (target, what) = if path.starts_with('@') {
        (path.to_owned(), format!("unix socket {path}"))
    } else {
        let real = path_string(&resolve(Path::new(path))?)?;
        let what = describe("unix socket", Path::new(path), Path::new(&real));
        (real, what)
    };
    Ok((
        Request::Unix {
            path: target,
            inside,
        },
        format!("{what} created {}", side(inside)),
    ))
}

/// The exact deny rules that name the file `request` is about under any of its names (hard
/// links), as the kernel finds them by the file's identity.
fn denied_identity(policy: &Policy, request: &Request) -> Option<oxd_common::InodeRules> {
    match request {
        Request::Exec { path }
        | Request::MapExec { path }
        | Request::Open { path, .. }
        | Request::Change { path, .. } => file_identity(Path::new(path)).and_then(|id| {
            denied_files(policy, &file_identity)
                .into_iter()
                .find_map(|(file, rules)| (file == id).then_some(rules))
        }),
        _ => None,
    }
}

/// Why `reason` decided `request`, in words.
fn why(policy: &Policy, probe: &Probe, request: &Request, reason: Reason) -> String {
    match reason {
        Reason::Rule(id) => match policy.rule(id) {
            Some(rule) if denies_a_path_below(policy, request) => format!(
                "rule {} `{}` denies a path below it: moving it would move that path",
                rule.id, rule.text
            ),
            Some(rule) => format!("rule {} `{}`", rule.id, rule.text),
            None => format!("rule #{id}"),
        },
        Reason::Default if matches!(request, Request::Unix { .. }) => {
            "no [ipc] unix_allow/unix_deny rule matches this socket outside the agent's \
             confinement: the [ipc] `unix` default"
                .to_owned()
        }
        Reason::Default => default_why(request).to_owned(),
        Reason::PathTooLong => format!(
            "the path is longer than the {} bytes the kernel's rule keys hold: denied, fail closed",
            oxd_common::MAX_RULE_PATH_LEN
        ),
        Reason::NotDecided => match (probe, request) {
            (Probe::Namespace(_), _) => {
                "the policy has neither [exec] nor [file]: namespaces are not decided, not recorded"
                    .to_owned()
            }
            (_, Request::Signal { sig: 0, .. }) => {
                "signal 0 delivers nothing (it probes whether the task exists): not decided"
                    .to_owned()
            }
            _ => {
                "the policy has no section for this category: not decided, not recorded".to_owned()
            }
        },
        Reason::IpcInside => "the other party is inside the agent's confinement".to_owned(),
        Reason::IpcOutside => {
            "a confined agent may not ptrace or signal a task outside its confinement".to_owned()
        }
        Reason::TtyInject => "pushing input into a terminal is never allowed".to_owned(),
        Reason::SignalOwner => "a file's I/O signals may go only to the agent's own process, \
                                with the default signal: the kernel sends them without asking \
                                who may be signalled"
            .to_owned(),
        Reason::Guard => "the guard: raw and packet sockets need a [network] section that \
                          allows them (`raw = \"allow\"`), in every mode"
            .to_owned(),
    }
}

/// Whether `request` is a rename's or link's source that is a directory above a path a rule
/// denies (denied by a rule that does not match it).
fn denies_a_path_below(policy: &Policy, request: &Request) -> bool {
    match request {
        Request::Change { path, source: true } => {
            crate::compile::protected_ancestors(&policy_path_rules(policy))
                .iter()
                .any(|(dir, _)| dir == path)
        }
        _ => false,
    }
}

/// The request of a change `op` (a name of [`CHANGE_OPS`]) at `path`, and its description.
fn change_request(op: &str, path: &Path) -> Result<(Request, String)> {
    let Some(&(op, source, follows)) = CHANGE_OPS.iter().find(|(name, ..)| *name == op) else {
        bail!(
            "unknown change `{op}`: one of {}",
            CHANGE_OPS.map(|(name, ..)| name).join(", ")
        );
    };
    let real = if follows {
        resolve(path)?
    } else {
        resolve_name(path)?
    };
    let what = describe(op, path, &real);
    Ok((
        Request::Change {
            path: path_string(&real)?,
            source,
        },
        if source {
            format!("{what} (a write, and a read of the source)")
        } else {
            format!("{what} (a write)")
        },
    ))
}

/// The path rules of every category, in the order the compiled policy takes them.
fn policy_path_rules(policy: &Policy) -> [&[crate::policy::PathRule]; 3] {
    let none: &[crate::policy::PathRule] = &[];
    let exec = policy.exec.as_ref().map_or(none, |e| &e.rules);
    let (read, write) = policy
        .file
        .as_ref()
        .map_or((none, none), |f| (&f.read[..], &f.write[..]));
    [exec, read, write]
}

/// Why the default decided `request`.
fn default_why(request: &Request) -> &'static str {
    match request {
        Request::Socket {
            kind: SocketKind::Ping,
        } => "no `icmp` switch: the network default",
        Request::Socket {
            kind: SocketKind::Raw,
        } => "no `raw` switch: the network default",
        Request::Socket { .. } => "no rule governs this protocol: the network default",
        _ => "no rule matches: the category's default",
    }
}

fn describe(op: &str, given: &Path, real: &Path) -> String {
    if given == real {
        format!("{op} {}", real.display())
    } else {
        format!("{op} {} (resolves to {})", given.display(), real.display())
    }
}

/// One line of what a confined target's live state adds to an explanation: the budget,
/// connections or grant the decision depends on now, and whether it stops the action now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Live {
    pub text: String,
    /// The action would be denied now because of it (unless the policy is in audit mode).
    pub blocks: bool,
}

/// What `target`'s live state (as the daemon reports it) says about `probe`, which `policy`
/// (the target's) decides as `explanation` says: the kill switch, the budgets and connection
/// limits of the deciding rule (and the `[exec] budget` for an exec), and the grant a rule that
/// requires one would use.
pub fn live_state(
    policy: &Policy,
    probe: &Probe,
    explanation: &Explanation,
    target: &crate::control::TargetInfo,
) -> Vec<Live> {
    let mut out = Vec::new();
    if let Some(how) = target.halted {
        out.push(Live {
            text: format!(
                "halted by the kill switch ({}): every action is denied until `oxd ctl resume`",
                how.name()
            ),
            blocks: true,
        });
    }
    if explanation.decision.action != Action::Allow {
        return out;
    }
    let label = explanation.decision.rule_label(policy);
    let exec = matches!(probe, Probe::Exec(_));
    for b in &target.budgets {
        if b.rule != label && !(exec && b.rule == "exec.budget") {
            continue;
        }
        let spent = b.used >= b.count && b.refills_in_ms.is_some();
        let window = b.refills_in_ms.map_or_else(
            || "no window running".to_owned(),
            |ms| format!("refills in {}.{} s", ms / 1000, ms % 1000 / 100),
        );
        out.push(Live {
            text: format!(
                "budget of {}: {} of {} per {} used, {window}{}",
                b.rule,
                b.used,
                b.count,
                b.per,
                if spent { ": spent" } else { "" }
            ),
            blocks: spent,
        });
    }
    for c in target.connections.iter().filter(|c| c.rule == label) {
        let full = c.open >= c.max;
        out.push(Live {
            text: format!(
                "connections of {}: {} of {} open{}",
                c.rule,
                c.open,
                c.max,
                if full {
                    ": a new socket is denied until one is closed"
                } else {
                    ""
                }
            ),
            blocks: full,
        });
    }
    let requires_grant = match explanation.decision.reason {
        Reason::Rule(id) => policy
            .network
            .as_ref()
            .and_then(|n| n.rules.iter().find(|r| r.rule == id))
            .is_some_and(|r| r.requires_grant),
        _ => false,
    };
    if let (true, Probe::Connect { addr, udp }) = (requires_grant, probe) {
        let reached = reached_address(*addr);
        let reached = match reached.ip() {
            std::net::IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or(reached, |v4| SocketAddr::new(v4.into(), reached.port())),
            std::net::IpAddr::V4(_) => reached,
        };
        let action = format!("connect {reached}/{}", if *udp { "udp" } else { "tcp" });
        let usable = target
            .grants
            .iter()
            .find(|g| g.action == action && g.uses > 0 && g.expires_in_ms > 0);
        out.push(match usable {
            Some(g) => Live {
                text: format!(
                    "grant #{} for {action}: {} use(s) left, expires in {} s",
                    g.id,
                    g.uses,
                    g.expires_in_ms / 1000
                ),
                blocks: false,
            },
            None => Live {
                text: format!(
                    "no usable grant for {action} (`oxd ctl grant`, or `oxd approve`): denied"
                ),
                blocks: true,
            },
        });
    }
    out
}
