//! The pre-greeting wait (issue 15): an OnPremises address gets its banner at once; an
//! unknown client waits `PreGreetingWait` once, then is remembered (a postscreen-like pass
//! cache) and gets it at once too; early talkers are refused as before; `0` turns the wait
//! off. The wait is set to 3 s here so that "waited" and "did not wait" cannot be confused
//! on a slow machine: a wait is a floor, and "at once" is asserted only as "well under it".

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use support::*;

const WAIT: Duration = Duration::from_secs(3);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Connects from `source` and returns the time until the whole banner was read.
async fn banner_after(source: &str, relay: SocketAddr) -> (Duration, Dialog) {
    let stream = tcp_from(ip(source), relay).await;
    let t = Instant::now();
    let mut d = Dialog::new(stream);
    let banner = d.read_reply().await;
    assert!(banner.starts_with("220 "), "{banner}");
    (t.elapsed(), d)
}

async fn relay_with_wait(
    wait: &str,
) -> (connector_relay::relay::RelayHandle, Sink, tempfile::TempDir) {
    let sink = start_sink().await;
    let tmp = tempfile::tempdir().unwrap();
    let extra = format!("PreGreetingWait = \"{wait}\"");
    let relay = start_relay(&relay_config(tmp.path(), sink.addr(), &extra), None).await;
    (relay, sink, tmp)
}

#[tokio::test]
async fn trusted_and_remembered_clients_get_the_banner_at_once() {
    let (relay, sink, _tmp) = relay_with_wait("00:00:03").await;
    let addr = relay.smtp_addrs[0];

    // 127.0.0.10 is the OnPremises connector's address: no wait, ever.
    let mut trusted = Vec::new();
    for _ in 0..5 {
        let (t, mut d) = banner_after("127.0.0.10", addr).await;
        d.cmd("QUIT", "221").await;
        trusted.push(t);
    }
    assert!(trusted.iter().all(|t| *t < WAIT), "{trusted:?}");

    // An unknown client waits once ...
    let (first, mut d) = banner_after("127.0.0.30", addr).await;
    assert!(first >= WAIT - Duration::from_millis(50), "{first:?}");
    d.cmd("EHLO client.test", "250").await;
    d.send_message(
        "alice@fabrikam.test",
        "bob@contoso.test",
        "Subject: first\r\n\r\nhi",
    )
    .await;
    d.cmd("QUIT", "221").await;
    // ... then, one connection per message, never again.
    let mut later = Vec::new();
    for i in 0..5 {
        let (t, mut d) = banner_after("127.0.0.30", addr).await;
        later.push(t);
        d.cmd("EHLO client.test", "250").await;
        let body = format!("Subject: again {i}\r\n\r\nhi");
        d.send_message("alice@fabrikam.test", "bob@contoso.test", &body)
            .await;
        d.cmd("QUIT", "221").await;
    }
    assert!(later.iter().all(|t| *t < WAIT), "{later:?}");
    // Another unknown address still waits.
    let (other, mut d) = banner_after("127.0.0.31", addr).await;
    assert!(other >= WAIT - Duration::from_millis(50), "{other:?}");
    d.cmd("QUIT", "221").await;
    assert_eq!(
        wait_messages(sink.maildir(), 6, Duration::from_secs(30))
            .await
            .len(),
        6
    );
    println!(
        "banner after: trusted {trusted:?}; unknown first {first:?}, then {later:?}; another unknown {other:?}"
    );
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn early_talkers_are_still_refused_and_not_remembered() {
    let (relay, _sink, _tmp) = relay_with_wait("00:00:03").await;
    let addr = relay.smtp_addrs[0];
    let mut d = Dialog::new(tcp_from(ip("127.0.0.40"), addr).await);
    d.send(b"EHLO spammer.test\r\n").await;
    let r = d.read_reply().await;
    assert!(r.starts_with("554 5.5.0"), "{r}");
    // It did not pass: the next connection waits again.
    let (t, _) = banner_after("127.0.0.40", addr).await;
    assert!(t >= WAIT - Duration::from_millis(50), "{t:?}");
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn zero_turns_the_wait_off() {
    let (relay, _sink, _tmp) = relay_with_wait("00:00:00").await;
    let (t, mut d) = banner_after("127.0.0.50", relay.smtp_addrs[0]).await;
    assert!(t < WAIT, "{t:?}");
    d.cmd("EHLO client.test", "250").await;
    println!("banner after {t:?} with PreGreetingWait = 0");
    relay.shutdown(Duration::from_secs(5)).await;
}
