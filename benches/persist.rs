//! Persistence log: group-committed appends in Always mode at several batch
//! sizes (100-byte records, on the disk under std::env::temp_dir()), and
//! recovery speed (from the page cache).
//!
//! Run: `cargo bench --bench persist -- --warm-up-time 1 --measurement-time 3`
//!
//! Besides criterion's time per batch, each append group prints syncs/s: the
//! fdatasyncs the writer made, over the time measured.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringmq::persist::{recover, FsyncPolicy, LogWriter, WriterConfig};

const RECORD: usize = 100;

fn writer(dir: &std::path::Path, fsync: FsyncPolicy) -> LogWriter {
    let tail = recover(dir).expect("recover").tail;
    let config = WriterConfig {
        fsync,
        ..WriterConfig::default()
    };
    LogWriter::open(config, tail, Box::new(|| {})).expect("open")
}

/// Appends `batch` records, then waits until the last is durable: what one
/// core does with a burst of QoS 1 PUBLISHes before acknowledging them.
fn append_batches(c: &mut Criterion) {
    let mut group = c.benchmark_group("persist_append_always");
    for batch in [1u64, 16, 256] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let w = writer(tmp.path(), FsyncPolicy::Always);
        let (mut syncs, mut spent) = (0u64, Duration::ZERO);
        group.throughput(Throughput::Elements(batch));
        group.bench_function(BenchmarkId::from_parameter(batch), |b| {
            b.iter_custom(|iters| {
                let before = w.syncs();
                let start = Instant::now();
                for _ in 0..iters {
                    for _ in 0..batch {
                        w.append(vec![7u8; RECORD]).expect("append");
                    }
                    w.flush().expect("durable");
                }
                let took = start.elapsed();
                syncs += w.syncs() - before;
                spent += took;
                took
            })
        });
        let per_sec = syncs as f64 / spent.as_secs_f64();
        println!("persist_append_always/{batch}: {per_sec:.0} syncs/s");
    }
    group.finish();
}

fn recovery(c: &mut Criterion) {
    const N: u64 = 200_000;
    let tmp = tempfile::tempdir().expect("tempdir");
    let w = writer(tmp.path(), FsyncPolicy::Periodic(Duration::from_secs(1)));
    for _ in 0..N {
        w.append(vec![7u8; RECORD]).expect("append");
    }
    drop(w);
    let mut group = c.benchmark_group("persist_recover");
    group.throughput(Throughput::Elements(N));
    group.bench_function("100B", |b| {
        b.iter(|| {
            let r = recover(tmp.path()).expect("recover");
            assert_eq!(r.records.len() as u64, N);
            r
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = append_batches, recovery
}
criterion_main!(benches);
