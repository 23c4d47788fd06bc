//! The reporting task: after each period ends, every domain with counts in a closed
//! period gets its report (module docs of `tlsrpt` for the rules).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::dkim::Signer;
use super::report::{self, Rua, Submitter};
use super::send;
use super::store::{Due, Store};
use crate::dns::Resolver;
use crate::policy::TlsRptSettings;
use crate::queue::manager::QueueHandle;
use crate::queue::spool::{Spool, unix_now};

/// Records still in the recorder's channel when a period ends get this long to land.
const GRACE: u64 = 1;
/// RFC 8460 §5.5: a report that could not be delivered is retried for at most a day.
const GIVE_UP_AFTER: u64 = 86_400;

/// Everything the reporter needs.
pub struct Reporter {
    pub store: Arc<Store>,
    pub settings: TlsRptSettings,
    pub fqdn: String,
    pub resolver: Arc<dyn Resolver>,
    pub spool: Arc<Spool>,
    pub queue: QueueHandle,
    /// Server certificate validation for `https:` rua (WebPKI roots and `TrustedCaFile`).
    pub https: Arc<rustls::ClientConfig>,
    /// `None`: no key configured, `mailto:` rua are skipped.
    pub signer: Option<Signer>,
}

/// The HTTPS client configuration: webpki roots plus `TrustedCaFile`.
pub fn https_config(trusted_ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = trusted_ca_file {
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| e.to_string())? {
            roots
                .add(cert.map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(crate::delivery::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

impl Reporter {
    /// Runs until `stop`: one reporting run after each period end (and one at start, for
    /// periods that ended while the relay was down).
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let period = self.settings.report_interval.as_secs().max(1);
        loop {
            self.run_once(unix_now()).await;
            let now = unix_now();
            let next = now - now % period + period + GRACE;
            let wait = Duration::from_secs(next.saturating_sub(now));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// One run: the closed periods, at most `max_reports_per_run` reports.
    pub async fn run_once(&self, now: u64) {
        let store = self.store.clone();
        let before = now.saturating_sub(GRACE);
        let due = match tokio::task::spawn_blocking(move || store.due(before)).await {
            Ok(Ok(d)) => d,
            other => {
                tracing::warn!(error = ?other.err(), "TLS-RPT: cannot read the counts");
                return;
            }
        };
        for d in due.into_iter().take(self.settings.max_reports_per_run) {
            let done = self.report(&d).await;
            if done || now >= d.end + GIVE_UP_AFTER {
                let store = self.store.clone();
                let _ = tokio::task::spawn_blocking(move || store.remove(d.start, &d.domain)).await;
            }
        }
    }

    /// Sends one domain's report of one period; true when it need not be tried again.
    async fn report(&self, d: &Due) -> bool {
        let name = format!("_smtp._tls.{}", d.domain);
        let ruas = match self.resolver.txt(&name).await {
            Ok(txts) => report::parse_record(&txts),
            Err(crate::dns::DnsError::NxDomain | crate::dns::DnsError::NoRecords) => {
                Err("no TLSRPT record".into())
            }
            Err(e) => {
                tracing::info!(domain = %d.domain, error = %e, "TLS-RPT: lookup failed; will retry");
                return false;
            }
        };
        let ruas = match ruas {
            Ok(r) => r,
            Err(why) => {
                tracing::debug!(domain = %d.domain, why, "TLS-RPT: domain does not take reports");
                return true;
            }
        };
        let store = self.store.clone();
        let (start, domain) = (d.start, d.domain.clone());
        let rows = match tokio::task::spawn_blocking(move || store.rows(start, &domain)).await {
            Ok(Ok(r)) if !r.is_empty() => r,
            _ => return true,
        };
        let sub = Submitter {
            organization: self.settings.organization_name.clone(),
            contact: self.settings.contact_info.clone(),
            fqdn: self.fqdn.clone(),
        };
        let json = report::build(&sub, &d.domain, d.start, d.end, &rows);
        let gz = report::gzip(&json);
        let mut all_ok = true;
        for rua in ruas {
            let result = match &rua {
                Rua::Https(url) => {
                    send::post(url, gz.clone(), self.resolver.as_ref(), self.https.clone()).await
                }
                Rua::Mailto(to) => self.mail(d, to, &gz).await,
            };
            let method = match rua {
                Rua::Https(_) => "https",
                Rua::Mailto(_) => "mailto",
            };
            let outcome = if result.is_ok() { "sent" } else { "failed" };
            crate::metrics::tlsrpt_report(method, outcome);
            match result {
                Ok(()) => tracing::info!(domain = %d.domain, rua = ?rua, "TLS-RPT: report sent"),
                Err(e) => {
                    tracing::warn!(domain = %d.domain, rua = ?rua, error = %e, "TLS-RPT: report not sent");
                    all_ok = false;
                }
            }
        }
        all_ok
    }

    async fn mail(&self, d: &Due, to: &str, gz: &[u8]) -> Result<(), String> {
        let Some(signer) = &self.signer else {
            // RFC 8460 §3: unsigned mailed reports are not to be sent.
            return Err("no TlsRptDkimKeyFile: mailto reports need a DKIM key".into());
        };
        let report_id = report::report_id(d.start, &d.domain, &self.fqdn);
        let mail = send::Mail {
            from: &self.settings.sender,
            to,
            domain: &d.domain,
            organization: &self.settings.organization_name,
            report_id: &report_id,
            fqdn: &self.fqdn,
            filename: format!("{}!{}!{}!{}.json.gz", self.fqdn, d.domain, d.start, d.end),
        };
        let message = send::build_mail(&mail, gz, unix_now());
        let signed = signer.sign(&message)?;
        let id = send::enqueue(&self.spool, &self.queue, &self.settings.sender, to, signed).await?;
        tracing::info!(id, to, domain = %d.domain, "TLS-RPT: report queued");
        Ok(())
    }
}
