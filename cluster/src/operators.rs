//! Operators' client certificates, as the cluster records them: by serial number, so that an
//! agent serving the control API on TCP can refuse a certificate that was removed (`swarm ca
//! client-cert rm`) although it still verifies against the CA and has not expired.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::command::Command;
use crate::error::ClusterError;
use crate::state::ClusterState;

/// Most operator certificates recorded at once (each is a few dozen bytes).
pub const MAX_OPERATORS: usize = 10_000;

/// Longest operator name.
pub const MAX_OPERATOR_NAME: usize = 64;

/// One issued operator certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operator {
    /// The certificate's serial number, lowercase hex.
    pub serial: String,
    /// The operator's name (the certificate's CN).
    pub name: String,
    /// Whether the certificate may only list and inspect.
    pub read_only: bool,
    /// When it was issued (Unix milliseconds).
    pub issued_ms: u64,
    /// When it expires (Unix milliseconds).
    pub not_after_ms: u64,
}

/// Checks an operator name: 1 to [`MAX_OPERATOR_NAME`] ASCII letters, digits, `.`, `_`, `-`,
/// starting with a letter or digit.
pub fn validate_operator_name(name: &str) -> Result<(), ClusterError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_OPERATOR_NAME
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ClusterError::Invalid(format!(
            "invalid operator name {name:?}: 1 to {MAX_OPERATOR_NAME} letters, digits, '.', '_' or '-', starting with a letter or a digit"
        )))
    }
}

impl Operator {
    /// Checks the record's fields.
    pub fn validate(&self) -> Result<(), ClusterError> {
        validate_operator_name(&self.name)?;
        let serial_ok = !self.serial.is_empty()
            && self.serial.len() <= 40
            && self
                .serial
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !serial_ok {
            return Err(ClusterError::Invalid(format!(
                "invalid certificate serial {:?}",
                self.serial
            )));
        }
        if self.not_after_ms <= self.issued_ms {
            return Err(ClusterError::Invalid(
                "the certificate expires before it is issued".into(),
            ));
        }
        Ok(())
    }
}

impl ClusterState {
    /// The operator certificates in force (issued and not removed; expired ones included until
    /// removed), by serial.
    pub fn operators(&self) -> &BTreeMap<String, Operator> {
        &self.operators
    }

    /// Applies an operator command; `None` for the other commands.
    pub(crate) fn apply_operator_command(
        &mut self,
        cmd: &Command,
    ) -> Option<Result<(), ClusterError>> {
        Some(match cmd {
            Command::AddOperator { operator, .. } => self.add_operator(operator),
            Command::RemoveOperator { name, .. } => self.remove_operator(name),
            _ => return None,
        })
    }

    fn add_operator(&mut self, operator: &Operator) -> Result<(), ClusterError> {
        if self.cluster().is_none() {
            return Err(ClusterError::NotInitialized);
        }
        operator.validate()?;
        if self.operators.contains_key(&operator.serial) {
            return Err(ClusterError::Invalid(format!(
                "a certificate with serial {} is already recorded",
                operator.serial
            )));
        }
        if self.operators.len() >= MAX_OPERATORS {
            return Err(ClusterError::Invalid(format!(
                "the swarm already has {MAX_OPERATORS} client certificates: remove some first"
            )));
        }
        self.operators
            .insert(operator.serial.clone(), operator.clone());
        Ok(())
    }

    fn remove_operator(&mut self, name: &str) -> Result<(), ClusterError> {
        let before = self.operators.len();
        self.operators.retain(|_, o| o.name != name);
        if self.operators.len() == before {
            return Err(ClusterError::Invalid(format!(
                "no client certificate named {name}"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice(serial: &str) -> Operator {
        Operator {
            serial: serial.into(),
            name: "alice".into(),
            read_only: false,
            issued_ms: 1_000,
            not_after_ms: 2_000,
        }
    }

    #[test]
    fn records_are_validated() {
        assert!(alice("0a1b").validate().is_ok());
        assert!(alice("").validate().is_err());
        assert!(alice("XYZ").validate().is_err());
        assert!(alice(&"a".repeat(41)).validate().is_err());
        let mut bad = alice("01");
        bad.not_after_ms = 1_000;
        assert!(bad.validate().is_err());
        for name in ["", "-a", "a b", "é", &"a".repeat(65)] {
            assert!(validate_operator_name(name).is_err(), "{name:?}");
        }
        assert!(validate_operator_name("ops.team_1-a").is_ok());
    }
}
