//! The pre-greeting test's memory (Postfix postscreen's `postscreen_cache_*`): client
//! addresses that passed the test recently get their banner at once, so a legitimate sender
//! that opens a connection per message pays the wait once per [`PASS_LIFETIME`], not once
//! per message.
//!
//! Bounded: at most [`PASS_CAPACITY`] addresses; when full, the oldest pass is forgotten
//! first (that client waits once more, nothing worse). Shared by every session and kept
//! across live reloads.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How long a pass is remembered (Postfix `postscreen_greet_ttl` = 1 day).
pub const PASS_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The most addresses remembered (about 60 bytes each: 6 MB at most).
pub const PASS_CAPACITY: usize = 100_000;

/// Addresses that passed the pre-greeting test, each until its pass expires.
pub struct PassCache {
    lifetime: Duration,
    capacity: usize,
    inner: Mutex<Passes>,
}

#[derive(Default)]
struct Passes {
    /// Address → when its pass expires.
    expiry: HashMap<IpAddr, Instant>,
    /// Addresses in the order they passed (oldest first), for eviction when full.
    order: VecDeque<IpAddr>,
}

impl Default for PassCache {
    fn default() -> Self {
        PassCache::new(PASS_LIFETIME, PASS_CAPACITY)
    }
}

impl PassCache {
    pub fn new(lifetime: Duration, capacity: usize) -> Self {
        PassCache {
            lifetime,
            capacity: capacity.max(1),
            inner: Mutex::new(Passes::default()),
        }
    }

    /// Has `ip` passed within the lifetime?
    pub fn passed(&self, ip: IpAddr, now: Instant) -> bool {
        let passes = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        passes.expiry.get(&ip).is_some_and(|&until| now < until)
    }

    /// Remembers that `ip` passed now.
    pub fn record(&self, ip: IpAddr, now: Instant) {
        let mut passes = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Passes { expiry, order } = &mut *passes;
        if expiry.insert(ip, now + self.lifetime).is_none() {
            order.push_back(ip);
        }
        while expiry.len() > self.capacity {
            let Some(oldest) = order.pop_front() else {
                break;
            };
            expiry.remove(&oldest);
        }
    }

    /// Addresses remembered now (expired ones included until they are evicted or renewed).
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .expiry
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_pass_lasts_its_lifetime() {
        let cache = PassCache::new(Duration::from_secs(60), 10);
        let t0 = Instant::now();
        assert!(!cache.passed(ip("192.0.2.1"), t0));
        cache.record(ip("192.0.2.1"), t0);
        assert!(cache.passed(ip("192.0.2.1"), t0 + Duration::from_secs(59)));
        assert!(!cache.passed(ip("192.0.2.1"), t0 + Duration::from_secs(60)));
        assert!(
            !cache.passed(ip("192.0.2.2"), t0),
            "only the address that passed"
        );
        // Renewed after expiry, without a second entry.
        cache.record(ip("192.0.2.1"), t0 + Duration::from_secs(61));
        assert!(cache.passed(ip("192.0.2.1"), t0 + Duration::from_secs(100)));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn the_oldest_pass_goes_first_when_full() {
        let cache = PassCache::new(Duration::from_secs(60), 3);
        let t0 = Instant::now();
        for i in 1..=4 {
            cache.record(ip(&format!("2001:db8::{i}")), t0);
        }
        assert_eq!(cache.len(), 3);
        assert!(!cache.passed(ip("2001:db8::1"), t0), "evicted");
        for i in 2..=4 {
            assert!(cache.passed(ip(&format!("2001:db8::{i}")), t0));
        }
    }
}
