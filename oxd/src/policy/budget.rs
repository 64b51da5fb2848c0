//! Budgets: `budget = { count = N, per = "DURATION" }` on a rule.

use std::time::Duration;

use oxd_common::MAX_BUDGET_COUNT;
use serde::Deserialize;
use toml::Spanned;

use super::validate::ValidateResult;

/// A budget: at most `count` actions per window of `per`, counted in the kernel per confined
/// target.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBudget {
    /// Actions per window.
    #[schemars(with = "i64", range(min = 1, max = 16_777_215))]
    pub(super) count: Spanned<i64>,
    /// The window: `"500ms"`, `"10s"`, `"1m"`, `"1h 30m"` (1 ms to 30 days).
    #[schemars(with = "String")]
    pub(super) per: Spanned<String>,
}

/// The longest window: 30 days.
pub const MAX_BUDGET_WINDOW: Duration = Duration::from_hours(30 * 24);

/// At most `count` actions the rule allows in a window of `per_ms` milliseconds; the first
/// action counted after a window ends starts the next one. Counted in the kernel, per confined
/// target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Budget {
    pub count: u32,
    pub per_ms: u32,
}

impl Budget {
    /// The window as people write it (`1m`, `2s`, `1h 30m`).
    pub fn per_text(&self) -> String {
        humantime::format_duration(Duration::from_millis(u64::from(self.per_ms))).to_string()
    }

    /// `N per DURATION`, for rule texts and records.
    pub fn text(&self) -> String {
        format!("{} per {}", self.count, self.per_text())
    }
}

pub(super) fn parse_budget(raw: &RawBudget) -> ValidateResult<Budget> {
    let count = u32::try_from(*raw.count.get_ref())
        .ok()
        .filter(|n| (1..=MAX_BUDGET_COUNT).contains(n))
        .ok_or_else(|| {
            (
                raw.count.span(),
                format!(
                    "a budget's count must be a number of actions from 1 to {MAX_BUDGET_COUNT}"
                ),
            )
        })?;
    let text = raw.per.get_ref().trim();
    let per = humantime::parse_duration(text).map_err(|e| {
        (
            raw.per.span(),
            format!(
                "`{text}` is not a duration ({e}): write e.g. \"500ms\", \"10s\", \"1m\", \"1h\""
            ),
        )
    })?;
    if per < Duration::from_millis(1) || per > MAX_BUDGET_WINDOW {
        return Err((
            raw.per.span(),
            format!("a budget's window must be from 1ms to 30 days, not `{text}`"),
        ));
    }
    if per.subsec_nanos() % 1_000_000 != 0 {
        return Err((
            raw.per.span(),
            format!("a budget's window is counted in whole milliseconds: `{text}` is not"),
        ));
    }
    let per_ms = u32::try_from(per.as_millis()).unwrap_or(u32::MAX);
    Ok(Budget { count, per_ms })
}
