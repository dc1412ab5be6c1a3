//! shoal's Raft consensus core, as a pure state machine: no I/O, no threads, no clock.
//!
//! Inputs are ticks ([`RaftNode::tick`]), peer messages ([`RaftNode::step`]), client requests
//! ([`RaftNode::propose`], [`RaftNode::read_index`], membership changes, transfers) and storage
//! completions ([`RaftNode::on_persisted`]). Outputs are [`Effect`]s drained with
//! [`RaftNode::take_effects`]: messages, durable writes, entries to apply, read confirmations.
//!
//! Safety rules that the driver relies on: a node acknowledges votes and entries only after the
//! write that records them is durable (`on_persisted`), and the leader counts itself towards a
//! commit only for entries it has made durable, while its followers may already be writing them.
//!
//! [`wal::Wal`] is the on-disk [`Storage`]: segment files of checksummed records and snapshot
//! files. It is the one module here that does I/O; the core never calls it.

mod config;
mod election;
mod error;
mod log;
mod membership;
mod node;
mod progress;
mod read;
mod replication;
pub mod seal;
mod snapshot;
mod storage;
mod types;
pub mod wal;

pub use config::{Config, ReadMode};
pub use error::{
    ConfigError, InitError, InvalidMessage, ProposeError, ReadError, SnapshotError, TransferError,
};
pub use node::{Effect, Proposal, RaftNode, SnapshotValidator, Stats};
pub use storage::{Infallible, MemStorage, RecoveredState, Storage, WriteBatch};
pub use types::{
    ConfChange, Entry, HardState, LogIndex, Membership, Message, MessageBody, NodeId, Payload,
    Role, Snapshot, SnapshotMeta, Term,
};
