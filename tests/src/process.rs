//! One child process of a test, with its output in a log file.
//!
//! stdout and stderr both go to one log file, opened for appending so that a
//! restarted process keeps adding to the same file; each start writes a
//! marker line first. The child is killed with SIGKILL and reaped when the
//! [`Process`] is dropped, so a failing test never leaves a process behind,
//! and if the test is panicking the tail of the log is printed, which is
//! usually the first thing one wants to see.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context;

/// Lines of log printed when a test panics.
const PANIC_TAIL_LINES: usize = 60;
/// Time between two looks at the log in [`Process::wait_for_log_line`].
const LOG_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// A running (or finished) child process.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Option<Child>,
    exit: Option<ExitStatus>,
    log_path: PathBuf,
    log_start: u64,
}

impl Process {
    /// Starts `command` with stdin closed and stdout/stderr appended to
    /// `log_path`. `name` is used in messages.
    pub fn spawn(name: &str, mut command: Command, log_path: &Path) -> anyhow::Result<Self> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("cannot open log file {}", log_path.display()))?;
        writeln!(log, "=== shelfsync-tests: starting {name}: {command:?}")
            .with_context(|| format!("cannot write to {}", log_path.display()))?;
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let stderr = log
            .try_clone()
            .with_context(|| format!("cannot share log file {}", log_path.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr));
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {name}: {command:?}"))?;
        Ok(Process {
            name: name.to_string(),
            child: Some(child),
            exit: None,
            log_path: log_path.to_path_buf(),
            log_start,
        })
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The OS process id, while the child has not been reaped.
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The exit status if the child has ended (reaping it), `None` while it runs.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if let Some(child) = &mut self.child
            && let Ok(Some(status)) = child.try_wait()
        {
            self.exit = Some(status);
            self.child = None;
        }
        self.exit
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        self.exit_status().is_none()
    }

    /// Kills the child with SIGKILL (what `Child::kill` sends on Unix) and
    /// waits for it, so its sockets and file locks are released on return.
    /// Returns the exit status; a no-op when it already ended.
    pub fn kill9(&mut self) -> Option<ExitStatus> {
        if let Some(mut child) = self.child.take() {
            // Fails only when the child already exited; wait() reaps it either way.
            let _ = child.kill();
            self.exit = child.wait().ok();
        }
        self.exit
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything this start of the process has written so far (a restarted
    /// process is a new [`Process`]; see [`Process::full_log`] for the file).
    pub fn log(&self) -> String {
        read_from(&self.log_path, self.log_start)
    }

    /// The whole log file, earlier starts included.
    pub fn full_log(&self) -> String {
        read_from(&self.log_path, 0)
    }

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

    /// The last `lines` lines of the whole log file.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.full_log(), lines)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "--- last {PANIC_TAIL_LINES} lines of the {} log ({}) ---\n{}\n--- end of log ---",
                self.name,
                self.log_path.display(),
                self.log_tail(PANIC_TAIL_LINES)
            );
        }
    }
}

fn read_from(path: &Path, offset: u64) -> String {
    let mut text = Vec::new();
    let read = File::open(path).and_then(|mut file| {
        file.seek(SeekFrom::Start(offset))?;
        file.read_to_end(&mut text)
    });
    match read {
        Ok(_) => String::from_utf8_lossy(&text).into_owned(),
        Err(err) => format!("<cannot read {}: {err}>", path.display()),
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
