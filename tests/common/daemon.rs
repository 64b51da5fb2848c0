//! An `oxd daemon` under test, shared by the host and VM tests.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use super::*;

/// How long to wait for anything the daemon or a process in the VM should do.
pub(crate) const WAIT: Duration = Duration::from_mins(1);

/// How long to wait for a daemon to start: it loads and attaches every program, which under
/// an emulated guest on a loaded machine has taken most of a minute (and waits behind the
/// detaching of an earlier test's programs, which the kernel serialises).
const START_WAIT: Duration = Duration::from_mins(3);

/// An `oxd daemon` with its socket, state directory, audit log and output in a scratch
/// directory and its pins in `/sys/fs/bpf/oxd-test-NAME-PID`. Dropping it releases every target
/// (if it runs), kills it and removes its pins.
pub(crate) struct Daemon {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub bpffs: PathBuf,
    pub audit_log: PathBuf,
    /// The daemon's stdout and stderr, appended to by every start.
    pub output: PathBuf,
    pub options: Vec<String>,
    pub child: Option<Child>,
}

impl Daemon {
    /// A daemon (not started yet) with extra command-line `options`.
    pub(crate) fn new(scratch: &Scratch, name: &str, options: &[&str]) -> Self {
        Self {
            socket: scratch.path(&format!("{name}.sock")),
            state_dir: scratch.path(&format!("{name}-state")),
            bpffs: PathBuf::from(format!(
                "/sys/fs/bpf/oxd-test-{name}-{}",
                std::process::id()
            )),
            audit_log: scratch.path(&format!("{name}-audit.jsonl")),
            output: scratch.path(&format!("{name}-daemon.log")),
            options: options.iter().map(|&o| o.to_owned()).collect(),
            child: None,
        }
    }

    /// Starts the daemon (again, with the same directories) and waits until `oxd ctl status`
    /// answers.
    pub(crate) fn start(&mut self) {
        assert!(self.child.is_none(), "the daemon is already running");
        let output = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.output)
            .expect("open the daemon's output file");
        let child = Command::new(oxd_bin())
            .arg("daemon")
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--bpffs")
            .arg(&self.bpffs)
            .arg("--audit-log")
            .arg(&self.audit_log)
            .args(["--record", "all"])
            .args(&self.options)
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("dup the output file"))
            .stderr(output)
            .spawn()
            .expect("spawn oxd daemon");
        self.child = Some(child);
        let started = Instant::now();
        wait_for("oxd daemon to answer `oxd ctl status`", START_WAIT, || {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("oxd daemon exited ({status}) before it was ready (its output follows)");
            }
            self.ctl_output(&["status"]).status.success().then_some(())
        });
        eprintln!("oxd daemon ready after {:?}", started.elapsed());
    }

    pub(crate) fn pid(&self) -> libc::pid_t {
        let child = self.child.as_ref().expect("the daemon was started");
        libc::pid_t::try_from(child.id()).expect("pid fits pid_t")
    }

    pub(crate) fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on the pid of our own, not yet reaped, child.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(
            rc,
            0,
            "cannot send signal {signal} to the daemon: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Waits for the daemon to exit after a signal.
    pub(crate) fn wait_exit(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("the daemon was started");
        let status = wait_for("oxd daemon to exit", WAIT, || {
            child.try_wait().expect("wait for the daemon")
        });
        self.child = None;
        eprintln!("oxd daemon exited: {status}");
        status
    }

    pub(crate) fn ctl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(oxd_bin());
        cmd.arg("ctl").arg("--socket").arg(&self.socket).args(args);
        cmd
    }

    /// `oxd ctl --socket SOCKET ARGS...`, whatever its exit status.
    pub(crate) fn ctl_output(&self, args: &[&str]) -> Output {
        output_within(&mut self.ctl_command(args), WAIT).unwrap_or_else(|| {
            panic!(
                "oxd ctl {args:?} did not finish within {WAIT:?}\n--- daemon\n{}",
                self.output_tail()
            )
        })
    }

    /// `oxd ctl ARGS...`, which must succeed; its stdout.
    pub(crate) fn ctl(&self, args: &[&str]) -> String {
        let output = self.ctl_output(args);
        assert!(
            output.status.success(),
            "oxd ctl {args:?} failed ({}):\n--- stdout\n{}--- stderr\n{}--- daemon\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.output_tail()
        );
        String::from_utf8(output.stdout).expect("oxd ctl output is UTF-8")
    }

    pub(crate) fn confine_cgroup(&self, cgroup: &TestCgroup, policy: &Path) {
        self.ctl(&[
            "confine",
            "--cgroup",
            cgroup.path_str(),
            "--policy",
            policy.to_str().expect("utf-8 policy path"),
        ]);
    }

    /// `oxd explain --cgroup CGROUP --daemon-socket SOCKET ACTION...`: its exit code (0 if the
    /// action would happen now) and stdout.
    pub(crate) fn explain(&self, cgroup: &TestCgroup, action: &[&str]) -> (Option<i32>, String) {
        let output = output_within(
            Command::new(oxd_bin())
                .args(["explain", "--cgroup", cgroup.path_str(), "--daemon-socket"])
                .arg(&self.socket)
                .args(action),
            WAIT,
        )
        .expect("oxd explain finishes");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        eprintln!(
            "oxd explain --cgroup {} {action:?}: {}\n{stdout}{}",
            cgroup.path_str(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.code(), stdout)
    }

    /// `oxd ctl list --json`.
    pub(crate) fn list(&self) -> Vec<Value> {
        let stdout = self.ctl(&["list", "--json"]);
        parse_list(&stdout)
    }

    /// `oxd ctl status --json`.
    pub(crate) fn status(&self) -> Value {
        let stdout = self.ctl(&["status", "--json"]);
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("`oxd ctl status --json` printed {stdout:?}: {e}"))
    }

    /// One `status` request written straight to the control socket (no `oxd ctl` process to
    /// start, which under emulation takes longer than the answer): the response and how long
    /// the round trip took, connect included.
    pub(crate) fn status_round_trip(&self) -> (Value, Duration) {
        use std::io::{BufRead as _, Write as _};

        let started = Instant::now();
        let mut stream = std::os::unix::net::UnixStream::connect(&self.socket)
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.socket.display()));
        stream
            .set_read_timeout(Some(WAIT))
            .expect("set a read timeout");
        stream
            .write_all(b"{\"op\":\"status\"}\n")
            .expect("write the request");
        let mut line = String::new();
        BufReader::new(&stream)
            .read_line(&mut line)
            .expect("read the response");
        let elapsed = started.elapsed();
        let response = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the daemon answered {line:?}: {e}"));
        (response, elapsed)
    }

    /// The `list --json` entry of `cgroup`, if it is confined.
    pub(crate) fn target(&self, cgroup: &TestCgroup) -> Option<Value> {
        find_target(&self.list(), cgroup)
    }

    /// The last lines the daemon printed.
    pub(crate) fn output_tail(&self) -> String {
        let text = fs::read_to_string(&self.output).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(80)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("--- oxd daemon output\n{}", self.output_tail());
        }
        if let Some(mut child) = self.child.take() {
            if matches!(child.try_wait(), Ok(None)) {
                if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                    // SAFETY: kill(2) on our own child, which has not been reaped.
                    unsafe { libc::kill(pid, libc::SIGCONT) };
                }
                match output_within(
                    &mut self.ctl_command(&["release", "--all"]),
                    Duration::from_secs(30),
                ) {
                    Some(out) if out.status.success() => {}
                    Some(out) => eprintln!(
                        "cleanup: oxd ctl release --all failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    ),
                    None => eprintln!("cleanup: oxd ctl release --all timed out"),
                }
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Unpinning the links detaches the programs.
        if let Err(e) = fs::remove_dir_all(&self.bpffs) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("cleanup: cannot remove {}: {e}", self.bpffs.display());
            }
        }
    }
}

pub(crate) fn parse_list(stdout: &str) -> Vec<Value> {
    match serde_json::from_str(stdout) {
        Ok(Value::Array(entries)) => entries,
        other => {
            panic!("`oxd ctl list --json` must print an array, printed {stdout:?} ({other:?})")
        }
    }
}

pub(crate) fn find_target(list: &[Value], cgroup: &TestCgroup) -> Option<Value> {
    list.iter()
        .find(|entry| entry["cgroup_id"].as_u64() == Some(cgroup.id()))
        .cloned()
}

/// Runs the probe with `actions` inside `cgroup`; its results.
pub(crate) fn probe_in(cgroup: &TestCgroup, actions: &[&str]) -> Vec<Value> {
    let output = output_within(cgroup.command(probe_bin()).args(actions), WAIT)
        .unwrap_or_else(|| panic!("the probe {actions:?} did not finish within {WAIT:?}"));
    eprintln!(
        "probe in {} {actions:?}: {}\n{}{}",
        cgroup.path().display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "the probe failed: {output:?}");
    probe_results(&output)
}

/// Files (pins) left below `dir`; none if it does not exist.
pub(crate) fn pinned_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                found.extend(pinned_files(&entry.path()));
            } else {
                found.push(entry.path());
            }
        }
    }
    found
}
