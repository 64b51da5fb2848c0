//! `oxd audit verify` and `oxd audit tail`: reading audit logs.

use std::path::PathBuf;

use anyhow::Result;
use oxd::audit::read::{render, tail, verify, TailOptions};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum AuditCommand {
    /// Check the hash chain of one log, or of rotated parts given oldest first: report every
    /// edited, removed or reordered record by file and line, and each `oxd run` whose decision
    /// records do not number what the kernel counted (exit status 1 if any).
    Verify {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// The first file may continue parts that rotation has deleted (its first record need
        /// not be seq 0).
        #[arg(long)]
        partial: bool,
    },
    /// Print records readably, one per line; what the agent chose (paths, socket and command
    /// names) is shown escaped (`\n`, `\x1b`, `\u{202e}`, `\xff` for a byte that is not
    /// UTF-8, `\\`), so it cannot forge a line or send the terminal control sequences.
    Tail {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Keep printing records as they are appended.
        #[arg(short, long)]
        follow: bool,
        /// Only denials.
        #[arg(long)]
        denied: bool,
        /// Start with the last N records.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
    },
}

pub(crate) fn run(command: &AuditCommand) -> Result<i32> {
    match command {
        AuditCommand::Verify { files, partial } => {
            let report = verify(files, *partial)?;
            for problem in &report.problems {
                println!("{problem}");
            }
            if report.problems.is_empty() {
                let runs = match report.counts_checked {
                    0 => String::new(),
                    n => format!(", the records of {n} run(s) match the kernel's counts"),
                };
                println!("ok: {} records, hash chain intact{runs}", report.records);
                Ok(0)
            } else {
                println!(
                    "FAILED: {} problem(s) in {} records",
                    report.problems.len(),
                    report.records
                );
                Ok(1)
            }
        }
        AuditCommand::Tail {
            file,
            follow,
            denied,
            lines,
        } => {
            let options = TailOptions {
                follow: *follow,
                denied: *denied,
                last: *lines,
            };
            tail(file, options, &mut |record| println!("{}", render(record)))?;
            Ok(0)
        }
    }
}
