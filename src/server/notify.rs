//! Single-threaded signals between a core's tasks: a "wake the writer"
//! notification (many before the writer runs collapse into one wake-up, which
//! is what batches writes), and a yield to the core's other ready tasks.

use std::cell::Cell;
use std::future::{poll_fn, Future};
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

/// Lets every other ready task of the core run once. The runtime, finding
/// a task ready, submits and reaps its ring without waiting in the kernel.
pub fn yield_now() -> impl Future<Output = ()> {
    let mut yielded = false;
    poll_fn(move |cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
}
