//! Config loading and validation (filled in by the config work).
