//! Delivering a report: `https:` by POST (RFC 8460 §5.4), `mailto:` as a DKIM-signed
//! `multipart/report` through the relay's own queue (§5.3).

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use rustls::pki_types::ServerName;

use crate::dns::Resolver;
use crate::queue::manager::QueueHandle;
use crate::queue::spool::{Envelope, Spool, unix_now};

/// Longest a POST may take, connection included.
const POST_TIMEOUT: Duration = Duration::from_secs(60);

/// `https://host[:port]/path` → (host, port, path). Userinfo, IPv6 literals and query
/// strings beyond the path are not expected in a `rua` and are refused or kept as is.
fn split_url(url: &str) -> Result<(String, u16, String), String> {
    let rest = url.strip_prefix("https://").ok_or("not an https URL")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.contains('@') || authority.starts_with('[') || authority.is_empty() {
        return Err(format!("unsupported authority in {url:?}"));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().map_err(|_| format!("bad port in {url:?}"))?),
        None => (authority, 443),
    };
    Ok((host.to_ascii_lowercase(), port, path.to_string()))
}

/// POSTs the gzip'ed report to `url`, validating the server certificate (WebPKI roots and
/// `TrustedCaFile`) for the URL's host name. Redirects are not followed. Success is any
/// 2xx answer.
pub async fn post(
    url: &str,
    body: Vec<u8>,
    resolver: &dyn Resolver,
    tls: Arc<rustls::ClientConfig>,
) -> Result<(), String> {
    tokio::time::timeout(POST_TIMEOUT, post_inner(url, body, resolver, tls))
        .await
        .map_err(|_| format!("POST {url}: timed out"))?
}

async fn post_inner(
    url: &str,
    body: Vec<u8>,
    resolver: &dyn Resolver,
    tls: Arc<rustls::ClientConfig>,
) -> Result<(), String> {
    let (host, port, path) = split_url(url)?;
    let ips = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => resolver
            .ips(&host)
            .await
            .map_err(|e| format!("{host}: {e}"))?,
    };
    let ip = ips.first().ok_or_else(|| format!("{host}: no address"))?;
    let tcp = tokio::net::TcpStream::connect((*ip, port))
        .await
        .map_err(|e| format!("connect {ip}:{port}: {e}"))?;
    let name = ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {host}: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let authority = if port == 443 {
        host.clone()
    } else {
        format!("{host}:{port}")
    };
    let req = hyper::Request::post(path)
        .header("host", authority)
        .header("content-type", "application/tlsrpt+gzip")
        .header(
            "user-agent",
            concat!("connector-relay/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("POST {url}: HTTP {status}"))
    }
}

/// What a mailed report needs besides the report.
pub struct Mail<'a> {
    pub from: &'a str,
    pub to: &'a str,
    pub domain: &'a str,
    pub organization: &'a str,
    pub report_id: &'a str,
    pub fqdn: &'a str,
    /// `<submitter>!<policy-domain>!<begin>!<end>.json.gz` (RFC 8460 §5.3).
    pub filename: String,
}

/// The RFC 8460 §5.3 message (not yet signed), CRLF line endings.
pub fn build_mail(m: &Mail<'_>, gz: &[u8], now: u64) -> Vec<u8> {
    let boundary = format!("tlsrpt-{}", m.report_id.replace(['@', '.'], "-"));
    let date = crate::message::received::rfc5322_date(now);
    let mut s = String::new();
    let mut line = |l: &str| {
        s.push_str(l);
        s.push_str("\r\n");
    };
    line(&format!("From: <{}>", m.from));
    line(&format!("To: <{}>", m.to));
    line(&format!("Date: {date}"));
    line(&format!(
        "Subject: Report Domain: {} Submitter: {} Report-ID: <{}>",
        m.domain, m.organization, m.report_id
    ));
    line(&format!("Message-ID: <{}.{now}@{}>", m.report_id, m.fqdn));
    line(&format!("TLS-Report-Domain: {}", m.domain));
    line(&format!("TLS-Report-Submitter: {}", m.organization));
    // RFC 8460 §5.3.1: a report must not be held back by the recipient's own TLS policy.
    line("TLS-Required: No");
    line("MIME-Version: 1.0");
    line(&format!(
        "Content-Type: multipart/report; report-type=\"tlsrpt\"; boundary=\"{boundary}\""
    ));
    line("");
    line(&format!("--{boundary}"));
    line("Content-Type: text/plain; charset=us-ascii");
    line("");
    line(&format!(
        "This is an aggregate TLS report (RFC 8460) from {} for {}.",
        m.organization, m.domain
    ));
    line(&format!("--{boundary}"));
    line("Content-Type: application/tlsrpt+gzip");
    line("Content-Transfer-Encoding: base64");
    line(&format!(
        "Content-Disposition: attachment; filename=\"{}\"",
        m.filename
    ));
    line("");
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(gz);
    for chunk in b64.as_bytes().chunks(76) {
        line(std::str::from_utf8(chunk).unwrap_or(""));
    }
    line(&format!("--{boundary}--"));
    s.into_bytes()
}

/// Spools a (signed) report and hands it to the queue like any message.
pub async fn enqueue(
    spool: &Arc<Spool>,
    queue: &QueueHandle,
    from: &str,
    to: &str,
    message: Vec<u8>,
) -> Result<String, String> {
    let id = spool.new_id();
    let env = Envelope {
        mail_from: from.to_string(),
        recipients: vec![to.to_string()],
        arrived: unix_now(),
        inbound_connector: None,
        from_outside_org: false,
        smtputf8: !from.is_ascii() || !to.is_ascii(),
        requiretls: false,
    };
    let message_id = crate::message::message_id(&message);
    let (spool2, id2, env2) = (spool.clone(), id.clone(), env.clone());
    tokio::task::spawn_blocking(move || spool2.store(&id2, &env2, &message))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    queue.submit(id.clone(), env, message_id);
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::split_url;

    #[test]
    fn urls() {
        assert_eq!(
            split_url("https://R.example.test:8443/tls/rpt").unwrap(),
            ("r.example.test".into(), 8443, "/tls/rpt".into())
        );
        assert_eq!(
            split_url("https://r.example.test").unwrap(),
            ("r.example.test".into(), 443, "/".into())
        );
        assert!(split_url("https://u@r.example.test/").is_err());
        assert!(split_url("http://r.example.test/").is_err());
    }
}
