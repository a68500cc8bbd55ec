//! The `strategy` section: how the new version is exposed (canary, blue-green,
//! rolling, flag ramp or all at once), its steps, approval points and match rules, and
//! its decoder. It plans steps; it must not decide when a release takes them.

use std::time::Duration;

use super::checks::{Gate, decode_check};
use super::values::{DAY, limit, one_kind, positive};
use crate::decode::Decoder;
use crate::units::Weight;
use crate::yaml::{Node, NodeKind};

/// How the new version is exposed.
#[derive(Clone, Debug, PartialEq)]
pub enum Strategy {
    /// Weighted canary steps.
    Canary(CanarySpec),
    /// Start the new colour beside the old, check it, switch all traffic at once.
    BlueGreen(BlueGreenSpec),
    /// Replace the replicas a batch at a time.
    Rolling(RollingSpec),
    /// Ramp a feature flag in steps, on the version already running: nothing new is
    /// deployed, and the flag-on users are the canary.
    Flag(CanarySpec),
    /// Switch all traffic at once after a human approves, then analyse at 100 %.
    Full(FullSpec),
}

/// An all-at-once release: the switch to 100 % is irreversible in practice (every user
/// sees the new version at once), so it waits for an approval by default.
#[derive(Clone, Debug, PartialEq)]
pub struct FullSpec {
    /// The approval before the switch; `None` only when the policy says `approval: none`.
    pub approval: Option<Approval>,
    /// How long the new version is analysed at 100 % before it counts as promoted.
    pub stability: Duration,
    /// The approval point, then 100 % for `stability`.
    steps: Vec<Step>,
}

/// A rolling release over `deploy.process.replicas` replicas.
#[derive(Clone, Debug, PartialEq)]
pub struct RollingSpec {
    /// Replicas replaced per batch.
    pub batch: u32,
    /// Replicas that may be out of service at once during a batch.
    pub max_unavailable: u32,
    /// Minimum time each batch is analysed before the next.
    pub bake: Duration,
    /// Replicas of each version.
    pub replicas: u32,
    /// One step per batch; the canary share is the new version's share of replicas.
    steps: Vec<Step>,
}

impl RollingSpec {
    pub(super) fn plan(
        batch: u32,
        max_unavailable: u32,
        bake: Duration,
        replicas: u32,
    ) -> RollingSpec {
        let mut steps = Vec::new();
        let mut k = 0;
        while k < replicas {
            k = (k + batch.max(1)).min(replicas);
            let bp = u64::from(k) * 10_000 / u64::from(replicas.max(1));
            steps.push(Step {
                weight: Weight::from_basis_points(u16::try_from(bp).unwrap_or(10_000))
                    .unwrap_or(Weight::FULL),
                bake,
                matches: Vec::new(),
                approval: None,
            });
        }
        RollingSpec {
            batch,
            max_unavailable,
            bake,
            replicas,
            steps,
        }
    }

    /// New-version replicas in service during step `step`.
    pub fn replicas_at(&self, step: usize) -> u32 {
        (u32::try_from(step + 1)
            .unwrap_or(u32::MAX)
            .saturating_mul(self.batch))
        .min(self.replicas)
    }
}

/// A blue-green release.
#[derive(Clone, Debug, PartialEq)]
pub struct BlueGreenSpec {
    /// Checks against the new colour before any user reaches it.
    pub preview: Vec<Gate>,
    /// How long the new colour is analysed at 100 % before it counts as promoted.
    pub stability: Duration,
    /// How long the previous colour keeps running afterwards, for an instant switch back.
    pub keep_previous: Duration,
    /// The one step this amounts to: 100 % for `stability`.
    steps: Vec<Step>,
}

impl Strategy {
    /// The canary steps.
    pub fn steps(&self) -> &[Step] {
        match self {
            Strategy::Canary(c) | Strategy::Flag(c) => &c.steps,
            Strategy::BlueGreen(b) => &b.steps,
            Strategy::Rolling(r) => &r.steps,
            Strategy::Full(f) => &f.steps,
        }
    }

    /// The feature flag that ramps with the steps' weights, if any.
    pub fn ramped_flag(&self) -> Option<&str> {
        match self {
            Strategy::Canary(c) | Strategy::Flag(c) => c.flag.as_deref(),
            _ => None,
        }
    }

    /// Whether the release only ramps a flag on the running version.
    pub fn flag_only(&self) -> bool {
        matches!(self, Strategy::Flag(_))
    }

    /// The rolling plan, for a rolling release.
    pub fn rolling(&self) -> Option<&RollingSpec> {
        match self {
            Strategy::Rolling(r) => Some(r),
            _ => None,
        }
    }

    /// Checks on the new version before it gets traffic.
    pub fn preview(&self) -> &[Gate] {
        match self {
            Strategy::BlueGreen(b) => &b.preview,
            _ => &[],
        }
    }

    /// How long the previous version keeps running after promotion.
    pub fn keep_previous(&self) -> Duration {
        match self {
            Strategy::BlueGreen(b) => b.keep_previous,
            _ => Duration::ZERO,
        }
    }

    /// `canary` or `blue_green`.
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::Canary(_) => "canary",
            Strategy::BlueGreen(_) => "blue_green",
            Strategy::Rolling(_) => "rolling",
            Strategy::Flag(_) => "flag",
            Strategy::Full(_) => "full",
        }
    }

    /// The match rules in force during step `step`: its own and every earlier step's.
    pub fn matches_at(&self, step: usize) -> Vec<RouteMatch> {
        let mut out: Vec<RouteMatch> = Vec::new();
        for m in self.steps().iter().take(step + 1).flat_map(|s| &s.matches) {
            if !out.contains(m) {
                out.push(m.clone());
            }
        }
        out
    }
}

/// A canary: a list of weights, each held for a bake time.
#[derive(Clone, Debug, PartialEq)]
pub struct CanarySpec {
    /// Steps in order. Promotion follows the last one.
    pub steps: Vec<Step>,
    /// A feature flag that is on exactly for the canary's users, its ramp following
    /// the weight (required for the `flag` strategy).
    pub flag: Option<String>,
}

/// One canary step.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// Share of traffic for the canary. A step that only adds a `match` keeps the
    /// previous step's weight (0 for the first step).
    pub weight: Weight,
    /// Minimum time at this weight; the step ends at the first passing analysis after it.
    pub bake: Duration,
    /// Requests that go to the canary whatever the weight, from this step on.
    pub matches: Vec<RouteMatch>,
    /// A human approval point: the release waits here, at the previous weight, until
    /// someone other than its initiator approves.
    pub approval: Option<Approval>,
}

/// An approval point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Approval {
    /// Who may approve, for people (`release-manager`).
    pub role: String,
    /// How long to wait; without an approval by then, the release rolls back.
    pub timeout: Duration,
}

/// A rule that sends matching requests to the canary, whatever the weight: internal
/// users, beta testers, an allowlist of user ids.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RouteMatch {
    /// Where the value comes from.
    pub source: MatchSource,
    /// Values that match; empty means "present, with any value".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// Where a match rule looks.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchSource {
    /// A request header (lower-case name).
    Header(String),
    /// A cookie.
    Cookie(String),
}

pub(super) fn decode_strategy(cx: &mut Decoder, node: &Node, path: &str) -> Option<Strategy> {
    let (kind, inner, p) = one_kind(
        cx,
        node,
        path,
        &["canary", "blue_green", "rolling", "flag", "full"],
    )?;
    if kind == "blue_green" {
        return decode_blue_green(cx, inner, &p);
    }
    if kind == "full" {
        return decode_full(cx, inner, &p);
    }
    if kind == "rolling" {
        let m = cx.map(inner, &p, &["batch", "max_unavailable", "bake"])?;
        let batch = limit(cx, &m, "batch").unwrap_or(1);
        let max_unavailable = m.optional::<u32>(cx, "max_unavailable").unwrap_or(0);
        let bake = m.required::<Duration>(cx, "bake")?;
        // The replica count lives under `deploy`; the plan is made once both are known.
        return Some(Strategy::Rolling(RollingSpec::plan(
            batch,
            max_unavailable,
            bake,
            0,
        )));
    }
    let m = cx.map(inner, &p, &["steps", "flag"])?;
    let flag = if kind == "flag" {
        m.required::<String>(cx, "flag")
    } else {
        m.optional::<String>(cx, "flag")
    };
    let steps = m.required_with(cx, "steps", |cx, n, p| {
        let NodeKind::Seq(items) = &n.kind else {
            cx.error(n.pos, p, format!("expected a list of steps, found {}", n.type_name()));
            return None;
        };
        if items.is_empty() {
            cx.error(n.pos, p, "a canary needs at least one step, like `- {weight: 10, bake: 5m}`");
            return None;
        }
        let raw = cx.seq(n, p, decode_step)?;
        let mut weight = Weight::ZERO;
        let steps: Vec<Step> = raw
            .into_iter()
            .map(|r| {
                weight = r.weight.unwrap_or(weight);
                Step {
                    weight,
                    bake: r.bake,
                    matches: r.matches,
                    approval: r.approval,
                }
            })
            .collect();
        for (i, pair) in steps.windows(2).enumerate() {
            if pair[1].weight < pair[0].weight {
                let node = &items[i + 1];
                cx.error(
                    node.pos,
                    &format!("{p}[{}].weight", i + 1),
                    format!(
                        "weights must not go down: {} comes after {}; a rollback is how traffic leaves a canary",
                        pair[1].weight, pair[0].weight
                    ),
                );
            }
        }
        Some(steps)
    });
    let spec = CanarySpec {
        steps: steps?,
        flag,
    };
    Some(match kind {
        "flag" => Strategy::Flag(spec),
        _ => Strategy::Canary(spec),
    })
}

fn decode_blue_green(cx: &mut Decoder, node: &Node, path: &str) -> Option<Strategy> {
    let m = cx.map(node, path, &["preview", "stability", "keep_previous"])?;
    let preview = m
        .optional_with(cx, "preview", |cx, n, p| {
            cx.seq(n, p, |cx, n, p| decode_check(cx, n, p, true))
        })
        .unwrap_or_default();
    let stability = m.required::<Duration>(cx, "stability");
    let keep_previous = m
        .optional::<Duration>(cx, "keep_previous")
        .unwrap_or(Duration::ZERO);
    let stability = stability?;
    Some(Strategy::BlueGreen(BlueGreenSpec {
        preview,
        stability,
        keep_previous,
        steps: vec![Step {
            weight: Weight::FULL,
            bake: stability,
            matches: Vec::new(),
            approval: None,
        }],
    }))
}

fn decode_full(cx: &mut Decoder, node: &Node, path: &str) -> Option<Strategy> {
    let m = cx.map(node, path, &["stability", "approval"])?;
    let stability = m.required::<Duration>(cx, "stability");
    let approval = match m.get("approval") {
        None => Some(Some(Approval {
            role: "approver".into(),
            timeout: Duration::from_secs(3600),
        })),
        Some(n) if matches!(&n.kind, NodeKind::Scalar { text, .. } if text == "none") => Some(None),
        Some(n) => decode_approval(cx, n, &m.path_of("approval")).map(Some),
    };
    let (stability, approval) = (stability?, approval?);
    let mut steps = Vec::new();
    if let Some(a) = &approval {
        steps.push(Step {
            weight: Weight::ZERO,
            bake: Duration::ZERO,
            matches: Vec::new(),
            approval: Some(a.clone()),
        });
    }
    steps.push(Step {
        weight: Weight::FULL,
        bake: stability,
        matches: Vec::new(),
        approval: None,
    });
    Some(Strategy::Full(FullSpec {
        approval,
        stability,
        steps,
    }))
}

/// A step as written: the weight may be left out when the step adds a `match`.
struct RawStep {
    weight: Option<Weight>,
    bake: Duration,
    matches: Vec<RouteMatch>,
    approval: Option<Approval>,
}

fn decode_step(cx: &mut Decoder, node: &Node, path: &str) -> Option<RawStep> {
    let m = cx.map(node, path, &["weight", "bake", "match", "approval"])?;
    if let Some(n) = m.get("approval") {
        if let Some(extra) = m.present(&["weight", "bake", "match"]).first() {
            cx.error(
                m.pos(),
                &m.path_of(extra),
                "an approval step only waits for a human; put weights and bakes in their own steps",
            );
        }
        let approval = decode_approval(cx, n, &m.path_of("approval"))?;
        return Some(RawStep {
            weight: None,
            bake: Duration::ZERO,
            matches: Vec::new(),
            approval: Some(approval),
        });
    }
    let matches = m
        .optional_with(cx, "match", decode_match)
        .map(|r| vec![r])
        .unwrap_or_default();
    if m.get("match").is_some() && matches.is_empty() {
        return None;
    }
    let weight = if matches.is_empty() {
        m.required::<Weight>(cx, "weight")
    } else {
        m.optional::<Weight>(cx, "weight")
    };
    let bake = m.required::<Duration>(cx, "bake");
    if weight == Some(Weight::ZERO) && matches.is_empty() {
        cx.error(
            m.get("weight").map_or(m.pos(), |n| n.pos),
            &m.path_of("weight"),
            "a step at weight 0 sends the canary no traffic, so it can never be judged; use a weight above 0, or add a `match`",
        );
    }
    Some(RawStep {
        weight,
        bake: bake?,
        matches,
        approval: None,
    })
}

/// `ROLE` or `{role: ROLE, timeout: DURATION}` (24 hours by default).
pub(super) fn decode_approval(cx: &mut Decoder, n: &Node, p: &str) -> Option<Approval> {
    Some(match &n.kind {
        NodeKind::Scalar { .. } => Approval {
            role: cx.value::<String>(n, p)?,
            timeout: Duration::from_secs(24 * 3600),
        },
        _ => {
            let a = cx.map(n, p, &["role", "timeout"])?;
            let role = a.required::<String>(cx, "role");
            let timeout =
                positive(cx, &a, "timeout", 30 * DAY).unwrap_or(Duration::from_secs(24 * 3600));
            Approval {
                role: role?,
                timeout,
            }
        }
    })
}

/// `{header: NAME}`, `{header: NAME, values: [..]}`, or the same with `cookie`.
fn decode_match(cx: &mut Decoder, node: &Node, path: &str) -> Option<RouteMatch> {
    let m = cx.map(node, path, &["header", "cookie", "values"])?;
    let kinds = m.present(&["header", "cookie"]);
    let [kind] = kinds.as_slice() else {
        cx.error(
            m.pos(),
            path,
            "a match looks at one `header` or one `cookie`",
        );
        return None;
    };
    let name: String = m.required(cx, kind)?;
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        cx.error(
            m.get(kind).map_or(m.pos(), |n| n.pos),
            &m.path_of(kind),
            format!("`{name}` is not a valid {kind} name"),
        );
        return None;
    }
    let values: Vec<String> = m.optional(cx, "values").unwrap_or_default();
    if m.get("values").is_some() && values.is_empty() {
        cx.error(
            m.get("values").map_or(m.pos(), |n| n.pos),
            &m.path_of("values"),
            "list at least one value, or leave `values` out to match any value",
        );
    }
    let source = if *kind == "header" {
        MatchSource::Header(name.to_ascii_lowercase())
    } else {
        MatchSource::Cookie(name)
    };
    Some(RouteMatch { source, values })
}
