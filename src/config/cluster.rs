//! `[cluster]`: this broker as one node of a ringmq cluster over NATS.

use std::path::PathBuf;

use serde::Deserialize;

use super::bridge::{hostname, Secret};
use super::{ByteSize, ConfigError};

/// The `[cluster]` table as written. Unknown keys are refused.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    pub nats_servers: Vec<String>,
    pub node_name: Option<String>,
    pub subject_prefix: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub cafile: Option<PathBuf>,
    pub tls: Option<bool>,
    pub link_buffer: Option<ByteSize>,
    pub jetstream_replicas: Option<usize>,
}

/// The resolved `[cluster]` settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// NATS URLs (`nats://host:port`, `tls://host:port`); the client tries
    /// them in turn and learns the rest of the NATS cluster from them.
    pub nats_servers: Vec<String>,
    /// This node's name in logs and in its NATS connection name.
    pub node_name: String,
    /// The subject space of this ringmq cluster, so several can share one
    /// NATS: live messages under `<prefix>.m`, retained updates under
    /// `<prefix>.r`.
    pub subject_prefix: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub token: Option<Secret>,
    /// PEM CAs that sign the NATS servers' certificates (implies TLS).
    pub cafile: Option<PathBuf>,
    /// Require TLS to NATS.
    pub tls: bool,
    /// Bytes of messages waiting for the NATS link; past it, messages for
    /// other nodes are dropped and counted.
    pub link_buffer: usize,
    /// Copies JetStream keeps of the retained messages' stream (1 on a lone
    /// nats-server, 3 on a cluster of three).
    pub jetstream_replicas: usize,
}

/// The default `link_buffer`.
pub const DEFAULT_LINK_BUFFER: usize = 64 << 20;

impl ClusterFile {
    pub(super) fn resolve(&self) -> Result<Cluster, ConfigError> {
        let fail = |m: String| ConfigError::Invalid(format!("[cluster]: {m}"));
        if self.nats_servers.is_empty() {
            return Err(fail("nats_servers lists no server".into()));
        }
        for url in &self.nats_servers {
            check_url(url).map_err(fail)?;
        }
        let prefix = self.subject_prefix.as_deref().unwrap_or("ringmq");
        check_prefix(prefix).map_err(fail)?;
        if self.password.is_some() != self.username.is_some() {
            return Err(fail("username and password go together".into()));
        }
        if self.token.is_some() && self.username.is_some() {
            return Err(fail("give a token or a username, not both".into()));
        }
        let link_buffer = match self.link_buffer {
            Some(ByteSize(n)) if n < 64 << 10 => {
                return Err(fail(format!("link_buffer {n} is under 64KiB")))
            }
            Some(ByteSize(n)) => usize::try_from(n).unwrap_or(usize::MAX),
            None => DEFAULT_LINK_BUFFER,
        };
        let jetstream_replicas = self.jetstream_replicas.unwrap_or(1);
        if !(1..=5).contains(&jetstream_replicas) {
            return Err(fail(format!(
                "jetstream_replicas {jetstream_replicas} is not in 1..=5"
            )));
        }
        let node_name = self.node_name.clone().unwrap_or_else(hostname);
        if node_name.is_empty() {
            return Err(fail("node_name is empty".into()));
        }
        Ok(Cluster {
            nats_servers: self.nats_servers.clone(),
            node_name,
            subject_prefix: prefix.to_owned(),
            username: self.username.clone(),
            password: self.password.clone().map(Secret),
            token: self.token.clone().map(Secret),
            cafile: self.cafile.clone(),
            tls: self.tls.unwrap_or(false) || self.cafile.is_some(),
            link_buffer,
            jetstream_replicas,
        })
    }
}

/// `nats://`, `tls://` or a bare `host:port`.
fn check_url(url: &str) -> Result<(), String> {
    let rest = ["nats://", "tls://"]
        .iter()
        .find_map(|s| url.strip_prefix(s))
        .unwrap_or(url);
    let host_port = rest.rsplit('@').next().unwrap_or(rest);
    match host_port.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!(
            "nats_servers entry {url:?} is not nats://host:port"
        )),
    }
}

/// Dot-separated tokens without NATS wildcards, whitespace or `%`.
fn check_prefix(prefix: &str) -> Result<(), String> {
    let bad_token = |t: &str| {
        t.is_empty()
            || t.chars()
                .any(|c| matches!(c, '*' | '>' | '%') || c.is_whitespace() || c.is_control())
    };
    if prefix.split('.').any(bad_token) {
        return Err(format!(
            "subject_prefix {prefix:?} is not a NATS subject of plain tokens (no *, >, %, spaces or empty tokens)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Result<Cluster, String> {
        let file: ClusterFile = toml::from_str(text).map_err(|e| e.to_string())?;
        file.resolve().map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_a_full_table() {
        let c = table(r#"nats_servers = ["nats://127.0.0.1:4222"]"#).unwrap();
        assert_eq!(c.subject_prefix, "ringmq");
        assert_eq!(c.link_buffer, DEFAULT_LINK_BUFFER);
        assert!(!c.tls);
        assert!(!c.node_name.is_empty());
        let c = table(
            r#"nats_servers = ["tls://a:4222", "b:4223"]
               node_name = "n1"
               subject_prefix = "fleet.eu"
               username = "u"
               password = "p"
               cafile = "/ca.pem"
               link_buffer = "1MiB""#,
        )
        .unwrap();
        assert_eq!(c.node_name, "n1");
        assert_eq!(c.subject_prefix, "fleet.eu");
        assert!(c.tls, "a CA file means TLS");
        assert_eq!(c.link_buffer, 1 << 20);
        assert_eq!(format!("{:?}", c.password), "Some(\"<redacted>\")");
    }

    #[test]
    fn bad_tables_are_refused_with_the_reason() {
        for (text, reason) in [
            ("nats_servers = []", "lists no server"),
            (r#"nats_servers = ["nats://h"]"#, "is not nats://host:port"),
            (
                r#"nats_servers = ["h:1"]
                   subject_prefix = "a.*""#,
                "subject_prefix",
            ),
            (
                r#"nats_servers = ["h:1"]
                   subject_prefix = "a..b""#,
                "subject_prefix",
            ),
            (
                r#"nats_servers = ["h:1"]
                   username = "u""#,
                "go together",
            ),
            (
                r#"nats_servers = ["h:1"]
                   link_buffer = 10"#,
                "under 64KiB",
            ),
            (
                r#"nats_servers = ["h:1"]
                   jetstream_replicas = 7"#,
                "not in 1..=5",
            ),
            (
                r#"nats_servers = ["h:1"]
                   node = "x""#,
                "unknown field",
            ),
        ] {
            let err = table(text).unwrap_err();
            assert!(err.contains(reason), "{text}: {err}");
        }
    }
}
