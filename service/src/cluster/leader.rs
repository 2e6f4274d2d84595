//! The replica's cluster task: takes and renews the rollout lease ([`super::lease`]), runs
//! the rollout engine while it holds it, routes what the API asks of the engine (here, or to
//! the holder), and handles what other replicas send (stored status events, deployment
//! progress, engine requests and replies).

use super::lease::{Attempt, Decision, LeaseCore, TICK_MS, TTL_MS};
use super::outbox::ClusterLink;
use super::wire::{
    self, Body, EngineReply, EngineRequest, Reassembler, StoredItem, WireHubEvent, WireRefusal,
};
use super::{PROGRESS_EVERY_MS, REQUEST_DEADLINE, REQUEST_TIMEOUT, ROLLOUT_LEASE};
use crate::rollout::{Engine, RolloutError, RolloutMsg};
use crate::service::{HubEvent, RunPhase, Service};
use crate::store::Fence;
use crate::views;
use hammer_protocol::api::Event;
use hammer_protocol::now_ms;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

impl From<WireHubEvent> for HubEvent {
    fn from(e: WireHubEvent) -> HubEvent {
        HubEvent {
            owner: e.owner,
            devices: e.devices,
            deployment: e.deployment,
            event: e.event,
        }
    }
}

impl From<RolloutError> for WireRefusal {
    fn from(e: RolloutError) -> WireRefusal {
        match e {
            RolloutError::DeviceBusy { device, deployment } => {
                WireRefusal::DeviceBusy { device, deployment }
            }
            RolloutError::AlreadyEnded { id, state } => WireRefusal::AlreadyEnded { id, state },
            RolloutError::AlreadyPaused { id } => WireRefusal::AlreadyPaused { id },
            RolloutError::NotPaused { id } => WireRefusal::NotPaused { id },
            RolloutError::NotPhased { id } => WireRefusal::NotPhased { id },
            RolloutError::LastPhase { id, phase } => WireRefusal::LastPhase { id, phase },
            RolloutError::BadCommit(m) => WireRefusal::BadCommit(m),
            RolloutError::NoDeployment { id } => WireRefusal::NoDeployment { id },
            other => {
                tracing::error!(error = %other, "the rollout engine failed a request of another replica");
                WireRefusal::Failed(other.to_string())
            }
        }
    }
}

impl From<WireRefusal> for RolloutError {
    fn from(r: WireRefusal) -> RolloutError {
        match r {
            WireRefusal::DeviceBusy { device, deployment } => {
                RolloutError::DeviceBusy { device, deployment }
            }
            WireRefusal::AlreadyEnded { id, state } => RolloutError::AlreadyEnded { id, state },
            WireRefusal::AlreadyPaused { id } => RolloutError::AlreadyPaused { id },
            WireRefusal::NotPaused { id } => RolloutError::NotPaused { id },
            WireRefusal::NotPhased { id } => RolloutError::NotPhased { id },
            WireRefusal::LastPhase { id, phase } => RolloutError::LastPhase { id, phase },
            WireRefusal::BadCommit(m) => RolloutError::BadCommit(m),
            WireRefusal::NoDeployment { id } => RolloutError::NoDeployment { id },
            WireRefusal::Failed(m) => RolloutError::Remote(m),
        }
    }
}

/// The engine while this replica holds the lease.
struct Running {
    tx: mpsc::Sender<RolloutMsg>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    token: u64,
}

/// The cluster task's state.
struct Leader {
    svc: Arc<Service>,
    link: Arc<ClusterLink>,
    core: LeaseCore,
    engine: Option<Running>,
    frames: Reassembler,
}

/// Runs until `stop`: the lease, the engine, the routing and the relays. `rollout_rx` is the
/// API's and ingestion's inbox of the engine; `inbound` the frames other replicas sent.
pub async fn run(
    svc: Arc<Service>,
    link: Arc<ClusterLink>,
    mut rollout_rx: mpsc::Receiver<RolloutMsg>,
    mut inbound: mpsc::Receiver<Vec<u8>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut me = Leader {
        svc,
        link,
        core: LeaseCore::default(),
        engine: None,
        frames: Reassembler::default(),
    };
    let mut tick = tokio::time::interval(Duration::from_millis(TICK_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut progress = tokio::time::interval(Duration::from_millis(PROGRESS_EVERY_MS));
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut phase = me.svc.phase.clone();
    let mut draining = false;
    loop {
        tokio::select! {
            _ = tick.tick(), if !draining => me.on_tick().await,
            _ = async { let _ = phase.wait_for(|p| *p == RunPhase::Draining).await; }, if !draining => {
                // Draining: hand the lease over now, so that another replica drives
                // deployments while this one still answers requests (and forwards what needs
                // the engine to the new holder).
                draining = true;
                me.hand_over().await;
            }
            _ = progress.tick() => me.link.flush_progress().await,
            msg = rollout_rx.recv() => match msg {
                Some(m) => me.route(m).await,
                None => break,
            },
            frame = inbound.recv() => match frame {
                Some(f) => me.on_frame(&f).await,
                None => break,
            },
            _ = engine_done(&mut me.engine) => {
                tracing::warn!("the rollout engine stopped; following until the lease is free again");
                me.engine_gone();
            }
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
        }
    }
    me.hand_over().await;
    me.link.flush_progress().await;
}

/// Resolves when the running engine's task ended by itself.
async fn engine_done(engine: &mut Option<Running>) {
    match engine {
        Some(r) => {
            let _ = (&mut r.task).await;
        }
        None => std::future::pending().await,
    }
}

impl Leader {
    /// The engine task ended by itself (its inbox closed, or a fenced write stopped it):
    /// this replica follows until it takes the lease again.
    fn engine_gone(&mut self) {
        self.engine = None;
        self.link.counters.leading.store(false, Ordering::Relaxed);
        self.core.on_engine_stopped();
    }

    /// Stops the engine (it writes its state) and releases the lease, so that another
    /// replica takes over at its next tick instead of after the TTL.
    async fn hand_over(&mut self) {
        let Some(token) = self.stop_engine().await else {
            return;
        };
        self.core.on_engine_stopped();
        match self
            .svc
            .store
            .release_lease(ROLLOUT_LEASE, &self.link.holder, token)
        {
            Ok(()) => tracing::info!("released the rollout lease"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot release the rollout lease; another replica takes it when it expires")
            }
        }
    }

    async fn on_tick(&mut self) {
        let now = now_ms();
        let attempt =
            match self
                .svc
                .store
                .acquire_lease(ROLLOUT_LEASE, &self.link.holder, now, TTL_MS)
            {
                Ok(Some(l)) => Attempt::Granted {
                    token: l.token,
                    expires_at: l.expires_at,
                },
                Ok(None) => Attempt::Held,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take or renew the rollout lease");
                    Attempt::Failed
                }
            };
        let decision = match self.core.on_attempt(attempt, now) {
            Decision::Stay => self.core.on_clock(now_ms()),
            d => d,
        };
        match decision {
            Decision::Stay => {}
            Decision::StepDown => {
                tracing::warn!("lost the rollout lease; this replica stops driving deployments");
                self.stop_engine().await;
            }
            Decision::Start { token } => {
                self.stop_engine().await;
                self.start_engine(token).await;
            }
        }
    }

    async fn start_engine(&mut self, token: u64) {
        let fence = Fence {
            name: ROLLOUT_LEASE.to_owned(),
            holder: self.link.holder.clone(),
            token,
        };
        match Engine::load_fenced(self.svc.clone(), Some(fence)).await {
            Ok(engine) => {
                let (tx, rx) = mpsc::channel(64 * 1024);
                let (stop, stop_rx) = watch::channel(false);
                let task = tokio::spawn(engine.run(rx, stop_rx));
                tracing::info!(
                    token,
                    "took the rollout lease: this replica drives deployments"
                );
                self.link
                    .counters
                    .lease_taken
                    .fetch_add(1, Ordering::Relaxed);
                self.link.counters.leading.store(true, Ordering::Relaxed);
                self.engine = Some(Running {
                    tx,
                    stop,
                    task,
                    token,
                });
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot load running deployments; will try again");
                self.core.on_engine_stopped();
            }
        }
    }

    /// Stops the engine (it writes its state first); returns the token it ran under.
    async fn stop_engine(&mut self) -> Option<u64> {
        let r = self.engine.take()?;
        self.link.counters.leading.store(false, Ordering::Relaxed);
        r.stop.send_replace(true);
        if tokio::time::timeout(Duration::from_secs(8), r.task)
            .await
            .is_err()
        {
            tracing::warn!("the rollout engine did not stop in time");
        }
        Some(r.token)
    }

    /// What the API or ingestion asked of the engine: to the engine here, or to the holder.
    async fn route(&mut self, msg: RolloutMsg) {
        if let Some(r) = &self.engine {
            if let Err(mpsc::error::SendError(msg)) = r.tx.send(msg).await {
                self.engine_gone();
                self.remote(msg);
            }
            return;
        }
        self.remote(msg);
    }

    /// Sends `msg` to the lease holder in a task of its own (the caller waits for its reply,
    /// this loop does not). Status events are not sent: the holder has them from the relay.
    fn remote(&self, msg: RolloutMsg) {
        let (request, reply) = match msg {
            RolloutMsg::Status { .. } => return,
            RolloutMsg::Create { dep, reply } => {
                (EngineRequest::Create { dep }, Reply::Deployment(reply))
            }
            RolloutMsg::Cancel {
                id,
                owner,
                by,
                reply,
            } => (
                EngineRequest::Cancel { id, owner, by },
                Reply::Deployment(reply),
            ),
            RolloutMsg::Hold {
                id,
                owner,
                paused,
                reply,
            } => (
                EngineRequest::Hold { id, owner, paused },
                Reply::Deployment(reply),
            ),
            RolloutMsg::Promote {
                id,
                owner,
                by,
                reply,
            } => (
                EngineRequest::Promote { id, owner, by },
                Reply::Deployment(reply),
            ),
            RolloutMsg::BadCommit { owner, bad, reply } => (
                EngineRequest::BadCommit { owner, bad },
                Reply::Stopped(reply),
            ),
            RolloutMsg::Holder { device_id, reply } => {
                (EngineRequest::Holder { device_id }, Reply::Holder(reply))
            }
        };
        let (svc, link) = (self.svc.clone(), self.link.clone());
        tokio::spawn(async move {
            let answer = ask_holder(&svc, &link, request).await;
            reply.answer(&svc, answer);
        });
    }

    async fn on_frame(&mut self, payload: &[u8]) {
        let frame = match wire::decode_frame(payload) {
            Ok(f) => f,
            Err(e) => {
                self.link
                    .counters
                    .bad_frames
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "refused a frame from another replica");
                return;
            }
        };
        if frame.from == self.link.replica {
            // Our own relay, echoed by the broker.
            return;
        }
        let dropped_before = self.frames.dropped;
        let bytes = self.frames.add(frame, now_ms());
        let dropped = self.frames.dropped - dropped_before;
        if dropped > 0 {
            self.link
                .counters
                .dropped
                .fetch_add(dropped, Ordering::Relaxed);
        }
        let Some(bytes) = bytes else { return };
        let env = match wire::decode_envelope(&bytes) {
            Ok(e) => e,
            Err(e) => {
                self.link
                    .counters
                    .bad_frames
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "refused a message from another replica");
                return;
            }
        };
        match env.body {
            Body::Stored(items) => self.on_stored(items).await,
            Body::Hub(ev) => {
                let _ = self.svc.hub.send(HubEvent::from(*ev));
            }
            Body::Request { id, request } => self.on_request(env.from, id, request).await,
            Body::Reply { id, reply } => self.link.on_reply(id, reply),
        }
    }

    /// Status events another replica stored: to the event streams here, and to the engine
    /// when it runs here.
    async fn on_stored(&mut self, items: Vec<StoredItem>) {
        let listening = self.svc.listening();
        for item in items {
            if listening {
                self.svc.emit(
                    &item.owner,
                    vec![item.stored.device_id.clone()],
                    item.stored.event.deployment_id.clone(),
                    Event::Status {
                        device: item.device_name.clone(),
                        entry: views::history_entry(&item.stored),
                    },
                );
            }
            if let Some(r) = &self.engine {
                let _ =
                    r.tx.send(RolloutMsg::Status {
                        device_id: item.stored.device_id,
                        event: item.stored.event,
                    })
                    .await;
            }
        }
    }

    /// An engine request of another replica: answered by the engine here, or `NotLeader`.
    async fn on_request(&mut self, from: String, id: u64, request: EngineRequest) {
        let Some(r) = &self.engine else {
            let link = self.link.clone();
            tokio::spawn(async move {
                let body = Body::Reply {
                    id,
                    reply: EngineReply::NotLeader,
                };
                let _ = link.send(&wire::rpc_topic(&from), body).await;
            });
            return;
        };
        let tx = r.tx.clone();
        let link = self.link.clone();
        tokio::spawn(async move {
            let reply = ask_engine(&tx, request).await;
            if let Err(e) = link
                .send(&wire::rpc_topic(&from), Body::Reply { id, reply })
                .await
            {
                tracing::warn!(replica = %from, error = %e, "cannot answer an engine request");
            }
        });
    }
}

/// Asks the engine running here, as the API would.
async fn ask_engine(tx: &mpsc::Sender<RolloutMsg>, request: EngineRequest) -> EngineReply {
    // The record is in the store (the engine persists a create, cancel, pause or resume
    // before it answers): the answer names it, and the asking replica reads it there, so a
    // 10,000-target deployment does not cross the broker twice.
    fn dep(
        r: Result<Result<crate::store::DeploymentRecord, RolloutError>, oneshot::error::RecvError>,
    ) -> EngineReply {
        match r {
            Ok(Ok(d)) => EngineReply::Deployment(Ok(d.id)),
            Ok(Err(e)) => EngineReply::Deployment(Err(e.into())),
            Err(_) => EngineReply::NotLeader,
        }
    }
    type DepReply = oneshot::Sender<Result<crate::store::DeploymentRecord, RolloutError>>;
    // A request answered with a deployment: send it, then name what the engine answered.
    async fn ask(
        tx: &mpsc::Sender<RolloutMsg>,
        msg: impl FnOnce(DepReply) -> RolloutMsg,
    ) -> EngineReply {
        let (reply, rx) = oneshot::channel();
        if tx.send(msg(reply)).await.is_err() {
            return EngineReply::NotLeader;
        }
        dep(rx.await)
    }
    match request {
        EngineRequest::Create { dep: d } => {
            ask(tx, |reply| RolloutMsg::Create { dep: d, reply }).await
        }
        EngineRequest::Cancel { id, owner, by } => {
            ask(tx, |reply| RolloutMsg::Cancel {
                id,
                owner,
                by,
                reply,
            })
            .await
        }
        EngineRequest::Hold { id, owner, paused } => {
            ask(tx, |reply| RolloutMsg::Hold {
                id,
                owner,
                paused,
                reply,
            })
            .await
        }
        EngineRequest::Promote { id, owner, by } => {
            ask(tx, |reply| RolloutMsg::Promote {
                id,
                owner,
                by,
                reply,
            })
            .await
        }
        EngineRequest::BadCommit { owner, bad } => {
            let (reply, rx) = oneshot::channel();
            if tx
                .send(RolloutMsg::BadCommit { owner, bad, reply })
                .await
                .is_err()
            {
                return EngineReply::NotLeader;
            }
            rx.await
                .map(EngineReply::Stopped)
                .unwrap_or(EngineReply::NotLeader)
        }
        EngineRequest::Holder { device_id } => {
            let (reply, rx) = oneshot::channel();
            if tx
                .send(RolloutMsg::Holder { device_id, reply })
                .await
                .is_err()
            {
                return EngineReply::NotLeader;
            }
            rx.await
                .map(EngineReply::Holder)
                .unwrap_or(EngineReply::NotLeader)
        }
    }
}

/// Asks the lease holder, under one request id, until it answers or [`REQUEST_DEADLINE`]
/// passes: sent again after [`REQUEST_TIMEOUT`] without an answer (an answer to an earlier
/// attempt still counts), and to the new holder when the lease changes hands.
async fn ask_holder(
    svc: &Service,
    link: &ClusterLink,
    request: EngineRequest,
) -> Result<EngineReply, RolloutError> {
    let deadline = tokio::time::Instant::now() + REQUEST_DEADLINE;
    let mut pending = link.open_request().map_err(|e| {
        tracing::warn!(error = %e, "engine request refused");
        RolloutError::Unavailable
    })?;
    loop {
        let now = now_ms();
        let holder = match svc.store.lease(ROLLOUT_LEASE) {
            Ok(Some(l)) if l.expires_at > now && l.holder != link.holder => Some(l.holder),
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the rollout lease; retrying");
                None
            }
        };
        let wait = match holder {
            Some(h) => {
                // The holder is `NAME@INCARNATION`; requests go to the replica's topic.
                let name = h.split('@').next().unwrap_or(&h);
                match link.send_request(name, pending.id, request.clone()).await {
                    Ok(()) => REQUEST_TIMEOUT,
                    Err(e) => {
                        tracing::debug!(error = %e, "engine request not sent; retrying");
                        Duration::from_millis(200)
                    }
                }
            }
            None => Duration::from_millis(200),
        };
        let until = (tokio::time::Instant::now() + wait).min(deadline);
        match tokio::time::timeout_at(until, pending.answers.recv()).await {
            Ok(Some(EngineReply::NotLeader)) => {
                // That replica does not drive deployments (any more): ask again, soon.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(Some(reply)) => return Ok(reply),
            Ok(None) => return Err(RolloutError::Unavailable),
            Err(_) => {
                if until >= deadline {
                    return Err(RolloutError::Unavailable);
                }
                link.counters
                    .request_timeouts
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(RolloutError::Unavailable);
        }
    }
}

/// Where a routed request's answer goes.
enum Reply {
    Deployment(oneshot::Sender<Result<crate::store::DeploymentRecord, RolloutError>>),
    Stopped(oneshot::Sender<Vec<String>>),
    Holder(oneshot::Sender<Option<String>>),
}

impl Reply {
    fn answer(self, svc: &Service, answer: Result<EngineReply, RolloutError>) {
        match (self, answer) {
            (Reply::Deployment(tx), Ok(EngineReply::Deployment(r))) => {
                let r = match r {
                    Ok(id) => match svc.store.deployment(&id) {
                        Ok(Some(d)) => Ok(d),
                        Ok(None) => Err(RolloutError::Vanished { id }),
                        Err(e) => Err(RolloutError::Store(e)),
                    },
                    Err(refusal) => Err(RolloutError::from(refusal)),
                };
                let _ = tx.send(r);
            }
            (Reply::Deployment(tx), Err(e)) => {
                let _ = tx.send(Err(e));
            }
            (Reply::Deployment(tx), Ok(_)) => {
                let _ = tx.send(Err(RolloutError::Remote(
                    "an answer of the wrong kind".into(),
                )));
            }
            (Reply::Stopped(tx), Ok(EngineReply::Stopped(ids))) => {
                let _ = tx.send(ids);
            }
            (Reply::Stopped(tx), _) => {
                tracing::warn!("marking a commit bad could not reach the replica driving deployments; its running deployments stop when they next report");
                let _ = tx.send(Vec::new());
            }
            (Reply::Holder(tx), Ok(EngineReply::Holder(h))) => {
                let _ = tx.send(h);
            }
            (Reply::Holder(tx), _) => {
                let _ = tx.send(None);
            }
        }
    }
}
