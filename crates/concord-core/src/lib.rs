//! Concord's sans-IO engine: rooms, sessions over `yrs::sync`, awareness lifecycle, input
//! validation and the storage trait. It performs no I/O and knows nothing of sockets or runtimes.

pub mod validate;
