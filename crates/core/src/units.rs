//! Value types with units: durations, rates and traffic weights, and their text forms.
//!
//! Owns parsing and printing of `10s`, `1%`, `5` (percent of traffic) and `64KiB`. It
//! must not know which policy field uses them.

use std::fmt;
use std::time::Duration;

use crate::decode::{Decode, Decoder, scalar};
use crate::yaml::{Node, NodeKind};

/// Milliseconds on the controller's clock. The clock is injected, so this may be wall
/// time or virtual time; core only ever compares and subtracts them.
pub type Millis = u64;

/// The longest duration anything takes: a year. Longer ones are typing mistakes, and
/// a wait that never ends defeats its purpose.
const MAX_DURATION_MS: u128 = 365 * 86_400_000;

/// Parses `250ms`, `10s`, `5m`, `1h30m` or `2d`, up to 365 days. A bare number is
/// rejected, because a unit-less duration is the classic source of "10 means ms or s?"
/// outages.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return Err(format!(
                "`{text}` is not a duration; write a number and a unit, like 30s, 5m or 1h30m"
            ));
        }
        let (num, tail) = rest.split_at(digits);
        let tail = tail.trim_start();
        let unit_len = tail.chars().take_while(|c| c.is_ascii_alphabetic()).count();
        let (unit, tail) = tail.split_at(unit_len);
        let n: u128 = num
            .parse()
            .map_err(|_| format!("`{text}`: number too large"))?;
        let ms = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => {
                return Err(format!(
                    "`{text}` has no unit; write {num}s, {num}m or {num}ms"
                ));
            }
            other => {
                return Err(format!(
                    "`{other}` is not a duration unit in `{text}`; use ms, s, m, h or d"
                ));
            }
        };
        total = total
            .checked_add(n.saturating_mul(ms))
            .ok_or_else(|| format!("`{text}` is too long"))?;
        rest = tail.trim_start();
    }
    if total > MAX_DURATION_MS {
        return Err(format!("`{text}` is too long; a duration is at most 365d"));
    }
    let ms = u64::try_from(total).map_err(|_| format!("`{text}` is too long"))?;
    Ok(Duration::from_millis(ms))
}

/// Prints a duration in the shortest exact form `parse_duration` accepts, such as
/// `1m30s` or `1s500ms`.
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

impl Decode for Duration {
    fn decode(cx: &mut Decoder, node: &Node, path: &str) -> Option<Self> {
        let text = scalar(cx, node, path, "a duration such as 30s or 5m")?;
        match parse_duration(text) {
            Ok(d) => Some(d),
            Err(msg) => {
                cx.error(node.pos, path, msg);
                None
            }
        }
    }
}

/// Parses a size in bytes with its unit: `512B`, `64KiB`, `16MiB` or `1GiB` (powers of
/// 1024). A bare number is rejected for the reason a bare duration is: `10` bytes,
/// kilobytes or megabytes?
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let digits = s.chars().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 {
        return Err(format!(
            "`{text}` is not a size; write a number and a unit, like 64KiB or 16MiB"
        ));
    }
    let (num, unit) = s.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{text}`: number too large"))?;
    let scale: u64 = match unit.trim_start() {
        "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "" => {
            return Err(format!(
                "`{text}` has no unit; write {num}B, {num}KiB or {num}MiB"
            ));
        }
        other => {
            return Err(format!(
                "`{other}` is not a size unit in `{text}`; use B, KiB, MiB or GiB"
            ));
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// Prints a size in the largest unit that writes it exactly, such as `64KiB`.
pub fn format_bytes(n: u64) -> String {
    for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if n >= size && n.is_multiple_of(size) {
            return format!("{}{unit}", n / size);
        }
    }
    format!("{n}B")
}

/// A fraction between 0 and 1, written as `0.5%` or `0.005`.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd, serde::Serialize, serde::Deserialize)]
pub struct Rate(pub f64);

impl Rate {
    /// Parses `1%`, `0.5 %` or a fraction like `0.01`.
    pub fn parse(text: &str) -> Result<Rate, String> {
        let t = text.trim();
        let (num, scale) = match t.strip_suffix('%') {
            Some(n) => (n.trim(), 100.0),
            None => (t, 1.0),
        };
        let v: f64 = num.parse().map_err(|_| {
            format!("`{text}` is not a rate; write a percentage like 1% or a fraction like 0.01")
        })?;
        let v = v / scale;
        if !(0.0..=1.0).contains(&v) || !v.is_finite() {
            return Err(format!(
                "`{text}` is out of range; a rate is between 0% and 100%"
            ));
        }
        Ok(Rate(v))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", trim_float(self.0 * 100.0, 3))
    }
}

impl Decode for Rate {
    fn decode(cx: &mut Decoder, node: &Node, path: &str) -> Option<Self> {
        let text = scalar(cx, node, path, "a rate such as 1% or 0.01")?;
        match Rate::parse(text) {
            Ok(r) => Some(r),
            Err(msg) => {
                cx.error(node.pos, path, msg);
                None
            }
        }
    }
}

/// The share of traffic sent to the canary, in hundredths of a percent (0..=10_000), so
/// that 0.5 % is exact and comparisons are integer comparisons.
///
/// In JSON a weight is its percentage (`12.5`), as people read it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Weight(u16);

impl serde::Serialize for Weight {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.percent())
    }
}

impl<'de> serde::Deserialize<'de> for Weight {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let pct = f64::deserialize(d)?;
        Weight::parse(&pct.to_string()).map_err(serde::de::Error::custom)
    }
}

impl Weight {
    /// No traffic.
    pub const ZERO: Weight = Weight(0);
    /// All traffic.
    pub const FULL: Weight = Weight(10_000);

    /// A weight from basis points, if in range.
    pub fn from_basis_points(bp: u16) -> Option<Weight> {
        (bp <= 10_000).then_some(Weight(bp))
    }

    /// A weight from a whole percentage, if in range.
    pub fn from_percent(p: u8) -> Option<Weight> {
        Weight::from_basis_points(u16::from(p) * 100)
    }

    /// Basis points, 0..=10_000.
    pub fn basis_points(self) -> u16 {
        self.0
    }

    /// The weight as a percentage.
    pub fn percent(self) -> f64 {
        f64::from(self.0) / 100.0
    }

    /// Parses `5`, `5%` or `0.5`.
    pub fn parse(text: &str) -> Result<Weight, String> {
        let t = text.trim();
        let num = t.strip_suffix('%').unwrap_or(t).trim();
        let v: f64 = num
            .parse()
            .map_err(|_| format!("`{text}` is not a weight; write a percentage from 0 to 100"))?;
        if !(0.0..=100.0).contains(&v) {
            return Err(format!(
                "weight {} is out of range; a weight is a percentage from 0 to 100",
                trim_float(v, 2)
            ));
        }
        let bp = (v * 100.0).round();
        if (bp - v * 100.0).abs() > 1e-6 {
            return Err(format!(
                "weight `{text}` is finer than 0.01 %; round it to two decimals"
            ));
        }
        // The range check above keeps bp within 0..=10_000.
        Ok(Weight(bp as u16))
    }
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", trim_float(self.percent(), 2))
    }
}

impl Decode for Weight {
    fn decode(cx: &mut Decoder, node: &Node, path: &str) -> Option<Self> {
        if let NodeKind::Scalar { text, .. } = &node.kind {
            return match Weight::parse(text) {
                Ok(w) => Some(w),
                Err(msg) => {
                    cx.error(node.pos, path, msg);
                    None
                }
            };
        }
        scalar(cx, node, path, "a weight from 0 to 100").and(None)
    }
}

/// Prints a float without trailing zeros, with at most `places` decimals.
pub fn trim_float(v: f64, places: usize) -> String {
    let s = format!("{v:.places$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_need_a_unit_and_round_trip() {
        assert_eq!(parse_bytes("64KiB").unwrap(), 65_536);
        assert_eq!(parse_bytes("16 MiB").unwrap(), 16 << 20);
        assert_eq!(parse_bytes("512B").unwrap(), 512);
        assert!(parse_bytes("10").unwrap_err().contains("10KiB"));
        assert!(parse_bytes("10KB").unwrap_err().contains("KiB"));
        assert!(parse_bytes("KiB").is_err());
        assert!(parse_bytes("99999999999GiB").is_err());
        for n in [1, 1000, 1024, 65_536, 3 << 20, 5 << 30] {
            assert_eq!(parse_bytes(&format_bytes(n)).unwrap(), n);
        }
    }

    #[test]
    fn durations_parse_compound_forms() {
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
    }

    #[test]
    fn durations_without_units_are_rejected_with_a_fix() {
        let err = parse_duration("10").unwrap_err();
        assert!(err.contains("10s"), "{err}");
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
        assert_eq!(
            parse_duration("365d").unwrap(),
            Duration::from_secs(365 * 86_400)
        );
        assert!(
            parse_duration("9223372036854775807ms")
                .unwrap_err()
                .contains("at most 365d")
        );
    }

    #[test]
    fn duration_round_trips_through_its_text_form() {
        for ms in [
            0u64, 1, 999, 1000, 1500, 60_000, 90_000, 3_600_000, 86_400_000,
        ] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d, "{ms}");
        }
    }

    #[test]
    fn rates_accept_percent_or_fraction() {
        assert_eq!(Rate::parse("1%").unwrap(), Rate(0.01));
        assert_eq!(Rate::parse("0.02").unwrap(), Rate(0.02));
        assert!(Rate::parse("150%").is_err());
        assert!(Rate::parse("-1").is_err());
        assert_eq!(Rate(0.005).to_string(), "0.5%");
    }

    #[test]
    fn weights_are_bounded_percentages() {
        assert_eq!(Weight::parse("5").unwrap().basis_points(), 500);
        assert_eq!(Weight::parse("0.5%").unwrap().basis_points(), 50);
        assert!(Weight::parse("120").unwrap_err().contains("0 to 100"));
        assert!(Weight::parse("0.001").is_err());
        assert_eq!(Weight::parse("12.5").unwrap().to_string(), "12.5%");
    }

    #[test]
    fn weights_are_percentages_in_json() {
        for bp in [0u16, 1, 50, 1250, 9999, 10_000] {
            let w = Weight::from_basis_points(bp).unwrap();
            let text = serde_json::to_string(&w).unwrap();
            assert_eq!(serde_json::from_str::<Weight>(&text).unwrap(), w, "{text}");
        }
        assert_eq!(
            serde_json::to_string(&Weight::from_percent(10).unwrap()).unwrap(),
            "10.0"
        );
    }
}

/// Why `v` cannot be a version, or `None` when it can. A version is substituted into
/// commands, paths, URLs and query languages (PromQL, NRQL, Datadog queries), so it is
/// 1 to 128 of `A-Z a-z 0-9 . _ - + : @ ~`, not starting with `-` or `.`, without
/// `..`: no quote, brace or space can change what a query asks.
pub fn version_problem(v: &str) -> Option<String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._-+:@~".contains(c);
    if v.is_empty() || v.len() > 128 {
        return Some("a version is 1 to 128 characters".into());
    }
    if let Some(c) = v.chars().find(|c| !allowed(*c)) {
        return Some(format!(
            "`{}` cannot be in a version: use letters, digits and . _ - + : @ ~ (a version is put into commands and metric queries)",
            c.escape_default()
        ));
    }
    if v.starts_with(['-', '.']) || v.contains("..") {
        return Some("a version cannot start with - or . nor contain ..".into());
    }
    None
}

#[cfg(test)]
mod version_tests {
    use super::version_problem;

    #[test]
    fn versions_that_could_change_a_query_or_a_command_are_refused() {
        for ok in [
            "v1",
            "1.2.3",
            "v2.0.0-rc.1+build.5",
            "sha-3f9a",
            "2026-12-03_1",
            "img:tag@x~1",
        ] {
            assert_eq!(version_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "x'OR'1'='1",
            "v1\"}",
            "v 1",
            "-rf",
            ".hidden",
            "a..b",
            "a/b",
            "v1;rm",
            "v1$x",
        ] {
            assert!(version_problem(bad).is_some(), "{bad:?}");
        }
        assert!(version_problem(&"v".repeat(129)).is_some());
    }
}
