//! The worker thread's timer service, precise to microseconds.
//!
//! monoio's own timer has a 1 ms resolution. An open-loop publisher that wakes
//! up to 1 ms after each intended send time adds that delay to every latency
//! sample, which would hide the difference between a 50 µs broker and a 500 µs
//! one. So the pacer sleeps on monoio's timer only until `spin` before the next
//! *precise* deadline, then yields to the runtime in a loop (other tasks and
//! io_uring completions keep running) until the deadline passes.
//!
//! While the pacer spins the runtime never parks, and monoio only fires its own
//! timers when it parks: so every sleep of a worker, precise or not, goes
//! through the pacer. *Coarse* sleeps (keep-alive, control polling) never make
//! it spin and fire within about a millisecond.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::future::{select, Either};

use crate::clock::Clock;
use crate::signal::{yield_now, Notify};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// Spin the last stretch: for send schedules.
    Precise,
    /// About a millisecond late is fine: for housekeeping.
    Coarse,
}

#[derive(Default)]
struct Slot {
    fired: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

struct Entry {
    due: u64,
    seq: u64,
    slot: Rc<Slot>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

type Heap = RefCell<BinaryHeap<Reverse<Entry>>>;

pub struct Pacer {
    clock: Clock,
    spin_ns: u64,
    precise: Heap,
    coarse: Heap,
    seq: Cell<u64>,
    /// When the pacer task looks at the heaps next; an earlier entry kicks it.
    next_check: Cell<u64>,
    kick: Notify,
}

impl Pacer {
    /// `spin` zero turns spinning off: every sleep then has monoio's 1 ms grain.
    pub fn new(clock: Clock, spin: Duration) -> Rc<Pacer> {
        Rc::new(Pacer {
            clock,
            spin_ns: spin.as_nanos() as u64,
            precise: RefCell::default(),
            coarse: RefCell::default(),
            seq: Cell::new(0),
            next_check: Cell::new(u64::MAX),
            kick: Notify::default(),
        })
    }

    pub fn now_ns(&self) -> u64 {
        self.clock.now_ns()
    }

    /// Completes once the shared clock reads `due_ns` or later.
    pub fn sleep_until(self: &Rc<Self>, due_ns: u64, precision: Precision) -> Sleep {
        Sleep {
            pacer: self.clone(),
            due: due_ns,
            precision,
            slot: None,
        }
    }

    pub fn sleep(self: &Rc<Self>, d: Duration) -> Sleep {
        self.sleep_until(self.now_ns() + d.as_nanos() as u64, Precision::Coarse)
    }

    fn register(&self, due: u64, precision: Precision) -> Rc<Slot> {
        let slot = Rc::new(Slot::default());
        let seq = self.seq.get();
        self.seq.set(seq + 1);
        let heap = match precision {
            Precision::Precise => &self.precise,
            Precision::Coarse => &self.coarse,
        };
        heap.borrow_mut().push(Reverse(Entry {
            due,
            seq,
            slot: slot.clone(),
        }));
        if due < self.next_check.get() {
            self.kick.notify();
        }
        slot
    }

    fn fire_due(heap: &Heap, now: u64) {
        loop {
            let entry = {
                let mut heap = heap.borrow_mut();
                match heap.peek() {
                    Some(Reverse(e)) if e.due <= now => heap.pop().map(|Reverse(e)| e),
                    _ => None,
                }
            };
            let Some(entry) = entry else { return };
            entry.slot.fired.set(true);
            if let Some(waker) = entry.slot.waker.take() {
                waker.wake();
            }
        }
    }

    fn earliest(heap: &Heap) -> Option<u64> {
        heap.borrow().peek().map(|Reverse(e)| e.due)
    }

    /// The pacer task: spawn once per worker thread; it never returns.
    pub async fn run(self: Rc<Self>) {
        loop {
            let now = self.now_ns();
            Self::fire_due(&self.precise, now);
            Self::fire_due(&self.coarse, now);
            let precise = Self::earliest(&self.precise);
            let coarse = Self::earliest(&self.coarse);
            if precise.is_some_and(|p| p <= now + self.spin_ns) {
                self.next_check.set(now);
                yield_now().await;
                continue;
            }
            let target = match (precise.map(|p| p - self.spin_ns), coarse) {
                (Some(p), Some(c)) => p.min(c),
                (p, c) => p.or(c).unwrap_or(u64::MAX),
            };
            self.next_check.set(target);
            self.park_until(target, now).await;
        }
    }

    /// Sleeps on monoio's timer until `target`, or until a new, earlier entry kicks us.
    async fn park_until(&self, target: u64, now: u64) {
        if target == u64::MAX {
            return self.kick.notified().await;
        }
        let timer = pin!(monoio::time::sleep(Duration::from_nanos(target - now)));
        let kicked = pin!(self.kick.notified());
        let _ = select(timer, kicked).await;
    }
}

/// A pending [`Pacer::sleep_until`].
pub struct Sleep {
    pacer: Rc<Pacer>,
    due: u64,
    precision: Precision,
    slot: Option<Rc<Slot>>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.slot.is_none() {
            if self.pacer.now_ns() >= self.due {
                return Poll::Ready(());
            }
            let slot = self.pacer.register(self.due, self.precision);
            self.slot = Some(slot);
        }
        let slot = self.slot.as_ref().expect("registered above");
        if slot.fired.get() {
            return Poll::Ready(());
        }
        slot.waker.set(Some(cx.waker().clone()));
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        // The heap entry stays until due, then fires nobody.
        if let Some(slot) = &self.slot {
            slot.waker.take();
        }
    }
}

/// Runs `fut` for at most `limit`; `None` when the time ran out first.
pub async fn timeout<F: Future>(pacer: &Rc<Pacer>, limit: Duration, fut: F) -> Option<F::Output> {
    let fut = pin!(fut);
    let timer = pin!(pacer.sleep(limit));
    match select(fut, timer).await {
        Either::Left((out, _)) => Some(out),
        Either::Right(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: Future>(fut: F) -> F::Output {
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        rt.block_on(fut)
    }

    #[test]
    fn precise_sleep_wakes_within_a_fraction_of_a_millisecond() {
        block_on(async {
            let pacer = Pacer::new(Clock::new(), Duration::from_millis(1));
            monoio::spawn(pacer.clone().run());
            let mut worst = 0;
            for i in 1..=50u64 {
                let due = pacer.now_ns() + 1_300_000 + i * 17_000;
                pacer.sleep_until(due, Precision::Precise).await;
                worst = worst.max(pacer.now_ns() - due);
            }
            assert!(worst < 500_000, "woke {worst} ns late");
        });
    }

    #[test]
    fn coarse_sleep_and_timeout_fire() {
        block_on(async {
            let pacer = Pacer::new(Clock::new(), Duration::from_millis(1));
            monoio::spawn(pacer.clone().run());
            let t0 = pacer.now_ns();
            pacer.sleep(Duration::from_millis(5)).await;
            assert!(pacer.now_ns() - t0 >= 5_000_000);
            let never = std::future::pending::<()>();
            assert!(timeout(&pacer, Duration::from_millis(3), never).await.is_none());
            assert_eq!(timeout(&pacer, Duration::from_secs(1), async { 7 }).await, Some(7));
        });
    }
}
