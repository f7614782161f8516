//! A scripted sentinel for hostile input a real one cannot produce. Answers `SENTINEL MASTER`
//! with fixed bytes (changeable while it runs), confirms `SUBSCRIBE`, answers `PING`; or, when
//! silent, never answers. Optionally pushes scripted pub/sub messages (or raw bytes) to every
//! subscriber at a fixed pace.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the fake does besides answering queries.
#[derive(Clone, Default)]
pub struct Script {
    /// Reply to every `SENTINEL MASTER` (raw RESP); `None` = never reply (and no PONG either).
    pub master_reply: Option<Vec<u8>>,
    /// Pub/sub messages (channel, payload) sent to each subscriber, in a loop.
    pub events: Vec<(String, String)>,
    /// Raw bytes sent once to each subscriber after the confirmations.
    pub raw_after_subscribe: Option<Vec<u8>>,
    /// Pause between two events (`Duration::ZERO`: as fast as the socket takes them).
    pub event_every: Duration,
    /// Stop after this many events per subscriber (0: never).
    pub event_limit: usize,
}

pub struct FakeSentinel {
    pub port: u16,
    stop: Arc<AtomicBool>,
    /// `SENTINEL MASTER` queries answered so far.
    pub queries: Arc<AtomicUsize>,
    /// Events sent so far (all subscribers).
    pub events_sent: Arc<AtomicUsize>,
    reply: Arc<Mutex<Option<Vec<u8>>>>,
}

impl FakeSentinel {
    /// Replies `master_reply` (raw RESP) to every `SENTINEL MASTER`; `None` = never reply.
    pub fn start(master_reply: Option<Vec<u8>>) -> FakeSentinel {
        FakeSentinel::scripted(Script {
            master_reply,
            ..Default::default()
        })
    }

    pub fn scripted(script: Script) -> FakeSentinel {
        let stop = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicUsize::new(0));
        let events_sent = Arc::new(AtomicUsize::new(0));
        let reply = Arc::new(Mutex::new(script.master_reply.clone()));
        let silent = script.master_reply.is_none();
        let (s, q, e, r) = (
            stop.clone(),
            queries.clone(),
            events_sent.clone(),
            reply.clone(),
        );
        let port = serve_on_loopback(stop.clone(), move |conn| {
            Conn {
                script: script.clone(),
                silent,
                reply: r.clone(),
                queries: q.clone(),
                events_sent: e.clone(),
                stop: s.clone(),
            }
            .serve(conn)
        });
        FakeSentinel {
            port,
            stop,
            queries,
            events_sent,
            reply,
        }
    }

    /// Replaces the `SENTINEL MASTER` reply.
    pub fn set_reply(&self, reply: Vec<u8>) {
        *self.reply.lock().unwrap() = Some(reply);
    }

    /// A `SENTINEL MASTER` reply naming `ip:port` at `epoch`.
    pub fn master_reply(ip: &str, port: &str, epoch: &str) -> Vec<u8> {
        FakeSentinel::master_reply_flags(ip, port, epoch, "master")
    }

    /// A `SENTINEL MASTER` reply naming `ip:port` at `epoch` with `flags` (and a
    /// failover-timeout of 6 s, as the test topologies have).
    pub fn master_reply_flags(ip: &str, port: &str, epoch: &str, flags: &str) -> Vec<u8> {
        let fields = [
            "name",
            "redis-ha",
            "ip",
            ip,
            "port",
            port,
            "flags",
            flags,
            "config-epoch",
            epoch,
            "num-slaves",
            "0",
            "num-other-sentinels",
            "0",
            "quorum",
            "1",
            "failover-timeout",
            "6000",
        ];
        let mut out = format!("*{}\r\n", fields.len());
        for f in fields {
            out.push_str(&format!("${}\r\n{}\r\n", f.len(), f));
        }
        out.into_bytes()
    }
}

impl Drop for FakeSentinel {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct Conn {
    script: Script,
    silent: bool,
    reply: Arc<Mutex<Option<Vec<u8>>>>,
    queries: Arc<AtomicUsize>,
    events_sent: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

fn message(channel: &str, payload: &str) -> Vec<u8> {
    format!(
        "*3\r\n$7\r\nmessage\r\n${}\r\n{}\r\n${}\r\n{}\r\n",
        channel.len(),
        channel,
        payload.len(),
        payload
    )
    .into_bytes()
}

impl Conn {
    fn serve(self, conn: TcpStream) {
        let mut reader = BufReader::new(match conn.try_clone() {
            Ok(c) => c,
            Err(_) => return,
        });
        let writer = Arc::new(Mutex::new(conn));
        let write = |bytes: &[u8]| writer.lock().unwrap().write_all(bytes).is_ok();
        loop {
            let Some(args) = read_command(&mut reader) else {
                return;
            };
            let name = args
                .first()
                .map(|a| a.to_ascii_uppercase())
                .unwrap_or_default();
            let reply: Vec<u8> = match name.as_str() {
                "SENTINEL" => {
                    self.queries.fetch_add(1, Ordering::Relaxed);
                    match self.reply.lock().unwrap().clone() {
                        Some(r) if !self.silent => r,
                        _ => continue, // silent: the caller's timeout must save it
                    }
                }
                "SUBSCRIBE" => {
                    let mut out = Vec::new();
                    for (n, ch) in args[1..].iter().enumerate() {
                        out.extend(
                            format!(
                                "*3\r\n$9\r\nsubscribe\r\n${}\r\n{}\r\n:{}\r\n",
                                ch.len(),
                                ch,
                                n + 1
                            )
                            .into_bytes(),
                        );
                    }
                    if !write(&out) {
                        return;
                    }
                    if let Some(raw) = &self.script.raw_after_subscribe {
                        if !write(raw) {
                            return;
                        }
                    }
                    if !self.script.events.is_empty() {
                        let (w, script, sent, stop) = (
                            writer.clone(),
                            self.script.clone(),
                            self.events_sent.clone(),
                            self.stop.clone(),
                        );
                        std::thread::spawn(move || {
                            let mut n = 0usize;
                            'outer: while !stop.load(Ordering::Relaxed) {
                                for (ch, payload) in &script.events {
                                    if w.lock().unwrap().write_all(&message(ch, payload)).is_err() {
                                        break 'outer;
                                    }
                                    sent.fetch_add(1, Ordering::Relaxed);
                                    n += 1;
                                    if script.event_limit > 0 && n >= script.event_limit {
                                        break 'outer;
                                    }
                                    if script.event_every.is_zero() {
                                        // Let the PONG of a keep-alive through the flood.
                                        std::thread::yield_now();
                                    } else {
                                        std::thread::sleep(script.event_every);
                                    }
                                }
                            }
                        });
                    }
                    continue;
                }
                "PING" if self.silent => continue,
                "PING" => b"*2\r\n$4\r\npong\r\n$0\r\n\r\n".to_vec(),
                _ => b"+OK\r\n".to_vec(),
            };
            if !write(&reply) {
                return;
            }
        }
    }
}

/// One RESP command (an array of bulk strings) from `r`; `None` at EOF or on anything else.
/// A scripted peer on a free loopback port (returned): every accepted connection is handed to
/// `serve` on a thread of its own, until `stop` is set.
pub fn serve_on_loopback(
    stop: Arc<AtomicBool>,
    serve: impl Fn(TcpStream) + Send + Sync + 'static,
) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a fake peer");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let serve = Arc::new(serve);
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((conn, _)) => {
                    let _ = conn.set_nonblocking(false);
                    let serve = serve.clone();
                    std::thread::spawn(move || serve(conn));
                }
                // Nothing pending: poll again shortly (the listener is non-blocking so `stop`
                // is seen).
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    port
}

pub fn read_command(r: &mut impl BufRead) -> Option<Vec<String>> {
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let n: usize = line.trim().strip_prefix('*')?.parse().ok()?;
    let mut args = Vec::with_capacity(n);
    for _ in 0..n {
        line.clear();
        r.read_line(&mut line).ok()?;
        let len: usize = line.trim().strip_prefix('$')?.parse().ok()?;
        let mut buf = vec![0u8; len + 2];
        r.read_exact(&mut buf).ok()?;
        buf.truncate(len);
        args.push(String::from_utf8_lossy(&buf).into_owned());
    }
    Some(args)
}
