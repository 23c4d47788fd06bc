//! Header rewriting.
