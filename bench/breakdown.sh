#!/usr/bin/env bash
# Where a request's cost goes in each middle box: system calls per request (strace -c) and
# where the CPU time is spent (perf, software clock; kernel and user symbols), for the proxy
# (default [runtime], and with busy_poll) and HAProxy, at c=1 and at c=50 P=1 GET.
#
#   bench/breakdown.sh [--requests N] [--out FILE]
#
#   --requests N  requests per measurement (default 30000)
#   --out FILE    write the report there too (default bench/results/breakdown.md)
#
# Not a benchmark: strace slows every system call down, so only its counts are read, never
# its times; perf samples a software clock (no hardware counters on most VMs). Installs
# redis-server, redis-tools, haproxy, strace and linux-perf from Debian's packages if missing;
# RFP_BENCH_BIN=PATH uses that proxy binary instead of a release build. Runs as root (perf
# and strace attach to the running middle boxes).
set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd -- "$ROOT"
requests=30000 out=$ROOT/bench/results/breakdown.md
while (($#)); do
    case $1 in
    --requests) requests=$2; shift ;;
    --out) out=$2; shift ;;
    -h | --help) sed -n '2,17s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "breakdown: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

deploy/local/ensure-packages.sh haproxy
command -v strace >/dev/null || apt-get install -y strace
command -v perf >/dev/null || apt-get install -y linux-perf
if [[ -n ${RFP_BENCH_BIN:-} ]]; then
    bin=$RFP_BENCH_BIN
else
    cargo build --release --locked
    bin=$ROOT/target/release/redis-failover-proxy
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/rfp-breakdown.XXXXXX")
pids=()
cleanup() {
    set +e
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    rm -rf -- "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_pong() {
    local i
    for i in $(seq 100); do
        [[ $(redis-cli -p "$1" PING 2>/dev/null) == PONG ]] && return 0
        sleep 0.1
    done
    echo "breakdown: nothing answers PING on :$1" >&2
    exit 1
}

rport=$(free_port) sport=$(free_port)
redis-server --bind 127.0.0.1 --port "$rport" --save '' --appendonly no --dir "$work" \
    --logfile "$work/redis.log" &
pids+=($!)
wait_pong "$rport"
printf 'bind 127.0.0.1\nport %s\ndir %s\nsentinel monitor bd 127.0.0.1 %s 1\nsentinel down-after-milliseconds bd 600000\n' \
    "$sport" "$work" "$rport" >"$work/sentinel.conf"
redis-server "$work/sentinel.conf" --sentinel --logfile "$work/sentinel.log" &
pids+=($!)
wait_pong "$sport"

declare -A port pid
start_proxy() { # name, [runtime] lines
    local name=$1 p a
    p=$(free_port) a=$(free_port)
    printf '[[route]]\nmax_connections = 50000\n%s' "$2" >"$work/$name.toml"
    RUST_LOG=warn "$bin" --config "$work/$name.toml" --listen "127.0.0.1:$p" --admin "127.0.0.1:$a" \
        --master bd --sentinel "127.0.0.1:$sport" 2>"$work/$name.log" &
    pids+=($!)
    port[$name]=$p pid[$name]=$!
    wait_pong "$p"
}
start_proxy proxy ""
start_proxy "proxy_busy_poll" $'[runtime]\nbusy_poll = "200us"\n'
hport=$(free_port)
cat >"$work/haproxy.cfg" <<EOF
global
    maxconn 5000
defaults
    mode tcp
    timeout connect 1s
    timeout client 1h
    timeout server 1h
frontend f
    bind 127.0.0.1:$hport
    default_backend b
backend b
    option tcp-check
    tcp-check send PING\r\n
    tcp-check expect string +PONG
    tcp-check send info\ replication\r\n
    tcp-check expect string role:master
    tcp-check send QUIT\r\n
    tcp-check expect string +OK
    server node1 127.0.0.1:$rport check inter 1s
EOF
haproxy -db -f "$work/haproxy.cfg" &
pids+=($!)
port[HAProxy]=$hport pid[HAProxy]=$!
wait_pong "$hport"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
report=$work/report.md
{
    echo "# Where a request's cost goes: system calls and CPU profile per middle box"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); commit \`$(git rev-parse --short HEAD 2>/dev/null || echo '?')\`; binary \`$bin\`"
    echo "- machine: $(nproc) CPUs ($(lscpu | sed -n 's/^Model name: *//p' | head -1)), kernel $(uname -r); $(redis-server --version | cut -d' ' -f3); $(haproxy -v | head -1 | cut -d' ' -f1-3)"
    echo "- $requests GET requests per measurement (redis-benchmark, 3-byte values); \`proxy_busy_poll\`: \`[runtime] busy_poll = \"200us\"\`"
    echo
    echo "## System calls per request (strace -c -f; counts only: strace slows each call)"
    echo
    echo "| middle box | clients | calls per request (the most frequent) | total per request |"
    echo "|---|---:|---|---:|"
} >"$report"
for c in 1 50; do
    for name in proxy proxy_busy_poll HAProxy; do
        strace -c -f -p "${pid[$name]}" -o "$work/strace-$name-$c.txt" 2>/dev/null &
        sp=$!
        # strace attaches asynchronously; a few requests before it does are not counted,
        # which only lowers the counts a little.
        sleep 1
        redis-benchmark -p "${port[$name]}" -c "$c" -n "$requests" -t get -q >/dev/null
        kill -INT "$sp"
        wait "$sp" 2>/dev/null || true
        calls=$(awk -v n="$requests" '$1 ~ /^[0-9.]+$/ && NF >= 5 && $NF != "total" {
                    printf "%s %.2f\n", $NF, $4 / n }' "$work/strace-$name-$c.txt" | sort -k2 -rn)
        top=$(awk '$2 >= 0.01 { printf "%s%s %s", (k++ ? ", " : ""), $1, $2 }' <<<"$calls")
        total=$(awk '{ t += $2 } END { printf "%.2f", t }' <<<"$calls")
        echo "| $name | $c | $top | $total |" >>"$report"
    done
done

if perf record -e cpu-clock -o "$work/probe.data" -- true >/dev/null 2>&1; then
    {
        echo
        echo "## Where the CPU goes at c=50 P=1 GET (perf, cpu-clock samples of the middle box's threads)"
        echo
        echo "CPU per million requests from /proc/PID/stat (utime / stime), then the symbols with the"
        echo "most samples (self time). On a VM, time spent with interrupts off (waking another"
        echo "task, switching tasks) is sampled where they are turned back on"
        echo "(\`_raw_spin_unlock_irqrestore\`, \`finish_task_switch\`)."
    } >>"$report"
    for name in proxy proxy_busy_poll HAProxy; do
        p=${pid[$name]}
        read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$p/stat")
        perf record -e cpu-clock -F 4000 -g -p "$p" -o "$work/perf-$name.data" >/dev/null 2>&1 &
        pp=$!
        sleep 0.5
        redis-benchmark -p "${port[$name]}" -c 50 -n "$requests" -t get -q >/dev/null
        kill -INT "$pp"
        wait "$pp" 2>/dev/null || true
        read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$p/stat")
        hz=$(getconf CLK_TCK)
        {
            echo
            awk -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v hz="$hz" -v n="$requests" -v name="$name" 'BEGIN {
                printf "### %s: %.1f s user + %.1f s system per million requests (%.0f %% system)\n\n", name, u / hz / n * 1e6, s / hz / n * 1e6, (u + s) ? 100 * s / (u + s) : 0 }'
            echo '```'
            perf report -i "$work/perf-$name.data" --no-children --sort sym --stdio -g none 2>/dev/null \
                | grep -E '^ +[0-9.]+%' | sed -n '1,15p'
            echo '```'
        } >>"$report"
    done
else
    echo -e "\n(perf cannot sample here: no CPU profile)" >>"$report"
fi
mkdir -p "$(dirname -- "$out")"
cp "$report" "$out"
cat "$report"
