//! Attacks of the `net` family: see `tests/attacker/net.rs` for the techniques.
