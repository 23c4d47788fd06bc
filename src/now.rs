//! Polling a future once, without waiting: for "is there input right now?" checks on a
//! socket (the pre-greeting check of a known client, the outbound client's check for
//! replies nobody asked for). A timeout with a deadline already past would wait for the
//! timer wheel's next tick (about a millisecond), which is what these checks must not cost.

use std::future::Future;
use std::task::{Context, Poll, Waker};

/// The future's output if it is ready at the first poll. Only for cancel-safe futures
/// (tokio's reads and peeks: a pending read has read nothing).
pub fn now_or_never<F: Future>(future: F) -> Option<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    match std::pin::pin!(future).poll(&mut cx) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}
