//! Connection reuse (`SmtpMaxMessagesPerConnection`): sessions kept open after a successful
//! transaction, per next hop, for the next message to the same hop.
//!
//! A next hop is the route (with its TLS, authentication and every other session setting),
//! the recipient domain when the route depends on it, the host name and the address. A
//! kept session is used by one delivery at a time (taken out of the pool, put back after),
//! RSET before each new message, and QUIT once it carried the maximum number of messages.
//! Idle sessions are closed after [`IDLE_LIMIT`] (or the connector's inactivity timeout,
//! if shorter) by a reaper task.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::client::Established;

/// How long a kept connection may stay idle.
pub const IDLE_LIMIT: Duration = Duration::from_secs(5);

/// Identifies a next hop (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HopKey {
    /// The delivery group (route + domain when it matters), opaque here.
    pub group: String,
    pub host: String,
    pub addr: SocketAddr,
}

struct Idle {
    session: Established,
    until: Instant,
}

type Map = HashMap<HopKey, Vec<Idle>>;

/// The pool, shared by the deliveries of one engine.
pub struct Pool {
    idle: Arc<Mutex<Map>>,
}

impl Pool {
    /// A pool with its reaper (when called inside a tokio runtime).
    pub fn new() -> Pool {
        let idle: Arc<Mutex<Map>> = Arc::default();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(reap(Arc::downgrade(&idle)));
        }
        Pool { idle }
    }

    /// A kept session for this hop, if one is still fresh.
    pub fn take(&self, key: &HopKey) -> Option<Established> {
        let mut map = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = map.get_mut(key)?;
        let now = Instant::now();
        let mut found = None;
        while let Some(idle) = list.pop() {
            if idle.until > now {
                found = Some(idle.session);
                break;
            }
            close_later(idle.session);
        }
        if list.is_empty() {
            map.remove(key);
        }
        found
    }

    /// Keeps `session` for the next message, or QUITs it once it carried `max` messages.
    pub fn put(&self, key: HopKey, session: Established, max: u32, idle_limit: Duration) {
        if session.messages() >= max {
            close_later(session);
            return;
        }
        let until = Instant::now() + idle_limit.min(IDLE_LIMIT);
        let mut map = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(key).or_default().push(Idle { session, until });
    }
}

impl Default for Pool {
    fn default() -> Self {
        Pool::new()
    }
}

/// QUITs a session without making anyone wait for it.
fn close_later(session: Established) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(session.close());
    }
}

/// Closes idle sessions past their time; ends when the pool is dropped.
async fn reap(idle: Weak<Mutex<Map>>) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(idle) = idle.upgrade() else {
            return;
        };
        let now = Instant::now();
        let expired: Vec<Established> = {
            let mut map = idle.lock().unwrap_or_else(|e| e.into_inner());
            let mut out = Vec::new();
            map.retain(|_, list| {
                let (old, keep): (Vec<Idle>, Vec<Idle>) =
                    list.drain(..).partition(|i| i.until <= now);
                out.extend(old.into_iter().map(|i| i.session));
                *list = keep;
                !list.is_empty()
            });
            out
        };
        for s in expired {
            tokio::spawn(s.close());
        }
    }
}
