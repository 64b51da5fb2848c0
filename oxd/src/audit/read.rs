//! Reading audit logs: checking their hash chain (`oxd audit verify`) and following their
//! records (`oxd audit tail`).

use std::{
    fs::File,
    io::{BufRead, BufReader, Seek, SeekFrom},
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result};
use serde_json::Value;

use super::{line_hash, GENESIS};

/// What `verify` found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub records: usize,
    /// One message per problem, each starting with `FILE:LINE:`.
    pub problems: Vec<String>,
}

/// Checks the chain across `files` (oldest first).
pub fn verify(files: &[PathBuf], partial: bool) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    // (file, line number, seq, hash of the line) of the previous record.
    let mut previous: Option<(String, usize, u64, String)> = None;
    for path in files {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let name = path.display().to_string();
        for (index, line) in BufReader::new(file).split(b'\n').enumerate() {
            let line = line.with_context(|| format!("cannot read {name}"))?;
            let number = index + 1;
            if line.is_empty() {
                continue;
            }
            report.records += 1;
            let here = format!("{name}:{number}");
            let parsed: Option<(u64, String)> = serde_json::from_slice::<Value>(&line)
                .ok()
                .and_then(|v| Some((v.get("seq")?.as_u64()?, v.get("prev")?.as_str()?.to_owned())));
            let Some((seq, prev)) = parsed else {
                report.problems.push(format!(
                    "{here}: not an oxd audit record (no seq/prev): edited or inserted"
                ));
                previous = None;
                continue;
            };
            match &previous {
                None if report.records == 1 && !partial && (seq != 0 || prev != GENESIS) => {
                    report.problems.push(format!(
                        "{here}: the chain starts at seq {seq}, not 0: records before it are \
                         missing (give the older files first)"
                    ));
                }
                None => {}
                Some((pname, pnumber, pseq, phash)) => {
                    let there = format!("{pname}:{pnumber}");
                    match seq.cmp(&(pseq + 1)) {
                        std::cmp::Ordering::Equal => {
                            if &prev != phash {
                                report.problems.push(format!(
                                    "{there}: record edited: its hash no longer matches the \
                                     `prev` that the next record ({here}) carries"
                                ));
                            }
                        }
                        std::cmp::Ordering::Greater => {
                            report.problems.push(format!(
                                "{here}: seq {seq} follows seq {pseq} ({there}): {} record(s) \
                                 removed before this line",
                                seq - pseq - 1
                            ));
                        }
                        std::cmp::Ordering::Less => {
                            report.problems.push(format!(
                                "{here}: seq {seq} follows seq {pseq} ({there}): records \
                                 reordered or duplicated"
                            ));
                        }
                    }
                }
            }
            previous = Some((name.clone(), number, seq, line_hash(&line)));
        }
    }
    Ok(report)
}

/// One readable line for a record.
pub fn render(record: &Value) -> String {
    let s = |key: &str| {
        record
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or("-")
            .to_owned()
    };
    let n = |key: &str| {
        record
            .get(key)
            .and_then(Value::as_u64)
            .map_or("-".to_owned(), |v| v.to_string())
    };
    if s("op") == "lost" {
        return format!(
            "{}  LOST     {} decisions not recorded (ring buffer full)",
            s("time"),
            n("count")
        );
    }
    let decision = match (
        s("decision").as_str(),
        record.get("enforced").and_then(Value::as_bool),
    ) {
        ("deny", Some(false)) => "deny*".to_owned(),
        (d, _) => d.to_owned(),
    };
    let detail = match s("op").as_str() {
        "open" => format!(" ({})", s("access")),
        "connect" | "sendmsg" | "socket" => format!(" ({})", s("protocol")),
        "signal" => format!(" (signal {})", n("detail")),
        _ => String::new(),
    };
    format!(
        "{}  {:<6} {:<8} {}{}  by {} of {} gen {}  [{} pid {} uid {}]",
        s("time"),
        decision,
        s("op"),
        s("target"),
        detail,
        s("rule"),
        s("policy"),
        n("generation"),
        s("comm"),
        n("pid"),
        n("uid"),
    )
}

/// Which records [`tail`] hands on.
#[derive(Clone, Copy, Debug)]
pub struct TailOptions {
    /// Keep handing on records as they are appended (never returns unless reading fails).
    pub follow: bool,
    /// Only denials.
    pub denied: bool,
    /// Start with the last this many records.
    pub last: usize,
}

/// Hands the records of the log at `path` to `emit`: the last `options.last`, then, with
/// `options.follow`, every record appended later.
pub fn tail(path: &Path, options: TailOptions, emit: &mut dyn FnMut(&Value)) -> Result<()> {
    let TailOptions {
        follow,
        denied,
        last,
    } = options;
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let wanted =
        |record: &Value| !denied || record.get("decision").and_then(Value::as_str) == Some("deny");
    let mut recent: std::collections::VecDeque<Value> = std::collections::VecDeque::new();
    let mut offset = read_records(&mut file, 0, &mut |record| {
        if wanted(&record) {
            recent.push_back(record);
            if recent.len() > last {
                recent.pop_front();
            }
        }
    })?;
    for record in &recent {
        emit(record);
    }
    if !follow {
        return Ok(());
    }
    loop {
        offset = read_records(&mut file, offset, &mut |record| {
            if wanted(&record) {
                emit(&record);
            }
        })?;
        thread::sleep(Duration::from_millis(200));
    }
}

/// Hands every complete line from `offset` on that parses as JSON to `each` (a line still
/// being written, without its newline, waits for the next call); returns the offset after
/// the last complete line.
fn read_records(file: &mut File, offset: u64, each: &mut dyn FnMut(Value)) -> Result<u64> {
    file.seek(SeekFrom::Start(offset))?;
    let mut reader = BufReader::new(file);
    let mut offset = offset;
    let mut line = String::new();
    loop {
        line.clear();
        let read = reader.read_line(&mut line)?;
        if read == 0 || !line.ends_with('\n') {
            return Ok(offset);
        }
        offset += read as u64;
        if let Ok(record) = serde_json::from_str::<Value>(&line) {
            each(record);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rendered_line_names_rule_policy_and_generation() {
        let record = serde_json::json!({
            "time": "T", "policy": "agent", "policy_sha256": "s", "generation": 7,
            "op": "exec", "target": "/usr/bin/id", "decision": "deny", "enforced": true,
            "rule": "exec.deny[0]", "reason": "rule", "pid": 3, "uid": 0, "comm": "sh"
        });
        assert_eq!(
            render(&record),
            "T  deny   exec     /usr/bin/id  by exec.deny[0] of agent gen 7  [sh pid 3 uid 0]"
        );
    }

    use std::io::Write as _;

    use super::*;
    use crate::audit::{AuditLog, RecordFilter};

    fn write_log(path: &Path, n: usize) {
        let mut log = AuditLog::append(path, RecordFilter::All, None).unwrap();
        let policy = crate::policy::Policy::parse(Path::new("p.toml"), "[network]\n").unwrap();
        for _ in 0..n {
            log.write_lost(Some(&policy), 1).unwrap();
        }
        log.flush().unwrap();
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn rewrite(path: &Path, lines: &[String]) {
        let mut f = File::create(path).unwrap();
        for l in lines {
            writeln!(f, "{l}").unwrap();
        }
    }

    #[test]
    fn tail_hands_on_the_last_records_wanted_and_skips_a_partial_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.jsonl");
        let mut text = String::new();
        for (i, decision) in ["allow", "deny", "allow", "deny", "deny"]
            .iter()
            .enumerate()
        {
            text.push_str(&format!("{{\"seq\":{i},\"decision\":\"{decision}\"}}\n"));
        }
        text.push_str("not json\n{\"seq\":5,\"decision\":\"deny\"");
        std::fs::write(&log, text).unwrap();
        let seqs = |denied, last| {
            let mut seen = Vec::new();
            let options = TailOptions {
                follow: false,
                denied,
                last,
            };
            tail(&log, options, &mut |r| {
                seen.push(r["seq"].as_u64().unwrap());
            })
            .unwrap();
            seen
        };
        assert_eq!(seqs(false, 3), [2, 3, 4]);
        assert_eq!(seqs(true, 2), [3, 4]);
        assert_eq!(seqs(true, 10), [1, 3, 4]);
    }

    #[test]
    fn intact_chain_verifies_across_appends_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.jsonl");
        write_log(&log, 3);
        write_log(&log, 2); // a second oxd run appending continues the chain
        let report = verify(std::slice::from_ref(&log), false).unwrap();
        assert_eq!(report.records, 5);
        assert!(report.problems.is_empty(), "{:?}", report.problems);

        // Split into two "rotated" parts: verified in order, fine; reversed, not.
        let all = lines(&log);
        let (a, b) = (dir.path().join("1"), dir.path().join("2"));
        rewrite(&a, &all[..2]);
        rewrite(&b, &all[2..]);
        assert!(verify(&[a.clone(), b.clone()], false)
            .unwrap()
            .problems
            .is_empty());
        assert!(!verify(&[b, a], false).unwrap().problems.is_empty());
    }

    #[test]
    fn edited_removed_and_reordered_records_are_located() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.jsonl");
        write_log(&log, 5);
        let original = lines(&log);
        let name = log.display().to_string();

        let mut edited = original.clone();
        edited[1] = edited[1].replace("\"count\":1", "\"count\":0");
        rewrite(&log, &edited);
        let problems = verify(std::slice::from_ref(&log), false).unwrap().problems;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with(&format!("{name}:2: record edited")),
            "{problems:?}"
        );

        let mut removed = original.clone();
        removed.remove(2);
        rewrite(&log, &removed);
        let problems = verify(std::slice::from_ref(&log), false).unwrap().problems;
        assert!(
            problems[0].starts_with(&format!("{name}:3: seq 3 follows seq 1")),
            "{problems:?}"
        );
        assert!(problems[0].contains("1 record(s) removed"), "{problems:?}");

        let mut reordered = original.clone();
        reordered.swap(1, 2);
        rewrite(&log, &reordered);
        let problems = verify(std::slice::from_ref(&log), false).unwrap().problems;
        assert!(
            problems.iter().any(|p| p.contains("reordered")),
            "{problems:?}"
        );

        let mut first_gone = original.clone();
        first_gone.remove(0);
        rewrite(&log, &first_gone);
        let problems = verify(std::slice::from_ref(&log), false).unwrap().problems;
        assert!(problems[0].contains("starts at seq 1"), "{problems:?}");
    }

    #[test]
    fn rotated_parts_verify_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.jsonl");
        let policy = crate::policy::Policy::parse(Path::new("p.toml"), "[network]\n").unwrap();
        let mut audit = AuditLog::append(
            &log,
            RecordFilter::All,
            Some(crate::audit::Rotation::new(600, 3)),
        )
        .unwrap();
        for _ in 0..20 {
            audit.write_lost(Some(&policy), 1).unwrap();
        }
        audit.flush().unwrap();
        let part = |n: u32| dir.path().join(format!("a.jsonl.{n}"));
        assert!(
            part(3).exists() && !part(4).exists(),
            "keeps 3 rotated parts"
        );
        for f in [part(3), part(2), part(1), log.clone()] {
            assert!(
                std::fs::metadata(&f).unwrap().len() <= 600,
                "{}",
                f.display()
            );
        }
        let files = [part(3), part(2), part(1), log.clone()];
        // The oldest parts were deleted: complete only with --partial.
        assert!(!verify(&files, false).unwrap().problems.is_empty());
        let report = verify(&files, true).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert!(!verify(&[part(2), part(3), part(1), log], true)
            .unwrap()
            .problems
            .is_empty());
    }

    #[test]
    fn appending_to_a_foreign_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.jsonl");
        std::fs::write(&log, "hello\n").unwrap();
        assert!(AuditLog::append(&log, RecordFilter::All, None).is_err());
    }
}
