//! Route selection (filled in by the delivery work).
