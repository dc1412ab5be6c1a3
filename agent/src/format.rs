//! What the CLI prints: the `node ls` table, ids, JSON and the `node inspect --pretty` view, as
//! the docker CLI prints them. Pure: values in, strings out.
//!
//! Every string returned ends with a newline unless it is empty. Text that came from the cluster
//! is shown with control characters replaced by `?`, so that a hostile name cannot drive the
//! terminal.

pub mod template;

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::Serialize;

use crate::api::NodeView;

/// The columns of `node ls`.
const NODE_HEADERS: [&str; 6] = [
    "ID",
    "HOSTNAME",
    "STATUS",
    "AVAILABILITY",
    "MANAGER STATUS",
    "ENGINE VERSION",
];

/// Spaces after the widest cell of a column (the docker CLI's tabwriter padding).
const COLUMN_PADDING: usize = 3;

/// Compares strings "naturally": runs of ASCII digits compare by numeric value (`node2` <
/// `node10`), everything else byte by byte. Strings that differ only in leading zeros are
/// ordered by plain comparison, so the order is total.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (x, y) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < x.len() && j < y.len() {
        if x[i].is_ascii_digit() && y[j].is_ascii_digit() {
            let (si, sj) = (i, j);
            while i < x.len() && x[i].is_ascii_digit() {
                i += 1;
            }
            while j < y.len() && y[j].is_ascii_digit() {
                j += 1;
            }
            let na = trim_zeros(&x[si..i]);
            let nb = trim_zeros(&y[sj..j]);
            let ord = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
            if ord != Ordering::Equal {
                return ord;
            }
        } else {
            // Byte order is code point order in UTF-8; digits are ASCII, so runs never split a
            // multi-byte character.
            let ord = x[i].cmp(&y[j]);
            if ord != Ordering::Equal {
                return ord;
            }
            i += 1;
            j += 1;
        }
    }
    (x.len() - i).cmp(&(y.len() - j)).then_with(|| a.cmp(b))
}

fn trim_zeros(digits: &[u8]) -> &[u8] {
    let first = digits
        .iter()
        .position(|&d| d != b'0')
        .unwrap_or(digits.len());
    &digits[first..]
}

/// The nodes in display order: naturally by hostname, then by id.
fn sorted(nodes: &[NodeView]) -> Vec<&NodeView> {
    let mut sorted: Vec<&NodeView> = nodes.iter().collect();
    sorted.sort_by(|a, b| natural_cmp(&a.hostname, &b.hostname).then_with(|| a.id.cmp(&b.id)));
    sorted
}

/// Untrusted text made safe for a terminal: control characters become `?`.
pub(crate) fn clean(s: &str) -> Cow<'_, str> {
    if s.chars().any(char::is_control) {
        Cow::Owned(
            s.chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .collect(),
        )
    } else {
        Cow::Borrowed(s)
    }
}

/// Borderless aligned columns: each column but the last is padded to its widest cell plus
/// [`COLUMN_PADDING`] spaces; no trailing spaces.
pub(crate) fn render_table<const N: usize>(rows: &[[Cow<'_, str>; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if c + 1 < N {
                let pad = widths[c] + COLUMN_PADDING - cell.chars().count();
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end_matches(' '));
        out.push('\n');
    }
    out
}

/// `node ls`: the header and one row per node, sorted naturally by hostname (then id), with `*`
/// after the id of the node that answered (`self_id`).
pub fn node_table(self_id: &str, nodes: &[NodeView]) -> String {
    let mut rows: Vec<[Cow<'_, str>; 6]> = vec![NODE_HEADERS.map(Cow::Borrowed)];
    for n in sorted(nodes) {
        let id = if !self_id.is_empty() && n.id == self_id {
            Cow::Owned(format!("{} *", clean(&n.id)))
        } else {
            clean(&n.id)
        };
        rows.push([
            id,
            clean(&n.hostname),
            clean(&n.status),
            clean(&n.availability),
            clean(&n.manager_status),
            clean(&n.engine_version),
        ]);
    }
    render_table(&rows)
}

/// `node ls -q`: one id per line, in table order.
pub fn node_ids(nodes: &[NodeView]) -> String {
    sorted(nodes)
        .into_iter()
        .map(|n| format!("{}\n", clean(&n.id)))
        .collect()
}

/// One row of `node ls --format json`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct NodeLine<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    hostname: &'a str,
    status: &'a str,
    availability: &'a str,
    manager_status: &'a str,
    engine_version: &'a str,
    #[serde(rename = "Self")]
    is_self: bool,
}

/// `node ls --format json`: one JSON object per line (as the docker CLI prints it), in table
/// order, with the keys `ID`, `Hostname`, `Status`, `Availability`, `ManagerStatus`,
/// `EngineVersion` and `Self` (true for the node that answered).
pub fn nodes_json(self_id: &str, nodes: &[NodeView]) -> String {
    let mut out = String::new();
    for line in node_lines(self_id, nodes) {
        // Serializing plain strings and a bool cannot fail.
        if let Ok(json) = serde_json::to_string(&line) {
            out.push_str(&json);
            out.push('\n');
        }
    }
    out
}

/// `node ls --format TEMPLATE`: the template applied to each node in table order (fields as
/// in [`nodes_json`]).
pub fn nodes_template(template: &str, self_id: &str, nodes: &[NodeView]) -> Result<String, String> {
    template::render_rows(template, &node_lines(self_id, nodes))
}

/// The nodes in table order, with docker's field names.
fn node_lines<'a>(self_id: &str, nodes: &'a [NodeView]) -> Vec<NodeLine<'a>> {
    sorted(nodes)
        .into_iter()
        .map(|n| NodeLine {
            id: &n.id,
            hostname: &n.hostname,
            status: &n.status,
            availability: &n.availability,
            manager_status: &n.manager_status,
            engine_version: &n.engine_version,
            is_self: !self_id.is_empty() && n.id == self_id,
        })
        .collect()
}

/// Parses `--filter` values and keeps the nodes that pass them all.
///
/// Keys: `role=manager|worker` (observed role), `name=<part of the hostname>`, `id=<id prefix>`,
/// `label=<key>` or `label=<key>=<value>` (`node.label` is accepted as a synonym). Filters with
/// different keys must all match; filters with the same key match if any of them does (docker
/// semantics). Keys are case-insensitive; keys and values are trimmed.
pub fn filter_nodes(nodes: Vec<NodeView>, filters: &[String]) -> Result<Vec<NodeView>, String> {
    let mut by_key: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    for filter in filters {
        let Some((key, value)) = filter.trim().split_once('=') else {
            return Err("bad format of filter (expected name=value)".into());
        };
        let key = match key.trim().to_ascii_lowercase().as_str() {
            "role" => "role",
            "name" => "name",
            "id" => "id",
            "label" | "node.label" => "label",
            other => return Err(format!("invalid filter '{other}'")),
        };
        let value = value.trim();
        if key == "role" && value != "manager" && value != "worker" {
            return Err(format!(
                "invalid filter 'role={value}': expected manager or worker"
            ));
        }
        by_key.entry(key).or_default().push(value.to_string());
    }
    Ok(nodes
        .into_iter()
        .filter(|n| {
            by_key
                .iter()
                .all(|(key, values)| values.iter().any(|v| matches_filter(n, key, v)))
        })
        .collect())
}

fn matches_filter(node: &NodeView, key: &str, value: &str) -> bool {
    match key {
        "role" => node.role == value,
        "name" => node.hostname.contains(value),
        "id" => node.id.starts_with(&value.to_ascii_lowercase()),
        "label" => match value.split_once('=') {
            Some((k, v)) => node.labels.get(k).is_some_and(|have| have == v),
            None => node.labels.contains_key(value),
        },
        _ => false,
    }
}

/// `node inspect`: the nodes as a pretty JSON array.
pub fn inspect_json(nodes: &[NodeView]) -> String {
    // Serializing strings, numbers and string maps cannot fail; fall back to an empty array.
    let mut out = serde_json::to_string_pretty(nodes).unwrap_or_else(|_| "[]".into());
    out.push('\n');
    out
}

/// Appends `label` and `value`, with tabs aligning the value at column 24 (tab stops of 8), as
/// the docker CLI's `--pretty` templates do.
fn field(out: &mut String, label: &str, value: &str) {
    out.push_str(label);
    let tabs = 3usize.saturating_sub(label.chars().count() / 8).max(1);
    out.extend(std::iter::repeat_n('\t', tabs));
    out.push_str(&clean(value));
    out.push('\n');
}

/// `info`: the agent and its swarm for humans, in the layout of the Swarm section of
/// `docker info`.
pub fn info_text(info: &crate::api::InfoView) -> String {
    let mut out = format!("Swarm: {}\n", clean(&info.swarm));
    let mut line = |label: &str, value: &str| {
        out.push_str(label);
        out.push_str(": ");
        out.push_str(&clean(value));
        out.push('\n');
    };
    if info.swarm == "locked" {
        line(" NodeID", &info.node_id);
        line(" ClusterID", &info.cluster_id);
        line(" Error", crate::keys::LOCKED);
    }
    if info.swarm == "active" {
        line(" NodeID", &info.node_id);
        line(
            " Is Manager",
            if info.role == "manager" {
                "true"
            } else {
                "false"
            },
        );
        line(" ClusterID", &info.cluster_id);
        if !info.leader.is_empty() {
            line(" Leader", &info.leader);
        }
        if info.role == "manager" {
            line(" Managers", &info.voters.len().to_string());
        }
        let count = |k: &str| info.members.get(k).copied().unwrap_or(0);
        line(
            " Members",
            &format!(
                "{} alive, {} suspect, {} dead, {} left",
                count("alive"),
                count("suspect"),
                count("dead"),
                count("left")
            ),
        );
        if info.role == "manager" {
            out.push_str(" Raft:\n");
            out.push_str(&format!("  Term: {}\n", info.term));
            out.push_str(&format!("  Commit Index: {}\n", info.commit_index));
            out.push_str(&format!("  Applied Index: {}\n", info.applied_index));
            out.push_str("  Voters:\n");
            for v in &info.voters {
                out.push_str(&format!("   {}\n", clean(v)));
            }
        }
    }
    out.push_str(&format!(" Node Address: {}\n", clean(&info.listen_addr)));
    out
}

/// `node inspect --pretty`: the node for humans, in the layout of `docker node inspect --pretty`.
/// The id of the node that answered is accepted for symmetry with [`node_table`]; like docker's,
/// this view does not mark it.
pub fn inspect_pretty(_self_id: &str, node: &NodeView) -> String {
    let mut out = String::new();
    field(&mut out, "ID:", &node.id);
    field(&mut out, "Hostname:", &node.hostname);
    field(&mut out, "Joined at:", &rfc3339_utc(node.created_at_ms));
    out.push_str("Status:\n");
    field(&mut out, " State:", &node.status);
    if !node.status_message.is_empty() {
        field(&mut out, " Message:", &node.status_message);
    }
    field(&mut out, " Availability:", &node.availability);
    if !node.addr.is_empty() {
        field(&mut out, " Address:", &host_of(&node.addr));
    }
    if node.role == "manager" || !node.manager_status.is_empty() {
        out.push_str("Manager Status:\n");
        field(&mut out, " Address:", &node.addr);
        // As docker: the leader is "Reachable", and `Leader:` says that it leads.
        let leads = node.manager_status == "Leader";
        let raft_status = if leads {
            "Reachable"
        } else {
            &node.manager_status
        };
        field(&mut out, " Raft Status:", raft_status);
        field(&mut out, " Leader:", if leads { "Yes" } else { "No" });
    }
    out.push_str("Platform:\n");
    field(&mut out, " Operating System:", &node.os);
    field(&mut out, " Architecture:", &node.arch);
    out.push_str("Resources:\n");
    field(&mut out, " CPUs:", &cpus(node.nano_cpus));
    field(&mut out, " Memory:", &human_bytes(node.memory_bytes));
    if !node.labels.is_empty() {
        out.push_str("Labels:\n");
        for (k, v) in &node.labels {
            if v.is_empty() {
                out.push_str(&format!(" - {}\n", clean(k)));
            } else {
                out.push_str(&format!(" - {}={}\n", clean(k), clean(v)));
            }
        }
    }
    field(&mut out, "Engine Version:", &node.engine_version);
    field(&mut out, "Agent Version:", &node.agent_version);
    let runtimes = if node.runtimes.is_empty() {
        "none (this node runs no tasks)".to_string()
    } else {
        node.runtimes.join(", ")
    };
    field(&mut out, "Runtimes:", &runtimes);
    for p in &node.runtime_problems {
        field(&mut out, " Unavailable:", p);
    }
    // The engine always enforces a container's limits; the flag is about every runtime.
    let containers = node.runtimes.iter().any(|r| r == "container");
    field(
        &mut out,
        "Resource Limits:",
        match (node.limits_enforced, containers) {
            (true, true) => "enforced (the Docker Engine for containers, cgroup v2 for processes)",
            (true, false) => "enforced (cgroup v2)",
            (false, true) => {
                "enforced for containers (by the Docker Engine); not for processes on this node \
                 (reservations still count in scheduling)"
            }
            (false, false) => "not enforced on this node (reservations still count in scheduling)",
        },
    );
    out
}

/// The IP of an `ip:port` address (the address itself if it does not parse).
fn host_of(addr: &str) -> String {
    match addr.parse::<std::net::SocketAddr>() {
        Ok(a) => a.ip().to_string(),
        Err(_) => addr.to_string(),
    }
}

/// CPUs from nano-CPUs, exactly: `4`, `0.5`, `1.25`.
fn cpus(nano_cpus: u64) -> String {
    let whole = nano_cpus / 1_000_000_000;
    let frac = nano_cpus % 1_000_000_000;
    if frac == 0 {
        whole.to_string()
    } else {
        let digits = format!("{frac:09}");
        format!("{whole}.{}", digits.trim_end_matches('0'))
    }
}

/// Bytes in binary units with four significant digits, as the docker CLI shows memory:
/// `512B`, `1.5GiB`, `7.785GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let int_digits = if value < 1.0 {
        1
    } else {
        value.log10().floor() as usize + 1
    };
    let decimals = 4usize.saturating_sub(int_digits);
    let mut text = format!("{value:.decimals$}");
    if text.contains('.') {
        let trimmed = text.trim_end_matches('0').trim_end_matches('.').len();
        text.truncate(trimmed);
    }
    format!("{text}{}", UNITS[unit])
}

/// `swarm ca client-cert ls`: one row per certificate in force.
pub fn client_cert_table(certs: &[shoal_cluster::Operator]) -> String {
    let mut rows: Vec<[Cow<'_, str>; 4]> =
        vec![["NAME", "ACCESS", "SERIAL", "EXPIRES"].map(Cow::Borrowed)];
    for c in certs {
        rows.push([
            clean(&c.name),
            Cow::Borrowed(if c.read_only { "read-only" } else { "admin" }),
            clean(&c.serial),
            Cow::Owned(rfc3339_utc(c.not_after_ms)),
        ]);
    }
    render_table(&rows)
}

/// Unix milliseconds as an RFC 3339 UTC timestamp with milliseconds:
/// `2024-02-29T13:05:09.042Z`.
pub fn rfc3339_utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let millis = unix_ms % 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's
/// `civil_from_days`, for non-negative day counts).
fn civil_from_days(days: u64) -> (u64, u32, u32) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z / 146_097;
    let doe = z % 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March-based
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32; // [1, 12]
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, hostname: &str, role: &str, manager_status: &str) -> NodeView {
        NodeView {
            id: id.into(),
            hostname: hostname.into(),
            status: "Ready".into(),
            status_message: String::new(),
            availability: "Active".into(),
            manager_status: manager_status.into(),
            engine_version: "0.1.0".into(),
            agent_version: "0.1.0".into(),
            runtime_problems: Vec::new(),
            role: role.into(),
            desired_role: role.into(),
            addr: "127.0.0.1:4242".into(),
            labels: BTreeMap::new(),
            os: "linux".into(),
            arch: "amd64".into(),
            nano_cpus: 4_000_000_000,
            memory_bytes: 3 << 29,
            created_at_ms: 1_709_211_909_042,
            updated_at_ms: 1_709_211_909_042,
            version: 7,
            runtimes: vec!["process".into()],
            limits_enforced: false,
        }
    }

    fn cluster() -> Vec<NodeView> {
        let mut n10 = node("000000000000000a", "node10", "worker", "");
        n10.status = "Down".into();
        n10.availability = "Drain".into();
        n10.labels.insert("zone".into(), "eu-1".into());
        let mut n2 = node("0000000000000002", "node2", "manager", "Reachable");
        n2.labels.insert("ssd".into(), String::new());
        n2.labels.insert("zone".into(), "eu-2".into());
        vec![
            n10,
            node("0000000000000001", "node1", "manager", "Leader"),
            n2,
        ]
    }

    #[test]
    fn a_locked_node_says_so_in_info() {
        let mut info = crate::api::InfoView::inactive("127.0.0.1:4242".into());
        info.swarm = "locked".into();
        info.node_id = "8a4c2401a63e94c5".into();
        info.cluster_id = "7463ae51".into();
        assert_eq!(
            info_text(&info),
            "Swarm: locked\n NodeID: 8a4c2401a63e94c5\n ClusterID: 7463ae51\n Error: this node is \
             locked: run shoal swarm unlock\n Node Address: 127.0.0.1:4242\n"
        );
    }

    #[test]
    fn info_text_follows_docker_info_swarm_section() {
        let mut info = crate::api::InfoView {
            swarm: "active".into(),
            node_id: "8a4c2401a63e94c5".into(),
            cluster_id: "7463ae51".into(),
            role: "manager".into(),
            leader: "8a4c2401a63e94c5".into(),
            term: 3,
            commit_index: 40,
            applied_index: 39,
            voters: vec!["8a4c2401a63e94c5".into(), "9472f713ebe5df46".into()],
            outgoing_voters: vec![],
            members: [("alive".to_string(), 2), ("dead".to_string(), 1)]
                .into_iter()
                .collect(),
            listen_addr: "10.0.0.1:4242".into(),
        };
        assert_eq!(
            info_text(&info),
            "Swarm: active\n NodeID: 8a4c2401a63e94c5\n Is Manager: true\n ClusterID: 7463ae51\n \
             Leader: 8a4c2401a63e94c5\n Managers: 2\n Members: 2 alive, 0 suspect, 1 dead, 0 left\n \
             Raft:\n  Term: 3\n  Commit Index: 40\n  Applied Index: 39\n  Voters:\n   \
             8a4c2401a63e94c5\n   9472f713ebe5df46\n Node Address: 10.0.0.1:4242\n"
        );
        info.role = "worker".into();
        info.leader.clear();
        info.voters.clear();
        let text = info_text(&info);
        assert!(text.contains(" Is Manager: false\n"), "{text}");
        assert!(!text.contains("Raft") && !text.contains("Leader"), "{text}");
    }

    #[test]
    fn natural_order() {
        let mut names = vec![
            "node10", "node2", "node1", "Node3", "node02", "a", "", "node1a", "b1",
        ];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            names,
            ["", "Node3", "a", "b1", "node1", "node1a", "node02", "node2", "node10"]
        );
        assert_eq!(
            natural_cmp("x99999999999999999999999", "x100000000000000000000000"),
            Ordering::Less
        );
        assert_eq!(natural_cmp("été2", "été10"), Ordering::Less);
        assert_eq!(natural_cmp("n5", "n5"), Ordering::Equal);
    }

    #[test]
    fn the_node_table() {
        let expected = "\
ID                   HOSTNAME   STATUS   AVAILABILITY   MANAGER STATUS   ENGINE VERSION
0000000000000001 *   node1      Ready    Active         Leader           0.1.0
0000000000000002     node2      Ready    Active         Reachable        0.1.0
000000000000000a     node10     Down     Drain                           0.1.0
";
        assert_eq!(node_table("0000000000000001", &cluster()), expected);
    }

    #[test]
    fn table_edge_cases() {
        assert_eq!(
            node_table("", &[]),
            "ID   HOSTNAME   STATUS   AVAILABILITY   MANAGER STATUS   ENGINE VERSION\n"
        );
        // Ties on hostname break by id; the last column may be empty (no trailing spaces);
        // control characters are neutralised.
        let mut a = node("00000000000000b2", "twin", "worker", "");
        a.engine_version = String::new();
        let mut b = node("00000000000000b1", "twin", "worker", "");
        b.status = "Down\u{1b}[31m".into();
        let expected = "\
ID                 HOSTNAME   STATUS      AVAILABILITY   MANAGER STATUS   ENGINE VERSION
00000000000000b1   twin       Down?[31m   Active                          0.1.0
00000000000000b2   twin       Ready       Active
";
        assert_eq!(node_table("ffffffffffffffff", &[a, b]), expected);
    }

    #[test]
    fn ids_in_table_order() {
        assert_eq!(
            node_ids(&cluster()),
            "0000000000000001\n0000000000000002\n000000000000000a\n"
        );
        assert_eq!(node_ids(&[]), "");
    }

    #[test]
    fn json_lines() {
        let out = nodes_json("0000000000000002", &cluster());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[1],
            r#"{"ID":"0000000000000002","Hostname":"node2","Status":"Ready","Availability":"Active","ManagerStatus":"Reachable","EngineVersion":"0.1.0","Self":true}"#
        );
        assert!(lines[0].ends_with(r#""Self":false}"#));
        assert!(lines[2].contains(r#""Hostname":"node10""#));
        assert_eq!(nodes_json("", &[]), "");
    }

    fn hostnames(nodes: &[NodeView]) -> Vec<&str> {
        let mut names: Vec<&str> = nodes.iter().map(|n| n.hostname.as_str()).collect();
        names.sort_by(|a, b| natural_cmp(a, b));
        names
    }

    fn filtered(filters: &[&str]) -> Result<Vec<NodeView>, String> {
        let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
        filter_nodes(cluster(), &filters)
    }

    #[test]
    fn filters() {
        let names = |f: &[&str]| hostnames(&filtered(f).unwrap()).join(",");
        assert_eq!(names(&[]), "node1,node2,node10");
        assert_eq!(names(&["role=manager"]), "node1,node2");
        assert_eq!(names(&["role=worker"]), "node10");
        assert_eq!(names(&["name=node1"]), "node1,node10");
        assert_eq!(names(&["name=de2"]), "node2");
        assert_eq!(names(&["id=000000000000000"]), "node1,node2,node10");
        assert_eq!(names(&["id=000000000000000A"]), "node10");
        assert_eq!(names(&["label=zone"]), "node2,node10");
        assert_eq!(names(&["label=zone=eu-1"]), "node10");
        assert_eq!(names(&["node.label=ssd"]), "node2");
        assert_eq!(names(&["label=ssd="]), "node2");
        // Same key: OR; different keys: AND.
        assert_eq!(names(&["name=node2", "name=node10"]), "node2,node10");
        assert_eq!(names(&["role=manager", "label=zone"]), "node2");
        assert_eq!(names(&["role=manager", "name=node10"]), "");
        assert_eq!(names(&[" ROLE = worker "]), "node10");
    }

    #[test]
    fn bad_filters() {
        assert_eq!(filtered(&["xyz=1"]).unwrap_err(), "invalid filter 'xyz'");
        assert_eq!(
            filtered(&["membership=accepted"]).unwrap_err(),
            "invalid filter 'membership'"
        );
        assert_eq!(
            filtered(&["role"]).unwrap_err(),
            "bad format of filter (expected name=value)"
        );
        assert_eq!(
            filtered(&["role=boss"]).unwrap_err(),
            "invalid filter 'role=boss': expected manager or worker"
        );
        // Checked even with no nodes, so that the CLI can validate before calling.
        assert!(filter_nodes(Vec::new(), &["bad".to_string()]).is_err());
    }

    #[test]
    fn inspect_as_json() {
        let nodes = cluster();
        let out = inspect_json(&nodes[..2]);
        assert!(out.starts_with("[\n  {\n    \"id\": \"000000000000000a\",\n"));
        assert!(out.ends_with("}\n]\n"));
        let back: Vec<NodeView> = serde_json::from_str(&out).unwrap();
        assert_eq!(back, nodes[..2]);
        assert_eq!(inspect_json(&[]), "[]\n");
    }

    #[test]
    fn inspect_for_humans() {
        let mut n = cluster().remove(2);
        n.status_message = "heartbeat failure".into();
        n.nano_cpus = 1_500_000_000;
        let expected = "\
ID:\t\t\t0000000000000002
Hostname:\t\tnode2
Joined at:\t\t2024-02-29T13:05:09.042Z
Status:
 State:\t\t\tReady
 Message:\t\theartbeat failure
 Availability:\t\tActive
 Address:\t\t127.0.0.1
Manager Status:
 Address:\t\t127.0.0.1:4242
 Raft Status:\t\tReachable
 Leader:\t\tNo
Platform:
 Operating System:\tlinux
 Architecture:\t\tamd64
Resources:
 CPUs:\t\t\t1.5
 Memory:\t\t1.5GiB
Labels:
 - ssd
 - zone=eu-2
Engine Version:\t\t0.1.0
Agent Version:\t\t0.1.0
Runtimes:\t\tprocess
Resource Limits:\tnot enforced on this node (reservations still count in scheduling)
";
        assert_eq!(inspect_pretty("0000000000000001", &n), expected);
        let mut enforced = n.clone();
        enforced.limits_enforced = true;
        enforced.runtimes.clear();
        let out = inspect_pretty("", &enforced);
        assert!(
            out.contains("Runtimes:\t\tnone (this node runs no tasks)\n"),
            "{out}"
        );
        assert!(
            out.contains("Resource Limits:\tenforced (cgroup v2)\n"),
            "{out}"
        );
        // A node with an engine enforces its containers' limits even without cgroups.
        let mut engine = n.clone();
        engine.runtimes = vec!["process".into(), "container".into()];
        let out = inspect_pretty("", &engine);
        assert!(
            out.contains(
                "Resource Limits:\tenforced for containers (by the Docker Engine); not for \
                 processes on this node"
            ),
            "{out}"
        );

        let w = cluster().remove(0);
        let out = inspect_pretty("", &w);
        assert!(!out.contains("Manager Status:"));
        assert!(!out.contains("Message:"));
        assert!(out.contains("Labels:\n - zone=eu-1\nEngine Version:"));
        let leader = node("0000000000000001", "node1", "manager", "Leader");
        assert!(
            inspect_pretty("", &leader).contains(" Raft Status:\t\tReachable\n Leader:\t\tYes\n")
        );
    }

    #[test]
    fn units() {
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(1024), "1KiB");
        assert_eq!(human_bytes(1536), "1.5KiB");
        assert_eq!(human_bytes(3 << 29), "1.5GiB");
        assert_eq!(human_bytes(8_359_174_144), "7.785GiB");
        assert_eq!(human_bytes(1_048_575), "1024KiB");
        assert_eq!(human_bytes(u64::MAX), "16EiB");
        assert_eq!(cpus(4_000_000_000), "4");
        assert_eq!(cpus(250_000_000), "0.25");
        assert_eq!(cpus(0), "0");
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_utc(1_709_211_909_042), "2024-02-29T13:05:09.042Z");
        assert_eq!(rfc3339_utc(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
        assert_eq!(
            rfc3339_utc(253_402_300_800_000),
            "10000-01-01T00:00:00.000Z"
        );
        // Every day from 1970 to 2100 follows the previous one.
        let mut prev = civil_from_days(0);
        for d in 1..47_482u64 {
            let (y, m, day) = civil_from_days(d);
            let next_in_month = (y, m, day) == (prev.0, prev.1, prev.2 + 1);
            let next_month = day == 1
                && ((y, m) == (prev.0, prev.1 + 1) || (y, m, prev.1) == (prev.0 + 1, 1, 12));
            assert!(
                next_in_month || next_month,
                "{d}: {prev:?} -> {:?}",
                (y, m, day)
            );
            prev = (y, m, day);
        }
        assert_eq!(prev, (2099, 12, 31));
    }
}
