//! The broker URL: `mqtts://host[:port]` (TLS, default port 8883) or `mqtt://host[:port]`
//! (plain TCP, default port 1883). An IPv6 address goes in brackets: `mqtts://[::1]:8883`.
//!
//! One parser for the service (which accepts only `mqtts://`, [`BrokerUrl::parse_mqtts`]),
//! enrollment and the device manager (which accepts `mqtt://` only with its
//! `insecure_plain_mqtt_for_tests` opt-in, checked where the config is read).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use thiserror::Error;

/// Default port of `mqtts://`.
pub const DEFAULT_MQTTS_PORT: u16 = 8883;
/// Default port of `mqtt://`.
pub const DEFAULT_MQTT_PORT: u16 = 1883;
/// Longest host name, in bytes (DNS).
pub const MAX_HOST: usize = 253;

const WHAT_IS_ALLOWED: &str =
    "use mqtts://HOST[:PORT] (or mqtt://HOST[:PORT]), an IPv6 address in brackets";

/// Why a broker URL was refused. The message tells the user what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BrokerUrlError {
    #[error("broker URL {0:?} must start with mqtts:// (TLS) or mqtt:// (plain, tests only)")]
    Scheme(String),
    #[error("broker URL {0:?} must use mqtts://: TLS is required")]
    TlsRequired(String),
    #[error("broker URL {0:?} has no host: {WHAT_IS_ALLOWED}")]
    NoHost(String),
    #[error("broker URL {0:?} has an invalid host: use a DNS name (A-Z a-z 0-9 . - _), an IPv4 address, or an IPv6 address in brackets like [::1]")]
    Host(String),
    #[error("broker URL {0:?} has an invalid port: use a number from 1 to 65535")]
    Port(String),
    #[error("broker URL {0:?} must be only a scheme, a host and a port (no user, path or query): {WHAT_IS_ALLOWED}")]
    Extra(String),
}

/// A parsed broker URL. `host` is an IPv6 address without its brackets, an IPv4 address or
/// a DNS name, as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
    /// `mqtts://` (mutual TLS) rather than `mqtt://` (plain TCP, only for tests).
    pub tls: bool,
}

impl BrokerUrl {
    /// An `mqtts://` URL of `host` and `port`.
    pub fn mqtts(host: impl Into<String>, port: u16) -> BrokerUrl {
        BrokerUrl {
            host: host.into(),
            port,
            tls: true,
        }
    }

    /// Parses `mqtts://host[:port]` or `mqtt://host[:port]` (default ports 8883 and 1883);
    /// a trailing `/` is allowed, nothing else after the port.
    pub fn parse(url: &str) -> Result<BrokerUrl, BrokerUrlError> {
        let shown = || url.chars().take(200).collect::<String>();
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else {
            return Err(BrokerUrlError::Scheme(shown()));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() {
            return Err(BrokerUrlError::NoHost(shown()));
        }
        if rest.contains(['/', '@', '?', '#']) {
            return Err(BrokerUrlError::Extra(shown()));
        }
        let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            let (h, after) = bracketed
                .split_once(']')
                .ok_or_else(|| BrokerUrlError::Host(shown()))?;
            if h.parse::<Ipv6Addr>().is_err() {
                return Err(BrokerUrlError::Host(shown()));
            }
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| BrokerUrlError::Extra(shown()))?,
                ),
            };
            (h, port)
        } else {
            match rest.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err(BrokerUrlError::NoHost(shown()));
        }
        if !host.contains(':') && !is_host_name(host) {
            return Err(BrokerUrlError::Host(shown()));
        }
        let port = match port {
            None if tls => DEFAULT_MQTTS_PORT,
            None => DEFAULT_MQTT_PORT,
            Some(p) => parse_port(p).ok_or_else(|| BrokerUrlError::Port(shown()))?,
        };
        Ok(BrokerUrl {
            host: host.to_owned(),
            port,
            tls,
        })
    }

    /// Like [`BrokerUrl::parse`], and refuses `mqtt://`: for whoever requires TLS.
    pub fn parse_mqtts(url: &str) -> Result<BrokerUrl, BrokerUrlError> {
        let u = BrokerUrl::parse(url)?;
        if !u.tls {
            return Err(BrokerUrlError::TlsRequired(url.chars().take(200).collect()));
        }
        Ok(u)
    }

    /// The URL, always with its port and an IPv6 address in brackets; [`BrokerUrl::parse`]
    /// reads it back to the same value.
    pub fn to_url(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for BrokerUrl {
    type Err = BrokerUrlError;
    fn from_str(s: &str) -> Result<BrokerUrl, BrokerUrlError> {
        BrokerUrl::parse(s)
    }
}

/// A DNS name or an IPv4 address: 1 to [`MAX_HOST`] bytes of ASCII letters, digits, `.`, `-`
/// and `_`, starting with a letter or digit.
fn is_host_name(h: &str) -> bool {
    h.parse::<Ipv4Addr>().is_ok()
        || (h.len() <= MAX_HOST
            && h.as_bytes()[0].is_ascii_alphanumeric()
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')))
}

/// 1 to 65535, digits only (no sign, no spaces).
fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse::<u16>().ok().filter(|&n| n != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn url(host: &str, port: u16, tls: bool) -> BrokerUrl {
        BrokerUrl {
            host: host.into(),
            port,
            tls,
        }
    }

    #[test]
    fn an_ipv6_broker_url_parses_the_same_with_and_without_its_port() {
        // The manager used to refuse `mqtts://[::1]`, which the service accepted.
        assert_eq!(
            BrokerUrl::parse("mqtts://[::1]:8883").unwrap(),
            url("::1", 8883, true)
        );
        assert_eq!(
            BrokerUrl::parse("mqtts://[::1]").unwrap(),
            url("::1", 8883, true)
        );
        assert_eq!(
            BrokerUrl::parse("mqtt://[::1]").unwrap(),
            url("::1", 1883, false)
        );
        assert_eq!(
            BrokerUrl::parse("mqtts://[2001:db8::7]:9000/").unwrap(),
            url("2001:db8::7", 9000, true)
        );
        assert_eq!(
            BrokerUrl::parse("mqtts://[::1]:8883").unwrap().to_url(),
            "mqtts://[::1]:8883"
        );
    }

    #[test]
    fn default_ports_are_8883_for_mqtts_and_1883_for_mqtt() {
        assert_eq!(BrokerUrl::parse("mqtts://h").unwrap(), url("h", 8883, true));
        assert_eq!(
            BrokerUrl::parse("mqtt://127.0.0.1").unwrap(),
            url("127.0.0.1", 1883, false)
        );
        assert_eq!(
            BrokerUrl::parse("mqtts://broker.example:1883/").unwrap(),
            url("broker.example", 1883, true)
        );
    }

    #[test]
    fn parse_mqtts_refuses_plain_mqtt_and_says_tls_is_required() {
        let e = BrokerUrl::parse_mqtts("mqtt://h:1").unwrap_err();
        assert_eq!(e, BrokerUrlError::TlsRequired("mqtt://h:1".into()));
        assert!(e.to_string().contains("TLS is required"), "{e}");
        assert!(BrokerUrl::parse_mqtts("mqtts://h:1").unwrap().tls);
    }

    #[test]
    fn malformed_broker_urls_are_refused_with_what_is_allowed() {
        let cases = [
            ("http://x:1", "Scheme"),
            ("MQTTS://x", "Scheme"),
            ("mqtts://", "NoHost"),
            ("mqtts://:1", "NoHost"),
            ("mqtts://h:notaport", "Port"),
            ("mqtts://h:", "Port"),
            ("mqtts://h:0", "Port"),
            ("mqtts://h:65536", "Port"),
            ("mqtts://h:+1", "Port"),
            ("mqtts://h:1:2", "Port"),
            ("mqtts://::1", "NoHost"),
            ("mqtts://[::1", "Host"),
            ("mqtts://[nope]:1", "Host"),
            ("mqtts://[::1]x", "Extra"),
            ("mqtts://h a", "Host"),
            ("mqtts://-h", "Host"),
            ("mqtts://u@h", "Extra"),
            ("mqtts://h/path", "Extra"),
            ("mqtts://h?x=1", "Extra"),
        ];
        for (u, is) in cases {
            let e = BrokerUrl::parse(u).unwrap_err();
            assert!(
                format!("{e:?}").starts_with(&format!("{is}(")),
                "{u}: {e:?}"
            );
        }
        let e = BrokerUrl::parse("mqtts://h:x").unwrap_err().to_string();
        assert!(e.contains("1 to 65535"), "{e}");
    }

    fn host() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9][a-z0-9._-]{0,40}",
            any::<Ipv4Addr>().prop_map(|a| a.to_string()),
            any::<Ipv6Addr>().prop_map(|a| a.to_string()),
        ]
    }

    proptest! {
        #[test]
        fn a_broker_url_reads_back_from_its_own_to_url(
            host in host(), port in 1u16.., tls in any::<bool>()
        ) {
            let u = BrokerUrl { host, port, tls };
            prop_assert_eq!(BrokerUrl::parse(&u.to_url()), Ok(u.clone()));
            prop_assert_eq!(u.to_url().parse::<BrokerUrl>(), Ok(u));
        }

        #[test]
        fn parsing_any_text_never_panics(s in "(mqtts?://)?\\PC{0,40}") {
            let _ = BrokerUrl::parse(&s);
        }
    }
}
