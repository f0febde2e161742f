//! pve-sim command-line entry point.
fn main() {}
