//! A single-threaded "wake the writer" signal: many notifications before the
//! writer runs collapse into one wake-up, which is what batches writes.

use std::cell::Cell;
use std::future::poll_fn;
use std::task::{Poll, Waker};

#[derive(Default)]
pub struct Notify {
    pending: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Notify {
    pub fn notify(&self) {
        if self.pending.replace(true) {
            return;
        }
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Forgets a notification nobody waited for.
    pub fn clear(&self) {
        self.pending.set(false);
    }

    pub async fn notified(&self) {
        poll_fn(|cx| {
            if self.pending.replace(false) {
                Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}
