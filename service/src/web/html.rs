//! Small HTML helpers: escaping, the page layout, times, short commits and form decoding.

use std::fmt::Write;

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a path segment or query value.
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of `name` in an `application/x-www-form-urlencoded` body.
pub fn form_field(body: &str, name: &str) -> Option<String> {
    body.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| decode(k) == name)
        .map(|(_, v)| decode(v))
}

/// Every value of `name` in an `application/x-www-form-urlencoded` body or query, in order.
pub fn form_fields(body: &str, name: &str) -> Vec<String> {
    body.split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| decode(k) == name)
        .map(|(_, v)| decode(v))
        .collect()
}

/// The first 7 characters of a commit, or a dash.
pub fn short(commit: Option<&str>) -> String {
    match commit {
        Some(c) => esc(&c.chars().take(7).collect::<String>()),
        None => "—".into(),
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` in a `<time>` element, or a dash.
pub fn time(ms: Option<u64>) -> String {
    let Some(ms) = ms else {
        return "—".into();
    };
    let (iso, text) = crate::views::utc(ms);
    format!("<time datetime=\"{iso}\">{text}</time>")
}

/// How long before `now` the time `ms` was, in words: `just now`, `42 s ago`, `3 min ago`,
/// `5 h ago`, `2 d ago` (a time ahead of `now`, a clock skew, reads `just now`). Pure: the
/// page passes its `now`; `app.js` refreshes the words with the same rules.
pub fn ago(ms: u64, now: u64) -> String {
    let s = now.saturating_sub(ms) / 1000;
    match s {
        0..=4 => "just now".into(),
        5..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86_399 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

/// A time relative to `now` (`3 min ago`) in a `<time>` element whose `datetime` and
/// hover title carry the absolute UTC time; a dash when there is none.
pub fn time_ago(ms: Option<u64>, now: u64) -> String {
    let Some(ms) = ms else {
        return "—".into();
    };
    let (iso, text) = crate::views::utc(ms);
    format!(
        "<time datetime=\"{iso}\" title=\"{text}\" data-ago>{}</time>",
        ago(ms, now)
    )
}

/// A length of time in words: `under 1 s`, `42 s`, `3 min 5 s`, `5 h 2 min`, `2 d 3 h` (`app.js`
/// words a running deployment's time so far with the same rules).
pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => "under 1 s".into(),
        1..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        3600..=86_399 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

/// A snake_case enum value as text (`in_flight` → `in flight`).
pub fn word<T: hammer_protocol::WireName>(v: &T) -> String {
    v.wire_name().replace('_', " ")
}

/// The page around `body`: header, navigation, sign-out, error and status regions. `events`
/// is the SSE URL the page listens on (live regions refresh on its events).
pub fn layout(title: &str, user: Option<&str>, events: Option<&str>, body: &str) -> String {
    let nav = match user {
        Some(u) => format!(
            r#"<nav aria-label="Main"><a href="/devices">Devices</a><a href="/deployments">Deployments</a><a href="/deployments/new">New deployment</a><a href="/commits">Bad commits</a><a href="/windows">Maintenance windows</a><a href="/audit">Audit log</a><a href="/webhooks">Webhooks</a></nav>
<div class="who"><span id="live" class="live" aria-live="polite"></span><span>{}</span>
<form method="post" action="/logout"><button type="submit" class="link">Sign out</button></form></div>"#,
            esc(u)
        ),
        None => String::new(),
    };
    let events = events
        .map(|e| format!(" data-events=\"{}\"", esc(e)))
        .unwrap_or_default();
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{t} · Hammer IoT</title>
<link rel="stylesheet" href="/assets/app.css">
<script src="/assets/app.js" defer></script>
</head><body{events}>
<header><a class="brand" href="/devices">Hammer IoT</a>{nav}</header>
<main>
<div id="error" class="error" role="alert" hidden></div>
<div id="notice" class="notice" role="status" hidden></div>
{body}
</main></body></html>
"#,
        t = esc(title)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(
            form_field("a=1&token=hmr_x%2By+z", "token").unwrap(),
            "hmr_x+y z"
        );
        assert_eq!(form_field("token=%", "token").unwrap(), "%");
        assert_eq!(form_fields("n=a&x=1&n=b%20c&n", "n"), ["a", "b c"]);
        assert_eq!(enc("a=b c"), "a%3Db%20c");
        assert!(time(Some(0)).contains("1970-01-01 00:00:00"));
        assert!(time(Some(1_700_000_000_000)).contains("2023-11-14 22:13:20"));
        assert_eq!(short(Some("0123456789")), "0123456");
        let t = 1_700_000_000_000;
        assert_eq!(ago(t, t), "just now");
        assert_eq!(ago(t + 5_000, t), "just now", "a time ahead of now");
        assert_eq!(ago(t, t + 4_999), "just now");
        assert_eq!(ago(t, t + 42_000), "42 s ago");
        assert_eq!(ago(t, t + 60_000), "1 min ago");
        assert_eq!(ago(t, t + 3 * 60_000 + 59_000), "3 min ago");
        assert_eq!(ago(t, t + 5 * 3_600_000), "5 h ago");
        assert_eq!(ago(t, t + 2 * 86_400_000 + 1), "2 d ago");
        assert_eq!(
            time_ago(Some(t), t + 180_000),
            "<time datetime=\"2023-11-14T22:13:20Z\" title=\"2023-11-14 22:13:20 UTC\" data-ago>3 min ago</time>"
        );
        assert_eq!(time_ago(None, t), "—");
        assert_eq!(duration(999), "under 1 s");
        assert_eq!(duration(42_500), "42 s");
        assert_eq!(duration(185_000), "3 min 5 s");
        assert_eq!(duration(5 * 3_600_000 + 120_000), "5 h 2 min");
        assert_eq!(duration(2 * 86_400_000 + 3 * 3_600_000), "2 d 3 h");
        assert_eq!(
            word(&hammer_protocol::api::TargetState::InFlight),
            "in flight"
        );
    }
}
