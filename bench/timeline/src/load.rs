//! `timeline load`: paced request/response clients against every target at once.
//!
//! Each client behaves like an application with a blocking client library: send one `SET`,
//! wait for the reply, repeat; on any failure count it and reconnect. Counting per 100 ms
//! bucket shows when each target stopped and resumed answering during a failover.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, timeout_at, Instant};

use crate::args::Args;
use crate::resp;

/// Width of one row of the CSV, and of one point of the plot.
pub const BUCKET_MS: u64 = 100;
/// Pause between attempts once a client has failed twice in a row, so that a refused connect
/// or a middle box that closes every new connection does not make it spin.
const RETRY_PAUSE: Duration = Duration::from_millis(10);

pub struct Options {
    targets: Vec<(String, SocketAddr)>,
    clients: usize,
    duration: Duration,
    interval: Duration,
    timeout: Duration,
    out: PathBuf,
    summary: Option<PathBuf>,
    acked: Option<PathBuf>,
}

impl Options {
    pub fn parse(argv: &[String]) -> Result<Options, String> {
        let a = Args::parse(
            argv,
            &[
                "--target",
                "--clients",
                "--duration",
                "--interval-ms",
                "--timeout-ms",
                "--out",
                "--summary",
                "--acked",
            ],
        )?;
        let mut targets = Vec::new();
        for t in a.all("--target") {
            let (name, addr) = t
                .split_once('=')
                .ok_or_else(|| format!("--target: expected NAME=HOST:PORT, got {t:?}"))?;
            if name.is_empty() || name.contains(',') || targets.iter().any(|(n, _)| n == name) {
                return Err(format!(
                    "--target: names must be unique, non-empty, without commas: {name:?}"
                ));
            }
            let addr = Args::resolve("--target", addr)?;
            targets.push((name.to_string(), addr));
        }
        if targets.is_empty() {
            return Err("at least one --target NAME=HOST:PORT is required".to_string());
        }
        let clients: usize = a.num("--clients", 4)?;
        let duration: f64 = a.num("--duration", 10.0)?;
        let timeout_ms: u64 = a.num("--timeout-ms", 5000)?;
        if clients == 0 || !(duration > 0.0 && duration < 86_400.0) || timeout_ms == 0 {
            return Err("--clients, --duration and --timeout-ms must be above zero".to_string());
        }
        Ok(Options {
            targets,
            clients,
            duration: Duration::from_secs_f64(duration),
            interval: Duration::from_millis(a.num("--interval-ms", 0)?),
            timeout: Duration::from_millis(timeout_ms),
            out: a.req("--out")?.into(),
            summary: a.opt("--summary").map(PathBuf::from),
            acked: a.opt("--acked").map(PathBuf::from),
        })
    }
}

/// One 100 ms bucket of one client (or, merged, of one target).
#[derive(Default, Clone, Copy)]
struct Bucket {
    ok: u64,
    /// Failed connects, EOF, resets, timeouts: the connection is gone.
    err_conn: u64,
    /// Error replies (`-READONLY` from a replica, say): the connection stays.
    err_reply: u64,
    max_latency_us: u64,
}

/// Everything one client saw. Times are microseconds since the start of the run.
#[derive(Default)]
struct ClientLog {
    buckets: Vec<Bucket>,
    ok_at: Vec<u64>,
    /// Sequence numbers of the acknowledged writes (each one its own key).
    acked: Vec<u64>,
    first_error: Option<u64>,
    last_error: Option<u64>,
    /// The slowest successful request: (latency, completed at).
    slowest: (u64, u64),
    error_kinds: BTreeMap<String, u64>,
}

impl ClientLog {
    fn bucket(&mut self, at_us: u64) -> &mut Bucket {
        // A completion right at the end of the run belongs to the last bucket.
        let i = ((at_us / 1000 / BUCKET_MS) as usize).min(self.buckets.len() - 1);
        &mut self.buckets[i]
    }

    fn ok(&mut self, seq: u64, latency_us: u64, at_us: u64) {
        let b = self.bucket(at_us);
        b.ok += 1;
        b.max_latency_us = b.max_latency_us.max(latency_us);
        self.ok_at.push(at_us);
        self.acked.push(seq);
        if latency_us > self.slowest.0 {
            self.slowest = (latency_us, at_us);
        }
    }

    fn failed(&mut self, f: &Failure, at_us: u64) {
        let b = self.bucket(at_us);
        if f.connection_lost {
            b.err_conn += 1;
        } else {
            b.err_reply += 1;
        }
        self.first_error.get_or_insert(at_us);
        self.last_error = Some(at_us);
        *self.error_kinds.entry(f.kind.clone()).or_default() += 1;
    }
}

struct Failure {
    /// Short description, counted per kind in the summary ("eof", "connect refused", ...).
    kind: String,
    /// The connection is unusable and must be replaced.
    connection_lost: bool,
}

impl Failure {
    fn conn(kind: impl Into<String>) -> Failure {
        Failure {
            kind: kind.into(),
            connection_lost: true,
        }
    }

    fn io(step: &str, e: &io::Error) -> Failure {
        let what = match e.kind() {
            io::ErrorKind::ConnectionRefused => "refused".to_string(),
            io::ErrorKind::ConnectionReset => "reset".to_string(),
            io::ErrorKind::BrokenPipe => "broken pipe".to_string(),
            io::ErrorKind::ConnectionAborted => "aborted".to_string(),
            other => format!("{other:?}"),
        };
        Failure::conn(format!("{step} {what}"))
    }
}

/// What every client shares: where and how long to run, and which targets have answered.
struct Run {
    start: Instant,
    end: Instant,
    buckets: usize,
    interval: Duration,
    timeout: Duration,
    answered: Vec<AtomicBool>,
}

impl Run {
    fn micros(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.start).as_micros() as u64
    }
}

pub fn run(opts: Options) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    rt.block_on(run_async(opts))
}

async fn run_async(opts: Options) -> Result<(), String> {
    let start_unix_ms = unix_ms(SystemTime::now());
    let start = Instant::now();
    let buckets = (opts.duration.as_millis() as u64).div_ceil(BUCKET_MS) as usize;
    let run = Arc::new(Run {
        start,
        end: start + opts.duration,
        buckets,
        interval: opts.interval,
        timeout: opts.timeout,
        answered: opts
            .targets
            .iter()
            .map(|_| AtomicBool::new(false))
            .collect(),
    });
    println!("start {start_unix_ms}");

    let mut tasks = Vec::new();
    for (t, (name, addr)) in opts.targets.iter().enumerate() {
        for c in 0..opts.clients {
            let prefix = format!("{}:{c}", key_prefix(name));
            tasks.push((t, tokio::spawn(client(run.clone(), t, *addr, prefix))));
        }
    }
    // Tell the driver when traffic flows through every target, so it can schedule the
    // failover relative to a working baseline rather than to process start.
    while Instant::now() < run.end {
        if run.answered.iter().all(|a| a.load(Ordering::Relaxed)) {
            println!("ready {}", unix_ms(SystemTime::now()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let mut per_target: Vec<Vec<ClientLog>> = opts.targets.iter().map(|_| Vec::new()).collect();
    for (t, task) in tasks {
        per_target[t].push(task.await.map_err(|e| format!("client task: {e}"))?);
    }

    let mut csv =
        String::from("target,bucket_start_unix_ms,ok,err_conn,err_reply,max_latency_ms\n");
    let mut summary = String::from(
        "target,clients,ok,err_conn,err_reply,first_error_unix_ms,last_error_unix_ms,\
         longest_gap_ms,gap_start_unix_ms,gap_end_unix_ms,gap_open,\
         worst_client_gap_ms,worst_client_gap_start_unix_ms,worst_client_gap_open,\
         slowest_ms,slowest_at_unix_ms,error_kinds\n",
    );
    let abs = |us: u64| start_unix_ms as f64 + us as f64 / 1000.0;
    for ((name, _), logs) in opts.targets.iter().zip(&per_target) {
        let mut merged = vec![Bucket::default(); buckets];
        for log in logs {
            for (m, b) in merged.iter_mut().zip(&log.buckets) {
                m.ok += b.ok;
                m.err_conn += b.err_conn;
                m.err_reply += b.err_reply;
                m.max_latency_us = m.max_latency_us.max(b.max_latency_us);
            }
        }
        for (i, b) in merged.iter().enumerate() {
            let _ = writeln!(
                csv,
                "{name},{},{},{},{},{:.3}",
                start_unix_ms + i as u64 * BUCKET_MS,
                b.ok,
                b.err_conn,
                b.err_reply,
                b.max_latency_us as f64 / 1000.0
            );
        }

        // The longest time without any successful reply from this target, across all its
        // clients; and the longest time one client went without one (a middle box that
        // sends some clients to a replica fails them while the others carry on).
        let end_us = run.micros(run.end);
        let mut ok_at: Vec<u64> = logs.iter().flat_map(|l| l.ok_at.iter().copied()).collect();
        ok_at.sort_unstable();
        let gap = longest_gap(&ok_at, end_us);
        let worst_client = logs
            .iter()
            .map(|l| longest_gap(&l.ok_at, end_us))
            .max_by_key(|g| g.0)
            .unwrap_or(gap);
        let first_error = logs.iter().filter_map(|l| l.first_error).min();
        let last_error = logs.iter().filter_map(|l| l.last_error).max();
        let slowest = logs.iter().map(|l| l.slowest).max().unwrap_or_default();
        let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
        for l in logs {
            for (k, n) in &l.error_kinds {
                *kinds.entry(k).or_default() += n;
            }
        }
        let kinds = kinds
            .iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect::<Vec<_>>()
            .join(";");
        let total = |f: fn(&Bucket) -> u64| merged.iter().map(f).sum::<u64>();
        let opt_ms = |us: Option<u64>| us.map(|u| format!("{:.1}", abs(u))).unwrap_or_default();
        let _ = writeln!(
            summary,
            "{name},{},{},{},{},{},{},{:.1},{:.1},{:.1},{},{:.1},{:.1},{},{:.1},{:.1},{kinds}",
            opts.clients,
            total(|b| b.ok),
            total(|b| b.err_conn),
            total(|b| b.err_reply),
            opt_ms(first_error),
            opt_ms(last_error),
            gap.0 as f64 / 1000.0,
            abs(gap.1),
            abs(gap.2),
            u8::from(gap.3),
            worst_client.0 as f64 / 1000.0,
            abs(worst_client.1),
            u8::from(worst_client.3),
            slowest.0 as f64 / 1000.0,
            abs(slowest.1),
        );
        eprintln!(
            "timeline: {name}: {} ok, {} failed ({}), longest without a reply {:.0} ms, slowest reply {:.0} ms",
            total(|b| b.ok),
            total(|b| b.err_conn + b.err_reply),
            if kinds.is_empty() { "-" } else { &kinds },
            gap.0 as f64 / 1000.0,
            slowest.0 as f64 / 1000.0,
        );
    }
    std::fs::write(&opts.out, csv).map_err(|e| format!("{}: {e}", opts.out.display()))?;
    if let Some(path) = &opts.acked {
        // Which writes were acknowledged, so the driver can ask the new master which of
        // them it has (the rest are acknowledged but lost).
        let mut acked = String::from("target,client,seq,unix_ms\n");
        for ((name, _), logs) in opts.targets.iter().zip(&per_target) {
            for (c, log) in logs.iter().enumerate() {
                for (seq, at) in log.acked.iter().zip(&log.ok_at) {
                    let _ = writeln!(acked, "{name},{c},{seq},{:.1}", abs(*at));
                }
            }
        }
        std::fs::write(path, acked).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &opts.summary {
        std::fs::write(path, summary).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// The longest stretch between two successes in `ok_at` (sorted, µs since the start), or
/// from the last one to `end_us` if that is longer: (length, from, to, still open at the
/// end). The time before the first success (connecting) does not count; no success at all
/// is one gap over the whole run.
fn longest_gap(ok_at: &[u64], end_us: u64) -> (u64, u64, u64, bool) {
    let Some(&last) = ok_at.last() else {
        return (end_us, 0, end_us, true);
    };
    let mut gap = (end_us.saturating_sub(last), last, end_us, true);
    for w in ok_at.windows(2) {
        if w[1] - w[0] > gap.0 {
            gap = (w[1] - w[0], w[0], w[1], false);
        }
    }
    gap
}

/// Keys of a target's writes: `{prefix}:{client}:{seq}`, one key per write, so that every
/// acknowledged write can be looked up afterwards.
fn key_prefix(target: &str) -> String {
    format!("rfp:timeline:{target}")
}

/// One client: `SET {prefix}:{seq} {seq}`, wait for `+OK`, until the end of the run.
async fn client(run: Arc<Run>, target: usize, addr: SocketAddr, prefix: String) -> ClientLog {
    let mut log = ClientLog {
        buckets: vec![Bucket::default(); run.buckets],
        ..ClientLog::default()
    };
    let mut conn: Option<TcpStream> = None;
    let mut failures_in_a_row = 0u32;
    let mut seq = 0u64;
    let mut cmd = Vec::with_capacity(64);
    let mut reply = [0u8; 512];
    loop {
        if failures_in_a_row >= 2 {
            sleep_until((Instant::now() + RETRY_PAUSE).min(run.end)).await;
        }
        let sent = Instant::now();
        if sent >= run.end {
            break;
        }
        seq += 1;
        let value = seq.to_string();
        cmd.clear();
        resp::encode(&mut cmd, &["SET", &format!("{prefix}:{value}"), &value]);
        let deadline = (sent + run.timeout).min(run.end);
        let outcome = match timeout_at(deadline, request(&mut conn, addr, &cmd, &mut reply)).await {
            // The run ended while this request was in flight: neither a success nor a failure.
            Err(_) if Instant::now() >= run.end => break,
            Err(_) => Err(Failure::conn("timeout")),
            Ok(r) => r,
        };
        let done = Instant::now();
        match outcome {
            Ok(()) => {
                failures_in_a_row = 0;
                log.ok(
                    seq,
                    done.duration_since(sent).as_micros() as u64,
                    run.micros(done),
                );
                run.answered[target].store(true, Ordering::Relaxed);
                if !run.interval.is_zero() {
                    sleep_until((sent + run.interval).min(run.end)).await;
                }
            }
            Err(f) => {
                failures_in_a_row += 1;
                log.failed(&f, run.micros(done));
                if f.connection_lost {
                    conn = None;
                }
            }
        }
    }
    log
}

/// Sends one command on `conn` (connecting first if there is none) and reads one reply line.
async fn request(
    conn: &mut Option<TcpStream>,
    addr: SocketAddr,
    cmd: &[u8],
    buf: &mut [u8],
) -> Result<(), Failure> {
    if conn.is_none() {
        let s = TcpStream::connect(addr)
            .await
            .map_err(|e| Failure::io("connect", &e))?;
        let _ = s.set_nodelay(true);
        *conn = Some(s);
    }
    let s = conn.as_mut().expect("connected above");
    s.write_all(cmd)
        .await
        .map_err(|e| Failure::io("write", &e))?;
    let mut len = 0;
    loop {
        if len == buf.len() {
            return Err(Failure::conn("reply too long"));
        }
        let n = s
            .read(&mut buf[len..])
            .await
            .map_err(|e| Failure::io("read", &e))?;
        if n == 0 {
            return Err(Failure::conn("eof"));
        }
        len += n;
        if let Some(end) = buf[..len].windows(2).position(|w| w == b"\r\n") {
            let line = &buf[..end];
            return match line.first() {
                _ if line == b"+OK" => Ok(()),
                // `-READONLY You can't write against a read only replica.`: keep the
                // connection, as a client library does after an error reply.
                Some(b'-') => {
                    let word = line[1..].split(|&c| c == b' ').next().unwrap_or_default();
                    Err(Failure {
                        kind: format!("-{}", String::from_utf8_lossy(word)),
                        connection_lost: false,
                    })
                }
                _ => Err(Failure::conn("unexpected reply")),
            };
        }
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_gap_counts_an_open_end() {
        assert_eq!(longest_gap(&[], 500), (500, 0, 500, true));
        assert_eq!(longest_gap(&[10, 20, 300, 310], 400), (280, 20, 300, false));
        assert_eq!(longest_gap(&[10, 20], 400), (380, 20, 400, true));
    }
}
