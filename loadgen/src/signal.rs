//! A single-waiter, thread-local wake-up with a sticky permit: a reader task
//! tells its connection's writer "there is something to send" without a
//! channel, and a notification sent while nobody waits is not lost.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
pub struct Notify {
    permit: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Notify {
    pub fn notify(&self) {
        self.permit.set(true);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// Completes at once if notified since the last wait, else on the next `notify`.
    pub fn notified(&self) -> Notified<'_> {
        Notified(self)
    }
}

pub struct Notified<'a>(&'a Notify);

impl Future for Notified<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.permit.replace(false) {
            return Poll::Ready(());
        }
        self.0.waker.set(Some(cx.waker().clone()));
        Poll::Pending
    }
}

/// Yields once to the runtime, letting every other ready task (and the io_uring
/// completion queue) run before this task continues. monoio puts a task that
/// wakes itself during its poll back at the front of its run queue, where it
/// would run again at once; a spawned task does the wake instead, queued
/// behind the tasks already ready.
pub async fn yield_now() {
    struct YieldNow(bool);
    impl Future for YieldNow {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0 {
                return Poll::Ready(());
            }
            self.0 = true;
            let waker = cx.waker().clone();
            monoio::spawn(async move { waker.wake() });
            Poll::Pending
        }
    }
    YieldNow(false).await
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    use super::yield_now;

    #[test]
    fn a_yield_lets_the_tasks_ready_before_it_run() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .unwrap();
        rt.block_on(async {
            monoio::spawn(async {
                let ran = Rc::new(Cell::new(false));
                let set = ran.clone();
                monoio::spawn(async move { set.set(true) });
                yield_now().await;
                assert!(ran.get(), "a self-wake would have resumed first");
            })
            .await
        });
    }
}
