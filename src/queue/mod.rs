//! Durable spool and queue manager.
