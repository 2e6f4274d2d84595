//! Hammer IoT device manager (being written).
