//! The files of deploy/ against real processes: the supervisord program runs the proxy in
//! front of a real topology, and the Grafana dashboard and the Prometheus alert rules use only
//! metrics the proxy exports.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::*;

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read_repo_file(rel: &str) -> String {
    std::fs::read_to_string(repo_file(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// `text` with `from` replaced by `to`; panics if `from` is absent, so a change to the repo's
/// file breaks this test loudly instead of silently testing something else.
fn substitute(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "expected {from:?} in the repo's file; update tests/deploy.rs with it"
    );
    text.replace(from, to)
}

/// A `supervisord -n` child; stopped (with its programs) when dropped.
struct Supervisord {
    conf: PathBuf,
    child: Option<Child>,
}

impl Supervisord {
    fn ctl(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new("supervisorctl")
            .arg("-c")
            .arg(&self.conf)
            .args(args)
            .output()
            .expect("run supervisorctl");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    }

    /// `supervisorctl shutdown`, then waits for supervisord to exit (SIGKILL after 30 s).
    fn shutdown(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = self.ctl(&["shutdown"]);
        exit_within(&mut child, Duration::from_secs(30))
    }
}

impl Drop for Supervisord {
    fn drop(&mut self) {
        // SIGKILL would orphan the proxy; `shutdown` stops it first.
        if self.child.is_some() {
            self.shutdown();
        }
    }
}

#[test]
fn supervisord_runs_the_repos_program_in_front_of_a_real_topology() {
    if !require("supervisord") || !require("supervisorctl") || !require("redis-sentinel") {
        return;
    }
    let topology = Topology::start(5000);
    let dir = tempdir();
    let d = dir.path();
    let (port, admin) = (free_port(), free_port());
    let sentinels: Vec<String> = topology
        .sentinel_addrs()
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect();
    let proxy_conf = d.join("proxy.toml");
    std::fs::write(
        &proxy_conf,
        format!(
            "[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
             [sentinel]\naddresses = [{}]\npoll_interval = \"250ms\"\n\
             [[route]]\nmaster = \"{MASTER_NAME}\"\nlisten = \"127.0.0.1:{port}\"\n",
            sentinels.join(", ")
        ),
    )
    .expect("proxy.toml");

    // The repository's [program] section, with this test's binary, config and log file.
    let program = read_repo_file("deploy/supervisord/redis-failover-proxy.conf");
    let program = substitute(
        &program,
        "command=/usr/local/bin/redis-failover-proxy --config /etc/redis-failover-proxy/proxy.toml",
        &format!("command={BIN} --config {}", proxy_conf.display()),
    );
    // The test runs as whoever runs cargo; the system account need not exist here.
    let program = substitute(
        &program,
        "\nuser=redis-failover-proxy\n",
        "\n;user=redis-failover-proxy\n",
    );
    let log = d.join("redis-failover-proxy.log");
    let program = substitute(
        &program,
        "stdout_logfile=/var/log/supervisor/redis-failover-proxy.log",
        &format!("stdout_logfile={}", log.display()),
    );
    let conf = d.join("supervisord.conf");
    std::fs::write(
        &conf,
        format!(
            "[supervisord]\nlogfile=%(here)s/supervisord.log\npidfile=%(here)s/supervisord.pid\n\
             childlogdir=%(here)s\n\n\
             [unix_http_server]\nfile=%(here)s/supervisor.sock\n\n\
             [supervisorctl]\nserverurl=unix://%(here)s/supervisor.sock\n\n\
             [rpcinterface:supervisor]\n\
             supervisor.rpcinterface_factory=supervisor.rpcinterface:make_main_rpcinterface\n\n\
             {program}"
        ),
    )
    .expect("supervisord.conf");

    let child = Command::new("supervisord")
        .arg("-n")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.join("supervisord.stderr")).expect("stderr file"))
        .spawn()
        .expect("spawn supervisord");
    let mut sup = Supervisord {
        conf: conf.clone(),
        child: Some(child),
    };
    let logs = || {
        format!(
            "supervisord.log:\n{}\nproxy log:\n{}",
            std::fs::read_to_string(d.join("supervisord.log")).unwrap_or_default(),
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    };

    let waited = std::panic::catch_unwind(|| {
        wait_until(
            Duration::from_secs(30),
            "the proxy under supervisord answers /readyz 200",
            || http_get(admin, "/readyz").is_some_and(|(c, _)| c == 200),
        )
    });
    assert!(waited.is_ok(), "not ready\n{}", logs());
    // In front of the lab: a client through the proxy reaches the sentinels' master.
    let master = topology.master_port().expect("a master");
    let mut c = Client::connect(port);
    assert_eq!(c.node_port().expect("INFO through the proxy"), master);
    drop(c);

    // STARTING until it has been up for startsecs (1 s), then RUNNING.
    let mut status = String::new();
    let running = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(
            Duration::from_secs(10),
            "supervisorctl status says RUNNING",
            || {
                status = sup.ctl(&["status", "redis-failover-proxy"]).1;
                status.contains("RUNNING")
            },
        )
    }));
    assert!(running.is_ok(), "status: {status}\n{}", logs());

    let (code, out) = sup.ctl(&["stop", "redis-failover-proxy"]);
    assert_eq!(code, 0, "stop: {out}\n{}", logs());
    let (_, status) = sup.ctl(&["status", "redis-failover-proxy"]);
    assert!(status.contains("STOPPED"), "status after stop: {status}");
    // Exited by itself on SIGTERM with status 0, not SIGKILLed after stopwaitsecs.
    let sup_log = std::fs::read_to_string(d.join("supervisord.log")).unwrap_or_default();
    assert!(
        sup_log.contains("stopped: redis-failover-proxy (exit status 0)"),
        "the proxy did not exit cleanly\n{}",
        logs()
    );
    assert!(
        http_get(admin, "/healthz").is_none(),
        "admin still answers after stop"
    );
    let st = sup.shutdown().expect("supervisord exits after shutdown");
    assert!(st.success(), "supervisord: {st:?}");
}

/// Metric names used in `text` (PromQL expressions, or a whole file of them): every token
/// that starts with one of the proxy's prefixes. Prose mentions count too, on purpose: a
/// name an alert's description tells an operator to look at must exist as well.
fn used_metric_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| {
            ["redis_failover_proxy_", "process_"]
                .iter()
                .any(|p| t.starts_with(p) && t.len() > p.len())
        })
        .map(str::to_string)
        .collect()
}

/// Names a scrape offers: every sample's name, and for each `# TYPE` histogram or summary
/// the `_bucket`/`_sum`/`_count` series a query may use.
fn exported_metric_names(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scrape.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                names.insert(name.to_string());
                let suffixes: &[&str] = match kind {
                    "histogram" => &["_bucket", "_sum", "_count"],
                    "summary" => &["_sum", "_count"],
                    _ => &[],
                };
                for s in suffixes {
                    names.insert(format!("{name}{s}"));
                }
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

#[test]
fn metric_names_are_found_in_queries_and_scrapes() {
    let cases: &[(&str, &[&str])] = &[
        (
            "redis_failover_proxy_sentinels_reachable < floor(redis_failover_proxy_sentinels_configured / 2) + 1",
            &[
                "redis_failover_proxy_sentinels_configured",
                "redis_failover_proxy_sentinels_reachable",
            ],
        ),
        (
            "process_open_fds / process_max_fds > 0.8 and on (job, instance) redis_failover_proxy_build_info",
            &["process_max_fds", "process_open_fds", "redis_failover_proxy_build_info"],
        ),
        (
            "histogram_quantile(0.99, sum by (le) (rate(redis_failover_proxy_fence_duration_seconds_bucket{route=~\"$route\"}[5m])))",
            &["redis_failover_proxy_fence_duration_seconds_bucket"],
        ),
        // Labels, functions and a bare prefix (prose like "process_*") are not names.
        ("sum by (process, route) (rate(x[1m])) process_", &[]),
    ];
    for (expr, want) in cases {
        let got: Vec<String> = used_metric_names(expr).into_iter().collect();
        assert_eq!(got, *want, "{expr}");
    }
    let scrape = "# TYPE a_seconds histogram\na_seconds_bucket{le=\"0.1\"} 1\n\
                  # TYPE b summary\nb{quantile=\"0.5\"} 1\nc_total{x=\"y\"} 0\nd 1\n";
    let got = exported_metric_names(scrape);
    for name in [
        "a_seconds",
        "a_seconds_bucket",
        "a_seconds_sum",
        "a_seconds_count",
        "b",
        "b_sum",
        "b_count",
        "c_total",
        "d",
    ] {
        assert!(got.contains(name), "{name} missing from {got:?}");
    }
    assert!(!got.contains("b_bucket"));
}

#[test]
fn dashboard_and_alert_rules_use_only_metrics_the_proxy_exports() {
    if !require("redis-sentinel") {
        return;
    }
    let topology = Topology::start(5000);
    // A second route for a master no sentinel knows: its clients are held and time out, so
    // the hold metrics (recorded when a hold ends) appear in the scrape.
    let held_port = free_port();
    let extra: &'static str = Box::leak(
        format!(
            "\n[[route]]\nname = \"unknown\"\nmaster = \"no-such-master\"\n\
             listen = \"127.0.0.1:{held_port}\"\nhold_timeout = \"200ms\"\n"
        )
        .into_boxed_str(),
    );
    let proxy = Proxy::start_with(
        &topology.sentinel_ports(),
        ProxyOpts {
            route_extra: extra,
            ..ProxyOpts::default()
        },
    );
    let route = [("route", MASTER_NAME)];
    proxy.wait_metric(
        Duration::from_secs(15),
        "the route has a verified master",
        "redis_failover_proxy_master_verified",
        &route,
        |v| v == 1.0,
    );
    // A session (bytes, sessions closed at the fence), a held client that times out, and a
    // failover (switch, fence and its duration).
    let mut session = Client::connect(proxy.port);
    assert_eq!(session.cmd(&["PING"]).expect("PING"), "+PONG");
    let mut held = Client::connect(held_port);
    assert!(
        held.closed_within(Duration::from_secs(10)),
        "a held client of a route without a master is closed after hold_timeout"
    );
    let new_master = topology.failover();
    proxy.wait_routes_to(&format!("127.0.0.1:{new_master}"));
    assert!(session.closed_within(Duration::from_secs(10)), "fenced");
    proxy.wait_metric(
        Duration::from_secs(10),
        "a fence duration is recorded",
        "redis_failover_proxy_fence_duration_seconds_count",
        &route,
        |v| v >= 1.0,
    );
    proxy.wait_metric(
        Duration::from_secs(10),
        "a timed-out hold is counted",
        "redis_failover_proxy_holds_total",
        &[("route", "unknown"), ("outcome", "timed_out")],
        |v| v >= 1.0,
    );

    let (code, scrape) = proxy.http("/metrics").expect("/metrics");
    assert_eq!(code, 200);
    let exported = exported_metric_names(&scrape);
    let mut report = String::new();
    for file in [
        "deploy/grafana/redis-failover-proxy.json",
        "deploy/prometheus/alerts.yml",
    ] {
        let used = used_metric_names(&read_repo_file(file));
        assert!(!used.is_empty(), "{file} uses no metric at all?");
        let missing: Vec<&String> = used.difference(&exported).collect();
        eprintln!(
            "{file}: {} metric names used, {} missing from the scrape",
            used.len(),
            missing.len()
        );
        for m in &missing {
            eprintln!("  MISSING {m}");
            report.push_str(&format!("\n  {file}: {m}"));
        }
    }
    assert!(
        report.is_empty(),
        "metric names used but not exported:{report}\n(exported: {exported:?})"
    );
}
