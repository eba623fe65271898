//! `ringmq passwd`: manage a password file the way `mosquitto_passwd` does.
//!
//! Differences from mosquitto_passwd 2.0: the default hash is argon2id (as
//! Mosquitto 2.1); `-H sha512` ($6$) is not offered for writing; `-U` leaves
//! lines that already hold a valid hash alone instead of hashing the hash,
//! and hashes everything after the first colon (mosquitto_passwd stops at a
//! second colon); empty passwords are refused;
//! comments and blank lines are dropped on rewrite (users keep their order);
//! the file is replaced atomically and is always mode 0600.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{BufRead as _, IsTerminal as _, Read as _, Write as _};
use std::os::unix::ffi::OsStringExt as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context as _};
use clap::{Parser, ValueEnum};

use super::password::{self, PasswordFile, PasswordFileError, PasswordHash};

/// MQTT binary data (the CONNECT password) is at most 65,535 bytes.
const MAX_PASSWORD_LEN: usize = 65_535;

#[derive(Parser, Debug)]
#[command(
    name = "ringmq passwd",
    about = "Manage a Mosquitto-compatible password file",
    disable_version_flag = true
)]
struct Args {
    /// Create (or overwrite) the file with this one user
    #[arg(short = 'c', conflicts_with_all = ["delete", "update"])]
    create: bool,
    /// Delete the user
    #[arg(short = 'D', conflicts_with = "update")]
    delete: bool,
    /// Convert a file of `user:plaintext` lines to hashes in place
    #[arg(short = 'U')]
    update: bool,
    /// Batch mode: the password is the last argument
    #[arg(short = 'b')]
    batch: bool,
    /// Hash to write
    #[arg(short = 'H', value_enum, default_value_t = HashKind::Argon2id)]
    hash: HashKind,
    /// PBKDF2 iterations (for -H sha512-pbkdf2)
    #[arg(
        short = 'I',
        default_value_t = password::DEFAULT_PBKDF2_ITERATIONS,
        value_parser = clap::value_parser!(u32).range(1..=password::MAX_PBKDF2_ITERATIONS as i64)
    )]
    iterations: u32,
    passwordfile: PathBuf,
    username: Option<String>,
    /// Only with -b. Bytes, not necessarily UTF-8.
    password: Option<OsString>,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum HashKind {
    Argon2id,
    #[value(name = "sha512-pbkdf2")]
    Sha512Pbkdf2,
}

/// Entry point for `ringmq passwd ARGS...` (`args` excludes the word
/// `passwd`). Returns the process exit code: 0 ok, 1 error, 2 usage.
pub fn main(args: Vec<OsString>) -> i32 {
    let argv = std::iter::once(OsString::from("ringmq passwd")).chain(args);
    let args = match Args::try_parse_from(argv) {
        Ok(a) => a,
        Err(e) => {
            // Help and usage errors; clap picks stdout/stderr and the code.
            let _ = e.print();
            return e.exit_code();
        }
    };
    match run(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ringmq passwd: {e:#}");
            1
        }
    }
}

fn run(a: Args) -> anyhow::Result<()> {
    let hasher = move |pw: &[u8]| match a.hash {
        HashKind::Argon2id => PasswordHash::argon2id(pw),
        HashKind::Sha512Pbkdf2 => PasswordHash::pbkdf2_sha512(pw, a.iterations),
    };
    let path = &a.passwordfile;
    if a.update {
        ensure!(
            a.username.is_none() && !a.batch,
            "-U takes only the password file"
        );
        return update(path, hasher);
    }
    let user = a.username.ok_or_else(|| anyhow!("missing username"))?;
    check_username(&user)?;
    if a.delete {
        ensure!(a.password.is_none() && !a.batch, "-D takes no password");
        let mut file = load_existing(path)?;
        ensure!(
            file.remove(&user),
            "user {user} not found in {}",
            path.display()
        );
        return write_atomic(path, &file.to_text());
    }
    // Load before prompting so a missing or broken file fails first.
    let mut file = if a.create {
        PasswordFile::default()
    } else {
        load_existing(path)?
    };
    let password = match (a.batch, a.password) {
        (true, Some(p)) => p.into_vec(),
        (true, None) => bail!("-b needs the password as the last argument"),
        (false, Some(_)) => bail!("a password argument needs -b"),
        (false, None) => read_password()?,
    };
    check_password(&password)?;
    file.insert(user, hasher(&password));
    write_atomic(path, &file.to_text())
}

fn load_existing(path: &Path) -> anyhow::Result<PasswordFile> {
    if !path.exists() {
        bail!(
            "password file {} does not exist; use -c to create it",
            path.display()
        );
    }
    PasswordFile::load(path)
}

/// Rejects names that would not read back as the same user.
fn check_username(user: &str) -> anyhow::Result<()> {
    ensure!(!user.is_empty(), "empty username");
    ensure!(!user.contains(':'), "username must not contain ':'");
    ensure!(!user.starts_with('#'), "username must not start with '#'");
    ensure!(
        !user.contains(['\0', '\n', '\r']),
        "username must not contain NUL or line breaks"
    );
    ensure!(
        user.trim_matches([' ', '\t']) == user,
        "username must not start or end with blanks"
    );
    ensure!(
        user.len() <= MAX_PASSWORD_LEN,
        "username longer than 65535 bytes"
    );
    Ok(())
}

fn check_password(password: &[u8]) -> anyhow::Result<()> {
    ensure!(!password.is_empty(), "empty password");
    ensure!(
        password.len() <= MAX_PASSWORD_LEN,
        "password longer than 65535 bytes"
    );
    Ok(())
}

/// Twice without echo on a terminal; otherwise one line from stdin.
fn read_password() -> anyhow::Result<Vec<u8>> {
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ").context("reading the password")?;
        let again =
            rpassword::prompt_password("Reenter password: ").context("reading the password")?;
        ensure!(first == again, "passwords do not match");
        return Ok(first.into_bytes());
    }
    let mut line = Vec::new();
    std::io::stdin()
        .lock()
        .take(MAX_PASSWORD_LEN as u64 + 3)
        .read_until(b'\n', &mut line)
        .context("reading the password from stdin")?;
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    Ok(line)
}

/// `-U`: hash every plaintext password; lines already holding a valid hash
/// are kept as they are.
fn update(path: &Path, hasher: impl Fn(&[u8]) -> PasswordHash) -> anyhow::Result<()> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading password file {}", path.display()))?;
    let in_file = |e: PasswordFileError| anyhow!("password file {}: {e}", path.display());
    let text = password::utf8(&bytes).map_err(in_file)?;
    let mut file = PasswordFile::default();
    let mut first_line = std::collections::HashMap::new();
    for (i, raw) in text.split('\n').enumerate() {
        let line = i + 1;
        let err = |reason| in_file(PasswordFileError { line, reason });
        let Some((user, secret)) = password::split_line(raw).map_err(err)? else {
            continue;
        };
        if let Some(&first) = first_line.get(user) {
            return Err(err(password::LineError::Duplicate(first)));
        }
        first_line.insert(user.to_owned(), line);
        let hash = match PasswordHash::parse(secret) {
            Ok(h) => h,
            Err(_) => {
                check_password(secret.as_bytes())
                    .with_context(|| format!("password file {}: line {line}", path.display()))?;
                hasher(secret.as_bytes())
            }
        };
        file.insert(user.to_owned(), hash);
    }
    write_atomic(path, &file.to_text())
}

/// Replaces `path` with `text`: a 0600 temp file in the same directory,
/// fsync, rename over, fsync the directory. Readers see the old file or the
/// new one, never half of one.
fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{} is not a file name", path.display()))?;
    let mut nonce = [0u8; 6];
    getrandom::fill(&mut nonce).map_err(|e| anyhow!("random source: {e}"))?;
    let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = dir.join(format!(".{}.tmp-{nonce}", name.to_string_lossy()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        // The umask can only clear bits, but be explicit.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing password file {}", path.display()));
    }
    // Durability of the rename; failure here is not worth reporting as an
    // error since the new file is already in place.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(args: &[&str]) -> i32 {
        main(args.iter().map(OsString::from).collect())
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn create_add_update_delete() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        let ps = p.to_str().unwrap();
        // Without -c the file must exist.
        assert_eq!(run_args(&["-b", ps, "a", "x"]), 1);
        assert!(!p.exists());
        fn with<'a>(extra: &[&'a str]) -> Vec<&'a str> {
            [&["-H", "sha512-pbkdf2", "-I", "5"][..], extra].concat()
        }
        assert_eq!(run_args(&with(&["-c", "-b", ps, "a", "pa"])), 0);
        assert_eq!(run_args(&with(&["-b", ps, "b", "pb"])), 0);
        assert_eq!(run_args(&with(&["-b", ps, "c", "pc"])), 0);
        assert_eq!(run_args(&with(&["-b", ps, "a", "pa2"])), 0);
        assert_eq!(mode(&p), 0o600);
        let f = PasswordFile::load(&p).unwrap();
        let users: Vec<_> = f.iter().map(|(u, _)| u).collect();
        assert_eq!(users, ["a", "b", "c"]);
        assert!(f.get("a").unwrap().verify(b"pa2"));
        assert!(f.get("b").unwrap().encode().starts_with("$7$5$"));
        assert_eq!(run_args(&["-D", ps, "b"]), 0);
        assert_eq!(run_args(&["-D", ps, "b"]), 1);
        let f = PasswordFile::load(&p).unwrap();
        assert_eq!(f.iter().map(|(u, _)| u).collect::<Vec<_>>(), ["a", "c"]);
        // -c overwrites.
        assert_eq!(run_args(&with(&["-c", "-b", ps, "z", "pz"])), 0);
        assert_eq!(PasswordFile::load(&p).unwrap().len(), 1);
        // No temp files left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn usage_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        let ps = p.to_str().unwrap();
        assert_eq!(run_args(&["-c", "-D", ps, "a"]), 2);
        assert_eq!(run_args(&["-H", "md5", "-c", "-b", ps, "a", "x"]), 2);
        assert_eq!(run_args(&["-I", "0", "-c", "-b", ps, "a", "x"]), 2);
        assert_eq!(run_args(&["-c", "-b", ps, "a"]), 1);
        assert_eq!(run_args(&["-c", ps, "a", "x"]), 1);
        for bad in ["", "a:b", "#a", " a", "a\nb"] {
            assert_eq!(run_args(&["-c", "-b", ps, bad, "x"]), 1, "{bad:?}");
        }
        assert_eq!(run_args(&["-c", "-b", ps, "a", ""]), 1);
        assert!(!p.exists());
    }

    #[test]
    fn update_hashes_plaintext_and_keeps_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        let kept = PasswordHash::pbkdf2_sha512(b"old", 3).encode();
        std::fs::write(&p, format!("# c\nx:one\ny:{kept}\nz: t:w \n")).unwrap();
        let ps = p.to_str().unwrap();
        assert_eq!(run_args(&["-U", "-H", "sha512-pbkdf2", "-I", "4", ps]), 0);
        let f = PasswordFile::load(&p).unwrap();
        assert!(f.get("x").unwrap().verify(b"one"));
        assert_eq!(f.get("y").unwrap().encode(), kept);
        assert!(f.get("z").unwrap().verify(b"t:w"));
        assert_eq!(mode(&p), 0o600);
        // Duplicates are refused and the file is untouched.
        std::fs::write(&p, "x:1\nx:2\n").unwrap();
        assert_eq!(run_args(&["-U", ps]), 1);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "x:1\nx:2\n");
    }
}
