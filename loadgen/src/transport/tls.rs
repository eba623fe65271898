//! TLS, sans-io: a rustls [`ClientConnection`] between the socket and the
//! bytes above it. Bytes read from the socket go in with `read_tls` and
//! `process_new_packets`, plaintext comes out of `reader()`; plaintext goes in
//! through `writer()` and the records come out of `write_tls`. No socket here:
//! [`super::Link`] and the connection halves move the bytes.
//!
//! One [`TlsSetup`] per run (the `ClientConfig`, loaded once from the PEM
//! files, shared by every connection of every thread); one [`TlsLayer`] per
//! connection.

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{self, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// How the broker's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    /// Against the CA certificates of --cafile, for the server name.
    CaFile,
    /// Not at all (--insecure); the handshake's signatures are still checked.
    Insecure,
}

impl Verify {
    pub fn name(self) -> &'static str {
        match self {
            Verify::CaFile => "cafile",
            Verify::Insecure => "none (--insecure)",
        }
    }
}

/// The PEM texts a [`TlsSetup`] is made from (files read by [`TlsSetup::load`]).
#[derive(Default)]
pub struct Pem<'a> {
    /// CA certificates; `None` with `insecure`.
    pub ca: Option<&'a [u8]>,
    pub insecure: bool,
    /// Client certificate chain and its key, for mutual TLS.
    pub client: Option<(&'a [u8], &'a [u8])>,
}

/// The run's TLS client configuration, shared by every connection.
#[derive(Clone, Debug)]
pub struct TlsSetup {
    config: Arc<ClientConfig>,
    /// --server-name; `None`: each target's host.
    server_name: Option<ServerName<'static>>,
    pub verify: Verify,
    pub client_certificate: bool,
}

impl TlsSetup {
    /// From the command line's files: --cafile (or --insecure), --cert and --key.
    pub fn load(
        cafile: Option<&Path>,
        insecure: bool,
        client_files: Option<(&Path, &Path)>,
        server_name: Option<&str>,
    ) -> Result<TlsSetup> {
        let read = |what: &str, path: &Path| {
            std::fs::read(path).with_context(|| format!("reading {what} {}", path.display()))
        };
        let ca = cafile.map(|p| read("--cafile", p)).transpose()?;
        let client = match client_files {
            Some((cert, key)) => Some((read("--cert", cert)?, read("--key", key)?)),
            None => None,
        };
        let pem = Pem {
            ca: ca.as_deref(),
            insecure,
            client: client.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
        };
        let files: Vec<String> = cafile
            .into_iter()
            .chain(client_files.into_iter().flat_map(|(c, k)| [c, k]))
            .map(|p| p.display().to_string())
            .collect();
        let setup = TlsSetup::from_pem(&pem, server_name);
        if files.is_empty() {
            return setup;
        }
        setup.with_context(|| format!("setting up TLS from {}", files.join(", ")))
    }

    pub fn from_pem(pem: &Pem, server_name: Option<&str>) -> Result<TlsSetup> {
        let provider = Arc::new(crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let (builder, verify) = match (pem.ca, pem.insecure) {
            (_, true) => (
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(NoVerification(provider))),
                Verify::Insecure,
            ),
            (Some(ca), false) => (builder.with_root_certificates(roots(ca)?), Verify::CaFile),
            (None, false) => bail!(
                "--tls needs --cafile PATH (the CA certificates that signed the broker's \
                 certificate) or --insecure (no verification, for self-signed benchmarks)"
            ),
        };
        let mut config = match pem.client {
            Some((cert, key)) => {
                let chain = certificates(cert).context("--cert")?;
                let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| {
                    anyhow::anyhow!("--key: no PKCS#8, PKCS#1 or SEC1 private key ({e})")
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .context("--cert/--key: unusable client certificate or key")?
            }
            None => builder.with_no_client_auth(),
        };
        // Every connection a full handshake: a storm measures handshakes, and
        // threads share no session cache.
        config.resumption = Resumption::disabled();
        let server_name = server_name
            .map(|n| {
                ServerName::try_from(n.to_string()).map_err(|_| {
                    anyhow::anyhow!("--server-name {n:?} is no DNS name or IP address")
                })
            })
            .transpose()?;
        Ok(TlsSetup {
            config: Arc::new(config),
            server_name,
            verify,
            client_certificate: pem.client.is_some(),
        })
    }

    /// The name a connection to `host` verifies and sends as SNI.
    pub fn server_name(&self, host: &str) -> Result<ServerName<'static>> {
        if let Some(name) = &self.server_name {
            return Ok(name.clone());
        }
        ServerName::try_from(host.to_string()).map_err(|_| {
            anyhow::anyhow!("{host:?} is no DNS name or IP address for TLS; set --server-name")
        })
    }

    /// --server-name as given, for the report.
    pub fn server_name_override(&self) -> Option<String> {
        self.server_name.as_ref().map(|n| n.to_str().into_owned())
    }

    /// A new connection's layer; its ClientHello is ready to send.
    pub fn connect(&self, host: &str) -> Result<TlsLayer> {
        let mut conn = ClientConnection::new(self.config.clone(), self.server_name(host)?)
            .context("starting a TLS connection")?;
        // The layer's output goes straight into the writer's buffer, which
        // holds a whole turn anyway: no need for rustls to stop at 64 KiB.
        conn.set_buffer_limit(None);
        Ok(TlsLayer {
            conn,
            peer_closed: false,
        })
    }
}

fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("bad PEM: {e}"))?;
    if certs.is_empty() {
        bail!("no CERTIFICATE in the PEM file");
    }
    Ok(certs)
}

fn roots(pem: &[u8]) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(pem).context("--cafile")? {
        roots
            .add(cert)
            .context("--cafile: a certificate rustls cannot use")?;
    }
    Ok(roots)
}

/// One connection's TLS state.
pub struct TlsLayer {
    conn: ClientConnection,
    peer_closed: bool,
}

impl TlsLayer {
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// The broker sent close_notify.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Records rustls owes the broker (handshake messages, alerts, key updates).
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Takes bytes read from the socket; appends the plaintext they complete
    /// to `out`.
    pub fn decode(&mut self, mut wire: &[u8], out: &mut BytesMut) -> Result<()> {
        loop {
            let n = if wire.is_empty() {
                0
            } else {
                self.conn.read_tls(&mut wire).context("TLS")?
            };
            let state = self.conn.process_new_packets().map_err(tls_error)?;
            if state.plaintext_bytes_to_read() > 0 {
                self.drain(out)?;
            }
            if state.peer_has_closed() {
                self.peer_closed = true;
            }
            // read_tls takes at most a few records at a time: go on until all is in.
            if wire.is_empty() || n == 0 {
                return Ok(());
            }
        }
    }

    /// Copies the decrypted plaintext out of rustls, chunk by chunk.
    fn drain(&mut self, out: &mut BytesMut) -> Result<()> {
        let mut reader = self.conn.reader();
        loop {
            match reader.fill_buf() {
                Ok([]) => return Ok(()),
                Ok(chunk) => {
                    let n = chunk.len();
                    out.extend_from_slice(chunk);
                    reader.consume(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e).context("TLS"),
            }
        }
    }

    /// Encrypts `plain` (all of it, in as few records as rustls allows) and
    /// appends the records, after anything else rustls had queued, to `wire`.
    pub fn encode(&mut self, mut plain: &[u8], wire: &mut Vec<u8>) -> Result<()> {
        while !plain.is_empty() {
            let n = self.conn.writer().write(plain).context("TLS")?;
            if n == 0 {
                bail!("TLS: the connection takes no more plaintext");
            }
            plain = &plain[n..];
            self.flush(wire);
        }
        self.flush(wire);
        Ok(())
    }

    /// Appends whatever records rustls has queued to `wire`.
    pub fn flush(&mut self, wire: &mut Vec<u8>) {
        while self.conn.wants_write() {
            // Writing into a Vec cannot fail.
            if self.conn.write_tls(wire).unwrap_or(0) == 0 {
                break;
            }
        }
    }

    /// Says close_notify (appended to `wire`).
    pub fn close(&mut self, wire: &mut Vec<u8>) {
        self.conn.send_close_notify();
        self.flush(wire);
    }
}

fn tls_error(e: rustls::Error) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// --insecure: every certificate is accepted, for any name. The handshake's
/// signatures are still verified (with the provider's algorithms), so the
/// connection is encrypted with the key of whatever certificate was shown.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Read;

    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    use rustls::server::WebPkiClientVerifier;
    use rustls::{ServerConfig, ServerConnection};

    use super::*;

    /// A test CA: its certificate (PEM) and what signs with it.
    pub(crate) struct Ca {
        pub pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    impl Ca {
        pub fn new(name: &str) -> Ca {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let pem = params.self_signed(&key).unwrap().pem();
            Ca {
                pem,
                issuer: Issuer::new(params, key),
            }
        }

        /// A certificate for `names` (DNS names or IP addresses) and its
        /// PKCS#8 key, both PEM.
        pub fn issue(&self, names: &[&str]) -> (String, String) {
            let key = KeyPair::generate().unwrap();
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let params = CertificateParams::new(names).unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        }
    }

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(crypto::ring::default_provider())
    }

    pub(crate) fn server_config(
        cert: &str,
        key: &str,
        client_ca: Option<&str>,
    ) -> Arc<ServerConfig> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            Some(ca) => {
                let roots = Arc::new(roots(ca.as_bytes()).unwrap());
                let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
                    .build()
                    .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let chain = certificates(cert.as_bytes()).unwrap();
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        Arc::new(builder.with_single_cert(chain, key).unwrap())
    }

    fn client(pem: &Pem, server_name: Option<&str>, host: &str) -> TlsLayer {
        TlsSetup::from_pem(pem, server_name)
            .unwrap()
            .connect(host)
            .unwrap()
    }

    /// Moves records both ways until neither side has more to say. Err:
    /// which side failed, and why (the other side got the alert first).
    fn pump(
        client: &mut TlsLayer,
        server: &mut ServerConnection,
        plain: &mut BytesMut,
    ) -> Result<(), String> {
        for _ in 0..32 {
            let mut to_server = Vec::new();
            client.flush(&mut to_server);
            let mut server_error = None;
            if !to_server.is_empty() {
                server.read_tls(&mut &to_server[..]).unwrap();
                server_error = server.process_new_packets().err();
            }
            let mut to_client = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut to_client).unwrap();
            }
            if !to_client.is_empty() {
                client
                    .decode(&to_client, plain)
                    .map_err(|e| format!("client: {e:#}"))?;
            }
            if let Some(e) = server_error {
                return Err(format!("server: {e}"));
            }
            if to_server.is_empty() && to_client.is_empty() {
                return Ok(());
            }
        }
        panic!("the handshake did not settle");
    }

    /// The plaintext the server gets from `wire`.
    fn server_reads(server: &mut ServerConnection, mut wire: &[u8]) -> Vec<u8> {
        let mut got = Vec::new();
        while !wire.is_empty() {
            server.read_tls(&mut wire).unwrap();
            server.process_new_packets().unwrap();
            let mut chunk = Vec::new();
            let _ = server.reader().read_to_end(&mut chunk); // ends in WouldBlock
            got.extend_from_slice(&chunk);
        }
        got
    }

    fn broker(ca: &Ca, names: &[&str]) -> ServerConnection {
        let (cert, key) = ca.issue(names);
        ServerConnection::new(server_config(&cert, &key, None)).unwrap()
    }

    #[test]
    fn handshake_data_both_ways_and_close_notify() {
        let ca = Ca::new("test ca");
        let mut server = broker(&ca, &["127.0.0.1", "localhost"]);
        let pem = Pem {
            ca: Some(ca.pem.as_bytes()),
            ..Pem::default()
        };
        let mut tls = client(&pem, None, "127.0.0.1");
        let mut plain = BytesMut::new();
        pump(&mut tls, &mut server, &mut plain).unwrap();
        assert!(!tls.is_handshaking() && !server.is_handshaking());

        // More than a record's worth, encrypted in one go.
        let up: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let mut wire = Vec::new();
        tls.encode(&up, &mut wire).unwrap();
        let got = server_reads(&mut server, &wire);
        assert!(
            got == up,
            "{} of {} bytes arrived intact",
            got.len(),
            up.len()
        );

        let down: Vec<u8> = (0..50_000u32).map(|i| (i * 7) as u8).collect();
        server.writer().write_all(&down).unwrap();
        server.send_close_notify();
        let mut records = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut records).unwrap();
        }
        // Records split across socket reads at odd places.
        for chunk in records.chunks(1000) {
            tls.decode(chunk, &mut plain).unwrap();
        }
        assert!(
            plain[..] == down[..],
            "{} of {} bytes",
            plain.len(),
            down.len()
        );
        assert!(tls.peer_closed());

        let mut bye = Vec::new();
        tls.close(&mut bye);
        server_reads(&mut server, &bye);
        assert!(server.process_new_packets().unwrap().peer_has_closed());
    }

    #[test]
    fn a_certificate_from_another_ca_fails_the_handshake() {
        let mut server = broker(&Ca::new("the broker's ca"), &["127.0.0.1"]);
        let other = Ca::new("another ca");
        let pem = Pem {
            ca: Some(other.pem.as_bytes()),
            ..Pem::default()
        };
        let mut tls = client(&pem, None, "127.0.0.1");
        let e = pump(&mut tls, &mut server, &mut BytesMut::new()).unwrap_err();
        assert!(
            e.starts_with("client:") && e.contains("UnknownIssuer"),
            "{e}"
        );
    }

    #[test]
    fn the_certificate_must_name_the_host_or_the_server_name() {
        let ca = Ca::new("test ca");
        let pem = Pem {
            ca: Some(ca.pem.as_bytes()),
            ..Pem::default()
        };
        let mut server = broker(&ca, &["broker.test"]);
        let mut tls = client(&pem, None, "127.0.0.1");
        let e = pump(&mut tls, &mut server, &mut BytesMut::new()).unwrap_err();
        assert!(e.contains("not valid for name"), "{e}");
        // --server-name: the certificate's name, whatever address is dialled.
        let mut server = broker(&ca, &["broker.test"]);
        let mut tls = client(&pem, Some("broker.test"), "127.0.0.1");
        pump(&mut tls, &mut server, &mut BytesMut::new()).unwrap();
        assert!(!tls.is_handshaking());
    }

    #[test]
    fn insecure_accepts_a_self_signed_certificate_for_any_name() {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["elsewhere.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let config = server_config(&cert.pem(), &key.serialize_pem(), None);
        let mut server = ServerConnection::new(config).unwrap();
        let pem = Pem {
            insecure: true,
            ..Pem::default()
        };
        let setup = TlsSetup::from_pem(&pem, None).unwrap();
        assert_eq!(setup.verify, Verify::Insecure);
        let mut tls = setup.connect("127.0.0.1").unwrap();
        pump(&mut tls, &mut server, &mut BytesMut::new()).unwrap();
        assert!(!tls.is_handshaking());
    }

    #[test]
    fn mutual_tls_with_and_without_a_client_certificate() {
        let ca = Ca::new("test ca");
        let (cert, key) = ca.issue(&["127.0.0.1"]);
        let config = server_config(&cert, &key, Some(&ca.pem));
        let (client_cert, client_key) = ca.issue(&["loadgen.test"]);
        let with = Pem {
            ca: Some(ca.pem.as_bytes()),
            insecure: false,
            client: Some((client_cert.as_bytes(), client_key.as_bytes())),
        };
        let mut server = ServerConnection::new(config.clone()).unwrap();
        let mut tls = client(&with, None, "127.0.0.1");
        pump(&mut tls, &mut server, &mut BytesMut::new()).unwrap();
        assert_eq!(server.peer_certificates().map(<[_]>::len), Some(1));

        let without = Pem {
            client: None,
            ..with
        };
        let mut server = ServerConnection::new(config).unwrap();
        let mut tls = client(&without, None, "127.0.0.1");
        let e = pump(&mut tls, &mut server, &mut BytesMut::new()).unwrap_err();
        assert!(
            e.contains("CertificateRequired") || e.contains("NoCertificatesPresented"),
            "{e}"
        );
    }

    #[test]
    fn files_that_make_no_setup_say_why() {
        let e = TlsSetup::from_pem(&Pem::default(), None).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("--cafile") && text.contains("--insecure"),
            "{text}"
        );
        let not_pem = Pem {
            ca: Some(b"not a certificate"),
            ..Pem::default()
        };
        let e = TlsSetup::from_pem(&not_pem, None).unwrap_err();
        assert!(format!("{e:#}").contains("--cafile"), "{e:#}");
        let ca = Ca::new("test ca");
        let (cert, _) = ca.issue(&["a.test"]);
        let (_, other_key) = ca.issue(&["b.test"]);
        let mismatched = Pem {
            ca: Some(ca.pem.as_bytes()),
            insecure: false,
            client: Some((cert.as_bytes(), other_key.as_bytes())),
        };
        assert!(TlsSetup::from_pem(&mismatched, None).is_err());
        let setup = TlsSetup::from_pem(
            &Pem {
                insecure: true,
                ..Pem::default()
            },
            None,
        )
        .unwrap();
        assert!(setup.server_name("not a name!").is_err());
        assert!(TlsSetup::from_pem(
            &Pem {
                insecure: true,
                ..Pem::default()
            },
            Some("bad name!")
        )
        .is_err());
    }

    /// SEC1 ("EC PRIVATE KEY"): the ECPrivateKey inside rcgen's PKCS#8, the
    /// content of its last OCTET STRING.
    fn sec1_pem(pkcs8: &[u8]) -> String {
        fn tlv(b: &[u8]) -> (u8, &[u8], &[u8]) {
            let (len, start) = match b[1] {
                n if n < 0x80 => (usize::from(n), 2),
                n => {
                    let k = usize::from(n & 0x7f);
                    let len = b[2..2 + k].iter().fold(0, |a, &x| a << 8 | usize::from(x));
                    (len, 2 + k)
                }
            };
            (b[0], &b[start..start + len], &b[start + len..])
        }
        let (_, info, _) = tlv(pkcs8);
        let (_, _, rest) = tlv(info); // version
        let (_, _, rest) = tlv(rest); // algorithm
        let (tag, key, _) = tlv(rest);
        assert_eq!(tag, 0x04, "an OCTET STRING");
        pem::encode(&pem::Pem::new("EC PRIVATE KEY", key.to_vec()))
    }

    #[test]
    fn a_sec1_client_key_works_for_mutual_tls() {
        let ca = Ca::new("test ca");
        let (cert, key) = ca.issue(&["127.0.0.1"]);
        let config = server_config(&cert, &key, Some(&ca.pem));
        let (client_cert, client_key) = ca.issue(&["loadgen.test"]);
        let der = PrivateKeyDer::from_pem_slice(client_key.as_bytes()).unwrap();
        let sec1 = sec1_pem(der.secret_der());
        assert!(sec1.starts_with("-----BEGIN EC PRIVATE KEY-----"));
        let pem = Pem {
            ca: Some(ca.pem.as_bytes()),
            insecure: false,
            client: Some((client_cert.as_bytes(), sec1.as_bytes())),
        };
        let mut server = ServerConnection::new(config).unwrap();
        let mut tls = client(&pem, None, "127.0.0.1");
        pump(&mut tls, &mut server, &mut BytesMut::new()).unwrap();
        assert!(server.peer_certificates().is_some());
    }

    /// Runs the openssl command line tool (in the machine image; rcgen with
    /// ring cannot make RSA keys) with `input` on stdin.
    fn openssl(args: &[&str], input: &[u8]) -> String {
        use std::process::{Command, Stdio};
        let mut child = Command::new("openssl")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the openssl command line tool (apt-get install openssl)");
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn a_pkcs1_rsa_client_key_works_for_mutual_tls() {
        let pkcs1 = openssl(&["genrsa", "-traditional", "2048"], b"");
        assert!(
            pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----"),
            "{pkcs1}"
        );
        let pkcs8 = openssl(&["pkey"], pkcs1.as_bytes());
        let rsa = KeyPair::from_pem(&pkcs8).unwrap();
        let ca = Ca::new("test ca");
        let client_cert = CertificateParams::new(vec!["loadgen.test".to_string()])
            .unwrap()
            .signed_by(&rsa, &ca.issuer)
            .unwrap()
            .pem();
        let (cert, key) = ca.issue(&["127.0.0.1"]);
        let config = server_config(&cert, &key, Some(&ca.pem));
        let pem = Pem {
            ca: Some(ca.pem.as_bytes()),
            insecure: false,
            client: Some((client_cert.as_bytes(), pkcs1.as_bytes())),
        };
        let mut server = ServerConnection::new(config).unwrap();
        let mut tls = client(&pem, None, "127.0.0.1");
        pump(&mut tls, &mut server, &mut BytesMut::new()).unwrap();
        assert!(server.peer_certificates().is_some());
    }
}
