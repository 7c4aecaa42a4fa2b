//! Starting a process and waiting until it is ready, shared by every
//! launcher (coordinator now, store agents later).
//!
//! [`spawn_ready`] starts one attempt and classifies a failure, so that the
//! launcher can tell "the port was taken, pick another" (see [`crate::ports`])
//! from a real failure, which is reported with the tail of the process log.

use std::process::Command;
use std::time::Duration;

use crate::http::{Readiness, wait_ready};
use crate::ports::is_addr_in_use;
use crate::process::{Process, tail};

/// Lines of log quoted in a start failure.
const FAILURE_TAIL_LINES: usize = 40;

/// Why one start attempt failed.
#[derive(Debug)]
pub enum StartError {
    /// The process exited because one of its addresses was already in use;
    /// trying again on other ports should help.
    AddrInUse(anyhow::Error),
    /// Anything else: bad config, crash, no readiness within the timeout.
    Failed(anyhow::Error),
}

impl StartError {
    /// The error, whatever the kind.
    pub fn into_error(self) -> anyhow::Error {
        match self {
            StartError::AddrInUse(err) | StartError::Failed(err) => err,
        }
    }
}

/// Spawns `command` (see [`Process::spawn`]) and waits until `ready_url`
/// answers 200, for at most `timeout`.
pub async fn spawn_ready(
    name: &str,
    command: Command,
    log_path: &std::path::Path,
    client: &reqwest::Client,
    ready_url: &str,
    timeout: Duration,
) -> Result<Process, StartError> {
    let mut process = Process::spawn(name, command, log_path).map_err(StartError::Failed)?;
    let outcome = wait_ready(client, &mut process, ready_url, timeout).await;
    let problem = match outcome {
        Readiness::Ready => return Ok(process),
        Readiness::Exited(status) => format!("{name} exited with {status} before it was ready"),
        Readiness::TimedOut => {
            process.kill9();
            format!("{name} was not ready at {ready_url} within {timeout:?}")
        }
    };
    let log = process.log();
    let error = anyhow::anyhow!(
        "{problem}; last lines of {}:\n{}",
        log_path.display(),
        tail(&log, FAILURE_TAIL_LINES)
    );
    if is_addr_in_use(&log) {
        Err(StartError::AddrInUse(error))
    } else {
        Err(StartError::Failed(error))
    }
}
