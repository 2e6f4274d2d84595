//! The boundary between the agent (MQTT, verification, outbox) and whatever does the local
//! work. In the binary that is the runtime (`crate::runtime`, adapted in
//! [`crate::runtime_glue`]); tests can plug in a recorder.
//!
//! Everything a backend reports goes through [`crate::outbox::Outbox::append`] (durable
//! before it returns), never through this trait.

use hammer_protocol::{DesiredState, GitCredentials};
use std::future::Future;
use std::pin::Pin;
use tokio::sync::broadcast;

/// What the agent asks the local side to do, after verifying it.
#[derive(Debug, Clone)]
pub enum Action {
    /// Converge on this desired state (a repeat of the current generation only re-confirms).
    Desired {
        desired: Box<DesiredState>,
        credentials: Option<GitCredentials>,
    },
    /// Restart the app of the current release.
    Restart,
    /// Someone started or stopped watching live output.
    Logs { on: bool },
}

/// Figures for the periodic health report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthFigures {
    pub app_running: bool,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub uptime_secs: u64,
    pub app_rss_kb: u64,
    pub app_cpu_ms: u64,
    pub commit: Option<String>,
    pub generation: Option<u64>,
}

pub type BoxFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// The local side the agent drives.
pub trait Backend: Send + Sync + 'static {
    /// Hands over an action. Must not block the caller for long: long work (git) belongs on
    /// the backend's own tasks or threads.
    fn deliver(&self, action: Action) -> BoxFuture<'_>;
    /// Current figures for a health report (cheap, no network).
    fn health(&self) -> HealthFigures;
    /// A receiver of live app output lines, while logs are on.
    fn subscribe_logs(&self) -> Option<broadcast::Receiver<String>>;
    /// A JSON snapshot of what runs locally, written to `DATA/status.json` after each status
    /// event so `hammer-manager status` can answer while the database is locked by `run`.
    fn status_json(&self) -> Option<String> {
        None
    }
}
