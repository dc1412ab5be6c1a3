//! `shoal-scheduler`: the spread scheduler of shoal, a pure core.
//!
//! Given a snapshot of the nodes ([`Node`]) and requests to place tasks of services
//! ([`ServiceRequest`]), [`Scheduler`] assigns tasks to nodes and explains, per filter, why the
//! rest stay pending ([`Explanation`]). It does no I/O, reads no clock and starts no threads
//! except inside [`Scheduler::schedule_batch`], which borrows scoped worker threads; several
//! callers may also call [`Scheduler::schedule`] from their own threads at once. Per-node
//! reservations are claimed with atomic compare-and-swap, so no node is ever over-committed and
//! no lock is taken while placing. Run on one thread, the output depends only on the input.
//!
//! [`rebalance`] proposes the fewest task moves that restore spread, e.g. after nodes join.
//!
//! ```
//! use shoal_scheduler::{Mode, Node, Resources, Scheduler, ServiceRequest, ServiceSpec};
//!
//! let nodes = vec![
//!     Node::new("n1", Resources::new(2_000, 4 << 30)).with_label("zone", "east"),
//!     Node::new("n2", Resources::new(2_000, 4 << 30)).with_label("zone", "west"),
//! ];
//! let spec = ServiceSpec::new("web", Mode::Replicated)?
//!     .with_constraints(&["node.role==worker"])?
//!     .with_preferences(&["spread=node.labels.zone"])?
//!     .with_reservation(Resources::new(1_000, 1 << 30))
//!     .with_max_replicas_per_node(2)?;
//! let scheduler = Scheduler::new(nodes);
//! let placement = scheduler.schedule(&ServiceRequest { spec, tasks: 5 });
//! assert_eq!(placement.assignments, vec![(0, 2), (1, 2)]);
//! let pending = placement.pending.unwrap();
//! assert_eq!(pending.tasks, 1);
//! assert_eq!(
//!     pending.explanation.to_string(),
//!     "no suitable node (insufficient resources on 2 nodes)"
//! );
//! # Ok::<(), shoal_scheduler::SpecError>(())
//! ```

#![warn(missing_docs)]

mod constraint;
mod error;
mod filter;
mod rebalance;
mod scheduler;
mod spec;
mod types;

pub use constraint::{
    parse_constraints, Constraint, ConstraintKey, IpMatcher, Operator, Preference,
};
pub use error::{ScheduleError, SpecError};
pub use filter::{Explanation, Filter};
pub use rebalance::{rebalance, Move};
pub use scheduler::{NodeUsage, Pending, Placement, Scheduler};
pub use spec::{Mode, ServiceRequest, ServiceSpec};
pub use types::{Availability, Node, NodeState, Platform, Resources, Role};

#[cfg(test)]
mod tests;
