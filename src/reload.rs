//! What a configuration reload (SIGHUP) changes, decided from the running and the new
//! configuration alone: pure, table-tested. `run` in lib.rs applies the [`Plan`].
//!
//! A route is identified by its name, master name and listen address: a route whose three are
//! unchanged is kept (its master and sessions untouched), with any other setting applied in
//! place; otherwise it is removed and a new one added. Settings of the process that cannot
//! change while it runs keep their old value and are reported.

use std::sync::Arc;

use crate::config::{Config, PeerAccess, RouteConfig};
use crate::tls::{TlsClient, TlsServer};

/// What a reload does.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Routes with no setting changed (by name).
    pub kept: Vec<String>,
    /// Routes changed in place: their listener, master and sessions stay.
    pub changed: Vec<RouteChange>,
    /// Routes to start (new, or replacing a removed one of the same name).
    pub added: Vec<String>,
    /// Routes to stop: they stop accepting and their sessions close.
    pub removed: Vec<String>,
    /// Settings that need a restart, with old and new value; they keep their old value.
    pub needs_restart: Vec<String>,
}

/// A route changed in place.
#[derive(Debug, PartialEq, Eq)]
pub struct RouteChange {
    /// The route's name.
    pub name: String,
    /// The keys that changed (`hold_timeout`, `sentinel.addresses`, ...).
    pub keys: Vec<&'static str>,
}

impl Plan {
    /// Whether the reload changes nothing at all.
    pub fn is_noop(&self) -> bool {
        self.changed.is_empty() && self.added.is_empty() && self.removed.is_empty()
    }
}

/// Whether `new` is the same route as `old` (same name, master name and listen address; a Unix
/// socket's mode may differ: see `listen_mode` in [`route_changes`]).
fn same_route(old: &RouteConfig, new: &RouteConfig) -> bool {
    old.name == new.name
        && old.master_name == new.master_name
        && old.listen.same_socket(&new.listen)
}

/// Decides what replacing the running configuration `old` by `new` does.
pub fn plan(old: &Config, new: &Config) -> Plan {
    let mut p = Plan::default();
    for n in &new.routes {
        match old.routes.iter().find(|o| o.name == n.name) {
            Some(o) if same_route(o, n) => {
                let keys = route_changes(o, n);
                if keys.is_empty() {
                    p.kept.push(n.name.clone());
                } else {
                    p.changed.push(RouteChange {
                        name: n.name.clone(),
                        keys,
                    });
                }
            }
            Some(_) => {
                p.removed.push(n.name.clone());
                p.added.push(n.name.clone());
            }
            None => p.added.push(n.name.clone()),
        }
    }
    for o in &old.routes {
        if !new.routes.iter().any(|n| n.name == o.name) {
            p.removed.push(o.name.clone());
        }
    }
    if old.admin_listen != new.admin_listen {
        let show = |a: Option<std::net::SocketAddr>| a.map_or("off".to_string(), |a| a.to_string());
        p.needs_restart.push(format!(
            "admin listen address ({} -> {})",
            show(old.admin_listen),
            show(new.admin_listen)
        ));
    }
    let (o, n) = (old.runtime, new.runtime);
    if o.threads != n.threads {
        p.needs_restart
            .push(format!("runtime.threads ({} -> {})", o.threads, n.threads));
    }
    if o.pin_threads != n.pin_threads {
        p.needs_restart.push(format!(
            "runtime.pin_threads ({} -> {})",
            o.pin_threads, n.pin_threads
        ));
    }
    if o.yield_before_sleep != n.yield_before_sleep {
        p.needs_restart.push(format!(
            "runtime.yield_before_sleep ({} -> {})",
            o.yield_before_sleep, n.yield_before_sleep
        ));
    }
    if o.busy_poll != n.busy_poll {
        p.needs_restart.push(format!(
            "runtime.busy_poll ({} -> {})",
            humantime::format_duration(o.busy_poll),
            humantime::format_duration(n.busy_poll)
        ));
    }
    if o.engine != n.engine {
        p.needs_restart.push(format!(
            "runtime.engine ({} -> {})",
            o.engine.as_str(),
            n.engine.as_str()
        ));
    }
    p
}

/// The configuration the process runs after the reload: `new`, except the settings that need
/// a restart, which keep their running value.
pub fn effective(old: &Config, mut new: Config) -> Config {
    new.admin_listen = old.admin_listen;
    new.runtime = old.runtime;
    new
}

/// The keys whose values differ between two configurations of the same route.
pub fn route_changes(old: &RouteConfig, new: &RouteConfig) -> Vec<&'static str> {
    let (os, ns) = (&old.sentinel, &new.sentinel);
    let checks: [(&'static str, bool); 16] = [
        // Same socket path (see `same_route`), so a difference is the mode.
        ("listen_mode", old.listen != new.listen),
        ("sentinel.addresses", os.addresses != ns.addresses),
        (
            "sentinel.poll_interval",
            os.poll_interval != ns.poll_interval,
        ),
        ("sentinel.timeout", os.timeout != ns.timeout),
        ("sentinel.on_minority", os.on_minority != ns.on_minority),
        (
            "sentinel.minority_grace",
            os.minority_grace != ns.minority_grace,
        ),
        ("sentinel credentials", os.access.auth != ns.access.auth),
        (
            "sentinel tls",
            !same_client_tls(&os.access.tls, &ns.access.tls),
        ),
        ("hold_timeout", old.hold_timeout != new.hold_timeout),
        (
            "max_connections",
            old.max_connections != new.max_connections,
        ),
        (
            "connect_timeout",
            old.connect_timeout != new.connect_timeout,
        ),
        ("keepalive", old.keepalive != new.keepalive),
        (
            "tcp_user_timeout",
            old.tcp_user_timeout != new.tcp_user_timeout,
        ),
        ("node credentials", old.node.auth != new.node.auth),
        ("node tls", !same_client_tls(&old.node.tls, &new.node.tls)),
        (
            "listen tls",
            !same_server_tls(&old.listen_tls, &new.listen_tls),
        ),
    ];
    checks
        .into_iter()
        .filter(|(_, differs)| *differs)
        .map(|(key, _)| key)
        .collect()
}

/// Whether two ways of reaching peers use the same credentials and TLS settings.
pub fn same_access(a: &PeerAccess, b: &PeerAccess) -> bool {
    a.auth == b.auth && same_client_tls(&a.tls, &b.tls)
}

/// Whether `a` and `b` are the very same loaded TLS material. Every reload reads certificate
/// files again, so a reload with TLS configured always yields new material, which clients that
/// cache it (the sentinel connections) must pick up: a renewed certificate at the same path.
pub fn same_loaded_tls(a: &Option<Arc<TlsClient>>, b: &Option<Arc<TlsClient>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

/// TLS configurations compare by the settings they were loaded from (files and names).
fn same_client_tls(a: &Option<Arc<TlsClient>>, b: &Option<Arc<TlsClient>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.settings() == b.settings(),
        _ => false,
    }
}

fn same_server_tls(a: &Option<Arc<TlsServer>>, b: &Option<Arc<TlsServer>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.settings() == b.settings(),
        _ => false,
    }
}

/// The one-line summary of a plan for the reload's log line: `kept=a,b changed=c(hold_timeout)`.
pub fn summary(p: &Plan) -> String {
    let list = |v: &[String]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(",")
        }
    };
    let changed: Vec<String> = p
        .changed
        .iter()
        .map(|c| format!("{}({})", c.name, c.keys.join(" ")))
        .collect();
    format!(
        "kept={} changed={} added={} removed={}",
        list(&p.kept),
        list(&changed),
        list(&p.added),
        list(&p.removed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;

    fn cfg(text: &str) -> Config {
        Config::from_toml(text, None, "t.toml", &Overrides::default()).unwrap()
    }

    const BASE: &str = "[sentinel]\naddresses=[\"127.0.0.1:1\",\"127.0.0.1:2\"]\n\
        [[route]]\nname=\"a\"\nmaster=\"ma\"\nlisten=\"127.0.0.1:7001\"\n\
        [[route]]\nname=\"b\"\nmaster=\"mb\"\nlisten=\"127.0.0.1:7002\"\n";

    /// One row per rule: (what, new file, kept, changed (name, keys), added, removed,
    /// number of restart notes).
    #[allow(clippy::type_complexity)]
    #[test]
    fn plans() {
        let rows: Vec<(
            &str,
            String,
            &[&str],
            &[(&str, &[&str])],
            &[&str],
            &[&str],
            usize,
        )> = vec![
            ("same file", BASE.to_string(), &["a", "b"], &[], &[], &[], 0),
            (
                "hold timeout and limit of one route",
                BASE.replace(
                    "listen=\"127.0.0.1:7002\"\n",
                    "listen=\"127.0.0.1:7002\"\nhold_timeout=\"3s\"\nmax_connections=5\n",
                ),
                &["a"],
                &[("b", &["hold_timeout", "max_connections"])],
                &[],
                &[],
                0,
            ),
            (
                "sentinel list of every route",
                BASE.replace("\"127.0.0.1:2\"", "\"127.0.0.1:3\""),
                &[],
                &[
                    ("a", &["sentinel.addresses"]),
                    ("b", &["sentinel.addresses"]),
                ],
                &[],
                &[],
                0,
            ),
            (
                "sentinel timeouts and policy",
                BASE.replace(
                    "[sentinel]\n",
                    "[sentinel]\npoll_interval=\"2s\"\non_minority=\"fence\"\n",
                ),
                &[],
                &[
                    ("a", &["sentinel.poll_interval", "sentinel.on_minority"]),
                    ("b", &["sentinel.poll_interval", "sentinel.on_minority"]),
                ],
                &[],
                &[],
                0,
            ),
            (
                "credentials",
                BASE.replace("[sentinel]\n", "[sentinel]\npassword=\"x\"\n"),
                &[],
                &[
                    ("a", &["sentinel credentials"]),
                    ("b", &["sentinel credentials"]),
                ],
                &[],
                &[],
                0,
            ),
            (
                "route added",
                format!("{BASE}[[route]]\nname=\"c\"\nmaster=\"mc\"\nlisten=\"127.0.0.1:7003\"\n"),
                &["a", "b"],
                &[],
                &["c"],
                &[],
                0,
            ),
            (
                "route removed",
                BASE.split("[[route]]\nname=\"b\"")
                    .next()
                    .unwrap()
                    .to_string(),
                &["a"],
                &[],
                &[],
                &["b"],
                0,
            ),
            (
                "listen address moved: replaced",
                BASE.replace("127.0.0.1:7002", "127.0.0.1:7004"),
                &["a"],
                &[],
                &["b"],
                &["b"],
                0,
            ),
            (
                "master name changed: replaced",
                BASE.replace("master=\"mb\"", "master=\"mz\""),
                &["a"],
                &[],
                &["b"],
                &["b"],
                0,
            ),
            (
                "route renamed: one removed, one added",
                BASE.replace("name=\"b\"", "name=\"z\""),
                &["a"],
                &[],
                &["z"],
                &["b"],
                0,
            ),
            (
                "admin address and threads need a restart",
                format!("{BASE}[admin]\nlisten=\"127.0.0.1:9999\"\n[runtime]\nthreads=7\n"),
                &["a", "b"],
                &[],
                &[],
                &[],
                2,
            ),
            (
                "admin switched off needs a restart",
                format!("{BASE}[admin]\nenabled=false\n"),
                &["a", "b"],
                &[],
                &[],
                &[],
                1,
            ),
            (
                "shutdown grace applies live",
                format!("shutdown_grace=\"1s\"\n{BASE}"),
                &["a", "b"],
                &[],
                &[],
                &[],
                0,
            ),
        ];
        let old = cfg(&format!("{BASE}[runtime]\nthreads=2\n"));
        for (what, text, kept, changed, added, removed, restart) in rows {
            let text = if text.contains("[runtime]") {
                text
            } else {
                format!("{text}[runtime]\nthreads=2\n")
            };
            let p = plan(&old, &cfg(&text));
            let want_changed: Vec<RouteChange> = changed
                .iter()
                .map(|(n, k)| RouteChange {
                    name: n.to_string(),
                    keys: k.to_vec(),
                })
                .collect();
            assert_eq!(p.kept, kept, "{what}: kept");
            assert_eq!(p.changed, want_changed, "{what}: changed");
            assert_eq!(p.added, added, "{what}: added");
            assert_eq!(p.removed, removed, "{what}: removed");
            assert_eq!(
                p.needs_restart.len(),
                restart,
                "{what}: {:?}",
                p.needs_restart
            );
        }
    }

    #[test]
    fn effective_keeps_what_needs_a_restart() {
        let old = cfg(&format!("{BASE}[runtime]\nthreads=2\n"));
        let new = cfg(&format!(
            "shutdown_grace=\"1s\"\n{BASE}[admin]\nlisten=\"127.0.0.1:9999\"\n[runtime]\nthreads=7\n"
        ));
        let p = plan(&old, &new);
        assert!(p.needs_restart[0].contains("admin listen address"), "{p:?}");
        assert!(
            p.needs_restart[1].contains("runtime.threads (2 -> 7)"),
            "{p:?}"
        );
        let e = effective(&old, new);
        assert_eq!(e.admin_listen, old.admin_listen);
        assert_eq!(e.runtime.threads, 2);
        assert_eq!(e.shutdown_grace, std::time::Duration::from_secs(1));

        // The session engine too.
        let ring = cfg(&format!(
            "{BASE}[runtime]\nthreads=2\nengine=\"io_uring\"\n"
        ));
        let p = plan(&old, &ring);
        assert_eq!(
            p.needs_restart,
            vec!["runtime.engine (epoll -> io_uring)".to_string()],
            "{p:?}"
        );
        let e = effective(&old, ring);
        assert_eq!(e.runtime.engine, crate::config::Engine::Epoll);
    }

    #[test]
    fn summary_line() {
        let old = cfg(BASE);
        let new = cfg(&BASE.replace("127.0.0.1:7002", "127.0.0.1:7004").replace(
            "[[route]]\nname=\"a\"",
            "[[route]]\nhold_timeout=\"1s\"\nname=\"a\"",
        ));
        let p = plan(&old, &new);
        assert!(!p.is_noop());
        assert_eq!(
            summary(&p),
            "kept=- changed=a(hold_timeout) added=b removed=b"
        );
        assert!(plan(&old, &old).is_noop());
    }

    #[test]
    fn a_unix_sockets_mode_is_a_change_of_the_same_route() {
        let unix = BASE.replace("\"127.0.0.1:7002\"", "\"unix:/tmp/rfp-plan.sock\"");
        let old = cfg(&unix);
        let new = cfg(&unix.replace(
            "listen=\"unix:/tmp/rfp-plan.sock\"\n",
            "listen=\"unix:/tmp/rfp-plan.sock\"\nlisten_mode=\"0600\"\n",
        ));
        let p = plan(&old, &new);
        assert_eq!(p.kept, ["a"]);
        assert!(p.added.is_empty() && p.removed.is_empty(), "{p:?}");
        assert_eq!(p.changed.len(), 1);
        assert_eq!(p.changed[0].name, "b");
        assert_eq!(p.changed[0].keys, ["listen_mode"]);
    }
}
