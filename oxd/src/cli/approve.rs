//! `oxd approve`: answer requests for approval as they come. An action that a rule requiring a
//! grant denied for want of one is shown; answered `y`, it is granted for exactly that action
//! (once, by default), so the agent's retry succeeds once.

use std::{
    collections::HashMap,
    io::{BufRead as _, Write as _},
    path::PathBuf,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};
use oxd::{
    audit::{read::escape, Record},
    control::{call, subscribe, GrantProtocol, Request, Streamed, Subscription, Target},
};

#[derive(Debug, clap::Args)]
pub(crate) struct ApproveArgs {
    /// The daemon's control socket.
    #[arg(long, default_value = oxd::control::DEFAULT_SOCKET)]
    pub(crate) socket: PathBuf,
    /// How many times an approved action may happen.
    #[arg(long, default_value_t = 1)]
    pub(crate) uses: u64,
    /// How long an approval lasts (`30s`, `10m`).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub(crate) expires: Duration,
}

/// What an approval request asks for: the target's cgroup, the operation, the destination and
/// the protocol. Repeats of one request (an agent retrying while the question is open) are
/// asked once.
type Asked = (u64, String, String, String);

/// The request in words. The agent chooses its command name (and could choose what else it
/// can): every string is escaped, so none can break the line, forge another prompt, or send the
/// supervisor's terminal control sequences.
fn describe(record: &Record) -> String {
    format!(
        "pid {} ({}, uid {}) wants {} {}/{} (rule {}, policy {})",
        record.pid,
        escape(&record.comm),
        record.uid,
        escape(&record.op),
        escape(&record.target),
        escape(record.protocol.as_deref().unwrap_or("?")),
        escape(&record.rule),
        escape(&record.policy)
    )
}

/// `oxd approve`: returns the exit code (0 when the daemon or the input ends).
pub(crate) fn run(args: &ApproveArgs) -> Result<i32> {
    let stream = subscribe(&args.socket, Subscription::Approvals)?;
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut stdout = std::io::stdout();
    println!("waiting for requests for approval (Ctrl-C ends)");
    // When each request was last answered: a repeat made before then is not asked again.
    let mut answered: HashMap<Asked, SystemTime> = HashMap::new();
    for line in stream {
        let record = match line? {
            Streamed::Record(record) => record,
            Streamed::Lagged(n) => {
                eprintln!("oxd: {n} decisions were not shown (this prompt fell behind)");
                continue;
            }
        };
        let asked: Asked = (
            record.cgroup_id,
            record.op.clone(),
            record.target.clone(),
            record.protocol.clone().unwrap_or_default(),
        );
        let made = humantime::parse_rfc3339(&record.time).unwrap_or(SystemTime::UNIX_EPOCH);
        if answered.get(&asked).is_some_and(|&at| made <= at) {
            continue;
        }
        print!("{}: approve? [y/N] ", describe(&record));
        stdout.flush().context("cannot write the prompt")?;
        let mut answer = String::new();
        if input
            .read_line(&mut answer)
            .context("cannot read the answer")?
            == 0
        {
            println!();
            return Ok(0);
        }
        answered.insert(asked, SystemTime::now());
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            println!("not granted");
            continue;
        }
        let connect = record
            .target
            .parse()
            .with_context(|| format!("cannot read the address {}", record.target))?;
        let protocol = if record.protocol.as_deref() == Some("udp") {
            GrantProtocol::Udp
        } else {
            GrantProtocol::Tcp
        };
        let response = call(
            &args.socket,
            &Request::Grant {
                target: Target::CgroupId(record.cgroup_id),
                connect: Some(connect),
                protocol,
                uses: args.uses,
                expires_in_ms: u64::try_from(args.expires.as_millis()).unwrap_or(u64::MAX),
            },
        )?;
        if response.ok {
            println!("{}", response.message.unwrap_or_default());
        } else {
            println!(
                "not granted: {}",
                response
                    .error
                    .unwrap_or_else(|| "the daemon refused".into())
            );
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forged_command_name_cannot_forge_the_prompt() {
        let line = r#"{"time":"2026-12-07T13:40:02Z","policy":"agent","policy_sha256":"",
            "op":"connect","target":"127.0.0.1:443","protocol":"tcp","decision":"deny",
            "enforced":true,"rule":"network.allow[0]","reason":"x","pid":7,"tid":7,"uid":0,
            "gid":0,"comm":"a\u001b[2K\rpid 1 (sshd","cgroup_id":9}"#;
        let record: Record = serde_json::from_str(line).expect("a record");
        let shown = describe(&record);
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(
            shown.starts_with("pid 7 (a\\x1b[2K\\rpid 1 (sshd, uid 0) wants connect"),
            "{shown}"
        );
    }
}
