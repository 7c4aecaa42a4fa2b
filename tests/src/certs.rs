//! Certificates for a test cluster, made by the real `shelfctl certs`.
//!
//! Going through the binary rather than the library keeps the CLI covered and
//! gives tests exactly the files an operator would have.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use shelfsync_proto::TlsFiles;

use crate::binaries::binary;

/// A directory written by `shelfctl certs init`: `ca.pem`/`ca.key`,
/// `coordinator.pem`/`.key`, `admin.pem`/`.key` and `ID.pem`/`.key` per store.
#[derive(Debug, Clone)]
pub struct Certs {
    dir: PathBuf,
}

impl Certs {
    /// Runs `shelfctl certs init --out DIR --store ID...` for `stores`.
    pub fn generate(dir: &Path, stores: &[&str]) -> anyhow::Result<Self> {
        let mut args = vec!["certs".to_string(), "init".to_string(), "--out".to_string()];
        args.push(dir.display().to_string());
        for store in stores {
            args.push("--store".into());
            args.push((*store).to_string());
        }
        shelfctl(&args)?;
        Ok(Certs {
            dir: dir.to_path_buf(),
        })
    }

    /// Uses the files already in `dir` (written by an earlier `certs init`).
    pub fn from_dir(dir: &Path) -> Self {
        Certs {
            dir: dir.to_path_buf(),
        }
    }

    /// Runs `shelfctl certs issue --ca-dir DIR --store ID`: one more store
    /// certificate from the same CA (whether or not the store is registered).
    pub fn issue(&self, store: &str) -> anyhow::Result<()> {
        shelfctl(&[
            "certs".into(),
            "issue".into(),
            "--ca-dir".into(),
            self.dir.display().to_string(),
            "--store".into(),
            store.to_string(),
        ])
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate every peer is verified against.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The `[tls]` files of `identity`: `coordinator`, `admin` or a store id.
    pub fn tls_files(&self, identity: &str) -> TlsFiles {
        TlsFiles {
            ca_cert: self.ca_cert(),
            cert: self.dir.join(format!("{identity}.pem")),
            key: self.dir.join(format!("{identity}.key")),
        }
    }
}

/// Runs `shelfctl` with `args`, failing with its stderr when it fails.
fn shelfctl(args: &[String]) -> anyhow::Result<()> {
    let output = Command::new(binary("shelfctl"))
        .args(args)
        .output()
        .context("cannot run shelfctl")?;
    if !output.status.success() {
        anyhow::bail!(
            "shelfctl {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
