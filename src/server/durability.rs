//! `persistence_fsync = "always"`: which output of a core may go out, given
//! what has reached the disk. A connection's output that answers a QoS 1/2
//! PUBLISH (or belongs to a persistent session) is written only once
//! everything it depends on is synced: this core's log up to the records
//! appended before the output was taken, and, on every other core this core
//! had sent routing batches to by then, the records those batches caused.
//!
//! The remote half works by sequence numbers, not barriers: each routing
//! batch to a core carries its number; the receiver, once its log is synced
//! past what it appended while handling the batch, confirms that number back
//! ([`super::mesh::Parcel::Durable`]). A [`Mark`] is this core's log position
//! and the batch numbers sent so far; it is durable once the log is synced
//! that far and every core has confirmed its number. Everything is
//! monotonic, so a writer never waits for output newer than its own, and one
//! fdatasync per core covers every connection waiting for it (group commit).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{Poll, Waker};

use crate::persist::Lsn;

/// What some output depends on: this core's log up to `lsn`, and what every
/// core journaled for the batches this core had sent it (`sent[core]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    lsn: Lsn,
    sent: Box<[u64]>,
}

/// One core's view of what is durable where.
#[derive(Debug)]
pub struct Durability {
    id: usize,
    state: RefCell<State>,
}

#[derive(Debug)]
struct State {
    /// Per core: routing batches sent to it.
    sent: Vec<u64>,
    /// Per core: the highest of those batches it confirmed on disk.
    confirmed: Vec<u64>,
    /// Batches other cores sent here, handled but not yet confirmed: the
    /// log position after handling them, their sender and number, in order.
    owed: VecDeque<(Lsn, usize, u64)>,
    /// Writers waiting for a mark.
    waiters: Vec<Waker>,
}

impl Durability {
    pub fn new(id: usize, cores: usize) -> Durability {
        Durability {
            id,
            state: RefCell::new(State {
                sent: vec![0; cores],
                confirmed: vec![0; cores],
                owed: VecDeque::new(),
                waiters: Vec::new(),
            }),
        }
    }

    /// Numbers the next routing batch for `core`.
    pub fn next_batch(&self, core: usize) -> u64 {
        let mut state = self.state.borrow_mut();
        state.sent[core] += 1;
        state.sent[core]
    }

    /// What output taken now depends on, with this core's log appended up
    /// to `lsn`.
    pub fn mark(&self, lsn: Lsn) -> Mark {
        Mark {
            lsn,
            sent: self.state.borrow().sent.clone().into_boxed_slice(),
        }
    }

    /// True once everything `mark` depends on is on disk, this core's log
    /// being synced up to `synced`.
    pub fn is_durable(&self, mark: &Mark, synced: Lsn) -> bool {
        let state = self.state.borrow();
        synced >= mark.lsn
            && mark
                .sent
                .iter()
                .zip(&state.confirmed)
                .enumerate()
                .all(|(core, (sent, confirmed))| core == self.id || confirmed >= sent)
    }

    /// Batch `seq` from core `from` was handled; what it caused was appended
    /// to this core's log up to `lsn`.
    pub fn handled(&self, from: usize, seq: u64, lsn: Lsn) {
        self.state.borrow_mut().owed.push_back((lsn, from, seq));
    }

    /// Core `from` confirmed the batches up to `seq` durable.
    pub fn confirmed(&self, from: usize, seq: u64) {
        let mut state = self.state.borrow_mut();
        if seq > state.confirmed[from] {
            state.confirmed[from] = seq;
        }
    }

    /// The confirmations owed now that this core's log is synced up to
    /// `synced`: per sender, the highest batch covered.
    pub fn due_confirmations(&self, synced: Lsn) -> Vec<(usize, u64)> {
        let mut state = self.state.borrow_mut();
        let mut due: Vec<(usize, u64)> = Vec::new();
        while let Some(&(lsn, from, seq)) = state.owed.front() {
            if lsn > synced {
                break;
            }
            state.owed.pop_front();
            match due.iter_mut().find(|(core, _)| *core == from) {
                Some(entry) => entry.1 = entry.1.max(seq),
                None => due.push((from, seq)),
            }
        }
        due
    }

    /// Something became durable: every waiting writer looks again.
    pub fn wake_all(&self) {
        let waiters = std::mem::take(&mut self.state.borrow_mut().waiters);
        for waker in waiters {
            waker.wake();
        }
    }

    /// Waits until `durable()` holds; looked at again after each
    /// [`Durability::wake_all`].
    pub async fn wait(&self, mut durable: impl FnMut() -> bool) {
        poll_fn(|cx| {
            if durable() {
                return Poll::Ready(());
            }
            self.state.borrow_mut().waiters.push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_waits_for_the_local_sync_and_every_remote_confirmation() {
        let d = Durability::new(0, 3);
        assert_eq!(d.next_batch(1), 1);
        assert_eq!(d.next_batch(2), 1);
        assert_eq!(d.next_batch(1), 2);
        let mark = d.mark(10);
        assert!(!d.is_durable(&mark, 9));
        assert!(!d.is_durable(&mark, 10), "no core confirmed yet");
        d.confirmed(1, 2);
        assert!(!d.is_durable(&mark, 10), "core 2 has not confirmed");
        d.confirmed(2, 1);
        assert!(d.is_durable(&mark, 10));
        assert!(!d.is_durable(&mark, 9), "the local log still counts");
        d.confirmed(1, 1);
        assert!(d.is_durable(&mark, 10), "confirmations never go back");
    }

    #[test]
    fn later_batches_do_not_hold_up_an_earlier_mark() {
        let d = Durability::new(0, 2);
        d.next_batch(1);
        let early = d.mark(1);
        d.next_batch(1);
        let late = d.mark(2);
        d.confirmed(1, 1);
        assert!(d.is_durable(&early, 2));
        assert!(!d.is_durable(&late, 2));
    }

    #[test]
    fn confirmations_are_owed_once_the_log_is_synced_past_them() {
        let d = Durability::new(2, 3);
        d.handled(0, 1, 5);
        d.handled(1, 1, 6);
        d.handled(0, 2, 6);
        d.handled(0, 3, 9);
        assert_eq!(d.due_confirmations(4), []);
        assert_eq!(d.due_confirmations(6), [(0, 2), (1, 1)]);
        assert_eq!(d.due_confirmations(8), []);
        assert_eq!(d.due_confirmations(9), [(0, 3)]);
    }
}
