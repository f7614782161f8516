#!/usr/bin/env python3
"""Benchmark driver: direct vs redis-failover-proxy vs HAProxy, interleaved, in one run.

Started by bench/run.sh (which installs packages, builds the release binary, raises the fd
limit and kills whatever this script started if it dies). Standard library only.

Every process this script starts is recorded in WORK/pids (one pid a line) before it is
waited on, so the caller's trap can kill it even after a SIGKILL of this script.
"""

import argparse
import csv
import datetime
import errno
import json
import os
import platform
import random
import re
import select
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

HOST = "127.0.0.1"
# haproxy_tuned: the canonical config plus what a careful user adds (HAPROXY_TUNED below).
TARGETS = ("direct", "proxy", "haproxy", "haproxy_tuned")
# The two HAProxy configs every target of issue 11 is judged against.
HAPROXY_CONFIGS = ("haproxy", "haproxy_tuned")
LABEL = {"direct": "direct", "proxy": "proxy", "haproxy": "HAProxy",
         "haproxy_tuned": "HAProxy (tuned)", "proxy_pinned": "proxy (pinned)",
         "haproxy_pinned": "HAProxy (cpu-map)", "proxy_busy": "proxy (busy_poll)",
         "proxy_uring": "proxy (io_uring)", "direct_hp": "direct (halt polling)",
         "proxy_hp": "proxy (halt polling)", "haproxy_hp": "HAProxy (halt polling)",
         "haproxy_tuned_hp": "HAProxy (tuned, halt polling)"}
# HAProxy (tuned): checks 4x as often, one failed check takes a server out and one passed
# check brings it in, sessions of a server marked down are closed (so clients reconnect to
# the new master instead of staying on the old one), and `balance first` sends every client
# to the first usable server instead of round-robin. start_haproxy's keywords.
HAPROXY_TUNED = {"inter": "250ms",
                 "server_extra": " fall 1 rise 1 on-marked-down shutdown-sessions",
                 "backend_extra": "    balance first\n"}
# With --pinned 1: the same two middle boxes with their threads pinned to CPUs, run only in
# these scenarios, after the four above in every round (so their ratios are from the same run).
PINNED_TARGETS = ("proxy_pinned", "haproxy_pinned")
PINNED_SCENARIOS = ("c50_p1", "c50_p16")
# The proxy with `[runtime] busy_poll` (BUSY_POLL): what it does to the c=1 latency, and what
# it costs in CPU at c=50 P=1; in these scenarios, after the others in every round.
BUSY_TARGET = "proxy_busy"
BUSY_SCENARIOS = ("c1_lat", "c50_p1")
BUSY_POLL = "200us"
# With --uring 1: the proxy with `[runtime] engine = "io_uring"` (its session engine on
# io_uring instead of epoll), in these scenarios (all of them), after the others in every
# round. The engine logs a WARN with both strings of URING_FALLBACK when it cannot set up a
# ring and runs on epoll instead; its rows then read "not measured (io_uring unavailable: ...)".
URING_TARGET = "proxy_uring"
URING_SCENARIOS = ("c50_p1", "c50_p16", "c1_lat", "c50_16k", "churn")
URING_TOML = '[runtime]\nengine = "io_uring"\n'
URING_FALLBACK = ("io_uring", "falling back to epoll")
# A redis-benchmark run through it that takes longer (the longest full run takes ~8 s here)
# counts as failed, so that a stalled engine costs minutes, not 10 per run.
URING_RUN_TIMEOUT_S = 120
# The c=1 scenario is timed per request by `timeline rtt` (bench/timeline): redis-benchmark's
# percentiles come from a histogram with ~8 µs steps there, too coarse for a 15 µs target.
# With --haltpoll 1, on a KVM guest whose halt polling is off (HALT_POLL_PARAM reads 0), the
# c=1 scenario runs once more per round with it on (HALT_POLL_NS, the kernel's default) for
# these targets (same processes and ports as their base), then it is set back: how much of
# the added latency is the vCPU's halt and wakeup rather than the middle box.
HALT_POLL_PARAM = "/sys/module/haltpoll/parameters/guest_halt_poll_ns"
HALT_POLL_NS = 200_000
HALT_POLL_TARGETS = {"direct_hp": "direct", "proxy_hp": "proxy", "haproxy_hp": "haproxy",
                     "haproxy_tuned_hp": "haproxy_tuned"}
CLK_TCK = os.sysconf("SC_CLK_TCK")
# How long a proxy that may refuse its config (proxy_ready) may take to become ready.
PROXY_READY_S = 30


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes


def _die_with_parent(sig):
    """Linux prctl(PR_SET_PDEATHSIG): the kernel sends `sig` to this process when its parent
    dies, so nothing outlives a SIGKILLed driver (children) or run.sh (this driver)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(sig), 0, 0, 0)
    except Exception:  # noqa: BLE001 - best effort; run.sh's pid file is the fallback
        pass


class Procs:
    """Starts processes in their own session, records their pids, stops them in reverse."""

    def __init__(self, work):
        self.work = work
        self.procs = []  # (name, Popen)

    def start(self, name, argv, cwd=None, env=None):
        logf = open(os.path.join(self.work, f"{name}.log"), "wb")
        p = subprocess.Popen(
            argv,
            cwd=cwd or self.work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal's Ctrl-C reaches us; we stop them in order
            preexec_fn=lambda: _die_with_parent(signal.SIGKILL),
        )
        with open(os.path.join(self.work, "pids"), "a") as f:
            f.write(f"{p.pid}\n")
        self.procs.append((name, p))
        return p

    def check_alive(self):
        for name, p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with {p.returncode}; see {self.work}/{name}.log")

    def _take(self, name):
        for i, (n, p) in enumerate(self.procs):
            if n == name:
                del self.procs[i]
                return p
        raise KeyError(name)

    def kill9(self, name):
        """SIGKILL, as a crash would do it. From then on the process no longer counts as one
        that must be alive (check_alive)."""
        p = self._take(name)
        p.kill()
        p.wait()

    def wait_exit(self, name, timeout):
        """Waits for a process that ends by itself; returns its exit status."""
        p = self._take(name)
        try:
            return p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            raise RuntimeError(
                f"{name} still running after {timeout:.0f}s; see {self.work}/{name}.log") from None

    def stop_prefix(self, prefix):
        """Stops every process whose name starts with `prefix`, newest first."""
        for n in [n for n, _ in reversed(self.procs) if n.startswith(prefix)]:
            self.stop(n)

    def stop(self, name=None):
        keep = []
        for n, p in reversed(self.procs):
            if name is not None and n != name:
                keep.append((n, p))
                continue
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs = list(reversed(keep))


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_until(what, pred, timeout=20.0, procs=None):
    deadline = time.monotonic() + timeout
    last_err = None
    while time.monotonic() < deadline:
        if procs:
            procs.check_alive()
        try:
            if pred():
                return
        except Exception as e:  # noqa: BLE001 - anything means "not yet"
            last_err = e
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what} (last error: {last_err})")


def resp_command(*args):
    """A command as a RESP array of bulk strings."""
    payload = f"*{len(args)}\r\n".encode()
    for a in args:
        b = str(a).encode()
        payload += b"$%d\r\n%s\r\n" % (len(b), b)
    return payload


def redis_cmd(port, *args, timeout=2.0, tls=None):
    """Sends one command (RESP array), returns the first reply line (or bulk line) as str.
    `tls`: an `ssl.SSLContext` to speak TLS with (the TLS scenario's nodes have no plain port)."""
    payload = resp_command(*args)
    s = socket.create_connection((HOST, port), timeout=timeout)
    if tls is not None:
        try:
            s = tls.wrap_socket(s, server_hostname=HOST)
        except BaseException:
            s.close()
            raise
    with s:
        s.sendall(payload)
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        if data.startswith(b"$") and b"\r\n" in data:
            n = int(data[1 : data.index(b"\r\n")])
            head = data.index(b"\r\n") + 2
            while len(data) < head + max(n, 0) + 2 and n >= 0:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            return data[head : head + n].decode(errors="replace") if n >= 0 else None
        return data.split(b"\r\n", 1)[0].decode(errors="replace")


def pings(port):
    return redis_cmd(port, "PING", timeout=1.0) == "+PONG"


def http_get(addr, path):
    with urllib.request.urlopen(f"http://{addr}{path}", timeout=2) as r:
        return r.status, r.read().decode(errors="replace")


def http_ok(addr, path):
    try:
        return http_get(addr, path)[0] == 200
    except Exception:  # noqa: BLE001
        return False


def fd_limit():
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def fd_limit_is_hard():
    """Whether the soft limit already is the hard one (run.sh could not raise it further)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft == hard


def sessions_within_fd_limit(limit):
    """The most sessions a middle box can hold under an fd limit: 2 fds per session (client
    side and master side) plus its own listeners, health checks, sentinel connections, epoll
    and stdio, under 64 for both the proxy and HAProxy here (HAProxy refuses to start if
    2 x maxconn plus its own does not fit)."""
    return (limit - 64) // 2


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_ranges(cpus):
    """CPU numbers as ranges, e.g. [0, 1, 2, 5] -> ["0-2", "5"]."""
    out, cpus = [], sorted(cpus)
    i = 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        out.append(str(cpus[i]) if i == j else f"{cpus[i]}-{cpus[j]}")
        i = j + 1
    return out


def single_cpu_threads(pid):
    """(thread name, CPU) of every thread of `pid` allowed on exactly one CPU."""
    out = []
    for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                allowed = next(l.split(":", 1)[1].strip() for l in f
                               if l.startswith("Cpus_allowed_list:"))
        except (FileNotFoundError, StopIteration):
            continue  # a thread that just ended
        if re.fullmatch(r"\d+", allowed):
            out.append((comm, int(allowed)))
    return out


def cpu_seconds(pid, children=False):
    """utime + stime of the process (all threads), in seconds; with `children`, plus the
    CPU of its children it has waited for (cutime + cstime, e.g. a redis-server's fork)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime is field 14, stime 15, cutime 16, cstime 17.
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def machine_cpu():
    """(all, busy, steal) CPU seconds of the whole machine since boot, from /proc/stat. Busy
    is user + nice + system + irq + softirq (guest time is inside user): a tick in softirq
    (loopback packet processing, mostly in the sending process's context) is also charged to
    the process it interrupted, so this busy is what the processes' utime + stime add up to
    (checked here: within 1 %)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = v
    return sum(v) / CLK_TCK, (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK


class Noise:
    """Was the machine quiet? Around each round: the machine's busy CPU against the CPU of
    this benchmark's own processes (this driver with the children it waited for, i.e.
    redis-benchmark, redis-cli, openssl; every process it started and still runs: redis-server,
    sentinels, proxies, HAProxies). The rest is other processes'; steal is CPU the hypervisor
    gave to someone else."""

    def __init__(self, procs):
        self.procs = procs
        self.phases = []

    def ours(self):
        t = os.times()
        total = t.user + t.system + t.children_user + t.children_system
        for _, p in self.procs.procs:
            try:
                total += cpu_seconds(p.pid, children=True)
            except OSError:
                pass  # ended and reaped: its CPU is in this driver's children_* now
        return total

    def snap(self):
        return (*machine_cpu(), self.ours(), time.monotonic())

    def add(self, label, a, b):
        """Records the phase from snapshot `a` to `b`: percentages of the whole machine."""
        every, busy, steal, ours, secs = (y - x for x, y in zip(a, b))
        pct = (lambda x: x / every * 100) if every > 0 else (lambda x: NAN)
        self.phases.append({"phase": label, "seconds": secs, "busy_pct": pct(busy),
                            "ours_pct": pct(ours), "other_pct": pct(busy - ours),
                            "steal_pct": pct(steal)})

    def worst(self, key):
        """(max value, phase) of other_pct or steal_pct, or (nan, None) without phases."""
        if not self.phases:
            return NAN, None
        p = max(self.phases, key=lambda p: p[key] if p[key] == p[key] else -1)
        return p[key], p["phase"]

    def quiet(self):
        """True, False, or None (no round measured)."""
        if not self.phases:
            return None
        return (self.worst("other_pct")[0] <= NOISE_OTHER_MAX_PCT
                and self.worst("steal_pct")[0] <= NOISE_STEAL_MAX_PCT)

    def sentence(self):
        """One line for the report's header and the summary."""
        if not self.phases:
            return "noise: no round measured"
        (o, op), (st, sp) = self.worst("other_pct"), self.worst("steal_pct")
        what = (f"other processes used at most {max(o, 0):.1f} % of the machine ({op}), steal "
                f"at most {max(st, 0):.1f} % ({sp}) over {len(self.phases)} round(s)")
        if self.quiet():
            return (f"noise: quiet: {what} (thresholds {NOISE_OTHER_MAX_PCT:.0f} % and "
                    f"{NOISE_STEAL_MAX_PCT:.0f} %)")
        return (f"noise: **NOT QUIET**: {what}; above {NOISE_OTHER_MAX_PCT:.0f} % other or "
                f"{NOISE_STEAL_MAX_PCT:.0f} % steal, numbers are noisy (see \"Noise\" below)")


# --------------------------------------------------------------------------- topology


def start_redis(procs, work, name, extra=()):
    port = free_port()
    d = os.path.join(work, name)
    os.makedirs(d, exist_ok=True)
    argv = [
        "redis-server", "--port", str(port), "--bind", HOST, "--dir", d,
        "--save", "", "--appendonly", "no", "--daemonize", "no",
        "--maxclients", "30000", "--repl-diskless-sync-delay", "0", *extra,
    ]
    p = procs.start(name, argv, cwd=d)
    wait_until(f"{name} PING on :{port}", lambda: pings(port), procs=procs)
    return port, p


def start_sentinel(procs, work, name, master_name, master_port, down_after_ms, quorum=1):
    port = free_port()
    d = os.path.join(work, name)
    os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, "sentinel.conf")
    with open(conf, "w") as f:
        f.write(
            f"bind {HOST}\nport {port}\ndir {d}\ndaemonize no\n"
            f"sentinel monitor {master_name} {HOST} {master_port} {quorum}\n"
            f"sentinel down-after-milliseconds {master_name} {down_after_ms}\n"
            f"sentinel failover-timeout {master_name} 20000\n"
            f"sentinel parallel-syncs {master_name} 1\n"
        )
    p = procs.start(name, ["redis-server", conf, "--sentinel"], cwd=d)
    wait_until(
        f"{name} naming {master_name}",
        lambda: redis_cmd(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", master_name) is not None
        and redis_cmd(port, "PING") == "+PONG",
        procs=procs,
    )
    return port, p


def launch_proxy(procs, work, binary, master_name, sentinel_ports, name="proxy", route_extra="",
                 extra_toml=""):
    """Starts the proxy without waiting for it. Returns (listen port, admin addr, Popen).
    `route_extra`: more `[[route]]` keys (TOML lines), e.g. `hold_timeout = "0s"`;
    `extra_toml`: more tables after the route, e.g. a `[runtime]` table."""
    listen = free_port()
    admin = free_port()
    conf = os.path.join(work, f"{name}.toml")
    with open(conf, "w") as f:
        # Only what the flags cannot say: room for the 10,000 idle sessions and the churn.
        f.write("[[route]]\nmax_connections = 50000\n" + route_extra + extra_toml)
    argv = [binary, "--config", conf, "--listen", f"{HOST}:{listen}",
            "--admin", f"{HOST}:{admin}", "--master", master_name]
    for s in sentinel_ports:
        argv += ["--sentinel", f"{HOST}:{s}"]
    env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
    p = procs.start(name, argv, env=env)
    return listen, f"{HOST}:{admin}", p


def start_proxy(procs, work, binary, master_name, sentinel_ports, name="proxy", route_extra="",
                extra_toml=""):
    """launch_proxy, then waits until /readyz answers and a PING through it is answered (a
    proxy that exits meanwhile ends the run). Returns (listen port, admin addr, Popen)."""
    listen, admin, p = launch_proxy(procs, work, binary, master_name, sentinel_ports, name,
                                    route_extra, extra_toml)
    wait_until(f"{name} /readyz", lambda: http_ok(admin, "/readyz"), procs=procs)
    wait_until(f"{name} PING through :{listen}", lambda: pings(listen), procs=procs)
    return listen, admin, p


def proxy_ready(procs, work, name, p, admin, listen, timeout=PROXY_READY_S):
    """For a proxy that may not be able to run its config: waits until /readyz answers 200
    and a PING through `listen` gets +PONG. Returns None then, else the reason, with the proxy
    stopped: it exited (its status and the last line of its log; a binary that does not know
    a config key exits 64 with ``unknown field ...``) or was not ready within `timeout` s."""
    logf = os.path.join(work, f"{name}.log")
    deadline = time.monotonic() + timeout
    last = "no answer from its admin port"
    reason = None
    while reason is None:
        if p.poll() is not None:
            reason = f"exited with status {p.returncode}: {last_log_line(logf, work)}"
            break
        if time.monotonic() > deadline:
            reason = (f"not ready within {timeout} s ({last}; last log line: "
                      f"{last_log_line(logf, work)})")
            break
        try:
            status, _ = http_get(admin, "/readyz")
            if status == 200:
                try:
                    if pings(listen):
                        return None
                    last = "/readyz 200, but a PING through it got no +PONG"
                except OSError as e:
                    last = f"/readyz 200, but a PING through it failed: {e}"
        except urllib.error.HTTPError as e:
            last = f"/readyz {e.code}"
        except OSError as e:
            last = f"admin port: {e}"
        time.sleep(0.1)
    procs.stop(name)
    return reason


def last_log_line(path, work):
    """The last non-empty line of a log, shortened for a report: ANSI colours removed, the
    work dir's path left out, at most 300 characters."""
    try:
        with open(path, errors="replace") as f:
            lines = [l.strip() for l in f if l.strip()]
    except OSError:
        return "(no log)"
    if not lines:
        return "(empty log)"
    return clean_log_line(lines[-1], work)


def clean_log_line(line, work):
    """A log line for a report: ANSI colours removed, the work dir's path left out, at most
    300 characters."""
    line = re.sub(r"\x1b\[[0-9;]*m", "", line.strip()).replace(work.rstrip("/") + "/", "")
    return line if len(line) <= 300 else line[:297] + "..."


def drop_target(results, cpu, tg):
    """Removes every row and CPU figure of target `tg`: one that failed during the rounds, so
    that its rounds so far do not stand as a result."""
    results[:] = [r for r in results if r["target"] != tg]
    for k in [k for k in cpu if k[1] == tg]:
        del cpu[k]


def start_haproxy(procs, work, node_ports, name="haproxy", global_extra="", server_extra="",
                  inter="1s", backend_extra=""):
    """HAProxy the canonical way for Sentinel setups: route to whichever node says role:master.
    `global_extra`: more `global` lines (indented, newline-terminated), e.g. a `cpu-map`;
    `server_extra`: more keywords for every `server` line (leading space), e.g. `ssl ...`;
    `inter`: the check interval; `backend_extra`: more backend lines (as `global_extra`).
    HAPROXY_TUNED holds the last three for HAProxy (tuned)."""
    listen = free_port()
    servers = "\n".join(
        f"    server node{i + 1} {HOST}:{p} check inter {inter}{server_extra}"
        for i, p in enumerate(node_ports)
    )
    cfg = os.path.join(work, f"{name}.cfg")
    stats = haproxy_stats_path(work, name)
    # HAProxy refuses to start if the fd limit cannot hold 2 fds per connection.
    maxconn = min(60000, sessions_within_fd_limit(fd_limit()))
    with open(cfg, "w") as f:
        f.write(f"""global
    maxconn {maxconn}
    stats socket {stats} mode 600
{global_extra}
defaults
    mode tcp
    maxconn {maxconn}
    timeout connect 1s
    timeout client 1h
    timeout server 1h

frontend redis_front
    bind {HOST}:{listen}
    default_backend redis_master

backend redis_master
{backend_extra}    option tcp-check
    tcp-check send PING\\r\\n
    tcp-check expect string +PONG
    tcp-check send info\\ replication\\r\\n
    tcp-check expect string role:master
    tcp-check send QUIT\\r\\n
    tcp-check expect string +OK
{servers}
""")
    subprocess.run(["haproxy", "-c", "-q", "-f", cfg], check=True)
    p = procs.start(name, ["haproxy", "-db", "-f", cfg])
    wait_until(f"{name} PING through :{listen}", lambda: pings(listen), procs=procs)
    # Servers count as UP until their first check fails, so right after start HAProxy
    # round-robins onto the replicas too: wait until only the master is UP and every other
    # server is DOWN. A replica's first check fails only at its timeout (1 s: the reply to
    # `info replication` never contains role:master), and until then its status reads
    # "UP 1/3", which still takes connections; a count of exact "UP"s would miss it.
    wait_until(f"{name}: only the master UP, the others DOWN",
               lambda: sorted(st for _, st in haproxy_servers(stats))
               == ["DOWN"] * (len(node_ports) - 1) + ["UP"],
               timeout=30, procs=procs)
    return listen, p


def haproxy_stats_path(work, name):
    return os.path.join(work, f"{name}.sock")


def haproxy_servers(stats_sock):
    """(server name, status) of every server of backend redis_master, from `show stat`."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(2)
        s.connect(stats_sock)
        s.sendall(b"show stat\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    rows = list(csv.reader(data.decode().lstrip("# ").splitlines()))
    h = rows[0]
    return [(r[h.index("svname")], r[h.index("status")]) for r in rows[1:]
            if len(r) == len(h) and r[0] == "redis_master"
            and r[h.index("svname")] not in ("BACKEND", "FRONTEND")]


# --------------------------------------------------------------------------- scenarios


def scenarios(quick):
    """(id, description, redis-benchmark args, requests per test)."""
    q = quick
    return [
        ("c50_p1", "c=50 P=1, SET and GET (3-byte values)",
         ["-c", "50", "-P", "1", "-t", "set,get"], 2_000 if q else 200_000),
        ("c50_p16", "c=50 P=16, GET",
         ["-c", "50", "-P", "16", "-t", "get"], 20_000 if q else 2_000_000),
        ("c1_lat", "c=1 P=1, GET (latency)",
         ["-c", "1", "-P", "1", "-t", "get"], 500 if q else 30_000),
        # --dbnum 1: the 16 KiB key must not replace the 3-byte one the other GETs read.
        ("c50_16k", "c=50 P=1, SET and GET, 16 KiB values",
         ["-c", "50", "-P", "1", "-t", "set,get", "-d", "16384", "--dbnum", "1"],
         500 if q else 30_000),
        ("churn", "c=50, a new connection per request (-k 0), GET",
         ["-c", "50", "-k", "0", "-t", "get"], 500 if q else 30_000),
    ]


def run_rtt(tool, port, n, timeout=600):
    """`timeline rtt` through `port`: one client, `n` GETs each timed alone. Rows as
    run_benchmark's (one, test GET)."""
    return run_csv_tool([tool, "rtt", "--target", f"{HOST}:{port}", "--requests", str(n),
                         "--warmup", str(max(1, min(1000, n // 10)))], timeout)


def halt_poll_state():
    """(value, None) where this guest's halt polling can be switched on for the c=1 pass
    (HALT_POLL_PARAM exists, reads 0, is writable), else (value or None, why not)."""
    try:
        with open(HALT_POLL_PARAM) as f:
            value = int(f.read().strip())
    except (OSError, ValueError):
        return None, f"no {HALT_POLL_PARAM} (not a KVM guest with cpuidle-haltpoll)"
    if value != 0:
        return value, (f"halt polling already on ({HALT_POLL_PARAM} = {value}): every run "
                       "of this report had it")
    if not os.access(HALT_POLL_PARAM, os.W_OK):
        return value, f"{HALT_POLL_PARAM} is not writable here"
    return value, None


def switch_halt_poll(args, on):
    """Switches the guest's halt polling on (HALT_POLL_NS) or back off (0, what it was). A
    marker in the work dir lets bench/run.sh switch it off if this driver is killed."""
    marker = os.path.join(args.work, "halt-poll-on")
    if on:
        open(marker, "w").close()
    with open(HALT_POLL_PARAM, "w") as f:
        f.write(str(HALT_POLL_NS if on else 0))
    args.halt_poll_set = on
    if not on:
        os.unlink(marker)


def restore_halt_poll(args):
    """Sets the guest's halt polling back to what it was (0) if this run switched it on."""
    if args.halt_poll_set:
        switch_halt_poll(args, False)


def run_benchmark(port, args, n, timeout=600):
    return run_csv_tool(["redis-benchmark", "-h", HOST, "-p", str(port), "-n", str(n), "--csv",
                         *args], timeout)


def run_csv_tool(argv, timeout):
    """Runs `redis-benchmark --csv` or `timeline rtt` (the same columns) and returns its rows;
    a failed run or output without the header raises RuntimeError."""
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
    stdout = r.stdout
    rows = [l for l in stdout.splitlines() if l.startswith('"')]
    parsed = list(csv.reader(rows))
    if not parsed or parsed[0][0] != "test":
        raise RuntimeError(f"unexpected output of {argv[0]}: {stdout!r}")
    header = parsed[0]
    out = []
    for row in parsed[1:]:
        d = dict(zip(header, row))
        out.append({
            "test": d["test"],
            "rps": float(d["rps"]),
            "avg_ms": float(d["avg_latency_ms"]),
            "p50_ms": float(d["p50_latency_ms"]),
            "p99_ms": float(d["p99_latency_ms"]),
        })
    if not out:
        raise RuntimeError(f"no results from {' '.join(argv)}: {r.stdout!r} {r.stderr!r}")
    return out


def idle_sessions(port, count, watch):
    """Opens `count` connections, each proving its session with a PING; measures RSS of every
    pid in `watch` ({label: pid}) before, with all open, and after closing. Returns a dict."""
    before = {k: rss_kib(p) for k, p in watch.items()}
    socks = []
    t0 = time.monotonic()
    try:
        for i in range(count):
            s = socket.create_connection((HOST, port), timeout=10)
            s.sendall(b"PING\r\n")
            got = b""
            while not got.endswith(b"\r\n"):
                chunk = s.recv(64)
                if not chunk:
                    raise RuntimeError(f"idle session {i} closed before +PONG")
                got += chunk
            if got != b"+PONG\r\n":
                raise RuntimeError(f"idle session {i}: {got!r}")
            socks.append(s)
        opened_s = time.monotonic() - t0
        time.sleep(1.0)  # let allocator and kernel settle
        during = {k: rss_kib(p) for k, p in watch.items()}
    finally:
        for s in socks:
            s.close()
    time.sleep(1.0)
    after = {k: rss_kib(p) for k, p in watch.items()}
    return {"before": before, "during": during, "after": after, "open_s": opened_s}


# --------------------------------------------------------------------------- fence


def rcli(port, *args):
    r = subprocess.run(["redis-cli", "-h", HOST, "-p", str(port), "--raw", *map(str, args)],
                       capture_output=True, text=True, timeout=5)
    return r.stdout.splitlines()


def sentinel_field(port, master_name, field):
    lines = rcli(port, "SENTINEL", "MASTER", master_name)
    for k, v in zip(lines[::2], lines[1::2]):
        if k == field:
            return v
    return None


def open_sessions(port, count):
    socks = []
    for i in range(count):
        s = socket.create_connection((HOST, port), timeout=10)
        s.sendall(b"PING\r\n")
        if s.recv(64) != b"+PONG\r\n":
            raise RuntimeError(f"session {i} through :{port}: no +PONG")
        s.setblocking(False)
        socks.append(s)
    return socks


def still_open(socks):
    """Sockets that have seen neither EOF nor an error."""
    alive = []
    for s in socks:
        try:
            if s.recv(64) == b"":
                continue
        except BlockingIOError:
            pass
        except OSError:
            continue
        alive.append(s)
    return alive


class Closings:
    """Watches sets of idle sessions for their end (EOF or an error) with one epoll: the
    measuring client sleeps until a socket changes instead of scanning thousands of them in
    a loop, which took a whole CPU from the middle box it measured (2 CPUs here)."""

    def __init__(self, sets):
        self.ep = select.epoll()
        self.open = {k: {} for k in sets}
        self.of = {}
        for k, socks in sets.items():
            for s in socks:
                self.open[k][s.fileno()] = s
                self.of[s.fileno()] = k
                self.ep.register(s.fileno(), select.EPOLLIN | select.EPOLLRDHUP)

    def poll(self, timeout):
        """Waits up to `timeout` s for changes; returns the sets that have just emptied."""
        emptied = []
        for fd, ev in self.ep.poll(timeout):
            k = self.of.get(fd)
            if k is None or fd not in self.open[k]:
                continue
            ended = bool(ev & (select.EPOLLHUP | select.EPOLLERR | select.EPOLLRDHUP))
            if not ended:
                ended = not still_open([self.open[k][fd]])
            if ended:
                self.ep.unregister(fd)
                del self.open[k][fd]
                if not self.open[k]:
                    emptied.append(k)
        return emptied

    def alive(self, k):
        return list(self.open[k].values())

    def close(self):
        self.ep.close()


def fence_metric(admin):
    _, text = http_get(admin, "/metrics")
    vals = {}
    for line in text.splitlines():
        for k in ("sum", "count"):
            if line.startswith(f"redis_failover_proxy_fence_duration_seconds_{k}"):
                vals[k] = float(line.rsplit(" ", 1)[1])
    return vals.get("sum", 0.0), vals.get("count", 0.0)


def start_failover_topology(procs, work, prefix, master_name, down_after_ms):
    """The seed's shape on free ports: 3 nodes (the first one the master, the others its
    replicas; processes PREFIX-node1..3 and PREFIX-sentinel1..3) and 3 sentinels with quorum 2.
    Returns ([node ports], [sentinel ports]) once the replicas are online and every sentinel
    knows the whole group, so a failover can be forced right away."""
    n1, _ = start_redis(procs, work, f"{prefix}-node1")
    nodes = [n1] + [start_redis(procs, work, f"{prefix}-node{i}",
                                ["--replicaof", HOST, str(n1)])[0]
                    for i in (2, 3)]
    wait_until("both replicas online",
               lambda: sum("state=online" in l for l in rcli(n1, "INFO", "replication")) == 2,
               timeout=30, procs=procs)
    sents = [start_sentinel(procs, work, f"{prefix}-sentinel{i}", master_name, n1,
                            down_after_ms, quorum=2)[0]
             for i in (1, 2, 3)]
    wait_until("sentinels know 2 replicas and 2 other sentinels",
               lambda: all(int(sentinel_field(p, master_name, "num-slaves") or 0) >= 2
                           and int(sentinel_field(p, master_name, "num-other-sentinels") or 0)
                           >= 2
                           for p in sents),
               timeout=30, procs=procs)
    return nodes, sents


CAP_SYS_ADMIN = 21
CAP_SYS_RESOURCE = 24


def has_capability(bit):
    """Whether this process (and so every process it starts) has a capability (its bit in
    CapEff of /proc/self/status), e.g. CAP_SYS_RESOURCE: it may raise its hard fd limit."""
    try:
        with open("/proc/self/status") as f:
            caps = next(l.split()[1] for l in f if l.startswith("CapEff:"))
        return bool(int(caps, 16) >> bit & 1)
    except (OSError, StopIteration, ValueError):
        return False


def fd_cap_reason():
    """Why no more sessions fit, for the report: e.g. `hard fd limit 20,000 (no
    CAP_SYS_RESOURCE)`."""
    if not fd_limit_is_hard():
        return f"fd limit {fd_limit():,}"
    return f"hard fd limit {fd_limit():,}" + ("" if has_capability(CAP_SYS_RESOURCE)
                                              else " (no CAP_SYS_RESOURCE)")


def io_uring_refused():
    """Why the kernel would refuse io_uring to the proxies this process starts, or None.
    kernel.io_uring_disabled (Linux 6.6 and later; without it io_uring is allowed): 0 allowed;
    1 allowed only to processes with CAP_SYS_ADMIN or in the group kernel.io_uring_group (a
    root process keeps its capabilities across exec); 2 refused to every process."""
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as f:
            disabled = int(f.read())
    except (OSError, ValueError):
        return None
    if disabled == 0:
        return None
    if disabled == 1:
        try:
            with open("/proc/sys/kernel/io_uring_group") as f:
                group = int(f.read())
        except (OSError, ValueError):
            group = -1
        if (os.geteuid() == 0 and has_capability(CAP_SYS_ADMIN)) or (
                group >= 0 and group in (os.getegid(), *os.getgroups())):
            return None
        return ("kernel.io_uring_disabled = 1 (io_uring only for CAP_SYS_ADMIN or the group "
                "kernel.io_uring_group), and the proxy would have neither")
    return f"kernel.io_uring_disabled = {disabled} (io_uring refused to every process)"


def uring_fallback(logf, work):
    """The engine's warning that it could not set up a ring and runs on epoll (the first log
    line with both strings of URING_FALLBACK, any case), cleaned for a report; else None."""
    try:
        with open(logf, errors="replace") as f:
            for line in f:
                if all(k in line.lower() for k in URING_FALLBACK):
                    return clean_log_line(line, work)
    except OSError:
        pass
    return None


def io_uring_fds(pid):
    """How many io_uring instances a process holds open (fds that are `anon_inode:[io_uring]`)."""
    n = 0
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return 0
    for fd in fds:
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[io_uring]"
        except OSError:
            pass
    return n


def sentinel_failover(port, master_name, timeout=30.0):
    """SENTINEL FAILOVER, retried while the sentinel refuses it because the previous failover
    is still being finished (-INPROG) or no replica is ready yet (-NOGOODSLAVE). Returns the
    monotonic time the accepted command was sent."""
    deadline = time.monotonic() + timeout
    while True:
        t0 = time.monotonic()
        reply = rcli(port, "SENTINEL", "FAILOVER", master_name)
        if reply == ["OK"]:
            return t0
        if time.monotonic() > deadline:
            raise RuntimeError(f"SENTINEL FAILOVER: {reply} for {timeout:.0f}s")
        time.sleep(0.5)


def storm_error(err):
    """The kind of a failed reconnect, from its errno."""
    return {errno.ECONNREFUSED: "refused", errno.ECONNRESET: "reset", errno.EPIPE: "reset",
            errno.ETIMEDOUT: "timeout"}.get(err, "other")


def reconnect_storm(port, count, timeout=30.0):
    """`count` clients connect at once (non-blocking connects fired back to back, then one
    epoll for all), each sends PING once connected. Counts the ones refused, reset, closed,
    answered with something else than +PONG or not answered within `timeout`, and the time
    from the first connect to the last +PONG. The proxy holds a client while it has no
    verified master, so one that arrives before the new master is routed must still get its
    PONG."""
    sel = selectors.DefaultSelector()
    errors = dict.fromkeys(("refused", "reset", "closed", "error reply", "timeout", "other"), 0)
    ok, last_pong = 0, None
    t0 = time.monotonic()
    try:
        for _ in range(count):
            s = socket.socket()
            s.setblocking(False)
            err = s.connect_ex((HOST, port))
            if err not in (0, errno.EINPROGRESS):
                errors[storm_error(err)] += 1
                s.close()
                continue
            sel.register(s, selectors.EVENT_WRITE, [False, b""])  # [PING sent, reply so far]
        fired = time.monotonic()
        while sel.get_map() and time.monotonic() < t0 + timeout:
            for key, _ in sel.select(timeout=0.1):
                s, st = key.fileobj, key.data
                try:
                    if not st[0]:
                        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if err:
                            raise OSError(err, os.strerror(err))
                        s.send(b"PING\r\n")
                        st[0] = True
                        sel.modify(s, selectors.EVENT_READ, st)
                        continue
                    got = s.recv(64)
                    if not got:
                        errors["closed"] += 1
                    else:
                        st[1] += got
                        if not st[1].endswith(b"\r\n"):
                            continue
                        if st[1] == b"+PONG\r\n":
                            ok += 1
                            last_pong = time.monotonic()
                        else:
                            errors["error reply"] += 1
                except OSError as e:
                    errors[storm_error(e.errno)] += 1
                sel.unregister(s)
                s.close()
        errors["timeout"] += len(sel.get_map())
    finally:
        for key in list(sel.get_map().values()):
            key.fileobj.close()
        sel.close()
    return {"ok": ok, "failed": sum(errors.values()), "errors": errors,
            "ms": (last_pong - t0) * 1000 if last_pong else None,
            "fire_ms": (fired - t0) * 1000}


def fence_scenario(procs, work, binary, requested, repeats):
    """3 nodes, 3 sentinels (quorum 2), a proxy following them and HAProxy checking all three
    nodes. `requested` idle sessions (as many as the fd limit allows) through each, then
    SENTINEL FAILOVER: how do the sessions to the old master end, and how do the proxy's
    clients fare when they all reconnect at once? Then `repeats` - 1 more failovers on the
    same group, through the proxy only (the group's start dominates the cost, and HAProxy's
    sessions take Sentinel's ~11 s to end)."""
    cap = sessions_within_fd_limit(fd_limit())
    sessions = min(requested, cap)
    if sessions < requested:
        log(f"fence: {requested:,} sessions do not fit ({fd_cap_reason()}); "
            f"measuring {sessions:,}")
    name, prefix = "fbench", f"f{requested}"
    (n1, *replicas), sents = start_failover_topology(procs, work, prefix, name, 5000)
    proxy_port, admin, _ = start_proxy(procs, work, binary, name, sents, name=f"{prefix}-proxy")
    hap_port, _ = start_haproxy(procs, work, [n1, *replicas], name=f"{prefix}-haproxy")
    out = {"requested": requested, "sessions": sessions,
           "cap_reason": fd_cap_reason() if sessions < requested else None,
           "repeats": [], "repeat_errors": [], "haproxy": None}
    for k in range(1, repeats + 1):
        try:
            r = fence_once(sents, name, proxy_port, admin, sessions,
                           hap_port if k == 1 else None)
        except (RuntimeError, OSError) as e:
            if k == 1:
                raise
            # The first repeat is the measurement; a later one that cannot run is reported.
            out["repeat_errors"].append(f"repeat {k}: {e}")
            log(f"fence {requested}: repeat {k} failed: {e}")
            break
        if k == 1:
            out["haproxy"] = r.pop("haproxy")
        out["repeats"].append(r)
        log(f"fence {sessions} #{k}: {r['fence_ms']:.1f} ms; storm: "
            + (f"{r['storm']['ok']} PONG, {r['storm']['failed']} failed "
               f"{r['storm']['errors']}, last PONG {r['storm']['ms'] or 0:.0f} ms"
               if r["storm"] else "none"))
    # The next size gets a fresh group; free the CPU and the fds of this one.
    procs.stop_prefix(prefix + "-")
    return out


def sentinel_master_port(port, name):
    """The master's port a sentinel names for `name`, asked over a socket: the fence loop asks
    every 20 ms, and a redis-cli process each time took CPU from the middle box it measured."""
    with socket.create_connection((HOST, port), timeout=2) as s:
        s.sendall(resp_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", name))
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                return None
            data += chunk
            try:
                v, _ = parse_resp(data)
            except _NeedMore:
                continue
            return v[1] if isinstance(v, list) and len(v) == 2 else None


def watcher_priority(nice):
    """Sets this thread's nice value (Linux: per thread). While a fence runs, the driver
    watching the sessions end runs at 19, so that it does not take CPU from the middle box
    it measures (2 CPUs here); back to 0 for the reconnect storm."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except OSError:
        pass


def fence_once(sents, name, proxy_port, admin, sessions, hap_port=None):
    """One SENTINEL FAILOVER with `sessions` idle sessions through the proxy (and, with
    `hap_port`, as many through HAProxy). Right after the proxy closed its last one, every
    client reconnects at once (reconnect_storm)."""
    via_proxy = open_sessions(proxy_port, sessions)
    via_hap = open_sessions(hap_port, sessions) if hap_port else []
    sum0, count0 = fence_metric(admin)
    master0 = [sentinel_master_port(sents[0], name)]
    watcher_priority(19)
    t0 = sentinel_failover(sents[0], name)
    # Poll both sets until every session has ended (or 30 s): when did each side see its
    # last session closed?
    last_close = {"proxy": None, "haproxy": None}
    watch = Closings({"proxy": via_proxy, "haproxy": via_hap})
    announced, next_ask = None, 0.0
    storm, storm_s = None, 0.0
    while ((any(watch.open.values()) or announced is None)
           and time.monotonic() < t0 + 30 + storm_s):
        if announced is None and time.monotonic() >= next_ask:
            if [sentinel_master_port(sents[0], name)] != master0:
                announced = time.monotonic() - t0
            next_ask = time.monotonic() + 0.02
        for k in watch.poll(0.005 if announced is None else 0.05):
            last_close[k] = time.monotonic() - t0
            if k == "proxy":
                watcher_priority(0)
                # Every client whose session was closed comes back at once. HAProxy's
                # sessions are not watched meanwhile (they last ~11 s, a storm ~1 s).
                for s in via_proxy:
                    s.close()
                t_storm = time.monotonic()
                storm = reconnect_storm(proxy_port, sessions)
                storm_s = time.monotonic() - t_storm
    watcher_priority(0)
    alive = {k: watch.alive(k) for k in ("proxy", "haproxy")}
    watch.close()
    wait_until("the fence in /metrics", lambda: fence_metric(admin)[1] > count0, timeout=10)
    sum1, count1 = fence_metric(admin)
    if announced is None:
        raise RuntimeError("no sentinel named a new master within 30 s")
    hap_alive = still_open(alive["haproxy"])
    readonly = None
    if hap_alive:
        s = hap_alive[0]
        s.setblocking(True)
        s.settimeout(2)
        s.sendall(b"SET bench:after-failover 1\r\n")
        readonly = s.recv(256).decode(errors="replace").strip()
    for s in via_proxy + via_hap:
        s.close()
    return {
        "sessions": sessions,
        "fence_ms": (sum1 - sum0) / (count1 - count0) * 1000,
        "proxy_last_close_s": last_close["proxy"],
        "proxy_still_open": len(alive["proxy"]),
        "announced_s": announced,
        "storm": storm,
        "haproxy": None if hap_port is None else {
            "last_close_s": last_close["haproxy"],
            "still_open": len(alive["haproxy"]),
            "write_reply": readonly,
        },
    }


# --------------------------------------------------------------------------- timeline

# The three middle boxes of the failover timeline, by their name in the CSV and the picture
# (CSV fields: no commas).
TL_HOLD, TL_NOHOLD, TL_HAP = "proxy (hold 10 s)", "proxy (no hold)", "HAProxy"
TL_TARGETS = (TL_HOLD, TL_NOHOLD, TL_HAP)
# Fault id (in file names) -> how the event is named in the picture and the tables.
TL_FAULTS = {"failover": "SENTINEL FAILOVER sent", "kill": "kill -9 of the master"}
TL_CLIENTS = 4  # per middle box
# At most one request per client per 2 ms (tokio's 1 ms timer makes it ~3 ms): about
# 1,300 requests/s per middle box, far from saturating the 2 cores, so that the failover's
# own timing (sentinels, proxy, HAProxy checks) is not distorted by the load.
TL_INTERVAL_MS = 2
# Longer than any hold in this run (the kill -9 failover takes ~2-3 s), so a held request
# counts as delayed, not failed; short enough that a dead connection is noticed in the run.
TL_TIMEOUT_MS = 5000
# Sentinel's default is 30 s; 1 s (as in tests/write_loss.rs) keeps the kill -9 run short.
TL_DOWN_AFTER_MS = 1000


def unix_ms():
    return time.time() * 1000.0


class _NeedMore(Exception):
    pass


def parse_resp(buf, i=0):
    """One RESP value from buf[i:]: (value, index after it). Arrays become lists, strings
    str, integers int. Raises _NeedMore if buf holds only part of it."""
    end = buf.find(b"\r\n", i)
    if end < 0:
        raise _NeedMore
    kind, line = buf[i:i + 1], buf[i + 1:end].decode(errors="replace")
    i = end + 2
    if kind in (b"+", b"-"):
        return line, i
    if kind == b":":
        return int(line), i
    if kind == b"$":
        n = int(line)
        if n < 0:
            return None, i
        if len(buf) < i + n + 2:
            raise _NeedMore
        return buf[i:i + n].decode(errors="replace"), i + n + 2
    if kind == b"*":
        items = []
        for _ in range(int(line)):
            v, i = parse_resp(buf, i)
            items.append(v)
        return items, i
    raise RuntimeError(f"unexpected RESP: {bytes(buf[i - 1:i + 40])!r}")


class SentinelEvents(threading.Thread):
    """Subscribes to channels of one sentinel and records when each message arrived (unix
    ms), so the picture can mark +switch-master at the moment a subscriber learnt of it."""

    def __init__(self, port, channels):
        super().__init__(daemon=True)
        self.sock = socket.create_connection((HOST, port), timeout=5)
        self.buf = b""
        self.events = []  # (unix ms, channel, payload)
        self.stopping = threading.Event()
        self.sock.sendall(resp_command("SUBSCRIBE", *channels))
        # Every subscription confirmed before the fault: no event can be missed.
        confirmed = 0
        while confirmed < len(channels):
            if self._next()[0] == "subscribe":
                confirmed += 1
        self.sock.settimeout(0.1)  # so that run() sees `stopping`

    def _next(self):
        while True:
            try:
                value, used = parse_resp(self.buf)
                self.buf = self.buf[used:]
                return value
            except _NeedMore:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise RuntimeError("the sentinel closed the subscription") from None
                self.buf += chunk

    def run(self):
        while not self.stopping.is_set():
            try:
                msg = self._next()
            except socket.timeout:
                continue
            except (OSError, RuntimeError):
                return
            if msg[0] == "message":
                self.events.append((unix_ms(), msg[1], msg[2]))

    def first(self, channel, after_ms):
        """(unix ms, payload) of the first message on `channel` at or after `after_ms`."""
        for t, ch, payload in list(self.events):
            if ch == channel and t >= after_ms:
                return t, payload
        return None

    def stop(self):
        self.stopping.set()
        self.join()
        self.sock.close()


class HaproxyStates(threading.Thread):
    """Polls HAProxy's stats socket every 20 ms and records each change of its servers'
    states (unix ms), to mark when HAProxy took the old master out and the new one in."""

    def __init__(self, stats_sock):
        super().__init__(daemon=True)
        self.stats_sock = stats_sock
        self.changes = []  # (unix ms, {server: status})
        self.stopping = threading.Event()

    def run(self):
        last = None
        while not self.stopping.wait(0.02):
            try:
                now = dict(haproxy_servers(self.stats_sock))
            except (OSError, ValueError, IndexError):
                continue
            if now != last:
                self.changes.append((unix_ms(), now))
                last = now

    def first(self, pred, after_ms):
        """Unix ms of the first recorded state at or after `after_ms` for which pred holds."""
        for t, states in list(self.changes):
            if t >= after_ms and pred(states):
                return t
        return None

    def stop(self):
        self.stopping.set()
        self.join()


def serving(haproxy_status):
    """HAProxy sends traffic to a server whose status is UP, including "UP 1/3" (failing
    checks, not yet taken out)."""
    return (haproxy_status or "").startswith("UP")


def proxy_route_status(admin):
    _, body = http_get(admin, "/status")
    return json.loads(body)["routes"][0]


def missing_keys(port, keys, chunk=2000):
    """The keys of `keys` that the node at `port` does not have (pipelined EXISTS)."""
    missing = []
    with socket.create_connection((HOST, port), timeout=10) as s:
        for i in range(0, len(keys), chunk):
            part = keys[i:i + chunk]
            s.sendall(b"".join(resp_command("EXISTS", k) for k in part))
            data = b""
            while data.count(b"\r\n") < len(part):
                got = s.recv(65536)
                if not got:
                    raise RuntimeError(f":{port} closed the connection during EXISTS")
                data += got
            replies = data.split(b"\r\n")[:len(part)]
            if any(r not in (b":0", b":1") for r in replies):
                raise RuntimeError(f"unexpected EXISTS replies from :{port}: {replies[:3]}")
            missing += [k for k, r in zip(part, replies) if r == b":0"]
    return missing


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def timeline_run(procs, work, binary, tl_bin, out_dir, fault, duration_s, fire_at_s):
    """One forced failover under load, through three middle boxes at once: the proxy with its
    default hold, a proxy without hold and HAProxy, all in front of one fresh 3-node +
    3-sentinel group. Writes timeline-FAULT.csv, timeline-FAULT-lost.csv,
    timeline-FAULT-events.csv and timeline-FAULT.svg to out_dir; returns what the report
    needs."""
    name = "tbench"
    prefix = f"t{fault}-"
    nodes, sents = start_failover_topology(procs, work, f"t{fault}", name, TL_DOWN_AFTER_MS)
    old_master = nodes[0]
    hold_port, hold_admin, _ = start_proxy(procs, work, binary, name, sents,
                                           name=f"{prefix}proxy-hold")
    # hold_timeout 0: a client that arrives while there is no verified master (or while the
    # master is unconfirmed after a refused connect) is closed at once instead of held.
    nohold_port, nohold_admin, _ = start_proxy(procs, work, binary, name, sents,
                                               name=f"{prefix}proxy-nohold",
                                               route_extra='hold_timeout = "0s"\n')
    hap_name = f"{prefix}haproxy"
    hap_port, _ = start_haproxy(procs, work, nodes, name=hap_name)
    ports = {TL_HOLD: hold_port, TL_NOHOLD: nohold_port, TL_HAP: hap_port}
    admins = {TL_HOLD: hold_admin, TL_NOHOLD: nohold_admin}

    # Every sentinel publishes its own events (+switch-master: the leader at the end of the
    # failover, the others when they learn the new configuration): listen to all three and
    # take the first of each.
    channels = ["+odown", "+failover-state-send-slaveof-noone", "+switch-master",
                "+convert-to-slave"]
    sentinel_events = [SentinelEvents(p, channels) for p in sents]
    hap_states = HaproxyStates(haproxy_stats_path(work, hap_name))
    for t in (*sentinel_events, hap_states):
        t.start()

    def first_event(channel, after_ms):
        seen = [e for w in sentinel_events if (e := w.first(channel, after_ms))]
        return min(seen) if seen else None

    csv_path = os.path.join(out_dir, f"timeline-{fault}.csv")
    summary_path = os.path.join(work, f"timeline-{fault}-summary.csv")
    acked_path = os.path.join(work, f"timeline-{fault}-acked.csv")
    argv = [tl_bin, "load"]
    for t in TL_TARGETS:
        argv += ["--target", f"{t}={HOST}:{ports[t]}"]
    argv += ["--clients", TL_CLIENTS, "--interval-ms", TL_INTERVAL_MS, "--timeout-ms",
             TL_TIMEOUT_MS, "--duration", duration_s, "--out", csv_path,
             "--summary", summary_path, "--acked", acked_path]
    load_name = f"{prefix}load"
    procs.start(load_name, [str(a) for a in argv])
    load_log = os.path.join(work, f"{load_name}.log")

    def load_said(word):
        with open(load_log) as f:
            for line in f:
                if line.startswith(word + " "):
                    return float(line.split()[1])
        return None

    wait_until("the load generator to start", lambda: load_said("start") is not None,
               procs=procs)
    start_ms = load_said("start")
    wait_until("a reply through every middle box", lambda: load_said("ready") is not None,
               timeout=duration_s / 2, procs=procs)
    ready_ms = load_said("ready")
    # The fault goes at a planned point of the timeline, after at least 1 s of traffic
    # through all three: a scheduled moment of the experiment, not a wait for anything.
    fire_ms = max(start_ms + fire_at_s * 1000, ready_ms + 1000)
    time.sleep(max(0.0, (fire_ms - unix_ms()) / 1000))
    cmd_ms = unix_ms()
    if fault == "failover":
        reply = redis_cmd(sents[0], "SENTINEL", "FAILOVER", name)
        if reply != "+OK":
            raise RuntimeError(f"SENTINEL FAILOVER: {reply}")
    else:
        procs.kill9(f"t{fault}-node1")
    log(f"timeline {fault}: {TL_FAULTS[fault]} at {(cmd_ms - start_ms) / 1000:.2f} s of the run")

    wait_until("+switch-master", lambda: first_event("+switch-master", cmd_ms),
               timeout=30, procs=procs)
    status = procs.wait_exit(load_name, timeout=max(5.0, (start_ms / 1000 + duration_s + 10)
                                                    - time.time()))
    if status != 0:
        raise RuntimeError(f"timeline load exited with {status}; see {load_log}")
    for t in (*sentinel_events, hap_states):
        t.stop()

    switch_ms, payload = first_event("+switch-master", cmd_ms)
    # "<name> <old ip> <old port> <new ip> <new port>"
    new_master = int(payload.split()[4])
    odown = first_event("+odown", cmd_ms)
    promotion = first_event("+failover-state-send-slaveof-noone", cmd_ms)
    demoted = first_event("+convert-to-slave", cmd_ms)

    lost_path = os.path.join(out_dir, f"timeline-{fault}-lost.csv")
    lost = lost_writes(new_master, acked_path, lost_path, start_ms, duration_s)
    proxies = {}
    for t, admin in admins.items():
        route = proxy_route_status(admin)
        fence = route.get("last_fence") or {}
        master = route.get("master") or {}
        proxies[t] = {
            # Only a fence of the old master after the fault is this failover's.
            "fence_ms": fence["unix"] * 1000
            if fence.get("unix", 0) * 1000 >= cmd_ms - 1
            and fence.get("master", "").endswith(f":{old_master}") else None,
            "fence_reason": fence.get("reason"),
            "routed_ms": master["verified_unix"] * 1000
            if master.get("addr", "").endswith(f":{new_master}") else None,
        }
    old_server, new_server = "node1", f"node{nodes.index(new_master) + 1}"
    hap = {
        "out_ms": hap_states.first(lambda st: not serving(st.get(old_server)), cmd_ms),
        "in_ms": hap_states.first(lambda st: serving(st.get(new_server)), cmd_ms),
    }

    # Events for the picture and its events CSV, the fault first (time zero there).
    events = [(cmd_ms, TL_FAULTS[fault], "")]
    if fault == "kill" and odown:
        events.append((odown[0], "+odown", ""))
    events.append((switch_ms, "+switch-master", ""))
    if demoted:
        events.append((demoted[0], "+convert-to-slave (old master demoted)", ""))
    for key, label in (("fence_ms", "proxy fence"),
                       ("routed_ms", "proxy routes to the new master")):
        if proxies[TL_HOLD][key] is not None:
            events.append((proxies[TL_HOLD][key], label, TL_HOLD))
    for key, label in (("out_ms", "HAProxy: old master out"), ("in_ms", "HAProxy: new master in")):
        if hap[key] is not None:
            events.append((hap[key], label, TL_HAP))
    events_path = os.path.join(out_dir, f"timeline-{fault}-events.csv")
    with open(events_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["unix_ms", "label", "target"])
        for t, label, target in events:
            w.writerow([f"{t:.1f}", label, target])
    svg_path = os.path.join(out_dir, f"timeline-{fault}.svg")
    what = "SENTINEL FAILOVER" if fault == "failover" else "kill -9 of the master"
    subprocess.run([tl_bin, "plot", "--csv", csv_path, "--events", events_path,
                    "--lost", lost_path, "--out", svg_path, "--title",
                    f"SET through each middle box across a {what}: 3 nodes, 3 sentinels "
                    f"(quorum 2, down-after {TL_DOWN_AFTER_MS} ms), {TL_CLIENTS} clients per box"],
                   check=True)

    procs.stop_prefix(prefix)
    return {
        "fault": fault,
        "label": TL_FAULTS[fault],
        "duration_s": duration_s,
        "fired_at_s": (cmd_ms - start_ms) / 1000,
        "switch_ms": switch_ms - cmd_ms,
        "odown_ms": odown[0] - cmd_ms if odown else None,
        "promotion_ms": promotion[0] - cmd_ms if promotion else None,
        "demoted_ms": demoted[0] - cmd_ms if demoted else None,
        "proxies": {t: {k: (v - cmd_ms if k.endswith("_ms") and v is not None else v)
                        for k, v in d.items()} for t, d in proxies.items()},
        "haproxy": {k: (v - cmd_ms if v is not None else None) for k, v in hap.items()},
        "targets": per_middle_box(fault, csv_path, summary_path, lost, ready_ms, cmd_ms),
        "svg": os.path.basename(svg_path),
    }


def lost_writes(new_master, acked_path, lost_path, start_ms, duration_s):
    """Every write has its own key: an acknowledged write whose key the new master does not
    have is lost (it went to the old master after the promotion, or had not replicated).
    Returns {target: [unix ms of each lost write's acknowledgement]} and writes their count
    per 100 ms bucket to lost_path (for the picture)."""
    acked = read_csv(acked_path)
    key = lambda a: f"rfp:timeline:{a['target']}:{a['client']}:{a['seq']}"  # noqa: E731
    gone = set(missing_keys(new_master, [key(a) for a in acked]))
    lost = {t: [] for t in TL_TARGETS}
    for a in acked:
        if key(a) in gone:
            lost[a["target"]].append(float(a["unix_ms"]))
    with open(lost_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["target", "bucket_start_unix_ms", "lost"])
        for t, times in lost.items():
            per_bucket = {}
            for at in times:
                # As the load generator does: the end of the run belongs to the last bucket.
                i = min(int((at - start_ms) // 100), int(duration_s * 10) - 1)
                b = int(start_ms) + i * 100
                per_bucket[b] = per_bucket.get(b, 0) + 1
            for b, n in sorted(per_bucket.items()):
                w.writerow([t, b, n])
    return lost


def per_middle_box(fault, csv_path, summary_path, lost, ready_ms, cmd_ms):
    """Per middle box: the load generator's summary (times made relative to the fault), the
    lost writes, and the longest run of 100 ms buckets without a success (as pictured)."""
    buckets = read_csv(csv_path)
    targets = {}
    for row in read_csv(summary_path):
        t = row["target"]
        mine = [b for b in buckets if b["target"] == t]
        if not any(int(b["ok"]) for b in mine if float(b["bucket_start_unix_ms"]) + 100 <= cmd_ms):
            raise RuntimeError(f"timeline {fault}: no successful request through {t} before "
                               "the fault; the setup is broken")
        # From the first full bucket after `ready`; the last bucket is cut short by the end.
        run_len = longest = 0
        for b in mine[:-1]:
            if float(b["bucket_start_unix_ms"]) < ready_ms:
                continue
            run_len = run_len + 1 if int(b["ok"]) == 0 else 0
            longest = max(longest, run_len)
        rel = lambda v: float(v) - cmd_ms if v else None  # noqa: E731
        targets[t] = {
            "ok": int(row["ok"]),
            "failed": int(row["err_conn"]) + int(row["err_reply"]),
            "err_conn": int(row["err_conn"]),
            "err_reply": int(row["err_reply"]),
            "outage_ms": float(row["longest_gap_ms"]),
            "outage_from_ms": rel(row["gap_start_unix_ms"]),
            "outage_open": row["gap_open"] == "1",
            "worst_client_ms": float(row["worst_client_gap_ms"]),
            "worst_client_from_ms": rel(row["worst_client_gap_start_unix_ms"]),
            "worst_client_open": row["worst_client_gap_open"] == "1",
            "zero_buckets_ms": longest * 100,
            "first_error_ms": rel(row["first_error_unix_ms"]),
            "last_error_ms": rel(row["last_error_unix_ms"]),
            "slowest_ms": float(row["slowest_ms"]),
            "error_kinds": row["error_kinds"],
            "lost": len(lost[t]),
            "lost_first_ms": min(lost[t]) - cmd_ms if lost[t] else None,
            "lost_last_ms": max(lost[t]) - cmd_ms if lost[t] else None,
        }
    return targets


def timeline_scenario(procs, work, binary, tl_bin, out_dir, quick):
    """SENTINEL FAILOVER, then (full runs) kill -9 of the master, each on a fresh group."""
    os.makedirs(out_dir, exist_ok=True)
    faults = ["failover"] if quick else ["failover", "kill"]
    # Long enough after the fault for HAProxy's checks to take the old master out (3 failed
    # checks, each ending at its 1 s timeout) and the new one in.
    # (Sentinel demotes a still-running old master only ~8 s after the switch: the full run
    # covers that too, the quick one only the switch.)
    duration_s, fire_at_s = (10, 2.5) if quick else (24, 4)
    runs = []
    for fault in faults:
        log(f"timeline: {TL_FAULTS[fault]} under load through {', '.join(TL_TARGETS)}")
        r = timeline_run(procs, work, binary, tl_bin, out_dir, fault, duration_s, fire_at_s)
        for t, d in r["targets"].items():
            log(f"timeline {fault}: {t}: outage {d['outage_ms']:.0f} ms, {d['failed']} failed "
                f"({d['error_kinds'] or '-'}), slowest reply {d['slowest_ms']:.0f} ms")
        runs.append(r)
    return runs


# --------------------------------------------------------------------------- TLS
#
# Mutual TLS between each middle box and the master (and, for the proxy, the sentinel); the
# clients of the proxy and of HAProxy speak plain RESP on loopback, as an application next to
# its sidecar does. direct is redis-benchmark speaking TLS to the master itself.

TLS_MASTER = "benchtls"
TLS_TARGETS = ("direct", "proxy", "haproxy")
# How long the proxy may take to become ready (/readyz and a PING through it) before the
# scenario reports it as not available and goes on with direct and HAProxy.
TLS_PROXY_READY_S = PROXY_READY_S
# The target at c=50 P=16 GET: the proxy at least this share of direct TLS, and ahead of HAProxy.
TLS_TARGET_SID = "tls_c50_p16"
TLS_TARGET_RATIO = 0.80


def tls_scenarios(quick):
    """(id, description, redis-benchmark args, requests per test), as `scenarios`."""
    q = quick
    return [
        ("tls_c50_p1", "TLS c=50 P=1, SET and GET (3-byte values)",
         ["-c", "50", "-P", "1", "-t", "set,get"], 2_000 if q else 100_000),
        ("tls_c50_p16", "TLS c=50 P=16, GET",
         ["-c", "50", "-P", "16", "-t", "get"], 20_000 if q else 1_000_000),
        ("tls_c1_lat", "TLS c=1 P=1, GET (latency)",
         ["-c", "1", "-P", "1", "-t", "get"], 500 if q else 20_000),
    ]


def make_certs(d):
    """With the openssl CLI, in `d`: a CA, a server certificate (SAN IP:127.0.0.1 and
    DNS:localhost; redis-server's and the sentinel's) and a client certificate (redis-benchmark's,
    the proxy's, HAProxy's and the sentinel's own connections to the master), all ECDSA P-256,
    X.509 v3 with the usual extensions (strict verifiers such as webpki reject v1 or
    CA-less chains). Returns {name: path}."""
    os.makedirs(d, exist_ok=True)
    p = {k: os.path.join(d, f) for k, f in (
        ("ca", "ca.crt"), ("ca_key", "ca.key"), ("server", "server.crt"),
        ("server_key", "server.key"), ("client", "client.crt"), ("client_key", "client.key"),
        ("client_pem", "client.pem"))}

    def openssl(*argv):
        r = subprocess.run(["openssl", *argv], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"openssl {argv[0]} failed ({r.returncode}): {r.stderr.strip()}")

    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", "-x509", "-new", *key, "-keyout", p["ca_key"], "-out", p["ca"], "-days", "30",
            "-subj", "/CN=redis-failover-proxy bench CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for who, usage, san in (("server", "serverAuth", "IP:127.0.0.1,DNS:localhost"),
                            ("client", "clientAuth", None)):
        csr, ext = os.path.join(d, f"{who}.csr"), os.path.join(d, f"{who}.ext")
        with open(ext, "w") as f:
            f.write("basicConstraints=critical,CA:FALSE\n"
                    "keyUsage=critical,digitalSignature\n"
                    f"extendedKeyUsage={usage}\n"
                    + (f"subjectAltName={san}\n" if san else "")
                    + "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
        openssl("req", "-new", *key, "-keyout", p[f"{who}_key"], "-out", csr,
                "-subj", f"/CN=redis-failover-proxy bench {who}")
        openssl("x509", "-req", "-in", csr, "-CA", p["ca"], "-CAkey", p["ca_key"],
                "-set_serial", str(int.from_bytes(os.urandom(8), "big") >> 1), "-days", "30",
                "-out", p[who], "-extfile", ext)
    # HAProxy's `crt` takes the certificate and its key in one file.
    with open(p["client_pem"], "w") as f:
        for k in ("client", "client_key"):
            f.write(open(p[k]).read())
    return p


def tls_context(certs, client_cert=True):
    """A client context that verifies the server against the bench CA (and its name,
    127.0.0.1) and, unless `client_cert` is false, presents the client certificate."""
    import ssl

    ctx = ssl.create_default_context(cafile=certs["ca"])
    if client_cert:
        ctx.load_cert_chain(certs["client"], certs["client_key"])
    return ctx


def rcli_tls(port, certs, *args):
    r = subprocess.run(["redis-cli", "-h", HOST, "-p", str(port), "--tls", "--cacert", certs["ca"],
                        "--cert", certs["client"], "--key", certs["client_key"], "--raw",
                        *map(str, args)], capture_output=True, text=True, timeout=5)
    return r.stdout.splitlines()


def start_tls_master(procs, work, certs):
    """redis-server with a TLS port only (`port 0`) and `tls-auth-clients yes`."""
    port = free_port()
    d = os.path.join(work, "tls_master")
    os.makedirs(d, exist_ok=True)
    argv = [
        "redis-server", "--port", "0", "--tls-port", str(port), "--bind", HOST, "--dir", d,
        "--tls-cert-file", certs["server"], "--tls-key-file", certs["server_key"],
        "--tls-ca-cert-file", certs["ca"], "--tls-auth-clients", "yes",
        "--save", "", "--appendonly", "no", "--daemonize", "no", "--maxclients", "30000",
    ]
    p = procs.start("tls_master", argv, cwd=d)
    ctx = tls_context(certs)
    wait_until(f"tls_master PING over TLS on :{port}",
               lambda: redis_cmd(port, "PING", timeout=1.0, tls=ctx) == "+PONG", procs=procs)
    # Mutual TLS really is on: without a client certificate the master refuses the session.
    try:
        refused = redis_cmd(port, "PING", timeout=1.0,
                            tls=tls_context(certs, client_cert=False)) != "+PONG"
    except OSError:  # ssl.SSLError and connection resets alike
        refused = True
    if not refused:
        raise RuntimeError("tls_master answers a TLS client without a certificate "
                           "(tls-auth-clients not in effect)")
    return port, p


def start_tls_sentinel(procs, work, certs, master_port):
    """One sentinel on a TLS port only, talking TLS (with the client certificate) to the
    master; down-after 10 minutes, so it never fails over during the run."""
    port = free_port()
    d = os.path.join(work, "tls_sentinel")
    os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, "sentinel.conf")
    with open(conf, "w") as f:
        f.write(
            f"bind {HOST}\nport 0\ntls-port {port}\ndir {d}\ndaemonize no\n"
            f"tls-cert-file {certs['server']}\ntls-key-file {certs['server_key']}\n"
            f"tls-client-cert-file {certs['client']}\ntls-client-key-file {certs['client_key']}\n"
            f"tls-ca-cert-file {certs['ca']}\ntls-auth-clients yes\ntls-replication yes\n"
            f"sentinel monitor {TLS_MASTER} {HOST} {master_port} 1\n"
            f"sentinel down-after-milliseconds {TLS_MASTER} 600000\n"
            f"sentinel failover-timeout {TLS_MASTER} 20000\n"
            f"sentinel parallel-syncs {TLS_MASTER} 1\n"
        )
    p = procs.start("tls_sentinel", ["redis-server", conf, "--sentinel"], cwd=d)

    def knows_master():
        lines = rcli_tls(port, certs, "SENTINEL", "MASTER", TLS_MASTER)
        f = dict(zip(lines[::2], lines[1::2]))
        # A run id comes from the master's INFO: the sentinel has reached it over TLS.
        return f.get("flags") == "master" and len(f.get("runid", "")) == 40

    wait_until(f"tls_sentinel reaching {TLS_MASTER} over TLS", knows_master, timeout=30,
               procs=procs)
    return port, p


def haproxy_check_status(stats_sock, server):
    """`check_status` of one server of backend redis_master (e.g. L7OK, SOCKERR)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(2)
        s.connect(stats_sock)
        s.sendall(b"show stat\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    rows = list(csv.reader(data.decode().lstrip("# ").splitlines()))
    h = rows[0]
    for r in rows[1:]:
        if len(r) == len(h) and r[0] == "redis_master" and r[h.index("svname")] == server:
            return r[h.index("check_status")].lstrip("* ")
    return None


def tls_haproxy_server_extra(certs):
    return (f" ssl verify required ca-file {certs['ca']} crt {certs['client_pem']} check-ssl")


def start_tls_proxy(procs, work, binary, sent_port, certs, timeout=TLS_PROXY_READY_S):
    """The proxy with `[tls]` (TLS to the sentinel and to every master session, plain to
    clients). Returns (listen port, admin addr, Popen, None) once /readyz answers 200 and a PING
    through it is answered, else (None, None, None, reason) with the proxy stopped: a binary
    without TLS support refuses the config (an unknown `[tls]` table) and exits."""
    listen, admin = free_port(), free_port()
    conf = os.path.join(work, "tls_proxy.toml")
    q = json.dumps  # a JSON string is a valid TOML basic string
    with open(conf, "w") as f:
        f.write(f"[admin]\nlisten = {q(f'{HOST}:{admin}')}\n\n"
                f"[sentinel]\naddresses = [{q(f'{HOST}:{sent_port}')}]\n\n"
                f"[tls]\nca = {q(certs['ca'])}\ncert = {q(certs['client'])}\n"
                f"key = {q(certs['client_key'])}\n\n"
                f"[[route]]\nmaster = {q(TLS_MASTER)}\nlisten = {q(f'{HOST}:{listen}')}\n"
                "max_connections = 50000\n")
    env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
    p = procs.start("tls_proxy", [binary, "--config", conf], env=env)
    reason = proxy_ready(procs, work, "tls_proxy", p, f"{HOST}:{admin}", listen, timeout)
    if reason is None:
        return listen, f"{HOST}:{admin}", p, None
    return None, None, None, reason


def tls_scenario(procs, work, binary, rounds, quick, noise=None):
    """Mutual TLS to the master: direct (redis-benchmark --tls) vs the proxy vs HAProxy, both
    with TLS to the master, interleaved per scenario in every round. Returns a dict for the
    report; a proxy that cannot run it is reported as not available, with the reason."""
    certs = make_certs(os.path.join(work, "tls"))
    master_port, master = start_tls_master(procs, work, certs)
    sent_port, _ = start_tls_sentinel(procs, work, certs, master_port)
    hap_extra = tls_haproxy_server_extra(certs)
    hap_port, hap = start_haproxy(procs, work, [master_port], name="tls_haproxy",
                                  server_extra=hap_extra)
    stats = haproxy_stats_path(work, "tls_haproxy")
    # A server counts as UP before its first check: wait for a check that passed over TLS.
    wait_until("tls_haproxy: a health check passed over TLS (L7OK)",
               lambda: haproxy_check_status(stats, "node1") == "L7OK", timeout=15, procs=procs)
    proxy_port, admin, proxy, proxy_error = start_tls_proxy(procs, work, binary, sent_port, certs)
    log(f"tls: master :{master_port} (TLS only), sentinel :{sent_port} (TLS only), "
        f"haproxy :{hap_port}, proxy "
        + (f":{proxy_port} (admin {admin})" if proxy else f"not available ({proxy_error})"))

    tls_args = ["--tls", "--cacert", certs["ca"], "--cert", certs["client"],
                "--key", certs["client_key"]]
    ports = {"direct": master_port, "proxy": proxy_port, "haproxy": hap_port}
    pid_of = {"direct": master.pid, "proxy": proxy.pid if proxy else None, "haproxy": hap.pid}
    # A stalled middle box must not hold the whole run for long (a quick run's are ~1 s).
    timeout = 120 if quick else 600
    scen = tls_scenarios(quick)
    results, cpu = [], {}

    def drop_proxy(reason):
        nonlocal proxy_error
        proxy_error = reason
        log(f"tls: proxy not available: {reason}")
        procs.stop("tls_proxy")
        drop_target(results, cpu, "proxy")

    for rnd in range(1, rounds + 1):
        snap = noise.snap() if noise else None
        for sid, desc, bargs, n in scen:
            for tg in TLS_TARGETS:
                if not proxy_error and proxy.poll() is not None:
                    drop_proxy(f"exited with status {proxy.returncode} during round {rnd} "
                               f"({sid}): "
                               + last_log_line(os.path.join(work, "tls_proxy.log"), work))
                if tg == "proxy" and proxy_error:
                    continue
                procs.check_alive()
                c0 = cpu_seconds(pid_of[tg])
                try:
                    rows = run_benchmark(ports[tg], bargs + (tls_args if tg == "direct" else []),
                                         n, timeout=timeout)
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    if tg != "proxy":
                        raise
                    drop_proxy(f"redis-benchmark through it failed in round {rnd} {sid}: "
                               + str(e).replace(work.rstrip("/") + "/", "")[:300])
                    continue
                dc = cpu_seconds(pid_of[tg]) - c0
                cpm = dc / (n * len(rows)) * 1e6
                cpu.setdefault((sid, tg), []).append(cpm)
                for r in rows:
                    r.update(scenario=sid, target=tg, round=rnd, requests=n, cpu_per_m=cpm)
                    results.append(r)
                log(f"tls round {rnd}/{rounds} {sid:11} {tg:8} "
                    + ", ".join(f"{r['test']} {r['rps']:,.0f}/s p50 {r['p50_ms']}ms"
                                for r in rows)
                    + f", cpu {cpm:.2f}s/M")
        if noise:
            noise.add(f"TLS round {rnd}", snap, noise.snap())
    procs.stop_prefix("tls_")
    return {
        "rounds": rounds, "scen": scen, "results": results, "cpu": cpu,
        "proxy_error": proxy_error,
        "haproxy_server": f"server node1 127.0.0.1:PORT check inter 1s"
                          + hap_extra.replace(os.path.join(work, "tls") + "/", ""),
    }



# --------------------------------------------------------------------------- report


def sh(argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001
        return "?"


def machine(repo):
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    # Builds and other test runs on the same 2 cores skew every number: count compilers and
    # redis-server processes that are not ours (a test suite starts its own).
    ours = set()
    pids_file = os.path.join(os.environ.get("RFP_BENCH_WORK", "/nonexistent"), "pids")
    if os.path.exists(pids_file):
        ours = set(open(pids_file).read().split())
    busy = []
    for line in sh(["ps", "-eo", "pid=,comm="]).splitlines():
        pid, _, comm = line.strip().partition(" ")
        comm = comm.strip()
        if comm in ("cargo", "rustc", "cargo-clippy", "clippy-driver") or (
            comm.startswith("redis-") and pid not in ours
        ):
            busy.append(comm)
    os_name = "?"
    if os.path.exists("/etc/os-release"):
        for line in open("/etc/os-release"):
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip().strip('"')
    mem_gib = 0.0
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal:"):
            mem_gib = int(line.split()[1]) / (1024 * 1024)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "os": os_name,
        "mem_gib": mem_gib,
        "kernel": platform.release(),
        "halt_poll": halt_poll_state()[0],
        "redis": sh(["redis-server", "--version"]).split(" sha=")[0],
        "haproxy": sh(["haproxy", "-v"]).splitlines()[0] if sh(["haproxy", "-v"]) else "?",
        "commit": sh(["git", "-C", repo, "describe", "--always", "--dirty"]),
        "load": " ".join(open("/proc/loadavg").read().split()[:3]),
        "busy": len(busy),
        "busy_names": sorted(set(busy)),
    }


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def fmt(x, nd=0):
    if x != x:  # NaN
        return "–"
    return f"{x:,.{nd}f}"


def fmt_signed(x, nd):
    """`+0.008`; a value that rounds to zero is `+0.000`, never `-0.000`."""
    if x == x and abs(x) < 0.5 * 10 ** -nd:
        x = 0.0
    return f"{x:+,.{nd}f}"


def fmt_ms(v, signed=False):
    if v is None:
        return "–"
    return f"{v:+,.0f} ms" if signed else f"{v:,.0f} ms"


def timeline_lines(runs):
    """The failover timeline section of the report (latest.md and timeline.md)."""
    if not runs:
        return []
    r0 = runs[0]

    def gap(ms, still_open):
        return f"≥ {fmt_ms(ms)} (not over at the end)" if still_open else fmt_ms(ms)

    lines = [
        "## Failover timeline: what clients see through each middle box",
        "",
        f"A fresh group per fault: 3 nodes + 3 sentinels (quorum 2, `down-after-milliseconds "
        f"{TL_DOWN_AFTER_MS}`) on loopback. In front of it at the same time: the proxy with "
        "its default hold (`hold_timeout` 10 s), a second proxy with `hold_timeout = \"0s\"` "
        "(a client arriving while there is no verified master is closed at once), and HAProxy "
        "(configured as above, checking all three nodes). `timeline load` runs "
        f"{TL_CLIENTS} clients per middle box, each sending `SET` (a new key per write) and "
        f"waiting for the reply, at most one request per {TL_INTERVAL_MS} ms; after a failure "
        "a client reconnects at once (then every 10 ms while it keeps failing); no reply "
        f"within {TL_TIMEOUT_MS / 1000:.0f} s counts as a failure. Runs of "
        f"{r0['duration_s']} s, the fault at ~{r0['fired_at_s']:.1f} s.",
        "",
        "**Outage**: the longest time without a single successful reply through that middle "
        "box (all its clients together). **Failed**: requests that got no `+OK` (refused or "
        "closed connection, timeout, error reply); a failing client retries every 10 ms, so "
        "this counts attempts, not lost data. **Lost**: writes acknowledged with `+OK` whose "
        "key the new master does not have after the run (written to the old master after "
        "the promotion, where Sentinel's resync later discards them).",
        "",
        "| fault | " + " | ".join(f"{t}: outage | failed | lost" for t in TL_TARGETS) + " |",
        "|---|" + "---:|---:|---:|" * len(TL_TARGETS),
    ]
    for r in runs:
        cells = []
        for t in TL_TARGETS:
            d = r["targets"][t]
            cells += [gap(d["outage_ms"], d["outage_open"]), f"{d['failed']:,}",
                      f"{d['lost']:,}"]
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Events, relative to the fault (sentinel events when the first of the three sentinels "
        "published them; the proxies' from their `/status`: `last_fence.unix` and the new "
        "master's `verified_unix`; HAProxy's from its stats socket, polled every 20 ms; – : "
        "not within the run):",
        "",
        "| fault | +odown | promotion starts | +switch-master | old master demoted "
        "(`+convert-to-slave`) | proxy fence (hold / no hold) | proxy routes to the new master "
        "(hold / no hold) | HAProxy: old master out | HAProxy: new master in |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        p = r["proxies"]
        ev = lambda v: fmt_ms(v, True)  # noqa: E731
        lines.append(
            f"| {r['label']} | {ev(r['odown_ms'])} | {ev(r['promotion_ms'])} | "
            f"{ev(r['switch_ms'])} | {ev(r['demoted_ms'])} | "
            f"{ev(p[TL_HOLD]['fence_ms'])} / {ev(p[TL_NOHOLD]['fence_ms'])} | "
            f"{ev(p[TL_HOLD]['routed_ms'])} / {ev(p[TL_NOHOLD]['routed_ms'])} | "
            f"{ev(r['haproxy']['out_ms'])} | {ev(r['haproxy']['in_ms'])} |")
    lines += [
        "",
        "Per middle box: the longest time one client went without a successful reply (longer "
        "than the outage when some clients fail while others get through), failures by kind "
        "(`eof`: the middle box closed the connection; `-READONLY`: a write reached a "
        "replica), first and last failure, when the lost writes were acknowledged, the longest "
        "run of 100 ms buckets without a success (as in the picture) and the slowest "
        "successful request (a held one, for the proxy with the hold).",
        "",
        "| fault | middle box | requests ok | worst client | failed, by kind | first / last "
        "failure | lost: acknowledged from / to | no success in 100 ms buckets | slowest reply |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in runs:
        for t in TL_TARGETS:
            d = r["targets"][t]
            kinds = ", ".join(f"{k} {n}" for k, n in
                              (kv.split("=") for kv in d["error_kinds"].split(";") if kv)) or "–"
            lines.append(
                f"| {r['label']} | {t} | {d['ok']:,} | "
                f"{gap(d['worst_client_ms'], d['worst_client_open'])} | {kinds} | "
                f"{fmt_ms(d['first_error_ms'], True)} / {fmt_ms(d['last_error_ms'], True)} | "
                f"{fmt_ms(d['lost_first_ms'], True)} / {fmt_ms(d['lost_last_ms'], True)} | "
                f"{fmt_ms(d['zero_buckets_ms'])} | {fmt_ms(d['slowest_ms'])} |")
    lines.append("")
    for r in runs:
        lines += [f"![{r['label']}: requests per 100 ms through each middle box]({r['svg']})",
                  ""]
    return lines


def timeline_rows(runs):
    """Long-format rows (scenario, target, metric, value) for the CSVs."""
    rows = []
    for r in runs:
        sid = f"timeline_{r['fault']}"
        for t, d in r["targets"].items():
            for k in ("ok", "failed", "err_conn", "err_reply", "lost", "lost_first_ms",
                      "lost_last_ms", "outage_ms", "outage_from_ms", "worst_client_ms",
                      "worst_client_from_ms", "zero_buckets_ms", "first_error_ms",
                      "last_error_ms", "slowest_ms"):
                rows.append((sid, t, k, "" if d[k] is None else round(d[k], 1)))
            rows.append((sid, t, "outage_open", int(d["outage_open"])))
            rows.append((sid, t, "worst_client_open", int(d["worst_client_open"])))
            rows.append((sid, t, "error_kinds", d["error_kinds"]))
        for k in ("odown_ms", "promotion_ms", "switch_ms", "demoted_ms"):
            rows.append((sid, "", k, "" if r[k] is None else round(r[k], 1)))
        for t, d in r["proxies"].items():
            for k in ("fence_ms", "routed_ms"):
                rows.append((sid, t, k, "" if d[k] is None else round(d[k], 1)))
        for k, v in r["haproxy"].items():
            rows.append((sid, TL_HAP, f"haproxy_{k}", "" if v is None else round(v, 1)))
    return rows


def write_timeline_report(out_dir, info, runs, binary, repo):
    """timeline.md and timeline-summary.csv: the timeline on its own, so that a run of only
    this scenario does not replace latest.md."""
    with open(os.path.join(out_dir, "timeline-summary.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["scenario", "target", "metric", "value"])
        w.writerows(timeline_rows(runs))
    head = [
        "# Failover timeline: redis-failover-proxy (with and without its hold) vs HAProxy",
        "",
        f"- date: {info['date']}; machine: {info['nproc']} CPUs, {info['cpu']}, "
        f"kernel {info['kernel']}",
        f"- {info['redis']}; {info['haproxy']}",
        "- proxy: "
        + (f"release build of `{info['commit']}`"
           if os.path.abspath(binary) == os.path.join(repo, "target/release/redis-failover-proxy")
           else f"`RFP_BENCH_BIN` (working tree at `{info['commit']}`)")
        + f"; load average at start {info['load']}"
        + ("" if info["busy"] == 0 else
           f"; **NOT QUIET**: {', '.join(info['busy_names'])} running at the start"),
        "- raw data: `timeline-FAULT.csv` (per middle box and 100 ms: ok, failed, slowest), "
        "`timeline-FAULT-lost.csv` (acknowledged then lost, per 100 ms), "
        "`timeline-FAULT-events.csv`, `timeline-summary.csv` (every number below)",
        "",
    ]
    with open(os.path.join(out_dir, "timeline.md"), "w") as f:
        f.write("\n".join(head + timeline_lines(runs)[1:]))


def halt_poll_lines(results, cpu, vals, note):
    """The c=1 scenario again with the guest's halt polling on, next to the same rounds'
    runs without it; or why it did not run."""
    tgs = tuple(HALT_POLL_TARGETS)
    lines = ["", "## Guest halt polling (same run): the c=1 scenario with "
             f"`guest_halt_poll_ns` = {HALT_POLL_NS:,}", ""]
    if not any(r["target"] in tgs for r in results):
        return lines + [f"Not run: {note}."]
    base = tuple(HALT_POLL_TARGETS.values())
    lines += [
        "On a KVM guest an idle vCPU halts, and waking it (an interrupt from the host) takes "
        "tens of microseconds. With `cpuidle-haltpoll`, the guest polls for up to "
        "`guest_halt_poll_ns` before it halts; this machine boots with it at 0 (off). Each round "
        f"ran the c=1 scenario once more with it at {HALT_POLL_NS:,} ns (the kernel's "
        "default), through the same processes, then set it back to 0. A machine setting, not "
        "the proxy's: it changes direct's latency as much as the middle boxes'. What a middle "
        "box adds with it on is closer to its own work: two more loopback deliveries and two "
        "more wakeups that no longer halt the vCPU. Medians over the rounds.",
        "",
        "Halt polling off (the runs above):",
        "",
        *c1_median_lines(vals, base),
        "",
        "Halt polling on:",
        "",
        *c1_median_lines(vals, tgs),
        "",
        *rps_cpu_lines(vals, cpu, (("c1_lat", "GET"),), base + tgs, base[1:] + tgs[1:]),
    ]
    return lines


def busy_lines(results, cpu, vals):
    """The proxy with busy polling next to the default proxy and HAProxy: c=1 latency, and
    requests/s and CPU at c=50 P=1 (the price)."""
    tgs = ("direct", "proxy", BUSY_TARGET, "haproxy", "haproxy_tuned")
    lines = [
        "",
        f"## Busy polling (same run): `[runtime] busy_poll = \"{BUSY_POLL}\"`",
        "",
        f"A third proxy with the same binary and config plus `busy_poll = \"{BUSY_POLL}\"` "
        "(off by default): before a session thread sleeps, it keeps polling its epoll instance "
        "for up to that long, yielding the CPU between polls. Run in the c=1 latency and the "
        "c=50 P=1 scenarios, after the others in every round. Medians over the rounds.",
        "",
        *c1_median_lines(vals, tgs),
        "",
        *rps_cpu_lines(vals, cpu, (("c1_lat", "GET"), ("c50_p1", "SET"), ("c50_p1", "GET")),
                       tgs, tgs[1:]),
    ]
    return lines


def rps_cpu_lines(vals, cpu, keys, tgs, cpu_tgs, ratio=None, label=LABEL):
    """Per (scenario, test) of `keys`: median requests/s of each of `tgs` and median CPU per
    million requests of each of `cpu_tgs`; with `ratio` = (a, b), a / b of both medians."""
    r = [f"{label[ratio[0]]} / {label[ratio[1]]}"] if ratio else []
    lines = [
        "| scenario | " + " | ".join([f"{label[tg]} req/s" for tg in tgs] + r
                                     + [f"{label[tg]} CPU s/M" for tg in cpu_tgs] + r) + " |",
        "|---|" + "---:|" * (len(tgs) + len(cpu_tgs) + 2 * len(r)),
    ]
    for sid, test in keys:
        m = {tg: med(vals(sid, test, tg, "rps")) for tg in set(tgs) | set(ratio or ())}
        c = {tg: med(cpu.get((sid, tg), [])) for tg in set(cpu_tgs) | set(ratio or ())}
        rm = [fmt(m[ratio[0]] / m[ratio[1]] if m[ratio[1]] else NAN, 2)] if ratio else []
        rc = [fmt(c[ratio[0]] / c[ratio[1]] if c[ratio[1]] else NAN, 2)] if ratio else []
        lines.append(f"| {SHORT[sid]} {test} | " + " | ".join(
            [fmt(m[tg]) for tg in tgs] + rm + [fmt(c[tg], 2) for tg in cpu_tgs] + rc) + " |")
    lines += ["", "CPU s/M: seconds of utime+stime per million requests over the scenario's "
                  "whole run (SET and GET together where it has both)."]
    return lines


def uring_lines(results, cpu, scen, vals, error, fds, quick):
    """The proxy with the io_uring engine next to the proxy (epoll) and HAProxy in every
    scenario: requests/s and CPU per million requests, their ratios to epoll, the c=1
    latency, the spread over the rounds and the verdicts. `error`: why it was not measured."""
    lines = [
        "",
        "## io_uring engine (same run): `[runtime] engine = \"io_uring\"`",
        "",
        "One more proxy with the same binary and config plus `[runtime] engine = \"io_uring\"` "
        "(the default engine is `\"epoll\"`: the proxy everywhere else in this report). Run "
        "in every scenario of the rounds (" + ", ".join(SHORT[sid] for sid in URING_SCENARIOS)
        + "), after the others in every round.",
        "",
    ]
    if error:
        return lines + [f"**Not measured** ({error}). The other targets were measured as usual."]
    keys = [(sid, t) for sid, _, _, _ in scen if sid in URING_SCENARIOS
            for t in dict.fromkeys(r["test"] for r in results
                                   if r["scenario"] == sid and r["target"] == URING_TARGET)]
    if not keys:
        return lines + ["No rounds ran."]
    if fds is not None:
        lines += [f"io_uring instances open in it after its start (`anon_inode:[io_uring]` in "
                  f"/proc/PID/fd): {fds}.", ""]
    label = dict(LABEL, proxy="proxy (epoll)")
    lines += [
        "Medians over the rounds; the two ratio columns are proxy (io_uring) over proxy "
        "(epoll), requests/s and CPU.",
        "",
        *rps_cpu_lines(vals, cpu, keys, ("proxy", URING_TARGET, "haproxy"),
                       ("proxy", URING_TARGET, "haproxy"), ratio=(URING_TARGET, "proxy"),
                       label=label),
        "",
        *c1_median_lines(vals, ("direct", "proxy", URING_TARGET, "haproxy", "haproxy_tuned"),
                         label),
        "",
        "Spread over the rounds: median [95 % bootstrap interval of the median] (min – max) of "
        "requests/s and of proxy (io_uring) / proxy (epoll) per round (same round's runs), and "
        "proxy (io_uring)'s verdict against each HAProxy config, decided as in \"Throughput: "
        "spread over the rounds and verdicts\"."
        + (" Quick run: verdicts meaningless." if quick else ""),
        "",
        *verdict_table(results, URING_TARGET, ("proxy", URING_TARGET, "haproxy", "haproxy_tuned"),
                       keys, ratio_to="proxy", label=label),
    ]
    return lines + cpu_ratio_lines(results, URING_TARGET, ("proxy",) + HAPROXY_CONFIGS, label)


def c1_median_lines(vals, tgs, label=LABEL):
    """c=1 GET: median p50 and p99 of each of `tgs` (the direct one first) and what each adds
    to that one's."""
    lines = [
        "| c=1 GET (ms) | " + " | ".join(label[tg] for tg in tgs) + " | "
        + " | ".join(f"{label[tg]} added" for tg in tgs[1:]) + " |",
        "|---|" + "---:|" * (2 * len(tgs) - 1),
    ]
    for key, name in (("p50_ms", "p50"), ("p99_ms", "p99")):
        m = {tg: med(vals("c1_lat", "GET", tg, key)) for tg in tgs}
        lines.append(f"| {name} | " + " | ".join(f"{m[tg]:.3f}" for tg in tgs) + " | "
                     + " | ".join(fmt_signed(m[tg] - m[tgs[0]], 3) for tg in tgs[1:]) + " |")
    return lines


def pinned_lines(results, cpu, scen, vals, note):
    """The proxy with pinned session threads and HAProxy with cpu-map, next to the same
    round's direct runs."""
    lines = [
        "",
        "## Pinned threads (same run)",
        "",
        "Two more middle boxes, run only in the two c=50 scenarios below, right after direct, "
        "proxy, HAProxy and HAProxy (tuned) in every round (direct is the same runs as above):",
        "",
        *(note or []),
        "",
        "| scenario | test | direct | proxy (pinned) | HAProxy (cpu-map) | "
        "proxy (pinned) / direct | HAProxy (cpu-map) / direct |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    ran = [(sid, desc) for sid, desc, _, _ in scen
           if any(r["scenario"] == sid and r["target"] in PINNED_TARGETS for r in results)]
    for sid, desc in ran:
        tests = []
        for r in results:
            if r["scenario"] == sid and r["target"] in PINNED_TARGETS and r["test"] not in tests:
                tests.append(r["test"])
        for t in tests:
            m = {tg: med(vals(sid, t, tg, "rps")) for tg in ("direct",) + PINNED_TARGETS}
            rp = m["proxy_pinned"] / m["direct"] if m["direct"] else float("nan")
            rh = m["haproxy_pinned"] / m["direct"] if m["direct"] else float("nan")
            lines.append(f"| {desc} | {t} | {fmt(m['direct'])} | {fmt(m['proxy_pinned'])} | "
                         f"{fmt(m['haproxy_pinned'])} | {fmt(rp, 2)} | {fmt(rh, 2)} |")
    lines += [
        "",
        "CPU per million requests (seconds of utime+stime, measured as for the CPU table below):",
        "",
        "| scenario | proxy (pinned) | HAProxy (cpu-map) | proxy (pinned) / HAProxy (cpu-map) |",
        "|---|---:|---:|---:|",
    ]
    for sid, desc in ran:
        c = {tg: med(cpu.get((sid, tg), [])) for tg in PINNED_TARGETS}
        ratio = c["proxy_pinned"] / c["haproxy_pinned"] if c["haproxy_pinned"] else float("nan")
        lines.append(f"| {desc} | {fmt(c['proxy_pinned'], 2)} | {fmt(c['haproxy_pinned'], 2)} | "
                     f"{fmt(ratio, 2)} |")
    return lines


def throughput_lines(results, cpu, scen, vals, headline, pinned_note=None, failed_runs=(),
                     quick=False, uring=None, uring_fds=None, halt_poll_note=None):
    """The throughput, c=1 latency and CPU tables (and, if they ran, the pinned variants',
    busy polling's and, unless `uring` is None, the io_uring engine's after the throughput
    table); fills `headline` with the ratios."""
    mids = [tg for tg in TARGETS if tg != "direct"]
    lines = [
        "",
        "Medians over the rounds. Ratios are to direct (higher is better for requests/s; "
        "latency columns show the median and, for the middle boxes, the median added over direct).",
        "",
        "## Throughput (requests/s)",
        "",
        "| scenario | test | " + " | ".join(LABEL[tg] for tg in TARGETS) + " | "
        + " | ".join(f"{LABEL[tg]} / direct" for tg in mids) + " |",
        "|---|---|" + "---:|" * (len(TARGETS) + len(mids)),
    ]
    for sid, desc, _, _ in scen:
        tests = []
        for r in results:
            if r["scenario"] == sid and r["test"] not in tests:
                tests.append(r["test"])
        for t in tests:
            m = {tg: med(vals(sid, t, tg, "rps")) for tg in TARGETS}
            ratio = {tg: m[tg] / m["direct"] if m["direct"] else float("nan") for tg in mids}
            headline[(sid, t)] = tuple(ratio[tg] for tg in mids)
            lines.append(f"| {desc} | {t} | " + " | ".join(fmt(m[tg]) for tg in TARGETS) + " | "
                         + " | ".join(fmt(ratio[tg], 2) for tg in mids) + " |")
    lines += spread_lines(results, quick)
    if failed_runs:
        lines += ["", f"**{len(failed_runs)} run(s) failed** and are left out of the medians:"]
        lines += [f"- round {rnd}, {sid}, {LABEL[tg]}: `{reason}`"
                  for rnd, sid, tg, reason in failed_runs]
    if any(r["target"] in PINNED_TARGETS for r in results):
        lines += pinned_lines(results, cpu, scen, vals, pinned_note)
    if any(r["target"] == BUSY_TARGET for r in results):
        lines += busy_lines(results, cpu, vals)
    if uring is not None:
        lines += uring_lines(results, cpu, scen, vals, uring, uring_fds, quick)
    lines += halt_poll_lines(results, cpu, vals, halt_poll_note)
    lines += [
        "",
        "## Latency at c=1 (ms)",
        "",
        "One client, one connection, `GET` of a 3-byte value, 30,000 requests after 1,000 "
        "unmeasured ones, each timed alone from its send to its whole reply (`timeline rtt`, "
        "bench/timeline/): percentiles at microsecond resolution (redis-benchmark's histogram "
        "has ~8 µs steps at these latencies). Medians over the rounds.",
        "",
        "| percentile | " + " | ".join(LABEL[tg] for tg in TARGETS) + " | "
        + " | ".join(f"{LABEL[tg]} added" for tg in mids) + " |",
        "|---|" + "---:|" * (len(TARGETS) + len(mids)),
    ]
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("avg_ms", "mean")):
        m = {tg: med(vals("c1_lat", "GET", tg, key)) for tg in TARGETS}
        lines.append(f"| {label} | " + " | ".join(f"{m[tg]:.3f}" for tg in TARGETS) + " | "
                     + " | ".join(fmt_signed(m[tg] - m["direct"], 3) for tg in mids) + " |")
    lines += latency_spread_lines(results)
    haps = [tg for tg in mids if tg != "proxy"]
    lines += [
        "",
        "## CPU per million requests (seconds of utime+stime, from /proc/PID/stat)",
        "",
        "The middle box's own CPU while it carried the run; redis-server's for reference.",
        "",
        "| scenario | " + " | ".join(LABEL[tg] for tg in mids) + " | redis-server (direct run) | "
        + " | ".join(f"proxy / {LABEL[tg]}" for tg in haps) + " |",
        "|---|" + "---:|" * (len(mids) + 1 + len(haps)),
    ]
    for sid, desc, _, _ in scen:
        c = {tg: med(cpu.get((sid, tg), [])) for tg in TARGETS}
        lines.append(f"| {desc} | " + " | ".join(fmt(c[tg], 2) for tg in mids) + " | "
                     f"{fmt(c['direct'], 2)} | "
                     + " | ".join(fmt(c["proxy"] / c[tg] if c[tg] else float("nan"), 2)
                                  for tg in haps) + " |")
    lines += cpu_ratio_lines(results)
    return lines


def spread(xs):
    """(max − min) / median over the rounds, in percent; – with fewer than two rounds."""
    m = med(xs)
    if len(xs) < 2 or not m or m != m:
        return "–"
    return f"{(max(xs) - min(xs)) / m * 100:.0f} %"


# --------------------------------------------------------------------------- targets (issue 11)
#
# Every target is judged on the spread over the rounds, not on a median alone: a target is
# met only when the whole 95 % bootstrap interval of the median lies on its side (for
# "ahead of HAProxy": the proxy's interval wholly above HAProxy's). An interval that
# straddles the limit, or two that overlap, is "not met" with that as the reason.

BOOT_RESAMPLES = 2000
# Fixed, so that the same rounds give the same intervals in every report.
BOOT_SEED = 11
# c=1 GET: the proxy's p50 minus direct's p50 in the same round.
ADDED_P50_MAX_MS = 0.015
# c=50 P=1: the proxy's CPU per request over HAProxy's, per round.
CPU_RATIO_MAX = 0.80
CPU_TARGET_SID = "c50_p1"
# Sessions -> the most the fence (evidence -> last session closed) may take.
FENCE_TARGETS_MS = {1000: 20.0, 10000: 150.0}
# (scenario, test) of "ahead of HAProxy in every throughput scenario".
THROUGHPUT_TARGETS = (("c50_p1", "SET"), ("c50_p1", "GET"), ("c50_p16", "GET"),
                      ("c50_16k", "SET"), ("c50_16k", "GET"), ("churn", "GET"))
SHORT = {"c50_p1": "c=50 P=1", "c50_p16": "c=50 P=16", "c50_16k": "c=50 P=1 16 KiB",
         "churn": "c=50 -k 0 (churn)", "c1_lat": "c=1"}
# When the machine was not quiet: CPU of other processes or steal, in % of the machine, in
# any round.
NOISE_OTHER_MAX_PCT = 5.0
NOISE_STEAL_MAX_PCT = 2.0
NAN = float("nan")


def boot_interval(xs):
    """95 % bootstrap interval of the median of `xs`: the 2.5th and 97.5th percentiles of the
    medians of BOOT_RESAMPLES resamples (with replacement, same size), seeded. One value
    gives [x, x]: no spread, not a certainty."""
    if not xs:
        return NAN, NAN
    rng = random.Random(BOOT_SEED)
    meds = sorted(statistics.median(rng.choices(xs, k=len(xs))) for _ in range(BOOT_RESAMPLES))
    return meds[int(0.025 * BOOT_RESAMPLES)], meds[int(0.975 * BOOT_RESAMPLES) - 1]


def stats_of(xs):
    """{n, min, med, max, lo, hi} of per-round values (lo/hi: boot_interval)."""
    xs = [x for x in xs if x == x]
    if not xs:
        return {"n": 0, "min": NAN, "med": NAN, "max": NAN, "lo": NAN, "hi": NAN}
    lo, hi = boot_interval(xs)
    return {"n": len(xs), "min": min(xs), "med": statistics.median(xs), "max": max(xs),
            "lo": lo, "hi": hi}


def fmt_stats(st, nd=0, signed=False, minmax=True):
    """`median [interval] (min – max)`, e.g. `48,532 [47,100 – 49,900] (46,000 – 50,100)`;
    without `minmax` only `median [interval]`."""
    if not st["n"]:
        return "–"

    def f(x):
        return fmt_signed(x, nd) if signed else fmt(x, nd)

    out = f"{f(st['med'])} [{f(st['lo'])} – {f(st['hi'])}]"
    return out + (f" ({f(st['min'])} – {f(st['max'])})" if minmax else "")


def compare(a, b):
    """`a` against `b`, higher is better: won / lost when the intervals do not overlap."""
    if not a["n"] or not b["n"]:
        return None
    if a["lo"] > b["hi"]:
        return "won"
    if a["hi"] < b["lo"]:
        return "lost"
    return "tie"


def rounds_ahead(a, b):
    """" (ahead in k of n rounds)": in how many of the rounds both ran `a` (per round) was
    above `b` in the same round. Not a verdict: the same runs seen in pairs, which a drift
    of the whole machine between rounds does not blur."""
    both = [r for r in a if r in b]
    if not both:
        return ""
    return f" (ahead in {sum(a[r] > b[r] for r in both)} of {len(both)} rounds)"


def at_most(st, limit):
    """(verdict, reason) for "at most `limit`": met when the whole interval is at or below."""
    if not st["n"]:
        return "not measured", "no data"
    if st["hi"] <= limit:
        return "met", ""
    if st["lo"] > limit:
        return "not met", "interval above the target"
    return "not met", "interval straddles the target"


def per_round(results, sid, test, tg, key):
    """{round: value} of one metric of one target."""
    return {r["round"]: r[key] for r in results
            if r["scenario"] == sid and r["test"] == test and r["target"] == tg}


def paired(a, b, op):
    """op(a[round], b[round]) for every round both have (a failed run drops its round)."""
    return [op(a[r], b[r]) for r in sorted(a) if r in b]


def target_rows(results, fences, quick, uring=None):
    """The summary: one dict per target of issue 11, with what was measured, the target and
    the verdict (met / not met / not measured) and its reason. `uring` (uring_state): None
    leaves the io_uring proxy's rows out, else why it was not measured ("" when it was)."""
    rows = []

    def add(tid, what, measured, goal, verdict, reason="", st=None, vs=""):
        rows.append({"id": tid, "what": what, "measured": measured, "goal": goal,
                     "verdict": verdict, "reason": reason, "stats": st, "vs": vs})

    def rnd(tg, key, sid="c1_lat", test="GET"):
        return per_round(results, sid, test, tg, key)

    no_rounds = "not measured", "no rounds (--rounds 0)"

    # Each rule below takes the target it judges (`tg`), the suffix of its rows' ids and what
    # to say when the target has no rounds: `missing` = (verdict, reason), or None to leave
    # its rows out then.
    # 1. Added latency at c=1.
    def c1_rows(tg, suffix, who, missing, base="direct", peer=lambda hap: hap):
        """`base`: the direct target of the same runs; `peer(hap)`: the target standing for
        HAProxy config `hap` in them."""
        if not rnd(tg, "p50_ms"):
            if missing:
                add(f"c1_added_p50{suffix}", f"c=1 GET: added p50 of {who}", "–",
                    f"≤ {ADDED_P50_MAX_MS} ms", *missing)
                for hap in HAPROXY_CONFIGS:
                    add(f"c1_added_p99{suffix}_vs_{hap}",
                        f"c=1 GET: added p99 of {who} − {LABEL[hap]}'s (per round)", "–", "≤ 0",
                        *missing, vs=hap)
            return
        st = stats_of(paired(rnd(tg, "p50_ms"), rnd(base, "p50_ms"), lambda p, d: p - d))
        add(f"c1_added_p50{suffix}", f"c=1 GET: added p50 of {who} ({LABEL[tg]} − "
            f"{LABEL[base]}, per round)", fmt_stats(st, 3, signed=True, minmax=False) + " ms",
            f"≤ {ADDED_P50_MAX_MS} ms", *at_most(st, ADDED_P50_MAX_MS), st=st)
        for hap in HAPROXY_CONFIGS:
            what = f"c=1 GET: added p99 of {who} − {LABEL[peer(hap)]}'s (per round)"
            if not rnd(peer(hap), "p99_ms"):
                add(f"c1_added_p99{suffix}_vs_{hap}", what, "–", "≤ 0", *no_rounds, vs=hap)
                continue
            # Direct's p99 of the round cancels: the proxy's added minus HAProxy's added is
            # the proxy's p99 minus HAProxy's p99 of the same round.
            st = stats_of(paired(rnd(tg, "p99_ms"), rnd(peer(hap), "p99_ms"),
                                 lambda p, h: p - h))
            verdict, reason = at_most(st, 0.0)
            reason = {"interval straddles the target": "tie: interval includes 0",
                      "interval above the target": f"{LABEL[tg]}'s p99 higher"}.get(reason,
                                                                                   reason)
            add(f"c1_added_p99{suffix}_vs_{hap}", what,
                fmt_stats(st, 3, signed=True, minmax=False) + " ms", "≤ 0", verdict, reason,
                st=st, vs=hap)

    # 3. Ahead of HAProxy in every throughput scenario.
    def rps_rows(tg, suffix, missing):
        for sid, test in THROUGHPUT_TARGETS:
            p = stats_of(list(per_round(results, sid, test, tg, "rps").values()))
            for hap in HAPROXY_CONFIGS:
                h = stats_of(list(per_round(results, sid, test, hap, "rps").values()))
                tid = f"rps_{sid}_{test}{suffix}_vs_{hap}"
                what = f"{SHORT[sid]} {test}: requests/s, {LABEL[tg]} vs {LABEL[hap]}"
                goal = f"{LABEL[tg]}'s interval wholly above"
                c = compare(p, h)
                if c is None:
                    if p["n"] or missing:
                        add(tid, what, "–", goal, *(missing if not p["n"] else no_rounds),
                            vs=hap)
                    continue
                add(tid, what,
                    f"{fmt_stats(p, minmax=False)} vs {fmt_stats(h, minmax=False)}", goal,
                    "met" if c == "won" else "not met",
                    {"won": "", "lost": f"lost: {LABEL[tg]}'s interval below",
                     "tie": "tie: intervals overlap"}[c], st=p, vs=hap)

    # 4. CPU per million requests at c=50 P=1.
    cpu_of = {}
    for r in results:
        if r["scenario"] == CPU_TARGET_SID:
            cpu_of.setdefault(r["target"], {})[r["round"]] = r["cpu_per_m"]

    def cpu_rows(tg, suffix, missing):
        for hap in HAPROXY_CONFIGS:
            tid = f"cpu_{CPU_TARGET_SID}{suffix}_vs_{hap}"
            what = (f"c=50 P=1: CPU per million requests, {LABEL[tg]} / {LABEL[hap]} "
                    "(per round)")
            if cpu_of.get(tg) and cpu_of.get(hap):
                st = stats_of(paired(cpu_of[tg], cpu_of[hap], lambda p, h: p / h if h else NAN))
                add(tid, what, fmt_stats(st, 2, minmax=False), f"≤ {CPU_RATIO_MAX:.2f}",
                    *at_most(st, CPU_RATIO_MAX), st=st, vs=hap)
            elif cpu_of.get(tg) or missing:
                add(tid, what, "–", f"≤ {CPU_RATIO_MAX:.2f}",
                    *(missing if not cpu_of.get(tg) else no_rounds), vs=hap)

    # The io_uring proxy's rows, when it was to run: "not measured (the reason)" if it was not.
    uring_missing = ("not measured", uring) if uring else no_rounds
    c1_rows("proxy", "", "the proxy", no_rounds)
    c1_rows(BUSY_TARGET, "_busy", f"the proxy with `busy_poll = \"{BUSY_POLL}\"` (not the "
            "default)", None)
    if uring is not None:
        c1_rows(URING_TARGET, "_uring", "the proxy with `engine = \"io_uring\"`", uring_missing)
    c1_rows("proxy_hp", "_haltpoll", "the proxy with the guest's halt polling on (a machine "
            f"setting: `guest_halt_poll_ns` = {HALT_POLL_NS // 1000} µs, the kernel's default; "
            "not the proxy's)", None, base="direct_hp", peer=lambda hap: hap + "_hp")
    rps_rows("proxy", "", no_rounds)
    if uring is not None:
        rps_rows(URING_TARGET, "_uring", uring_missing)
    cpu_rows("proxy", "", no_rounds)
    if uring is not None:
        cpu_rows(URING_TARGET, "_uring", uring_missing)
    # 5. Fencing and the reconnect storm after it.
    rows += fence_target_rows(fences)
    if quick:
        for r in rows:
            if r["verdict"] != "not measured":
                r["reason"] = "; ".join(x for x in (r["reason"], "quick run: meaningless") if x)
    return rows


def spread_lines(results, quick):
    """Throughput per target: median, interval and range over the rounds, and the verdict
    against each HAProxy config (the issue's "ahead of HAProxy in every throughput scenario")."""
    return [
        "",
        "## Throughput: spread over the rounds and verdicts",
        "",
        "Each cell: median [95 % bootstrap interval of the median] (min – max over the rounds), "
        "requests/s. **won** only when the proxy's interval lies wholly above that HAProxy "
        "config's, **lost** when wholly below, otherwise **tie** (the intervals overlap). "
        "\"ahead in k of n rounds\": the same runs in pairs (each round's proxy run against "
        "that round's HAProxy run), which a drift of the whole machine between rounds does not "
        "blur; shown, not used for the verdict."
        + (" Quick run: too few requests and rounds, verdicts meaningless." if quick else ""),
        "",
    ] + verdict_table(results, "proxy", TARGETS, THROUGHPUT_TARGETS)


def verdict_table(results, tg, cols, keys, ratio_to=None, label=LABEL):
    """Per (scenario, test) of `keys` where `tg` ran: requests/s of each target of `cols` as
    median [interval] (min – max) over the rounds; with `ratio_to`, `tg` / that target per
    round in the same form; then `tg`'s verdict against each HAProxy config (compare) in the
    throughput scenarios that have a target (THROUGHPUT_TARGETS), – in the others."""
    lines = [
        "| scenario | test | " + " | ".join(label[c] for c in cols) + " | "
        + (f"{label[tg]} / {label[ratio_to]} (per round) | " if ratio_to else "")
        + " | ".join(f"{label[tg]} vs {label[h]}" for h in HAPROXY_CONFIGS) + " |",
        "|---|---|" + "---:|" * (len(cols) + bool(ratio_to)) + "---|" * len(HAPROXY_CONFIGS),
    ]
    for sid, test in keys:
        rps = {c: per_round(results, sid, test, c, "rps") for c in set(cols) | {tg, ratio_to}
               if c}
        st = {c: stats_of(list(v.values())) for c, v in rps.items()}
        if not st[tg]["n"]:
            continue
        ratio = ([fmt_stats(stats_of(paired(rps[tg], rps[ratio_to],
                                            lambda a, b: a / b if b else NAN)), 2)]
                 if ratio_to else [])
        verdicts = [f"**{compare(st[tg], st[h]) or '–'}**"
                    + rounds_ahead(rps[tg], per_round(results, sid, test, h, "rps"))
                    if (sid, test) in THROUGHPUT_TARGETS else "–" for h in HAPROXY_CONFIGS]
        lines.append(f"| {SHORT[sid]} | {test} | "
                     + " | ".join([fmt_stats(st[c]) for c in cols] + ratio + verdicts) + " |")
    return lines


def latency_spread_lines(results):
    """c=1 GET: what each middle box adds to direct's p50 and p99, per round, and the
    proxy's added p99 against each HAProxy config's."""
    mids = [tg for tg in TARGETS if tg != "direct"]

    def rnd(tg, key):
        return per_round(results, "c1_lat", "GET", tg, key)

    lines = [
        "",
        "Added latency per round (ms; a target's percentile minus direct's in the same round), "
        "median [95 % bootstrap interval of the median] (min – max); percentiles of "
        "`timeline rtt`, every request timed alone, to the microsecond.",
        "",
        "| | " + " | ".join(LABEL[tg] for tg in mids) + " |",
        "|---|" + "---:|" * len(mids),
    ]
    for key, label in (("p50_ms", "p50 added"), ("p99_ms", "p99 added")):
        lines.append(f"| {label} | " + " | ".join(
            fmt_stats(stats_of(paired(rnd(tg, key), rnd("direct", key), lambda a, d: a - d)),
                      3, signed=True) for tg in mids) + " |")
    lines.append("| proxy's p99 added − this one's | – | " + " | ".join(
        fmt_stats(stats_of(paired(rnd("proxy", "p99_ms"), rnd(h, "p99_ms"),
                                  lambda p, x: p - x)), 3, signed=True)
        for h in HAPROXY_CONFIGS) + " |")
    return lines


def cpu_ratio_lines(results, tg="proxy", vs=HAPROXY_CONFIGS, label=LABEL):
    """CPU per million requests, `tg` over each target of `vs` (the HAProxy configs), per
    round, in every scenario `tg` ran in."""
    lines = [
        "",
        f"CPU per million requests of {label[tg]} over that of "
        + ", of ".join(label[v] for v in vs[:-1]) + (" and of " if len(vs) > 1 else "")
        + label[vs[-1]] + ", per round (same round's runs): median [95 % bootstrap interval "
        "of the median] (min – max).",
        "",
        "| scenario | " + " | ".join(f"{label[tg]} / {label[v]}" for v in vs) + " |",
        "|---|" + "---:|" * len(vs),
    ]
    for sid in ("c50_p1", "c50_p16", "c1_lat", "c50_16k", "churn"):
        # One redis-benchmark run per scenario, target and round: its first test's row
        # carries the run's CPU.
        cpu_of = {}
        for r in results:
            if r["scenario"] == sid:
                cpu_of.setdefault(r["target"], {}).setdefault(r["round"], r["cpu_per_m"])
        if not cpu_of.get(tg):
            continue
        lines.append(f"| {SHORT[sid]} | " + " | ".join(
            fmt_stats(stats_of(paired(cpu_of[tg], cpu_of.get(v, {}),
                                      lambda p, x: p / x if x else NAN)), 2)
            for v in vs) + " |")
    return lines


def fence_target_rows(fences):
    """Summary rows of the fence sizes with a target, and of every reconnect storm."""
    rows = []
    by_size = {f["requested"]: f for f in fences}
    for size, limit in FENCE_TARGETS_MS.items():
        tid, what, goal = f"fence_{size}", f"fence {size:,} sessions: evidence → last " \
                                           "session closed", f"< {limit:.0f} ms"
        f = by_size.get(size)
        if f is None:
            rows.append({"id": tid, "what": what, "measured": "–", "goal": goal,
                         "verdict": "not measured", "reason": "not in this run's --fence list",
                         "stats": None, "vs": ""})
            continue
        st = stats_of([r["fence_ms"] for r in f["repeats"]])
        measured = fmt_repeats(st, 1, " ms")
        if f["sessions"] < size:
            verdict, reason = "not measured", (f"not measurable here: {f['cap_reason']}; "
                                               f"measured at {f['sessions']:,}")
            measured = f"at {f['sessions']:,}: {measured}"
        elif st["max"] < limit:
            verdict, reason = "met", ""
        else:
            verdict = "not met"
            reason = ("above the target" if st["min"] >= limit else
                      f"{sum(r['fence_ms'] >= limit for r in f['repeats'])} of {st['n']} "
                      "repeats above the target")
        rows.append({"id": tid, "what": what, "measured": measured, "goal": goal,
                     "verdict": verdict, "reason": reason, "stats": st, "vs": ""})
    for f in fences:
        storms = [r["storm"] for r in f["repeats"]]
        failed = sum(s["failed"] for s in storms)
        st = stats_of([s["ms"] for s in storms if s["ms"] is not None])
        rows.append({
            "id": f"storm_{f['requested']}",
            "what": f"reconnect storm after fencing {f['sessions']:,} sessions: reconnects "
                    "refused, reset or failed",
            "measured": f"{failed:,} failed of {f['sessions']:,} × {len(storms)} storm(s)"
                        f"{storm_kinds(storms)}; first connect → last PONG "
                        f"{fmt_repeats(st, 0, ' ms')}",
            "goal": "0", "verdict": "met" if failed == 0 else "not met",
            "reason": "" if failed == 0 else f"{failed:,} failed",
            "stats": st, "vs": ""})
    return rows


def fmt_repeats(st, nd, unit):
    """A figure measured a few times: `28.1 ms` or `28.1 ms (median of 3: 25.0 – 30.2)`."""
    if not st["n"]:
        return "–"
    if st["n"] == 1:
        return fmt(st["med"], nd) + unit
    return (f"{fmt(st['med'], nd)}{unit} (median of {st['n']}: {fmt(st['min'], nd)} – "
            f"{fmt(st['max'], nd)})")


def storm_kinds(storms):
    """`; refused 3; reset 1` for the failures of these storms, or nothing."""
    kinds = {}
    for s in storms:
        for k, v in s["errors"].items():
            kinds[k] = kinds.get(k, 0) + v
    return "".join(f"; {k} {v:,}" for k, v in sorted(kinds.items()) if v)


def tls_medians(tls):
    """{(scenario, test): {target: {metric: median}}} and {(scenario, test): {target: [rps]}}."""
    meds, rps = {}, {}
    for r in tls["results"]:
        rps.setdefault((r["scenario"], r["test"]), {}).setdefault(r["target"], []).append(r["rps"])
    for key, by_tg in rps.items():
        for tg in by_tg:
            rows = [r for r in tls["results"]
                    if (r["scenario"], r["test"]) == key and r["target"] == tg]
            meds.setdefault(key, {})[tg] = {k: med([r[k] for r in rows])
                                            for k in ("rps", "p50_ms", "p99_ms", "avg_ms")}
    return meds, rps


def tls_verdict(tls):
    """The target at c=50 P=16 GET. Returns (ratio to direct, ratio to HAProxy, met) with
    met None when the proxy was not measured."""
    meds, _ = tls_medians(tls)
    m = meds.get((TLS_TARGET_SID, "GET"), {})
    d, p, h = (m.get(tg, {}).get("rps", float("nan")) for tg in TLS_TARGETS)
    if tls["proxy_error"] or p != p:
        return None, None, None
    rd = p / d if d else float("nan")
    rh = p / h if h else float("nan")
    return rd, rh, rd >= TLS_TARGET_RATIO and rh > 1.0


def tls_lines(tls):
    """The TLS section of the report (latest.md and tls.md)."""
    head = "## TLS: mutual TLS to the master (same run, interleaved)"
    if tls.get("error"):
        return [head, "", f"**The TLS scenario failed**: {tls['error']}"]
    na = tls["proxy_error"]
    meds, rps = tls_medians(tls)
    nan = {"rps": float("nan"), "p50_ms": float("nan"), "p99_ms": float("nan"),
           "avg_ms": float("nan")}

    def m(key, tg):
        return meds.get(key, {}).get(tg, nan)

    def cell(v, tg, nd=0):
        return "not available" if tg == "proxy" and na else fmt(v, nd)

    lines = [
        head,
        "",
        "One redis-server with a TLS port only (`port 0`, `tls-auth-clients yes`: every client "
        "must present a certificate of the bench CA) and one sentinel monitoring it, on a TLS "
        "port only too (`tls-replication yes`); certificates from the `openssl` CLI (a CA, a "
        "server certificate for IP 127.0.0.1 and localhost, a client certificate; ECDSA P-256). "
        "**direct**: `redis-benchmark --tls --cacert ca.crt --cert client.crt --key client.key`. "
        "**proxy**: `[tls]` `ca`, `cert`, `key` in its config (TLS to the sentinel and to the "
        "master in every session); `redis-benchmark` speaks plain RESP to it on loopback. "
        "**HAProxy**: plain frontend, the canonical tcp-check (over TLS), "
        f"`{tls['haproxy_server']}`. {tls['rounds']} round(s), in every round direct, proxy and "
        "HAProxy in turn per scenario. Medians over the rounds; ratios are to direct TLS; "
        "spread is (max − min) / median of requests/s over the rounds.",
        "",
    ]
    if na:
        lines += [f"- proxy: not available ({na}); direct and HAProxy were measured as usual.", ""]
    lines += [
        "| scenario | test | direct TLS | proxy | HAProxy | proxy / direct | HAProxy / direct | "
        "proxy / HAProxy | spread: direct / proxy / HAProxy |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for sid, desc, _, _ in tls["scen"]:
        for (s, t) in rps:
            if s != sid:
                continue
            d, p, h = (m((s, t), tg)["rps"] for tg in TLS_TARGETS)
            rd = p / d if d else float("nan")
            rh = h / d if d else float("nan")
            ph = p / h if h else float("nan")
            sp = " / ".join("n/a" if tg == "proxy" and na else spread(rps[(s, t)].get(tg, []))
                            for tg in TLS_TARGETS)
            lines.append(f"| {desc} | {t} | {fmt(d)} | {cell(p, 'proxy')} | {fmt(h)} | "
                         f"{fmt(rd, 2)} | {fmt(rh, 2)} | {fmt(ph, 2)} | {sp} |")
    rd, rh, met = tls_verdict(tls)
    td, th = (m((TLS_TARGET_SID, "GET"), tg)["rps"] for tg in ("direct", "haproxy"))
    tgt = th / td if td else float("nan")
    lines += [""]
    if met is None:
        lines.append(f"Target at c=50 P=16 GET (proxy ≥ {TLS_TARGET_RATIO:.2f} of direct TLS and "
                     f"ahead of HAProxy): **not measured** (proxy not available). HAProxy: "
                     f"{fmt(tgt, 2)} of direct TLS.")
    else:
        lines.append(
            f"Target at c=50 P=16 GET: proxy ≥ {TLS_TARGET_RATIO:.2f} of direct TLS: "
            + ("**met**" if rd >= TLS_TARGET_RATIO else "**not met**") + f" ({fmt(rd, 2)}); "
            "proxy ahead of HAProxy: " + ("**met**" if rh > 1.0 else "**not met**")
            + f" (proxy / HAProxy {fmt(rh, 2)}; HAProxy {fmt(tgt, 2)} of direct TLS). "
            + ("Both met." if met else "Not met."))
    lines.append("c=50 P=1 SET/GET and the c=1 latency are reported without a target.")
    key = ("tls_c1_lat", "GET")
    if key in rps:
        lines += [
            "",
            "### Latency at c=1 under TLS (ms, redis-benchmark percentiles)",
            "",
            "| percentile | direct TLS | proxy | HAProxy | proxy added | HAProxy added |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for k, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("avg_ms", "mean")):
            d, p, h = (m(key, tg)[k] for tg in TLS_TARGETS)
            lines.append(
                f"| {label} | {d:.3f} | " + ("not available" if na else f"{p:.3f}")
                + f" | {h:.3f} | " + ("–" if na else f"{p - d:+.3f}") + f" | {h - d:+.3f} |")
    lines += [
        "",
        "### CPU per million requests under TLS (seconds of utime+stime, from /proc/PID/stat)",
        "",
        "| scenario | proxy | HAProxy | redis-server (direct TLS run) | proxy / HAProxy |",
        "|---|---:|---:|---:|---:|",
    ]
    for sid, desc, _, _ in tls["scen"]:
        c = {tg: med(tls["cpu"].get((sid, tg), [])) for tg in TLS_TARGETS}
        if c["direct"] != c["direct"]:
            continue
        ratio = c["proxy"] / c["haproxy"] if c["haproxy"] else float("nan")
        lines.append(f"| {desc} | {cell(c['proxy'], 'proxy', 2)} | {fmt(c['haproxy'], 2)} | "
                     f"{fmt(c['direct'], 2)} | {fmt(ratio, 2)} |")
    return lines


def tls_rows(tls):
    """Long-format rows (scenario, test, target, round, metric, value), as latest.csv's."""
    rows = []
    if tls.get("error"):
        return [("tls", "", "", "", "error", tls["error"])]
    for r in tls["results"]:
        for k in ("requests", "rps", "avg_ms", "p50_ms", "p99_ms"):
            rows.append((r["scenario"], r["test"], r["target"], r["round"], k, r[k]))
        rows.append((r["scenario"], r["test"], r["target"], r["round"], "cpu_s_per_million",
                     f"{r['cpu_per_m']:.4f}"))
    rows.append(("tls", "", "proxy", "", "available", 0 if tls["proxy_error"] else 1))
    if tls["proxy_error"]:
        rows.append(("tls", "", "proxy", "", "unavailable_reason", tls["proxy_error"]))
    rd, rh, met = tls_verdict(tls)
    if met is not None:
        rows += [(TLS_TARGET_SID, "GET", "proxy", "", "median_ratio_to_direct", f"{rd:.4f}"),
                 (TLS_TARGET_SID, "GET", "proxy", "", "median_ratio_to_haproxy", f"{rh:.4f}"),
                 (TLS_TARGET_SID, "GET", "proxy", "", "target_met", int(met))]
    return rows


def write_tls_report(out_dir, info, tls, binary, repo):
    """tls.md and tls.csv: the TLS scenario on its own, so that a run of only this scenario
    does not replace latest.md."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "tls.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["scenario", "test", "target", "round", "metric", "value"])
        w.writerows(tls_rows(tls))
    head = [
        "# Benchmark under TLS: direct vs redis-failover-proxy vs HAProxy",
        "",
        f"- date: {info['date']}; machine: {info['nproc']} CPUs, {info['cpu']}, "
        f"kernel {info['kernel']}",
        f"- {info['redis']}; {info['haproxy']}; {sh(['openssl', 'version'])}",
        "- proxy: "
        + (f"release build of `{info['commit']}`"
           if os.path.abspath(binary) == os.path.join(repo, "target/release/redis-failover-proxy")
           else f"`RFP_BENCH_BIN` = `{binary}` (working tree at `{info['commit']}`)")
        + f"; load average at start {info['load']}"
        + ("" if info["busy"] == 0 else
           f"; **NOT QUIET**: {', '.join(info['busy_names'])} running at the start"),
        "- raw data: `tls.csv` (every round)",
    ]
    with open(os.path.join(out_dir, "tls.md"), "w") as f:
        f.write("\n".join(head + tls_lines(tls)[1:] + [""]))


def uring_state(args):
    """None when the io_uring proxy was left out (--uring 0), else why it was not measured
    ("" when it was, or when no rounds ran)."""
    if not args.uring:
        return None
    return args.uring_error or ""


def proxy_build(args, info):
    """Which binary was measured, for the report."""
    if os.path.abspath(args.bin) == os.path.join(args.repo, "target/release/redis-failover-proxy"):
        return f"release build of `{info['commit']}`"
    return f"`RFP_BENCH_BIN` = `{args.bin}` (working tree at `{info['commit']}`)"


def summary_lines(rows, args, noise):
    """The table of issue 11's targets, at the top of latest.md and in summary.md."""
    lines = [
        "## Targets (issue: performance round two)",
        "",
        f"{args.rounds} round(s). Measured: median [95 % bootstrap interval of the median over "
        f"the rounds] ({BOOT_RESAMPLES} resamples, seed {BOOT_SEED}); fences: median of the "
        "repeats (min – max). **met** only when the whole interval is on the target's side "
        "(throughput: the proxy's interval wholly above that HAProxy config's; a fence: every "
        "repeat under the limit). Details in the sections below.",
    ]
    if args.quick:
        lines += ["", "**Quick run: tiny request counts and 1 round by default; every verdict "
                      "below is meaningless.**"]
    lines += [
        "",
        f"- {noise.sentence()}",
        "",
        "| target | measured | goal | verdict |",
        "|---|---|---|---|",
    ]
    for r in rows:
        verdict = ("**met**" if r["verdict"] == "met" else
                   "**not met**" if r["verdict"] == "not met" else r["verdict"])
        if r["reason"]:
            verdict += f" ({r['reason']})"
        lines.append(f"| {r['what']} | {r['measured']} | {r['goal']} | {verdict} |")
    return lines


def target_csv_rows(rows):
    """latest.csv rows of the summary: scenario `target`, test = the target's id, target =
    the HAProxy config it is judged against (if any); one `verdict` row each, with the
    numbers it was decided on."""
    out = []
    for r in rows:
        key = ["target", r["id"], r["vs"], ""]
        out.append(key + ["verdict", r["verdict"]])
        if r["reason"]:
            out.append(key + ["reason", r["reason"]])
        out.append(key + ["goal", r["goal"]])
        st = r["stats"]
        if st and st["n"]:
            for k, name in (("med", "median"), ("lo", "ci95_lo"), ("hi", "ci95_hi"),
                            ("min", "min"), ("max", "max"), ("n", "n")):
                out.append(key + [name, f"{st[k]:.6g}"])
    return out


def fence_lines(fences, args):
    """The fencing section: one column per fence size."""
    sizes = []
    for f in fences:
        label = f"{f['sessions']:,} sessions"
        if f["cap_reason"]:
            label += f" ({f['requested']:,} requested)"
        sizes.append(label)

    def per_repeat(f, fn, unit):
        vals = [fn(r) for r in f["repeats"]]
        return ", ".join("–" if v is None else fmt(v, 1 if unit == "ms1" else 0)
                         for v in vals) + (" ms" if unit.startswith("ms") else "")

    def storm_cell(f):
        out = []
        for r in f["repeats"]:
            s = r["storm"]
            if s is None:
                out.append(f"none ({r['proxy_still_open']:,} sessions still open)")
            else:
                out.append(f"{s['failed']:,}" + (f" ({', '.join(f'{k} {v}' for k, v in s['errors'].items() if v)})"
                                                 if s["failed"] else ""))
        return ", ".join(out) + f" of {f['sessions']:,}"

    def target_cell(f):
        limit = FENCE_TARGETS_MS.get(f["requested"])
        if limit is None:
            return "–"
        if f["cap_reason"]:
            return f"< {limit:.0f} ms for {f['requested']:,}: not measured"
        ok = all(r["fence_ms"] < limit for r in f["repeats"])
        return f"< {limit:.0f} ms: " + ("**met**" if ok else "**not met**")

    def hap(f, fn):
        return fn(f["haproxy"]) if f["haproxy"] else "–"

    def hap_close(h):
        if h["last_close_s"] is not None:
            return f"{h['last_close_s'] * 1000:,.0f} ms"
        return f"**{h['still_open']:,} still open after 30 s**"

    rows = [
        ("proxy: fence, evidence → last session closed (`fence_duration_seconds`), per failover",
         lambda f: per_repeat(f, lambda r: r["fence_ms"], "ms1")),
        ("target", target_cell),
        ("`SENTINEL FAILOVER` → a sentinel names the new master",
         lambda f: per_repeat(f, lambda r: r["announced_s"] * 1000, "ms")),
        ("proxy: `SENTINEL FAILOVER` → the client saw its last session closed",
         lambda f: per_repeat(f, lambda r: None if r["proxy_last_close_s"] is None
                              else r["proxy_last_close_s"] * 1000, "ms")),
        ("reconnect storm right after: reconnects refused, reset, closed, answered with an "
         "error or not within 30 s", storm_cell),
        ("reconnect storm: first connect → last `+PONG`",
         lambda f: per_repeat(f, lambda r: r["storm"]["ms"] if r["storm"] else None, "ms")),
        ("reconnect storm: time to fire all the connects",
         lambda f: per_repeat(f, lambda r: r["storm"]["fire_ms"] if r["storm"] else None, "ms")),
        ("HAProxy (first failover only): `SENTINEL FAILOVER` → the client saw its last "
         "session closed", lambda f: hap(f, hap_close)),
        ("HAProxy: a `SET` on one of them",
         lambda f: hap(f, lambda h: f"`{h['write_reply'] or '(none open)'}`")),
    ]
    lines = [
        "",
        "## Fencing open sessions across a `SENTINEL FAILOVER`",
        "",
        "3 nodes + 3 sentinels (quorum 2) on loopback, a fresh group per size; the same idle "
        "sessions through the proxy and through HAProxy (canonical tcp-check on all three "
        "nodes). HAProxy's sessions are closed by Redis itself: Sentinel sends "
        "`CLIENT KILL TYPE normal` to each node it reconfigures. As soon as the proxy's last "
        "session is closed, every one of its clients reconnects at once (all connects fired "
        "back to back, then `PING` each); the proxy holds them while it has no verified "
        "master."
        + (f" Then {args.fence_repeats - 1} more failover(s) on the same group through the "
           "proxy only (fence and storm again; figures per failover, comma-separated)."
           if args.fence_repeats > 1 else ""),
    ]
    notes = [f"- {f['requested']:,} sessions: {e}" for f in fences for e in f["repeat_errors"]]
    notes += [f"- {f['requested']:,} not measurable here: {f['cap_reason']}; measured at "
              f"{f['sessions']:,} (a middle box needs 2 fds per session, this driver 1 per "
              "client)." for f in fences if f["cap_reason"]]
    if notes:
        lines += [""] + notes
    lines += [
        "",
        "| what | " + " | ".join(sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for label, fn in rows:
        lines.append(f"| {label} | " + " | ".join(fn(f) for f in fences) + " |")
    return lines


def fence_csv_rows(fences):
    """latest.csv rows of the fences: scenario fence_REQUESTED, round = repeat."""
    out = []
    for f in fences:
        sid = f"fence_{f['requested']}"
        out.append([sid, "", "", "", "requested", f["requested"]])
        out.append([sid, "", "", "", "sessions", f["sessions"]])
        if f["cap_reason"]:
            out.append([sid, "", "", "", "cap_reason", f["cap_reason"]])
        for e in f["repeat_errors"]:
            out.append([sid, "", "", "", "repeat_error", e])
        for k, v in (f["haproxy"] or {}).items():
            out.append([sid, "", "haproxy", 1, k, v])
        for i, r in enumerate(f["repeats"], 1):
            for k in ("fence_ms", "announced_s", "proxy_last_close_s", "proxy_still_open"):
                out.append([sid, "", "proxy", i, k, r[k]])
            s = r["storm"]
            if s:
                for k in ("ok", "failed", "ms", "fire_ms"):
                    out.append([sid, "", "proxy", i, f"storm_{k}", s[k]])
                for k, v in s["errors"].items():
                    out.append([sid, "", "proxy", i, f"storm_{k.replace(' ', '_')}", v])
    return out


def noise_lines(noise):
    """Per round: the machine's busy CPU, ours, other processes', steal."""
    if not noise.phases:
        return []
    lines = [
        "",
        "## Noise: CPU used by other processes, per round",
        "",
        "From `/proc/stat` (busy = user + nice + system + irq + softirq, what the processes' "
        "utime + stime add up to) and "
        "`/proc/PID/stat` of this benchmark's processes (this driver and what it waited for, "
        "e.g. redis-benchmark; redis-server, sentinels, proxies, HAProxies), sampled before "
        "and after each round. Other processes = busy − ours; all in % of the whole machine "
        f"({os.cpu_count()} CPUs). Not quiet: other processes above "
        f"{NOISE_OTHER_MAX_PCT:.0f} % or steal above {NOISE_STEAL_MAX_PCT:.0f} % in any round.",
        "",
        "| round | seconds | machine busy | this benchmark | other processes | steal |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for p in noise.phases:
        # The figure above its threshold in bold.
        other = f"{max(p['other_pct'], 0):.1f} %"
        steal = f"{p['steal_pct']:.1f} %"
        if p["other_pct"] > NOISE_OTHER_MAX_PCT:
            other = f"**{other}**"
        if p["steal_pct"] > NOISE_STEAL_MAX_PCT:
            steal = f"**{steal}**"
        lines.append(f"| {p['phase']} | {p['seconds']:.0f} | {p['busy_pct']:.1f} % | "
                     f"{p['ours_pct']:.1f} % | {other} | {steal} |")
    (o, op), (st, sp) = noise.worst("other_pct"), noise.worst("steal_pct")
    lines += ["", f"Max: other processes {max(o, 0):.1f} % ({op}), steal {st:.1f} % ({sp}). "
                  "CPU counts have clock-tick resolution (10 ms), so short rounds read coarse."]
    return lines


def write_report(out_dir, args, info, info_end, results, cpu, idle, scen, fences, timeline,
                 tls, noise):
    """latest.md, latest.csv and summary.md: every section that ran (a run with --rounds 0
    has no throughput, latency or CPU tables), the targets' table first."""
    os.makedirs(out_dir, exist_ok=True)
    uring = uring_state(args)
    targets = target_rows(results, fences, args.quick, uring)
    # Long format: one row per (scenario, test, target, round, metric).
    with open(os.path.join(out_dir, "latest.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["scenario", "test", "target", "round", "metric", "value"])
        for r in results:
            for k in ("requests", "rps", "avg_ms", "p50_ms", "p99_ms"):
                w.writerow([r["scenario"], r["test"], r["target"], r["round"], k, r[k]])
            w.writerow([r["scenario"], r["test"], r["target"], r["round"],
                        "cpu_s_per_million", f"{r['cpu_per_m']:.4f}"])
        for label, d in idle.items():
            for k in ("start", "before", "during", "after"):
                w.writerow([f"idle_{args.idle}", "", label, "", f"rss_kib_{k}", d[k]])
            w.writerow([f"idle_{args.idle}", "", label, "", "kib_per_session",
                        f"{(d['during'] - d['before']) / args.idle:.2f}"])
        w.writerows(fence_csv_rows(fences))
        for p in noise.phases:
            for k in ("seconds", "busy_pct", "ours_pct", "other_pct", "steal_pct"):
                w.writerow(["noise", p["phase"], "", "", k, f"{p[k]:.3f}"])
        w.writerows(target_csv_rows(targets))
        if uring is not None:
            w.writerow(["uring", "", URING_TARGET, "", "available", int(not uring)])
            if uring:
                w.writerow(["uring", "", URING_TARGET, "", "unavailable_reason", uring])
            if args.uring_fds is not None:
                w.writerow(["uring", "", URING_TARGET, "", "io_uring_fds", args.uring_fds])
        for sid, target, k, v in timeline_rows(timeline):
            w.writerow([sid, "", target, "", k, v])
        if tls:
            w.writerows(tls_rows(tls))

    def vals(sid, test, target, key):
        return [r[key] for r in results
                if r["scenario"] == sid and r["test"] == test and r["target"] == target]

    quiet = info["busy"] == 0 and info_end["busy"] == 0
    lines = [
        "# Benchmark: direct vs redis-failover-proxy vs HAProxy",
        "",
        f"- date: {info['date']}; mode: {'quick (numbers meaningless)' if args.quick else 'full'}, "
        f"{args.rounds} round(s), targets interleaved per scenario (direct, proxy, HAProxy, "
        "HAProxy (tuned)"
        + ("; in c=50 P=1 and P=16 also proxy (pinned) and HAProxy (cpu-map)"
           if any(r["target"] in PINNED_TARGETS for r in results) else "")
        + ("; in every scenario also proxy (io_uring)"
           if any(r["target"] == URING_TARGET for r in results) else "") + ")",
        f"- machine: {info['nproc']} CPUs ({info['cpu']}), {info['mem_gib']:.0f} GiB, "
        f"{info['os']}, kernel {info['kernel']}; guest halt polling: "
        + ("none (no cpuidle-haltpoll)" if info["halt_poll"] is None
           else f"`guest_halt_poll_ns` = {info['halt_poll']:,}"
           + (" (off: every idle vCPU halts)" if info["halt_poll"] == 0 else "")),
        f"- {info['redis']}; {info['haproxy']}; redis-benchmark (single-threaded) on the same host",
        f"- proxy: {proxy_build(args, info)}, default `[runtime]` (one session thread per CPU, not pinned, "
        "`yield_before_sleep` on)",
        *([] if uring is None else [
            "- proxy (io_uring): the same binary and config plus `[runtime] engine = "
            "\"io_uring\"`: " + (f"not measured ({uring})" if uring else
                                   "not started (no rounds)" if args.uring_fds is None else
                                   f"{args.uring_fds} io_uring instance(s) open after its "
                                   "start")]),
        "- HAProxy: the canonical config for Sentinel setups (`option tcp-check`, `PING`, "
        "`info replication` / `role:master`, `QUIT`; `check inter 1s`), default nbthread. "
        "HAProxy (tuned): the same with `check inter "
        f"{HAPROXY_TUNED['inter']}{HAPROXY_TUNED['server_extra']}` on every `server` line and "
        f"`{HAPROXY_TUNED['backend_extra'].strip()}` in the backend. Configs: `haproxy.cfg`, "
        "`haproxy_tuned.cfg` in the work dir (`bench/run.sh --keep`)",
        f"- load average at start {info['load']}, at end {info_end['load']}; "
        + ("quiet: no cargo/rustc and no other redis-server at start or end"
           if quiet else f"**NOT QUIET**: other processes were running "
           f"({info['busy']} at start, {info_end['busy']} at end: "
           f"{', '.join(sorted(set(info['busy_names'] + info_end['busy_names'])))}); "
           "numbers are noisy"),
        f"- {noise.sentence()}",
        "",
    ]
    table = summary_lines(targets, args, noise)
    lines += table
    headline = {}
    if results:
        lines += throughput_lines(results, cpu, scen, vals, headline,
                                  getattr(args, "pinned_note", None),
                                  getattr(args, "failed_runs", ()), args.quick, uring,
                                  args.uring_fds, args.halt_poll_note)
    if tls:
        lines += [""] + tls_lines(tls)
    if idle:
        lines += [
            "",
            f"## Memory: {args.idle:,} idle sessions (VmRSS from /proc/PID/status)",
            "",
            *([args.idle_note, ""] if args.idle_note else []),
            "Each session proved with one PING, then left idle. Per session = (with sessions − "
            "before) / count.",
            "",
            "| | RSS at start | RSS before | RSS with sessions | per session | RSS after close |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for label, d in idle.items():
            per = (d["during"] - d["before"]) / args.idle
            lines.append(
                f"| {label} | {d['start'] / 1024:.1f} MiB | {d['before'] / 1024:.1f} MiB | "
                f"{d['during'] / 1024:.1f} MiB | {per:.1f} KiB | {d['after'] / 1024:.1f} MiB |")
    if fences:
        lines += fence_lines(fences, args)
    lines += noise_lines(noise)
    if timeline:
        lines += [""] + timeline_lines(timeline)
    lines += [""]
    with open(os.path.join(out_dir, "latest.md"), "w") as f:
        f.write("\n".join(lines))
    # The table alone, for the README to include; its first lines say which run it is.
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write("\n".join(
            [table[0], "", f"From `latest.md` of {info['date']}, proxy: {proxy_build(args, info)}, "
             f"{'quick run' if args.quick else 'full run'}.", ""] + table[2:] + [""]))
    return headline


# --------------------------------------------------------------------------- main


def fence_sizes(text):
    """--fence: session counts, comma-separated, e.g. `1000,10000`; 0 (or nothing) skips."""
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma list of session counts: {text!r}")
    if any(n < 0 for n in sizes):
        raise argparse.ArgumentTypeError(f"negative session count in {text!r}")
    return [n for n in sizes if n > 0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--repo", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--idle", type=int)
    ap.add_argument("--fence", type=fence_sizes,
                    help="session counts to fence, comma-separated (0: none)")
    ap.add_argument("--fence-repeats", type=int,
                    help="failovers per fence size on the same group (the first one with HAProxy)")
    ap.add_argument("--timeline", type=int, choices=(0, 1), default=1)
    ap.add_argument("--pinned", type=int, choices=(0, 1), default=1,
                    help="also run the proxy with pinned threads and HAProxy with cpu-map "
                         "in " + " and ".join(PINNED_SCENARIOS))
    ap.add_argument("--uring", type=int, choices=(0, 1), default=1,
                    help="also run the proxy with `[runtime] engine = \"io_uring\"` in every "
                         "scenario of the rounds")
    ap.add_argument("--timeline-bin", required=True,
                    help="the `timeline` binary (bench/timeline/): the failover timeline's "
                    "load and plot, and the c=1 scenario's client (`timeline rtt`)")
    ap.add_argument("--haltpoll", type=int, choices=(0, 1), default=1,
                    help="where the guest's halt polling is off and can be switched: the c=1 "
                    "scenario once more per round with it on")
    ap.add_argument("--tls", type=int, choices=(0, 1), default=1,
                    help="the TLS scenario: mutual TLS to the master, direct vs proxy vs HAProxy")
    ap.add_argument("--tls-rounds", type=int,
                    help="rounds of the TLS scenario (default: --rounds; 0 = skip)")
    args = ap.parse_args()
    os.environ["RFP_BENCH_WORK"] = args.work
    # Set by single_master_steps: why the io_uring proxy was not measured (None: it was, or
    # it did not run) and how many io_uring fds it held after its start.
    args.uring_error, args.uring_fds = None, None
    args.rounds = args.rounds if args.rounds is not None else (1 if args.quick else 7)
    args.tls_rounds = args.tls_rounds if args.tls_rounds is not None else args.rounds
    args.fence = args.fence if args.fence is not None else ([100] if args.quick
                                                            else list(FENCE_TARGETS_MS))
    args.fence_repeats = max(1, args.fence_repeats if args.fence_repeats is not None
                             else (1 if args.quick else 3))
    args.idle = args.idle if args.idle is not None else (500 if args.quick else 10_000)
    # Whether the c=1 scenario also runs with the guest's halt polling on, and why not.
    _, why_not = halt_poll_state()
    args.halt_poll_pass = bool(args.haltpoll and not why_not and args.rounds > 0)
    args.halt_poll_note = why_not if args.haltpoll else "--haltpoll 0"
    args.halt_poll_set = False
    # A middle box holds 2 fds per session; where the fd limit cannot hold the requested
    # count (this container's hard limit is 20,000, not raisable), open as many as fit and
    # say so in the report.
    args.idle_note = None
    fit = sessions_within_fd_limit(fd_limit())
    if args.idle > fit:
        which = "fd hard limit" if fd_limit_is_hard() else "fd limit"
        args.idle_note = (f"{fit:,} idle sessions ({which} {fd_limit():,} allows at most "
                          f"{fit:,}; {args.idle:,} requested).")
        log(args.idle_note)
        args.idle = fit

    # SIGTERM/SIGHUP end the run through the same `finally` as Ctrl-C.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, f: sys.exit(128 + s))
    _die_with_parent(signal.SIGTERM)

    tools = ("redis-server", "redis-benchmark", "haproxy") + (("openssl",) if args.tls else ())
    for tool in tools:
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} not found (bench/run.sh installs it)")

    info = machine(args.repo)
    procs = Procs(args.work)
    noise = Noise(procs)
    try:
        results, cpu, idle, scen = [], {}, {}, scenarios(args.quick)
        if args.rounds > 0 or args.idle > 0:
            results, cpu, idle = single_master_steps(procs, args, scen, noise)

        tls = None
        if args.tls and args.tls_rounds > 0:
            log(f"tls: mutual TLS to the master, {args.tls_rounds} round(s)")
            try:
                tls = tls_scenario(procs, args.work, args.bin, args.tls_rounds, args.quick,
                                   noise)
            except Exception as e:  # noqa: BLE001 - reported; the other scenarios still run
                log(f"tls: the scenario failed: {e}")
                procs.stop_prefix("tls_")
                tls = {"error": str(e).replace(args.work.rstrip("/") + "/", "")}
            write_tls_report(args.out, info, tls, args.bin, args.repo)
            log(f"wrote {args.out}/tls.md and tls.csv")

        fences = []
        for size in args.fence:
            log(f"failover topology: fencing {size} sessions, {args.fence_repeats} time(s)")
            fences.append(fence_scenario(procs, args.work, args.bin, size, args.fence_repeats))

        timeline = []
        if args.timeline:
            timeline = timeline_scenario(procs, args.work, args.bin, args.timeline_bin,
                                         args.out, args.quick)
            write_timeline_report(args.out, info, timeline, args.bin, args.repo)
            log(f"wrote {args.out}/timeline.md, timeline-summary.csv and "
                + ", ".join(f"timeline-{r['fault']}.{{csv,svg}}" for r in timeline))

        info_end = machine(args.repo)
        if results or idle or fences:
            write_report(args.out, args, info, info_end, results, cpu, idle, scen, fences,
                         timeline, tls, noise)
            log(f"wrote {args.out}/latest.md and latest.csv")
            with open(os.path.join(args.out, "latest.md")) as f:
                sys.stdout.write(f.read())
        else:
            # Only the timeline and/or the TLS scenario ran: leave latest.md (a full run's
            # report) as it is.
            log("no throughput, idle or fence step ran: latest.md and latest.csv not written")
            for name in (["tls.md"] if tls else []) + (["timeline.md"] if timeline else []):
                with open(os.path.join(args.out, name)) as f:
                    sys.stdout.write(f.read())
        if tls and tls.get("error"):
            sys.exit(f"bench: the TLS scenario failed: {tls['error']}")
    finally:
        restore_halt_poll(args)
        procs.stop()


def single_master_steps(procs, args, scen, noise):
    """The interleaved redis-benchmark rounds and the idle sessions, against one master
    with one sentinel that never fails over. Returns (results, cpu, idle)."""
    master_port, master = start_redis(procs, args.work, "master")
    # One sentinel monitors it, so the proxy has a master to follow; it must never
    # fail over during the run.
    sent_port, _ = start_sentinel(procs, args.work, "sentinel", "bench", master_port, 600_000)
    proxy_port, admin, proxy = start_proxy(procs, args.work, args.bin, "bench", [sent_port])
    proxy_rss_start = rss_kib(proxy.pid)
    hap_port, hap = start_haproxy(procs, args.work, [master_port])
    hap_rss_start = rss_kib(hap.pid)
    log(f"master :{master_port}, sentinel :{sent_port}, proxy :{proxy_port} "
        f"(admin {admin}), haproxy :{hap_port}; work dir {args.work}")

    ports = {"direct": master_port, "proxy": proxy_port, "haproxy": hap_port}
    pid_of = {"direct": master.pid, "proxy": proxy.pid, "haproxy": hap.pid}
    if args.rounds > 0:
        ports["haproxy_tuned"], hap_t = start_haproxy(procs, args.work, [master_port],
                                                      name="haproxy_tuned", **HAPROXY_TUNED)
        pid_of["haproxy_tuned"] = hap_t.pid
        log(f"haproxy_tuned :{ports['haproxy_tuned']}")
    if args.rounds > 0:
        ports[BUSY_TARGET], _, busy = start_proxy(
            procs, args.work, args.bin, "bench", [sent_port], name=BUSY_TARGET,
            extra_toml=f'[runtime]\nbusy_poll = "{BUSY_POLL}"\n')
        pid_of[BUSY_TARGET] = busy.pid
        log(f"{BUSY_TARGET} :{ports[BUSY_TARGET]} (busy_poll = {BUSY_POLL})")
    args.pinned_note = None
    if args.pinned and args.rounds > 0:
        ports_p, pid_p, args.pinned_note = start_pinned(procs, args, master_port, sent_port)
        ports.update(ports_p)
        pid_of.update(pid_p)
    uring_p = None
    if args.uring and args.rounds > 0:
        ports[URING_TARGET], uring_p, args.uring_error, args.uring_fds = start_uring(
            procs, args, sent_port)
        pid_of[URING_TARGET] = uring_p.pid if uring_p else None
    for tg, base in HALT_POLL_TARGETS.items():
        ports[tg], pid_of[tg] = ports[base], pid_of[base]
    results, cpu = [], {}

    def drop_uring(reason):
        """The io_uring proxy failed or fell back to epoll: stop it, drop its rows so far, and
        go on with the others."""
        args.uring_error = reason
        log(f"{URING_TARGET}: {reason}; its rows so far are dropped")
        procs.stop(URING_TARGET)
        drop_target(results, cpu, URING_TARGET)

    def uring_exited(when):
        """Drops the io_uring proxy if it has exited (before procs.check_alive ends the run
        for it)."""
        if uring_p and not args.uring_error and uring_p.poll() is not None:
            drop_uring(f"proxy (io_uring) failed: exited with status {uring_p.returncode} "
                       f"{when}: " + last_log_line(os.path.join(args.work, f"{URING_TARGET}.log"),
                                                   args.work))

    # Runs of HAProxy (tuned) that failed: with `fall 1` and a 250 ms check timeout, one slow
    # check on a saturated machine takes the master out and `shutdown-sessions` closes the
    # benchmark's connections. That is a result, not a reason to lose the whole run.
    args.failed_runs = []
    for rnd in range(1, args.rounds + 1):
        snap = noise.snap()
        for sid, desc, bargs, n in scen:
            pinned = PINNED_TARGETS if args.pinned and sid in PINNED_SCENARIOS else ()
            busy = (BUSY_TARGET,) if sid in BUSY_SCENARIOS else ()
            uring = (URING_TARGET,) if uring_p and sid in URING_SCENARIOS else ()
            halt_poll = (tuple(HALT_POLL_TARGETS)
                         if sid == "c1_lat" and args.halt_poll_pass else ())
            for tg in TARGETS + pinned + busy + uring + halt_poll:
                uring_exited(f"in round {rnd} ({sid})")
                if tg == URING_TARGET and args.uring_error:
                    continue
                procs.check_alive()
                if tg in HALT_POLL_TARGETS and not args.halt_poll_set:
                    switch_halt_poll(args, True)
                c0 = cpu_seconds(pid_of[tg])
                try:
                    if sid == "c1_lat":
                        rows = run_rtt(args.timeline_bin, ports[tg], n)
                    else:
                        rows = run_benchmark(ports[tg], bargs, n,
                                             **({"timeout": URING_RUN_TIMEOUT_S}
                                                if tg == URING_TARGET else {}))
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    reason = str(e).replace(args.work.rstrip("/") + "/", "")[-300:]
                    if tg == URING_TARGET:
                        drop_uring("proxy (io_uring) failed: redis-benchmark through it failed "
                                   f"in round {rnd} ({sid}): {reason}")
                        continue
                    if tg != "haproxy_tuned":
                        raise
                    args.failed_runs.append((rnd, sid, tg, reason))
                    log(f"round {rnd}/{args.rounds} {sid:8} {tg:14} FAILED: {reason}")
                    continue
                dc = cpu_seconds(pid_of[tg]) - c0
                total = n * len(rows)
                cpm = dc / total * 1e6
                cpu.setdefault((sid, tg), []).append(cpm)
                for r in rows:
                    r.update(scenario=sid, target=tg, round=rnd, requests=n, cpu_per_m=cpm)
                    results.append(r)
                log(f"round {rnd}/{args.rounds} {sid:8} {tg:14} "
                    + ", ".join(f"{r['test']} {r['rps']:,.0f}/s p50 {r['p50_ms']}ms"
                                for r in rows)
                    + f", cpu {cpm:.2f}s/M")
            restore_halt_poll(args)
        noise.add(f"round {rnd}", snap, noise.snap())
        p = noise.phases[-1]
        log(f"round {rnd}: other processes {p['other_pct']:.1f} % of the machine, "
            f"steal {p['steal_pct']:.1f} %")
    uring_exited("after the rounds")
    if uring_p and not args.uring_error:
        # A session thread that could not set up its ring ran on epoll: its numbers would be
        # epoll's under the io_uring label.
        fell_back = uring_fallback(os.path.join(args.work, f"{URING_TARGET}.log"), args.work)
        if fell_back:
            drop_uring(f"io_uring unavailable: the proxy fell back to epoll (`{fell_back}`)")
    # Not needed by the idle step.
    procs.stop(URING_TARGET)

    idle = {}
    if args.idle > 0:
        for label, tg, start in (("proxy", "proxy", proxy_rss_start),
                                 ("HAProxy", "haproxy", hap_rss_start)):
            log(f"opening {args.idle} idle sessions through {label}")
            d = idle_sessions(ports[tg], args.idle, {label: pid_of[tg]})
            idle[label] = {k: d[k][label] for k in ("before", "during", "after")}
            idle[label]["start"] = start
            log(f"{label}: RSS {d['before'][label]} -> {d['during'][label]} -> "
                f"{d['after'][label]} KiB (opened in {d['open_s']:.1f}s)")
            # The master must have dropped them before the next test opens its own.
            wait_until("master back to few clients",
                       lambda: int(re.search(r"connected_clients:(\d+)",
                                             redis_info(master_port)).group(1)) < 100,
                       timeout=30)
    # Nothing of this group is needed by the failover scenarios: free the CPU and the fds.
    for name in (BUSY_TARGET, "haproxy_pinned", "proxy_pinned", "haproxy_tuned", "haproxy", "proxy",
                 "sentinel", "master"):
        procs.stop(name)
    return results, cpu, idle


def start_uring(procs, args, sent_port):
    """The proxy with `[runtime] engine = "io_uring"`: the same binary and config as proxy plus
    URING_TOML, on ports of its own. Returns (port, Popen, None, io_uring fds) once it answers
    and has not logged that it fell back to epoll, else (None, None, why it is not measured,
    None) with it stopped (or never started, when the kernel refuses io_uring): a binary
    without the engine refuses the `engine` key and exits."""
    refused = io_uring_refused()
    if refused:
        reason = f"io_uring unavailable: {refused}"
        log(f"{URING_TARGET}: not started: {reason}")
        return None, None, reason, None
    port, admin, p = launch_proxy(procs, args.work, args.bin, "bench", [sent_port],
                                  name=URING_TARGET, extra_toml=URING_TOML)
    not_ready = proxy_ready(procs, args.work, URING_TARGET, p, admin, port)
    if not_ready:
        reason = f"proxy (io_uring) not available: {not_ready}"
        log(f"{URING_TARGET}: {reason}")
        return None, None, reason, None
    fell_back = uring_fallback(os.path.join(args.work, f"{URING_TARGET}.log"), args.work)
    if fell_back:
        procs.stop(URING_TARGET)
        reason = f"io_uring unavailable: the proxy fell back to epoll (`{fell_back}`)"
        log(f"{URING_TARGET}: {reason}")
        return None, None, reason, None
    fds = io_uring_fds(p.pid)
    log(f"{URING_TARGET} :{port} (admin {admin}; engine = io_uring, {fds} io_uring fd(s))")
    return port, p, None, fds


def start_pinned(procs, args, master_port, sent_port):
    """The proxy with `[runtime] pin_threads = true` and HAProxy with a `cpu-map` (one CPU per
    thread), on ports of their own, for PINNED_SCENARIOS. Returns (ports, pids, a sentence
    for the report saying what each is and which of its threads ended up on one CPU)."""
    cpus = sorted(os.sched_getaffinity(0))
    n = len(cpus)
    # Thread i on the i-th CPU of this process's set, as the proxy's pin_threads does;
    # nbthread stays at its default (one per CPU of that set).
    cpu_map = f"cpu-map auto:1/1-{n} {' '.join(cpu_ranges(cpus))}"
    port_p, admin_p, proxy_p = start_proxy(procs, args.work, args.bin, "bench", [sent_port],
                                           name="proxy_pinned",
                                           extra_toml="[runtime]\npin_threads = true\n")
    port_h, hap_h = start_haproxy(procs, args.work, [master_port], name="haproxy_pinned",
                                  global_extra=f"    {cpu_map}\n")
    log(f"pinned: proxy_pinned :{port_p} (admin {admin_p}), haproxy_pinned :{port_h} "
        f"(`{cpu_map}`)")

    def bound(pid):
        by_name = {}
        for name, cpu in single_cpu_threads(pid):
            by_name.setdefault(name, []).append(str(cpu))
        if not by_name:
            return "**no thread is bound to a single CPU**"
        return ", ".join(f"`{name}` on CPU {cs[0]}" if len(cs) == 1
                         else f"{len(cs)} `{name}` threads on CPUs {', '.join(cs)}"
                         for name, cs in by_name.items())

    # Both pin at startup: the proxy's session threads exist once it answers, HAProxy's
    # threads once it has forwarded a PING (start_haproxy waits for that).
    bp, bh = bound(proxy_p.pid), bound(hap_h.pid)
    log(f"pinned: proxy_pinned: {bp}; haproxy_pinned: {bh}")
    note = [
        f"- **proxy (pinned)**: the same binary and config as proxy plus `[runtime]` "
        f"`pin_threads = true` (session thread i on the i-th CPU of its CPU set). "
        f"Bound to one CPU each (/proc): {bp}.",
        f"- **HAProxy (cpu-map)**: the same config as HAProxy plus `{cpu_map}` in `global` "
        f"(one CPU per thread, default nbthread). Bound to one CPU each (/proc): {bh}.",
    ]
    return ({"proxy_pinned": port_p, "haproxy_pinned": port_h},
            {"proxy_pinned": proxy_p.pid, "haproxy_pinned": hap_h.pid}, note)


def redis_info(port):
    with socket.create_connection((HOST, port), timeout=2) as s:
        s.sendall(b"INFO clients\r\n")
        data = b""
        while True:
            data += s.recv(65536)
            if b"\r\n" in data:
                n = int(data[1 : data.index(b"\r\n")])
                if len(data) >= data.index(b"\r\n") + 2 + n + 2:
                    return data.decode(errors="replace")


if __name__ == "__main__":
    main()
