//! redis-failover-proxy: one fixed local address per route for the current master of a Redis
//! Sentinel group. [`run`] wires the pieces: per route a watcher ([`sentinel`]) that is the only
//! writer of the route's master state ([`route`]) and, on every session thread, an accept loop
//! ([`proxy`]) that only reads it; plus the admin HTTP server ([`admin`]) on a thread of its
//! own. The binary is a thin shell around [`run`].
#![warn(missing_docs)]

pub mod admin;
pub mod check;
pub mod config;
pub mod metrics;
pub mod proxy;
pub mod resp_limit;
pub mod route;
pub mod sentinel;
pub mod status;
pub mod status_page;
pub mod tls;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::{TcpListener, TcpSocket};

use config::ListenAddr;
use proxy::listener::RouteListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use config::Config;
pub use proxy::workers::Workers;
pub use proxy::Shutdown;

/// The sockets a configuration needs, bound before [`run`] (so tests can bind port 0 and
/// callers learn of bind errors before anything starts).
#[derive(Debug)]
pub struct Listeners {
    /// One per route, in `config.routes` order.
    pub routes: Vec<RouteListener>,
    /// The admin HTTP server's (none when it is switched off).
    pub admin: Option<TcpListener>,
}

/// Binding a listen address failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({what}): {source}")]
pub struct BindError {
    /// The address (`ip:port` or `unix:/path`).
    pub addr: String,
    /// Which listener (`route NAME` or `admin`).
    pub what: String,
    /// Why.
    pub source: io::Error,
}

/// Binds every listen address of `config`.
pub async fn bind(config: &Config) -> Result<Listeners, BindError> {
    let mut routes = Vec::with_capacity(config.routes.len());
    for r in &config.routes {
        // A listen backlog as deep as the connection limit (HAProxy does the same; the kernel
        // caps it at net.core.somaxconn): a reconnect storm after a fence arrives all at once.
        let backlog = u32::try_from(r.max_connections).unwrap_or(u32::MAX);
        let what = format!("route {}", r.name);
        routes.push(match &r.listen {
            ListenAddr::Tcp(a) => RouteListener::Tcp(bind_one(*a, backlog, what)?),
            ListenAddr::Unix { path, mode } => RouteListener::Unix(
                proxy::listener::bind_unix(path, *mode, backlog).map_err(|source| BindError {
                    addr: r.listen.to_string(),
                    what,
                    source,
                })?,
            ),
        });
    }
    let admin = config
        .admin_listen
        .map(|a| bind_one(a, 128, "admin".to_string()))
        .transpose()?;
    Ok(Listeners { routes, admin })
}

fn bind_one(addr: SocketAddr, backlog: u32, what: String) -> Result<TcpListener, BindError> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    };
    // SO_REUSEADDR as tokio's TcpListener::bind sets it: a restart is not refused because of
    // the previous process's connections in TIME_WAIT.
    socket
        .and_then(|s| s.set_reuseaddr(true).map(|()| s))
        .and_then(|s| s.bind(addr).map(|()| s))
        .and_then(|s| s.listen(backlog.clamp(128, 65_535)))
        .map_err(|source| BindError {
            addr: addr.to_string(),
            what,
            source,
        })
}

/// Installs the Prometheus recorder (once per process) and describes every metric.
pub fn install_metrics() -> Option<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(metrics::FENCE_DURATION.into()),
            metrics::FENCE_BUCKETS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(metrics::HOLD_DURATION.into()),
                metrics::HOLD_BUCKETS,
            )
        })
        .ok()?
        .install_recorder()
        .ok()?;
    metrics::describe();
    Some(handle)
}

/// Runs the proxy until `shutdown.drain` is cancelled, then stops accepting, lets sessions
/// finish for `config.shutdown_grace` (or until `shutdown.close`), closes the rest, stops the
/// session threads and the admin server and returns. Sessions run on `workers` (see
/// [`Workers::start`]); the admin server on a thread of its own ([`admin::AdminServer`]). The
/// error is a failure to start accepting on the session threads or to start the admin
/// server, before anything ran.
pub async fn run(
    config: Config,
    listeners: Listeners,
    workers: Workers,
    metrics: Option<PrometheusHandle>,
    shutdown: Shutdown,
) -> Result<(), StartError> {
    // Every session thread accepts on its own descriptor of each route's socket, registered
    // with that thread's event loop; all of it before anything starts, so a failure (out of
    // descriptors or epoll watches) stops the start instead of leaving a thread that never
    // accepts but counts as the least loaded.
    let mut per_route = Vec::with_capacity(listeners.routes.len());
    for (rc, listener) in config.routes.iter().zip(listeners.routes) {
        let fds = share_listener(listener, &workers).map_err(|source| StartError::Route {
            route: rc.name.clone(),
            source,
        })?;
        per_route.push(fds);
    }
    let tasks = TaskTracker::new();
    let stop_watchers = CancellationToken::new();
    let routes: Vec<Arc<route::Route>> = config
        .routes
        .iter()
        .cloned()
        .map(route::Route::new)
        .collect();
    // The admin server starts before the watchers and accept loops, so a failure to start it
    // stops the start with nothing running. It gets a thread of its own: no admin client can
    // take a turn from the watchers (this runtime) or the sessions (the session threads).
    let admin = match listeners.admin {
        Some(listener) => {
            let admin_addr = listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            let server = admin::AdminServer::start(
                listener,
                admin::AdminState {
                    routes: routes.clone(),
                    metrics,
                    draining: shutdown.drain.clone(),
                },
            )
            .map_err(|source| StartError::Admin { source })?;
            info!(listen = %admin_addr, "admin server listening");
            Some(server)
        }
        None => {
            info!("admin server switched off");
            None
        }
    };
    // Unix socket files this process created, removed at exit if still the same file.
    let unix_files: Vec<(std::path::PathBuf, u64)> = config
        .routes
        .iter()
        .filter_map(|r| match &r.listen {
            ListenAddr::Unix { path, .. } => {
                use std::os::unix::fs::MetadataExt;
                let ino = std::fs::symlink_metadata(path).ok()?.ino();
                Some((path.clone(), ino))
            }
            ListenAddr::Tcp(_) => None,
        })
        .collect();
    for (route, fds) in routes.into_iter().zip(per_route) {
        let addr = fds[0].local_addr();
        info!(
            route = route.name(),
            listen = %addr,
            master = %route.config.master_name,
            sentinels = ?route.config.sentinel.addresses,
            "route listening"
        );
        tokio::spawn(sentinel::watch(route.clone(), stop_watchers.clone()));
        let limit = Arc::new(Semaphore::new(route.config.max_connections));
        for (thread, fd) in fds.into_iter().enumerate() {
            tasks.spawn_on(
                proxy::listener::serve(
                    fd,
                    route.clone(),
                    workers.turns(),
                    thread,
                    limit.clone(),
                    tasks.clone(),
                    shutdown.clone(),
                ),
                workers.handle(thread),
            );
        }
    }

    shutdown.drain.cancelled().await;
    tasks.close();
    info!(
        sessions = tasks.len(),
        grace = %humantime::format_duration(config.shutdown_grace),
        "shutting down: stopped accepting, waiting for sessions"
    );
    tokio::select! {
        _ = tasks.wait() => {}
        _ = tokio::time::sleep(config.shutdown_grace) => {
            warn!(sessions = tasks.len(), "grace period over; closing the remaining sessions");
        }
        _ = shutdown.close.cancelled() => {}
    }
    shutdown.close.cancel();
    if tokio::time::timeout(Duration::from_secs(5), tasks.wait())
        .await
        .is_err()
    {
        warn!(sessions = tasks.len(), "sessions did not close in time");
    }
    stop_watchers.cancel();
    workers.stop(Duration::from_secs(2)).await;
    // The admin server answered (503 on /readyz) through the drain; now it closes its
    // connections, a response in flight getting admin::CLOSE_GRACE. A client holding a
    // half-sent request must not keep the process alive: it is not waited for beyond that.
    if let Some(admin) = admin {
        admin
            .stop(admin::CLOSE_GRACE + Duration::from_secs(1))
            .await;
    }
    for (path, ino) in unix_files {
        use std::os::unix::fs::MetadataExt;
        // Another process may have replaced it meanwhile; only our own file goes.
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.ino() == ino) {
            let _ = std::fs::remove_file(&path);
        }
    }
    info!("shutdown complete");
    Ok(())
}

/// Starting failed, before anything ran.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Starting the session threads' accept loops of a route failed.
    #[error("route {route}: cannot share the listening socket with the session threads: {source}")]
    Route {
        /// The route's name.
        route: String,
        /// Why.
        source: io::Error,
    },
    /// Starting the admin server's thread failed.
    #[error("admin server: cannot start its thread: {source}")]
    Admin {
        /// Why.
        source: io::Error,
    },
}

/// One descriptor of `listener` per session thread, each registered with that thread's
/// runtime.
fn share_listener(listener: RouteListener, workers: &Workers) -> io::Result<Vec<RouteListener>> {
    match listener {
        RouteListener::Tcp(l) => {
            let listener = l.into_std()?;
            (0..workers.len())
                .map(|thread| {
                    let fd = listener.try_clone()?;
                    // Registers with the runtime entered here: the session thread's.
                    let _in_thread = workers.handle(thread).enter();
                    TcpListener::from_std(fd).map(RouteListener::Tcp)
                })
                .collect()
        }
        RouteListener::Unix(l) => {
            let listener = l.into_std()?;
            (0..workers.len())
                .map(|thread| {
                    let fd = listener.try_clone()?;
                    let _in_thread = workers.handle(thread).enter();
                    tokio::net::UnixListener::from_std(fd).map(RouteListener::Unix)
                })
                .collect()
        }
    }
}
