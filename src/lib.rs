//! connector-relay: an SMTP relay that enforces Exchange-style connector policy.
//!
//! Data flow (see `shared/DESIGN.md`): `smtp` receives and asks `policy`, rewrites headers
//! through `message`, hands finished messages to `queue` (durable spool, then 250);
//! `queue` drives `delivery`, which asks `policy` for routes and `dns` for next hops.
//! `exchange` converts Exchange connector scripts, Get- output and DSC to and from the config.

pub mod admin;
pub mod config;
pub mod delivery;
pub mod dns;
pub mod exchange;
pub mod fds;
pub mod logging;
pub mod message;
pub mod metrics;
pub mod now;
pub mod ops;
pub mod policy;
pub mod queue;
pub mod relay;
pub mod secret;
pub mod service;
pub mod sink;
pub mod smtp;
pub mod tlsrpt;
pub mod trace;
