//! The reference evaluator: the documented decision semantics, in user space.
//!
//! It decides exactly what the kernel programs decide for the same policy and action (the
//! differential tests check that on real kernels), and `oxd explain` uses it. It works on
//! resolved paths: callers that start from a name resolve it first, as the kernel does.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use oxd_common::{InodeRules, PATH_KEY_LEN, RULE_NONE};

use crate::policy::{Action, NetworkRule, PathPattern, PathRule, Policy, Protocol};

/// An action a confined agent attempts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Executing the file at this resolved path.
    Exec { path: String },
    /// Opening the file at this resolved path.
    Open {
        path: String,
        read: bool,
        write: bool,
    },
    /// Mapping the file at this resolved path executable (`mmap` with `PROT_EXEC`, or `mprotect`
    /// adding it): decided by the exec rules, as an exec of the file.
    MapExec { path: String },
    /// Changing the file system at this resolved path (creating, truncating, removing,
    /// renaming, linking, changing mode or owner): a write. With `source`, the path is the
    /// source of a rename or a hard link, which must be allowed for reading too.
    Change { path: String, source: bool },
    /// Connecting (or, with `send`, sending a UDP datagram) to an address, from a socket not
    /// bound to a source address.
    Connect {
        addr: SocketAddr,
        udp: bool,
        send: bool,
    },
    /// Creating an inet socket that is neither TCP nor UDP (IPv4 or IPv6 alike).
    Socket { kind: SocketKind },
    /// Creating a user namespace, changing mounts, chroot, or entering another namespace:
    /// decided by `[process] namespaces`.
    Namespace { op: NamespaceOp },
    /// Ptrace access (any mode, or `PTRACE_TRACEME` under it) to a task inside or outside the
    /// agent's confinement.
    Ptrace { inside: bool },
    /// Sending signal `sig` to a task inside or outside the agent's confinement.
    Signal { sig: i32, inside: bool },
    /// `TIOCSTI` or `TIOCLINUX` on any terminal.
    TtyInject,
    /// Connecting or sending to a Unix socket (`path`, `@name` for abstract names) created
    /// inside or outside the agent's confinement.
    Unix { path: String, inside: bool },
    /// Choosing who gets a file's I/O signals: with `own`, naming the agent's own process (or
    /// nobody) with the default signal; otherwise another owner, another signal, `O_ASYNC`, or
    /// an `ioctl` form.
    SignalOwner { own: bool },
}

/// Inet sockets decided when they are created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketKind {
    /// An ICMP ping socket (`SOCK_DGRAM` with `IPPROTO_ICMP` or `IPPROTO_ICMPV6`); its connect,
    /// if it makes one, is decided the same way.
    Ping,
    /// A raw socket (`SOCK_RAW`, any protocol).
    Raw,
    /// Another protocol (SCTP, MPTCP, UDP-Lite, ...).
    Other,
}

/// The address a connect or send to `addr` reaches from a socket with no source address, as
/// the kernel routes it and as oxd judges it: `0.0.0.0` is `127.0.0.1` (`::ffff:0.0.0.0` is
/// `::ffff:127.0.0.1`), `::` is `::1`; any other address is itself.
pub fn reached_address(addr: SocketAddr) -> SocketAddr {
    let ip: IpAddr = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => Ipv4Addr::LOCALHOST.into(),
        IpAddr::V6(v6) if v6.is_unspecified() => Ipv6Addr::LOCALHOST.into(),
        IpAddr::V6(v6) if v6.to_ipv4_mapped() == Some(Ipv4Addr::UNSPECIFIED) => {
            Ipv4Addr::LOCALHOST.to_ipv6_mapped().into()
        }
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// The operations `[process] namespaces` decides, by their audit `op` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamespaceOp {
    /// `unshare`/`clone` with `CLONE_NEWUSER`.
    UsernsCreate,
    /// `mount(2)`: new, bind, move, remount, propagation change.
    Mount,
    /// `umount2(2)`.
    Umount,
    /// `move_mount(2)` (the new mount API's attach).
    MoveMount,
    /// `pivot_root(2)`.
    PivotRoot,
    /// `chroot(2)`.
    Chroot,
    /// A capability in a user namespace other than the task's own, or `CAP_SYS_CHROOT`: how
    /// `setns` into an existing namespace is checked (audit `op` `capable`).
    Capable,
}

impl NamespaceOp {
    pub const ALL: [Self; 7] = [
        Self::UsernsCreate,
        Self::Mount,
        Self::Umount,
        Self::MoveMount,
        Self::PivotRoot,
        Self::Chroot,
        Self::Capable,
    ];

    /// The audit record's `op`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UsernsCreate => "userns-create",
            Self::Mount => "mount",
            Self::Umount => "umount",
            Self::MoveMount => "move-mount",
            Self::PivotRoot => "pivot-root",
            Self::Chroot => "chroot",
            Self::Capable => "capable",
        }
    }

    /// The operation named by an audit `op`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.as_str() == name)
    }
}

/// Why a decision was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A rule matched.
    Rule(u32),
    /// No rule matched; the category's default decided.
    Default,
    /// The path is too long for the kernel's rule keys: denied, fail closed.
    PathTooLong,
    /// The policy has no section for this category: nothing is decided, the action happens.
    NotDecided,
    /// The other task or socket is inside the agent's confinement: allowed.
    IpcInside,
    /// The other task is outside the agent's confinement: denied.
    IpcOutside,
    /// Pushing input into a terminal is never allowed.
    TtyInject,
    /// A file's I/O signals may go only to the agent's own process, with the default signal.
    SignalOwner,
    /// The guard: denied under every policy that loads BPF-LSM programs, whatever its mode
    /// (a raw socket under a policy without `[network]`).
    Guard,
}

/// A decision, as the kernel would make it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    pub reason: Reason,
}

impl Decision {
    const fn new(action: Action, reason: Reason) -> Self {
        Self { action, reason }
    }

    /// The audit record's `rule` field for this decision.
    pub fn rule_label(&self, policy: &Policy) -> String {
        match self.reason {
            Reason::Rule(id) => policy
                .rule(id)
                .map_or_else(|| format!("#{id}"), |r| r.id.clone()),
            _ => "default".to_owned(),
        }
    }
}

impl Policy {
    /// Decides `request` under this policy (before the mode: in audit mode a deny is recorded
    /// but not enforced), by path alone.
    pub fn evaluate(&self, request: &Request) -> Decision {
        self.evaluate_with(request, None)
    }

    /// A change to the file system at `path`: decided as an open for writing (and reading, for
    /// the source of a rename or link) of the same path; a source may not be a directory above
    /// a path a deny rule names.
    fn decide_change(&self, path: &str, source: bool, denied: Option<InodeRules>) -> Decision {
        let decision = self.evaluate_with(
            &Request::Open {
                path: path.to_owned(),
                read: source,
                write: true,
            },
            denied,
        );
        // Without a `[file]` section the kernel decides no change to the file system (not even
        // moving a directory above an exec deny rule: under an exec deny list a copy gets as
        // far), so neither does this.
        if !source || decision.action != Action::Allow || self.file.is_none() {
            return decision;
        }
        let no_rules: &[PathRule] = &[];
        let exec = self.exec.as_ref().map_or(no_rules, |e| &e.rules);
        let (read, write) = self
            .file
            .as_ref()
            .map_or((no_rules, no_rules), |f| (&f.read, &f.write));
        crate::compile::protected_ancestors(&[exec, read, write])
            .into_iter()
            .find(|(dir, _)| dir == path)
            .map_or(decision, |(_, rule)| {
                Decision::new(Action::Deny, Reason::Rule(rule))
            })
    }

    /// Decides `request`, given the exact deny rules that name the file by identity, as the
    /// kernel finds them in its denied-file map: from [`crate::compile::SlotImage::denied`] or
    /// [`crate::compile::denied_files`] for the file's [`crate::compile::file_identity`].
    pub fn evaluate_with(&self, request: &Request, denied: Option<InodeRules>) -> Decision {
        let by_identity = |rule: Option<u32>, by_path: Decision| match rule {
            Some(rule) if rule != RULE_NONE && by_path.reason != Reason::PathTooLong => {
                Decision::new(Action::Deny, Reason::Rule(rule))
            }
            _ => by_path,
        };
        match request {
            Request::Exec { path } | Request::MapExec { path } => match &self.exec {
                None => Decision::new(Action::Allow, Reason::NotDecided),
                Some(exec) => by_identity(
                    denied.map(|d| d.exec),
                    decide_path(&exec.rules, exec.default, path),
                ),
            },
            Request::Open { path, read, write } => match &self.file {
                None => Decision::new(Action::Allow, Reason::NotDecided),
                Some(file) => {
                    // Neither read nor write is judged as a read, as in the kernel.
                    let read = *read || !*write;
                    let r = read.then(|| {
                        by_identity(
                            denied.map(|d| d.read),
                            decide_path(&file.read, file.read_default, path),
                        )
                    });
                    let w = write.then(|| {
                        by_identity(
                            denied.map(|d| d.write),
                            decide_path(&file.write, file.write_default, path),
                        )
                    });
                    match (r, w) {
                        (_, Some(w)) if w.action == Action::Deny => w,
                        (Some(r), _) if r.action == Action::Deny => r,
                        (_, Some(w)) => w,
                        (Some(r), None) => r,
                        (None, None) => unreachable!("read is forced when write is not"),
                    }
                }
            },
            Request::Change { path, source } => self.decide_change(path, *source, denied),
            Request::Connect { addr, udp, .. } => match &self.network {
                None => Decision::new(Action::Allow, Reason::NotDecided),
                Some(network) => decide_network(
                    &network.rules,
                    network.default,
                    reached_address(*addr),
                    *udp,
                ),
            },
            Request::Socket { kind } => match &self.network {
                // The guard's `socket_create`: no raw socket without a `[network]` that
                // allows them, wherever BPF-LSM programs are loaded.
                None if *kind == SocketKind::Raw && self.needs_lsm() => {
                    Decision::new(Action::Deny, Reason::Guard)
                }
                None => Decision::new(Action::Allow, Reason::NotDecided),
                Some(network) => {
                    let switch = match kind {
                        SocketKind::Ping => network.icmp,
                        SocketKind::Raw => network.raw,
                        SocketKind::Other => {
                            return Decision::new(network.default, Reason::Default)
                        }
                    };
                    match switch.rule {
                        Some(rule) => Decision::new(switch.action, Reason::Rule(rule)),
                        None => Decision::new(switch.action, Reason::Default),
                    }
                }
            },
            Request::Namespace { .. } => match &self.namespaces {
                None => Decision::new(Action::Allow, Reason::NotDecided),
                Some(ns) => Decision::new(ns.action, Reason::Rule(ns.rule)),
            },
            Request::Ptrace { inside } => match &self.ipc {
                None => Decision::new(Action::Allow, Reason::NotDecided),
                Some(_) => decide_task(*inside),
            },
            Request::Signal { sig, inside } => match &self.ipc {
                // Signal 0 only probes whether the task exists: nothing is delivered.
                Some(_) if *sig != 0 => decide_task(*inside),
                _ => Decision::new(Action::Allow, Reason::NotDecided),
            },
            Request::TtyInject => match &self.ipc {
                None => Decision::new(Action::Allow, Reason::NotDecided),
                Some(_) => Decision::new(Action::Deny, Reason::TtyInject),
            },
            Request::Unix { path, inside } => match &self.ipc {
                None => Decision::new(Action::Allow, Reason::NotDecided),
                Some(_) if *inside => Decision::new(Action::Allow, Reason::IpcInside),
                Some(ipc) => decide_unix(&ipc.unix_rules, ipc.unix, path),
            },
            Request::SignalOwner { own } => match &self.ipc {
                None => Decision::new(Action::Allow, Reason::NotDecided),
                Some(_) if *own => Decision::new(Action::Allow, Reason::IpcInside),
                Some(_) => Decision::new(Action::Deny, Reason::SignalOwner),
            },
        }
    }
}

/// Acting on another task: inside the confinement allowed, outside denied.
fn decide_task(inside: bool) -> Decision {
    if inside {
        Decision::new(Action::Allow, Reason::IpcInside)
    } else {
        Decision::new(Action::Deny, Reason::IpcOutside)
    }
}

/// A Unix socket outside the confinement, at its bound path (or `@name`, abstract): the most
/// specific matching `[ipc]` rule (an exact abstract name over any prefix; among paths, as for
/// file rules), else the `unix` default. Validation keeps one rule per pattern, deny on a tie.
fn decide_unix(rules: &[crate::policy::UnixRule], default: Action, target: &str) -> Decision {
    let too_long = match target.strip_prefix('@') {
        Some(name) => name.len() > oxd_common::UNIX_ABSTRACT_NAME_MAX,
        None => target.len() + 1 > PATH_KEY_LEN,
    };
    if too_long {
        return Decision::new(Action::Deny, Reason::PathTooLong);
    }
    rules
        .iter()
        .filter(|r| r.pattern.matches(target))
        .max_by_key(|r| r.pattern.specificity())
        .map_or(Decision::new(default, Reason::Default), |r| {
            Decision::new(r.action, Reason::Rule(r.rule))
        })
}

fn decide_path(rules: &[PathRule], default: Action, path: &str) -> Decision {
    if path.len() + 1 > PATH_KEY_LEN {
        return Decision::new(Action::Deny, Reason::PathTooLong);
    }
    // The kernel's longest-prefix match: at most one rule per pattern, and the longest key
    // among the matching ones is the most specific. A subtree matching its own directory is as
    // specific as an exact rule naming that directory; the exact rule wins (the compiled
    // policy holds only its key there).
    rules
        .iter()
        .filter(|r| r.pattern.matches(path))
        .max_by_key(|r| {
            (
                r.pattern.specificity(),
                matches!(r.pattern, PathPattern::Exact(_)),
            )
        })
        .map_or(Decision::new(default, Reason::Default), |r| {
            Decision::new(r.action, Reason::Rule(r.rule))
        })
}

fn decide_network(rules: &[NetworkRule], default: Action, addr: SocketAddr, udp: bool) -> Decision {
    let ip = match addr.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let port = addr.port();
    // Rules are sorted most specific first: the first match decides.
    rules
        .iter()
        .find(|r| {
            let proto_ok = match r.protocol {
                Protocol::Any => true,
                Protocol::Tcp => !udp,
                Protocol::Udp => udp,
            };
            proto_ok && r.ports.0 <= port && port <= r.ports.1 && r.net.contains(&ip)
        })
        .map_or(Decision::new(default, Reason::Default), |r| {
            Decision::new(r.action, Reason::Rule(r.rule))
        })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn policy(text: &str) -> Policy {
        Policy::parse(Path::new("t.toml"), text).expect("valid policy")
    }

    fn exec(p: &Policy, path: &str) -> (Action, String) {
        let d = p.evaluate(&Request::Exec { path: path.into() });
        (d.action, d.rule_label(p))
    }

    #[test]
    fn moving_a_directory_above_a_deny_rule_is_decided_only_with_a_file_section() {
        let rename = Request::Change {
            path: "/t/a".into(),
            source: true,
        };
        // As the kernel: without [file], no change to the file system is decided.
        let p = policy("[exec]\ndeny = [\"/t/a/b/**\"]\n");
        assert_eq!(
            p.evaluate(&rename),
            Decision::new(Action::Allow, Reason::NotDecided)
        );
        let p = policy("[exec]\ndeny = [\"/t/a/b/**\"]\n[file]\ndefault = \"allow\"\n");
        assert_eq!(p.evaluate(&rename).action, Action::Deny);
        assert_eq!(p.evaluate(&rename).rule_label(&p), "exec.deny[0]");
    }

    #[test]
    fn most_specific_path_wins_and_deny_wins_ties() {
        let p = policy(
            r#"
[exec]
default = "deny"
allow = ["/usr/bin/**", "/usr/bin/tools/**", "/opt/x"]
deny = ["/usr/bin/tools/**", "/usr/bin/curl", "/usr/**"]
"#,
        );
        assert_eq!(
            exec(&p, "/usr/bin/ls"),
            (Action::Allow, "exec.allow[0]".into())
        );
        assert_eq!(
            exec(&p, "/usr/bin/curl"),
            (Action::Deny, "exec.deny[1]".into())
        );
        assert_eq!(
            exec(&p, "/usr/bin/tools/a"),
            (Action::Deny, "exec.deny[0]".into())
        );
        assert_eq!(
            exec(&p, "/usr/sbin/x"),
            (Action::Deny, "exec.deny[2]".into())
        );
        assert_eq!(exec(&p, "/opt/x"), (Action::Allow, "exec.allow[2]".into()));
        assert_eq!(exec(&p, "/opt/xy"), (Action::Deny, "default".into()));
        assert_eq!(exec(&p, "/usr/binx"), (Action::Deny, "exec.deny[2]".into()));
        let long = format!("/usr/bin/{}", "a".repeat(300));
        let d = p.evaluate(&Request::Exec { path: long });
        assert_eq!(d, Decision::new(Action::Deny, Reason::PathTooLong));
    }

    #[test]
    fn open_needs_every_access_it_asks_for() {
        let p = policy(
            r#"
[file]
default = { read = "allow", write = "deny" }
allow = [{ path = "/work/**", access = ["write"] }]
deny = [{ path = "/root/.ssh/**", access = ["read"] }, "/etc/shadow"]
"#,
        );
        let open = |path: &str, read, write| {
            let d = p.evaluate(&Request::Open {
                path: path.into(),
                read,
                write,
            });
            (d.action, d.rule_label(&p))
        };
        assert_eq!(
            open("/etc/passwd", true, false),
            (Action::Allow, "default".into())
        );
        assert_eq!(
            open("/etc/passwd", true, true),
            (Action::Deny, "default".into())
        );
        assert_eq!(
            open("/work/a", true, true),
            (Action::Allow, "file.allow[0]".into())
        );
        assert_eq!(
            open("/work/a", false, true),
            (Action::Allow, "file.allow[0]".into())
        );
        assert_eq!(
            open("/root/.ssh/id", true, false),
            (Action::Deny, "file.deny[0]".into())
        );
        assert_eq!(
            open("/etc/shadow", true, false),
            (Action::Deny, "file.deny[1]".into())
        );
        assert_eq!(
            open("/etc/shadow", false, false),
            (Action::Deny, "file.deny[1]".into())
        );
    }

    #[test]
    fn network_first_match_and_ipv4_mapped() {
        let p = policy(
            r#"
[network]
default = "deny"
[[network.allow]]
cidr = "10.0.0.0/8"
ports = 443
protocol = "tcp"
[[network.deny]]
cidr = "10.1.0.0/16"
[[network.allow]]
cidr = "::1"
protocol = "udp"
"#,
        );
        let connect = |addr: &str, udp| {
            let d = p.evaluate(&Request::Connect {
                addr: addr.parse().unwrap(),
                udp,
                send: false,
            });
            (d.action, d.rule_label(&p))
        };
        assert_eq!(
            connect("10.2.3.4:443", false),
            (Action::Allow, "network.allow[0]".into())
        );
        assert_eq!(
            connect("[::ffff:10.2.3.4]:443", false),
            (Action::Allow, "network.allow[0]".into())
        );
        assert_eq!(
            connect("10.2.3.4:443", true),
            (Action::Deny, "default".into())
        );
        assert_eq!(
            connect("10.1.3.4:443", false),
            (Action::Deny, "network.deny[0]".into())
        );
        assert_eq!(
            connect("[::1]:53", true),
            (Action::Allow, "network.allow[1]".into())
        );
        assert_eq!(connect("[::1]:53", false), (Action::Deny, "default".into()));
    }

    #[test]
    fn unspecified_destinations_are_judged_as_loopback() {
        let p = policy(
            r#"
[network]
default = "allow"
[[network.deny]]
cidr = "127.0.0.1"
[[network.deny]]
cidr = "::1"
protocol = "tcp"
"#,
        );
        let connect = |addr: &str, udp| {
            let d = p.evaluate(&Request::Connect {
                addr: addr.parse().unwrap(),
                udp,
                send: udp,
            });
            (d.action, d.rule_label(&p))
        };
        let deny4 = (Action::Deny, "network.deny[0]".to_owned());
        assert_eq!(connect("0.0.0.0:80", false), deny4);
        assert_eq!(connect("0.0.0.0:53", true), deny4);
        assert_eq!(connect("[::ffff:0.0.0.0]:80", false), deny4);
        assert_eq!(
            connect("[::]:80", false),
            (Action::Deny, "network.deny[1]".into())
        );
        assert_eq!(connect("[::]:53", true), (Action::Allow, "default".into()));
        assert_eq!(
            connect("127.0.0.2:80", false),
            (Action::Allow, "default".into())
        );
        assert_eq!(
            reached_address("[::ffff:0.0.0.0]:7".parse().unwrap()),
            "[::ffff:127.0.0.1]:7".parse().unwrap()
        );
    }

    #[test]
    fn icmp_and_raw_sockets_follow_their_switch_or_the_default() {
        let socket = |p: &Policy, kind| {
            let d = p.evaluate(&Request::Socket { kind });
            (d.action, d.rule_label(p), d.reason)
        };
        let p = policy("[network]\nicmp = \"allow\"\n");
        assert_eq!(socket(&p, SocketKind::Ping).0, Action::Allow);
        assert_eq!(socket(&p, SocketKind::Ping).1, "network.icmp");
        assert_eq!(
            socket(&p, SocketKind::Raw),
            (Action::Deny, "default".into(), Reason::Default)
        );
        assert_eq!(
            socket(&p, SocketKind::Other),
            (Action::Deny, "default".into(), Reason::Default)
        );
        let p = policy("[network]\ndefault = \"allow\"\nraw = \"deny\"\n");
        assert_eq!(socket(&p, SocketKind::Ping).0, Action::Allow);
        assert_eq!(socket(&p, SocketKind::Raw).1, "network.raw");
        assert_eq!(socket(&p, SocketKind::Raw).0, Action::Deny);
        assert_eq!(socket(&p, SocketKind::Other).0, Action::Allow);
        // Without [network], the guard denies raw (and packet) sockets; the rest is not decided.
        let p = policy("[exec]\n");
        assert_eq!(
            socket(&p, SocketKind::Raw),
            (Action::Deny, "default".into(), Reason::Guard)
        );
        assert_eq!(socket(&p, SocketKind::Ping).2, Reason::NotDecided);
        assert_eq!(socket(&p, SocketKind::Other).2, Reason::NotDecided);
    }

    #[test]
    fn identity_rules_deny_every_name_of_a_file() {
        use crate::compile::{compile, FileId};

        let p = policy(
            r#"
[exec]
default = "allow"
deny = ["/usr/bin/curl"]
[file]
default = "allow"
deny = [{ path = "/etc/shadow", access = ["read"] }]
"#,
        );
        let curl = FileId { dev: 1, ino: 1 };
        let shadow = FileId { dev: 1, ino: 2 };
        let files = |path: &Path| match path.to_str() {
            Some("/usr/bin/curl") => Some(curl),
            Some("/etc/shadow") => Some(shadow),
            _ => None,
        };
        let image = compile(&p, 0, 1, &files).expect("compiles");
        let exec_link = Request::Exec {
            path: "/tmp/c".into(),
        };
        assert_eq!(
            p.evaluate(&exec_link),
            Decision::new(Action::Allow, Reason::Default)
        );
        let d = p.evaluate_with(&exec_link, image.denied(curl));
        assert_eq!(
            (d.action, d.rule_label(&p)),
            (Action::Deny, "exec.deny[0]".into())
        );
        // An over-long name fails closed as such, whatever the file.
        let long = Request::Exec {
            path: format!("/tmp/{}", "c".repeat(300)),
        };
        assert_eq!(
            p.evaluate_with(&long, image.denied(curl)),
            Decision::new(Action::Deny, Reason::PathTooLong)
        );
        // The identity denies the accesses its rules govern, no more.
        let open = |read, write| {
            let request = Request::Open {
                path: "/tmp/s".into(),
                read,
                write,
            };
            let d = p.evaluate_with(&request, image.denied(shadow));
            (d.action, d.rule_label(&p))
        };
        assert_eq!(open(true, false), (Action::Deny, "file.deny[0]".into()));
        assert_eq!(open(true, true), (Action::Deny, "file.deny[0]".into()));
        assert_eq!(open(false, true), (Action::Allow, "default".into()));
        // A file no deny rule names has no identity entry.
        assert_eq!(image.denied(FileId { dev: 1, ino: 3 }), None);
    }

    #[test]
    fn executable_mappings_are_decided_by_the_exec_rules_default_included() {
        let p = policy(
            r#"
[exec]
default = "deny"
allow = ["/usr/bin/**", "/usr/lib/**"]
deny = ["/usr/bin/id"]
"#,
        );
        let map = |path: &str| {
            let d = p.evaluate(&Request::MapExec { path: path.into() });
            (d.action, d.rule_label(&p))
        };
        assert_eq!(
            map("/usr/lib/x86_64-linux-gnu/libc.so.6"),
            (Action::Allow, "exec.allow[1]".into())
        );
        assert_eq!(map("/usr/bin/id"), (Action::Deny, "exec.deny[0]".into()));
        assert_eq!(map("/tmp/evil.so"), (Action::Deny, "default".into()));
        assert_eq!(
            map("/memfd:payload (deleted)"),
            (Action::Deny, "default".into())
        );
    }

    #[test]
    fn namespaces_are_denied_by_default_under_every_policy() {
        let ns = |p: &Policy| {
            let d = p.evaluate(&Request::Namespace {
                op: NamespaceOp::Mount,
            });
            (d.action, d.rule_label(p))
        };
        let deny = (Action::Deny, "process.namespaces".to_owned());
        assert_eq!(ns(&policy("[exec]\n")), deny);
        assert_eq!(ns(&policy("[file]\ndefault = \"allow\"\n")), deny);
        assert_eq!(
            ns(&policy("[exec]\n[process]\nnamespaces = \"deny\"\n")),
            deny
        );
        assert_eq!(
            ns(&policy("[file]\n[process]\nnamespaces = \"allow\"\n")),
            (Action::Allow, "process.namespaces".to_owned())
        );
        // Every policy governs them, a network-only one too (issue 10).
        let p = policy("[network]\n");
        assert_eq!(
            p.evaluate(&Request::Namespace {
                op: NamespaceOp::UsernsCreate
            })
            .action,
            Action::Deny
        );
        for op in NamespaceOp::ALL {
            assert_eq!(NamespaceOp::from_name(op.as_str()), Some(op));
        }
    }

    #[test]
    fn subtree_rules_cover_their_directory() {
        let p = policy(
            r#"
[file]
default = "allow"
deny = ["/work/secret/**", { path = "/data/**", access = ["write"] }]
allow = [{ path = "/data", access = ["write"] }, "/work/secret/ok/**"]
"#,
        );
        let change = |path: &str, source| {
            let d = p.evaluate(&Request::Change {
                path: path.into(),
                source,
            });
            (d.action, d.rule_label(&p))
        };
        // `rmdir /work/secret`, `mv /work/secret x`: changes to the subtree.
        assert_eq!(
            change("/work/secret", false),
            (Action::Deny, "file.deny[0]".into())
        );
        assert_eq!(
            change("/work/secret", true),
            (Action::Deny, "file.deny[0]".into())
        );
        assert_eq!(
            change("/work/secret/ok", false),
            (Action::Allow, "file.allow[1]".into())
        );
        assert_eq!(
            change("/work/secretx", false),
            (Action::Allow, "default".into())
        );
        assert_eq!(change("/work", false), (Action::Allow, "default".into()));
        // An exact rule naming the directory is more specific than the subtree's cover.
        assert_eq!(
            change("/data", false),
            (Action::Allow, "file.allow[0]".into())
        );
        assert_eq!(
            change("/data/x", false),
            (Action::Deny, "file.deny[1]".into())
        );
        // Reading it as a directory listing: the subtree covers the directory for reads too.
        let d = p.evaluate(&Request::Open {
            path: "/work/secret".into(),
            read: true,
            write: false,
        });
        assert_eq!(
            (d.action, d.rule_label(&p)),
            (Action::Deny, "file.deny[0]".into())
        );
        // And for exec, `/**` still covers `/`.
        let e = policy("[exec]\ndefault = \"allow\"\ndeny = [\"/opt/**\", \"/**\"]\n");
        assert_eq!(exec(&e, "/opt"), (Action::Deny, "exec.deny[0]".into()));
        assert_eq!(exec(&e, "/"), (Action::Deny, "exec.deny[1]".into()));
    }

    #[test]
    fn a_source_must_be_readable_and_writable() {
        let p = policy(
            r#"
[file]
default = "allow"
deny = [{ path = "/secret/**", access = ["read"] }, { path = "/ro/**", access = ["write"] }]
"#,
        );
        let change = |path: &str, source| {
            let d = p.evaluate(&Request::Change {
                path: path.into(),
                source,
            });
            (d.action, d.rule_label(&p))
        };
        // `ln /secret/key k2`, `mv /secret/key k2`: the source is read-denied.
        assert_eq!(
            change("/secret/key", true),
            (Action::Deny, "file.deny[0]".into())
        );
        // Removing it is only a write.
        assert_eq!(
            change("/secret/key", false),
            (Action::Allow, "default".into())
        );
        assert_eq!(
            change("/ro/x", false),
            (Action::Deny, "file.deny[1]".into())
        );
        assert_eq!(change("/ro/x", true), (Action::Deny, "file.deny[1]".into()));
    }

    #[test]
    fn directories_above_denied_paths_cannot_be_moved() {
        let p = policy(
            r#"
[exec]
default = "allow"
deny = ["/opt/tools/bad"]
[file]
default = "allow"
deny = [{ path = "/ws/proj/secret/**", access = ["read"] }]
"#,
        );
        let change = |path: &str, source| {
            let d = p.evaluate(&Request::Change {
                path: path.into(),
                source,
            });
            (d.action, d.rule_label(&p))
        };
        // `mv /ws/proj /elsewhere` would move the secret out of its rule's reach.
        assert_eq!(
            change("/ws/proj", true),
            (Action::Deny, "file.deny[0]".into())
        );
        assert_eq!(change("/ws", true), (Action::Deny, "file.deny[0]".into()));
        assert_eq!(
            change("/opt/tools", true),
            (Action::Deny, "exec.deny[0]".into())
        );
        // Other changes to it, and moving its siblings, are not concerned.
        assert_eq!(change("/ws/proj", false), (Action::Allow, "default".into()));
        assert_eq!(change("/ws/other", true), (Action::Allow, "default".into()));
        assert_eq!(change("/ws/pro", true), (Action::Allow, "default".into()));
    }

    #[test]
    fn absent_categories_decide_nothing() {
        let p = policy("[network]\n");
        let d = p.evaluate(&Request::Exec {
            path: "/usr/bin/id".into(),
        });
        assert_eq!(d, Decision::new(Action::Allow, Reason::NotDecided));
    }

    #[test]
    fn acting_through_others() {
        let unix = |inside| Request::Unix {
            path: "/run/user/1000/bus".into(),
            inside,
        };
        // Governing exec (or file) governs ipc, with Unix sockets outside denied.
        for text in [
            "[exec]\n",
            "[file]\n",
            "[ipc]\n",
            "[network]\n[ipc]\nunix = \"deny\"\n",
        ] {
            let p = policy(text);
            let decide = |r: &Request| p.evaluate(r);
            let deny_outside = Decision::new(Action::Deny, Reason::IpcOutside);
            let inside = Decision::new(Action::Allow, Reason::IpcInside);
            assert_eq!(decide(&Request::Ptrace { inside: false }), deny_outside);
            assert_eq!(decide(&Request::Ptrace { inside: true }), inside);
            let kill = |sig, inside| Request::Signal { sig, inside };
            assert_eq!(decide(&kill(9, false)), deny_outside);
            assert_eq!(decide(&kill(15, true)), inside);
            assert_eq!(
                decide(&kill(0, false)),
                Decision::new(Action::Allow, Reason::NotDecided),
                "signal 0 only probes"
            );
            assert_eq!(
                decide(&Request::TtyInject),
                Decision::new(Action::Deny, Reason::TtyInject)
            );
            assert_eq!(
                decide(&unix(false)),
                Decision::new(Action::Deny, Reason::Default),
                "{text:?}"
            );
            assert_eq!(decide(&unix(true)), inside);
            assert_eq!(decide(&Request::SignalOwner { own: true }), inside);
            assert_eq!(
                decide(&Request::SignalOwner { own: false }),
                Decision::new(Action::Deny, Reason::SignalOwner)
            );
        }
        let p = policy("[exec]\n[ipc]\nunix = \"allow\"\n");
        assert_eq!(
            p.evaluate(&unix(false)),
            Decision::new(Action::Allow, Reason::Default)
        );
        assert_eq!(
            p.evaluate(&Request::Ptrace { inside: false }).action,
            Action::Deny
        );
        // A network-only policy decides all of it too (issue 10: e.g. asking systemd, over its
        // socket outside the confinement, to start a process elsewhere).
        let p = policy("[network]\n");
        for request in [
            Request::Ptrace { inside: false },
            Request::TtyInject,
            unix(false),
            Request::SignalOwner { own: false },
        ] {
            assert_eq!(p.evaluate(&request).action, Action::Deny, "{request:?}");
        }
    }

    #[test]
    fn unix_socket_rules() {
        let p = policy(concat!(
            "[exec]\n[ipc]\nunix = \"deny\"\n",
            "unix_allow = [\"/run/user/1000/bus\", \"/tmp/.X11-unix/**\", \"@dbus-*\", ",
            "\"@/tmp/.X11-unix/X0\", \"/srv/**\"]\n",
            "unix_deny = [\"/tmp/.X11-unix/X9\", \"@dbus-secret\", \"/srv/private/**\", ",
            "\"@*\"]\n",
        ));
        let unix = |path: &str, inside| {
            let d = p.evaluate(&Request::Unix {
                path: path.into(),
                inside,
            });
            (d.action, d.rule_label(&p))
        };
        let allow = |rule: &str| (Action::Allow, rule.to_owned());
        let deny = |rule: &str| (Action::Deny, rule.to_owned());
        assert_eq!(
            unix("/run/user/1000/bus", false),
            allow("ipc.unix_allow[0]")
        );
        assert_eq!(unix("/run/user/1001/bus", false), deny("default"));
        assert_eq!(unix("/run/user/1000/bus2", false), deny("default"));
        assert_eq!(unix("/tmp/.X11-unix/X0", false), allow("ipc.unix_allow[1]"));
        // The exact deny is more specific than the subtree allow.
        assert_eq!(unix("/tmp/.X11-unix/X9", false), deny("ipc.unix_deny[0]"));
        assert_eq!(unix("/srv/a.sock", false), allow("ipc.unix_allow[4]"));
        assert_eq!(unix("/srv/private/a.sock", false), deny("ipc.unix_deny[2]"));
        // Abstract names: an exact name beats every prefix, a longer prefix a shorter one.
        assert_eq!(unix("@dbus-session", false), allow("ipc.unix_allow[2]"));
        assert_eq!(unix("@dbus-secret", false), deny("ipc.unix_deny[1]"));
        assert_eq!(
            unix("@/tmp/.X11-unix/X0", false),
            allow("ipc.unix_allow[3]")
        );
        assert_eq!(unix("@/tmp/.X11-unix/X1", false), deny("ipc.unix_deny[3]"));
        assert_eq!(unix("@other", false), deny("ipc.unix_deny[3]"));
        // Paths and abstract names never match each other's rules.
        assert_eq!(unix("/dbus-session", false), deny("default"));
        // Inside the confinement, rules do not matter.
        assert_eq!(
            unix("/srv/private/a.sock", true),
            (Action::Allow, "default".into())
        );
        assert_eq!(
            p.evaluate(&Request::Unix {
                path: "/srv/private/a.sock".into(),
                inside: true
            })
            .reason,
            Reason::IpcInside
        );
        // Over-long targets fail closed.
        let long = format!("/srv/{}", "a".repeat(PATH_KEY_LEN));
        assert_eq!(
            p.evaluate(&Request::Unix {
                path: long,
                inside: false
            }),
            Decision::new(Action::Deny, Reason::PathTooLong)
        );
        // With `unix = "allow"`, deny rules carve exceptions out of it.
        let p = policy("[ipc]\nunix = \"allow\"\nunix_deny = [\"/var/run/docker.sock\"]\n");
        let d = |path: &str| {
            p.evaluate(&Request::Unix {
                path: path.into(),
                inside: false,
            })
        };
        assert_eq!(d("/var/run/docker.sock").action, Action::Deny);
        assert_eq!(
            d("/var/run/other.sock"),
            Decision::new(Action::Allow, Reason::Default)
        );
        // A pattern in both lists keeps its deny rule.
        let p = policy("[ipc]\nunix_allow = [\"@x\"]\nunix_deny = [\"@x\"]\n");
        let d = p.evaluate(&Request::Unix {
            path: "@x".into(),
            inside: false,
        });
        assert_eq!(d.action, Action::Deny);
        assert_eq!(d.rule_label(&p), "ipc.unix_deny[0]");
    }
}
