//! What `/status` and `/readyz` report: a snapshot of each route ([`RouteView`]) and the
//! readiness rule over snapshots ([`readiness`], pure and table-tested), so the endpoints say
//! what the proxy does: a route whose master refuses connections is not ready, whatever the
//! sentinels still say.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::UNIX_EPOCH;

use serde::Serialize;

use crate::route::Route;

/// What the watcher last learned from one sentinel, for /status.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SentinelStatus {
    /// Address as configured.
    pub address: String,
    /// Whether the last query succeeded.
    pub reachable: bool,
    /// Master address it named at the last successful query.
    pub master: Option<String>,
    /// Its config-epoch for the master at the last successful query.
    pub config_epoch: Option<u64>,
    /// Its flags for the master (e.g. `master`, `master,s_down`).
    pub flags: Option<String>,
    /// Other sentinels it knows.
    pub other_sentinels: Option<u64>,
    /// Replicas it knows.
    pub replicas: Option<u64>,
    /// Seconds since the Unix epoch of the last successful query.
    pub last_ok_unix: Option<f64>,
    /// The last error, if the last query failed.
    pub last_error: Option<String>,
    /// Whether the `+switch-master` subscription is established.
    pub subscribed: bool,
    /// Why the subscription is not established (the last failure to subscribe, or how the
    /// last one ended), until it is again.
    pub subscription_error: Option<String>,
}

/// The route's most recent fence, for /status.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FenceRecord {
    /// When (seconds since the Unix epoch).
    pub unix: f64,
    /// Why ([`FenceReason`] label).
    pub reason: &'static str,
    /// The epoch that ended.
    pub epoch: u64,
    /// Its master.
    pub master: String,
}

/// Entries a route's [`History`] keeps (the oldest is dropped beyond this).
pub const HISTORY_LEN: usize = 20;

/// What a [`HistoryEntry`] records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HistoryKind {
    /// A newly verified master was installed (a new epoch).
    Switch,
    /// An epoch ended: its master was no longer trusted.
    Fence,
}

/// One switch or fence of a route, for `/status` and the status page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryEntry {
    /// When (seconds since the Unix epoch).
    pub at_unix: f64,
    /// Switch or fence.
    pub kind: HistoryKind,
    /// Switch: the new epoch; fence: the epoch that ended.
    pub epoch: u64,
    /// Switch: the previous master's address (none for the first); fence: the fenced master.
    pub from: Option<String>,
    /// Switch: the new master's address; fence: none.
    pub to: Option<String>,
    /// Fence: why ([`crate::metrics::FenceReason`] label); switch: none.
    pub reason: Option<String>,
    /// Fence: from the evidence to the last session of the epoch closed, once that happened.
    pub duration_ms: Option<f64>,
    /// Fence: the sessions the fence closed.
    pub sessions: Option<u64>,
}

/// The last [`HISTORY_LEN`] switches and fences of a route, oldest first (a bounded ring;
/// the watcher is its only writer).
#[derive(Debug, Default)]
pub struct History {
    entries: VecDeque<HistoryEntry>,
    /// The address of the latest switch (the next switch's `from`).
    last_master: Option<String>,
}

impl History {
    /// Records a switch to `to` as epoch `epoch`, at `at_unix`.
    pub fn switch(&mut self, at_unix: f64, epoch: u64, to: String) {
        let from = self.last_master.replace(to.clone());
        self.push(HistoryEntry {
            at_unix,
            kind: HistoryKind::Switch,
            epoch,
            from,
            to: Some(to),
            reason: None,
            duration_ms: None,
            sessions: None,
        });
    }

    /// Records the fence of epoch `epoch` (master `from`, `sessions` open), at `at_unix`.
    pub fn fence(&mut self, at_unix: f64, epoch: u64, from: String, reason: &str, sessions: u64) {
        self.push(HistoryEntry {
            at_unix,
            kind: HistoryKind::Fence,
            epoch,
            from: Some(from),
            to: None,
            reason: Some(reason.to_string()),
            duration_ms: None,
            sessions: Some(sessions),
        });
    }

    /// Fills in the duration of epoch `epoch`'s fence once its last session closed (no-op if
    /// that entry has left the ring or already has one).
    pub fn fence_drained(&mut self, epoch: u64, duration_ms: f64) {
        if let Some(e) =
            self.entries.iter_mut().rev().find(|e| {
                e.kind == HistoryKind::Fence && e.epoch == epoch && e.duration_ms.is_none()
            })
        {
            e.duration_ms = Some(duration_ms);
        }
    }

    fn push(&mut self, e: HistoryEntry) {
        if self.entries.len() >= HISTORY_LEN {
            self.entries.pop_front();
        }
        self.entries.push_back(e);
    }

    /// Every entry, newest first.
    pub fn newest_first(&self) -> Vec<HistoryEntry> {
        self.entries.iter().rev().cloned().collect()
    }
}

/// What a route reports beside its master: what each sentinel last said, the watcher's verdict
/// on the sentinel majority, the last failed `ROLE` check, the latest fence and the history of
/// switches and fences. Written by the watcher and the subscriptions, read by `/status`,
/// `/readyz`, the status page and SIGUSR1.
#[derive(Debug)]
pub struct Observed {
    sentinels: Mutex<Vec<SentinelStatus>>,
    sentinel_majority: AtomicBool,
    node_error: Mutex<Option<String>>,
    last_fence: Mutex<Option<FenceRecord>>,
    history: Mutex<History>,
}

/// The value behind a mutex, also after a panic elsewhere poisoned it (status is best effort).
fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Observed {
    /// Nothing observed yet, one slot per configured sentinel.
    pub fn new(sentinels: Vec<SentinelStatus>) -> Observed {
        Observed {
            sentinels: Mutex::new(sentinels),
            sentinel_majority: AtomicBool::new(false),
            node_error: Mutex::new(None),
            last_fence: Mutex::new(None),
            history: Mutex::new(History::default()),
        }
    }

    /// Starts the per-sentinel status over (a reload changed the sentinel list).
    pub fn replace_sentinels(&self, sentinels: Vec<SentinelStatus>) {
        *locked(&self.sentinels) = sentinels;
    }

    /// Snapshot of what each sentinel last said.
    pub fn sentinel_status(&self) -> Vec<SentinelStatus> {
        locked(&self.sentinels).clone()
    }

    /// Updates what one sentinel last said (watcher and subscription tasks).
    pub fn update_sentinel(&self, index: usize, f: impl FnOnce(&mut SentinelStatus)) {
        if let Some(s) = locked(&self.sentinels).get_mut(index) {
            f(s);
        }
    }

    /// Records the watcher's verdict on the latest round: a majority answered or not
    /// (watcher only).
    pub fn set_sentinel_majority(&self, majority: bool) {
        self.sentinel_majority.store(majority, Ordering::Relaxed);
    }

    /// Whether a majority of the configured sentinels answered the latest round.
    pub fn sentinel_majority(&self) -> bool {
        self.sentinel_majority.load(Ordering::Relaxed)
    }

    /// The last `ROLE` check's error, until a check succeeds again (watcher only).
    pub fn set_node_error(&self, error: Option<String>) {
        *locked(&self.node_error) = error;
    }

    /// The last failed `ROLE` check's error, if the latest check failed.
    pub fn node_error(&self) -> Option<String> {
        locked(&self.node_error).clone()
    }

    /// Records a switch to a newly verified master (epoch `epoch`).
    pub fn record_switch(&self, unix: f64, epoch: u64, master: String) {
        locked(&self.history).switch(unix, epoch, master);
    }

    /// Records a fence of epoch `epoch` with `sessions` open.
    pub fn record_fence(
        &self,
        unix: f64,
        epoch: u64,
        master: String,
        reason: &'static str,
        sessions: u64,
    ) {
        locked(&self.history).fence(unix, epoch, master.clone(), reason, sessions);
        *locked(&self.last_fence) = Some(FenceRecord {
            unix,
            reason,
            epoch,
            master,
        });
    }

    /// Records that every session of fenced epoch `epoch` closed `took` after the evidence
    /// (watcher only).
    pub fn fence_drained(&self, epoch: u64, took: std::time::Duration) {
        locked(&self.history).fence_drained(epoch, took.as_secs_f64() * 1000.0);
    }

    /// The latest switches and fences, newest first.
    pub fn history(&self) -> Vec<HistoryEntry> {
        locked(&self.history).newest_first()
    }

    /// The most recent fence, if any.
    pub fn last_fence(&self) -> Option<FenceRecord> {
        locked(&self.last_fence).clone()
    }
}

/// The whole `/status` document.
#[derive(Debug, Serialize)]
pub struct StatusDoc {
    /// The proxy's version.
    pub version: &'static str,
    /// Whether shutdown has begun.
    pub draining: bool,
    /// Every route.
    pub routes: Vec<RouteView>,
}

impl StatusDoc {
    /// The document for `routes` now: the one source of `/status`, the page at `/` and the
    /// SIGUSR1 log line.
    pub fn of<'a>(routes: impl IntoIterator<Item = &'a Arc<Route>>, draining: bool) -> StatusDoc {
        StatusDoc {
            version: env!("CARGO_PKG_VERSION"),
            draining,
            routes: routes.into_iter().map(|r| RouteView::of(r)).collect(),
        }
    }
}

/// A route's state for `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteState {
    /// A verified master that answers: clients are spliced to it.
    Routing,
    /// A master is installed but refused a connect or a `ROLE` check since it last answered:
    /// new clients are held until it answers `ROLE` again.
    Untrusted,
    /// No master: clients are held.
    Holding,
}

/// One route, as `/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RouteView {
    /// The route's name.
    pub name: String,
    /// Sentinel master name.
    pub master_name: String,
    /// Client listen address.
    pub listen: String,
    /// See [`RouteState`].
    pub state: RouteState,
    /// The installed master, if any.
    pub master: Option<MasterView>,
    /// Client connections open (held or in a session).
    pub clients_open: usize,
    /// Clients held.
    pub clients_held: usize,
    /// The latest fence.
    pub last_fence: Option<FenceRecord>,
    /// The latest failed `ROLE` check's error, until one succeeds.
    pub last_node_error: Option<String>,
    /// Sentinels that answered the latest round.
    pub sentinels_reachable: usize,
    /// Whether they are a majority of those configured (the watcher's verdict on its latest
    /// round, `decide::is_majority`).
    pub sentinel_majority: bool,
    /// What each sentinel last said.
    pub sentinels: Vec<SentinelStatus>,
    /// The latest switches and fences, newest first (at most [`HISTORY_LEN`]).
    pub history: Vec<HistoryEntry>,
}

/// The installed master, as `/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct MasterView {
    /// The verified address sessions connect to.
    pub addr: String,
    /// The address as the sentinels announce it.
    pub announced: String,
    /// The route's epoch.
    pub epoch: u64,
    /// The sentinels' config-epoch it was verified at.
    pub config_epoch: u64,
    /// When it was verified (seconds since the Unix epoch).
    pub verified_unix: f64,
    /// Its sessions open.
    pub sessions: usize,
}

impl RouteView {
    /// A snapshot of `route` now.
    pub fn of(route: &Route) -> RouteView {
        let current = route.current();
        let state = match &current {
            Some(m) if m.is_trusted() => RouteState::Routing,
            Some(_) => RouteState::Untrusted,
            None => RouteState::Holding,
        };
        let master = current.map(|m| MasterView {
            addr: m.addr.to_string(),
            announced: m.announced.clone(),
            epoch: m.epoch,
            config_epoch: m.config_epoch,
            verified_unix: m
                .verified_at
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            sessions: m.sessions(),
        });
        let sentinels = route.observed.sentinel_status();
        let reachable = sentinels.iter().filter(|s| s.reachable).count();
        RouteView {
            name: route.name().to_string(),
            master_name: route.config().master_name.clone(),
            listen: route.config().listen.to_string(),
            state,
            master,
            clients_open: route.open_clients(),
            clients_held: route.held_clients(),
            last_fence: route.observed.last_fence(),
            last_node_error: route.observed.node_error(),
            sentinels_reachable: reachable,
            // The watcher's own verdict, so /readyz says what the watcher acts on.
            sentinel_majority: route.observed.sentinel_majority(),
            sentinels,
            history: route.observed.history(),
        }
    }
}

/// Whether the proxy is ready, and the one-line body `/readyz` answers with: not ready while
/// draining or while any route holds new clients (no master, or one that refuses); degraded
/// notes when it routes on fewer than a majority of its sentinels' word.
pub fn readiness(draining: bool, routes: &[RouteView]) -> (bool, String) {
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    if draining {
        problems.push("shutting down".to_string());
    }
    for r in routes {
        let configured = r.sentinels.len();
        let blind = r.sentinels_reachable == 0;
        match (&r.state, &r.master) {
            (RouteState::Holding, _) | (_, None) => problems.push(format!(
                "route {}: no verified master{}",
                r.name,
                if blind {
                    " and no sentinel reachable"
                } else {
                    ""
                }
            )),
            (RouteState::Untrusted, Some(m)) => problems.push(format!(
                "route {}: master {} is not answering (refused since its last ROLE check); holding new clients",
                r.name, m.addr
            )),
            (RouteState::Routing, Some(_)) if blind => notes.push(format!(
                "route {}: no sentinel reachable, serving the last verified master",
                r.name
            )),
            (RouteState::Routing, Some(_)) if !r.sentinel_majority => notes.push(format!(
                "route {}: only {}/{configured} sentinels reachable",
                r.name, r.sentinels_reachable
            )),
            (RouteState::Routing, Some(_)) => {}
        }
    }
    let mut body = if problems.is_empty() {
        "ready".to_string()
    } else {
        format!("not ready: {}", problems.join("; "))
    };
    if !notes.is_empty() {
        body.push_str(&format!(" (degraded: {})", notes.join("; ")));
    }
    body.push('\n');
    (problems.is_empty(), body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(state: RouteState, reachable: usize, configured: usize) -> RouteView {
        RouteView {
            name: "r".into(),
            master_name: "redis-ha".into(),
            listen: "127.0.0.1:6380".into(),
            state,
            master: (state != RouteState::Holding).then(|| MasterView {
                addr: "10.0.0.1:6379".into(),
                announced: "10.0.0.1:6379".into(),
                epoch: 1,
                config_epoch: 0,
                verified_unix: 0.0,
                sessions: 0,
            }),
            clients_open: 0,
            clients_held: 0,
            last_fence: None,
            last_node_error: None,
            sentinels_reachable: reachable,
            sentinel_majority: crate::sentinel::decide::is_majority(reachable, configured),
            sentinels: (0..configured)
                .map(|i| SentinelStatus {
                    reachable: i < reachable,
                    ..Default::default()
                })
                .collect(),
            history: Vec::new(),
        }
    }

    #[test]
    fn readiness_rows() {
        use RouteState::*;
        // (draining, state, reachable of 3, ready, body contains)
        let rows: &[(bool, RouteState, usize, bool, &str)] = &[
            (false, Routing, 3, true, "ready\n"),
            (false, Routing, 1, true, "only 1/3 sentinels reachable"),
            (
                false,
                Routing,
                0,
                true,
                "no sentinel reachable, serving the last verified master",
            ),
            (false, Untrusted, 3, false, "is not answering"),
            (false, Untrusted, 0, false, "holding new clients"),
            (false, Holding, 3, false, "no verified master"),
            (
                false,
                Holding,
                0,
                false,
                "no verified master and no sentinel reachable",
            ),
            (true, Routing, 3, false, "shutting down"),
        ];
        for (draining, state, reachable, ready, contains) in rows {
            let (r, body) = readiness(*draining, &[view(*state, *reachable, 3)]);
            assert_eq!(r, *ready, "{state:?} {reachable}: {body}");
            assert!(body.contains(contains), "{state:?} {reachable}: {body}");
        }
    }

    #[test]
    fn history_is_a_bounded_ring_newest_first() {
        let mut h = History::default();
        h.switch(1.0, 1, "a:1".into());
        h.fence(2.0, 1, "a:1".into(), "switch_event", 3);
        h.switch(3.0, 2, "b:2".into());
        let all = h.newest_first();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].kind, HistoryKind::Switch);
        assert_eq!(all[0].from.as_deref(), Some("a:1"));
        assert_eq!(all[0].to.as_deref(), Some("b:2"));
        assert_eq!(all[2].from, None, "the first switch has no previous master");
        assert_eq!(all[1].sessions, Some(3));
        assert_eq!(all[1].duration_ms, None, "not drained yet");
        for i in 0..(HISTORY_LEN as u64 * 2) {
            h.switch(10.0 + i as f64, 3 + i, format!("n:{i}"));
        }
        let all = h.newest_first();
        assert_eq!(all.len(), HISTORY_LEN);
        assert!(all.windows(2).all(|w| w[0].at_unix > w[1].at_unix));
    }

    #[test]
    fn a_fence_gets_its_duration_once_drained() {
        let mut h = History::default();
        h.switch(1.0, 1, "a:1".into());
        h.fence(2.0, 1, "a:1".into(), "role_replica", 0);
        h.switch(3.0, 2, "b:2".into());
        // Unknown epoch: nothing changes.
        h.fence_drained(7, 5.0);
        assert!(h.newest_first().iter().all(|e| e.duration_ms.is_none()));
        h.fence_drained(1, 12.5);
        let fence = &h.newest_first()[1];
        assert_eq!(fence.duration_ms, Some(12.5));
        // Only once.
        h.fence_drained(1, 99.0);
        assert_eq!(h.newest_first()[1].duration_ms, Some(12.5));
    }

    #[test]
    fn history_json_has_the_agreed_fields() {
        let mut h = History::default();
        h.switch(1.5, 1, "a:1".into());
        h.fence(2.5, 1, "a:1".into(), "switch_event", 2);
        let v = serde_json::to_value(h.newest_first()).unwrap();
        assert_eq!(
            v[0],
            serde_json::json!({"at_unix": 2.5, "kind": "fence", "epoch": 1, "from": "a:1",
                "to": null, "reason": "switch_event", "duration_ms": null, "sessions": 2})
        );
        assert_eq!(
            v[1],
            serde_json::json!({"at_unix": 1.5, "kind": "switch", "epoch": 1, "from": null,
                "to": "a:1", "reason": null, "duration_ms": null, "sessions": null})
        );
    }
}
