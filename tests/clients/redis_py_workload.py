#!/usr/bin/env python3
"""An application's redis-py workload through the proxy, for a failover test.

Usage: redis_py_workload.py PROXY_PORT DURATION_S REPORT.json
       redis_py_workload.py --demo-retry REDIS_PORT

The first form runs, for DURATION_S seconds, threads that all share one redis-py client (one
ConnectionPool), configured the way an application configures it:
`redis.Redis(host, port, socket_timeout=5, max_connections=...)` with redis-py's default retry
(in redis-py 8.1: a ConnectionError or TimeoutError closes the connection and the same command
is sent again on a new one, up to 10 times with exponential backoff, 10 ms doubling, capped at
1 s, with jitter); it ends early when a line "stop" arrives on stdin. RP_POOL=explicit in the environment builds the pool by hand instead
(`redis.ConnectionPool(..., retry_on_timeout=True)`, whose connections retry once, at once).
Kinds of work:

- `set`: 50 threads, SET of a unique key each time (the acknowledged keys are written to
  REPORT.json.keys, one `<unix time of the ack> <key>` per line, for a loss check);
- `pipeline`: a non-transactional pipeline of 10 SETs of unique keys and a GET;
- `multi`: MULTI/EXEC (a transaction pipeline) of a SET of a unique key and an INCR;
- `watch`: optimistic check-and-set increments with WATCH/GET/MULTI/SET/EXEC, the documented
  loop that retries on WatchError (retries are counted, not errors);
- `incr`: plain INCR counters (the command redis-py's retry may apply twice);
- `blpop` / `rpush`: a consumer blocked in BLPOP (1 s timeout) and a producer;
- `publish` / pubsub: a subscriber reading with get_message and a publisher;
- `big`: SET and GET of 3 MiB values, checked byte for byte.

An error is an exception that reached the application's code (redis-py's retries were
exhausted, or it does not retry that case). Prints READY on stdout once every kind has had a
success, and writes the report (ops per kind, errors by type and message with their times,
the commands redis-py re-sent silently, longest gaps, counters) as JSON. Exit code 0 unless
the script itself failed.

The second form shows what redis-py's default retry does with a command whose connection is cut
after the server executed it but before its reply arrived (what a fence, or any dropped
connection, can do to a command in flight): a relay in front of REDIS_PORT forwards one INCR,
one SET and one more INCR (this one with retries off), drops each reply and closes the
connection; it prints JSON with what the application got back and what the server holds.
"""

import json
import os
import select
import socket
import sys
import threading
import time
import traceback

import redis
from redis.backoff import NoBackoff
from redis.exceptions import WatchError
from redis.retry import Retry

SET_THREADS = 50
INCR_THREADS = 4
WATCH_THREADS = 2
BIG_SIZE = 3 * 1024 * 1024
KEY_PREFIX = "rp:k:"  # unique acknowledged keys; the test checks these on the new master


class ThreadStats:
    """Successes of one thread: the longest time between two (or from its start)."""

    def __init__(self, kind, now):
        self.kind = kind
        self.name = threading.current_thread().name
        self.last_ok = now
        self.last_ok_unix = time.time()
        self.longest = 0.0
        self.longest_at = None  # (from_unix, to_unix)

    def ok(self):
        now = time.monotonic()
        gap = now - self.last_ok
        if gap > self.longest:
            self.longest = gap
            self.longest_at = (self.last_ok_unix, time.time())
        self.last_ok = now
        self.last_ok_unix = time.time()


class Report:
    def __init__(self):
        self.lock = threading.Lock()
        self.ops = {}
        self.errors = {}  # type -> {"count", "messages": {msg: count}, "kinds": {kind: count}}
        self.error_times = []  # [unix, type, kind]
        self.threads = []
        self.acked_keys = []  # (unix, key)
        self.watch_retries = {}  # message -> count
        self.incr_jumps = 0  # a returned value more than 1 above the previous one
        self.incr_repeats = 0  # a returned value not above the previous one
        self.big_mismatch = 0
        self.published = 0
        self.received = []  # (seq, unix)
        self.pushed = []
        self.popped = []
        self.multi_acked = 0
        self.incr_acked = {}
        self.cas_commits = {}

    def thread(self, kind):
        st = ThreadStats(kind, time.monotonic())
        with self.lock:
            self.threads.append(st)
        return st

    def ok(self, kind, st, n=1):
        st.ok()
        with self.lock:
            self.ops[kind] = self.ops.get(kind, 0) + n

    def error(self, kind, exc):
        name = type(exc).__name__
        msg = str(exc)[:200]
        with self.lock:
            e = self.errors.setdefault(name, {"count": 0, "messages": {}, "kinds": {}})
            e["count"] += 1
            if msg in e["messages"] or len(e["messages"]) < 10:
                e["messages"][msg] = e["messages"].get(msg, 0) + 1
            e["kinds"][kind] = e["kinds"].get(kind, 0) + 1
            if len(self.error_times) < 2000:
                self.error_times.append([time.time(), name, kind])


RETRIES = {}  # "Type: message" -> count; every connection's Retry is a deep copy, so global
RETRIES_LOCK = threading.Lock()


class CountingRetry(Retry):
    """redis-py's own Retry with the same backoff, count and errors, counting each failure it
    handles (each one is a command, pipeline or connect that redis-py re-sent silently, when
    it has retries left)."""

    def call_with_retry(self, do, fail, *args, **kwargs):
        failures = [0]

        def counted(error, *count):
            failures[0] += 1
            if self._retries < 0 or failures[0] <= self._retries:
                key = f"{type(error).__name__}: {str(error)[:120]}"
                with RETRIES_LOCK:
                    RETRIES[key] = RETRIES.get(key, 0) + 1
            return fail(error, *count)

        return super().call_with_retry(do, counted, *args, **kwargs)


def counting(default):
    return CountingRetry(default._backoff, default._retries, default._supported_errors)


def cutting_relay(redis_port):
    """A relay to 127.0.0.1:redis_port that, on each connection, forwards everything, except
    that once a client sends a command containing one of the byte strings in
    `state["cut_words"]` (the list is then emptied), the server's reply to it is dropped and
    the client connection closed."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    state = {"cut_words": [], "cuts": 0}
    lock = threading.Lock()

    def handle(c):
        s = socket.create_connection(("127.0.0.1", redis_port))
        armed = False
        try:
            while True:
                ready, _, _ = select.select([c, s], [], [])
                if c in ready:
                    data = c.recv(65536)
                    if not data:
                        return
                    with lock:
                        if any(w in data for w in state["cut_words"]):
                            state["cut_words"] = []
                            armed = True
                    s.sendall(data)
                if s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    if armed:  # the server executed it and answered: drop the answer
                        with lock:
                            state["cuts"] += 1
                        return
                    c.sendall(data)
        finally:
            c.close()
            s.close()

    def accept():
        while True:
            c, _ = lsock.accept()
            threading.Thread(target=handle, args=(c,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return lsock.getsockname()[1], state, lock


def connection_retry(pool):
    """The Retry redis-py gives this pool's connections."""
    try:
        c = pool.get_connection()
    except TypeError:  # redis-py before 5.3 wants a command name
        c = pool.get_connection("PING")
    try:
        return c.retry
    finally:
        pool.release(c)


def demo_retry(redis_port):
    port, state, lock = cutting_relay(redis_port)
    direct = redis.Redis(host="127.0.0.1", port=redis_port, socket_timeout=5)
    direct.delete("rp:demo:incr", "rp:demo:set", "rp:demo:noretry")
    out = {"redis_py_version": redis.__version__}

    # The command name as a RESP bulk string (redis-py 5 sends INCR as INCRBY).
    INCR = [b"\r\nINCR\r\n", b"\r\nINCRBY\r\n"]

    def cut(client, words, call):
        """`call()` with the reply to its command cut: (what it returned, the error)."""
        with lock:
            state["cut_words"] = list(words)
        try:
            return call(), None
        except redis.exceptions.ConnectionError as exc:
            return None, f"{type(exc).__name__}: {exc}"

    # As an application configures it: redis-py's default retry.
    app = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
    app.ping()
    out["default_retries"] = connection_retry(app.connection_pool)._retries
    got, err = cut(app, INCR, lambda: app.incr("rp:demo:incr"))
    out["default_retry_incr_returned"], out["default_retry_incr_error"] = got, err
    out["default_retry_incr_server_value"] = int(direct.get("rp:demo:incr") or 0)
    got, err = cut(app, [b"\r\nSET\r\n"], lambda: app.set("rp:demo:set", "v"))
    out["default_retry_set_returned"], out["default_retry_set_error"] = got, err
    out["default_retry_set_server_value"] = (direct.get("rp:demo:set") or b"").decode()
    # Without retries (redis-py before 6 by default, or retry=Retry(NoBackoff(), 0)): the
    # application sees the error, and the INCR it thinks failed was applied.
    plain = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, retry=Retry(NoBackoff(), 0))
    plain.ping()
    got, err = cut(plain, INCR, lambda: plain.incr("rp:demo:noretry"))
    out["no_retry_incr_error"] = err
    out["no_retry_incr_server_value"] = int(direct.get("rp:demo:noretry") or 0)
    out["cuts"] = state["cuts"]
    print(json.dumps(out))


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--demo-retry":
        demo_retry(int(sys.argv[2]))
        return
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    port = int(sys.argv[1])
    duration = float(sys.argv[2])
    out = sys.argv[3]
    style = os.environ.get("RP_POOL", "client")
    if style == "explicit":
        # A pool built by hand, as some applications do: its connections get redis-py's
        # connection-level default, one immediate retry (with retry_on_timeout=True).
        pool = redis.ConnectionPool(
            host="127.0.0.1",
            port=port,
            socket_timeout=5,
            socket_connect_timeout=5,
            retry_on_timeout=True,
            max_connections=SET_THREADS + 30,
        )
        r = redis.Redis(connection_pool=pool)
    else:
        r = redis.Redis(
            host="127.0.0.1",
            port=port,
            socket_timeout=5,
            socket_connect_timeout=5,
            max_connections=SET_THREADS + 30,
        )
    # The retry redis-py gave the connections, unchanged, only counted.
    default_retry = connection_retry(r.connection_pool)
    r.set_retry(counting(default_retry))
    rep = Report()
    stop = threading.Event()
    started_unix = time.time()
    started = time.monotonic()
    big_blob = os.urandom(BIG_SIZE)
    for k in r.scan_iter(match="rp:*", count=1000):
        r.delete(k)

    def loop(kind, body, pause):
        """Runs `body(i)` until stop; counts its successes, records the exceptions."""

        def run(name):
            st = rep.thread(kind)
            i = 0
            while not stop.is_set():
                try:
                    n = body(name, i)
                    if stop.is_set():
                        break  # e.g. a BLPOP that waited its timeout after the producer stopped
                    rep.ok(kind, st, n or 1)
                except Exception as exc:  # what the application would see
                    rep.error(kind, exc)
                i += 1
                if pause:
                    stop.wait(pause)

        return run

    def do_set(name, i):
        key = f"{KEY_PREFIX}set:{name}:{i}"
        r.set(key, "v")
        ack = time.time()
        with rep.lock:
            rep.acked_keys.append((ack, key))

    def do_pipeline(name, i):
        keys = [f"{KEY_PREFIX}pipe:{name}:{i}:{j}" for j in range(10)]
        with r.pipeline(transaction=False) as p:
            for k in keys:
                p.set(k, "v")
            p.get(keys[0])
            res = p.execute()
        if res[-1] != b"v":
            raise AssertionError(f"pipeline GET returned {res[-1]!r}")
        ack = time.time()
        with rep.lock:
            rep.acked_keys.extend((ack, k) for k in keys)

    def do_multi(name, i):
        key = f"{KEY_PREFIX}multi:{name}:{i}"
        with r.pipeline(transaction=True) as p:
            p.set(key, "v")
            p.incr("rp:multi:count")
            p.execute()
        ack = time.time()
        with rep.lock:
            rep.acked_keys.append((ack, key))
            rep.multi_acked += 1

    def do_watch(name, i):
        key = f"rp:cas:{name}"
        with r.pipeline() as p:
            while True:
                try:
                    p.watch(key)
                    v = int(p.get(key) or 0)
                    p.multi()
                    p.set(key, v + 1)
                    p.execute()
                    break
                except WatchError as exc:
                    with rep.lock:
                        m = str(exc)[:200]
                        rep.watch_retries[m] = rep.watch_retries.get(m, 0) + 1
        with rep.lock:
            rep.cas_commits[key] = rep.cas_commits.get(key, 0) + 1

    incr_last = {}

    def do_incr(name, i):
        key = f"rp:incr:{name}"
        v = r.incr(key)
        prev = incr_last.get(key, 0)
        with rep.lock:
            rep.incr_acked[key] = rep.incr_acked.get(key, 0) + 1
            if v > prev + 1:
                rep.incr_jumps += 1
            elif v <= prev:
                rep.incr_repeats += 1
        incr_last[key] = v

    def do_rpush(name, i):
        r.rpush("rp:q", i)
        with rep.lock:
            rep.pushed.append(i)

    def do_blpop(name, i):
        got = r.blpop(["rp:q"], timeout=1)
        if got is not None:
            with rep.lock:
                rep.popped.append(int(got[1]))

    def do_publish(name, i):
        r.publish("rp:chan", i)
        with rep.lock:
            rep.published += 1

    def do_big(name, i):
        key = f"rp:big:{i % 3}"
        value = i.to_bytes(8, "big") + big_blob
        r.set(key, value)
        got = r.get(key)
        if got != value:
            with rep.lock:
                rep.big_mismatch += 1
            raise AssertionError(f"GET {key} returned {len(got or b'')} bytes, not the value set")

    def subscriber():
        st = rep.thread("pubsub")
        p = r.pubsub(ignore_subscribe_messages=True)
        subscribed = False
        while not stop.is_set():
            try:
                if not subscribed:
                    p.subscribe("rp:chan")
                    subscribed = True
                m = p.get_message(timeout=0.5)
                if m is not None and m.get("type") == "message":
                    rep.ok("pubsub", st)
                    with rep.lock:
                        rep.received.append((int(m["data"]), time.time()))
            except Exception as exc:
                rep.error("pubsub", exc)
                stop.wait(0.05)
        p.close()

    workers = []
    for t in range(SET_THREADS):
        workers.append(("set", f"s{t}", loop("set", do_set, 0.05)))
    workers.append(("pipeline", "p0", loop("pipeline", do_pipeline, 0.02)))
    workers.append(("multi", "m0", loop("multi", do_multi, 0.02)))
    for t in range(WATCH_THREADS):
        workers.append(("watch", f"w{t}", loop("watch", do_watch, 0.02)))
    for t in range(INCR_THREADS):
        workers.append(("incr", f"i{t}", loop("incr", do_incr, 0.01)))
    workers.append(("rpush", "q0", loop("rpush", do_rpush, 0.01)))
    workers.append(("blpop", "b0", loop("blpop", do_blpop, 0)))
    workers.append(("publish", "u0", loop("publish", do_publish, 0.01)))
    workers.append(("big", "g0", loop("big", do_big, 0.25)))
    threads = [threading.Thread(target=subscriber, name="pubsub", daemon=True)]
    for kind, name, fn in workers:
        threads.append(threading.Thread(target=fn, args=(name,), name=name, daemon=True))
    for t in threads:
        t.start()

    def stop_on_stdin():
        # End early when stdin says "stop" (the test does once the failover is over and the
        # work has gone on for a while on the new master); DURATION_S is the longest run.
        for line in sys.stdin:
            if line.strip() == "stop":
                stop.set()
                return

    threading.Thread(target=stop_on_stdin, daemon=True).start()
    kinds = {k for k, _, _ in workers} | {"pubsub"}
    deadline = started + duration
    ready = False
    while time.monotonic() < deadline and not stop.is_set():
        if not ready:
            with rep.lock:
                ready = kinds <= set(rep.ops)
            if ready:
                print("READY", flush=True)
        time.sleep(0.05)
    stop.set()
    stopped, stopped_unix = time.monotonic(), time.time()
    stuck = []
    for t in threads:
        t.join(timeout=15)
        if t.is_alive():
            stuck.append(t.name)

    # Final state through the proxy (the new master after a failover).
    final = {}
    try:
        final["multi_count"] = int(r.get("rp:multi:count") or 0)
        final["incr"] = {k: int(r.get(k) or 0) for k in rep.incr_acked}
        final["cas"] = {k: int(r.get(k) or 0) for k in rep.cas_commits}
        final["queue"] = [int(x) for x in r.lrange("rp:q", 0, -1)]
    except Exception as exc:
        final["error"] = f"{type(exc).__name__}: {exc}"

    keys_file = out + ".keys"
    with open(keys_file, "w") as f:
        for ack, key in rep.acked_keys:
            f.write(f"{ack:.6f} {key}\n")

    def longest(kinds_):
        """(seconds, kind, (from_unix, to_unix)): the longest time a thread of `kinds_` went
        without a success, counting the time from its last success to the stop."""
        best = None
        for st in rep.threads:
            if st.kind in kinds_:
                g, at = st.longest, st.longest_at
                trailing = stopped - st.last_ok if st.name in stuck else 0.0
                if trailing > g:
                    g, at = trailing, (st.last_ok_unix, stopped_unix)
                if best is None or g > best[0]:
                    best = (g, st.kind, at)
        return best

    continuous = {"set", "pipeline", "multi", "watch", "incr", "rpush", "blpop", "publish", "big"}
    gap = longest(continuous)
    per_kind = {}
    for k in sorted(kinds):
        g = longest({k})
        per_kind[k] = round(g[0], 3) if g else None
    last_ok = {}
    for st in rep.threads:
        if st.kind in rep.ops:
            last_ok[st.kind] = max(last_ok.get(st.kind, 0.0), st.last_ok_unix)
    pushed = set(rep.pushed)
    popped = rep.popped
    remaining = final.get("queue", [])
    received_seq = {s for s, _ in rep.received}
    recv_times = sorted(t for _, t in rep.received)
    recv_gap = max((b - a for a, b in zip(recv_times, recv_times[1:])), default=None)
    report = {
        "redis_py_version": redis.__version__,
        "python": sys.version.split()[0],
        "started_unix": started_unix,
        "ended_unix": time.time(),
        "duration_s": duration,
        "threads": len(threads),
        "ops": rep.ops,
        "errors": rep.errors,
        "error_count": sum(e["count"] for e in rep.errors.values()),
        "error_times": rep.error_times,
        "stuck_threads": stuck,
        "longest_gap_s": round(gap[0], 3) if gap else None,
        "longest_gap_kind": gap[1] if gap else None,
        "longest_gap_unix": gap[2] if gap else None,
        "longest_gap_by_kind_s": per_kind,
        "last_ok_unix_by_kind": last_ok,
        "acked_keys": len(rep.acked_keys),
        "acked_keys_file": keys_file,
        "key_prefix": KEY_PREFIX,
        "watch_retries": rep.watch_retries,
        "pool": style,
        "default_retry": {
            "retries": default_retry._retries,
            "backoff": type(default_retry._backoff).__name__,
            "errors": sorted(f"{e.__module__}.{e.__name__}" for e in default_retry._supported_errors),
        },
        "silent_retries": RETRIES,
        "cas": {
            "commits": sum(rep.cas_commits.values()),
            "final": sum(final.get("cas", {}).values()),
        },
        "incr": {
            "acked": sum(rep.incr_acked.values()),
            "final": sum(final.get("incr", {}).values()),
            "jumps": rep.incr_jumps,
            "repeats": rep.incr_repeats,
        },
        "multi": {"acked": rep.multi_acked, "final": final.get("multi_count")},
        "queue": {
            "pushed_acked": len(rep.pushed),
            "popped": len(popped),
            "popped_twice": len(popped) - len(set(popped)),
            "remaining": len(remaining),
            "missing": len(pushed - set(popped) - set(remaining)),
        },
        "pubsub": {
            "published_acked": rep.published,
            "received": len(rep.received),
            "missed": max(rep.published - len(received_seq), 0),
            "longest_gap_between_messages_s": round(recv_gap, 3) if recv_gap else None,
        },
        "big": {"ops": rep.ops.get("big", 0), "mismatches": rep.big_mismatch, "size": BIG_SIZE},
        "final_error": final.get("error"),
    }
    with open(out, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    try:
        main()
    except Exception:
        traceback.print_exc()
        sys.exit(2)
