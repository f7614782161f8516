//! The write-loss checker across failovers on loopback: a workload writes unique keys through
//! the proxy; afterwards, acknowledged writes missing from the final master are counted, and
//! MONITOR on the old master counts writes that reached it after the proxy fenced it (must
//! be 0). Partition scenarios are in faults_net.rs / partition.rs.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::workload::{keys_on, Workload};
use support::*;

/// SETs of `prefix*` keys a node executes, with the node's timestamps (MONITOR).
struct Monitor {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(f64, String)>>,
}

impl Monitor {
    fn start(port: u16, prefix: &str) -> Monitor {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("monitor connect");
        s.write_all(b"MONITOR\r\n").expect("MONITOR");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let needle = format!("\"SET\" \"{prefix}");
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut r = BufReader::new(s);
            let mut line = String::new();
            while !stop2.load(Ordering::Relaxed) {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) => break,
                    Ok(_) => {
                        if let Some(pos) = line.find(&needle) {
                            let ts: f64 = line
                                .trim_start_matches('+')
                                .split_whitespace()
                                .next()
                                .and_then(|t| t.parse().ok())
                                .unwrap_or(0.0);
                            let key = line[pos + 7..].split('"').next().unwrap_or("").to_string();
                            seen.push((ts, key));
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
            }
            seen
        });
        Monitor { stop, thread }
    }

    fn stop(self) -> Vec<(f64, String)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("monitor thread")
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Fault {
    SentinelFailover,
    KillMaster,
}

fn run(fault: Fault, min_replicas: bool) {
    let Some((mut t, proxy)) = ready_lab(|| Topology::start(1000), ProxyOpts::default()) else {
        return;
    };
    if min_replicas {
        for n in &t.nodes {
            redis_cmd(n.port, &["CONFIG", "SET", "min-replicas-to-write", "1"]).unwrap();
            redis_cmd(n.port, &["CONFIG", "SET", "min-replicas-max-lag", "2"]).unwrap();
        }
    }
    let old = t.nodes[0].port;
    let prefix = "wl";
    let monitor = Monitor::start(old, prefix);
    let addr: SocketAddr = format!("127.0.0.1:{}", proxy.port).parse().unwrap();
    let workload = Workload::start(addr, 4, prefix);
    proxy.wait_metric(
        Duration::from_secs(5),
        "writes flowing",
        "redis_failover_proxy_bytes_total",
        &[("direction", "client_to_master")],
        |v| v > 10_000.0,
    );
    let new = match fault {
        Fault::SentinelFailover => t.failover(),
        Fault::KillMaster => {
            t.nodes[0].kill();
            t.wait_new_master(old)
        }
    };
    proxy.wait_routes_to(&format!("127.0.0.1:{new}"));
    // Some writes on the new master, then stop.
    let acked_before = proxy.metric(
        "redis_failover_proxy_bytes_total",
        &[("direction", "master_to_client")],
    );
    proxy.wait_metric(
        Duration::from_secs(5),
        "writes flowing to the new master",
        "redis_failover_proxy_bytes_total",
        &[("direction", "master_to_client")],
        |v| v > acked_before + 1000.0,
    );
    let report = workload.stop();
    let seen_on_old = monitor.stop();
    let fence = proxy.status()["routes"][0]["last_fence"].clone();
    let fence_unix = fence["unix"].as_f64().expect("a fence happened");
    let fence_at = std::time::UNIX_EPOCH + Duration::from_secs_f64(fence_unix);
    // Writes executed on the old master after the fence but sent before it were already in
    // its socket buffer (in flight, not acknowledged); writes *sent* after the fence must
    // never reach it.
    let executed_late = seen_on_old
        .iter()
        .filter(|(ts, _)| *ts > fence_unix)
        .count();
    let on_old: std::collections::HashSet<String> =
        seen_on_old.into_iter().map(|(_, k)| k).collect();
    let after_fence = report.reached_after(&on_old, fence_at);
    let final_keys = keys_on(format!("127.0.0.1:{new}").parse().unwrap(), prefix);
    let lost = report.lost(&final_keys);
    eprintln!(
        "write loss [{}, min-replicas-to-write {}]: attempted {}, acked {}, acked-but-lost {}, \
         sent after the fence yet reached the old master {}, in flight at the fence {}, \
         longest gap without an ack {:?}, fence reason {}",
        if fault == Fault::KillMaster {
            "kill -9 master"
        } else {
            "SENTINEL FAILOVER"
        },
        if min_replicas { 1 } else { 0 },
        report.records.len(),
        report.acked(),
        lost.len(),
        after_fence,
        executed_late,
        report.longest_gap(),
        fence["reason"],
    );
    assert!(report.acked() > 100, "workload barely ran");
    assert_eq!(
        after_fence, 0,
        "writes sent after the fence reached the old master"
    );
    assert!(
        lost.len() <= report.acked() / 100,
        "more than 1% of acknowledged writes lost: {} of {}",
        lost.len(),
        report.acked()
    );
}

#[test]
fn sentinel_failover_loses_nothing_and_nothing_reaches_the_old_master_after_the_fence() {
    run(Fault::SentinelFailover, false);
}

#[test]
fn sentinel_failover_with_min_replicas_to_write() {
    run(Fault::SentinelFailover, true);
}

#[test]
fn kill_master_write_loss() {
    run(Fault::KillMaster, false);
}

#[test]
fn kill_master_write_loss_with_min_replicas_to_write() {
    run(Fault::KillMaster, true);
}
