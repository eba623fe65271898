//! Slow credential checks (argon2id costs milliseconds) run here, on a few
//! threads of their own, so that no core's event loop waits for a hash while
//! its other connections wait for it. A bounded queue: past it, a CONNECT is
//! answered "server unavailable" rather than queued without end.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crossbeam_channel::{Receiver, Sender};
use futures::channel::oneshot;

use super::Check;

/// Checks waiting or running at most, across all verifier threads.
pub const MAX_PENDING: usize = 1024;

type Job = Box<dyn FnOnce() + Send>;

/// The verifier threads, started on first use.
#[derive(Debug)]
pub struct Offload {
    threads: usize,
    queue: OnceLock<Sender<Job>>,
    pending: Arc<AtomicUsize>,
}

impl Offload {
    pub fn new(threads: usize) -> Offload {
        Offload {
            threads: threads.max(1),
            queue: OnceLock::new(),
            pending: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Runs `check` on a verifier thread; the receiver gets its result.
    /// `None` when [`MAX_PENDING`] checks are already waiting.
    pub fn run(
        &self,
        check: Box<dyn FnOnce() -> Check + Send>,
    ) -> Option<oneshot::Receiver<Check>> {
        if self.pending.fetch_add(1, Ordering::AcqRel) >= MAX_PENDING {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let (tx, rx) = oneshot::channel();
        let pending = self.pending.clone();
        let job: Job = Box::new(move || {
            let result = check();
            pending.fetch_sub(1, Ordering::AcqRel);
            // The client may have gone meanwhile: then nobody listens.
            let _ = tx.send(result);
        });
        self.queue().send(job).ok()?;
        Some(rx)
    }

    fn queue(&self) -> &Sender<Job> {
        self.queue.get_or_init(|| {
            let (tx, rx) = crossbeam_channel::unbounded::<Job>();
            for i in 0..self.threads {
                let rx: Receiver<Job> = rx.clone();
                // Threads end when the broker drops its sender.
                let spawned = std::thread::Builder::new()
                    .name(format!("ringmq-auth-{i}"))
                    .spawn(move || rx.iter().for_each(|job| job()));
                if let Err(e) = spawned {
                    tracing::error!(error = %e, "cannot start a password verifier thread");
                }
            }
            tx
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_checks_off_the_calling_thread() {
        let offload = Offload::new(2);
        let caller = std::thread::current().id();
        let rx = offload
            .run(Box::new(move || {
                assert_ne!(std::thread::current().id(), caller);
                Ok(())
            }))
            .expect("room in the queue");
        assert_eq!(futures::executor::block_on(rx), Ok(Ok(())));
        let rx = offload.run(Box::new(|| Err(super::super::Denial::WrongPassword)));
        let got = futures::executor::block_on(rx.unwrap());
        assert_eq!(got, Ok(Err(super::super::Denial::WrongPassword)));
    }

    #[test]
    fn refuses_beyond_its_bound() {
        let offload = Offload::new(1);
        let (release, wait) = crossbeam_channel::bounded::<()>(0);
        let mut held = Vec::new();
        for _ in 0..MAX_PENDING {
            let wait = wait.clone();
            let rx = offload.run(Box::new(move || {
                let _ = wait.recv();
                Ok(())
            }));
            held.push(rx.expect("within the bound"));
        }
        assert!(offload.run(Box::new(|| Ok(()))).is_none());
        drop(release);
        for rx in held {
            assert_eq!(futures::executor::block_on(rx), Ok(Ok(())));
        }
        assert!(offload.run(Box::new(|| Ok(()))).is_some());
    }
}
