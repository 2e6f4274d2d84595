//! Maintenance windows: the one rule for their text, used by the `hammer` CLI (before a
//! request is sent) and the service (on every request, and as the stored form).
//!
//! A window is weekly and in UTC: `DAYS HH:MM-HH:MM`, e.g. `mon-fri 22:00-04:00`,
//! `daily 02:00-03:30`, `sat,sun 00:00-24:00`.
//!
//! - `DAYS` is `daily` or a comma-separated list of days (`mon tue wed thu fri sat sun`) and
//!   ranges of days (`mon-fri`; a range may wrap over the week's end: `fri-mon`). Case does
//!   not matter.
//! - The window opens at the first time on each of those days and closes at the second. An
//!   end at or before the start crosses midnight: `fri 22:00-04:00` is open from Friday 22:00
//!   to Saturday 04:00. `24:00` ends a window at midnight; `00:00-24:00` is the whole day,
//!   and `10:00-10:00` a whole day from 10:00 to 10:00 the next day.
//!
//! [`Window`]'s `Display` writes the canonical text (`daily`, ranges of three days or more,
//! e.g. `mon-fri`, other days listed), which [`Window::parse`] reads back to the same window.
//! Deciding whether a window is open at a time is the service's (`rollout::window`).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use thiserror::Error;

/// Longest window text accepted, in bytes.
pub const MAX_WINDOW_TEXT: usize = 64;
/// Minutes in a day.
pub const DAY_MINUTES: u16 = 24 * 60;
/// The days' names, Monday first (the index of a day in [`Days`]).
pub const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
/// Windows written as examples in error messages and help texts.
pub const WINDOW_EXAMPLES: &str =
    "\"mon-fri 22:00-04:00\", \"daily 02:00-03:30\" or \"sat,sun 00:00-24:00\"";

/// A set of days of the week: bit `i` is [`DAY_NAMES`]`[i]` (Monday = 0). Never empty in a
/// [`Window`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Days(u8);

impl Days {
    /// Every day of the week.
    pub const ALL: Days = Days(0x7f);

    /// The days whose bits are set in `bits` (bits above the 7th are ignored).
    pub fn from_bits(bits: u8) -> Days {
        Days(bits & 0x7f)
    }

    /// The bits (Monday = bit 0).
    pub fn bits(self) -> u8 {
        self.0
    }

    /// Is day `i` (Monday = 0) in the set?
    pub fn contains(self, i: usize) -> bool {
        i < 7 && self.0 & (1 << i) != 0
    }

    /// No day at all.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for Days {
    /// `daily`, or the days Monday first: runs of three or more days as `first-last`, others
    /// listed (`mon-fri`, `sat,sun`, `mon,wed-fri`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Days::ALL {
            return f.write_str("daily");
        }
        let mut parts: Vec<String> = Vec::new();
        let mut i = 0;
        while i < 7 {
            if !self.contains(i) {
                i += 1;
                continue;
            }
            let mut j = i;
            while j + 1 < 7 && self.contains(j + 1) {
                j += 1;
            }
            if j - i >= 2 {
                parts.push(format!("{}-{}", DAY_NAMES[i], DAY_NAMES[j]));
            } else {
                parts.extend((i..=j).map(|d| DAY_NAMES[d].to_owned()));
            }
            i = j + 1;
        }
        f.write_str(&parts.join(","))
    }
}

/// A weekly maintenance window in UTC: on each of `days`, open from `start` (minutes after
/// midnight) for `length` minutes (1 to a whole day; it may run into the next day).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    days: Days,
    start: u16,
    length: u16,
}

/// Why a window's text was refused. The message says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("maintenance window {text:?} is invalid: {reason}; write DAYS HH:MM-HH:MM in UTC, e.g. {WINDOW_EXAMPLES}")]
pub struct WindowError {
    /// The text as given (cut to [`MAX_WINDOW_TEXT`] bytes).
    pub text: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Window {
    /// The window open on `days` from `start` minutes after midnight for `length` minutes.
    /// Refused: no day, a start at or after 24:00, a length of 0 or over a day.
    pub fn new(days: Days, start: u16, length: u16) -> Result<Window, String> {
        if days.is_empty() {
            return Err("it names no day".into());
        }
        if start >= DAY_MINUTES {
            return Err("it starts at or after 24:00".into());
        }
        if length == 0 || length > DAY_MINUTES {
            return Err("it must be open for 1 minute to 24 hours".into());
        }
        Ok(Window {
            days,
            start,
            length,
        })
    }

    /// The days it opens on.
    pub fn days(&self) -> Days {
        self.days
    }

    /// When it opens on each of its days, in minutes after midnight (0 to 1439).
    pub fn start_minute(&self) -> u16 {
        self.start
    }

    /// How long it stays open, in minutes (1 to 1440).
    pub fn length_minutes(&self) -> u16 {
        self.length
    }

    /// Reads the text described in the module documentation.
    pub fn parse(text: &str) -> Result<Window, WindowError> {
        let refuse = |reason: String| WindowError {
            text: cut(text),
            reason,
        };
        if text.len() > MAX_WINDOW_TEXT {
            return Err(refuse(format!("it is longer than {MAX_WINDOW_TEXT} bytes")));
        }
        let mut words = text.split_whitespace();
        let (Some(days), Some(times), None) = (words.next(), words.next(), words.next()) else {
            return Err(refuse(
                "it must be two parts, the days and the times, separated by a space".into(),
            ));
        };
        let days = parse_days(days).map_err(refuse)?;
        let (from, to) = times
            .split_once('-')
            .ok_or_else(|| refuse(format!("the times {times:?} must look like HH:MM-HH:MM")))?;
        let start = parse_time(from, false).map_err(refuse)?;
        let end = parse_time(to, true).map_err(refuse)?;
        // An end at or before the start is on the next day.
        let length = if end > start {
            end - start
        } else {
            (DAY_MINUTES - start) + end
        };
        Window::new(days, start, length).map_err(refuse)
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = (self.start + self.length) % DAY_MINUTES;
        // A window ending at midnight is written 24:00 (00:00 would read as empty when it
        // starts at 00:00).
        let end = if end == 0 { DAY_MINUTES } else { end };
        write!(
            f,
            "{} {:02}:{:02}-{:02}:{:02}",
            self.days,
            self.start / 60,
            self.start % 60,
            end / 60,
            end % 60
        )
    }
}

impl std::str::FromStr for Window {
    type Err = WindowError;
    fn from_str(s: &str) -> Result<Window, WindowError> {
        Window::parse(s)
    }
}

/// Stored and sent as its canonical text.
impl Serialize for Window {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Window, D::Error> {
        let s = String::deserialize(d)?;
        Window::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// `daily` or days and ranges of days, comma-separated.
fn parse_days(s: &str) -> Result<Days, String> {
    if s.eq_ignore_ascii_case("daily") {
        return Ok(Days::ALL);
    }
    let day = |d: &str| {
        DAY_NAMES
            .iter()
            .position(|n| n.eq_ignore_ascii_case(d))
            .ok_or_else(|| {
                format!(
                    "{d:?} is not a day: use daily, or {} (and ranges like mon-fri)",
                    DAY_NAMES.join(" ")
                )
            })
    };
    let mut bits = 0u8;
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day(a)?, day(b)?);
                let mut i = a;
                loop {
                    bits |= 1 << i;
                    if i == b {
                        break;
                    }
                    i = (i + 1) % 7;
                }
            }
            None => bits |= 1 << day(part)?,
        }
    }
    Ok(Days(bits))
}

/// `HH:MM`, 00:00 to 23:59 (and 24:00 for an end).
fn parse_time(s: &str, end: bool) -> Result<u16, String> {
    let bad = || format!("{s:?} is not a time: use HH:MM from 00:00 to 23:59 (24:00 as an end)");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    let two_digits = |x: &str| x.len() == 2 && x.bytes().all(|b| b.is_ascii_digit());
    if !two_digits(h) || !two_digits(m) {
        return Err(bad());
    }
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    match (h, m) {
        (24, 0) if end => Ok(DAY_MINUTES),
        (0..=23, 0..=59) => Ok(h * 60 + m),
        _ => Err(bad()),
    }
}

fn cut(s: &str) -> String {
    let mut end = s.len().min(MAX_WINDOW_TEXT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn w(s: &str) -> Window {
        Window::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_documented_examples_parse_to_what_they_say() {
        let a = w("mon-fri 22:00-04:00");
        assert_eq!(a.days().bits(), 0b0011111);
        assert_eq!((a.start_minute(), a.length_minutes()), (22 * 60, 6 * 60));
        let b = w("daily 02:00-03:30");
        assert_eq!(b.days(), Days::ALL);
        assert_eq!((b.start_minute(), b.length_minutes()), (120, 90));
        let c = w("sat,sun 00:00-24:00");
        assert_eq!(c.days().bits(), 0b1100000);
        assert_eq!((c.start_minute(), c.length_minutes()), (0, 1440));
        assert_eq!(
            w("SAT,Sun  00:00-24:00"),
            c,
            "case and spacing do not matter"
        );
    }

    #[test]
    fn a_day_range_may_wrap_over_the_end_of_the_week() {
        assert_eq!(w("fri-mon 01:00-02:00").days().bits(), 0b1110001);
        assert_eq!(w("sun-sun 01:00-02:00").days().bits(), 0b1000000);
    }

    #[test]
    fn an_end_at_or_before_the_start_is_on_the_next_day() {
        assert_eq!(w("fri 22:00-00:00").length_minutes(), 120);
        assert_eq!(w("fri 22:00-00:00").to_string(), "fri 22:00-24:00");
        assert_eq!(w("fri 10:00-10:00").length_minutes(), 1440);
        assert_eq!(w("fri 10:00-10:00").to_string(), "fri 10:00-10:00");
        assert_eq!(w("fri 00:00-00:00").to_string(), "fri 00:00-24:00");
    }

    #[test]
    fn the_canonical_text_uses_daily_ranges_of_three_days_and_lists_the_rest() {
        assert_eq!(w("sun,sat 00:00-24:00").to_string(), "sat,sun 00:00-24:00");
        assert_eq!(
            w("mon,tue,wed,thu,fri 22:00-04:00").to_string(),
            "mon-fri 22:00-04:00"
        );
        assert_eq!(w("fri-thu 02:00-03:30").to_string(), "daily 02:00-03:30");
        assert_eq!(
            w("mon,wed-fri 23:00-00:00").to_string(),
            "mon,wed-fri 23:00-24:00"
        );
        assert_eq!(
            w("fri-mon 10:00-09:59").to_string(),
            "mon,fri-sun 10:00-09:59"
        );
    }

    #[test]
    fn bad_windows_are_refused_with_what_to_write_instead() {
        for (text, says) in [
            ("", "two parts"),
            ("mon-fri", "two parts"),
            ("mon-fri 22:00-04:00 utc", "two parts"),
            ("monday 22:00-04:00", "\"monday\" is not a day"),
            ("mon-fri 22:00", "HH:MM-HH:MM"),
            ("mon-fri 25:00-04:00", "not a time"),
            ("mon-fri 24:00-04:00", "not a time"),
            ("mon-fri 2:00-04:00", "not a time"),
            ("mon-fri 10:00-10:00-11:00", "not a time"),
            ("mon-fri 10:60-11:00", "not a time"),
            ("mon,,fri 10:00-11:00", "is not a day"),
        ] {
            let e = Window::parse(text).unwrap_err().to_string();
            assert!(e.contains(says), "{text:?}: {e}");
            assert!(e.contains("mon-fri 22:00-04:00"), "names an example: {e}");
        }
        let long = format!("mon {}", "x".repeat(200));
        let e = Window::parse(&long).unwrap_err();
        assert!(e.reason.contains("longer than 64"), "{e}");
        assert!(e.text.len() <= MAX_WINDOW_TEXT);
    }

    #[test]
    fn a_window_is_stored_and_sent_as_its_text() {
        let a = w("mon-fri 22:00-04:00");
        let j = serde_json::to_string(&a).unwrap();
        assert_eq!(j, "\"mon-fri 22:00-04:00\"");
        assert_eq!(serde_json::from_str::<Window>(&j).unwrap(), a);
        let e = serde_json::from_str::<Window>("\"nope\"").unwrap_err();
        assert!(e.to_string().contains("e.g."), "{e}");
    }

    fn any_window() -> impl Strategy<Value = Window> {
        (1u8..128, 0u16..DAY_MINUTES, 1u16..=DAY_MINUTES)
            .prop_map(|(d, s, l)| Window::new(Days::from_bits(d), s, l).unwrap())
    }

    proptest! {
        #[test]
        fn parse_reads_back_what_format_writes(win in any_window()) {
            let text = win.to_string();
            prop_assert!(text.len() <= MAX_WINDOW_TEXT, "{}", text);
            prop_assert_eq!(Window::parse(&text).unwrap(), win);
        }

        #[test]
        fn parse_never_panics_and_what_it_accepts_formats_to_a_fixed_point(s in "\\PC{0,40}") {
            if let Ok(win) = Window::parse(&s) {
                let text = win.to_string();
                prop_assert_eq!(Window::parse(&text).unwrap().to_string(), text);
            }
        }
    }
}
