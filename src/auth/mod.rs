//! Who may connect, and what each client may do once connected.
//!
//! Every CONNECT passes an [`Authenticator`] before a session exists; an
//! [`Authorizer`] then gives the session its [`Permissions`], which the
//! session and router ask on the message path. Today's backend is
//! Mosquitto's password and ACL files ([`files`]); an HTTP or JWT backend
//! implements the same two traits and nothing in the session or router changes.
//! [`Auth`] holds the backend in force and swaps it atomically on reload.

pub mod acl;
pub mod files;
mod offload;
pub mod passwd;
pub mod password;
mod throttle;

use std::sync::{Arc, RwLock};

use crate::access::Permissions;
use crate::codec::ConnectCode;
use crate::config::Config;
pub use offload::{Offload, MAX_PENDING};
pub use throttle::Throttle;

/// What a CONNECT says about who sent it.
#[derive(Clone, Copy, Debug)]
pub struct Credentials<'a> {
    pub client_id: &'a str,
    /// The CONNECT's user name, or the TLS certificate's Common Name with
    /// `use_identity_as_username`.
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
}

/// Why a CONNECT is refused. The client learns only the CONNACK code; the
/// log says which (never the password).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denial {
    UnknownUser,
    WrongPassword,
    /// A user of the password file who sent no password.
    NoPassword,
    /// No username while anonymous clients are not allowed.
    Anonymous,
    /// Too many slow checks waiting: try again later.
    Busy,
}

impl Denial {
    pub fn code(self) -> ConnectCode {
        match self {
            Denial::UnknownUser | Denial::WrongPassword | Denial::NoPassword => {
                ConnectCode::BadUsernameOrPassword
            }
            Denial::Anonymous => ConnectCode::NotAuthorized,
            Denial::Busy => ConnectCode::ServerUnavailable,
        }
    }

    /// For the log.
    pub fn reason(self) -> &'static str {
        match self {
            Denial::UnknownUser => "unknown user",
            Denial::WrongPassword => "wrong password",
            Denial::NoPassword => "no password given",
            Denial::Anonymous => "no username, and allow_anonymous is false",
            Denial::Busy => "too many password checks waiting",
        }
    }

    /// For the client (a 5.0 reason string): never which of user or
    /// password was wrong.
    pub fn public_reason(self) -> &'static str {
        match self.code() {
            ConnectCode::BadUsernameOrPassword => "bad user name or password",
            ConnectCode::NotAuthorized => "not authorized",
            _ => "server busy, try again later",
        }
    }

    /// Counts against the client's address (a guess), unlike a refused
    /// anonymous client or a busy broker.
    pub fn is_bad_credentials(self) -> bool {
        self.code() == ConnectCode::BadUsernameOrPassword
    }
}

/// The outcome of a credential check.
pub type Check = Result<(), Denial>;

/// A credential check: decided now, or work too slow for an event loop,
/// which the caller runs on the verifier threads ([`Offload`]).
pub enum Verdict {
    Now(Check),
    Offload(Box<dyn FnOnce() -> Check + Send>),
}

/// Decides whether a CONNECT's credentials are accepted.
pub trait Authenticator: Send + Sync {
    fn authenticate(&self, who: &Credentials) -> Verdict;
}

/// Decides what an authenticated client may do.
pub trait Authorizer: Send + Sync {
    fn permissions(&self, client_id: &str, username: Option<&str>) -> Permissions;
}

/// A complete backend: both questions, answered from one set of rules.
pub trait Backend: Authenticator + Authorizer {}
impl<T: Authenticator + Authorizer> Backend for T {}

/// The backend in force, the slow-check threads and the guessing throttle.
pub struct Auth {
    backend: RwLock<Arc<dyn Backend>>,
    config: Config,
    pub offload: Offload,
    pub throttle: Throttle,
}

impl Auth {
    /// Loads the password and ACL files the configuration names; a file that
    /// cannot be read or parsed is an error naming it (and its line).
    pub fn from_config(config: &Config) -> anyhow::Result<Auth> {
        let backend = files::FileBackend::load(config)?;
        Ok(Auth {
            backend: RwLock::new(Arc::new(backend)),
            config: config.clone(),
            offload: Offload::new(config.cores.div_ceil(2)),
            throttle: Throttle::default(),
        })
    }

    /// The rules in force now.
    pub fn backend(&self) -> Arc<dyn Backend> {
        self.backend
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Re-reads the files. On any error the old rules stay in force (fail
    /// closed: never fewer checks because a file was broken).
    pub fn reload(&self) -> anyhow::Result<()> {
        let fresh = files::FileBackend::load(&self.config)?;
        *self.backend.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
        Ok(())
    }

    /// Whether reloading can change anything (some file is configured).
    pub fn has_files(&self) -> bool {
        self.config.password_file.is_some() || self.config.acl_file.is_some()
    }
}
