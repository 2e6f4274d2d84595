//! The service's MQTT side: the connection ([`link`]), what it publishes ([`publish`]) and
//! what it receives from devices ([`ingest`]).

pub mod ingest;
pub mod link;
pub mod publish;
