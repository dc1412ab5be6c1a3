//! Service specifications as the scheduler needs them.

use crate::constraint::{parse_constraints, Constraint, Preference};
use crate::error::SpecError;
use crate::types::{normalize_arch, Node, Platform, Resources};

/// How many tasks a service wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A fixed number of replicas spread over the eligible nodes.
    Replicated,
    /// One task on every eligible node.
    Global,
}

/// A validated service specification: constraints and preferences are parsed once here, so a
/// malformed one is an error at service creation and never at scheduling time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    id: String,
    mode: Mode,
    constraints: Vec<Constraint>,
    preferences: Vec<Preference>,
    reservation: Resources,
    host_ports: Vec<u16>,
    max_replicas_per_node: Option<u32>,
    platforms: Vec<Platform>,
    runtime: Option<&'static str>,
}

impl ServiceSpec {
    /// A service with no constraints, preferences, reservations, ports or platform requirement.
    pub fn new(id: &str, mode: Mode) -> Result<Self, SpecError> {
        if id.is_empty() {
            return Err(SpecError::EmptyServiceId);
        }
        Ok(ServiceSpec {
            id: id.to_string(),
            mode,
            constraints: Vec::new(),
            preferences: Vec::new(),
            reservation: Resources::default(),
            host_ports: Vec::new(),
            max_replicas_per_node: None,
            platforms: Vec::new(),
            runtime: None,
        })
    }

    /// Sets the placement constraints (`node.labels.zone==east`, ...).
    pub fn with_constraints<S: AsRef<str>>(mut self, exprs: &[S]) -> Result<Self, SpecError> {
        self.constraints = parse_constraints(exprs)?;
        Ok(self)
    }

    /// Sets the placement preferences, outermost first (`spread=node.labels.zone`, ...).
    pub fn with_preferences<S: AsRef<str>>(mut self, exprs: &[S]) -> Result<Self, SpecError> {
        self.preferences = exprs
            .iter()
            .map(|e| Preference::parse(e.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(self)
    }

    /// Sets the per-task CPU and memory reservation.
    pub fn with_reservation(mut self, reservation: Resources) -> Self {
        self.reservation = reservation;
        self
    }

    /// Sets the host-mode published ports each task needs (duplicates are ignored).
    pub fn with_host_ports(mut self, mut ports: Vec<u16>) -> Self {
        ports.sort_unstable();
        ports.dedup();
        self.host_ports = ports;
        self
    }

    /// Limits how many tasks of this service one node may run.
    pub fn with_max_replicas_per_node(mut self, max: u32) -> Result<Self, SpecError> {
        if max == 0 {
            return Err(SpecError::ZeroMaxReplicas);
        }
        self.max_replicas_per_node = Some(max);
        Ok(self)
    }

    /// Restricts the service to nodes matching one of these platforms (empty: any).
    pub fn with_platforms(mut self, platforms: Vec<Platform>) -> Self {
        self.platforms = platforms;
        self
    }

    /// The service id.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// Replicated or global.
    pub fn mode(&self) -> Mode {
        self.mode
    }
    /// The parsed constraints.
    pub fn constraints(&self) -> &[Constraint] {
        &self.constraints
    }
    /// The parsed preferences, outermost first.
    pub fn preferences(&self) -> &[Preference] {
        &self.preferences
    }
    /// The per-task reservation.
    pub fn reservation(&self) -> Resources {
        self.reservation
    }
    /// The host-mode ports each task publishes.
    pub fn host_ports(&self) -> &[u16] {
        &self.host_ports
    }
    /// The per-node task cap, if any.
    pub fn max_replicas_per_node(&self) -> Option<u32> {
        self.max_replicas_per_node
    }
    /// Accepted platforms (empty: any).
    pub fn platforms(&self) -> &[Platform] {
        &self.platforms
    }

    /// True when every constraint holds on the node.
    pub fn constraints_match(&self, node: &Node) -> bool {
        self.constraints.iter().all(|c| c.matches(node))
    }

    /// Requires a runtime (`process`, `container`) on the nodes tasks go to.
    pub fn with_runtime(mut self, runtime: &'static str) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// The runtime required, if any.
    pub fn runtime(&self) -> Option<&'static str> {
        self.runtime
    }

    /// True when the node has the runtime the service needs (or it needs none).
    pub fn runtime_matches(&self, node: &Node) -> bool {
        self.runtime.is_none_or(|r| node.runtimes.contains(&r))
    }

    /// True when the node's platform is accepted.
    pub fn platform_matches(&self, node: &Node) -> bool {
        self.platforms.is_empty()
            || self.platforms.iter().any(|p| {
                (p.os.is_empty() || p.os.eq_ignore_ascii_case(&node.platform.os))
                    && (p.arch.is_empty()
                        || normalize_arch(&p.arch) == normalize_arch(&node.platform.arch))
            })
    }
}

/// A request to place tasks of one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRequest {
    /// The service.
    pub spec: ServiceSpec,
    /// For replicated services, how many new tasks to place. Ignored in global mode, where
    /// one task is placed on every eligible node that does not run one yet.
    pub tasks: u32,
}
