//! `redis-failover-proxy check`: ask every sentinel of every route, verify the winner with
//! `ROLE`, and print the topology, like `haproxy -c` / `nginx -t` but for the live system.

use std::fmt::Write as _;

use crate::config::{Config, RouteConfig};
use crate::sentinel::arbiter;
use crate::sentinel::client::{peer_text, resolve, role, MasterReport, Role, Sentinel, Timeouts};

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
    let mut reports: Vec<MasterReport> = Vec::new();
    let mut topology_shown = false;
    let n = route.sentinel.addresses.len();
    for addr in &route.sentinel.addresses {
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
                reports.push(r);
            }
            Err(e) => {
                let _ = writeln!(
                    out,
                    "  sentinel {addr}: UNREACHABLE or unusable ({}): {e}",
                    e.kind.as_str(),
                );
            }
        }
    }
    let _ = writeln!(out, "  sentinels reachable: {}/{}", reports.len(), n);
    if reports.len() <= n / 2 {
        let _ = writeln!(
            out,
            "  warning: no majority of the configured sentinels answered; their view may be stale"
        );
    }
    let ranked = arbiter::rank(&reports, None);
    for other in ranked.iter().skip(1) {
        let _ = writeln!(
            out,
            "  also named: {} by {}/{} sentinels at config-epoch {} (lower rank, not a candidate)",
            other.announced(),
            other.votes,
            n,
            other.config_epoch
        );
    }
    if let Some(top) = ranked.first() {
        let announced = top.announced();
        match resolve(&top.host, top.port, timeouts.timeout).await {
            Err(e) => {
                let _ = writeln!(out, "  candidate {announced}: rejected: {e}");
            }
            Ok(addr) => match role(addr, &top.host, &route.node, timeouts).await {
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
