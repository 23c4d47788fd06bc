//! A tiny HTTP/1.1 client for the admin API tests (no HTTP client crate in the tree): one
//! request per connection, read to the end, chunked bodies decoded.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(30);

pub struct Resp {
    pub status: u16,
    /// Raw header lines.
    pub headers: String,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// One request on its own connection (`Connection: close`), read to the end.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Resp {
    let mut stream = TcpStream::connect(addr).await.expect("admin listener");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .expect("answer within 30 s")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, rest) = text.split_once("\r\n\r\n").expect("header end");
    let status = head[9..12].parse().unwrap();
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Resp {
        status,
        headers: head.to_string(),
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
}

/// Polls `check` (every 100 ms, up to 30 s) until it gives a value.
pub async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts the relay in-process from a config FILE (so it reloads and the admin API can
/// change it), with no DNS servers; answers the relay and the admin token, read from
/// `AdminTokenFile` (which the config must put in `token_dir`).
pub async fn start_relay_from_file(
    config: &std::path::Path,
    token_dir: &std::path::Path,
) -> (connector_relay::relay::RelayHandle, String) {
    start_relay_from_file_with_dns(config, token_dir, None).await
}

/// As [`start_relay_from_file`], resolving next hops through the loopback DNS server at
/// `dns` when given (MX routes).
pub async fn start_relay_from_file_with_dns(
    config: &std::path::Path,
    token_dir: &std::path::Path,
    dns: Option<SocketAddr>,
) -> (connector_relay::relay::RelayHandle, String) {
    use std::sync::Arc;
    let loaded = connector_relay::config::load_file(config).expect("valid test config");
    let resolver = connector_relay::dns::hickory::HickoryResolver::with_timeout(
        &dns.map(|d| vec![d]).unwrap_or_default(),
        Duration::from_secs(2),
    )
    .unwrap();
    let options = connector_relay::relay::StartOptions {
        config_path: Some(config.to_path_buf()),
        resolver: Some(Arc::new(resolver)),
        ..Default::default()
    };
    let relay = connector_relay::relay::start_with_options(Arc::new(loaded.policy), options)
        .await
        .expect("relay starts");
    let token = std::fs::read_to_string(token_dir.join("admin.token"))
        .unwrap()
        .trim()
        .to_string();
    (relay, token)
}
