//! TLS with rustls: the client side the proxy uses towards sentinels and nodes (its own queries
//! and the master side of every session), and the optional server side of a route's listener.
//! Owns loading certificates and keys (errors name the file and never contain key material)
//! and the peer-name rule: verify against the configured `server_name`, else the address the
//! peer was reached by (hostname or IP); `verify_server_name = false` keeps chain and expiry
//! checks and skips only the name.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// TLS settings for connections the proxy opens (to sentinels, to nodes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    /// CA bundle (PEM) the peers' certificates must chain to.
    pub ca: PathBuf,
    /// Client certificate chain (PEM), for peers with `tls-auth-clients yes`.
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key: Option<PathBuf>,
    /// Verify every peer certificate against this name instead of the address used.
    pub server_name: Option<String>,
    /// Check the peer certificate's name at all (chain and validity dates are always checked).
    pub verify_server_name: bool,
}

/// A loaded client-side TLS configuration.
pub struct TlsClient {
    connector: TlsConnector,
    server_name: Option<ServerName<'static>>,
    settings: ClientSettings,
}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClient")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file; the error names the file.
fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let all = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{shown}: cannot read certificates: {}", pem_error(&e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            format!(
                "{shown}: not a valid PEM certificate file: {}",
                pem_error(&e)
            )
        })?;
    if all.is_empty() {
        return Err(format!("{shown}: no PEM certificate found"));
    }
    Ok(all)
}

/// Reads a PEM private key; the error names the file, never its content.
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        format!(
            "{}: no usable PEM private key: {}",
            path.display(),
            pem_error(&e)
        )
    })
}

fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM section found".to_string(),
        // Other variants may quote the file's bytes; say only what kind of problem it is.
        _ => "malformed PEM".to_string(),
    }
}

fn roots(ca: &Path) -> Result<Arc<RootCertStore>, String> {
    let mut store = RootCertStore::empty();
    for c in certs(ca)? {
        store
            .add(c)
            .map_err(|e| format!("{}: unusable CA certificate: {e}", ca.display()))?;
    }
    Ok(Arc::new(store))
}

impl TlsClient {
    /// The settings it was loaded from.
    pub fn settings(&self) -> &ClientSettings {
        &self.settings
    }

    /// Loads the CA bundle and the optional client certificate and key.
    pub fn load(settings: &ClientSettings) -> Result<TlsClient, String> {
        let provider = provider();
        let roots = roots(&settings.ca)?;
        let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| format!("{}: {e}", settings.ca.display()))?;
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = if settings.verify_server_name {
            builder.with_webpki_verifier(webpki)
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
        };
        let config = match (&settings.cert, &settings.key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(certs(cert)?, private_key(key)?)
                .map_err(|e| {
                    format!(
                        "{} / {}: certificate and key do not match or are unusable: {e}",
                        cert.display(),
                        key.display()
                    )
                })?,
            (None, None) => builder.with_no_client_auth(),
            _ => return Err("a client certificate needs both cert and key".to_string()),
        };
        let server_name = match &settings.server_name {
            Some(n) => Some(
                ServerName::try_from(n.clone())
                    .map_err(|_| format!("server_name {n:?} is not a valid DNS name or IP"))?,
            ),
            None => None,
        };
        Ok(TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
            settings: settings.clone(),
        })
    }

    /// Runs the TLS handshake on `tcp`, verifying the peer as `host` (the hostname or IP the
    /// peer was reached by) unless a `server_name` is configured.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        host: &str,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => peer_name(host)?,
        };
        self.connector.connect(name, tcp).await
    }
}

/// The name a peer reached as `host` must have in its certificate.
fn peer_name(host: &str) -> io::Result<ServerName<'static>> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(bare.to_string()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{bare:?} is not a name a TLS certificate can carry"),
        )
    })
}

/// Verifies the chain and validity dates, not the name (`verify_server_name = false`).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
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

/// TLS settings of a route's listener (client side of sessions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// Certificate chain (PEM) the proxy presents to clients.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// If set, clients must present a certificate chaining to this CA bundle.
    pub client_ca: Option<PathBuf>,
}

/// A loaded server-side TLS configuration.
pub struct TlsServer {
    acceptor: TlsAcceptor,
    settings: ServerSettings,
}

impl fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsServer")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl TlsServer {
    /// The settings it was loaded from.
    pub fn settings(&self) -> &ServerSettings {
        &self.settings
    }

    /// Loads the certificate, key and optional client CA.
    pub fn load(settings: &ServerSettings) -> Result<TlsServer, String> {
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match &settings.client_ca {
            Some(ca) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider)
                    .build()
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(certs(&settings.cert)?, private_key(&settings.key)?)
            .map_err(|e| {
                format!(
                    "{} / {}: certificate and key do not match or are unusable: {e}",
                    settings.cert.display(),
                    settings.key.display()
                )
            })?;
        Ok(TlsServer {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            settings: settings.clone(),
        })
    }

    /// Runs the server side of the handshake on an accepted client.
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        self.acceptor.accept(tcp).await
    }
}

/// The rustls error inside an I/O error from a TLS stream, if any, for messages and metrics.
pub fn rustls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if let Some(inner) = io.get_ref() {
                if let Some(r) = inner.downcast_ref::<rustls::Error>() {
                    return Some(r);
                }
            }
        }
        cur = e.source();
    }
    None
}

/// Whether an error's text is a rustls error's (for errors that reached us only as text).
pub fn looks_like_tls_error(text: &str) -> bool {
    [
        "received fatal alert",
        "invalid peer certificate",
        "peer is incompatible",
        "peer misbehaved",
        "received corrupt message",
        "peer sent no certificates",
        "received unexpected message",
    ]
    .iter()
    .any(|p| text.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_names() {
        assert!(matches!(
            peer_name("127.0.0.1").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            peer_name("[::1]").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            peer_name("redis1").unwrap(),
            ServerName::DnsName(_)
        ));
        assert!(peer_name("bad name").is_err());
    }

    #[test]
    fn missing_files_are_named() {
        let e = TlsClient::load(&ClientSettings {
            ca: "/nonexistent/ca.crt".into(),
            cert: None,
            key: None,
            server_name: None,
            verify_server_name: true,
        })
        .unwrap_err();
        assert!(e.contains("/nonexistent/ca.crt"), "{e}");
    }
}
