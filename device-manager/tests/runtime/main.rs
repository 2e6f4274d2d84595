//! The runtime's integration tests in one test binary: real git repositories (file://, HTTPS
//! through `git http-backend`, SSH against a real sshd), real child processes, recovery after
//! an abandoned reconciler, the install step of a release, the migration of an old data dir,
//! and the store under SIGKILLs of a real writer process (`store_sigkill`).

#[path = "../runtime_support/mod.rs"]
mod runtime_support;

mod app_user_migration;
mod runtime_credentials;
mod runtime_deploy;
mod runtime_git;
mod runtime_install;
mod runtime_recovery;
mod store_sigkill;
