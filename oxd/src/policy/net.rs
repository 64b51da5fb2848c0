//! Network rule pieces: networks (CIDRs), port ranges and protocols.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;
use serde::Deserialize;

use super::raw::RawPorts;

/// Transport protocols a network rule applies to (default `any`).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    #[default]
    Any,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Any => "any",
        }
    }
}

/// Parses a CIDR (`10.0.0.0/8`, `::1/128`) or a single address into an IPv6 network, IPv4 as
/// IPv4-mapped.
pub fn parse_cidr(text: &str) -> Result<ipnet::Ipv6Net, String> {
    let text = text.trim();
    let net = match text.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => match text.parse::<IpAddr>() {
            Ok(addr) => IpNet::from(addr),
            Err(_) => {
                return Err(format!(
                    "`{text}` is not an IP network: write a CIDR such as `10.0.0.0/8`, \
                     `192.0.2.7/32` or `2001:db8::/32`, or a single address"
                ))
            }
        },
    };
    if net.network() != net.addr() {
        return Err(format!(
            "`{text}` has host bits set: did you mean `{}`?",
            net.trunc()
        ));
    }
    Ok(match net {
        IpNet::V4(v4) => {
            let mapped: Ipv6Addr = v4.network().to_ipv6_mapped();
            ipnet::Ipv6Net::new(mapped, v4.prefix_len() + 96)
                .map_err(|e| format!("`{text}`: {e}"))?
        }
        IpNet::V6(v6) => v6,
    })
}

/// Parses a port (`443`) or an inclusive range written as a string (`"8000-8999"`).
pub(super) fn parse_ports(ports: &RawPorts) -> Result<(u16, u16), String> {
    let one = |n: i64| {
        u16::try_from(n).map_err(|_| format!("port {n} is out of range: ports are 0 to 65535"))
    };
    match ports {
        RawPorts::One(n) => one(*n).map(|p| (p, p)),
        RawPorts::Range(text) => {
            let parse = |s: &str| {
                s.trim().parse::<i64>().map_err(|_| {
                    format!("`{text}` is not a port range: write `443`, or `8000-8999` as a string")
                })
            };
            let (lo, hi) = if let Some((lo, hi)) = text.split_once('-') {
                (one(parse(lo)?)?, one(parse(hi)?)?)
            } else {
                let p = one(parse(text)?)?;
                (p, p)
            };
            if lo > hi {
                return Err(format!(
                    "port range `{text}` is empty: write it as `{hi}-{lo}`"
                ));
            }
            Ok((lo, hi))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_rules_are_ipv4_mapped() {
        let net = parse_cidr("127.0.0.0/8").unwrap();
        assert_eq!(net.prefix_len(), 104);
        assert_eq!(
            net.network(),
            "::ffff:127.0.0.0".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(parse_cidr("192.0.2.7").unwrap().prefix_len(), 128);
    }

    #[test]
    fn ports_and_ranges() {
        assert_eq!(parse_ports(&RawPorts::One(443)), Ok((443, 443)));
        assert_eq!(
            parse_ports(&RawPorts::Range("8000-8999".into())),
            Ok((8000, 8999))
        );
        assert_eq!(parse_ports(&RawPorts::Range(" 53 ".into())), Ok((53, 53)));
        assert!(parse_ports(&RawPorts::One(65536)).is_err());
        assert!(parse_ports(&RawPorts::One(-1)).is_err());
        assert!(parse_ports(&RawPorts::Range("90-80".into())).is_err());
        assert!(parse_ports(&RawPorts::Range("http".into())).is_err());
    }
}
