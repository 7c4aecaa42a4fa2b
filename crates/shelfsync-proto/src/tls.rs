//! Mutual-TLS QUIC configuration for every shelfsync connection.
//!
//! This module owns how the coordinator, the store agents and `shelfctl` turn
//! the `[tls]` files of their config (CA certificate, own certificate, own
//! key) into quinn server and client configs: TLS 1.3 only, ALPN
//! [`ALPN`], the *ring* crypto provider only, and client certificates that are
//! required and verified against the private CA. It also reads the peer's
//! identity (the CN of its certificate) from an established connection.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

/// The ALPN protocol id every shelfsync QUIC connection negotiates.
pub const ALPN: &[u8] = b"shelfsync/1";

/// Idle timeout of a connection: closed after this long without any packet.
const IDLE_TIMEOUT_MS: u32 = 30_000;
/// Keep-alive interval of the coordinator, well below the idle timeout.
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Keep-alive interval of clients: a client's ping to a coordinator that
/// restarted draws a stateless reset, so an idle connection (an agent's
/// push subscription) learns it is dead within a second and connects
/// again, rather than at the idle timeout. One small packet a second.
const CLIENT_KEEP_ALIVE: Duration = Duration::from_secs(1);
/// Concurrent bidirectional streams a peer may open to the server.
const MAX_BIDI_STREAMS: u32 = 1024;

/// The `[tls]` section of a coordinator, agent or shelfctl config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM file with the CA certificate(s) peers are verified against.
    pub ca_cert: PathBuf,
    /// PEM file with this process's certificate (chain), leaf first.
    pub cert: PathBuf,
    /// PEM file with this process's private key (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
}

/// Why a TLS configuration could not be built or a peer identified.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read (missing, unreadable, ...).
    #[error("cannot read {what} file {}", .path.display())]
    ReadFile {
        /// What the file should hold: "CA certificate", "certificate" or "private key".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file holds no `CERTIFICATE` block.
    #[error("no certificate (\"-----BEGIN CERTIFICATE-----\") found in {}", .path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A PEM file holds no private key block.
    #[error("no private key (\"-----BEGIN PRIVATE KEY-----\") found in {}", .path.display())]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// A certificate file is not valid PEM or holds a certificate that cannot be parsed.
    #[error("invalid certificate in {}: {detail}", .path.display())]
    InvalidCertificate {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A key file is not valid PEM or holds a key rustls cannot use.
    #[error("invalid private key in {}: {detail}", .path.display())]
    InvalidKey {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The CA file holds a certificate that cannot be used as a trust anchor.
    #[error("invalid CA certificate in {}: {detail}", .path.display())]
    InvalidCa {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The certificate and the key do not belong together, or rustls refused them.
    #[error("certificate {} cannot be used with key {}", .cert.display(), .key.display())]
    CertKey {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// The rustls error.
        #[source]
        source: rustls::Error,
    },
    /// rustls refused the configuration (for example, TLS 1.3 unsupported by the provider).
    #[error("TLS configuration error")]
    Rustls(#[from] rustls::Error),
    /// The TLS configuration cannot be used for QUIC.
    #[error("TLS configuration unusable for QUIC")]
    Quic(#[from] NoInitialCipherSuite),
    /// The peer presented no certificate.
    #[error("the peer presented no certificate")]
    NoPeerCertificate,
    /// The peer's certificate could not be parsed.
    #[error("the peer's certificate cannot be parsed: {detail}")]
    InvalidPeerCertificate {
        /// What is wrong.
        detail: String,
    },
    /// The peer's certificate has no usable common name (CN) in its subject.
    #[error("the peer's certificate has no common name (CN)")]
    PeerWithoutCommonName,
}

/// The one crypto provider shelfsync uses.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a whole file, naming it on failure.
fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::ReadFile {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate in a PEM file, in order; at least one.
fn load_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::InvalidCertificate {
            path: path.to_path_buf(),
            detail: format!("malformed PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    for cert in &certs {
        x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| {
            TlsError::InvalidCertificate {
                path: path.to_path_buf(),
                detail: format!("not an X.509 certificate: {e}"),
            }
        })?;
    }
    Ok(certs)
}

/// The first private key in a PEM file, checked to be usable by the provider.
fn load_key(path: &Path, provider: &CryptoProvider) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read("private key", path)?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            path: path.to_path_buf(),
        },
        other => TlsError::InvalidKey {
            path: path.to_path_buf(),
            detail: format!("malformed PEM: {other}"),
        },
    })?;
    provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| TlsError::InvalidKey {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    Ok(key)
}

/// A root store holding the CA certificate(s) of `path`.
fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs("CA certificate", path)? {
        roots.add(cert).map_err(|e| TlsError::InvalidCa {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    }
    Ok(Arc::new(roots))
}

/// Our own certificate chain and key, loaded and checked.
fn load_identity(
    files: &TlsFiles,
    provider: &CryptoProvider,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = load_certs("certificate", &files.cert)?;
    let key = load_key(&files.key, provider)?;
    Ok((chain, key))
}

fn cert_key_error(files: &TlsFiles) -> impl FnOnce(rustls::Error) -> TlsError + '_ {
    |source| TlsError::CertKey {
        cert: files.cert.clone(),
        key: files.key.clone(),
        source,
    }
}

/// Builds the coordinator's QUIC server config from its `[tls]` files.
///
/// TLS 1.3 with ALPN [`ALPN`]; every client must present a certificate that
/// chains to the CA in `files.ca_cert`. Connections time out after 30 s idle,
/// keep-alives go every 5 s and a client may open up to 1024 concurrent
/// bidirectional streams.
///
/// # Errors
/// A [`TlsError`] naming the file when one is missing, empty or invalid, or
/// when the certificate and key do not match.
pub fn server_config(files: &TlsFiles) -> Result<quinn::ServerConfig, TlsError> {
    let provider = provider();
    let roots = load_roots(&files.ca_cert)?;
    let (chain, key) = load_identity(files, &provider)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TlsError::InvalidCa {
            path: files.ca_cert.clone(),
            detail: verifier_error(&e),
        })?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(cert_key_error(files))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];

    let mut config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    let mut transport = TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(MAX_BIDI_STREAMS))
        .max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(IDLE_TIMEOUT_MS))))
        .keep_alive_interval(Some(KEEP_ALIVE));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Builds a QUIC client config (agent or shelfctl) from its `[tls]` files.
///
/// Presents the certificate in `files.cert`, trusts only the CA in
/// `files.ca_cert`, negotiates ALPN [`ALPN`] over TLS 1.3, sends keep-alives
/// every second and gives up on a connection after 30 s without a packet. The
/// server name to check is given per connection, to `Endpoint::connect`.
///
/// # Errors
/// A [`TlsError`] naming the file when one is missing, empty or invalid, or
/// when the certificate and key do not match.
pub fn client_config(files: &TlsFiles) -> Result<quinn::ClientConfig, TlsError> {
    let provider = provider();
    let roots = load_roots(&files.ca_cert)?;
    let (chain, key) = load_identity(files, &provider)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(cert_key_error(files))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];

    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    let mut transport = TransportConfig::default();
    transport
        .max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(IDLE_TIMEOUT_MS))))
        .keep_alive_interval(Some(CLIENT_KEEP_ALIVE));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

fn verifier_error(e: &VerifierBuilderError) -> String {
    match e {
        VerifierBuilderError::NoRootAnchors => "no usable CA certificate".into(),
        other => other.to_string(),
    }
}

/// The common name (CN) of the peer's certificate on an established connection.
///
/// On the coordinator this is the store id (or `admin`) of the connecting
/// client; on a client it is `coordinator`.
///
/// # Errors
/// [`TlsError::NoPeerCertificate`] when the peer presented none,
/// [`TlsError::InvalidPeerCertificate`] when it cannot be parsed and
/// [`TlsError::PeerWithoutCommonName`] when its subject has no CN.
pub fn peer_identity(conn: &quinn::Connection) -> Result<String, TlsError> {
    let identity = conn.peer_identity().ok_or(TlsError::NoPeerCertificate)?;
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| TlsError::InvalidPeerCertificate {
            detail: "the TLS session did not provide an X.509 certificate chain".into(),
        })?;
    let first = chain.first().ok_or(TlsError::NoPeerCertificate)?;
    common_name(first)
}

/// The first CN of a DER certificate's subject.
fn common_name(der: &CertificateDer<'_>) -> Result<String, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| {
        TlsError::InvalidPeerCertificate {
            detail: e.to_string(),
        }
    })?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .ok_or(TlsError::PeerWithoutCommonName)?;
    let cn = cn.as_str().map_err(|e| TlsError::InvalidPeerCertificate {
        detail: format!("the common name is not a string: {e}"),
    })?;
    if cn.is_empty() {
        return Err(TlsError::PeerWithoutCommonName);
    }
    Ok(cn.to_owned())
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use quinn::Endpoint;
    use tokio::sync::mpsc;
    use tokio::time::timeout;

    use super::*;
    use crate::certs;

    /// Longest any single exchange in these tests may take.
    const LIMIT: Duration = Duration::from_secs(10);

    fn files(dir: &Path, ca: &Path, name: &str) -> TlsFiles {
        TlsFiles {
            ca_cert: ca.join("ca.pem"),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        }
    }

    fn cluster() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        certs::init(dir.path(), &["store-1".to_owned()], &[], false).unwrap();
        dir
    }

    /// What the echo server saw of one incoming connection.
    type Seen = Result<String, String>;

    /// An echo server on an OS-picked loopback port. For every connection it
    /// reports the peer's CN (or the handshake error), echoes one stream and
    /// waits for the client to close.
    fn echo_server(dir: &Path) -> (Endpoint, SocketAddr, mpsc::UnboundedReceiver<Seen>) {
        let config = server_config(&files(dir, dir, "coordinator")).unwrap();
        let endpoint =
            Endpoint::server(config, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
        let addr = endpoint.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let ep = endpoint.clone();
        tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let conn = match incoming.await {
                        Ok(conn) => conn,
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let _ = tx.send(peer_identity(&conn).map_err(|e| e.to_string()));
                    if let Ok((mut send, mut recv)) = conn.accept_bi().await
                        && let Ok(data) = recv.read_to_end(1 << 16).await
                    {
                        let _ = send.write_all(&data).await;
                        let _ = send.finish();
                    }
                    conn.closed().await;
                });
            }
        });
        (endpoint, addr, rx)
    }

    fn client(config: quinn::ClientConfig) -> Endpoint {
        let mut endpoint = Endpoint::client(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
        endpoint.set_default_client_config(config);
        endpoint
    }

    /// Connects, sends `msg` on a new stream and returns the echo and the
    /// server's CN as seen by the client.
    async fn exchange(
        endpoint: &Endpoint,
        addr: SocketAddr,
        server_name: &str,
        msg: &[u8],
    ) -> Result<(Vec<u8>, String), String> {
        let conn = endpoint
            .connect(addr, server_name)
            .map_err(|e| format!("connect: {e}"))?
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let server = peer_identity(&conn).map_err(|e| e.to_string())?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| format!("open: {e}"))?;
        send.write_all(msg)
            .await
            .map_err(|e| format!("write: {e}"))?;
        send.finish().map_err(|e| format!("finish: {e}"))?;
        let echo = recv
            .read_to_end(1 << 16)
            .await
            .map_err(|e| format!("read: {e}"))?;
        conn.close(VarInt::from_u32(0), b"done");
        Ok((echo, server))
    }

    /// Runs an exchange that must fail, within [`LIMIT`]; returns its error.
    async fn failing_exchange(endpoint: &Endpoint, addr: SocketAddr, server_name: &str) -> String {
        match timeout(LIMIT, exchange(endpoint, addr, server_name, b"let me in")).await {
            Ok(Ok(echo)) => panic!("the exchange succeeded: {echo:?}"),
            Ok(Err(e)) => e,
            Err(_) => panic!("the exchange neither failed nor succeeded within {LIMIT:?}"),
        }
    }

    /// The server's report of the next connection, within [`LIMIT`].
    async fn server_saw(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
        timeout(LIMIT, rx.recv())
            .await
            .expect("the server saw no connection")
            .expect("the server task ended")
    }

    #[tokio::test]
    async fn mutual_tls_round_trip_identifies_both_sides() {
        let dir = cluster();
        let (server, addr, mut seen) = echo_server(dir.path());
        let endpoint = client(client_config(&files(dir.path(), dir.path(), "store-1")).unwrap());

        let (echo, server_cn) = timeout(LIMIT, exchange(&endpoint, addr, "localhost", b"hello"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echo, b"hello");
        assert_eq!(server_cn, "coordinator");
        assert_eq!(server_saw(&mut seen).await, Ok("store-1".to_owned()));

        // 127.0.0.1 is an IP SAN of the coordinator certificate.
        let (echo, _) = timeout(LIMIT, exchange(&endpoint, addr, "127.0.0.1", b"again"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echo, b"again");
        assert_eq!(server_saw(&mut seen).await, Ok("store-1".to_owned()));

        endpoint.wait_idle().await;
        server.close(VarInt::from_u32(0), b"bye");
    }

    #[tokio::test]
    async fn client_without_certificate_is_refused() {
        let dir = cluster();
        let (server, addr, mut seen) = echo_server(dir.path());

        let provider = provider();
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(load_roots(&dir.path().join("ca.pem")).unwrap())
            .with_no_client_auth();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
        let endpoint = client(config);

        let err = failing_exchange(&endpoint, addr, "localhost").await;
        eprintln!("client saw: {err}");
        let server_err = server_saw(&mut seen).await.unwrap_err();
        eprintln!("server saw: {server_err}");
        assert!(server_err.contains("certificate"), "{server_err}");
        server.close(VarInt::from_u32(0), b"bye");
    }

    #[tokio::test]
    async fn client_with_certificate_from_another_ca_is_refused() {
        let dir = cluster();
        let other = cluster();
        let (server, addr, mut seen) = echo_server(dir.path());
        // Trusts the right CA (so the server passes) but presents a store-1
        // certificate signed by the other CA.
        let endpoint = client(client_config(&files(other.path(), dir.path(), "store-1")).unwrap());

        let err = failing_exchange(&endpoint, addr, "localhost").await;
        eprintln!("client saw: {err}");
        let server_err = server_saw(&mut seen).await.unwrap_err();
        eprintln!("server saw: {server_err}");
        assert!(server_err.contains("certificate"), "{server_err}");
        server.close(VarInt::from_u32(0), b"bye");
    }

    #[tokio::test]
    async fn client_expecting_another_server_name_fails_the_handshake() {
        let dir = cluster();
        let (server, addr, _seen) = echo_server(dir.path());
        let endpoint = client(client_config(&files(dir.path(), dir.path(), "store-1")).unwrap());

        let err = failing_exchange(&endpoint, addr, "other.example").await;
        assert!(err.starts_with("handshake:"), "{err}");
        server.close(VarInt::from_u32(0), b"bye");
    }

    #[tokio::test]
    async fn server_certificate_from_another_ca_is_refused() {
        let dir = cluster();
        let other = cluster();
        let (server, addr, _seen) = echo_server(dir.path());
        let endpoint =
            client(client_config(&files(other.path(), other.path(), "store-1")).unwrap());

        let err = failing_exchange(&endpoint, addr, "localhost").await;
        assert!(err.starts_with("handshake:"), "{err}");
        server.close(VarInt::from_u32(0), b"bye");
    }

    #[test]
    fn missing_and_wrong_files_name_the_path() {
        let dir = cluster();
        let good = files(dir.path(), dir.path(), "store-1");

        let missing = dir.path().join("nope.pem");
        for bad in [
            TlsFiles {
                ca_cert: missing.clone(),
                ..good.clone()
            },
            TlsFiles {
                cert: missing.clone(),
                ..good.clone()
            },
            TlsFiles {
                key: missing.clone(),
                ..good.clone()
            },
        ] {
            for err in [
                client_config(&bad).unwrap_err(),
                server_config(&bad).unwrap_err(),
            ] {
                assert!(
                    matches!(&err, TlsError::ReadFile { path, .. } if *path == missing),
                    "{err:?}"
                );
                assert!(err.to_string().contains("nope.pem"), "{err}");
            }
        }

        // A key where the certificate should be, and the other way round.
        let swapped = TlsFiles {
            cert: good.key.clone(),
            key: good.cert.clone(),
            ..good.clone()
        };
        let err = client_config(&swapped).unwrap_err();
        assert!(
            matches!(&err, TlsError::NoCertificate { path } if *path == good.key),
            "{err:?}"
        );
        let err = client_config(&TlsFiles {
            key: good.cert.clone(),
            ..good.clone()
        })
        .unwrap_err();
        assert!(
            matches!(&err, TlsError::NoPrivateKey { path } if *path == good.cert),
            "{err:?}"
        );

        // A certificate with somebody else's key.
        let err = server_config(&TlsFiles {
            key: dir.path().join("admin.key"),
            ..good.clone()
        })
        .unwrap_err();
        assert!(matches!(&err, TlsError::CertKey { .. }), "{err:?}");

        // Garbage inside PEM markers.
        let junk = dir.path().join("junk.pem");
        fs::write(
            &junk,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = client_config(&TlsFiles {
            ca_cert: junk.clone(),
            ..good.clone()
        })
        .unwrap_err();
        assert!(
            matches!(&err, TlsError::InvalidCertificate { path, .. } if *path == junk),
            "{err:?}"
        );
    }

    #[test]
    fn tls_files_deserialize_from_the_config_keys() {
        #[derive(Deserialize)]
        struct Config {
            tls: TlsFiles,
        }
        let config: Config = toml::from_str(
            "[tls]\nca_cert = \"certs/ca.pem\"\ncert = \"certs/store-1.pem\"\nkey = \"certs/store-1.key\"\n",
        )
        .unwrap();
        assert_eq!(config.tls.ca_cert, Path::new("certs/ca.pem"));
        assert_eq!(config.tls.cert, Path::new("certs/store-1.pem"));
        assert_eq!(config.tls.key, Path::new("certs/store-1.key"));

        let err = toml::from_str::<Config>(
            "[tls]\nca_cert = \"a\"\ncert = \"b\"\nkey = \"c\"\ncert_file = \"d\"\n",
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("cert_file"), "{err}");
    }

    #[test]
    fn common_name_of_generated_certificates() {
        let dir = cluster();
        for name in ["coordinator", "store-1", "admin"] {
            let cert = load_certs("certificate", &dir.path().join(format!("{name}.pem")))
                .unwrap()
                .remove(0);
            assert_eq!(common_name(&cert).unwrap(), name);
        }
    }
}
