//! A Rust `concord-client` provider the Node interop tests drive (see `tests/interop`).
fn main() {}
