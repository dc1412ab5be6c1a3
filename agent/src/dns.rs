//! The agent's name server (`shoal agent --dns-addr IP:PORT`): tasks find the other services by
//! name. `<service>` answers with this node's ingress address for a service that publishes
//! ingress ports (the mesh there reaches every task on the published port), else with its
//! ready tasks' addresses; `tasks.<service>` answers with the addresses of every running task
//! of the service. Names are case-insensitive, with or without a trailing dot; answers come
//! from the endpoint table the managers send every node (the mesh's), so they follow the
//! replicated state as the mesh does. UDP only; messages are decoded with hickory-proto,
//! bounded by the datagram, and a query that cannot be decoded is dropped.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Weak};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use shoal_cluster::ServiceEndpoints;

use crate::mesh::Mesh;

/// Seconds a resolver may keep an answer: short, as tasks come and go.
const TTL: u32 = 1;

/// The addresses `name` stands for, from the endpoint table: `None` if it names no service.
pub fn resolve(table: &[ServiceEndpoints], local: IpAddr, name: &str) -> Option<Vec<IpAddr>> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let (tasks_of, service) = match name.strip_prefix("tasks.") {
        Some(s) if !table.iter().any(|e| e.name.eq_ignore_ascii_case(&name)) => (true, s),
        _ => (false, name.as_str()),
    };
    let e = table
        .iter()
        .find(|e| e.name.eq_ignore_ascii_case(service))?;
    if !tasks_of && !e.ports.is_empty() {
        return Some(vec![local]);
    }
    let ips: BTreeSet<IpAddr> = e
        .tasks
        .iter()
        .filter(|t| tasks_of || t.ready)
        .filter_map(|t| t.ip.parse().ok())
        .collect();
    Some(ips.into_iter().collect())
}

/// The answer to one datagram (`None`: not a query this server answers, dropped).
pub fn answer(table: &[ServiceEndpoints], local: IpAddr, query: &[u8]) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    if q.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut r = Message::response(q.metadata.id, q.metadata.op_code);
    r.metadata.recursion_desired = q.metadata.recursion_desired;
    r.metadata.authoritative = true;
    r.queries = q.queries.clone();
    if q.metadata.op_code != OpCode::Query || q.queries.len() != 1 {
        r.metadata.response_code = ResponseCode::NotImp;
        return r.to_vec().ok();
    }
    let question = &q.queries[0];
    let name = question.name().to_ascii();
    match resolve(table, local, &name) {
        None => r.metadata.response_code = ResponseCode::NXDomain,
        Some(ips) if question.query_class() == DNSClass::IN => {
            for ip in ips {
                let rdata = match (question.query_type(), ip) {
                    (RecordType::A | RecordType::ANY, IpAddr::V4(v4)) => RData::A(A(v4)),
                    (RecordType::AAAA | RecordType::ANY, IpAddr::V6(v6)) => RData::AAAA(AAAA(v6)),
                    _ => continue,
                };
                r.add_answer(Record::from_rdata(question.name().clone(), TTL, rdata));
            }
        }
        Some(_) => {}
    }
    r.to_vec().ok()
}

/// Answers on `socket` for as long as the agent runs (nothing while it is in no swarm).
pub async fn serve(socket: tokio::net::UdpSocket, agent: Weak<crate::agent::Agent>) {
    let addr = match socket.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!("name server: {e}");
                continue;
            }
        };
        let Some(agent) = agent.upgrade() else {
            return;
        };
        let Some(mesh) = agent.mesh().await else {
            continue;
        };
        drop(agent);
        let reply = answer(&mesh.table(), local_address(&mesh, addr), &buf[..n]);
        if let Some(reply) = reply {
            let _ = socket.send_to(&reply, peer).await;
        }
    }
}

/// The address this node's ingress ports answer on (the name server's if they listen on every
/// address).
fn local_address(mesh: &Arc<Mesh>, dns: SocketAddr) -> IpAddr {
    if mesh.addr().is_unspecified() {
        dns.ip()
    } else {
        mesh.addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;
    use shoal_cluster::{PortConfig, PublishMode, TaskEndpoint, TaskPort};

    fn table() -> Vec<ServiceEndpoints> {
        let task = |id, ip: &str, ready| TaskEndpoint {
            task: id,
            node: id,
            ip: ip.into(),
            ports: vec![TaskPort {
                target: 80,
                published: 30000 + id as u16,
                udp: false,
            }],
            ready,
        };
        vec![
            ServiceEndpoints {
                id: 1,
                name: "web".into(),
                ports: vec![PortConfig {
                    published: 8080,
                    target: 80,
                    udp: false,
                    mode: PublishMode::Ingress,
                }],
                tasks: vec![
                    task(1, "10.0.0.1", true),
                    task(2, "10.0.0.2", false),
                    task(3, "10.0.0.1", true),
                ],
            },
            ServiceEndpoints {
                id: 2,
                name: "db".into(),
                ports: vec![],
                tasks: vec![task(4, "10.0.0.3", true), task(5, "10.0.0.4", false)],
            },
        ]
    }

    fn ask(name: &str, kind: RecordType) -> Message {
        let mut q = Message::query();
        q.metadata.id = 77;
        q.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        let local: IpAddr = "10.0.0.9".parse().unwrap();
        Message::from_vec(&answer(&table(), local, &q.to_vec().unwrap()).unwrap()).unwrap()
    }

    fn addrs(m: &Message) -> Vec<String> {
        m.answers.iter().map(|r| r.data.to_string()).collect()
    }

    #[test]
    fn names_resolve_to_the_mesh_or_the_tasks() {
        // A service with ingress ports: this node's mesh.
        let m = ask("web.", RecordType::A);
        assert_eq!(m.metadata.id, 77);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(addrs(&m), ["10.0.0.9"]);
        // Its tasks: every running one, each address once, the not-ready one too.
        assert_eq!(
            addrs(&ask("TASKS.Web", RecordType::A)),
            ["10.0.0.1", "10.0.0.2"]
        );
        // Without ingress ports: its ready tasks.
        assert_eq!(addrs(&ask("db", RecordType::A)), ["10.0.0.3"]);
        assert_eq!(
            addrs(&ask("tasks.db", RecordType::A)),
            ["10.0.0.3", "10.0.0.4"]
        );
        // A known name, no IPv6 address: no data, not an error.
        let m = ask("web", RecordType::AAAA);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        // Unknown: NXDOMAIN.
        let m = ask("nope", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(
            ask("tasks.nope", RecordType::A).metadata.response_code,
            ResponseCode::NXDomain
        );
    }

    #[test]
    fn garbage_and_answers_are_dropped() {
        let local: IpAddr = "10.0.0.9".parse().unwrap();
        assert!(answer(&table(), local, b"").is_none());
        assert!(answer(&table(), local, &[0xff; 700]).is_none());
        let mut q = Message::query();
        q.add_query(Query::query(
            Name::from_ascii("web").unwrap(),
            RecordType::A,
        ));
        let mut bytes = q.to_vec().unwrap();
        // Truncated anywhere: never a panic.
        while !bytes.is_empty() {
            bytes.pop();
            let _ = answer(&table(), local, &bytes);
        }
        // A response is not answered.
        let r = Message::response(5, OpCode::Query);
        assert!(answer(&table(), local, &r.to_vec().unwrap()).is_none());
    }
}
