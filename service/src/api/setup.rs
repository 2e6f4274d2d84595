//! `PUT /api/v1/devices/{name}/setup`: the seed's initial setup. The rest of the setup is
//! stored; git credentials are sealed at once to the device's key (HPKE) and sent in a signed
//! setup command, never stored, in clear or sealed, and never logged. The device becomes
//! `setup_pending` and then `ready` when it reports `configured`. An offline device gets the
//! command when its presence says it is online; a service restart before that drops it (run
//! setup again).

use crate::api::errors::ApiJson;
use crate::domain::devices::owned_device;
use crate::domain::Caller;
use crate::error::{ServiceError, ServiceResult};
use crate::service::Service;
use crate::views::device_view;
use axum::extract::{Path, State};
use axum::Json;
use hammer_protocol::api::{DeviceState, DeviceView, SetupRequest, SetupView};
use hammer_protocol::sealing::seal_credentials;
use hammer_protocol::{
    validate_env, validate_git_ref, validate_install, CommandKind, GitCredentials,
};
use std::sync::Arc;

/// Longest health window accepted.
pub const MAX_HEALTH_WINDOW: u32 = 3600;

/// The `user[:password]` part of a `scheme://user[:password]@host/...` URL, if any.
fn url_userinfo(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next().unwrap_or(rest);
    authority.rsplit_once('@').map(|(userinfo, _)| userinfo)
}

fn check(req: &SetupRequest) -> ServiceResult<()> {
    let url = req.repo_url.trim();
    let scheme_ok = ["https://", "ssh://", "git://", "file://"]
        .iter()
        .any(|s| url.starts_with(s))
        || (url.contains('@') && url.contains(':') && !url.contains("://"));
    if url.is_empty() || url.len() > 2048 || !scheme_ok || url.chars().any(char::is_control) {
        return Err(ServiceError::bad_request(
            "repo_url must be an https://, ssh://, git:// or file:// URL (or user@host:path)",
        ));
    }
    if let Some(userinfo) = url_userinfo(url) {
        // An https user name can be a token (https://TOKEN@host/...), a password always is
        // secret; the URL is stored and published in the retained desired state.
        if url.starts_with("https://") || userinfo.contains(':') {
            return Err(ServiceError::bad_request(
                "repo_url must not contain credentials: pass them with --git-user/--git-token-env \
                 or --ssh-key (they are sealed to the device and never stored)",
            ));
        }
    }
    validate_git_ref(&req.git_ref).map_err(|e| ServiceError::bad_request(e.to_string()))?;
    if req.start.trim().is_empty() || req.start.len() > 4096 {
        return Err(ServiceError::bad_request(
            "start must be a non-empty shell command (at most 4096 bytes)",
        ));
    }
    if req.health_window_secs > MAX_HEALTH_WINDOW {
        return Err(ServiceError::bad_request(format!(
            "health_window_secs must be at most {MAX_HEALTH_WINDOW}"
        )));
    }
    if req
        .health_cmd
        .as_ref()
        .is_some_and(|c| c.trim().is_empty() || c.len() > 4096)
    {
        return Err(ServiceError::bad_request(
            "health_cmd must be a non-empty shell command when given",
        ));
    }
    for (k, v) in &req.env {
        validate_env(k, v).map_err(|e| ServiceError::bad_request(e.to_string()))?;
    }
    if let Some(step) = &req.install {
        validate_install(step).map_err(|e| ServiceError::bad_request(format!("install: {e}")))?;
    }
    Ok(())
}

/// `PUT /api/v1/devices/{name}/setup`.
pub async fn put_setup(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<SetupRequest>,
) -> ServiceResult<Json<DeviceView>> {
    let dev = owned_device(&svc, &caller, &name)?;
    check(&req)?;
    let Some(pk_hex) = dev.sealing_public_key.clone() else {
        return Err(ServiceError::conflict(format!(
            "device {name:?} has not enrolled yet: run `hammer-manager enroll` on it first"
        )));
    };
    let kind = match &req.credentials {
        Some(GitCredentials::Https { .. }) => "https",
        Some(GitCredentials::Ssh { .. }) => "ssh",
        None => "none",
    };
    let sealed = match &req.credentials {
        Some(c) => {
            let pk = hex::decode(&pk_hex).map_err(ServiceError::internal)?;
            Some(seal_credentials(&pk, &dev.id, c).map_err(ServiceError::internal)?)
        }
        None => None,
    };
    let SetupRequest {
        repo_url,
        git_ref,
        start,
        env,
        health_window_secs,
        health_cmd,
        credentials,
        install,
    } = req;
    drop(credentials);
    let view = SetupView {
        repo_url: repo_url.trim().to_owned(),
        git_ref,
        start,
        env,
        health_window_secs,
        health_cmd,
        credentials: kind.to_owned(),
        install,
    };
    let rec = svc
        .store
        .update_device(&dev.id, &mut |d| {
            d.setup = Some(view.clone());
            d.state = DeviceState::SetupPending;
        })?
        .ok_or_else(|| ServiceError::no_device(&name))?;
    svc.store.flush().await?;
    let sent = crate::mqtt::publish::send_command(
        &svc,
        &dev.id,
        CommandKind::Setup {
            credentials: sealed,
        },
    )
    .await?;
    tracing::info!(device = %dev.id, credentials = kind, delivered = sent, "setup stored and sent");
    Ok(Json(device_view(&rec, &svc.live)))
}

#[cfg(test)]
mod userinfo_tests {
    use super::url_userinfo;

    #[test]
    fn finds_userinfo_only_in_the_authority() {
        assert_eq!(url_userinfo("https://t0k@h.example/r.git"), Some("t0k"));
        assert_eq!(url_userinfo("ssh://git@h.example:22/r.git"), Some("git"));
        assert_eq!(url_userinfo("https://h.example/a@b/r.git"), None);
        assert_eq!(url_userinfo("git@h.example:team/r.git"), None);
        assert_eq!(url_userinfo("file:///srv/r.git"), None);
    }
}
