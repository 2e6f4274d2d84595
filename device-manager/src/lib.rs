//! Hammer IoT device manager: enroll, connect, reconcile desired state, supervise, report.
//!
//! `runtime` does the local work (git, releases, the app process, health gate, rollback);
//! the other modules connect it to the service over MQTT:
//! [`enroll`] makes the data dir, [`link`] is the MQTT connection, [`agent`] the loop that
//! verifies ([`verify`]) and acts on ([`commands`]) what the service sends and publishes the
//! durable status [`outbox`], [`health_report`] and live logs ([`logstream`]).

pub mod agent;
pub mod backend;
pub mod cli;
pub mod commands;
pub mod config;
pub mod credentials;
pub mod enroll;
pub mod health_report;
pub mod link;
pub mod logstream;
pub mod outbox;
pub mod pace;
pub mod runtime;
pub mod store;
pub mod verify;
