//! Maintenance windows as the rollout asks about them: may this device be launched now, and
//! if not, when next? Pure: the windows and the time (ms since the epoch, UTC) in, the answer
//! out. The windows' text and type are the protocol's ([`hammer_protocol::window`]).
//!
//! A device with no window applying to it may be launched at any time ([`Gate::Open`]); a
//! device with several may be launched in any of them. [`windows_for`] picks the windows of a
//! user that apply to one of their devices (by its name or one of its tags).

use crate::store::{DeviceRecord, WindowRecord};
use hammer_protocol::api::AppliesTo;
use hammer_protocol::window::DAY_MINUTES;
use hammer_protocol::Window;

const MINUTE_MS: u64 = 60_000;
const DAY_MS: u64 = DAY_MINUTES as u64 * MINUTE_MS;
/// A week in milliseconds: no answer of [`next_open`] is further ahead than this.
pub const WEEK_MS: u64 = 7 * DAY_MS;
/// 1970-01-01 (time 0) was a Thursday: Monday 00:00 of that week is 3 days before.
const EPOCH_AFTER_MONDAY_MS: u64 = 3 * DAY_MS;

/// What the rollout does with a device now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Launch it: no window applies to it, or one is open.
    Open,
    /// Keep it pending until then (ms since the epoch), when its next window opens.
    WaitUntil(u64),
}

/// Milliseconds since the Monday 00:00 (UTC) of `now`'s week.
fn in_week(now: u64) -> u64 {
    (now % WEEK_MS + EPOCH_AFTER_MONDAY_MS) % WEEK_MS
}

/// The times in the week (ms after Monday 00:00) at which `w` opens.
fn openings(w: &Window) -> impl Iterator<Item = u64> + '_ {
    let start = u64::from(w.start_minute()) * MINUTE_MS;
    (0..7u64)
        .filter(|d| w.days().contains(*d as usize))
        .map(move |d| d * DAY_MS + start)
}

/// Is `w` open at `now`? (Open from each opening, inclusive, for its length, exclusive; an
/// opening late on Sunday runs into Monday.)
fn open_at(w: &Window, now: u64) -> bool {
    let t = in_week(now);
    let len = u64::from(w.length_minutes()) * MINUTE_MS;
    openings(w).any(|o| (t + WEEK_MS - o) % WEEK_MS < len)
}

/// Is one of `windows` open at `now`? (None is open when there are none.)
pub fn is_open(windows: &[Window], now: u64) -> bool {
    windows.iter().any(|w| open_at(w, now))
}

/// The first moment at or after `now` when one of `windows` is open: `now` itself when one is
/// open, else the nearest opening, never more than a week ahead. `None` when there are no
/// windows.
pub fn next_open(windows: &[Window], now: u64) -> Option<u64> {
    if windows.is_empty() {
        return None;
    }
    if is_open(windows, now) {
        return Some(now);
    }
    let t = in_week(now);
    windows
        .iter()
        .flat_map(openings)
        // Closed now, so no opening is at `t` itself: each is 1 ms to a week ahead.
        .map(|o| (o + WEEK_MS - t) % WEEK_MS)
        .min()
        .map(|ahead| now.saturating_add(ahead))
}

/// The rollout's question for one device whose windows are `windows_of_device`: launch now,
/// or wait until when? No window applying means [`Gate::Open`].
pub fn gate(windows_of_device: &[Window], now: u64) -> Gate {
    match next_open(windows_of_device, now) {
        None => Gate::Open,
        Some(t) if t <= now => Gate::Open,
        Some(t) => Gate::WaitUntil(t),
    }
}

/// Does `rec` apply to `device`? By the device's name, or by a tag it has (`key=value`; a
/// stored selector that does not parse applies to nothing).
pub fn applies(rec: &WindowRecord, device: &DeviceRecord) -> bool {
    if rec.owner != device.owner {
        return false;
    }
    match &rec.applies_to {
        AppliesTo::Device(name) => *name == device.name,
        AppliesTo::Tag(sel) => hammer_protocol::parse_tag(sel)
            .is_ok_and(|(k, v)| device.tags.get(&k).is_some_and(|have| *have == v)),
    }
}

/// The windows among `records` (a user's) that apply to `device`, in their order.
pub fn windows_for(device: &DeviceRecord, records: &[WindowRecord]) -> Vec<Window> {
    records
        .iter()
        .filter(|r| applies(r, device))
        .map(|r| r.window)
        .collect()
}

/// The answer in the shape `core::Rollout::next_launch_gated` asks for: until when `device`
/// is outside the windows among `records` (its owner's), `None` when it may be launched at
/// `now`. The engine reads the owner's windows once per step (`Store::windows_of`).
pub fn closed_until(device: &DeviceRecord, records: &[WindowRecord], now: u64) -> Option<u64> {
    match gate(&windows_for(device, records), now) {
        Gate::Open => None,
        Gate::WaitUntil(t) => Some(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::devices::new_device;
    use hammer_protocol::api::DeviceState;
    use hammer_protocol::window::Days;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn w(s: &str) -> Window {
        Window::parse(s).unwrap()
    }

    /// 2026-11-30 was a Monday; `at(day, "HH:MM")` is that week's day (0 = Monday) at HH:MM UTC.
    const MONDAY: u64 = 1_795_996_800_000;
    fn at(day: u64, hm: &str) -> u64 {
        let (h, m) = hm.split_once(':').unwrap();
        MONDAY
            + day * DAY_MS
            + (h.parse::<u64>().unwrap() * 60 + m.parse::<u64>().unwrap()) * MINUTE_MS
    }

    #[test]
    fn the_reference_monday_is_a_monday() {
        // 2026-11-30T00:00:00Z, checked against the service's own calendar.
        assert!(crate::views::utc(MONDAY)
            .0
            .starts_with("2026-11-30T00:00:00"));
        assert_eq!(in_week(MONDAY), 0);
    }

    #[test]
    fn a_window_is_open_from_its_start_inclusive_to_its_end_exclusive() {
        let ws = [w("daily 02:00-03:30")];
        assert!(!is_open(&ws, at(2, "01:59")));
        assert!(is_open(&ws, at(2, "02:00")));
        assert!(is_open(&ws, at(2, "03:29")));
        assert!(!is_open(&ws, at(2, "03:30")));
        assert_eq!(next_open(&ws, at(2, "03:30")), Some(at(3, "02:00")));
        assert_eq!(next_open(&ws, at(2, "02:10")), Some(at(2, "02:10")));
    }

    #[test]
    fn a_window_crossing_midnight_is_open_on_the_next_morning_of_its_days() {
        let ws = [w("mon-fri 22:00-04:00")];
        assert!(is_open(&ws, at(0, "23:00")), "monday night");
        assert!(is_open(&ws, at(1, "03:59")), "tuesday morning, from monday");
        assert!(
            !is_open(&ws, at(0, "03:00")),
            "monday morning: sunday has none"
        );
        assert!(
            is_open(&ws, at(5, "02:00")),
            "saturday morning, from friday"
        );
        assert!(!is_open(&ws, at(5, "22:30")), "saturday night");
        assert_eq!(
            gate(&ws, at(5, "12:00")),
            Gate::WaitUntil(at(7, "22:00")),
            "saturday noon waits for monday night"
        );
    }

    #[test]
    fn a_sunday_night_window_runs_into_monday_over_the_week_end() {
        let ws = [w("sun 23:00-01:00")];
        assert!(is_open(&ws, at(6, "23:30")));
        assert!(is_open(&ws, at(7, "00:30")), "the next monday");
        assert!(is_open(&ws, MONDAY), "monday 00:00 from the sunday before");
        assert!(!is_open(&ws, at(7, "01:00")));
        assert_eq!(next_open(&ws, at(7, "01:00")), Some(at(13, "23:00")));
    }

    #[test]
    fn no_window_lets_a_device_go_and_any_of_several_open_ones_does() {
        assert_eq!(gate(&[], at(3, "12:00")), Gate::Open);
        assert_eq!(next_open(&[], at(3, "12:00")), None);
        let ws = [w("sat,sun 00:00-24:00"), w("wed 12:00-13:00")];
        assert_eq!(gate(&ws, at(2, "12:30")), Gate::Open);
        assert_eq!(gate(&ws, at(5, "09:00")), Gate::Open);
        assert_eq!(gate(&ws, at(2, "13:00")), Gate::WaitUntil(at(5, "00:00")));
        assert_eq!(gate(&ws, at(0, "08:00")), Gate::WaitUntil(at(2, "12:00")));
    }

    fn device(name: &str, tags: &[(&str, &str)]) -> DeviceRecord {
        let tags: BTreeMap<String, String> = tags
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        new_device("u1", name, tags, DeviceState::Ready)
    }

    fn rec(id: &str, owner: &str, applies_to: AppliesTo, text: &str) -> WindowRecord {
        WindowRecord {
            id: id.into(),
            owner: owner.into(),
            name: None,
            applies_to,
            window: w(text),
            created_at: 1,
        }
    }

    #[test]
    fn a_devices_windows_are_those_naming_it_or_one_of_its_tags() {
        let recs = [
            rec("1", "u1", AppliesTo::Device("pi".into()), "mon 01:00-02:00"),
            rec(
                "2",
                "u1",
                AppliesTo::Tag("site=lab".into()),
                "tue 01:00-02:00",
            ),
            rec(
                "3",
                "u1",
                AppliesTo::Tag("site=home".into()),
                "wed 01:00-02:00",
            ),
            rec(
                "4",
                "u1",
                AppliesTo::Device("other".into()),
                "thu 01:00-02:00",
            ),
            rec("5", "u2", AppliesTo::Device("pi".into()), "fri 01:00-02:00"),
            rec(
                "6",
                "u1",
                AppliesTo::Tag("not a selector".into()),
                "sat 01:00-02:00",
            ),
        ];
        let pi = device("pi", &[("site", "lab")]);
        assert_eq!(
            windows_for(&pi, &recs),
            [w("mon 01:00-02:00"), w("tue 01:00-02:00")],
            "another user's window naming the same device name does not apply"
        );
        assert!(windows_for(&device("x", &[("site", "labx")]), &recs).is_empty());
    }

    #[test]
    fn closed_until_is_none_inside_a_window_or_without_one_and_the_opening_outside() {
        let recs = [rec(
            "1",
            "u1",
            AppliesTo::Device("pi".into()),
            "wed 12:00-13:00",
        )];
        let pi = device("pi", &[]);
        assert_eq!(closed_until(&pi, &recs, at(2, "12:30")), None);
        assert_eq!(
            closed_until(&pi, &recs, at(2, "13:00")),
            Some(at(9, "12:00"))
        );
        assert_eq!(
            closed_until(&device("other", &[]), &recs, at(2, "13:00")),
            None
        );
    }

    fn any_window() -> impl Strategy<Value = Window> {
        (1u8..128, 0u16..DAY_MINUTES, 1u16..=DAY_MINUTES)
            .prop_map(|(d, s, l)| Window::new(Days::from_bits(d), s, l).unwrap())
    }

    proptest! {
        #[test]
        fn the_next_opening_is_open_closed_just_before_and_within_a_week(
            ws in proptest::collection::vec(any_window(), 1..4),
            now in 0u64..4_000_000_000_000,
        ) {
            let t = next_open(&ws, now).unwrap();
            prop_assert!(t >= now && t - now <= WEEK_MS, "{} {}", now, t);
            prop_assert!(is_open(&ws, t));
            if t > now {
                prop_assert!(!is_open(&ws, t - 1));
                prop_assert!(!is_open(&ws, now));
                prop_assert_eq!(gate(&ws, now), Gate::WaitUntil(t));
            } else {
                prop_assert_eq!(gate(&ws, now), Gate::Open);
            }
        }

        #[test]
        fn nothing_is_open_between_now_and_the_next_opening(
            win in any_window(),
            now in 0u64..4_000_000_000_000,
            frac in 0u64..1000,
        ) {
            let ws = [win];
            let t = next_open(&ws, now).unwrap();
            if t > now {
                let probe = now + (t - now) * frac / 1000;
                prop_assert!(probe >= t || !is_open(&ws, probe));
            }
        }

        #[test]
        fn a_window_is_open_from_each_opening_to_the_end_of_its_length(
            win in any_window(),
            week in 0u64..3000,
        ) {
            let monday = MONDAY - 1000 * WEEK_MS + week * WEEK_MS;
            for d in 0..7u64 {
                let o = monday + d * DAY_MS + u64::from(win.start_minute()) * MINUTE_MS;
                let end = o + u64::from(win.length_minutes()) * MINUTE_MS;
                if win.days().contains(d as usize) {
                    prop_assert!(is_open(&[win], o));
                    prop_assert!(is_open(&[win], end - 1));
                }
            }
        }
    }
}
