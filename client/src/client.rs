//! [`Client`]: one connection setting (URL, token, CA file) and a typed method per endpoint;
//! the generic calls under them (bearer token, JSON bodies from `hammer_protocol::api`,
//! errors that say what to do, paged lists, the Server-Sent Events stream).

use crate::error::{Error, Result, Unreachable};
use crate::page::{Listed, Order, Page, Pager, Step};
use crate::sse::SseParser;
use futures_util::StreamExt;
use hammer_protocol::api::{
    ActionAccepted, AuditEntry, CreateDeployment, CreateDevice, CreateUser, CreatedDevice,
    DeploymentView, DeviceView, Event, HistoryEntry, LogLines, NewToken, ProvisionRequest,
    ProvisionResponse, SetupRequest, UserView, DEFAULT_PAGE_LIMIT, NEXT_CURSOR_HEADER,
};
use reqwest::{Method, StatusCode};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

/// How long one ordinary API request may take unless [`Conn::timeout`] says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting to the service may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the service is and how to talk to it: plain settings, resolved by the caller (the
/// CLI from flags, environment and its saved login).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conn {
    /// The service's base URL, `http://HOST:PORT` or `https://…` (a trailing slash is
    /// dropped).
    pub url: String,
    /// The API token (bearer). Every `/api/v1` call needs one; `/metrics` sends it if set.
    pub token: Option<String>,
    /// PEM file of the CA that signed the service's HTTPS certificate.
    pub ca_cert: Option<PathBuf>,
    /// How long one request may take (an event stream is not limited).
    pub timeout: Duration,
}

impl Conn {
    /// `url` with no token, no CA file and the default timeout.
    pub fn new(url: impl Into<String>) -> Conn {
        Conn {
            url: url.into(),
            token: None,
            ca_cert: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same settings with this token.
    pub fn token(mut self, token: impl Into<String>) -> Conn {
        self.token = Some(token.into());
        self
    }
}

/// An answer: the typed body, and the JSON exactly as the service sent it (for `--json`).
#[derive(Debug, Clone)]
pub struct Answer<T> {
    pub raw: Value,
    pub body: T,
}

/// What a device is told by `POST /api/v1/devices/{name}/{action}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Restart,
    Stop,
    Start,
    Rollback,
}

impl Action {
    /// The action's name in the path (`restart`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Restart => "restart",
            Action::Stop => "stop",
            Action::Start => "start",
            Action::Rollback => "rollback",
        }
    }
}

/// Which events `GET /api/v1/events` sends (all of the caller's when both are `None`).
#[derive(Debug, Clone, Copy, Default)]
pub struct EventFilter<'a> {
    pub device: Option<&'a str>,
    pub deployment: Option<&'a str>,
}

/// Checks a service URL: it must parse and be `http://` or `https://`.
pub fn check_url(url: &str) -> Result<reqwest::Url> {
    let parsed = reqwest::Url::parse(url).map_err(|e| Error::InvalidUrl {
        url: url.to_owned(),
        reason: e.to_string(),
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Error::UnsupportedScheme {
            url: url.to_owned(),
        });
    }
    Ok(parsed)
}

/// A user or device name by the protocol's rule, before it goes into a path.
fn name(n: &str) -> Result<&str> {
    hammer_protocol::validate_name(n).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    Ok(n)
}

/// A deployment id by the protocol's rule, before it goes into a path.
fn deployment_id(id: &str) -> Result<&str> {
    hammer_protocol::validate_deployment_id(id)
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    Ok(id)
}

/// A maintenance window id as the service makes them: lowercase letters and digits.
fn window_id(id: &str) -> Result<&str> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(id)
    } else {
        Err(Error::InvalidArgument(format!(
            "{:?} is not a maintenance window id (lowercase letters and digits); `hammer window list` shows yours",
            id.chars().take(80).collect::<String>()
        )))
    }
}

/// A webhook id as the service makes them: lowercase letters and digits.
fn webhook_id(id: &str) -> Result<&str> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !ok {
        return Err(Error::InvalidArgument(format!(
            "{:?} is not a webhook id (lowercase letters and digits; `hammer webhook list` shows them)",
            id.chars().take(40).collect::<String>()
        )));
    }
    Ok(id)
}

/// A full commit id (the protocol's one rule), lowercase.
fn commit_id(sha: &str) -> Result<String> {
    hammer_protocol::full_commit_id(sha).map_err(|e| Error::InvalidArgument(e.to_string()))
}

/// Turns a JSON answer into its API type, with an error that names the endpoint.
pub fn typed<T: DeserializeOwned>(v: &Value, path: &str) -> Result<T> {
    serde_json::from_value(v.clone()).map_err(|e| Error::UnexpectedAnswer {
        path: path.to_owned(),
        detail: e.to_string(),
    })
}

/// The value of a sample in the Prometheus text of `/metrics` (`name` with its labels as
/// written, without spaces, e.g. `hammer_devices_online` or `x_total{reason="quota"}`).
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse::<f64>().ok())?
    })
}

/// A connection to one service's API with one token.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    url: String,
    token: Option<String>,
    timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "…"))
            .finish()
    }
}

impl Client {
    /// Builds a client (and its connection pool); fails on a malformed URL or an unreadable
    /// CA file. Installs the ring TLS provider for the process if none is installed yet.
    pub fn new(conn: &Conn) -> Result<Client> {
        let url = conn.url.trim_end_matches('/');
        check_url(url)?;
        // reqwest is built without a provider of its own: the tree uses ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("hammer-client/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &conn.ca_cert {
            let pem = std::fs::read(path).map_err(|error| Error::CaFile {
                path: path.clone(),
                error,
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| Error::CaPem {
                path: path.clone(),
                detail: e.to_string(),
            })?;
            if certs.is_empty() {
                return Err(Error::CaPem {
                    path: path.clone(),
                    detail: "no certificate in it".into(),
                });
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| Error::Setup(e.to_string()))?;
        Ok(Client {
            http,
            url: url.to_owned(),
            token: conn.token.clone(),
            timeout: conn.timeout,
        })
    }

    /// The service's base URL (no trailing slash).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The same connection pool with another token.
    pub fn with_token(&self, token: &str) -> Client {
        Client {
            token: Some(token.to_owned()),
            ..self.clone()
        }
    }

    fn token(&self) -> Result<&str> {
        self.token.as_deref().ok_or(Error::NoToken)
    }

    fn endpoint(&self, path: &str) -> String {
        format!("{}/api/v1{}", self.url, path)
    }

    fn unreachable(&self, e: &reqwest::Error) -> Error {
        Error::Unreachable(Unreachable::from_reqwest(&self.url, e))
    }

    // ---- generic calls (paths under /api/v1) ----

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
            .timeout(self.timeout);
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(&e))?;
        let status = resp.status();
        let next = resp
            .headers()
            .get(NEXT_CURSOR_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|c| !c.is_empty())
            .map(str::to_owned);
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(&e))?;
        if !status.is_success() {
            return Err(Error::refused(status, &bytes, &self.url));
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok((Value::Null, next));
        }
        let v = serde_json::from_slice(&bytes).map_err(|e| Error::NotJson {
            method: method.to_string(),
            path: path.to_owned(),
            detail: e.to_string(),
            url: self.url.clone(),
        })?;
        Ok((v, next))
    }

    async fn typed_call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&B>,
    ) -> Result<Answer<T>> {
        let raw = self.send(method, path, query, body).await?;
        let body = typed(&raw, path)?;
        Ok(Answer { raw, body })
    }

    /// `GET` returning both the raw JSON and the typed body.
    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<Answer<T>> {
        self.typed_call::<(), T>(Method::GET, path, query, None)
            .await
    }

    /// `POST` with a JSON body.
    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<Answer<T>> {
        self.typed_call(Method::POST, path, &[], Some(body)).await
    }

    /// `POST` without a body.
    pub async fn post_empty<T: DeserializeOwned>(&self, path: &str) -> Result<Answer<T>> {
        self.typed_call::<(), T>(Method::POST, path, &[], None)
            .await
    }

    /// `PUT` with a JSON body.
    pub async fn put<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<Answer<T>> {
        self.typed_call(Method::PUT, path, &[], Some(body)).await
    }

    /// A paged list (`GET` with `limit` and `cursor`): the first page, or every page with
    /// [`Page::all`], following `next-cursor`, put together in `order`.
    pub async fn get_list<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
        page: Page,
        order: Order,
    ) -> Result<Listed<T>> {
        let limit = page.limit.unwrap_or(DEFAULT_PAGE_LIMIT).to_string();
        let mut pager = Pager::new(path, page);
        let mut cursor: Option<String> = None;
        let more = loop {
            let mut q = query.to_vec();
            q.push(("limit", limit.as_str()));
            if let Some(c) = &cursor {
                q.push(("cursor", c.as_str()));
            }
            let (v, next) = self.send_full::<()>(Method::GET, path, &q, None).await?;
            let items: Vec<Value> = typed(&v, path)?;
            match pager.step(items, next)? {
                Step::Fetch(c) => cursor = Some(c),
                Step::Done { more } => break more,
            }
        };
        let raw = pager.finish(order);
        let items = typed(&raw, path)?;
        Ok(Listed { raw, items, more })
    }

    /// Opens `GET /api/v1/events` and calls `on_event` for every event until the stream ends
    /// (returns `Ok`) or fails. `on_event` gets the raw `data` and the parsed event (events
    /// that do not parse are skipped); returning `false` stops early.
    pub async fn events(
        &self,
        filter: EventFilter<'_>,
        mut on_event: impl FnMut(&str, Event) -> bool,
    ) -> Result<()> {
        let token = self.token()?;
        let mut query = Vec::new();
        if let Some(d) = filter.device {
            query.push(("device", name(d)?));
        }
        if let Some(d) = filter.deployment {
            query.push(("deployment", deployment_id(d)?));
        }
        let mut req = self
            .http
            .get(self.endpoint("/events"))
            .bearer_auth(token)
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if !query.is_empty() {
            req = req.query(&query);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(&e))?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = resp.bytes().await.unwrap_or_default();
            return Err(Error::refused(status, &bytes, &self.url));
        }
        let mut stream = resp.bytes_stream();
        let mut parser = SseParser::default();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.unreachable(&e))?;
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

    /// `GET /metrics`: the Prometheus text (the token is sent as bearer when there is one;
    /// read a sample with [`metric_value`]).
    pub async fn metrics(&self) -> Result<String> {
        let mut req = self
            .http
            .get(format!("{}/metrics", self.url))
            .timeout(self.timeout);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(&e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(&e))?;
        if status != StatusCode::OK {
            return Err(Error::refused(status, &bytes, &self.url));
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    // ---- users ----

    /// `GET /me`: who the token belongs to.
    pub async fn me(&self) -> Result<Answer<UserView>> {
        self.get("/me", &[]).await
    }

    /// `POST /users` (admin token): a new user and their token (shown once).
    pub async fn create_user(&self, user: &str) -> Result<Answer<NewToken>> {
        let body = CreateUser {
            name: name(user)?.to_owned(),
        };
        self.post("/users", &body).await
    }

    // ---- devices ----

    /// `POST /devices`: registers a device; the answer holds its enrollment token.
    pub async fn add_device(&self, req: &CreateDevice) -> Result<Answer<CreatedDevice>> {
        name(&req.name)?;
        self.post("/devices", req).await
    }

    /// `POST /provision` (admin token): registers a device for a user and returns its
    /// offline bundle (keys included).
    pub async fn provision(&self, req: &ProvisionRequest) -> Result<Answer<ProvisionResponse>> {
        name(&req.owner)?;
        name(&req.name)?;
        self.post("/provision", req).await
    }

    /// `GET /devices`: the caller's devices, only those with `tag` (`key=value`) if given.
    pub async fn devices(&self, tag: Option<&str>) -> Result<Answer<Vec<DeviceView>>> {
        let query: Vec<(&str, &str)> = tag.map(|t| ("tag", t)).into_iter().collect();
        self.get("/devices", &query).await
    }

    /// `GET /devices/{name}`.
    pub async fn device(&self, device: &str) -> Result<Answer<DeviceView>> {
        self.get(&format!("/devices/{}", name(device)?), &[]).await
    }

    /// `DELETE /devices/{name}`: revokes its certificate and disconnects it. Returns the
    /// answer's JSON (`null` when empty).
    pub async fn remove_device(&self, device: &str) -> Result<Value> {
        self.send::<()>(
            Method::DELETE,
            &format!("/devices/{}", name(device)?),
            &[],
            None,
        )
        .await
    }

    /// `PUT /devices/{name}/setup`: repository, start command, credentials (sealed to the
    /// device by the service).
    pub async fn setup(&self, device: &str, req: &SetupRequest) -> Result<Answer<DeviceView>> {
        self.put(&format!("/devices/{}/setup", name(device)?), req)
            .await
    }

    /// `POST /devices/{name}/{restart|stop|start|rollback}`.
    pub async fn action(&self, device: &str, action: Action) -> Result<Answer<ActionAccepted>> {
        self.post_empty(&format!("/devices/{}/{}", name(device)?, action.as_str()))
            .await
    }

    /// `GET /devices/{name}/logs`: the recent app output; the device streams new lines for
    /// a minute after each call.
    pub async fn logs(&self, device: &str) -> Result<Answer<LogLines>> {
        self.get(&format!("/devices/{}/logs", name(device)?), &[])
            .await
    }

    /// `GET /devices/{name}/history`, oldest first: the newest page, or everything kept.
    pub async fn history(&self, device: &str, page: Page) -> Result<Listed<HistoryEntry>> {
        self.get_list(
            &format!("/devices/{}/history", name(device)?),
            &[],
            page,
            Order::Chronological,
        )
        .await
    }

    /// `GET /audit`: the caller's audit log, newest first.
    pub async fn audit(&self, page: Page) -> Result<Listed<AuditEntry>> {
        self.get_list("/audit", &[], page, Order::NewestFirst).await
    }

    // ---- deployments ----

    /// `POST /deployments`.
    pub async fn create_deployment(
        &self,
        req: &CreateDeployment,
    ) -> Result<Answer<DeploymentView>> {
        self.post("/deployments", req).await
    }

    /// `GET /deployments/{id}`.
    pub async fn deployment(&self, id: &str) -> Result<Answer<DeploymentView>> {
        self.get(&format!("/deployments/{}", deployment_id(id)?), &[])
            .await
    }

    /// `GET /deployments`, newest first: the newest page, or all of them.
    pub async fn deployments(&self, page: Page) -> Result<Listed<DeploymentView>> {
        self.get_list("/deployments", &[], page, Order::NewestFirst)
            .await
    }

    /// `POST /deployments/{id}/cancel`.
    pub async fn cancel_deployment(&self, id: &str) -> Result<Answer<DeploymentView>> {
        self.post_empty(&format!("/deployments/{}/cancel", deployment_id(id)?))
            .await
    }

    /// `POST /deployments/{id}/pause`: no new launches until resumed.
    pub async fn pause_deployment(&self, id: &str) -> Result<Answer<DeploymentView>> {
        self.post_empty(&format!("/deployments/{}/pause", deployment_id(id)?))
            .await
    }

    /// `POST /deployments/{id}/resume`.
    pub async fn resume_deployment(&self, id: &str) -> Result<Answer<DeploymentView>> {
        self.post_empty(&format!("/deployments/{}/resume", deployment_id(id)?))
            .await
    }

    /// `POST /deployments/{id}/promote`: the next phase of a phased deployment opens now.
    pub async fn promote_deployment(&self, id: &str) -> Result<Answer<DeploymentView>> {
        self.post_empty(&format!("/deployments/{}/promote", deployment_id(id)?))
            .await
    }

    /// `POST /deployments/{id}/retry`: a new deployment of the ended deployment's failed and
    /// timed-out devices.
    pub async fn retry_deployment(&self, id: &str) -> Result<Answer<DeploymentView>> {
        self.post_empty(&format!("/deployments/{}/retry", deployment_id(id)?))
            .await
    }

    /// `POST /commits/{sha}/bad`: marks a commit bad (the kill switch) — running deployments
    /// pinned to it stop, new ones naming it are refused; with `rollback`, devices running
    /// it go back to their previous release.
    pub async fn mark_commit_bad(
        &self,
        sha: &str,
        req: &hammer_protocol::api::MarkBad,
    ) -> Result<Answer<hammer_protocol::api::MarkedBad>> {
        self.post(&format!("/commits/{}/bad", commit_id(sha)?), req)
            .await
    }

    /// `DELETE /commits/{sha}/bad`: unmarks a commit marked bad.
    pub async fn unmark_commit_bad(&self, sha: &str) -> Result<Value> {
        self.send::<()>(
            Method::DELETE,
            &format!("/commits/{}/bad", commit_id(sha)?),
            &[],
            None,
        )
        .await
    }

    /// `GET /commits/bad`: the commits marked bad, oldest first.
    pub async fn bad_commits(&self) -> Result<Answer<hammer_protocol::api::BadCommits>> {
        self.get("/commits/bad", &[]).await
    }

    // ---- maintenance windows ----

    /// `GET /windows`: the caller's maintenance windows, oldest first.
    pub async fn windows(&self) -> Result<Answer<Vec<hammer_protocol::api::MaintenanceWindow>>> {
        self.get("/windows", &[]).await
    }

    /// `POST /windows`: adds a maintenance window (its text checked here first, by the
    /// protocol's rule).
    pub async fn add_window(
        &self,
        req: &hammer_protocol::api::CreateWindow,
    ) -> Result<Answer<hammer_protocol::api::MaintenanceWindow>> {
        hammer_protocol::Window::parse(&req.window)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        self.post("/windows", req).await
    }

    /// `DELETE /windows/{id}`: removes one of the caller's maintenance windows.
    pub async fn remove_window(&self, id: &str) -> Result<Value> {
        self.send::<()>(
            Method::DELETE,
            &format!("/windows/{}", window_id(id)?),
            &[],
            None,
        )
        .await
    }

    /// `GET /devices/{name}/windows`: the windows applying to a device, and whether a
    /// deployment may launch it now.
    pub async fn device_windows(
        &self,
        device: &str,
    ) -> Result<Answer<hammer_protocol::api::DeviceWindows>> {
        self.get(&format!("/devices/{}/windows", name(device)?), &[])
            .await
    }

    // ---- webhooks ----

    /// `POST /webhooks`: registers a webhook; the answer holds its secret, shown this once.
    pub async fn add_webhook(
        &self,
        req: &hammer_protocol::api::CreateWebhook,
    ) -> Result<Answer<hammer_protocol::api::NewWebhook>> {
        self.post("/webhooks", req).await
    }

    /// `GET /webhooks`: the caller's webhooks, oldest first (no secrets).
    pub async fn webhooks(&self) -> Result<Answer<Vec<hammer_protocol::api::WebhookView>>> {
        self.get("/webhooks", &[]).await
    }

    /// `DELETE /webhooks/{id}`: removes a webhook and its deliveries.
    pub async fn remove_webhook(&self, id: &str) -> Result<Value> {
        self.send::<()>(
            Method::DELETE,
            &format!("/webhooks/{}", webhook_id(id)?),
            &[],
            None,
        )
        .await
    }

    /// `GET /webhooks/{id}/deliveries?limit=N`: the newest deliveries, newest first.
    pub async fn webhook_deliveries(
        &self,
        id: &str,
        limit: u32,
    ) -> Result<Answer<Vec<hammer_protocol::api::DeliveryView>>> {
        let limit = limit.to_string();
        self.get(
            &format!("/webhooks/{}/deliveries", webhook_id(id)?),
            &[("limit", limit.as_str())],
        )
        .await
    }

    /// `POST /webhooks/{id}/test`: queues a `ping` delivery.
    pub async fn test_webhook(
        &self,
        id: &str,
    ) -> Result<Answer<hammer_protocol::api::DeliveryView>> {
        self.post_empty(&format!("/webhooks/{}/test", webhook_id(id)?))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_and_https_urls_are_taken() {
        assert!(check_url("http://127.0.0.1:8080").is_ok());
        assert!(check_url("https://hammer.example.com").is_ok());
        let e = check_url("127.0.0.1:8080").unwrap_err();
        assert!(
            e.to_string()
                .contains("must start with http:// or https://")
                || e.to_string().contains("pass --url http://HOST:PORT"),
            "{e}"
        );
        let e = check_url("ftp://x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid service URL \"ftp://x\": it must start with http:// or https://"
        );
        let e = check_url("not a url").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid service URL \"not a url\" (")
                && e.to_string()
                    .ends_with("); pass --url http://HOST:PORT or set HAMMER_URL"),
            "{e}"
        );
    }

    #[test]
    fn a_client_needs_a_readable_ca_file_and_drops_a_trailing_slash() {
        let c = Client::new(&Conn::new("http://127.0.0.1:1/")).unwrap();
        assert_eq!(c.url(), "http://127.0.0.1:1");
        let mut conn = Conn::new("https://127.0.0.1:1");
        conn.ca_cert = Some("/nonexistent/ca.pem".into());
        let e = Client::new(&conn).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot read the CA certificate /nonexistent/ca.pem: "),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        conn.ca_cert = Some(empty);
        let e = Client::new(&conn).unwrap_err();
        assert!(e.to_string().contains("holds no PEM certificate"), "{e}");
    }

    #[tokio::test]
    async fn a_call_without_a_token_or_with_a_bad_name_sends_nothing() {
        // Port 1 on loopback: a request that went out would fail as unreachable.
        let c = Client::new(&Conn::new("http://127.0.0.1:1")).unwrap();
        let e = c.me().await.unwrap_err();
        assert!(matches!(e, Error::NoToken), "{e}");
        let c = c.with_token("t");
        let e = c.device("../admin").await.unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
        let e = c.deployment("Dep_1").await.unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
        let e = c.me().await.unwrap_err();
        assert!(e.is_unreachable(), "{e}");
    }

    #[test]
    fn a_metric_is_read_from_the_prometheus_text() {
        let text = "# HELP x_total X.\n# TYPE x_total counter\nx_total 42\nx_total_other 1\ny{reason=\"quota\"} 3\ngauge 1.5e3\n";
        assert_eq!(metric_value(text, "x_total"), Some(42.0));
        assert_eq!(metric_value(text, "y{reason=\"quota\"}"), Some(3.0));
        assert_eq!(metric_value(text, "gauge"), Some(1500.0));
        assert_eq!(metric_value(text, "missing"), None);
    }

    #[test]
    fn actions_are_named_as_in_the_path() {
        let names: Vec<&str> = [
            Action::Restart,
            Action::Stop,
            Action::Start,
            Action::Rollback,
        ]
        .iter()
        .map(|a| a.as_str())
        .collect();
        assert_eq!(names, ["restart", "stop", "start", "rollback"]);
    }
}
