//! Typed channels over one quinn endpoint per node.
//!
//! - **Raft**: one long-lived unidirectional stream per peer, so messages stay ordered and are
//!   pipelined.
//! - **Snapshots**: a second unidirectional stream per peer with its own queue and task, so a
//!   large transfer never delays Raft heartbeats.
//! - **Gossip**: QUIC datagrams on the same authenticated connection (unreliable, like SWIM's UDP).
//! - **Requests**: a bidirectional stream per call (joins and control calls).
//!
//! Each peer has its own connection manager (connect with jittered exponential backoff, reconnect
//! when the connection is lost) and bounded queues: sending never waits, so an unreachable peer
//! never blocks sends to the others; what does not fit is dropped and counted. Peers unused for
//! the idle timeout are closed, and at most `max_peers` are kept (least recently used evicted).
//! Every inbound frame is size-checked before allocation and decoded by [`crate::frame`]; bad
//! input is dropped and counted in [`WireStats`], never a panic.

use crate::frame::{self, Envelope, FrameError, Kind, ReadError};
use crate::pki::{self, ClusterId, Denylist, NodeCertificate, NodeId};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

/// Largest request accepted from a node that has no certificate (a join request is a few KiB).
/// Checked at the length prefix: a larger announcement is refused before any of its body is read.
pub const MAX_UNAUTHENTICATED_REQUEST: usize = 64 << 10;

/// Request streams a connection may have open at once before it is known to be a member's: the
/// QUIC limit every inbound connection starts with (raised after the handshake for members). A
/// node that joins needs one.
pub const MAX_UNAUTHENTICATED_STREAMS: u32 = 4;

/// Bytes a peer may have in flight on a connection before it is known to be a member's: the
/// QUIC connection receive window every inbound connection starts with (raised after the
/// handshake for members). Bounds what quinn buffers for a peer without a certificate.
pub const UNAUTHENTICATED_RECEIVE_WINDOW: u32 = 2 * MAX_UNAUTHENTICATED_REQUEST as u32;

/// Unidirectional streams (Raft, snapshots) a member may have open at once.
const MEMBER_UNI_STREAMS: u32 = 64;
/// Request streams a member may have open at once.
const MEMBER_BIDI_STREAMS: u32 = 256;

/// Tunables of the transport.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// Largest Raft or request frame accepted.
    pub max_frame: usize,
    /// Largest snapshot chunk frame accepted.
    pub max_snapshot_frame: usize,
    /// Outbound Raft messages buffered per peer while it is slow or unreachable.
    pub raft_queue: usize,
    /// Bytes of outbound Raft messages buffered per peer, at most.
    pub raft_queue_bytes: usize,
    /// Outbound snapshot chunks buffered per peer.
    pub snapshot_queue: usize,
    /// Bytes of outbound snapshot chunks buffered per peer, at most.
    pub snapshot_queue_bytes: usize,
    /// Inbound messages buffered per channel before streams are back-pressured.
    pub inbound_queue: usize,
    /// Peers with an open connection kept at most (least recently used evicted).
    pub max_peers: usize,
    /// A peer unused for this long is disconnected.
    pub idle_timeout: Duration,
    /// First reconnect delay; doubles up to `backoff_max`, with jitter.
    pub backoff_base: Duration,
    /// Longest reconnect delay. Any sign of life from the peer (an inbound connection,
    /// stream or datagram) cuts the wait short and starts the backoff over.
    pub backoff_max: Duration,
    /// A connection that sent packets and received nothing for this long is stalled (the path
    /// broke) and replaced by a fresh connection attempt: QUIC's own retransmission timer backs
    /// off exponentially, so after a partition of a few seconds the old connection might not
    /// try again for as long, while a fresh attempt is renewed every `backoff_max`.
    pub stall_timeout: Duration,
    /// Time allowed for a request and its response.
    pub request_timeout: Duration,
    /// Connections without a certificate (joining nodes) kept open at once from one IP address;
    /// more are closed as soon as their handshake ends. Members are never counted.
    pub max_unauth_conns_per_ip: usize,
    /// Connections without a certificate kept open at once in total.
    pub max_unauth_conns: usize,
    /// Time a peer without a certificate has to send a whole request; then the stream is
    /// stopped.
    pub unauth_request_timeout: Duration,
    /// Time a connection without a certificate is kept open at most (a join is one request), so
    /// an idle one cannot hold its slot.
    pub unauth_conn_lifetime: Duration,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            max_frame: frame::DEFAULT_MAX_FRAME,
            max_snapshot_frame: 64 << 20,
            raft_queue: 4096,
            raft_queue_bytes: 16 << 20,
            snapshot_queue: 16,
            snapshot_queue_bytes: 64 << 20,
            inbound_queue: 4096,
            max_peers: 256,
            idle_timeout: Duration::from_secs(60),
            backoff_base: Duration::from_millis(50),
            // About an election timeout: a healed link is tried again before Raft gives up.
            backoff_max: Duration::from_secs(1),
            // Two election timeouts: a healed link is used about `backoff_max` after the repair.
            stall_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            max_unauth_conns_per_ip: 16,
            max_unauth_conns: 256,
            unauth_request_timeout: Duration::from_secs(5),
            // Longer than a joiner waits for its answer (15 s).
            unauth_conn_lifetime: Duration::from_secs(20),
        }
    }
}

/// Counters of what crossed the transport and what was refused.
#[derive(Debug, Default)]
pub struct WireStats {
    /// Frames and datagrams sent.
    pub sent: AtomicU64,
    /// Frames and datagrams delivered to a channel.
    pub received: AtomicU64,
    /// Inbound frames over the size limit.
    pub oversized: AtomicU64,
    /// Inbound frames cut short.
    pub truncated: AtomicU64,
    /// Inbound envelopes of an unknown version.
    pub unknown_version: AtomicU64,
    /// Inbound envelopes of an unknown kind (or a kind not allowed on that path).
    pub unknown_kind: AtomicU64,
    /// Inbound envelopes that do not decode.
    pub malformed: AtomicU64,
    /// Messages from peers without a certificate on a channel that needs one (a stream other
    /// than a request, a datagram; the connection is closed on a datagram).
    pub unauthenticated: AtomicU64,
    /// Connections without a certificate closed at once because their IP address, or all of
    /// them together, already had as many open as allowed.
    pub unauth_conn_limit: AtomicU64,
    /// Requests without a certificate not received whole in time (stream stopped), and
    /// connections without a certificate closed at the end of their lifetime.
    pub unauth_deadline: AtomicU64,
    /// Gauge: connections without a certificate open now.
    pub unauth_conns: AtomicU64,
    /// Gauge: bytes of requests from peers without a certificate held now (being read, or
    /// delivered and not yet answered or dropped). At most `max_unauth_conns` ×
    /// [`MAX_UNAUTHENTICATED_STREAMS`] × [`MAX_UNAUTHENTICATED_REQUEST`].
    pub unauth_buffered: AtomicU64,
    /// Outbound messages dropped because the peer's queue was full.
    pub queue_full: AtomicU64,
    /// Datagrams dropped because the peer was not connected (or too large).
    pub datagrams_dropped: AtomicU64,
    /// Inbound messages dropped because the local channel was full or closed.
    pub inbound_dropped: AtomicU64,
    /// Connections established (outbound).
    pub connects: AtomicU64,
    /// Connection attempts that failed.
    pub connect_failures: AtomicU64,
    /// Connections replaced because they sent and got nothing back for `stall_timeout`.
    pub stalls: AtomicU64,
}

impl WireStats {
    fn count_frame_error(&self, e: &FrameError) {
        let c = match e {
            FrameError::TooLarge { .. } => &self.oversized,
            FrameError::Truncated { .. } => &self.truncated,
            FrameError::UnknownVersion(_) => &self.unknown_version,
            FrameError::UnknownKind(_) => &self.unknown_kind,
            FrameError::Malformed(_) => &self.malformed,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Total inbound input refused for any reason.
    pub fn rejected(&self) -> u64 {
        [
            &self.oversized,
            &self.truncated,
            &self.unknown_version,
            &self.unknown_kind,
            &self.malformed,
            &self.unauthenticated,
            &self.unauth_conn_limit,
            &self.unauth_deadline,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }
}

/// Why a call failed.
#[derive(Debug, Error)]
pub enum TransportError {
    /// No address is known for the peer.
    #[error("no address known for node {0:016x}")]
    UnknownPeer(NodeId),
    /// The peer could not be reached in time.
    #[error("node {0:016x} unreachable: {1}")]
    Unreachable(NodeId, String),
    /// Connecting failed.
    #[error("connect to {addr}: {reason}")]
    Connect {
        /// The address.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// The request timed out.
    #[error("request timed out after {0:?}")]
    Timeout(Duration),
    /// The stream failed.
    #[error("stream: {0}")]
    Stream(String),
    /// The peer answered with invalid bytes.
    #[error("bad response: {0}")]
    BadResponse(String),
}

/// A request received on the request channel; answer it with [`IncomingRequest::respond`].
#[derive(Debug)]
pub struct IncomingRequest {
    /// The authenticated sender, or `None` for a node that has no certificate yet (joining).
    pub from: Option<NodeCertificate>,
    /// The sender's address.
    pub remote: SocketAddr,
    /// The request payload.
    pub body: Vec<u8>,
    reply: quinn::SendStream,
    /// Counts the body of an unauthenticated request as held until it is answered or dropped.
    _held: Option<Held>,
}

impl IncomingRequest {
    /// Sends the response (dropping the request without responding closes the stream). A
    /// response that fits the stream's window is written at once, from the caller; a larger one
    /// finishes on a task of its own.
    pub fn respond(self, body: Vec<u8>) {
        let mut buf = Vec::with_capacity(body.len() + 16);
        frame::write_frame(&mut buf, Kind::Response, &body);
        let mut send = self.reply;
        let mut fut = Box::pin(async move {
            if send.write_all(&buf).await.is_ok() {
                // Dropping a finished stream still delivers what was written.
                let _ = send.finish();
            }
        });
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if fut.as_mut().poll(&mut cx).is_pending() {
            tokio::spawn(fut);
        }
    }
}

/// The receiving ends of the transport's channels.
#[derive(Debug)]
pub struct Inbound {
    /// Raft messages, in order per peer.
    pub raft: mpsc::Receiver<(NodeId, Vec<u8>)>,
    /// Snapshot chunks, in order per peer.
    pub snapshot: mpsc::Receiver<(NodeId, Vec<u8>)>,
    /// Gossip datagrams.
    pub gossip: mpsc::Receiver<(NodeId, Vec<u8>)>,
    /// Requests (joins, control calls).
    pub requests: mpsc::Receiver<IncomingRequest>,
}

struct InboundTx {
    raft: mpsc::Sender<(NodeId, Vec<u8>)>,
    snapshot: mpsc::Sender<(NodeId, Vec<u8>)>,
    gossip: mpsc::Sender<(NodeId, Vec<u8>)>,
    requests: mpsc::Sender<IncomingRequest>,
}

/// A per-peer outbound queue bounded by messages (the channel) and by bytes (the counter).
#[derive(Clone)]
struct Queue {
    tx: mpsc::Sender<Vec<u8>>,
    bytes: Arc<AtomicU64>,
    max_bytes: u64,
}

struct Peer {
    raft: Queue,
    snapshot: Queue,
    conn: watch::Receiver<Option<quinn::Connection>>,
    reconnect: Arc<Notify>,
    last_used: Arc<AtomicU64>,
    shutdown: Arc<Notify>,
    signals: Arc<PeerSignals>,
}

/// What the inbound side tells a peer's connection manager about that peer.
#[derive(Default)]
struct PeerSignals {
    /// True while the manager has an outgoing connection to the peer.
    connected: std::sync::atomic::AtomicBool,
    /// The peer showed a sign of life while we had no connection to it: stop backing off.
    seen: Notify,
    /// The peer opened a new connection to us while we have one to it: if ours no longer
    /// answers (the peer restarted), replace it at once.
    probe: Notify,
}

impl Inner {
    /// Tells `node`'s connection manager, if it has one, that `node` just reached us: over a
    /// new connection (`new_connection`), or a stream or datagram on an existing one.
    fn peer_seen(&self, node: NodeId, new_connection: bool) {
        let peers = self.peers.lock().expect("peers lock");
        let Some(p) = peers.get(&node) else { return };
        if !p.signals.connected.load(Ordering::Relaxed) {
            p.signals.seen.notify_one();
        } else if new_connection {
            p.signals.probe.notify_one();
        }
    }
}

struct Inner {
    endpoint: quinn::Endpoint,
    client_config: Mutex<quinn::ClientConfig>,
    cluster_id: ClusterId,
    local_id: NodeId,
    cfg: TransportConfig,
    stats: Arc<WireStats>,
    denylist: Denylist,
    addrs: Mutex<BTreeMap<NodeId, SocketAddr>>,
    /// Peers whose address came from an authoritative source (`pin_peer_addr`): hints no
    /// longer move them.
    pinned: Mutex<std::collections::BTreeSet<NodeId>>,
    peers: Mutex<BTreeMap<NodeId, Peer>>,
    /// Open inbound connections of each member, with the role its certificate names (parsed
    /// once, at accept time).
    inbound_conns: Mutex<BTreeMap<NodeId, Vec<(quinn::Connection, pki::Role)>>>,
    unauth: Mutex<UnauthConns>,
    tx: InboundTx,
    started: Instant,
    /// Set by [`Transport::shutdown`]: no new peer, no new connection.
    closed: std::sync::atomic::AtomicBool,
}

/// A node's transport: one quinn endpoint, typed channels to every peer.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("local_id", &self.inner.local_id)
            .finish_non_exhaustive()
    }
}

fn now_ms(started: Instant) -> u64 {
    started.elapsed().as_millis() as u64
}

impl Transport {
    /// Starts the transport on `endpoint` (built on a real or simulated socket, with the node's
    /// server configuration). `client_config` authenticates this node to its peers.
    pub fn start(
        endpoint: quinn::Endpoint,
        client_config: quinn::ClientConfig,
        local_id: NodeId,
        cluster_id: ClusterId,
        denylist: Denylist,
        cfg: TransportConfig,
    ) -> (Transport, Inbound) {
        let q = cfg.inbound_queue.max(1);
        let (raft_tx, raft) = mpsc::channel(q);
        let (snap_tx, snapshot) = mpsc::channel(q);
        let (gossip_tx, gossip) = mpsc::channel(q);
        let (req_tx, requests) = mpsc::channel(q);
        let inner = Arc::new(Inner {
            endpoint,
            client_config: Mutex::new(client_config),
            cluster_id,
            local_id,
            cfg,
            stats: Arc::new(WireStats::default()),
            denylist,
            addrs: Mutex::new(BTreeMap::new()),
            pinned: Mutex::new(std::collections::BTreeSet::new()),
            peers: Mutex::new(BTreeMap::new()),
            inbound_conns: Mutex::new(BTreeMap::new()),
            unauth: Mutex::new(UnauthConns::default()),
            tx: InboundTx {
                raft: raft_tx,
                snapshot: snap_tx,
                gossip: gossip_tx,
                requests: req_tx,
            },
            started: Instant::now(),
            closed: std::sync::atomic::AtomicBool::new(false),
        });
        let t = Transport { inner };
        tokio::spawn(accept_loop(
            Arc::downgrade(&t.inner),
            t.inner.endpoint.clone(),
        ));
        (
            t,
            Inbound {
                raft,
                snapshot,
                gossip,
                requests,
            },
        )
    }

    /// This node's id.
    pub fn local_id(&self) -> NodeId {
        self.inner.local_id
    }

    /// The endpoint's local address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.endpoint.local_addr()
    }

    /// Counters.
    pub fn stats(&self) -> &WireStats {
        &self.inner.stats
    }

    /// Switches to a renewed identity: new connections, inbound and outbound, present the new
    /// certificate; every peer is reconnected so none keeps using the old one.
    pub fn set_identity(
        &self,
        identity: &pki::NodeIdentity,
        ca_der: &[u8],
    ) -> Result<(), SetupError> {
        let (server, client) = quic_configs(identity, ca_der, self.inner.denylist.clone())?;
        self.inner.endpoint.set_server_config(Some(server));
        *self.inner.client_config.lock().expect("config lock") = client;
        for p in self.inner.peers.lock().expect("peers lock").values() {
            p.reconnect.notify_one();
        }
        Ok(())
    }

    /// Peers with a live connection manager (the connection cache's size).
    pub fn cached_peers(&self) -> usize {
        self.inner.peers.lock().expect("peers lock").len()
    }

    /// Records a peer's address from an authoritative source (the replicated state, or what an
    /// operator typed): from now on [`Transport::hint_peer_addr`] cannot move it.
    pub fn pin_peer_addr(&self, peer: NodeId, addr: SocketAddr) {
        self.inner.pinned.lock().expect("pinned lock").insert(peer);
        self.set_peer_addr(peer, addr);
    }

    /// Records a peer's address from an unauthenticated hint (gossip about a third party),
    /// unless an authoritative address is pinned for it: gossip cannot redirect traffic.
    pub fn hint_peer_addr(&self, peer: NodeId, addr: SocketAddr) {
        if !self
            .inner
            .pinned
            .lock()
            .expect("pinned lock")
            .contains(&peer)
        {
            self.set_peer_addr(peer, addr);
        }
    }

    /// Records (or changes) a peer's address. A changed address reconnects.
    pub fn set_peer_addr(&self, peer: NodeId, addr: SocketAddr) {
        let changed = self
            .inner
            .addrs
            .lock()
            .expect("addrs lock")
            .insert(peer, addr)
            .is_some_and(|old| old != addr);
        if changed {
            if let Some(p) = self.inner.peers.lock().expect("peers lock").get(&peer) {
                p.reconnect.notify_one();
            }
        }
    }

    /// Shuts the transport down for good: every connection is closed, the peers' tasks stop,
    /// nothing new is sent or accepted, and the UDP port is released once the connections have
    /// drained and the last handle on this transport is dropped (a node leaving its cluster
    /// frees the port for its next one). Waits up to `grace` for the connections to drain.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.closed.store(true, Ordering::Relaxed);
        let peers = std::mem::take(&mut *self.inner.peers.lock().expect("peers lock"));
        for p in peers.values() {
            p.shutdown.notify_one();
        }
        self.inner.inbound_conns.lock().expect("conns lock").clear();
        self.inner.endpoint.close(0u32.into(), b"shutdown");
        let _ = tokio::time::timeout(grace, self.inner.endpoint.wait_idle()).await;
    }

    /// True once [`Transport::shutdown`] was called.
    pub fn is_shut_down(&self) -> bool {
        self.inner.closed.load(Ordering::Relaxed)
    }

    /// Denies a node: its certificate is refused from now on and its connections are closed.
    pub fn deny(&self, node: NodeId) {
        self.inner.denylist.deny(node);
        if let Some(p) = self.inner.peers.lock().expect("peers lock").remove(&node) {
            p.shutdown.notify_one();
        }
        if let Some(conns) = self
            .inner
            .inbound_conns
            .lock()
            .expect("conns lock")
            .remove(&node)
        {
            for (c, _) in conns {
                c.close(CLOSE_DENIED.into(), b"denied");
            }
        }
    }

    /// The highest role among the certificates `peer` presents on its open inbound connections
    /// (what the messages it sends us were authenticated with), or `None` if it has none open.
    pub fn peer_role(&self, peer: NodeId) -> Option<pki::Role> {
        let conns = self.inner.inbound_conns.lock().expect("conns lock");
        let roles = conns.get(&peer)?;
        if roles.iter().any(|(_, r)| *r == pki::Role::Manager) {
            return Some(pki::Role::Manager);
        }
        roles.first().map(|(_, r)| *r)
    }

    /// Queues a Raft message for `peer`. Never waits: if the peer's queue is full the message is
    /// dropped and counted (Raft retransmits).
    pub fn send_raft(&self, peer: NodeId, body: Vec<u8>) -> bool {
        self.enqueue(peer, body, false)
    }

    /// Queues a snapshot chunk for `peer` on its own stream. Never waits.
    pub fn send_snapshot(&self, peer: NodeId, body: Vec<u8>) -> bool {
        self.enqueue(peer, body, true)
    }

    fn enqueue(&self, peer: NodeId, body: Vec<u8>, snapshot: bool) -> bool {
        let Some((q, last_used)) = self.with_peer(peer, |p| {
            (
                if snapshot {
                    p.snapshot.clone()
                } else {
                    p.raft.clone()
                },
                p.last_used.clone(),
            )
        }) else {
            self.inner.stats.queue_full.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        last_used.store(now_ms(self.inner.started), Ordering::Relaxed);
        let len = body.len() as u64;
        let queued = q.bytes.fetch_add(len, Ordering::Relaxed);
        if queued > 0 && queued + len > q.max_bytes {
            q.bytes.fetch_sub(len, Ordering::Relaxed);
            self.inner.stats.queue_full.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        match q.tx.try_send(body) {
            Ok(()) => true,
            Err(_) => {
                q.bytes.fetch_sub(len, Ordering::Relaxed);
                self.inner.stats.queue_full.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Sends a gossip datagram to `peer` if it is connected (unreliable by design); otherwise
    /// drops it, counts it and starts connecting so later datagrams get through.
    pub fn send_gossip(&self, peer: NodeId, body: &[u8]) -> bool {
        let Some((conn, last_used)) =
            self.with_peer(peer, |p| (p.conn.borrow().clone(), p.last_used.clone()))
        else {
            self.inner
                .stats
                .datagrams_dropped
                .fetch_add(1, Ordering::Relaxed);
            return false;
        };
        last_used.store(now_ms(self.inner.started), Ordering::Relaxed);
        let env = frame::encode(Kind::Gossip, body);
        match conn {
            Some(c) if c.close_reason().is_none() => match c.send_datagram(Bytes::from(env)) {
                Ok(()) => {
                    self.inner.stats.sent.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Err(_) => {
                    self.inner
                        .stats
                        .datagrams_dropped
                        .fetch_add(1, Ordering::Relaxed);
                    false
                }
            },
            _ => {
                self.inner
                    .stats
                    .datagrams_dropped
                    .fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Sends a request to an authenticated peer and waits for its response.
    pub async fn request(&self, peer: NodeId, body: &[u8]) -> Result<Vec<u8>, TransportError> {
        let timeout = self.inner.cfg.request_timeout;
        let mut conn_rx = self
            .with_peer(peer, |p| {
                p.last_used
                    .store(now_ms(self.inner.started), Ordering::Relaxed);
                p.conn.clone()
            })
            .ok_or(TransportError::UnknownPeer(peer))?;
        let max = self.inner.cfg.max_frame;
        let fut = async move {
            let conn = loop {
                if let Some(c) = conn_rx.borrow_and_update().clone() {
                    if c.close_reason().is_none() {
                        break c;
                    }
                }
                if conn_rx.changed().await.is_err() {
                    return Err(TransportError::Unreachable(peer, "peer removed".into()));
                }
            };
            call(&conn, body, max).await
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| TransportError::Timeout(timeout))?
    }

    /// Sends one request over a fresh connection made with `client_config` to `addr`, expecting
    /// the server to present `server_name`. Used by a node that joins (it has no certificate yet).
    pub async fn request_once(
        endpoint: &quinn::Endpoint,
        client_config: quinn::ClientConfig,
        addr: SocketAddr,
        server_name: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        Self::request_once_from(endpoint, client_config, addr, server_name, body, timeout)
            .await
            .map(|(body, _)| body)
    }

    /// Like [`Transport::request_once`], also returning the certificate the server presented
    /// (so that a joiner learns which node admitted it).
    pub async fn request_once_from(
        endpoint: &quinn::Endpoint,
        client_config: quinn::ClientConfig,
        addr: SocketAddr,
        server_name: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<(Vec<u8>, Option<NodeCertificate>), TransportError> {
        let fut = async {
            let connecting = endpoint
                .connect_with(client_config, addr, server_name)
                .map_err(|e| TransportError::Connect {
                    addr,
                    reason: e.to_string(),
                })?;
            let conn = connecting.await.map_err(|e| TransportError::Connect {
                addr,
                reason: e.to_string(),
            })?;
            let server = peer_of(&conn);
            let r = call(&conn, body, frame::DEFAULT_MAX_FRAME).await;
            conn.close(0u32.into(), b"done");
            r.map(|body| (body, server))
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| TransportError::Timeout(timeout))?
    }

    /// Runs `f` on the peer's entry, creating it (and its tasks) if needed.
    fn with_peer<R>(&self, peer: NodeId, f: impl FnOnce(&Peer) -> R) -> Option<R> {
        if peer == self.inner.local_id
            || self.inner.denylist.is_denied(peer)
            || self.inner.closed.load(Ordering::Relaxed)
        {
            return None;
        }
        let mut peers = self.inner.peers.lock().expect("peers lock");
        if !peers.contains_key(&peer) {
            if !self
                .inner
                .addrs
                .lock()
                .expect("addrs lock")
                .contains_key(&peer)
            {
                return None;
            }
            if peers.len() >= self.inner.cfg.max_peers {
                // Evict the least recently used peer.
                if let Some((&victim, _)) = peers
                    .iter()
                    .min_by_key(|(_, p)| p.last_used.load(Ordering::Relaxed))
                {
                    if let Some(p) = peers.remove(&victim) {
                        p.shutdown.notify_one();
                    }
                }
            }
            let p = spawn_peer(&self.inner, peer);
            peers.insert(peer, p);
        }
        peers.get(&peer).map(f)
    }
}

/// Reads the one frame a request or response stream carries, up to the end of the stream. The
/// 4-byte length prefix is read first and checked against `max`, so an oversized frame is
/// refused before any of its body is read; the body buffer grows as bytes arrive, so an
/// announced length alone costs nothing. Bytes read are added to `held` when given.
async fn read_single_frame(
    recv: &mut quinn::RecvStream,
    max: usize,
    mut held: Option<&mut Held>,
) -> Result<Option<Envelope>, ReadError> {
    use quinn::ReadExactError;
    let mut prefix = [0u8; frame::LEN_PREFIX];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(ReadExactError::FinishedEarly(got)) => {
            return Err(ReadError::Frame(FrameError::Truncated {
                expected: frame::LEN_PREFIX,
                got,
            }))
        }
        Err(ReadExactError::ReadError(e)) => return Err(ReadError::Io(e.into())),
    }
    let len = u32::from_le_bytes(prefix) as usize;
    if len > max {
        return Err(ReadError::Frame(FrameError::TooLarge { len, max }));
    }
    let mut buf: Vec<u8> = Vec::with_capacity(len.min(4 << 10));
    while buf.len() < len {
        match recv.read_chunk(len - buf.len(), true).await {
            Ok(Some(chunk)) => {
                if let Some(h) = held.as_deref_mut() {
                    h.add(chunk.bytes.len());
                }
                buf.extend_from_slice(&chunk.bytes);
            }
            Ok(None) => {
                return Err(ReadError::Frame(FrameError::Truncated {
                    expected: len,
                    got: buf.len(),
                }))
            }
            Err(e) => return Err(ReadError::Io(e.into())),
        }
    }
    // One frame per stream: the stream must end here.
    match recv.read_chunk(1, true).await {
        Ok(None) => {}
        Ok(Some(_)) => {
            return Err(ReadError::Frame(FrameError::Malformed(
                "more than one frame on a request stream".into(),
            )))
        }
        Err(e) => return Err(ReadError::Io(e.into())),
    }
    frame::decode(&buf, max).map(Some).map_err(ReadError::Frame)
}

/// Request/response on a new bidirectional stream of `conn`.
async fn call(
    conn: &quinn::Connection,
    body: &[u8],
    max: usize,
) -> Result<Vec<u8>, TransportError> {
    // A stream error says "connection lost"; the connection's close reason says why (a peer
    // that refused our certificate in the handshake, for instance).
    let why = |e: String| match conn.close_reason() {
        Some(reason) => TransportError::Stream(format!("{e} ({reason})")),
        None => TransportError::Stream(e),
    };
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| why(e.to_string()))?;
    let mut buf = Vec::with_capacity(body.len() + 16);
    frame::write_frame(&mut buf, Kind::Request, body);
    send.write_all(&buf).await.map_err(|e| why(e.to_string()))?;
    let _ = send.finish();
    match read_single_frame(&mut recv, max, None).await {
        Ok(Some(Envelope {
            kind: Kind::Response,
            body,
        })) => Ok(body),
        Ok(Some(e)) => Err(TransportError::BadResponse(format!(
            "expected a response, got {:?}",
            e.kind
        ))),
        Ok(None) => Err(TransportError::BadResponse(
            "stream closed without a response".into(),
        )),
        Err(e) => Err(TransportError::BadResponse(match conn.close_reason() {
            Some(reason) => format!("{e} ({reason})"),
            None => e.to_string(),
        })),
    }
}

fn spawn_peer(inner: &Arc<Inner>, peer: NodeId) -> Peer {
    let (raft_tx, raft_rx) = mpsc::channel(inner.cfg.raft_queue.max(1));
    let (snap_tx, snap_rx) = mpsc::channel(inner.cfg.snapshot_queue.max(1));
    let raft = Queue {
        tx: raft_tx,
        bytes: Arc::new(AtomicU64::new(0)),
        max_bytes: inner.cfg.raft_queue_bytes as u64,
    };
    let snapshot = Queue {
        tx: snap_tx,
        bytes: Arc::new(AtomicU64::new(0)),
        max_bytes: inner.cfg.snapshot_queue_bytes as u64,
    };
    let (conn_tx, conn_rx) = watch::channel(None);
    let reconnect = Arc::new(Notify::new());
    let shutdown = Arc::new(Notify::new());
    let last_used = Arc::new(AtomicU64::new(now_ms(inner.started)));
    let signals = Arc::new(PeerSignals::default());
    let weak = Arc::downgrade(inner);
    tokio::spawn(connection_manager(
        weak.clone(),
        peer,
        conn_tx,
        reconnect.clone(),
        shutdown.clone(),
        last_used.clone(),
        signals.clone(),
    ));
    tokio::spawn(stream_sender(
        weak.clone(),
        Kind::Raft,
        raft_rx,
        raft.bytes.clone(),
        conn_rx.clone(),
        reconnect.clone(),
    ));
    tokio::spawn(stream_sender(
        weak,
        Kind::Snapshot,
        snap_rx,
        snapshot.bytes.clone(),
        conn_rx.clone(),
        reconnect.clone(),
    ));
    Peer {
        raft,
        snapshot,
        conn: conn_rx,
        reconnect,
        last_used,
        shutdown,
        signals,
    }
}

/// Keeps one connection to `peer` alive: connects with jittered exponential backoff, publishes
/// the connection, reconnects when it closes or a sender asks, and ends when the peer has been
/// idle too long or is removed. A sign of life from the peer while it is not connected ends
/// the backoff (and an attempt older than `backoff_max`, whose handshake packets may be
/// waiting out QUIC's own retransmission backoff); a new connection from the peer while it is
/// connected makes it check that its connection still answers (see [`still_answers`]).
async fn connection_manager(
    inner: std::sync::Weak<Inner>,
    peer: NodeId,
    conn_tx: watch::Sender<Option<quinn::Connection>>,
    reconnect: Arc<Notify>,
    shutdown: Arc<Notify>,
    last_used: Arc<AtomicU64>,
    signals: Arc<PeerSignals>,
) {
    let mut backoff = None::<Duration>;
    // Round-trip time of the last connection to the peer: bounds how long an attempt may take.
    let mut rtt_hint = Duration::ZERO;
    loop {
        let Some(i) = inner.upgrade() else { return };
        let addr = i.addrs.lock().expect("addrs lock").get(&peer).copied();
        let (cfg, started) = (i.cfg.clone(), i.started);
        let attempt = match addr {
            Some(addr) => {
                let name = pki::server_name(peer, i.cluster_id);
                match i.endpoint.connect_with(
                    i.client_config.lock().expect("config lock").clone(),
                    addr,
                    &name,
                ) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        tracing::debug!(peer = format!("{peer:016x}"), "connect: {e}");
                        None
                    }
                }
            }
            None => None,
        };
        let stats = i.stats.clone();
        drop(i);
        let conn = match attempt {
            Some(connecting) => {
                // QUIC retransmits a lost handshake packet with exponential backoff (1 s, 2 s,
                // 4 s... until its 30 s idle timeout), so after a partition heals an old
                // attempt may stay silent for seconds: an attempt unanswered for
                // `backoff_max` (or 8 round trips of the last connection, if longer) gives way
                // to a fresh one at once, whose first packet leaves immediately.
                let attempt_start = Instant::now();
                let deadline = attempt_start + cfg.backoff_max.max(rtt_hint * 8);
                // The peer reached us while this attempt is pending: the path works, so do not
                // even wait for the deadline once the attempt is `backoff_max` old.
                let stale = async {
                    signals.seen.notified().await;
                    tokio::time::sleep_until(attempt_start + cfg.backoff_max).await;
                };
                tokio::select! {
                    biased;
                    _ = shutdown.notified() => return,
                    r = connecting => r.ok(),
                    _ = stale => {
                        backoff = None;
                        continue;
                    }
                    _ = tokio::time::sleep_until(deadline) => {
                        // The attempt itself was the wait: try again at once.
                        stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
            }
            None => None,
        };
        let Some(conn) = conn else {
            stats.connect_failures.fetch_add(1, Ordering::Relaxed);
            let b = backoff.map_or(cfg.backoff_base, |b| (b * 2).min(cfg.backoff_max));
            backoff = Some(b);
            // Jitter: wait between half and all of the backoff.
            let jitter = rand::random::<f64>() * 0.5 + 0.5;
            tokio::select! {
                biased;
                _ = shutdown.notified() => return,
                _ = reconnect.notified() => {}
                _ = signals.seen.notified() => backoff = None,
                _ = tokio::time::sleep(b.mul_f64(jitter)) => {}
            }
            continue;
        };
        backoff = None;
        stats.connects.fetch_add(1, Ordering::Relaxed);
        signals.connected.store(true, Ordering::Relaxed);
        let _ = conn_tx.send(Some(conn.clone()));
        // Serve until the connection dies, a reconnect is requested, the connection stalls, or
        // the peer idles out.
        let idle = cfg.idle_timeout;
        let mut stall = StallWatch::new(&conn);
        let check_every = (cfg.stall_timeout / 4).max(Duration::from_millis(10));
        // The peer was removed: close and publish that there is no connection.
        let removed = |conn: &quinn::Connection| {
            conn.close(0u32.into(), b"peer removed");
            signals.connected.store(false, Ordering::Relaxed);
            let _ = conn_tx.send(None);
        };
        loop {
            let since = now_ms(started).saturating_sub(last_used.load(Ordering::Relaxed));
            let left = idle.saturating_sub(Duration::from_millis(since));
            tokio::select! {
                biased;
                _ = shutdown.notified() => {
                    removed(&conn);
                    return;
                }
                _ = conn.closed() => break,
                _ = reconnect.notified() => {
                    conn.close(0u32.into(), b"reconnect");
                    break;
                }
                _ = tokio::time::sleep(check_every) => {
                    if stall.stalled(&conn, cfg.stall_timeout) {
                        tracing::debug!(
                            peer = format!("{peer:016x}"),
                            "nothing received on the connection for {:?} while sending: reconnecting",
                            cfg.stall_timeout
                        );
                        stats.stalls.fetch_add(1, Ordering::Relaxed);
                        conn.close(0u32.into(), b"stalled");
                        backoff = None;
                        break;
                    }
                    continue;
                }
                _ = signals.probe.notified() => {
                    let answers = tokio::select! {
                        biased;
                        _ = shutdown.notified() => {
                            removed(&conn);
                            return;
                        }
                        a = still_answers(&conn) => a,
                    };
                    if !answers {
                        tracing::debug!(
                            peer = format!("{peer:016x}"),
                            "the peer connected to us but our connection to it no longer \
                             answers (it restarted): reconnecting"
                        );
                        conn.close(0u32.into(), b"stale");
                        backoff = None;
                        break;
                    }
                }
                _ = tokio::time::sleep(left.max(Duration::from_millis(10))) => {
                    let since = now_ms(started).saturating_sub(last_used.load(Ordering::Relaxed));
                    if Duration::from_millis(since) >= idle {
                        conn.close(0u32.into(), b"idle");
                        signals.connected.store(false, Ordering::Relaxed);
                        let _ = conn_tx.send(None);
                        if let Some(i) = inner.upgrade() {
                            let mut peers = i.peers.lock().expect("peers lock");
                            // Only remove our own entry, not a newer one for the same peer.
                            if peers
                                .get(&peer)
                                .is_some_and(|p| Arc::ptr_eq(&p.last_used, &last_used))
                            {
                                peers.remove(&peer);
                            }
                        }
                        return;
                    }
                }
            }
        }
        rtt_hint = conn.rtt();
        signals.connected.store(false, Ordering::Relaxed);
        let _ = conn_tx.send(None);
    }
}

/// Watches a connection for a stall: something sent, and nothing at all received in the
/// `stall_timeout` since. An idle connection (keep-alives acknowledged) never stalls.
struct StallWatch {
    /// Datagrams received and sent when the received count last changed.
    rx: u64,
    tx: u64,
    /// When a datagram sent after that was first seen: the wait for an answer started.
    waiting_since: Option<Instant>,
}

impl StallWatch {
    fn new(conn: &quinn::Connection) -> Self {
        let s = conn.stats();
        StallWatch {
            rx: s.udp_rx.datagrams,
            tx: s.udp_tx.datagrams,
            waiting_since: None,
        }
    }

    /// Samples the counters; true once the connection has waited `timeout` for any answer.
    fn stalled(&mut self, conn: &quinn::Connection, timeout: Duration) -> bool {
        let s = conn.stats();
        if s.udp_rx.datagrams != self.rx {
            *self = StallWatch {
                rx: s.udp_rx.datagrams,
                tx: s.udp_tx.datagrams,
                waiting_since: None,
            };
            return false;
        }
        if s.udp_tx.datagrams != self.tx && self.waiting_since.is_none() {
            self.waiting_since = Some(Instant::now());
        }
        self.waiting_since.is_some_and(|t| t.elapsed() >= timeout)
    }
}

/// Whether `conn` still reaches its peer: an empty unidirectional stream is opened and finished
/// (the peer's reader ends on it without a trace), and the connection answers if the peer
/// acknowledges it, or anything else arrives on the connection, within four round trips plus
/// 100 ms (1 s at most). A connection to an incarnation of the peer that has since restarted
/// gets no answer.
async fn still_answers(conn: &quinn::Connection) -> bool {
    let before = conn.stats().udp_rx.datagrams;
    let wait = (conn.rtt() * 4 + Duration::from_millis(100)).min(Duration::from_secs(1));
    let acked = async {
        let Ok(mut s) = conn.open_uni().await else {
            return false;
        };
        if s.finish().is_err() {
            return false;
        }
        matches!(s.stopped().await, Ok(None))
    };
    match tokio::time::timeout(wait, acked).await {
        Ok(true) => true,
        _ => conn.close_reason().is_none() && conn.stats().udp_rx.datagrams > before,
    }
}

/// Bodies at least this large are written as their own chunk, without being copied.
const ZERO_COPY_BODY: usize = 8 << 10;

/// Writes one kind of frames to `peer` on a long-lived unidirectional stream, in order. What is
/// queued is written together: small frames are packed into one buffer, large bodies are handed
/// to quinn as they are.
async fn stream_sender(
    inner: std::sync::Weak<Inner>,
    kind: Kind,
    mut rx: mpsc::Receiver<Vec<u8>>,
    queued: Arc<AtomicU64>,
    mut conn_rx: watch::Receiver<Option<quinn::Connection>>,
    reconnect: Arc<Notify>,
) {
    let mut stream: Option<(quinn::Connection, quinn::SendStream)> = None;
    while let Some(first) = rx.recv().await {
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut small: Vec<u8> = Vec::new();
        let mut total = 0usize;
        let mut n = 0u64;
        let mut next = Some(first);
        while let Some(body) = next.take() {
            queued.fetch_sub(body.len() as u64, Ordering::Relaxed);
            total += body.len();
            n += 1;
            if body.len() >= ZERO_COPY_BODY {
                small.extend_from_slice(&frame::frame_header(kind, body.len()));
                chunks.push(Bytes::from(std::mem::take(&mut small)));
                chunks.push(Bytes::from(body));
            } else {
                frame::write_frame(&mut small, kind, &body);
            }
            if total < 4 << 20 {
                next = rx.try_recv().ok();
            }
        }
        if !small.is_empty() {
            chunks.push(Bytes::from(small));
        }
        // Get a live stream, waiting for the connection if needed.
        loop {
            if let Some((c, _)) = &stream {
                if c.close_reason().is_some() {
                    stream = None;
                }
            }
            if stream.is_none() {
                let conn = loop {
                    if let Some(c) = conn_rx.borrow_and_update().clone() {
                        if c.close_reason().is_none() {
                            break Some(c);
                        }
                    }
                    if conn_rx.changed().await.is_err() {
                        break None;
                    }
                };
                let Some(conn) = conn else { return };
                match conn.open_uni().await {
                    Ok(s) => stream = Some((conn, s)),
                    Err(_) => {
                        reconnect.notify_one();
                        continue;
                    }
                }
            }
            let (_, s) = stream.as_mut().expect("set above");
            match s.write_all_chunks(&mut chunks).await {
                Ok(()) => {
                    if let Some(i) = inner.upgrade() {
                        i.stats.sent.fetch_add(n, Ordering::Relaxed);
                    }
                    break;
                }
                Err(_) => {
                    // The connection broke: these messages are lost (Raft retransmits).
                    stream = None;
                    reconnect.notify_one();
                    break;
                }
            }
        }
    }
}

async fn accept_loop(inner: std::sync::Weak<Inner>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let inner = inner.clone();
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            serve_connection(inner, conn).await;
        });
    }
}

fn peer_of(conn: &quinn::Connection) -> Option<NodeCertificate> {
    let identity = conn.peer_identity()?;
    let certs = identity
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    pki::peer_node(&certs).ok()
}

/// Bytes of input from a peer without a certificate, counted in [`WireStats::unauth_buffered`]
/// for as long as this lives.
#[derive(Debug)]
struct Held {
    stats: Arc<WireStats>,
    bytes: u64,
}

impl Held {
    fn new(stats: Arc<WireStats>) -> Self {
        Held { stats, bytes: 0 }
    }

    fn add(&mut self, n: usize) {
        self.bytes += n as u64;
        self.stats
            .unauth_buffered
            .fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.stats
            .unauth_buffered
            .fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// Connections without a certificate open now, per IP address and in total.
#[derive(Debug, Default)]
struct UnauthConns {
    per_ip: BTreeMap<IpAddr, usize>,
    total: usize,
}

/// The slot of one open connection without a certificate; freed when dropped.
struct UnauthSlot {
    inner: std::sync::Weak<Inner>,
    ip: IpAddr,
}

impl Drop for UnauthSlot {
    fn drop(&mut self) {
        let Some(i) = self.inner.upgrade() else {
            return;
        };
        let mut u = i.unauth.lock().expect("unauth lock");
        u.total = u.total.saturating_sub(1);
        if let Some(n) = u.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                u.per_ip.remove(&self.ip);
            }
        }
        i.stats.unauth_conns.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Takes a slot for a new connection without a certificate from `ip`, or `None` if that
/// address, or everyone together, has as many open as allowed.
fn admit_unauthenticated(inner: &Arc<Inner>, ip: IpAddr) -> Option<UnauthSlot> {
    let ip = ip.to_canonical();
    let mut u = inner.unauth.lock().expect("unauth lock");
    let from_ip = u.per_ip.get(&ip).copied().unwrap_or(0);
    if from_ip >= inner.cfg.max_unauth_conns_per_ip || u.total >= inner.cfg.max_unauth_conns {
        return None;
    }
    *u.per_ip.entry(ip).or_default() += 1;
    u.total += 1;
    inner.stats.unauth_conns.fetch_add(1, Ordering::Relaxed);
    Some(UnauthSlot {
        inner: Arc::downgrade(inner),
        ip,
    })
}

/// QUIC error codes this node closes connections and stops streams with.
const CLOSE_DENIED: u32 = 1;
const STOP_REFUSED: u32 = 2;
const CLOSE_UNAUTHENTICATED: u32 = 3;
const CLOSE_TOO_MANY: u32 = 4;
const CLOSE_LIFETIME: u32 = 5;
const STOP_DEADLINE: u32 = 6;

async fn serve_connection(inner: std::sync::Weak<Inner>, conn: quinn::Connection) {
    match peer_of(&conn) {
        Some(peer) => serve_member(inner, conn, peer).await,
        None => serve_unauthenticated(inner, conn).await,
    }
}

/// Serves a connection authenticated by a member's certificate: every channel, with the
/// members' stream limits and receive window.
async fn serve_member(
    inner: std::sync::Weak<Inner>,
    conn: quinn::Connection,
    peer: NodeCertificate,
) {
    let Some(i) = inner.upgrade() else { return };
    if i.denylist.is_denied(peer.node_id) {
        conn.close(CLOSE_DENIED.into(), b"denied");
        return;
    }
    // Every connection starts with the small limits of a peer without a certificate (the
    // transport parameters are sent before the client's certificate is seen): lift them.
    conn.set_max_concurrent_uni_streams(MEMBER_UNI_STREAMS.into());
    conn.set_max_concurrent_bi_streams(MEMBER_BIDI_STREAMS.into());
    conn.set_receive_window(quinn::VarInt::MAX);
    i.inbound_conns
        .lock()
        .expect("conns lock")
        .entry(peer.node_id)
        .or_default()
        .push((conn.clone(), peer.role));
    // A member whose address this node does not know yet is answered where its authenticated
    // connection comes from (a hint: never over an address the state or the operator gave).
    i.addrs
        .lock()
        .expect("addrs lock")
        .entry(peer.node_id)
        .or_insert_with(|| conn.remote_address());
    i.peer_seen(peer.node_id, true);
    drop(i);
    let remote = conn.remote_address();
    let uni = {
        let (inner, conn, node) = (inner.clone(), conn.clone(), peer.node_id);
        async move {
            while let Ok(recv) = conn.accept_uni().await {
                if let Some(i) = inner.upgrade() {
                    i.peer_seen(node, false);
                }
                tokio::spawn(read_stream(inner.clone(), node, recv));
            }
        }
    };
    let bi = {
        let (inner, conn, peer) = (inner.clone(), conn.clone(), peer.clone());
        async move {
            while let Ok((send, recv)) = conn.accept_bi().await {
                if let Some(i) = inner.upgrade() {
                    i.peer_seen(peer.node_id, false);
                }
                tokio::spawn(serve_request(
                    inner.clone(),
                    Some(peer.clone()),
                    remote,
                    send,
                    recv,
                ));
            }
        }
    };
    let dgram = {
        let (inner, conn, node) = (inner.clone(), conn.clone(), peer.node_id);
        async move {
            while let Ok(d) = conn.read_datagram().await {
                let Some(i) = inner.upgrade() else { return };
                i.peer_seen(node, false);
                match frame::decode(&d, i.cfg.max_frame) {
                    Ok(Envelope {
                        kind: Kind::Gossip,
                        body,
                    }) => {
                        if i.tx.gossip.try_send((node, body)).is_ok() {
                            i.stats.received.fetch_add(1, Ordering::Relaxed);
                        } else {
                            i.stats.inbound_dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(_) => {
                        i.stats.unknown_kind.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => i.stats.count_frame_error(&e),
                }
            }
        }
    };
    tokio::join!(uni, bi, dgram);
    if let Some(i) = inner.upgrade() {
        if let Some(v) = i
            .inbound_conns
            .lock()
            .expect("conns lock")
            .get_mut(&peer.node_id)
        {
            v.retain(|(c, _)| c.stable_id() != conn.stable_id());
        }
    }
}

/// Serves a connection without a certificate (a node that joins): it may only make requests,
/// small ones, a few at a time (the QUIC limits it started with are kept), and it is closed
/// at once beyond the per-address and total caps, on its first datagram or stream of another
/// kind, and at the end of its lifetime.
async fn serve_unauthenticated(inner: std::sync::Weak<Inner>, conn: quinn::Connection) {
    let Some(i) = inner.upgrade() else { return };
    let remote = conn.remote_address();
    let Some(slot) = admit_unauthenticated(&i, remote.ip()) else {
        i.stats.unauth_conn_limit.fetch_add(1, Ordering::Relaxed);
        conn.close(
            CLOSE_TOO_MANY.into(),
            b"too many connections without a certificate",
        );
        return;
    };
    let (stats, lifetime) = (i.stats.clone(), i.cfg.unauth_conn_lifetime);
    drop(i);
    // A peer without a certificate gets no unidirectional stream credit at all; should one
    // appear anyway, it is refused unread.
    let uni = {
        let (conn, stats) = (conn.clone(), stats.clone());
        async move {
            while let Ok(mut recv) = conn.accept_uni().await {
                stats.unauthenticated.fetch_add(1, Ordering::Relaxed);
                let _ = recv.stop(STOP_REFUSED.into());
            }
        }
    };
    let bi = {
        let (inner, conn) = (inner.clone(), conn.clone());
        async move {
            while let Ok((send, recv)) = conn.accept_bi().await {
                tokio::spawn(serve_request(inner.clone(), None, remote, send, recv));
            }
        }
    };
    // Gossip is for members: the first datagram ends the connection.
    let dgram = {
        let (conn, stats) = (conn.clone(), stats.clone());
        async move {
            if conn.read_datagram().await.is_ok() {
                stats.unauthenticated.fetch_add(1, Ordering::Relaxed);
                conn.close(
                    CLOSE_UNAUTHENTICATED.into(),
                    b"datagrams need a certificate",
                );
            }
        }
    };
    let serve = async { tokio::join!(uni, bi, dgram) };
    tokio::select! {
        biased;
        _ = serve => {}
        _ = tokio::time::sleep(lifetime) => {
            stats.unauth_deadline.fetch_add(1, Ordering::Relaxed);
            conn.close(CLOSE_LIFETIME.into(), b"connection without a certificate expired");
        }
    }
    drop(slot);
}

/// Reads the frames of a member's unidirectional stream (Raft or snapshot) and delivers them.
async fn read_stream(inner: std::sync::Weak<Inner>, node: NodeId, mut recv: quinn::RecvStream) {
    let Some(max) = inner
        .upgrade()
        .map(|i| i.cfg.max_frame.max(i.cfg.max_snapshot_frame))
    else {
        return;
    };
    let mut decoder = frame::FrameDecoder::new(max);
    loop {
        // Read whatever has arrived (zero-copy chunks) and pop every complete frame.
        let chunk = match recv.read_chunk(1 << 20, true).await {
            Ok(Some(c)) => c,
            Ok(None) => {
                if decoder.pending() > 0 {
                    if let Some(i) = inner.upgrade() {
                        i.stats.truncated.fetch_add(1, Ordering::Relaxed);
                    }
                }
                return;
            }
            Err(_) => return,
        };
        let mut frames = Vec::new();
        let fed = decoder.feed(&chunk.bytes, |env| {
            frames.push(env);
            true
        });
        let mut failed = fed.err();
        let mut frames = frames.into_iter();
        loop {
            let Some(i) = inner.upgrade() else { return };
            let env = match frames.next() {
                Some(env) => env,
                None => match failed.take() {
                    Some(e) => {
                        // Framing is lost on this stream: count, stop it, keep the connection.
                        i.stats.count_frame_error(&e);
                        let _ = recv.stop(STOP_REFUSED.into());
                        return;
                    }
                    None => break,
                },
            };
            let (tx, limit) = match env.kind {
                Kind::Raft => (&i.tx.raft, i.cfg.max_frame),
                Kind::Snapshot => (&i.tx.snapshot, i.cfg.max_snapshot_frame),
                _ => {
                    i.stats.unknown_kind.fetch_add(1, Ordering::Relaxed);
                    let _ = recv.stop(STOP_REFUSED.into());
                    return;
                }
            };
            if env.body.len() > limit {
                i.stats.oversized.fetch_add(1, Ordering::Relaxed);
                let _ = recv.stop(STOP_REFUSED.into());
                return;
            }
            let tx = tx.clone();
            let stats = i.stats.clone();
            drop(i);
            // Back-pressure: a full inbound channel slows this stream, not the others.
            if tx.send((node, env.body)).await.is_ok() {
                stats.received.fetch_add(1, Ordering::Relaxed);
            } else {
                stats.inbound_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Reads the one request of a bidirectional stream and delivers it. A peer without a
/// certificate gets [`MAX_UNAUTHENTICATED_REQUEST`] bytes, checked at the length prefix, and
/// `unauth_request_timeout` to send them; what it sends is counted in
/// [`WireStats::unauth_buffered`] until the request is answered or dropped.
async fn serve_request(
    inner: std::sync::Weak<Inner>,
    peer: Option<NodeCertificate>,
    remote: SocketAddr,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let Some((max, deadline, stats)) = inner.upgrade().map(|i| {
        (
            i.cfg.max_frame,
            i.cfg.unauth_request_timeout,
            i.stats.clone(),
        )
    }) else {
        return;
    };
    let (r, held) = if peer.is_some() {
        (read_single_frame(&mut recv, max, None).await, None)
    } else {
        // A node without a certificate may only join: its requests are small.
        let max = max.min(MAX_UNAUTHENTICATED_REQUEST);
        let mut held = Held::new(stats.clone());
        match tokio::time::timeout(deadline, read_single_frame(&mut recv, max, Some(&mut held)))
            .await
        {
            Ok(r) => (r, Some(held)),
            Err(_) => {
                stats.unauth_deadline.fetch_add(1, Ordering::Relaxed);
                let _ = recv.stop(STOP_DEADLINE.into());
                return;
            }
        }
    };
    let body = match r {
        Ok(Some(Envelope {
            kind: Kind::Request,
            body,
        })) => body,
        Ok(Some(_)) => {
            stats.unknown_kind.fetch_add(1, Ordering::Relaxed);
            let _ = recv.stop(STOP_REFUSED.into());
            return;
        }
        Ok(None) => return,
        Err(ReadError::Frame(e)) => {
            stats.count_frame_error(&e);
            let _ = recv.stop(STOP_REFUSED.into());
            return;
        }
        Err(ReadError::Io(_)) => return,
    };
    let Some(i) = inner.upgrade() else { return };
    let req = IncomingRequest {
        from: peer,
        remote,
        body,
        reply: send,
        _held: held,
    };
    if i.tx.requests.try_send(req).is_err() {
        i.stats.inbound_dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    i.stats.received.fetch_add(1, Ordering::Relaxed);
}

/// Building a node's QUIC configuration failed.
#[derive(Debug, Error)]
pub enum SetupError {
    /// The certificates or keys are unusable.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// The TLS configuration is not usable for QUIC.
    #[error("QUIC: {0}")]
    Quic(String),
}

/// The ALPN protocol id of shoal's node-to-node traffic.
pub const ALPN: &[u8] = b"shoal/1";

fn quic_transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // Peers are detected as gone by Raft and SWIM; QUIC only needs to notice dead paths.
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(30)).expect("in range"),
    ));
    t.keep_alive_interval(Some(Duration::from_secs(5)));
    t.datagram_receive_buffer_size(Some(1 << 20));
    t.max_concurrent_uni_streams(MEMBER_UNI_STREAMS.into());
    t.max_concurrent_bidi_streams(MEMBER_BIDI_STREAMS.into());
    // `SHOAL_QUIC_GSO=0` (the Jepsen suite, under netem): one datagram per send, so that a
    // dropped, duplicated or corrupted packet is one datagram, not a whole segmented batch.
    if std::env::var(QUIC_GSO_ENV).as_deref() == Ok("0") {
        t.enable_segmentation_offload(false);
    }
    t
}

/// The environment variable that turns QUIC's UDP segmentation offload off when `0`.
pub const QUIC_GSO_ENV: &str = "SHOAL_QUIC_GSO";

fn quic_client_transport_config() -> Arc<quinn::TransportConfig> {
    Arc::new(quic_transport_config())
}

/// The transport parameters a node's server side starts every connection with: those of a peer
/// without a certificate (no unidirectional stream, [`MAX_UNAUTHENTICATED_STREAMS`] request
/// streams, a receive window of [`UNAUTHENTICATED_RECEIVE_WINDOW`]), because they are sent
/// before the client's certificate is seen. A member's connection gets its own limits once
/// the handshake has authenticated it; QUIC can raise credit later, never take it back.
fn quic_server_transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quic_transport_config();
    t.max_concurrent_uni_streams(0u32.into());
    t.max_concurrent_bidi_streams(MAX_UNAUTHENTICATED_STREAMS.into());
    t.receive_window(UNAUTHENTICATED_RECEIVE_WINDOW.into());
    Arc::new(t)
}

/// Builds the QUIC server and client configurations of a node from its identity: mutual TLS
/// 1.3 rooted in the cluster CA, denied ids refused, shoal's transport parameters.
pub fn quic_configs(
    identity: &pki::NodeIdentity,
    ca_der: &[u8],
    denylist: Denylist,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), SetupError> {
    let server = pki::server_config(identity, ca_der, denylist.clone(), vec![ALPN.to_vec()])?;
    let client = pki::client_config(identity, ca_der, denylist, vec![ALPN.to_vec()])?;
    let server = quinn::crypto::rustls::QuicServerConfig::try_from(server)
        .map_err(|e| SetupError::Quic(e.to_string()))?;
    let client = quinn::crypto::rustls::QuicClientConfig::try_from(client)
        .map_err(|e| SetupError::Quic(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server));
    server.transport_config(quic_server_transport_config());
    let mut client = quinn::ClientConfig::new(Arc::new(client));
    client.transport_config(quic_client_transport_config());
    Ok((server, client))
}

/// The client configuration of a node that joins: no certificate; the manager must prove that
/// its CA has the token's digest before anything secret is sent.
pub fn join_quic_config(ca_digest: [u8; 32]) -> Result<quinn::ClientConfig, SetupError> {
    let client = pki::join_client_config(ca_digest, vec![ALPN.to_vec()])?;
    let client = quinn::crypto::rustls::QuicClientConfig::try_from(client)
        .map_err(|e| SetupError::Quic(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(client));
    client.transport_config(quic_client_transport_config());
    Ok(client)
}

/// A quinn endpoint on a real UDP socket bound to `addr`, with quinn's default endpoint
/// configuration (random stateless-reset key: peers of a restarted node do not notice the
/// restart before their idle timeout). A node uses [`udp_endpoint_with_config`] with
/// [`endpoint_config`].
pub fn udp_endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> std::io::Result<quinn::Endpoint> {
    udp_endpoint_with_config(addr, quinn::EndpointConfig::default(), server)
}

/// A quinn endpoint on a real UDP socket bound to `addr`, with the endpoint configuration
/// `config` (from [`endpoint_config`], so that a restarted node resets its peers' stale
/// connections).
pub fn udp_endpoint_with_config(
    addr: SocketAddr,
    config: quinn::EndpointConfig,
    server: Option<quinn::ServerConfig>,
) -> std::io::Result<quinn::Endpoint> {
    let socket = std::net::UdpSocket::bind(addr)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| std::io::Error::other("no async runtime found (call from within tokio)"))?;
    quinn::Endpoint::new(config, server, socket, runtime)
}

/// HKDF salt of the endpoint keys: the domain they belong to, so they never collide with any
/// other use of the node's key.
const ENDPOINT_KEYS_SALT: &[u8] = b"shoal/1 quic endpoint keys";
/// HKDF info of the stateless-reset key.
const RESET_KEY_INFO: &[u8] = b"stateless reset";
/// HKDF info of the connection-id key.
const CID_KEY_INFO: &[u8] = b"connection ids";

/// The QUIC endpoint configuration of a node whose persistent private key is `key`: see
/// [`endpoint_config_from_secret`]. A restarted node with the same key resets, on their first
/// packet, the connections its peers still hold to its previous incarnation.
pub fn endpoint_config(key: &pki::NodeKey) -> quinn::EndpointConfig {
    endpoint_config_from_secret(key.key_der())
}

/// A QUIC endpoint configuration whose stateless-reset key and connection-id key are derived
/// (HKDF-SHA256) from `secret`, which must be secret and survive restarts.
///
/// quinn computes the stateless-reset token of a connection id as HMAC(reset key, id), and
/// only answers a packet for an unknown connection with a reset if its connection-id generator
/// recognizes the id as one it could have issued. With both keys derived from the same secret,
/// an endpoint restarted after a crash recognizes the ids its previous incarnation issued and
/// answers the peers' packets on their now stale connections with a reset they accept: those
/// connections close at once instead of after the 30 s idle timeout.
pub fn endpoint_config_from_secret(secret: &[u8]) -> quinn::EndpointConfig {
    use ring::{hkdf, hmac};
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, ENDPOINT_KEYS_SALT).extract(secret);
    let derive = |info: &[u8]| {
        let mut out = [0u8; 32];
        prk.expand(&[info], hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut out))
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        out
    };
    let reset_key = hmac::Key::new(hmac::HMAC_SHA256, &derive(RESET_KEY_INFO));
    let cid_key = derive(CID_KEY_INFO);
    let cid_key = u64::from_le_bytes(cid_key[..8].try_into().expect("8 bytes"));
    let mut config = quinn::EndpointConfig::new(Arc::new(reset_key));
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    config
}
