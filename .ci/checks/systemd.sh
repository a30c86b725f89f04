#!/usr/bin/env bash
# Checks the systemd units in systemd/:
#   1. `systemd-analyze verify` on presenced.service and on presenced@.service
#      (instantiated as presenced@a.service) prints nothing at all: any
#      warning fails, not only a non-zero exit status (verify exits 0 on
#      unknown keys or unparsable values).
#   2. `systemd-analyze security --offline=yes` gives each an overall exposure
#      of at most $MAX_EXPOSURE (default 2.0).
# Works without systemd as PID 1 (containers, CI) and needs no root (as root
# it installs systemd-analyze if missing). The units are copied into a temp
# dir with ExecStart= pointed at a stand-in binary there, since verify
# insists that the command exists and is executable, and
# /usr/local/bin/presenced need not be installed.
set -euo pipefail

MAX_EXPOSURE=${MAX_EXPOSURE:-2.0}
root=$(cd "$(dirname "$0")/../.." && pwd)
units=(presenced.service presenced@.service)

if ! command -v systemd-analyze >/dev/null; then
	if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
		echo "systemd.sh: installing systemd (for systemd-analyze)"
		apt-get update -qq >/dev/null
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
	else
		echo "systemd.sh: systemd-analyze not found (apt-get install systemd)" >&2
		exit 1
	fi
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin"
printf '#!/bin/sh\nexit 0\n' >"$tmp/bin/presenced"
chmod 755 "$tmp/bin/presenced"
for u in "${units[@]}"; do
	sed "s#/usr/local/bin/presenced#$tmp/bin/presenced#g" "$root/systemd/$u" >"$tmp/$u"
done

fail=0
# The name each unit is checked under: a template only loads as an instance.
for name in presenced.service presenced@a.service; do
	out=$(cd "$tmp" && SYSTEMD_LOG_COLOR=0 systemd-analyze verify --man=no "$tmp/$name" 2>&1) && rc=0 || rc=$?
	if [[ $rc -ne 0 || -n $out ]]; then
		echo "FAIL verify $name (exit $rc):"
		printf '%s\n' "$out" | sed "s#$tmp/##g; s/^/  /"
		fail=1
	else
		echo "ok   verify $name"
	fi

	out=$(SYSTEMD_LOG_COLOR=0 systemd-analyze security --offline=yes --no-pager "$tmp/$name" 2>&1) && rc=0 || rc=$?
	line=$(printf '%s\n' "$out" | grep 'Overall exposure level' || true)
	score=$(printf '%s\n' "$line" | sed -n 's/.*: \([0-9][0-9]*\(\.[0-9]*\)\?\).*/\1/p')
	if [[ -z $score ]]; then
		echo "FAIL security $name: no 'Overall exposure level' line (exit $rc):"
		printf '%s\n' "$out" | tail -20 | sed 's/^/  /'
		fail=1
		continue
	fi
	# Warnings (unknown keys, bad values) are printed above the table too.
	warn=$(printf '%s\n' "$out" | grep -E '^(/|[A-Za-z0-9_.@-]+\.service:)' || true)
	if [[ -n $warn ]]; then
		echo "FAIL security $name printed warnings:"
		printf '%s\n' "$warn" | sed "s#$tmp/##g; s/^/  /"
		fail=1
	fi
	if awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s + 0 > m + 0) }'; then
		echo "FAIL security $name: exposure $score > $MAX_EXPOSURE"
		printf '%s\n' "$out" | grep '✗' | sed 's/^/  /'
		fail=1
	else
		echo "ok   security $name: exposure $score (max $MAX_EXPOSURE)"
	fi
done

exit $fail
