//! Policy: who may do what and how much. Admission (origin, connection slots, authorizer,
//! room capacity) runs before a request reaches a room; limits bound connections and what one
//! connection may send. Edges consult policy; policy reaches into no other layer (what it needs
//! to know of rooms is handed to it).

pub(crate) mod admission;
pub mod auth;
pub(crate) mod limits;
