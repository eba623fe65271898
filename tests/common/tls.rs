//! Certificates made at test time (rcgen): a CA, a server certificate for
//! 127.0.0.1 and localhost, client certificates signed by the CA, by another
//! CA, or expired. PEM files in a temporary folder removed on drop; no key is
//! ever committed.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use ringmq::config::{Listener, ListenerProtocol, TlsConfig, TlsVersion};

/// A certificate and its key, as PEM files.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A throwaway PKI for one test.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server: CertFiles,
    issuer: Issuer<'static, KeyPair>,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn unique_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("ringmq-pki-{}-{tag}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the PKI folder");
    dir
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a PEM file");
    path
}

impl Pki {
    pub fn new(tag: &str) -> Pki {
        let dir = unique_dir(tag);
        let ca_key = KeyPair::generate().expect("CA key");
        let params = ca_params("ringmq test CA");
        let ca_cert = params.self_signed(&ca_key).expect("CA certificate");
        let ca = write(&dir, "ca.crt", &ca_cert.pem());
        let issuer = Issuer::new(params, ca_key);
        let mut server = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        server
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server = sign(&dir, "server", server, &issuer);
        Pki {
            dir,
            ca,
            server,
            issuer,
        }
    }

    /// A client certificate with Common Name `cn`, signed by this PKI's CA.
    pub fn client(&self, cn: &str) -> CertFiles {
        sign(
            &self.dir,
            &format!("client-{cn}"),
            client_params(cn),
            &self.issuer,
        )
    }

    /// A client certificate of this CA that expired in 2021.
    pub fn expired_client(&self, cn: &str) -> CertFiles {
        let mut params = client_params(cn);
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        sign(&self.dir, &format!("expired-{cn}"), params, &self.issuer)
    }

    /// A client certificate signed by a CA the broker does not trust.
    pub fn foreign_client(&self, cn: &str) -> CertFiles {
        let key = KeyPair::generate().expect("foreign CA key");
        let issuer = Issuer::new(ca_params("some other CA"), key);
        sign(
            &self.dir,
            &format!("foreign-{cn}"),
            client_params(cn),
            &issuer,
        )
    }

    /// TLS settings for a listener with this PKI's server certificate.
    pub fn tls(&self, require_certificate: bool) -> TlsConfig {
        TlsConfig {
            certfile: self.server.cert.clone(),
            keyfile: self.server.key.clone(),
            cafile: require_certificate.then(|| self.ca.clone()),
            require_certificate,
            use_identity_as_username: false,
            min_version: TlsVersion::Tls12,
        }
    }

    /// A 127.0.0.1 listener on a port the kernel picks.
    pub fn listener(&self, protocol: ListenerProtocol, tls: Option<TlsConfig>) -> Listener {
        let mut l = Listener::mqtt(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        l.protocol = protocol;
        l.tls = tls;
        l
    }
}

fn client_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

fn sign(
    dir: &Path,
    name: &str,
    params: CertificateParams,
    issuer: &Issuer<'_, KeyPair>,
) -> CertFiles {
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, issuer).expect("sign");
    CertFiles {
        cert: write(dir, &format!("{name}.crt"), &cert.pem()),
        key: write(dir, &format!("{name}.key"), &key.serialize_pem()),
    }
}

/// A blocking TLS client (rustls, ring) connected to `addr`, trusting `ca`
/// and presenting `client` if given, with its handshake done: `Err` when the
/// broker refused it. Timeouts of [`super::STEP`] on every read and write.
pub fn tls_connect(
    addr: std::net::SocketAddr,
    ca: &Path,
    client: Option<&CertFiles>,
) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>> {
    tls_connect_alpn(addr, ca, client, &[])
}

/// [`tls_connect`], offering these ALPN protocols.
pub fn tls_connect_alpn(
    addr: std::net::SocketAddr,
    ca: &Path,
    client: Option<&CertFiles>,
    alpn: &[&[u8]],
) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use std::sync::Arc;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots
            .add(cert.expect("CA certificate"))
            .expect("trusted CA");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match client {
        Some(files) => {
            let chain: Vec<_> = CertificateDer::pem_file_iter(&files.cert)
                .expect("client cert")
                .map(|c| c.expect("client certificate"))
                .collect();
            let key = PrivateKeyDer::from_pem_file(&files.key).expect("client key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = config;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = ServerName::IpAddress(addr.ip().into());
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client session");
    let mut sock = std::net::TcpStream::connect(addr)?;
    sock.set_read_timeout(Some(super::STEP))?;
    sock.set_write_timeout(Some(super::STEP))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)?;
    }
    Ok(rustls::StreamOwned::new(conn, sock))
}
