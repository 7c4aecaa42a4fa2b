//! Runs the built `shelfctl` binary for `certs init` and `certs issue` and
//! checks its output, exit codes and error messages.

use std::path::Path;
use std::process::Output;

use crate::{shelfctl, text};

fn init(out: &Path, extra: &[&str]) -> Output {
    let out = out.to_str().unwrap();
    let mut args = vec![
        "certs", "init", "--out", out, "--store", "store-1", "--store", "store-2", "--san",
        "10.1.2.3",
    ];
    args.extend_from_slice(extra);
    shelfctl(&args)
}

#[test]
fn init_writes_the_files_and_a_second_init_needs_force() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("certs");

    let first = init(&out, &[]);
    assert!(first.status.success(), "stderr: {}", text(&first.stderr));
    let printed: Vec<String> = text(&first.stdout).lines().map(str::to_owned).collect();
    let expected: Vec<String> = ["ca", "coordinator", "store-1", "store-2", "admin"]
        .iter()
        .flat_map(|n| [format!("{n}.pem"), format!("{n}.key")])
        .map(|f| out.join(f).display().to_string())
        .collect();
    assert_eq!(printed, expected);
    for file in &expected {
        assert!(Path::new(file).is_file(), "{file} missing");
    }
    let ca_key = std::fs::read(out.join("ca.key")).unwrap();

    let second = init(&out, &[]);
    assert_eq!(second.status.code(), Some(2));
    let stderr = text(&second.stderr);
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains("--force"), "{stderr}");
    assert!(stderr.contains("ca.key"), "{stderr}");
    assert!(second.stdout.is_empty());
    assert_eq!(std::fs::read(out.join("ca.key")).unwrap(), ca_key);

    let forced = init(&out, &["--force"]);
    assert!(forced.status.success(), "stderr: {}", text(&forced.stderr));
    assert_ne!(std::fs::read(out.join("ca.key")).unwrap(), ca_key);

    let issued = shelfctl(&[
        "certs",
        "issue",
        "--ca-dir",
        out.to_str().unwrap(),
        "--store",
        "store-3",
    ]);
    assert!(issued.status.success(), "stderr: {}", text(&issued.stderr));
    assert_eq!(
        text(&issued.stdout),
        format!(
            "{}\n{}\n",
            out.join("store-3.pem").display(),
            out.join("store-3.key").display()
        )
    );
}

#[test]
fn issue_with_a_missing_ca_dir_fails_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nowhere");
    let output = shelfctl(&[
        "certs",
        "issue",
        "--ca-dir",
        missing.to_str().unwrap(),
        "--store",
        "store-9",
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(!missing.exists());
}

#[test]
fn invalid_store_id_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("certs");
    let output = shelfctl(&[
        "certs",
        "init",
        "--out",
        out.to_str().unwrap(),
        "--store",
        "admin",
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("reserved"), "{stderr}");
    assert!(!out.exists());
}
