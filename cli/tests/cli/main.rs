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

use common::Harness;
use std::path::Path;
use std::process::Output;

/// Runs the real `hammer` with `args` against the harness's service as `token`'s user, with
/// `home` as its home and config folder (no saved login), and waits for it.
pub(crate) async fn hammer(h: &Harness, token: &str, home: &Path, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_hammer"));
    cmd.args(args)
        .env("HAMMER_URL", &h.base)
        .env("HAMMER_TOKEN", token)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env_remove("RUST_LOG");
    cmd.output().await.expect("hammer runs")
}
