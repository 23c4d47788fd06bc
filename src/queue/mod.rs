//! Durable spool and the delivery queues.
//!
//! - `spool.rs`, `wal.rs`: what was answered 250 is on disk, with each recipient's outcome;
//! - `manager.rs`: the scheduler task: messages, one delivery queue per next hop
//!   (`hop.rs`), timers for retries, expiry and delay notices;
//! - `attempt.rs`: the tasks it starts (deliver one batch, fail or notify recipients);
//! - `notices.rs`: trace rows and DSNs; `admin.rs`: the admin API's commands and views;
//! - `adopt.rs`: the spool's lock, and taking over the spool of a node that is gone.

pub mod admin;
pub mod adopt;
mod attempt;
pub mod hop;
pub mod manager;
mod notices;
pub mod spool;
pub mod wal;

#[cfg(test)]
mod testing;
