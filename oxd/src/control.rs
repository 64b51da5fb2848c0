//! The daemon's control API: requests and responses, and the client side of one call.
//!
//! Transport: a Unix stream socket (default `/run/oxd/oxd.sock`, mode 0600, and the daemon
//! only answers peers with its own uid, so root only by default). A client connects, writes
//! one request as a single JSON object followed by a newline, and reads one response line. The
//! formats are documented in `oxd/docs/control-api.md`.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::policy::Policy;

/// Where the daemon listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/oxd/oxd.sock";

/// A policy sent to the daemon: the file name (for messages) and its text, exactly as read.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PolicySource {
    pub path: PathBuf,
    pub text: String,
}

impl PolicySource {
    /// Reads the policy at `path` and validates it here first, so the user sees
    /// `file:line:col` without a round trip to the daemon.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Policy::parse(path, &text)?;
        Ok(Self {
            path: path.to_owned(),
            text,
        })
    }
}

/// What to confine or release: a cgroup v2 directory, or the cgroup a process is in.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Cgroup(PathBuf),
    Pid(i32),
    /// A cgroup by its id (a record's `cgroup_id`): the confined target it is, or is below.
    /// Not for `confine`.
    CgroupId(u64),
}

/// One request.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Confine `target` (and every cgroup below it) under `policy`. A policy of the same name
    /// must be the same text, or not loaded yet.
    Confine {
        target: Target,
        policy: PolicySource,
    },
    /// Stop confining `target`, or every target with `all`.
    Release {
        target: Option<Target>,
        #[serde(default)]
        all: bool,
    },
    /// Replace the loaded policy of the same name, for every target confined under it.
    Replace { policy: PolicySource },
    /// The kill switch: deny every action of a confined target from now on (its next action
    /// is denied), and with `freeze` or `kill` also freeze or kill its processes. Lifted by
    /// `Resume`.
    Halt { target: Target, how: Halt },
    /// Lift the kill switch: the target's policy decides again, and frozen processes thaw.
    Resume { target: Target },
    /// Allow one exact action of a confined target that a rule requiring a grant governs:
    /// `uses` times (default 1), until `expires_in_ms` from now (default 10 minutes).
    Grant {
        target: Target,
        /// The action: a connect to (or a datagram sent to) this address.
        connect: Option<std::net::SocketAddr>,
        /// The connect's protocol: `tcp` (the default) or `udp`.
        #[serde(default = "tcp")]
        protocol: GrantProtocol,
        #[serde(default = "one_use")]
        uses: u64,
        #[serde(default = "ten_minutes")]
        expires_in_ms: u64,
    },
    /// Withdraw grant `id` (its unused uses go).
    Revoke { id: u32 },
    /// Stream the decisions the daemon records, as they are written: the answer is
    /// `{"ok":true,...}`, then one line per decision (`{"record":{...}}`), and
    /// `{"lagged":N}` when this subscriber fell N decisions behind (the audit log has them).
    Subscribe {
        #[serde(default)]
        only: Subscription,
    },
    /// The confined targets.
    List,
    /// The daemon's state and counters.
    Status,
    /// The policy a confined target is under now, with its live state (`list`'s entry): what
    /// `oxd explain --cgroup` judges an action by.
    Show { target: Target },
}

fn one_use() -> u64 {
    1
}

fn ten_minutes() -> u64 {
    600_000
}

fn tcp() -> GrantProtocol {
    GrantProtocol::Tcp
}

/// A granted network action's protocol.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum GrantProtocol {
    Tcp,
    Udp,
}

impl GrantProtocol {
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// One grant, as `list` reports it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct GrantInfo {
    pub id: u32,
    /// `connect 127.0.0.1:8080/tcp`.
    pub action: String,
    /// Uses left.
    pub uses: u64,
    /// Milliseconds until it expires (0: expired).
    pub expires_in_ms: u64,
}

/// Which decisions a subscriber gets.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Subscription {
    /// Every decision recorded.
    #[default]
    All,
    /// Denials only.
    Denied,
    /// Requests for approval only: actions a rule requiring a grant denied for want of one.
    Approvals,
}

impl Subscription {
    /// Whether a subscriber of this kind gets `record`.
    pub fn wants(self, record: &crate::audit::Record) -> bool {
        match self {
            Self::All => true,
            Self::Denied => record.decision == "deny",
            Self::Approvals => record.is_approval_request(),
        }
    }
}

/// One line of a subscription after the answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Streamed {
    /// A decision, as the audit log has it (without the chain's `seq` and `prev`).
    Record(Box<crate::audit::Record>),
    /// This many decisions were not sent: the subscriber read too slowly.
    Lagged(u64),
}

/// How the kill switch stops a target.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Halt {
    /// Every action of the target is denied (recorded with the reason `halted`); its
    /// processes go on with what they already hold (open files and connections).
    DenyAll,
    /// `DenyAll`, and its processes are frozen (`cgroup.freeze`): they run nothing until
    /// resumed.
    Freeze,
    /// `DenyAll`, and its processes are killed (`cgroup.kill`).
    Kill,
}

impl Halt {
    /// The name the CLI and the audit log use.
    pub fn name(self) -> &'static str {
        match self {
            Self::DenyAll => "deny-all",
            Self::Freeze => "freeze",
            Self::Kill => "kill",
        }
    }
}

/// One confined target.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TargetInfo {
    pub cgroup: PathBuf,
    pub cgroup_id: u64,
    pub policy: String,
    pub sha256: String,
    pub generation: u64,
    /// How the kill switch stopped it, if it did.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub halted: Option<Halt>,
    /// Its policy's budgets, and what is left of each in the current window.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub budgets: Vec<BudgetInfo>,
    /// Its policy's connection limits, and how many sockets hold a slot of each.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub connections: Vec<ConnectionInfo>,
    /// Its grants, used up and expired ones included until the daemon removes them.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub grants: Vec<GrantInfo>,
}

/// One budget of a target's policy, as the kernel counts it for the target.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BudgetInfo {
    /// The rule that has it (`network.allow[0]`).
    pub rule: String,
    /// Actions allowed per window.
    pub count: u32,
    /// The window (`1m`, `1h 30m`).
    pub per: String,
    /// Actions counted in the current window (0 when none has started, or it has ended).
    pub used: u32,
    /// Milliseconds until the current window ends (and the budget refills); absent when no
    /// window is running.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub refills_in_ms: Option<u64>,
}

/// One connection limit of a target's policy, as the kernel counts it for the target.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The rule that has it (`network.allow[0]`).
    pub rule: String,
    /// Sockets allowed open at once.
    pub max: u32,
    /// Sockets open now that took a slot (closed ones have given theirs back).
    pub open: u32,
}

/// One loaded policy generation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PolicyInfo {
    pub name: String,
    pub sha256: String,
    pub generation: u64,
    pub slot: u32,
    pub targets: usize,
}

/// The daemon's state and counters.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    pub pid: u32,
    pub version: String,
    /// Whether this daemon adopted enforcement pinned by an earlier one.
    pub adopted: bool,
    /// Whether BPF-LSM programs are attached (exec and file rules can be enforced).
    pub lsm: bool,
    pub bpffs: PathBuf,
    pub audit_log: PathBuf,
    pub targets: usize,
    /// The newest policy generation handed out.
    pub generation: u64,
    pub policies: Vec<PolicyInfo>,
    /// Decisions written to the audit log by this daemon process.
    pub records: u64,
    /// Decisions denied since the maps were created (enforced denials).
    pub denied: u64,
    /// Decisions lost to a full ring buffer since the maps were created.
    pub ringbuf_lost: u64,
    /// Decisions the kernel put into the ring buffer since the pinned maps were created: with
    /// `records` (a fresh daemon) and no losses, every one is written once `records` reaches
    /// it.
    #[serde(default)]
    pub submitted: u64,
}

/// One response: `ok` and either the call's data or an error message.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub targets: Option<Vec<TargetInfo>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status: Option<Status>,
    /// The grant a `grant` request made.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub grant: Option<GrantInfo>,
    /// What `show` answers.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub shown: Option<Shown>,
}

/// A confined target's policy as loaded (its file and text) and the target as `list` reports
/// it (generation, budgets, connections, grants).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Shown {
    pub path: PathBuf,
    pub text: String,
    pub target: TargetInfo,
}

impl Response {
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(message.into()),
            message: None,
            targets: None,
            status: None,
            grant: None,
            shown: None,
        }
    }

    pub fn done(message: impl Into<String>) -> Self {
        Self {
            ok: true,
            error: None,
            message: Some(message.into()),
            targets: None,
            status: None,
            grant: None,
            shown: None,
        }
    }

    pub fn granted(message: impl Into<String>, grant: GrantInfo) -> Self {
        Self {
            grant: Some(grant),
            ..Self::done(message)
        }
    }

    pub fn targets(targets: Vec<TargetInfo>) -> Self {
        Self {
            targets: Some(targets),
            message: None,
            ..Self::done("")
        }
    }

    pub fn status(status: Status) -> Self {
        Self {
            status: Some(status),
            message: None,
            ..Self::done("")
        }
    }
}

/// Sends one request and returns the daemon's response.
fn connect(socket: &Path) -> Result<UnixStream> {
    UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot connect to the oxd daemon at {} (is `oxd daemon` running, and are you \
             root?)",
            socket.display()
        )
    })
}

/// Subscribes to the daemon's decisions (see [`Request::Subscribe`]): an iterator over the
/// lines of the stream, which ends when the daemon closes it.
///
/// # Errors
///
/// When the daemon cannot be reached or refuses the subscription.
pub fn subscribe(
    socket: &Path,
    only: Subscription,
) -> Result<impl Iterator<Item = Result<Streamed>>> {
    let mut stream = connect(socket)?;
    let mut line = serde_json::to_vec(&Request::Subscribe { only }).context("cannot encode")?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .with_context(|| format!("cannot subscribe on {}", socket.display()))?;
    let mut lines = BufReader::new(stream).lines();
    let answer: Response = match lines.next() {
        Some(Ok(answer)) => serde_json::from_str(&answer).context("cannot decode the answer")?,
        _ => bail!("the daemon closed the connection without an answer"),
    };
    if !answer.ok {
        bail!(
            "{}",
            answer.error.unwrap_or_else(|| "the daemon refused".into())
        );
    }
    Ok(lines.map(|line| {
        let line = line.context("cannot read the subscription")?;
        serde_json::from_str(&line).context("cannot decode a streamed decision")
    }))
}

pub fn call(socket: &Path, request: &Request) -> Result<Response> {
    let mut stream = connect(socket)?;
    stream
        .set_read_timeout(Some(Duration::from_mins(2)))
        .context("cannot set a timeout on the control socket")?;
    let mut line = serde_json::to_vec(request).context("cannot encode the request")?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .with_context(|| format!("cannot send the request to {}", socket.display()))?;
    let mut reply = String::new();
    BufReader::new(&stream)
        .read_line(&mut reply)
        .with_context(|| format!("cannot read the daemon's answer on {}", socket.display()))?;
    if reply.is_empty() {
        bail!(
            "the daemon at {} closed the connection without an answer",
            socket.display()
        );
    }
    serde_json::from_str(&reply).context("cannot decode the daemon's answer")
}
