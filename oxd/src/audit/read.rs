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
    /// Complete `counts` records (each the end of an `oxd run`) checked against the records
    /// before them.
    pub counts_checked: usize,
    /// One message per problem, each starting with `FILE:LINE:`.
    pub problems: Vec<String>,
}

/// Checks the chain across `files` (oldest first).
pub fn verify(files: &[PathBuf], partial: bool) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    // (file, line number, seq, hash of the line) of the previous record.
    let mut previous: Option<(String, usize, u64, String)> = None;
    let mut counts = CountsCheck::new(!partial);
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
            if let Ok(record) = serde_json::from_slice::<Value>(&line) {
                counts.record(&record, &here, &mut report);
            }
        }
    }
    Ok(report)
}

/// Checks each complete `counts` record (the end of an `oxd run`, whose counters were created
/// for it) against the records since the previous `counts` record: the decision records must
/// number `submitted`, and the `lost` records' counts add up to `lost_total`. A shortfall is
/// decisions that reached the ring buffer but not the log (records removed with their chain
/// rewritten, records the pump could not decode, a pump that died), an excess is records that
/// were not the kernel's.
struct CountsCheck {
    /// Whether the records since the last `counts` record are all there (false at the start
    /// of a `--partial` log, whose beginning rotation has deleted).
    whole: bool,
    /// Where the current part began, for the message.
    since: Option<String>,
    decisions: u64,
    lost: u64,
    /// The counts of the `tally` records: allowed decisions counted, and rate-limited ones.
    tallied: u64,
    suppressed: u64,
}

impl CountsCheck {
    fn new(whole: bool) -> Self {
        Self {
            whole,
            since: None,
            decisions: 0,
            lost: 0,
            tallied: 0,
            suppressed: 0,
        }
    }

    fn record(&mut self, record: &Value, here: &str, report: &mut VerifyReport) {
        if self.since.is_none() {
            self.since = Some(here.to_owned());
        }
        match record.get("op").and_then(Value::as_str) {
            Some("lost") => {
                self.lost += record.get("count").and_then(Value::as_u64).unwrap_or(0);
            }
            Some("tally") => {
                let count = record.get("count").and_then(Value::as_u64).unwrap_or(0);
                if record.get("why").and_then(Value::as_str) == Some("rate-limited") {
                    self.suppressed += count;
                } else {
                    self.tallied += count;
                }
            }
            // The daemon's own record, not a decision.
            Some("kill-switch" | "limit") => {}
            Some("counts") => {
                let complete = record.get("complete").and_then(Value::as_bool) == Some(true);
                if complete && self.whole {
                    self.check(record, here, report);
                }
                *self = Self::new(true);
            }
            _ => self.decisions += 1,
        }
    }

    fn check(&self, record: &Value, here: &str, report: &mut VerifyReport) {
        let total = |key: &str| record.get(key).and_then(Value::as_u64);
        let (Some(submitted), Some(lost_total)) = (total("submitted"), total("lost_total")) else {
            report.problems.push(format!(
                "{here}: a complete `counts` record without its totals: edited"
            ));
            return;
        };
        report.counts_checked += 1;
        let since = self.since.as_deref().unwrap_or(here);
        if self.decisions != submitted {
            let (how, n) = if self.decisions < submitted {
                ("missing", submitted - self.decisions)
            } else {
                ("more than the kernel submitted", self.decisions - submitted)
            };
            report.problems.push(format!(
                "{here}: the kernel put {submitted} decision(s) into the ring buffer, but \
                 {} decision record(s) are in the log from {since}: {n} {how}",
                self.decisions
            ));
        }
        if self.lost != lost_total {
            report.problems.push(format!(
                "{here}: the kernel lost {lost_total} decision(s) to a full ring buffer, but \
                 the `lost` records from {since} report {}",
                self.lost
            ));
        }
        // Logs written before tallies existed have no such totals: nothing to check.
        for (key, written, what) in [
            ("tallied", self.tallied, "allowed decisions counted"),
            ("suppressed", self.suppressed, "rate-limited decisions"),
        ] {
            if let Some(total) = total(key) {
                if total != written {
                    report.problems.push(format!(
                        "{here}: the kernel counted {total} {what}, but the `tally` records \
                         from {since} report {written}"
                    ));
                }
            }
        }
    }
}

/// Whether `c` is shown escaped: control characters (C0, DEL, C1) and the Unicode characters
/// that break a line or reorder what a terminal shows (line and paragraph separators, bidi
/// embeddings, overrides, isolates and marks).
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// Appends `text` to `out` so that it shows as what it is, on one line: a backslash as `\\`,
/// `\n`, `\r`, `\t`, another C0 control or DEL as `\xNN`, every other character of
/// [`needs_escape`] as `\u{NNNN}`.
fn push_escaped(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 || c == '\x7f' => {
                out.push_str(&format!("\\x{:02x}", u32::from(c)));
            }
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:04x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
}

/// `text` escaped as [`push_escaped`] does.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    push_escaped(&mut out, text);
    out
}

/// `bytes` escaped as [`push_escaped`] does, each byte that is not UTF-8 as `\xNN`.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        push_escaped(&mut out, chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// One readable line for a record. Every string from the record is escaped ([`escape`]): the
/// agent chooses paths, socket names and its command name, and they must not break the line,
/// forge another, or send the terminal control sequences. `target` and `comm` are shown from
/// their exact bytes when the record has them (`target_bytes`, `comm_bytes`).
pub fn render(record: &Value) -> String {
    let s = |key: &str| {
        record
            .get(key)
            .and_then(Value::as_str)
            .map_or_else(|| "-".to_owned(), escape)
    };
    // A field with its exact bytes, when the record holds them.
    let exact = |key: &str, bytes_key: &str| {
        let Some(bytes) = record
            .get(bytes_key)
            .and_then(Value::as_str)
            .and_then(super::unhex)
        else {
            return s(key);
        };
        match (s("op").as_str(), bytes.as_slice()) {
            ("unix-connect" | "unix-send", [0, name @ ..]) => format!("@{}", escape_bytes(name)),
            (_, bytes) => escape_bytes(bytes),
        }
    };
    let n = |key: &str| {
        record
            .get(key)
            .and_then(Value::as_u64)
            .map_or("-".to_owned(), |v| v.to_string())
    };
    if s("op") == "tally" {
        return format!(
            "{}  TALLY    {} x {} {} by {} of {} gen {} ({})",
            s("time"),
            n("count"),
            s("decision"),
            s("of"),
            s("rule"),
            s("policy"),
            n("generation"),
            s("why"),
        );
    }
    if s("op") == "limit" {
        return format!(
            "{}  LIMIT    {} x {} refused by max_processes = {} of {} gen {} in {} (cgroup id {})",
            s("time"),
            n("count"),
            s("of"),
            n("max"),
            s("policy"),
            n("generation"),
            s("cgroup"),
            n("cgroup_id"),
        );
    }
    if s("op") == "kill-switch" {
        return format!(
            "{}  SWITCH   {} {} (cgroup id {}) of {} gen {}: {}",
            s("time"),
            s("action"),
            s("cgroup"),
            n("cgroup_id"),
            s("policy"),
            n("generation"),
            s("outcome"),
        );
    }
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
        exact("target", "target_bytes"),
        detail,
        s("rule"),
        s("policy"),
        n("generation"),
        exact("comm", "comm_bytes"),
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
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line)?;
        if read == 0 || !line.ends_with(b"\n") {
            return Ok(offset);
        }
        offset += read as u64;
        // A line that is not JSON (or not UTF-8) is passed over, not an error.
        if let Ok(record) = serde_json::from_slice::<Value>(&line) {
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

    #[test]
    fn kill_switch_records_render_as_one_escaped_line_and_are_not_decisions() {
        let record = serde_json::json!({
            "time": "T", "policy": "agent", "policy_sha256": "s", "generation": 7,
            "op": "kill-switch", "action": "freeze", "cgroup": "/sys/fs/cgroup/a\nb",
            "cgroup_id": 42, "outcome": "every action denied; processes frozen"
        });
        assert_eq!(
            render(&record),
            "T  SWITCH   freeze /sys/fs/cgroup/a\\nb (cgroup id 42) of agent gen 7: every \
             action denied; processes frozen"
        );
        let mut check = CountsCheck::new(true);
        let mut report = VerifyReport::default();
        check.record(&record, "line 1", &mut report);
        assert_eq!(check.decisions, 0, "a switch is not a decision");
    }

    /// No character in `line` can end it, move the cursor or reorder what a terminal shows.
    fn assert_one_visible_line(line: &str) {
        for c in line.chars() {
            assert!(
                !needs_escape(c) && c != '\u{fffd}',
                "{c:?} left in {line:?}"
            );
        }
    }

    #[test]
    fn agent_chosen_names_render_escaped_on_one_line() {
        use oxd_common::{op, Event, PATH_BUF_LEN};

        use crate::audit::{connect_event, Clock, Record};

        let policy = crate::policy::Policy::parse(Path::new("p.toml"), "[exec]\n").unwrap();
        // A path that would end the line and forge a denial, clear the screen, flip the text
        // around, break the line the Unicode way, and carry bytes that are not UTF-8.
        let path: &[u8] = b"/tmp/x\n2026-01-01T00:00:00Z  allow  exec /bin/ok\r\x1b[2J\x1b]0;t\x07\
            \xe2\x80\xae\xe2\x80\xa8\xc2\x85\x7f\\\xff\xc3";
        let mut e: Event = connect_event(1, oxd_common::action::DENY);
        e.op = op::OPEN;
        e.path[..path.len()].copy_from_slice(path);
        e.path_len = u32::try_from(path.len()).unwrap();
        assert!(path.len() < PATH_BUF_LEN);
        e.comm = *b"\x1b[31mred\n\xfe\0\0\0\0\0\0";
        let record = Record::from_event(&e, Some(&policy), &Clock::new());
        // As `oxd audit tail` meets it: a line of the log.
        let logged: Value = serde_json::from_str(&serde_json::to_string(&record).unwrap()).unwrap();
        let line = render(&logged);
        assert_one_visible_line(&line);
        assert!(
            line.contains(
                "open     /tmp/x\\n2026-01-01T00:00:00Z  allow  exec /bin/ok\\r\\x1b[2J\\x1b]0;t\\x07\
                 \\u{202e}\\u{2028}\\u{0085}\\x7f\\\\\\xff\\xc3 (read)"
            ),
            "{line}"
        );
        assert!(
            line.ends_with("[\\x1b[31mred\\n\\xfe pid 10 uid 0]"),
            "{line}"
        );

        // Without the exact bytes (an older log, or a field without them), the text itself
        // is escaped.
        let mut logged = logged;
        logged.as_object_mut().unwrap().remove("target_bytes");
        logged["policy"] = Value::from("p\u{2066}\u{9b}");
        let line = render(&logged);
        assert_one_visible_line(&line.replace('\u{fffd}', "?"));
        assert!(line.contains("\\u{2066}\\u{009b} gen"), "{line}");

        // An abstract socket name: `@`, then the name with its NUL bytes shown.
        e.op = op::UNIX_CONNECT;
        e.path[..5].copy_from_slice(b"\0a\0\nb");
        e.path_len = 5;
        let record = Record::from_event(&e, Some(&policy), &Clock::new());
        let logged: Value = serde_json::from_str(&serde_json::to_string(&record).unwrap()).unwrap();
        assert!(
            render(&logged).contains(" @a\\x00\\nb  by "),
            "{}",
            render(&logged)
        );
    }

    #[test]
    fn escaping_leaves_ordinary_text_alone() {
        assert_eq!(escape("/usr/bin/ls -l é 中 ✓"), "/usr/bin/ls -l é 中 ✓");
        assert_eq!(escape_bytes(b"a\tb\x00c\xe2\x80"), "a\\tb\\x00c\\xe2\\x80");
        assert_eq!(
            escape("\u{200f}\u{61c}\u{2069}"),
            "\\u{200f}\\u{061c}\\u{2069}"
        );
    }

    #[test]
    fn tail_passes_over_a_line_that_is_not_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.jsonl");
        std::fs::write(&log, b"{\"seq\":0}\n{\"seq\":\"\xff\"}\n{\"seq\":2}\n").unwrap();
        let mut seen = Vec::new();
        let options = TailOptions {
            follow: false,
            denied: false,
            last: 10,
        };
        tail(&log, options, &mut |r| {
            seen.push(r["seq"].as_u64().unwrap());
        })
        .unwrap();
        assert_eq!(seen, [0, 2]);
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
