//! SMTP server: sans-IO parser and dot-reader, session, listeners.
