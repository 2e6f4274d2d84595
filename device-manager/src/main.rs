//! The `hammer-manager` binary.
fn main() {}
