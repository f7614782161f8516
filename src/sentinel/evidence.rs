//! Bounds on what one sentinel's word can do, as pure rules over observations (table-tested
//! below): a config-epoch far ahead of every other view waits for corroboration; a lone
//! `failover_in_progress` claim that outlives the group's failover-timeout is dismissed; the
//! group's failover-timeout itself is taken from the majority of reports, not from one peer.

use std::time::{Duration, Instant};

use super::client::MasterReport;
use crate::config::MinorityPolicy;

/// How far one sentinel's config-epoch may lead every other view (the other reachable
/// sentinels and the verified master's) before it needs a second sentinel to agree. A
/// sentinel draws failover epochs from one counter shared by every master it monitors, and
/// failed elections raise it too, so an honest leader of a busy fleet can lead by many; this
/// bound only catches a jump no fleet makes between two failovers of one group.
pub const MAX_EPOCH_LEAD: u64 = 1000;

/// Sentinel's default `failover-timeout`, used while no sentinel reports one.
pub const DEFAULT_FAILOVER_TIMEOUT: Duration = Duration::from_secs(180);
/// The failover-timeout taken from reports is clamped to this range.
pub const FAILOVER_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(3600));

/// For each report's config-epoch, whether it leads every other view by more than
/// [`MAX_EPOCH_LEAD`]: such a report is set aside this round. A lone report (no other
/// sentinel answered) is never set aside: with nothing to wait for, waiting could last forever.
pub fn epoch_set_aside(epochs: &[u64], current: Option<u64>) -> Vec<bool> {
    if epochs.len() < 2 {
        return vec![false; epochs.len()];
    }
    epochs
        .iter()
        .enumerate()
        .map(|(i, &e)| {
            let others = epochs
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, &o)| o)
                .chain(current)
                .max();
            others.is_some_and(|base| e > base.saturating_add(MAX_EPOCH_LEAD))
        })
        .collect()
}

/// A round's reports once the rules that set some aside have run, ready for
/// `decide::choose`. The watcher and `check` both take their reports through [`screen`], so
/// `check` approves only what the proxy would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Screened {
    /// The reports heard (sentinel index, report).
    pub kept: Vec<(usize, MasterReport)>,
    /// The reports set aside ([`epoch_set_aside`]): a config-epoch far ahead of every other view.
    pub set_aside: Vec<(usize, MasterReport)>,
    /// Failovers the kept reports claim in progress, dismissed claims excluded (what
    /// `decide::View::failing_over` takes).
    pub failing_over: Vec<(usize, String)>,
    /// Claims (sentinel, address) dismissed at this round: they outlived the failover-timeout.
    pub dismissed_now: Vec<(usize, String)>,
    /// The group's failover-timeout according to this round's reports.
    pub failover_timeout: Duration,
}

/// Applies the screening rules to a round's `reports` (sentinel index, report): the group's
/// failover-timeout, reports too far ahead set aside (`current`: the verified master's
/// config-epoch), and each kept report's failover claim observed in `claims` at `now`.
pub fn screen(
    reports: Vec<(usize, MasterReport)>,
    current: Option<u64>,
    claims: &mut Claims,
    now: Instant,
) -> Screened {
    let failover_timeout = group_failover_timeout(
        &reports
            .iter()
            .map(|(_, r)| r.failover_timeout)
            .collect::<Vec<_>>(),
    );
    let epochs: Vec<u64> = reports.iter().map(|(_, r)| r.config_epoch).collect();
    let aside = epoch_set_aside(&epochs, current);
    let (mut kept, mut set_aside) = (Vec::new(), Vec::new());
    for (report, aside) in reports.into_iter().zip(aside) {
        if aside {
            set_aside.push(report);
        } else {
            kept.push(report);
        }
    }
    let (mut failing_over, mut dismissed_now) = (Vec::new(), Vec::new());
    for (i, r) in &kept {
        let claim = r.failover_in_progress().then(|| r.announced());
        match claims.observe(*i, claim.as_deref(), now, failover_timeout) {
            ClaimVerdict::Active => failing_over.push((*i, r.announced())),
            ClaimVerdict::DismissedNow => dismissed_now.push((*i, r.announced())),
            ClaimVerdict::Dismissed | ClaimVerdict::None => {}
        }
    }
    Screened {
        kept,
        set_aside,
        failing_over,
        dismissed_now,
        failover_timeout,
    }
}

/// Per-sentinel episodes of a condition (a stale report, a report set aside), so each is
/// logged once: records this round's `verdicts` (sentinel index, whether the condition holds)
/// in `flags` and returns the sentinels whose episode begins now. A sentinel not in `verdicts`
/// (it did not answer) keeps its flag.
pub fn episodes_begun(flags: &mut Vec<bool>, verdicts: &[(usize, bool)]) -> Vec<usize> {
    let mut begun = Vec::new();
    for &(i, holds) in verdicts {
        if flags.len() <= i {
            flags.resize(i + 1, false);
        }
        if holds && !flags[i] {
            begun.push(i);
        }
        flags[i] = holds;
    }
    begun
}

/// The group's failover-timeout: the upper median of what the reports say (one peer among
/// three cannot move it; with two, the longer wins: shrinking it would let the proxy route
/// back to a master mid-failover, stretching it only holds clients longer), clamped; the
/// Sentinel default when none says.
pub fn group_failover_timeout(reported: &[Option<Duration>]) -> Duration {
    let mut known: Vec<Duration> = reported.iter().flatten().copied().collect();
    if known.is_empty() {
        return DEFAULT_FAILOVER_TIMEOUT;
    }
    known.sort();
    known[known.len() / 2].clamp(FAILOVER_TIMEOUT_RANGE.0, FAILOVER_TIMEOUT_RANGE.1)
}

/// Tracks, per sentinel, how long it has claimed a failover of one address in progress. A real
/// failover ends (completed or given up) within the failover-timeout; a claim that lasts
/// longer is dismissed until that sentinel stops making it.
#[derive(Debug, Default)]
pub struct Claims {
    /// Per sentinel: the address claimed, since when, and whether the claim was dismissed.
    open: Vec<Option<Claim>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Claim {
    announced: String,
    since: Instant,
    dismissed: bool,
}

/// What a claim counts for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimVerdict {
    /// No claim.
    None,
    /// A failover may be under way: evidence.
    Active,
    /// It outlived the failover-timeout: ignored until withdrawn.
    Dismissed,
    /// It just outlived the failover-timeout (reported once, for the log).
    DismissedNow,
}

impl Claims {
    /// Records sentinel `i`'s latest report: `claim` is the address it flags
    /// `failover_in_progress` for, if any.
    pub fn observe(
        &mut self,
        i: usize,
        claim: Option<&str>,
        now: Instant,
        failover_timeout: Duration,
    ) -> ClaimVerdict {
        if self.open.len() <= i {
            self.open.resize(i + 1, None);
        }
        let slot = &mut self.open[i];
        let Some(announced) = claim else {
            *slot = None;
            return ClaimVerdict::None;
        };
        match slot {
            Some(c) if c.announced == announced => {
                if c.dismissed {
                    ClaimVerdict::Dismissed
                } else if now.duration_since(c.since) > failover_timeout {
                    c.dismissed = true;
                    ClaimVerdict::DismissedNow
                } else {
                    ClaimVerdict::Active
                }
            }
            _ => {
                *slot = Some(Claim {
                    announced: announced.to_string(),
                    since: now,
                    dismissed: false,
                });
                ClaimVerdict::Active
            }
        }
    }

    /// Whether sentinel `i`'s claim about `announced` was dismissed.
    pub fn dismissed(&self, i: usize, announced: &str) -> bool {
        self.open
            .get(i)
            .and_then(Option::as_ref)
            .is_some_and(|c| c.dismissed && c.announced == announced)
    }
}

/// What a round's count of answering sentinels calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Minority {
    /// A majority answered (`recovered`: after a minority episode).
    Majority {
        /// A minority episode just ended.
        recovered: bool,
    },
    /// Fewer than a majority answered; routing goes on (`started`: the episode begins now).
    Minority {
        /// The episode begins now.
        started: bool,
    },
    /// Fewer than a majority for the grace period with `on_minority = "fence"`: no routing on
    /// a minority's word (fence the master if any).
    Fence,
}

/// The minority rule: `since` is when the current minority episode began (updated in place).
pub fn minority(
    reachable: usize,
    configured: usize,
    since: &mut Option<Instant>,
    policy: MinorityPolicy,
    grace: Duration,
    now: Instant,
) -> Minority {
    if super::decide::is_majority(reachable, configured) {
        return Minority::Majority {
            recovered: since.take().is_some(),
        };
    }
    let started = since.is_none();
    let began = *since.get_or_insert(now);
    if policy == MinorityPolicy::Fence && now.duration_since(began) >= grace {
        return Minority::Fence;
    }
    Minority::Minority { started }
}

/// An address held back from routing because a failover away from it started (an event, or
/// `failover_in_progress` in a poll), whether or not it was the installed master then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantine {
    /// The address, as announced.
    pub announced: String,
    /// The highest config-epoch known when the evidence came; a report above it means the
    /// failover completed.
    pub config_epoch: u64,
    /// The sentinel whose event or poll showed the failover.
    pub sentinel: Option<usize>,
    /// Whether an event (not a poll) showed it.
    pub by_event: bool,
    /// When it ends anyway (the group's failover-timeout after the evidence).
    pub until: Instant,
}

/// What this round's reports say about a quarantine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuarantineOutcome {
    /// Still in force.
    Holds,
    /// The failover completed (a report at a higher config-epoch).
    Completed,
    /// The sentinel running it names the address again without `failover_in_progress`: given
    /// up. `Some(s)`: the evidence was an event of sentinel `s`, which its own poll now
    /// contradicts.
    Abandoned(Option<usize>),
    /// Nothing said either way within the failover-timeout.
    Expired,
}

impl Quarantine {
    /// Applies this round's reports (sentinel index, report) at `now`.
    pub fn outcome(&self, reports: &[(usize, MasterReport)], now: Instant) -> QuarantineOutcome {
        if reports
            .iter()
            .any(|(_, r)| r.config_epoch > self.config_epoch)
        {
            return QuarantineOutcome::Completed;
        }
        let abandoned = self.sentinel.is_some_and(|s| {
            reports.iter().any(|(i, r)| {
                *i == s && r.announced() == self.announced && !r.failover_in_progress()
            })
        });
        if abandoned {
            return QuarantineOutcome::Abandoned(self.sentinel.filter(|_| self.by_event));
        }
        if now >= self.until {
            return QuarantineOutcome::Expired;
        }
        QuarantineOutcome::Holds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rep(addr: &str, epoch: u64, flags: &str) -> MasterReport {
        MasterReport::for_test(addr, epoch, flags)
    }

    #[test]
    fn minority_rows() {
        let t0 = Instant::now();
        let g = Duration::from_secs(5);
        let s = Duration::from_secs;
        use MinorityPolicy::{Fence, Keep};
        // (reachable of 3, episode began this long before, policy, at, want)
        type Row = (usize, Option<u64>, MinorityPolicy, u64, Minority);
        let rows: &[Row] = &[
            (3, None, Keep, 0, Minority::Majority { recovered: false }),
            (2, Some(0), Keep, 1, Minority::Majority { recovered: true }),
            (1, None, Keep, 0, Minority::Minority { started: true }),
            (1, Some(0), Keep, 60, Minority::Minority { started: false }),
            (1, Some(0), Fence, 4, Minority::Minority { started: false }),
            (1, Some(0), Fence, 5, Minority::Fence),
            (0, None, Fence, 0, Minority::Minority { started: true }),
        ];
        for (reachable, began, policy, at, want) in rows {
            let mut since = began.map(|b| t0 + s(b));
            let got = minority(*reachable, 3, &mut since, *policy, g, t0 + s(*at));
            assert_eq!(got, *want, "{reachable} {began:?} {policy:?} {at}");
        }
    }

    #[test]
    fn quarantine_outcomes() {
        use QuarantineOutcome::*;
        let t0 = Instant::now();
        let q = |by_event| Quarantine {
            announced: "a:1".into(),
            config_epoch: 3,
            sentinel: Some(0),
            by_event,
            until: t0 + Duration::from_secs(6),
        };
        let fip = "master,failover_in_progress";
        // (evidence by event, reports, seconds after t0, outcome)
        type Row = (bool, Vec<(usize, MasterReport)>, u64, QuarantineOutcome);
        let rows: Vec<Row> = vec![
            (true, vec![(0, rep("a:1", 3, fip))], 1, Holds),
            (true, vec![(1, rep("a:1", 3, "master"))], 1, Holds),
            (true, vec![(0, rep("b:2", 4, "master"))], 1, Completed),
            (true, vec![(2, rep("b:2", 4, "master"))], 1, Completed),
            (
                true,
                vec![(0, rep("a:1", 3, "master"))],
                1,
                Abandoned(Some(0)),
            ),
            (
                false,
                vec![(0, rep("a:1", 3, "master"))],
                1,
                Abandoned(None),
            ),
            (true, vec![(0, rep("a:1", 3, fip))], 7, Expired),
            (true, vec![], 7, Expired),
        ];
        for (by_event, reports, secs, want) in rows {
            let got = q(by_event).outcome(&reports, t0 + Duration::from_secs(secs));
            assert_eq!(got, want, "{by_event} {reports:?} {secs}");
        }
    }

    #[test]
    fn epoch_leads() {
        // (epochs reported, current master's, which are set aside)
        let rows: &[(&[u64], Option<u64>, &[bool])] = &[
            (&[0, 0, 0], Some(0), &[false, false, false]),
            // An honest failover: the leader is one ahead until the others hear of it.
            (&[1, 0, 0], Some(0), &[false, false, false]),
            // A busy fleet's shared epoch counter: a big honest jump.
            (&[957, 3, 3], Some(3), &[false, false, false]),
            (&[5000, 0, 0], Some(0), &[true, false, false]),
            (&[u64::MAX, 0, 0], Some(0), &[true, false, false]),
            // Two agree: corroborated.
            (&[5000, 5000, 0], Some(0), &[false, false, false]),
            // Alone: nothing to wait for, never set aside.
            (&[5000], None, &[false]),
            (&[5000], Some(3), &[false]),
            // The verified master's epoch counts as a view.
            (&[1004, 3], Some(3), &[true, false]),
            (&[1003, 3], Some(3), &[false, false]),
        ];
        for (epochs, current, want) in rows {
            assert_eq!(
                epoch_set_aside(epochs, *current),
                want.to_vec(),
                "{epochs:?} {current:?}"
            );
        }
    }

    #[test]
    fn screening() {
        let t0 = Instant::now();
        let fip = "master,failover_in_progress";
        let ft = Some(Duration::from_secs(6));
        let with_ft = |mut r: MasterReport| {
            r.failover_timeout = ft;
            r
        };
        // (name, reports, verified master's config-epoch, seconds after the claims began,
        // kept, set aside, failing over, dismissed now)
        type Row = (
            &'static str,
            Vec<(usize, MasterReport)>,
            Option<u64>,
            u64,
            Vec<usize>,
            Vec<usize>,
            Vec<usize>,
            Vec<usize>,
        );
        let rows: Vec<Row> = vec![
            (
                "all heard",
                vec![(0, rep("a:1", 0, "master")), (1, rep("a:1", 0, "master"))],
                Some(0),
                0,
                vec![0, 1],
                vec![],
                vec![],
                vec![],
            ),
            (
                "a report 5,000 ahead is set aside, its claim unheard",
                vec![
                    (0, rep("a:1", 0, "master")),
                    (1, rep("a:1", 0, "master")),
                    (2, rep("b:2", 5000, fip)),
                ],
                None,
                0,
                vec![0, 1],
                vec![2],
                vec![],
                vec![],
            ),
            (
                "a fresh claim is evidence",
                vec![
                    (0, with_ft(rep("a:1", 0, fip))),
                    (1, rep("a:1", 0, "master")),
                ],
                Some(0),
                0,
                vec![0, 1],
                vec![],
                vec![0],
                vec![],
            ),
            (
                "a claim older than the failover-timeout is dismissed",
                vec![
                    (0, with_ft(rep("a:1", 0, fip))),
                    (1, with_ft(rep("a:1", 0, "master"))),
                ],
                Some(0),
                7,
                vec![0, 1],
                vec![],
                vec![],
                vec![0],
            ),
        ];
        for (name, reports, current, secs, kept, aside, failing, dismissed) in rows {
            let mut claims = Claims::default();
            // The claims began at t0 (as a one-shot `check` sees every claim: just begun).
            for (i, r) in &reports {
                let claim = r.failover_in_progress().then(|| r.announced());
                claims.observe(*i, claim.as_deref(), t0, Duration::from_secs(6));
            }
            let got = screen(
                reports,
                current,
                &mut claims,
                t0 + Duration::from_secs(secs),
            );
            fn ids<T>(v: &[(usize, T)]) -> Vec<usize> {
                v.iter().map(|(i, _)| *i).collect()
            }
            assert_eq!(ids(&got.kept), kept, "{name}: kept");
            assert_eq!(ids(&got.set_aside), aside, "{name}: set aside");
            assert_eq!(ids(&got.failing_over), failing, "{name}: failing over");
            assert_eq!(ids(&got.dismissed_now), dismissed, "{name}: dismissed");
        }
    }

    #[test]
    fn episodes_are_logged_once() {
        let mut flags = Vec::new();
        // (this round's verdicts, episodes beginning now)
        type Row<'a> = (&'a [(usize, bool)], &'a [usize]);
        let rows: &[Row] = &[
            (&[(0, false), (2, true)], &[2]),
            // Stale again: the same episode, not logged again.
            (&[(0, false), (2, true)], &[]),
            // Silent this round: its episode goes on.
            (&[(0, true)], &[0]),
            (&[(2, true)], &[]),
            // Caught up, then stale again: a new episode.
            (&[(2, false)], &[]),
            (&[(0, true), (2, true)], &[2]),
        ];
        for (verdicts, want) in rows {
            assert_eq!(episodes_begun(&mut flags, verdicts), *want, "{verdicts:?}");
        }
    }

    #[test]
    fn failover_timeout_is_the_median() {
        let s = Duration::from_secs;
        assert_eq!(group_failover_timeout(&[]), DEFAULT_FAILOVER_TIMEOUT);
        assert_eq!(
            group_failover_timeout(&[None, None]),
            DEFAULT_FAILOVER_TIMEOUT
        );
        assert_eq!(group_failover_timeout(&[Some(s(6))]), s(6));
        // One peer cannot stretch it.
        assert_eq!(
            group_failover_timeout(&[Some(s(6)), Some(s(6)), Some(s(999_999))]),
            s(6)
        );
        assert_eq!(
            group_failover_timeout(&[Some(Duration::ZERO), Some(s(6)), Some(s(6))]),
            s(6)
        );
        // Two views: the longer (shrinking would be the dangerous direction).
        assert_eq!(
            group_failover_timeout(&[Some(Duration::ZERO), Some(s(6))]),
            s(6)
        );
        assert_eq!(
            group_failover_timeout(&[Some(Duration::ZERO)]),
            FAILOVER_TIMEOUT_RANGE.0
        );
    }

    #[test]
    fn claims_expire_and_rearm() {
        let t0 = Instant::now();
        let ft = Duration::from_secs(6);
        let mut c = Claims::default();
        assert_eq!(c.observe(0, Some("a:1"), t0, ft), ClaimVerdict::Active);
        assert_eq!(
            c.observe(0, Some("a:1"), t0 + Duration::from_secs(5), ft),
            ClaimVerdict::Active
        );
        assert_eq!(
            c.observe(0, Some("a:1"), t0 + Duration::from_secs(7), ft),
            ClaimVerdict::DismissedNow
        );
        assert!(c.dismissed(0, "a:1"));
        assert_eq!(
            c.observe(0, Some("a:1"), t0 + Duration::from_secs(60), ft),
            ClaimVerdict::Dismissed
        );
        // Another sentinel's claim is its own.
        assert_eq!(
            c.observe(2, Some("a:1"), t0 + Duration::from_secs(60), ft),
            ClaimVerdict::Active
        );
        // Withdrawn, then made again: a new claim.
        assert_eq!(
            c.observe(0, None, t0 + Duration::from_secs(61), ft),
            ClaimVerdict::None
        );
        assert_eq!(
            c.observe(0, Some("a:1"), t0 + Duration::from_secs(62), ft),
            ClaimVerdict::Active
        );
        // A claim about another address is new too.
        assert_eq!(
            c.observe(0, Some("b:2"), t0 + Duration::from_secs(63), ft),
            ClaimVerdict::Active
        );
    }
}
