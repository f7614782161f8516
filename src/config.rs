//! Configuration: the command line, the environment and the TOML file, merged into one validated
//! [`Config`]. Precedence is CLI > environment > file > built-in default; every error names where
//! the bad value came from (file and key, or flag) and what was expected.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

/// Default client listen address of a route.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:6380";
/// Default admin HTTP listen address.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9121";
/// Config file read when `--config` is not given and the file exists.
pub const DEFAULT_CONFIG_FILE: &str = "proxy.toml";

/// Command line of `redis-failover-proxy`.
#[derive(Debug, Parser)]
#[command(
    name = "redis-failover-proxy",
    version,
    about = "One fixed local address for the current master of a Redis Sentinel group",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to do (default: run the proxy).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options for running the proxy.
    #[command(flatten)]
    pub overrides: Overrides,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the configuration, ask every sentinel, verify the master with ROLE and print the
    /// topology. Exits 0 when every route has a verified master, 64 on bad configuration, 69 when
    /// a route has no verified master.
    Check(Overrides),
}

/// Flags (and their environment variables) that override the config file.
#[derive(Debug, Default, Clone, Args)]
pub struct Overrides {
    /// Config file (TOML). Default: ./proxy.toml if it exists, else built-in defaults.
    #[arg(
        long,
        short = 'c',
        env = "REDIS_FAILOVER_PROXY_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,
    /// Client listen address of the route (needs exactly one route).
    #[arg(long, env = "REDIS_FAILOVER_PROXY_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Sentinel master name of the route (needs exactly one route).
    #[arg(long, env = "REDIS_FAILOVER_PROXY_MASTER", value_name = "NAME")]
    pub master: Option<String>,
    /// Sentinel address; repeat for each sentinel. Replaces `[sentinel] addresses`.
    #[arg(
        long = "sentinel",
        env = "REDIS_FAILOVER_PROXY_SENTINELS",
        value_delimiter = ',',
        value_name = "HOST:PORT"
    )]
    pub sentinels: Vec<String>,
    /// Admin HTTP listen address (/metrics, /healthz, /readyz, /status).
    #[arg(long, env = "REDIS_FAILOVER_PROXY_ADMIN", value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
}

/// A configuration error: names the source (file and key, or flag) and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("{path}: cannot read config file: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML or does not match the schema.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Location, key and expectation, as rendered for a one-line message.
        message: String,
    },
    /// A value is well-formed but not acceptable.
    #[error("{source_name}: {key}: {message}")]
    Invalid {
        /// The file, or "command line".
        source_name: String,
        /// The key (e.g. `route[0].listen`).
        key: String,
        /// What was expected.
        message: String,
    },
}

/// One fully validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Admin HTTP server address.
    pub admin_listen: SocketAddr,
    /// How long shutdown waits for sessions before closing them.
    pub shutdown_grace: Duration,
    /// The routes; at least one.
    pub routes: Vec<RouteConfig>,
    /// Session threads and their placement.
    pub runtime: RuntimeConfig,
}

/// How many threads carry sessions, and whether each is pinned to one CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Session threads; each runs its own event loop and owns the sessions it is given.
    /// Resolved: never 0 (0 in the file means one per CPU this process may use, at most 4).
    pub threads: usize,
    /// Pin session thread `i` to the `i`-th CPU this process may use.
    pub pin_threads: bool,
    /// A session thread yields the CPU once before it sleeps waiting for network events.
    pub yield_before_sleep: bool,
}

/// One route: a listen address bound to a sentinel master name.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Name used in metrics, logs and /status (defaults to the master name).
    pub name: String,
    /// Sentinel master name (`sentinel monitor <name> ...`).
    pub master_name: String,
    /// Client listen address.
    pub listen: SocketAddr,
    /// Sentinels asked for this route's master.
    pub sentinel: SentinelConfig,
    /// How long a client accepted while no master is known waits for one.
    pub hold_timeout: Duration,
    /// Maximum client connections (sessions + held) at once; further clients are closed.
    pub max_connections: usize,
    /// Timeout for connecting to the master.
    pub connect_timeout: Duration,
    /// TCP keepalive idle time on master sockets (then a probe every idle/3 until
    /// `tcp_user_timeout`).
    pub keepalive: Duration,
    /// TCP_USER_TIMEOUT on master sockets: unacknowledged data older than this drops the session.
    pub tcp_user_timeout: Duration,
}

/// How to reach the sentinels.
#[derive(Debug, Clone)]
pub struct SentinelConfig {
    /// `host:port` of every sentinel; hostnames are resolved on every connect.
    pub addresses: Vec<String>,
    /// How often each sentinel is asked for the master.
    pub poll_interval: Duration,
    /// Connect and reply timeout of one sentinel or ROLE query.
    pub timeout: Duration,
    /// What to do while fewer than a majority of the sentinels answer.
    pub on_minority: MinorityPolicy,
    /// How long a minority must last before `on_minority = "fence"` fences.
    pub minority_grace: Duration,
}

/// What the proxy does while it hears from fewer than a majority of its sentinels (it may be
/// on the minority side of a partition, where the others may already have elected a new
/// master).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MinorityPolicy {
    /// Keep routing to the last verified master while `ROLE` still says master (availability
    /// first; writes may go to a master the majority has replaced).
    #[default]
    Keep,
    /// After `minority_grace`, fence the master and hold clients until a majority answers
    /// again (consistency first, like stolon-proxy's self-fencing).
    Fence,
}

// ---- file schema ------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default, with = "humantime_serde::option")]
    shutdown_grace: Option<Duration>,
    #[serde(default)]
    admin: FileAdmin,
    #[serde(default)]
    sentinel: FileSentinel,
    #[serde(default, rename = "route")]
    routes: Vec<FileRoute>,
    #[serde(default)]
    runtime: FileRuntime,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRuntime {
    threads: Option<usize>,
    pin_threads: Option<bool>,
    yield_before_sleep: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAdmin {
    listen: Option<SocketAddr>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSentinel {
    addresses: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde::option")]
    poll_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    timeout: Option<Duration>,
    on_minority: Option<MinorityPolicy>,
    #[serde(default, with = "humantime_serde::option")]
    minority_grace: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRoute {
    name: Option<String>,
    master: Option<String>,
    listen: Option<SocketAddr>,
    sentinels: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde::option")]
    hold_timeout: Option<Duration>,
    max_connections: Option<usize>,
    #[serde(default, with = "humantime_serde::option")]
    connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    keepalive: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    tcp_user_timeout: Option<Duration>,
}

impl Config {
    /// Loads the file named by `overrides.config` (or `./proxy.toml` if present) and applies the
    /// overrides on top.
    pub fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
        let path = match &overrides.config {
            Some(p) => Some(p.clone()),
            None => {
                let p = PathBuf::from(DEFAULT_CONFIG_FILE);
                p.is_file().then_some(p)
            }
        };
        let (text, source_name) = match &path {
            Some(p) => (
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.clone(),
                    source,
                })?,
                p.display().to_string(),
            ),
            None => (String::new(), "command line".to_string()),
        };
        Self::from_toml(&text, path.as_deref(), &source_name, overrides)
    }

    /// Parses TOML text (from `path`, for messages) and applies the overrides.
    pub fn from_toml(
        text: &str,
        path: Option<&Path>,
        source_name: &str,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.map(Path::to_path_buf).unwrap_or_default(),
            message: one_line_toml_error(text, &e),
        })?;
        build(file, source_name, overrides)
    }
}

/// Renders a TOML error as `line L, column C: key T.K: message` on one line.
fn one_line_toml_error(text: &str, err: &toml::de::Error) -> String {
    let message = err.message().trim().replace('\n', " ");
    let Some(span) = err.span() else {
        return message;
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    // Name the key whose line the error points at, qualified by its table.
    let line_text = text.lines().nth(line - 1).unwrap_or("");
    let key = line_text
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"'))
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    let table = text
        .lines()
        .take(line - 1)
        .filter_map(|l| {
            let l = l.trim();
            l.strip_prefix("[[")
                .and_then(|r| r.strip_suffix("]]"))
                .or_else(|| l.strip_prefix('[').and_then(|r| r.strip_suffix(']')))
        })
        .last();
    match (table, key) {
        (Some(t), Some(k)) => format!("line {line}, column {column}: key {t}.{k}: {message}"),
        (None, Some(k)) => format!("line {line}, column {column}: key {k}: {message}"),
        _ => format!("line {line}, column {column}: {message}"),
    }
}

fn build(
    file: FileConfig,
    source_name: &str,
    overrides: &Overrides,
) -> Result<Config, ConfigError> {
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        source_name: source_name.to_string(),
        key: key.to_string(),
        message,
    };
    let cli_invalid = |key: &str, message: String| ConfigError::Invalid {
        source_name: "command line".to_string(),
        key: key.to_string(),
        message,
    };

    let mut sentinel = file.sentinel.clone();
    if !overrides.sentinels.is_empty() {
        sentinel.addresses = Some(overrides.sentinels.clone());
    }
    let poll_interval = sentinel.poll_interval.unwrap_or(Duration::from_secs(1));
    let timeout = sentinel.timeout.unwrap_or(Duration::from_secs(1));
    check_positive(poll_interval, "sentinel.poll_interval", &invalid)?;
    check_positive(timeout, "sentinel.timeout", &invalid)?;
    let on_minority = sentinel.on_minority.unwrap_or_default();
    let minority_grace = sentinel.minority_grace.unwrap_or(Duration::from_secs(5));
    check_range(
        minority_grace,
        Duration::ZERO,
        MAX_DURATION,
        "sentinel.minority_grace",
        &invalid,
    )?;

    let mut file_routes = file.routes;
    if file_routes.is_empty() {
        file_routes.push(FileRoute::default());
    }
    if file_routes.len() > 1 && (overrides.listen.is_some() || overrides.master.is_some()) {
        return Err(cli_invalid(
            "--listen/--master",
            format!(
                "these flags apply to a single route, but the file defines {} [[route]] tables",
                file_routes.len()
            ),
        ));
    }

    let mut routes = Vec::with_capacity(file_routes.len());
    for (i, r) in file_routes.into_iter().enumerate() {
        let key = |k: &str| format!("route[{i}].{k}");
        let master_name = match overrides.master.clone().or(r.master) {
            Some(m) => m,
            None => "redis-ha".to_string(),
        };
        if master_name.is_empty() || master_name.chars().any(char::is_whitespace) {
            return Err(invalid(
                &key("master"),
                format!("expected a sentinel master name without spaces, got {master_name:?}"),
            ));
        }
        let listen = overrides
            .listen
            .or(r.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default"));
        let addresses = r
            .sentinels
            .or_else(|| sentinel.addresses.clone())
            .unwrap_or_default();
        if addresses.is_empty() {
            return Err(invalid(
                "sentinel.addresses",
                "expected at least one sentinel HOST:PORT (set [sentinel] addresses or pass --sentinel)"
                    .to_string(),
            ));
        }
        for (j, a) in addresses.iter().enumerate() {
            parse_host_port(a).map_err(|m| invalid("sentinel.addresses", m))?;
            // A sentinel listed twice would get two votes and could make a majority alone.
            if addresses[..j].contains(a) {
                return Err(invalid(
                    "sentinel.addresses",
                    format!("{a} is listed twice; each sentinel must appear once"),
                ));
            }
        }
        let hold_timeout = r.hold_timeout.unwrap_or(Duration::from_secs(10));
        check_range(
            hold_timeout,
            Duration::ZERO,
            MAX_DURATION,
            &key("hold_timeout"),
            &invalid,
        )?;
        let connect_timeout = r.connect_timeout.unwrap_or(Duration::from_secs(1));
        let keepalive = r.keepalive.unwrap_or(Duration::from_secs(15));
        let tcp_user_timeout = r.tcp_user_timeout.unwrap_or(Duration::from_secs(30));
        check_positive(connect_timeout, &key("connect_timeout"), &invalid)?;
        // Linux takes keepalive times in whole seconds, at most 32767 (TCP_KEEPIDLE).
        check_range(
            keepalive,
            Duration::from_secs(1),
            Duration::from_secs(32767),
            &key("keepalive"),
            &invalid,
        )?;
        // The kernel takes milliseconds; less would round to 0, which turns the timeout off.
        check_range(
            tcp_user_timeout,
            Duration::from_millis(1),
            MAX_DURATION,
            &key("tcp_user_timeout"),
            &invalid,
        )?;
        let max_connections = r.max_connections.unwrap_or(10_000);
        if max_connections == 0 {
            return Err(invalid(
                &key("max_connections"),
                "expected a positive number".to_string(),
            ));
        }
        routes.push(RouteConfig {
            name: r.name.unwrap_or_else(|| master_name.clone()),
            master_name,
            listen,
            sentinel: SentinelConfig {
                addresses,
                poll_interval,
                timeout,
                on_minority,
                minority_grace,
            },
            hold_timeout,
            max_connections,
            connect_timeout,
            keepalive,
            tcp_user_timeout,
        });
    }
    for (i, r) in routes.iter().enumerate() {
        if let Some(j) = routes[..i].iter().position(|o| o.listen == r.listen) {
            return Err(invalid(
                &format!("route[{i}].listen"),
                format!("{} is already the listen address of route[{j}]", r.listen),
            ));
        }
        if routes[..i].iter().any(|o| o.name == r.name) {
            return Err(invalid(
                &format!("route[{i}].name"),
                format!("route names must be unique; {:?} is used twice", r.name),
            ));
        }
    }

    let shutdown_grace = file.shutdown_grace.unwrap_or(Duration::from_secs(10));
    check_range(
        shutdown_grace,
        Duration::ZERO,
        MAX_DURATION,
        "shutdown_grace",
        &invalid,
    )?;
    let admin_listen = overrides
        .admin
        .or(file.admin.listen)
        .unwrap_or_else(|| DEFAULT_ADMIN.parse().expect("valid default"));
    if routes.iter().any(|r| r.listen == admin_listen) {
        return Err(invalid(
            "admin.listen",
            format!("{admin_listen} is also a route's listen address"),
        ));
    }
    let threads = match file.runtime.threads.unwrap_or(0) {
        // Every session thread's epoll wakes for each new client (they all watch the
        // listening socket), so the default stays small: a sidecar rarely needs more.
        0 => std::thread::available_parallelism().map_or(1, |n| n.get().min(DEFAULT_MAX_THREADS)),
        n if n > MAX_THREADS => {
            return Err(invalid(
                "runtime.threads",
                format!("expected 0 (one per CPU) to {MAX_THREADS}, got {n}"),
            ))
        }
        n => n,
    };
    Ok(Config {
        admin_listen,
        shutdown_grace,
        routes,
        runtime: RuntimeConfig {
            threads,
            pin_threads: file.runtime.pin_threads.unwrap_or(false),
            yield_before_sleep: file.runtime.yield_before_sleep.unwrap_or(true),
        },
    })
}

fn check_positive(
    d: Duration,
    key: &str,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    check_range(d, Duration::from_nanos(1), MAX_DURATION, key, invalid)
}

/// Most session threads `runtime.threads = 0` (the default) starts.
const DEFAULT_MAX_THREADS: usize = 4;

/// Most session threads `runtime.threads` accepts.
const MAX_THREADS: usize = 1024;

/// Longest duration any key accepts: far above any sane setting, far below what would
/// overflow `Instant` arithmetic.
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

fn check_range(
    d: Duration,
    min: Duration,
    max: Duration,
    key: &str,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    if d < min || d > max {
        let show = |d: Duration| humantime::format_duration(d).to_string();
        let low = if min <= Duration::from_nanos(1) {
            "above zero".to_string()
        } else {
            format!("of at least {}", show(min))
        };
        return Err(invalid(
            key,
            format!(
                "expected a duration {low} and at most {}, got {}",
                show(max),
                show(d)
            ),
        ));
    }
    Ok(())
}

/// Splits `host:port` (or `[v6]:port`), with a message naming the value on failure.
pub fn parse_host_port(s: &str) -> Result<(String, u16), String> {
    let expected = || format!("expected HOST:PORT, got {s:?}");
    let (host, port) = s.rsplit_once(':').ok_or_else(expected)?;
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.strip_suffix(']').ok_or_else(expected)?,
        // An IPv6 literal must be bracketed, or its last group would pass for the port.
        None if host.contains(':') || host.contains(']') => return Err(expected()),
        None => host,
    };
    if host.is_empty() {
        return Err(expected());
    }
    let port: u16 = port.parse().map_err(|_| expected())?;
    if port == 0 {
        return Err(expected());
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(
            text,
            Some(Path::new("t.toml")),
            "t.toml",
            &Overrides::default(),
        )
    }

    #[test]
    fn defaults_with_flags_only() {
        let o = Overrides {
            sentinels: vec!["a:1".into(), "b:2".into()],
            ..Default::default()
        };
        let c = Config::from_toml("", None, "command line", &o).unwrap();
        assert_eq!(c.routes.len(), 1);
        assert_eq!(c.routes[0].master_name, "redis-ha");
        assert_eq!(c.routes[0].listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.routes[0].sentinel.addresses, vec!["a:1", "b:2"]);
        assert_eq!(c.routes[0].hold_timeout, Duration::from_secs(10));
    }

    #[test]
    fn unknown_key_is_named_with_line() {
        let e = parse("[sentinel]\naddresses = [\"a:1\"]\npoll = \"1s\"\n").unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("t.toml: line 3"), "{s}");
        assert!(s.contains("poll"), "{s}");
    }

    #[test]
    fn bad_duration_and_address() {
        let e = parse("[sentinel]\naddresses = [\"a:1\"]\ntimeout = \"soon\"\n").unwrap_err();
        assert!(e.to_string().contains("line 3"), "{e}");
        let e = parse("[sentinel]\naddresses = [\"nohostport\"]\n").unwrap_err();
        assert!(e.to_string().contains("sentinel.addresses"), "{e}");
        let e = parse("[sentinel]\naddresses = []\n").unwrap_err();
        assert!(e.to_string().contains("at least one sentinel"), "{e}");
    }

    #[test]
    fn flags_override_file_and_need_one_route() {
        let text = "[sentinel]\naddresses=[\"a:1\"]\n[[route]]\nmaster=\"m1\"\nlisten=\"127.0.0.1:7001\"\n[[route]]\nmaster=\"m2\"\nlisten=\"127.0.0.1:7002\"\n";
        let c = parse(text).unwrap();
        assert_eq!(c.routes[1].name, "m2");
        let o = Overrides {
            master: Some("x".into()),
            ..Default::default()
        };
        let e = Config::from_toml(text, None, "f", &o).unwrap_err();
        assert!(e.to_string().contains("--listen/--master"), "{e}");
        let dup =
            "[sentinel]\naddresses=[\"a:1\"]\n[[route]]\nmaster=\"m1\"\n[[route]]\nmaster=\"m2\"\n";
        assert!(parse(dup)
            .unwrap_err()
            .to_string()
            .contains("already the listen"));
    }

    #[test]
    fn ranges_and_duplicates() {
        let e =
            parse("[sentinel]\naddresses=[\"a:1\"]\n[[route]]\nkeepalive=\"500ms\"\n").unwrap_err();
        assert!(e.to_string().contains("route[0].keepalive"), "{e}");
        let e = parse("[sentinel]\naddresses=[\"a:1\"]\ntimeout=\"100000d\"\n").unwrap_err();
        assert!(e.to_string().contains("at most"), "{e}");
        let e = parse("[sentinel]\naddresses=[\"a:1\", \"a:1\"]\n").unwrap_err();
        assert!(e.to_string().contains("listed twice"), "{e}");
    }

    #[test]
    fn runtime_threads() {
        let c = parse("[sentinel]\naddresses=[\"a:1\"]\n").unwrap();
        assert!(c.runtime.threads >= 1);
        assert!(!c.runtime.pin_threads);
        let c = parse("[sentinel]\naddresses=[\"a:1\"]\n[runtime]\nthreads=3\npin_threads=true\n")
            .unwrap();
        assert_eq!((c.runtime.threads, c.runtime.pin_threads), (3, true));
        let e = parse("[sentinel]\naddresses=[\"a:1\"]\n[runtime]\nthreads=5000\n").unwrap_err();
        assert!(e.to_string().contains("runtime.threads"), "{e}");
    }

    #[test]
    fn minority_policy() {
        let c = parse("[sentinel]\naddresses=[\"a:1\"]\n").unwrap();
        assert_eq!(c.routes[0].sentinel.on_minority, MinorityPolicy::Keep);
        let c = parse(
            "[sentinel]\naddresses=[\"a:1\"]\non_minority=\"fence\"\nminority_grace=\"2s\"\n",
        )
        .unwrap();
        assert_eq!(c.routes[0].sentinel.on_minority, MinorityPolicy::Fence);
        assert_eq!(c.routes[0].sentinel.minority_grace, Duration::from_secs(2));
        let e = parse("[sentinel]\naddresses=[\"a:1\"]\non_minority=\"panic\"\n").unwrap_err();
        assert!(e.to_string().contains("sentinel.on_minority"), "{e}");
    }

    #[test]
    fn host_port() {
        assert_eq!(
            parse_host_port("redis1:16355").unwrap(),
            ("redis1".into(), 16355)
        );
        assert_eq!(parse_host_port("[::1]:5").unwrap(), ("::1".into(), 5));
        assert!(parse_host_port("x:0").is_err());
        assert!(parse_host_port(":5").is_err());
        assert!(parse_host_port("fe80::1").is_err());
        assert!(parse_host_port("[::1").is_err());
    }
}
