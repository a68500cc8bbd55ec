//! Review 4 of GitOps-triggered releases (`rampart serve --kubernetes`), against the
//! FAKE cluster (crates/kubernetes/tests/support/cluster.rs: an in-memory object store
//! behind a mock transport; no Kubernetes API server runs). Each test fails because of
//! the defect it names and passes once it is fixed.

#![cfg(feature = "kubernetes")]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod gitops;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use gitops::support::NS;
use gitops::support::cluster::{self, World};
use gitops::*;
use http::{Request, Response};
use kube::client::Body;
use rampart::serve::gitops::{Did, Watch};
use rampart_kubernetes::gitops::Watched;
use serde_json::{Value, json};

const POLICY_MAP: &str = "/api/v1/namespaces/shop/configmaps/checkout-policy";

/// The policy text the ConfigMap holds now.
fn policy_text(world: &Arc<Mutex<World>>) -> String {
    world.lock().unwrap().objects[POLICY_MAP]["data"]["rampart.yaml"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Git (through Argo CD) applies a new policy text to the ConfigMap.
fn git_applies_policy(world: &Arc<Mutex<World>>, text: &str) {
    let (path, body) = config_map(text);
    world
        .lock()
        .unwrap()
        .apply_as(&path, &body, "argocd-controller");
}

fn open_of_checkout(server: &Server) -> Vec<(String, String, String)> {
    server.rt.block_on(async {
        server
            .app
            .store
            .open_submissions()
            .await
            .unwrap()
            .into_iter()
            .filter(|s| s.initiator == "gitops:shop/checkout")
            .map(|s| (s.id, s.service, s.version))
            .collect()
    })
}

/// Doubt 4: the policy's `service` renamed in Git while a release runs. The running
/// release (locked and queued under the old service) is neither superseded nor found,
/// so a second release of the same revision of the same Deployment is queued under the
/// new service's lock, beside the first: two releases of one Deployment at once, each
/// driving `checkout-canary` and the stable's replicas.
#[test]
fn gitops_review4_a_policy_service_rename_mid_release_never_runs_two_releases_of_one_revision_fake_api()
 {
    let (world, dir, _prom) = setup(true);
    let server = Server::start(&world, dir.path());
    adopted_then_v2(&server, &world);
    let first = started(&server.tick());
    server.wait_phase(&first, "awaiting_approval");
    let renamed = policy_text(&world).replace("service: checkout", "service: checkout-web");
    git_applies_policy(&world, &renamed);
    let did = server.tick();
    let open = open_of_checkout(&server);
    assert!(
        !did.iter().any(|(_, d)| matches!(d, Did::Started(_))) && open.len() <= 1,
        "a second release of the revision the open release {first} runs was queued: \
         did {did:?}, open releases of shop/checkout {open:?}"
    );
}

/// Doubt 4: a policy edit that changes only how the version is read (the image
/// pattern, e.g. ahead of a registry move) while a healthy release waits for its
/// approval. Git applied no template: the revision is the same. Yet the running
/// release is aborted ("superseded: Git applied revision R" about the revision it
/// already runs), rolls back, and the same revision is released again from scratch.
#[test]
fn gitops_review4_a_policy_edit_that_keeps_the_revision_does_not_supersede_its_release_fake_api() {
    let (world, dir, _prom) = setup(true);
    let server = Server::start(&world, dir.path());
    adopted_then_v2(&server, &world);
    let first = started(&server.tick());
    server.wait_phase(&first, "awaiting_approval");
    let revision_before = annotation(&world, "rampart.dev/revision");
    let edited = policy_text(&world).replace(
        "registry.example.com/checkout:{version}",
        "registry.example.com/shop/checkout:{version}",
    );
    git_applies_policy(&world, &edited);
    let did = server.tick();
    // The template (the revision) is unchanged: nothing Git applied to the Deployment.
    assert_eq!(annotation(&world, "rampart.dev/revision"), revision_before);
    assert!(
        !did.iter().any(|(_, d)| matches!(d, Did::Superseded(_))),
        "release {first} of the unchanged revision was superseded by a policy edit: \
         {did:?}; its events: {:?}",
        server.events(&first)
    );
}

/// A client to the fake cluster whose reads of ConfigMaps wait while `hold` is set: an
/// API server slow to answer (a tick with many workloads reads one policy after
/// another after its list).
fn slow_configmaps(
    world: &Arc<Mutex<World>>,
    hold: Arc<AtomicBool>,
    reached: Arc<AtomicBool>,
) -> kube::Client {
    let inner = cluster::connect(world);
    let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            if req.uri().path().contains("/configmaps/") {
                reached.store(true, Ordering::SeqCst);
                while hold.load(Ordering::SeqCst) {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
            let resp = inner.send(req).await.expect("the fake cluster answers");
            send.send_response(resp);
        }
    });
    kube::Client::new(mock, NS)
}

/// Doubt 1: a tick that lists the Deployment before its promotion records the
/// revision as released, and reads the open releases after that release ended. Its
/// workload still says the previous revision is released; the store's promoted
/// release of this revision is taken for "history from before an adoption"; and the
/// revision just promoted is queued for release again (a second canary, a second
/// approval asked of a human for what already runs).
#[test]
fn gitops_review4_a_tick_straddling_the_promotion_does_not_release_the_revision_twice_fake_api() {
    let (world, dir, _prom) = setup(true);
    let server = Server::start(&world, dir.path());
    adopted_then_v2(&server, &world);
    let id = started(&server.tick());
    server.wait_phase(&id, "awaiting_approval");
    // A tick of the same server (same store) whose policy reads are slow: it lists
    // now, while the release waits for its approval.
    let hold = Arc::new(AtomicBool::new(true));
    let reached = Arc::new(AtomicBool::new(false));
    let watch = {
        let _in = server.rt.enter();
        let client = slow_configmaps(&world, hold.clone(), reached.clone());
        Watch::new(server.app.clone(), Watched::new(client, vec![NS.into()]))
    };
    let tick = server.rt.spawn(async move { watch.tick().await });
    // The list is answered (the ConfigMap read after it then waits).
    wait_until("the slow tick listed the Deployments", || {
        reached.load(Ordering::SeqCst)
    });
    server.approve(&id);
    server.wait_phase(&id, "promoted");
    wait_until("the promoted release's submission closed", || {
        open_of_checkout(&server).is_empty()
    });
    assert!(
        annotation(&world, "rampart.dev/released-version")
            .unwrap()
            .starts_with("v2+")
    );
    hold.store(false, Ordering::SeqCst);
    let did = server.rt.block_on(tick).unwrap().unwrap();
    let releases = server.releases();
    assert!(
        !did.iter().any(|(_, d)| matches!(d, Did::Started(_))),
        "the revision release {id} just promoted was queued again: did {did:?}, \
         releases {releases:?}"
    );
}

/// Doubt 5: the same service in two namespaces. The Deployment holding `checkout`
/// (adopted in `shop`) must keep its releases whatever a newcomer names ("a newcomer
/// cannot stop another team's releases"). One tick in which `shop` cannot be listed
/// (a transient API error, which the doc says skips that namespace and stops nothing
/// else) lets the newcomer in `other` be adopted as if it held the service; from then
/// on both are adopted, "several hold it", and the holder's next Git change is never
/// released.
#[test]
fn gitops_review4_a_namespace_unreadable_for_one_tick_does_not_hand_the_service_to_a_newcomer_fake_api()
 {
    let (world, dir, _prom) = setup(true);
    let server = Server::watching(&world, dir.path(), &[NS, "other"]);
    assert_eq!(server.tick(), vec![("shop/checkout".into(), Did::Adopted)]);
    assert_eq!(server.tick(), vec![("shop/checkout".into(), Did::Nothing)]);
    // The newcomer: another team's `checkout` in namespace `other`, its policy naming
    // the same service.
    let text = policy_text(&world).replace("namespace: shop", "namespace: other");
    assert!(text.contains("namespace: other") && text.contains("service: checkout"));
    let mut d: Value = as_git_has_it(manifest("v1", true));
    d["metadata"]["namespace"] = json!("other");
    {
        let mut w = world.lock().unwrap();
        w.apply_as(
            "/apis/apps/v1/namespaces/other/deployments/checkout",
            &d,
            "kubectl",
        );
        w.apply_as(
            "/api/v1/namespaces/other/configmaps/checkout-policy",
            &json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "checkout-policy", "namespace": "other"},
                    "data": {"rampart.yaml": text}}),
            "kubectl",
        );
    }
    // While both are listed, the newcomer is refused and the holder keeps the service.
    let did = server.tick();
    assert!(
        did.iter()
            .any(|(k, d)| k == "other/checkout" && matches!(d, Did::Invalid(_))),
        "{did:?}"
    );
    // One tick in which `shop` fails to list.
    world.lock().unwrap().forbidden.insert(NS.into());
    let did = server.tick();
    world.lock().unwrap().forbidden.remove(NS);
    let during = did.clone();
    // Git changes the holder's template: its release must start.
    git_applies(&world, "v2");
    let did = server.tick();
    assert!(
        did.iter()
            .any(|(k, d)| k == "shop/checkout" && matches!(d, Did::Started(_))),
        "the holder shop/checkout was not released after one tick without its \
         namespace (that tick: {during:?}); now: {did:?}"
    );
}

/// Doubt 3: a Deployment that opts in while someone paused it (`kubectl rollout
/// pause`) with a template not rolled out. Its rollout can never complete while it is
/// paused, yet it is reported, at every tick and for ever, as `waiting` because "a
/// rollout is under way": Argo CD shows it Progressing, nothing says that it is paused
/// by someone else and that a person must resume it (or that rampart will not adopt
/// it until then).
#[test]
fn gitops_review4_an_opt_in_paused_by_someone_else_is_not_reported_as_a_rollout_under_way_fake_api()
{
    let (world, dir, _prom) = setup(false);
    let mut d = as_git_has_it(manifest("v2", true));
    d["spec"]["paused"] = json!(true);
    world.lock().unwrap().apply_as(STABLE, &d, "kubectl");
    assert_eq!(
        running(&world, STABLE).as_deref(),
        Some("registry.example.com/checkout:v1")
    );
    let server = Server::start(&world, dir.path());
    for _ in 0..3 {
        server.tick();
    }
    let phase = annotation(&world, "rampart.dev/phase");
    let message = annotation(&world, "rampart.dev/message").unwrap_or_default();
    assert!(
        !(phase.as_deref() == Some("waiting") && message.contains("rollout is under way"))
            || message.contains("paused"),
        "a Deployment paused by someone else is reported {phase:?}: {message:?}"
    );
}

/// Doubt 3: a Deployment that opts in while its rollout has failed
/// (`ProgressDeadlineExceeded`: its new pods never become ready) is reported `waiting`
/// ("a rollout is under way") for ever: the failure is never said, and Argo CD's
/// health (the documented Lua) shows Progressing instead of Degraded.
#[test]
fn gitops_review4_an_opt_in_whose_rollout_failed_is_not_left_waiting_for_ever_fake_api() {
    let (world, dir, _prom) = setup(false);
    {
        let mut w = world.lock().unwrap();
        w.broken.insert(STABLE.into());
        w.apply_as(STABLE, &as_git_has_it(manifest("v2", true)), "kubectl");
    }
    let server = Server::start(&world, dir.path());
    for _ in 0..3 {
        server.tick();
    }
    let phase = annotation(&world, "rampart.dev/phase");
    let message = annotation(&world, "rampart.dev/message").unwrap_or_default();
    assert!(
        phase.as_deref() != Some("waiting") || message.contains("ProgressDeadlineExceeded"),
        "a Deployment whose rollout failed (ProgressDeadlineExceeded) is reported \
         {phase:?}: {message:?}"
    );
}

/// Review of the fixes: the release the policy edit no longer supersedes rolls back;
/// the same template, now named by another version, was queued again at the next
/// tick (the verdict was looked up under the new version only): a second canary of
/// what was just refused.
#[test]
fn gitops_review4_a_revision_refused_after_a_policy_edit_is_not_released_again_fake_api() {
    let (world, dir, _prom) = setup(true);
    let server = Server::start(&world, dir.path());
    adopted_then_v2(&server, &world);
    let first = started(&server.tick());
    server.wait_phase(&first, "awaiting_approval");
    let edited = policy_text(&world).replace(
        "registry.example.com/checkout:{version}",
        "registry.example.com/shop/checkout:{version}",
    );
    git_applies_policy(&world, &edited);
    server.tick();
    server.roll_back(&first);
    let did = server.tick();
    assert!(
        !did.iter().any(|(_, d)| matches!(d, Did::Started(_))),
        "the revision release {first} rolled back was queued again: {did:?}"
    );
    assert_eq!(
        annotation(&world, "rampart.dev/phase").as_deref(),
        Some("refused")
    );
}

/// Review of the fixes: the policy's service renamed and a new template in the same
/// sync. The old release is superseded; the new one, queued under the new service,
/// had no queue to wait in and would have run on the same canary as the rollback.
/// It waits for the old release to end, then starts.
#[test]
fn gitops_review4_a_rename_and_a_new_template_wait_for_the_old_release_to_end_fake_api() {
    let (world, dir, _prom) = setup(true);
    let server = Server::start(&world, dir.path());
    adopted_then_v2(&server, &world);
    let first = started(&server.tick());
    server.wait_phase(&first, "awaiting_approval");
    let renamed = policy_text(&world).replace("service: checkout", "service: checkout-web");
    git_applies_policy(&world, &renamed);
    git_applies(&world, "v3");
    let did = server.tick();
    assert!(
        did.iter()
            .any(|(_, d)| matches!(d, Did::Superseded(id) if *id == first)),
        "{did:?}"
    );
    assert!(
        !did.iter().any(|(_, d)| matches!(d, Did::Started(_))),
        "the new template was queued beside the release still ending: {did:?}"
    );
    server.wait_over(&first);
    let next = started(&server.tick());
    server.wait_phase(&next, "awaiting_approval");
}
