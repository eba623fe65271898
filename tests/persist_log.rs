//! The persistence log through its public API only, laid out as the broker
//! will: one directory and one writer thread per core.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ringmq::persist::{core_dir, recover, FsyncPolicy, LogWriter, WriterConfig};

fn open(dir: &Path, core: usize, rang: Arc<AtomicU64>) -> LogWriter {
    let tail = recover(dir).expect("recover").tail;
    let config = WriterConfig {
        core,
        fsync: FsyncPolicy::Always,
        segment_bytes: 4096,
        ..WriterConfig::default()
    };
    let notify = Box::new(move || {
        rang.fetch_add(1, Ordering::SeqCst);
    });
    LogWriter::open(config, tail, notify).expect("open")
}

#[test]
fn cores_keep_separate_logs_across_restarts() {
    let location = tempfile::tempdir().expect("tempdir");
    let rang = Arc::new(AtomicU64::new(0));
    for round in 0..3u8 {
        let writers: Vec<_> = (0..2)
            .map(|core| open(&core_dir(location.path(), core), core, rang.clone()))
            .collect();
        for (core, w) in writers.iter().enumerate() {
            for i in 0..100u8 {
                w.append(vec![core as u8, round, i]).expect("append");
            }
            assert_eq!(w.flush_timeout(Duration::from_secs(10)), Ok(100));
        }
    }
    assert!(rang.load(Ordering::SeqCst) >= 6, "notified after syncs");
    for core in 0..2u8 {
        let r = recover(&core_dir(location.path(), core.into())).expect("recover");
        let want: Vec<Vec<u8>> = (0..3u8)
            .flat_map(|round| (0..100u8).map(move |i| vec![core, round, i]))
            .collect();
        let got: Vec<Vec<u8>> = r.records.iter().map(|b| b.to_vec()).collect();
        assert_eq!(got, want);
        assert!(r.segments_read > 1, "rotated");
    }
}

#[test]
fn writer_thread_is_named_after_its_core() {
    let location = tempfile::tempdir().expect("tempdir");
    let dir = core_dir(location.path(), 7);
    let tail = recover(&dir).expect("recover").tail;
    let name = Arc::new(std::sync::Mutex::new(String::new()));
    let seen = name.clone();
    let notify = Box::new(move || {
        let me = std::thread::current().name().unwrap_or_default().to_owned();
        *seen.lock().expect("lock") = me;
    });
    let config = WriterConfig {
        core: 7,
        ..WriterConfig::default()
    };
    let w = LogWriter::open(config, tail, notify).expect("open");
    w.append(b"x".to_vec()).expect("append");
    w.flush().expect("flush");
    drop(w); // joins the thread, so notify has run
    assert_eq!(*name.lock().expect("lock"), "ringmq-log-7");
}
