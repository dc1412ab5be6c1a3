//! A UDP socket that lets the real quinn endpoint run inside a [turmoil] simulation.
//!
//! quinn talks to the network only through [`quinn::AsyncUdpSocket`], and its [`quinn::TokioRuntime`]
//! works unchanged inside a turmoil host: its timers are tokio timers, which turmoil drives on
//! simulated time. So the only glue needed is [`SimUdpSocket`], which forwards quinn's datagrams
//! to a [`turmoil::net::UdpSocket`]. [`bind`] creates one and [`endpoint`] wraps it in a
//! [`quinn::Endpoint`]; from there on the code under test is the same as on a real network.
//!
//! # How it works
//!
//! * **Sending** uses turmoil's `try_send_to`. turmoil has no send-side back-pressure, so the
//!   socket is always writable. Like `quinn-udp` on a real socket, errors from an individual send
//!   (for example turmoil's "connection refused" when no link to the destination exists) are
//!   logged and swallowed: to QUIC they are simply lost datagrams, and returning them would make
//!   quinn tear the connection down.
//! * **Receiving** polls turmoil's `readable()` future and then drains the queue with
//!   `try_recv_from`. The future is created once and kept across `poll_recv` calls until it
//!   completes, so its waker stays registered with turmoil's channel.
//!
//! # Pitfalls
//!
//! * While `readable()` is pending it **holds the socket's receive lock**, and `try_recv_from`
//!   fails with `WouldBlock` ("socket is being read by another task") as long as it does. The
//!   stored future must therefore be polled to completion (and dropped) *before* calling
//!   `try_recv_from`, never the other way round; otherwise nothing is ever received.
//! * turmoil sockets panic when used outside a simulated host (there is no "current host").
//!   [`bind`] and [`SimUdpSocket::try_send`][quinn::AsyncUdpSocket::try_send] check this first and
//!   return an [`io::Error`] instead. Create sockets and endpoints inside the host's closure and
//!   do not let them outlive the host or move to another host: turmoil unbinds the port of
//!   *whatever host is current* when the socket is dropped.
//! * turmoil panics (rather than erroring) when asked to bind an unspecified or loopback address
//!   of the other IP version (`[::]:0` in an IPv4 simulation). [`bind`] turns that panic into an
//!   [`io::ErrorKind::InvalidInput`] error; turmoil's panic message still reaches the panic hook.
//! * turmoil's default UDP receive queue holds 64 datagrams and silently drops the rest, and its
//!   default latency (0–100 ms, exponentially distributed) reorders heavily, which QUIC reads as
//!   loss. Tests that move bulk data should raise `Builder::udp_capacity` and bound the latency
//!   with `Builder::min_message_latency`/`Builder::max_message_latency`.
//! * A server drops 1-RTT packets that overtake the client's handshake-finished packet, and
//!   with heavy reordering that loses the application datagrams coalesced into them (streams are
//!   retransmitted, datagrams are not). Tests counting datagrams should wait one maximum latency
//!   after connecting before sending.
//! * turmoil copies a datagram into the caller's buffer and silently truncates it if the buffer is
//!   too small. quinn's receive buffers are 64 KiB each, larger than any datagram it sends.
//! * No ECN and no destination address are reported (`RecvMeta::ecn`/`dst_ip` are `None`); quinn
//!   then disables ECN and does not need the local IP for anything a test relies on.
//! * turmoil never fragments, so [`SimUdpSocket`] reports `may_fragment() == false`, which lets
//!   quinn run path-MTU discovery (and probe up to its configured upper bound successfully).
//! * Same seed, same run — only if quinn's RNG is seeded too. turmoil's event order is
//!   reproducible, but quinn-proto deliberately *skips random packet numbers* (to catch peers that
//!   acknowledge packets they never got), and the receiver answers the apparent gap with an
//!   immediate ACK. Those extra ACKs change how many datagrams are sent, which shifts turmoil's
//!   RNG stream (one latency draw per datagram), so with [`endpoint`] (OS-seeded RNG) two runs
//!   with the same turmoil seed diverge after a few hundred milliseconds. Use
//!   [`endpoint_with_config`] with `EndpointConfig::rng_seed` set (derived from the turmoil seed)
//!   for reproducible runs. Even then connection ids, reserved transport parameters and TLS
//!   secrets come from the OS RNG, so packet *sizes and bytes* still differ between runs; they do
//!   not change what is sent when. Compare protocol-level outcomes (what arrived, when, in what
//!   order), not bytes.

use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, EndpointConfig, UdpPoller};

/// The boxed, `'static` form of turmoil's `UdpSocket::readable()` future.
type Readable = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

/// How many times one `poll_recv` call re-arms the readiness future after a readiness event that
/// yielded no datagram, before yielding to the scheduler (guards against a busy loop).
const MAX_READINESS_ROUNDS: usize = 4;

/// A turmoil UDP socket usable as quinn's [`AsyncUdpSocket`].
///
/// Create it with [`bind`] inside a turmoil host and hand it to [`endpoint`]. See the
/// [module documentation](self) for how it maps quinn's calls onto turmoil and for the pitfalls.
pub struct SimUdpSocket {
    /// The turmoil socket, shared with the pending readiness future.
    inner: Arc<turmoil::net::UdpSocket>,
    /// The address the socket is bound to (cached: turmoil never changes it).
    local_addr: SocketAddr,
    /// The pending `readable()` future, kept between `poll_recv` calls. While it is `Some` and
    /// pending it holds turmoil's receive lock.
    readable: Mutex<Option<Readable>>,
}

impl SimUdpSocket {
    /// Wrap an already bound turmoil socket.
    fn new(inner: turmoil::net::UdpSocket) -> io::Result<Self> {
        let local_addr = inner.local_addr()?;
        Ok(Self {
            inner: Arc::new(inner),
            local_addr,
            readable: Mutex::new(None),
        })
    }

    /// A fresh readiness future that owns a handle to the socket, so it can be stored.
    fn readable_future(&self) -> Readable {
        let socket = Arc::clone(&self.inner);
        Box::pin(async move { socket.readable().await })
    }

    /// Move queued datagrams into `bufs`/`meta` without waiting; returns how many were received.
    fn drain(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> io::Result<usize> {
        let mut received = 0;
        for (buf, slot) in bufs.iter_mut().zip(meta.iter_mut()) {
            match self.inner.try_recv_from(buf) {
                Ok((len, addr)) => {
                    *slot = RecvMeta {
                        addr,
                        len,
                        stride: len,
                        ecn: None,
                        dst_ip: None,
                    };
                    received += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // Report what was already received; the error (if persistent) comes next time.
                Err(_) if received > 0 => break,
                Err(e) => return Err(e),
            }
        }
        Ok(received)
    }
}

impl fmt::Debug for SimUdpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimUdpSocket")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

/// A [`UdpPoller`] that is always ready: turmoil's UDP sockets have no send back-pressure.
#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncUdpSocket for SimUdpSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        ensure_in_host()?;
        let contents = transmit.contents;
        let destination = transmit.destination;
        let send = |datagram: &[u8]| {
            if let Err(e) = self.inner.try_send_to(datagram, destination) {
                // Same policy as quinn-udp on a real socket: a failed send is a lost datagram.
                tracing::debug!(
                    from = %self.local_addr,
                    to = %destination,
                    len = datagram.len(),
                    error = %e,
                    "simulated UDP send failed; datagram dropped"
                );
            }
        };
        match transmit.segment_size {
            // Several datagrams of `size` bytes each (the last may be shorter). quinn only does
            // this when `max_transmit_segments() > 1`, which is not the case here, but handle it.
            Some(size) if size > 0 && contents.len() > size => contents.chunks(size).for_each(send),
            _ => send(contents),
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        if bufs.is_empty() || meta.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut pending = self.readable.lock().unwrap_or_else(PoisonError::into_inner);
        for _ in 0..MAX_READINESS_ROUNDS {
            // First finish (and drop) a pending readiness future: it holds the receive lock.
            if let Some(readable) = pending.as_mut() {
                match readable.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(result) => {
                        *pending = None;
                        result?;
                    }
                }
            }
            let received = self.drain(bufs, meta)?;
            if received > 0 {
                return Poll::Ready(Ok(received));
            }
            // Queue empty: arm a new readiness future and poll it on the next round.
            *pending = Some(self.readable_future());
        }
        // Readiness kept firing without data; let other tasks run, then try again.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local_addr)
    }

    fn may_fragment(&self) -> bool {
        false
    }
}

/// Fail with an [`io::Error`] unless called from a turmoil host (turmoil itself would panic).
fn ensure_in_host() -> io::Result<()> {
    match turmoil::sim_elapsed() {
        Some(_) => Ok(()),
        None => Err(io::Error::other(
            "simulated UDP socket used outside a turmoil host",
        )),
    }
}

/// Bind a simulated UDP socket on the current turmoil host.
///
/// `addr` must be an unspecified (`0.0.0.0`, `::`) or loopback address of the simulation's IP
/// version; port 0 asks turmoil for an ephemeral port. Errors (never panics) when called outside a
/// turmoil host, when the port is in use, or when turmoil rejects the address.
pub async fn bind(addr: SocketAddr) -> io::Result<Arc<SimUdpSocket>> {
    ensure_in_host()?;
    let mut binding = Box::pin(turmoil::net::UdpSocket::bind(addr));
    // turmoil panics on an IP version mismatch; contain it and report an error instead.
    let socket = std::future::poll_fn(|cx| {
        match catch_unwind(AssertUnwindSafe(|| binding.as_mut().poll(cx))) {
            Ok(poll) => poll,
            Err(_) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "turmoil cannot bind {addr} (is its IP version that of the simulated network?)"
                ),
            ))),
        }
    })
    .await?;
    Ok(Arc::new(SimUdpSocket::new(socket)?))
}

/// Build a quinn endpoint on a simulated socket, with quinn's own tokio runtime and the default
/// [`EndpointConfig`].
///
/// Pass a `server_config` to accept incoming connections; every endpoint can connect out. Must be
/// called inside a turmoil host (quinn spawns its driver task on the host's tokio runtime).
/// quinn's RNG is seeded from the OS, so runs are not exactly reproducible; see
/// [`endpoint_with_config`].
pub fn endpoint(
    socket: Arc<SimUdpSocket>,
    server_config: Option<quinn::ServerConfig>,
) -> io::Result<quinn::Endpoint> {
    endpoint_with_config(socket, EndpointConfig::default(), server_config)
}

/// Like [`endpoint`], with an explicit [`EndpointConfig`].
///
/// Set `config.rng_seed(Some(seed))`, with `seed` derived from the turmoil seed (and, if wanted,
/// the host), to make quinn's protocol decisions reproducible: see the
/// [module documentation](self).
pub fn endpoint_with_config(
    socket: Arc<SimUdpSocket>,
    config: EndpointConfig,
    server_config: Option<quinn::ServerConfig>,
) -> io::Result<quinn::Endpoint> {
    ensure_in_host()?;
    quinn::Endpoint::new_with_abstract_socket(
        config,
        server_config,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
}
