//! Header rewriting: the `Received:` header, DSNs.

pub mod received;
