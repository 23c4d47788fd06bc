//! Certificate expiry: every certificate the relay presents (`TlsCertificate`, each
//! `[Relay] Certificates` entry, which `TlsCertificateName` picks from) or trusts
//! (`TrustedCaFile`). A renewal that did not happen silently breaks connectors (a known
//! pain with Exchange), so those expiring within [`WARN_DAYS`] are logged at start-up and
//! on every reload, counted in `/metrics` and listed by the admin API.

use std::path::{Path, PathBuf};

use crate::policy::RelaySettings;

/// Certificates expiring within this many days are warned about.
pub const WARN_DAYS: i64 = 30;

/// One certificate of one configured file (a chain or CA file holds several).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateExpiry {
    pub file: PathBuf,
    /// The `[Relay]` key that names the file: `TlsCertificate`, `Certificates`, `TrustedCaFile`.
    pub key: &'static str,
    /// The subject as x509-parser renders it (`O=..., CN=...`).
    pub subject: String,
    /// Unix time of `notAfter`.
    pub not_after: i64,
}

impl CertificateExpiry {
    /// Whole days from `now` (Unix time) to `notAfter`; negative once expired.
    pub fn days_left(&self, now: i64) -> i64 {
        (self.not_after - now).div_euclid(86_400)
    }

    /// Within [`WARN_DAYS`] of expiry, or expired.
    pub fn expiring_soon(&self, now: i64) -> bool {
        self.days_left(now) < WARN_DAYS
    }
}

pub fn unix_now() -> i64 {
    crate::queue::spool::unix_now() as i64
}

/// The certificates of every file `[Relay]` names. Files that cannot be read are left out
/// (loading the TLS configuration reports them).
pub fn scan(relay: &RelaySettings) -> Vec<CertificateExpiry> {
    let mut files: Vec<(&Path, &'static str)> = Vec::new();
    if let Some(c) = &relay.tls_certificate {
        files.push((c, "TlsCertificate"));
    }
    for c in &relay.certificates {
        files.push((&c.certificate, "Certificates"));
    }
    if let Some(c) = &relay.trusted_ca_file {
        files.push((c, "TrustedCaFile"));
    }
    let mut out = Vec::new();
    for (file, key) in files {
        let Ok(chain) = crate::smtp::tls::load_certs(file) else {
            continue;
        };
        for der in chain {
            if let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) {
                out.push(CertificateExpiry {
                    file: file.to_path_buf(),
                    key,
                    subject: cert.subject().to_string(),
                    not_after: cert.validity().not_after.timestamp(),
                });
            }
        }
    }
    out
}

/// Logs one warning per certificate expiring within [`WARN_DAYS`] (`when`: "at start-up",
/// "on reload").
pub fn warn_expiring(certs: &[CertificateExpiry], when: &str) {
    let now = unix_now();
    for c in certs.iter().filter(|c| c.expiring_soon(now)) {
        let days = c.days_left(now);
        if days < 0 {
            tracing::warn!(file = %c.file.display(), key = c.key, subject = %c.subject, days_left = days,
                "certificate has EXPIRED ({when}); renew it and replace the file (the relay reloads it)");
        } else {
            tracing::warn!(file = %c.file.display(), key = c.key, subject = %c.subject, days_left = days,
                "certificate expires within {WARN_DAYS} days ({when}); renew it and replace the file (the relay reloads it)");
        }
    }
}

/// Sets `connector_relay_certificate_days_to_expiry{file,subject}` for each certificate.
pub fn set_gauges(certs: &[CertificateExpiry]) {
    let now = unix_now();
    for c in certs {
        metrics::gauge!(
            "connector_relay_certificate_days_to_expiry",
            "file" => c.file.display().to_string(),
            "subject" => c.subject.clone()
        )
        .set(c.days_left(now) as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certs(name: &str) -> PathBuf {
        PathBuf::from(format!("{}/certs-test/{name}", env!("CARGO_MANIFEST_DIR")))
    }

    #[test]
    fn finds_the_expired_test_certificate() {
        let text = format!(
            "[Relay]\nTlsCertificate = {:?}\nTlsPrivateKey = {:?}\nTrustedCaFile = {:?}\n\
             Certificates = [{{ Certificate = {:?}, PrivateKey = {:?} }}]\n",
            certs("relay.contoso.test.crt"),
            certs("relay.contoso.test.key"),
            certs("ca.crt"),
            certs("expired.crt"),
            certs("expired.key"),
        );
        let policy = crate::config::load_str(&text, Path::new("t.toml"))
            .unwrap()
            .policy;
        let found = scan(&policy.relay);
        assert_eq!(
            found.iter().map(|c| c.key).collect::<Vec<_>>(),
            ["TlsCertificate", "Certificates", "TrustedCaFile"]
        );
        let now = unix_now();
        let expired = &found[1];
        assert!(expired.subject.contains("CN=mail.fabrikam.test"));
        assert!(expired.days_left(now) < 0 && expired.expiring_soon(now));
        assert!(
            !found[0].expiring_soon(now),
            "the relay's test cert runs to 2046"
        );
        // Jan 1 2021 minus one day and a bit: 1 day left (floor), and soon.
        let c = CertificateExpiry {
            not_after: 1_609_459_200,
            ..expired.clone()
        };
        assert_eq!(c.days_left(1_609_459_200 - 86_400 - 5), 1);
        assert_eq!(c.days_left(1_609_459_200 + 5), -1);
    }
}
