//! Typed client of the Hammer IoT HTTP API.
