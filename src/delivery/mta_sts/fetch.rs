//! The policy fetch (RFC 8461 §3.3): `GET https://mta-sts.<domain>/.well-known/mta-sts.txt`
//! over HTTP/1.1 (hyper's client connection) on tokio-rustls.
//!
//! - The host's addresses come from the relay's own resolver (`DnsServers`), like every
//!   other lookup, so labs and tests can point it at a loopback DNS server.
//! - The certificate must chain to the webpki roots or `TrustedCaFile` and name the policy
//!   host (§3.3: "validated ... as described in RFC 6125"), checked by the same verifier as
//!   `DomainValidation` (CRLs included).
//! - Only `200` counts; redirects are not followed (§3.3: "MUST NOT follow redirects"); the
//!   media type must be `text/plain`; the body is capped at [`MAX_BODY`]; the whole fetch
//!   (DNS, connect, TLS, response, body) has one time limit.
//! - No HTTP caching headers are sent or honoured (§3.3): the relay's own cache decides.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use super::policy::{Policy, parse_policy};
use crate::delivery::tls::{TlsCheck, TlsContext, classify_tls_error};
use crate::dns::Resolver;
use crate::policy::{DomainPattern, TlsLevel};

/// The largest policy body accepted. RFC 8461 gives no number; 64 KiB is far above any
/// real policy (a few hundred bytes) and the figure publishers are told to stay under.
pub const MAX_BODY: usize = 64 * 1024;

/// What went wrong, in TLS-RPT's words (RFC 8460 §4.3.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchErrorKind {
    /// Not reachable, timed out, not 200, wrong media type, too large.
    FetchError,
    /// The policy host's certificate did not validate.
    WebpkiInvalid,
    /// Fetched, but not a valid policy.
    PolicyInvalid,
}

impl FetchErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FetchErrorKind::FetchError => "sts-policy-fetch-error",
            FetchErrorKind::WebpkiInvalid => "sts-webpki-invalid",
            FetchErrorKind::PolicyInvalid => "sts-policy-invalid",
        }
    }
}

/// A failed fetch: its kind and a sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {text}", kind.as_str())]
pub struct FetchError {
    pub kind: FetchErrorKind,
    pub text: String,
}

fn fail(kind: FetchErrorKind, text: impl Into<String>) -> FetchError {
    FetchError {
        kind,
        text: text.into(),
    }
}

/// Where and how to fetch.
#[derive(Clone)]
pub struct Fetcher {
    pub resolver: Arc<dyn Resolver>,
    /// Validates the policy host: webpki roots + `TrustedCaFile` + CRLs, the delivery
    /// engine's context (`None`: it could not be built, so no policy can be fetched).
    pub tls: Option<TlsContext>,
    /// 443, or `[Relay] MtaStsPolicyPort` in labs and tests.
    pub port: u16,
    /// The whole fetch's time limit.
    pub timeout: Duration,
}

impl Fetcher {
    /// Fetches and parses the policy of `domain`, within the time limit.
    pub async fn fetch(&self, domain: &str) -> Result<Policy, FetchError> {
        let body = tokio::time::timeout(self.timeout, self.get(domain))
            .await
            .map_err(|_| {
                fail(
                    FetchErrorKind::FetchError,
                    format!("timed out after {:?}", self.timeout),
                )
            })??;
        parse_policy(&body).map_err(|e| fail(FetchErrorKind::PolicyInvalid, e))
    }

    async fn get(&self, domain: &str) -> Result<String, FetchError> {
        let host = format!("mta-sts.{domain}");
        let f = |t: String| fail(FetchErrorKind::FetchError, t);
        let ips = self
            .resolver
            .ips(&host)
            .await
            .map_err(|e| f(format!("{host}: {e}")))?;
        let tls = self
            .tls
            .as_ref()
            .ok_or_else(|| f("TLS context unavailable".into()))?
            .client_config(
                TlsLevel::DomainValidation,
                Some(DomainPattern::Exact(host.clone())),
            )
            .map_err(|e| f(e.to_string()))?;
        let mut last = f(format!("{host}: no address"));
        for ip in ips {
            let addr = SocketAddr::new(ip, self.port);
            match get_from(addr, &host, tls.clone()).await {
                Ok(body) => return Ok(body),
                // Only connection failures move on to the next address: an answer, or a
                // certificate that does not validate, is the policy host's word.
                Err((e, true)) => last = e,
                Err((e, false)) => return Err(e),
            }
        }
        Err(last)
    }
}

/// One GET at one address. The flag says whether another address may be tried.
async fn get_from(
    addr: SocketAddr,
    host: &str,
    tls: Arc<rustls::ClientConfig>,
) -> Result<String, (FetchError, bool)> {
    let fetch_err = |t: String, next| (fail(FetchErrorKind::FetchError, t), next);
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| fetch_err(format!("connect {addr}: {e}"), true))?;
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| fetch_err(format!("{host}: {e}"), false))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| {
            let why = classify_tls_error(&e);
            let kind = match why.check {
                TlsCheck::Handshake => FetchErrorKind::FetchError,
                _ => FetchErrorKind::WebpkiInvalid,
            };
            (
                fail(kind, format!("{host} [{}]: {}", addr.ip(), why.reason)),
                false,
            )
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| fetch_err(format!("HTTP: {e}"), false))?;
    let driver = tokio::spawn(conn);
    let result = request(&mut sender, host).await;
    driver.abort();
    result.map_err(|e| (e, false))
}

async fn request(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    host: &str,
) -> Result<String, FetchError> {
    let f = |t: String| fail(FetchErrorKind::FetchError, t);
    let req = hyper::Request::get("/.well-known/mta-sts.txt")
        .header(hyper::header::HOST, host)
        .header(hyper::header::USER_AGENT, "connector-relay")
        .body(Empty::<Bytes>::new())
        .map_err(|e| f(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| f(format!("HTTP: {e}")))?;
    let status = resp.status();
    if status != hyper::StatusCode::OK {
        let what = if status.is_redirection() {
            " (redirects are not followed, RFC 8461 §3.3)"
        } else {
            ""
        };
        return Err(f(format!("HTTP status {status}{what}")));
    }
    let media = resp
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = media.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("text/plain") {
        return Err(f(format!(
            "media type {media:?}, not text/plain (RFC 8461 §3.2)"
        )));
    }
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| f(format!("body: {e} (limit {MAX_BODY} bytes)")))?
        .to_bytes();
    String::from_utf8(body.to_vec())
        .map_err(|_| fail(FetchErrorKind::PolicyInvalid, "body is not UTF-8"))
}
