//! CBOR encoding and decoding of every message, with the size limit and the version check.
//!
//! Decoding never panics: any input yields either a message or a [`CodecError`].

use crate::{MAX_PAYLOAD, PROTOCOL_VERSION};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CodecError {
    #[error("payload of {0} bytes is over the {MAX_PAYLOAD}-byte limit")]
    TooLarge(usize),
    #[error("unsupported protocol version {found} (this build speaks version {PROTOCOL_VERSION}); upgrade the older side")]
    UnsupportedVersion { found: u16 },
    #[error("payload is not a valid message: {0}")]
    Malformed(String),
    #[error("could not encode message: {0}")]
    Encode(String),
}

#[derive(Deserialize)]
struct VersionProbe {
    v: u16,
}

/// Encodes a message as CBOR. Fails if the result is over [`MAX_PAYLOAD`].
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    let bytes = serde_cbor::to_vec(msg).map_err(|e| CodecError::Encode(e.to_string()))?;
    if bytes.len() > MAX_PAYLOAD {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

/// Decodes a message: refuses oversized payloads, other protocol versions and malformed CBOR.
/// Unknown fields are ignored.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() > MAX_PAYLOAD {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    let probe: VersionProbe =
        serde_cbor::from_slice(bytes).map_err(|e| CodecError::Malformed(e.to_string()))?;
    if probe.v != PROTOCOL_VERSION {
        return Err(CodecError::UnsupportedVersion { found: probe.v });
    }
    serde_cbor::from_slice(bytes).map_err(|e| CodecError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn status() -> StatusEvent {
        StatusEvent {
            v: PROTOCOL_VERSION,
            epoch: 0x1234_5678_9abc_def0,
            seq: 42,
            generation: Some(7),
            deployment_id: Some("01jd3k4m5n6p7q8r9s0t1v2w3x".into()),
            phase: Phase::Running,
            commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
            time: 1_764_000_000_000,
            detail: None,
            log_tail: vec![],
            commit_subject: None,
        }
    }

    fn desired() -> DesiredState {
        DesiredState {
            v: PROTOCOL_VERSION,
            device_id: "dev1".into(),
            owner: "alice1".into(),
            generation: 3,
            deployment_id: "dep1".into(),
            repo_url: "https://example.invalid/app.git".into(),
            git_ref: "main".into(),
            commit: None,
            start: "./start.sh".into(),
            env: BTreeMap::from([("PORT".into(), "8080".into())]),
            health_window_secs: 5,
            health_cmd: Some("curl -f localhost:8080".into()),
            run_state: RunState::Running,
            issued_at: 1,
            install: Some(crate::install::InstallStep {
                command: "npm ci --omit=dev".into(),
                timeout_secs: 600,
                reuse: vec![crate::install::ReuseDir {
                    dir: "node_modules".into(),
                    key: "package-lock.json".into(),
                }],
            }),
            full_history: false,
        }
    }

    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(m: T) {
        let bytes = encode(&m).unwrap();
        let back: T = decode(&bytes).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn every_message_round_trips() {
        round_trip(status());
        round_trip(desired());
        round_trip(Ack {
            v: PROTOCOL_VERSION,
            epoch: 9,
            seq: 10,
        });
        round_trip(AddressedAck::new("dev1", "alice1", 9, 10));
        round_trip(Health {
            v: PROTOCOL_VERSION,
            time: 5,
            app_running: true,
            pid: Some(77),
            restarts: 1,
            uptime_secs: 100,
            app_rss_kb: 2048,
            app_cpu_ms: 30,
            manager_version: "0.1.0".into(),
            commit: None,
            generation: Some(2),
        });
        round_trip(LogBatch {
            v: PROTOCOL_VERSION,
            time: 3,
            lines: vec!["hello".into(), "world".into()],
        });
        round_trip(Presence {
            v: PROTOCOL_VERSION,
            online: true,
            epoch: 1,
            generation: Some(3),
            acked_seq: 41,
            manager_version: "0.1.0".into(),
            time: 2,
            last_seq: Some(44),
        });
        for kind in [
            CommandKind::Restart,
            CommandKind::Logs { on: true },
            CommandKind::Setup { credentials: None },
        ] {
            round_trip(Command {
                v: PROTOCOL_VERSION,
                device_id: "dev1".into(),
                owner: "alice1".into(),
                cmd_seq: 4,
                issued_at: 1,
                expires_at: 2,
                kind,
            });
        }
    }

    #[test]
    fn a_presence_from_a_manager_without_last_seq_decodes_as_unknown() {
        #[derive(serde::Serialize)]
        struct OldPresence {
            v: u16,
            online: bool,
            epoch: u64,
            generation: Option<u64>,
            acked_seq: u64,
            manager_version: String,
            time: u64,
        }
        let old = serde_cbor::to_vec(&OldPresence {
            v: PROTOCOL_VERSION,
            online: true,
            epoch: 7,
            generation: Some(2),
            acked_seq: 5,
            manager_version: "0.1.0".into(),
            time: 1,
        })
        .unwrap();
        let p: Presence = decode(&old).unwrap();
        assert_eq!((p.epoch, p.acked_seq, p.last_seq), (7, 5, None));
        // And a new one still decodes in a service that ignores the field's meaning.
        let new = encode(&Presence {
            last_seq: Some(9),
            ..p
        })
        .unwrap();
        assert_eq!(decode::<Presence>(&new).unwrap().last_seq, Some(9));
    }

    #[test]
    fn unknown_fields_and_variants_are_tolerated() {
        #[derive(Serialize)]
        struct Newer {
            v: u16,
            epoch: u64,
            seq: u64,
            generation: Option<u64>,
            deployment_id: Option<String>,
            phase: &'static str,
            commit: Option<String>,
            time: u64,
            detail: Option<String>,
            shiny_new_field: Vec<u32>,
        }
        let bytes = encode(&Newer {
            v: PROTOCOL_VERSION,
            epoch: 1,
            seq: 2,
            generation: None,
            deployment_id: None,
            phase: "teleported",
            commit: None,
            time: 3,
            detail: None,
            shiny_new_field: vec![1, 2, 3],
        })
        .unwrap();
        let ev: StatusEvent = decode(&bytes).unwrap();
        assert_eq!(ev.phase, Phase::Unknown);
        assert!(ev.log_tail.is_empty());

        #[derive(Serialize)]
        struct NewCmd {
            v: u16,
            device_id: &'static str,
            owner: &'static str,
            cmd_seq: u64,
            issued_at: u64,
            expires_at: u64,
            kind: BTreeMap<&'static str, &'static str>,
        }
        let bytes = encode(&NewCmd {
            v: PROTOCOL_VERSION,
            device_id: "d",
            owner: "o",
            cmd_seq: 1,
            issued_at: 1,
            expires_at: 2,
            kind: BTreeMap::from([("type", "self_destruct")]),
        })
        .unwrap();
        let cmd: Command = decode(&bytes).unwrap();
        assert_eq!(cmd.kind, CommandKind::Unknown);
    }

    #[test]
    fn other_versions_and_sizes_are_refused() {
        let mut ev = status();
        ev.v = 2;
        let bytes = serde_cbor::to_vec(&ev).unwrap();
        assert!(matches!(
            decode::<StatusEvent>(&bytes),
            Err(CodecError::UnsupportedVersion { found: 2 })
        ));
        let big = vec![0u8; MAX_PAYLOAD + 1];
        assert!(matches!(
            decode::<StatusEvent>(&big),
            Err(CodecError::TooLarge(_))
        ));
        assert!(matches!(
            decode::<StatusEvent>(b"\xff\x00garbage"),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn status_event_is_small() {
        let bytes = encode(&status()).unwrap();
        println!("typical status event: {} bytes of CBOR", bytes.len());
        assert!(bytes.len() < 200, "{} bytes", bytes.len());
    }

    fn arb_phase() -> impl Strategy<Value = Phase> {
        prop_oneof![
            Just(Phase::Received),
            Just(Phase::Fetching),
            Just(Phase::Fetched),
            Just(Phase::Starting),
            Just(Phase::Verifying),
            Just(Phase::Running),
            Just(Phase::Failed),
            Just(Phase::RolledBack),
            Just(Phase::Stopped),
            Just(Phase::Crashed),
            Just(Phase::Restarted),
            Just(Phase::Refused),
            Just(Phase::Configured),
        ]
    }

    #[test]
    fn an_install_step_is_left_out_when_unset_and_skipped_by_a_device_that_predates_it() {
        // What a manager without the install step reads of a desired state: unknown fields
        // are ignored, so a newer service does not stall it.
        #[derive(Deserialize)]
        struct Older {
            generation: u64,
            start: String,
        }
        let with = desired();
        let old: Older = decode(&encode(&with).unwrap()).unwrap();
        assert_eq!((old.generation, old.start.as_str()), (3, "./start.sh"));
        let without = DesiredState {
            install: None,
            ..desired()
        };
        let bytes = encode(&without).unwrap();
        assert!(!bytes.windows(7).any(|w| w == b"install"));
        assert_eq!(decode::<DesiredState>(&bytes).unwrap().install, None);
    }

    prop_compose! {
        fn arb_status()(epoch in any::<u64>(), seq in any::<u64>(), generation in any::<Option<u64>>(),
                        deployment_id in proptest::option::of("[a-z0-9]{0,30}"), phase in arb_phase(),
                        commit in proptest::option::of("[0-9a-f]{40}"), time in any::<u64>(),
                        detail in proptest::option::of(".{0,100}"),
                        log_tail in proptest::collection::vec(".{0,50}", 0..5),
                        commit_subject in proptest::option::of(".{0,60}")) -> StatusEvent {
            StatusEvent { v: PROTOCOL_VERSION, epoch, seq, generation, deployment_id, phase, commit, time, detail, log_tail, commit_subject }
        }
    }

    prop_compose! {
        fn arb_desired()(generation in any::<u64>(), device_id in "[a-z0-9]{1,26}", owner in "[a-z0-9]{1,26}",
                         repo_url in ".{0,80}", git_ref in ".{0,40}", commit in proptest::option::of("[0-9a-f]{40}"),
                         start in ".{0,80}", env in proptest::collection::btree_map("[A-Z_]{1,10}", ".{0,20}", 0..4),
                         health_window_secs in any::<u32>(), health_cmd in proptest::option::of(".{0,40}"),
                         stopped in any::<bool>(), issued_at in any::<u64>(),
                         install in proptest::option::of((".{0,40}", any::<u32>()))) -> DesiredState {
            DesiredState { v: PROTOCOL_VERSION, device_id, owner, generation, deployment_id: "d".into(), repo_url, git_ref,
                commit, start, env, health_window_secs, health_cmd,
                run_state: if stopped { RunState::Stopped } else { RunState::Running }, issued_at,
                install: install.map(|(command, timeout_secs)| crate::install::InstallStep { command, timeout_secs, reuse: vec![] }), full_history: false }
        }
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<StatusEvent>(&bytes);
            let _ = decode::<DesiredState>(&bytes);
            let _ = decode::<Command>(&bytes);
            let _ = decode::<Presence>(&bytes);
            let _ = decode::<crate::signing::Signed>(&bytes);
        }

        #[test]
        fn decode_never_panics_on_mutated_messages(idx in any::<usize>(), byte in any::<u8>(), ev in arb_status()) {
            let mut bytes = encode(&ev).unwrap();
            let i = idx % bytes.len();
            bytes[i] = byte;
            let _ = decode::<StatusEvent>(&bytes);
            bytes.truncate(i);
            let _ = decode::<StatusEvent>(&bytes);
        }

        #[test]
        fn status_round_trips(ev in arb_status()) {
            let back: StatusEvent = decode(&encode(&ev).unwrap()).unwrap();
            prop_assert_eq!(back, ev);
        }

        #[test]
        fn desired_round_trips(d in arb_desired()) {
            let back: DesiredState = decode(&encode(&d).unwrap()).unwrap();
            prop_assert_eq!(back, d);
        }
    }
}
