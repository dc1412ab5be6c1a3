//! shoal's membership core: SWIM failure detection and gossip with the Lifeguard extensions, as a
//! pure state machine. No I/O, no threads, no clock: time comes in with every input, randomness
//! from a seeded generator, so the same inputs and seed replay the same run.
//!
//! Inputs are [`Memberlist::tick`] (time passing), [`Memberlist::receive`] (a datagram from a
//! peer), [`Memberlist::join`], [`Memberlist::leave`] and [`Memberlist::set_local_meta`]. Outputs
//! are [`Effect`]s drained with [`Memberlist::take_effects`]: datagrams to send and
//! [`MemberEvent`]s.
//!
//! What it implements:
//!
//! - **SWIM** (Das, Gupta, Motivala 2002): one probe per protocol period in randomized
//!   round-robin order; after a missed ack, indirect probes through `indirect_checks` members;
//!   suspicion with incarnation numbers and refutation; dissemination by piggybacking on every
//!   packet, each update sent about `retransmit_mult · log10(n + 1)` times.
//! - **Lifeguard** (Dadgar, Phillips, Currey 2018): the local health multiplier scales the
//!   probe period and timeout; the suspicion timeout shrinks from a maximum towards a minimum
//!   as independent confirmations arrive; indirect probers nack; a probed suspect learns of the
//!   suspicion at once (buddy system). `Config::lifeguard = false` turns all four off.
//! - **memberlist-style** extras: gossip rounds besides piggybacking, periodic full-state
//!   push-pull, join through seeds with retries, graceful leave, reconnect attempts to dead
//!   members and seeds so that a healed partition merges back, opaque node metadata.
//! - **Load-saving** departures (each can be turned off in [`Config`]): the direct ping repeated
//!   before the indirect probe (`probe_retries`; indirect probers repeat theirs once), gossip rounds only while an update is fresh
//!   (`gossip_max_transmits`, piggybacking carries the rest), and a probe that fails as soon as
//!   every indirect prober has nacked. The `lan` suspicion multiplier is 1.5 with Lifeguard's K
//!   set on its own (`suspicion_confirmations`); see [`Config::lan`] for why.
//!
//! The wire format is one versioned envelope (a version byte, then postcard); every packet is
//! decoded with bounds and validated, and bad input is dropped and counted, never a panic.

#![warn(missing_docs)]

mod awareness;
mod broadcast;
mod config;
mod error;
mod memberlist;
mod members;
mod message;
mod probe;
mod rng;
mod suspicion;
mod sync;
mod types;

#[cfg(test)]
mod tests;

pub use config::Config;
pub use error::{ConfigError, DecodeError, JoinError, MetaError};
pub use memberlist::{Effect, MemberEvent, Memberlist, Stats};
pub use types::{Addr, Incarnation, Member, NodeId, NodeInfo, State, MAX_ADDR_LEN};
