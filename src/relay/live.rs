//! What a reload rebuilds from a validated policy: the session setup (session config with
//! the TLS acceptor built from the current certificate files, the client certificate
//! validator, the inbound policy, the backend, the OnPremises exemption) and the delivery
//! engine. The spool and the queue are shared by every generation and never rebuilt.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use tokio_rustls::TlsAcceptor;

use super::StartError;
use super::backend::RelayBackend;
use crate::delivery::{Deliverer, DeliveryJob, RecipientOutcome};
use crate::delivery::{Failure, QueueKey};
use crate::dns::Resolver;
use crate::message::srs::Srs;
use crate::policy::restrict::{InboundPolicy, SessionFacts};
use crate::policy::{ConnectorType, Policy, RelaySettings};
use crate::queue::hop::HopLimits;
use crate::queue::manager::{BoxFuture, QueueHandle, QueueSettings, Transport};
use crate::queue::spool::Spool;
use crate::smtp::client_cert::ClientCertValidator;
use crate::smtp::pregreet::PassCache;
use crate::smtp::server::{ExemptFn, Setup};
use crate::smtp::session::{Pregreet, SessionConfig};
use crate::smtp::tls;
use crate::trace::Events;

/// What every generation shares.
pub(super) struct Shared {
    pub spool: Arc<Spool>,
    pub queue: QueueHandle,
    /// The main resolver (`DnsServers` is fixed for the relay's life).
    pub resolver: Arc<dyn Resolver>,
    /// The message trace (every generation's backend and deliverer emit into it).
    pub events: Events,
    /// Clients that passed the pre-greeting test (kept across reloads).
    pub pregreet_passes: Arc<PassCache>,
    /// Back pressure (one monitor for the relay's life; thresholds from each policy).
    pub pressure: Arc<super::pressure::Pressure>,
    /// TLS-RPT recorder (`TlsRptEnabled` at start; one store for the relay's life).
    pub tlsrpt: Option<crate::tlsrpt::Recorder>,
}

/// One generation's inbound TLS: the acceptor (from `TlsCertificate`/`TlsPrivateKey`, read
/// now) and the client certificate validator (`TrustedCaFile`, `RevocationLists`).
pub(super) struct InboundTls {
    pub acceptor: Option<TlsAcceptor>,
    pub client_certs: Option<Arc<ClientCertValidator>>,
}

pub(super) fn inbound_tls(r: &RelaySettings) -> Result<InboundTls, StartError> {
    let acceptor = match (&r.tls_certificate, &r.tls_private_key) {
        (Some(c), Some(k)) => Some(TlsAcceptor::from(
            tls::server_config(c, k, true).map_err(StartError::Tls)?,
        )),
        _ => None,
    };
    // Client certificates are requested under TLS and judged against TrustedCaFile, the
    // webpki roots and RevocationLists.
    let client_certs = match &acceptor {
        Some(_) => Some(Arc::new(
            ClientCertValidator::new(r.trusted_ca_file.as_deref(), &r.revocation_lists)
                .map_err(StartError::Tls)?,
        )),
        None => None,
    };
    Ok(InboundTls {
        acceptor,
        client_certs,
    })
}

/// The SRS secret (`[Relay] SrsSecretFile`), when SRS is in use: some Outbound connector has
/// `SenderRewritingEnabled` (then the file is created if missing), or the file exists (so
/// bounces to addresses issued before SRS was switched off are still reversed). Never logged.
pub(super) fn load_srs(policy: &Policy) -> Result<Option<Arc<Srs>>, StartError> {
    let path = &policy.relay.srs_secret_file;
    let wanted = policy.outbound.iter().any(|c| c.sender_rewriting_enabled);
    if !wanted && !path.exists() {
        return Ok(None);
    }
    Srs::load_or_create(path)
        .map(|s| Some(Arc::new(s)))
        .map_err(|source| StartError::Srs {
            path: path.display().to_string(),
            source,
        })
}

/// The delivery engine for `policy`. Every builder call lives here, so that what the
/// engine is given (resolvers, SRS, trace events) is the same at start and on reload.
pub(super) fn deliverer(
    policy: &Arc<Policy>,
    resolver: &Arc<dyn Resolver>,
    srs: Option<Arc<Srs>>,
    events: &Events,
    tlsrpt: Option<crate::tlsrpt::Recorder>,
) -> Result<Deliverer, StartError> {
    let r = &policy.relay;
    let mut deliverer = Deliverer::new(policy.clone(), resolver.clone())
        .with_srs(srs)
        .with_events(events.clone())
        .with_mta_sts(
            &crate::delivery::mta_sts::Settings {
                port: r.mta_sts_policy_port,
                ..Default::default()
            },
            mta_sts_store(&r.data_dir),
        )
        .with_tlsrpt(tlsrpt);
    if !r.external_dns_servers.is_empty() {
        let external = crate::dns::hickory::HickoryResolver::new(&r.external_dns_servers)
            .map_err(StartError::Dns)?;
        deliverer = deliverer.with_external_resolver(Arc::new(external));
    }
    Ok(deliverer)
}

/// The MTA-STS policy cache under `DataDir`; without it (unwritable directory) policies
/// are kept in memory only, which is logged: a restart then forgets them.
fn mta_sts_store(
    data_dir: &std::path::Path,
) -> Option<Arc<crate::delivery::mta_sts::cache::Store>> {
    match crate::delivery::mta_sts::cache::Store::open(data_dir) {
        Ok(store) => Some(Arc::new(store)),
        Err(e) => {
            tracing::error!(error = %e, "MTA-STS policy cache unusable; policies kept in memory only");
            None
        }
    }
}

pub(super) fn queue_settings(r: &RelaySettings) -> QueueSettings {
    QueueSettings {
        fqdn: r.fqdn.clone(),
        retry_first: r.transient_failure_retry_interval,
        retry_max: r.max_retry_interval,
        expiration: r.message_expiration_timeout,
        delay_notice: r.delay_notification_timeout,
        max_connections: r.max_outbound_connections,
        hop: HopLimits {
            max_connections: r.max_per_domain_outbound_connections,
            quick_retries: r.transient_failure_retry_count,
            quick_interval: r.transient_failure_retry_interval,
            slow_interval: r.outbound_connection_failure_retry_interval,
        },
    }
}

/// The setup of the next SMTP sessions.
pub(super) fn setup(
    policy: &Arc<Policy>,
    tls: InboundTls,
    shared: &Shared,
    srs: Option<Arc<Srs>>,
) -> Setup<RelayBackend> {
    let r = &policy.relay;
    let cfg = Arc::new(SessionConfig {
        fqdn: r.fqdn.clone(),
        max_message_size: r.max_message_size,
        max_header_size: r.max_header_size,
        max_recipients: r.max_recipients_per_message,
        bare_newline: r.bare_newline_policy,
        inactivity_timeout: r.connection_inactivity_timeout,
        session_timeout: r.connection_timeout,
        min_data_rate: r.min_data_rate,
        min_data_rate_grace: r.min_data_rate_grace,
        max_protocol_errors: r.max_protocol_errors,
        tls: tls.acceptor,
        require_tls: false,
        client_certs: tls.client_certs,
        starttls: Default::default(),
        offer_requiretls: true,
        auth: None,
        forbid_unauth_pipelining: true,
        pregreet: Pregreet {
            wait: r.pre_greeting_wait,
            passes: Some(shared.pregreet_passes.clone()),
        },
    });
    let inbound = Arc::new(InboundPolicy::new(policy));
    let backend = Arc::new(RelayBackend::new(
        policy.clone(),
        inbound.clone(),
        shared.spool.clone(),
        shared.queue.clone(),
        srs,
        shared.events.clone(),
        shared.pressure.clone(),
    ));
    // OnPremises servers (by IP) are exempt from the per-source connection cap and rate.
    let p = policy.clone();
    let exempt: ExemptFn = Arc::new(move |ip| {
        let facts = SessionFacts {
            ip,
            tls: false,
            trusted_cert_names: &[],
            cert_problem: None,
            trusted_cert_issuer: None,
        };
        inbound
            .attribute(&facts, None)
            .is_some_and(|a| p.inbound[a.index].connector_type == ConnectorType::OnPremises)
    });
    Setup {
        cfg,
        backend,
        exempt,
        // Live: a reload changes which balancers are trusted for the next connections.
        proxy_from: r.proxy_protocol_from.clone().into(),
    }
}

/// Everything a reload swaps in, built before anything is swapped (so a failure leaves the
/// running generation untouched).
pub(super) struct Generation {
    pub setup: Setup<RelayBackend>,
    pub deliverer: Deliverer,
}

pub(super) fn build(policy: &Arc<Policy>, shared: &Shared) -> Result<Generation, StartError> {
    let tls = inbound_tls(&policy.relay)?;
    let srs = load_srs(policy)?;
    let deliverer = deliverer(
        policy,
        &shared.resolver,
        srs.clone(),
        &shared.events,
        shared.tlsrpt.clone(),
    )?;
    Ok(Generation {
        setup: setup(policy, tls, shared, srs),
        deliverer,
    })
}

/// The queue's transport: the current delivery engine. An attempt takes the engine of the
/// moment it starts (so it sees the policy of that moment) and keeps it to its end; each
/// swap is a new generation, so that the queue routes its pending recipients again.
pub(super) struct SwapTransport {
    current: ArcSwap<Deliverer>,
    generation: AtomicU64,
}

impl SwapTransport {
    pub fn new(d: Deliverer) -> Self {
        SwapTransport {
            current: ArcSwap::from_pointee(d),
            generation: AtomicU64::new(0),
        }
    }

    pub fn store(&self, d: Deliverer) {
        self.current.store(Arc::new(d));
        self.generation.fetch_add(1, Ordering::Release);
    }
}

impl Transport for SwapTransport {
    fn queue_key(&self, recipient: &str, from_outside_org: bool) -> Result<QueueKey, Failure> {
        self.current.load().queue_key(recipient, from_outside_org)
    }

    fn deliver<'a>(&'a self, job: &'a DeliveryJob<'a>) -> BoxFuture<'a, Vec<RecipientOutcome>> {
        let current = self.current.load_full();
        Box::pin(async move { current.deliver(job).await })
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}
