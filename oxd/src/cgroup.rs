//! cgroup v2: find the unified hierarchy, create an agent's cgroup, move a child into it, and
//! remove it again (killing whatever is left inside, so nothing outlives its confinement).

use std::{
    fs::{self, File, OpenOptions},
    io::Write as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup v2 hierarchy is mounted (looked in /proc/self/mountinfo); mount one with `mount -t cgroup2 none /sys/fs/cgroup`")]
    NoCgroup2,
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

/// The mount point of the cgroup v2 hierarchy (e.g. `/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on hybrid systems).
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let path = Path::new("/proc/self/mountinfo");
    let text = fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_cgroup2_mount(&text).ok_or(CgroupError::NoCgroup2)
}

fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split(' ').next()? != "cgroup2" {
            return None;
        }
        let mount_point = left.split(' ').nth(4)?;
        Some(PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
        let parent = cgroup2_mount()?.join("oxd");
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

/// Writes "0" to an open `cgroup.procs`, moving the calling process. Async-signal-safe: meant to
/// run in a child between fork and exec.
pub fn join_from_child(procs: &File) -> std::io::Result<()> {
    (&*procs).write_all(b"0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_mountinfo() {
        let info = "24 31 0:22 / /sys rw,nosuid shared:7 - sysfs sysfs rw\n\
                    35 24 0:30 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_mount(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            parse_cgroup2_mount("24 31 0:22 / /sys rw - sysfs sysfs rw\n"),
            None
        );
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
    }
}
