//! `shelfsync-agent --config FILE`: one store's replica and REST API.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use shelfsync_agent::Config;
use shelfsync_proto::process;

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
    let config = match Config::load(&args.config) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    process::init_tracing(config.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(shelfsync_agent::run(config, process::shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "agent failed");
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
