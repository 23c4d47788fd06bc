//! Durable spool and queue manager.

pub mod manager;
pub mod spool;
pub mod wal;

#[cfg(test)]
mod testing;
