#!/usr/bin/env bash
# Reproduces the load figures of BENCHMARKS.md (issue 14's method) on this
# machine: every server is pinned to one core (taskset -c $SRV_CPU, default
# 1) and the generator to another (presenced loadtest --cpu $GEN_CPU,
# default 0), and each figure is measured in the same run as its
# baselines:
#
#   UDP   presenced | presenced without the log (--data-dir '') |
#         do-nothing gnet (loadtest --serve null-udp) | raw recvmmsg/sendmmsg
#         (loadtest --serve raw-udp): flat out with and without acks
#         (intake read from the server's /metrics), and CPU per heartbeat
#         at 20,000/s with and without acks (the server's /proc/<pid>/stat
#         over the heartbeats its /metrics counted).
#   HTTP  wrk on the generator's core (one thread, 64 connections, distinct
#         users: loadtest/wrk-heartbeat.lua) against presenced, presenced
#         without the log and the do-nothing fasthttp handler, single
#         heartbeats and batches of 100.
#   60 s  presenced with its log at a 60 s interval: log records per
#         heartbeat and CPU-seconds per million heartbeats over the second
#         and third minutes (refreshes only: with the default
#         --wal-refresh-margin every user's first refresh there is skipped
#         and its second written, the steady state), from its /metrics and
#         /proc/<pid>/stat.
#   flood the abuse scenario (one source floods beside 10,000 users).
#   and the zero-allocation guards of the heartbeat path.
#
#   loadtest/bench.sh [outdir]      (default: bench-out/)
#
# Knobs (environment): DUR (length of each UDP/HTTP run, 5s), USERS
# (100000), USERS60 (users of the 60 s run, 600000), MIN60 (length of the
# 60 s run, 185s), GEN_CPU (0), SRV_CPU (1), SKIP_FLOOD, SKIP_60S,
# PROFILE (1: 4 s CPU profile of presenced flat out with acks).
# Every process it starts is stopped on exit. About 10 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench-out}
mkdir -p "$out"
out=$(cd "$out" && pwd)
DUR=${DUR:-5s}
USERS=${USERS:-100000}
USERS60=${USERS60:-600000}
MIN60=${MIN60:-185s}
GEN_CPU=${GEN_CPU:-0}
SRV_CPU=${SRV_CPU:-1}
PROFILE=${PROFILE:-1}
tmp=$(mktemp -d)
bin=$tmp/presenced
go build -o "$bin" .
if ! command -v wrk >/dev/null; then
  if [ "$(id -u)" = 0 ]; then apt-get install -y wrk >/dev/null; else sudo apt-get install -y wrk >/dev/null; fi
fi
freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(freeport)
addr=127.0.0.1:$port
pprof=127.0.0.1:$(freeport)
data=$tmp/data
pid=""
ready() {
  for _ in $(seq 100); do curl -fs "http://$addr/$1" >/dev/null && return; sleep 0.1; done
  echo "server did not start" >&2; exit 1
}
# presenced [flags]: presenced pinned to $SRV_CPU, abuse limits off (the
# generator sends from one address), a fresh log unless --data-dir ''.
presenced() {
  stop; rm -rf "$data"
  taskset -c "$SRV_CPU" "$bin" serve --http-addr "$addr" --udp-addr "$addr" --data-dir "$data" --log-level warn \
    --source-rate 0 --heartbeat-min-gap 0 --pprof-addr "$pprof" "$@" &
  pid=$!
  ready readyz
}
# null KIND: a do-nothing target in its own process, pinned like presenced.
null() {
  stop
  taskset -c "$SRV_CPU" "$bin" loadtest --serve "$1" --udp-addr "$addr" --http-addr "$addr" >/dev/null &
  pid=$!
  ready metrics
}
stop() { if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi; pid=""; }
trap 'stop; rm -rf "$tmp"' EXIT
# lt NAME flags: the generator on $GEN_CPU against the running target.
lt() {
  local name=$1; shift
  "$bin" loadtest --cpu "$GEN_CPU" --udp-addr "$addr" --http-addr "$addr" --users "$USERS" --quiet \
    --target-pid "$pid" --target-metrics "http://$addr/metrics" --name "$name" "$@"
}
cpu_ticks() { awk '{print $14+$15}' "/proc/$pid/stat"; }
metric() { curl -fs "http://$addr/metrics" | awk -v m="$1" '$1==m || index($1, m"{")==1 {s+=$NF} END {printf "%.0f\n", s}'; }

exec > >(tee "$out/summary.txt") 2>&1
echo "# $(date -u +%FT%TZ) $(go version) commit $(git rev-parse --short HEAD) $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
echo "# server on CPU $SRV_CPU, generator on CPU $GEN_CPU; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

echo "## zero-allocation guards"
go test -count=1 -run 'Allocs' ./server/ ./server/wire/ ./server/token/

echo "## UDP: flat out and at 20,000/s, with and without acks"
udp_runs() {
  local name=$1
  for mode in flat-noack flat-ack 20k-noack 20k-ack; do
    local flags=(--duration "$DUR")
    case $mode in
      flat-*) flags+=(--flat-out --sockets 4 --rate 400000) ;;
      20k-*) flags+=(--rate 20000 --sockets 4) ;;
    esac
    case $mode in *-noack) flags+=(--no-ack) ;; esac
    echo "### $name $mode"
    if [ "$name" = presenced ] && [ "$mode" = flat-ack ] && [ "$PROFILE" = 1 ]; then
      (sleep 1; curl -fs "http://$pprof/debug/pprof/profile?seconds=4" -o "$out/presenced-flat-ack.pprof") &
      local prof=$!
      lt "$name" "${flags[@]}" --json "$out/udp-$name-$mode.json" | grep -E 'offered|server:|limit:|load generator'
      wait $prof || true
    else
      lt "$name" "${flags[@]}" --json "$out/udp-$name-$mode.json" | grep -E 'offered|server:|limit:|load generator'
    fi
  done
}
presenced
udp_runs presenced
presenced --data-dir ''
udp_runs presenced-nolog
null null-udp
udp_runs null-udp
null raw-udp
udp_runs raw-udp
if [ -f "$out/presenced-flat-ack.pprof" ]; then
  echo "### CPU profile of presenced flat out with acks (4 s)"
  go tool pprof -top -nodecount 30 "$bin" "$out/presenced-flat-ack.pprof" 2>/dev/null | tail -n +5 || true
fi

echo "## HTTP: wrk on CPU $GEN_CPU (1 thread, 64 connections), distinct users"
http_runs() {
  local name=$1
  for batch in 1 100; do
    local t0 w
    t0=$(cpu_ticks)
    w=$(BATCH=$batch USERS=$USERS taskset -c "$GEN_CPU" wrk -t1 -c64 --latency -d"$DUR" -s loadtest/wrk-heartbeat.lua "http://$addr")
    local ticks=$(( $(cpu_ticks) - t0 ))
    local rps non2xx
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$w")
    non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$w")
    echo "http $name batch=$batch requests/s=$rps heartbeats/s=$(python3 -c "print(round($rps*$batch))") non2xx=${non2xx:-0} server_cpu_s=$(python3 -c "print($ticks/100)") p99=$(awk '/ 99%/ {print $2}' <<<"$w")" | tee -a "$out/http.txt"
  done
}
: >"$out/http.txt"
presenced
http_runs presenced
presenced --data-dir ''
http_runs presenced-nolog
null null-http
http_runs null-http

if [ -z "${SKIP_60S:-}" ]; then
  echo "## $USERS60 users at a 60 s interval, with the log, $MIN60: from 65 s to the end"
  presenced
  USERS=$USERS60 lt presenced --interval 60s --duration "$MIN60" --json "$out/60s.json" >"$out/60s.txt" &
  ltpid=$!
  sleep 65
  h0=$(metric presenced_heartbeats_total); r0=$(metric presenced_wal_records_total); c0=$(cpu_ticks); t0=$(date +%s.%N)
  wait $ltpid
  h1=$(metric presenced_heartbeats_total); r1=$(metric presenced_wal_records_total); c1=$(cpu_ticks); t1=$(date +%s.%N)
  echo "refreshes the log skipped (whole run): $(metric presenced_wal_refreshes_skipped_total)"
  grep -E 'offered|latency|limit' "$out/60s.txt"
  python3 - "$h0" "$h1" "$r0" "$r1" "$c0" "$c1" "$t0" "$t1" <<'EOF' | tee "$out/60s-steady.txt"
import sys
h0, h1, r0, r1, c0, c1 = map(float, sys.argv[1:7]); t0, t1 = float(sys.argv[7]), float(sys.argv[8])
hb, rec, cpu = h1 - h0, r1 - r0, (c1 - c0) / 100
print(f"60s steady: {hb:.0f} heartbeats in {t1-t0:.0f} s ({hb/(t1-t0):.0f}/s), {rec:.0f} log records = {rec/hb:.3f} per heartbeat, "
      f"server CPU {cpu:.2f} s = {cpu/hb*1e6:.2f} CPU-seconds per million heartbeats ({100*cpu/(t1-t0):.0f}% of one core)")
EOF
  echo "server RSS: $(ps -o rss= -p "$pid") KiB"
fi

if [ -z "${SKIP_FLOOD:-}" ]; then
  echo "## abuse: one source floods beside 10,000 users (server --ttl 5s --interval 2s --source-rate 2000 --heartbeat-min-gap 1s)"
  presenced --ttl 5s --interval 2s --source-rate 2000 --heartbeat-min-gap 1s
  for f in "-1 valid" "-1 garbage" "20000 valid"; do
    set -- $f
    echo "### flood rate $1 ($2)"
    USERS=10000 lt presenced --interval 2s --duration 10s --flood-rate "$1" --flood-kind "$2" --compare-flood --check-online \
      --source-ip 127.0.1.0/28 --json "$out/flood-$2-$1.json" | sed -n '/== flood comparison ==/,$p'
  done
fi
stop

echo "## summary"
python3 loadtest/benchsummary.py "$out" | tee "$out/summary.md"
echo "# load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
