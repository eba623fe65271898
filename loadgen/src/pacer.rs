//! The worker thread's timer service, precise to a few microseconds.
//!
//! monoio's own timer has a 1 ms grain and wakes up to 2 ms after a deadline
//! (it rounds the deadline up to a tick, then parks for whole ticks from the
//! current time). An open-loop publisher that wakes that late adds the delay to
//! every latency sample, hiding the difference between a 50 µs broker and a
//! 1 ms one. So each worker keeps its own deadline heap and wakes up with a
//! `timerfd` read through io_uring: the kernel's high-resolution timer
//! completes the read, no thread spins, and I/O keeps flowing while it waits.
//! Deadlines are rounded up to a [`GRAIN_NS`] grid so that many publishers
//! with staggered schedules share wake-ups: at most one per grain, never early.
//! Send schedules are laid on the same grid (see `stats::Schedule`), so the
//! grain costs no measured latency. `benches/pacer.rs` measures how late
//! wake-ups are, on and off the grid.
//!
//! On the epoll fallback (no io_uring) the pacer sleeps on monoio's timer:
//! correct, but only to about 2 ms.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::os::fd::OwnedFd;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::future::{select, Either};
use rustix::time::{
    timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags,
    Timespec,
};

use crate::clock::Clock;
use crate::signal::Notify;

/// Wake-up grain: deadlines are rounded up to a multiple of it. Bounds the
/// pacer's wake-ups (each a timerfd re-arm and read, costly in a VM) to 10,000
/// a second whatever the number of publishers.
pub const GRAIN_NS: u64 = 100_000;

/// `due` rounded up to the wake-up grain.
fn quantize(due: u64) -> u64 {
    due.div_ceil(GRAIN_NS) * GRAIN_NS
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

/// What the pacer task is doing, so that a new, earlier deadline can reach it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Running: it will look at the heap again by itself.
    Busy,
    /// Nothing to wait for: waiting for a kick.
    Idle,
    /// Waiting for the timer, set to this deadline.
    Armed(u64),
}

/// A timerfd read through io_uring: completes when the timer expires.
struct Alarm {
    /// A duplicate of the timer's descriptor, for `timerfd_settime`.
    control: OwnedFd,
    file: monoio::fs::File,
}

impl Alarm {
    fn new() -> std::io::Result<Alarm> {
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        let control = fd.try_clone()?;
        let file = monoio::fs::File::from_std(std::fs::File::from(fd))?;
        Ok(Alarm { control, file })
    }

    /// Expires once, `after` from now (re-arming replaces the deadline).
    fn set(&self, after: Duration) -> std::io::Result<()> {
        let value = Timespec::try_from(after.max(Duration::from_nanos(1)))
            .map_err(|_| std::io::Error::other("deadline out of range"))?;
        let spec = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: value,
        };
        timerfd_settime(&self.control, TimerfdTimerFlags::empty(), &spec)?;
        Ok(())
    }

    async fn wait(&self) -> std::io::Result<()> {
        // A timerfd ignores the offset; io_uring reads it like a stream.
        let (res, _) = self.file.read_at(vec![0u8; 8], 0).await;
        res.map(|_| ())
    }
}

pub struct Pacer {
    clock: Clock,
    heap: RefCell<BinaryHeap<Reverse<Entry>>>,
    seq: Cell<u64>,
    state: Cell<State>,
    kick: Notify,
    /// `None`: epoll fallback, or the timerfd failed; monoio's timer is used.
    alarm: RefCell<Option<Rc<Alarm>>>,
}

impl Pacer {
    pub fn new(clock: Clock) -> Rc<Pacer> {
        let alarm = monoio::utils::detect_uring()
            .then(|| Alarm::new().ok().map(Rc::new))
            .flatten();
        Rc::new(Pacer {
            clock,
            heap: RefCell::default(),
            seq: Cell::new(0),
            state: Cell::new(State::Busy),
            kick: Notify::default(),
            alarm: RefCell::new(alarm),
        })
    }

    /// Whether deadlines are precise (io_uring timerfd) or 1 ms grained.
    pub fn is_precise(&self) -> bool {
        self.alarm.borrow().is_some()
    }

    pub fn now_ns(&self) -> u64 {
        self.clock.now_ns()
    }

    /// Completes once the shared clock reads `due_ns` or later.
    pub fn sleep_until(self: &Rc<Self>, due_ns: u64) -> Sleep {
        Sleep {
            pacer: self.clone(),
            due: due_ns,
            slot: None,
        }
    }

    pub fn sleep(self: &Rc<Self>, d: Duration) -> Sleep {
        self.sleep_until(self.now_ns() + d.as_nanos() as u64)
    }

    fn register(&self, due: u64) -> Rc<Slot> {
        let due = quantize(due);
        let slot = Rc::new(Slot::default());
        let seq = self.seq.get();
        self.seq.set(seq + 1);
        self.heap.borrow_mut().push(Reverse(Entry {
            due,
            seq,
            slot: slot.clone(),
        }));
        match self.state.get() {
            State::Idle => self.kick.notify(),
            State::Armed(at) if due < at => self.rearm(due),
            _ => {}
        }
        slot
    }

    /// Moves the pending wait to an earlier deadline.
    fn rearm(&self, due: u64) {
        self.state.set(State::Armed(due));
        let now = self.now_ns();
        let alarm = self.alarm.borrow();
        match alarm.as_ref() {
            Some(a) if a.set(Duration::from_nanos(due.saturating_sub(now))).is_ok() => {}
            _ => self.kick.notify(),
        }
    }

    fn fire_due(&self, now: u64) {
        loop {
            let entry = {
                let mut heap = self.heap.borrow_mut();
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

    fn earliest(&self) -> Option<u64> {
        self.heap.borrow().peek().map(|Reverse(e)| e.due)
    }

    /// The pacer task: spawn once per worker thread; it never returns.
    pub async fn run(self: Rc<Self>) {
        loop {
            let now = self.now_ns();
            self.fire_due(now);
            match self.earliest() {
                None => {
                    self.state.set(State::Idle);
                    self.kick.notified().await;
                }
                Some(due) => {
                    self.state.set(State::Armed(due));
                    self.wait(due - now).await;
                }
            }
            self.state.set(State::Busy);
        }
    }

    async fn wait(&self, after: u64) {
        let after = Duration::from_nanos(after);
        let armed = {
            let alarm = self.alarm.borrow();
            alarm.as_ref().map(|a| a.set(after))
        };
        match armed {
            Some(Ok(())) => self.wait_alarm().await,
            Some(Err(e)) => self.give_up_alarm(&e),
            None => {
                let timer = pin!(monoio::time::sleep(after));
                let _ = select(timer, pin!(self.kick.notified())).await;
            }
        }
    }

    async fn wait_alarm(&self) {
        // A clone, so no RefCell borrow is held across the await.
        let alarm = self.alarm.borrow().clone();
        if let Some(Err(e)) = match alarm {
            Some(a) => Some(a.wait().await),
            None => None,
        } {
            self.give_up_alarm(&e);
        }
    }

    fn give_up_alarm(&self, e: &std::io::Error) {
        eprintln!("loadgen: timerfd unusable ({e}); falling back to the 1 ms timer");
        self.alarm.borrow_mut().take();
    }
}

/// A pending [`Pacer::sleep_until`].
pub struct Sleep {
    pacer: Rc<Pacer>,
    due: u64,
    slot: Option<Rc<Slot>>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.slot.is_none() {
            if self.pacer.now_ns() >= self.due {
                return Poll::Ready(());
            }
            let slot = self.pacer.register(self.due);
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

    /// How long a sleeper due within milliseconds may stay asleep before a
    /// test calls the pacer stuck: a hang detector far beyond any real
    /// lateness, not a speed claim (`benches/pacer.rs` measures lateness).
    const STUCK: Duration = Duration::from_secs(10);

    #[test]
    fn a_sleep_never_wakes_before_its_deadline() {
        block_on(async {
            let pacer = Pacer::new(Clock::new());
            monoio::spawn(pacer.clone().run());
            // Deadlines at every phase against the grain, timerfd or fallback.
            for i in 1..=50u64 {
                let due = pacer.now_ns() + 300_000 + i * 17_000;
                let woke = monoio::time::timeout(STUCK, pacer.sleep_until(due)).await;
                assert!(
                    woke.is_ok(),
                    "sleep {i}, due in under 2 ms, had not woken after {STUCK:?}"
                );
                let now = pacer.now_ns();
                assert!(now >= due, "sleep {i} woke {} ns early", due - now);
            }
        });
    }

    #[test]
    fn an_earlier_deadline_overtakes_a_later_one() {
        block_on(async {
            let pacer = Pacer::new(Clock::new());
            monoio::spawn(pacer.clone().run());
            let t0 = pacer.now_ns();
            let late = pacer.clone();
            monoio::spawn(async move { late.sleep(Duration::from_secs(3600)).await });
            // Let the pacer arm its timer for the hour first.
            monoio::time::sleep(Duration::from_millis(1)).await;
            let woke = monoio::time::timeout(STUCK, pacer.sleep(Duration::from_millis(3))).await;
            assert!(
                woke.is_ok(),
                "a 3 ms sleep behind a 1 h one had not woken after {STUCK:?}: \
                 the earlier deadline did not re-arm the timer"
            );
            let waited = pacer.now_ns() - t0;
            assert!(waited >= 3_000_000, "woke after {waited} ns, before 3 ms");
        });
    }

    #[test]
    fn timeout_fires_or_passes_through() {
        block_on(async {
            let pacer = Pacer::new(Clock::new());
            monoio::spawn(pacer.clone().run());
            let never = std::future::pending::<()>();
            let fired =
                monoio::time::timeout(STUCK, timeout(&pacer, Duration::from_millis(3), never))
                    .await;
            assert_eq!(
                fired,
                Ok(None),
                "a 3 ms timeout around a future that never completes"
            );
            assert_eq!(
                timeout(&pacer, Duration::from_secs(1), async { 7 }).await,
                Some(7)
            );
        });
    }
}
