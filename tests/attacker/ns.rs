//! Techniques of the `ns` family (see the crate documentation).

use crate::Outcome;

/// Runs `technique` if it belongs to this family.
pub(crate) fn run(technique: &str, args: &[String]) -> Option<Outcome> {
    let _ = (technique, args);
    None
}
