//! `shelfctl`, the shelfsync admin CLI: parses the command line, checks it
//! into settings, runs it and maps the result to an exit code (see the
//! library docs and `--help`): 0 success, 1 needs attention, 2 error. Errors
//! are printed as `error: <chain>` on stderr.

use std::process::ExitCode;

use clap::Parser;
use shelfctl::cli::{Cli, Invocation};
use shelfctl::{EXIT_ERROR, run};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // clap exits by itself on usage errors (code 2) and for --help/--version (0).
    let cli = Cli::parse();
    // Logs go to stderr and stay quiet unless RUST_LOG asks for more.
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = Invocation::from_cli(cli).and_then(|invocation| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(run(invocation))
    });
    match result {
        Ok(outcome) => ExitCode::from(outcome.exit_code()),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}
