//! The policy model and the decisions made from it (pure: no sockets, files or clock).

pub mod dn;
pub mod inbound;
pub mod model;
pub mod restrict;
pub mod route;

pub use model::*;
