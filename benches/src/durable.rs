//! `durable`: the in-process shape with the real WAL on disk, fsync on. One driver task owns the
//! three Raft nodes; each node's log has its own storage thread doing group commit: it writes
//! every batch that queued up while the previous fsync ran, then fsyncs once. A write counts once
//! it is committed (durable on a majority, the leader included) and applied on the leader.

use shoal_raft::wal::{Wal, WalOptions, WalStats};
use shoal_raft::{Config, Message, RaftNode, RecoveredState, Role, Storage, WriteBatch};
use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// One measurement of the durable scenario.
#[derive(Clone, Debug)]
pub struct DurableResult {
    /// Concurrent clients.
    pub clients: usize,
    /// Committed writes per second.
    pub ops_per_s: f64,
    /// Median write latency in microseconds.
    pub p50_us: u64,
    /// 99th percentile write latency in microseconds.
    pub p99_us: u64,
    /// Entries written per fsync on the leader's log (group commit effectiveness).
    pub entries_per_fsync: f64,
    /// fsyncs per second on the leader's log.
    pub fsyncs_per_s: f64,
}

struct Request {
    data: Vec<u8>,
    done: oneshot::Sender<()>,
}

/// Live counters of one log: fsyncs done and entries they covered.
#[derive(Default)]
struct DiskCounters {
    fsyncs: AtomicU64,
    entries: AtomicU64,
}

fn storage_thread(
    mut wal: Wal,
    node: usize,
    batches: std_mpsc::Receiver<WriteBatch>,
    done: mpsc::UnboundedSender<(usize, u64)>,
    counters: Arc<DiskCounters>,
) -> std::thread::JoinHandle<WalStats> {
    std::thread::spawn(move || {
        while let Ok(first) = batches.recv() {
            wal.write(&first).expect("WAL write");
            // Group commit: everything that queued up during the last fsync goes in this one.
            while let Ok(b) = batches.try_recv() {
                wal.write(&b).expect("WAL write");
            }
            let seq = wal.sync().expect("WAL sync");
            let st = wal.stats();
            counters.fsyncs.store(st.fsyncs, Ordering::Relaxed);
            counters.entries.store(st.entries, Ordering::Relaxed);
            if done.send((node, seq)).is_err() {
                break;
            }
        }
        wal.stats()
    })
}

struct Driver {
    nodes: Vec<RaftNode>,
    to_disk: Vec<std_mpsc::Sender<WriteBatch>>,
    queue: VecDeque<Message>,
    waiting: BTreeMap<u64, oneshot::Sender<()>>,
}

impl Driver {
    fn pump(&mut self) {
        let (to_disk, waiting) = (&self.to_disk, &mut self.waiting);
        crate::pump(
            &mut self.nodes,
            &mut self.queue,
            |_, i, b| {
                let _ = to_disk[i].send(b);
            },
            |i, entries| {
                if i == 0 {
                    for e in entries {
                        if let Some(w) = waiting.remove(&e.index) {
                            let _ = w.send(());
                        }
                    }
                }
            },
        );
    }
}

/// Runs `clients` concurrent writers against a fresh durable cluster whose data lives under `dir`,
/// its WAL and snapshots encrypted at rest (as the agent's are) when `encrypted`.
pub fn run(
    clients: usize,
    dir: &Path,
    warmup: Duration,
    measure: Duration,
    encrypted: bool,
) -> DurableResult {
    let keys = encrypted.then(|| {
        let key = shoal_raft::seal::random_key().expect("a random key");
        Arc::new(shoal_raft::seal::Keyring::new(1, &key).expect("a keyring"))
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("tokio runtime");
    let ids = [1u64, 2, 3];
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut nodes = Vec::new();
    let mut to_disk = Vec::new();
    let mut threads = Vec::new();
    let leader_disk = Arc::new(DiskCounters::default());
    for (i, &id) in ids.iter().enumerate() {
        let (mut wal, state, _) = Wal::open(
            dir.join(format!("node{id}")),
            WalOptions {
                keys: keys.clone(),
                ..WalOptions::default()
            },
        )
        .expect("open WAL");
        let state = if state == RecoveredState::default() {
            let boot = RecoveredState::bootstrap(ids);
            wal.write(&WriteBatch {
                seq: 0,
                snapshot: boot.snapshot.clone(),
                reset_log: true,
                compact_to: None,
                entries: Vec::new(),
                hard_state: Some(boot.hard_state),
            })
            .expect("bootstrap");
            wal.sync().expect("bootstrap sync");
            boot
        } else {
            state
        };
        let mut cfg = Config::new(id);
        cfg.max_entries_per_msg = 8192;
        cfg.max_bytes_per_msg = 64 << 20;
        cfg.max_uncommitted_entries = 1 << 20;
        cfg.snapshot_threshold = 200_000;
        nodes.push(RaftNode::new(cfg, state).expect("node"));
        let (tx, rx) = std_mpsc::channel();
        to_disk.push(tx);
        let counters = if i == 0 {
            leader_disk.clone()
        } else {
            Arc::new(DiskCounters::default())
        };
        threads.push(storage_thread(wal, i, rx, done_tx.clone(), counters));
    }
    drop(done_tx);
    let mut driver = Driver {
        nodes,
        to_disk,
        queue: VecDeque::new(),
        waiting: BTreeMap::new(),
    };
    let disk = leader_disk.clone();
    let result = rt.block_on(async move {
        // Elect node 1 (the only node ticked).
        while driver.nodes[0].role() != Role::Leader {
            driver.nodes[0].tick();
            driver.pump();
            while let Ok((n, seq)) = done_rx.try_recv() {
                driver.nodes[n].on_persisted(seq);
                driver.pump();
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let (req_tx, mut req_rx) = mpsc::unbounded_channel::<Request>();
        let stop = Arc::new(AtomicBool::new(false));
        let counting = Arc::new(AtomicBool::new(false));
        let driver_task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    Some((n, seq)) = done_rx.recv() => {
                        driver.nodes[n].on_persisted(seq);
                        while let Ok((n, seq)) = done_rx.try_recv() {
                            driver.nodes[n].on_persisted(seq);
                        }
                    }
                    r = req_rx.recv() => {
                        let Some(r) = r else { break };
                        let mut batch = vec![r];
                        while let Ok(r) = req_rx.try_recv() {
                            batch.push(r);
                        }
                        let (data, done): (Vec<_>, Vec<_>) =
                            batch.into_iter().map(|r| (r.data, r.done)).unzip();
                        let p = driver.nodes[0].propose_batch(data).expect("leader accepts");
                        for (k, d) in done.into_iter().enumerate() {
                            driver.waiting.insert(p.index + k as u64, d);
                        }
                    }
                }
                driver.pump();
            }
            driver
        });
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (req_tx, stop, counting) = (req_tx.clone(), stop.clone(), counting.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let (tx, rx) = oneshot::channel();
                    if req_tx
                        .send(Request {
                            data: Vec::new(),
                            done: tx,
                        })
                        .is_err()
                    {
                        break;
                    }
                    if rx.await.is_err() {
                        break;
                    }
                    if counting.load(Ordering::Relaxed) {
                        lat.push(t.elapsed().as_micros() as u64);
                    }
                }
                lat
            }));
        }
        drop(req_tx);
        tokio::time::sleep(warmup).await;
        counting.store(true, Ordering::Relaxed);
        let start = Instant::now();
        let (f0, e0) = (
            disk.fsyncs.load(Ordering::Relaxed),
            disk.entries.load(Ordering::Relaxed),
        );
        tokio::time::sleep(measure).await;
        counting.store(false, Ordering::Relaxed);
        let elapsed = start.elapsed();
        let fsyncs = disk.fsyncs.load(Ordering::Relaxed) - f0;
        let entries = disk.entries.load(Ordering::Relaxed) - e0;
        stop.store(true, Ordering::Relaxed);
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.expect("client task"));
        }
        let driver = driver_task.await.expect("driver task");
        (lat, elapsed, driver, fsyncs, entries)
    });
    let (mut lat, elapsed, driver, fsyncs, entries) = result;
    drop(driver); // closes the storage channels
    for t in threads {
        t.join().expect("storage thread");
    }
    lat.sort_unstable();
    DurableResult {
        clients,
        ops_per_s: lat.len() as f64 / elapsed.as_secs_f64(),
        p50_us: crate::quantile(&lat, 0.5).unwrap_or(0),
        p99_us: crate::quantile(&lat, 0.99).unwrap_or(0),
        entries_per_fsync: entries as f64 / fsyncs.max(1) as f64,
        fsyncs_per_s: fsyncs as f64 / elapsed.as_secs_f64(),
    }
}
