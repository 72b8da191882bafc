//! Operations: what the server counts ([`stats`]), exposes to Prometheus ([`metrics`]), says
//! about its health ([`health`]) and how often it logs what an attacker can repeat at will
//! ([`log_gate`]). Every other module may report here; nothing here reaches into rooms, storage
//! or the edges (what it shows is handed to it).

pub(crate) mod health;
pub(crate) mod log_gate;
pub(crate) mod metrics;
pub(crate) mod stats;
