//! `shelfsync-agent --config FILE`: one store's replica and REST API.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use shelfsync_agent::Config;
use shelfsync_runtime::{ProcessSettings, run_service};

/// The shelfsync store agent.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Path of the TOML config.
    #[arg(long, env = "SHELFSYNC_CONFIG")]
    config: PathBuf,
}

/// mimalloc: the write path allocates many small short-lived buffers
/// (frames, sled nodes), where glibc's malloc showed as the top cost in
/// profiles (docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    run_service(
        "agent",
        Config::load(&args.config),
        |config| ProcessSettings {
            log_format: config.log_format,
            worker_threads: config.worker_threads,
        },
        shelfsync_agent::run,
    )
}
