//! Live progress for people: one line per audit event, per-variant numbers for every
//! analysis interval, and on a terminal a status line that refreshes every half second.
//!
//! Owns presentation only; it never changes what a release does.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rampart_adapters::notify::HookNotifier;
use rampart_controller::Observer;
use rampart_core::instead::with_command;
use rampart_core::metrics::{IntervalSample, VariantStats};
use rampart_core::ports::{BoxFuture, Notifier};
use rampart_core::release::{AuditEvent, Input, Release};
use rampart_core::units::{Rate, trim_float};

/// Where progress goes and how it looks.
pub struct Progress {
    out: Mutex<Box<dyn Write + Send>>,
    tty: bool,
    steps: usize,
    last: Mutex<Option<Release>>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress").field("tty", &self.tty).finish()
    }
}

fn variant_line(name: &str, s: &VariantStats) -> String {
    let err = s
        .error_rate()
        .map_or("-".to_string(), |r| Rate(r).to_string());
    let p99 = s
        .latency
        .quantile_ms(0.99)
        .map_or("-".to_string(), |v| format!("{}ms", trim_float(v, 1)));
    format!("{name} {} req {err} err p99 {p99}", s.requests)
}

/// Per-variant summary of a sample, as progress lines show it.
pub fn sample_line(s: &IntervalSample) -> String {
    format!(
        "{} | {}",
        variant_line("stable", &s.stable),
        variant_line("canary", &s.canary)
    )
}

impl Progress {
    /// Progress to `out`; `tty` enables colour and the refreshing status line.
    pub fn new(out: Box<dyn Write + Send>, tty: bool, steps: usize) -> Arc<Progress> {
        Arc::new(Progress {
            out: Mutex::new(out),
            tty,
            steps,
            last: Mutex::new(None),
        })
    }

    /// Prints one line (clearing the status line first on a terminal).
    pub fn line(&self, text: &str) {
        if let Ok(mut out) = self.out.lock() {
            if self.tty {
                let _ = write!(out, "\r\x1b[K");
            }
            let _ = writeln!(out, "{text}");
            let _ = out.flush();
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.tty {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    /// On a terminal, redraws a status line from the proxy's live counters until the
    /// returned task is aborted.
    pub fn spawn_status(
        self: &Arc<Self>,
        counted: Arc<dyn rampart_adapters::proxy::Totals>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        if !self.tty {
            return None;
        }
        let me = self.clone();
        Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let state = me.last.lock().ok().and_then(|s| s.clone());
                let Some(state) = state else { continue };
                let totals = counted.totals();
                let text = format!(
                    "{} step {}/{} canary {} | {}",
                    state.phase.as_str(),
                    (state.step + 1).min(me.steps),
                    me.steps,
                    state.weight,
                    sample_line(&totals)
                );
                if let Ok(mut out) = me.out.lock() {
                    let _ = write!(out, "\r\x1b[K\x1b[2m{text}\x1b[0m");
                    let _ = out.flush();
                }
            }
        }))
    }

    fn event_line(&self, e: &AuditEvent) -> String {
        let kind = match e.kind.as_str() {
            "rollback_started" | "halted" | "gate_failed" | "version_failed" | "blocked" => {
                self.paint("31;1", &format!("{:<17}", e.kind))
            }
            "promoted" | "rolled_back" | "step_completed" | "gates_passed" => {
                self.paint("32", &format!("{:<17}", e.kind))
            }
            // A warning: the release goes on.
            "silence_failed" => self.paint("33", &format!("{:<17}", e.kind)),
            _ => format!("{:<17}", e.kind),
        };
        format!(
            "[{:>7.1}s] {kind} {}",
            e.t_s,
            with_command(&e.message, e.instead.as_ref())
        )
    }
}

impl Observer for Progress {
    fn on_transition(&self, input: &Input, state: &Release, events: &[AuditEvent]) {
        if let Ok(mut last) = self.last.lock() {
            *last = Some(state.clone());
        }
        for e in events {
            if let (true, Input::Measured { sample }) = (e.kind == "analysis", input) {
                let label = state.last_verdict.map_or("?", |v| v.label());
                let word = if label == "FAIL" {
                    self.paint("31", label)
                } else {
                    label.to_string()
                };
                self.line(&format!(
                    "[{:>7.1}s] {:<17} interval {} {word} at {}: {}",
                    e.t_s,
                    "analysis",
                    state.intervals,
                    e.weight,
                    sample_line(sample)
                ));
                for r in &e.readings {
                    self.line(&format!(
                        "{:>29} {}: {}",
                        r.name,
                        r.verdict.label(),
                        r.detail
                    ));
                }
                continue;
            }
            self.line(&self.event_line(e));
        }
    }
}

/// Notifications printed with the progress (pages stand out), then sent to the
/// policy's hooks.
#[derive(Debug)]
pub struct PrintNotifier(pub Arc<Progress>, pub HookNotifier);

impl Notifier for PrintNotifier {
    fn notify<'a>(&'a self, notice: &'a rampart_core::ports::Notice) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if notice.page {
                let text = self.0.paint("41;97;1", " PAGE ");
                let said = with_command(&notice.message, notice.instead.as_ref());
                self.0.line(&format!("{text} {said}"));
            }
            self.1.notify(notice).await;
        })
    }
}
