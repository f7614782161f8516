//! The proxy's life cycle against real processes: SIGHUP reloads (kept, changed, added and
//! removed routes, rejected files, a reload during a failover), the signals that must not kill
//! it, and the systemd notifications.

mod support;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use support::*;

const RELOADS: &str = "redis_failover_proxy_config_reloads_total";
const CLOSED: &str = "redis_failover_proxy_sessions_closed_total";

fn config_text(proxy: &Proxy) -> String {
    std::fs::read_to_string(proxy.config_path()).expect("proxy.toml")
}

/// The route named `name` in /status.
fn route_status(proxy: &Proxy, name: &str) -> Option<serde_json::Value> {
    proxy.status()["routes"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == name)
        .cloned()
}

fn sentinel_list(ports: &[u16]) -> String {
    let quoted: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    format!("addresses = [{}]", quoted.join(", "))
}

fn log_lines(proxy: &Proxy, needle: &str) -> usize {
    proxy.log().lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn an_unchanged_route_keeps_its_session_and_its_master_across_sighup() {
    let Some((t, proxy)) = ready_lab(|| Topology::start(5000), ProxyOpts::default()) else {
        return;
    };
    assert_eq!(proxy.metric(RELOADS, &[("result", "ok")]), 0.0);
    assert_eq!(proxy.metric(RELOADS, &[("result", "error")]), 0.0);
    let started = proxy.metric(
        "redis_failover_proxy_config_last_reload_success_timestamp_seconds",
        &[],
    );
    assert!(started > 0.0, "set at start: {started}");
    let mut c = Client::connect(proxy.port);
    assert_eq!(c.cmd(&["SET", "k", "before"]).unwrap(), "+OK");
    let (epoch, addr) = proxy.master().expect("master");

    // Only the admin address changes: that needs a restart, the route is kept.
    let text = config_text(&proxy);
    let moved_admin = text.replace(
        &format!("127.0.0.1:{}", proxy.admin),
        &format!("127.0.0.1:{}", free_port()),
    );
    assert_ne!(text, moved_admin);
    proxy.reload(&moved_admin);
    assert_eq!(proxy.metric(RELOADS, &[("result", "ok")]), 1.0);
    assert!(
        proxy.metric(
            "redis_failover_proxy_config_last_reload_success_timestamp_seconds",
            &[]
        ) >= started
    );
    let log = proxy.log();
    assert!(
        log.lines()
            .any(|l| l.contains("configuration reloaded") && l.contains("kept=1")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("needs a restart") && l.contains("admin listen address")),
        "{log}"
    );
    // The same session goes on, on the same master, in the same epoch.
    assert_eq!(c.cmd(&["GET", "k"]).unwrap(), "before");
    assert_eq!(c.cmd(&["SET", "k", "after"]).unwrap(), "+OK");
    assert_eq!(c.node_port().unwrap(), t.nodes[0].port);
    assert_eq!(proxy.master(), Some((epoch, addr)));
    assert_eq!(proxy.metric(CLOSED, &[]), 0.0);
}

#[test]
fn a_changed_sentinel_list_applies_without_a_restart() {
    if !require("redis-sentinel") {
        return;
    }
    let t = Topology::start(5000);
    let real = t.sentinel_ports();
    let dead = free_port();
    let mut with_dead = real.clone();
    with_dead.push(dead);
    let proxy = Proxy::start_with(&with_dead, ProxyOpts::default());
    proxy.wait_ready();
    let route = route_status(&proxy, MASTER_NAME).expect("route");
    assert_eq!(route["sentinels"].as_array().unwrap().len(), 4);
    let mut c = Client::connect(proxy.port);
    assert_eq!(c.cmd(&["SET", "k", "v"]).unwrap(), "+OK");
    let master = proxy.master();

    let text = config_text(&proxy);
    let old_line = text
        .lines()
        .find(|l| l.starts_with("addresses"))
        .expect("addresses line")
        .to_string();
    proxy.reload(&text.replace(&old_line, &sentinel_list(&real)));
    assert_eq!(proxy.metric(RELOADS, &[("result", "ok")]), 1.0);
    wait_until(
        Duration::from_secs(10),
        "/status lists the 3 sentinels, all reachable",
        || {
            route_status(&proxy, MASTER_NAME).is_some_and(|r| {
                let s = r["sentinels"].as_array().cloned().unwrap_or_default();
                s.len() == 3
                    && s.iter().all(|s| s["reachable"] == true)
                    && !s
                        .iter()
                        .any(|s| s["address"] == format!("127.0.0.1:{dead}").as_str())
            })
        },
    );
    assert_eq!(
        proxy.metric(
            "redis_failover_proxy_sentinels_configured",
            &[("route", MASTER_NAME)]
        ),
        3.0
    );
    let log = proxy.log();
    assert!(
        log.lines().any(|l| l.contains("configuration reloaded")
            && l.contains("changed=1")
            && l.contains("sentinel.addresses")),
        "{log}"
    );
    // The master and the session stay.
    assert_eq!(proxy.master(), master);
    assert_eq!(c.cmd(&["GET", "k"]).unwrap(), "v");
    proxy.wait_ready();
}

#[test]
fn a_changed_connection_limit_applies_to_the_next_client() {
    let opts = ProxyOpts {
        max_connections: 1,
        ..Default::default()
    };
    let Some((_t, proxy)) = ready_lab(|| Topology::start(5000), opts) else {
        return;
    };
    let mut first = Client::connect(proxy.port);
    assert_eq!(first.cmd(&["PING"]).unwrap(), "+PONG");
    let mut second = Client::connect(proxy.port);
    assert!(
        second.closed_within(Duration::from_secs(5)),
        "over the limit of 1"
    );
    let text = config_text(&proxy);
    proxy.reload(&text.replace("max_connections = 1\n", "max_connections = 2\n"));
    assert_eq!(proxy.metric(RELOADS, &[("result", "ok")]), 1.0);
    let mut third = Client::connect(proxy.port);
    assert_eq!(third.cmd(&["PING"]).unwrap(), "+PONG");
    assert_eq!(first.cmd(&["PING"]).unwrap(), "+PONG");
    let mut fourth = Client::connect(proxy.port);
    assert!(
        fourth.closed_within(Duration::from_secs(5)),
        "over the new limit of 2"
    );
}

#[test]
fn a_changed_hold_timeout_applies_to_the_next_held_client() {
    // No sentinel answers: every client is held.
    let dead = free_port();
    let proxy = Proxy::start_with(
        &[dead],
        ProxyOpts {
            hold_timeout: "60s",
            ..Default::default()
        },
    );
    let mut early = Client::connect(proxy.port);
    assert!(
        !early.closed_within(Duration::from_millis(500)),
        "held for up to 60 s"
    );
    let text = config_text(&proxy);
    proxy.reload(&text.replace("hold_timeout = \"60s\"", "hold_timeout = \"300ms\""));
    assert_eq!(proxy.metric(RELOADS, &[("result", "ok")]), 1.0);
    let started = Instant::now();
    let mut late = Client::connect(proxy.port);
    assert!(
        late.closed_within(Duration::from_secs(5)),
        "closed after the new hold timeout"
    );
    assert!(started.elapsed() >= Duration::from_millis(250));
    // A client held before the reload keeps the deadline it was given.
    assert!(!early.closed_within(Duration::from_millis(200)));
    proxy.wait_metric(
        Duration::from_secs(5),
        "the late client timed out",
        "redis_failover_proxy_connections_rejected_total",
        &[("reason", "hold_timeout")],
        |v| v >= 1.0,
    );
}

#[test]
fn added_routes_start_and_removed_routes_stop_with_their_sessions() {
    let Some((t, proxy)) = ready_lab(|| Topology::start(5000), ProxyOpts::default()) else {
        return;
    };
    assert_eq!(proxy.metric(CLOSED, &[("reason", "route_removed")]), 0.0);
    let second_port = free_port();
    let original = config_text(&proxy);
    let second =
        format!("[[route]]\nname = \"second\"\nmaster = \"{MASTER_NAME}\"\nlisten = \"127.0.0.1:{second_port}\"\n");
    proxy.reload(&format!("{original}{second}"));
    assert_eq!(proxy.metric(RELOADS, &[("result", "ok")]), 1.0);
    wait_until(
        Duration::from_secs(10),
        "the added route has a master",
        || route_status(&proxy, "second").is_some_and(|r| r["master"]["addr"].is_string()),
    );
    let mut on_second = Client::connect(second_port);
    assert_eq!(on_second.cmd(&["SET", "k", "second"]).unwrap(), "+OK");
    assert_eq!(on_second.node_port().unwrap(), t.nodes[0].port);
    let mut on_first = Client::connect(proxy.port);
    assert_eq!(on_first.cmd(&["GET", "k"]).unwrap(), "second");

    // Remove the first route: only "second" stays.
    let start = original.find("[[route]]").expect("route table");
    let end = original.find("[runtime]").expect("runtime table");
    let without_first = format!("{}{}{second}", &original[..start], &original[end..]);
    proxy.reload(&without_first);
    assert_eq!(proxy.metric(RELOADS, &[("result", "ok")]), 2.0);
    assert!(
        on_first.closed_within(Duration::from_secs(5)),
        "the removed route's session is closed"
    );
    wait_until(
        Duration::from_secs(5),
        "the removed route no longer accepts",
        || std::net::TcpStream::connect(("127.0.0.1", proxy.port)).is_err(),
    );
    assert_eq!(proxy.metric(CLOSED, &[("reason", "route_removed")]), 1.0);
    assert!(route_status(&proxy, MASTER_NAME).is_none());
    let log = proxy.log();
    assert!(
        log.lines().any(|l| l.contains("configuration reloaded")
            && l.contains("removed=1")
            && l.contains(&format!("removed={MASTER_NAME}"))),
        "{log}"
    );
    // The kept route's session goes on.
    assert_eq!(on_second.cmd(&["GET", "k"]).unwrap(), "second");
    proxy.wait_ready();
}

#[test]
fn an_invalid_file_is_rejected_with_one_line_and_the_old_config_keeps_serving() {
    let Some((_t, proxy)) = ready_lab(|| Topology::start(5000), ProxyOpts::default()) else {
        return;
    };
    let original = config_text(&proxy);
    let mut c = Client::connect(proxy.port);
    assert_eq!(c.cmd(&["SET", "k", "v"]).unwrap(), "+OK");
    let master = proxy.master();
    let path = proxy.config_path().display().to_string();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_port = taken.local_addr().unwrap().port();
    let bad: [(&str, String); 3] = [
        ("parse error", format!("{original}\n[[route]\n")),
        (
            "validation error",
            original.replace("max_connections = 10000", "max_connections = 0"),
        ),
        (
            "listen address in use",
            format!(
                "{original}[[route]]\nname = \"second\"\nmaster = \"{MASTER_NAME}\"\nlisten = \"127.0.0.1:{taken_port}\"\n"
            ),
        ),
    ];
    for (i, (what, text)) in bad.iter().enumerate() {
        proxy.reload(text);
        assert_eq!(
            proxy.metric(RELOADS, &[("result", "error")]),
            (i + 1) as f64,
            "{what}"
        );
        let log = proxy.log();
        let rejected: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("configuration reload rejected"))
            .collect();
        assert_eq!(rejected.len(), i + 1, "{what}: one line each\n{log}");
        let line = rejected[i];
        assert!(line.contains("ERROR"), "{what}: {line}");
        assert!(line.contains(&path), "{what}: names the file: {line}");
        assert_eq!(c.cmd(&["GET", "k"]).unwrap(), "v", "{what}");
        assert_eq!(proxy.master(), master, "{what}");
    }
    assert_eq!(proxy.metric(RELOADS, &[("result", "ok")]), 0.0);
    assert_eq!(log_lines(&proxy, "configuration reloaded"), 0);
    assert!(route_status(&proxy, "second").is_none());
    let mut fresh = Client::connect(proxy.port);
    assert_eq!(fresh.cmd(&["GET", "k"]).unwrap(), "v");
    // The rejected route's socket was not kept.
    drop(taken);
    assert!(std::net::TcpListener::bind(("127.0.0.1", taken_port)).is_ok());
}

#[test]
fn a_reload_during_a_failover_still_fences_and_routes_to_the_new_master() {
    let Some((t, proxy)) = ready_lab(|| Topology::start(5000), ProxyOpts::default()) else {
        return;
    };
    let old = t.master_port().expect("master");
    let mut c = Client::connect(proxy.port);
    assert_eq!(c.cmd(&["SET", "k", "v"]).unwrap(), "+OK");
    let (epoch, _) = proxy.master().expect("master");
    // A sentinel setting changes, so the watcher takes up new settings mid-failover.
    let text =
        config_text(&proxy).replace("poll_interval = \"250ms\"", "poll_interval = \"200ms\"");
    wait_until(
        Duration::from_secs(20),
        "SENTINEL FAILOVER accepted",
        || {
            redis_cmd_at(
                t.sentinels[0].addr(),
                &["SENTINEL", "FAILOVER", MASTER_NAME],
            )
            .is_ok()
        },
    );
    proxy.reload(&text);
    assert_eq!(proxy.metric(RELOADS, &[("result", "ok")]), 1.0);
    let new = match t.try_wait_new_master(old, Duration::from_secs(30)) {
        Some(p) => p,
        // Sentinel gave the failover up: ask again (the reload is what is under test).
        None => t.failover(),
    };
    proxy.wait_routes_to(&format!("127.0.0.1:{new}"));
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "the old master's session is fenced"
    );
    assert!(proxy.metric(CLOSED, &[("reason", "master_switch")]) >= 1.0);
    let (after, _) = proxy.master().expect("master");
    assert!(after > epoch);
    let mut fresh = Client::connect(proxy.port);
    assert_eq!(fresh.cmd(&["SET", "k", "w"]).unwrap(), "+OK");
    assert_eq!(fresh.node_port().unwrap(), new);
}

#[test]
fn sigusr1_sigusr2_and_sigalrm_do_not_kill_the_proxy() {
    let Some((_t, mut proxy)) = ready_lab(|| Topology::start(5000), ProxyOpts::default()) else {
        return;
    };
    let mut c = Client::connect(proxy.port);
    assert_eq!(c.cmd(&["PING"]).unwrap(), "+PONG");
    for (sig, needle) in [
        ("USR1", "status (SIGUSR1)"),
        ("USR2", "SIGUSR2"),
        ("ALRM", "SIGALRM"),
        ("USR2", "SIGUSR2"),
    ] {
        let before = log_lines(&proxy, needle);
        proxy.signal(sig);
        wait_until(Duration::from_secs(5), "the signal is logged", || {
            log_lines(&proxy, needle) > before
        });
        assert!(proxy.alive(), "SIG{sig} killed the proxy");
        assert_eq!(c.cmd(&["PING"]).unwrap(), "+PONG", "SIG{sig}");
    }
    let log = proxy.log();
    let status = log
        .lines()
        .find(|l| l.contains("status (SIGUSR1)"))
        .expect("status line");
    assert!(
        status.contains("\\\"routes\\\"") || status.contains("\"routes\""),
        "{status}"
    );
    assert!(status.contains(MASTER_NAME), "{status}");
    proxy.wait_ready();
    proxy.signal("TERM");
    assert_eq!(proxy.wait_exit(Duration::from_secs(20)), Some(0));
    let log = proxy.log();
    assert!(
        log.lines()
            .any(|l| l.contains("signal received") && l.contains("SIGTERM")),
        "the exit names its signal\n{log}"
    );
}

/// Datagrams on `sock` until `want` arrived (each datagram's lines), or panics at `timeout`.
fn wait_notify(sock: &UnixDatagram, want: &str, seen: &mut Vec<String>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    loop {
        if seen.iter().any(|m| m.lines().any(|l| l == want)) {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no {want} within {timeout:?}; got {seen:?}"
        );
        sock.set_read_timeout(Some(left)).unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
}

#[test]
fn systemd_hears_ready_reloading_watchdog_and_stopping() {
    if !require("redis-sentinel") {
        return;
    }
    let t = Topology::start(5000);
    let dir = tempdir();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind notify socket");
    let sentinels = t.sentinel_addrs();
    let notify_socket = path.display().to_string();
    let mut proxy = Proxy::start_on_env(
        &Host::local(),
        &sentinels,
        ProxyOpts::default(),
        &[
            ("NOTIFY_SOCKET", &notify_socket),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let mut seen = Vec::new();
    wait_notify(&sock, "READY=1", &mut seen, Duration::from_secs(10));
    let ready = seen
        .iter()
        .find(|m| m.contains("READY=1"))
        .cloned()
        .unwrap();
    assert!(ready.contains("STATUS=routing"), "{ready}");
    wait_notify(&sock, "WATCHDOG=1", &mut seen, Duration::from_secs(5));

    seen.clear();
    proxy.reload(&config_text(&proxy));
    wait_notify(&sock, "RELOADING=1", &mut seen, Duration::from_secs(10));
    let reloading = seen
        .iter()
        .find(|m| m.contains("RELOADING=1"))
        .cloned()
        .unwrap();
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    wait_notify(&sock, "READY=1", &mut seen, Duration::from_secs(10));

    seen.clear();
    proxy.signal("TERM");
    wait_notify(&sock, "STOPPING=1", &mut seen, Duration::from_secs(10));
    assert_eq!(proxy.wait_exit(Duration::from_secs(20)), Some(0));
}
