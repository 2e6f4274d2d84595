//! The API calls the simulator makes, through `hammer_client` (the CLI's typed client): users,
//! provisioning, setup, deployments, history and metrics. [`Api`] only adds what the
//! simulator needs on top: its fixed setup, a deploy that names a random commit, a longer
//! timeout, and a fresh connection pool after a service restart.

use anyhow::Context;
use hammer_client::{Client, Conn, Page};
use hammer_protocol::api::{
    CreateDeployment, DeploymentView, ProvisionRequest, ProvisionResponse, SetupRequest, Strategy,
    Targets,
};
use std::collections::BTreeMap;
use std::time::Duration;

/// How long one request may take (a provisioning burst against a loaded service is slow).
const TIMEOUT: Duration = Duration::from_secs(120);

/// A client of one service's API with one bearer token.
#[derive(Clone)]
pub struct Api {
    conn: Conn,
    client: Client,
}

impl Api {
    pub fn new(base: &str, token: &str) -> anyhow::Result<Api> {
        let mut conn = Conn::new(base).token(token);
        conn.timeout = TIMEOUT;
        Ok(Api {
            client: Client::new(&conn)?,
            conn,
        })
    }

    /// The typed client underneath, for any other call.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The same base and token with a new connection pool (after the service restarted, so
    /// no request goes out on a connection to the old process).
    pub fn fresh(&self) -> anyhow::Result<Api> {
        Ok(Api {
            client: Client::new(&self.conn)?,
            conn: self.conn.clone(),
        })
    }

    /// The same client with another token.
    pub fn with_token(&self, token: &str) -> Api {
        Api {
            client: self.client.with_token(token),
            conn: self.conn.clone().token(token),
        }
    }

    /// Creates a user (admin token); returns its token.
    pub async fn create_user(&self, name: &str) -> anyhow::Result<String> {
        Ok(self.client.create_user(name).await?.body.token)
    }

    /// Provisions a device for `owner` (admin token) and returns the offline bundle.
    pub async fn provision(
        &self,
        owner: &str,
        name: &str,
        tag: (&str, &str),
    ) -> anyhow::Result<ProvisionResponse> {
        let req = ProvisionRequest {
            owner: owner.to_owned(),
            name: name.to_owned(),
            tags: BTreeMap::from([(tag.0.to_owned(), tag.1.to_owned())]),
        };
        Ok(self.client.provision(&req).await?.body)
    }

    /// Sends the device its setup (no credentials).
    pub async fn setup(&self, name: &str) -> anyhow::Result<()> {
        let req = SetupRequest {
            repo_url: "https://example.com/fleet-sim.git".into(),
            git_ref: hammer_protocol::api::default_ref(),
            start: "./run.sh".into(),
            env: BTreeMap::new(),
            health_window_secs: 1,
            health_cmd: None,
            credentials: None,
            install: None,
            full_history: false,
        };
        self.client.setup(name, &req).await?;
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
        Ok(self.client.create_deployment(&body).await?.body.id)
    }

    pub async fn deployment(&self, id: &str) -> anyhow::Result<DeploymentView> {
        Ok(self.client.deployment(id).await?.body)
    }

    /// Number of status events the service stored for a device (its history).
    pub async fn history_len(&self, name: &str) -> anyhow::Result<usize> {
        // One page of the most the API serves; the benches stay far below it.
        let page = Page::first(hammer_protocol::api::MAX_PAGE_LIMIT);
        Ok(self.client.history(name, page).await?.items.len())
    }

    /// A counter or gauge from `/metrics`.
    pub async fn metric(&self, name: &str) -> anyhow::Result<u64> {
        let text = self.client.metrics().await?;
        hammer_client::metric_value(&text, name)
            .map(|v| v as u64)
            .with_context(|| format!("/metrics has no {name}"))
    }
}
