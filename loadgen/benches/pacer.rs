//! How late a sleeper wakes: the pacer's wake-up lateness, which an open-loop
//! publisher adds to every latency sample it stamps.
//!
//! Each iteration sleeps until a deadline a little ahead and measures how long
//! after it the task ran again. The time criterion reports is that lateness
//! per sleep (`iter_custom` returns the summed lateness, not the wall time).
//!
//! - `pacer/on_grid`: deadlines on the pacer's 100 µs grid, as send schedules
//!   are (`stats::Schedule::with_grain`): the timer's own lateness. With
//!   io_uring (a timerfd read) a fraction of a millisecond; this used to be a
//!   unit test asserting a median under 200 µs, which a busy machine fails.
//! - `pacer/off_grid`: arbitrary deadlines, which the pacer rounds up to the
//!   grid first (never early): adds up to one grain.
//! - `monoio_timer`: monoio's own 1 ms timer, for comparison (up to 2 ms late).
//!
//! On the epoll fallback (no io_uring) the pacer itself uses monoio's timer.
//!
//! Criterion budgets its time in reported time, here lateness, while every
//! sleep also takes its lead time on the wall clock: the budgets below are
//! small so that a run stays in seconds.

use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use loadgen::clock::Clock;
use loadgen::pacer::{Pacer, GRAIN_NS};

/// How far ahead each deadline is, at least.
const LEAD_NS: u64 = 150_000;
/// Steps the deadline's phase against the grid from one sleep to the next.
const STAGGER_NS: u64 = 17_000;

/// The `k`th deadline after `now`, rounded up to the grid if `on_grid`.
fn deadline(now: u64, k: u64, on_grid: bool) -> u64 {
    let due = now + LEAD_NS + (k * STAGGER_NS) % GRAIN_NS;
    if on_grid {
        due.div_ceil(GRAIN_NS) * GRAIN_NS
    } else {
        due
    }
}

/// Total lateness of `iters` pacer sleeps.
async fn pacer_lateness(pacer: &Rc<Pacer>, iters: u64, on_grid: bool) -> Duration {
    let mut late = 0;
    for k in 0..iters {
        let due = deadline(pacer.now_ns(), k, on_grid);
        pacer.sleep_until(due).await;
        late += pacer.now_ns() - due;
    }
    Duration::from_nanos(late)
}

/// Total lateness of `iters` sleeps on monoio's timer.
async fn monoio_lateness(iters: u64) -> Duration {
    let mut late = Duration::ZERO;
    for k in 0..iters {
        let lead = Duration::from_nanos(LEAD_NS + (k * STAGGER_NS) % GRAIN_NS);
        let due = Instant::now() + lead;
        monoio::time::sleep(lead).await;
        late += Instant::now().saturating_duration_since(due);
    }
    late
}

fn wake_lateness(c: &mut Criterion) {
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .expect("building the monoio runtime");
    let pacer = rt.block_on(async {
        let pacer = Pacer::new(Clock::new());
        // Lives in the runtime across block_on calls, like a worker's.
        monoio::spawn(pacer.clone().run());
        pacer
    });
    let timer = if pacer.is_precise() {
        "io_uring timerfd"
    } else {
        "monoio 1 ms timer (epoll fallback)"
    };
    eprintln!("pacer: {timer}");

    let mut group = c.benchmark_group("pacer");
    group
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(500))
        .sample_size(20);
    for (name, on_grid) in [("on_grid", true), ("off_grid", false)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| rt.block_on(pacer_lateness(&pacer, iters, on_grid)));
        });
    }
    group.finish();

    let mut group = c.benchmark_group("monoio_timer");
    group
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_secs(1))
        .sample_size(10);
    group.bench_function("sleep", |b| {
        b.iter_custom(|iters| rt.block_on(monoio_lateness(iters)));
    });
    group.finish();
}

criterion_group!(benches, wake_lateness);
criterion_main!(benches);
