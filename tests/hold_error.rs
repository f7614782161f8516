//! A held client that is sent away without a session (hold timeout, shutdown) gets one RESP
//! error line naming the route and why, then an orderly close (EOF, not a reset). Against real
//! redis-server / redis-sentinel processes and the proxy binary.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";

/// Connects to the proxy and sends PING (the client has data in flight when it is sent away).
fn ping(proxy: &Proxy) -> TcpStream {
    let mut c = TcpStream::connect(proxy.addr()).expect("connect to the proxy");
    c.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    c.write_all(PING).expect("send PING");
    c
}

/// Everything the proxy sends until it closes; panics on a reset or a timeout.
fn read_until_eof(mut c: TcpStream) -> String {
    let mut got = Vec::new();
    c.read_to_end(&mut got)
        .expect("an orderly close (EOF) after the error, not a reset or a timeout");
    String::from_utf8_lossy(&got).into_owned()
}

fn assert_hold_error(reply: &str, route: &str, why: &str) {
    let prefix = format!("-ERR redis-failover-proxy: route {route}: {why}; held ");
    assert!(
        reply.starts_with(&prefix)
            && reply.ends_with("s\r\n")
            && reply.matches("\r\n").count() == 1,
        "expected one line {prefix}...s, got {reply:?}"
    );
}

#[test]
fn a_held_client_whose_hold_times_out_gets_an_error_then_eof() {
    if !require("redis-sentinel") {
        return;
    }
    let t = Topology::single();
    // The sentinels do not know this master name: the route never gets a master.
    let proxy = Proxy::start_with(
        &t.sentinel_ports(),
        ProxyOpts {
            master: "no-such-master",
            hold_timeout: "1s",
            ..Default::default()
        },
    );
    let start = Instant::now();
    let reply = read_until_eof(ping(&proxy));
    assert_hold_error(
        &reply,
        "no-such-master",
        "no verified master (no master known)",
    );
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "sent away before the hold timeout: {:?}",
        start.elapsed()
    );
    proxy.wait_metric(
        Duration::from_secs(5),
        "the hold counted as timed out",
        "redis_failover_proxy_holds_total",
        &[("outcome", "timed_out")],
        |v| v >= 1.0,
    );
}

#[test]
fn a_held_client_of_a_master_that_died_with_no_failover_possible_hears_why() {
    let Some((mut t, proxy)) = ready_lab(
        || Topology::start(1000),
        ProxyOpts {
            hold_timeout: "2s",
            ..Default::default()
        },
    ) else {
        return;
    };
    let master = t.master_port().expect("a master");
    // One sentinel of three left: no quorum, so no failover can start or complete.
    t.sentinels[1].kill();
    t.sentinels[2].kill();
    t.node_by_port(master).kill();
    // The proxy notices (a failed ROLE check) and holds new clients.
    wait_until(
        Duration::from_secs(20),
        "the route's master is no longer trusted",
        || proxy.status()["routes"][0]["state"] != "routing",
    );
    let reply = read_until_eof(ping(&proxy));
    let route = MASTER_NAME;
    assert!(
        reply.starts_with(&format!("-ERR redis-failover-proxy: route {route}: ")),
        "{reply:?}"
    );
    assert!(
        reply.contains("master not answering") || reply.contains("no verified master ("),
        "{reply:?}"
    );
    assert!(
        reply.ends_with("s\r\n") && reply.matches("\r\n").count() == 1,
        "{reply:?}"
    );
}

#[test]
fn a_client_held_at_shutdown_gets_an_error_then_eof() {
    if !require("redis-sentinel") {
        return;
    }
    let t = Topology::single();
    let mut proxy = Proxy::start_with(
        &t.sentinel_ports(),
        ProxyOpts {
            master: "no-such-master",
            hold_timeout: "60s",
            ..Default::default()
        },
    );
    let client = ping(&proxy);
    proxy.wait_metric(
        Duration::from_secs(10),
        "the client is held",
        "redis_failover_proxy_connections_held",
        &[],
        |v| v >= 1.0,
    );
    proxy.signal("TERM");
    let reply = read_until_eof(client);
    assert_hold_error(
        &reply,
        "no-such-master",
        "no verified master (shutting down)",
    );
    assert_eq!(proxy.wait_exit(Duration::from_secs(20)), Some(0));
}
