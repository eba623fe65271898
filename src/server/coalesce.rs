//! A core's coalescing tick, for `read_coalesce_ms` and `write_coalesce_ms`:
//! a connection whose input or output keeps coming waits for the core's next
//! tick before its next read or write. Each such stream is then read or
//! written at most once a period, whatever it carries, and all of a core's
//! waiting streams go in the same turn of its loop.
//!
//! One timer serves the whole core: a periodic timerfd read through
//! io_uring, precise to microseconds and armed only while a stream waits.
//! monoio's own timer rounds a deadline up to a whole millisecond and then
//! parks for whole milliseconds, so a 1 ms sleep lasted 2.8 ms on average
//! in a fan-in: the latency paid bought fewer saved syscalls than it should.
//! On the epoll fallback monoio's timer paces the ticks, to a millisecond
//! or two.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use rustix::time::{
    timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags,
    Timespec,
};

/// The core's tick: streams wait on [`Tick::next`].
pub struct Tick {
    period: Duration,
    /// Ticks so far: a waiter is done once the count moved past what it saw.
    ticks: Cell<u64>,
    waiters: RefCell<Vec<Waker>>,
    /// Whether the task that ticks runs (it ends at a tick nobody waited for).
    running: Cell<bool>,
    /// `None` on the epoll fallback, or once the timerfd failed.
    timer: RefCell<Option<Rc<PeriodicTimer>>>,
}

impl Tick {
    /// A tick every `period`; `io_uring` says whether the core's runtime can
    /// read a timerfd.
    pub fn new(period: Duration, io_uring: bool) -> Rc<Tick> {
        let timer = io_uring
            .then(|| match PeriodicTimer::new() {
                Ok(t) => Some(Rc::new(t)),
                Err(e) => {
                    tracing::warn!(error = %e, "no timerfd: coalescing waits on the 1 ms timer");
                    None
                }
            })
            .flatten();
        Rc::new(Tick {
            period,
            ticks: Cell::new(0),
            waiters: RefCell::default(),
            running: Cell::new(false),
            timer: RefCell::new(timer),
        })
    }

    /// Completes at the core's next tick.
    pub fn next(self: &Rc<Self>) -> impl Future<Output = ()> + '_ {
        let seen = self.ticks.get();
        let mut waiting = false;
        poll_fn(move |cx| {
            if self.ticks.get() != seen {
                return Poll::Ready(());
            }
            if !waiting {
                waiting = true;
                self.waiters.borrow_mut().push(cx.waker().clone());
                if !self.running.replace(true) {
                    monoio::spawn(self.clone().run());
                }
            }
            Poll::Pending
        })
    }

    /// Ticks while anyone waits.
    async fn run(self: Rc<Self>) {
        let timer = self.timer.borrow().clone();
        let mut timer = timer.filter(|t| self.started(t));
        let mut expirations = vec![0u8; 8];
        loop {
            match &timer {
                Some(t) => {
                    let (res, buf) = t.file.read_at(expirations, 0).await;
                    expirations = buf;
                    if let Err(e) = res {
                        self.give_up_timer(&e);
                        timer = None;
                        monoio::time::sleep(self.period).await;
                    }
                }
                None => monoio::time::sleep(self.period).await,
            }
            self.ticks.set(self.ticks.get() + 1);
            let woken = std::mem::take(&mut *self.waiters.borrow_mut());
            if woken.is_empty() {
                break;
            }
            woken.into_iter().for_each(Waker::wake);
        }
        if let Some(t) = &timer {
            let _ = t.set(None);
        }
        self.running.set(false);
    }

    /// Arms the timer; on failure it is given up.
    fn started(&self, timer: &PeriodicTimer) -> bool {
        match timer.set(Some(self.period)) {
            Ok(()) => true,
            Err(e) => {
                self.give_up_timer(&e);
                false
            }
        }
    }

    fn give_up_timer(&self, e: &std::io::Error) {
        if self.timer.borrow_mut().take().is_some() {
            tracing::warn!(error = %e, "timerfd failed: coalescing waits on the 1 ms timer");
        }
    }
}

/// A timerfd that expires every period once set; io_uring reads it like a
/// stream (8 bytes: the expirations since the last read).
struct PeriodicTimer {
    /// A duplicate of the descriptor, for `timerfd_settime`.
    control: OwnedFd,
    file: monoio::fs::File,
}

impl PeriodicTimer {
    fn new() -> std::io::Result<PeriodicTimer> {
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        let control = fd.try_clone()?;
        let file = monoio::fs::File::from_std(std::fs::File::from(fd))?;
        Ok(PeriodicTimer { control, file })
    }

    /// Expires every `period` from now on; `None` disarms it (and clears
    /// expirations not read yet).
    fn set(&self, period: Option<Duration>) -> std::io::Result<()> {
        let every = match period {
            Some(p) => Timespec::try_from(p.max(Duration::from_micros(1)))
                .map_err(|_| std::io::Error::other("period out of range"))?,
            None => Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
        };
        let spec = Itimerspec {
            it_interval: every,
            it_value: every,
        };
        timerfd_settime(&self.control, TimerfdTimerFlags::empty(), &spec)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    const PERIOD: Duration = Duration::from_millis(2);
    /// A hang detector far beyond any tick, not a speed claim.
    const STUCK: Duration = Duration::from_secs(10);

    fn on_uring(f: impl Future<Output = ()> + 'static) {
        let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
            .expect("io_uring runtime");
        rt.block_on(async { monoio::spawn(f).await });
    }

    fn on_epoll(f: impl Future<Output = ()> + 'static) {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("epoll runtime");
        rt.block_on(async { monoio::spawn(f).await });
    }

    /// Waiters that came in the same period are woken together, no earlier
    /// than the period after the first waited; then the ticking stops and
    /// starts again for the next waiter.
    async fn waiters_share_a_tick_and_the_tick_restarts(io_uring: bool) {
        let tick = Tick::new(PERIOD, io_uring);
        let woke = Rc::new(Cell::new(0));
        let start = Instant::now();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let (tick, woke) = (tick.clone(), woke.clone());
                monoio::spawn(async move {
                    tick.next().await;
                    woke.set(woke.get() + 1);
                })
            })
            .collect();
        for w in waiters {
            monoio::time::timeout(STUCK, w).await.expect("a tick came");
        }
        assert_eq!(woke.get(), 3);
        assert_eq!(tick.ticks.get(), 1, "one tick woke all three");
        assert!(start.elapsed() >= PERIOD - Duration::from_micros(100));
        // Nobody waits at the next tick: the task ends. (No event tells it;
        // polled, bounded by the hang detector.)
        let ended = monoio::time::timeout(STUCK, async {
            while tick.running.get() {
                monoio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        ended.await.expect("the ticking ended with nobody waiting");
        monoio::time::timeout(STUCK, tick.next())
            .await
            .expect("ticking restarted");
        assert_eq!(tick.ticks.get(), 3, "the idle tick, then this one");
        assert_eq!(tick.timer.borrow().is_some(), io_uring);
    }

    #[test]
    fn io_uring_ticks_on_a_timerfd() {
        if !monoio::utils::detect_uring() {
            return;
        }
        on_uring(waiters_share_a_tick_and_the_tick_restarts(true));
    }

    #[test]
    fn epoll_ticks_on_the_runtime_timer() {
        on_epoll(waiters_share_a_tick_and_the_tick_restarts(false));
    }
}
