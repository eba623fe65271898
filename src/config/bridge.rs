//! `[[bridge]]` tables: links to other brokers, in Mosquitto's terms (its
//! `connection` blocks), and the topic lines that say what crosses them.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use ringmq_proto::codec::QoS;
use ringmq_proto::topic::TopicFilter;
use serde::Deserialize;

use super::ConfigError;

/// Which MQTT version a bridge speaks to the remote broker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum BridgeProtocol {
    /// MQTT 5.0: No Local on the remote subscriptions stops loops.
    #[default]
    #[serde(rename = "mqttv50", alias = "5.0", alias = "5")]
    V5,
    /// MQTT 3.1.1, for remotes without 5.0 (with `try_private`, Mosquitto
    /// knows the client as a bridge and sends nothing back that came from it).
    #[serde(rename = "mqttv311", alias = "3.1.1", alias = "4")]
    V311,
}

/// `address`: one `host:port`, or several tried in turn.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Addresses {
    One(String),
    Many(Vec<String>),
}

/// `restart_timeout`: a fixed delay in seconds, or `[base, cap]` for an
/// exponential backoff with jitter (Mosquitto's two forms).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum RestartTimeout {
    Fixed(u64),
    Backoff([u64; 2]),
}

/// One `[[bridge]]` table as written. Unknown keys are refused.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BridgeFile {
    pub name: String,
    pub address: Option<Addresses>,
    pub protocol_version: Option<BridgeProtocol>,
    #[serde(alias = "remote_clientid")]
    pub client_id: Option<String>,
    #[serde(alias = "local_clientid")]
    pub local_client_id: Option<String>,
    #[serde(alias = "remote_username")]
    pub username: Option<String>,
    #[serde(alias = "remote_password")]
    pub password: Option<String>,
    pub cleansession: Option<bool>,
    #[serde(alias = "keepalive_interval")]
    pub keepalive: Option<u16>,
    #[serde(default)]
    pub topic: Vec<String>,
    #[serde(alias = "bridge_cafile")]
    pub cafile: Option<PathBuf>,
    #[serde(alias = "bridge_certfile")]
    pub certfile: Option<PathBuf>,
    #[serde(alias = "bridge_keyfile")]
    pub keyfile: Option<PathBuf>,
    #[serde(alias = "bridge_insecure")]
    pub tls_insecure: Option<bool>,
    pub restart_timeout: Option<RestartTimeout>,
    pub max_inflight: Option<u16>,
    pub notifications: Option<bool>,
    pub notification_topic: Option<String>,
    pub try_private: Option<bool>,
}

/// Which way a topic line carries messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From this broker to the remote one.
    Out,
    /// From the remote broker to this one.
    In,
    Both,
}

impl Direction {
    pub fn outward(self) -> bool {
        matches!(self, Direction::Out | Direction::Both)
    }

    pub fn inward(self) -> bool {
        matches!(self, Direction::In | Direction::Both)
    }
}

/// One topic line: `PATTERN [DIRECTION [QOS [LOCAL_PREFIX REMOTE_PREFIX]]]`.
/// The local filter is `local_prefix + pattern`, the remote one
/// `remote_prefix + pattern`; a topic crossing the bridge trades one prefix
/// for the other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub pattern: String,
    pub direction: Direction,
    /// The highest QoS subscribed with; a message crosses at the QoS its
    /// subscription delivered it with.
    pub qos: QoS,
    pub local_prefix: String,
    pub remote_prefix: String,
}

impl Route {
    pub fn local_filter(&self) -> String {
        format!("{}{}", self.local_prefix, self.pattern)
    }

    pub fn remote_filter(&self) -> String {
        format!("{}{}", self.remote_prefix, self.pattern)
    }

    /// The remote topic for a local `topic` this route sends out, if it does.
    pub fn to_remote(&self, topic: &str) -> Option<String> {
        Self::swap(
            topic,
            &self.local_filter(),
            &self.local_prefix,
            &self.remote_prefix,
        )
    }

    /// The local topic for a remote `topic` this route brings in, if it does.
    pub fn to_local(&self, topic: &str) -> Option<String> {
        Self::swap(
            topic,
            &self.remote_filter(),
            &self.remote_prefix,
            &self.local_prefix,
        )
    }

    fn swap(topic: &str, filter: &str, from: &str, to: &str) -> Option<String> {
        if !ringmq_proto::topic::matches(filter, topic) {
            return None;
        }
        let rest = topic.strip_prefix(from)?;
        Some(format!("{to}{rest}"))
    }

    /// Parses a topic line as Mosquitto writes it; `""` stands for an empty
    /// pattern or prefix.
    pub fn parse(line: &str) -> Result<Route, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let word = |i: usize| words.get(i).map(|w| if *w == "\"\"" { "" } else { w });
        let pattern = word(0).ok_or("empty topic line")?.to_owned();
        let direction = match word(1) {
            None | Some("out") => Direction::Out,
            Some("in") => Direction::In,
            Some("both") => Direction::Both,
            Some(other) => return Err(format!("direction {other:?} is not in, out or both")),
        };
        let qos = match word(2) {
            None | Some("0") => QoS::AtMostOnce,
            Some("1") => QoS::AtLeastOnce,
            Some("2") => QoS::ExactlyOnce,
            Some(other) => return Err(format!("QoS {other:?} is not 0, 1 or 2")),
        };
        let (local_prefix, remote_prefix) = match (word(3), word(4)) {
            (None, None) => (String::new(), String::new()),
            (Some(l), Some(r)) => (l.to_owned(), r.to_owned()),
            _ => return Err("give both prefixes (local, then remote) or neither".to_owned()),
        };
        if words.len() > 5 {
            return Err("more than five words".to_owned());
        }
        let route = Route {
            pattern,
            direction,
            qos,
            local_prefix,
            remote_prefix,
        };
        route.check()?;
        Ok(route)
    }

    fn check(&self) -> Result<(), String> {
        for prefix in [&self.local_prefix, &self.remote_prefix] {
            if prefix.contains(['+', '#']) {
                return Err(format!("prefix {prefix:?} must not hold a wildcard"));
            }
        }
        for filter in [self.local_filter(), self.remote_filter()] {
            if filter.is_empty() {
                return Err("an empty pattern needs a prefix".to_owned());
            }
            if filter.starts_with("$share/") {
                return Err(format!("{filter:?} is a shared subscription"));
            }
            TopicFilter::new(bytes::Bytes::from(filter.clone()), usize::MAX)
                .map_err(|e| format!("{filter:?} is not a valid topic filter: {e}"))?;
        }
        Ok(())
    }
}

/// A secret from the configuration: compared and sent, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// How the remote broker's certificate is checked and who we are to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeTls {
    /// PEM certificates of the CAs that sign the remote's certificate.
    pub cafile: PathBuf,
    /// Client certificate chain and key, for a remote that wants them.
    pub client: Option<(PathBuf, PathBuf)>,
    /// Accept any certificate (tests only; the handshake is still checked).
    pub insecure: bool,
}

/// A resolved `[[bridge]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bridge {
    /// Names it in logs and metrics.
    pub name: String,
    /// `(host, port)`, tried in order, round and round.
    pub addresses: Vec<(String, u16)>,
    pub protocol: BridgeProtocol,
    /// The client id at the remote broker.
    pub client_id: String,
    /// The client id of its session at this broker.
    pub local_client_id: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Start clean sessions on both sides: nothing is queued for the bridge
    /// while it is down.
    pub clean_session: bool,
    pub keepalive: u16,
    pub routes: Vec<Route>,
    pub tls: Option<BridgeTls>,
    /// First reconnect delay and the most it grows to (equal: no backoff).
    pub restart_base: Duration,
    pub restart_cap: Duration,
    /// QoS 1/2 messages in flight each way, and the Receive Maximum it
    /// announces to both brokers.
    pub max_inflight: u16,
    /// Publish `1` (connected) and, as its will, `0` retained on the remote
    /// broker's `notification_topic`.
    pub notifications: bool,
    pub notification_topic: String,
    /// 3.1.1 only: tell the remote we are a bridge (protocol level 0x84).
    pub try_private: bool,
}

/// The port when `address` names none.
const DEFAULT_PORT: u16 = 1883;

impl BridgeFile {
    pub fn resolve(&self, hostname: &str) -> Result<Bridge, ConfigError> {
        let what = format!("[[bridge]] {:?}", self.name);
        let fail = |why: String| ConfigError::Invalid(format!("{what}: {why}"));
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(fail("name must be letters, digits, '-', '_' or '.'".into()));
        }
        let addresses = match &self.address {
            None => return Err(fail("address is required".into())),
            Some(Addresses::One(a)) => vec![parse_address(a).map_err(fail)?],
            Some(Addresses::Many(list)) if list.is_empty() => {
                return Err(fail("address lists no address".into()))
            }
            Some(Addresses::Many(list)) => list
                .iter()
                .map(|a| parse_address(a))
                .collect::<Result<_, _>>()
                .map_err(fail)?,
        };
        if self.topic.is_empty() {
            return Err(fail("no topic line: nothing would cross the bridge".into()));
        }
        let routes = self
            .topic
            .iter()
            .map(|line| Route::parse(line).map_err(|e| fail(format!("topic {line:?}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let client_id = self
            .client_id
            .clone()
            .unwrap_or_else(|| format!("{hostname}.{}", self.name));
        let (restart_base, restart_cap) = match &self.restart_timeout {
            None => (5, 30),
            Some(RestartTimeout::Fixed(s)) => (*s, *s),
            Some(RestartTimeout::Backoff([base, cap])) => (*base, *cap),
        };
        if restart_base == 0 || restart_cap < restart_base {
            return Err(fail(
                "restart_timeout must be at least 1 s, its cap at least its base".into(),
            ));
        }
        let max_inflight = self.max_inflight.unwrap_or(100);
        if max_inflight == 0 {
            return Err(fail("max_inflight must be at least 1".into()));
        }
        let keepalive = self.keepalive.unwrap_or(60);
        if keepalive < 5 {
            return Err(fail("keepalive must be at least 5 s".into()));
        }
        Ok(Bridge {
            name: self.name.clone(),
            addresses,
            protocol: self.protocol_version.unwrap_or_default(),
            local_client_id: self
                .local_client_id
                .clone()
                .unwrap_or_else(|| format!("local.{client_id}")),
            notification_topic: self
                .notification_topic
                .clone()
                .unwrap_or_else(|| format!("$SYS/broker/connection/{client_id}/state")),
            client_id,
            username: self.username.clone(),
            password: self.password.clone().map(Secret),
            clean_session: self.cleansession.unwrap_or(false),
            keepalive,
            routes,
            tls: self.tls().map_err(fail)?,
            restart_base: Duration::from_secs(restart_base),
            restart_cap: Duration::from_secs(restart_cap),
            max_inflight,
            notifications: self.notifications.unwrap_or(true),
            try_private: self.try_private.unwrap_or(true),
        })
    }

    fn tls(&self) -> Result<Option<BridgeTls>, String> {
        let client = match (&self.certfile, &self.keyfile) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            _ => return Err("certfile and keyfile go together".into()),
        };
        match &self.cafile {
            Some(cafile) => Ok(Some(BridgeTls {
                cafile: cafile.clone(),
                client,
                insecure: self.tls_insecure.unwrap_or(false),
            })),
            None if client.is_some() || self.tls_insecure.is_some() => {
                Err("TLS to the remote needs cafile (the system's bundle is \
                 /etc/ssl/certs/ca-certificates.crt)"
                    .into())
            }
            None => Ok(None),
        }
    }
}

impl super::FileConfig {
    /// Every `[[bridge]]`, each name used once.
    pub(super) fn resolve_bridges(&self) -> Result<Vec<Bridge>, ConfigError> {
        let tables = self.bridge.as_deref().unwrap_or_default();
        let host = if tables.is_empty() {
            String::new()
        } else {
            hostname()
        };
        let bridges = tables
            .iter()
            .map(|t| t.resolve(&host))
            .collect::<Result<Vec<_>, _>>()?;
        for (i, b) in bridges.iter().enumerate() {
            if bridges[..i].iter().any(|o| o.name == b.name) {
                return Err(ConfigError::Invalid(format!(
                    "two [[bridge]] tables are named {:?}",
                    b.name
                )));
            }
        }
        Ok(bridges)
    }
}

/// `host:port`, `host` (port 1883) or `[v6]:port`.
fn parse_address(text: &str) -> Result<(String, u16), String> {
    let bad = || format!("address {text:?} is not host:port");
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if after.is_empty() => DEFAULT_PORT,
            None => return Err(bad()),
        };
        return Ok((host.to_owned(), port));
    }
    match text.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !host.contains(':') => {
            Ok((host.to_owned(), port.parse().map_err(|_| bad())?))
        }
        None if !text.is_empty() => Ok((text.to_owned(), DEFAULT_PORT)),
        _ => Err(bad()),
    }
}

/// This machine's name, for the default remote client id (as Mosquitto's
/// `hostname.connection`).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "ringmq".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_lines_parse_as_mosquitto_writes_them() {
        let r = Route::parse("sensors/# out 1").unwrap();
        assert_eq!((r.direction, r.qos), (Direction::Out, QoS::AtLeastOnce));
        assert_eq!(r.local_filter(), "sensors/#");
        let r = Route::parse("# both 2 local/ remote/").unwrap();
        assert_eq!(r.local_filter(), "local/#");
        assert_eq!(r.remote_filter(), "remote/#");
        assert_eq!(r.to_remote("local/a/b").as_deref(), Some("remote/a/b"));
        assert_eq!(r.to_local("remote/a").as_deref(), Some("local/a"));
        assert_eq!(r.to_remote("other/a"), None);
        let r = Route::parse("\"\" in 0 here/status there/status").unwrap();
        assert_eq!(r.to_local("there/status").as_deref(), Some("here/status"));
        assert_eq!(Route::parse("a/#").unwrap().direction, Direction::Out);
    }

    #[test]
    fn bad_topic_lines_are_refused() {
        for line in [
            "",
            "a sideways",
            "a out 3",
            "a out 1 only-one-prefix",
            "a/#/b",
            "# out 0 lo+/ re/",
            "\"\" out 0 \"\" \"\"",
            "$share/g/a",
            "a out 1 x/ y/ extra",
        ] {
            assert!(Route::parse(line).is_err(), "{line:?} was accepted");
        }
    }

    #[test]
    fn addresses_take_a_default_port_and_ipv6() {
        assert_eq!(parse_address("h:1").unwrap(), ("h".into(), 1));
        assert_eq!(parse_address("h").unwrap(), ("h".into(), 1883));
        assert_eq!(parse_address("[::1]:2").unwrap(), ("::1".into(), 2));
        assert!(parse_address("h:x").is_err());
        assert!(parse_address(":1").is_err());
    }

    #[test]
    fn a_bridge_resolves_with_mosquittos_defaults() {
        let file = BridgeFile {
            name: "cloud".into(),
            address: Some(Addresses::One("127.0.0.1:1884".into())),
            topic: vec!["a/# out 1".into()],
            password: Some("hunter2".into()),
            ..BridgeFile::default()
        };
        let b = file.resolve("host").unwrap();
        assert_eq!(b.client_id, "host.cloud");
        assert_eq!(b.local_client_id, "local.host.cloud");
        assert_eq!(
            b.notification_topic,
            "$SYS/broker/connection/host.cloud/state"
        );
        assert!(!b.clean_session && b.notifications && b.tls.is_none());
        assert!(!format!("{b:?}").contains("hunter2"), "password printed");
        let nameless = BridgeFile {
            name: "a b".into(),
            ..file.clone()
        };
        assert!(nameless.resolve("h").is_err());
        let tls_without_ca = BridgeFile {
            certfile: Some("c".into()),
            keyfile: Some("k".into()),
            ..file
        };
        assert!(tls_without_ca.resolve("h").is_err());
    }
}
