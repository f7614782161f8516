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

/// The master restarts (no persistence) faster than the sentinels' down-after: they never fail
/// over. The proxy holds clients while it is down, sees another process at the address (its
/// run_id changed, its replication offset went backwards), and treats it as a new master: one
/// fence (`master_restarted`), a new epoch, same address.
#[test]
fn master_rebooting_fast_is_verified_again_as_a_new_master() {
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
    assert_eq!(fences(&proxy), 1.0, "one fence for the restart");
    assert_eq!(
        metric_or_zero(
            &proxy,
            "redis_failover_proxy_fences_total",
            &[("reason", "master_restarted")]
        ),
        1.0
    );
    assert_eq!(
        metric_or_zero(&proxy, "redis_failover_proxy_master_switches_total", &[]),
        2.0
    );
    assert_eq!(
        proxy.master(),
        Some((2, format!("127.0.0.1:{master}"))),
        "not verified again as a new epoch"
    );
    assert!(proxy.log().contains("the master restarted"));
    for s in &t.sentinels {
        assert_eq!(s.master_port(), Some(master), "a sentinel failed over");
    }
    // The reboot lost the data (nothing persisted): what Redis does, shown, not fixed.
    let mut c = Client::connect(proxy.port);
    let kept = c.cmd(&["GET", "before-reboot"]).unwrap();
    eprintln!(
        "fast reboot: master down {down:?}; 5 held clients served {:?} after the restart; \
         {} probes after the kill all reached the master; one fence (master_restarted), epoch 2; key before reboot: {kept}",
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
    let to_fence = proxy.wait_metric(
        Duration::from_secs(5),
        "fence with reason role_replica",
        "redis_failover_proxy_fences_total",
        &[("reason", "role_replica")],
        |v| v == 1.0,
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

/// Client threads doing `SET`/`GET` through the proxy on one connection each, reconnecting after
/// an error; every error is recorded.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<(u64, Vec<String>)>>,
}

impl Load {
    fn start(proxy_port: u16, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..clients)
            .map(|c| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let (mut ops, mut errors) = (0u64, Vec::new());
                    let mut conn: Option<Client> = None;
                    while !stop.load(Ordering::Relaxed) {
                        let client = conn.get_or_insert_with(|| {
                            let c = Client::connect(proxy_port);
                            c.stream
                                .set_read_timeout(Some(Duration::from_secs(5)))
                                .expect("timeout");
                            c
                        });
                        let (key, value) = (format!("load:{c}"), ops.to_string());
                        let r = client.cmd(&["SET", &key, &value]).and_then(|set| {
                            let get = client.cmd(&["GET", &key])?;
                            Ok((set, get))
                        });
                        match r {
                            Ok((set, get)) if set == "+OK" && get == value => ops += 1,
                            other => {
                                errors.push(format!("{other:?}"));
                                conn = None;
                            }
                        }
                    }
                    (ops, errors)
                })
            })
            .collect();
        Load { stop, threads }
    }

    /// Stops the clients: (operations completed, errors).
    fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = (0, Vec::new());
        for t in self.threads {
            let (ops, errors) = t.join().expect("load thread");
            total.0 += ops;
            total.1.extend(errors);
        }
        total
    }
}

fn sentinel_seen(proxy: &Proxy, i: usize) -> bool {
    let s = &proxy.status()["routes"][0]["sentinels"][i];
    s["reachable"] == true && s["subscribed"] == true
}

#[test]
fn sentinels_restarting_under_load_do_not_fence() {
    let Some((mut t, proxy)) = ready_lab(|| Topology::start(5000), ProxyOpts::default()) else {
        return;
    };
    let load = Load::start(proxy.port, 4);
    proxy.wait_metric(
        Duration::from_secs(10),
        "load running",
        "redis_failover_proxy_bytes_total",
        &[("direction", "master_to_client")],
        |v| v > 1000.0,
    );
    let n = t.sentinels.len();
    let mut one_by_one = Vec::new();
    for i in 0..n {
        t.sentinels[i].restart();
        let restarted = Instant::now();
        wait_until(
            Duration::from_secs(20),
            "the proxy polls and subscribes to the restarted sentinel",
            || sentinel_seen(&proxy, i),
        );
        one_by_one.push(restarted.elapsed());
    }
    let killed = Instant::now();
    for s in &mut t.sentinels {
        s.kill();
    }
    proxy.wait_metric(
        Duration::from_secs(10),
        "the proxy sees no sentinel",
        "redis_failover_proxy_sentinels_reachable",
        &[],
        |v| v == 0.0,
    );
    for s in &mut t.sentinels {
        s.restart();
    }
    let down = killed.elapsed();
    let back = wait_until(
        Duration::from_secs(30),
        "the proxy polls and subscribes to every sentinel again",
        || {
            proxy.metric("redis_failover_proxy_sentinels_reachable", &[]) == n as f64
                && (0..n).all(|i| sentinel_seen(&proxy, i))
        },
    );
    let (ops, errors) = load.stop();
    assert!(errors.is_empty(), "client errors: {errors:?}");
    assert!(ops > 0);
    assert_eq!(fences(&proxy), 0.0, "fenced while the master was unchanged");
    assert_eq!(proxy.master().map(|m| m.0), Some(1));
    assert_eq!(
        proxy.metric("redis_failover_proxy_master_switches_total", &[]),
        1.0
    );
    for s in &t.sentinels {
        assert_eq!(s.master_port(), Some(t.nodes[0].port));
    }
    eprintln!(
        "sentinel restarts under load: {ops} SET+GET pairs, 0 errors, 0 fences; one by one, \
         polled and subscribed again after {one_by_one:?}; all at once: down {down:?}, all \
         polled and subscribed again {back:?} after the restart"
    );
}

/// The storm and the churn each load both cores; side by side they would only measure the
/// contention.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Open file descriptors of `pid`.
/// The soft `ulimit -n` of this process (the proxy inherits it).
fn nofile_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        .unwrap_or(0)
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn clients_open(proxy: &Proxy) -> u64 {
    proxy.status()["routes"][0]["clients_open"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

fn idle(proxy: &Proxy) -> bool {
    clients_open(proxy) == 0 && proxy.metric("redis_failover_proxy_connections_active", &[]) == 0.0
}

mod storm {
    //! Many clients at once, on a tokio runtime in the test.
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    const TIMEOUT: Duration = Duration::from_secs(30);

    /// What one client of a storm got.
    pub enum Outcome {
        /// Served by the node on this port, after this long; the connection is kept open.
        Served(u16, Duration, TcpStream),
        /// Closed by the proxy (EOF or reset) before a reply.
        Refused,
        /// No reply and no close within the timeout: a hang.
        Hung,
    }

    /// Connects, sends `PING` and `INFO server`, and reads until the node's `tcp_port`.
    pub async fn client(port: u16) -> Outcome {
        let start = Instant::now();
        let work = async {
            // 5,000 simultaneous connects can overflow the kernel's queues on this side;
            // a refused connect is the test's kernel, not the proxy, so try it again.
            let mut s = None;
            for _ in 0..3 {
                if let Ok(c) = TcpStream::connect(("127.0.0.1", port)).await {
                    s = Some(c);
                    break;
                }
            }
            let mut s = s?;
            s.write_all(b"*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
                .await
                .ok()?;
            let mut buf = Vec::with_capacity(4096);
            loop {
                let text = String::from_utf8_lossy(&buf);
                if let Some(rest) = text.strip_prefix("+PONG\r\n") {
                    if let Some(p) = rest
                        .split("tcp_port:")
                        .nth(1)
                        .and_then(|r| r.split_once("\r\n"))
                    {
                        return p.0.trim().parse().ok().map(|p| (p, s));
                    }
                }
                if s.read_buf(&mut buf).await.ok()? == 0 {
                    return None;
                }
            }
        };
        match tokio::time::timeout(TIMEOUT, work).await {
            Ok(Some((p, s))) => Outcome::Served(p, start.elapsed(), s),
            Ok(None) => Outcome::Refused,
            Err(_) => Outcome::Hung,
        }
    }

    /// `n` clients at once: (served sessions with their node ports and waits, refused, hung).
    pub async fn run(port: u16, n: usize) -> (Vec<(u16, Duration, TcpStream)>, usize, usize) {
        let tasks: Vec<_> = (0..n).map(|_| tokio::spawn(client(port))).collect();
        let (mut served, mut refused, mut hung) = (Vec::new(), 0, 0);
        for t in tasks {
            match t.await.expect("client task") {
                Outcome::Served(p, d, s) => served.push((p, d, s)),
                Outcome::Refused => refused += 1,
                Outcome::Hung => hung += 1,
            }
        }
        (served, refused, hung)
    }

    /// Waits until every stream is closed by the proxy; returns when the last one was, or
    /// `None` if one stayed open past the timeout.
    pub async fn all_closed(streams: Vec<TcpStream>) -> Option<Instant> {
        let tasks: Vec<_> = streams
            .into_iter()
            .map(|mut s| {
                tokio::spawn(async move {
                    let mut b = [0u8; 64];
                    let closed = async {
                        loop {
                            match s.read(&mut b).await {
                                Ok(0) | Err(_) => return Instant::now(),
                                Ok(_) => {}
                            }
                        }
                    };
                    tokio::time::timeout(TIMEOUT, closed).await.ok()
                })
            })
            .collect();
        let mut last = None;
        for t in tasks {
            let at = t.await.expect("close task")?;
            last = Some(last.map_or(at, |l: Instant| l.max(at)));
        }
        last
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn reconnect_storm_after_a_fence_is_served_or_refused_at_the_limit() {
    let n = env_usize("RFP_STORM_CLIENTS", 5000);
    let limit = nofile_limit();
    // This process holds n client sockets; the proxy 2n plus its own.
    if limit < (2 * n + 1000) as u64 {
        skip(&format!(
            "ulimit -n is {limit}, the storm of {n} clients needs {}",
            2 * n + 1000
        ));
        return;
    }
    let _heavy = heavy();
    let opts = ProxyOpts {
        max_connections: n + 1000,
        hold_timeout: "30s",
        ..Default::default()
    };
    let Some((t, proxy)) = ready_lab(|| Topology::start(5000), opts) else {
        return;
    };
    let low_limit = n * 3 / 5;
    let limited = Proxy::start_with(
        &t.sentinel_ports(),
        ProxyOpts {
            max_connections: low_limit,
            hold_timeout: "30s",
            ..Default::default()
        },
    );
    limited.wait_ready();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pid = proxy.pid();

    // Warm up (first sessions allocate what every later one reuses), then the baseline.
    let (warm, _, _) = rt.block_on(storm::run(proxy.port, 100));
    drop(warm);
    wait_until(Duration::from_secs(10), "warm-up sessions closed", || {
        idle(&proxy)
    });
    let baseline = rss_kib(pid);

    let old_master = t.nodes[0].port;
    let started = Instant::now();
    let (sessions, refused, hung) = rt.block_on(storm::run(proxy.port, n));
    let opened = started.elapsed();
    assert_eq!(
        (sessions.len(), refused, hung),
        (n, 0, 0),
        "opening {n} sessions"
    );
    assert!(sessions.iter().all(|(p, _, _)| *p == old_master));
    wait_until(Duration::from_secs(10), "all sessions counted", || {
        proxy.status()["routes"][0]["master"]["sessions"].as_u64() == Some(n as u64)
    });
    let mut peak = rss_kib(pid);

    // The fence: every session of the old master must be closed.
    let streams: Vec<_> = sessions.into_iter().map(|(_, _, s)| s).collect();
    let closing = rt.spawn(storm::all_closed(streams));
    let failover_sent = Instant::now();
    let new_master = t.failover();
    let last_closed = rt
        .block_on(closing)
        .unwrap()
        .expect("an old session stayed open after the fence");
    let to_last_close = last_closed.saturating_duration_since(failover_sent);
    proxy.wait_metric(
        Duration::from_secs(10),
        "fence recorded",
        "redis_failover_proxy_fence_duration_seconds_count",
        &[],
        |v| v >= 1.0,
    );
    let fence_ms = proxy.metric("redis_failover_proxy_fence_duration_seconds_sum", &[]) * 1000.0;
    let fenced = proxy.metric(
        "redis_failover_proxy_sessions_closed_total",
        &[("reason", "master_switch")],
    );
    assert!(fenced >= n as f64, "{fenced} sessions fenced, expected {n}");
    wait_until(Duration::from_secs(10), "old sessions gone", || {
        idle(&proxy)
    });

    // Everyone reconnects at once; the proxy may still be holding for the new master.
    let storm_start = Instant::now();
    let (served, refused, hung) = rt.block_on(storm::run(proxy.port, n));
    let storm_took = storm_start.elapsed();
    peak = peak.max(rss_kib(pid));
    assert_eq!(hung, 0, "clients neither served nor closed");
    assert_eq!(refused, 0, "clients refused under the limit");
    assert_eq!(served.len(), n);
    assert!(
        served.iter().all(|(p, _, _)| *p == new_master),
        "a client reached the old master"
    );
    assert_eq!(
        proxy.metric("redis_failover_proxy_connections_rejected_total", &[]),
        0.0
    );
    let mut waits: Vec<Duration> = served.iter().map(|(_, d, _)| *d).collect();
    waits.sort();
    drop(served);
    wait_until(Duration::from_secs(10), "storm sessions closed", || {
        idle(&proxy)
    });
    let slack = (baseline / 2).max(20 * 1024);
    let returned = std::panic::catch_unwind(|| {
        wait_until(
            Duration::from_secs(10),
            "RSS back near the baseline",
            || rss_kib(pid) <= baseline + slack,
        )
    })
    .is_ok();
    let after = rss_kib(pid);
    eprintln!(
        "storm: {n} sessions opened in {opened:?}; failover: last old session closed \
         {to_last_close:?} after SENTINEL FAILOVER, fence {fence_ms:.1} ms evidence -> last \
         close, {fenced} sessions fenced; reconnect of {n} at once: all served by the new master \
         within {storm_took:?} (p50 {:?}, p99 {:?}, max {:?}); proxy RSS baseline {} KiB, peak \
         {} KiB, after {} KiB (slack {} KiB)",
        percentile(&waits, 0.5),
        percentile(&waits, 0.99),
        percentile(&waits, 1.0),
        baseline,
        peak,
        after,
        slack
    );
    assert!(
        returned,
        "proxy RSS {after} KiB did not return near its baseline {baseline} KiB"
    );

    // The same storm against a proxy limited to fewer clients: the excess is closed at once.
    wait_until(Duration::from_secs(10), "limited proxy follows", || {
        limited
            .master()
            .is_some_and(|(_, a)| a == format!("127.0.0.1:{new_master}"))
    });
    let storm_start = Instant::now();
    let (served, refused, hung) = rt.block_on(storm::run(limited.port, n));
    let storm_took = storm_start.elapsed();
    let rejected = limited.metric(
        "redis_failover_proxy_connections_rejected_total",
        &[("reason", "limit")],
    );
    assert_eq!(hung, 0, "clients neither served nor closed at the limit");
    assert_eq!(served.len(), low_limit, "served at a limit of {low_limit}");
    assert_eq!(refused, n - low_limit);
    assert_eq!(rejected, (n - low_limit) as f64);
    assert!(served.iter().all(|(p, _, _)| *p == new_master));
    drop(served);
    wait_until(Duration::from_secs(10), "limited proxy idle", || {
        idle(&limited)
    });
    eprintln!(
        "storm at max_connections {low_limit}: {} served, {refused} closed at once and counted \
         rejected{{reason=\"limit\"}} = {rejected}, none hung, in {storm_took:?}",
        low_limit
    );
}

#[test]
fn connect_close_churn_leaves_nothing_behind() {
    // 100,000 cycles take about two minutes in a debug build on 2 cores; RFP_CHURN_CYCLES=100000
    // runs the full count.
    let cycles = env_usize("RFP_CHURN_CYCLES", 20_000);
    let threads = env_usize("RFP_CHURN_THREADS", 4);
    let _heavy = heavy();
    let Some((_t, proxy)) = ready_lab(Topology::single, ProxyOpts::default()) else {
        return;
    };
    let big = "v".repeat(64 * 1024);
    assert_eq!(
        Client::connect(proxy.port)
            .cmd(&["SET", "big", &big])
            .unwrap(),
        "+OK"
    );
    wait_until(Duration::from_secs(10), "setup session closed", || {
        idle(&proxy)
    });
    let pid = proxy.pid();
    let sockets_before = fd_count_of(pid, "socket:");
    let accepted_before = proxy.metric("redis_failover_proxy_connections_accepted_total", &[]);
    let expected_reply = big.len() + format!("${}\r\n\r\n", big.len()).len();

    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|w| {
            let port = proxy.port;
            std::thread::spawn(move || {
                let mut failures: Vec<String> = Vec::new();
                for i in (w..cycles).step_by(threads) {
                    if let Err(e) = cycle(port, i % 4, expected_reply) {
                        failures.push(format!("cycle {i} (mode {}): {e}", i % 4));
                    }
                }
                failures
            })
        })
        .collect();
    let failures: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("churn thread"))
        .collect();
    let took = started.elapsed();
    assert!(
        failures.is_empty(),
        "{} cycles failed, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let drained = wait_until(
        Duration::from_secs(20),
        "every session closed and its descriptors released",
        || idle(&proxy) && fd_count_of(pid, "socket:") <= sockets_before,
    );
    // Large replies are spliced through pipes that each session thread keeps for reuse: at
    // most 8 per thread (2 descriptors each), however many sessions came and went.
    let pipes = fd_count_of(pid, "pipe:");
    assert!(
        pipes <= 2 * 8 * 4,
        "{pipes} pipe descriptors left after the churn"
    );
    // A client that resets before the proxy accepts it may surface as an accept error
    // (ECONNABORTED), or the kernel may drop it from the accept queue unseen (seen once in
    // 20,000 cycles); every cycle that sent a command was served, checked above.
    let accepted =
        proxy.metric("redis_failover_proxy_connections_accepted_total", &[]) - accepted_before;
    let accept_errors = proxy.metric("redis_failover_proxy_accept_errors_total", &[]);
    let seen = accepted + accept_errors;
    assert!(
        seen <= cycles as f64 && seen >= cycles as f64 * 0.999,
        "accepted {accepted}, accept errors {accept_errors}, cycles {cycles}"
    );
    assert_eq!(
        proxy.metric("redis_failover_proxy_connections_rejected_total", &[]),
        0.0
    );
    eprintln!(
        "churn: {cycles} connect/close cycles ({threads} threads; close at once, reset, PING, \
         half-close after GET of 64 KiB) in {took:?} = {:.0} cycles/s; proxy sockets \
         {sockets_before} before, {} after, {pipes} pipe fds; clients_open 0, \
         connections_active 0 {drained:?} after the last cycle",
        cycles as f64 / took.as_secs_f64(),
        fd_count_of(pid, "socket:")
    );
}

/// One connect/close cycle: 0 closes at once, 1 resets, 2 PINGs, 3 half-closes after a GET and
/// must still read the whole reply.
fn cycle(port: u16, mode: usize, expected_reply: usize) -> std::io::Result<()> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    match mode {
        0 => {}
        1 => socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO))?,
        2 => {
            s.write_all(b"*1\r\n$4\r\nPING\r\n")?;
            let mut reply = [0u8; 7];
            s.read_exact(&mut reply)?;
            if &reply != b"+PONG\r\n" {
                return Err(std::io::Error::other(format!("reply {reply:?}")));
            }
        }
        _ => {
            s.write_all(b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n")?;
            s.shutdown(std::net::Shutdown::Write)?;
            let mut reply = Vec::new();
            s.read_to_end(&mut reply)?;
            if reply.len() != expected_reply {
                return Err(std::io::Error::other(format!(
                    "half-closed client got {} of {expected_reply} bytes",
                    reply.len()
                )));
            }
        }
    }
    Ok(())
}
