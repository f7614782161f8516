//! The core path against real redis-server and redis-sentinel processes.

mod support;

use std::time::{Duration, Instant};

use support::*;

#[test]
fn traffic_flows_to_the_master() {
    if !require("redis-sentinel") {
        return;
    }
    let t = Topology::start(5000);
    let proxy = Proxy::start(&t.sentinel_ports());
    proxy.wait_ready();
    let mut c = Client::connect(proxy.port);
    assert_eq!(c.cmd(&["SET", "k", "v"]).unwrap(), "+OK");
    assert_eq!(c.cmd(&["GET", "k"]).unwrap(), "v");
    assert_eq!(c.node_port().unwrap(), t.nodes[0].port);
    let (epoch, addr) = proxy.master().expect("master in /status");
    assert_eq!(epoch, 1);
    assert_eq!(addr, format!("127.0.0.1:{}", t.nodes[0].port));
    assert_eq!(
        proxy.metric("redis_failover_proxy_master_verified", &[]),
        1.0
    );
    assert_eq!(
        proxy.metric("redis_failover_proxy_sentinels_reachable", &[]),
        3.0
    );
}

#[test]
fn sentinel_failover_fences_old_sessions_and_routes_to_the_new_master() {
    if !require("redis-sentinel") {
        return;
    }
    let t = Topology::start(5000);
    let proxy = Proxy::start(&t.sentinel_ports());
    proxy.wait_ready();
    let old = t.nodes[0].port;
    let mut writer = Client::connect(proxy.port);
    assert_eq!(writer.cmd(&["SET", "before", "failover"]).unwrap(), "+OK");
    // Make sure both replicas have the key before the switch.
    assert_eq!(writer.cmd(&["WAIT", "2", "5000"]).unwrap(), ":2");
    let mut sessions: Vec<Client> = (0..20).map(|_| Client::connect(proxy.port)).collect();
    for s in &mut sessions {
        assert_eq!(s.cmd(&["PING"]).unwrap(), "+PONG");
    }

    let new = t.failover();
    let switched = Instant::now();
    for s in &mut sessions {
        assert!(
            s.closed_within(Duration::from_secs(5)),
            "old session not closed"
        );
    }
    assert!(writer.closed_within(Duration::from_secs(5)));
    let all_closed = switched.elapsed();

    let mut c = Client::connect(proxy.port);
    assert_eq!(
        c.node_port().unwrap(),
        new,
        "new session must reach the new master"
    );
    assert_eq!(role_of(new), "master");
    assert_eq!(c.cmd(&["GET", "before"]).unwrap(), "failover");
    let (epoch, addr) = proxy.master().unwrap();
    assert_eq!(epoch, 2);
    assert_eq!(addr, format!("127.0.0.1:{new}"));
    assert_ne!(new, old);
    assert!(
        proxy.metric(
            "redis_failover_proxy_sessions_closed_total",
            &[("reason", "master_switch")]
        ) >= 21.0
    );
    assert!(proxy.metric("redis_failover_proxy_fences_total", &[]) >= 1.0);
    eprintln!("all old sessions closed {all_closed:?} after the sentinels named the new master");
}

#[test]
fn clients_connecting_while_the_master_is_dead_are_held_then_served() {
    if !require("redis-sentinel") {
        return;
    }
    let mut t = Topology::start(1000);
    let proxy = Proxy::start_with(
        &t.sentinel_ports(),
        ProxyOpts {
            hold_timeout: "30s",
            ..Default::default()
        },
    );
    proxy.wait_ready();
    let old = t.nodes[0].port;
    let mut c = Client::connect(proxy.port);
    assert_eq!(c.cmd(&["SET", "survives", "yes"]).unwrap(), "+OK");
    assert_eq!(c.cmd(&["WAIT", "2", "5000"]).unwrap(), ":2");

    let killed = Instant::now();
    t.nodes[0].kill();
    // Clients arriving during the outage: before and after the sentinels notice.
    let mut held: Vec<std::thread::JoinHandle<(u16, String, Duration)>> = Vec::new();
    for _ in 0..5 {
        let port = proxy.port;
        held.push(std::thread::spawn(move || {
            let start = Instant::now();
            let mut c = Client::connect(port);
            let got = c.cmd(&["GET", "survives"]).expect("held client served");
            (c.node_port().expect("node port"), got, start.elapsed())
        }));
        std::thread::sleep(Duration::from_millis(200));
    }
    let new = t.wait_new_master(old);
    for h in held {
        let (port, got, waited) = h.join().expect("client thread");
        assert_eq!(port, new);
        assert_eq!(got, "yes");
        eprintln!("held client served after {waited:?}");
    }
    eprintln!(
        "outage seen by clients: master killed -> served by new master within {:?}",
        killed.elapsed()
    );
    assert!(proxy.metric("redis_failover_proxy_holds_total", &[("outcome", "routed")]) >= 1.0);
    assert_eq!(
        proxy.metric("redis_failover_proxy_connections_rejected_total", &[]),
        0.0
    );
}
