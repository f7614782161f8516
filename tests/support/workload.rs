//! The write-loss workload: client threads writing unique keys through the proxy, recording
//! which writes were acknowledged and when; afterwards, compare with what a node holds.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

/// One attempted write.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: String,
    /// When the command was written to the socket.
    pub sent_at: SystemTime,
    /// When `+OK` came back, if it did.
    pub acked_at: Option<SystemTime>,
}

/// A running workload.
pub struct Workload {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<(Vec<Record>, usize)>>,
    started: SystemTime,
}

/// What a workload did.
#[derive(Debug, Default)]
pub struct Report {
    pub records: Vec<Record>,
    /// Connects and commands that failed (each is followed by a reconnect).
    pub errors: usize,
    pub started: Option<SystemTime>,
    pub stopped: Option<SystemTime>,
}

impl Workload {
    /// Starts `clients` threads writing `SET {prefix}:{client}:{seq} {seq}` to `addr`, each
    /// reconnecting after any error.
    pub fn start(addr: SocketAddr, clients: usize, prefix: &str) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..clients)
            .map(|c| {
                let stop = stop.clone();
                let prefix = format!("{prefix}:{c}");
                std::thread::spawn(move || client_loop(addr, &prefix, &stop))
            })
            .collect();
        Workload {
            stop,
            threads,
            started: SystemTime::now(),
        }
    }

    /// Stops every client and collects what they did.
    pub fn stop(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        let mut report = Report {
            started: Some(self.started),
            ..Default::default()
        };
        for t in self.threads {
            let (records, errors) = t.join().expect("workload thread");
            report.records.extend(records);
            report.errors += errors;
        }
        report.stopped = Some(SystemTime::now());
        report
    }
}

impl Report {
    pub fn acked_keys(&self) -> HashSet<String> {
        self.records
            .iter()
            .filter(|r| r.acked_at.is_some())
            .map(|r| r.key.clone())
            .collect()
    }

    pub fn acked(&self) -> usize {
        self.records.iter().filter(|r| r.acked_at.is_some()).count()
    }

    /// Acknowledged writes missing from `held` (what the final master holds).
    pub fn lost(&self, held: &HashSet<String>) -> Vec<String> {
        let mut lost: Vec<String> = self
            .records
            .iter()
            .filter(|r| r.acked_at.is_some() && !held.contains(&r.key))
            .map(|r| r.key.clone())
            .collect();
        lost.sort();
        lost
    }

    /// Writes sent after `t` that a node holding `keys` received.
    pub fn reached_after(&self, keys: &HashSet<String>, t: SystemTime) -> usize {
        self.records
            .iter()
            .filter(|r| r.sent_at > t && keys.contains(&r.key))
            .count()
    }

    /// The longest stretch without an acknowledged write (the outage clients saw).
    pub fn longest_gap(&self) -> Duration {
        let mut acks: Vec<SystemTime> = self.records.iter().filter_map(|r| r.acked_at).collect();
        acks.sort();
        if let Some(s) = self.started {
            acks.insert(0, s);
        }
        if let Some(s) = self.stopped {
            acks.push(s);
        }
        acks.windows(2)
            .filter_map(|w| w[1].duration_since(w[0]).ok())
            .max()
            .unwrap_or_default()
    }
}

fn client_loop(addr: SocketAddr, prefix: &str, stop: &AtomicBool) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut errors = 0;
    let mut conn: Option<TcpStream> = None;
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let stream = match conn.as_mut() {
            Some(s) => s,
            None => match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(s) => {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(15)));
                    let _ = s.set_nodelay(true);
                    conn.insert(s)
                }
                Err(_) => {
                    errors += 1;
                    // A refused connect returns at once; don't spin on it.
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            },
        };
        seq += 1;
        let key = format!("{prefix}:{seq}");
        let value = seq.to_string();
        let cmd = format!(
            "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n",
            key.len(),
            value.len()
        );
        let sent_at = SystemTime::now();
        let ok = stream.write_all(cmd.as_bytes()).is_ok() && read_ok(stream);
        records.push(Record {
            key,
            sent_at,
            acked_at: ok.then(SystemTime::now),
        });
        if !ok {
            errors += 1;
            conn = None;
        }
    }
    (records, errors)
}

/// Reads one reply line; true for `+OK`.
fn read_ok(s: &mut TcpStream) -> bool {
    let mut line = Vec::with_capacity(8);
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            // A signal interrupting a read with a timeout is not an answer.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Ok(1) => {
                line.push(b[0]);
                if line.ends_with(b"\r\n") {
                    return line == b"+OK\r\n";
                }
            }
            _ => return false,
        }
    }
}

/// Every key matching `{prefix}*` on the node at `addr` (SCAN).
pub fn keys_on(addr: SocketAddr, prefix: &str) -> HashSet<String> {
    let client = redis::Client::open(format!("redis://{addr}/")).expect("client");
    let mut con = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .expect("connect to node");
    let mut keys = HashSet::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query(&mut con)
            .expect("SCAN");
        keys.extend(batch);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}
