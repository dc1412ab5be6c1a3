//! Compose's field shapes that take several forms: `environment` and `labels` as a list or a
//! map, `ports` in the short (`"8080:80/udp"`, ranges) and long syntax, and the service keys a
//! cluster cannot honour (one warning line per service, as the issue asks).

use serde_json::Value;
use shoal_cluster::{PortConfig, PublishMode};

/// Service keys Compose knows that a cluster cannot honour: warned about, then ignored.
pub const UNSUPPORTED: [&str; 28] = [
    "build",
    "cap_add",
    "cap_drop",
    "cgroup_parent",
    "container_name",
    "depends_on",
    "devices",
    "dns",
    "dns_search",
    "domainname",
    "expose",
    "external_links",
    "extra_hosts",
    "init",
    "ipc",
    "links",
    "logging",
    "network_mode",
    "pid",
    "platform",
    "privileged",
    "profiles",
    "pull_policy",
    "restart",
    "security_opt",
    "shm_size",
    "sysctls",
    "ulimits",
];

/// `Ignoring unsupported options for service web: build, depends_on` when any is set.
pub fn unsupported_warning(service: &str, keys: &serde_json::Map<String, Value>) -> Option<String> {
    let found: Vec<&str> = UNSUPPORTED
        .iter()
        .copied()
        .filter(|k| keys.contains_key(*k))
        .collect();
    (!found.is_empty()).then(|| {
        format!(
            "Ignoring unsupported options for service {service}: {}",
            found.join(", ")
        )
    })
}

/// A scalar as Compose reads it in a string position (numbers and booleans as written).
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `environment:` or `labels:` as `KEY=VALUE` pairs in order: a list of `KEY=VALUE` (a bare
/// `KEY` takes the value from `lookup`, and is dropped when unset, as Compose does) or a map
/// (a null value likewise).
pub fn key_values(
    v: &Value,
    what: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut put = |k: String, val: String| {
        out.retain(|(x, _)| *x != k);
        out.push((k, val));
    };
    match v {
        Value::Array(items) => {
            for item in items {
                let s = scalar(item)
                    .ok_or_else(|| format!("{what}: entries must be KEY=VALUE strings"))?;
                match s.split_once('=') {
                    Some((k, val)) if !k.is_empty() => put(k.to_string(), val.to_string()),
                    Some(_) => return Err(format!("{what}: {s:?} has no key")),
                    None => {
                        if let Some(val) = lookup(&s) {
                            put(s, val);
                        }
                    }
                }
            }
        }
        Value::Object(map) => {
            for (k, val) in map {
                match val {
                    Value::Null => {
                        if let Some(val) = lookup(k) {
                            put(k.clone(), val);
                        }
                    }
                    other => {
                        let s = scalar(other).ok_or_else(|| {
                            format!("{what}.{k}: a value must be a string, number or boolean")
                        })?;
                        put(k.clone(), s);
                    }
                }
            }
        }
        Value::Null => {}
        _ => return Err(format!("{what}: expected a list or a mapping")),
    }
    Ok(out)
}

/// One port number, or a range `a-b`, as a list.
fn port_range(s: &str, what: &str) -> Result<Vec<u16>, String> {
    let one = |p: &str| {
        p.trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{what}: invalid port {p:?}"))
    };
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (one(a)?, one(b)?);
            if b < a || b - a > 1000 {
                return Err(format!("{what}: invalid port range {s:?}"));
            }
            Ok((a..=b).collect())
        }
        None => Ok(vec![one(s)?]),
    }
}

/// `ports:` entries: short syntax (`"80"`, `"8080:80"`, `"127.0.0.1:8080:80"` — an address is
/// refused, a cluster publishes on every node —, `"9000-9002:9000-9002/udp"`) or long syntax
/// (`target`, `published`, `protocol`, `mode`). Short-syntax ports use the routing mesh
/// (ingress), as in Swarm.
pub fn ports(v: &Value, service: &str) -> Result<Vec<PortConfig>, String> {
    let what = format!("service {service}: ports");
    let items = match v {
        Value::Array(items) => items,
        Value::Null => return Ok(Vec::new()),
        _ => return Err(format!("{what}: expected a list")),
    };
    let mut out = Vec::new();
    for item in items {
        match item {
            Value::Object(m) => {
                let num = |k: &str| -> Result<u16, String> {
                    match m.get(k) {
                        None | Some(Value::Null) => Ok(0),
                        Some(v) => scalar(v)
                            .and_then(|s| s.parse::<u16>().ok())
                            .ok_or_else(|| format!("{what}: invalid {k} {v}")),
                    }
                };
                let target = num("target")?;
                if target == 0 {
                    return Err(format!("{what}: a long-syntax port needs a target"));
                }
                let udp = match m.get("protocol").and_then(Value::as_str).unwrap_or("tcp") {
                    "tcp" => false,
                    "udp" => true,
                    p => return Err(format!("{what}: invalid protocol {p:?}")),
                };
                let mode = match m.get("mode").and_then(Value::as_str).unwrap_or("ingress") {
                    "ingress" => PublishMode::Ingress,
                    "host" => PublishMode::Host,
                    p => return Err(format!("{what}: invalid mode {p:?}")),
                };
                out.push(PortConfig {
                    published: num("published")?,
                    target,
                    udp,
                    mode,
                });
            }
            other => {
                let s = scalar(other).ok_or_else(|| format!("{what}: invalid entry {other}"))?;
                let (spec, proto) = s.split_once('/').unwrap_or((&s, "tcp"));
                let udp = match proto {
                    "tcp" => false,
                    "udp" => true,
                    p => return Err(format!("{what}: invalid protocol {p:?} in {s:?}")),
                };
                let parts: Vec<&str> = spec.split(':').collect();
                let (published, target) = match parts.as_slice() {
                    [t] => (None, *t),
                    [p, t] => (Some(*p), *t),
                    _ => {
                        return Err(format!(
                            "{what}: {s:?}: a host address cannot be given (a service's ports \
                             are published on every node)"
                        ))
                    }
                };
                let targets = port_range(target, &what)?;
                let published = match published {
                    Some(p) => port_range(p, &what)?,
                    None => vec![0; targets.len()],
                };
                if published.len() != targets.len() {
                    return Err(format!("{what}: {s:?}: the ranges differ in length"));
                }
                for (p, t) in published.into_iter().zip(targets) {
                    out.push(PortConfig {
                        published: p,
                        target: t,
                        udp,
                        mode: PublishMode::Ingress,
                    });
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn none(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn environment_and_labels_as_lists_or_maps() {
        let lookup = |k: &str| (k == "HOME_DIR").then(|| "/home/x".to_string());
        assert_eq!(
            key_values(
                &json!(["A=1", "B=x=y", "HOME_DIR", "UNSET", "A=2"]),
                "environment",
                &lookup
            )
            .unwrap(),
            vec![
                ("B".into(), "x=y".into()),
                ("HOME_DIR".into(), "/home/x".into()),
                ("A".into(), "2".into())
            ]
        );
        assert_eq!(
            key_values(
                &json!({"N": 3, "T": true, "S": "s", "HOME_DIR": null}),
                "labels",
                &lookup
            )
            .unwrap(),
            vec![
                ("HOME_DIR".into(), "/home/x".into()),
                ("N".into(), "3".into()),
                ("S".into(), "s".into()),
                ("T".into(), "true".into())
            ]
        );
        assert!(key_values(&json!("A=1"), "environment", &none).is_err());
        assert!(key_values(&json!(["=1"]), "environment", &none).is_err());
        assert!(key_values(&json!({"A": [1]}), "environment", &none).is_err());
    }

    #[test]
    fn ports_short_long_and_ranges() {
        let p = ports(
            &json!([
                "80",
                "8080:80",
                "53:53/udp",
                9090,
                "9000-9001:8000-8001",
                {"target": 443, "published": 8443, "mode": "host"},
                {"target": 5000, "protocol": "udp"}
            ]),
            "web",
        )
        .unwrap();
        let short: Vec<(u16, u16, bool, PublishMode)> = p
            .iter()
            .map(|p| (p.published, p.target, p.udp, p.mode))
            .collect();
        use PublishMode::{Host, Ingress};
        assert_eq!(
            short,
            vec![
                (0, 80, false, Ingress),
                (8080, 80, false, Ingress),
                (53, 53, true, Ingress),
                (0, 9090, false, Ingress),
                (9000, 8000, false, Ingress),
                (9001, 8001, false, Ingress),
                (8443, 443, false, Host),
                (0, 5000, true, Ingress),
            ]
        );
        for bad in [
            json!(["127.0.0.1:80:80"]),
            json!(["80/sctp"]),
            json!(["0"]),
            json!(["9000-9002:80-81"]),
            json!(["90-80"]),
            json!([{"published": 80}]),
            json!([{"target": 80, "mode": "bridge"}]),
            json!("80:80"),
        ] {
            let e = ports(&bad, "web").unwrap_err();
            assert!(e.starts_with("service web: ports"), "{bad}: {e}");
        }
    }

    #[test]
    fn unsupported_keys_are_named_in_one_line() {
        let keys = json!({"image": "x", "depends_on": ["db"], "build": ".", "restart": "always"});
        assert_eq!(
            unsupported_warning("web", keys.as_object().unwrap()).unwrap(),
            "Ignoring unsupported options for service web: build, depends_on, restart"
        );
        let fine = json!({"image": "x"});
        assert!(unsupported_warning("web", fine.as_object().unwrap()).is_none());
    }
}
