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
