//! The webhooks' bounds and configuration, and their part of the shared state: a leaf, so
//! that `config` and `service` can name them.

use crate::store::DeliveryBounds;
use std::time::Duration;

/// Webhooks one user may register.
pub const MAX_WEBHOOKS_PER_USER: u64 = 10;
/// Deliveries of one user (all their webhooks) waiting to be sent; beyond, the oldest is
/// dropped.
pub const MAX_PENDING_PER_USER: u64 = 1000;
/// Finished deliveries kept per webhook (its delivery log).
pub const MAX_FINISHED_PER_WEBHOOK: u64 = 100;
/// The store's bounds of the outbox.
pub const BOUNDS: DeliveryBounds = DeliveryBounds {
    max_pending_per_owner: MAX_PENDING_PER_USER,
    max_finished_per_webhook: MAX_FINISHED_PER_WEBHOOK,
};

/// How webhooks are delivered (`hammer serve` flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// Allow webhook URLs that are or resolve to loopback, private or link-local addresses
    /// (`--webhook-allow-private`; off: such targets are refused at registration and at every
    /// delivery).
    pub allow_private: bool,
    /// The delay after a first failed attempt; doubled per failure (10 s).
    pub retry_base: Duration,
    /// The longest delay between attempts (1 h).
    pub retry_cap: Duration,
    /// Attempts before a delivery is given up (`failed`) (10: about 1.5 h with the defaults).
    pub max_attempts: u32,
}

impl Default for WebhookConfig {
    fn default() -> WebhookConfig {
        WebhookConfig {
            allow_private: false,
            retry_base: Duration::from_secs(10),
            retry_cap: Duration::from_secs(3600),
            max_attempts: 10,
        }
    }
}

/// The webhooks' part of the shared state: the config and the worker's wake-up.
#[derive(Debug, Default)]
pub struct Webhooks {
    pub config: WebhookConfig,
    /// Wakes the worker when a delivery was queued or finished.
    pub wake: tokio::sync::Notify,
}

impl Webhooks {
    pub fn new(config: WebhookConfig) -> Webhooks {
        Webhooks {
            config,
            wake: Default::default(),
        }
    }
}
