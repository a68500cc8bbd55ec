//! Release windows and the freeze calendar: when a release may run unattended.
//!
//! Owns the calendar arithmetic: whether an instant is inside a release window and
//! outside every calendar freeze, and when that is next true. Time zones come from a
//! tz database compiled into the binary, so the answer is the same on every machine and
//! nothing here reads a file or a clock.

use std::time::Duration;

use jiff::Timestamp;
use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;

use crate::Millis;
use crate::decode::{Decoder, scalar};
use crate::yaml::Node;

/// When releases may run, from the policy's `windows` section.
#[derive(Clone, Debug, PartialEq)]
pub struct Windows {
    /// The IANA time zone every day, hour and date here is in.
    pub timezone: String,
    /// Allowed days and hours; empty means any time outside a freeze.
    pub allow: Vec<AllowWindow>,
    /// Calendar freezes: no release starts, and none goes to 100 %, inside one.
    pub freeze: Vec<FreezePeriod>,
    /// What a release started outside a window does.
    pub outside: Outside,
    /// The longest a release waits for a window before it is blocked instead.
    pub max_wait: Duration,
}

/// Days and hours when releases may run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowWindow {
    /// Allowed weekdays, Monday first.
    pub days: [bool; 7],
    /// Start, in minutes after midnight.
    pub from: u16,
    /// End, in minutes after midnight (up to 1440). Before `from`, the window runs past
    /// midnight into the next day.
    pub to: u16,
}

/// A calendar freeze.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FreezePeriod {
    /// First instant, in the windows' time zone.
    pub from: DateTime,
    /// First instant after it.
    pub to: DateTime,
    /// Why, shown to whoever tries to release.
    pub reason: String,
}

/// What a release started outside a window does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outside {
    /// Waits, doing nothing, until the next window opens (or `max_wait` passes).
    Wait,
    /// Ends blocked (exit 5) at once, saying when the next window opens.
    Block,
}

/// Whether releases may run at an instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// They may.
    Open,
    /// They may not.
    Closed {
        /// Why not: outside the release windows, or a named freeze.
        why: String,
        /// Whether a calendar freeze (rather than the hour) closes it.
        freeze: bool,
        /// When they next may, if within the next few weeks.
        opens_at: Option<Millis>,
    },
}

/// How far ahead the next opening is searched for.
const HORIZON_DAYS: i16 = 60;

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl Windows {
    fn tz(&self) -> TimeZone {
        TimeZone::get(&self.timezone).unwrap_or(TimeZone::UTC)
    }

    fn civil(&self, at: Millis) -> DateTime {
        let ts = Timestamp::from_millisecond(i64::try_from(at).unwrap_or(i64::MAX))
            .unwrap_or(Timestamp::MAX);
        ts.to_zoned(self.tz()).datetime()
    }

    fn instant(&self, dt: DateTime) -> Option<Millis> {
        let z = dt.to_zoned(self.tz()).ok()?;
        u64::try_from(z.timestamp().as_millisecond()).ok()
    }

    /// For a local time in the hour skipped when clocks go forward, the instant they
    /// jump (a window starting at 02:30 that night opens at 03:00, not 03:30, which
    /// is how [`Windows::instant`] reads 02:30).
    fn jump_over(&self, dt: DateTime) -> Option<Millis> {
        let tz = self.tz();
        let reading = tz.to_ambiguous_timestamp(dt);
        if !matches!(reading.offset(), jiff::tz::AmbiguousOffset::Gap { .. }) {
            return None;
        }
        let jump = tz.following(reading.earlier().ok()?).next()?.timestamp();
        u64::try_from(jump.as_millisecond()).ok()
    }

    /// The freeze in force at `at`, if any: compared as instants, so that a freeze
    /// stays in force through the hour that repeats when clocks go back. A `from` is
    /// read at its earliest instant and a `to` at its latest (a time in a repeated
    /// hour, or in one skipped when clocks go forward, has two readings): a clock
    /// change never shortens a freeze.
    fn frozen(&self, at: Millis) -> Option<&FreezePeriod> {
        self.freeze.iter().find(|f| {
            let (from, to) = self.freeze_instants(f);
            from.is_some_and(|from| from <= at) && to.is_none_or(|to| at < to)
        })
    }

    /// A freeze's start and end as instants.
    fn freeze_instants(&self, f: &FreezePeriod) -> (Option<Millis>, Option<Millis>) {
        let tz = self.tz();
        let ms = |t: Result<Timestamp, jiff::Error>| {
            t.ok().and_then(|t| u64::try_from(t.as_millisecond()).ok())
        };
        (
            ms(tz.to_ambiguous_timestamp(f.from).earlier()),
            ms(tz.to_ambiguous_timestamp(f.to).later()),
        )
    }

    fn in_allowed_hours(&self, dt: DateTime) -> bool {
        if self.allow.is_empty() {
            return true;
        }
        let day = usize::from(dt.weekday().to_monday_zero_offset().unsigned_abs());
        let yesterday = (day + 6) % 7;
        let minute = u16::try_from(i32::from(dt.hour()) * 60 + i32::from(dt.minute())).unwrap_or(0);
        self.allow.iter().any(|w| {
            if w.from < w.to {
                w.days[day] && w.from <= minute && minute < w.to
            } else {
                (w.days[day] && minute >= w.from) || (w.days[yesterday] && minute < w.to)
            }
        })
    }

    /// Whether releases may run at `at`.
    pub fn status(&self, at: Millis) -> Status {
        let dt = self.civil(at);
        let (why, freeze) = match self.frozen(at) {
            Some(f) => (
                format!(
                    "calendar freeze until {} ({})",
                    self.show_civil(f.to),
                    f.reason
                ),
                true,
            ),
            None if !self.in_allowed_hours(dt) => {
                ("outside the release windows".to_string(), false)
            }
            None => return Status::Open,
        };
        Status::Closed {
            why,
            freeze,
            opens_at: self.next_open(at),
        }
    }

    /// The first instant at or after `at` when releases may run, within the horizon.
    pub fn next_open(&self, at: Millis) -> Option<Millis> {
        let open = |t: Millis| self.frozen(t).is_none() && self.in_allowed_hours(self.civil(t));
        if open(at) {
            return Some(at);
        }
        let today = self.civil(at).date();
        let mut candidates: Vec<Millis> = Vec::new();
        for f in &self.freeze {
            candidates.extend(self.freeze_instants(f).1);
        }
        let starts: Vec<u16> = if self.allow.is_empty() {
            vec![0]
        } else {
            self.allow.iter().map(|w| w.from).collect()
        };
        for d in 0..=HORIZON_DAYS {
            let Ok(date) = today.checked_add(jiff::Span::new().days(d)) else {
                break;
            };
            for from in &starts {
                let start = at_minute(date, *from);
                candidates.extend(self.instant(start));
                candidates.extend(self.jump_over(start));
            }
        }
        candidates.retain(|t| *t > at);
        candidates.sort_unstable();
        candidates.into_iter().find(|t| open(*t))
    }

    fn show_civil(&self, dt: DateTime) -> String {
        format!("{} {}", dt.strftime("%Y-%m-%d %H:%M"), self.timezone)
    }

    /// An instant as the windows' local time and as UTC, for messages.
    pub fn show(&self, at: Millis) -> String {
        let local = self.show_civil(self.civil(at));
        if self.timezone == "UTC" {
            return local;
        }
        let utc = Timestamp::from_millisecond(i64::try_from(at).unwrap_or(i64::MAX))
            .unwrap_or(Timestamp::MAX)
            .strftime("%H:%M UTC");
        format!("{local} ({utc})")
    }

    /// `at` as an RFC 3339 timestamp, in the windows' time zone (its offset then).
    pub fn rfc3339(&self, at: Millis) -> String {
        Timestamp::from_millisecond(i64::try_from(at).unwrap_or(i64::MAX))
            .unwrap_or(Timestamp::MAX)
            .to_zoned(self.tz())
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string()
    }

    /// The allowed windows in words, for runbooks and messages.
    pub fn describe(&self) -> Vec<String> {
        self.allow
            .iter()
            .map(|w| {
                let days: Vec<&str> = (0..7).filter(|d| w.days[*d]).map(|d| DAYS[d]).collect();
                format!(
                    "{} {}-{} {}",
                    days.join(","),
                    show_minute(w.from),
                    show_minute(w.to),
                    self.timezone
                )
            })
            .collect()
    }
}

fn at_minute(date: Date, minute: u16) -> DateTime {
    let h = i8::try_from(minute / 60).unwrap_or(0);
    let m = i8::try_from(minute % 60).unwrap_or(0);
    if h >= 24 {
        return date
            .tomorrow()
            .unwrap_or(date)
            .to_datetime(Time::midnight());
    }
    date.at(h, m, 0, 0)
}

fn show_minute(m: u16) -> String {
    format!("{:02}:{:02}", m / 60, m % 60)
}

/// Decodes the policy's `windows` section.
pub(crate) fn decode(cx: &mut Decoder, node: &Node, path: &str) -> Option<Windows> {
    let m = cx.map(
        node,
        path,
        &["timezone", "allow", "freeze", "outside", "max_wait"],
    )?;
    let timezone = match m.get("timezone") {
        None => Some("UTC".to_string()),
        Some(n) => {
            let p = m.path_of("timezone");
            scalar(cx, n, &p, "an IANA time zone such as `Europe/Berlin`").and_then(|name| {
                match TimeZone::get(name) {
                    Ok(_) => Some(name.to_string()),
                    Err(_) => {
                        cx.error(
                            n.pos,
                            &p,
                            format!("unknown time zone `{name}`; use an IANA name such as `Europe/Berlin`, `America/New_York` or `UTC`"),
                        );
                        None
                    }
                }
            })
        }
    };
    let allow = m
        .optional_with(cx, "allow", |cx, n, p| cx.seq(n, p, decode_allow))
        .unwrap_or_default();
    let freeze = m
        .optional_with(cx, "freeze", |cx, n, p| cx.seq(n, p, decode_freeze))
        .unwrap_or_default();
    let outside = match m.get("outside") {
        None => Some(Outside::Wait),
        Some(n) => {
            let p = m.path_of("outside");
            crate::decode::one_of(cx, n, &p, &["wait", "block"]).map(|s| match s {
                "block" => Outside::Block,
                _ => Outside::Wait,
            })
        }
    };
    let max_wait = m
        .optional::<Duration>(cx, "max_wait")
        .unwrap_or(Duration::from_secs(7 * 24 * 3600));
    Some(Windows {
        timezone: timezone?,
        allow,
        freeze,
        outside: outside?,
        max_wait,
    })
}

fn decode_allow(cx: &mut Decoder, node: &Node, path: &str) -> Option<AllowWindow> {
    let m = cx.map(node, path, &["days", "hours"])?;
    let days = match m.get("days") {
        None => Some([true; 7]),
        Some(n) => {
            let p = m.path_of("days");
            let days = cx.seq(n, &p, decode_days).map(|ranges| {
                let mut days = [false; 7];
                for r in ranges {
                    for (d, on) in r.iter().enumerate() {
                        days[d] |= on;
                    }
                }
                days
            });
            // No day at all: a window that never opens (leave `days` out for every day).
            if days.is_some_and(|d| d.iter().all(|on| !on)) {
                cx.refuse_new(
                    n.pos,
                    &p,
                    "a window on no day never opens; name its days (`[mon-fri]`), or leave `days` out for every day",
                );
            }
            days
        }
    };
    let hours = match m.get("hours") {
        None => Some((0, 1440)),
        Some(n) => {
            let p = m.path_of("hours");
            let text = scalar(cx, n, &p, "hours such as `09:00-17:00`");
            text.and_then(|t| match parse_hours(t) {
                Some(h) => Some(h),
                None => {
                    cx.error(
                        n.pos,
                        &p,
                        format!("`{t}` is not a range of hours; write `HH:MM-HH:MM`, such as `09:00-17:00` (`22:00-02:00` runs past midnight)"),
                    );
                    None
                }
            })
        }
    };
    let (from, to) = hours?;
    Some(AllowWindow {
        days: days?,
        from,
        to,
    })
}

/// One `days` item: `mon`, or a range such as `mon-fri`.
fn decode_days(cx: &mut Decoder, node: &Node, path: &str) -> Option<[bool; 7]> {
    let text = scalar(
        cx,
        node,
        path,
        "a day such as `mon` or a range such as `mon-fri`",
    )?;
    let lower = text.trim().to_ascii_lowercase();
    let day = |s: &str| DAYS.iter().position(|d| *d == s.trim());
    let (a, b) = match lower.split_once('-') {
        Some((a, b)) => (day(a), day(b)),
        None => (day(&lower), day(&lower)),
    };
    let (Some(a), Some(b)) = (a, b) else {
        cx.error(
            node.pos,
            path,
            format!("`{text}` is not a day; use mon, tue, wed, thu, fri, sat, sun or a range such as `mon-fri`"),
        );
        return None;
    };
    let mut days = [false; 7];
    let mut d = a;
    loop {
        days[d] = true;
        if d == b {
            break;
        }
        d = (d + 1) % 7;
    }
    Some(days)
}

fn parse_minute(s: &str) -> Option<u16> {
    let (h, m) = s.trim().split_once(':')?;
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 60 + m)
}

fn parse_hours(s: &str) -> Option<(u16, u16)> {
    let (a, b) = s.split_once('-')?;
    let (from, to) = (parse_minute(a)?, parse_minute(b)?);
    (from != to && from < 1440).then_some((from, to))
}

fn decode_freeze(cx: &mut Decoder, node: &Node, path: &str) -> Option<FreezePeriod> {
    let m = cx.map(node, path, &["from", "to", "reason"])?;
    let mut when = |key: &str| -> Option<DateTime> {
        let n = m.get(key);
        let p = m.path_of(key);
        let Some(n) = n else {
            cx.error(m.pos(), &p, format!("`{key}` is required: a date or date and time such as `2026-12-20` or `2026-12-20 18:00`"));
            return None;
        };
        let text = scalar(cx, n, &p, "a date such as `2026-12-20`")?;
        let parsed = text.parse::<DateTime>().ok().or_else(|| {
            text.parse::<Date>()
                .ok()
                .map(|d| d.to_datetime(Time::midnight()))
        });
        if parsed.is_none() {
            cx.error(
                n.pos,
                &p,
                format!("`{text}` is not a date; write `YYYY-MM-DD` or `YYYY-MM-DD HH:MM`, in the windows' time zone"),
            );
        }
        parsed
    };
    let from = when("from");
    let to = when("to");
    let reason = m
        .optional::<String>(cx, "reason")
        .unwrap_or_else(|| "calendar freeze".into());
    let (from, to) = (from?, to?);
    if to <= from {
        cx.error(
            m.pos(),
            &m.path_of("to"),
            "a freeze must end after it starts",
        );
        return None;
    }
    Some(FreezePeriod { from, to, reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows(tz: &str, allow: Vec<AllowWindow>, freeze: Vec<FreezePeriod>) -> Windows {
        Windows {
            timezone: tz.into(),
            allow,
            freeze,
            outside: Outside::Wait,
            max_wait: Duration::from_secs(86_400),
        }
    }

    fn weekdays(from: u16, to: u16) -> AllowWindow {
        AllowWindow {
            days: [true, true, true, true, true, false, false],
            from,
            to,
        }
    }

    fn at(s: &str, tz: &str) -> Millis {
        let dt: DateTime = s.parse().unwrap();
        u64::try_from(
            dt.to_zoned(TimeZone::get(tz).unwrap())
                .unwrap()
                .timestamp()
                .as_millisecond(),
        )
        .unwrap()
    }

    #[test]
    fn an_instant_is_written_in_rfc_3339_with_the_zones_offset() {
        let w = windows("Europe/Berlin", vec![], vec![]);
        let t = at("2026-12-07 09:00", "Europe/Berlin");
        assert_eq!(w.rfc3339(t), "2026-12-07T09:00:00+01:00");
        let back: Timestamp = w.rfc3339(t).parse().unwrap();
        assert_eq!(u64::try_from(back.as_millisecond()).unwrap(), t);
        // Summer time.
        assert_eq!(
            w.rfc3339(at("2026-07-01 12:30", "UTC")),
            "2026-07-01T14:30:00+02:00"
        );
    }

    #[test]
    fn weekday_hours_in_a_time_zone() {
        let w = windows("Europe/Berlin", vec![weekdays(9 * 60, 16 * 60)], vec![]);
        // 2026-11-23 is a Monday.
        assert_eq!(
            w.status(at("2026-11-23 10:00", "Europe/Berlin")),
            Status::Open
        );
        // 08:30 UTC is 09:30 in Berlin (CET, UTC+1): open.
        assert_eq!(w.status(at("2026-11-23 08:30", "UTC")), Status::Open);
        // 15:30 UTC is 16:30 in Berlin: closed, opens Tuesday 09:00 Berlin.
        let Status::Closed {
            opens_at, freeze, ..
        } = w.status(at("2026-11-23 15:30", "UTC"))
        else {
            panic!("expected closed");
        };
        assert!(!freeze);
        assert_eq!(opens_at, Some(at("2026-11-24 09:00", "Europe/Berlin")));
        // Friday evening waits for Monday.
        assert_eq!(
            w.next_open(at("2026-11-27 17:00", "Europe/Berlin")),
            Some(at("2026-11-30 09:00", "Europe/Berlin"))
        );
    }

    #[test]
    fn a_window_past_midnight_belongs_to_the_day_it_starts() {
        // Friday 22:00 to Saturday 02:00 only.
        let w = windows(
            "UTC",
            vec![AllowWindow {
                days: [false, false, false, false, true, false, false],
                from: 22 * 60,
                to: 2 * 60,
            }],
            vec![],
        );
        assert_eq!(w.status(at("2026-11-28 01:00", "UTC")), Status::Open);
        assert_ne!(w.status(at("2026-11-29 01:00", "UTC")), Status::Open);
        assert_ne!(w.status(at("2026-11-27 21:59", "UTC")), Status::Open);
    }

    #[test]
    fn a_freeze_closes_open_hours_and_reopens_at_the_next_window_after_it() {
        let freeze = FreezePeriod {
            from: "2026-12-24T00:00".parse().unwrap(),
            to: "2026-12-28T12:00".parse().unwrap(),
            reason: "holidays".into(),
        };
        let w = windows(
            "America/New_York",
            vec![weekdays(9 * 60, 17 * 60)],
            vec![freeze],
        );
        let Status::Closed {
            why,
            freeze,
            opens_at,
        } = w.status(at("2026-12-24 10:00", "America/New_York"))
        else {
            panic!("expected closed");
        };
        assert!(freeze);
        assert!(why.contains("holidays"), "{why}");
        // The freeze ends Monday 12:00, inside Monday's window.
        assert_eq!(opens_at, Some(at("2026-12-28 12:00", "America/New_York")));
    }

    #[test]
    fn daylight_saving_shifts_the_utc_instant_not_the_local_hour() {
        let w = windows("Europe/Berlin", vec![weekdays(9 * 60, 16 * 60)], vec![]);
        // Summer (CEST, UTC+2): 09:00 local is 07:00 UTC.
        assert_eq!(
            w.next_open(at("2026-07-06 06:00", "UTC")),
            Some(at("2026-07-06 07:00", "UTC"))
        );
        // Winter (CET, UTC+1): 09:00 local is 08:00 UTC.
        assert_eq!(
            w.next_open(at("2026-12-07 06:00", "UTC")),
            Some(at("2026-12-07 08:00", "UTC"))
        );
    }

    #[test]
    fn hours_and_days_parse_strictly() {
        assert_eq!(parse_hours("09:00-17:30"), Some((540, 1050)));
        assert_eq!(parse_hours("22:00-02:00"), Some((1320, 120)));
        assert_eq!(parse_hours("00:00-24:00"), Some((0, 1440)));
        assert_eq!(parse_hours("9-17"), None);
        assert_eq!(parse_hours("09:00-09:00"), None);
        assert_eq!(parse_hours("25:00-26:00"), None);
    }
}
