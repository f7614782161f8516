//! Hostile sentinel replies a real sentinel cannot produce, from a scripted fake: the proxy
//! stays up, routes nowhere it should not, counts and logs the error.

mod support;

use std::time::{Duration, Instant};

use support::fake_sentinel::FakeSentinel;
use support::*;

fn proxy_for(fake: &FakeSentinel) -> Proxy {
    Proxy::start_with(
        &[fake.port],
        ProxyOpts {
            hold_timeout: "300ms",
            ..Default::default()
        },
    )
}

fn assert_not_routing(proxy: &Proxy) {
    let (code, body) = proxy.http("/readyz").expect("admin answers");
    assert_eq!(code, 503, "{body}");
    assert_eq!(proxy.http("/healthz").map(|r| r.0), Some(200));
    let mut c = Client::connect(proxy.port);
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "held client not released"
    );
    assert_eq!(
        proxy.metric("redis_failover_proxy_master_switches_total", &[]),
        0.0
    );
}

#[test]
fn unspecified_address_is_never_routed_to() {
    let fake = FakeSentinel::start(Some(FakeSentinel::master_reply("0.0.0.0", "6379", "7")));
    let proxy = proxy_for(&fake);
    wait_until(Duration::from_secs(5), "rejection logged", || {
        proxy.log().contains("unspecified address")
    });
    assert_not_routing(&proxy);
}

#[test]
fn unresolvable_name_is_never_routed_to() {
    let fake = FakeSentinel::start(Some(FakeSentinel::master_reply(
        "no-such-host.invalid",
        "6379",
        "1",
    )));
    let proxy = proxy_for(&fake);
    wait_until(Duration::from_secs(10), "rejection logged", || {
        proxy.log().contains("cannot resolve")
    });
    assert_not_routing(&proxy);
}

#[test]
fn malformed_replies_are_counted_as_protocol_errors() {
    for reply in [
        b":42\r\n".to_vec(),
        b"*1\r\n$2\r\nip\r\n".to_vec(),
        FakeSentinel::master_reply("127.0.0.1", "99999", "1"),
        FakeSentinel::master_reply("127.0.0.1", "6379", "-5"),
        FakeSentinel::master_reply("bad host", "6379", "1"),
        b"-ERR something odd\r\n".to_vec(),
    ] {
        let fake = FakeSentinel::start(Some(reply.clone()));
        let proxy = proxy_for(&fake);
        proxy.wait_metric(
            Duration::from_secs(5),
            "protocol error counted",
            "redis_failover_proxy_sentinel_errors_total",
            &[("kind", "protocol")],
            |v| v >= 2.0,
        );
        assert_not_routing(&proxy);
        assert!(
            !proxy.log().contains("panicked"),
            "reply {:?}",
            String::from_utf8_lossy(&reply)
        );
    }
}

#[test]
fn a_silent_sentinel_times_out_without_stalling_the_proxy() {
    let fake = FakeSentinel::start(None);
    let proxy = proxy_for(&fake);
    let start = Instant::now();
    proxy.wait_metric(
        Duration::from_secs(10),
        "timeout counted",
        "redis_failover_proxy_sentinel_errors_total",
        &[("kind", "timeout")],
        |v| v >= 1.0,
    );
    eprintln!("silent sentinel detected after {:?}", start.elapsed());
    assert_not_routing(&proxy);
}
