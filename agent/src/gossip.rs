//! Drives the SWIM core on tokio: its timers, the gossip datagrams of the transport, and a view
//! of who is alive that the rest of the agent reads (node STATUS, where managers are).
//!
//! A member's SWIM address is `<16 hex id>@<ip:port>`: the id picks the transport peer, the
//! socket address tells the transport where it is.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use serde::{Deserialize, Serialize};
use shoal_membership::{
    Addr, Config, Effect, MemberEvent, Memberlist, NodeId, NodeInfo, State, Stats,
};
use shoal_transport::net::Transport;
use tokio::sync::{mpsc, oneshot};

/// What a member says about itself in its SWIM metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Whether it runs a Raft replica (a manager, or becoming one).
    pub manager: bool,
}

/// One member as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// Alive, suspect, dead or left.
    pub state: State,
    /// Where it is.
    pub addr: Option<SocketAddr>,
    /// What it says about itself.
    pub meta: Meta,
}

/// The shared view: member id → what we know.
pub type View = Arc<Mutex<BTreeMap<u64, MemberInfo>>>;

/// Requests to the gossip task.
pub enum GossipCmd {
    /// A datagram from a peer.
    Packet(u64, Vec<u8>),
    /// Contact these members (`hex@ip:port`).
    Join(Vec<String>),
    /// Announce new metadata.
    SetMeta(Meta),
    /// Leave gracefully; answered once the news had a moment to spread.
    Leave(oneshot::Sender<()>),
    /// Traffic from a member the view holds dead (its Raft messages, say): exchange state
    /// with it now, so that a healed partition merges at once.
    SignOfLife(u64),
}

/// The membership core's counters and local health, as of its last step.
#[derive(Clone, Copy, Debug, Default)]
pub struct SwimCounters {
    /// Probes, acks, suspicions, packets, bytes…
    pub stats: Stats,
    /// Lifeguard's local health multiplier (0 = healthy).
    pub local_health: u32,
}

/// Whether the view holds `id` dead: its traffic on another channel is then worth a
/// [`GossipCmd::SignOfLife`].
pub fn holds_dead(view: &View, id: u64) -> bool {
    view.lock()
        .expect("view")
        .get(&id)
        .is_some_and(|m| m.state == State::Dead)
}

/// The handle the agent keeps.
#[derive(Clone)]
pub struct Gossip {
    /// Commands in.
    pub tx: mpsc::Sender<GossipCmd>,
    /// The view.
    pub view: View,
    /// The counters, for metrics.
    pub counters: Arc<Mutex<SwimCounters>>,
}

/// Formats a SWIM address.
pub fn swim_addr(id: u64, addr: SocketAddr) -> String {
    format!("{id:016x}@{addr}")
}

/// Parses a SWIM address.
pub fn parse_swim_addr(s: &str) -> Option<(u64, SocketAddr)> {
    let (id, addr) = s.split_once('@')?;
    if id.len() != 16 {
        return None;
    }
    Some((u64::from_str_radix(id, 16).ok()?, addr.parse().ok()?))
}

/// Starts the gossip task.
pub fn start(
    seed: u64,
    id: u64,
    advertise: SocketAddr,
    meta: Meta,
    local_profile: bool,
    transport: Transport,
) -> anyhow::Result<Gossip> {
    let cfg = if local_profile {
        Config::local()
    } else {
        Config::lan()
    };
    let info = NodeInfo {
        id: NodeId(id),
        addr: Addr::new(swim_addr(id, advertise)),
        meta: serde_json::to_vec(&meta)?,
    };
    let seed = id ^ seed;
    let ml = Memberlist::new(cfg, info, seed).map_err(|e| anyhow::anyhow!("membership: {e}"))?;
    let (tx, rx) = mpsc::channel(4096);
    let view: View = Arc::new(Mutex::new(BTreeMap::new()));
    view.lock().expect("view").insert(
        id,
        MemberInfo {
            state: State::Alive,
            addr: Some(advertise),
            meta,
        },
    );
    let counters = Arc::new(Mutex::new(SwimCounters::default()));
    let span = tracing::info_span!("swim", node = %shoal_cluster::node_id_string(id));
    tokio::spawn(tracing::Instrument::instrument(
        run(ml, rx, transport, view.clone(), counters.clone()),
        span,
    ));
    Ok(Gossip { tx, view, counters })
}

async fn run(
    mut ml: Memberlist,
    mut rx: mpsc::Receiver<GossipCmd>,
    transport: Transport,
    view: View,
    counters: Arc<Mutex<SwimCounters>>,
) {
    let start = Instant::now();
    let mut leaving: Option<(oneshot::Sender<()>, Instant)> = None;
    loop {
        let now = start.elapsed();
        let wake = ml
            .next_timer()
            .map(|t| t.saturating_sub(now))
            .unwrap_or(Duration::from_millis(200))
            .min(Duration::from_millis(200));
        tokio::select! {
            biased;
            cmd = rx.recv() => {
                let now = start.elapsed();
                match cmd {
                    None => return,
                    Some(GossipCmd::Packet(from, bytes)) => {
                        let from_addr = ml
                            .member(NodeId(from))
                            .map(|m| m.addr.clone())
                            .unwrap_or_else(|| Addr::new(format!("{from:016x}")));
                        let _ = ml.receive(now, &from_addr, &bytes);
                        // A dead member's packet is a sign of life too (its reconnect
                        // attempt, or a ping sent before it heard of its death).
                        ml.sign_of_life(now, NodeId(from));
                    }
                    Some(GossipCmd::SignOfLife(from)) => {
                        ml.sign_of_life(now, NodeId(from));
                    }
                    Some(GossipCmd::Join(seeds)) => {
                        let seeds: Vec<Addr> = seeds.into_iter().map(Addr::new).collect();
                        for s in &seeds {
                            if let Some((pid, a)) = parse_swim_addr(s.as_str()) {
                                transport.hint_peer_addr(pid, a);
                            }
                        }
                        let _ = ml.join(now, &seeds);
                    }
                    Some(GossipCmd::SetMeta(meta)) => {
                        if let Ok(bytes) = serde_json::to_vec(&meta) {
                            let _ = ml.set_local_meta(now, bytes);
                        }
                    }
                    Some(GossipCmd::Leave(reply)) => {
                        ml.leave(now);
                        leaving = Some((reply, Instant::now()));
                    }
                }
            }
            _ = tokio::time::sleep(wake) => {
                ml.tick(start.elapsed());
            }
        }
        flush(&mut ml, &transport, &view);
        *counters.lock().expect("counters") = SwimCounters {
            stats: ml.stats(),
            local_health: ml.local_health(),
        };
        if leaving
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() > Duration::from_millis(600))
        {
            if let Some((reply, _)) = leaving.take() {
                let _ = reply.send(());
                return;
            }
        }
    }
}

/// Applies the core's effects: events update the view (and the transport's address book)
/// first, so that replies to a new member find its address; then the packets go out.
fn flush(ml: &mut Memberlist, transport: &Transport, view: &View) {
    let effects = ml.take_effects();
    let mut sends = Vec::new();
    for e in effects {
        match e {
            Effect::Event(ev) => observe(&ev, transport, view),
            Effect::Send { to, bytes } => sends.push((to, bytes)),
        }
    }
    for (to, bytes) in sends {
        if let Some((id, addr)) = parse_swim_addr(to.as_str()) {
            transport.hint_peer_addr(id, addr);
            transport.send_gossip(id, &bytes);
        }
    }
}

fn observe(ev: &MemberEvent, transport: &Transport, view: &View) {
    let m = ev.member();
    let parsed = parse_swim_addr(m.addr.as_str());
    if let Some((id, addr)) = parsed {
        if m.is_live() {
            transport.hint_peer_addr(id, addr);
        }
    }
    let meta: Meta = serde_json::from_slice(&m.meta).unwrap_or_default();
    tracing::debug!(member = %format!("{:016x}", m.id.0), state = ?m.state, "membership");
    view.lock().expect("view").insert(
        m.id.0,
        MemberInfo {
            state: m.state,
            addr: parsed.map(|(_, a)| a),
            meta,
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swim_addresses_round_trip() {
        let a: SocketAddr = "127.0.0.1:4242".parse().unwrap();
        let s = swim_addr(0xab, a);
        assert_eq!(s, "00000000000000ab@127.0.0.1:4242");
        assert_eq!(parse_swim_addr(&s), Some((0xab, a)));
        assert_eq!(parse_swim_addr("ab@127.0.0.1:1"), None);
        assert_eq!(parse_swim_addr("00000000000000ab"), None);
        assert_eq!(parse_swim_addr("zz00000000000000@127.0.0.1:1"), None);
    }
}
