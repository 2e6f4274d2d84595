//! The service's API-level integration tests, in one test binary (one link instead of eleven):
//! each test starts a real service on loopback ports (real broker, real certificates, real
//! sled store) and talks to it over real HTTP and real mTLS MQTT; `layering` reads the source
//! and checks the layering rule of ARCHITECTURE.md. `store_contract` runs the `Store` contract
//! on sled and on PostgreSQL, and `database` the whole service on PostgreSQL, both on a
//! throwaway cluster (`pg_server`).
//!
//! Kept in binaries of their own: `web_ui` (headless Chromium), `bounds_history` (sets a
//! process-wide retention default) and `bounds_presence` (measures this process's memory).
//! The tests that run the `hammer` binary (the CLI, enrollment through a relay, the whole
//! system end to end) are in `cli/tests`, the package that builds it.

#[path = "../common/mod.rs"]
mod common;

mod api;
mod audit;
mod bounds_http;
mod bounds_logs;
mod bounds_shutdown;
mod contract;
mod database;
mod drain;
mod install;
mod kill_switch;
mod layering;
mod metrics_counters;
mod pause_retry;
mod pg_server;
mod phases;
mod quotas;
mod resync;
mod rollout;
mod sessions;
mod store_contract;
mod store_contract_webhooks;
mod webhooks;
mod windows;
