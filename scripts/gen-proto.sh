#!/usr/bin/env bash
# Regenerates src/snapshotter/proto/ from proto/ with ts-proto (committed output;
# builds and CI never need protoc). Needs: apt-get install -y protobuf-compiler libprotobuf-dev
set -euo pipefail
cd "$(dirname "$0")/.."
out=src/snapshotter/proto
rm -rf "$out" && mkdir -p "$out"
protoc \
  --plugin=protoc-gen-ts_proto=node_modules/.bin/protoc-gen-ts_proto \
  --ts_proto_out="$out" \
  --ts_proto_opt=outputServices=grpc-js,esModuleInterop=true,importSuffix=.js,forceLong=number,useDate=false,env=node,useOptionals=none \
  -I proto -I /usr/include \
  proto/containerd/types/mount.proto proto/containerd/services/snapshots/v1/snapshots.proto
echo "generated into $out"
