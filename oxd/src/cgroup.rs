//! cgroup v2: find the unified hierarchy, create an agent's cgroup, move a child into it, and
//! remove it again (killing whatever is left inside, so nothing outlives its confinement).

use std::{
    fs::{self, File, OpenOptions},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(transparent)]
    Host(#[from] crate::host::HostError),
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create cgroup {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove cgroup {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("processes are still alive in cgroup {path} after kill")]
    NotEmpty { path: PathBuf },
}

/// A cgroup oxd created for an agent. Dropping it kills everything left inside and removes it.
#[derive(Debug)]
pub struct AgentCgroup {
    path: PathBuf,
    id: u64,
    removed: bool,
}

impl AgentCgroup {
    /// Creates `<cgroup2 mount>/oxd/<name>`.
    pub fn create(name: &str) -> Result<Self, CgroupError> {
        let parent = crate::host::cgroup2_mount()?.join("oxd");
        fs::create_dir_all(&parent).map_err(|source| CgroupError::Create {
            path: parent.clone(),
            source,
        })?;
        let path = parent.join(name);
        fs::create_dir(&path).map_err(|source| CgroupError::Create {
            path: path.clone(),
            source,
        })?;
        let id = fs::metadata(&path)
            .map_err(|source| CgroupError::Read {
                path: path.clone(),
                source,
            })?
            .ino();
        Ok(Self {
            path,
            id,
            removed: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cgroup id the kernel reports (`bpf_get_current_cgroup_id`): the directory's inode.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The directory, for attaching cgroup programs.
    pub fn open_dir(&self) -> Result<File, CgroupError> {
        File::open(&self.path).map_err(|source| CgroupError::Read {
            path: self.path.clone(),
            source,
        })
    }

    /// `cgroup.procs`, opened for writing: writing "0" to it moves the writer into this cgroup.
    pub fn open_procs(&self) -> Result<File, CgroupError> {
        let path = self.path.join("cgroup.procs");
        OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|source| CgroupError::Read { path, source })
    }

    /// Pids of the processes in this cgroup and below.
    pub fn pids(&self) -> Vec<i32> {
        let mut out = Vec::new();
        collect_pids(&self.path, &mut out);
        out
    }

    /// Kills every process in the cgroup (and its descendants) and removes it.
    pub fn remove(mut self) -> Result<(), CgroupError> {
        self.removed = true;
        self.kill_and_remove()
    }

    fn kill_and_remove(&self) -> Result<(), CgroupError> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(CgroupError::NotEmpty {
                    path: self.path.clone(),
                });
            }
            // cgroup.kill (Linux 5.14) kills the whole subtree atomically, including processes
            // forked while we look; fall back to signalling each pid.
            let killed = fs::write(self.path.join("cgroup.kill"), "1").is_ok();
            if !killed {
                for pid in pids {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            thread::sleep(Duration::from_millis(10));
        }
        remove_tree(&self.path)
    }
}

impl Drop for AgentCgroup {
    fn drop(&mut self) {
        if !self.removed {
            if let Err(e) = self.kill_and_remove() {
                tracing::error!("{e}");
            }
        }
    }
}

fn collect_pids(dir: &Path, out: &mut Vec<i32>) {
    if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect_pids(&entry.path(), out);
            }
        }
    }
}

/// Removes a cgroup and the cgroups the agent created below it, deepest first.
fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path())?;
            }
        }
    }
    // A just-killed process can take a moment to leave the cgroup.
    let mut attempts = 0;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempts < 100 => {
                attempts += 1;
                thread::sleep(Duration::from_millis(10));
            }
            Err(source) => {
                return Err(CgroupError::Remove {
                    path: dir.to_owned(),
                    source,
                })
            }
        }
    }
}

/// The value of `key` in one of a cgroup's flat-keyed files (`cgroup.events`, `pids.events`:
/// a `key value` pair per line); `None` if the file or the key is missing.
pub fn flat_keyed(dir: &Path, file: &str, key: &str) -> Option<String> {
    let text = fs::read_to_string(dir.join(file)).ok()?;
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().to_owned())
    })
}

/// The pids controller of a cgroup: `[process] max_processes` is its `pids.max`, which the
/// kernel enforces on every fork and clone in the cgroup and below it (`EAGAIN` beyond it).
pub mod pids {
    use std::{
        fs,
        path::{Path, PathBuf},
    };

    /// Why a limit could not be set.
    #[derive(Debug, thiserror::Error)]
    pub enum PidsError {
        #[error(
            "the pids controller is not enabled for the children of {p}, and \
             `[process] max_processes` needs it: `echo +pids > {p}/cgroup.subtree_control` \
             (and in every cgroup above it), then try again",
            p = parent.display()
        )]
        NoController { parent: PathBuf },
        #[error("cannot set {path} to {value}")]
        Write {
            path: PathBuf,
            value: String,
            #[source]
            source: std::io::Error,
        },
        #[error("cannot read {path}")]
        Read {
            path: PathBuf,
            #[source]
            source: std::io::Error,
        },
    }

    /// The cgroup's `pids.max` (`max` or a number).
    pub fn max(dir: &Path) -> Result<String, PidsError> {
        let path = dir.join("pids.max");
        match fs::read_to_string(&path) {
            Ok(text) => Ok(text.trim().to_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(no_controller(dir)),
            Err(source) => Err(PidsError::Read { path, source }),
        }
    }

    fn no_controller(dir: &Path) -> PidsError {
        PidsError::NoController {
            parent: dir.parent().unwrap_or(dir).to_owned(),
        }
    }

    /// Sets the cgroup's `pids.max` to `value` (`max` or a number).
    pub fn set_max(dir: &Path, value: &str) -> Result<(), PidsError> {
        let path = dir.join("pids.max");
        if !path.exists() {
            return Err(no_controller(dir));
        }
        fs::write(&path, value).map_err(|source| PidsError::Write {
            path,
            value: value.to_owned(),
            source,
        })
    }

    /// Enables the pids controller for the children of every cgroup from `root` (the cgroup2
    /// mount) down to `dir`'s parent, where it is not yet: for the cgroups oxd makes itself
    /// (`oxd run`).
    pub fn enable_above(root: &Path, dir: &Path) -> Result<(), PidsError> {
        if dir.join("pids.max").exists() {
            return Ok(());
        }
        let Ok(below) = dir.strip_prefix(root) else {
            return Err(no_controller(dir));
        };
        let mut at = root.to_owned();
        let parts: Vec<_> = below.components().collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            enable(&at)?;
            at.push(part);
        }
        enable(&at)?;
        if dir.join("pids.max").exists() {
            Ok(())
        } else {
            Err(no_controller(dir))
        }
    }

    fn enable(dir: &Path) -> Result<(), PidsError> {
        let path = dir.join("cgroup.subtree_control");
        let on = fs::read_to_string(&path).is_ok_and(|t| t.split_whitespace().any(|c| c == "pids"));
        if on {
            return Ok(());
        }
        fs::write(&path, "+pids").map_err(|source| PidsError::Write {
            path,
            value: "+pids".to_owned(),
            source,
        })
    }

    /// How many forks and clones a pids limit refused in the cgroup and below it. Kernels with
    /// `pids.events.local` (6.10 and later) count every refusal caused by a limit in the
    /// cgroup's own `pids.events`; older ones count each refusal in the forking task's cgroup,
    /// so the whole subtree is added up.
    pub fn refused(dir: &Path) -> u64 {
        if dir.join("pids.events.local").exists() {
            return events_max(dir);
        }
        let mut total = events_max(dir);
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    total += refused(&entry.path());
                }
            }
        }
        total
    }

    /// `max` of a cgroup's `pids.events` (0 if it cannot be read).
    fn events_max(dir: &Path) -> u64 {
        super::flat_keyed(dir, "pids.events", "max")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn refusals_are_added_up_below_without_local_events() {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path();
            fs::write(root.join("pids.events"), "max 3\n").unwrap();
            fs::create_dir(root.join("a")).unwrap();
            fs::write(root.join("a/pids.events"), "max 2\n").unwrap();
            assert_eq!(refused(root), 5);
            // With local events, the cgroup's own count is hierarchical already.
            fs::write(root.join("pids.events.local"), "max 1\n").unwrap();
            assert_eq!(refused(root), 3);
        }

        #[test]
        fn a_missing_controller_names_the_fix() {
            let dir = tempfile::tempdir().unwrap();
            let err = set_max(dir.path(), "5").unwrap_err();
            assert!(err.to_string().contains("echo +pids"), "{err}");
            assert!(matches!(
                max(dir.path()),
                Err(PidsError::NoController { .. })
            ));
        }
    }
}
