//! Listeners (after mini-redis's `server.rs`): a semaphore caps concurrent sessions (a
//! second one keeps a share of them for OnPremises connector IPs), a per-source counter
//! caps sessions per client source, a per-source token bucket caps the rate of new
//! connections per source (a source is an IPv4 address or an IPv6 prefix: [`source_key`]),
//! a watch channel signals shutdown, and accept errors back off instead of spinning and are
//! logged at most once per 10 s. A connection that would leave fewer than
//! [`crate::fds::SMTP_FLOOR`] descriptors free is answered and closed at once.
//!
//! A connection from a `ProxyProtocolFrom` balancer starts with a PROXY protocol header
//! ([`super::proxy`]), read in the connection's own task; the limits and the session then
//! see the client address it carries.
//!
//! Live reload: what a connection is served with ([`Setup`]: session config, backend,
//! exemption rule) sits in an `ArcSwap`. Each accepted connection takes the current setup
//! once and keeps it for its whole life, so a reload changes the next session and never one
//! in progress.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use ipnet::IpNet;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

use super::proxy;
use super::reply::Reply;
use super::session::{Backend, Session, SessionConfig};
use crate::fds::{Floor, Reporter};

/// A session's slots: one of `MaxInboundConnection`, one of the unreserved part.
type SessionPermits = (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>);

/// The numbers behind [`Limits`].
#[derive(Debug, Clone, Copy)]
pub struct LimitSettings {
    /// `MaxInboundConnection`: sessions at once, in all.
    pub max_sessions: usize,
    /// Of `max_sessions`, the sessions only exempt clients (OnPremises connector IPs) may
    /// take: the others get at most `max_sessions - reserved_for_exempt`.
    pub reserved_for_exempt: usize,
    /// `MaxInboundConnectionPerSource`.
    pub per_source_max: usize,
    /// `MaxInboundConnectionRatePerSource`: new connections per minute per source; 0 = none.
    pub rate_per_minute: u32,
    /// `SourceIPv6PrefixLength`: an IPv6 source is its prefix of this length.
    pub ipv6_prefix: u8,
}

/// Shared by every listener of one server.
pub struct Limits {
    /// Every session takes one.
    sessions: Arc<Semaphore>,
    max_sessions: usize,
    /// Sessions of clients that are not exempt take one of these too.
    unreserved: Arc<Semaphore>,
    per_source_max: usize,
    per_source: Mutex<HashMap<IpAddr, usize>>,
    /// New connections per minute per source; 0 = no limit.
    rate_per_minute: u32,
    rate: Mutex<RateTable>,
    ipv6_prefix: u8,
    /// Descriptors SMTP leaves to the admin API, the spool, the trace and DNS.
    floor: Floor,
    accept_errors: Reporter,
    shed: Reporter,
}

/// Per-source token buckets for the connection rate: `rate_per_minute` tokens at most, refilled
/// continuously at `rate_per_minute` per 60 s; each accepted connection takes one. A burst
/// of a full minute's allowance is allowed, then one connection per `60 s / rate`.
/// Refused attempts take nothing (they cost the relay only the 421). A bucket that has
/// refilled completely is the same as no bucket, so sweeps drop those: memory stays
/// bounded by the sources that connected within the last minute.
#[derive(Default)]
struct RateTable {
    buckets: HashMap<IpAddr, (f64, Instant)>,
    last_sweep: Option<Instant>,
}

/// The source a client address counts as in the per-source limits: an IPv4 address itself
/// (also when written IPv4-mapped, `::ffff:192.0.2.1`), an IPv6 address its first
/// `ipv6_prefix` bits. One IPv6 host usually holds a whole /64 (RFC 4291 §2.5.1: 64-bit
/// interface identifiers; RFC 8981 temporary addresses change within it), so counting
/// single IPv6 addresses would not limit anyone (Postfix: `smtpd_client_ipv6_prefix_length`).
pub fn source_key(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u32::from(ipv6_prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        },
    }
}

impl Limits {
    /// `max_sessions` and a per-source cap, nothing reserved, no rate limit.
    pub fn new(max_sessions: usize, per_source_max: usize) -> Arc<Limits> {
        Self::with(LimitSettings {
            max_sessions,
            reserved_for_exempt: 0,
            per_source_max,
            rate_per_minute: 0,
            ipv6_prefix: 64,
        })
    }

    pub fn with(s: LimitSettings) -> Arc<Limits> {
        let unreserved = s.max_sessions.saturating_sub(s.reserved_for_exempt);
        Arc::new(Limits {
            sessions: Arc::new(Semaphore::new(s.max_sessions)),
            max_sessions: s.max_sessions,
            unreserved: Arc::new(Semaphore::new(unreserved)),
            per_source_max: s.per_source_max,
            per_source: Mutex::new(HashMap::new()),
            rate_per_minute: s.rate_per_minute,
            rate: Mutex::new(RateTable::default()),
            ipv6_prefix: s.ipv6_prefix,
            floor: Floor::current(),
            accept_errors: Reporter::new("SMTP accept failed"),
            shed: Reporter::new(
                "SMTP connection closed at once: the open files left are kept for the admin API, spool, trace and DNS",
            ),
        })
    }

    /// The session slots for a new client: one of `MaxInboundConnection`, and for a client
    /// that is not exempt one outside the OnPremises reserve too. `Err` names what is full.
    fn take_slots(&self, exempt: bool) -> Result<SessionPermits, &'static str> {
        let all =
            (self.sessions.clone().try_acquire_owned()).map_err(|_| "MaxInboundConnection")?;
        if exempt {
            return Ok((all, None));
        }
        let shared = (self.unreserved.clone().try_acquire_owned())
            .map_err(|_| "InboundConnectionsReservedForOnPremises")?;
        Ok((all, Some(shared)))
    }

    /// Takes one token from `ip`'s bucket; false when the bucket is empty (too fast).
    fn take_rate_token(&self, ip: IpAddr, now: Instant) -> bool {
        if self.rate_per_minute == 0 {
            return true;
        }
        let cap = f64::from(self.rate_per_minute);
        let per_sec = cap / 60.0;
        let refill = |(tokens, at): (f64, Instant)| {
            (tokens + now.duration_since(at).as_secs_f64() * per_sec).min(cap)
        };
        let mut table = self.rate.lock().unwrap_or_else(|e| e.into_inner());
        if table
            .last_sweep
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60))
        {
            table.buckets.retain(|_, b| refill(*b) < cap);
            table.last_sweep = Some(now);
        }
        let tokens = table.buckets.get(&ip).map_or(cap, |b| refill(*b));
        if tokens < 1.0 {
            return false;
        }
        table.buckets.insert(ip, (tokens - 1.0, now));
        true
    }

    /// Sessions running now (the `connector_relay_sessions_in_progress` gauge).
    pub fn in_progress(&self) -> usize {
        self.max_sessions
            .saturating_sub(self.sessions.available_permits())
    }

    /// Waits until every session has ended, or `limit` has passed. True when drained.
    pub async fn drain(&self, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.sessions.acquire_many(self.max_sessions as u32))
            .await
            .is_ok()
    }

    fn enter_source(self: &Arc<Self>, ip: IpAddr) -> Option<SourceGuard> {
        let mut map = self.per_source.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= self.per_source_max {
            return None;
        }
        *n += 1;
        Some(SourceGuard {
            limits: self.clone(),
            ip,
        })
    }
}

struct SourceGuard {
    limits: Arc<Limits>,
    ip: IpAddr,
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        let mut map = self
            .limits
            .per_source
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Decides whether a client IP is exempt from the per-source limit (OnPremises servers).
pub type ExemptFn = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

/// What a connection is served with, fixed for its whole life. Swapped whole on reload.
pub struct Setup<B: Backend> {
    pub cfg: Arc<SessionConfig>,
    pub backend: Arc<B>,
    /// Client IPs exempt from the per-source cap (OnPremises servers).
    pub exempt: ExemptFn,
    /// `ProxyProtocolFrom`: peers whose connections start with a PROXY protocol header.
    pub proxy_from: Arc<[IpNet]>,
}

/// What every listener of one server shares.
pub struct Server<B: Backend> {
    /// The setup for the next connection (see the module doc).
    pub setup: Arc<ArcSwap<Setup<B>>>,
    pub limits: Arc<Limits>,
    /// Set when the drain starts: new connections get 421, idle sessions end.
    pub draining: watch::Receiver<bool>,
    /// Set when the drain is over: listeners close.
    pub stop: watch::Receiver<bool>,
}

impl<B: Backend> Clone for Server<B> {
    fn clone(&self) -> Self {
        Server {
            setup: self.setup.clone(),
            limits: self.limits.clone(),
            draining: self.draining.clone(),
            stop: self.stop.clone(),
        }
    }
}

/// Accepts connections on `listener` until `stop` is signalled. While `draining` is set,
/// every new connection is answered `421 4.3.2` and closed (the SIGTERM drain: sessions
/// already running finish their transactions meanwhile).
pub async fn serve<B: Backend>(listener: TcpListener, implicit_tls: bool, server: Server<B>) {
    let Server {
        setup,
        limits,
        draining,
        mut stop,
    } = server;
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => {
                backoff = Duration::from_millis(10);
                x
            }
            Err(e) => {
                // EMFILE and friends: back off rather than spin, log once per period.
                metrics::counter!("connector_relay_accept_errors_total").increment(1);
                limits.accept_errors.report(&e);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        if limits.floor.short(stream.as_raw_fd() as u64) {
            metrics::counter!("connector_relay_connections_shed_total").increment(1);
            limits.shed.report(&peer);
            refuse(stream, Reply::service_unavailable());
            continue;
        }
        if *draining.borrow() {
            refuse(stream, Reply::service_unavailable());
            continue;
        }
        // This connection's setup, kept until it closes (live reload: see the module doc).
        let current = setup.load_full();
        let opening = Opening {
            limits: limits.clone(),
            draining: draining.clone(),
            implicit_tls,
        };
        if from_proxy(&current.proxy_from, peer.ip()) {
            // The header is read in the connection's own task: a slow balancer must not
            // hold the accept loop up.
            tokio::spawn(async move { opening.via_proxy(&current, stream, peer).await });
        } else if let Some(session) = opening.admit(&current, stream, peer, None) {
            tokio::spawn(session);
        }
    }
}

/// Is `ip` one of `ProxyProtocolFrom`'s balancers? An IPv4-mapped IPv6 peer (a dual-stack
/// listener) counts as its IPv4 address.
pub fn from_proxy(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    nets.iter().any(|n| n.contains(&ip))
}

/// What starting a session from an accepted connection needs besides its setup.
struct Opening {
    limits: Arc<Limits>,
    draining: watch::Receiver<bool>,
    implicit_tls: bool,
}

impl Opening {
    /// A connection from a balancer of `ProxyProtocolFrom`: its PROXY protocol header is
    /// required, and the client address it carries is the session's from then on (limits,
    /// attribution, Received:, trace). Without a usable header the connection is answered
    /// `421 4.7.0` and closed, counted and logged (see [`proxy_refused`]).
    async fn via_proxy<B: Backend>(
        self,
        setup: &Setup<B>,
        mut stream: TcpStream,
        peer: SocketAddr,
    ) {
        match proxy::read_header(&mut stream).await {
            Ok(header) => {
                let client = header.source.unwrap_or(peer);
                if *self.draining.borrow() {
                    refuse(stream, Reply::service_unavailable());
                } else if let Some(session) = self.admit(setup, stream, client, Some(peer)) {
                    session.await;
                }
            }
            Err(e) => proxy_refused(setup, stream, peer, &e),
        }
    }

    /// Passes `client` through the connection limits and builds its session, or refuses
    /// the connection (`None`). `proxy`: the balancer the client came through.
    fn admit<B: Backend>(
        &self,
        setup: &Setup<B>,
        stream: TcpStream,
        client: SocketAddr,
        proxy: Option<SocketAddr>,
    ) -> Option<impl Future<Output = ()> + Send + 'static> {
        let Setup {
            cfg,
            backend,
            exempt,
            ..
        } = setup;
        let trusted = exempt(client.ip());
        let (permits, source) = match admit(&self.limits, trusted, client.ip()) {
            Ok(x) => x,
            Err((rule, reply)) => {
                let via = proxy.map(|p| p.to_string()).unwrap_or_default();
                tracing::warn!(peer = %client, via, "connection refused: {rule} reached");
                backend.connection_refused(client, rule, &reply);
                refuse(stream, reply);
                return None;
            }
        };
        let local = stream.local_addr().unwrap_or(client);
        let session = Session::new(
            cfg.clone(),
            backend.clone(),
            client,
            local,
            self.draining.clone(),
        )
        .trusted(trusted)
        .via_proxy(proxy);
        let implicit_tls = self.implicit_tls;
        Some(async move {
            session.run(stream, implicit_tls).await;
            drop(source);
            drop(permits);
        })
    }
}

/// A balancer's connection without a usable header: logged with the reason, counted in
/// `connector_relay_proxy_header_errors_total{reason}`, recorded in the trace (rule
/// `ProxyProtocol`), answered `421 4.7.0` and closed. Before the banner nothing else can
/// be said; the 421 reaches whoever reads the balancer's logs (or the client, through it)
/// and says "try later", where a bare close says nothing.
fn proxy_refused<B: Backend>(
    setup: &Setup<B>,
    stream: TcpStream,
    peer: SocketAddr,
    e: &proxy::ReadError,
) {
    let reason = e.reason();
    metrics::counter!("connector_relay_proxy_header_errors_total", "reason" => reason).increment(1);
    tracing::warn!(%peer, reason, "PROXY protocol header refused: {}", e.describe());
    let reply = Reply::new(
        421,
        "4.7.0",
        "PROXY protocol header missing or malformed, closing connection",
    );
    setup
        .backend
        .connection_refused(peer, "ProxyProtocol", &reply);
    refuse(stream, reply);
}

/// The limits a new connection from `ip` must pass, in order: the session slots
/// (`MaxInboundConnection`, with the OnPremises reserve), then for clients that are not
/// exempt the rate and the count per source. `Err`: the rule that refused it and the reply.
fn admit(
    limits: &Arc<Limits>,
    exempt: bool,
    ip: IpAddr,
) -> Result<(SessionPermits, Option<SourceGuard>), (&'static str, Reply)> {
    let permits = limits
        .take_slots(exempt)
        .map_err(|rule| (rule, Reply::service_unavailable()))?;
    if exempt {
        return Ok((permits, None));
    }
    let source = source_key(ip, limits.ipv6_prefix);
    if !limits.take_rate_token(source, Instant::now()) {
        let reply = Reply::new(
            421,
            "4.7.0",
            "Too many connections from your host, slow down",
        );
        return Err(("MaxInboundConnectionRatePerSource", reply));
    }
    match limits.enter_source(source) {
        Some(guard) => Ok((permits, Some(guard))),
        None => {
            let reply = Reply::new(421, "4.7.0", "Too many connections from your host");
            Err(("MaxInboundConnectionPerSource", reply))
        }
    }
}

/// Answers with `reply` and closes at once. The reply is one short write into the empty
/// send buffer of a new socket, so it never blocks and no descriptor outlives the call
/// (a flood of refused connections must not use up the descriptors it is refused to save).
fn refuse(stream: TcpStream, reply: Reply) {
    if let Ok(mut std_stream) = stream.into_std() {
        let _ = std::io::Write::write(&mut std_stream, &reply.to_wire());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_rate_bucket_refills() {
        let limits = Limits::with(LimitSettings {
            max_sessions: 10,
            reserved_for_exempt: 0,
            per_source_max: 10,
            rate_per_minute: 3,
            ipv6_prefix: 64,
        });
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limits.take_rate_token(ip, t0));
        }
        assert!(!limits.take_rate_token(ip, t0), "4th within the minute");
        assert!(limits.take_rate_token(other, t0), "other IPs unaffected");
        // 3 per minute: one token back after 20 s.
        assert!(!limits.take_rate_token(ip, t0 + Duration::from_secs(19)));
        assert!(limits.take_rate_token(ip, t0 + Duration::from_secs(21)));
        assert!(!limits.take_rate_token(ip, t0 + Duration::from_secs(22)));
        // A sweep a minute later forgets full buckets only.
        assert!(limits.take_rate_token(other, t0 + Duration::from_secs(200)));
        let table = limits.rate.lock().unwrap();
        assert_eq!(table.buckets.len(), 1, "only the bucket just used is kept");
        drop(table);
        assert!(Limits::new(1, 1).take_rate_token(ip, t0), "0 = no limit");
    }

    #[test]
    fn ipv6_sources_are_prefixes() {
        let key = |s: &str, p| source_key(s.parse().unwrap(), p).to_string();
        assert_eq!(key("2001:db8:1:2:aaaa::1", 64), "2001:db8:1:2::");
        assert_eq!(
            key("2001:db8:1:2:ffff:ffff:ffff:ffff", 64),
            "2001:db8:1:2::"
        );
        assert_eq!(key("2001:db8:1:3::1", 64), "2001:db8:1:3::");
        assert_eq!(key("2001:db8:1:2:aaaa::1", 48), "2001:db8:1::");
        assert_eq!(key("2001:db8:1:2:aaaa::1", 128), "2001:db8:1:2:aaaa::1");
        assert_eq!(key("2001:db8::1", 32), "2001:db8::");
        assert_eq!(key("192.0.2.7", 64), "192.0.2.7", "IPv4 as it is");
        assert_eq!(
            key("::ffff:192.0.2.7", 64),
            "192.0.2.7",
            "IPv4-mapped is IPv4"
        );
    }

    #[test]
    fn per_source_cap_counts_a_whole_ipv6_prefix() {
        let limits = Limits::with(LimitSettings {
            max_sessions: 100,
            reserved_for_exempt: 0,
            per_source_max: 2,
            rate_per_minute: 0,
            ipv6_prefix: 64,
        });
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let a = admit(&limits, false, ip("2001:db8:0:1::1")).unwrap();
        let b = admit(&limits, false, ip("2001:db8:0:1::2")).unwrap();
        let third = admit(&limits, false, ip("2001:db8:0:1:ffff::3"));
        assert_eq!(
            third.err().map(|e| e.0),
            Some("MaxInboundConnectionPerSource")
        );
        assert!(
            admit(&limits, false, ip("2001:db8:0:2::1")).is_ok(),
            "next /64"
        );
        drop((a, b));
        assert!(
            admit(&limits, false, ip("2001:db8:0:1::9")).is_ok(),
            "freed"
        );
    }

    #[test]
    fn reserve_is_kept_for_exempt_clients() {
        let limits = Limits::with(LimitSettings {
            max_sessions: 10,
            reserved_for_exempt: 3,
            per_source_max: 100,
            rate_per_minute: 0,
            ipv6_prefix: 64,
        });
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let held: Vec<_> = (0..7).map(|_| admit(&limits, false, ip).unwrap()).collect();
        let refused = admit(&limits, false, ip).err().map(|e| e.0);
        assert_eq!(refused, Some("InboundConnectionsReservedForOnPremises"));
        let trusted: Vec<_> = (0..3).map(|_| admit(&limits, true, ip).unwrap()).collect();
        let full = admit(&limits, true, ip).err().map(|e| e.0);
        assert_eq!(
            full,
            Some("MaxInboundConnection"),
            "the reserve is all there is"
        );
        assert_eq!(limits.in_progress(), 10);
        drop((held, trusted));
        assert_eq!(limits.in_progress(), 0);
    }
}
