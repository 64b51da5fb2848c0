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
