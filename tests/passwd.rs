//! Password files against the real `mosquitto_passwd` (2.0.x; scripts/test.sh
//! installs it), and the `ringmq passwd` binary end to end. Fails, rather
//! than skips, when mosquitto_passwd is missing.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ringmq::auth::password::{PasswordFile, PasswordHash};

const MOSQUITTO_PASSWD: &str = "mosquitto_passwd";
const LIMIT: Duration = Duration::from_secs(30);

/// Runs a command with stdin closed, killing it after LIMIT so no test can
/// hang (mosquitto_passwd prompts when it gets no password).
fn run(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {:?}: {e}; install Mosquitto's mosquitto_passwd \
                 (apt-get install mosquitto, or scripts/test.sh)",
                cmd.get_program()
            )
        });
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("{:?} ran past {LIMIT:?}", cmd.get_program());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

fn mosquitto_passwd(args: &[&str]) -> Output {
    let out = run(Command::new(MOSQUITTO_PASSWD).args(args));
    assert!(
        out.status.success(),
        "mosquitto_passwd {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ringmq(args: &[&str]) -> Output {
    run(Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .arg("passwd")
        .args(args))
}

fn ringmq_ok(args: &[&str]) {
    let out = ringmq(args);
    assert!(
        out.status.success(),
        "ringmq passwd {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn file(dir: &tempfile::TempDir, name: &str) -> (PathBuf, String) {
    let p = dir.path().join(name);
    let s = p.to_str().unwrap().to_owned();
    (p, s)
}

#[test]
fn mosquitto_passwd_is_installed() {
    let out = run(Command::new(MOSQUITTO_PASSWD).arg("--help"));
    let help =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(help.contains("sha512-pbkdf2"), "unexpected help: {help}");
}

#[test]
fn mosquitto_pbkdf2_and_sha512_files_verify() {
    let dir = tempfile::tempdir().unwrap();
    let (p, ps) = file(&dir, "pw");
    mosquitto_passwd(&["-c", "-b", &ps, "alice", "s3cret"]);
    mosquitto_passwd(&["-H", "sha512", "-b", &ps, "bob", "hunter2"]);
    mosquitto_passwd(&["-H", "sha512-pbkdf2", "-b", &ps, "carol", "pä55 wörd"]);
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains("alice:$7$101$"), "{text}");
    assert!(text.contains("bob:$6$"), "{text}");

    let f = PasswordFile::load(&p).unwrap();
    assert_eq!(f.len(), 3);
    let check = |user: &str, right: &str| {
        let h = f.get(user).unwrap();
        assert!(h.verify(right.as_bytes()), "{user}");
        assert!(!h.verify(format!("{right}x").as_bytes()), "{user}");
        assert!(!h.verify(b""), "{user}");
    };
    check("alice", "s3cret");
    check("bob", "hunter2");
    check("carol", "pä55 wörd");
    assert!(f.get("dave").is_none());
    // Mosquitto's 2.0 default writes cheap hashes the broker verifies inline.
    assert!(!f.get("alice").unwrap().is_expensive());
}

#[test]
fn mosquitto_update_matches_ours() {
    // Both tools' -U on the same plaintext file hash the same passwords,
    // except after a second colon: mosquitto_passwd 2.0 hashes only up to
    // it, ringmq the whole rest of the line (the username ends at the first
    // colon; the password may hold colons).
    let dir = tempfile::tempdir().unwrap();
    let plain = "u1:one\nu2:two:with:colons\n";
    let (pm, pms) = file(&dir, "mosq");
    let (pr, prs) = file(&dir, "ours");
    std::fs::write(&pm, plain).unwrap();
    std::fs::write(&pr, plain).unwrap();
    mosquitto_passwd(&["-U", &pms]);
    ringmq_ok(&["-U", &prs]);
    assert_eq!(mode(&pr), 0o600);
    let m = PasswordFile::load(&pm).unwrap();
    let r = PasswordFile::load(&pr).unwrap();
    assert!(m.get("u1").unwrap().verify(b"one"));
    assert!(r.get("u1").unwrap().verify(b"one"));
    assert!(m.get("u2").unwrap().verify(b"two"));
    assert!(r.get("u2").unwrap().verify(b"two:with:colons"));
    assert!(!r.get("u2").unwrap().verify(b"two"));
    // ringmq -U on a Mosquitto-converted file changes nothing.
    let before = std::fs::read_to_string(&pm).unwrap();
    ringmq_ok(&["-U", &pms]);
    assert_eq!(std::fs::read_to_string(&pm).unwrap(), before);
}

#[test]
fn ringmq_passwd_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let (p, ps) = file(&dir, "pw");

    // Missing file without -c: one line, non-zero.
    let out = ringmq(&["-b", &ps, "a", "x"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("-c"), "{err}");

    ringmq_ok(&["-c", "-b", &ps, "alice", "apw"]);
    assert_eq!(mode(&p), 0o600);
    ringmq_ok(&["-H", "sha512-pbkdf2", "-b", &ps, "bob", "bpw"]);
    ringmq_ok(&[
        "-H",
        "sha512-pbkdf2",
        "-I",
        "5000",
        "-b",
        &ps,
        "carol",
        "cpw",
    ]);
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains("alice:$argon2id$v=19$"), "{text}");
    assert!(text.contains("bob:$7$101$"), "{text}");
    assert!(text.contains("carol:$7$5000$"), "{text}");
    assert!(!text.contains("apw") && !text.contains("bpw"));

    let f = PasswordFile::load(&p).unwrap();
    assert!(f.get("alice").unwrap().verify(b"apw"));
    assert!(!f.get("alice").unwrap().verify(b"bpw"));
    assert!(f.get("alice").unwrap().is_expensive());
    assert!(f.get("bob").unwrap().verify(b"bpw"));
    assert!(!f.get("bob").unwrap().is_expensive());
    assert!(f.get("carol").unwrap().is_expensive());

    ringmq_ok(&["-D", &ps, "bob"]);
    let out = ringmq(&["-D", &ps, "bob"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    let f = PasswordFile::load(&p).unwrap();
    let users: Vec<_> = f.iter().map(|(u, _)| u).collect();
    assert_eq!(users, ["alice", "carol"]);
    assert_eq!(mode(&p), 0o600);

    // Password from a non-terminal stdin (one line).
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["passwd", "-H", "sha512-pbkdf2", &ps, "dave"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"dpw\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("dpw"));
    let f = PasswordFile::load(&p).unwrap();
    assert!(f.get("dave").unwrap().verify(b"dpw"));

    // A broken existing file is refused, one line, and left as it was.
    std::fs::write(&p, "alice:plaintext\n").unwrap();
    let out = ringmq(&["-b", &ps, "e", "x"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 1") && err.contains("-U"), "{err}");
    assert!(!err.contains("plaintext"), "{err}");
    assert_eq!(std::fs::read_to_string(&p).unwrap(), "alice:plaintext\n");
}

#[test]
fn mosquitto_and_ringmq_files_agree() {
    // The same users written by each tool verify the same way, and a
    // Mosquitto file edited by ringmq keeps Mosquitto's lines byte for byte.
    let dir = tempfile::tempdir().unwrap();
    let (pm, pms) = file(&dir, "mosq");
    let (pr, prs) = file(&dir, "ours");
    mosquitto_passwd(&["-c", "-b", &pms, "u1", "p1"]);
    mosquitto_passwd(&["-b", &pms, "u2", "p2"]);
    ringmq_ok(&["-c", "-H", "sha512-pbkdf2", "-b", &prs, "u1", "p1"]);
    ringmq_ok(&["-H", "sha512-pbkdf2", "-b", &prs, "u2", "p2"]);
    let m = PasswordFile::load(&pm).unwrap();
    let r = PasswordFile::load(&pr).unwrap();
    for (user, pw) in [("u1", "p1"), ("u2", "p2")] {
        let (hm, hr) = (m.get(user).unwrap(), r.get(user).unwrap());
        assert!(hm.verify(pw.as_bytes()) && hr.verify(pw.as_bytes()));
        assert!(!hm.verify(b"p3") && !hr.verify(b"p3"));
        // Same form: $7$, 101 iterations, same field lengths.
        let (em, er) = (hm.encode(), hr.encode());
        let shape = |s: &str| s.split('$').map(str::len).collect::<Vec<_>>();
        assert_eq!(shape(&em), shape(&er), "{em} vs {er}");
    }

    let before = std::fs::read_to_string(&pm).unwrap();
    ringmq_ok(&["-b", &pms, "u3", "p3"]);
    let after = std::fs::read_to_string(&pm).unwrap();
    assert!(after.starts_with(&before), "{before}\n---\n{after}");
    assert_eq!(mode(&pm), 0o600);

    // And Mosquitto reads (and edits) a ringmq-written $7$ file.
    mosquitto_passwd(&["-D", &prs, "u1"]);
    let r = PasswordFile::load(&pr).unwrap();
    assert!(r.get("u1").is_none());
    assert!(r.get("u2").unwrap().verify(b"p2"));
}

#[test]
fn new_hashes_are_written_as_mosquitto_reads_them() {
    // encode() output for a $7$ hash is what mosquitto_passwd wrote for a
    // known file, modulo salt: check padding on a Mosquitto line round-trips.
    let dir = tempfile::tempdir().unwrap();
    let (p, ps) = file(&dir, "pw");
    mosquitto_passwd(&["-c", "-b", &ps, "u", "p"]);
    let text = std::fs::read_to_string(&p).unwrap();
    let hash = text.trim_end().split_once(':').unwrap().1;
    assert_eq!(PasswordHash::parse(hash).unwrap().encode(), hash);
}
