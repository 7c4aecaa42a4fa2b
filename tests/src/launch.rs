//! Starting a service binary under test and waiting until it is ready,
//! shared by the coordinator and agent launchers.
//!
//! The mechanism is the shared launcher's ([`shelfsync_runtime::launcher`]);
//! this adds what tests choose: the binaries from [`crate::binaries`], log
//! lines at `info` (tests read them), [`READY_TIMEOUT`], and a [`Process`]
//! that prints its log tail when a test panics. A failed start comes back as
//! a [`LaunchError`], whose [`LaunchError::is_addr_in_use`] tells the
//! launcher to try fresh ports (see [`crate::ports`]).

use std::path::Path;
use std::process::Command;

pub use shelfsync_runtime::launcher::LaunchError;
use shelfsync_runtime::launcher::{self, Child, Probe};

use crate::READY_TIMEOUT;
use crate::binaries::binary;
use crate::process::Process;

/// Written in the log before each start.
const STARTER: &str = "shelfsync-tests";

/// `binary --config config` in `dir` (see [`launcher::service_command`]),
/// logging at `info`.
pub fn service_command(binary_name: &str, config: &Path, dir: &Path) -> Command {
    let mut command = launcher::service_command(&binary(binary_name), config);
    // Tests read log lines; keep them at info.
    command.current_dir(dir).env("RUST_LOG", "info");
    command
}

/// Spawns `command` with its output appended to `log_path` and waits until
/// `probe` succeeds, for at most [`READY_TIMEOUT`]; a start that fails is
/// killed and reported with the tail of its log.
pub async fn spawn_ready(
    name: &str,
    command: Command,
    log_path: &Path,
    probe: &Probe,
) -> Result<Process, LaunchError> {
    Child::spawn_ready(STARTER, name, command, log_path, probe, READY_TIMEOUT)
        .await
        .map(Process::from)
}
