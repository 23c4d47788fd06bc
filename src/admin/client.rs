//! A client of the admin API for the command line (`connector-relay queue ...`): one
//! HTTP/1.1 request per connection through hyper's connection API, JSON in and out, the
//! bearer token read from `AdminTokenFile` (never printed: `Debug` hides it).
//!
//! Failures are sorted by who is at fault, because the CLI's exit code says so: an API
//! answer with a sentence (`400`, `404`, `409`) is the caller's input (exit 1); a relay
//! that does not answer, a refused token or a server error is a runtime failure (exit 2).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;
use tokio::net::TcpStream;

use crate::policy::model::RelaySettings;

/// How long a connection may take to open: a loopback relay answers at once, so a longer
/// wait means a firewall or a wrong address.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The whole request: an admin command waits on the queue task, which answers quickly
/// even when busy.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A path segment: everything but RFC 3986's unreserved characters is percent-encoded, so
/// the backslash of an Identity, a `:port` or a `/` stays inside its segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `id` as one URL path segment.
pub fn segment(id: &str) -> String {
    utf8_percent_encode(id, SEGMENT).to_string()
}

/// Why a request did not give an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers at the address (exit 2).
    #[error(
        "cannot reach the relay's admin API at {addr} (AdminListen): {reason}; is the relay running with this config?"
    )]
    Unreachable { addr: SocketAddr, reason: String },
    /// The API refused the request with a sentence: no such message or queue, an
    /// ambiguous next hop, a message under delivery (exit 1).
    #[error("{message}")]
    Refused { status: u16, message: String },
    /// Anything else: a wrong token, a server error, an answer that is not JSON (exit 2).
    #[error("{0}")]
    Failed(String),
}

impl ClientError {
    /// The CLI's exit code: 1 for input the API refused, 2 for a runtime failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Refused { .. } => 1,
            ClientError::Unreachable { .. } | ClientError::Failed(_) => 2,
        }
    }
}

/// The admin API of one relay.
pub struct AdminClient {
    addr: SocketAddr,
    token: String,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminClient")
            .field("addr", &self.addr)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl AdminClient {
    /// The relay of this `[Relay]` section: `AdminListen` (a wildcard address is reached
    /// on loopback) and the token in `AdminTokenFile`.
    pub fn for_relay(relay: &RelaySettings) -> Result<AdminClient, ClientError> {
        let addr = dialable(relay.admin_listen).ok_or_else(|| {
            ClientError::Failed(format!(
                "AdminListen is {} (a port chosen at start): the command line cannot find the running relay; set a fixed port",
                relay.admin_listen
            ))
        })?;
        let path = &relay.admin_token_file;
        let token = std::fs::read_to_string(path).map_err(|e| {
            ClientError::Failed(format!(
                "cannot read the admin token from {} (AdminTokenFile): {e}; the relay creates it when it starts",
                path.display()
            ))
        })?;
        Ok(AdminClient::new(addr, token.trim()))
    }

    pub fn new(addr: SocketAddr, token: &str) -> AdminClient {
        AdminClient {
            addr,
            token: token.to_string(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `method path` with `body` as JSON; the answer's JSON on a 2xx.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let request = self.request(method, path, body)?;
        let (status, bytes) = tokio::time::timeout(REQUEST_TIMEOUT, self.send(request))
            .await
            .map_err(|_| {
                ClientError::Failed(format!(
                    "the admin API at {} did not answer within {} s",
                    self.addr,
                    REQUEST_TIMEOUT.as_secs()
                ))
            })??;
        answer(status, &bytes)
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Request<Full<Bytes>>, ClientError> {
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.addr.to_string())
            .header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            );
        if body.is_some() {
            builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        builder
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| ClientError::Failed(format!("cannot build the request for {path}: {e}")))
    }

    /// One request on a new connection: the status and the whole body.
    async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let stream = self.connect().await?;
        let broken = |e: hyper::Error| {
            ClientError::Failed(format!("the admin API at {} broke off: {e}", self.addr))
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(broken)?;
        // The connection task drives the socket; it ends with the response (or an error,
        // which the request below reports).
        let driver = tokio::spawn(connection);
        let response = sender.send_request(request).await.map_err(broken)?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(broken)?;
        driver.abort();
        Ok((status, body.to_bytes()))
    }

    async fn connect(&self) -> Result<TcpStream, ClientError> {
        let unreachable = |reason: String| ClientError::Unreachable {
            addr: self.addr,
            reason,
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.addr)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(unreachable(e.to_string())),
            Err(_) => Err(unreachable(format!(
                "no connection within {} s",
                CONNECT_TIMEOUT.as_secs()
            ))),
        }
    }
}

/// The address to connect to for a listen address: a wildcard listener is reached on
/// loopback; port 0 (chosen at start) cannot be found.
fn dialable(listen: SocketAddr) -> Option<SocketAddr> {
    if listen.port() == 0 {
        return None;
    }
    let ip = match listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Some(SocketAddr::new(ip, listen.port()))
}

/// An answer as JSON, or the error it carries.
fn answer(status: StatusCode, body: &[u8]) -> Result<Value, ClientError> {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let sentence = json
        .as_ref()
        .and_then(|j| j.get("error"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
    match status {
        s if s.is_success() => json.ok_or_else(|| {
            ClientError::Failed(format!("the admin API answered {s} with a body that is not JSON"))
        }),
        StatusCode::UNAUTHORIZED => Err(ClientError::Failed(
            "the admin API refused the token of AdminTokenFile (was the file replaced after the relay started?)"
                .into(),
        )),
        s if s.is_client_error() => Err(ClientError::Refused {
            status: s.as_u16(),
            message: sentence,
        }),
        s => Err(ClientError::Failed(format!(
            "the admin API answered {s}: {sentence}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_stay_one_segment() {
        assert_eq!(segment("relay.contoso.test\\3"), "relay.contoso.test%5C3");
        assert_eq!(segment("127.0.0.1:2526"), "127.0.0.1%3A2526");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn wildcard_listeners_are_dialled_on_loopback() {
        let d = |s: &str| dialable(s.parse().unwrap()).map(|a| a.to_string());
        assert_eq!(d("0.0.0.0:8025").as_deref(), Some("127.0.0.1:8025"));
        assert_eq!(d("[::]:8025").as_deref(), Some("[::1]:8025"));
        assert_eq!(d("192.0.2.1:8025").as_deref(), Some("192.0.2.1:8025"));
        assert_eq!(d("127.0.0.1:0"), None);
    }

    #[test]
    fn answers_are_sorted_by_fault() {
        let e = answer(
            StatusCode::NOT_FOUND,
            br#"{"error":"no message with this id"}"#,
        );
        assert_eq!(
            e,
            Err(ClientError::Refused {
                status: 404,
                message: "no message with this id".into()
            })
        );
        assert_eq!(e.unwrap_err().exit_code(), 1);
        let e = answer(StatusCode::UNAUTHORIZED, b"{}").unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let e = answer(StatusCode::INTERNAL_SERVER_ERROR, b"boom").unwrap_err();
        assert_eq!(
            e.to_string(),
            "the admin API answered 500 Internal Server Error: boom"
        );
        assert_eq!(answer(StatusCode::OK, b"[1]"), Ok(serde_json::json!([1])));
    }

    #[test]
    fn the_token_is_not_in_debug() {
        let c = AdminClient::new("127.0.0.1:1".parse().unwrap(), "secret-token");
        assert!(!format!("{c:?}").contains("secret-token"));
    }
}
