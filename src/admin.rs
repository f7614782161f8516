//! The admin HTTP server: `/metrics` (Prometheus text, with the process metrics read at each
//! scrape), `/healthz` (the process serves),
//! `/readyz` (200 only while every route has a verified master and shutdown has not begun),
//! `/status` (JSON), and at `/` the same status as an HTML page ([`crate::status_page`]). It
//! only reads route state.
//!
//! It owns one OS thread with its own single-threaded runtime ([`AdminServer`]), run at a
//! lower CPU priority: whatever its clients do (a scrape flood, a slowloris, thousands of idle
//! connections) costs that thread and at most [`MAX_CONNECTIONS`] descriptors, never a turn
//! of the control runtime (the watchers) or of a session thread. Invariant: at most [`MAX_CONNECTIONS`] connections are
//! open, each is closed [`HEADER_READ_TIMEOUT`] after it last began waiting for a request head
//! without receiving one whole, and none lives longer than [`MAX_CONNECTION_AGE`] plus
//! [`CLOSE_GRACE`]. Connections over the cap are closed at once and counted in
//! [`ADMIN_CONNECTIONS_REJECTED`](crate::metrics::ADMIN_CONNECTIONS_REJECTED). Request bodies are
//! never read (no handler asks for one; hyper discards at most what arrived with the head, and
//! closes the connection after the answer if more is due).

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use metrics::counter;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::metrics as m;
use crate::proxy::listener::{is_per_connection, is_resource_errno};
use crate::route::Route;
use crate::status::{self as view, RouteView, StatusDoc};

/// Connections open at once. A scraper or two, the kubelet's probes and a human with curl
/// need a handful; 32 leaves room for all of them and bounds what the admin server can take
/// from the process's descriptor table (the routes and the watchers need the rest).
pub const MAX_CONNECTIONS: usize = 32;

/// How long a connection may take to send a whole request head, counted from when the server
/// starts waiting for one: on a new connection and after each response on a kept-alive one
/// (hyper runs this timer whenever it waits for a head), so it is also the idle keep-alive
/// bound. A scraper sends its request within milliseconds of connecting; a slow loris that
/// trickles its head is closed after this. Prometheus re-connecting each scrape costs nothing.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection's whole life: ends a client that asks and then never reads the answer (hyper
/// would wait on the write for ever) or keeps asking to hold its slot. Far above any sane
/// exchange (rendering `/metrics` takes milliseconds).
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(30);

/// After [`MAX_CONNECTION_AGE`], or when the server stops, an idle connection is closed at
/// once and a response in flight gets this long to finish before the connection is dropped.
/// Also bounds how long stopping the server can take.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// hyper's read buffer per connection (its default is about 400 KiB; the minimum is 8 KiB).
/// Admin requests are a request line and a few headers; a larger head is refused (431).
const MAX_BUF: usize = 16 * 1024;

/// Longest pause after accept errors that are not about one connection (EMFILE: the pending
/// connection stays queued, so retrying at once would spin).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// How much nicer than the rest of the process the admin thread runs (Linux, where nice is
/// per thread). Its own thread keeps admin work from queueing before the watchers' and the
/// sessions'; this keeps it from taking their CPU when the cores are busy (a scrape flood kept
/// the admin thread at about 80 % of a core on a 2-core machine). At +10 it still gets about a
/// tenth of a core against each busy thread, plenty for scrapes and probes (a `/metrics`
/// render takes about a millisecond).
const NICER_BY: i32 = 10;

/// The routes of the process as the admin server sees them: replaced as a whole by a reload.
pub type Routes = Arc<arc_swap::ArcSwap<Vec<Arc<Route>>>>;

/// What the admin handlers read.
#[derive(Clone)]
pub struct AdminState {
    /// Every route of the process; a reload replaces the list.
    pub routes: Routes,
    /// Renders `/metrics`; `None` when another recorder is installed.
    pub metrics: Option<PrometheusHandle>,
    /// Cancelled when shutdown begins (readiness turns false).
    pub draining: CancellationToken,
}

/// The admin server running on its own thread. A caller that wants no admin server simply
/// does not start one. [`AdminServer::stop`] stops it and waits (bounded); dropping this stops
/// it without waiting.
#[derive(Debug)]
pub struct AdminServer {
    stop: CancellationToken,
    /// Fires (or errs) when the thread has dropped its runtime and with it every connection.
    exited: Option<oneshot::Receiver<()>>,
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl AdminServer {
    /// Starts the thread `admin` serving the admin endpoints on `listener` (bound on any
    /// runtime; it is moved to the admin thread's). Fails only if the thread or its runtime
    /// cannot be started or the socket cannot be moved, before anything is served.
    pub fn start(listener: TcpListener, state: AdminState) -> io::Result<AdminServer> {
        // Leaves the caller's event loop; registered again with the admin thread's below.
        let listener = listener.into_std()?;
        let stop = CancellationToken::new();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<()>>();
        let (exited_tx, exited_rx) = oneshot::channel::<()>();
        let stop_thread = stop.clone();
        std::thread::Builder::new()
            .name("admin".to_string())
            .spawn(move || {
                lower_priority();
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let listener = {
                    let _in_thread = rt.enter();
                    match TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    }
                };
                if ready_tx.send(Ok(())).is_err() {
                    return;
                }
                rt.block_on(serve(listener, state, stop_thread));
                // Whatever connection outlived the grace is dropped (closed) with the runtime;
                // nothing here runs on blocking threads, so this does not wait.
                drop(rt);
                let _ = exited_tx.send(());
            })?;
        ready_rx
            .recv()
            .map_err(|_| io::Error::other("admin thread exited at start"))??;
        Ok(AdminServer {
            stop,
            exited: Some(exited_rx),
        })
    }

    /// Stops accepting, closes idle connections, gives responses in flight [`CLOSE_GRACE`],
    /// and waits at most `timeout` for the thread to finish (a thread still running after that
    /// is left to the process's exit).
    pub async fn stop(mut self, timeout: Duration) {
        self.stop.cancel();
        let Some(exited) = self.exited.take() else {
            return;
        };
        if tokio::time::timeout(timeout, exited).await.is_err() {
            warn!(
                timeout = %humantime::format_duration(timeout),
                "admin server did not stop in time"
            );
        }
    }
}

/// Makes the calling thread [`NICER_BY`] nicer (at most 19); a failure (a sandbox refusing
/// `setpriority`) is logged and otherwise ignored: it costs isolation, not function.
#[cfg(target_os = "linux")]
fn lower_priority() {
    use rustix::process::{getpriority_process, setpriority_process};
    // `None`: the calling thread (Linux keeps the nice value per thread).
    let lowered = getpriority_process(None)
        .and_then(|nice| setpriority_process(None, (nice + NICER_BY).min(19)));
    if let Err(e) = lowered {
        warn!(error = %e, "cannot lower the admin thread's priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

/// Serves the admin endpoints on `listener` until `stop`, within the bounds in the module
/// doc, on the runtime it is polled on ([`AdminServer::start`] gives it a thread of its own).
/// Returns about [`CLOSE_GRACE`] after `stop` at most; connections still open then are dropped
/// with their tasks when the runtime is.
pub async fn serve(listener: TcpListener, state: AdminState, stop: CancellationToken) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/", get(page))
        .route(crate::status_page::CSS_PATH, get(css))
        .with_state(state);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_BUF);
    // Registered (at 0) before the first rejection, so a dashboard sees the series from start.
    let rejected = counter!(m::ADMIN_CONNECTIONS_REJECTED);
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let tasks = TaskTracker::new();
    let mut backoff = Duration::ZERO;
    let mut last_log: Option<Instant> = None;
    let mut suppressed = 0u64;
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(c) => {
                backoff = Duration::ZERO;
                c
            }
            Err(e) => {
                let fd_limit = e.raw_os_error().is_some_and(is_resource_errno);
                if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    error!(error = %e, fd_limit, suppressed, "admin accept failed; backing off");
                    last_log = Some(Instant::now());
                    suppressed = 0;
                } else {
                    suppressed += 1;
                }
                if fd_limit || !is_per_connection(&e) {
                    backoff = (backoff * 2).clamp(Duration::from_millis(5), MAX_ACCEPT_BACKOFF);
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                }
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            rejected.increment(1);
            debug!(client.addr = %peer, "admin connection limit reached; closing");
            drop(stream);
            continue;
        };
        tasks.spawn(connection(&http, stream, app.clone(), permit, stop.clone()));
    }
    // No more accepts: new connections are refused by the kernel from here on.
    drop(listener);
    tasks.close();
    if tokio::time::timeout(CLOSE_GRACE + Duration::from_millis(100), tasks.wait())
        .await
        .is_err()
    {
        info!(
            connections = tasks.len(),
            "admin connections still open at stop; dropping them"
        );
    }
}

/// One admin connection, holding its slot (`permit`) until it ends: served until the client
/// closes it, the header timeout ends it, it reaches [`MAX_CONNECTION_AGE`], or `stop`.
fn connection(
    http: &http1::Builder,
    stream: TcpStream,
    app: Router,
    permit: OwnedSemaphorePermit,
    stop: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let conn = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    async move {
        let _slot = permit;
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!(error = %e, timeout = e.is_timeout(), "admin connection ended");
                }
                return;
            }
            _ = tokio::time::sleep(MAX_CONNECTION_AGE) => {
                debug!("admin connection reached its maximum age; closing");
            }
            _ = stop.cancelled() => {}
        }
        // An idle connection closes now; a response being written gets the grace.
        conn.as_mut().graceful_shutdown();
        if tokio::time::timeout(CLOSE_GRACE, conn).await.is_err() {
            debug!("admin connection did not finish within the grace; dropping it");
        }
    }
}

async fn metrics(State(s): State<AdminState>) -> Response {
    match &s.metrics {
        Some(h) => {
            let masters: Vec<(String, std::net::SocketAddr)> = s
                .routes
                .load()
                .iter()
                .filter_map(|r| r.current().map(|m| (r.name().to_string(), m.addr)))
                .collect();
            let mut body = h.render();
            body.push_str(&crate::metrics::master_info(&masters));
            body.push_str(&crate::metrics::process_metrics());
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
        }
        None => (StatusCode::NOT_FOUND, "metrics recorder not installed\n").into_response(),
    }
}

async fn readyz(State(s): State<AdminState>) -> Response {
    let views: Vec<RouteView> = s.routes.load().iter().map(|r| RouteView::of(r)).collect();
    let (ready, body) = view::readiness(s.draining.is_cancelled(), &views);
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body).into_response()
}

/// The `/status` document now: the one source of `/status` and the page at `/`.
fn status_doc(s: &AdminState) -> StatusDoc {
    StatusDoc::of(s.routes.load().iter(), s.draining.is_cancelled())
}

async fn status(State(s): State<AdminState>) -> Response {
    axum::Json(status_doc(&s)).into_response()
}

/// Headers of the status page and its stylesheet: nothing but themselves may load.
fn page_headers(content_type: &'static str) -> [(header::HeaderName, &'static str); 5] {
    [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, crate::status_page::CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
    ]
}

async fn page(State(s): State<AdminState>) -> Response {
    let body = crate::status_page::render(&status_doc(&s), crate::route::unix_now());
    (page_headers("text/html; charset=utf-8"), body).into_response()
}

async fn css() -> Response {
    (
        page_headers("text/css; charset=utf-8"),
        crate::status_page::CSS,
    )
        .into_response()
}
