//! The master's last reply before it closes reaches the client. Redis often answers and then
//! closes the connection (a protocol error, `QUIT`); when the client keeps writing, the
//! master's kernel resets the connection, and a proxy that gives up on the first failed write
//! to the master loses the reply a direct connection delivers. Each case runs against the real
//! master directly and through the proxy, with the client's writes and their timing varied.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use support::*;

/// Tries per case and way (direct, proxy).
const TRIES: usize = 30;

/// How a client provokes the master's last reply.
#[derive(Clone, Copy, Debug)]
enum Case {
    /// `QUIT`, then keeps writing `PING`s until the connection fails.
    QuitThenKeepWriting,
    /// A protocol error, then keeps writing until the connection fails.
    ProtocolErrorThenKeepWriting,
    /// A protocol error followed by `bulk` more bytes in one write, then reads.
    ProtocolErrorThenBulk(usize),
}

impl Case {
    fn expected(self) -> &'static str {
        match self {
            Case::QuitThenKeepWriting => "+OK\r\n",
            _ => "-ERR Protocol error",
        }
    }
}

/// One try against `port`: what the client read before EOF or an error.
fn one_try(port: u16, case: Case, try_no: usize) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_nodelay(true).unwrap();
    // A first round trip, so the proxy's session (and its master connection) exists.
    s.write_all(b"PING\r\n").unwrap();
    let mut pong = [0u8; 7];
    s.read_exact(&mut pong).expect("PONG");
    assert_eq!(&pong, b"+PONG\r\n");
    let head: &[u8] = match case {
        Case::QuitThenKeepWriting => b"QUIT\r\n",
        _ => b"*3000000000\r\n",
    };
    let writer = match case {
        Case::ProtocolErrorThenBulk(bulk) => {
            let mut all = head.to_vec();
            all.extend(std::iter::repeat_n(b'x', bulk));
            // Redis may reset before it has read all of it: a failed write is expected.
            let _ = s.write_all(&all);
            None
        }
        _ => {
            s.write_all(head).unwrap();
            let mut w = s.try_clone().unwrap();
            // Vary when the extra writes start relative to the reply: from at once to a
            // little after.
            let delay = Duration::from_micros((try_no % 6) as u64 * 50);
            Some(std::thread::spawn(move || {
                std::thread::sleep(delay);
                let started = Instant::now();
                while started.elapsed() < Duration::from_secs(5) {
                    if w.write_all(b"PING\r\n").is_err() {
                        return;
                    }
                }
            }))
        }
    };
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = s.shutdown(Shutdown::Both);
    if let Some(w) = writer {
        let _ = w.join();
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// How many of `TRIES` tries got the expected reply.
fn delivered(port: u16, case: Case) -> (usize, Vec<String>) {
    let mut ok = 0;
    let mut misses = Vec::new();
    for i in 0..TRIES {
        let got = one_try(port, case, i);
        if got.contains(case.expected()) {
            ok += 1;
        } else {
            misses.push(got.chars().take(80).collect());
        }
    }
    (ok, misses)
}

#[test]
fn the_masters_last_reply_before_it_closes_reaches_the_client() {
    let Some((t, proxy)) = ready_lab(|| Topology::start(5000), ProxyOpts::default()) else {
        return;
    };
    let master = t.master_port().expect("a master");
    let cases = [
        Case::QuitThenKeepWriting,
        Case::ProtocolErrorThenKeepWriting,
        Case::ProtocolErrorThenBulk(16 * 1024),
        Case::ProtocolErrorThenBulk(128 * 1024),
        Case::ProtocolErrorThenBulk(1024 * 1024),
    ];
    let mut failures = Vec::new();
    for case in cases {
        let (direct, _) = delivered(master, case);
        let (through, misses) = delivered(proxy.port, case);
        eprintln!(
            "{case:?}: reply read {direct}/{TRIES} directly, {through}/{TRIES} through the proxy"
        );
        if through < TRIES {
            failures.push(format!(
                "{case:?}: {through}/{TRIES} through the proxy ({direct}/{TRIES} directly); \
                 read instead: {misses:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // The proxy still serves afterwards.
    assert!(redis_cmd(proxy.port, &["PING"]).is_ok());
}
