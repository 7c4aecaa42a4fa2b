#!/usr/bin/env bash
# The project's test command (README, and what .ci/run calls): installs what
# the tests need when it is missing, runs every test of the workspace, then
# holds the agent's REST API against docs/openapi.json with schemathesis
# (scripts/schemathesis.sh) on the binaries `cargo test` built.
#
#   scripts/test.sh [ARGS...]   (ARGS go to `cargo test --workspace`; a run
#                                with ARGS skips the schemathesis step, since
#                                it may not have built the binaries)
#
# Needed beyond the Rust toolchain: `redis-server` (Debian's package), which
# the load generator's Redis comparison tests start a server of their own
# from. It is installed with apt-get (through sudo when not root), as
# scripts/schemathesis.sh installs python3-venv when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null; then
    echo "== installing redis-server (the Redis comparison tests start their own server)" >&2
    sudo=""
    if [[ "$(id -u)" -ne 0 ]]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
fi

echo "== cargo test --workspace $*" >&2
cargo test --workspace "$@"

if [[ $# -eq 0 ]]; then
    SHELFSYNC_BIN_DIR="${CARGO_TARGET_DIR:-target}/debug" scripts/schemathesis.sh
fi
