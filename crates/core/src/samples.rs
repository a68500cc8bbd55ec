//! Recorded traffic for `rampart replay`: a CSV with one row per variant per second.
//!
//! Owns the file format and its validation. Pure: text in, samples or line-numbered
//! errors out.
//!
//! ```text
//! t_s,variant,requests,errors,p50_ms,p99_ms
//! 0,stable,180,1,42,180
//! 0,canary,20,0,40,175
//! ```
//!
//! The first four columns are required, in this order. After them, any of `p50_ms`,
//! `p90_ms`, `p95_ms`, `p99_ms` and `p999_ms` may follow, in any order; a cell may be
//! empty. `t_s` is the second since recording began (the row covers `[t_s, t_s+1)`).

use std::collections::BTreeMap;

use crate::metrics::{Histogram, IntervalSample, VariantStats};

/// Optional latency columns and the quantile each holds.
pub const LATENCY_COLUMNS: [(&str, f64); 5] = [
    ("p50_ms", 0.5),
    ("p90_ms", 0.9),
    ("p95_ms", 0.95),
    ("p99_ms", 0.99),
    ("p999_ms", 0.999),
];

/// Recorded traffic, per second.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Samples {
    seconds: BTreeMap<u64, IntervalSample>,
}

/// A problem in a samples file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct SamplesError {
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

fn err(line: usize, message: impl Into<String>) -> SamplesError {
    SamplesError {
        line,
        message: message.into(),
    }
}

/// The last second a row may stand for: a century of seconds. With
/// [`MAX_PER_SECOND`] it keeps every sum over a file far from `u64`'s end.
const MAX_T_S: u64 = 100 * 365 * 24 * 3600;

/// The most requests one row may count (a billion a second).
const MAX_PER_SECOND: u64 = 1_000_000_000;

impl Samples {
    /// Parses CSV text.
    pub fn parse(text: &str) -> Result<Samples, SamplesError> {
        let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim()));
        let (at, header) = lines
            .by_ref()
            .find(|(_, l)| !l.is_empty() && !l.starts_with('#'))
            .ok_or_else(|| {
                err(
                    1,
                    "the file is empty; the header is t_s,variant,requests,errors",
                )
            })?;
        let columns: Vec<&str> = header.split(',').map(str::trim).collect();
        if columns.len() < 4 || columns[..4] != ["t_s", "variant", "requests", "errors"] {
            return Err(err(
                at,
                format!("the header must start with t_s,variant,requests,errors, found `{header}`"),
            ));
        }
        let mut latency: Vec<(usize, f64)> = Vec::new();
        for (i, c) in columns.iter().enumerate().skip(4) {
            match LATENCY_COLUMNS.iter().find(|(name, _)| name == c) {
                Some((_, q)) if !latency.iter().any(|(_, x)| x == q) => latency.push((i, *q)),
                Some(_) => return Err(err(at, format!("column `{c}` appears twice"))),
                None => {
                    let names: Vec<&str> = LATENCY_COLUMNS.iter().map(|(n, _)| *n).collect();
                    return Err(err(
                        at,
                        format!(
                            "unknown column `{c}`; optional columns are {}",
                            names.join(", ")
                        ),
                    ));
                }
            }
        }
        latency.sort_by(|a, b| a.1.total_cmp(&b.1));
        let mut seconds: BTreeMap<u64, IntervalSample> = BTreeMap::new();
        let mut seen: BTreeMap<(u64, bool), usize> = BTreeMap::new();
        for (n, line) in lines {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let cells: Vec<&str> = line.split(',').map(str::trim).collect();
            if cells.len() != columns.len() {
                return Err(err(
                    n,
                    format!("{} cells, the header has {}", cells.len(), columns.len()),
                ));
            }
            let number = |i: usize| -> Result<u64, SamplesError> {
                cells[i].parse::<u64>().map_err(|_| {
                    err(
                        n,
                        format!("{} `{}` is not a whole number", columns[i], cells[i]),
                    )
                })
            };
            let t = number(0)?;
            if t > MAX_T_S {
                return Err(err(
                    n,
                    format!("t_s {t} is past {MAX_T_S} (a century of seconds)"),
                ));
            }
            let canary = match cells[1] {
                "stable" => false,
                "canary" => true,
                other => {
                    return Err(err(
                        n,
                        format!("variant `{other}` is not `stable` or `canary`"),
                    ));
                }
            };
            let requests = number(2)?;
            if requests > MAX_PER_SECOND {
                return Err(err(
                    n,
                    format!("{requests} requests in one second is past {MAX_PER_SECOND}"),
                ));
            }
            let errors = number(3)?;
            if errors > requests {
                return Err(err(
                    n,
                    format!("{errors} errors out of {requests} requests"),
                ));
            }
            if let Some(first) = seen.insert((t, canary), n) {
                return Err(err(
                    n,
                    format!(
                        "a second {} row for t_s={t} (the first is on line {first})",
                        cells[1]
                    ),
                ));
            }
            let mut points = Vec::new();
            for (i, q) in &latency {
                if cells[*i].is_empty() {
                    continue;
                }
                let v: f64 = cells[*i]
                    .parse()
                    .ok()
                    .filter(|v: &f64| v.is_finite() && *v >= 0.0)
                    .ok_or_else(|| {
                        err(
                            n,
                            format!(
                                "{} `{}` is not a latency in milliseconds",
                                columns[*i], cells[*i]
                            ),
                        )
                    })?;
                if points.last().is_some_and(|(_, prev)| v < *prev) {
                    return Err(err(
                        n,
                        format!("{} is below a lower quantile's value", columns[*i]),
                    ));
                }
                points.push((*q, v));
            }
            let stats = VariantStats {
                requests,
                errors,
                latency: synthesize(requests, &points),
                ..VariantStats::default()
            };
            let entry = seconds.entry(t).or_default();
            if canary {
                entry.canary = stats;
            } else {
                entry.stable = stats;
            }
        }
        Ok(Samples { seconds })
    }

    /// Both variants summed over seconds `[from, to)`.
    pub fn window(&self, from: u64, to: u64) -> IntervalSample {
        let mut out = IntervalSample::default();
        for s in self.seconds.range(from..to).map(|(_, s)| s) {
            for (acc, add) in [(&mut out.stable, &s.stable), (&mut out.canary, &s.canary)] {
                acc.requests += add.requests;
                acc.errors += add.errors;
                acc.latency.merge(&add.latency);
                acc.latency_total.merge(&add.latency_total);
            }
        }
        out
    }

    /// One past the last recorded second.
    pub fn end_s(&self) -> u64 {
        self.seconds.keys().next_back().map_or(0, |t| t + 1)
    }

    /// Total requests per variant (stable, canary).
    pub fn totals(&self) -> (u64, u64) {
        self.seconds.values().fold((0, 0), |(s, c), x| {
            (s + x.stable.requests, c + x.canary.requests)
        })
    }

    /// Writes the samples in the same CSV format, with `p50_ms`, `p90_ms` and `p99_ms`
    /// columns when any second has latency data.
    pub fn to_csv(&self) -> String {
        let with_latency = self
            .seconds
            .values()
            .any(|s| s.stable.latency.count() + s.canary.latency.count() > 0);
        let mut out = String::from("t_s,variant,requests,errors");
        if with_latency {
            out.push_str(",p50_ms,p90_ms,p99_ms");
        }
        out.push('\n');
        for (t, s) in &self.seconds {
            for (name, v) in [("stable", &s.stable), ("canary", &s.canary)] {
                out.push_str(&format!("{t},{name},{},{}", v.requests, v.errors));
                if with_latency {
                    for q in [0.5, 0.9, 0.99] {
                        out.push(',');
                        if let Some(ms) = v.latency.quantile_ms(q) {
                            out.push_str(&format!("{ms:.3}"));
                        }
                    }
                }
                out.push('\n');
            }
        }
        out
    }

    /// Builds samples from per-second data (for simulations).
    pub fn from_seconds(seconds: impl IntoIterator<Item = (u64, IntervalSample)>) -> Samples {
        Samples {
            seconds: seconds.into_iter().collect(),
        }
    }
}

/// A histogram of `n` observations whose quantiles are the given points: the share of
/// observations between two quantiles sits at the upper one's value.
fn synthesize(n: u64, points: &[(f64, f64)]) -> Histogram {
    let mut h = Histogram::default();
    let Some(&(_, last)) = points.last() else {
        return h;
    };
    let mut placed = 0u64;
    let mut prev_q = 0.0;
    for (q, v) in points {
        let count = ((q - prev_q) * n as f64).round() as u64;
        for _ in 0..count.min(n - placed) {
            h.record_micros((v * 1000.0) as u64);
        }
        placed += count.min(n - placed);
        prev_q = *q;
    }
    for _ in placed..n {
        h.record_micros((last * 1000.0) as u64);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rows_and_windows() {
        let s = Samples::parse("t_s,variant,requests,errors\n0,stable,90,1\n0,canary,10,0\n1,stable,90,0\n1,canary,10,2\n").unwrap();
        let w = s.window(0, 2);
        assert_eq!(
            (
                w.stable.requests,
                w.stable.errors,
                w.canary.requests,
                w.canary.errors
            ),
            (180, 1, 20, 2)
        );
        assert_eq!(s.window(1, 2).canary.errors, 2);
        assert_eq!(s.end_s(), 2);
    }

    #[test]
    fn latency_columns_reproduce_their_quantiles() {
        let s = Samples::parse("t_s,variant,requests,errors,p99_ms,p50_ms\n0,stable,1000,0,200,40\n0,canary,1000,0,,\n").unwrap();
        let w = s.window(0, 1);
        let p50 = w.stable.latency.quantile_ms(0.5).unwrap();
        let p99 = w.stable.latency.quantile_ms(0.99).unwrap();
        assert!((p50 - 40.0).abs() / 40.0 < 0.05, "{p50}");
        assert!((p99 - 200.0).abs() / 200.0 < 0.05, "{p99}");
        assert_eq!(w.canary.latency.count(), 0);
    }

    #[test]
    fn comments_and_blank_lines_may_come_before_the_header() {
        let s = Samples::parse(
            "# an incident\n\n# 200 rps\nt_s,variant,requests,errors\n0,stable,9,1\n",
        )
        .unwrap();
        assert_eq!(s.window(0, 1).stable.requests, 9);
    }

    #[test]
    fn csv_round_trips_counts() {
        let text = "t_s,variant,requests,errors\n0,stable,90,1\n0,canary,10,0\n1,stable,85,0\n1,canary,15,3\n";
        let s = Samples::parse(text).unwrap();
        assert_eq!(s.to_csv(), text);
        assert_eq!(Samples::parse(&s.to_csv()).unwrap(), s);
    }

    #[test]
    fn errors_name_the_line() {
        for (text, line, needle) in [
            ("", 1, "empty"),
            ("t,variant,requests,errors\n", 1, "header"),
            ("t_s,variant,requests,errors,p42_ms\n", 1, "unknown column"),
            (
                "t_s,variant,requests,errors\n0,stable,10,11\n",
                2,
                "errors out of",
            ),
            ("t_s,variant,requests,errors\n0,blue,10,1\n", 2, "variant"),
            ("t_s,variant,requests,errors\n0,stable,10\n", 2, "cells"),
            (
                "t_s,variant,requests,errors\n0,stable,10,1\n0,stable,10,1\n",
                3,
                "second stable row",
            ),
            (
                "t_s,variant,requests,errors\n-1,stable,10,1\n",
                2,
                "whole number",
            ),
            (
                "t_s,variant,requests,errors,p50_ms,p99_ms\n0,stable,10,1,50,20\n",
                2,
                "below",
            ),
            // Sums over a file stay within a u64.
            (
                "t_s,variant,requests,errors\n0,canary,18446744073709551615,0\n",
                2,
                "in one second",
            ),
            (
                "t_s,variant,requests,errors\n18446744073709551615,canary,1,0\n",
                2,
                "century",
            ),
            // A comment before the header is a comment, not a header.
            ("# recorded in prod\nt,variant\n", 2, "header"),
            (
                "# recorded in prod\nt_s,variant,requests,errors,p42_ms\n",
                2,
                "unknown column",
            ),
        ] {
            let e = Samples::parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.message.contains(needle), "{text:?}: {e}");
        }
    }
}
