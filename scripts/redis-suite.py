#!/usr/bin/env python3
"""Redis's own test suite, directly and through the proxy, with the same flags.

Fetches the source of the installed redis-server from Debian's source packages (a deb-src line
for each configured mirror, in a private apt state directory: the system's apt setup is not
touched), then runs the suite's external-server mode twice, each time against a fresh
redis-server watched by one redis-sentinel:

  1. directly against the master;
  2. through the release proxy, which follows that sentinel.

It prints the tests that pass directly and fail through the proxy and exits 1 if any is not on
the allow-list (scripts/redis-suite-allow.txt, each entry with the reason it is not the proxy's
fault) and shows again when the units it came from run a second time, both ways (a
timing-sensitive test can fail once either way on a busy machine); 2 if the suite could not be
run at all. A test that hangs (Redis's runner then stops the whole run) is recorded as a
timeout, skipped, and the units not yet finished run again. Every run uses a fresh server: the suite leaves
settings behind (unit/type/list and unit/type/set leave proto-max-bulk-len at 10 GB, after which
unit/protocol hangs).

Usage: scripts/redis-suite.py [--proxy BIN] [--units unit/a,unit/b] [--work DIR] [--timeout S]
                              [--engines epoll,io_uring]
Environment: RFP_SUITE_UNITS (comma-separated units, default: the list below), RFP_SUITE_ENGINES
(as --engines).
"""

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALLOW = ROOT / "scripts" / "redis-suite-allow.txt"
MASTER = "suite"

# The units that exercise what a proxy could change: the protocol and connection handling,
# blocking commands and their wake-up order across connections, pub/sub, transactions, client
# tracking, and the data types' command surface. Left out: units that only test the server's
# internals and take minutes (memory efficiency, latency monitor, persistence, replication,
# scripting's full matrix, the cluster and module units that external mode skips anyway).
DEFAULT_UNITS = [
    "unit/printver",
    "unit/protocol",
    "unit/quit",
    "unit/auth",
    "unit/keyspace",
    "unit/info-command",
    "unit/type/string",
    "unit/type/incr",
    "unit/type/list",
    "unit/type/hash",
    "unit/type/set",
    "unit/type/zset",
    "unit/type/stream",
    "unit/type/stream-cgroups",
    "unit/expire",
    "unit/multi",
    "unit/pubsub",
    "unit/pubsubshard",
    "unit/tracking",
    "unit/querybuf",
    "unit/pause",
    "unit/introspection-2",
    "unit/networking",
    "unit/limits",
]

ANSI = re.compile(r"\x1b\[[0-9;]*m")
MAX_HANGS = 5
RESULT = re.compile(r"^\[(ok|err|exception|timeout|ignore|skip)\]:\s*(.*?)(?:\s+\(\d+ ms\))?$")


def log(msg):
    print(f"redis-suite: {msg}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, deadline_s=20):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, **kw)


def fetch_source(work: Path) -> Path:
    """The suite of the installed redis-server: work/<version>/src/tests."""
    q = subprocess.run(
        ["dpkg-query", "-W", "-f=${source:Package} ${Version}", "redis-server"],
        capture_output=True, text=True,
    )
    if q.returncode != 0:
        sys.exit(f"redis-suite: redis-server is not installed from a Debian package: {q.stderr}")
    package, version = q.stdout.split()
    tree = work / version.replace(":", "_") / "src"
    if (tree / "runtest").exists():
        return tree
    if not shutil.which("dpkg-source"):
        sh(["apt-get", "install", "-y", "dpkg-dev"], stdout=subprocess.DEVNULL)
    apt = work / "apt"
    (apt / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (apt / "parts").mkdir(exist_ok=True)
    # deb-src twins of the configured deb sources (deb822 files and one-line lists).
    stanzas = []
    for f in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        text = f.read_text()
        if "debian" in text:
            stanzas.append(re.sub(r"(?m)^Types:\s*deb\s*$", "Types: deb-src", text))
    (apt / "parts" / "src.sources").write_text("\n".join(stanzas))
    lines = []
    for f in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*.list")]:
        if f.exists():
            lines += [l.replace("deb ", "deb-src ", 1) for l in f.read_text().splitlines()
                      if l.startswith("deb ") and "debian" in l]
    (apt / "parts" / "src.list").write_text("\n".join(lines) + "\n")
    opts = ["-o", "Dir::Etc::SourceList=/dev/null", "-o", f"Dir::Etc::SourceParts={apt}/parts",
            "-o", f"Dir::State::Lists={apt}/lists"]
    log(f"fetching the source of {package} {version} from Debian's mirror")
    sh(["apt-get", *opts, "update"], stdout=subprocess.DEVNULL)
    dl = work / "download"
    dl.mkdir(exist_ok=True)
    sh(["apt-get", *opts, "source", "--download-only", f"{package}={version}"], cwd=dl,
       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dsc = next(dl.glob("*.dsc"))
    tree.parent.mkdir(parents=True, exist_ok=True)
    sh(["dpkg-source", "--no-check", "-x", str(dsc), str(tree)], stdout=subprocess.DEVNULL)
    return tree


def link_binaries(tree: Path):
    """Some units run src/redis-cli and friends: the installed ones, of the same version."""
    for name in ("redis-server", "redis-cli", "redis-benchmark", "redis-sentinel",
                 "redis-check-aof", "redis-check-rdb"):
        target = shutil.which(name)
        link = tree / "src" / name
        if target and not link.exists():
            link.symlink_to(target)


class Procs:
    def __init__(self):
        self.procs = []

    def start(self, cmd, log_path):
        f = open(log_path, "w")
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        self.procs = []


def start_group(dir_: Path, procs: Procs):
    """A fresh master and one sentinel watching it; their ports."""
    dir_.mkdir(parents=True)
    master = free_port()
    procs.start(["redis-server", "--port", str(master), "--bind", "127.0.0.1", "--dir", str(dir_),
                 "--save", "", "--appendonly", "no", "--enable-debug-command", "yes",
                 "--enable-protected-configs", "yes", "--enable-module-command", "yes"],
                dir_ / "master.log")
    if not wait_port(master):
        sys.exit(2)
    sport = free_port()
    conf = dir_ / "sentinel.conf"
    conf.write_text(f"port {sport}\nbind 127.0.0.1\ndir {dir_}\n"
                    f"sentinel monitor {MASTER} 127.0.0.1 {master} 1\n"
                    f"sentinel down-after-milliseconds {MASTER} 60000\n")
    procs.start(["redis-sentinel", str(conf)], dir_ / "sentinel.log")
    if not wait_port(sport):
        sys.exit(2)
    return master, sport


def run_suite(tree: Path, port: int, units, out: Path, timeout: int):
    """Runs `units`; a test that hangs past `timeout` ends the suite's run (Redis's runner
    stops everything at a timeout), so it is recorded as `[timeout]: NAME in tests/UNIT.tcl`,
    skipped, and the units not yet finished run again (at most MAX_HANGS times)."""
    hung = []
    remaining = list(units)
    code = 0
    started = time.monotonic()
    with open(out, "w") as f:
        while remaining:
            args = ["./runtest", "--host", "127.0.0.1", "--port", str(port), "--singledb",
                    "--clients", "1", "--tags", "-slow", "--durable", "--timeout", str(timeout)]
            for name in hung:
                args += ["--skiptest", name]
            for u in remaining:
                args += ["--single", u]
            p = subprocess.run(args, cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, errors="replace", timeout=timeout * len(units) + 600)
            f.write(p.stdout)
            code = code or p.returncode
            name = hang_of(p.stdout)
            if name is None:
                break
            done = set(re.findall(r"(?m)^\s+\d+ seconds - (\S+)$", ANSI.sub("", p.stdout)))
            remaining = [u for u in remaining if u not in done]
            unit = remaining[0] if remaining else "unknown"
            log(f"hung past {timeout} s: {name} (tests/{unit}.tcl); skipping it and running "
                f"the {len(remaining)} unit(s) not finished again")
            f.write(f"[timeout]: {name} in tests/{unit}.tcl\n")
            hung.append(name)
            if len(hung) >= MAX_HANGS:
                log(f"{MAX_HANGS} tests hung; not running the rest")
                break
    return code, time.monotonic() - started


def hang_of(output: str):
    """The test in progress when Redis's runner gave up on a timeout, if it did."""
    text = ANSI.sub("", output)
    if "[TIMEOUT]" not in text:
        return None
    m = re.search(r"\(IN PROGRESS\) (.+)$", text, re.M)
    return m.group(1).strip() if m else None


def results(out: Path):
    """({test name: outcome}, {failed test name: its unit}): outcomes ok, err, exception,
    timeout (skips and ignores left out)."""
    seen = {}
    units_of = {}
    for line in out.read_text(errors="replace").splitlines():
        m = RESULT.match(ANSI.sub("", line).strip())
        if m and m.group(1) in ("ok", "err", "exception", "timeout"):
            # "[err]: NAME in tests/unit/x.tcl"
            unit = re.search(r" in tests/(\S+)\.tcl$", m.group(2))
            name = re.sub(r" in tests/\S+\.tcl$", "", m.group(2))
            if unit:
                units_of[name] = unit.group(1)
            # A name seen twice keeps its worst outcome.
            if seen.get(name, "ok") == "ok":
                seen[name] = m.group(1)
    return seen, units_of


def allow_list():
    allowed = {}
    for line in ALLOW.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, why = line.partition(" | ")
            allowed[name.strip()] = why.strip()
    return allowed


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--proxy", help="proxy binary (default: cargo build --release)")
    ap.add_argument("--units", default=os.environ.get("RFP_SUITE_UNITS"))
    ap.add_argument("--work", default=str(ROOT / "target" / "redis-suite"))
    ap.add_argument("--timeout", type=int, default=60,
                    help="per-test timeout of the suite, s (a test that hangs costs this long)")
    ap.add_argument("--engines", default=os.environ.get("RFP_SUITE_ENGINES", "epoll,io_uring"),
                    help="session engines to run the proxy with, comma-separated "
                         "(runtime.engine; io_uring falls back to epoll where unavailable)")
    a = ap.parse_args()
    engines = a.engines.split(",")
    units = a.units.split(",") if a.units else DEFAULT_UNITS
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    # The suite is Tcl; the servers come from Debian's packages.
    missing = [pkg for cmd, pkg in (("tclsh", "tcl"), ("redis-server", "redis-server"),
                                    ("redis-sentinel", "redis-sentinel"),
                                    ("redis-cli", "redis-tools")) if not shutil.which(cmd)]
    if missing:
        log(f"installing {' '.join(missing)}")
        sh(["apt-get", "install", "-y", *missing], stdout=subprocess.DEVNULL)
    tree = fetch_source(work)
    link_binaries(tree)
    proxy = a.proxy
    if not proxy:
        log("building the release proxy")
        sh(["cargo", "build", "--release", "--locked"], cwd=ROOT)
        proxy = str(ROOT / "target" / "release" / "redis-failover-proxy")
    allowed = allow_list()
    direct, through, units_of = both_ways(tree, proxy, units, work, a.timeout, engines)
    if not direct:
        sys.exit("redis-suite: no test ran directly; is the suite broken here?")
    differ = differences(direct, through)
    print(f"passed directly: {sum(1 for r in direct.values() if r == 'ok')} of {len(direct)}; "
          f"through the proxy: {sum(1 for r in through.values() if r == 'ok')} of {len(through)}")
    for n in differ:
        tag = f"allowed: {allowed[n]}" if n in allowed else "NOT ALLOWED"
        print(f"  passes directly, not through the proxy ({through.get(n, 'missing')}): {n} [{tag}]")
    unexplained = [n for n in differ if n not in allowed]
    if unexplained:
        # A difference must show twice: the units it came from run again, both ways, on fresh
        # servers, and only a test that passes directly and fails through the proxy again
        # counts (a timing-sensitive test can fail once either way on a busy machine).
        again = sorted({units_of[n] for n in unexplained if n in units_of}) or units
        log(f"{len(unexplained)} unexplained difference(s); running {', '.join(again)} again")
        direct2, through2, _ = both_ways(tree, proxy, again, work, a.timeout, engines)
        confirmed = [n for n in unexplained if n in differences(direct2, through2)]
        for n in unexplained:
            verdict = "again" if n in confirmed else "not again (counted as noise)"
            print(f"  second run: {n}: {verdict}")
        if confirmed:
            print(f"redis-suite: {len(confirmed)} difference(s) not on "
                  f"{ALLOW.relative_to(ROOT)}, seen twice")
            return 1
    print("redis-suite: no unexplained difference")
    return 0


def differences(direct, through):
    """Tests that pass directly and not through the proxy."""
    return sorted(n for n, r in direct.items() if r == "ok" and through.get(n, "missing") != "ok")


def both_ways(tree: Path, proxy: str, units, work: Path, timeout: int, engines):
    """The suite's `units` directly and through the proxy (once per session engine in
    `engines`), each on a fresh master + sentinel: (direct outcomes, proxy outcomes, {failed
    test: its unit})."""
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    procs = Procs()
    outcome = {}
    units_of = {}
    try:
        for way in ("direct", *(f"proxy-{e}" for e in engines)):
            master, sport = start_group(run_dir / way, procs)
            port = master
            if way != "direct":
                port = free_port()
                # Only the session engine comes from the file; the route from the flags.
                conf = run_dir / way / "proxy.toml"
                conf.write_text(f'[runtime]\nengine = "{way.removeprefix("proxy-")}"\n')
                procs.start([proxy, "--config", str(conf), "--listen", f"127.0.0.1:{port}",
                             "--master", MASTER, "--sentinel", f"127.0.0.1:{sport}",
                             "--no-admin"],
                            run_dir / way / "proxy.log")
                if not wait_port(port):
                    sys.exit("redis-suite: the proxy did not start; see "
                             f"{run_dir / way / 'proxy.log'}")
            out = run_dir / way / "suite.txt"
            log(f"{way}: {len(units)} units against port {port}")
            code, took = run_suite(tree, port, units, out, timeout)
            outcome[way], found = results(out)
            units_of.update(found)
            counts = {k: sum(1 for v in outcome[way].values() if v == k)
                      for k in ("ok", "err", "exception", "timeout")}
            log(f"{way}: {counts} in {took:.0f} s (exit {code}); output {out}")
            procs.stop()
    finally:
        procs.stop()
    # Through the proxy, a test passes only if it passed on every engine; otherwise its
    # outcome names the engine(s) it failed on.
    through = {}
    for name in set().union(*(outcome[f"proxy-{e}"] for e in engines)):
        bad = [f"{outcome[f'proxy-{e}'].get(name, 'missing')} on {e}" for e in engines
               if outcome[f"proxy-{e}"].get(name, "missing") != "ok"]
        through[name] = "; ".join(bad) if bad else "ok"
    return outcome["direct"], through, units_of


if __name__ == "__main__":
    sys.exit(main())
