//! Durable spool and queue manager.

pub mod spool;
pub mod manager;
