use std::{collections::BTreeMap, path::Path};

use oxd_common::{PATH_KEY_LEN, RULE_NONE};

use super::*;
use crate::policy::{PathPattern, PathRule, RuleInfo};

fn policy(text: &str) -> Policy {
    Policy::parse(Path::new("t.toml"), text).expect("valid policy")
}

/// No file exists.
fn no_files(_: &Path) -> Option<FileId> {
    None
}

fn id(n: u64) -> FileId {
    FileId {
        dev: 0x0080_0001,
        ino: n,
    }
}

/// A file system where paths name the files of `files` (several names may name one file).
fn files(files: &[(&str, u64)]) -> impl Fn(&Path) -> Option<FileId> {
    let map: BTreeMap<String, u64> = files.iter().map(|(p, n)| ((*p).to_owned(), *n)).collect();
    move |path: &Path| path.to_str().and_then(|p| map.get(p)).map(|n| id(*n))
}

fn compile_ok(policy: &Policy, slot: u32, generation: u64) -> SlotImage {
    compile(policy, slot, generation, &no_files).expect("the policy compiles")
}

fn rule_id(policy: &Policy, rule: u32) -> &str {
    &policy.rules[rule as usize].id
}

fn rule_index(policy: &Policy, id: &str) -> u32 {
    let index = policy
        .rules
        .iter()
        .position(|r| r.id == id)
        .expect("a rule");
    u32::try_from(index).unwrap()
}

#[test]
fn exact_key_includes_terminator_so_prefixes_do_not_match() {
    let (key, bits) = pattern_key(&PathPattern::Exact("/bin/sh".into()));
    assert_eq!(key, b"/bin/sh\0");
    assert_eq!(bits, 64);
    assert!(!PathPattern::Exact("/bin/sh".into()).matches("/bin/shred"));
    assert!(!PathPattern::Subtree("/usr/bin/".into()).matches("/usr/binx/a"));
    assert!(PathPattern::Subtree("/usr/bin/".into()).matches("/usr/bin/a"));
}

#[test]
fn key_bit_lengths_count_the_slot_the_nul_and_the_trailing_slash() {
    let p = policy(
        r#"
[exec]
allow = ["/bin/sh", "/usr/bin/**", "/**"]
"#,
    );
    let image = compile_ok(&p, 3, 1);
    let entries = image.paths(PathTable::Exec);
    assert_eq!(entries.len(), 3);
    let by_pattern: BTreeMap<String, &PathEntry> =
        entries.iter().map(|e| (e.pattern(), e)).collect();

    let sh = by_pattern["/bin/sh"];
    assert_eq!(sh.prefix_len, 16 + 8 * 8, "slot, `/bin/sh` and its NUL");
    assert_eq!(sh.prefix(), b"/bin/sh\0");
    let usr = by_pattern["/usr/bin/**"];
    assert_eq!(usr.prefix_len, 16 + 9 * 8, "slot and `/usr/bin/`, no NUL");
    assert_eq!(usr.prefix(), b"/usr/bin/");
    let root = by_pattern["/**"];
    assert_eq!(root.prefix_len, 16 + 8, "slot and `/`");
    assert_eq!(root.prefix(), b"/");

    for entry in entries {
        let used = entry.prefix().len();
        assert_eq!(
            entry.prefix_len,
            SLOT_PREFIX_BITS + u32::try_from(used).unwrap() * 8
        );
        assert!(
            entry.key.path[used..].iter().all(|&b| b == 0),
            "{}: the key is NUL-padded past its prefix",
            entry.pattern()
        );
        assert_eq!(entry.value.action, action::ALLOW);
        assert_eq!(
            rule_id(&p, entry.value.rule_id),
            format!(
                "exec.allow[{}]",
                ["/bin/sh", "/usr/bin/**", "/**"]
                    .iter()
                    .position(|t| *t == entry.pattern())
                    .unwrap()
            )
        );
    }
}

#[test]
fn longest_key_that_fits_and_one_byte_more() {
    let fits = "/".to_owned() + &"a".repeat(PATH_KEY_LEN - 2);
    let too_long = fits.clone() + "b";
    let mut p = policy("[exec]\n");
    let exec = p.exec.as_mut().unwrap();
    exec.rules.push(PathRule {
        pattern: PathPattern::Exact(fits.clone()),
        action: Action::Deny,
        rule: 0,
    });
    p.rules.push(RuleInfo {
        id: "exec.deny[0]".into(),
        text: fits.clone(),
        action: Action::Deny,
    });
    let image = compile_ok(&p, 0, 1);
    let entry = image.paths(PathTable::Exec)[0];
    assert_eq!(entry.prefix().len(), PATH_KEY_LEN);
    assert_eq!(
        entry.prefix_len,
        SLOT_PREFIX_BITS + u32::try_from(PATH_KEY_LEN).unwrap() * 8
    );
    assert_eq!(entry.pattern(), fits);

    // Built by hand: validation would have refused it.
    p.exec.as_mut().unwrap().rules[0].pattern = PathPattern::Exact(too_long.clone());
    assert_eq!(
        compile(&p, 0, 1, &no_files),
        Err(CompileError::KeyTooLong {
            category: "exec",
            pattern: too_long,
            len: PATH_KEY_LEN + 1
        })
    );
    let subtree = "/".to_owned() + &"a".repeat(PATH_KEY_LEN - 1) + "/";
    p.file = Some(crate::policy::FilePolicy {
        read_default: Action::Deny,
        write_default: Action::Deny,
        read: Vec::new(),
        write: vec![PathRule {
            pattern: PathPattern::Subtree(subtree),
            action: Action::Allow,
            rule: 0,
        }],
    });
    p.exec = None;
    assert!(matches!(
        compile(&p, 0, 1, &no_files),
        Err(CompileError::KeyTooLong {
            category: "file write",
            len,
            ..
        }) if len == PATH_KEY_LEN + 1
    ));
}

#[test]
fn every_entry_carries_the_slot() {
    let text = r#"
[exec]
allow = ["/usr/bin/**"]
deny = ["/usr/bin/curl"]
[file]
deny = ["/etc/shadow", { path = "/root/**", access = ["read"] }]
allow = [{ path = "/work/**", access = ["write"] }]
[network]
[[network.allow]]
cidr = "127.0.0.0/8"
[[network.deny]]
cidr = "127.0.0.1"
"#;
    let p = policy(text);
    let fs = files(&[("/usr/bin/curl", 1), ("/etc/shadow", 2)]);
    let zero = compile(&p, 0, 1, &fs).expect("compiles into slot 0");
    for slot in [1, 17, MAX_POLICY_SLOTS - 1] {
        let image = compile(&p, slot, 9, &fs).expect("compiles");
        assert_eq!(image.slot(), slot);
        assert_eq!(image.generation(), 9);
        for table in PathTable::ALL {
            let entries = image.paths(table);
            assert_eq!(entries.len(), zero.paths(table).len());
            for (entry, in_zero) in entries.iter().zip(zero.paths(table)) {
                assert_eq!(u32::from(entry.key.slot), slot, "{}", entry.pattern());
                // The slot is the only difference, and it is inside every prefix.
                assert_eq!(entry.key.path, in_zero.key.path);
                assert_eq!(entry.prefix_len, in_zero.prefix_len);
                assert!(entry.prefix_len > SLOT_PREFIX_BITS);
                assert_eq!(entry.value, in_zero.value);
            }
        }
        assert_eq!(image.inodes().len(), 2);
        for entry in image.inodes() {
            assert_eq!(entry.key.slot, slot);
        }
        assert_eq!(
            image.denied(id(1)).map(|r| r.exec),
            zero.denied(id(1)).map(|r| r.exec)
        );
        assert_eq!(image.net().len(), zero.net().len());
        for (entry, in_zero) in image.net().iter().zip(zero.net()) {
            assert_eq!(entry.key.slot, slot, "network prefixes carry the slot");
            assert_eq!(entry.key.addr, in_zero.key.addr);
            assert_eq!(entry.prefix_len, in_zero.prefix_len);
            assert_eq!(entry.value, in_zero.value);
        }
        assert_eq!(image.config().net_rule_count, 2);
    }
    for (table, counts) in PathTable::ALL.into_iter().zip([2, 2, 2]) {
        assert_eq!(zero.paths(table).len(), counts, "{}", table.as_str());
    }
}

#[test]
fn hard_linked_deny_rules_merge_into_one_identity() {
    let p = policy(
        r#"
[exec]
deny = ["/usr/bin/curl", "/opt/curl-link", "/usr/bin/wget", "/usr/bin/**"]
allow = ["/usr/bin/ssh"]
[file]
deny = [
  { path = "/opt/curl-link", access = ["read"] },
  { path = "/usr/bin/curl", access = ["write"] },
  { path = "/etc/**", access = ["read"] },
  "/missing",
]
allow = ["/usr/bin/ssh", "/etc/hosts"]
"#,
    );
    // curl and its hard link are one file; ssh and /etc/hosts exist but only allow rules name
    // them; /usr/bin/ and /etc/ exist but only subtree rules name them.
    let fs = files(&[
        ("/usr/bin/curl", 1),
        ("/opt/curl-link", 1),
        ("/usr/bin/wget", 2),
        ("/usr/bin/ssh", 3),
        ("/etc/hosts", 4),
        ("/usr/bin", 5),
        ("/usr/bin/", 5),
        ("/etc", 6),
        ("/etc/", 6),
    ]);
    let image = compile(&p, 4, 2, &fs).expect("compiles");
    let keys: Vec<InodeKey> = image.inodes().iter().map(|e| e.key).collect();
    assert_eq!(
        keys,
        [id(1).key(4), id(2).key(4)],
        "one entry per denied file"
    );

    let curl = image.denied(id(1)).expect("curl is denied by identity");
    // The first exec rule naming the file is kept; read and write come from the file rules
    // naming it under either name.
    assert_eq!(rule_id(&p, curl.exec), "exec.deny[0]");
    assert_eq!(rule_id(&p, curl.read), "file.deny[0]");
    assert_eq!(rule_id(&p, curl.write), "file.deny[1]");
    assert_eq!(curl._pad, 0);

    let wget = image.denied(id(2)).expect("wget is denied by identity");
    assert_eq!(rule_id(&p, wget.exec), "exec.deny[2]");
    assert_eq!((wget.read, wget.write), (RULE_NONE, RULE_NONE));

    for allowed_or_subtree in [3, 4, 5, 6] {
        assert_eq!(image.denied(id(allowed_or_subtree)), None);
    }
    // The same answer from the pure helper the evaluator's callers use.
    let files = denied_files(&p, &fs);
    assert_eq!(
        files,
        image
            .inodes()
            .iter()
            .map(|e| (
                FileId {
                    dev: e.key.dev,
                    ino: e.key.ino
                },
                e.rules
            ))
            .collect::<Vec<_>>()
    );
    // Nothing exists: no identities at all, the path rules are unchanged.
    let bare = compile(&p, 4, 2, &no_files).expect("compiles");
    assert!(bare.inodes().is_empty());
    assert_eq!(bare.paths(PathTable::Exec), image.paths(PathTable::Exec));
}

#[test]
fn identities_need_a_governed_section() {
    let p = policy("[network]\n");
    let image = compile(&p, 0, 1, &|_: &Path| Some(id(1))).expect("compiles");
    assert!(image.inodes().is_empty());
    for table in PathTable::ALL {
        assert!(image.paths(table).is_empty());
    }
}

/// The rule labels of the list the kernel holds for `network` (as written, IPv4 as such).
fn net_list(p: &Policy, image: &SlotImage, network: &str) -> Vec<String> {
    let net = crate::policy::parse_cidr(network).expect("a network");
    let entry = image
        .net()
        .iter()
        .find(|e| e.network() == net)
        .unwrap_or_else(|| panic!("no prefix entry for {network}"));
    entry
        .entries()
        .iter()
        .map(|e| rule_id(p, e.rule_id).to_owned())
        .collect()
}

#[test]
fn network_prefix_lists_keep_first_match_order() {
    let p = policy(
        r#"
[network]
default = "allow"
[[network.allow]]
cidr = "10.0.0.0/8"
[[network.allow]]
cidr = "10.1.0.0/16"
ports = 443
protocol = "tcp"
[[network.deny]]
cidr = "10.1.0.0/16"
ports = 443
protocol = "tcp"
[[network.deny]]
cidr = "10.1.0.0/16"
[[network.allow]]
cidr = "::1"
ports = "8000-8999"
protocol = "udp"
"#,
    );
    let image = compile_ok(&p, 2, 1);
    assert_eq!(image.net().len(), 3, "one trie entry per network");
    // Most specific first (longest prefix, then narrowest ports, then one protocol), deny
    // before allow among equals: the kernel takes the first match. The /16's list would hold
    // the /8's rule too, after its own, but its own catch-all deny covers it, and the tcp/443
    // deny covers the same allow: neither could ever decide there, both are left out.
    assert_eq!(
        net_list(&p, &image, "10.1.0.0/16"),
        ["network.deny[0]", "network.deny[1]"]
    );
    assert_eq!(net_list(&p, &image, "10.0.0.0/8"), ["network.allow[0]"]);
    assert_eq!(net_list(&p, &image, "::1"), ["network.allow[2]"]);

    let loopback = image
        .net()
        .iter()
        .find(|e| e.entries()[0].rule_id == rule_index(&p, "network.allow[2]"))
        .unwrap();
    assert_eq!(
        loopback.key.addr,
        "::1".parse::<std::net::Ipv6Addr>().unwrap().octets()
    );
    assert_eq!(loopback.prefix_len, NET_SLOT_PREFIX_BITS + 128);
    assert_eq!(loopback.key.slot, 2);
    let e = loopback.entries()[0];
    assert_eq!((e.port_lo, e.port_hi), (8000, 8999));
    assert_eq!(u32::from(e.proto), proto::UDP);
    assert_eq!(u32::from(e.action), action::ALLOW);

    let sixteen = image
        .net()
        .iter()
        .find(|e| e.prefix_len == NET_SLOT_PREFIX_BITS + 112)
        .expect("a /16 is IPv4-mapped as a /112");
    let mapped: std::net::Ipv6Addr = "::ffff:10.1.0.0".parse().unwrap();
    assert_eq!(sixteen.key.addr, mapped.octets());
    let deny = sixteen.entries()[0];
    assert_eq!((deny.port_lo, deny.port_hi), (443, 443));
    assert_eq!(u32::from(deny.proto), proto::TCP);
    assert_eq!(u32::from(deny.action), action::DENY);
    let any = sixteen.entries()[1];
    assert_eq!((any.port_lo, any.port_hi), (0, u16::MAX));
    assert_eq!(u32::from(any.proto), proto::ANY);
}

#[test]
fn a_host_deny_inside_an_allowed_network_on_some_ports() {
    let p = policy(
        r#"
[network]
default = "deny"
[[network.allow]]
cidr = "10.0.0.0/8"
ports = "1-1024"
[[network.allow]]
cidr = "10.0.0.0/8"
ports = "8000-8080"
protocol = "tcp"
[[network.deny]]
cidr = "10.9.9.9/32"
ports = "443"
[[network.allow]]
cidr = "10.9.0.0/16"
ports = "53"
protocol = "udp"
[[network.deny]]
cidr = "0.0.0.0/0"
ports = "22"
"#,
    );
    let image = compile_ok(&p, 0, 1);
    // The host's list: its own deny, then the /16's udp/53, then the /8's narrower range
    // (8000-8080 tcp), then its wider one, then the /0's port 22 deny (not covered: the /8's
    // 1-1024 allow comes first there and decides port 22 inside 10/8, so it stays only for
    // what the allow does not cover... which is nothing: it is left out).
    assert_eq!(
        net_list(&p, &image, "10.9.9.9/32"),
        [
            "network.deny[0]",
            "network.allow[2]",
            "network.allow[1]",
            "network.allow[0]",
        ]
    );
    assert_eq!(
        net_list(&p, &image, "10.9.0.0/16"),
        ["network.allow[2]", "network.allow[1]", "network.allow[0]"]
    );
    assert_eq!(net_list(&p, &image, "0.0.0.0/0"), ["network.deny[1]"]);
    // And the lists decide as the reference evaluator does.
    check_lists_against_evaluator(
        &p,
        &image,
        &["10.9.9.9", "10.9.9.8", "10.1.1.1", "11.0.0.1"],
    );
}

#[test]
fn overlapping_port_ranges_and_protocols_keep_precedence() {
    let p = policy(
        r#"
[network]
default = "allow"
[[network.deny]]
cidr = "192.168.0.0/16"
ports = "100-200"
protocol = "tcp"
[[network.allow]]
cidr = "192.168.0.0/16"
ports = "150-160"
[[network.allow]]
cidr = "192.168.0.0/16"
ports = "100-200"
protocol = "udp"
[[network.deny]]
cidr = "192.168.1.0/24"
ports = "0-65535"
protocol = "udp"
[[network.allow]]
cidr = "192.168.1.0/24"
ports = "0-65535"
protocol = "udp"
"#,
    );
    let image = compile_ok(&p, 0, 1);
    // /24: udp-all deny (deny first among equals; the allow of the same rule is covered by
    // it and left out), then the /16's narrowest (150-160 any), then 100-200 tcp; the /16's
    // 100-200 udp is covered by the /24's udp deny and left out.
    assert_eq!(
        net_list(&p, &image, "192.168.1.0/24"),
        ["network.deny[1]", "network.allow[0]", "network.deny[0]"]
    );
    assert_eq!(
        net_list(&p, &image, "192.168.0.0/16"),
        ["network.allow[0]", "network.deny[0]", "network.allow[1]"]
    );
    check_lists_against_evaluator(&p, &image, &["192.168.1.7", "192.168.2.7", "10.0.0.1"]);
}

#[test]
fn ipv4_rules_cover_ipv4_mapped_destinations_and_ipv6_rules_around_them() {
    let p = policy(
        r#"
[network]
default = "deny"
[[network.allow]]
cidr = "::/0"
ports = 80
[[network.deny]]
cidr = "127.0.0.0/8"
ports = "81-82"
[[network.allow]]
cidr = "::ffff:127.0.0.1/128"
ports = 81
"#,
    );
    let image = compile_ok(&p, 0, 1);
    // `::ffff:127.0.0.1/128` is the IPv4 rule `127.0.0.1/32`; `::/0` contains every
    // IPv4-mapped address, so its rule is in the IPv4 networks' lists too.
    assert_eq!(
        net_list(&p, &image, "127.0.0.1/32"),
        ["network.allow[1]", "network.deny[0]", "network.allow[0]"]
    );
    assert_eq!(
        net_list(&p, &image, "127.0.0.0/8"),
        ["network.deny[0]", "network.allow[0]"]
    );
    check_lists_against_evaluator(&p, &image, &["127.0.0.1", "127.0.0.2", "::1", "10.0.0.1"]);
}

#[test]
fn a_list_longer_than_the_kernel_holds_is_refused_naming_the_rule() {
    // 33 single-port rules on one network: the 33rd does not fit.
    let mut text = String::from("[network]\n");
    for port in 1..=NET_LIST_LEN + 1 {
        text.push_str(&format!(
            "[[network.allow]]\ncidr = \"10.0.0.0/8\"\nports = {port}\n"
        ));
    }
    let err = Policy::parse(Path::new("t.toml"), &text)
        .unwrap_err()
        .to_string();
    assert!(err.contains("t.toml:"), "{err}");
    assert!(err.contains("10.0.0.0/8"), "{err}");
    assert!(err.contains("at most 32"), "{err}");
    // The line of the 33rd rule (each rule takes three lines after the header).
    let line = 2 + 3 * NET_LIST_LEN;
    assert!(err.contains(&format!("t.toml:{line}:")), "{err}");
    // The compiler refuses it too (a policy built without the validator).
    let mut p = policy("[network]\n");
    p.network.as_mut().unwrap().rules = (0..=u16::try_from(NET_LIST_LEN).unwrap())
        .map(|port| NetworkRule {
            net: "::ffff:10.0.0.0/104".parse().unwrap(),
            ports: (port, port),
            protocol: Protocol::Tcp,
            action: Action::Allow,
            rule: u32::from(port),
            budget: None,
            requires_grant: false,
            max_connections: None,
        })
        .collect();
    let err = compile(&p, 0, 1, &|_: &Path| None).unwrap_err();
    assert_eq!(
        err,
        CompileError::NetListTooLong {
            network: "10.0.0.0/8".into(),
            rule: "rule 32".into()
        }
    );
    // Rules an earlier one covers take no room: a host's own catch-all deny leaves out the 32
    // single-port rules of the network around it (which fill that network's list exactly).
    let mut text = String::from("[network]\n[[network.deny]]\ncidr = \"10.1.2.3\"\n");
    for port in 1..=NET_LIST_LEN {
        text.push_str(&format!(
            "[[network.allow]]\ncidr = \"10.0.0.0/8\"\nports = {port}\n"
        ));
    }
    let p = policy(&text);
    let image = compile_ok(&p, 0, 1);
    assert_eq!(net_list(&p, &image, "10.1.2.3"), ["network.deny[0]"]);
    assert_eq!(net_list(&p, &image, "10.0.0.0/8").len(), NET_LIST_LEN);
    check_lists_against_evaluator(&p, &image, &["10.1.2.3", "10.1.2.4"]);
}

/// For every port around the rules' boundaries and both protocols, the first matching entry of
/// the destination's longest matching prefix decides as [`Policy::evaluate`] does.
fn check_lists_against_evaluator(p: &Policy, image: &SlotImage, addrs: &[&str]) {
    use std::net::{IpAddr, SocketAddr};

    use crate::evaluate::{Reason, Request};
    let net = p.network.as_ref().unwrap();
    let mut ports: Vec<u16> = vec![0, 1, u16::MAX];
    for r in &net.rules {
        ports.extend([r.ports.0, r.ports.1]);
        ports.extend([r.ports.0.saturating_sub(1), r.ports.1.saturating_add(1)]);
    }
    for addr in addrs {
        let ip: IpAddr = addr.parse().unwrap();
        let mapped = match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        let longest = image
            .net()
            .iter()
            .filter(|e| e.network().contains(&mapped))
            .max_by_key(|e| e.prefix_len);
        for &port in &ports {
            for udp in [false, true] {
                let bit = if udp { proto::UDP } else { proto::TCP };
                let kernel = longest.and_then(|e| {
                    e.entries().iter().find(|x| {
                        u32::from(x.proto) & bit != 0 && x.port_lo <= port && port <= x.port_hi
                    })
                });
                let reference = p.evaluate(&Request::Connect {
                    addr: SocketAddr::new(ip, port),
                    udp,
                    send: udp,
                });
                match (kernel, reference.reason) {
                    (Some(x), Reason::Rule(id)) => {
                        assert_eq!(x.rule_id, id, "{addr}:{port} udp={udp}");
                    }
                    (None, Reason::Default) => {}
                    (k, r) => panic!("{addr}:{port} udp={udp}: lists {k:?}, evaluator {r:?}"),
                }
            }
        }
    }
}

#[test]
fn config_fields() {
    let none = compile_ok(&policy("mode = \"audit\"\n"), 0, 5);
    assert_eq!(
        *none.config(),
        Config {
            generation: 5,
            // Only the guard, namespaces and ipc, which every policy governs.
            governs: governs::GUARD | governs::PROCESS | governs::IPC,
            mode: mode::AUDIT,
            exec_default: action::ALLOW,
            net_default: action::ALLOW,
            net_rule_count: 0,
            file_read_default: action::ALLOW,
            file_write_default: action::ALLOW,
            record: record::ALL,
            net_icmp: action::ALLOW,
            net_icmp_rule: RULE_DEFAULT,
            net_raw: action::ALLOW,
            net_raw_rule: RULE_DEFAULT,
            namespaces: action::DENY,
            namespaces_rule: 0,
            ipc_unix_default: action::DENY,
            record_rate: 0,
            exec_budget: 0,
            exec_budget_rule: RULE_DEFAULT,
        },
        "ungoverned categories default to allow (never consulted)"
    );

    let all = compile_ok(
        &policy(
            r#"
[exec]
[file]
default = { read = "allow" }
[network]
default = "allow"
[[network.deny]]
cidr = "192.0.2.0/24"
[[network.deny]]
cidr = "198.51.100.0/24"
"#,
        ),
        1,
        u64::MAX,
    );
    assert_eq!(
        *all.config(),
        Config {
            generation: u64::MAX,
            governs: governs::EXEC
                | governs::FILE
                | governs::NETWORK
                | governs::PROCESS
                | governs::IPC
                | governs::GUARD,
            mode: mode::ENFORCE,
            exec_default: action::DENY,
            net_default: action::ALLOW,
            net_rule_count: 2,
            file_read_default: action::ALLOW,
            file_write_default: action::DENY,
            record: record::ALL,
            net_icmp: action::ALLOW,
            net_icmp_rule: RULE_DEFAULT,
            net_raw: action::ALLOW,
            net_raw_rule: RULE_DEFAULT,
            namespaces: action::DENY,
            // After the two network rules.
            namespaces_rule: 2,
            ipc_unix_default: action::DENY,
            record_rate: 0,
            exec_budget: 0,
            exec_budget_rule: RULE_DEFAULT,
        }
    );
}

#[test]
fn governed_categories_and_switches() {
    for (text, governed) in [
        ("[exec]\n", governs::EXEC | governs::PROCESS | governs::IPC),
        ("[file]\n", governs::FILE | governs::PROCESS | governs::IPC),
        (
            "[network]\n",
            governs::NETWORK | governs::PROCESS | governs::IPC,
        ),
        (
            "[exec]\n[network]\n",
            governs::EXEC | governs::NETWORK | governs::PROCESS | governs::IPC,
        ),
        ("[ipc]\n", governs::IPC | governs::PROCESS),
        (
            "[network]\n[ipc]\nunix = \"allow\"\n",
            governs::NETWORK | governs::IPC | governs::PROCESS,
        ),
    ] {
        let config = *compile_ok(&policy(text), 0, 1).config();
        assert_eq!(config.governs, governed | governs::GUARD, "{text:?}");
        assert_eq!(config.mode, mode::ENFORCE, "{text:?}");
    }
    let allowed =
        *compile_ok(&policy("[exec]\n[process]\nnamespaces = \"allow\"\n"), 0, 1).config();
    assert_eq!(
        (allowed.governs, allowed.namespaces, allowed.namespaces_rule),
        (
            governs::EXEC | governs::PROCESS | governs::IPC | governs::GUARD,
            action::ALLOW,
            0
        )
    );
    let file = *compile_ok(&policy("[file]\ndefault = \"allow\"\n"), 0, 1).config();
    assert_eq!(
        (file.file_read_default, file.file_write_default),
        (action::ALLOW, action::ALLOW)
    );
    let file = *compile_ok(&policy("[file]\ndefault = { write = \"allow\" }\n"), 0, 1).config();
    assert_eq!(
        (file.file_read_default, file.file_write_default),
        (action::DENY, action::ALLOW)
    );
    for (text, unix) in [
        ("[exec]\n", action::DENY),
        ("[ipc]\n", action::DENY),
        ("[ipc]\nunix = \"deny\"\n", action::DENY),
        ("[file]\n[ipc]\nunix = \"allow\"\n", action::ALLOW),
    ] {
        let config = *compile_ok(&policy(text), 0, 1).config();
        assert_eq!(config.ipc_unix_default, unix, "{text:?}");
    }
}

#[test]
fn slot_and_generation_limits() {
    let p = policy("[exec]\nallow = [\"/usr/bin/**\"]\n");
    assert_eq!(
        compile(&p, MAX_POLICY_SLOTS, 1, &no_files),
        Err(CompileError::SlotOutOfRange {
            slot: MAX_POLICY_SLOTS
        })
    );
    assert_eq!(
        compile(&p, u32::MAX, 1, &no_files),
        Err(CompileError::SlotOutOfRange { slot: u32::MAX })
    );
    assert_eq!(
        compile(&p, 0, 0, &no_files),
        Err(CompileError::GenerationZero)
    );
    let last = compile_ok(&p, MAX_POLICY_SLOTS - 1, 1);
    assert_eq!(
        u32::from(last.paths(PathTable::Exec)[0].key.slot),
        MAX_POLICY_SLOTS - 1
    );
}

#[test]
fn rule_count_limits() {
    // Validation refuses such policies; a policy built by hand is refused here too, never
    // written past its slot's region.
    let mut p = policy("[exec]\n[file]\n[network]\n");
    // Exact deny rules: the kind whose files are looked up.
    let rule = |i: usize| PathRule {
        pattern: PathPattern::Exact(format!("/bin/f{i}")),
        action: Action::Deny,
        rule: 0,
    };
    p.rules.push(RuleInfo {
        id: "exec.deny[0]".into(),
        text: "/bin/f".into(),
        action: Action::Deny,
    });
    let max_paths = MAX_PATH_RULES as usize;
    p.exec.as_mut().unwrap().rules = (0..max_paths).map(rule).collect();
    let image = compile_ok(&p, 0, 1);
    assert_eq!(image.paths(PathTable::Exec).len(), max_paths);

    p.exec.as_mut().unwrap().rules.push(rule(max_paths));
    let never_asked = |path: &Path| -> Option<FileId> {
        panic!(
            "{} looked up for a policy that does not fit",
            path.display()
        )
    };
    assert_eq!(
        compile(&p, 0, 1, &never_asked),
        Err(CompileError::TooManyRules {
            category: "exec",
            count: max_paths + 1,
            max: MAX_PATH_RULES
        })
    );
    p.exec.as_mut().unwrap().rules.pop();
    p.file.as_mut().unwrap().read = (0..=max_paths).map(rule).collect();
    assert!(matches!(
        compile(&p, 0, 1, &no_files),
        Err(CompileError::TooManyRules {
            category: "file read",
            ..
        })
    ));
    p.file.as_mut().unwrap().read.clear();

    let net_rule = NetworkRule {
        net: "::1/128".parse().unwrap(),
        ports: (0, u16::MAX),
        protocol: Protocol::Any,
        action: Action::Allow,
        rule: 0,
        budget: None,
        requires_grant: false,
        max_connections: None,
    };
    let max_net = MAX_NET_RULES as usize;
    p.network.as_mut().unwrap().rules = (0..max_net)
        .map(|i| NetworkRule {
            net: ipnet::Ipv6Net::new(
                std::net::Ipv4Addr::from(0x0a00_0000 + u32::try_from(i).unwrap()).to_ipv6_mapped(),
                128,
            )
            .unwrap(),
            ..net_rule.clone()
        })
        .collect();
    let image = compile_ok(&p, MAX_POLICY_SLOTS - 1, 1);
    assert_eq!(image.net().len(), max_net, "one prefix per host");
    assert_eq!(image.config().net_rule_count, MAX_NET_RULES);
    p.network.as_mut().unwrap().rules.push(net_rule);
    assert_eq!(
        compile(&p, 0, 1, &no_files),
        Err(CompileError::TooManyRules {
            category: "network",
            count: max_net + 1,
            max: MAX_NET_RULES
        })
    );
}

#[test]
fn entry_patterns_read_back_as_written() {
    let p = policy(
        r#"
[file]
allow = ["/etc/hosts", "/work/**", "/**"]
"#,
    );
    let image = compile_ok(&p, 0, 1);
    for table in [PathTable::FileRead, PathTable::FileWrite] {
        let patterns: Vec<String> = image.paths(table).iter().map(PathEntry::pattern).collect();
        assert_eq!(patterns, ["/etc/hosts", "/work/**", "/**"]);
    }
    assert!(image.paths(PathTable::Exec).is_empty());
}

#[test]
fn subtree_rules_also_key_their_directory() {
    let p = policy(
        r#"
[exec]
allow = ["/usr/bin/**", "/**", "/opt/**", "/opt"]
[file]
allow = [{ path = "/work/**", access = ["write"] }]
deny = [{ path = "/work", access = ["read"] }]
"#,
    );
    let image = compile_ok(&p, 2, 1);
    let dirs: Vec<(String, u32, &str)> = image
        .dir_paths(PathTable::Exec)
        .iter()
        .map(|e| (e.pattern(), e.prefix_len, rule_id(&p, e.value.rule_id)))
        .collect();
    // `/usr/bin/**` also keys `/usr/bin` (with its NUL, as long as `/usr/bin/`); `/**` needs no
    // such key (its `/` matches `/`); `/opt` is named by an exact rule, which decides it.
    assert_eq!(dirs, [("/usr/bin".to_owned(), 16 + 9 * 8, "exec.allow[0]")]);
    let entry = image.dir_paths(PathTable::Exec)[0];
    assert_eq!(entry.prefix(), b"/usr/bin\0");
    assert_eq!(u32::from(entry.key.slot), 2);
    assert_eq!(entry.value.action, action::ALLOW);
    // Per table: the write subtree keys `/work` for writing; for reading an exact rule names it.
    let write: Vec<String> = image
        .dir_paths(PathTable::FileWrite)
        .iter()
        .map(PathEntry::pattern)
        .collect();
    assert_eq!(write, ["/work"]);
    assert!(image.dir_paths(PathTable::FileRead).is_empty());
}

#[test]
fn directories_above_deny_rules_are_keyed_in_the_ancestor_namespace() {
    let p = policy(
        r#"
[exec]
deny = ["/opt/a/bad"]
[file]
allow = ["/ws/**"]
deny = [{ path = "/ws/proj/secret/**", access = ["read"] }, "/opt/a/other"]
"#,
    );
    let image = compile_ok(&p, 3, 1);
    let keys: Vec<(String, u16, &str)> = image
        .ancestor_paths()
        .iter()
        .map(|e| (e.pattern(), e.key.slot, rule_id(&p, e.value.rule_id)))
        .collect();
    let slot = 3 | ANCESTOR_SLOT_BIT;
    assert_eq!(
        keys,
        [
            ("/opt/a".to_owned(), slot, "exec.deny[0]"),
            ("/opt".to_owned(), slot, "exec.deny[0]"),
            ("/ws/proj".to_owned(), slot, "file.deny[0]"),
            ("/ws".to_owned(), slot, "file.deny[0]"),
        ]
    );
    assert!(image
        .ancestor_paths()
        .iter()
        .all(|e| e.value.action == action::DENY && e.prefix().ends_with(b"\0")));
}

/// The kernel's `UNIX_RULES` lookups (`oxd-ebpf/src/unix.rs`), over the compiled entries: a
/// path with its NUL in one longest-prefix match; an abstract name in the exact space, then the
/// prefix space.
fn kernel_unix_lookup(image: &SlotImage, target: &str) -> Option<RuleValue> {
    let slot = u16::try_from(image.slot()).unwrap();
    let lpm = |key: &[u8]| {
        image
            .unix_paths()
            .iter()
            .filter(|e| e.key.slot == slot)
            .filter(|e| {
                let len = ((e.prefix_len - SLOT_PREFIX_BITS) / 8) as usize;
                len <= key.len() && e.key.path[..len] == key[..len]
            })
            .max_by_key(|e| e.prefix_len)
            .map(|e| e.value)
    };
    match target.strip_prefix('@') {
        None => {
            let mut key = target.as_bytes().to_vec();
            key.push(0);
            lpm(&key)
        }
        Some(name) => {
            let mut key = vec![
                oxd_common::UNIX_ABSTRACT_EXACT,
                u8::try_from(name.len()).unwrap(),
            ];
            key.extend_from_slice(name.as_bytes());
            lpm(&key).or_else(|| {
                key[0] = oxd_common::UNIX_ABSTRACT_PREFIX;
                key[1] = 0;
                lpm(&key)
            })
        }
    }
}

#[test]
fn unix_rules_compile_to_keys_the_kernel_finds_as_the_evaluator_decides() {
    let p = policy(concat!(
        "[exec]\n[ipc]\n",
        "unix_allow = [\"/run/user/1000/bus\", \"/tmp/.X11-unix/**\", \"@dbus-*\", \"@ab\", ",
        "\"/srv/**\", \"/srv/private\"]\n",
        "unix_deny = [\"/tmp/.X11-unix/X9\", \"@dbus-secret\", \"/srv/private/**\", \"@*\", ",
        "\"@a*\"]\n",
    ));
    let image = compile_ok(&p, 5, 1);
    assert!(image.unix_paths().iter().all(|e| e.key.slot == 5));
    // `@ab` is keyed with its length, so `@abc` does not match it as a prefix.
    let (key, bits) = unix_key(&crate::policy::UnixPattern::Abstract("ab".into()));
    assert_eq!(key, [oxd_common::UNIX_ABSTRACT_EXACT, 2, b'a', b'b']);
    assert_eq!(bits, 32);
    for target in [
        "/run/user/1000/bus",
        "/run/user/1000/bus2",
        "/run/user/1000",
        "/tmp/.X11-unix/X0",
        "/tmp/.X11-unix/X9",
        "/tmp/.X11-unix",
        "/srv",
        "/srv/a",
        "/srv/private",
        "/srv/private/x",
        "/other",
        "@dbus-session",
        "@dbus-secret",
        "@dbus-secret2",
        "@ab",
        "@abc",
        "@a",
        "@",
        "@x",
        "@/srv/a",
    ] {
        let decision = p.evaluate(&crate::evaluate::Request::Unix {
            path: target.into(),
            inside: false,
        });
        let kernel = kernel_unix_lookup(&image, target);
        let expected = match decision.reason {
            crate::evaluate::Reason::Rule(rule) => Some(RuleValue {
                rule_id: rule,
                action: action_bits(decision.action),
            }),
            _ => None,
        };
        assert_eq!(kernel, expected, "{target}");
    }
    // Clearing the slot finds these entries by their slot, like the other tries'.
    let empty = compile_ok(&policy("[exec]\n"), 5, 1);
    assert!(empty.unix_paths().is_empty());
}

#[test]
fn budgets_are_named_by_their_rules_entries_and_keep_their_id_when_the_rule_is_unchanged() {
    let budgeted = "[[network.allow]]\ncidr = \"10.0.0.0/8\"\nports = 443\nprotocol = \"tcp\"\n\
                    budget = { count = 5, per = \"1m\" }\n";
    let other = "[[network.allow]]\ncidr = \"10.1.0.0/16\"\nbudget = { count = 2, per = \"1s\" }\n";
    let plain = "[[network.allow]]\ncidr = \"127.0.0.1\"\n";
    let a = policy(&format!("[network]\n{budgeted}{plain}"));
    let b = policy(&format!("[network]\n{plain}{other}{budgeted}"));
    let image_a = compile_ok(&a, 3, 1);
    let image_b = compile_ok(&b, 4, 2);
    assert_eq!(image_a.budgets().len(), 1);
    assert_eq!(image_b.budgets().len(), 2);
    let spec_of = |image: &SlotImage, network: &str| {
        let entry = image
            .net()
            .iter()
            .find(|e| network_text(e.network()) == network)
            .expect("the network's entry");
        let index = entry.entries()[0].check;
        assert_ne!(index, 0, "{network} has a budget");
        image.budgets()[usize::from(index) - 1]
    };
    let spec_a = spec_of(&image_a, "10.0.0.0/8");
    let spec_b = spec_of(&image_b, "10.0.0.0/8");
    assert_eq!((spec_a.count, spec_a.per_ms), (5, 60_000));
    assert_eq!(spec_a.id, spec_b.id, "same rule, same budget: same counter");
    let spec_other = spec_of(&image_b, "10.1.0.0/16");
    assert_eq!((spec_other.count, spec_other.per_ms), (2, 1000));
    assert_ne!(spec_other.id, spec_a.id);
    let plain_entry = image_a
        .net()
        .iter()
        .find(|e| network_text(e.network()) == "127.0.0.1/32")
        .expect("the plain rule's entry");
    assert_eq!(plain_entry.entries()[0].check, 0);
    // A changed budget is another counter.
    let c = policy(&format!(
        "[network]\n{}",
        budgeted.replace("count = 5", "count = 6")
    ));
    assert_ne!(spec_of(&compile_ok(&c, 5, 3), "10.0.0.0/8").id, spec_a.id);
    let mut ids = budget_ids(&b);
    ids.sort_unstable();
    let mut expected = vec![spec_other.id, spec_a.id];
    expected.sort_unstable();
    assert_eq!(ids, expected);
}

#[test]
fn connection_limits_share_the_budget_table_and_keep_their_id_whatever_the_limit() {
    let limited = |max: u32| {
        format!(
            "[[network.allow]]\ncidr = \"10.0.0.0/8\"\nports = 443\nprotocol = \"tcp\"\n\
             budget = {{ count = 5, per = \"1m\" }}\nmax_connections = {max}\n"
        )
    };
    let plain = "[[network.allow]]\ncidr = \"127.0.0.1\"\nmax_connections = 1\n";
    let a = policy(&format!("[network]\n{}{plain}", limited(4)));
    let image = compile_ok(&a, 3, 1);
    let entry_of = |image: &SlotImage, network: &str| {
        image
            .net()
            .iter()
            .find(|e| network_text(e.network()) == network)
            .expect("the network's entry")
            .entries()[0]
    };
    let wide = entry_of(&image, "10.0.0.0/8");
    let budget = image.budgets()[usize::from(wide.check) - 1];
    let limit = image.budgets()[usize::from(wide.limit) - 1];
    assert_eq!((budget.count, budget.per_ms), (5, 60_000));
    assert_eq!((limit.count, limit.per_ms), (4, 0), "a limit has no window");
    assert_ne!(budget.id, limit.id);
    let narrow = entry_of(&image, "127.0.0.1/32");
    assert_eq!(narrow.check, 0);
    let narrow_limit = image.budgets()[usize::from(narrow.limit) - 1];
    assert_eq!((narrow_limit.count, narrow_limit.per_ms), (1, 0));
    assert_eq!(image.budgets().len(), 3);
    // Another limit on the same rule: the same counter (its sockets are still open).
    let b = policy(&format!("[network]\n{}", limited(9)));
    let image_b = compile_ok(&b, 4, 2);
    let wide_b = entry_of(&image_b, "10.0.0.0/8");
    let limit_b = image_b.budgets()[usize::from(wide_b.limit) - 1];
    assert_eq!((limit_b.count, limit_b.id), (9, limit.id));
    let mut ids = budget_ids(&a);
    ids.sort_unstable();
    let mut expected = vec![budget.id, limit.id, narrow_limit.id];
    expected.sort_unstable();
    assert_eq!(ids, expected);
}

#[test]
fn the_exec_budget_follows_the_network_budgets_and_keeps_its_id() {
    let p = policy(
        "[exec]\ndefault = \"allow\"\nbudget = { count = 7, per = \"1m\" }\n[network]\n\
         [[network.allow]]\ncidr = \"10.0.0.0/8\"\nbudget = { count = 5, per = \"1m\" }\n",
    );
    let image = compile_ok(&p, 2, 1);
    let config = image.config();
    assert_eq!(config.exec_budget, 2, "after the network rule's budget");
    let spec = image.budgets()[1];
    assert_eq!((spec.count, spec.per_ms), (7, 60_000));
    let rule = p.exec.as_ref().unwrap().budget.unwrap().rule;
    assert_eq!(config.exec_budget_rule, rule);
    assert_ne!(spec.id, image.budgets()[0].id);
    let alone = policy("[exec]\nbudget = { count = 7, per = \"1m\" }\n");
    let image_alone = compile_ok(&alone, 3, 2);
    assert_eq!(image_alone.config().exec_budget, 1);
    assert_eq!(
        image_alone.budgets()[0].id,
        spec.id,
        "same budget, same counter"
    );
    assert!(budget_ids(&alone).contains(&spec.id));
    let none = compile_ok(&policy("[exec]\n"), 4, 3);
    assert_eq!(none.config().exec_budget, 0);
}

#[test]
fn a_rule_that_requires_a_grant_says_so_in_its_entry() {
    let p = policy(
        "[network]\n[[network.allow]]\ncidr = \"10.0.0.0/8\"\nrequires_grant = true\n\
         [[network.allow]]\ncidr = \"10.1.0.0/16\"\n",
    );
    let image = compile_ok(&p, 2, 1);
    let check_of = |network: &str| {
        image
            .net()
            .iter()
            .find(|e| network_text(e.network()) == network)
            .expect("the network's entry")
            .entries()[0]
            .check
    };
    assert_eq!(check_of("10.0.0.0/8"), NET_CHECK_GRANT);
    assert_eq!(check_of("10.1.0.0/16"), 0);
    assert!(image.budgets().is_empty());
}
