//! Connects the agent to [`crate::runtime`]: the runtime's [`ReportSink`] appends to the
//! durable outbox (which wakes the publisher), and [`RuntimeBackend`] adapts the
//! [`RuntimeHandle`] to the agent's [`Backend`].

use crate::backend::{Action, Backend, BoxFuture, HealthFigures};
use crate::outbox::{EventBody, Outbox};
use crate::runtime::{Input, LocalStatus, Report, ReportSink, RuntimeHandle};
use tokio::sync::broadcast;

/// The runtime's reports go into the outbox, durably, before `report` returns.
pub struct OutboxSink(pub Outbox);

impl ReportSink for OutboxSink {
    fn report(&self, r: Report) {
        let body = EventBody {
            generation: r.generation,
            deployment_id: r.deployment_id,
            phase: r.phase,
            commit: r.commit,
            detail: r.detail,
            log_tail: r.log_tail,
        };
        if let Err(e) = self.0.append(body) {
            tracing::error!(error = %e, "cannot store a status event; it is lost");
        }
    }
}

/// The runtime as the agent's backend.
pub struct RuntimeBackend(pub RuntimeHandle);

/// Health figures from the runtime's local status.
pub fn figures(s: &LocalStatus) -> HealthFigures {
    HealthFigures {
        app_running: s.app_running,
        pid: s.pid,
        restarts: s.restarts,
        uptime_secs: s.uptime_secs,
        app_rss_kb: s.rss_kb,
        app_cpu_ms: s.cpu_ms,
        commit: s.commit.clone(),
        generation: s.generation,
    }
}

impl Backend for RuntimeBackend {
    fn deliver(&self, action: Action) -> BoxFuture<'_> {
        let input = match action {
            Action::Desired {
                desired,
                credentials,
            } => Input::Desired {
                desired: *desired,
                credentials,
            },
            Action::Restart => Input::Restart,
            Action::Logs { on: true } => Input::LogsOn,
            Action::Logs { on: false } => Input::LogsOff,
        };
        Box::pin(self.0.send(input))
    }

    fn health(&self) -> HealthFigures {
        figures(&self.0.status())
    }

    fn subscribe_logs(&self) -> Option<broadcast::Receiver<String>> {
        Some(self.0.subscribe_logs())
    }

    fn status_json(&self) -> Option<String> {
        serde_json::to_string_pretty(&self.0.status()).ok()
    }
}
