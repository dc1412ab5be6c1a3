//! fsyncgate on a running manager: three in-process agents on loopback; one manager's WAL fails
//! an fsync. Its replica stops with a clear error (the process goes on: before the fix it called
//! `exit(70)`, which would end this test), it acknowledges nothing more, the leader shows it
//! Unreachable, and the other two keep serving writes.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use shoal_agent::agent::{Agent, AgentOpts};
use shoal_agent::api::{NodeUpdateRequest, Request, Response};
use shoal_agent::store::DataDir;
use shoal_cluster::Role;
use shoal_raft::wal::WalFaults;

const DEADLINE: Duration = Duration::from_secs(120);

async fn agent(dir: &std::path::Path, name: &str, faults: WalFaults) -> Arc<Agent> {
    let listen: SocketAddr = {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    };
    let opts = AgentOpts {
        listen,
        advertise: None,
        hostname: name.into(),
        labels: Vec::new(),
        local_gossip: true,
        simulated: false,
        fsync: true,
        seed: None,
        wal_faults: faults,
        executors: Default::default(),
        ingress: None,
    };
    Agent::start(DataDir::open(&dir.join(name)).unwrap(), opts)
        .await
        .unwrap()
}

/// Polls `f` until it gives a value, or fails after [`DEADLINE`].
async fn wait<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn label(i: u32) -> Request {
    Request::NodeUpdate {
        node: "m1".into(),
        update: NodeUpdateRequest {
            label_add: vec![format!("round={i}")],
            ..Default::default()
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_whose_fsync_fails_stops_its_replica_and_the_others_carry_on() {
    let tmp = tempfile::tempdir().unwrap();
    let faults = WalFaults::default();
    let m1 = agent(tmp.path(), "m1", WalFaults::default()).await;
    let m2 = agent(tmp.path(), "m2", WalFaults::default()).await;
    let m3 = agent(tmp.path(), "m3", faults.clone()).await;
    let ok = |r: Response| match r {
        Response::Error { message } => panic!("{message}"),
        other => other,
    };
    ok(m1
        .handle(
            Request::Init {
                advertise_addr: None,
                force_new_cluster: false,
                autolock: false,
            },
            None,
        )
        .await);
    let Response::Token { token, .. } = ok(m1
        .handle(
            Request::JoinToken {
                role: Role::Manager,
                rotate: false,
            },
            None,
        )
        .await)
    else {
        panic!("no token")
    };
    let addr = m1.opts.listen.to_string();
    for m in [&m2, &m3] {
        ok(m.handle(
            Request::Join {
                token: token.clone(),
                remote_addr: addr.clone(),
            },
            None,
        )
        .await);
    }
    wait("three voters", || async {
        let (_, s) = m1.raft_status().await?;
        (s.membership.voters.len() == 3).then_some(())
    })
    .await;
    // m3 must be a follower for the others to keep a quorum: move leadership off it if needed.
    wait("m1 leads", || async {
        let (id, s) = m1.raft_status().await?;
        (s.leader == Some(id)).then_some(())
    })
    .await;
    ok(m1.handle(label(0), None).await);

    // m3's disk fails on its next fsync.
    faults.fail_next_fsync();
    ok(m1.handle(label(1), None).await);
    let why = wait("m3's replica to stop on the storage failure", || async {
        m3.raft_status().await?.1.failed
    })
    .await;
    assert!(why.contains("Raft storage failed"), "{why}");
    // Its CLI says so; the process is still here to say it.
    match m3.handle(Request::NodeList { stale: false }, None).await {
        Response::Error { message } => {
            assert!(message.contains("stopped its Raft replica"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    // It acknowledges nothing more: its applied index stays where it was.
    let stuck = m3.raft_status().await.unwrap().1.applied;
    for i in 2..5 {
        ok(m1.handle(label(i), None).await);
    }
    assert_eq!(m3.raft_status().await.unwrap().1.applied, stuck);
    assert!(m1.raft_status().await.unwrap().1.commit > stuck);
    // The leader shows it Unreachable.
    wait("m3 Unreachable at the leader", || async {
        let Response::Nodes { nodes, .. } =
            m1.handle(Request::NodeList { stale: false }, None).await
        else {
            return None;
        };
        nodes
            .iter()
            .any(|n| n.hostname == "m3" && n.manager_status == "Unreachable")
            .then_some(())
    })
    .await;
}
