//! Grants: `oxd ctl grant` allows one exact action of a confined target, that a rule requiring a
//! grant governs, a number of times until an expiry; the kernel takes one use per action (see
//! `oxd-ebpf/src/grant.rs`), so a repeat beyond them is denied. `oxd ctl revoke` withdraws one.
//!
//! The pinned `GRANTS` map is the whole truth about grants: a restarted daemon finds them there.
//! Used-up grants stay until they expire (a replay is then recorded as such, naming the grant);
//! expired ones a minute later, on the daemon's tick. Each grant and revocation is written into the
//! audit log (a `grant` record) before the answer.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, SystemTime},
};

use anyhow::{bail, Context as _, Result};
use oxd_common::{grant_kind, proto, GrantKey, GrantValue};

use super::Daemon;
use crate::{
    audit::{GrantRecord, Note},
    control::{GrantInfo, GrantProtocol, Target},
    evaluate::{Reason, Request},
    policy::Policy,
};

/// The most uses one grant may have.
pub(super) const MAX_GRANT_USES: u64 = 1_000_000;

/// The longest a grant may last: 7 days.
pub(super) const MAX_GRANT_LIFETIME_MS: u64 = 7 * 24 * 3600 * 1000;

/// How long an expired grant stays in the kernel: meanwhile a use of it is recorded as a use
/// of an expired grant (naming it), after it as an action without a grant.
const EXPIRED_KEPT_NS: u64 = 60 * 1_000_000_000;

/// Nanoseconds of `CLOCK_BOOTTIME` (the kernel's `bpf_ktime_get_boot_ns`), the clock of grant
/// expiries and budget windows.
pub(super) fn boot_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).map_or(0, |t| {
        u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
            + u64::try_from(t.tv_nsec()).unwrap_or(0)
    })
}

/// What a grant allows, in words: `connect 127.0.0.1:8080/tcp`.
fn describe(key: &GrantKey) -> String {
    let ip = std::net::Ipv6Addr::from(key.addr);
    let addr = match ip.to_ipv4_mapped() {
        Some(v4) => SocketAddr::new(v4.into(), key.port),
        None => SocketAddr::new(ip.into(), key.port),
    };
    let protocol = if u32::from(key.proto) == proto::UDP {
        "udp"
    } else {
        "tcp"
    };
    format!("connect {addr}/{protocol}")
}

/// A grant as `list` and `grant` report it, `now` being [`boot_ns`].
fn info(key: &GrantKey, value: &GrantValue, now: u64) -> GrantInfo {
    GrantInfo {
        id: value.id,
        action: describe(key),
        uses: value.uses,
        expires_in_ms: value.expires_ns.saturating_sub(now) / 1_000_000,
    }
}

/// Checks that a rule of `policy` that requires a grant decides a connect to `addr`: a grant
/// for anything else would change nothing.
fn check_governed(policy: &Policy, addr: SocketAddr, protocol: GrantProtocol) -> Result<()> {
    let decision = policy.evaluate(&Request::Connect {
        addr,
        udp: protocol == GrantProtocol::Udp,
        send: false,
    });
    let governed = match decision.reason {
        Reason::Rule(id) => policy
            .network
            .iter()
            .flat_map(|n| &n.rules)
            .any(|r| r.rule == id && r.requires_grant),
        _ => false,
    };
    if !governed {
        bail!(
            "no rule of policy {} that requires a grant decides connect {addr}/{}: the grant \
             would change nothing (`oxd explain --policy FILE --connect {addr}` says what \
             decides it)",
            policy.name,
            protocol.name()
        );
    }
    Ok(())
}

impl Daemon {
    /// `oxd ctl grant` (see the module documentation).
    pub(super) fn grant(
        &mut self,
        target: &Target,
        connect: Option<SocketAddr>,
        protocol: GrantProtocol,
        uses: u64,
        expires_in_ms: u64,
    ) -> Result<(String, GrantInfo)> {
        let Some(addr) = connect else {
            bail!("name the action to grant: --connect ADDR:PORT");
        };
        if addr.ip().is_unspecified() {
            bail!(
                "{addr} is unspecified: grant the address a connect to it reaches (127.0.0.1, \
                 ::1, or the socket's own address)"
            );
        }
        if !(1..=MAX_GRANT_USES).contains(&uses) {
            bail!("a grant has 1 to {MAX_GRANT_USES} uses, not {uses}");
        }
        if !(1..=MAX_GRANT_LIFETIME_MS).contains(&expires_in_ms) {
            bail!("a grant lasts from 1 ms to 7 days, not {expires_in_ms} ms");
        }
        let id = self.known_target(target)?;
        let pos = self.state.target_index(id).context("confined")?;
        let t = self.state.targets[pos].clone();
        let g = self
            .state
            .current_gen(&t.policy)
            .with_context(|| format!("policy {} is not loaded", t.policy))?
            .clone();
        let policy = self
            .book()
            .get(g.generation)
            .with_context(|| format!("policy {} is not loaded", t.policy))?;
        check_governed(&policy, addr, protocol)?;
        let mapped = match addr.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        let key = GrantKey {
            target: id,
            addr: mapped.octets(),
            port: addr.port(),
            proto: u8::try_from(match protocol {
                GrantProtocol::Tcp => proto::TCP,
                GrantProtocol::Udp => proto::UDP,
            })
            .unwrap_or(0),
            kind: grant_kind::NETWORK,
            _pad: 0,
        };
        self.state.next_grant = self.state.next_grant.max(1);
        let number = self.state.next_grant;
        self.state.next_grant = number.wrapping_add(1).max(1);
        // Saved first: a number is never handed out twice.
        self.save()?;
        let now = boot_ns();
        let value = GrantValue {
            uses,
            expires_ns: now + expires_in_ms * 1_000_000,
            id: number,
            _pad: 0,
        };
        self.enforcer
            .insert_grant(key, value)
            .context("cannot put the grant in force")?;
        let granted = info(&key, &value, now);
        let expires = SystemTime::now() + Duration::from_millis(expires_in_ms);
        self.note(Note::Grant(GrantRecord {
            time: humantime::format_rfc3339_nanos(SystemTime::now()).to_string(),
            policy: t.policy.clone(),
            policy_sha256: g.sha256.clone(),
            generation: g.generation,
            op: "grant",
            action: "grant",
            grant: number,
            allows: granted.action.clone(),
            uses,
            expires: humantime::format_rfc3339_seconds(expires).to_string(),
            cgroup: t.cgroup.display().to_string(),
            cgroup_id: id,
        }))
        .context("the grant is in force, but the audit log does not say so")?;
        tracing::info!(grant = number, cgroup = %t.cgroup.display(), action = %granted.action, uses, "granted");
        Ok((
            format!(
                "grant {number}: {} by {} allowed {uses} time(s), for {} s",
                granted.action,
                t.cgroup.display(),
                expires_in_ms / 1000
            ),
            granted,
        ))
    }

    /// `oxd ctl revoke`: withdraws grant `number`.
    pub(super) fn revoke(&mut self, number: u32) -> Result<String> {
        let Some((key, value)) = self
            .enforcer
            .grants()?
            .into_iter()
            .find(|(_, v)| v.id == number)
        else {
            bail!("there is no grant {number} (see `oxd ctl list`)");
        };
        self.enforcer
            .remove_grants(|k, _| *k != key)
            .context("cannot withdraw the grant")?;
        let t = self
            .state
            .targets
            .iter()
            .find(|t| t.cgroup_id == key.target);
        let g = t.and_then(|t| self.state.current_gen(&t.policy));
        self.note(Note::Grant(GrantRecord {
            time: humantime::format_rfc3339_nanos(SystemTime::now()).to_string(),
            policy: t.map(|t| t.policy.clone()).unwrap_or_default(),
            policy_sha256: g.map(|g| g.sha256.clone()).unwrap_or_default(),
            generation: g.map_or(0, |g| g.generation),
            op: "grant",
            action: "revoke",
            grant: number,
            allows: describe(&key),
            uses: value.uses,
            expires: String::new(),
            cgroup: t
                .map(|t| t.cgroup.display().to_string())
                .unwrap_or_default(),
            cgroup_id: key.target,
        }))
        .context("the grant is withdrawn, but the audit log does not say so")?;
        Ok(format!(
            "grant {number} ({}) withdrawn, {} use(s) unused",
            describe(&key),
            value.uses
        ))
    }

    /// The grants of target `cgroup_id`.
    pub(super) fn grants_of(&self, cgroup_id: u64) -> Vec<GrantInfo> {
        let now = boot_ns();
        match self.enforcer.grants() {
            Ok(grants) => {
                let mut out: Vec<GrantInfo> = grants
                    .iter()
                    .filter(|(k, _)| k.target == cgroup_id)
                    .map(|(k, v)| info(k, v, now))
                    .collect();
                out.sort_by_key(|g| g.id);
                out
            }
            Err(e) => {
                tracing::warn!("cannot read the grants: {e:#}");
                Vec::new()
            }
        }
    }

    /// Removes grants expired for more than [`EXPIRED_KEPT_NS`], and those of targets no longer
    /// confined (on the daemon's tick).
    pub(super) fn prune_grants(&mut self) -> Result<()> {
        let now = boot_ns();
        let targets: Vec<u64> = self.state.targets.iter().map(|t| t.cgroup_id).collect();
        self.enforcer.remove_grants(|k, v| {
            v.expires_ns.saturating_add(EXPIRED_KEPT_NS) >= now && targets.contains(&k.target)
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_are_described_as_written() {
        let key = GrantKey {
            target: 1,
            addr: std::net::Ipv4Addr::LOCALHOST.to_ipv6_mapped().octets(),
            port: 8080,
            proto: 1,
            kind: grant_kind::NETWORK,
            _pad: 0,
        };
        assert_eq!(describe(&key), "connect 127.0.0.1:8080/tcp");
        let key = GrantKey {
            addr: std::net::Ipv6Addr::LOCALHOST.octets(),
            proto: 2,
            ..key
        };
        assert_eq!(describe(&key), "connect [::1]:8080/udp");
    }
}
