//! `shelfsync-loadgen setup|run|redis|fleet`: the load generator's command line.
//!
//! Exit codes: 0 on success, 2 for bad flags or missing certificates (fix
//! the invocation), 1 for a failure while running.

use std::error::Error as _;
use std::process::ExitCode;

use clap::Parser;
use shelfsync_loadgen::cli::{Cli, execute};

/// mimalloc: the write path allocates many small short-lived buffers
/// (frames, sled nodes), where glibc's malloc showed as the top cost in
/// profiles (docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprint!("error: {err}");
            let mut source = err.source();
            while let Some(cause) = source {
                eprint!(": {cause}");
                source = cause.source();
            }
            eprintln!();
            if err.is_usage() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
