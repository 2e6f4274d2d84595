//! The HTTP API bodies: defaults, unknown-field refusal on requests, tolerance on responses.

use hammer_protocol::api::*;

#[test]
fn requests_refuse_unknown_fields() {
    let err = serde_json::from_str::<CreateDevice>(r#"{"name":"d1","tagz":{}}"#).unwrap_err();
    assert!(err.to_string().contains("tagz"), "{err}");
    assert!(serde_json::from_str::<CreateDeployment>(
        r#"{"targets":{"names":["d1"]},"strategy":{"max_inflight":2}}"#
    )
    .is_err());
}

#[test]
fn request_defaults() {
    let s: SetupRequest =
        serde_json::from_str(r#"{"repo_url":"file:///tmp/r.git","start":"./start.sh"}"#).unwrap();
    assert_eq!(s.git_ref, "main");
    assert_eq!(s.health_window_secs, default_health_window());
    assert!(s.credentials.is_none());
    let d: CreateDeployment = serde_json::from_str(r#"{"targets":{"tag":"group=lab"}}"#).unwrap();
    assert_eq!(d.targets, Targets::Tag("group=lab".into()));
    assert_eq!(d.strategy, Strategy::default());
}

#[test]
fn responses_tolerate_new_fields_and_states() {
    let v: DeploymentTargetView = serde_json::from_str(
        r#"{"device":"d1","state":"teleporting","attempts":1,"last_phase":"running","commit":null,
            "detail":null,"updated_at":5,"brand_new":true}"#,
    )
    .unwrap();
    assert_eq!(v.state, TargetState::Unknown);
    let e: Event = serde_json::from_str(r#"{"kind":"something_new","x":1}"#).unwrap();
    assert_eq!(e, Event::Unknown);
}
