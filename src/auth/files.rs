//! The file backend: Mosquitto's `password_file` and `acl_file`, with
//! `allow_anonymous`, as one immutable set of rules (a reload builds a new one).

use std::sync::Arc;

use anyhow::Context as _;

use super::acl::AclFile;
use super::password::{permission_warning, PasswordFile, PasswordHash};
use super::{Authenticator, Authorizer, Check, Credentials, Denial, Verdict};
use crate::access::Permissions;
use crate::config::Config;

/// The rules read from the configured files.
#[derive(Debug)]
pub struct FileBackend {
    passwords: Option<PasswordFile>,
    /// Checked for unknown users: a hash of the file's own kind and cost, so
    /// that an unknown user takes as long (and the same path) as a known one.
    decoy: PasswordHash,
    acl: Option<Arc<AclFile>>,
    allow_anonymous: bool,
}

impl FileBackend {
    /// Reads and parses the files `config` names (what `--test-config` and
    /// a reload check too). Warns when the password file is readable by others.
    pub fn load(config: &Config) -> anyhow::Result<FileBackend> {
        let passwords = match &config.password_file {
            Some(path) => {
                if let Some(warning) = permission_warning(path) {
                    tracing::warn!(path = %path.display(), "{warning}");
                }
                Some(PasswordFile::load(path).context("password_file")?)
            }
            None => None,
        };
        let acl = match &config.acl_file {
            Some(path) => Some(Arc::new(AclFile::load(path).context("acl_file")?)),
            None => None,
        };
        let decoy = passwords
            .as_ref()
            .and_then(|f| f.iter().next())
            .map_or_else(|| PasswordHash::decoy().clone(), |(_, h)| h.clone());
        let backend = FileBackend {
            decoy,
            passwords,
            acl,
            allow_anonymous: config.allow_anonymous,
        };
        if let (None, None) = backend.summary() {
            return Ok(backend);
        }
        let (users, acl_rules) = backend.summary();
        tracing::info!(
            ?users,
            ?acl_rules,
            allow_anonymous = backend.allow_anonymous,
            "password and ACL files loaded"
        );
        Ok(backend)
    }

    /// Users in the password file and rules in the ACL file, for the log.
    pub fn summary(&self) -> (Option<usize>, Option<usize>) {
        (
            self.passwords.as_ref().map(PasswordFile::len),
            self.acl.as_ref().map(|a| a.rule_count()),
        )
    }
}

impl Authenticator for FileBackend {
    fn authenticate(&self, who: &Credentials) -> Verdict {
        let Some(user) = who.username else {
            return Verdict::Now(if self.allow_anonymous {
                Ok(())
            } else {
                Err(Denial::Anonymous)
            });
        };
        let Some(file) = &self.passwords else {
            // No password file: a username is all that is asked (Mosquitto's
            // behaviour without a password file).
            return Verdict::Now(Ok(()));
        };
        // An unknown user costs a hash too, so timing does not tell users apart.
        let (hash, known) = match file.get(user) {
            Some(hash) => (hash, true),
            None => (&self.decoy, false),
        };
        if !hash.is_expensive() {
            return Verdict::Now(decide(hash, known, who.password));
        }
        let hash = hash.clone();
        let password = who.password.map(<[u8]>::to_vec);
        Verdict::Offload(Box::new(move || decide(&hash, known, password.as_deref())))
    }
}

impl Authorizer for FileBackend {
    fn permissions(&self, client_id: &str, username: Option<&str>) -> Permissions {
        match &self.acl {
            Some(acl) => Permissions::limited(acl.access_for(client_id, username)),
            None => Permissions::all(),
        }
    }
}

/// Verifies the password (even when the answer is already known, for even
/// timing) and names what was wrong.
fn decide(hash: &PasswordHash, known: bool, password: Option<&[u8]>) -> Check {
    let matches = hash.verify(password.unwrap_or_default());
    match (known, password, matches) {
        (false, _, _) => Err(Denial::UnknownUser),
        (true, None, _) => Err(Denial::NoPassword),
        (true, Some(_), false) => Err(Denial::WrongPassword),
        (true, Some(_), true) => Ok(()),
    }
}
