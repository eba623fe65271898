//! Writer and recovery together, on real files in temporary directories,
//! with faults injected through [`FaultyIo`]. No test asserts on timing.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

const REC: usize = 100;
/// Bytes a 100-byte record takes in a segment.
const FRAMED: u64 = (RECORD_HEADER_LEN + REC) as u64;

/// A 100-byte record that says which it is.
fn rec(i: u64) -> Vec<u8> {
    let mut r = vec![(i % 251) as u8; REC];
    r[..8].copy_from_slice(&i.to_le_bytes());
    r
}

/// Appends record `i`.
fn put(w: &LogWriter, i: u64) {
    w.append(rec(i)).expect("append");
}

fn cfg(fsync: FsyncPolicy, segment_bytes: u64) -> WriterConfig {
    WriterConfig {
        fsync,
        segment_bytes,
        max_backoff: Duration::from_millis(5),
        shutdown_timeout: Duration::from_secs(5),
        ..WriterConfig::default()
    }
}

fn open(dir: &Path, config: WriterConfig, faults: &Arc<Faults>) -> LogWriter {
    let tail = recover(dir).expect("recover").tail;
    let io = Box::new(FaultyIo::new(faults.clone()));
    LogWriter::open_with_io(config, tail, Box::new(|| {}), io).expect("open")
}

fn bodies(r: &Recovered) -> Vec<Vec<u8>> {
    r.records.iter().map(|b| b.to_vec()).collect()
}

fn expected(range: std::ops::RangeInclusive<u64>) -> Vec<Vec<u8>> {
    range.map(rec).collect()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .collect();
    v.sort();
    v
}

/// Polls `cond` for up to 10 s: bounds a test without asserting on timing.
fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn missing_directory_recovers_empty() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = core_dir(tmp.path(), 3);
    let r = recover(&dir).expect("recover");
    assert!(r.records.is_empty() && dir.is_dir());
    assert_eq!(r.tail.dir(), dir);
}

#[test]
fn round_trip_across_rotation_and_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let faults = Faults::new();
    let w = open(tmp.path(), cfg(FsyncPolicy::Always, 1024), &faults);
    for i in 1..=300 {
        assert_eq!(w.append(rec(i)), Ok(i));
    }
    assert_eq!(w.flush(), Ok(300));
    drop(w);
    assert!(segments(tmp.path()).len() > 20, "rotated");
    let w = open(tmp.path(), cfg(FsyncPolicy::Always, 1024), &faults);
    (301..=310).for_each(|i| put(&w, i));
    drop(w);
    let r = recover(tmp.path()).expect("recover");
    assert_eq!(bodies(&r), expected(1..=310));
    assert_eq!((r.torn_records, r.torn_bytes), (0, 0));
}

#[test]
fn oversized_record_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let w = open(
        tmp.path(),
        cfg(FsyncPolicy::Always, 1 << 20),
        &Faults::new(),
    );
    let big = vec![0u8; MAX_RECORD_LEN as usize + 1];
    assert_eq!(
        w.append(big),
        Err(RecordTooLarge(MAX_RECORD_LEN as usize + 1))
    );
    assert_eq!(w.last_lsn(), 0);
}

/// Five records, crash, then every cut inside the last record recovers the
/// first four, truncates the rest for good, and the log carries on.
#[test]
fn torn_last_record_at_every_offset() {
    let src = tempfile::tempdir().expect("tempdir");
    let w = open(
        src.path(),
        cfg(FsyncPolicy::Always, 1 << 20),
        &Faults::new(),
    );
    (1..=5).for_each(|i| put(&w, i));
    w.flush().expect("flush");
    w.crash();
    let [seg] = segments(src.path()).try_into().expect("one segment");
    let full = std::fs::read(&seg).expect("read");
    let last_start = full.len() - FRAMED as usize;
    for cut in last_start..full.len() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join(seg.file_name().expect("name"));
        std::fs::write(&path, &full[..cut]).expect("write");
        let r = recover(tmp.path()).expect("recover");
        assert_eq!(bodies(&r), expected(1..=4), "cut at {cut}");
        let torn = cut - last_start;
        assert_eq!(
            (r.torn_records, r.torn_bytes),
            (u64::from(torn > 0), torn as u64)
        );
        assert_eq!(
            std::fs::metadata(&path).expect("meta").len(),
            last_start as u64
        );
        let w = LogWriter::open(cfg(FsyncPolicy::Always, 1 << 20), r.tail, Box::new(|| {}));
        let w = w.expect("open");
        w.append(rec(9)).expect("append");
        drop(w);
        let again = recover(tmp.path()).expect("recover again");
        assert_eq!(again.records.len(), 5);
        assert_eq!(again.torn_records, 0);
    }
}

#[test]
fn checksum_failure_at_the_end_of_the_last_record_is_torn() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let w = open(
        tmp.path(),
        cfg(FsyncPolicy::Always, 1 << 20),
        &Faults::new(),
    );
    (1..=3).for_each(|i| put(&w, i));
    drop(w);
    let [seg] = segments(tmp.path()).try_into().expect("one segment");
    let mut bytes = std::fs::read(&seg).expect("read");
    let n = bytes.len();
    bytes[n - 1] ^= 0xff;
    std::fs::write(&seg, &bytes).expect("write");
    let r = recover(tmp.path()).expect("recover");
    assert_eq!(bodies(&r), expected(1..=2));
    assert_eq!((r.torn_records, r.torn_bytes), (1, FRAMED));
}

fn corrupt_kind(e: RecoveryError) -> (PathBuf, u64, Corruption) {
    let msg = e.to_string();
    assert!(msg.contains("--persistence false") && msg.contains("move the directory away"));
    match e {
        RecoveryError::Corrupt { path, offset, kind } => {
            assert!(msg.contains(&path.display().to_string()) && msg.contains("byte"));
            (path, offset, kind)
        }
        RecoveryError::Io { .. } => panic!("expected corruption, got {msg}"),
    }
}

#[test]
fn flipped_byte_in_the_middle_names_file_and_offset() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let w = open(
        tmp.path(),
        cfg(FsyncPolicy::Always, 1 << 20),
        &Faults::new(),
    );
    (1..=3).for_each(|i| put(&w, i));
    drop(w);
    let [seg] = segments(tmp.path()).try_into().expect("one segment");
    let mut bytes = std::fs::read(&seg).expect("read");
    let second = HEADER_LEN + FRAMED as usize;
    bytes[second + 50] ^= 0x01;
    std::fs::write(&seg, &bytes).expect("write");
    let e = recover(tmp.path()).expect_err("corrupt");
    let (path, offset, kind) = corrupt_kind(e);
    assert_eq!(
        (path, offset, kind),
        (seg, second as u64, Corruption::RecordChecksum)
    );
}

/// A torn-looking end anywhere but the last segment is damage, not a crash.
#[test]
fn truncated_record_in_an_earlier_segment_is_an_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let w = open(tmp.path(), cfg(FsyncPolicy::Always, 300), &Faults::new());
    (1..=6).for_each(|i| put(&w, i));
    drop(w);
    let segs = segments(tmp.path());
    assert!(segs.len() >= 2);
    let len = std::fs::metadata(&segs[0]).expect("meta").len();
    let f = std::fs::OpenOptions::new().write(true).open(&segs[0]);
    f.expect("open").set_len(len - 3).expect("truncate");
    let (path, _, kind) = corrupt_kind(recover(tmp.path()).expect_err("corrupt"));
    assert_eq!((path, kind), (segs[0].clone(), Corruption::RecordTruncated));
}

#[test]
fn bad_magic_and_unknown_version() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let seg = segment_path(tmp.path(), 0);
    std::fs::write(&seg, [0u8; 64]).expect("write");
    let (_, offset, kind) = corrupt_kind(recover(tmp.path()).expect_err("magic"));
    assert_eq!((offset, kind), (0, Corruption::BadMagic));

    let mut h = format::encode_header(0, 0);
    h[8..10].copy_from_slice(&2u16.to_le_bytes());
    let crc = crc32c::crc32c(&h[..28]);
    h[28..].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&seg, h).expect("write");
    let (_, _, kind) = corrupt_kind(recover(tmp.path()).expect_err("version"));
    assert_eq!(kind, Corruption::UnknownVersion(2));

    std::fs::write(&seg, format::encode_header(5, 0)).expect("write");
    let (_, _, kind) = corrupt_kind(recover(tmp.path()).expect_err("seq"));
    assert_eq!(kind, Corruption::SeqMismatch(5));
}

/// The writer cannot create its first segment while the fault is on, so every
/// append piles up; once it clears, they go out in one write and one sync.
#[test]
fn group_commit_syncs_once_for_a_queue() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let faults = Faults::new();
    faults.fail_dir_ops.store(true, Ordering::SeqCst);
    let w = open(tmp.path(), cfg(FsyncPolicy::Always, 1 << 30), &faults);
    (1..=1000).for_each(|i| put(&w, i));
    wait_for("a failed create", || w.failed_ops() > 0);
    faults.fail_dir_ops.store(false, Ordering::SeqCst);
    assert_eq!(w.flush_timeout(Duration::from_secs(10)), Ok(1000));
    // One header sync for the new segment, then one per batch drained.
    assert!(faults.syncs() <= 3, "{} syncs", faults.syncs());
    assert!(w.syncs() <= 2, "{} published syncs", w.syncs());
    assert_eq!(faults.writes.load(Ordering::SeqCst), 1 + w.syncs());
}

/// Records durable per the test IO: every file's synced bytes, minus header.
fn durable_records(faults: &Faults) -> u64 {
    let data = |len: u64| len.saturating_sub(HEADER_LEN as u64) / FRAMED;
    faults.durable().into_iter().map(|(_, len)| data(len)).sum()
}

/// Always mode: synced() never runs ahead of what the IO layer has synced,
/// even with fdatasync failing on and off.
#[test]
fn synced_never_exceeds_durable() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let faults = Faults::new();
    let w = Arc::new(open(tmp.path(), cfg(FsyncPolicy::Always, 1 << 30), &faults));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (w, faults, stop) = (w.clone(), faults.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let synced = w.synced();
                let durable = durable_records(&faults);
                assert!(synced <= durable, "synced {synced} > durable {durable}");
            }
        })
    };
    for i in 1..=2000 {
        if i % 200 == 0 {
            let on = !faults.fail_syncs.load(Ordering::SeqCst);
            faults.fail_syncs.store(on, Ordering::SeqCst);
        }
        w.append(rec(i)).expect("append");
    }
    faults.fail_syncs.store(false, Ordering::SeqCst);
    assert_eq!(w.flush_timeout(Duration::from_secs(10)), Ok(2000));
    stop.store(true, Ordering::SeqCst);
    watcher.join().expect("watcher held");
    assert_eq!(durable_records(&faults), 2000);
}

/// Disk full (writes land half their bytes, then ENOSPC): appends keep
/// returning, synced stalls, and after the fault clears everything is there
/// exactly once, in order.
#[test]
fn enospc_stalls_then_resumes_without_loss_or_duplicates() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let faults = Faults::new();
    let w = open(tmp.path(), cfg(FsyncPolicy::Always, 4096), &faults);
    (1..=50).for_each(|i| put(&w, i));
    assert_eq!(w.flush(), Ok(50));
    faults.fail_writes.store(true, Ordering::SeqCst);
    let before = w.failed_ops();
    (51..=150).for_each(|i| put(&w, i));
    wait_for("three failed writes", || w.failed_ops() >= before + 3);
    assert_eq!(w.synced(), 50);
    let health = w.health().expect_err("unhealthy");
    assert!(health.contains("No space left"), "{health}");
    faults.fail_writes.store(false, Ordering::SeqCst);
    assert_eq!(w.flush_timeout(Duration::from_secs(10)), Ok(150));
    assert_eq!(w.health(), Ok(()));
    drop(w);
    assert_eq!(
        bodies(&recover(tmp.path()).expect("recover")),
        expected(1..=150)
    );
}

/// Every kind of operation failing (read-only directory, EIO on sync): the
/// same, across rotations.
#[test]
fn all_operations_failing_then_recovering() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let faults = Faults::new();
    let w = open(tmp.path(), cfg(FsyncPolicy::Always, 1024), &faults);
    for round in 0..4u64 {
        let failing = round % 2 == 0;
        faults.fail_all(failing);
        let before = w.failed_ops();
        (1..=40).for_each(|i| put(&w, round * 40 + i));
        if failing {
            wait_for("failures", || w.failed_ops() > before);
        }
    }
    faults.fail_all(false);
    assert_eq!(w.flush_timeout(Duration::from_secs(10)), Ok(160));
    drop(w);
    assert_eq!(
        bodies(&recover(tmp.path()).expect("recover")),
        expected(1..=160)
    );
}

/// A disk that never comes back: drop gives up after `shutdown_timeout`
/// (even behind a compaction that cannot be written), flush says why, and
/// what was synced before is still there.
#[test]
fn drop_gives_up_on_a_dead_disk() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let faults = Faults::new();
    let mut config = cfg(FsyncPolicy::Always, 1 << 20);
    config.shutdown_timeout = Duration::from_millis(50);
    let w = open(tmp.path(), config, &faults);
    (1..=5).for_each(|i| put(&w, i));
    w.flush().expect("flush");
    faults.fail_all(true);
    (6..=9).for_each(|i| put(&w, i));
    w.compact(expected(100..=101)).expect("compact");
    let e = w
        .flush_timeout(Duration::from_millis(20))
        .expect_err("not durable");
    assert_eq!((e.target, e.synced), (10, 5));
    drop(w);
    // Half-written batches may have reached the file (not the disk): any
    // prefix from the synced records on, never the unwritten snapshot.
    let got = bodies(&recover(tmp.path()).expect("recover"));
    assert!((5..=9).contains(&got.len()), "{} records", got.len());
    assert!(got == expected(1..=got.len() as u64));
}

#[test]
fn periodic_mode_syncs_on_flush_and_drop() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let faults = Faults::new();
    let hour = FsyncPolicy::Periodic(Duration::from_secs(3600));
    let w = open(tmp.path(), cfg(hour, 1 << 20), &faults);
    (1..=10).for_each(|i| put(&w, i));
    wait_for("the records written", || {
        faults.writes.load(Ordering::SeqCst) >= 2
    });
    assert_eq!(w.synced(), 0, "no sync before the interval");
    assert_eq!(w.flush(), Ok(10));
    (11..=20).for_each(|i| put(&w, i));
    drop(w); // as at SIGTERM
    faults.power_cut(0).expect("power cut");
    assert_eq!(
        bodies(&recover(tmp.path()).expect("recover")),
        expected(1..=20)
    );
}

#[test]
fn periodic_mode_syncs_each_interval() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let faults = Faults::new();
    let ms = FsyncPolicy::Periodic(Duration::from_millis(20));
    let w = open(tmp.path(), cfg(ms, 1 << 20), &faults);
    (1..=10).for_each(|i| put(&w, i));
    wait_for("the periodic sync", || w.synced() == 10);
}

#[test]
fn notify_runs_after_each_sync() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rang = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let r = rang.clone();
    let notify = Box::new(move || {
        r.fetch_add(1, Ordering::SeqCst);
    });
    let tail = recover(tmp.path()).expect("recover").tail;
    let w = LogWriter::open(cfg(FsyncPolicy::Always, 1 << 20), tail, notify).expect("open");
    w.append(rec(1)).expect("append");
    w.flush().expect("flush");
    assert!(w.syncs() >= 1);
    // It runs on the writer thread just after synced() moves.
    wait_for("notify", || rang.load(Ordering::SeqCst) == w.syncs());
}

#[test]
fn compaction_replaces_older_segments() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let faults = Faults::new();
    let w = open(tmp.path(), cfg(FsyncPolicy::Always, 1024), &faults);
    (1..=100).for_each(|i| put(&w, i));
    let lsn = w.compact(expected(1001..=1003)).expect("compact");
    assert_eq!(lsn, 101);
    (104..=108).for_each(|i| put(&w, i));
    assert_eq!(w.flush(), Ok(106));
    drop(w);
    let files = segments(tmp.path());
    assert!(files.len() <= 2, "old segments deleted: {files:?}");
    let r = recover(tmp.path()).expect("recover");
    let mut want = expected(1001..=1003);
    want.extend(expected(104..=108));
    assert_eq!(bodies(&r), want);
}

fn copy_dir(from: &Path, to: &Path) {
    for f in segments(from) {
        let name = f.file_name().expect("name");
        std::fs::copy(&f, to.join(name)).expect("copy");
    }
}

/// The directory as a crash at each step of a compaction leaves it.
#[test]
fn compaction_crash_points() {
    let before = tempfile::tempdir().expect("tempdir");
    let after = tempfile::tempdir().expect("tempdir");
    let w = open(
        before.path(),
        cfg(FsyncPolicy::Always, 1024),
        &Faults::new(),
    );
    (1..=30).for_each(|i| put(&w, i));
    drop(w);
    copy_dir(before.path(), after.path());
    let w = open(
        after.path(),
        cfg(FsyncPolicy::Always, 1 << 20),
        &Faults::new(),
    );
    w.compact(expected(500..=501)).expect("compact");
    drop(w);
    let [snap] = segments(after.path())
        .try_into()
        .expect("only the snapshot left");
    let snap_name = snap.file_name().expect("name").to_owned();
    let old = expected(1..=30);
    let new = expected(500..=501);
    let old_segs = segments(before.path());

    // 1. Snapshot written (fully or partly) under .tmp, not renamed.
    let snap_bytes = std::fs::read(&snap).expect("read");
    for len in [0, HEADER_LEN + 3, snap_bytes.len()] {
        let d = tempfile::tempdir().expect("tempdir");
        copy_dir(before.path(), d.path());
        let tmp_name = format!("{}.tmp", snap_name.to_string_lossy());
        std::fs::write(d.path().join(&tmp_name), &snap_bytes[..len]).expect("write");
        assert_eq!(bodies(&recover(d.path()).expect("recover")), old);
        assert!(!d.path().join(tmp_name).exists(), "tmp removed");
    }
    // 2. Renamed, then some or none of the old segments deleted.
    for keep in 0..=old_segs.len() {
        let d = tempfile::tempdir().expect("tempdir");
        copy_dir(before.path(), d.path());
        for gone in &old_segs[keep..] {
            std::fs::remove_file(d.path().join(gone.file_name().expect("name"))).expect("rm");
        }
        std::fs::copy(&snap, d.path().join(&snap_name)).expect("copy");
        let r = recover(d.path()).expect("recover");
        assert_eq!(bodies(&r), new, "keeping {keep} old segments");
        // The next writer deletes what the crash left behind.
        let w = open(d.path(), cfg(FsyncPolicy::Always, 1 << 20), &Faults::new());
        w.compact(new.clone()).expect("compact");
        drop(w);
        assert_eq!(segments(d.path()).len(), 1);
    }
}

#[test]
fn each_recovered_record_owns_its_bytes() {
    // A record that outlives recovery (a retained message, a queued one)
    // must not keep its whole segment buffer alive.
    let tmp = tempfile::tempdir().expect("tempdir");
    let w = open(
        tmp.path(),
        cfg(FsyncPolicy::Always, 1 << 20),
        &Faults::new(),
    );
    (1..=3).for_each(|i| put(&w, i));
    drop(w);
    let r = recover(tmp.path()).expect("recover");
    for record in r.records {
        assert!(
            record.try_into_mut().is_ok(),
            "a record shares its buffer with the segment"
        );
    }
}

mod model {
    //! Random append / flush / compact / fault sequences on small segments
    //! (so they rotate), then a crash and a power cut that keeps a random
    //! part of the unsynced tail: recovery yields the log as it stood at some LSN between what was
    //! synced and what was appended, never anything else.

    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Append(usize),
        Flush,
        Compact(usize),
        /// Every file operation fails (ENOSPC / EIO) until switched off.
        Faults(bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0usize..300).prop_map(Op::Append),
            1 => Just(Op::Flush),
            1 => (0usize..4).prop_map(Op::Compact),
            1 => any::<bool>().prop_map(Op::Faults),
        ]
    }

    fn body(n: u64, len: usize) -> Vec<u8> {
        let mut b = n.to_le_bytes().to_vec();
        b.resize(len.max(8), n as u8);
        b
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn recovers_a_state_between_synced_and_appended(
            ops in proptest::collection::vec(op(), 1..40),
            periodic in any::<bool>(),
            keep_extra in 0u64..400,
        ) {
            let tmp = tempfile::tempdir().expect("tempdir");
            let faults = Faults::new();
            let policy = if periodic {
                FsyncPolicy::Periodic(Duration::from_millis(2))
            } else {
                FsyncPolicy::Always
            };
            let w = open(tmp.path(), cfg(policy, 512), &faults);
            let mut states: Vec<Vec<Vec<u8>>> = vec![Vec::new()];
            let mut n = 0u64;
            for op in ops {
                n += 1;
                let mut state = states.last().cloned().unwrap_or_default();
                match op {
                    Op::Append(len) => {
                        w.append(body(n, len)).expect("append");
                        state.push(body(n, len));
                    }
                    Op::Compact(k) => {
                        state = (0..k as u64).map(|j| body(n * 1000 + j, 20)).collect();
                        w.compact(state.clone()).expect("compact");
                    }
                    Op::Flush => {
                        n -= 1;
                        faults.fail_all(false);
                        w.flush().expect("flush");
                        continue;
                    }
                    Op::Faults(on) => {
                        n -= 1;
                        faults.fail_all(on);
                        continue;
                    }
                }
                states.push(state);
            }
            let synced = w.synced() as usize;
            w.crash();
            faults.fail_all(false);
            faults.power_cut(keep_extra).expect("power cut");
            let r = recover(tmp.path()).expect("recover");
            let got = bodies(&r);
            let ok = states[synced..].contains(&got);
            prop_assert!(ok, "recovered {} records, synced LSN {synced}", got.len());
        }
    }
}
