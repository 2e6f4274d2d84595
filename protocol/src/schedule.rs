//! The text forms of a deployment's phases and times, as `hammer deploy` takes them and the
//! dashboard's form sends them: the one parser of each.
//!
//! - Phases: `1,10%,50%`: each item is a number of devices or a percentage of the targets
//!   (`api::PhaseSize`); what they leave over is a last phase.
//! - Durations: `90`, `90s`, `10m`, `2h`, `1d` (seconds when no unit).
//! - Times: `2026-12-24T22:00:00Z`, `2026-12-24 22:00` (UTC), or `+DURATION` from now.

use crate::api::PhaseSize;

/// Most phases a deployment names (the service refuses more).
pub const MAX_PHASES: usize = 20;

/// Why a phase list, a duration or a time was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("phase {0:?} is neither a number of devices (e.g. 1) nor a percentage (e.g. 10%)")]
    Phase(String),
    #[error("a phase holds at least 1 device and a percentage is 1% to 100%: {0:?}")]
    PhaseRange(String),
    #[error("at most {MAX_PHASES} phases")]
    TooManyPhases,
    #[error("duration {0:?} is not a number with an optional unit s, m, h or d (e.g. 10m)")]
    Duration(String),
    #[error("time {0:?} is not a UTC time like 2026-12-24T22:00:00Z or 2026-12-24 22:00, nor +DURATION (e.g. +2h)")]
    Time(String),
}

/// Parses `1,10%,50%`.
pub fn parse_phases(s: &str) -> Result<Vec<PhaseSize>, ScheduleError> {
    let items: Vec<&str> = s.split(',').map(str::trim).collect();
    if items.len() > MAX_PHASES {
        return Err(ScheduleError::TooManyPhases);
    }
    items
        .into_iter()
        .map(|item| {
            let bad = || ScheduleError::Phase(item.to_owned());
            let range = || ScheduleError::PhaseRange(item.to_owned());
            match item.strip_suffix('%') {
                Some(p) => {
                    let p: u8 = digits(p).ok_or_else(bad)?.try_into().map_err(|_| range())?;
                    if p == 0 || p > 100 {
                        return Err(range());
                    }
                    Ok(PhaseSize::Percent(p))
                }
                None => {
                    let n: u32 = digits(item)
                        .ok_or_else(bad)?
                        .try_into()
                        .map_err(|_| range())?;
                    if n == 0 {
                        return Err(range());
                    }
                    Ok(PhaseSize::Devices(n))
                }
            }
        })
        .collect()
}

/// The value of a non-empty run of ASCII digits (at most 12 of them).
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 12 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses `90`, `90s`, `10m`, `2h`, `1d` into seconds.
pub fn parse_duration_secs(s: &str) -> Result<u64, ScheduleError> {
    let bad = || ScheduleError::Duration(s.to_owned());
    let (num, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c),
        _ => (s, 's'),
    };
    let n = digits(num).ok_or_else(bad)?;
    let mul = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(mul).ok_or_else(bad)
}

/// Parses a UTC time (`2026-12-24T22:00:00Z`, `2026-12-24 22:00`, seconds optional) or
/// `+DURATION` after `now_ms`, into ms since the epoch.
pub fn parse_time(s: &str, now_ms: u64) -> Result<u64, ScheduleError> {
    let bad = || ScheduleError::Time(s.to_owned());
    if let Some(d) = s.strip_prefix('+') {
        let secs = parse_duration_secs(d).map_err(|_| bad())?;
        return secs
            .checked_mul(1000)
            .and_then(|ms| now_ms.checked_add(ms))
            .ok_or_else(bad);
    }
    let t = s.strip_suffix('Z').unwrap_or(s);
    let (date, time) = t
        .split_once('T')
        .or_else(|| t.split_once(' '))
        .ok_or_else(bad)?;
    let mut d = date.split('-');
    let (Some(y), Some(mo), Some(da), None) = (d.next(), d.next(), d.next(), d.next()) else {
        return Err(bad());
    };
    if y.len() != 4 || mo.len() != 2 || da.len() != 2 {
        return Err(bad());
    }
    let (y, mo, da) = (
        digits(y).ok_or_else(bad)?,
        digits(mo).ok_or_else(bad)?,
        digits(da).ok_or_else(bad)?,
    );
    let mut tp = time.split(':');
    let (Some(h), Some(mi), sec, None) = (tp.next(), tp.next(), tp.next(), tp.next()) else {
        return Err(bad());
    };
    let two = |x: &str| {
        if x.len() == 2 {
            digits(x)
        } else {
            None
        }
    };
    let (h, mi) = (two(h).ok_or_else(bad)?, two(mi).ok_or_else(bad)?);
    let sec = match sec {
        Some(x) => two(x).ok_or_else(bad)?,
        None => 0,
    };
    if y < 1970 || !(1..=12).contains(&mo) || da == 0 || da > days_in_month(y, mo) {
        return Err(bad());
    }
    if h > 23 || mi > 59 || sec > 59 {
        return Err(bad());
    }
    let days = days_from_civil(y, mo, da);
    Ok(((days * 86_400) + h * 3600 + mi * 60 + sec) * 1000)
}

fn is_leap(y: u64) -> bool {
    (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400)
}

fn days_in_month(y: u64, m: u64) -> u64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a date from 1970 on (Howard Hinnant's algorithm).
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn phases_are_numbers_of_devices_or_percentages() {
        assert_eq!(
            parse_phases("1, 10%,50%"),
            Ok(vec![
                PhaseSize::Devices(1),
                PhaseSize::Percent(10),
                PhaseSize::Percent(50)
            ])
        );
        assert!(matches!(
            parse_phases("0"),
            Err(ScheduleError::PhaseRange(_))
        ));
        assert!(matches!(
            parse_phases("101%"),
            Err(ScheduleError::PhaseRange(_))
        ));
        assert!(matches!(parse_phases("1,,2"), Err(ScheduleError::Phase(_))));
        assert!(matches!(parse_phases("-1"), Err(ScheduleError::Phase(_))));
        assert!(matches!(parse_phases("ten"), Err(ScheduleError::Phase(_))));
        assert_eq!(
            parse_phases(&vec!["1"; 21].join(",")),
            Err(ScheduleError::TooManyPhases)
        );
    }

    #[test]
    fn durations_take_a_unit_or_mean_seconds() {
        assert_eq!(parse_duration_secs("90"), Ok(90));
        assert_eq!(parse_duration_secs("10m"), Ok(600));
        assert_eq!(parse_duration_secs("2h"), Ok(7200));
        assert_eq!(parse_duration_secs("1d"), Ok(86_400));
        for bad in ["", "m", "10x", "1.5h", "-1", "10 m"] {
            assert!(parse_duration_secs(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn times_are_utc_or_relative_to_now() {
        // 2026-12-24T22:00:00Z, checked with `date -u -d 2026-12-24T22:00:00Z +%s`.
        let xmas = 1_798_149_600_000;
        assert_eq!(parse_time("2026-12-24T22:00:00Z", 0), Ok(xmas));
        assert_eq!(parse_time("2026-12-24 22:00", 0), Ok(xmas));
        assert_eq!(parse_time("1970-01-01T00:00:00Z", 0), Ok(0));
        assert_eq!(parse_time("2024-02-29 12:00", 0), Ok(1_709_208_000_000));
        assert_eq!(parse_time("+2h", 1000), Ok(1000 + 7_200_000));
        for bad in [
            "2025-02-29 12:00",
            "2026-13-01 00:00",
            "2026-12-24",
            "2026-12-24 24:00",
            "26-12-24 22:00",
            "2026-12-24T22:00:00+01:00",
            "+",
            "tomorrow",
        ] {
            assert!(parse_time(bad, 0).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_text_never_panics(s in "\\PC{0,40}") {
            let _ = parse_phases(&s);
            let _ = parse_duration_secs(&s);
            let _ = parse_time(&s, u64::MAX);
        }

        #[test]
        fn a_time_round_trips_through_its_calendar_fields(secs in 0u64..8_000_000_000) {
            let days = secs / 86_400;
            let (y, m, d) = civil(days);
            let rem = secs % 86_400;
            let text = format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60);
            prop_assert_eq!(parse_time(&text, 0), Ok(secs * 1000));
        }
    }

    /// The inverse of `days_from_civil` (for the round trip only).
    fn civil(z: u64) -> (u64, u64, u64) {
        let z = z + 719_468;
        let era = z / 146_097;
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let y = yoe + era * 400;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        (if m <= 2 { y + 1 } else { y }, m, d)
    }
}
