//! One child process of a test: the shared launcher's [`Child`], plus what
//! only tests want.
//!
//! The launcher appends stdout and stderr to one log file per process (a
//! restarted process keeps adding to the same file) and kills and reaps the
//! child when it is dropped, so a failing test never leaves a process
//! behind. On top of that a [`Process`] prints the tail of its log when it is
//! dropped while the test panics, which is usually the first thing one
//! wants to see, and can wait for a line to show up in its log.

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use shelfsync_runtime::launcher::{Child, tail};

/// Lines of log printed when a test panics.
const PANIC_TAIL_LINES: usize = 60;
/// Time between two looks at the log in [`Process::wait_for_log_line`].
const LOG_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// A running (or finished) child process; derefs to the launcher's [`Child`].
#[derive(Debug)]
pub struct Process(Child);

impl From<Child> for Process {
    fn from(child: Child) -> Self {
        Process(child)
    }
}

impl Deref for Process {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for Process {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Process {
    /// Polls the whole log file until a line satisfies `matches` and returns
    /// it, or `None` after `timeout`. For events the process logs around the
    /// time a test observes their effect, when the order is not guaranteed.
    pub async fn wait_for_log_line(
        &self,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(line) = self.full_log().lines().find(|l| matches(l)) {
                return Some(line.to_string());
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(LOG_POLL_INTERVAL).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- last {PANIC_TAIL_LINES} lines of the {} log ({}) ---\n{}\n--- end of log ---",
                self.name(),
                self.log_path().display(),
                tail(&self.full_log(), PANIC_TAIL_LINES)
            );
        }
    }
}
