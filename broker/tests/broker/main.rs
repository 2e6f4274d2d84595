//! The broker's end-to-end tests, in one test binary: the front door, session semantics and a
//! third-party client (Mosquitto's tools), all with real TLS on loopback. `limits` (floods
//! and the connection budget) keeps a binary of its own: it sizes descriptors per process.

#[path = "../common/mod.rs"]
mod common;

mod front_door;
mod mosquitto;
mod sessions;
