//! Notification payloads against a local HTTP receiver: Slack blocks, PagerDuty Events
//! v2 trigger and resolve with one dedup key per release, a webhook signed with
//! HMAC-SHA256 over timestamp and body, and retries with backoff.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rampart_adapters::notify::HookNotifier;
use rampart_core::Weight;
use rampart_core::policy::{NotifyHook, NotifyTarget, Secret};
use rampart_core::ports::{Notice, Notifier};
use rampart_core::release::{Instead, NoticeKind};
use serde_json::Value;
use sha2::Sha256;
use tokio::net::TcpListener;

/// One request the receiver got: path, headers, JSON body.
type Got = (String, Vec<(String, String)>, Value);

#[derive(Default)]
struct Received {
    requests: Mutex<Vec<Got>>,
    raw: Mutex<Vec<String>>,
    /// Answer this status to the first `fail_first` requests.
    fail_first: AtomicU32,
    fail_status: AtomicU32,
}

async fn receiver(state: Arc<Received>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let state = state.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let state = state.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let headers = req
                            .headers()
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                            .collect();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        let to_pagerduty = path.contains("pagerduty");
                        state
                            .raw
                            .lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&body).into_owned());
                        state.requests.lock().unwrap().push((path, headers, json));
                        let mut resp = Response::new(Full::new(Bytes::from_static(b"{}")));
                        if state.fail_first.load(Ordering::SeqCst) > 0 {
                            state.fail_first.fetch_sub(1, Ordering::SeqCst);
                            *resp.status_mut() = StatusCode::from_u16(
                                state.fail_status.load(Ordering::SeqCst) as u16,
                            )
                            .unwrap();
                        } else if to_pagerduty {
                            *resp.status_mut() = StatusCode::ACCEPTED;
                        }
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn notice(kind: NoticeKind) -> Notice {
    Notice {
        kind,
        page: matches!(
            kind,
            NoticeKind::Halted | NoticeKind::Escalated | NoticeKind::Approval
        ),
        service: "shop".into(),
        release: "shop-20261122-1".into(),
        version: "v2".into(),
        stable: Some("v1".into()),
        weight: Weight::from_percent(20).unwrap(),
        message: "both versions are unhealthy".into(),
        instead: None,
        at: 1_795_000_000_500,
    }
}

fn hooks(target: NotifyTarget, on: Vec<&'static str>) -> HookNotifier {
    HookNotifier::new(vec![NotifyHook { target, on }]).with_retries(
        4,
        Duration::from_millis(10),
        Duration::from_secs(2),
    )
}

#[tokio::test]
async fn slack_gets_blocks_with_service_versions_reason_and_dashboard() {
    let got = Arc::new(Received::default());
    let addr = receiver(got.clone()).await;
    let n = hooks(
        NotifyTarget::Slack {
            url: Secret::Value(format!("http://{addr}/slack")),
            dashboard: Some("http://grafana.local/d/rampart-release".into()),
        },
        NoticeKind::CADENCE.to_vec(),
    );
    n.notify(&notice(NoticeKind::Halted)).await;
    let reqs = got.requests.lock().unwrap();
    let (path, _, body) = &reqs[0];
    assert_eq!(path, "/slack");
    assert_eq!(body["blocks"][0]["type"], "header");
    assert_eq!(body["blocks"][0]["text"]["text"], "shop v2: HALTED");
    let fields: Vec<&str> = body["blocks"][1]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["text"].as_str().unwrap())
        .collect();
    assert!(fields.contains(&"*Service*\nshop"), "{fields:?}");
    assert!(fields.contains(&"*Versions*\nv1 → v2"), "{fields:?}");
    assert_eq!(
        body["blocks"][2]["text"]["text"],
        "*Reason*\nboth versions are unhealthy"
    );
    assert_eq!(
        body["blocks"][3]["elements"][0]["url"],
        "http://grafana.local/d/rampart-release"
    );
    assert!(
        body["text"].as_str().unwrap().contains("HALTED"),
        "a text fallback"
    );
}

/// What a person may do travels as data: a chat renders it as the command to run, a
/// webhook gets the structure (and never a command line inside the message).
#[tokio::test]
async fn what_to_do_is_a_command_in_chat_and_data_in_a_webhook() {
    let got = Arc::new(Received::default());
    let addr = receiver(got.clone()).await;
    let slack = hooks(
        NotifyTarget::Slack {
            url: Secret::Value(format!("http://{addr}/slack")),
            dashboard: None,
        },
        NoticeKind::CADENCE.to_vec(),
    );
    let webhook = hooks(
        NotifyTarget::Webhook {
            url: format!("http://{addr}/hook"),
            secret: None,
        },
        NoticeKind::CADENCE.to_vec(),
    );
    let mut ask = notice(NoticeKind::Approval);
    ask.message = "release v2 of shop waits at 50 % for approval by ops (anyone but alice)".into();
    ask.instead = Some(Instead::Approve {
        release: "shop-20261122-1".into(),
        not_by: "alice".into(),
    });
    slack.notify(&ask).await;
    webhook.notify(&ask).await;
    let reqs = got.requests.lock().unwrap();
    let slack_body = &reqs.iter().find(|r| r.0 == "/slack").unwrap().2;
    assert_eq!(
        slack_body["blocks"][3]["text"]["text"],
        "*To act*\n`rampart approve shop-20261122-1 --as NAME` (anyone but alice)"
    );
    assert!(
        slack_body["text"]
            .as_str()
            .unwrap()
            .ends_with("To act: `rampart approve shop-20261122-1 --as NAME` (anyone but alice)"),
        "{}",
        slack_body["text"]
    );
    let hook_body = &reqs.iter().find(|r| r.0 == "/hook").unwrap().2;
    assert_eq!(
        hook_body["instead"],
        serde_json::json!({"action": "approve", "release": "shop-20261122-1", "not_by": "alice"})
    );
    assert!(
        !hook_body["message"]
            .as_str()
            .unwrap()
            .contains("rampart approve")
    );
}

#[tokio::test]
async fn pagerduty_triggers_then_resolves_under_one_dedup_key() {
    let got = Arc::new(Received::default());
    let addr = receiver(got.clone()).await;
    let n = hooks(
        NotifyTarget::PagerDuty {
            url: format!("http://{addr}/pagerduty/v2/enqueue"),
            routing_key: Secret::Value("R0UT1NGKEY".into()),
            dashboard: None,
        },
        vec!["approval", "halted", "escalated", "done", "step"],
    );
    n.notify(&notice(NoticeKind::Step)).await;
    n.notify(&notice(NoticeKind::Halted)).await;
    n.notify(&notice(NoticeKind::RolledBack)).await;
    let reqs = got.requests.lock().unwrap();
    assert_eq!(reqs.len(), 2, "a step is not an incident");
    let (trigger, resolve) = (&reqs[0].2, &reqs[1].2);
    assert_eq!(trigger["event_action"], "trigger");
    assert_eq!(trigger["routing_key"], "R0UT1NGKEY");
    assert_eq!(trigger["payload"]["severity"], "critical");
    assert_eq!(trigger["payload"]["source"], "rampart/shop");
    assert!(
        trigger["payload"]["summary"]
            .as_str()
            .unwrap()
            .contains("HALTED")
    );
    assert_eq!(resolve["event_action"], "resolve");
    assert_eq!(trigger["dedup_key"], resolve["dedup_key"]);
    assert_eq!(trigger["dedup_key"], "rampart-shop-20261122-1");
}

#[tokio::test]
async fn a_signed_webhook_carries_an_hmac_the_receiver_can_check() {
    let got = Arc::new(Received::default());
    let addr = receiver(got.clone()).await;
    let n = hooks(
        NotifyTarget::Webhook {
            url: format!("http://{addr}/hook"),
            secret: Some(Secret::Value("s3cret".into())),
        },
        vec!["halted"],
    );
    n.notify(&notice(NoticeKind::Halted)).await;
    let reqs = got.requests.lock().unwrap();
    let (_, headers, body) = &reqs[0];
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    let ts = header("x-rampart-timestamp");
    assert_eq!(ts, "1795000000");
    // What a receiver does: HMAC-SHA256(secret, timestamp "." raw body), compared.
    let raw = got.raw.lock().unwrap()[0].clone();
    let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
    mac.update(format!("{ts}.{raw}").as_bytes());
    let want: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(header("x-rampart-signature"), format!("v1={want}"));
    assert_eq!(body["kind"], "halted");
    assert_eq!(body["release"], "shop-20261122-1");
}

#[tokio::test]
async fn failures_are_retried_with_backoff_but_not_refusals() {
    let got = Arc::new(Received::default());
    let addr = receiver(got.clone()).await;
    let target = NotifyTarget::Webhook {
        url: format!("http://{addr}/hook"),
        secret: None,
    };
    got.fail_first.store(2, Ordering::SeqCst);
    got.fail_status.store(503, Ordering::SeqCst);
    hooks(target.clone(), vec!["halted"])
        .notify(&notice(NoticeKind::Halted))
        .await;
    assert_eq!(
        got.requests.lock().unwrap().len(),
        3,
        "two 503s, then delivered"
    );
    got.requests.lock().unwrap().clear();
    got.fail_first.store(1, Ordering::SeqCst);
    got.fail_status.store(400, Ordering::SeqCst);
    hooks(target, vec!["halted"])
        .notify(&notice(NoticeKind::Halted))
        .await;
    assert_eq!(
        got.requests.lock().unwrap().len(),
        1,
        "a 400 is our fault: no retry"
    );
}
