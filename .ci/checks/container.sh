#!/usr/bin/env bash
# Builds the image of Containerfile with podman, when podman is present, and
# checks what it holds: exported (podman create + podman export, since
# running a container needs cgroups this CI may not have), the image must
# hold only the static binary, /etc/passwd and /etc/group and the data
# directory owned by the non-root user; its config must name that user, the
# ports and the volume; and the binary taken out of it must serve /readyz on
# 127.0.0.1. Says in the log whether it ran. Everything is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v podman >/dev/null; then
  echo "container image: NOT built (podman is not installed)"
  exit 0
fi
tmp=$(mktemp -d)
tag="localhost/presenced-ci:$$"
ctr="" pid=""
cleanup() {
  [ -z "$pid" ] || { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; }
  [ -z "$ctr" ] || podman rm -f "$ctr" >/dev/null 2>&1 || true
  podman rmi -f "$tag" >/dev/null 2>&1 || true
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "container image: FAIL: $*" >&2; exit 1; }

# The build context: what the Containerfile's instructions name, and the binary.
mkdir -p "$tmp/ctx/container/datadir" "$tmp/root"
cp Containerfile .containerignore "$tmp/ctx/"
cp container/passwd container/group "$tmp/ctx/container/"
CGO_ENABLED=0 go build -buildvcs=true -trimpath -ldflags "-X main.buildTime=$(date -u +%FT%TZ)" -o "$tmp/ctx/presenced" . \
  || fail "cannot build the static binary"
podman build -q -t "$tag" -f "$tmp/ctx/Containerfile" "$tmp/ctx" >/dev/null || fail "podman build"

cfg=$(podman image inspect "$tag" --format '{{.Config.User}}|{{range $p, $_ := .Config.ExposedPorts}}{{$p}} {{end}}|{{range $v, $_ := .Config.Volumes}}{{$v}}{{end}}|{{.Config.Entrypoint}}')
[ "$cfg" = "65532:65532|7070/tcp 7070/udp |/var/lib/presenced|[/usr/local/bin/presenced]" ] \
  || fail "image config is $cfg, want user 65532:65532, ports 7070/tcp and 7070/udp, volume /var/lib/presenced"
env=$(podman image inspect "$tag" --format '{{range .Config.Env}}{{.}} {{end}}')
for want in PRESENCED_HTTP_ADDR=0.0.0.0:7070 PRESENCED_UDP_ADDR=0.0.0.0:7070 PRESENCED_DATA_DIR=/var/lib/presenced; do
  [[ " $env " == *" $want "* ]] || fail "image environment lacks $want: $env"
done

ctr=$(podman create "$tag")
podman export "$ctr" >"$tmp/fs.tar" || fail "podman export"
files=$(tar -tf "$tmp/fs.tar" | grep -v '/$' | sort | tr '\n' ' ')
[ "$files" = "etc/group etc/passwd usr/local/bin/presenced " ] || fail "image holds more than the binary and the user: $files"
tar -tvf "$tmp/fs.tar" | grep -q '^d.* presenced/presenced .* var/lib/presenced/$' \
  || tar -tvf "$tmp/fs.tar" | grep -q '^d.* 65532/65532 .* var/lib/presenced/$' \
  || fail "var/lib/presenced is not owned by the presenced user: $(tar -tvf "$tmp/fs.tar" | grep var/lib)"
tar -xf "$tmp/fs.tar" -C "$tmp/root"
bin="$tmp/root/usr/local/bin/presenced"
if readelf -l "$bin" 2>/dev/null | grep -q INTERP; then
  fail "the binary in the image is dynamically linked"
fi

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin" serve --http-addr "127.0.0.1:$port" --udp-addr "127.0.0.1:$port" --data-dir "$tmp/data" --log-level warn &
pid=$!
for _ in $(seq 200); do
  if ready=$(curl -fs "http://127.0.0.1:$port/readyz"); then
    echo "container image: built with podman ($(podman --version)); the binary exported from it serves /readyz: $ready"
    "$bin" version | sed 's/^/  /'
    exit 0
  fi
  kill -0 "$pid" 2>/dev/null || fail "the exported binary exited before /readyz answered"
  sleep 0.1
done
fail "the exported binary did not answer /readyz within 20 s"
