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
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

HOST = "127.0.0.1"
TARGETS = ("direct", "proxy", "haproxy")
CLK_TCK = os.sysconf("SC_CLK_TCK")


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


def redis_cmd(port, *args, timeout=2.0):
    """Sends one command (RESP array), returns the first reply line (or bulk line) as str."""
    payload = f"*{len(args)}\r\n".encode()
    for a in args:
        b = str(a).encode()
        payload += b"$%d\r\n%s\r\n" % (len(b), b)
    with socket.create_connection((HOST, port), timeout=timeout) as s:
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


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid):
    """utime + stime of the process (all threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime is field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


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


def start_proxy(procs, work, binary, master_name, sentinel_ports, name="proxy"):
    listen = free_port()
    admin = free_port()
    conf = os.path.join(work, f"{name}.toml")
    with open(conf, "w") as f:
        # Only what the flags cannot say: room for the 10,000 idle sessions and the churn.
        f.write("[[route]]\nmax_connections = 50000\n")
    argv = [binary, "--config", conf, "--listen", f"{HOST}:{listen}",
            "--admin", f"{HOST}:{admin}", "--master", master_name]
    for s in sentinel_ports:
        argv += ["--sentinel", f"{HOST}:{s}"]
    env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
    p = procs.start(name, argv, env=env)
    wait_until(f"{name} /readyz", lambda: http_ok(f"{HOST}:{admin}", "/readyz"), procs=procs)
    wait_until(f"{name} PING through :{listen}", lambda: pings(listen), procs=procs)
    return listen, f"{HOST}:{admin}", p


def start_haproxy(procs, work, node_ports, name="haproxy"):
    """HAProxy the canonical way for Sentinel setups: route to whichever node says role:master."""
    listen = free_port()
    servers = "\n".join(
        f"    server node{i + 1} {HOST}:{p} check inter 1s" for i, p in enumerate(node_ports)
    )
    cfg = os.path.join(work, f"{name}.cfg")
    stats = os.path.join(work, f"{name}.sock")
    # HAProxy refuses to start if the fd limit cannot hold 2 fds per connection.
    maxconn = min(60000, (fd_limit() - 100) // 2)
    with open(cfg, "w") as f:
        f.write(f"""global
    maxconn {maxconn}
    stats socket {stats} mode 600

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
    option tcp-check
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
    # round-robins onto the replicas too: wait until only the master is UP.
    wait_until(f"{name}: exactly one server UP",
               lambda: [st for _, st in haproxy_servers(stats)].count("UP") == 1
               and len(haproxy_servers(stats)) == len(node_ports),
               timeout=30, procs=procs)
    return listen, p


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


def run_benchmark(port, args, n):
    argv = ["redis-benchmark", "-h", HOST, "-p", str(port), "-n", str(n), "--csv", *args]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
    rows = [l for l in r.stdout.splitlines() if l.startswith('"')]
    parsed = list(csv.reader(rows))
    if not parsed or parsed[0][0] != "test":
        raise RuntimeError(f"unexpected redis-benchmark output: {r.stdout!r}")
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


def fence_metric(admin):
    _, text = http_get(admin, "/metrics")
    vals = {}
    for line in text.splitlines():
        for k in ("sum", "count"):
            if line.startswith(f"redis_failover_proxy_fence_duration_seconds_{k}"):
                vals[k] = float(line.rsplit(" ", 1)[1])
    return vals.get("sum", 0.0), vals.get("count", 0.0)


def fence_scenario(procs, work, binary, sessions):
    """The seed's shape on free ports: 3 nodes, 3 sentinels (quorum 2), a proxy following
    them and HAProxy checking all three nodes. Opens `sessions` idle sessions through each,
    runs SENTINEL FAILOVER and measures how the sessions to the old master end."""
    name = "fbench"
    n1, _ = start_redis(procs, work, "f-node1")
    replicas = [start_redis(procs, work, f"f-node{i}", ["--replicaof", HOST, str(n1)])[0]
                for i in (2, 3)]
    wait_until("both replicas online",
               lambda: sum("state=online" in l for l in rcli(n1, "INFO", "replication")) == 2,
               timeout=30, procs=procs)
    sents = [start_sentinel(procs, work, f"f-sentinel{i}", name, n1, 5000, quorum=2)[0]
             for i in (1, 2, 3)]
    wait_until("sentinels know 2 replicas and 2 other sentinels",
               lambda: all(int(sentinel_field(p, name, "num-slaves") or 0) >= 2
                           and int(sentinel_field(p, name, "num-other-sentinels") or 0) >= 2
                           for p in sents),
               timeout=30, procs=procs)
    proxy_port, admin, _ = start_proxy(procs, work, binary, name, sents, name="f-proxy")
    hap_port, _ = start_haproxy(procs, work, [n1, *replicas], name="f-haproxy")
    via_proxy = open_sessions(proxy_port, sessions)
    via_hap = open_sessions(hap_port, sessions)
    sum0, count0 = fence_metric(admin)

    t0 = time.monotonic()
    ok = rcli(sents[0], "SENTINEL", "FAILOVER", name)
    if ok != ["OK"]:
        raise RuntimeError(f"SENTINEL FAILOVER: {ok}")
    # Poll both sets until every session has ended (or 30 s): when did each side see its
    # last session closed?
    last_close = {"proxy": None, "haproxy": None}
    alive = {"proxy": via_proxy, "haproxy": via_hap}
    new_master = lambda: rcli(sents[0], "SENTINEL", "GET-MASTER-ADDR-BY-NAME", name)
    announced, next_ask = None, 0.0
    deadline = t0 + 30
    while (any(alive.values()) or announced is None) and time.monotonic() < deadline:
        if announced is None and time.monotonic() >= next_ask:
            if new_master()[1:2] != [str(n1)]:
                announced = time.monotonic() - t0
            next_ask = time.monotonic() + 0.02
        for k in alive:
            if alive[k]:
                alive[k] = still_open(alive[k])
                if not alive[k]:
                    last_close[k] = time.monotonic() - t0
        time.sleep(0.001)
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
        "haproxy_last_close_s": last_close["haproxy"],
        "announced_s": announced,
        "haproxy_still_open": len(alive["haproxy"]),
        "haproxy_write_reply": readonly,
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
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
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


def write_report(out_dir, args, info, info_end, results, cpu, idle, scen, fence):
    os.makedirs(out_dir, exist_ok=True)
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
        for k, v in (fence or {}).items():
            w.writerow([f"fence_{fence['sessions']}", "", "", "", k, v])

    def vals(sid, test, target, key):
        return [r[key] for r in results
                if r["scenario"] == sid and r["test"] == test and r["target"] == target]

    quiet = info["busy"] == 0 and info_end["busy"] == 0
    lines = [
        "# Benchmark: direct vs redis-failover-proxy vs HAProxy",
        "",
        f"- date: {info['date']}; mode: {'quick (numbers meaningless)' if args.quick else 'full'}, "
        f"{args.rounds} round(s), targets interleaved per scenario (direct, proxy, HAProxy)",
        f"- machine: {info['nproc']} CPUs, {info['cpu']}, kernel {info['kernel']}",
        f"- {info['redis']}; {info['haproxy']}; redis-benchmark (single-threaded) on the same host",
        f"- proxy: release build of `{info['commit']}`, tokio multi-thread runtime (default workers);"
        " HAProxy: default nbthread, config in bench/run.sh output dir (`haproxy.cfg`)",
        f"- load average at start {info['load']}, at end {info_end['load']}; "
        + ("quiet: no cargo/rustc and no other redis-server at start or end"
           if quiet else f"**NOT QUIET**: other processes were running "
           f"({info['busy']} at start, {info_end['busy']} at end: "
           f"{', '.join(sorted(set(info['busy_names'] + info_end['busy_names'])))}); "
           "numbers are noisy"),
        "",
        "Medians over the rounds. Ratios are to direct (higher is better for requests/s; "
        "latency columns show the median and, for the middle boxes, the median added over direct).",
        "",
        "## Throughput (requests/s)",
        "",
        "| scenario | test | direct | proxy | HAProxy | proxy / direct | HAProxy / direct |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    headline = {}
    for sid, desc, _, _ in scen:
        tests = []
        for r in results:
            if r["scenario"] == sid and r["test"] not in tests:
                tests.append(r["test"])
        for t in tests:
            m = {tg: med(vals(sid, t, tg, "rps")) for tg in TARGETS}
            rp = m["proxy"] / m["direct"] if m["direct"] else float("nan")
            rh = m["haproxy"] / m["direct"] if m["direct"] else float("nan")
            headline[(sid, t)] = (rp, rh)
            lines.append(f"| {desc} | {t} | {fmt(m['direct'])} | {fmt(m['proxy'])} | "
                         f"{fmt(m['haproxy'])} | {fmt(rp, 2)} | {fmt(rh, 2)} |")
    lines += [
        "",
        "## Latency at c=1 (ms, redis-benchmark percentiles)",
        "",
        "| percentile | direct | proxy | HAProxy | proxy added | HAProxy added |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("avg_ms", "mean")):
        m = {tg: med(vals("c1_lat", "GET", tg, key)) for tg in TARGETS}
        lines.append(f"| {label} | {m['direct']:.3f} | {m['proxy']:.3f} | {m['haproxy']:.3f} | "
                     f"{m['proxy'] - m['direct']:+.3f} | {m['haproxy'] - m['direct']:+.3f} |")
    lines += [
        "",
        "## CPU per million requests (seconds of utime+stime, from /proc/PID/stat)",
        "",
        "The middle box's own CPU while it carried the run; redis-server's for reference.",
        "",
        "| scenario | proxy | HAProxy | redis-server (direct run) | proxy / HAProxy |",
        "|---|---:|---:|---:|---:|",
    ]
    for sid, desc, _, _ in scen:
        c = {tg: med(cpu.get((sid, tg), [])) for tg in TARGETS}
        ratio = c["proxy"] / c["haproxy"] if c["haproxy"] else float("nan")
        lines.append(f"| {desc} | {fmt(c['proxy'], 2)} | {fmt(c['haproxy'], 2)} | "
                     f"{fmt(c['direct'], 2)} | {fmt(ratio, 2)} |")
    if idle:
        lines += [
            "",
            f"## Memory: {args.idle:,} idle sessions (VmRSS from /proc/PID/status)",
            "",
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
    if fence:
        lines += [
            "",
            f"## Fencing {fence['sessions']:,} open sessions across a `SENTINEL FAILOVER`",
            "",
            "3 nodes + 3 sentinels (quorum 2) on loopback; the same idle sessions through the "
            "proxy and through HAProxy (canonical tcp-check on all three nodes). HAProxy's "
            "sessions are closed by Redis itself: Sentinel sends `CLIENT KILL TYPE normal` to "
            "each node it reconfigures.",
            "",
            "| what | measured |",
            "|---|---|",
            f"| proxy: fence, evidence → last session closed (`fence_duration_seconds`) | "
            f"{fence['fence_ms']:.1f} ms |",
            f"| `SENTINEL FAILOVER` → a sentinel names the new master | "
            f"{fence['announced_s'] * 1000:.0f} ms |",
        ]
        for who, label in (("proxy", "proxy"), ("haproxy", "HAProxy")):
            lc = fence[f"{who}_last_close_s"]
            lines.append(
                f"| {label}: `SENTINEL FAILOVER` → the client saw its last session closed | "
                + (f"{lc * 1000:.0f} ms" if lc is not None else
                   f"**{fence[who + '_still_open']:,} of {fence['sessions']:,} still open "
                   "after 30 s**") + " |")
        lines += [
            f"| HAProxy: a `SET` on one of them | "
            f"`{fence['haproxy_write_reply'] or '(none open)'}` |",
        ]
    lines += [""]
    with open(os.path.join(out_dir, "latest.md"), "w") as f:
        f.write("\n".join(lines))
    return headline


# --------------------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--repo", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--idle", type=int)
    ap.add_argument("--fence", type=int)
    args = ap.parse_args()
    os.environ["RFP_BENCH_WORK"] = args.work
    args.rounds = args.rounds or (1 if args.quick else 5)
    args.fence = args.fence if args.fence is not None else (100 if args.quick else 1000)
    args.idle = args.idle if args.idle is not None else (500 if args.quick else 10_000)
    # A middle box holds 2 fds per session; where the hard limit is below 2 x 10,000 (some
    # containers), open as many as fit, in hundreds, and say so in the report.
    fit = (fd_limit() - 200) // 2 // 100 * 100
    if args.idle > fit:
        log(f"fd limit {fd_limit()}: {fit} idle sessions instead of {args.idle}")
        args.idle = fit

    # SIGTERM/SIGHUP end the run through the same `finally` as Ctrl-C.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, f: sys.exit(128 + s))
    _die_with_parent(signal.SIGTERM)

    for tool in ("redis-server", "redis-benchmark", "haproxy"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} not found (bench/run.sh installs it)")

    info = machine(args.repo)
    procs = Procs(args.work)
    try:
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
        scen = scenarios(args.quick)
        results, cpu = [], {}
        for rnd in range(1, args.rounds + 1):
            for sid, desc, bargs, n in scen:
                for tg in TARGETS:
                    procs.check_alive()
                    c0 = cpu_seconds(pid_of[tg])
                    rows = run_benchmark(ports[tg], bargs, n)
                    dc = cpu_seconds(pid_of[tg]) - c0
                    total = n * len(rows)
                    cpm = dc / total * 1e6
                    cpu.setdefault((sid, tg), []).append(cpm)
                    for r in rows:
                        r.update(scenario=sid, target=tg, round=rnd, requests=n, cpu_per_m=cpm)
                        results.append(r)
                    log(f"round {rnd}/{args.rounds} {sid:8} {tg:8} "
                        + ", ".join(f"{r['test']} {r['rps']:,.0f}/s p50 {r['p50_ms']}ms"
                                    for r in rows)
                        + f", cpu {cpm:.2f}s/M")

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

        fence = None
        if args.fence > 0:
            log(f"failover topology: fencing {args.fence} sessions")
            fence = fence_scenario(procs, args.work, args.bin, args.fence)
            log(f"fence: {fence}")

        info_end = machine(args.repo)
        write_report(args.out, args, info, info_end, results, cpu, idle, scen, fence)
        log(f"wrote {args.out}/latest.md and latest.csv")
        with open(os.path.join(args.out, "latest.md")) as f:
            sys.stdout.write(f.read())
    finally:
        procs.stop()


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
