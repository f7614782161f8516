//! What an operator observes of a running proxy in front of real `redis-server` and
//! `redis-sentinel` processes: every documented counter series from startup at 0, the build and
//! process metrics, `master_info` following the master, and the `status` command.

mod support;

use std::collections::BTreeMap;

use support::*;

type Labels = BTreeMap<String, String>;

/// `name{a="x",b="y"} value` lines of a Prometheus text body (label values here carry no
/// quotes or commas).
fn series(body: &str) -> Vec<(String, Labels, f64)> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            let (name, labels) = match key.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (key, ""),
            };
            let labels = labels
                .split(',')
                .filter(|p| !p.is_empty())
                .filter_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    Some((k.to_string(), v.trim_matches('"').to_string()))
                })
                .collect();
            Some((name.to_string(), labels, value))
        })
        .collect()
}

/// Backticked words of `text`, in order.
fn ticked(text: &str) -> Vec<String> {
    text.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_string())
        .collect()
}

/// Every counter series docs/metrics.md promises for one route named `route` with
/// `sentinels`: (full name, labels), one per combination of the label values it lists.
fn documented_counters(route: &str, sentinels: &[String]) -> Vec<(String, Labels)> {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/metrics.md"),
    )
    .expect("docs/metrics.md");
    let section = doc
        .split("## The proxy's metrics")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("the proxy's metrics section");
    let mut out = Vec::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let cols: Vec<&str> = row.split(" | ").collect();
        let name = format!("redis_failover_proxy_{}", ticked(cols[0])[0]);
        if cols[1].trim() != "counter" {
            continue;
        }
        let mut combos: Vec<Labels> = vec![Labels::new()];
        if !cols[2].contains("(no `route`)") {
            combos[0].insert("route".into(), route.into());
        }
        for part in cols[2].split(';') {
            let Some(label) = ticked(part).into_iter().next() else {
                continue;
            };
            let values: Vec<String> = if label == "sentinel" {
                sentinels.to_vec()
            } else {
                match part.split_once(':') {
                    Some((_, v)) => ticked(v),
                    None => continue,
                }
            };
            let label = &label;
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    values.iter().map(move |v| {
                        let mut c = c.clone();
                        c.insert(label.clone(), v.clone());
                        c
                    })
                })
                .collect();
        }
        out.extend(combos.into_iter().map(|c| (name.clone(), c)));
    }
    out
}

fn master_info(body: &str) -> Vec<String> {
    series(body)
        .into_iter()
        .filter(|(n, _, _)| n == "redis_failover_proxy_master_info")
        .map(|(_, l, v)| {
            assert_eq!(v, 1.0);
            l["addr"].clone()
        })
        .collect()
}

#[test]
fn every_documented_series_exists_from_startup_and_process_metrics_are_sane() {
    let Some((t, proxy)) = ready_lab(|| Topology::start(5000), ProxyOpts::default()) else {
        return;
    };
    let sentinels: Vec<String> = t
        .sentinel_ports()
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let (_, body) = proxy.http("/metrics").expect("/metrics");
    let got = series(&body);
    let expected = documented_counters(MASTER_NAME, &sentinels);
    // 4 reasons + 4 outcomes + 6 reasons + 2 directions + 2 kinds + 6 reasons + 3 x 9 kinds
    // + 7 kinds + 3 x 2 whys + 3 results + 5 unlabelled (one without `route`), at least.
    assert!(
        expected.len() >= 70,
        "parsed {} series from docs",
        expected.len()
    );
    // Moved by the first master being found and verified; nothing else has happened.
    let moved = [
        "redis_failover_proxy_master_switches_total",
        "redis_failover_proxy_role_checks_total",
    ];
    let mut missing = Vec::new();
    for (name, labels) in &expected {
        match got.iter().find(|(n, l, _)| n == name && l == labels) {
            None => missing.push(format!("{name}{labels:?}")),
            Some((_, _, v)) if !moved.contains(&name.as_str()) => {
                assert_eq!(*v, 0.0, "{name}{labels:?} before any event")
            }
            Some(_) => {}
        }
    }
    assert!(
        missing.is_empty(),
        "missing series:\n{}",
        missing.join("\n")
    );
    // Histograms are there, empty.
    for h in [
        "redis_failover_proxy_hold_duration_seconds_count",
        "redis_failover_proxy_fence_duration_seconds_count",
    ] {
        assert!(got.iter().any(|(n, _, v)| n == h && *v == 0.0), "{h}");
    }

    let build: Vec<&Labels> = got
        .iter()
        .filter(|(n, _, v)| n == "redis_failover_proxy_build_info" && *v == 1.0)
        .map(|(_, l, _)| l)
        .collect();
    assert_eq!(build.len(), 1, "{body}");
    assert_eq!(build[0]["version"], env!("CARGO_PKG_VERSION"));
    let rev = &build[0]["revision"];
    assert!(
        !rev.is_empty()
            && rev
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.+".contains(c)),
        "{rev}"
    );

    let value = |name: &str| {
        got.iter()
            .find(|(n, l, _)| n == name && l.is_empty())
            .map(|(_, _, v)| *v)
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    let (open, max) = (value("process_open_fds"), value("process_max_fds"));
    assert!(open > 0.0 && open <= max, "open {open} max {max}");
    assert!(value("process_resident_memory_bytes") > 1e6);
    assert!(value("process_virtual_memory_bytes") >= value("process_resident_memory_bytes"));
    assert!(
        value("process_threads") >= 3.0,
        "session, control and admin threads"
    );
    assert!(value("process_cpu_seconds_total") >= 0.0);
    let started = value("process_start_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        started <= now + 1.0 && started > now - 600.0,
        "{started} vs {now}"
    );
    assert_eq!(
        got.iter()
            .filter(|(n, _, _)| n.starts_with("process_") && n.ends_with("_fds"))
            .count(),
        2
    );
}

#[test]
fn master_info_follows_the_master_and_status_prints_it() {
    let Some((t, proxy)) = ready_lab(|| Topology::start(5000), ProxyOpts::default()) else {
        return;
    };
    let first = format!("127.0.0.1:{}", t.nodes[0].port);
    let (_, body) = proxy.http("/metrics").expect("/metrics");
    assert_eq!(master_info(&body), vec![first.clone()]);

    // `status` finds the admin address in ./proxy.toml, as the proxy did.
    let (code, out, err) = run_bin(proxy.dir.path(), &["status"]);
    assert_eq!(code, 0, "stdout {out} stderr {err}");
    let row = out
        .lines()
        .find(|l| l.starts_with(MASTER_NAME) && l.contains("routing"))
        .unwrap_or_else(|| panic!("no route row in\n{out}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &cells[..5],
        &[
            MASTER_NAME,
            &proxy.addr().to_string(),
            "routing",
            &first,
            "1"
        ],
        "{out}"
    );
    assert_eq!(cells.last(), Some(&"3/3"), "{out}");
    for p in t.sentinel_ports() {
        assert!(
            out.lines()
                .any(|l| l.contains(&format!("127.0.0.1:{p}  ok")) && l.contains(&first)),
            "sentinel {p} in\n{out}"
        );
    }
    let (code, json, _) = run_bin(proxy.dir.path(), &["status", "--json"]);
    assert_eq!(code, 0);
    let doc: serde_json::Value = serde_json::from_str(&json).expect("--json prints JSON");
    assert_eq!(doc["routes"][0]["master"]["addr"], first.as_str());

    let new = t.failover();
    let second = format!("127.0.0.1:{new}");
    proxy.wait_routes_to(&second);
    let (_, body) = proxy.http("/metrics").expect("/metrics");
    // Only the current address: no series lingers for the first master.
    assert_eq!(master_info(&body), vec![second.clone()]);

    let (code, out, err) = run_bin(
        proxy.dir.path(),
        &["status", "--admin", &format!("127.0.0.1:{}", proxy.admin)],
    );
    assert_eq!(code, 0, "stdout {out} stderr {err}");
    assert!(
        out.contains(&format!("master {second} (announced {second}), epoch 2")),
        "{out}"
    );
    // The fence of the first master, from `history` or `last_fence`.
    assert!(
        out.lines()
            .any(|l| l.contains("fence") && l.contains(&first)),
        "{out}"
    );
}

#[test]
fn status_names_the_address_it_cannot_reach() {
    let dir = tempdir();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let (code, out, err) = run_bin(dir.path(), &["status", "--admin", &addr]);
    assert_eq!(code, 69, "stdout {out} stderr {err}");
    assert!(err.contains(&addr) && err.contains("--admin"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // From a config file, naming the file.
    std::fs::write(
        dir.path().join("proxy.toml"),
        format!("[admin]\nlisten = \"0.0.0.0:{port}\"\n"),
    )
    .unwrap();
    let (code, _, err) = run_bin(dir.path(), &["status"]);
    assert_eq!(code, 69, "{err}");
    assert!(err.contains(&addr) && err.contains("proxy.toml"), "{err}");
    std::fs::write(dir.path().join("proxy.toml"), "[admin]\nenabled = false\n").unwrap();
    let (code, _, err) = run_bin(dir.path(), &["status"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("switched off"), "{err}");
    // Something that is not the proxy answers: not a status.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let fake = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        if let Ok((mut s, _)) = listener.accept() {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"-ERR unknown command 'GET'\r\n");
        }
    });
    let (code, _, err) = run_bin(dir.path(), &["status", "--admin", &fake.to_string()]);
    server.join().unwrap();
    assert_eq!(code, 76, "{err}");
    assert!(
        err.contains(&fake.to_string()) && err.contains("not HTTP"),
        "{err}"
    );
}
