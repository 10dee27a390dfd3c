//! Time windows ("office hours") evaluated against the time the host passes in.
//!
//! Modules have no clock and no time-zone database: a window names its UTC offset
//! (`"+01:00"`), which the operator changes twice a year where daylight saving applies.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

use crate::Datetime;

/// A day of the week.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    #[serde(alias = "mon")]
    Monday,
    #[serde(alias = "tue")]
    Tuesday,
    #[serde(alias = "wed")]
    Wednesday,
    #[serde(alias = "thu")]
    Thursday,
    #[serde(alias = "fri")]
    Friday,
    #[serde(alias = "sat")]
    Saturday,
    #[serde(alias = "sun")]
    Sunday,
}

impl Weekday {
    const ALL: [Weekday; 7] = [
        Weekday::Monday,
        Weekday::Tuesday,
        Weekday::Wednesday,
        Weekday::Thursday,
        Weekday::Friday,
        Weekday::Saturday,
        Weekday::Sunday,
    ];

    /// Monday to Friday.
    pub fn workdays() -> Vec<Weekday> {
        Self::ALL.iter().take(5).copied().collect()
    }

    fn from_days_since_epoch(days: i64) -> Weekday {
        // 1970-01-01 was a Thursday (index 3 from Monday).
        let idx = (days + 3).rem_euclid(7) as usize;
        Self::ALL.get(idx).copied().unwrap_or(Weekday::Monday)
    }

    fn previous(self) -> Weekday {
        let idx = Self::ALL.iter().position(|d| *d == self).unwrap_or(0);
        Self::ALL
            .get((idx + 6) % 7)
            .copied()
            .unwrap_or(Weekday::Sunday)
    }
}

/// A time of day, `HH:MM`, in minutes after midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimeOfDay(u16);

impl FromStr for TimeOfDay {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a time of day (HH:MM, 00:00 to 24:00)");
        let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
        let h: u16 = h.parse().map_err(|_| bad())?;
        let m: u16 = m.parse().map_err(|_| bad())?;
        if m >= 60 || h > 24 || (h == 24 && m != 0) {
            return Err(bad());
        }
        Ok(TimeOfDay(h * 60 + m))
    }
}

/// A UTC offset, `+HH:MM` or `-HH:MM` or `Z`, in minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UtcOffset(i32);

impl FromStr for UtcOffset {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("z") || t.eq_ignore_ascii_case("utc") {
            return Ok(UtcOffset(0));
        }
        let bad = || format!("`{s}` is not a UTC offset (+HH:MM, -HH:MM or Z)");
        let (sign, rest) = match t.chars().next() {
            Some('+') => (1, t.get(1..).unwrap_or("")),
            Some('-') => (-1, t.get(1..).unwrap_or("")),
            _ => return Err(bad()),
        };
        let tod: TimeOfDay = rest.parse().map_err(|_| bad())?;
        if tod.0 > 14 * 60 {
            return Err(bad());
        }
        Ok(UtcOffset(sign * i32::from(tod.0)))
    }
}

/// A weekly window of time: `days` from `start` to `end` local time at `utc_offset`.
///
/// ```toml
/// [window]
/// days = ["mon", "tue", "wed", "thu", "fri"]   # default: every day
/// start = "08:00"
/// end = "18:30"
/// utc_offset = "+01:00"                        # default: UTC
/// ```
///
/// `start` is inclusive, `end` exclusive. A window whose end is before its start spans
/// midnight (`22:00` to `06:00`); the day it starts on is the one that must be listed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeWindow {
    #[serde(default = "every_day")]
    pub days: Vec<Weekday>,
    #[serde(deserialize_with = "from_str")]
    pub start: TimeOfDay,
    #[serde(deserialize_with = "from_str")]
    pub end: TimeOfDay,
    #[serde(default, deserialize_with = "from_str")]
    pub utc_offset: UtcOffset,
}

fn every_day() -> Vec<Weekday> {
    Weekday::ALL.to_vec()
}

fn from_str<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = String>,
{
    let s = String::deserialize(deserializer)?;
    s.parse().map_err(serde::de::Error::custom)
}

impl TimeWindow {
    /// Whether `now` falls inside the window.
    pub fn contains(&self, now: &Datetime) -> bool {
        let local = now.seconds as i64 + i64::from(self.utc_offset.0) * 60;
        let days = local.div_euclid(86_400);
        let minute = (local.rem_euclid(86_400) / 60) as u16;
        let today = Weekday::from_days_since_epoch(days);
        let (start, end) = (self.start.0, self.end.0);
        if start <= end {
            self.days.contains(&today) && start <= minute && minute < end
        } else {
            // Spans midnight: the evening part belongs to today, the morning part to
            // the window that started yesterday.
            (minute >= start && self.days.contains(&today))
                || (minute < end && self.days.contains(&today.previous()))
        }
    }
}

impl fmt::Display for TimeWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hm = |t: TimeOfDay| format!("{:02}:{:02}", t.0 / 60, t.0 % 60);
        let off = self.utc_offset.0;
        let sign = if off < 0 { '-' } else { '+' };
        write!(
            f,
            "{:?} {}-{} UTC{}{:02}:{:02}",
            self.days,
            hm(self.start),
            hm(self.end),
            sign,
            off.abs() / 60,
            off.abs() % 60
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-23 is a Monday.
    const MONDAY_0000_UTC: u64 = 1_795_392_000;

    fn at(day_offset: u64, h: u64, m: u64) -> Datetime {
        Datetime {
            seconds: MONDAY_0000_UTC + day_offset * 86_400 + h * 3600 + m * 60,
            nanoseconds: 0,
        }
    }

    fn window(toml_text: &str) -> TimeWindow {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn epoch_day_arithmetic_knows_the_weekday() {
        assert_eq!(Weekday::from_days_since_epoch(0), Weekday::Thursday);
        assert_eq!(
            Weekday::from_days_since_epoch((MONDAY_0000_UTC / 86_400) as i64),
            Weekday::Monday
        );
        assert_eq!(Weekday::from_days_since_epoch(-1), Weekday::Wednesday);
    }

    #[test]
    fn office_hours_hold_on_workdays_between_start_and_end() {
        let w = window(
            "days = [\"mon\",\"tue\",\"wed\",\"thu\",\"fri\"]\nstart = \"09:00\"\nend = \"18:00\"",
        );
        assert!(w.contains(&at(0, 9, 0)));
        assert!(w.contains(&at(0, 17, 59)));
        assert!(!w.contains(&at(0, 18, 0)), "end is exclusive");
        assert!(!w.contains(&at(0, 8, 59)));
        assert!(!w.contains(&at(5, 12, 0)), "Saturday");
    }

    #[test]
    fn utc_offset_shifts_the_local_day_and_hour() {
        let w =
            window("days = [\"mon\"]\nstart = \"09:00\"\nend = \"10:00\"\nutc_offset = \"+09:00\"");
        // 00:30 UTC Monday is 09:30 Monday in UTC+9.
        assert!(w.contains(&at(0, 0, 30)));
        let w =
            window("days = [\"sun\"]\nstart = \"20:00\"\nend = \"21:00\"\nutc_offset = \"-05:00\"");
        // 01:30 UTC Monday is 20:30 Sunday in UTC-5.
        assert!(w.contains(&at(0, 1, 30)));
    }

    #[test]
    fn windows_across_midnight_belong_to_the_start_day() {
        let w = window("days = [\"fri\"]\nstart = \"22:00\"\nend = \"06:00\"");
        assert!(w.contains(&at(4, 23, 0)), "Friday night");
        assert!(w.contains(&at(5, 5, 59)), "Saturday early morning");
        assert!(!w.contains(&at(5, 22, 30)), "Saturday night is not listed");
        assert!(
            !w.contains(&at(4, 5, 0)),
            "Friday early morning belongs to Thursday"
        );
    }

    #[test]
    fn bad_times_and_offsets_are_refused() {
        assert!("25:00".parse::<TimeOfDay>().is_err());
        assert!("12:60".parse::<TimeOfDay>().is_err());
        assert!("24:00".parse::<TimeOfDay>().is_ok());
        assert!("+15:00".parse::<UtcOffset>().is_err());
        assert!(
            "01:00"
                .parse::<UtcOffset>()
                .unwrap_err()
                .contains("UTC offset")
        );
        let err = toml::from_str::<TimeWindow>("start = \"9\"\nend = \"18:00\"")
            .err()
            .unwrap();
        assert!(err.to_string().contains("time of day"), "{err}");
        let err =
            toml::from_str::<TimeWindow>("days = [\"funday\"]\nstart = \"09:00\"\nend = \"18:00\"");
        assert!(err.is_err());
    }
}
