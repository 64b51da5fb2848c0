//! Techniques of the `net` family (see the crate documentation): egress past the network
//! policy.
//!
//! - `ping ADDR TOKEN`: an ICMP ping socket (`SOCK_DGRAM`/`IPPROTO_ICMP`, or `IPPROTO_ICMPV6`
//!   for an IPv6 ADDR) sends an echo request carrying TOKEN to ADDR (steps `socket`, `sendto`).
//!   An ordinary user may make one where `net.ipv4.ping_group_range` covers its group.
//! - `ping-connect ADDR TOKEN`: as `ping`, but the ping socket connects to ADDR first and then
//!   sends (steps `socket`, `connect`, `send`).
//! - `raw ADDR TOKEN`: the same echo request from a raw socket (`SOCK_RAW`; needs
//!   `CAP_NET_RAW`, so run it as root to show that the policy, not a missing capability,
//!   refuses it).
//! - `raw-userns ADDR TOKEN`: as `raw`, after `unshare(CLONE_NEWUSER | CLONE_NEWNET)` (step
//!   `unshare`), which gives an ordinary user `CAP_NET_RAW` in namespaces of its own.
//! - `tcp ADDR:PORT TOKEN`: a TCP connect (IPv6 socket for an IPv6 address, IPv4-mapped ones
//!   included), then TOKEN written (steps `connect`, `write`).
//! - `tcp-fastopen ADDR:PORT TOKEN`: TOKEN sent with `sendto(MSG_FASTOPEN)`, which connects
//!   and sends in one call (step `sendto`).
//! - `udp-sendto ADDR:PORT TOKEN`: TOKEN sent from an unconnected UDP socket (step `sendto`).
//! - `udp-send ADDR:PORT TOKEN`: a UDP socket connected to ADDR:PORT sends TOKEN (steps
//!   `connect`, `send`).
//!
//! Every address is judged by the kernel as given: `0.0.0.0`, `[::]` and `[::ffff:0.0.0.0]`
//! reach loopback.

use std::{
    io::Write as _,
    mem::size_of,
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

use crate::{check, step, Outcome};

/// Runs `technique` if it belongs to this family.
pub(crate) fn run(technique: &str, args: &[String]) -> Option<Outcome> {
    let outcome = match technique {
        "ping" => with_ip(args, |ip, token| icmp_echo(ip, token, false)),
        "ping-connect" => with_ip(args, ping_connect),
        "raw" => with_ip(args, |ip, token| icmp_echo(ip, token, true)),
        "raw-userns" => {
            // SAFETY: plain system call on this (single-threaded) process.
            let unshared =
                check(unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) }.into());
            step("unshare", &unshared);
            if let Err(e) = unshared {
                return Some(Outcome::Setup(format!("unshare: {e}")));
            }
            with_ip(args, |ip, token| icmp_echo(ip, token, true))
        }
        "tcp" => with_addr(args, tcp),
        "tcp-fastopen" => with_addr(args, tcp_fastopen),
        "udp-sendto" => with_addr(args, |addr, token| {
            let socket = udp_socket(addr);
            step("sendto", &socket.and_then(|s| s.send_to(token, addr)));
        }),
        "udp-send" => with_addr(args, |addr, token| {
            let socket = udp_socket(addr).and_then(|s| {
                let connected = s.connect(addr);
                step("connect", &connected);
                connected.map(|()| s)
            });
            if let Ok(socket) = socket {
                step("send", &socket.send(token));
            }
        }),
        _ => return None,
    };
    Some(outcome)
}

fn with_ip(args: &[String], technique: impl FnOnce(IpAddr, &[u8])) -> Outcome {
    let [ip, token] = args else {
        return Outcome::Usage("wants ADDR TOKEN".into());
    };
    match ip.parse() {
        Ok(ip) => {
            technique(ip, token.as_bytes());
            Outcome::Done
        }
        Err(e) => Outcome::Usage(format!("bad address {ip:?}: {e}")),
    }
}

fn with_addr(args: &[String], technique: impl FnOnce(SocketAddr, &[u8])) -> Outcome {
    let [addr, token] = args else {
        return Outcome::Usage("wants ADDR:PORT TOKEN".into());
    };
    match addr.parse() {
        Ok(addr) => {
            technique(addr, token.as_bytes());
            Outcome::Done
        }
        Err(e) => Outcome::Usage(format!("bad address {addr:?}: {e}")),
    }
}

/// A new socket of `family`, `kind` and `protocol`.
fn socket(family: i32, kind: i32, protocol: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain system call; the descriptor it returns is owned from here on.
    let fd = check(unsafe { libc::socket(family, kind | libc::SOCK_CLOEXEC, protocol) }.into())?;
    // SAFETY: `fd` is a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).expect("descriptors fit in i32")) })
}

/// `sendto(fd, data, flags, addr)`.
fn send_to(fd: &OwnedFd, data: &[u8], flags: i32, addr: SocketAddr) -> std::io::Result<usize> {
    // SAFETY: `sockaddr_storage` is plain data, large enough for either family.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: family_t(libc::AF_INET),
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: a `sockaddr_in` fits in a `sockaddr_storage`.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: family_t(libc::AF_INET6),
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: a `sockaddr_in6` fits in a `sockaddr_storage`.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    // SAFETY: the buffer and address are valid for the lengths given.
    let sent = check(unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            flags,
            (&raw const storage).cast(),
            libc::socklen_t::try_from(len).expect("small"),
        )
    } as libc::c_long)?;
    Ok(usize::try_from(sent).unwrap_or(0))
}

/// The Internet checksum of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).expect("folded to 16 bits")
}

fn family_t(family: i32) -> libc::sa_family_t {
    libc::sa_family_t::try_from(family).expect("address families fit sa_family_t")
}

/// An ICMP (or `ICMPv6`) echo request carrying `token`, from a ping socket or a raw one.
fn icmp_echo(ip: IpAddr, token: &[u8], raw: bool) {
    let (family, protocol, echo_type) = if ip.is_ipv4() {
        (libc::AF_INET, libc::IPPROTO_ICMP, 8)
    } else {
        (libc::AF_INET6, libc::IPPROTO_ICMPV6, 128)
    };
    let kind = if raw {
        libc::SOCK_RAW
    } else {
        libc::SOCK_DGRAM
    };
    let fd = socket(family, kind, protocol);
    step("socket", &fd);
    let Ok(fd) = fd else {
        return;
    };
    // Type, code, checksum, identifier, sequence, then the token. The kernel fills in the
    // checksum of ping sockets and of raw ICMPv6 sockets; a raw ICMP socket needs it here.
    let mut packet = vec![echo_type, 0, 0, 0, 0x6f, 0x78, 0, 1];
    packet.extend_from_slice(token);
    if raw && ip.is_ipv4() {
        let sum = checksum(&packet).to_be_bytes();
        packet[2] = sum[0];
        packet[3] = sum[1];
    }
    step("sendto", &send_to(&fd, &packet, 0, SocketAddr::new(ip, 0)));
}

/// An echo request from a connected ping socket.
fn ping_connect(ip: IpAddr, token: &[u8]) {
    let (family, protocol, echo_type) = if ip.is_ipv4() {
        (libc::AF_INET, libc::IPPROTO_ICMP, 8)
    } else {
        (libc::AF_INET6, libc::IPPROTO_ICMPV6, 128)
    };
    let fd = socket(family, libc::SOCK_DGRAM, protocol);
    step("socket", &fd);
    let Ok(fd) = fd else {
        return;
    };
    let fd = UdpSocket::from(fd);
    // A ping socket takes `connect` and `send` like a UDP one; only the descriptor's calls are
    // used, so the wrapper type does not matter.
    let connected = fd.connect(SocketAddr::new(ip, 0));
    step("connect", &connected);
    if connected.is_ok() {
        let mut packet = vec![echo_type, 0, 0, 0, 0x6f, 0x78, 0, 2];
        packet.extend_from_slice(token);
        step("send", &fd.send(&packet));
    }
}

fn tcp(addr: SocketAddr, token: &[u8]) {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10));
    step("connect", &stream);
    if let Ok(mut stream) = stream {
        step("write", &stream.write_all(token));
    }
}

fn tcp_fastopen(addr: SocketAddr, token: &[u8]) {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let sent = socket(family, libc::SOCK_STREAM, 0)
        .and_then(|fd| send_to(&fd, token, libc::MSG_FASTOPEN, addr));
    step("sendto", &sent);
}

fn udp_socket(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    UdpSocket::bind(if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })
}
