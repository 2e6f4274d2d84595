//! A simulated Hammer device.
