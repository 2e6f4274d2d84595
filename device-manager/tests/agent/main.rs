//! The agent's integration tests in one test binary: the agent over a real broker on loopback
//! (rumqttd, real TLS where the test is about it), the real `hammer-manager` binary, real
//! SIGKILLs (`agent_sigkill`, the slowest, ~25 s) and the app-user tests (need root; they skip
//! elsewhere and fail under `CI=true`).

#[path = "../agent_support/mod.rs"]
mod agent_support;

mod agent_binary;
mod agent_broker;
mod agent_enroll;
mod agent_outbox;
mod agent_revoked;
mod agent_sigkill;
mod agent_story;
mod agent_verify;
mod app_user;
