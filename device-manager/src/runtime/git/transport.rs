//! The device manager's own git transports, registered with libgit2 in place of its built-in
//! ones (decision 0020): git2 is built without its `https` and `ssh` features, which would link
//! OpenSSL and libssh2.
//!
//! - `http://` and `https://`: the smart HTTP protocol over reqwest and rustls (ring), trusting
//!   the system store plus an optional CA file ([`http`]).
//! - `ssh://` (also `git+ssh://`, `ssh+git://`) and scp-like `user@host:path` (libgit2 hands
//!   those to the `ssh` transport): the system `ssh` program, as git itself does it ([`ssh`]).
//! - `file://` and `git://` stay libgit2's own.
//!
//! libgit2 does not call git2's credential or certificate callbacks for a custom transport,
//! so what a fetch needs (credentials, the extra CA file) reaches the transport through a
//! [`Scope`]: a thread-local value set around `remote.fetch` (libgit2 runs the transport on
//! the calling thread). The first problem a transport meets is recorded there too, so the
//! fetch reports that clear sentence instead of libgit2's rewording of it.

pub mod http;
pub mod ssh;

use git2::transport::Transport;
use hammer_protocol::GitCredentials;
use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

/// What one fetch gives its transport.
#[derive(Clone, Default)]
pub struct FetchContext {
    /// The credentials for this remote (already limited to the deployment's own server for a
    /// submodule, see `checkout`).
    pub creds: Option<GitCredentials>,
    /// PEM file of extra trusted CAs for HTTPS git servers (`git_ca_file` in manager.toml).
    pub ca_file: Option<PathBuf>,
}

thread_local! {
    static CONTEXT: RefCell<Option<Arc<FetchContext>>> = const { RefCell::new(None) };
    static PROBLEM: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The fetch context of this thread while it lives; restores the previous one on drop.
pub struct Scope {
    previous: Option<Arc<FetchContext>>,
}

/// Sets `ctx` for the git calls this thread makes until the [`Scope`] is dropped.
#[must_use = "the context is gone as soon as the scope is dropped"]
pub fn enter(ctx: FetchContext) -> Scope {
    let previous = CONTEXT.with(|c| c.borrow_mut().replace(Arc::new(ctx)));
    PROBLEM.with(|p| p.borrow_mut().take());
    Scope { previous }
}

impl Scope {
    /// The first problem a transport recorded in this scope, if any.
    pub fn problem(&self) -> Option<String> {
        PROBLEM.with(|p| p.borrow().clone())
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CONTEXT.with(|c| *c.borrow_mut() = previous);
        PROBLEM.with(|p| p.borrow_mut().take());
    }
}

/// The context of the fetch under way on this thread (none: no credentials, system roots).
pub(crate) fn current() -> Arc<FetchContext> {
    CONTEXT.with(|c| c.borrow().clone()).unwrap_or_default()
}

/// Records `message` as the fetch's problem (the first one wins) and returns it.
pub(crate) fn problem(message: String) -> String {
    PROBLEM.with(|p| {
        p.borrow_mut().get_or_insert_with(|| message.clone());
    });
    message
}

/// [`problem`] as a git2 error (a transport's `action`).
pub(crate) fn git_problem(message: String) -> git2::Error {
    git2::Error::from_str(&problem(message))
}

/// [`problem`] as an I/O error (a transport stream's `read` / `write`).
pub(crate) fn io_problem(message: String) -> std::io::Error {
    std::io::Error::other(problem(message))
}

/// Registers the transports with libgit2, once per process. Every git operation that can
/// reach the network calls this first.
pub fn register() -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        for scheme in ["http", "https"] {
            // SAFETY: libgit2's transport list has no lock. This runs once (OnceLock), before
            // the first fetch or connect in the process, so no other thread reads the list
            // meanwhile.
            unsafe {
                git2::transport::register(scheme, |remote| {
                    Transport::smart(remote, true, http::HttpSubtransport::new(current()))
                })
            }
            .map_err(|e| format!("cannot register the {scheme} git transport: {e}"))?;
        }
        for scheme in ["ssh", "git+ssh", "ssh+git"] {
            // SAFETY: as above.
            unsafe {
                git2::transport::register(scheme, |remote| {
                    Transport::smart(remote, false, ssh::SshSubtransport::new(current()))
                })
            }
            .map_err(|e| format!("cannot register the {scheme} git transport: {e}"))?;
        }
        Ok(())
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_sets_the_context_and_its_drop_restores_the_previous_one() {
        assert!(current().creds.is_none());
        let outer = enter(FetchContext {
            ca_file: Some("/outer.pem".into()),
            ..FetchContext::default()
        });
        {
            let inner = enter(FetchContext::default());
            assert_eq!(current().ca_file, None);
            problem("first".into());
            problem("second".into());
            assert_eq!(inner.problem().as_deref(), Some("first"));
        }
        assert_eq!(current().ca_file, Some(PathBuf::from("/outer.pem")));
        assert_eq!(outer.problem(), None);
        drop(outer);
        assert_eq!(current().ca_file, None);
    }
}
