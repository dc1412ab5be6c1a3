//! `transport-bench [--seconds S] [--rounds R]`: shoal's transport against bare quinn streams in
//! the same run (alternating, medians of R rounds), on loopback, with the same TLS configuration.
//! Prints one JSON line per case:
//! `{"case":..., "ours":X, "bare_quinn":Y, "ratio":X/Y}`.

use serde_json::json;
use shoal_transport::frame::{self, Kind};
use shoal_transport::net::{self, Transport, TransportConfig};
use shoal_transport::pki::{
    self, ClusterCa, ClusterId, Denylist, NodeIdentity, NodeKey, Role, DEFAULT_VALIDITY,
};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

fn identity(ca: &ClusterCa, id: u64) -> NodeIdentity {
    let key = NodeKey::generate().expect("key");
    let csr = key.csr_der(id).expect("csr");
    let cert = ca
        .issue(&csr, id, Role::Manager, DEFAULT_VALIDITY, SystemTime::now())
        .expect("issue");
    NodeIdentity::new(cert, key).expect("identity")
}

struct Pair {
    ca: ClusterCa,
    a: (quinn::ServerConfig, quinn::ClientConfig),
    b: (quinn::ServerConfig, quinn::ClientConfig),
}

fn pair() -> Pair {
    let ca = ClusterCa::generate(ClusterId::random()).expect("ca");
    let a = net::quic_configs(&identity(&ca, 1), ca.cert_der(), Denylist::new()).expect("a");
    let b = net::quic_configs(&identity(&ca, 2), ca.cert_der(), Denylist::new()).expect("b");
    Pair { ca, a, b }
}

fn any_port() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

/// Our transport: node 1 sends to node 2.
async fn ours(p: &Pair, secs: f64, size: usize, rtt_calls: usize) -> (f64, f64, Vec<u64>) {
    let ep_a = net::udp_endpoint(any_port(), Some(p.a.0.clone())).expect("endpoint");
    let ep_b = net::udp_endpoint(any_port(), Some(p.b.0.clone())).expect("endpoint");
    let addr_b = ep_b.local_addr().expect("addr");
    let cid = p.ca.cluster_id();
    let cfg = TransportConfig::default();
    let (ta, _ia) = Transport::start(ep_a, p.a.1.clone(), 1, cid, Denylist::new(), cfg.clone());
    let (_tb, ib) = Transport::start(ep_b, p.b.1.clone(), 2, cid, Denylist::new(), cfg);
    ta.set_peer_addr(2, addr_b);
    // Receiver counts messages and bytes.
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    let mut raft = ib.raft;
    tokio::spawn(async move {
        while let Some((_, b)) = raft.recv().await {
            c.fetch_add(b.len() as u64, Ordering::Relaxed);
        }
    });
    let mut requests = ib.requests;
    tokio::spawn(async move {
        while let Some(r) = requests.recv().await {
            let body = r.body.clone();
            r.respond(body);
        }
    });
    // Warm up the connection.
    ta.request(2, b"warm").await.expect("warm-up request");
    let run = |size: usize| {
        let (ta, count) = (ta.clone(), count.clone());
        async move {
            let stop = Arc::new(AtomicBool::new(false));
            let s = stop.clone();
            let sender = tokio::spawn(async move {
                let msg = vec![0x5a; size];
                while !s.load(Ordering::Relaxed) {
                    if !ta.send_raft(2, msg.clone()) {
                        tokio::task::yield_now().await;
                    }
                }
            });
            measure_rate(&count, secs, stop, sender).await
        }
    };
    let small = run(size).await / size as f64;
    let bulk = run(64 << 10).await / 1e6;
    let mut rtts = Vec::with_capacity(rtt_calls);
    for _ in 0..rtt_calls {
        let t = Instant::now();
        ta.request(2, &[1u8; 32]).await.expect("request");
        rtts.push(t.elapsed().as_micros() as u64);
    }
    (small, bulk, rtts)
}

/// Bare quinn: the same two endpoints' TLS, one uni stream of fixed-size chunks, and a
/// bidirectional stream per round trip.
async fn bare(p: &Pair, secs: f64, size: usize, rtt_calls: usize) -> (f64, f64, Vec<u64>) {
    let ep_a = net::udp_endpoint(any_port(), None).expect("endpoint");
    let ep_b = net::udp_endpoint(any_port(), Some(p.b.0.clone())).expect("endpoint");
    let addr_b = ep_b.local_addr().expect("addr");
    let name = pki::server_name(2, p.ca.cluster_id());
    let connecting = ep_a
        .connect_with(p.a.1.clone(), addr_b, &name)
        .expect("connect");
    let (conn, server) = tokio::join!(connecting, async {
        ep_b.accept().await.expect("incoming").await
    });
    let (conn, server) = (conn.expect("handshake"), server.expect("accept"));
    let count = Arc::new(AtomicU64::new(0));
    // Server: count bytes on uni streams, echo on bi streams.
    {
        let (server, count) = (server.clone(), count.clone());
        tokio::spawn(async move {
            while let Ok(mut r) = server.accept_uni().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 << 10];
                    while let Ok(Some(n)) = r.read(&mut buf).await {
                        count.fetch_add(n as u64, Ordering::Relaxed);
                    }
                });
            }
        });
    }
    {
        let server = server.clone();
        tokio::spawn(async move {
            while let Ok((mut s, mut r)) = server.accept_bi().await {
                tokio::spawn(async move {
                    if let Ok(b) = r.read_to_end(1 << 20).await {
                        let _ = s.write_all(&b).await;
                        let _ = s.finish();
                        let _ = s.stopped().await;
                    }
                });
            }
        });
    }
    let run = |size: usize| {
        let (conn, count) = (conn.clone(), count.clone());
        async move {
            let stop = Arc::new(AtomicBool::new(false));
            let s = stop.clone();
            let sender = tokio::spawn(async move {
                let mut st = conn.open_uni().await.expect("stream");
                // Same framing cost as ours would be unfair to bare quinn: plain chunks.
                let msg = vec![0x5a; size];
                while !s.load(Ordering::Relaxed) {
                    if st.write_all(&msg).await.is_err() {
                        break;
                    }
                }
                let _ = st.finish();
            });
            measure_rate(&count, secs, stop, sender).await
        }
    };
    let small = run(size).await / size as f64;
    let bulk = run(64 << 10).await / 1e6;
    let mut rtts = Vec::with_capacity(rtt_calls);
    for _ in 0..rtt_calls {
        let t = Instant::now();
        let (mut s, mut r) = conn.open_bi().await.expect("bi");
        s.write_all(&[1u8; 32]).await.expect("write");
        let _ = s.finish();
        let _ = r.read_to_end(1 << 20).await.expect("read");
        rtts.push(t.elapsed().as_micros() as u64);
    }
    (small, bulk, rtts)
}

/// Lets `sender` warm up, counts received bytes over `secs`, stops it, and lets the pipe drain.
/// Returns bytes per second.
async fn measure_rate(
    count: &AtomicU64,
    secs: f64,
    stop: Arc<AtomicBool>,
    sender: tokio::task::JoinHandle<()>,
) -> f64 {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (b0, t0) = (count.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let (b1, dt) = (count.load(Ordering::Relaxed), t0.elapsed());
    stop.store(true, Ordering::Relaxed);
    let _ = sender.await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    (b1 - b0) as f64 / dt.as_secs_f64()
}

fn pct(v: &mut [u64], p: f64) -> u64 {
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let mut secs = 2.0;
    let mut rounds = 3;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--seconds", Some(v)) => secs = v.parse().unwrap_or(secs),
            ("--rounds", Some(v)) => rounds = v.parse::<usize>().unwrap_or(rounds).max(1),
            _ => {
                eprintln!("usage: transport-bench [--seconds S] [--rounds R]");
                std::process::exit(2);
            }
        }
    }
    // Framing overhead check: an envelope adds a few bytes to a 256-byte message.
    let overhead = frame::encode(Kind::Raft, &[0u8; 256]).len() + frame::LEN_PREFIX - 256;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let p = pair();
    // Alternate ours and bare quinn, `rounds` times, and keep medians: the machine's speed drifts.
    let (mut os, mut ob, mut bs, mut bb) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut o_rtt, mut b_rtt) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let (s, b, r) = rt.block_on(ours(&p, secs, 256, 2000));
        os.push(s);
        ob.push(b);
        o_rtt.extend(r);
        let (s, b, r) = rt.block_on(bare(&p, secs, 256, 2000));
        bs.push(s);
        bb.push(b);
        b_rtt.extend(r);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (o_small, o_bulk, b_small, b_bulk) =
        (med(&mut os), med(&mut ob), med(&mut bs), med(&mut bb));
    let line = |case: &str, ours: f64, bare: f64| {
        println!(
            "{}",
            json!({
                "case": case,
                "ours": (ours * 10.0).round() / 10.0,
                "bare_quinn": (bare * 10.0).round() / 10.0,
                "ratio": (ours / bare * 1000.0).round() / 1000.0,
            })
        );
    };
    line("small_msgs_per_s", o_small, b_small);
    line("bulk_mb_per_s", o_bulk, b_bulk);
    line(
        "rtt_p50_us",
        pct(&mut o_rtt, 0.5) as f64,
        pct(&mut b_rtt, 0.5) as f64,
    );
    line(
        "rtt_p99_us",
        pct(&mut o_rtt, 0.99) as f64,
        pct(&mut b_rtt, 0.99) as f64,
    );
    eprintln!("envelope overhead per 256-byte message: {overhead} bytes");
}
