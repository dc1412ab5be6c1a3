//! The placement filters and the per-filter explanation of pending tasks.

use std::fmt;

/// One placement filter. A task may go to a node only if every filter passes; when none
/// does, each node is counted under the first filter it fails, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Filter {
    /// The node is not ready or not active (paused or drained).
    Availability,
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
    pub const ALL: [Filter; 6] = [
        Filter::Availability,
        Filter::Resources,
        Filter::Constraints,
        Filter::Platform,
        Filter::HostPort,
        Filter::MaxReplicas,
    ];

    fn describe(self) -> &'static str {
        match self {
            Filter::Availability => "node not available for new tasks",
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
    counts: [u32; 6],
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
            write!(
                f,
                "{} on {} node{}",
                filter.describe(),
                n,
                if n == 1 { "" } else { "s" }
            )?;
        }
        f.write_str(")")
    }
}
