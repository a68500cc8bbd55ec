//! https:// for notifications and adapter APIs: a local TLS server with a certificate
//! from a private CA (generated here), trusted only once its root is added.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rampart_adapters::http::{HttpError, send, tls};
use rampart_adapters::notify::HookNotifier;
use rampart_core::policy::{NotifyHook, NotifyTarget};
use rampart_core::ports::{Notice, Notifier};
use rampart_core::release::NoticeKind;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::sync::Mutex;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_endpoints_work_once_their_ca_is_trusted() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let bodies = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = bodies.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        seen.lock()
                            .await
                            .push(String::from_utf8_lossy(&body).into_owned());
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                            b"{\"ok\":true}",
                        ))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    let url = format!("https://localhost:{port}/hook");
    // Not signed by a known CA: refused.
    let e = send("GET", &url, None, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, HttpError::Tls { host, .. } if host == "localhost"),
        "{e}"
    );
    assert_eq!(tls::add_roots(cert.cert.pem().as_bytes()).unwrap(), 1);
    let (status, body) = send("GET", &url, None, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "{\"ok\":true}"));
    // A Slack hook over https.
    let n = HookNotifier::new(vec![NotifyHook {
        target: NotifyTarget::Slack {
            url: rampart_core::policy::Secret::Value(url.clone()),
            dashboard: None,
        },
        on: NoticeKind::CADENCE.to_vec(),
    }]);
    n.notify(&Notice {
        kind: NoticeKind::Promoted,
        page: false,
        service: "shop".into(),
        release: "r1".into(),
        version: "v2".into(),
        stable: Some("v1".into()),
        weight: rampart_core::Weight::FULL,
        message: "all steps passed".into(),
        instead: None,
        at: 0,
    })
    .await;
    let got = bodies.lock().await;
    assert!(got.last().unwrap().contains("shop v2: promoted"), "{got:?}");
}
