//! The demo's child processes: starting them, waiting until they are ready,
//! stopping them, and cleaning up after a run that was killed hard.
//!
//! Each child runs in a process group of its own, so a Ctrl-C in the
//! terminal reaches only `shelfctl demo`, which then stops the children in
//! order (agents first, then the coordinator): SIGTERM, a bounded wait, then
//! SIGKILL. Their stdout and stderr are appended to a log file per process.
//!
//! `demo.pid` lists the demo's own pid and every child's, rewritten whenever
//! a child starts and removed after a clean stop. When `shelfctl demo` is
//! killed hard its children keep running (they hold the data directories'
//! locks); the next run reads the pid file and stops them first. A pid is
//! only signalled after `/proc/PID/exe` shows it still runs the binary named
//! in the file and its command line mentions the demo directory, so a pid
//! the OS has since given to another program is left alone.
//!
//! Spawning, readiness, signals and kill-on-drop are the shared launcher's
//! ([`shelfsync_runtime::launcher`], which the end-to-end tests use too);
//! this module adds the demo's roles, stop order and pid file.

use std::io;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::Context;
use shelfsync_runtime::launcher::{self, Child, LaunchError, Probe, Signal};
use tokio::time::Instant;

use super::layout::Layout;

/// The coordinator's binary.
pub const COORDINATOR_BINARY: &str = "shelfsync-coordinator";
/// The store agent's binary.
pub const AGENT_BINARY: &str = "shelfsync-agent";
/// How long a process may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a process may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a process may take to vanish after SIGKILL.
const KILL_TIMEOUT: Duration = Duration::from_secs(3);
/// Time between two looks at leftover processes.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Lines of log quoted when a process fails: as many as the launcher
/// quotes for a failed start.
pub const TAIL_LINES: usize = launcher::FAILURE_TAIL_LINES;
/// The binary name recorded for the demo itself.
const DEMO_BINARY: &str = "shelfctl";
/// Written in a child's log before each start.
const STARTER: &str = "shelfctl demo";

/// Where `binary` is: next to the running `shelfctl`, as cargo builds them.
pub fn binary(binary: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the running shelfctl executable")?;
    let dir = exe.parent().unwrap_or_else(|| Path::new("."));
    let path = dir.join(format!("{binary}{}", std::env::consts::EXE_SUFFIX));
    if !path.is_file() {
        anyhow::bail!(
            "{binary} not found at {}: the demo runs the binaries next to shelfctl; build them \
             with `cargo build --workspace --bins` (scripts/demo.sh does that first)",
            path.display()
        );
    }
    Ok(path)
}

/// What a child is, which decides its place in the stop order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The coordinator: stopped last, after the agents that talk to it.
    Coordinator,
    /// A store agent.
    Agent,
}

impl Role {
    fn binary(self) -> &'static str {
        match self {
            Role::Coordinator => COORDINATOR_BINARY,
            Role::Agent => AGENT_BINARY,
        }
    }
}

/// One child process with its output in a log file.
#[derive(Debug)]
pub struct Running {
    role: Role,
    child: Child,
}

impl Running {
    /// Starts `binary --config config` in `cwd`, in a process group of its
    /// own, stdin closed, stdout and stderr appended to `log`.
    pub fn spawn(
        name: &str,
        role: Role,
        binary: &Path,
        config: &Path,
        log: &Path,
        cwd: &Path,
    ) -> anyhow::Result<Self> {
        let mut command = launcher::service_command(binary, config);
        command.current_dir(cwd).process_group(0);
        let child = Child::spawn(STARTER, name, command, log)?;
        Ok(Running { role, child })
    }

    /// The name given at spawn (`coordinator` or a store id).
    pub fn name(&self) -> &str {
        self.child.name()
    }

    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        self.child.log_path()
    }

    /// The exit status once the child has ended (reaping it), `None` while it runs.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.exit_status()
    }

    /// Polls its readiness URL until it answers 200 while the child still
    /// runs, for at most [`READY_TIMEOUT`]. A child that fails stays in
    /// place (and in the pid file) for the caller to stop or discard.
    pub async fn wait_ready(
        &mut self,
        http: &reqwest::Client,
        url: &str,
    ) -> Result<(), LaunchError> {
        self.child
            .wait_ready(&Probe::http(http, url), READY_TIMEOUT)
            .await
    }

    /// The last `lines` lines this start of the process logged.
    pub fn log_tail(&self, lines: usize) -> String {
        self.child.log_tail(lines)
    }

    /// Why the process failed, with the tail of its log.
    pub fn failure(&self, problem: &str) -> anyhow::Error {
        anyhow::anyhow!(
            "{problem}; last lines of {}:\n{}",
            self.log_path().display(),
            self.log_tail(TAIL_LINES)
        )
    }
}

/// Every child of this run, recorded in the pid file. Dropping it kills
/// what still runs (SIGKILL), so an error or a panic leaves nothing behind.
#[derive(Debug)]
pub struct Children {
    running: Vec<Running>,
    pid_file: PathBuf,
    /// Whether the pid file is ours to rewrite and remove.
    claimed: bool,
}

impl Children {
    /// No children yet; nothing is written until [`Children::claim`].
    pub fn new(layout: &Layout) -> Self {
        Children {
            running: Vec::new(),
            pid_file: layout.pid_file(),
            claimed: false,
        }
    }

    /// Writes the pid file with this process's own pid, making the demo
    /// directory this run's (call it after [`stop_leftovers`]).
    pub fn claim(&mut self) -> anyhow::Result<()> {
        self.claimed = true;
        self.write_pid_file()
    }

    /// Adds a started child and records its pid.
    pub fn push(&mut self, running: Running) -> anyhow::Result<&mut Running> {
        self.running.push(running);
        self.write_pid_file()?;
        let last = self.running.len() - 1;
        Ok(&mut self.running[last])
    }

    /// Kills and forgets the child last added (a start that failed).
    pub fn discard_last(&mut self) -> anyhow::Result<()> {
        // Dropping it kills and reaps it.
        self.running.pop();
        self.write_pid_file()
    }

    /// The first child found to have exited, as an error with its log tail.
    pub fn exited(&mut self) -> Option<anyhow::Error> {
        self.exited_of(|_| true)
    }

    /// Like [`Children::exited`], for the coordinator only.
    pub fn coordinator_exited(&mut self) -> Option<anyhow::Error> {
        self.exited_of(|role| role == Role::Coordinator)
    }

    fn exited_of(&mut self, role: impl Fn(Role) -> bool) -> Option<anyhow::Error> {
        self.running
            .iter_mut()
            .filter(|running| role(running.role))
            .find_map(|running| {
                let status = running.exit_status()?;
                Some(running.failure(&format!("{} exited with {status}", running.name())))
            })
    }

    /// Stops every child: the agents first, then the coordinator, each
    /// group with SIGTERM, a bounded wait, and SIGKILL for what is left.
    /// Removes the pid file. Returns the names of children that needed SIGKILL.
    pub async fn stop(&mut self) -> Vec<String> {
        let mut killed = Vec::new();
        for role in [Role::Agent, Role::Coordinator] {
            let mut group: Vec<&mut Running> =
                self.running.iter_mut().filter(|r| r.role == role).collect();
            for running in &mut group {
                // Fails only when it was reaped already: nothing to stop.
                let _ = running.child.signal(Signal::Term);
            }
            let deadline = Instant::now() + STOP_TIMEOUT;
            for running in &mut group {
                let left = deadline.saturating_duration_since(Instant::now());
                if running.child.wait_exit(left).await.is_none() {
                    killed.push(running.name().to_string());
                    running.child.kill();
                }
            }
        }
        self.running.clear();
        self.remove_pid_file();
        self.claimed = false;
        killed
    }

    fn write_pid_file(&self) -> anyhow::Result<()> {
        if !self.claimed {
            return Ok(());
        }
        let mut text = String::from(
            "# shelfctl demo: its own pid and its children's; a new run stops leftovers listed here\n",
        );
        text.push_str(&format!("{} {DEMO_BINARY}\n", std::process::id()));
        for running in &self.running {
            text.push_str(&format!("{} {}\n", running.pid(), running.role.binary()));
        }
        std::fs::write(&self.pid_file, text)
            .with_context(|| format!("cannot write {}", self.pid_file.display()))
    }

    fn remove_pid_file(&self) {
        if !self.claimed {
            return;
        }
        match std::fs::remove_file(&self.pid_file) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => eprintln!("warning: cannot remove {}: {err}", self.pid_file.display()),
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        // Dropping a child kills and reaps it, before the pid file goes.
        self.running.clear();
        self.remove_pid_file();
    }
}

/// One line of a pid file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PidEntry {
    /// The process id.
    pub pid: u32,
    /// The binary it was started from (`shelfctl`, `shelfsync-coordinator`, `shelfsync-agent`).
    pub binary: String,
}

/// Reads a pid file; a missing file is an empty list, and lines that do not
/// parse are skipped (the file is only a hint for cleanup).
pub fn read_pid_file(path: &Path) -> anyhow::Result<Vec<PidEntry>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
    };
    Ok(parse_pid_file(&text))
}

fn parse_pid_file(text: &str) -> Vec<PidEntry> {
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let pid = fields.next()?.parse().ok()?;
            let binary = fields.next()?.to_string();
            Some(PidEntry { pid, binary })
        })
        .collect()
}

/// Stops the processes a previous run left behind (it was killed hard) and
/// removes its pid file. Returns how many were stopped.
///
/// # Errors
/// When the previous demo itself still runs (two demos cannot share a
/// directory), or a leftover survives SIGKILL.
pub async fn stop_leftovers(layout: &Layout) -> anyhow::Result<usize> {
    let path = layout.pid_file();
    let entries = read_pid_file(&path)?;
    let dir = layout.dir().to_string_lossy().into_owned();
    let own = std::process::id();
    if let Some(demo) = entries
        .iter()
        .find(|e| e.binary == DEMO_BINARY && e.pid != own && runs(e.pid, DEMO_BINARY, "demo"))
    {
        anyhow::bail!(
            "another shelfctl demo (pid {}) is running in {}; stop it first (Ctrl-C in its \
             terminal, or `kill {}`)",
            demo.pid,
            layout.dir().display(),
            demo.pid
        );
    }
    let leftovers: Vec<&PidEntry> = entries
        .iter()
        .filter(|e| e.binary != DEMO_BINARY && runs(e.pid, &e.binary, &dir))
        .collect();
    // Signals fail only for a process that is gone (or not ours): nothing
    // to stop then.
    for entry in &leftovers {
        let _ = launcher::send_signal(entry.pid, Signal::Term);
    }
    let still_running = |leftovers: &[&PidEntry]| -> Vec<u32> {
        leftovers
            .iter()
            .filter(|e| runs(e.pid, &e.binary, &dir))
            .map(|e| e.pid)
            .collect()
    };
    let mut left = wait_gone(STOP_TIMEOUT, || still_running(&leftovers)).await;
    if !left.is_empty() {
        for pid in &left {
            let _ = launcher::send_signal(*pid, Signal::Kill);
        }
        left = wait_gone(KILL_TIMEOUT, || still_running(&leftovers)).await;
    }
    if !left.is_empty() {
        anyhow::bail!(
            "processes {left:?} of an earlier demo in {} survived SIGKILL",
            layout.dir().display()
        );
    }
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("cannot remove {}", path.display())),
    }
    Ok(leftovers.len())
}

/// Polls `running` until it is empty or `timeout` passes; returns what is left.
async fn wait_gone(timeout: Duration, running: impl Fn() -> Vec<u32>) -> Vec<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = running();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Whether `pid` runs `binary` (by `/proc/PID/exe`, a rebuilt binary
/// included) with an argument containing `marker`. A zombie, a vanished
/// process or someone else's process is not.
pub fn runs(pid: u32, binary: &str, marker: &str) -> bool {
    let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
        return false;
    };
    let Some(name) = exe.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return false;
    };
    if name.strip_suffix(" (deleted)").unwrap_or(&name) != binary {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    cmdline
        .split(|b| *b == 0)
        .skip(1)
        .any(|arg| String::from_utf8_lossy(arg).contains(marker))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_files_skip_comments_and_junk() {
        let text =
            "# comment\n12 shelfctl\n13 shelfsync-coordinator\nx y\n14\n\n15 shelfsync-agent\n";
        let entries = parse_pid_file(text);
        let pids: Vec<(u32, &str)> = entries.iter().map(|e| (e.pid, e.binary.as_str())).collect();
        assert_eq!(
            pids,
            [
                (12, "shelfctl"),
                (13, "shelfsync-coordinator"),
                (15, "shelfsync-agent")
            ]
        );
    }

    #[test]
    fn only_our_binary_with_the_marker_counts_as_running() {
        let own = std::process::id();
        let exe = std::env::current_exe().unwrap();
        let name = exe.file_name().unwrap().to_string_lossy().into_owned();
        // The test binary runs with no argument naming a demo dir.
        assert!(!runs(own, &name, "/no/such/demo/dir"));
        assert!(!runs(own, "shelfsync-agent", ""));
        assert!(!runs(u32::MAX, &name, ""));
    }

    #[tokio::test]
    async fn a_child_is_stopped_with_sigterm_and_the_pid_file_goes() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = Layout::create(tmp.path()).unwrap();
        let mut children = Children::new(&layout);
        children.claim().unwrap();
        // A stand-in for a service: a script that ignores `--config FILE` and waits.
        let script = layout.dir().join("wait.sh");
        std::fs::write(&script, "#!/bin/sh\nexec sleep 30\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let running = Running::spawn(
            "store-1",
            Role::Agent,
            &script,
            Path::new("x.toml"),
            &layout.log("store-1"),
            layout.dir(),
        )
        .unwrap();
        let pid = running.pid();
        children.push(running).unwrap();
        let entries = read_pid_file(&layout.pid_file()).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].pid, std::process::id());
        assert_eq!(
            entries[1],
            PidEntry {
                pid,
                binary: AGENT_BINARY.into()
            }
        );
        assert!(children.exited().is_none());
        let killed = children.stop().await;
        assert!(killed.is_empty(), "SIGTERM was enough: {killed:?}");
        assert!(!layout.pid_file().exists());
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
        let log = std::fs::read_to_string(layout.log("store-1")).unwrap();
        assert!(
            log.starts_with("=== shelfctl demo: starting store-1"),
            "{log}"
        );
    }
}
