//! Metric names, their descriptions, and the closed sets of label values. Every metric the proxy
//! exports is named here and nowhere else; docs/metrics.md documents each (a unit test checks).

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
/// Failed `ROLE` checks of nodes, by kind (`connect`, `connect_timeout`, `timeout`, `protocol`,
/// `auth`, `noperm`, `tls`, `oversized`). Labels: `route`, `kind`.
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
/// Always 1; the labels say which build runs. Labels: `version` (Cargo.toml), `revision` (the
/// git commit it was built from, `RFP_BUILD_REVISION` at build time, or `unknown`).
pub const BUILD_INFO: &str = "redis_failover_proxy_build_info";

/// The standard process metrics (the names every Prometheus client library uses), rendered
/// from `/proc/self` at each scrape ([`process_metrics`]). No labels.
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
/// Soft limit on open file descriptors (`RLIMIT_NOFILE`).
pub const PROCESS_MAX_FDS: &str = "process_max_fds";
/// Resident memory in bytes.
pub const PROCESS_RESIDENT_MEMORY: &str = "process_resident_memory_bytes";
/// Virtual memory in bytes.
pub const PROCESS_VIRTUAL_MEMORY: &str = "process_virtual_memory_bytes";
/// User and system CPU time in seconds.
pub const PROCESS_CPU_SECONDS: &str = "process_cpu_seconds_total";
/// Start time of the process in seconds since the Unix epoch.
pub const PROCESS_START_TIME: &str = "process_start_time_seconds";
/// OS threads of the process.
pub const PROCESS_THREADS: &str = "process_threads";

/// The `outcome` label values of [`HOLDS`].
pub const HOLD_OUTCOMES: [&str; 4] = ["routed", "timed_out", "client_closed", "shutdown"];
/// The `kind` label values of [`ACCEPT_ERRORS`].
pub const ACCEPT_ERROR_KINDS: [&str; 2] = ["fd_limit", "other"];
/// The `result` label values of [`ROLE_CHECKS`].
pub const ROLE_RESULTS: [&str; 3] = ["master", "replica", "error"];
/// The `why` label values of [`SENTINEL_EVENTS_IGNORED`].
pub const IGNORED_WHY: [&str; 2] = ["malformed", "repeat"];

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
    /// Every reason, for registering each label value at 0.
    pub const ALL: [Rejected; 4] = [
        Rejected::Limit,
        Rejected::HoldTimeout,
        Rejected::Shutdown,
        Rejected::TlsHandshake,
    ];

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
    /// Every reason, for registering each label value at 0.
    pub const ALL: [FenceReason; 6] = [
        FenceReason::SwitchEvent,
        FenceReason::SentinelsNameOther,
        FenceReason::RoleReplica,
        FenceReason::FailoverStarted,
        FenceReason::NoMajority,
        FenceReason::MasterRestarted,
    ];

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
    /// Could not connect (refused, reset, unreachable, unresolvable).
    Connect,
    /// No connection within the timeout (a lost SYN, a full listen queue, a partition): says
    /// nothing about the peer itself.
    ConnectTimeout,
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
            SentinelErrorKind::ConnectTimeout => "connect_timeout",
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
    pub const ALL: [SentinelErrorKind; 10] = [
        SentinelErrorKind::Connect,
        SentinelErrorKind::ConnectTimeout,
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
    pub const NODE: [SentinelErrorKind; 8] = [
        SentinelErrorKind::Connect,
        SentinelErrorKind::ConnectTimeout,
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

/// Registers every series of route `route` (with `sentinels`, as configured) that is not
/// there from the start otherwise: each counter and each of its label values at 0, the
/// histograms empty and the gauges at their value or 0. So `increase()` and `rate()` see the
/// first event, and a dashboard has every series from startup. Called by
/// [`Route::new`](crate::route::Route::new), so a route added at runtime registers too.
pub fn register_route(route: &str, sentinels: &[String]) {
    use metrics::{counter, gauge, histogram};
    let r = || route.to_string();
    for reason in Rejected::ALL {
        counter!(CONNECTIONS_REJECTED, "route" => r(), "reason" => reason.as_str()).increment(0);
    }
    for outcome in HOLD_OUTCOMES {
        counter!(HOLDS, "route" => r(), "outcome" => outcome).increment(0);
    }
    for reason in Closed::ALL {
        counter!(SESSIONS_CLOSED, "route" => r(), "reason" => reason.as_str()).increment(0);
    }
    for direction in ["client_to_master", "master_to_client"] {
        counter!(BYTES, "route" => r(), "direction" => direction).increment(0);
    }
    for kind in ACCEPT_ERROR_KINDS {
        counter!(ACCEPT_ERRORS, "route" => r(), "kind" => kind).increment(0);
    }
    for reason in FenceReason::ALL {
        counter!(FENCES, "route" => r(), "reason" => reason.as_str()).increment(0);
    }
    for result in ROLE_RESULTS {
        counter!(ROLE_CHECKS, "route" => r(), "result" => result).increment(0);
    }
    for kind in SentinelErrorKind::NODE {
        counter!(NODE_CHECK_ERRORS, "route" => r(), "kind" => kind.as_str()).increment(0);
    }
    register_sentinels(route, sentinels);
    for name in [
        CONNECTIONS_ACCEPTED,
        MASTER_CONNECT_ERRORS,
        MASTER_SWITCHES,
        SWITCH_EVENTS,
    ] {
        counter!(name, "route" => r()).increment(0);
    }
    // Registered without a sample: rendered with every bucket at 0.
    let _ = histogram!(HOLD_DURATION, "route" => r());
    let _ = histogram!(FENCE_DURATION, "route" => r());
    // Gauges the watcher sets later: present at their current value (0 for a new route).
    for name in [
        CONNECTIONS_ACTIVE,
        CONNECTIONS_HELD,
        EPOCH,
        SENTINELS_REACHABLE,
        SENTINEL_MAJORITY,
    ] {
        gauge!(name, "route" => r()).increment(0.0);
    }
    gauge!(MASTER_VERIFIED, "route" => r()).set(0.0);
}

/// Registers at 0 the per-sentinel series of `route` for `sentinels` and sets
/// `sentinels_configured`: at start and again when a reload changes the sentinel list (a
/// sentinel dropped by the reload keeps its series until the process restarts).
pub fn register_sentinels(route: &str, sentinels: &[String]) {
    use metrics::{counter, gauge};
    let r = || route.to_string();
    for s in sentinels {
        for kind in SentinelErrorKind::ALL {
            counter!(SENTINEL_ERRORS, "route" => r(), "sentinel" => s.clone(), "kind" => kind.as_str())
                .increment(0);
        }
        for why in IGNORED_WHY {
            counter!(SENTINEL_EVENTS_IGNORED, "route" => r(), "sentinel" => s.clone(), "why" => why)
                .increment(0);
        }
    }
    gauge!(SENTINELS_CONFIGURED, "route" => r()).set(sentinels.len() as f64);
}

/// The revision this binary was built from (see build.rs).
pub const REVISION: &str = env!("RFP_BUILD_REVISION");

/// Sets [`BUILD_INFO`] to 1 with this build's version and revision.
pub fn set_build_info() {
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "revision" => REVISION)
        .set(1.0);
}

/// What the process metrics are made of, read from `/proc/self` ([`ProcessStats::read`]).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ProcessStats {
    /// Open file descriptors.
    pub open_fds: u64,
    /// `RLIMIT_NOFILE` soft limit; `None` when unlimited.
    pub max_fds: Option<u64>,
    /// Resident memory, bytes.
    pub resident_bytes: u64,
    /// Virtual memory, bytes.
    pub virtual_bytes: u64,
    /// User plus system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Start time, seconds since the Unix epoch.
    pub start_time_seconds: f64,
    /// OS threads.
    pub threads: u64,
}

/// The fields of `/proc/PID/stat` the process metrics use, in the kernel's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFields {
    /// User CPU time, clock ticks.
    pub utime: u64,
    /// System CPU time, clock ticks.
    pub stime: u64,
    /// Threads.
    pub num_threads: u64,
    /// Start time, clock ticks after boot.
    pub starttime: u64,
    /// Virtual memory, bytes.
    pub vsize: u64,
    /// Resident set, pages.
    pub rss_pages: u64,
}

/// Parses `/proc/PID/stat` (proc(5)); the command name in parentheses may hold spaces and
/// parentheses itself, so fields are counted from the last `)`.
pub fn parse_proc_stat(text: &str) -> Option<StatFields> {
    let (_, rest) = text.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Field k of proc(5) (1-based; 3 is the state, the first after the name) is f[k - 3].
    let n = |k: usize| f.get(k - 3)?.parse::<u64>().ok();
    Some(StatFields {
        utime: n(14)?,
        stime: n(15)?,
        num_threads: n(20)?,
        starttime: n(22)?,
        vsize: n(23)?,
        rss_pages: n(24)?,
    })
}

/// The boot time (`btime`, seconds since the Unix epoch) from `/proc/stat`.
pub fn parse_btime(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

impl ProcessStats {
    /// Combines `/proc/self/stat`, the boot time, the clock tick rate and the page size.
    pub fn from_parts(
        stat: StatFields,
        btime: u64,
        ticks_per_second: u64,
        page_size: u64,
        open_fds: u64,
        max_fds: Option<u64>,
    ) -> ProcessStats {
        let hz = ticks_per_second.max(1) as f64;
        ProcessStats {
            open_fds,
            max_fds,
            resident_bytes: stat.rss_pages.saturating_mul(page_size),
            virtual_bytes: stat.vsize,
            cpu_seconds: (stat.utime + stat.stime) as f64 / hz,
            start_time_seconds: btime as f64 + stat.starttime as f64 / hz,
            threads: stat.num_threads,
        }
    }

    /// This process's numbers now; `None` where `/proc` cannot be read (not Linux).
    #[cfg(target_os = "linux")]
    pub fn read() -> Option<ProcessStats> {
        let stat = parse_proc_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
        // Boot time does not change; /proc/stat is long on many-CPU hosts: read it once.
        static BTIME: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
        let btime =
            (*BTIME.get_or_init(|| parse_btime(&std::fs::read_to_string("/proc/stat").ok()?)))?;
        // The directory's own descriptor is among the entries, as in other exporters.
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        let max_fds = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        Some(ProcessStats::from_parts(
            stat,
            btime,
            rustix::param::clock_ticks_per_second(),
            rustix::param::page_size() as u64,
            open_fds,
            max_fds,
        ))
    }

    /// Not available off Linux.
    #[cfg(not(target_os = "linux"))]
    pub fn read() -> Option<ProcessStats> {
        None
    }
}

/// The process metrics in Prometheus text format.
pub fn render_process(p: &ProcessStats) -> String {
    let max_fds = p.max_fds.map_or("+Inf".to_string(), |m| m.to_string());
    let rows: [(&str, &str, &str, String); 7] = [
        (
            PROCESS_CPU_SECONDS,
            "counter",
            "Total user and system CPU time spent in seconds.",
            p.cpu_seconds.to_string(),
        ),
        (
            PROCESS_OPEN_FDS,
            "gauge",
            "Number of open file descriptors.",
            p.open_fds.to_string(),
        ),
        (
            PROCESS_MAX_FDS,
            "gauge",
            "Maximum number of open file descriptors.",
            max_fds,
        ),
        (
            PROCESS_VIRTUAL_MEMORY,
            "gauge",
            "Virtual memory size in bytes.",
            p.virtual_bytes.to_string(),
        ),
        (
            PROCESS_RESIDENT_MEMORY,
            "gauge",
            "Resident memory size in bytes.",
            p.resident_bytes.to_string(),
        ),
        (
            PROCESS_START_TIME,
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            p.start_time_seconds.to_string(),
        ),
        (
            PROCESS_THREADS,
            "gauge",
            "Number of OS threads in the process.",
            p.threads.to_string(),
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, value) in rows {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    }
    out
}

/// The process metrics now, for `/metrics` (empty where they cannot be read).
pub fn process_metrics() -> String {
    ProcessStats::read()
        .map(|p| render_process(&p))
        .unwrap_or_default()
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
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the labels name the version and the git revision of the build"
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
    fn proc_stat_fields() {
        // A name with spaces and parentheses, as a thread may name itself.
        let text = "4242 (tokio (rt) 1) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 7 0 123456 104857600 2560 18446744073709551615 1 1 0 0 0 0 0 4096 17475 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(
            parse_proc_stat(text),
            Some(StatFields {
                utime: 250,
                stime: 50,
                num_threads: 7,
                starttime: 123456,
                vsize: 104857600,
                rss_pages: 2560,
            })
        );
        assert_eq!(parse_proc_stat("4242 (x) S 1 2"), None);
        assert_eq!(parse_proc_stat("garbage"), None);
        assert_eq!(
            parse_btime("cpu 1 2 3\nbtime 1700000000\nprocesses 9\n"),
            Some(1700000000)
        );
        assert_eq!(parse_btime("cpu 1 2 3\n"), None);
    }

    #[test]
    fn process_metrics_rendered() {
        let stat = StatFields {
            utime: 250,
            stime: 50,
            num_threads: 7,
            starttime: 12345,
            vsize: 104857600,
            rss_pages: 2560,
        };
        let p = ProcessStats::from_parts(stat, 1_700_000_000, 100, 4096, 12, Some(1024));
        assert_eq!(p.cpu_seconds, 3.0);
        assert_eq!(p.start_time_seconds, 1_700_000_123.45);
        assert_eq!(p.resident_bytes, 10_485_760);
        let text = render_process(&p);
        for line in [
            "# TYPE process_cpu_seconds_total counter\n",
            "process_cpu_seconds_total 3\n",
            "process_open_fds 12\n",
            "process_max_fds 1024\n",
            "process_resident_memory_bytes 10485760\n",
            "process_virtual_memory_bytes 104857600\n",
            "process_start_time_seconds 1700000123.45\n",
            "process_threads 7\n",
        ] {
            assert!(text.contains(line), "{line:?} in {text}");
        }
        let unlimited = ProcessStats { max_fds: None, ..p };
        assert!(render_process(&unlimited).contains("process_max_fds +Inf\n"));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_stats_of_this_process() {
        let p = ProcessStats::read().expect("/proc/self");
        assert!(
            p.open_fds > 0 && p.max_fds.is_none_or(|m| p.open_fds <= m),
            "{p:?}"
        );
        assert!(
            p.resident_bytes > 0 && p.virtual_bytes >= p.resident_bytes,
            "{p:?}"
        );
        assert!(
            p.threads >= 1 && p.start_time_seconds > 1_000_000_000.0,
            "{p:?}"
        );
    }

    /// docs/metrics.md names every metric this file defines.
    #[test]
    fn every_metric_is_documented() {
        let doc = include_str!("../docs/metrics.md");
        for name in [
            CONNECTIONS_ACCEPTED,
            CONNECTIONS_ACTIVE,
            CONNECTIONS_REJECTED,
            CONNECTIONS_HELD,
            HOLDS,
            HOLD_DURATION,
            SESSIONS_CLOSED,
            BYTES,
            MASTER_CONNECT_ERRORS,
            ACCEPT_ERRORS,
            MASTER_SWITCHES,
            FENCES,
            FENCE_DURATION,
            MASTER_INFO,
            MASTER_VERIFIED,
            EPOCH,
            SENTINELS_REACHABLE,
            SENTINEL_MAJORITY,
            SENTINELS_CONFIGURED,
            SENTINEL_ERRORS,
            SWITCH_EVENTS,
            NODE_CHECK_ERRORS,
            SENTINEL_EVENTS_IGNORED,
            ROLE_CHECKS,
            ADMIN_CONNECTIONS_REJECTED,
            BUILD_INFO,
        ] {
            let short = name.trim_start_matches("redis_failover_proxy_");
            assert!(
                doc.contains(&format!("| `{short}` |")),
                "{name} is not in docs/metrics.md"
            );
        }
        for name in [
            PROCESS_OPEN_FDS,
            PROCESS_MAX_FDS,
            PROCESS_RESIDENT_MEMORY,
            PROCESS_VIRTUAL_MEMORY,
            PROCESS_CPU_SECONDS,
            PROCESS_START_TIME,
            PROCESS_THREADS,
        ] {
            assert!(
                doc.contains(&format!("| `{name}` |")),
                "{name} is not in docs/metrics.md"
            );
        }
        for v in Rejected::ALL
            .map(Rejected::as_str)
            .iter()
            .chain(&HOLD_OUTCOMES)
            .chain(&ACCEPT_ERROR_KINDS)
            .chain(&ROLE_RESULTS)
            .chain(&IGNORED_WHY)
        {
            assert!(
                doc.contains(&format!("`{v}`")),
                "label value {v} is not in docs/metrics.md"
            );
        }
        for v in FenceReason::ALL
            .map(FenceReason::as_str)
            .iter()
            .chain(Closed::ALL.map(Closed::as_str).iter())
            .chain(SentinelErrorKind::ALL.map(SentinelErrorKind::as_str).iter())
        {
            assert!(
                doc.contains(&format!("`{v}`")),
                "label value {v} is not in docs/metrics.md"
            );
        }
    }

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
