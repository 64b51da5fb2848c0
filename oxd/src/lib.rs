//! oxd: execution authorization for AI agents, enforced by the Linux kernel.
//!
//! The library holds everything the `oxd` binary does, by stage: [`policy`] (parse, validate,
//! compile), [`evaluate`] (the reference semantics, used by [`explain`]), [`btf`] (kernel struct layout), [`enforcer`] (load, fill maps, attach),
//! [`cgroup`] (the agent's cgroup), [`audit`] (decision records), and [`run`] (`oxd run`).

/// The types shared with the kernel programs, and their limits.
pub use oxd_common;

pub mod audit;
pub mod audit_cmd;
pub mod btf;
pub mod cgroup;
pub mod control;
pub mod daemon;
pub mod doctor;
pub mod enforcer;
pub mod evaluate;
pub mod explain;
pub mod metrics;
pub mod policy;
pub mod progstats;
pub mod rcu;
pub mod run;
