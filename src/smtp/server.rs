//! Listeners (after mini-redis's `server.rs`): a semaphore caps concurrent sessions, a
//! per-source counter caps sessions per client IP, a per-source token bucket caps the rate
//! of new connections per client IP, a watch channel signals shutdown, and accept errors
//! back off instead of spinning.
//!
//! Live reload: what a connection is served with ([`Setup`]: session config, backend,
//! exemption rule) sits in an `ArcSwap`. Each accepted connection takes the current setup
//! once and keeps it for its whole life, so a reload changes the next session and never one
//! in progress.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use super::reply::Reply;
use super::session::{Backend, Session, SessionConfig};

/// Shared by every listener of one server.
pub struct Limits {
    sessions: Arc<Semaphore>,
    max_sessions: usize,
    per_source_max: usize,
    per_source: Mutex<HashMap<IpAddr, usize>>,
    /// New connections per minute per IP; 0 = no limit.
    rate_per_minute: u32,
    rate: Mutex<RateTable>,
}

/// Per-IP token buckets for the connection rate: `rate_per_minute` tokens at most, refilled
/// continuously at `rate_per_minute` per 60 s; each accepted connection takes one. A burst
/// of a full minute's allowance is allowed, then one connection per `60 s / rate`.
/// Refused attempts take nothing (they cost the relay only the 421). A bucket that has
/// refilled completely is the same as no bucket, so sweeps drop those: memory stays
/// bounded by the IPs that connected within the last minute.
#[derive(Default)]
struct RateTable {
    buckets: HashMap<IpAddr, (f64, Instant)>,
    last_sweep: Option<Instant>,
}

impl Limits {
    pub fn new(max_sessions: usize, per_source_max: usize) -> Arc<Limits> {
        Self::with_rate(max_sessions, per_source_max, 0)
    }

    /// `new` plus a limit of `rate_per_minute` new connections per minute per client IP
    /// (0 = none).
    pub fn with_rate(
        max_sessions: usize,
        per_source_max: usize,
        rate_per_minute: u32,
    ) -> Arc<Limits> {
        Arc::new(Limits {
            sessions: Arc::new(Semaphore::new(max_sessions)),
            max_sessions,
            per_source_max,
            per_source: Mutex::new(HashMap::new()),
            rate_per_minute,
            rate: Mutex::new(RateTable::default()),
        })
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
                // EMFILE and friends: back off rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        if *draining.borrow() {
            refuse(stream, Reply::service_unavailable());
            continue;
        }
        // This connection's setup, kept until it closes (live reload: see the module doc).
        let current = setup.load_full();
        let Setup {
            cfg,
            backend,
            exempt,
        } = &*current;
        let Ok(permit) = limits.sessions.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection refused: MaxInboundConnection reached");
            let reply = Reply::service_unavailable();
            backend.connection_refused(peer, "MaxInboundConnection", &reply);
            refuse(stream, reply);
            continue;
        };
        let trusted = exempt(peer.ip());
        let source = if trusted {
            None
        } else {
            if !limits.take_rate_token(peer.ip(), Instant::now()) {
                tracing::warn!(%peer, "connection refused: MaxInboundConnectionRatePerSource reached");
                let reply = Reply::new(
                    421,
                    "4.7.0",
                    "Too many connections from your host, slow down",
                );
                backend.connection_refused(peer, "MaxInboundConnectionRatePerSource", &reply);
                refuse(stream, reply);
                continue;
            }
            match limits.enter_source(peer.ip()) {
                Some(g) => Some(g),
                None => {
                    tracing::warn!(%peer, "connection refused: MaxInboundConnectionPerSource reached");
                    let reply = Reply::new(421, "4.7.0", "Too many connections from your host");
                    backend.connection_refused(peer, "MaxInboundConnectionPerSource", &reply);
                    refuse(stream, reply);
                    continue;
                }
            }
        };
        let local = stream.local_addr().unwrap_or(peer);
        let session = Session::new(cfg.clone(), backend.clone(), peer, local, draining.clone())
            .trusted(trusted);
        tokio::spawn(async move {
            session.run(stream, implicit_tls).await;
            drop(source);
            drop(permit);
        });
    }
}

/// Answers with `reply` and closes, without blocking the accept loop.
fn refuse(mut stream: TcpStream, reply: Reply) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = stream.write_all(&reply.to_wire()).await;
            let _ = stream.shutdown().await;
        })
        .await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_rate_bucket_refills() {
        let limits = Limits::with_rate(10, 10, 3);
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
}
