//! Hammer IoT device manager: enroll, connect, reconcile desired state, supervise, report.
//!
//! `runtime` does the local work (git, releases, the app process, health gate, rollback);
//! the other modules connect it to the service over MQTT.

pub mod runtime;
