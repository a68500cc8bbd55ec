//! The HAProxy router against a real HAProxy (Debian `haproxy`) started on loopback from
//! a temporary directory: weights set through the runtime API with no reload, read
//! back, a sticky split, draining by live sessions, and the request log HAProxy sends
//! rampart counted per variant.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::servers::{haproxy, haproxy_backends};
use common::{backend, get_body, share_of, until};
use rampart_adapters::accesslog::AccessLog;
use rampart_adapters::haproxy::HaproxyRouter;
use rampart_adapters::proxy::BuiltinMetrics;
use rampart_core::metrics::bucket_upper_ms;
use rampart_core::ports::{MetricsSource, TrafficRouter};
use rampart_core::{Variant, Weight};
use tokio::sync::Notify;

/// HAProxy with `slots` slots per variant and its request log received, and a router
/// pointing stable and canary at a backend each (answering with their names).
async fn split(slots: u32) -> (common::servers::Haproxy, AccessLog, HaproxyRouter) {
    let log = common::request_log("shop").await;
    let h = haproxy("shop", slots, log.local_addr());
    let router = HaproxyRouter::new(&h.socket, "shop");
    named_backends(&router).await;
    (h, log, router)
}

/// Points the router's stable and canary at a backend each, answering with their names.
async fn named_backends(router: &HaproxyRouter) {
    let hold = Arc::new(Notify::new());
    for (variant, name) in [(Variant::Stable, "stable"), (Variant::Canary, "canary")] {
        let addr = backend(name, hold.clone()).await;
        router.set_backends(variant, &[addr]).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_split_sticky_users_and_are_read_back_real_haproxy() {
    let (h, log, router) = split(3).await;
    let metrics = BuiltinMetrics::new(log.clone());
    assert_eq!(
        router.set_weight(Weight::ZERO, &[]).await.unwrap(),
        Weight::ZERO
    );
    assert_eq!(share_of(h.addr, "canary", 200).await, 0);

    let twenty = Weight::from_percent(20).unwrap();
    assert_eq!(router.set_weight(twenty, &[]).await.unwrap(), twenty);
    assert!(
        router
            .command("get weight shop/canary1")
            .await
            .unwrap()
            .starts_with("51")
    );
    let n = share_of(h.addr, "canary", 1000).await;
    assert!((140..=260).contains(&n), "{n} of 1000 users at 20%");
    // The same users again: sticky.
    assert_eq!(share_of(h.addr, "canary", 1000).await, n);

    router.set_weight(Weight::FULL, &[]).await.unwrap();
    assert_eq!(share_of(h.addr, "canary", 200).await, 200);

    // Match rules cannot be set at run time: refused, weight unchanged.
    let rule = rampart_core::policy::RouteMatch {
        source: rampart_core::policy::MatchSource::Header("x-beta".into()),
        values: vec![],
    };
    assert!(router.set_weight(twenty, &[rule]).await.is_err());
    assert_eq!(share_of(h.addr, "canary", 50).await, 50);

    // Every request of this test reaches rampart's request log, by variant: 2,650.
    router.set_weight(twenty, &[]).await.unwrap();
    for u in 0..100 {
        get_body(h.addr, "/fail", Some(&format!("user-{u}"))).await;
    }
    let expected_canary = share_of(h.addr, "canary", 100).await as u64;
    until("the request log", async || {
        let t = rampart_adapters::proxy::Totals::totals(&log);
        t.stable.requests + t.canary.requests == 2650
    })
    .await;
    let s = metrics.measure(&any_window()).await.unwrap();
    assert_eq!(
        s.canary.requests,
        2 * n as u64 + 200 + 50 + 2 * expected_canary
    );
    assert_eq!(s.stable.errors + s.canary.errors, 100, "the 503s of /fail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retired_slots_drain_before_they_are_reported_idle_real_haproxy() {
    let log = common::request_log("shop").await;
    let h = haproxy("shop", 3, log.local_addr());
    let hold = Arc::new(Notify::new());
    let a = backend("stable", hold.clone()).await;
    let b = backend("stable", hold.clone()).await;
    let router = Arc::new(HaproxyRouter::new(&h.socket, "shop"));
    router.set_backends(Variant::Stable, &[a, b]).await.unwrap();
    router.set_weight(Weight::ZERO, &[]).await.unwrap();
    // Requests held open on both replicas.
    let addr = h.addr;
    let held: Vec<_> = (0..6)
        .map(|u| {
            tokio::spawn(async move { get_body(addr, "/hold", Some(&format!("user-{u}"))).await })
        })
        .collect();
    let r = router.clone();
    until("six sessions", async || sessions(&r).await == 6).await;
    // Retire b: it leaves rotation at once, but is idle only once its requests finish.
    router.set_backends(Variant::Stable, &[a]).await.unwrap();
    let early = router
        .drain_endpoints(&[b], Duration::from_millis(200))
        .await;
    assert!(
        early.is_err(),
        "requests are still open on the retired replica"
    );
    hold.notify_waiters();
    for h in held {
        assert_eq!(h.await.unwrap().0, 200);
    }
    router
        .drain_endpoints(&[b], Duration::from_secs(5))
        .await
        .unwrap();
    // New requests only reach a.
    assert_eq!(share_of(h.addr, "stable", 50).await, 50);
}

/// Current sessions on the `shop` backend's servers, from `show stat`.
async fn sessions(r: &HaproxyRouter) -> u64 {
    let out = r.command("show stat").await.unwrap();
    out.lines()
        .filter(|l| l.starts_with("shop,stable") || l.starts_with("shop,canary"))
        .filter_map(|l| l.split(',').nth(4)?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipping_the_weight_under_load_fails_no_request_real_haproxy() {
    let (h, _log, router) = split(2).await;
    let addr = h.addr;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, 0u32);
            let mut u = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                u += 1;
                match get_body(addr, "/", Some(&format!("user-{u}")))
                    .await
                    .0
                    .as_u16()
                {
                    200 => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        })
    };
    for i in 0..20 {
        let w = if i % 2 == 0 {
            Weight::FULL
        } else {
            Weight::ZERO
        };
        router.set_weight(w, &[]).await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed) = load.await.unwrap();
    assert!(ok > 20, "{ok}");
    assert_eq!(
        failed, 0,
        "no request failed while the weight flipped 0 -> 100 -> 0"
    );
}

/// Regression (issue 21): the request log counted every line with a `stable<N>` or
/// `canary<N>` server, whatever its backend, so another service on the same HAProxy
/// (with the same slot names) was counted as this one's traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_backend_on_the_same_haproxy_is_not_counted_real_haproxy() {
    let log = common::request_log("shop").await;
    let h = haproxy_backends(&["shop", "other"], 1, log.local_addr());
    for name in ["shop", "other"] {
        let router = HaproxyRouter::new(&h.socket, name);
        named_backends(&router).await;
        router
            .set_weight(Weight::from_percent(50).unwrap(), &[])
            .await
            .unwrap();
    }
    // The other service fails every request, first; then ten good ones of ours.
    for u in 0..50 {
        assert_eq!(
            get_body(h.addrs[1], "/fail", Some(&format!("u{u}")))
                .await
                .0,
            503
        );
    }
    for u in 0..10 {
        assert_eq!(
            get_body(h.addrs[0], "/", Some(&format!("u{u}"))).await.0,
            200
        );
    }
    until("our ten requests logged", async || {
        let t = rampart_adapters::proxy::Totals::totals(&log);
        t.stable.requests + t.canary.requests >= 10
    })
    .await;
    let t = rampart_adapters::proxy::Totals::totals(&log);
    assert_eq!(
        (
            t.stable.requests + t.canary.requests,
            t.stable.errors + t.canary.errors
        ),
        (10, 0),
        "only backend shop's requests count"
    );
}

/// Regression (issue 21): with `%Tr` (time to response headers, like the embedded
/// proxy), a request no server answered logs `-1`; it must count as an error, not
/// vanish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_no_server_answered_counts_as_an_error_real_haproxy() {
    let log = common::request_log("shop").await;
    let h = haproxy("shop", 1, log.local_addr());
    let router = HaproxyRouter::new(&h.socket, "shop");
    let hold = Arc::new(Notify::new());
    router
        .set_backends(Variant::Stable, &[common::refusing()])
        .await
        .unwrap();
    router
        .set_backends(Variant::Canary, &[backend("canary", hold).await])
        .await
        .unwrap();
    router
        .set_weight(Weight::from_percent(50).unwrap(), &[])
        .await
        .unwrap();
    let mut refused = 0u64;
    for u in 0..20 {
        if get_body(h.addr, "/", Some(&format!("u{u}"))).await.0 == 503 {
            refused += 1;
        }
    }
    assert!(refused > 0, "some users hash to the refusing stable");
    until("the request log", async || {
        let t = rampart_adapters::proxy::Totals::totals(&log);
        t.stable.requests + t.canary.requests == 20
    })
    .await;
    let t = rampart_adapters::proxy::Totals::totals(&log);
    assert_eq!(t.stable.errors, refused);
    assert_eq!(
        t.stable.latency.count(),
        0,
        "no server answered: no latency"
    );
    assert_eq!(t.canary.latency.count(), 20 - refused);
}

/// Issue 21: with `%Tr %Ta`, a body sent 400 ms after the headers counts in the total
/// time (`latency_total_*`) and not in the time to headers, as behind the embedded
/// proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_time_includes_a_body_sent_after_the_headers_real_haproxy() {
    let log = common::request_log("shop").await;
    let h = haproxy("shop", 1, log.local_addr());
    let router = HaproxyRouter::new(&h.socket, "shop");
    let metrics = BuiltinMetrics::new(log.clone());
    let slow = common::slow_body_backend("stable", Duration::from_millis(400)).await;
    router.set_backends(Variant::Stable, &[slow]).await.unwrap();
    for u in 0..5 {
        let (status, body) = get_body(h.addr, "/", Some(&format!("u{u}"))).await;
        assert_eq!((status.as_u16(), body.as_str()), (200, "stable"));
    }
    until("the request log", async || {
        rampart_adapters::proxy::Totals::totals(&log)
            .stable
            .requests
            == 5
    })
    .await;
    let s = metrics.measure(&any_window()).await.unwrap().stable;
    assert_eq!(
        (s.latency.count(), s.latency_total.count()),
        (5, 5),
        "{s:?}"
    );
    let (slowest_headers, _) = s.latency.buckets().last().unwrap();
    let (fastest_total, _) = s.latency_total.buckets().next().unwrap();
    assert!(
        bucket_upper_ms(slowest_headers) < 400.0,
        "`%Tr` ends at the headers: {:?}",
        s.latency
    );
    assert!(
        bucket_upper_ms(fastest_total) >= 400.0,
        "`%Ta` includes the 400 ms body: {:?}",
        s.latency_total
    );
}

/// A window for counting sources, which report what they counted since the previous
/// call whatever the window says.
fn any_window() -> rampart_core::release::MeasureWindow {
    rampart_core::release::MeasureWindow {
        from: 0,
        to: 0,
        stable: Some("v1".into()),
        canary: "v2".into(),
    }
}

/// Regression: a router started after another one (a resumed release, `rampart stop
/// --canary`) took every slot for empty and the split for 0 %: its first change of
/// backends weighed the canary at 0 until the weight was set again, and a slot it then
/// retired stayed in service at its old weight, serving a canary about to stop. A new
/// release's router still starts from 0 %.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_started_later_keeps_the_split_and_slots_in_force_real_haproxy() {
    let log = common::request_log("shop").await;
    let h = haproxy("shop", 2, log.local_addr());
    let first = HaproxyRouter::new(&h.socket, "shop");
    let hold = Arc::new(Notify::new());
    let stable = backend("stable", hold.clone()).await;
    let canary = backend("canary", hold.clone()).await;
    first
        .set_backends(Variant::Stable, &[stable])
        .await
        .unwrap();
    first
        .set_backends(Variant::Canary, &[canary])
        .await
        .unwrap();
    let half = Weight::from_percent(50).unwrap();
    first.set_weight(half, &[]).await.unwrap();
    let before = weight(&first, "canary1").await;
    assert!(!before.starts_with('0'), "{before}");

    // Taken up again: the same backends set once more change nothing in force.
    let later = HaproxyRouter::new(&h.socket, "shop").keeping_the_split();
    later
        .set_backends(Variant::Stable, &[stable])
        .await
        .unwrap();
    assert_eq!(weight(&later, "canary1").await, before);
    let share = share_of(h.addr, "canary", 200).await;
    assert!((60..=140).contains(&share), "{share} of 200 on the canary");

    // A new release's router starts from 0 %, as the release thinks it does.
    let fresh = HaproxyRouter::new(&h.socket, "shop");
    fresh
        .set_backends(Variant::Stable, &[stable])
        .await
        .unwrap();
    let zero = weight(&fresh, "canary1").await;
    assert!(zero.starts_with("0 "), "{zero}");

    // Everything to stable, the canary retired: it serves nothing more.
    later.set_weight(Weight::ZERO, &[]).await.unwrap();
    later.set_backends(Variant::Canary, &[]).await.unwrap();
    assert_eq!(share_of(h.addr, "canary", 200).await, 0);
    let state = later.command("show servers state shop").await.unwrap();
    let canary1 = state.lines().find(|l| l.contains(" canary1 ")).unwrap();
    let admin: u32 = canary1.split_whitespace().nth(6).unwrap().parse().unwrap();
    assert_ne!(admin & 0x01, 0, "canary1 in maintenance: {canary1}");
}

/// A slot's weight as HAProxy reports it (`get weight`).
async fn weight(r: &HaproxyRouter, slot: &str) -> String {
    r.command(&format!("get weight shop/{slot}")).await.unwrap()
}
