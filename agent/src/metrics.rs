//! Metrics in the Prometheus text exposition format (version 0.0.4), served at `GET /metrics`
//! on the control socket and, with `shoal agent --metrics-addr`, on a TCP port for scrapers.
//!
//! What an operator alerts on: Raft term, commit/apply/last index, leadership and replication
//! lag per follower (managers), the nodes of the cluster state by role and status (managers),
//! members by SWIM state with the failure detector's counters, and the transport's counters of
//! traffic and refused input. [`render`] is pure: the agent takes a [`Snapshot`] and renders it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::gossip::SwimCounters;
use crate::mesh::{BackendStats, PortStatus};
use crate::raft_driver::RaftStatus;

/// Everything one scrape shows, taken at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Whether this agent is part of a swarm.
    pub active: bool,
    /// This node's id (16 hex digits), empty when inactive.
    pub node_id: String,
    /// The cluster's id, empty when inactive.
    pub cluster_id: String,
    /// This node's hostname.
    pub hostname: String,
    /// `manager`, `worker`, or empty when inactive.
    pub role: String,
    /// The agent's version.
    pub version: String,
    /// The replica's state (managers).
    pub raft: Option<RaftStatus>,
    /// Nodes of the replicated state by (role, status), lowercase (managers).
    pub nodes: BTreeMap<(String, String), usize>,
    /// Members by SWIM state: alive, suspect, dead, left.
    pub members: BTreeMap<String, usize>,
    /// The failure detector's counters (when active).
    pub swim: Option<SwimCounters>,
    /// The transport's counters, by name (`sent`, `received`, …).
    pub transport: BTreeMap<&'static str, u64>,
    /// Inbound input the transport refused, by reason.
    pub transport_rejected: BTreeMap<&'static str, u64>,
    /// Services in the cluster state (managers).
    pub services: Option<usize>,
    /// Tasks of the cluster state by observed state, lowercase (managers).
    pub tasks: BTreeMap<String, usize>,
    /// Tasks this node knows of, and those of them it runs now.
    pub node_tasks: Option<(usize, usize)>,
    /// The routing mesh on this node: its ports, and its backends' counters.
    pub ingress: Option<(Vec<PortStatus>, Vec<BackendStats>)>,
}

/// Writes metric families: each family's `# HELP` and `# TYPE` once, then its samples.
struct Writer {
    out: String,
}

#[derive(Clone, Copy)]
enum Kind {
    Gauge,
    Counter,
}

impl Writer {
    fn family(&mut self, name: &str, kind: Kind, help: &str, samples: &[(Vec<(&str, &str)>, f64)]) {
        let kind = match kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        };
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            self.out.push_str(name);
            if !labels.is_empty() {
                self.out.push('{');
                for (i, (k, v)) in labels.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
                }
                self.out.push('}');
            }
            let _ = writeln!(self.out, " {}", format_value(*value));
        }
    }

    fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.family(name, Kind::Gauge, help, &[(Vec::new(), value)]);
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, Kind::Counter, help, &[(Vec::new(), value as f64)]);
    }
}

/// `\` and newlines escaped, as the format wants in `# HELP` lines.
fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

/// `\`, `"` and newlines escaped, as the format wants in label values.
fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Integers without a fractional part; anything else as Rust prints it.
fn format_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// The scrape's text.
pub fn render(s: &Snapshot) -> String {
    let mut w = Writer { out: String::new() };
    w.family(
        "shoal_info",
        Kind::Gauge,
        "This agent: node id, cluster id, hostname, role and version (always 1).",
        &[(
            vec![
                ("node_id", s.node_id.as_str()),
                ("cluster_id", s.cluster_id.as_str()),
                ("hostname", s.hostname.as_str()),
                ("role", s.role.as_str()),
                ("version", s.version.as_str()),
            ],
            1.0,
        )],
    );
    w.gauge(
        "shoal_swarm_active",
        "1 if this agent is part of a swarm.",
        flag(s.active),
    );
    if let Some(r) = &s.raft {
        render_raft(&mut w, r);
    }
    if !s.nodes.is_empty() {
        let samples: Vec<(Vec<(&str, &str)>, f64)> = s
            .nodes
            .iter()
            .map(|((role, status), n)| {
                (
                    vec![("role", role.as_str()), ("status", status.as_str())],
                    *n as f64,
                )
            })
            .collect();
        w.family(
            "shoal_nodes",
            Kind::Gauge,
            "Nodes of the cluster state by role and status, as this manager has applied them.",
            &samples,
        );
    }
    if let Some(n) = s.services {
        w.family(
            "shoal_services",
            Kind::Gauge,
            "Services in the cluster state, as this manager has applied it.",
            &[(vec![], n as f64)],
        );
        let samples: Vec<(Vec<(&str, &str)>, f64)> = s
            .tasks
            .iter()
            .map(|(state, n)| (vec![("state", state.as_str())], *n as f64))
            .collect();
        w.family(
            "shoal_tasks",
            Kind::Gauge,
            "Tasks of the cluster state by observed state, as this manager has applied them.",
            &samples,
        );
    }
    if let Some((known, running)) = s.node_tasks {
        w.family(
            "shoal_node_tasks",
            Kind::Gauge,
            "Tasks assigned to this node that it still knows of.",
            &[(vec![], known as f64)],
        );
        w.family(
            "shoal_node_tasks_running",
            Kind::Gauge,
            "Tasks this node runs now.",
            &[(vec![], running as f64)],
        );
    }
    if s.active {
        let samples: Vec<(Vec<(&str, &str)>, f64)> = ["alive", "suspect", "dead", "left"]
            .iter()
            .map(|state| {
                let n = s.members.get(*state).copied().unwrap_or(0);
                (vec![("state", *state)], n as f64)
            })
            .collect();
        w.family(
            "shoal_swim_members",
            Kind::Gauge,
            "Members by SWIM state, as this node sees them (itself included).",
            &samples,
        );
    }
    if let Some(c) = &s.swim {
        render_swim(&mut w, c);
    }
    if let Some((ports, backends)) = &s.ingress {
        render_ingress(&mut w, ports, backends);
    }
    for (name, value) in &s.transport {
        let (metric, help) = transport_metric(name);
        w.counter(&metric, help, *value);
    }
    if !s.transport_rejected.is_empty() {
        let samples: Vec<(Vec<(&str, &str)>, f64)> = s
            .transport_rejected
            .iter()
            .map(|(reason, n)| (vec![("reason", *reason)], *n as f64))
            .collect();
        w.family(
            "shoal_transport_rejected_total",
            Kind::Counter,
            "Inbound frames and datagrams refused, by reason.",
            &samples,
        );
    }
    w.out
}

/// A metric family of the mesh's backends: name, kind, help, and the counter it shows.
type BackendFamily = (&'static str, Kind, &'static str, fn(&BackendStats) -> u64);

fn render_ingress(w: &mut Writer, ports: &[PortStatus], backends: &[BackendStats]) {
    let samples: Vec<(Vec<(&str, &str)>, f64)> = ports
        .iter()
        .map(|p| {
            (
                vec![("service", p.service.as_str()), ("port", p.port.as_str())],
                flag(p.error.is_empty()),
            )
        })
        .collect();
    w.family(
        "shoal_ingress_listening",
        Kind::Gauge,
        "Ingress ports of this node: 1 if listening, 0 if the port could not be bound.",
        &samples,
    );
    let samples: Vec<(Vec<(&str, &str)>, f64)> = ports
        .iter()
        .map(|p| {
            (
                vec![("service", p.service.as_str()), ("port", p.port.as_str())],
                p.backends as f64,
            )
        })
        .collect();
    w.family(
        "shoal_ingress_backends",
        Kind::Gauge,
        "Ready tasks behind each ingress port.",
        &samples,
    );
    let families: [BackendFamily; 5] = [
        (
            "shoal_ingress_active_connections",
            Kind::Gauge,
            "Connections (UDP flows) open now through this node's mesh, by service and backend.",
            |b| b.active,
        ),
        (
            "shoal_ingress_connections_total",
            Kind::Counter,
            "Connections (UDP flows) made through this node's mesh, by service and backend.",
            |b| b.connections,
        ),
        (
            "shoal_ingress_received_bytes_total",
            Kind::Counter,
            "Bytes from clients to tasks through this node's mesh, by service and backend.",
            |b| b.bytes_in,
        ),
        (
            "shoal_ingress_sent_bytes_total",
            Kind::Counter,
            "Bytes from tasks to clients through this node's mesh, by service and backend.",
            |b| b.bytes_out,
        ),
        (
            "shoal_ingress_failures_total",
            Kind::Counter,
            "Connections to a backend that failed (refused, timed out, unreachable).",
            |b| b.failures,
        ),
    ];
    for (name, kind, help, value) in families {
        let samples: Vec<(Vec<(&str, &str)>, f64)> = backends
            .iter()
            .map(|b| {
                (
                    vec![
                        ("service", b.service.as_str()),
                        ("port", b.port.as_str()),
                        ("task", b.task.as_str()),
                        ("backend", b.backend.as_str()),
                    ],
                    value(b) as f64,
                )
            })
            .collect();
        w.family(name, kind, help, &samples);
    }
}

fn render_raft(w: &mut Writer, r: &RaftStatus) {
    w.gauge("shoal_raft_term", "Current Raft term.", r.term as f64);
    w.gauge(
        "shoal_raft_commit_index",
        "Highest log index known committed.",
        r.commit as f64,
    );
    w.gauge(
        "shoal_raft_applied_index",
        "Highest log index applied to the cluster state.",
        r.applied as f64,
    );
    w.gauge(
        "shoal_raft_last_index",
        "Index of the last entry in this replica's log.",
        r.last_index as f64,
    );
    w.gauge(
        "shoal_raft_is_leader",
        "1 if this replica is the leader.",
        flag(r.is_leader),
    );
    w.gauge(
        "shoal_raft_has_leader",
        "1 if this replica knows a leader for the current term.",
        flag(r.leader.is_some()),
    );
    w.gauge(
        "shoal_raft_voters",
        "Voters in the latest configuration.",
        r.membership.voters.len() as f64,
    );
    w.gauge(
        "shoal_raft_learners",
        "Learners (catching up before promotion) in the latest configuration.",
        r.membership.learners.len() as f64,
    );
    if r.is_leader {
        w.gauge(
            "shoal_raft_reachable_managers",
            "Members the leader heard from within the last second, itself included.",
            r.reachable.len() as f64,
        );
        let peers: Vec<String> = r
            .lag
            .keys()
            .map(|p| shoal_cluster::node_id_string(*p))
            .collect();
        let samples: Vec<(Vec<(&str, &str)>, f64)> = peers
            .iter()
            .zip(r.lag.values())
            .map(|(p, lag)| (vec![("peer", p.as_str())], *lag as f64))
            .collect();
        w.family(
            "shoal_raft_replication_lag_entries",
            Kind::Gauge,
            "Leader only: entries each member is behind the leader's log.",
            &samples,
        );
    }
    w.counter(
        "shoal_raft_elections_total",
        "Elections this replica started (real votes, not pre-votes).",
        r.elections,
    );
    w.counter(
        "shoal_raft_leaderships_total",
        "Times this replica became leader.",
        r.leaderships,
    );
    w.counter(
        "shoal_raft_snapshots_installed_total",
        "Snapshots installed from a leader.",
        r.snapshots_installed,
    );
    w.counter(
        "shoal_raft_wal_syncs_total",
        "WAL fsync rounds (each round covers every batch written before it).",
        r.wal_syncs,
    );
    w.gauge(
        "shoal_raft_proposals_pending",
        "Proposals waiting to be applied.",
        r.proposals_pending as f64,
    );
}

fn render_swim(w: &mut Writer, c: &SwimCounters) {
    w.gauge(
        "shoal_swim_local_health",
        "Lifeguard's local health multiplier: 0 when healthy; higher slows this node's probes.",
        f64::from(c.local_health),
    );
    let s = &c.stats;
    let counters: [(&str, &str, u64); 16] = [
        ("probes", "Direct probes started.", s.probes),
        ("acks", "Acks received for this node's probes.", s.acks),
        ("nacks", "Nacks received from indirect probers.", s.nacks),
        (
            "failed_probes",
            "Probes that ended without an ack.",
            s.failed_probes,
        ),
        (
            "inconclusive_probes",
            "Failed probes re-checked before any suspicion (some indirect prober did not nack).",
            s.inconclusive_probes,
        ),
        (
            "indirect_probes",
            "Indirect probe requests sent.",
            s.indirect_probes,
        ),
        (
            "indirect_probes_served",
            "Indirect probe requests served for others.",
            s.indirect_probes_served,
        ),
        (
            "suspicions",
            "Members this node started to suspect.",
            s.suspicions,
        ),
        (
            "failures",
            "Members this node declared or learned failed.",
            s.failures,
        ),
        (
            "refutations",
            "Suspicions or death notices about this node that it refuted.",
            s.refutations,
        ),
        ("push_pulls", "Full-state exchanges started.", s.push_pulls),
        ("messages_sent", "Packets sent.", s.messages_sent),
        ("bytes_sent", "Bytes sent.", s.bytes_sent),
        (
            "messages_received",
            "Packets received.",
            s.messages_received,
        ),
        ("bytes_received", "Bytes received.", s.bytes_received),
        (
            "decode_errors",
            "Packets dropped because they did not decode or could not be valid.",
            s.decode_errors,
        ),
    ];
    for (name, help, value) in counters {
        w.counter(&format!("shoal_swim_{name}_total"), help, value);
    }
}

/// The metric name and help of one transport counter.
fn transport_metric(name: &str) -> (String, &'static str) {
    let help = match name {
        "sent" => "Frames and datagrams sent.",
        "received" => "Frames and datagrams delivered.",
        "queue_full" => "Outbound messages dropped because the peer's queue was full.",
        "datagrams_dropped" => "Datagrams dropped because the peer was not connected.",
        "inbound_dropped" => "Inbound messages dropped because the local channel was full.",
        "connects" => "Outbound connections established.",
        "connect_failures" => "Outbound connection attempts that failed.",
        "stalls" => "Connections replaced because they got no answer for the stall timeout.",
        _ => "Transport counter.",
    };
    (format!("shoal_transport_{name}_total"), help)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_raft::Membership;

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    #[test]
    fn an_inactive_agent_shows_only_what_it_is() {
        let text = render(&Snapshot {
            hostname: "n1".into(),
            version: "0.1.0".into(),
            ..Snapshot::default()
        });
        assert!(text.contains(
            "shoal_info{node_id=\"\",cluster_id=\"\",hostname=\"n1\",role=\"\",version=\"0.1.0\"} 1\n"
        ));
        assert!(text.contains("shoal_swarm_active 0\n"));
        assert!(!text.contains("shoal_raft_"));
        assert!(!text.contains("shoal_swim_"));
    }

    #[test]
    fn a_leader_shows_raft_lag_nodes_members_and_counters() {
        let mut raft = RaftStatus {
            leader: Some(1),
            term: 7,
            commit: 40,
            applied: 39,
            last_index: 42,
            is_leader: true,
            membership: Membership::with_voters([1, 2, 3]),
            lag: BTreeMap::from([(2, 0), (3, 12)]),
            elections: 2,
            leaderships: 1,
            wal_syncs: 55,
            ..RaftStatus::default()
        };
        raft.reachable.extend([1, 2]);
        let mut swim = SwimCounters::default();
        swim.stats.probes = 100;
        swim.stats.suspicions = 3;
        swim.local_health = 2;
        let text = render(&Snapshot {
            active: true,
            node_id: "0000000000000001".into(),
            cluster_id: "c".into(),
            hostname: "n1".into(),
            role: "manager".into(),
            version: "0.1.0".into(),
            raft: Some(raft),
            nodes: BTreeMap::from([
                (("manager".into(), "ready".into()), 2),
                (("manager".into(), "down".into()), 1),
            ]),
            members: BTreeMap::from([("alive".into(), 2), ("dead".into(), 1)]),
            swim: Some(swim),
            transport: BTreeMap::from([("sent", 9), ("connects", 2)]),
            transport_rejected: BTreeMap::from([("malformed", 1), ("oversized", 0)]),
            services: Some(2),
            tasks: BTreeMap::from([("running".into(), 5), ("failed".into(), 1)]),
            node_tasks: Some((3, 2)),
            ingress: Some((
                vec![PortStatus {
                    service: "web".into(),
                    port: "8080/tcp".into(),
                    backends: 2,
                    error: String::new(),
                }],
                vec![BackendStats {
                    service: "web".into(),
                    port: "8080/tcp".into(),
                    task: "00000000000000aa".into(),
                    backend: "10.0.0.2:30001".into(),
                    active: 1,
                    connections: 12,
                    bytes_in: 300,
                    bytes_out: 4000,
                    failures: 2,
                }],
            )),
        });
        let l = lines(&text);
        let web =
            r#"service="web",port="8080/tcp",task="00000000000000aa",backend="10.0.0.2:30001""#;
        for want in [
            "shoal_ingress_listening{service=\"web\",port=\"8080/tcp\"} 1".to_string(),
            "shoal_ingress_backends{service=\"web\",port=\"8080/tcp\"} 2".to_string(),
            format!("shoal_ingress_active_connections{{{web}}} 1"),
            format!("shoal_ingress_connections_total{{{web}}} 12"),
            format!("shoal_ingress_received_bytes_total{{{web}}} 300"),
            format!("shoal_ingress_sent_bytes_total{{{web}}} 4000"),
            format!("shoal_ingress_failures_total{{{web}}} 2"),
        ] {
            assert!(l.contains(&&*want), "missing {want:?} in:\n{text}");
        }
        for want in [
            "shoal_services 2",
            "shoal_tasks{state=\"running\"} 5",
            "shoal_tasks{state=\"failed\"} 1",
            "shoal_node_tasks 3",
            "shoal_node_tasks_running 2",
            "shoal_swarm_active 1",
            "shoal_raft_term 7",
            "shoal_raft_commit_index 40",
            "shoal_raft_applied_index 39",
            "shoal_raft_last_index 42",
            "shoal_raft_is_leader 1",
            "shoal_raft_has_leader 1",
            "shoal_raft_voters 3",
            "shoal_raft_reachable_managers 2",
            "shoal_raft_replication_lag_entries{peer=\"0000000000000002\"} 0",
            "shoal_raft_replication_lag_entries{peer=\"0000000000000003\"} 12",
            "shoal_raft_elections_total 2",
            "shoal_raft_wal_syncs_total 55",
            "shoal_nodes{role=\"manager\",status=\"down\"} 1",
            "shoal_nodes{role=\"manager\",status=\"ready\"} 2",
            "shoal_swim_members{state=\"alive\"} 2",
            "shoal_swim_members{state=\"suspect\"} 0",
            "shoal_swim_members{state=\"dead\"} 1",
            "shoal_swim_members{state=\"left\"} 0",
            "shoal_swim_local_health 2",
            "shoal_swim_probes_total 100",
            "shoal_swim_suspicions_total 3",
            "shoal_transport_sent_total 9",
            "shoal_transport_connects_total 2",
            "shoal_transport_rejected_total{reason=\"malformed\"} 1",
            "# TYPE shoal_raft_term gauge",
            "# TYPE shoal_swim_probes_total counter",
        ] {
            assert!(l.contains(&want), "missing {want:?} in:\n{text}");
        }
        // Every family is introduced once, and every sample belongs to the family before it.
        let mut seen = std::collections::BTreeSet::new();
        let mut current = String::new();
        for line in &l {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap().to_string();
                assert!(seen.insert(name.clone()), "{name} declared twice");
                current = name;
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(name, current, "sample {line:?} outside its family");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "bad value in {line:?}");
            }
        }
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn followers_do_not_report_leader_only_figures() {
        let text = render(&Snapshot {
            active: true,
            raft: Some(RaftStatus {
                leader: Some(2),
                is_leader: false,
                ..RaftStatus::default()
            }),
            ..Snapshot::default()
        });
        assert!(text.contains("shoal_raft_is_leader 0\n"));
        assert!(!text.contains("shoal_raft_replication_lag_entries"));
        assert!(!text.contains("shoal_raft_reachable_managers"));
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(escape_help("x\\y\nz"), "x\\\\y\\nz");
        let text = render(&Snapshot {
            hostname: "we\"ird\nhost".into(),
            ..Snapshot::default()
        });
        assert!(text.contains("hostname=\"we\\\"ird\\nhost\""));
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(0.5), "0.5");
    }
}
