//! Errors returned by the membership core; all are values, none panic.

use thiserror::Error;

/// An inconsistent configuration, or a local identity that does not fit it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid membership config: {0}")]
pub struct ConfigError(pub String);

/// A packet was dropped. Counted in `Stats::decode_errors`, never a panic.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The packet is empty.
    #[error("empty packet")]
    Empty,
    /// The packet is larger than any this core sends or accepts.
    #[error("packet of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The envelope carries a version this core does not speak.
    #[error("unsupported wire version {0}")]
    UnsupportedVersion(u8),
    /// The bytes do not decode as a message.
    #[error("malformed packet: {0}")]
    Malformed(String),
    /// The message decodes but cannot be valid.
    #[error("invalid packet: {0}")]
    Invalid(&'static str),
}

/// Why the local metadata was not changed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MetaError {
    /// The metadata is larger than `Config::max_meta_size`.
    #[error("metadata of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// This node has left the cluster.
    #[error("this node has left the cluster")]
    Left,
}

/// Why a join could not start.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum JoinError {
    /// No seed address other than this node's own was given.
    #[error("no seed address to join through")]
    NoSeeds,
    /// This node has left the cluster; start a new one to rejoin.
    #[error("this node has left the cluster")]
    Left,
}
