//! What timing deliveries costs the message path: the sampler's countdown on
//! every delivery, a map entry for the one in SAMPLE_EVERY it keeps, the
//! lookup when its buffer is written and the histogram update.
//!
//! Run: `cargo bench --bench latency -- --warm-up-time 1 --measurement-time 2`

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use ringmq::latency::{Latency, Sampler, SAMPLE_EVERY};
use ringmq::time::Time;

/// Deliveries to this many sessions in turn, each written right after.
const SESSIONS: usize = 1000;

fn per_delivery(c: &mut Criterion) {
    let mut group = c.benchmark_group("latency");
    group.throughput(Throughput::Elements(SESSIONS as u64));
    group.bench_function("sample, take and record per delivery", |b| {
        let mut sampler = Sampler::default();
        let mut latency = Latency::default();
        let at = Time::from_millis(1);
        let now = Time::from_millis(2);
        b.iter(|| {
            for key in 0..SESSIONS {
                sampler.delivered(black_box(key), at);
                if let Some(received) = sampler.taken(key) {
                    latency.record(now.since(received));
                }
            }
        });
        black_box(latency.count());
    });
    group.bench_function("countdown only (no sample due)", |b| {
        let mut sampler: Sampler<usize> = Sampler::default();
        b.iter(|| {
            for key in 0..(SAMPLE_EVERY as usize - 1) {
                sampler.delivered(black_box(key), Time::ZERO);
            }
        });
    });
    group.bench_function("histogram record", |b| {
        let mut latency = Latency::default();
        b.iter(|| latency.record(black_box(Duration::from_micros(420))));
    });
    group.finish();
}

criterion_group!(benches, per_delivery);
criterion_main!(benches);
