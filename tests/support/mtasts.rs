//! A real HTTPS MTA-STS policy host on loopback: tokio-rustls with a certificate of the
//! test CA (`certs-test/sink.test.crt` names `*.sink.test`, so it is valid for
//! `mta-sts.sink.test`), and a few lines of HTTP/1.1. It serves
//! `/.well-known/mta-sts.txt` with whatever status, media type and body the test sets,
//! counts requests, and can be taken "down" (connections are closed at once, as a policy
//! host that cannot be reached).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

#[derive(Clone)]
struct Answer {
    status: &'static str,
    content_type: String,
    body: String,
    down: bool,
}

/// The policy host. Stops when dropped.
pub struct PolicyHost {
    pub addr: SocketAddr,
    answer: Arc<Mutex<Answer>>,
    requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for PolicyHost {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A policy text (CRLF line endings, as RFC 8461 §3.2 writes them).
pub fn policy(mode: &str, mx: &[&str], max_age: u64) -> String {
    let mut s = format!("version: STSv1\r\nmode: {mode}\r\n");
    for m in mx {
        s.push_str(&format!("mx: {m}\r\n"));
    }
    s.push_str(&format!("max_age: {max_age}\r\n"));
    s
}

impl PolicyHost {
    /// Serves `body` as `text/plain` with the certificate `cert`/`key` of certs-test.
    pub async fn start(cert: &str, key: &str, body: &str) -> PolicyHost {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(super::certs(cert))
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
        let key = PrivateKeyDer::from_pem_file(super::certs(key)).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = Arc::new(Mutex::new(Answer {
            status: "200 OK",
            content_type: "text/plain".into(),
            body: body.to_string(),
            down: false,
        }));
        let requests = Arc::new(AtomicUsize::new(0));
        let (a, r) = (answer.clone(), requests.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, answer, requests) = (acceptor.clone(), a.clone(), r.clone());
                tokio::spawn(async move {
                    let now = answer.lock().unwrap().clone();
                    if now.down {
                        return; // dropped: connection closed before TLS
                    }
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    requests.fetch_add(1, Ordering::SeqCst);
                    let head = String::from_utf8_lossy(&buf);
                    let (status, body) = if head.starts_with("GET /.well-known/mta-sts.txt ") {
                        (now.status, now.body)
                    } else {
                        ("404 Not Found", String::new())
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        now.content_type,
                        body.len()
                    );
                    let _ = tls.write_all(resp.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        PolicyHost {
            addr,
            answer,
            requests,
            task,
        }
    }

    pub fn set_body(&self, body: &str) {
        self.answer.lock().unwrap().body = body.to_string();
    }

    pub fn set_status(&self, status: &'static str) {
        self.answer.lock().unwrap().status = status;
    }

    pub fn set_content_type(&self, ct: &str) {
        self.answer.lock().unwrap().content_type = ct.to_string();
    }

    /// Down: every connection is closed before the TLS handshake.
    pub fn set_down(&self, down: bool) {
        self.answer.lock().unwrap().down = down;
    }

    /// Requests for any path answered so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}
