//! The accept loops of one route, one per session thread, all on the same listening socket
//! (each registered with its own thread's epoll); a thread accepts only when it is its turn
//! ([`Turns::wait_turn`]) and serves what it accepted itself, so no client is handed between
//! threads. A loop never dies: accept errors are counted, logged at most once a second per
//! thread, and backed off (EMFILE would otherwise spin, since the pending connection stays
//! queued). The connection limit is a counter of the route shared by the loops
//! ([`Route::try_admit`]); a client over the limit is closed at once.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::counter;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_util::task::TaskTracker;
use tracing::{debug, error};

use super::workers::Turns;
use super::{session, Shutdown};
use crate::metrics::{self as m, Rejected};
use crate::route::Route;

/// A route's listening socket: TCP, or a Unix stream socket (`listen = "unix:/path"`).
#[derive(Debug)]
pub enum RouteListener {
    /// A TCP listener.
    Tcp(TcpListener),
    /// A Unix stream socket listener.
    Unix(UnixListener),
}

/// An accepted client connection.
#[derive(Debug)]
pub enum Accepted {
    /// Over TCP.
    Tcp(TcpStream),
    /// Over a Unix socket.
    Unix(UnixStream),
}

/// Who connected, for logs: a TCP peer's address, or a Unix socket's client (unnamed).
#[derive(Debug, Clone, Copy)]
pub enum Peer {
    /// A TCP client's address.
    Tcp(SocketAddr),
    /// A client of a Unix socket.
    Unix,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp(a) => write!(f, "{a}"),
            Peer::Unix => f.write_str("unix"),
        }
    }
}

impl RouteListener {
    async fn accept(&self) -> io::Result<(Accepted, Peer)> {
        match self {
            RouteListener::Tcp(l) => {
                let (c, a) = l.accept().await?;
                Ok((Accepted::Tcp(c), Peer::Tcp(a)))
            }
            RouteListener::Unix(l) => {
                let (c, _) = l.accept().await?;
                Ok((Accepted::Unix(c), Peer::Unix))
            }
        }
    }

    /// The address it listens on, for logs.
    pub fn local_addr(&self) -> String {
        match self {
            RouteListener::Tcp(l) => l.local_addr().map(|a| a.to_string()),
            RouteListener::Unix(l) => l.local_addr().map(|a| match a.as_pathname() {
                Some(p) => format!("unix:{}", p.display()),
                None => "unix".to_string(),
            }),
        }
        .unwrap_or_default()
    }
}

/// What was found at a Unix listen path before binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Nothing.
    Absent,
    /// A file that is not a socket (a regular file, a directory, a symlink...).
    NotSocket,
    /// A socket a process still accepts on.
    LiveSocket,
    /// A socket nobody listens on (connect refused): left by a process that ended.
    StaleSocket,
    /// A socket that could not be probed (e.g. permission denied).
    Unprobed(String),
}

/// Whether to remove what is at a Unix listen path before binding (`Ok(true)`), bind at once
/// (`Ok(false)`), or refuse to start (`Err`, the reason). Only a stale socket is removed: a
/// file that is not a socket is someone's data, a live socket someone's service.
pub fn before_bind(found: &Found) -> Result<bool, String> {
    match found {
        Found::Absent => Ok(false),
        Found::StaleSocket => Ok(true),
        Found::NotSocket => Err("the path exists and is not a socket; not replacing it".into()),
        Found::LiveSocket => Err("a process is listening on this socket already".into()),
        Found::Unprobed(e) => Err(format!(
            "a socket exists at the path and cannot be probed ({e}); not replacing it"
        )),
    }
}

/// A non-blocking connect to the Unix socket at `path`: a blocking one waits for ever while the
/// listener's queue is full (a hung process), and this runs on the control thread during a
/// reload.
fn connect_without_waiting(path: &Path) -> io::Result<()> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let s = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    s.set_nonblocking(true)?;
    s.connect(&SockAddr::unix(path)?)
}

/// Looks at `path` (without following a symlink) and, if it is a socket, connects to it.
fn probe(path: &Path) -> Found {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Found::Absent,
        Err(e) => Found::Unprobed(e.to_string()),
        Ok(m) if !m.file_type().is_socket() => Found::NotSocket,
        Ok(_) => match connect_without_waiting(path) {
            Ok(()) => Found::LiveSocket,
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Found::StaleSocket,
            // A listener whose queue is full: live, and busy.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Found::LiveSocket,
            Err(e) => Found::Unprobed(e.to_string()),
        },
    }
}

/// Binds a Unix stream socket at `path` with permission bits `mode` and a listen queue of
/// `backlog`, replacing a stale socket left there (see [`before_bind`]). Must run inside a
/// tokio runtime.
pub fn bind_unix(path: &Path, mode: u32, backlog: u32) -> io::Result<UnixListener> {
    use socket2::{Domain, SockAddr, Socket, Type};
    use std::os::unix::fs::PermissionsExt;
    if before_bind(&probe(path)).map_err(io::Error::other)? {
        std::fs::remove_file(path)?;
    }
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.bind(&SockAddr::unix(path)?)?;
    // Before listen: until then nobody can connect, whatever the umask gave the file.
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    socket.listen(backlog.clamp(128, 65_535) as i32)?;
    socket.set_nonblocking(true)?;
    UnixListener::from_std(std::os::unix::net::UnixListener::from(
        std::os::fd::OwnedFd::from(socket),
    ))
}

/// Accepts clients of `route` on `listener` (a descriptor of its own, registered with session
/// thread `thread`'s runtime, where this runs) until `shutdown.drain`, whenever it is that
/// thread's turn, and spawns their sessions on `tasks` on this thread.
pub async fn serve(
    listener: RouteListener,
    route: Arc<Route>,
    turns: Arc<Turns>,
    thread: usize,
    tasks: TaskTracker,
    shutdown: Shutdown,
) {
    let mut backoff = Duration::ZERO;
    let mut last_log: Option<Instant> = None;
    let mut suppressed = 0u64;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.drain.cancelled() => return,
            r = async {
                turns.wait_turn(thread).await;
                listener.accept().await
            } => r,
        };
        let (client, peer) = match accepted {
            Ok(c) => {
                backoff = Duration::ZERO;
                c
            }
            Err(e) => {
                let fd_limit = e.raw_os_error().is_some_and(is_resource_errno);
                let kind = if fd_limit { "fd_limit" } else { "other" };
                counter!(m::ACCEPT_ERRORS, "route" => route.name().to_string(), "kind" => kind)
                    .increment(1);
                if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    error!(route = route.name(), thread, error = %e, kind, suppressed, "accept failed; backing off");
                    last_log = Some(Instant::now());
                    suppressed = 0;
                } else {
                    suppressed += 1;
                }
                if fd_limit || !is_per_connection(&e) {
                    backoff = (backoff * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
                    tokio::select! {
                        _ = shutdown.drain.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                }
                continue;
            }
        };
        route.metrics.accepted.increment(1);
        // The limit is read at each accept: a reload may have changed it.
        let Some(permit) = route.try_admit() else {
            counter!(m::CONNECTIONS_REJECTED, "route" => route.name().to_string(), "reason" => Rejected::Limit.as_str())
                .increment(1);
            debug!(route = route.name(), client.addr = %peer, "connection limit reached; closing client");
            drop(client);
            continue;
        };
        tasks.spawn(session::run(
            client,
            peer,
            route.clone(),
            permit,
            turns.count(thread),
            shutdown.clone(),
        ));
    }
}

/// EMFILE, ENFILE, ENOBUFS, ENOMEM: the process or system is out of something; retrying at
/// once would spin. (Also used by the admin server's accept loop.)
pub(crate) fn is_resource_errno(errno: i32) -> bool {
    matches!(errno, 24 | 23 | 105 | 12)
}

/// Errors about one pending connection (it went away before we accepted it).
pub(crate) fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_bind_rows() {
        let rows = [
            (Found::Absent, Ok(false)),
            (Found::StaleSocket, Ok(true)),
            (Found::NotSocket, Err("not a socket")),
            (Found::LiveSocket, Err("listening on this socket already")),
            (
                Found::Unprobed("denied".into()),
                Err("cannot be probed (denied)"),
            ),
        ];
        for (found, want) in rows {
            match (before_bind(&found), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, w, "{found:?}"),
                (Err(got), Err(w)) => assert!(got.contains(w), "{found:?}: {got}"),
                (got, _) => panic!("{found:?}: {got:?}"),
            }
        }
    }

    #[test]
    fn probe_tells_files_live_and_stale_sockets_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        assert_eq!(probe(&path), Found::Absent);
        std::fs::write(&path, b"data").unwrap();
        assert_eq!(probe(&path), Found::NotSocket);
        std::fs::remove_file(&path).unwrap();
        let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert_eq!(probe(&path), Found::LiveSocket);
        drop(live);
        // The file stays behind after its listener is gone.
        assert_eq!(probe(&path), Found::StaleSocket);
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), dir.path().join("l")).unwrap();
        assert_eq!(probe(&dir.path().join("l")), Found::NotSocket);
    }
}
