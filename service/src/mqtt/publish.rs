//! Everything the service publishes to devices, all signed with the service key and addressed
//! to the device and its owner inside the signature: desired state (retained), commands
//! (queued in memory until the device is online), acks, and the resyncs that republish them
//! after a (re)connect or on a device's presence.

use crate::service::Service;
use crate::store::DeviceRecord;
use hammer_protocol::topics::topic;
use hammer_protocol::{
    now_ms, AddressedAck, Channel, Command, CommandKind, DesiredState, PROTOCOL_VERSION,
};
use rumqttc::QoS;

/// How long a command stays valid after it is signed.
pub const COMMAND_TTL_MS: u64 = 5 * 60 * 1000;

/// Publishes a device's latest desired state, signed, retained.
pub async fn publish_desired(svc: &Service, desired: &DesiredState) -> anyhow::Result<()> {
    let payload = svc.signer.sign_to_vec(desired)?;
    svc.mqtt
        .publish(
            topic(&desired.device_id, Channel::Desired),
            QoS::AtLeastOnce,
            true,
            payload,
        )
        .await?;
    Ok(())
}

/// Clears a deleted device's retained desired state.
pub async fn clear_desired(svc: &Service, device_id: &str) -> anyhow::Result<()> {
    svc.mqtt
        .publish(
            topic(device_id, Channel::Desired),
            QoS::AtLeastOnce,
            true,
            Vec::<u8>::new(),
        )
        .await?;
    Ok(())
}

/// Publishes the signed ack of `seq` of `epoch` on the device's ack topic. One signature and
/// no other allocation than its two buffers: the service acks at high rates.
pub async fn publish_ack(
    svc: &Service,
    device_id: &str,
    owner: &str,
    epoch: u64,
    seq: u64,
) -> anyhow::Result<()> {
    let payload = svc
        .signer
        .sign_to_vec(&AddressedAck::new(device_id, owner, epoch, seq))?;
    svc.mqtt
        .publish(
            topic(device_id, Channel::Ack),
            QoS::AtLeastOnce,
            false,
            payload,
        )
        .await?;
    crate::metrics::Counters::inc(&svc.counters.acks_sent);
    Ok(())
}

/// Sends a command now if the device is online, else keeps it in memory until its presence
/// says it is (a restart of the service drops queued commands). Returns whether it went out.
pub async fn send_command(
    svc: &Service,
    device_id: &str,
    kind: CommandKind,
) -> anyhow::Result<bool> {
    match svc.live.deliver_or_queue(device_id, kind) {
        Some(kind) => {
            deliver_command(svc, device_id, kind).await?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Assigns the next cmd_seq (persisted first), signs and publishes a command.
async fn deliver_command(svc: &Service, device_id: &str, kind: CommandKind) -> anyhow::Result<()> {
    let Some(dev) = svc
        .store
        .update_device(device_id, &mut |d| d.cmd_seq += 1)?
    else {
        return Ok(());
    };
    svc.store.flush().await?;
    let now = now_ms();
    let cmd = Command {
        v: PROTOCOL_VERSION,
        device_id: dev.id.clone(),
        owner: dev.owner.clone(),
        cmd_seq: dev.cmd_seq,
        issued_at: now,
        expires_at: now + COMMAND_TTL_MS,
        kind,
    };
    let payload = svc.signer.sign_to_vec(&cmd)?;
    svc.mqtt
        .publish(
            topic(device_id, Channel::Cmd),
            QoS::AtLeastOnce,
            false,
            payload,
        )
        .await?;
    Ok(())
}

/// A device's resync after its online `presence`: only what differs ([`super::resync::plan`]),
/// then the commands waiting for it.
pub async fn resync_on_presence(
    svc: &Service,
    dev: &DeviceRecord,
    presence: &hammer_protocol::Presence,
    queued: Vec<CommandKind>,
) -> anyhow::Result<()> {
    use crate::metrics::Counters;
    let stored = svc.store.ack_of(&dev.id)?;
    let plan = super::resync::plan(presence, dev.desired.as_ref().map(|d| d.generation), stored);
    Counters::inc(&svc.counters.resyncs);
    if plan.in_sync() {
        Counters::inc(&svc.counters.resyncs_in_sync);
    }
    if plan.desired {
        Counters::inc(&svc.counters.resyncs_desired);
    }
    send_plan(svc, dev, plan, queued).await
}

/// After the service (re)connects to the broker: every desired state and every ack
/// ([`super::resync::everything`]).
pub async fn republish_all(svc: &Service) -> anyhow::Result<()> {
    let devices = svc.store.all_devices()?;
    let n = devices.len();
    for dev in devices {
        let stored = svc.store.ack_of(&dev.id)?;
        let plan = super::resync::everything(dev.desired.as_ref().map(|d| d.generation), stored);
        send_plan(svc, &dev, plan, Vec::new()).await?;
    }
    tracing::info!(devices = n, "republished desired states and acks");
    Ok(())
}

/// Publishes what `plan` says for `dev`, then the commands waiting for it.
async fn send_plan(
    svc: &Service,
    dev: &DeviceRecord,
    plan: super::resync::Plan,
    queued: Vec<CommandKind>,
) -> anyhow::Result<()> {
    if let (true, Some(d)) = (plan.desired, &dev.desired) {
        publish_desired(svc, d).await?;
    }
    if let Some((epoch, seq)) = plan.ack {
        publish_ack(svc, &dev.id, &dev.owner, epoch, seq).await?;
    }
    for kind in queued {
        deliver_command(svc, &dev.id, kind).await?;
    }
    Ok(())
}

/// Bumps a device's generation, stores `build`'s desired state for it (durably) and
/// publishes it. `build` gets the device and the new generation; returning `None` leaves the
/// device untouched and yields `Ok(None)`.
pub async fn set_desired(
    svc: &Service,
    device_id: &str,
    build: impl Fn(&DeviceRecord, u64) -> Option<DesiredState> + Send + Sync,
) -> anyhow::Result<Option<DeviceRecord>> {
    let Some(rec) = stage_desired(svc, device_id, build)? else {
        return Ok(None);
    };
    svc.store.flush().await?;
    if let Some(d) = &rec.desired {
        publish_desired(svc, d).await?;
    }
    Ok(Some(rec))
}

/// The first half of [`set_desired`]: records the next generation's desired state in the
/// device record, without flushing or publishing. The caller flushes the store before it
/// publishes (so that many launches share one flush).
pub fn stage_desired(
    svc: &Service,
    device_id: &str,
    build: impl Fn(&DeviceRecord, u64) -> Option<DesiredState> + Send + Sync,
) -> anyhow::Result<Option<DeviceRecord>> {
    let mut built = false;
    let rec = svc.store.update_device(device_id, &mut |d| {
        built = false;
        if let Some(desired) = build(d, d.generation + 1) {
            d.generation = desired.generation;
            d.run_state = desired.run_state;
            d.current_deployment = Some(desired.deployment_id.clone());
            d.desired = Some(desired);
            built = true;
        }
    })?;
    Ok(rec.filter(|_| built))
}
