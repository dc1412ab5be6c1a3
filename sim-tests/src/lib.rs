//! Simulations of shoal's cores under faults, and the linearizability checker they rely on.

pub mod agent_hosts;
pub mod cluster_services;
pub mod cluster_sim;
pub mod linearizability;
pub mod raft_sim;
pub mod restart_sim;
pub mod rng;
pub mod sim_storage;
pub mod swim_sim;
