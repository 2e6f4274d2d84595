//! A user's maintenance windows: list them, add one (its text and target checked by the
//! protocol's rules, within [`MAX_WINDOWS_PER_USER`]), remove one, and a device's windows with
//! whether it may be deployed to now. What a window means for a deployment is decided in
//! [`crate::rollout::window`].

use super::devices::owned_device;
use super::Caller;
use crate::error::{ServiceError, ServiceResult};
use crate::ids;
use crate::rollout::window::{applies, gate, Gate};
use crate::service::Service;
use crate::store::{WindowRecord, MAX_WINDOWS_PER_USER};
use hammer_protocol::api::{AppliesTo, CreateWindow, DeviceWindows, MaintenanceWindow};
use hammer_protocol::{now_ms, Window};

/// Longest window name, in bytes.
pub const MAX_WINDOW_NAME: usize = 128;

/// A window as the API shows it.
pub fn view(r: &WindowRecord) -> MaintenanceWindow {
    MaintenanceWindow {
        id: r.id.clone(),
        name: r.name.clone(),
        applies_to: r.applies_to.clone(),
        window: r.window.to_string(),
        created_at: r.created_at,
    }
}

/// The caller's windows, oldest first.
pub fn list(svc: &Service, caller: &Caller) -> ServiceResult<Vec<MaintenanceWindow>> {
    Ok(svc
        .store
        .windows_of(&caller.user.id)?
        .iter()
        .map(view)
        .collect())
}

/// Checks a request: the window's text (the protocol's rule), the device (the caller's own:
/// 404 otherwise) or the tag selector, the name. Answers the record to store.
pub fn checked(svc: &Service, caller: &Caller, req: CreateWindow) -> ServiceResult<WindowRecord> {
    let window =
        Window::parse(&req.window).map_err(|e| ServiceError::bad_request(e.to_string()))?;
    let applies_to = match req.applies_to {
        AppliesTo::Device(name) => {
            hammer_protocol::validate_name(&name).map_err(|e| {
                ServiceError::bad_request(format!(
                    "{e}; a window applies to one of your devices by name, e.g. {{\"device\": \"pi-1\"}}"
                ))
            })?;
            owned_device(svc, caller, &name)?;
            AppliesTo::Device(name)
        }
        AppliesTo::Tag(sel) => {
            let (k, v) = hammer_protocol::parse_tag(&sel).map_err(|e| {
                ServiceError::bad_request(format!(
                    "{e}; a window applies to the devices with a tag, e.g. {{\"tag\": \"site=lab\"}}"
                ))
            })?;
            AppliesTo::Tag(hammer_protocol::rules::tag_selector(&k, &v))
        }
    };
    let name = req
        .name
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty());
    if let Some(n) = &name {
        if n.len() > MAX_WINDOW_NAME || n.chars().any(char::is_control) {
            return Err(ServiceError::bad_request(format!(
                "the window's name must be one line of at most {MAX_WINDOW_NAME} bytes"
            )));
        }
    }
    Ok(WindowRecord {
        id: ids::new_id(),
        owner: caller.user.id.clone(),
        name,
        applies_to,
        window,
        created_at: now_ms(),
    })
}

/// Adds a window for the caller; 409 at [`MAX_WINDOWS_PER_USER`].
pub async fn add(
    svc: &Service,
    caller: &Caller,
    req: CreateWindow,
) -> ServiceResult<MaintenanceWindow> {
    let rec = checked(svc, caller, req)?;
    if !svc.store.insert_window(&rec, MAX_WINDOWS_PER_USER)? {
        return Err(ServiceError::conflict(format!(
            "you already have {MAX_WINDOWS_PER_USER} maintenance windows, the most allowed; remove one (`hammer window rm ID`) or use a tag to cover several devices with one window"
        )));
    }
    svc.store.flush().await?;
    tracing::info!(window = %rec.id, owner = %rec.owner, "maintenance window added");
    Ok(view(&rec))
}

/// Removes the caller's window `id`; 404 when they have none of that id.
pub async fn remove(svc: &Service, caller: &Caller, id: &str) -> ServiceResult<()> {
    if !svc.store.delete_window(&caller.user.id, id)? {
        return Err(ServiceError::not_found(format!(
            "no maintenance window {:?}; `hammer window list` shows yours",
            id.chars().take(80).collect::<String>()
        )));
    }
    svc.store.flush().await?;
    Ok(())
}

/// The windows that apply to the caller's device `name` and whether it may be deployed to at
/// `now`; 404 for another user's or a missing device.
pub fn of_device(
    svc: &Service,
    caller: &Caller,
    name: &str,
    now: u64,
) -> ServiceResult<DeviceWindows> {
    let dev = owned_device(svc, caller, name)?;
    let recs: Vec<WindowRecord> = svc
        .store
        .windows_of(&caller.user.id)?
        .into_iter()
        .filter(|r| applies(r, &dev))
        .collect();
    let ws: Vec<Window> = recs.iter().map(|r| r.window).collect();
    let (open, opens_at) = match gate(&ws, now) {
        Gate::Open => (true, None),
        Gate::WaitUntil(t) => (false, Some(t)),
    };
    Ok(DeviceWindows {
        device: dev.name,
        windows: recs.iter().map(view).collect(),
        open,
        opens_at,
    })
}
