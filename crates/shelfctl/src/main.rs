//! `shelfctl`, the shelfsync admin CLI.
//!
//! This file owns the command line: the global options, the subcommand
//! dispatch and how errors are reported (`error: <chain>` on stderr, exit
//! code 1). Each subcommand lives in its own module.

mod certs;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// shelfsync admin CLI: certificates, store status, item history.
#[derive(Debug, Parser)]
#[command(name = "shelfctl", version, about)]
struct Cli {
    /// shelfctl config file (TOML: coordinator, server_name, [tls] with the admin cert).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Create or extend the private CA and the certificates of a cluster.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Certs(cmd) => certs::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
