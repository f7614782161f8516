//! The trust rules, as one pure function of what the sentinels said ([`choose`]): which address
//! a route may move to, which reports are stale, and when the group's replica lists are needed
//! to judge. The watcher (I/O, `ROLE`, metrics, logs) and `check` both call it, so they agree.
//!
//! Rules (one table row each below):
//! - a report at a lower config-epoch than the verified master's is stale: it neither fences
//!   (its `failover_in_progress` flag included) nor is installed, and its sentinel's events
//!   neither fence nor quarantine ([`event_effect`]);
//! - an address is acceptable if a majority of the configured sentinels name it, or if it is
//!   named at a config-epoch above every other view and a majority of the configured sentinels
//!   either name it or list it as a replica of this group (`SENTINEL REPLICAS`): one sentinel
//!   alone, or sentinels of another group monitoring a master under the same name, cannot move
//!   the route;
//! - among acceptable addresses the highest config-epoch wins, then votes, then the current
//!   master, then the address; a disqualified winner (a failover in progress, quarantined) gives
//!   way to the next acceptable address at the same config-epoch, never to an older one.
//!
//! The smaller rules the watcher applies around it live here too, each with its rows:
//! [`is_majority`] (the one majority rule), [`event_effect`] (what a failover event does),
//! [`suspect_after_check`] / [`refused_by_master`] (which failures make the master suspect),
//! [`restarted`] (a restarted master), [`name_moved`] (a master announced by name) and
//! [`straggler_deadline`] (how long a round waits past a majority).

use std::io;
use std::time::Duration;

use super::arbiter::{rank, Candidate};
use super::client::MasterReport;
use crate::metrics::SentinelErrorKind;

/// What one round saw.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    /// Sentinels configured for the route (the majority is of these, not of those reachable).
    pub configured: usize,
    /// Each answering sentinel's index and report.
    pub reports: &'a [(usize, MasterReport)],
    /// The verified master: its announced address and the config-epoch it was verified at.
    pub current: Option<(&'a str, u64)>,
    /// Per answering sentinel (its index), the replicas it lists for the group, once asked for
    /// (see [`Choice::NeedMembers`]).
    pub members: Option<&'a [(usize, Vec<String>)]>,
    /// Failovers in progress as the sentinels' flags show them (sentinel index, address),
    /// claims already dismissed excluded.
    pub failing_over: &'a [(usize, String)],
}

/// What the route should do, before any `ROLE` check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// A sentinel is failing over the current master (it may promote a replica at any moment,
    /// and writes to the master from then on can be lost): fence it now, and quarantine it.
    /// The index is the sentinel showing the failover.
    FenceForFailover(usize),
    /// No acceptable address is named: keep the current master (re-checked by `ROLE`) if
    /// there is one, else keep holding.
    Keep,
    /// An address is named at a higher config-epoch by fewer than a majority: ask the
    /// sentinels for the group's replicas and decide again.
    NeedMembers,
    /// The acceptable winner is the current master.
    Current,
    /// Move: fence the current master (if any), then try these in order; the first that
    /// passes `ROLE` is installed. Empty when every acceptable address is disqualified now.
    Move(Vec<Candidate>),
}

/// A decision and what it set aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Sentinels whose report was older than the verified master's config-epoch.
    pub stale: Vec<usize>,
    /// What to do.
    pub choice: Choice,
}

/// The majority rule, the one place it is written: whether `n` sentinels are a majority of the
/// `configured` ones (of those configured, not of those reachable: a partition that hides some
/// sentinels must not shrink the majority).
pub fn is_majority(n: usize, configured: usize) -> bool {
    n * 2 > configured
}

/// The fewest sentinels that are a majority of `configured` (for messages).
pub fn majority_of(configured: usize) -> usize {
    configured / 2 + 1
}

/// How long after its start a gathering of sentinel answers (a round, the replica lists) ends
/// once a majority has answered after `took`: the grace for the rest is as long again as the
/// majority took, at least `min_grace`, so a sentinel a little farther away than the others
/// is still heard, and one slow or dead sentinel delays nothing by more than that.
pub fn straggler_deadline(took: Duration, min_grace: Duration) -> Duration {
    took + took.max(min_grace)
}

/// Applies the rules to one round's `view`; `quarantined(announced)` says whether an address
/// is held back by earlier failover evidence (see `evidence::Quarantine`).
pub fn choose(view: &View, quarantined: &dyn Fn(&str) -> bool) -> Decision {
    let floor = view.current.map_or(0, |(_, e)| e);
    let stale: Vec<usize> = view
        .reports
        .iter()
        .filter(|(_, r)| r.config_epoch < floor)
        .map(|(i, _)| *i)
        .collect();
    // A stale sentinel's claims count for nothing either: it fences nothing and disqualifies
    // nobody (only a sentinel with a report at or above the floor is heard at all).
    let failing_over: Vec<&(usize, String)> = view
        .failing_over
        .iter()
        .filter(|(i, _)| !stale.contains(i) && view.reports.iter().any(|(j, _)| j == i))
        .collect();
    let disqualified = |a: &str| failing_over.iter().any(|(_, f)| f == a) || quarantined(a);
    if let Some((cur, _)) = view.current {
        if let Some((i, _)) = failing_over.iter().find(|(_, a)| a == cur) {
            return Decision {
                stale,
                choice: Choice::FenceForFailover(*i),
            };
        }
    }
    let reports_at_floor: Vec<&(usize, MasterReport)> = view
        .reports
        .iter()
        .filter(|(_, r)| r.config_epoch >= floor)
        .collect();
    let reports: Vec<MasterReport> = reports_at_floor.iter().map(|(_, r)| r.clone()).collect();
    let current = view.current.map(|(a, _)| a);
    let ranked = rank(&reports, current);
    let majority = |n: usize| is_majority(n, view.configured);

    let mut acceptable: Vec<Candidate> = Vec::new();
    for c in ranked {
        let announced = c.announced();
        let is_current = current == Some(announced.as_str());
        let others_top = reports
            .iter()
            .filter(|r| r.announced() != announced)
            .map(|r| r.config_epoch)
            .chain(view.current.map(|(_, e)| e))
            .max();
        let ahead = others_top.is_none_or(|o| c.config_epoch > o);
        let ok = if majority(c.votes) || is_current {
            true
        } else if ahead {
            match view.members {
                None => {
                    return Decision {
                        stale,
                        choice: Choice::NeedMembers,
                    }
                }
                Some(members) => {
                    // Distinct sentinels: one that names the address and also lists it as a
                    // replica is still one sentinel.
                    let names_it = |i: usize| {
                        reports_at_floor
                            .iter()
                            .any(|(j, r)| *j == i && r.announced() == announced)
                    };
                    let listing = members
                        .iter()
                        .filter(|(i, m)| !names_it(*i) && m.contains(&announced))
                        .count();
                    majority(c.votes + listing)
                }
            }
        } else {
            false
        };
        if ok {
            acceptable.push(c);
        }
    }
    let Some(winner) = acceptable.first() else {
        return Decision {
            stale,
            choice: Choice::Keep,
        };
    };
    if current == Some(winner.announced().as_str()) {
        return Decision {
            stale,
            choice: Choice::Current,
        };
    }
    let epoch = winner.config_epoch;
    let tries: Vec<Candidate> = acceptable
        .into_iter()
        .filter(|c| c.config_epoch == epoch && !disqualified(&c.announced()))
        .collect();
    let choice = match tries.first() {
        Some(first) if current == Some(first.announced().as_str()) => Choice::Current,
        _ => Choice::Move(tries),
    };
    Decision { stale, choice }
}

/// What a failover event (a `+switch-master` naming an address as the old master, or a
/// sentinel starting to promote a replica of one) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventEffect {
    /// It names the installed master: fence it now and quarantine it (evidence of danger is
    /// cheap to honour, even from one sentinel).
    Fence,
    /// No master is installed and nothing is quarantined: quarantine the address it names, so
    /// no round installs it until the failover completes or is given up.
    Quarantine,
    /// Only a hint to ask the sentinels again: it names another address than the installed
    /// master, a quarantine is already in force, or its sentinel is stale.
    Hint,
    /// Its sentinel's events do not count now (its own poll contradicted an event it sent, or
    /// it claimed a failover for longer than the failover-timeout).
    Distrusted,
}

/// What [`event_effect`] looks at.
#[derive(Debug, Clone, Copy)]
pub struct EventContext {
    /// The sentinel's events may act (not distrusted by the event gate).
    pub trusted: bool,
    /// The sentinel's last report was older than the verified master's config-epoch: it has
    /// not heard of the current configuration, so its events may describe an old one.
    pub stale: bool,
    /// Whether the event names the installed master; `None` when none is installed.
    pub names_current: Option<bool>,
    /// A quarantine is in force already (only one address is held back at a time).
    pub quarantined: bool,
}

/// The event rule: a trusted, fresh sentinel's event naming the installed master fences it;
/// with no master installed it quarantines the address it names.
pub fn event_effect(c: EventContext) -> EventEffect {
    if !c.trusted {
        return EventEffect::Distrusted;
    }
    if c.stale {
        return EventEffect::Hint;
    }
    match c.names_current {
        Some(true) => EventEffect::Fence,
        None if !c.quarantined => EventEffect::Quarantine,
        _ => EventEffect::Hint,
    }
}

/// Whether an announced host is a name (looked up again each round) rather than an IP literal.
pub fn is_host_name(host: &str) -> bool {
    host.parse::<std::net::IpAddr>().is_err()
}

/// Whether the master announced by name has moved: the name now resolves (`resolved`; `None`
/// when it was not looked up or the lookup failed) only to addresses other than the verified
/// one, `current`. While `current` is still among them, round-robin DNS does not move the
/// route; a failed lookup is not evidence either.
pub fn name_moved(
    resolved: Option<&[std::net::SocketAddr]>,
    current: std::net::SocketAddr,
) -> bool {
    resolved.is_some_and(|all| !all.is_empty() && !all.contains(&current))
}

/// Whether a connection to the master that failed with `e` makes the master suspect (not
/// trusted until a `ROLE` check answers master again). Only the master's own answers do: it
/// refused or reset the connection, its host is unreachable, its TLS handshake failed. A
/// timeout (a lost SYN, a listen queue overflowing under a reconnect storm, a partition) says
/// nothing about the master itself. Sessions judge their connects by it.
pub fn refused_by_master(e: io::ErrorKind) -> bool {
    matches!(
        e,
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            // A TLS handshake the master failed (its certificate, its alert).
            | io::ErrorKind::InvalidData
    )
}

/// Whether a failed `ROLE` check of the master (the error's kind and the OS error behind it,
/// if any) makes the master suspect: a connect failure the master itself caused
/// ([`refused_by_master`]). Timeouts of any step, TLS, `AUTH` and protocol failures do not:
/// they may be the network's or the proxy's own configuration, and the sentinels judge those.
pub fn suspect_after_check(kind: SentinelErrorKind, io: Option<io::ErrorKind>) -> bool {
    kind == SentinelErrorKind::Connect && io.is_some_and(refused_by_master)
}

/// What a `ROLE` check of the route's master saw of the process behind its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The route's epoch the master was checked in.
    pub epoch: u64,
    /// Its replication offset, if `ROLE` gave one.
    pub offset: Option<u64>,
    /// Its `run_id` (`INFO server`), if it could be read.
    pub run_id: Option<String>,
}

/// How a restart of the master showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Its `run_id` changed: another process answers at the address.
    RunId,
    /// Its replication offset went backwards (a restart without persistence starts again from
    /// 0; a live master's offset only grows).
    Offset,
}

/// Whether the master restarted between two `ROLE` checks in one epoch (`before`, `now`): its
/// `run_id` changed (any restart, persistence or not), or its offset went backwards (a restart
/// seen without a `run_id`, say a node ACL without `+info`; or the same process whose data was
/// replaced by a full resync: what it held before is gone either way). A new epoch starts
/// afresh, so a restart before an epoch's first check is not caught.
pub fn restarted(before: Option<&Seen>, now: &Seen) -> Option<Restart> {
    let before = before.filter(|b| b.epoch == now.epoch)?;
    if let (Some(was), Some(is)) = (&before.run_id, &now.run_id) {
        if was != is {
            return Some(Restart::RunId);
        }
    }
    match (before.offset, now.offset) {
        (Some(was), Some(is)) if is < was => Some(Restart::Offset),
        _ => None,
    }
}

/// What to compare the next check with: `now`, keeping what `before` knew (same epoch) where
/// `now` could not tell (an `INFO` that failed once, a `ROLE` without an offset), so one failed
/// read does not blind the next comparison.
pub fn remembered(before: Option<&Seen>, now: Seen) -> Seen {
    match before.filter(|b| b.epoch == now.epoch) {
        Some(b) => Seen {
            epoch: now.epoch,
            offset: now.offset.or(b.offset),
            run_id: now.run_id.or_else(|| b.run_id.clone()),
        },
        None => now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_that_could_not_tell_keeps_the_baseline() {
        let seen = |epoch, offset: Option<u64>, run_id: Option<&str>| Seen {
            epoch,
            offset,
            run_id: run_id.map(str::to_string),
        };
        // (before, now, remembered)
        let rows = [
            (None, seen(1, Some(5), None), seen(1, Some(5), None)),
            (
                Some(seen(1, Some(5), Some("x"))),
                seen(1, Some(9), None),
                seen(1, Some(9), Some("x")),
            ),
            (
                Some(seen(1, Some(5), Some("x"))),
                seen(1, None, Some("y")),
                seen(1, Some(5), Some("y")),
            ),
            // Another epoch: nothing carried over.
            (
                Some(seen(1, Some(5), Some("x"))),
                seen(2, Some(0), None),
                seen(2, Some(0), None),
            ),
        ];
        for (before, now, want) in rows {
            assert_eq!(
                remembered(before.as_ref(), now.clone()),
                want,
                "{before:?} {now:?}"
            );
        }
        // A restart behind one failed INFO is still caught at the next check.
        let base = remembered(
            Some(&seen(1, Some(100), Some("x"))),
            seen(1, Some(120), None),
        );
        assert_eq!(
            restarted(Some(&base), &seen(1, Some(130), Some("y"))),
            Some(Restart::RunId)
        );
    }

    fn rep(addr: &str, epoch: u64) -> MasterReport {
        MasterReport::for_test(addr, epoch, "master")
    }

    fn moves(d: &Decision) -> Vec<String> {
        match &d.choice {
            Choice::Move(c) => c.iter().map(Candidate::announced).collect(),
            Choice::FenceForFailover(i) => vec![format!("FenceForFailover({i})")],
            other => vec![format!("{other:?}")],
        }
    }

    struct Row {
        name: &'static str,
        configured: usize,
        reports: Vec<(usize, MasterReport)>,
        current: Option<(&'static str, u64)>,
        members: Option<Vec<Vec<String>>>,
        disqualified: &'static [&'static str],
        failing_over: Vec<(usize, String)>,
        want: Vec<&'static str>,
        stale: Vec<usize>,
    }

    fn row(name: &'static str, configured: usize, reports: Vec<(usize, MasterReport)>) -> Row {
        Row {
            name,
            configured,
            reports,
            current: None,
            members: None,
            disqualified: &[],
            failing_over: vec![],
            want: vec![],
            stale: vec![],
        }
    }

    #[test]
    fn hostnames() {
        let a: std::net::SocketAddr = "10.0.0.1:6379".parse().expect("addr");
        let b: std::net::SocketAddr = "10.0.0.2:6379".parse().expect("addr");
        let rows: &[(Option<&[std::net::SocketAddr]>, bool)] = &[
            (Some(&[a]), false),
            // Round-robin DNS: the current address is still one of them.
            (Some(&[b, a]), false),
            (Some(&[b]), true),
            // Not looked up (an IP literal), or the lookup failed: not evidence.
            (None, false),
            (Some(&[]), false),
        ];
        for (resolved, want) in rows {
            assert_eq!(name_moved(*resolved, a), *want, "{resolved:?}");
        }
        for (host, name) in [
            ("redis-0.redis", true),
            ("10.0.0.1", false),
            ("::1", false),
            ("localhost", true),
        ] {
            assert_eq!(is_host_name(host), name, "{host}");
        }
    }

    #[test]
    fn stragglers() {
        let ms = Duration::from_millis;
        // (the majority answered after, deadline)
        let rows = [(0, 100), (5, 105), (100, 200), (400, 800)];
        for (took, want) in rows {
            assert_eq!(straggler_deadline(ms(took), ms(100)), ms(want), "{took}");
        }
    }

    #[test]
    fn majority() {
        // (of, configured, majority)
        let rows = [
            (0, 0, false),
            (1, 1, true),
            (0, 1, false),
            (1, 2, false),
            (2, 2, true),
            (1, 3, false),
            (2, 3, true),
            (2, 4, false),
            (3, 4, true),
            (2, 5, false),
            (3, 5, true),
        ];
        for (n, configured, want) in rows {
            assert_eq!(is_majority(n, configured), want, "{n} of {configured}");
        }
        for configured in 1..20 {
            let least = (0..=configured).find(|&n| is_majority(n, configured));
            assert_eq!(Some(majority_of(configured)), least, "{configured}");
        }
    }

    #[test]
    fn events() {
        use EventEffect::*;
        // (trusted, stale, names the installed master (None: none installed), quarantine in
        // force, effect)
        type Row = (bool, bool, Option<bool>, bool, EventEffect);
        let rows: &[Row] = &[
            (true, false, Some(true), false, Fence),
            // Fencing does not wait for the quarantine of another address to end.
            (true, false, Some(true), true, Fence),
            (true, false, Some(false), false, Hint),
            // With no master installed, the address it names is quarantined...
            (true, false, None, false, Quarantine),
            // ...unless one already is.
            (true, false, None, true, Hint),
            // A stale sentinel's events neither fence nor quarantine.
            (true, true, Some(true), false, Hint),
            (true, true, None, false, Hint),
            (false, false, Some(true), false, Distrusted),
            (false, false, None, false, Distrusted),
        ];
        for &(trusted, stale, names_current, quarantined, want) in rows {
            let c = EventContext {
                trusted,
                stale,
                names_current,
                quarantined,
            };
            assert_eq!(event_effect(c), want, "{c:?}");
        }
    }

    #[test]
    fn only_the_masters_own_failures_make_it_suspect() {
        use io::ErrorKind::*;
        use SentinelErrorKind as K;
        let rows: &[(K, Option<io::ErrorKind>, bool)] = &[
            // The master's own answers.
            (K::Connect, Some(ConnectionRefused), true),
            (K::Connect, Some(ConnectionReset), true),
            (K::Connect, Some(HostUnreachable), true),
            (K::Connect, Some(NetworkUnreachable), true),
            // A lost SYN or a full listen queue: the OS gives up, or our own bound does.
            (K::ConnectTimeout, Some(TimedOut), false),
            (K::ConnectTimeout, None, false),
            (K::Connect, Some(TimedOut), false),
            (K::Connect, Some(Other), false),
            // No OS error behind it (an address that does not parse, no connection).
            (K::Connect, None, false),
            // Connected, then no reply in time; the rest is not about reachability.
            (K::Timeout, None, false),
            (K::Tls, None, false),
            (K::Auth, None, false),
            (K::NoPerm, None, false),
            (K::Protocol, None, false),
            (K::Oversized, None, false),
        ];
        for (kind, io, want) in rows {
            assert_eq!(suspect_after_check(*kind, *io), *want, "{kind:?} {io:?}");
        }
        // A session's connect.
        let rows = [
            (ConnectionRefused, true),
            (ConnectionReset, true),
            (HostUnreachable, true),
            (InvalidData, true),
            (TimedOut, false),
            (WouldBlock, false),
            (Other, false),
        ];
        for (kind, suspect) in rows {
            assert_eq!(refused_by_master(kind), suspect, "{kind:?}");
        }
    }

    #[test]
    fn restarts() {
        let seen = |epoch, offset: Option<u64>, run_id: Option<&str>| Seen {
            epoch,
            offset,
            run_id: run_id.map(str::to_string),
        };
        let (x, y) = (Some("run-x"), Some("run-y"));
        use Restart::*;
        // (before, now, restart)
        let rows: Vec<(Option<Seen>, Seen, Option<Restart>)> = vec![
            (None, seen(1, Some(0), x), None),
            (Some(seen(1, Some(100), x)), seen(1, Some(150), x), None),
            (Some(seen(1, Some(100), x)), seen(1, Some(100), x), None),
            // Another process at the address: caught whatever its offset.
            (
                Some(seen(1, Some(100), x)),
                seen(1, Some(150), y),
                Some(RunId),
            ),
            (
                Some(seen(1, Some(100), x)),
                seen(1, Some(0), y),
                Some(RunId),
            ),
            (Some(seen(1, None, x)), seen(1, None, y), Some(RunId)),
            // The same process with an older dataset (a full resync): what it held is gone.
            (
                Some(seen(1, Some(100), x)),
                seen(1, Some(0), x),
                Some(Offset),
            ),
            // No run_id on one side (INFO not permitted): the offset decides.
            (
                Some(seen(1, Some(100), None)),
                seen(1, Some(0), None),
                Some(Offset),
            ),
            (
                Some(seen(1, Some(100), None)),
                seen(1, Some(99), y),
                Some(Offset),
            ),
            (
                Some(seen(1, Some(100), x)),
                seen(1, Some(0), None),
                Some(Offset),
            ),
            (
                Some(seen(1, Some(100), None)),
                seen(1, Some(150), None),
                None,
            ),
            // No offset either: nothing to tell by.
            (Some(seen(1, None, None)), seen(1, Some(0), None), None),
            // A new epoch (another master, or the same one verified again) starts afresh.
            (Some(seen(1, Some(100), x)), seen(2, Some(0), y), None),
        ];
        for (before, now, want) in rows {
            assert_eq!(restarted(before.as_ref(), &now), want, "{before:?} {now:?}");
        }
    }

    #[test]
    fn rules() {
        let a = "10.0.0.1:6379";
        let b = "10.0.0.2:6379";
        let c = "10.0.0.3:6379";
        let foreign = "10.9.0.1:6379";
        let replicas = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let rows = vec![
            Row {
                want: vec!["Current"],
                current: Some((a, 0)),
                ..row(
                    "all agree on the current master",
                    3,
                    vec![(0, rep(a, 0)), (1, rep(a, 0)), (2, rep(a, 0))],
                )
            },
            Row {
                want: vec!["FenceForFailover(1)"],
                current: Some((a, 0)),
                failing_over: vec![(1, a.to_string())],
                ..row(
                    "a failover of the current master in progress: fence it",
                    3,
                    vec![(0, rep(a, 0)), (1, rep(a, 0)), (2, rep(a, 0))],
                )
            },
            Row {
                want: vec![],
                failing_over: vec![(1, a.to_string())],
                ..row(
                    "no master yet, the majority's address failing over: wait",
                    3,
                    vec![(0, rep(a, 0)), (1, rep(a, 0)), (2, rep(a, 0))],
                )
            },
            Row {
                want: vec![a],
                ..row(
                    "start: the majority's master",
                    3,
                    vec![(0, rep(a, 0)), (1, rep(a, 0)), (2, rep(b, 0))],
                )
            },
            Row {
                want: vec!["NeedMembers"],
                ..row(
                    "start: one of three names an address alone: ask",
                    3,
                    vec![(0, rep(b, 0))],
                )
            },
            Row {
                want: vec!["Keep"],
                members: Some(vec![replicas(&[a, c])]),
                ..row(
                    "start: one of three names an address alone",
                    3,
                    vec![(0, rep(b, 0))],
                )
            },
            Row {
                want: vec![a],
                ..row(
                    "one configured sentinel is the majority",
                    1,
                    vec![(0, rep(a, 0))],
                )
            },
            Row {
                want: vec!["NeedMembers"],
                current: Some((a, 0)),
                ..row(
                    "a failover's leader alone at a higher epoch: ask for the replicas",
                    3,
                    vec![(0, rep(b, 1)), (1, rep(a, 0)), (2, rep(a, 0))],
                )
            },
            Row {
                want: vec![b],
                current: Some((a, 0)),
                members: Some(vec![
                    replicas(&[a, c]),
                    replicas(&[b, c]),
                    replicas(&[b, c]),
                ]),
                ..row(
                    "the leader's new master is a replica the others know: move",
                    3,
                    vec![(0, rep(b, 1)), (1, rep(a, 0)), (2, rep(a, 0))],
                )
            },
            Row {
                want: vec!["Current"],
                current: Some((a, 0)),
                members: Some(vec![replicas(&[b, c]), replicas(&[c]), replicas(&[c])]),
                ..row(
                    "one sentinel names an address and lists it too: still one sentinel",
                    3,
                    vec![(0, rep(b, 1)), (1, rep(a, 0)), (2, rep(a, 0))],
                )
            },
            Row {
                want: vec!["Current"],
                current: Some((a, 0)),
                members: Some(vec![
                    replicas(&[b, c]),
                    replicas(&[b, c]),
                    replicas(&[b, c]),
                    replicas(&["10.9.0.2:6379"]),
                ]),
                ..row(
                    "another group's sentinel at a higher epoch: ignored",
                    4,
                    vec![
                        (0, rep(a, 0)),
                        (1, rep(a, 0)),
                        (2, rep(a, 0)),
                        (3, rep(foreign, 1)),
                    ],
                )
            },
            Row {
                want: vec!["Keep"],
                current: Some((a, 0)),
                members: Some(vec![replicas(&[b, c])]),
                ..row(
                    "one reachable sentinel of three names an unknown address higher",
                    3,
                    vec![(0, rep(foreign, 1))],
                )
            },
            Row {
                want: vec!["Keep"],
                current: Some((b, 1)),
                stale: vec![0],
                ..row(
                    "a pristine sentinel names the old master at epoch 0: stale",
                    3,
                    vec![(0, rep(a, 0))],
                )
            },
            Row {
                want: vec!["Current"],
                current: Some((b, 1)),
                stale: vec![2],
                ..row(
                    "stale report beside fresh ones",
                    3,
                    vec![(0, rep(b, 1)), (1, rep(b, 1)), (2, rep(a, 0))],
                )
            },
            Row {
                want: vec![b],
                current: Some((a, 0)),
                ..row(
                    "the majority moved on",
                    3,
                    vec![(0, rep(b, 1)), (1, rep(b, 1)), (2, rep(a, 0))],
                )
            },
            Row {
                want: vec![b, c],
                current: Some((c, 2)),
                ..row(
                    "more sentinels within one epoch",
                    5,
                    vec![
                        (0, rep(b, 2)),
                        (1, rep(b, 2)),
                        (2, rep(b, 2)),
                        (3, rep(c, 2)),
                        (4, rep(c, 2)),
                    ],
                )
            },
            Row {
                want: vec!["Current"],
                current: Some((c, 2)),
                disqualified: &["10.0.0.2:6379"],
                ..row(
                    "a disqualified winner gives way to the next at its epoch",
                    5,
                    vec![
                        (0, rep(b, 2)),
                        (1, rep(b, 2)),
                        (2, rep(b, 2)),
                        (3, rep(c, 2)),
                        (4, rep(c, 2)),
                    ],
                )
            },
            Row {
                want: vec!["Current"],
                current: Some((c, 2)),
                failing_over: vec![(0, b.to_string())],
                ..row(
                    "a winner flagged failover_in_progress loses to the unflagged one at its epoch",
                    5,
                    vec![
                        (0, rep(b, 2)),
                        (1, rep(b, 2)),
                        (2, rep(b, 2)),
                        (3, rep(c, 2)),
                        (4, rep(c, 2)),
                    ],
                )
            },
            Row {
                want: vec![],
                current: Some((a, 1)),
                failing_over: vec![(0, b.to_string())],
                ..row(
                    "a flagged winner with no unflagged one at its epoch: wait, not the old master",
                    5,
                    vec![
                        (0, rep(b, 2)),
                        (1, rep(b, 2)),
                        (2, rep(b, 2)),
                        (3, rep(a, 1)),
                        (4, rep(a, 1)),
                    ],
                )
            },
            Row {
                want: vec![],
                current: Some((a, 0)),
                disqualified: &["10.0.0.2:6379"],
                members: Some(vec![replicas(&[b]), replicas(&[b]), replicas(&[b])]),
                ..row(
                    "never to an older epoch: wait",
                    3,
                    vec![(0, rep(b, 1)), (1, rep(a, 0)), (2, rep(a, 0))],
                )
            },
            Row {
                want: vec!["Current"],
                current: Some((b, 2)),
                failing_over: vec![(2, b.to_string())],
                stale: vec![2],
                ..row(
                    "a stale sentinel's failover_in_progress on the current master: no fence",
                    3,
                    vec![(0, rep(b, 2)), (1, rep(b, 2)), (2, rep(b, 1))],
                )
            },
            Row {
                want: vec!["FenceForFailover(1)"],
                current: Some((b, 2)),
                failing_over: vec![(1, b.to_string()), (2, b.to_string())],
                stale: vec![2],
                ..row(
                    "beside a stale claim, a fresh one still fences",
                    3,
                    vec![(0, rep(b, 2)), (1, rep(b, 2)), (2, rep(b, 1))],
                )
            },
            Row {
                want: vec![b],
                current: Some((a, 1)),
                failing_over: vec![(2, b.to_string())],
                stale: vec![2],
                ..row(
                    "a stale sentinel's claim does not disqualify the majority's new master",
                    3,
                    vec![(0, rep(b, 2)), (1, rep(b, 2)), (2, rep(b, 0))],
                )
            },
            Row {
                want: vec!["Current"],
                current: Some((b, 2)),
                failing_over: vec![(2, b.to_string())],
                ..row(
                    "a claim by a sentinel without a report this round is not heard",
                    3,
                    vec![(0, rep(b, 2)), (1, rep(b, 2))],
                )
            },
            Row {
                want: vec!["Current"],
                current: Some((a, 3)),
                ..row(
                    "tie at one epoch keeps the current master",
                    2,
                    vec![(0, rep(a, 3)), (1, rep(b, 3))],
                )
            },
        ];
        for r in rows {
            // The rows list replica lists in the order of the reports.
            let members: Option<Vec<(usize, Vec<String>)>> = r
                .members
                .clone()
                .map(|m| r.reports.iter().map(|(i, _)| *i).zip(m).collect());
            let view = View {
                configured: r.configured,
                reports: &r.reports,
                current: r.current,
                members: members.as_deref(),
                failing_over: &r.failing_over,
            };
            let dq = r.disqualified;
            let d = choose(&view, &|a: &str| dq.contains(&a));
            assert_eq!(moves(&d), r.want, "{}", r.name);
            assert_eq!(d.stale, r.stale, "{}", r.name);
        }
    }
}
