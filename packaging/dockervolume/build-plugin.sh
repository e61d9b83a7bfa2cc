#!/bin/sh
# Build the managed (v2) Docker plugin form of the cvmfs-thin volume plugin:
# OUTDIR/config.json and OUTDIR/rootfs, ready for
#
#   docker plugin create cvmfs/volume OUTDIR
#   docker plugin set cvmfs/volume cvmfs.source=/cvmfs args="--allowed-repository *.cern.ch"
#   docker plugin enable cvmfs/volume
#   docker run -v cms.cern.ch:/cvmfs/cms.cern.ch --volume-driver cvmfs/volume ...
#
# The root file system is the graph driver plugin's (same node, same package):
# this calls ../graphdriver/build-plugin.sh with the same arguments
# ([--from-image IMAGE] OUTDIR), then puts the volume plugin's config.json in
# place and creates its PropagatedMount directory. Mounts made below it
# (/var/lib/cvmfs-thin/volumes/mounts/<volume>) appear on the host under
# <docker data-root>/plugins/<id>/propagated-mount/, which is what dockerd
# binds into containers; they survive plugin restarts and upgrades.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
[ $# -ge 1 ] || { echo "usage: $0 [--from-image IMAGE] OUTDIR" >&2; exit 2; }
for OUT in "$@"; do :; done

sh "$HERE/../graphdriver/build-plugin.sh" "$@"
mkdir -p "$OUT/rootfs/var/lib/cvmfs-thin/volumes/mounts" "$OUT/rootfs/dev"
cp "$HERE/config.json" "$OUT/config.json"
echo "plugin in $OUT; next: docker plugin create cvmfs/volume $OUT" >&2
