use std::path::Path;

use oxd_common::{MAX_NET_RULES, MAX_PATH_RULES};

use super::*;

fn parse(text: &str) -> Result<Policy, String> {
    Policy::parse(Path::new("test.toml"), text).map_err(|e| e.to_string())
}

#[test]
fn example_policy_compiles() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/example.toml");
    let policy = Policy::load(&path).expect("example policy must compile");
    assert_eq!(policy.name, "example");
    assert!(policy.exec.is_some());
    assert!(policy.network.is_some());
}

#[test]
fn every_shipped_policy_compiles() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("policies/ exists") {
        let path = entry.expect("directory entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            Policy::load(&path).unwrap_or_else(|e| panic!("{e}"));
            count += 1;
        }
    }
    assert!(count >= 4, "expected the example policies, found {count}");
}

#[test]
fn deny_wins_on_the_same_pattern() {
    let policy =
        parse("[exec]\nallow = [\"/usr/bin/curl\"]\ndeny = [\"/usr/bin/curl\"]\n").unwrap();
    let exec = policy.exec.unwrap();
    assert_eq!(exec.rules.len(), 1);
    assert_eq!(exec.rules[0].action, Action::Deny);
    assert_eq!(policy.rules[exec.rules[0].rule as usize].id, "exec.deny[0]");
}

#[test]
fn errors_point_at_line_and_column() {
    let err = parse("mode = \"enforce\"\n[exec]\nallow = [\"bin/ls\"]\n").unwrap_err();
    assert!(err.starts_with("test.toml:3:10: "), "{err}");
    assert!(err.contains("not an absolute path"), "{err}");

    let err = parse("[exec]\ndefualt = \"deny\"\n").unwrap_err();
    assert!(err.starts_with("test.toml:2:1: "), "{err}");
    assert!(err.contains("unknown field `defualt`"), "{err}");

    let err = parse("[network]\n[[network.allow]]\ncidr = \"10.0.0.1/8\"\n").unwrap_err();
    assert!(err.starts_with("test.toml:3:8: "), "{err}");
    assert!(err.contains("10.0.0.0/8"), "{err}");

    let err =
        parse("[network]\n[[network.allow]]\ncidr = \"::1\"\nports = \"90-80\"\n").unwrap_err();
    assert!(err.starts_with("test.toml:4:9: "), "{err}");
}

#[test]
fn network_rules_are_ordered_most_specific_first_deny_first() {
    let policy = parse(
        r#"
[network]
default = "allow"
[[network.allow]]
cidr = "10.0.0.0/8"
[[network.allow]]
cidr = "10.1.0.0/16"
ports = 443
[[network.deny]]
cidr = "10.1.0.0/16"
ports = 443
[[network.deny]]
cidr = "10.1.0.0/16"
"#,
    )
    .unwrap();
    let net = policy.network.unwrap();
    let ids: Vec<_> = net
        .rules
        .iter()
        .map(|r| policy.rules[r.rule as usize].id.as_str())
        .collect();
    assert_eq!(
        ids,
        [
            "network.deny[0]",
            "network.allow[1]",
            "network.deny[1]",
            "network.allow[0]"
        ]
    );
    assert_eq!(net.default, Action::Allow);
}

#[test]
fn rule_limits_reject_the_whole_policy() {
    let mut text = String::from("[network]\n");
    for i in 0..=MAX_NET_RULES {
        text.push_str(&format!(
            "[[network.allow]]\ncidr = \"10.0.{}.{}\"\n",
            i / 256,
            i % 256
        ));
    }
    let err = parse(&text).unwrap_err();
    let count = MAX_NET_RULES + 1;
    assert!(
        err.contains(&format!("too many network rules ({count})")),
        "{err}"
    );
    let many: Vec<String> = (0..=MAX_PATH_RULES)
        .map(|i| format!("\"/bin/f{i}\""))
        .collect();
    let err = parse(&format!("[exec]\nallow = [{}]\n", many.join(", "))).unwrap_err();
    assert!(err.contains("too many exec rules (4097)"), "{err}");
}

#[test]
fn sections_default_to_deny_and_absent_sections_are_not_enforced() {
    let policy = parse("[exec]\nallow = [\"/usr/bin/**\"]\n").unwrap();
    assert_eq!(policy.exec.as_ref().map(|e| e.default), Some(Action::Deny));
    assert!(policy.network.is_none());
    assert!(policy.needs_lsm());
    let policy = parse("[network]\n").unwrap();
    assert!(!policy.needs_lsm());
}

#[test]
fn line_col_counts_characters_from_one() {
    let text = "a = 1\nné = \"x\"\n";
    assert_eq!(line_col(text, 0), (1, 1));
    assert_eq!(line_col(text, 6), (2, 1));
    // `=` after the two-byte `é`.
    assert_eq!(line_col(text, text.find('=').unwrap()), (1, 3));
    assert_eq!(line_col(text, text.rfind('=').unwrap()), (2, 4));
    assert_eq!(line_col(text, text.len() + 10), (3, 1));
}

#[test]
fn process_namespaces_switch() {
    // Default deny wherever exec or file rules judge paths, named like a rule after all others.
    let p = parse("[exec]\nallow = [\"/usr/bin/**\"]\n").unwrap();
    let ns = p.namespaces.expect("governed with [exec]");
    assert_eq!(ns.action, Action::Deny);
    assert_eq!(ns.rule, 1);
    assert_eq!(p.rules[1].id, "process.namespaces");
    assert_eq!(p.rules[1].text, "namespaces = \"deny\" (default)");

    let p = parse("[file]\n[process]\nnamespaces = \"allow\"\n").unwrap();
    let ns = p.namespaces.expect("governed with [file]");
    assert_eq!(ns.action, Action::Allow);
    assert_eq!(p.rules[ns.rule as usize].text, "namespaces = \"allow\"");

    // Every policy governs them (issue 10: no mount or user namespace for any agent unless
    // its policy says so), a network-only one too.
    let ns = parse("[network]\n")
        .unwrap()
        .namespaces
        .expect("always governed");
    assert_eq!(ns.action, Action::Deny);
    let p = parse("[network]\n[process]\nnamespaces = \"allow\"\n").unwrap();
    assert_eq!(p.namespaces.expect("written").action, Action::Allow);

    let err = parse("[exec]\n[process]\nnamespaces = \"maybe\"\n").unwrap_err();
    assert!(err.starts_with("test.toml:3:14: "), "{err}");
    assert!(err.contains("allow") && err.contains("deny"), "{err}");
    let err = parse("[exec]\n[process]\nnamespace = \"deny\"\n").unwrap_err();
    assert!(err.starts_with("test.toml:3:1: "), "{err}");
    assert!(err.contains("unknown field `namespace`"), "{err}");
}

#[test]
fn process_limit_is_a_count_of_tasks() {
    assert_eq!(parse("[exec]\n").unwrap().max_processes, None);
    let p = parse("[network]\n[process]\nmax_processes = 64\n").unwrap();
    assert_eq!(p.max_processes, Some(64));
    for bad in ["0", "-1", "4194305", "99999999999"] {
        let err = parse(&format!("[exec]\n[process]\nmax_processes = {bad}\n")).unwrap_err();
        assert!(err.starts_with("test.toml:3:17: "), "{bad}: {err}");
        assert!(err.contains("from 1 to 4194304"), "{bad}: {err}");
    }
    let err = parse("[exec]\n[process]\nmax_processes = \"8\"\n").unwrap_err();
    assert!(err.starts_with("test.toml:3:17: "), "{err}");
}

#[test]
fn ipc_unix_rules_validate_with_locations() {
    let policy = parse(concat!(
        "[exec]\n[ipc]\nunix = \"deny\"\n",
        "unix_allow = [\"/run/user/1000/bus\", \"@dbus-*\", \"/run/user/1000/bus\"]\n",
        "unix_deny = [\"/var/run/docker.sock\"]\n",
    ))
    .unwrap();
    let ipc = policy.ipc.as_ref().unwrap();
    assert_eq!(ipc.unix, Action::Deny);
    // Deny rules first; a repeated pattern is kept once.
    let ids: Vec<&str> = ipc
        .unix_rules
        .iter()
        .map(|r| policy.rules[r.rule as usize].id.as_str())
        .collect();
    assert_eq!(
        ids,
        ["ipc.unix_deny[0]", "ipc.unix_allow[0]", "ipc.unix_allow[1]"]
    );
    assert_eq!(
        policy.rules[ipc.unix_rules[2].rule as usize].text,
        "@dbus-*"
    );
    // `[process] namespaces` is still numbered last.
    assert_eq!(
        policy.namespaces.unwrap().rule as usize,
        policy.rules.len() - 1
    );

    let err = parse("[ipc]\nunix_allow = [\n  \"/run/user/*/bus\",\n]\n").unwrap_err();
    assert!(err.starts_with("test.toml:3:3: "), "{err}");
    assert!(err.contains("wildcards"), "{err}");
    let err = parse("[ipc]\nunix_deny = [\"docker.sock\"]\n").unwrap_err();
    assert!(err.starts_with("test.toml:2:14: "), "{err}");
    assert!(
        err.contains("neither a socket path nor an abstract name"),
        "{err}"
    );
    let err = parse("[ipc]\nunix_deny = [\"@a*b\"]\n").unwrap_err();
    assert!(err.starts_with("test.toml:2:14: "), "{err}");
    let err = parse("[ipc]\nunix_alow = []\n").unwrap_err();
    assert!(err.starts_with("test.toml:2:1: "), "{err}");

    let many: Vec<String> = (0..=MAX_PATH_RULES).map(|i| format!("\"@s{i}\"")).collect();
    let err = parse(&format!("[ipc]\nunix_allow = [{}]\n", many.join(", "))).unwrap_err();
    assert!(err.contains("too many Unix socket rules"), "{err}");
}

#[test]
fn budgets_validate_with_locations() {
    let rule = |budget: &str| {
        format!("[network]\n[[network.allow]]\ncidr = \"127.0.0.1\"\nbudget = {budget}\n")
    };
    let policy = parse(&rule(r#"{ count = 100, per = "1m" }"#)).unwrap();
    let net = policy.network.unwrap();
    assert_eq!(
        net.rules[0].budget,
        Some(Budget {
            count: 100,
            per_ms: 60_000
        })
    );
    assert_eq!(
        policy.rules[0].text,
        "127.0.0.1 ports 0-65535 any, budget 100 per 1m"
    );
    let policy = parse(&rule(r#"{ count = 1, per = "1h 30m" }"#)).unwrap();
    assert_eq!(
        policy.network.unwrap().rules[0].budget.unwrap().per_ms,
        5_400_000
    );

    for (budget, col, message) in [
        (
            r#"{ count = 0, per = "1m" }"#,
            20,
            "count must be a number of actions from 1",
        ),
        (
            r#"{ count = 16777216, per = "1m" }"#,
            20,
            "from 1 to 16777215",
        ),
        (r#"{ count = 1, per = "soon" }"#, 29, "is not a duration"),
        (r#"{ count = 1, per = "0s" }"#, 29, "from 1ms to 30 days"),
        (
            r#"{ count = 1, per = "31days" }"#,
            29,
            "from 1ms to 30 days",
        ),
        (r#"{ count = 1, per = "1500us" }"#, 29, "whole milliseconds"),
        (r"{ count = 1 }", 10, "missing field `per`"),
        (
            r#"{ count = 1, per = "1s", burst = 2 }"#,
            35,
            "unknown field `burst`",
        ),
    ] {
        let err = parse(&rule(budget)).unwrap_err();
        assert!(
            err.starts_with(&format!("test.toml:4:{col}: ")) && err.contains(message),
            "{budget}: {err}"
        );
    }
    let err = parse(
        "[network]\n[[network.deny]]\ncidr = \"127.0.0.1\"\nbudget = { count = 1, per = \"1s\" }\n",
    )
    .unwrap_err();
    assert!(
        err.starts_with("test.toml:2:1: ") && err.contains("a deny rule cannot have one"),
        "{err}"
    );
    let many = (0..=oxd_common::MAX_BUDGETS)
        .map(|i| {
            format!(
                "[[network.allow]]\ncidr = \"10.0.{}.{}\"\nbudget = {{ count = 1, per = \"1s\" }}\n",
                i / 256,
                i % 256
            )
        })
        .collect::<Vec<_>>()
        .concat();
    let err = parse(&format!("[network]\n{many}")).unwrap_err();
    assert!(err.contains("too many budgets"), "{err}");
}

#[test]
fn an_exec_budget_is_a_rule_of_its_own_and_counts_with_the_others() {
    let policy =
        parse("[exec]\ndefault = \"allow\"\nbudget = { count = 20, per = \"10s\" }\n").unwrap();
    let budget = policy.exec.as_ref().unwrap().budget.unwrap();
    assert_eq!((budget.budget.count, budget.budget.per_ms), (20, 10_000));
    let rule = &policy.rules[budget.rule as usize];
    assert_eq!(
        (rule.id.as_str(), rule.text.as_str()),
        ("exec.budget", "budget 20 per 10s")
    );
    let err = parse("[exec]\nbudget = { count = 0, per = \"1s\" }\n").unwrap_err();
    assert!(err.starts_with("test.toml:2:20: "), "{err}");
    let many = (0..oxd_common::MAX_BUDGETS)
        .map(|i| {
            format!(
                "[[network.allow]]\ncidr = \"10.0.{}.{}\"\nmax_connections = 1\n",
                i / 256,
                i % 256
            )
        })
        .collect::<Vec<_>>()
        .concat();
    parse(&format!("[network]\n{many}")).unwrap();
    let err = parse(&format!(
        "[exec]\nbudget = {{ count = 1, per = \"1s\" }}\n[network]\n{many}"
    ))
    .unwrap_err();
    assert!(
        err.contains("too many budgets and connection limits"),
        "{err}"
    );
}

#[test]
fn connection_limits_validate_with_locations() {
    let policy = parse(
        "[network]\n[[network.allow]]\ncidr = \"127.0.0.1\"\nports = 443\nprotocol = \"tcp\"\n\
         max_connections = 4\nbudget = { count = 10, per = \"1m\" }\n",
    )
    .unwrap();
    let rule = &policy.network.as_ref().unwrap().rules[0];
    assert_eq!(rule.max_connections, Some(4));
    assert_eq!(
        policy.rules[0].text,
        "127.0.0.1 ports 443-443 tcp, budget 10 per 1m, at most 4 open at once"
    );
    for (value, message) in [
        ("0", "from 1 to 65536"),
        ("65537", "from 1 to 65536"),
        ("-1", "from 1 to 65536"),
    ] {
        let err = parse(&format!(
            "[network]\n[[network.allow]]\ncidr = \"127.0.0.1\"\nmax_connections = {value}\n"
        ))
        .unwrap_err();
        assert!(
            err.starts_with("test.toml:4:19: ") && err.contains(message),
            "{value}: {err}"
        );
    }
    let err = parse("[network]\n[[network.deny]]\ncidr = \"127.0.0.1\"\nmax_connections = 2\n")
        .unwrap_err();
    assert!(
        err.starts_with("test.toml:4:19: ") && err.contains("a deny rule cannot have one"),
        "{err}"
    );
    // Limits and budgets share the kernel's table of 256 per policy.
    let many = (0..oxd_common::MAX_BUDGETS / 2)
        .map(|i| {
            format!(
                "[[network.allow]]\ncidr = \"10.0.{}.{}\"\nmax_connections = 1\n\
                 budget = {{ count = 1, per = \"1s\" }}\n",
                i / 256,
                i % 256
            )
        })
        .collect::<Vec<_>>()
        .concat();
    parse(&format!("[network]\n{many}")).unwrap();
    let err = parse(&format!(
        "[network]\n{many}[[network.allow]]\ncidr = \"10.9.0.0\"\nmax_connections = 1\n"
    ))
    .unwrap_err();
    assert!(
        err.contains("too many budgets and connection limits"),
        "{err}"
    );
}

#[test]
fn requires_grant_is_for_allow_rules_without_a_budget() {
    let policy = parse(
        "[network]\n[[network.allow]]\ncidr = \"127.0.0.1\"\nports = 443\nrequires_grant = true\n",
    )
    .unwrap();
    let rule = &policy.network.as_ref().unwrap().rules[0];
    assert!(rule.requires_grant);
    assert_eq!(
        policy.rules[0].text,
        "127.0.0.1 ports 443-443 any, requires a grant"
    );
    let policy =
        parse("[network]\n[[network.allow]]\ncidr = \"127.0.0.1\"\nrequires_grant = false\n")
            .unwrap();
    assert!(!policy.network.unwrap().rules[0].requires_grant);
    let err = parse("[network]\n[[network.deny]]\ncidr = \"127.0.0.1\"\nrequires_grant = true\n")
        .unwrap_err();
    assert!(
        err.starts_with("test.toml:4:18: ") && err.contains("a deny rule cannot require one"),
        "{err}"
    );
    let err = parse(
        "[network]\n[[network.allow]]\ncidr = \"127.0.0.1\"\nrequires_grant = true\nbudget = { \
         count = 1, per = \"1s\" }\n",
    )
    .unwrap_err();
    assert!(
        err.starts_with("test.toml:4:18: ") && err.contains("cannot also have a budget"),
        "{err}"
    );
    let err =
        parse("[network]\n[[network.allow]]\ncidr = \"127.0.0.1\"\nrequires_grant = \"yes\"\n")
            .unwrap_err();
    assert!(err.starts_with("test.toml:4:18: "), "{err}");
}

fn policies_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

/// Whether `text` (TOML) is valid under the policy schema.
fn schema_accepts(text: &str) -> bool {
    let schema = schema();
    let validator = jsonschema::validator_for(&schema).expect("the schema is a valid JSON Schema");
    let instance: serde_json::Value = toml::from_str(text).expect("the test's TOML parses");
    validator.is_valid(&instance)
}

#[test]
fn the_committed_schema_is_the_generated_one() {
    let path = policies_dir().join("oxd-policy.schema.json");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = format!("{}\n", serde_json::to_string_pretty(&schema()).unwrap());
    assert!(
        committed == generated,
        "{} is not what `oxd schema` prints: regenerate it with `cargo run --release -p oxd -- \
         schema > policies/oxd-policy.schema.json`",
        path.display()
    );
}

#[test]
fn every_example_policy_is_valid_under_the_schema_and_parses() {
    let mut seen = 0;
    for entry in std::fs::read_dir(policies_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        seen += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(schema_accepts(&text), "{} fails the schema", path.display());
        Policy::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    assert!(
        seen >= 4,
        "the example policies are in {}",
        policies_dir().display()
    );
    let full = "name = \"full\"\nmode = \"audit\"\n\
        [exec]\ndefault = \"deny\"\nallow = [\"/usr/bin/**\"]\ndeny = [\"/usr/bin/su\"]\n\
        budget = { count = 10, per = \"1s\" }\n\
        [file]\ndefault = { read = \"allow\", write = \"deny\" }\n\
        allow = [\"/tmp/**\", { path = \"/work/**\", access = [\"write\"] }]\n\
        [network]\ndefault = \"deny\"\nicmp = \"allow\"\nraw = \"deny\"\n\
        [[network.allow]]\ncidr = \"10.0.0.0/8\"\nports = \"8000-8999\"\nprotocol = \"tcp\"\n\
        budget = { count = 5, per = \"1m\" }\nmax_connections = 4\n\
        [[network.allow]]\ncidr = \"::1\"\nports = 443\nrequires_grant = true\n\
        [ipc]\nunix = \"deny\"\nunix_allow = [\"@dbus*\"]\n\
        [process]\nnamespaces = \"deny\"\nmax_processes = 64\n";
    assert!(schema_accepts(full));
    parse(full).unwrap();
}

#[test]
fn the_schema_refuses_what_the_parser_refuses() {
    for text in [
        "[exec]\nalow = [\"/usr/bin/git\"]\n",
        "mode = \"learn\"\n",
        "[exec]\nbudget = { count = 1 }\n",
        "[exec]\nbudget = { count = 0, per = \"1s\" }\n",
        "[file]\nallow = [{ path = \"/tmp/**\", acess = [\"read\"] }]\n",
        "[file]\nallow = [{ path = \"/tmp/**\", access = [\"exec\"] }]\n",
        "[file]\ndefault = { read = \"allow\", exec = \"deny\" }\n",
        "[[network.allow]]\ncidr = \"10.0.0.0/8\"\nprotocol = \"sctp\"\n",
        "[[network.allow]]\ncidr = \"10.0.0.0/8\"\nmax_connections = 0\n",
        "[[network.allow]]\ncidr = \"10.0.0.0/8\"\nports = 70000\n",
        "[[network.allow]]\nports = 443\n",
        "[process]\nmax_processes = 0\n",
    ] {
        assert!(!schema_accepts(text), "the schema accepts {text:?}");
        assert!(parse(text).is_err(), "the parser accepts {text:?}");
    }
}
