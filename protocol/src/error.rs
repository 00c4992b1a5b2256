//! The error every wire parser in this crate returns.
//!
//! Each variant names the message (`what`) and, where it applies, the field and
//! the offending value, so a log line or a refusal counter can say exactly what
//! a peer got wrong. Parsers never panic on peer input; they return one of these.

use thiserror::Error;

/// A parse or validation failure of a wire format.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    /// The buffer is shorter than the format needs.
    #[error("{what}: truncated: need {need} octets, have {have}")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    /// The buffer has a length the format does not allow (too long, or not a
    /// whole number of blocks).
    #[error("{what}: bad length {len} ({why})")]
    BadLength {
        what: &'static str,
        len: usize,
        why: &'static str,
    },
    /// A field carries a value the format does not allow.
    #[error("{what}: field {field} has invalid value {value:#x}")]
    BadField {
        what: &'static str,
        field: &'static str,
        value: u64,
    },
}

impl WireError {
    /// Checks that `buf` holds at least `need` octets.
    #[inline]
    pub fn check_len(what: &'static str, buf: &[u8], need: usize) -> Result<(), WireError> {
        if buf.len() < need {
            Err(WireError::Truncated {
                what,
                need,
                have: buf.len(),
            })
        } else {
            Ok(())
        }
    }
}
