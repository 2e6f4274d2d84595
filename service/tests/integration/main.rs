//! The service's API-level integration tests, in one test binary (one link instead of eleven):
//! each test starts a real service on loopback ports (real broker, real certificates, real
//! sled store) and talks to it over real HTTP and real mTLS MQTT; some also run the real
//! `hammer` and `hammer-manager` binaries.
//!
//! Kept in binaries of their own: `e2e` (the whole system with real binaries, the slowest
//! test, ~30 s), `web_ui` (headless Chromium), `bounds_history` (sets a process-wide retention
//! default) and `bounds_presence` (measures this process's memory).

#[path = "../common/mod.rs"]
mod common;

mod api;
mod bounds_http;
mod bounds_logs;
mod bounds_shutdown;
mod metrics_counters;
mod quotas;
mod rollout;
mod sessions;
