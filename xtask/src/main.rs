//! Developer tasks for oxd: `cargo xtask setup | vm | test | verifier-stats | bench`.

mod bench;
mod kernel;
mod setup;
mod test;
mod util;
mod verifier;
mod vm;

use std::{process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::kernel::Series;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Set-up, VM harness and test driver for oxd"
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing needs (Debian packages, rust-src, bpf-linker, guest
    /// kernels and their initramfs); a second run installs nothing.
    Setup,
    /// Run a command as root in a QEMU guest booting a Debian kernel, with the host's userland
    /// (read-only, writes go to a tmpfs) and the repository (read-write) at the same paths.
    /// Exits with the command's status.
    Vm {
        /// The guest kernel series.
        #[arg(long, value_enum, default_value = "6.12")]
        kernel: Series,
        /// Kill the guest after this many seconds.
        #[arg(long, default_value_t = 1200, value_name = "SECS")]
        timeout: u64,
        /// Do not build oxd first.
        #[arg(long)]
        no_build: bool,
        /// The command and its arguments.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Build everything, run the host tests and the VM tests on every guest kernel, write
    /// target/oxd-test-report.json and print `N passed, N failed` last.
    Test,
    /// Load every kernel program in a guest on each kernel (attaching none) and print how many
    /// instructions the verifier processed for each (`program kernel verified_insns
    /// xlated_insns`).
    VerifierStats {
        /// Only this guest kernel series (default: every one).
        #[arg(long, value_enum)]
        kernel: Option<Series>,
    },
    /// Measure what confinement costs on this host (as root): loopback connect under 0, 1,000
    /// and 10,000 network rules, open/close, fork+exec, UDP sends, audit records/s and the
    /// cold start of `oxd run`, each against the bare kernel, interleaved over rounds; prints a
    /// table and writes target/bench.json.
    Bench(bench::Options),
}

fn main() -> ExitCode {
    util::prepend_cargo_bin_to_path();
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Setup => setup::run(false).into_result().map(|_| ExitCode::SUCCESS),
        Task::Vm {
            kernel,
            timeout,
            no_build,
            command,
        } => vm_command(kernel, Duration::from_secs(timeout), no_build, &command),
        Task::Test => Ok(if test::run() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }),
        Task::VerifierStats { kernel } => {
            let series = kernel.map_or(Series::ALL.to_vec(), |k| vec![k]);
            verifier::run(&series).map(|()| ExitCode::SUCCESS)
        }
        Task::Bench(options) => bench::run(&options).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn vm_command(
    series: Series,
    timeout: Duration,
    no_build: bool,
    argv: &[String],
) -> Result<ExitCode> {
    let setup = setup::run(true);
    let Some(kernel) = setup.kernel(series) else {
        return setup
            .into_result()
            .and_then(|_| anyhow::bail!("setup prepared no {series} kernel"));
    };
    if !no_build {
        eprintln!("[vm] building oxd: cargo build --package oxd");
        util::run(util::cargo().args(["build", "--package", "oxd"])).context(
            "building oxd failed (its build script builds the eBPF programs with aya-build, which \
             needs the nightly toolchain with rust-src and bpf-linker; see the output above)",
        )?;
    }
    eprintln!(
        "[vm] booting {} ({}) to run: {}",
        kernel.release,
        kernel.package,
        argv.iter()
            .map(|a| util::shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let opts = vm::VmOptions {
        timeout,
        ..vm::VmOptions::default()
    };
    let outcome = vm::run_in_vm(kernel, argv, &opts)?;
    eprintln!(
        "[vm] {}: exit status {} after {:.1} s",
        outcome.kernel_release,
        outcome.status,
        outcome.elapsed.as_secs_f64()
    );
    // Exit statuses are 0..=255 in practice; anything else becomes a plain failure.
    Ok(u8::try_from(outcome.status).map_or(ExitCode::FAILURE, ExitCode::from))
}
