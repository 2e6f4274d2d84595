//! The real `hammer` binary (and, for enrollment, the real `hammer-manager`) against a real
//! service started in this process by the service's test harness (`service/tests/common`):
//! loopback ports, real broker, real certificates, real sled store. In one test binary (one
//! link instead of three). Tests that run `hammer` live here because only the package that
//! owns the binary gets `CARGO_BIN_EXE_hammer`.
//!
//! Kept in a binary of its own: `e2e` (the whole system as separate processes, the slowest
//! test).

#[path = "../../../service/tests/common/mod.rs"]
mod common;

mod cli_escape;
mod deployment_cli;
mod drain_cli;
mod enroll_relay;
mod pinning_cli;
mod webhook_cli;
mod window_cli;
