//! TLS with rustls (ring provider): building a listener's server config from
//! its PEM files, swapping it on SIGHUP, and reading the client's identity.

use std::path::Path;
use std::sync::{Arc, RwLock};

use anyhow::{anyhow, bail, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};

use crate::config::{TlsConfig, TlsVersion};

/// The protocol a client may ask for with ALPN ([MQTT] section 6 names TLS;
/// "mqtt" is the registered ALPN id). A client offering none is accepted too.
const ALPN_MQTT: &[u8] = b"mqtt";

/// Reads the certificate chain, key and client CAs of `tls` and builds the
/// server configuration, or says which file is wrong and why.
pub fn load_server_config(tls: &TlsConfig) -> anyhow::Result<Arc<ServerConfig>> {
    let certs = read_certs(&tls.certfile, "certfile")?;
    let key = PrivateKeyDer::from_pem_file(&tls.keyfile).map_err(|e| {
        anyhow!(
            "keyfile {}: no usable PEM private key ({e})",
            tls.keyfile.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .context("TLS versions")?;
    let builder = match (&tls.cafile, tls.require_certificate) {
        (Some(cafile), true) => {
            let mut roots = RootCertStore::empty();
            for ca in read_certs(cafile, "cafile")? {
                roots.add(ca).with_context(|| {
                    format!("cafile {}: a certificate rustls refuses", cafile.display())
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .context("client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
        (None, true) => bail!("require_certificate needs cafile"),
        (_, false) => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).with_context(|| {
        format!(
            "certfile {} and keyfile {} do not make a usable pair",
            tls.certfile.display(),
            tls.keyfile.display()
        )
    })?;
    config.alpn_protocols = vec![ALPN_MQTT.to_vec()];
    Ok(Arc::new(config))
}

fn read_certs(path: &Path, key: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow!("{key} {}: {e}", path.display()))?;
    if certs.is_empty() {
        bail!("{key} {}: no PEM certificate in it", path.display());
    }
    Ok(certs)
}

/// A listener's TLS configuration, replaced whole on reload: connections in
/// the middle of a handshake keep the one they started with.
pub struct TlsAcceptor {
    settings: TlsConfig,
    current: RwLock<Arc<ServerConfig>>,
}

impl TlsAcceptor {
    pub fn new(settings: TlsConfig) -> anyhow::Result<TlsAcceptor> {
        let current = RwLock::new(load_server_config(&settings)?);
        Ok(TlsAcceptor { settings, current })
    }

    /// A TLS session for a new connection. Read once per accept, never on the
    /// message path.
    pub fn session(&self) -> Result<ServerConnection, rustls::Error> {
        let config = self
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        ServerConnection::new(config)
    }

    /// Re-reads the certificate, key and CAs. On any error the old
    /// configuration stays in use and the error says why.
    pub fn reload(&self) -> anyhow::Result<()> {
        let fresh = load_server_config(&self.settings)?;
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = fresh;
        Ok(())
    }

    pub fn settings(&self) -> &TlsConfig {
        &self.settings
    }
}

/// The Common Name of the client certificate's subject, if the client
/// presented one that has a (UTF-8) Common Name.
pub fn client_identity(conn: &ServerConnection) -> Option<String> {
    let cert = conn.peer_certificates()?.first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}
