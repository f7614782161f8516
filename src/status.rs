//! What `/status` and `/readyz` report: a snapshot of each route ([`RouteView`]) and the
//! readiness rule over snapshots ([`readiness`], pure and table-tested), so the endpoints say
//! what the proxy does: a route whose master refuses connections is not ready, whatever the
//! sentinels still say.

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
    /// Whether they are a majority of those configured.
    pub sentinel_majority: bool,
    /// What each sentinel last said.
    pub sentinels: Vec<SentinelStatus>,
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
        let sentinels = route.sentinel_status();
        let reachable = sentinels.iter().filter(|s| s.reachable).count();
        RouteView {
            name: route.name().to_string(),
            master_name: route.config().master_name.clone(),
            listen: route.config().listen.to_string(),
            state,
            master,
            clients_open: route.open_clients(),
            clients_held: route.held_clients(),
            last_fence: route.last_fence(),
            last_node_error: route.node_error(),
            sentinels_reachable: reachable,
            sentinel_majority: reachable > sentinels.len() / 2,
            sentinels,
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
            sentinel_majority: reachable > configured / 2,
            sentinels: (0..configured)
                .map(|i| SentinelStatus {
                    reachable: i < reachable,
                    ..Default::default()
                })
                .collect(),
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
}
