//! Feature flags: definitions, state and the one evaluation rule every reader shares.
//!
//! Owns how a flag is decided for a user: the allowlist first, then a percentage ramp
//! by a sticky hash of the user's key, then the default. The embedded proxy uses the
//! same hash to put the same users in the canary cohort, so the users a ramp turns the
//! flag on for are exactly the users measured as the canary.

use crate::decode::{Decoder, scalar};
use crate::units::Weight;
use crate::yaml::Node;

/// A flag as the policy defines it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FlagDef {
    /// Lower-case letters, digits, `-`, `_` and `.`.
    pub name: String,
    /// The value for everyone outside the ramp and the allowlist.
    pub default: bool,
    /// Keys (user ids, tenants) that always get the flag on.
    pub allow: Vec<String>,
}

/// Who the flag store records a release's own changes as. No person or token may act
/// under this name: a resumed release tells its own ramps from people's by it.
pub const RELEASE_ACTOR: &str = "rampart";

/// A flag's current state in the store.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FlagState {
    /// The flag's name.
    pub name: String,
    /// The value outside the ramp and the allowlist.
    pub default: bool,
    /// The share of keys the flag is on for, by sticky hash.
    pub ramp: Weight,
    /// Keys that always get the flag on.
    pub allow: Vec<String>,
    /// Who last changed the ramp or the default (`policy` for a flag never changed
    /// since the policy defined it, `rampart` for a release's own ramp).
    #[serde(default)]
    pub changed_by: String,
    /// When they did (0 for a flag never changed).
    #[serde(default)]
    pub changed_at: crate::units::Millis,
}

impl FlagState {
    /// A defined flag before any ramp.
    pub fn from_def(d: &FlagDef) -> FlagState {
        FlagState {
            name: d.name.clone(),
            default: d.default,
            ramp: Weight::ZERO,
            allow: d.allow.clone(),
            changed_by: "policy".into(),
            changed_at: 0,
        }
    }

    /// Decides the flag for `key` (none for anonymous callers).
    pub fn evaluate(&self, key: Option<&str>) -> Evaluation {
        if let Some(k) = key
            && self.allow.iter().any(|a| a == k)
        {
            return Evaluation {
                on: true,
                reason: Reason::Allowlist,
            };
        }
        let bp = self.ramp.basis_points();
        let in_ramp = match key {
            _ if bp >= 10_000 => true,
            Some(k) => bucket(&self.name, k.as_bytes()) < bp,
            None => false,
        };
        if in_ramp {
            return Evaluation {
                on: true,
                reason: Reason::Ramp,
            };
        }
        Evaluation {
            on: self.default,
            reason: Reason::Default,
        }
    }
}

/// The value of a flag for one caller, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Evaluation {
    /// Whether the flag is on.
    pub on: bool,
    /// Which rule decided.
    pub reason: Reason,
}

/// Which rule decided a flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The key is on the allowlist.
    Allowlist,
    /// The key's hash falls inside the ramp.
    Ramp,
    /// Neither: the flag's default.
    Default,
}

/// The bucket, 0..10 000, of `key` for a ramp salted with `salt` (a flag's name; empty
/// for plain traffic splitting). Stable across machines and rampart versions.
pub fn bucket(salt: &str, key: &[u8]) -> u16 {
    let h = if salt.is_empty() {
        fnv1a(FNV_OFFSET, key)
    } else {
        fnv1a(fnv1a(fnv1a(FNV_OFFSET, salt.as_bytes()), &[0]), key)
    };
    u16::try_from(mix(h) % 10_000).unwrap_or(0)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a: a stable hash, the same on every machine and every rampart version, so a
/// user keeps their variant (and their flags) across controller restarts.
fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(seed, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// SplitMix64's finaliser: spreads FNV's output (and plain counters) evenly over
/// buckets.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Whether `name` is a valid flag name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        })
}

/// Decodes one `flags.define` item.
pub(crate) fn decode_def(cx: &mut Decoder, node: &Node, path: &str) -> Option<FlagDef> {
    let m = cx.map(node, path, &["name", "default", "allow"])?;
    let name = m.required_with(cx, "name", |cx, n, p| {
        let text = scalar(cx, n, p, "a flag name")?;
        if valid_name(text) {
            Some(text.to_string())
        } else {
            cx.error(
                n.pos,
                p,
                format!("`{text}` is not a flag name; use lower-case letters, digits, `-`, `_` and `.` (at most 64)"),
            );
            None
        }
    });
    let default = m.optional::<bool>(cx, "default").unwrap_or(false);
    let allow = m.optional::<Vec<String>>(cx, "allow").unwrap_or_default();
    Some(FlagDef {
        name: name?,
        default,
        allow,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flag(ramp: u16, default: bool) -> FlagState {
        FlagState {
            name: "new-checkout".into(),
            default,
            ramp: Weight::from_basis_points(ramp).unwrap(),
            allow: vec!["qa-1".into()],
            changed_by: String::new(),
            changed_at: 0,
        }
    }

    #[test]
    fn allowlist_then_ramp_then_default() {
        let f = flag(0, false);
        assert_eq!(f.evaluate(Some("qa-1")).reason, Reason::Allowlist);
        assert!(f.evaluate(Some("qa-1")).on);
        assert!(!f.evaluate(Some("user-7")).on);
        assert!(!f.evaluate(None).on);
        assert!(flag(0, true).evaluate(None).on);
        assert!(flag(10_000, false).evaluate(None).on, "100 % is everyone");
    }

    #[test]
    fn a_ramp_covers_its_share_of_keys_and_only_grows() {
        let keys: Vec<String> = (0..20_000).map(|i| format!("user-{i}")).collect();
        let on = |bp: u16| -> Vec<bool> {
            let f = flag(bp, false);
            keys.iter().map(|k| f.evaluate(Some(k)).on).collect()
        };
        let (ten, fifty) = (on(1000), on(5000));
        let share = |v: &[bool]| v.iter().filter(|b| **b).count() as f64 / v.len() as f64;
        assert!((share(&ten) - 0.10).abs() < 0.01, "{}", share(&ten));
        assert!((share(&fifty) - 0.50).abs() < 0.015, "{}", share(&fifty));
        assert!(
            ten.iter().zip(&fifty).all(|(a, b)| !a || *b),
            "a user in the 10 % ramp stays in at 50 %"
        );
    }

    /// Buckets of `user-0` to `user-7`, unsalted (traffic splitting) and under three
    /// flag names, computed once. A user's bucket decides their variant and their flags,
    /// so if these moved between rampart versions an upgrade would silently move users
    /// between cohorts mid-release.
    const GOLDEN: [(&str, [u16; 8]); 4] = [
        ("", [1564, 7624, 8795, 7394, 2039, 4217, 6051, 9534]),
        ("a", [4624, 5233, 4662, 2881, 4485, 460, 9881, 9200]),
        ("b", [7317, 7160, 1420, 2693, 8639, 6300, 2943, 2989]),
        (
            "new-checkout",
            [6970, 8393, 5824, 7329, 2303, 1059, 7549, 7817],
        ),
    ];

    #[test]
    fn buckets_never_move_between_versions() {
        for (salt, buckets) in GOLDEN {
            for (i, want) in buckets.into_iter().enumerate() {
                let key = format!("user-{i}");
                assert_eq!(
                    bucket(salt, key.as_bytes()),
                    want,
                    "bucket({salt:?}, {key:?})"
                );
            }
        }
    }

    #[test]
    fn flags_are_salted_so_early_users_are_not_always_the_same() {
        // Every flag (and the unsalted split) puts each pinned user in its own bucket...
        for i in 0..8 {
            let mut seen: Vec<u16> = GOLDEN.iter().map(|(_, b)| b[i]).collect();
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len(), GOLDEN.len(), "user-{i}: {GOLDEN:?}");
        }
        // ...so a 10 % ramp of flag `a` (buckets below 1000) reaches user-5, whom flag
        // `b` and the unsalted split leave out, and leaves out user-0.
        let ten_percent = |name: &str| FlagState {
            name: name.into(),
            default: false,
            ramp: Weight::from_basis_points(1000).unwrap(),
            allow: Vec::new(),
            changed_by: String::new(),
            changed_at: 0,
        };
        assert!(ten_percent("a").evaluate(Some("user-5")).on);
        assert!(!ten_percent("b").evaluate(Some("user-5")).on);
        assert!(!ten_percent("a").evaluate(Some("user-0")).on);
        assert!(bucket("", b"user-5") >= 1000);
    }
}
