//! SRS (`SenderRewritingEnabled`): the SRS0 encoding (a vector computed independently with
//! Python's hmac/hashlib/base64, libsrs2's lower-casing and stamp order), reversal with
//! case-insensitive hashes and expiry, the secret file, and the round trip through the
//! relay: a foreign sender rewritten on an OnPremises connector, the bounce to the SRS
//! address accepted from an anonymous client and relayed to the original sender, a forged
//! or stale SRS address refused with 550 5.1.1.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use connector_relay::message::srs::{MAX_AGE_DAYS, Srs, SrsError, is_srs0, timestamp, today};
use support::*;

const WAIT: Duration = Duration::from_secs(30);
/// Day 20000 since the epoch: 20000 mod 1024 = 544 = 17·32 + 0 → "RA".
const DAY: u64 = 20000;

fn srs() -> Srs {
    Srs::new(b"test-secret")
}

#[test]
fn encodes_a_known_vector() {
    // python3: base64(hmac(b"test-secret", b"ra" b"fabrikam.test" b"alice", sha1))[:4]
    assert_eq!(timestamp(DAY), "RA");
    assert_eq!(
        srs().forward_at("alice@fabrikam.test", "contoso.test", DAY),
        Some("SRS0=xet8=RA=fabrikam.test=alice@contoso.test".into())
    );
    assert_eq!(
        srs().forward_at("alice.o@fabrikam.test", "contoso.test", DAY),
        Some("SRS0=PrF0=RA=fabrikam.test=alice.o@contoso.test".into())
    );
    // The hash is over the lower-cased parts; the address keeps its case.
    assert_eq!(
        srs().forward_at("Alice@Fabrikam.TEST", "contoso.test", DAY),
        Some("SRS0=xet8=RA=Fabrikam.TEST=Alice@contoso.test".into())
    );
}

#[test]
fn timestamps_are_two_base32_chars_of_the_day_mod_1024() {
    assert_eq!(timestamp(0), "AA");
    assert_eq!(timestamp(1), "AB");
    assert_eq!(timestamp(31), "A7");
    assert_eq!(timestamp(32), "BA");
    assert_eq!(timestamp(1023), "77");
    assert_eq!(timestamp(1024), "AA");
}

#[test]
fn reverses_and_compares_hash_and_stamp_case_insensitively() {
    let s = srs();
    let a = s
        .forward_at("alice@fabrikam.test", "contoso.test", DAY)
        .unwrap();
    assert_eq!(
        s.reverse_at(&a, DAY, MAX_AGE_DAYS),
        Ok("alice@fabrikam.test".into())
    );
    assert_eq!(
        s.reverse_at(&a.to_ascii_lowercase(), DAY, MAX_AGE_DAYS),
        Ok("alice@fabrikam.test".into())
    );
    assert_eq!(
        s.reverse_at(&a.to_ascii_uppercase(), DAY, MAX_AGE_DAYS),
        Ok("ALICE@FABRIKAM.TEST".into())
    );
    // libsrs2 also accepts + and - after the SRS0 tag.
    let plus = a.replacen("SRS0=", "SRS0+", 1);
    assert_eq!(
        s.reverse_at(&plus, DAY, MAX_AGE_DAYS),
        Ok("alice@fabrikam.test".into())
    );
    // '=' inside the original local part survives.
    let eq = s
        .forward_at("a=b=c@fabrikam.test", "contoso.test", DAY)
        .unwrap();
    assert_eq!(
        s.reverse_at(&eq, DAY, MAX_AGE_DAYS),
        Ok("a=b=c@fabrikam.test".into())
    );
}

#[test]
fn refuses_forged_and_malformed_addresses() {
    let s = srs();
    let r = |a: &str| s.reverse_at(a, DAY, MAX_AGE_DAYS);
    assert_eq!(
        r("SRS0=AAAA=RA=fabrikam.test=alice@contoso.test"),
        Err(SrsError::BadHash)
    );
    // Right hash, other original address.
    assert_eq!(
        r("SRS0=xet8=RA=fabrikam.test=mallory@contoso.test"),
        Err(SrsError::BadHash)
    );
    // Another secret.
    let other = Srs::new(b"another-secret")
        .forward_at("alice@fabrikam.test", "contoso.test", DAY)
        .unwrap();
    assert_eq!(r(&other), Err(SrsError::BadHash));
    assert_eq!(
        r("SRS0=xet8=RA=fabrikam.test@contoso.test"),
        Err(SrsError::Malformed)
    );
    assert_eq!(
        r("SRS0=xet8=R1=fabrikam.test=alice@contoso.test"),
        Err(SrsError::Malformed)
    );
    assert_eq!(
        r("SRS0=xet8=RAA=fabrikam.test=alice@contoso.test"),
        Err(SrsError::Malformed)
    );
    assert_eq!(r("alice@contoso.test"), Err(SrsError::NotSrs));
    assert_eq!(r("SRS1=x=y@contoso.test"), Err(SrsError::NotSrs));
    assert!(is_srs0("srs0=xet8=RA=fabrikam.test=alice@contoso.test"));
    assert!(!is_srs0("srs0@contoso.test"));
}

#[test]
fn expires_after_max_age_across_the_1024_day_cycle() {
    let s = srs();
    for issued in [DAY, 1023, 2047] {
        let a = s
            .forward_at("alice@fabrikam.test", "contoso.test", issued)
            .unwrap();
        let at = |day: u64| s.reverse_at(&a, day, MAX_AGE_DAYS);
        assert!(at(issued).is_ok());
        assert!(at(issued + u64::from(MAX_AGE_DAYS)).is_ok());
        assert_eq!(
            at(issued + u64::from(MAX_AGE_DAYS) + 1),
            Err(SrsError::Expired)
        );
        assert_eq!(at(issued + 500), Err(SrsError::Expired));
        // One day ahead (clock skew) is fresh; more is not.
        assert!(at(issued - 1).is_ok());
        assert_eq!(at(issued - 2), Err(SrsError::Expired));
    }
}

#[test]
fn null_quoted_and_srs_senders() {
    let s = srs();
    assert_eq!(s.forward_at("", "contoso.test", DAY), None);
    assert_eq!(
        s.forward_at("\"a b\"@fabrikam.test", "contoso.test", DAY),
        None
    );
    // An SRS0 sender from an upstream forwarder is rewritten again; reversal gives it back.
    let upstream = "SRS0=abcd=RA=example.org=bob@fwd.example";
    let again = s.forward_at(upstream, "contoso.test", DAY).unwrap();
    assert!(again.starts_with("SRS0="), "{again}");
    assert!(again.ends_with("=fwd.example=SRS0=abcd=RA=example.org=bob@contoso.test"));
    assert_eq!(s.reverse_at(&again, DAY, MAX_AGE_DAYS), Ok(upstream.into()));
}

#[test]
fn secret_file_is_created_0600_and_reused() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("sub/srs.key");
    let a = Srs::load_or_create(&path).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.trim().len(), 64);
    assert!(text.trim().bytes().all(|b| b.is_ascii_hexdigit()));
    let b = Srs::load_or_create(&path).unwrap();
    assert_eq!(
        a.forward_at("x@fabrikam.test", "contoso.test", DAY),
        b.forward_at("x@fabrikam.test", "contoso.test", DAY)
    );
    // The key is the trimmed file content, byte for byte.
    let c = Srs::new(text.trim().as_bytes());
    assert_eq!(
        a.forward_at("x@fabrikam.test", "contoso.test", DAY),
        c.forward_at("x@fabrikam.test", "contoso.test", DAY)
    );
    assert!(!format!("{a:?}").contains(text.trim()));
    let empty = tmp.path().join("empty.key");
    std::fs::write(&empty, "\n").unwrap();
    assert!(Srs::load_or_create(&empty).is_err());
}

fn config(dir: &Path, tailspin: SocketAddr, fabrikam: SocketAddr) -> String {
    format!(
        r#"
[Relay]
Fqdn = "relay.contoso.test"
Listen = ["127.0.0.1:0"]
AcceptedDomains = ["*.corp.contoso.test", "contoso.test"]
SpoolDir = "{dir}/spool"
DataDir = "{dir}"
AdminListen = "127.0.0.1:0"
AdminTokenFile = "{dir}/admin.token"
SrsSecretFile = "{dir}/keys/srs.key"
TransientFailureRetryInterval = "00:00:01"
MaxRetryInterval = "00:00:02"

[[InboundConnector]]
Name = "From on-premises"
ConnectorType = "OnPremises"
SenderIPAddresses = ["127.0.0.10/32"]

[[OutboundConnector]]
Name = "Tailspin via on-premises"
ConnectorType = "OnPremises"
RecipientDomains = ["tailspin.test"]
UseMXRecord = false
SmartHosts = ["{tailspin}"]
SenderRewritingEnabled = true

[[OutboundConnector]]
Name = "To Fabrikam"
RecipientDomains = ["fabrikam.test"]
UseMXRecord = false
SmartHosts = ["{fabrikam}"]
"#,
        dir = dir.display()
    )
}

async fn send(
    relay: SocketAddr,
    ip: &str,
    from: &str,
    rcpts: &[(&str, &str)],
    data: bool,
) -> Vec<String> {
    let mut d = Dialog::connect_from(ip.parse().unwrap(), relay).await;
    d.cmd("EHLO client.test", "250").await;
    d.cmd(&format!("MAIL FROM:<{from}>"), "250").await;
    let mut replies = Vec::new();
    for (to, expect) in rcpts {
        replies.push(d.cmd(&format!("RCPT TO:<{to}>"), expect).await);
    }
    if data {
        d.cmd("DATA", "354").await;
        d.send(b"From: a@fabrikam.test\r\nSubject: srs\r\n\r\nhello\r\n")
            .await;
        d.cmd(".", "250").await;
    }
    d.cmd("QUIT", "221").await;
    replies
}

fn header<'a>(msg: &'a str, name: &str) -> Vec<&'a str> {
    msg.split("\r\n\r\n")
        .next()
        .unwrap()
        .split("\r\n")
        .filter_map(|l| l.strip_prefix(name))
        .collect()
}

#[tokio::test]
async fn srs_round_trip_through_the_relay() {
    let tailspin = start_sink().await;
    let fabrikam = start_sink().await;
    let tmp = tempfile::tempdir().unwrap();
    let relay = start_relay(&config(tmp.path(), tailspin.addr(), fabrikam.addr()), None).await;
    let addr = relay.smtp_addrs[0];

    // The secret file was created at start, mode 0600.
    let key = tmp.path().join("keys/srs.key");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let ours = Srs::load_or_create(&key).unwrap();

    // 1. A foreign sender through the SenderRewritingEnabled connector: SRS0 at the first
    //    exact accepted domain. An accepted sender and the null sender are kept.
    send(
        addr,
        "127.0.0.10",
        "alice@fabrikam.test",
        &[("bob@tailspin.test", "250")],
        true,
    )
    .await;
    send(
        addr,
        "127.0.0.10",
        "carol@contoso.test",
        &[("bob@tailspin.test", "250")],
        true,
    )
    .await;
    send(
        addr,
        "127.0.0.10",
        "",
        &[("bob@tailspin.test", "250")],
        true,
    )
    .await;
    let got = wait_messages(tailspin.maildir(), 3, WAIT).await;
    let mut froms: Vec<&str> = got
        .iter()
        .flat_map(|m| header(m, "X-Sink-Mail-From: "))
        .collect();
    froms.sort();
    assert_eq!(froms.len(), 3, "{got:?}");
    assert_eq!(froms[0], "<>");
    let srs_from = froms
        .iter()
        .find(|f| f.starts_with("<SRS0="))
        .expect("SRS0 sender");
    let srs_addr = srs_from.trim_matches(['<', '>']).to_string();
    let expected = ours
        .forward_at("alice@fabrikam.test", "contoso.test", today())
        .unwrap();
    assert_eq!(srs_addr, expected);
    assert!(srs_addr.ends_with("=fabrikam.test=alice@contoso.test"));
    assert!(froms.contains(&"<carol@contoso.test>"));

    // 2. The bounce, from an anonymous client: accepted and relayed to alice at Fabrikam.
    //    A lower-cased copy (some MTAs do that) is accepted too.
    send(
        addr,
        "127.0.0.50",
        "",
        &[(srs_addr.as_str(), "250 2.1.5")],
        true,
    )
    .await;
    send(
        addr,
        "127.0.0.50",
        "",
        &[(srs_addr.to_ascii_lowercase().as_str(), "250 2.1.5")],
        true,
    )
    .await;
    let got = wait_messages(fabrikam.maildir(), 2, WAIT).await;
    assert_eq!(got.len(), 2);
    for m in &got {
        assert_eq!(header(m, "X-Sink-Mail-From: "), ["<>"]);
        assert_eq!(header(m, "X-Sink-Rcpt-To: "), ["<alice@fabrikam.test>"]);
        assert!(m.ends_with("\r\n\r\nhello\r\n"));
    }

    // 3. Forged, stale and malformed SRS addresses: 550 5.1.1, from anyone.
    let mut bad_hash = srs_addr.clone();
    bad_hash.replace_range(
        5..9,
        if &srs_addr[5..9] == "AAAA" {
            "BBBB"
        } else {
            "AAAA"
        },
    );
    let redirected = srs_addr.replace("=alice@", "=mallory@");
    let stale = ours
        .forward_at("alice@fabrikam.test", "contoso.test", today() - 30)
        .unwrap();
    let malformed = "SRS0=abcd=RA=fabrikam.test@contoso.test";
    for bad in [&bad_hash, &redirected, &stale, &malformed.to_string()] {
        for ip in ["127.0.0.50", "127.0.0.10"] {
            let r = send(addr, ip, "", &[(bad.as_str(), "550 5.1.1")], false).await;
            assert!(r[0].contains("Invalid SRS address"), "{bad}: {r:?}");
        }
    }
    // An SRS-looking address at a foreign domain is plain relaying (refused for anonymous).
    send(
        addr,
        "127.0.0.50",
        "",
        &[("SRS0=abcd=RA=fabrikam.test=alice@tailspin.test", "550 5.7.")],
        false,
    )
    .await;
    assert_eq!(messages(fabrikam.maildir()).len(), 2);
    relay.shutdown(Duration::from_secs(5)).await;
}
