//! `mesh-bench`: shoal's routing mesh against HAProxy and against no proxy at all, side by
//! side on this machine, printing one JSON row per (target, case) and a summary.
//!
//! The same 3 backends (small HTTP/1.1 servers in a process of their own, keep-alive, a 2-byte
//! answer, or `n` bytes for `GET /bulk?n=`) are reached three ways:
//! - `direct`: the load generator spreads its connections over the 3 backends itself (round
//!   robin), the floor under any proxy;
//! - `shoal`: through shoal's ingress proxy ([`shoal_agent::mesh::Mesh`], the code every agent
//!   runs, given a table of the 3 backends as the managers would send it), in a process of its
//!   own with the agent's runtime (2 worker threads);
//! - `haproxy`: through HAProxy (Debian's, `apt-get install haproxy`) in TCP mode with the same
//!   balancing (`balance leastconn`, `nbthread 2`).
//!
//! Cases: `keepalive` (`--conns` connections, 32 by default, each sending requests one after
//! the other on its connection), `newconn` (as many workers, each request on a new connection
//! that the server closes), and `bulk` (one `GET` of `--bulk-mib` MiB, 1024 by default, on one
//! connection). Each request's latency is measured from the first byte written (before the
//! connection, for `newconn`) to the last byte of the answer. The targets take turns, case by
//! case, `--rounds` times (3 by default); a row holds the median round.
//!
//! Row: `{target, case, req_per_s, p50_us, p99_us, mb_per_s}` (`mb_per_s`: 10^6 bytes per
//! second of answers). Summary: shoal over HAProxy for each case, and whether the goals hold
//! (≥ 0.9× HAProxy's requests per second and ≤ 1.2× its p99 for the short requests, ≥ 0.9× its
//! throughput in bulk).
//!
//! `cargo bench -p shoal-agent --bench mesh-bench -- [--seconds S] [--conns C] [--rounds R]
//! [--bulk-mib M] [--targets direct,shoal,haproxy]`

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The ingress port's target in the table given to the mesh.
const TARGET_PORT: u16 = 80;

struct Opts {
    seconds: f64,
    conns: usize,
    rounds: usize,
    bulk_mib: u64,
    targets: Vec<String>,
}

fn parse_opts(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        seconds: 5.0,
        conns: 32,
        rounds: 3,
        bulk_mib: 1024,
        targets: vec!["direct".into(), "shoal".into(), "haproxy".into()],
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--bench" => {}
            "--seconds" => o.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--conns" => o.conns = value()?.parse().map_err(|e| format!("--conns: {e}"))?,
            "--rounds" => o.rounds = value()?.parse().map_err(|e| format!("--rounds: {e}"))?,
            "--bulk-mib" => {
                o.bulk_mib = value()?.parse().map_err(|e| format!("--bulk-mib: {e}"))?
            }
            "--targets" => o.targets = value()?.split(',').map(str::to_string).collect(),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if o.conns == 0 || o.rounds == 0 || o.seconds <= 0.0 {
        return Err("--conns, --rounds and --seconds must be positive".into());
    }
    Ok(o)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The child roles: this same binary, started by the bench.
    match args.first().map(String::as_str) {
        Some("--role-backends") => return run_backends(),
        Some("--role-mesh") => return run_mesh(&args[1..]),
        _ => {}
    }
    let opts = match parse_opts(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("mesh-bench: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = bench(&opts) {
        eprintln!("mesh-bench: {e}");
        std::process::exit(1);
    }
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts this binary in a role and reads the line it prints once ready.
fn spawn_role(args: &[&str]) -> Result<(Proc, String), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {args:?}: {e}"))?;
    let mut out = child.stdout.take().ok_or("no stdout")?;
    let proc = Proc(child);
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    use std::io::Read as _;
    while out.read(&mut byte).map_err(|e| e.to_string())? == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    Ok((proc, String::from_utf8_lossy(&line).into_owned()))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// The 3 backends: prints their addresses, comma-separated, then serves until killed.
fn run_backends() {
    runtime().block_on(async {
        let mut addrs = Vec::new();
        for _ in 0..3 {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            addrs.push(l.local_addr().expect("addr").to_string());
            tokio::spawn(async move {
                while let Ok((s, _)) = l.accept().await {
                    tokio::spawn(serve_http(s));
                }
            });
        }
        println!("{}", addrs.join(","));
        let _ = std::io::stdout().flush();
        std::future::pending::<()>().await;
    });
}

/// HTTP/1.1 requests on one connection: `ok`, or `n` zero bytes for `/bulk?n=`; closed after
/// a request that asks it (`Connection: close`).
async fn serve_http(mut s: TcpStream) {
    let _ = s.set_nodelay(true);
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(p) = find(&buf, b"\r\n\r\n") {
                break p + 4;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if buf.len() > 64 * 1024 {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        buf.drain(..end);
        let close = head.contains("connection: close");
        let bulk = head
            .split_whitespace()
            .nth(1)
            .and_then(|path| path.strip_prefix("/bulk?n="))
            .and_then(|n| n.parse::<u64>().ok());
        let sent = match bulk {
            Some(n) => {
                let header = format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n");
                let mut r = s.write_all(header.as_bytes()).await;
                let zeros = vec![0u8; 256 * 1024];
                let mut left = n;
                while r.is_ok() && left > 0 {
                    let k = left.min(zeros.len() as u64) as usize;
                    r = s.write_all(&zeros[..k]).await;
                    left -= k as u64;
                }
                r
            }
            None => {
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await
            }
        };
        if sent.is_err() || close {
            return;
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// shoal's mesh in front of the backends given: prints its address, then serves until killed.
fn run_mesh(args: &[String]) {
    let backends: Vec<SocketAddr> = args
        .first()
        .map(|a| a.split(',').filter_map(|s| s.parse().ok()).collect())
        .unwrap_or_default();
    runtime().block_on(async {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            l.local_addr().expect("addr").port()
        };
        let mesh = shoal_agent::mesh::Mesh::new("127.0.0.1".parse().expect("ip"));
        let tasks = backends
            .iter()
            .enumerate()
            .map(|(i, b)| shoal_cluster::TaskEndpoint {
                task: i as u64 + 1,
                node: i as u64 + 1,
                ip: b.ip().to_string(),
                ports: vec![shoal_cluster::TaskPort {
                    target: TARGET_PORT,
                    published: b.port(),
                    udp: false,
                }],
                ready: true,
            })
            .collect();
        mesh.update(vec![shoal_cluster::ServiceEndpoints {
            id: 1,
            name: "bench".into(),
            ports: vec![shoal_cluster::PortConfig {
                published: port,
                target: TARGET_PORT,
                udp: false,
                mode: shoal_cluster::PublishMode::Ingress,
            }],
            tasks,
        }]);
        let listening = mesh.ports().iter().all(|p| p.error.is_empty());
        if !listening {
            eprintln!("mesh-bench: the mesh could not listen: {:?}", mesh.ports());
            std::process::exit(1);
        }
        println!("127.0.0.1:{port}");
        let _ = std::io::stdout().flush();
        std::future::pending::<()>().await;
    });
}

/// HAProxy in TCP mode, least connections, in front of the backends.
fn start_haproxy(dir: &std::path::Path, backends: &[String]) -> Result<(Proc, String), String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let mut cfg = format!(
        "global\n  nbthread 2\n  maxconn 8000\n\
         defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n\
         frontend bench\n  bind 127.0.0.1:{port}\n  default_backend tasks\n\
         backend tasks\n  balance leastconn\n"
    );
    for (i, b) in backends.iter().enumerate() {
        cfg.push_str(&format!("  server t{i} {b}\n"));
    }
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, cfg).map_err(|e| e.to_string())?;
    let child = Command::new("haproxy")
        .arg("-f")
        .arg(&path)
        .arg("-db")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            format!("cannot start haproxy ({e}): install it (apt-get install haproxy) or leave it out with --targets direct,shoal")
        })?;
    let proc = Proc(child);
    let addr = format!("127.0.0.1:{port}");
    let start = Instant::now();
    while std::net::TcpStream::connect(&addr).is_err() {
        if start.elapsed() > Duration::from_secs(10) {
            return Err("haproxy did not listen within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((proc, addr))
}

/// What one run of one case measured.
#[derive(Clone, Copy, Debug, Default)]
struct Measure {
    req_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    mb_per_s: f64,
}

/// Reads one HTTP answer from `s` (keeping what follows in `buf`); returns its body's length.
async fn read_answer(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<u64> {
    let mut chunk = vec![0u8; 64 * 1024];
    let end = loop {
        if let Some(p) = find(buf, b"\r\n\r\n") {
            break p + 4;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let len: u64 = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other("no content-length"))?;
    buf.drain(..end);
    let mut left = len;
    let have = (buf.len() as u64).min(left);
    buf.drain(..have as usize);
    left -= have;
    while left > 0 {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let used = (n as u64).min(left);
        left -= used;
        if used < n as u64 {
            buf.extend_from_slice(&chunk[used as usize..n]);
        }
    }
    Ok(len)
}

fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i] as f64
}

/// Short requests for `seconds` from `conns` workers, round robin over `addrs`.
async fn short(addrs: &[String], conns: usize, seconds: f64, keepalive: bool) -> Measure {
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let mut workers = Vec::new();
    for w in 0..conns {
        let addrs = addrs.to_vec();
        workers.push(tokio::spawn(async move {
            let mut lat: Vec<u32> = Vec::with_capacity(1 << 16);
            let mut bytes = 0u64;
            let mut errors = 0u64;
            let mut buf = Vec::new();
            let mut conn: Option<TcpStream> = None;
            let mut k = w;
            while Instant::now() < until {
                let addr = &addrs[k % addrs.len()];
                let t0 = Instant::now();
                let mut s = match conn.take() {
                    Some(s) => s,
                    None => {
                        // Keep-alive workers stay on one backend (as a client's pool does);
                        // new-connection ones take the next each time.
                        k += if keepalive { 0 } else { 1 };
                        match TcpStream::connect(addr).await {
                            Ok(s) => {
                                let _ = s.set_nodelay(true);
                                buf.clear();
                                s
                            }
                            Err(_) => {
                                errors += 1;
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                continue;
                            }
                        }
                    }
                };
                let req: &[u8] = if keepalive {
                    b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
                } else {
                    b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
                };
                let answered = match s.write_all(req).await {
                    Ok(()) => read_answer(&mut s, &mut buf).await,
                    Err(e) => Err(e),
                };
                match answered {
                    Ok(n) => {
                        lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        bytes += n;
                        if keepalive {
                            conn = Some(s);
                        }
                    }
                    Err(_) => errors += 1,
                }
            }
            (lat, bytes, errors)
        }));
    }
    let mut lat = Vec::new();
    let mut bytes = 0;
    let mut errors = 0;
    for w in workers {
        if let Ok((l, b, e)) = w.await {
            lat.extend(l);
            bytes += b;
            errors += e;
        }
    }
    if errors > 0 {
        eprintln!("mesh-bench: {errors} requests failed");
    }
    lat.sort_unstable();
    Measure {
        req_per_s: lat.len() as f64 / seconds,
        p50_us: percentile(&lat, 0.50),
        p99_us: percentile(&lat, 0.99),
        mb_per_s: bytes as f64 / seconds / 1e6,
    }
}

/// One `GET /bulk` of `bytes` on one connection.
async fn bulk(addr: &str, bytes: u64) -> Result<Measure, String> {
    let t0 = Instant::now();
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    s.write_all(
        format!("GET /bulk?n={bytes} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let got = read_answer(&mut s, &mut buf)
        .await
        .map_err(|e| e.to_string())?;
    let secs = t0.elapsed().as_secs_f64();
    let us = t0.elapsed().as_micros() as f64;
    Ok(Measure {
        req_per_s: 1.0 / secs,
        p50_us: us,
        p99_us: us,
        mb_per_s: got as f64 / secs / 1e6,
    })
}

fn median_by(mut v: Vec<Measure>, key: impl Fn(&Measure) -> f64) -> Measure {
    v.sort_by(|a, b| key(a).total_cmp(&key(b)));
    v[v.len() / 2]
}

fn bench(o: &Opts) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (_backends, list) = spawn_role(&["--role-backends"])?;
    let backends: Vec<String> = list.split(',').map(str::to_string).collect();
    if backends.len() != 3 {
        return Err(format!("the backends said {list:?}"));
    }
    let mut procs = Vec::new();
    let mut targets: Vec<(String, Vec<String>)> = Vec::new();
    for t in &o.targets {
        match t.as_str() {
            "direct" => targets.push((t.clone(), backends.clone())),
            "shoal" => {
                let (p, addr) = spawn_role(&["--role-mesh", &list])?;
                procs.push(p);
                targets.push((t.clone(), vec![addr]));
            }
            "haproxy" => {
                let (p, addr) = start_haproxy(dir.path(), &backends)?;
                procs.push(p);
                targets.push((t.clone(), vec![addr]));
            }
            other => return Err(format!("unknown target {other} (direct, shoal, haproxy)")),
        }
    }
    let rt = runtime();
    let cases = ["keepalive", "newconn", "bulk"];
    let mut rows: Vec<Value> = Vec::new();
    let mut results: std::collections::BTreeMap<(String, &str), Measure> = Default::default();
    for case in cases {
        let mut runs: std::collections::BTreeMap<String, Vec<Measure>> = Default::default();
        for _ in 0..o.rounds {
            for (name, addrs) in &targets {
                let m = rt.block_on(async {
                    match case {
                        "keepalive" => Ok(short(addrs, o.conns, o.seconds, true).await),
                        "newconn" => Ok(short(addrs, o.conns, o.seconds, false).await),
                        _ => bulk(&addrs[0], o.bulk_mib << 20).await,
                    }
                })?;
                runs.entry(name.clone()).or_default().push(m);
                // Let the closed connections' sockets go (TIME_WAIT aside) between runs.
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        for (name, _) in &targets {
            let v = runs.remove(name).unwrap_or_default();
            let m = if case == "bulk" {
                median_by(v, |m| m.mb_per_s)
            } else {
                median_by(v, |m| m.req_per_s)
            };
            let row = json!({
                "target": name,
                "case": case,
                "req_per_s": round1(m.req_per_s),
                "p50_us": round1(m.p50_us),
                "p99_us": round1(m.p99_us),
                "mb_per_s": round1(m.mb_per_s),
            });
            println!("{row}");
            rows.push(row);
            results.insert((name.clone(), case), m);
        }
    }
    let mut summary = json!({"summary": true, "conns": o.conns, "seconds": o.seconds, "rounds": o.rounds, "bulk_mib": o.bulk_mib});
    let (Some(_), Some(_)) = (
        results.get(&("shoal".to_string(), "keepalive")),
        results.get(&("haproxy".to_string(), "keepalive")),
    ) else {
        println!("{summary}");
        return Ok(());
    };
    let mut goals = true;
    for case in cases {
        let s = results[&("shoal".to_string(), case)];
        let h = results[&("haproxy".to_string(), case)];
        if case == "bulk" {
            let r = s.mb_per_s / h.mb_per_s;
            goals &= r >= 0.9;
            summary[format!("{case}_mb_ratio")] = json!(round3(r));
        } else {
            let rps = s.req_per_s / h.req_per_s;
            let p99 = s.p99_us / h.p99_us;
            goals &= rps >= 0.9 && p99 <= 1.2;
            summary[format!("{case}_rps_ratio")] = json!(round3(rps));
            summary[format!("{case}_p99_ratio")] = json!(round3(p99));
        }
    }
    summary["goals_met"] = json!(goals);
    println!("{summary}");
    drop(procs);
    Ok(())
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
