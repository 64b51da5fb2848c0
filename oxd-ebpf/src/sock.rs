//! Sockets that no destination hook can judge: `sock_create` (cgroup `sock` hook
//! `BPF_CGROUP_INET_SOCK_CREATE`, attached to the agent's cgroup next to the `sock_addr` hooks
//! of [`crate::net`]) decides, when an inet socket is created, the ones that are neither TCP nor
//! UDP.
//!
//! An ICMP ping socket's `sendto` and every send on a raw socket reach the network without
//! passing `connect4`/`sendmsg4` (and their IPv6 twins), so such sockets are decided as a whole
//! when they are made: ping sockets by the policy's `icmp` switch, raw sockets by its `raw`
//! switch, sockets of any other protocol (SCTP, MPTCP, UDP-Lite, ...) by the network default.
//! TCP and UDP sockets are left alone here: their connects and sends are decided by address.

use aya_ebpf::{macros::cgroup_sock, programs::SockContext};
use oxd_common::{governs, op, proto, reason, Config, RULE_DEFAULT};

use crate::{
    confine::Gate,
    event::{refuse, start_event, Verdict},
};

pub(crate) const IPPROTO_ICMP: u32 = 1;
pub(crate) const IPPROTO_TCP: u32 = 6;
pub(crate) const IPPROTO_UDP: u32 = 17;
pub(crate) const IPPROTO_ICMPV6: u32 = 58;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const SOCK_RAW: u32 = 3;

/// What kind of socket a (type, protocol) pair makes, as a [`proto`] bit: [`proto::TCP`],
/// [`proto::UDP`], [`proto::ICMP`] (a ping socket), [`proto::RAW`], or 0 for another protocol.
#[inline(always)]
pub(crate) fn socket_kind(sock_type: u32, protocol: u32) -> u32 {
    match (sock_type, protocol) {
        (SOCK_RAW, _) => proto::RAW,
        (SOCK_STREAM, IPPROTO_TCP) => proto::TCP,
        (SOCK_DGRAM, IPPROTO_UDP) => proto::UDP,
        (SOCK_DGRAM, IPPROTO_ICMP | IPPROTO_ICMPV6) => proto::ICMP,
        _ => 0,
    }
}

/// The verdict on a socket of `kind` (not TCP or UDP) under `config`: the `icmp` or `raw`
/// switch, or the network default for another protocol.
#[inline(always)]
pub(crate) fn socket_verdict(config: &Config, kind: u32) -> Verdict {
    let (decision, rule_id) = match kind {
        proto::ICMP => (config.net_icmp, config.net_icmp_rule),
        proto::RAW => (config.net_raw, config.net_raw_rule),
        _ => (config.net_default, RULE_DEFAULT),
    };
    Verdict {
        decision,
        reason: if rule_id == RULE_DEFAULT {
            reason::DEFAULT
        } else {
            reason::RULE
        },
        rule_id,
    }
}

#[cgroup_sock(sock_create)]
fn sock_create(ctx: SockContext) -> i32 {
    // SAFETY: the context is a valid `bpf_sock`; the verifier checks each field access.
    let (family, sock_type, protocol) = unsafe {
        let sk = ctx.sock;
        ((*sk).family, (*sk).type_, (*sk).protocol)
    };
    let kind = socket_kind(sock_type, protocol);
    if kind == proto::TCP || kind == proto::UDP {
        return 1;
    }
    let gate = Gate::open(governs::NETWORK);
    if !gate.decide {
        return 1;
    }
    let verdict = if gate.configured {
        socket_verdict(&gate.config, kind)
    } else {
        Verdict::deny(gate.missing_reason())
    };
    if let Some(mut entry) = start_event(op::SOCKET, &gate, &verdict) {
        let event = entry.as_mut_ptr();
        // SAFETY: the event is ours until submitted.
        unsafe {
            (*event).proto = kind;
            (*event).detail =
                (family & 0xff) << 24 | (sock_type & 0xff) << 16 | (protocol & 0xffff);
        }
        entry.submit(0);
    }
    if refuse(&verdict, &gate) {
        return 0;
    }
    1
}
