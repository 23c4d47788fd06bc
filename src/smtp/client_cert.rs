//! Inbound client certificates. STARTTLS and implicit TLS *request* a certificate but never
//! require one: the handshake accepts whatever the client presents (still checking that it
//! holds the key), and only afterwards is the certificate judged. It counts for connector
//! attribution only when it chains to `TrustedCaFile` or the webpki roots, is within its
//! validity period (and is not revoked, when `RevocationLists` are configured); an
//! untrusted, expired or revoked one counts as none, without breaking the session.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::DistinguishedName;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};

use super::tls;

/// What the relay learned from a client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertInfo {
    pub subject: String,
    pub issuer: String,
    /// Every SAN dNSName, or the subject CN when the certificate has no SAN dNSName
    /// (lower-case).
    pub names: Vec<String>,
    /// Validity period, Unix seconds (`notBefore`, `notAfter`); 0 when unparsable.
    pub not_before: i64,
    pub not_after: i64,
    /// Chains to a trusted root, within its dates, not revoked.
    pub trusted: bool,
    /// Why it is not trusted.
    pub problem: Option<String>,
}

impl ClientCertInfo {
    /// The names that count for policy: none unless the certificate is trusted.
    pub fn trusted_names(&self) -> &[String] {
        if self.trusted { &self.names } else { &[] }
    }

    /// The issuer DN that counts for policy: none unless the certificate is trusted.
    pub fn trusted_issuer(&self) -> Option<&str> {
        self.trusted.then_some(self.issuer.as_str())
    }
}

/// Judges client certificates after the handshake.
#[derive(Debug)]
pub struct ClientCertValidator {
    verifier: Arc<dyn ClientCertVerifier>,
}

impl ClientCertValidator {
    /// Roots: the webpki roots plus `trusted_ca` (PEM); CRLs from `crls` (PEM or DER).
    pub fn new(trusted_ca: Option<&Path>, crls: &[PathBuf]) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(ca) = trusted_ca {
            for c in tls::load_certs(ca)? {
                roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
            }
        }
        let mut lists = Vec::new();
        for path in crls {
            lists.push(load_crl(path)?);
        }
        let mut builder = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            tls::provider(),
        );
        if !lists.is_empty() {
            builder = builder
                .with_crls(lists)
                .only_check_end_entity_revocation()
                .allow_unknown_revocation_status();
        }
        let verifier = builder.build().map_err(|e| e.to_string())?;
        Ok(ClientCertValidator { verifier })
    }

    /// Examines the chain a client presented (leaf first). `None` when it presented none.
    pub fn examine(&self, chain: &[CertificateDer<'static>]) -> Option<ClientCertInfo> {
        let leaf = chain.first()?;
        let d = match describe(leaf) {
            Ok(d) => d,
            Err(e) => {
                return Some(ClientCertInfo {
                    subject: String::new(),
                    issuer: String::new(),
                    names: Vec::new(),
                    not_before: 0,
                    not_after: 0,
                    trusted: false,
                    problem: Some(format!("unparsable certificate: {e}")),
                });
            }
        };
        let verdict = self
            .verifier
            .verify_client_cert(leaf, &chain[1..], UnixTime::now());
        Some(ClientCertInfo {
            subject: d.subject,
            issuer: d.issuer,
            names: d.names,
            not_before: d.not_before,
            not_after: d.not_after,
            trusted: verdict.is_ok(),
            problem: verdict.err().map(|e| e.to_string()),
        })
    }
}

pub(crate) fn load_crl(path: &Path) -> Result<CertificateRevocationListDer<'static>, String> {
    match CertificateRevocationListDer::from_pem_file(path) {
        Ok(c) => Ok(c),
        // Not PEM: take the file as DER.
        Err(_) => std::fs::read(path)
            .map(CertificateRevocationListDer::from)
            .map_err(|e| format!("{}: {e}", path.display())),
    }
}

/// What [`describe`] reads from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertDescription {
    pub subject: String,
    pub issuer: String,
    pub names: Vec<String>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

/// Subject, issuer, validity and the names that identify the certificate: every SAN
/// dNSName, the subject CN only when there is no SAN dNSName (RFC 6125 §6.4.4 practice).
pub fn describe(der: &CertificateDer<'_>) -> Result<CertDescription, String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|e| e.to_string())?;
    let mut names: Vec<String> = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.trim_end_matches('.').to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(|cn| cn.trim_end_matches('.').to_ascii_lowercase()),
        );
    }
    let validity = cert.validity();
    Ok(CertDescription {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        names,
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
    })
}

/// The handshake side: offers client authentication, accepts any certificate (its trust is
/// judged later by `ClientCertValidator`), but still verifies the handshake signature, so a
/// client cannot present a certificate whose key it does not hold.
#[derive(Debug)]
pub struct RequestClientCert {
    provider: Arc<CryptoProvider>,
}

impl RequestClientCert {
    pub fn new() -> Arc<Self> {
        Arc::new(RequestClientCert {
            provider: tls::provider(),
        })
    }
}

impl ClientCertVerifier for RequestClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    crate::delivery::tls::verify_handshake_signatures!();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(name: &str) -> Vec<CertificateDer<'static>> {
        let path = format!("{}/certs-test/{name}", env!("CARGO_MANIFEST_DIR"));
        tls::load_certs(Path::new(&path)).unwrap()
    }

    fn validator() -> ClientCertValidator {
        let dir = env!("CARGO_MANIFEST_DIR");
        ClientCertValidator::new(
            Some(Path::new(&format!("{dir}/certs-test/ca.crt"))),
            &[PathBuf::from(format!("{dir}/certs-test/ca.crl.pem"))],
        )
        .unwrap()
    }

    #[test]
    fn judges_the_test_certificates() {
        let v = validator();
        let good = v.examine(&cert("mail.fabrikam.test.crt")).unwrap();
        assert!(good.trusted, "{:?}", good.problem);
        assert_eq!(good.names, ["mail.fabrikam.test"]);
        assert_eq!(good.trusted_names(), ["mail.fabrikam.test"]);
        for bad in [
            "expired.crt",
            "selfsigned.crt",
            "untrusted.crt",
            "revoked.crt",
        ] {
            let info = v.examine(&cert(bad)).unwrap();
            assert!(!info.trusted, "{bad} must not be trusted");
            assert!(info.problem.is_some());
            assert!(info.trusted_names().is_empty());
            assert_eq!(
                info.names,
                ["mail.fabrikam.test"],
                "{bad}: names are still read"
            );
        }
        assert_eq!(v.examine(&[]), None);
    }
}
