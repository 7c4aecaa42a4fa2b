//! The private certificate authority behind shelfsync's mutual TLS.
//!
//! This module owns the files `shelfctl certs init` and `shelfctl certs issue`
//! write (SPEC §3 "Certificates"): a CA (`ca.pem`, `ca.key`), the
//! coordinator's server certificate (`coordinator.pem/.key`), one client
//! certificate per store (`ID.pem/.key`, CN = store id) and the admin client
//! certificate (`admin.pem/.key`). Keys are PKCS#8 ECDSA P-256 in PEM, written
//! with mode 0600; certificates are written with mode 0644. Nothing is
//! overwritten unless the caller says `force`, and when a file is in the way
//! nothing at all is written.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs::{self, OpenOptions, Permissions};
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use shelfsync_core::Rejection;
use time::{Duration, OffsetDateTime};

/// File stem of the CA certificate and key (`ca.pem`, `ca.key`).
const CA_NAME: &str = "ca";
/// File stem and CN of the coordinator's certificate.
const COORDINATOR_NAME: &str = "coordinator";
/// File stem and CN of the admin (shelfctl) client certificate.
const ADMIN_NAME: &str = "admin";

/// How long the CA certificate is valid: 10 years.
const CA_VALIDITY: Duration = Duration::days(3653);
/// How long a coordinator, store or admin certificate is valid: 2 years.
const LEAF_VALIDITY: Duration = Duration::days(730);
/// How far back `not_before` is set, to tolerate clock skew between hosts.
const BACKDATE: Duration = Duration::days(1);

/// Why certificates could not be created or issued.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A store id breaks the id rules (letters, digits, `.`, `_`, `-`; at most 64 characters).
    #[error("invalid store id {id:?}: {reason}")]
    InvalidStoreId {
        /// The id as given.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A store id collides with the name of the coordinator or admin certificate.
    #[error(
        "store id {id:?} is reserved: it would overwrite the {id} certificate; choose another id"
    )]
    ReservedStoreId {
        /// The id as given.
        id: String,
    },
    /// The same store id was given twice.
    #[error("store id {id:?} was given more than once")]
    DuplicateStoreId {
        /// The repeated id.
        id: String,
    },
    /// An extra subject alternative name is neither an IP address nor a usable DNS name.
    #[error("invalid subject alternative name {name:?}: {reason}")]
    InvalidSan {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Target files exist and `force` was not given; nothing was written.
    #[error(
        "refusing to overwrite existing file(s) {}; nothing was written (pass --force to replace them)",
        list_paths(.paths)
    )]
    AlreadyExists {
        /// Every target file that already exists.
        paths: Vec<PathBuf>,
    },
    /// The output directory could not be created.
    #[error("cannot create directory {}", .path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// A certificate or key file could not be written.
    #[error("cannot write {}", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// The CA directory given to `issue` does not exist.
    #[error(
        "CA directory {} does not exist (it must hold ca.pem and ca.key, as written by `shelfctl certs init`)",
        .path.display()
    )]
    CaDirMissing {
        /// The directory.
        path: PathBuf,
    },
    /// The CA directory given to `issue` is not a directory or cannot be inspected.
    #[error("CA directory {} is not a readable directory", .path.display())]
    CaDirUnusable {
        /// The path.
        path: PathBuf,
        /// The underlying I/O error, when there is one.
        #[source]
        source: Option<io::Error>,
    },
    /// `ca.pem` or `ca.key` could not be read.
    #[error("cannot read {}", .path.display())]
    ReadCa {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// `ca.pem` does not hold a usable CA certificate.
    #[error("{} is not a usable CA certificate: {reason}", .path.display())]
    InvalidCaCert {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// `ca.key` does not hold a usable private key.
    #[error("{} is not a usable private key (PKCS#8 PEM expected): {reason}", .path.display())]
    InvalidCaKey {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// `ca.key` is a valid key but not the one `ca.pem` was made for.
    #[error("private key {} does not belong to CA certificate {}", .key.display(), .cert.display())]
    CaKeyMismatch {
        /// The CA certificate file.
        cert: PathBuf,
        /// The CA key file.
        key: PathBuf,
    },
    /// The CA certificate has expired, so nothing it signs would be accepted.
    #[error("CA certificate {} expired on {not_after}; create a new CA with `shelfctl certs init`", .path.display())]
    CaExpired {
        /// The CA certificate file.
        path: PathBuf,
        /// When it expired.
        not_after: OffsetDateTime,
    },
    /// Key generation or signing failed.
    #[error("cannot generate the {what} certificate")]
    Generate {
        /// Which certificate (`CA`, `coordinator`, a store id, `admin`).
        what: String,
        /// The error from rcgen.
        #[source]
        source: rcgen::Error,
    },
}

/// Joins paths for an error message.
fn list_paths(paths: &[PathBuf]) -> String {
    let mut out = String::new();
    for (i, p) in paths.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{}", p.display());
    }
    out
}

/// One file to write.
struct Output {
    path: PathBuf,
    contents: String,
    mode: u32,
}

/// Creates a CA and every certificate a cluster needs, in `out`.
///
/// Writes `ca.pem`/`ca.key`, `coordinator.pem/.key` (CN `coordinator`, SANs
/// `localhost`, `127.0.0.1` and each of `extra_sans`, as an IP SAN when it
/// parses as an IP address and a DNS SAN otherwise), one `ID.pem/.key` client
/// certificate per store (CN = store id) and `admin.pem/.key` (CN `admin`).
/// Creates `out` when missing. Returns the paths written, certificate before
/// key, in that order.
///
/// # Errors
/// [`CertError::AlreadyExists`] when any target file exists and `force` is
/// false (nothing is written then); invalid or reserved store ids and invalid
/// SANs are refused before anything happens; I/O errors name the path.
pub fn init(
    out: &Path,
    stores: &[String],
    extra_sans: &[String],
    force: bool,
) -> Result<Vec<PathBuf>, CertError> {
    let mut seen = HashSet::new();
    for id in stores {
        validate_store_id(id)?;
        if !seen.insert(id.as_str()) {
            return Err(CertError::DuplicateStoreId { id: id.clone() });
        }
    }
    let sans = coordinator_sans(extra_sans)?;

    let mut names = vec![CA_NAME, COORDINATOR_NAME];
    names.extend(stores.iter().map(String::as_str));
    names.push(ADMIN_NAME);
    if !force {
        refuse_existing(out, &names)?;
    }

    let now = OffsetDateTime::now_utc();
    let ca_key = generate_key(CA_NAME)?;
    let ca_params = ca_params(now);
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|source| generate_error(CA_NAME, source))?;
    let mut outputs = Vec::from(key_and_cert(out, CA_NAME, ca_cert.pem(), &ca_key));
    let issuer = Issuer::new(ca_params, ca_key);

    let coordinator = leaf(
        COORDINATOR_NAME,
        sans,
        &[
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        now,
        None,
        &issuer,
    )?;
    outputs.extend(key_and_cert(
        out,
        COORDINATOR_NAME,
        coordinator.0,
        &coordinator.1,
    ));
    for id in stores.iter().map(String::as_str).chain([ADMIN_NAME]) {
        let (pem, key) = client_leaf(id, now, None, &issuer)?;
        outputs.extend(key_and_cert(out, id, pem, &key));
    }

    fs::create_dir_all(out).map_err(|source| CertError::CreateDir {
        path: out.to_path_buf(),
        source,
    })?;
    write_all(&outputs, force)
}

/// Issues a client certificate for one more store, signed by the CA in `ca_dir`.
///
/// Loads `ca.pem` and `ca.key` from `ca_dir` and writes `ID.pem` and `ID.key`
/// next to them. Returns the two paths written.
///
/// # Errors
/// [`CertError::CaDirMissing`] when `ca_dir` does not exist; read and parse
/// errors for `ca.pem`/`ca.key` name the file; [`CertError::AlreadyExists`]
/// when the store's files exist and `force` is false.
pub fn issue(ca_dir: &Path, store: &str, force: bool) -> Result<Vec<PathBuf>, CertError> {
    validate_store_id(store)?;
    match fs::metadata(ca_dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(CertError::CaDirUnusable {
                path: ca_dir.to_path_buf(),
                source: None,
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(CertError::CaDirMissing {
                path: ca_dir.to_path_buf(),
            });
        }
        Err(e) => {
            return Err(CertError::CaDirUnusable {
                path: ca_dir.to_path_buf(),
                source: Some(e),
            });
        }
    }
    if !force {
        refuse_existing(ca_dir, &[store])?;
    }

    let now = OffsetDateTime::now_utc();
    let (issuer, ca_not_after) = load_issuer(ca_dir, now)?;
    let (pem, key) = client_leaf(store, now, Some(ca_not_after), &issuer)?;
    write_all(&key_and_cert(ca_dir, store, pem, &key), force)
}

/// Checks a store id: the general id rules plus the reserved names.
fn validate_store_id(id: &str) -> Result<(), CertError> {
    if let Err(rejection) = shelfsync_core::item::validate_id("store", id) {
        let reason = match rejection {
            Rejection::InvalidField { reason, .. } => reason,
            other => other.to_string(),
        };
        return Err(CertError::InvalidStoreId {
            id: id.to_owned(),
            reason,
        });
    }
    if [CA_NAME, COORDINATOR_NAME, ADMIN_NAME].contains(&id) {
        return Err(CertError::ReservedStoreId { id: id.to_owned() });
    }
    Ok(())
}

/// The coordinator's SANs: `localhost`, `127.0.0.1`, then the extra ones, without repeats.
fn coordinator_sans(extra: &[String]) -> Result<Vec<SanType>, CertError> {
    let mut sans = vec![
        SanType::DnsName("localhost".try_into().map_err(|e| CertError::InvalidSan {
            name: "localhost".into(),
            reason: format!("{e}"),
        })?),
        SanType::IpAddress(IpAddr::from([127, 0, 0, 1])),
    ];
    for name in extra {
        let san = parse_san(name)?;
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    Ok(sans)
}

/// An IP SAN when `name` parses as an IP address, a DNS SAN otherwise.
fn parse_san(name: &str) -> Result<SanType, CertError> {
    let invalid = |reason: String| CertError::InvalidSan {
        name: name.to_owned(),
        reason,
    };
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let dns = name.strip_suffix('.').unwrap_or(name);
    if dns.is_empty() {
        return Err(invalid("must not be empty".into()));
    }
    if dns.len() > 253 {
        return Err(invalid("a DNS name is at most 253 characters long".into()));
    }
    for (i, label) in dns.split('.').enumerate() {
        let wildcard = i == 0 && label == "*";
        let ok = wildcard
            || (!label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        if !ok {
            return Err(invalid(format!(
                "label {label:?} is not a valid DNS label (letters, digits and '-', 1 to 63 characters)"
            )));
        }
    }
    let ia5 = dns.try_into().map_err(|e| invalid(format!("{e}")))?;
    Ok(SanType::DnsName(ia5))
}

/// Fails with every target file of `names` that already exists in `dir`.
fn refuse_existing(dir: &Path, names: &[&str]) -> Result<(), CertError> {
    let existing: Vec<PathBuf> = names
        .iter()
        .flat_map(|name| [cert_path(dir, name), key_path(dir, name)])
        .filter(|p| fs::symlink_metadata(p).is_ok())
        .collect();
    if existing.is_empty() {
        Ok(())
    } else {
        Err(CertError::AlreadyExists { paths: existing })
    }
}

fn cert_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.pem"))
}

fn key_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.key"))
}

fn generate_error(what: &str, source: rcgen::Error) -> CertError {
    CertError::Generate {
        what: what.to_owned(),
        source,
    }
}

/// A fresh ECDSA P-256 key.
fn generate_key(what: &str) -> Result<KeyPair, CertError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| generate_error(what, e))
}

/// The certificate and key files for `name`.
fn key_and_cert(dir: &Path, name: &str, cert_pem: String, key: &KeyPair) -> [Output; 2] {
    [
        Output {
            path: cert_path(dir, name),
            contents: cert_pem,
            mode: 0o644,
        },
        Output {
            path: key_path(dir, name),
            contents: key.serialize_pem(),
            mode: 0o600,
        },
    ]
}

/// A distinguished name with organisation `shelfsync` and the given CN.
fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "shelfsync");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// The CA's parameters, valid for 10 years from a day ago.
fn ca_params(now: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn("shelfsync CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = now - BACKDATE;
    params.not_after = now + CA_VALIDITY;
    params
}

/// A client certificate (CN `name`, EKU client auth) and its new key.
fn client_leaf(
    name: &str,
    now: OffsetDateTime,
    ca_not_after: Option<OffsetDateTime>,
    issuer: &Issuer<'_, KeyPair>,
) -> Result<(String, KeyPair), CertError> {
    leaf(
        name,
        Vec::new(),
        &[ExtendedKeyUsagePurpose::ClientAuth],
        now,
        ca_not_after,
        issuer,
    )
}

/// An end-entity certificate signed by `issuer`, valid for 2 years from a day
/// ago (never past `ca_not_after`), and its new key.
fn leaf(
    name: &str,
    sans: Vec<SanType>,
    ekus: &[ExtendedKeyUsagePurpose],
    now: OffsetDateTime,
    ca_not_after: Option<OffsetDateTime>,
    issuer: &Issuer<'_, KeyPair>,
) -> Result<(String, KeyPair), CertError> {
    let key = generate_key(name)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(name);
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = ekus.to_vec();
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - BACKDATE;
    params.not_after = match ca_not_after {
        Some(limit) => (now + LEAF_VALIDITY).min(limit),
        None => now + LEAF_VALIDITY,
    };
    let cert = params
        .signed_by(&key, issuer)
        .map_err(|e| generate_error(name, e))?;
    Ok((cert.pem(), key))
}

/// Loads the CA from `ca_dir`, checking that it is a CA, unexpired, and that
/// the key belongs to the certificate. Returns the issuer and the CA's expiry.
fn load_issuer(
    ca_dir: &Path,
    now: OffsetDateTime,
) -> Result<(Issuer<'static, KeyPair>, OffsetDateTime), CertError> {
    let cert_file = cert_path(ca_dir, CA_NAME);
    let key_file = key_path(ca_dir, CA_NAME);
    let read = |path: &Path| {
        fs::read_to_string(path).map_err(|source| CertError::ReadCa {
            path: path.to_path_buf(),
            source,
        })
    };
    let cert_pem = read(&cert_file)?;
    let key_pem = read(&key_file)?;

    let invalid_cert = |reason: String| CertError::InvalidCaCert {
        path: cert_file.clone(),
        reason,
    };
    let der: CertificateDer<'static> = PemObject::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| invalid_cert(format!("no PEM certificate found ({e})")))?;
    let (_, x509) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| invalid_cert(format!("cannot parse the certificate: {e}")))?;
    if !x509.is_ca() {
        return Err(invalid_cert(
            "it is not a CA certificate (basic constraints CA:TRUE missing)".into(),
        ));
    }
    let not_after = OffsetDateTime::from_unix_timestamp(x509.validity().not_after.timestamp())
        .map_err(|e| invalid_cert(format!("its expiry date is out of range: {e}")))?;
    if not_after <= now {
        return Err(CertError::CaExpired {
            path: cert_file,
            not_after,
        });
    }

    let key = KeyPair::from_pem(&key_pem).map_err(|e| CertError::InvalidCaKey {
        path: key_file.clone(),
        reason: e.to_string(),
    })?;
    if rcgen::PublicKeyData::der_bytes(&key) != x509.public_key().subject_public_key.data.as_ref() {
        return Err(CertError::CaKeyMismatch {
            cert: cert_file,
            key: key_file,
        });
    }
    let issuer = Issuer::from_ca_cert_der(&der, key)
        .map_err(|e| invalid_cert(format!("rcgen cannot use it as an issuer: {e}")))?;
    Ok((issuer, not_after))
}

/// Writes every output, certificates 0644 and keys 0600. Without `force`,
/// files are created exclusively so nothing existing is ever replaced.
fn write_all(outputs: &[Output], force: bool) -> Result<Vec<PathBuf>, CertError> {
    let mut written = Vec::with_capacity(outputs.len());
    for output in outputs {
        write_file(output, force).map_err(|source| CertError::Write {
            path: output.path.clone(),
            source,
        })?;
        written.push(output.path.clone());
    }
    Ok(written)
}

fn write_file(output: &Output, force: bool) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).mode(output.mode);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(&output.path)?;
    // `mode` only applies to new files; an overwritten key must not keep looser bits.
    file.set_permissions(Permissions::from_mode(output.mode))?;
    file.write_all(output.contents.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stores(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| (*s).to_owned()).collect()
    }

    fn parse_cert(path: &Path) -> (String, String, Vec<u8>) {
        let pem = fs::read(path).unwrap();
        let der: rustls_pki_types::CertificateDer<'static> =
            rustls_pki_types::pem::PemObject::from_pem_slice(&pem).unwrap();
        let (_, x509) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        let cn = |name: &x509_parser::x509::X509Name<'_>| {
            name.iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        };
        (cn(x509.subject()), cn(x509.issuer()), der.to_vec())
    }

    /// Checks `leaf` was signed by the CA in `ca` using webpki, as rustls does.
    fn verify_client_cert(ca: &Path, leaf: &Path) -> Result<(), rustls::Error> {
        let ca_der = parse_cert(ca).2;
        let leaf_der = parse_cert(leaf).2;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_der.into()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .unwrap();
        verifier
            .verify_client_cert(&leaf_der.into(), &[], rustls_pki_types::UnixTime::now())
            .map(|_| ())
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut files: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                let bytes = fs::read(&p).unwrap();
                (p, bytes)
            })
            .collect();
        files.sort();
        files
    }

    #[test]
    fn init_writes_every_file_with_the_right_modes_and_names() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("certs");
        let written = init(
            &out,
            &stores(&["store-1", "store-2"]),
            &stores(&["10.0.0.7", "coord.example"]),
            false,
        )
        .unwrap();
        let names: Vec<_> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            names,
            [
                "ca.pem",
                "ca.key",
                "coordinator.pem",
                "coordinator.key",
                "store-1.pem",
                "store-1.key",
                "store-2.pem",
                "store-2.key",
                "admin.pem",
                "admin.key"
            ]
        );
        for path in &written {
            let expected = if path.extension().unwrap() == "key" {
                0o600
            } else {
                0o644
            };
            assert_eq!(mode(path), expected, "{}", path.display());
        }
        for (name, cn) in [
            ("coordinator", "coordinator"),
            ("store-1", "store-1"),
            ("store-2", "store-2"),
            ("admin", "admin"),
        ] {
            let (subject, issuer, _) = parse_cert(&out.join(format!("{name}.pem")));
            assert_eq!(subject, cn);
            assert_eq!(issuer, "shelfsync CA");
        }
        for name in ["store-1", "store-2", "admin"] {
            verify_client_cert(&out.join("ca.pem"), &out.join(format!("{name}.pem"))).unwrap();
        }

        // The coordinator's SANs and the validity periods.
        let pem = fs::read(out.join("coordinator.pem")).unwrap();
        let der: rustls_pki_types::CertificateDer<'static> =
            rustls_pki_types::pem::PemObject::from_pem_slice(&pem).unwrap();
        let (_, x509) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        let san = x509.subject_alternative_name().unwrap().unwrap();
        let sans: Vec<String> = san
            .value
            .general_names
            .iter()
            .map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => (*d).to_owned(),
                x509_parser::extensions::GeneralName::IPAddress(ip) => {
                    let b: [u8; 4] = (*ip).try_into().unwrap();
                    IpAddr::from(b).to_string()
                }
                other => panic!("unexpected SAN {other:?}"),
            })
            .collect();
        assert_eq!(
            sans,
            ["localhost", "127.0.0.1", "10.0.0.7", "coord.example"]
        );
        let days = |x: &x509_parser::certificate::X509Certificate<'_>| {
            (x.validity().not_after.timestamp() - x.validity().not_before.timestamp()) / 86_400
        };
        assert_eq!(days(&x509), 731);
        let ca_pem = fs::read(out.join("ca.pem")).unwrap();
        let ca_der: rustls_pki_types::CertificateDer<'static> =
            rustls_pki_types::pem::PemObject::from_pem_slice(&ca_pem).unwrap();
        let (_, ca) = x509_parser::parse_x509_certificate(ca_der.as_ref()).unwrap();
        assert!(ca.is_ca());
        assert_eq!(days(&ca), 3654);
    }

    #[test]
    fn second_init_without_force_fails_and_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        init(tmp.path(), &stores(&["store-1"]), &[], false).unwrap();
        let before = snapshot(tmp.path());

        // Even a run that would add a new store must not write anything.
        let err = init(tmp.path(), &stores(&["store-1", "store-9"]), &[], false).unwrap_err();
        match &err {
            CertError::AlreadyExists { paths } => {
                assert!(paths.contains(&tmp.path().join("ca.key")));
                assert!(!paths.contains(&tmp.path().join("store-9.pem")));
            }
            other => panic!("unexpected error {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("--force"), "{msg}");
        assert!(msg.contains("ca.pem"), "{msg}");
        assert_eq!(snapshot(tmp.path()), before);
    }

    #[test]
    fn init_with_force_overwrites_and_restores_key_modes() {
        let tmp = tempfile::tempdir().unwrap();
        init(tmp.path(), &stores(&["store-1"]), &[], false).unwrap();
        let before = snapshot(tmp.path());
        let key = tmp.path().join("store-1.key");
        fs::set_permissions(&key, Permissions::from_mode(0o644)).unwrap();

        init(tmp.path(), &stores(&["store-1"]), &[], true).unwrap();
        let after = snapshot(tmp.path());
        assert_eq!(after.len(), before.len());
        for ((p1, b1), (p2, b2)) in before.iter().zip(&after) {
            assert_eq!(p1, p2);
            assert_ne!(b1, b2, "{} was not rewritten", p1.display());
        }
        assert_eq!(mode(&key), 0o600);
        verify_client_cert(&tmp.path().join("ca.pem"), &tmp.path().join("store-1.pem")).unwrap();
    }

    #[test]
    fn issue_adds_a_store_signed_by_the_ca() {
        let tmp = tempfile::tempdir().unwrap();
        init(tmp.path(), &stores(&["store-1"]), &[], false).unwrap();
        let written = issue(tmp.path(), "store-2", false).unwrap();
        assert_eq!(
            written,
            [
                tmp.path().join("store-2.pem"),
                tmp.path().join("store-2.key")
            ]
        );
        assert_eq!(mode(&written[1]), 0o600);
        assert_eq!(mode(&written[0]), 0o644);
        let (subject, issuer, _) = parse_cert(&written[0]);
        assert_eq!(
            (subject.as_str(), issuer.as_str()),
            ("store-2", "shelfsync CA")
        );
        verify_client_cert(&tmp.path().join("ca.pem"), &written[0]).unwrap();

        // A cert from another CA does not verify against this one.
        let other = tempfile::tempdir().unwrap();
        init(other.path(), &stores(&["store-2"]), &[], false).unwrap();
        assert!(
            verify_client_cert(
                &tmp.path().join("ca.pem"),
                &other.path().join("store-2.pem")
            )
            .is_err()
        );

        // Issuing again needs --force.
        let before = snapshot(tmp.path());
        let err = issue(tmp.path(), "store-2", false).unwrap_err();
        assert!(matches!(err, CertError::AlreadyExists { .. }), "{err:?}");
        assert_eq!(snapshot(tmp.path()), before);
        issue(tmp.path(), "store-2", true).unwrap();
        verify_client_cert(&tmp.path().join("ca.pem"), &written[0]).unwrap();
    }

    #[test]
    fn issue_with_a_missing_ca_dir_names_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("no-such-dir");
        let err = issue(&missing, "store-1", false).unwrap_err();
        assert!(matches!(&err, CertError::CaDirMissing { path } if *path == missing));
        assert!(err.to_string().contains(&missing.display().to_string()));
        assert!(!missing.exists());
    }

    #[test]
    fn issue_with_a_broken_ca_names_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        // Empty directory: ca.pem unreadable.
        let err = issue(tmp.path(), "store-1", false).unwrap_err();
        assert!(
            matches!(&err, CertError::ReadCa { path, .. } if *path == tmp.path().join("ca.pem")),
            "{err:?}"
        );

        init(tmp.path(), &[], &[], false).unwrap();
        // Garbage key.
        fs::write(tmp.path().join("ca.key"), "not a key").unwrap();
        let err = issue(tmp.path(), "store-1", false).unwrap_err();
        assert!(
            matches!(&err, CertError::InvalidCaKey { path, .. } if *path == tmp.path().join("ca.key")),
            "{err:?}"
        );
        // A valid key that is not the CA's.
        fs::copy(tmp.path().join("admin.key"), tmp.path().join("ca.key")).unwrap();
        let err = issue(tmp.path(), "store-1", false).unwrap_err();
        assert!(matches!(&err, CertError::CaKeyMismatch { .. }), "{err:?}");
        // A leaf certificate in place of the CA.
        fs::copy(tmp.path().join("admin.pem"), tmp.path().join("ca.pem")).unwrap();
        let err = issue(tmp.path(), "store-1", false).unwrap_err();
        assert!(matches!(&err, CertError::InvalidCaCert { .. }), "{err:?}");
        // Garbage certificate.
        fs::write(tmp.path().join("ca.pem"), "junk").unwrap();
        let err = issue(tmp.path(), "store-1", false).unwrap_err();
        assert!(matches!(&err, CertError::InvalidCaCert { .. }), "{err:?}");
        assert!(!tmp.path().join("store-1.pem").exists());
    }

    #[test]
    fn invalid_and_reserved_store_ids_are_refused_before_writing() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("certs");
        for bad in ["", "-x", "a/b", "../evil", "store 1", &"x".repeat(65)] {
            let err = init(&out, &stores(&[bad]), &[], false).unwrap_err();
            assert!(
                matches!(err, CertError::InvalidStoreId { .. }),
                "{bad:?}: {err:?}"
            );
        }
        for reserved in ["admin", "coordinator", "ca"] {
            let err = init(&out, &stores(&[reserved]), &[], false).unwrap_err();
            assert!(matches!(err, CertError::ReservedStoreId { .. }), "{err:?}");
        }
        let err = init(&out, &stores(&["s1", "s1"]), &[], false).unwrap_err();
        assert!(matches!(err, CertError::DuplicateStoreId { .. }), "{err:?}");
        let err = init(&out, &stores(&["s1"]), &stores(&["bad name"]), false).unwrap_err();
        assert!(matches!(err, CertError::InvalidSan { .. }), "{err:?}");
        assert!(!out.exists());

        init(&out, &[], &[], false).unwrap();
        let err = issue(&out, "admin", false).unwrap_err();
        assert!(matches!(err, CertError::ReservedStoreId { .. }), "{err:?}");
        let err = issue(&out, "a/b", false).unwrap_err();
        assert!(matches!(err, CertError::InvalidStoreId { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "invalid store id \"a/b\": contains '/'; only letters, digits, '.', '_' and '-' are allowed"
        );
    }
}
