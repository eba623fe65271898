//! The authentication hook: every CONNECT's credentials pass through here before
//! a session exists. Today the only policy is `allow_anonymous`; password files
//! and ACLs plug in behind the same trait.

use crate::codec::{Connect, ConnectCode};

pub mod acl;

/// Decides whether a CONNECT's credentials are accepted.
pub trait Authenticator: Send + Sync {
    fn authenticate(&self, connect: &Connect) -> Result<(), ConnectCode>;
}

/// Accepts every client, or only those that present a username.
#[derive(Clone, Copy, Debug)]
pub struct AnonymousPolicy {
    pub allow_anonymous: bool,
}

impl Authenticator for AnonymousPolicy {
    fn authenticate(&self, connect: &Connect) -> Result<(), ConnectCode> {
        if connect.username.is_none() && !self.allow_anonymous {
            return Err(ConnectCode::NotAuthorized);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::codec::{Properties, Protocol};

    fn connect(username: Option<&'static [u8]>) -> Connect {
        Connect {
            protocol: Protocol::V3_1_1,
            clean_start: true,
            keep_alive: 0,
            client_id: Bytes::from_static(b"c"),
            will: None,
            username: username.map(Bytes::from_static),
            password: None,
            properties: Properties::default(),
        }
    }

    #[test]
    fn anonymous_policy() {
        let closed = AnonymousPolicy {
            allow_anonymous: false,
        };
        assert_eq!(
            closed.authenticate(&connect(None)),
            Err(ConnectCode::NotAuthorized)
        );
        assert_eq!(closed.authenticate(&connect(Some(b"u"))), Ok(()));
        let open = AnonymousPolicy {
            allow_anonymous: true,
        };
        assert_eq!(open.authenticate(&connect(None)), Ok(()));
    }
}
