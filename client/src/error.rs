//! What can go wrong talking to the service, each case a sentence that says what to do next.
//!
//! Text the service (or whatever answers at its URL) sent is kept as it came: a printer that
//! writes an [`Error`] to a terminal escapes it first (the `hammer` CLI does, with its
//! `output::safe`).

use std::path::PathBuf;

/// A failed call of the Hammer API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The service URL does not parse.
    #[error(
        "invalid service URL {url:?} ({reason}); pass --url http://HOST:PORT or set HAMMER_URL"
    )]
    InvalidUrl { url: String, reason: String },
    /// The service URL is not `http://` or `https://`.
    #[error("invalid service URL {url:?}: it must start with http:// or https://")]
    UnsupportedScheme { url: String },
    /// The CA file (`--ca-cert`) cannot be read.
    #[error("cannot read the CA certificate {}: {error}", path.display())]
    CaFile {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The CA file holds no usable PEM certificate.
    #[error("{} holds no PEM certificate ({detail})", path.display())]
    CaPem { path: PathBuf, detail: String },
    /// The HTTP client could not be built (TLS setup).
    #[error("cannot set up the HTTP client ({0})")]
    Setup(String),
    /// A call that needs a token was made without one.
    #[error(
        "no API token: pass --token, set HAMMER_TOKEN, or run `hammer login --url URL --token TOKEN`"
    )]
    NoToken,
    /// A name or id that breaks the protocol's rule: refused before any request.
    #[error("{0}")]
    InvalidArgument(String),
    /// The service could not be reached (worth retrying).
    #[error(transparent)]
    Unreachable(#[from] Unreachable),
    /// The service answered with an error status.
    #[error("{message} (HTTP {status}){}", refusal_hint(*.status, .url))]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The service's `{"error": …}` sentence (without a final period), else the start of
        /// the body, else the status's reason. Not escaped.
        message: String,
        /// The service's base URL.
        url: String,
    },
    /// The answer is not JSON: something other than a Hammer service is at the URL.
    #[error("the service answered {method} {path} with something that is not JSON ({detail}); is {url} a Hammer service?")]
    NotJson {
        method: String,
        path: String,
        detail: String,
        url: String,
    },
    /// The answer is JSON but not the API type the endpoint returns.
    #[error(
        "unexpected answer from {path} ({detail}); are the CLI and the service the same version?"
    )]
    UnexpectedAnswer { path: String, detail: String },
    /// A paged list gave the same cursor twice (following it would never end).
    #[error("the service repeated a page cursor for {path}; try again without --all")]
    RepeatedCursor { path: String },
}

/// What to add to a refusal: how to fix a refused token.
fn refusal_hint(status: u16, url: &str) -> String {
    if status == 401 {
        format!(
            ": the token was refused; run `hammer login --url {url} --token TOKEN` or set HAMMER_TOKEN"
        )
    } else {
        String::new()
    }
}

impl Error {
    /// Whether the service could not be reached (as opposed to an answer that says no).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Error::Unreachable(_))
    }

    /// The HTTP status of a refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// A refusal built from the status and body of an error answer.
    pub(crate) fn refused(status: reqwest::StatusCode, body: &[u8], url: &str) -> Error {
        let message = serde_json::from_slice::<hammer_protocol::api::ErrorBody>(body)
            .map(|b| b.error)
            .unwrap_or_else(|_| {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                if text.is_empty() {
                    status
                        .canonical_reason()
                        .unwrap_or("request failed")
                        .to_lowercase()
                } else {
                    text.chars().take(200).collect()
                }
            });
        Error::Refused {
            status: status.as_u16(),
            message: message.trim_end_matches('.').to_owned(),
            url: url.to_owned(),
        }
    }
}

/// A request that could not reach the service: connection refused, DNS, TLS, timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreachable {
    /// The service's base URL.
    pub url: String,
    /// The innermost cause ("Connection refused (os error 111)").
    pub detail: String,
    /// The request timed out (rather than failed to connect).
    pub timed_out: bool,
}

impl Unreachable {
    pub(crate) fn from_reqwest(url: &str, e: &reqwest::Error) -> Unreachable {
        // The innermost cause says it best ("Connection refused (os error 111)").
        let mut detail = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            detail = s.to_string();
            src = s.source();
        }
        Unreachable {
            url: url.to_owned(),
            detail,
            timed_out: e.is_timeout(),
        }
    }
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} the Hammer service at {} ({}); is `hammer serve` running? Pass --url or set HAMMER_URL",
            if self.timed_out {
                "timed out talking to"
            } else {
                "cannot reach"
            },
            self.url,
            self.detail
        )
    }
}

impl std::error::Error for Unreachable {}

/// The result of a call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    const URL: &str = "http://127.0.0.1:8080";

    #[test]
    fn a_refusal_says_the_services_sentence_and_the_status() {
        let e = Error::refused(
            StatusCode::NOT_FOUND,
            br#"{"error":"no device named d9."}"#,
            URL,
        );
        assert_eq!(e.to_string(), "no device named d9 (HTTP 404)");
        assert_eq!(e.status(), Some(404));
        assert!(!e.is_unreachable());
    }

    #[test]
    fn a_refused_token_says_how_to_log_in() {
        let e = Error::refused(
            StatusCode::UNAUTHORIZED,
            br#"{"error":"invalid token"}"#,
            URL,
        );
        assert_eq!(
            e.to_string(),
            "invalid token (HTTP 401): the token was refused; run `hammer login --url http://127.0.0.1:8080 --token TOKEN` or set HAMMER_TOKEN"
        );
        let e = Error::refused(StatusCode::FORBIDDEN, br#"{"error":"admins only"}"#, URL);
        assert_eq!(e.to_string(), "admins only (HTTP 403)");
    }

    #[test]
    fn a_refusal_without_an_error_body_shows_the_text_or_the_reason() {
        let e = Error::refused(StatusCode::BAD_GATEWAY, b"  upstream down\n", URL);
        assert_eq!(e.to_string(), "upstream down (HTTP 502)");
        let e = Error::refused(StatusCode::SERVICE_UNAVAILABLE, b"", URL);
        assert_eq!(e.to_string(), "service unavailable (HTTP 503)");
        let long = "x".repeat(500);
        let e = Error::refused(StatusCode::INTERNAL_SERVER_ERROR, long.as_bytes(), URL);
        let Error::Refused { message, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(message.len(), 200);
    }

    #[test]
    fn unreachable_says_what_to_check() {
        let u = Unreachable {
            url: URL.into(),
            detail: "Connection refused (os error 111)".into(),
            timed_out: false,
        };
        let e = Error::from(u.clone());
        assert!(e.is_unreachable());
        assert_eq!(
            e.to_string(),
            "cannot reach the Hammer service at http://127.0.0.1:8080 (Connection refused (os error 111)); is `hammer serve` running? Pass --url or set HAMMER_URL"
        );
        let t = Unreachable {
            timed_out: true,
            ..u
        };
        assert!(t
            .to_string()
            .starts_with("timed out talking to the Hammer service"));
    }
}
