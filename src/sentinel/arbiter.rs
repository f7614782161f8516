//! Arbitration: from what the reachable sentinels report, rank the master candidates.
//! Pure and synchronous so every rule is unit-tested: highest config-epoch first (a completed
//! failover raises it, so a lagging or rejoined sentinel loses), then most sentinels naming
//! the address, then the current master (no needless switch on a tie), then by address.

use super::client::MasterReport;

/// An address some sentinels name as master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Host or IP as announced.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Highest config-epoch among the sentinels naming it.
    pub config_epoch: u64,
    /// How many sentinels name it.
    pub votes: usize,
}

impl Candidate {
    /// `host:port` as announced.
    pub fn announced(&self) -> String {
        super::client::join_host_port(&self.host, self.port)
    }
}

/// Ranks the addresses named in `reports`, best first. `current` is the announced address of
/// the current master, if any.
pub fn rank(reports: &[MasterReport], current: Option<&str>) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = Vec::new();
    for r in reports {
        match out
            .iter_mut()
            .find(|c| c.host == r.host && c.port == r.port)
        {
            Some(c) => {
                c.votes += 1;
                c.config_epoch = c.config_epoch.max(r.config_epoch);
            }
            None => out.push(Candidate {
                host: r.host.clone(),
                port: r.port,
                config_epoch: r.config_epoch,
                votes: 1,
            }),
        }
    }
    out.sort_by(|a, b| {
        let is_current = |c: &Candidate| current.is_some_and(|cur| cur == c.announced());
        b.config_epoch
            .cmp(&a.config_epoch)
            .then(b.votes.cmp(&a.votes))
            .then(is_current(b).cmp(&is_current(a)))
            .then(a.announced().cmp(&b.announced()))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rep(host: &str, port: u16, epoch: u64) -> MasterReport {
        MasterReport::for_test(&format!("{host}:{port}"), epoch, "master")
    }

    #[test]
    fn highest_epoch_wins_over_majority() {
        let r = rank(
            &[rep("a", 1, 1), rep("a", 1, 1), rep("b", 2, 2)],
            Some("a:1"),
        );
        assert_eq!(r[0].announced(), "b:2");
        assert_eq!(r[1].votes, 2);
    }

    #[test]
    fn majority_within_an_epoch() {
        let r = rank(
            &[rep("a", 1, 3), rep("b", 2, 3), rep("b", 2, 3)],
            Some("a:1"),
        );
        assert_eq!(r[0].announced(), "b:2");
        assert_eq!(r[0].votes, 2);
    }

    #[test]
    fn tie_prefers_current_then_address() {
        let r = rank(&[rep("b", 2, 3), rep("a", 1, 3)], Some("b:2"));
        assert_eq!(r[0].announced(), "b:2");
        let r = rank(&[rep("b", 2, 3), rep("a", 1, 3)], None);
        assert_eq!(r[0].announced(), "a:1");
    }

    #[test]
    fn nothing_reported_nothing_ranked() {
        assert!(rank(&[], None).is_empty());
    }
}
