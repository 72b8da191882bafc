//! Operations: what the server counts ([`stats`]), exposes to Prometheus ([`metrics`]) and says
//! about its health ([`health`]). Every other module may report here; nothing here reaches into
//! rooms, storage or the edges (what it shows is handed to it).

pub(crate) mod health;
pub(crate) mod metrics;
pub(crate) mod stats;
