//! The wire envelope and stream framing.
//!
//! Every message travels in a versioned envelope `{version, kind, body}` encoded with postcard,
//! behind this one encode/decode pair so the codec can be swapped in one place. On streams, each
//! envelope is preceded by its length as a little-endian `u32`; the length is checked against the
//! channel's limit *before* anything is allocated. Datagrams carry one envelope each.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The envelope version this build speaks.
pub const VERSION: u16 = 1;
/// Default largest frame accepted on a stream (a Raft append batch or a snapshot chunk).
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;
/// Bytes of the length prefix on streams.
pub const LEN_PREFIX: usize = 4;

/// What a message is, which decides the channel it is delivered on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Kind {
    /// Raft traffic (votes, appends, heartbeats): the ordered per-peer stream.
    Raft = 1,
    /// A snapshot chunk: its own stream, so it never delays Raft heartbeats.
    Snapshot = 2,
    /// Gossip (SWIM): unreliable datagrams.
    Gossip = 3,
    /// A request (join, control call) on a bidirectional stream.
    Request = 4,
    /// The response to a request.
    Response = 5,
}

impl Kind {
    /// The kind for a wire byte, if known.
    pub fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Raft,
            2 => Kind::Snapshot,
            3 => Kind::Gossip,
            4 => Kind::Request,
            5 => Kind::Response,
            _ => return None,
        })
    }
}

/// A decoded message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// What it is.
    pub kind: Kind,
    /// The payload, opaque to the transport.
    pub body: Vec<u8>,
}

/// Why bytes from the network were rejected. Each is counted by the transport; none panics.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum FrameError {
    /// The announced length exceeds the limit: refused before allocating.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes ended inside a frame.
    #[error("truncated frame: expected {expected} bytes, got {got}")]
    Truncated {
        /// Bytes the frame needs.
        expected: usize,
        /// Bytes available.
        got: usize,
    },
    /// A version this build does not speak.
    #[error("unsupported envelope version {0} (this node speaks {VERSION})")]
    UnknownVersion(u16),
    /// A kind this build does not know.
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// The envelope itself does not decode.
    #[error("malformed envelope: {0}")]
    Malformed(String),
}

#[derive(Serialize, Deserialize)]
struct WireEnvelope<'a> {
    version: u16,
    kind: u8,
    #[serde(borrow)]
    body: &'a [u8],
}

/// Encodes an envelope (without a length prefix).
pub fn encode(kind: Kind, body: &[u8]) -> Vec<u8> {
    let env = WireEnvelope {
        version: VERSION,
        kind: kind as u8,
        body,
    };
    postcard::to_stdvec(&env).expect("encoding into a Vec cannot fail")
}

/// Decodes an envelope, checking its size against `max` first.
pub fn decode(bytes: &[u8], max: usize) -> Result<Envelope, FrameError> {
    if bytes.len() > max {
        return Err(FrameError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    let (env, rest): (WireEnvelope, &[u8]) =
        postcard::take_from_bytes(bytes).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if env.version != VERSION {
        return Err(FrameError::UnknownVersion(env.version));
    }
    let kind = Kind::from_u8(env.kind).ok_or(FrameError::UnknownKind(env.kind))?;
    if !rest.is_empty() {
        return Err(FrameError::Malformed(format!(
            "{} trailing bytes after the envelope",
            rest.len()
        )));
    }
    Ok(Envelope {
        kind,
        body: env.body.to_vec(),
    })
}

/// Appends a length-prefixed frame to `out` (the body is copied once).
pub fn write_frame(out: &mut Vec<u8>, kind: Kind, body: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&[0u8; LEN_PREFIX]);
    let env = WireEnvelope {
        version: VERSION,
        kind: kind as u8,
        body,
    };
    let taken = std::mem::take(out);
    *out = postcard::to_extend(&env, taken).expect("encoding into a Vec cannot fail");
    let len = (out.len() - start - LEN_PREFIX) as u32;
    out[start..start + LEN_PREFIX].copy_from_slice(&len.to_le_bytes());
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// The bytes of a length-prefixed frame that precede the body: writing them and then the body
/// gives exactly what [`write_frame`] produces, without copying a large body.
pub fn frame_header(kind: Kind, body_len: usize) -> Vec<u8> {
    let mut env = Vec::with_capacity(16);
    put_varint(&mut env, VERSION as u64);
    env.push(kind as u8);
    put_varint(&mut env, body_len as u64);
    let mut out = Vec::with_capacity(LEN_PREFIX + env.len());
    out.extend_from_slice(&((env.len() + body_len) as u32).to_le_bytes());
    out.extend_from_slice(&env);
    out
}

/// Reads one length-prefixed frame from an async reader. `Ok(None)` at a clean end of stream.
pub async fn read_frame<R>(r: &mut R, max: usize) -> Result<Option<Envelope>, ReadError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut len = [0u8; LEN_PREFIX];
    let mut got = 0;
    while got < LEN_PREFIX {
        let n = r.read(&mut len[got..]).await.map_err(ReadError::Io)?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(ReadError::Frame(FrameError::Truncated {
                    expected: LEN_PREFIX,
                    got,
                }))
            };
        }
        got += n;
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(ReadError::Frame(FrameError::TooLarge { len, max }));
    }
    // Grow the buffer as bytes arrive: an announced length alone never costs more than 64 KiB.
    let mut buf = Vec::with_capacity(len.min(64 << 10));
    let got = r
        .take(len as u64)
        .read_to_end(&mut buf)
        .await
        .map_err(ReadError::Io)?;
    if got < len {
        return Err(ReadError::Frame(FrameError::Truncated {
            expected: len,
            got,
        }));
    }
    decode(&buf, max).map(Some).map_err(ReadError::Frame)
}

/// Reading a frame failed: bad bytes, or the stream itself.
#[derive(Debug, Error)]
pub enum ReadError {
    /// The peer sent something invalid.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The stream failed (reset, connection lost).
    #[error("stream: {0}")]
    Io(std::io::Error),
}

/// A sans-I/O frame decoder: push bytes as they arrive, pop whole frames. Used where bytes come
/// in arbitrary pieces, and by the property tests.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed (compacted lazily, so popping a frame is O(frame)).
    start: usize,
    max: usize,
}

impl FrameDecoder {
    /// A decoder accepting frames up to `max` bytes.
    pub fn new(max: usize) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            start: 0,
            max,
        }
    }

    /// Decodes every complete frame of `chunk` (after what is buffered), calling `f` for each,
    /// and buffers only the incomplete tail: whole frames are decoded straight from the chunk
    /// without being copied into the buffer first. Stops at the first error.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        mut f: impl FnMut(Envelope) -> bool,
    ) -> Result<(), FrameError> {
        let mut rest = chunk;
        if self.pending() > 0 {
            // Complete the buffered frame first, copying only the bytes it needs.
            while self.pending() > 0 && !rest.is_empty() {
                let need = self.bytes_needed().min(rest.len());
                self.push(&rest[..need]);
                rest = &rest[need..];
                let next = self.next_frame()?;
                let stop = match next {
                    Some(env) => !f(env),
                    None => rest.is_empty(),
                };
                if stop {
                    return Ok(());
                }
            }
        }
        loop {
            if rest.len() < LEN_PREFIX {
                self.push(rest);
                return Ok(());
            }
            let len = u32::from_le_bytes(rest[..LEN_PREFIX].try_into().expect("4 bytes")) as usize;
            if len > self.max {
                return Err(FrameError::TooLarge { len, max: self.max });
            }
            if rest.len() < LEN_PREFIX + len {
                self.push(rest);
                return Ok(());
            }
            let env = decode(&rest[LEN_PREFIX..LEN_PREFIX + len], self.max)?;
            rest = &rest[LEN_PREFIX + len..];
            if !f(env) {
                return Ok(());
            }
        }
    }

    /// How many more bytes the buffered partial frame needs (its prefix first).
    fn bytes_needed(&self) -> usize {
        let avail = &self.buf[self.start..];
        if avail.len() < LEN_PREFIX {
            return LEN_PREFIX - avail.len();
        }
        let len = u32::from_le_bytes(avail[..LEN_PREFIX].try_into().expect("4 bytes")) as usize;
        (LEN_PREFIX + len.min(self.max))
            .saturating_sub(avail.len())
            .max(1)
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed, or an error (after which
    /// the stream must be abandoned: framing is lost).
    pub fn next_frame(&mut self) -> Result<Option<Envelope>, FrameError> {
        let avail = &self.buf[self.start..];
        if avail.len() < LEN_PREFIX {
            return Ok(None);
        }
        let len = u32::from_le_bytes(avail[..LEN_PREFIX].try_into().expect("4 bytes")) as usize;
        if len > self.max {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        if avail.len() < LEN_PREFIX + len {
            return Ok(None);
        }
        let env = decode(&avail[LEN_PREFIX..LEN_PREFIX + len], self.max);
        self.start += LEN_PREFIX + len;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        env.map(Some)
    }

    /// Bytes buffered but not yet part of a complete frame.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_kind() {
        for k in [
            Kind::Raft,
            Kind::Snapshot,
            Kind::Gossip,
            Kind::Request,
            Kind::Response,
        ] {
            let body = vec![k as u8; 300];
            let env = decode(&encode(k, &body), DEFAULT_MAX_FRAME).unwrap();
            assert_eq!(env, Envelope { kind: k, body });
        }
    }

    #[test]
    fn unknown_version_and_kind_are_rejected() {
        let bad_version = postcard::to_stdvec(&WireEnvelope {
            version: 2,
            kind: 1,
            body: b"x",
        })
        .unwrap();
        assert_eq!(
            decode(&bad_version, 1024),
            Err(FrameError::UnknownVersion(2))
        );
        let bad_kind = postcard::to_stdvec(&WireEnvelope {
            version: VERSION,
            kind: 99,
            body: b"x",
        })
        .unwrap();
        assert_eq!(decode(&bad_kind, 1024), Err(FrameError::UnknownKind(99)));
    }

    #[test]
    fn oversized_frames_are_refused_before_allocation() {
        let mut d = FrameDecoder::new(1024);
        // Announces 4 GiB; only the 4-byte prefix is buffered and nothing is allocated for it.
        d.push(&u32::MAX.to_le_bytes());
        assert_eq!(
            d.next_frame(),
            Err(FrameError::TooLarge {
                len: u32::MAX as usize,
                max: 1024
            })
        );
    }

    #[test]
    fn decoder_reassembles_frames_split_anywhere() {
        let mut stream = Vec::new();
        for i in 0..50u8 {
            write_frame(&mut stream, Kind::Raft, &vec![i; i as usize * 7]);
        }
        for step in [1usize, 3, 7, 64, 1000] {
            let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
            let mut out = Vec::new();
            for chunk in stream.chunks(step) {
                d.push(chunk);
                while let Some(env) = d.next_frame().unwrap() {
                    out.push(env);
                }
            }
            assert_eq!(out.len(), 50);
            assert!(out
                .iter()
                .enumerate()
                .all(|(i, e)| e.body == vec![i as u8; i * 7]));
            assert_eq!(d.pending(), 0);
        }
    }

    #[test]
    fn frame_header_plus_body_is_the_frame() {
        for len in [0usize, 1, 127, 128, 300, 16_383, 16_384, 70_000, 3 << 20] {
            let body = vec![0x42u8; len];
            let mut framed = Vec::new();
            write_frame(&mut framed, Kind::Snapshot, &body);
            let mut split = frame_header(Kind::Snapshot, len);
            split.extend_from_slice(&body);
            assert_eq!(framed, split, "body of {len} bytes");
        }
    }

    #[test]
    fn feed_matches_push_for_any_chunking() {
        let mut stream = Vec::new();
        for i in 0..40u8 {
            write_frame(
                &mut stream,
                Kind::Snapshot,
                &vec![i; (i as usize * 37) % 900],
            );
        }
        for step in [1usize, 2, 5, 13, 100, 4096, stream.len()] {
            let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
            let mut out = Vec::new();
            for chunk in stream.chunks(step) {
                d.feed(chunk, |e| {
                    out.push(e);
                    true
                })
                .unwrap();
            }
            assert_eq!(out.len(), 40, "step {step}");
            for (i, e) in out.iter().enumerate() {
                assert_eq!(e.body, vec![i as u8; (i * 37) % 900]);
            }
            assert_eq!(d.pending(), 0);
        }
        // An oversized announcement is refused from a fresh chunk too.
        let mut d = FrameDecoder::new(16);
        assert!(matches!(
            d.feed(&100u32.to_le_bytes(), |_| true),
            Err(FrameError::TooLarge { len: 100, max: 16 })
        ));
    }

    #[tokio::test]
    async fn read_frame_reports_truncation_and_clean_eof() {
        let mut stream = Vec::new();
        write_frame(&mut stream, Kind::Gossip, b"hello");
        let mut r = &stream[..];
        assert_eq!(
            read_frame(&mut r, 1024).await.unwrap().unwrap().body,
            b"hello"
        );
        assert!(read_frame(&mut r, 1024).await.unwrap().is_none());
        let cut = &stream[..stream.len() - 2];
        let mut r = cut;
        assert!(matches!(
            read_frame(&mut r, 1024).await,
            Err(ReadError::Frame(FrameError::Truncated { .. }))
        ));
    }
}
