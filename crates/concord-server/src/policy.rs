//! Policy: who may do what and how much. Sockets are counted and capped from `accept`, before a
//! byte is read ([`sockets`]); admission (origin, connection slots, authorizer, room capacity)
//! runs once a request is read, before it reaches a room; limits bound connections and what one
//! connection may send. Edges consult policy; policy reaches into no other layer (what it needs
//! to know of rooms is handed to it).

pub(crate) mod admission;
pub mod auth;
pub(crate) mod limits;
pub(crate) mod proxy;
pub(crate) mod sockets;
