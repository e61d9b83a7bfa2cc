#!/bin/sh
# Build the managed (v2) Docker plugin form of the cvmfs-thin graph driver:
# OUTDIR/config.json and OUTDIR/rootfs, ready for
#
#   docker plugin create cvmfs/graphdriver OUTDIR
#   docker plugin enable cvmfs/graphdriver
#   # dockerd: "experimental": true, "storage-driver": "cvmfs/graphdriver", restart
#
# Two ways to get the root file system:
#   build-plugin.sh OUTDIR                      from this checkout and this host's node (default)
#   build-plugin.sh --from-image IMAGE OUTDIR   from the image built with the repository's Dockerfile
#                                               (docker build -t cvmfs-thin .), via docker create/export
#
# The host mode needs `npm run build` first, and copies the node binary with
# its shared libraries, the built package with its production dependencies,
# and unshare(1)/sleep(1) (user namespaces for idmapped CVMFS layers).
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
DOCKER=${DOCKER:-docker}
IMAGE=

usage() {
  echo "usage: $0 [--from-image IMAGE] OUTDIR" >&2
  exit 2
}

while [ $# -gt 0 ]; do
  case "$1" in
    --from-image) [ $# -ge 2 ] || usage; IMAGE=$2; shift 2 ;;
    -h|--help) usage ;;
    -*) usage ;;
    *) break ;;
  esac
done
[ $# -eq 1 ] || usage
OUT=$1
ROOTFS="$OUT/rootfs"

if [ -e "$ROOTFS" ]; then
  echo "$ROOTFS exists; remove it first" >&2
  exit 1
fi
mkdir -p "$ROOTFS"

if [ -n "$IMAGE" ]; then
  cid=$("$DOCKER" create "$IMAGE" true)
  trap '"$DOCKER" rm -f "$cid" >/dev/null 2>&1 || true' EXIT
  "$DOCKER" export "$cid" | tar -x -C "$ROOTFS"
else
  [ -f "$REPO/dist/cli/main.js" ] || { echo "run 'npm run build' in $REPO first" >&2; exit 1; }

  # copy a binary and the shared libraries it loads, at the same paths
  copy_bin() {
    src=$(readlink -f "$1")
    dst=$2
    mkdir -p "$ROOTFS$(dirname "$dst")"
    cp "$src" "$ROOTFS$dst"
    ldd "$src" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' | while read -r lib; do
      real=$(readlink -f "$lib")
      mkdir -p "$ROOTFS$(dirname "$lib")"
      [ -e "$ROOTFS$lib" ] || cp "$real" "$ROOTFS$lib"
    done
  }
  copy_bin "$(command -v node)" /usr/local/bin/node
  copy_bin "$(command -v unshare)" /usr/bin/unshare
  copy_bin "$(command -v sleep)" /usr/bin/sleep
  # glibc loads these by name at run time (user/group lookups, DNS are not used by the driver)
  app="$ROOTFS/opt/cvmfs-thin"
  mkdir -p "$app"
  cp -a "$REPO/bin" "$REPO/dist" "$REPO/package.json" "$REPO/package-lock.json" "$app/"
  for d in proto thin-image; do [ -d "$REPO/$d" ] && cp -a "$REPO/$d" "$app/"; done
  cp -a "$REPO/node_modules" "$app/"
  (cd "$app" && npm prune --omit=dev --offline --no-audit --no-fund --ignore-scripts >/dev/null)
  rm -f "$app/package-lock.json"
fi

mkdir -p "$ROOTFS/mnt" "$ROOTFS/cvmfs" "$ROOTFS/run/docker/plugins" "$ROOTFS/proc" "$ROOTFS/sys" "$ROOTFS/dev" "$ROOTFS/etc" "$ROOTFS/tmp"
chmod 1777 "$ROOTFS/tmp"
[ -e "$ROOTFS/etc/passwd" ] || echo 'root:x:0:0:root:/root:/bin/sh' > "$ROOTFS/etc/passwd"
[ -e "$ROOTFS/etc/group" ] || echo 'root:x:0:' > "$ROOTFS/etc/group"

if [ -n "$IMAGE" ]; then
  # the image keeps the app in /opt/cvmfs-thin and node in /usr/local/bin (Dockerfile)
  [ -x "$ROOTFS/usr/local/bin/node" ] || { echo "$IMAGE has no /usr/local/bin/node" >&2; exit 1; }
fi
cp "$HERE/config.json" "$OUT/config.json"
echo "plugin in $OUT ($(du -sh "$ROOTFS" | cut -f1)); next: $DOCKER plugin create cvmfs/graphdriver $OUT" >&2
