//! redis-failover-proxy: one fixed local address per route for the current master of a Redis
//! Sentinel group. [`run`] wires the pieces: per route a watcher ([`sentinel`]) that is the only
//! writer of the route's master state ([`route`]) and, on every session thread, an accept loop
//! ([`proxy`]) that only reads it; plus the admin HTTP server ([`admin`]) on a thread of its
//! own. The binary is a thin shell around [`run`].
#![warn(missing_docs)]

pub mod admin;
pub mod check;
pub mod config;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod proxy;
pub mod reload;
pub mod resp_limit;
pub mod route;
pub mod sentinel;
pub mod status;
pub mod status_page;
pub mod status_report;
pub mod tls;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ::metrics::{counter, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::metrics as m;
use config::ListenAddr;
use proxy::listener::RouteListener;

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
        routes.push(bind_route(r)?);
    }
    let admin = config
        .admin_listen
        .map(|a| bind_one(a, 128, "admin".to_string()))
        .transpose()?;
    Ok(Listeners { routes, admin })
}

/// Binds a route's listen address (TCP or a Unix socket).
fn bind_route(r: &config::RouteConfig) -> Result<RouteListener, BindError> {
    // A listen backlog as deep as the connection limit (HAProxy does the same; the kernel
    // caps it at net.core.somaxconn): a reconnect storm after a fence arrives all at once.
    let backlog = u32::try_from(r.max_connections).unwrap_or(u32::MAX);
    let what = format!("route {}", r.name);
    Ok(match &r.listen {
        ListenAddr::Tcp(a) => RouteListener::Tcp(bind_one(*a, backlog, what)?),
        ListenAddr::Unix { path, mode } => RouteListener::Unix(
            proxy::listener::bind_unix(path, *mode, backlog).map_err(|source| BindError {
                addr: r.listen.to_string(),
                what,
                source,
            })?,
        ),
    })
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
    metrics::set_build_info();
    Some(handle)
}

/// What the binary asks of a running proxy (on SIGHUP and SIGUSR1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Load the configuration again and apply it ([`reload`]).
    Reload,
    /// Log the `/status` document.
    LogStatus,
}

/// Loads the configuration again for a reload (the binary's: the same file, flags and
/// environment as at start).
pub type Loader = Arc<dyn Fn() -> Result<Config, config::ConfigError> + Send + Sync>;

/// The control requests a running proxy takes, and how it reloads.
pub struct Controls {
    /// Requests, in order.
    pub requests: tokio::sync::mpsc::Receiver<Control>,
    /// How a reload loads the new configuration; `None`: reloads are refused.
    pub load: Option<Loader>,
    /// The configuration file, for log lines (`command line` when there is none).
    pub source: String,
}

impl Controls {
    /// No requests ever (for callers that do not reload).
    pub fn none() -> Controls {
        Controls {
            requests: tokio::sync::mpsc::channel(1).1,
            load: None,
            source: "command line".to_string(),
        }
    }
}

/// Runs the proxy until `shutdown.drain` is cancelled, then stops accepting, lets sessions
/// finish for `config.shutdown_grace` (or until `shutdown.close`), closes the rest, stops the
/// session threads and the admin server and returns. Meanwhile it serves `controls`
/// (reloads, status to the log). Sessions run on `workers` (see [`Workers::start`]); the admin
/// server on a thread of its own ([`admin::AdminServer`]). The error is a failure to start
/// accepting on the session threads or to start the admin server, before anything ran.
pub async fn run(
    config: Config,
    listeners: Listeners,
    workers: Workers,
    metrics: Option<PrometheusHandle>,
    shutdown: Shutdown,
    mut controls: Controls,
) -> Result<(), StartError> {
    // Every session thread accepts on its own descriptor of each route's socket, registered
    // with that thread's event loop; all of it before anything starts, so a failure (out of
    // descriptors or epoll watches) stops the start instead of leaving a thread that never
    // accepts but counts as the least loaded.
    let mut prepared = Vec::with_capacity(listeners.routes.len());
    for (rc, listener) in config.routes.iter().zip(listeners.routes) {
        let p = RouteSocket::from_listener(listener)
            .and_then(|socket| Prepared::new(rc.clone(), socket, &workers))
            .map_err(|source| StartError::Route {
                route: rc.name.clone(),
                source,
            })?;
        prepared.push(p);
    }
    let mut proxy = Proxy {
        tasks: TaskTracker::new(),
        stop_watchers: CancellationToken::new(),
        routes: Vec::new(),
        admin_routes: Arc::new(arc_swap::ArcSwap::from_pointee(Vec::new())),
        workers,
        shutdown: shutdown.clone(),
        unix_files: Vec::new(),
        config,
    };
    for rc in &proxy.config.routes {
        proxy.unix_files.extend(unix_file_of(&rc.listen));
    }
    let routes: Vec<Arc<route::Route>> = prepared
        .iter()
        .map(|p| route::Route::new(p.config.clone()))
        .collect();
    proxy.admin_routes.store(Arc::new(routes.clone()));
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
                    routes: proxy.admin_routes.clone(),
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
    for (route, p) in routes.into_iter().zip(prepared) {
        let running = proxy.launch(route, p);
        proxy.routes.push(running);
    }
    for result in ["ok", "error"] {
        counter!(m::CONFIG_RELOADS, "result" => result).increment(0);
    }
    gauge!(m::CONFIG_LAST_RELOAD_SUCCESS).set(route::unix_now());
    notify::ready(&proxy.status_line());
    if let Some(interval) = notify::watchdog_interval() {
        info!(interval = %humantime::format_duration(interval), "systemd watchdog enabled");
        tokio::spawn(notify::watchdog(interval, proxy.stop_watchers.clone()));
    }

    loop {
        tokio::select! {
            _ = shutdown.drain.cancelled() => break,
            Some(c) = controls.requests.recv() => match c {
                Control::Reload => {
                    notify::reloading();
                    proxy.reload(&controls).await;
                    notify::ready(&proxy.status_line());
                }
                Control::LogStatus => proxy.log_status(),
            },
        }
    }

    notify::stopping();
    let Proxy {
        tasks,
        stop_watchers,
        workers,
        config,
        routes,
        unix_files,
        ..
    } = proxy;
    // The listening sockets close as the accept loops end: this process's own copies too.
    drop(routes);
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

/// The socket file a Unix listen address created, with its inode, to remove at exit if it is
/// still ours.
fn unix_file_of(listen: &ListenAddr) -> Option<(std::path::PathBuf, u64)> {
    use std::os::unix::fs::MetadataExt;
    match listen {
        ListenAddr::Unix { path, .. } => {
            let ino = std::fs::symlink_metadata(path).ok()?.ino();
            Some((path.clone(), ino))
        }
        ListenAddr::Tcp(_) => None,
    }
}

/// A route's listening socket outside any event loop, kept so a reload can reuse it or change
/// its backlog.
enum RouteSocket {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

impl RouteSocket {
    fn from_listener(l: RouteListener) -> io::Result<RouteSocket> {
        Ok(match l {
            RouteListener::Tcp(l) => RouteSocket::Tcp(l.into_std()?),
            RouteListener::Unix(l) => RouteSocket::Unix(l.into_std()?),
        })
    }

    fn try_clone(&self) -> io::Result<RouteSocket> {
        Ok(match self {
            RouteSocket::Tcp(l) => RouteSocket::Tcp(l.try_clone()?),
            RouteSocket::Unix(l) => RouteSocket::Unix(l.try_clone()?),
        })
    }

    /// Linux takes a second listen() on a listening socket as a new backlog.
    fn set_backlog(&self, backlog: i32) {
        let backlog = backlog.clamp(128, 65_535);
        let _ = match self {
            RouteSocket::Tcp(l) => socket2::SockRef::from(l).listen(backlog),
            RouteSocket::Unix(l) => socket2::SockRef::from(l).listen(backlog),
        };
    }
}

/// A route's socket and its per-thread descriptors, ready to launch (nothing runs yet).
struct Prepared {
    config: config::RouteConfig,
    /// The socket itself, kept so a reload can reuse it or change its backlog.
    socket: RouteSocket,
    fds: Vec<RouteListener>,
}

impl Prepared {
    fn new(
        config: config::RouteConfig,
        socket: RouteSocket,
        workers: &Workers,
    ) -> io::Result<Prepared> {
        let fds = share_listener(&socket, workers)?;
        Ok(Prepared {
            config,
            socket,
            fds,
        })
    }
}

/// One running route: what is needed to change or stop it.
struct RunningRoute {
    route: Arc<route::Route>,
    socket: RouteSocket,
    /// The route's own stop: `drain` ends its accept loops and releases its held clients.
    stop: Shutdown,
    /// Its accept loops.
    accepts: TaskTracker,
    watcher_stop: CancellationToken,
    watcher: tokio::task::JoinHandle<()>,
}

/// The running proxy, as the control loop changes it.
struct Proxy {
    /// Accept loops and sessions of every route (shutdown waits for them).
    tasks: TaskTracker,
    stop_watchers: CancellationToken,
    routes: Vec<RunningRoute>,
    admin_routes: admin::Routes,
    workers: Workers,
    shutdown: Shutdown,
    /// Unix socket files this process created, removed at exit if still the same file.
    unix_files: Vec<(std::path::PathBuf, u64)>,
    /// The configuration in force.
    config: Config,
}

impl Proxy {
    /// Starts the watcher and the accept loops of a prepared route.
    fn launch(&self, route: Arc<route::Route>, p: Prepared) -> RunningRoute {
        let addr = p.fds[0].local_addr();
        info!(
            route = route.name(),
            listen = %addr,
            master = %p.config.master_name,
            sentinels = ?p.config.sentinel.addresses,
            "route listening"
        );
        let watcher_stop = self.stop_watchers.child_token();
        let watcher = tokio::spawn(sentinel::watch(route.clone(), watcher_stop.clone()));
        let stop = Shutdown {
            drain: self.shutdown.drain.child_token(),
            close: self.shutdown.close.child_token(),
        };
        let accepts = TaskTracker::new();
        for (thread, fd) in p.fds.into_iter().enumerate() {
            self.tasks.spawn_on(
                accepts.track_future(proxy::listener::serve(
                    fd,
                    route.clone(),
                    self.workers.turns(),
                    thread,
                    self.tasks.clone(),
                    stop.clone(),
                )),
                self.workers.handle(thread),
            );
        }
        accepts.close();
        RunningRoute {
            route,
            socket: p.socket,
            stop,
            accepts,
            watcher_stop,
            watcher,
        }
    }

    /// `STATUS=` text for systemd: how many routes have a usable master.
    fn status_line(&self) -> String {
        let routing = self
            .routes
            .iter()
            .filter(|r| r.route.current().is_some_and(|m| m.is_trusted()))
            .count();
        format!("routing {routing}/{} routes", self.routes.len())
    }

    /// Logs the `/status` document as one line of JSON (SIGUSR1).
    fn log_status(&self) {
        let doc = status::StatusDoc::of(
            self.routes.iter().map(|r| &r.route),
            self.shutdown.drain.is_cancelled(),
        );
        match serde_json::to_string(&doc) {
            Ok(json) => info!(status = %json, "status (SIGUSR1)"),
            Err(e) => warn!(error = %e, "cannot render the status"),
        }
        notify::status(&self.status_line());
    }

    /// Loads the configuration again and applies it, or rejects it with one error line and
    /// keeps the running one.
    async fn reload(&mut self, controls: &Controls) {
        let source = controls.source.as_str();
        let Some(load) = controls.load.clone() else {
            return;
        };
        // File reads, TLS material and name checks: off the control runtime.
        let loaded = match tokio::task::spawn_blocking(move || load()).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(format!("loading failed: {e}")),
        };
        let outcome = match loaded {
            Ok(new) => self.apply(new, source).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => {
                counter!(m::CONFIG_RELOADS, "result" => "ok").increment(1);
                gauge!(m::CONFIG_LAST_RELOAD_SUCCESS).set(route::unix_now());
            }
            Err(reason) => {
                counter!(m::CONFIG_RELOADS, "result" => "error").increment(1);
                error!(file = %source, error = %reason, "configuration reload rejected; the running configuration stays");
            }
        }
    }

    /// Applies a loaded configuration: first everything that can fail (new sockets), then the
    /// changes, which cannot.
    async fn apply(&mut self, new: Config, source: &str) -> Result<(), String> {
        let plan = reload::plan(&self.config, &new);
        let new = reload::effective(&self.config, new);
        // Sockets for added routes: a removed route's socket on the same address is taken
        // over (clients queued in it are served by the new route), any other is bound now.
        let mut prepared = Vec::with_capacity(plan.added.len());
        for name in &plan.added {
            let Some(rc) = new.routes.iter().find(|r| &r.name == name) else {
                continue;
            };
            let reused = self
                .routes
                .iter()
                .filter(|r| plan.removed.iter().any(|n| n == r.route.name()))
                .find(|r| r.route.config().listen.same_socket(&rc.listen));
            let socket = match reused {
                Some(r) => r.socket.try_clone().map_err(|e| {
                    format!(
                        "route {name}: cannot reuse the socket of {}: {e}",
                        rc.listen
                    )
                })?,
                None => {
                    let socket = bind_route(rc)
                        .and_then(|l| {
                            RouteSocket::from_listener(l).map_err(|source| BindError {
                                addr: rc.listen.to_string(),
                                what: format!("route {name}"),
                                source,
                            })
                        })
                        .map_err(|e| e.to_string())?;
                    self.unix_files.extend(unix_file_of(&rc.listen));
                    socket
                }
            };
            let p = Prepared::new(rc.clone(), socket, &self.workers).map_err(|e| {
                format!(
                    "route {name}: cannot share the listening socket with the session threads: {e}"
                )
            })?;
            prepared.push(p);
        }
        // From here on nothing fails.
        if !plan.needs_restart.is_empty() {
            warn!(file = %source, settings = %plan.needs_restart.join("; "), "configuration reload: a changed setting needs a restart; it keeps its running value");
        }
        for w in new.warnings() {
            warn!(warning = %w, "configuration");
        }
        let mut removed_sessions = 0;
        for name in &plan.removed {
            let Some(i) = self.routes.iter().position(|r| r.route.name() == name) else {
                continue;
            };
            let r = self.routes.remove(i);
            removed_sessions += r.route.open_clients();
            stop_route(r).await;
        }
        for change in &plan.changed {
            let (Some(r), Some(rc)) = (
                self.routes.iter().find(|r| r.route.name() == change.name),
                new.routes.iter().find(|r| r.name == change.name),
            ) else {
                continue;
            };
            if change.keys.contains(&"listen_mode") {
                if let ListenAddr::Unix { path, mode } = &rc.listen {
                    use std::os::unix::fs::PermissionsExt;
                    let perms = std::fs::Permissions::from_mode(*mode);
                    if let Err(e) = std::fs::set_permissions(path, perms) {
                        warn!(route = %change.name, path = %path.display(), error = %e, "configuration reload: cannot change the socket's mode; it keeps the old one");
                    }
                }
            }
            if change.keys.contains(&"max_connections") {
                r.socket
                    .set_backlog(i32::try_from(rc.max_connections).unwrap_or(i32::MAX));
            }
            r.route.reconfigure(rc.clone());
        }
        for name in &plan.kept {
            if let (Some(r), Some(rc)) = (
                self.routes.iter().find(|r| r.route.name() == name),
                new.routes.iter().find(|r| &r.name == name),
            ) {
                // Equal settings; certificate files were read again, and new clients get them.
                r.route.reconfigure(rc.clone());
            }
        }
        for p in prepared {
            let route = route::Route::new(p.config.clone());
            let running = self.launch(route, p);
            self.routes.push(running);
        }
        // Keep the file's order.
        self.routes.sort_by_key(|r| {
            new.routes
                .iter()
                .position(|c| c.name == r.route.name())
                .unwrap_or(usize::MAX)
        });
        self.admin_routes.store(Arc::new(
            self.routes.iter().map(|r| r.route.clone()).collect(),
        ));
        info!(
            file = %source,
            kept = plan.kept.len(),
            changed = plan.changed.len(),
            added = plan.added.len(),
            removed = plan.removed.len(),
            removed_sessions,
            routes = %reload::summary(&plan),
            "configuration reloaded"
        );
        self.config = new;
        Ok(())
    }
}

/// Stops a removed route: no more accepts, its held clients released, its watcher stopped
/// (and waited for: the master state keeps one writer), then its sessions closed.
async fn stop_route(r: RunningRoute) {
    r.stop.drain.cancel();
    r.accepts.wait().await;
    r.watcher_stop.cancel();
    let _ = r.watcher.await;
    let sessions = r.route.open_clients();
    r.route.retire();
    info!(
        route = r.route.name(),
        sessions, "route removed by a reload; its sessions are closed"
    );
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
fn share_listener(socket: &RouteSocket, workers: &Workers) -> io::Result<Vec<RouteListener>> {
    (0..workers.len())
        .map(|thread| {
            let fd = socket.try_clone()?;
            // Registers with the runtime entered here: the session thread's.
            let _in_thread = workers.handle(thread).enter();
            Ok(match fd {
                RouteSocket::Tcp(l) => RouteListener::Tcp(TcpListener::from_std(l)?),
                RouteSocket::Unix(l) => RouteListener::Unix(tokio::net::UnixListener::from_std(l)?),
            })
        })
        .collect()
}
