//! `oxd-probe`: performs actions as a confined agent would and reports, one JSON line per
//! action, whether the kernel let each one happen and with which errno.
//!
//! Actions (any number, in order):
//! - `exec:PATH` runs PATH (no arguments) and waits for it;
//! - `connect:IP:PORT` / `connect:[IPV6]:PORT` opens a TCP connection;
//! - `wait:FILE` waits (up to 120 s) until FILE exists.
//!
//! Output: `{"action":"exec:/usr/bin/id","ok":false,"errno":1}` or
//! `{"action":"exec:/usr/bin/true","ok":true,"status":0}`.

use std::{
    io::Write as _,
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

fn report(action: &str, result: Result<Option<i32>, std::io::Error>) {
    let line = match result {
        Ok(status) => serde_json::json!({ "action": action, "ok": true, "status": status }),
        Err(e) => serde_json::json!({
            "action": action,
            "ok": false,
            "errno": e.raw_os_error(),
            "error": e.to_string(),
        }),
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn main() -> ExitCode {
    let actions: Vec<String> = std::env::args().skip(1).collect();
    if actions.is_empty() {
        eprintln!("usage: oxd-probe exec:PATH | connect:ADDR:PORT | wait:FILE ...");
        return ExitCode::from(2);
    }
    for action in &actions {
        if let Some(path) = action.strip_prefix("exec:") {
            let result = Command::new(path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .status()
                .map(|s| s.code());
            report(action, result);
        } else if let Some(addr) = action.strip_prefix("connect:") {
            let addr: SocketAddr = match addr.parse() {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("oxd-probe: bad address {addr}: {e}");
                    return ExitCode::from(2);
                }
            };
            let result = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).map(|_| None);
            report(action, result);
        } else if let Some(file) = action.strip_prefix("wait:") {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !Path::new(file).exists() {
                if Instant::now() > deadline {
                    eprintln!("oxd-probe: timed out waiting for {file}");
                    return ExitCode::from(3);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            report(action, Ok(None));
        } else {
            eprintln!("oxd-probe: unknown action {action}");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
