//! TLS client configurations for outbound STARTTLS, one per validation level
//! (policy.md "Outbound: TLS levels").
//!
//! Every configuration is built on the ring provider explicitly
//! (`rustls::crypto::ring::default_provider()`), never on a process-wide default.
//!
//! | level | verifier |
//! | --- | --- |
//! | opportunistic, `EncryptionOnly` | [`AcceptAnyCertificate`]: no certificate checks, handshake signatures still verified |
//! | `CertificateValidation` | webpki chain + validity dates against webpki-roots and `TrustedCaFile`; the name is not checked |
//! | `DomainValidation` | as above, plus a certificate name must match the wanted pattern |
//!
//! TODO (other issue): revocation (`RevocationLists`, stapled OCSP) for the validating levels.

use std::path::Path;
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

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
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
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A certificate presented a name that does not match the wanted pattern
/// (replies.md: `4.4.317 SubjectMismatch ...`).
#[derive(Debug, thiserror::Error)]
#[error("SubjectMismatch Expected Subject: {wanted}. Presented Subject: {presented}")]
pub struct NameMismatch {
    pub wanted: String,
    pub presented: String,
}

/// Chain validation via webpki, with an optional name check of our own (Exchange patterns
/// such as `*.contoso.com` are not a single DNS name, so webpki's check cannot be used).
#[derive(Debug)]
struct ValidatingVerifier {
    inner: Arc<WebPkiServerVerifier>,
    /// `None`: `CertificateValidation` (chain only).
    wanted: Option<DomainPattern>,
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
            Err(e) => return Err(e),
        }
        if let Some(wanted) = &self.wanted {
            let names = certificate_names(end_entity);
            if !names.iter().any(|n| name_matches(wanted, n)) {
                return Err(TlsError::InvalidCertificate(CertificateError::Other(
                    OtherError(Arc::new(NameMismatch {
                        wanted: wanted.to_string(),
                        presented: if names.is_empty() {
                            "(no DNS name)".into()
                        } else {
                            names.join(", ")
                        },
                    })),
                )));
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
    #[error("TLS configuration: {0}")]
    Rustls(#[from] TlsError),
}

/// Shared TLS state of the delivery engine: the provider, the trust anchors, and the
/// accept-any configuration (built once).
#[derive(Debug, Clone)]
pub struct TlsContext {
    provider: Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    accept_any: Arc<ClientConfig>,
}

impl TlsContext {
    /// Trust anchors: webpki-roots plus every certificate of `extra_ca_file` (PEM).
    pub fn new(extra_ca_file: Option<&Path>) -> Result<TlsContext, TlsSetupError> {
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
        let accept_any = Self::build(
            &provider,
            Arc::new(AcceptAnyCertificate::new(provider.clone())),
        )?;
        Ok(TlsContext {
            provider,
            roots: Arc::new(roots),
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
        let inner =
            WebPkiServerVerifier::builder_with_provider(self.roots.clone(), self.provider.clone())
                .build()
                .map_err(|e| TlsSetupError::Rustls(TlsError::General(e.to_string())))?;
        Ok(Self::build(
            &self.provider,
            Arc::new(ValidatingVerifier { inner, wanted }),
        )?)
    }
}

/// Maps a TLS handshake error onto replies.md: name mismatch → `4.4.317`, other certificate
/// validation failures (chain, dates, revocation) → `4.7.320`, anything else → `4.4.317`.
pub fn classify_tls_error(e: &std::io::Error) -> &'static str {
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<TlsError>()) else {
        return "4.4.317";
    };
    match tls {
        TlsError::InvalidCertificate(CertificateError::Other(OtherError(o)))
            if o.downcast_ref::<NameMismatch>().is_some() =>
        {
            "4.4.317"
        }
        TlsError::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => "4.4.317",
        TlsError::InvalidCertificate(_) => "4.7.320",
        _ => "4.4.317",
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
    fn contexts_build() {
        let ctx = TlsContext::new(None).unwrap();
        ctx.client_config(TlsLevel::CertificateValidation, None)
            .unwrap();
        ctx.client_config(TlsLevel::DomainValidation, Some(p("*.x.test")))
            .unwrap();
        assert!(Arc::ptr_eq(
            &ctx.client_config(TlsLevel::EncryptionOnly, None).unwrap(),
            &ctx.opportunistic()
        ));
        assert!(TlsContext::new(Some(Path::new("/nonexistent/ca.pem"))).is_err());
    }
}
