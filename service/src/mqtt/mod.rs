//! The service's MQTT side: the connection ([`link`]), what it publishes ([`publish`]) and
//! what it receives from devices ([`ingest`]; presence coalesced per device by [`presence`]).

pub mod ingest;
pub mod link;
pub mod presence;
pub mod publish;
pub mod resync;
