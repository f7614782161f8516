//! The accept loops of one route, one per session thread, all on the same listening socket
//! (each registered with its own thread's epoll); a thread accepts only when it is its turn
//! ([`Turns::wait_turn`]) and serves what it accepted itself, so no client is handed between
//! threads. A loop never dies: accept errors are counted, logged at most once a second per
//! thread, and backed off (EMFILE would otherwise spin, since the pending connection stays
//! queued). The connection limit is a counter of the route shared by the loops
//! ([`Route::try_admit`]); a client over the limit is closed at once.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::counter;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tracing::{debug, error};

use super::workers::Turns;
use super::{session, Shutdown};
use crate::metrics::{self as m, Rejected};
use crate::route::Route;

/// Accepts clients of `route` on `listener` (a descriptor of its own, registered with session
/// thread `thread`'s runtime, where this runs) until `shutdown.drain`, whenever it is that
/// thread's turn, and spawns their sessions on `tasks` on this thread.
pub async fn serve(
    listener: TcpListener,
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
