//! The `+switch-master` subscription to one sentinel: keeps it alive (reconnecting with
//! backoff, pinging an idle link), turns the messages for our master name into events for the
//! watcher, and drops or throttles what a sentinel sends beyond that (malformed messages, events
//! from a sentinel the watcher no longer trusts). Parsing is pure and tested below.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use metrics::counter;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::client::{join_host_port, peer_text, Peer, PeerError};
use super::MAX_BACKOFF;
use crate::metrics::{self as m, SentinelErrorKind};
use crate::route::Route;

/// How often an idle `+switch-master` subscription is pinged, so a dead link is noticed.
const SUBSCRIPTION_PING: Duration = Duration::from_secs(5);
/// At most one "malformed sentinel event" log line per sentinel this often.
const MALFORMED_LOG_EVERY: Duration = Duration::from_secs(10);
/// A subscription that lasted this long resets its reconnect backoff.
const SUBSCRIPTION_STABLE: Duration = Duration::from_secs(10);

/// What a subscription task tells the watcher.
#[derive(Debug)]
pub(super) enum Event {
    /// `+switch-master <name> <old-ip> <old-port> <new-ip> <new-port>` for our master name.
    Switch {
        sentinel: usize,
        old: String,
        new: String,
        at: Instant,
    },
    /// `+failover-state-send-slaveof-noone` for our master name: a sentinel is about to
    /// promote a replica of `master`. From here on, writes to `master` may be lost.
    Promoting {
        sentinel: usize,
        master: String,
        at: Instant,
    },
    /// A subscription was (re)established or a replica was promoted: re-query.
    Hint,
}

/// Per sentinel: until when its failover events are not acted on, because its own poll
/// contradicted an event it sent (it named the master again, at the same config-epoch, with no
/// failover in progress) or its failover claim outlived the group's failover-timeout. Polls
/// still count; only the events' power to fence at once is suspended.
#[derive(Debug, Default)]
pub(super) struct EventGate {
    until: Mutex<Vec<Option<Instant>>>,
}

impl EventGate {
    pub(super) fn new(n: usize) -> EventGate {
        EventGate {
            until: Mutex::new(vec![None; n]),
        }
    }

    pub(super) fn distrust(&self, i: usize, until: Instant) {
        if let Some(slot) = self
            .until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(i)
        {
            *slot = Some(until);
        }
    }

    pub(super) fn trusts(&self, i: usize, now: Instant) -> bool {
        self.until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(i)
            .copied()
            .flatten()
            .is_none_or(|u| now >= u)
    }
}

/// The sentinel channels each subscription listens on.
pub(super) const CHANNELS: [&str; 3] = [
    "+switch-master",
    "+failover-state-send-slaveof-noone",
    "+promoted-slave",
];

/// What a subscription hands the watcher: failover events (bounded), re-query hints (a flag,
/// so no flood of hints can crowd out an event), and the gate saying whose events count.
pub(super) struct ToWatcher {
    pub(super) tx: mpsc::Sender<Event>,
    pub(super) hints: Arc<Notify>,
    pub(super) gate: Arc<EventGate>,
}

/// Lets one thing through per `every`, counting what it held back.
pub(super) struct Throttle {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    pub(super) fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` when allowed now, with `n` the occurrences held back since the last one.
    pub(super) fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|l| now.duration_since(l) < self.every)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Whether the `ip port` of an event names the master announced as `announced` / resolved to `addr`.
pub(super) fn names(event_addr: &str, announced: &str, addr: SocketAddr) -> bool {
    if event_addr == announced {
        return true;
    }
    event_addr.parse::<SocketAddr>().is_ok_and(|a| a == addr)
}

/// Keeps a `+switch-master` subscription to one sentinel alive and forwards our master's events.
pub(super) async fn subscribe(
    index: usize,
    addr: String,
    peer: Peer,
    route: Arc<Route>,
    to: ToWatcher,
    shutdown: CancellationToken,
) {
    let ToWatcher { tx, hints, gate } = to;
    let timeout = peer.timeout;
    let name = route.name().to_string();
    let master_name = route.config().master_name.clone();
    let mut backoff = Duration::from_millis(100);
    let mut failed_before = false;
    let mut malformed = Throttle::new(MALFORMED_LOG_EVERY);
    loop {
        let connect = async {
            let (mut ps, refusal) = peer.pubsub().await?;
            // Redis's NOPERM for a channel does not say which one: name them all.
            ps.subscribe(&CHANNELS[..]).await.map_err(|e| {
                let mut err = peer.redis_error(&e);
                err.message = format!("SUBSCRIBE {} failed: {}", CHANNELS.join(" "), err.message);
                err
            })?;
            Ok::<_, PeerError>((ps, refusal))
        };
        let pubsub = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = tokio::time::timeout(timeout * 4, connect) => match r {
                Ok(Ok(ps)) => Ok(ps),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(PeerError { role: "sentinel", addr: addr.clone(), kind: SentinelErrorKind::Timeout, message: "subscribing timed out".to_string(), io: None }),
            }
        };
        let pubsub = match pubsub {
            Ok(p) => Some(p),
            Err(e) => {
                if !failed_before {
                    warn!(route = name, sentinel = %addr, kind = e.kind.as_str(), error = %e, "cannot subscribe to +switch-master");
                }
                // Credential, permission and TLS failures keep their own kind (the poll counts
                // them too); anything else is a subscription failure.
                let kind = match e.kind {
                    k @ (SentinelErrorKind::Auth
                    | SentinelErrorKind::NoPerm
                    | SentinelErrorKind::Tls
                    | SentinelErrorKind::Oversized) => k,
                    _ => SentinelErrorKind::Subscription,
                };
                counter!(m::SENTINEL_ERRORS, "route" => name.clone(), "sentinel" => addr.clone(), "kind" => kind.as_str()).increment(1);
                let message = e.to_string();
                route
                    .observed
                    .update_sentinel(index, |s| s.subscription_error = Some(message));
                None
            }
        };
        let Some((pubsub, refusal)) = pubsub else {
            failed_before = true;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        };
        if failed_before {
            info!(route = name, sentinel = %addr, "subscribed to +switch-master again");
        }
        failed_before = false;
        let subscribed_at = Instant::now();
        route.observed.update_sentinel(index, |s| {
            s.subscribed = true;
            s.subscription_error = None;
        });
        hints.notify_one();

        let (mut sink, mut stream) = pubsub.split();
        // The keep-alive runs beside the reading, so messages keep draining while a PONG is
        // awaited (redis-rs queues them without bound until read).
        let pinger = async move {
            let mut ping = tokio::time::interval(SUBSCRIPTION_PING);
            ping.tick().await;
            loop {
                ping.tick().await;
                match tokio::time::timeout(timeout * 2, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) => return "ping failed",
                    Err(_) => return "ping timed out",
                }
            }
        };
        tokio::pin!(pinger);
        let why = loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                why = &mut pinger => break why,
                msg = stream.next() => {
                    let Some(msg) = msg else { break "connection closed" };
                    let channel = msg.get_channel_name().to_string();
                    let parsed = match msg.get_payload::<String>() {
                        Ok(payload) => parse_event(&channel, &payload, index, &master_name)
                            .map_err(|()| payload),
                        Err(_) => Err("(not UTF-8)".to_string()),
                    };
                    match parsed {
                        Ok(Some(Event::Hint)) => hints.notify_one(),
                        Ok(Some(ev)) if gate.trusts(index, Instant::now()) => {
                            // Bounded: if the watcher is that far behind, the events queued
                            // already make it fence or re-query.
                            if tx.try_send(ev).is_err() {
                                hints.notify_one();
                            }
                        }
                        Ok(Some(_)) => {
                            counter!(m::SENTINEL_EVENTS_IGNORED, "route" => name.clone(), "sentinel" => addr.clone(), "why" => "repeat").increment(1);
                            hints.notify_one();
                        }
                        Ok(None) => {}
                        Err(payload) => {
                            counter!(m::SENTINEL_EVENTS_IGNORED, "route" => name.clone(), "sentinel" => addr.clone(), "why" => "malformed").increment(1);
                            // A flood of garbage must not become a flood of log lines.
                            if let Some(suppressed) = malformed.allow(Instant::now()) {
                                warn!(route = name, sentinel = %addr, channel = %peer_text(&channel), payload = %peer_text(&payload), suppressed, "malformed sentinel event ignored");
                            }
                        }
                    }
                }
            }
        };
        // An event (or a PONG) over the size bound ends the link like a lost connection does;
        // the bound says which it was.
        match refusal.get() {
            Some(over) => {
                counter!(m::SENTINEL_ERRORS, "route" => name.clone(), "sentinel" => addr.clone(), "kind" => SentinelErrorKind::Oversized.as_str()).increment(1);
                warn!(route = name, sentinel = %addr, kind = SentinelErrorKind::Oversized.as_str(), error = %over, "+switch-master subscription dropped: message too large; resubscribing");
                let message =
                    format!("sentinel {addr}: subscription dropped: message too large: {over}");
                route.observed.update_sentinel(index, |s| {
                    s.subscribed = false;
                    s.subscription_error = Some(message);
                });
            }
            None => {
                counter!(m::SENTINEL_ERRORS, "route" => name.clone(), "sentinel" => addr.clone(), "kind" => SentinelErrorKind::Subscription.as_str()).increment(1);
                warn!(route = name, sentinel = %addr, why, "+switch-master subscription lost; resubscribing");
                let message = format!("sentinel {addr}: subscription lost: {why}");
                route.observed.update_sentinel(index, |s| {
                    s.subscribed = false;
                    s.subscription_error = Some(message);
                });
            }
        }
        // A sentinel that accepts and then drops subscriptions must not get a reconnect loop
        // (each resubscription also makes the watcher re-query).
        backoff = if subscribed_at.elapsed() >= SUBSCRIPTION_STABLE {
            Duration::from_millis(100)
        } else {
            (backoff * 2).min(MAX_BACKOFF)
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
    }
}

/// Turns a message on one of [`CHANNELS`] into an event for our master name (`Ok(None)` for
/// another master's).
pub(super) fn parse_event(
    channel: &str,
    payload: &str,
    sentinel: usize,
    master_name: &str,
) -> Result<Option<Event>, ()> {
    let at = Instant::now();
    if channel == "+switch-master" {
        let (name, old, new) = parse_switch(payload).ok_or(())?;
        return Ok((name == master_name).then_some(Event::Switch {
            sentinel,
            old,
            new,
            at,
        }));
    }
    let (name, master) = parse_instance_master(payload).ok_or(())?;
    if name != master_name {
        return Ok(None);
    }
    Ok(Some(if channel == "+failover-state-send-slaveof-noone" {
        Event::Promoting {
            sentinel,
            master,
            at,
        }
    } else {
        Event::Hint
    }))
}

/// From sentinel "instance details" (`<type> <name> <ip> <port> @ <master-name> <master-ip>
/// <master-port>`), the master name and `ip:port`.
pub(super) fn parse_instance_master(payload: &str) -> Option<(String, String)> {
    let mut parts = payload.split_whitespace().skip_while(|p| *p != "@").skip(1);
    let (name, ip, port) = (parts.next()?, parts.next()?, parts.next()?);
    let port: u16 = port.parse().ok()?;
    Some((name.to_string(), join_host_port(host_token(ip)?, port)))
}

/// Parses `<name> <old-ip> <old-port> <new-ip> <new-port>`.
pub(super) fn parse_switch(payload: &str) -> Option<(String, String, String)> {
    let parts: Vec<&str> = payload.split_whitespace().collect();
    let [name, old_ip, old_port, new_ip, new_port] = parts.as_slice() else {
        return None;
    };
    let old_port: u16 = old_port.parse().ok()?;
    let new_port: u16 = new_port.parse().ok()?;
    Some((
        name.to_string(),
        join_host_port(host_token(old_ip)?, old_port),
        join_host_port(host_token(new_ip)?, new_port),
    ))
}

/// A host as an event may name one: no control characters, at most 255 bytes.
pub(super) fn host_token(s: &str) -> Option<&str> {
    (s.len() <= 255 && !s.chars().any(char::is_control)).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_payload() {
        assert_eq!(
            parse_switch("redis-ha 127.0.0.1 16300 127.0.0.1 36300"),
            Some((
                "redis-ha".into(),
                "127.0.0.1:16300".into(),
                "127.0.0.1:36300".into()
            ))
        );
        assert_eq!(parse_switch("redis-ha 127.0.0.1 x 127.0.0.1 1"), None);
        assert_eq!(parse_switch("redis-ha \u{1b}[31m 1 127.0.0.1 1"), None);
        assert_eq!(parse_switch("too few"), None);
    }

    #[test]
    fn failover_events() {
        let p = "slave 127.0.0.1:26300 127.0.0.1 26300 @ redis-ha 127.0.0.1 16300";
        assert_eq!(
            parse_instance_master(p),
            Some(("redis-ha".into(), "127.0.0.1:16300".into()))
        );
        assert!(matches!(
            parse_event("+failover-state-send-slaveof-noone", p, 0, "redis-ha"),
            Ok(Some(Event::Promoting { .. }))
        ));
        assert!(matches!(
            parse_event("+promoted-slave", p, 0, "redis-ha"),
            Ok(Some(Event::Hint))
        ));
        assert!(matches!(
            parse_event("+promoted-slave", p, 0, "other"),
            Ok(None)
        ));
        assert!(parse_event(
            "+promoted-slave",
            "slave x @ redis-ha 1.2.3.4",
            0,
            "redis-ha"
        )
        .is_err());
        assert!(parse_event("+switch-master", "garbage", 0, "redis-ha").is_err());
    }

    #[test]
    fn event_names_master() {
        let addr: SocketAddr = "127.0.0.1:16300".parse().unwrap();
        assert!(names("127.0.0.1:16300", "redis1:16300", addr));
        assert!(names("redis1:16300", "redis1:16300", addr));
        assert!(!names("127.0.0.1:26300", "redis1:16300", addr));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(500))]

            /// Any payload on any channel is an event for us, another master's, or refused;
            /// never a panic, and what is accepted names printable addresses.
            #[test]
            fn any_event_payload_is_interpreted_or_refused(
                channel in prop::sample::select(vec![
                    "+switch-master",
                    "+failover-state-send-slaveof-noone",
                    "+promoted-slave",
                ]),
                payload in ".{0,200}",
            ) {
                match parse_event(channel, &payload, 0, "redis-ha") {
                    Ok(Some(Event::Switch { old, new, .. })) => {
                        prop_assert!(!old.chars().any(char::is_control));
                        prop_assert!(!new.chars().any(char::is_control));
                    }
                    Ok(Some(Event::Promoting { master, .. })) => {
                        prop_assert!(!master.chars().any(char::is_control));
                    }
                    _ => {}
                }
            }

            #[test]
            fn generated_switch_payloads_round_trip(
                name in "[a-z-]{1,20}",
                old_ip in "[0-9.]{7,15}",
                old_port in any::<u16>(),
                new_ip in "[a-z0-9.]{1,30}",
                new_port in any::<u16>(),
            ) {
                let p = format!("{name} {old_ip} {old_port} {new_ip} {new_port}");
                let (n, o, w) = parse_switch(&p).unwrap();
                prop_assert_eq!(n, name);
                prop_assert_eq!(o, format!("{old_ip}:{old_port}"));
                prop_assert_eq!(w, format!("{new_ip}:{new_port}"));
            }
        }
    }
}
