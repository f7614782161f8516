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
# supervisor: tests/deploy.rs runs deploy/supervisord/ under Debian's supervisord.
command -v supervisord >/dev/null 2>&1 || deploy/local/ensure-packages.sh supervisor
# chromium: the status page is loaded in headless Chromium (tests/status_page.rs).
command -v chromium >/dev/null 2>&1 || deploy/local/ensure-packages.sh chromium
# redis-py (tests/redis_py.rs), pinned, for the python3 on PATH, only if it is missing.
python3 -c 'import redis' 2>/dev/null || PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet 'redis==8.1.0' || echo "redis-py not installed: tests/redis_py.rs will skip"
log=$(mktemp)
# Tests that skip themselves (a missing capability) append "<test>: <why>" here.
export RFP_SKIP_LOG
RFP_SKIP_LOG=$(mktemp)
trap 'rm -f "$log" "$RFP_SKIP_LOG"' EXIT
set +e
cargo test --locked "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# The suites that carry bytes, once more on the io_uring session engine (runtime.engine; it
# falls back to epoll, with a warning, where the kernel has no io_uring). Only in a whole run:
# arguments choose tests themselves. RFP_TEST_ENGINES= (empty) leaves this out.
if [[ $# -eq 0 ]]; then
    for engine in ${RFP_TEST_ENGINES-io_uring}; do
        echo "== the data-path suites again with runtime.engine = \"$engine\""
        RFP_TEST_ENGINE=$engine cargo test --locked --test behaviour --test last_reply \
            --test failover --test write_loss --test redis_py --test faults_local 2>&1 | tee -a "$log"
        [[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
    done
fi
set -e
# One closing line for the whole run, summed over every test binary. A test that skipped itself
# (a missing capability) reports "ok" to cargo; it is counted as skipped here, not passed, and
# listed with its reason. "skipped" also counts tests marked #[ignore].
if [[ -s $RFP_SKIP_LOG ]]; then
    echo "skipped, with the reason:"
    sed 's/^/  /' "$RFP_SKIP_LOG"
fi
whole=$(grep -cv ' (in part): ' "$RFP_SKIP_LOG" || true)
parts=$(grep -c ' (in part): ' "$RFP_SKIP_LOG" || true)
awk -v whole="$whole" -v parts="$parts" '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "total: %d passed, %d failed, %d skipped", p - whole, f, s + whole;
           if (parts > 0) printf " (and %d passed with a part skipped)", parts; printf "\n" }' "$log"
exit "$status"
