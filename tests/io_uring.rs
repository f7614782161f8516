//! `runtime.engine = "io_uring"` against real processes: the session threads really run their
//! plain TCP sessions on a ring (one per thread, seen in /proc), bytes of every size arrive
//! intact, many sessions at once, idle sessions hold no receive buffer, a failover fences every
//! ring session promptly, and the sockets go when sessions end. The other suites run again on
//! this engine through `RFP_TEST_ENGINE=io_uring` (scripts/test.sh).

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use support::*;

/// Sessions open through the proxy when `a_failover_fences_ring_sessions` fails over.
const N_FENCED: usize = 200;

/// Why io_uring cannot be tested here, if it cannot.
fn io_uring_unavailable() -> Option<String> {
    match std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        Ok(v) if v.trim() != "0" => Some(format!("kernel.io_uring_disabled = {}", v.trim())),
        _ => None,
    }
}

fn ring_opts(extra: &'static str) -> ProxyOpts {
    ProxyOpts {
        runtime_extra: extra,
        ..ProxyOpts::default()
    }
}

/// The proxy on a ring, or None (said why) where the kernel has none to give.
fn ring_lab(extra: &'static str) -> Option<(Topology, Proxy)> {
    if let Some(why) = io_uring_unavailable() {
        skip(&format!("io_uring engine not testable: {why}"));
        return None;
    }
    let (t, proxy) = ready_lab(Topology::single, ring_opts(extra))?;
    if proxy.log().contains("falling back to epoll") {
        skip(&format!(
            "io_uring engine not testable: the proxy fell back to epoll: {}",
            proxy.log()
        ));
        return None;
    }
    Some((t, proxy))
}

#[test]
fn sessions_run_on_one_ring_per_session_thread() {
    let Some((t, proxy)) = ring_lab("threads = 2\nengine = \"io_uring\"") else {
        return;
    };
    assert!(
        proxy.log().contains("engine=\"io_uring\"") || proxy.log().contains("engine=io_uring"),
        "the start log names the engine: {}",
        proxy.log()
    );
    assert_eq!(
        fd_count_of(proxy.pid(), "anon_inode:[io_uring]"),
        2,
        "one ring per session thread"
    );
    // Enough clients that both threads carry some; each talks in turn and in bursts.
    let mut clients: Vec<Client> = (0..40).map(|_| Client::connect(proxy.port)).collect();
    for round in 0..3 {
        for (i, c) in clients.iter_mut().enumerate() {
            let k = format!("k{i}");
            let v = format!("v{i}-{round}");
            assert_eq!(c.cmd(&["SET", &k, &v]).unwrap(), "+OK");
            assert_eq!(c.cmd(&["GET", &k]).unwrap(), v);
        }
    }
    assert_eq!(clients[0].node_port().unwrap(), t.nodes[0].port);
    // Pipelined: 1,000 requests written at once, 1,000 replies read back in order.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut batch = Vec::new();
    for i in 0..1000 {
        batch.extend_from_slice(format!("*2\r\n$4\r\nINCR\r\n$4\r\nctr{}\r\n", i % 10).as_bytes());
    }
    s.write_all(&batch).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.iter().filter(|&&b| b == b'\n').count() < 1000 {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed after {} replies", got.len());
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8(got).unwrap();
    let last: Vec<&str> = text.lines().rev().take(10).collect();
    assert!(last.iter().all(|l| *l == ":100"), "{last:?}");
    // Sessions end: the sockets go (the ring closes them).
    let sockets = fd_count_of(proxy.pid(), "socket:");
    drop(clients);
    drop(s);
    wait_until(Duration::from_secs(5), "sessions' sockets closed", || {
        fd_count_of(proxy.pid(), "socket:") + 80 <= sockets
    });
}

#[test]
fn values_of_every_size_arrive_intact_on_the_ring() {
    let Some((_t, proxy)) = ring_lab("engine = \"io_uring\"") else {
        return;
    };
    let mut c = Client::connect(proxy.port);
    // Around the ring's 32 KiB receive buffers and beyond the socket buffers.
    assert_values_round_trip(
        &mut c,
        &[0, 1, 32_767, 32_768, 32_769, 65_536, 1 << 20, 8 << 20],
        0,
    );
}

/// Idle sessions hold no receive buffer: 2,000 idle clients cost the proxy about what they
/// cost on epoll (a session's task and two sockets), not 2 × 16 KiB each.
#[test]
fn idle_sessions_hold_no_buffers() {
    let Some((_t, proxy)) = ring_lab("engine = \"io_uring\"") else {
        return;
    };
    let before = rss_kib(proxy.pid());
    let mut idle = Vec::new();
    for _ in 0..2000 {
        let mut c = Client::connect(proxy.port);
        assert_eq!(c.cmd(&["PING"]).unwrap(), "+PONG");
        idle.push(c);
    }
    let after = rss_kib(proxy.pid());
    let per_session = (after.saturating_sub(before)) as f64 / 2000.0;
    assert!(
        per_session < 8.0,
        "{per_session:.1} KiB per idle session (before {before} KiB, after {after} KiB)"
    );
}

/// A failover fences every ring session: each is closed promptly (one fence), and the next
/// client reaches the new master, again on the ring.
#[test]
fn a_failover_fences_ring_sessions() {
    if let Some(why) = io_uring_unavailable() {
        skip(&format!("io_uring engine not testable: {why}"));
        return;
    }
    let Some((t, proxy)) = ready_lab(
        || Topology::start(60_000),
        ring_opts("engine = \"io_uring\""),
    ) else {
        return;
    };
    let old = t.master_port().expect("a master");
    let mut sessions: Vec<Client> = (0..N_FENCED).map(|_| Client::connect(proxy.port)).collect();
    for c in sessions.iter_mut() {
        assert_eq!(c.cmd(&["PING"]).unwrap(), "+PONG");
    }
    let new = t.failover();
    assert_ne!(new, old);
    for c in sessions.iter_mut() {
        assert!(
            c.closed_within(Duration::from_secs(5)),
            "a session to the old master stayed open"
        );
    }
    let ms = proxy.assert_one_prompt_fence(N_FENCED);
    eprintln!("io_uring engine: fence of {N_FENCED} sessions took {ms:.2} ms");
    let mut c = Client::connect(proxy.port);
    assert_eq!(c.node_port().unwrap(), new);
}

/// A client that asks for a large value and does not read it cannot take the ring's buffer
/// pool: its direction stops receiving after a few chunks (the master waits in TCP), other
/// sessions on the same thread keep being served, and the value arrives intact once the
/// client reads.
#[test]
fn a_client_that_does_not_read_cannot_starve_the_others() {
    let Some((_t, proxy)) = ring_lab("threads = 1\nengine = \"io_uring\"") else {
        return;
    };
    let big: String = (0..(16 << 20))
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    assert_eq!(
        Client::connect(proxy.port)
            .cmd(&["SET", "big", &big])
            .unwrap(),
        "+OK"
    );
    let rss_before = rss_kib(proxy.pid());
    // Forty clients ask for 16 MiB each and do not read: together they could hold every
    // buffer of the thread's pool (128) many times over if a full destination kept them.
    let mut stalled: Vec<std::net::TcpStream> = (0..40)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
            s.write_all(b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n").unwrap();
            s
        })
        .collect();
    // Others on the same (only) session thread are still served, many times over.
    let mut other = Client::connect(proxy.port);
    for i in 0..200 {
        let v = format!("v{i}");
        assert_eq!(other.cmd(&["SET", "small", &v]).unwrap(), "+OK");
        assert_eq!(other.cmd(&["GET", "small"]).unwrap(), v);
    }
    // What each stalled session holds is what the kernel received before its pause landed.
    let rss_stalled = rss_kib(proxy.pid());
    assert!(
        rss_stalled < rss_before + 128 * 1024,
        "40 stalled 16 MiB replies grew the proxy from {rss_before} to {rss_stalled} KiB"
    );
    eprintln!("40 stalled 16 MiB replies: proxy RSS {rss_before} -> {rss_stalled} KiB");
    // Now they read: every byte arrives.
    let header = format!("${}\r\n", big.len());
    for s in stalled.iter_mut() {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let want = header.len() + big.len() + 2;
        let mut got = vec![0u8; want];
        s.read_exact(&mut got).unwrap();
        assert!(got.starts_with(header.as_bytes()));
        assert!(
            got[header.len()..want - 2] == *big.as_bytes(),
            "value corrupted"
        );
    }
}
