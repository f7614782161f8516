//! Fault tests on loopback: a master that reboots fast (as a master, or as a replica the
//! sentinels still name), sentinels restarting under load, a 5,000-client reconnect storm after
//! a fence, and 100,000 connect/close cycles. Each prints the figures it measured.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::*;

fn metric_or_zero(proxy: &Proxy, name: &str, labels: &[(&str, &str)]) -> f64 {
    proxy.metric(name, labels)
}

fn fences(proxy: &Proxy) -> f64 {
    metric_or_zero(proxy, "redis_failover_proxy_fences_total", &[])
}

fn clients_held(proxy: &Proxy) -> u64 {
    proxy.status()["routes"][0]["clients_held"]
        .as_u64()
        .unwrap_or(0)
}

/// What a probe saw: (the port of the node reached, its role), or an error as a string so it
/// can cross threads.
type Probe = Result<(u16, String), String>;

/// One fresh connection through the proxy asking `INFO server replication`.
fn probe(proxy_port: u16, timeout: Duration) -> Probe {
    let mut s = TcpStream::connect(("127.0.0.1", proxy_port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.write_all(b"*3\r\n$4\r\nINFO\r\n$6\r\nserver\r\n$11\r\nreplication\r\n")
        .map_err(|e| e.to_string())?;
    let info = read_bulk(&mut s)?;
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    let port = field("tcp_port:")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("no tcp_port in {info:?}"))?;
    let role = field("role:").ok_or_else(|| format!("no role in {info:?}"))?;
    Ok((port, role))
}

/// Reads one RESP bulk string reply.
fn read_bulk(s: &mut TcpStream) -> Result<String, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            let header = String::from_utf8_lossy(&buf[..end]).into_owned();
            let Some(len) = header.strip_prefix('$') else {
                return Err(format!("not a bulk reply: {header}"));
            };
            let len: usize = len.parse().map_err(|_| format!("bad length {header}"))?;
            if buf.len() >= end + 2 + len + 2 {
                return Ok(String::from_utf8_lossy(&buf[end + 2..end + 2 + len]).into_owned());
            }
        }
        match s.read(&mut chunk) {
            Ok(0) => return Err("EOF".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// A client that connects now and reports (its reply, when the reply came).
fn probe_thread(proxy_port: u16) -> JoinHandle<(Probe, Instant)> {
    std::thread::spawn(move || {
        let r = probe(proxy_port, Duration::from_secs(20));
        (r, Instant::now())
    })
}

/// Probes through the proxy back to back until stopped: (start, result) of each.
struct Prober {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<(Instant, Probe)>>,
}

impl Prober {
    fn start(proxy_port: u16) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut out = Vec::new();
            while !s.load(Ordering::Relaxed) {
                let started = Instant::now();
                out.push((started, probe(proxy_port, Duration::from_secs(20))));
                // Pacing, not settling: about 100 probes a second is plenty.
                std::thread::sleep(Duration::from_millis(10));
            }
            out
        });
        Prober { stop, thread }
    }

    fn stop(self) -> Vec<(Instant, Probe)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("prober thread")
    }
}

#[test]
fn master_rebooting_fast_as_a_master_is_not_fenced() {
    let opts = ProxyOpts {
        hold_timeout: "20s",
        ..Default::default()
    };
    let Some((mut t, proxy)) = ready_lab(|| Topology::start(5000), opts) else {
        return;
    };
    let master = t.nodes[0].port;
    let mut c = Client::connect(proxy.port);
    assert_eq!(c.cmd(&["SET", "before-reboot", "1"]).unwrap(), "+OK");
    let prober = Prober::start(proxy.port);
    wait_until(Duration::from_secs(5), "prober served", || {
        metric_or_zero(
            &proxy,
            "redis_failover_proxy_connections_accepted_total",
            &[],
        ) >= 5.0
    });

    t.nodes[0].kill();
    let killed = Instant::now();
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "session to the dead master kept"
    );
    // Clients arriving while the master is down are held (connect refused, retried).
    let arrivals: Vec<_> = (0..5).map(|_| probe_thread(proxy.port)).collect();
    wait_until(Duration::from_secs(5), "the new clients are held", || {
        clients_held(&proxy) >= 5
    });
    t.nodes[0].restart(None);
    let restarted = Instant::now();
    let down = restarted - killed;

    let mut waits = Vec::new();
    for a in arrivals {
        let (r, at) = a.join().expect("client thread");
        let (port, role) = r.expect("held client served");
        assert_eq!((port, role.as_str()), (master, "master"));
        waits.push(at.saturating_duration_since(restarted));
    }
    // Longer than down-after-milliseconds: the sentinels had every chance to act, and the proxy
    // to flap; measured, not waited on.
    std::thread::sleep(Duration::from_secs(6));
    let probes = prober.stop();

    let after_kill: Vec<_> = probes.iter().filter(|(s, _)| *s >= killed).collect();
    let bad: Vec<_> = after_kill
        .iter()
        .filter(|(_, r)| !matches!(r, Ok((p, role)) if *p == master && role == "master"))
        .collect();
    assert!(bad.is_empty(), "probes after the kill failed: {bad:?}");
    assert_eq!(fences(&proxy), 0.0, "a fast reboot is not a failover");
    assert_eq!(
        metric_or_zero(&proxy, "redis_failover_proxy_master_switches_total", &[]),
        1.0
    );
    assert_eq!(
        proxy.master(),
        Some((1, format!("127.0.0.1:{master}"))),
        "epoch changed"
    );
    for s in &t.sentinels {
        assert_eq!(s.master_port(), Some(master), "a sentinel failed over");
    }
    // The reboot lost the data (nothing persisted): what Redis does, shown, not fixed.
    let mut c = Client::connect(proxy.port);
    let kept = c.cmd(&["GET", "before-reboot"]).unwrap();
    eprintln!(
        "fast reboot: master down {down:?}; 5 held clients served {:?} after the restart; \
         {} probes after the kill all reached the master; fences 0, epoch 1; key before reboot: {kept}",
        waits.iter().max().unwrap(),
        after_kill.len(),
    );
}

#[test]
fn master_rebooting_as_a_replica_is_fenced_until_role_agrees() {
    let opts = ProxyOpts {
        hold_timeout: "30s",
        ..Default::default()
    };
    let Some((mut t, proxy)) = ready_lab(|| Topology::start(5000), opts) else {
        return;
    };
    let master = t.nodes[0].port;
    // Another node, not in the group, for the rebooted master to replicate from.
    let other = Node::start(t.dir.path(), None);
    let mut c = Client::connect(proxy.port);
    assert_eq!(c.cmd(&["PING"]).unwrap(), "+PONG");

    t.nodes[0].kill();
    assert!(c.closed_within(Duration::from_secs(5)));
    let during_kill: Vec<_> = (0..5).map(|_| probe_thread(proxy.port)).collect();
    wait_until(Duration::from_secs(5), "the new clients are held", || {
        clients_held(&proxy) >= 5
    });
    // Back at once, but as a replica, while every sentinel still names it as the master.
    t.nodes[0].restart(Some(other.port));
    let restarted = Instant::now();
    let to_fence = wait_until(
        Duration::from_secs(5),
        "fence with reason role_replica",
        || {
            proxy.metric(
                "redis_failover_proxy_fences_total",
                &[("reason", "role_replica")],
            ) == 1.0
        },
    );
    // While ROLE disagrees with the sentinels: not ready, no master, new clients held.
    let during_replica: Vec<_> = (0..5).map(|_| probe_thread(proxy.port)).collect();
    wait_until(Duration::from_secs(5), "10 clients held", || {
        clients_held(&proxy) >= 10
    });
    let (code, body) = proxy.http("/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(proxy.status()["routes"][0]["master"].is_null());
    for s in &t.sentinels {
        assert_eq!(s.master_port(), Some(master), "sentinels still name it");
    }
    assert_eq!(role_of(master), "slave");

    // Make ROLE agree with the sentinels again.
    redis_cmd(master, &["REPLICAOF", "NO", "ONE"]).unwrap();
    let promoted = Instant::now();
    let to_route = wait_until(Duration::from_secs(10), "routing again", || {
        proxy.master().is_some_and(|(e, _)| e == 2)
    });
    let mut waits = Vec::new();
    for h in during_kill.into_iter().chain(during_replica) {
        let (r, at) = h.join().expect("client thread");
        let (port, role) = r.expect("held client served");
        assert_eq!(
            (port, role.as_str()),
            (master, "master"),
            "a held client reached the node while ROLE said replica"
        );
        assert!(at >= promoted, "a client was served before ROLE agreed");
        waits.push(at - promoted);
    }
    assert_eq!(proxy.master(), Some((2, format!("127.0.0.1:{master}"))));
    // No flapping: one fence, two installs, a second of steady routing.
    let steady = Instant::now();
    while steady.elapsed() < Duration::from_secs(1) {
        assert_eq!(
            probe(proxy.port, Duration::from_secs(5)),
            Ok((master, "master".into()))
        );
    }
    assert_eq!(fences(&proxy), 1.0);
    assert_eq!(
        metric_or_zero(&proxy, "redis_failover_proxy_master_switches_total", &[]),
        2.0
    );
    eprintln!(
        "reboot as a replica: fenced (role_replica) {to_fence:?} after the restart \
         ({:?} since), routed again {to_route:?} after REPLICAOF NO ONE; 10 held clients served \
         within {:?} of it, none reached the replica",
        restarted.elapsed(),
        waits.iter().max().unwrap()
    );
}
