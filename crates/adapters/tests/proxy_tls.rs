//! TLS termination on the embedded proxy (`traffic.proxy.tls`) with real sockets on
//! loopback and a rustls client that trusts a test CA generated here (rcgen): an
//! HTTPS request is answered and counted in its variant, each SNI name gets its own
//! certificate, replaced files reach new handshakes while an open connection keeps
//! working, a bad replacement keeps the certificate in force, a client that never says
//! hello is closed at the header timeout, and plain HTTP to the TLS port fails and is
//! counted as a handshake failure, never as a version's error.
//!
//! Nothing waits for a fixed time: a reload is awaited by polling handshakes until the
//! new certificate is served, within a deadline.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rampart_adapters::proxy::tls::{TlsError, TlsFile, TlsFiles, TlsTerminator};
use rampart_adapters::proxy::{Proxy, ProxyOptions, ProxyServer};
use rampart_core::policy::{ProxyLimits, ProxyTls};
use rampart_core::{Variant, Weight};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use common::backend;

/// The longest any test waits for something that must happen.
const PATIENCE: Duration = Duration::from_secs(10);

/// A private CA and the leaf certificates it signs.
struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    root: CertificateDer<'static>,
}

/// A leaf certificate and its key, as PEM, and its DER to recognise it by.
struct Leaf {
    cert: String,
    key: String,
    der: CertificateDer<'static>,
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

    fn leaf(&self, names: &[&str]) -> Leaf {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A client that offers `http/1.1` alone in ALPN.
    fn connector(&self) -> tokio_rustls::TlsConnector {
        self.connector_offering(&[b"http/1.1"])
    }

    fn connector_offering(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.root.clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

/// Writes `leaf` to `NAME.pem` and `NAME.key` in `dir`, each through a new file
/// renamed over the old, as a rotation does.
fn install(dir: &Path, name: &str, leaf: &Leaf) {
    for (ext, text) in [("pem", &leaf.cert), ("key", &leaf.key)] {
        let tmp = dir.join(format!("{name}.{ext}.new"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(format!("{name}.{ext}"))).unwrap();
    }
}

/// The policy's `tls` section, decoded as `rampart validate` decodes it.
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

/// A TLS proxy over `dir`'s files, with a stable and a canary backend.
async fn tls_proxy(dir: &Path, tls: &str, limits: ProxyLimits) -> (Proxy, ProxyServer) {
    let files = TlsFiles::from_spec(&spec(tls), dir);
    let terminator = TlsTerminator::new(files)
        .unwrap()
        .poll_every(Duration::from_millis(50));
    let (proxy, server) = Proxy::bind(
        "127.0.0.1:0".parse().unwrap(),
        ProxyOptions {
            limits,
            tls: Some(terminator),
            ..ProxyOptions::default()
        },
    )
    .await
    .unwrap();
    let hold = Arc::new(Notify::new());
    proxy.set_backends(Variant::Stable, &[backend("stable", hold.clone()).await]);
    proxy.set_backends(Variant::Canary, &[backend("canary", hold).await]);
    (proxy, server)
}

/// A TLS connection to `addr` for `name`: the certificate the proxy presented, the
/// ALPN protocol agreed, and an HTTP/1 sender over it.
async fn connect(
    ca: &Ca,
    addr: SocketAddr,
    name: &str,
) -> (
    CertificateDer<'static>,
    Option<Vec<u8>>,
    SendRequest<Empty<Bytes>>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let server_name = ServerName::try_from(name.to_string()).unwrap();
    let tls = tokio::time::timeout(PATIENCE, ca.connector().connect(server_name, tcp))
        .await
        .unwrap()
        .unwrap();
    let (_, session) = tls.get_ref();
    let presented = session.peer_certificates().unwrap()[0].clone();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    (presented, alpn, send)
}

async fn get(send: &mut SendRequest<Empty<Bytes>>) -> (u16, String) {
    let req = hyper::Request::get("/")
        .header("host", "app.test")
        .body(Empty::new())
        .unwrap();
    // An HTTP/1 connection takes its next request once it has seen the last one's
    // end, which may come after the client has read the body.
    tokio::time::timeout(PATIENCE, send.ready())
        .await
        .unwrap()
        .unwrap();
    let resp = tokio::time::timeout(PATIENCE, send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Handshakes for `name` until the proxy presents `want`, within [`PATIENCE`].
async fn until_presented(ca: &Ca, addr: SocketAddr, name: &str, want: &CertificateDer<'_>) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if &connect(ca, addr, name).await.0 == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was not served within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `proxy` has counted `n` handshake failures.
async fn until_failures(proxy: &Proxy, n: u64) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while proxy.tls_handshake_failures() != Some(n) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?} handshake failures counted, not {n}",
            proxy.tls_handshake_failures()
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_request_is_answered_over_http1_and_counted_in_its_variant() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "site", &ca.leaf(&["app.test"]));
    let (proxy, server) = tls_proxy(
        dir.path(),
        "{cert: site.pem, key: site.key}",
        ProxyLimits::default(),
    )
    .await;
    proxy.set_weight(Weight::from_basis_points(10_000).unwrap());

    let (_, alpn, mut send) = connect(&ca, server.local_addr(), "app.test").await;
    assert_eq!(
        alpn.as_deref(),
        Some(&b"http/1.1"[..]),
        "a client that offers HTTP/1.1 alone gets it"
    );
    assert_eq!(get(&mut send).await, (200, "canary".to_string()));
    assert_eq!(get(&mut send).await, (200, "canary".to_string()));
    assert_eq!(proxy.routed(Variant::Canary), 2);
    assert_eq!(proxy.routed(Variant::Stable), 0);
    assert_eq!(proxy.tls_handshake_failures(), Some(0));
}

/// Issue 18: a client that offers `h2` and `http/1.1` gets HTTP/2, and each of its
/// streams is routed by weight and counted in its variant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_offering_h2_gets_http2_and_its_streams_are_routed() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "site", &ca.leaf(&["app.test"]));
    let (proxy, server) = tls_proxy(
        dir.path(),
        "{cert: site.pem, key: site.key}",
        ProxyLimits::default(),
    )
    .await;
    proxy.set_weight(Weight::from_percent(50).unwrap());

    let tcp = TcpStream::connect(server.local_addr()).await.unwrap();
    let name = ServerName::try_from("app.test".to_string()).unwrap();
    let tls = ca
        .connector_offering(&[b"h2", b"http/1.1"])
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    // 200 streams on the one connection, 20 at a time.
    let mut variants = Vec::new();
    for _ in 0..10 {
        let batch: Vec<_> = (0..20)
            .map(|_| {
                let mut send = send.clone();
                tokio::spawn(async move {
                    let req = hyper::Request::get("https://app.test/")
                        .body(Empty::<Bytes>::new())
                        .unwrap();
                    let resp = send.send_request(req).await.unwrap();
                    assert_eq!(resp.version(), hyper::Version::HTTP_2);
                    assert_eq!(resp.status(), 200);
                    String::from_utf8(
                        resp.into_body()
                            .collect()
                            .await
                            .unwrap()
                            .to_bytes()
                            .to_vec(),
                    )
                    .unwrap()
                })
            })
            .collect();
        for stream in batch {
            variants.push(stream.await.unwrap());
        }
    }
    let canary = variants.iter().filter(|v| *v == "canary").count();
    assert!((60..=140).contains(&canary), "{canary} of 200 at 50%");
    assert_eq!(proxy.routed(Variant::Canary), canary as u64);
    assert_eq!(proxy.totals().canary.requests, canary as u64);
    assert_eq!(proxy.totals().stable.requests, 200 - canary as u64);
    assert_eq!(
        proxy.open_connections(),
        1,
        "one connection carried them all"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sni_name_gets_its_own_certificate() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let (a, b, fallback) = (
        ca.leaf(&["a.test", "*.a.test"]),
        ca.leaf(&["b.test"]),
        ca.leaf(&["other.test", "c.test"]),
    );
    install(dir.path(), "a", &a);
    install(dir.path(), "b", &b);
    install(dir.path(), "fallback", &fallback);
    let (_proxy, server) = tls_proxy(
        dir.path(),
        "{certificates: [{cert: a.pem, key: a.key, names: [a.test, '*.a.test']}, {cert: b.pem, key: b.key, names: [B.test]}, {cert: fallback.pem, key: fallback.key}]}",
        ProxyLimits::default(),
    )
    .await;
    let addr = server.local_addr();
    assert!(connect(&ca, addr, "a.test").await.0 == a.der, "a.test");
    assert!(
        connect(&ca, addr, "www.a.test").await.0 == a.der,
        "*.a.test"
    );
    assert!(connect(&ca, addr, "b.test").await.0 == b.der, "b.test");
    assert!(
        connect(&ca, addr, "c.test").await.0 == fallback.der,
        "a name no certificate lists gets the default"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_files_reach_new_handshakes_while_an_open_connection_keeps_working() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (ca.leaf(&["app.test"]), ca.leaf(&["app.test"]));
    install(dir.path(), "site", &old);
    let (proxy, server) = tls_proxy(
        dir.path(),
        "{cert: site.pem, key: site.key}",
        ProxyLimits::default(),
    )
    .await;
    let addr = server.local_addr();
    let (presented, _, mut open) = connect(&ca, addr, "app.test").await;
    assert!(presented == old.der);
    assert_eq!(get(&mut open).await.0, 200);

    // Only the files change; the proxy's poll of their stamps finds them.
    install(dir.path(), "site", &new);
    until_presented(&ca, addr, "app.test", &new.der).await;
    assert_eq!(proxy.tls().unwrap().reloads(), 1);

    // The connection opened before the rotation still serves.
    assert_eq!(get(&mut open).await.0, 200);
    assert_eq!(proxy.tls_handshake_failures(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_replacement_keeps_the_certificate_in_force() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let good = ca.leaf(&["app.test"]);
    install(dir.path(), "site", &good);
    let (proxy, server) = tls_proxy(
        dir.path(),
        "{cert: site.pem, key: site.key}",
        ProxyLimits::default(),
    )
    .await;
    let addr = server.local_addr();
    let tls = proxy.tls().unwrap();

    // A truncated certificate, then a key that belongs to another certificate.
    std::fs::write(
        dir.path().join("site.pem"),
        "-----BEGIN CERTIFICATE-----\nMII",
    )
    .unwrap();
    let (_, e) = tls.reload().unwrap_err();
    assert_eq!(e.file(), TlsFile::Cert, "{e}");
    std::fs::write(dir.path().join("site.pem"), &good.cert).unwrap();
    std::fs::write(dir.path().join("site.key"), ca.leaf(&["x.test"]).key).unwrap();
    let (_, e) = tls.reload().unwrap_err();
    assert!(matches!(e, TlsError::Key { .. }), "{e}");
    assert!(e.to_string().contains("does not match"), "{e}");

    assert_eq!((tls.reloads(), tls.failed_reloads()), (0, 2));
    let (presented, _, mut send) = connect(&ca, addr, "app.test").await;
    assert!(presented == good.der, "the certificate in force stays");
    assert_eq!(get(&mut send).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_says_hello_is_closed_at_the_header_timeout() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "site", &ca.leaf(&["app.test"]));
    let limits = ProxyLimits {
        header_timeout: Duration::from_millis(300),
        ..ProxyLimits::default()
    };
    let (proxy, server) = tls_proxy(dir.path(), "{cert: site.pem, key: site.key}", limits).await;
    let mut silent = TcpStream::connect(server.local_addr()).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(PATIENCE, silent.read(&mut buf))
        .await
        .expect("the proxy never closed a connection that sent no ClientHello");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    until_failures(&proxy, 1).await;
    assert_eq!(proxy.open_connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_the_tls_port_fails_and_counts_as_a_handshake_failure_not_a_version_error() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "site", &ca.leaf(&["app.test"]));
    let (proxy, server) = tls_proxy(
        dir.path(),
        "{cert: site.pem, key: site.key}",
        ProxyLimits::default(),
    )
    .await;
    let mut plain = TcpStream::connect(server.local_addr()).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nhost: app.test\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(PATIENCE, plain.read_to_end(&mut answer))
        .await
        .expect("the proxy kept a plain-HTTP connection open");
    assert!(
        read.is_err() || !answer.starts_with(b"HTTP/"),
        "answered in plain HTTP: {:?}",
        String::from_utf8_lossy(&answer)
    );
    until_failures(&proxy, 1).await;
    let totals = proxy.totals();
    assert_eq!(
        (totals.stable.requests, totals.stable.errors),
        (0, 0),
        "a version was charged"
    );
    assert_eq!((totals.canary.requests, totals.canary.errors), (0, 0));
    let metrics =
        rampart_adapters::telemetry::Telemetry::new("s", Arc::new(proxy.clone())).render();
    assert!(
        metrics.contains("rampart_proxy_tls_handshake_failures_total{service=\"s\"} 1\n"),
        "{metrics}"
    );

    // The listener still serves TLS.
    let (_, _, mut send) = connect(&ca, server.local_addr(), "app.test").await;
    assert_eq!(get(&mut send).await.0, 200);
}

#[test]
fn unusable_files_are_refused_naming_the_file() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let good = ca.leaf(&["app.test"]);
    install(dir.path(), "site", &good);
    let check = |tls: &str| TlsFiles::from_spec(&spec(tls), dir.path()).check();
    assert!(check("{cert: site.pem, key: site.key}").is_ok());

    let (i, e) = check("{cert: missing.pem, key: site.key}").unwrap_err();
    assert_eq!((i, e.file()), (0, TlsFile::Cert), "{e}");
    let (_, e) = check("{cert: site.pem, key: site.pem}").unwrap_err();
    assert_eq!(e.file(), TlsFile::Key, "a certificate is no key: {e}");
    std::fs::write(dir.path().join("other.key"), ca.leaf(&["x.test"]).key).unwrap();
    let (i, e) = check(
        "{certificates: [{cert: site.pem, key: site.key, names: [a.test]}, {cert: site.pem, key: other.key}]}",
    )
    .unwrap_err();
    assert_eq!((i, e.file()), (1, TlsFile::Key), "{e}");
    assert!(e.to_string().contains("does not match"), "{e}");
}

/// A raw TLS connection to `addr` for `app.test` that has had one request answered
/// and then sat idle until the proxy parked it.
async fn parked_tls(
    ca: &Ca,
    proxy: &Proxy,
    addr: SocketAddr,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    // The count only grows: this connection's parking is the next one.
    let parked_before = proxy.parked_connections();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("app.test".to_string()).unwrap();
    let mut tls = tokio::time::timeout(PATIENCE, ca.connector().connect(name, tcp))
        .await
        .unwrap()
        .unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nhost: app.test\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"stable") {
        let n = tokio::time::timeout(PATIENCE, tls.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed mid-answer: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    common::until("the idle connection to park", async || {
        proxy.parked_connections() > parked_before
    })
    .await;
    tls
}

/// How the proxy ended `tls`: `Ok(())` for a TLS close (`close_notify`, then the end
/// of the stream); an error for a connection cut without it, which a client cannot
/// tell from a truncation attack.
async fn closed_cleanly(
    tls: &mut tokio_rustls::client::TlsStream<TcpStream>,
) -> std::io::Result<()> {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(PATIENCE, tls.read(&mut buf)).await {
        Ok(Ok(0)) => Ok(()),
        Ok(Ok(n)) => panic!("{n} more bytes on an idle connection"),
        Ok(Err(e)) => Err(e),
        Err(_) => panic!("the parked connection was never closed"),
    }
}

/// A parked TLS connection closed at its idle timeout, or when the proxy stops, is
/// closed as TLS says (`close_notify`), as a connection hyper still held would be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_tls_connection_is_closed_with_close_notify() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "site", &ca.leaf(&["app.test"]));
    let limits = ProxyLimits {
        idle_timeout: Duration::from_millis(800),
        ..ProxyLimits::default()
    };
    let (proxy, server) = tls_proxy(dir.path(), "{cert: site.pem, key: site.key}", limits).await;
    let addr = server.local_addr();

    let mut idle = parked_tls(&ca, &proxy, addr).await;
    closed_cleanly(&mut idle)
        .await
        .expect("closed at the idle timeout without close_notify");

    let mut stopped = parked_tls(&ca, &proxy, addr).await;
    server.close().await;
    closed_cleanly(&mut stopped)
        .await
        .expect("closed at the stop without close_notify");
}

/// A version answering every request with a body of `size` bytes, on keep-alive
/// connections.
async fn big_version(size: usize) -> SocketAddr {
    let mut answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n").into_bytes();
    answer.resize(answer.len() + size, b'x');
    common::raw::answering("127.0.0.1", answer).await
}

/// A large answer to a TLS client that reads slowly reaches it whole and at once,
/// on a kept-alive connection and on one the client asked to close. (The lean path
/// flushes after each write, as tokio-rustls asks: what the socket did not take
/// stays in the TLS stream's buffer until flushed. On this machine's loopback the
/// kernel's send buffer took every tail, so this passes without the flush too.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_answer_to_a_slow_tls_reader_is_flushed_whole() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "site", &ca.leaf(&["app.test"]));
    let limits = ProxyLimits {
        idle_timeout: Duration::from_secs(300),
        ..ProxyLimits::default()
    };
    let (proxy, server) = tls_proxy(dir.path(), "{cert: site.pem, key: site.key}", limits).await;
    let size = 4 << 20;
    proxy.set_backends(Variant::Stable, &[big_version(size).await]);
    proxy.set_weight(Weight::ZERO);
    for close in [false, true] {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(16 << 10).unwrap();
        let tcp = socket.connect(server.local_addr()).await.unwrap();
        let name = ServerName::try_from("app.test".to_string()).unwrap();
        let mut tls = ca.connector().connect(name, tcp).await.unwrap();
        let extra = if close { "connection: close\r\n" } else { "" };
        tls.write_all(format!("GET /big HTTP/1.1\r\nhost: app.test\r\n{extra}\r\n").as_bytes())
            .await
            .unwrap();
        let read = async {
            let mut got = Vec::new();
            let mut chunk = vec![0u8; 16 << 10];
            loop {
                if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n")
                    && got.len() >= end + 4 + size
                {
                    return;
                }
                let n = tls.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed after {} bytes (close: {close})", got.len());
                got.extend_from_slice(&chunk[..n]);
                // A slow reader (paced, the behaviour under test): the proxy's
                // socket stays full, so its last writes find no room.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), read)
            .await
            .unwrap_or_else(|_| panic!("the answer's end never came (close: {close})"));
    }
}
