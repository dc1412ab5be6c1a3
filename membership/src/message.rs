//! The wire format: one versioned envelope (a version byte, then the postcard encoding of a
//! [`Packet`]: sender, message kind and body, piggybacked updates), behind one encode/decode pair.
//! Decoding is bounded by the packet size and validates every field; it never panics.

use serde::{Deserialize, Serialize};

use crate::error::DecodeError;
use crate::types::{Addr, Incarnation, NodeId, State, MAX_ADDR_LEN};

/// The wire version this core speaks.
pub(crate) const VERSION: u8 = 2;

/// Largest packet accepted or sent, in bytes (a UDP datagram's payload bound).
pub(crate) const MAX_PACKET_SIZE: usize = 65_507;

/// No real incarnation gets near this; larger ones are hostile and would overflow a refutation.
pub(crate) const MAX_INCARNATION: Incarnation = u64::MAX / 2;

/// Most updates piggybacked on one packet: keeps their count's length prefix at one byte.
pub(crate) const MAX_UPDATES_PER_PACKET: usize = 127;

/// One datagram: who sends it, what it asks, and the updates riding along.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Packet {
    /// The sender's id.
    pub(crate) from: NodeId,
    /// The message proper.
    pub(crate) msg: Message,
    /// Piggybacked membership updates, applied before the message.
    pub(crate) updates: Vec<Update>,
}

/// The kinds of message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Message {
    /// A probe: ack `seq` if you are `target`.
    Ping {
        /// Echoed in the ack.
        seq: u32,
        /// The node the prober means to reach (an address may have been reused).
        target: NodeId,
        /// The sender's probe round, which keeps the members' round counters together so that
        /// their aligned probe schedules agree (`Config::aligned_rounds`).
        round: u32,
    },
    /// Probe `target` at `addr` for me and forward its ack; send a nack if it does not answer
    /// and `nack` is set.
    PingReq {
        /// The requester's probe sequence, echoed in the forwarded ack or the nack.
        seq: u32,
        /// The member to probe.
        target: NodeId,
        /// Where to probe it.
        addr: Addr,
        /// Whether the requester wants a nack on timeout (Lifeguard).
        nack: bool,
    },
    /// Answer to a ping, or an ack forwarded by an indirect prober.
    Ack {
        /// The probe's sequence.
        seq: u32,
    },
    /// An indirect prober's own probe timed out (Lifeguard): it is alive, the target did not answer.
    Nack {
        /// The requester's probe sequence.
        seq: u32,
    },
    /// Part of a full-state exchange; `reply` asks the receiver to answer with its own state.
    PushPull {
        /// Whether the receiver should send its state back.
        reply: bool,
        /// Member records.
        members: Vec<Record>,
    },
    /// Nothing but the piggybacked updates.
    Gossip,
}

/// A membership update, disseminated by piggybacking.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Update {
    /// The member is alive at this incarnation, with this address and metadata.
    Alive {
        /// The member.
        id: NodeId,
        /// Its incarnation.
        incarnation: Incarnation,
        /// Its address.
        addr: Addr,
        /// Its metadata.
        meta: Vec<u8>,
    },
    /// `from` suspects the member at this incarnation.
    Suspect {
        /// The member.
        id: NodeId,
        /// The incarnation suspected.
        incarnation: Incarnation,
        /// The accuser.
        from: NodeId,
    },
    /// `from` declared the member failed at this incarnation.
    Dead {
        /// The member.
        id: NodeId,
        /// The incarnation declared dead.
        incarnation: Incarnation,
        /// Who declared it.
        from: NodeId,
    },
    /// The member left gracefully at this incarnation.
    Left {
        /// The member.
        id: NodeId,
        /// Its final incarnation.
        incarnation: Incarnation,
    },
}

impl Update {
    /// The member the update is about.
    pub(crate) fn id(&self) -> NodeId {
        match self {
            Update::Alive { id, .. }
            | Update::Suspect { id, .. }
            | Update::Dead { id, .. }
            | Update::Left { id, .. } => *id,
        }
    }

    fn incarnation(&self) -> Incarnation {
        match self {
            Update::Alive { incarnation, .. }
            | Update::Suspect { incarnation, .. }
            | Update::Dead { incarnation, .. }
            | Update::Left { incarnation, .. } => *incarnation,
        }
    }
}

/// One member's full record in a push-pull.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    /// The member.
    pub(crate) id: NodeId,
    /// Its incarnation.
    pub(crate) incarnation: Incarnation,
    /// Its state as the sender believes it.
    pub(crate) state: State,
    /// Its address.
    pub(crate) addr: Addr,
    /// Its metadata.
    pub(crate) meta: Vec<u8>,
}

/// Encoded size of a value (without the envelope's version byte).
pub(crate) fn encoded_len<T: Serialize>(value: &T) -> usize {
    postcard::to_allocvec(value)
        .map(|v| v.len())
        .unwrap_or(usize::MAX / 4)
}

/// Encodes a packet in its envelope (the send path assembles the same bytes incrementally, see
/// `Memberlist::send`). `None` only if serialization itself fails.
#[cfg(test)]
pub(crate) fn encode(packet: &Packet) -> Option<Vec<u8>> {
    postcard::to_extend(packet, vec![VERSION]).ok()
}

/// Decodes and validates a packet. `max_meta` bounds metadata sizes.
pub(crate) fn decode(bytes: &[u8], max_meta: usize) -> Result<Packet, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if bytes.len() > MAX_PACKET_SIZE {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max: MAX_PACKET_SIZE,
        });
    }
    if version != VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let (packet, rest): (Packet, &[u8]) =
        postcard::take_from_bytes(body).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::Malformed(format!(
            "{} trailing bytes",
            rest.len()
        )));
    }
    validate(&packet, max_meta)?;
    Ok(packet)
}

fn check_addr(addr: &Addr) -> Result<(), DecodeError> {
    if addr.is_empty() || addr.len() > MAX_ADDR_LEN {
        return Err(DecodeError::Invalid("address empty or too long"));
    }
    Ok(())
}

fn check_incarnation(incarnation: Incarnation) -> Result<(), DecodeError> {
    if incarnation > MAX_INCARNATION {
        return Err(DecodeError::Invalid("incarnation out of range"));
    }
    Ok(())
}

fn validate(packet: &Packet, max_meta: usize) -> Result<(), DecodeError> {
    if packet.updates.len() > MAX_UPDATES_PER_PACKET {
        return Err(DecodeError::Invalid("too many piggybacked updates"));
    }
    for u in &packet.updates {
        check_incarnation(u.incarnation())?;
        if let Update::Alive { addr, meta, .. } = u {
            check_addr(addr)?;
            if meta.len() > max_meta {
                return Err(DecodeError::Invalid("metadata too large"));
            }
        }
    }
    match &packet.msg {
        Message::PingReq { addr, .. } => check_addr(addr)?,
        Message::PushPull { members, .. } => {
            for r in members {
                check_incarnation(r.incarnation)?;
                check_addr(&r.addr)?;
                if r.meta.len() > max_meta {
                    return Err(DecodeError::Invalid("metadata too large"));
                }
            }
        }
        Message::Ping { .. } | Message::Ack { .. } | Message::Nack { .. } | Message::Gossip => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Packet {
        Packet {
            from: NodeId(7),
            msg: Message::PushPull {
                reply: true,
                members: vec![Record {
                    id: NodeId(9),
                    incarnation: 3,
                    state: State::Suspect,
                    addr: Addr::from("10.0.0.9:7946"),
                    meta: b"role=worker".to_vec(),
                }],
            },
            updates: vec![
                Update::Alive {
                    id: NodeId(1),
                    incarnation: 2,
                    addr: Addr::from("a"),
                    meta: vec![1, 2, 3],
                },
                Update::Suspect {
                    id: NodeId(2),
                    incarnation: 0,
                    from: NodeId(1),
                },
                Update::Dead {
                    id: NodeId(3),
                    incarnation: 5,
                    from: NodeId(1),
                },
                Update::Left {
                    id: NodeId(4),
                    incarnation: 1,
                },
            ],
        }
    }

    #[test]
    fn round_trip() {
        let p = sample();
        let bytes = encode(&p).unwrap();
        assert_eq!(bytes[0], VERSION);
        assert_eq!(bytes.len(), 1 + encoded_len(&p));
        assert_eq!(decode(&bytes, 512).unwrap(), p);
    }

    #[test]
    fn vec_length_prefix_is_one_byte_below_128() {
        // The packet-size accounting relies on this: adding updates adds exactly their sizes.
        let mut p = Packet {
            from: NodeId(1),
            msg: Message::Gossip,
            updates: vec![],
        };
        let base = encoded_len(&p);
        let u = Update::Left {
            id: NodeId(300),
            incarnation: 1,
        };
        for _ in 0..MAX_UPDATES_PER_PACKET {
            p.updates.push(u.clone());
        }
        assert_eq!(
            encoded_len(&p),
            base + MAX_UPDATES_PER_PACKET * encoded_len(&u)
        );
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(decode(&[], 512), Err(DecodeError::Empty));
        assert_eq!(
            decode(&[9, 0], 512),
            Err(DecodeError::UnsupportedVersion(9))
        );
        assert!(matches!(
            decode(&[VERSION, 0xff, 0xff], 512),
            Err(DecodeError::Malformed(_))
        ));
        let mut bytes = encode(&sample()).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode(&bytes, 512),
            Err(DecodeError::Malformed(_))
        ));
        // Metadata over the limit.
        let bytes = encode(&sample()).unwrap();
        assert_eq!(
            decode(&bytes, 2),
            Err(DecodeError::Invalid("metadata too large"))
        );
        // Hostile incarnation.
        let p = Packet {
            from: NodeId(1),
            msg: Message::Gossip,
            updates: vec![Update::Left {
                id: NodeId(2),
                incarnation: u64::MAX,
            }],
        };
        assert_eq!(
            decode(&encode(&p).unwrap(), 512),
            Err(DecodeError::Invalid("incarnation out of range"))
        );
        let big = vec![VERSION; MAX_PACKET_SIZE + 1];
        assert!(matches!(
            decode(&big, 512),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn truncations_never_panic() {
        let bytes = encode(&sample()).unwrap();
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut], 512).is_err());
        }
        // Flip every byte in turn: decode may succeed or fail, never panic.
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0xA5;
            let _ = decode(&b, 512);
        }
    }
}
