//! TLS to the remote broker: rustls (ring provider) with the bridge's CA
//! file, an optional client certificate, and Mosquitto's `bridge_insecure`
//! (the chain is still verified; only the name in it is not).

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};

use crate::config::BridgeTls;

/// Builds the client configuration from the bridge's files, or says which
/// file is wrong.
pub fn client_config(tls: &BridgeTls) -> anyhow::Result<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in read_certs(&tls.cafile, "cafile")? {
        roots.add(ca).with_context(|| {
            format!(
                "cafile {}: a certificate rustls refuses",
                tls.cafile.display()
            )
        })?;
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .context("server certificate verifier")?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?;
    let builder = match tls.insecure {
        true => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyName(verifier))),
        false => builder.with_webpki_verifier(verifier),
    };
    let mut config = match &tls.client {
        Some((cert, key)) => {
            let chain = read_certs(cert, "certfile")?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                anyhow!("keyfile {}: no usable PEM private key ({e})", key.display())
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .context("certfile and keyfile do not make a usable pair")?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"mqtt".to_vec()];
    Ok(Arc::new(config))
}

/// The name the remote's certificate must carry: its host as addressed.
pub fn server_name(host: &str) -> anyhow::Result<ServerName<'static>> {
    ServerName::try_from(host.to_owned())
        .map_err(|_| anyhow!("{host:?} is no DNS name or IP address for TLS"))
}

fn read_certs(path: &Path, key: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow!("{key} {}: {e}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{key} {}: no CERTIFICATE in it", path.display());
    }
    Ok(certs)
}

/// WebPKI verification that accepts a certificate issued for another name.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                ..
            })) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
