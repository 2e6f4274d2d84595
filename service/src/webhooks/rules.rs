//! The decisions of webhooks, as pure functions: which webhooks an event goes to, the
//! signature, when to retry, which URLs and addresses are allowed, which deployment end is
//! which event, and when a device is crash-looping. Time is passed in (`now`, ms).

use crate::store::DeploymentRecord;
use hammer_protocol::api::{DeploymentState, WebhookEvent};
use hammer_protocol::Phase;
use ring::hmac;
use std::net::IpAddr;

/// Longest webhook URL, in bytes.
pub const MAX_URL_LEN: usize = 2048;
/// Crashes within [`CRASH_LOOP_WINDOW_MS`] (with nothing but restarts between them) that make
/// a crash loop.
pub const CRASH_LOOP_CRASHES: usize = 3;
/// The window of [`CRASH_LOOP_CRASHES`]: 5 minutes.
pub const CRASH_LOOP_WINDOW_MS: u64 = 5 * 60 * 1000;

/// Whether a webhook that asked for `events` (empty: all) gets `kind`. `ping` goes only to the
/// webhook it tests, never by subscription; an unknown kind goes nowhere.
pub fn wants(events: &[WebhookEvent], kind: WebhookEvent) -> bool {
    if matches!(kind, WebhookEvent::Ping | WebhookEvent::Unknown) {
        return false;
    }
    events.is_empty() || events.contains(&kind)
}

/// The hex HMAC-SHA256 of `"<t>.<body>"` under `secret` (its bytes as given).
pub fn signature(secret: &str, t: u64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(t.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    hex::encode(ctx.sign().as_ref())
}

/// The `Hammer-Signature` header: `t=<unix secs>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature_header(secret: &str, now_ms: u64, body: &[u8]) -> String {
    let t = now_ms / 1000;
    format!("t={t},v1={}", signature(secret, t, body))
}

/// Why a receiver refuses a signature ([`verify`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the Hammer-Signature header is not t=<secs>,v1=<hex>")]
    Malformed,
    #[error("the signature's timestamp is {0} s away from now (more than the tolerance): a replay or a wrong clock")]
    Stale(u64),
    #[error("the signature does not match the body")]
    Mismatch,
}

/// What a receiver does with a delivery (the README shows the same steps): parse the header,
/// refuse a timestamp more than `tolerance_secs` from `now_ms`, compare the HMAC in constant
/// time.
pub fn verify(
    secret: &str,
    header: &str,
    body: &[u8],
    now_ms: u64,
    tolerance_secs: u64,
) -> Result<(), SignatureError> {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("v1", v)) => v1 = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return Err(SignatureError::Malformed);
    };
    let skew = (now_ms / 1000).abs_diff(t);
    if skew > tolerance_secs {
        return Err(SignatureError::Stale(skew));
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut msg = t.to_string().into_bytes();
    msg.push(b'.');
    msg.extend_from_slice(body);
    hmac::verify(&key, &msg, &v1).map_err(|_| SignatureError::Mismatch)
}

/// The delay before attempt `failures + 1` after `failures` failed ones (1, 2, …): `base_ms`
/// doubled per failure, at most `cap_ms`, then spread by up to ±20 % with `jitter` (any
/// random number) so that many deliveries that failed together do not retry together.
pub fn retry_delay(base_ms: u64, cap_ms: u64, failures: u32, jitter: u64) -> u64 {
    let exp = failures.saturating_sub(1).min(32);
    let d = base_ms.saturating_mul(1u64 << exp).min(cap_ms);
    // A point in [-20 %, +20 %] of d, chosen by jitter.
    let span = d / 5;
    if span == 0 {
        return d;
    }
    let off = jitter % (2 * span + 1);
    (d - span).saturating_add(off)
}

/// Whether another attempt follows `attempts` made ones (`max_attempts` in all).
pub fn retry_after(attempts: u32, max_attempts: u32) -> bool {
    attempts < max_attempts
}

/// Why a webhook URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("the webhook URL is longer than {MAX_URL_LEN} bytes")]
    TooLong,
    #[error("the webhook URL must start with https:// or http:// (got {0:?})")]
    Scheme(String),
    #[error("the webhook URL has no host: give it as https://HOST[:PORT]/PATH")]
    NoHost,
    #[error("the webhook URL may not carry a user name or password; put a secret in the path or check the signature instead")]
    UserInfo,
    #[error("the webhook URL contains spaces or control characters")]
    BadChar,
    #[error("the webhook URL's port is not a number from 1 to 65535")]
    BadPort,
    #[error("the webhook URL points at {0}, a loopback, private or link-local address; the service refuses those unless it runs with --webhook-allow-private")]
    Private(String),
}

/// A parsed webhook URL: what the worker connects to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    /// The host as written (brackets removed from an IPv6 address).
    pub host: String,
    pub port: u16,
}

/// Checks a webhook URL's form (scheme, host, port, length, characters) and, for a host
/// written as an address or named `localhost`, the address rule ([`address_allowed`]). A
/// host name is checked again at each delivery, against what it resolves to then.
pub fn check_url(url: &str, allow_private: bool) -> Result<Target, UrlError> {
    if url.len() > MAX_URL_LEN {
        return Err(UrlError::TooLong);
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(UrlError::BadChar);
    }
    let lower = url.to_ascii_lowercase();
    let (https, rest) = if lower.starts_with("https://") {
        (true, &url[8..])
    } else if lower.starts_with("http://") {
        (false, &url[7..])
    } else {
        let scheme = url.split("://").next().unwrap_or(url);
        return Err(UrlError::Scheme(crate::store::cut(scheme, 32).into_owned()));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err(UrlError::UserInfo);
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or(UrlError::NoHost)?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(UrlError::BadPort),
        };
        (h.to_owned(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (authority.to_owned(), None),
        }
    };
    if host.is_empty() {
        return Err(UrlError::NoHost);
    }
    let port = match port {
        None => {
            if https {
                443
            } else {
                80
            }
        }
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(UrlError::BadPort),
        },
    };
    // The host as the HTTP client will read it (the WHATWG URL rules: `2130706433`, `127.1`
    // and `0x7f.1` are all 127.0.0.1), so that no spelling of an address passes as a name.
    let parsed = reqwest::Url::parse(url).map_err(|_| UrlError::NoHost)?;
    let host_l = match parsed.host_str() {
        Some(h) if !h.is_empty() => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase(),
        _ => return Err(UrlError::NoHost),
    };
    if !allow_private {
        if let Ok(ip) = host_l.parse::<IpAddr>() {
            if !address_allowed(ip, false) {
                return Err(UrlError::Private(ip.to_string()));
            }
        } else if matches!(host_l.trim_end_matches('.'), "localhost")
            || host_l.trim_end_matches('.').ends_with(".localhost")
        {
            return Err(UrlError::Private(host_l));
        }
    }
    let _ = host;
    Ok(Target {
        https,
        host: host_l,
        port,
    })
}

/// Whether the service may connect to `ip` for a webhook: any public address; loopback,
/// private (RFC 1918, unique local), link-local (cloud metadata at 169.254.169.254), CGNAT,
/// unspecified, multicast, broadcast and documentation ranges only with `allow_private`.
pub fn address_allowed(ip: IpAddr, allow_private: bool) -> bool {
    if allow_private {
        return true;
    }
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10, CGNAT
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return address_allowed(IpAddr::V4(v4), false);
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x64 && s[1] == 0xff9b)) // NAT64 of any IPv4
        }
    }
}

/// The event a deployment's end is: succeeded, canceled, aborted (its abort threshold
/// tripped) or failed; `None` while it runs.
pub fn end_event(dep: &DeploymentRecord) -> Option<WebhookEvent> {
    Some(match dep.state {
        DeploymentState::Running => return None,
        DeploymentState::Succeeded => WebhookEvent::DeploymentSucceeded,
        DeploymentState::Canceled => WebhookEvent::DeploymentCanceled,
        DeploymentState::Failed
            if dep
                .reason
                .as_deref()
                .is_some_and(|r| r.starts_with("aborted")) =>
        {
            WebhookEvent::DeploymentAborted
        }
        DeploymentState::Failed | DeploymentState::Unknown => WebhookEvent::DeploymentFailed,
    })
}

/// The event of a pause (`paused`) or a resume.
pub fn hold_event(paused: bool) -> WebhookEvent {
    if paused {
        WebhookEvent::DeploymentPaused
    } else {
        WebhookEvent::DeploymentResumed
    }
}

/// Whether a device whose latest stored events are `recent` (newest first: phase and when the
/// service stored it, ms) has just started crash-looping: the newest is `crashed` and it is
/// the [`CRASH_LOOP_CRASHES`]th crash within [`CRASH_LOOP_WINDOW_MS`] of `now` with only
/// crashes and restarts in between. True once per loop (at that crash, not at later ones);
/// any other phase (running after a deployment, stopped, …) starts the count over.
///
/// The manager reports each crash (`crashed`) and each restart after its backoff
/// (`restarted`); it has no crash-loop state of its own, so the service decides it here.
pub fn crash_looping(recent: &[(Phase, u64)], now: u64) -> bool {
    if recent.first().map(|e| e.0) != Some(Phase::Crashed) {
        return false;
    }
    let since = now.saturating_sub(CRASH_LOOP_WINDOW_MS);
    let mut crashes = 0;
    for &(phase, time) in recent {
        if time < since {
            break;
        }
        match phase {
            Phase::Crashed => crashes += 1,
            Phase::Restarted => {}
            _ => break,
        }
    }
    crashes == CRASH_LOOP_CRASHES
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn a_webhook_gets_the_events_it_asked_for_or_all_of_them_but_never_ping_by_subscription() {
        use WebhookEvent as E;
        assert!(wants(&[], E::DeploymentCreated));
        assert!(wants(&[], E::DeviceOffline));
        assert!(!wants(&[], E::Ping));
        assert!(!wants(&[], E::Unknown));
        let some = [E::DeploymentSucceeded, E::DeviceRolledBack];
        assert!(wants(&some, E::DeviceRolledBack));
        assert!(!wants(&some, E::DeploymentCreated));
        assert!(!wants(&[E::Ping], E::Ping));
    }

    #[test]
    fn a_signature_verifies_with_its_secret_and_body_and_nothing_else() {
        let body = br#"{"id":"d1","type":"ping"}"#;
        let now = 1_700_000_000_000;
        let h = signature_header("s3cret", now, body);
        assert!(h.starts_with("t=1700000000,v1="), "{h}");
        assert_eq!(h.len(), "t=1700000000,v1=".len() + 64);
        verify("s3cret", &h, body, now + 30_000, 300).unwrap();
        assert_eq!(
            verify("other", &h, body, now, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify("s3cret", &h, b"{}", now, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify("s3cret", "v1=00", body, now, 300),
            Err(SignatureError::Malformed)
        );
        // The same bytes later: a replay.
        assert_eq!(
            verify("s3cret", &h, body, now + 301_000, 300),
            Err(SignatureError::Stale(301))
        );
        // A known vector: HMAC-SHA256("key", "1.x").
        assert_eq!(
            signature("key", 1, b"x"),
            "fc4913c41a7bf793267e2a384f3261c9436ec2cd097bd745e7b0d99113f510ec"
        );
    }

    #[test]
    fn retries_back_off_exponentially_up_to_the_cap_with_bounded_jitter() {
        // No jitter span at tiny delays; the middle of the span at jitter = span.
        assert_eq!(retry_delay(10_000, 3_600_000, 1, 2_000), 10_000);
        assert_eq!(retry_delay(10_000, 3_600_000, 2, 4_000), 20_000);
        assert_eq!(retry_delay(10_000, 3_600_000, 3, 8_000), 40_000);
        assert_eq!(retry_delay(10_000, 60_000, 9, 12_000), 60_000);
        assert_eq!(retry_delay(10_000, 60_000, 400, 12_000), 60_000);
        for j in [0, 1, 7, 1_000, u64::MAX] {
            let d = retry_delay(10_000, 3_600_000, 4, j);
            assert!((64_000..=96_000).contains(&d), "{d}");
        }
        assert_ne!(
            retry_delay(10_000, 3_600_000, 4, 0),
            retry_delay(10_000, 3_600_000, 4, 5_000)
        );
        assert!(retry_after(9, 10));
        assert!(!retry_after(10, 10));
    }

    #[test]
    fn webhook_urls_must_be_http_with_a_host_and_private_targets_need_the_flag() {
        let t = check_url("https://example.com/hook?x=1", false).unwrap();
        assert_eq!(
            t,
            Target {
                https: true,
                host: "example.com".into(),
                port: 443
            }
        );
        let t = check_url("http://[2001:4860::1]:8080/h", false).unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.https),
            ("2001:4860::1", 8080, false)
        );
        assert_eq!(
            check_url("ftp://x/", false),
            Err(UrlError::Scheme("ftp".into()))
        );
        assert_eq!(check_url("https:///x", false), Err(UrlError::NoHost));
        assert_eq!(check_url("https://u:p@x/", false), Err(UrlError::UserInfo));
        assert_eq!(check_url("https://x:0/", false), Err(UrlError::BadPort));
        assert_eq!(check_url("https://x:99999/", false), Err(UrlError::BadPort));
        assert_eq!(check_url("https://x/ y", false), Err(UrlError::BadChar));
        let long = format!("https://x/{}", "a".repeat(MAX_URL_LEN));
        assert_eq!(check_url(&long, false), Err(UrlError::TooLong));
        for private in [
            "http://127.0.0.1:9/",
            "http://10.1.2.3/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/",
            "http://[fd00::1]/",
            "http://[::ffff:192.168.1.1]/",
            "http://localhost:8080/",
            "http://LocalHost./",
            "http://a.localhost/",
            "http://0.0.0.0/",
            // Other spellings of 127.0.0.1 the URL parser reads as that address.
            "http://2130706433/",
            "http://127.1/",
            "http://0x7f000001/",
            "http://0177.0.0.1/",
        ] {
            assert!(
                matches!(check_url(private, false), Err(UrlError::Private(_))),
                "{private}"
            );
            check_url(private, true).unwrap();
        }
        let e = check_url("http://127.0.0.1/", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--webhook-allow-private"), "{e}");
    }

    #[test]
    fn only_public_addresses_are_allowed_without_the_flag() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for public in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(address_allowed(ip(public), false), "{public}");
        }
        for private in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.0.1",
            "192.168.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "fe80::1",
            "fc00::1",
            "::ffff:127.0.0.1",
            "64:ff9b::7f00:1",
        ] {
            assert!(!address_allowed(ip(private), false), "{private}");
            assert!(address_allowed(ip(private), true), "{private}");
        }
        assert!(!address_allowed(IpAddr::V4(Ipv4Addr::LOCALHOST), false));
    }

    #[test]
    fn a_deployments_end_is_succeeded_canceled_aborted_or_failed() {
        let mut d = DeploymentRecord {
            id: "d1".into(),
            owner: "u1".into(),
            deployer: "alice".into(),
            created_at: 1,
            finished_at: None,
            git_ref: None,
            commit: None,
            strategy: Default::default(),
            state: DeploymentState::Running,
            reason: None,
            targets: Vec::new(),
            paused: false,
            phasing: None,
        };
        assert_eq!(end_event(&d), None);
        d.state = DeploymentState::Succeeded;
        assert_eq!(end_event(&d), Some(WebhookEvent::DeploymentSucceeded));
        d.state = DeploymentState::Canceled;
        assert_eq!(end_event(&d), Some(WebhookEvent::DeploymentCanceled));
        d.state = DeploymentState::Failed;
        d.reason = Some("1 of 2 devices did not succeed".into());
        assert_eq!(end_event(&d), Some(WebhookEvent::DeploymentFailed));
        d.reason = Some("aborted: 2 of 2 finished devices failed (threshold 50%)".into());
        assert_eq!(end_event(&d), Some(WebhookEvent::DeploymentAborted));
    }

    #[test]
    fn the_third_crash_within_five_minutes_with_only_restarts_between_is_a_crash_loop_once() {
        use Phase::*;
        let now = 10 * 60 * 1000;
        let m = 60 * 1000;
        // crashed, restarted, crashed, restarted, crashed: the third crash.
        let three = [
            (Crashed, now),
            (Restarted, now - m),
            (Crashed, now - m - 1),
            (Restarted, now - 2 * m),
            (Crashed, now - 2 * m - 1),
            (Running, now - 3 * m),
        ];
        assert!(crash_looping(&three, now));
        // The fourth crash is the same loop: not again.
        let four: Vec<_> = [(Crashed, now + 1), (Restarted, now)]
            .into_iter()
            .chain(three)
            .collect();
        assert!(!crash_looping(&four, now + 1));
        // Two crashes are not a loop; a running release between them starts over.
        assert!(!crash_looping(&three[..3], now));
        let broken = [
            (Crashed, now),
            (Running, now - 1),
            (Crashed, now - 2),
            (Crashed, now - 3),
        ];
        assert!(!crash_looping(&broken, now));
        // Crashes spread over more than the window are not a loop.
        let slow = [
            (Crashed, now),
            (Restarted, now - 3 * m),
            (Crashed, now - 3 * m),
            (Restarted, now - 6 * m),
            (Crashed, now - 6 * m),
        ];
        assert!(!crash_looping(&slow, now));
        // Only a crash can start a loop.
        assert!(!crash_looping(&[(Restarted, now)], now));
        assert!(!crash_looping(&[], now));
    }
}
