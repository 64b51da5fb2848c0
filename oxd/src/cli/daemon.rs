//! `oxd daemon`'s arguments.

use std::{net::SocketAddr, path::PathBuf};

use oxd::{
    audit::Rotation,
    control::DEFAULT_SOCKET,
    daemon::{DaemonOptions, OnExit, DEFAULT_AUDIT_LOG, DEFAULT_BPFFS, DEFAULT_STATE_DIR},
};

use super::run::{parse_ring_size, RecordArg};

/// What SIGTERM does to enforcement.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OnExitArg {
    /// Leave every target confined (pinned); a restarted daemon adopts them.
    #[default]
    Keep,
    /// Release every target and remove the pins.
    Release,
}

#[derive(Debug, clap::Args)]
pub(crate) struct DaemonArgs {
    /// Control socket (created mode 0600; only peers with the daemon's uid are answered).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Directory for the daemon's state file.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// bpffs directory for pinned maps and links.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_BPFFS)]
    bpffs: PathBuf,
    /// Audit log (JSON lines, hash-chained; appended to, chain continued).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_AUDIT_LOG)]
    audit_log: PathBuf,
    /// Rotate the audit log when it would grow past this many bytes (FILE -> FILE.1 -> ...).
    #[arg(long, value_name = "BYTES")]
    audit_max_bytes: Option<u64>,
    /// How many rotated parts to keep (1 to 256; each is guarded from the agent).
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(oxd_common::MAX_AUDIT_KEEP)))]
    audit_keep: u32,
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
    /// Serve Prometheus metrics (`OpenMetrics` text) on this address, at /metrics.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// What SIGTERM/SIGINT does to enforcement.
    #[arg(long, value_enum, default_value_t = OnExitArg::Keep)]
    on_exit: OnExitArg,
}

impl From<DaemonArgs> for DaemonOptions {
    fn from(args: DaemonArgs) -> Self {
        Self {
            socket: args.socket,
            state_dir: args.state_dir,
            bpffs: args.bpffs,
            audit_log: args.audit_log,
            rotation: args
                .audit_max_bytes
                .map(|max| Rotation::new(max, args.audit_keep)),
            record: args.record.into(),
            record_rate: args.record_rate,
            ring_size: args.ring_size,
            metrics: args.metrics,
            on_exit: match args.on_exit {
                OnExitArg::Keep => OnExit::Keep,
                OnExitArg::Release => OnExit::Release,
            },
        }
    }
}
