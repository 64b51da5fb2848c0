//! `cargo xtask vm`: runs a command as root inside a QEMU guest that boots a Debian kernel and
//! uses the host's userland (read-only, with a tmpfs overlay) as its root, with the repository
//! shared read-write at the same path.

use std::{
    fs,
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};

use crate::{
    kernel::PreparedKernel,
    util::{self, read_optional, shell_quote, write_file},
};

/// How many console bytes to keep for error messages.
const CONSOLE_TAIL_BYTES: usize = 64 * 1024;
/// How many console lines an error message shows.
const CONSOLE_TAIL_LINES: usize = 40;

/// How to run a command in the guest.
#[derive(Clone, Debug)]
pub(crate) struct VmOptions {
    /// QEMU is killed after this long.
    pub timeout: Duration,
    /// Extra environment variables for the command.
    pub env: Vec<(String, String)>,
    /// Save the command's stdout in the run directory (it still streams to the console) and
    /// return it in [`VmOutcome::stdout`].
    pub capture_stdout: bool,
    /// Copy the guest console to our stdout as it arrives.
    pub echo_console: bool,
    /// The command's working directory (default: the repository).
    pub cwd: Option<PathBuf>,
}

impl Default for VmOptions {
    fn default() -> Self {
        VmOptions {
            timeout: Duration::from_mins(20),
            env: Vec::new(),
            capture_stdout: false,
            echo_console: true,
            cwd: None,
        }
    }
}

/// The result of a command that ran to its end in the guest.
#[derive(Clone, Debug)]
pub(crate) struct VmOutcome {
    /// The command's exit status (128 + N when killed by signal N).
    pub status: i32,
    /// `uname -r` in the guest.
    pub kernel_release: String,
    /// The command's stdout, when [`VmOptions::capture_stdout`] was set.
    pub stdout: Option<String>,
    /// Wall time from QEMU's start to its exit.
    pub elapsed: Duration,
}

/// Why a guest run produced no exit status.
#[derive(Debug)]
pub(crate) struct VmFailure {
    pub reason: String,
    pub console_tail: String,
}

impl std::fmt::Display for VmFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n--- last lines of the guest console ---\n{}\n--- end of guest console ---",
            self.reason, self.console_tail
        )
    }
}

impl std::error::Error for VmFailure {}

static RUN_COUNTER: AtomicU32 = AtomicU32::new(0);

/// The directory that holds the per-run directories (inside the repository, so the guest sees
/// it through the repository share).
pub(crate) fn runs_dir() -> PathBuf {
    util::repo_root().join("target").join("oxd-vm")
}

/// The PATH of the command in the guest: the freshly built binaries first.
pub(crate) fn guest_path() -> String {
    format!(
        "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        util::target_dir().join("debug").display()
    )
}

/// Builds the stage-2 script, run by the guest's PID 1 after switching into the new root.
pub(crate) fn guest_script(
    repo: &Path,
    run_dir: &Path,
    argv: &[String],
    opts: &VmOptions,
) -> Result<String> {
    let text = |p: &Path| {
        p.to_str()
            .map(shell_quote)
            .ok_or_else(|| anyhow!("path {} is not UTF-8", p.display()))
    };
    let run_name = run_dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("run directory {} has no usable name", run_dir.display()))?;
    let cwd_q = text(opts.cwd.as_deref().unwrap_or(repo))?;
    let run_q = text(run_dir)?;
    let command = argv
        .iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ");
    let mut env_lines = String::new();
    for (key, value) in &opts.env {
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            bail!("invalid environment variable name {key:?}");
        }
        env_lines.push_str(&format!("export {key}={}\n", shell_quote(value)));
    }
    let run_command = if opts.capture_stdout {
        format!(
            "{{ {command} </dev/null; echo $? >\"$RUN/exit-status\"; }} | $B tee \"$RUN/stdout.log\"\n"
        )
    } else {
        format!("{command} </dev/null\necho $? >\"$RUN/exit-status\"\n")
    };
    Ok(format!(
        r#"# oxd xtask guest script (stage 2), run by PID 1 in the guest.
B=/bin/busybox
RUN={run_q}
m() {{ $B mkdir -p "$4" && $B mount -t "$1" -o "$2" "$3" "$4" || echo "oxd-vm: cannot mount $1 on $4" >&2; }}
m proc nosuid,nodev,noexec proc /proc
m sysfs nosuid,nodev,noexec sysfs /sys
m devtmpfs mode=0755,nosuid devtmpfs /dev
m devpts gid=5,mode=620,ptmxmode=666 devpts /dev/pts
m tmpfs mode=1777,nosuid,nodev shm /dev/shm
# /tmp and /run are tmpfs mounts made by stage 1, under the repository's mount.
m cgroup2 nsdelegate cgroup2 /sys/fs/cgroup
m bpf mode=0700 bpf /sys/fs/bpf
m securityfs rw securityfs /sys/kernel/security
$B mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
$B mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
$B ip link set lo up
$B ip -6 addr show dev lo 2>/dev/null | $B grep -q '::1/128' || $B ip -6 addr add ::1/128 dev lo 2>/dev/null
$B hostname oxd-vm
$B uname -r >"$RUN/kernel-release"
export HOME=/root
export PATH={path}
export TERM=dumb
export LANG=C.UTF-8
{env_lines}cd {cwd_q} || echo "oxd-vm: cannot enter the working directory" >&2
echo {begin}
{run_command}echo {end}
sync
$B poweroff -f
$B sleep 5
echo o >/proc/sysrq-trigger
"#,
        path = shell_quote(&guest_path()),
        begin = shell_quote(&begin_marker(run_name)),
        end = shell_quote(&end_marker(run_name)),
    ))
}

/// Runs `argv` as root in a guest booting `kernel`, streaming the console, and returns the
/// command's exit status. Fails (with the console's last lines, see [`VmFailure`]) when the
/// guest does not report one: boot failure, crash or timeout.
#[expect(
    clippy::too_many_lines,
    reason = "one sequence: write the guest's script, start QEMU, follow its console to the end"
)]
pub(crate) fn run_in_vm(
    kernel: &PreparedKernel,
    argv: &[String],
    opts: &VmOptions,
) -> Result<VmOutcome> {
    if argv.is_empty() {
        bail!("no command to run in the VM");
    }
    let repo = util::repo_root();
    let n = RUN_COUNTER.fetch_add(1, Ordering::Relaxed);
    let run_name = format!("run-{}-{n}", std::process::id());
    let run_dir = runs_dir().join(&run_name);
    if run_dir.exists() {
        fs::remove_dir_all(&run_dir)
            .with_context(|| format!("cannot clear {}", run_dir.display()))?;
    }
    let run_rel = run_dir
        .strip_prefix(&repo)
        .with_context(|| format!("{} is not inside {}", run_dir.display(), repo.display()))?;
    let run_rel = run_rel
        .to_str()
        .filter(|s| s.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| anyhow!("run directory {} has an unusual name", run_rel.display()))?
        .to_string();
    let repo_text = repo
        .to_str()
        .ok_or_else(|| anyhow!("repository path {} is not UTF-8", repo.display()))?;
    write_file(
        &run_dir.join("stage1.env"),
        format!("OXD_VM_REPO={}\n", shell_quote(repo_text)),
    )?;
    write_file(
        &run_dir.join("guest.sh"),
        guest_script(&repo, &run_dir, argv, opts)?,
    )?;

    let mut qemu = Command::new("qemu-system-x86_64");
    // One host thread runs both vCPUs in turn (`thread=single`). With a thread per vCPU the
    // 6.12 guest once died with "Oops: int3" at `bpf_lsm_file_open+0x5`: most likely a vCPU
    // ran the breakpoint the kernel writes while it patches a BPF trampoline into that
    // function after the patch was complete, which real CPUs never do (the kernel
    // synchronises every CPU between the steps). Emulated in turn, every vCPU sees each code
    // write at once. The VM stage takes about a fifth longer.
    qemu.args([
        "-accel",
        "tcg,thread=single",
        "-cpu",
        "max",
        "-m",
        "1024",
        "-smp",
        "2",
    ])
    .args(["-nographic", "-no-reboot", "-nic", "none"])
    .arg("-kernel")
    .arg(&kernel.vmlinuz)
    .arg("-initrd")
    .arg(&kernel.initramfs)
    .arg("-append")
    .arg(format!(
        "console=ttyS0 quiet panic=-1 lsm=lockdown,capability,landlock,bpf oxd.run={run_rel}"
    ))
    .arg("-virtfs")
    .arg("local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap")
    .arg("-virtfs")
    .arg(format!(
        "local,path={},mount_tag=repo,security_model=none,multidevs=remap",
        qemu_option_value(repo_text)
    ))
    .stdin(Stdio::null())
    .stdout(Stdio::piped());
    let what = util::describe(&qemu);
    let started = Instant::now();
    let mut child = qemu
        .spawn()
        .with_context(|| format!("cannot start `{what}` (Debian package qemu-system-x86)"))?;
    let tail = Arc::new(Mutex::new(Vec::<u8>::new()));
    let reader = {
        let mut stdout = child.stdout.take().context("QEMU has no stdout")?;
        let tail = Arc::clone(&tail);
        let echo = opts.echo_console;
        let mut filter = ConsoleFilter::new(&run_name);
        thread::spawn(move || {
            let mut buf = [0u8; 8192];
            let mut out = std::io::stdout();
            loop {
                let n = match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let chunk: Vec<u8> = buf[..n].iter().copied().filter(|&b| b != b'\r').collect();
                if echo {
                    // The console is best effort: a closed stdout must not stop the guest.
                    let _ = out.write_all(&filter.feed(&chunk));
                    let _ = out.flush();
                }
                if let Ok(mut tail) = tail.lock() {
                    tail.extend_from_slice(&chunk);
                    if tail.len() > CONSOLE_TAIL_BYTES {
                        let excess = tail.len() - CONSOLE_TAIL_BYTES;
                        tail.drain(..excess);
                    }
                }
            }
            if echo {
                let _ = out.write_all(&filter.finish());
                let _ = out.flush();
            }
        })
    };

    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().context("cannot wait for QEMU")? {
            break status;
        }
        if started.elapsed() > opts.timeout {
            timed_out = true;
            // Killing may race with a normal exit; wait() below settles it either way.
            let _ = child.kill();
            break child.wait().context("cannot wait for QEMU")?;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let elapsed = started.elapsed();
    // QEMU has exited, so its stdout is closed and the reader ends.
    let _ = reader.join();
    let console_tail = {
        let bytes = tail.lock().map(|t| t.clone()).unwrap_or_default();
        let text = printable(&String::from_utf8_lossy(&bytes));
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(CONSOLE_TAIL_LINES)..].join("\n")
    };

    let exit_status = read_optional(&run_dir.join("exit-status"))?;
    let kernel_release = read_optional(&run_dir.join("kernel-release"))?
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let Some(exit_status) = exit_status else {
        let reason = if timed_out {
            format!(
                "the guest ({}) did not finish within {} s and was killed; run directory kept at {}",
                kernel.release,
                opts.timeout.as_secs(),
                run_dir.display()
            )
        } else {
            format!(
                "the guest ({}) stopped without reporting the command's exit status (QEMU {status}, after {:.1} s); run directory kept at {}",
                kernel.release,
                elapsed.as_secs_f64(),
                run_dir.display()
            )
        };
        return Err(VmFailure {
            reason,
            console_tail,
        }
        .into());
    };
    let status: i32 = exit_status.trim().parse().map_err(|_| VmFailure {
        reason: format!(
            "the guest wrote an unreadable exit status {:?} to {}",
            exit_status,
            run_dir.join("exit-status").display()
        ),
        console_tail: console_tail.clone(),
    })?;
    let stdout = if opts.capture_stdout {
        Some(
            read_optional(&run_dir.join("stdout.log"))?.ok_or_else(|| VmFailure {
                reason: format!("the guest left no {}", run_dir.join("stdout.log").display()),
                console_tail: console_tail.clone(),
            })?,
        )
    } else {
        None
    };
    fs::remove_dir_all(&run_dir).with_context(|| format!("cannot remove {}", run_dir.display()))?;
    Ok(VmOutcome {
        status,
        kernel_release: kernel_release.unwrap_or_else(|| kernel.release.clone()),
        stdout,
        elapsed,
    })
}

/// Removes terminal escape sequences and other control characters (the firmware resets and
/// clears the screen), keeping newlines and tabs.
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                if chars.next_if_eq(&'[').is_some() {
                    // A CSI sequence ends with a byte in '@'..='~'.
                    while chars.next().is_some_and(|c| !('@'..='~').contains(&c)) {}
                } else {
                    chars.next();
                }
            }
            '\n' | '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

fn begin_marker(run_name: &str) -> String {
    format!("@@oxd-vm {run_name} begin@@")
}

fn end_marker(run_name: &str) -> String {
    format!("@@oxd-vm {run_name} end@@")
}

/// Passes on the console lines between the begin and end markers the guest prints around the
/// command, so firmware and boot noise stay out of the command's output (they remain in the
/// console tail shown on failure).
struct ConsoleFilter {
    begin: Vec<u8>,
    end: Vec<u8>,
    line: Vec<u8>,
    echoing: bool,
}

impl ConsoleFilter {
    fn new(run_name: &str) -> Self {
        ConsoleFilter {
            begin: begin_marker(run_name).into_bytes(),
            end: end_marker(run_name).into_bytes(),
            line: Vec::new(),
            echoing: false,
        }
    }

    /// Takes console bytes, returns the bytes to show.
    fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut shown = Vec::new();
        for &b in bytes {
            self.line.push(b);
            if b == b'\n' {
                let text = &self.line[..self.line.len() - 1];
                if text.ends_with(&self.begin) {
                    self.echoing = true;
                } else if self.echoing && text.ends_with(&self.end) {
                    // The command's last line may lack a newline: keep what precedes the marker.
                    let before = &text[..text.len() - self.end.len()];
                    if !before.is_empty() {
                        shown.extend_from_slice(before);
                        shown.push(b'\n');
                    }
                    self.echoing = false;
                } else if self.echoing {
                    shown.extend_from_slice(&self.line);
                }
                self.line.clear();
            }
        }
        shown
    }

    /// The unfinished last line, if it belongs to the command's output.
    fn finish(&mut self) -> Vec<u8> {
        let rest = std::mem::take(&mut self.line);
        if self.echoing {
            rest
        } else {
            Vec::new()
        }
    }
}

/// Escapes a value for a QEMU `-virtfs` option list, where `,` is written `,,`.
fn qemu_option_value(s: &str) -> String {
    s.replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_filter_shows_only_the_command_output() {
        let mut filter = ConsoleFilter::new("run-1-0");
        let mut shown =
            filter.feed(b"SeaBIOS\n\x1b[2J[ 1.0] boot noise\n@@oxd-vm run-1-0 begin@@\nhel");
        shown.extend(filter.feed(b"lo\nlast line without newline@@oxd-vm run-1-0 end@@\n"));
        shown.extend(filter.feed(b"[ 6.6] reboot: Power down\npartial"));
        shown.extend(filter.finish());
        assert_eq!(
            String::from_utf8_lossy(&shown),
            "hello\nlast line without newline\n"
        );

        let mut filter = ConsoleFilter::new("run-1-0");
        let mut shown = filter.feed(b"@@oxd-vm run-1-0 begin@@\nstill running");
        shown.extend(filter.finish());
        assert_eq!(String::from_utf8_lossy(&shown), "still running");
    }

    #[test]
    fn escape_sequences_are_removed_from_the_console_tail() {
        assert_eq!(
            printable("\u{1b}c\u{1b}[?7l\u{1b}[2J\u{1b}[0mSeaBIOS\r\n\tok\u{7}"),
            "SeaBIOS\n\tok"
        );
    }

    #[test]
    fn commas_are_doubled_for_qemu() {
        assert_eq!(qemu_option_value("/a,b/c"), "/a,,b/c");
        assert_eq!(qemu_option_value("/work/main"), "/work/main");
    }

    #[test]
    fn guest_script_quotes_arguments_and_environment() {
        let opts = VmOptions {
            env: vec![("OXD_BIN".into(), "/x y/oxd".into())],
            ..VmOptions::default()
        };
        let argv = ["sh".to_string(), "-c".into(), "echo 'hi'; exit 3".into()];
        let script = guest_script(
            Path::new("/work/main"),
            Path::new("/work/main/target/r"),
            &argv,
            &opts,
        )
        .expect("script");
        assert!(
            script.contains(r"sh -c 'echo '\''hi'\''; exit 3' </dev/null"),
            "{script}"
        );
        assert!(script.contains("export OXD_BIN='/x y/oxd'\n"), "{script}");
        assert!(script.contains("RUN=/work/main/target/r\n"), "{script}");
        let bad = VmOptions {
            env: vec![("A;B".into(), "x".into())],
            ..VmOptions::default()
        };
        assert!(guest_script(Path::new("/r"), Path::new("/r/t"), &argv, &bad).is_err());
    }
}
