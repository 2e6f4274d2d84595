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
use hammer_protocol::rules::{parse_remote_url, RemoteScheme};
use hammer_protocol::sealing::seal_credentials;
use hammer_protocol::{
    validate_env, validate_git_ref, validate_install, CommandKind, GitCredentials,
};
use std::sync::Arc;

/// Longest health window accepted.
pub const MAX_HEALTH_WINDOW: u32 = 3600;

/// Checks a setup; answers the warnings to store and show with it.
fn check(req: &SetupRequest) -> ServiceResult<Vec<String>> {
    let url = req.repo_url.trim();
    // The one rule for repository URLs, also the device manager's.
    let remote =
        parse_remote_url(url).map_err(|e| ServiceError::bad_request(format!("repo_url: {e}")))?;
    // An http(s) user name can be a token (https://TOKEN@host/...), a password always is
    // secret; the URL is stored and published in the retained desired state.
    let http = matches!(remote.scheme, RemoteScheme::Https | RemoteScheme::Http);
    if remote.has_password || (http && remote.user.is_some()) {
        return Err(ServiceError::bad_request(
            "repo_url must not contain credentials: pass them with --git-user/--git-token-env \
             or --ssh-key (they are sealed to the device and never stored)",
        ));
    }
    let warnings: Vec<String> = remote.warning().into_iter().collect();
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
    Ok(warnings)
}

/// `PUT /api/v1/devices/{name}/setup`.
pub async fn put_setup(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<SetupRequest>,
) -> ServiceResult<Json<DeviceView>> {
    let dev = owned_device(&svc, &caller, &name)?;
    let warnings = check(&req)?;
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
        full_history,
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
        full_history,
        warnings,
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
mod url_tests {
    use super::check;
    use hammer_protocol::api::SetupRequest;
    use hammer_protocol::rules::REMOTE_URL_TABLE;

    fn request(url: &str) -> SetupRequest {
        serde_json::from_value(serde_json::json!({"repo_url": url, "start": "./run"})).unwrap()
    }

    #[test]
    fn the_service_accepts_exactly_the_urls_of_the_shared_table() {
        // The device manager is tested against the same table (tests/runtime/runtime_git.rs).
        for (url, ok) in REMOTE_URL_TABLE {
            assert_eq!(check(&request(url)).is_ok(), *ok, "{url:?}");
        }
    }

    #[test]
    fn http_and_git_urls_are_stored_with_one_warning_and_credentials_are_refused() {
        for url in ["http://h.example/r.git", "git://h.example/r.git"] {
            let warnings = check(&request(url)).unwrap();
            assert_eq!(warnings.len(), 1, "{url}");
            assert!(warnings[0].contains("neither encrypted nor authenticated"));
        }
        assert!(check(&request("https://h.example/r.git"))
            .unwrap()
            .is_empty());
        for url in [
            "https://t0k@h.example/r.git",
            "http://t0k@h.example/r.git",
            "ssh://git:pw@h.example/r.git",
        ] {
            assert!(check(&request(url)).is_err(), "{url}");
        }
        assert!(check(&request("ssh://git@h.example/r.git")).is_ok());
        assert!(check(&request("git@h.example:r.git")).is_ok());
    }
}
