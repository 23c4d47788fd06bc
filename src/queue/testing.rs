//! A scripted [`Transport`] for testing the queue's schedule without sockets, on tokio's
//! paused clock (groundwork for the per-next-hop queue, issue 14).

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;
use tokio::time::Instant;

use super::manager::{BoxFuture, Transport};
use crate::delivery::{DeliveryJob, DeliveryStatus, Failure, QueueKey, RecipientOutcome};
use crate::policy::route::{select_route, test_support};

/// What the fake answers for one recipient.
#[derive(Debug, Clone)]
pub enum Scripted {
    Delivered,
    /// A 4xx reply with this enhanced code (RFC 3463 class 4).
    Temporary(&'static str),
    /// A 5xx reply with this enhanced code (RFC 3463 class 5).
    Permanent(&'static str),
    /// The next hop could not be used (e.g. `4.4.316` connection refused).
    HopDown(&'static str),
    /// Delivered after this long (on tokio's clock): a slow next hop.
    Slow(std::time::Duration),
}

/// One call to [`Transport::deliver`], as the fake saw it.
#[derive(Clone)]
pub struct Call {
    pub id: String,
    pub mail_from: String,
    pub recipients: Vec<String>,
    pub data: Vec<u8>,
    /// On tokio's clock, so that a paused-clock test can assert on the schedule.
    pub at: Instant,
}

/// Without the message bytes (a failed assertion lists the calls).
impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("id", &self.id)
            .field("mail_from", &self.mail_from)
            .field("recipients", &self.recipients)
            .field("bytes", &self.data.len())
            .field("at", &self.at)
            .finish()
    }
}

/// Answers each recipient with its scripted outcome (a recipient without a script is
/// delivered, e.g. the DSN to the sender) and records every call.
pub struct FakeTransport {
    script: Mutex<HashMap<String, Scripted>>,
    calls: Mutex<Vec<Call>>,
    count: watch::Sender<usize>,
}

impl Default for FakeTransport {
    fn default() -> Self {
        FakeTransport {
            script: Mutex::new(HashMap::new()),
            calls: Mutex::new(Vec::new()),
            count: watch::channel(0).0,
        }
    }
}

impl FakeTransport {
    /// From now on, answers `rcpt` with `outcome`.
    pub fn script(&self, rcpt: &str, outcome: Scripted) {
        self.script
            .lock()
            .unwrap()
            .insert(rcpt.to_string(), outcome);
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Waits until at least `n` calls were made; panics after 30 days on tokio's clock
    /// (a paused clock gets there at once when nothing else is due, so a schedule that
    /// never calls fails the test instead of hanging it).
    pub async fn wait_calls(&self, n: usize) {
        let mut rx = self.count.subscribe();
        let wait = rx.wait_for(|&c| c >= n);
        let limit = std::time::Duration::from_secs(30 * 86_400);
        if tokio::time::timeout(limit, wait).await.is_err() {
            panic!(
                "{} calls, expected {n}: {:?}",
                self.calls().len(),
                self.calls()
            );
        }
    }

    fn outcome(&self, rcpt: &str) -> RecipientOutcome {
        let scripted = self.script.lock().unwrap().get(rcpt).cloned();
        let failure = |code, enhanced: &str| Failure {
            code: Some(code),
            enhanced: enhanced.to_string(),
            text: "scripted".into(),
        };
        let scripted = scripted.unwrap_or(Scripted::Delivered);
        let hop_failure = matches!(scripted, Scripted::HopDown(_));
        let status = match scripted {
            Scripted::Delivered | Scripted::Slow(_) => DeliveryStatus::Delivered {
                reply: "250 2.0.0 ok".into(),
            },
            Scripted::Temporary(e) => DeliveryStatus::Temporary(failure(451, e)),
            Scripted::Permanent(e) => DeliveryStatus::Permanent(failure(550, e)),
            Scripted::HopDown(e) => DeliveryStatus::Temporary(Failure {
                code: None,
                enhanced: e.to_string(),
                text: "scripted: next hop unusable".into(),
            }),
        };
        RecipientOutcome {
            recipient: rcpt.to_string(),
            status,
            connector: None,
            remote_host: Some("fake.test [192.0.2.1]".into()),
            would_route: None,
            tls: None,
            hop_failure,
        }
    }
}

impl Transport for FakeTransport {
    /// One queue per recipient domain, as for MX routing.
    fn queue_key(&self, recipient: &str, from_outside_org: bool) -> Result<QueueKey, Failure> {
        let domain = recipient.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        let decision = select_route(&test_support::policy(), domain, from_outside_org);
        Ok(QueueKey {
            route: decision.route,
            domain: Some(domain.to_string()),
        })
    }

    fn deliver<'a>(&'a self, job: &'a DeliveryJob<'a>) -> BoxFuture<'a, Vec<RecipientOutcome>> {
        let outcomes = job.recipients.iter().map(|r| self.outcome(r)).collect();
        let slow =
            job.recipients
                .iter()
                .find_map(|r| match self.script.lock().unwrap().get(r.as_str()) {
                    Some(Scripted::Slow(d)) => Some(*d),
                    _ => None,
                });
        Box::pin(async move {
            let data = job
                .data
                .to_vec()
                .await
                .expect("the spooled message reads back");
            {
                let mut calls = self.calls.lock().unwrap();
                calls.push(Call {
                    id: job.id.to_string(),
                    mail_from: job.mail_from.to_string(),
                    recipients: job.recipients.to_vec(),
                    data,
                    at: Instant::now(),
                });
                self.count.send_replace(calls.len());
            }
            if let Some(d) = slow {
                tokio::time::sleep(d).await;
            }
            outcomes
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::queue::hop::HopLimits;
    use crate::queue::manager::{self, QueueHandle, QueueSettings};
    use crate::queue::spool::{Envelope, Spool, unix_now};
    use crate::trace::Events;

    const SENDER: &str = "sender@org.test";
    const RCPT: &str = "rcpt@far.test";
    const DAY: Duration = Duration::from_secs(86_400);

    /// A queue manager on a real spool in a tempdir, delivering through the fake.
    struct Queue {
        fake: Arc<FakeTransport>,
        handle: QueueHandle,
        spool: Arc<Spool>,
        _dir: tempfile::TempDir,
        _stop: watch::Sender<bool>,
    }

    fn settings() -> QueueSettings {
        QueueSettings {
            fqdn: "relay.test".into(),
            retry_first: Duration::from_secs(60),
            retry_max: Duration::from_secs(240),
            expiration: DAY,
            // Past the expiry: no delay DSN in these tests.
            delay_notice: 2 * DAY,
            max_connections: 4,
            hop: HopLimits {
                max_connections: 2,
                quick_retries: 2,
                quick_interval: Duration::from_secs(60),
                slow_interval: Duration::from_secs(600),
            },
        }
    }

    fn start(settings: QueueSettings) -> Queue {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(dir.path()).unwrap());
        let fake = Arc::new(FakeTransport::default());
        let (stop, stop_rx) = watch::channel(false);
        let transport = fake.clone() as Arc<dyn Transport>;
        let (handle, _join) = manager::start(
            spool.clone(),
            transport,
            settings,
            Vec::new(),
            stop_rx,
            Events::disabled(),
        );
        Queue {
            fake,
            handle,
            spool,
            _dir: dir,
            _stop: stop,
        }
    }

    /// Stores a message from SENDER to RCPT that arrived at unix time `arrived` and hands
    /// it to the queue, as the SMTP side does.
    fn submit(q: &Queue, arrived: u64) -> String {
        submit_to(q, arrived, RCPT)
    }

    fn submit_to(q: &Queue, arrived: u64, rcpt: &str) -> String {
        let env = Envelope {
            mail_from: SENDER.into(),
            recipients: vec![rcpt.into()],
            arrived,
            inbound_connector: None,
            from_outside_org: false,
            smtputf8: false,
            requiretls: false,
        };
        let id = q.spool.new_id();
        let data = b"Message-ID: <m1@org.test>\r\nSubject: t\r\n\r\nbody\r\n";
        q.spool.store(&id, &env, data).unwrap();
        q.handle.submit(id.clone(), env, None);
        id
    }

    /// Yields until `done`, without moving the paused clock (a yielding task keeps the
    /// runtime busy, so it does not auto-advance); gives up after a generous real minute.
    async fn poll_until<F: std::future::Future<Output = bool>>(
        what: &str,
        mut done: impl FnMut() -> F,
    ) {
        let limit = std::time::Instant::now() + Duration::from_secs(60);
        while !done().await {
            assert!(
                std::time::Instant::now() < limit,
                "timed out waiting: {what}"
            );
            tokio::task::yield_now().await;
        }
    }

    /// Waits until the manager has scheduled `id` after its `attempts`th attempt (the
    /// attempt's outcome is recorded).
    async fn wait_scheduled(q: &Queue, id: &str, attempts: u32) {
        poll_until("scheduled", || async {
            let list = q.handle.list().await;
            let m = list.iter().find(|m| m.id == id);
            m.is_some_and(|m| m.attempts == attempts && !m.in_flight)
        })
        .await;
    }

    /// Waits until the queue is empty (every message final and removed).
    async fn wait_empty(q: &Queue) {
        poll_until("empty queue", || async {
            q.handle.stats().await.depth == 0
        })
        .await;
    }

    fn gaps(calls: &[Call]) -> Vec<u64> {
        calls
            .windows(2)
            .map(|w| (w[1].at - w[0].at).as_secs())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn temporary_failure_is_retried_with_capped_backoff() {
        let q = start(settings());
        q.fake.script(RCPT, Scripted::Temporary("4.4.1"));
        let id = submit(&q, unix_now());
        q.fake.wait_calls(1).await;
        wait_scheduled(&q, &id, 1).await;
        // Not before retry_first...
        tokio::time::advance(Duration::from_secs(59)).await;
        wait_scheduled(&q, &id, 1).await;
        assert_eq!(q.fake.calls().len(), 1, "retried before retry_first");
        // ...but at it.
        tokio::time::advance(Duration::from_secs(1)).await;
        q.fake.wait_calls(2).await;
        // The rest on the auto-advancing paused clock: doubling from 60 s, capped at 240 s.
        q.fake.wait_calls(6).await;
        let calls = q.fake.calls();
        assert!(calls.iter().all(|c| c.id == id && c.recipients == [RCPT]));
        assert_eq!(gaps(&calls[..6]), [60, 120, 240, 240, 240]);
    }

    /// The second call must be the failure DSN (RFC 3464) about the message, from the null
    /// sender (RFC 5321 §4.5.5) to its sender, with this status.
    fn assert_failure_dsn(calls: &[Call], id: &str, status: &str) {
        assert_eq!(calls[0].id, id);
        let dsn = &calls[1];
        assert_ne!(dsn.id, id, "the message was attempted again: {calls:?}");
        assert_eq!(dsn.mail_from, "");
        assert_eq!(dsn.recipients, [SENDER]);
        let text = String::from_utf8_lossy(&dsn.data);
        assert!(text.contains(&format!("Status: {status}")), "{text}");
    }

    /// A message older than the expiration when the queue takes it (a relay that was
    /// stopped for days) is returned at once, without a last attempt.
    #[tokio::test(start_paused = true)]
    async fn expired_message_is_returned_to_the_sender() {
        let q = start(settings());
        q.fake.script(RCPT, Scripted::Temporary("4.4.1"));
        let arrived = unix_now() - DAY.as_secs() - 60;
        let id = submit(&q, arrived);
        q.fake.wait_calls(1).await;
        let calls = q.fake.calls();
        assert_eq!(calls[0].mail_from, "", "a DSN, not an attempt: {calls:?}");
        assert_eq!(calls[0].recipients, [SENDER]);
        let text = String::from_utf8_lossy(&calls[0].data);
        assert!(text.contains("Status: 5.4.7"), "{text}");
        wait_empty(&q).await;
        // A day later, still nothing more: the message is gone, not deferred.
        tokio::time::advance(DAY).await;
        wait_empty(&q).await;
        assert_eq!(q.fake.calls().len(), 1, "{:?}", q.fake.calls());
        assert!(
            q.spool.read(&id).is_err(),
            "the expired message left the spool"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_failure_is_not_retried() {
        let q = start(settings());
        q.fake.script(RCPT, Scripted::Permanent("5.1.1"));
        let id = submit(&q, unix_now());
        q.fake.wait_calls(2).await;
        assert_failure_dsn(&q.fake.calls(), &id, "5.1.1");
        wait_empty(&q).await;
        // A week later, still nothing more than the attempt and the DSN to the sender.
        tokio::time::advance(7 * DAY).await;
        wait_empty(&q).await;
        assert_eq!(q.fake.calls().len(), 2, "{:?}", q.fake.calls());
        assert!(
            q.spool.read(&id).is_err(),
            "the failed message left the spool"
        );
    }

    /// A message too large for the write-ahead log is read for delivery as its header block
    /// plus the spool file: the transport gets it whole, byte for byte, and the failure DSN
    /// quotes its headers only (RFC 3462's text/rfc822-headers), never its 3 MB body.
    #[tokio::test(start_paused = true)]
    async fn a_large_message_is_delivered_whole_and_its_dsn_quotes_the_headers() {
        let q = start(settings());
        q.fake.script(RCPT, Scripted::Permanent("5.1.1"));
        let env = Envelope {
            mail_from: SENDER.into(),
            recipients: vec![RCPT.into()],
            arrived: unix_now(),
            inbound_connector: None,
            from_outside_org: false,
            smtputf8: false,
            requiretls: false,
        };
        let mut data = b"Message-ID: <big@org.test>\r\nSubject: big\r\n\r\n".to_vec();
        while data.len() < 3 << 20 {
            data.extend_from_slice(b"BODYLINE 0123456789 abcdefghijklmnopqrstuvwxyz\r\n");
        }
        let id = q.spool.new_id();
        q.spool.store(&id, &env, &data).unwrap();
        q.handle.submit(id.clone(), env, None);
        q.fake.wait_calls(2).await;
        let calls = q.fake.calls();
        assert_failure_dsn(&calls, &id, "5.1.1");
        assert!(
            calls[0].data == data,
            "the attempt carried the message whole"
        );
        let dsn = String::from_utf8_lossy(&calls[1].data);
        assert!(
            dsn.contains("Subject: big") && dsn.contains("text/rfc822-headers"),
            "{dsn}"
        );
        assert!(
            !dsn.contains("BODYLINE") && dsn.len() < 16_384,
            "{} bytes",
            dsn.len()
        );
    }

    /// The same on the real clock (the expiry moment comes from the message's arrival
    /// second, a wall-clock time): a message deferred from its arrival is attempted, then
    /// returned once `expiration` (2 s here) has passed.
    #[tokio::test]
    async fn deferred_message_expires_on_the_wall_clock() {
        let q = start(QueueSettings {
            retry_first: Duration::from_secs(1),
            expiration: Duration::from_secs(2),
            ..settings()
        });
        q.fake.script(RCPT, Scripted::Temporary("4.4.1"));
        let id = submit(&q, unix_now());
        let dsn = async {
            loop {
                q.fake.wait_calls(q.fake.calls().len() + 1).await;
                if q.fake.calls().iter().any(|c| c.mail_from.is_empty()) {
                    return;
                }
            }
        };
        let limit = Duration::from_secs(60);
        tokio::time::timeout(limit, dsn)
            .await
            .expect("no DSN within a minute");
        let calls = q.fake.calls();
        let (attempts, rest) = calls.split_at(calls.len() - 1);
        // How many retries fit in 2 s depends on the machine's load; the retry timing is
        // the paused-clock tests' job. Here: attempted, then returned on the real clock.
        assert!(!attempts.is_empty(), "never attempted: {calls:?}");
        assert!(attempts.iter().all(|c| c.id == id));
        assert_failure_dsn(&[attempts[0].clone(), rest[0].clone()], &id, "5.4.7");
    }

    const DEAD: &str = "rcpt@dead.test";

    fn dsns(calls: &[Call]) -> Vec<&Call> {
        calls.iter().filter(|c| c.mail_from.is_empty()).collect()
    }

    /// A next hop that cannot be used puts its queue in Retry: after the first round (at
    /// most MaxPerDomainOutboundConnections attempts), one probe per retry interval:
    /// `TransientFailureRetryCount` quick ones, then the slow interval. When it works
    /// again, Retry-Queue drains every message, each delivered once.
    #[tokio::test(start_paused = true)]
    async fn a_dead_hop_is_probed_not_hammered() {
        let q = start(settings());
        q.fake.script(DEAD, Scripted::HopDown("4.4.316"));
        let ids: Vec<String> = (0..50).map(|_| submit_to(&q, unix_now(), DEAD)).collect();
        // First round (2 = the per-queue limit), then probes at +60, +120, +720, +1320.
        q.fake.wait_calls(6).await;
        let calls = q.fake.calls();
        let t0 = calls[0].at;
        let at: Vec<u64> = calls.iter().map(|c| (c.at - t0).as_secs()).collect();
        assert_eq!(at, [0, 0, 60, 120, 720, 1320], "{calls:?}");
        poll_until("the last probe's result", || async {
            q.handle.queues().await[0].status == crate::queue::hop::HopStatus::Retry
        })
        .await;
        let queues = q.handle.queues().await;
        assert_eq!(queues.len(), 1);
        assert_eq!(queues[0].status, crate::queue::hop::HopStatus::Retry);
        assert_eq!(queues[0].message_count, 50);
        assert!(queues[0].last_error.as_deref().unwrap().contains("4.4.316"));
        // The hop comes back; Retry-Queue instead of waiting for the next probe.
        q.fake.script(DEAD, Scripted::Delivered);
        q.handle.retry_queue("dead.test").await.unwrap();
        wait_empty(&q).await;
        let calls = q.fake.calls();
        let delivered = &calls[6..];
        assert_eq!(delivered.len(), 50, "{calls:?}");
        let mut seen: Vec<&str> = delivered.iter().map(|c| c.id.as_str()).collect();
        seen.sort();
        let mut want: Vec<&str> = ids.iter().map(String::as_str).collect();
        want.sort();
        assert_eq!(seen, want, "every message exactly once");
        assert!(q.handle.queues().await.is_empty(), "empty queues go away");
    }

    /// Round robin across queues: with every slot taken by a slow next hop holding 100
    /// messages, a message for another hop starts at the first free slot, not after the
    /// 100.
    #[tokio::test(start_paused = true)]
    async fn a_busy_queue_does_not_starve_another() {
        let q = start(settings());
        let slow = "rcpt@slow.test";
        q.fake.script(slow, Scripted::Slow(Duration::from_secs(10)));
        for _ in 0..100 {
            submit_to(&q, unix_now(), slow);
        }
        q.fake.wait_calls(2).await;
        let fast = submit_to(&q, unix_now(), "rcpt@fast.test");
        while !q.fake.calls().iter().any(|c| c.id == fast) {
            q.fake.wait_calls(q.fake.calls().len() + 1).await;
        }
        let calls = q.fake.calls();
        let t0 = calls[0].at;
        let fast_at = calls.iter().find(|c| c.id == fast).unwrap().at;
        assert!(
            fast_at - t0 <= Duration::from_secs(10),
            "waited {:?} behind the slow queue",
            fast_at - t0
        );
        // The slow queue never ran more than its 2 connections at once: 2 calls per 10 s.
        let first_ten = calls
            .iter()
            .filter(|c| c.id != fast && c.at - t0 < Duration::from_secs(10))
            .count();
        assert_eq!(first_ten, 2, "{calls:?}");
    }

    /// A message waiting in a queue in Retry gets its delay DSN and its NDR on time (the
    /// clock is the message's age), without delivery attempts of its own.
    #[tokio::test(start_paused = true)]
    async fn a_message_held_in_retry_is_notified_and_expires_on_time() {
        let hour = Duration::from_secs(3600);
        let q = start(QueueSettings {
            delay_notice: 4 * hour,
            ..settings()
        });
        q.fake.script(DEAD, Scripted::HopDown("4.4.316"));
        // The notices are timed from the message's admission, so they are measured from
        // here (not from the first attempt, which a loaded machine may start late while
        // the paused clock moves on).
        let t0 = Instant::now();
        let id = submit_to(&q, unix_now(), DEAD);
        while dsns(&q.fake.calls()).len() < 2 {
            q.fake.wait_calls(q.fake.calls().len() + 1).await;
        }
        let calls = q.fake.calls();
        let dsn = dsns(&calls);
        let delay = String::from_utf8_lossy(&dsn[0].data);
        assert!(delay.contains("Action: delayed"), "{delay}");
        assert_eq!((dsn[0].at - t0).as_secs() / 60, 4 * 60, "delay DSN at 4 h");
        let failure = String::from_utf8_lossy(&dsn[1].data);
        assert!(failure.contains("Status: 5.4.7"), "{failure}");
        assert!(
            failure.contains("4.4.316"),
            "the last error is in the NDR: {failure}"
        );
        assert_eq!((dsn[1].at - t0).as_secs() / 60, 24 * 60, "NDR at 1 day");
        // Probes only: 1 + 2 quick + one per 10 minutes, not one per message retry.
        let attempts = calls.iter().filter(|c| c.id == id).count();
        assert!((140..=150).contains(&attempts), "{attempts} attempts");
        wait_empty(&q).await;
    }

    /// A message for 500 domains is 500 batches in 500 queues, started within
    /// `MaxOutboundConnections` (4 here), not 500 connections at once; each domain gets
    /// the message once.
    #[tokio::test(start_paused = true)]
    async fn a_message_for_500_domains_stays_within_the_global_limit() {
        let q = start(settings());
        let rcpts: Vec<String> = (0..500).map(|i| format!("r@d{i}.test")).collect();
        for r in &rcpts {
            q.fake.script(r, Scripted::Slow(Duration::from_secs(10)));
        }
        let env = Envelope {
            mail_from: SENDER.into(),
            recipients: rcpts.clone(),
            arrived: unix_now(),
            inbound_connector: None,
            from_outside_org: false,
            smtputf8: false,
            requiretls: false,
        };
        let id = q.spool.new_id();
        q.spool
            .store(&id, &env, b"Subject: many\r\n\r\nx\r\n")
            .unwrap();
        q.handle.submit(id.clone(), env, None);
        q.fake.wait_calls(500).await;
        tokio::time::sleep(Duration::from_secs(11)).await; // the last round ends
        wait_empty(&q).await;
        let calls = q.fake.calls();
        let t0 = calls[0].at;
        // Each 10-second round starts at most 4 batches: 125 rounds.
        for round in 0..125u64 {
            let started = calls
                .iter()
                .filter(|c| (c.at - t0).as_secs() / 10 == round)
                .count();
            assert_eq!(started, 4, "round {round}: {started} batches started");
        }
        let mut got: Vec<&str> = calls.iter().map(|c| c.recipients[0].as_str()).collect();
        got.sort();
        let mut want: Vec<&str> = rcpts.iter().map(String::as_str).collect();
        want.sort();
        assert_eq!(got, want, "each domain once, one recipient per batch");
    }
}
