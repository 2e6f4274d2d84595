//! Acting on verified messages from the service: desired states and commands.
//!
//! Order matters for crash safety: the new generation or cmd_seq is persisted *before* the
//! action is handed on, so a replay after a crash is refused rather than acted on twice.
//! Refusals become `refused` status events and change nothing.
//!
//! This is where the protocol's vocabulary meets the runtime's: a desired state and each
//! accepted [`CommandKind`] either become one [`Input`] for the backend (desired, restart), are
//! handled here (setup: the sealed git credentials), or go back to the agent loop as a
//! [`Followup`] (logs: the agent owns the live stream and tells the backend itself).

use crate::backend::Backend;
use crate::outbox::Outbox;
use crate::runtime::{Input, Report};
use crate::store::Counter;
use crate::verify::{DesiredVerdict, Refusal, Verifier};
use anyhow::Result;
use hammer_protocol::sealing::SealingKeyPair;
use hammer_protocol::{Command, CommandKind, GitCredentials, Phase, WireName};
use std::path::PathBuf;
use std::sync::Arc;

/// What the agent must do after a command, beyond what happened here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Followup {
    None,
    /// Start (true) or stop (false) streaming live logs.
    Logs(bool),
}

/// Everything needed to handle incoming desired states and commands.
pub struct Handler {
    pub verifier: Verifier,
    pub sealing: SealingKeyPair,
    pub data_dir: PathBuf,
    pub outbox: Outbox,
    pub backend: Arc<dyn Backend>,
}

fn refused(outbox: &Outbox, r: Refusal) -> Result<()> {
    tracing::warn!(
        phase = Phase::Refused.wire_name(),
        deployment = r.deployment_id.as_deref().unwrap_or("-"),
        generation = r.generation.map(|g| g.to_string()).unwrap_or_else(|| "-".into()),
        reason = %r.reason,
        "refused a message from the service; nothing was acted on"
    );
    outbox.append(Report {
        generation: r.generation,
        deployment_id: r.deployment_id,
        phase: Phase::Refused,
        commit: None,
        detail: Some(r.reason),
        log_tail: Vec::new(),
        commit_subject: None,
    })?;
    Ok(())
}

impl Handler {
    /// A payload on the desired topic. An empty payload (a cleared retained message) is ignored.
    pub async fn desired(&self, payload: &[u8]) -> Result<()> {
        if payload.is_empty() {
            tracing::debug!("desired state cleared; ignoring");
            return Ok(());
        }
        let store = self.outbox.store();
        let last = store.get(Counter::Generation);
        let d = match self.verifier.desired(payload, last) {
            Err(r) => return refused(&self.outbox, r),
            Ok(DesiredVerdict::New(d)) => {
                store.set(Counter::Generation, d.generation)?;
                tracing::info!(generation = d.generation, deployment = %d.deployment_id, "new desired state");
                d
            }
            Ok(DesiredVerdict::Same(d)) => {
                tracing::debug!(
                    generation = d.generation,
                    "desired state repeated; re-confirming"
                );
                d
            }
        };
        let credentials = crate::credentials::load(&self.data_dir);
        self.backend
            .deliver(Input::Desired {
                desired: d,
                credentials,
            })
            .await;
        Ok(())
    }

    /// A payload on the cmd topic.
    pub async fn command(&self, payload: &[u8]) -> Result<Followup> {
        let store = self.outbox.store();
        let cmd: Command = match self.verifier.command(
            payload,
            store.get(Counter::CmdSeq),
            hammer_protocol::now_ms(),
        ) {
            Ok(c) => c,
            Err(r) => {
                refused(&self.outbox, r)?;
                return Ok(Followup::None);
            }
        };
        store.set(Counter::CmdSeq, cmd.cmd_seq)?;
        tracing::info!(
            cmd_seq = cmd.cmd_seq,
            kind = kind_name(&cmd.kind),
            "command accepted"
        );
        match cmd.kind {
            CommandKind::Setup { credentials } => {
                self.setup(credentials.as_ref())?;
                Ok(Followup::None)
            }
            CommandKind::Restart => {
                self.backend.deliver(Input::Restart).await;
                Ok(Followup::None)
            }
            // The agent owns the stream and tells the backend (see `agent::start_logs`).
            CommandKind::Logs { on } => Ok(Followup::Logs(on)),
            CommandKind::Unknown => {
                refused(
                    &self.outbox,
                    Refusal {
                        reason: format!(
                            "command refused: unknown command kind (cmd_seq {}); upgrade hammer-manager",
                            cmd.cmd_seq
                        ),
                        generation: None,
                        deployment_id: None,
                    },
                )?;
                Ok(Followup::None)
            }
        }
    }

    fn setup(&self, sealed: Option<&hammer_protocol::sealing::SealedSecret>) -> Result<()> {
        let creds: Option<GitCredentials> = match sealed {
            None => None,
            Some(s) => match self.sealing.open_credentials(&self.verifier.device_id, s) {
                Ok(c) => Some(c),
                Err(e) => {
                    return refused(
                        &self.outbox,
                        Refusal {
                            reason: format!("setup refused: {e}"),
                            generation: None,
                            deployment_id: None,
                        },
                    )
                }
            },
        };
        crate::credentials::store(&self.data_dir, creds.as_ref())?;
        let detail = match &creds {
            None => "setup stored: no git credentials".to_owned(),
            Some(GitCredentials::Https { .. }) => "setup stored: https git credentials".to_owned(),
            Some(GitCredentials::Ssh { .. }) => "setup stored: ssh git credentials".to_owned(),
        };
        tracing::info!("{detail}");
        self.outbox.append(Report::new(Phase::Configured, detail))?;
        Ok(())
    }
}

fn kind_name(k: &CommandKind) -> &'static str {
    match k {
        CommandKind::Setup { .. } => "setup",
        CommandKind::Restart => "restart",
        CommandKind::Logs { on: true } => "logs on",
        CommandKind::Logs { on: false } => "logs off",
        CommandKind::Unknown => "unknown",
    }
}
