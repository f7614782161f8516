//! Per-route master state: the only shared mutable state of the proxy.
//!
//! The watcher is the single writer: it installs a verified [`Master`] (a new epoch) or fences
//! the current one. The accept path only reads, lock-free, through [`Route::current`]. Fencing
//! stores "no master" first and then cancels the old epoch's token, so a session that loads the
//! master after the fence never sees the old one, and one that loaded it before sees the token
//! cancelled.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use metrics::{counter, gauge, Counter, Gauge};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::RouteConfig;
use crate::metrics::{self as m, Closed, FenceReason};
pub use crate::status::{FenceRecord, History, HistoryEntry, Observed, SentinelStatus};

/// The verified master of one epoch.
#[derive(Debug)]
pub struct Master {
    /// The resolved address that passed `ROLE` = master; sessions connect exactly here.
    pub addr: SocketAddr,
    /// The address as the sentinels name it (`ip:port` or `host:port`).
    pub announced: String,
    /// Our local epoch number.
    pub epoch: u64,
    /// The sentinels' config-epoch when it was verified.
    pub config_epoch: u64,
    /// When it was verified (wall clock, for /status).
    pub verified_at: SystemTime,
    token: CancellationToken,
    sessions: TaskTracker,
    health: watch::Sender<Health>,
    /// `master_verified` of the route: 0 while this master is not trusted.
    verified: Gauge,
}

/// What is known about a master's process since it was verified: a refused connect means it may
/// have restarted as something else (a replica, an empty master), so it is not connected to
/// again until a `ROLE` check that started after the failure says master.
#[derive(Debug, Clone, Copy)]
struct Health {
    /// Start of the latest `ROLE` check that answered master.
    confirmed: Instant,
    /// The latest failed connect, if any.
    failed: Option<Instant>,
}

impl Health {
    fn trusted(&self) -> bool {
        self.failed.is_none_or(|f| self.confirmed > f)
    }
}

impl Master {
    /// Cancelled when this epoch ends; every session of the epoch selects on it.
    pub fn fenced(&self) -> &CancellationToken {
        &self.token
    }

    /// Registers a session with this epoch; the epoch's fence waits for every guard to drop.
    pub fn session_guard(&self) -> tokio_util::task::task_tracker::TaskTrackerToken {
        self.sessions.token()
    }

    /// Sessions of this epoch still open.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Records that a `ROLE` check started at `checked` found this master still a master
    /// (watcher only).
    pub fn confirm(&self, checked: Instant) {
        self.health.send_if_modified(|h| {
            let newer = checked > h.confirmed;
            if newer {
                h.confirmed = checked;
            }
            newer
        });
        self.show_trust();
    }

    /// Records a failure of the master itself (a refused connect, a refused `ROLE` check): new
    /// connects wait for the next confirmation, and the route reports it as not verified.
    pub fn connect_failed(&self, at: Instant) {
        self.health
            .send_modify(|h| h.failed = Some(h.failed.map_or(at, |f| f.max(at))));
        self.show_trust();
    }

    /// `master_verified` follows trust while this epoch lasts (a fence sets it to 0 itself).
    fn show_trust(&self) {
        if !self.token.is_cancelled() {
            self.verified.set(if self.is_trusted() { 1.0 } else { 0.0 });
        }
    }

    /// Whether no connect failed since the last confirmation.
    pub fn is_trusted(&self) -> bool {
        self.health.borrow().trusted()
    }

    /// Resolves at once unless a connect failed since the last confirmation; then when a
    /// `ROLE` check started after that failure confirms this master.
    pub async fn trusted(&self) {
        if self.health.borrow().trusted() {
            return;
        }
        let mut rx = self.health.subscribe();
        // The sender lives as long as `self`, so this only ends when the condition holds.
        let _ = rx.wait_for(Health::trusted).await;
    }
}

/// Pre-resolved metric handles of one route, so the hot path does no label lookups.
#[derive(Debug)]
pub struct RouteMetrics {
    /// Bytes client -> master.
    pub bytes_client_to_master: Counter,
    /// Bytes master -> client.
    pub bytes_master_to_client: Counter,
    /// Accepted connections.
    pub accepted: Counter,
    /// Open client connections.
    pub active: Gauge,
    /// Held client connections.
    pub held: Gauge,
    /// Sessions closed, indexed by [`Closed::index`].
    pub closed: [Counter; Closed::ALL.len()],
}

/// One route: its configuration, its master state and the notifier held clients wait on.
#[derive(Debug)]
pub struct Route {
    /// The route's configuration; a reload replaces it ([`Route::reconfigure`]), keeping the
    /// name, master name and listen address, which identify the route.
    config: ArcSwap<RouteConfig>,
    name: String,
    /// Metric handles labelled with this route.
    pub metrics: RouteMetrics,
    /// Signalled when a reload replaced the configuration (the watcher re-reads it).
    reconfigured: Notify,
    /// Clients admitted against `max_connections` and not yet gone.
    admitted: AtomicUsize,
    /// Set once a reload removed the route.
    retired: AtomicBool,
    master: ArcSwapOption<Master>,
    last_epoch: AtomicU64,
    changed: Notify,
    recheck: Notify,
    open_clients: AtomicUsize,
    held_clients: AtomicUsize,
    /// What the route reports beside its master (sentinels, majority, node error, fences and
    /// history), for `/status`, `/readyz` and the status page.
    pub observed: Observed,
    /// Connects to the master in flight at once (see [`MAX_CONNECTING`]).
    pub connecting: tokio::sync::Semaphore,
}

/// Connects to the master a route has in flight at once: enough to keep a reconnect storm
/// moving, few enough that it does not overflow a master's listen queue (Redis's default
/// `tcp-backlog` is 511).
pub const MAX_CONNECTING: usize = 256;

/// Seconds since the Unix epoch, as a float (0 if the clock is before 1970).
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Route {
    /// A route with no master yet.
    pub fn new(config: RouteConfig) -> Arc<Route> {
        let name = config.name.clone();
        let metrics = RouteMetrics {
            bytes_client_to_master: counter!(m::BYTES, "route" => name.clone(), "direction" => "client_to_master"),
            bytes_master_to_client: counter!(m::BYTES, "route" => name.clone(), "direction" => "master_to_client"),
            accepted: counter!(m::CONNECTIONS_ACCEPTED, "route" => name.clone()),
            active: gauge!(m::CONNECTIONS_ACTIVE, "route" => name.clone()),
            held: gauge!(m::CONNECTIONS_HELD, "route" => name.clone()),
            closed: Closed::ALL.map(
                |r| counter!(m::SESSIONS_CLOSED, "route" => name.clone(), "reason" => r.as_str()),
            ),
        };
        // Every series of the route, each label value at 0, from now on (also for a route
        // added at runtime).
        m::register_route(&name, &config.sentinel.addresses);
        let sentinels = sentinel_slots(&name, &config);
        Arc::new(Route {
            config: ArcSwap::from_pointee(config),
            name,
            metrics,
            reconfigured: Notify::new(),
            admitted: AtomicUsize::new(0),
            retired: AtomicBool::new(false),
            master: ArcSwapOption::empty(),
            last_epoch: AtomicU64::new(0),
            changed: Notify::new(),
            recheck: Notify::new(),
            open_clients: AtomicUsize::new(0),
            held_clients: AtomicUsize::new(0),
            observed: Observed::new(sentinels),
            connecting: tokio::sync::Semaphore::new(MAX_CONNECTING),
        })
    }

    /// The route's name (metric label).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The route's current configuration. A session takes it once, when it is accepted; the
    /// watcher at each use.
    pub fn config(&self) -> Arc<RouteConfig> {
        self.config.load_full()
    }

    /// Replaces the configuration (a reload): new clients get the new limits and timeouts at
    /// once; the watcher is told, and picks up a changed sentinel list or sentinel settings
    /// between two rounds. The master state is untouched. `config` must keep the route's
    /// name, master name and listen address (otherwise the reload replaces the route).
    pub fn reconfigure(&self, config: RouteConfig) {
        debug_assert_eq!(config.name, self.name);
        let old = self.config.load_full();
        // Only a change the watcher caches interrupts it (it abandons a round in progress).
        let tell_watcher = crate::reload::route_changes(&old, &config)
            .iter()
            .any(|k| k.starts_with("sentinel"))
            || !crate::reload::same_loaded_tls(
                &old.sentinel.access.tls,
                &config.sentinel.access.tls,
            );
        self.config.store(Arc::new(config));
        if tell_watcher {
            self.reconfigured.notify_one();
        }
    }

    /// Starts the per-sentinel status over for the current sentinel list (watcher only, once
    /// the old list's subscriptions have stopped).
    pub fn reset_sentinels(&self) {
        let config = self.config();
        self.observed
            .replace_sentinels(sentinel_slots(&self.name, &config));
    }

    /// Resolves when a reload replaced the configuration (watcher only).
    pub async fn reconfigured(&self) {
        self.reconfigured.notified().await;
    }

    /// Admits one more client if fewer than `max_connections` (read now) are open; the
    /// admission ends when the returned guard drops.
    pub fn try_admit(self: &Arc<Self>) -> Option<Admission> {
        let max = self.config.load().max_connections;
        self.admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Admission(self.clone()))
    }

    /// Ends the route for good (a reload removed it; its watcher has already stopped, so this
    /// is the master state's last write): no master from now on, and the current epoch's
    /// sessions close (they report [`Closed::RouteRemoved`]).
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        if let Some(old) = self.master.swap(None) {
            old.token.cancel();
            old.sessions.close();
        }
        gauge!(m::MASTER_VERIFIED, "route" => self.name().to_string()).set(0.0);
        self.changed.notify_waiters();
    }

    /// Whether a reload removed the route.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// The current verified master, if any and not fenced.
    pub fn current(&self) -> Option<Arc<Master>> {
        self.master.load_full().filter(|m| !m.token.is_cancelled())
    }

    /// Waits until a master is installed or `deadline` passes.
    pub async fn wait_for_master(&self, deadline: tokio::time::Instant) -> Option<Arc<Master>> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Register interest before looking, so an install between the look and the wait
            // is not missed.
            notified.as_mut().enable();
            if let Some(m) = self.current() {
                return Some(m);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    /// Waits until the route's master state changes (install or fence).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Asks the watcher to check the master soon (a session could not connect to it).
    pub fn request_recheck(&self) {
        self.recheck.notify_one();
    }

    /// Resolves when a session has asked for a check (watcher only).
    pub async fn recheck_requested(&self) {
        self.recheck.notified().await;
    }

    /// Installs a newly verified master as a new epoch (watcher only). Any previous master
    /// must have been fenced first; if not, it is fenced here.
    pub fn install(&self, addr: SocketAddr, announced: String, config_epoch: u64) -> Arc<Master> {
        let epoch = self.last_epoch.fetch_add(1, Ordering::Relaxed) + 1;
        let master = Arc::new(Master {
            addr,
            announced,
            epoch,
            config_epoch,
            verified_at: SystemTime::now(),
            token: CancellationToken::new(),
            sessions: TaskTracker::new(),
            health: watch::Sender::new(Health {
                confirmed: Instant::now(),
                failed: None,
            }),
            verified: gauge!(m::MASTER_VERIFIED, "route" => self.name().to_string()),
        });
        let old = self.master.swap(Some(master.clone()));
        if let Some(old) = old {
            old.token.cancel();
            old.sessions.close();
        }
        self.observed
            .record_switch(unix_now(), epoch, master.addr.to_string());
        let route = self.name().to_string();
        gauge!(m::EPOCH, "route" => route.clone()).set(epoch as f64);
        gauge!(m::MASTER_VERIFIED, "route" => route.clone()).set(1.0);
        counter!(m::MASTER_SWITCHES, "route" => route).increment(1);
        self.changed.notify_waiters();
        master
    }

    /// Ends the current epoch (watcher only): no master is routed to until the next install.
    /// Returns the fenced master so the caller can wait for its sessions to close.
    pub fn fence(&self, reason: FenceReason) -> Option<Arc<Master>> {
        let old = self.master.swap(None)?;
        // Counted before the cancel: sessions on other threads start closing at once.
        let open = old.sessions() as u64;
        old.token.cancel();
        old.sessions.close();
        self.observed.record_fence(
            unix_now(),
            old.epoch,
            old.addr.to_string(),
            reason.as_str(),
            open,
        );
        gauge!(m::MASTER_VERIFIED, "route" => self.name().to_string()).set(0.0);
        self.changed.notify_waiters();
        Some(old)
    }

    /// Client connections open (held or in a session).
    pub fn open_clients(&self) -> usize {
        self.open_clients.load(Ordering::Relaxed)
    }

    /// Client connections held waiting for a master.
    pub fn held_clients(&self) -> usize {
        self.held_clients.load(Ordering::Relaxed)
    }
}

/// The per-sentinel status slots of `config` (and the `sentinels_configured` gauge).
fn sentinel_slots(route: &str, config: &RouteConfig) -> Vec<SentinelStatus> {
    m::register_sentinels(route, &config.sentinel.addresses);
    config
        .sentinel
        .addresses
        .iter()
        .map(|a| SentinelStatus {
            address: a.clone(),
            ..Default::default()
        })
        .collect()
}

/// One client admitted against the route's `max_connections`, for as long as it lives.
#[derive(Debug)]
pub struct Admission(Arc<Route>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Waits for every session of a fenced epoch to close and returns how long that took from
/// `since` (the moment evidence arrived).
pub async fn drained(master: &Master, since: Instant) -> std::time::Duration {
    master.sessions.wait().await;
    since.elapsed()
}

/// Counts one open client connection for as long as it lives.
pub struct ClientGuard<'a>(&'a Route);

impl<'a> ClientGuard<'a> {
    /// Counts a new client of `route`.
    pub fn new(route: &'a Route) -> Self {
        route.open_clients.fetch_add(1, Ordering::Relaxed);
        route.metrics.active.increment(1.0);
        ClientGuard(route)
    }
}

impl Drop for ClientGuard<'_> {
    fn drop(&mut self) {
        self.0.open_clients.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.active.decrement(1.0);
    }
}

/// Counts one held client for as long as it is held.
pub struct HeldGuard<'a>(&'a Route);

impl<'a> HeldGuard<'a> {
    /// Counts a newly held client of `route`.
    pub fn new(route: &'a Route) -> Self {
        route.held_clients.fetch_add(1, Ordering::Relaxed);
        route.metrics.held.increment(1.0);
        HeldGuard(route)
    }

    /// Ends the hold, recording its outcome (`routed`, `timed_out`, `client_closed`, `shutdown`).
    pub fn finish(self, outcome: &'static str, waited: std::time::Duration) {
        metrics::counter!(m::HOLDS, "route" => self.0.name().to_string(), "outcome" => outcome)
            .increment(1);
        metrics::histogram!(m::HOLD_DURATION, "route" => self.0.name().to_string())
            .record(waited.as_secs_f64());
    }
}

impl Drop for HeldGuard<'_> {
    fn drop(&mut self) {
        self.0.held_clients.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.held.decrement(1.0);
    }
}
