//! Errors returned as values.

use thiserror::Error;

/// A service specification the scheduler cannot accept.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SpecError {
    /// A constraint expression could not be parsed.
    #[error("invalid constraint `{constraint}`: {reason}")]
    InvalidConstraint {
        /// The expression as given.
        constraint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A placement preference could not be parsed.
    #[error("invalid placement preference `{preference}`: {reason}")]
    InvalidPreference {
        /// The expression as given.
        preference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The service id is empty.
    #[error("service id must not be empty")]
    EmptyServiceId,
    /// `max_replicas_per_node` was set to zero.
    #[error("max replicas per node must be at least 1")]
    ZeroMaxReplicas,
}

/// A batch the scheduler refuses to place.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ScheduleError {
    /// The same service appears twice in one batch; merge the requests.
    #[error("service `{0}` appears more than once in the batch")]
    DuplicateService(String),
}
