//! oxd: execution authorization for AI agents, enforced by the Linux kernel.
//!
//! The library holds everything the `oxd` binary does; the binary's `cli` module only parses
//! arguments and prints. By stage:
//! - [`policy`]: parse and validate a policy file (TOML, errors at `file:line:col`);
//! - [`compile`]: turn a validated policy into the contents of one kernel policy slot;
//! - [`enforcer`]: load the kernel programs, write slot images into their maps, attach, pin;
//! - [`pump`]: the one reader of the decision ring buffer, writing [`audit`] records;
//! - [`run`] (`oxd run`) and [`daemon`] (`oxd daemon`, with [`control`], its socket API);
//! - [`evaluate`]: the reference semantics, used by [`explain`] and held to agree with the
//!   kernel by the differential tests;
//! - [`host`]: what the host offers (LSMs, mounts, bpffs), asked by [`doctor`], run and the
//!   daemon; [`btf`]: kernel struct layouts; [`cgroup`]: the agent's cgroup; [`rcu`]: waiting
//!   for running BPF programs; [`metrics`]: Prometheus exposition.

/// The types shared with the kernel programs, and their limits.
pub use oxd_common;

pub mod audit;
pub mod batch;
pub mod btf;
pub mod cgroup;
pub mod compile;
pub mod control;
pub mod daemon;
pub mod doctor;
pub mod enforcer;
pub mod evaluate;
pub mod explain;
pub mod host;
pub mod metrics;
pub mod policy;
pub mod progstats;
pub mod pump;
pub mod rcu;
pub mod run;
