//! A real HTTPS endpoint on loopback (rustls + hyper, the test CA's `sink.test`
//! certificate, valid for `*.sink.test`) that answers every request 200 and keeps each one:
//! method, path, Content-Type and body. Plays a TLS-RPT `https:` rua.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, Clone)]
pub struct Captured {
    pub method: String,
    pub path: String,
    pub content_type: String,
    pub body: Vec<u8>,
}

pub struct HttpsSink {
    pub addr: SocketAddr,
    captured: Arc<Mutex<Vec<Captured>>>,
}

impl HttpsSink {
    pub async fn start() -> HttpsSink {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(super::certs("sink.test.crt"))
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
        let key = PrivateKeyDer::from_pem_file(super::certs("sink.test.key")).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let captured: Arc<Mutex<Vec<Captured>>> = Default::default();
        let keep = captured.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let keep = keep.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let keep = keep.clone();
                            async move {
                                let method = req.method().to_string();
                                let path = req.uri().path().to_string();
                                let content_type = req
                                    .headers()
                                    .get("content-type")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("")
                                    .to_string();
                                let body = req.into_body().collect().await?.to_bytes().to_vec();
                                keep.lock().unwrap().push(Captured {
                                    method,
                                    path,
                                    content_type,
                                    body,
                                });
                                Ok::<_, hyper::Error>(hyper::Response::new(Full::new(
                                    Bytes::from_static(b"ok"),
                                )))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        HttpsSink { addr, captured }
    }

    pub fn captured(&self) -> Vec<Captured> {
        self.captured.lock().unwrap().clone()
    }

    /// Waits (bounded) until `pred` holds for the captured requests.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&[Captured]) -> bool) -> Vec<Captured> {
        for _ in 0..600 {
            let got = self.captured();
            if pred(&got) {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "{what}: not seen within 60 s; captured: {:?}",
            self.captured().len()
        );
    }
}
