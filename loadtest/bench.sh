#!/usr/bin/env bash
# Reproduces the load figures of BENCHMARKS.md on this machine: builds
# presenced, starts it, and runs `presenced loadtest` sweeps with the
# baselines in the same run. Every process it starts is stopped on exit.
#
#   loadtest/bench.sh [outdir]      (default: bench-out/)
#
# Knobs (environment): STEP (sweep step length, 4s), P99 (sustainable p99,
# 5ms), USERS (100000).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench-out}
mkdir -p "$out"
STEP=${STEP:-4s}
P99=${P99:-5ms}
USERS=${USERS:-100000}
bin=$(mktemp -d)/presenced
go build -o "$bin" .
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
addr=127.0.0.1:$port
data=$(mktemp -d)
pid=""
start() {
  "$bin" serve --http-addr "$addr" --udp-addr "$addr" --data-dir "$data" --log-level warn \
    --source-rate 0 --heartbeat-min-gap 0 "$@" &
  pid=$!
  for _ in $(seq 100); do curl -fs "http://$addr/readyz" >/dev/null && return; sleep 0.1; done
  echo "server did not start" >&2; exit 1
}
stop() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; pid=""; }
trap 'stop; rm -rf "$data" "$(dirname "$bin")"' EXIT
lt() { "$bin" loadtest --udp-addr "$addr" --http-addr "$addr" --users "$USERS" --quiet --target-pid "$pid" "$@"; }
sweep=(--sweep --sweep-factor 1.5 --step-duration "$STEP" --target-p99 "$P99")

{
echo "# $(date -u +%FT%TZ) $(go version) commit $(git rev-parse --short HEAD) $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
start
echo "## UDP, presenced vs do-nothing gnet receiver vs raw recvmmsg receiver vs Redis SETEX"
lt --transport udp --rate 10000 "${sweep[@]}" --baselines null-udp,raw-udp,redis-setex,redis-setex-pipelined --json "$out/udp.json" --html "$out/udp.html"
echo "## HTTP single heartbeats, presenced vs do-nothing fasthttp handler"
lt --transport http --rate 5000 "${sweep[@]}" --baselines null-http --json "$out/http.json" --html "$out/http.html"
echo "## HTTP batches of 100"
lt --transport http-batch --batch 100 --rate 20000 "${sweep[@]}" --json "$out/http-batch.json" --html "$out/http-batch.html"
stop
echo "## 1,000,000 users at a 60 s interval (16,667 heartbeats/s), 70 s"
start
USERS=1000000 lt --transport udp --interval 60s --duration 70s --json "$out/1m.json" --html "$out/1m.html"
echo "server RSS: $(ps -o rss= -p "$pid") KiB"
curl -s "http://$addr/v1/stats"; echo
stop
} 2>&1 | tee "$out/summary.txt"
