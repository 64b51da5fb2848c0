//! `oxd run --user`: the agent's privileges are dropped after it is confined and before its
//! command starts. Root agents are supported (the guard keeps them from switching oxd off),
//! but an agent without privileges gives an attacker who takes it over far less to work with:
//! the kernel's own permission checks then stand in front of everything oxd decides.

use std::{ffi::CString, io};

use anyhow::{bail, Context as _, Result};
use nix::unistd::{Gid, Group, Uid, User};

/// Whom the agent runs as, resolved before the fork (the child may not allocate or read the
/// user database).
#[derive(Clone, Debug)]
pub struct RunAs {
    uid: u32,
    gid: u32,
    /// Supplementary groups: the user's groups when the user database knows the user, else
    /// only `gid`.
    groups: Vec<libc::gid_t>,
    /// The user's name and home directory, for `USER`, `LOGNAME` and `HOME`, when known.
    name: Option<String>,
    home: Option<std::path::PathBuf>,
    /// The highest capability number this kernel knows (`/proc/sys/kernel/cap_last_cap`).
    cap_last: u32,
}

impl RunAs {
    /// Parses `NAME`, `UID`, `NAME:GROUP` or `UID:GID` (a group by name or number).
    pub fn parse(spec: &str) -> Result<Self> {
        let (user_part, group_part) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        if user_part.is_empty() || group_part.is_some_and(str::is_empty) {
            bail!("--user {spec:?}: expected NAME, UID, NAME:GROUP or UID:GID");
        }
        let user = if let Ok(uid) = user_part.parse::<u32>() {
            User::from_uid(Uid::from_raw(uid))
                .with_context(|| format!("cannot look up uid {uid}"))?
                .ok_or(uid)
        } else {
            let user = User::from_name(user_part)
                .with_context(|| format!("cannot look up user {user_part:?}"))?;
            match user {
                Some(user) => Ok(user),
                None => bail!("--user: no user named {user_part:?}"),
            }
        };
        let gid = match group_part {
            Some(g) => match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => Group::from_name(g)
                    .with_context(|| format!("cannot look up group {g:?}"))?
                    .with_context(|| format!("--user: no group named {g:?}"))?
                    .gid
                    .as_raw(),
            },
            None => match &user {
                Ok(user) => user.gid.as_raw(),
                Err(uid) => bail!(
                    "--user {spec:?}: uid {uid} has no entry in the user database, so name its \
                     group too (UID:GID)"
                ),
            },
        };
        let uid = match &user {
            Ok(user) => user.uid.as_raw(),
            Err(uid) => *uid,
        };
        if uid == 0 {
            bail!("--user {spec:?} is root: leave --user out to run the agent as root");
        }
        let groups = match &user {
            Ok(user) => {
                let name = CString::new(user.name.as_str()).context("user name")?;
                nix::unistd::getgrouplist(&name, Gid::from_raw(gid))
                    .with_context(|| format!("cannot list the groups of {}", user.name))?
                    .into_iter()
                    .map(Gid::as_raw)
                    .collect()
            }
            Err(_) => vec![gid],
        };
        let cap_last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .context("cannot read /proc/sys/kernel/cap_last_cap")?
            .trim()
            .parse()
            .context("cannot parse /proc/sys/kernel/cap_last_cap")?;
        Ok(Self {
            uid,
            gid,
            groups,
            name: user.as_ref().ok().map(|u| u.name.clone()),
            home: user.as_ref().ok().map(|u| u.dir.clone()),
            cap_last,
        })
    }

    /// `USER`, `LOGNAME` and `HOME` for the command, when the user database knows the user.
    pub fn environment(&self) -> Vec<(&'static str, std::ffi::OsString)> {
        let mut env = Vec::new();
        if let Some(name) = &self.name {
            env.push(("USER", name.into()));
            env.push(("LOGNAME", name.into()));
        }
        if let Some(home) = &self.home {
            env.push(("HOME", home.into()));
        }
        env
    }

    /// Drops to the user in the forked child, before exec: clears the capability bounding set
    /// and the ambient set, sets the supplementary groups, the group and the user (real,
    /// effective and saved), then `no_new_privs`, and checks that root cannot be regained.
    /// Only async-signal-safe system calls.
    pub fn apply(&self) -> io::Result<()> {
        let check = |rc: libc::c_int| {
            if rc == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        };
        // SAFETY: plain system calls on integers and on a slice this process owns.
        unsafe {
            for cap in 0..=self.cap_last {
                check(libc::prctl(
                    libc::PR_CAPBSET_DROP,
                    libc::c_ulong::from(cap),
                    0,
                    0,
                    0,
                ))?;
            }
            check(libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            ))?;
            check(libc::setgroups(self.groups.len(), self.groups.as_ptr()))?;
            check(libc::setresgid(self.gid, self.gid, self.gid))?;
            check(libc::setresuid(self.uid, self.uid, self.uid))?;
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            // Had anything kept root, this would succeed.
            if libc::setresuid(0, 0, 0) == 0 || libc::geteuid() != self.uid {
                return Err(io::Error::from_raw_os_error(libc::EPERM));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::RunAs;

    #[test]
    fn parses_names_numbers_and_groups() {
        let nobody = RunAs::parse("nobody").expect("nobody exists");
        assert_eq!(nobody.uid, 65534);
        assert!(nobody.groups.contains(&nobody.gid));
        let numeric = RunAs::parse("65534:65534").expect("numbers");
        assert_eq!((numeric.uid, numeric.gid), (65534, 65534));
        let unknown = RunAs::parse("4242:4243").expect("uid without entry, with a group");
        assert_eq!(
            (unknown.uid, unknown.gid, unknown.groups.as_slice()),
            (4242, 4243, &[4243][..])
        );
        assert!(unknown.environment().is_empty());
        for bad in ["", ":1", "1:", "4242", "root", "0:0", "oxd-no-such-user"] {
            assert!(RunAs::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
