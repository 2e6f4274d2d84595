//! Human output: aligned tables, times, short commits, and `--json` printing.
//!
//! Text that a device, an app or another user supplied (log lines, status details, commits,
//! names, error messages) goes through [`safe`] before it reaches the terminal, so it can
//! never move the cursor, retitle the window, clear the screen or fake a line of output.
//! [`Table`], [`or_dash`] and [`short_commit`] apply it themselves; `--json` output is the
//! API's exact JSON (serde escapes control characters there).

use hammer_protocol::WireName;
use serde_json::Value;
use std::borrow::Cow;
use std::fmt::Write as _;

/// Whether `c` must not reach a terminal as itself: every control character (C0 including
/// tab, newline and carriage return; DEL; C1 such as U+009B, the one-character CSI), the
/// Unicode line and paragraph separators, and the bidirectional formatting characters that
/// can make a line display in another order than it reads ("Trojan Source").
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200e}' | '\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// Makes untrusted text safe to print on a terminal: each character of [`needs_escape`] is
/// written as a visible escape (`\t`, `\n`, `\r`, `\x1b` for other C0 and DEL, `\u{9b}`
/// for C1 and the Unicode format characters); everything else is kept. So the result holds
/// no ESC, no byte below 0x20 and no line break: an escape sequence shows as text and a
/// device cannot start a fake line. A tab becomes `\t` too (it would break table columns).
///
/// Backslashes are left alone, which makes `safe` idempotent (escaping twice changes
/// nothing), so a printer may apply it to text that a helper already escaped.
pub fn safe(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Prints the API's JSON (pretty) on stdout.
pub fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

/// A table with a header row; columns are padded to their widest cell.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Table {
            rows: vec![header.iter().map(|s| safe(s).into_owned()).collect()],
        }
    }

    /// Adds a row; every cell is passed through [`safe`].
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(
            cells
                .into_iter()
                .map(|c| match safe(&c) {
                    Cow::Borrowed(_) => c,
                    Cow::Owned(o) => o,
                })
                .collect(),
        );
    }

    pub fn render(&self) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0; cols];
        for row in &self.rows {
            for (i, c) in row.iter().enumerate() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (i, c) in row.iter().enumerate() {
                if i + 1 == row.len() {
                    line.push_str(c);
                } else {
                    line.push_str(c);
                    let pad = widths[i] - c.chars().count() + 2;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    pub fn print(&self) {
        print!("{}", self.render());
    }
}

/// `-` for a missing value; the value passed through [`safe`].
pub fn or_dash(s: Option<impl ToString>) -> String {
    s.map(|s| safe(&s.to_string()).into_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "-".into())
}

/// The first 10 characters of a commit id (a device reports it: passed through [`safe`]).
pub fn short_commit(c: Option<&str>) -> String {
    match c {
        Some(c) if !c.is_empty() => safe(&c.chars().take(10).collect::<String>()).into_owned(),
        _ => "-".into(),
    }
}

/// An enum value as its wire name (`rolled_back`, `in_flight`, …): the protocol's
/// [`WireName`], the one way every printer names a state or a phase.
pub fn wire_name<T: WireName>(v: &T) -> String {
    v.wire_name().to_owned()
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn fmt_time(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Milliseconds since the epoch as `HH:MM:SS` UTC (for streams).
pub fn fmt_clock(ms: u64) -> String {
    fmt_time(ms)[11..].to_string()
}

/// How long ago, roughly: `5s ago`, `3m ago`, `2h ago`, `4d ago`.
pub fn ago(ms: u64, now_ms: u64) -> String {
    let s = now_ms.saturating_sub(ms) / 1000;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86_399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(fmt_time(0), "1970-01-01 00:00:00");
        assert_eq!(fmt_time(1_709_251_199_000), "2024-02-29 23:59:59");
        assert_eq!(fmt_clock(1_709_251_199_000), "23:59:59");
        assert_eq!(ago(1000, 6000), "5s ago");
        assert_eq!(ago(0, 7_200_000), "2h ago");
    }

    #[test]
    fn table_aligns() {
        let mut t = Table::new(&["NAME", "STATE"]);
        t.row(vec!["device-1".into(), "ready".into()]);
        assert_eq!(t.render(), "NAME      STATE\ndevice-1  ready\n");
    }

    #[test]
    fn safe_shows_escape_sequences_as_text() {
        assert_eq!(
            safe("a\x1b]0;pwned\x07b\x1b[2Jc"),
            "a\\x1b]0;pwned\\x07b\\x1b[2Jc"
        );
        assert_eq!(safe("csi \u{9b}31m del \u{7f}"), "csi \\u{9b}31m del \\x7f");
        assert_eq!(safe("nul \0 bell \x07"), "nul \\x00 bell \\x07");
    }

    #[test]
    fn safe_keeps_a_log_line_on_one_line() {
        assert_eq!(
            safe("ok\n12:00:00 d1 running\r\tfake"),
            "ok\\n12:00:00 d1 running\\r\\tfake"
        );
        assert_eq!(safe("a\u{2028}b\u{202e}c"), "a\\u{2028}b\\u{202e}c");
    }

    #[test]
    fn safe_leaves_ordinary_text_untouched_and_borrowed() {
        for s in [
            "",
            "device-1",
            "héllo wörld ✓ 日本",
            "C:\\path \\x1b literal",
            "a b  c",
        ] {
            assert!(matches!(safe(s), Cow::Borrowed(t) if t == s), "{s:?}");
        }
    }

    /// Every char, alone and between ordinary text: the output never holds a control
    /// character, ESC, a C1 character or a line break, and escaping again changes nothing.
    #[test]
    fn safe_output_never_holds_a_control_character_for_any_char() {
        for cp in 0..=0x10ffff_u32 {
            let Some(c) = char::from_u32(cp) else {
                continue;
            };
            let input = format!("x{c}y");
            let out = safe(&input);
            assert_terminal_safe(&input, &out);
        }
    }

    /// Random strings heavy in control characters and escape sequences (a seeded xorshift,
    /// so a failure reproduces): same property as above, plus idempotence and that text
    /// without anything to escape comes back unchanged.
    #[test]
    fn safe_output_never_holds_a_control_character_for_random_text() {
        const PIECES: &[&str] = &[
            "\x1b",
            "\x1b[2J",
            "\x1b]0;pwned\x07",
            "\u{9b}",
            "\u{7f}",
            "\u{85}",
            "\n",
            "\r\n",
            "\t",
            "\0",
            "\\",
            "\\x1b",
            "a",
            "Z",
            "9",
            " ",
            "é",
            "日",
            "🦀",
            "\u{202e}",
            "\u{2028}",
            "\u{200b}",
            "|",
            "{",
            "}",
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let len = (next() % 24) as usize;
            let mut input = String::new();
            for _ in 0..len {
                if next() % 4 == 0 {
                    // Any char at all, not only the listed pieces.
                    if let Some(c) = char::from_u32((next() % 0x11_0000) as u32) {
                        input.push(c);
                    }
                } else {
                    input.push_str(PIECES[(next() % PIECES.len() as u64) as usize]);
                }
            }
            let out = safe(&input);
            assert_terminal_safe(&input, &out);
            if !input.chars().any(needs_escape) {
                assert_eq!(out, input);
            }
        }
    }

    fn assert_terminal_safe(input: &str, out: &str) {
        assert!(
            !out.bytes().any(|b| b < 0x20 || b == 0x7f),
            "{input:?} -> {out:?} holds a C0 byte or DEL"
        );
        assert!(
            !out.chars().any(needs_escape),
            "{input:?} -> {out:?} holds a control or format character"
        );
        assert_eq!(safe(out), out, "escaping {input:?} twice changed it");
    }

    #[test]
    fn table_cells_and_helpers_are_escaped() {
        let mut t = Table::new(&["NAME", "DETAIL"]);
        t.row(vec!["d1".into(), "boom\x1b[2J\nnext".into()]);
        assert_eq!(t.render(), "NAME  DETAIL\nd1    boom\\x1b[2J\\nnext\n");
        assert_eq!(or_dash(Some("a\x1bb")), "a\\x1bb");
        assert_eq!(short_commit(Some("\x1b[2J0123456789")), "\\x1b[2J012345");
    }

    #[test]
    fn states_and_phases_print_as_their_wire_names() {
        assert_eq!(
            wire_name(&hammer_protocol::Phase::RolledBack),
            "rolled_back"
        );
        assert_eq!(
            wire_name(&hammer_protocol::api::TargetState::TimedOut),
            "timed_out"
        );
    }
}
