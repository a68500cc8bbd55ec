//! An adversarial review of GitOps-triggered releases (`rampart serve --kubernetes`),
//! against the FAKE cluster of `crates/kubernetes/tests/support/cluster.rs` (no API
//! server runs) and a stub Prometheus that reads 0 errors. Each test failed on the
//! code it reviewed; its doc comment says the scenario and what should happen.
//! The helpers are in `gitops/mod.rs`.

#![cfg(feature = "kubernetes")]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod gitops;

use std::time::Duration;

use gitops::support::NS;
use gitops::*;
use rampart::serve::api::actions::{Act, act};
use rampart::serve::api::releases::{CreateRelease, submit_as};
use rampart::serve::auth::{Caller, Role};
use rampart::serve::gitops::Did;
use serde_json::json;

// === the findings ===

/// An HPA scales a released, paused Deployment up (or a node drain evicts a pod):
/// for the seconds the new pods take to become ready, the Deployment has fewer
/// available replicas than it wants. Nothing was released and nothing halted: its
/// pods all run the released revision. The docs list "an HPA scales it" as a
/// failure mode rampart does nothing about, and say the phase is `released` while
/// the pods all run the released revision.
///
/// Expected: the phase stays `released` (Argo CD stays Healthy). Observed: the tick
/// writes phase `failed`, "a release that halted left them (its canary may still
/// serve)", which the documented Argo CD health check turns Degraded (and its
/// notifications fire) at every scale-up.
#[test]
fn gitops_review_an_hpa_scale_up_of_a_released_deployment_is_not_reported_failed_fake_api() {
    let (world, dir, _prom) = setup(true);
    let server = Server::start(&world, dir.path());
    assert_eq!(server.tick(), vec![("shop/checkout".into(), Did::Adopted)]);
    assert_eq!(server.tick(), vec![("shop/checkout".into(), Did::Nothing)]);
    assert_eq!(
        annotation(&world, "rampart.dev/phase").as_deref(),
        Some("released")
    );
    {
        let mut w = world.lock().unwrap();
        // New pods take a while to become ready (an hour: longer than the test).
        w.rollout = Duration::from_secs(3600);
        w.scale_as(STABLE, 4, "horizontal-pod-autoscaler");
    }
    // The pods all run the released template still: the scale-up added pods of it.
    assert_eq!(
        running(&world, STABLE).as_deref(),
        Some("registry.example.com/checkout:v1")
    );
    server.tick();
    assert_eq!(
        annotation(&world, "rampart.dev/phase").as_deref(),
        Some("released"),
        "an HPA scale-up reported as: {:?}",
        annotation(&world, "rampart.dev/message")
    );
}

/// A platform engineer releases an opted-in Deployment through the API (the docs:
/// "release opted-in Deployments through the server (the watch, or its API)"),
/// naming version v5, with nothing pending from Git. rampart never writes the image
/// of an opted-in Deployment, so nothing can roll v5 out.
///
/// Expected: the submission is refused (or the release fails) rather than a success
/// that did not happen. Observed: the canary runs the stable's own template (v1)
/// labelled v5, the release ends `promoted` ("Deployment `checkout` runs
/// registry.example.com/checkout:v5"), and the Deployment is annotated
/// `released-version: v5` and phase `released` while every pod still runs v1.
#[test]
fn gitops_review_an_api_release_of_an_opted_in_deployment_never_claims_a_version_it_did_not_roll_out_fake_api()
 {
    let (world, dir, _prom) = setup(true);
    let server = Server::start(&world, dir.path());
    assert_eq!(server.tick(), vec![("shop/checkout".into(), Did::Adopted)]);
    let text = world.lock().unwrap().objects
        [&format!("/api/v1/namespaces/{NS}/configmaps/checkout-policy")]["data"]["rampart.yaml"]
        .as_str()
        .unwrap()
        .to_string();
    let caller = Caller {
        name: "bob".into(),
        role: Role::Deployer,
    };
    let body = CreateRelease {
        policy: text,
        version: "v5".into(),
        stable: None,
        hotfix: None,
        workdir: None,
    };
    let submitted = server
        .rt
        .block_on(submit_as(&server.app, &caller, body, false));
    let Ok(s) = submitted else {
        return; // refused at the door: what the docs' promise needs
    };
    let outcome = match wait_settled(&server, &s.id).as_str() {
        "awaiting_approval" => {
            server.approve(&s.id);
            server.wait_over(&s.id)
        }
        other => other.to_string(),
    };
    server.tick();
    let pods = running(&world, STABLE);
    let claimed = annotation(&world, "rampart.dev/released-version");
    assert!(
        !(outcome == "promoted" && pods.as_deref() != Some("registry.example.com/checkout:v5")),
        "release {} of v5 ended {outcome}, the Deployment claims released-version {claimed:?} \
         (phase {:?}: {:?}), but its pods run {pods:?}; events: {:?}",
        s.id,
        annotation(&world, "rampart.dev/phase"),
        annotation(&world, "rampart.dev/message"),
        server.events(&s.id)
    );
}

/// Waits for the release to settle where a human or the watch decides next (waiting
/// for approval) or to be over, at most `DEADLINE`, and says where.
fn wait_settled(server: &Server, id: &str) -> String {
    let settled = [
        "awaiting_approval",
        "promoted",
        "rolled_back",
        "halted",
        "escalated",
        "aborted",
        "blocked",
    ];
    let nap = Duration::from_millis(50);
    let mut waited = Duration::ZERO;
    loop {
        let now = server.phase(id);
        if settled.contains(&now.as_str()) {
            return now;
        }
        assert!(
            waited < DEADLINE,
            "release {id} never settled, still {now}: {:?}",
            server.events(id)
        );
        std::thread::sleep(nap);
        waited += nap;
    }
}

/// No template lock (Kubernetes before 1.30, or `gitops.lockTemplate: false`): Git
/// applies v3 while the promotion of v2 rolls out. The promotion halts, paused again
/// with the stable's pods a mix of two revisions, and its v2 canary keeps serving:
/// a person decides (`rampart stop --canary`), as after any halt.
///
/// Observed (review): the loop queued a release of v3, which the queue refused
/// before it started (the halted release's canary has users); that left no release
/// record, so `finished` found nothing for v3 and every tick queued another release
/// of the same revision, forever (one more submission every `--kubernetes-interval`).
/// Expected: v3 is queued once, its refusal is reported on the Deployment (waiting,
/// saying what to do), and it is tried again only after `BLOCKED_RETRY`.
#[test]
fn gitops_review_a_revision_refused_at_its_start_is_not_queued_at_every_tick_fake_api() {
    let (world, dir, _prom) = setup(true);
    let server = Server::start(&world, dir.path());
    adopted_then_v2(&server, &world);
    let id = started(&server.tick());
    server.wait_phase(&id, "awaiting_approval");
    world.lock().unwrap().apply_on_unpause = Some((
        STABLE.into(),
        as_git_has_it(manifest("v3", true)),
        "argocd-controller".into(),
    ));
    server.approve(&id);
    let outcome = server.wait_over(&id);
    assert_ne!(outcome, "promoted");
    assert_eq!(paused(&world), json!(true));
    assert!(
        canary_image(&world).is_some(),
        "the halted release's canary serves"
    );
    // The watch's next tick: v3 is queued.
    let first = started(&server.tick());
    // The queue takes it: its submission ends, refused before it starts.
    wait_until("the queue took the release of v3", || {
        server.rt.block_on(async {
            !server
                .app
                .store
                .open_submissions()
                .await
                .unwrap()
                .iter()
                .any(|s| s.id == first)
        })
    });
    let report = server
        .rt
        .block_on(server.app.store.submission(&first))
        .unwrap()
        .and_then(|s| s.report);
    for _ in 0..3 {
        let again = server.tick();
        assert!(
            !again.iter().any(|(_, d)| matches!(d, Did::Started(_))),
            "the same revision (v3) queued again: {first} and then {again:?}; {first} ended with report {report:?}"
        );
    }
    assert_eq!(
        annotation(&world, "rampart.dev/phase").as_deref(),
        Some("waiting")
    );
    let message = annotation(&world, "rampart.dev/message").unwrap_or_default();
    assert!(
        message.contains(&first) && message.contains("--canary"),
        "the Deployment says why v3 waits and what to do: {message}"
    );
}

/// A person withdraws the queued GitOps release of v2 (`rampart abort`, through the
/// API's abort: "a queued one is withdrawn"), say because v2 must not ship today. It
/// is queued behind another release of the service, so it never started.
///
/// Expected: the person's decision stands until Git applies another template: the
/// loop does not queue v2 again (it reports it refused or failed, as it does a
/// release a person rolled back). Observed: a withdrawn submission leaves no release
/// record, so `finished` finds nothing for v2 and the very next tick queues a new
/// release of v2 as `gitops:shop/checkout`; no one can stop a queued Git change
/// short of a freeze or a commit.
#[test]
fn gitops_review_a_release_a_person_withdrew_is_not_queued_again_fake_api() {
    let (world, dir, _prom) = setup(true);
    let server = Server::start(&world, dir.path());
    assert_eq!(server.tick(), vec![("shop/checkout".into(), Did::Adopted)]);
    // Another release of the service holds the queue (through the API, waiting for
    // its approval).
    let text = world.lock().unwrap().objects
        [&format!("/api/v1/namespaces/{NS}/configmaps/checkout-policy")]["data"]["rampart.yaml"]
        .as_str()
        .unwrap()
        .to_string();
    let bob = Caller {
        name: "bob".into(),
        role: Role::Deployer,
    };
    // A release of the revision Git holds, through the API (its version names the
    // revision, as the watch's do; any other is refused for an opted-in Deployment).
    let revision = annotation(&world, "rampart.dev/released-revision").unwrap();
    let body = CreateRelease {
        policy: text,
        version: format!("hotfix+{}", &revision[..10]),
        stable: None,
        hotfix: None,
        workdir: None,
    };
    let blocker = server
        .rt
        .block_on(submit_as(&server.app, &bob, body, false))
        .unwrap();
    assert_eq!(
        wait_settled(&server, &blocker.id),
        "awaiting_approval",
        "{:?}",
        server.events(&blocker.id)
    );
    git_applies(&world, "v2");
    let queued = started(&server.tick());
    assert_eq!(server.phase(&queued), "queued");
    // Bob withdraws it.
    let reason = axum::body::Bytes::from(r#"{"reason": "v2 must not ship today"}"#);
    let _ = server
        .rt
        .block_on(act(
            server.app.clone(),
            bob,
            queued.clone(),
            Act::Abort,
            reason,
        ))
        .unwrap();
    let did = server.tick();
    assert!(
        !did.iter().any(|(_, d)| matches!(d, Did::Started(_))),
        "the withdrawn release of v2 was queued again: {did:?}; releases {:?}",
        server.releases()
    );
}

/// v2's release rolled back (phase `refused`); the team reverts in Git (v1, what
/// runs: phase `released`), then applies v2 again ("revert the revert", say once the
/// dependency that broke it is fixed). `rampart.dev/refused-revision` still names
/// v2's revision, so the loop returns at once, writing nothing.
///
/// Expected: the Deployment's phase speaks of the revision Git now has: either a
/// release of v2 starts, or the phase is `refused` for v2's revision (the documented
/// Argo CD health check then says Degraded). Observed: the annotations still say
/// phase `released`, "runs revision <v1>", `rampart.dev/revision` = v1's: Argo CD
/// shows the application Synced and Healthy with v2 in Git, while nothing runs v2
/// and nothing will.
#[test]
fn gitops_review_git_returning_to_a_refused_revision_is_not_reported_released_fake_api() {
    let (world, dir, _prom) = setup(true);
    let server = Server::start(&world, dir.path());
    adopted_then_v2(&server, &world);
    let v1 = annotation(&world, "rampart.dev/released-revision").unwrap();
    let id = started(&server.tick());
    server.wait_phase(&id, "awaiting_approval");
    let caller = Caller {
        name: "bob".into(),
        role: Role::Deployer,
    };
    let body = axum::body::Bytes::from(r#"{"reason": "support tickets"}"#);
    let _ = server
        .rt
        .block_on(act(
            server.app.clone(),
            caller,
            id.clone(),
            Act::Rollback,
            body,
        ))
        .unwrap();
    server.wait_phase(&id, "rolled_back");
    server.tick();
    assert_eq!(
        annotation(&world, "rampart.dev/phase").as_deref(),
        Some("refused")
    );
    let v2 = annotation(&world, "rampart.dev/refused-revision").unwrap();
    // The revert: v1 again, what runs.
    git_applies(&world, "v1");
    server.tick();
    assert_eq!(
        annotation(&world, "rampart.dev/phase").as_deref(),
        Some("released")
    );
    // And forward to v2 again.
    git_applies(&world, "v2");
    let did = server.tick();
    let started_again = did.iter().any(|(_, d)| matches!(d, Did::Started(_)));
    let phase = annotation(&world, "rampart.dev/phase");
    let revision = annotation(&world, "rampart.dev/revision");
    assert!(
        started_again || (phase.as_deref() == Some("refused") && revision.as_deref() == Some(&v2)),
        "Git has v2 ({v2}) again; the Deployment says phase {phase:?} about revision {revision:?} \
         (v1 is {v1}): {:?}; did {did:?}",
        annotation(&world, "rampart.dev/message")
    );
}
