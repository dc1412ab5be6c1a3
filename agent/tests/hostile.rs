//! Hostile peers against a live 3-manager cluster of real agents: a node holding only the
//! worker token (so a worker certificate) sends Raft traffic, including a higher-term heartbeat
//! and garbage snapshots; a node holding a manager certificate sends garbage Raft and snapshot
//! frames. The cluster keeps its leader and its term, and serves writes.

mod common;

use std::str::FromStr;
use std::time::Duration;

use common::{serial, Cluster};
use shoal_raft::{Membership, Message, MessageBody, SnapshotMeta};
use shoal_transport::join;
use shoal_transport::net::{self, Transport, TransportConfig};
use shoal_transport::pki::{self, Denylist, JoinToken};

/// A transport on loopback holding a certificate obtained with `token`.
async fn intruder(token: &str, manager: &str, role: pki::Role) -> (Transport, u64) {
    let token = JoinToken::from_str(token.trim()).expect("token");
    let endpoint = net::udp_endpoint("127.0.0.1:0".parse().unwrap(), None).expect("endpoint");
    let joined = join::join_through(
        &endpoint,
        manager.parse().unwrap(),
        &token,
        "intruder",
        role,
        Duration::from_secs(30),
    )
    .await
    .expect("join with the token");
    endpoint.close(0u32.into(), b"done");
    let id = joined.identity.cert.node_id;
    let (server, client) =
        net::quic_configs(&joined.identity, &joined.ca_der, Denylist::new()).expect("configs");
    let endpoint =
        net::udp_endpoint("127.0.0.1:0".parse().unwrap(), Some(server)).expect("endpoint");
    let (t, _inbound) = Transport::start(
        endpoint,
        client,
        id,
        joined.identity.cert.cluster_id,
        Denylist::new(),
        TransportConfig::default(),
    );
    (t, id)
}

fn raft(from: u64, to: u64, term: u64, body: MessageBody) -> Vec<u8> {
    shoal_agent::wire::encode_raft(&Message {
        from,
        to,
        term,
        body,
    })
}

/// Sends every kind of bad Raft input from `t` (id `me`) to each manager.
fn barrage(t: &Transport, me: u64, managers: &[(u64, String)]) {
    for (id, addr) in managers {
        t.set_peer_addr(*id, addr.parse().unwrap());
        for round in 0..20u64 {
            // A heartbeat of a far higher term: a worker must not depose the leader.
            t.send_raft(
                *id,
                raft(
                    me,
                    *id,
                    1_000 + round,
                    MessageBody::Heartbeat { commit: 0, seq: 1 },
                ),
            );
            t.send_raft(
                *id,
                raft(
                    me,
                    *id,
                    1_000 + round,
                    MessageBody::Append {
                        prev_index: 0,
                        prev_term: 0,
                        entries: Vec::new(),
                        commit: 5,
                        seq: 1,
                    },
                ),
            );
            // Garbage and truncated frames.
            t.send_raft(*id, vec![1, 0xff, 0xff, 0xff, 0xff, 0x0f, 9, 9]);
            t.send_raft(*id, vec![7; 300]);
            t.send_snapshot(*id, vec![1, 2, 3]);
            // A well-formed snapshot whose data is not a cluster state. Snapshots travel on
            // their own stream, behind the heartbeats above: a term above all of theirs keeps
            // them from arriving stale.
            t.send_snapshot(
                *id,
                raft(
                    me,
                    *id,
                    5_000 + round,
                    MessageBody::Snapshot {
                        meta: SnapshotMeta {
                            index: 1_000_000,
                            term: 5_000 + round,
                            membership: Membership::with_voters([me]),
                        },
                        offset: 0,
                        data: b"not a cluster state".to_vec(),
                        done: true,
                        seq: 1,
                    },
                ),
            );
        }
    }
}

#[test]
fn garbage_and_forged_raft_from_workers_and_managers_does_not_stop_the_cluster() {
    let _g = serial();
    let c = Cluster::start(3);
    c.form(3);
    let term_before = c
        .shoal(0, &["info", "--format", "json"])
        .ok()
        .parse::<serde_json::Value>()
        .unwrap()["term"]
        .as_u64()
        .unwrap();
    let ls = c.ls(0).unwrap();
    let managers: Vec<(u64, String)> = ls
        .iter()
        .map(|n| {
            let id = u64::from_str_radix(n["ID"].as_str().unwrap(), 16).unwrap();
            let name = n["Hostname"].as_str().unwrap();
            (id, c.nodes[c.index(name)].listen.clone())
        })
        .collect();
    let wtoken = c.shoal(0, &["swarm", "join-token", "-q", "worker"]).ok();
    let mtoken = c.shoal(0, &["swarm", "join-token", "-q", "manager"]).ok();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // A worker's certificate: everything it sends is dropped, so no term inflation.
    rt.block_on(async {
        let (worker, wid) = intruder(&wtoken, &c.nodes[0].listen, pki::Role::Worker).await;
        for _ in 0..3 {
            barrage(&worker, wid, &managers);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    c.wait("a leader", || c.leader(0));
    for i in 0..3 {
        let info: serde_json::Value = c
            .shoal(i, &["info", "--format", "json"])
            .ok()
            .parse()
            .unwrap();
        let term = info["term"].as_u64().unwrap();
        assert!(
            term < 1_000,
            "node-{} term {term} (was {term_before})",
            i + 1
        );
    }
    // A manager's certificate is trusted with Raft (a higher term moves the cluster to it), but
    // its garbage is dropped and its snapshot of garbage never installed: no process stops.
    rt.block_on(async {
        let (manager, mid) = intruder(&mtoken, &c.nodes[0].listen, pki::Role::Manager).await;
        for _ in 0..3 {
            barrage(&manager, mid, &managers);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let leader = c.wait("a leader after the manager's barrage", || c.leader(0));
    c.wait("a write accepted", || {
        let args = [
            "node",
            "update",
            "--label-add",
            "still=writable",
            leader.as_str(),
        ];
        (c.shoal(0, &args).code == 0).then_some(())
    });
    let inspect = c.inspect(1, &leader).unwrap();
    assert_eq!(inspect["labels"]["still"], "writable", "{inspect}");
    // The refusals were counted.
    let mut not_member = 0.0;
    let mut bad_snapshot = 0.0;
    for i in 0..3 {
        let socket = c.nodes[i].dir.join(shoal_agent::cli::SOCKET_NAME);
        let r = shoal_agent::client::exchange(&socket, "GET", "/metrics", None).unwrap();
        for line in String::from_utf8(r.body).unwrap().lines() {
            let v = || line.rsplit(' ').next().unwrap().parse::<f64>().unwrap();
            if line.starts_with("shoal_transport_rejected_total{reason=\"not_a_member\"}") {
                not_member += v();
            }
            if line.starts_with("shoal_transport_rejected_total{reason=\"bad_snapshot\"}") {
                bad_snapshot += v();
            }
        }
    }
    assert!(not_member > 0.0, "not_a_member refusals counted");
    assert!(bad_snapshot > 0.0, "malformed snapshots counted");
}
