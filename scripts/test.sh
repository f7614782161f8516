#!/usr/bin/env bash
# Runs the test suite: installs the Debian packages the integration tests start (redis-server,
# redis-sentinel, redis-tools) if missing, then runs every test. The tests start their own
# Redis nodes and sentinels on free ports in temp dirs; nothing else needs to be running.
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh --test failover`).
set -euo pipefail
cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."
# iproute2 and nftables: the network-namespace fault tests (tests/faults_net.rs).
deploy/local/ensure-packages.sh iproute2 nftables
command -v prlimit >/dev/null 2>&1 || deploy/local/ensure-packages.sh util-linux
# openssl: the TLS tests make their certificates with it (tests/support/tls.rs).
command -v openssl >/dev/null 2>&1 || deploy/local/ensure-packages.sh openssl
# chromium: the status page is loaded in headless Chromium (tests/status_page.rs).
command -v chromium >/dev/null 2>&1 || deploy/local/ensure-packages.sh chromium
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --locked "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "total: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
