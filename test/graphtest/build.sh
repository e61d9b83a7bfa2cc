#!/bin/sh
# Build moby 20.10's graph driver suite (daemon/graphdriver/graphtest) run
# through moby's plugin proxy (test/graphtest/suite) offline, in GOPATH mode,
# against Debian 12's packaged Go sources (/usr/share/gocode):
#   apt-get install -y golang-go golang-github-docker-docker-dev \
#     golang-github-vbatts-tar-split-dev golang-github-gotestyourself-gotest.tools-dev dpkg-dev
# (graphdriver imports tar-split, which the -dev package does not depend on;
# dpkg-dev unpacks the source package). golang-github-docker-docker-dev lacks
# moby's `quota` (imported by graphtest), `plugin/v2` (imported by graphdriver),
# `plugin` (dockerd's plugin store) and `distribution/utils` (used by `plugin`);
# they are taken from Debian's docker.io source package, fetched once with
# `apt-get source` through a private deb-src list under $WORK/apt (the system's
# APT configuration is not touched; no deb-src line is needed there).
# Outputs: $OUT/graphtest.test (default /tmp/graphtest/bin). Idempotent; the
# source package and Go's build cache stay in $WORK for the next run
# (~3 min cold on 2 cores: ~20 s apt-get source, ~2 min compile; ~5 s warm).
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=${WORK:-/tmp/graphtest}
OUT=${OUT:-$WORK/bin}
PKG=cvmfsthin-graphtest
DOCKER_SRC_VERSION=${DOCKER_SRC_VERSION:-$(dpkg-query -W -f='${source:Version}' golang-github-docker-docker-dev)}
GOCODE=/usr/share/gocode/src/github.com/docker/docker

[ -d "$GOCODE/daemon/graphdriver/graphtest" ] || { echo "graphtest build: $GOCODE/daemon/graphdriver/graphtest missing (apt-get install golang-github-docker-docker-dev)" >&2; exit 1; }

# 1. moby's engine sources of the same version as golang-github-docker-docker-dev
SRC="$WORK/src/docker.io-$DOCKER_SRC_VERSION"
if [ ! -f "$SRC/.unpacked" ]; then
  APT="$WORK/apt"
  mkdir -p "$APT/sources.list.d" "$APT/lists/partial" "$APT/cache/archives/partial"
  cat > "$APT/sources.list.d/debian-src.sources" <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  set -- -o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$APT/sources.list.d" \
         -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT/cache" -o APT::Sandbox::User=root -q
  apt-get "$@" update >/dev/null
  rm -rf "$SRC" "$SRC.tmp"
  mkdir -p "$SRC.tmp"
  (cd "$SRC.tmp" && apt-get "$@" source "docker.io=$DOCKER_SRC_VERSION" >/dev/null)
  mv "$SRC.tmp" "$SRC"
  touch "$SRC/.unpacked"
fi
ENGINE=$(echo "$SRC"/docker.io-*/engine)
[ -d "$ENGINE/quota" ] || { echo "graphtest build: no engine/ in $SRC" >&2; exit 1; }

# 2. a GOPATH entry in front of /usr/share/gocode with only the packages Debian's -dev lacks
GP="$WORK/gopath"
rm -rf "$GP/src"
D="$GP/src/github.com/docker/docker"
mkdir -p "$D/distribution" "$GP/src/$PKG"
for p in quota plugin distribution/utils; do
  [ ! -e "$GOCODE/$p" ] || { echo "graphtest build: $GOCODE/$p exists now; drop it from build.sh" >&2; exit 1; }
  cp -r "$ENGINE/$p" "$D/$p"
done
find "$D" -name '*_test.go' -delete
cp -r "$HERE/suite" "$GP/src/$PKG/"
# moby 20.10 has no go.mod, so Go's minimal module compatibility does not map
# its `gotest.tools/v3/...` imports to Debian's /usr/share/gocode/src/gotest.tools
mkdir -p "$GP/src/gotest.tools"
ln -s /usr/share/gocode/src/gotest.tools "$GP/src/gotest.tools/v3"

export GO111MODULE=off
export GOPATH="$GP:/usr/share/gocode"
export GOCACHE="${GOCACHE:-$WORK/gocache}"
export GOFLAGS=
export CGO_ENABLED=1

mkdir -p "$OUT"
[ -z "${GRAPHTEST_VET:-}" ] || go vet "$PKG/suite"   # +25 s cold; the compile type-checks anyway
go test -c -o "$OUT/graphtest.test" "$PKG/suite"
echo "built: $OUT/graphtest.test (moby $DOCKER_SRC_VERSION)"
