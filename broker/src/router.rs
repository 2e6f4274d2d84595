//! The embedded rumqttd router: the part of rumqttd that keeps subscriptions, retained
//! messages, persistent sessions and QoS 1 state, on its own thread. No rumqttd listener runs:
//! the front door hands every authenticated session to the router as an in-process link
//! (`rumqttd::local::LinkBuilder`), so a session costs one socket (the client's) and no
//! loopback hop (decision 0004).
//!
//! rumqttd 0.20 traps avoided here (from its source): `max_connections` and
//! `max_segment_size` default to 0 (no client can connect / a panic on the first subscribe),
//! filters must be created dynamically (`dynamic_filters`), and the router thread cannot be
//! stopped, so it lives for the life of the process.

use crate::config::InternalConfig;
use crate::error::BrokerError;
use hammer_protocol::Channel;
use rumqttd::local::{LinkBuilder, LinkRx, LinkTx};
use rumqttd::Notification;
use std::sync::Arc;

/// What a session asks of the router when it opens its link.
pub(crate) struct LinkRequest {
    pub client_id: String,
    pub clean_session: bool,
}

/// An open link: the two halves and the router's CONNACK for it.
pub(crate) type Link = (LinkTx, LinkRx, Notification);

type Open = dyn Fn(&LinkRequest) -> Result<Link, String> + Send + Sync;

/// Opens links to the running router. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Router {
    open: Arc<Open>,
}

impl Router {
    /// Opens a link. Blocks until the router answers (it does so in microseconds unless it is
    /// saturated), so call it from a blocking-capable thread.
    /// The error is rumqttd's, as text.
    pub fn open_blocking(&self, request: &LinkRequest) -> Result<Link, String> {
        (self.open)(request)
    }
}

/// The rumqttd router configuration.
pub(crate) fn router_config(
    max_connections: usize,
    sizing: &InternalConfig,
) -> rumqttd::RouterConfig {
    // rumqttd matches these keys as filters against each new subscription filter, so
    // `hammer/v1/dev/+/desired` sizes every device's own desired filter.
    let device = rumqttd::SegmentConfig {
        max_segment_size: sizing.device_segment_size.max(1024),
        max_segment_count: sizing.device_segment_count.max(1),
    };
    let custom = Channel::TO_DEVICE
        .iter()
        .map(|c| (c.all_devices_filter(), device.clone()))
        .collect();
    rumqttd::RouterConfig {
        // Room for reconnects overlapping with the sessions they replace.
        max_connections: max_connections.saturating_mul(2).max(64),
        max_outgoing_packet_count: sizing.max_outgoing_packet_count,
        max_segment_size: sizing.segment_size.max(1024),
        max_segment_count: sizing.segment_count.max(1),
        custom_segment: Some(custom),
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    }
}

/// Starts the router thread.
pub(crate) fn start(
    max_connections: usize,
    sizing: &InternalConfig,
) -> Result<Router, BrokerError> {
    let config = router_config(max_connections, sizing);
    // `Router::spawn` panics if the OS refuses a thread; turn that into an error.
    let router_tx = std::panic::catch_unwind(|| rumqttd::Router::new(0, config).spawn())
        .map_err(|_| BrokerError::Internal("cannot start the rumqttd router thread".into()))?;
    let open = move |r: &LinkRequest| {
        LinkBuilder::new(&r.client_id, router_tx.clone())
            .clean_session(r.clean_session)
            .dynamic_filters(true)
            .build()
            .map_err(|e| e.to_string())
    };
    Ok(Router {
        open: Arc::new(open),
    })
}
