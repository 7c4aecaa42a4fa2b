//! Running shelfsync's service binaries as child processes: the one
//! launcher behind the end-to-end tests (`tests/`) and `shelfctl demo`.
//!
//! A [`Child`] is one start of a binary. Its stdout and stderr are appended
//! to one log file, so a restarted process keeps adding to the same file;
//! each start writes a marker line first, and [`Child::log`] reads from
//! there. [`Child::wait_ready`] polls a [`Probe`] (a URL that must answer
//! 200, or a TCP port that must accept) with a deadline and looks at the
//! child after each answer as well as before, so a 200 from a process on its
//! way out (or from another socket on a port the child lost) is not taken
//! for readiness. A failed start says why with the tail of the log, and
//! [`LaunchError::is_addr_in_use`] tells the caller when the child exited
//! because an address was taken, which fresh ports should cure.
//!
//! Signals go through `rustix` (the workspace forbids `unsafe`, so no libc,
//! and no `kill` subprocess either). A [`Child`] is signalled only until it
//! is reaped, so its pid cannot have passed to another process meanwhile;
//! [`send_signal`] is for processes that are not our children (a demo's
//! leftovers), whose identity the caller checks first. SIGKILL and reaping go
//! through [`std::process::Child`], and a dropped [`Child`] is killed and
//! reaped, so an error or a panic leaves no process behind.
//!
//! Nothing here sleeps to synchronize: readiness and exits are polled every
//! [`POLL_INTERVAL`] until a deadline. Choosing ports, writing configs and
//! retrying on fresh ports stay with the callers, which know their configs.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use tokio::time::Instant;

/// Time between two looks at a child or at its readiness.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long one readiness probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Lines of log quoted in a start failure.
pub const FAILURE_TAIL_LINES: usize = 40;

/// `binary --config config`, the command line of every shelfsync service,
/// with `SHELFSYNC_CONFIG` removed from the environment (the file named is
/// the only config in play) and `NO_COLOR=1` (the log is a file: no colour
/// codes in it). The caller adds the rest (working directory, environment).
pub fn service_command(binary: &Path, config: &Path) -> Command {
    let mut command = Command::new(binary);
    command
        .arg("--config")
        .arg(config)
        .env_remove("SHELFSYNC_CONFIG")
        .env("NO_COLOR", "1");
    command
}

/// A signal the launcher sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: stop, flushing what it holds.
    Term,
    /// SIGKILL: stop at once, no flush.
    Kill,
    /// SIGSTOP: pause (it cannot be caught or ignored).
    Stop,
    /// SIGCONT: go on after a SIGSTOP.
    Cont,
    /// SIGHUP: the coordinator reloads its store registry.
    Hup,
}

impl Signal {
    fn raw(self) -> rustix::process::Signal {
        match self {
            Signal::Term => rustix::process::Signal::TERM,
            Signal::Kill => rustix::process::Signal::KILL,
            Signal::Stop => rustix::process::Signal::STOP,
            Signal::Cont => rustix::process::Signal::CONT,
            Signal::Hup => rustix::process::Signal::HUP,
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Signal::Term => "SIGTERM",
            Signal::Kill => "SIGKILL",
            Signal::Stop => "SIGSTOP",
            Signal::Cont => "SIGCONT",
            Signal::Hup => "SIGHUP",
        })
    }
}

/// Sends `signal` to the process `pid`, which need not be a child of ours:
/// the caller checks it is still the process it means (a pid is reused once
/// its process was reaped). A [`Child`] has [`Child::signal`].
///
/// # Errors
/// When the process is gone or not ours to signal, or `pid` is no process id
/// (0, or above `i32::MAX`: `kill(2)` would take those for process groups).
pub fn send_signal(pid: u32, signal: Signal) -> io::Result<()> {
    let Some(target) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{pid} is not a process id"),
        ));
    };
    rustix::process::kill_process(target, signal.raw()).map_err(io::Error::from)
}

/// What shows that a child is ready.
#[derive(Debug, Clone)]
pub enum Probe {
    /// `GET url` answers 200 (a service's `/readyz` or `/healthz`).
    Http {
        /// The client that asks; it should use no proxy, so that 127.0.0.1
        /// is never routed elsewhere.
        client: reqwest::Client,
        /// The URL.
        url: String,
    },
    /// A TCP connection to the address is accepted.
    Tcp(SocketAddr),
}

impl Probe {
    /// `GET url` with `client` must answer 200.
    pub fn http(client: &reqwest::Client, url: impl Into<String>) -> Self {
        Probe::Http {
            client: client.clone(),
            url: url.into(),
        }
    }

    /// One look, bounded by [`PROBE_TIMEOUT`].
    async fn succeeds(&self) -> bool {
        match self {
            Probe::Http { client, url } => matches!(
                client.get(url).timeout(PROBE_TIMEOUT).send().await,
                Ok(response) if response.status() == reqwest::StatusCode::OK
            ),
            Probe::Tcp(addr) => matches!(
                tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await,
                Ok(Ok(_))
            ),
        }
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Probe::Http { url, .. } => f.write_str(url),
            Probe::Tcp(addr) => write!(f, "tcp://{addr}"),
        }
    }
}

/// Why a child could not be started, or did not become ready.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The log file could not be opened or written.
    #[error("cannot write the log file {}", .path.display())]
    Log {
        /// The log file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The binary could not be started.
    #[error("cannot start {name}: {command}")]
    Spawn {
        /// The name given to the child.
        name: String,
        /// The command line.
        command: String,
        /// Why.
        source: io::Error,
    },
    /// The child exited before it was ready.
    #[error(
        "{name} exited with {status} before it was ready; last lines of {}:\n{tail}",
        .log.display()
    )]
    Exited {
        /// The name given to the child.
        name: String,
        /// How it ended.
        status: ExitStatus,
        /// Its log file.
        log: PathBuf,
        /// The last [`FAILURE_TAIL_LINES`] lines this start logged.
        tail: String,
        /// Whether its log says an address was already in use.
        addr_in_use: bool,
    },
    /// The child ran but was not ready within the timeout.
    #[error(
        "{name} was not ready at {probe} within {timeout:?}; last lines of {}:\n{tail}",
        .log.display()
    )]
    NotReady {
        /// The name given to the child.
        name: String,
        /// What was polled.
        probe: String,
        /// How long it was polled.
        timeout: Duration,
        /// Its log file.
        log: PathBuf,
        /// The last [`FAILURE_TAIL_LINES`] lines this start logged.
        tail: String,
    },
}

impl LaunchError {
    /// Whether the child exited because one of its addresses was already
    /// in use: starting it again on other ports should help.
    pub fn is_addr_in_use(&self) -> bool {
        matches!(
            self,
            LaunchError::Exited {
                addr_in_use: true,
                ..
            }
        )
    }
}

/// One start of a binary, with its output in a log file; killed (SIGKILL)
/// and reaped when dropped.
#[derive(Debug)]
pub struct Child {
    name: String,
    pid: u32,
    /// `None` once reaped.
    child: Option<std::process::Child>,
    exit: Option<ExitStatus>,
    log_path: PathBuf,
    /// Where this start's output begins in the log file.
    log_start: u64,
}

impl Child {
    /// Starts `command` with stdin closed and stdout and stderr appended to
    /// `log_path`, after a line `=== {starter}: starting {name}: {command}`.
    /// `starter` says who started it (`shelfctl demo`), `name` is the child's
    /// name in messages.
    pub fn spawn(
        starter: &str,
        name: &str,
        mut command: Command,
        log_path: &Path,
    ) -> Result<Self, LaunchError> {
        let log_error = |source| LaunchError::Log {
            path: log_path.to_path_buf(),
            source,
        };
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .map_err(log_error)?;
        writeln!(log, "=== {starter}: starting {name}: {command:?}").map_err(log_error)?;
        let log_start = log.metadata().map_err(log_error)?.len();
        let stderr = log.try_clone().map_err(log_error)?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr));
        let child = command.spawn().map_err(|source| LaunchError::Spawn {
            name: name.to_string(),
            command: format!("{command:?}"),
            source,
        })?;
        Ok(Child {
            name: name.to_string(),
            pid: child.id(),
            child: Some(child),
            exit: None,
            log_path: log_path.to_path_buf(),
            log_start,
        })
    }

    /// [`Child::spawn`], then [`Child::wait_ready`]; a child that does not
    /// become ready is killed.
    pub async fn spawn_ready(
        starter: &str,
        name: &str,
        command: Command,
        log_path: &Path,
        probe: &Probe,
        timeout: Duration,
    ) -> Result<Self, LaunchError> {
        let mut child = Child::spawn(starter, name, command, log_path)?;
        child.wait_ready(probe, timeout).await?;
        Ok(child)
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id it was started with, kept after it was reaped (for
    /// messages and pid files; see [`Child::live_pid`] for signals).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The process id while the child has not been reaped, when it is
    /// surely still ours (running, or a zombie).
    pub fn live_pid(&self) -> Option<u32> {
        self.child.as_ref().map(|_| self.pid)
    }

    /// The exit status once the child has ended (reaping it), `None` while
    /// it runs.
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

    /// Sends `signal` to the child, unless it has been reaped.
    ///
    /// # Errors
    /// When it was reaped already (its pid may belong to another process by
    /// now), or the signal could not be sent.
    pub fn signal(&self, signal: Signal) -> io::Result<()> {
        match self.live_pid() {
            Some(pid) => send_signal(pid, signal),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} has exited", self.name),
            )),
        }
    }

    /// Kills the child with SIGKILL (what [`std::process::Child::kill`]
    /// sends on Unix) and waits for it, so its sockets and file locks are
    /// released on return. Returns the exit status; a no-op when it already
    /// ended.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if let Some(mut child) = self.child.take() {
            // Fails only when the child already exited; wait() reaps it either way.
            let _ = child.kill();
            self.exit = child.wait().ok();
        }
        self.exit
    }

    /// Polls until the child exits, for at most `timeout`. Returns its exit
    /// status, or `None` when it still runs.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Polls `probe` until it succeeds while the child runs, for at most
    /// `timeout`. A child that is still running when this fails is left
    /// running.
    ///
    /// # Errors
    /// [`LaunchError::Exited`] when the child exits first (also when it exits
    /// right after the probe succeeded), [`LaunchError::NotReady`] when
    /// `timeout` passes; both quote the tail of this start's log.
    pub async fn wait_ready(
        &mut self,
        probe: &Probe,
        timeout: Duration,
    ) -> Result<(), LaunchError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return Err(self.exited_early(status));
            }
            let ready = probe.succeeds().await;
            if let Some(status) = self.exit_status() {
                return Err(self.exited_early(status));
            }
            if ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(LaunchError::NotReady {
                    name: self.name.clone(),
                    probe: probe.to_string(),
                    timeout,
                    log: self.log_path.clone(),
                    tail: self.log_tail(FAILURE_TAIL_LINES),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    fn exited_early(&self, status: ExitStatus) -> LaunchError {
        let log = self.log();
        LaunchError::Exited {
            name: self.name.clone(),
            status,
            log: self.log_path.clone(),
            tail: tail(&log, FAILURE_TAIL_LINES),
            addr_in_use: is_addr_in_use(&log),
        }
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything this start has written so far (see [`Child::full_log`]
    /// for the whole file).
    pub fn log(&self) -> String {
        read_from(&self.log_path, self.log_start)
    }

    /// The whole log file, earlier starts included.
    pub fn full_log(&self) -> String {
        read_from(&self.log_path, 0)
    }

    /// The last `lines` lines this start has written.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log(), lines)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a process log reports a failed bind because the address was taken.
pub fn is_addr_in_use(log: &str) -> bool {
    let log = log.to_ascii_lowercase();
    log.contains("address already in use") || log.contains("addrinuse")
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The file from `offset` on, or a note saying why it cannot be read (this
/// is read for messages, which should not fail for it).
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

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, TcpListener};
    use std::os::unix::process::ExitStatusExt as _;

    use super::*;

    const SHORT: Duration = Duration::from_millis(300);
    const LONG: Duration = Duration::from_secs(10);

    fn sh(script: &str) -> Command {
        let mut command = Command::new("sh");
        command.arg("-c").arg(script);
        command
    }

    fn listener() -> (TcpListener, Probe) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let probe = Probe::Tcp(listener.local_addr().unwrap());
        (listener, probe)
    }

    /// A probe of a port that was free a moment ago: nothing listens there.
    fn unanswered() -> Probe {
        listener().1
    }

    /// Polls the state letter of `/proc/PID/stat` until it is `state`.
    async fn wait_for_state(pid: u32, state: char) {
        let deadline = Instant::now() + LONG;
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            // `pid (comm) S ...`: the state follows the last parenthesis.
            let seen = stat[stat.rfind(')').unwrap() + 1..]
                .trim_start()
                .chars()
                .next();
            if seen == Some(state) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{pid} is in state {seen:?}, not {state}"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    fn gone(pid: u32) -> bool {
        !Path::new(&format!("/proc/{pid}")).exists()
    }

    #[test]
    fn recognises_the_bind_failure_of_both_listeners() {
        assert!(is_addr_in_use(
            "error: cannot listen on 127.0.0.1:7400 (QUIC): Address already in use (os error 98)"
        ));
        assert!(!is_addr_in_use("error: invalid config"));
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }

    #[tokio::test]
    async fn each_start_appends_after_a_marker_and_reads_its_own_part() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("child.log");
        for word in ["first", "second"] {
            let mut child =
                Child::spawn("unit test", word, sh(&format!("echo {word}")), &log).unwrap();
            assert!(child.wait_exit(LONG).await.unwrap().success());
            assert_eq!(child.log(), format!("{word}\n"));
        }
        let child = Child::spawn("unit test", "third", sh("true"), &log).unwrap();
        let full = child.full_log();
        assert!(
            full.starts_with("=== unit test: starting first: "),
            "{full}"
        );
        assert!(full.contains("\nfirst\n=== unit test: starting second: "));
        assert!(full.contains("\nsecond\n=== unit test: starting third: "));
    }

    #[tokio::test]
    async fn ready_once_the_probe_succeeds_then_stopped_by_sigterm() {
        let dir = tempfile::tempdir().unwrap();
        let (_listener, probe) = listener();
        let mut child = Child::spawn_ready(
            "unit test",
            "sleeper",
            sh("exec sleep 30"),
            &dir.path().join("log"),
            &probe,
            LONG,
        )
        .await
        .unwrap();
        assert!(child.is_running());
        child.signal(Signal::Stop).unwrap();
        wait_for_state(child.pid(), 'T').await;
        child.signal(Signal::Cont).unwrap();
        wait_for_state(child.pid(), 'S').await;
        assert!(
            child.wait_exit(SHORT).await.is_none(),
            "it should still run"
        );
        child.signal(Signal::Term).unwrap();
        let status = child.wait_exit(LONG).await.unwrap();
        assert_eq!(status.signal(), Some(15), "{status}");
        assert_eq!(child.live_pid(), None);
        assert!(
            child.signal(Signal::Term).is_err(),
            "a reaped child is not signalled"
        );
    }

    #[tokio::test]
    async fn an_early_exit_is_reported_with_the_log_and_classified() {
        let dir = tempfile::tempdir().unwrap();
        let probe = unanswered();
        let script = "echo 'cannot listen: Address already in use (os error 98)'; exit 3";
        let err = Child::spawn_ready(
            "unit test",
            "loser",
            sh(script),
            &dir.path().join("log"),
            &probe,
            LONG,
        )
        .await
        .unwrap_err();
        assert!(err.is_addr_in_use(), "{err}");
        let message = err.to_string();
        assert!(
            message.starts_with("loser exited with exit status: 3 before it was ready"),
            "{message}"
        );
        assert!(
            message.ends_with("Address already in use (os error 98)"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn not_ready_in_time_leaves_it_running_and_drop_kills_it() {
        let dir = tempfile::tempdir().unwrap();
        let probe = unanswered();
        let mut child = Child::spawn(
            "unit test",
            "silent",
            sh("exec sleep 30"),
            &dir.path().join("log"),
        )
        .unwrap();
        let err = child.wait_ready(&probe, SHORT).await.unwrap_err();
        assert!(matches!(err, LaunchError::NotReady { .. }), "{err}");
        assert!(!err.is_addr_in_use());
        assert!(child.is_running());
        let pid = child.pid();
        drop(child);
        assert!(gone(pid), "killed and reaped, not a zombie");
    }

    #[test]
    fn pids_that_name_process_groups_are_refused() {
        for pid in [0, u32::MAX] {
            let err = send_signal(pid, Signal::Term).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
    }

    #[test]
    fn a_missing_binary_fails_to_spawn() {
        let dir = tempfile::tempdir().unwrap();
        let command = service_command(Path::new("/no/such/binary"), Path::new("x.toml"));
        let err = Child::spawn("unit test", "ghost", command, &dir.path().join("log")).unwrap_err();
        assert!(matches!(err, LaunchError::Spawn { .. }), "{err}");
    }
}
