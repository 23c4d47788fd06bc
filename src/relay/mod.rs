//! Wires the relay together: spool recovery, queue manager, delivery engine, listeners,
//! and the drain on shutdown. Used by `connector-relay run` and by in-process tests.

mod backend;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::delivery::Deliverer;
use crate::dns::Resolver;
use crate::message::srs::Srs;
use crate::policy::restrict::{InboundPolicy, SessionFacts};
use crate::policy::{ConnectorType, Policy};
use crate::queue::manager::{self, QueueSettings, Transport};
use crate::queue::spool::Spool;
use crate::smtp::client_cert::ClientCertValidator;
use crate::smtp::server::{self, Limits};
use crate::smtp::session::SessionConfig;
use crate::smtp::tls;
use crate::trace::{Events, store as trace_store};
use backend::RelayBackend;

/// Why the relay could not start (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open spool {path}: {source}")]
    Spool {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS certificate: {0}")]
    Tls(String),
    #[error("DNS resolver: {0}")]
    Dns(String),
    #[error("SRS secret {path}: {source}")]
    Srs {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open the message trace store {0}")]
    Trace(String),
}

/// A running relay.
pub struct RelayHandle {
    /// Bound addresses of `Listen` (in order), then of `ImplicitTlsListen`.
    pub smtp_addrs: Vec<SocketAddr>,
    pub implicit_tls_addrs: Vec<SocketAddr>,
    draining: watch::Sender<bool>,
    stop: watch::Sender<bool>,
    limits: Arc<Limits>,
    queue: tokio::task::JoinHandle<()>,
    /// The message trace: hand a clone to whatever else should record events.
    pub events: Events,
    trace: trace_store::Writer,
}

impl RelayHandle {
    /// SIGTERM behaviour: stop accepting (new connections get 421), let running
    /// transactions finish (up to `grace`), stop the queue. Everything not delivered stays
    /// in the spool for the next start.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.draining.send(true);
        if !self.limits.drain(grace).await {
            tracing::warn!("sessions still running after the drain period; closing");
        }
        let _ = self.stop.send(true);
        let _ = self.queue.await;
        // Last: the trace rows of everything above are written before the relay stops.
        self.trace.finish().await;
    }
}

/// Starts the relay with the system (or configured) DNS resolver.
pub async fn start(policy: Arc<Policy>) -> Result<RelayHandle, StartError> {
    let resolver = crate::dns::hickory::HickoryResolver::new(&policy.relay.dns_servers)
        .map_err(StartError::Dns)?;
    start_with_resolver(policy, Arc::new(resolver)).await
}

pub async fn start_with_resolver(
    policy: Arc<Policy>,
    resolver: Arc<dyn Resolver>,
) -> Result<RelayHandle, StartError> {
    let r = &policy.relay;
    let spool_err = |source| StartError::Spool {
        path: r.spool_dir.display().to_string(),
        source,
    };
    let spool = Arc::new(Spool::open(&r.spool_dir).map_err(spool_err)?);
    let (recovered, corrupt) = spool.recover().map_err(spool_err)?;
    for (id, reason) in &corrupt {
        tracing::error!(id = %id, reason = %reason, "corrupt spool file moved to corrupt/");
    }
    tracing::info!(
        messages = recovered.len(),
        corrupt = corrupt.len(),
        "spool recovered"
    );

    let tls = match (&r.tls_certificate, &r.tls_private_key) {
        (Some(c), Some(k)) => Some(TlsAcceptor::from(
            tls::server_config(c, k, true).map_err(StartError::Tls)?,
        )),
        _ => None,
    };

    // Client certificates are requested under TLS and judged against TrustedCaFile, the
    // webpki roots and RevocationLists.
    let client_certs = match &tls {
        Some(_) => Some(Arc::new(
            ClientCertValidator::new(r.trusted_ca_file.as_deref(), &r.revocation_lists)
                .map_err(StartError::Tls)?,
        )),
        None => None,
    };

    // Bind everything before starting anything, so a port in use fails cleanly.
    let mut plain = Vec::new();
    for a in &r.listen {
        let l = TcpListener::bind(a)
            .await
            .map_err(|source| StartError::Listen { addr: *a, source })?;
        plain.push(l);
    }
    let mut implicit = Vec::new();
    if !r.implicit_tls_listen.is_empty() && tls.is_none() {
        return Err(StartError::Tls(
            "ImplicitTlsListen needs TlsCertificate and TlsPrivateKey".into(),
        ));
    }
    for a in &r.implicit_tls_listen {
        let l = TcpListener::bind(a)
            .await
            .map_err(|source| StartError::Listen { addr: *a, source })?;
        implicit.push(l);
    }

    let srs = load_srs(&policy)?;
    let (events, trace) =
        trace_store::start(&r.data_dir, r.trace_retention_days).map_err(StartError::Trace)?;

    let (draining_tx, draining_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut deliverer = Deliverer::new(policy.clone(), resolver)
        .with_srs(srs.clone())
        .with_events(events.clone());
    if !r.external_dns_servers.is_empty() {
        let external = crate::dns::hickory::HickoryResolver::new(&r.external_dns_servers)
            .map_err(StartError::Dns)?;
        deliverer = deliverer.with_external_resolver(Arc::new(external));
    }
    let transport: Arc<dyn Transport> = Arc::new(deliverer);
    let settings = QueueSettings {
        fqdn: r.fqdn.clone(),
        retry_first: r.transient_failure_retry_interval,
        retry_max: r.max_retry_interval,
        expiration: r.message_expiration_timeout,
        delay_notice: r.delay_notification_timeout,
        max_concurrent_attempts: 100,
    };
    let (queue, queue_join) = manager::start(
        spool.clone(),
        transport,
        settings,
        recovered,
        stop_rx.clone(),
        events.clone(),
    );

    let cfg = Arc::new(SessionConfig {
        fqdn: r.fqdn.clone(),
        max_message_size: r.max_message_size,
        max_recipients: r.max_recipients_per_message,
        bare_newline: r.bare_newline_policy,
        inactivity_timeout: r.connection_inactivity_timeout,
        session_timeout: r.connection_timeout,
        min_data_rate: r.min_data_rate,
        min_data_rate_grace: r.min_data_rate_grace,
        max_protocol_errors: r.max_protocol_errors,
        tls,
        require_tls: false,
        client_certs,
        starttls: Default::default(),
        auth: None,
        forbid_unauth_pipelining: true,
    });
    let inbound = Arc::new(InboundPolicy::new(&policy));
    let backend = Arc::new(RelayBackend::new(
        policy.clone(),
        inbound.clone(),
        spool,
        queue,
        srs,
        events.clone(),
    ));
    let limits = Limits::with_rate(
        r.max_inbound_connection,
        r.max_inbound_connection_per_source,
        r.max_inbound_connection_rate_per_source,
    );
    // OnPremises servers (by IP) are exempt from the per-source connection cap and rate.
    let p = policy.clone();
    let exempt: server::ExemptFn = Arc::new(move |ip| {
        let facts = SessionFacts {
            ip,
            tls: false,
            trusted_cert_names: &[],
            cert_problem: None,
        };
        inbound
            .attribute(&facts, None)
            .is_some_and(|a| p.inbound[a.index].connector_type == ConnectorType::OnPremises)
    });

    let shared = server::Server {
        cfg,
        backend,
        limits: limits.clone(),
        exempt,
        draining: draining_rx,
        stop: stop_rx,
    };
    let mut handle = RelayHandle {
        smtp_addrs: Vec::new(),
        implicit_tls_addrs: Vec::new(),
        draining: draining_tx,
        stop: stop_tx,
        limits: limits.clone(),
        queue: queue_join,
        events,
        trace,
    };
    for (listeners, implicit_tls) in [(plain, false), (implicit, true)] {
        for l in listeners {
            let addr = l.local_addr().map_err(|source| StartError::Listen {
                addr: ([0, 0, 0, 0], 0).into(),
                source,
            })?;
            tracing::info!(%addr, implicit_tls, "listening");
            if implicit_tls {
                handle.implicit_tls_addrs.push(addr);
            } else {
                handle.smtp_addrs.push(addr);
            }
            tokio::spawn(server::serve(l, implicit_tls, shared.clone()));
        }
    }
    Ok(handle)
}

/// The SRS secret (`[Relay] SrsSecretFile`), when SRS is in use: some Outbound connector has
/// `SenderRewritingEnabled` (then the file is created if missing), or the file exists (so
/// bounces to addresses issued before SRS was switched off are still reversed). Never logged.
fn load_srs(policy: &Policy) -> Result<Option<Arc<Srs>>, StartError> {
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
