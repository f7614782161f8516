//! Hostile admin clients: a slow loris, an idle keep-alive connection, half-sent requests at
//! shutdown, thousands of idle connections under a low descriptor limit, a `/metrics` flood
//! during a failover. The admin server's bounds and its own niced thread (src/admin.rs) must
//! close the slow and idle ones, cap the many, and keep all of them away from the route and
//! the watchers.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis_failover_proxy::admin::{HEADER_READ_TIMEOUT, MAX_CONNECTIONS};
use support::*;

const REJECTED: &str = "redis_failover_proxy_admin_connections_rejected_total";

/// How late past a bound the proxy may act on a loaded 2-core machine.
const MARGIN: Duration = Duration::from_secs(2);

fn admin_addr(proxy: &Proxy) -> SocketAddr {
    SocketAddr::new(proxy.ip, proxy.admin)
}

/// Reads from `s` (discarding data) until EOF or an error; `Err(())` if `limit` passes first.
fn wait_closed(s: &mut TcpStream, limit: Duration) -> Result<(), ()> {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(());
        }
        s.set_read_timeout(Some(left)).expect("read timeout");
        match s.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Ok(()),
        }
    }
}

#[test]
fn a_slow_loris_is_closed_within_the_header_timeout() {
    let Some((_t, proxy)) = ready_lab(Topology::single, ProxyOpts::default()) else {
        return;
    };
    let mut s = TcpStream::connect(admin_addr(&proxy)).expect("connect to admin");
    let start = Instant::now();
    // Half a request line, then one byte a second: the rest of it, then a header that never ends.
    s.write_all(b"GET /metr").expect("first bytes");
    let mut rest = b"ics HTTP/1.1\r\nHost: localhost\r\nX-Trickle: "
        .iter()
        .copied()
        .chain(std::iter::repeat(b'a'));
    let mut trickled = 0;
    let mut buf = [0u8; 1024];
    let mut answer = Vec::new();
    let closed_after = loop {
        s.set_read_timeout(Some(Duration::from_secs(1)))
            .expect("read timeout");
        match s.read(&mut buf) {
            Ok(0) => break start.elapsed(),
            // hyper may answer 408 before it closes; keep reading until the close.
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break start.elapsed(),
        }
        assert!(
            start.elapsed() < HEADER_READ_TIMEOUT + MARGIN * 5,
            "a trickling client is still connected after {:?} ({trickled} bytes trickled)",
            start.elapsed()
        );
        let byte = rest.next().expect("endless");
        if s.write_all(&[byte]).is_err() {
            break start.elapsed();
        }
        trickled += 1;
    };
    eprintln!(
        "slow loris: closed after {closed_after:?}, {trickled} bytes trickled, answer {:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        closed_after < HEADER_READ_TIMEOUT + MARGIN,
        "closed after {closed_after:?}, header timeout {HEADER_READ_TIMEOUT:?}"
    );
    // Closed by the timeout, not for some other reason at once.
    assert!(
        closed_after + Duration::from_millis(500) >= HEADER_READ_TIMEOUT,
        "closed after {closed_after:?}, before the header timeout"
    );
    assert_eq!(proxy.http("/healthz").map(|r| r.0), Some(200));
}

#[test]
fn an_idle_keep_alive_connection_is_closed_within_the_header_timeout() {
    let Some((_t, proxy)) = ready_lab(Topology::single, ProxyOpts::default()) else {
        return;
    };
    let mut s = TcpStream::connect(admin_addr(&proxy)).expect("connect to admin");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("request");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.ends_with(b"ok\n") {
        let n = s.read(&mut buf).expect("answer");
        assert!(n > 0, "closed before the answer");
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    let idle = Instant::now();
    wait_closed(&mut s, HEADER_READ_TIMEOUT + MARGIN).unwrap_or_else(|()| {
        panic!(
            "an idle keep-alive connection is still open after {:?}",
            idle.elapsed()
        )
    });
    eprintln!(
        "idle keep-alive connection closed after {:?}",
        idle.elapsed()
    );
}

#[test]
fn admin_clients_holding_half_sent_requests_do_not_delay_exit() {
    let Some((_t, mut proxy)) = ready_lab(Topology::single, ProxyOpts::default()) else {
        return;
    };
    // Every slot taken: half a request line each, the rest never sent.
    let stuck: Vec<TcpStream> = (0..MAX_CONNECTIONS)
        .map(|_| {
            let mut s = TcpStream::connect(admin_addr(&proxy)).expect("connect to admin");
            s.write_all(b"GET /metr").expect("half a request");
            s
        })
        .collect();
    let signalled = Instant::now();
    proxy.signal("TERM");
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)), Some(0));
    let exited = signalled.elapsed();
    eprintln!(
        "exited {exited:?} after SIGTERM with {} half-sent admin requests",
        stuck.len()
    );
    assert!(exited < Duration::from_secs(3), "exit took {exited:?}");
}

#[test]
fn thousands_of_idle_admin_connections_are_capped_and_the_route_keeps_serving() {
    const IDLE: usize = 3000;
    // Without the cap, IDLE connections would exhaust this limit six times over.
    const NOFILE: u32 = 512;
    let opts = ProxyOpts {
        nofile: Some(NOFILE),
        ..Default::default()
    };
    let Some((_t, proxy)) = ready_lab(Topology::single, opts) else {
        return;
    };
    let (_, body) = proxy.http("/metrics").expect("/metrics");
    assert!(
        body.lines().any(|l| l == format!("{REJECTED} 0")),
        "{REJECTED} is not exported at 0 from startup"
    );
    let role_errors = proxy.metric(
        "redis_failover_proxy_role_checks_total",
        &[("result", "error")],
    );
    let role_ok = proxy.metric(
        "redis_failover_proxy_role_checks_total",
        &[("result", "master")],
    );
    let sentinel_errors = proxy.metric("redis_failover_proxy_sentinel_errors_total", &[]);

    let addr = admin_addr(&proxy);
    let opening = Instant::now();
    let mut idle = Vec::with_capacity(IDLE);
    let mut failed = 0;
    for _ in 0..IDLE {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => idle.push(s),
            Err(_) => failed += 1,
        }
    }
    let opened_in = opening.elapsed();
    let fds = fd_count(proxy.pid());
    eprintln!(
        "{} idle admin connections opened in {opened_in:?} ({failed} failed); the proxy holds {fds} descriptors (limit {NOFILE})",
        idle.len()
    );
    assert!(
        idle.len() >= IDLE * 9 / 10,
        "only {} of {IDLE} connected",
        idle.len()
    );
    assert!(
        fds < 64 + MAX_CONNECTIONS,
        "the proxy holds {fds} descriptors"
    );

    // While they are open: the route serves, and the watchers keep verifying the master.
    let mut c = Client::connect(proxy.port);
    assert_eq!(c.cmd(&["PING"]).expect("PING through the route"), "+PONG");

    // The idle ones holding the slots are closed by the header timeout; then /metrics answers.
    let answered = wait_until(
        HEADER_READ_TIMEOUT + MARGIN * 3,
        "/metrics answers again",
        || proxy.http("/metrics").is_some_and(|(code, _)| code == 200),
    );
    let rejected = proxy.metric(REJECTED, &[]);
    eprintln!("/metrics answered again after {answered:?}; {rejected} admin connections rejected");
    // Each slot is taken at most once per header timeout while the connections open.
    let rounds = 2 + (opened_in.as_millis() / HEADER_READ_TIMEOUT.as_millis()) as usize;
    let served_at_most = MAX_CONNECTIONS * rounds;
    assert!(
        rejected >= idle.len().saturating_sub(served_at_most) as f64,
        "{rejected} rejected of {} (at most {served_at_most} served)",
        idle.len()
    );
    let mut c = Client::connect(proxy.port);
    assert_eq!(c.cmd(&["PING"]).expect("PING through the route"), "+PONG");
    proxy.wait_metric(
        Duration::from_secs(5),
        "the watcher verifies the master again",
        "redis_failover_proxy_role_checks_total",
        &[("result", "master")],
        |v| v > role_ok,
    );
    assert_eq!(
        proxy.metric(
            "redis_failover_proxy_role_checks_total",
            &[("result", "error")]
        ),
        role_errors,
        "ROLE checks failed while the admin connections were open"
    );
    assert_eq!(
        proxy.metric("redis_failover_proxy_sentinel_errors_total", &[]),
        sentinel_errors,
        "sentinel queries failed while the admin connections were open"
    );
    assert_eq!(
        proxy.metric("redis_failover_proxy_accept_errors_total", &[]),
        0.0
    );
    assert_eq!(
        proxy.metric("redis_failover_proxy_master_verified", &[]),
        1.0
    );
    drop(idle);
}

/// Waits until every node other than `master` replicates from it with the link up, so the
/// next failover starts from a settled topology.
fn wait_settled(t: &Topology, master: u16) {
    for n in t.nodes.iter().filter(|n| n.port != master) {
        let a = n.addr();
        wait_until(
            Duration::from_secs(30),
            "replica linked to the new master",
            || {
                redis_cmd_at(a, &["INFO", "replication"]).is_ok_and(|v| {
                    let info = value_text(&v);
                    info.contains("master_link_status:up")
                        && info.contains(&format!("master_port:{master}"))
                })
            },
        );
    }
    t.wait_converged();
}

/// Clock ticks per second of /proc's CPU times (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU time (ticks) and nice value of the thread named `comm` of process `pid`.
fn thread_stat(pid: u32, comm: &str) -> (u64, i64) {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/PID/task");
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // "tid (comm) state ...": comm may hold spaces, so split at the last ") ".
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        if head.split_once(" (").map(|h| h.1) != Some(comm) {
            continue;
        }
        let f: Vec<&str> = rest.split_whitespace().collect();
        // Fields 14, 15 (utime, stime) and 19 (nice); `rest` starts at field 3.
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        return ((num(11) + num(12)) as u64, num(16));
    }
    panic!("process {pid} has no thread named {comm:?}");
}

/// One failover as seen through the proxy.
struct Failover {
    /// From `SENTINEL FAILOVER` accepted to the first new client reaching the new master.
    routed: Duration,
    /// The proxy's part: from the sentinel naming the new master to that client.
    lag: Duration,
    new: u16,
}

/// `SENTINEL FAILOVER` to the first sentinel (retried until it accepts), while one thread
/// watches what that sentinel names and this one connects clients through the proxy until
/// one reaches another node.
fn routed_failover(t: &Topology, proxy: &Proxy) -> Failover {
    let old = t.master_port().expect("a master");
    let sentinel = t.sentinels[0].addr();
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        // When the sentinel first names another master (the leader switches its own
        // config, then announces +switch-master to the proxy and the other sentinels).
        let named = s.spawn(|| {
            let start = Instant::now();
            let client = redis::Client::open(format!("redis://{sentinel}/")).expect("url");
            let mut con = None;
            while !done.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(60) {
                if con.is_none() {
                    con = client
                        .get_connection_with_timeout(Duration::from_secs(2))
                        .ok();
                }
                if let Some(c) = con.as_mut() {
                    match redis::cmd("SENTINEL")
                        .arg("GET-MASTER-ADDR-BY-NAME")
                        .arg(MASTER_NAME)
                        .query::<(String, u16)>(c)
                    {
                        Ok((_, p)) if p != old => return Some(Instant::now()),
                        Ok(_) => {}
                        Err(_) => con = None,
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            None
        });
        let mut accepted = Instant::now();
        wait_until(
            Duration::from_secs(30),
            "SENTINEL FAILOVER accepted",
            || {
                accepted = Instant::now();
                redis_cmd_at(sentinel, &["SENTINEL", "FAILOVER", MASTER_NAME]).is_ok()
            },
        );
        let mut reached = 0;
        wait_until(
            Duration::from_secs(30),
            "a client through the proxy reaches a new master",
            || match Client::connect(proxy.port).node_port() {
                Ok(p) if p != old => {
                    reached = p;
                    true
                }
                _ => false,
            },
        );
        let routed_at = Instant::now();
        done.store(true, Ordering::Relaxed);
        let named_at = named
            .join()
            .expect("sentinel watcher")
            .expect("the sentinel never named a new master");
        let new = t.wait_new_master(old);
        assert_eq!(
            reached, new,
            "the proxy routed to a node the sentinels did not name"
        );
        Failover {
            routed: routed_at - accepted,
            lag: routed_at.saturating_duration_since(named_at),
            new,
        }
    })
}

/// Two failovers, the first quiet, the second while threads scrape `/metrics` as fast as they
/// can (more threads than the cap: the rest are rejected and reconnect at once).
#[test]
fn a_metrics_flood_does_not_slow_a_failover() {
    const FLOODERS: usize = 160;
    let Some((t, proxy)) = ready_lab(|| Topology::start(1000), ProxyOpts::default()) else {
        return;
    };
    let quiet = routed_failover(&t, &proxy);
    wait_settled(&t, quiet.new);
    proxy.wait_ready();
    let rejected_before = proxy.metric(REJECTED, &[]);

    let addr = admin_addr(&proxy);
    let stop = AtomicBool::new(false);
    let answered = AtomicU64::new(0);
    let refused = AtomicU64::new(0);
    let (loaded, during, admin_core) = std::thread::scope(|s| {
        for _ in 0..FLOODERS {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    match http_get_at(addr, "/metrics") {
                        Some((200, _)) => answered.fetch_add(1, Ordering::Relaxed),
                        _ => refused.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
        }
        // Whatever fails, the flooders must stop, or the scope would wait for them for ever.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_until(Duration::from_secs(10), "the flood is running", || {
                answered.load(Ordering::Relaxed) >= 200
            });
            let flood_start = Instant::now();
            let before = answered.load(Ordering::Relaxed);
            let (admin0, _) = thread_stat(proxy.pid(), "admin");
            let loaded = routed_failover(&t, &proxy);
            let (admin1, _) = thread_stat(proxy.pid(), "admin");
            let core =
                (admin1 - admin0) as f64 / TICKS_PER_SECOND / flood_start.elapsed().as_secs_f64();
            let rate = (answered.load(Ordering::Relaxed) - before) as f64
                / flood_start.elapsed().as_secs_f64();
            (loaded, rate, core)
        }));
        stop.store(true, Ordering::Relaxed);
        outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    });
    let rejected = proxy.metric(REJECTED, &[]) - rejected_before;
    let (_, admin_nice) = thread_stat(proxy.pid(), "admin");
    let (_, main_nice) = thread_stat(proxy.pid(), "redis-failover-");
    eprintln!(
        "failover routed (accepted -> routed; sentinel named -> routed): quiet {:?}; {:?}, \
         under a /metrics flood of {FLOODERS} threads {:?}; {:?} ({during:.0} answers/s during \
         the failover; {} answered, {} refused in all; {rejected} admin connections rejected \
         by the cap; the admin thread (nice {admin_nice}) used {:.0} % of a core)",
        quiet.routed,
        quiet.lag,
        loaded.routed,
        loaded.lag,
        answered.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        admin_core * 100.0,
    );
    assert!(
        admin_nice > main_nice,
        "the admin thread runs at nice {admin_nice}, the control thread at {main_nice}"
    );
    assert!(
        quiet.routed < Duration::from_secs(5),
        "quiet failover took {:?}",
        quiet.routed
    );
    assert!(
        loaded.routed < Duration::from_secs(5),
        "failover under a /metrics flood took {:?} (quiet: {:?}); the proxy's part: {:?}",
        loaded.routed,
        quiet.routed,
        loaded.lag
    );
    // The proxy's own part, a few tens of ms quiet; with the admin server on the watchers'
    // thread the flood made it 0.5-0.7 s.
    assert!(
        loaded.lag < Duration::from_secs(1),
        "under a /metrics flood the proxy routed {:?} after the sentinel named the new master \
         (quiet: {:?})",
        loaded.lag,
        quiet.lag
    );
    assert!(answered.load(Ordering::Relaxed) > 0);
}
