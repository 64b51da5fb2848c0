//! Path patterns of exec and file rules: one file, or a directory and everything below it.

use std::fmt;

use oxd_common::MAX_RULE_PATH_LEN;

/// A path pattern: one file, or a directory and everything below it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathPattern {
    /// Exactly this path.
    Exact(String),
    /// This directory (given with its trailing `/`) and everything below it.
    Subtree(String),
}

impl PathPattern {
    /// Whether `path` (absolute, normalised) is matched, for the reference semantics. A subtree
    /// matches its directory itself too (`/work/**` matches `/work`): removing, renaming or
    /// changing the directory is an action on the subtree.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(p) => p == path,
            Self::Subtree(dir) => {
                path.starts_with(dir.as_str()) || dir.strip_suffix('/') == Some(path)
            }
        }
    }

    /// Specificity: the number of bytes a match pins down, longer is more specific. An exact
    /// pattern pins its path and the end of the path (its terminating NUL in the kernel's key);
    /// a subtree pins its directory up to and including the trailing `/`. This is the length of
    /// the pattern's kernel key (see [`crate::compile`]), whose longest-prefix match picks the
    /// most specific rule.
    pub fn specificity(&self) -> usize {
        match self {
            Self::Exact(p) => p.len() + 1,
            Self::Subtree(dir) => dir.len(),
        }
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(p) => f.write_str(p),
            Self::Subtree(dir) if dir == "/" => f.write_str("/**"),
            Self::Subtree(dir) => write!(f, "{dir}**"),
        }
    }
}

/// Parses an exec path pattern: an absolute, normalised path, optionally ending in `/**`.
pub fn parse_path_pattern(text: &str) -> Result<PathPattern, String> {
    if !text.starts_with('/') {
        return Err(format!(
            "`{text}` is not an absolute path: write the full path, e.g. `/usr/bin/{}`",
            text.trim_start_matches("./")
        ));
    }
    if text == "/" {
        return Err("`/` is a directory: write `/**` for the whole file system".into());
    }
    let (dir, subtree) = match text.strip_suffix("/**") {
        Some(dir) => (dir, true),
        None => (text, false),
    };
    if dir.contains('*') || dir.contains('?') || dir.contains('[') {
        return Err(format!(
            "`{text}`: wildcards are only supported as a trailing `/**` (a directory and \
             everything below it)"
        ));
    }
    if text.ends_with('/') && text != "/" {
        return Err(format!(
            "`{text}` ends with `/`: write `{text}**` for the directory and everything below it"
        ));
    }
    if text.contains('\0') {
        return Err("a path cannot contain a NUL byte".into());
    }
    for component in dir.split('/').skip(1) {
        match component {
            "" => return Err(format!("`{text}` contains an empty component (`//`)")),
            "." | ".." => {
                return Err(format!(
                    "`{text}` contains `{component}`: write the normalised path (rules match the \
                     path the kernel resolves, with symlinks, `.` and `..` already followed)"
                ))
            }
            _ => {}
        }
    }
    let pattern = if subtree {
        PathPattern::Subtree(format!("{dir}/"))
    } else {
        PathPattern::Exact(dir.to_owned())
    };
    // The kernel's key holds the pattern's specific bytes (with an exact path's terminator).
    if pattern.specificity() > MAX_RULE_PATH_LEN + 1 {
        return Err(format!(
            "`{text}` is {} bytes long; oxd's kernel keys hold paths of at most {MAX_RULE_PATH_LEN} \
             bytes: name a shorter parent directory with `/**`",
            dir.len()
        ));
    }
    Ok(pattern)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_patterns() {
        assert_eq!(
            parse_path_pattern("/usr/bin/git"),
            Ok(PathPattern::Exact("/usr/bin/git".into()))
        );
        assert_eq!(
            parse_path_pattern("/usr/bin/**"),
            Ok(PathPattern::Subtree("/usr/bin/".into()))
        );
        assert_eq!(
            parse_path_pattern("/**"),
            Ok(PathPattern::Subtree("/".into()))
        );
        for bad in [
            "usr/bin",
            "/usr/bin/",
            "/usr/*/git",
            "/usr//bin",
            "/usr/../bin",
            "/",
            "/a/./b",
        ] {
            assert!(parse_path_pattern(bad).is_err(), "{bad} should be rejected");
        }
        let long = format!("/{}", "a".repeat(MAX_RULE_PATH_LEN));
        assert!(parse_path_pattern(&long).is_err());
        let fits = format!("/{}", "a".repeat(MAX_RULE_PATH_LEN - 1));
        assert!(parse_path_pattern(&fits).is_ok());
    }

    #[test]
    fn subtree_limit_counts_the_trailing_slash() {
        // `/aaa/**` pins `/aaa/`: the directory and its slash must fit the key.
        let fits = format!("/{}/**", "a".repeat(MAX_RULE_PATH_LEN - 1));
        assert_eq!(
            parse_path_pattern(&fits).map(|p| p.specificity()),
            Ok(MAX_RULE_PATH_LEN + 1)
        );
        let long = format!("/{}/**", "a".repeat(MAX_RULE_PATH_LEN));
        assert!(parse_path_pattern(&long).is_err());
    }

    #[test]
    fn specificity_orders_exact_above_its_directory() {
        let exact = PathPattern::Exact("/usr/bin".into());
        let subtree = PathPattern::Subtree("/usr/bin/".into());
        assert_eq!(exact.specificity(), "/usr/bin".len() + 1);
        assert_eq!(subtree.specificity(), "/usr/bin/".len());
        assert!(PathPattern::Exact("/usr/bin/x".into()).specificity() > subtree.specificity());
        assert_eq!(subtree.to_string(), "/usr/bin/**");
        assert_eq!(PathPattern::Subtree("/".into()).to_string(), "/**");
    }
}
