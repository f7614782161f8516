//! `timeline rtt`: round-trip times of one client (c=1, no pipelining) through one target,
//! measured per request with the monotonic clock.
//!
//! redis-benchmark reports percentiles from a histogram whose steps are about 8 µs at loopback
//! latencies, coarser than the 15 µs the added-latency target allows; this client times every
//! request to the nanosecond, so the bench can compare targets at microsecond resolution.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::args::Args;
use crate::resp;

/// The key every request reads; written once, through the target, before the timed requests.
const KEY: &str = "rfp:rtt";
/// Its value: 3 bytes, as in redis-benchmark's default GET.
const VALUE: &str = "xxx";
/// Longest wait for one reply.
const TIMEOUT: Duration = Duration::from_secs(5);

pub struct Options {
    target: SocketAddr,
    requests: usize,
    warmup: usize,
}

impl Options {
    pub fn parse(argv: &[String]) -> Result<Options, String> {
        let a = Args::parse(argv, &["--target", "--requests", "--warmup"])?;
        let target = Args::resolve("--target", a.req("--target")?)?;
        let requests: usize = a.num("--requests", 30_000)?;
        let warmup: usize = a.num("--warmup", 1_000)?;
        if requests == 0 {
            return Err("--requests must be above zero".to_string());
        }
        Ok(Options {
            target,
            requests,
            warmup,
        })
    }
}

/// One command as RESP.
fn command(args: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    resp::encode(&mut out, args);
    out
}

/// Sends `req` and reads until exactly `want` came back; anything else (an error reply, more
/// bytes) is an error as soon as it differs, not after the read timeout.
fn round_trip(s: &mut TcpStream, req: &[u8], want: &[u8], buf: &mut [u8]) -> Result<(), String> {
    s.write_all(req).map_err(|e| format!("send: {e}"))?;
    let mut got = 0;
    while got < want.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err("connection closed".to_string()),
            Ok(n) => {
                got += n;
                if got > want.len() || buf[..got] != want[..got] {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("receive: {e}")),
        }
    }
    if &buf[..got] != want {
        return Err(format!(
            "unexpected reply {:?}",
            String::from_utf8_lossy(&buf[..got])
        ));
    }
    Ok(())
}

/// Nearest-rank percentile of sorted nanoseconds, in milliseconds.
fn percentile_ms(sorted: &[u64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1e6
}

pub fn run(o: Options) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&o.target, TIMEOUT)
        .map_err(|e| format!("connect {}: {e}", o.target))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 256];
    round_trip(&mut s, &command(&["SET", KEY, VALUE]), b"+OK\r\n", &mut buf)?;
    let get = command(&["GET", KEY]);
    let want = format!("${}\r\n{VALUE}\r\n", VALUE.len()).into_bytes();
    for _ in 0..o.warmup {
        round_trip(&mut s, &get, &want, &mut buf)?;
    }
    let mut ns = Vec::with_capacity(o.requests);
    let start = Instant::now();
    for _ in 0..o.requests {
        let t = Instant::now();
        round_trip(&mut s, &get, &want, &mut buf)?;
        ns.push(t.elapsed().as_nanos() as u64);
    }
    let total = start.elapsed().as_secs_f64();
    ns.sort_unstable();
    let avg_ms = ns.iter().sum::<u64>() as f64 / ns.len() as f64 / 1e6;
    // redis-benchmark --csv's column names, so the bench reads both alike.
    println!("\"test\",\"rps\",\"avg_latency_ms\",\"p50_latency_ms\",\"p99_latency_ms\"");
    println!(
        "\"GET\",\"{:.2}\",\"{avg_ms:.4}\",\"{:.4}\",\"{:.4}\"",
        o.requests as f64 / total,
        percentile_ms(&ns, 50.0),
        percentile_ms(&ns, 99.0)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<u64> = (1..=100).map(|i| i * 1_000).collect();
        assert_eq!(percentile_ms(&v, 50.0), 0.05);
        assert_eq!(percentile_ms(&v, 99.0), 0.099);
        assert_eq!(percentile_ms(&[7_000], 99.0), 0.007);
    }
}
