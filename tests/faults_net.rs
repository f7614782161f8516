//! Network faults between real processes in network namespaces (tests/support/net.rs):
//! a partition with the proxy on the majority side, lost `+switch-master` events, a blackholed
//! master; and the other side of reaping: idle but healthy sessions are left alone.
//! Skipped (with the reason printed) when not root or `ip`/`nft` are missing.

mod support;

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use support::net::Net;
use support::workload::{keys_on, Workload};
use support::*;

/// Watches `c` in a thread; yields when the proxy closed it (or `None` if it did not in `within`).
fn when_closed(mut c: Client, within: Duration) -> JoinHandle<Option<(Instant, SystemTime)>> {
    std::thread::spawn(move || {
        c.closed_within(within)
            .then(|| (Instant::now(), SystemTime::now()))
    })
}

/// `b - a` in milliseconds, negative when `b` came first.
fn ms_between(a: Instant, b: Instant) -> f64 {
    match b.checked_duration_since(a) {
        Some(d) => d.as_secs_f64() * 1000.0,
        None => -(a.duration_since(b).as_secs_f64() * 1000.0),
    }
}

#[test]
fn partition_with_the_proxy_on_the_majority_side() {
    let Some(net) = Net::new(&["a", "b", "c", "p"]) else {
        return;
    };
    let hosts = [net.host("a"), net.host("b"), net.host("c")];
    let t = Topology::start_on(&hosts, &hosts, 1000);
    let proxy = Proxy::start_on(
        net.host("p"),
        &t.sentinel_addrs(),
        ProxyOpts {
            hold_timeout: "30s",
            ..Default::default()
        },
    );
    proxy.wait_ready();
    let old = t.nodes[0].addr();

    let mut sessions: Vec<Client> = (0..20).map(|_| Client::connect_to(proxy.addr())).collect();
    for s in &mut sessions {
        assert_eq!(s.node_port().unwrap(), old.port());
    }
    let load = Workload::start(proxy.addr(), 4, "w");
    wait_until(Duration::from_secs(10), "the workload writes", || {
        keys_on(old, "w").len() > 100
    });

    let cut = Instant::now();
    net.partition(&[&["a"], &["b", "c", "p"]]);
    let closers: Vec<_> = sessions
        .into_iter()
        .map(|s| when_closed(s, Duration::from_secs(30)))
        .collect();
    let new_port = t.wait_new_master(old.port());
    let named = Instant::now();
    let closed: Vec<(Instant, SystemTime)> = closers
        .into_iter()
        .map(|h| h.join().unwrap().expect("old session closed within 30 s"))
        .collect();
    let first_closed = closed.iter().min().unwrap();
    let last_closed = closed.iter().max().unwrap().0;
    // The moment the fence was certainly under way: anything sent later must not reach `a`.
    let fence_wall = first_closed.1;

    let new = t.nodes.iter().find(|n| n.port == new_port).unwrap().addr();
    let mut c = Client::connect_to(proxy.addr());
    assert_eq!(
        c.node_port().unwrap(),
        new_port,
        "a new session must reach the new master"
    );
    assert_eq!(proxy.master().unwrap().1, new.to_string());
    // Let the workload run against the new master for a while before counting.
    let on_new = keys_on(new, "w").len();
    wait_until(
        Duration::from_secs(20),
        "the workload writes to the new master",
        || keys_on(new, "w").len() > on_new + 100,
    );
    let report = load.stop();

    // The test's namespace still reaches `a`: read what it holds before it rejoins (and is
    // turned into a replica, which would discard it).
    let on_old = keys_on(old, "w");
    let after_fence = report.reached_after(&on_old, fence_wall);
    let lost = report.lost(&keys_on(new, "w"));
    net.heal();

    eprintln!(
        "partition (majority side): 20 sessions fenced; partition -> all closed {:?}; sentinels \
         named the new master at {:?} after the partition; last session closed {:+.1} ms relative \
         to that; outage seen by the workload {:?}; writes {} ({} acked, {} errors); acked but \
         lost {}; writes that reached the old master after the fence {}",
        last_closed.duration_since(cut),
        named.duration_since(cut),
        ms_between(named, last_closed),
        report.longest_gap(),
        report.records.len(),
        report.acked(),
        report.errors,
        lost.len(),
        after_fence
    );
    assert_eq!(
        after_fence, 0,
        "writes reached the old master after the fence"
    );
    let fenced = proxy.metric(
        "redis_failover_proxy_sessions_closed_total",
        &[("reason", "master_switch")],
    );
    eprintln!("sessions closed by the fence (20 idle + the workload's): {fenced}");
    assert!(fenced >= 20.0);
}

/// Local ports of the pub/sub connections (`sub=N`, N > 0) that `from` holds on the sentinel at `sentinel`.
fn subscriptions(sentinel: SocketAddr, from: IpAddr) -> Vec<u16> {
    let Ok(list) = redis_cmd_at(sentinel, &["CLIENT", "LIST"]) else {
        return Vec::new();
    };
    value_text(&list)
        .lines()
        .filter(|l| {
            l.split(' ')
                .filter_map(|f| f.strip_prefix("sub="))
                .any(|n| n.parse::<u32>().is_ok_and(|n| n > 0))
        })
        .filter_map(|l| {
            let addr = l.split(' ').find_map(|f| f.strip_prefix("addr="))?;
            let addr: SocketAddr = addr.parse().ok()?;
            (addr.ip() == from).then_some(addr.port())
        })
        .collect()
}

fn all_subscribed(proxy: &Proxy) -> bool {
    proxy.status()["routes"][0]["sentinels"]
        .as_array()
        .is_some_and(|s| s.iter().all(|s| s["subscribed"] == true))
}

#[test]
fn lost_switch_master_events_polling_converges_and_subscriptions_recover() {
    let Some(net) = Net::new(&["a", "b", "c", "p"]) else {
        return;
    };
    let hosts = [net.host("a"), net.host("b"), net.host("c")];
    let t = Topology::start_on(&hosts, &hosts, 5000);
    let proxy = Proxy::start_on(net.host("p"), &t.sentinel_addrs(), ProxyOpts::default());
    proxy.wait_ready();
    wait_until(Duration::from_secs(10), "every subscription is up", || {
        all_subscribed(&proxy)
    });
    let p = net.ip("p");
    let mut dead: Vec<(SocketAddr, u16)> = Vec::new();
    for s in t.sentinel_addrs() {
        let mut ports = Vec::new();
        wait_until(
            Duration::from_secs(5),
            "the sentinel lists our subscription",
            || {
                ports = subscriptions(s, p);
                ports.len() == 1
            },
        );
        net.blackhole_flow("p", ports[0], s);
        dead.push((s, ports[0]));
    }
    let blackholed = Instant::now();
    let sub_errors = |proxy: &Proxy| {
        proxy.metric(
            "redis_failover_proxy_sentinel_errors_total",
            &[("kind", "subscription")],
        )
    };
    let errors_before = sub_errors(&proxy);
    let events_before = proxy.metric("redis_failover_proxy_switch_events_total", &[]);

    let failover_sent = Instant::now();
    let new_port = t.failover();
    let named = Instant::now();
    let new = t.nodes.iter().find(|n| n.port == new_port).unwrap().addr();
    let mut converged = Instant::now();
    wait_until(
        Duration::from_secs(10),
        "the proxy routes to the new master",
        || {
            converged = Instant::now();
            proxy.master().is_some_and(|(_, a)| a == new.to_string())
        },
    );
    let converge_ms = ms_between(named, converged);
    let events_during =
        proxy.metric("redis_failover_proxy_switch_events_total", &[]) - events_before;
    assert!(
        converge_ms < 2000.0,
        "the proxy took {converge_ms:.0} ms after the sentinels to follow (poll interval 250 ms)"
    );
    let mut c = Client::connect_to(proxy.addr());
    assert_eq!(c.node_port().unwrap(), new_port);

    // Each dead subscription fails its next ping (every 5 s, 1 s timeout) and is replaced by a
    // new connection, while the old flow stays blackholed.
    wait_until(
        Duration::from_secs(20),
        "every subscription is re-established on a new connection",
        || {
            sub_errors(&proxy) >= errors_before + 3.0
                && all_subscribed(&proxy)
                && dead
                    .iter()
                    .all(|(s, old_port)| subscriptions(*s, p).iter().any(|port| port != old_port))
        },
    );
    let recovered = Instant::now();
    eprintln!(
        "lost +switch-master: failover sent -> sentinels name the new master {:?}; proxy routes \
         to it {converge_ms:+.0} ms after that ({:?} after the failover was sent); switch events \
         received during it {events_during}; all 3 dead subscriptions replaced {:?} after the \
         blackhole ({:?} after the sentinels named the new master)",
        named.duration_since(failover_sent),
        converged.duration_since(failover_sent),
        recovered.duration_since(blackholed),
        recovered.duration_since(named),
    );
    net.heal();
}

const REAP_FAST: &str = "keepalive = \"2s\"\ntcp_user_timeout = \"4s\"";

#[test]
fn sessions_to_a_blackholed_master_are_reaped() {
    let Some(net) = Net::new(&["a", "s", "p"]) else {
        return;
    };
    // No failover: the sentinel keeps seeing a healthy master.
    let t = Topology::start_on(&[net.host("a")], &[net.host("s")], 60_000);
    let proxy = Proxy::start_on(
        net.host("p"),
        &t.sentinel_addrs(),
        ProxyOpts {
            route_extra: REAP_FAST,
            ..Default::default()
        },
    );
    proxy.wait_ready();
    let mut idle = Client::connect_to(proxy.addr());
    let mut busy = Client::connect_to(proxy.addr());
    assert_eq!(idle.cmd(&["PING"]).unwrap(), "+PONG");
    assert_eq!(busy.cmd(&["PING"]).unwrap(), "+PONG");

    let cut = Instant::now();
    net.partition(&[&["p"], &["a"]]);
    // A command in flight: the proxy forwards it, the master never acknowledges it.
    busy.stream
        .write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n")
        .unwrap();
    let idle = when_closed(idle, Duration::from_secs(15));
    let busy = when_closed(busy, Duration::from_secs(15));
    let idle = idle
        .join()
        .unwrap()
        .expect("idle session reaped within 15 s")
        .0;
    let busy = busy
        .join()
        .unwrap()
        .expect("busy session reaped within 15 s")
        .0;
    eprintln!(
        "blackholed master (keepalive 2s, tcp_user_timeout 4s): idle session closed {:?}, \
         session with a command in flight closed {:?} after the blackhole",
        idle.duration_since(cut),
        busy.duration_since(cut)
    );
    assert!(
        proxy.metric(
            "redis_failover_proxy_sessions_closed_total",
            &[("reason", "master_error")]
        ) >= 2.0
    );
    net.heal();
}

/// Waits `d` on an idle connection; describes whatever happens instead (EOF, error, data).
fn quiet_for(c: &mut Client, d: Duration) -> Option<String> {
    use std::io::Read;
    let deadline = Instant::now() + d;
    let mut b = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        c.stream.set_read_timeout(Some(left)).unwrap();
        match c.stream.read(&mut b) {
            Ok(0) => return Some("EOF".into()),
            Ok(n) => return Some(format!("data {:?}", String::from_utf8_lossy(&b[..n]))),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Some(format!("error {e} ({:?})", e.kind())),
        }
    }
}

/// The proxy's closed-session counters, for failure messages.
fn closed_by_reason(proxy: &Proxy) -> String {
    let (_, body) = proxy.http("/metrics").unwrap_or_default();
    let lines: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("redis_failover_proxy_sessions_closed_total"))
        .collect();
    lines.join("; ")
}

/// Reads one RESP array of bulk strings.
fn read_array(c: &mut Client) -> Vec<String> {
    let head = c.read_line().unwrap();
    let n: usize = head.strip_prefix('*').unwrap().parse().unwrap();
    (0..n)
        .map(|_| {
            let len = c.read_line().unwrap();
            assert!(len.starts_with('$'), "bulk string expected, got {len:?}");
            c.read_line().unwrap()
        })
        .collect()
}

#[test]
fn idle_blocking_and_subscribed_sessions_on_a_healthy_master_are_not_reaped() {
    let opts = ProxyOpts {
        route_extra: REAP_FAST,
        ..Default::default()
    };
    let Some((t, proxy)) = ready_lab(Topology::single, opts) else {
        return;
    };
    let mut blpop = Client::connect(proxy.port);
    let mut sub = Client::connect(proxy.port);
    sub.stream
        .write_all(b"*2\r\n$9\r\nSUBSCRIBE\r\n$4\r\nnews\r\n")
        .unwrap();
    // The confirmation ends with the subscription count, an integer.
    assert_eq!(sub.read_line().unwrap(), "*3");
    for want in ["$9", "subscribe", "$4", "news", ":1"] {
        assert_eq!(sub.read_line().unwrap(), want);
    }
    blpop
        .stream
        .write_all(b"*3\r\n$5\r\nBLPOP\r\n$4\r\njobs\r\n$1\r\n0\r\n")
        .unwrap();
    // Well past keepalive + TCP_USER_TIMEOUT (2 s + 4 s), nothing may close them.
    let idle = Duration::from_secs(10);
    let start = Instant::now();
    if let Some(what) = quiet_for(&mut blpop, idle) {
        panic!(
            "idle BLPOP session: {what} after {:?}; proxy: {}",
            start.elapsed(),
            closed_by_reason(&proxy)
        );
    }
    if let Some(what) = quiet_for(&mut sub, Duration::from_millis(100)) {
        panic!(
            "idle SUBSCRIBE session: {what}; proxy: {}",
            closed_by_reason(&proxy)
        );
    }
    let port = t.nodes[0].port;
    redis_cmd(port, &["LPUSH", "jobs", "job1"]).unwrap();
    blpop
        .stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(read_array(&mut blpop), ["jobs", "job1"]);
    let receivers = redis_cmd(port, &["PUBLISH", "news", "hello"]).unwrap();
    assert_eq!(value_text(&receivers), "1");
    sub.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(read_array(&mut sub), ["message", "news", "hello"]);
    eprintln!("idle BLPOP 0 and SUBSCRIBE sessions kept {idle:?} and still served");
}
