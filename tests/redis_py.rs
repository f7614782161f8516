//! A real client library across a failover: redis-py (the client Zato uses), configured as an
//! application configures it, through the proxy. `tests/clients/redis_py_workload.py` runs 50
//! threads sharing one connection pool plus pipelines, MULTI/EXEC, WATCH, INCR, BLPOP, pub/sub
//! and 3 MiB values, and reports what the application saw: errors by exception type, the longest
//! time a thread went without a successful operation, and the keys it was told were written.
//! Skipped (with the reason) when `python3` or the `redis` Python package is missing;
//! `scripts/test.sh` installs it.

mod support;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use support::workload::keys_on;
use support::*;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/clients/redis_py_workload.py"
);
/// The longest the workload runs; the failover starts once every kind of work has succeeded,
/// and it has written [`BEFORE_KEYS`] keys; the test stops it once it has written
/// [`AFTER_KEYS`] keys to the new master.
const DURATION_S: u64 = 50;
const BEFORE_KEYS: i64 = 5000;
const AFTER_KEYS: i64 = 8000;

fn redis_py_available() -> bool {
    if !require("python3") {
        return false;
    }
    let ok = Command::new("python3")
        .args(["-c", "import redis"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        skip("the redis Python package (redis-py) is not installed (scripts/test.sh installs it)");
    }
    ok
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The workload as a child process; its stdout lines arrive on `lines`.
struct Workload {
    child: Child,
    lines: mpsc::Receiver<String>,
    out: std::path::PathBuf,
}

impl Workload {
    fn start(port: u16, dir: &std::path::Path) -> Workload {
        let out = dir.join("redis-py-report.json");
        let mut child = Command::new("python3")
            .arg(SCRIPT)
            .arg(port.to_string())
            .arg(DURATION_S.to_string())
            .arg(&out)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start python3");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Workload { child, lines, out }
    }

    /// Waits until every kind of work has succeeded once.
    fn wait_ready(&self) {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(30))
            .expect("the redis-py workload says READY within 30 s");
        assert_eq!(line, "READY");
    }

    /// Lets the workload go on until the node at `port` holds `AFTER_KEYS` more keys, then
    /// stops it and returns the report.
    fn finish_after_progress_on(mut self, port: u16) -> Value {
        wait_keys(port, AFTER_KEYS, "the workload writes to the new master");
        if let Some(stdin) = self.child.stdin.as_mut() {
            let _ = stdin.write_all(b"stop\n");
            let _ = stdin.flush();
        }
        self.finish()
    }

    /// Waits for the end of the run and returns the report.
    fn finish(mut self) -> Value {
        let timeout = Duration::from_secs(DURATION_S + 40);
        let status = exit_within(&mut self.child, timeout)
            .unwrap_or_else(|| panic!("the redis-py workload did not end within {timeout:?}"));
        assert!(status.success(), "the redis-py workload failed: {status}");
        let text = std::fs::read_to_string(&self.out).expect("report file");
        serde_json::from_str(&text).expect("report JSON")
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits until the node at `port` holds `more` keys more than now.
fn wait_keys(port: u16, more: i64, what: &str) {
    let dbsize = || match redis_cmd(port, &["DBSIZE"]) {
        Ok(redis::Value::Int(n)) => n,
        _ => 0,
    };
    let start = dbsize();
    wait_until(Duration::from_secs(20), what, || dbsize() >= start + more);
}

/// The acknowledged keys with the time of their acknowledgement.
fn acked_keys(report: &Value) -> Vec<(f64, String)> {
    let path = report["acked_keys_file"].as_str().expect("acked_keys_file");
    std::fs::read_to_string(path)
        .expect("acked keys file")
        .lines()
        .filter_map(|l| {
            let (t, k) = l.split_once(' ')?;
            Some((t.parse().ok()?, k.to_string()))
        })
        .collect()
}

/// The `-failover-abort-...` lines of every sentinel's log: Sentinel gave up a failover (the
/// harness then asks again), e.g. the promoted replica was not seen as master within the
/// `failover-timeout` (6 s in the harness) on a busy machine.
fn sentinel_aborts(t: &Topology) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(t.dir.path())
        .into_iter()
        .flatten()
        .flatten()
    {
        if entry.file_name().to_string_lossy().starts_with("sentinel-") {
            let log =
                std::fs::read_to_string(entry.path().join("sentinel.log")).unwrap_or_default();
            out.extend(
                log.lines()
                    .filter(|l| l.contains("-failover-abort"))
                    .map(str::to_string),
            );
        }
    }
    out
}

/// One line per figure, for `--nocapture` and the docs.
fn print_report(what: &str, r: &Value, lost: usize, window: (f64, f64)) {
    let (fault_at, routed_at) = window;
    eprintln!(
        "redis-py {} ({} pool) across {what}: ops {}; errors {} {}; redis-py's silent retries {}; WATCH retries {}; \
         longest gap {} s ({}, from {:.2} to {:.2} s after the fault; routed after {:.2} s); \
         gaps by kind {}; acked keys {}, lost {lost}; INCR acked {} final {} (jumps {}, \
         repeats {}); MULTI acked {} final {}; WATCH commits {} final {}; queue {}; pubsub {}; \
         3 MiB values {}; stuck threads {}",
        r["redis_py_version"],
        r["pool"],
        r["ops"],
        r["error_count"],
        r["errors"],
        r["silent_retries"],
        r["watch_retries"],
        r["longest_gap_s"],
        r["longest_gap_kind"],
        r["longest_gap_unix"][0].as_f64().unwrap_or(0.0) - fault_at,
        r["longest_gap_unix"][1].as_f64().unwrap_or(0.0) - fault_at,
        routed_at - fault_at,
        r["longest_gap_by_kind_s"],
        r["acked_keys"],
        r["incr"]["acked"],
        r["incr"]["final"],
        r["incr"]["jumps"],
        r["incr"]["repeats"],
        r["multi"]["acked"],
        r["multi"]["final"],
        r["cas"]["commits"],
        r["cas"]["final"],
        r["queue"],
        r["pubsub"],
        r["big"],
        r["stuck_threads"],
    );
}

/// Every error the application saw happened between `from` and `to` (unix seconds).
fn errors_only_between(r: &Value, from: f64, to: f64) {
    for e in r["error_times"].as_array().expect("error_times") {
        let at = e[0].as_f64().unwrap_or(0.0);
        assert!(
            at >= from && at <= to,
            "an error outside the failover window ({:.2} s after the fault; the window ends \
             {:.2} s after it): {e}",
            at - from,
            to - from
        );
    }
}

/// Checks every run must pass, whatever the fault.
fn common_checks(r: &Value, routed_at: f64) {
    assert_eq!(r["stuck_threads"], serde_json::json!([]), "threads stuck");
    assert!(
        r["final_error"].is_null(),
        "final reads: {}",
        r["final_error"]
    );
    assert_eq!(
        r["big"]["mismatches"], 0,
        "a 3 MiB value came back different"
    );
    assert!(r["big"]["ops"].as_u64().unwrap_or(0) > 0, "no 3 MiB value");
    // Every kind of work carried on after the proxy routed to the new master (the pub/sub
    // subscription was re-established, the blocked BLPOP came back, the pool reconnected).
    let last = r["last_ok_unix_by_kind"].as_object().expect("last_ok");
    for kind in [
        "set", "pipeline", "multi", "watch", "incr", "rpush", "blpop", "publish", "pubsub", "big",
    ] {
        let t = last.get(kind).and_then(Value::as_f64).unwrap_or(0.0);
        assert!(
            t > routed_at,
            "no successful {kind} after the proxy routed to the new master"
        );
    }
    // A BLPOP can pop only once what was pushed once.
    assert_eq!(r["queue"]["popped_twice"], 0, "an item popped twice");
}

#[test]
fn redis_py_across_sentinel_failover() {
    if !redis_py_available() {
        return;
    }
    let Some((t, proxy)) = ready_lab(|| Topology::start(1000), ProxyOpts::default()) else {
        return;
    };
    let w = Workload::start(proxy.port, proxy.dir.path());
    w.wait_ready();
    wait_keys(
        t.nodes[0].port,
        BEFORE_KEYS,
        "the workload writes to the master",
    );
    let fault_at = now_unix();
    let new = t.failover();
    proxy.wait_routes_to(&format!("127.0.0.1:{new}"));
    let routed_at = now_unix();
    let r = w.finish_after_progress_on(new);

    let on_new = keys_on(
        format!("127.0.0.1:{new}").parse().expect("addr"),
        r["key_prefix"].as_str().expect("prefix"),
    );
    let acked = acked_keys(&r);
    let lost: Vec<&String> = acked
        .iter()
        .map(|(_, k)| k)
        .filter(|k| !on_new.contains(*k))
        .collect();
    print_report("SENTINEL FAILOVER", &r, lost.len(), (fault_at, routed_at));
    common_checks(&r, routed_at);
    assert!(acked.len() > 1000, "the workload barely ran");
    assert!(
        acked.iter().any(|(t, _)| *t > routed_at),
        "no write acknowledged by the new master"
    );
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost across SENTINEL FAILOVER, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    // redis-py (6 and later) re-sends the command a fence cut: the application sees no error.
    // Without retries (redis-py before 6 by default) only the commands in flight at the
    // fence fail, with a ConnectionError, before the route switched.
    if r["default_retry"]["retries"].as_u64().unwrap_or(0) > 0 {
        assert_eq!(r["error_count"], 0, "errors: {}", r["errors"]);
    } else {
        errors_only_between(&r, fault_at, routed_at + 1.0);
        let types: Vec<&String> = r["errors"]
            .as_object()
            .map(|m| m.keys().collect())
            .unwrap_or_default();
        assert!(
            types.iter().all(|t| *t == "ConnectionError"),
            "errors other than ConnectionError: {}",
            r["errors"]
        );
    }
    // Counters: no acknowledged increment lost; one applied twice at most per command
    // redis-py re-sent (an INCR the old master executed and replicated before the fence
    // cut its reply).
    let resent: u64 = r["silent_retries"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    for (what, acked, fin) in [
        ("INCR", &r["incr"]["acked"], &r["incr"]["final"]),
        (
            "MULTI/EXEC INCR",
            &r["multi"]["acked"],
            &r["multi"]["final"],
        ),
        ("WATCH/MULTI/EXEC", &r["cas"]["commits"], &r["cas"]["final"]),
    ] {
        let (acked, fin) = (acked.as_u64().unwrap_or(0), fin.as_u64().unwrap_or(0));
        assert!(
            fin >= acked,
            "{what}: {acked} acknowledged, {fin} on the new master"
        );
        assert!(
            fin - acked <= resent,
            "{what}: {} more than acknowledged, with {resent} commands re-sent",
            fin - acked
        );
    }
    // The proxy fences when the promotion starts and holds clients until the new master is
    // verified. If Sentinel gave that failover up (after its failover-timeout, 6 s here),
    // clients were held that long before the old master was verified again.
    let aborts = sentinel_aborts(&t);
    let bound = if aborts.is_empty() {
        5.0
    } else {
        eprintln!("Sentinel aborted a failover: {aborts:?}");
        6.0 + 2.5
    };
    let gap = r["longest_gap_s"].as_f64().expect("longest gap");
    assert!(
        gap < bound,
        "a thread went {gap} s without a successful operation"
    );
}

#[test]
fn redis_py_across_kill_9_of_the_master() {
    if !redis_py_available() {
        return;
    }
    let down_after_ms = 1000;
    let Some((mut t, proxy)) = ready_lab(|| Topology::start(down_after_ms), ProxyOpts::default())
    else {
        return;
    };
    let old = t.nodes[0].port;
    let w = Workload::start(proxy.port, proxy.dir.path());
    w.wait_ready();
    wait_keys(
        t.nodes[0].port,
        BEFORE_KEYS,
        "the workload writes to the master",
    );
    let fault_at = now_unix();
    t.nodes[0].kill();
    let new = t.wait_new_master(old);
    proxy.wait_routes_to(&format!("127.0.0.1:{new}"));
    let routed_at = now_unix();
    let r = w.finish_after_progress_on(new);

    let on_new: HashSet<String> = keys_on(
        format!("127.0.0.1:{new}").parse().expect("addr"),
        r["key_prefix"].as_str().expect("prefix"),
    );
    let acked = acked_keys(&r);
    let lost_before: usize = acked
        .iter()
        .filter(|(t, k)| *t <= fault_at && !on_new.contains(k))
        .count();
    let lost_after: Vec<&String> = acked
        .iter()
        .filter(|(t, k)| *t > routed_at && !on_new.contains(k))
        .map(|(_, k)| k)
        .collect();
    print_report(
        "kill -9 of the master",
        &r,
        lost_before + lost_after.len(),
        (fault_at, routed_at),
    );
    eprintln!(
        "acknowledged before the kill and missing on the new master (asynchronous replication): \
         {lost_before}"
    );
    common_checks(&r, routed_at);
    assert!(acked.len() > 1000, "the workload barely ran");
    assert!(
        lost_after.is_empty(),
        "{} writes acknowledged after the proxy routed to the new master are missing on it, \
         e.g. {:?}",
        lost_after.len(),
        &lost_after[..lost_after.len().min(5)]
    );
    // Errors, if redis-py surfaces any, only while there was no master to reach.
    errors_only_between(&r, fault_at, routed_at + 1.0);
    // The longest time without a successful operation: the failover itself (down-after,
    // election, verification) plus redis-py's backoff (at most 1 s between retries) and a
    // margin for a busy machine.
    let failover_s = routed_at - fault_at;
    let gap = r["longest_gap_s"].as_f64().expect("longest gap");
    assert!(
        gap < failover_s + 2.5,
        "a thread went {gap} s without a successful operation; the failover took {failover_s:.2} s"
    );
    assert!(
        failover_s < down_after_ms as f64 / 1000.0 + 10.0,
        "the failover took {failover_s:.2} s"
    );
}

/// What redis-py's default retry does with a command whose reply was cut (the server executed
/// it, the connection closed before the reply arrived; a fence can do that to a command in
/// flight): it sends it again on a new connection without telling the application. The
/// script's relay cuts exactly there, in front of a plain redis-server.
#[test]
fn redis_py_default_retry_resends_a_command_whose_reply_was_cut() {
    if !redis_py_available() || !require("redis-server") {
        return;
    }
    let dir = tempdir();
    let node = Node::start(dir.path(), None);
    let out = Command::new("python3")
        .arg(SCRIPT)
        .arg("--demo-retry")
        .arg(node.port.to_string())
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "demo failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).expect("demo JSON");
    eprintln!("redis-py retry demo: {r}");
    assert_eq!(r["cuts"], 3, "the relay cut three replies");
    if r["default_retries"].as_u64().unwrap_or(0) > 0 {
        // redis-py 6 and later: one INCR call, applied twice; the application got 2 and no
        // error.
        assert_eq!(r["default_retry_incr_returned"], 2);
        assert_eq!(r["default_retry_incr_server_value"], 2);
        // SET twice is SET once.
        assert_eq!(r["default_retry_set_returned"], true);
    } else {
        // redis-py before 6: no retry by default, the application sees the errors.
        assert!(r["default_retry_incr_error"].is_string(), "{r}");
        assert_eq!(r["default_retry_incr_server_value"], 1);
        assert!(r["default_retry_set_error"].is_string(), "{r}");
    }
    assert_eq!(r["default_retry_set_server_value"], "v");
    // Without retries the application sees the error, and the INCR was applied all the same.
    assert!(r["no_retry_incr_error"]
        .as_str()
        .is_some_and(|e| e.starts_with("ConnectionError")));
    assert_eq!(r["no_retry_incr_server_value"], 1);
}
