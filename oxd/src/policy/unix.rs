//! Unix socket patterns of `[ipc]` rules (`unix_allow`, `unix_deny`): a socket path, written as
//! a file rule's path (one socket, or a directory and everything below it), or an abstract name
//! (`@name`, or `@prefix*` for every abstract name that starts with `prefix`).

use std::fmt;

use oxd_common::UNIX_ABSTRACT_NAME_MAX;

use super::path::{parse_path_pattern, PathPattern};

/// What a Unix socket rule names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnixPattern {
    /// Sockets bound to a file-system name: exactly this path, or everything below a directory
    /// (matched against the listening socket's bound path, resolved in the host's view).
    Path(PathPattern),
    /// Exactly this abstract name (without the NUL that starts it in `sun_path`).
    Abstract(String),
    /// Every abstract name that starts with this (possibly empty) prefix.
    AbstractPrefix(String),
}

/// Where a Unix socket rule matches, for ordering: the kernel looks abstract names up in an
/// exact key space first, then a prefix space, and paths in one longest-prefix trie.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct UnixSpecificity {
    /// An exact abstract name beats every prefix.
    exact_name: bool,
    /// Bytes the match pins down (as [`PathPattern::specificity`] for paths; the prefix's
    /// length for abstract prefixes).
    bytes: usize,
    /// Between a subtree matching its own directory and an exact rule naming that directory,
    /// the exact rule.
    exact_path: bool,
}

impl UnixPattern {
    /// Whether the socket `target` is matched: its bound path (absolute, normalised), or
    /// `@name` for an abstract name.
    pub fn matches(&self, target: &str) -> bool {
        match (self, target.strip_prefix('@')) {
            (Self::Path(pattern), None) => pattern.matches(target),
            (Self::Abstract(name), Some(target)) => name == target,
            (Self::AbstractPrefix(prefix), Some(target)) => target.starts_with(prefix.as_str()),
            _ => false,
        }
    }

    /// How specific a match is: the greatest wins (on a tie, deny; validation keeps one rule
    /// per pattern).
    pub fn specificity(&self) -> UnixSpecificity {
        match self {
            Self::Path(pattern) => UnixSpecificity {
                exact_name: false,
                bytes: pattern.specificity(),
                exact_path: matches!(pattern, PathPattern::Exact(_)),
            },
            Self::Abstract(name) => UnixSpecificity {
                exact_name: true,
                bytes: name.len(),
                exact_path: false,
            },
            Self::AbstractPrefix(prefix) => UnixSpecificity {
                exact_name: false,
                bytes: prefix.len(),
                exact_path: false,
            },
        }
    }
}

impl fmt::Display for UnixPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Path(pattern) => pattern.fmt(f),
            Self::Abstract(name) => write!(f, "@{name}"),
            Self::AbstractPrefix(prefix) => write!(f, "@{prefix}*"),
        }
    }
}

/// Parses a Unix socket rule: `/path/of.sock`, `/dir/**`, `@name` or `@prefix*`.
pub fn parse_unix_pattern(text: &str) -> Result<UnixPattern, String> {
    if let Some(name) = text.strip_prefix('@') {
        let (name, prefix) = match name.strip_suffix('*') {
            Some(name) => (name, true),
            None => (name, false),
        };
        if name.chars().any(char::is_control) {
            return Err(format!(
                "`{text}`: abstract names in rules are printable text (no NUL or control \
                 characters)"
            ));
        }
        if name.contains('*') {
            return Err(format!(
                "`{text}`: `*` is only supported at the end of an abstract name (`@prefix*`)"
            ));
        }
        if name.len() > UNIX_ABSTRACT_NAME_MAX {
            return Err(format!(
                "`{text}`: an abstract name holds at most {UNIX_ABSTRACT_NAME_MAX} bytes \
                 (this one has {})",
                name.len()
            ));
        }
        if name.is_empty() && !prefix {
            return Err(
                "`@` names no abstract socket: write `@name`, or `@*` for every one".into(),
            );
        }
        return Ok(if prefix {
            UnixPattern::AbstractPrefix(name.to_owned())
        } else {
            UnixPattern::Abstract(name.to_owned())
        });
    }
    if !text.starts_with('/') {
        return Err(format!(
            "`{text}` is neither a socket path nor an abstract name: write an absolute path \
             (`/run/user/1000/bus`, `/tmp/.X11-unix/**`) or `@name` (`@prefix*`)"
        ));
    }
    parse_path_pattern(text).map(UnixPattern::Path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_patterns() {
        assert_eq!(
            parse_unix_pattern("/run/user/1000/bus"),
            Ok(UnixPattern::Path(PathPattern::Exact(
                "/run/user/1000/bus".into()
            )))
        );
        assert_eq!(
            parse_unix_pattern("/tmp/.X11-unix/**"),
            Ok(UnixPattern::Path(PathPattern::Subtree(
                "/tmp/.X11-unix/".into()
            )))
        );
        assert_eq!(
            parse_unix_pattern("@dbus-x"),
            Ok(UnixPattern::Abstract("dbus-x".into()))
        );
        assert_eq!(
            parse_unix_pattern("@/tmp/.X11-unix/X*"),
            Ok(UnixPattern::AbstractPrefix("/tmp/.X11-unix/X".into()))
        );
        assert_eq!(
            parse_unix_pattern("@*"),
            Ok(UnixPattern::AbstractPrefix(String::new()))
        );
        for bad in [
            "run/bus",
            "/run/user/*/bus",
            "/tmp/.X11-unix/X*",
            "@",
            "@a*b",
            "@a\u{0}b",
            "@a\nb",
            "/run/",
        ] {
            assert!(
                parse_unix_pattern(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
        let long = format!("@{}", "a".repeat(UNIX_ABSTRACT_NAME_MAX + 1));
        assert!(parse_unix_pattern(&long).is_err());
        let fits = format!("@{}", "a".repeat(UNIX_ABSTRACT_NAME_MAX));
        assert!(parse_unix_pattern(&fits).is_ok());
    }

    #[test]
    fn abstract_and_path_targets_never_mix() {
        let path = parse_unix_pattern("/run/**").unwrap();
        let name = parse_unix_pattern("@run").unwrap();
        let any = parse_unix_pattern("@*").unwrap();
        assert!(path.matches("/run/x.sock"));
        assert!(!path.matches("@/run/x.sock"));
        assert!(name.matches("@run"));
        assert!(!name.matches("@run2"));
        assert!(!name.matches("run"));
        assert!(any.matches("@"));
        assert!(any.matches("@anything"));
        assert!(!any.matches("/run/x.sock"));
        assert!(name.specificity() > any.specificity());
        let prefix = parse_unix_pattern("@ru*").unwrap();
        assert!(prefix.specificity() > any.specificity());
        assert!(
            name.specificity()
                > parse_unix_pattern("@run-longer-prefix*")
                    .unwrap()
                    .specificity()
        );
        assert_eq!(prefix.to_string(), "@ru*");
        assert_eq!(path.to_string(), "/run/**");
    }
}
