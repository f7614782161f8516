//! The watcher of one route: the only writer of the route's master state. Each round it asks
//! every sentinel (`SENTINEL MASTER`), lets [`decide`](super::decide) apply the trust rules,
//! proves the chosen address with `ROLE`, and fences or installs; it acts at once on failover
//! events from the subscriptions. It does the I/O, metrics and logs; the rules are elsewhere.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use metrics::{counter, gauge, histogram};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use super::client::{
    self, join_host_port, peer_text, role, MasterReport, Role, Sentinel, SentinelError, Timeouts,
};
use super::evidence::{Quarantine, QuarantineOutcome};
use super::subscription::{names, subscribe, Event, EventGate, Throttle, ToWatcher};
use super::{arbiter, decide, evidence, MAX_BACKOFF};
use crate::config::SentinelConfig;
use crate::metrics::{self as m, FenceReason, SentinelErrorKind};
use crate::route::{self, Route};

/// Rounds started early (by events) are at least this far apart: a flood of events, honest or
/// not, cannot turn into a flood of queries to every sentinel.
const MIN_ROUND_GAP: Duration = Duration::from_millis(100);
/// How long a round waits for the remaining sentinels once a majority has answered.
const STRAGGLER_GRACE: Duration = Duration::from_millis(100);
/// At most one "+switch-master received" line for events that change nothing, this often.
const SWITCH_LOG_EVERY: Duration = Duration::from_secs(1);
/// Failover events that arrive during a round without fencing anything are kept for the log
/// up to this many; more are only counted as a re-query hint.
const MAX_PENDING_EVENTS: usize = 16;

/// Runs the watcher of `route` until `shutdown`. A reload that changes the route's sentinel
/// settings ([`Route::reconfigure`]) is taken up between two rounds by the same task, so the
/// route's master state keeps its one writer, and what the watcher knows of failovers in
/// progress (quarantine, the last master) survives it.
pub async fn watch(route: Arc<Route>, shutdown: CancellationToken) {
    let cfg = route.config().sentinel.clone();
    let (tx, rx) = mpsc::channel(64);
    let hints = Arc::new(Notify::new());
    let n = cfg.addresses.len();
    let mut w = Watcher {
        route,
        timeouts: Timeouts {
            timeout: cfg.timeout,
        },
        poll_interval: cfg.poll_interval,
        sentinels: Vec::new(),
        retry_at: vec![None; n],
        failures: vec![0; n],
        last_kind: vec![None; n],
        blind: false,
        fenced_at: None,
        previous: None,
        last_role: HashMap::new(),
        minority_since: None,
        quarantine: None,
        gate: Arc::new(EventGate::new(n)),
        claims: evidence::Claims::default(),
        failover_timeout: evidence::DEFAULT_FAILOVER_TIMEOUT,
        set_aside: vec![false; n],
        stale: vec![false; n],
        seen: None,
        checked: None,
        run_id_unreadable: false,
        last_top_epoch: 0,
        switch_log: Throttle::new(SWITCH_LOG_EVERY),
        cfg,
        subscriptions: Subscriptions {
            tx,
            hints: hints.clone(),
            stop: shutdown.child_token(),
            parent: shutdown.clone(),
            tasks: TaskTracker::new(),
        },
    };
    w.start_sentinels();
    w.run(rx, hints, shutdown).await;
    w.stop_subscriptions().await;
}

/// The subscription tasks of the current sentinel list.
struct Subscriptions {
    tx: mpsc::Sender<Event>,
    hints: Arc<Notify>,
    /// Stops the current subscriptions (a child of `parent`, the watcher's shutdown).
    stop: CancellationToken,
    parent: CancellationToken,
    tasks: TaskTracker,
}

struct Watcher {
    route: Arc<Route>,
    timeouts: Timeouts,
    poll_interval: Duration,
    sentinels: Vec<Sentinel>,
    /// Per sentinel: not asked again before this instant (reconnect backoff).
    retry_at: Vec<Option<Instant>>,
    failures: Vec<u32>,
    /// Per sentinel: the kind of its current run of failures (to log each episode once).
    last_kind: Vec<Option<SentinelErrorKind>>,
    /// No sentinel answered the last round.
    blind: bool,
    /// When the current fence started (for the failover log line).
    fenced_at: Option<Instant>,
    /// The last installed master address (for the failover log line).
    previous: Option<SocketAddr>,
    /// The last ROLE outcome per address (to log changes, not repeats).
    last_role: HashMap<SocketAddr, &'static str>,
    /// Since when fewer than a majority of the sentinels answer.
    minority_since: Option<Instant>,
    /// A master fenced for a failover, not to be re-installed meanwhile.
    quarantine: Option<Quarantine>,
    /// Whose failover events may fence at once (shared with the subscriptions).
    gate: Arc<EventGate>,
    /// How long each sentinel has claimed a failover in progress.
    claims: evidence::Claims,
    /// The group's failover-timeout, from the latest reports.
    failover_timeout: Duration,
    /// Per sentinel: its report was set aside last round (config-epoch too far ahead).
    set_aside: Vec<bool>,
    /// Per sentinel: its report was stale last round (older than the verified master's).
    stale: Vec<bool>,
    /// The current master's process as its last ROLE check saw it (epoch, replication
    /// offset, run_id).
    seen: Option<decide::Seen>,
    /// The latest master answer to a ROLE check (address, offset, run_id): the baseline of an
    /// epoch installed on it.
    checked: Option<(SocketAddr, Option<u64>, Option<String>)>,
    /// The master's run_id could not be read at the last check (logged once per episode).
    run_id_unreadable: bool,
    /// The highest config-epoch of the last round's reports.
    last_top_epoch: u64,
    /// Limits the "+switch-master received" lines of events that change nothing.
    switch_log: Throttle,
    /// The sentinel settings `sentinels` were built from.
    cfg: SentinelConfig,
    subscriptions: Subscriptions,
}

enum Wake {
    Event(Event),
    Done(Duration),
    Reconfigure,
    Stop,
}

impl Watcher {
    async fn run(
        &mut self,
        mut rx: mpsc::Receiver<Event>,
        hints: Arc<Notify>,
        shutdown: CancellationToken,
    ) {
        // When the last round started ahead of its schedule (for an event or a hint): early
        // rounds are at least MIN_ROUND_GAP apart, so no flood of events, honest or not,
        // becomes a flood of queries to every sentinel. A round on schedule does not delay
        // the first early one.
        let mut last_early: Option<Instant> = None;
        let mut early = false;
        loop {
            if early {
                last_early = Some(Instant::now());
            }
            let early_at = |now: Instant| last_early.map_or(now, |t| now.max(t + MIN_ROUND_GAP));
            let mut hinted = false;
            let mut pending: Vec<Event> = Vec::new();
            let (route, gate) = (self.route.clone(), self.gate.clone());
            // Only a round changes which sentinels are stale.
            let stale = self.stale.clone();
            // A round is abandoned only for an event that fences: what it learned may predate
            // the switch. Any other event (naming another master, from a distrusted sentinel,
            // or after the fence) waits for the round to end, so no stream of events can keep
            // every round from finishing.
            let wake = {
                let round = self.round();
                tokio::pin!(round);
                loop {
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => break Wake::Stop,
                        Some(ev) = rx.recv() => {
                            if would_fence(&route, &gate, &stale, &ev) {
                                break Wake::Event(ev);
                            }
                            if pending.len() < MAX_PENDING_EVENTS {
                                pending.push(ev);
                            }
                            hinted = true;
                        }
                        _ = hints.notified() => hinted = true,
                        _ = route.reconfigured() => break Wake::Reconfigure,
                        d = &mut round => break Wake::Done(d),
                    }
                }
            };
            for ev in pending {
                self.on_event(ev);
            }
            let now = Instant::now();
            // `scheduled`: when the next round is due by the poll interval alone; a round that
            // starts before it is an early one.
            let (mut next, scheduled) = match wake {
                Wake::Stop => return,
                Wake::Reconfigure => {
                    // The round was abandoned; the next one asks the new list at once.
                    self.reconfigure(&mut rx).await;
                    (early_at(now), None)
                }
                Wake::Event(ev) => {
                    self.on_event(ev);
                    (early_at(now), None)
                }
                Wake::Done(d) if hinted => ((now + d).min(early_at(now)), Some(now + d)),
                Wake::Done(d) => (now + d, Some(now + d)),
            };
            let (route, soon) = (self.route.clone(), self.fast_retry());
            // A session could not connect to the master: look again soon, not at once, so a
            // stream of refused clients cannot make the watcher spin.
            let recheck = async {
                route.recheck_requested().await;
                tokio::time::sleep(soon).await
            };
            tokio::pin!(recheck);
            let mut reconfigured = false;
            early = loop {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return,
                    Some(ev) = rx.recv() => {
                        self.on_event(ev);
                        next = next.min(early_at(Instant::now()));
                    }
                    _ = hints.notified() => next = next.min(early_at(Instant::now())),
                    _ = tokio::time::sleep_until(next.into()) => {
                        break scheduled.is_none_or(|s| next < s)
                    }
                    _ = &mut recheck => break true,
                    _ = route.reconfigured() => {
                        reconfigured = true;
                        break true;
                    }
                }
            };
            if reconfigured {
                self.reconfigure(&mut rx).await;
            }
        }
    }

    /// Builds the sentinel clients of `self.cfg` and starts their subscriptions.
    fn start_sentinels(&mut self) {
        let cfg = &self.cfg;
        self.sentinels = cfg
            .addresses
            .iter()
            .map(|a| Sentinel::new(a, &cfg.access, self.timeouts))
            .collect();
        // Their metric series exist from the start (`metrics::register_sentinels`, from
        // `Route::new` and `Route::reset_sentinels`), so `increase()` alerts see the first event.
        let subs = &self.subscriptions;
        for (i, s) in self.sentinels.iter().enumerate() {
            let peer = match s.peer() {
                Ok(p) => p.clone(),
                Err(e) => {
                    error!(route = self.route.name(), %e, "cannot subscribe to sentinel");
                    continue;
                }
            };
            subs.tasks.spawn(subscribe(
                i,
                s.addr.clone(),
                peer,
                self.route.clone(),
                ToWatcher {
                    tx: subs.tx.clone(),
                    hints: subs.hints.clone(),
                    gate: self.gate.clone(),
                },
                subs.stop.clone(),
            ));
        }
    }

    /// Stops the subscriptions and waits until none runs (so none reports on a stale index).
    async fn stop_subscriptions(&mut self) {
        self.subscriptions.stop.cancel();
        self.subscriptions.tasks.close();
        self.subscriptions.tasks.wait().await;
    }

    /// Takes up a reload's sentinel settings. The poll interval, timeouts and minority policy
    /// apply from the next round; a changed list, credentials or TLS rebuild the sentinel
    /// clients and subscriptions. What is known about the route's master (the master state
    /// itself, a quarantine, the last address) is kept; per-sentinel bookkeeping starts over.
    async fn reconfigure(&mut self, rx: &mut mpsc::Receiver<Event>) {
        let new = self.route.config().sentinel.clone();
        self.poll_interval = new.poll_interval;
        let rebuild = new.addresses != self.cfg.addresses
            || new.timeout != self.cfg.timeout
            || !crate::reload::same_access(&new.access, &self.cfg.access)
            // Certificate files read again by the reload (e.g. a renewed client certificate).
            || !crate::reload::same_loaded_tls(&new.access.tls, &self.cfg.access.tls);
        if !rebuild {
            self.cfg = new;
            return;
        }
        self.stop_subscriptions().await;
        // Events already queued carry indices into the old list.
        while rx.try_recv().is_ok() {}
        self.route.reset_sentinels();
        let n = new.addresses.len();
        info!(
            route = self.route.name(),
            sentinels = ?new.addresses,
            "sentinel settings changed by a reload; asking the new sentinels"
        );
        self.timeouts = Timeouts {
            timeout: new.timeout,
        };
        self.cfg = new;
        self.retry_at = vec![None; n];
        self.failures = vec![0; n];
        self.last_kind = vec![None; n];
        self.set_aside = vec![false; n];
        self.stale = vec![false; n];
        self.gate = Arc::new(EventGate::new(n));
        self.claims = evidence::Claims::default();
        self.minority_since = None;
        if let Some(q) = &mut self.quarantine {
            q.sentinel = None;
        }
        self.subscriptions.stop = self.subscriptions.parent.child_token();
        self.subscriptions.tasks = TaskTracker::new();
        self.start_sentinels();
    }

    fn on_event(&mut self, ev: Event) {
        let Some((from, named)) = event_names(&ev) else {
            return;
        };
        let effect = decide::event_effect(event_context(
            &self.route,
            &self.gate,
            &self.stale,
            self.quarantine.is_some(),
            from,
            named,
        ));
        if effect == decide::EventEffect::Distrusted {
            // Queued before the subscription learned to drop them.
            counter!(m::SENTINEL_EVENTS_IGNORED, "route" => self.route.name().to_string(), "sentinel" => self.sentinels[from].addr.clone(), "why" => "repeat").increment(1);
            return;
        }
        let (sentinel, named, at, reason, new) = match ev {
            Event::Switch {
                sentinel,
                old,
                new,
                at,
            } => {
                counter!(m::SWITCH_EVENTS, "route" => self.route.name().to_string()).increment(1);
                (sentinel, old, at, FenceReason::SwitchEvent, Some(new))
            }
            Event::Promoting {
                sentinel,
                master,
                at,
            } => (sentinel, master, at, FenceReason::FailoverStarted, None),
            Event::Hint => return,
        };
        let fences = effect == decide::EventEffect::Fence;
        // Events that change nothing are logged at most once a second.
        let shown = if fences {
            Some(0)
        } else {
            self.switch_log.allow(Instant::now())
        };
        if let Some(suppressed) = shown {
            let (route, from) = (self.route.name(), &self.sentinels[sentinel].addr);
            let stale = self.stale.get(sentinel).copied().unwrap_or(false);
            match &new {
                Some(new) => {
                    info!(route, sentinel = %from, old.addr = %named, new.addr = %new, stale, suppressed, "+switch-master received")
                }
                None => {
                    info!(route, sentinel = %from, master.addr = %named, stale, suppressed, "sentinel is promoting a replica")
                }
            }
        }
        match effect {
            decide::EventEffect::Fence => self.fence_for_failover(reason, at, Some(sentinel), true),
            decide::EventEffect::Quarantine => self.remember(&named, sentinel),
            decide::EventEffect::Hint | decide::EventEffect::Distrusted => {}
        }
    }

    /// Remembers failover evidence naming `announced` while no master is installed: it is
    /// quarantined as if it had been fenced, so no round installs it until the failover
    /// completes or is given up.
    fn remember(&mut self, announced: &str, sentinel: usize) {
        info!(route = self.route.name(), master.announced = %peer_text(announced), sentinel = %self.sentinels[sentinel].addr, "failover evidence while no master is installed; not routing to that address until the failover ends");
        self.quarantine = Some(Quarantine {
            announced: announced.to_string(),
            config_epoch: self.last_top_epoch,
            sentinel: Some(sentinel),
            by_event: true,
            until: Instant::now() + self.failover_timeout,
        });
    }

    /// Fences the current master because a failover away from it is under way, and keeps it
    /// from being re-installed on the word of sentinels that have not heard of the failover
    /// yet (it still answers ROLE master until it is told to replicate): see `quarantined`.
    fn fence_for_failover(
        &mut self,
        reason: FenceReason,
        since: Instant,
        sentinel: Option<usize>,
        by_event: bool,
    ) {
        if let Some(cur) = self.route.current() {
            self.quarantine = Some(Quarantine {
                announced: cur.announced.clone(),
                config_epoch: cur.config_epoch,
                sentinel,
                by_event,
                until: Instant::now() + self.failover_timeout,
            });
        }
        self.fence(reason, since);
    }

    /// Whether `announced` is a master fenced for a failover that has neither completed (a
    /// higher config-epoch) nor been abandoned (the sentinel running it names it again without
    /// `failover_in_progress`), within the group's failover-timeout. A sentinel whose own poll
    /// contradicts the event it sent loses its events' power to fence for that long, so
    /// repeated false events cannot cut sessions again and again.
    fn update_quarantine(&mut self, reports: &[(usize, MasterReport)]) {
        let Some(q) = &self.quarantine else {
            return;
        };
        let now = Instant::now();
        match q.outcome(reports, now) {
            QuarantineOutcome::Holds => return,
            QuarantineOutcome::Completed | QuarantineOutcome::Abandoned(None) => {}
            QuarantineOutcome::Abandoned(Some(s)) => {
                warn!(route = self.route.name(), sentinel = %self.sentinels[s].addr, master.announced = %q.announced, ignore_for = %humantime::format_duration(self.failover_timeout), "sentinel's own report contradicts the failover event it sent; its events will not fence for a failover-timeout");
                self.gate.distrust(s, now + self.failover_timeout);
            }
            QuarantineOutcome::Expired => {
                warn!(route = self.route.name(), master.announced = %q.announced, "no sign of the failover finishing or being abandoned; the fenced master may be routed to again");
            }
        }
        self.quarantine = None;
    }

    /// Whether `announced` is quarantined now (see [`Watcher::update_quarantine`]).
    fn quarantined(&self, announced: &str) -> bool {
        self.quarantine
            .as_ref()
            .is_some_and(|q| q.announced == announced)
    }

    /// Every answering sentinel's replica list for the group (`SENTINEL REPLICAS`), asked at
    /// once; a sentinel that fails to answer, or answers after a majority did and the grace
    /// that follows ([`gather`]), lists nothing.
    async fn members(&mut self, reporters: &[usize]) -> Vec<(usize, Vec<String>)> {
        let name = self.route.config().master_name.clone();
        let configured = self.sentinels.len();
        let asks: futures_util::stream::FuturesUnordered<_> = self
            .sentinels
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| reporters.contains(i))
            .map(|(i, s)| {
                let name = name.clone();
                async move {
                    let listed = s
                        .replicas(&name)
                        .await
                        .map(|r| r.into_iter().map(|(a, _)| a).collect::<Vec<String>>())
                        .ok();
                    (i, listed)
                }
            })
            .collect();
        gather(asks, configured, |(_, listed)| listed.is_some())
            .await
            .into_iter()
            .map(|(i, listed)| (i, listed.unwrap_or_default()))
            .collect()
    }

    /// Ends the current epoch and reports, in the background, when its last session closed.
    fn fence(&mut self, reason: FenceReason, since: Instant) {
        let Some(old) = self.route.fence(reason) else {
            return;
        };
        let route = self.route.name().to_string();
        counter!(m::FENCES, "route" => route.clone(), "reason" => reason.as_str()).increment(1);
        self.fenced_at = Some(since);
        info!(
            route,
            master.addr = %old.addr,
            epoch = old.epoch,
            reason = reason.as_str(),
            sessions = old.sessions(),
            "master fenced; holding new clients"
        );
        let history = self.route.clone();
        tokio::spawn(async move {
            let took = route::drained(&old, since).await;
            history.observed.fence_drained(old.epoch, took);
            histogram!(m::FENCE_DURATION, "route" => route.clone()).record(took.as_secs_f64());
            info!(
                route,
                master.addr = %old.addr,
                epoch = old.epoch,
                fence_ms = took.as_secs_f64() * 1000.0,
                "fenced epoch's sessions all closed"
            );
        });
    }

    /// One poll of every sentinel and the action it calls for; returns the delay to the next.
    async fn round(&mut self) -> Duration {
        let name = self.route.config().master_name.clone();
        let now = Instant::now();
        let due: Vec<bool> = self
            .retry_at
            .iter()
            .map(|r| r.is_none_or(|t| t <= now))
            .collect();
        let configured = self.sentinels.len();
        let queries: futures_util::stream::FuturesUnordered<_> = self
            .sentinels
            .iter_mut()
            .enumerate()
            .zip(&due)
            .filter(|(_, due)| **due)
            .map(|((i, s), _)| {
                let name = name.clone();
                async move { (i, s.master(&name).await) }
            })
            .collect();
        // One slow sentinel must not delay every round: its query is dropped, its connection
        // kept; it is simply not heard this round.
        let mut results: Vec<(usize, Result<MasterReport, SentinelError>)> =
            gather(queries, configured, |(_, r)| r.is_ok()).await;
        results.sort_by_key(|(i, _)| *i);
        for (i, due) in due.iter().enumerate() {
            if *due && !results.iter().any(|(j, _)| *j == i) {
                // Not an error (no backoff, no counter): it was not waited for.
                self.route.observed.update_sentinel(i, |s| {
                    s.reachable = false;
                    s.last_error =
                        Some("no answer before this round ended (a majority had answered)".into());
                });
            }
        }
        let mut heard: Vec<(usize, MasterReport)> = Vec::new();
        for (i, result) in results {
            match result {
                Ok(r) => {
                    self.record_ok(i, &r);
                    heard.push((i, r));
                }
                Err(e) => self.record_err(i, e),
            }
        }
        let route = self.route.name().to_string();
        gauge!(m::SENTINELS_REACHABLE, "route" => route.clone()).set(heard.len() as f64);
        if self.minority(heard.len()) {
            // Self-fenced: no routing on a minority's word until a majority answers again.
            return self.poll_interval;
        }
        // Reports too far ahead set aside; failover claims are evidence while they last,
        // dismissed once they outlive the group's failover-timeout (a real failover ends by
        // then, completed or given up).
        let now = Instant::now();
        let current_epoch = self.route.current().map(|c| c.config_epoch);
        let screened = evidence::screen(heard, current_epoch, &mut self.claims, now);
        self.failover_timeout = screened.failover_timeout;
        self.note_set_aside(&screened);
        for (i, announced) in &screened.dismissed_now {
            warn!(route, sentinel = %self.sentinels[*i].addr, master.announced = %announced, failover_timeout = %humantime::format_duration(self.failover_timeout), "sentinel has claimed a failover in progress for longer than the failover-timeout; ignoring the claim until it withdraws it");
            self.gate.distrust(*i, now + self.failover_timeout);
        }
        let failing_over = screened.failing_over;
        let view_reports = screened.kept;
        let reporters: Vec<usize> = view_reports.iter().map(|(i, _)| *i).collect();

        if view_reports.is_empty() {
            if !self.blind {
                self.blind = true;
                error!(
                    route,
                    sentinels = self.sentinels.len(),
                    "no sentinel reachable; keeping the last verified master and re-checking it with ROLE"
                );
            }
            if let Some(cur) = self.route.current() {
                // Unreachable is not evidence of demotion: sessions fail on their own, and the
                // sentinels, when back, decide. A replica answer is.
                self.check_current(&cur).await;
            }
            return self.poll_interval;
        }
        if self.blind {
            self.blind = false;
            info!(
                route,
                reachable = reporters.len(),
                "sentinels reachable again"
            );
        }

        let current = self.route.current();
        self.update_quarantine(&view_reports);
        self.last_top_epoch = view_reports
            .iter()
            .map(|(_, r)| r.config_epoch)
            .max()
            .unwrap_or(0);
        let mut members: Option<Vec<(usize, Vec<String>)>> = None;
        let decision = loop {
            let view = decide::View {
                configured: self.sentinels.len(),
                reports: &view_reports,
                current: current
                    .as_ref()
                    .map(|c| (c.announced.as_str(), c.config_epoch)),
                members: members.as_deref(),
                failing_over: &failing_over,
            };
            let d = decide::choose(&view, &|a: &str| self.quarantined(a));
            if d.choice == decide::Choice::NeedMembers && members.is_none() {
                members = Some(self.members(&reporters).await);
                continue;
            }
            break d;
        };
        self.note_stale(&decision.stale, &view_reports);
        let candidates = match decision.choice {
            decide::Choice::FenceForFailover(i) => {
                self.fence_for_failover(
                    FenceReason::FailoverStarted,
                    Instant::now(),
                    Some(i),
                    false,
                );
                return self.fast_retry();
            }
            decide::Choice::Keep | decide::Choice::NeedMembers => {
                // Nothing acceptable is named (only stale reports, or an address a minority
                // names alone): keep the current master while ROLE agrees.
                if let Some(cur) = current {
                    self.check_current(&cur).await;
                }
                return self.poll_interval;
            }
            decide::Choice::Current => {
                let Some(cur) = current else {
                    return self.poll_interval;
                };
                // A master announced by name may move to another address under the same name
                // (a rescheduled pod): look the name up again and treat a new address as a
                // new master.
                let (host, port) = crate::config::parse_host_port(&cur.announced)
                    .unwrap_or_else(|_| (cur.addr.ip().to_string(), cur.addr.port()));
                let resolved = if decide::is_host_name(&host) {
                    client::resolve_all(&host, port, self.timeouts.timeout)
                        .await
                        .ok()
                } else {
                    None
                };
                if !decide::name_moved(resolved.as_deref(), cur.addr) {
                    return match self.check_current(&cur).await {
                        Some(Role::Master) | None => self.poll_interval,
                        Some(_) => self.fast_retry(),
                    };
                }
                info!(route = self.route.name(), master.announced = %cur.announced, master.addr = %cur.addr, "the master's name resolves to another address now");
                self.fence(FenceReason::SentinelsNameOther, Instant::now());
                vec![arbiter::Candidate {
                    host,
                    port,
                    config_epoch: cur.config_epoch,
                    votes: 0,
                }]
            }
            decide::Choice::Move(candidates) => {
                // The newest acceptable config has moved on: fence before anything else.
                if current.is_some() {
                    self.fence(FenceReason::SentinelsNameOther, Instant::now());
                }
                candidates
            }
        };
        // The first candidate that resolves and passes ROLE is installed; a disqualified one
        // gives way to the next in the same round.
        for top in candidates {
            if self.try_install(&top, reporters.len()).await {
                return self.poll_interval;
            }
        }
        self.fast_retry()
    }

    /// Asks the current master's `ROLE`: master confirms it, anything else fences it; `None`
    /// when it could not be asked (not evidence of demotion).
    async fn check_current(&mut self, cur: &Arc<route::Master>) -> Option<Role> {
        let checked = Instant::now();
        let role = self.verify(cur.addr, &cur.announced).await;
        match &role {
            Some(Role::Master) => cur.confirm(checked),
            Some(_) => self.fence(FenceReason::RoleReplica, Instant::now()),
            None => {}
        }
        role
    }

    /// Resolves `top`, checks its ROLE and installs it as the new master if it says master.
    async fn try_install(&mut self, top: &arbiter::Candidate, reachable: usize) -> bool {
        let route = self.route.name().to_string();
        let announced = top.announced();
        let Some(addr) = self.resolve(&top.host, top.port).await else {
            return false;
        };
        if self.verify(addr, &announced).await != Some(Role::Master) {
            return false;
        }
        let previous = self.previous.replace(addr);
        let master = self.route.install(addr, announced, top.config_epoch);
        // The process verified now is the one later checks must find again.
        self.seen =
            self.checked
                .take()
                .filter(|(a, _, _)| *a == addr)
                .map(|(_, offset, run_id)| decide::Seen {
                    epoch: master.epoch,
                    offset,
                    run_id,
                });
        let no_master_ms = self
            .fenced_at
            .take()
            .map(|t| t.elapsed().as_secs_f64() * 1000.0);
        info!(
            route,
            master.addr = %master.addr,
            master.announced = %master.announced,
            previous = ?previous,
            epoch = master.epoch,
            config_epoch = top.config_epoch,
            votes = top.votes,
            reachable,
            no_master_ms = ?no_master_ms,
            "master verified; routing"
        );
        true
    }

    /// Whether the current master at `addr` restarted since its last check
    /// ([`decide::restarted`]: its run_id changed, or its replication offset went backwards).
    /// Then it is not the process that was verified: its epoch is fenced, and the next round
    /// verifies it afresh as a new master.
    fn restarted(&mut self, addr: SocketAddr, offset: Option<u64>, run_id: Option<String>) -> bool {
        let Some(cur) = self.route.current().filter(|c| c.addr == addr) else {
            return false;
        };
        let now = decide::Seen {
            epoch: cur.epoch,
            offset,
            run_id,
        };
        let before = self.seen.take();
        let verdict = decide::restarted(before.as_ref(), &now);
        self.seen = Some(decide::remembered(before.as_ref(), now.clone()));
        let Some(how) = verdict else {
            return false;
        };
        let route = self.route.name();
        let (offset_before, run_id_before) = before.map_or((None, None), |b| (b.offset, b.run_id));
        match how {
            decide::Restart::RunId => {
                warn!(route, master.addr = %addr, run_id_before = ?run_id_before, run_id_now = ?now.run_id, "the master restarted (its run_id changed): what it held before may be gone; verifying it again as a new master")
            }
            decide::Restart::Offset => {
                warn!(route, master.addr = %addr, offset_before = ?offset_before, offset_now = ?now.offset, "the master restarted (its replication offset went backwards): what it held before may be gone; verifying it again as a new master")
            }
        }
        self.fence(FenceReason::MasterRestarted, Instant::now());
        self.seen = None;
        true
    }

    /// The run_id a master's check read, if any; logs, once per episode, that it could not be
    /// read (a node ACL without `+info`): restarts are then told by the offset alone.
    fn note_run_id(
        &mut self,
        addr: SocketAddr,
        run_id: Option<Result<String, client::PeerError>>,
    ) -> Option<String> {
        match run_id? {
            Ok(id) => {
                if std::mem::take(&mut self.run_id_unreadable) {
                    info!(route = self.route.name(), master.addr = %addr, "the master's run_id can be read again");
                }
                Some(id)
            }
            Err(e) => {
                if !std::mem::replace(&mut self.run_id_unreadable, true) {
                    warn!(route = self.route.name(), master.addr = %addr, kind = e.kind.as_str(), error = %e, "cannot read the master's run_id (INFO server; the node ACL needs +info): a restart is told only by its replication offset going backwards");
                }
                None
            }
        }
    }

    /// Logs, once per episode, each sentinel whose report is older than the verified master.
    fn note_stale(&mut self, stale: &[usize], reports: &[(usize, MasterReport)]) {
        let verdicts: Vec<(usize, bool)> = reports
            .iter()
            .map(|(i, _)| (*i, stale.contains(i)))
            .collect();
        let begun = evidence::episodes_begun(&mut self.stale, &verdicts);
        for (i, r) in reports.iter().filter(|(i, _)| stale.contains(i)) {
            if begun.contains(i) {
                warn!(route = self.route.name(), sentinel = %self.sentinels[*i].addr, config_epoch = r.config_epoch, master.announced = %r.announced(), "stale sentinel: it reports an older config-epoch than the verified master's; ignoring its report until it catches up");
            }
            let note = format!(
                "stale: config-epoch {} is older than the verified master's; ignored",
                r.config_epoch
            );
            self.route
                .observed
                .update_sentinel(*i, |s| s.last_error = Some(note.clone()));
        }
    }

    /// Logs, once per episode, each sentinel whose report was set aside for a config-epoch
    /// too far ahead of every other view ([`evidence::epoch_set_aside`]), and shows it in
    /// `/status`.
    fn note_set_aside(&mut self, screened: &evidence::Screened) {
        let verdicts: Vec<(usize, bool)> = screened
            .kept
            .iter()
            .map(|(i, _)| (*i, false))
            .chain(screened.set_aside.iter().map(|(i, _)| (*i, true)))
            .collect();
        let begun = evidence::episodes_begun(&mut self.set_aside, &verdicts);
        for (i, r) in &screened.set_aside {
            if begun.contains(i) {
                warn!(route = self.route.name(), sentinel = %self.sentinels[*i].addr, config_epoch = r.config_epoch, master.announced = %r.announced(), "sentinel's config-epoch is far ahead of every other view; setting its report aside until another sentinel agrees");
            }
            let note = format!(
                "config-epoch {} leads every other view by more than {}; set aside until another sentinel agrees",
                r.config_epoch,
                evidence::MAX_EPOCH_LEAD
            );
            self.route
                .observed
                .update_sentinel(*i, |s| s.last_error = Some(note.clone()));
        }
    }

    /// Tracks whether a majority answered; with `on_minority = "fence"`, fences once a
    /// minority has lasted `minority_grace` and returns true while that holds.
    fn minority(&mut self, reachable: usize) -> bool {
        let route = self.route.name().to_string();
        let n = self.sentinels.len();
        let config = self.route.config();
        let cfg = &config.sentinel;
        let verdict = evidence::minority(
            reachable,
            n,
            &mut self.minority_since,
            cfg.on_minority,
            cfg.minority_grace,
            Instant::now(),
        );
        let majority = matches!(verdict, evidence::Minority::Majority { .. });
        self.route.observed.set_sentinel_majority(majority);
        gauge!(m::SENTINEL_MAJORITY, "route" => route.clone()).set(if majority {
            1.0
        } else {
            0.0
        });
        match verdict {
            evidence::Minority::Majority { recovered } => {
                if recovered {
                    info!(
                        route,
                        reachable,
                        sentinels = n,
                        "a majority of the sentinels answers again"
                    );
                }
                false
            }
            evidence::Minority::Minority { started } => {
                if started {
                    warn!(
                        route,
                        reachable,
                        sentinels = n,
                        "fewer than a majority of the sentinels answer"
                    );
                }
                false
            }
            evidence::Minority::Fence => {
                if self.route.current().is_some() {
                    warn!(
                        route,
                        reachable,
                        sentinels = n,
                        grace = %humantime::format_duration(cfg.minority_grace),
                        "no sentinel majority for the grace period; fencing (on_minority = \"fence\")"
                    );
                    self.fence(FenceReason::NoMajority, Instant::now());
                }
                true
            }
        }
    }

    fn fast_retry(&self) -> Duration {
        (self.poll_interval / 4).clamp(
            Duration::from_millis(50).min(self.poll_interval),
            self.poll_interval,
        )
    }

    /// `ROLE` of a candidate; `None` when it could not be asked.
    async fn verify(&mut self, addr: SocketAddr, announced: &str) -> Option<Role> {
        let route = self.route.name().to_string();
        let host = client::announced_host(announced);
        let result = role(addr, host, &self.route.config().node, self.timeouts).await;
        let result = match result {
            Ok(c) if c.role == Role::Master => {
                let run_id = self.note_run_id(addr, c.run_id);
                if self.restarted(addr, c.offset, run_id.clone()) {
                    return None;
                }
                self.checked = Some((addr, c.offset, run_id));
                Ok(Role::Master)
            }
            other => other.map(|c| c.role),
        };
        let (label, outcome) = match &result {
            Ok(Role::Master) => ("master", "master"),
            Ok(_) => ("replica", "replica"),
            Err(e) => ("error", e.kind.as_str()),
        };
        counter!(m::ROLE_CHECKS, "route" => route.clone(), "result" => label).increment(1);
        // Log changes, not repeats: a dead or demoted candidate is asked on every (fast) poll
        // until the sentinels replace it; a wrong password fails every time.
        let previous = self.last_role.insert(addr, outcome);
        let changed = previous != Some(outcome);
        match result {
            Ok(Role::Master) => {
                if previous.is_some_and(|p| p != "master") {
                    info!(route, master.addr = %addr, "ROLE says master again");
                }
                self.route.observed.set_node_error(None);
                Some(Role::Master)
            }
            Ok(other) => {
                self.route.observed.set_node_error(None);
                if changed {
                    warn!(route, master.addr = %addr, master.announced = announced, role = ?other, "sentinels name an address that is not a master; not routing to it");
                }
                Some(other)
            }
            Err(e) => {
                counter!(m::NODE_CHECK_ERRORS, "route" => route.clone(), "kind" => e.kind.as_str())
                    .increment(1);
                if changed {
                    warn!(route, master.addr = %addr, master.announced = announced, kind = e.kind.as_str(), error = %e, "ROLE check failed");
                } else {
                    debug!(route, master.addr = %addr, kind = e.kind.as_str(), error = %e, "ROLE check failed again");
                }
                self.route.observed.set_node_error(Some(e.to_string()));
                // The master itself refused: not trusted until a check answers master again
                // (readiness and master_verified say so). A timeout may be the network's.
                if decide::suspect_after_check(e.kind, e.io) {
                    if let Some(cur) = self.route.current().filter(|c| c.addr == addr) {
                        cur.connect_failed(Instant::now());
                    }
                }
                None
            }
        }
    }

    async fn resolve(&self, host: &str, port: u16) -> Option<SocketAddr> {
        client::resolve(host, port, self.timeouts.timeout)
            .await
            .map_err(|e| {
                warn!(route = self.route.name(), master.announced = %join_host_port(host, port), error = %e, "not routing to a master address the sentinels announce");
            })
            .ok()
    }

    fn record_ok(&mut self, i: usize, r: &MasterReport) {
        self.failures[i] = 0;
        self.last_kind[i] = None;
        self.retry_at[i] = None;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .ok();
        self.route.observed.update_sentinel(i, |s| {
            if !s.reachable && s.last_error.is_some() {
                info!(route = %self.route.name(), sentinel = %s.address, "sentinel answers again");
            }
            s.reachable = true;
            s.master = Some(r.announced());
            s.config_epoch = Some(r.config_epoch);
            s.flags = Some(r.flags.clone());
            s.other_sentinels = Some(r.other_sentinels);
            s.replicas = Some(r.replicas);
            s.last_ok_unix = now;
            s.last_error = None;
        });
    }

    fn record_err(&mut self, i: usize, e: SentinelError) {
        let route = self.route.name().to_string();
        counter!(m::SENTINEL_ERRORS, "route" => route.clone(), "sentinel" => e.addr.clone(), "kind" => e.kind.as_str())
            .increment(1);
        self.failures[i] = self.failures[i].saturating_add(1);
        if e.kind != SentinelErrorKind::UnknownMaster && e.kind != SentinelErrorKind::Protocol {
            self.sentinels[i].disconnect();
            let backoff = (self.poll_interval * 2u32.saturating_pow(self.failures[i].min(6) - 1))
                .min(MAX_BACKOFF.max(self.poll_interval));
            self.retry_at[i] = Some(Instant::now() + backoff);
        }
        // Once per episode: the first failure in a row, or a different kind of failure.
        let first = self.failures[i] == 1 || self.last_kind[i] != Some(e.kind);
        self.last_kind[i] = Some(e.kind);
        let message = e.to_string();
        self.route.observed.update_sentinel(i, |s| {
            s.reachable = false;
            s.last_error = Some(message);
        });
        // Log the first failure in a row loudly, the rest at debug: a dead sentinel polled every
        // second must not flood the log.
        if first {
            if e.kind == SentinelErrorKind::UnknownMaster {
                error!(route, sentinel = %e.addr, master = %self.route.config().master_name, "sentinel does not monitor this master name");
            } else {
                warn!(route, sentinel = %e.addr, kind = e.kind.as_str(), error = %e, "sentinel query failed");
            }
        } else {
            debug!(route, sentinel = %e.addr, kind = e.kind.as_str(), error = %e.message, "sentinel query failed again");
        }
    }
}

/// Runs `queries` (one per sentinel) until all have finished, or until answers that count
/// (`counts`) come from a majority of the `configured` sentinels and the grace that follows
/// ([`decide::straggler_deadline`]) has passed; the unfinished ones are dropped.
async fn gather<F: std::future::Future>(
    mut queries: futures_util::stream::FuturesUnordered<F>,
    configured: usize,
    counts: impl Fn(&F::Output) -> bool,
) -> Vec<F::Output> {
    let mut done = Vec::new();
    let started = tokio::time::Instant::now();
    let grace = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(grace);
    let mut answered = 0;
    let mut waiting_grace = false;
    loop {
        tokio::select! {
            r = queries.next() => match r {
                Some(out) => {
                    answered += usize::from(counts(&out));
                    done.push(out);
                    if decide::is_majority(answered, configured) && !waiting_grace {
                        waiting_grace = true;
                        grace
                            .as_mut()
                            .reset(started + decide::straggler_deadline(started.elapsed(), STRAGGLER_GRACE));
                    }
                }
                None => break,
            },
            _ = &mut grace, if waiting_grace => break,
        }
    }
    done
}

/// The sentinel an event comes from and the address it names as the master being replaced
/// (or promoted away from); `None` for a hint.
fn event_names(ev: &Event) -> Option<(usize, &str)> {
    match ev {
        Event::Switch { sentinel, old, .. } => Some((*sentinel, old)),
        Event::Promoting {
            sentinel, master, ..
        } => Some((*sentinel, master)),
        Event::Hint => None,
    }
}

/// What [`decide::event_effect`] needs to judge an event of `sentinel` naming `named`, now.
fn event_context(
    route: &Route,
    gate: &EventGate,
    stale: &[bool],
    quarantined: bool,
    sentinel: usize,
    named: &str,
) -> decide::EventContext {
    decide::EventContext {
        trusted: gate.trusts(sentinel, Instant::now()),
        stale: stale.get(sentinel).copied().unwrap_or(false),
        names_current: route
            .current()
            .map(|cur| names(named, &cur.announced, cur.addr)),
        quarantined,
    }
}

/// Whether `ev` would fence the current master now (see [`decide::event_effect`]); `stale`:
/// which sentinels the last round judged stale.
fn would_fence(route: &Route, gate: &EventGate, stale: &[bool], ev: &Event) -> bool {
    event_names(ev).is_some_and(|(sentinel, named)| {
        decide::event_effect(event_context(route, gate, stale, false, sentinel, named))
            == decide::EventEffect::Fence
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sentinel that never answers delays a gathering by the straggler grace only, once a
    /// majority has answered; without a majority, every answer is waited for.
    #[tokio::test]
    async fn gathering_waits_for_a_majority_then_a_grace() {
        type Ask = std::pin::Pin<Box<dyn std::future::Future<Output = Option<u8>> + Send>>;
        let answer = |v: Option<u8>| -> Ask { Box::pin(async move { v }) };
        let never = || -> Ask { Box::pin(std::future::pending()) };
        // (asks, configured, answers gathered)
        let rows: Vec<(Vec<Ask>, usize, usize)> = vec![
            (vec![answer(Some(1)), answer(Some(2)), never()], 3, 2),
            (vec![answer(Some(1)), answer(None), answer(Some(3))], 3, 3),
            (
                vec![
                    answer(Some(1)),
                    answer(Some(2)),
                    never(),
                    never(),
                    answer(Some(5)),
                ],
                5,
                3,
            ),
        ];
        for (asks, configured, want) in rows {
            let started = Instant::now();
            let got = gather(asks.into_iter().collect(), configured, Option::is_some).await;
            assert_eq!(got.len(), want, "{configured}");
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{:?}",
                started.elapsed()
            );
        }
        // Only a minority answers: the others are waited for (here, until they answer late).
        let late: Ask = Box::pin(async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Some(3)
        });
        let started = Instant::now();
        let got = gather(
            vec![answer(Some(1)), answer(None), late]
                .into_iter()
                .collect(),
            3,
            Option::is_some,
        )
        .await;
        assert_eq!(got.len(), 3);
        assert!(started.elapsed() >= Duration::from_millis(300));
    }
}
