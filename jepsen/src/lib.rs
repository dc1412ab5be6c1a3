//! A Jepsen-style test bed for shoal: real `shoal agent` processes, each in a Linux network
//! namespace of its own, joined by veth pairs to one bridge, all inside a private network,
//! mount and PID namespace that the suite creates first, with no route to anything outside it.
//! When the suite's process ends, however it ends, everything goes with it: the kernel kills
//! the agents (the suite is their PID namespace's init) and the named network namespaces live
//! on a tmpfs of the private mount namespace, so nothing leaks and a crash leaves no debris.
//!
//! Needs root, `unshare` (util-linux) and `ip` (iproute2).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod campaign;
pub mod checker;
pub mod db;
pub mod history;
pub mod nemesis;
pub mod netem;
pub mod report;
pub mod run;
pub mod testbed;
pub mod workload;
