//! Network rules: `connect4`, `connect6`, `sendmsg4` and `sendmsg6` (cgroup `sock_addr` hooks,
//! attached to the agent's cgroup) decide every `connect`, and every UDP send with a
//! destination, on the destination address, port and protocol.
//!
//! An unspecified destination is judged as the address it reaches: `0.0.0.0` (and
//! `::ffff:0.0.0.0`) as the socket's source address if it has one, else `127.0.0.1`; `::` as
//! `::1` (`::ffff:127.0.0.1` on a socket bound to an IPv4-mapped address). The connect of an
//! ICMP ping socket (which the kernel passes through `connect4`/`connect6` since 6.0) is decided
//! as the socket was, by the `icmp` switch (see [`crate::sock`]).

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{macros::cgroup_sock_addr, maps::lpm_trie::Key, programs::SockAddrContext};
use oxd_common::{
    action, governs, op, proto, reason, NetKey, NET_CHECK_GRANT, NET_LIST_LEN,
    NET_SLOT_PREFIX_BITS, RULE_DEFAULT,
};

use crate::{
    budget,
    confine::Gate,
    conn::{self, Slot},
    event::{refuse, start_event, Verdict},
    grant,
    maps::NET_PREFIXES,
    sock::{socket_kind, socket_verdict},
};

/// `127.0.0.1` as the bytes of an address in network byte order.
const LOOPBACK4: [u8; 4] = [127, 0, 0, 1];

#[cgroup_sock_addr(connect4)]
fn connect4(ctx: SockAddrContext) -> i32 {
    decide_sock_addr4(&ctx, op::CONNECT4, false)
}

#[cgroup_sock_addr(sendmsg4)]
fn sendmsg4(ctx: SockAddrContext) -> i32 {
    decide_sock_addr4(&ctx, op::SENDMSG4, true)
}

#[cgroup_sock_addr(connect6)]
fn connect6(ctx: SockAddrContext) -> i32 {
    decide_sock_addr6(&ctx, op::CONNECT6)
}

#[cgroup_sock_addr(sendmsg6)]
fn sendmsg6(ctx: SockAddrContext) -> i32 {
    decide_sock_addr6(&ctx, op::SENDMSG6)
}

/// The socket's bound IPv4 source address (`sk_rcv_saddr`), network byte order; 0 if unbound.
#[inline(always)]
fn socket_source4(ctx: &SockAddrContext) -> u32 {
    // SAFETY: `sk` of a `bpf_sock_addr` is a valid, non-null socket pointer (the verifier
    // types it so); `src_ip4` is readable on every socket.
    unsafe { (*(*ctx.sock_addr).__bindgen_anon_1.sk).src_ip4 }
}

/// Where `0.0.0.0` goes: the source address (`source`, network byte order) if there is one,
/// else `127.0.0.1` (the kernel's route lookup does exactly this).
#[inline(always)]
fn unspecified4(source: u32) -> [u8; 4] {
    if source == 0 {
        LOOPBACK4
    } else {
        source.to_ne_bytes()
    }
}

/// An IPv4 destination is judged as its IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), so one
/// prefix trie serves both families. With `sendmsg`, the source of an unspecified destination
/// is the one the send uses (`msg_src_ip4`: the bound address or an `IP_PKTINFO` one).
#[inline(always)]
fn decide_sock_addr4(ctx: &SockAddrContext, operation: u32, sendmsg: bool) -> i32 {
    // SAFETY: the context is a valid `bpf_sock_addr`; the verifier checks each field access.
    let (ip4, port, protocol, sock_type) = unsafe {
        let sa = ctx.sock_addr;
        ((*sa).user_ip4, (*sa).user_port, (*sa).protocol, (*sa).type_)
    };
    let mut ip = ip4.to_ne_bytes();
    if ip4 == 0 {
        let source = if sendmsg {
            // SAFETY: as above; `msg_src_ip4` is readable in `sendmsg4`.
            unsafe { (*ctx.sock_addr).msg_src_ip4 }
        } else {
            socket_source4(ctx)
        };
        ip = unspecified4(source);
    }
    let addr = [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, ip[0], ip[1], ip[2], ip[3],
    ];
    decide_connect(ctx, operation, &addr, port, protocol, sock_type)
}

#[inline(always)]
fn decide_sock_addr6(ctx: &SockAddrContext, operation: u32) -> i32 {
    let mut addr = [0u8; 16];
    // SAFETY: as in `decide_sock_addr4`; `user_ip6` must be read one 32-bit word at a time.
    let (port, protocol, sock_type, words) = unsafe {
        let sa = ctx.sock_addr;
        let mut words = [0u32; 4];
        let mut i = 0;
        while i < 4 {
            let word = read_volatile(addr_of!((*sa).user_ip6[i]));
            words[i] = word;
            let word = word.to_ne_bytes();
            addr[i * 4] = word[0];
            addr[i * 4 + 1] = word[1];
            addr[i * 4 + 2] = word[2];
            addr[i * 4 + 3] = word[3];
            i += 1;
        }
        ((*sa).user_port, (*sa).protocol, (*sa).type_, words)
    };
    if words[0] == 0 && words[1] == 0 {
        if words[2] == 0 && words[3] == 0 {
            // `::` reaches `::1`, or `127.0.0.1` from a socket bound to an IPv4-mapped address.
            if source6_is_mapped(ctx) {
                addr[10] = 0xff;
                addr[11] = 0xff;
                addr[12] = 127;
                addr[15] = 1;
            } else {
                addr[15] = 1;
            }
        } else if words[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff]) && words[3] == 0 {
            // `::ffff:0.0.0.0` is `0.0.0.0` through an IPv6 socket.
            let ip = unspecified4(socket_source4(ctx));
            addr[12] = ip[0];
            addr[13] = ip[1];
            addr[14] = ip[2];
            addr[15] = ip[3];
        }
    }
    decide_connect(ctx, operation, &addr, port, protocol, sock_type)
}

/// Whether the socket is bound to an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`).
#[inline(always)]
fn source6_is_mapped(ctx: &SockAddrContext) -> bool {
    // SAFETY: as in `socket_source4`; `src_ip6` is read one 32-bit word at a time.
    unsafe {
        let sk = (*ctx.sock_addr).__bindgen_anon_1.sk;
        read_volatile(addr_of!((*sk).src_ip6[0])) == 0
            && read_volatile(addr_of!((*sk).src_ip6[1])) == 0
            && read_volatile(addr_of!((*sk).src_ip6[2])) == u32::from_ne_bytes([0, 0, 0xff, 0xff])
    }
}

/// Decides a connect to `addr` (IPv6 or IPv4-mapped) and `port_be` (network byte order in the
/// low 16 bits). Returns 1 to allow and 0 to deny with EPERM.
#[inline(always)]
fn decide_connect(
    ctx: &SockAddrContext,
    operation: u32,
    addr: &[u8; 16],
    port_be: u32,
    protocol: u32,
    sock_type: u32,
) -> i32 {
    // Not confined only if the agent was released while a connect was in flight: the
    // programs are attached to the agent's cgroup.
    let gate = Gate::open(governs::NETWORK);
    if !gate.decide {
        return 1;
    }
    let port = u16::from_be(port_be as u16);
    let proto_bit = socket_kind(sock_type, protocol);
    let (verdict, grant_id) = if gate.configured {
        if proto_bit == proto::ICMP || proto_bit == proto::RAW {
            // Decided as a whole, as when the socket was created: its other sends pass no hook.
            (socket_verdict(&gate.config, proto_bit), 0)
        } else {
            match_net_rules(&gate, addr, port, proto_bit, ctx.sock_addr.cast())
        }
    } else {
        (Verdict::deny(gate.missing_reason()), 0)
    };
    if let Some(mut entry) = start_event(operation, &gate, &verdict) {
        let event = entry.as_mut_ptr();
        // SAFETY: the event is ours until submitted (an `Event`, 8-byte aligned). The address
        // goes in as two volatile 8-byte stores: a plain copy of a partly constant address
        // would become a call to `memset`, a byte loop the verifier walks byte by byte.
        unsafe {
            (*event).proto = proto_bit;
            (*event).port = port;
            (*event).detail = grant_id;
            let dst = addr_of_mut!((*event).addr).cast::<u64>();
            write_volatile(dst, half(addr, 0));
            write_volatile(dst.add(1), half(addr, 8));
        }
        entry.submit(0);
    }
    if refuse(&verdict, &gate) {
        return 0;
    }
    1
}

/// Bytes `start..start + 8` of an address, as one word.
#[inline(always)]
fn half(bytes: &[u8; 16], start: usize) -> u64 {
    let mut out = [0u8; 8];
    out.copy_from_slice(&bytes[start..start + 8]);
    u64::from_ne_bytes(out)
}

/// Finds the rule that decides a connect to `addr`, `port` with protocol `proto_bit`: one
/// lookup of the longest matching rule network in the slot's prefix trie, then a scan of that
/// prefix's list (at most `NET_LIST_LEN` entries, in order of precedence) for the first entry
/// whose ports and protocol match. The cost does not grow with the number of rules. A rule that
/// allows with a connection limit, a grant or a budget takes a slot, a use or a unit of it (or
/// denies when it cannot); with the verdict comes the number of the grant that decided (0 for
/// none). `ctx` is the program's context (for the socket's cookie).
#[inline(always)]
fn match_net_rules(
    gate: &Gate,
    addr: &[u8; 16],
    port: u16,
    proto_bit: u32,
    ctx: *mut core::ffi::c_void,
) -> (Verdict, u32) {
    let config = &gate.config;
    let default = Verdict {
        decision: config.net_default,
        reason: reason::DEFAULT,
        rule_id: RULE_DEFAULT,
    };
    if config.net_rule_count == 0 {
        return (default, 0);
    }
    let key = Key::new(
        NET_SLOT_PREFIX_BITS + 128,
        NetKey {
            slot: gate.slot,
            addr: *addr,
        },
    );
    let Some(list) = NET_PREFIXES.get(&key) else {
        return (default, 0);
    };
    let count = list.count as usize;
    let port = u32::from(port);
    // The loop only finds the first entry that matches; what it asks beyond its action is
    // handled once, after it: inside the loop, the verifier would walk the compare-and-exchange
    // loops of the checks once per entry (four times the instructions to verify).
    let mut found = None;
    let mut i = 0;
    while i < NET_LIST_LEN && i < count {
        let entry = &list.entries[i];
        if u32::from(entry.proto) & proto_bit != 0
            && port >= u32::from(entry.port_lo)
            && port <= u32::from(entry.port_hi)
        {
            found = Some((
                u32::from(entry.action),
                entry.check,
                entry.limit,
                entry.rule_id,
            ));
            break;
        }
        i += 1;
    }
    let Some((decision, check, limit, rule_id)) = found else {
        return (default, 0);
    };
    let verdict = |decision, reason| Verdict {
        decision,
        reason,
        rule_id,
    };
    if decision != action::ALLOW || (check == 0 && limit == 0) {
        return (verdict(decision, reason::RULE), 0);
    }
    // The connection slot first: unlike a grant's use or a budget's unit, it can be given back
    // when what follows denies.
    let (slot, cookie) = if limit == 0 {
        (Slot::Held, 0)
    } else {
        let cookie = conn::cookie_of(ctx);
        (conn::take(gate, limit, cookie), cookie)
    };
    if slot == Slot::Refused {
        return (verdict(action::DENY, reason::CONNECTIONS), 0);
    }
    if check == 0 {
        return (verdict(decision, reason::RULE), 0);
    }
    if check == NET_CHECK_GRANT {
        let taken = grant::take_network(gate, addr, port as u16, proto_bit);
        if taken.reason == reason::GRANTED {
            return (verdict(action::ALLOW, taken.reason), taken.id);
        }
        conn::undo(slot, cookie);
        return (verdict(action::DENY, taken.reason), taken.id);
    }
    if budget::take(gate, check) {
        return (verdict(action::ALLOW, reason::RULE), 0);
    }
    conn::undo(slot, cookie);
    (verdict(action::DENY, reason::BUDGET), 0)
}
