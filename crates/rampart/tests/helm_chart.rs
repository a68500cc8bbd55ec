//! The Helm chart in `deploy/helm/rampart` and the `Dockerfile`, checked without a
//! cluster or a container engine.
//!
//! The chart is rendered by Helm's own template engine (Helm v4's Go SDK, which PyPI's
//! `helm-python-sdk` ships as a library) and every object is validated against the
//! Kubernetes API schemas that PyPI's `kubernetes-validate` bundles, in strict mode
//! (`scripts/helm_check.py`). `scripts/test.sh` installs both into its virtual
//! environment and names its Python in `RAMPART_HELM_PYTHON`. The image is not built
//! here (no container engine): the Dockerfile is read as text.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use serde_json::{Value, json};

/// The Kubernetes versions whose schemas the objects must satisfy: the oldest the
/// chart's `kubeVersion` admits and the newest `kubernetes-validate` knows.
const KUBERNETES: &str = "1.25.0,1.37.0";

/// The Python with Helm's engine and the schemas, or `None` (with the reason printed)
/// when this run has neither: `cargo test` outside `scripts/test.sh`.
fn python() -> Option<String> {
    if let Ok(p) = std::env::var("RAMPART_HELM_PYTHON") {
        return Some(p); // scripts/test.sh installed it: it must work
    }
    let found = std::process::Command::new("python3")
        .args(["-c", "import helm_python, kubernetes_validate"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!(
            "SKIPPED: no Helm engine (PyPI helm-python-sdk, kubernetes-validate); scripts/test.sh installs them and sets RAMPART_HELM_PYTHON"
        );
    }
    found.then(|| "python3".to_string())
}

/// What `scripts/helm_check.py` says about the chart with these values: its exit
/// code, its report and its stderr.
fn check(python: &str, values: &Value) -> (i32, Value, String) {
    let repo = common::repo();
    let out = std::process::Command::new(python)
        .arg(repo.join("scripts/helm_check.py"))
        .arg(repo.join("deploy/helm/rampart"))
        .arg(values.to_string())
        .arg(KUBERNETES)
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (
        out.status.code().unwrap_or(-1),
        report,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Renders and validates; every object must be valid for `KUBERNETES`.
fn render(python: &str, values: &Value) -> Vec<Value> {
    let (code, report, stderr) = check(python, values);
    assert_eq!(code, 0, "values {values}: {stderr}");
    assert_eq!(
        report["kubernetes"],
        json!(KUBERNETES.split(',').collect::<Vec<_>>())
    );
    assert_eq!(report["lint"], json!([]), "helm lint --strict: {report}");
    assert!(
        report["notes"].as_str().unwrap().contains("port-forward"),
        "NOTES.txt: {report}"
    );
    report["objects"].as_array().unwrap().clone()
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found = of_kind(objects, kind);
    assert_eq!(found.len(), 1, "one {kind}: {objects:?}");
    found[0]
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Every rule as (group, resource, verb, resourceNames), sorted.
fn rules(roles: &[&Value]) -> Vec<(String, String, String, Vec<String>)> {
    let mut out = Vec::new();
    for role in roles {
        for rule in role["rules"].as_array().unwrap() {
            let names: Vec<String> = strings(&rule["resourceNames"])
                .into_iter()
                .map(String::from)
                .collect();
            for g in strings(&rule["apiGroups"]) {
                for r in strings(&rule["resources"]) {
                    for v in strings(&rule["verbs"]) {
                        out.push((g.into(), r.into(), v.into(), names.clone()));
                    }
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// What every install must have: a pod that runs as non-root on a read-only root
/// with no capabilities, probes on a route the server has, a Service, a disruption
/// budget, and RBAC with no wildcard.
fn assert_common(objects: &[Value]) {
    let deployment = one(objects, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let psc = &pod["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true, "{psc}");
    assert!(psc["runAsUser"].as_u64().unwrap() > 0, "{psc}");
    assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault", "{psc}");
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{sc}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{sc}");
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"], "{sc}");
    // The state directory is a volume, since the root is read-only.
    let mounts = c["volumeMounts"].as_array().unwrap();
    assert!(
        mounts.iter().any(|m| m["mountPath"] == "/var/lib/rampart"),
        "{mounts:?}"
    );
    let openapi = std::fs::read_to_string(common::repo().join("docs/openapi.json")).unwrap();
    for probe in ["livenessProbe", "readinessProbe"] {
        let get = &c[probe]["httpGet"];
        let path = get["path"]
            .as_str()
            .unwrap_or_else(|| panic!("{probe}: {c}"));
        assert!(
            openapi.contains(&format!("\"{path}\"")),
            "{probe} {path} is no route of rampart serve (docs/openapi.json)"
        );
        assert_eq!(get["port"], "http", "{probe}");
    }
    assert!(c["resources"]["requests"].is_object(), "{c}");
    // The arguments parse with the binary's own parser.
    let args = strings(&c["args"]);
    assert_eq!(args.first(), Some(&"serve"), "{args:?}");
    let parsed = common::rampart()
        .args(&args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        parsed.status.success(),
        "`rampart {}` does not parse: {}",
        args.join(" "),
        String::from_utf8_lossy(&parsed.stderr)
    );
    let service = one(objects, "Service");
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    let pdb = one(objects, "PodDisruptionBudget");
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    let account = one(objects, "ServiceAccount");
    assert_eq!(pod["serviceAccountName"], account["metadata"]["name"]);
    let mut roles = of_kind(objects, "Role");
    roles.extend(of_kind(objects, "ClusterRole"));
    assert!(!roles.is_empty(), "no RBAC: {objects:?}");
    for (g, r, v, _) in rules(&roles) {
        assert!(
            ![&g, &r, &v].iter().any(|s| s.contains('*')),
            "a wildcard in RBAC: {g}/{r} {v}"
        );
        assert!(
            !["pods", "secrets", "events", "leases"].contains(&r.as_str()),
            "the adapter never calls {g}/{r}, yet the chart grants {v} on it"
        );
        // Only the GitOps watch reads ConfigMaps (its policies), and only reads them.
        if r == "configmaps" {
            assert!(
                args.contains(&"--kubernetes"),
                "{g}/{r} {v} without the watch"
            );
            assert_eq!(v, "get", "{g}/{r}");
        }
    }
}

fn env<'a>(deployment: &'a Value, name: &str) -> Option<&'a Value> {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
}

#[test]
fn the_chart_renders_valid_objects_for_sqlite_postgres_and_cluster_wide_rbac() {
    let Some(py) = python() else { return };

    // The defaults: one replica on SQLite, on a claim, replaced (never two at once).
    let objects = render(&py, &json!({}));
    assert_common(&objects);
    let deployment = one(&objects, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
    let claim = one(&objects, "PersistentVolumeClaim");
    let volumes = deployment["spec"]["template"]["spec"]["volumes"].to_string();
    assert!(
        volumes.contains(&format!("\"claimName\":{}", claim["metadata"]["name"])),
        "{volumes}"
    );
    assert!(env(deployment, "RAMPART_STORE").is_none());
    assert_eq!(of_kind(&objects, "Role").len(), 1);
    assert_eq!(of_kind(&objects, "RoleBinding").len(), 1);
    assert!(of_kind(&objects, "ClusterRole").is_empty());

    // PostgreSQL with three replicas: the URL from a Secret, no claim, each replica
    // named by its pod in the lease.
    let objects = render(
        &py,
        &json!({"replicas": 3, "store": {"type": "postgres", "postgres": {"existingSecret": "rampart-db", "key": "url"}}}),
    );
    assert_common(&objects);
    let deployment = one(&objects, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 3);
    assert_eq!(deployment["spec"]["strategy"]["type"], "RollingUpdate");
    assert!(of_kind(&objects, "PersistentVolumeClaim").is_empty());
    let store = env(deployment, "RAMPART_STORE").unwrap();
    assert_eq!(
        store["valueFrom"]["secretKeyRef"],
        json!({"name": "rampart-db", "key": "url"})
    );
    let replica = env(deployment, "RAMPART_REPLICA").unwrap();
    assert_eq!(
        replica["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );

    // Cluster-wide RBAC: one ClusterRole, bound to the service account in its namespace.
    let objects = render(&py, &json!({"rbac": {"scope": "cluster"}}));
    assert_common(&objects);
    assert!(of_kind(&objects, "Role").is_empty());
    let binding = one(&objects, "ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
    assert_eq!(binding["subjects"][0]["namespace"], "rampart");

    // Several namespaces: a Role and a RoleBinding in each; one mode, its rules only.
    let objects = render(
        &py,
        &json!({"rbac": {"namespaces": ["shop", "payments"], "trafficModes": ["replica_ratio"]}}),
    );
    assert_common(&objects);
    let roles = of_kind(&objects, "Role");
    let namespaces: Vec<_> = roles.iter().map(|r| &r["metadata"]["namespace"]).collect();
    assert_eq!(namespaces, [&json!("shop"), &json!("payments")]);
    assert_eq!(of_kind(&objects, "RoleBinding").len(), 2);
    let resources: Vec<String> = rules(&roles).into_iter().map(|r| r.1).collect();
    assert!(
        !resources
            .iter()
            .any(|r| r == "services" || r == "httproutes"),
        "replica_ratio uses neither Services nor HTTPRoutes: {resources:?}"
    );

    // Policies are mounted from a ConfigMap.
    let objects = render(
        &py,
        &json!({"policies": {"checkout.yaml": "service: checkout\n"}}),
    );
    let map = one(&objects, "ConfigMap");
    assert_eq!(map["data"]["checkout.yaml"], "service: checkout\n");
}

#[test]
fn the_chart_role_grants_exactly_the_role_the_adapter_is_tested_against() {
    // examples/kubernetes/rbac.yaml is checked against every request of a release in
    // each traffic mode (crates/kubernetes/tests/fake_api_release.rs); the chart's
    // Role, with every mode and the example's canary, must be the same rules.
    let Some(py) = python() else { return };
    let objects = render(
        &py,
        &json!({"rbac": {"canaryDeployments": ["checkout-canary"]}}),
    );
    let example = common::repo().join("examples/kubernetes/rbac.yaml");
    let out = std::process::Command::new(&py)
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        ])
        .arg(&example)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let documented: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        rules(&of_kind(&objects, "Role")),
        rules(&of_kind(&documented, "Role"))
    );
}

#[test]
fn gitops_values_start_the_watch_and_add_exactly_its_rules() {
    let Some(py) = python() else { return };
    let plain = render(&py, &json!({"rbac": {"namespaces": ["shop"]}}));
    let objects = render(
        &py,
        &json!({"rbac": {"namespaces": ["shop"]}, "gitops": {"enabled": true, "interval": "30s"}}),
    );
    assert_common(&objects);
    let args =
        strings(&one(&objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"])
            .join(" ");
    assert!(
        args.contains("--kubernetes --kubernetes-interval 30s --kubernetes-namespace shop"),
        "{args}"
    );
    // The watch adds what docs/kubernetes.md's `rampart-gitops` Role grants (which a
    // fake-API test checks against every request of a GitOps release), nothing else.
    let before = rules(&of_kind(&plain, "Role"));
    let mut added: Vec<_> = rules(&of_kind(&objects, "Role"))
        .into_iter()
        .filter(|r| !before.contains(r))
        .map(|(g, r, v, _)| format!("{g}/{r} {v}"))
        .collect();
    added.sort();
    assert_eq!(added, ["/configmaps get", "apps/deployments list"]);
    // Without its own namespaces, the watch follows the Roles' namespaces.
    let args = strings(
        &one(
            &render(&py, &json!({"gitops": {"enabled": true}})),
            "Deployment",
        )["spec"]["template"]["spec"]["containers"][0]["args"],
    )
    .join(" ");
    assert!(args.ends_with("--kubernetes-namespace rampart"), "{args}");
}

/// Review: the Roles went only to `rbac.namespaces`, so a namespace watched through
/// `gitops.namespaces` alone was Forbidden to list. And the template lock covers the
/// namespaces watched, keyed on the annotation the promotion writes.
#[test]
fn gitops_namespaces_get_roles_and_the_template_lock() {
    let Some(py) = python() else { return };
    let values = json!({"rbac": {"namespaces": ["shop"]},
                        "gitops": {"enabled": true, "namespaces": ["shop", "payments"]}});
    let objects = render(&py, &values);
    assert_common(&objects);
    let mut role_namespaces: Vec<&str> = of_kind(&objects, "Role")
        .iter()
        .filter_map(|r| r["metadata"]["namespace"].as_str())
        .collect();
    role_namespaces.sort();
    assert_eq!(role_namespaces, ["payments", "shop"]);
    let bindings: Vec<&str> = of_kind(&objects, "RoleBinding")
        .iter()
        .filter_map(|r| r["metadata"]["namespace"].as_str())
        .collect();
    assert_eq!(bindings.len(), 2, "{bindings:?}");
    let lock = one(&objects, "ValidatingAdmissionPolicy");
    assert_eq!(lock["spec"]["failurePolicy"], "Ignore", "{lock}");
    let condition = lock["spec"]["matchConditions"][0]["expression"]
        .as_str()
        .unwrap();
    assert!(condition.contains("'rampart.dev/promoting'"), "{condition}");
    assert_eq!(
        lock["spec"]["validations"][0]["expression"],
        "object.spec.template == oldObject.spec.template"
    );
    let binding = one(&objects, "ValidatingAdmissionPolicyBinding");
    assert_eq!(binding["spec"]["policyName"], lock["metadata"]["name"]);
    assert_eq!(strings(&binding["spec"]["validationActions"]), ["Deny"]);
    assert_eq!(
        strings(
            &binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"][0]["values"]
        ),
        ["shop", "payments"]
    );
    let off = render(
        &py,
        &json!({"gitops": {"enabled": true, "lockTemplate": false}}),
    );
    assert!(of_kind(&off, "ValidatingAdmissionPolicy").is_empty());
    assert!(of_kind(&render(&py, &json!({})), "ValidatingAdmissionPolicy").is_empty());
}

#[test]
fn several_replicas_on_sqlite_do_not_render() {
    let Some(py) = python() else { return };
    let (code, _, stderr) = check(&py, &json!({"replicas": 2}));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("needs store.type postgres"), "{stderr}");
    let (code, _, stderr) = check(&py, &json!({"store": {"type": "postgres"}}));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("existingSecret"), "{stderr}");
}

#[test]
fn the_dockerfile_builds_locked_and_runs_the_binary_as_a_numeric_non_root_user() {
    // No container engine here: the image is not built in CI. What can be read is.
    let text = std::fs::read_to_string(common::repo().join("Dockerfile")).unwrap();
    // Continuation lines joined, comments dropped: one instruction per line.
    let joined = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("\\\n", " ");
    let stages: Vec<&str> = joined.split("\nFROM ").collect();
    assert!(stages.len() >= 2, "a multi-stage build: {text}");
    let build = stages[0];
    // The image the chart runs: the Kubernetes adapter and PostgreSQL by default.
    assert!(
        build.contains("ARG FEATURES=\"kubernetes,postgres\""),
        "{build}"
    );
    assert!(
        build.contains("cargo build --release --locked"),
        "the build stage uses Cargo.lock: {build}"
    );
    let last = stages[stages.len() - 1];
    let instruction = |name: &str| {
        last.lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix(&format!("{name} ")).map(str::trim))
            .unwrap_or_else(|| panic!("no {name} in the final stage: {last}"))
    };
    let user = instruction("USER");
    let uid: u32 = user.split(':').next().unwrap().parse().unwrap_or_else(|_| {
        panic!("USER {user} is not numeric (runAsNonRoot cannot check a name)")
    });
    assert_ne!(uid, 0, "USER {user}");
    assert_eq!(instruction("ENTRYPOINT"), r#"["/usr/local/bin/rampart"]"#);
    assert!(
        last.contains("COPY --from=build /src/target/release/rampart /usr/local/bin/rampart"),
        "{last}"
    );
    // The chart runs the same uid, so the state volume (fsGroup) is writable.
    let values =
        std::fs::read_to_string(common::repo().join("deploy/helm/rampart/values.yaml")).unwrap();
    assert!(
        values.contains(&format!("runAsUser: {uid}\n")),
        "values.yaml runs another uid than the image's {uid}"
    );
}
