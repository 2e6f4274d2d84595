//! The HTTP API calls the simulator needs: users, provisioning, setup, deployments, metrics.

use anyhow::Context;
use hammer_protocol::api::{
    CreateDeployment, DeploymentView, NewToken, ProvisionResponse, Strategy, Targets,
};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::time::Duration;

/// A client of one service's API with one bearer token.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    pub fn new(base: &str, token: &str) -> anyhow::Result<Api> {
        hammer_certs::tls::install_default_provider();
        Ok(Api {
            http: Self::client()?,
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        })
    }

    fn client() -> anyhow::Result<reqwest::Client> {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .context("cannot set up the HTTP client")
    }

    /// The same base and token with a new connection pool (after the service restarted, so
    /// no request goes out on a connection to the old process).
    pub fn fresh(&self) -> anyhow::Result<Api> {
        Ok(Api {
            http: Self::client()?,
            ..self.clone()
        })
    }

    /// The same client with another token.
    pub fn with_token(&self, token: &str) -> Api {
        Api {
            token: token.to_owned(),
            ..self.clone()
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {url} failed"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            anyhow::bail!(
                "{method} {path}: HTTP {status}: {}",
                text.chars().take(300).collect::<String>()
            );
        }
        serde_json::from_str(&text).with_context(|| format!("{method} {path}: unexpected body"))
    }

    /// Creates a user (admin token); returns its token.
    pub async fn create_user(&self, name: &str) -> anyhow::Result<String> {
        let t: NewToken = self
            .call(Method::POST, "/api/v1/users", Some(json!({ "name": name })))
            .await?;
        Ok(t.token)
    }

    /// Provisions a device for `owner` (admin token) and returns the offline bundle.
    pub async fn provision(
        &self,
        owner: &str,
        name: &str,
        tag: (&str, &str),
    ) -> anyhow::Result<ProvisionResponse> {
        self.call(
            Method::POST,
            "/api/v1/provision",
            Some(json!({ "owner": owner, "name": name, "tags": { tag.0: tag.1 } })),
        )
        .await
    }

    /// Sends the device its setup (no credentials).
    pub async fn setup(&self, name: &str) -> anyhow::Result<()> {
        let _: Value = self
            .call(
                Method::PUT,
                &format!("/api/v1/devices/{name}/setup"),
                Some(json!({
                    "repo_url": "https://example.com/fleet-sim.git",
                    "start": "./run.sh",
                    "health_window_secs": 1
                })),
            )
            .await?;
        Ok(())
    }

    /// Deploys to every device with tag `key=value`; returns the deployment id.
    pub async fn deploy(
        &self,
        selector: &str,
        max_in_flight: Option<u32>,
    ) -> anyhow::Result<String> {
        // Like `hammer deploy`, which resolves the ref before it creates the deployment:
        // the release is named up front, so no device's report has to pin it (which would
        // republish to the devices that had not fetched yet and make some run twice).
        let commit = format!("{:040x}", rand::random::<u128>());
        let body = CreateDeployment {
            commit: Some(commit),
            targets: Targets::Tag(selector.to_owned()),
            git_ref: None,
            strategy: Strategy {
                max_in_flight,
                timeout_secs: 600,
                ..Strategy::default()
            },
        };
        let d: DeploymentView = self
            .call(
                Method::POST,
                "/api/v1/deployments",
                Some(serde_json::to_value(body)?),
            )
            .await?;
        Ok(d.id)
    }

    pub async fn deployment(&self, id: &str) -> anyhow::Result<DeploymentView> {
        self.call(Method::GET, &format!("/api/v1/deployments/{id}"), None)
            .await
    }

    /// Number of status events the service stored for a device (its history).
    pub async fn history_len(&self, name: &str) -> anyhow::Result<usize> {
        let v: Vec<Value> = self
            .call(
                Method::GET,
                // One page of the most the API serves; the benches stay far below it.
                &format!("/api/v1/devices/{name}/history?limit=1000"),
                None,
            )
            .await?;
        Ok(v.len())
    }

    /// A counter or gauge from `/metrics`.
    pub async fn metric(&self, name: &str) -> anyhow::Result<u64> {
        let url = format!("{}/metrics", self.base);
        let text = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("GET {url} failed"))?
            .text()
            .await?;
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (n, v) = l.split_once(' ')?;
                (n == name).then(|| v.trim().parse::<f64>().ok())?
            })
            .map(|v| v as u64)
            .with_context(|| format!("/metrics has no {name}"))
    }
}
