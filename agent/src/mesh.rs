//! The routing mesh: every node listens on each service's ingress ports (TCP and UDP) and
//! forwards each connection, or each UDP flow, to a ready task of the service on any node,
//! straight to the task's node address and port (no second hop through another node's proxy).
//!
//! The table comes from the managers with the node's assignments ([`Mesh::update`]), so the
//! listeners follow services being created, scaled, updated and removed as soon as the node
//! hears of it. Balancing: least outstanding connections among ready tasks (running, healthy
//! or unchecked, not being stopped), the ties taken in turn; a backend that refuses or does
//! not answer is skipped for [`DOWN_FOR`] and the connection tried on another one at once (one
//! that took a request and closed without answering is skipped too, for the client's retry).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use shoal_cluster::{object_id_string, ServiceEndpoints, TaskId};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

/// How long a backend that refused or timed out is passed over (unless no other is left).
pub const DOWN_FOR: Duration = Duration::from_secs(2);

/// The longest a connection to a backend may take before the next one is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a new connection waits for a backend when none is ready or every one refused.
const NO_BACKEND_WAIT: Duration = Duration::from_secs(2);

/// A UDP flow without a datagram either way for this long is forgotten.
const UDP_IDLE: Duration = Duration::from_secs(30);

/// Most UDP flows one port keeps at once (each holds a socket).
const MAX_UDP_FLOWS: usize = 16_384;

/// Buffer of each direction of a proxied TCP connection, at first and once a read filled it.
const SMALL_BUFFER: usize = 8 * 1024;
const LARGE_BUFFER: usize = 256 * 1024;

/// How often ports that could not be bound are tried again.
const REBIND_EVERY: Duration = Duration::from_secs(2);

/// One task behind one ingress port, with its counters.
pub struct Backend {
    task: TaskId,
    addr: SocketAddr,
    active: AtomicU64,
    connections: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    failures: AtomicU64,
    /// Milliseconds since the mesh started until which it is passed over.
    down_until: AtomicU64,
}

/// Where one ingress port leads now.
struct RouteState {
    name: String,
    backends: Vec<Arc<Backend>>,
}

/// One ingress port: its current route (swapped on each table change) and turn counter.
struct Route {
    published: u16,
    udp: bool,
    state: RwLock<Arc<RouteState>>,
    turn: AtomicUsize,
    /// Bumped at each new state: a UDP flow checks its backend only when it moved.
    generation: AtomicU64,
}

impl Route {
    /// Whether `b` is still one of this port's backends.
    fn serves(&self, b: &Arc<Backend>) -> bool {
        let st = self.state.read().expect("route");
        st.backends.iter().any(|x| Arc::ptr_eq(x, b))
    }
}

struct Listener {
    route: Arc<Route>,
    /// The accept (or receive) loop; `None` while the port could not be bound.
    task: Option<JoinHandle<()>>,
    /// Why it could not be bound.
    error: String,
}

#[derive(Default)]
struct Inner {
    table: Vec<ServiceEndpoints>,
    listeners: BTreeMap<(u16, bool), Listener>,
    backends: HashMap<(TaskId, SocketAddr, bool), Arc<Backend>>,
    rebinding: bool,
}

/// This node's share of the routing mesh.
pub struct Mesh {
    addr: IpAddr,
    started: Instant,
    inner: Mutex<Inner>,
}

/// One backend's counters, for `/metrics`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendStats {
    /// The service's name.
    pub service: String,
    /// The ingress port and protocol (`8080/tcp`).
    pub port: String,
    /// The task (16 hex digits).
    pub task: String,
    /// The task's address.
    pub backend: String,
    /// Connections (UDP flows) open now.
    pub active: u64,
    /// Connections (UDP flows) made.
    pub connections: u64,
    /// Bytes from clients to the task.
    pub bytes_in: u64,
    /// Bytes from the task to clients.
    pub bytes_out: u64,
    /// Connections to it that failed (refused, timed out, UDP port unreachable).
    pub failures: u64,
}

/// One listener's state, for `/metrics` and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortStatus {
    /// The service's name.
    pub service: String,
    /// `8080/tcp`.
    pub port: String,
    /// Ready backends.
    pub backends: usize,
    /// Why the port is not bound (empty: listening).
    pub error: String,
}

fn port_name(published: u16, udp: bool) -> String {
    format!("{published}/{}", if udp { "udp" } else { "tcp" })
}

impl Mesh {
    /// A mesh listening on `addr` (the node's advertised address, or `--ingress-addr`).
    pub fn new(addr: IpAddr) -> Arc<Mesh> {
        Arc::new(Mesh {
            addr,
            started: Instant::now(),
            inner: Mutex::new(Inner::default()),
        })
    }

    /// The address the ingress ports listen on.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The endpoint table last received.
    pub fn table(&self) -> Vec<ServiceEndpoints> {
        self.inner.lock().expect("mesh").table.clone()
    }

    /// Follows a new table: routes swapped, listeners opened for new ports and closed for
    /// ports no service publishes any more (their open connections go on).
    pub fn update(self: &Arc<Self>, table: Vec<ServiceEndpoints>) {
        let mut inner = self.inner.lock().expect("mesh");
        let mut wanted: BTreeMap<(u16, bool), RouteState> = BTreeMap::new();
        let mut used = HashMap::new();
        for s in &table {
            for p in &s.ports {
                if p.published == 0 {
                    continue;
                }
                let mut backends = Vec::new();
                for t in s.tasks.iter().filter(|t| t.ready) {
                    let Some(port) = t.port_for(p.target, p.udp) else {
                        continue;
                    };
                    let Ok(ip) = t.ip.parse::<IpAddr>() else {
                        continue;
                    };
                    let key = (t.task, SocketAddr::new(ip, port), p.udp);
                    let b = inner.backends.get(&key).cloned().unwrap_or_else(|| {
                        Arc::new(Backend {
                            task: t.task,
                            addr: key.1,
                            active: AtomicU64::new(0),
                            connections: AtomicU64::new(0),
                            bytes_in: AtomicU64::new(0),
                            bytes_out: AtomicU64::new(0),
                            failures: AtomicU64::new(0),
                            down_until: AtomicU64::new(0),
                        })
                    });
                    used.insert(key, b.clone());
                    backends.push(b);
                }
                wanted.insert(
                    (p.published, p.udp),
                    RouteState {
                        name: s.name.clone(),
                        backends,
                    },
                );
            }
        }
        inner.backends = used;
        inner.table = table;
        let gone: Vec<(u16, bool)> = inner
            .listeners
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        for k in gone {
            if let Some(l) = inner.listeners.remove(&k) {
                tracing::info!(port = %port_name(k.0, k.1), "ingress port closed");
                if let Some(t) = l.task {
                    t.abort();
                }
            }
        }
        for (key, state) in wanted {
            match inner.listeners.get(&key) {
                Some(l) => {
                    *l.route.state.write().expect("route") = Arc::new(state);
                    l.route.generation.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    let route = Arc::new(Route {
                        published: key.0,
                        udp: key.1,
                        state: RwLock::new(Arc::new(state)),
                        turn: AtomicUsize::new(0),
                        generation: AtomicU64::new(0),
                    });
                    let mut l = Listener {
                        route,
                        task: None,
                        error: String::new(),
                    };
                    self.bind(&mut l);
                    inner.listeners.insert(key, l);
                }
            }
        }
        let unbound = inner.listeners.values().any(|l| l.task.is_none());
        if unbound && !inner.rebinding {
            inner.rebinding = true;
            let me = Arc::downgrade(self);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(REBIND_EVERY).await;
                    let Some(mesh) = me.upgrade() else { return };
                    let mut inner = mesh.inner.lock().expect("mesh");
                    let mut left = false;
                    for l in inner.listeners.values_mut().filter(|l| l.task.is_none()) {
                        mesh.bind(l);
                        left |= l.task.is_none();
                    }
                    if !left {
                        inner.rebinding = false;
                        return;
                    }
                }
            });
        }
    }

    /// Opens a listener's port and starts serving it (or records why it could not).
    fn bind(self: &Arc<Self>, l: &mut Listener) {
        let at = SocketAddr::new(self.addr, l.route.published);
        let route = l.route.clone();
        let me = self.clone();
        let started = if route.udp {
            std::net::UdpSocket::bind(at)
                .and_then(|s| {
                    s.set_nonblocking(true)?;
                    UdpSocket::from_std(s)
                })
                .map(|s| tokio::spawn(serve_udp(me, route, Arc::new(s))))
        } else {
            std::net::TcpListener::bind(at)
                .and_then(|s| {
                    s.set_nonblocking(true)?;
                    TcpListener::from_std(s)
                })
                .map(|s| tokio::spawn(serve_tcp(me, route, s)))
        };
        let port = port_name(l.route.published, l.route.udp);
        match started {
            Ok(task) => {
                tracing::info!(port = %port, addr = %at, "ingress port listening");
                l.task = Some(task);
                l.error.clear();
            }
            Err(e) => {
                let why = format!("cannot listen on {at}: {e}");
                if why != l.error {
                    tracing::warn!(port = %port, "ingress port: {why} (trying again every {} s)", REBIND_EVERY.as_secs());
                }
                l.error = why;
            }
        }
    }

    /// Every ingress port of this node: its service, ready backends, and whether it listens.
    pub fn ports(&self) -> Vec<PortStatus> {
        let inner = self.inner.lock().expect("mesh");
        inner
            .listeners
            .values()
            .map(|l| {
                let st = l.route.state.read().expect("route").clone();
                PortStatus {
                    service: st.name.clone(),
                    port: port_name(l.route.published, l.route.udp),
                    backends: st.backends.len(),
                    error: l.error.clone(),
                }
            })
            .collect()
    }

    /// Every backend's counters.
    pub fn stats(&self) -> Vec<BackendStats> {
        let inner = self.inner.lock().expect("mesh");
        let mut out = Vec::new();
        for l in inner.listeners.values() {
            let st = l.route.state.read().expect("route").clone();
            for b in &st.backends {
                out.push(BackendStats {
                    service: st.name.clone(),
                    port: port_name(l.route.published, l.route.udp),
                    task: object_id_string(b.task),
                    backend: b.addr.to_string(),
                    active: b.active.load(Ordering::Relaxed),
                    connections: b.connections.load(Ordering::Relaxed),
                    bytes_in: b.bytes_in.load(Ordering::Relaxed),
                    bytes_out: b.bytes_out.load(Ordering::Relaxed),
                    failures: b.failures.load(Ordering::Relaxed),
                });
            }
        }
        out
    }

    /// Closes every port (the node left the swarm).
    pub fn close(&self) {
        let mut inner = self.inner.lock().expect("mesh");
        for (_, l) in std::mem::take(&mut inner.listeners) {
            if let Some(t) = l.task {
                t.abort();
            }
        }
        inner.backends.clear();
        inner.table.clear();
    }

    /// The backend for a new connection: fewest outstanding connections among those not
    /// passed over (all of them if every one is), not one of `tried`, ties taken in turn.
    fn pick(&self, route: &Route, st: &RouteState, tried: &[usize]) -> Option<usize> {
        let n = st.backends.len();
        if n == 0 {
            return None;
        }
        let start = route.turn.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        let mut best: Option<((bool, u64), usize)> = None;
        for i in 0..n {
            let j = (start + i) % n;
            if tried.contains(&j) {
                continue;
            }
            let b = &st.backends[j];
            let score = (
                b.down_until.load(Ordering::Relaxed) > now,
                b.active.load(Ordering::Relaxed),
            );
            if best.is_none_or(|(s, _)| score < s) {
                best = Some((score, j));
            }
        }
        best.map(|(_, j)| j)
    }

    fn failed(&self, b: &Backend, why: &std::io::Error) {
        b.failures.fetch_add(1, Ordering::Relaxed);
        b.down_until.store(
            self.now_ms() + DOWN_FOR.as_millis() as u64,
            Ordering::Relaxed,
        );
        tracing::debug!(backend = %b.addr, task = %object_id_string(b.task), "ingress backend failed: {why}");
    }
}

/// Counts a connection (or flow) open on a backend while it lives.
struct Active(Arc<Backend>);

impl Active {
    fn new(b: Arc<Backend>) -> Active {
        b.active.fetch_add(1, Ordering::Relaxed);
        b.connections.fetch_add(1, Ordering::Relaxed);
        Active(b)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve_tcp(mesh: Arc<Mesh>, route: Arc<Route>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                tokio::spawn(proxy_tcp(mesh.clone(), route.clone(), client));
            }
            Err(e) => {
                // Out of descriptors and the like: wait a little rather than spin.
                tracing::warn!(port = route.published, "ingress accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One client connection: a backend found (trying the next at once when one refuses), then
/// bytes copied both ways until either side closes.
async fn proxy_tcp(mesh: Arc<Mesh>, route: Arc<Route>, mut client: TcpStream) {
    let mut st = route.state.read().expect("route").clone();
    let mut tried = Vec::new();
    let waiting = Instant::now();
    let (backend, mut upstream) = loop {
        let Some(j) = mesh.pick(&route, &st, &tried) else {
            // Every backend refused, or there is none (the table is changing: a task being
            // replaced, a node just down): the client waits a little for the next table.
            if waiting.elapsed() >= NO_BACKEND_WAIT {
                tracing::debug!(service = %st.name, port = route.published, "no ready backend: connection closed");
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            st = route.state.read().expect("route").clone();
            tried.clear();
            continue;
        };
        tried.push(j);
        let b = st.backends[j].clone();
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(b.addr)).await {
            Ok(Ok(s)) => break (b, s),
            Ok(Err(e)) => mesh.failed(&b, &e),
            Err(_) => mesh.failed(&b, &std::io::ErrorKind::TimedOut.into()),
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let active = Active::new(backend);
    let (client_read, client_write) = client.split();
    let (task_read, task_write) = upstream.split();
    let (asked, answered) = tokio::join!(
        pipe(client_read, task_write, &active.0.bytes_in),
        pipe(task_read, client_write, &active.0.bytes_out),
    );
    // A task that took a request and closed without a byte of answer is failing (dying, say,
    // with its listener still open): pass it over for a while, so the client's retry goes to
    // another one.
    if asked > 0 && answered == 0 {
        mesh.failed(
            &active.0,
            &std::io::Error::other("closed the connection without answering"),
        );
    }
}

/// Copies one direction of a proxied connection until its reader ends, then passes the end on
/// (a half-close, so the other direction goes on); returns the bytes copied. The buffer starts
/// small (most connections carry a few kilobytes) and grows once a read fills it (a bulk
/// transfer).
async fn pipe(
    mut from: tokio::net::tcp::ReadHalf<'_>,
    mut to: tokio::net::tcp::WriteHalf<'_>,
    counter: &AtomicU64,
) -> u64 {
    let mut total = 0u64;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; SMALL_BUFFER];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        counter.fetch_add(n as u64, Ordering::Relaxed);
        total += n as u64;
        if n == buf.len() && buf.len() < LARGE_BUFFER {
            buf = vec![0u8; LARGE_BUFFER];
        }
    }
    let _ = to.shutdown().await;
    total
}

/// A client's UDP flow: its own socket towards its backend (so that replies find the client),
/// alive until idle or its backend leaves the table.
struct Flow {
    upstream: Arc<UdpSocket>,
    backend: Arc<Backend>,
    alive: Arc<AtomicBool>,
    /// The route's generation when the backend was last found in it.
    checked: u64,
}

async fn serve_udp(mesh: Arc<Mesh>, route: Arc<Route>, socket: Arc<UdpSocket>) {
    let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    let mut received = 0u64;
    loop {
        received += 1;
        if received.is_multiple_of(4096) {
            flows.retain(|_, f| f.alive.load(Ordering::Relaxed));
        }
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // An ICMP error for an earlier reply, or out of memory: go on.
                tracing::debug!(port = route.published, "ingress udp receive: {e}");
                continue;
            }
        };
        if flows
            .get(&peer)
            .is_some_and(|f| !f.alive.load(Ordering::Relaxed))
        {
            flows.remove(&peer);
        }
        if !flows.contains_key(&peer) {
            if flows.len() >= MAX_UDP_FLOWS {
                flows.retain(|_, f| f.alive.load(Ordering::Relaxed));
                if flows.len() >= MAX_UDP_FLOWS {
                    continue;
                }
            }
            let checked = route.generation.load(Ordering::Relaxed);
            let st = route.state.read().expect("route").clone();
            let Some(j) = mesh.pick(&route, &st, &[]) else {
                continue;
            };
            let backend = st.backends[j].clone();
            let any: SocketAddr = if backend.addr.is_ipv4() {
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let upstream = match UdpSocket::bind(any).await {
                Ok(u) => u,
                Err(e) => {
                    tracing::warn!("ingress udp: cannot open a socket: {e}");
                    continue;
                }
            };
            let flow = Flow {
                upstream: Arc::new(upstream),
                backend: backend.clone(),
                alive: Arc::new(AtomicBool::new(true)),
                checked,
            };
            tokio::spawn(udp_replies(
                mesh.clone(),
                Active::new(backend),
                flow.upstream.clone(),
                socket.clone(),
                peer,
                flow.alive.clone(),
            ));
            flows.insert(peer, flow);
        }
        let Some(flow) = flows.get_mut(&peer) else {
            continue;
        };
        let generation = route.generation.load(Ordering::Relaxed);
        if flow.checked != generation && route.serves(&flow.backend) {
            flow.checked = generation;
        }
        if flow.checked != generation {
            // Its task left the table (stopped, drained, its node down): the flow goes to
            // another one from its next datagram.
            flow.alive.store(false, Ordering::Relaxed);
            flows.remove(&peer);
            continue;
        }
        if flow
            .upstream
            .send_to(&buf[..n], flow.backend.addr)
            .await
            .is_ok()
        {
            flow.backend.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

/// Carries a flow's replies back to its client until it is idle or its backend refuses.
async fn udp_replies(
    mesh: Arc<Mesh>,
    active: Active,
    upstream: Arc<UdpSocket>,
    socket: Arc<UdpSocket>,
    peer: SocketAddr,
    alive: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 65536];
    let from_task = |a: SocketAddr| {
        let b = active.0.addr;
        // A task bound to any address answers a loopback peer from 127.0.0.1 whichever
        // loopback address it was sent to (several agents on one machine).
        a == b || (a.port() == b.port() && a.ip().is_loopback() && b.ip().is_loopback())
    };
    loop {
        match tokio::time::timeout(UDP_IDLE, upstream.recv_from(&mut buf)).await {
            Ok(Ok((_, from))) if !from_task(from) => {}
            Ok(Ok((n, _))) => {
                if socket.send_to(&buf[..n], peer).await.is_ok() {
                    active.0.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
            Ok(Err(e)) => {
                mesh.failed(&active.0, &e);
                break;
            }
            Err(_) => break,
        }
    }
    alive.store(false, Ordering::Relaxed);
}
