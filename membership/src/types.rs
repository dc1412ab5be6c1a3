//! The vocabulary of SWIM: node ids, addresses, incarnations, member states and members.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A node's identity in the cluster. It stays the same across restarts and address changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A SWIM incarnation number. Only a node itself raises its own: to refute a suspicion about it,
/// to announce new metadata, or after a restart to supersede what the cluster remembers of it.
pub type Incarnation = u64;

/// The longest address accepted, in bytes.
pub const MAX_ADDR_LEN: usize = 255;

/// A transport address, opaque to the core: whatever the driver's transport can send to
/// (`"10.0.0.7:4790"`, a simulated host name…). At most [`MAX_ADDR_LEN`] bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Addr(String);

impl Addr {
    /// Wraps an address string.
    pub fn new(addr: impl Into<String>) -> Self {
        Addr(addr.into())
    }

    /// The address as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for the empty address.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for Addr {
    fn from(s: &str) -> Self {
        Addr(s.to_owned())
    }
}

impl From<String> for Addr {
    fn from(s: String) -> Self {
        Addr(s)
    }
}

impl From<SocketAddr> for Addr {
    fn from(s: SocketAddr) -> Self {
        Addr(s.to_string())
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What this node believes about a member's liveness.
///
/// At equal incarnation the later states win: `Alive < Suspect < Dead ≤ Left`. A higher
/// incarnation wins over anything, except that only an alive announcement brings a dead or
/// left member back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum State {
    /// Answering probes (or not yet found otherwise).
    Alive,
    /// A probe failed; the member has until its suspicion timeout to refute.
    Suspect,
    /// Declared failed: the suspicion timed out without a refutation.
    Dead,
    /// Left the cluster gracefully. Final for that incarnation.
    Left,
}

/// The local node's identity, given at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's id.
    pub id: NodeId,
    /// Where the other members reach it.
    pub addr: Addr,
    /// Opaque metadata (role, labels, version…), at most `Config::max_meta_size` bytes.
    pub meta: Vec<u8>,
}

/// What this node knows about one member (itself included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The member's id.
    pub id: NodeId,
    /// Its address, as it announced it.
    pub addr: Addr,
    /// Its opaque metadata, as it announced it.
    pub meta: Vec<u8>,
    /// The incarnation of the latest news about it.
    pub incarnation: Incarnation,
    /// Its state as this node believes it.
    pub state: State,
    /// When (on this node's clock) the state last changed, or the member was first heard of.
    pub state_changed_at: Duration,
}

impl Member {
    /// True while alive or suspect: the member has not been declared failed and has not left.
    pub fn is_live(&self) -> bool {
        matches!(self.state, State::Alive | State::Suspect)
    }
}
