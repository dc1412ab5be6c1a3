//! Property tests of every decoder that reads remote or user input: random and mutated bytes
//! never panic, they decode or return an error; valid messages survive encode → decode.

use std::str::FromStr;
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

use proptest::prelude::*;
use shoal_transport::frame::{self, Envelope, FrameDecoder, Kind, DEFAULT_MAX_FRAME, LEN_PREFIX};
use shoal_transport::join::{
    validate_hostname, JoinAuthority, JoinRequest, JoinResponse, MAX_CERT_LEN, MAX_CSR_LEN,
    MAX_REASON_LEN,
};
use shoal_transport::pki::{
    self, ClusterCa, ClusterId, JoinToken, NodeCertificate, NodeKey, Role, DEFAULT_VALIDITY,
};

const KINDS: [Kind; 5] = [
    Kind::Raft,
    Kind::Snapshot,
    Kind::Gossip,
    Kind::Request,
    Kind::Response,
];

fn kind() -> impl Strategy<Value = Kind> {
    prop::sample::select(KINDS.to_vec())
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Manager), Just(Role::Worker)]
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..=max)
}

/// Chunk sizes used in turn (cycling) to cut a byte stream into pieces.
fn chunking() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..=64, 1..16)
}

/// Hostnames that [`validate_hostname`] accepts.
fn hostname() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9][a-zA-Z0-9_-]{0,30}(\\.[a-zA-Z0-9_-]{1,30}){0,4}"
}

/// Feeds `stream` to a decoder in pieces of the `chunks` sizes (cycling) and returns the
/// frames decoded before the first error or the end of the input.
fn decode_chunked(stream: &[u8], chunks: &[usize], max: usize) -> (Vec<Envelope>, bool) {
    let mut decoder = FrameDecoder::new(max);
    let mut frames = Vec::new();
    let mut rest = stream;
    let mut sizes = chunks.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().expect("non-empty chunking")).min(rest.len());
        let (piece, tail) = rest.split_at(n);
        rest = tail;
        decoder.push(piece);
        loop {
            match decoder.next_frame() {
                Ok(Some(env)) => {
                    assert!(env.body.len() <= max);
                    frames.push(env);
                }
                Ok(None) => break,
                // Framing is lost: the stream is abandoned.
                Err(_) => return (frames, true),
            }
        }
        assert!(decoder.pending() <= stream.len());
    }
    (frames, false)
}

/// A valid node certificate (made once: key generation is slow).
fn node_cert_der() -> &'static [u8] {
    static CERT: OnceLock<Vec<u8>> = OnceLock::new();
    CERT.get_or_init(|| {
        let ca = ClusterCa::generate(ClusterId::random()).unwrap();
        let key = NodeKey::generate().unwrap();
        ca.issue(
            &key.csr_der(7).unwrap(),
            7,
            Role::Worker,
            DEFAULT_VALIDITY,
            SystemTime::now(),
        )
        .unwrap()
        .der
    })
}

/// A valid certificate signing request (made once).
fn csr_der() -> &'static [u8] {
    static CSR: OnceLock<Vec<u8>> = OnceLock::new();
    CSR.get_or_init(|| NodeKey::generate().unwrap().csr_der(0).unwrap())
}

/// A join authority shared by the cases (made once: CA generation is slow).
fn authority() -> &'static Mutex<JoinAuthority> {
    static AUTHORITY: OnceLock<Mutex<JoinAuthority>> = OnceLock::new();
    AUTHORITY.get_or_init(|| {
        let ca = ClusterCa::generate(ClusterId::random()).unwrap();
        Mutex::new(JoinAuthority::with_new_tokens(ca))
    })
}

/// One change to a byte string.
#[derive(Clone, Debug)]
enum Mutation {
    Flip { at: usize, mask: u8 },
    Insert { at: usize, byte: u8 },
    Remove { at: usize },
    Truncate { at: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(at, mask)| Mutation::Flip { at, mask }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
        any::<usize>().prop_map(|at| Mutation::Remove { at }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
    ]
}

fn mutate(input: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut out = input.to_vec();
    for m in mutations {
        let len = out.len();
        match *m {
            Mutation::Flip { at, mask } if len > 0 => out[at % len] ^= mask,
            Mutation::Insert { at, byte } => out.insert(at % (len + 1), byte),
            Mutation::Remove { at } if len > 0 => {
                out.remove(at % len);
            }
            Mutation::Truncate { at } => out.truncate(at % (len + 1)),
            _ => {}
        }
    }
    out
}

/// Character-level mutation of a string (keeps it valid UTF-8).
fn mutate_str(input: &str, mutations: &[(usize, u8, char)]) -> String {
    let mut chars: Vec<char> = input.chars().collect();
    for &(at, op, c) in mutations {
        let len = chars.len();
        match op % 4 {
            0 if len > 0 => chars[at % len] = c,
            1 => chars.insert(at % (len + 1), c),
            2 if len > 0 => {
                chars.remove(at % len);
            }
            3 => chars.truncate(at % (len + 1)),
            _ => {}
        }
    }
    chars.into_iter().collect()
}

proptest! {
    // --- frame ---------------------------------------------------------------------------------

    #[test]
    fn frame_decode_random_bytes(input in bytes(512), max in 0usize..600) {
        match frame::decode(&input, max) {
            Ok(env) => {
                prop_assert!(input.len() <= max);
                prop_assert!(env.body.len() <= input.len());
                let again = frame::decode(&frame::encode(env.kind, &env.body), usize::MAX);
                prop_assert_eq!(again, Ok(env));
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn frame_round_trip(kind in kind(), body in bytes(2048)) {
        let encoded = frame::encode(kind, &body);
        let decoded = frame::decode(&encoded, DEFAULT_MAX_FRAME);
        prop_assert_eq!(decoded, Ok(Envelope { kind, body: body.clone() }));
        // The limit is inclusive and checked first.
        prop_assert!(frame::decode(&encoded, encoded.len()).is_ok());
        let too_small = frame::decode(&encoded, encoded.len() - 1);
        prop_assert!(
            matches!(too_small, Err(frame::FrameError::TooLarge { .. })),
            "{:?}",
            too_small
        );
    }

    #[test]
    fn frame_decoder_random_bytes_random_chunks(
        input in bytes(2048),
        chunks in chunking(),
        max in 0usize..1024,
    ) {
        decode_chunked(&input, &chunks, max);
    }

    #[test]
    fn frame_decoder_huge_announced_lengths(len in any::<u32>(), tail in bytes(64), max in 0usize..4096) {
        let mut input = len.to_le_bytes().to_vec();
        input.extend_from_slice(&tail);
        let (frames, failed) = decode_chunked(&input, &[1, 3, 64], max);
        if len as usize > max {
            prop_assert!(frames.is_empty() && failed);
        }
    }

    #[test]
    fn frame_decoder_round_trip_any_chunking(
        messages in prop::collection::vec((kind(), bytes(300)), 0..20),
        chunks in chunking(),
    ) {
        let mut stream = Vec::new();
        for (kind, body) in &messages {
            frame::write_frame(&mut stream, *kind, body);
        }
        let (frames, failed) = decode_chunked(&stream, &chunks, DEFAULT_MAX_FRAME);
        prop_assert!(!failed);
        let expected: Vec<Envelope> = messages
            .into_iter()
            .map(|(kind, body)| Envelope { kind, body })
            .collect();
        prop_assert_eq!(frames, expected);
    }

    #[test]
    fn frame_decoder_valid_stream_with_one_byte_flipped(
        messages in prop::collection::vec((kind(), bytes(200)), 1..12),
        flip_at in any::<usize>(),
        mask in 1u8..=255,
        chunks in chunking(),
    ) {
        let mut stream = Vec::new();
        let mut ends = Vec::new();
        for (kind, body) in &messages {
            frame::write_frame(&mut stream, *kind, body);
            ends.push(stream.len());
        }
        let at = flip_at % stream.len();
        stream[at] ^= mask;
        let (frames, _failed) = decode_chunked(&stream, &chunks, 1024);
        // Every frame that ends before the flipped byte comes out intact, in order.
        let intact = ends.iter().filter(|&&end| end <= at).count();
        prop_assert!(frames.len() >= intact);
        for (got, (kind, body)) in frames.iter().zip(messages.iter()).take(intact) {
            prop_assert_eq!(got.kind, *kind);
            prop_assert_eq!(&got.body, body);
        }
    }

    // --- join tokens and ids -------------------------------------------------------------------

    #[test]
    fn token_random_strings(text in "\\PC{0,120}") {
        if let Ok(token) = JoinToken::from_str(&text) {
            prop_assert_eq!(JoinToken::from_str(&token.to_string()).unwrap(), token);
        }
    }

    #[test]
    fn token_random_token_shaped_strings(
        text in "(SHOAL|shoal|)-?[0-9]{0,2}-?[0-9a-fA-Fg]{0,70}-?[0-9a-fA-F-]{0,40}",
    ) {
        if let Ok(token) = JoinToken::from_str(&text) {
            prop_assert_eq!(JoinToken::from_str(&token.to_string()).unwrap(), token);
        }
    }

    #[test]
    fn token_round_trip_and_mutations(
        ca_digest in any::<[u8; 32]>(),
        secret in any::<[u8; 16]>(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<char>()), 0..4),
        hex_edit in (any::<usize>(), prop::sample::select(b"0123456789abcdefABCDEF-".to_vec())),
    ) {
        let token = JoinToken { ca_digest, secret };
        let text = token.to_string();
        prop_assert_eq!(JoinToken::from_str(&text).unwrap(), token.clone());
        prop_assert_eq!(JoinToken::from_str(&format!("  {text}\n")).unwrap(), token.clone());
        prop_assert_eq!(JoinToken::from_str(&text.to_uppercase()).unwrap(), token);

        let mutated = mutate_str(&text, &edits);
        if let Ok(parsed) = JoinToken::from_str(&mutated) {
            prop_assert_eq!(JoinToken::from_str(&parsed.to_string()).unwrap(), parsed);
        }
        // Replacing one character by a hex digit or a dash.
        let mut chars: Vec<char> = text.chars().collect();
        let at = hex_edit.0 % chars.len();
        chars[at] = char::from(hex_edit.1);
        let mutated: String = chars.into_iter().collect();
        let _ = JoinToken::from_str(&mutated);
    }

    #[test]
    fn ids_and_roles_random_strings(text in "\\PC{0,40}") {
        if let Ok(id) = pki::parse_node_id(&text) {
            prop_assert_eq!(pki::parse_node_id(&pki::node_hex(id)).unwrap(), id);
        }
        if let Ok(id) = ClusterId::from_str(&text) {
            prop_assert_eq!(ClusterId::from_str(&id.to_string()).unwrap(), id);
        }
        if let Ok(role) = Role::from_str(&text) {
            prop_assert_eq!(role.as_str(), text.as_str());
        }
    }

    // --- certificates --------------------------------------------------------------------------

    #[test]
    fn certificate_parse_random_bytes(input in bytes(1024)) {
        let _ = NodeCertificate::parse(&input);
    }

    #[test]
    fn certificate_parse_mutated(mutations in prop::collection::vec(mutation(), 1..4)) {
        let valid = node_cert_der();
        prop_assert_eq!(NodeCertificate::parse(valid).unwrap().node_id, 7);
        let input = mutate(valid, &mutations);
        if let Ok(cert) = NodeCertificate::parse(&input) {
            prop_assert_eq!(cert.der, input);
        }
    }

    // --- join messages -------------------------------------------------------------------------

    #[test]
    fn join_decoders_random_bytes(input in bytes(1024)) {
        if let Ok(req) = JoinRequest::decode(&input) {
            prop_assert!(req.validate().is_ok());
            prop_assert_eq!(JoinRequest::decode(&req.encode()).unwrap(), req);
        }
        if let Ok(resp) = JoinResponse::decode(&input) {
            prop_assert!(resp.validate().is_ok());
            prop_assert_eq!(JoinResponse::decode(&resp.encode()).unwrap(), resp);
        }
    }

    #[test]
    fn join_request_round_trip(
        secret in any::<[u8; 16]>(),
        csr_der in prop::collection::vec(any::<u8>(), 1..=MAX_CSR_LEN),
        hostname in hostname(),
        want in role(),
    ) {
        prop_assert!(validate_hostname(&hostname).is_ok(), "{}", hostname);
        let req = JoinRequest { secret, csr_der, hostname, want };
        prop_assert_eq!(JoinRequest::decode(&req.encode()).unwrap(), req);
    }

    #[test]
    fn join_request_decodes_iff_valid(
        secret in any::<[u8; 16]>(),
        csr_len in prop_oneof![0usize..=8, MAX_CSR_LEN - 2..=MAX_CSR_LEN + 2],
        hostname in prop_oneof!["\\PC{0,80}", hostname(), "[a-z.]{240,260}"],
        want in role(),
    ) {
        let req = JoinRequest { secret, csr_der: vec![0x30; csr_len], hostname, want };
        let decoded = JoinRequest::decode(&req.encode());
        prop_assert_eq!(decoded.is_ok(), req.validate().is_ok(), "{:?}", decoded);
        prop_assert_eq!(
            req.validate().is_ok(),
            validate_hostname(&req.hostname).is_ok() && (1..=MAX_CSR_LEN).contains(&csr_len)
        );
    }

    #[test]
    fn join_response_round_trip(
        node_id in any::<u64>(),
        role in role(),
        cert_der in prop::collection::vec(any::<u8>(), 1..=MAX_CERT_LEN),
        ca_der in prop::collection::vec(any::<u8>(), 1..=2048),
        reason in "\\PC{0,300}",
    ) {
        let ok = JoinResponse::Ok { node_id, role, cert_der, ca_der };
        prop_assert_eq!(JoinResponse::decode(&ok.encode()).unwrap(), ok);
        let err = JoinResponse::refused(reason.clone());
        prop_assert_eq!(&err, &JoinResponse::Err { reason });
        prop_assert_eq!(JoinResponse::decode(&err.encode()).unwrap(), err);
    }

    #[test]
    fn join_response_refusals_always_fit(reason in "\\PC{0,1500}") {
        let err = JoinResponse::refused(reason);
        let JoinResponse::Err { reason: kept } = &err else { unreachable!() };
        prop_assert!(kept.len() <= MAX_REASON_LEN);
        prop_assert_eq!(JoinResponse::decode(&err.encode()).unwrap(), err);
    }

    #[test]
    fn join_messages_mutated(
        mutations in prop::collection::vec(mutation(), 1..4),
        secret in any::<[u8; 16]>(),
        hostname in hostname(),
    ) {
        let req = JoinRequest { secret, csr_der: csr_der().to_vec(), hostname, want: Role::Worker };
        let _ = JoinRequest::decode(&mutate(&req.encode(), &mutations));
        let ok = JoinResponse::Ok {
            node_id: 9,
            role: Role::Manager,
            cert_der: node_cert_der().to_vec(),
            ca_der: vec![0x30; 300],
        };
        let _ = JoinResponse::decode(&mutate(&ok.encode(), &mutations));
        let err = JoinResponse::refused("invalid join token");
        let _ = JoinResponse::decode(&mutate(&err.encode(), &mutations));
    }

    #[test]
    fn join_authority_answers_every_input(
        input in prop_oneof![
            bytes(600),
            (any::<[u8; 16]>(), hostname(), role(), prop::collection::vec(mutation(), 0..3))
                .prop_map(|(secret, hostname, want, mutations)| {
                    let req = JoinRequest { secret, csr_der: csr_der().to_vec(), hostname, want };
                    mutate(&req.encode(), &mutations)
                }),
        ],
    ) {
        let mut authority = authority().lock().unwrap();
        let mut assigned = false;
        let response = authority.handle(&input, SystemTime::now(), || {
            assigned = true;
            42
        });
        match JoinResponse::decode(&response).unwrap() {
            // Random secrets match no token (2^-127 chance).
            JoinResponse::Ok { .. } => prop_assert!(false, "a random request was accepted"),
            JoinResponse::Err { reason } => prop_assert!(!reason.is_empty()),
        }
        prop_assert!(!assigned, "no node id for an unauthorised request");
    }
}

/// Frames are length-prefixed: the prefix constant matches what the decoder reads.
#[test]
fn frame_prefix_is_four_bytes() {
    let mut stream = Vec::new();
    frame::write_frame(&mut stream, Kind::Raft, b"x");
    let len = u32::from_le_bytes(stream[..LEN_PREFIX].try_into().unwrap()) as usize;
    assert_eq!(len + LEN_PREFIX, stream.len());
}
