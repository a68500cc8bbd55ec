//! GitOps-triggered releases under `rampart serve --kubernetes`: the watch loop
//! ([`Watch::tick`], driven step by step) and the server's queue, against a FAKE
//! cluster (the adapter's in-memory object store behind a mock transport, see
//! `crates/kubernetes/tests/support/cluster.rs`). No Kubernetes API server runs, and
//! Prometheus is a stub that reads 0 errors. Each "server" is its own tokio runtime
//! over a SQLite store in a temporary directory, so a restart drops every task it had.

#![cfg(feature = "kubernetes")]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod gitops;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use gitops::support::cluster::{self, World};
use gitops::support::{NS, at, deployments};
use gitops::*;
use rampart::serve::gitops::Did;
use rampart_core::ports::Freeze;
use rampart_kubernetes::gitops::{Phase, Watched};
use serde_json::json;

#[test]
fn gitops_a_template_change_starts_a_release_that_promotes_it_fake_api() {
    let (world, dir, _prom) = setup(true);
    let server = Server::start(&world, dir.path());
    adopted_then_v2(&server, &world);
    let id = started(&server.tick());
    server.wait_phase(&id, "awaiting_approval");
    // The canary runs Git's template; the stable's pods still run v1.
    assert_eq!(
        canary_image(&world).as_deref(),
        Some("\"registry.example.com/checkout:v2\"")
    );
    assert_eq!(
        running(&world, STABLE).as_deref(),
        Some("registry.example.com/checkout:v1")
    );
    server.tick();
    assert_eq!(
        annotation(&world, "rampart.dev/phase").as_deref(),
        Some("progressing")
    );
    assert_eq!(annotation(&world, "rampart.dev/release"), Some(id.clone()));
    server.approve(&id);
    server.wait_phase(&id, "promoted");
    // Promoted: the stable rolled Git's template out, paused again, and no canary.
    let w = world.lock().unwrap();
    assert_eq!(
        w.running_image(STABLE).as_deref(),
        Some("registry.example.com/checkout:v2")
    );
    assert_eq!(w.objects[STABLE]["spec"]["paused"], json!(true));
    assert!(!w.objects.contains_key(CANARY));
    // Git's fields are still Git's: rampart never applied the image.
    assert!(!w.owns(STABLE, "rampart", "spec.template.spec.containers"));
    drop(w);
    assert_eq!(server.tick(), vec![("shop/checkout".into(), Did::Nothing)]);
    assert_eq!(
        annotation(&world, "rampart.dev/phase").as_deref(),
        Some("released")
    );
    assert!(
        annotation(&world, "rampart.dev/released-version")
            .unwrap()
            .starts_with("v2+")
    );
}

#[test]
fn gitops_a_second_change_supersedes_the_first_release_fake_api() {
    let (world, dir, _prom) = setup(true);
    let server = Server::start(&world, dir.path());
    adopted_then_v2(&server, &world);
    let first = started(&server.tick());
    server.wait_phase(&first, "awaiting_approval");
    git_applies(&world, "v3");
    let did = server.tick();
    assert!(
        did.contains(&("shop/checkout".into(), Did::Superseded(first.clone()))),
        "{did:?}"
    );
    let second = started(&did);
    server.wait_phase(&first, "rolled_back");
    // The audit trail names both revisions.
    let events = server.events(&first);
    assert!(
        events
            .iter()
            .any(|(_, m)| m.contains("superseded") && m.contains("v3+") && m.contains("v2+")),
        "{events:?}"
    );
    // And the chain records the decision, with both revisions.
    let records = server.chain(Some(&first));
    assert!(
        records
            .iter()
            .any(|r| r.contains("gitops_superseded") && r.contains("v2+") && r.contains("v3+")),
        "{records:?}"
    );
    server.wait_phase(&second, "awaiting_approval");
    assert_eq!(
        canary_image(&world).as_deref(),
        Some("\"registry.example.com/checkout:v3\"")
    );
    assert_eq!(
        running(&world, STABLE).as_deref(),
        Some("registry.example.com/checkout:v1")
    );
    server.approve(&second);
    server.wait_phase(&second, "promoted");
    assert_eq!(
        running(&world, STABLE).as_deref(),
        Some("registry.example.com/checkout:v3")
    );
    let report = server.rt.block_on(server.app.store.verify_chain()).unwrap();
    assert!(report.ok, "{:?}", report.problems);
}

#[test]
fn gitops_a_restarted_server_resumes_without_releasing_twice_fake_api() {
    let (world, dir, _prom) = setup(true);
    let server = Server::start(&world, dir.path());
    adopted_then_v2(&server, &world);
    let id = started(&server.tick());
    server.wait_phase(&id, "awaiting_approval");
    drop(server); // every task of that server ends with its runtime
    let server = Server::start(&world, dir.path());
    assert_eq!(server.tick(), vec![("shop/checkout".into(), Did::Nothing)]);
    assert_eq!(server.releases().len(), 1, "{:?}", server.releases());
    server.wait_phase(&id, "awaiting_approval");
    server.approve(&id);
    server.wait_phase(&id, "promoted");
    drop(server);
    let server = Server::start(&world, dir.path());
    assert_eq!(server.tick(), vec![("shop/checkout".into(), Did::Nothing)]);
    assert_eq!(server.releases().len(), 1);
}

#[test]
fn gitops_a_deleted_workload_ends_its_release_and_leaves_no_canary_fake_api() {
    let (world, dir, _prom) = setup(true);
    let server = Server::start(&world, dir.path());
    adopted_then_v2(&server, &world);
    let id = started(&server.tick());
    server.wait_phase(&id, "awaiting_approval");
    assert!(world.lock().unwrap().objects.contains_key(CANARY));
    world.lock().unwrap().delete(STABLE);
    let did = server.tick();
    assert_eq!(did, vec![("shop/checkout".into(), Did::Ended(id.clone()))]);
    server.wait_phase(&id, "rolled_back");
    assert!(!world.lock().unwrap().objects.contains_key(CANARY));
    assert_eq!(server.tick(), vec![]);
}

#[test]
fn gitops_a_workload_without_the_opt_in_is_ignored_fake_api() {
    let (world, dir, _prom) = setup(false);
    let server = Server::start(&world, dir.path());
    assert_eq!(server.tick(), vec![]);
    git_applies_unannotated(&world);
    assert_eq!(server.tick(), vec![]);
    let w = world.lock().unwrap();
    assert!(w.objects[STABLE]["spec"].get("paused").is_none());
    assert!(
        !w.writes
            .iter()
            .any(|x| x.starts_with("PATCH") && x.contains("rampart")),
        "{:?}",
        w.writes
    );
}

fn git_applies_unannotated(world: &Arc<Mutex<World>>) {
    let body = as_git_has_it(manifest("v2", false));
    world.lock().unwrap().apply_as(STABLE, &body, "kubectl");
}

#[test]
fn gitops_a_freeze_holds_a_git_triggered_release_fake_api() {
    let (world, dir, _prom) = setup(true);
    let server = Server::start(&world, dir.path());
    adopted_then_v2(&server, &world);
    let freeze = Freeze {
        actor: "ops".into(),
        reason: "incident 4711".into(),
        at: server.app.clock.now(),
    };
    server
        .rt
        .block_on(server.app.store.set_freeze(Some("checkout"), true, &freeze))
        .unwrap();
    let did = server.tick();
    assert!(
        matches!(&did[..], [(_, Did::Held(why))] if why.contains("incident 4711")),
        "{did:?}"
    );
    assert_eq!(
        annotation(&world, "rampart.dev/phase").as_deref(),
        Some("waiting")
    );
    assert!(
        annotation(&world, "rampart.dev/message")
            .unwrap()
            .contains("frozen")
    );
    assert!(server.releases().is_empty());
    // The audit chain says why, once.
    server.tick();
    let held: Vec<String> = server
        .chain(None)
        .into_iter()
        .filter(|r| r.contains("gitops_held"))
        .collect();
    assert_eq!(held.len(), 1, "{held:?}");
    assert!(held[0].contains("incident 4711"), "{held:?}");
    assert!(!world.lock().unwrap().objects.contains_key(CANARY));
    assert_eq!(
        running(&world, STABLE).as_deref(),
        Some("registry.example.com/checkout:v1")
    );
    server
        .rt
        .block_on(
            server
                .app
                .store
                .set_freeze(Some("checkout"), false, &freeze),
        )
        .unwrap();
    let id = started(&server.tick());
    server.wait_phase(&id, "awaiting_approval");
}

#[test]
fn gitops_a_rolled_back_revision_is_refused_and_stays_paused_on_the_old_pods_fake_api() {
    let (world, dir, _prom) = setup(true);
    let server = Server::start(&world, dir.path());
    adopted_then_v2(&server, &world);
    let id = started(&server.tick());
    server.wait_phase(&id, "awaiting_approval");
    server.roll_back(&id);
    assert_eq!(server.tick(), vec![("shop/checkout".into(), Did::Nothing)]);
    assert_eq!(
        annotation(&world, "rampart.dev/phase").as_deref(),
        Some("refused")
    );
    let message = annotation(&world, "rampart.dev/message").unwrap();
    assert!(message.contains("was refused"), "{message}");
    assert_eq!(
        annotation(&world, "rampart.dev/refused-revision"),
        annotation(&world, "rampart.dev/revision")
    );
    // Not released again: the next ticks change nothing.
    assert_eq!(server.tick(), vec![("shop/checkout".into(), Did::Nothing)]);
    assert_eq!(server.releases().len(), 1);
    let w = world.lock().unwrap();
    assert_eq!(w.objects[STABLE]["spec"]["paused"], json!(true));
    assert_eq!(
        w.running_image(STABLE).as_deref(),
        Some("registry.example.com/checkout:v1")
    );
    assert!(!w.objects.contains_key(CANARY));
}

#[test]
fn gitops_a_deployment_unpaused_by_hand_is_paused_again_fake_api() {
    let (world, dir, _prom) = setup(true);
    let server = Server::start(&world, dir.path());
    assert_eq!(server.tick(), vec![("shop/checkout".into(), Did::Adopted)]);
    // `kubectl rollout resume` between releases.
    world.lock().unwrap().apply_as(
        STABLE,
        &json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "checkout", "namespace": NS},
                "spec": {"paused": false}}),
        "kubectl-rollout",
    );
    assert_eq!(server.tick(), vec![("shop/checkout".into(), Did::Adopted)]);
    assert_eq!(
        world.lock().unwrap().objects[STABLE]["spec"]["paused"],
        json!(true)
    );
}

#[test]
fn gitops_the_documented_role_grants_what_serve_kubernetes_asks_fake_api() {
    let (world, dir, _prom) = setup(true);
    let server = Server::start(&world, dir.path());
    adopted_then_v2(&server, &world);
    let id = started(&server.tick());
    server.wait_phase(&id, "awaiting_approval");
    server.approve(&id);
    server.wait_phase(&id, "promoted");
    server.tick();
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/kubernetes.md"
    ))
    .unwrap();
    let block = |heading: &str| {
        let at = doc.find(heading).unwrap();
        support::role_rules(
            doc[at..]
                .split("```")
                .nth(1)
                .unwrap()
                .trim_start_matches("yaml\n"),
        )
    };
    let mut granted = block("## RBAC");
    granted.extend(block("### Permissions for `serve --kubernetes`"));
    let asked = world.lock().unwrap().asked.clone();
    for (group, resource, verb, name) in &asked {
        assert!(
            granted.iter().any(|(g, r, v, names)| g == group
                && r == resource
                && v == verb
                && (names.is_empty() || names.contains(name))),
            "the documented Roles do not grant {verb} on {group}/{resource} {name}"
        );
    }
}

#[test]
fn gitops_a_deployment_opted_in_mid_rollout_is_adopted_once_it_completes_fake_api() {
    let (world, dir, _prom) = setup(true);
    let server = Server::start(&world, dir.path());
    // Its new pods never get ready for now: the rollout fails its deadline
    // (`ProgressDeadlineExceeded`), said as failed, and is not adopted.
    world.lock().unwrap().broken.insert(STABLE.into());
    git_applies(&world, "v2");
    assert_eq!(server.tick(), vec![("shop/checkout".into(), Did::Rollout)]);
    assert!(
        world.lock().unwrap().objects[STABLE]["spec"]
            .get("paused")
            .is_none_or(|p| p == &json!(false))
    );
    assert_eq!(
        annotation(&world, "rampart.dev/phase").as_deref(),
        Some("failed")
    );
    world.lock().unwrap().broken.clear();
    assert_eq!(server.tick(), vec![("shop/checkout".into(), Did::Adopted)]);
    assert!(
        annotation(&world, "rampart.dev/released-version")
            .unwrap()
            .starts_with("v2+")
    );
}

#[test]
fn gitops_a_blue_green_release_of_a_git_change_switches_back_to_the_rolled_out_stable_fake_api() {
    let service = support::service(
        "checkout",
        json!({"app": "checkout", "rampart.dev/track": "stable"}),
    );
    let (world, dir, _prom) = setup_with(
        true,
        "{mode: service_selector, service: checkout}",
        "{blue_green: {stability: 1s}}",
        vec![(support::services("checkout"), service)],
    );
    let server = Server::start(&world, dir.path());
    adopted_then_v2(&server, &world);
    let id = started(&server.tick());
    server.wait_phase(&id, "promoted");
    let w = world.lock().unwrap();
    assert_eq!(
        w.running_image(STABLE).as_deref(),
        Some("registry.example.com/checkout:v2")
    );
    assert_eq!(w.objects[STABLE]["spec"]["paused"], json!(true));
    assert_eq!(
        w.objects[&support::services("checkout")]["spec"]["selector"]["rampart.dev/track"],
        json!("stable")
    );
    assert!(!w.objects.contains_key(CANARY));
    drop(w);
    server.tick();
    assert_eq!(
        annotation(&world, "rampart.dev/phase").as_deref(),
        Some("released")
    );
}

#[test]
fn gitops_an_opt_in_without_its_policy_is_reported_and_never_released_fake_api() {
    let (world, dir, _prom) = setup(true);
    world.lock().unwrap().delete(&format!(
        "/api/v1/namespaces/{NS}/configmaps/checkout-policy"
    ));
    let server = Server::start(&world, dir.path());
    let did = server.tick();
    assert!(
        matches!(&did[..], [(_, Did::Invalid(why))] if why.contains("ConfigMap `checkout-policy` not found")),
        "{did:?}"
    );
    assert_eq!(
        annotation(&world, "rampart.dev/phase").as_deref(),
        Some("failed")
    );
    git_applies(&world, "v2");
    server.tick();
    assert!(server.releases().is_empty());
}

#[test]
fn gitops_a_deployment_that_no_longer_opts_in_is_let_go_fake_api() {
    let (world, dir, _prom) = setup(true);
    let server = Server::start(&world, dir.path());
    adopted_then_v2(&server, &world);
    // Git drops the annotation (Argo CD applies the manifest without it).
    let body = as_git_has_it(manifest("v2", false));
    world
        .lock()
        .unwrap()
        .apply_as(STABLE, &body, "argocd-controller");
    assert_eq!(server.tick(), vec![("shop/checkout".into(), Did::LetGo)]);
    let w = world.lock().unwrap();
    assert_eq!(w.objects[STABLE]["spec"]["paused"], json!(false));
    assert_eq!(
        w.running_image(STABLE).as_deref(),
        Some("registry.example.com/checkout:v2")
    );
    let annotations = w.objects[STABLE]["metadata"]["annotations"]
        .as_object()
        .unwrap();
    assert!(
        !annotations.keys().any(|k| k.starts_with("rampart.dev/")),
        "{annotations:?}"
    );
    drop(w);
    assert_eq!(server.tick(), vec![]);
}

/// Review: the promotion unpaused the Deployment and waited for "a" rollout; a
/// template Git applied meanwhile rolled out in its place and was recorded as the
/// released revision, though nobody analysed it.
#[test]
fn gitops_a_template_git_applies_during_the_promotion_is_never_recorded_as_released_fake_api() {
    let (world, dir, _prom) = setup(true);
    let server = Server::start(&world, dir.path());
    adopted_then_v2(&server, &world);
    let v1 = annotation(&world, "rampart.dev/released-revision").unwrap();
    let id = started(&server.tick());
    server.wait_phase(&id, "awaiting_approval");
    // No template lock in this cluster: Argo CD's next sync lands the moment the
    // promotion unpauses the Deployment.
    world.lock().unwrap().apply_on_unpause = Some((
        STABLE.into(),
        as_git_has_it(manifest("v3", true)),
        "argocd-controller".into(),
    ));
    server.approve(&id);
    let outcome = server.wait_over(&id);
    assert_ne!(outcome, "promoted", "{:?}", server.events(&id));
    assert_eq!(
        running(&world, STABLE).as_deref(),
        Some("registry.example.com/checkout:v3"),
        "the hook did not run: the test proves nothing"
    );
    // Paused again at once; neither v3 nor v2 recorded as what the pods run.
    assert_eq!(paused(&world), json!(true));
    assert_eq!(
        annotation(&world, "rampart.dev/released-revision"),
        Some(v1)
    );
    assert_eq!(annotation(&world, "rampart.dev/promoting"), None);
    let events = server.events(&id);
    assert!(
        events.iter().any(|(_, m)| m.contains("nobody analysed")),
        "{events:?}"
    );
}

/// Review: a phase report read `spec.paused` and wrote it back; a pause landing
/// between the read and the write was undone, leaving Git's template to roll out.
#[test]
fn gitops_a_phase_report_never_undoes_a_pause_that_lands_after_its_read_fake_api() {
    let (world, dir, _prom) = setup(true);
    let server = Server::start(&world, dir.path());
    assert_eq!(server.tick(), vec![("shop/checkout".into(), Did::Adopted)]);
    // As a promotion leaves it while it rolls out: unpaused.
    world.lock().unwrap().apply_as(
        STABLE,
        &json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "checkout", "namespace": NS},
                "spec": {"paused": false}}),
        "promotion-stand-in",
    );
    // The report's own reader, alone on the cluster: the pause lands right after
    // its read of the Deployment, before its write.
    let watched = server
        .rt
        .block_on(async { Watched::new(cluster::connect(&world), vec![NS.into()]) });
    let seen = server.rt.block_on(watched.workloads());
    let w = &seen.workloads[0];
    world.lock().unwrap().edit_after = Some((
        format!("GET {STABLE}"),
        STABLE.into(),
        "/spec/paused".into(),
        json!(true),
    ));
    server
        .rt
        .block_on(watched.report(w, Phase::Progressing, "r1", "a new message", &[]))
        .unwrap();
    assert!(
        world.lock().unwrap().edit_after.is_none(),
        "the edit never landed"
    );
    assert_eq!(paused(&world), json!(true));
    assert_eq!(
        annotation(&world, "rampart.dev/message").as_deref(),
        Some("a new message")
    );
}

/// Review: a Deployment unpaused by hand while its release waited (not promoting) was
/// left unpaused because a release of the service was open: Git's template rolled out
/// ungated.
#[test]
fn gitops_a_deployment_unpaused_by_hand_mid_release_is_paused_again_fake_api() {
    let (world, dir, _prom) = setup(true);
    let server = Server::start(&world, dir.path());
    adopted_then_v2(&server, &world);
    let id = started(&server.tick());
    server.wait_phase(&id, "awaiting_approval");
    world.lock().unwrap().apply_as(
        STABLE,
        &json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "checkout", "namespace": NS},
                "spec": {"paused": false}}),
        "kubectl-rollout",
    );
    let did = server.tick();
    assert!(
        did.contains(&("shop/checkout".into(), Did::Adopted)),
        "{did:?}"
    );
    assert_eq!(paused(&world), json!(true));
}

/// A `promoting` mark whose release is over (its server died mid-promotion and the
/// release ended otherwise) does not keep the Deployment unpaused.
#[test]
fn gitops_a_stale_promoting_mark_is_cleared_and_the_deployment_paused_fake_api() {
    let (world, dir, _prom) = setup(true);
    let server = Server::start(&world, dir.path());
    assert_eq!(server.tick(), vec![("shop/checkout".into(), Did::Adopted)]);
    world.lock().unwrap().apply_as(
        STABLE,
        &json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "checkout", "namespace": NS,
                             "annotations": {"rampart.dev/promoting": "x"}},
                "spec": {"paused": false}}),
        "rampart-gitops",
    );
    assert_eq!(server.tick(), vec![("shop/checkout".into(), Did::Adopted)]);
    assert_eq!(paused(&world), json!(true));
    assert_eq!(annotation(&world, "rampart.dev/promoting"), None);
}

/// Review: two Deployments whose policies named one service were released as one
/// (queued, locked and judged by service, each re-pausing on the other's release).
/// And a newcomer naming a service another Deployment holds cannot stop its releases.
#[test]
fn gitops_a_second_deployment_naming_a_held_service_is_refused_fake_api() {
    let (world, dir, prom) = setup(true);
    let url = prom.block_on(prometheus());
    let text = policy(&url, RATIO, STEPS).replace("deployment: checkout", "deployment: payments");
    let mut d = manifest("v1", true);
    d["metadata"]["name"] = json!("payments");
    d["metadata"]["annotations"]["rampart.dev/policy"] = json!("payments-policy");
    let payments = deployments("payments");
    let newcomer = |world: &Arc<Mutex<World>>| {
        let mut w = world.lock().unwrap();
        w.apply_as(&payments, &d, "kubectl");
        w.apply_as(
            &format!("/api/v1/namespaces/{NS}/configmaps/payments-policy"),
            &json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "payments-policy", "namespace": NS},
                    "data": {"rampart.yaml": text}}),
            "kubectl",
        );
    };
    // Both new: neither holds `checkout`, neither is released.
    newcomer(&world);
    let server = Server::start(&world, dir.path());
    let did = server.tick();
    assert_eq!(did.len(), 2, "{did:?}");
    for (key, d) in &did {
        let other = if key == "shop/checkout" {
            "shop/payments"
        } else {
            "shop/checkout"
        };
        assert!(
            matches!(d, Did::Invalid(why) if why.contains("service `checkout`") && why.contains(other)),
            "{did:?}"
        );
    }
    assert!(server.releases().is_empty());
    // Without the newcomer, checkout is adopted; the newcomer's return stops nothing.
    world.lock().unwrap().delete(&payments);
    assert_eq!(server.tick(), vec![("shop/checkout".into(), Did::Adopted)]);
    newcomer(&world);
    git_applies(&world, "v2");
    let did = server.tick();
    assert!(
        did.iter().any(|(k, d)| k == "shop/payments"
            && matches!(d, Did::Invalid(why) if why.contains("shop/checkout"))),
        "{did:?}"
    );
    let id = started(&did);
    server.wait_phase(&id, "awaiting_approval");
}

/// Review: one namespace without a Role (Forbidden) stopped the watch of every other.
/// And a namespace that cannot be read says nothing about its Deployments: none of
/// their releases is ended.
#[test]
fn gitops_a_namespace_that_cannot_be_listed_stops_nothing_else_and_ends_nothing_fake_api() {
    let (world, dir, _prom) = setup(true);
    world.lock().unwrap().forbidden.insert("payments".into());
    let server = Server::watching(&world, dir.path(), &["payments", NS]);
    let did = server.tick();
    assert!(
        did.contains(&("shop/checkout".into(), Did::Adopted)),
        "{did:?}"
    );
    assert!(
        did.iter()
            .any(|(ns, d)| ns == "payments" && matches!(d, Did::Unreadable(_))),
        "{did:?}"
    );
    git_applies(&world, "v2");
    let id = started(&server.tick());
    server.wait_phase(&id, "awaiting_approval");
    world.lock().unwrap().forbidden.insert(NS.into());
    let did = server.tick();
    assert!(
        !did.iter().any(|(_, d)| matches!(d, Did::Ended(_))),
        "{did:?}"
    );
    assert_eq!(server.phase(&id), "awaiting_approval");
}

/// The watch must leave a promotion in flight alone: its tick reads the Deployment
/// unpaused with the mark while the rollout runs.
#[test]
fn gitops_a_tick_during_the_promotion_leaves_its_rollout_alone_fake_api() {
    let (world, dir, _prom) = setup(true);
    let server = Server::start(&world, dir.path());
    adopted_then_v2(&server, &world);
    let id = started(&server.tick());
    server.wait_phase(&id, "awaiting_approval");
    world.lock().unwrap().rollout = Duration::from_secs(3);
    server.approve(&id);
    let nap = Duration::from_millis(20);
    let mut waited = Duration::ZERO;
    while annotation(&world, "rampart.dev/promoting").is_none() {
        assert!(waited < DEADLINE, "no promotion: {:?}", server.events(&id));
        std::thread::sleep(nap);
        waited += nap;
    }
    assert_eq!(paused(&world), json!(false));
    let did = server.tick();
    assert!(!did.iter().any(|(_, d)| *d == Did::Adopted), "{did:?}");
    assert_eq!(
        paused(&world),
        json!(false),
        "paused half-way through its rollout"
    );
    server.wait_phase(&id, "promoted");
    assert_eq!(paused(&world), json!(true));
    assert_eq!(annotation(&world, "rampart.dev/promoting"), None);
    assert_eq!(
        running(&world, STABLE).as_deref(),
        Some("registry.example.com/checkout:v2")
    );
}

/// Review: a mark left by an earlier promotion kept the Deployment unpaused while any
/// release of the service was open (a newer one waiting for approval, for days).
#[test]
fn gitops_a_mark_of_another_release_does_not_keep_the_deployment_unpaused_fake_api() {
    let (world, dir, _prom) = setup(true);
    let server = Server::start(&world, dir.path());
    adopted_then_v2(&server, &world);
    let id = started(&server.tick());
    server.wait_phase(&id, "awaiting_approval");
    world.lock().unwrap().apply_as(
        STABLE,
        &json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "checkout", "namespace": NS,
                             "annotations": {"rampart.dev/promoting": "v0+0123456789"}},
                "spec": {"paused": false}}),
        "rampart-gitops",
    );
    let did = server.tick();
    assert!(
        did.contains(&("shop/checkout".into(), Did::Adopted)),
        "{did:?}"
    );
    assert_eq!(paused(&world), json!(true));
    assert_eq!(annotation(&world, "rampart.dev/promoting"), None);
    assert_eq!(server.phase(&id), "awaiting_approval");
}

/// Review: a stale mark on a paused Deployment was never cleared, and the template
/// lock keyed on it refused every later template from Git.
#[test]
fn gitops_a_stale_mark_on_a_paused_deployment_is_cleared_fake_api() {
    let (world, dir, _prom) = setup(true);
    let server = Server::start(&world, dir.path());
    assert_eq!(server.tick(), vec![("shop/checkout".into(), Did::Adopted)]);
    // As a crashed promotion's pause left it: rampart-gitops states its fields, the
    // mark among them.
    {
        let mut w = world.lock().unwrap();
        let mut annotations = w.objects[STABLE]["metadata"]["annotations"].clone();
        let a = annotations.as_object_mut().unwrap();
        a.retain(|k, _| k.starts_with("rampart.dev/") && k != "rampart.dev/policy");
        a.insert("rampart.dev/promoting".into(), json!("v0+0123456789"));
        w.apply_as(
            STABLE,
            &json!({"apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": "checkout", "namespace": NS, "annotations": annotations},
                    "spec": {"paused": true}}),
            "rampart-gitops",
        );
    }
    assert_eq!(paused(&world), json!(true));
    assert!(annotation(&world, "rampart.dev/released-revision").is_some());
    assert_eq!(server.tick(), vec![("shop/checkout".into(), Did::Adopted)]);
    assert_eq!(annotation(&world, "rampart.dev/promoting"), None);
    assert_eq!(paused(&world), json!(true));
}

/// Review: a refused revision stayed refused after another was promoted, so Git going
/// back to it was never released.
#[test]
fn gitops_a_revision_refused_before_another_was_promoted_is_released_again_fake_api() {
    let (world, dir, _prom) = setup(true);
    let server = Server::start(&world, dir.path());
    adopted_then_v2(&server, &world);
    let first = started(&server.tick());
    server.wait_phase(&first, "awaiting_approval");
    server.roll_back(&first);
    server.tick();
    assert_eq!(
        annotation(&world, "rampart.dev/phase").as_deref(),
        Some("refused")
    );
    git_applies(&world, "v3");
    let second = started(&server.tick());
    server.wait_phase(&second, "awaiting_approval");
    server.approve(&second);
    server.wait_phase(&second, "promoted");
    assert_eq!(annotation(&world, "rampart.dev/refused-revision"), None);
    // Git goes back to v2: released through a canary, not taken as refused.
    git_applies(&world, "v2");
    let third = started(&server.tick());
    assert_ne!(third, first);
    server.wait_phase(&third, "awaiting_approval");
    assert_eq!(
        canary_image(&world).as_deref(),
        Some("\"registry.example.com/checkout:v2\"")
    );
}

// === an adversarial review of GitOps-triggered releases (each test failed on the code
// it reviewed) ===

fn template_image(world: &Arc<Mutex<World>>) -> String {
    let w = world.lock().unwrap();
    at(&w.objects[STABLE], "spec/template/spec/containers/0/image").to_string()
}

/// Review: Git reverted to the running revision while v2's release waited (it was
/// superseded, rolled back by the watch, never by analysis), then went forward to v2
/// again ("revert the revert"). v2 was taken as refused: the superseded release's
/// outcome (`rolled_back`) counted as a verdict on the revision, and nothing was ever
/// released until Git applied yet another template.
#[test]
fn gitops_a_revision_superseded_by_a_revert_is_released_when_git_returns_to_it_fake_api() {
    let (world, dir, _prom) = setup(true);
    let server = Server::start(&world, dir.path());
    adopted_then_v2(&server, &world);
    let v1 = annotation(&world, "rampart.dev/released-revision").unwrap();
    let first = started(&server.tick());
    server.wait_phase(&first, "awaiting_approval");
    // Git reverts to what runs: the release is superseded, and nothing starts.
    git_applies(&world, "v1");
    let did = server.tick();
    assert!(
        did.contains(&("shop/checkout".into(), Did::Superseded(first.clone()))),
        "{did:?}"
    );
    assert_eq!(annotation(&world, "rampart.dev/revision"), Some(v1.clone()));
    server.wait_phase(&first, "rolled_back");
    assert_eq!(server.tick(), vec![("shop/checkout".into(), Did::Nothing)]);
    assert_eq!(
        annotation(&world, "rampart.dev/phase").as_deref(),
        Some("released")
    );
    // Git goes forward to v2 again: nothing judged v2, so it is released.
    git_applies(&world, "v2");
    let did = server.tick();
    assert!(
        did.iter().any(|(_, d)| matches!(d, Did::Started(_))),
        "v2 was not released again: {did:?}; phase {:?}: {:?}",
        annotation(&world, "rampart.dev/phase"),
        annotation(&world, "rampart.dev/message")
    );
    assert_ne!(
        annotation(&world, "rampart.dev/phase").as_deref(),
        Some("refused")
    );
}

/// Review: the Deployment opted out (Git dropped `rampart.dev/policy`) while
/// `rampart serve` was down with a release of v2 waiting for approval. On restart the
/// queue resumed the release before any tick, and its "ensure the stable" step, no
/// longer in GitOps mode, applied the image of the GitOps version (`v1+<revision>`,
/// not a tag that exists) to the user's Deployment: Git's template replaced by an
/// image that cannot be pulled, owned by rampart's field manager.
#[test]
fn gitops_a_release_resumed_after_an_opt_out_never_writes_its_version_as_an_image_fake_api() {
    let (world, dir, _prom) = setup(true);
    let server = Server::start(&world, dir.path());
    adopted_then_v2(&server, &world);
    let id = started(&server.tick());
    server.wait_phase(&id, "awaiting_approval");
    drop(server); // rampart serve is down
    // Git drops the opt-in; the template stays v2.
    let body = as_git_has_it(manifest("v2", false));
    world
        .lock()
        .unwrap()
        .apply_as(STABLE, &body, "argocd-controller");
    let server = Server::start(&world, dir.path());
    // The queue takes the release up again on its own: wait for the resume to act
    // (an event after `resumed`), with no tick in between.
    wait_until("the release resumed and acted", || {
        let events = server.events(&id);
        events
            .iter()
            .position(|(k, _)| k == "resumed")
            .is_some_and(|i| i + 1 < events.len())
            || template_image(&world).contains('+')
    });
    let image = template_image(&world);
    assert_eq!(
        image,
        "\"registry.example.com/checkout:v2\"",
        "rampart rewrote Git's image: {:?}",
        server.events(&id)
    );
    assert!(
        !world
            .lock()
            .unwrap()
            .owns(STABLE, "rampart", "spec.template.spec.containers"),
        "rampart's field manager owns the stable's image"
    );
}

/// Waits for the release to settle where a human or the watch decides next (waiting
/// for approval) or to be over, at most `DEADLINE`, and says where.
fn wait_settled(server: &Server, id: &str) -> String {
    let mut now = String::new();
    wait_until("the release settled", || {
        now = server.phase(id);
        [
            "awaiting_approval",
            "promoted",
            "rolled_back",
            "halted",
            "escalated",
            "aborted",
        ]
        .contains(&now.as_str())
    });
    now
}

/// Review: a release names one revision (its version is `TAG+REVISION`), but its
/// canary was derived from whatever template the stable had when the canary was
/// made. Git applied v4 while the release of v3 waited in the queue (behind the
/// rollback of the v2 release it superseded): the canary of "v3" ran v4, the
/// approval asked for was for v3, and once approved v4 rolled out to every user,
/// recorded as version v3.
#[test]
fn gitops_a_canary_runs_only_the_revision_its_release_names_fake_api() {
    let (world, dir, _prom) = setup(true);
    let server = Server::start(&world, dir.path());
    adopted_then_v2(&server, &world);
    let first = started(&server.tick());
    server.wait_phase(&first, "awaiting_approval");
    git_applies(&world, "v3");
    // Git's next commit lands right as the superseded release removes its canary:
    // the release of v3 is still queued behind it.
    world.lock().unwrap().edit_after = Some((
        format!("DELETE {CANARY}"),
        STABLE.into(),
        "/spec/template/spec/containers/0/image".into(),
        json!("registry.example.com/checkout:v4"),
    ));
    let did = server.tick();
    assert!(
        did.contains(&("shop/checkout".into(), Did::Superseded(first.clone()))),
        "{did:?}"
    );
    let second = started(&did);
    let version = server
        .releases()
        .into_iter()
        .find(|(id, _)| *id == second)
        .unwrap()
        .1;
    assert!(version.starts_with("v3+"), "{version}");
    let settled = wait_settled(&server, &second);
    assert!(
        world.lock().unwrap().edit_after.is_none(),
        "Git's v4 never landed: the test proves nothing"
    );
    if settled == "awaiting_approval" {
        let w = world.lock().unwrap();
        let canary = &w.objects[CANARY];
        let derived = canary["metadata"]["annotations"]["rampart.dev/canary-revision"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let image = at(canary, "spec/template/spec/containers/0/image").to_string();
        drop(w);
        assert!(
            version.ends_with(&derived[..10.min(derived.len())]) && !image.contains("v4"),
            "release {second} of {version} analyses a canary of revision {derived} ({image})"
        );
        // What it leads to, once someone approves "v3".
        server.approve(&second);
        let outcome = server.wait_over(&second);
        if outcome == "promoted" {
            let revision = annotation(&world, "rampart.dev/released-revision").unwrap();
            let released = annotation(&world, "rampart.dev/released-version").unwrap();
            assert!(
                released.ends_with(&revision[..10]),
                "the pods run revision {revision} ({:?}), recorded as version {released}",
                running(&world, STABLE)
            );
        }
    }
}

/// Review: a promotion whose rollout failed halts (phase `failed`: the stable is
/// paused with its pods a mix of two revisions, and the canary keeps serving at
/// 100 %). Git then reverted to the released revision, and the next tick wrote phase
/// `released` ("runs revision v1") from the annotations alone: Argo CD turned Healthy
/// while users were still on the halted release's canary and nobody had acted.
#[test]
fn gitops_a_revert_after_a_halted_promotion_is_not_reported_released_fake_api() {
    let (world, dir, _prom) = setup(true);
    let server = Server::start(&world, dir.path());
    adopted_then_v2(&server, &world);
    let id = started(&server.tick());
    server.wait_phase(&id, "awaiting_approval");
    // The full rollout's new pods never get ready (the canary's did).
    world.lock().unwrap().broken.insert(STABLE.into());
    server.approve(&id);
    assert_eq!(server.wait_over(&id), "halted", "{:?}", server.events(&id));
    server.tick();
    assert_eq!(
        annotation(&world, "rampart.dev/phase").as_deref(),
        Some("failed")
    );
    // The team reverts in Git; nobody has looked at the halted release.
    git_applies(&world, "v1");
    server.tick();
    let canary_left = world.lock().unwrap().objects.contains_key(CANARY);
    assert!(
        canary_left,
        "the halted release's canary is gone: the test proves nothing"
    );
    assert_ne!(
        annotation(&world, "rampart.dev/phase").as_deref(),
        Some("released"),
        "{:?}; the canary {:?} still serves, the stable's pods {:?}",
        annotation(&world, "rampart.dev/message"),
        canary_image(&world),
        running(&world, STABLE)
    );
}

/// A replica that is no longer the leader (deposed, or stalled past its lease) must
/// leave Git's changes to the one that is: its watch loop neither queues a release of
/// a new revision (a second release of it beside the new leader's) nor writes to the
/// cluster; it says why instead.
#[test]
fn gitops_a_deposed_leader_releases_nothing_fake_api() {
    let (world, dir, _prom) = setup(true);
    let server = Server::start(&world, dir.path());
    adopted_then_v2(&server, &world);
    let before = world.lock().unwrap().objects[STABLE].clone();
    server.store.fence_as_standby();
    let ticked = server.rt.block_on(server.watch.tick());
    let why = ticked.expect_err("a deposed leader's tick acted");
    assert!(why.contains("not the leader"), "{why}");
    assert_eq!(
        server.releases(),
        vec![],
        "a deposed leader queued a release"
    );
    assert_eq!(
        world.lock().unwrap().objects[STABLE],
        before,
        "a deposed leader wrote to the Deployment"
    );
}
