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

/// Lets every other ready task of the core run once, and the runtime submit
/// and reap its ring, before the caller goes on.
///
/// A task that wakes itself while being polled is put back at the *front*
/// of monoio's run queue (`Schedule::yield_now`), so it would run again at
/// once and starve the others. The wake is handed to a spawned task
/// instead, which the runtime queues behind every task already ready: the
/// caller resumes only after they ran.
pub fn yield_now() -> impl Future<Output = ()> {
    let mut yielded = false;
    poll_fn(move |cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            let waker = cx.waker().clone();
            monoio::spawn(async move { waker.wake() });
            Poll::Pending
        }
    })
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    use super::yield_now;

    /// Runs `f` as a spawned task, as the core's tasks run.
    fn in_task(f: impl std::future::Future<Output = ()> + 'static) {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .unwrap();
        rt.block_on(async { monoio::spawn(f).await });
    }

    #[test]
    fn a_yield_lets_the_tasks_ready_before_it_run() {
        in_task(async {
            let ran = Rc::new(Cell::new(0));
            for _ in 0..3 {
                let ran = ran.clone();
                monoio::spawn(async move { ran.set(ran.get() + 1) });
            }
            yield_now().await;
            assert_eq!(ran.get(), 3, "a self-wake would have resumed first");
        });
    }

    #[test]
    fn a_looping_yielder_does_not_starve_a_task_it_waits_for() {
        in_task(async {
            let flag = Rc::new(Cell::new(false));
            let set = flag.clone();
            monoio::spawn(async move {
                yield_now().await;
                set.set(true);
            });
            let mut turns = 0;
            while !flag.get() {
                yield_now().await;
                turns += 1;
                assert!(turns < 10, "the other task never ran");
            }
        });
    }
}
