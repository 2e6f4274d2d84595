//! The seam between the agent (MQTT, verification, outbox) and the runtime that does the local
//! work (git, releases, the app).
//!
//! It speaks the runtime's own vocabulary — [`Input`] in, [`LocalStatus`] and live lines out —
//! so nothing is translated on the way: the binary's backend is the [`RuntimeHandle`] itself
//! (implemented below). The trait earns its place as the agent tests' seam: they drive the
//! agent against a real broker with a recording backend, to see exactly which inputs an
//! accepted, refused or replayed message produces, without cloning repositories or starting
//! apps.
//!
//! Reports do not cross this trait: the runtime appends them to the durable outbox through
//! its [`crate::runtime::ReportSink`] (implemented by [`crate::outbox::Outbox`]).

use crate::runtime::{Input, LocalStatus, RuntimeHandle};
use std::future::Future;
use std::pin::Pin;
use tokio::sync::broadcast;

pub type BoxFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// The local side the agent drives.
pub trait Backend: Send + Sync + 'static {
    /// Hands over an input. Must not block the caller for long: long work (git) belongs on
    /// the backend's own tasks or threads.
    fn deliver(&self, input: Input) -> BoxFuture<'_>;
    /// What is deployed and running (cheap, no network): the figures of the periodic health
    /// report ([`crate::health_report::health`]) and of `DATA/status.json`, which the agent
    /// writes after each status event so `hammer-manager status` can answer while `run` holds
    /// the store's lock.
    fn status(&self) -> LocalStatus;
    /// A receiver of live app output lines, while logs are on.
    fn subscribe_logs(&self) -> Option<broadcast::Receiver<String>>;
}

impl Backend for RuntimeHandle {
    fn deliver(&self, input: Input) -> BoxFuture<'_> {
        Box::pin(self.send(input))
    }

    fn status(&self) -> LocalStatus {
        RuntimeHandle::status(self)
    }

    fn subscribe_logs(&self) -> Option<broadcast::Receiver<String>> {
        Some(RuntimeHandle::subscribe_logs(self))
    }
}
