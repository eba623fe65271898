//! Optional bounded busy-polling (`busy_poll_us`). A core that sleeps in the
//! kernel between packets pays a wake-up for the next one: the eventfd or
//! completion that ends its wait, a context switch, tens of microseconds on
//! a virtual machine. With a window set, a core that just had input keeps
//! its loop turning for that long instead, reaping completions and watching
//! its mesh inbox without blocking, and sleeps only once the window passed
//! quietly. Off by default: while it polls, the core's CPU is busy.

use std::cell::Cell;
use std::pin::pin;
use std::time::{Duration, Instant};

use futures::future::{select, Either};

use super::mesh::Doorbell;
use super::notify::{yield_now, Notify};

/// The longest a core polls without going through the kernel's wait: that
/// wait is also where it takes wake-ups from other threads (a password
/// check done, a store sync), which must not starve while traffic flows.
const MAX_STRETCH: Duration = Duration::from_millis(1);

/// One core's polling state.
pub struct BusyPoll {
    window: Duration,
    /// Bumped by every read that brought input: a poll window restarts there.
    inputs: Cell<u64>,
    /// Wakes a sleeping core's poller when input came.
    input: Notify,
    /// Turns spent polling so far.
    turns: Cell<u64>,
}

impl BusyPoll {
    /// The poller for a window of `us` microseconds; `None` for 0 (off).
    pub fn new(us: u32) -> Option<BusyPoll> {
        (us > 0).then(|| BusyPoll {
            window: Duration::from_micros(us.into()),
            inputs: Cell::new(0),
            input: Notify::default(),
            turns: Cell::new(0),
        })
    }

    /// Turns spent polling since the core started (for its counters).
    pub fn turns(&self) -> u64 {
        self.turns.get()
    }

    /// A connection's read brought input.
    pub fn note_input(&self) {
        self.inputs.set(self.inputs.get().wrapping_add(1));
        self.input.notify();
    }

    /// Waits until `doorbell` rings, as [`Doorbell::wait`] does, but polls
    /// while input keeps coming within the window. Once the window passed
    /// with no input, or polling went on for [`MAX_STRETCH`], it sleeps until
    /// the doorbell rings or new input comes, and then polls again.
    pub async fn wait(&self, doorbell: &Doorbell) {
        loop {
            if self.poll(doorbell).await {
                // Resolves at once: it clears the flag before the drain.
                doorbell.wait().await;
                return;
            }
            // Input seen while polling is handled: only new input (or a
            // ring) ends the sleep. Sleeping lets the runtime wait in the
            // kernel, where it also takes the wake-ups other threads sent.
            self.input.clear();
            let rung = pin!(doorbell.wait());
            let input = pin!(self.input.notified());
            if let Either::Left(_) = select(rung, input).await {
                return;
            }
        }
    }

    /// Polls until the doorbell rings (true), or the window passes with no
    /// input, or [`MAX_STRETCH`] passed (false). Each turn yields to the
    /// core's other tasks, which makes the runtime submit and reap its ring
    /// without waiting in the kernel.
    async fn poll(&self, doorbell: &Doorbell) -> bool {
        let started = Instant::now();
        let mut quiet_since = started;
        let mut seen = self.inputs.get();
        while !doorbell.is_rung() {
            yield_now().await;
            self.turns.set(self.turns.get() + 1);
            // One clock read per turn.
            let now = Instant::now();
            if self.inputs.get() != seen {
                seen = self.inputs.get();
                quiet_since = now;
            } else if now - quiet_since >= self.window {
                return false;
            }
            if now - started >= MAX_STRETCH {
                return false;
            }
        }
        true
    }
}
