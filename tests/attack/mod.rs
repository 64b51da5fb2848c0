//! The attack suite: one test per technique a hostile, unprivileged agent uses to route around
//! its policy (issue 9). Each test runs `oxd-attack` inside `oxd run` as an ordinary user, fails
//! if the forbidden effect happens, and checks the attempt's audit record.

pub(crate) mod agent;
mod agent;
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
