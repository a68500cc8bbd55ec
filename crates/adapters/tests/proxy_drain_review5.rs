//! Review 5: the drain (SIGTERM, `POST /shutdown`, `rampart stop`) and connections the
//! proxy had already accepted when it began.
//!
//! docs/dataplane.md, "Stopping: the drain": the data plane closes its listening
//! socket first (a client that connects now is refused), closes idle keep-alive
//! connections at once, lets every request in flight finish, and "a connection still
//! sending its request head is closed by the header timeout before then". A
//! connection accepted before the drain, still in its TLS handshake (which "counts
//! against `limits.header_timeout`") or still sending its first request head, is
//! neither idle nor past its header timeout: its request must be answered. On hyper's
//! path it is (a fresh connection's first request is served with `Connection: close`);
//! on the lean HTTP/1.1 path (the default, `upstream_protocol: http1`) and during the
//! TLS handshake it is cut with no answer, so a client that connected a moment before
//! a rolling restart's SIGTERM sees a failed request.
//!
//! Nothing waits for a fixed time: the drain's start is observed by a new connection
//! being refused (the listener closes just before the open connections are told).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rampart_adapters::proxy::tls::{TlsFiles, TlsTerminator};
use rampart_adapters::proxy::{Proxy, ProxyOptions, ProxyServer};
use rampart_core::Variant;
use rampart_core::policy::{ProxyLimits, ProxyTls};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use common::backend;

/// The longest any test waits for something that must happen.
const PATIENCE: Duration = Duration::from_secs(10);

struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    root: CertificateDer<'static>,
}

impl Ca {
    fn new() -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let root = params.self_signed(&key).unwrap().der().clone();
        Ca {
            issuer: rcgen::Issuer::new(params, key),
            root,
        }
    }

    /// Writes a leaf for `names` to `NAME.pem` / `NAME.key` in `dir`.
    fn install(&self, dir: &Path, name: &str, names: &[&str]) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }

    fn connector(&self) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.root.clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

fn spec(tls: &str) -> ProxyTls {
    let policy = format!(
        "service: s\ndeploy:\n  process:\n    command: [\"./s\", \"{{port}}\"]\ntraffic:\n  proxy:\n    listen: 127.0.0.1:0\n    tls: {tls}\nstrategy:\n  canary:\n    steps:\n      - weight: 10\n        bake: 1m\nanalysis:\n  metrics:\n    - metric: error_rate\n      judge: {{ max: 1% }}\n"
    );
    rampart_core::Policy::from_yaml(&policy)
        .unwrap()
        .proxy()
        .unwrap()
        .tls
        .clone()
        .unwrap()
}

fn limits() -> ProxyLimits {
    ProxyLimits {
        header_timeout: Duration::from_secs(5),
        ..ProxyLimits::default()
    }
}

async fn proxy(tls: Option<TlsTerminator>) -> (Proxy, ProxyServer) {
    let (proxy, server) = Proxy::bind(
        "127.0.0.1:0".parse().unwrap(),
        ProxyOptions {
            limits: limits(),
            tls,
            ..ProxyOptions::default()
        },
    )
    .await
    .unwrap();
    proxy.set_backends(
        Variant::Stable,
        &[backend("stable", Arc::new(Notify::new())).await],
    );
    (proxy, server)
}

/// Connects, and waits until the proxy has accepted the connection.
async fn accepted(proxy: &Proxy, addr: SocketAddr) -> TcpStream {
    let before = proxy.open_connections();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while proxy.open_connections() == before {
        assert!(tokio::time::Instant::now() < deadline, "never accepted");
        tokio::task::yield_now().await;
    }
    tcp
}

/// Starts the drain (as SIGTERM does: `retire` false, a long deadline) and returns
/// once the listener is closed (a new connection is refused).
async fn drain(proxy: &Proxy, server: ProxyServer) -> tokio::task::JoinHandle<()> {
    let addr = server.local_addr();
    let stopping = tokio::spawn({
        let proxy = proxy.clone();
        async move {
            server
                .stop_accepting(&proxy, Duration::from_secs(600), false)
                .await;
        }
    });
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the drain never began"
        );
        tokio::task::yield_now().await;
    }
    stopping
}

/// A TLS client whose TCP connection the proxy accepted before the drain began, and
/// which says hello right after, is refused its handshake: the handshake task returns
/// on the drain's signal and drops the socket, and the cut is not even counted as a
/// handshake failure. It is neither idle nor past the header timeout the handshake
/// counts against.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_accepted_before_the_drain_has_its_request_answered() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    ca.install(dir.path(), "app", &["app.test"]);
    let files = TlsFiles::from_spec(
        &spec("{certificates: [{cert: app.pem, key: app.key}]}"),
        dir.path(),
    );
    let (proxy, server) = proxy(Some(TlsTerminator::new(files).unwrap())).await;
    let addr = server.local_addr();
    let tcp = accepted(&proxy, addr).await;
    let stopping = drain(&proxy, server).await;

    let name = ServerName::try_from("app.test".to_string()).unwrap();
    let tls = tokio::time::timeout(PATIENCE, ca.connector().connect(name, tcp))
        .await
        .unwrap();
    let tls = match tls {
        Ok(tls) => tls,
        Err(e) => panic!(
            "a client accepted before the drain had its TLS handshake cut ({e}); {:?} handshake failures counted",
            proxy.tls_handshake_failures()
        ),
    };
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get("/")
        .header("host", "app.test")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = tokio::time::timeout(PATIENCE, send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.as_ref(), b"stable");
    drop(send);
    tokio::time::timeout(PATIENCE, stopping)
        .await
        .unwrap()
        .unwrap();
}

/// A plain HTTP/1.1 client (the default lean path) half-way through its first request
/// head when the drain begins has the connection closed under it with no answer,
/// although the contract closes such a connection only at its header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_arriving_at_the_drain_is_answered_not_cut() {
    let (proxy, server) = proxy(None).await;
    let addr = server.local_addr();
    let mut tcp = accepted(&proxy, addr).await;
    tcp.write_all(b"GET / HTTP/1.1\r\nho").await.unwrap();
    let stopping = drain(&proxy, server).await;
    // The rest of the head, well within the header timeout.
    let _ = tcp.write_all(b"st: x\r\n\r\n").await;
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match tokio::time::timeout(PATIENCE, tcp.read(&mut chunk))
            .await
            .unwrap()
        {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.starts_with("HTTP/1.1 200") && got.ends_with("stable"),
        "the request whose head was arriving when the drain began got {got:?}, not its answer"
    );
    tokio::time::timeout(PATIENCE, stopping)
        .await
        .unwrap()
        .unwrap();
}
