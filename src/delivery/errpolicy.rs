//! Send connector `ErrorPolicies` (Set-SendConnector: "DowngradeDnsFailures: All DNS errors
//! are treated as transient. DowngradeCustomFailures: Particular SMTP errors are treated as
//! transient. UpgradeCustomFailures: Custom transient failures are upgraded and treated as
//! permanent failures."). Exchange does not list the "particular" errors; here:
//!
//! - **DNS failures** are the permanent outcomes of next-hop resolution: the domain or host
//!   does not exist / has no address (`5.4.310`). A null MX (`5.1.10`) is the domain's
//!   published refusal of mail, not an error, and stays permanent.
//! - **Custom failures** are replies of the remote SMTP server (never local socket, TLS or
//!   DNS conditions) whose enhanced status code is *not* about the recipient's address
//!   (`X.1.x`), mailbox (`X.2.x`), the message content (`X.6.x`) or its size (`X.3.4`):
//!   i.e. system (`X.3.x`), network and routing (`X.4.x`), protocol (`X.5.x`) and
//!   security / policy (`X.7.x`) conditions, and replies without an enhanced code (`X.0.0`).
//!   `DowngradeCustomFailures` makes such a 5xx temporary, `UpgradeCustomFailures` makes
//!   such a 4xx permanent.
//!
//! A changed failure keeps the remote reply in its text and gets the enhanced code of its
//! new class (`550 5.7.1 ...` downgraded is `4.7.1`).

use super::{DeliveryStatus, Failure};
use crate::policy::ErrorPolicy;

/// Is this failure a "custom failure" (see the module docs)?
fn is_custom(f: &Failure) -> bool {
    if f.code.is_none() {
        return false;
    }
    let mut parts = f.enhanced.split('.');
    let _class = parts.next();
    let subject = parts.next().unwrap_or("0");
    let detail = parts.next().unwrap_or("0");
    let excluded = matches!((subject, detail), ("1" | "2" | "6", _) | ("3", "4"));
    !excluded
}

/// The failure with its class changed to `class` (`'4'` / `'5'`).
fn reclassed(f: &Failure, class: char, policy: &str) -> Failure {
    let rest = f.enhanced.get(1..).unwrap_or(".0.0");
    Failure {
        code: None,
        enhanced: format!("{class}{rest}"),
        text: format!("{f} ({policy})"),
    }
}

/// Applies the connector's error policies to one outcome.
pub fn apply(policies: &[ErrorPolicy], status: DeliveryStatus) -> DeliveryStatus {
    match status {
        DeliveryStatus::Permanent(f)
            if policies.contains(&ErrorPolicy::DowngradeCustomFailures) && is_custom(&f) =>
        {
            DeliveryStatus::Temporary(reclassed(&f, '4', "DowngradeCustomFailures"))
        }
        DeliveryStatus::Temporary(f)
            if policies.contains(&ErrorPolicy::UpgradeCustomFailures) && is_custom(&f) =>
        {
            DeliveryStatus::Permanent(reclassed(&f, '5', "UpgradeCustomFailures"))
        }
        s => s,
    }
}

/// `DowngradeDnsFailures` for a next-hop resolution outcome.
pub fn apply_dns(policies: &[ErrorPolicy], status: DeliveryStatus) -> DeliveryStatus {
    match status {
        DeliveryStatus::Permanent(f)
            if policies.contains(&ErrorPolicy::DowngradeDnsFailures) && f.enhanced == "5.4.310" =>
        {
            DeliveryStatus::Temporary(reclassed(&f, '4', "DowngradeDnsFailures"))
        }
        s => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(code: u16, enhanced: &str) -> Failure {
        Failure {
            code: Some(code),
            enhanced: enhanced.into(),
            text: "x".into(),
        }
    }

    #[test]
    fn mapping() {
        let down = [ErrorPolicy::DowngradeCustomFailures];
        let up = [ErrorPolicy::UpgradeCustomFailures];
        let s = apply(&down, DeliveryStatus::Permanent(remote(550, "5.7.1")));
        assert_eq!(s.failure().unwrap().enhanced, "4.7.1");
        assert!(s.is_temporary());
        assert!(s.failure().unwrap().text.contains("550 5.7.1 x"));
        for kept in ["5.1.1", "5.2.2", "5.6.0", "5.3.4"] {
            assert!(apply(&down, DeliveryStatus::Permanent(remote(550, kept))).is_permanent());
        }
        let local = Failure {
            code: None,
            enhanced: "4.4.316".into(),
            text: "refused".into(),
        };
        assert!(apply(&up, DeliveryStatus::Temporary(local.clone())).is_temporary());
        assert!(apply(&up, DeliveryStatus::Temporary(remote(451, "4.7.1"))).is_permanent());
        assert!(apply(&up, DeliveryStatus::Temporary(remote(450, "4.2.1"))).is_temporary());
        assert!(apply(&[], DeliveryStatus::Temporary(remote(451, "4.7.1"))).is_temporary());
        let dns = Failure {
            code: None,
            enhanced: "5.4.310".into(),
            text: "nx".into(),
        };
        let d = [ErrorPolicy::DowngradeDnsFailures];
        assert!(apply_dns(&d, DeliveryStatus::Permanent(dns.clone())).is_temporary());
        assert!(apply_dns(&[], DeliveryStatus::Permanent(dns)).is_permanent());
        let null = Failure {
            code: None,
            enhanced: "5.1.10".into(),
            text: "null".into(),
        };
        assert!(apply_dns(&d, DeliveryStatus::Permanent(null)).is_permanent());
    }
}
