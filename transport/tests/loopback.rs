//! The transport on real UDP sockets (loopback): typed channels between 2 and 5 nodes, refusal
//! of peers that are not members in good standing, and hostile input counted, not crashing.

use shoal_transport::frame::{self, Kind};
use shoal_transport::net::{self, Inbound, Transport, TransportConfig};
use shoal_transport::pki::{
    self, ClusterCa, ClusterId, Denylist, NodeId, NodeIdentity, NodeKey, Role, DEFAULT_VALIDITY,
};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(30);

fn identity(ca: &ClusterCa, id: NodeId, role: Role) -> NodeIdentity {
    let key = NodeKey::generate().unwrap();
    let csr = key.csr_der(id).unwrap();
    let cert = ca
        .issue(&csr, id, role, DEFAULT_VALIDITY, SystemTime::now())
        .unwrap();
    NodeIdentity::new(cert, key).unwrap()
}

struct Node {
    t: Transport,
    inbound: Inbound,
    addr: SocketAddr,
}

fn start(ca: &ClusterCa, ident: &NodeIdentity, denylist: Denylist, cfg: TransportConfig) -> Node {
    let (server, client) = net::quic_configs(ident, ca.cert_der(), denylist.clone()).unwrap();
    let endpoint = net::udp_endpoint("127.0.0.1:0".parse().unwrap(), Some(server)).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let (t, inbound) = Transport::start(
        endpoint,
        client,
        ident.cert.node_id,
        ca.cluster_id(),
        denylist,
        cfg,
    );
    Node { t, inbound, addr }
}

/// `n` managers of one cluster that know no address of each other yet.
fn strangers(n: u64) -> Vec<Node> {
    let ca = ClusterCa::generate(ClusterId::random()).unwrap();
    (1..=n)
        .map(|id| {
            start(
                &ca,
                &identity(&ca, id, Role::Manager),
                Denylist::new(),
                TransportConfig::default(),
            )
        })
        .collect()
}

fn cluster(n: u64) -> (ClusterCa, Vec<Node>) {
    let ca = ClusterCa::generate(ClusterId::random()).unwrap();
    let nodes: Vec<Node> = (1..=n)
        .map(|id| {
            start(
                &ca,
                &identity(&ca, id, Role::Manager),
                Denylist::new(),
                TransportConfig::default(),
            )
        })
        .collect();
    for a in &nodes {
        for (i, b) in nodes.iter().enumerate() {
            a.t.set_peer_addr(i as u64 + 1, b.addr);
        }
    }
    (ca, nodes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_exchange_ordered_raft_messages_gossip_snapshots_and_requests() {
    let (_ca, mut nodes) = cluster(2);
    for i in 0..500u32 {
        assert!(nodes[0].t.send_raft(2, i.to_le_bytes().to_vec()));
    }
    for i in 0..500u32 {
        let (from, body) = timeout(WAIT, nodes[1].inbound.raft.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(from, 1, "the sender is the certificate's node id");
        assert_eq!(body, i.to_le_bytes(), "in order");
    }
    // Snapshot chunks on their own channel.
    nodes[0].t.send_snapshot(2, vec![7u8; 100_000]);
    let (from, chunk) = timeout(WAIT, nodes[1].inbound.snapshot.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((from, chunk.len()), (1, 100_000));
    // Gossip datagrams (unreliable: retry until one arrives; the connection is up by now).
    let got = timeout(WAIT, async {
        loop {
            nodes[1].t.send_gossip(1, b"ping");
            if let Ok(Some(m)) =
                tokio::time::timeout(Duration::from_millis(100), nodes[0].inbound.gossip.recv())
                    .await
            {
                return m;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(got, (2, b"ping".to_vec()));
    // A request and its response, with the caller authenticated.
    let caller = nodes[0].t.clone();
    let server = tokio::spawn(async move {
        let req = nodes[1].inbound.requests.recv().await.unwrap();
        assert_eq!(req.from.as_ref().map(|c| c.node_id), Some(1));
        let mut body = req.body.clone();
        body.reverse();
        req.respond(body);
        nodes
    });
    let resp = timeout(WAIT, caller.request(2, b"abc"))
        .await
        .unwrap()
        .unwrap();
    let nodes = server.await.unwrap();
    assert_eq!(resp, b"cba");
    assert_eq!(nodes[1].t.stats().rejected(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_all_to_all_in_order_per_sender() {
    let (_ca, mut nodes) = cluster(5);
    for a in 1..=5u64 {
        for b in 1..=5u64 {
            if a != b {
                for i in 0..50u32 {
                    assert!(nodes[a as usize - 1].t.send_raft(
                        b,
                        [a.to_le_bytes().to_vec(), i.to_le_bytes().to_vec()].concat()
                    ));
                }
            }
        }
    }
    for (k, n) in nodes.iter_mut().enumerate() {
        let mut next = [0u32; 6];
        for _ in 0..200 {
            let (from, body) = timeout(WAIT, n.inbound.raft.recv()).await.unwrap().unwrap();
            let claimed = u64::from_le_bytes(body[..8].try_into().unwrap());
            let i = u32::from_le_bytes(body[8..].try_into().unwrap());
            assert_eq!(from, claimed);
            assert_eq!(
                i,
                next[from as usize],
                "node {} got {from}'s messages out of order",
                k + 1
            );
            next[from as usize] += 1;
        }
    }
    // Every node gossips to every other (datagrams are unreliable: resend until each has heard
    // from all four others).
    let mut heard = vec![std::collections::BTreeSet::new(); 5];
    timeout(WAIT, async {
        while heard.iter().any(|h| h.len() < 4) {
            for a in 1..=5u64 {
                for b in 1..=5u64 {
                    if a != b && !heard[b as usize - 1].contains(&a) {
                        nodes[a as usize - 1].t.send_gossip(b, &a.to_le_bytes());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            for (k, n) in nodes.iter_mut().enumerate() {
                while let Ok((from, body)) = n.inbound.gossip.try_recv() {
                    assert_eq!(body, from.to_le_bytes());
                    heard[k].insert(from);
                }
            }
        }
    })
    .await
    .expect("all gossip delivered");
}

/// Expects that nothing arrives on `rx` within a short grace period.
async fn nothing_arrives<T: std::fmt::Debug>(rx: &mut tokio::sync::mpsc::Receiver<T>) {
    let r = tokio::time::timeout(Duration::from_millis(1500), rx.recv()).await;
    assert!(r.is_err(), "unexpected delivery: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_without_a_valid_membership_are_refused() {
    let (ca, mut nodes) = cluster(1);
    let target = nodes[0].addr;
    // A node of another cluster (another CA).
    let other = ClusterCa::generate(ClusterId::random()).unwrap();
    let foreign = start(
        &other,
        &identity(&other, 7, Role::Manager),
        Denylist::new(),
        TransportConfig::default(),
    );
    foreign.t.set_peer_addr(1, target);
    foreign.t.send_raft(1, b"from another cluster".to_vec());
    // An expired certificate of our own CA.
    let key = NodeKey::generate().unwrap();
    let past = SystemTime::now() - Duration::from_secs(3600);
    let cert = ca
        .issue_with_validity(
            &key.csr_der(8).unwrap(),
            8,
            Role::Worker,
            past - Duration::from_secs(3600),
            past,
        )
        .unwrap();
    let expired = start(
        &ca,
        &NodeIdentity::new(cert, key).unwrap(),
        Denylist::new(),
        TransportConfig::default(),
    );
    expired.t.set_peer_addr(1, target);
    expired.t.send_raft(1, b"expired".to_vec());
    // A node removed from the cluster: denied.
    nodes[0].t.deny(9);
    let denied = start(
        &ca,
        &identity(&ca, 9, Role::Worker),
        Denylist::new(),
        TransportConfig::default(),
    );
    denied.t.set_peer_addr(1, target);
    denied.t.send_raft(1, b"denied".to_vec());
    nothing_arrives(&mut nodes[0].inbound.raft).await;
    // The foreign node cannot even verify our certificate. (The expired and denied ones finish
    // their side of the TLS 1.3 handshake before the server refuses their certificate, so they
    // see a connection that is closed at once rather than a failed connect.)
    assert!(foreign.t.stats().connect_failures.load(Ordering::Relaxed) > 0);
    // A member in good standing still gets through.
    let ok = start(
        &ca,
        &identity(&ca, 10, Role::Worker),
        Denylist::new(),
        TransportConfig::default(),
    );
    ok.t.set_peer_addr(1, target);
    ok.t.send_raft(1, b"member".to_vec());
    let (from, body) = timeout(WAIT, nodes[0].inbound.raft.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((from, body.as_slice()), (10, &b"member"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denying_a_connected_node_cuts_it_off() {
    let (_ca, mut nodes) = cluster(2);
    nodes[1].t.send_raft(1, b"before".to_vec());
    let (from, _) = timeout(WAIT, nodes[0].inbound.raft.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(from, 2);
    nodes[0].t.deny(2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..20 {
        nodes[1].t.send_raft(1, b"after".to_vec());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nothing_arrives(&mut nodes[0].inbound.raft).await;
}

/// An authenticated raw quinn connection to `addr`, for sending hand-made bytes.
async fn raw_connection(ca: &ClusterCa, id: NodeId, addr: SocketAddr) -> quinn::Connection {
    let ident = identity(ca, id, Role::Worker);
    let (_, client) = net::quic_configs(&ident, ca.cert_der(), Denylist::new()).unwrap();
    let ep = net::udp_endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap();
    ep.connect_with(client, addr, &pki::server_name(1, ca.cluster_id()))
        .unwrap()
        .await
        .unwrap()
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    timeout(WAIT, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bytes_are_dropped_and_counted_and_the_node_keeps_working() {
    let (ca, mut nodes) = cluster(1);
    let addr = nodes[0].addr;
    let stats = nodes[0].t.clone();
    let s = || stats.stats();
    let conn = raw_connection(&ca, 5, addr).await;
    // Oversized: a frame announcing 4 GiB.
    let mut st = conn.open_uni().await.unwrap();
    st.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
    let _ = st.finish();
    wait_for("oversized", || s().oversized.load(Ordering::Relaxed) == 1).await;
    // Truncated: 100 bytes announced, 10 sent.
    let mut st = conn.open_uni().await.unwrap();
    st.write_all(&100u32.to_le_bytes()).await.unwrap();
    st.write_all(&[0u8; 10]).await.unwrap();
    let _ = st.finish();
    wait_for("truncated", || s().truncated.load(Ordering::Relaxed) == 1).await;
    // Unknown version: envelope {version 9, kind 1, body "B"} in postcard.
    let env = [9u8, 1, 1, b'B'];
    let mut st = conn.open_uni().await.unwrap();
    st.write_all(&(env.len() as u32).to_le_bytes())
        .await
        .unwrap();
    st.write_all(&env).await.unwrap();
    let _ = st.finish();
    wait_for("unknown version", || {
        s().unknown_version.load(Ordering::Relaxed) == 1
    })
    .await;
    // Unknown kind.
    let env = [frame::VERSION as u8, 77, 1, b'B'];
    let mut st = conn.open_uni().await.unwrap();
    st.write_all(&(env.len() as u32).to_le_bytes())
        .await
        .unwrap();
    st.write_all(&env).await.unwrap();
    let _ = st.finish();
    wait_for("unknown kind", || {
        s().unknown_kind.load(Ordering::Relaxed) == 1
    })
    .await;
    // Garbage datagrams (each is refused as malformed or as an unknown version or kind).
    let before = s().rejected();
    for i in 0..20u8 {
        let _ = conn.send_datagram(vec![0xff, i, 0xee, 0x01, 0x02].into());
    }
    wait_for("garbage datagrams", || s().rejected() > before).await;
    // A good frame on the same connection is still delivered.
    let mut st = conn.open_uni().await.unwrap();
    let mut buf = Vec::new();
    frame::write_frame(&mut buf, Kind::Raft, b"still fine");
    st.write_all(&buf).await.unwrap();
    let _ = st.finish();
    let (from, body) = timeout(WAIT, nodes[0].inbound.raft.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((from, body.as_slice()), (5, &b"still fine"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_certificate_may_only_make_requests() {
    let (ca, mut nodes) = cluster(1);
    let addr = nodes[0].addr;
    let ep = net::udp_endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap();
    let cfg = net::join_quic_config(ca.digest()).unwrap();
    let conn = ep
        .connect_with(cfg, addr, pki::JOIN_SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    // No unidirectional stream can be opened at all: the node grants it no credit.
    let mut open = Box::pin(conn.open_uni());
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    assert!(open.as_mut().poll(&mut cx).is_pending());
    // A datagram is refused, counted, and ends the connection.
    conn.send_datagram(frame::encode(Kind::Gossip, b"gossip").into())
        .unwrap();
    let t = nodes[0].t.clone();
    wait_for("unauthenticated", || {
        t.stats().unauthenticated.load(Ordering::Relaxed) == 1
    })
    .await;
    let reason = timeout(WAIT, conn.closed()).await.unwrap();
    assert!(
        matches!(reason, quinn::ConnectionError::ApplicationClosed(_)),
        "{reason:?}"
    );
    assert!(open.await.is_err(), "the connection is gone");
    nothing_arrives(&mut nodes[0].inbound.gossip).await;
    // But a request reaches the request channel, marked as unauthenticated.
    let req_task = tokio::spawn(async move {
        let req = nodes[0].inbound.requests.recv().await.unwrap();
        assert!(req.from.is_none());
        req.respond(b"welcome".to_vec());
    });
    let cfg = net::join_quic_config(ca.digest()).unwrap();
    let resp = Transport::request_once(&ep, cfg, addr, pki::JOIN_SERVER_NAME, b"join", WAIT)
        .await
        .unwrap();
    assert_eq!(resp, b"welcome");
    req_task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_peer_never_blocks_sends_to_the_others() {
    let (_ca, mut nodes) = cluster(2);
    // Node 99's address has nobody behind it.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    nodes[0].t.set_peer_addr(99, dead_addr);
    // 5 MB for the dead peer: the queue (4096 messages) plus one batch being written (1 MiB)
    // bound what it holds; the rest is refused at once.
    let mut refused = 0;
    for i in 0..50_000u32 {
        let mut m = vec![0u8; 100];
        m[..4].copy_from_slice(&i.to_le_bytes());
        if !nodes[0].t.send_raft(99, m) {
            refused += 1;
        }
    }
    assert!(
        refused > 30_000,
        "the dead peer's queue is bounded ({refused} refused)"
    );
    assert!(nodes[0].t.stats().queue_full.load(Ordering::Relaxed) > 0);
    assert!(nodes[0].t.send_raft(2, b"live".to_vec()));
    let (from, body) = timeout(WAIT, nodes[1].inbound.raft.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((from, body.as_slice()), (1, &b"live"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_snapshot_never_holds_up_raft_messages() {
    let (_ca, mut nodes) = cluster(2);
    // Warm the connection.
    nodes[0].t.send_raft(2, b"hello".to_vec());
    timeout(WAIT, nodes[1].inbound.raft.recv())
        .await
        .unwrap()
        .unwrap();
    let chunks = 12;
    for _ in 0..chunks {
        assert!(nodes[0].t.send_snapshot(2, vec![0xab; 4 << 20]));
    }
    for i in 0..10u32 {
        nodes[0].t.send_raft(2, i.to_le_bytes().to_vec());
    }
    // All ten Raft messages arrive before the whole 48 MiB snapshot has.
    let mut snapshot_chunks = 0;
    let mut raft = 0;
    let Inbound {
        raft: raft_rx,
        snapshot: snap_rx,
        ..
    } = &mut nodes[1].inbound;
    while raft < 10 {
        tokio::select! {
            biased;
            m = raft_rx.recv() => { m.unwrap(); raft += 1; }
            c = snap_rx.recv() => { c.unwrap(); snapshot_chunks += 1; }
        }
    }
    assert!(
        snapshot_chunks < chunks,
        "Raft waited for the snapshot ({snapshot_chunks} chunks first)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cache_is_bounded_and_idle_peers_are_dropped() {
    let ca = ClusterCa::generate(ClusterId::random()).unwrap();
    let small = TransportConfig {
        max_peers: 2,
        idle_timeout: Duration::from_millis(300),
        ..TransportConfig::default()
    };
    let mut hub = start(
        &ca,
        &identity(&ca, 1, Role::Manager),
        Denylist::new(),
        small,
    );
    let mut others: Vec<Node> = (2..=4)
        .map(|id| {
            start(
                &ca,
                &identity(&ca, id, Role::Worker),
                Denylist::new(),
                TransportConfig::default(),
            )
        })
        .collect();
    for (k, o) in others.iter().enumerate() {
        hub.t.set_peer_addr(k as u64 + 2, o.addr);
    }
    // Three peers through a cache of two: the least recently used is evicted, and every message
    // still arrives (an evicted peer is simply reconnected).
    for round in 0..3u32 {
        for (k, o) in others.iter_mut().enumerate() {
            let id = k as u64 + 2;
            assert!(hub.t.send_raft(id, round.to_le_bytes().to_vec()));
            let (from, body) = timeout(WAIT, o.inbound.raft.recv()).await.unwrap().unwrap();
            assert_eq!((from, body), (1, round.to_le_bytes().to_vec()));
            assert!(hub.t.cached_peers() <= 2, "cache bound exceeded");
        }
    }
    // Idle peers are dropped after the idle timeout…
    let t = hub.t.clone();
    wait_for("idle peers dropped", || t.cached_peers() == 0).await;
    // …and come back on the next send.
    assert!(hub.t.send_raft(3, b"again".to_vec()));
    let (from, body) = timeout(WAIT, others[1].inbound.raft.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((from, body.as_slice()), (1, &b"again"[..]));
    let _ = &mut hub;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_used_for_new_connections() {
    let (ca, mut nodes) = cluster(2);
    let caller = nodes[1].t.clone();
    let first = tokio::spawn(async move {
        let r = caller.request(1, b"who am I").await.unwrap();
        (caller, r)
    });
    let req = timeout(WAIT, nodes[0].inbound.requests.recv())
        .await
        .unwrap()
        .unwrap();
    let old_expiry = req.from.as_ref().unwrap().not_after;
    req.respond(Vec::new());
    let (caller, _) = first.await.unwrap();
    // Node 2 renews: a certificate valid 30 days longer.
    let key = NodeKey::generate().unwrap();
    let cert = ca
        .issue(
            &key.csr_der(2).unwrap(),
            2,
            Role::Manager,
            DEFAULT_VALIDITY + Duration::from_secs(30 * 86_400),
            SystemTime::now(),
        )
        .unwrap();
    let renewed = NodeIdentity::new(cert, key).unwrap();
    caller.set_identity(&renewed, ca.cert_der()).unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d = done.clone();
    let second = tokio::spawn(async move {
        // The reconnect may race the first attempts: keep asking until the server has seen the
        // new certificate.
        while !d.load(Ordering::Relaxed) {
            let _ = caller.request(1, b"again").await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let new_expiry = timeout(WAIT, async {
        loop {
            let req = nodes[0].inbound.requests.recv().await.unwrap();
            let exp = req.from.as_ref().unwrap().not_after;
            req.respond(Vec::new());
            if exp != old_expiry {
                return exp;
            }
        }
    })
    .await
    .unwrap();
    done.store(true, Ordering::Relaxed);
    assert!(new_expiry > old_expiry);
    // Answer whatever is still in flight so the caller's loop ends.
    while !second.is_finished() {
        if let Ok(Some(req)) =
            tokio::time::timeout(Duration::from_millis(50), nodes[0].inbound.requests.recv()).await
        {
            req.respond(Vec::new());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_the_connections_and_frees_the_port() {
    let (_ca, mut nodes) = cluster(2);
    // Connected both ways.
    assert!(nodes[0].t.send_raft(2, b"hello".to_vec()));
    let got = timeout(WAIT, nodes[1].inbound.raft.recv()).await.unwrap();
    assert_eq!(got, Some((1, b"hello".to_vec())));
    let Node { t, inbound, addr } = nodes.remove(0);
    t.shutdown(Duration::from_secs(5)).await;
    assert!(t.is_shut_down());
    // Nothing goes out any more.
    assert!(!t.send_raft(2, b"after".to_vec()));
    drop(t);
    drop(inbound);
    // The UDP port is released: a new endpoint binds the same address.
    let rebound = timeout(WAIT, async {
        loop {
            match std::net::UdpSocket::bind(addr) {
                Ok(s) => return s,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .expect("the port is released");
    drop(rebound);
}

/// A connection without a certificate to `addr`, made like a joining node's.
async fn join_connection(ca: &ClusterCa, addr: SocketAddr) -> quinn::Connection {
    let ep = net::udp_endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap();
    let cfg = net::join_quic_config(ca.digest()).unwrap();
    ep.connect_with(cfg, addr, pki::JOIN_SERVER_NAME)
        .unwrap()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_is_refused_at_its_length_prefix() {
    let (ca, nodes) = cluster(1);
    let t = nodes[0].t.clone();
    // Only the prefix is sent and the stream stays open: the refusal cannot wait for the body.
    let conn = join_connection(&ca, nodes[0].addr).await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&(net::MAX_UNAUTHENTICATED_REQUEST as u32 + 1).to_le_bytes())
        .await
        .unwrap();
    wait_for("oversized", || {
        t.stats().oversized.load(Ordering::Relaxed) == 1
    })
    .await;
    // The stream was stopped: writing more fails.
    let stopped = timeout(WAIT, async {
        loop {
            if send.write_all(&[0u8; 1024]).await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(stopped.is_ok(), "the node stopped the stream");
    // A member's request is limited by max_frame, also at the prefix.
    let member = raw_connection(&ca, 5, nodes[0].addr).await;
    let (mut send, _recv) = member.open_bi().await.unwrap();
    send.write_all(&(frame::DEFAULT_MAX_FRAME as u32 + 1).to_le_bytes())
        .await
        .unwrap();
    wait_for("oversized", || {
        t.stats().oversized.load(Ordering::Relaxed) == 2
    })
    .await;
    assert_eq!(t.stats().unauth_buffered.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_connections_are_capped_and_timed_out_but_members_are_not() {
    let ca = ClusterCa::generate(ClusterId::random()).unwrap();
    let cfg = TransportConfig {
        max_unauth_conns_per_ip: 1,
        unauth_request_timeout: Duration::from_millis(300),
        ..TransportConfig::default()
    };
    let mut node = start(&ca, &identity(&ca, 1, Role::Manager), Denylist::new(), cfg);
    let t = node.t.clone();
    let first = join_connection(&ca, node.addr).await;
    wait_for("the first connection", || {
        t.stats().unauth_conns.load(Ordering::Relaxed) == 1
    })
    .await;
    // A second one from the same address is closed at once.
    let second = join_connection(&ca, node.addr).await;
    let reason = timeout(WAIT, second.closed()).await.unwrap();
    assert!(
        matches!(&reason, quinn::ConnectionError::ApplicationClosed(c) if c.error_code == 4u32.into()),
        "{reason:?}"
    );
    assert_eq!(t.stats().unauth_conn_limit.load(Ordering::Relaxed), 1);
    // Members from the same address are not counted: any number of them connect and talk.
    for id in 5..8 {
        let member = raw_connection(&ca, id, node.addr).await;
        let mut st = member.open_uni().await.unwrap();
        let mut buf = Vec::new();
        frame::write_frame(&mut buf, Kind::Raft, b"member");
        st.write_all(&buf).await.unwrap();
        st.finish().unwrap();
        let (from, body) = timeout(WAIT, node.inbound.raft.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((from, body.as_slice()), (id, &b"member"[..]));
    }
    // A request that never ends is stopped at its deadline and its bytes released.
    let (mut send, _recv) = first.open_bi().await.unwrap();
    send.write_all(&1000u32.to_le_bytes()).await.unwrap();
    send.write_all(&[7u8; 10]).await.unwrap();
    wait_for("the deadline", || {
        t.stats().unauth_deadline.load(Ordering::Relaxed) == 1
    })
    .await;
    wait_for("the bytes to be released", || {
        t.stats().unauth_buffered.load(Ordering::Relaxed) == 0
    })
    .await;
    // Once the first connection is gone, its address may connect again.
    first.close(0u32.into(), b"done");
    wait_for("the slot to be freed", || {
        t.stats().unauth_conns.load(Ordering::Relaxed) == 0
    })
    .await;
    let third = join_connection(&ca, node.addr).await;
    wait_for("the third connection", || {
        t.stats().unauth_conns.load(Ordering::Relaxed) == 1
    })
    .await;
    assert!(third.close_reason().is_none());
    nothing_arrives(&mut node.inbound.requests).await;
}

/// Gossip cannot redirect traffic: a hint (what SWIM says about a third party) never moves a
/// peer whose address came from an authoritative source; it only fills in unknown peers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_never_move_a_pinned_address() {
    let mut nodes = strangers(3);
    // Node 1 knows node 2's real address from the state, then gossip claims node 2 is where
    // node 3 listens.
    nodes[0].t.pin_peer_addr(2, nodes[1].addr);
    let decoy = nodes[2].addr;
    nodes[0].t.hint_peer_addr(2, decoy);
    assert!(nodes[0].t.send_raft(2, b"to two".to_vec()));
    let (from, body) = timeout(WAIT, nodes[1].inbound.raft.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((from, body.as_slice()), (1, &b"to two"[..]));
    // Nothing went to the decoy (it would refuse the certificate name anyway, but no attempt
    // reaches it either).
    assert!(
        timeout(Duration::from_millis(300), nodes[2].inbound.raft.recv())
            .await
            .is_err()
    );
    // An unknown peer is filled in from a hint.
    nodes[0].t.hint_peer_addr(3, decoy);
    assert!(nodes[0].t.send_raft(3, b"to three".to_vec()));
    let (from, _) = timeout(WAIT, nodes[2].inbound.raft.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(from, 1);
}

/// A member that reaches us before we know its address (a manager restarted before its first
/// snapshot, whose address book comes back only as it replays the log) is answered where its
/// authenticated connection comes from; a pinned address still wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_is_answered_where_it_connects_from_until_its_address_is_known() {
    let mut nodes = strangers(2);
    // Node 1 knows node 2; node 2 knows nothing of node 1.
    nodes[0].t.pin_peer_addr(2, nodes[1].addr);
    assert!(!nodes[1].t.send_raft(1, b"lost".to_vec()), "no address yet");
    assert!(nodes[0].t.send_raft(2, b"vote for me".to_vec()));
    let (from, _) = timeout(WAIT, nodes[1].inbound.raft.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(from, 1);
    // The answer goes back.
    assert!(nodes[1].t.send_raft(1, b"granted".to_vec()));
    let (from, body) = timeout(WAIT, nodes[0].inbound.raft.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((from, body.as_slice()), (2, &b"granted"[..]));
}
