//! DKIM signing of mailed reports (RFC 8460 §3: they MUST be signed), with `mail-auth`'s
//! signer on the ring backend. The key is a PEM PKCS#8 file (`TlsRptDkimKeyFile`): RSA
//! (`rsa-sha256`, RFC 6376) or Ed25519 (`ed25519-sha256`, RFC 8463); PKCS#1
//! `RSA PRIVATE KEY` files are read too.

use std::path::Path;

use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;

/// The headers signed: the ones a reader of a report relies on (RFC 8460 §5.3).
const SIGNED: [&str; 10] = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "TLS-Report-Domain",
    "TLS-Report-Submitter",
    "TLS-Required",
];

enum Key {
    Rsa(RsaKey<Sha256>),
    Ed25519(Ed25519Key),
}

/// A loaded signing key with its domain (`d=`) and selector (`s=`).
pub struct Signer {
    key: Key,
    domain: String,
    selector: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer(d={}, s={})", self.domain, self.selector)
    }
}

impl Signer {
    /// Loads `path`; the error says what is wrong (for `check`), never the key.
    pub fn load(path: &Path, domain: &str, selector: &str) -> Result<Signer, String> {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let key = if pem.contains("BEGIN RSA PRIVATE KEY") {
            RsaKey::<Sha256>::from_rsa_pem(&pem).map(Key::Rsa)
        } else {
            RsaKey::<Sha256>::from_pkcs8_pem(&pem)
                .map(Key::Rsa)
                .or_else(|_| {
                    use rustls_pki_types::pem::PemObject;
                    let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
                        .map_err(|e| mail_auth::Error::CryptoError(e.to_string()))?;
                    Ed25519Key::from_pkcs8_der(der.secret_pkcs8_der()).map(Key::Ed25519)
                })
        }
        .map_err(|_| {
            format!(
                "{} is not an RSA or Ed25519 private key in PEM (PKCS#8 or PKCS#1)",
                path.display()
            )
        })?;
        Ok(Signer {
            key,
            domain: domain.to_string(),
            selector: selector.to_string(),
        })
    }

    /// The message with a `DKIM-Signature` header field in front.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        let header = match &self.key {
            Key::Rsa(k) => self.sign_with(k, message),
            Key::Ed25519(k) => self.sign_with(k, message),
        }?;
        let mut out = header.into_bytes();
        out.extend_from_slice(message);
        Ok(out)
    }

    fn sign_with<K: mail_auth::common::crypto::SigningKey>(
        &self,
        key: &K,
        message: &[u8],
    ) -> Result<String, String> {
        // The builder takes the key by value; signing keys are not Clone, so sign through
        // a reference wrapper.
        let signature = DkimSigner::from_key(KeyRef(key))
            .domain(&self.domain)
            .selector(&self.selector)
            .headers(SIGNED)
            .sign(message)
            .map_err(|e| format!("DKIM signing failed: {e}"))?;
        Ok(signature.to_header())
    }
}

/// Lends a signing key to the builder.
struct KeyRef<'a, K>(&'a K);

impl<K: mail_auth::common::crypto::SigningKey> mail_auth::common::crypto::SigningKey
    for KeyRef<'_, K>
{
    type Hasher = K::Hasher;

    fn sign(&self, input: impl mail_auth::common::headers::Writable) -> mail_auth::Result<Vec<u8>> {
        self.0.sign(input)
    }

    fn algorithm(&self) -> mail_auth::common::crypto::Algorithm {
        self.0.algorithm()
    }
}
