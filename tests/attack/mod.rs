//! The attack suite: one test per technique a hostile agent uses to route around its policy
//! (issue 9, as an ordinary user) or to switch oxd off and leave its confinement (issue 10, as
//! root: `cgroup`, `kernel`, `oxdfiles`, `daemon_guard`, and the root scenario in `agent`). Each
//! test runs `oxd-attack` or a shell inside `oxd run` (or a daemon's cgroup), fails if the
//! forbidden effect happens, and checks the attempt's audit record.

pub(crate) mod agent;
mod cgroup;
mod daemon_guard;
mod exec;
mod fs;
pub(crate) mod ipc;
mod kernel;
pub(crate) mod net;
mod ns;
mod oxdfiles;
mod sigio;
