//! The `hammer` binary.
fn main() {}
