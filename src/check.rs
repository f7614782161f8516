//! `redis-failover-proxy check`: ask every sentinel of every route, verify the winner with
//! `ROLE`, and print the topology, like `haproxy -c` / `nginx -t` but for the live system.

use std::fmt::Write as _;
use std::time::Instant;

use crate::config::{Config, RouteConfig};
use crate::sentinel::client::{peer_text, resolve, role, MasterReport, Role, Sentinel, Timeouts};
use crate::sentinel::{arbiter, decide, evidence};

/// What `check --offline` prints for a configuration that validated: where it came from
/// (`source`), the admin address and, per route, its listen address, master name and
/// sentinels, then the warnings the proxy would log at startup.
pub fn offline_summary(config: &Config, source: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "configuration OK: {source} (offline: nothing was contacted, no name was resolved)"
    );
    match config.admin_listen {
        Some(a) => {
            let _ = writeln!(out, "admin: {a}");
        }
        None => {
            let _ = writeln!(out, "admin: off");
        }
    }
    let _ = writeln!(
        out,
        "session threads: {}{}",
        config.runtime.threads,
        if config.runtime.pin_threads {
            ", pinned"
        } else {
            ""
        }
    );
    for r in &config.routes {
        let s = &r.sentinel;
        let _ = writeln!(
            out,
            "route {}: listen {}{}, sentinel master name {:?}, hold_timeout {}, max_connections {}",
            r.name,
            r.listen,
            if r.listen_tls.is_some() { " (TLS)" } else { "" },
            r.master_name,
            humantime::format_duration(r.hold_timeout),
            r.max_connections,
        );
        let _ = writeln!(
            out,
            "  sentinels ({}, majority {}): {}{}",
            s.addresses.len(),
            decide::majority_of(s.addresses.len()),
            s.addresses.join(", "),
            if s.access.tls.is_some() { " (TLS)" } else { "" },
        );
    }
    for w in config.warnings() {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}

/// Checks every route; returns the report and whether every route has a verified master.
pub async fn check(config: &Config) -> (String, bool) {
    let mut out = String::new();
    let mut all_ok = true;
    for route in &config.routes {
        all_ok &= check_route(route, &mut out).await;
    }
    (out, all_ok)
}

async fn check_route(route: &RouteConfig, out: &mut String) -> bool {
    let timeouts = Timeouts {
        timeout: route.sentinel.timeout,
    };
    let name = &route.master_name;
    let _ = writeln!(
        out,
        "route {}: listen {}, sentinel master name {:?}",
        route.name, route.listen, name
    );
    let mut reports: Vec<(usize, MasterReport)> = Vec::new();
    let mut sentinels: Vec<Sentinel> = Vec::new();
    let mut topology_shown = false;
    let n = route.sentinel.addresses.len();
    for (i, addr) in route.sentinel.addresses.iter().enumerate() {
        let mut s = Sentinel::new(addr, &route.sentinel.access, timeouts);
        match s.master(name).await {
            Ok(r) => {
                let quorum = s
                    .ckquorum(name)
                    .await
                    .map(|q| peer_text(&q))
                    .unwrap_or_else(|e| format!("CKQUORUM failed: {}", e.message));
                let _ = writeln!(
                    out,
                    "  sentinel {addr}: reachable; names {} (config-epoch {}, flags {}, quorum {}, {} other sentinels, {} replicas); {}",
                    r.announced(), r.config_epoch, r.flags, r.quorum, r.other_sentinels, r.replicas, quorum.trim()
                );
                if !topology_shown {
                    topology_shown = true;
                    if let Ok(replicas) = s.replicas(name).await {
                        for (a, flags) in replicas {
                            let (a, flags) = (peer_text(&a), peer_text(&flags));
                            let _ = writeln!(out, "    replica {a} ({flags})");
                        }
                    }
                    if let Ok(others) = s.sentinels(name).await {
                        for (a, flags) in others {
                            let (a, flags) = (peer_text(&a), peer_text(&flags));
                            let _ = writeln!(out, "    other sentinel {a} ({flags})");
                        }
                    }
                }
                reports.push((i, r));
            }
            Err(e) => {
                let _ = writeln!(
                    out,
                    "  sentinel {addr}: UNREACHABLE or unusable ({}): {e}",
                    e.kind.as_str(),
                );
            }
        }
        sentinels.push(s);
    }
    let _ = writeln!(out, "  sentinels reachable: {}/{}", reports.len(), n);
    if !decide::is_majority(reports.len(), n) {
        let _ = writeln!(
            out,
            "  warning: no majority of the configured sentinels answered; their view may be stale"
        );
    }
    // The proxy's own rules decide (sentinel::evidence::screen, then sentinel::decide), so
    // `check` approves exactly what the proxy would route to. One look sees every failover
    // claim as just begun (the proxy's first round does too): a claim the proxy has dismissed
    // after the failover-timeout still disqualifies here, which errs on the side of refusing.
    let screened = evidence::screen(
        reports,
        None,
        &mut evidence::Claims::default(),
        Instant::now(),
    );
    for (i, r) in &screened.set_aside {
        let _ = writeln!(
            out,
            "  sentinel {}: report set aside: config-epoch {} leads every other view by more than {} (the proxy waits for another sentinel to agree)",
            route.sentinel.addresses[*i],
            r.config_epoch,
            evidence::MAX_EPOCH_LEAD
        );
    }
    let reports = screened.kept;
    let failing_over = screened.failing_over;
    let disqualified = |a: &str| failing_over.iter().any(|(_, f)| f == a);
    let mut members: Option<Vec<(usize, Vec<String>)>> = None;
    let decision = loop {
        let view = decide::View {
            configured: n,
            reports: &reports,
            current: None,
            members: members.as_deref(),
            failing_over: &failing_over,
        };
        let d = decide::choose(&view, &|_: &str| false);
        if d.choice == decide::Choice::NeedMembers && members.is_none() {
            let mut lists = Vec::new();
            for (i, _) in &reports {
                let listed = sentinels[*i]
                    .replicas(name)
                    .await
                    .map(|r| r.into_iter().map(|(a, _)| a).collect())
                    .unwrap_or_default();
                lists.push((*i, listed));
            }
            members = Some(lists);
            continue;
        }
        break d;
    };
    let all = reports.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>();
    let candidates = match decision.choice {
        decide::Choice::Move(c) => c,
        _ => Vec::new(),
    };
    for other in arbiter::rank(&all, None) {
        if candidates
            .iter()
            .any(|c| c.announced() == other.announced())
        {
            continue;
        }
        let _ = writeln!(
            out,
            "  also named: {} by {}/{} sentinels at config-epoch {} (not a candidate: {})",
            other.announced(),
            other.votes,
            n,
            other.config_epoch,
            if disqualified(&other.announced()) {
                "a failover of it is in progress"
            } else {
                "neither a majority nor, at a higher config-epoch, a replica the majority knows"
            }
        );
    }
    for top in &candidates {
        let announced = top.announced();
        match resolve(&top.host, top.port, timeouts.timeout).await {
            Err(e) => {
                let _ = writeln!(out, "  candidate {announced}: rejected: {e}");
            }
            Ok(addr) => match role(addr, &top.host, &route.node, timeouts)
                .await
                .map(|c| c.role)
            {
                Ok(Role::Master) => {
                    let _ = writeln!(
                        out,
                        "  master: {announced} ({addr}) verified by ROLE; named by {}/{} sentinels at config-epoch {}",
                        top.votes, n, top.config_epoch
                    );
                    return true;
                }
                Ok(other) => {
                    let _ = writeln!(
                        out,
                        "  candidate {announced} ({addr}): rejected: ROLE says {other:?}"
                    );
                }
                Err(e) => {
                    let _ = writeln!(
                        out,
                        "  candidate {announced} ({addr}): rejected: ROLE failed ({}): {e}",
                        e.kind.as_str()
                    );
                }
            },
        }
    }
    let _ = writeln!(out, "  master: NONE verified");
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;

    #[test]
    fn offline_summary_names_routes_listen_and_sentinels() {
        let text = "[admin]\nlisten = \"127.0.0.1:8400\"\n[sentinel]\naddresses = [\"10.0.0.1:26379\", \"s2:26379\", \"s3:26379\"]\n\
                    [[route]]\nmaster = \"a\"\nlisten = \"127.0.0.1:7001\"\n\
                    [[route]]\nmaster = \"b\"\nname = \"bee\"\nlisten = \"0.0.0.0:7002\"\nsentinels = [\"10.0.0.9:26379\"]\n";
        let config = Config::from_toml(text, None, "p.toml", &Overrides::default()).unwrap();
        let out = offline_summary(&config, "p.toml");
        for want in [
            "configuration OK: p.toml (offline",
            "admin: 127.0.0.1:8400\n",
            "route a: listen 127.0.0.1:7001, sentinel master name \"a\", hold_timeout 10s, max_connections 10000\n",
            "  sentinels (3, majority 2): 10.0.0.1:26379, s2:26379, s3:26379\n",
            "route bee: listen 0.0.0.0:7002, sentinel master name \"b\"",
            "  sentinels (1, majority 1): 10.0.0.9:26379\n",
            "warning: route bee: listens on 0.0.0.0:7002",
        ] {
            assert!(out.contains(want), "{want:?} in\n{out}");
        }
        let off = Config::from_toml(
            "[admin]\nenabled = false\n[sentinel]\naddresses = [\"a:1\"]\n",
            None,
            "q.toml",
            &Overrides::default(),
        )
        .unwrap();
        assert!(offline_summary(&off, "q.toml").contains("admin: off\n"));
    }
}
