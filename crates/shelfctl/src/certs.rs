//! `shelfctl certs init|issue`: the command-line face of
//! [`shelfsync_proto::certs`]. It parses the arguments, calls the library and
//! prints every file written, one path per line.

use std::io::{self, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use shelfsync_proto::certs;

/// `shelfctl certs ...`.
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a private CA plus coordinator, store and admin certificates.
    Init(InitArgs),
    /// Issue a client certificate for one more store, signed by an existing CA.
    Issue(IssueArgs),
}

/// Arguments of `shelfctl certs init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Directory to write into (created when missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Store id to issue a client certificate for; repeat for several stores.
    #[arg(long = "store", value_name = "ID", required = true)]
    stores: Vec<String>,
    /// Extra subject alternative name (DNS name or IP) for the coordinator; repeatable.
    #[arg(long = "san", value_name = "NAME")]
    sans: Vec<String>,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
}

/// Arguments of `shelfctl certs issue`.
#[derive(Debug, Args)]
pub struct IssueArgs {
    /// Directory holding ca.pem and ca.key; the new files are written there too.
    #[arg(long, value_name = "DIR")]
    ca_dir: PathBuf,
    /// Id of the store to issue a client certificate for.
    #[arg(long, value_name = "ID")]
    store: String,
    /// Overwrite the store's existing files.
    #[arg(long)]
    force: bool,
}

/// Runs a `certs` subcommand, printing the files written.
pub fn run(cmd: CertsCommand) -> anyhow::Result<()> {
    let written = match cmd {
        CertsCommand::Init(args) => certs::init(&args.out, &args.stores, &args.sans, args.force)?,
        CertsCommand::Issue(args) => certs::issue(&args.ca_dir, &args.store, args.force)?,
    };
    print_paths(&written).context("cannot print the files written")
}

fn print_paths(paths: &[PathBuf]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    for path in paths {
        writeln!(out, "{}", path.display())?;
    }
    out.flush()
}
