//! `shelfctl`, the shelfsync admin CLI, as a library: `main.rs` only parses
//! the command line, starts logging and maps the outcome of [`run`] to an
//! exit code.
//!
//! Read in this order: [`cli`] (what may be typed, checked in one step into
//! an [`cli::Invocation`]), [`config`] (the `--config` file), [`coordinator`]
//! (connecting and the typed requests), then one module per command:
//! [`certs`], [`status`], [`item`], [`history`], [`import`], [`lock`], and [`demo`],
//! which starts a local cluster of the real binaries. [`render`] holds the
//! text formatting they share.
//!
//! Exit codes, the same for every command:
//! - 0: success; for `status`, every store is healthy; for `demo`, it was
//!   stopped by Ctrl-C or SIGTERM and cleaned up;
//! - 1: needs attention: a store is not healthy, the item or its history was
//!   not found, or `import` rejected rows ([`Outcome::Attention`]);
//! - 2: error: bad usage or config, the coordinator unreachable, or a command
//!   that could not finish (any `Err` of [`run`], and clap's usage errors).

pub mod certs;
pub mod cli;
pub mod config;
pub mod coordinator;
pub mod demo;
pub mod history;
pub mod holds;
pub mod import;
pub mod item;
pub mod lock;
pub mod render;
pub mod status;
pub mod transfers;

use cli::{Invocation, Task};

/// Exit code of [`Outcome::Success`].
pub const EXIT_SUCCESS: u8 = 0;
/// Exit code of [`Outcome::Attention`].
pub const EXIT_ATTENTION: u8 = 1;
/// Exit code of an error: usage, config, connection, or a failed command.
pub const EXIT_ERROR: u8 = 2;

/// How a command that ran to its end came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// All is well.
    Success,
    /// The command worked, and its answer needs a person: an unhealthy
    /// store, a missing item, rejected rows.
    Attention,
}

impl Outcome {
    /// The process exit code for this outcome.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Success => EXIT_SUCCESS,
            Outcome::Attention => EXIT_ATTENTION,
        }
    }
}

/// Runs a checked command line.
pub async fn run(invocation: Invocation) -> anyhow::Result<Outcome> {
    let (config, task) = match invocation {
        Invocation::Certs(cmd) => return certs::run(cmd).map(|()| Outcome::Success),
        Invocation::Demo(settings) => return demo::run(&settings).await,
        Invocation::Admin { config, task } => (config, task),
    };
    match task {
        Task::Status(settings) => status::run(&config, settings).await,
        Task::ItemGet(settings) => item::get(&config, &settings).await,
        Task::History(settings) => history::run(&config, &settings).await,
        Task::Import(settings) => import::run(&config, &settings).await,
        Task::Lock(settings) => lock::lock(&config, &settings).await,
        Task::Unlock(settings) => lock::unlock(&config, &settings).await,
        Task::Holds(settings) => holds::run(&config, &settings).await,
        Task::Transfers(settings) => transfers::list(&config, &settings).await,
        Task::TransferShow(settings) => transfers::show(&config, &settings).await,
    }
}
