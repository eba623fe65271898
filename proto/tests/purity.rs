//! The core stays pure. Its dependencies are fixed by its Cargo.toml, so the
//! compiler refuses any runtime, socket or thread crate the moment code uses
//! one; this test keeps that list honest and also catches the parts of std
//! that do I/O, read clocks or start threads.

use std::path::{Path, PathBuf};

/// Crates that do I/O, schedule tasks or share state across threads.
const FORBIDDEN_CRATES: &[&str] = &[
    "monoio",
    "tokio",
    "futures",
    "async-std",
    "mio",
    "crossbeam",
    "socket2",
    "libc",
    "nix",
    "rustix",
    "io-uring",
];

/// Parts of std a pure core has no business with.
const FORBIDDEN_STD: &[&str] = &[
    "std::net",
    "std::thread",
    "std::fs",
    "std::process",
    "std::sync::Mutex",
    "std::sync::RwLock",
    "Instant::now",
    "SystemTime",
];

#[test]
fn dependencies_leave_no_room_for_io() {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).expect("Cargo.toml");
    let mut section = String::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.to_owned();
            continue;
        }
        if section != "[dependencies]" {
            continue;
        }
        let name = line.split(['=', ' ']).next().unwrap_or("");
        for bad in FORBIDDEN_CRATES {
            assert!(
                !name.starts_with(bad),
                "ringmq-proto depends on {name}: the pure core must not do I/O"
            );
        }
    }
}

#[test]
fn sources_use_no_io_clock_or_threads() {
    let mut offences = Vec::new();
    for file in rust_files(&root().join("src")) {
        let text = std::fs::read_to_string(&file).expect("source");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for bad in FORBIDDEN_STD {
                if code.contains(bad) {
                    offences.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        offences.is_empty(),
        "I/O, clocks or threads in the pure core:\n{}",
        offences.join("\n")
    );
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("src directory") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}
