//! Listeners: the top-level plain one (`port`, `bind_address`), `[[listener]]`
//! tables as Mosquitto names their keys, and the flags for the common cases
//! (`--tls-port`, `--ws-port`, `--wss-port` with the top-level TLS keys).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::ValueEnum;
use serde::Deserialize;

use super::validate::Checker;
use super::{Config, ConfigError, FileConfig};

/// What a listener speaks above TCP (or TLS).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    /// MQTT straight over the stream.
    #[default]
    Mqtt,
    /// MQTT in WebSocket binary frames (RFC 6455, subprotocol `mqtt`).
    Websockets,
}

/// The oldest TLS version a listener accepts (Mosquitto's `tls_version`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Deserialize)]
pub enum TlsVersion {
    #[default]
    #[value(name = "tlsv1.2")]
    #[serde(rename = "tlsv1.2")]
    Tls12,
    #[value(name = "tlsv1.3")]
    #[serde(rename = "tlsv1.3")]
    Tls13,
}

/// A listener's TLS settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM certificate chain, the server's own certificate first.
    pub certfile: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub keyfile: PathBuf,
    /// PEM certificates of the CAs that sign client certificates.
    pub cafile: Option<PathBuf>,
    /// Mutual TLS: a client without a valid certificate is refused.
    pub require_certificate: bool,
    /// The client certificate's Common Name becomes the username.
    pub use_identity_as_username: bool,
    pub min_version: TlsVersion,
}

/// One listening address and what it speaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub bind: IpAddr,
    /// 0 lets the kernel pick a port (tests).
    pub port: u16,
    pub protocol: ListenerProtocol,
    pub tls: Option<TlsConfig>,
    /// The HTTP path a WebSocket upgrade must ask for.
    pub websockets_path: String,
}

/// The WebSocket path clients use unless told otherwise (MQTT.js, Paho, EMQX).
pub const DEFAULT_WEBSOCKETS_PATH: &str = "/mqtt";

impl Listener {
    /// Plain MQTT over TCP.
    pub fn mqtt(bind: IpAddr, port: u16) -> Listener {
        Listener {
            bind,
            port,
            protocol: ListenerProtocol::Mqtt,
            tls: None,
            websockets_path: DEFAULT_WEBSOCKETS_PATH.to_owned(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind, self.port)
    }

    /// The URL scheme clients use for it: `mqtt`, `mqtts`, `ws` or `wss`.
    pub fn scheme(&self) -> &'static str {
        match (self.protocol, self.tls.is_some()) {
            (ListenerProtocol::Mqtt, false) => "mqtt",
            (ListenerProtocol::Mqtt, true) => "mqtts",
            (ListenerProtocol::Websockets, false) => "ws",
            (ListenerProtocol::Websockets, true) => "wss",
        }
    }
}

/// How logs and `$SYS` name a listener: `mqtts://127.0.0.1:8883`.
impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme(), self.addr())
    }
}

/// One `[[listener]]` table. Unknown keys are refused, as elsewhere.
#[derive(Deserialize, Debug, Default, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ListenerFile {
    pub port: u16,
    pub bind_address: Option<IpAddr>,
    pub protocol: Option<ListenerProtocol>,
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    pub cafile: Option<PathBuf>,
    pub require_certificate: Option<bool>,
    pub use_identity_as_username: Option<bool>,
    pub tls_version: Option<TlsVersion>,
    pub websockets_path: Option<String>,
}

/// The TLS keys a listener (or the top level) may set.
struct TlsKeys<'a> {
    certfile: &'a Option<PathBuf>,
    keyfile: &'a Option<PathBuf>,
    cafile: &'a Option<PathBuf>,
    require_certificate: Option<bool>,
    use_identity_as_username: Option<bool>,
    tls_version: Option<TlsVersion>,
}

impl TlsKeys<'_> {
    /// TLS when both a certificate and a key are given.
    fn resolve(&self, what: &str) -> Result<Option<TlsConfig>, ConfigError> {
        let (certfile, keyfile) = match (self.certfile, self.keyfile) {
            (Some(c), Some(k)) => (c.clone(), k.clone()),
            (None, None) => return Ok(None),
            _ => {
                return Err(ConfigError::Invalid(format!(
                    "{what}: certfile and keyfile go together (TLS needs both)"
                )))
            }
        };
        Ok(Some(TlsConfig {
            certfile,
            keyfile,
            cafile: self.cafile.clone(),
            require_certificate: self.require_certificate.unwrap_or(false),
            use_identity_as_username: self.use_identity_as_username.unwrap_or(false),
            min_version: self.tls_version.unwrap_or_default(),
        }))
    }
}

impl ListenerFile {
    fn resolve(&self, default_bind: IpAddr) -> Result<Listener, ConfigError> {
        let what = format!("[[listener]] port {}", self.port);
        let keys = TlsKeys {
            certfile: &self.certfile,
            keyfile: &self.keyfile,
            cafile: &self.cafile,
            require_certificate: self.require_certificate,
            use_identity_as_username: self.use_identity_as_username,
            tls_version: self.tls_version,
        };
        Ok(Listener {
            bind: self.bind_address.unwrap_or(default_bind),
            port: self.port,
            protocol: self.protocol.unwrap_or_default(),
            tls: keys.resolve(&what)?,
            websockets_path: self
                .websockets_path
                .clone()
                .unwrap_or_else(|| DEFAULT_WEBSOCKETS_PATH.to_owned()),
        })
    }
}

impl FileConfig {
    /// Whether the top-level `port`/`bind_address` listener exists: always,
    /// unless `[[listener]]` tables are given and `port` is not.
    pub(super) fn default_listener(&self) -> bool {
        self.listener.is_none() || self.port.is_some()
    }

    /// Every listener besides the top-level one: the `[[listener]]` tables,
    /// then those of `--tls-port`, `--ws-port` and `--wss-port`, which use the
    /// top-level TLS keys.
    pub(super) fn resolve_listeners(&self, bind: IpAddr) -> Result<Vec<Listener>, ConfigError> {
        let mut listeners = Vec::new();
        for table in self.listener.iter().flatten() {
            listeners.push(table.resolve(bind)?);
        }
        let top = TlsKeys {
            certfile: &self.certfile,
            keyfile: &self.keyfile,
            cafile: &self.cafile,
            require_certificate: self.require_certificate,
            use_identity_as_username: self.use_identity_as_username,
            tls_version: self.tls_version,
        };
        let tls = |flag: &str| -> Result<TlsConfig, ConfigError> {
            top.resolve(flag)?
                .ok_or_else(|| ConfigError::Invalid(format!("{flag} needs certfile and keyfile")))
        };
        let mut add = |port: Option<u16>, protocol, tls: Option<TlsConfig>| {
            if let Some(port) = port {
                let mut l = Listener::mqtt(bind, port);
                l.protocol = protocol;
                l.tls = tls;
                listeners.push(l);
            }
        };
        let tls_port = self.tls_port.map(|_| tls("tls_port")).transpose()?;
        let wss = self.wss_port.map(|_| tls("wss_port")).transpose()?;
        add(self.tls_port, ListenerProtocol::Mqtt, tls_port);
        add(self.ws_port, ListenerProtocol::Websockets, None);
        add(self.wss_port, ListenerProtocol::Websockets, wss);
        Ok(listeners)
    }
}

impl Config {
    /// Every listener the broker opens, the top-level one first.
    pub fn all_listeners(&self) -> Vec<Listener> {
        let mut all = Vec::with_capacity(1 + self.listeners.len());
        if self.default_listener {
            all.push(Listener::mqtt(self.bind, self.port));
        }
        all.extend(self.listeners.iter().cloned());
        all
    }

    pub(super) fn check_listeners(&self, check: &mut Checker) {
        let all = self.all_listeners();
        if all.is_empty() {
            check.fail("no listener: give port or a [[listener]]".to_owned());
        }
        for (i, l) in all.iter().enumerate() {
            if l.port != 0
                && all[..i]
                    .iter()
                    .any(|o| o.port == l.port && overlaps(o.bind, l.bind))
            {
                check.fail(format!("{l}: port {} is given to two listeners", l.port));
            }
            if !l.websockets_path.starts_with('/') {
                check.fail(format!(
                    "{l}: websockets_path {:?} must start with '/'",
                    l.websockets_path
                ));
            }
            if let Some(tls) = &l.tls {
                if tls.require_certificate && tls.cafile.is_none() {
                    check.fail(format!("{l}: require_certificate needs cafile"));
                }
                if tls.use_identity_as_username && !tls.require_certificate {
                    check.fail(format!(
                        "{l}: use_identity_as_username needs require_certificate"
                    ));
                }
            }
        }
    }
}

/// Two binds conflict on one port when equal or when either is a wildcard.
fn overlaps(a: IpAddr, b: IpAddr) -> bool {
    a == b || a.is_unspecified() || b.is_unspecified()
}
