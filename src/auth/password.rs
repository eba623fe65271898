//! Mosquitto-compatible password files: one `username:hash` per line.
//!
//! Hash forms accepted (Mosquitto 2.0 writes the first two, 2.1 the third):
//! - `$6$<salt>$<hash>`: SHA-512(password ‖ salt), standard base64.
//! - `$7$<iterations>$<salt>$<hash>`: PBKDF2-HMAC-SHA512, standard base64.
//! - `$argon2id$v=19$m=..,t=..,p=..$<salt>$<hash>`: a PHC string.
//!
//! Parsing is strict where Mosquitto is lenient: a line without a colon, a
//! duplicate user or a plaintext password is an error naming the line rather
//! than something silently skipped or silently winning, so a typo cannot
//! lock a user out (or let the wrong entry in) without the operator noticing.
//! Errors carry line numbers and reasons, never a hash or password.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::Context as _;
use argon2::{Algorithm, Argon2, Params, PasswordHasher as _, Version};
use base64::engine::general_purpose::{GeneralPurpose, PAD_INDIFFERENT};
use base64::Engine as _;
use sha2::{Digest as _, Sha512};
use subtle::ConstantTimeEq as _;

/// Standard alphabet, writes padding (as OpenSSL does for Mosquitto), reads
/// with or without it.
const B64: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::STANDARD, PAD_INDIFFERENT);

/// PBKDF2 iteration counts above this are refused: a typo like 1e9 would make
/// every CONNECT for that user burn a core for minutes.
pub const MAX_PBKDF2_ITERATIONS: u32 = 10_000_000;
/// Mosquitto's default PBKDF2 iteration count.
pub const DEFAULT_PBKDF2_ITERATIONS: u32 = 101;
/// Above this many iterations a PBKDF2 verify is treated as expensive.
const CHEAP_PBKDF2_ITERATIONS: u32 = 1_000;
/// Salt length Mosquitto uses for `$6$` and `$7$`.
const SALT_LEN: usize = 12;
/// Bounds on salts and derived keys we will accept from a file; Mosquitto
/// writes 12 and 64 bytes.
const MAX_SALT_LEN: usize = 256;
const MIN_KEY_LEN: usize = 16;
const SHA512_LEN: usize = 64;
/// Argon2 cost caps (memory in KiB): far above any sane setting, low enough
/// that one bad line cannot make each CONNECT allocate many gigabytes.
const MAX_ARGON2_M_KIB: u32 = 1 << 20;
const MAX_ARGON2_T: u32 = 1_000;
const MAX_ARGON2_P: u32 = 64;
/// MQTT strings are at most 65,535 bytes, so a longer username can never log in.
const MAX_USERNAME_LEN: usize = 65_535;

/// Why a password file line was rejected. Never holds secret material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("no ':' between username and hash")]
    NoColon,
    #[error("empty username")]
    EmptyUsername,
    #[error("username longer than 65535 bytes")]
    UsernameTooLong,
    #[error("username contains a NUL byte")]
    NulInUsername,
    #[error("empty password hash")]
    EmptyHash,
    #[error("password is not hashed; run `ringmq passwd -U` on the file")]
    Plaintext,
    #[error("unknown hash type (expected $6$, $7$ or $argon2id$)")]
    UnknownHashType,
    #[error("malformed {0} hash")]
    Malformed(&'static str),
    #[error("bad base64 in the {0}")]
    BadBase64(&'static str),
    #[error("salt must be 1 to 256 bytes")]
    BadSaltLength,
    #[error("hash has the wrong length")]
    BadHashLength,
    #[error("iteration count must be 1 to 10000000")]
    BadIterations,
    #[error("argon2 parameters out of range (m <= 1048576 KiB, t <= 1000, p <= 64)")]
    Argon2Params,
    #[error("not valid UTF-8")]
    InvalidUtf8,
    #[error("duplicate username (first on line {0})")]
    Duplicate(usize),
}

/// A rejected password file: the 1-based line and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct PasswordFileError {
    pub line: usize,
    pub reason: LineError,
}

/// A parsed password file: username -> hash, in file order.
#[derive(Default, Clone)]
pub struct PasswordFile {
    entries: Vec<(String, PasswordHash)>,
    index: HashMap<String, usize>,
}

impl fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordFile")
            .field("users", &self.entries.len())
            .finish()
    }
}

impl PasswordFile {
    /// Parses a whole file. Blank lines and lines whose first character is
    /// `#` are skipped; the username is everything before the first `:`.
    /// Surrounding blanks (space, tab, CR) around both fields are trimmed,
    /// as Mosquitto does, so CRLF files work.
    pub fn parse(text: &str) -> Result<PasswordFile, PasswordFileError> {
        let mut file = PasswordFile::default();
        let mut first_line: HashMap<String, usize> = HashMap::new();
        for (i, raw) in text.split('\n').enumerate() {
            let line = i + 1;
            let err = |reason| PasswordFileError { line, reason };
            let Some((user, hash)) = split_line(raw).map_err(err)? else {
                continue;
            };
            let hash = PasswordHash::parse(hash).map_err(err)?;
            if let Some(&first) = first_line.get(user) {
                return Err(err(LineError::Duplicate(first)));
            }
            first_line.insert(user.to_owned(), line);
            file.insert(user.to_owned(), hash);
        }
        Ok(file)
    }

    /// Reads and parses `path`. The file must be UTF-8; invalid UTF-8 is an
    /// error naming the first line that holds it.
    pub fn load(path: &Path) -> anyhow::Result<PasswordFile> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("reading password file {}", path.display()))?;
        Self::parse_bytes(&bytes).with_context(|| format!("password file {}", path.display()))
    }

    /// As [`PasswordFile::parse`], from bytes that may not be UTF-8.
    pub fn parse_bytes(bytes: &[u8]) -> Result<PasswordFile, PasswordFileError> {
        Self::parse(utf8(bytes)?)
    }

    pub fn get(&self, username: &str) -> Option<&PasswordHash> {
        self.index.get(username).map(|&i| &self.entries[i].1)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Users and hashes in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &PasswordHash)> {
        self.entries.iter().map(|(u, h)| (u.as_str(), h))
    }

    /// Adds a user at the end, or replaces its hash in place.
    pub(crate) fn insert(&mut self, username: String, hash: PasswordHash) {
        match self.index.get(&username) {
            Some(&i) => self.entries[i].1 = hash,
            None => {
                self.index.insert(username.clone(), self.entries.len());
                self.entries.push((username, hash));
            }
        }
    }

    /// Removes a user, keeping the others' order. False when absent.
    pub(crate) fn remove(&mut self, username: &str) -> bool {
        let Some(i) = self.index.remove(username) else {
            return false;
        };
        self.entries.remove(i);
        for v in self.index.values_mut() {
            if *v > i {
                *v -= 1;
            }
        }
        true
    }

    /// The file as Mosquitto writes it: `user:hash\n` per user.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for (user, hash) in &self.entries {
            out.push_str(user);
            out.push(':');
            out.push_str(&hash.encode());
            out.push('\n');
        }
        out
    }
}

/// Checks UTF-8, naming the 1-based line of the first bad byte.
pub(crate) fn utf8(bytes: &[u8]) -> Result<&str, PasswordFileError> {
    std::str::from_utf8(bytes).map_err(|e| PasswordFileError {
        line: 1 + bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count(),
        reason: LineError::InvalidUtf8,
    })
}

/// Splits one line into trimmed (username, rest), or None for a blank or
/// comment line. Validates the username only.
pub(crate) fn split_line(raw: &str) -> Result<Option<(&str, &str)>, LineError> {
    if raw.starts_with('#') || trim(raw).is_empty() {
        return Ok(None);
    }
    let (user, rest) = raw.split_once(':').ok_or(LineError::NoColon)?;
    let user = trim(user);
    if user.is_empty() {
        return Err(LineError::EmptyUsername);
    }
    if user.len() > MAX_USERNAME_LEN {
        return Err(LineError::UsernameTooLong);
    }
    if user.contains('\0') {
        return Err(LineError::NulInUsername);
    }
    Ok(Some((user, trim(rest))))
}

fn trim(s: &str) -> &str {
    s.trim_matches([' ', '\t', '\r'])
}

/// One user's stored hash. Fields are private so an instance always went
/// through validation (an empty stored key would otherwise match anything).
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordHash {
    /// Mosquitto `$6$`: SHA-512(password ‖ salt).
    Sha512(Sha512Hash),
    /// Mosquitto `$7$`: PBKDF2-HMAC-SHA512.
    Pbkdf2Sha512(Pbkdf2Hash),
    /// Argon2id as a PHC string.
    Argon2id(Argon2idHash),
}

#[derive(Clone, PartialEq, Eq)]
pub struct Sha512Hash {
    salt: Vec<u8>,
    key: Vec<u8>,
}

#[derive(Clone, PartialEq, Eq)]
pub struct Pbkdf2Hash {
    iterations: u32,
    salt: Vec<u8>,
    key: Vec<u8>,
}

#[derive(Clone, PartialEq, Eq)]
pub struct Argon2idHash {
    /// The PHC string exactly as read, so encode() writes back what was read.
    phc: String,
    params: Params,
    version: Version,
    salt: Vec<u8>,
    key: Vec<u8>,
}

// Debug shows the kind and cost only: a hash in a log is an offline-cracking
// target.
impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordHash::Sha512(_) => f.write_str("PasswordHash::Sha512"),
            PasswordHash::Pbkdf2Sha512(h) => {
                write!(
                    f,
                    "PasswordHash::Pbkdf2Sha512 {{ iterations: {} }}",
                    h.iterations
                )
            }
            PasswordHash::Argon2id(h) => write!(
                f,
                "PasswordHash::Argon2id {{ m: {}, t: {}, p: {} }}",
                h.params.m_cost(),
                h.params.t_cost(),
                h.params.p_cost()
            ),
        }
    }
}

/// The hash used for unknown users: Mosquitto's default form, for a random
/// password nobody knows.
const DECOY: &str = "$7$101$fcZsguXiJYpzlXLd$NcKN+ND3HgXoChwR9IZye+0n7UscIMUvholW9fZ5H6HeSsx93t+DaTO/sdckoEFSUlUTmzZ5pDXxwpE719irRw==";

impl PasswordHash {
    /// Parses the text after `user:`.
    pub fn parse(s: &str) -> Result<PasswordHash, LineError> {
        if s.is_empty() {
            return Err(LineError::EmptyHash);
        }
        if let Some(rest) = s.strip_prefix("$6$") {
            let (salt, key) = rest.split_once('$').ok_or(LineError::Malformed("$6$"))?;
            let salt = decode_salt(salt)?;
            let key = decode(key, "hash")?;
            if key.len() != SHA512_LEN {
                return Err(LineError::BadHashLength);
            }
            Ok(PasswordHash::Sha512(Sha512Hash { salt, key }))
        } else if let Some(rest) = s.strip_prefix("$7$") {
            let mut parts = rest.splitn(3, '$');
            let (Some(iter), Some(salt), Some(key)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(LineError::Malformed("$7$"));
            };
            // Digits only: u32's parser would also take a leading '+'.
            if iter.is_empty() || iter.len() > 10 || !iter.bytes().all(|b| b.is_ascii_digit()) {
                return Err(LineError::BadIterations);
            }
            let iterations: u32 = iter.parse().map_err(|_| LineError::BadIterations)?;
            if !(1..=MAX_PBKDF2_ITERATIONS).contains(&iterations) {
                return Err(LineError::BadIterations);
            }
            let salt = decode_salt(salt)?;
            let key = decode(key, "hash")?;
            if !(MIN_KEY_LEN..=SHA512_LEN).contains(&key.len()) {
                return Err(LineError::BadHashLength);
            }
            Ok(PasswordHash::Pbkdf2Sha512(Pbkdf2Hash {
                iterations,
                salt,
                key,
            }))
        } else if s.starts_with("$argon2id$") {
            parse_argon2id(s)
        } else if s.starts_with('$') {
            Err(LineError::UnknownHashType)
        } else {
            Err(LineError::Plaintext)
        }
    }

    /// Whether `password` matches. The derived key is compared in constant
    /// time; the derivation itself costs the same for any password.
    ///
    /// The bytes are used exactly (Mosquitto stops at the first NUL). One
    /// inherited quirk: PBKDF2's HMAC zero-pads its key, so for `$7$` a
    /// password and the same password plus trailing NUL bytes are equal.
    pub fn verify(&self, password: &[u8]) -> bool {
        let (derived, stored) = match self {
            PasswordHash::Sha512(h) => {
                let mut d = Sha512::new();
                d.update(password);
                d.update(&h.salt);
                (d.finalize().to_vec(), &h.key)
            }
            PasswordHash::Pbkdf2Sha512(h) => {
                let mut out = vec![0u8; h.key.len()];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, &h.salt, h.iterations, &mut out);
                (out, &h.key)
            }
            PasswordHash::Argon2id(h) => {
                let mut out = vec![0u8; h.key.len()];
                let ctx = Argon2::new(Algorithm::Argon2id, h.version, h.params.clone());
                if ctx.hash_password_into(password, &h.salt, &mut out).is_err() {
                    return false;
                }
                (out, &h.key)
            }
        };
        // Belt and braces: parse never yields an empty key, and an empty
        // comparison would be "equal".
        !stored.is_empty() && bool::from(derived.ct_eq(stored))
    }

    /// True when verify is slow enough that the broker should run it off its
    /// event loops: argon2id, and PBKDF2 above 1,000 iterations.
    pub fn is_expensive(&self) -> bool {
        match self {
            PasswordHash::Sha512(_) => false,
            PasswordHash::Pbkdf2Sha512(h) => h.iterations > CHEAP_PBKDF2_ITERATIONS,
            PasswordHash::Argon2id(_) => true,
        }
    }

    /// A fixed `$7$` (101 iterations) hash to verify against when the user
    /// is unknown, so that costs the same as a wrong password.
    pub fn decoy() -> &'static PasswordHash {
        static DECOY_HASH: OnceLock<PasswordHash> = OnceLock::new();
        DECOY_HASH.get_or_init(|| PasswordHash::parse(DECOY).expect("the decoy hash parses"))
    }

    /// A new argon2id hash with a random salt and the argon2 crate's default
    /// costs. Panics only if the OS random source fails.
    pub fn argon2id(password: &[u8]) -> PasswordHash {
        let phc = Argon2::default()
            .hash_password(password)
            .expect("argon2id with default parameters and an OS salt")
            .to_string();
        parse_argon2id(&phc).expect("argon2 writes a PHC string we parse")
    }

    /// A new Mosquitto `$7$` hash: 12-byte random salt, 64-byte key.
    /// `iterations` is clamped to 1..=10,000,000 so the result always parses.
    pub fn pbkdf2_sha512(password: &[u8], iterations: u32) -> PasswordHash {
        let iterations = iterations.clamp(1, MAX_PBKDF2_ITERATIONS);
        let salt = random_salt();
        let mut key = vec![0u8; SHA512_LEN];
        pbkdf2::pbkdf2_hmac::<Sha512>(password, &salt, iterations, &mut key);
        PasswordHash::Pbkdf2Sha512(Pbkdf2Hash {
            iterations,
            salt,
            key,
        })
    }

    /// A new Mosquitto `$6$` hash (SHA-512 of password ‖ 12-byte salt). Weak
    /// (one hash round); for tests and compatibility only.
    pub fn sha512(password: &[u8]) -> PasswordHash {
        let salt = random_salt();
        let mut d = Sha512::new();
        d.update(password);
        d.update(&salt);
        PasswordHash::Sha512(Sha512Hash {
            salt,
            key: d.finalize().to_vec(),
        })
    }

    /// The text after `user:` as Mosquitto writes it (padded base64).
    pub fn encode(&self) -> String {
        match self {
            PasswordHash::Sha512(h) => {
                format!("$6${}${}", B64.encode(&h.salt), B64.encode(&h.key))
            }
            PasswordHash::Pbkdf2Sha512(h) => format!(
                "$7${}${}${}",
                h.iterations,
                B64.encode(&h.salt),
                B64.encode(&h.key)
            ),
            PasswordHash::Argon2id(h) => h.phc.clone(),
        }
    }
}

fn random_salt() -> Vec<u8> {
    let mut salt = vec![0u8; SALT_LEN];
    getrandom::fill(&mut salt).expect("the OS random source");
    salt
}

fn decode(s: &str, what: &'static str) -> Result<Vec<u8>, LineError> {
    // Bound the work before decoding: nothing valid is this long.
    if s.len() > 4 * MAX_SALT_LEN {
        return Err(LineError::BadBase64(what));
    }
    B64.decode(s).map_err(|_| LineError::BadBase64(what))
}

fn decode_salt(s: &str) -> Result<Vec<u8>, LineError> {
    let salt = decode(s, "salt")?;
    if salt.is_empty() || salt.len() > MAX_SALT_LEN {
        return Err(LineError::BadSaltLength);
    }
    Ok(salt)
}

fn parse_argon2id(s: &str) -> Result<PasswordHash, LineError> {
    const WHAT: LineError = LineError::Malformed("argon2id");
    let phc = argon2::PasswordHash::new(s).map_err(|_| WHAT)?;
    if phc.algorithm != argon2::ARGON2ID_IDENT {
        return Err(LineError::UnknownHashType);
    }
    let version = match phc.version {
        Some(v) => Version::try_from(v).map_err(|_| WHAT)?,
        None => Version::default(),
    };
    let (Some(salt), Some(key)) = (&phc.salt, &phc.hash) else {
        return Err(WHAT);
    };
    // Params::try_from also takes the output length from the stored hash.
    let params = Params::try_from(&phc).map_err(|_| LineError::Argon2Params)?;
    if params.m_cost() > MAX_ARGON2_M_KIB
        || params.t_cost() > MAX_ARGON2_T
        || params.p_cost() > MAX_ARGON2_P
        || !params.keyid().is_empty()
        || !params.data().is_empty()
    {
        return Err(LineError::Argon2Params);
    }
    if salt.is_empty() || salt.len() > MAX_SALT_LEN {
        return Err(LineError::BadSaltLength);
    }
    if key.len() < MIN_KEY_LEN {
        return Err(LineError::BadHashLength);
    }
    Ok(PasswordHash::Argon2id(Argon2idHash {
        phc: s.to_owned(),
        params,
        version,
        salt: salt.to_vec(),
        key: key.as_bytes().to_vec(),
    }))
}

/// A warning to log when the file is readable or writable by group or others
/// (`mode & 0o077 != 0`), else None (also when it cannot be stat'ed: loading
/// reports that).
pub fn permission_warning(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "password file {} is accessible by group or others (mode {mode:03o}); \
             chmod 0600 it",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Written by mosquitto_passwd 2.0.11: alice/secret ($7$) and bob/pw ($6$).
    const ALICE: &str = "alice:$7$101$7G/G7o5asS4akuio$1xfjC1NGQGQz+nzZ+GqO+TBSZjQ8fDnE2SOHNMlWBP+f89bJmJ7kgFprlns6zAaIteqWk7gm+LtM96eb/0okBA==";
    const BOB: &str = "bob:$6$iad/GA8b6dowbOzN$iRW5N1WMyNCA5gm9iy+j+VcUPjKhB1OauXh5IDlL4OWt38vozDTjJXR3uw1SI1UERO67jbxltSmLUn/wV/cvDQ==";

    fn reason(text: &str) -> (usize, LineError) {
        let e = PasswordFile::parse(text).unwrap_err();
        (e.line, e.reason)
    }

    #[test]
    fn mosquitto_written_hashes_verify() {
        let f = PasswordFile::parse(&format!("# users\n\n{ALICE}\r\n{BOB}\n")).unwrap();
        assert_eq!(f.len(), 2);
        let alice = f.get("alice").unwrap();
        assert!(alice.verify(b"secret"));
        assert!(!alice.verify(b"Secret"));
        assert!(!alice.verify(b""));
        assert!(!alice.is_expensive());
        let bob = f.get("bob").unwrap();
        assert!(bob.verify(b"pw"));
        assert!(!bob.verify(b"pw "));
        assert!(f.get("carol").is_none());
        // Mosquitto's own text comes back byte for byte.
        assert_eq!(f.to_text(), format!("{ALICE}\n{BOB}\n"));
    }

    #[test]
    fn reference_argon2id_verifies() {
        // From libargon2 (the C reference library Mosquitto 2.1 links):
        // argon2id_hash_encoded(t=3, m=4096, p=2, "mosquitto",
        // salt "0123456789abcdef", 32-byte hash).
        let line = "u:$argon2id$v=19$m=4096,t=3,p=2$MDEyMzQ1Njc4OWFiY2RlZg$06+YmKacdVhytzk3VIgLnqrXOBVULeNg04KAp3yqhG8";
        let f = PasswordFile::parse(line).unwrap();
        let h = f.get("u").unwrap();
        assert!(h.verify(b"mosquitto"));
        assert!(!h.verify(b"mosquitt0"));
        assert!(h.is_expensive());
        assert_eq!(h.encode(), &line[2..]);
        let huge = line.replace("m=4096", "m=4194304");
        assert_eq!(reason(&huge).1, LineError::Argon2Params);
    }

    #[test]
    fn unpadded_base64_is_accepted() {
        let line = ALICE.trim_end_matches('=');
        let f = PasswordFile::parse(line).unwrap();
        assert!(f.get("alice").unwrap().verify(b"secret"));
    }

    #[test]
    fn username_is_before_the_first_colon() {
        // A colon can't be in the username; the rest is the hash.
        let (line, r) = reason("a:b:$6$x$y");
        assert_eq!((line, r), (1, LineError::Plaintext));
        assert_eq!(reason("  :$6$x$y").1, LineError::EmptyUsername);
    }

    #[test]
    fn malformed_lines_name_the_line() {
        let cases: &[(&str, LineError)] = &[
            ("nocolon", LineError::NoColon),
            (":$6$", LineError::EmptyUsername),
            ("u:", LineError::EmptyHash),
            ("u:hunter2", LineError::Plaintext),
            ("u:$1$abc$def", LineError::UnknownHashType),
            (
                "u:$argon2i$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
                LineError::UnknownHashType,
            ),
            ("u:$6$nodollar", LineError::Malformed("$6$")),
            ("u:$6$!!!$AAAA", LineError::BadBase64("salt")),
            ("u:$6$AAAA$AAAA", LineError::BadHashLength),
            ("u:$7$101$AAAA", LineError::Malformed("$7$")),
            ("u:$7$0$AAAA$AAAA", LineError::BadIterations),
            ("u:$7$10000001$AAAA$AAAA", LineError::BadIterations),
            ("u:$7$+5$AAAA$AAAA", LineError::BadIterations),
            ("u:$7$99999999999999$AAAA$AAAA", LineError::BadIterations),
            ("u:$7$101$$AAAA", LineError::BadSaltLength),
            ("u:$7$101$AAAA$AAAA", LineError::BadHashLength),
            ("u:$argon2id$garbage", LineError::Malformed("argon2id")),
            ("u\0x:$6$AAAA$AAAA", LineError::NulInUsername),
        ];
        for (text, want) in cases {
            let input = format!("# c\n{text}\n");
            let e = PasswordFile::parse(&input).unwrap_err();
            assert_eq!((e.line, &e.reason), (2, want), "{text:?}");
        }
    }

    #[test]
    fn errors_never_show_secrets() {
        let e = PasswordFile::parse("u:hunter2").unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
        assert_eq!(
            e,
            "line 1: password is not hashed; run `ringmq passwd -U` on the file"
        );
        let bad = format!("{}X", &ALICE[..ALICE.len() - 2]);
        let e = PasswordFile::parse(&bad).unwrap_err().to_string();
        assert!(!e.contains("1xfjC1"), "{e}");
    }

    #[test]
    fn duplicates_are_an_error_naming_both_lines() {
        let text = format!("{ALICE}\n{BOB}\n{ALICE}\n");
        assert_eq!(reason(&text), (3, LineError::Duplicate(1)));
    }

    #[test]
    fn huge_lines_and_bad_utf8() {
        let long = format!("u:$7$101${}$AAAA", "A".repeat(100_000));
        assert_eq!(reason(&long).1, LineError::BadBase64("salt"));
        let long_user = format!("{}:$6$AAAA$AAAA", "u".repeat(100_000));
        assert_eq!(reason(&long_user).1, LineError::UsernameTooLong);
        let e = PasswordFile::parse_bytes(b"# ok\n\nu:\xff\n").unwrap_err();
        assert_eq!((e.line, e.reason), (3, LineError::InvalidUtf8));
    }

    #[test]
    fn new_hashes_round_trip() {
        for h in [
            PasswordHash::argon2id(b"pw"),
            PasswordHash::pbkdf2_sha512(b"pw", 101),
            PasswordHash::pbkdf2_sha512(b"pw", 2_000),
            PasswordHash::sha512(b"pw"),
        ] {
            let back = PasswordHash::parse(&h.encode()).unwrap();
            assert_eq!(back, h);
            assert!(back.verify(b"pw"));
            assert!(!back.verify(b"pW"));
        }
        let argon = PasswordHash::argon2id(b"pw").encode();
        assert!(
            argon.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{argon}"
        );
        let pb = PasswordHash::pbkdf2_sha512(b"pw", 101).encode();
        assert!(pb.starts_with("$7$101$") && pb.ends_with("=="), "{pb}");
        assert!(PasswordHash::argon2id(b"pw").is_expensive());
        assert!(PasswordHash::pbkdf2_sha512(b"pw", 1_001).is_expensive());
        assert!(!PasswordHash::pbkdf2_sha512(b"pw", 1_000).is_expensive());
        assert!(!PasswordHash::sha512(b"pw").is_expensive());
    }

    #[test]
    fn decoy_is_cheap_pbkdf2_and_matches_nothing_obvious() {
        let d = PasswordHash::decoy();
        assert!(matches!(d, PasswordHash::Pbkdf2Sha512(h) if h.iterations == 101));
        assert!(!d.is_expensive());
        assert!(!d.verify(b""));
        assert!(!d.verify(b"password"));
    }

    #[test]
    fn debug_hides_the_hash() {
        let h = PasswordHash::sha512(b"pw");
        let key = B64.encode(match &h {
            PasswordHash::Sha512(s) => &s.key,
            _ => unreachable!(),
        });
        let dbg = format!("{h:?} {:?}", PasswordFile::parse(ALICE).unwrap());
        assert!(!dbg.contains(&key[..8]) && !dbg.contains("1xfjC1"), "{dbg}");
    }

    #[test]
    fn insert_and_remove_keep_order() {
        let mut f = PasswordFile::parse(&format!("{ALICE}\n{BOB}\n")).unwrap();
        f.insert("carol".into(), PasswordHash::sha512(b"c"));
        assert!(f.remove("alice"));
        assert!(!f.remove("alice"));
        f.insert("bob".into(), PasswordHash::sha512(b"b2"));
        let users: Vec<_> = f.iter().map(|(u, _)| u).collect();
        assert_eq!(users, ["bob", "carol"]);
        assert!(f.get("bob").unwrap().verify(b"b2"));
        assert!(f.get("carol").unwrap().verify(b"c"));
    }

    #[test]
    fn permission_warning_on_group_readable() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, ALICE).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(permission_warning(&p), None);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let w = permission_warning(&p).unwrap();
        assert!(w.contains("0640") || w.contains("640"), "{w}");
        assert_eq!(permission_warning(&dir.path().join("missing")), None);
    }

    #[test]
    fn load_names_path_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, format!("{ALICE}\nbroken\n")).unwrap();
        let e = format!("{:#}", PasswordFile::load(&p).unwrap_err());
        assert!(
            e.contains(&p.display().to_string()) && e.contains("line 2"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            PasswordFile::load(&dir.path().join("nope")).unwrap_err()
        );
        assert!(e.contains("nope"), "{e}");
    }

    mod prop {
        use proptest::prelude::*;

        use super::super::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            #[test]
            fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = PasswordFile::parse_bytes(&bytes);
            }

            // Structured near-misses reach deeper than random bytes do.
            #[test]
            fn parse_never_panics_on_hash_like_lines(
                user in "[a-z:#\\s\\x00]{0,8}",
                kind in prop::sample::select(vec!["$6$", "$7$", "$7$101$", "$argon2id$", "$argon2id$v=19$m=8,t=1,p=1$", ""]),
                tail in "[A-Za-z0-9+/=$,.=\\-]{0,120}",
            ) {
                let _ = PasswordFile::parse(&format!("{user}:{kind}{tail}\n"));
            }

            #[test]
            fn encode_parse_verify_round_trips(
                password in proptest::collection::vec(any::<u8>(), 0..64),
                user in "[A-Za-z0-9_.@-]{1,16}",
                pbkdf2 in any::<bool>(),
            ) {
                // Cheap hashes only: argon2id defaults cost ~19 MiB per case
                // (it has its own round-trip test above).
                let h = if pbkdf2 {
                    PasswordHash::pbkdf2_sha512(&password, 2)
                } else {
                    PasswordHash::sha512(&password)
                };
                let f = PasswordFile::parse(&format!("{user}:{}\n", h.encode())).unwrap();
                let back = f.get(&user).unwrap();
                prop_assert!(back.verify(&password));
                // Not a trailing 0: HMAC zero-pads its key, so in PBKDF2 "pw"
                // and "pw\0" are the same password (as in Mosquitto).
                let mut wrong = password.clone();
                wrong.push(1);
                prop_assert!(!back.verify(&wrong));
            }
        }
    }
}
