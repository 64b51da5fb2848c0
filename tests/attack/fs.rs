//! Attacks of the `fs` family: see `tests/attacker/fs.rs` for the techniques.
