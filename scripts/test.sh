#!/usr/bin/env bash
# The test command: installs what is missing (scripts/setup.sh), then runs every
# test (unit, root, real containerd/dockerd/registry end-to-end, containerd's own
# snapshotter conformance suite). Writes vitest.json (the JSON report).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
npx vitest run --reporter=default --reporter=json --outputFile.json=vitest.json "$@"
