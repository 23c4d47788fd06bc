//! Outbound delivery: route selection per recipient, next hops, the SMTP client, and the
//! classification of every outcome as delivered / temporary / permanent.

pub mod client;
pub mod nexthop;
pub mod tls;

/// Why a recipient was not delivered (recorded in the trace and used in DSNs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The remote SMTP reply code, when the failure is a remote reply.
    pub code: Option<u16>,
    /// RFC 3463 enhanced status code, e.g. `4.4.318` (the remote's own when it sent one).
    pub enhanced: String,
    pub text: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            Some(code) => write!(f, "{code} {} {}", self.enhanced, self.text),
            None => write!(f, "{} {}", self.enhanced, self.text),
        }
    }
}

/// The outcome for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Accepted by the next hop; `reply` is the final reply to DATA.
    Delivered { reply: String },
    /// Deferred: retry later.
    Temporary(Failure),
    /// Failed: return to the sender.
    Permanent(Failure),
}

impl DeliveryStatus {
    pub fn is_delivered(&self) -> bool {
        matches!(self, DeliveryStatus::Delivered { .. })
    }
    pub fn is_temporary(&self) -> bool {
        matches!(self, DeliveryStatus::Temporary(_))
    }
    pub fn is_permanent(&self) -> bool {
        matches!(self, DeliveryStatus::Permanent(_))
    }
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            DeliveryStatus::Delivered { .. } => None,
            DeliveryStatus::Temporary(f) | DeliveryStatus::Permanent(f) => Some(f),
        }
    }
}
