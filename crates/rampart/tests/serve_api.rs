//! The API's contract on a real `rampart serve`: every route answers 401 without a
//! valid token (but /healthz and /openapi.json), 403 to a role without the right, and
//! lets every role with it through (also on the API's router over the in-memory store);
//! the OpenAPI document lists exactly the routes the router serves; errors are JSON
//! with a stable code; secrets stay out of answers.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use common::serve::{Server, policy};
use serde_json::{Value, json};

/// Every API route: method, path (with a release that does not exist, so that allowed
/// calls end in 404 or 400 without starting anything), a body, and the roles allowed.
fn routes() -> Vec<(
    &'static str,
    &'static str,
    Option<Value>,
    &'static [&'static str],
)> {
    const ALL: &[&str] = &["viewer", "deployer", "approver", "admin", "agent"];
    // What an agent may do too: start releases and move them the safe way.
    const SAFE: &[&str] = &["deployer", "admin", "agent"];
    const DEPLOY: &[&str] = &["deployer", "admin"];
    const APPROVE: &[&str] = &["approver", "admin"];
    const ASK: &[&str] = &["deployer", "approver", "admin", "agent"];
    const FREEZE: &[&str] = &["admin", "agent"];
    const ADMIN: &[&str] = &["admin"];
    vec![
        ("GET", "/", None, ALL),
        ("GET", "/ui/app.js", None, ALL),
        ("GET", "/ui/app.css", None, ALL),
        ("POST", "/ui/logout", None, ALL),
        ("GET", "/api/v1/whoami", None, ALL),
        ("GET", "/api/v1/releases", None, ALL),
        ("POST", "/api/v1/releases", Some(json!({})), SAFE),
        ("GET", "/api/v1/releases/nope", None, ALL),
        ("GET", "/api/v1/releases/nope/events", None, ALL),
        ("GET", "/api/v1/releases/nope/metrics", None, ALL),
        ("GET", "/api/v1/releases/nope/audit", None, ALL),
        ("POST", "/api/v1/releases/nope/approve", None, APPROVE),
        (
            "POST",
            "/api/v1/releases/nope/promote",
            Some(json!({"reason": "r"})),
            APPROVE,
        ),
        ("POST", "/api/v1/releases/nope/pause", None, SAFE),
        ("POST", "/api/v1/releases/nope/resume", None, DEPLOY),
        (
            "POST",
            "/api/v1/releases/nope/abort",
            Some(json!({"reason": "r"})),
            SAFE,
        ),
        (
            "POST",
            "/api/v1/releases/nope/rollback",
            Some(json!({"reason": "r"})),
            SAFE,
        ),
        (
            "POST",
            "/api/v1/releases/nope/request-approval",
            Some(json!({"reason": "r"})),
            ASK,
        ),
        ("GET", "/api/v1/freeze", None, ALL),
        (
            "POST",
            "/api/v1/freeze",
            Some(json!({"state": "maybe", "reason": "r"})),
            FREEZE,
        ),
        (
            "POST",
            "/api/v1/policies/validate",
            Some(json!({"policy": "service: x"})),
            ALL,
        ),
        ("GET", "/api/v1/policies/nope", None, ALL),
        ("GET", "/api/v1/services", None, ALL),
        ("GET", "/api/v1/tokens", None, ADMIN),
        (
            "POST",
            "/api/v1/tokens",
            Some(json!({"name": "n", "role": "king"})),
            ADMIN,
        ),
        ("DELETE", "/api/v1/tokens/nope", None, ADMIN),
        ("GET", "/api/v1/audit/verify", None, ALL),
        ("GET", "/api/v1/stream", None, ALL),
    ]
}

fn is_error(v: &Value, code: &str) -> bool {
    v["error"]["code"] == code
        && v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
}

const ROLES: [&str; 5] = ["viewer", "deployer", "approver", "admin", "agent"];

/// Checks every route against every role on the API at `url` (port `port`), given a
/// token of each role named `ROLE-1` (in `ROLES` order).
fn every_route_enforces_its_roles(url: &str, port: u16, tokens: &[(&str, String)]) {
    let call = |method: &str, path: &str, token: Option<&str>, body: Option<Value>| {
        common::serve::call(url, method, path, token, body)
    };
    for (method, path, body, allowed) in routes() {
        if path.ends_with("/stream") {
            continue; // a stream never ends; checked below
        }
        for bad in [None, Some("rampart_0000"), Some("not a token")] {
            let (status, v) = call(method, path, bad, body.clone());
            assert_eq!(status, 401, "{method} {path} with {bad:?}: {v}");
            assert!(is_error(&v, "unauthorized"), "{method} {path}: {v}");
        }
        for (role, token) in tokens {
            let (status, v) = call(method, path, Some(token), body.clone());
            if allowed.contains(role) {
                assert!(
                    ![401, 403].contains(&status) && status < 500,
                    "{method} {path} as {role}: {status} {v}"
                );
            } else {
                assert_eq!(status, 403, "{method} {path} as {role}: {v}");
                assert!(is_error(&v, "forbidden"), "{method} {path}: {v}");
            }
        }
    }
    // The open routes.
    assert_eq!(call("GET", "/healthz", None, None).0, 200);
    let (status, doc) = call("GET", "/openapi.json", None, None);
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
    // The stream: 401 without a token, and an event stream with one.
    assert_eq!(call("GET", "/api/v1/stream", None, None).0, 401);
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    use std::io::{Read, Write};
    write!(
        stream,
        "GET /api/v1/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        tokens[0].1
    )
    .unwrap();
    let mut head = [0u8; 256];
    let n = stream.read(&mut head).unwrap();
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/event-stream"), "{head}");
    // A revoked token is refused from then on.
    let (status, _) = call(
        "DELETE",
        "/api/v1/tokens/viewer-1",
        Some(&tokens[3].1),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(
        call("GET", "/api/v1/releases", Some(&tokens[0].1), None).0,
        401
    );
    let (_, who) = call("GET", "/api/v1/whoami", Some(&tokens[2].1), None);
    assert_eq!(who, json!({"name": "approver-1", "role": "approver"}));
}

#[test]
fn every_route_enforces_its_roles_and_answers_401_without_a_valid_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("state"));
    let tokens: Vec<(&str, String)> = ROLES
        .into_iter()
        .map(|role| (role, server.token(role, &format!("{role}-1"))))
        .collect();
    every_route_enforces_its_roles(&server.url, server.port, &tokens);
}

#[test]
fn every_route_enforces_its_roles_on_the_in_memory_store() {
    use rampart_adapters::store::Tokens;
    let (url, port, store, _) = common::serve::in_memory_api();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let tokens: Vec<(&str, String)> = ROLES
        .into_iter()
        .map(|role| {
            let secret = rt
                .block_on(store.create_token(&format!("{role}-1"), role, "test", 1))
                .unwrap();
            (role, secret)
        })
        .collect();
    every_route_enforces_its_roles(&url, port, &tokens);
}

/// `(METHOD, /path/{param})` pairs the server serves: the router's own route table.
fn served_routes() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = rampart::serve::routes()
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    out.sort();
    out
}

#[test]
fn the_openapi_document_lists_exactly_the_served_routes() {
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(common::repo().join("docs/openapi.json")).unwrap(),
    )
    .unwrap();
    let mut documented: Vec<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .filter(|k| ["get", "post", "delete", "put", "patch"].contains(&k.as_str()))
                .map(|m| (m.to_uppercase(), path.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    documented.sort();
    assert_eq!(documented, served_routes());
    // The role table of this test covers every documented API route.
    let mut tested: Vec<(String, String)> = routes()
        .into_iter()
        .map(|(m, p, _, _)| {
            let p = p.replace("/nope", "/{id}");
            let p = if p.starts_with("/api/v1/policies/{id}") {
                "/api/v1/policies/{service}".into()
            } else if p.starts_with("/api/v1/tokens/{id}") {
                "/api/v1/tokens/{name}".into()
            } else {
                p
            };
            (m.to_string(), p)
        })
        .collect();
    tested.extend([
        ("GET".into(), "/healthz".into()),
        ("GET".into(), "/openapi.json".into()),
        ("POST".into(), "/ui/login".into()),
    ]);
    tested.sort();
    assert_eq!(tested, documented);
    // The roles each operation documents are the roles the server lets through.
    for (method, path, _, allowed) in routes() {
        let key = path
            .replace("/nope", "/{id}")
            .replace("/policies/{id}", "/policies/{service}")
            .replace("/tokens/{id}", "/tokens/{name}");
        let description = doc["paths"][key.as_str()][method.to_lowercase()]["description"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path}: no description"));
        let line = description
            .split("Roles: ")
            .nth(1)
            .unwrap_or_else(|| panic!("{method} {path}: no Roles line in {description:?}"));
        let mut listed: Vec<&str> = line.split('.').next().unwrap().split(", ").collect();
        let mut allowed = allowed.to_vec();
        listed.sort_unstable();
        allowed.sort_unstable();
        assert_eq!(listed, allowed, "{method} {path}: documented roles");
    }
    // Every operation documents its security and its error answers.
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let open = ["/healthz", "/openapi.json", "/ui/login"].contains(&path.as_str());
            assert_eq!(
                op["security"] == json!([]),
                open,
                "{method} {path} security"
            );
            if path != "/healthz" && path != "/openapi.json" {
                assert!(
                    op["responses"]["401"].is_object(),
                    "{method} {path} lacks 401"
                );
            }
            if !open {
                assert!(
                    op["responses"]["403"].is_object(),
                    "{method} {path} lacks 403"
                );
            }
        }
    }
}

#[test]
fn errors_are_json_with_stable_codes_and_secrets_never_leave_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("state"));
    let admin = server.token("admin", "root");
    let call = |m: &str, p: &str, b: Option<Value>| server.call(m, p, Some(&admin), b);

    let (s, v) = call("GET", "/no/such/route", None);
    assert!(s == 404 && is_error(&v, "not_found"), "{s} {v}");
    let (s, v) = call("PUT", "/api/v1/releases", None);
    assert!(s == 405 && is_error(&v, "method_not_allowed"), "{s} {v}");
    let (s, v) = call(
        "POST",
        "/api/v1/releases",
        Some(json!({"policy": "service: [", "version": "v2"})),
    );
    assert!(s == 422 && is_error(&v, "invalid_policy"), "{s} {v}");
    assert!(
        v["error"]["details"]["diagnostics"][0]["line"].is_u64(),
        "{v}"
    );
    let (s, v) = call("POST", "/api/v1/releases", Some(json!({"policy": 1})));
    assert!(s == 400 && is_error(&v, "invalid_request"), "{s} {v}");
    let (s, v) = call("GET", "/api/v1/releases?limit=many", None);
    assert!(s == 400 && is_error(&v, "invalid_request"), "{s} {v}");
    // A body over the size limit is refused in the same JSON shape, on every kind of
    // route that reads one.
    let huge = json!({"reason": "x".repeat(3 << 20)});
    for path in [
        "/api/v1/releases/nope/abort",
        "/api/v1/releases/nope/request-approval",
        "/api/v1/releases",
    ] {
        let (s, v) = call("POST", path, Some(huge.clone()));
        assert!(
            s == 413 && is_error(&v, "invalid_request"),
            "{path}: {s} {v}"
        );
    }
    let (s, v) = call(
        "POST",
        "/api/v1/releases/x/approve",
        Some(json!({"nonsense": 1})),
    );
    assert!(s == 400 && is_error(&v, "invalid_request"), "{s} {v}");
    let (s, v) = call(
        "POST",
        "/api/v1/policies/validate",
        Some(json!({"policy": "service: x"})),
    );
    assert_eq!((s, &v["valid"]), (200, &json!(false)), "{v}");
    assert!(
        v["diagnostics"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["path"].is_string())
    );

    // A frozen service refuses new releases with `frozen`.
    let (s, _) = call(
        "POST",
        "/api/v1/freeze",
        Some(json!({"state": "on", "service": "shop", "reason": "sale"})),
    );
    assert_eq!(s, 200);
    let shop = policy("shop", common::free_port(), "");
    let (s, v) = call(
        "POST",
        "/api/v1/releases",
        Some(json!({"policy": shop, "version": "v2"})),
    );
    assert!(s == 409 && is_error(&v, "frozen"), "{s} {v}");
    let (_, v) = call("GET", "/api/v1/freeze", None);
    assert_eq!(v["freezes"][0]["scope"], "shop");
    assert_eq!(
        v["freezes"][0]["actor"], "root",
        "recorded as the token's name"
    );

    // Secrets in a policy are redacted from its API copy; tokens are never listed.
    let secret_policy = format!(
        "{}notify:\n  - webhook: http://127.0.0.1:9/hook\n    secret: hunter2-signing-key\n  - slack: https://hooks.slack.example/T000/B000/XXXX\n  - pagerduty: {{routing_key: pd-routing-key-123}}\n",
        policy("paid", common::free_port(), "")
    );
    let deployer = server.token("deployer", "ci");
    let (s, v) = server.call(
        "POST",
        "/api/v1/releases",
        Some(&deployer),
        Some(json!({"policy": secret_policy, "version": "v2", "stable": "v1"})),
    );
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    server.wait_release(&id, &admin, std::time::Duration::from_secs(30), |v| {
        v["phase"] != "queued"
    });
    let (_, v) = call("GET", "/api/v1/policies/paid", None);
    let text = v["policy"].as_str().unwrap();
    for secret in [
        "hunter2-signing-key",
        "hooks.slack.example",
        "pd-routing-key-123",
    ] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    assert!(
        text.contains("<redacted>") && text.contains("service: paid"),
        "{text}"
    );
    let (_, v) = call("GET", "/api/v1/tokens", None);
    assert!(
        !v.to_string().contains(&deployer) && !v.to_string().contains("hash"),
        "{v}"
    );
    let (s, v) = call(
        "POST",
        &format!("/api/v1/releases/{id}/abort"),
        Some(json!({"reason": "done with it"})),
    );
    assert_eq!(s, 202, "{v}");
    // The report comes once the server is done with the release (and keeps serving it).
    server.wait_release(&id, &admin, std::time::Duration::from_secs(30), |v| {
        v["report"].is_object()
    });
    let log = std::fs::read_to_string(server.state.join("logs").join(format!("{id}.log"))).unwrap();
    assert!(
        !log.contains("hunter2") && !log.contains(&deployer),
        "{log}"
    );
}

/// Sends one raw HTTP/1.1 request (the connection closes after it) and returns the
/// whole answer.
fn raw(port: u16, request: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn the_dashboard_signs_in_with_a_token_and_guards_changes_made_with_its_cookie() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("state"));
    let token = server.token("admin", "ops");
    let port = server.port;
    let page = raw(
        port,
        "GET / HTTP/1.1\r\nHost: x\r\nAccept: text/html\r\nConnection: close\r\n\r\n",
    );
    assert!(page.starts_with("HTTP/1.1 401"), "{page}");
    assert!(
        page.contains("<form") && page.contains("name=\"token\""),
        "{page}"
    );
    let login = |t: &str| {
        let body = format!("token={t}");
        raw(
            port,
            &format!(
                "POST /ui/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
    };
    assert!(login("rampart_nope").starts_with("HTTP/1.1 401"));
    let ok = login(&token);
    assert!(ok.starts_with("HTTP/1.1 303"), "{ok}");
    let cookie = ok
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .unwrap()
        .to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap();
    let page = raw(
        port,
        &format!("GET / HTTP/1.1\r\nHost: x\r\nCookie: {session}\r\nConnection: close\r\n\r\n"),
    );
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(
        page.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{page}"
    );
    assert!(
        page.contains("/ui/app.js") && !page.contains("http://") && !page.contains("https://"),
        "no CDN: {page}"
    );
    for asset in ["/ui/app.js", "/ui/app.css"] {
        let a = raw(
            port,
            &format!(
                "GET {asset} HTTP/1.1\r\nHost: x\r\nCookie: {session}\r\nConnection: close\r\n\r\n"
            ),
        );
        assert!(a.starts_with("HTTP/1.1 200"), "{asset}: {a}");
        assert!(
            !a.contains("https://") && !a.contains("http://"),
            "{asset} loads nothing from elsewhere"
        );
    }
    // A change with the cookie alone (what a cross-site form could send) is refused.
    let body = r#"{"state":"on","reason":"x"}"#;
    let change = |extra: &str| {
        raw(
            port,
            &format!(
                "POST /api/v1/freeze HTTP/1.1\r\nHost: x\r\nCookie: {session}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
    };
    assert!(change("").starts_with("HTTP/1.1 403"));
    assert!(change("X-Rampart-UI: 1\r\n").starts_with("HTTP/1.1 200"));
}

/// Login CSRF: another site's page could post its own token to `/ui/login` from the
/// victim's browser, which stored it as the victim's session: whatever they did next
/// in the dashboard was done, and audited, as the other site's token. A sign-in whose
/// `Origin` is not this server, or that the browser marks as cross-site, is refused.
#[test]
fn a_sign_in_posted_from_another_site_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("state"));
    let token = server.token("viewer", "outsider");
    let port = server.port;
    let login = |extra: &str| {
        let body = format!("token={token}");
        raw(
            port,
            &format!(
                "POST /ui/login HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
    };
    for foreign in [
        "Origin: https://evil.example\r\n".to_string(),
        "Origin: null\r\n".to_string(),
        format!("Origin: http://127.0.0.1:{port}\r\nSec-Fetch-Site: cross-site\r\n"),
    ] {
        let answer = login(&foreign);
        assert!(answer.starts_with("HTTP/1.1 403"), "{foreign}: {answer}");
        assert!(
            !answer.to_ascii_lowercase().contains("set-cookie"),
            "{answer}"
        );
    }
    for own in [
        format!("Origin: http://127.0.0.1:{port}\r\nSec-Fetch-Site: same-origin\r\n"),
        String::new(), // a client that sends neither (curl)
        // Behind a proxy that rewrites Host: the browser's own word decides, or the
        // host the proxy forwarded.
        "Origin: https://rampart.example\r\nSec-Fetch-Site: same-origin\r\n".to_string(),
        "Origin: https://rampart.example\r\nX-Forwarded-Host: rampart.example\r\n".to_string(),
    ] {
        let answer = login(&own);
        assert!(answer.starts_with("HTTP/1.1 303"), "{own}: {answer}");
    }
}
