//! Wires the relay together: spool recovery, queue manager, delivery engine, listeners,
//! the admin API, live reload, and the drain on shutdown. Used by `connector-relay run` and
//! by in-process tests.

mod backend;
pub mod certs;
mod live;
pub mod pressure;
pub mod reload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::dns::Resolver;
use crate::policy::Policy;
use crate::queue::manager::{self, Transport};
use crate::queue::spool::Spool;
use crate::smtp::server::{self, Limits};
use crate::trace::{Events, store as trace_store};
use backend::RelayBackend;
use live::{Shared, SwapTransport};
pub use reload::{Control, EditOutcome, LastReload, Live, ReloadError, Reloaded, Trigger};

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
    #[error("TLS-RPT: {0}")]
    TlsRpt(String),
    #[error("admin token file {path}: {source}")]
    AdminToken {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot read the config file {path}: {source}")]
    Config {
        path: String,
        source: std::io::Error,
    },
}

/// A running relay.
pub struct RelayHandle {
    /// Bound addresses of `Listen` (in order), then of `ImplicitTlsListen`.
    pub smtp_addrs: Vec<SocketAddr>,
    pub implicit_tls_addrs: Vec<SocketAddr>,
    /// Bound address of `AdminListen` (the admin API and `/metrics`).
    pub admin_addr: Option<SocketAddr>,
    control: Arc<Control>,
    draining: watch::Sender<bool>,
    stop: watch::Sender<bool>,
    limits: Arc<Limits>,
    queue: tokio::task::JoinHandle<()>,
    spool: Arc<Spool>,
    /// The message trace: hand a clone to whatever else should record events.
    pub events: Events,
    trace: trace_store::Writer,
    admin: Option<tokio::task::JoinHandle<()>>,
    /// `SpoolDir/lock`, released last (after the spool's checkpoint).
    _spool_lock: crate::queue::adopt::SpoolLock,
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
        // Queued messages leave the write-ahead log for plain files in `msg/`.
        let spool = self.spool.clone();
        let checkpoint = tokio::task::spawn_blocking(move || spool.checkpoint())
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(e) = checkpoint {
            tracing::error!(error = %e, "spool checkpoint at stop failed; the next start replays the log");
        }
        if let Some(admin) = self.admin {
            // Open keep-alive connections must not hold the shutdown up.
            let _ = tokio::time::timeout(Duration::from_secs(5), admin).await;
        }
        // Last: the trace rows of everything above are written before the relay stops.
        self.trace.finish().await;
    }

    /// Re-reads the config file and swaps the new configuration in (see [`reload`]). A
    /// config that fails validation is refused (logged with its `file:line` errors, and
    /// returned) and the running one stays.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        self.reload_for(Trigger::Request).await
    }

    /// [`RelayHandle::reload`], recording what triggered it (SIGHUP in `main`).
    pub async fn reload_for(&self, trigger: Trigger) -> Result<Reloaded, ReloadError> {
        let control = self.control.clone();
        tokio::task::spawn_blocking(move || control.reload(trigger))
            .await
            .unwrap_or_else(|e| Err(ReloadError::Io(e.to_string())))
    }

    /// The configuration in effect and the ways to change it (what the admin API uses).
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// The policy in effect now.
    pub fn policy(&self) -> Arc<Policy> {
        self.control.policy()
    }
}

/// How to start the relay beyond its policy.
#[derive(Clone)]
pub struct StartOptions {
    /// The config file the policy was loaded from. With it the relay reloads (SIGHUP,
    /// `RelayHandle::reload`, a change of the file or of a certificate file it names) and
    /// the admin API can change connectors. Without it the policy is fixed.
    pub config_path: Option<PathBuf>,
    /// Resolves next hops; `None`: hickory on `[Relay] DnsServers` (or the system's).
    pub resolver: Option<Arc<dyn Resolver>>,
    /// How often the config and certificate files are checked for changes.
    pub watch_interval: Duration,
    /// This node's name in the trace rows it writes (`run --node`); `None`: the host name
    /// (not `Fqdn`: the nodes of a fleet share one config file, so one `Fqdn`).
    pub node: Option<String>,
    /// Trace events buffered for the trace writer (what a store outage can absorb before
    /// rows are dropped and counted).
    pub trace_buffer: usize,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            config_path: None,
            resolver: None,
            watch_interval: Duration::from_secs(2),
            node: None,
            trace_buffer: crate::trace::CHANNEL_CAPACITY,
        }
    }
}

/// Pending connections an SMTP listener holds before the kernel drops SYNs. The standard
/// library's 128 overflows under a burst of connections (the benchmark's 500 at once cost
/// 1–3 s SYN retries); the kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

/// An SMTP listener on `addr` (SO_REUSEADDR, as the standard library sets it, so a restart
/// does not wait for TIME_WAIT) with [`LISTEN_BACKLOG`].
fn smtp_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Removes the temporary files a config write killed half-way left beside the config
/// file (the write itself is atomic, so the config is whole; only litter remains).
fn remove_config_leftovers(path: &std::path::Path) {
    for file in crate::config::edit::remove_leftover_temp_files(path) {
        tracing::info!(file = %file.display(), "removed a temporary file left by an interrupted config write");
    }
}

/// Starts the relay with the system (or configured) DNS resolver.
pub async fn start(policy: Arc<Policy>) -> Result<RelayHandle, StartError> {
    start_with_options(policy, StartOptions::default()).await
}

/// Starts the relay on a fixed policy (no config file: no reload) with `resolver`.
/// The TLS-RPT reporting task of this relay (`TlsRptEnabled`).
fn tlsrpt_reporter(
    r: &crate::policy::RelaySettings,
    store: Arc<crate::tlsrpt::store::Store>,
    shared: &Shared,
) -> Result<crate::tlsrpt::reporter::Reporter, StartError> {
    use crate::tlsrpt::{dkim::Signer, reporter};
    let t = &r.tlsrpt;
    let signer = match &t.dkim_key_file {
        Some(path) => {
            Some(Signer::load(path, &t.dkim_domain, &t.dkim_selector).map_err(StartError::TlsRpt)?)
        }
        None => None,
    };
    Ok(reporter::Reporter {
        store,
        settings: t.clone(),
        fqdn: r.fqdn.clone(),
        resolver: shared.resolver.clone(),
        spool: shared.spool.clone(),
        queue: shared.queue.clone(),
        https: reporter::https_config(r.trusted_ca_file.as_deref()).map_err(StartError::TlsRpt)?,
        signer,
    })
}

pub async fn start_with_resolver(
    policy: Arc<Policy>,
    resolver: Arc<dyn Resolver>,
) -> Result<RelayHandle, StartError> {
    let options = StartOptions {
        resolver: Some(resolver),
        ..StartOptions::default()
    };
    start_with_options(policy, options).await
}

/// The resolver of `DnsServers`, knowing DNSSEC status as `DnssecValidation` says. In
/// `Resolver` mode the AD bit is only as trustworthy as the path to the resolver: a
/// warning names servers off loopback, and a probe at the first secured lookup (Postfix's
/// `dnssec_probe`, `HickoryResolver::probe_once`) warns when the resolver never sets AD,
/// i.e. DANE can never apply.
fn main_resolver(r: &crate::policy::RelaySettings) -> Result<Arc<dyn Resolver>, StartError> {
    let resolver = Arc::new(
        crate::dns::hickory::HickoryResolver::with_dnssec(
            &r.dns_servers,
            crate::dns::hickory::DEFAULT_TIMEOUT,
            r.dnssec_validation,
            r.dnssec_trust_anchor_file.as_deref(),
        )
        .map_err(StartError::Dns)?,
    );
    let remote: Vec<String> = resolver
        .ad_servers()
        .iter()
        .filter(|a| !a.ip().is_loopback())
        .map(|a| a.to_string())
        .collect();
    if !remote.is_empty() {
        tracing::warn!(servers = %remote.join(", "), "DnssecValidation = \"Resolver\" trusts the AD bit of DNS servers that are not on loopback; DANE is only as safe as the path to them");
    }
    Ok(resolver)
}

/// Starts the relay. `policy` must have been loaded from `options.config_path` when that is
/// given (`connector-relay run` loads it first to report errors and warnings).
pub async fn start_with_options(
    policy: Arc<Policy>,
    options: StartOptions,
) -> Result<RelayHandle, StartError> {
    crate::metrics::install();
    let r = &policy.relay;
    let resolver = match options.resolver {
        Some(r) => r,
        None => main_resolver(r)?,
    };
    // The text behind the policy (the admin API lists connectors as written), fingerprinted
    // before it is read so that a change made meanwhile is picked up by the first poll.
    let (config_stamp, text) = match &options.config_path {
        Some(path) => {
            remove_config_leftovers(path);
            let stamp = reload::stamp(path);
            let text = std::fs::read_to_string(path).map_err(|source| StartError::Config {
                path: path.display().to_string(),
                source,
            })?;
            (stamp, Some(Arc::<str>::from(text)))
        }
        None => (None, None),
    };

    let spool_err = |source| StartError::Spool {
        path: r.spool_dir.display().to_string(),
        source,
    };
    // One relay per spool: held until this relay's handle is gone (or the process).
    let spool_lock = crate::queue::adopt::SpoolLock::acquire(&r.spool_dir).map_err(spool_err)?;
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

    let tls = live::inbound_tls(r)?;

    // Bind everything before starting anything, so a port in use fails cleanly.
    let mut plain = Vec::new();
    for a in &r.listen {
        let l = smtp_listener(*a).map_err(|source| StartError::Listen { addr: *a, source })?;
        plain.push(l);
    }
    let mut implicit = Vec::new();
    if !r.implicit_tls_listen.is_empty() && tls.acceptor.is_none() {
        return Err(StartError::Tls(
            "ImplicitTlsListen needs TlsCertificate and TlsPrivateKey".into(),
        ));
    }
    for a in &r.implicit_tls_listen {
        let l = smtp_listener(*a).map_err(|source| StartError::Listen { addr: *a, source })?;
        implicit.push(l);
    }
    let admin_listener =
        TcpListener::bind(r.admin_listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: r.admin_listen,
                source,
            })?;
    let admin_token =
        crate::admin::Token::load_or_create(&r.admin_token_file).map_err(|source| {
            StartError::AdminToken {
                path: r.admin_token_file.display().to_string(),
                source,
            }
        })?;

    let srs = live::load_srs(&policy)?;
    let node = options
        .node
        .clone()
        .unwrap_or_else(crate::config::machine_host_name);
    tracing::info!(node = %node, store = %r.trace_store.describe(), "message trace");
    let (events, trace) = trace_store::start(
        &crate::trace::backend::Location::of(r),
        trace_store::WriterOptions {
            retention_days: r.trace_retention_days,
            node: node.clone(),
            buffer: options.trace_buffer,
        },
    )
    .map_err(StartError::Trace)?;

    let (draining_tx, draining_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let tlsrpt = match r.tlsrpt.enabled {
        true => {
            let store = Arc::new(
                crate::tlsrpt::store::Store::open(&r.data_dir).map_err(StartError::TlsRpt)?,
            );
            Some((
                crate::tlsrpt::Recorder::start(store.clone(), r.tlsrpt.report_interval),
                store,
            ))
        }
        false => None,
    };
    let recorder = tlsrpt.as_ref().map(|(rec, _)| rec.clone());
    let transport = Arc::new(SwapTransport::new(live::deliverer(
        &policy,
        &resolver,
        srs.clone(),
        &events,
        recorder.clone(),
    )?));
    let (queue, queue_join) = manager::start(
        spool.clone(),
        transport.clone() as Arc<dyn Transport>,
        live::queue_settings(r),
        recovered,
        stop_rx.clone(),
        events.clone(),
    );
    let shared = Shared {
        spool: spool.clone(),
        queue: queue.clone(),
        resolver,
        events: events.clone(),
        pregreet_passes: Default::default(),
        pressure: Default::default(),
        tlsrpt: recorder,
    };
    if let Some((_, store)) = tlsrpt {
        let reporter = tlsrpt_reporter(r, store, &shared)?;
        tokio::spawn(reporter.run(stop_rx.clone()));
    }
    let setup = Arc::new(ArcSwap::from_pointee(live::setup(
        &policy, tls, &shared, srs,
    )));
    let limits = Limits::with(server::LimitSettings {
        max_sessions: r.max_inbound_connection,
        reserved_for_exempt: r.inbound_connections_reserved_for_on_premises,
        per_source_max: r.max_inbound_connection_per_source,
        rate_per_minute: r.max_inbound_connection_rate_per_source,
        ipv6_prefix: r.source_ipv6_prefix_length,
    });

    let certificates = certs::scan(r);
    certs::warn_expiring(&certificates, "at start-up");
    certs::set_gauges(&certificates);
    let initial = Live {
        policy: policy.clone(),
        text,
        generation: 1,
        warnings: Vec::new(),
        certificates,
    };
    let control = Arc::new(Control::new(
        options.config_path.clone(),
        initial,
        setup.clone(),
        transport,
        shared,
        config_stamp,
    ));

    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| StartError::Listen {
            addr: r.admin_listen,
            source,
        })?;
    let admin = crate::admin::start(
        admin_listener,
        crate::admin::AdminState::new(
            control.clone(),
            queue,
            limits.clone(),
            admin_token,
            admin_addr,
        ),
        stop_rx.clone(),
    );

    tokio::spawn(pressure::monitor(
        control.pressure().clone(),
        control.clone(),
        control.queue().clone(),
        stop_rx.clone(),
    ));

    if options.config_path.is_some() {
        tokio::spawn(watch_files(
            control.clone(),
            options.watch_interval,
            stop_rx.clone(),
        ));
    }

    let shared = server::Server {
        setup,
        limits: limits.clone(),
        draining: draining_rx,
        stop: stop_rx,
    };
    let mut handle = RelayHandle {
        smtp_addrs: Vec::new(),
        implicit_tls_addrs: Vec::new(),
        admin_addr: Some(admin_addr),
        control,
        draining: draining_tx,
        stop: stop_tx,
        limits: limits.clone(),
        queue: queue_join,
        spool,
        events,
        trace,
        admin: Some(admin),
        _spool_lock: spool_lock,
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

/// The poll of the config and certificate files (see [`reload`]).
async fn watch_files(control: Arc<Control>, every: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        let c = control.clone();
        let _ = tokio::task::spawn_blocking(move || c.poll()).await;
    }
}
