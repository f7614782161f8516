//! The core path against real redis-server and redis-sentinel processes.

mod support;

use std::time::{Duration, Instant};

use support::*;

#[test]
fn traffic_flows_to_the_master() {
    let Some((t, proxy)) = ready_lab(|| Topology::start(5000), ProxyOpts::default()) else {
        return;
    };
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
    let Some((t, proxy)) = ready_lab(|| Topology::start(5000), ProxyOpts::default()) else {
        return;
    };
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

#[test]
fn one_sentinel_down_still_follows_a_failover() {
    let Some((mut t, proxy)) = ready_lab(|| Topology::start(5000), ProxyOpts::default()) else {
        return;
    };
    t.sentinels[0].kill();
    proxy.wait_metric(
        Duration::from_secs(10),
        "proxy sees 2 sentinels",
        "redis_failover_proxy_sentinels_reachable",
        &[],
        |v| v == 2.0,
    );
    let mut old_session = Client::connect(proxy.port);
    assert_eq!(old_session.cmd(&["PING"]).unwrap(), "+PONG");
    let new = t.failover_via(1);
    assert!(old_session.closed_within(Duration::from_secs(5)));
    proxy.wait_routes_to(&format!("127.0.0.1:{new}"));
    assert_eq!(Client::connect(proxy.port).node_port().unwrap(), new);
    assert!(
        proxy.metric(
            "redis_failover_proxy_sentinel_errors_total",
            &[("sentinel", &format!("127.0.0.1:{}", t.sentinels[0].port))]
        ) >= 1.0
    );
}

#[test]
fn old_master_restarting_is_never_routed_to() {
    let Some((mut t, proxy)) = ready_lab(|| Topology::start(2000), ProxyOpts::default()) else {
        return;
    };
    let old = t.nodes[0].port;
    t.nodes[0].kill();
    let new = t.wait_new_master(old);
    proxy.wait_routes_to(&format!("127.0.0.1:{new}"));

    // The old master comes back the way its config says: as an empty master (ROLE says
    // master) until the sentinels turn it into a replica of the new one.
    t.nodes[0].restart(None);
    let mut probes = 0;
    wait_until(
        Duration::from_secs(30),
        "sentinels turn the old master into a replica",
        || {
            let mut c = Client::connect(proxy.port);
            let reached = c.node_port();
            // The sentinels may, rarely, fail over again and pick the old node once it is a
            // replica; only then may a client reach it.
            if reached.as_ref().is_ok_and(|p| *p == old) {
                assert_eq!(
                    t.master_port(),
                    Some(old),
                    "a client reached the old master"
                );
            }
            probes += 1;
            role_of(old) == "slave"
        },
    );
    for _ in 0..20 {
        let reached = Client::connect(proxy.port).node_port().unwrap();
        assert_eq!(Some(reached), t.master_port());
    }
    eprintln!("{probes} probes during the old master's return never reached it as master");
}

#[test]
fn all_sentinels_down_keeps_the_last_master_and_rechecks_role() {
    let Some((mut t, proxy)) = ready_lab(|| Topology::start(5000), ProxyOpts::default()) else {
        return;
    };
    let mut session = Client::connect(proxy.port);
    assert_eq!(session.cmd(&["PING"]).unwrap(), "+PONG");
    for s in &mut t.sentinels {
        s.kill();
    }
    proxy.wait_metric(
        Duration::from_secs(10),
        "proxy sees no sentinel",
        "redis_failover_proxy_sentinels_reachable",
        &[],
        |v| v == 0.0,
    );
    let (code, body) = proxy.http("/readyz").unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("no sentinel reachable"), "{body}");
    assert_eq!(
        session.cmd(&["PING"]).unwrap(),
        "+PONG",
        "existing session kept"
    );
    assert_eq!(
        Client::connect(proxy.port).node_port().unwrap(),
        t.nodes[0].port
    );
    assert!(proxy.log().contains("no sentinel reachable"));

    // With no sentinel to ask, ROLE is the only evidence: demote the master by hand.
    let replica_of = t.nodes[1].port.to_string();
    redis_cmd(t.nodes[0].port, &["REPLICAOF", "127.0.0.1", &replica_of]).unwrap();
    assert!(
        session.closed_within(Duration::from_secs(5)),
        "session to a demoted master kept"
    );
    wait_until(Duration::from_secs(5), "readyz turns 503", || {
        proxy.http("/readyz").is_some_and(|(c, _)| c == 503)
    });
    assert_eq!(
        proxy.metric(
            "redis_failover_proxy_fences_total",
            &[("reason", "role_replica")]
        ),
        1.0
    );
}

#[test]
fn a_thousand_sessions_are_fenced_promptly() {
    let Some((t, proxy)) = ready_lab(|| Topology::start(5000), ProxyOpts::default()) else {
        return;
    };
    let mut sessions: Vec<Client> = (0..1000).map(|_| Client::connect(proxy.port)).collect();
    for s in &mut sessions {
        assert_eq!(s.cmd(&["PING"]).unwrap(), "+PONG");
    }
    wait_until(Duration::from_secs(5), "1000 sessions open", || {
        proxy.status()["routes"][0]["master"]["sessions"].as_u64() == Some(1000)
    });
    t.failover();
    for s in &mut sessions {
        assert!(
            s.closed_within(Duration::from_secs(5)),
            "old session not closed"
        );
    }
    let mean_ms = proxy.assert_one_prompt_fence(1000);
    eprintln!("fence of 1000 sessions: {mean_ms:.2} ms from evidence to the last session closed");
}
