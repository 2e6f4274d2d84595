//! What replicas tell each other through the broker, and how it is framed.
//!
//! Every message is an [`Envelope`] encoded as CBOR and cut into [`Frame`]s of at most
//! [`FRAME_DATA`] bytes, so that a message larger than one MQTT payload (a 10,000-target
//! deployment is about a megabyte) still crosses the broker, whose packets are capped at
//! `MAX_PACKET` like everyone else's. [`Reassembler`] puts frames back together within
//! bounds: at most [`MAX_MESSAGE`] bytes per message, [`MAX_PARTIAL`] messages in progress,
//! each dropped when it is not complete within [`PARTIAL_TTL_MS`]. What is dropped is
//! counted by the caller; a lost request is retried by its sender, a lost relay is made up
//! for by the store (the rollout engine reads stored status events before it times a
//! target out).
//!
//! Only service replicas can publish or read these topics (the broker's ACL gives devices
//! their own topics only), and still every decode is checked: a bad frame is an error,
//! never a panic.

use crate::store::{BadCommitRecord, DeploymentRecord, StoredStatus};
use hammer_protocol::api::{DeploymentState, Event};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Version of this wire format; a replica refuses frames of another version (upgrade all
/// replicas to the same release before relying on them: a rolling upgrade that changes it is
/// noted in the release notes).
pub const WIRE_VERSION: u16 = 1;
/// Most message bytes in one frame (the rest of the packet is the frame's header and topic).
pub const FRAME_DATA: usize = 200 * 1024;
/// Largest message put back together (a 100,000-target deployment fits).
pub const MAX_MESSAGE: usize = 32 * 1024 * 1024;
/// Most messages being put back together at once; a new one beyond it drops the oldest.
pub const MAX_PARTIAL: usize = 64;
/// A message not complete this long after its first frame is dropped.
pub const PARTIAL_TTL_MS: u64 = 10_000;

/// Prefix of every topic replicas use among themselves.
pub const TOPIC_PREFIX: &str = "hammer/v1/svc/";
/// Every replica reads this topic: stored status events and deployment progress.
pub const RELAY_TOPIC: &str = "hammer/v1/svc/relay";

/// The topic on which `replica` receives engine requests and replies.
pub fn rpc_topic(replica: &str) -> String {
    format!("{TOPIC_PREFIX}rpc/{replica}")
}

/// One message between replicas.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    /// The sending replica's name.
    pub from: String,
    pub body: Body,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Body {
    /// Status events the sender stored (and acked): the other replicas stream them, and the
    /// one driving deployments follows them.
    Stored(Vec<StoredItem>),
    /// An event for the event streams (deployment progress, from the replica that drives it).
    /// (Boxed: a deployment view is far larger than the other variants.)
    Hub(Box<WireHubEvent>),
    /// A request to the rollout engine, sent to the replica holding the rollout lease.
    Request { id: u64, request: EngineRequest },
    /// The engine's answer to request `id`.
    Reply { id: u64, reply: EngineReply },
}

/// A stored status event with what the event streams show.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredItem {
    pub owner: String,
    pub device_name: String,
    pub stored: StoredStatus,
}

/// An event-stream event (`crate::service::HubEvent`) on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireHubEvent {
    pub owner: String,
    pub devices: Vec<String>,
    pub deployment: Option<String>,
    pub event: Event,
}

/// What the rollout engine is asked by another replica (`RolloutMsg` without its reply).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum EngineRequest {
    Create {
        dep: Box<DeploymentRecord>,
    },
    Cancel {
        id: String,
        owner: String,
        by: String,
    },
    Hold {
        id: String,
        owner: String,
        paused: bool,
    },
    Promote {
        id: String,
        owner: String,
        by: String,
    },
    BadCommit {
        owner: String,
        bad: BadCommitRecord,
    },
    Holder {
        device_id: String,
    },
}

/// The engine's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum EngineReply {
    /// The deployment's id: it is in the store, as the engine wrote it before answering.
    Deployment(Result<String, WireRefusal>),
    Stopped(Vec<String>),
    Holder(Option<String>),
    /// The receiver does not drive deployments (any more): ask the lease's holder again.
    NotLeader,
}

/// A refusal of the engine on the wire: the same sentences the caller would get from a local
/// engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireRefusal {
    DeviceBusy {
        device: String,
        deployment: String,
    },
    AlreadyEnded {
        id: String,
        state: DeploymentState,
    },
    AlreadyPaused {
        id: String,
    },
    NotPaused {
        id: String,
    },
    NotPhased {
        id: String,
    },
    LastPhase {
        id: String,
        phase: usize,
    },
    BadCommit(String),
    NoDeployment {
        id: String,
    },
    /// A failure of the engine's replica (storage): the message is logged there.
    Failed(String),
}

/// One piece of an encoded [`Envelope`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    pub v: u16,
    /// The sending replica and its message number: together they name the message.
    pub from: String,
    pub msg: u64,
    pub index: u32,
    pub count: u32,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// Why a frame or message was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("frame is not valid CBOR: {0}")]
    Malformed(String),
    #[error("frame of wire version {0}; this replica speaks {WIRE_VERSION}: run one release on every replica")]
    Version(u16),
    #[error("frame {index} of {count} is out of range")]
    BadIndex { index: u32, count: u32 },
    #[error("message of more than {MAX_MESSAGE} bytes refused")]
    TooLarge,
    #[error("message could not be encoded: {0}")]
    Encode(String),
}

/// Encodes `env` as message number `msg` of its sender, in frames.
pub fn encode(env: &Envelope, msg: u64) -> Result<Vec<Vec<u8>>, WireError> {
    let bytes = serde_cbor::to_vec(env).map_err(|e| WireError::Encode(e.to_string()))?;
    if bytes.len() > MAX_MESSAGE {
        return Err(WireError::TooLarge);
    }
    let chunks: Vec<&[u8]> = if bytes.is_empty() {
        vec![&[][..]]
    } else {
        bytes.chunks(FRAME_DATA).collect()
    };
    let count = u32::try_from(chunks.len()).map_err(|_| WireError::TooLarge)?;
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, data)| {
            let f = Frame {
                v: WIRE_VERSION,
                from: env.from.clone(),
                msg,
                index: i as u32,
                count,
                data: data.to_vec(),
            };
            serde_cbor::to_vec(&f).map_err(|e| WireError::Encode(e.to_string()))
        })
        .collect()
}

/// Reads one frame.
pub fn decode_frame(payload: &[u8]) -> Result<Frame, WireError> {
    if payload.len() > hammer_protocol::MAX_PACKET {
        return Err(WireError::TooLarge);
    }
    let f: Frame =
        serde_cbor::from_slice(payload).map_err(|e| WireError::Malformed(e.to_string()))?;
    if f.v != WIRE_VERSION {
        return Err(WireError::Version(f.v));
    }
    let max_frames = MAX_MESSAGE.div_ceil(FRAME_DATA) as u32;
    if f.count == 0 || f.index >= f.count || f.count > max_frames {
        return Err(WireError::BadIndex {
            index: f.index,
            count: f.count,
        });
    }
    if f.data.len() > FRAME_DATA {
        return Err(WireError::TooLarge);
    }
    Ok(f)
}

/// Reads a whole message.
pub fn decode_envelope(bytes: &[u8]) -> Result<Envelope, WireError> {
    if bytes.len() > MAX_MESSAGE {
        return Err(WireError::TooLarge);
    }
    serde_cbor::from_slice(bytes).map_err(|e| WireError::Malformed(e.to_string()))
}

struct Partial {
    started: u64,
    count: u32,
    parts: Vec<Option<Vec<u8>>>,
    have: u32,
    bytes: usize,
}

/// Puts frames back into messages, within the bounds above. Time is passed in.
#[derive(Default)]
pub struct Reassembler {
    partial: HashMap<(String, u64), Partial>,
    /// Messages dropped: incomplete in time, over a bound, or evicted.
    pub dropped: u64,
}

impl Reassembler {
    /// Adds a frame; returns the message's bytes once every frame of it arrived.
    pub fn add(&mut self, f: Frame, now_ms: u64) -> Option<Vec<u8>> {
        if f.count == 1 {
            return Some(f.data);
        }
        self.expire(now_ms);
        let key = (f.from.clone(), f.msg);
        if !self.partial.contains_key(&key) && self.partial.len() >= MAX_PARTIAL {
            if let Some(oldest) = self
                .partial
                .iter()
                .min_by_key(|(_, p)| p.started)
                .map(|(k, _)| k.clone())
            {
                self.partial.remove(&oldest);
                self.dropped += 1;
            }
        }
        let p = self.partial.entry(key.clone()).or_insert_with(|| Partial {
            started: now_ms,
            count: f.count,
            parts: vec![None; f.count as usize],
            have: 0,
            bytes: 0,
        });
        let idx = f.index as usize;
        if p.count != f.count || idx >= p.parts.len() {
            self.partial.remove(&key);
            self.dropped += 1;
            return None;
        }
        if p.parts[idx].is_none() {
            p.bytes += f.data.len();
            p.have += 1;
            p.parts[idx] = Some(f.data);
        }
        if p.bytes > MAX_MESSAGE {
            self.partial.remove(&key);
            self.dropped += 1;
            return None;
        }
        if p.have < p.count {
            return None;
        }
        let p = self.partial.remove(&key)?;
        let mut out = Vec::with_capacity(p.bytes);
        for part in p.parts.into_iter().flatten() {
            out.extend_from_slice(&part);
        }
        Some(out)
    }

    /// Drops messages not complete within [`PARTIAL_TTL_MS`].
    pub fn expire(&mut self, now_ms: u64) {
        let before = self.partial.len();
        self.partial
            .retain(|_, p| now_ms.saturating_sub(p.started) < PARTIAL_TTL_MS);
        self.dropped += (before - self.partial.len()) as u64;
    }

    /// Messages in progress.
    pub fn in_progress(&self) -> usize {
        self.partial.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn request(n_targets: usize) -> Envelope {
        let targets = (0..n_targets)
            .map(|i| crate::store::TargetRecord {
                device_id: format!("device-{i:06}-abcdefghijklmnop"),
                device: format!("name-{i}"),
                state: hammer_protocol::api::TargetState::Pending,
                attempts: 0,
                last_phase: None,
                commit: None,
                detail: None,
                updated_at: 1,
                generation: None,
                deadline: None,
            })
            .collect();
        Envelope {
            from: "a".into(),
            body: Body::Request {
                id: 7,
                request: EngineRequest::Create {
                    dep: Box::new(DeploymentRecord {
                        phasing: None,
                        id: "dep1".into(),
                        owner: "u".into(),
                        deployer: "alice".into(),
                        created_at: 1,
                        finished_at: None,
                        git_ref: Some("main".into()),
                        commit: None,
                        strategy: Default::default(),
                        state: DeploymentState::Running,
                        reason: None,
                        targets,
                        paused: false,
                    }),
                },
            },
        }
    }

    fn reassemble(frames: Vec<Vec<u8>>, r: &mut Reassembler) -> Option<Vec<u8>> {
        let mut out = None;
        for f in frames {
            let f = decode_frame(&f).unwrap();
            if let Some(m) = r.add(f, 1000) {
                out = Some(m);
            }
        }
        out
    }

    #[test]
    fn a_ten_thousand_target_request_crosses_in_frames_within_the_packet_cap() {
        let env = request(10_000);
        let frames = encode(&env, 1).unwrap();
        assert!(frames.len() > 1, "{} frames", frames.len());
        assert!(frames
            .iter()
            .all(|f| f.len() <= hammer_protocol::MAX_PAYLOAD));
        let mut r = Reassembler::default();
        let bytes = reassemble(frames, &mut r).unwrap();
        let back = decode_envelope(&bytes).unwrap();
        match back.body {
            Body::Request {
                id: 7,
                request: EngineRequest::Create { dep },
            } => assert_eq!(dep.targets.len(), 10_000),
            other => panic!("{other:?}"),
        }
        assert_eq!(r.in_progress(), 0);
    }

    #[test]
    fn frames_in_any_order_and_repeated_give_the_message_once() {
        let env = request(3_000);
        let mut frames = encode(&env, 9).unwrap();
        assert!(frames.len() >= 2);
        frames.reverse();
        let dup = frames[0].clone();
        frames.insert(1, dup);
        let mut r = Reassembler::default();
        let mut got = 0;
        for f in frames {
            if r.add(decode_frame(&f).unwrap(), 5).is_some() {
                got += 1;
            }
        }
        assert_eq!(got, 1);
    }

    #[test]
    fn an_incomplete_message_is_dropped_after_its_ttl() {
        let frames = encode(&request(3_000), 1).unwrap();
        let mut r = Reassembler::default();
        assert!(r.add(decode_frame(&frames[0]).unwrap(), 0).is_none());
        assert_eq!(r.in_progress(), 1);
        r.expire(PARTIAL_TTL_MS);
        assert_eq!(r.in_progress(), 0);
        assert_eq!(r.dropped, 1);
    }

    #[test]
    fn partial_messages_are_capped_and_the_oldest_goes_first() {
        let frames = encode(&request(3_000), 0).unwrap();
        let mut r = Reassembler::default();
        for msg in 0..(MAX_PARTIAL as u64 + 5) {
            let mut f = decode_frame(&frames[0]).unwrap();
            f.msg = msg;
            r.add(f, msg);
        }
        assert_eq!(r.in_progress(), MAX_PARTIAL);
        assert_eq!(r.dropped, 5);
    }

    #[test]
    fn frames_of_another_version_or_out_of_range_are_refused() {
        let mut f = Frame {
            v: WIRE_VERSION + 1,
            from: "a".into(),
            msg: 1,
            index: 0,
            count: 1,
            data: vec![1],
        };
        let bytes = serde_cbor::to_vec(&f).unwrap();
        assert_eq!(
            decode_frame(&bytes),
            Err(WireError::Version(WIRE_VERSION + 1))
        );
        f.v = WIRE_VERSION;
        f.index = 1;
        let bytes = serde_cbor::to_vec(&f).unwrap();
        assert!(matches!(
            decode_frame(&bytes),
            Err(WireError::BadIndex { .. })
        ));
        f.index = 0;
        f.count = u32::MAX;
        let bytes = serde_cbor::to_vec(&f).unwrap();
        assert!(matches!(
            decode_frame(&bytes),
            Err(WireError::BadIndex { .. })
        ));
    }

    proptest! {
        #[test]
        fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode_frame(&bytes);
            let _ = decode_envelope(&bytes);
        }

        #[test]
        fn any_frames_fed_to_the_reassembler_stay_within_bounds(
            frames in proptest::collection::vec((0u64..4, 0u32..6, 1u32..6, proptest::collection::vec(any::<u8>(), 0..64)), 0..200)
        ) {
            let mut r = Reassembler::default();
            for (i, (msg, index, count, data)) in frames.into_iter().enumerate() {
                if index >= count { continue; }
                let f = Frame { v: WIRE_VERSION, from: "x".into(), msg, index, count, data };
                let _ = r.add(f, i as u64);
                prop_assert!(r.in_progress() <= MAX_PARTIAL);
            }
        }
    }
}
