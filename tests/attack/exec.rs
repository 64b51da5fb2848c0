//! Attacks of the `exec` family: see `tests/attacker/exec.rs` for the techniques.
