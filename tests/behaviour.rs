//! Client-side behaviour against one real node and sentinel: holds, limits, half-close,
//! shutdown, flags-only runs, and sentinels that name a replica.

mod support;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use support::*;

#[test]
fn runs_from_flags_alone() {
    if !require("redis-sentinel") {
        return;
    }
    let t = Topology::single();
    let proxy = Proxy::start_flags(&t.sentinel_ports());
    proxy.wait_ready();
    let mut c = Client::connect(proxy.port);
    assert_eq!(c.cmd(&["SET", "a", "1"]).unwrap(), "+OK");
    assert_eq!(c.node_port().unwrap(), t.nodes[0].port);
    let (code, body) = proxy.http("/readyz").unwrap();
    assert_eq!((code, body.trim()), (200, "ready"));
}

#[test]
fn half_close_still_gets_the_full_reply() {
    let Some((_t, proxy)) = ready_lab(Topology::single, ProxyOpts::default()) else {
        return;
    };
    let big = "x".repeat(1 << 20);
    assert_eq!(
        Client::connect(proxy.port)
            .cmd(&["SET", "big", &big])
            .unwrap(),
        "+OK"
    );

    let mut s = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).unwrap();
    let header = format!("${}\r\n", big.len());
    assert_eq!(reply.len(), header.len() + big.len() + 2, "reply truncated");
    assert!(reply.starts_with(header.as_bytes()));
}

#[test]
fn connection_limit_closes_extra_clients_and_recovers() {
    if !require("redis-sentinel") {
        return;
    }
    let t = Topology::single();
    let proxy = Proxy::start_with(
        &t.sentinel_ports(),
        ProxyOpts {
            max_connections: 2,
            ..Default::default()
        },
    );
    proxy.wait_ready();
    let mut a = Client::connect(proxy.port);
    let mut b = Client::connect(proxy.port);
    assert_eq!(a.cmd(&["PING"]).unwrap(), "+PONG");
    assert_eq!(b.cmd(&["PING"]).unwrap(), "+PONG");
    let mut c = Client::connect(proxy.port);
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "third client not closed"
    );
    assert_eq!(
        proxy.metric(
            "redis_failover_proxy_connections_rejected_total",
            &[("reason", "limit")]
        ),
        1.0
    );
    drop(a);
    wait_until(Duration::from_secs(5), "a slot frees up", || {
        let mut d = Client::connect(proxy.port);
        d.cmd(&["PING"]).is_ok_and(|r| r == "+PONG")
    });
    assert_eq!(b.cmd(&["PING"]).unwrap(), "+PONG");
}

#[test]
fn sentinel_naming_a_replica_is_not_routed_to_and_held_clients_time_out() {
    if !require("redis-sentinel") {
        return;
    }
    let dir = tempdir();
    let master = Node::start(dir.path(), None);
    let replica = Node::start(dir.path(), Some(master.port));
    // A sentinel told that the replica is the master keeps saying so.
    let sentinel = Sentinel::start(dir.path(), replica.port, 60_000);
    wait_until(
        Duration::from_secs(10),
        "sentinel names the replica",
        || sentinel.master_port() == Some(replica.port),
    );
    let proxy = Proxy::start_with(
        &[sentinel.port],
        ProxyOpts {
            hold_timeout: "1s",
            ..Default::default()
        },
    );
    proxy.wait_metric(
        Duration::from_secs(10),
        "proxy has checked the candidate's ROLE",
        "redis_failover_proxy_role_checks_total",
        &[("result", "replica")],
        |v| v >= 1.0,
    );
    let (code, body) = proxy.http("/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("no verified master"), "{body}");
    assert!(proxy.status()["routes"][0]["master"].is_null());

    let start = Instant::now();
    let mut c = Client::connect(proxy.port);
    c.stream.write_all(b"PING\r\n").unwrap();
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "held client not released"
    );
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}, before the hold timeout"
    );
    assert_eq!(
        proxy.metric(
            "redis_failover_proxy_connections_rejected_total",
            &[("reason", "hold_timeout")]
        ),
        1.0
    );
    assert_eq!(
        proxy.metric(
            "redis_failover_proxy_holds_total",
            &[("outcome", "timed_out")]
        ),
        1.0
    );
    assert_eq!(
        proxy.metric("redis_failover_proxy_master_verified", &[]),
        0.0
    );
}

#[test]
fn sigterm_drains_then_closes_and_exits_zero() {
    if !require("redis-sentinel") {
        return;
    }
    let t = Topology::single();
    let mut proxy = Proxy::start_with(
        &t.sentinel_ports(),
        ProxyOpts {
            shutdown_grace: "1500ms",
            ..Default::default()
        },
    );
    proxy.wait_ready();
    let mut session = Client::connect(proxy.port);
    assert_eq!(session.cmd(&["PING"]).unwrap(), "+PONG");
    let signalled = Instant::now();
    proxy.signal("TERM");
    wait_until(Duration::from_secs(5), "listener closed", || {
        std::net::TcpStream::connect(("127.0.0.1", proxy.port)).is_err()
    });
    // Within the grace period the session keeps working.
    assert_eq!(session.cmd(&["PING"]).unwrap(), "+PONG");
    assert!(
        session.closed_within(Duration::from_secs(5)),
        "session outlived the grace period"
    );
    assert!(signalled.elapsed() >= Duration::from_millis(1400));
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(proxy.log().contains("shutdown complete"));
}

#[test]
fn sigterm_with_no_sessions_exits_at_once() {
    let Some((_t, mut proxy)) = ready_lab(Topology::single, ProxyOpts::default()) else {
        return;
    };
    let start = Instant::now();
    proxy.signal("INT");
    assert_eq!(proxy.wait_exit(Duration::from_secs(5)), Some(0));
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn accept_loop_survives_fd_exhaustion() {
    if !require("redis-sentinel") || !require("prlimit") {
        return;
    }
    let t = Topology::single();
    let proxy = Proxy::start_with(
        &t.sentinel_ports(),
        ProxyOpts {
            nofile: Some(64),
            hold_timeout: "2s",
            ..Default::default()
        },
    );
    proxy.wait_ready();
    let mut first = Client::connect(proxy.port);
    assert_eq!(first.cmd(&["PING"]).unwrap(), "+PONG");
    // Each session takes two descriptors: 64 is exhausted well before 80 clients.
    let flood: Vec<std::net::TcpStream> = (0..80)
        .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", proxy.port)).ok())
        .collect();
    // The admin server shares the exhausted descriptor table, so watch the log instead.
    wait_until(Duration::from_secs(10), "descriptor exhaustion hit", || {
        proxy.log().contains("Too many open files")
    });
    let cpu_before = cpu_ticks(proxy.pid());
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(1)); // measuring CPU over a wall-clock second
    let ticks = cpu_ticks(proxy.pid()) - cpu_before;
    let hz = 100.0;
    let cpu = ticks as f64 / hz / t0.elapsed().as_secs_f64();
    assert!(
        cpu < 0.5,
        "proxy spins while out of descriptors: {:.0}% CPU",
        cpu * 100.0
    );
    assert_eq!(
        first.cmd(&["PING"]).unwrap(),
        "+PONG",
        "existing session affected"
    );
    drop(flood);
    wait_until(Duration::from_secs(15), "new clients served again", || {
        let mut c = Client::connect(proxy.port);
        c.stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        c.cmd(&["PING"]).is_ok_and(|r| r == "+PONG")
    });
    assert!(
        proxy.log().contains("accept failed"),
        "no accept error logged"
    );
    assert!(
        proxy.metric(
            "redis_failover_proxy_accept_errors_total",
            &[("kind", "fd_limit")]
        ) >= 1.0
    );
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the command name.
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

#[test]
fn a_closed_stderr_does_not_stop_signal_handling() {
    let dir = tempdir();
    let (port, admin) = (free_port(), free_port());
    let mut child = std::process::Command::new(BIN)
        .args(["--sentinel", "127.0.0.1:1"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .current_dir(dir.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    wait_until(Duration::from_secs(10), "admin answers", || {
        http_get(admin, "/healthz").is_some()
    });
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = exit_within(&mut child, Duration::from_secs(5))
        .expect("proxy ignored SIGTERM after its stderr closed");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_master_announced_by_hostname_is_resolved_and_verified() {
    if !require("redis-sentinel") {
        return;
    }
    let dir = tempdir();
    let master = Node::start(dir.path(), None);
    let sentinel = Sentinel::start_named(dir.path(), "localhost", master.port, 60_000);
    wait_until(
        Duration::from_secs(10),
        "sentinel announces the hostname",
        || sentinel.master_fields().and_then(|f| f.get("ip").cloned()) == Some("localhost".into()),
    );
    let proxy = Proxy::start_flags(&[sentinel.port]);
    proxy.wait_ready();
    let status = proxy.status();
    let m = &status["routes"][0]["master"];
    assert_eq!(m["announced"], format!("localhost:{}", master.port));
    assert!(m["addr"]
        .as_str()
        .unwrap()
        .ends_with(&format!(":{}", master.port)));
    assert_eq!(
        Client::connect(proxy.port).node_port().unwrap(),
        master.port
    );
}

/// `runtime.threads` and `runtime.pin_threads`: sessions spread over the session threads
/// (a thread accepts only while it is not ahead of the other), and each thread is pinned to
/// its own CPU.
#[test]
fn sessions_spread_over_pinned_session_threads() {
    let Some((_t, proxy)) = ready_lab(
        Topology::single,
        ProxyOpts {
            runtime_extra: "threads = 2\npin_threads = true",
            ..ProxyOpts::default()
        },
    ) else {
        return;
    };
    let threads = session_threads(proxy.pid());
    assert_eq!(threads.len(), 2, "session threads: {threads:?}");
    let before: Vec<u64> = threads.iter().map(|t| t.cpu_ns()).collect();

    // Four clients open at once: each thread gets at least one (two, or three and one within
    // the slack). Each does enough round trips that a thread that carries any of them shows
    // CPU time.
    let mut clients: Vec<Client> = (0..4).map(|_| Client::connect(proxy.port)).collect();
    for i in 0..2_000 {
        for c in &mut clients {
            assert_eq!(c.cmd(&["SET", "k", &i.to_string()]).unwrap(), "+OK");
        }
    }
    for (t, b) in threads.iter().zip(&before) {
        assert!(
            t.cpu_ns() > *b,
            "{} did no work: sessions were not spread",
            t.name
        );
    }

    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let allowed: Vec<String> = threads.iter().map(|t| t.cpus_allowed()).collect();
    if cpus < 2 {
        eprintln!("skipping the pinning check: this machine has {cpus} CPU");
        return;
    }
    for a in &allowed {
        assert!(
            a.parse::<u32>().is_ok(),
            "a session thread is not pinned to one CPU: {a:?}"
        );
    }
    assert_ne!(
        allowed[0], allowed[1],
        "both session threads pinned to one CPU"
    );
}

/// Values from empty to 8 MiB, around the sizes where a direction switches between copying
/// and splicing (4 KiB) and the pipe's capacity (64 KiB), come back intact, also when large
/// and small requests alternate on one connection.
#[test]
fn values_of_every_size_arrive_intact() {
    let Some((_t, proxy)) = ready_lab(Topology::single, ProxyOpts::default()) else {
        return;
    };
    let mut c = Client::connect(proxy.port);
    let sizes = [
        0usize,
        1,
        4095,
        4096,
        4097,
        16_384,
        65_535,
        65_536,
        65_537,
        200_000,
        1 << 20,
        8 << 20,
    ];
    for round in 0..2 {
        assert_values_round_trip(&mut c, &sizes, round);
    }
}

/// `runtime.busy_poll`: the session threads poll before they sleep, sessions work as usual,
/// and an idle proxy still sleeps (the spin ends after its budget).
#[test]
fn busy_polling_session_threads_serve_and_then_sleep() {
    let Some((_t, proxy)) = ready_lab(
        Topology::single,
        ProxyOpts {
            runtime_extra: "threads = 2\nbusy_poll = \"500us\"",
            ..ProxyOpts::default()
        },
    ) else {
        return;
    };
    assert!(
        proxy.log().contains("busy_poll_us=500"),
        "the start log names busy_poll: {}",
        proxy.log()
    );
    assert!(
        !proxy
            .log()
            .contains("cannot find this session thread's epoll instance"),
        "{}",
        proxy.log()
    );
    let mut clients: Vec<Client> = (0..4).map(|_| Client::connect(proxy.port)).collect();
    for i in 0..2_000 {
        for c in &mut clients {
            let v = i.to_string();
            assert_eq!(c.cmd(&["SET", "k", &v]).unwrap(), "+OK");
            assert_eq!(c.cmd(&["GET", "k"]).unwrap(), v);
        }
    }
    // Idle (clients open, nothing sent): over a second the session threads use a sliver of
    // CPU, not a core each.
    let threads = session_threads(proxy.pid());
    let cpu = |ts: &[Task]| ts.iter().map(|t| t.cpu_ns()).sum::<u64>();
    let before = cpu(&threads);
    let window = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu(&threads) - before;
    let share = used as f64 / window.elapsed().as_nanos() as f64;
    assert!(
        share < 0.2,
        "idle session threads used {:.0} % of a CPU",
        share * 100.0
    );
}

#[derive(Debug)]
struct Task {
    name: String,
    dir: std::path::PathBuf,
}

impl Task {
    /// Time on CPU (ns) from the task's schedstat.
    fn cpu_ns(&self) -> u64 {
        std::fs::read_to_string(self.dir.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    fn cpus_allowed(&self) -> String {
        let status = std::fs::read_to_string(self.dir.join("status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap_or("")
            .trim()
            .to_string()
    }
}

fn session_threads(pid: u32) -> Vec<Task> {
    let mut tasks: Vec<Task> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("/proc/PID/task")
        .filter_map(|e| {
            let dir = e.ok()?.path();
            let name = std::fs::read_to_string(dir.join("comm"))
                .ok()?
                .trim()
                .to_string();
            name.starts_with("session-").then_some(Task { name, dir })
        })
        .collect();
    tasks.sort_by(|a, b| a.name.cmp(&b.name));
    tasks
}

/// `hold_timeout = "0s"` (no hold): with a verified master, clients are served at once; the
/// zero hold only applies when there is nothing to connect to.
#[test]
fn without_a_hold_clients_are_still_served() {
    let opts = ProxyOpts {
        hold_timeout: "0s",
        ..Default::default()
    };
    let Some((_t, proxy)) = ready_lab(Topology::single, opts) else {
        return;
    };
    for _ in 0..20 {
        let mut c = Client::connect(proxy.port);
        assert_eq!(c.cmd(&["PING"]).expect("served"), "+PONG");
    }
}
