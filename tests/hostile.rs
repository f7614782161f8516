//! Hostile sentinels a real one cannot imitate, from a scripted fake (alone, or as a fourth
//! sentinel beside three real ones): the proxy stays up, routes nowhere it should not, bounds
//! the outage one sentinel can cause, counts and logs (escaped, throttled) what it ignores.

mod support;

use std::io::{BufReader, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::fake_sentinel::{read_command, serve_on_loopback, FakeSentinel, Script};
use support::*;

fn proxy_for(fake: &FakeSentinel) -> Proxy {
    Proxy::start_with(
        &[fake.port],
        ProxyOpts {
            hold_timeout: "300ms",
            ..Default::default()
        },
    )
}

fn assert_not_routing(proxy: &Proxy) {
    let (code, body) = proxy.http("/readyz").expect("admin answers");
    assert_eq!(code, 503, "{body}");
    assert_eq!(proxy.http("/healthz").map(|r| r.0), Some(200));
    let mut c = Client::connect(proxy.port);
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "held client not released"
    );
    assert_eq!(
        proxy.metric("redis_failover_proxy_master_switches_total", &[]),
        0.0
    );
}

#[test]
fn unspecified_address_is_never_routed_to() {
    let fake = FakeSentinel::start(Some(FakeSentinel::master_reply("0.0.0.0", "6379", "7")));
    let proxy = proxy_for(&fake);
    wait_until(Duration::from_secs(5), "rejection logged", || {
        proxy.log().contains("unspecified address")
    });
    assert_not_routing(&proxy);
}

#[test]
fn unresolvable_name_is_never_routed_to() {
    let fake = FakeSentinel::start(Some(FakeSentinel::master_reply(
        "no-such-host.invalid",
        "6379",
        "1",
    )));
    let proxy = proxy_for(&fake);
    wait_until(Duration::from_secs(10), "rejection logged", || {
        proxy.log().contains("cannot resolve")
    });
    assert_not_routing(&proxy);
}

#[test]
fn malformed_replies_are_counted_as_protocol_errors() {
    for reply in [
        b":42\r\n".to_vec(),
        b"*1\r\n$2\r\nip\r\n".to_vec(),
        FakeSentinel::master_reply("127.0.0.1", "99999", "1"),
        FakeSentinel::master_reply("127.0.0.1", "6379", "-5"),
        FakeSentinel::master_reply("bad host", "6379", "1"),
        b"-ERR something odd\r\n".to_vec(),
    ] {
        let fake = FakeSentinel::start(Some(reply.clone()));
        let proxy = proxy_for(&fake);
        proxy.wait_metric(
            Duration::from_secs(5),
            "protocol error counted",
            "redis_failover_proxy_sentinel_errors_total",
            &[("kind", "protocol")],
            |v| v >= 2.0,
        );
        assert_not_routing(&proxy);
        assert!(
            !proxy.log().contains("panicked"),
            "reply {:?}",
            String::from_utf8_lossy(&reply)
        );
    }
}

#[test]
fn a_silent_sentinel_times_out_without_stalling_the_proxy() {
    let fake = FakeSentinel::start(None);
    let proxy = proxy_for(&fake);
    let start = Instant::now();
    proxy.wait_metric(
        Duration::from_secs(10),
        "timeout counted",
        "redis_failover_proxy_sentinel_errors_total",
        &[("kind", "timeout")],
        |v| v >= 1.0,
    );
    eprintln!("silent sentinel detected after {:?}", start.elapsed());
    assert_not_routing(&proxy);
}

/// A converged 3+3 topology that never fails over on its own, a scripted fake as a fourth
/// sentinel (its script made from the master's port), and a ready proxy asking all four.
fn lab_with_fake(script: impl FnOnce(u16) -> Script) -> Option<(Topology, FakeSentinel, Proxy)> {
    if !require("redis-sentinel") {
        return None;
    }
    let t = Topology::start(60_000);
    let fake = FakeSentinel::scripted(script(t.nodes[0].port));
    let mut ports = t.sentinel_ports();
    ports.push(fake.port);
    let proxy = Proxy::start_with(&ports, ProxyOpts::default());
    proxy.wait_ready();
    Some((t, fake, proxy))
}

/// Waits until the fake has answered `n` more polls: a bounded observation window measured in
/// the proxy's own rounds, not in wall-clock sleeps.
fn wait_polls(fake: &FakeSentinel, n: usize) {
    let start = fake.queries.load(Ordering::Relaxed);
    wait_until(Duration::from_secs(30), "the proxy polls the fake", || {
        fake.queries.load(Ordering::Relaxed) >= start + n
    });
}

fn honest(master_port: u16) -> Vec<u8> {
    FakeSentinel::master_reply("127.0.0.1", &master_port.to_string(), "0")
}

#[test]
fn one_sentinel_claiming_a_failover_forever_costs_at_most_a_failover_timeout() {
    let Some((t, fake, proxy)) = lab_with_fake(|p| Script {
        master_reply: Some(honest(p)),
        ..Default::default()
    }) else {
        return;
    };
    let port = t.nodes[0].port.to_string();
    fake.set_reply(FakeSentinel::master_reply_flags(
        "127.0.0.1",
        &port,
        "0",
        "master,failover_in_progress",
    ));
    proxy.wait_metric(
        Duration::from_secs(10),
        "the lone claim fences at once",
        "redis_failover_proxy_fences_total",
        &[("reason", "failover_started")],
        |v| v >= 1.0,
    );
    // The group's failover-timeout is 6 s: after it, the claim is dismissed and the master
    // (still named by the three real sentinels, still ROLE master) is routed to again.
    let took = proxy.wait_metric(
        Duration::from_secs(20),
        "routing resumes after the failover-timeout",
        "redis_failover_proxy_master_switches_total",
        &[],
        |v| v >= 2.0,
    );
    eprintln!("lone failover claim: routing again after {took:?}");
    assert!(took < Duration::from_secs(12), "{took:?}");
    assert!(proxy.log().contains("longer than the failover-timeout"));
    wait_polls(&fake, 10);
    assert_eq!(
        proxy.metric("redis_failover_proxy_fences_total", &[]),
        1.0,
        "the dismissed claim fenced again"
    );
    let mut c = Client::connect(proxy.port);
    assert_eq!(c.cmd(&["PING"]).unwrap(), "+PONG");
}

#[test]
fn forged_failover_events_cut_sessions_once() {
    let Some((t, fake, proxy)) = lab_with_fake(|p| Script {
        master_reply: Some(honest(p)),
        events: vec![
            (
                "+switch-master".into(),
                format!("redis-ha 127.0.0.1 {p} 127.0.0.1 1"),
            ),
            (
                "+failover-state-send-slaveof-noone".into(),
                format!("master redis-ha 127.0.0.1 {p} @ redis-ha 127.0.0.1 {p}"),
            ),
        ],
        event_every: Duration::from_millis(10),
        ..Default::default()
    }) else {
        return;
    };
    let master = format!("127.0.0.1:{}", t.nodes[0].port);
    proxy.wait_routes_to(&master);
    let sent = fake.events_sent.load(Ordering::Relaxed);
    let mut c = Client::connect(proxy.port);
    assert_eq!(c.cmd(&["PING"]).unwrap(), "+PONG");
    wait_until(Duration::from_secs(30), "300 more forged events", || {
        fake.events_sent.load(Ordering::Relaxed) >= sent + 300
    });
    assert_eq!(
        c.cmd(&["PING"]).unwrap(),
        "+PONG",
        "a session opened after the first forged event was cut"
    );
    let fences = proxy.metric("redis_failover_proxy_fences_total", &[]);
    eprintln!(
        "forged events: {} sent, {fences} fences",
        fake.events_sent.load(Ordering::Relaxed)
    );
    assert!(fences <= 2.0, "{fences} fences");
    assert!(
        proxy.metric(
            "redis_failover_proxy_sentinel_events_ignored_total",
            &[("why", "repeat")]
        ) >= 100.0
    );
}

#[test]
fn a_sentinel_far_ahead_of_the_others_moves_nothing() {
    let Some((t, fake, proxy)) = lab_with_fake(|p| Script {
        master_reply: Some(honest(p)),
        ..Default::default()
    }) else {
        return;
    };
    let master = format!("127.0.0.1:{}", t.nodes[0].port);
    let replica = t.nodes[1].port.to_string();
    fake.set_reply(FakeSentinel::master_reply("127.0.0.1", &replica, "5000"));
    wait_until(Duration::from_secs(10), "set aside logged", || {
        proxy.log().contains("far ahead of every other view")
    });
    fake.set_reply(FakeSentinel::master_reply(
        "127.0.0.1",
        &replica,
        &u64::MAX.to_string(),
    ));
    proxy.wait_metric(
        Duration::from_secs(10),
        "u64::MAX refused as a protocol error",
        "redis_failover_proxy_sentinel_errors_total",
        &[("kind", "protocol")],
        |v| v >= 1.0,
    );
    wait_polls(&fake, 5);
    assert_eq!(proxy.master().map(|m| m.1), Some(master));
    assert_eq!(proxy.metric("redis_failover_proxy_fences_total", &[]), 0.0);
}

#[test]
fn event_floods_do_not_become_query_floods() {
    let Some((t, fake, proxy)) = lab_with_fake(|p| Script {
        master_reply: Some(honest(p)),
        events: vec![(
            "+promoted-slave".into(),
            format!("slave 127.0.0.1:1 127.0.0.1 1 @ redis-ha 127.0.0.1 {p}"),
        )],
        event_every: Duration::ZERO,
        ..Default::default()
    }) else {
        return;
    };
    let _ = t;
    let (q0, e0, start) = (
        fake.queries.load(Ordering::Relaxed),
        fake.events_sent.load(Ordering::Relaxed),
        Instant::now(),
    );
    wait_until(
        Duration::from_secs(60),
        "20,000 more events over 3 s",
        || {
            fake.events_sent.load(Ordering::Relaxed) >= e0 + 20_000
                && start.elapsed() >= Duration::from_secs(3)
        },
    );
    let secs = start.elapsed().as_secs_f64();
    let queries = (fake.queries.load(Ordering::Relaxed) - q0) as f64;
    let events = fake.events_sent.load(Ordering::Relaxed) - e0;
    eprintln!(
        "event flood: {events} events in {secs:.2} s, {queries} polls ({:.1}/s)",
        queries / secs
    );
    // At most one early round per 100 ms, plus the regular polls (250 ms here).
    assert!(queries / secs <= 15.0, "{queries} polls in {secs:.2} s");
    assert_eq!(proxy.http("/readyz").map(|r| r.0), Some(200));
    // Measured on a live subscription, not one the flood had cut.
    assert_eq!(
        proxy.status()["routes"][0]["sentinels"][3]["subscribed"],
        serde_json::Value::Bool(true)
    );
}

#[test]
fn a_stream_of_failover_events_about_other_masters_does_not_stop_the_watcher() {
    let Some((t, _fake, proxy)) = lab_with_fake(|p| Script {
        master_reply: Some(honest(p)),
        events: vec![
            (
                "+switch-master".into(),
                "redis-ha 10.9.9.9 1 10.9.9.8 2".into(),
            ),
            (
                "+failover-state-send-slaveof-noone".into(),
                "master redis-ha 10.9.9.9 1 @ redis-ha 10.9.9.9 1".into(),
            ),
        ],
        event_every: Duration::ZERO,
        ..Default::default()
    }) else {
        return;
    };
    // Every round must still finish: a real failover among the real sentinels is followed.
    let new = t.failover();
    let start = Instant::now();
    // The flood keeps a core busy (the fake sentinel in this process sends ~10,000 events/s and
    // the proxy reads them): on 2 cores shared with other tests a round can take seconds longer
    // than usual, so the deadline is generous; the time taken is printed.
    proxy.wait_routes_to_within(&format!("127.0.0.1:{new}"), Duration::from_secs(30));
    eprintln!(
        "failover followed under an event stream in {:?}",
        start.elapsed()
    );
    let log = proxy.log();
    assert!(
        log.matches("+switch-master received").count() < 100,
        "events that change nothing flood the log"
    );
}

#[test]
fn malformed_event_floods_are_counted_not_logged_line_by_line() {
    let Some((_t, fake, proxy)) = lab_with_fake(|_| Script {
        master_reply: None,
        events: vec![(
            "+switch-master".into(),
            "garbage\n2026-12-02T00:00:00Z ERROR forged line \u{1b}[31m".into(),
        )],
        event_every: Duration::ZERO,
        ..Default::default()
    }) else {
        return;
    };
    wait_until(Duration::from_secs(60), "5,000 malformed events", || {
        fake.events_sent.load(Ordering::Relaxed) >= 5_000
    });
    proxy.wait_metric(
        Duration::from_secs(30),
        "malformed events counted",
        "redis_failover_proxy_sentinel_events_ignored_total",
        &[("why", "malformed")],
        |v| v >= 1_000.0,
    );
    let log = proxy.log();
    let lines = log.matches("malformed sentinel event ignored").count();
    assert!(lines <= 5, "{lines} log lines for the flood");
    assert!(
        !log.lines()
            .any(|l| l.starts_with("2026-12-02T00:00:00Z ERROR forged")),
        "a newline in an event forged a log line"
    );
    assert!(!log.contains('\u{1b}'), "an escape code reached the log");
}

#[test]
fn peer_text_is_escaped_in_check_and_status() {
    let fake = FakeSentinel::start(Some(FakeSentinel::master_reply_flags(
        "127.0.0.1",
        "1",
        "0",
        "master\n\u{1b}[2Jforged",
    )));
    let dir = tempdir();
    let sentinel = format!("127.0.0.1:{}", fake.port);
    let (_, out, err) = run_bin(dir.path(), &["check", "--sentinel", &sentinel]);
    assert!(
        !out.contains('\u{1b}') && !err.contains('\u{1b}'),
        "{out:?}"
    );
    assert!(!out.lines().any(|l| l.starts_with("forged")), "{out}");
    assert!(out.contains("\\u{1b}"), "{out}");
}

#[test]
fn oversized_replies_and_events_are_dropped_not_buffered() {
    // Each declares 2 GiB and sends nothing more: buffering or pre-allocating it would show in
    // RSS. One fake sends oversized replies (and honest-sized events: none); the other answers
    // polls with a small error reply and sends an oversized event on every subscription, so
    // the two paths are counted apart by the `sentinel` label.
    let huge_reply = b"*2\r\n$2\r\nip\r\n$2147483648\r\n".to_vec();
    let huge_event =
        b"*3\r\n$7\r\nmessage\r\n$14\r\n+switch-master\r\n$2147483648\r\nredis-ha ".to_vec();
    let polls = FakeSentinel::start(Some(huge_reply));
    let events = FakeSentinel::scripted(Script {
        master_reply: Some(b"-ERR not a master reply\r\n".to_vec()),
        raw_after_subscribe: Some(huge_event),
        ..Default::default()
    });
    let proxy = Proxy::start_with(
        &[polls.port, events.port],
        ProxyOpts {
            hold_timeout: "300ms",
            ..Default::default()
        },
    );
    let (by_poll, by_event) = (
        format!("127.0.0.1:{}", polls.port),
        format!("127.0.0.1:{}", events.port),
    );
    let errors = "redis_failover_proxy_sentinel_errors_total";
    proxy.wait_metric(
        Duration::from_secs(10),
        "oversized replies counted",
        errors,
        &[("sentinel", &by_poll), ("kind", "oversized")],
        |v| v >= 3.0,
    );
    // Resubscribing backs off 200 ms, 400 ms, 800 ms ...: three drops within ~2 s.
    proxy.wait_metric(
        Duration::from_secs(10),
        "oversized events counted",
        errors,
        &[("sentinel", &by_event), ("kind", "oversized")],
        |v| v >= 3.0,
    );
    // The event sentinel's polls are protocol errors, never oversized; its dropped
    // subscriptions are oversized, not "subscription".
    assert!(proxy.metric(errors, &[("sentinel", &by_event), ("kind", "protocol")]) >= 1.0);
    assert_eq!(
        proxy.metric(errors, &[("sentinel", &by_event), ("kind", "subscription")]),
        0.0
    );
    assert!(
        proxy
            .log()
            .contains("+switch-master subscription dropped: message too large"),
        "{}",
        proxy.log()
    );
    let rss = rss_kib(proxy.pid());
    eprintln!(
        "oversized: {} by poll, {} by event, RSS {rss} KiB",
        proxy.metric(errors, &[("sentinel", &by_poll), ("kind", "oversized")]),
        proxy.metric(errors, &[("sentinel", &by_event), ("kind", "oversized")])
    );
    assert!(rss < 100 * 1024, "RSS {rss} KiB");
    assert_not_routing(&proxy);
}

/// A "node" that answers `ROLE` with a 2 GiB string it never sends (and `+OK` to anything
/// else), keeping the connection open; counts what it was asked.
struct HugeRoleNode {
    port: u16,
    roles: Arc<AtomicUsize>,
    others: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl HugeRoleNode {
    fn start() -> HugeRoleNode {
        let roles = Arc::new(AtomicUsize::new(0));
        let others = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, o) = (roles.clone(), others.clone());
        let port = serve_on_loopback(stop.clone(), move |conn| {
            let Ok(mut w) = conn.try_clone() else { return };
            let mut reader = BufReader::new(conn);
            while let Some(args) = read_command(&mut reader) {
                let reply: &[u8] = if args.first().is_some_and(|a| a.eq_ignore_ascii_case("ROLE")) {
                    r.fetch_add(1, Ordering::Relaxed);
                    b"*3\r\n$6\r\nmaster\r\n:0\r\n*1\r\n$2147483648\r\n"
                } else {
                    o.fetch_add(1, Ordering::Relaxed);
                    b"+OK\r\n"
                };
                if w.write_all(reply).is_err() {
                    return;
                }
            }
        });
        HugeRoleNode {
            port,
            roles,
            others,
            stop,
        }
    }
}

impl Drop for HugeRoleNode {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn an_oversized_role_reply_is_dropped_counted_and_never_routed_to() {
    let node = HugeRoleNode::start();
    let fake = FakeSentinel::start(Some(FakeSentinel::master_reply(
        "127.0.0.1",
        &node.port.to_string(),
        "1",
    )));
    let proxy = proxy_for(&fake);
    let took = proxy.wait_metric(
        Duration::from_secs(10),
        "oversized ROLE replies counted",
        "redis_failover_proxy_node_check_errors_total",
        &[("kind", "oversized")],
        |v| v >= 5.0,
    );
    let checks = proxy.metric(
        "redis_failover_proxy_role_checks_total",
        &[("result", "error")],
    );
    let rss = rss_kib(proxy.pid());
    eprintln!(
        "oversized ROLE: 5 counted in {took:?}, {} ROLE asked, {checks} failed checks, RSS {rss} KiB",
        node.roles.load(Ordering::Relaxed)
    );
    assert!(rss < 100 * 1024, "RSS {rss} KiB");
    assert!(checks >= 5.0, "{checks}");
    assert_eq!(
        proxy.metric(
            "redis_failover_proxy_role_checks_total",
            &[("result", "master")]
        ),
        0.0
    );
    let status = proxy.status();
    let last = status["routes"][0]["last_node_error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        last.contains(&format!("node 127.0.0.1:{}", node.port)) && last.contains("too large"),
        "{status}"
    );
    // One warning for the episode, however many checks failed.
    let log = proxy.log();
    let warnings = log
        .lines()
        .filter(|l| l.contains("ROLE check failed") && !l.contains("failed again"))
        .count();
    assert_eq!(warnings, 1, "{log}");
    assert_not_routing(&proxy);
    // No session was ever spliced to it: it was only ever asked ROLE.
    assert_eq!(node.others.load(Ordering::Relaxed), 0);
}

#[test]
fn a_silent_sentinel_does_not_slow_the_rounds() {
    let Some((_t, _fake, proxy)) = lab_with_fake(|_| Script {
        master_reply: None,
        ..Default::default()
    }) else {
        return;
    };
    // Rounds every 250 ms once a majority (3 of 4) has answered; waiting for the silent one's
    // timeout (2 x 500 ms) would make them 1.25 s apart.
    let start = proxy.metric("redis_failover_proxy_role_checks_total", &[]);
    let took = proxy.wait_metric(
        Duration::from_secs(20),
        "eight more rounds",
        "redis_failover_proxy_role_checks_total",
        &[],
        |v| v >= start + 8.0,
    );
    eprintln!("eight rounds beside a silent sentinel in {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let last = proxy.status()["routes"][0]["sentinels"][3]["last_error"].clone();
    assert!(
        last.as_str().is_some_and(|e| e.contains("no answer")),
        "{last}"
    );
}
