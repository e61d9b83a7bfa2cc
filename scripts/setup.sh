#!/usr/bin/env bash
# Installs what cvmfs-thin's demo and tests need on Debian 12 (idempotent; run as root):
# the Debian packages (containerd, runc, docker.io, docker-registry, Go + containerd's
# Go sources for the conformance suite and moby's for its graph driver suite, umoci,
# skopeo, busybox-static, attr, zstd),
# the npm dependencies (npm ci, which also builds dist/), and the containerd
# conformance suite from ../shared/containerd-testsuite when it is there.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(containerd runc busybox-static docker.io docker-registry umoci skopeo attr zstd tar gzip
      golang-go golang-github-containerd-containerd-dev golang-github-gotestyourself-gotest.tools-dev
      golang-github-docker-docker-dev golang-github-vbatts-tar-split-dev dpkg-dev
      systemd patch diffutils libc-bin podman fuse-overlayfs)
missing=()
for p in "${PKGS[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then echo "setup: need root to install: ${missing[*]}" >&2; exit 1; fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
npm run build --silent

suite=../shared/containerd-testsuite
if [ -d "$suite" ] && [ ! -x /tmp/ctdts/bin/proxysuite.test ]; then
  sh "$suite/build.sh"
fi

# Docker's own graph driver suite (moby 20.10 graphtest), built offline from Debian's sources
if [ -d /usr/share/gocode/src/github.com/docker/docker/daemon/graphdriver/graphtest ] && [ ! -x /tmp/graphtest/bin/graphtest.test ]; then
  sh test/graphtest/build.sh
fi

# containerd's archive.Apply as a command, for the extractor parity tests (test/tar/apply-parity*.test.ts)
if [ -d /usr/share/gocode/src/github.com/containerd/containerd/archive ]; then
  sh test/applyparity/build.sh
fi
