//! The shoal node agent as a library: the agent runtime (Raft replica, membership, transport,
//! control API), the CLI and its client, and the demo. The `shoal` binary is a thin `main` over
//! it; simulations (`shoal-sim`'s `cluster-sim`) run the same agent on turmoil.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod agent;
pub mod api;
pub mod cli;
pub mod client;
pub mod control;
pub mod demo;
pub mod dispatch;
pub mod dns;
pub mod format;
pub mod gossip;
pub mod health;
pub mod keys;
pub mod mesh;
pub mod metrics;
pub mod raft_driver;
pub mod remote;
pub mod services;
pub mod sim_executor;
pub mod stack;
pub mod store;
pub mod task_files;
pub mod test_clock;
pub mod web;
pub mod wire;
pub mod worker;
