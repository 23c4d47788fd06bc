//! Outbound DANE (RFC 7672, SMTP security via opportunistic DANE TLS), per MX host.
//!
//! [`plan_host`] is the one place that decides how TLS is done for one next-hop host
//! (README "DANE" has the full decision table): it reads the DNSSEC status of the MX
//! RRset and of the host's addresses, looks up `_<port>._tcp.<host>` TLSA only when both
//! are secure, and returns a [`HostPlan`]:
//!
//! - [`HostTls::Route`]: DANE does not apply; the route's own TLS settings (and, later,
//!   MTA-STS) decide. This is the seam for MTA-STS: it may act only on `Route` plans,
//!   never on `Dane`, `Encrypt` or `Fail` (RFC 8461 §2: MTA-STS must not override a failing
//!   DANE validation; DANE wins where usable TLSA exists).
//! - [`HostTls::Dane`]: usable TLSA records; STARTTLS is required and the certificate is
//!   checked by a [`DaneVerifier`] built for this attempt (no plaintext fallback).
//! - [`HostTls::Encrypt`]: secure TLSA records exist but none is usable (RFC 7672 §2.2):
//!   TLS is still required, without authentication.
//! - [`HostTls::Fail`]: the host is not tried; a temporary failure with Exchange's DANE
//!   status (4.7.323 / 4.7.324), and the next MX host is tried.
//!
//! Every DANE failure is temporary (TLSA rollovers happen); the queue turns it into the
//! permanent `5.7.32x` form only when the message expires.
//!
//! DANE and the connector's `TlsSettings` (README "DANE"): a DANE match replaces the chain
//! check of `CertificateValidation` (the TLSA record is the trust anchor); it does not lift
//! `DomainValidation`'s name pin, which is still checked against the certificate names.

use std::sync::Arc;

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, Error as TlsError, OtherError};

use crate::dns::{DnsError, MxAnswer, Resolver, Security, Tlsa};
use crate::policy::route::{Route, RouteTarget, TlsPolicy};
use crate::policy::{DaneMode, DomainPattern, TlsLevel};

use super::Failure;
use super::client::{Attempt, ClientConfig, Stage, StartTls};
use super::tls::{CertificateRejected, PeerCertificate, TlsCheck, certificate_names, name_matches};

/// How TLS is done with one host (see the module docs).
#[derive(Debug, Clone)]
pub enum HostTls {
    Route,
    Dane(Arc<DanePolicy>),
    Encrypt,
    Fail(Failure),
}

/// The usable TLSA records of a host and the names a DANE-TA certificate may carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DanePolicy {
    pub records: Vec<Tlsa>,
    /// RFC 7672 §3.2.2: the MX host name (the TLSA base domain) and the next-hop domain.
    pub names: Vec<String>,
}

/// The DANE verdict for one host: what to do and the steps that led there (for the trace,
/// `explain` and `validate`).
#[derive(Debug, Clone)]
pub struct HostPlan {
    pub tls: HostTls,
    /// `MX secure; mx.example A/AAAA secure; _25._tcp.mx.example TLSA secure: 3 1 1 ab..;
    /// verdict: DANE required`. Empty when DANE is not in play for the route.
    pub steps: String,
}

impl HostPlan {
    /// DANE not in play for this host: the route's TLS settings apply; `steps` says why.
    pub fn route(steps: String) -> HostPlan {
        HostPlan {
            tls: HostTls::Route,
            steps,
        }
    }

    /// A short tag for the connection pool: sessions opened under different plans are
    /// never mixed.
    pub fn tag(&self) -> &'static str {
        match &self.tls {
            HostTls::Route => "route",
            HostTls::Dane(_) => "dane",
            HostTls::Encrypt => "encrypt",
            HostTls::Fail(_) => "fail",
        }
    }

    /// The metric label of this plan's outcome before any connection.
    fn outcome(&self) -> &'static str {
        match &self.tls {
            HostTls::Route if self.steps.is_empty() => "not_applicable",
            HostTls::Route => "no_dane",
            HostTls::Dane(_) => "tlsa_usable",
            HostTls::Encrypt => "tlsa_unusable",
            HostTls::Fail(f) if f.enhanced == "4.7.324" => "dnssec_invalid",
            HostTls::Fail(_) => "dane_required",
        }
    }
}

/// Is DANE in play for this route at all? Only MX routes (smart hosts have no MX to
/// authenticate; `check` says so), only when the mode is not `None`, and never for a
/// route that does not do STARTTLS (`IgnoreSTARTTLS`).
pub fn applies(route: &Route) -> bool {
    route.dane != DaneMode::None && route.target == RouteTarget::Mx && route.tls != TlsPolicy::Never
}

/// The DANE step of a route for `explain` (no lookups: they happen per MX host at
/// delivery, and `validate` / the trace show their results).
pub fn describe_mode(route: &Route, dnssec: crate::dns::DnssecValidation) -> String {
    let mode = match route.dane {
        DaneMode::Opportunistic => "Opportunistic",
        DaneMode::Mandatory => "Mandatory",
        DaneMode::None => "None",
    };
    if !applies(route) {
        let why = match (route.dane, &route.target) {
            (DaneMode::None, _) => "DANE is not consulted",
            (_, RouteTarget::SmartHosts(_)) => "smart hosts have no DNSSEC MX to authenticate",
            _ => "the route does not use STARTTLS",
        };
        return format!("DANE: SmtpDaneMode {mode}, not applied ({why})");
    }
    format!(
        "DANE: SmtpDaneMode {mode} with DnssecValidation {}: at delivery each MX host's DNSSEC status (MX, A/AAAA) and _<port>._tcp TLSA records decide ({})",
        dnssec.as_str(),
        if route.dane == DaneMode::Mandatory {
            "no usable DANE = deferred 4.7.323"
        } else {
            "without DANE the TLS setting above applies"
        }
    )
}

fn dane_fail(enhanced: &str, text: String) -> HostTls {
    HostTls::Fail(Failure {
        code: None,
        enhanced: enhanced.to_string(),
        text,
    })
}

/// The DANE decision for `host` (an MX host of `domain`, or `domain` itself as implicit
/// MX) on `route`, with its steps. One entry point, called once per host per attempt.
pub async fn plan_host(
    resolver: &dyn Resolver,
    route: &Route,
    domain: &str,
    host: &str,
) -> HostPlan {
    if !applies(route) {
        return HostPlan::route(String::new());
    }
    let plan = decide(resolver, route, domain, host).await;
    crate::metrics::dane_outcome(plan.outcome());
    plan
}

async fn decide(resolver: &dyn Resolver, route: &Route, domain: &str, host: &str) -> HostPlan {
    let mandatory = route.dane == DaneMode::Mandatory;
    let mut steps: Vec<String> = Vec::new();
    // Without DANE at the destination: Opportunistic falls back to the route's settings,
    // Mandatory fails with 4.7.323 "dane-required" (README "DANE": our choice; Exchange
    // documents no code of its own for it).
    let no_dane = |mut steps: Vec<String>, why: String| {
        if mandatory {
            steps.push("verdict: dane-required (SmtpDaneMode = Mandatory)".into());
            HostPlan {
                tls: dane_fail(
                    "4.7.323",
                    format!(
                        "tlsa-invalid: dane-required: {why} (SmtpDaneMode = Mandatory); host {host}"
                    ),
                ),
                steps: steps.join("; "),
            }
        } else {
            steps.push(format!("verdict: DANE does not apply ({why})"));
            HostPlan::route(steps.join("; "))
        }
    };
    // A lookup error or bogus answer: 4.7.324 whatever the mode (RFC 7672 §2.1.1: a
    // failed lookup must not be treated as "no TLSA", that would be a downgrade).
    let broken = |mut steps: Vec<String>, what: String, e: &DnsError| {
        steps.push(format!("{what}: {e}"));
        steps.push("verdict: dnssec-invalid".into());
        HostPlan {
            tls: dane_fail(
                "4.7.324",
                format!("dnssec-invalid: {what}: {e}; host {host}"),
            ),
            steps: steps.join("; "),
        }
    };
    let dnssec = resolver.dnssec();
    steps.push(format!("DnssecValidation {}", dnssec.as_str()));
    if dnssec == crate::dns::DnssecValidation::Off {
        return no_dane(
            steps,
            "DNSSEC is off ([Relay] DnssecValidation = \"Off\")".into(),
        );
    }
    // The MX RRset (or its denial, for an implicit MX) must be secure: an insecure MX
    // could have been forged to point at a host with valid TLSA of its own.
    let mx_security = match resolver.mx_secured(domain).await {
        Ok(answer) => {
            let what = match &answer.value {
                MxAnswer::Records(r) => format!("MX of {domain} ({} records)", r.len()),
                _ => format!("no MX for {domain} (implicit MX)"),
            };
            steps.push(format!("{what} {}", answer.security.as_str()));
            answer.security
        }
        Err(e) => return broken(steps, format!("MX lookup of {domain}"), &e),
    };
    if mx_security != Security::Secure {
        return no_dane(
            steps,
            format!("the MX RRset of {domain} is {}", mx_security.as_str()),
        );
    }
    match resolver.ips_secured(host).await {
        Ok(ips) => {
            steps.push(format!("{host} A/AAAA {}", ips.security.as_str()));
            if ips.security != Security::Secure {
                return no_dane(
                    steps,
                    format!(
                        "the address records of {host} are {}",
                        ips.security.as_str()
                    ),
                );
            }
        }
        Err(e) => return broken(steps, format!("address lookup of {host}"), &e),
    }
    let base = format!("_{}._tcp.{host}", route.port);
    let tlsa = match resolver.tlsa(&base).await {
        Ok(t) => t,
        Err(e) => return broken(steps, format!("TLSA lookup of {base}"), &e),
    };
    let listed: Vec<String> = tlsa.value.iter().map(short).collect();
    steps.push(format!(
        "{base} TLSA {}: [{}]",
        tlsa.security.as_str(),
        listed.join(", ")
    ));
    if tlsa.value.is_empty() {
        return no_dane(steps, format!("no TLSA records at {base}"));
    }
    if tlsa.security != Security::Secure {
        return no_dane(
            steps,
            format!("the TLSA records at {base} are not DNSSEC-secure"),
        );
    }
    let usable: Vec<Tlsa> = tlsa.value.into_iter().filter(usable).collect();
    if usable.is_empty() {
        if mandatory {
            steps.push("verdict: tlsa-invalid (no usable TLSA record)".into());
            return HostPlan {
                tls: dane_fail(
                    "4.7.323",
                    format!(
                        "tlsa-invalid: no usable TLSA record at {base} (only usages 2 and 3, selectors 0 and 1, matching types 0, 1 and 2 are usable)"
                    ),
                ),
                steps: steps.join("; "),
            };
        }
        steps.push(
            "verdict: no usable TLSA record; TLS required without authentication (RFC 7672 §2.2)"
                .into(),
        );
        return HostPlan {
            tls: HostTls::Encrypt,
            steps: steps.join("; "),
        };
    }
    steps.push(format!(
        "verdict: DANE required ({} usable records)",
        usable.len()
    ));
    let mut names = vec![host.to_ascii_lowercase()];
    if !domain.eq_ignore_ascii_case(host) {
        names.push(domain.to_ascii_lowercase());
    }
    HostPlan {
        tls: HostTls::Dane(Arc::new(DanePolicy {
            records: usable,
            names,
        })),
        steps: steps.join("; "),
    }
}

/// A record as shown in steps: parameters and the start of the data.
fn short(t: &Tlsa) -> String {
    let text = t.to_string();
    match text.char_indices().nth(24) {
        Some((i, _)) => format!("{}..", &text[..i]),
        None => text,
    }
}

/// RFC 7672 §3.1: only DANE-TA(2) and DANE-EE(3), selectors Cert(0)/SPKI(1), matching
/// Full(0)/SHA-256(1)/SHA-512(2) with a digest of the right length.
pub fn usable(t: &Tlsa) -> bool {
    matches!(t.usage, 2 | 3)
        && matches!(t.selector, 0 | 1)
        && match t.matching {
            0 => !t.data.is_empty(),
            1 => t.data.len() == 32,
            2 => t.data.len() == 64,
            _ => false,
        }
}

/// Does `cert` match the record's selector and matching type?
pub fn matches(t: &Tlsa, cert: &[u8]) -> bool {
    let selected: Vec<u8> = match t.selector {
        0 => cert.to_vec(),
        1 => match x509_parser::parse_x509_certificate(cert) {
            Ok((_, c)) => c.public_key().raw.to_vec(),
            Err(_) => return false,
        },
        _ => return false,
    };
    let digest = match t.matching {
        0 => selected,
        1 => ring::digest::digest(&ring::digest::SHA256, &selected)
            .as_ref()
            .to_vec(),
        2 => ring::digest::digest(&ring::digest::SHA512, &selected)
            .as_ref()
            .to_vec(),
        _ => return false,
    };
    digest == t.data
}

/// The client settings for one attempt under `plan`: `None` keeps the route's.
pub fn client_config(
    base: &ClientConfig,
    plan: &HostPlan,
    route: &Route,
    domain: &str,
) -> Option<ClientConfig> {
    let rustls_base = match &base.starttls {
        StartTls::Never => return None,
        StartTls::Opportunistic(c) | StartTls::Required(c) => c.clone(),
    };
    let starttls = match &plan.tls {
        HostTls::Route | HostTls::Fail(_) => return None,
        // The route's verifier stays: opportunistic/EncryptionOnly accept any certificate,
        // stronger TlsSettings keep their checks; only the plaintext fallback goes.
        HostTls::Encrypt => StartTls::Required(rustls_base),
        HostTls::Dane(policy) => {
            let wanted = match &route.tls {
                TlsPolicy::Required(TlsLevel::DomainValidation, wanted) => Some(
                    wanted
                        .clone()
                        .unwrap_or_else(|| DomainPattern::Subdomains(domain.to_string())),
                ),
                _ => None,
            };
            let verifier = DaneVerifier {
                policy: policy.clone(),
                wanted,
                provider: super::tls::provider(),
            };
            // A copy of the route's configuration (client certificate, versions) with the
            // DANE verifier in place of its own.
            let mut config = (*rustls_base).clone();
            config
                .dangerous()
                .set_certificate_verifier(Arc::new(verifier));
            StartTls::Required(Arc::new(config))
        }
    };
    let mut cfg = base.clone();
    cfg.starttls = starttls;
    Some(cfg)
}

/// Exchange's DANE statuses for a failed attempt under a DANE plan (replies.md):
/// no STARTTLS or a failed handshake 4.7.321, an expired DANE-TA chain 4.7.322, no TLSA
/// match 4.7.323, a DANE-TA name mismatch 4.7.325. The connector's own DomainValidation
/// name pin keeps its 4.4.317.
pub fn classify_attempt(plan: &HostPlan, attempt: &mut Attempt) {
    if !matches!(plan.tls, HostTls::Dane(_) | HostTls::Encrypt) {
        return;
    }
    let Err(e) = &mut attempt.result else {
        crate::metrics::dane_outcome(match plan.tls {
            HostTls::Dane(_) => "verified",
            _ => "encrypted",
        });
        return;
    };
    if e.stage != Stage::StartTls {
        return;
    }
    let Some(tls) = e.tls_failure.as_deref_mut() else {
        return;
    };
    let (status, label, outcome) = match tls.check {
        TlsCheck::Offered | TlsCheck::Handshake => (
            "4.7.321",
            "starttls-not-supported",
            "starttls_not_supported",
        ),
        TlsCheck::Dates => ("4.7.322", "certificate-expired", "certificate_expired"),
        TlsCheck::DaneName => (
            "4.7.325",
            "certificate-host-mismatch",
            "certificate_host_mismatch",
        ),
        TlsCheck::Name => return,
        _ => ("4.7.323", "tlsa-invalid", "tlsa_invalid"),
    };
    crate::metrics::dane_outcome(outcome);
    tls.status = status;
    e.failure.enhanced = status.to_string();
    e.failure.text = format!("{label}: {} (DANE)", e.failure.text);
}

/// Checks a server certificate against the usable TLSA records of one host.
///
/// - DANE-EE (3): the leaf matches; names and dates are ignored (RFC 7672 §3.1.1).
/// - DANE-TA (2): a certificate the server sent (or a full `2 0 0` certificate in the
///   record) matches and is the trust anchor of a webpki path to the leaf, dates
///   checked; the leaf must then carry the MX host or the next-hop domain (§3.2.2).
///
/// Handshake signatures are always verified: DANE replaces certificate trust, not the
/// proof that the server holds the key.
#[derive(Debug)]
pub struct DaneVerifier {
    policy: Arc<DanePolicy>,
    /// `TlsSettings = "DomainValidation"`: the connector's name pin, still checked.
    wanted: Option<DomainPattern>,
    provider: Arc<CryptoProvider>,
}

fn rejected(check: TlsCheck, reason: String, leaf: &CertificateDer<'_>) -> TlsError {
    TlsError::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
        CertificateRejected {
            check,
            reason,
            peer: PeerCertificate::from_der(leaf),
        },
    ))))
}

impl DaneVerifier {
    /// DANE-TA: a webpki path from a matching anchor to the leaf, then the name.
    fn verify_ta(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<bool, TlsError> {
        let ta_records: Vec<&Tlsa> = self
            .policy
            .records
            .iter()
            .filter(|t| t.usage == 2)
            .collect();
        if ta_records.is_empty() {
            return Ok(false);
        }
        let mut anchors_der: Vec<CertificateDer<'static>> = intermediates
            .iter()
            .filter(|c| ta_records.iter().any(|t| matches(t, c.as_ref())))
            .map(|c| c.clone().into_owned())
            .collect();
        // `2 0 0`: the record is the anchor certificate itself (it need not be sent).
        for t in &ta_records {
            if t.selector == 0 && t.matching == 0 {
                anchors_der.push(CertificateDer::from(t.data.clone()));
            }
        }
        let anchors: Vec<_> = anchors_der
            .iter()
            .filter_map(|c| webpki::anchor_from_trusted_cert(c).ok())
            .collect();
        if anchors.is_empty() {
            return Ok(false);
        }
        let ee = webpki::EndEntityCert::try_from(leaf).map_err(|e| {
            rejected(
                TlsCheck::Tlsa,
                format!("DANE-TA: bad certificate: {e}"),
                leaf,
            )
        })?;
        if let Err(e) = ee.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &anchors,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        ) {
            let check = match e {
                webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. } => {
                    TlsCheck::Dates
                }
                _ => TlsCheck::Tlsa,
            };
            return Err(rejected(
                check,
                format!("DANE-TA chain check failed: {e:?}"),
                leaf,
            ));
        }
        let name_ok = self.policy.names.iter().any(|n| {
            ServerName::try_from(n.as_str())
                .is_ok_and(|sn| ee.verify_is_valid_for_subject_name(&sn).is_ok())
        });
        if !name_ok {
            return Err(rejected(
                TlsCheck::DaneName,
                format!(
                    "DANE-TA: the certificate names [{}] match none of [{}]",
                    certificate_names(leaf).join(", "),
                    self.policy.names.join(", ")
                ),
                leaf,
            ));
        }
        Ok(true)
    }

    fn check_pin(&self, leaf: &CertificateDer<'_>) -> Result<(), TlsError> {
        let Some(wanted) = &self.wanted else {
            return Ok(());
        };
        let names = certificate_names(leaf);
        if names.iter().any(|n| name_matches(wanted, n)) {
            return Ok(());
        }
        Err(rejected(
            TlsCheck::Name,
            format!(
                "SubjectMismatch Expected Subject: {wanted}. Presented names: [{}] (DANE matched; TlsSettings = DomainValidation)",
                names.join(", ")
            ),
            leaf,
        ))
    }
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let ee_match = self
            .policy
            .records
            .iter()
            .any(|t| t.usage == 3 && matches(t, end_entity.as_ref()));
        if ee_match || self.verify_ta(end_entity, intermediates, now)? {
            self.check_pin(end_entity)?;
            return Ok(ServerCertVerified::assertion());
        }
        let records: Vec<String> = self.policy.records.iter().map(short).collect();
        Err(rejected(
            TlsCheck::Tlsa,
            format!(
                "no TLSA record matches the server certificate (records: {})",
                records.join(", ")
            ),
            end_entity,
        ))
    }

    crate::delivery::tls::verify_handshake_signatures!();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(usage: u8, selector: u8, matching: u8, data: Vec<u8>) -> Tlsa {
        Tlsa {
            usage,
            selector,
            matching,
            data,
        }
    }

    #[test]
    fn only_rfc7672_parameters_are_usable() {
        assert!(usable(&rec(3, 1, 1, vec![0; 32])));
        assert!(usable(&rec(2, 0, 2, vec![0; 64])));
        assert!(usable(&rec(3, 0, 0, vec![1, 2, 3])));
        assert!(!usable(&rec(1, 1, 1, vec![0; 32])), "PKIX-EE");
        assert!(!usable(&rec(0, 1, 1, vec![0; 32])), "PKIX-TA");
        assert!(!usable(&rec(3, 2, 1, vec![0; 32])), "selector");
        assert!(!usable(&rec(3, 1, 3, vec![0; 32])), "matching type");
        assert!(!usable(&rec(3, 1, 1, vec![0; 31])), "digest length");
    }

    #[test]
    fn selectors_and_matching_types() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["mx.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().to_vec();
        let spki = key.public_key_der();
        let sha256 = |b: &[u8]| {
            ring::digest::digest(&ring::digest::SHA256, b)
                .as_ref()
                .to_vec()
        };
        let sha512 = |b: &[u8]| {
            ring::digest::digest(&ring::digest::SHA512, b)
                .as_ref()
                .to_vec()
        };
        assert!(matches(&rec(3, 0, 0, der.clone()), &der));
        assert!(matches(&rec(3, 0, 1, sha256(&der)), &der));
        assert!(matches(&rec(3, 1, 1, sha256(&spki)), &der));
        assert!(matches(&rec(3, 1, 2, sha512(&spki)), &der));
        assert!(matches(&rec(3, 1, 0, spki.clone()), &der));
        assert!(!matches(&rec(3, 1, 1, sha256(&der)), &der));
    }
}
