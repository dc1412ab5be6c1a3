//! Packet faults: delay with jitter, loss, duplication, reordering and corruption on a node's
//! UDP traffic (QUIC), the way `tc netem` does them. Kernels built without `sch_netem` (this
//! CI's is one: `CONFIG_NET_SCH_NETEM is not set`, no modules) cannot run netem, so the suite
//! does it itself: iptables sends the node's UDP packets on `eth0` (both ways) to an NFQUEUE,
//! and `shoal-jepsen __netem` in the node's namespace holds each packet for its delay (or lets
//! it pass at once: reordering), drops it, or flips a byte of its payload before giving its
//! verdict. Duplication is an nftables `dup` rule. QUIC's segmentation offload is off in the
//! agents (`SHOAL_QUIC_GSO=0`), so each packet is one datagram.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use shoal_sim::rng::Rng;

use crate::testbed::{run_in, run_in_with_input, NodeNet};

/// The NFQUEUE number the suite uses.
pub const QUEUE: u16 = 7;

/// What to do to packets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    /// Mean delay, milliseconds.
    pub delay_ms: u64,
    /// Delay varies uniformly by up to this much either way.
    pub jitter_ms: u64,
    /// Percent of packets dropped.
    pub loss: u64,
    /// Percent duplicated.
    pub duplicate: u64,
    /// Percent sent at once, ahead of delayed ones.
    pub reorder: u64,
    /// Percent with a payload byte flipped.
    pub corrupt: u64,
    /// Seed of the per-packet choices.
    pub seed: u64,
}

impl Spec {
    /// A spec drawn from `rng`: 20–100 ms ± half, 1–10 % loss, 2 % duplication, 10 %
    /// reordering, 1 % corruption.
    pub fn random(rng: &mut Rng) -> Spec {
        let delay_ms = 20 + rng.below(80);
        Spec {
            delay_ms,
            jitter_ms: delay_ms / 2,
            loss: 1 + rng.below(10),
            duplicate: 2,
            reorder: 10,
            corrupt: 1,
            seed: rng.next_u64(),
        }
    }

    /// As netem would say it.
    pub fn describe(&self) -> String {
        format!(
            "delay {}ms {}ms loss {}% duplicate {}% reorder {}% corrupt {}%",
            self.delay_ms, self.jitter_ms, self.loss, self.duplicate, self.reorder, self.corrupt
        )
    }

    /// The arguments of `__netem`.
    pub fn args(&self) -> Vec<String> {
        [
            self.delay_ms,
            self.jitter_ms,
            self.loss,
            self.duplicate,
            self.reorder,
            self.corrupt,
            self.seed,
        ]
        .iter()
        .map(u64::to_string)
        .collect()
    }

    /// Parses the arguments of `__netem`.
    pub fn parse(args: &[String]) -> Result<Spec, String> {
        let v: Vec<u64> = args
            .iter()
            .map(|a| a.parse::<u64>().map_err(|e| format!("{a:?}: {e}")))
            .collect::<Result<_, _>>()?;
        let [delay_ms, jitter_ms, loss, duplicate, reorder, corrupt, seed] = v[..] else {
            return Err("__netem DELAY JITTER LOSS DUP REORDER CORRUPT SEED".into());
        };
        if [loss, duplicate, reorder, corrupt].iter().any(|p| *p > 100) || jitter_ms > delay_ms {
            return Err("percentages are 0 to 100 and the jitter at most the delay".into());
        }
        Ok(Spec {
            delay_ms,
            jitter_ms,
            loss,
            duplicate,
            reorder,
            corrupt,
            seed,
        })
    }
}

/// What happens to one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Dropped.
    Drop,
    /// Passed at once.
    Now,
    /// Held this long.
    Delay(Duration),
}

/// Draws a packet's fate, and whether to corrupt it.
pub fn fate(spec: &Spec, rng: &mut Rng) -> (Fate, bool) {
    if rng.below(100) < spec.loss {
        return (Fate::Drop, false);
    }
    let corrupt = rng.below(100) < spec.corrupt;
    if rng.below(100) < spec.reorder || spec.delay_ms == 0 {
        return (Fate::Now, corrupt);
    }
    let lo = spec.delay_ms - spec.jitter_ms;
    let ms = lo + rng.below(2 * spec.jitter_ms + 1);
    (Fate::Delay(Duration::from_millis(ms)), corrupt)
}

/// Flips one byte of an IPv4 UDP packet's payload and clears its checksum (0: none, which
/// IPv4 allows), so the packet arrives and its receiver (QUIC's AEAD) must reject it. Other
/// packets are left alone. Returns whether it changed the packet.
pub fn corrupt(packet: &mut [u8], rng: &mut Rng) -> bool {
    if packet.len() < 20 || packet[0] >> 4 != 4 || packet[9] != 17 {
        return false;
    }
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let payload = ihl + 8;
    if packet.len() <= payload {
        return false;
    }
    let at = payload + rng.below((packet.len() - payload) as u64) as usize;
    packet[at] ^= 1 << rng.below(8);
    packet[ihl + 6] = 0;
    packet[ihl + 7] = 0;
    true
}

/// `shoal-jepsen __netem …` in a node's namespace: serves the queue until killed. A verdict
/// the kernel refuses (the packet is gone) is a lost packet, not an error.
pub fn serve(spec: &Spec) -> Result<(), String> {
    let mut q = nfq::Queue::open().map_err(|e| format!("nfqueue: {e}"))?;
    q.bind(QUEUE).map_err(|e| format!("nfqueue bind: {e}"))?;
    let _ = q.set_queue_max_len(QUEUE, 8192);
    q.set_nonblocking(true);
    let mut rng = Rng::new(spec.seed);
    let mut due: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut held: BTreeMap<u64, nfq::Message> = BTreeMap::new();
    let mut seq = 0u64;
    loop {
        let mut busy = false;
        match q.recv() {
            Ok(mut msg) => {
                busy = true;
                let (f, flip) = fate(spec, &mut rng);
                if flip {
                    let mut p = msg.get_payload().to_vec();
                    if corrupt(&mut p, &mut rng) {
                        msg.set_payload(p);
                    }
                }
                match f {
                    Fate::Drop => {
                        msg.set_verdict(nfq::Verdict::Drop);
                        let _ = q.verdict(msg);
                    }
                    Fate::Now => {
                        msg.set_verdict(nfq::Verdict::Accept);
                        let _ = q.verdict(msg);
                    }
                    Fate::Delay(d) => {
                        seq += 1;
                        due.push(Reverse((Instant::now() + d, seq)));
                        held.insert(seq, msg);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            // The kernel reports a verdict for a packet it no longer holds (ENOENT) or a full
            // socket buffer (ENOBUFS) on a later receive: that packet is lost, go on.
            Err(_) => {}
        }
        let now = Instant::now();
        while let Some(Reverse((at, s))) = due.peek().copied() {
            if at > now {
                break;
            }
            due.pop();
            if let Some(mut msg) = held.remove(&s) {
                msg.set_verdict(nfq::Verdict::Accept);
                let _ = q.verdict(msg);
            }
        }
        if !busy {
            std::thread::sleep(Duration::from_micros(500));
        }
    }
}

/// Packet faults in force on one node: the queue server to kill when healed.
pub struct Installed {
    net: NodeNet,
    child: Child,
}

/// Starts packet faults on a node: the queue server, then the rules.
pub fn install(jepsen: &std::path::Path, net: &NodeNet, spec: &Spec) -> Result<Installed, String> {
    let child = net
        .command(jepsen)
        .arg("__netem")
        .args(spec.args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start the packet-fault server in {}: {e}", net.netns))?;
    let installed = Installed {
        net: net.clone(),
        child,
    };
    // Give it a moment to bind (until then `--queue-bypass` lets packets through).
    std::thread::sleep(Duration::from_millis(100));
    let q = QUEUE.to_string();
    for (chain, dir) in [("OUTPUT", "-o"), ("INPUT", "-i")] {
        run_in(
            net,
            "iptables",
            &[
                "-w",
                "-I",
                chain,
                dir,
                "eth0",
                "-p",
                "udp",
                "-j",
                "NFQUEUE",
                "--queue-num",
                &q,
                "--queue-bypass",
            ],
        )?;
    }
    if spec.duplicate > 0 {
        let script = format!(
            "add table ip jepsen_dup\ndelete table ip jepsen_dup\ntable ip jepsen_dup {{\n  \
             chain output {{\n    type filter hook output priority 0; policy accept;\n    \
             oifname \"eth0\" meta l4proto udp numgen random mod 100 < {} dup to ip daddr\n  \
             }}\n}}\n",
            spec.duplicate
        );
        run_in_with_input(net, "nft", &["-f", "-"], &script)?;
    }
    Ok(installed)
}

impl Installed {
    /// Removes the rules, then stops the server.
    pub fn heal(mut self) {
        let _ = run_in(&self.net, "iptables", &["-w", "-F", "OUTPUT"]);
        let _ = run_in(&self.net, "iptables", &["-w", "-F", "INPUT"]);
        let _ = run_in(&self.net, "nft", &["delete", "table", "ip", "jepsen_dup"]);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_round_trip_and_refuse_nonsense() {
        let s = Spec::random(&mut Rng::new(3));
        assert_eq!(Spec::parse(&s.args()).unwrap(), s);
        assert!(Spec::parse(&["1".into()]).is_err());
        let mut bad = s.args();
        bad[2] = "101".into();
        assert!(Spec::parse(&bad).is_err());
    }

    #[test]
    fn fates_follow_the_spec() {
        let spec = Spec {
            delay_ms: 50,
            jitter_ms: 20,
            loss: 10,
            duplicate: 0,
            reorder: 10,
            corrupt: 0,
            seed: 1,
        };
        let mut rng = Rng::new(9);
        let (mut drop, mut now, mut delayed) = (0, 0, 0);
        for _ in 0..10_000 {
            match fate(&spec, &mut rng).0 {
                Fate::Drop => drop += 1,
                Fate::Now => now += 1,
                Fate::Delay(d) => {
                    assert!(d >= Duration::from_millis(30) && d <= Duration::from_millis(70));
                    delayed += 1;
                }
            }
        }
        assert!((800..1200).contains(&drop), "{drop}");
        assert!((700..1100).contains(&now), "{now}");
        assert_eq!(drop + now + delayed, 10_000);
    }

    #[test]
    fn corruption_flips_a_payload_byte_of_udp_only() {
        let mut udp = vec![0u8; 40];
        udp[0] = 0x45;
        udp[9] = 17;
        udp[26] = 0xab;
        udp[27] = 0xcd;
        let before = udp.clone();
        assert!(corrupt(&mut udp, &mut Rng::new(1)));
        assert_eq!(&udp[..26], &before[..26]);
        assert_eq!(&udp[26..28], &[0, 0]);
        assert_eq!(
            udp[28..]
                .iter()
                .zip(&before[28..])
                .filter(|(a, b)| a != b)
                .count(),
            1
        );
        let mut tcp = before.clone();
        tcp[9] = 6;
        assert!(!corrupt(&mut tcp, &mut Rng::new(1)));
        assert!(!corrupt(&mut [0u8; 3], &mut Rng::new(1)));
    }
}
