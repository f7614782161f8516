//! Password- and ACL-protected sentinels and nodes: the proxy logs in with `[sentinel]` and
//! `[node]` credentials (from the file, the environment or `*_file`), clients keep logging in
//! themselves, wrong credentials are counted and named, and no secret leaks anywhere.

mod support;

use std::time::Duration;

use support::secure::*;
use support::*;

const NODE_PW: &str = "node-secret-pw";
const SENTINEL_PW: &str = "sentinel-secret-pw";
const ROUTE: (&str, &str) = ("route", MASTER_NAME);

fn lab_ready() -> bool {
    require("redis-sentinel") && require("redis-cli")
}

fn passwords() -> Security {
    Security::passwords(Some(NODE_PW), Some(SENTINEL_PW))
}

/// (a) `requirepass` on the nodes, `requirepass` + `auth-pass` on the sentinels: the proxy
/// logs in to both, a client logs in to the master itself through the proxy (the proxy adds
/// nothing to client sessions), and `SENTINEL FAILOVER` moves the route.
#[test]
fn passwords_in_the_config_file_route_and_follow_a_failover() {
    if !lab_ready() {
        return;
    }
    let t = SecureTopology::start(&passwords(), 5000);
    let proxy = ProxyConf::for_topology(&t)
        .sentinel_auth(None, SENTINEL_PW)
        .node_auth(None, NODE_PW)
        .start();
    proxy.wait_ready();
    // The proxy does not log clients in: that is theirs to do.
    let mut anonymous = Client::connect(proxy.port);
    assert_eq!(
        anonymous.cmd(&["GET", "k"]).unwrap(),
        "-NOAUTH Authentication required."
    );
    let mut wrong = Client::connect(proxy.port);
    assert_eq!(
        wrong.cmd(&["AUTH", "not-it"]).unwrap(),
        "-WRONGPASS invalid username-password pair or user is disabled."
    );
    serves_and_follows_failover(&t, &proxy, &[NODE_PW]);
    assert_eq!(
        proxy.metric(
            "redis_failover_proxy_sentinel_errors_total",
            &[("kind", "auth")]
        ),
        0.0
    );
    assert_eq!(
        proxy.metric(
            "redis_failover_proxy_node_check_errors_total",
            &[("kind", "auth")]
        ),
        0.0
    );
}

/// (b) The same credentials from the environment (which beats the file's), from files
/// (`password_file`, `REDIS_FAILOVER_PROXY_*_PASSWORD_FILE`, trailing newline trimmed),
/// usernames from the environment, and per-route overrides of the shared tables; all four
/// proxies follow one failover.
#[test]
fn passwords_from_the_environment_and_from_files_route_and_follow_a_failover() {
    if !lab_ready() {
        return;
    }
    let sec = passwords()
        .node_user(&acl_user("rfp", "rfp-node-pw", NODE_ACL))
        .sentinel_user(&acl_user("rfp", "rfp-sentinel-pw", SENTINEL_ACL));
    let t = SecureTopology::start(&sec, 5000);
    let files = tempdir();
    let write = |name: &str, content: &str| {
        let p = files.path().join(name);
        std::fs::write(&p, content).unwrap();
        p.display().to_string()
    };
    let sentinel_file = write("sentinel.pw", &format!("{SENTINEL_PW}\n"));
    let node_file = write("node.pw", &format!("{NODE_PW}\n"));
    let rfp_sentinel_file = write("rfp-sentinel.pw", "rfp-sentinel-pw\n");
    let rfp_node_file = write("rfp-node.pw", "rfp-node-pw");

    // The file says one thing, the environment another: the environment wins.
    let from_env = ProxyConf::for_topology(&t)
        .sentinel_auth(None, "wrong-in-file")
        .node_auth(None, "wrong-in-file")
        .env("REDIS_FAILOVER_PROXY_SENTINEL_PASSWORD", SENTINEL_PW)
        .env("REDIS_FAILOVER_PROXY_NODE_PASSWORD", NODE_PW)
        .start();
    let from_files = ProxyConf::for_topology(&t)
        .sentinel_line(&format!("password_file = {}", toml_str(&sentinel_file)))
        .node_line(&format!("password_file = {}", toml_str(&node_file)))
        .start();
    let user_from_env = ProxyConf::for_topology(&t)
        .env("REDIS_FAILOVER_PROXY_SENTINEL_USERNAME", "rfp")
        .env(
            "REDIS_FAILOVER_PROXY_SENTINEL_PASSWORD_FILE",
            &rfp_sentinel_file,
        )
        .env("REDIS_FAILOVER_PROXY_NODE_USERNAME", "rfp")
        .env("REDIS_FAILOVER_PROXY_NODE_PASSWORD_FILE", &rfp_node_file)
        .start();
    // Per-route overrides beat the shared [sentinel]/[node] credentials.
    let per_route = ProxyConf::for_topology(&t)
        .sentinel_auth(None, "wrong-shared")
        .node_auth(None, "wrong-shared")
        .route_line("sentinel_username = \"rfp\"")
        .route_line("sentinel_password = \"rfp-sentinel-pw\"")
        .route_line("node_username = \"rfp\"")
        .route_line(&format!(
            "node_password_file = {}",
            toml_str(&rfp_node_file)
        ))
        .start();
    let proxies = [&from_env, &from_files, &user_from_env, &per_route];
    for p in proxies {
        p.wait_ready();
    }
    let new = serves_and_follows_failover(&t, &from_env, &[NODE_PW]);
    for p in proxies {
        p.wait_routes_to(&format!("127.0.0.1:{new}"));
        let mut c = client_via(p, &[NODE_PW]);
        assert_eq!(t.node_reached_by(&mut c).unwrap(), new);
        assert_eq!(
            p.metric(
                "redis_failover_proxy_sentinel_errors_total",
                &[("kind", "auth")]
            ),
            0.0
        );
    }
}

/// (c) Least privilege: on the nodes a user that may run ROLE and nothing else; on the
/// sentinels one that may run the SENTINEL subcommands the proxy asks, SUBSCRIBE to its
/// three channels and PING. That is enough to route, to stay subscribed and to fence on a
/// failover; `check` passes with it too.
#[test]
fn least_privilege_acl_users_are_enough_to_route_and_fence() {
    if !lab_ready() {
        return;
    }
    let sec = passwords()
        .node_user(&acl_user("rfp", "rfp-node-pw", NODE_ACL))
        .sentinel_user(&acl_user("rfp", "rfp-sentinel-pw", SENTINEL_ACL));
    let t = SecureTopology::start(&sec, 5000);
    let conf = ProxyConf::for_topology(&t)
        .sentinel_auth(Some("rfp"), "rfp-sentinel-pw")
        .node_auth(Some("rfp"), "rfp-node-pw");
    let (code, out, err) = conf.check();
    assert_eq!(code, 0, "check: {out}{err}");
    assert!(out.contains("verified by ROLE"), "{out}");
    assert!(out.contains("sentinels reachable: 3/3"), "{out}");
    let proxy = conf.start();
    proxy.wait_ready();
    wait_until(
        Duration::from_secs(10),
        "every sentinel subscription is up",
        || {
            proxy.status()["routes"][0]["sentinels"]
                .as_array()
                .is_some_and(|s| s.len() == 3 && s.iter().all(|e| e["subscribed"] == true))
        },
    );
    serves_and_follows_failover(&t, &proxy, &[NODE_PW]);
    for kind in ["auth", "noperm", "protocol", "subscription"] {
        assert_eq!(
            proxy.metric(
                "redis_failover_proxy_sentinel_errors_total",
                &[("kind", kind)]
            ),
            0.0,
            "sentinel errors of kind {kind}"
        );
    }
    assert_eq!(
        proxy.metric("redis_failover_proxy_node_check_errors_total", &[]),
        0.0
    );
    // With the documented `+role +info` the master's run_id is read: no warning.
    let unreadable = proxy
        .log()
        .lines()
        .filter(|l| l.contains("cannot read the master's run_id"))
        .count();
    assert_eq!(unreadable, 0, "{}", proxy.log());
}

/// (c) The same node user without `+role`: Redis answers "NOPERM this user has no
/// permissions to run the 'role' command" (redis-rs shows it as "NoPerm: ..."); the proxy
/// counts kind `noperm`, names `'role'` in its log and in `check`, and routes nowhere.
#[test]
fn a_node_user_without_role_is_reported_as_noperm_naming_the_command() {
    if !lab_ready() {
        return;
    }
    let sec = passwords()
        .node_user(&acl_user("rfp", "rfp-node-pw", "resetchannels -@all"))
        .sentinel_user(&acl_user("rfp", "rfp-sentinel-pw", SENTINEL_ACL));
    let t = SecureTopology::single(&sec);
    let conf = ProxyConf::for_topology(&t)
        .hold_timeout("1s")
        .sentinel_auth(Some("rfp"), "rfp-sentinel-pw")
        .node_auth(Some("rfp"), "rfp-node-pw");
    let proxy = conf.start();
    proxy.wait_metric(
        Duration::from_secs(10),
        "ROLE refused for lack of permission",
        "redis_failover_proxy_node_check_errors_total",
        &[ROUTE, ("kind", "noperm")],
        |v| v >= 1.0,
    );
    wait_until(Duration::from_secs(5), "the log names the command", || {
        proxy
            .log()
            .lines()
            .any(|l| contains_any(l, &["noperm"]) && l.contains("'role'"))
    });
    assert_not_routing(&proxy, &t.nodes);
    let (code, out, err) = conf.check();
    assert_eq!(code, 69, "{out}{err}");
    assert!(
        contains_any(&out, &["noperm"]) && out.contains("'role'"),
        "check output: {out}{err}"
    );
}

/// (c) The sentinel user without `+sentinel|master`: the sentinel answers "NOPERM this user
/// has no permissions to run the 'sentinel|master' command"; the proxy counts kind `noperm`
/// for that sentinel, names `'sentinel|master'` in its log (once for the episode, not per
/// poll), in `/status` and in `check`, and routes nowhere.
#[test]
fn a_sentinel_user_without_sentinel_master_is_reported_as_noperm_naming_the_command() {
    if !lab_ready() {
        return;
    }
    let acl = SENTINEL_ACL.replace(" +sentinel|master", "");
    assert_ne!(acl, SENTINEL_ACL);
    let sec = passwords()
        .node_user(&acl_user("rfp", "rfp-node-pw", NODE_ACL))
        .sentinel_user(&acl_user("rfp", "rfp-sentinel-pw", &acl));
    let t = SecureTopology::single(&sec);
    let sentinel = t.sentinels[0].addr();
    let conf = ProxyConf::for_topology(&t)
        .hold_timeout("1s")
        .sentinel_auth(Some("rfp"), "rfp-sentinel-pw")
        .node_auth(Some("rfp"), "rfp-node-pw");
    let proxy = conf.start();
    let label = sentinel.to_string();
    proxy.wait_metric(
        Duration::from_secs(10),
        "SENTINEL MASTER refused for lack of permission, poll after poll",
        "redis_failover_proxy_sentinel_errors_total",
        &[ROUTE, ("sentinel", label.as_str()), ("kind", "noperm")],
        |v| v >= 6.0,
    );
    let last = sentinel_last_error(&proxy, sentinel);
    assert!(
        last.contains(&format!("sentinel {sentinel}"))
            && contains_any(&last, &["noperm"])
            && last.contains("'sentinel|master'"),
        "last_error: {last:?}"
    );
    let log = proxy.log();
    let logged = log
        .lines()
        .filter(|l| contains_any(l, &["noperm"]) && l.contains("'sentinel|master'"))
        .count();
    assert_eq!(logged, 1, "logged {logged} times over 6+ polls:\n{log}");
    assert_not_routing(&proxy, &t.nodes);
    let (code, out, err) = conf.check();
    assert_eq!(code, 69, "{out}{err}");
    assert!(
        out.contains("(noperm)") && out.contains("'sentinel|master'"),
        "check output: {out}{err}"
    );
}

/// (c) The sentinel user without the `+switch-master` channel: `SUBSCRIBE` fails with Redis's
/// "NOPERM this user has no permissions to access one of the channels used as arguments",
/// which names no channel; the proxy's error names the command and its channels (log, once;
/// `/status` `subscription_error`), counts kind `noperm`, and keeps routing by polling.
#[test]
fn a_sentinel_user_without_the_switch_master_channel_is_named_and_polling_keeps_routing() {
    if !lab_ready() {
        return;
    }
    let acl = SENTINEL_ACL.replace(" &+switch-master", "");
    assert_ne!(acl, SENTINEL_ACL);
    // The node user may run ROLE only (no `+info`): the proxy routes all the same.
    let sec = passwords()
        .node_user(&acl_user("rfp", "rfp-node-pw", NODE_ACL_ROLE_ONLY))
        .sentinel_user(&acl_user("rfp", "rfp-sentinel-pw", &acl));
    let t = SecureTopology::single(&sec);
    let sentinel = t.sentinels[0].addr();
    let proxy = ProxyConf::for_topology(&t)
        .sentinel_auth(Some("rfp"), "rfp-sentinel-pw")
        .node_auth(Some("rfp"), "rfp-node-pw")
        .start();
    proxy.wait_ready();
    let label = sentinel.to_string();
    // Resubscribing backs off 100 ms, 200 ms, 400 ms ...: three refusals within ~1 s.
    proxy.wait_metric(
        Duration::from_secs(10),
        "SUBSCRIBE refused for lack of channel permission, again and again",
        "redis_failover_proxy_sentinel_errors_total",
        &[ROUTE, ("sentinel", label.as_str()), ("kind", "noperm")],
        |v| v >= 3.0,
    );
    let st = sentinel_status(&proxy, sentinel);
    assert_eq!(st["subscribed"], false, "{st}");
    assert_eq!(st["reachable"], true, "{st}");
    assert_eq!(st["last_error"], serde_json::Value::Null, "{st}");
    let sub = st["subscription_error"].as_str().unwrap_or_default();
    assert!(
        sub.contains(&format!("sentinel {sentinel}"))
            && sub.contains("SUBSCRIBE +switch-master")
            && contains_any(sub, &["noperm"])
            && sub.contains("channels"),
        "subscription_error: {st}"
    );
    let log = proxy.log();
    let logged: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("cannot subscribe to +switch-master"))
        .collect();
    assert_eq!(logged.len(), 1, "{log}");
    assert!(
        logged[0].contains("SUBSCRIBE +switch-master") && contains_any(logged[0], &["noperm"]),
        "{}",
        logged[0]
    );
    // Polling alone routes, and a client reaches the master.
    let mut c = client_via(&proxy, &[NODE_PW]);
    assert_eq!(t.node_reached_by(&mut c).unwrap(), t.nodes[0].port);
    assert_eq!(proxy.http("/readyz").map(|r| r.0), Some(200));
    // Without `+info` the master's run_id cannot be read: said once (not at every check), and
    // restarts are told by the replication offset alone.
    let unreadable = proxy
        .log()
        .lines()
        .filter(|l| l.contains("cannot read the master's run_id"))
        .count();
    assert_eq!(unreadable, 1, "{}", proxy.log());
}

/// (d) One sentinel of three has another password: it shows `kind="auth"` and "authentication
/// failed" in `/status` (logged once, not every poll), the other two keep the route up.
#[test]
fn a_wrong_password_on_one_sentinel_is_reported_and_the_others_keep_routing() {
    if !lab_ready() {
        return;
    }
    let mut t = SecureTopology::start(&passwords(), 5000);
    t.sentinels[2].set_password("this-one-differs");
    let odd = t.sentinels[2].addr();
    let proxy = ProxyConf::for_topology(&t)
        .sentinel_auth(None, SENTINEL_PW)
        .node_auth(None, NODE_PW)
        .start();
    proxy.wait_ready();
    let label = odd.to_string();
    proxy.wait_metric(
        Duration::from_secs(10),
        "auth errors counted for the odd sentinel, poll after poll",
        "redis_failover_proxy_sentinel_errors_total",
        &[ROUTE, ("sentinel", label.as_str()), ("kind", "auth")],
        |v| v >= 6.0,
    );
    let last = sentinel_last_error(&proxy, odd);
    assert!(
        last.contains(&format!("sentinel {odd}")) && last.contains("authentication failed"),
        "last_error of {odd}: {last:?}"
    );
    for s in &t.sentinels[..2] {
        let st = sentinel_status(&proxy, s.addr());
        assert_eq!(st["reachable"], true, "{st}");
        assert_eq!(st["last_error"], serde_json::Value::Null, "{st}");
    }
    assert_eq!(
        proxy.metric("redis_failover_proxy_sentinels_reachable", &[]),
        2.0
    );
    let logged = proxy
        .log()
        .lines()
        .filter(|l| l.contains(&odd.to_string()) && l.contains("authentication failed"))
        .count();
    assert!(
        (1..=2).contains(&logged),
        "logged {logged} times over 6+ failed polls:\n{}",
        proxy.log()
    );
    let (code, _) = proxy.http("/readyz").unwrap();
    assert_eq!(code, 200);
    let mut c = client_via(&proxy, &[NODE_PW]);
    assert_eq!(t.node_reached_by(&mut c).unwrap(), t.nodes[0].port);

    // No sentinel password at all: the sentinels answer NOAUTH, also kind auth.
    let (code, out, err) = ProxyConf::for_topology(&t).node_auth(None, NODE_PW).check();
    assert_eq!(code, 69, "{out}{err}");
    assert!(
        contains_any(&out, &["NOAUTH", "authentication"]),
        "check without a sentinel password: {out}{err}"
    );
}

/// (d) A wrong node password: ROLE checks fail as kind `auth`, no master is verified, `check`
/// exits 69 naming the failure; without any node password the node says NOAUTH.
#[test]
fn a_wrong_node_password_is_counted_as_auth_and_nothing_is_routed() {
    if !lab_ready() {
        return;
    }
    let t = SecureTopology::single(&passwords());
    let conf = ProxyConf::for_topology(&t)
        .hold_timeout("1s")
        .sentinel_auth(None, SENTINEL_PW)
        .node_auth(None, "not-the-node-password");
    let proxy = conf.start();
    proxy.wait_metric(
        Duration::from_secs(10),
        "ROLE checks fail with auth errors, again and again",
        "redis_failover_proxy_node_check_errors_total",
        &[ROUTE, ("kind", "auth")],
        |v| v >= 6.0,
    );
    assert_not_routing(&proxy, &t.nodes);
    let node = format!("127.0.0.1:{}", t.nodes[0].port);
    let status = proxy.status();
    let last = status["routes"][0]["last_node_error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        last.contains(&format!("node {node}")) && last.contains("authentication failed"),
        "last_node_error: {status}"
    );
    // Logged once for the episode, not on each of the 6+ failed checks.
    let log = proxy.log();
    let logged = log
        .lines()
        .filter(|l| {
            l.contains(&node) && contains_any(l, &["WRONGPASS", "NOAUTH", "authentication failed"])
        })
        .count();
    assert_eq!(logged, 1, "logged {logged} times:\n{log}");
    let (code, out, err) = conf.check();
    assert_eq!(code, 69, "{out}{err}");
    assert!(
        out.contains("master: NONE verified"),
        "check output: {out}{err}"
    );
    assert!(
        contains_any(&out, &["WRONGPASS", "NOAUTH", "authentication failed"]),
        "check output: {out}{err}"
    );

    let (code, out, err) = ProxyConf::for_topology(&t)
        .sentinel_auth(None, SENTINEL_PW)
        .check();
    assert_eq!(code, 69, "{out}{err}");
    assert!(
        out.contains("NOAUTH"),
        "check without a node password: {out}{err}"
    );
}

/// (e) No secret ever shows: not in the log (at trace level) of a working proxy, of one
/// with a wrong sentinel password or a wrong node password, nor in `check` output, `/status`,
/// `/metrics`, a SIGUSR1 status dump, SIGHUP reloads rejected on a secret's line, the
/// shutdown log, nor in the one-line config errors (a number where the password string
/// belongs, an unterminated string on the password's line, both `password` and
/// `password_file`).
#[test]
fn secrets_never_appear_in_logs_check_output_status_metrics_or_config_errors() {
    if !lab_ready() {
        return;
    }
    let node_pw = unique_secret("node");
    let sentinel_pw = unique_secret("sentinel");
    let wrong_sentinel = unique_secret("wrongsentinel");
    let wrong_node = unique_secret("wrongnode");
    let in_file = unique_secret("infile");
    let unterminated = unique_secret("unterminated");
    let reload_unterminated = unique_secret("reloadunterminated");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let numeric = format!("7{}", nanos % 1_000_000_000_000_000);
    let secrets = [
        &node_pw,
        &sentinel_pw,
        &wrong_sentinel,
        &wrong_node,
        &in_file,
        &unterminated,
        &reload_unterminated,
        &numeric,
    ];
    let mut seen: Vec<(String, String)> = Vec::new();

    let t = SecureTopology::single(&Security::passwords(Some(&node_pw), Some(&sentinel_pw)));
    let files_dir = tempdir();
    // Everything but the sentinel password.
    let good_base = || {
        ProxyConf::for_topology(&t)
            .log_level("trace")
            .node_auth(None, &node_pw)
    };
    let good = good_base().sentinel_auth(None, &sentinel_pw);

    // A working proxy, a client logging in through it, check, /status, /metrics, shutdown.
    let mut proxy = good.start();
    proxy.wait_ready();
    let mut c = client_via(&proxy, &[&node_pw]);
    assert_eq!(c.cmd(&["SET", "k", "v"]).unwrap(), "+OK");
    drop(c);
    seen.push(("status".into(), proxy.http("/status").unwrap().1));
    seen.push(("metrics".into(), proxy.http("/metrics").unwrap().1));
    let (code, out, err) = good.check();
    assert_eq!(code, 0, "{out}{err}");
    seen.push(("check".into(), format!("{out}{err}")));
    // A status dump (SIGUSR1), then SIGHUP reloads rejected because of a secret's line: a
    // password file that does not exist, an unterminated password string, and both
    // `password` and `password_file`; each file also holds the working node password.
    let usr1_dumps = |p: &Proxy| p.log().matches("status (SIGUSR1)").count();
    proxy.signal("USR1");
    wait_until(Duration::from_secs(10), "the status dump is logged", || {
        usr1_dumps(&proxy) == 1
    });
    let missing = files_dir.path().join("no-such-sentinel.pw");
    let pw_file_in_use = files_dir.path().join("sentinel.pw");
    std::fs::write(&pw_file_in_use, format!("{sentinel_pw}\n")).unwrap();
    let bad_reloads = [
        good_base()
            .sentinel_line(&format!(
                "password_file = {}",
                toml_str(&missing.display().to_string())
            ))
            .toml(proxy.port, proxy.admin),
        good_base()
            .sentinel_line(&format!("password = \"{reload_unterminated}"))
            .toml(proxy.port, proxy.admin),
        good_base()
            .sentinel_auth(None, &sentinel_pw)
            .sentinel_line(&format!(
                "password_file = {}",
                toml_str(&pw_file_in_use.display().to_string())
            ))
            .toml(proxy.port, proxy.admin),
    ];
    for text in &bad_reloads {
        assert!(text.contains(node_pw.as_str()));
        let rejected = proxy.metric(
            "redis_failover_proxy_config_reloads_total",
            &[("result", "error")],
        );
        proxy.reload(text);
        assert_eq!(
            proxy.metric(
                "redis_failover_proxy_config_reloads_total",
                &[("result", "error")]
            ),
            rejected + 1.0,
            "{text}"
        );
    }
    assert_eq!(
        proxy.log().matches("configuration reload rejected").count(),
        3
    );
    assert!(proxy.log().contains("no-such-sentinel.pw"));
    // The running configuration (and its secrets) stays in use.
    let mut c = client_via(&proxy, &[&node_pw]);
    assert_eq!(c.cmd(&["GET", "k"]).unwrap(), "v");
    drop(c);
    proxy.signal("USR1");
    wait_until(Duration::from_secs(10), "the second status dump", || {
        usr1_dumps(&proxy) == 2
    });
    seen.push((
        "status after rejected reloads".into(),
        proxy.http("/status").unwrap().1,
    ));
    seen.push((
        "metrics after rejected reloads".into(),
        proxy.http("/metrics").unwrap().1,
    ));
    proxy.signal("TERM");
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)), Some(0));
    seen.push(("log of a working proxy".into(), proxy.log()));

    // The same from the environment.
    let from_env = ProxyConf::for_topology(&t)
        .log_level("trace")
        .env("REDIS_FAILOVER_PROXY_SENTINEL_PASSWORD", &sentinel_pw)
        .env("REDIS_FAILOVER_PROXY_NODE_PASSWORD", &node_pw);
    let (code, out, err) = from_env.check();
    assert_eq!(code, 0, "{out}{err}");
    seen.push(("check, passwords from env".into(), format!("{out}{err}")));

    // Wrong sentinel password; wrong node password (from a file).
    let bad_sentinel = ProxyConf::for_topology(&t)
        .log_level("trace")
        .hold_timeout("1s")
        .sentinel_auth(None, &wrong_sentinel)
        .node_auth(None, &node_pw);
    let proxy = bad_sentinel.start();
    proxy.wait_metric(
        Duration::from_secs(10),
        "wrong sentinel password counted",
        "redis_failover_proxy_sentinel_errors_total",
        &[("kind", "auth")],
        |v| v >= 2.0,
    );
    seen.push((
        "status, wrong sentinel pw".into(),
        proxy.http("/status").unwrap().1,
    ));
    seen.push((
        "metrics, wrong sentinel pw".into(),
        proxy.http("/metrics").unwrap().1,
    ));
    seen.push(("log, wrong sentinel pw".into(), proxy.log()));
    let (code, out, err) = bad_sentinel.check();
    assert_eq!(code, 69, "{out}{err}");
    seen.push(("check, wrong sentinel pw".into(), format!("{out}{err}")));
    drop(proxy);

    let files = tempdir();
    let wrong_node_file = files.path().join("node.pw");
    std::fs::write(&wrong_node_file, format!("{wrong_node}\n")).unwrap();
    let bad_node = ProxyConf::for_topology(&t)
        .log_level("trace")
        .hold_timeout("1s")
        .sentinel_auth(None, &sentinel_pw)
        .node_line(&format!(
            "password_file = {}",
            toml_str(&wrong_node_file.display().to_string())
        ));
    let proxy = bad_node.start();
    proxy.wait_metric(
        Duration::from_secs(10),
        "wrong node password counted",
        "redis_failover_proxy_node_check_errors_total",
        &[("kind", "auth")],
        |v| v >= 2.0,
    );
    seen.push((
        "status, wrong node pw".into(),
        proxy.http("/status").unwrap().1,
    ));
    seen.push((
        "metrics, wrong node pw".into(),
        proxy.http("/metrics").unwrap().1,
    ));
    seen.push(("log, wrong node pw".into(), proxy.log()));
    let (code, out, err) = bad_node.check();
    assert_eq!(code, 69, "{out}{err}");
    seen.push(("check, wrong node pw".into(), format!("{out}{err}")));
    drop(proxy);

    // Config errors on the secret's own line, and both password and password_file.
    let dir = tempdir();
    let pw_file = dir.path().join("pw");
    std::fs::write(&pw_file, format!("{in_file}\n")).unwrap();
    let sentinels = format!("addresses = [\"{}\"]", t.sentinels[0].addr());
    let bad_configs = [
        (
            "number for [sentinel] password",
            format!("[sentinel]\n{sentinels}\npassword = {numeric}\n"),
            vec!["password"],
        ),
        (
            "number for [node] password",
            format!("[sentinel]\n{sentinels}\n[node]\npassword = {numeric}\n"),
            vec!["password"],
        ),
        (
            "unterminated string on the password line",
            format!("[sentinel]\n{sentinels}\npassword = \"{unterminated}\n"),
            vec!["line 3"],
        ),
        (
            "password and password_file",
            format!(
                "[sentinel]\n{sentinels}\n[node]\npassword = {}\npassword_file = {}\n",
                toml_str(&node_pw),
                toml_str(&pw_file.display().to_string())
            ),
            vec!["password", "password_file"],
        ),
    ];
    for (what, text, expect) in &bad_configs {
        std::fs::write(dir.path().join("bad.toml"), text).unwrap();
        for args in [
            &["--config", "bad.toml"][..],
            &["check", "--config", "bad.toml"][..],
        ] {
            let (code, out, err) = run_bin_env(dir.path(), args, &[("RUST_LOG", "trace")]);
            assert_eq!(code, 64, "{what}: {out}{err}");
            for e in expect {
                assert!(err.contains(e), "{what}: expected {e:?} in {err:?}");
            }
            seen.push((
                format!("config error: {what} ({args:?})"),
                format!("{out}{err}"),
            ));
        }
    }

    for (what, text) in &seen {
        assert!(!text.is_empty(), "{what}: no output at all");
        for s in secrets {
            assert!(
                !text.contains(s.as_str()),
                "secret {s:?} appears in {what}:\n{text}"
            );
        }
    }
}
