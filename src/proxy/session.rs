//! One client connection: hold it until the route has a usable master, connect to exactly the
//! verified address (socket options below), splice both directions, and end with the epoch.
//! Held clients are released when the client goes away, the hold timeout passes, or shutdown
//! starts. A master that refuses a connection is retried within the same hold, but only once a
//! `ROLE` check started after the refusal says master again: a node that restarted fast, as a
//! replica, must not get the clients that were waiting for it.

use std::cell::RefCell;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{counter, Counter};
use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::{TcpSocket, TcpStream, UnixStream};
use tracing::{debug, field, Instrument};

use super::listener::{Accepted, Peer};
use super::workers::LoadGuard;
use super::zerocopy::{Mode, Pipe};
use super::Shutdown;
use crate::config::RouteConfig;
use crate::metrics::{self as m, Closed, FenceReason, Rejected};
use crate::route::{Admission, ClientGuard, HeldGuard, Master, Route};
use crate::sentinel::decide::refused_by_master;

/// Size of the per-thread read buffer (see `SCRATCH`). Per-session buffers would cost 32 KiB
/// per session (10,000 idle pooled clients: 320 MiB, which the allocator does not give back).
const BUF_SIZE: usize = 16 * 1024;

/// Serves one accepted client until it, its master or its epoch ends.
pub async fn run(
    client: Accepted,
    peer: Peer,
    route: Arc<Route>,
    permit: Admission,
    load: LoadGuard,
    shutdown: Shutdown,
) {
    let span = tracing::debug_span!(
        "session",
        route = route.name(),
        client.addr = %peer,
        master.addr = field::Empty,
        epoch = field::Empty,
    );
    let _load = load;
    serve(client, route, permit, shutdown)
        .instrument(span)
        .await
}

enum HoldEnd {
    Rejected(Rejected),
    ClientGone,
}

async fn serve(client: Accepted, route: Arc<Route>, _permit: Admission, shutdown: Shutdown) {
    let _client_guard = ClientGuard::new(&route);
    // The configuration as it was when the client arrived: a reload applies to later clients.
    let config = route.config();
    let client = match (client, &config.listen_tls) {
        // No TCP options and no TLS on a Unix socket (the configuration allows none there).
        (Accepted::Unix(c), _) => ClientIo::Unix(c),
        (Accepted::Tcp(c), None) => {
            let _ = c.set_nodelay(true);
            ClientIo::Plain(c)
        }
        (Accepted::Tcp(client), Some(tls)) => {
            let _ = client.set_nodelay(true);
            let handshake = tokio::select! {
                // Boxed, like every TLS future here: a plain session's task must not be sized
                // for a TLS handshake it never does (10,000 idle sessions pay per byte).
                r = tokio::time::timeout(TLS_ACCEPT_TIMEOUT, Box::pin(tls.accept(client))) => r,
                _ = shutdown.drain.cancelled() => return,
            };
            match handshake {
                Ok(Ok(s)) => ClientIo::Tls(Box::new(s)),
                Ok(Err(e)) => {
                    counter!(m::CONNECTIONS_REJECTED, "route" => route.name().to_string(), "reason" => Rejected::TlsHandshake.as_str()).increment(1);
                    debug!(error = %e, "client TLS handshake failed");
                    return;
                }
                Err(_) => {
                    counter!(m::CONNECTIONS_REJECTED, "route" => route.name().to_string(), "reason" => Rejected::TlsHandshake.as_str()).increment(1);
                    debug!("client TLS handshake timed out");
                    return;
                }
            }
        }
    };
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + config.hold_timeout;
    let mut held: Option<HeldGuard> = None;

    let established = loop {
        let master = match route.current() {
            Some(m) => m,
            None => {
                held.get_or_insert_with(|| HeldGuard::new(&route));
                match hold(
                    route.wait_for_master(deadline),
                    &client,
                    &shutdown,
                    deadline,
                )
                .await
                {
                    Ok(Some(m)) => m,
                    Ok(None) => break Err(HoldEnd::Rejected(Rejected::HoldTimeout)),
                    Err(end) => break Err(end),
                }
            }
        };
        if !master.is_trusted() {
            // Wait for a fresh ROLE confirmation, or for the route to move on.
            held.get_or_insert_with(|| HeldGuard::new(&route));
            let settled = async {
                tokio::select! {
                    _ = master.trusted() => {}
                    _ = master.fenced().cancelled() => {}
                    _ = route.changed() => {}
                }
            };
            match hold(settled, &client, &shutdown, deadline).await {
                Ok(()) => continue,
                Err(end) => break Err(end),
            }
        }
        let guard = master.session_guard();
        // Fenced between `current()` and the guard: the fence may not wait for this session,
        // so it must not even send a SYN.
        if master.fenced().is_cancelled() {
            continue;
        }
        // Connects in flight are paced: a herd of held clients released at once by an install
        // must not overflow the new master's listen queue (lost SYNs cost a second each).
        let pace = match route.connecting.try_acquire() {
            Ok(p) => p,
            // Only a client that really has to wait is held (and bound by the hold timeout).
            Err(_) => match hold(route.connecting.acquire(), &client, &shutdown, deadline).await {
                Ok(Ok(p)) => p,
                Ok(Err(_)) => continue,
                Err(end) => break Err(end),
            },
        };
        let attempt = unless_fenced(master.fenced(), connect(&master, &config)).await;
        drop(pace);
        match attempt {
            // Fenced while connecting: never use a connection of an ended epoch.
            None => continue,
            Some(Ok(conn)) => break Ok((master, guard, conn)),
            Some(Err(ConnectError::Master(e))) if refused_by_master(e.kind()) => {
                counter!(m::MASTER_CONNECT_ERRORS, "route" => route.name().to_string())
                    .increment(1);
                debug!(master.addr = %master.addr, error = %e, "connect to master refused; holding client");
                // Whatever listens there next may be a restarted node that is no longer the
                // master: no session connects again before `ROLE` says master once more.
                master.connect_failed(Instant::now());
                route.request_recheck();
            }
            Some(Err(ConnectError::Master(e))) => {
                // A timeout or a lost SYN (a reconnect storm overflowing a listen queue) says
                // nothing about the master: retry this client shortly, distrust nobody.
                counter!(m::MASTER_CONNECT_ERRORS, "route" => route.name().to_string())
                    .increment(1);
                debug!(master.addr = %master.addr, error = %e, "connect to master failed; retrying");
                held.get_or_insert_with(|| HeldGuard::new(&route));
                let retry = tokio::time::sleep(LOCAL_RETRY);
                if let Err(end) = hold(retry, &client, &shutdown, deadline).await {
                    break Err(end);
                }
            }
            Some(Err(ConnectError::Local(e))) => {
                // Out of descriptors or the like: nothing to do with the master, so do not
                // distrust it; hold this client and try again shortly.
                debug!(error = %e, "cannot open a socket to the master; holding client");
                held.get_or_insert_with(|| HeldGuard::new(&route));
                let retry = tokio::time::sleep(LOCAL_RETRY);
                if let Err(end) = hold(retry, &client, &shutdown, deadline).await {
                    break Err(end);
                }
            }
        }
    };

    if let Some(h) = held.take() {
        let outcome = match &established {
            Ok(_) => "routed",
            Err(HoldEnd::Rejected(Rejected::HoldTimeout)) => "timed_out",
            Err(HoldEnd::Rejected(_)) => "shutdown",
            Err(HoldEnd::ClientGone) => "client_closed",
        };
        h.finish(outcome, started.elapsed());
    }
    let (master, _epoch_guard, conn) = match established {
        Ok(e) => e,
        Err(HoldEnd::Rejected(reason)) => {
            counter!(m::CONNECTIONS_REJECTED, "route" => route.name().to_string(), "reason" => reason.as_str())
                .increment(1);
            debug!(reason = reason.as_str(), "client closed without a session");
            // This client never had a session, so nothing can be interleaved: tell it why.
            let seen = match route.current() {
                Some(m) if m.is_trusted() => MasterSeen::Trusted,
                Some(_) => MasterSeen::Untrusted,
                None => MasterSeen::None,
            };
            let why = hold_end_reason(
                matches!(reason, Rejected::Shutdown),
                seen,
                route.observed.last_fence().map(|f| f.reason),
            );
            let msg = hold_error(route.name(), why, started.elapsed());
            Box::pin(goodbye(client, msg.as_bytes())).await;
            return;
        }
        Err(HoldEnd::ClientGone) => {
            debug!("client went away while held");
            return;
        }
    };
    let span = tracing::Span::current();
    span.record("master.addr", field::display(master.addr));
    span.record("epoch", master.epoch);
    debug!("session open");
    let reason = match (client, conn) {
        (ClientIo::Plain(c), MasterIo::Plain(m)) => {
            #[cfg(target_os = "linux")]
            if super::uring::available() {
                return finish(
                    &route,
                    Box::pin(splice_ring(c, m, &master, &shutdown, &route)).await,
                );
            }
            let reason = splice(&c, &m, &master, &shutdown, &route).await;
            if reason == Closed::MasterSwitch {
                abort_master(&m);
            }
            reason
        }
        (ClientIo::Plain(c), MasterIo::Tls(m)) => {
            Box::pin(splice_io(c, *m, &master, &shutdown, &route)).await
        }
        (ClientIo::Tls(c), MasterIo::Plain(m)) => {
            Box::pin(splice_io(*c, m, &master, &shutdown, &route)).await
        }
        (ClientIo::Tls(c), MasterIo::Tls(m)) => {
            Box::pin(splice_io(*c, *m, &master, &shutdown, &route)).await
        }
        // A Unix socket client takes the generic path (its own buffers): TCP keeps the
        // readiness-based one above.
        (ClientIo::Unix(c), MasterIo::Plain(m)) => {
            Box::pin(splice_io(c, m, &master, &shutdown, &route)).await
        }
        (ClientIo::Unix(c), MasterIo::Tls(m)) => {
            Box::pin(splice_io(c, *m, &master, &shutdown, &route)).await
        }
    };
    finish(&route, reason);
}

/// Counts and logs a session's end.
fn finish(route: &Route, reason: Closed) {
    // A removed route ends its epoch the way a fence does; the metric tells them apart.
    let reason = if reason == Closed::MasterSwitch && route.is_retired() {
        Closed::RouteRemoved
    } else {
        reason
    };
    route.metrics.closed[reason.index()].increment(1);
    debug!(reason = reason.as_str(), "session closed");
}

/// What the route looked like when a hold ended without a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MasterSeen {
    /// No master installed.
    None,
    /// A master installed, but it refused a connect or `ROLE` check since it last answered.
    Untrusted,
    /// A trusted master (connects to it kept failing or waiting).
    Trusted,
}

/// Why a held client is sent away, in words for the error it gets: shutdown first, then what
/// the route's master state says, then the latest fence's reason (a fence for lack of a
/// sentinel majority is not a failover).
fn hold_end_reason(
    shutting_down: bool,
    seen: MasterSeen,
    last_fence: Option<&str>,
) -> &'static str {
    if shutting_down {
        return "no verified master (shutting down)";
    }
    match (seen, last_fence) {
        (MasterSeen::Untrusted, _) => "master not answering (refused since its last ROLE check)",
        (MasterSeen::Trusted, _) => "cannot connect to the master in time",
        (MasterSeen::None, Some(r)) if r == FenceReason::NoMajority.as_str() => {
            "no verified master (no sentinel majority)"
        }
        (MasterSeen::None, Some(_)) => "no verified master (failover in progress)",
        (MasterSeen::None, None) => "no verified master (no master known)",
    }
}

/// The one RESP error line a held client gets before it is closed. Route names come from
/// the configuration; anything but printable ASCII is replaced so the line stays one line.
fn hold_error(route: &str, why: &str, held: Duration) -> String {
    let route: String = route
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect();
    format!(
        "-ERR redis-failover-proxy: route {route}: {why}; held {:.1}s\r\n",
        held.as_secs_f64()
    )
}

/// Most a goodbye reads and discards of what the client sent (so the close sends a FIN
/// after the error, not a reset that could discard it at the client).
const GOODBYE_DRAIN: usize = 64 * 1024;

/// The plain (TCP or Unix) part of [`goodbye`]: discards up to [`GOODBYE_DRAIN`] bytes the
/// client already sent (so the close is a FIN, not a reset that could wipe out the error),
/// then writes `msg` once without waiting.
fn goodbye_plain(
    try_read: impl Fn(&mut [u8]) -> io::Result<usize>,
    try_write: impl Fn(&[u8]) -> io::Result<usize>,
    msg: &[u8],
) {
    let mut drained = 0;
    while drained < GOODBYE_DRAIN {
        match try_read(&mut [0u8; 4096]) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    let _ = try_write(msg);
}

/// Writes `msg` to a client that never had a session, without waiting for it (best effort:
/// a client that does not read gets nothing), then closes. A TLS client gets at most
/// [`GOODBYE_TLS_TIMEOUT`] for the record and its close_notify.
async fn goodbye(client: ClientIo, msg: &[u8]) {
    match client {
        ClientIo::Plain(c) => {
            goodbye_plain(|b| c.try_read(b), |b| c.try_write(b), msg);
            let _ = SockRef::from(&c).shutdown(std::net::Shutdown::Write);
        }
        ClientIo::Unix(c) => {
            goodbye_plain(|b| c.try_read(b), |b| c.try_write(b), msg);
            let _ = SockRef::from(&c).shutdown(std::net::Shutdown::Write);
        }
        ClientIo::Tls(mut c) => {
            let _ = tokio::time::timeout(GOODBYE_TLS_TIMEOUT, async {
                c.write_all(msg).await?;
                c.shutdown().await
            })
            .await;
        }
    }
}

/// How long a TLS client's goodbye may take.
const GOODBYE_TLS_TIMEOUT: Duration = Duration::from_millis(200);

/// Holds the client until `until` resolves, unless the hold ends first: the deadline passes,
/// the client goes away, or shutdown starts.
async fn hold<T>(
    until: impl std::future::Future<Output = T>,
    client: &ClientIo,
    shutdown: &Shutdown,
    deadline: tokio::time::Instant,
) -> Result<T, HoldEnd> {
    if tokio::time::Instant::now() >= deadline {
        return Err(HoldEnd::Rejected(Rejected::HoldTimeout));
    }
    tokio::select! {
        v = until => Ok(v),
        _ = tokio::time::sleep_until(deadline) => Err(HoldEnd::Rejected(Rejected::HoldTimeout)),
        _ = client_gone(client) => Err(HoldEnd::ClientGone),
        _ = shutdown.drain.cancelled() => Err(HoldEnd::Rejected(Rejected::Shutdown)),
    }
}

/// Resolves when the client has closed (EOF or error). If the client has sent data, it is
/// still there: pend forever, leaving the data to the session.
async fn client_gone(client: &ClientIo) {
    let mut byte = [0u8; 1];
    let peeked = match client {
        ClientIo::Plain(c) => c.peek(&mut byte).await,
        ClientIo::Tls(c) => c.tcp().peek(&mut byte).await,
        ClientIo::Unix(c) => peek_unix(c).await,
    };
    match peeked {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending::<()>().await,
    }
}

/// Waits until a Unix socket client has sent a byte or closed: `Ok(0)` on EOF, `Ok(1)` if a
/// byte is waiting (left in place).
async fn peek_unix(c: &UnixStream) -> io::Result<usize> {
    loop {
        c.readable().await?;
        let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        match c.try_io(Interest::READABLE, || SockRef::from(c).peek(&mut byte)) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

/// A failed connect: the master's fault (refused, timed out) or ours (no descriptors, a
/// socket option the kernel rejects).
enum ConnectError {
    Master(io::Error),
    Local(io::Error),
}

/// Pause before retrying after a local error (e.g. EMFILE) or a connect timeout.
const LOCAL_RETRY: Duration = Duration::from_millis(100);

/// Abort rather than close a demoted master's side: a plain close would leave bytes still in
/// the send queue (unacknowledged across a partition) for the kernel to deliver later, after
/// the fence. With linger 0 the kernel drops them and sends RST; no FIN handshake or
/// TIME_WAIT either, which makes fencing cheaper.
fn abort_master(conn: &TcpStream) {
    let _ = SockRef::from(conn).set_linger(Some(Duration::ZERO));
}

/// Longest a client may take to complete the listener's TLS handshake.
const TLS_ACCEPT_TIMEOUT: Duration = Duration::from_secs(10);

/// The client's side of a session: plain TCP, TLS when the route's listener has it, or a
/// Unix socket.
enum ClientIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Unix(UnixStream),
}

/// The master's side of a session: plain TCP, or TLS when the nodes speak it.
enum MasterIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// A stream over one TCP connection (for socket options and the hold's peek).
trait Transport: AsyncRead + AsyncWrite + Unpin {
    fn tcp(&self) -> &TcpStream;
}

impl Transport for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Transport for tokio_rustls::client::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

impl Transport for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// Runs `connect` (TCP, then the TLS handshake if any) against the epoch's fence: `None` when
/// the epoch is fenced before it starts (it is never polled), while it runs (it is dropped,
/// handshake and all) or by the time it has finished (its connection is dropped unused). So a
/// connection, TLS or not, to a master fenced in the meantime never becomes a session.
async fn unless_fenced<T, E>(
    fenced: &tokio_util::sync::CancellationToken,
    connect: impl std::future::Future<Output = Result<T, E>>,
) -> Option<Result<T, E>> {
    let result = tokio::select! {
        biased;
        _ = fenced.cancelled() => return None,
        r = connect => r,
    };
    match result {
        Ok(_) if fenced.is_cancelled() => None,
        r => Some(r),
    }
}

/// Connects to the verified master with a timeout, TCP_NODELAY, keepalive and
/// TCP_USER_TIMEOUT, so a partitioned master cannot hang a session forever; then, if the nodes
/// speak TLS, runs the handshake (verifying the name the sentinels announce) within the same
/// timeout.
async fn connect(master: &Master, cfg: &RouteConfig) -> Result<MasterIo, ConnectError> {
    let start = tokio::time::Instant::now();
    let tcp = connect_tcp(master.addr, cfg).await?;
    let Some(tls) = &cfg.node.tls else {
        return Ok(MasterIo::Plain(tcp));
    };
    let host = crate::sentinel::client::announced_host(&master.announced);
    match tokio::time::timeout_at(
        start + cfg.connect_timeout,
        Box::pin(tls.connect(tcp, host)),
    )
    .await
    {
        Ok(Ok(s)) => Ok(MasterIo::Tls(Box::new(s))),
        Ok(Err(e)) => Err(ConnectError::Master(e)),
        Err(_) => Err(ConnectError::Master(io::Error::new(
            io::ErrorKind::TimedOut,
            "TLS handshake timed out",
        ))),
    }
}

async fn connect_tcp(addr: SocketAddr, cfg: &RouteConfig) -> Result<TcpStream, ConnectError> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(ConnectError::Local)?;
    let stream = tokio::time::timeout(cfg.connect_timeout, socket.connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))
        .and_then(|r| r)
        .map_err(ConnectError::Master)?;
    socket_options(&stream, cfg).map_err(ConnectError::Local)?;
    Ok(stream)
}

fn socket_options(stream: &TcpStream, cfg: &RouteConfig) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let sock = SockRef::from(stream);
    let interval = (cfg.keepalive / 3).max(Duration::from_secs(1));
    // Turns SO_KEEPALIVE on too. No probe count: on Linux, with TCP_USER_TIMEOUT set, that
    // timeout decides when unanswered probes end the connection (tcp(7)), so TCP_KEEPCNT
    // would be one more syscall per session for nothing. (Elsewhere the OS default count
    // applies; the proxy is built for Linux.)
    sock.set_tcp_keepalive(
        &TcpKeepalive::new()
            .with_time(cfg.keepalive)
            .with_interval(interval),
    )?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    sock.set_tcp_user_timeout(Some(cfg.tcp_user_timeout))?;
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Side {
    Client,
    Master,
}

/// Splices until both directions reached EOF, either side fails, the epoch is fenced, or
/// shutdown's grace period ends. Half-close propagates: EOF from one side shuts down writing
/// to the other, and the other direction keeps flowing.
async fn splice(
    client: &TcpStream,
    master_conn: &TcpStream,
    master: &Master,
    shutdown: &Shutdown,
    route: &Route,
) -> Closed {
    let c2m = pump(
        client,
        master_conn,
        &route.metrics.bytes_client_to_master,
        Side::Client,
        Side::Master,
    );
    let m2c = pump(
        master_conn,
        client,
        &route.metrics.bytes_master_to_client,
        Side::Master,
        Side::Client,
    );
    race(c2m, m2c, master, shutdown, |side| {
        // Pass the half-close on while the other direction still flows; once both ended,
        // dropping the sockets sends the FINs (one syscall less per session).
        let to = if side == Side::Client {
            master_conn
        } else {
            client
        };
        // The peer may already be gone; then the other direction reports it.
        let _ = SockRef::from(to).shutdown(std::net::Shutdown::Write);
    })
    .await
}

/// [`splice`] on this thread's io_uring (`runtime.engine = "io_uring"`): the ring moves the
/// bytes, this task keeps the rules ([`race`]: fence, shutdown, half-close, the master's last
/// reply). The sockets are closed by the ring (the master's with a reset after a fence) before
/// this returns, so a fence still counts the session closed only once it is.
#[cfg(target_os = "linux")]
async fn splice_ring(
    client: TcpStream,
    master_conn: TcpStream,
    master: &Master,
    shutdown: &Shutdown,
    route: &Route,
) -> Closed {
    let conn = match super::uring::Conn::open(
        client,
        master_conn,
        master.fenced().clone(),
        route.metrics.bytes_client_to_master.clone(),
        route.metrics.bytes_master_to_client.clone(),
    ) {
        Ok(c) => c,
        Err(e) => {
            debug!(error = %e, "cannot hand the session to io_uring");
            return Closed::ClientError;
        }
    };
    let reason = race(
        conn.ended(Side::Client),
        conn.ended(Side::Master),
        master,
        shutdown,
        |side| {
            let to = if side == Side::Client {
                Side::Master
            } else {
                Side::Client
            };
            conn.shutdown_write(to);
        },
    )
    .await;
    conn.close(reason == Closed::MasterSwitch).await;
    reason
}

/// Longest the master's last bytes may take to reach the client after writing to the master
/// failed (see [`deliver_masters_last_bytes`]). The master has closed or reset its side, so
/// what it sent before is already in this host's receive queue: reading it takes no round
/// trip, and only a client that does not read could make this wait.
const LAST_BYTES_GRACE: Duration = Duration::from_secs(2);

/// Whether a session whose `direction` (named by the side it reads from) failed on `failed`
/// keeps the master-to-client direction running until it ends before closing. Redis often
/// answers and then closes (a protocol error, `-ERR max number of clients reached`, `QUIT`, a
/// client killed): when the client keeps writing, forwarding to the master fails with a reset
/// while the master's last reply still waits in the receive queue. Closing then would lose the
/// reply a direct connection delivers; so the master-to-client direction goes on to its EOF or
/// error first. Every other failure closes at once: a failed client cannot be answered, and a
/// failed read from the master comes after everything the master sent was forwarded.
fn deliver_masters_last_bytes(direction: Side, failed: Side) -> bool {
    direction == Side::Client && failed == Side::Master
}

/// Runs both directions of a session until both reached EOF, either failed, the epoch was
/// fenced or shutdown's grace period ended; names why the session ends. `half_closed(side)`
/// runs when `side` reached EOF while the other direction still flows. Bytes the master sent
/// before it closed or reset reach the client first ([`deliver_masters_last_bytes`]); only a
/// fence or the end of shutdown drops them.
async fn race(
    c2m: impl std::future::Future<Output = Result<(), Side>>,
    m2c: impl std::future::Future<Output = Result<(), Side>>,
    master: &Master,
    shutdown: &Shutdown,
    mut half_closed: impl FnMut(Side),
) -> Closed {
    tokio::pin!(c2m, m2c);
    let (mut c2m_done, mut m2c_done) = (false, false);
    let mut first_eof: Option<Side> = None;
    loop {
        let (side, result) = tokio::select! {
            biased;
            _ = master.fenced().cancelled() => return Closed::MasterSwitch,
            _ = shutdown.close.cancelled() => return Closed::Shutdown,
            r = &mut c2m, if !c2m_done => { c2m_done = true; (Side::Client, r) }
            r = &mut m2c, if !m2c_done => { m2c_done = true; (Side::Master, r) }
        };
        match result {
            Ok(()) => {
                first_eof.get_or_insert(side);
                if !(c2m_done && m2c_done) {
                    half_closed(side);
                }
            }
            Err(failed) if !m2c_done && deliver_masters_last_bytes(side, failed) => {
                tokio::select! {
                    biased;
                    _ = master.fenced().cancelled() => return Closed::MasterSwitch,
                    _ = shutdown.close.cancelled() => return Closed::Shutdown,
                    r = &mut m2c => if r == Err(Side::Client) { return Closed::ClientError },
                    _ = tokio::time::sleep(LAST_BYTES_GRACE) => {}
                }
                return Closed::MasterError;
            }
            Err(Side::Client) => return Closed::ClientError,
            Err(Side::Master) => return Closed::MasterError,
        }
        if c2m_done && m2c_done {
            return match first_eof {
                Some(Side::Master) => Closed::MasterClosed,
                _ => Closed::ClientClosed,
            };
        }
    }
}

/// Splices a session where at least one side is TLS, or the client is on a Unix socket. Same
/// contract as [`splice`]; a TLS stream cannot use the readiness tricks of the plain path, so
/// each direction is a plain read/write/flush loop with its own buffer. A fence aborts the
/// master's TCP connection.
async fn splice_io<C: AsyncRead + AsyncWrite + Unpin, M: Transport>(
    client: C,
    master_conn: M,
    master: &Master,
    shutdown: &Shutdown,
    route: &Route,
) -> Closed {
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut mr, mut mw) = tokio::io::split(master_conn);
    let reason = {
        let c2m = copy_half(
            &mut cr,
            &mut mw,
            &route.metrics.bytes_client_to_master,
            Side::Client,
            Side::Master,
        );
        let m2c = copy_half(
            &mut mr,
            &mut cw,
            &route.metrics.bytes_master_to_client,
            Side::Master,
            Side::Client,
        );
        // copy_half passes the half-close on itself.
        race(c2m, m2c, master, shutdown, |_| {}).await
    };
    if reason == Closed::MasterSwitch {
        abort_master(mr.unsplit(mw).tcp());
    }
    reason
}

/// Copies `from` -> `to` until EOF, then passes the half-close on (for TLS: close_notify,
/// then FIN). The error names the side that failed.
async fn copy_half<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    from: &mut R,
    to: &mut W,
    bytes: &Counter,
    from_side: Side,
    to_side: Side,
) -> Result<(), Side> {
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(n) => n,
            // A peer that closes TCP without TLS close_notify (many do) has still closed.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
            Err(_) => return Err(from_side),
        };
        if n == 0 {
            // The peer may already be gone; then the other direction reports it.
            let _ = to.shutdown().await;
            return Ok(());
        }
        bytes.increment(n as u64);
        to.write_all(&buf[..n]).await.map_err(|_| to_side)?;
        to.flush().await.map_err(|_| to_side)?;
    }
}

thread_local! {
    /// One read buffer per worker thread. A read and the write that follows it happen with no
    /// await in between, so every session on the thread can share it: idle sessions hold no
    /// buffer, and the hot path allocates nothing. Only bytes the other side cannot take at
    /// once are copied into the session's own backlog.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; BUF_SIZE].into_boxed_slice());
}

/// What one synchronous read-and-forward step did.
enum Step {
    /// Everything read was written (or there was nothing to read).
    Forwarded,
    /// The other side took only part; the rest is in the backlog.
    Backlogged,
    Eof,
    ReadFailed,
    WriteFailed,
}

/// Reads what `from` has into `buf`. A short read (fewer bytes than `buf` holds) means the
/// socket's receive queue is empty, so it also clears the read readiness, as a `WouldBlock`
/// would: the next `readable()` waits for the next edge instead of costing a `recv` that
/// fails with `EAGAIN` (one syscall per direction per request; HAProxy trusts short reads the
/// same way). Tokio clears only if no new event arrived meanwhile, and keeps a seen EOF.
/// Not covered: TCP urgent data (`MSG_OOB`) stops a read at the urgent mark, so a client that
/// sent some would stall its own session until it sends more; Redis clients never do.
/// `WouldBlock` is returned only when nothing was read.
fn read_drain(from: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    let cap = buf.len();
    let r = from.try_io(Interest::READABLE, || {
        got = (&*SockRef::from(from)).read(buf)?;
        if got > 0 && got < cap {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(())
        }
    });
    match r {
        Err(e) if got == 0 => Err(e),
        _ => Ok(got),
    }
}

/// Copies `from` -> `to` until EOF from `from`; the error names the side that failed. While
/// the direction carries large reads it splices instead ([`Mode`]).
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    bytes: &Counter,
    from_side: Side,
    to_side: Side,
) -> Result<(), Side> {
    let mut backlog: Vec<u8> = Vec::new();
    let mut mode = Mode::Copy;
    loop {
        from.readable().await.map_err(|_| from_side)?;
        if mode.splices() {
            match splice_step(from, to, bytes, &mut mode).await {
                Ok(Spliced::Moved) => continue,
                Ok(Spliced::Eof) => return Ok(()),
                // Nothing was read: copy from now on.
                Ok(Spliced::Unavailable) => mode = Mode::CopyOnly,
                Err(Failed::Read) => return Err(from_side),
                Err(Failed::Write) => return Err(to_side),
            }
        }
        let step = SCRATCH.with(|scratch| {
            let mut buf = scratch.borrow_mut();
            let n = match read_drain(from, &mut buf) {
                Ok(0) => return Step::Eof,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Forwarded,
                Err(_) => return Step::ReadFailed,
            };
            bytes.increment(n as u64);
            mode = mode.after(n);
            let written = match to.try_write(&buf[..n]) {
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(_) => return Step::WriteFailed,
            };
            if written == n {
                return Step::Forwarded;
            }
            backlog.extend_from_slice(&buf[written..n]);
            Step::Backlogged
        });
        match step {
            Step::Forwarded => {}
            Step::Eof => return Ok(()),
            Step::ReadFailed => return Err(from_side),
            Step::WriteFailed => return Err(to_side),
            Step::Backlogged => {
                let mut sent = 0;
                while sent < backlog.len() {
                    to.writable().await.map_err(|_| to_side)?;
                    match to.try_write(&backlog[sent..]) {
                        Ok(k) => sent += k,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(_) => return Err(to_side),
                    }
                }
                // Freed, not kept: a slow reader is the exception, idle memory the rule.
                backlog = Vec::new();
            }
        }
    }
}

/// What one splice step did.
enum Spliced {
    /// Everything read was written (or there was nothing to read).
    Moved,
    Eof,
    /// Splicing is not possible here (no pipe, or the kernel does not splice these sockets);
    /// nothing was read.
    Unavailable,
}

/// Which side of a splice step failed.
enum Failed {
    Read,
    Write,
}

/// Reads what `from` has into a pipe and splices it into `to`, waiting for `to` while it
/// cannot take it all.
async fn splice_step(
    from: &TcpStream,
    to: &TcpStream,
    bytes: &Counter,
    mode: &mut Mode,
) -> Result<Spliced, Failed> {
    let Ok(mut pipe) = Pipe::take() else {
        return Ok(Spliced::Unavailable);
    };
    let mut got = 0;
    // Unlike a short `recv`, a short splice does not mean the socket is drained: a splice
    // stops when the pipe runs out of slots (one per queued segment, 16 in all), so 16 small
    // segments end it with more queued. Readiness is cleared only by a splice that finds
    // nothing (`EAGAIN`; the pipe is empty here, so that is the socket's): one more call per
    // burst, and nothing stranded until the peer sends again.
    let read = from.try_io(Interest::READABLE, || {
        got = pipe.fill(from.as_raw_fd())?;
        Ok(())
    });
    if got == 0 {
        pipe.give();
        return match read {
            Ok(()) => Ok(Spliced::Eof),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Spliced::Moved),
            Err(e) if splice_unsupported(&e) => Ok(Spliced::Unavailable),
            Err(_) => Err(Failed::Read),
        };
    }
    bytes.increment(got as u64);
    *mode = mode.after(got);
    while pipe.held > 0 {
        match to.try_io(Interest::WRITABLE, || pipe.drain(to.as_raw_fd())) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                to.writable().await.map_err(|_| Failed::Write)?;
            }
            Err(_) => return Err(Failed::Write),
        }
    }
    pipe.give();
    Ok(Spliced::Moved)
}

/// Errors by which a kernel says it cannot splice these descriptors.
fn splice_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio_util::sync::CancellationToken;

    /// Sets its flag when dropped: the connection (or handshake in progress) was let go.
    struct Dropped(Arc<AtomicBool>);

    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// The fence against a connect in each phase: fenced before it starts, during the
    /// handshake, as it completes, not at all; and a failure is still reported when unfenced.
    #[tokio::test]
    async fn a_connection_to_a_fenced_master_never_becomes_a_session() {
        // Fenced before: the connect is never even polled (no SYN).
        let fence = CancellationToken::new();
        fence.cancel();
        let polled = Arc::new(AtomicBool::new(false));
        let p = polled.clone();
        let r = unless_fenced(&fence, async move {
            p.store(true, Ordering::SeqCst);
            Ok::<_, ()>(())
        })
        .await;
        assert!(r.is_none());
        assert!(
            !polled.load(Ordering::SeqCst),
            "connect ran after the fence"
        );

        // Fenced while the handshake is in progress (the master has not answered yet): the
        // attempt ends at once and what it holds is dropped; the master answering later
        // changes nothing.
        let fence = CancellationToken::new();
        let dropped = Arc::new(AtomicBool::new(false));
        let (answer, answered) = tokio::sync::oneshot::channel::<()>();
        let held = Dropped(dropped.clone());
        let handshake = async move {
            let _socket = held;
            let _ = answered.await;
            Ok::<_, ()>("session")
        };
        let f = fence.clone();
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            f.cancel();
        });
        let r = tokio::time::timeout(Duration::from_secs(5), unless_fenced(&fence, handshake))
            .await
            .expect("the fence ends the attempt without the master's answer");
        assert!(r.is_none());
        assert!(dropped.load(Ordering::SeqCst), "the handshake was kept");
        assert!(answer.send(()).is_err(), "the handshake is gone");

        // The handshake completes in the same instant the epoch is fenced: the finished
        // connection is dropped, not used.
        let fence = CancellationToken::new();
        let dropped = Arc::new(AtomicBool::new(false));
        let conn = Dropped(dropped.clone());
        let f = fence.clone();
        let r = unless_fenced(&fence, async move {
            f.cancel();
            Ok::<_, ()>(conn)
        })
        .await;
        assert!(r.is_none());
        assert!(dropped.load(Ordering::SeqCst), "the connection was kept");

        // Not fenced: the connection, or the master's failure, is the caller's.
        let fence = CancellationToken::new();
        assert_eq!(
            unless_fenced(&fence, async { Ok::<_, ()>(7) }).await,
            Some(Ok(7))
        );
        assert_eq!(
            unless_fenced(&fence, async { Err::<(), _>("refused") }).await,
            Some(Err("refused"))
        );
    }

    #[test]
    fn the_masters_last_reply_is_delivered_only_after_a_failed_write_to_it() {
        // (direction that ended, by the side it reads from; side that failed; drain first?)
        let rows = [
            (Side::Client, Side::Master, true), // forwarding to a master that closed/reset
            (Side::Client, Side::Client, false), // the client's read failed: nobody to answer
            (Side::Master, Side::Master, false), // reading the master failed: all was forwarded
            (Side::Master, Side::Client, false), // writing to the client failed
        ];
        for (direction, failed, drain) in rows {
            assert_eq!(
                deliver_masters_last_bytes(direction, failed),
                drain,
                "{direction:?} failed on {failed:?}"
            );
        }
    }

    #[test]
    fn hold_end_reason_rows() {
        use MasterSeen::*;
        let rows: &[(bool, MasterSeen, Option<&str>, &str)] = &[
            (
                true,
                None,
                Option::None,
                "no verified master (shutting down)",
            ),
            (
                true,
                Untrusted,
                Some("switch_event"),
                "no verified master (shutting down)",
            ),
            (
                false,
                None,
                Option::None,
                "no verified master (no master known)",
            ),
            (
                false,
                None,
                Some("switch_event"),
                "no verified master (failover in progress)",
            ),
            (
                false,
                None,
                Some("role_replica"),
                "no verified master (failover in progress)",
            ),
            (
                false,
                None,
                Some("no_sentinel_majority"),
                "no verified master (no sentinel majority)",
            ),
            (
                false,
                Untrusted,
                Option::None,
                "master not answering (refused since its last ROLE check)",
            ),
            (
                false,
                Trusted,
                Some("switch_event"),
                "cannot connect to the master in time",
            ),
        ];
        for (shutting_down, seen, fence, want) in rows {
            assert_eq!(
                hold_end_reason(*shutting_down, *seen, *fence),
                *want,
                "{shutting_down} {seen:?} {fence:?}"
            );
        }
    }

    #[test]
    fn the_hold_error_is_one_resp_error_line() {
        let e = hold_error(
            "main",
            "no verified master (failover in progress)",
            Duration::from_millis(2049),
        );
        assert_eq!(
            e,
            "-ERR redis-failover-proxy: route main: no verified master (failover in progress); held 2.0s\r\n"
        );
        let e = hold_error("a\r\nb c", "x", Duration::ZERO);
        assert_eq!(
            e,
            "-ERR redis-failover-proxy: route a??b?c: x; held 0.0s\r\n"
        );
        assert_eq!(e.matches("\r\n").count(), 1);
    }
}
