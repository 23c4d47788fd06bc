//! The admin listener's connections, served with hyper directly (`axum::serve` has no
//! connection cap and no timeouts): at most [`MAX_CONNECTIONS`] at once, each closed when
//! its request header does not arrive within [`HEADER_READ_TIMEOUT`] — hyper runs that
//! timer from the accept and again from the end of every response, so it is also the idle
//! keep-alive timeout ([`IDLE_TIMEOUT`]).
//!
//! Past the cap, the oldest connection without a request in progress is closed to make
//! room (a client that only opens connections cannot lock the API out, and an idle
//! keep-alive connection is the cheapest to lose: HTTP clients reopen it, RFC 9112 §9.3.1).
//! When every connection has a request in progress the new one is closed at once. Either
//! way at most [`DESCRIPTORS`] are open.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

use crate::fds::Reporter;

/// Admin connections open at once (browsers open 6 per host; scrapers and scripts one).
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client has to send a request's header (Apache's `RequestReadTimeout`
/// default allows 20-40 s; the admin API is local and its requests are small).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a keep-alive connection may wait for its next request: hyper's header timer
/// (see the module doc), so the same value.
pub const IDLE_TIMEOUT: Duration = HEADER_READ_TIMEOUT;
/// Descriptors the admin API can hold: the cap plus as many connections being closed.
pub const DESCRIPTORS: usize = 2 * MAX_CONNECTIONS;

/// One open connection.
struct Conn {
    /// Requests being answered on it now.
    busy: AtomicUsize,
    /// Asked to close (it still counts against [`DESCRIPTORS`] until it has).
    closing: AtomicBool,
    close: Notify,
}

/// The open connections, oldest first.
#[derive(Default)]
struct Registry {
    next_id: u64,
    conns: BTreeMap<u64, Arc<Conn>>,
}

impl Registry {
    /// Makes room for one more connection; `None` when there is none to make.
    fn admit(&mut self) -> Option<(u64, Arc<Conn>)> {
        let open = self
            .conns
            .values()
            .filter(|c| !c.closing.load(Ordering::Relaxed))
            .count();
        if self.conns.len() >= DESCRIPTORS {
            return None;
        }
        if open >= MAX_CONNECTIONS {
            let idle = self.conns.values().find(|c| {
                !c.closing.load(Ordering::Relaxed) && c.busy.load(Ordering::Relaxed) == 0
            })?;
            idle.closing.store(true, Ordering::Relaxed);
            idle.close.notify_one();
        }
        let conn = Arc::new(Conn {
            busy: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            close: Notify::new(),
        });
        self.next_id += 1;
        self.conns.insert(self.next_id, conn.clone());
        Some((self.next_id, conn))
    }
}

static ACCEPT_ERRORS: Reporter = Reporter::new("admin API accept failed");
static REFUSED: Reporter =
    Reporter::new("admin API connection closed: every connection has a request in progress");

/// Accepts on `listener` until `stop` is set; then open connections finish their request.
pub async fn serve(listener: TcpListener, app: Router, mut stop: watch::Receiver<bool>) {
    let registry = Arc::new(Mutex::new(Registry::default()));
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                ACCEPT_ERRORS.report(&e);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(10);
        let admitted = registry.lock().unwrap_or_else(|e| e.into_inner()).admit();
        let Some((id, conn)) = admitted else {
            REFUSED.report(&"closed");
            continue;
        };
        let registry = registry.clone();
        let (app, stop) = (app.clone(), stop.clone());
        tokio::spawn(async move {
            serve_one(stream, app, &conn, stop).await;
            registry
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .conns
                .remove(&id);
        });
    }
}

/// One connection, HTTP/1.1 with the timeouts of the module doc, until it closes, is
/// asked to make room, or the relay stops.
async fn serve_one(
    stream: TcpStream,
    app: Router,
    conn: &Arc<Conn>,
    mut stop: watch::Receiver<bool>,
) {
    let tower = TowerToHyperService::new(app);
    let counted = conn.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let busy = Busy::enter(&counted);
        let response = hyper::service::Service::call(&tower, req);
        async move {
            let r = response.await;
            drop(busy);
            r
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    let served = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(served);
    let mut closing = false;
    loop {
        tokio::select! {
            _ = served.as_mut() => return,
            _ = conn.close.notified(), if !closing => closing = true,
            _ = stop.wait_for(|s| *s), if !closing => closing = true,
        }
        // Closes at once when idle, else after the response in progress.
        served.as_mut().graceful_shutdown();
    }
}

/// A request in progress on a connection (it is not closed to make room meanwhile).
struct Busy(Arc<Conn>);

impl Busy {
    fn enter(conn: &Arc<Conn>) -> Busy {
        conn.busy.fetch_add(1, Ordering::Relaxed);
        Busy(conn.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_cap_the_oldest_idle_connection_makes_room() {
        let mut r = Registry::default();
        let conns: Vec<_> = (0..MAX_CONNECTIONS).map(|_| r.admit().unwrap()).collect();
        conns[0].1.busy.store(1, Ordering::Relaxed);
        let (_, newest) = r.admit().unwrap();
        assert!(!conns[0].1.closing.load(Ordering::Relaxed), "busy: kept");
        assert!(
            conns[1].1.closing.load(Ordering::Relaxed),
            "oldest idle closed"
        );
        assert!(!newest.closing.load(Ordering::Relaxed));
        for c in &conns {
            c.1.busy.store(1, Ordering::Relaxed);
        }
        newest.busy.store(1, Ordering::Relaxed);
        assert!(r.admit().is_none(), "all busy: the new one is refused");
    }
}
