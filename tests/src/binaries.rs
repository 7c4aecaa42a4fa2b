//! Where the binaries under test are.
//!
//! An integration test may only use `CARGO_BIN_EXE_*` of its own package, and
//! the shelfsync binaries live in other packages. Cargo puts every binary of
//! the workspace in `target/<profile>/` and the test executables in
//! `target/<profile>/deps/`, so the binaries are found one directory above the
//! running test. `cargo test --workspace` builds, before it runs any test,
//! the bin targets of every package that has integration tests (each binary
//! crate has some, for this reason too), so they exist then; `cargo test -p
//! shelfsync-tests` alone does not build them, hence the hint in the panic
//! message.
//!
//! `SHELFSYNC_BIN_DIR` overrides the directory (for binaries built elsewhere,
//! e.g. a release build or another target dir).

use std::path::PathBuf;

/// Environment variable naming the directory that holds the binaries.
pub const BIN_DIR_ENV: &str = "SHELFSYNC_BIN_DIR";

/// The directory the binaries are taken from: `$SHELFSYNC_BIN_DIR`, or the
/// parent of the directory of the running test executable.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        return PathBuf::from(dir);
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(err) => panic!("cannot find the running test executable ({err}); set {BIN_DIR_ENV}"),
    };
    // target/<profile>/deps/<test> -> target/<profile>
    let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// The path of the binary `name` (e.g. `shelfsync-coordinator`).
///
/// # Panics
/// When the file does not exist, with a message saying how to build it.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.is_file() {
        panic!(
            "binary {name} not found at {}: run `cargo build --workspace` (or `cargo test \
             --workspace`, which builds it) first, or point {BIN_DIR_ENV} at the directory \
             that holds it",
            path.display()
        );
    }
    path
}
