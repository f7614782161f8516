//! TLS-only sentinels and nodes (`port 0`, `tls-port`, `tls-replication yes`): the proxy
//! speaks TLS to sentinels, to nodes for ROLE and to the master for every client session
//! (clients stay plain); bad certificates are kind `tls` with a clear message and route
//! nowhere; the listen side can be TLS too.

mod support;

use std::path::Path;
use std::time::Duration;

use support::secure::*;
use support::tls::Certs;
use support::*;

const ROUTE: (&str, &str) = ("route", MASTER_NAME);

/// Certificates, or `None` (reason printed) when a tool is missing.
fn lab() -> Option<Certs> {
    if !require("redis-sentinel") || !require("redis-cli") {
        return None;
    }
    Certs::generate()
}

fn path(p: &Path) -> String {
    toml_str(&p.display().to_string())
}

/// Waits until the route's only sentinel fails with kind `tls`; returns its `last_error`.
fn wait_sentinel_tls_error(proxy: &Proxy, t: &SecureTopology) -> String {
    proxy.wait_metric(
        Duration::from_secs(10),
        "a TLS error talking to the sentinel",
        "redis_failover_proxy_sentinel_errors_total",
        &[ROUTE, ("kind", "tls")],
        |v| v >= 1.0,
    );
    let addr = t.sentinels[0].addr();
    let mut last = String::new();
    wait_until(Duration::from_secs(5), "/status shows the error", || {
        last = sentinel_last_error(proxy, addr);
        !last.is_empty()
    });
    assert!(last.contains(&format!("sentinel {addr}")), "{last}");
    eprintln!("last_error: {last}");
    last
}

/// Waits until ROLE checks of the node fail with kind `tls`.
fn wait_node_tls_error(proxy: &Proxy) {
    proxy.wait_metric(
        Duration::from_secs(10),
        "a TLS error on the ROLE check",
        "redis_failover_proxy_node_check_errors_total",
        &[ROUTE, ("kind", "tls")],
        |v| v >= 1.0,
    );
}

/// A proxy in front of `t` with `[tls] ca = ca` and the good client certificate.
fn conf_with_ca(t: &SecureTopology, certs: &Certs, ca: &Path) -> ProxyConf {
    ProxyConf::for_topology(t)
        .hold_timeout("1s")
        .tls_line(&format!("ca = {}", path(ca)))
        .tls_line(&format!("cert = {}", path(&certs.client.cert)))
        .tls_line(&format!("key = {}", path(&certs.client.key)))
}

/// (a) Three TLS-only nodes and three TLS-only sentinels requiring client certificates: the
/// proxy routes (PING/SET/GET from a plain client), `check` passes, and `SENTINEL FAILOVER`
/// fences the old sessions and moves the route.
#[test]
fn tls_only_topology_routes_and_fences_on_failover() {
    let Some(certs) = lab() else {
        return;
    };
    let t = SecureTopology::start(&Security::tls(&certs), 5000);
    let conf = ProxyConf::for_topology(&t).tls_client(&certs);
    let (code, out, err) = conf.check();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("verified by ROLE"), "{out}");
    let proxy = conf.start();
    proxy.wait_ready();
    serves_and_follows_failover(&t, &proxy, &[]);
    assert_eq!(
        proxy.metric(
            "redis_failover_proxy_sentinel_errors_total",
            &[("kind", "tls")]
        ),
        0.0
    );
    assert_eq!(
        proxy.metric("redis_failover_proxy_node_check_errors_total", &[]),
        0.0
    );
}

/// Sentinels announcing hostnames (`announce-hostnames yes`, nodes announcing `localhost`) and
/// node certificates for DNS:localhost only: the proxy checks each master's certificate against
/// the name the sentinels announce (an IP check would fail), before and after a failover.
#[test]
fn masters_announced_by_hostname_are_verified_by_that_name() {
    let Some(certs) = lab() else {
        return;
    };
    let sec = Security::tls(&certs)
        .node_cert(&certs.localhost_only)
        .hostnames();
    let t = SecureTopology::start(&sec, 5000);
    let conf = ProxyConf::for_topology(&t).tls_client(&certs);
    let (code, out, err) = conf.check();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("master: localhost:"), "{out}");
    let proxy = conf.start();
    proxy.wait_ready();
    serves_and_follows_failover(&t, &proxy, &[]);
    let status = proxy.status();
    let announced = status["routes"][0]["master"]["announced"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(announced.starts_with("localhost:"), "{announced}");
    assert_eq!(
        proxy.metric("redis_failover_proxy_node_check_errors_total", &[]),
        0.0
    );
}

/// TLS and least-privilege ACL users together (TLS handshake first, then AUTH user pass).
#[test]
fn tls_with_acl_users_routes() {
    let Some(certs) = lab() else {
        return;
    };
    let sec = Security::tls(&certs)
        .with_passwords(Some("node-pw"), Some("sentinel-pw"))
        .node_user(&acl_user("rfp", "rfp-node-pw", NODE_ACL))
        .sentinel_user(&acl_user("rfp", "rfp-sentinel-pw", SENTINEL_ACL));
    let t = SecureTopology::single(&sec);
    let proxy = ProxyConf::for_topology(&t)
        .tls_client(&certs)
        .sentinel_auth(Some("rfp"), "rfp-sentinel-pw")
        .node_auth(Some("rfp"), "rfp-node-pw")
        .start();
    proxy.wait_ready();
    let mut c = client_via(&proxy, &["node-pw"]);
    assert_eq!(c.cmd(&["SET", "k", "v"]).unwrap(), "+OK");
    assert_eq!(c.cmd(&["GET", "k"]).unwrap(), "v");
    assert_eq!(t.node_reached_by(&mut c).unwrap(), t.nodes[0].port);
    wait_until(Duration::from_secs(10), "the subscription is up", || {
        sentinel_status(&proxy, t.sentinels[0].addr())["subscribed"] == true
    });
}

/// The CA and client certificate from `--tls-ca/--tls-cert/--tls-key` and from
/// `REDIS_FAILOVER_PROXY_TLS_CA/_CERT/_KEY`, with no `[tls]` table in the file.
#[test]
fn tls_files_from_flags_and_from_the_environment_route() {
    let Some(certs) = lab() else {
        return;
    };
    let t = SecureTopology::single(&Security::tls(&certs));
    let s = |p: &Path| p.display().to_string();
    let by_flags = ProxyConf::for_topology(&t)
        .arg("--tls-ca")
        .arg(&s(&certs.ca))
        .arg("--tls-cert")
        .arg(&s(&certs.client.cert))
        .arg("--tls-key")
        .arg(&s(&certs.client.key))
        .start();
    let by_env = ProxyConf::for_topology(&t)
        .env("REDIS_FAILOVER_PROXY_TLS_CA", &s(&certs.ca))
        .env("REDIS_FAILOVER_PROXY_TLS_CERT", &s(&certs.client.cert))
        .env("REDIS_FAILOVER_PROXY_TLS_KEY", &s(&certs.client.key))
        .start();
    for p in [&by_flags, &by_env] {
        p.wait_ready();
        let mut c = client_via(p, &[]);
        assert_eq!(c.cmd(&["PING"]).unwrap(), "+PONG");
        assert_eq!(t.node_reached_by(&mut c).unwrap(), t.nodes[0].port);
    }
}

/// `[tls] sentinels = false`: plain sentinels, TLS nodes (ROLE checks and sessions).
#[test]
fn tls_to_the_nodes_only_with_sentinels_false() {
    let Some(certs) = lab() else {
        return;
    };
    let t = SecureTopology::single(&Security::tls(&certs).plain_sentinels());
    let proxy = ProxyConf::for_topology(&t)
        .tls_client(&certs)
        .tls_line("sentinels = false")
        .start();
    proxy.wait_ready();
    let mut c = client_via(&proxy, &[]);
    assert_eq!(c.cmd(&["SET", "k", "v"]).unwrap(), "+OK");
    assert_eq!(t.node_reached_by(&mut c).unwrap(), t.nodes[0].port);
}

/// (b) Servers whose certificates chain to a CA the proxy does not trust: kind `tls`, the
/// message says the certificate is not trusted (rustls: "invalid peer certificate:
/// UnknownIssuer"), nothing routed, `check` exits 69 saying the same.
#[test]
fn a_certificate_from_an_unknown_ca_is_refused_as_tls() {
    let Some(certs) = lab() else {
        return;
    };
    let t = SecureTopology::single(&Security::tls(&certs));
    let conf = conf_with_ca(&t, &certs, &certs.other_ca);
    let proxy = conf.start();
    let last = wait_sentinel_tls_error(&proxy, &t);
    let untrusted = [
        "UnknownIssuer",
        "unknown issuer",
        "not trusted",
        "untrusted",
    ];
    assert!(contains_any(&last, &untrusted), "{last}");
    assert_not_routing(&proxy, &t.nodes);
    assert!(contains_any(&proxy.log(), &untrusted), "{}", proxy.log());
    let (code, out, err) = conf.check();
    assert_eq!(code, 69, "{out}{err}");
    assert!(contains_any(&out, &untrusted), "{out}{err}");
}

/// (c) An expired certificate on the sentinel (and node): kind `tls`, "expired".
#[test]
fn an_expired_sentinel_certificate_is_refused_as_tls() {
    let Some(certs) = lab() else {
        return;
    };
    let sec = Security::tls(&certs)
        .node_cert(&certs.expired)
        .sentinel_cert(&certs.expired);
    let t = SecureTopology::single(&sec);
    let conf = conf_with_ca(&t, &certs, &certs.ca);
    let proxy = conf.start();
    let last = wait_sentinel_tls_error(&proxy, &t);
    assert!(contains_any(&last, &["expired"]), "{last}");
    assert_not_routing(&proxy, &t.nodes);
    let (code, out, err) = conf.check();
    assert_eq!(code, 69, "{out}{err}");
    assert!(contains_any(&out, &["expired"]), "{out}{err}");
}

/// (c) A good sentinel naming a node with an expired certificate: the ROLE check fails as
/// kind `tls` ("expired"); no session ever reaches the node.
#[test]
fn an_expired_node_certificate_is_refused_as_tls() {
    let Some(certs) = lab() else {
        return;
    };
    let t = SecureTopology::single(&Security::tls(&certs).node_cert(&certs.expired));
    let conf = conf_with_ca(&t, &certs, &certs.ca);
    let proxy = conf.start();
    wait_node_tls_error(&proxy);
    wait_until(Duration::from_secs(5), "the log says expired", || {
        proxy.log().lines().any(|l| {
            l.contains(&format!("127.0.0.1:{}", t.nodes[0].port)) && contains_any(l, &["expired"])
        })
    });
    assert_not_routing(&proxy, &t.nodes);
    let (code, out, err) = conf.check();
    assert_eq!(code, 69, "{out}{err}");
    assert!(contains_any(&out, &["expired"]), "{out}{err}");
}

/// (d) Certificates for wrong.example only, the proxy dialling 127.0.0.1: kind `tls`, a
/// name mismatch. `server_name = "wrong.example"` routes, and so does
/// `verify_server_name = false` (chain checked, name not).
#[test]
fn a_certificate_for_another_name_is_refused_unless_told_which_name_to_expect() {
    let Some(certs) = lab() else {
        return;
    };
    let sec = Security::tls(&certs)
        .node_cert(&certs.wrong_name)
        .sentinel_cert(&certs.wrong_name);
    let t = SecureTopology::single(&sec);
    let strict = conf_with_ca(&t, &certs, &certs.ca);
    let proxy = strict.start();
    let last = wait_sentinel_tls_error(&proxy, &t);
    let mismatch = [
        "NotValidForName",
        "not valid for name",
        "name mismatch",
        "does not match",
    ];
    assert!(contains_any(&last, &mismatch), "{last}");
    assert_not_routing(&proxy, &t.nodes);
    drop(proxy);

    for extra in [
        "server_name = \"wrong.example\"",
        "verify_server_name = false",
    ] {
        let conf = conf_with_ca(&t, &certs, &certs.ca).tls_line(extra);
        let (code, out, err) = conf.check();
        assert_eq!(code, 0, "{extra}: {out}{err}");
        let proxy = conf.start();
        proxy.wait_ready();
        let mut c = client_via(&proxy, &[]);
        assert_eq!(c.cmd(&["PING"]).unwrap(), "+PONG", "{extra}");
        assert_eq!(t.node_reached_by(&mut c).unwrap(), t.nodes[0].port);
    }
    // A wrong expected name still fails against the good certificate's own names.
    let good = SecureTopology::single(&Security::tls(&certs));
    let proxy = conf_with_ca(&good, &certs, &certs.ca)
        .tls_line("server_name = \"wrong.example\"")
        .start();
    let last = wait_sentinel_tls_error(&proxy, &good);
    assert!(contains_any(&last, &mismatch), "{last}");
}

/// (e) `tls-auth-clients yes` and no client certificate: kind `tls`, nothing routed; the
/// same proxy routes where client certificates are optional.
#[test]
fn a_missing_client_certificate_is_refused_as_tls() {
    let Some(certs) = lab() else {
        return;
    };
    let t = SecureTopology::single(&Security::tls(&certs));
    let conf = ProxyConf::for_topology(&t)
        .hold_timeout("1s")
        .tls_ca(&certs.ca);
    let proxy = conf.start();
    let last = wait_sentinel_tls_error(&proxy, &t);
    // rustls: "received fatal alert: CertificateRequired" (Redis's OpenSSL says "peer did
    // not return a certificate" in its log).
    assert!(contains_any(&last, &["certificate"]), "{last}");
    assert_not_routing(&proxy, &t.nodes);
    let (code, out, err) = conf.check();
    assert_eq!(code, 69, "{out}{err}");
    drop(proxy);

    let optional = SecureTopology::single(&Security::tls(&certs).auth_clients("optional"));
    let proxy = ProxyConf::for_topology(&optional).tls_ca(&certs.ca).start();
    proxy.wait_ready();
    let mut c = client_via(&proxy, &[]);
    assert_eq!(c.cmd(&["PING"]).unwrap(), "+PONG");
}

/// A TLS client of the proxy's listen side.
fn tls_client(port: u16, ca: &Path, cert: Option<&support::tls::CertPair>) -> Cli {
    Cli::plain(port).with_tls(Some(CliTls {
        ca: ca.to_path_buf(),
        cert: cert.cloned(),
        insecure: false,
    }))
}

/// (f) `listen_tls_cert`/`listen_tls_key` on the route: TLS clients (redis-cli --tls) talk
/// through, plain ones do not; with `listen_tls_client_ca` a client certificate from that CA
/// is required.
#[test]
fn listen_side_tls_serves_tls_clients() {
    let Some(certs) = lab() else {
        return;
    };
    let t = SecureTopology::single(&Security::default());
    let listen = |conf: ProxyConf| {
        conf.route_line(&format!("listen_tls_cert = {}", path(&certs.server.cert)))
            .route_line(&format!("listen_tls_key = {}", path(&certs.server.key)))
    };
    let proxy = listen(ProxyConf::for_topology(&t)).start();
    proxy.wait_ready();
    let c = tls_client(proxy.port, &certs.ca, None);
    assert_eq!(c.run(&["PING"]).unwrap(), "PONG");
    assert_eq!(c.run(&["SET", "k", "v"]).unwrap(), "OK");
    assert_eq!(c.run(&["GET", "k"]).unwrap(), "v");
    let info = c.run(&["INFO", "server"]).unwrap();
    assert!(
        info.contains(&format!("tcp_port:{}", t.nodes[0].port)),
        "{info}"
    );
    let mut plain = Client::connect(proxy.port);
    assert!(
        !matches!(plain.cmd(&["PING"]), Ok(r) if r == "+PONG"),
        "a plain client was served on a TLS listener"
    );
    let untrusting = tls_client(proxy.port, &certs.other_ca, None);
    assert!(untrusting.run(&["PING"]).is_err());

    let mutual = listen(ProxyConf::for_topology(&t))
        .route_line(&format!("listen_tls_client_ca = {}", path(&certs.ca)))
        .start();
    mutual.wait_ready();
    assert_eq!(
        tls_client(mutual.port, &certs.ca, Some(&certs.client))
            .run(&["PING"])
            .unwrap(),
        "PONG"
    );
    let no_cert = tls_client(mutual.port, &certs.ca, None).run(&["PING"]);
    assert!(
        no_cert.is_err(),
        "served without a client certificate: {no_cert:?}"
    );
    let foreign = tls_client(mutual.port, &certs.ca, Some(&certs.other_client)).run(&["PING"]);
    assert!(
        foreign.is_err(),
        "served a client certificate of another CA: {foreign:?}"
    );
}

/// Certificate rotation by SIGHUP: the proxy's `[tls]` files are rewritten in place (same
/// paths, same config text) and each SIGHUP makes the proxy use what the files now hold.
/// It starts with the wrong CA bundle (servers' certificates: unknown issuer) and a client
/// certificate of a CA the servers do not trust. Rotating the CA bundle and reloading changes
/// the failure to the servers refusing the client certificate (the proxy now trusts them);
/// rotating the client certificate and key and reloading makes the route come up, sessions
/// included. Between a rotation and its SIGHUP the proxy keeps failing, poll after poll:
/// files are read by a reload, not watched.
#[test]
fn sighup_rereads_rotated_tls_files() {
    let Some(certs) = lab() else {
        return;
    };
    let t = SecureTopology::single(&Security::tls(&certs));
    let files = tempdir();
    let (ca, cert, key) = (
        files.path().join("ca.pem"),
        files.path().join("client.pem"),
        files.path().join("client.key"),
    );
    let put = |from: &Path, to: &Path| {
        std::fs::copy(from, to).expect("rotate a TLS file");
    };
    put(&certs.other_ca, &ca);
    put(&certs.other_client.cert, &cert);
    put(&certs.other_client.key, &key);
    let conf = ProxyConf::for_topology(&t)
        .hold_timeout("1s")
        .tls_line(&format!("ca = {}", path(&ca)))
        .tls_line(&format!("cert = {}", path(&cert)))
        .tls_line(&format!("key = {}", path(&key)));
    let proxy = conf.start();
    let text = conf.toml(proxy.port, proxy.admin);
    let sentinel = t.sentinels[0].addr();
    let untrusted = ["UnknownIssuer", "unknown issuer"];
    let tls_errors = || {
        proxy.metric(
            "redis_failover_proxy_sentinel_errors_total",
            &[ROUTE, ("kind", "tls")],
        )
    };
    let more_tls_errors = |n: f64| {
        let from = tls_errors();
        proxy.wait_metric(
            Duration::from_secs(15),
            "more TLS errors from the sentinel",
            "redis_failover_proxy_sentinel_errors_total",
            &[ROUTE, ("kind", "tls")],
            |v| v >= from + n,
        );
    };
    let last = wait_sentinel_tls_error(&proxy, &t);
    assert!(contains_any(&last, &untrusted), "{last}");

    // The CA bundle: rotated on disk, nothing changes until SIGHUP.
    put(&certs.ca, &ca);
    more_tls_errors(3.0);
    let last = sentinel_last_error(&proxy, sentinel);
    assert!(contains_any(&last, &untrusted), "before SIGHUP: {last}");
    proxy.reload(&text);
    assert_eq!(
        proxy.metric(
            "redis_failover_proxy_config_reloads_total",
            &[("result", "ok")]
        ),
        1.0,
        "{}",
        proxy.log()
    );
    // The proxy now trusts the sentinel; the sentinel still refuses the proxy's certificate.
    let mut last = String::new();
    wait_until(
        Duration::from_secs(15),
        "the sentinel's certificate is trusted after SIGHUP",
        || {
            last = sentinel_last_error(&proxy, sentinel);
            !last.is_empty() && !contains_any(&last, &untrusted)
        },
    );
    eprintln!("after the CA bundle's rotation: {last}");
    // rustls: "received fatal alert: UnknownCA".
    assert!(
        contains_any(&last, &["UnknownCA", "unknown ca", "certificate"]),
        "{last}"
    );
    assert_eq!(proxy.http("/readyz").map(|r| r.0), Some(503));

    // The client certificate and key: the same, then the route comes up.
    put(&certs.client.cert, &cert);
    put(&certs.client.key, &key);
    more_tls_errors(3.0);
    assert_eq!(proxy.http("/readyz").map(|r| r.0), Some(503));
    assert_eq!(
        proxy.metric("redis_failover_proxy_master_switches_total", &[]),
        0.0
    );
    let errors_before = tls_errors();
    proxy.reload(&text);
    let took = proxy.wait_metric(
        Duration::from_secs(15),
        "a master verified with the rotated certificate",
        "redis_failover_proxy_master_switches_total",
        &[],
        |v| v >= 1.0,
    );
    eprintln!("routing {took:?} after the SIGHUP that loaded the rotated client certificate");
    proxy.wait_ready();
    let mut c = client_via(&proxy, &[]);
    assert_eq!(c.cmd(&["SET", "rotated", "yes"]).unwrap(), "+OK");
    assert_eq!(t.node_reached_by(&mut c).unwrap(), t.nodes[0].port);
    assert_eq!(
        sentinel_status(&proxy, sentinel)["last_error"],
        serde_json::Value::Null
    );
    // At most the polls already in flight at the SIGHUP failed after it.
    assert!(tls_errors() <= errors_before + 2.0, "{}", tls_errors());
}

/// Fencing with TLS on the master side: 200 sessions open through TLS to the master, a
/// `SENTINEL FAILOVER`, and every one is closed within the bound the plain tests use (5 s per
/// client, the fence's own measure under 250 ms in a debug build), one fence, and the next
/// client reaches the new master over TLS. (That a handshake to a fenced master never becomes
/// a session is the unit test `a_connection_to_a_fenced_master_never_becomes_a_session`: with
/// real processes the handshake takes about a millisecond on loopback, and nothing lets a test
/// hold it open across the fence without also making the ROLE checks fail.)
#[test]
fn tls_sessions_to_the_old_master_are_fenced_promptly() {
    let Some(certs) = lab() else {
        return;
    };
    let t = SecureTopology::start(&Security::tls(&certs), 5000);
    let proxy = ProxyConf::for_topology(&t).tls_client(&certs).start();
    proxy.wait_ready();
    let old = t.master_port().expect("a master");
    let mut sessions: Vec<Client> = (0..200).map(|_| client_via(&proxy, &[])).collect();
    for s in &mut sessions {
        assert_eq!(s.cmd(&["PING"]).unwrap(), "+PONG");
    }
    assert_eq!(t.node_reached_by(&mut sessions[0]).unwrap(), old);
    wait_until(Duration::from_secs(5), "200 TLS sessions open", || {
        proxy.status()["routes"][0]["master"]["sessions"].as_u64() == Some(200)
    });
    let new = t.failover();
    let start = std::time::Instant::now();
    for s in &mut sessions {
        assert!(
            s.closed_within(Duration::from_secs(5)),
            "a TLS session to the old master outlived the failover"
        );
    }
    let all_closed = start.elapsed();
    let mean_ms = proxy.assert_one_prompt_fence(200);
    eprintln!(
        "TLS fence of 200 sessions: {mean_ms:.2} ms from evidence to the last session closed; \
         the clients had seen all 200 closed {all_closed:?} after the sentinels named the new master"
    );
    proxy.wait_routes_to(&format!("127.0.0.1:{new}"));
    let mut c = client_via(&proxy, &[]);
    assert_eq!(t.node_reached_by(&mut c).unwrap(), new);
}
