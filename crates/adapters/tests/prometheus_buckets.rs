//! Latency read from Prometheus histogram buckets, against a real Prometheus (Debian
//! `prometheus`) scraping a loopback exporter whose `_bucket` counters grow with every
//! scrape: the `buckets` query's vector (one series per `le`, through `increase`)
//! becomes each variant's histogram, and the threshold judge fails the slow canary on
//! it.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::fake_provider::source;
use common::servers;
use rampart_core::judge::{self, Verdict};
use rampart_core::metrics::{IntervalSample, bucket_of};
use rampart_core::policy::Judge;
use rampart_core::ports::MetricsSource;
use rampart_core::release::MeasureWindow;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Each scrape adds, per `le` (in seconds), this many requests at or below it.
const STABLE: [(&str, u64); 4] = [("0.05", 95), ("0.1", 100), ("0.5", 100), ("+Inf", 100)];
/// The canary: 10 % at or below 50 ms, 10 % more by 100 ms, the rest by 500 ms.
const CANARY: [(&str, u64); 4] = [("0.05", 10), ("0.1", 20), ("0.5", 100), ("+Inf", 100)];

/// The exposition text after `n` scrapes.
fn exposition(n: u64) -> String {
    let mut text = String::from("# TYPE shop_request_duration_seconds histogram\n");
    for (track, buckets) in [("stable", STABLE), ("canary", CANARY)] {
        for (le, per_scrape) in buckets {
            text.push_str(&format!(
                "shop_request_duration_seconds_bucket{{track=\"{track}\",le=\"{le}\"}} {}\n",
                per_scrape * n
            ));
        }
    }
    text
}

/// An exporter on loopback whose counters grow by one scrape's worth per request.
async fn exporter() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let scrapes = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let n = scrapes.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => buf.extend_from_slice(&chunk[..k]),
                    }
                }
                let body = exposition(n);
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}

/// Prometheus scraping `target` every second; returns it and its base URL.
fn prometheus(target: &str) -> (servers::Daemon, tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: shop\n    static_configs:\n      - targets: [\"{target}\"]\n"
    );
    std::fs::write(dir.path().join("prometheus.yml"), cfg).unwrap();
    let port = servers::free_port();
    let daemon = servers::spawn(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn"),
    );
    (daemon, dir, format!("http://127.0.0.1:{port}"))
}

/// A window ending now (Prometheus's samples are at wall-clock time).
fn window_ending_now() -> MeasureWindow {
    #[allow(clippy::disallowed_methods)] // the real Prometheus's clock is the wall clock
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    MeasureWindow {
        from: now - 5_000,
        to: now,
        stable: Some("v1".into()),
        canary: "v2".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_counts_become_histograms_and_judge_the_canary_real_prometheus() {
    let target = exporter().await;
    let (_prom, _dir, url) = prometheus(&target);
    let p = common::fake_provider::policy(&format!(
        "  interval: 5s\n  prometheus: {url}\n  metrics:\n    - {{source: prometheus, metric: latency_p99, buckets: 'sum by (le) (increase(shop_request_duration_seconds_bucket{{track=\"{{variant}}\"}}[{{interval}}]))', min_samples: 20, judge: {{max: 300ms}}}}\n"
    ));
    let metrics = source(&p, &[]);
    // Until Prometheus is up and has scraped twice, the reading is no data (an
    // unanswered query, then an empty vector): that is what is polled for.
    #[allow(clippy::disallowed_methods)] // the test's own time limit
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let sample: IntervalSample = loop {
        let s = metrics.measure(&window_ending_now()).await.unwrap();
        let q = &s.queries[0];
        if q.stable_histogram.is_some() && q.canary_histogram.is_some() {
            break s;
        }
        #[allow(clippy::disallowed_methods)]
        let late = std::time::Instant::now() > deadline;
        assert!(!late, "no buckets read in 30 s: {q:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let q = &sample.queries[0];
    let (stable, canary) = (
        q.stable_histogram.clone().unwrap(),
        q.canary_histogram.clone().unwrap(),
    );
    let at = |seconds: f64| bucket_of((seconds * 1_000_000.0) as u64);
    // Each bound's own requests sit in the bucket holding it, nothing elsewhere.
    let canary_buckets: Vec<usize> = canary.buckets().map(|(b, _)| b).collect();
    assert_eq!(
        canary_buckets,
        vec![at(0.05), at(0.1), at(0.5)],
        "{canary:?}"
    );
    let stable_buckets: Vec<usize> = stable.buckets().map(|(b, _)| b).collect();
    assert_eq!(stable_buckets, vec![at(0.05), at(0.1)], "{stable:?}");
    // The request counts are the histograms' totals, in the reading too.
    assert_eq!(q.canary_samples, Some(canary.count() as f64));
    assert_eq!(stable.quantile_bucket(0.99), Some(at(0.1)));
    assert_eq!(canary.quantile_bucket(0.99), Some(at(0.5)));
    // The threshold judge fails the canary on the buckets read (the builtin
    // measurements are empty here).
    let spec = &p.analysis.metrics[0];
    let Judge::Threshold(t) = &spec.judge else {
        panic!("a threshold judge: {spec:?}")
    };
    let r = judge::threshold(spec, t, &sample);
    assert_eq!(r.verdict, Verdict::Fail, "{r:?}");
    assert!(r.stable.is_some_and(|s| s < 110.0), "{r:?}");
}
