//! TLS client configurations for outbound STARTTLS, one per validation level
//! (policy.md "Outbound: TLS levels").
//!
//! Every configuration is built on the ring provider explicitly
//! (`rustls::crypto::ring::default_provider()`), never on a process-wide default.
//!
//! | level | verifier |
//! | --- | --- |
//! | opportunistic, `EncryptionOnly` | [`AcceptAnyCertificate`]: no certificate checks, handshake signatures still verified |
//! | `CertificateValidation` | webpki chain + validity dates against webpki-roots and `TrustedCaFile`, revocation of the end-entity certificate against the CRLs of `RevocationLists`; the name is not checked |
//! | `DomainValidation` | as above, plus a certificate name must match the wanted pattern |
//!
//! Revocation: only the end-entity certificate is checked against the configured CRLs, and
//! a certificate whose issuer published no CRL here passes (unknown status allowed), as
//! Exchange does with an unreachable CRL distribution point.
//!
//! **Stapled OCSP is not checked.** rustls hands the stapled response to the verifier as
//! raw bytes but does not validate it, and webpki has no OCSP support: checking it would
//! need an RFC 6960 response parser with signature and responder-authorization checks of
//! our own, plus a freshness policy for stale responses. Until then revocation relies on
//! `RevocationLists` only; the staple is ignored.
//!
//! A failed certificate check carries the peer certificate (subject, SANs, issuer) and the
//! check that failed in the rustls error itself ([`CertificateRejected`]), so no
//! per-connection state is needed to report it: [`classify_tls_error`] recovers it from the
//! handshake error.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error as TlsError, OtherError,
    RootCertStore, SignatureScheme,
};

use crate::policy::{DomainPattern, TlsLevel};

/// The handshake-signature half of a rustls certificate verifier, the same for every
/// verifier of the relay (server and client side): signatures are checked with the
/// verifier's `provider`'s algorithms; only the certificate decision differs. Expands inside
/// an `impl ServerCertVerifier` / `impl ClientCertVerifier` whose type has a
/// `provider: Arc<CryptoProvider>` field.
macro_rules! verify_handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}
pub(crate) use verify_handshake_signatures;

/// The ring crypto provider, explicitly.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A verifier that accepts any server certificate (opportunistic TLS and `EncryptionOnly`:
/// RFC 7435 opportunistic security) but still checks that the server holds the key of the
/// certificate it sent (handshake signatures), with the provider's algorithms.
#[derive(Debug)]
pub struct AcceptAnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl AcceptAnyCertificate {
    pub fn new(provider: Arc<CryptoProvider>) -> Self {
        AcceptAnyCertificate { provider }
    }
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        Ok(ServerCertVerified::assertion())
    }

    crate::delivery::tls::verify_handshake_signatures!();
}

/// The TLS check an attempt failed (for the trace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsCheck {
    /// TLS required, but the server did not offer STARTTLS (or refused it).
    Offered,
    /// The handshake itself failed (no shared parameters, connection closed, timeout).
    Handshake,
    /// The chain does not lead to a trusted root (unknown issuer, self-signed, bad signature).
    Chain,
    /// Outside the certificate's validity dates.
    Dates,
    /// Revoked by a CRL of `RevocationLists`.
    Revocation,
    /// No certificate name matches the wanted pattern (`DomainValidation`).
    Name,
    /// DANE: no usable TLSA record matches the certificate (or the DANE-TA chain fails).
    Tlsa,
    /// DANE-TA: the certificate names neither the MX host nor the next-hop domain.
    DaneName,
}

impl TlsCheck {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsCheck::Offered => "starttls",
            TlsCheck::Handshake => "handshake",
            TlsCheck::Chain => "chain",
            TlsCheck::Dates => "dates",
            TlsCheck::Revocation => "revocation",
            TlsCheck::Name => "name",
            TlsCheck::Tlsa => "dane-tlsa",
            TlsCheck::DaneName => "dane-name",
        }
    }
}

impl std::fmt::Display for TlsCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The peer certificate as recorded for the trace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerCertificate {
    /// RFC 4514 form, e.g. `CN=mail.evil.test`.
    pub subject: String,
    pub issuer: String,
    /// Subject alternative names: dNSNames and IP addresses, as written.
    pub sans: Vec<String>,
}

impl PeerCertificate {
    /// `None` when the DER does not parse as a certificate.
    pub fn from_der(der: &CertificateDer<'_>) -> Option<PeerCertificate> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
        let sans = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|g| match g {
                    GeneralName::DNSName(n) => Some(n.to_string()),
                    GeneralName::IPAddress(b) => ip_from_bytes(b).map(|ip| ip.to_string()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        Some(PeerCertificate {
            subject: rfc4514(cert.subject()),
            issuer: rfc4514(cert.issuer()),
            sans,
        })
    }
}

/// A distinguished name in RFC 4514 order (last RDN first: `CN=mail.evil.test, O=Org`),
/// the order Exchange prints ("Presented Subject: CN=...").
fn rfc4514(name: &x509_parser::x509::X509Name<'_>) -> String {
    use x509_parser::objects::{oid_registry, oid2abbrev};
    let mut rdns: Vec<String> = name
        .iter()
        .map(|rdn| {
            rdn.iter()
                .map(|atv| {
                    let key = oid2abbrev(atv.attr_type(), oid_registry())
                        .map(str::to_string)
                        .unwrap_or_else(|_| atv.attr_type().to_id_string());
                    let value = atv.as_str().unwrap_or("?");
                    let mut escaped = String::with_capacity(value.len());
                    for ch in value.chars() {
                        if matches!(ch, ',' | '+' | '"' | '\\' | '<' | '>' | ';') {
                            escaped.push('\\');
                        }
                        escaped.push(ch);
                    }
                    format!("{key}={escaped}")
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.reverse();
    rdns.join(", ")
}

fn ip_from_bytes(b: &[u8]) -> Option<std::net::IpAddr> {
    match b.len() {
        4 => Some(<[u8; 4]>::try_from(b).ok()?.into()),
        16 => Some(<[u8; 16]>::try_from(b).ok()?.into()),
        _ => None,
    }
}

/// A server certificate that failed a check of the validating verifier. Travels inside the
/// rustls error (`CertificateError::Other`) so the handshake error names the check and the
/// certificate. Its text is the reason as recorded (replies.md).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}")]
pub struct CertificateRejected {
    pub check: TlsCheck,
    pub reason: String,
    pub peer: Option<PeerCertificate>,
}

impl CertificateRejected {
    /// The enhanced status code of replies.md: a name mismatch is `4.4.317`, any other
    /// certificate failure (chain, dates, revocation) `4.7.320`.
    pub fn status(&self) -> &'static str {
        match self.check {
            TlsCheck::Name | TlsCheck::Offered | TlsCheck::Handshake => "4.4.317",
            TlsCheck::Chain | TlsCheck::Dates | TlsCheck::Revocation => "4.7.320",
            // Exchange's DANE statuses (replies.md): tlsa-invalid, certificate-host-mismatch.
            TlsCheck::Tlsa => "4.7.323",
            TlsCheck::DaneName => "4.7.325",
        }
    }
}

/// The check and the reason of a webpki verdict (`certificate validation failed: expired`).
fn webpki_failure(e: &TlsError) -> (TlsCheck, String) {
    use CertificateError as C;
    let (check, what) = match e {
        TlsError::InvalidCertificate(c) => match c {
            C::Expired | C::ExpiredContext { .. } => (TlsCheck::Dates, "expired".to_string()),
            C::NotValidYet | C::NotValidYetContext { .. } => {
                (TlsCheck::Dates, "not yet valid".to_string())
            }
            C::Revoked => (TlsCheck::Revocation, "revoked".to_string()),
            C::UnknownRevocationStatus => (
                TlsCheck::Revocation,
                "unknown revocation status".to_string(),
            ),
            C::ExpiredRevocationList | C::ExpiredRevocationListContext { .. } => {
                (TlsCheck::Revocation, "expired CRL".to_string())
            }
            C::UnknownIssuer => (TlsCheck::Chain, "unknown issuer".to_string()),
            C::BadSignature => (TlsCheck::Chain, "bad signature".to_string()),
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => (
                TlsCheck::Chain,
                "not valid for server authentication".to_string(),
            ),
            other => (TlsCheck::Chain, format!("{other:?}")),
        },
        other => (TlsCheck::Chain, other.to_string()),
    };
    (check, format!("certificate validation failed: {what}"))
}

fn rejected(rej: CertificateRejected) -> TlsError {
    TlsError::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(rej))))
}

/// Chain validation via webpki (with the CRLs), with an optional name check of our own
/// (Exchange patterns such as `*.contoso.com` are not a single DNS name, so webpki's check
/// cannot be used). Failures become [`CertificateRejected`] errors.
#[derive(Debug)]
struct ValidatingVerifier {
    inner: Arc<WebPkiServerVerifier>,
    /// Name patterns a certificate name must match, each (empty: `CertificateValidation`,
    /// chain only; two under MTA-STS with `DomainValidation`: the MX host and the
    /// connector's pattern).
    wanted: Vec<DomainPattern>,
}

impl ServerCertVerifier for ValidatingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(_) => {}
            // webpki checks the chain before the name, so a name error means the chain
            // (and dates) passed; the name is ours to judge.
            Err(TlsError::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {}
            Err(e) => {
                let (check, reason) = webpki_failure(&e);
                return Err(rejected(CertificateRejected {
                    check,
                    reason,
                    peer: PeerCertificate::from_der(end_entity),
                }));
            }
        }
        for wanted in &self.wanted {
            let names = certificate_names(end_entity);
            if !names.iter().any(|n| name_matches(wanted, n)) {
                let peer = PeerCertificate::from_der(end_entity);
                let presented = match &peer {
                    Some(p) if !p.subject.is_empty() => p.subject.clone(),
                    _ if !names.is_empty() => names.join(", "),
                    _ => "(none)".to_string(),
                };
                return Err(rejected(CertificateRejected {
                    check: TlsCheck::Name,
                    reason: format!(
                        "SubjectMismatch Expected Subject: {wanted}. Presented Subject: {presented}"
                    ),
                    peer,
                }));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The DNS names of a certificate: SAN dNSNames, or the subject CN when there is no SAN
/// (policy.md, same rule as for inbound client certificates). Lower-case.
pub fn certificate_names(der: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return Vec::new();
    };
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        let names: Vec<String> = san
            .value
            .general_names
            .iter()
            .filter_map(|g| match g {
                GeneralName::DNSName(n) => Some(n.to_ascii_lowercase()),
                _ => None,
            })
            .collect();
        if !names.is_empty() {
            return names;
        }
    }
    cert.subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .map(|s| s.to_ascii_lowercase())
        .collect()
}

/// Does a presented certificate name satisfy the wanted pattern? A presented wildcard
/// (`*.fabrikam.test`, RFC 6125 §6.4.3: one left-most label) covers exactly one label.
pub fn name_matches(wanted: &DomainPattern, presented: &str) -> bool {
    let presented = presented.trim_end_matches('.');
    // Certificates carry A-labels (RFC 6125 §6.4.2) and so does `wanted`; a U-label some
    // issuer put in anyway is compared in its A-label form.
    let presented = match presented.is_ascii() {
        true => std::borrow::Cow::Borrowed(presented),
        false => match crate::dns::idn::to_ascii(presented) {
            Ok(ascii) => ascii,
            Err(_) => return false,
        },
    };
    let presented = presented.as_ref();
    match wanted {
        DomainPattern::Exact(e) => {
            presented.eq_ignore_ascii_case(e)
                || presented.strip_prefix("*.").is_some_and(|rest| {
                    e.split_once('.').is_some_and(|(label, parent)| {
                        !label.is_empty() && parent.eq_ignore_ascii_case(rest)
                    })
                })
        }
        DomainPattern::Subdomains(_) | DomainPattern::Any => wanted.matches(presented),
    }
}

/// Why the TLS context could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read trusted CA file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("cannot read revocation list {0}")]
    Crl(String),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] TlsError),
}

/// Shared TLS state of the delivery engine: the provider, the webpki verifier (trust
/// anchors and CRLs), and the accept-any configuration (built once).
#[derive(Debug, Clone)]
pub struct TlsContext {
    provider: Arc<CryptoProvider>,
    webpki: Arc<WebPkiServerVerifier>,
    accept_any: Arc<ClientConfig>,
}

impl TlsContext {
    /// Trust anchors: webpki-roots plus every certificate of `extra_ca_file` (PEM).
    /// Revocation: the CRLs of `revocation_lists` (PEM or DER), end-entity only, unknown
    /// status allowed.
    pub fn new(
        extra_ca_file: Option<&Path>,
        revocation_lists: &[PathBuf],
    ) -> Result<TlsContext, TlsSetupError> {
        let provider = provider();
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = extra_ca_file {
            let err = |reason: String| TlsSetupError::CaFile {
                path: path.display().to_string(),
                reason,
            };
            let certs = CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))?;
            for cert in certs {
                let cert = cert.map_err(|e| err(e.to_string()))?;
                roots.add(cert).map_err(|e| err(e.to_string()))?;
            }
        }
        let crls = revocation_lists
            .iter()
            .map(|p| crate::smtp::client_cert::load_crl(p).map_err(TlsSetupError::Crl))
            .collect::<Result<Vec<_>, _>>()?;
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .with_crls(crls)
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status()
            .build()
            .map_err(|e| TlsSetupError::Rustls(TlsError::General(e.to_string())))?;
        let accept_any = Self::build(
            &provider,
            Arc::new(AcceptAnyCertificate::new(provider.clone())),
        )?;
        Ok(TlsContext {
            provider,
            webpki,
            accept_any,
        })
    }

    fn build(
        provider: &Arc<CryptoProvider>,
        verifier: Arc<dyn ServerCertVerifier>,
    ) -> Result<Arc<ClientConfig>, TlsError> {
        let config = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }

    /// The configuration for opportunistic TLS (no certificate checks).
    pub fn opportunistic(&self) -> Arc<ClientConfig> {
        self.accept_any.clone()
    }

    /// The configuration for a required TLS level. `wanted` is the name pattern for
    /// `DomainValidation` (ignored by the other levels).
    pub fn client_config(
        &self,
        level: TlsLevel,
        wanted: Option<DomainPattern>,
    ) -> Result<Arc<ClientConfig>, TlsSetupError> {
        let wanted = match level {
            TlsLevel::EncryptionOnly => return Ok(self.accept_any.clone()),
            TlsLevel::CertificateValidation => None,
            TlsLevel::DomainValidation => wanted,
        };
        Ok(Self::build(
            &self.provider,
            Arc::new(ValidatingVerifier {
                inner: self.webpki.clone(),
                wanted: wanted.into_iter().collect(),
            }),
        )?)
    }

    /// The configuration for an MX host under an MTA-STS `enforce` policy (RFC 8461 §4.2):
    /// the chain must validate (webpki roots, `TrustedCaFile`, CRLs) and a certificate
    /// name must match `host`; `also` is the route's own `DomainValidation` pattern, which
    /// must match as well (MTA-STS only adds requirements).
    /// Would `chain` (leaf first) pass WebPKI validation for `host` — trust anchors, dates,
    /// revocation and the name? For MTA-STS `testing`, which delivers whatever the answer and
    /// reports what `enforce` would have done. `Err` names the check and the reason.
    pub fn webpki_verdict(&self, chain: &[CertificateDer<'_>], host: &str) -> Result<(), String> {
        let (leaf, intermediates) = chain.split_first().ok_or("no certificate")?;
        let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
        self.webpki
            .verify_server_cert(leaf, intermediates, &name, &[], UnixTime::now())
            .map(|_| ())
            .map_err(|e| {
                let (check, reason) = webpki_failure(&e);
                format!("{check}: {reason}")
            })
    }

    pub fn mta_sts_config(
        &self,
        host: &str,
        also: Option<DomainPattern>,
    ) -> Result<Arc<ClientConfig>, TlsSetupError> {
        let mut wanted = vec![DomainPattern::Exact(host.to_ascii_lowercase())];
        wanted.extend(also);
        Ok(Self::build(
            &self.provider,
            Arc::new(ValidatingVerifier {
                inner: self.webpki.clone(),
                wanted,
            }),
        )?)
    }
}

/// Why a STARTTLS handshake failed, as recorded: status (replies.md), check, reason, and
/// the peer certificate when the server presented one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFailure {
    pub status: &'static str,
    pub check: TlsCheck,
    pub reason: String,
    pub peer: Option<PeerCertificate>,
}

/// Maps a TLS handshake error onto replies.md: name mismatch → `4.4.317`, other certificate
/// validation failures (chain, dates, revocation) → `4.7.320`, anything else (no shared
/// parameters, connection closed) → `4.4.317` `TLS handshake failed: ...`.
pub fn classify_tls_error(e: &std::io::Error) -> TlsFailure {
    let handshake = |reason: String| TlsFailure {
        status: "4.4.317",
        check: TlsCheck::Handshake,
        reason: format!("TLS handshake failed: {reason}"),
        peer: None,
    };
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<TlsError>()) else {
        return handshake(e.to_string());
    };
    match tls {
        TlsError::InvalidCertificate(CertificateError::Other(OtherError(o))) => {
            match o.downcast_ref::<CertificateRejected>() {
                Some(r) => TlsFailure {
                    status: r.status(),
                    check: r.check,
                    reason: r.reason.clone(),
                    peer: r.peer.clone(),
                },
                None => handshake(tls.to_string()),
            }
        }
        TlsError::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => TlsFailure {
            status: "4.4.317",
            check: TlsCheck::Name,
            reason: tls.to_string(),
            peer: None,
        },
        TlsError::InvalidCertificate(_) => {
            let (check, reason) = webpki_failure(tls);
            TlsFailure {
                status: "4.7.320",
                check,
                reason,
                peer: None,
            }
        }
        _ => handshake(tls.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> DomainPattern {
        crate::policy::route::test_support::pat(s)
    }

    #[test]
    fn name_matching() {
        assert!(name_matches(&p("mail.fabrikam.test"), "MAIL.fabrikam.test"));
        assert!(name_matches(&p("mail.fabrikam.test"), "*.fabrikam.test"));
        assert!(!name_matches(&p("a.mail.fabrikam.test"), "*.fabrikam.test"));
        assert!(!name_matches(&p("mail.fabrikam.test"), "mail.evil.test"));
        assert!(name_matches(&p("*.fabrikam.test"), "mx1.fabrikam.test"));
        assert!(name_matches(&p("*.fabrikam.test"), "fabrikam.test"));
        assert!(name_matches(&p("*.fabrikam.test"), "*.fabrikam.test"));
        assert!(!name_matches(&p("*.fabrikam.test"), "fabrikam.test.evil"));
        assert!(name_matches(&p("*"), "anything.test"));
    }

    #[test]
    fn peer_certificate_is_described() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/certs-test/wrongname.crt");
        let der = CertificateDer::from_pem_file(path).unwrap();
        let p = PeerCertificate::from_der(&der).unwrap();
        assert_eq!(p.subject, "CN=mail.evil.test, O=connector-relay tests");
        assert_eq!(
            p.issuer,
            "CN=connector-relay Test CA, O=connector-relay tests"
        );
        assert_eq!(p.sans, ["mail.evil.test"]);
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/certs-test/sink.test.crt");
        let der = CertificateDer::from_pem_file(path).unwrap();
        let p = PeerCertificate::from_der(&der).unwrap();
        assert_eq!(
            p.sans,
            ["sink.test", "*.sink.test", "localhost", "127.0.0.1", "::1"]
        );
    }

    #[test]
    fn contexts_build() {
        let ctx = TlsContext::new(None, &[]).unwrap();
        ctx.client_config(TlsLevel::CertificateValidation, None)
            .unwrap();
        ctx.client_config(TlsLevel::DomainValidation, Some(p("*.x.test")))
            .unwrap();
        assert!(Arc::ptr_eq(
            &ctx.client_config(TlsLevel::EncryptionOnly, None).unwrap(),
            &ctx.opportunistic()
        ));
        assert!(TlsContext::new(Some(Path::new("/nonexistent/ca.pem")), &[]).is_err());
    }
}
