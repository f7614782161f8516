#!/usr/bin/env bash
# The benchmark: direct vs redis-failover-proxy vs HAProxy on one machine, in one run.
#
#   bench/run.sh [--quick] [--keep] [--rounds N] [--idle N] [--fence N[,N...]]
#                [--fence-repeats N] [--timeline 0|1] [--pinned 0|1] [--uring 0|1] [--tls 0|1]
#                [--tls-rounds N] [--haltpoll 0|1] [--out DIR]
#
#   --quick       1 round, tiny request counts, 500 idle sessions, one short timeline; writes
#                 to target/bench-quick/ unless --out is given (the committed results are
#                 never overwritten by it)
#   --keep        keep the work dir (logs, configs) instead of deleting it
#   --rounds N    rounds of the interleaved runs (default 7, quick 1; 0 = skip); every round
#                 runs direct, proxy, HAProxy and HAProxy (tuned) in turn per scenario
#   --idle N      idle sessions to open through each middle box (default 10000, quick 500;
#                 0 = skip); capped at what the fd limit allows
#   --fence N,... sessions open across a SENTINEL FAILOVER in a 3-node + 3-sentinel topology,
#                 one fresh group per size (default 1000,10000, quick 100; 0 = skip); capped
#                 at what the fd limit allows (the report says so); right after each fence
#                 every closed client reconnects at once (the reconnect storm)
#   --fence-repeats N  failovers per size on the same group, the first one also through
#                 HAProxy, the others through the proxy only (default 3, quick 1)
#   --timeline 0|1  failover timeline: SET traffic through the proxy with and without its hold
#                 and through HAProxy across a SENTINEL FAILOVER and a kill -9 of the master
#                 (quick: the SENTINEL FAILOVER only); writes timeline.md and timeline-*.svg
#                 (default 1)
#   --pinned 0|1  also run the proxy with `[runtime] pin_threads = true` and HAProxy with
#                 `cpu-map auto:1/1-N <CPUs>` in the c=50 P=1 and P=16 scenarios, in the same
#                 rounds; a "Pinned threads" table in latest.md (default 1, also with --quick)
#   --uring 0|1   also run the proxy with `[runtime] engine = "io_uring"` in every scenario of
#                 the rounds, after the others; its own rows in the targets table and an
#                 "io_uring engine" section in latest.md (default 1, also with --quick). Where
#                 the kernel refuses io_uring, the proxy falls back to epoll or the binary has
#                 no `engine` key, its rows read "not measured (reason)"; the run goes on
#   --tls 0|1     mutual TLS to the master: redis-benchmark --tls direct vs the proxy (`[tls]`)
#                 vs HAProxy (`ssl verify required`), c=50 P=1 and P=16 and c=1 latency, on a
#                 TLS-only redis-server and sentinel; writes tls.md and tls.csv, and a "TLS"
#                 section in latest.md (default 1, also with --quick)
#   --tls-rounds N  rounds of the TLS scenario (default: --rounds; 0 = skip). Only the TLS
#                 scenario: --rounds 0 --idle 0 --fence 0 --timeline 0 --tls-rounds 5
#   --haltpoll 0|1  on a KVM guest whose halt polling is off (guest_halt_poll_ns = 0, e.g.
#                 Firecracker), run the c=1 scenario once more per round with it on (200 us,
#                 the kernel's default) through direct, proxy and both HAProxies, then switch
#                 it back off: how much of the added latency is the vCPU's halt and wakeup.
#                 Needs root; skipped (and said why) elsewhere (default 1)
#   --out DIR     where latest.md, latest.csv, summary.md (the targets' table), the timeline
#                 and the tls files go (default bench/results/). A run of only the timeline
#                 (--rounds 0 --idle 0 --fence 0) or only the TLS scenario leaves latest.md,
#                 latest.csv and summary.md alone.
#
# Installs redis-server/redis-sentinel/redis-tools and haproxy from Debian's packages if
# missing, builds the proxy in release, starts its own redis-server, sentinel, proxy and
# HAProxy on free loopback ports in a temp dir, and stops them all on exit (also on Ctrl-C).
# RFP_BENCH_BIN=PATH uses that proxy binary instead of building one (the smoke test does). A
# binary that refuses the TLS scenario's config (no `[tls]` support) or does not get ready is
# reported there as "proxy: not available (reason)"; the rest of the run goes on. Builds
# bench/timeline/ (its own crate): the failover timeline's load and plot, and `timeline rtt`,
# the client of the c=1 scenario (every request timed alone, microsecond resolution).
# See bench/README.md for what each scenario measures.
set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd -- "$ROOT"

quick=0 keep=0 timeline=1 tls=1 out=""
py_args=()
while (($#)); do
    case $1 in
    --quick) quick=1; py_args+=(--quick) ;;
    --keep) keep=1 ;;
    --rounds | --idle | --fence | --fence-repeats) [[ $# -ge 2 ]] || { echo "bench: $1 needs a value" >&2; exit 2; }
        py_args+=("$1" "$2"); shift ;;
    --timeline) [[ ${2:-} == [01] ]] || { echo "bench: --timeline takes 0 or 1" >&2; exit 2; }
        timeline=$2; shift ;;
    --pinned) [[ ${2:-} == [01] ]] || { echo "bench: --pinned takes 0 or 1" >&2; exit 2; }
        py_args+=(--pinned "$2"); shift ;;
    --uring) [[ ${2:-} == [01] ]] || { echo "bench: --uring takes 0 or 1" >&2; exit 2; }
        py_args+=(--uring "$2"); shift ;;
    --tls) [[ ${2:-} == [01] ]] || { echo "bench: --tls takes 0 or 1" >&2; exit 2; }
        tls=$2; py_args+=(--tls "$2"); shift ;;
    --haltpoll) [[ ${2:-} == [01] ]] || { echo "bench: --haltpoll takes 0 or 1" >&2; exit 2; }
        py_args+=(--haltpoll "$2"); shift ;;
    --tls-rounds) [[ $# -ge 2 ]] || { echo "bench: $1 needs a value" >&2; exit 2; }
        py_args+=("$1" "$2"); shift ;;
    --out) [[ $# -ge 2 ]] || { echo "bench: --out needs a value" >&2; exit 2; }
        out=$2; shift ;;
    -h | --help) sed -n '2,59s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "bench: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if [[ -z $out ]]; then
    if ((quick)); then out=$ROOT/target/bench-quick; else out=$ROOT/bench/results; fi
fi

# 10,000 idle sessions need 10,000 client sockets here, 20,000 in the proxy and in HAProxy
# and 10,000 in redis-server; every child inherits this limit.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if (($(ulimit -n) < 25000)); then
    echo "bench: fd limit $(ulimit -n) (hard limit); fewer idle sessions will be opened" >&2
fi

if ((tls)); then
    deploy/local/ensure-packages.sh haproxy openssl
else
    deploy/local/ensure-packages.sh haproxy
fi

if [[ -n ${RFP_BENCH_BIN:-} ]]; then
    bin=$RFP_BENCH_BIN
else
    cargo build --release --locked
    bin=$ROOT/target/release/redis-failover-proxy
fi
[[ -x $bin ]] || { echo "bench: no proxy binary at $bin" >&2; exit 1; }
py_args+=(--timeline "$timeline")

# The timeline's load generator and plotter, and the c=1 scenario's client (`timeline rtt`):
# a crate of its own (own workspace and lock file), so it adds nothing to the proxy's
# dependencies; built even with RFP_BENCH_BIN.
CARGO_TARGET_DIR=$ROOT/target/bench-timeline \
    cargo build --release --locked --quiet --manifest-path "$ROOT/bench/timeline/Cargo.toml"
py_args+=(--timeline-bin "$ROOT/target/bench-timeline/release/timeline")

work=$(mktemp -d "${TMPDIR:-/tmp}/rfp-bench.XXXXXX")
py_pid=""
cleanup() {
    local status=$? pid
    trap - EXIT INT TERM HUP
    # Not errexit here: a failing kill or wait must not skip the rest of the cleanup.
    set +e
    if [[ -n $py_pid ]] && kill -TERM "$py_pid" 2>/dev/null; then
        wait "$py_pid" 2>/dev/null
    fi
    # The guest's halt polling, if the driver switched it on for its c=1 pass and was killed
    # before it could switch it back off (--haltpoll).
    if [[ -e $work/halt-poll-on ]]; then
        echo 0 >/sys/module/haltpoll/parameters/guest_halt_poll_ns
    fi
    # Whatever the driver started and could not stop itself (e.g. it was killed -9).
    if [[ -r $work/pids ]]; then
        while read -r pid; do
            kill -KILL "$pid" 2>/dev/null || true
        done <"$work/pids"
    fi
    if ((keep)); then
        echo "bench: work dir kept: $work" >&2
    else
        rm -rf -- "$work"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# In the background plus `wait`, so a signal to this script runs the trap at once.
python3 "$ROOT/bench/bench.py" --work "$work" --bin "$bin" --out "$out" --repo "$ROOT" \
    "${py_args[@]}" &
py_pid=$!
wait "$py_pid"
