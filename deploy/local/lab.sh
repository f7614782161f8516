#!/usr/bin/env bash
# The seed's Redis HA topology on loopback: node1..3 (:16300 :26300 :36300) and sentinel1..3
# (:16355 :26355 :36355) watching master group redis-ha with quorum 2.
#
#   lab.sh start [--fresh]   start whatever is not running; --fresh wipes the work dir first
#   lab.sh stop              stop all six processes
#   lab.sh status            each node's role, each sentinel's view; exit 3 if any is down
#   lab.sh kill-master [--no-wait]
#                            kill -9 the node the sentinels name as master, wait for a new one
#   lab.sh restart NAME      restart node1..3 (not the master) or sentinel1..3, wait till rejoined
#
# Work dir: $LAB_DIR, default ${XDG_RUNTIME_DIR:-/tmp}/redis-failover-proxy-lab, one
# subdirectory per process holding its config, pid file, log and data.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
LAB_DIR=${LAB_DIR:-${XDG_RUNTIME_DIR:-/tmp}/redis-failover-proxy-lab}
HOST=127.0.0.1
MASTER_NAME=redis-ha
NODES=(node1 node2 node3)
SENTINELS=(sentinel1 sentinel2 sentinel3)
declare -A PORT=(
    [node1]=16300 [node2]=26300 [node3]=36300
    [sentinel1]=16355 [sentinel2]=26355 [sentinel3]=36355
)
# Seconds. Start-up takes ~2 s (sentinels discover each other through 2 s hello messages);
# a failover takes down-after-milliseconds (5 s) plus an election, usually under 10 s; a
# restarted old master is converted to a replica only after ~8-10 s of reporting itself master.
START_TIMEOUT=${LAB_START_TIMEOUT:-30}
FAILOVER_TIMEOUT=${LAB_FAILOVER_TIMEOUT:-30}
REJOIN_TIMEOUT=${LAB_REJOIN_TIMEOUT:-45}

say() { printf '%s\n' "$*" >&2; }
die() { say "lab: $*"; exit 1; }
now_ms() { date +%s%3N; }

# A stopped (SIGSTOP) or wedged process must not hang the script, hence the timeout.
rcli() {
    local port=$1
    shift
    timeout 2 redis-cli -h "$HOST" -p "$port" --raw "$@" 2>/dev/null
}

dir_of() { printf '%s/%s' "$LAB_DIR" "$1"; }
log_of() { printf '%s/%s/%s.log' "$LAB_DIR" "$1" "$1"; }
pidfile_of() { printf '%s/%s/%s.pid' "$LAB_DIR" "$1" "$1"; }
is_sentinel() { [[ $1 == sentinel* ]]; }

# Prints the pid of NAME if it is alive and still a redis process; a stale pid file after
# kill -9, a not yet reaped zombie, or a recycled pid must not be mistaken for our process.
pid_of() {
    local pidfile pid stat comm
    pidfile=$(pidfile_of "$1")
    [[ -r $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    read -r stat comm < <(ps -o stat=,comm= -p "$pid" 2>/dev/null) || return 1
    [[ $stat != Z* && $comm == redis* ]] || return 1
    printf '%s' "$pid"
}

not_running() { ! pid_of "$1" >/dev/null; }

answers_ping() { [[ $(rcli "${PORT[$1]}" PING) == PONG ]]; }

# Prints one field of SENTINEL MASTER (a flat list of name/value lines with --raw).
sentinel_field() {
    rcli "$1" SENTINEL MASTER "$MASTER_NAME" |
        awk -v f="$2" 'NR % 2 == 1 && $0 == f { getline; print; exit }'
}

# Prints host:port of the master according to the sentinel on PORT.
sentinel_master_addr() {
    rcli "$1" SENTINEL GET-MASTER-ADDR-BY-NAME "$MASTER_NAME" | paste -sd: -
}

# Prints the master address the first answering sentinel reports.
any_sentinel_master_addr() {
    local s addr
    for s in "${SENTINELS[@]}"; do
        addr=$(sentinel_master_addr "${PORT[$s]}") || continue
        [[ $addr == *:* ]] && { printf '%s' "$addr"; return 0; }
    done
    return 1
}

node_for_addr() {
    local n
    for n in "${NODES[@]}"; do
        [[ $1 == "$HOST:${PORT[$n]}" ]] && { printf '%s' "$n"; return 0; }
    done
    return 1
}

# True once the sentinel knows the master, both other sentinels and both replicas: only then
# can it take part in a failover, so a demo right after start cannot fail for lack of votes.
sentinel_ready() {
    local port=${PORT[$1]} addr
    addr=$(sentinel_master_addr "$port") || return 1
    [[ $addr == *:* ]] || return 1
    [[ $(sentinel_field "$port" num-other-sentinels) -ge 2 ]] || return 1
    [[ $(sentinel_field "$port" num-slaves) -ge 2 ]] || return 1
}

# True if NAME reports the replica role, attached to MASTER_ADDR with the link up.
replica_of() {
    local role
    mapfile -t role < <(rcli "${PORT[$1]}" ROLE)
    [[ ${role[0]:-} == slave && "${role[1]:-}:${role[2]:-}" == "$2" && ${role[3]:-} == connected ]]
}

# wait_for TIMEOUT_S NAME DESCRIPTION COMMAND...: polls COMMAND every 0.1 s; on timeout prints
# what was awaited and the tail of NAME's log, then exits.
wait_for() {
    local timeout=$1 name=$2 what=$3 deadline
    shift 3
    deadline=$(($(now_ms) + timeout * 1000))
    until "$@"; do
        if (($(now_ms) >= deadline)); then
            say "lab: timed out after ${timeout}s waiting for $name: $what"
            say "--- last lines of $(log_of "$name") ---"
            tail -n 20 "$(log_of "$name")" >&2 2>/dev/null || say "(no log)"
            exit 1
        fi
        sleep 0.1
    done
}

start_one() {
    local name=$1 dir
    dir=$(dir_of "$name")
    # Already ours and running: the caller's wait for PING covers a node still loading.
    pid_of "$name" >/dev/null && return 0
    if answers_ping "$name"; then
        die "something not started by this lab answers on :${PORT[$name]} (where $name belongs)"
    fi
    mkdir -p "$dir"
    # Sentinel rewrites its config (and, after a failover, the nodes' too), so a copy that
    # already exists holds the lab's current topology and must not be overwritten.
    [[ -e $dir/$name.conf ]] || cp "$HERE/$name.conf" "$dir/$name.conf"
    local -a mode=()
    is_sentinel "$name" && mode=(--sentinel)
    # `dir .` in the configs is relative to the working directory, hence the cd.
    (cd "$dir" && redis-server "$dir/$name.conf" "${mode[@]}" \
        --daemonize yes --pidfile "$(pidfile_of "$name")" --logfile "$(log_of "$name")") ||
        die "$name failed to start; see $(log_of "$name")"
    say "started $name on :${PORT[$name]}"
}

all_answer() {
    local name
    for name in "${NODES[@]}" "${SENTINELS[@]}"; do
        pid_of "$name" >/dev/null && answers_ping "$name" || return 1
    done
}

cmd_start() {
    local fresh=0 name master
    case ${1:-} in
    --fresh) fresh=1 ;;
    "") ;;
    *) die "usage: lab.sh start [--fresh]" ;;
    esac
    # shellcheck source=ensure-packages.sh
    source "$HERE/ensure-packages.sh"
    ensure_packages || die "redis-server, redis-sentinel and redis-cli are needed"
    if ((fresh)); then
        # LAB_DIR comes from the environment: never wipe a directory this script did not make.
        [[ -z $(ls -A -- "$LAB_DIR" 2>/dev/null) || -e $LAB_DIR/.redis-failover-proxy-lab ]] ||
            die "$LAB_DIR is not empty and not a lab work dir; refusing to wipe it"
        cmd_stop
        rm -rf -- "$LAB_DIR"
    elif all_answer; then
        say "lab already running in $LAB_DIR"
        return 0
    fi
    mkdir -p "$LAB_DIR"
    touch "$LAB_DIR/.redis-failover-proxy-lab"
    # Nodes first, so each sentinel's first INFO from the master already lists both replicas.
    for name in "${NODES[@]}"; do
        start_one "$name"
        wait_for "$START_TIMEOUT" "$name" "PING on :${PORT[$name]}" answers_ping "$name"
    done
    for name in "${SENTINELS[@]}"; do
        start_one "$name"
        wait_for "$START_TIMEOUT" "$name" "PING on :${PORT[$name]}" answers_ping "$name"
    done
    for name in "${SENTINELS[@]}"; do
        wait_for "$START_TIMEOUT" "$name" \
            "master $MASTER_NAME with 2 other sentinels and 2 replicas" sentinel_ready "$name"
    done
    master=$(any_sentinel_master_addr)
    # A replica still syncing cannot be promoted, so a kill-master right after start would
    # find nothing to fail over to. After an unclean stop a node may come up as a stale
    # master; the sentinels demote it, which the longer rejoin timeout allows for.
    for name in "${NODES[@]}"; do
        [[ $master == "$HOST:${PORT[$name]}" ]] ||
            wait_for "$REJOIN_TIMEOUT" "$name" "replica of $master with the link up" \
                replica_of "$name" "$master"
    done
    say "lab running in $LAB_DIR; master $MASTER_NAME is $master"
}

stop_one() {
    local name=$1 pid deadline
    pid=$(pid_of "$name") || { rm -f -- "$(pidfile_of "$name")"; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$(($(now_ms) + 10000))
    while kill -0 "$pid" 2>/dev/null; do
        if (($(now_ms) >= deadline)); then
            say "lab: $name (pid $pid) ignored SIGTERM for 10s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        sleep 0.1
    done
    rm -f -- "$(pidfile_of "$name")"
    say "stopped $name"
}

cmd_stop() {
    local name
    # Sentinels first: stopping the master under running sentinels would start a failover.
    for name in "${SENTINELS[@]}" "${NODES[@]}"; do
        stop_one "$name"
    done
}

cmd_status() {
    local name port pid role_text down=0 addr
    local -a role
    printf '%-10s %-6s %-8s %s\n' NAME PORT PID ROLE
    for name in "${NODES[@]}"; do
        port=${PORT[$name]}
        pid=$(pid_of "$name") || pid=-
        mapfile -t role < <(rcli "$port" ROLE)
        case ${role[0]:-} in
        master) role_text="master, $(((${#role[@]} - 2) / 3)) replica(s) attached" ;;
        slave) role_text="replica of ${role[1]}:${role[2]}, link ${role[3]}" ;;
        "") role_text="DOWN"; down=1 ;;
        *) role_text=${role[0]} ;;
        esac
        printf '%-10s %-6s %-8s %s\n' "$name" "$port" "$pid" "$role_text"
    done
    for name in "${SENTINELS[@]}"; do
        port=${PORT[$name]}
        pid=$(pid_of "$name") || pid=-
        if addr=$(sentinel_master_addr "$port") && [[ $addr == *:* ]]; then
            role_text="master $MASTER_NAME at $addr"
            role_text+=", $(sentinel_field "$port" num-other-sentinels) other sentinels"
            role_text+=", $(sentinel_field "$port" num-slaves) replicas known"
            role_text+=", flags $(sentinel_field "$port" flags)"
        else
            role_text="DOWN"
            down=1
        fi
        printf '%-10s %-6s %-8s %s\n' "$name" "$port" "$pid" "$role_text"
    done
    ((down == 0)) || return 3
}

cmd_kill_master() {
    local wait=1 addr name pid t0 new s
    case ${1:-} in
    --no-wait) wait=0 ;;
    "") ;;
    *) die "usage: lab.sh kill-master [--no-wait]" ;;
    esac
    addr=$(any_sentinel_master_addr) || die "no sentinel answers; is the lab running?"
    name=$(node_for_addr "$addr") || die "sentinels name $addr, which is not a lab node"
    pid=$(pid_of "$name") ||
        die "$name ($addr) is already down; a failover is probably in progress (see status)"
    kill -KILL "$pid"
    t0=$(now_ms)
    # Until it is gone, a second kill-master would find the same node and "kill" it again.
    wait_for 5 "$name" "exit after SIGKILL" not_running "$name"
    say "killed $name ($addr, pid $pid) with SIGKILL"
    ((wait)) || return 0
    # The first sentinel to report a new address is what a client polling sentinels would see.
    new_master_reported() {
        for s in "${SENTINELS[@]}"; do
            new=$(sentinel_master_addr "${PORT[$s]}") || continue
            [[ $new == *:* && $new != "$addr" ]] && return 0
        done
        return 1
    }
    wait_for "$FAILOVER_TIMEOUT" sentinel1 "a sentinel to report a master other than $addr" \
        new_master_reported
    say "$s reports new master $new ($(node_for_addr "$new")) after $(($(now_ms) - t0)) ms"
}

cmd_restart() {
    local name=${1:-} master
    [[ -n $name && -n ${PORT[$name]:-} ]] ||
        die "usage: lab.sh restart NAME (one of ${NODES[*]} ${SENTINELS[*]})"
    [[ -e $(dir_of "$name")/$name.conf ]] || die "$name has never run here; use lab.sh start"
    master=$(any_sentinel_master_addr) || master=
    if [[ $master == "$HOST:${PORT[$name]}" ]] && pid_of "$name" >/dev/null; then
        # Persistence is off: back within down-after-milliseconds, before any failover, it
        # would be an empty master, and its replicas would resync to the empty data set.
        say "lab: $name is the master; move the role first: lab.sh kill-master,"
        die "or redis-cli -p ${PORT[sentinel1]} SENTINEL FAILOVER $MASTER_NAME"
    fi
    stop_one "$name"
    start_one "$name"
    wait_for "$START_TIMEOUT" "$name" "PING on :${PORT[$name]}" answers_ping "$name"
    if is_sentinel "$name"; then
        wait_for "$START_TIMEOUT" "$name" \
            "master $MASTER_NAME with 2 other sentinels and 2 replicas" sentinel_ready "$name"
        return 0
    fi
    master=$(any_sentinel_master_addr) || {
        say "no sentinel answers; not waiting for a role"
        return 0
    }
    if [[ $master == "$HOST:${PORT[$name]}" ]]; then
        say "$name is the master sentinels name"
        return 0
    fi
    # A node restarted from its own config may come back as a master (an old master's file
    # has no replicaof); the sentinels demote it once it has reported that role for a while.
    wait_for "$REJOIN_TIMEOUT" "$name" "replica of $master with the link up" \
        replica_of "$name" "$master"
    say "$name is a replica of $master"
}

case ${1:-} in
start) shift; cmd_start "$@" ;;
stop) cmd_stop ;;
status) cmd_status ;;
kill-master) shift; cmd_kill_master "$@" ;;
restart) shift; cmd_restart "$@" ;;
*)
    sed -n '5,11s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
    exit 2
    ;;
esac
