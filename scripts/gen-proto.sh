#!/usr/bin/env bash
# Regenerates the gRPC code from proto/ with ts-proto (committed output; builds
# and CI never need protoc):
#   src/snapshotter/proto/  containerd's Snapshots API
#   src/csi/proto/          the CSI subset (csi.v1 Identity + Node)
# Needs: apt-get install -y protobuf-compiler libprotobuf-dev
set -euo pipefail
cd "$(dirname "$0")/.."
opts=outputServices=grpc-js,esModuleInterop=true,importSuffix=.js,forceLong=number,useDate=false,env=node,useOptionals=none
gen() {
  local out=$1
  shift
  rm -rf "$out" && mkdir -p "$out"
  protoc \
    --plugin=protoc-gen-ts_proto=node_modules/.bin/protoc-gen-ts_proto \
    --ts_proto_out="$out" \
    --ts_proto_opt="$opts" \
    -I proto -I /usr/include \
    "$@"
  echo "generated into $out"
}
gen src/snapshotter/proto proto/containerd/types/mount.proto proto/containerd/services/snapshots/v1/snapshots.proto
gen src/csi/proto proto/csi/v1/csi.proto
