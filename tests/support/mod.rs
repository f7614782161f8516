//! Test harness: real `redis-server` and `redis-sentinel` processes on free ports in temp dirs,
//! the proxy binary as a child process, and wait-until helpers (no fixed sleeps).
#![allow(dead_code)]

pub mod fake_sentinel;
pub mod net;
pub mod secure;
pub mod tls;
pub mod workload;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const MASTER_NAME: &str = "redis-ha";
pub const BIN: &str = env!("CARGO_BIN_EXE_redis-failover-proxy");

/// Open descriptors of process `pid`.
pub fn fd_count(pid: u32) -> usize {
    fds_where(pid, |_| true)
}

/// Open descriptors of process `pid` whose `/proc/PID/fd` link starts with `kind` (e.g.
/// `"socket:"`, `"pipe:"`).
pub fn fd_count_of(pid: u32, kind: &str) -> usize {
    fds_where(pid, |link| link.starts_with(kind))
}

fn fds_where(pid: u32, keep: impl Fn(&str) -> bool) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| keep(&l.to_string_lossy())))
                .count()
        })
        .unwrap_or(0)
}

/// Panics (with `what`) unless `cond` becomes true within `timeout`; returns the time it took.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A port below the ephemeral range (so outgoing connections never take it) that is free now.
pub fn free_port() -> u16 {
    // One counter per test process, wrapping inside 20000..32000 without a reset that two
    // threads could race (that once handed the same port to a route and its admin server).
    // Different processes start at different offsets.
    static NEXT: OnceLock<AtomicU16> = OnceLock::new();
    let next = NEXT.get_or_init(|| AtomicU16::new((std::process::id() % 1000) as u16 * 12));
    loop {
        let p = 20000 + next.fetch_add(1, Ordering::Relaxed) % 12000;
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

/// Skips the calling test (with the reason printed) when a binary is missing.
pub fn require(bin: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {bin}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !found {
        skip(&format!(
            "{bin} is not installed (run .ci/run or scripts/test.sh to install it)"
        ));
    }
    found
}

/// Says why the calling test (or a part of it) is skipped: `SKIPPED: <why>` on stderr (shown
/// with `--nocapture` or when the test fails) and, when `RFP_SKIP_LOG` names a file, one line
/// `<test name>: <why>` appended to it, which `scripts/test.sh` counts and prints, so a run
/// that skipped something never reports "0 skipped".
pub fn skip(why: &str) {
    log_skip(why, "");
}

/// Like [`skip`] for one part of a test that goes on with the rest (logged "(in part)").
pub fn skip_part(why: &str) {
    log_skip(why, " (in part)");
}

fn log_skip(why: &str, part: &str) {
    eprintln!("SKIPPED{part}: {why}");
    if let Some(path) = std::env::var_os("RFP_SKIP_LOG") {
        let test = std::thread::current()
            .name()
            .unwrap_or("unnamed test")
            .to_string();
        let line = format!("{test}{part}: {}\n", why.replace('\n', " "));
        // One write of one short line: appends from parallel tests do not interleave.
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
    }
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("rfp-test-")
        .tempdir()
        .expect("temp dir")
}

/// Where a process runs: the test's own namespace on loopback, or a network namespace of a
/// [`net::Net`] reached at `ip`.
#[derive(Clone, Debug)]
pub struct Host {
    pub netns: Option<String>,
    pub ip: IpAddr,
}

impl Host {
    pub fn local() -> Host {
        Host {
            netns: None,
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }

    /// `program`, run inside this host's namespace if it has one.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    /// The address servers bind: loopback locally, every address inside a namespace.
    fn bind(&self) -> &'static str {
        if self.netns.is_some() {
            "0.0.0.0"
        } else {
            "127.0.0.1"
        }
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits up to `timeout` for `child` to exit and returns its status; `None` after killing and
/// reaping it when it did not exit in time.
pub fn exit_within(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if start.elapsed() > timeout {
            kill(child);
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One `redis-server`.
pub struct Node {
    pub port: u16,
    pub host: Host,
    dir: PathBuf,
    child: Option<Child>,
}

impl Node {
    pub fn start(dir: &Path, replica_of: Option<u16>) -> Node {
        let master = replica_of.map(|p| SocketAddr::from((Ipv4Addr::LOCALHOST, p)));
        Node::start_on(&Host::local(), dir, master)
    }

    /// A node on `host`, replicating from `replica_of` if given.
    pub fn start_on(host: &Host, dir: &Path, replica_of: Option<SocketAddr>) -> Node {
        let port = free_port();
        let dir = dir.join(format!("node-{port}"));
        std::fs::create_dir_all(&dir).expect("node dir");
        let mut n = Node {
            port,
            host: host.clone(),
            dir,
            child: None,
        };
        n.spawn(replica_of);
        n
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.host.ip, self.port)
    }

    fn spawn(&mut self, replica_of: Option<SocketAddr>) {
        let mut cmd = self.host.command("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", self.host.bind()])
            .args(["--protected-mode", "no"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"));
        if let Some(m) = replica_of {
            cmd.args(["--replicaof", &m.ip().to_string(), &m.port().to_string()]);
        }
        self.child = Some(
            cmd.stdout(Stdio::null())
                .spawn()
                .expect("spawn redis-server"),
        );
        let addr = self.addr();
        wait_until(Duration::from_secs(10), "redis-server answers PING", || {
            redis_cmd_at(addr, &["PING"]).is_ok()
        });
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c);
        }
    }

    /// Starts the node again on the same port (as a master unless `replica_of`, a loopback port).
    pub fn restart(&mut self, replica_of: Option<u16>) {
        self.kill();
        self.spawn(replica_of.map(|p| SocketAddr::from((Ipv4Addr::LOCALHOST, p))));
    }

    pub fn role(&self) -> String {
        role_at(self.addr())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One `redis-sentinel`.
pub struct Sentinel {
    pub port: u16,
    pub host: Host,
    conf: PathBuf,
    /// The config it started from (a sentinel rewrites its file as it learns).
    pristine: String,
    child: Option<Child>,
}

impl Sentinel {
    /// Starts a sentinel monitoring `127.0.0.1:master_port` as `redis-ha` with quorum 2.
    pub fn start(dir: &Path, master_port: u16, down_after_ms: u64) -> Sentinel {
        Sentinel::start_named(dir, "127.0.0.1", master_port, down_after_ms)
    }

    /// Like [`Sentinel::start`], naming the master by `host`; a hostname turns on the
    /// sentinel's `resolve-hostnames` and `announce-hostnames`.
    pub fn start_named(dir: &Path, host: &str, master_port: u16, down_after_ms: u64) -> Sentinel {
        Sentinel::start_on(&Host::local(), dir, host, master_port, down_after_ms)
    }

    /// A sentinel on `on`, monitoring the master `host`:`master_port`.
    pub fn start_on(
        on: &Host,
        dir: &Path,
        host: &str,
        master_port: u16,
        down_after_ms: u64,
    ) -> Sentinel {
        let port = free_port();
        let hostnames = if host.parse::<std::net::IpAddr>().is_err() {
            "sentinel resolve-hostnames yes\nsentinel announce-hostnames yes\n"
        } else {
            ""
        };
        let dir = dir.join(format!("sentinel-{port}"));
        std::fs::create_dir_all(&dir).expect("sentinel dir");
        let conf = dir.join("sentinel.conf");
        let pristine = format!(
            "port {port}\nbind {bind}\nprotected-mode no\ndaemonize no\ndir {dir}\nlogfile {dir}/sentinel.log\n\
             {hostnames}sentinel monitor {MASTER_NAME} {host} {master_port} 2\n\
             sentinel down-after-milliseconds {MASTER_NAME} {down_after_ms}\n\
             sentinel failover-timeout {MASTER_NAME} 6000\n\
             sentinel parallel-syncs {MASTER_NAME} 2\n",
            dir = dir.display(),
            bind = on.bind(),
        );
        std::fs::write(&conf, &pristine).expect("sentinel conf");
        let mut s = Sentinel {
            port,
            host: on.clone(),
            conf,
            pristine,
            child: None,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let child = self
            .host
            .command("redis-sentinel")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn redis-sentinel");
        self.child = Some(child);
        let addr = self.addr();
        wait_until(Duration::from_secs(10), "sentinel answers PING", || {
            redis_cmd_at(addr, &["PING"]).is_ok()
        });
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.host.ip, self.port)
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c);
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Restarts it from the config it first started with, forgetting every failover since
    /// (what a config map without a volume gives).
    pub fn restart_pristine(&mut self) {
        self.kill();
        std::fs::write(&self.conf, &self.pristine).expect("sentinel conf");
        self.spawn();
    }

    /// `SENTINEL MASTER redis-ha` as a field map.
    pub fn master_fields(&self) -> Option<std::collections::HashMap<String, String>> {
        let v = redis_cmd_at(self.addr(), &["SENTINEL", "MASTER", MASTER_NAME]).ok()?;
        let redis::Value::Array(items) = v else {
            return None;
        };
        let mut map = std::collections::HashMap::new();
        for kv in items.chunks(2) {
            if let [redis::Value::BulkString(k), redis::Value::BulkString(v)] = kv {
                map.insert(
                    String::from_utf8_lossy(k).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                );
            }
        }
        Some(map)
    }

    /// The master port this sentinel names.
    pub fn master_port(&self) -> Option<u16> {
        self.master_fields()?.get("port")?.parse().ok()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three nodes (the first is master) and three sentinels, converged.
pub struct Topology {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<Node>,
    pub sentinels: Vec<Sentinel>,
}

impl Topology {
    /// Three nodes and three sentinels, as in the seed.
    pub fn start(down_after_ms: u64) -> Topology {
        Topology::start_sized(3, 3, down_after_ms)
    }

    /// One node and one sentinel: for tests that never fail over.
    pub fn single() -> Topology {
        Topology::start_sized(1, 1, 60_000)
    }

    fn start_sized(n_nodes: usize, n_sentinels: usize, down_after_ms: u64) -> Topology {
        let local = Host::local();
        Topology::start_on(
            &vec![&local; n_nodes],
            &vec![&local; n_sentinels],
            down_after_ms,
        )
    }

    /// One node per entry of `nodes` (the first is master) and one sentinel per entry of
    /// `sentinels`, converged.
    pub fn start_on(nodes: &[&Host], sentinels: &[&Host], down_after_ms: u64) -> Topology {
        let dir = tempdir();
        let master = Node::start_on(nodes[0], dir.path(), None);
        let ma = master.addr();
        let mut all = vec![master];
        for h in &nodes[1..] {
            all.push(Node::start_on(h, dir.path(), Some(ma)));
        }
        let nodes = all;
        for n in &nodes[1..] {
            let a = n.addr();
            wait_until(Duration::from_secs(10), "replica linked to master", || {
                redis_cmd_at(a, &["INFO", "replication"])
                    .map(|v| value_text(&v).contains("master_link_status:up"))
                    .unwrap_or(false)
            });
        }
        let mh = ma.ip().to_string();
        let sentinels: Vec<Sentinel> = sentinels
            .iter()
            .map(|h| Sentinel::start_on(h, dir.path(), &mh, ma.port(), down_after_ms))
            .collect();
        let t = Topology {
            dir,
            nodes,
            sentinels,
        };
        t.wait_converged();
        t
    }

    /// Every sentinel knows the others and the replicas.
    pub fn wait_converged(&self) {
        let others = (self.sentinels.len() - 1).to_string();
        let replicas = (self.nodes.len() - 1).to_string();
        for s in &self.sentinels {
            wait_until(
                Duration::from_secs(20),
                "sentinels discover each other and the replicas",
                || {
                    s.master_fields().is_some_and(|f| {
                        f.get("num-other-sentinels") == Some(&others)
                            && f.get("num-slaves") == Some(&replicas)
                    })
                },
            );
        }
    }

    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|s| s.port).collect()
    }

    pub fn sentinel_addrs(&self) -> Vec<SocketAddr> {
        self.sentinels.iter().map(|s| s.addr()).collect()
    }

    pub fn node_by_port(&mut self, port: u16) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("node with that port")
    }

    /// The master port a majority of live sentinels name.
    pub fn master_port(&self) -> Option<u16> {
        let named: Vec<u16> = self
            .sentinels
            .iter()
            .filter_map(|s| s.master_port())
            .collect();
        named
            .iter()
            .copied()
            .find(|p| named.iter().filter(|q| *q == p).count() > named.len() / 2)
    }

    /// `SENTINEL FAILOVER` and wait until the sentinels name a new master that says ROLE master.
    pub fn failover(&self) -> u16 {
        self.failover_via(0)
    }

    /// `SENTINEL FAILOVER` sent to sentinel `i`. A failover Sentinel itself gives up (it logs
    /// `-failover-abort-...`, e.g. no replica good enough yet under heavy writes) is asked for
    /// once more, with the reason printed.
    pub fn failover_via(&self, i: usize) -> u16 {
        let old = self.master_port().expect("a master");
        let s = &self.sentinels[i];
        for attempt in 0..2 {
            wait_until(
                Duration::from_secs(20),
                "SENTINEL FAILOVER accepted",
                || redis_cmd_at(s.addr(), &["SENTINEL", "FAILOVER", MASTER_NAME]).is_ok(),
            );
            if let Some(new) = self.try_wait_new_master(old, Duration::from_secs(20)) {
                return new;
            }
            let log =
                std::fs::read_to_string(s.conf.with_file_name("sentinel.log")).unwrap_or_default();
            let aborts: Vec<&str> = log.lines().filter(|l| l.contains("abort")).collect();
            eprintln!("failover attempt {attempt} gave no new master; sentinel says: {aborts:?}");
        }
        self.wait_new_master(old)
    }

    /// Like [`Topology::wait_new_master`], `None` after `timeout`.
    pub fn try_wait_new_master(&self, old: u16, timeout: Duration) -> Option<u16> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(p) = self.master_port() {
                if p != old
                    && self
                        .nodes
                        .iter()
                        .any(|n| n.port == p && n.role() == "master")
                {
                    return Some(p);
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Waits until a majority of sentinels name a master other than `old` that says ROLE master.
    pub fn wait_new_master(&self, old: u16) -> u16 {
        let timeout = Duration::from_secs(30);
        self.try_wait_new_master(old, timeout).unwrap_or_else(|| {
            panic!("timed out after {timeout:?} waiting for: sentinels name a new master")
        })
    }
}

/// The common start of a test: skip (printing why) without `redis-sentinel`, else a
/// converged topology and a ready proxy in front of it.
pub fn ready_lab(
    topology: impl FnOnce() -> Topology,
    opts: ProxyOpts,
) -> Option<(Topology, Proxy)> {
    if !require("redis-sentinel") {
        return None;
    }
    let t = topology();
    let proxy = Proxy::start_with(&t.sentinel_ports(), opts);
    proxy.wait_ready();
    Some((t, proxy))
}

/// VmRSS of process `pid` in KiB (0 if it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// SET then GET a value of each size in `sizes` through `c` (bytes depend on the size's
/// index and `salt`, so a value from another round or size cannot pass), then a PING: a small
/// request right after a large one, and the other way round.
pub fn assert_values_round_trip(c: &mut Client, sizes: &[usize], salt: usize) {
    for (i, &n) in sizes.iter().enumerate() {
        let v: String = (0..n)
            .map(|b| (b'a' + ((b * 7 + i + salt) % 26) as u8) as char)
            .collect();
        let k = format!("size:{n}");
        assert_eq!(c.cmd(&["SET", &k, &v]).unwrap(), "+OK", "SET of {n} bytes");
        assert_eq!(c.cmd(&["GET", &k]).unwrap(), v, "GET of {n} bytes");
        assert_eq!(c.cmd(&["PING"]).unwrap(), "+PONG");
    }
}

/// One command on a fresh connection.
pub fn redis_cmd(port: u16, args: &[&str]) -> redis::RedisResult<redis::Value> {
    redis_cmd_at(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), args)
}

/// One command on a fresh connection to `addr`.
pub fn redis_cmd_at(addr: SocketAddr, args: &[&str]) -> redis::RedisResult<redis::Value> {
    let client = redis::Client::open(format!("redis://{addr}/"))?;
    let mut con = client.get_connection_with_timeout(Duration::from_secs(2))?;
    con.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(&mut con)
}

/// First element of `ROLE` (`master`, `slave`, `sentinel`) or `error`.
pub fn role_of(port: u16) -> String {
    role_at(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
}

/// [`role_of`] for a node at `addr`.
pub fn role_at(addr: SocketAddr) -> String {
    match redis_cmd_at(addr, &["ROLE"]) {
        Ok(redis::Value::Array(items)) => items.first().map(value_text).unwrap_or_default(),
        _ => "error".into(),
    }
}

pub fn value_text(v: &redis::Value) -> String {
    match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        redis::Value::VerbatimString { text, .. } => text.clone(),
        redis::Value::Int(i) => i.to_string(),
        other => format!("{other:?}"),
    }
}

/// A raw client connection through the proxy, speaking inline RESP.
pub struct Client {
    pub stream: TcpStream,
}

impl Client {
    pub fn connect(port: u16) -> Client {
        Client::connect_to(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
    }

    pub fn connect_to(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect to proxy");
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .expect("timeout");
        Client { stream }
    }

    /// Sends one command and reads one reply line (plus a bulk body if any).
    pub fn cmd(&mut self, args: &[&str]) -> std::io::Result<String> {
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{}\r\n", a.len(), a));
        }
        self.stream.write_all(req.as_bytes())?;
        let line = self.read_line()?;
        if let Some(len) = line.strip_prefix('$') {
            let len: i64 = len.parse().unwrap_or(-1);
            if len < 0 {
                return Ok("(nil)".into());
            }
            let mut body = vec![0u8; len as usize + 2];
            self.stream.read_exact(&mut body)?;
            body.truncate(len as usize);
            return Ok(String::from_utf8_lossy(&body).into_owned());
        }
        Ok(line)
    }

    /// Reads one RESP line (without the CRLF).
    pub fn read_line(&mut self) -> std::io::Result<String> {
        let mut out = Vec::new();
        let mut b = [0u8; 1];
        loop {
            // A blocking read with a timeout returns EINTR on any signal; it is not an answer.
            let n = match self.stream.read(&mut b) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => r?,
            };
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "EOF",
                ));
            }
            out.push(b[0]);
            if out.ends_with(b"\r\n") {
                out.truncate(out.len() - 2);
                return Ok(String::from_utf8_lossy(&out).into_owned());
            }
        }
    }

    /// The port of the Redis node this connection reaches (INFO server's tcp_port).
    pub fn node_port(&mut self) -> std::io::Result<u16> {
        let info = self.cmd(&["INFO", "server"])?;
        info.lines()
            .find_map(|l| l.strip_prefix("tcp_port:"))
            .and_then(|p| p.trim().parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("no tcp_port in {info:?}")))
    }

    /// Whether the proxy closed this connection (EOF or reset) within `timeout`; data that
    /// arrives meanwhile is discarded.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut b = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let _ = self.stream.set_read_timeout(Some(left));
            match self.stream.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return false
                }
                Err(_) => return true,
            }
        }
    }
}

/// The proxy binary as a child process.
pub struct Proxy {
    pub port: u16,
    pub admin: u16,
    /// Where `port` and `admin` listen.
    pub ip: IpAddr,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    log: PathBuf,
}

/// Options of a test proxy beyond the sentinels.
#[derive(Clone)]
pub struct ProxyOpts {
    pub hold_timeout: &'static str,
    pub poll_interval: &'static str,
    pub max_connections: usize,
    pub shutdown_grace: &'static str,
    pub master: &'static str,
    /// Run under `prlimit --nofile=N:N`.
    pub nofile: Option<u32>,
    /// Extra lines for the `[[route]]` table, e.g. `keepalive = "2s"`.
    pub route_extra: &'static str,
    /// Extra lines for the `[sentinel]` table, e.g. `on_minority = "fence"`.
    pub sentinel_extra: &'static str,
    /// Lines for a `[runtime]` table, e.g. `threads = 2`.
    pub runtime_extra: &'static str,
}

impl Default for ProxyOpts {
    fn default() -> Self {
        ProxyOpts {
            hold_timeout: "10s",
            poll_interval: "250ms",
            max_connections: 10_000,
            shutdown_grace: "10s",
            master: MASTER_NAME,
            nofile: None,
            route_extra: "",
            sentinel_extra: "",
            runtime_extra: "",
        }
    }
}

/// The `[runtime]` lines of a test's proxy: `extra`, plus `engine = "E"` when the environment
/// variable `RFP_TEST_ENGINE` is set (scripts/test.sh runs some suites again with
/// `RFP_TEST_ENGINE=io_uring`) and `extra` does not choose an engine itself.
pub fn runtime_lines(extra: &str) -> String {
    match std::env::var("RFP_TEST_ENGINE") {
        Ok(e) if !e.is_empty() && !extra.contains("engine") => {
            format!("{extra}\nengine = \"{e}\"")
        }
        _ => extra.to_string(),
    }
}

impl Proxy {
    pub fn start(sentinel_ports: &[u16]) -> Proxy {
        Proxy::start_with(sentinel_ports, ProxyOpts::default())
    }

    pub fn start_with(sentinel_ports: &[u16], o: ProxyOpts) -> Proxy {
        let sentinels: Vec<SocketAddr> = sentinel_ports
            .iter()
            .map(|p| SocketAddr::from((Ipv4Addr::LOCALHOST, *p)))
            .collect();
        Proxy::start_on(&Host::local(), &sentinels, o)
    }

    /// The proxy on `host`, listening (clients and admin) on the host's address.
    pub fn start_on(host: &Host, sentinels: &[SocketAddr], o: ProxyOpts) -> Proxy {
        Proxy::start_on_env(host, sentinels, o, &[])
    }

    /// [`Proxy::start_on`] with extra environment variables (e.g. `NOTIFY_SOCKET`).
    pub fn start_on_env(
        host: &Host,
        sentinels: &[SocketAddr],
        o: ProxyOpts,
        env: &[(&str, &str)],
    ) -> Proxy {
        let dir = tempdir();
        let port = free_port();
        let admin = free_port();
        let ip = host.ip;
        let sentinels: Vec<String> = sentinels.iter().map(|a| format!("\"{a}\"")).collect();
        let conf = dir.path().join("proxy.toml");
        std::fs::write(
            &conf,
            format!(
                "shutdown_grace = \"{}\"\n[admin]\nlisten = \"{ip}:{admin}\"\n\
                 [sentinel]\naddresses = [{}]\npoll_interval = \"{}\"\ntimeout = \"500ms\"\n{}\n\
                 [[route]]\nmaster = \"{}\"\nlisten = \"{ip}:{port}\"\nhold_timeout = \"{}\"\nmax_connections = {}\n{}\n\
                 [runtime]\n{}\n",
                o.shutdown_grace,
                sentinels.join(", "),
                o.poll_interval,
                o.sentinel_extra,
                o.master,
                o.hold_timeout,
                o.max_connections,
                o.route_extra,
                runtime_lines(o.runtime_extra),
            ),
        )
        .expect("proxy.toml");
        let mut cmd = match o.nofile {
            Some(n) => {
                let mut c = host.command("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg(BIN);
                c
            }
            None => host.command(BIN),
        };
        cmd.arg("--config").arg(&conf);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Proxy::spawn(cmd, dir, ip, port, admin)
    }

    /// Runs the proxy with flags only (no config file anywhere).
    pub fn start_flags(sentinel_ports: &[u16]) -> Proxy {
        let dir = tempdir();
        let port = free_port();
        let admin = free_port();
        let mut cmd = Command::new(BIN);
        cmd.args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .args(["--master", MASTER_NAME]);
        for p in sentinel_ports {
            // A hostname, as in the seed (redis1:16355).
            cmd.args(["--sentinel", &format!("localhost:{p}")]);
        }
        Proxy::spawn(cmd, dir, IpAddr::V4(Ipv4Addr::LOCALHOST), port, admin)
    }

    pub fn spawn(
        mut cmd: Command,
        dir: tempfile::TempDir,
        ip: IpAddr,
        port: u16,
        admin: u16,
    ) -> Proxy {
        let log = dir.path().join("proxy.log");
        let child = cmd
            .current_dir(dir.path())
            // Per-session debug lines would slow fencing tests; RFP_TEST_LOG=debug shows them.
            .env(
                "RUST_LOG",
                std::env::var("RFP_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn proxy");
        let p = Proxy {
            port,
            admin,
            ip,
            dir,
            child: Some(child),
            log,
        };
        wait_until(Duration::from_secs(10), "proxy /healthz answers", || {
            p.http("/healthz").is_some_and(|(code, _)| code == 200)
        });
        p
    }

    /// GET `path` on the admin server: (status code, body).
    pub fn http(&self, path: &str) -> Option<(u16, String)> {
        http_get_at(SocketAddr::new(self.ip, self.admin), path)
    }

    /// The client listen address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }

    /// Waits until /status shows the route's master at `addr` (`ip:port`).
    pub fn wait_routes_to(&self, addr: &str) {
        self.wait_routes_to_within(addr, Duration::from_secs(10));
    }

    /// Like [`Proxy::wait_routes_to`], with a deadline of the caller's.
    pub fn wait_routes_to_within(&self, addr: &str, deadline: Duration) {
        wait_until(deadline, "the proxy routes to the new master", || {
            self.master().is_some_and(|(_, a)| a == addr)
        });
    }

    pub fn wait_ready(&self) {
        wait_until(Duration::from_secs(15), "proxy /readyz is 200", || {
            self.http("/readyz").is_some_and(|(c, _)| c == 200)
        });
    }

    pub fn status(&self) -> serde_json::Value {
        let (_, body) = self.http("/status").expect("/status");
        serde_json::from_str(&body).expect("status JSON")
    }

    /// The route's epoch and master address from /status.
    pub fn master(&self) -> Option<(u64, String)> {
        let s = self.status();
        let m = &s["routes"][0]["master"];
        Some((m["epoch"].as_u64()?, m["addr"].as_str()?.to_string()))
    }

    /// Sum of the samples of metric `name` whose labels contain every `label=value` in `labels`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (_, body) = self.http("/metrics").expect("/metrics");
        metric_sum(&body, name, labels)
    }

    /// Waits until `name{labels}` (summed over other labels) satisfies `ok`; returns how
    /// long that took. On timeout the panic names the metric and its last value.
    pub fn wait_metric(
        &self,
        timeout: Duration,
        what: &str,
        name: &str,
        labels: &[(&str, &str)],
        ok: impl Fn(f64) -> bool,
    ) -> Duration {
        let what = format!("{what} ({name}{labels:?})");
        let start = Instant::now();
        loop {
            let last = self.metric(name, labels);
            if ok(last) {
                return start.elapsed();
            }
            if start.elapsed() > timeout {
                panic!("timed out after {timeout:?} waiting for: {what}; last value {last}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until a fence has been recorded; returns how many were, and their mean duration
    /// in ms (`fence_duration_seconds`: evidence to the last session of the epoch closed).
    pub fn fences_recorded(&self, timeout: Duration) -> (f64, f64) {
        self.wait_metric(
            timeout,
            "fence duration recorded",
            "redis_failover_proxy_fence_duration_seconds_count",
            &[],
            |v| v >= 1.0,
        );
        let count = self.metric("redis_failover_proxy_fence_duration_seconds_count", &[]);
        let sum = self.metric("redis_failover_proxy_fence_duration_seconds_sum", &[]);
        (count, sum / count * 1000.0)
    }

    /// Asserts that exactly one fence was recorded, that it closed at least `sessions`
    /// sessions (`master_switch`), and that it was prompt: under 250 ms from evidence to the
    /// last session closed (a debug build under a parallel test run gets headroom; the release
    /// targets are the benchmark's). Returns its duration in ms.
    pub fn assert_one_prompt_fence(&self, sessions: usize) -> f64 {
        let (count, mean_ms) = self.fences_recorded(Duration::from_secs(5));
        assert_eq!(count, 1.0, "one failover, one fence");
        assert!(mean_ms < 250.0, "fencing took {mean_ms} ms");
        let closed = self.metric(
            "redis_failover_proxy_sessions_closed_total",
            &[("reason", "master_switch")],
        );
        assert!(
            closed >= sessions as f64,
            "{closed} sessions fenced, expected {sessions}"
        );
        mean_ms
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Sends a signal (e.g. "TERM") to the proxy.
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// The config file the proxy was started with (`--config`; not for [`Proxy::start_flags`]).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("proxy.toml")
    }

    /// Configuration reloads counted so far (either result).
    pub fn reloads(&self) -> f64 {
        self.metric("redis_failover_proxy_config_reloads_total", &[])
    }

    /// Rewrites the config file, sends SIGHUP and waits until the reload is counted (either
    /// result).
    pub fn reload(&self, text: &str) {
        let before = self.reloads();
        std::fs::write(self.config_path(), text).expect("rewrite proxy.toml");
        self.signal("HUP");
        wait_until(Duration::from_secs(10), "the reload is counted", || {
            self.reloads() > before
        });
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits for the proxy to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        match exit_within(&mut child, timeout) {
            Some(st) => st.code(),
            None => panic!("proxy did not exit within {timeout:?}\n{}", self.log()),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c);
        }
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            eprintln!("---- proxy log (last 80 lines) ----");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_get_at(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), path)
}

pub fn http_get_at(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let code = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    Some((code, body))
}

pub fn metric_sum(body: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let (n, rest) = match key.split_once('{') {
                Some((n, rest)) => (n, rest),
                None => (key, ""),
            };
            if n != name {
                return None;
            }
            if !labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            {
                return None;
            }
            value.parse::<f64>().ok()
        })
        .sum()
}

/// Runs the proxy binary with `args` in `dir`; returns (exit code, stdout, stderr).
pub fn run_bin(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run proxy binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
