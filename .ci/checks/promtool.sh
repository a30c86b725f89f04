#!/usr/bin/env bash
# Checks the Prometheus alerting rules and the Grafana dashboard in systemd/:
#   - promtool check rules systemd/presenced-alerts.yml
#   - promtool test rules systemd/presenced-alerts.test.yml
#   - systemd/presenced-dashboard.json is valid JSON
# Fails on any error. promtool comes with Debian's `prometheus` package; when
# it is missing and we run as root it is installed.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
dir=$root/systemd

if ! command -v promtool >/dev/null; then
	if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
		echo "promtool.sh: installing prometheus (for promtool)"
		apt-get update -qq >/dev/null
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
	else
		echo "promtool.sh: promtool not found (apt-get install prometheus)" >&2
		exit 1
	fi
fi

promtool check rules "$dir/presenced-alerts.yml"
promtool test rules "$dir/presenced-alerts.test.yml"
python3 -m json.tool "$dir/presenced-dashboard.json" >/dev/null
echo "ok   presenced-dashboard.json is valid JSON"

# Every dashboard query must parse as PromQL: write them out as recording
# rules, with Grafana's variables replaced, and let promtool parse them.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - "$dir/presenced-dashboard.json" >"$tmp/dashboard-queries.yml" <<'PY'
import json, sys

def walk(panels):
    for p in panels:
        yield p
        yield from walk(p.get("panels", []))

d = json.load(open(sys.argv[1]))
assert any(i.get("name") == "DS_PROMETHEUS" for i in d.get("__inputs", [])), "no DS_PROMETHEUS input"
print("groups:\n  - name: dashboard\n    rules:")
n = 0
for p in walk(d["panels"]):
    for t in p.get("targets", []):
        assert t["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
        e = t["expr"].replace("$__rate_interval", "5m").replace("$job", ".*").replace("$instance", ".*")
        n += 1
        print("      - record: dashboard:query%d\n        expr: %s" % (n, json.dumps(e)))
assert n > 0, "no queries"
PY
promtool check rules "$tmp/dashboard-queries.yml" >/dev/null
echo "ok   presenced-dashboard.json queries parse as PromQL"
