#!/usr/bin/env bash
# Holds a running agent's REST API against its own OpenAPI description
# (docs/openapi.json, served at /v1/openapi.json) with schemathesis: a
# coordinator and one agent from the workspace's debug binaries on
# 127.0.0.1 (ports the OS picks, data in a temp dir), a few seeded items,
# then `schemathesis run` with these checks on every response:
#   not_a_server_error             no 5xx
#   status_code_conformance        every status is documented
#   content_type_conformance       the Content-Type is the documented one
#   response_schema_conformance    the body matches the documented schema
#   response_headers_conformance   documented headers match their schemas
# and, after it, no ERROR line and no panic in either process's log. Then,
# on the same processes: `promtool check metrics` on a scrape of the
# coordinator's and the agent's /metrics, `promtool check rules` on
# deploy/prometheus/alerts.yml, and that deploy/grafana-dashboard.json is
# JSON. Exits non-zero on any failure; the processes are stopped on every
# exit.
#
#   scripts/schemathesis.sh            builds the binaries, then runs
#   SHELFSYNC_BIN_DIR=DIR scripts/schemathesis.sh
#                                      uses the binaries in DIR (scripts/test.sh
#                                      passes the ones `cargo test` built)
#   SCHEMATHESIS_SEED=N                another seed (the default is fixed, so a
#                                      failure replays; the seed is printed)
#   SCHEMATHESIS_MAX_EXAMPLES=N        test cases per operation (default 200)
#   SCHEMATHESIS_ARGS="..."            more `schemathesis run` options, e.g.
#                                      "--include-path-regex ^/v1/locks"
#
# schemathesis (pinned, with its dependencies, in scripts/schemathesis.txt)
# is installed from PyPI into a venv under the target dir. Needed beyond that:
# python3 with venv, and promtool (Debian's `prometheus` package), installed
# with apt-get (through sudo when not root) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir="${CARGO_TARGET_DIR:-target}"
seed="${SCHEMATHESIS_SEED:-26005}"
max_examples="${SCHEMATHESIS_MAX_EXAMPLES:-200}"
checks=not_a_server_error,status_code_conformance,content_type_conformance
checks+=,response_schema_conformance,response_headers_conformance
read -r -a extra_args <<<"${SCHEMATHESIS_ARGS:-}"

apt_install() {
    local sudo=""
    if [[ "$(id -u)" -ne 0 ]]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# --- binaries
if [[ -n "${SHELFSYNC_BIN_DIR:-}" ]]; then
    bin_dir="$SHELFSYNC_BIN_DIR"
else
    echo "== cargo build --workspace --bins" >&2
    cargo build --workspace --bins
    bin_dir="$target_dir/debug"
fi
for binary in shelfsync-coordinator shelfsync-agent shelfctl; do
    if [[ ! -x "$bin_dir/$binary" ]]; then
        echo "error: no $bin_dir/$binary (build the workspace first)" >&2
        exit 1
    fi
done

# --- schemathesis, in a venv of its own
if ! command -v python3 >/dev/null || ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    echo "== installing python3-venv (the venv schemathesis runs in)" >&2
    apt_install python3 python3-venv
fi
venv="$target_dir/schemathesis-venv"
requirements=scripts/schemathesis.txt
# Reinstalled when the pinned versions change.
if ! cmp -s "$requirements" "$venv/requirements.txt" 2>/dev/null; then
    echo "== installing schemathesis into $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
    cp "$requirements" "$venv/requirements.txt"
fi
python="$venv/bin/python"

# --- a coordinator and one agent
dir="$(mktemp -d "${TMPDIR:-/tmp}/shelfsync-schemathesis.XXXXXX")"
pids=()
status=1
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ "$status" -ne 0 ]]; then
        for log in "$dir"/*.log; do
            [[ -f "$log" ]] || continue
            echo "== last lines of $log" >&2
            tail -n 30 "$log" >&2
        done
    fi
    rm -rf "$dir"
}
trap cleanup EXIT

# The address a service logged (log_format = "json") under `field`, once it
# is serving; fails if the process exits or 30 s pass first.
bound_addr() {
    local log="$1" field="$2" pid="$3" addr=""
    for _ in $(seq 300); do
        addr="$(grep -o "\"$field\":\"[^\"]*\"" "$log" 2>/dev/null | head -n 1 | cut -d'"' -f4 || true)"
        if [[ -n "$addr" ]]; then
            echo "$addr"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "error: $log: the process exited before serving" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "error: $log: not serving after 30 s" >&2
    return 1
}

"$bin_dir/shelfctl" certs init --out "$dir/certs" --store store-1 >/dev/null

cat >"$dir/coordinator.toml" <<EOF
listen      = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
data_dir    = "$dir/coordinator"
log_format  = "json"
[tls]
ca_cert = "$dir/certs/ca.pem"
cert    = "$dir/certs/coordinator.pem"
key     = "$dir/certs/coordinator.key"
# store-2 is readable, not writable: writes there are a documented 403.
[[stores]]
id            = "store-1"
sync_interval = "1s"
writable      = ["store-1", "online"]
readable      = ["store-1", "online", "store-2"]
EOF
"$bin_dir/shelfsync-coordinator" --config "$dir/coordinator.toml" 2>"$dir/coordinator.log" &
pids+=($!)
quic="$(bound_addr "$dir/coordinator.log" quic "${pids[-1]}")"
coordinator_http="$(bound_addr "$dir/coordinator.log" http "${pids[-1]}")"

cat >"$dir/agent.toml" <<EOF
store_id      = "store-1"
coordinator   = "$quic"
server_name   = "localhost"
data_dir      = "$dir/agent"
http_listen   = "127.0.0.1:0"
sync_interval = "1s"
locations     = ["store-1", "online", "store-2"]
# Generous: a slow CI machine should not turn a write into a 503.
forward_timeout = "10s"
log_format    = "json"
[tls]
ca_cert = "$dir/certs/ca.pem"
cert    = "$dir/certs/store-1.pem"
key     = "$dir/certs/store-1.key"
EOF
"$bin_dir/shelfsync-agent" --config "$dir/agent.toml" 2>"$dir/agent.log" &
pids+=($!)
http="$(bound_addr "$dir/agent.log" http "${pids[-1]}")"
base="http://$http"

# Ready (one sync done), then a few items: the examples in docs/openapi.json
# name them, so the generated requests also reach items that exist.
"$python" - "$base" <<'EOF'
import json, sys, time, urllib.error, urllib.request

base = sys.argv[1]
deadline = time.monotonic() + 30
while True:
    try:
        with urllib.request.urlopen(base + "/readyz", timeout=2) as response:
            if response.status == 200:
                break
    except (urllib.error.URLError, OSError):
        pass
    if time.monotonic() > deadline:
        sys.exit(f"error: {base}/readyz not ready after 30 s")
    time.sleep(0.1)

def put(path, body):
    request = urllib.request.Request(
        base + path, data=json.dumps(body).encode(), method="PUT",
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        if response.status != 201:
            sys.exit(f"error: seeding {path}: {response.status}")

for location in ("store-1", "online"):
    for sku in ("sku-1", "sku-2", "sku-3"):
        put(f"/v1/items/{location}/{sku}", {"name": f"Seeded {sku}", "quantity": 50})
EOF

echo "== schemathesis run $base/v1/openapi.json (seed $seed, $max_examples examples per operation)" >&2
echo "   replay: SCHEMATHESIS_SEED=$seed SCHEMATHESIS_MAX_EXAMPLES=$max_examples scripts/schemathesis.sh" >&2
# Hypothesis keeps its files in the temp dir, not in the work tree.
HYPOTHESIS_STORAGE_DIRECTORY="$dir/hypothesis" \
    "$venv/bin/schemathesis" --config-file scripts/schemathesis.toml run "$base/v1/openapi.json" \
    --checks "$checks" \
    --max-examples "$max_examples" \
    --seed "$seed" \
    --generation-database none \
    --workers 1 \
    --request-timeout 20 \
    --no-color \
    "${extra_args[@]}"

# Bad input is refused with a 4xx and a WARN at most: an ERROR line or a
# panic in either log is a failure too.
for log in "$dir"/*.log; do
    if grep -E -q '"level":"ERROR"|panicked' "$log"; then
        echo "error: $log has an ERROR line or a panic:" >&2
        grep -E '"level":"ERROR"|panicked' "$log" | head -n 5 >&2
        exit 1
    fi
done
echo "== schemathesis: no failures" >&2

# --- promtool: the metrics both processes serve, the alert rules
if ! command -v promtool >/dev/null; then
    echo "== installing promtool (Debian package prometheus)" >&2
    apt_install prometheus
fi
for target in "coordinator http://$coordinator_http" "agent $base"; do
    read -r name url <<<"$target"
    "$python" -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' \
        "$url/metrics" >"$dir/$name.metrics"
    echo "== promtool check metrics ($name)" >&2
    promtool check metrics <"$dir/$name.metrics"
done
echo "== promtool check rules deploy/prometheus/alerts.yml" >&2
promtool check rules deploy/prometheus/alerts.yml
"$python" -m json.tool deploy/grafana-dashboard.json >/dev/null
status=0
echo "== metrics, rules and dashboard: no problems" >&2
