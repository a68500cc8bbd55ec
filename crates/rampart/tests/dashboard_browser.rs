//! The dashboard in a real headless Chromium (Debian's `chromium`, driven through
//! `chromium-driver` over WebDriver): sign in, watch a real release's weight change
//! live, click approve at its approval point, see it promoted, and keep a screenshot
//! (`target/test-artifacts/dashboard-promoted.png`).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::serve::{Server, call, policy, submit, until};
use common::{free_port, runtime, start_load};
use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn tool(var: &str, default: &str) -> PathBuf {
    let path = PathBuf::from(std::env::var(var).unwrap_or_else(|_| default.to_string()));
    assert!(
        path.exists(),
        "{} is missing: install Debian's chromium and chromium-driver (scripts/test.sh does), or set {var}",
        path.display()
    );
    path
}

/// A WebDriver session in headless Chromium.
struct Browser {
    driver: Child,
    base: String,
    session: String,
}

impl Browser {
    fn start() -> Browser {
        let chromium = tool("RAMPART_CHROMIUM", "/usr/bin/chromium");
        let chromedriver = tool("RAMPART_CHROMEDRIVER", "/usr/bin/chromedriver");
        let port = free_port();
        let driver = std::process::Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        until("chromedriver", Duration::from_secs(30), || {
            call(&base, "GET", "/status", None, None).1["value"]["ready"] == true
        });
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1100"]
            }
        }}});
        let (status, v) = call(&base, "POST", "/session", None, Some(caps));
        assert_eq!(status, 200, "no browser session: {v}");
        let session = v["value"]["sessionId"].as_str().unwrap().to_string();
        Browser {
            driver,
            base,
            session,
        }
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("/session/{}{path}", self.session);
        let (status, v) = call(&self.base, method, &url, None, body.or(Some(json!({}))));
        assert_eq!(status, 200, "{method} {path}: {v}");
        v["value"].clone()
    }

    fn go(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })));
    }

    fn find(&self, css: &str) -> String {
        let v = self.cmd(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        v[ELEMENT].as_str().unwrap().to_string()
    }

    fn js(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    fn text(&self, css: &str) -> String {
        let script =
            format!("const e = document.querySelector({css:?}); return e ? e.textContent : null;");
        self.js(&script).as_str().unwrap_or_default().to_string()
    }

    fn click(&self, css: &str) {
        let id = self.find(css);
        self.cmd("POST", &format!("/element/{id}/click"), None);
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css);
        self.cmd(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        );
    }

    fn screenshot(&self) -> Vec<u8> {
        let b64 = self.cmd("GET", "/screenshot", None);
        decode_base64(b64.as_str().unwrap())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = call(
            &self.base,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
            None,
        );
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn decode_base64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let clean: Vec<u8> = s.bytes().filter(|c| !b"=\r\n".contains(c)).collect();
    clean
        .chunks(4)
        .flat_map(|q| {
            let n =
                q.iter().fold(0u32, |acc, c| acc << 6 | u32::from(val(*c))) << (6 * (4 - q.len()));
            let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            bytes[..q.len() - 1].to_vec()
        })
        .collect()
}

#[test]
fn an_approver_watches_a_release_in_the_dashboard_and_approves_it_there() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("state"));
    let ci = server.token("deployer", "ci");
    let alice = server.token("approver", "alice");
    let rt = runtime();
    let port = free_port();
    let _ = start_load(&rt, port, 150);
    // A long bake at 20 % before the approval point, so the page (opened after the
    // browser starts) still sees the release there, whatever the machine's speed.
    let approval = "      - {weight: 20, bake: 15s}\n      - {approval: {role: release-manager, timeout: 10m}}\n";
    let id = submit(&server, &ci, &policy("storefront", port, approval));

    let browser = Browser::start();
    browser.go(&server.url);
    browser.type_into("#token", &alice);
    browser.click("#sign-in");
    until(
        "the dashboard lists the release",
        Duration::from_secs(30),
        || browser.text("#who").contains("alice") && browser.text("#releases").contains(&id),
    );
    browser.click(&format!("tr.row[data-id=\"{id}\"]"));

    // Live: the page follows the release without being reloaded by the test.
    let mut weights = Vec::new();
    until("the approval point", Duration::from_secs(90), || {
        let w = browser.text("#weight");
        if !w.is_empty() && weights.last() != Some(&w) {
            weights.push(w);
        }
        browser.text("#phase") == "awaiting_approval"
    });
    assert!(
        weights.contains(&"20%".to_string()),
        "weights seen: {weights:?}"
    );
    assert!(browser.text("#ask").contains("approval"));
    browser.type_into("#reason", "checked the error-rate chart");
    browser.click("#approve");
    until("the promotion", Duration::from_secs(90), || {
        let w = browser.text("#weight");
        if !w.is_empty() && weights.last() != Some(&w) {
            weights.push(w);
        }
        browser.text("#outcome").contains("promoted")
    });
    // Read after the outcome: both come from the same render.
    let last = browser.text("#weight");
    assert_eq!(last, "100%", "{weights:?}");
    let charts = browser.js("return document.querySelectorAll('svg.chart polyline').length");
    assert!(
        charts.as_u64().unwrap() >= 5,
        "weight, two error-rate and two latency lines: {charts}"
    );
    let verdicts = browser.js("return document.querySelectorAll('#verdicts span.pass').length");
    assert!(verdicts.as_u64().unwrap() > 0, "{verdicts}");
    assert!(browser.text("#timeline").contains("approved"));

    let png = browser.screenshot();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG screenshot");
    let artifacts = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::write(artifacts.join("dashboard-promoted.png"), &png).unwrap();

    // The approval is the approver's, recorded under her token's name.
    let (_, events) = server.call(
        "GET",
        &format!("/api/v1/releases/{id}/events"),
        Some(&ci),
        None,
    );
    let approved = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "approved")
        .cloned()
        .unwrap();
    assert_eq!(approved["actor"], "alice", "{approved}");
    let (_, audit) = server.call(
        "GET",
        &format!("/api/v1/releases/{id}/audit"),
        Some(&ci),
        None,
    );
    let request = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "request:approve")
        .cloned()
        .unwrap();
    assert_eq!(request["actor"], "alice");
    assert!(
        request["body"]
            .as_str()
            .unwrap()
            .contains("checked the error-rate chart"),
        "{request}"
    );
}
