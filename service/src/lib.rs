//! Hammer IoT service (being written).
