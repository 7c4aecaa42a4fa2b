//! `shelfsync-coordinator --config FILE`: the chain's single authority.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use shelfsync_coordinator::Config;
use shelfsync_runtime::{ProcessSettings, run_service};

/// The shelfsync coordinator.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Path of the TOML config.
    #[arg(long, env = "SHELFSYNC_CONFIG")]
    config: PathBuf,
}

/// mimalloc: the write path allocates many small short-lived buffers
/// (frames, encoded records), where glibc's malloc showed as a top cost in
/// profiles (docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    run_service(
        "coordinator",
        Config::load(&args.config),
        |config| ProcessSettings {
            log_format: config.log_format,
            worker_threads: config.worker_threads,
        },
        shelfsync_coordinator::run,
    )
}
