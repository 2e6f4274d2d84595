//! Hammer IoT fleet CA (being written).
