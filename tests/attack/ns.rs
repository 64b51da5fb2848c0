//! Attacks of the `ns` family: see `tests/attacker/ns.rs` for the techniques.
