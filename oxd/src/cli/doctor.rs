//! `oxd doctor`: prints what enforcement needs from this host and what to change.

use oxd::doctor::{checks, Status};

/// Prints the checks; returns the exit status: 0 when nothing is missing, 1 otherwise.
pub(crate) fn doctor() -> i32 {
    let checks = checks();
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    for check in &checks {
        let label = match check.status {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Missing => "MISSING",
        };
        println!("{label:<8} {:<width$} {}", check.name, check.found);
        if let Some(fix) = &check.fix {
            println!("{:<8} {:<width$} fix: {fix}", "", "");
        }
    }
    let missing = checks
        .iter()
        .filter(|c| c.status == Status::Missing)
        .count();
    if missing == 0 {
        println!("oxd can enforce exec, file and network rules on this host");
        0
    } else {
        println!("{missing} missing: see the fixes above");
        1
    }
}
