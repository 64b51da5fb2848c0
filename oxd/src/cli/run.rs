//! `oxd run`'s arguments, and `--record`, which `oxd daemon` shares.

use std::{ffi::OsString, net::SocketAddr, path::PathBuf};

use oxd::{
    audit::{RecordFilter, Rotation},
    run::RunOptions,
};

/// Which decisions to record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum RecordArg {
    /// Every decision.
    #[default]
    All,
    /// Only denials (enforced or, in audit mode, not).
    Denied,
}

impl From<RecordArg> for RecordFilter {
    fn from(arg: RecordArg) -> Self {
        match arg {
            RecordArg::All => Self::All,
            RecordArg::Denied => Self::Denied,
        }
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// Policy file (TOML) to enforce.
    #[arg(long, value_name = "FILE")]
    policy: PathBuf,
    /// Append audit records (JSON lines) to this file instead of writing them to stderr.
    #[arg(long, value_name = "PATH")]
    audit_log: Option<PathBuf>,
    /// Rotate the audit log when it would grow past this many bytes (FILE -> FILE.1 -> ...).
    #[arg(long, value_name = "BYTES", requires = "audit_log")]
    audit_max_bytes: Option<u64>,
    /// How many rotated parts to keep.
    #[arg(long, value_name = "N", default_value_t = 5)]
    audit_keep: u32,
    /// Serve Prometheus metrics (`OpenMetrics` text) on this address, at /metrics.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Which decisions to record.
    #[arg(long, value_enum, default_value_t = RecordArg::All)]
    record: RecordArg,
    /// Run the command as this user (NAME, UID, NAME:GROUP or UID:GID) instead of as oxd's own
    /// user: after the command is confined and before it starts, its supplementary groups, group
    /// and user are set, its capability bounding set cleared and `no_new_privs` set. Running the
    /// agent without privileges is the recommended setup.
    #[arg(long, value_name = "USER")]
    user: Option<String>,
    /// The command to confine, and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

impl From<RunArgs> for RunOptions {
    fn from(args: RunArgs) -> Self {
        Self {
            policy: args.policy,
            audit_log: args.audit_log,
            rotation: args
                .audit_max_bytes
                .map(|max| Rotation::new(max, args.audit_keep)),
            metrics: args.metrics,
            record: args.record.into(),
            user: args.user,
            command: args.command,
        }
    }
}
