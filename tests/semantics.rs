//! VM tests of the decision semantics on named cases: file rules through symlinks, UDP, audit
//! mode, over-long paths, shebang scripts, exact vs subtree, and confinement of the agent's own
//! sub-cgroups. Each case also checks that `oxd explain` (the reference evaluator) agrees with
//! what the kernel did.

use std::{fs, os::unix::fs::PermissionsExt as _, path::Path, process::Command};

use crate::{common::*, require_bpf_lsm};

fn probe() -> String {
    probe_bin().to_str().expect("utf-8 probe path").to_owned()
}

/// Allows reading everything the probe and the dynamic loader need, outside `dir`.
fn system_reads() -> String {
    let probe_dir = probe_bin()
        .parent()
        .expect("probe has a directory")
        .display()
        .to_string();
    format!(
        r#"{{ path = "/usr/**", access = ["read"] }}, {{ path = "/etc/**", access = ["read"] }},
    {{ path = "/proc/**", access = ["read"] }}, {{ path = "/dev/**" }},
    {{ path = "{probe_dir}/**", access = ["read"] }}"#
    )
}

/// `oxd explain` exit status for one action: true if it says the action happens.
fn explain_allows(policy: &Path, args: &[&str]) -> bool {
    let output = Command::new(oxd_bin())
        .arg("explain")
        .arg("--policy")
        .arg(policy)
        .args(args)
        .output()
        .expect("run oxd explain");
    eprintln!(
        "oxd explain {args:?}: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    match output.status.code() {
        Some(0) => true,
        Some(1) => false,
        other => panic!(
            "oxd explain failed ({other:?}): {}",
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

fn make_executable_copy(src: &str, dst: &Path) {
    fs::create_dir_all(dst.parent().expect("parent")).expect("create directories");
    fs::copy(src, dst).expect("copy a binary");
    fs::set_permissions(dst, fs::Permissions::from_mode(0o755)).expect("chmod");
}

#[test]
fn file_rules_follow_symlinks_and_need_every_access() {
    require_bpf_lsm();
    let scratch = Scratch::new("file");
    let dir = scratch.path("w");
    fs::create_dir_all(&dir).expect("mkdir");
    let secret = dir.join("secret");
    let notes = dir.join("notes");
    fs::write(&secret, "s").expect("write secret");
    fs::write(&notes, "n").expect("write notes");
    let link = scratch.path("link-to-secret");
    std::os::unix::fs::symlink(&secret, &link).expect("symlink");
    let policy = scratch.policy(&format!(
        r#"
[file]
default = {{ read = "deny", write = "deny" }}
allow = [{reads}, {{ path = "{dir}/**", access = ["read", "write"] }}, {{ path = "{notes}", access = ["read"] }}]
deny = [{{ path = "{secret}", access = ["read"] }}, {{ path = "{notes}", access = ["read"] }}]
"#,
        reads = system_reads(),
        dir = dir.display(),
        secret = secret.display(),
        notes = notes.display(),
    ));
    let log = scratch.path("audit.jsonl");
    let read_secret = format!("read:{}", secret.display());
    let read_link = format!("read:{}", link.display());
    let write_secret = format!("write:{}", secret.display());
    let rw_secret = format!("readwrite:{}", secret.display());
    let read_notes = format!("read:{}", notes.display());
    let write_new = format!("write:{}", dir.join("new").display());
    let write_etc = "write:/etc/oxd-test-should-not-exist";
    let output = oxd_run(
        &policy,
        &log,
        &[
            &probe(),
            &read_secret,
            &read_link,
            &write_secret,
            &rw_secret,
            &read_notes,
            &write_new,
            write_etc,
        ],
    );
    assert!(
        output.status.success(),
        "oxd run failed: {:?}",
        output.status
    );
    let results = probe_results(&output);
    assert_eperm(&results, &read_secret);
    // The symlink is resolved by the kernel: the rule for the real file decides.
    assert_eperm(&results, &read_link);
    assert_ok(&results, &write_secret);
    // read+write needs both: the read deny decides.
    assert_eperm(&results, &rw_secret);
    // allow and deny on the same path and access: deny wins.
    assert_eperm(&results, &read_notes);
    assert_ok(&results, &write_new);
    // Creation is a write too (path_mknod): the file is not even created.
    assert_eperm(&results, write_etc);
    assert!(
        fs::symlink_metadata("/etc/oxd-test-should-not-exist").is_err(),
        "a denied O_CREAT open created the file"
    );

    let records = audit_records(&log);
    let secret_path = secret.display().to_string();
    let secret_records = records_for(&records, "open", &secret_path);
    assert!(
        secret_records.len() >= 4,
        "four opens of the secret (one through the link): {records:#?}"
    );
    for r in &secret_records {
        let expected = if r["access"] == "write" {
            "allow"
        } else {
            "deny"
        };
        assert_eq!(r["decision"], expected, "{r}");
    }
    assert!(
        records_for(&records, "open", &link.display().to_string()).is_empty(),
        "records name the resolved path, never the link"
    );
    assert_record(
        &records,
        "open",
        &notes.display().to_string(),
        "deny",
        "file.deny[1]",
    );

    assert!(!explain_allows(
        &policy,
        &["--open", &link.display().to_string(), "--read"]
    ));
    assert!(explain_allows(
        &policy,
        &["--open", &secret_path, "--write"]
    ));
    assert!(!explain_allows(
        &policy,
        &["--open", &secret_path, "--read", "--write"]
    ));
    assert!(!explain_allows(
        &policy,
        &["--open", "/etc/oxd-x", "--write"]
    ));
}

#[test]
fn udp_sends_are_decided_like_connects() {
    require_bpf_lsm();
    let scratch = Scratch::new("udp");
    let policy = scratch.policy(&format!(
        r#"
[exec]
default = "deny"
allow = ["{probe}", {LIBRARIES}]
[network]
default = "deny"
[[network.allow]]
cidr = "127.0.0.1"
ports = "5000-5001"
protocol = "udp"
[[network.allow]]
cidr = "127.0.0.1"
ports = 6000
protocol = "tcp"
"#,
        probe = probe()
    ));
    let log = scratch.path("audit.jsonl");
    let output = oxd_run(
        &policy,
        &log,
        &[
            &probe(),
            "udp:127.0.0.1:5000",
            "udp:127.0.0.1:5001",
            "udp:127.0.0.1:5002",
            "udp:127.0.0.1:6000",
            "udp:[::1]:5000",
            "udp:[::ffff:127.0.0.1]:5001",
            "connect:127.0.0.1:5000",
        ],
    );
    assert!(
        output.status.success(),
        "oxd run failed: {:?}",
        output.status
    );
    let results = probe_results(&output);
    assert_ok(&results, "udp:127.0.0.1:5000");
    assert_ok(&results, "udp:127.0.0.1:5001");
    assert_eperm(&results, "udp:127.0.0.1:5002");
    // A tcp rule does not cover udp, nor a udp rule tcp.
    assert_eperm(&results, "udp:127.0.0.1:6000");
    assert_eperm(&results, "connect:127.0.0.1:5000");
    assert_eperm(&results, "udp:[::1]:5000");
    assert_ok(&results, "udp:[::ffff:127.0.0.1]:5001");
    let records = audit_records(&log);
    let sends = records_for(&records, "sendmsg", "127.0.0.1:5000");
    assert!(!sends.is_empty(), "{records:#?}");
    assert!(sends
        .iter()
        .all(|r| r["decision"] == "allow" && r["protocol"] == "udp"));
    assert_record(&records, "sendmsg", "127.0.0.1:5002", "deny", "default");
    assert!(explain_allows(
        &policy,
        &["--connect", "127.0.0.1:5001", "--udp"]
    ));
    assert!(!explain_allows(
        &policy,
        &["--connect", "127.0.0.1:5002", "--udp"]
    ));
    assert!(!explain_allows(&policy, &["--connect", "127.0.0.1:5000"]));
}

#[test]
fn audit_mode_denies_nothing_and_records_what_it_would_deny() {
    require_bpf_lsm();
    let scratch = Scratch::new("audit-mode");
    let policy = scratch.policy(&format!(
        r#"
mode = "audit"
[exec]
default = "deny"
allow = ["{probe}"]
[network]
default = "deny"
"#,
        probe = probe()
    ));
    let log = scratch.path("audit.jsonl");
    let output = oxd_run(
        &policy,
        &log,
        &[&probe(), "exec:/usr/bin/id", "udp:127.0.0.1:9"],
    );
    assert!(
        output.status.success(),
        "oxd run failed: {:?}",
        output.status
    );
    let results = probe_results(&output);
    assert_ok(&results, "exec:/usr/bin/id");
    assert_ok(&results, "udp:127.0.0.1:9");
    let records = audit_records(&log);
    for (op, target) in [("exec", "/usr/bin/id"), ("sendmsg", "127.0.0.1:9")] {
        let found = records_for(&records, op, target);
        assert_eq!(found.len(), 1, "{op} {target}: {records:#?}");
        assert_eq!(found[0]["decision"], "deny", "{}", found[0]);
        assert_eq!(found[0]["enforced"], false, "{}", found[0]);
        assert_eq!(found[0]["rule"], "default", "{}", found[0]);
    }
    // explain says the action happens (exit 0) and that it is a recorded deny.
    assert!(explain_allows(&policy, &["--exec", "/usr/bin/id"]));
}

#[test]
fn over_long_path_is_denied_fail_closed_even_when_the_default_allows() {
    require_bpf_lsm();
    let scratch = Scratch::new("long");
    let mut deep = scratch.path("d");
    while deep.display().to_string().len() < 300 {
        deep = deep.join("a-rather-long-directory-name");
    }
    let binary = deep.join("true");
    make_executable_copy("/usr/bin/true", &binary);
    let short = scratch.path("true");
    make_executable_copy("/usr/bin/true", &short);
    let policy = scratch.policy("[exec]\ndefault = \"allow\"\n");
    let log = scratch.path("audit.jsonl");
    let long_exec = format!("exec:{}", binary.display());
    let short_exec = format!("exec:{}", short.display());
    let output = oxd_run(&policy, &log, &[&probe(), &long_exec, &short_exec]);
    assert!(
        output.status.success(),
        "oxd run failed: {:?}",
        output.status
    );
    let results = probe_results(&output);
    assert_eperm(&results, &long_exec);
    assert_ok(&results, &short_exec);
    let records = audit_records(&log);
    let over_long = records_for(&records, "exec", &binary.display().to_string());
    assert_eq!(
        over_long.len(),
        1,
        "the over-long path is recorded in full: {records:#?}"
    );
    assert_eq!(over_long[0]["decision"], "deny");
    assert!(
        over_long[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("too long")),
        "{}",
        over_long[0]
    );
    assert!(!explain_allows(
        &policy,
        &["--exec", &binary.display().to_string()]
    ));
}

#[test]
fn shebang_scripts_are_checked_for_the_script_and_its_interpreter() {
    require_bpf_lsm();
    let scratch = Scratch::new("shebang");
    let dir = scratch.path("scripts");
    fs::create_dir_all(&dir).expect("mkdir");
    let script = |name: &str, interpreter: &str| {
        let path = dir.join(name);
        fs::write(&path, format!("#!{interpreter}\nexit 0\n")).expect("write script");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    };
    let good = script("good.sh", "/usr/bin/dash");
    let bad_interp = script("bad-interp.sh", "/usr/bin/bash");
    let denied = script("denied.sh", "/usr/bin/dash");
    let policy = scratch.policy(&format!(
        r#"
[exec]
default = "deny"
allow = ["{probe}", "{dir}/**", "/usr/bin/dash", "/usr/bin/bash", {LIBRARIES}]
deny = ["{denied}", "/usr/bin/bash"]
"#,
        probe = probe(),
        dir = dir.display(),
        denied = denied.display()
    ));
    let log = scratch.path("audit.jsonl");
    let run_good = format!("exec:{}", good.display());
    let run_bad = format!("exec:{}", bad_interp.display());
    let run_denied = format!("exec:{}", denied.display());
    let output = oxd_run(&policy, &log, &[&probe(), &run_good, &run_bad, &run_denied]);
    assert!(
        output.status.success(),
        "oxd run failed: {:?}",
        output.status
    );
    let results = probe_results(&output);
    assert_ok(&results, &run_good);
    assert_eq!(result_of(&results, &run_good)["status"], 0);
    // Allowed script, denied interpreter.
    assert_eperm(&results, &run_bad);
    // Denied script, allowed interpreter.
    assert_eperm(&results, &run_denied);
    let records = audit_records(&log);
    assert_record(
        &records,
        "exec",
        &bad_interp.display().to_string(),
        "allow",
        "exec.allow[1]",
    );
    let bash = records_for(&records, "exec", "/usr/bin/bash");
    assert_eq!(bash.len(), 1, "the interpreter is checked: {records:#?}");
    assert_eq!(bash[0]["decision"], "deny");
    assert_eq!(
        bash[0]["rule"], "exec.deny[1]",
        "deny wins over the allow of the same path"
    );
    assert_record(
        &records,
        "exec",
        &denied.display().to_string(),
        "deny",
        "exec.deny[0]",
    );
}

#[test]
fn exact_rule_beats_subtree_and_deeper_subtree_beats_shallower() {
    require_bpf_lsm();
    let scratch = Scratch::new("specific");
    let root = scratch.path("t");
    for name in ["a/x", "a/y", "a/b/x", "a/b/y", "ab/x"] {
        make_executable_copy("/usr/bin/true", &root.join(name));
    }
    let r = root.display();
    let policy = scratch.policy(&format!(
        r#"
[exec]
default = "allow"
allow = ["{probe}", "{r}/a/x", "{r}/a/b/**"]
deny = ["{r}/a/**", "{r}/a/b/y"]
"#,
        probe = probe()
    ));
    let log = scratch.path("audit.jsonl");
    let cases = [
        ("a/x", true, "exec.allow[1]"),
        ("a/y", false, "exec.deny[0]"),
        ("a/b/x", true, "exec.allow[2]"),
        ("a/b/y", false, "exec.deny[1]"),
        ("ab/x", true, "default"),
    ];
    let actions: Vec<String> = cases
        .iter()
        .map(|(name, _, _)| format!("exec:{}", root.join(name).display()))
        .collect();
    let mut args = vec![probe()];
    args.extend(actions.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = oxd_run(&policy, &log, &args);
    assert!(
        output.status.success(),
        "oxd run failed: {:?}",
        output.status
    );
    let results = probe_results(&output);
    let records = audit_records(&log);
    for ((name, allowed, rule), action) in cases.iter().zip(&actions) {
        let path = root.join(name).display().to_string();
        if *allowed {
            assert_ok(&results, action);
        } else {
            assert_eperm(&results, action);
        }
        let decision = if *allowed { "allow" } else { "deny" };
        assert_record(&records, "exec", &path, decision, rule);
        assert_eq!(
            explain_allows(&policy, &["--exec", &path]),
            *allowed,
            "{path}"
        );
    }
}

#[test]
fn cgroups_the_agent_creates_below_its_own_stay_confined() {
    require_bpf_lsm();
    let scratch = Scratch::new("subcgroup");
    let policy = scratch.policy(&format!(
        r#"
[exec]
default = "deny"
allow = ["{probe}", "/usr/bin/true", {LIBRARIES}]
[network]
default = "deny"
"#,
        probe = probe()
    ));
    let log = scratch.path("audit.jsonl");
    let output = oxd_run(
        &policy,
        &log,
        &[
            &probe(),
            "subcgroup:escape",
            "exec:/usr/bin/id",
            "exec:/usr/bin/true",
            "udp:127.0.0.1:9",
        ],
    );
    assert!(
        output.status.success(),
        "oxd run failed: {:?}",
        output.status
    );
    let results = probe_results(&output);
    assert_ok(&results, "subcgroup:escape");
    assert_eperm(&results, "exec:/usr/bin/id");
    assert_ok(&results, "exec:/usr/bin/true");
    assert_eperm(&results, "udp:127.0.0.1:9");
    let records = audit_records(&log);
    let id = records_for(&records, "exec", "/usr/bin/id");
    assert_eq!(id.len(), 1, "{records:#?}");
    let agent_cgroup = records_for(&records, "exec", &probe())[0]["cgroup_id"].clone();
    assert_ne!(
        id[0]["cgroup_id"], agent_cgroup,
        "the exec came from the sub-cgroup, and was still decided"
    );
}

#[test]
fn hard_links_and_symlinks_to_a_denied_binary_are_denied() {
    require_bpf_lsm();
    let scratch = Scratch::new("links");
    let denied = scratch.path("bin/tool");
    make_executable_copy("/usr/bin/true", &denied);
    let allowed_dir = scratch.path("allowed");
    fs::create_dir_all(&allowed_dir).expect("mkdir");
    let hard = allowed_dir.join("hard-link");
    fs::hard_link(&denied, &hard).expect("hard link (same file system)");
    let soft = allowed_dir.join("symlink");
    std::os::unix::fs::symlink(&denied, &soft).expect("symlink");
    let other = allowed_dir.join("other");
    make_executable_copy("/usr/bin/true", &other);
    let policy = scratch.policy(&format!(
        r#"
[exec]
default = "deny"
allow = ["{probe}", "{allowed}/**", "{denied}", {LIBRARIES}]
deny = ["{denied}"]
"#,
        probe = probe(),
        allowed = allowed_dir.display(),
        denied = denied.display(),
    ));
    let log = scratch.path("audit.jsonl");
    let run_denied = format!("exec:{}", denied.display());
    let run_hard = format!("exec:{}", hard.display());
    let run_soft = format!("exec:{}", soft.display());
    let run_other = format!("exec:{}", other.display());
    let output = oxd_run(
        &policy,
        &log,
        &[&probe(), &run_denied, &run_hard, &run_soft, &run_other],
    );
    assert!(
        output.status.success(),
        "oxd run failed: {:?}",
        output.status
    );
    let results = probe_results(&output);
    assert_eperm(&results, &run_denied);
    assert_eperm(&results, &run_hard);
    assert_eperm(&results, &run_soft);
    assert_ok(&results, &run_other);
    let records = audit_records(&log);
    // The symlink resolves to the denied path itself; the hard link is another name of the same
    // file, denied by the same exact rule.
    let at_denied = records_for(&records, "exec", &denied.display().to_string());
    assert_eq!(
        at_denied.len(),
        2,
        "direct and through the symlink: {records:#?}"
    );
    assert!(at_denied
        .iter()
        .all(|r| r["decision"] == "deny" && r["rule"] == "exec.deny[0]"));
    assert_record(
        &records,
        "exec",
        &hard.display().to_string(),
        "deny",
        "exec.deny[0]",
    );
    assert_record(
        &records,
        "exec",
        &other.display().to_string(),
        "allow",
        "exec.allow[1]",
    );
    assert!(!explain_allows(
        &policy,
        &["--exec", &hard.display().to_string()]
    ));
    assert!(!explain_allows(
        &policy,
        &["--exec", &soft.display().to_string()]
    ));
    assert!(explain_allows(
        &policy,
        &["--exec", &other.display().to_string()]
    ));
}

#[test]
fn running_a_denied_binary_through_the_dynamic_loader_is_denied() {
    require_bpf_lsm();
    let scratch = Scratch::new("loader");
    let loader = fs::canonicalize("/lib64/ld-linux-x86-64.so.2").expect("the dynamic loader");
    let loader = loader.to_str().expect("utf-8").to_owned();
    let policy = scratch.policy(
        r#"
[exec]
default = "allow"
deny = ["/usr/bin/id"]
"#,
    );
    let log = scratch.path("audit.jsonl");
    // The loader itself may run (default allow), and maps allowed programs as usual...
    let output = oxd_run(&policy, &log, &[&loader, "/usr/bin/true"]);
    assert!(
        output.status.success(),
        "ld.so /usr/bin/true must work: {:?}",
        output.status
    );
    // ...but cannot map a denied one executable.
    let output = oxd_run(&policy, &log, &[&loader, "/usr/bin/id"]);
    assert!(!output.status.success(), "ld.so /usr/bin/id must fail");
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("uid="),
        "id must not have run"
    );
    let records = audit_records(&log);
    let mapped = records_for(&records, "mmap-exec", "/usr/bin/id");
    assert!(!mapped.is_empty(), "{records:#?}");
    assert!(mapped
        .iter()
        .all(|r| r["decision"] == "deny" && r["rule"] == "exec.deny[0]"));
    // And exec'ing it directly is denied as before.
    let output = oxd_run(&policy, &log, &["/usr/bin/id"]);
    assert_eq!(output.status.code(), Some(126));
}

#[test]
fn fileless_exec_from_a_memfd_is_denied_by_an_allowlist() {
    require_bpf_lsm();
    let scratch = Scratch::new("memfd");
    let python = fs::canonicalize("/usr/bin/python3").expect("python3 in the guest");
    let python = python.to_str().expect("utf-8").to_owned();
    let policy = scratch.policy(&format!(
        r#"
[exec]
default = "deny"
allow = ["{python}", "/usr/bin/true", {LIBRARIES}]
"#
    ));
    let log = scratch.path("audit.jsonl");
    // Copy an allowed binary into a memfd and exec it through /proc/self/fd: the kernel
    // executes an anonymous file, which no allow rule names.
    let script = r#"
import errno, os
fd = os.memfd_create("agent-payload")
os.write(fd, open("/usr/bin/true", "rb").read())
try:
    os.execv(f"/proc/self/fd/{fd}", ["payload"])
except OSError as e:
    print("memfd-exec-errno", e.errno)
"#;
    let output = oxd_run(&policy, &log, &[&python, "-c", script]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("memfd-exec-errno 1"),
        "the memfd exec must fail with EPERM: {stdout}"
    );
    let records = audit_records(&log);
    let memfd: Vec<_> = records
        .iter()
        .filter(|r| {
            r["op"] == "exec"
                && r["target"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("/memfd:"))
        })
        .collect();
    assert_eq!(memfd.len(), 1, "{records:#?}");
    assert_eq!(memfd[0]["decision"], "deny");
    assert_eq!(memfd[0]["rule"], "default");
}

#[test]
fn executable_mappings_are_decided_by_the_exec_rules_default_included() {
    require_bpf_lsm();
    let scratch = Scratch::new("mappings");
    let libc = fs::canonicalize("/lib/x86_64-linux-gnu/libc.so.6").expect("libc");
    let libc = libc.to_str().expect("utf-8").to_owned();
    let log = scratch.path("audit.jsonl");
    // An allowlist that does not name the library directories: the program may run, but not
    // map its libraries, so it does not start.
    let bare = scratch.path("bare.toml");
    fs::write(
        &bare,
        "[exec]\ndefault = \"deny\"\nallow = [\"/usr/bin/true\"]\n",
    )
    .expect("write");
    let output = oxd_run(&bare, &log, &["/usr/bin/true"]);
    assert_eq!(output.status.code(), Some(127), "{output:?}");
    let records = audit_records(&log);
    assert_record(&records, "mmap-exec", &libc, "deny", "default");
    assert!(!explain_allows(&bare, &["--map", &libc]));
    // In audit mode nothing is refused, the would-be denial is recorded as such, and allowed
    // mappings are recorded too (ls maps libselinux and libpcre2 besides libc).
    let audit = scratch.path("audit.toml");
    fs::write(
        &audit,
        format!(
            "mode = \"audit\"\n[exec]\ndefault = \"deny\"\nallow = [\"/usr/bin/ls\", \
             {LIBRARIES}]\ndeny = [\"{libc}\"]\n"
        ),
    )
    .expect("write");
    let log = scratch.path("audit-mode.jsonl");
    let output = oxd_run(&audit, &log, &["/usr/bin/ls", "/"]);
    assert!(output.status.success(), "{output:?}");
    let records = audit_records(&log);
    let mapped = records_for(&records, "mmap-exec", &libc);
    assert!(!mapped.is_empty(), "{records:#?}");
    assert!(
        mapped.iter().all(|r| r["decision"] == "deny"
            && r["enforced"] == false
            && r["rule"] == "exec.deny[0]"),
        "{mapped:#?}"
    );
    let allowed: Vec<_> = records
        .iter()
        .filter(|r| r["op"] == "mmap-exec" && r["decision"] == "allow")
        .collect();
    assert!(
        !allowed.is_empty()
            && allowed
                .iter()
                .all(|r| r["rule"] == "exec.allow[1]" && r["target"] != libc.as_str()),
        "ls's other libraries (libselinux, ...) are recorded as allowed: {records:#?}"
    );
    // The same policy enforced, without the deny: libraries mapped, nothing recorded for them.
    let enforce = scratch.path("enforce.toml");
    fs::write(
        &enforce,
        format!("[exec]\ndefault = \"deny\"\nallow = [\"/usr/bin/true\", {LIBRARIES}]\n"),
    )
    .expect("write");
    let log = scratch.path("enforce.jsonl");
    let output = oxd_run(&enforce, &log, &["/usr/bin/true"]);
    assert!(output.status.success(), "{output:?}");
    let records = audit_records(&log);
    assert!(
        !records.iter().any(|r| r["op"] == "mmap-exec"),
        "allowed mappings are not recorded under enforce: {records:#?}"
    );
    assert!(explain_allows(&enforce, &["--map", &libc]));
}
