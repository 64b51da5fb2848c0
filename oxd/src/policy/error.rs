//! Policy errors, located in the policy file and rendered as `file:line:col` with the line.

use std::{
    ops::Range,
    path::{Path, PathBuf},
};

/// A policy error, located in the policy file.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{path}: cannot read the policy")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", render_located(path, source_text, span, message))]
    Invalid {
        path: PathBuf,
        source_text: String,
        span: Range<usize>,
        message: String,
    },
}

fn render_located(path: &Path, text: &str, span: &Range<usize>, message: &str) -> String {
    let (line, col) = line_col(text, span.start);
    let mut out = format!("{}:{line}:{col}: {message}", path.display());
    if let Some(source_line) = text.lines().nth(line - 1) {
        let width = text[span.clone()]
            .lines()
            .next()
            .map_or(1, |l| l.chars().count().max(1));
        let width = width.min(source_line.chars().count().saturating_sub(col - 1).max(1));
        out.push_str(&format!(
            "\n{line:>5} | {source_line}\n      | {}{}",
            " ".repeat(col - 1),
            "^".repeat(width)
        ));
    }
    out
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = text[line_start..offset].chars().count() + 1;
    (line, col)
}
