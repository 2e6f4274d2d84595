//! The HTTP client of the CLI: bearer token, JSON bodies from `hammer_protocol::api`, errors
//! turned into one sentence that says what to do, and a Server-Sent Events reader.

use super::config::Conn;
use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;
use hammer_protocol::api::{
    ErrorBody, Event, DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT, NEXT_CURSOR_HEADER,
};
use reqwest::{Method, StatusCode};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;
use std::time::Duration;

/// How long one ordinary API request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection to the service's `/api/v1`.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    url: String,
    token: Option<String>,
}

/// `--limit N` and `--all` of a command that lists a paged collection.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PageArgs {
    /// Show at most N records (the newest; 1 to 1000, default 100)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=MAX_PAGE_LIMIT as i64))]
    pub limit: Option<u32>,
    /// Show every record, fetching page after page (N at a time)
    #[arg(long)]
    pub all: bool,
}

/// What [`Client::get_list`] fetched.
#[derive(Debug)]
pub struct Listed<T> {
    /// The records as the service sent them (a JSON array), for `--json`.
    pub raw: Value,
    pub items: Vec<T>,
    /// More (older) records exist than were fetched.
    pub more: bool,
}

/// A request that could not reach the service (as opposed to an answer that says no).
#[derive(Debug)]
pub struct Unreachable(pub String);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreachable {}

impl Client {
    /// Builds a client; fails on a malformed URL or an unreadable CA file.
    pub fn new(conn: &Conn) -> Result<Self> {
        let parsed = reqwest::Url::parse(&conn.url).map_err(|e| {
            anyhow!(
                "invalid service URL {:?} ({e}); pass --url http://HOST:PORT or set HAMMER_URL",
                conn.url
            )
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            bail!(
                "invalid service URL {:?}: it must start with http:// or https://",
                conn.url
            );
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("hammer-cli/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &conn.ca_cert {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read the CA certificate {}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("{} holds no PEM certificate", path.display()))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().context("cannot set up the HTTP client")?;
        Ok(Client {
            http,
            url: conn.url.clone(),
            token: conn.token.clone(),
        })
    }

    /// The service's base URL (no trailing slash).
    pub fn url(&self) -> &str {
        &self.url
    }

    fn token(&self) -> Result<&str> {
        self.token.as_deref().ok_or_else(|| {
            anyhow!("no API token: pass --token, set HAMMER_TOKEN, or run `hammer login --url URL --token TOKEN`")
        })
    }

    fn endpoint(&self, path: &str) -> String {
        format!("{}/api/v1{}", self.url, path)
    }

    /// Sends a request and returns the JSON answer (`Value::Null` for an empty body).
    pub async fn send<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&B>,
    ) -> Result<Value> {
        Ok(self.send_full(method, path, query, body).await?.0)
    }

    /// [`Client::send`], with the answer's `next-cursor` header (paged lists).
    async fn send_full<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&B>,
    ) -> Result<(Value, Option<String>)> {
        let token = self.token()?;
        let mut req = self
            .http
            .request(method.clone(), self.endpoint(path))
            .bearer_auth(token)
            .timeout(REQUEST_TIMEOUT);
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        let next = resp
            .headers()
            .get(NEXT_CURSOR_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|c| !c.is_empty())
            .map(str::to_owned);
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(e))?;
        if !status.is_success() {
            return Err(self.refusal(status, &bytes));
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok((Value::Null, next));
        }
        let v = serde_json::from_slice(&bytes).map_err(|e| {
            anyhow!(
                "the service answered {method} {path} with something that is not JSON ({e}); is {} a Hammer service?",
                self.url
            )
        })?;
        Ok((v, next))
    }

    /// `GET` returning both the raw JSON (for `--json`) and the typed body.
    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<(Value, T)> {
        let v = self.send::<()>(Method::GET, path, query, None).await?;
        let t = typed(&v, path)?;
        Ok((v, t))
    }

    /// A paged list (`GET` with `limit` and `cursor`): the first page, or every page with
    /// `all`, following `next-cursor`. The service gives newest pages first; with
    /// `chronological` each page is oldest first and older pages are put in front (history),
    /// otherwise pages are appended (newest first overall, deployments).
    pub async fn get_list<T: DeserializeOwned>(
        &self,
        path: &str,
        page: &PageArgs,
        chronological: bool,
    ) -> Result<Listed<T>> {
        let limit = page.limit.unwrap_or(DEFAULT_PAGE_LIMIT).to_string();
        let mut pages: Vec<Vec<Value>> = Vec::new();
        let mut cursor: Option<String> = None;
        let mut seen = std::collections::HashSet::new();
        let more = loop {
            let mut q = vec![("limit", limit.as_str())];
            if let Some(c) = &cursor {
                q.push(("cursor", c.as_str()));
            }
            let (v, next) = self.send_full::<()>(Method::GET, path, &q, None).await?;
            let items: Vec<Value> = typed(&v, path)?;
            pages.push(items);
            match next {
                Some(n) if page.all => {
                    if !seen.insert(n.clone()) {
                        bail!("the service repeated a page cursor for {path}; try again without --all");
                    }
                    cursor = Some(n);
                }
                Some(_) => break true,
                None => break false,
            }
        };
        if chronological {
            pages.reverse();
        }
        let raw: Vec<Value> = pages.into_iter().flatten().collect();
        let raw = Value::Array(raw);
        let items = typed(&raw, path)?;
        Ok(Listed { raw, items, more })
    }

    /// `POST` with a JSON body.
    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<(Value, T)> {
        let v = self.send(Method::POST, path, &[], Some(body)).await?;
        let t = typed(&v, path)?;
        Ok((v, t))
    }

    /// `POST` without a body.
    pub async fn post_empty<T: DeserializeOwned>(&self, path: &str) -> Result<(Value, T)> {
        let v = self.send::<()>(Method::POST, path, &[], None).await?;
        let t = typed(&v, path)?;
        Ok((v, t))
    }

    fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        let what = if e.is_timeout() {
            "timed out talking to".to_string()
        } else {
            "cannot reach".to_string()
        };
        // The innermost cause says it best ("Connection refused (os error 111)").
        let mut detail = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            detail = s.to_string();
            src = s.source();
        }
        anyhow::Error::new(Unreachable(format!(
            "{what} the Hammer service at {} ({detail}); is `hammer serve` running? Pass --url or set HAMMER_URL",
            self.url
        )))
    }

    fn refusal(&self, status: StatusCode, body: &[u8]) -> anyhow::Error {
        let msg = serde_json::from_slice::<ErrorBody>(body)
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
        // The answer may come from anything at that URL (a proxy, another program): it goes
        // to a terminal, so it is escaped like device text.
        let msg = super::output::safe(msg.trim_end_matches('.')).into_owned();
        match status {
            StatusCode::UNAUTHORIZED => anyhow!(
                "{msg} (HTTP 401): the token was refused; run `hammer login --url {} --token TOKEN` or set HAMMER_TOKEN",
                self.url
            ),
            StatusCode::FORBIDDEN => anyhow!("{msg} (HTTP 403)"),
            _ => anyhow!("{msg} (HTTP {})", status.as_u16()),
        }
    }

    /// Opens `GET /api/v1/events` and calls `on_event` for every event until the stream ends
    /// (returns `Ok`) or fails. `on_event` gets the raw `data` and the parsed event; returning
    /// `false` stops early.
    pub async fn events(
        &self,
        query: &[(&str, &str)],
        mut on_event: impl FnMut(&str, Event) -> bool,
    ) -> Result<()> {
        let token = self.token()?;
        let mut req = self
            .http
            .get(self.endpoint("/events"))
            .bearer_auth(token)
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if !query.is_empty() {
            req = req.query(query);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = resp.bytes().await.unwrap_or_default();
            return Err(self.refusal(status, &bytes));
        }
        let mut stream = resp.bytes_stream();
        let mut parser = SseParser::default();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.unreachable(e))?;
            for data in parser.push(&chunk) {
                match serde_json::from_str::<Event>(&data) {
                    Ok(ev) => {
                        if !on_event(&data, ev) {
                            return Ok(());
                        }
                    }
                    Err(e) => tracing::debug!("skipping an event that does not parse: {e}"),
                }
            }
        }
        Ok(())
    }
}

/// Turns a JSON answer into its API type, with an error that names the endpoint.
pub fn typed<T: DeserializeOwned>(v: &Value, path: &str) -> Result<T> {
    serde_json::from_value(v.clone()).map_err(|e| {
        anyhow!(
            "unexpected answer from {path} ({e}); are the CLI and the service the same version?"
        )
    })
}

/// Whether an error means the service could not be reached (worth retrying).
pub fn is_unreachable(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Unreachable>().is_some()
}

/// An incremental Server-Sent Events parser: feed bytes, get the `data` of complete events.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    data: Vec<String>,
}

impl SseParser {
    /// Adds bytes; returns the data of every event completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line);
            if line.is_empty() {
                if !self.data.is_empty() {
                    out.push(self.data.join("\n"));
                    self.data.clear();
                }
            } else if let Some(rest) = line.strip_prefix("data:") {
                self.data
                    .push(rest.strip_prefix(' ').unwrap_or(rest).to_string());
            }
            // Comments (":"), "event:", "id:" and "retry:" lines carry nothing we use.
        }
        // A stream with one enormous unterminated line is not an event stream.
        if self.buf.len() > 4 * 1024 * 1024 {
            self.buf.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_parser_splits_events_across_chunks() {
        let mut p = SseParser::default();
        assert!(p.push(b": keep-alive\n\nda").is_empty());
        assert!(p.push(b"ta: {\"a\":1}\r\n").is_empty());
        assert_eq!(
            p.push(b"\r\ndata:x\ndata: y\n\n"),
            vec!["{\"a\":1}", "x\ny"]
        );
        assert!(p.push(b"event: foo\nid: 3\n\n").is_empty());
    }

    #[test]
    fn parses_api_events() {
        let mut p = SseParser::default();
        let data = p.push(
            b"data: {\"kind\":\"presence\",\"device\":\"d1\",\"online\":true,\"time\":5}\n\ndata: {\"kind\":\"new_thing\",\"x\":1}\n\n",
        );
        let evs: Vec<Event> = data
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(
            evs[0],
            Event::Presence {
                device: "d1".into(),
                online: true,
                time: 5
            }
        );
        assert_eq!(evs[1], Event::Unknown);
    }
}
