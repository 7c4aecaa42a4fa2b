//! `shelfsync-loadgen redis` against a real `redis-server` (Debian's
//! package) on a free loopback port, durable as compare.sh runs it
//! (`appendonly yes`, `appendfsync always`), in a temp dir. Each test starts
//! its own server; a guard stops it when the test ends, panics included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::io::ErrorKind;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use shelfsync_loadgen::Measurement;
use shelfsync_loadgen::driver::PRELOAD_QUANTITY;
use shelfsync_loadgen::redis::{CHANGES_STREAM, item_key};

/// A `redis-server` child process, killed on drop.
struct Server {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let log = File::create(dir.path().join("redis.log")).unwrap();
        let spawned = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .arg("--dir")
            .arg(dir.path())
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--save", "", "--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(err) if err.kind() == ErrorKind::NotFound => panic!(
                "redis-server is not installed; these tests need it: \
                 apt-get install redis-server (Debian's package; .ci/run installs it)"
            ),
            Err(err) => panic!("cannot start redis-server: {err}"),
        };
        let mut server = Server { child, port, dir };
        server.wait_ready();
        server
    }

    /// Until the server answers PING (bounded), or fails with its log.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("redis-server exited with {status}:\n{}", self.log());
            }
            let pong = self
                .connection()
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if pong.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING within 20 s: {pong:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn connection(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(("127.0.0.1", self.port))?.get_connection()
    }

    fn query<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> T {
        cmd.query(&mut self.connection().unwrap()).unwrap()
    }

    fn field(&self, index: u64, field: &str) -> u64 {
        self.query(redis::cmd("HGET").arg(item_key(index)).arg(field))
    }

    fn changes(&self) -> u64 {
        self.query(redis::cmd("XLEN").arg(CHANGES_STREAM))
    }

    /// Runs `shelfsync-loadgen redis --addr ... --warmup 0s --json ARGS`
    /// and returns its one measurement. No warmup: every write the run
    /// makes is counted, so the server's state can be checked against it.
    fn loadgen(&self, args: &[&str]) -> Measurement {
        let out = loadgen(&[&["--addr", &self.addr(), "--warmup", "0s", "--json"], args].concat());
        assert!(out.status.success(), "{out:?}\n{}", self.log());
        let stdout = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 1, "one JSON line expected: {stdout}");
        serde_json::from_str(lines[0]).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn loadgen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shelfsync-loadgen"))
        .arg("redis")
        .args(args)
        .output()
        .unwrap()
}

/// Every write is accounted for exactly once, and none failed.
fn assert_adds_up(m: &Measurement, ops: u64) {
    assert_eq!(m.ops, ops, "{m:?}");
    assert_eq!(m.accepted + m.rejected_total() + m.errors, ops, "{m:?}");
    assert_eq!(m.errors, 0, "{m:?}");
    assert!(m.accepted > 0, "{m:?}");
}

#[test]
fn optimistic_writes_add_up_and_each_accepted_one_is_in_the_stream() {
    let server = Server::start();
    let m = server.loadgen(&[
        "--preload",
        "--ops",
        "200",
        "--clients",
        "4",
        "--keys",
        "10",
        "--workload",
        "optimistic",
    ]);
    assert_adds_up(&m, 200);
    assert_eq!((m.connections, m.in_flight, m.keys), (4, 1, 10), "{m:?}");
    assert_eq!(
        (m.workload.as_str(), m.distribution.as_str()),
        ("optimistic", "uniform")
    );
    assert!(
        m.rejected.keys().all(|reason| reason == "version_mismatch"),
        "{m:?}"
    );
    assert_eq!(server.changes(), m.accepted);
    // Every accepted add moved one version and one unit of one key.
    let versions: u64 = (0..10).map(|i| server.field(i, "version") - 1).sum();
    let added: u64 = (0..10)
        .map(|i| server.field(i, "quantity") - PRELOAD_QUANTITY)
        .sum();
    assert_eq!((versions, added), (m.accepted, m.accepted));
    assert!(
        m.p50_ms > 0.0 && m.p50_ms <= m.p99_ms && m.p99_ms <= m.max_ms,
        "{m:?}"
    );
}

#[test]
fn hot_key_writers_conflict_and_the_version_counts_the_accepted_ones() {
    let server = Server::start();
    let m = server.loadgen(&[
        "--preload",
        "--ops",
        "400",
        "--clients",
        "8",
        "--keys",
        "10",
        "--distribution",
        "hot",
    ]);
    assert_adds_up(&m, 400);
    // Eight writers reading then writing one key: some lose the race (how
    // many depends on timing, so only the sum is checked).
    eprintln!(
        "hot key: {} accepted, {:?} rejected",
        m.accepted, m.rejected
    );
    assert_eq!(server.field(0, "version"), 1 + m.accepted);
    assert_eq!(server.field(0, "quantity"), PRELOAD_QUANTITY + m.accepted);
    assert_eq!(server.changes(), m.accepted);
    assert_eq!(server.field(1, "version"), 1, "only the hot key is written");
}

#[test]
fn delta_removes_without_a_version_until_the_stock_runs_out() {
    let server = Server::start();
    let m = server.loadgen(&[
        "--preload",
        "--ops",
        "100",
        "--clients",
        "4",
        "--keys",
        "10",
        "--distribution",
        "hot",
        "--workload",
        "delta",
    ]);
    assert_adds_up(&m, 100);
    assert_eq!(m.accepted, 100, "a delta never conflicts: {m:?}");
    assert_eq!(server.field(0, "quantity"), PRELOAD_QUANTITY - 100);
    assert_eq!(server.field(0, "version"), 101);

    // Five units left, two of them reserved: three removes go through.
    let _: () = server.query(
        redis::cmd("HSET")
            .arg(item_key(0))
            .arg("quantity")
            .arg(5)
            .arg("reserved")
            .arg(2),
    );
    let m = server.loadgen(&[
        "--ops",
        "20",
        "--clients",
        "2",
        "--keys",
        "10",
        "--distribution",
        "hot",
        "--workload",
        "delta",
    ]);
    assert_adds_up(&m, 20);
    assert_eq!(m.accepted, 3, "{m:?}");
    assert_eq!(m.rejected.get("insufficient_stock"), Some(&17), "{m:?}");
    assert_eq!(server.field(0, "quantity"), 2);
}

#[test]
fn keys_that_were_never_preloaded_are_refused_as_not_found() {
    let server = Server::start();
    let m = server.loadgen(&["--ops", "10", "--clients", "2", "--keys", "5"]);
    assert_eq!(m.rejected.get("not_found"), Some(&10), "{m:?}");
    assert_eq!((m.accepted, m.errors), (0, 0), "{m:?}");
    assert_eq!(server.changes(), 0);
}

#[test]
fn a_server_that_is_not_there_is_an_error_not_a_panic() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let out = loadgen(&["--addr", &addr, "--ops", "5", "--warmup", "0s"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot connect to Redis at {addr}")),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    let out = loadgen(&["--addr", &addr, "--clients", "0"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--clients"));
}
