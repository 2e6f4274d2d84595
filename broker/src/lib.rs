//! Hammer IoT broker (being written).
