//! Argo Rollouts' `successCondition` and `failureCondition` in their common forms,
//! read as a limit on the measured value. Anything else is not understood (`None`),
//! and the caller reports it as unmapped.

/// The values that pass, as rampart's threshold judge says it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Limit {
    /// The value must stay at or below this (`max`, lower is better).
    Max(f64),
    /// The value must stay at or above this (`min`, higher is better).
    Min(f64),
}

/// A condition read: its limit, and whether it also speaks of an empty or NaN result
/// (`len(result) == 0 || ...`, `isNaN(result[0]) || ...`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Condition {
    pub limit: Limit,
    pub empty_clause: bool,
}

/// A `successCondition`: the values it accepts.
pub(super) fn success(expr: &str) -> Option<Condition> {
    let (cmp, empty_clause) = parse(expr)?;
    Some(Condition {
        limit: match cmp {
            Cmp::Above(v, false) => Limit::Min(v),
            Cmp::Above(v, true) => Limit::Min(v.next_up()),
            Cmp::Below(v, false) => Limit::Max(v),
            Cmp::Below(v, true) => Limit::Max(v.next_down()),
        },
        empty_clause,
    })
}

/// A `failureCondition`: the values it refuses, turned into the values that pass.
pub(super) fn failure(expr: &str) -> Option<Condition> {
    let (cmp, empty_clause) = parse(expr)?;
    Some(Condition {
        limit: match cmp {
            Cmp::Above(v, true) => Limit::Max(v),
            Cmp::Above(v, false) => Limit::Max(v.next_down()),
            Cmp::Below(v, true) => Limit::Min(v),
            Cmp::Below(v, false) => Limit::Min(v.next_up()),
        },
        empty_clause,
    })
}

/// `value > v` or `value >= v` (Above), `value < v` or `value <= v` (Below), and
/// whether the comparison is strict. rampart's `max` and `min` pass the boundary
/// itself, so a strict bound becomes the adjacent float (`f64::next_up` or
/// `next_down`), which the policy writes exactly (Rust prints the shortest text that
/// reads back as the same float).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Cmp {
    Above(f64, bool),
    Below(f64, bool),
}

fn parse(expr: &str) -> Option<(Cmp, bool)> {
    let expr = strip_parens(expr.trim());
    if expr.contains("&&") || expr.contains(" and ") {
        return None;
    }
    let mut cmp = None;
    let mut empty_clause = false;
    for part in expr.split("||").flat_map(|p| p.split(" or ")) {
        let part = strip_parens(part.trim());
        if is_empty_test(part) {
            empty_clause = true;
            continue;
        }
        if cmp.is_some() {
            return None;
        }
        cmp = Some(comparison(part)?);
    }
    Some((cmp?, empty_clause))
}

fn strip_parens(mut s: &str) -> &str {
    while s.starts_with('(') && s.ends_with(')') && balanced(&s[1..s.len() - 1]) {
        s = s[1..s.len() - 1].trim();
    }
    s
}

fn balanced(s: &str) -> bool {
    let mut depth = 0i32;
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ => {}
        }
        if depth < 0 {
            return false;
        }
    }
    depth == 0
}

/// `len(result) == 0`, `isNaN(result)`, `isNaN(result[0])`, `result == nil`,
/// `isNil(result)`.
fn is_empty_test(part: &str) -> bool {
    let p: String = part.chars().filter(|c| !c.is_whitespace()).collect();
    matches!(
        p.as_str(),
        "len(result)==0"
            | "len(result)<1"
            | "result==nil"
            | "isNil(result)"
            | "isNaN(result)"
            | "isNaN(result[0])"
            | "isNaN(asFloat(result))"
            | "isNaN(asFloat(result[0]))"
    )
}

/// The measured value: `result`, `result[0]`, wrapped in `asFloat(..)` or `float(..)`.
/// Not `int(..)` or `asInt(..)`: they truncate (`int(result[0]) > 0` fails 0.5), so a
/// limit on the raw value would say something else.
fn is_value(s: &str) -> bool {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    let inner = ["asFloat(", "float("]
        .iter()
        .find_map(|f| s.strip_prefix(f).and_then(|r| r.strip_suffix(')')))
        .unwrap_or(&s);
    // `default(result[0], 0)`: the default only speaks of an empty result, which
    // rampart reads as no data.
    let inner = inner
        .strip_prefix("default(")
        .and_then(|r| r.strip_suffix(')'))
        .and_then(|r| r.split_once(',').map(|(v, _)| v))
        .unwrap_or(inner);
    matches!(inner, "result" | "result[0]")
}

fn comparison(part: &str) -> Option<Cmp> {
    for op in [">=", "<=", ">", "<"] {
        if let Some((l, r)) = part.split_once(op) {
            let (l, r) = (l.trim(), r.trim());
            let above = op.starts_with('>');
            let strict = op.len() == 1;
            if is_value(l) {
                let v: f64 = r.parse().ok()?;
                return v.is_finite().then_some(if above {
                    Cmp::Above(v, strict)
                } else {
                    Cmp::Below(v, strict)
                });
            }
            if is_value(r) {
                // `0.95 <= result[0]`: the value is above.
                let v: f64 = l.parse().ok()?;
                return v.is_finite().then_some(if above {
                    Cmp::Below(v, strict)
                } else {
                    Cmp::Above(v, strict)
                });
            }
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_common_forms() {
        let c = success("result[0] >= 0.95").unwrap();
        assert_eq!(c.limit, Limit::Min(0.95));
        assert!(!c.empty_clause);
        assert_eq!(
            success("result < 0.01").unwrap().limit,
            Limit::Max(0.01f64.next_down())
        );
        let c = success("len(result) == 0 || result[0] <= 500").unwrap();
        assert_eq!(c.limit, Limit::Max(500.0));
        assert!(c.empty_clause);
        assert_eq!(failure("result[0] > 0.05").unwrap().limit, Limit::Max(0.05));
        assert_eq!(
            failure("asFloat(result) < 10").unwrap().limit,
            Limit::Min(10.0)
        );
        assert_eq!(success("0.9 <= result[0]").unwrap().limit, Limit::Min(0.9));
        assert_eq!(
            success("default(result[0], 0) >= 0.9").unwrap().limit,
            Limit::Min(0.9)
        );
        assert_eq!(
            success("(isNaN(result[0]) || result[0] >= 0.99)")
                .unwrap()
                .limit,
            Limit::Min(0.99)
        );
    }

    #[test]
    fn strict_comparisons_keep_their_boundary() {
        // Argo fails at exactly 1; rampart's max passes its own value.
        assert_eq!(
            failure("result[0] >= 1").unwrap().limit,
            Limit::Max(1f64.next_down())
        );
        assert_eq!(
            success("result[0] > 0").unwrap().limit,
            Limit::Min(0f64.next_up())
        );
        assert_eq!(failure("result[0] < 5").unwrap().limit, Limit::Min(5.0));
        assert_eq!(
            failure("result[0] <= 5").unwrap().limit,
            Limit::Min(5f64.next_up())
        );
        // The written number reads back as the same float.
        for v in [1f64.next_down(), 0f64.next_up(), 0.05f64.next_down()] {
            let text = super::super::emit::number(v);
            assert_eq!(text.parse::<f64>().unwrap(), v, "{text}");
        }
    }

    #[test]
    fn anything_else_is_not_understood() {
        for e in [
            "result[0] >= 0.9 && result[0] <= 1.1",
            "result == true",
            "result.ok",
            "result[0] >= args.x",
            "all(result, {# < 0.1})",
            "",
            "result[1] > 2",
            "result[0] > 1 || result[0] < 0",
        ] {
            assert_eq!(success(e), None, "{e}");
        }
    }
}
