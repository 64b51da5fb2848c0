//! The `[ipc]` Unix socket rules as `UNIX_RULES` trie entries: socket paths keyed like the
//! file tries (an exact path with its NUL, a subtree's directory with its `/`, plus the exact
//! key that makes `DIR/**` cover `DIR`), abstract names in their own key spaces (see
//! [`oxd_common::UNIX_ABSTRACT_EXACT`]).

use oxd_common::{
    PathKey, RuleValue, MAX_PATH_RULES, PATH_KEY_LEN, SLOT_PREFIX_BITS, UNIX_ABSTRACT_EXACT,
    UNIX_ABSTRACT_PREFIX,
};

use super::{action_bits, check_count, dir_entries, pattern_key, CompileError, PathEntry};
use crate::policy::{PathRule, UnixPattern, UnixRule};

/// The key bytes of a Unix socket pattern and its prefix length in bits, without the slot.
pub fn unix_key(pattern: &UnixPattern) -> (Vec<u8>, u32) {
    let bytes = match pattern {
        UnixPattern::Path(pattern) => return pattern_key(pattern),
        UnixPattern::Abstract(name) => {
            let len = u8::try_from(name.len()).unwrap_or(u8::MAX);
            let mut bytes = vec![UNIX_ABSTRACT_EXACT, len];
            bytes.extend_from_slice(name.as_bytes());
            bytes
        }
        UnixPattern::AbstractPrefix(prefix) => {
            let mut bytes = vec![UNIX_ABSTRACT_PREFIX, 0];
            bytes.extend_from_slice(prefix.as_bytes());
            bytes
        }
    };
    let bits = u32::try_from(bytes.len()).map_or(u32::MAX, |len| len.saturating_mul(8));
    (bytes, bits)
}

/// The `UNIX_RULES` entries of `rules` in `slot`.
pub(super) fn unix_entries(slot: u16, rules: &[UnixRule]) -> Result<Vec<PathEntry>, CompileError> {
    check_count("Unix socket", rules.len(), MAX_PATH_RULES)?;
    let mut out = rules
        .iter()
        .map(|rule| {
            let (bytes, bits) = unix_key(&rule.pattern);
            if bytes.len() > PATH_KEY_LEN {
                return Err(CompileError::KeyTooLong {
                    category: "Unix socket",
                    pattern: rule.pattern.to_string(),
                    len: bytes.len(),
                });
            }
            let mut key = PathKey {
                slot,
                path: [0; PATH_KEY_LEN],
            };
            key.path[..bytes.len()].copy_from_slice(&bytes);
            Ok(PathEntry {
                prefix_len: SLOT_PREFIX_BITS + bits,
                key,
                value: RuleValue {
                    rule_id: rule.rule,
                    action: action_bits(rule.action),
                },
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let paths: Vec<PathRule> = rules
        .iter()
        .filter_map(|rule| match &rule.pattern {
            UnixPattern::Path(pattern) => Some(PathRule {
                pattern: pattern.clone(),
                action: rule.action,
                rule: rule.rule,
            }),
            _ => None,
        })
        .collect();
    out.extend(dir_entries(slot, &paths));
    Ok(out)
}
