//! A scripted sentinel for hostile replies a real one cannot produce. Answers `SENTINEL MASTER`
//! with fixed bytes, confirms `SUBSCRIBE`, answers `PING`; or, when `silent`, never answers.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct FakeSentinel {
    pub port: u16,
    stop: Arc<AtomicBool>,
    /// `SENTINEL MASTER` queries answered so far.
    pub queries: Arc<AtomicUsize>,
}

impl FakeSentinel {
    /// Replies `master_reply` (raw RESP) to every `SENTINEL MASTER`; `None` = never reply.
    pub fn start(master_reply: Option<Vec<u8>>) -> FakeSentinel {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake sentinel");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicUsize::new(0));
        let (s, q) = (stop.clone(), queries.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let reply = master_reply.clone();
                        let q = q.clone();
                        std::thread::spawn(move || serve(conn, reply, q));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FakeSentinel {
            port,
            stop,
            queries,
        }
    }

    /// A `SENTINEL MASTER` reply naming `ip:port` at `epoch`.
    pub fn master_reply(ip: &str, port: &str, epoch: &str) -> Vec<u8> {
        let fields = [
            "name",
            "redis-ha",
            "ip",
            ip,
            "port",
            port,
            "flags",
            "master",
            "config-epoch",
            epoch,
            "num-slaves",
            "0",
            "num-other-sentinels",
            "0",
            "quorum",
            "1",
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

fn serve(conn: TcpStream, master_reply: Option<Vec<u8>>, queries: Arc<AtomicUsize>) {
    let _ = conn.set_nonblocking(false);
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut conn = conn;
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
                queries.fetch_add(1, Ordering::Relaxed);
                match &master_reply {
                    Some(r) => r.clone(),
                    None => continue, // silent: the caller's timeout must save it
                }
            }
            "SUBSCRIBE" => {
                let ch = args.get(1).cloned().unwrap_or_default();
                format!("*3\r\n$9\r\nsubscribe\r\n${}\r\n{}\r\n:1\r\n", ch.len(), ch).into_bytes()
            }
            "PING" if master_reply.is_none() => continue,
            "PING" => b"*2\r\n$4\r\npong\r\n$0\r\n\r\n".to_vec(),
            _ => b"+OK\r\n".to_vec(),
        };
        if conn.write_all(&reply).is_err() {
            return;
        }
    }
}

fn read_command(r: &mut impl BufRead) -> Option<Vec<String>> {
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
