//! Attacks of the `ipc` family: see `tests/attacker/ipc.rs` for the techniques.
