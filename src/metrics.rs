//! Metric names, their descriptions, and the closed sets of label values. Every metric the proxy
//! exports is named here and nowhere else; README's metrics reference mirrors this file.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

/// Client connections accepted by a route's listener. Labels: `route`.
pub const CONNECTIONS_ACCEPTED: &str = "redis_failover_proxy_connections_accepted_total";
/// Client connections currently open (held or in a session). Labels: `route`.
pub const CONNECTIONS_ACTIVE: &str = "redis_failover_proxy_connections_active";
/// Client connections closed without a session. Labels: `route`, `reason` ([`Rejected`]).
pub const CONNECTIONS_REJECTED: &str = "redis_failover_proxy_connections_rejected_total";
/// Client connections currently held waiting for a verified master. Labels: `route`.
pub const CONNECTIONS_HELD: &str = "redis_failover_proxy_connections_held";
/// Holds that ended, by outcome (`routed`, `timed_out`, `client_closed`, `shutdown`). Labels: `route`, `outcome`.
pub const HOLDS: &str = "redis_failover_proxy_holds_total";
/// Time a client spent held before its session started or it was closed. Labels: `route`.
pub const HOLD_DURATION: &str = "redis_failover_proxy_hold_duration_seconds";
/// Sessions ended, by reason ([`Closed`]). Labels: `route`, `reason`.
pub const SESSIONS_CLOSED: &str = "redis_failover_proxy_sessions_closed_total";
/// Bytes spliced. Labels: `route`, `direction` (`client_to_master`, `master_to_client`).
pub const BYTES: &str = "redis_failover_proxy_bytes_total";
/// Failed attempts to connect to the verified master. Labels: `route`.
pub const MASTER_CONNECT_ERRORS: &str = "redis_failover_proxy_master_connect_errors_total";
/// Accept errors (EMFILE and the like). Labels: `route`, `kind` (`fd_limit`, `other`).
pub const ACCEPT_ERRORS: &str = "redis_failover_proxy_accept_errors_total";
/// Times a new master was installed. Labels: `route`.
pub const MASTER_SWITCHES: &str = "redis_failover_proxy_master_switches_total";
/// Times an epoch was ended because its master was no longer trusted. Labels: `route`, `reason` ([`FenceReason`]).
pub const FENCES: &str = "redis_failover_proxy_fences_total";
/// From the evidence (switch event or poll) to the last session of the fenced epoch closed. Labels: `route`.
pub const FENCE_DURATION: &str = "redis_failover_proxy_fence_duration_seconds";
/// 1 for the route's current master address; rendered from route state at each scrape (see
/// [`master_info`]), so no series of an earlier address lingers. Labels: `route`, `addr`.
pub const MASTER_INFO: &str = "redis_failover_proxy_master_info";
/// 1 while the route has a verified master. Labels: `route`.
pub const MASTER_VERIFIED: &str = "redis_failover_proxy_master_verified";
/// The route's current epoch. Labels: `route`.
pub const EPOCH: &str = "redis_failover_proxy_epoch";
/// Sentinels that answered the last poll. Labels: `route`.
pub const SENTINELS_REACHABLE: &str = "redis_failover_proxy_sentinels_reachable";
/// 1 while a majority of the configured sentinels answered the last poll. Labels: `route`.
pub const SENTINEL_MAJORITY: &str = "redis_failover_proxy_sentinel_majority";
/// Sentinels configured. Labels: `route`.
pub const SENTINELS_CONFIGURED: &str = "redis_failover_proxy_sentinels_configured";
/// Sentinel query or subscription errors. Labels: `route`, `sentinel`, `kind` ([`SentinelErrorKind`]).
pub const SENTINEL_ERRORS: &str = "redis_failover_proxy_sentinel_errors_total";
/// `+switch-master` events received for the route's master. Labels: `route`.
pub const SWITCH_EVENTS: &str = "redis_failover_proxy_switch_events_total";
/// Failed `ROLE` checks of nodes, by kind (`connect`, `timeout`, `protocol`, `auth`, `noperm`,
/// `tls`, `oversized`). Labels: `route`, `kind`.
pub const NODE_CHECK_ERRORS: &str = "redis_failover_proxy_node_check_errors_total";
/// Sentinel events ignored as malformed or as repeats of evidence already acted on. Labels:
/// `route`, `sentinel`, `why` (`malformed`, `repeat`).
pub const SENTINEL_EVENTS_IGNORED: &str = "redis_failover_proxy_sentinel_events_ignored_total";
/// ROLE checks, by result (`master`, `replica`, `error`). Labels: `route`, `result`.
pub const ROLE_CHECKS: &str = "redis_failover_proxy_role_checks_total";
/// Admin HTTP connections closed at once because [`crate::admin::MAX_CONNECTIONS`] were
/// open. No labels (the admin server is not a route's).
pub const ADMIN_CONNECTIONS_REJECTED: &str =
    "redis_failover_proxy_admin_connections_rejected_total";
/// Configuration reloads (SIGHUP), by result (`ok`, `error`). Labels: `result`.
pub const CONFIG_RELOADS: &str = "redis_failover_proxy_config_reloads_total";
/// When the configuration was last loaded successfully (at start or by a reload), in seconds
/// since the Unix epoch. No labels.
pub const CONFIG_LAST_RELOAD_SUCCESS: &str =
    "redis_failover_proxy_config_last_reload_success_timestamp_seconds";

/// Why a client connection was closed without a session.
#[derive(Debug, Clone, Copy)]
pub enum Rejected {
    /// `max_connections` reached.
    Limit,
    /// Held for `hold_timeout` without a usable master.
    HoldTimeout,
    /// The process is shutting down.
    Shutdown,
    /// The client's TLS handshake with the listener failed or timed out.
    TlsHandshake,
}

impl Rejected {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejected::Limit => "limit",
            Rejected::HoldTimeout => "hold_timeout",
            Rejected::Shutdown => "shutdown",
            Rejected::TlsHandshake => "tls_handshake",
        }
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Both directions reached EOF, the client's first (or the client went away).
    ClientClosed,
    /// The master closed its side first.
    MasterClosed,
    /// Reading from or writing to the client failed.
    ClientError,
    /// Reading from or writing to the master failed.
    MasterError,
    /// The session's epoch was fenced (master changed or no longer trusted).
    MasterSwitch,
    /// The process shut down and the grace period ran out.
    Shutdown,
    /// A configuration reload removed the route (or moved it to another listen address or
    /// master name).
    RouteRemoved,
}

impl Closed {
    /// Every reason, in [`Closed::index`] order.
    pub const ALL: [Closed; 7] = [
        Closed::ClientClosed,
        Closed::MasterClosed,
        Closed::ClientError,
        Closed::MasterError,
        Closed::MasterSwitch,
        Closed::Shutdown,
        Closed::RouteRemoved,
    ];

    /// Position in [`Closed::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Closed::ClientClosed => "client_closed",
            Closed::MasterClosed => "master_closed",
            Closed::ClientError => "client_error",
            Closed::MasterError => "master_error",
            Closed::MasterSwitch => "master_switch",
            Closed::Shutdown => "shutdown",
            Closed::RouteRemoved => "route_removed",
        }
    }
}

/// Why an epoch was fenced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceReason {
    /// A `+switch-master` event named the current master as the old one.
    SwitchEvent,
    /// The sentinels (highest config-epoch, then majority) name another address.
    SentinelsNameOther,
    /// The master answered ROLE as a replica.
    RoleReplica,
    /// A sentinel started promoting a replica of the current master
    /// (`+failover-state-send-slaveof-noone`, or `failover_in_progress` in a poll).
    FailoverStarted,
    /// Fewer than a majority of the sentinels answered for `minority_grace`, with
    /// `on_minority = "fence"`.
    NoMajority,
    /// The master's replication offset went backwards: the process restarted.
    MasterRestarted,
}

impl FenceReason {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FenceReason::SwitchEvent => "switch_event",
            FenceReason::SentinelsNameOther => "sentinels_name_other",
            FenceReason::RoleReplica => "role_replica",
            FenceReason::FailoverStarted => "failover_started",
            FenceReason::NoMajority => "no_sentinel_majority",
            FenceReason::MasterRestarted => "master_restarted",
        }
    }
}

/// What went wrong talking to a sentinel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SentinelErrorKind {
    /// Could not connect (refused, unresolvable, timed out connecting).
    Connect,
    /// Connected, but no reply in time.
    Timeout,
    /// The reply was an error or not what a sentinel sends.
    Protocol,
    /// The sentinel does not monitor the route's master name.
    UnknownMaster,
    /// The `+switch-master` subscription broke.
    Subscription,
    /// The peer refused the proxy's credentials (wrong password, unknown user) or requires a
    /// password and none is configured (`NOAUTH`).
    Auth,
    /// The proxy's ACL user lacks a command it needs (`NOPERM`; the message names it).
    NoPerm,
    /// The TLS handshake or a TLS record failed (untrusted or expired certificate, wrong name,
    /// missing client certificate).
    Tls,
    /// A reply or event exceeded the size bound; the connection was dropped.
    Oversized,
}

impl SentinelErrorKind {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            SentinelErrorKind::Connect => "connect",
            SentinelErrorKind::Timeout => "timeout",
            SentinelErrorKind::Protocol => "protocol",
            SentinelErrorKind::UnknownMaster => "unknown_master",
            SentinelErrorKind::Subscription => "subscription",
            SentinelErrorKind::Auth => "auth",
            SentinelErrorKind::NoPerm => "noperm",
            SentinelErrorKind::Tls => "tls",
            SentinelErrorKind::Oversized => "oversized",
        }
    }

    /// Every kind, for registering each label value at 0.
    pub const ALL: [SentinelErrorKind; 9] = [
        SentinelErrorKind::Connect,
        SentinelErrorKind::Timeout,
        SentinelErrorKind::Protocol,
        SentinelErrorKind::UnknownMaster,
        SentinelErrorKind::Subscription,
        SentinelErrorKind::Auth,
        SentinelErrorKind::NoPerm,
        SentinelErrorKind::Tls,
        SentinelErrorKind::Oversized,
    ];

    /// The kinds a node check (`ROLE`) can fail with.
    pub const NODE: [SentinelErrorKind; 7] = [
        SentinelErrorKind::Connect,
        SentinelErrorKind::Timeout,
        SentinelErrorKind::Protocol,
        SentinelErrorKind::Auth,
        SentinelErrorKind::NoPerm,
        SentinelErrorKind::Tls,
        SentinelErrorKind::Oversized,
    ];
}

/// The `master_info` lines for `/metrics`: one series per route that has a master, none for
/// earlier addresses (a registry gauge would keep one series per address ever seen).
pub fn master_info(masters: &[(String, std::net::SocketAddr)]) -> String {
    let mut out = format!(
        "# HELP {MASTER_INFO} The current master address of the route (1)\n# TYPE {MASTER_INFO} gauge\n"
    );
    for (route, addr) in masters {
        let route = route
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        out.push_str(&format!(
            "{MASTER_INFO}{{route=\"{route}\",addr=\"{addr}\"}} 1\n"
        ));
    }
    out
}

/// Fence durations are short by design; these buckets resolve 100 µs to 10 s.
pub const FENCE_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Hold durations span the failover window.
pub const HOLD_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Registers descriptions of every metric with the installed recorder.
pub fn describe() {
    describe_counter!(CONNECTIONS_ACCEPTED, "Client connections accepted");
    describe_gauge!(
        CONNECTIONS_ACTIVE,
        "Client connections open (held or in a session)"
    );
    describe_counter!(
        CONNECTIONS_REJECTED,
        "Client connections closed without a session, by reason"
    );
    describe_gauge!(
        CONNECTIONS_HELD,
        "Client connections waiting for a verified master"
    );
    describe_counter!(HOLDS, "Holds ended, by outcome");
    describe_histogram!(HOLD_DURATION, Unit::Seconds, "Time clients spent held");
    describe_counter!(SESSIONS_CLOSED, "Sessions ended, by reason");
    describe_counter!(BYTES, Unit::Bytes, "Bytes spliced, by direction");
    describe_counter!(
        MASTER_CONNECT_ERRORS,
        "Failed connects to the verified master"
    );
    describe_counter!(
        ACCEPT_ERRORS,
        "Accept errors on the client listener, by kind"
    );
    describe_counter!(MASTER_SWITCHES, "New masters installed");
    describe_counter!(
        FENCES,
        "Epochs ended because the master was no longer trusted, by reason"
    );
    describe_histogram!(
        FENCE_DURATION,
        Unit::Seconds,
        "From evidence of a master change to the last session of the fenced epoch closed"
    );
    describe_gauge!(MASTER_VERIFIED, "1 while the route has a verified master");
    describe_gauge!(EPOCH, "Current epoch of the route");
    describe_gauge!(SENTINELS_REACHABLE, "Sentinels that answered the last poll");
    describe_gauge!(SENTINELS_CONFIGURED, "Sentinels configured for the route");
    describe_gauge!(
        SENTINEL_MAJORITY,
        "1 while a majority of the sentinels answered the last poll"
    );
    describe_counter!(
        SENTINEL_ERRORS,
        "Sentinel query or subscription errors, by kind"
    );
    describe_counter!(
        SWITCH_EVENTS,
        "+switch-master events received for the route's master"
    );
    describe_counter!(ROLE_CHECKS, "ROLE checks of master candidates, by result");
    describe_counter!(
        NODE_CHECK_ERRORS,
        "Failed ROLE checks of nodes, by kind (auth, noperm, tls, ...)"
    );
    describe_counter!(
        SENTINEL_EVENTS_IGNORED,
        "Sentinel events ignored (malformed, or a repeat of evidence already acted on)"
    );
    describe_counter!(
        ADMIN_CONNECTIONS_REJECTED,
        "Admin HTTP connections closed at once because the admin connection cap was reached"
    );
    describe_counter!(CONFIG_RELOADS, "Configuration reloads (SIGHUP), by result");
    describe_gauge!(
        CONFIG_LAST_RELOAD_SUCCESS,
        Unit::Seconds,
        "When the configuration was last loaded successfully (start or reload)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_info_has_only_current_series() {
        let a: std::net::SocketAddr = "10.0.0.1:6379".parse().unwrap();
        let text = master_info(&[("r\"1".to_string(), a)]);
        assert!(
            text.contains(
                "redis_failover_proxy_master_info{route=\"r\\\"1\",addr=\"10.0.0.1:6379\"} 1\n"
            ),
            "{text}"
        );
        assert_eq!(
            master_info(&[])
                .lines()
                .filter(|l| !l.starts_with('#'))
                .count(),
            0
        );
    }
}
