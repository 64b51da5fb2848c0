use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use oxd::{
    policy::Policy,
    run::{self, RunArgs},
};
use tracing_subscriber::EnvFilter;

/// Execution authorization for AI agents, enforced by the Linux kernel.
#[derive(Debug, Parser)]
#[command(name = "oxd", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a command confined by a policy: its execs and connects are decided in the kernel.
    Run(RunArgs),
    /// Validate a policy file; print where and why it is wrong.
    Check {
        /// Policy file (TOML).
        policy: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("OXD_LOG").unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Check { policy } => check(&policy),
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("oxd: error: {e:#}");
            ExitCode::from(run::EXIT_OXD_FAILED as u8)
        }
    }
}

fn check(path: &std::path::Path) -> anyhow::Result<i32> {
    let policy = Policy::load(path)?;
    let exec = policy.exec.as_ref().map_or_else(
        || "not decided".to_owned(),
        |e| format!("{} rules, default {}", e.rules.len(), e.default.as_str()),
    );
    let network = policy.network.as_ref().map_or_else(
        || "not decided".to_owned(),
        |n| format!("{} rules, default {}", n.rules.len(), n.default.as_str()),
    );
    println!(
        "{}: ok: policy `{}` (sha256 {}), mode {}; exec: {exec}; network: {network}",
        path.display(),
        policy.name,
        &policy.sha256[..16],
        policy.mode.as_str(),
    );
    Ok(0)
}
