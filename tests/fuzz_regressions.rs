//! Replays every saved fuzz input through its target: the seed corpora
//! (`fuzz/corpus/<target>/`) and every input a fuzzer ever crashed on
//! (`tests/fuzz_crashes/<target>/`, where scripts/fuzz.sh saves them). The targets are the AFL ones (`fuzz/src/targets.rs`), compiled
//! here without instrumentation, so a regression fails the normal test run.

#[path = "../fuzz/src/targets.rs"]
mod targets;

use std::path::Path;

/// The files in `<repository>/<dir>/<target>/`, sorted.
fn inputs(dir: &str, target: &str) -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .map(|e| e.expect("a corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_target_has_seeds_and_survives_them() {
    for (name, target) in targets::TARGETS {
        let seeds = inputs("fuzz/corpus", name);
        assert!(!seeds.is_empty(), "fuzz/corpus/{name} has no seed");
        for path in seeds {
            target(&std::fs::read(&path).unwrap());
        }
    }
}

#[test]
fn every_saved_crash_stays_fixed() {
    for (name, target) in targets::TARGETS {
        for path in inputs("tests/fuzz_crashes", name) {
            eprintln!("replaying {}", path.display());
            target(&std::fs::read(&path).unwrap());
        }
    }
}

/// Bytes no fuzzer needs to find: empty input, a lone byte of each value,
/// and the classic oversize and deep-nesting shapes.
#[test]
fn edge_inputs_survive_every_target() {
    let mut cases: Vec<Vec<u8>> = vec![Vec::new()];
    cases.extend((0..=255u8).map(|b| vec![b]));
    cases.push([0x10, 0xff, 0xff, 0xff, 0x7f].to_vec()); // 256 MB declared
    cases.push([0x30, 0xff, 0xff, 0xff, 0xff, 0x01].to_vec()); // a fifth length byte
    cases.push([&[0x30, 0x80, 0x80, 0x04, 0xff, 0xff][..], &[b'/'; 1024][..]].concat());
    for (name, target) in targets::TARGETS {
        for case in &cases {
            let result = std::panic::catch_unwind(|| target(case));
            assert!(result.is_ok(), "{name} panicked on {case:02x?}");
        }
    }
}

/// The WebSocket seeds get past the upgrade: the harness reaches the frames.
#[test]
fn the_websocket_seeds_carry_mqtt() {
    let seed =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/websocket/frames"))
            .unwrap();
    let payload = targets::websocket_payload(&seed);
    assert_eq!(
        payload.first(),
        Some(&0x10),
        "a CONNECT first: {payload:02x?}"
    );
}
