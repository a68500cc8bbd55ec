//! Property: no sequence of an agent's calls moves a release past its approval point or
//! lifts a freeze. Seeded random sequences of `rampart mcp` tool calls (over its stdio
//! protocol) and of raw API calls made with the same agent token (an agent may craft
//! its own requests) run against a real `rampart serve` holding a release at its
//! approval point. After every sequence the release is still at or below the weight
//! before the approval point with no approval recorded, the freeze is still on, and no
//! release or token the agent tried to sneak in exists. At the end a human approves and
//! the release moves on, so the release was live all along.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::mcp::Mcp;
use common::serve::{Server, policy, submit};
use common::{free_port, runtime, start_load};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(120);

/// SplitMix64: a seeded, reproducible choice of calls.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
    }
}

#[test]
fn no_sequence_of_agent_calls_passes_an_approval_point_or_lifts_a_freeze() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("state"));
    let admin = server.token("admin", "root");
    let agent = server.token("agent", "bot");
    let port = free_port();
    let rt = runtime();
    let _load = start_load(&rt, port, 150);
    let steps = "      - {approval: {role: release-manager, timeout: 30m}}\n";
    let guarded = policy("guarded", port, steps);
    let release = submit(&server, &admin, &guarded);
    server.wait_release(&release, &admin, LONG, |v| {
        v["phase"] == "awaiting_approval"
    });
    let (status, _) = server.call(
        "POST",
        "/api/v1/freeze",
        Some(&admin),
        Some(json!({"state": "on", "service": "frozen-svc", "reason": "incident"})),
    );
    assert_eq!(status, 200);
    // A policy with its approval point taken out, for another service.
    let stripped = policy("sneaky", free_port(), "");

    let mut mcp = Mcp::start(&["--server", &server.url], Some(&agent));
    // The tools find a release as the CLI does: by id, or by its service's name.
    let (v, err) = mcp.tool("release_status", json!({"release": "guarded"}));
    assert!(!err && v["id"] == release.as_str(), "{v}");
    let api = |method: &str, path: &str, body: Value| {
        server.call(method, path, Some(&agent), Some(body)).0
    };
    for seed in 1..=40u64 {
        let mut rng = Rng(seed);
        let n = 1 + rng.below(8);
        let mut calls = Vec::new();
        for _ in 0..n {
            let pick = rng.below(13);
            calls.push(pick);
            let refused = match pick {
                0 => mcp.tool("approve_release", json!({"release": release})).1,
                1 => {
                    mcp.tool(
                        "rollback_release",
                        json!({"release": release, "reason": "r", "force": true}),
                    )
                    .1
                }
                2 => {
                    mcp.tool(
                        "start_release",
                        json!({"policy": stripped, "version": "v2", "stable": "v1"}),
                    )
                    .1
                }
                3 => {
                    api(
                        "POST",
                        &format!("/api/v1/releases/{release}/promote"),
                        json!({"reason": "r"}),
                    ) == 403
                }
                4 => {
                    api(
                        "POST",
                        &format!("/api/v1/releases/{release}/resume"),
                        json!({}),
                    ) == 403
                }
                5 => {
                    api(
                        "POST",
                        &format!("/api/v1/releases/{release}/approve"),
                        json!({}),
                    ) == 403
                }
                6 => {
                    api(
                        "POST",
                        "/api/v1/freeze",
                        json!({"state": "off", "service": "frozen-svc", "reason": "r"}),
                    ) == 403
                }
                7 => {
                    api(
                        "POST",
                        "/api/v1/freeze",
                        json!({"state": "off", "reason": "r"}),
                    ) == 403
                }
                8 => {
                    api(
                        "POST",
                        "/api/v1/tokens",
                        json!({"name": format!("mine-{seed}"), "role": "admin"}),
                    ) == 403
                }
                // Allowed, and safe: they must not open a way past the approval point.
                9 => {
                    !mcp.tool(
                        "request_approval",
                        json!({"release": release, "reason": "please"}),
                    )
                    .1
                }
                10 => {
                    !mcp.tool(
                        "freeze_releases",
                        json!({"service": "other-svc", "reason": "r"}),
                    )
                    .1
                }
                _ => !mcp.tool("release_status", json!({"release": release})).1,
            };
            assert!(
                refused,
                "seed {seed}: call {pick} of {calls:?} was not refused (or an allowed call failed)"
            );
        }
        // The release has not moved past its approval point.
        let (_, v) = server.call(
            "GET",
            &format!("/api/v1/releases/{release}"),
            Some(&admin),
            None,
        );
        assert!(v["outcome"].is_null(), "seed {seed}: {v}");
        assert!(
            v["weight"].as_f64().unwrap() <= 20.0,
            "seed {seed} {calls:?}: {v}"
        );
        let (_, ev) = server.call(
            "GET",
            &format!("/api/v1/releases/{release}/events"),
            Some(&admin),
            None,
        );
        let kinds: Vec<&str> = ev["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        assert!(
            !kinds.contains(&"approved"),
            "seed {seed} {calls:?}: {kinds:?}"
        );
        // The freeze holds; nothing the agent tried to create exists.
        let (_, f) = server.call("GET", "/api/v1/freeze", Some(&admin), None);
        assert!(
            f["freezes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["scope"] == "frozen-svc"),
            "seed {seed} {calls:?}: {f}"
        );
        let (_, l) = server.call("GET", "/api/v1/releases?service=sneaky", Some(&admin), None);
        assert_eq!(l.as_array().unwrap().len(), 0, "seed {seed}: {l}");
        let (_, t) = server.call("GET", "/api/v1/tokens", Some(&admin), None);
        assert!(
            !t["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["name"].as_str().unwrap().starts_with("mine-")),
            "seed {seed}: {t}"
        );
    }
    drop(mcp);

    // A human approves, and the release moves on: it was live all along.
    let approver = server.token("approver", "alice");
    server.approve_with_cli(&release, &approver);
    let end = server.wait_release(&release, &admin, LONG, |v| v["report"].is_object());
    assert_eq!(end["outcome"], "promoted", "{end}");
}
