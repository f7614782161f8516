//! Talking to one sentinel and checking one node's `ROLE`, through the `redis` crate over
//! connections this module opens itself: TCP, then TLS if configured, then `AUTH` with the
//! proxy's own credentials (by redis-rs), every read size-bounded. Owns the connection to its
//! sentinel (reconnected lazily after an error) and turns every failure into a [`PeerError`]
//! naming the peer and a metric kind; knows nothing about arbitration or routes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use redis::aio::{MultiplexedConnection, PubSub};
use redis::{AsyncConnectionConfig, RedisConnectionInfo, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::config::PeerAccess;
use crate::metrics::SentinelErrorKind;
use crate::resp_limit::{Bounded, Refusal, RespLimits};

/// A sentinel or node could not be used: which one, the metric kind, and a message fit for a
/// log line, `check` and `/status` (peer text escaped, no secrets).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{role} {addr}: {message}")]
pub struct PeerError {
    /// `sentinel` or `node`.
    pub role: &'static str,
    /// The peer, as configured or announced.
    pub addr: String,
    /// What kind of failure (the metric label).
    pub kind: SentinelErrorKind,
    /// Details.
    pub message: String,
    /// The OS error behind a failed connection, when there is one (what
    /// [`decide::suspect_after_check`](super::decide::suspect_after_check) judges).
    pub io: Option<std::io::ErrorKind>,
}

/// A sentinel query failed.
pub type SentinelError = PeerError;

impl PeerError {
    fn new(
        role: &'static str,
        addr: &str,
        kind: SentinelErrorKind,
        message: impl AsRef<str>,
    ) -> PeerError {
        PeerError {
            role,
            addr: addr.to_string(),
            kind,
            message: peer_text(message.as_ref()),
            io: None,
        }
    }

    fn from_redis(role: &'static str, addr: &str, e: &redis::RedisError) -> PeerError {
        let (kind, message) = classify(e);
        let mut err = PeerError::new(role, addr, kind, message);
        // redis-rs keeps the io::Error to itself; what it says of it is enough for the trust
        // rule: refused, or an established connection dropped by the peer.
        err.io = if e.is_connection_refusal() {
            Some(std::io::ErrorKind::ConnectionRefused)
        } else if e.is_io_error() && e.is_connection_dropped() {
            Some(std::io::ErrorKind::ConnectionReset)
        } else {
            None
        };
        err
    }

    /// A connect failure with the OS error behind it: a timeout (the kernel's own, after the
    /// SYN retries) is [`SentinelErrorKind::ConnectTimeout`], the rest
    /// [`SentinelErrorKind::Connect`].
    fn connect_io(role: &'static str, addr: &str, e: &std::io::Error) -> PeerError {
        let kind = if e.kind() == std::io::ErrorKind::TimedOut {
            SentinelErrorKind::ConnectTimeout
        } else {
            SentinelErrorKind::Connect
        };
        let mut err = PeerError::new(role, addr, kind, e.to_string());
        err.io = Some(e.kind());
        err
    }
}

/// Text a peer chose (error replies, flags, names), made safe to print: control characters
/// escaped (a newline must not forge a log line, an escape code must not drive a terminal)
/// and cut to a few hundred characters.
pub fn peer_text(s: &str) -> String {
    const MAX: usize = 300;
    let mut out = String::with_capacity(s.len().min(MAX + 3));
    for c in s.chars() {
        if out.len() >= MAX {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The metric kind and a message for a redis-rs error.
fn classify(e: &redis::RedisError) -> (SentinelErrorKind, String) {
    use SentinelErrorKind as K;
    if crate::resp_limit::is_oversized(e) {
        return (K::Oversized, format!("reply too large: {e}"));
    }
    if let Some(t) = crate::tls::rustls_error(e) {
        return (K::Tls, format!("TLS: {t}"));
    }
    // redis-rs hands a failed connection's error to waiting requests as text, which loses the
    // rustls error type (e.g. the server's "certificate required" alert, which TLS 1.3 only
    // delivers after the handshake).
    let text = e.to_string();
    // Only for errors of the connection: an error reply's text is the peer's to choose.
    let reply = matches!(
        e.kind(),
        redis::ErrorKind::Server(_) | redis::ErrorKind::Extension
    );
    if !reply && crate::tls::looks_like_tls_error(&text) {
        return (K::Tls, format!("TLS: {text}"));
    }
    match e.code() {
        Some("NOAUTH") => {
            return (
                K::Auth,
                "NOAUTH: the server requires a password and none is configured".to_string(),
            )
        }
        Some("WRONGPASS") => {
            return (
                K::Auth,
                "authentication failed (WRONGPASS: wrong password or unknown user)".to_string(),
            )
        }
        Some("NOPERM") => return (K::NoPerm, e.to_string()),
        _ => {}
    }
    if e.kind() == redis::ErrorKind::AuthenticationFailed {
        return (
            K::Auth,
            "authentication failed (wrong password or unknown user)".to_string(),
        );
    }
    if e.is_timeout() {
        return (K::Timeout, e.to_string());
    }
    if matches!(
        e.kind(),
        redis::ErrorKind::Server(_) | redis::ErrorKind::Extension
    ) {
        let msg = e.to_string();
        if msg.contains("No such master") {
            return (K::UnknownMaster, msg);
        }
        return (K::Protocol, msg);
    }
    if e.is_io_error() {
        return (K::Connect, e.to_string());
    }
    (K::Protocol, e.to_string())
}

/// What one sentinel says about a master name (`SENTINEL MASTER <name>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterReport {
    /// Host or IP the sentinel announces for the master.
    pub host: String,
    /// Port.
    pub port: u16,
    /// The sentinel's config-epoch for this master; raised by every completed failover.
    pub config_epoch: u64,
    /// Flags such as `master`, `s_down`, `o_down`, `disconnected` (escaped peer text).
    pub flags: String,
    /// Other sentinels this one knows.
    pub other_sentinels: u64,
    /// Replicas this one knows.
    pub replicas: u64,
    /// Configured quorum.
    pub quorum: u64,
    /// The group's `failover-timeout`, if reported: how long a failover may take before the
    /// sentinels give it up.
    pub failover_timeout: Option<Duration>,
}

impl MasterReport {
    /// `host:port` as announced (IPv6 literals bracketed).
    pub fn announced(&self) -> String {
        join_host_port(&self.host, self.port)
    }

    /// A report naming `addr` (`host:port`) at `epoch` with `flags`, for the rule tables.
    #[cfg(test)]
    pub(crate) fn for_test(addr: &str, epoch: u64, flags: &str) -> MasterReport {
        let (host, port) = addr.rsplit_once(':').expect("host:port");
        MasterReport {
            host: host.into(),
            port: port.parse().expect("port"),
            config_epoch: epoch,
            flags: flags.into(),
            other_sentinels: 2,
            replicas: 2,
            quorum: 2,
            failover_timeout: None,
        }
    }

    /// Whether the sentinel flags a failover of this master in progress.
    pub fn failover_in_progress(&self) -> bool {
        self.flags.split(',').any(|f| f == "failover_in_progress")
    }
}

/// The host part of an announced `host:port` (IPv6 brackets removed): the name a node's TLS
/// certificate is checked against.
pub fn announced_host(announced: &str) -> &str {
    announced
        .rsplit_once(':')
        .map_or(announced, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']')
}

/// `host:port`, bracketing IPv6 literals.
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A node's answer to `ROLE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// `master`.
    Master,
    /// `slave` (replica) of the given `host:port`.
    Replica(String),
    /// `sentinel` or anything else.
    Other(String),
}

/// Connection settings shared by sentinel and ROLE queries.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Connect and reply timeout.
    pub timeout: Duration,
}

/// Object-safe stream type for redis-rs: plain TCP or TLS, behind the size bound.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Where and how to reach one sentinel or node.
#[derive(Debug, Clone)]
pub struct Peer {
    /// `sentinel` or `node` (for messages).
    pub role: &'static str,
    /// Host or IP.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Credentials and TLS.
    pub access: PeerAccess,
    /// Bound on each step (resolve + connect, TLS handshake, setup).
    pub timeout: Duration,
}

impl Peer {
    /// `host:port` for messages.
    pub fn addr(&self) -> String {
        join_host_port(&self.host, self.port)
    }

    fn error(&self, kind: SentinelErrorKind, message: impl AsRef<str>) -> PeerError {
        PeerError::new(self.role, &self.addr(), kind, message)
    }

    fn redis_info(&self) -> RedisConnectionInfo {
        let mut info = RedisConnectionInfo::default().set_skip_set_lib_name();
        if let Some(p) = &self.access.auth.password {
            info = info.set_password(p.expose());
            if let Some(u) = &self.access.auth.username {
                info = info.set_username(u);
            }
        }
        info
    }

    /// TCP (to the first address that answers), then TLS if configured, behind the size bound
    /// (and a handle on that bound's refusal).
    /// `at`: connect there instead of resolving `host` (TLS still verifies `host`).
    async fn open(&self, at: Option<SocketAddr>) -> Result<(Box<dyn Io>, Refusal), PeerError> {
        use SentinelErrorKind as K;
        let connecting = async {
            match at {
                Some(a) => TcpStream::connect(a).await,
                None => TcpStream::connect((self.host.as_str(), self.port)).await,
            }
        };
        let tcp = match tokio::time::timeout(self.timeout, connecting).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => return Err(PeerError::connect_io(self.role, &self.addr(), &e)),
            Err(_) => return Err(self.error(K::ConnectTimeout, "connect timed out")),
        };
        let _ = tcp.set_nodelay(true);
        let limits = RespLimits::default();
        fn bounded<S: Io + 'static>(s: S, limits: RespLimits) -> (Box<dyn Io>, Refusal) {
            let b = Bounded::new(s, limits);
            let refusal = b.refusal();
            (Box::new(b), refusal)
        }
        match &self.access.tls {
            None => Ok(bounded(tcp, limits)),
            Some(tls) => {
                match tokio::time::timeout(self.timeout, tls.connect(tcp, &self.host)).await {
                    Ok(Ok(s)) => Ok(bounded(s, limits)),
                    Ok(Err(e)) => {
                        let msg = crate::tls::rustls_error(&e)
                            .map(|r| r.to_string())
                            .unwrap_or_else(|| e.to_string());
                        Err(self.error(K::Tls, format!("TLS handshake failed: {msg}")))
                    }
                    Err(_) => Err(self.error(K::Tls, "TLS handshake timed out")),
                }
            }
        }
    }

    /// A query connection (authenticated); its driver task ends with it.
    pub async fn connect(&self) -> Result<Conn, PeerError> {
        self.connect_to(None).await
    }

    /// Like [`Peer::connect`], to the resolved address `at`.
    pub async fn connect_at(&self, at: SocketAddr) -> Result<Conn, PeerError> {
        self.connect_to(Some(at)).await
    }

    async fn connect_to(&self, at: Option<SocketAddr>) -> Result<Conn, PeerError> {
        let (stream, _) = self.open(at).await?;
        let config = AsyncConnectionConfig::new().set_response_timeout(Some(self.timeout));
        let info = self.redis_info();
        let setup = MultiplexedConnection::new_with_config(&info, stream, config);
        let (conn, driver) = match tokio::time::timeout(self.timeout, setup).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(PeerError::from_redis(self.role, &self.addr(), &e)),
            Err(_) => {
                return Err(self.error(SentinelErrorKind::Timeout, "connection setup timed out"))
            }
        };
        let driver = tokio::spawn(driver).abort_handle();
        Ok(Conn { conn, driver })
    }

    /// A pub/sub connection (authenticated), and what its size bound refuses: redis-rs ends the
    /// message stream of a failed connection without the error.
    pub async fn pubsub(&self) -> Result<(PubSub, Refusal), PeerError> {
        let (stream, refusal) = self.open(None).await?;
        let info = self.redis_info();
        match tokio::time::timeout(self.timeout, PubSub::new(&info, stream)).await {
            Ok(Ok(p)) => Ok((p, refusal)),
            Ok(Err(e)) => Err(PeerError::from_redis(self.role, &self.addr(), &e)),
            Err(_) => Err(self.error(SentinelErrorKind::Timeout, "connection setup timed out")),
        }
    }

    /// Classifies an error on a connection to this peer.
    pub fn redis_error(&self, e: &redis::RedisError) -> PeerError {
        PeerError::from_redis(self.role, &self.addr(), e)
    }
}

/// A query connection; dropping it stops its driver task (and closes the socket).
pub struct Conn {
    conn: MultiplexedConnection,
    driver: tokio::task::AbortHandle,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// One configured sentinel and its (lazily re-established) query connection.
pub struct Sentinel {
    /// Address as configured (`host:port`).
    pub addr: String,
    peer: Result<Peer, String>,
    conn: Option<Conn>,
}

impl Sentinel {
    /// A sentinel at `addr` (already validated as `host:port`).
    pub fn new(addr: &str, access: &PeerAccess, timeouts: Timeouts) -> Sentinel {
        let peer = crate::config::parse_host_port(addr).map(|(host, port)| Peer {
            role: "sentinel",
            host,
            port,
            access: access.clone(),
            timeout: timeouts.timeout,
        });
        Sentinel {
            addr: addr.to_string(),
            peer,
            conn: None,
        }
    }

    /// How to reach this sentinel (for subscriptions).
    pub fn peer(&self) -> Result<&Peer, SentinelError> {
        self.peer
            .as_ref()
            .map_err(|e| self.error(SentinelErrorKind::Connect, e.clone()))
    }

    fn error(&self, kind: SentinelErrorKind, message: impl AsRef<str>) -> SentinelError {
        PeerError::new("sentinel", &self.addr, kind, message)
    }

    /// Drops the connection so the next query reconnects.
    pub fn disconnect(&mut self) {
        self.conn = None;
    }

    async fn query(&mut self, cmd: &redis::Cmd) -> Result<Value, SentinelError> {
        if self.conn.is_none() {
            let peer = self.peer()?.clone();
            // Resolve + connect, TLS and setup each have their own bound inside; this one
            // bounds the whole.
            let conn = match tokio::time::timeout(peer.timeout * 3, peer.connect()).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Err(self.rename(e)),
                Err(_) => {
                    return Err(self.error(SentinelErrorKind::ConnectTimeout, "connect timed out"))
                }
            };
            self.conn = Some(conn);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(self.error(SentinelErrorKind::Connect, "not connected"));
        };
        let timeout = self
            .peer
            .as_ref()
            .map_or(Duration::from_secs(1), |p| p.timeout);
        match tokio::time::timeout(timeout * 2, cmd.query_async::<Value>(&mut conn.conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                let err = self.rename(PeerError::from_redis("sentinel", &self.addr, &e));
                // An error reply leaves the connection usable; anything else may not.
                if !matches!(
                    err.kind,
                    SentinelErrorKind::UnknownMaster | SentinelErrorKind::Protocol
                ) || e.is_io_error()
                {
                    self.conn = None;
                }
                Err(err)
            }
            Err(_) => {
                self.conn = None;
                Err(self.error(SentinelErrorKind::Timeout, "no reply in time"))
            }
        }
    }

    /// Errors carry the address as configured (the peer's may differ in form).
    fn rename(&self, mut e: PeerError) -> PeerError {
        e.addr = self.addr.clone();
        e
    }

    /// `SENTINEL MASTER <name>`.
    pub async fn master(&mut self, name: &str) -> Result<MasterReport, SentinelError> {
        let v = self
            .query(redis::cmd("SENTINEL").arg("MASTER").arg(name))
            .await?;
        let fields = pairs(&v).ok_or_else(|| {
            self.error(
                SentinelErrorKind::Protocol,
                "SENTINEL MASTER reply is not a field map",
            )
        })?;
        parse_master_report(&fields).map_err(|m| self.error(SentinelErrorKind::Protocol, m))
    }

    /// `SENTINEL REPLICAS <name>` (ip:port and flags of each), for `check`.
    pub async fn replicas(&mut self, name: &str) -> Result<Vec<(String, String)>, SentinelError> {
        self.entries(name, "REPLICAS").await
    }

    /// `SENTINEL SENTINELS <name>` (ip:port and flags of each other sentinel), for `check`.
    pub async fn sentinels(&mut self, name: &str) -> Result<Vec<(String, String)>, SentinelError> {
        self.entries(name, "SENTINELS").await
    }

    async fn entries(
        &mut self,
        name: &str,
        what: &str,
    ) -> Result<Vec<(String, String)>, SentinelError> {
        let v = self
            .query(redis::cmd("SENTINEL").arg(what).arg(name))
            .await?;
        let Value::Array(items) = v else {
            return Err(self.error(
                SentinelErrorKind::Protocol,
                format!("SENTINEL {what}: not an array"),
            ));
        };
        Ok(items
            .iter()
            .filter_map(pairs)
            .map(|f| {
                let ip = f.get("ip").cloned().unwrap_or_default();
                let port = f.get("port").and_then(|p| p.parse().ok()).unwrap_or(0);
                (
                    join_host_port(&ip, port),
                    f.get("flags").cloned().unwrap_or_default(),
                )
            })
            .collect())
    }

    /// `SENTINEL CKQUORUM <name>`: the sentinel's own verdict line, for `check`.
    pub async fn ckquorum(&mut self, name: &str) -> Result<String, SentinelError> {
        match self
            .query(redis::cmd("SENTINEL").arg("CKQUORUM").arg(name))
            .await?
        {
            Value::SimpleString(s) => Ok(s),
            Value::BulkString(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
            other => Ok(format!("{other:?}")),
        }
    }
}

/// Turns a RESP2 flat `[k, v, ...]` array or a RESP3 map into a field map.
fn pairs(v: &Value) -> Option<HashMap<String, String>> {
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    };
    match v {
        Value::Array(items) if items.len() % 2 == 0 => items
            .chunks(2)
            .map(|kv| Some((text(&kv[0])?, text(&kv[1])?)))
            .collect(),
        Value::Map(kvs) => kvs
            .iter()
            .map(|(k, v)| Some((text(k)?, text(v)?)))
            .collect(),
        _ => None,
    }
}

/// Highest config-epoch believed. Each failover attempt raises a group's epoch by one, and
/// attempts are minutes apart: even one per second for a century stays far below this, while
/// a forged `u64::MAX` (which no honest sentinel could ever outrank) is refused.
pub const MAX_PLAUSIBLE_EPOCH: u64 = 1 << 32;

/// Validates the fields of a `SENTINEL MASTER` reply.
fn parse_master_report(f: &HashMap<String, String>) -> Result<MasterReport, String> {
    let get = |k: &str| {
        f.get(k)
            .ok_or_else(|| format!("SENTINEL MASTER reply lacks {k:?}"))
    };
    let num = |k: &str| -> Result<u64, String> {
        f.get(k).map_or(Ok(0), |v| {
            v.parse()
                .map_err(|_| format!("SENTINEL MASTER field {k:?} is not a number: {v:?}"))
        })
    };
    let host = get("ip")?.clone();
    if host.is_empty()
        || host.len() > 255
        || host.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!("SENTINEL MASTER names an invalid host {host:?}"));
    }
    let port: u16 = get("port")?
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("SENTINEL MASTER names an invalid port {:?}", f.get("port")))?;
    let config_epoch = num("config-epoch")?;
    if config_epoch > MAX_PLAUSIBLE_EPOCH {
        return Err(format!(
            "SENTINEL MASTER reports an implausible config-epoch {config_epoch} (above {MAX_PLAUSIBLE_EPOCH})"
        ));
    }
    let failover_timeout = match f.get("failover-timeout") {
        None => None,
        Some(v) => Some(Duration::from_millis(v.parse().map_err(|_| {
            format!("SENTINEL MASTER field \"failover-timeout\" is not a number: {v:?}")
        })?)),
    };
    Ok(MasterReport {
        host,
        port,
        config_epoch,
        flags: peer_text(f.get("flags").map_or("", String::as_str)),
        other_sentinels: num("num-other-sentinels")?,
        replicas: num("num-slaves")?,
        quorum: num("quorum")?,
        failover_timeout,
    })
}

/// Resolves a master address the sentinels announce, rejecting the unspecified address.
pub async fn resolve(host: &str, port: u16, timeout: Duration) -> Result<SocketAddr, String> {
    let all = resolve_all(host, port, timeout).await?;
    pick(&all, None).ok_or_else(|| format!("{host:?} resolves to no usable address"))
}

/// Every address `host` resolves to, the unspecified address refused.
pub async fn resolve_all(
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<Vec<SocketAddr>, String> {
    let found: Vec<SocketAddr> =
        tokio::time::timeout(timeout, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| format!("resolving {host:?} timed out"))?
            .map_err(|e| format!("cannot resolve {host:?}: {e}"))?
            .collect();
    if let Some(a) = found.iter().find(|a| a.ip().is_unspecified()) {
        return Err(format!("{a} is the unspecified address"));
    }
    if found.is_empty() {
        return Err(format!("{host:?} resolves to no address"));
    }
    Ok(found)
}

/// A stable choice among the addresses a name resolves to: `current` while it is still one of
/// them (round-robin DNS must not move a route), else the lowest.
pub fn pick(addrs: &[SocketAddr], current: Option<SocketAddr>) -> Option<SocketAddr> {
    match current {
        Some(c) if addrs.contains(&c) => Some(c),
        _ => addrs.iter().min().copied(),
    }
}

/// What a `ROLE` check learned about a node.
#[derive(Debug, Clone)]
pub struct Checked {
    /// Its role.
    pub role: Role,
    /// A master's replication offset (from the `ROLE` reply).
    pub offset: Option<u64>,
    /// A master's `run_id` (`INFO server`), which changes with every start of the process;
    /// `None` for a replica. An error here (say, a node ACL without `+info`) does not fail the
    /// check: the caller loses only this means of telling a restart.
    pub run_id: Option<Result<String, PeerError>>,
}

/// Asks the node at `addr` (announced by the sentinels as `host`, the name TLS verifies) for
/// its `ROLE` on a fresh connection, and a master for its `run_id` (`INFO server`) on the same
/// connection.
pub async fn role(
    addr: SocketAddr,
    host: &str,
    access: &PeerAccess,
    timeouts: Timeouts,
) -> Result<Checked, PeerError> {
    // Connects to the resolved address, but verifies TLS against the announced host.
    let peer = Peer {
        role: "node",
        host: host.to_string(),
        port: addr.port(),
        access: access.clone(),
        timeout: timeouts.timeout,
    };
    let err = |kind, m: &str| PeerError::new("node", &addr.to_string(), kind, m);
    let at = |mut e: PeerError| {
        e.addr = addr.to_string();
        e
    };
    // One deadline for the whole check; `INFO server` gets what is left of it and, if it runs
    // out, only the run_id is missing: a `ROLE` that answered is never thrown away for it.
    let deadline = tokio::time::Instant::now() + timeouts.timeout * 3;
    let work = async {
        let mut conn = peer.connect_at(addr).await?;
        let v = redis::cmd("ROLE")
            .query_async::<Value>(&mut conn.conn)
            .await
            .map_err(|e| peer.redis_error(&e))?;
        let role = parse_role(&v).map_err(|m| err(SentinelErrorKind::Protocol, &m))?;
        let offset = master_offset(&v);
        if role != Role::Master {
            return Ok(Checked {
                role,
                offset,
                run_id: None,
            });
        }
        let mut info_cmd = redis::cmd("INFO");
        let info = info_cmd.arg("server").query_async::<Value>(&mut conn.conn);
        let run_id = match tokio::time::timeout_at(deadline, info).await {
            Err(_) => Err(err(SentinelErrorKind::Timeout, "INFO server timed out")),
            Ok(r) => r.map_err(|e| at(peer.redis_error(&e))).and_then(|v| {
                info_text(&v)
                    .and_then(|t| parse_run_id(&t))
                    .ok_or_else(|| err(SentinelErrorKind::Protocol, "INFO server has no run_id"))
            }),
        };
        Ok(Checked {
            role,
            offset,
            run_id: Some(run_id),
        })
    };
    // The outer bound is a hair later than the deadline, so INFO's own timeout wins the race.
    tokio::time::timeout_at(deadline + Duration::from_millis(50), work)
        .await
        .map_err(|_| err(SentinelErrorKind::Timeout, "ROLE timed out"))?
        .map_err(at)
}

/// The text of an `INFO` reply.
fn info_text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

/// The `run_id` field of `INFO server` text (escaped for printing).
fn parse_run_id(info: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(peer_text)
}

/// A master's replication offset from its `ROLE` reply (`["master", offset, [...]]`).
fn master_offset(v: &Value) -> Option<u64> {
    let Value::Array(items) = v else {
        return None;
    };
    match items.get(1) {
        Some(Value::Int(i)) => u64::try_from(*i).ok(),
        _ => None,
    }
}

fn parse_role(v: &Value) -> Result<Role, String> {
    let Value::Array(items) = v else {
        return Err(format!("ROLE reply is not an array: {v:?}"));
    };
    let text = |v: Option<&Value>| match v {
        Some(Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
        Some(Value::SimpleString(s)) => Some(s.clone()),
        Some(Value::Int(i)) => Some(i.to_string()),
        _ => None,
    };
    match text(items.first()).as_deref() {
        Some("master") => Ok(Role::Master),
        Some("slave") | Some("replica") => {
            let host = text(items.get(1)).unwrap_or_default();
            let port = text(items.get(2)).unwrap_or_default();
            Ok(Role::Replica(format!("{host}:{port}")))
        }
        Some(other) => Ok(Role::Other(other.to_string())),
        None => Err("ROLE reply is empty".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn run_id_from_info_server() {
        let rows = [
            (
                "# Server\r\nredis_version:7.0.15\r\nrun_id:9f8c2e1d0b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e\r\ntcp_port:6379\r\n",
                Some("9f8c2e1d0b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e"),
            ),
            ("run_id:abc", Some("abc")),
            ("# Server\r\nredis_version:7.0.15\r\n", None),
            ("run_id:\r\n", None),
            ("run_id:a\x1bb\r\n", Some("a\\u{1b}b")),
        ];
        for (text, want) in rows {
            assert_eq!(parse_run_id(text).as_deref(), want, "{text:?}");
        }
        assert_eq!(info_text(&bulk("x")), Some("x".to_string()));
        assert_eq!(info_text(&Value::Int(1)), None);
    }

    #[test]
    fn connect_failures_keep_their_os_error() {
        use std::io::ErrorKind::*;
        // (OS error of the connect, kind)
        let rows = [
            (ConnectionRefused, SentinelErrorKind::Connect),
            (HostUnreachable, SentinelErrorKind::Connect),
            // The kernel gave up after its SYN retries: a timeout, not a refusal.
            (TimedOut, SentinelErrorKind::ConnectTimeout),
        ];
        for (io, kind) in rows {
            let e = PeerError::connect_io("node", "10.0.0.1:6379", &std::io::Error::from(io));
            assert_eq!((e.kind, e.io), (kind, Some(io)), "{io:?}");
        }
    }

    #[test]
    fn master_report_from_flat_array() {
        let v = Value::Array(
            [
                "name",
                "redis-ha",
                "ip",
                "10.0.0.1",
                "port",
                "6379",
                "flags",
                "master",
                "config-epoch",
                "3",
                "num-other-sentinels",
                "2",
            ]
            .iter()
            .map(|s| bulk(s))
            .collect(),
        );
        let r = parse_master_report(&pairs(&v).unwrap()).unwrap();
        assert_eq!(r.announced(), "10.0.0.1:6379");
        assert_eq!(r.config_epoch, 3);
        assert_eq!(r.other_sentinels, 2);
    }

    #[test]
    fn hostile_master_reports_are_errors() {
        let mk = |ip: &str, port: &str, epoch: &str| {
            let v = Value::Array(
                ["ip", ip, "port", port, "config-epoch", epoch]
                    .iter()
                    .map(|s| bulk(s))
                    .collect(),
            );
            parse_master_report(&pairs(&v).unwrap())
        };
        assert!(mk("", "1", "0").is_err());
        assert!(mk("a b", "1", "0").is_err());
        assert!(mk("h", "0", "0").is_err());
        assert!(mk("h", "70000", "0").is_err());
        assert!(mk("h", "1", "-1").is_err());
        assert!(pairs(&Value::Array(vec![bulk("odd")])).is_none());
        assert!(pairs(&Value::Int(1)).is_none());
    }

    #[test]
    fn stable_pick_among_addresses() {
        let a: SocketAddr = "10.0.0.2:1".parse().unwrap();
        let b: SocketAddr = "10.0.0.1:1".parse().unwrap();
        assert_eq!(pick(&[a, b], None), Some(b));
        assert_eq!(pick(&[b, a], None), Some(b));
        assert_eq!(pick(&[a, b], Some(a)), Some(a));
        assert_eq!(pick(&[b], Some(a)), Some(b));
        assert_eq!(pick(&[], None), None);
    }

    #[test]
    fn master_offsets() {
        let v = Value::Array(vec![bulk("master"), Value::Int(1234), Value::Array(vec![])]);
        assert_eq!(master_offset(&v), Some(1234));
        assert_eq!(master_offset(&Value::Array(vec![bulk("master")])), None);
        let v = Value::Array(vec![bulk("master"), Value::Int(-1)]);
        assert_eq!(master_offset(&v), None);
    }

    #[test]
    fn roles() {
        let v = Value::Array(vec![bulk("master"), Value::Int(0), Value::Array(vec![])]);
        assert_eq!(parse_role(&v).unwrap(), Role::Master);
        let v = Value::Array(vec![
            bulk("slave"),
            bulk("127.0.0.1"),
            Value::Int(6379),
            bulk("connected"),
            Value::Int(1),
        ]);
        assert_eq!(
            parse_role(&v).unwrap(),
            Role::Replica("127.0.0.1:6379".into())
        );
        assert!(parse_role(&Value::Array(vec![])).is_err());
        assert!(parse_role(&Value::Nil).is_err());
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn text_value() -> impl Strategy<Value = Value> {
            prop_oneof![
                any::<Vec<u8>>().prop_map(Value::BulkString),
                ".*".prop_map(Value::SimpleString),
                any::<i64>().prop_map(Value::Int),
                Just(Value::Nil),
            ]
        }

        fn any_value() -> impl Strategy<Value = Value> {
            text_value().prop_recursive(3, 64, 8, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                    prop::collection::vec((inner.clone(), inner), 0..4).prop_map(Value::Map),
                ]
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]

            /// Whatever a peer sends, interpreting it never panics, and what is accepted
            /// holds only printable, bounded text.
            #[test]
            fn any_reply_is_interpreted_or_refused(v in any_value()) {
                if let Some(f) = pairs(&v) {
                    if let Ok(r) = parse_master_report(&f) {
                        prop_assert!(r.port != 0);
                        prop_assert!(r.config_epoch <= MAX_PLAUSIBLE_EPOCH);
                        prop_assert!(!r.host.chars().any(char::is_control));
                        prop_assert!(!r.flags.chars().any(char::is_control));
                    }
                }
                let _ = parse_role(&v);
            }

            /// A well-formed report round-trips; hostile fields in it are refused or escaped.
            #[test]
            fn generated_reports_parse(
                host in "[a-z0-9.-]{1,40}",
                port in 1u16..,
                epoch in any::<u64>(),
                flags in ".{0,40}",
                timeout_ms in proptest::option::of(0u64..10_000_000),
            ) {
                let mut fields = vec![
                    ("ip".to_string(), host.clone()),
                    ("port".to_string(), port.to_string()),
                    ("config-epoch".to_string(), epoch.to_string()),
                    ("flags".to_string(), flags.clone()),
                ];
                if let Some(t) = timeout_ms {
                    fields.push(("failover-timeout".to_string(), t.to_string()));
                }
                let v = Value::Array(
                    fields
                        .iter()
                        .flat_map(|(k, v)| [bulk(k), bulk(v)])
                        .collect(),
                );
                let r = parse_master_report(&pairs(&v).unwrap());
                if epoch > MAX_PLAUSIBLE_EPOCH {
                    prop_assert!(r.is_err());
                } else {
                    let r = r.unwrap();
                    prop_assert_eq!(r.host, host);
                    prop_assert_eq!(r.port, port);
                    prop_assert_eq!(r.config_epoch, epoch);
                    prop_assert_eq!(r.failover_timeout, timeout_ms.map(Duration::from_millis));
                    prop_assert!(!r.flags.chars().any(char::is_control));
                }
            }

            #[test]
            fn peer_text_is_printable_and_bounded(s in ".*") {
                let shown = peer_text(&s);
                prop_assert!(!shown.chars().any(char::is_control));
                prop_assert!(shown.len() <= 300 + 3 + 10);
            }
        }
    }
}
