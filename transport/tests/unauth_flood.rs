//! A flood of peers without a certificate (join-style connections) on loopback: oversized
//! frames on request and unidirectional streams, and requests that never finish. The node's
//! memory stays bounded, every refusal is counted, and two members keep exchanging Raft frames
//! and requests throughout.
//!
//! The flood comes from a child process (this same test binary, re-run in the flooder's role),
//! so that the memory measured here is the nodes' alone, not the flooders' own buffers.

use shoal_transport::net::{self, Inbound, Transport, TransportConfig};
use shoal_transport::pki::{
    self, ClusterCa, ClusterId, Denylist, NodeId, NodeIdentity, NodeKey, Role, DEFAULT_VALIDITY,
};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(120);
/// Source addresses the flood comes from (127.0.0.2 and up: all loopback on Linux).
const FLOOD_IPS: u8 = 16;
/// Connections per source address.
const CONNS_PER_IP: usize = 16;
/// What the oversized frames announce: the largest snapshot frame.
const ANNOUNCED: u32 = 64 << 20;
/// Bytes sent after the announcement on each oversized stream (if the node lets them in).
const SENT_AFTER_PREFIX: usize = 1 << 20;
/// The bound on the node's memory growth during the flood.
const MAX_GROWTH_KIB: u64 = 64 << 10;
/// This test's name, to re-run it as the flooder.
const TEST_NAME: &str = "a_flood_without_certificates_is_refused_cheaply_while_members_carry_on";
/// Set (to "<address> <CA digest in hex>") in the flooder's environment.
const FLOOD_ENV: &str = "SHOAL_UNAUTH_FLOOD_TARGET";
/// What the flooder prints when one connection has sent its attack.
const SENT_LINE: &str = "shoal-flood: sent";

fn identity(ca: &ClusterCa, id: NodeId) -> NodeIdentity {
    let key = NodeKey::generate().unwrap();
    let csr = key.csr_der(id).unwrap();
    let cert = ca
        .issue(&csr, id, Role::Manager, DEFAULT_VALIDITY, SystemTime::now())
        .unwrap();
    NodeIdentity::new(cert, key).unwrap()
}

fn start(ca: &ClusterCa, id: NodeId, cfg: TransportConfig) -> (Transport, Inbound, SocketAddr) {
    let ident = identity(ca, id);
    let denylist = Denylist::new();
    let (server, client) = net::quic_configs(&ident, ca.cert_der(), denylist.clone()).unwrap();
    let endpoint = net::udp_endpoint("127.0.0.1:0".parse().unwrap(), Some(server)).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let (t, inbound) = Transport::start(endpoint, client, id, ca.cluster_id(), denylist, cfg);
    (t, inbound, addr)
}

/// The process's resident and peak resident memory, in KiB.
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/self/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    timeout(WAIT, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

/// Writes `n` bytes of filler in small pieces (so the flooder itself buffers little); stops at
/// the first error (the node stopped the stream or closed the connection).
async fn write_filler(send: &mut quinn::SendStream, n: usize) {
    let piece = [0x5au8; 16 << 10];
    let mut left = n;
    while left > 0 {
        let k = left.min(piece.len());
        if send.write_all(&piece[..k]).await.is_err() {
            return;
        }
        left -= k;
    }
}

/// One hostile connection without a certificate: an oversized frame on a request stream and on
/// a unidirectional stream, and a request that never ends. Reports when everything is sent and
/// holds the connection open until `end`.
async fn attack(
    ep: quinn::Endpoint,
    ca_digest: [u8; 32],
    addr: SocketAddr,
    mut end: watch::Receiver<bool>,
) {
    let run = async {
        let cfg = net::join_quic_config(ca_digest).unwrap();
        let Ok(conn) = ep
            .connect_with(cfg, addr, pki::JOIN_SERVER_NAME)
            .unwrap()
            .await
        else {
            return None;
        };
        // A request that announces the largest snapshot frame, then keeps sending (and never
        // finishes the stream, so whatever the node buffered of it stays buffered).
        let oversized_bi = async {
            let (mut send, recv) = conn.open_bi().await.ok()?;
            if send.write_all(&ANNOUNCED.to_le_bytes()).await.is_ok() {
                write_filler(&mut send, SENT_AFTER_PREFIX).await;
            }
            Some((send, recv))
        };
        // The same on a unidirectional stream, if the node grants one at all.
        let oversized_uni = async {
            let mut send = timeout(Duration::from_secs(2), conn.open_uni())
                .await
                .ok()?
                .ok()?;
            if send.write_all(&ANNOUNCED.to_le_bytes()).await.is_ok() {
                write_filler(&mut send, SENT_AFTER_PREFIX).await;
            }
            Some(send)
        };
        // A small request announced, begun, never finished.
        let slowloris = async {
            let (mut send, recv) = conn.open_bi().await.ok()?;
            send.write_all(&60_000u32.to_le_bytes()).await.ok()?;
            send.write_all(&[1u8; 100]).await.ok()?;
            Some((send, recv))
        };
        let held = tokio::join!(oversized_bi, oversized_uni, slowloris);
        Some((conn, held))
    };
    let kept = run.await;
    println!("{SENT_LINE}");
    let _ = end.wait_for(|e| *e).await;
    drop(kept);
}

/// The flooder's role: every connection of the flood, held until stdin closes.
async fn flood(target: &str) {
    let (addr, digest) = target.split_once(' ').unwrap();
    let addr: SocketAddr = addr.parse().unwrap();
    let mut ca_digest = [0u8; 32];
    for (i, b) in ca_digest.iter_mut().enumerate() {
        *b = u8::from_str_radix(&digest[2 * i..2 * i + 2], 16).unwrap();
    }
    let (end_tx, end_rx) = watch::channel(false);
    let mut conns = Vec::new();
    for k in 0..FLOOD_IPS {
        let ep = net::udp_endpoint(format!("127.0.0.{}:0", k + 2).parse().unwrap(), None).unwrap();
        for _ in 0..CONNS_PER_IP {
            conns.push(tokio::spawn(attack(
                ep.clone(),
                ca_digest,
                addr,
                end_rx.clone(),
            )));
        }
    }
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).unwrap_or(0) > 0 {}
    })
    .await
    .unwrap();
    end_tx.send(true).unwrap();
    for c in conns {
        c.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_without_certificates_is_refused_cheaply_while_members_carry_on() {
    if let Ok(target) = std::env::var(FLOOD_ENV) {
        return flood(&target).await;
    }
    let ca = ClusterCa::generate(ClusterId::random()).unwrap();
    let cfg = TransportConfig {
        max_unauth_conns_per_ip: 8,
        max_unauth_conns: 64,
        unauth_request_timeout: Duration::from_secs(2),
        unauth_conn_lifetime: Duration::from_secs(600),
        ..TransportConfig::default()
    };
    let (t1, mut in1, addr1) = start(&ca, 1, cfg.clone());
    let (t2, _in2, addr2) = start(&ca, 2, cfg);
    t1.set_peer_addr(2, addr2);
    t2.set_peer_addr(1, addr1);

    // Node 1 answers requests and counts the Raft frames it gets.
    let raft_seen = Arc::new(AtomicU64::new(0));
    {
        let raft_seen = raft_seen.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    m = in1.raft.recv() => match m {
                        Some((2, _)) => { raft_seen.fetch_add(1, Ordering::Relaxed); }
                        Some(_) => {}
                        None => return,
                    },
                    r = in1.requests.recv() => match r {
                        Some(req) => {
                            let mut body = req.body.clone();
                            body.reverse();
                            req.respond(body);
                        }
                        None => return,
                    },
                }
            }
        });
    }
    // One member round trip, so that what exists without the flood exists before measuring.
    let round_trip = |i: u32| {
        let t2 = t2.clone();
        let raft_seen = raft_seen.clone();
        async move {
            let before = raft_seen.load(Ordering::Relaxed);
            assert!(t2.send_raft(1, i.to_le_bytes().to_vec()));
            let body = format!("member request {i}");
            let resp = t2
                .request(1, body.as_bytes())
                .await
                .unwrap_or_else(|e| panic!("member request {i} failed: {e}"));
            let mut expected = body.into_bytes();
            expected.reverse();
            assert_eq!(resp, expected);
            wait_for("a member's Raft frame", || {
                raft_seen.load(Ordering::Relaxed) > before
            })
            .await;
        }
    };
    round_trip(0).await;
    let (rss_before, hwm_before) = memory_kib();

    // The flood: 16 source addresses, 16 connections each, from a child process.
    let digest: String = ca.digest().iter().map(|b| format!("{b:02x}")).collect();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
        .env(FLOOD_ENV, format!("{addr1} {digest}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let total = FLOOD_IPS as usize * CONNS_PER_IP;
    let sent = Arc::new(AtomicUsize::new(0));
    let reader = {
        let sent = sent.clone();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                // The harness may print the test's name on the same line first.
                if line.unwrap().ends_with(SENT_LINE) {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    // Members keep exchanging Raft frames and requests throughout, while the gauges are sampled.
    let mut rounds_during = 0u32;
    let mut max_conns = 0u64;
    let mut max_buffered = 0u64;
    let s = t1.stats();
    let mut i = 1;
    loop {
        round_trip(i).await;
        i += 1;
        max_conns = max_conns.max(s.unauth_conns.load(Ordering::Relaxed));
        max_buffered = max_buffered.max(s.unauth_buffered.load(Ordering::Relaxed));
        // Go on until the whole flood is in and every kind of refusal has happened, and then
        // for a few more round trips.
        if sent.load(Ordering::Relaxed) == total && s.unauth_deadline.load(Ordering::Relaxed) > 0 {
            rounds_during += 1;
            if rounds_during >= 5 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (rss_during, hwm_during) = memory_kib();
    let growth = hwm_during.saturating_sub(rss_before.min(hwm_before));
    eprintln!(
        "flood of {total} connections: RSS {rss_before} KiB before, {rss_during} KiB after, peak \
         {hwm_during} KiB (growth {growth} KiB); refused: conn_limit {} oversized {} \
         unauthenticated {} deadline {}; max unauth_conns {max_conns}, max unauth_buffered \
         {max_buffered} B; member round trips {i}",
        s.unauth_conn_limit.load(Ordering::Relaxed),
        s.oversized.load(Ordering::Relaxed),
        s.unauthenticated.load(Ordering::Relaxed),
        s.unauth_deadline.load(Ordering::Relaxed),
    );

    // (a) Memory stays bounded, whatever the flood announced and sent.
    assert!(
        growth < MAX_GROWTH_KIB,
        "memory grew by {growth} KiB during the flood (bound {MAX_GROWTH_KIB} KiB)"
    );
    assert!(
        max_conns <= 64,
        "{max_conns} connections without a certificate at once"
    );
    assert!(
        max_buffered <= 64 * 4 * net::MAX_UNAUTHENTICATED_REQUEST as u64,
        "{max_buffered} bytes held for peers without a certificate"
    );
    // (b) Every refusal is counted: the caps (16 × 16 connections for 64 slots, 8 per address),
    // the oversized frames refused at their prefix, the requests that never ended.
    assert!(
        s.unauth_conn_limit.load(Ordering::Relaxed) >= (total - 64) as u64 / 2,
        "connections refused by the caps: {}",
        s.unauth_conn_limit.load(Ordering::Relaxed)
    );
    assert!(s.oversized.load(Ordering::Relaxed) > 0);
    assert!(s.unauth_deadline.load(Ordering::Relaxed) > 0);
    // Nothing of the flood reached the application.
    assert_eq!(s.received.load(Ordering::Relaxed), 2 * i as u64);

    // The flood ends (the flooder exits when its stdin closes): its slots are freed, and
    // members still talk.
    drop(child.stdin.take());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "the flooder failed: {status}");
    reader.join().unwrap();
    wait_for("the flood's connections to close", || {
        s.unauth_conns.load(Ordering::Relaxed) == 0
    })
    .await;
    wait_for("the flood's bytes to be released", || {
        s.unauth_buffered.load(Ordering::Relaxed) == 0
    })
    .await;
    round_trip(i).await;
}
