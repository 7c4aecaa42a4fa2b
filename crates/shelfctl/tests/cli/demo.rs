//! `shelfctl demo` end to end, with the real coordinator and agent binaries:
//! it gets ready and prints working URLs, Ctrl-C stops every process it
//! started and exits 0, a second run in the same directory gets ready again,
//! and a run after one that was killed hard first stops the leftovers.
//!
//! The coordinator and agent binaries must sit next to shelfctl (as
//! `cargo test --workspace` or `cargo build --workspace --bins` leave them).
//! [`Demo`] kills the demo and every process in its pid file when dropped,
//! so a failing test leaves nothing running.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use shelfctl::demo::processes::{AGENT_BINARY, COORDINATOR_BINARY, read_pid_file, runs};
use shelfctl::demo::{BANNER_END, READY_LINE};

use crate::text;

/// How long a run may take to print its banner (cold sled, busy CI).
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a run may take to exit after SIGINT.
const STOP_TIMEOUT: Duration = Duration::from_secs(40);

/// Fails clearly when the other binaries were not built.
fn require_binaries() {
    let shelfctl = PathBuf::from(env!("CARGO_BIN_EXE_shelfctl"));
    let dir = shelfctl.parent().unwrap();
    for name in [COORDINATOR_BINARY, AGENT_BINARY] {
        let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
        assert!(
            path.is_file(),
            "{name} not found at {}: `shelfctl demo` runs the binaries next to shelfctl; run \
             `cargo build --workspace --bins` (or `cargo test --workspace`, which builds them) first",
            path.display()
        );
    }
}

/// One `shelfctl demo` run with its stdout read line by line.
struct Demo {
    child: Child,
    dir: PathBuf,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: PathBuf,
}

impl Demo {
    fn start(dir: &Path, stores: u32, run: u32) -> Demo {
        let stderr = dir.with_file_name(format!("demo-run-{run}.stderr"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_shelfctl"))
            .args(["demo", "--dir"])
            .arg(dir)
            .args(["--stores", &stores.to_string()])
            .env_remove("SHELFCTL_CONFIG")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(File::create(&stderr).unwrap()))
            .spawn()
            .expect("run shelfctl demo");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        // Drains stdout for the whole run, so the demo never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Demo {
            child,
            dir: dir.to_path_buf(),
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the run printed so far, and its stderr.
    fn output(&self) -> String {
        let stderr = std::fs::read(&self.stderr).unwrap_or_default();
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.seen.join("\n"),
            text(&stderr)
        )
    }

    /// Reads lines until the banner's last one and returns the banner.
    fn wait_ready(&mut self) -> Vec<String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let end = line == BANNER_END;
                    self.seen.push(line);
                    if end {
                        assert!(
                            self.seen.iter().any(|l| l == READY_LINE),
                            "{}",
                            self.output()
                        );
                        return self.seen.clone();
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("no banner within {READY_TIMEOUT:?}\n{}", self.output())
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    panic!(
                        "shelfctl demo ended ({status:?}) before it was ready\n{}",
                        self.output()
                    )
                }
            }
        }
    }

    /// Sends SIGINT and waits (bounded) for the exit.
    fn interrupt(&mut self) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-s", "INT", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "shelfctl demo still runs {STOP_TIMEOUT:?} after SIGINT\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, like an OOM killer or `kill -9`: the children are left running.
    fn kill_hard(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Whatever the pid file still lists (a run killed hard, or a failed
        // stop) is killed too, if it still runs our binary for this dir.
        let marker = self.dir.to_string_lossy().into_owned();
        for entry in read_pid_file(&self.dir.join("demo.pid")).unwrap_or_default() {
            if entry.binary != "shelfctl" && runs(entry.pid, &entry.binary, &marker) {
                let _ = Command::new("kill")
                    .args(["-s", "KILL", &entry.pid.to_string()])
                    .status();
            }
        }
        if std::thread::panicking() {
            eprintln!("--- shelfctl demo output ---\n{}", self.output());
        }
    }
}

/// The children listed in the pid file (the demo's own pid left out).
fn child_pids(dir: &Path) -> Vec<(u32, String)> {
    read_pid_file(&dir.join("demo.pid"))
        .unwrap()
        .into_iter()
        .filter(|e| e.binary != "shelfctl")
        .map(|e| (e.pid, e.binary))
        .collect()
}

/// Whether any of `pids` still runs its binary for the demo in `dir`.
fn running(dir: &Path, pids: &[(u32, String)]) -> Vec<u32> {
    let marker = dir.to_string_lossy().into_owned();
    pids.iter()
        .filter(|(pid, binary)| runs(*pid, binary, &marker))
        .map(|(pid, _)| *pid)
        .collect()
}

/// The item URL of the first `curl -s URL` line of the banner.
fn item_url(banner: &[String]) -> String {
    banner
        .iter()
        .find_map(|line| line.trim().strip_prefix("curl -s http://"))
        .filter(|rest| rest.contains("/v1/items/"))
        .map(|rest| format!("http://{rest}"))
        .unwrap_or_else(|| panic!("no item curl line in {banner:#?}"))
}

/// GETs `url` and returns the status and the JSON body.
fn get_json(url: &str) -> (u16, Value) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let response = client.get(url).send().await.unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        (status, json)
    })
}

fn assert_serves_the_item(banner: &[String]) {
    let url = item_url(banner);
    let (status, item) = get_json(&url);
    assert_eq!(status, 200, "GET {url}: {item}");
    assert_eq!(item["location"], "store-1", "{item}");
    assert_eq!(item["sku"], "milk-1l", "{item}");
    for field in ["name", "quantity", "reserved", "available", "version"] {
        assert!(!item[field].is_null(), "{field} in {item}");
    }
}

#[test]
fn demo_starts_stops_cleanly_and_recovers_from_a_hard_kill() {
    require_binaries();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");

    // First run: certificates are made, everything gets ready and serves.
    let mut first = Demo::start(&dir, 2, 1);
    let banner = first.wait_ready();
    assert!(
        banner
            .iter()
            .any(|l| l.starts_with("certificates: created")),
        "{banner:#?}"
    );
    assert_serves_the_item(&banner);
    let pids = child_pids(&dir);
    assert_eq!(pids.len(), 3, "coordinator and two agents: {pids:?}");
    assert_eq!(running(&dir, &pids).len(), 3, "{pids:?}");
    let status = first.interrupt();
    assert_eq!(status.code(), Some(0), "{}", first.output());
    assert_eq!(running(&dir, &pids), Vec::<u32>::new(), "children left");
    assert!(!dir.join("demo.pid").exists());
    drop(first);

    // Second run in the same dir: certificates and catalog are reused.
    let mut second = Demo::start(&dir, 2, 2);
    let banner = second.wait_ready();
    assert!(
        banner
            .iter()
            .any(|l| l.starts_with("certificates: reusing")),
        "{banner:#?}"
    );
    assert!(
        banner.iter().any(|l| l.contains(": 0 items created")),
        "{banner:#?}"
    );
    assert_serves_the_item(&banner);
    // Killed hard, it leaves its children running.
    let pids = child_pids(&dir);
    second.kill_hard();
    assert_eq!(running(&dir, &pids).len(), 3, "{pids:?}");

    // Third run: stops the leftovers first, then gets ready as usual.
    let mut third = Demo::start(&dir, 2, 3);
    let banner = third.wait_ready();
    assert!(
        banner
            .iter()
            .any(|l| l == "stopped 3 processes left over from an earlier run"),
        "{banner:#?}"
    );
    assert_eq!(running(&dir, &pids), Vec::<u32>::new(), "leftovers stopped");
    assert_serves_the_item(&banner);
    let pids = child_pids(&dir);
    let status = third.interrupt();
    assert_eq!(status.code(), Some(0), "{}", third.output());
    assert_eq!(running(&dir, &pids), Vec::<u32>::new(), "children left");
    assert!(!dir.join("demo.pid").exists());
    drop(second);
}
