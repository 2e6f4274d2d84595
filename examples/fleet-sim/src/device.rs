//! One simulated device: the autonomous device of `hammer-sim-device` (its own mTLS MQTT
//! connection and certificate, the real protocol, a simulated rollout for every newer
//! desired generation, the outbox with acks and resends), under the names the simulator and
//! the benchmarks use.

pub use hammer_sim_device::autonomous::connect;
pub use hammer_sim_device::{
    mqtt_options, AutonomousDevice as SimDevice, Backoff, Credentials, SimConfig,
};
