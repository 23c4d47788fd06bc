//! SMTP TLS Reporting (RFC 8460): what every outbound TLS negotiation to a destination
//! domain gave, counted per reporting period and policy domain, and sent once per period to
//! the domain's `_smtp._tls` `rua` addresses.
//!
//! Data flow:
//!
//! ```text
//! delivery attempt ──Recorder::record (never blocks: a bounded channel)──> recorder thread
//!        ──> Store (SQLite `tlsrpt.sqlite` under DataDir: counts per period, domain,
//!            policy, result, sending IP, MX host, MX IP)          [survives restarts]
//! reporter task (each period end) ──> closed periods ──> `_smtp._tls.<domain>` TXT
//!        ──> JSON report (report.rs), gzip ──> https: POST (send.rs)
//!                                          └─> mailto: DKIM-signed multipart/report
//!                                              through the relay's own queue (send.rs)
//! ```
//!
//! * **Period.** `[Relay] TlsRptReportInterval` (default one day, so UTC days as RFC 8460
//!   §4.1 suggests); counts are keyed by the period's start. A period is reported once it
//!   has ended (plus a short grace for records still in the channel).
//! * **What is recorded** today: every attempt on an MX route that reached TLS
//!   negotiation, with policy type `no-policy-found` (RFC 8460 §4.3): success when TLS was
//!   established, else the failed check mapped onto the RFC's result types
//!   ([`ResultType::from_tls_check`]). Smart-host routes are not the destination's
//!   published MX and are not reported. DANE (`tlsa`) and MTA-STS (`sts`) results use the
//!   same [`Recorder::record`] with their own policy type, strings and result types.
//! * **No reports about reports** (RFC 8460 §3, the loops seen in Stalwart #1301 and
//!   tlsrpt-reporter #50): attempts delivering a message that carries `TLS-Report-Domain`
//!   are not recorded, reports carry `TLS-Required: No` (§5.3.1), and a period with no
//!   real traffic to a domain sends nothing.
//! * **Rate limit**: at most `TlsRptMaxReportsPerRun` reports per reporting run; the rest
//!   wait for the next run. A period's counts are dropped once reported, when the domain
//!   publishes no usable TLSRPT record, or one day after the period ended (RFC 8460 §5.5
//!   retries for at most a day).

pub mod dkim;
pub mod report;
pub mod reporter;
pub mod send;
pub mod store;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use crate::delivery::tls::TlsCheck;

/// RFC 8460 §4.4 `policy-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyType {
    Sts,
    Tlsa,
    NoPolicyFound,
}

impl PolicyType {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyType::Sts => "sts",
            PolicyType::Tlsa => "tlsa",
            PolicyType::NoPolicyFound => "no-policy-found",
        }
    }

    pub fn parse(s: &str) -> Option<PolicyType> {
        [PolicyType::Sts, PolicyType::Tlsa, PolicyType::NoPolicyFound]
            .into_iter()
            .find(|p| p.as_str() == s)
    }
}

/// RFC 8460 §4.3 result types (IANA "STARTTLS Validation Result Types"), plus success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResultType {
    Success,
    StarttlsNotSupported,
    CertificateHostMismatch,
    CertificateExpired,
    CertificateNotTrusted,
    ValidationFailure,
    TlsaInvalid,
    DnssecInvalid,
    DaneRequired,
    StsPolicyFetchError,
    StsPolicyInvalid,
    StsWebpkiInvalid,
}

const ALL_RESULTS: [ResultType; 12] = [
    ResultType::Success,
    ResultType::StarttlsNotSupported,
    ResultType::CertificateHostMismatch,
    ResultType::CertificateExpired,
    ResultType::CertificateNotTrusted,
    ResultType::ValidationFailure,
    ResultType::TlsaInvalid,
    ResultType::DnssecInvalid,
    ResultType::DaneRequired,
    ResultType::StsPolicyFetchError,
    ResultType::StsPolicyInvalid,
    ResultType::StsWebpkiInvalid,
];

impl ResultType {
    pub fn as_str(self) -> &'static str {
        match self {
            ResultType::Success => "success",
            ResultType::StarttlsNotSupported => "starttls-not-supported",
            ResultType::CertificateHostMismatch => "certificate-host-mismatch",
            ResultType::CertificateExpired => "certificate-expired",
            ResultType::CertificateNotTrusted => "certificate-not-trusted",
            ResultType::ValidationFailure => "validation-failure",
            ResultType::TlsaInvalid => "tlsa-invalid",
            ResultType::DnssecInvalid => "dnssec-invalid",
            ResultType::DaneRequired => "dane-required",
            ResultType::StsPolicyFetchError => "sts-policy-fetch-error",
            ResultType::StsPolicyInvalid => "sts-policy-invalid",
            ResultType::StsWebpkiInvalid => "sts-webpki-invalid",
        }
    }

    pub fn parse(s: &str) -> Option<ResultType> {
        ALL_RESULTS.into_iter().find(|r| r.as_str() == s)
    }

    /// The failed check of `delivery::tls` as an RFC 8460 result type: no STARTTLS,
    /// name, dates and chain have their own types; a broken handshake or a revoked
    /// certificate is the general `validation-failure`.
    pub fn from_tls_check(check: TlsCheck) -> ResultType {
        match check {
            TlsCheck::Offered => ResultType::StarttlsNotSupported,
            TlsCheck::Name => ResultType::CertificateHostMismatch,
            TlsCheck::Dates => ResultType::CertificateExpired,
            TlsCheck::Chain => ResultType::CertificateNotTrusted,
            TlsCheck::Handshake | TlsCheck::Revocation => ResultType::ValidationFailure,
            TlsCheck::Tlsa => ResultType::TlsaInvalid,
            TlsCheck::DaneName => ResultType::CertificateHostMismatch,
        }
    }
}

/// One TLS negotiation outcome, as the delivery code reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The recipient domain whose policy applied (RFC 8460 `policy-domain`).
    pub policy_domain: String,
    pub policy_type: PolicyType,
    /// The policy as text: the MTA-STS policy lines, or the TLSA records; empty for
    /// `no-policy-found`.
    pub policy_strings: Vec<String>,
    /// The policy's MX patterns (MTA-STS `mx:`); empty otherwise.
    pub policy_mx_hosts: Vec<String>,
    pub result: ResultType,
    pub sending_mta_ip: Option<IpAddr>,
    pub receiving_mx_hostname: Option<String>,
    pub receiving_ip: Option<IpAddr>,
    /// Free text for `failure-reason-code` (no secrets: certificate facts at most).
    pub failure_reason: Option<String>,
}

/// The delivery side's handle: cheap to clone, never blocks. Records go through a bounded
/// channel to one thread that owns the store; when the channel is full (the disk is far
/// behind), records are dropped and counted rather than slowing delivery down.
#[derive(Clone)]
pub struct Recorder {
    tx: SyncSender<(u64, Record)>,
    interval: Duration,
}

/// Records waiting for the store at most; beyond this they are dropped.
const CHANNEL: usize = 10_000;

impl Recorder {
    /// Starts the recorder thread on `store`; records are counted in periods of `interval`.
    pub fn start(store: Arc<store::Store>, interval: Duration) -> Recorder {
        let (tx, rx) = sync_channel::<(u64, Record)>(CHANNEL);
        let period = interval.as_secs().max(1);
        std::thread::Builder::new()
            .name("tlsrpt-recorder".into())
            .spawn(move || {
                while let Ok((at, record)) = rx.recv() {
                    let start = at - at % period;
                    if let Err(e) = store.add(start, start + period, &record) {
                        tracing::warn!(error = %e, "TLS-RPT: cannot record a result");
                    }
                }
            })
            .expect("spawn tlsrpt-recorder thread");
        Recorder { tx, interval }
    }

    /// Counts one outcome now.
    pub fn record(&self, record: Record) {
        self.record_at(crate::queue::spool::unix_now(), record);
    }

    /// Counts one outcome at `unix` seconds (tests).
    pub fn record_at(&self, unix: u64, record: Record) {
        match self.tx.try_send((unix, record)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                metrics::counter!("connector_relay_tlsrpt_records_dropped_total").increment(1);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }
}

/// Does this message carry a TLS report (RFC 8460 §5.3 `TLS-Report-Domain`)? Its delivery
/// is not recorded: no reports about reports.
pub fn is_report(data: &[u8]) -> bool {
    crate::message::header_value(data, "tls-report-domain").is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_types_round_trip_and_map_tls_checks() {
        for r in ALL_RESULTS {
            assert_eq!(ResultType::parse(r.as_str()), Some(r));
        }
        for p in [PolicyType::Sts, PolicyType::Tlsa, PolicyType::NoPolicyFound] {
            assert_eq!(PolicyType::parse(p.as_str()), Some(p));
        }
        let map = ResultType::from_tls_check;
        assert_eq!(map(TlsCheck::Offered), ResultType::StarttlsNotSupported);
        assert_eq!(map(TlsCheck::Name), ResultType::CertificateHostMismatch);
        assert_eq!(map(TlsCheck::Dates), ResultType::CertificateExpired);
        assert_eq!(map(TlsCheck::Chain), ResultType::CertificateNotTrusted);
        assert_eq!(map(TlsCheck::Revocation), ResultType::ValidationFailure);
        assert_eq!(map(TlsCheck::Handshake), ResultType::ValidationFailure);
    }

    #[test]
    fn reports_are_recognised() {
        assert!(is_report(
            b"Subject: x\r\nTLS-Report-Domain: a.test\r\n\r\n"
        ));
        assert!(!is_report(
            b"Subject: x\r\n\r\nTLS-Report-Domain: a.test\r\n"
        ));
    }
}
