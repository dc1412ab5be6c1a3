//! `inproc`: three nodes in one process, in-memory log, no fsync, direct calls for the network,
//! empty payloads; concurrent clients on a 2-worker tokio runtime (openraft's benchmark shape).
//!
//! Clients hand their writes to a flat combiner: whoever finds the cluster unlocked proposes every
//! queued write as one batch and runs replication to completion (followers append, acknowledge,
//! the leader commits and applies), then completes the writers. A write counts once it is
//! committed and applied on the leader.

use crate::LocalCluster;
use crossbeam_queue::SegQueue;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

type Waiter = oneshot::Sender<()>;

/// The shared in-process cluster with its submission queue.
pub struct Combiner {
    queue: SegQueue<(Vec<u8>, Waiter)>,
    cluster: Mutex<(LocalCluster, Vec<Waiter>)>,
}

impl Combiner {
    /// A fresh 3-node cluster with node 1 elected.
    pub fn new() -> Arc<Combiner> {
        let mut c = LocalCluster::new(3, |cfg| {
            cfg.max_entries_per_msg = 8192;
            cfg.max_bytes_per_msg = 64 << 20;
            cfg.max_uncommitted_entries = 1 << 20;
            cfg.snapshot_threshold = 200_000;
        });
        c.elect_first();
        Arc::new(Combiner {
            queue: SegQueue::new(),
            cluster: Mutex::new((c, Vec::new())),
        })
    }

    /// Submits one write and waits until it is committed and applied on the leader.
    pub async fn write(&self, data: Vec<u8>) {
        let (tx, rx) = oneshot::channel();
        self.queue.push((data, tx));
        self.combine();
        let _ = rx.await;
    }

    /// Runs the queued writes if nobody else is; loops so that no write is left behind.
    fn combine(&self) {
        loop {
            let Ok(mut guard) = self.cluster.try_lock() else {
                return;
            };
            let (cluster, waiters) = &mut *guard;
            let mut batch = Vec::new();
            while let Some((data, w)) = self.queue.pop() {
                batch.push(data);
                waiters.push(w);
            }
            if !batch.is_empty() {
                let n = batch.len();
                cluster.applied.clear();
                cluster.nodes[0]
                    .propose_batch(batch)
                    .expect("the leader accepts proposals");
                cluster.pump_instant();
                debug_assert_eq!(cluster.applied.len(), n, "a pump commits the whole batch");
                for w in waiters.drain(..) {
                    let _ = w.send(());
                }
            }
            drop(guard);
            if self.queue.is_empty() {
                return;
            }
        }
    }
}

/// One measurement of the in-process scenario.
#[derive(Clone, Copy, Debug)]
pub struct InprocResult {
    /// Concurrent clients.
    pub clients: usize,
    /// Committed writes per second.
    pub ops_per_s: f64,
    /// Mean time from submitting a write to its completion, in microseconds.
    pub mean_latency_us: f64,
}

/// Runs `clients` concurrent writers for `measure` after `warmup`, on a fresh cluster.
pub fn run(clients: usize, warmup: Duration, measure: Duration) -> InprocResult {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let comb = Combiner::new();
        let counting = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let busy_ns = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (comb, counting, stop, ops, busy_ns) = (
                comb.clone(),
                counting.clone(),
                stop.clone(),
                ops.clone(),
                busy_ns.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let (mut n, mut ns) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    comb.write(Vec::new()).await;
                    if counting.load(Ordering::Relaxed) {
                        n += 1;
                        ns += t.elapsed().as_nanos() as u64;
                    }
                }
                ops.fetch_add(n, Ordering::Relaxed);
                busy_ns.fetch_add(ns, Ordering::Relaxed);
            }));
        }
        tokio::time::sleep(warmup).await;
        counting.store(true, Ordering::Relaxed);
        let start = Instant::now();
        tokio::time::sleep(measure).await;
        counting.store(false, Ordering::Relaxed);
        let elapsed = start.elapsed();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        let n = ops.load(Ordering::Relaxed);
        InprocResult {
            clients,
            ops_per_s: n as f64 / elapsed.as_secs_f64(),
            mean_latency_us: busy_ns.load(Ordering::Relaxed) as f64 / n.max(1) as f64 / 1000.0,
        }
    })
}
