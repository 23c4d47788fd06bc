//! MTA-STS (RFC 8461) for MX delivery: which MX hosts of a domain may be used and what TLS
//! each one must offer.
//!
//! Data flow, per route group (recipient domain) of an MX route whose `MtaStsMode` is
//! `Opportunistic`:
//!
//! ```text
//! MtaSts::lookup(domain) ── memory (fresh for RECHECK) ──> Active policy
//!        │ stale or unknown
//!        ├─ SQLite row (first time after a start; survives restarts)   cache.rs
//!        ├─ TXT _mta-sts.<domain>  "v=STSv1; id=..."                      policy.rs
//!        └─ id new or changed: GET https://mta-sts.<domain>/.well-known/mta-sts.txt   fetch.rs
//!               failure: the cached policy while it is valid (§3.3), else no policy
//!
//! per MX host:  host_requirement(policy, host) -> HostTls   (the one decision function)
//! ```
//!
//! Decisions (README "MTA-STS"):
//! - `enforce`: a host outside the policy's `mx` patterns is not used (`4.4.8 MX hosts of
//!   <domain> failed MTA-STS validation` when none is left); a matching host needs STARTTLS
//!   with a certificate that chains to the webpki roots or `TrustedCaFile` and names the
//!   MX host (§4.2), never plaintext; any TLS failure there is `4.7.5 Remote certificate
//!   failed MTA-STS validation. Reason: ...`. Both are deferrals (RFC 8461 §5.1 forbids
//!   bouncing on a first failure); they become `5.4.8` / `5.7.5` only at expiry. Before
//!   such a failure is returned, the TXT `id` is checked live and a changed policy is
//!   fetched and applied at once (§5.1: re-check before failing).
//! - `testing`: delivery as the route says; what would have failed is logged, traced and
//!   counted.
//! - `none`, no policy, `MtaStsMode = None`, smart-host routes: nothing.
//!
//! DANE comes first: where the DANE engine (`delivery::dane`) found usable TLSA records
//! for a host, its verdict stands and this module's requirement is not consulted for that
//! host (RFC 8461 §2: MTA-STS must never override a failing DANE validation).
//!
//! Cost on the hot path: one mutex and one hash lookup per route group while the domain's
//! entry is fresh ([`RECHECK`]); DNS and HTTPS only when it is stale, and never longer
//! than the resolver's timeouts plus the fetch's time limit.

pub mod cache;
pub mod fetch;
pub mod policy;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::Failure;
use crate::dns::{DnsError, Resolver};
use cache::{Cached, Store};
use fetch::{FetchError, Fetcher};
use policy::Mode;

/// How long a domain's entry (policy or "no policy") is used without asking DNS again.
/// The TXT record is what announces a new policy; five minutes is a common TXT TTL, and a
/// failure re-checks at once anyway.
pub const RECHECK: Duration = Duration::from_secs(300);

/// The policy fetch's time limit (DNS of the policy host, connect, TLS, response, body).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the background refresher looks for policies about to expire.
const REFRESH_EVERY: Duration = Duration::from_secs(3600);

/// A policy is refreshed once it is older than this (RFC 8461 §10.2 suggests a daily
/// refresh), or than half its `max_age` when that is shorter.
const REFRESH_AFTER: u64 = 86_400;

/// Most domains kept in memory; beyond, the map is cleared (SQLite still has them).
const MEMORY_LIMIT: usize = 100_000;

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The policy in force for a domain, and how the lookup went (for the trace, `validate`
/// and the logs).
#[derive(Debug, Clone)]
pub struct Active {
    pub domain: String,
    /// `None`: no MTA-STS for this domain now.
    pub cached: Option<Arc<Cached>>,
    /// The lookup's steps in words: `TXT id=X; policy fetched` / `... from cache` / ...
    pub steps: String,
}

impl Active {
    /// One line for trace rows: `enforce (id X, max_age N, mx a, b): <steps>`.
    pub fn summary(&self) -> String {
        match &self.cached {
            Some(c) => format!(
                "{} (id {}, max_age {}, mx {}): {}",
                c.policy.mode,
                c.id,
                c.policy.max_age,
                c.policy.mx.join(", "),
                self.steps
            ),
            None => format!("no policy: {}", self.steps),
        }
    }

    fn mode(&self) -> Option<Mode> {
        self.cached.as_ref().map(|c| c.policy.mode)
    }
}

/// What MTA-STS asks of one MX host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostTls {
    /// No MTA-STS requirement (no policy, `mode: none`).
    NotApplied,
    /// `enforce`, host in the policy: STARTTLS with a certificate valid (webpki) for `host`.
    Enforce,
    /// `enforce`, host not in the policy: do not use it.
    Refuse(Failure),
    /// `testing`: deliver as the route says; `mx_matched` false is a would-be failure.
    Testing { mx_matched: bool },
}

/// The one per-host decision (RFC 8461 §4 and §5). DANE is decided before this and wins
/// where it applies (module docs).
pub fn host_requirement(active: Option<&Active>, host: &str) -> HostTls {
    let Some(c) = active.and_then(|a| a.cached.as_ref()) else {
        return HostTls::NotApplied;
    };
    let matched = c.policy.mx_matches(host);
    match c.policy.mode {
        Mode::None => HostTls::NotApplied,
        Mode::Testing => HostTls::Testing {
            mx_matched: matched,
        },
        Mode::Enforce if matched => HostTls::Enforce,
        Mode::Enforce => HostTls::Refuse(mx_failure(
            active.map(|a| a.domain.as_str()).unwrap_or(""),
            &format!(
                "MX host {host} is not in the MTA-STS policy (mx: {})",
                c.policy.mx.join(", ")
            ),
        )),
    }
}

/// `4.4.8 MX hosts of <domain> failed MTA-STS validation` (Exchange Online's text).
pub fn mx_failure(domain: &str, why: &str) -> Failure {
    Failure {
        code: None,
        enhanced: "4.4.8".into(),
        text: format!("MX hosts of {domain} failed MTA-STS validation ({why})"),
    }
}

/// `4.7.5 Remote certificate failed MTA-STS validation. Reason: <why>` (Exchange Online).
pub fn tls_failure(why: &str) -> Failure {
    Failure {
        code: None,
        enhanced: "4.7.5".into(),
        text: format!("Remote certificate failed MTA-STS validation. Reason: {why}"),
    }
}

/// The engine's tunables (`[Relay] MtaStsPolicyPort` for labs and tests).
#[derive(Debug, Clone)]
pub struct Settings {
    pub port: u16,
    pub fetch_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            port: 443,
            fetch_timeout: FETCH_TIMEOUT,
        }
    }
}

/// A domain's entry in memory.
#[derive(Clone)]
struct Slot {
    cached: Option<Arc<Cached>>,
    checked: Instant,
    steps: String,
}

/// The MTA-STS engine: lookups, the two-level cache, the background refresher.
pub struct MtaSts {
    fetcher: Fetcher,
    store: Option<Arc<Store>>,
    memory: Mutex<HashMap<String, Slot>>,
    refreshing: Mutex<HashSet<String>>,
    /// STARTTLS configurations of enforced hosts ([`MtaSts::enforced_config`]).
    configs: Mutex<HashMap<String, Arc<rustls::ClientConfig>>>,
}

impl MtaSts {
    /// `store`: the SQLite cache (`None`: memory only, when `DataDir` is unusable).
    pub fn new(
        resolver: Arc<dyn Resolver>,
        tls: Option<super::tls::TlsContext>,
        store: Option<Arc<Store>>,
        settings: &Settings,
    ) -> Arc<MtaSts> {
        let engine = Arc::new(MtaSts {
            fetcher: Fetcher {
                resolver,
                tls,
                port: settings.port,
                timeout: settings.fetch_timeout,
            },
            store,
            memory: Mutex::default(),
            refreshing: Mutex::default(),
            configs: Mutex::default(),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(refresher(Arc::downgrade(&engine)));
        }
        engine
    }

    /// The policy in force for `domain`: from memory while fresh, else from DNS, the
    /// SQLite cache and a fetch (module docs). `recheck`: ignore the memory's freshness
    /// (a failure is about to be returned: RFC 8461 §5.1).
    pub async fn lookup(self: &Arc<Self>, domain: &str, recheck: bool) -> Active {
        if !recheck && let Some(slot) = self.fresh(domain) {
            self.maybe_refresh(domain, &slot);
            return self.active(domain, slot);
        }
        let slot = self.resolve(domain, false).await;
        self.active(domain, slot)
    }

    fn active(&self, domain: &str, slot: Slot) -> Active {
        let active = Active {
            domain: domain.to_string(),
            cached: slot.cached,
            steps: slot.steps,
        };
        crate::metrics::mta_sts_lookup(active.mode().map_or("none", Mode::as_str));
        active
    }

    fn fresh(&self, domain: &str) -> Option<Slot> {
        let memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        let slot = memory.get(domain)?;
        let valid = slot.cached.as_ref().is_none_or(|c| c.valid_at(unix_now()));
        (valid && slot.checked.elapsed() < RECHECK).then(|| slot.clone())
    }

    /// Starts a background refresh when the policy is older than [`REFRESH_AFTER`] (or
    /// half its `max_age`).
    fn maybe_refresh(self: &Arc<Self>, domain: &str, slot: &Slot) {
        let Some(c) = &slot.cached else { return };
        let due = c.fetched_at + REFRESH_AFTER.min(c.policy.max_age / 2);
        if unix_now() >= due {
            self.spawn_refresh(domain);
        }
    }

    fn spawn_refresh(self: &Arc<Self>, domain: &str) {
        let fresh = self
            .refreshing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(domain.to_string());
        if !fresh {
            return;
        }
        let engine = self.clone();
        let domain = domain.to_string();
        tokio::spawn(async move {
            engine.resolve(&domain, true).await;
            engine
                .refreshing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&domain);
        });
    }

    /// DNS, cache and fetch; the result is remembered in memory. `refetch`: fetch even
    /// when the TXT id is unchanged (a refresh extends the policy's life, §3.3).
    async fn resolve(&self, domain: &str, refetch: bool) -> Slot {
        let now = unix_now();
        let cached = self.cached(domain).await.filter(|c| c.valid_at(now));
        let txt = self
            .fetcher
            .resolver
            .txt(&format!("_mta-sts.{domain}"))
            .await;
        let (cached, steps) = match txt.map(|r| policy::parse_txt(&r)) {
            Ok(Ok(id)) => match cached {
                Some(c) if c.id == id && !refetch => (
                    Some(c),
                    format!("TXT id={id}; policy from cache (id unchanged)"),
                ),
                _ => self.fetch(domain, id, cached, now).await,
            },
            // §3.1: no usable record. A valid cached policy still holds (§3.3: removing a
            // policy is done by publishing `mode: none`, not by deleting the TXT record).
            Ok(Err(e)) => keep(cached, format!("TXT: {e}")),
            Err(DnsError::NxDomain | DnsError::NoRecords) => {
                keep(cached, "TXT: no _mta-sts record".to_string())
            }
            Err(e) => keep(cached, format!("TXT lookup failed: {e}")),
        };
        let slot = Slot {
            cached,
            checked: Instant::now(),
            steps,
        };
        let mut memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        if memory.len() >= MEMORY_LIMIT {
            memory.clear();
        }
        memory.insert(domain.to_string(), slot.clone());
        slot
    }

    async fn fetch(
        &self,
        domain: &str,
        id: String,
        cached: Option<Arc<Cached>>,
        now: u64,
    ) -> (Option<Arc<Cached>>, String) {
        match self.fetcher.fetch(domain).await {
            Ok(policy) => {
                crate::metrics::mta_sts_fetch("ok");
                let fresh = Arc::new(Cached::new(id.clone(), policy, now));
                self.save(domain, fresh.clone()).await;
                let mode = fresh.policy.mode;
                (
                    Some(fresh),
                    format!("TXT id={id}; policy fetched, mode {mode}"),
                )
            }
            Err(e) => {
                crate::metrics::mta_sts_fetch(e.kind.as_str());
                tracing::warn!(domain, error = %e, cached = cached.is_some(), "MTA-STS policy fetch failed");
                keep(cached, format!("TXT id={id}; policy fetch failed: {e}"))
            }
        }
    }

    /// The cached policy: memory first, then the SQLite row.
    async fn cached(&self, domain: &str) -> Option<Arc<Cached>> {
        if let Some(slot) = self
            .memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(domain)
        {
            return slot.cached.clone();
        }
        let store = self.store.clone()?;
        let d = domain.to_string();
        match tokio::task::spawn_blocking(move || store.load(&d)).await {
            Ok(Ok(c)) => c.map(Arc::new),
            Ok(Err(e)) => {
                tracing::warn!(domain, error = %e, "MTA-STS cache unreadable");
                None
            }
            Err(e) => {
                tracing::warn!(domain, error = %e, "MTA-STS cache unreadable");
                None
            }
        }
    }

    async fn save(&self, domain: &str, c: Arc<Cached>) {
        let Some(store) = self.store.clone() else {
            return;
        };
        let d = domain.to_string();
        match tokio::task::spawn_blocking(move || store.save(&d, &c)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(domain, error = %e, "MTA-STS cache not written"),
            Err(e) => tracing::warn!(domain, error = %e, "MTA-STS cache not written"),
        }
    }

    /// Refreshes every stored policy that expires within a day (or half its life).
    async fn refresh_expiring(self: &Arc<Self>) {
        let Some(store) = self.store.clone() else {
            return;
        };
        let now = unix_now();
        match tokio::task::spawn_blocking(move || store.expiring(now, now + REFRESH_AFTER)).await {
            Ok(Ok(domains)) => domains.iter().for_each(|d| self.spawn_refresh(d)),
            Ok(Err(e)) => tracing::warn!(error = %e, "MTA-STS cache unreadable"),
            Err(e) => tracing::warn!(error = %e, "MTA-STS refresher failed"),
        }
    }
}

/// What delivery does with a host's [`HostTls`] (called from `Deliverer::try_address`).
impl MtaSts {
    /// The STARTTLS configuration of an enforced host (cached per host and pattern, so
    /// TLS session resumption keeps working). `also`: the route's `DomainValidation`
    /// pattern, which must match too.
    pub fn enforced_config(
        &self,
        host: &str,
        also: Option<crate::policy::DomainPattern>,
    ) -> Result<Arc<rustls::ClientConfig>, String> {
        let key = format!("{host}|{also:?}");
        let mut configs = self.configs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = configs.get(&key) {
            return Ok(c.clone());
        }
        let ctx = self.fetcher.tls.as_ref().ok_or("TLS context unavailable")?;
        let config = ctx.mta_sts_config(host, also).map_err(|e| e.to_string())?;
        if configs.len() >= MEMORY_LIMIT {
            configs.clear();
        }
        configs.insert(key, config.clone());
        Ok(config)
    }
}

/// An attempt at an enforced host that failed in STARTTLS or the handshake (not offered,
/// refused, certificate chain, dates or name) becomes `4.7.5`, the underlying reason kept.
pub fn enforce_tls_failure(e: &mut super::client::SessionError) {
    if e.stage != super::client::Stage::StartTls {
        return;
    }
    // The text already names the reason, host, IP, the check and the peer certificate.
    crate::metrics::mta_sts_verdict("enforce", "tls_failed");
    e.failure = tls_failure(&e.failure.text);
    e.permanent = false;
    e.try_next_host = true;
}

/// Under `testing`: what would have failed under `enforce`, for the log, the trace and
/// the metrics (`None`: it would have passed). The session ran with the route's own
/// verifier, so the certificates it received are validated here after the fact (WebPKI
/// with the relay's trust anchors and CRLs, and the MX host's name) when `webpki` is
/// there; without it only the name is checked.
pub fn testing_verdict(
    mx_matched: bool,
    host: &str,
    tls: Option<&super::client::TlsInfo>,
    webpki: Option<&super::tls::TlsContext>,
) -> Option<String> {
    let why = if !mx_matched {
        "MX host not in the policy".to_string()
    } else {
        match (tls, webpki) {
            (None, _) => "no TLS (STARTTLS not offered or failed)".to_string(),
            (Some(t), Some(ctx)) => match ctx.webpki_verdict(&t.chain, host) {
                Ok(()) => {
                    crate::metrics::mta_sts_verdict("testing", "ok");
                    return None;
                }
                Err(why) => format!("certificate does not validate for {host}: {why}"),
            },
            (Some(t), None) => {
                let pattern = crate::policy::DomainPattern::Exact(host.to_ascii_lowercase());
                if t.peer_names
                    .iter()
                    .any(|n| super::tls::name_matches(&pattern, n))
                {
                    crate::metrics::mta_sts_verdict("testing", "ok");
                    return None;
                }
                format!(
                    "certificate names [{}] do not match {host}",
                    t.peer_names.join(", ")
                )
            }
        }
    };
    let verdict = if mx_matched {
        "tls_failed"
    } else {
        "mx_mismatch"
    };
    crate::metrics::mta_sts_verdict("testing", verdict);
    Some(why)
}

/// Keeps a valid cached policy after a failed or empty lookup (RFC 8461 §3.3).
fn keep(cached: Option<Arc<Cached>>, step: String) -> (Option<Arc<Cached>>, String) {
    match cached {
        Some(c) => {
            let note = format!("{step}; cached policy id={} still valid, used", c.id);
            (Some(c), note)
        }
        None => (None, step),
    }
}

/// The background refresher: every [`REFRESH_EVERY`], the policies about to expire.
async fn refresher(engine: Weak<MtaSts>) {
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    loop {
        tick.tick().await;
        let Some(engine) = engine.upgrade() else {
            return;
        };
        engine.refresh_expiring().await;
    }
}

/// A fetch error, for callers that want the kind (TLS-RPT).
pub type PolicyFetchError = FetchError;

#[cfg(test)]
mod tests {
    use super::policy::Policy;
    use super::*;

    fn active(mode: Mode) -> Active {
        Active {
            domain: "example.test".into(),
            cached: Some(Arc::new(Cached::new(
                "1".into(),
                Policy {
                    mode,
                    max_age: 86400,
                    mx: vec!["*.example.test".into()],
                },
                unix_now(),
            ))),
            steps: String::new(),
        }
    }

    #[test]
    fn decisions() {
        let e = active(Mode::Enforce);
        assert_eq!(
            host_requirement(Some(&e), "mx.example.test"),
            HostTls::Enforce
        );
        match host_requirement(Some(&e), "mx.other.test") {
            HostTls::Refuse(f) => {
                assert_eq!(f.enhanced, "4.4.8");
                assert!(
                    f.text
                        .starts_with("MX hosts of example.test failed MTA-STS validation")
                );
            }
            other => panic!("{other:?}"),
        }
        let t = active(Mode::Testing);
        assert_eq!(
            host_requirement(Some(&t), "mx.other.test"),
            HostTls::Testing { mx_matched: false }
        );
        assert_eq!(
            host_requirement(Some(&active(Mode::None)), "x"),
            HostTls::NotApplied
        );
        assert_eq!(host_requirement(None, "x"), HostTls::NotApplied);
    }
}
