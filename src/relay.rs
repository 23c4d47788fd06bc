//! Wires the relay together: spool recovery, queue manager, delivery engine, listeners,
//! and the drain on shutdown. Used by `connector-relay run` and by in-process tests.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::delivery::Deliverer;
use crate::dns::Resolver;
use crate::message::received::{ReceivedFields, received_header};
use crate::policy::{ConnectorType, InboundConnector, Policy};
use crate::queue::manager::{self, QueueHandle, QueueSettings, Transport};
use crate::queue::spool::{Envelope, Spool, unix_now};
use crate::smtp::command::Address;
use crate::smtp::server::{self, Limits};
use crate::smtp::session::{Backend, SessionConfig, SessionInfo, Transaction};
use crate::smtp::{Reply, tls};

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
            tls::server_config(c, k).map_err(StartError::Tls)?,
        )),
        _ => None,
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

    let (draining_tx, draining_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let transport: Arc<dyn Transport> = Arc::new(Deliverer::new(policy.clone(), resolver));
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
    );

    let cfg = Arc::new(SessionConfig {
        fqdn: r.fqdn.clone(),
        max_message_size: r.max_message_size,
        max_recipients: r.max_recipients_per_message,
        bare_newline: r.bare_newline_policy,
        inactivity_timeout: r.connection_inactivity_timeout,
        session_timeout: r.connection_timeout,
        max_protocol_errors: r.max_protocol_errors,
        tls,
        require_tls: false,
    });
    let backend = Arc::new(RelayBackend {
        policy: policy.clone(),
        spool,
        queue,
    });
    let limits = Limits::new(
        r.max_inbound_connection,
        r.max_inbound_connection_per_source,
    );
    let p = policy.clone();
    let exempt: server::ExemptFn = Arc::new(move |ip| on_premises_by_ip(&p, ip).is_some());

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

/// The first enabled OnPremises inbound connector whose `SenderIPAddresses` holds `ip`.
/// (Full attribution — certificates, sender domains, restrictions — is the inbound
/// connectors' work; this is the anti-relay core.)
fn on_premises_by_ip(policy: &Policy, ip: IpAddr) -> Option<&InboundConnector> {
    let ip = canonical_ip(ip);
    policy.inbound.iter().find(|c| {
        c.enabled
            && c.connector_type == ConnectorType::OnPremises
            && c.sender_ip_addresses.iter().any(|n| n.contains(&ip))
    })
}

/// An IPv4 client on a dual-stack socket shows up as `::ffff:a.b.c.d`.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Is `domain` one of the organization's accepted domains?
pub fn is_accepted(policy: &Policy, domain: &str) -> bool {
    // Address literals are never accepted domains: mail to [IP] is relaying.
    !domain.starts_with('[')
        && policy
            .relay
            .accepted_domains
            .iter()
            .any(|p| p.matches(domain))
}

struct RelayBackend {
    policy: Arc<Policy>,
    spool: Arc<Spool>,
    queue: QueueHandle,
}

impl Backend for RelayBackend {
    fn rcpt(&self, s: &SessionInfo, _tx: &Transaction, to: &Address) -> Result<(), Reply> {
        let domain = to.domain_lc();
        if domain == self.policy.relay.fqdn.to_ascii_lowercase()
            && to.local.eq_ignore_ascii_case("postmaster")
        {
            return Ok(());
        }
        if is_accepted(&self.policy, &domain) {
            return Ok(());
        }
        // Relaying: only for clients of an OnPremises connector. Never an open relay.
        if on_premises_by_ip(&self.policy, s.peer.ip()).is_some() {
            return Ok(());
        }
        tracing::info!(peer = %s.peer, rcpt = %to, rule = "relay without OnPremises attribution", "recipient rejected");
        Err(Reply::relay_denied())
    }

    async fn data(&self, s: &SessionInfo, tx: &Transaction, message: Vec<u8>) -> Reply {
        let id = self.spool.new_id();
        let now = unix_now();
        let connector = on_premises_by_ip(&self.policy, s.peer.ip()).map(|c| c.name.clone());
        let single = (tx.recipients.len() == 1).then(|| tx.recipients[0].to_string());
        let header = received_header(&ReceivedFields {
            by: &self.policy.relay.fqdn,
            session: s,
            inbound_connector: connector.as_deref(),
            queue_id: &id,
            single_recipient: single.as_deref(),
            unix_time: now,
        });
        let mut data = Vec::with_capacity(header.len() + message.len());
        data.extend_from_slice(header.as_bytes());
        data.extend_from_slice(&message);
        drop(message);
        let env = Envelope {
            mail_from: tx
                .mail_from
                .as_ref()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            recipients: tx.recipients.iter().map(|a| a.to_string()).collect(),
            arrived: now,
            from_outside_org: connector.is_none(),
            inbound_connector: connector,
            smtputf8: tx.params.smtputf8,
        };
        let spool = self.spool.clone();
        let (id2, env2) = (id.clone(), env.clone());
        match tokio::task::spawn_blocking(move || spool.store(&id2, &env2, &data)).await {
            Ok(Ok(())) => {
                tracing::info!(id = %id, peer = %s.peer, from = %env.mail_from, rcpts = env.recipients.len(),
                    inbound_connector = ?env.inbound_connector, "message accepted");
                self.queue.submit(id.clone(), env);
                Reply::ok(format!("Ok: queued as {id}"))
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "spool write failed; message refused with a temporary error");
                // ENOSPC / EDQUOT: 452 4.3.1 (RFC 3463); anything else: 451 4.3.0.
                if matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
                    Reply::insufficient_storage()
                } else {
                    Reply::local_error()
                }
            }
            Err(_) => Reply::local_error(),
        }
    }
}
