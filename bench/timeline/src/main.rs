//! The failover timeline of bench/run.sh (see bench/README.md, "Failover timeline"):
//!
//! - `timeline load`: request/response clients against several middle boxes at once, counting
//!   successes and failures per 100 ms, so one forced failover can be seen through all of them.
//! - `timeline plot`: an SVG of such a run, with the failover's events marked.
//! - `timeline rtt`: one client's round-trip times through one target, timed per request (the
//!   c=1 latency scenario, at a finer resolution than redis-benchmark's histogram).

use std::process::ExitCode;

mod args;
mod load;
mod plot;
mod resp;
mod rtt;

const USAGE: &str = "\
usage:
  timeline load --target NAME=HOST:PORT... --clients N --duration SECS --out FILE.csv
                [--summary FILE.csv] [--acked FILE.csv] [--interval-ms MS] [--timeout-ms MS]
  timeline plot --csv FILE.csv --events FILE.csv --out FILE.svg [--lost FILE.csv] [--title TEXT]
  timeline rtt --target HOST:PORT [--requests N] [--warmup N]

load: per target, N connections, each sending `SET rfp:timeline:TARGET:CLIENT:SEQ SEQ` (a key
per write) and waiting for the reply (no pipelining), at most one request per --interval-ms
(default 0: as fast as replies come). A failure (refused connect, EOF, reset, no reply within
--timeout-ms, default 5000, or an error reply) is counted and the client reconnects at once;
after two failures in a row it waits 10 ms before each further attempt. Prints `start UNIX_MS`
at once and `ready UNIX_MS` when every target has answered.
  --out      per target and 100 ms bucket: successes, failures, slowest reply
  --summary  per target: totals, the longest time without a successful reply (all clients;
             worst client), the first and last failure, failures by kind
  --acked    every acknowledged write: `target,client,seq,unix_ms`

rtt: one connection, `SET rfp:rtt xxx`, then --warmup (default 1000) and --requests (default
30000) `GET rfp:rtt`, each timed alone from send to the whole reply; prints a CSV row like
`redis-benchmark --csv` (rps, mean, p50, p99 in ms) at microsecond resolution.

plot: one panel per target: successes per 100 ms as a line, failures as crosses, and a dashed
vertical line per event.
  --events   CSV `unix_ms,label[,target]`; its first row is time zero (the fault); an event
             naming a target is drawn in that target's color
  --lost     CSV `target,bucket_start_unix_ms,lost`: acknowledged writes that were lost,
             drawn as triangles
";

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let result = match argv.first().map(String::as_str) {
        Some("load") => load::Options::parse(&argv[1..]).and_then(load::run),
        Some("plot") => plot::Options::parse(&argv[1..]).and_then(plot::run),
        Some("rtt") => rtt::Options::parse(&argv[1..]).and_then(rtt::run),
        Some("-h" | "--help") => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => Err(format!("expected `load`, `plot` or `rtt`\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("timeline: {e}");
            ExitCode::FAILURE
        }
    }
}
