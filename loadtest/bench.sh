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
# half: the p99 at half presenced's highest sustainable rate of a sweep report.
half() {
  local rate
  rate=$(python3 -c 'import json,sys; r=[r for r in json.load(open(sys.argv[1]))["runs"] if r["target"]=="presenced"][0]; print(int(r.get("best_rate",0)/2))' "$1")
  echo "### half of the highest sustainable rate: $rate/s"
  shift
  lt --rate "$rate" --duration 10s "$@"
}

exec > >(tee "$out/summary.txt") 2>&1
echo "# $(date -u +%FT%TZ) $(go version) commit $(git rev-parse --short HEAD) $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
if [ -z "${SKIP_MICRO:-}" ]; then
  echo "## micro-benchmarks"
  go test -run '^$' -bench 'TouchParallel|TouchJoin|Expire' -benchmem -benchtime 2s ./shardmap/
  go test -run '^$' -bench 'Memory1M' -benchtime 1x ./shardmap/
  go test -run '^$' -bench . -benchmem ./server/wire/ ./server/token/
  go test -run '^$' -bench 'UDPHeartbeat|HTTPHeartbeatHandler' -benchmem -benchtime 2s ./server/
  go test -run '^$' -bench 'RecordsPerHeartbeat|Committer' -benchmem ./persist/
  go test -run '^$' -bench 'Replay1M' -benchtime 1x ./persist/
  go test -run '^$' -bench 'HeartbeatThroughput|ReplicationLag' -benchtime 2s ./server/
fi
start
echo "## UDP, presenced vs do-nothing gnet receiver vs raw recvmmsg receiver vs Redis SETEX"
lt --transport udp --rate 10000 "${sweep[@]}" --baselines=null-udp,raw-udp,redis-setex,redis-setex-pipelined --json "$out/udp.json" --html "$out/udp.html"
half "$out/udp.json" --transport udp
echo "## HTTP single heartbeats, presenced vs do-nothing fasthttp handler"
lt --transport http --rate 5000 "${sweep[@]}" --baselines=null-http --json "$out/http.json" --html "$out/http.html"
half "$out/http.json" --transport http
echo "## HTTP batches of 100"
lt --transport http-batch --batch 100 --rate 20000 "${sweep[@]}" --json "$out/http-batch.json" --html "$out/http-batch.html"
echo "## persistence: the same UDP sweep without a log, with --fsync=interval, with --fsync=always"
for mode in none interval always; do
  stop
  if [ $mode = none ]; then start --data-dir ''; else rm -rf "$data"; start --fsync $mode; fi
  echo "### $mode"
  rate=10000; [ $mode = always ] && rate=1000   # every ack waits for an fsync
  lt --transport udp --rate $rate "${sweep[@]}" --json "$out/persist-$mode.json"
done
echo "## abuse: one source floods as fast as it can beside 10,000 users (server --ttl 5s --interval 2s)"
stop
start --ttl 5s --interval 2s --source-rate 2000 --heartbeat-min-gap 1s
for kind in valid garbage; do
  USERS=10000 lt --transport udp --interval 2s --duration 15s --flood-rate -1 --flood-kind $kind --compare-flood --check-online --source-ip 127.0.1.0/28 --json "$out/flood-$kind.json"
done
echo "## abuse: one source floods at 20,000/s (10x its limit)"
USERS=10000 lt --transport udp --interval 2s --duration 15s --flood-rate 20000 --compare-flood --check-online --source-ip 127.0.1.0/28 --json "$out/flood-20k.json"
stop
echo "## 1,000,000 users at a 60 s interval (16,667 heartbeats/s), 70 s"
start
USERS=1000000 lt --transport udp --interval 60s --duration 70s --json "$out/1m.json" --html "$out/1m.html"
echo "server RSS: $(ps -o rss= -p "$pid") KiB"
curl -s "http://$addr/v1/stats"; echo
stop
