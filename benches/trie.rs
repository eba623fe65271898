//! Routing hot path: subscription-trie matching at several fleet sizes, and
//! topic-name validation.
//!
//! Run: `cargo bench --bench trie -- --warm-up-time 1 --measurement-time 2`

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use ringmq::topic::{MatchScratch, TopicName, Trie};

const REGIONS: u64 = 16;

/// xorshift64: deterministic and dependency-free, so runs are comparable.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A realistic fleet mix: ~80% exact telemetry filters, ~15% single-level
/// wildcards, ~5% region-wide `#`, plus two global `#` (monitoring).
fn fleet_filter(rng: &mut XorShift, devices: u64) -> String {
    let region = rng.below(REGIONS);
    let device = rng.below(devices);
    match rng.below(100) {
        0..=79 => format!("fleet/r{region}/d{device}/telemetry"),
        80..=87 => format!("fleet/r{region}/+/alarm"),
        88..=94 => format!("fleet/r{region}/d{device}/+"),
        _ => format!("fleet/r{region}/#"),
    }
}

/// A trie with `subs` subscriptions (subscriber ids grouped per filter, as
/// the broker stores them) and a topic that hits one of its exact filters.
fn fleet(subs: u32) -> (Trie<Vec<u32>>, String) {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let devices = u64::from(subs).max(16);
    let mut trie = Trie::new();
    let mut topic = None;
    for id in 0..subs.saturating_sub(2) {
        let filter = fleet_filter(&mut rng, devices);
        if filter.ends_with("/telemetry") {
            topic.get_or_insert_with(|| filter.clone());
        }
        trie.get_or_insert_with(&filter, Vec::new).push(id);
    }
    for id in [subs - 2, subs - 1] {
        trie.get_or_insert_with("#", Vec::new).push(id);
    }
    (trie, topic.expect("mix contains a telemetry filter"))
}

fn bench_match(c: &mut Criterion) {
    let mut group = c.benchmark_group("trie_match");
    for subs in [10, 1_000, 100_000] {
        let (trie, topic) = fleet(subs);
        let mut scratch = MatchScratch::new();
        group.bench_function(format!("{subs}_subs"), |b| {
            b.iter(|| {
                let mut receivers = 0usize;
                trie.for_each_match_with(black_box(&topic), &mut scratch, |ids| {
                    receivers += ids.len();
                });
                receivers
            })
        });
        let miss = "fleet/r3/unknown-device/telemetry";
        group.bench_function(format!("{subs}_subs_miss"), |b| {
            b.iter(|| {
                let mut receivers = 0usize;
                trie.for_each_match_with(black_box(miss), &mut scratch, |ids| {
                    receivers += ids.len();
                });
                receivers
            })
        });
    }
    group.finish();
}

fn bench_validate(c: &mut Criterion) {
    let raw = Bytes::from_static(b"fleet/eu-west-1/device-004217/telemetry");
    c.bench_function("topic_name_new", |b| {
        b.iter(|| TopicName::new(black_box(raw.clone()), 32).is_ok())
    });
}

criterion_group!(benches, bench_match, bench_validate);
criterion_main!(benches);
