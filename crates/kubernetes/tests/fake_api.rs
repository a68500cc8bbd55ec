//! The Kubernetes adapter against a FAKE API server (see `support`): every request the
//! adapter makes is scripted with its method, path, query and body, and answered from
//! canned objects. No cluster is involved; `scripts/e2e-kind.sh` runs a release
//! against a real one.

mod support;

use std::time::Duration;

use http::Method;
use rampart_core::ports::{Deployer, TrafficRouter};
use rampart_core::{Variant, Weight};
use serde_json::{Value, json};
use support::*;

fn pct(p: u8) -> Weight {
    Weight::from_percent(p).expect("a percentage")
}

fn no_check(_: &Value) {}

/// The Service of `service_selector` and `http_route`, selecting stable pods.
fn stable_service() -> Value {
    service(
        "checkout",
        json!({"app": "checkout", "rampart.dev/track": "stable"}),
    )
}

// === deploy ===

#[tokio::test(start_paused = true)]
async fn fake_api_deploy_canary_derives_from_stable_and_waits_for_the_new_generation() {
    let not_observed = Status {
        observed: 0,
        updated: 0,
        available: 0,
        total: 0,
    };
    let scenario = Scenario::new("derive and apply the canary")
        .get(deployments("checkout"), 200, stable("v1", 3))
        .get(deployments("checkout-canary"), 404, no_canary())
        .get(services("checkout"), 200, stable_service())
        .apply(
            deployments("checkout-canary"),
            |b| {
                assert_eq!(at(b, "kind"), "Deployment");
                assert_eq!(at(b, "metadata/name"), "checkout-canary");
                assert_eq!(at(b, "metadata/namespace"), NS);
                assert_eq!(at(b, "metadata/labels")["rampart.dev/track"], "canary");
                assert_eq!(at(b, "metadata/labels")["rampart.dev/version"], "v2");
                assert_eq!(at(b, "metadata/labels")["app"], "checkout");
                // Nothing the server owns is copied from the stable Deployment.
                for server_field in ["resourceVersion", "uid", "generation"] {
                    assert!(
                        at(b, "metadata").get(server_field).is_none(),
                        "{server_field}"
                    );
                }
                assert!(
                    at(b, "metadata/annotations")
                        .get("deployment.kubernetes.io/revision")
                        .is_none()
                );
                assert_eq!(
                    at(b, "metadata/annotations"),
                    &json!({"rampart.dev/derived-from": "checkout", "rampart.dev/version": "v2"})
                );
                assert!(b.get("status").is_none());
                assert_eq!(at(b, "spec/replicas"), 3);
                assert_eq!(
                    at(b, "spec/selector/matchLabels"),
                    &json!({"app": "checkout", "rampart.dev/track": "canary"})
                );
                let pod = at(b, "spec/template/metadata/labels");
                assert_eq!(pod["rampart.dev/track"], "canary");
                assert_eq!(pod["rampart.dev/version"], "v2");
                assert_eq!(
                    at(b, "spec/template/spec/containers/0/image"),
                    "registry.example.com/checkout:v2"
                );
                assert_eq!(
                    at(b, "spec/template/spec/containers/1/image"),
                    "registry.example.com/proxy:1",
                    "other containers keep their image"
                );
            },
            200,
            deployment("checkout-canary", "canary", "v2", 3, not_observed),
        )
        .get(
            deployments("checkout-canary"),
            200,
            deployment("checkout-canary", "canary", "v2", 3, not_observed),
        )
        .get(
            deployments("checkout-canary"),
            200,
            deployment(
                "checkout-canary",
                "canary",
                "v2",
                3,
                Status {
                    observed: 1,
                    updated: 3,
                    available: 1,
                    total: 3,
                },
            ),
        )
        .get(deployments("checkout-canary"), 200, canary("v2", 3));
    let started = tokio::time::Instant::now();
    let (out, written) = run(scenario, selector(), async |k| {
        k.deploy(Variant::Canary, "v2").await
    })
    .await;
    let d = out.unwrap();
    assert!(d.endpoints.is_empty() && d.retired.is_empty());
    assert!(d.detail.contains("checkout-canary"), "{}", d.detail);
    assert_eq!(written.len(), 1);
    // Two polls were not ready: two poll intervals of virtual time.
    assert_eq!(started.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn fake_api_canary_carries_no_gitops_tracking_label() {
    // Issue 22, item 6: with auto-sync and prune, Argo CD deletes what carries its
    // tracking label but is not in git. The canary Deployment is not in git.
    let mut tracked = stable("v1", 3);
    tracked["metadata"]["labels"] = json!({
        "app": "checkout",
        "app.kubernetes.io/instance": "shop-checkout",
        "app.kubernetes.io/managed-by": "Helm",
        "kustomize.toolkit.fluxcd.io/name": "apps",
        "helm.toolkit.fluxcd.io/name": "checkout",
        "team": "payments",
    });
    tracked["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] =
        json!("shop-checkout");
    tracked["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/instance"] =
        json!("shop-checkout");
    let scenario = Scenario::new("canary without tracking labels")
        .get(deployments("checkout"), 200, tracked)
        .get(deployments("checkout-canary"), 404, no_canary())
        .get(services("checkout"), 200, stable_service())
        .apply(
            deployments("checkout-canary"),
            |b| {
                assert_eq!(
                    at(b, "metadata/labels"),
                    &json!({
                        "app": "checkout",
                        "app.kubernetes.io/managed-by": "rampart",
                        "rampart.dev/track": "canary",
                        "rampart.dev/version": "v2",
                    })
                );
                // Selecting its pods still takes every label of the stable's selector.
                assert_eq!(
                    at(b, "spec/selector/matchLabels"),
                    &json!({"app": "checkout", "app.kubernetes.io/instance": "shop-checkout",
                            "rampart.dev/track": "canary"})
                );
                assert_eq!(
                    at(b, "spec/template/metadata/labels")["app.kubernetes.io/instance"],
                    "shop-checkout"
                );
            },
            200,
            canary("v2", 3),
        )
        .get(deployments("checkout-canary"), 200, canary("v2", 3));
    let (out, _) = run(scenario, selector(), async |k| {
        k.deploy(Variant::Canary, "v2").await
    })
    .await;
    out.unwrap();
}

#[tokio::test(start_paused = true)]
async fn fake_api_deploy_stable_applies_only_the_image() {
    let scenario = Scenario::new("stable keeps everything but the image")
        .get(deployments("checkout"), 200, stable("v1", 3))
        .apply(
            deployments("checkout"),
            |b| {
                assert_eq!(
                    at(b, "spec"),
                    &json!({"template": {"spec": {"containers": [
                        {"name": "app", "image": "registry.example.com/checkout:v1"}
                    ]}}})
                );
            },
            200,
            stable("v1", 3),
        )
        .get(deployments("checkout"), 200, stable("v1", 3));
    let (out, _) = run(scenario, http_route(), async |k| {
        k.deploy(Variant::Stable, "v1").await
    })
    .await;
    assert!(out.unwrap().detail.contains("checkout:v1"));
}

#[tokio::test(start_paused = true)]
async fn fake_api_deploy_stable_under_replica_ratio_applies_only_the_image() {
    // Replica counts go through the scale subresource: were `spec.replicas` in an
    // apply, a later apply without it (another mode) would remove it.
    let scenario = Scenario::new("replica_ratio applies no count")
        .get(deployments("checkout"), 200, stable("v1", 3))
        .apply(
            deployments("checkout"),
            |b| assert!(at(b, "spec").get("replicas").is_none(), "{b}"),
            200,
            stable("v1", 3),
        )
        .get(deployments("checkout"), 200, stable("v1", 3));
    let (out, _) = run(scenario, ratio(4), async |k| {
        k.deploy(Variant::Stable, "v1").await
    })
    .await;
    out.unwrap();
}

#[tokio::test(start_paused = true)]
async fn fake_api_stable_replicas_an_earlier_rampart_applied_are_applied_again() {
    // An earlier rampart applied `spec.replicas`: leaving it out now would remove it.
    let mut owned = stable("v1", 3);
    owned["metadata"]["managedFields"] = json!([{
        "manager": "rampart", "operation": "Apply", "fieldsType": "FieldsV1",
        "fieldsV1": {"f:spec": {"f:replicas": {}}}
    }]);
    let scenario = Scenario::new("replicas applied before")
        .get(deployments("checkout"), 200, owned)
        .apply(
            deployments("checkout"),
            |b| assert_eq!(at(b, "spec/replicas"), 3),
            200,
            stable("v1", 3),
        )
        .get(deployments("checkout"), 200, stable("v1", 3));
    let (out, _) = run(scenario, selector(), async |k| {
        k.deploy(Variant::Stable, "v1").await
    })
    .await;
    out.unwrap();
}

#[tokio::test(start_paused = true)]
async fn fake_api_deploy_fails_at_once_when_the_progress_deadline_passed() {
    let mut failed = deployment(
        "checkout-canary",
        "canary",
        "v2",
        3,
        Status {
            observed: 1,
            updated: 1,
            available: 0,
            total: 3,
        },
    );
    failed["status"]["conditions"] = json!([{
        "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
        "message": "ReplicaSet \"checkout-canary-5d4\" has timed out progressing."
    }]);
    let scenario = Scenario::new("progress deadline exceeded")
        .get(deployments("checkout"), 200, stable("v1", 3))
        .get(deployments("checkout-canary"), 404, no_canary())
        .get(services("checkout"), 200, stable_service())
        .apply(
            deployments("checkout-canary"),
            no_check,
            200,
            failed.clone(),
        )
        .get(deployments("checkout-canary"), 200, failed);
    let started = tokio::time::Instant::now();
    let (out, _) = run(scenario, selector(), async |k| {
        k.deploy(Variant::Canary, "v2").await
    })
    .await;
    let e = out.unwrap_err();
    assert!(e.0.contains("ProgressDeadlineExceeded"), "{e}");
    assert!(e.0.contains("timed out progressing"), "{e}");
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "no waiting on a failed rollout"
    );
}

#[tokio::test(start_paused = true)]
async fn fake_api_deploy_times_out_on_virtual_time() {
    let stuck = deployment(
        "checkout-canary",
        "canary",
        "v2",
        3,
        Status {
            observed: 1,
            updated: 3,
            available: 2,
            total: 3,
        },
    );
    let mut scenario = Scenario::new("never ready")
        .get(deployments("checkout"), 200, stable("v1", 3))
        .get(deployments("checkout-canary"), 404, no_canary())
        .get(services("checkout"), 200, stable_service())
        .apply(deployments("checkout-canary"), no_check, 200, stuck.clone());
    // Polled at 0 s, 1 s, 2 s and 3 s: then the 3 s budget is spent.
    for _ in 0..4 {
        scenario = scenario.get(deployments("checkout-canary"), 200, stuck.clone());
    }
    let mut spec = deploy_spec();
    spec.ready_timeout = Duration::from_secs(3);
    let started = tokio::time::Instant::now();
    let (out, _) = run_with(scenario, spec, selector(), async |k| {
        k.deploy(Variant::Canary, "v2").await
    })
    .await;
    let e = out.unwrap_err();
    assert!(e.0.contains("not ready after 3s"), "{e}");
    assert!(e.0.contains("2 of 3 replicas available"), "{e}");
    assert_eq!(started.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn fake_api_stable_without_the_track_label_is_refused_before_any_write() {
    let mut unlabelled = stable("v1", 3);
    unlabelled["spec"]["selector"]["matchLabels"] = json!({"app": "checkout"});
    let scenario = Scenario::new("stable lacks rampart.dev/track").get(
        deployments("checkout"),
        200,
        unlabelled,
    );
    let (out, written) = run(scenario, selector(), async |k| {
        k.deploy(Variant::Canary, "v2").await
    })
    .await;
    let e = out.unwrap_err();
    assert!(e.0.contains("rampart.dev/track: stable"), "{e}");
    assert!(written.is_empty());
}

#[tokio::test(start_paused = true)]
async fn fake_api_a_service_that_would_select_the_canary_is_refused_before_it_starts() {
    // Issue 22, item 7: a Service selecting `{app: checkout}` selects the canary's pods
    // too, and would send them traffic before any analysis.
    for (mode, selector_labels, expected) in [
        (
            selector(),
            json!({"app": "checkout"}),
            "needs `rampart.dev/track: stable`",
        ),
        (
            http_route(),
            json!({"app": "checkout", "rampart.dev/track": "canary"}),
            "needs `rampart.dev/track: stable`",
        ),
        (
            selector(),
            json!({"app": "payments", "rampart.dev/track": "stable"}),
            "selects `app: payments`",
        ),
    ] {
        let scenario = Scenario::new("Service checked")
            .get(deployments("checkout"), 200, stable("v1", 3))
            .get(deployments("checkout-canary"), 404, no_canary())
            .get(
                services("checkout"),
                200,
                service("checkout", selector_labels),
            );
        let (out, written) = run(scenario, mode, async |k| {
            k.deploy(Variant::Canary, "v2").await
        })
        .await;
        let e = out.unwrap_err();
        assert!(e.0.contains(expected), "{e}");
        assert!(written.is_empty(), "nothing written");
    }
}

#[tokio::test(start_paused = true)]
async fn fake_api_missing_stable_deployment_is_named() {
    let scenario = Scenario::new("no stable Deployment").get(
        deployments("checkout"),
        404,
        not_found("deployments.apps", "checkout"),
    );
    let (out, _) = run(scenario, selector(), async |k| {
        k.deploy(Variant::Canary, "v2").await
    })
    .await;
    let e = out.unwrap_err();
    assert_eq!(
        e.0, "Deployment `checkout` not found in namespace `shop`",
        "{e}"
    );
}

#[tokio::test(start_paused = true)]
async fn fake_api_stable_version_is_read_from_the_image() {
    let scenario =
        Scenario::new("version of stable").get(deployments("checkout"), 200, stable("v1.4.1", 3));
    let (out, _) = run(scenario, selector(), async |k| k.stable_version().await).await;
    assert_eq!(out.unwrap().as_deref(), Some("v1.4.1"));
}

#[tokio::test(start_paused = true)]
async fn fake_api_reapplying_the_canary_twice_writes_the_same_body() {
    let mut scenario = Scenario::new("idempotent re-apply");
    for _ in 0..2 {
        scenario = scenario
            .get(deployments("checkout"), 200, stable("v1", 3))
            .get(deployments("checkout-canary"), 404, no_canary())
            .get(services("checkout"), 200, stable_service())
            .apply(
                deployments("checkout-canary"),
                no_check,
                200,
                canary("v2", 3),
            )
            .get(deployments("checkout-canary"), 200, canary("v2", 3));
    }
    let (out, written) = run(scenario, selector(), async |k| {
        let first = k.deploy(Variant::Canary, "v2").await;
        let second = k.deploy(Variant::Canary, "v2").await;
        (first, second)
    })
    .await;
    let (first, second) = out;
    assert_eq!(first.unwrap(), second.unwrap());
    assert_eq!(written.len(), 2);
    assert_eq!(written[0], written[1]);
}

// === scale, stop, promote ===

#[tokio::test(start_paused = true)]
async fn fake_api_scale_sets_the_canary_replicas_and_trim_asks_nothing() {
    let scenario = Scenario::new("scale the canary")
        .get(deployments("checkout"), 200, stable("v1", 3))
        .apply(
            deployments("checkout-canary"),
            |b| assert_eq!(at(b, "spec/replicas"), 2),
            200,
            canary("v2", 2),
        )
        .get(deployments("checkout-canary"), 200, canary("v2", 2));
    let (out, _) = run(scenario, selector(), async |k| {
        let scaled = k.scale(Variant::Canary, "v2", 2).await;
        let trimmed = k.trim(Variant::Canary, 2).await;
        (scaled, trimmed)
    })
    .await;
    let (scaled, trimmed) = out;
    let d = scaled.unwrap();
    assert!(d.retired.is_empty(), "Kubernetes retires pods itself");
    assert!(trimmed.unwrap().contains("Kubernetes stops the rest"));
}

#[tokio::test(start_paused = true)]
async fn fake_api_stop_scales_the_canary_to_zero_then_deletes_it() {
    let scenario = Scenario::new("stop the canary")
        .get(deployments("checkout-canary"), 200, canary("v2", 3))
        .apply(
            deployments("checkout-canary"),
            |b| {
                assert_eq!(at(b, "spec/replicas"), 0);
                assert_eq!(
                    at(b, "spec/selector/matchLabels")["rampart.dev/track"],
                    "canary"
                );
                assert_eq!(
                    at(b, "metadata/annotations"),
                    &json!({"rampart.dev/derived-from": "checkout"}),
                    "rampart's own annotations only: the revision stays the controller's"
                );
                assert!(at(b, "metadata").get("resourceVersion").is_none());
            },
            200,
            canary("v2", 0),
        )
        .delete(deployments("checkout-canary"), 200, canary("v2", 0));
    let (out, _) = run(scenario, selector(), async |k| {
        k.stop(Variant::Canary).await
    })
    .await;
    assert!(out.unwrap().contains("scaled to 0 and deleted"));
}

#[tokio::test(start_paused = true)]
async fn fake_api_stop_of_a_canary_that_is_gone_succeeds() {
    let scenario = Scenario::new("stop twice")
        .get(
            deployments("checkout-canary"),
            404,
            not_found("deployments.apps", "checkout-canary"),
        )
        .get(deployments("checkout-canary"), 200, canary("v2", 3))
        .apply(
            deployments("checkout-canary"),
            no_check,
            200,
            canary("v2", 0),
        )
        .delete(
            deployments("checkout-canary"),
            404,
            not_found("deployments.apps", "checkout-canary"),
        );
    let (out, _) = run(scenario, selector(), async |k| {
        (k.stop(Variant::Canary).await, k.stop(Variant::Canary).await)
    })
    .await;
    assert!(out.0.unwrap().contains("already gone"));
    assert!(
        out.1.unwrap().contains("already deleted"),
        "a 404 on delete is success"
    );
}

#[tokio::test(start_paused = true)]
async fn fake_api_a_deployment_rampart_did_not_derive_is_neither_overwritten_nor_deleted() {
    // Issue 22, item 11: someone's own `checkout-canary` is not rampart's canary.
    let mut theirs = canary("v7", 2);
    theirs["metadata"]["annotations"] = json!({"deployment.kubernetes.io/revision": "1"});
    let scenario = Scenario::new("not rampart's canary")
        .get(deployments("checkout"), 200, stable("v1", 3))
        .get(deployments("checkout-canary"), 200, theirs.clone())
        .get(deployments("checkout-canary"), 200, theirs);
    let (out, written) = run(scenario, selector(), async |k| {
        (
            k.deploy(Variant::Canary, "v2").await,
            k.stop(Variant::Canary).await,
        )
    })
    .await;
    for e in [out.0.unwrap_err(), out.1.unwrap_err()] {
        assert!(
            e.0.contains("rampart did not derive it from `checkout`"),
            "{e}"
        );
    }
    assert!(written.is_empty(), "nothing written");
}

#[tokio::test(start_paused = true)]
async fn fake_api_promotion_moves_stable_to_the_new_image_then_removes_the_canary() {
    let scenario = Scenario::new("promote under service_selector")
        .get(deployments("checkout-canary"), 200, canary("v2", 3))
        .get(deployments("checkout"), 200, stable("v1", 3))
        .apply(
            deployments("checkout"),
            |b| {
                assert_eq!(
                    at(b, "spec/template/spec/containers/0/image"),
                    "registry.example.com/checkout:v2"
                );
                assert!(at(b, "spec").get("replicas").is_none());
            },
            200,
            stable("v2", 3),
        )
        .get(deployments("checkout"), 200, stable("v2", 3))
        // Traffic back to stable, now on v2, before the canary goes.
        .get(deployments("checkout"), 200, stable("v2", 3))
        .apply(
            services("checkout"),
            |b| assert_eq!(at(b, "spec/selector")["rampart.dev/track"], "stable"),
            200,
            service(
                "checkout",
                json!({"app": "checkout", "rampart.dev/track": "stable"}),
            ),
        )
        .get(
            services("checkout"),
            200,
            service(
                "checkout",
                json!({"app": "checkout", "rampart.dev/track": "stable"}),
            ),
        )
        .get(deployments("checkout-canary"), 200, canary("v2", 3))
        .apply(
            deployments("checkout-canary"),
            |b| assert_eq!(at(b, "spec/replicas"), 0),
            200,
            canary("v2", 0),
        )
        .delete(deployments("checkout-canary"), 200, canary("v2", 0));
    let (out, _) = run(scenario, selector(), async |k| {
        k.stop(Variant::Stable).await
    })
    .await;
    let detail = out.unwrap();
    assert!(detail.contains("promoted"), "{detail}");
    assert!(detail.contains("checkout:v2"), "{detail}");
}

#[tokio::test(start_paused = true)]
async fn fake_api_promotion_under_replica_ratio_gives_stable_every_replica() {
    let scenario = Scenario::new("promote under replica_ratio")
        .get(deployments("checkout-canary"), 200, canary("v2", 4))
        .get(deployments("checkout"), 200, stable("v1", 0))
        .get(hpas(), 200, hpa_list(vec![]))
        .apply(
            deployments("checkout"),
            |b| {
                assert!(at(b, "spec").get("replicas").is_none());
                assert_eq!(
                    at(b, "spec/template/spec/containers/0/image"),
                    "registry.example.com/checkout:v2"
                );
            },
            200,
            stable("v2", 0),
        )
        .scale(deployments("checkout"), 4)
        .get(deployments("checkout"), 200, stable("v2", 4))
        .get(deployments("checkout-canary"), 200, canary("v2", 4))
        .apply(
            deployments("checkout-canary"),
            no_check,
            200,
            canary("v2", 0),
        )
        .delete(deployments("checkout-canary"), 200, canary("v2", 0));
    let (out, _) = run(scenario, ratio(4), async |k| k.stop(Variant::Stable).await).await;
    out.unwrap();
}

#[tokio::test(start_paused = true)]
async fn fake_api_verify_checks_readiness() {
    let scenario =
        Scenario::new("verify stable").get(deployments("checkout"), 200, stable("v1", 3));
    let (out, _) = run(scenario, selector(), async |k| {
        k.verify(Variant::Stable, Duration::from_secs(5)).await
    })
    .await;
    assert!(out.unwrap().contains("3 replica(s) ready"));
}

// === traffic ===

fn ratio_split() -> Scenario {
    Scenario::new("replica_ratio 1 of 4")
        .get(deployments("checkout"), 200, stable("v1", 4))
        .get(deployments("checkout-canary"), 200, canary("v2", 0))
        .get(hpas(), 200, hpa_list(vec![]))
        .apply(
            deployments("checkout-canary"),
            |b| assert_eq!(at(b, "spec/replicas"), 1),
            200,
            canary("v2", 1),
        )
        .get(deployments("checkout-canary"), 200, canary("v2", 1))
        // The stable shrinks through its scale subresource: its image is not touched.
        .scale(deployments("checkout"), 3)
        // Then the count it was set to is recorded on the canary (an HPA's growth
        // above it is followed at the next step).
        .merge(
            deployments("checkout-canary"),
            |b| {
                assert_eq!(
                    b,
                    &json!({"metadata": {"annotations": {"rampart.dev/stable-set": "3"}}})
                )
            },
            200,
            canary("v2", 1),
        )
        .get(deployments("checkout"), 200, stable("v1", 3))
        .get(deployments("checkout-canary"), 200, canary("v2", 1))
}

#[tokio::test(start_paused = true)]
async fn fake_api_replica_ratio_moves_replicas_and_reads_the_weight_back() {
    let (out, _) = run(ratio_split(), ratio(4), async |k| {
        k.set_weight(pct(25), &[]).await
    })
    .await;
    assert_eq!(out.unwrap(), pct(25));
}

#[tokio::test(start_paused = true)]
async fn fake_api_replica_ratio_reports_the_weight_it_could_make() {
    // 5 % of 4 replicas is not a pod: one pod is, and that is 25 %.
    let (out, _) = run(ratio_split(), ratio(4), async |k| {
        k.set_weight(pct(5), &[]).await
    })
    .await;
    assert_eq!(out.unwrap(), pct(25));
}

#[tokio::test(start_paused = true)]
async fn fake_api_service_selector_switches_to_the_canary_and_reads_back() {
    let scenario = Scenario::new("selector to canary")
        .get(deployments("checkout"), 200, stable("v1", 3))
        .apply(
            services("checkout"),
            |b| {
                assert_eq!(
                    at(b, "spec"),
                    &json!({"selector": {"app": "checkout", "rampart.dev/track": "canary"}})
                );
            },
            200,
            service(
                "checkout",
                json!({"app": "checkout", "rampart.dev/track": "canary"}),
            ),
        )
        .get(
            services("checkout"),
            200,
            service(
                "checkout",
                json!({"app": "checkout", "rampart.dev/track": "canary"}),
            ),
        );
    let (out, _) = run(scenario, selector(), async |k| {
        k.set_weight(Weight::FULL, &[]).await
    })
    .await;
    assert_eq!(out.unwrap(), Weight::FULL);
}

#[tokio::test(start_paused = true)]
async fn fake_api_service_selector_reports_what_the_server_kept() {
    // A webhook (or another manager) kept the stable selector: the read-back says so.
    let scenario = Scenario::new("selector not switched")
        .get(deployments("checkout"), 200, stable("v1", 3))
        .apply(
            services("checkout"),
            no_check,
            200,
            service(
                "checkout",
                json!({"app": "checkout", "rampart.dev/track": "stable"}),
            ),
        )
        .get(
            services("checkout"),
            200,
            service(
                "checkout",
                json!({"app": "checkout", "rampart.dev/track": "stable"}),
            ),
        );
    let (out, _) = run(scenario, selector(), async |k| {
        k.set_weight(Weight::FULL, &[]).await
    })
    .await;
    assert_eq!(out.unwrap(), Weight::ZERO);
}

#[tokio::test(start_paused = true)]
async fn fake_api_service_selector_rejects_a_partial_weight_without_a_request() {
    let (out, written) = run(Scenario::new("no request"), selector(), async |k| {
        k.set_weight(pct(50), &[]).await
    })
    .await;
    let e = out.unwrap_err();
    assert!(e.0.contains("0 % or 100 %"), "{e}");
    assert!(written.is_empty());
}

#[tokio::test(start_paused = true)]
async fn fake_api_http_route_weighs_stable_against_a_canary_service() {
    let mut stable_svc = service(
        "checkout",
        json!({"app": "checkout", "rampart.dev/track": "stable"}),
    );
    stable_svc["spec"]["ports"][0]["appProtocol"] = json!("kubernetes.io/h2c");
    stable_svc["metadata"]["annotations"] = json!({
        "konghq.com/protocol": "grpc",
        "argocd.argoproj.io/tracking-id": "shop:/Service:shop/checkout",
        "kubectl.kubernetes.io/last-applied-configuration": "{}",
    });
    let scenario = Scenario::new("route at 10 %")
        .get(deployments("checkout"), 200, stable("v1", 3))
        .get(services("checkout"), 200, stable_svc)
        .apply(
            services("checkout-canary"),
            |b| {
                assert_eq!(
                    at(b, "metadata/labels"),
                    &json!({"rampart.dev/track": "canary"})
                );
                assert_eq!(
                    at(b, "spec/selector"),
                    &json!({"app": "checkout", "rampart.dev/track": "canary"})
                );
                assert_eq!(
                    at(b, "spec/ports"),
                    &json!([{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP",
                             "appProtocol": "kubernetes.io/h2c"}]),
                    "the canary share reaches the pods with the same protocol"
                );
                assert_eq!(
                    at(b, "metadata/annotations"),
                    &json!({"konghq.com/protocol": "grpc", "rampart.dev/derived-from": "checkout"}),
                    "a gateway's annotations are kept; a GitOps tool's and kubectl's are not; rampart marks it its own"
                );
            },
            200,
            service(
                "checkout-canary",
                json!({"app": "checkout", "rampart.dev/track": "canary"}),
            ),
        )
        .get(routes("checkout"), 200, route(None, None))
        .apply(
            routes("checkout"),
            |b| {
                assert_eq!(at(b, "apiVersion"), "gateway.networking.k8s.io/v1");
                assert_eq!(at(b, "kind"), "HTTPRoute");
                assert!(
                    at(b, "spec").get("parentRefs").is_none(),
                    "parentRefs stay the owner's"
                );
                assert!(at(b, "metadata").get("resourceVersion").is_none());
                assert_eq!(
                    at(b, "spec/rules/0/backendRefs"),
                    &json!([
                        {"name": "checkout", "port": 80, "weight": 9000},
                        {"name": "checkout-canary", "port": 80, "weight": 1000}
                    ])
                );
                assert_eq!(
                    at(b, "spec/rules/1/backendRefs"),
                    &json!([{"name": "admin", "port": 80}]),
                    "rules that do not send to the service are kept as they are"
                );
                assert_eq!(at(b, "spec/rules/0/matches/0/path/value"), "/");
            },
            200,
            route(Some(9000), Some(1000)),
        )
        .get(routes("checkout"), 200, route(Some(9000), Some(1000)));
    let (out, _) = run(scenario, http_route(), async |k| {
        k.set_weight(pct(10), &[]).await
    })
    .await;
    assert_eq!(out.unwrap(), pct(10));
}

/// The exchanges of a weight change under `http_route` up to the route's apply, the
/// route as `before`.
fn route_change(before: Value) -> Scenario {
    Scenario::new("route change")
        .get(deployments("checkout"), 200, stable("v1", 3))
        .get(services("checkout"), 200, stable_service())
        .apply(
            services("checkout-canary"),
            no_check,
            200,
            service("checkout-canary", json!({})),
        )
        .get(routes("checkout"), 200, before)
}

#[tokio::test(start_paused = true)]
async fn fake_api_http_route_reads_back_the_weight_in_force() {
    let kept = route(Some(9500), Some(500));
    let scenario = route_change(kept.clone())
        .apply(routes("checkout"), no_check, 200, kept.clone())
        .get(routes("checkout"), 200, kept);
    let (out, _) = run(scenario, http_route(), async |k| {
        k.set_weight(pct(20), &[]).await
    })
    .await;
    assert_eq!(out.unwrap(), pct(5));
}

fn route_at(generation: i64, parent: Value) -> Value {
    let mut r = route(Some(9000), Some(1000));
    r["metadata"]["generation"] = json!(generation);
    r["status"]["parents"] = json!([parent]);
    r
}

#[tokio::test(start_paused = true)]
async fn fake_api_http_route_weight_counts_once_the_gateway_has_accepted_it() {
    // Issue 22, item 3: the spec alone is not the weight in force; the Gateway's
    // status for the route's current generation is.
    let scenario = route_change(route(None, None))
        .apply(
            routes("checkout"),
            no_check,
            200,
            route_at(2, route_parent(1, "True", "Accepted")),
        )
        .get(
            routes("checkout"),
            200,
            route_at(2, route_parent(1, "True", "Accepted")),
        )
        .get(
            routes("checkout"),
            200,
            route_at(2, route_parent(2, "True", "Accepted")),
        );
    let started = tokio::time::Instant::now();
    let (out, _) = run(scenario, http_route(), async |k| {
        k.set_weight(pct(10), &[]).await
    })
    .await;
    assert_eq!(out.unwrap(), pct(10));
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(1),
        "one poll for the Gateway"
    );
}

#[tokio::test(start_paused = true)]
async fn fake_api_http_route_refused_by_the_gateway_is_no_weight() {
    let refused = route_parent(2, "False", "NotAllowedByListeners");
    let scenario = route_change(route(None, None))
        .apply(
            routes("checkout"),
            no_check,
            200,
            route_at(2, refused.clone()),
        )
        .get(routes("checkout"), 200, route_at(2, refused));
    let (out, _) = run(scenario, http_route(), async |k| {
        k.set_weight(pct(10), &[]).await
    })
    .await;
    let e = out.unwrap_err();
    assert!(e.0.contains("HTTPRoute `checkout`"), "{e}");
    assert!(
        e.0.contains("Accepted=False (NotAllowedByListeners)"),
        "{e}"
    );
}

#[tokio::test(start_paused = true)]
async fn fake_api_backends_are_no_ops_and_a_canary_drain_waits_its_time() {
    let started = tokio::time::Instant::now();
    let (out, _) = run(Scenario::new("nothing asked"), http_route(), async |k| {
        (
            k.set_backends(Variant::Canary, &[]).await,
            k.drain(Variant::Stable, Duration::from_secs(10)).await,
            k.drain_endpoints(&[], Duration::from_secs(10)).await,
        )
    })
    .await;
    assert_eq!(out, (Ok(()), Ok(()), Ok(())));
    assert_eq!(started.elapsed(), Duration::ZERO);
    // Nothing tells rampart when kube-proxy and the Gateway stopped sending the canary
    // requests: its drain is the whole time given.
    let (out, _) = run(Scenario::new("nothing asked"), http_route(), async |k| {
        k.drain(Variant::Canary, Duration::from_secs(10)).await
    })
    .await;
    out.unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(10));
    // Under replica_ratio traffic left with the canary's pods.
    let (out, _) = run(Scenario::new("nothing asked"), ratio(4), async |k| {
        k.drain(Variant::Canary, Duration::from_secs(10)).await
    })
    .await;
    out.unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(10));
}

// === failures ===

#[tokio::test(start_paused = true)]
async fn fake_api_server_error_is_a_port_error() {
    let scenario =
        Scenario::new("500 from the API").get(deployments("checkout"), 500, server_error());
    let (out, _) = run(scenario, selector(), async |k| {
        k.deploy(Variant::Canary, "v2").await
    })
    .await;
    let e = out.unwrap_err();
    assert!(e.0.contains("reading Deployment `checkout`"), "{e}");
    assert!(e.0.contains("etcdserver: request timed out"), "{e}");
}

#[tokio::test(start_paused = true)]
async fn fake_api_refused_connection_is_a_port_error() {
    let scenario =
        Scenario::new("connection refused").refused(Method::GET, deployments("checkout"));
    let (out, _) = run(scenario, http_route(), async |k| {
        k.set_weight(pct(10), &[]).await
    })
    .await;
    let e = out.unwrap_err();
    assert!(e.0.contains("reading Deployment `checkout`"), "{e}");
}

#[tokio::test(start_paused = true)]
async fn fake_api_refused_apply_is_a_port_error_with_the_servers_words() {
    // A forced apply never gets a 409 (it takes the fields over); what refuses it is
    // RBAC, an admission webhook or a quota, and their words must reach the operator.
    let mut forbidden = server_error();
    forbidden["code"] = json!(403);
    forbidden["reason"] = json!("Forbidden");
    forbidden["message"] = json!(
        "deployments.apps \"checkout\" is forbidden: User \"system:serviceaccount:shop:rampart\" cannot patch resource \"deployments\""
    );
    let scenario = Scenario::new("apply refused")
        .get(deployments("checkout"), 200, stable("v1", 3))
        .apply(deployments("checkout"), no_check, 403, forbidden);
    let (out, _) = run(scenario, selector(), async |k| {
        k.deploy(Variant::Stable, "v1").await
    })
    .await;
    let e = out.unwrap_err();
    assert!(e.0.contains("applying Deployment `checkout`"), "{e}");
    assert!(e.0.contains("cannot patch resource"), "{e}");
}

// === a real cluster ===

#[tokio::test]
#[ignore = "needs cluster"]
async fn cluster_reads_the_stable_version() {
    // Against the cluster of the current kubeconfig, with the objects from
    // examples/kubernetes/ applied (scripts/e2e-kind.sh does that).
    let mut spec = deploy_spec();
    spec.namespace = "default".into();
    // examples/kubernetes/manifests.yaml: nginx in the container `web`.
    spec.container = "web".into();
    spec.image = "docker.io/library/nginx:{version}".into();
    let k = rampart_kubernetes::Kubernetes::connect(
        spec,
        rampart_core::policy::KubeTrafficSpec { mode: selector() },
    )
    .await
    .unwrap();
    assert!(k.stable_version().await.unwrap().is_some());
}
