//! Who may move a route, against real processes: a sentinel of another group, or one restarted
//! from a pristine config, names an address the group has left; the proxy stays with the
//! group's verified master (the rules themselves are table-tested in src/sentinel/decide.rs).

mod support;

use std::time::Duration;

use support::*;

/// Waits until the proxy has run `n` more ROLE checks of its master: a window measured in the
/// proxy's own rounds.
fn wait_rounds(proxy: &Proxy, n: f64) {
    let start = proxy.metric("redis_failover_proxy_role_checks_total", &[]);
    proxy.wait_metric(
        Duration::from_secs(30),
        "the proxy keeps polling",
        "redis_failover_proxy_role_checks_total",
        &[],
        |v| v >= start + n,
    );
}

/// Four sentinels configured: three of group G name G's master at config-epoch 0; the fourth
/// belongs to group H, which monitors its own master under the same name and has failed over
/// once (config-epoch 1). The proxy routes to G's master and never fences it.
#[test]
fn a_sentinel_of_another_group_cannot_move_the_route() {
    if !require("redis-sentinel") {
        return;
    }
    let local = Host::local();
    let other = Topology::start_on(&[&local, &local], &[&local], 60_000);
    let h_master = other.failover_via(0);
    assert_eq!(
        other.sentinels[0]
            .master_fields()
            .and_then(|f| f.get("config-epoch").cloned()),
        Some("1".to_string())
    );
    let g = Topology::start(60_000);
    let mut ports = g.sentinel_ports();
    ports.push(other.sentinels[0].port);
    let proxy = Proxy::start_with(&ports, ProxyOpts::default());
    let g_master = format!("127.0.0.1:{}", g.nodes[0].port);
    proxy.wait_routes_to(&g_master);
    wait_rounds(&proxy, 10.0);
    assert_eq!(proxy.master().map(|m| m.1), Some(g_master));
    assert_eq!(proxy.metric("redis_failover_proxy_fences_total", &[]), 0.0);
    assert_eq!(
        proxy.metric("redis_failover_proxy_master_switches_total", &[]),
        1.0
    );
    // `check` applies the same rules.
    let dir = tempdir();
    let mut args = vec!["check".to_string()];
    for p in &ports {
        args.push("--sentinel".into());
        args.push(format!("127.0.0.1:{p}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = run_bin(dir.path(), &args);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("also named: 127.0.0.1:{h_master}"))
            && out.contains("not a candidate"),
        "{out}"
    );
}

/// After a failover A -> B (config-epoch 1) the sentinels die before A is demoted, and one comes
/// back from its pristine config naming A at config-epoch 0: the proxy keeps B, never routes
/// back to A, and logs the stale sentinel.
#[test]
fn a_sentinel_restarted_from_a_pristine_config_cannot_move_the_route_back() {
    let Some((mut t, proxy)) = ready_lab(|| Topology::start(60_000), ProxyOpts::default()) else {
        return;
    };
    let a = t.nodes[0].port;
    let b = t.failover();
    proxy.wait_routes_to(&format!("127.0.0.1:{b}"));
    let fences = proxy.metric("redis_failover_proxy_fences_total", &[]);
    for s in &mut t.sentinels {
        s.kill();
    }
    // A never heard it was demoted.
    redis_cmd(a, &["REPLICAOF", "NO", "ONE"]).expect("REPLICAOF NO ONE");
    assert_eq!(role_of(a), "master");
    t.sentinels[0].restart_pristine();
    wait_until(
        Duration::from_secs(10),
        "the pristine sentinel names A",
        || t.sentinels[0].master_port() == Some(a),
    );
    wait_until(Duration::from_secs(10), "stale sentinel logged", || {
        proxy.log().contains("stale sentinel")
    });
    wait_rounds(&proxy, 10.0);
    assert_eq!(proxy.master().map(|m| m.1), Some(format!("127.0.0.1:{b}")));
    assert_eq!(
        proxy.metric("redis_failover_proxy_fences_total", &[]),
        fences
    );
    let mut c = Client::connect(proxy.port);
    assert_eq!(c.node_port().expect("served"), b);
}

/// For the seconds after `kill -9` of the master, before the sentinels agree it is down, the
/// proxy says what it does: the master refuses, so `/status` says `untrusted`, `/readyz` is 503
/// and `master_verified` is 0 while new clients are held; all back once it answers again.
#[test]
fn a_master_that_refuses_is_reported_as_not_ready() {
    let Some((mut t, proxy)) = ready_lab(|| Topology::start(60_000), ProxyOpts::default()) else {
        return;
    };
    let master = t.nodes[0].port;
    t.nodes[0].kill();
    let took = wait_until(Duration::from_secs(10), "/readyz says not ready", || {
        proxy
            .http("/readyz")
            .is_some_and(|(code, body)| code == 503 && body.contains("is not answering"))
    });
    eprintln!("not ready {took:?} after kill -9");
    assert_eq!(proxy.status()["routes"][0]["state"], "untrusted");
    assert_eq!(
        proxy.metric("redis_failover_proxy_master_verified", &[]),
        0.0
    );
    t.nodes[0].restart(None);
    proxy.wait_ready();
    assert_eq!(proxy.status()["routes"][0]["state"], "routing");
    assert_eq!(
        proxy.metric("redis_failover_proxy_master_verified", &[]),
        1.0
    );
    let mut c = Client::connect(proxy.port);
    assert_eq!(c.node_port().expect("served"), master);
}

/// With the master and every sentinel dead, the proxy does not claim to route: within a few
/// polls `/readyz` is 503 and `master_verified` 0 (it used to stay `200 ready (degraded ...)`
/// with `master_verified` 1 while every client was held and reset).
#[test]
fn master_and_every_sentinel_dead_is_reported_as_not_ready() {
    let Some((mut t, proxy)) = ready_lab(|| Topology::start(60_000), ProxyOpts::default()) else {
        return;
    };
    assert_eq!(
        proxy.metric("redis_failover_proxy_master_verified", &[]),
        1.0
    );
    // The sentinels first, so none of them fails over.
    for s in &mut t.sentinels {
        s.kill();
    }
    t.nodes[0].kill();
    let killed = std::time::Instant::now();
    // Bound: the default poll_interval is 250 ms; a ROLE check runs every poll even with no
    // sentinel reachable, and a refused one distrusts the master.
    let bound = Duration::from_secs(5);
    wait_until(bound, "/readyz says not ready", || {
        proxy
            .http("/readyz")
            .is_some_and(|(code, body)| code == 503 && body.contains("is not answering"))
    });
    let not_ready = killed.elapsed();
    proxy.wait_metric(
        bound.saturating_sub(killed.elapsed()),
        "master_verified drops to 0",
        "redis_failover_proxy_master_verified",
        &[],
        |v| v == 0.0,
    );
    let unverified = killed.elapsed();
    eprintln!("master and sentinels dead: /readyz 503 after {not_ready:?}, master_verified 0 after {unverified:?}");
    let route = &proxy.status()["routes"][0];
    assert_eq!(route["state"], "untrusted");
    assert_eq!(route["sentinels_reachable"], 0);
    assert_eq!(route["sentinel_majority"], false);
}
