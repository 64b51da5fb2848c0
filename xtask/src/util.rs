//! Small helpers shared by the subcommands: running commands, quoting, paths.

use std::{
    env,
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use anyhow::{bail, Context, Result};

/// The workspace root: the parent of this crate's manifest directory.
pub(crate) fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The cargo target directory of the workspace.
pub(crate) fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                repo_root().join(dir)
            }
        }
        _ => repo_root().join("target"),
    }
}

/// The `cargo` to call for nested builds (the one that runs us, when known).
pub(crate) fn cargo() -> Command {
    Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Puts `$CARGO_HOME/bin` (or `~/.cargo/bin`) first on PATH so every child process finds
/// tools installed by `cargo install` (bpf-linker).
pub(crate) fn prepend_cargo_bin_to_path() {
    let cargo_bin = match env::var_os("CARGO_HOME") {
        Some(home) if !home.is_empty() => PathBuf::from(home).join("bin"),
        _ => match env::var_os("HOME") {
            Some(home) if !home.is_empty() => PathBuf::from(home).join(".cargo").join("bin"),
            _ => return,
        },
    };
    let old = env::var_os("PATH").unwrap_or_default();
    if env::split_paths(&old).any(|p| p == cargo_bin) {
        return;
    }
    let paths = std::iter::once(cargo_bin).chain(env::split_paths(&old));
    if let Ok(joined) = env::join_paths(paths) {
        env::set_var("PATH", joined);
    }
}

/// A human-readable rendering of a command line, for messages.
pub(crate) fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| shell_quote(&a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a command with inherited stdio and fails unless it exits with status 0.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let what = describe(cmd);
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{what}`"))?;
    if !status.success() {
        bail!("`{what}` failed ({status})");
    }
    Ok(())
}

/// Runs a command, capturing stdout and stderr, and fails (showing stderr) unless it exits with
/// status 0. Returns stdout.
pub(crate) fn output(cmd: &mut Command) -> Result<String> {
    let out = raw_output(cmd)?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}{}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{}` printed non-UTF-8", describe(cmd)))
}

/// Runs a command, capturing its output, whatever its exit status.
pub(crate) fn raw_output(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))
}

/// Whether a program can be found on PATH.
pub(crate) fn on_path(program: impl AsRef<OsStr>) -> bool {
    let Some(path) = env::var_os("PATH") else {
        return false;
    };
    env::split_paths(&path).any(|dir| dir.join(program.as_ref()).is_file())
}

/// A system tool that may live in an sbin directory missing from a user's PATH (`modinfo`).
pub(crate) fn system_tool(name: &str) -> PathBuf {
    if on_path(name) {
        return PathBuf::from(name);
    }
    ["/usr/sbin", "/sbin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Whether this process runs as root.
pub(crate) fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Quotes a string for POSIX sh: plain words stay as they are, anything else is wrapped in
/// single quotes with embedded single quotes written as `'\''`.
pub(crate) fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'_' | b'.' | b'/' | b':' | b'=' | b'+' | b',' | b'@'
                )
        });
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Writes a file, creating its parent directories, with a useful error.
pub(crate) fn write_file(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create directory {}", parent.display()))?;
    }
    std::fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))
}

/// Reads a file that may be absent: `Ok(None)` when it does not exist.
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_words_are_not_quoted() {
        assert_eq!(shell_quote("ls"), "ls");
        assert_eq!(
            shell_quote("/work/main/target/debug/oxd"),
            "/work/main/target/debug/oxd"
        );
        assert_eq!(shell_quote("--test-threads=1"), "--test-threads=1");
    }

    #[test]
    fn special_characters_are_single_quoted() {
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("a\nb"), "'a\nb'");
        assert_eq!(shell_quote("`x`;|&*?"), "'`x`;|&*?'");
    }

    #[test]
    fn quoted_words_survive_a_real_shell() {
        let args = [
            "plain", "a b", "it's", "$HOME", "\"q\"", "\\", "", "x\ny", "*",
        ];
        let script = format!(
            "printf '%s\\0' {}",
            args.iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let out = Command::new("sh").arg("-c").arg(&script).output();
        let out = out.expect("sh runs");
        let got: Vec<&[u8]> = out.stdout.split(|&b| b == 0).collect();
        let want: Vec<&[u8]> = args
            .iter()
            .map(|a| a.as_bytes())
            .chain([&b""[..]])
            .collect();
        assert_eq!(got, want);
    }
}
