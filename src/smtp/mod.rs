//! SMTP server: sans-IO command parser and dot-reader, the session state machine, and the
//! listeners.

pub mod body;
pub mod client_cert;
pub mod command;
pub mod data;
pub mod pregreet;
pub mod proxy;
pub mod reply;
pub mod sasl;

pub use reply::Reply;
pub mod server;
pub mod session;
pub mod tls;
