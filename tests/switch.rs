//! The kill switch (`oxd ctl deny-all|freeze|kill|resume`) against a busy agent.

use std::{
    fs,
    net::TcpListener,
    os::unix::process::ExitStatusExt as _,
    path::Path,
    process::{Child, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::{common::*, require_bpf_lsm};

/// Files read and written anywhere, every network destination: only the switch denies.
fn open_policy(name: &str) -> String {
    format!("name = \"{name}\"\n[file]\ndefault = \"allow\"\n[network]\ndefault = \"allow\"\n")
}

/// What the audit log says a decision stopped by the switch was denied for.
const HALTED: &str = "halted by the kill switch (until `oxd ctl resume`)";

/// How much later than the switch's own record a decision made before the switch may be
/// stamped: records are stamped from the boot clock plus the wall-clock time of boot, which
/// the daemon computes once from two clock reads (microseconds apart, more if the emulated
/// CPU is preempted between them). A switch that took effect late would let hundreds of the
/// busy agent's opens through in this time.
const STAMP_SLACK_NS: i128 = 20_000_000;

/// Nanoseconds since the epoch of a UTC time as the audit log writes it
/// (`2026-12-07T10:01:00.123456789Z`).
fn nanos(time: &str) -> i128 {
    let parsed = (|| {
        let (date, clock) = time.split_once('T')?;
        let clock = clock.strip_suffix('Z')?;
        let (hms, frac) = clock.split_once('.').unwrap_or((clock, "0"));
        let d: Vec<i128> = date
            .split('-')
            .map(|n| n.parse().ok())
            .collect::<Option<_>>()?;
        let t: Vec<i128> = hms
            .split(':')
            .map(|n| n.parse().ok())
            .collect::<Option<_>>()?;
        let frac: i128 = format!("{frac:0<9}").parse().ok()?;
        (d.len() == 3 && t.len() == 3 && frac < 1_000_000_000).then_some((d, t, frac))
    })();
    let (d, t, frac) = parsed.unwrap_or_else(|| panic!("not an audit log time: {time:?}"));
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1])
    } else {
        (d[0], d[1])
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2];
    secs * 1_000_000_000 + frac
}

/// `key` of the cgroup's `cgroup.events`.
fn cgroup_event(cgroup: &TestCgroup, key: &str) -> Option<bool> {
    let text = fs::read_to_string(cgroup.path().join("cgroup.events")).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim() == "1")
    })
}

/// User and system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("read the process's stat");
    let after = &stat[stat.rfind(')').expect("a comm in parentheses") + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    // utime and stime: fields 14 and 15 of stat(5), 12 and 13 after the comm.
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// Waits for `child` to exit.
fn exit_of(child: &mut Child, what: &str) -> std::process::ExitStatus {
    wait_for(what, WAIT, || child.try_wait().expect("wait for a child"))
}

/// The kill-switch records of the cgroup.
fn switch_records(records: &[Value], cgroup_id: u64) -> Vec<&Value> {
    records
        .iter()
        .filter(|r| r["op"] == "kill-switch" && r["cgroup_id"] == cgroup_id)
        .collect()
}

fn read_results(path: &Path) -> Vec<Value> {
    fs::read_to_string(path)
        .expect("read the probe's output")
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("a probe line"))
        .collect()
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one agent's story: busy, halted, restarted daemon, resumed, frozen, killed"
)]
fn kill_switch_stops_a_busy_agent_within_one_action_freezes_kills_and_resumes() {
    require_bpf_lsm();
    let scratch = Scratch::new("switch");
    let cgroup = TestCgroup::new("switch");
    let cgroup_id = cgroup.id();
    let file = scratch.path("busy");
    fs::write(&file, "x").expect("write the busy agent's file");
    let file = fs::canonicalize(&file).expect("canonical path");
    let file = file.to_str().expect("utf-8 path").to_owned();
    let policy = scratch.policy(&open_policy("switch"));
    let mut daemon = Daemon::new(&scratch, "switch", &[]);
    daemon.start();
    daemon.confine_cgroup(&cgroup, &policy);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback listener");
    let port = listener.local_addr().expect("its address").port();
    let before = probe_in(
        &cgroup,
        &[
            &format!("read:{file}"),
            "exec:/bin/true",
            &format!("connect:127.0.0.1:{port}"),
        ],
    );
    for action in [
        &format!("read:{file}"),
        "exec:/bin/true",
        &format!("connect:127.0.0.1:{port}"),
    ] {
        assert_ok(&before, action);
    }

    // A busy agent, opening its file until an open fails, and another of its processes that
    // acts only once the switch is set.
    let busy_out = scratch.path("busy.out");
    let mut busy = KillOnDrop(
        cgroup
            .command(probe_bin())
            .arg(format!("until-denied:{file}"))
            .stdout(fs::File::create(&busy_out).expect("create the busy agent's output"))
            .spawn()
            .expect("start the busy agent"),
    );
    let busy_pid = busy.0.id();
    let go = scratch.path("go");
    let written = scratch.path("written");
    let waiting_out = scratch.path("waiting.out");
    let late = [
        format!("read:{file}"),
        format!("write:{}", written.display()),
        "exec:/bin/true".to_owned(),
        format!("connect:127.0.0.1:{port}"),
    ];
    let mut waiting = KillOnDrop(
        cgroup
            .command(probe_bin())
            .arg(format!("wait:{}", go.display()))
            .args(&late)
            .stdout(fs::File::create(&waiting_out).expect("create the waiting agent's output"))
            .spawn()
            .expect("start the waiting agent"),
    );
    wait_for("the busy agent's first opens", WAIT, || {
        audit_records_so_far(&daemon.audit_log)
            .iter()
            .any(|r| r["op"] == "open" && r["target"] == file.as_str() && r["pid"] == busy_pid)
            .then_some(())
    });

    let said = daemon.ctl(&["deny-all", "--cgroup", cgroup.path_str()]);
    assert!(said.contains("halted"), "{said}");
    let status = exit_of(&mut busy.0, "the busy agent to stop");
    assert!(status.success(), "{status}");
    let busy_result = read_results(&busy_out);
    assert_eq!(busy_result.len(), 1, "{busy_result:?}");
    let busy_result = &busy_result[0];
    assert_eq!(busy_result["ok"], false, "{busy_result}");
    assert_eq!(busy_result["errno"], EPERM, "{busy_result}");
    let opened = busy_result["opened"].as_u64().expect("a count of opens");
    assert!(opened > 0, "{busy_result}");

    fs::write(&go, "").expect("let the waiting agent act");
    let status = exit_of(&mut waiting.0, "the waiting agent to finish");
    assert!(status.success(), "{status}");
    let results = read_results(&waiting_out);
    for action in &late {
        assert_eperm(&results, action);
    }
    assert!(
        !written.exists(),
        "a halted agent created {}",
        written.display()
    );
    // No new process starts in the halted cgroup: its exec is denied.
    let started = cgroup
        .command(probe_bin())
        .arg(format!("read:{file}"))
        .stdout(Stdio::null())
        .status();
    assert_eq!(
        started.as_ref().map_err(std::io::Error::raw_os_error).err(),
        Some(Some(libc::EPERM)),
        "a new process in a halted cgroup: {started:?}"
    );
    let listed = daemon.target(&cgroup).expect("still confined");
    assert_eq!(listed["halted"], "deny-all", "{listed}");

    // The log: the switch, every open the busy agent made before it and nothing allowed
    // after it, and its one denied open.
    let records = wait_for("the switch and the denials in the log", WAIT, || {
        let records = audit_records_so_far(&daemon.audit_log);
        let halted = records
            .iter()
            .filter(|r| r["cgroup_id"] == cgroup_id && r["reason"] == HALTED)
            .count();
        (!switch_records(&records, cgroup_id).is_empty() && halted > late.len()).then_some(records)
    });
    let switch = switch_records(&records, cgroup_id)[0];
    assert_eq!(switch["action"], "deny-all", "{switch}");
    assert_eq!(switch["policy"], "switch", "{switch}");
    assert_eq!(switch["cgroup"], cgroup.path_str(), "{switch}");
    assert_eq!(switch["outcome"], "every action denied", "{switch}");
    let switched = nanos(switch["time"].as_str().expect("a time"));
    let busy_opens: Vec<&Value> = records
        .iter()
        .filter(|r| r["op"] == "open" && r["target"] == file.as_str() && r["pid"] == busy_pid)
        .collect();
    let allowed = busy_opens
        .iter()
        .filter(|r| r["decision"] == "allow")
        .count();
    assert_eq!(
        allowed as u64, opened,
        "the busy agent's opens that succeeded and the log's allowed ones"
    );
    // A halted decision is made before the path is resolved: its record names none.
    let denied: Vec<&Value> = records
        .iter()
        .filter(|r| r["pid"] == busy_pid && r["decision"] == "deny")
        .collect();
    assert_eq!(denied.len(), 1, "{denied:#?}");
    assert_eq!(denied[0]["op"], "open", "{}", denied[0]);
    assert_eq!(denied[0]["reason"], HALTED, "{}", denied[0]);
    assert_eq!(denied[0]["enforced"], true, "{}", denied[0]);
    assert_eq!(denied[0]["target"], "<unresolved>", "{}", denied[0]);
    for r in records
        .iter()
        .filter(|r| r["cgroup_id"] == cgroup_id && r["decision"] == "allow")
    {
        let at = nanos(r["time"].as_str().expect("a time"));
        assert!(
            at <= switched + STAMP_SLACK_NS,
            "an action allowed {} µs after the switch was set: {r}",
            (at - switched) / 1000
        );
    }

    // The switch outlives the daemon, and a restarted one knows the target is halted.
    daemon.signal(libc::SIGKILL);
    daemon.wait_exit();
    daemon.start();
    let listed = daemon.target(&cgroup).expect("adopted");
    assert_eq!(listed["halted"], "deny-all", "{listed}");
    let started = cgroup.command(probe_bin()).stdout(Stdio::null()).status();
    assert_eq!(
        started.as_ref().map_err(std::io::Error::raw_os_error).err(),
        Some(Some(libc::EPERM)),
        "a new process in a halted cgroup after a restart: {started:?}"
    );

    let said = daemon.ctl(&["resume", "--cgroup", cgroup.path_str()]);
    assert!(said.contains("resumed"), "{said}");
    let after = probe_in(&cgroup, &[&format!("read:{file}"), "exec:/bin/true"]);
    assert_ok(&after, &format!("read:{file}"));
    assert_ok(&after, "exec:/bin/true");
    assert!(daemon.target(&cgroup).expect("confined")["halted"].is_null());

    // Freeze: a spinning process (no action for a hook to deny) stops running.
    let mut spinner = KillOnDrop(
        cgroup
            .command("/bin/sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .expect("start a spinning shell"),
    );
    let spinner_pid = spinner.0.id();
    let start = cpu_ticks(spinner_pid);
    wait_for("the spinner to run", WAIT, || {
        (cpu_ticks(spinner_pid) > start).then_some(())
    });
    let said = daemon.ctl(&["freeze", "--cgroup", cgroup.path_str()]);
    assert!(said.contains("processes frozen"), "{said}");
    assert_eq!(cgroup_event(&cgroup, "frozen"), Some(true));
    let frozen_at = cpu_ticks(spinner_pid);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        cpu_ticks(spinner_pid),
        frozen_at,
        "a frozen process went on running"
    );
    let listed = daemon.target(&cgroup).expect("confined");
    assert_eq!(listed["halted"], "freeze", "{listed}");
    let said = daemon.ctl(&["resume", "--cgroup", cgroup.path_str()]);
    assert!(said.contains("thawed"), "{said}");
    assert_eq!(cgroup_event(&cgroup, "frozen"), Some(false));
    wait_for("the thawed spinner to run again", WAIT, || {
        (cpu_ticks(spinner_pid) > frozen_at).then_some(())
    });

    // Kill: its processes are gone, the target stays confined and halted.
    let said = daemon.ctl(&["kill", "--cgroup", cgroup.path_str()]);
    assert!(said.contains("processes killed"), "{said}");
    let status = exit_of(&mut spinner.0, "the spinner to die");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    assert_eq!(cgroup_event(&cgroup, "populated"), Some(false));
    let listed = daemon.target(&cgroup).expect("still confined");
    assert_eq!(listed["halted"], "kill", "{listed}");

    let records = wait_for("every switch in the log", WAIT, || {
        let records = audit_records_so_far(&daemon.audit_log);
        (switch_records(&records, cgroup_id).len() == 5).then_some(records)
    });
    let actions: Vec<&str> = switch_records(&records, cgroup_id)
        .iter()
        .map(|r| r["action"].as_str().expect("an action"))
        .collect();
    assert_eq!(
        actions,
        ["deny-all", "resume", "freeze", "resume", "kill"],
        "{records:#?}"
    );

    daemon.ctl(&["release", "--cgroup", cgroup.path_str()]);
    assert!(daemon.target(&cgroup).is_none(), "released");
    let after = probe_in(&cgroup, &["exec:/bin/true"]);
    assert_ok(&after, "exec:/bin/true");
    assert_audit_log_verifies(&daemon.audit_log);
}

#[test]
fn audit_log_times_are_read_to_the_nanosecond() {
    assert_eq!(nanos("1970-01-01T00:00:01.5Z"), 1_500_000_000);
    assert_eq!(
        nanos("2026-12-07T10:01:00.123456789Z"),
        1_796_637_660_123_456_789
    );
    assert_eq!(nanos("2000-03-01T00:00:00Z"), 951_868_800_000_000_000);
}
