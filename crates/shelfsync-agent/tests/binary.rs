//! The `shelfsync-agent` binary's start-up errors: a config that cannot be
//! used stops the agent at once with exit code 2 and a message naming the
//! file and the problem, before anything listens or opens the replica.
//!
//! (These tests also make `cargo test --workspace` build the agent binary,
//! which the end-to-end tests in `tests/` and `shelfctl demo` run.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

fn agent(config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shelfsync-agent"))
        .arg("--config")
        .arg(config)
        .env_remove("SHELFSYNC_CONFIG")
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

const VALID: &str = r#"
store_id = "store-1"
coordinator = "127.0.0.1:7400"
data_dir = "DATA_DIR"
http_listen = "127.0.0.1:0"
sync_interval = "5s"
locations = ["store-1"]
[tls]
ca_cert = "ca.pem"
cert = "store-1.pem"
key = "store-1.key"
"#;

#[test]
fn a_missing_config_file_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nowhere.toml");
    let out = agent(&path);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&path.display().to_string()),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_unknown_key_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    let data = dir.path().join("data");
    let valid = VALID.replace("DATA_DIR", &data.display().to_string());
    std::fs::write(&path, format!("sync_intervall = \"5s\"\n{valid}")).unwrap();
    let out = agent(&path);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("sync_intervall"), "{}", stderr(&out));
    assert!(
        !data.exists(),
        "the replica was opened for a config that is refused"
    );
}
