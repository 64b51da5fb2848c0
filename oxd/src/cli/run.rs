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
    /// Every denial; allowed decisions counted in the kernel per rule and operation, written as
    /// `tally` records about every half second instead of one record each.
    Counted,
}

impl From<RecordArg> for RecordFilter {
    fn from(arg: RecordArg) -> Self {
        match arg {
            RecordArg::All => Self::All,
            RecordArg::Denied => Self::Denied,
            RecordArg::Counted => Self::Counted,
        }
    }
}

/// Parses `--ring-size` (see [`oxd::enforcer::check_ring_size`]).
pub(crate) fn parse_ring_size(arg: &str) -> Result<u32, String> {
    let bytes: u64 = arg
        .parse()
        .map_err(|_| format!("`{arg}` is not a number of bytes"))?;
    oxd::enforcer::check_ring_size(bytes)
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
    /// How many rotated parts to keep (1 to 256; each is guarded from the agent).
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(oxd_common::MAX_AUDIT_KEEP)))]
    audit_keep: u32,
    /// Serve Prometheus metrics (`OpenMetrics` text) on this address, at /metrics.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Which decisions to record; decided in the kernel, so unrecorded decisions never reach
    /// the ring buffer.
    #[arg(long, value_enum, default_value_t = RecordArg::All)]
    record: RecordArg,
    /// The most records each agent sends per second on each CPU (0: no limit); decided in
    /// the kernel. The decisions beyond are counted there per rule and written as `tally`
    /// records (`"why": "rate-limited"`), so a flood costs the log a line per rule, not one
    /// per decision.
    #[arg(long, value_name = "N", default_value_t = 0)]
    record_rate: u32,
    /// Size of the kernel's decision ring buffer in bytes: a power of two, a multiple of the
    /// page size, from 16 KiB to 1 GiB.
    #[arg(long, value_name = "BYTES", default_value_t = oxd_common::RING_BUF_BYTES, value_parser = parse_ring_size)]
    ring_size: u32,
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
            record_rate: args.record_rate,
            ring_size: args.ring_size,
            user: args.user,
            command: args.command,
        }
    }
}
