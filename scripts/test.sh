#!/usr/bin/env bash
# Runs the test suite: installs the Debian packages the integration tests start (redis-server,
# redis-sentinel, redis-tools) if missing, then runs every test. The tests start their own
# Redis nodes and sentinels on free ports in temp dirs; nothing else needs to be running.
set -euo pipefail
cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."
deploy/local/ensure-packages.sh
command -v prlimit >/dev/null 2>&1 || deploy/local/ensure-packages.sh util-linux
exec cargo test --locked "$@"
