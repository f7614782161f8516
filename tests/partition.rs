//! The proxy on the minority side of a partition: it reaches only the old master and one
//! sentinel while the other two sentinels elect a new master. `sentinel.on_minority` decides:
//! `keep` serves the old master (available, writes lost when the partition heals), `fence`
//! self-fences after `minority_grace` (nothing written after the fence reaches the old master).

mod support;

use std::time::{Duration, Instant, UNIX_EPOCH};

use support::net::Net;
use support::workload::{keys_on, Workload};
use support::*;

struct Outcome {
    acked: usize,
    lost: usize,
    after_fence: usize,
    gap: Duration,
    fence_reason: String,
    fence_after_cut: Option<Duration>,
    /// Writes sent more than 4 s after the cut that the old master took.
    late_on_old: usize,
}

fn minority(policy: &'static str, min_replicas: bool) -> Option<Outcome> {
    let net = Net::new(&["a", "b", "c", "p"])?;
    let hosts = [net.host("a"), net.host("b"), net.host("c")];
    let t = Topology::start_on(&hosts, &hosts, 1000);
    if min_replicas {
        for n in &t.nodes {
            redis_cmd_at(n.addr(), &["CONFIG", "SET", "min-replicas-to-write", "1"]).unwrap();
            redis_cmd_at(n.addr(), &["CONFIG", "SET", "min-replicas-max-lag", "2"]).unwrap();
        }
    }
    let sentinel_extra = if policy == "fence" {
        "on_minority = \"fence\"\nminority_grace = \"1s\""
    } else {
        "on_minority = \"keep\""
    };
    let proxy = Proxy::start_on(
        net.host("p"),
        &t.sentinel_addrs(),
        ProxyOpts {
            hold_timeout: "60s",
            sentinel_extra,
            ..Default::default()
        },
    );
    proxy.wait_ready();
    let old = t.nodes[0].addr();
    let load = Workload::start(proxy.addr(), 4, "m");
    wait_until(Duration::from_secs(10), "the workload writes", || {
        keys_on(old, "m").len() > 100
    });

    let cut = Instant::now();
    let cut_wall = std::time::SystemTime::now();
    net.partition(&[&["a", "p"], &["b", "c"]]);
    let mut fence_after_cut = None;
    if policy == "fence" {
        wait_until(Duration::from_secs(10), "the proxy fences itself", || {
            proxy.status()["routes"][0]["last_fence"]["reason"] == "no_sentinel_majority"
        });
        fence_after_cut = Some(cut.elapsed());
        let (code, body) = proxy.http("/readyz").unwrap();
        assert_eq!(code, 503, "{body}");
    }
    let new_port = t.wait_new_master(old.port());
    eprintln!(
        "sentinels named a new master {:?} after the cut",
        cut.elapsed()
    );
    let new = t.nodes.iter().find(|n| n.port == new_port).unwrap().addr();
    if policy != "fence" {
        // Keep: the old master still takes the workload's writes while the partition lasts.
        let before = keys_on(old, "m").len();
        wait_until(
            Duration::from_secs(10),
            "writes still land on the old master",
            || keys_on(old, "m").len() > before + 100 || min_replicas,
        );
        assert_eq!(
            proxy.master().unwrap().1,
            old.to_string(),
            "keep must not switch"
        );
        let (_, body) = proxy.http("/readyz").unwrap();
        assert!(body.contains("only 1/3 sentinels reachable"), "{body}");
    }
    // What the old master holds before it rejoins as a replica (which discards it).
    let on_old = keys_on(old, "m");
    net.heal();
    wait_until(
        Duration::from_secs(20),
        "the proxy routes to the new master",
        || proxy.master().is_some_and(|(_, a)| a == new.to_string()),
    );
    let served = keys_on(new, "m").len();
    wait_until(
        Duration::from_secs(20),
        "the workload writes to the new master",
        || keys_on(new, "m").len() > served + 100,
    );
    let report = load.stop();
    let status = proxy.status();
    let fence = &status["routes"][0]["last_fence"];
    let fence_unix = if policy == "fence" {
        // The self-fence was the first fence; the later switch replaced the record, so use
        // the moment we saw it (an upper bound: the real fence came earlier).
        cut_wall + fence_after_cut.unwrap_or_default()
    } else {
        UNIX_EPOCH + Duration::from_secs_f64(fence["unix"].as_f64().unwrap_or(0.0))
    };
    let lost = report.lost(&keys_on(new, "m"));
    for n in &t.nodes {
        let role = redis_cmd_at(n.addr(), &["ROLE"])
            .map(|v| format!("{v:?}"))
            .unwrap_or_default();
        eprintln!(
            "node {} holds {} keys; ROLE {}",
            n.addr(),
            keys_on(n.addr(), "m").len(),
            &role[..role.len().min(120)]
        );
    }
    Some(Outcome {
        acked: report.acked(),
        lost: lost.len(),
        after_fence: report.reached_after(&on_old, fence_unix),
        late_on_old: report.reached_after(&on_old, cut_wall + Duration::from_secs(4)),
        gap: report.longest_gap(),
        fence_reason: fence["reason"].as_str().unwrap_or("").to_string(),
        fence_after_cut,
    })
}

fn report(policy: &str, min_replicas: bool, o: &Outcome) {
    eprintln!(
        "partition, proxy on the minority side [on_minority = {policy}, min-replicas-to-write {}]: \
         acked {}, acked-but-lost {}, sent after the fence yet reached the old master {}, \
         longest gap without an ack {:?}, self-fence after the cut {:?}, last fence reason {}",
        u8::from(min_replicas),
        o.acked,
        o.lost,
        o.after_fence,
        o.gap,
        o.fence_after_cut,
        o.fence_reason
    );
}

#[test]
fn minority_side_keep_serves_the_old_master_and_loses_its_writes() {
    let Some(o) = minority("keep", false) else {
        return;
    };
    report("keep", false, &o);
    assert!(
        o.lost > 0,
        "keep should have served (and lost) writes on the old master"
    );
}

#[test]
fn minority_side_keep_with_min_replicas_to_write_bounds_the_loss() {
    let Some(o) = minority("keep", true) else {
        return;
    };
    report("keep", true, &o);
    // min-replicas-max-lag is 2 s: by 4 s after the cut the old master refuses every write.
    assert_eq!(o.late_on_old, 0, "the isolated master kept taking writes");
}

#[test]
fn minority_side_fence_stops_writes_to_the_old_master() {
    let Some(o) = minority("fence", false) else {
        return;
    };
    report("fence", false, &o);
    assert_eq!(
        o.after_fence, 0,
        "writes sent after the self-fence reached the old master"
    );
    let fenced = o.fence_after_cut.unwrap();
    assert!(
        fenced < Duration::from_secs(5),
        "self-fence took {fenced:?}"
    );
}
