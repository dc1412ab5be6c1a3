//! Placement constraints (`node.labels.zone==east`) and placement preferences
//! (`spread=node.labels.zone`), parsed once per service.

use std::net::IpAddr;

use crate::error::SpecError;
use crate::types::{normalize_arch, Node};

/// The comparison of a constraint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    /// `==`
    Eq,
    /// `!=`
    Ne,
}

/// What a constraint's value is compared against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConstraintKey {
    /// `node.id`
    Id,
    /// `node.hostname`
    Hostname,
    /// `node.role`
    Role,
    /// `node.ip`
    Ip,
    /// `node.platform.os`
    PlatformOs,
    /// `node.platform.arch`
    PlatformArch,
    /// `node.labels.<key>` (the key is case-sensitive).
    Label(String),
}

/// The parsed right-hand side of a `node.ip` constraint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpMatcher {
    network: IpAddr,
    prefix: u8,
}

impl IpMatcher {
    fn parse(raw: &str) -> Option<Self> {
        let (addr, prefix) = match raw.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (raw, None),
        };
        let network: IpAddr = addr.trim().parse().ok()?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => {
                let p: u8 = p.trim().parse().ok()?;
                if p > max {
                    return None;
                }
                p
            }
            None => max,
        };
        Some(IpMatcher { network, prefix })
    }

    /// True when `ip` lies in the network (or equals the address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        fn masked(bits: u128, width: u32, prefix: u32) -> u128 {
            if prefix == 0 {
                0
            } else {
                bits >> (width - prefix)
            }
        }
        match (self.network, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let p = u32::from(self.prefix);
                masked(u128::from(u32::from(n)), 32, p) == masked(u128::from(u32::from(a)), 32, p)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let p = u32::from(self.prefix);
                masked(u128::from(n), 128, p) == masked(u128::from(a), 128, p)
            }
            _ => false,
        }
    }
}

/// One parsed placement constraint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    /// The node attribute compared.
    pub key: ConstraintKey,
    /// `==` or `!=`.
    pub op: Operator,
    /// The expected value: lower-cased for case-insensitive keys, verbatim for labels.
    pub value: String,
    ip: Option<IpMatcher>,
}

impl Constraint {
    /// Parses one constraint expression such as `node.role == manager`.
    pub fn parse(expr: &str) -> Result<Self, SpecError> {
        let bad = |reason: &str| SpecError::InvalidConstraint {
            constraint: expr.to_string(),
            reason: reason.to_string(),
        };
        let (lhs, op, rhs) = if let Some((l, r)) = expr.split_once("!=") {
            (l, Operator::Ne, r)
        } else if let Some((l, r)) = expr.split_once("==") {
            (l, Operator::Eq, r)
        } else {
            return Err(bad("expected `key==value` or `key!=value`"));
        };
        let lhs = lhs.trim();
        let rhs = rhs.trim();
        if rhs.contains("==") || rhs.contains("!=") {
            return Err(bad("more than one operator"));
        }
        if lhs.is_empty() {
            return Err(bad("empty key"));
        }
        if rhs.is_empty() {
            return Err(bad("empty value"));
        }
        let lower = lhs.to_ascii_lowercase();
        let key = match lower.as_str() {
            "node.id" => ConstraintKey::Id,
            "node.hostname" => ConstraintKey::Hostname,
            "node.role" => ConstraintKey::Role,
            "node.ip" => ConstraintKey::Ip,
            "node.platform.os" => ConstraintKey::PlatformOs,
            "node.platform.arch" => ConstraintKey::PlatformArch,
            _ if lower.starts_with("node.labels.") => {
                let label = &lhs["node.labels.".len()..];
                if label.is_empty() {
                    return Err(bad("empty label key"));
                }
                ConstraintKey::Label(label.to_string())
            }
            _ => return Err(bad("unsupported key (expected node.id, node.hostname, node.role, node.ip, node.platform.os, node.platform.arch or node.labels.<key>)")),
        };
        let (value, ip) = match &key {
            ConstraintKey::Label(_) => (rhs.to_string(), None),
            ConstraintKey::Ip => {
                let m = IpMatcher::parse(rhs)
                    .ok_or_else(|| bad("value is not an IP address or CIDR"))?;
                (rhs.to_string(), Some(m))
            }
            ConstraintKey::Role => {
                let v = rhs.to_ascii_lowercase();
                if v != "manager" && v != "worker" {
                    return Err(bad("role must be `manager` or `worker`"));
                }
                (v, None)
            }
            ConstraintKey::PlatformArch => (normalize_arch(rhs), None),
            _ => (rhs.to_ascii_lowercase(), None),
        };
        Ok(Constraint { key, op, value, ip })
    }

    /// True when the node satisfies this constraint.
    pub fn matches(&self, node: &Node) -> bool {
        let equal = match &self.key {
            ConstraintKey::Id => node.id.eq_ignore_ascii_case(&self.value),
            ConstraintKey::Hostname => node.hostname.eq_ignore_ascii_case(&self.value),
            ConstraintKey::Role => node.role.as_str() == self.value,
            ConstraintKey::Ip => self.ip.is_some_and(|m| m.contains(node.ip)),
            ConstraintKey::PlatformOs => node.platform.os.eq_ignore_ascii_case(&self.value),
            ConstraintKey::PlatformArch => normalize_arch(&node.platform.arch) == self.value,
            ConstraintKey::Label(k) => match node.labels.get(k) {
                Some(v) => *v == self.value,
                // `==` on a missing label fails, `!=` on a missing label passes.
                None => return self.op == Operator::Ne,
            },
        };
        match self.op {
            Operator::Eq => equal,
            Operator::Ne => !equal,
        }
    }
}

/// Parses a list of constraint expressions; the first malformed one is an error.
pub fn parse_constraints<S: AsRef<str>>(exprs: &[S]) -> Result<Vec<Constraint>, SpecError> {
    exprs
        .iter()
        .map(|e| Constraint::parse(e.as_ref()))
        .collect()
}

/// A placement preference: spread the replicas evenly across the values of a node label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preference {
    /// The label key (after `node.labels.`).
    pub label: String,
}

impl Preference {
    /// Parses `spread=node.labels.<key>`.
    pub fn parse(expr: &str) -> Result<Self, SpecError> {
        let bad = |reason: &str| SpecError::InvalidPreference {
            preference: expr.to_string(),
            reason: reason.to_string(),
        };
        let (kind, target) = expr
            .split_once('=')
            .ok_or_else(|| bad("expected `spread=node.labels.<key>`"))?;
        if !kind.trim().eq_ignore_ascii_case("spread") {
            return Err(bad("only `spread` preferences are supported"));
        }
        let target = target.trim();
        if !target.to_ascii_lowercase().starts_with("node.labels.") {
            return Err(bad("spread target must be `node.labels.<key>`"));
        }
        let label = &target["node.labels.".len()..];
        if label.is_empty() {
            return Err(bad("empty label key"));
        }
        Ok(Preference {
            label: label.to_string(),
        })
    }
}
