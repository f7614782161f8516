//! Self-tests of the secured-topology harness (tests/support/tls.rs and secure.rs): they need
//! no proxy feature, and pin down what Redis 7.0 does with passwords, ACLs and TLS, which the
//! auth and TLS tests of the proxy rely on.

mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use support::secure::*;
use support::tls::Certs;
use support::*;

/// What the Redis docs give a sentinel's own user on the nodes (`sentinel auth-user`).
const SENTINEL_USER_ACL: &str = "allchannels -@all +multi +slaveof +ping +exec +subscribe \
     +config|rewrite +role +publish +info +client|setname +client|kill +script|kill";

#[test]
fn certificates_are_what_the_tls_tests_need() {
    let Some(c) = Certs::generate() else {
        return;
    };
    c.verify(&c.ca, &c.server.cert)
        .expect("server chains to ca");
    c.verify(&c.ca, &c.client.cert)
        .expect("client chains to ca");
    c.verify(&c.ca, &c.wrong_name.cert)
        .expect("wrong-name chains to ca");
    c.verify(&c.other_ca, &c.other_server.cert)
        .expect("other-server chains to other-ca");
    let expired = c.verify(&c.ca, &c.expired.cert).unwrap_err();
    assert!(expired.contains("certificate has expired"), "{expired}");
    let unknown = c.verify(&c.ca, &c.other_server.cert).unwrap_err();
    assert!(
        unknown.contains("unable to get local issuer certificate"),
        "{unknown}"
    );
    let server = c.text(&c.server.cert);
    assert!(server.contains("IP Address:127.0.0.1"), "{server}");
    assert!(server.contains("DNS:localhost"), "{server}");
    assert!(server.contains("TLS Web Server Authentication, TLS Web Client Authentication"));
    let wrong = c.text(&c.wrong_name.cert);
    assert!(wrong.contains("DNS:wrong.example"), "{wrong}");
    assert!(
        !wrong.contains("127.0.0.1") && !wrong.contains("localhost"),
        "{wrong}"
    );
    let old = c.text(&c.expired.cert);
    assert!(
        old.contains("Not After : Jan  1 00:00:00 2021 GMT"),
        "{old}"
    );
}

/// The harness self-test the brief asks for: TLS-only nodes and sentinels with
/// `tls-auth-clients yes`, passwords on both, three of each; converged, and `SENTINEL
/// FAILOVER` completes over TLS.
#[test]
fn tls_and_auth_topology_converges_and_fails_over() {
    if !require("redis-sentinel") || !require("redis-cli") {
        return;
    }
    let Some(certs) = Certs::generate() else {
        return;
    };
    let start = Instant::now();
    let sec = Security::tls(&certs).with_passwords(Some("node-pw"), Some("sentinel-pw"));
    let t = SecureTopology::start(&sec, 5000);
    let converged = start.elapsed();
    let master = &t.nodes[0];
    assert_eq!(t.master_port(), Some(master.port));
    assert_eq!(master.role(), "master");
    for n in &t.nodes[1..] {
        assert_eq!(n.role(), "slave");
    }

    // TLS-only, client certificate required, password required: each is real.
    let plain = Cli::plain(master.port).as_user(None, Some("node-pw"));
    let err = plain.run(&["PING"]).unwrap_err();
    assert!(
        err.contains("Connection reset by peer") || err.contains("Server closed the connection"),
        "plain client on a TLS port: {err}"
    );
    let mut no_cert = master.cli.clone();
    no_cert.tls.as_mut().unwrap().cert = None;
    let err = no_cert.run(&["PING"]).unwrap_err();
    assert!(!err.contains("PONG"), "{err}");
    wait_until(
        Duration::from_secs(5),
        "the node logs the missing certificate",
        || master.log().contains("peer did not return a certificate"),
    );
    let err = master.cli.as_user(None, None).run(&["PING"]).unwrap_err();
    assert_eq!(err, "NOAUTH Authentication required.");
    let err = master
        .cli
        .as_user(None, Some("bad"))
        .run(&["PING"])
        .unwrap_err();
    assert!(
        err.contains("AUTH failed: WRONGPASS invalid username-password pair or user is disabled."),
        "{err}"
    );
    let err = t.sentinels[0]
        .cli
        .as_user(None, None)
        .run(&["SENTINEL", "MASTER", MASTER_NAME])
        .unwrap_err();
    assert_eq!(err, "NOAUTH Authentication required.");

    // A key written before the failover is on the new master after it.
    assert_eq!(master.cmd(&["SET", "k", "v"]).unwrap(), "OK");
    assert_eq!(master.cmd(&["WAIT", "2", "5000"]).unwrap(), "2");
    let before = Instant::now();
    let new = t.failover();
    let failover = before.elapsed();
    assert_ne!(new, master.port);
    assert_eq!(t.node_by_port(new).cmd(&["GET", "k"]).unwrap(), "v");
    // The other replica was moved to the new master (over TLS, with masterauth).
    let other = t
        .nodes
        .iter()
        .find(|n| n.port != new && n.port != master.port)
        .unwrap();
    wait_until(
        Duration::from_secs(20),
        "the other replica follows the new master",
        || {
            let info = other.info("replication");
            info.contains(&format!("master_port:{new}")) && info.contains("master_link_status:up")
        },
    );
    eprintln!(
        "TLS+auth 3+3 topology: converged in {converged:?}, SENTINEL FAILOVER done in {failover:?}, \
         whole test {:?}",
        start.elapsed()
    );
}

/// The single (1+1) variant, and a sentinel whose password changes live.
#[test]
fn single_tls_topology_and_a_sentinel_password_change() {
    if !require("redis-sentinel") || !require("redis-cli") {
        return;
    }
    let Some(certs) = Certs::generate() else {
        return;
    };
    let sec = Security::tls(&certs).with_passwords(Some("n"), Some("s"));
    let mut t = SecureTopology::single(&sec);
    assert_eq!(t.master_port(), Some(t.nodes[0].port));
    t.sentinels[0].set_password("other");
    assert_eq!(t.master_port(), Some(t.nodes[0].port));
    let err = t.sentinels[0]
        .cli
        .as_user(None, Some("s"))
        .run(&["PING"])
        .unwrap_err();
    assert!(err.contains("WRONGPASS"), "{err}");
}

/// Sentinels with deliberately bad certificates still start and still name the master (the
/// TLS failure tests of the proxy rely on that): expired on both, wrong name on both.
#[test]
fn processes_with_bad_certificates_still_name_the_master() {
    if !require("redis-sentinel") || !require("redis-cli") {
        return;
    }
    let Some(certs) = Certs::generate() else {
        return;
    };
    for bad in [&certs.expired, &certs.wrong_name] {
        let sec = Security::tls(&certs).node_cert(bad).sentinel_cert(bad);
        let t = SecureTopology::single(&sec);
        assert_eq!(t.master_port(), Some(t.nodes[0].port));
        // A verifying client refuses the expired one; Redis never checks names.
        let mut strict = t.sentinels[0].cli.clone();
        strict.tls.as_mut().unwrap().insecure = false;
        let r = strict.run(&["PING"]);
        if bad.chain_valid {
            assert_eq!(r.unwrap(), "PONG");
        } else {
            let err = r.unwrap_err();
            assert!(err.contains("certificate verify failed"), "{err}");
        }
    }
}

fn read_until(c: &mut Client, done: impl Fn(&str) -> bool) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let l = c.read_line().expect("reply");
        let end = done(&l);
        lines.push(l);
        if end {
            return lines;
        }
    }
}

/// The least-privilege ACLs of tests/auth.rs, checked against Redis 7.0 directly: the node
/// user can log in (AUTH, HELLO) and run ROLE only; the sentinel user can run the SENTINEL
/// subcommands the proxy asks, subscribe to its three channels and PING while subscribed.
#[test]
fn least_privilege_acls_allow_what_the_proxy_does_and_nothing_else() {
    if !require("redis-sentinel") || !require("redis-cli") {
        return;
    }
    let sec = Security::passwords(Some("npw"), Some("spw"))
        .node_user(&acl_user("rfp", "rpw", NODE_ACL))
        .node_user(&acl_user("norole", "rpw", "resetchannels -@all"))
        .sentinel_user(&acl_user("rfp", "rpw", SENTINEL_ACL))
        .sentinel_user(&acl_user(
            "nosub",
            "rpw",
            "resetchannels -@all +sentinel|master +subscribe +ping",
        ))
        // The sentinels log in to the nodes as a user with what Redis's docs list for them.
        .node_user(&acl_user("sentinel-user", "supw", SENTINEL_USER_ACL))
        .sentinels_log_in_as("sentinel-user", "supw");
    let t = SecureTopology::start_sized(&sec, 2, 1, 60_000);
    assert!(t.nodes[0]
        .cmd(&["CLIENT", "LIST"])
        .unwrap()
        .contains("user=sentinel-user"));
    let node = t.nodes[0].cli.as_user(Some("rfp"), Some("rpw"));
    assert_eq!(node.run(&["ROLE"]).unwrap().lines().next(), Some("master"));
    assert_eq!(
        node.run(&["PING"]).unwrap_err(),
        "NOPERM this user has no permissions to run the 'ping' command"
    );
    assert_eq!(
        node.run(&["GET", "k"]).unwrap_err(),
        "NOPERM this user has no permissions to run the 'get' command"
    );
    let norole = t.nodes[0].cli.as_user(Some("norole"), Some("rpw"));
    assert_eq!(
        norole.run(&["ROLE"]).unwrap_err(),
        "NOPERM this user has no permissions to run the 'role' command"
    );
    // HELLO with AUTH, and CLIENT SETNAME (which a client library might send) on a raw
    // connection.
    let mut raw = Client::connect(t.nodes[0].port);
    assert_eq!(raw.cmd(&["AUTH", "rfp", "rpw"]).unwrap(), "+OK");
    assert_eq!(
        raw.cmd(&["CLIENT", "SETNAME", "x"]).unwrap(),
        "-NOPERM this user has no permissions to run the 'client|setname' command"
    );
    assert_eq!(raw.cmd(&["ROLE"]).unwrap(), "*3");
    let mut hello = Client::connect(t.nodes[0].port);
    assert_eq!(
        hello.cmd(&["HELLO", "2", "AUTH", "rfp", "rpw"]).unwrap(),
        "*14",
        "HELLO needs no permission"
    );
    let mut wrong = Client::connect(t.nodes[0].port);
    assert_eq!(
        wrong.cmd(&["AUTH", "rfp", "bad"]).unwrap(),
        "-WRONGPASS invalid username-password pair or user is disabled."
    );
    assert_eq!(
        wrong.cmd(&["ROLE"]).unwrap(),
        "-NOAUTH Authentication required."
    );

    let s = t.sentinels[0].cli.as_user(Some("rfp"), Some("rpw"));
    for sub in ["MASTER", "REPLICAS", "SENTINELS"] {
        s.run(&["SENTINEL", sub, MASTER_NAME])
            .unwrap_or_else(|e| panic!("SENTINEL {sub}: {e}"));
    }
    // One sentinel of quorum 2: the permission is there, the verdict is an error reply.
    assert!(s
        .run(&["SENTINEL", "CKQUORUM", MASTER_NAME])
        .unwrap_err()
        .starts_with("NOQUORUM 1 usable Sentinels"));
    assert_eq!(
        s.run(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME])
            .unwrap_err(),
        "NOPERM this user has no permissions to run the 'sentinel|get-master-addr-by-name' command"
    );
    assert_eq!(
        s.run(&["SENTINEL", "FAILOVER", MASTER_NAME]).unwrap_err(),
        "NOPERM this user has no permissions to run the 'sentinel|failover' command"
    );
    let mut sub = Client::connect(t.sentinels[0].port);
    assert_eq!(sub.cmd(&["AUTH", "rfp", "rpw"]).unwrap(), "+OK");
    sub.stream
        .write_all(
            b"SUBSCRIBE +switch-master +failover-state-send-slaveof-noone +promoted-slave\r\nPING\r\n",
        )
        .unwrap();
    let lines = read_until(&mut sub, |l| l == "pong" || l.starts_with('-'));
    assert_eq!(lines.last().map(String::as_str), Some("pong"), "{lines:?}");
    assert_eq!(lines.iter().filter(|l| *l == "subscribe").count(), 3);
    // Without channel rules (Redis 7.0: acl-pubsub-default resetchannels) SUBSCRIBE fails.
    let mut nosub = Client::connect(t.sentinels[0].port);
    assert_eq!(nosub.cmd(&["AUTH", "nosub", "rpw"]).unwrap(), "+OK");
    assert_eq!(
        nosub.cmd(&["SUBSCRIBE", "+switch-master"]).unwrap(),
        "-NOPERM this user has no permissions to access one of the channels used as arguments"
    );
    assert_eq!(
        nosub.cmd(&["PSUBSCRIBE", "*"]).unwrap(),
        "-NOPERM this user has no permissions to run the 'psubscribe' command"
    );
    let mut wrong = Client::connect(t.sentinels[0].port);
    assert_eq!(
        wrong.cmd(&["AUTH", "bad"]).unwrap(),
        "-WRONGPASS invalid username-password pair or user is disabled."
    );
    assert_eq!(
        wrong.cmd(&["SENTINEL", "MASTER", MASTER_NAME]).unwrap(),
        "-NOAUTH Authentication required."
    );
}
