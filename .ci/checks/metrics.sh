#!/usr/bin/env bash
# Start the real binary, put some traffic through it, and lint /metrics with
# promtool (fails on any warning). The server is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
tmp=$(mktemp -d)
go build -o "$tmp/presenced" .
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$tmp/presenced" serve --http-addr "127.0.0.1:$port" --udp-addr "127.0.0.1:$port" --data-dir "$tmp/data" --log-level warn &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && break
  sleep 0.1
done
curl -fs -X POST "http://127.0.0.1:$port/v1/heartbeat" -d '{"user":"metrics-check","room":"r"}' >/dev/null
curl -fs "http://127.0.0.1:$port/metrics" >"$tmp/metrics.txt"
out=$(promtool check metrics <"$tmp/metrics.txt" 2>&1) || { echo "$out"; exit 1; }
if [ -n "$out" ]; then
  echo "promtool check metrics warnings:"; echo "$out"; exit 1
fi
echo "promtool check metrics: clean ($(grep -c '^# TYPE' "$tmp/metrics.txt") metric families)"
