//! Outbound client certificates: `TlsCertificateName` picks one of `[Relay] Certificates`,
//! `DomainSecureEnabled` presents it (or the relay's own `TlsCertificate`).
//!
//! Matching of `<I>issuer<S>subject`: the issuer and subject of each certificate file's
//! first certificate are rendered by x509-parser (`C=US, O=Contoso, CN=mail.contoso.com`,
//! RDNs in certificate order) and compared with the two halves of the value as
//! [`crate::policy::dn`] compares names (without case, either RDN order, so a value copied
//! from Windows' `Get-ExchangeCertificate` matches as well).
//!
//! The certificate is presented by replacing the client certificate resolver of whichever
//! rustls configuration the TLS level chose (`TlsContext` itself is not changed).

use std::path::Path;
use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, SignatureScheme};

use crate::policy::CertificateIdentity;
use crate::policy::dn::dn_matches;

/// A loaded client identity: the chain and its signing key.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    key: Arc<CertifiedKey>,
    /// The subject as x509-parser renders it (logs).
    pub subject: String,
}

/// Splits `<I>issuer<S>subject`.
fn split_name(name: &str) -> Option<(&str, &str)> {
    name.strip_prefix("<I>")?.split_once("<S>")
}

/// (issuer, subject) of the first certificate of a PEM file.
fn names_of(path: &Path) -> Result<(String, String), String> {
    let chain = crate::smtp::tls::load_certs(path)?;
    let (_, cert) = x509_parser::parse_x509_certificate(chain[0].as_ref())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((cert.issuer().to_string(), cert.subject().to_string()))
}

/// The identity that `TlsCertificateName` names, among `certificates` (the relay's
/// [`crate::policy::RelaySettings::client_identities`]).
pub fn find<'a>(
    name: &str,
    certificates: &'a [CertificateIdentity],
) -> Result<&'a CertificateIdentity, String> {
    let (issuer, subject) =
        split_name(name).ok_or_else(|| format!("{name:?} is not <I>issuer<S>subject"))?;
    for c in certificates {
        match names_of(&c.certificate) {
            Ok((i, s)) if dn_matches(issuer, &i) && dn_matches(subject, &s) => return Ok(c),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "unreadable certificate in [Relay] Certificates"),
        }
    }
    Err(format!(
        "TlsCertificateName {name:?}: no certificate in [Relay] Certificates (nor the relay's TlsCertificate) has that issuer and subject"
    ))
}

/// Loads a certificate chain and its private key.
pub fn load(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<ClientIdentity, String> {
    let chain = crate::smtp::tls::load_certs(cert)?;
    let (_, subject) = names_of(cert)?;
    let key = crate::smtp::tls::load_key(key)?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    Ok(ClientIdentity {
        key: Arc::new(CertifiedKey::new(chain, signing)),
        subject,
    })
}

/// Always offers the one identity.
#[derive(Debug)]
struct Present(Arc<CertifiedKey>);

impl ResolvesClientCert for Present {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0
            .key
            .choose_scheme(sigschemes)
            .is_some()
            .then(|| self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// `config` presenting `identity` when the server asks for a client certificate.
pub fn with_identity(config: &ClientConfig, identity: &ClientIdentity) -> Arc<ClientConfig> {
    let mut c = config.clone();
    c.client_auth_cert_resolver = Arc::new(Present(identity.key.clone()));
    Arc::new(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_names() {
        assert_eq!(
            split_name("<I>CN=ca<S>CN=me, O=x"),
            Some(("CN=ca", "CN=me, O=x"))
        );
    }
}
