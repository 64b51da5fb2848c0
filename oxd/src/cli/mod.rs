//! The `oxd` command line: argument parsing and printing, one module per subcommand. The work
//! itself is in the `oxd` library, which knows nothing of clap.

mod approve;
mod audit;
mod check;
mod ctl;
mod daemon;
mod doctor;
mod explain;
mod run;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use oxd::{enforcer::EnforcerError, run::EXIT_OXD_FAILED};
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
    Run(run::RunArgs),
    /// Show what a policy decides for one action, and which rule decides it (exit status 0 if
    /// the action would happen, 1 if it would be denied).
    Explain(explain::ExplainArgs),
    /// Check what enforcement needs from this host (BTF, BPF-LSM, cgroup v2, cgroup hooks,
    /// lockdown, bpffs, capabilities) and say what to change (exit status 1 if anything is
    /// missing).
    Doctor,
    /// Run the long-lived service: confine cgroups under named policies on request (see `oxd
    /// ctl`), replace policies atomically, keep enforcement pinned across crashes.
    Daemon(daemon::DaemonArgs),
    /// Talk to a running `oxd daemon`: confine, release, replace, the kill switch (deny-all,
    /// freeze, kill, resume), grants (grant, revoke), list, status.
    Ctl(ctl::CtlArgs),
    /// Answer requests for approval as they come: each action a rule requiring a grant denied
    /// for want of one is shown, and `y` grants exactly that action (once), so the agent's
    /// retry succeeds.
    Approve(approve::ApproveArgs),
    /// Allow one exact action of an agent for a rule that requires a grant (as `oxd ctl
    /// grant`).
    Grant {
        /// The daemon's control socket.
        #[arg(long, default_value = oxd::control::DEFAULT_SOCKET)]
        socket: PathBuf,
        #[command(flatten)]
        grant: ctl::GrantArgs,
    },
    /// Read audit logs: verify their hash chain, or print them readably.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Validate a policy file; print where and why it is wrong.
    Check {
        /// Policy file (TOML).
        policy: PathBuf,
    },
    /// Print the JSON Schema of policy files (for editors: `#:schema` in a TOML file, or the
    /// schema settings of taplo and Even Better TOML). policies/oxd-policy.schema.json is it.
    Schema,
}

/// Parses the command line, runs the subcommand and turns its outcome into an exit status.
pub(crate) fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("OXD_LOG").unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => oxd::run::run(&args.into()),
        Command::Check { policy } => check::check(&policy),
        Command::Explain(args) => explain::run(&args),
        Command::Doctor => Ok(doctor::doctor()),
        Command::Daemon(args) => oxd::daemon::daemon(args.into()),
        Command::Ctl(args) => ctl::ctl(&args),
        Command::Approve(args) => approve::run(&args),
        Command::Grant { socket, grant } => ctl::ctl(&ctl::CtlArgs {
            socket,
            command: ctl::CtlCommand::Grant(grant),
        }),
        Command::Audit(command) => audit::run(&command),
        Command::Schema => serde_json::to_string_pretty(&oxd::policy::schema())
            .map(|text| {
                println!("{text}");
                0
            })
            .map_err(Into::into),
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("oxd: error: {e:#}");
            save_verifier_log(&e);
            ExitCode::from(u8::try_from(EXIT_OXD_FAILED).unwrap_or(1))
        }
    }
}

/// A verifier rejection's message shows the end of the log; the whole log goes to a file.
fn save_verifier_log(error: &anyhow::Error) {
    let Some((program, log)) = error
        .chain()
        .find_map(|e| e.downcast_ref::<EnforcerError>()?.verifier_log())
    else {
        return;
    };
    let path =
        std::env::temp_dir().join(format!("oxd-verifier-{program}-{}.log", std::process::id()));
    match std::fs::write(&path, log) {
        Ok(()) => eprintln!("oxd: the verifier's whole log is in {}", path.display()),
        Err(e) => eprintln!(
            "oxd: cannot save the verifier's log to {}: {e}",
            path.display()
        ),
    }
}
