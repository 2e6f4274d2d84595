//! The kill switch: the commits a user marked bad. Marking one stops the user's running
//! deployments pinned to it (the rollout engine decides, [`crate::rollout::stop_bad_commit`]),
//! makes the engine refuse new deployments naming or pinning it, and, when asked, rolls the
//! user's devices running it back to their previous good release. The list is kept on the
//! user's record.

use super::activity::rollback_device;
use super::Caller;
use crate::error::{ServiceError, ServiceResult};
use crate::service::Service;
use crate::store::{cut, BadCommitRecord, MAX_DETAIL};
use hammer_protocol::api::{BadCommit, BadCommits, MarkBad, MarkedBad, NotRolledBack};
use hammer_protocol::now_ms;

/// Most bad commits one user keeps marked.
pub const MAX_BAD_COMMITS: usize = 1_000;

/// A commit id from a path: a full commit id (protocol's one rule), lowercase; 400 otherwise.
pub fn parse_commit(sha: &str) -> ServiceResult<String> {
    hammer_protocol::full_commit_id(sha).map_err(|e| {
        ServiceError::bad_request(format!(
            "{e} (give the full commit id, e.g. from `git rev-parse HEAD`)"
        ))
    })
}

fn view(b: &BadCommitRecord) -> BadCommit {
    BadCommit {
        commit: b.commit.clone(),
        reason: b.reason.clone(),
        marked_at: b.marked_at,
    }
}

/// The caller's bad commits, oldest first (read fresh from the store).
pub fn bad_commits(svc: &Service, caller: &Caller) -> ServiceResult<BadCommits> {
    let user = svc
        .store
        .user(&caller.user.id)?
        .unwrap_or_else(|| caller.user.clone());
    Ok(BadCommits {
        commits: user.bad_commits.iter().map(view).collect(),
    })
}

/// Marks `sha` bad for the caller (again: the reason is replaced), stops their running
/// deployments pinned to it and, with `rollback`, rolls back their devices running it.
pub async fn mark_bad(
    svc: &Service,
    caller: &Caller,
    sha: &str,
    req: MarkBad,
) -> ServiceResult<MarkedBad> {
    let commit = parse_commit(sha)?;
    let reason = req
        .reason
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty())
        .map(|r| cut(&r, MAX_DETAIL).into_owned());
    if reason
        .as_deref()
        .is_some_and(|r| r.chars().any(char::is_control))
    {
        return Err(ServiceError::bad_request(
            "the reason may not hold control characters",
        ));
    }
    let rec = BadCommitRecord {
        commit: commit.clone(),
        reason,
        marked_at: now_ms(),
    };
    let mut full = false;
    let user = svc
        .store
        .update_user(&caller.user.id, &mut |u| {
            full = false;
            if let Some(b) = u.bad_commits.iter_mut().find(|b| b.commit == rec.commit) {
                b.reason = rec.reason.clone();
            } else if u.bad_commits.len() >= MAX_BAD_COMMITS {
                full = true;
            } else {
                u.bad_commits.push(rec.clone());
            }
        })?
        .ok_or_else(|| ServiceError::internal("the caller's user record vanished"))?;
    if full {
        return Err(ServiceError::conflict(format!(
            "{MAX_BAD_COMMITS} commits are already marked bad; unmark some with `hammer commit good SHA`"
        )));
    }
    svc.store.flush().await?;
    let marked = user
        .bad_commits
        .iter()
        .find(|b| b.commit == commit)
        .cloned()
        .unwrap_or(rec);
    let stopped = crate::rollout::stop_bad_commit(svc, &user.id, marked.clone()).await;
    let mut rolled_back = Vec::new();
    let mut not_rolled_back = Vec::new();
    if req.rollback {
        for dev in svc.store.devices_of(&user.id)? {
            let running_it = dev
                .current_commit
                .as_deref()
                .is_some_and(|c| c.eq_ignore_ascii_case(&commit));
            if !running_it {
                continue;
            }
            match rollback_device(svc, &dev, &user.bad_commits).await {
                Ok(a) => rolled_back.push(a),
                Err(e) => not_rolled_back.push(NotRolledBack {
                    device: dev.name.clone(),
                    reason: e.message.clone(),
                }),
            }
        }
    }
    Ok(MarkedBad {
        commit: view(&marked),
        stopped,
        rolled_back,
        not_rolled_back,
    })
}

/// Unmarks `sha` for the caller; 404 when it was not marked.
pub async fn unmark_bad(svc: &Service, caller: &Caller, sha: &str) -> ServiceResult<()> {
    let commit = parse_commit(sha)?;
    let mut found = false;
    svc.store
        .update_user(&caller.user.id, &mut |u| {
            let before = u.bad_commits.len();
            u.bad_commits.retain(|b| b.commit != commit);
            found = u.bad_commits.len() != before;
        })?
        .ok_or_else(|| ServiceError::internal("the caller's user record vanished"))?;
    if !found {
        return Err(ServiceError::not_found(format!(
            "commit {commit} is not marked bad"
        )));
    }
    svc.store.flush().await?;
    Ok(())
}
