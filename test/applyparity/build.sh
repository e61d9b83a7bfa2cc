#!/bin/sh
# Build applytool (containerd's archive.Apply as a command, for
# test/tar/apply-parity.test.ts) offline, in GOPATH mode, against Debian 12's
# packaged Go sources (/usr/share/gocode):
#   apt-get install -y golang-go golang-github-containerd-containerd-dev
# Output: $OUT/applytool (default /tmp/applyparity/bin). Idempotent: does
# nothing when the binary is newer than its source (~1 s); ~30 s cold.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=${WORK:-/tmp/applyparity}
OUT=${OUT:-$WORK/bin}
PKG=cvmfsthin-applyparity
BIN="$OUT/applytool"
SRC="$HERE/applytool/main.go"

[ -d /usr/share/gocode/src/github.com/containerd/containerd/archive ] || {
  echo "applyparity build: /usr/share/gocode/src/github.com/containerd/containerd/archive missing (apt-get install golang-github-containerd-containerd-dev)" >&2
  exit 1
}
if [ -x "$BIN" ] && [ "$BIN" -nt "$SRC" ] && [ "$BIN" -nt "$0" ]; then
  echo "up to date: $BIN"
  exit 0
fi

mkdir -p "$WORK/gopath/src" "$OUT"
rm -rf "$WORK/gopath/src/$PKG"
mkdir -p "$WORK/gopath/src/$PKG"
cp -r "$HERE/applytool" "$WORK/gopath/src/$PKG/"

export GO111MODULE=off
export GOPATH="$WORK/gopath:/usr/share/gocode"
export GOCACHE="${GOCACHE:-$WORK/gocache}"
export GOFLAGS=
export CGO_ENABLED="${CGO_ENABLED:-1}"

go vet "$PKG/applytool"
go build -o "$BIN.tmp" "$PKG/applytool"
mv "$BIN.tmp" "$BIN"
echo "built: $BIN"
