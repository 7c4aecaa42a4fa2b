//! `shelfsync-loadgen setup`: certificates and a coordinator config for a
//! load test.
//!
//! Writes into one directory everything a coordinator and the load
//! generator need: the CA, the coordinator's certificate, one client
//! certificate per store (`load-1` .. `load-N`, made by
//! [`shelfsync_proto::certs::init`], the same code as `shelfctl certs init`),
//! the admin certificate, and `coordinator.toml`, which registers every
//! store with the benchmark location as its only writable and readable
//! location and keeps the ledger in `DIR/data`. With `--fleet N` it also
//! issues and registers the stores of `shelfsync-loadgen fleet`
//! (`fleet-1` .. `fleet-N`, each with a location of its own, see
//! [`crate::fleet`]). Paths in the config are absolute, so the coordinator
//! may start from any directory.

use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::error::LoadError;

/// The id of the store whose certificate connection `i` (from 1) presents.
pub fn store_id(i: usize) -> String {
    format!("load-{i}")
}

/// What `setup` is asked to write.
#[derive(Debug, Clone)]
pub struct SetupSettings {
    /// Directory for the certificates, the config and the ledger.
    pub dir: PathBuf,
    /// Stores to register (`load-1` .. `load-N`).
    pub stores: usize,
    /// The location every store may write and read.
    pub location: String,
    /// Fleet stores to register too (`fleet-1` .. `fleet-N`); 0 for none.
    pub fleet: usize,
    /// Fleet store `fleet-i` may read and write only the location
    /// `fleet_locations_prefix` + `i`.
    pub fleet_locations_prefix: String,
    /// The coordinator's QUIC address.
    pub listen: SocketAddr,
    /// The coordinator's HTTP address (`/readyz`).
    pub http_listen: SocketAddr,
    /// Replace certificates and config that exist.
    pub force: bool,
}

/// What `setup` wrote.
#[derive(Debug, Clone)]
pub struct SetupOutput {
    /// The directory, absolute.
    pub dir: PathBuf,
    /// The coordinator config.
    pub config: PathBuf,
    /// The coordinator's QUIC address.
    pub listen: SocketAddr,
    /// The coordinator's HTTP address.
    pub http_listen: SocketAddr,
}

/// Writes certificates and `coordinator.toml` into `settings.dir`.
///
/// # Errors
/// [`LoadError::Usage`] for an invalid location or store count, or when
/// the config exists and `force` is not set; certificate errors (existing
/// files without `force` write nothing); I/O errors naming the path.
pub fn setup(settings: &SetupSettings) -> Result<SetupOutput, LoadError> {
    shelfsync_core::item::validate_id("location", &settings.location)
        .map_err(|e| LoadError::Usage(format!("--location: {e}")))?;
    if settings.stores == 0 {
        return Err(LoadError::Usage("--stores must be at least 1".into()));
    }
    let fleet: Vec<(String, String)> = (1..=settings.fleet)
        .map(|i| {
            let location = crate::fleet::location(&settings.fleet_locations_prefix, i);
            shelfsync_core::item::validate_id("location", &location)
                .map_err(|e| LoadError::Usage(format!("--fleet-locations-prefix: {e}")))?;
            Ok((crate::fleet::store_id(i), location))
        })
        .collect::<Result<_, LoadError>>()?;
    let dir = std::path::absolute(&settings.dir).map_err(|source| LoadError::Io {
        action: "resolve",
        path: settings.dir.clone(),
        source,
    })?;
    let config = dir.join("coordinator.toml");
    if config.exists() && !settings.force {
        return Err(LoadError::Usage(format!(
            "{} exists; pass --force to replace it and the certificates",
            config.display()
        )));
    }
    let stores: Vec<String> = (1..=settings.stores).map(store_id).collect();
    let all: Vec<String> = stores
        .iter()
        .cloned()
        .chain(fleet.iter().map(|(id, _)| id.clone()))
        .collect();
    shelfsync_proto::certs::init(&dir, &all, &[], settings.force)
        .map_err(|e| LoadError::Certs(Box::new(e)))?;
    let mut text = coordinator_toml(
        &dir,
        &stores,
        &settings.location,
        settings.listen,
        settings.http_listen,
    );
    text.push_str(&fleet_toml(&fleet));
    fs::write(&config, text).map_err(|source| LoadError::Io {
        action: "write",
        path: config.clone(),
        source,
    })?;
    Ok(SetupOutput {
        dir,
        config,
        listen: settings.listen,
        http_listen: settings.http_listen,
    })
}

/// A TOML basic string holding `value`.
fn quoted(value: &str) -> String {
    toml::Value::String(value.to_owned()).to_string()
}

fn path_string(path: &Path) -> String {
    quoted(&path.display().to_string())
}

/// The text of `coordinator.toml` for stores writing `location`.
pub fn coordinator_toml(
    dir: &Path,
    stores: &[String],
    location: &str,
    listen: SocketAddr,
    http_listen: SocketAddr,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Written by `shelfsync-loadgen setup`: a coordinator for load tests.\n\
         listen      = {}\n\
         http_listen = {}\n\
         data_dir    = {}\n\
         log_format  = \"text\"\n\n\
         [tls]\n\
         ca_cert = {}\n\
         cert    = {}\n\
         key     = {}",
        quoted(&listen.to_string()),
        quoted(&http_listen.to_string()),
        path_string(&dir.join("data")),
        path_string(&dir.join("ca.pem")),
        path_string(&dir.join("coordinator.pem")),
        path_string(&dir.join("coordinator.key")),
    );
    for (i, id) in stores.iter().enumerate() {
        let _ = writeln!(
            out,
            "\n[[stores]]\n\
             id            = {}\n\
             name          = {}\n\
             # No agent syncs for these stores; a long interval keeps status calm.\n\
             sync_interval = \"1h\"\n\
             writable      = [{loc}]\n\
             readable      = [{loc}]",
            quoted(id),
            quoted(&format!("Load generator store {}", i + 1)),
            loc = quoted(location),
        );
    }
    out
}

/// The `[[stores]]` entries of fleet stores, each `(id, location)`: the
/// store may read and write its own location only.
pub fn fleet_toml(fleet: &[(String, String)]) -> String {
    let mut out = String::new();
    for (id, location) in fleet {
        let _ = writeln!(
            out,
            "\n[[stores]]\n\
             id            = {}\n\
             name          = {}\n\
             # A `shelfsync-loadgen fleet` store; it syncs every 1s by default.\n\
             sync_interval = \"1s\"\n\
             writable      = [{loc}]\n\
             readable      = [{loc}]",
            quoted(id),
            quoted(&format!("Fleet store {id}")),
            loc = quoted(location),
        );
    }
    out
}

/// How many store certificates `load-1`, `load-2`, ... exist in `dir`
/// without a gap (both the `.pem` and the `.key`).
pub fn count_store_certs(dir: &Path) -> usize {
    (1..)
        .take_while(|&i| {
            let id = store_id(i);
            dir.join(format!("{id}.pem")).is_file() && dir.join(format!("{id}.key")).is_file()
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path, stores: usize) -> SetupSettings {
        SetupSettings {
            dir: dir.to_path_buf(),
            stores,
            location: "bench".into(),
            fleet: 0,
            fleet_locations_prefix: "idle-".into(),
            listen: "127.0.0.1:7400".parse().unwrap(),
            http_listen: "127.0.0.1:7480".parse().unwrap(),
            force: false,
        }
    }

    #[test]
    fn setup_writes_certs_and_a_config_naming_every_store() {
        let tmp = tempfile::tempdir().unwrap();
        let out = setup(&settings(tmp.path(), 3)).unwrap();
        assert_eq!(count_store_certs(tmp.path()), 3);
        for file in ["ca.pem", "coordinator.pem", "admin.pem", "admin.key"] {
            assert!(tmp.path().join(file).is_file(), "{file}");
        }
        let text = fs::read_to_string(&out.config).unwrap();
        let value: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(value["listen"].as_str(), Some("127.0.0.1:7400"));
        assert_eq!(value["http_listen"].as_str(), Some("127.0.0.1:7480"));
        let data = PathBuf::from(value["data_dir"].as_str().unwrap());
        assert!(data.is_absolute());
        assert_eq!(data, out.dir.join("data"));
        let stores = value["stores"].as_array().unwrap();
        assert_eq!(stores.len(), 3);
        assert_eq!(stores[2]["id"].as_str(), Some("load-3"));
        assert_eq!(stores[2]["writable"].as_array().unwrap().len(), 1);
        assert_eq!(stores[2]["readable"][0].as_str(), Some("bench"));

        // A second setup needs --force and then replaces everything.
        let err = setup(&settings(tmp.path(), 3)).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        let mut more = settings(tmp.path(), 5);
        more.force = true;
        setup(&more).unwrap();
        assert_eq!(count_store_certs(tmp.path()), 5);
        assert_eq!(crate::fleet::count_certs(tmp.path()), 0);
    }

    #[test]
    fn fleet_stores_get_certificates_and_a_location_each() {
        let tmp = tempfile::tempdir().unwrap();
        let mut with_fleet = settings(tmp.path(), 2);
        with_fleet.fleet = 3;
        let out = setup(&with_fleet).unwrap();
        assert_eq!(count_store_certs(tmp.path()), 2);
        assert_eq!(crate::fleet::count_certs(tmp.path()), 3);
        let value: toml::Value = toml::from_str(&fs::read_to_string(&out.config).unwrap()).unwrap();
        let stores = value["stores"].as_array().unwrap();
        assert_eq!(stores.len(), 5);
        assert_eq!(stores[1]["readable"][0].as_str(), Some("bench"));
        assert_eq!(stores[4]["id"].as_str(), Some("fleet-3"));
        assert_eq!(stores[4]["readable"][0].as_str(), Some("idle-3"));
        assert_eq!(stores[4]["writable"][0].as_str(), Some("idle-3"));

        // A prefix that makes an invalid location is refused before writing.
        let mut bad = settings(&tmp.path().join("y"), 1);
        bad.fleet = 1;
        bad.fleet_locations_prefix = "-".into();
        let err = setup(&bad).unwrap_err();
        assert!(
            err.to_string().contains("--fleet-locations-prefix"),
            "{err}"
        );
        assert!(!tmp.path().join("y").exists());
    }

    #[test]
    fn bad_settings_are_refused_before_writing() {
        let tmp = tempfile::tempdir().unwrap();
        let mut bad = settings(&tmp.path().join("x"), 2);
        bad.location = "no/slash".into();
        assert!(matches!(setup(&bad), Err(LoadError::Usage(_))));
        let zero = settings(&tmp.path().join("x"), 0);
        assert!(matches!(setup(&zero), Err(LoadError::Usage(_))));
        assert!(!tmp.path().join("x").exists());
    }

    #[test]
    fn store_certs_are_counted_up_to_the_first_gap() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(count_store_certs(tmp.path()), 0);
        for i in [1, 2, 4] {
            fs::write(tmp.path().join(format!("load-{i}.pem")), "").unwrap();
            fs::write(tmp.path().join(format!("load-{i}.key")), "").unwrap();
        }
        fs::write(tmp.path().join("load-3.pem"), "").unwrap();
        assert_eq!(count_store_certs(tmp.path()), 2);
    }
}
