//! `oxd check`: validates a policy file and summarises it.

use std::path::Path;

use anyhow::Result;
use oxd::policy::Policy;

pub(crate) fn check(path: &Path) -> Result<i32> {
    let policy = Policy::load(path)?;
    let exec = policy.exec.as_ref().map_or_else(
        || "not decided".to_owned(),
        |e| format!("{} rules, default {}", e.rules.len(), e.default.as_str()),
    );
    let file = policy.file.as_ref().map_or_else(
        || "not decided".to_owned(),
        |f| {
            format!(
                "{} read rules, default {}, {} write rules, default {}",
                f.read.len(),
                f.read_default.as_str(),
                f.write.len(),
                f.write_default.as_str()
            )
        },
    );
    let network = policy.network.as_ref().map_or_else(
        || "not decided".to_owned(),
        |n| format!("{} rules, default {}", n.rules.len(), n.default.as_str()),
    );
    let unix = policy.ipc.as_ref().map_or_else(
        || "not decided".to_owned(),
        |i| format!("{} rules, default {}", i.unix_rules.len(), i.unix.as_str()),
    );
    let namespaces = policy
        .namespaces
        .map_or("not decided", |n| n.action.as_str());
    let max_processes = policy
        .max_processes
        .map_or_else(|| "no limit".to_owned(), |n| n.to_string());
    println!(
        "{}: ok: policy `{}` (sha256 {}), mode {}; exec: {exec}; file: {file}; network: \
         {network}; namespaces: {namespaces}; unix sockets outside: {unix}; max processes: \
         {max_processes}",
        path.display(),
        policy.name,
        &policy.sha256[..16],
        policy.mode.as_str(),
    );
    Ok(0)
}
