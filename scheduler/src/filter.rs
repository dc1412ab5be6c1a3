//! The placement filters and the per-filter explanation of pending tasks.

use std::fmt;

/// One placement filter. A task may go to a node only if every filter passes; when none
/// does, each node is counted under the first filter it fails, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Filter {
    /// The node is not ready or not active (paused or drained).
    Availability,
    /// The node lacks the service's runtime (`process`, `container`).
    Runtime,
    /// Not enough unreserved CPU or memory.
    Resources,
    /// A placement constraint is not satisfied.
    Constraints,
    /// The node's OS or architecture is not accepted.
    Platform,
    /// A host-mode published port is already in use.
    HostPort,
    /// The node already runs `max_replicas_per_node` tasks of the service.
    MaxReplicas,
}

impl Filter {
    /// All filters, in evaluation order.
    pub const ALL: [Filter; 7] = [
        Filter::Availability,
        Filter::Runtime,
        Filter::Resources,
        Filter::Constraints,
        Filter::Platform,
        Filter::HostPort,
        Filter::MaxReplicas,
    ];

    fn describe(self) -> &'static str {
        match self {
            Filter::Availability => "node not available for new tasks",
            Filter::Runtime => "runtime not available",
            Filter::Resources => "insufficient resources",
            Filter::Constraints => "scheduling constraints not satisfied",
            Filter::Platform => "unsupported platform",
            Filter::HostPort => "host-mode port already in use",
            Filter::MaxReplicas => "max replicas per node limit exceeded",
        }
    }
}

/// Why tasks stay pending: how many nodes failed each filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Explanation {
    counts: [u32; 7],
    runtime: &'static str,
}

impl Explanation {
    /// Counts one more node failing `filter`.
    pub fn add(&mut self, filter: Filter) {
        self.counts[filter as usize] += 1;
    }

    /// How many nodes failed `filter`.
    pub fn count(&self, filter: Filter) -> u32 {
        self.counts[filter as usize]
    }

    /// Names the runtime the service needs, for the runtime filter's words.
    pub fn set_runtime(&mut self, runtime: &'static str) {
        self.runtime = runtime;
    }

    /// Total nodes counted.
    pub fn nodes(&self) -> u32 {
        self.counts.iter().sum()
    }
}

impl fmt::Display for Explanation {
    /// `no suitable node (insufficient resources on 3 nodes; scheduling constraints not satisfied on 4 nodes)`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no suitable node")?;
        if self.nodes() == 0 {
            return f.write_str(" (no nodes in the cluster)");
        }
        let mut first = true;
        for filter in Filter::ALL {
            let n = self.count(filter);
            if n == 0 {
                continue;
            }
            f.write_str(if first { " (" } else { "; " })?;
            first = false;
            let plural = if n == 1 { "" } else { "s" };
            if filter == Filter::Runtime && !self.runtime.is_empty() {
                write!(
                    f,
                    "runtime \"{}\" not available on {n} node{plural}",
                    self.runtime
                )?;
            } else {
                write!(f, "{} on {n} node{plural}", filter.describe())?;
            }
        }
        f.write_str(")")
    }
}
