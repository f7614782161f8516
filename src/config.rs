//! Configuration: the command line, the environment and the TOML file, merged into one validated
//! [`Config`]. Precedence is CLI > environment > file > built-in default; every error names where
//! the bad value came from (file and key, or flag) and what was expected.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use crate::tls::{ClientSettings, ServerSettings, TlsClient, TlsServer};

/// Default client listen address of a route.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:6380";
/// Default admin HTTP listen address. Not 9121 (redis_exporter's default, often on the same
/// host) nor anywhere in 9100-9999, the range allocated to Prometheus exporters: 8379 is
/// "Redis-ish" (6379 + 2000) and no well-known exporter or common service uses it.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:8379";
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
    /// Log line format: `text`, or `json` (one object per line). Under systemd each line
    /// starts with its journal priority either way.
    #[arg(
        long,
        global = true,
        env = crate::logging::ENV_LOG_FORMAT,
        value_enum,
        default_value_t = crate::logging::LogFormat::Text,
        value_name = "FORMAT"
    )]
    pub log_format: crate::logging::LogFormat,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
// Parsed once per process: the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Validate the configuration, ask every sentinel, verify the master with ROLE and print the
    /// topology. Exits 0 when every route has a verified master, 64 on bad configuration, 69 when
    /// a route has no verified master. With --offline: validate only, contacting nothing.
    Check(CheckArgs),
    /// Ask a running proxy's admin server for /status and print it as tables. Exits 0; 64 when
    /// the config file naming the address is bad; 69 when the proxy cannot be reached; 76 when
    /// something else answers there.
    Status(StatusArgs),
}

/// `check`'s options.
#[derive(Debug, Default, Clone, Args)]
pub struct CheckArgs {
    /// Validate the configuration and print a summary without contacting anything: no
    /// sentinel, no node, no DNS lookup (like `haproxy -c`). Exits 0, or 64 with the error.
    #[arg(long)]
    pub offline: bool,
    /// The configuration to check.
    #[command(flatten)]
    pub overrides: Overrides,
}

/// `status`'s options.
#[derive(Debug, Default, Clone, Args)]
pub struct StatusArgs {
    /// The proxy's admin address. Default: the config file's `[admin] listen`, else
    /// 127.0.0.1:8379 (as the proxy itself resolves it).
    #[arg(long, env = "REDIS_FAILOVER_PROXY_ADMIN", value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// Config file to take `[admin] listen` from. Default: ./proxy.toml if it exists.
    #[arg(
        long,
        short = 'c',
        env = "REDIS_FAILOVER_PROXY_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,
    /// Print the raw /status JSON instead of tables.
    #[arg(long)]
    pub json: bool,
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
    /// ACL username for the sentinels (replaces `[sentinel] username`).
    #[arg(
        long,
        env = "REDIS_FAILOVER_PROXY_SENTINEL_USERNAME",
        value_name = "NAME"
    )]
    pub sentinel_username: Option<String>,
    /// File holding the sentinels' password (replaces `[sentinel] password`). The password
    /// itself is taken only from the file or the environment
    /// (REDIS_FAILOVER_PROXY_SENTINEL_PASSWORD), never from a flag, which `ps` would show.
    #[arg(
        long,
        env = "REDIS_FAILOVER_PROXY_SENTINEL_PASSWORD_FILE",
        value_name = "FILE"
    )]
    pub sentinel_password_file: Option<PathBuf>,
    /// ACL username for the proxy's own checks on the nodes (replaces `[node] username`).
    #[arg(long, env = "REDIS_FAILOVER_PROXY_NODE_USERNAME", value_name = "NAME")]
    pub node_username: Option<String>,
    /// File holding the nodes' password (replaces `[node] password`; see
    /// REDIS_FAILOVER_PROXY_NODE_PASSWORD).
    #[arg(
        long,
        env = "REDIS_FAILOVER_PROXY_NODE_PASSWORD_FILE",
        value_name = "FILE"
    )]
    pub node_password_file: Option<PathBuf>,
    /// CA bundle (PEM): turns on TLS to the sentinels and the nodes (replaces `[tls] ca`).
    #[arg(long, env = "REDIS_FAILOVER_PROXY_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for TLS peers that require one (replaces `[tls] cert`).
    #[arg(long, env = "REDIS_FAILOVER_PROXY_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's key (PEM) (replaces `[tls] key`).
    #[arg(long, env = "REDIS_FAILOVER_PROXY_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Verify peer certificates against this name instead of the address (replaces
    /// `[tls] server_name`).
    #[arg(
        long,
        env = "REDIS_FAILOVER_PROXY_TLS_SERVER_NAME",
        value_name = "NAME"
    )]
    pub tls_server_name: Option<String>,
    /// Do not start the admin HTTP server (same as `[admin] enabled = false`).
    #[arg(long)]
    pub no_admin: bool,
    /// The sentinels' password from REDIS_FAILOVER_PROXY_SENTINEL_PASSWORD (read by
    /// [`Config::load`], not a flag).
    #[arg(skip)]
    pub sentinel_password: Option<Secret>,
    /// The nodes' password from REDIS_FAILOVER_PROXY_NODE_PASSWORD.
    #[arg(skip)]
    pub node_password: Option<Secret>,
}

/// Environment variable with the sentinels' password (the single-route default).
pub const ENV_SENTINEL_PASSWORD: &str = "REDIS_FAILOVER_PROXY_SENTINEL_PASSWORD";
/// Environment variable with the nodes' password (the single-route default).
pub const ENV_NODE_PASSWORD: &str = "REDIS_FAILOVER_PROXY_NODE_PASSWORD";

/// A password: never shown by `Debug`, and with no `Display`, so it cannot reach a log line,
/// an error message or `/status` by accident. [`Secret::expose`] is the one way to read it.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that sends it (AUTH).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

/// Credentials the proxy uses on its own connections (never for clients' sessions).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// ACL username (`AUTH <username> <password>`); `None` means the `default` user.
    pub username: Option<String>,
    /// Password; `None` means no `AUTH`.
    pub password: Option<Secret>,
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
    /// Admin HTTP server address; `None` when the admin server is switched off.
    pub admin_listen: Option<SocketAddr>,
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
    /// How long a session thread keeps polling for network events (yielding the CPU between
    /// polls) before it sleeps; zero: off.
    pub busy_poll: Duration,
    /// How plain TCP sessions move their bytes.
    pub engine: Engine,
}

/// How plain TCP sessions move their bytes (`runtime.engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum Engine {
    /// Readiness (`epoll`) and one `recv` and `send` system call per chunk: works everywhere.
    #[default]
    #[serde(rename = "epoll")]
    Epoll,
    /// One io_uring instance per session thread (Linux 6.1 or later): receives and sends of
    /// all its sessions submitted and completed in batches. Where a ring cannot be set up the
    /// threads say so once and use epoll.
    #[serde(rename = "io_uring")]
    IoUring,
}

impl Engine {
    /// The name used in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Epoll => "epoll",
            Engine::IoUring => "io_uring",
        }
    }
}

/// Longest `runtime.busy_poll` accepted.
pub const MAX_BUSY_POLL: Duration = Duration::from_millis(10);

/// Default mode of a route's Unix socket file (`listen_mode`).
pub const DEFAULT_LISTEN_MODE: u32 = 0o660;

/// Where a route accepts clients: a TCP address, or a Unix socket path (`unix:/path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix stream socket at `path`, its file given `mode` (`listen_mode`).
    Unix {
        /// The socket file's absolute path.
        path: PathBuf,
        /// Permission bits of the socket file.
        mode: u32,
    },
}

impl ListenAddr {
    /// Whether both name the same socket (a Unix path is one socket whatever its mode).
    pub fn same_socket(&self, other: &ListenAddr) -> bool {
        match (self, other) {
            (ListenAddr::Tcp(a), ListenAddr::Tcp(b)) => a == b,
            (ListenAddr::Unix { path: a, .. }, ListenAddr::Unix { path: b, .. }) => a == b,
            _ => false,
        }
    }

    /// The TCP address, if this is one.
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            ListenAddr::Tcp(a) => Some(*a),
            ListenAddr::Unix { .. } => None,
        }
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix { path, .. } => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Longest Unix socket path Linux takes (`sun_path` is 108 bytes with the final NUL).
const MAX_UNIX_PATH: usize = 107;

/// Parses a route's `listen` value: `unix:/absolute/path` or `HOST_IP:PORT`.
pub fn parse_listen(text: &str, mode: Option<&str>) -> Result<ListenAddr, String> {
    match text.strip_prefix("unix:") {
        Some(path) => {
            if !path.starts_with('/') {
                return Err(format!(
                    "expected an absolute Unix socket path after \"unix:\", got {path:?}"
                ));
            }
            if path.len() > MAX_UNIX_PATH {
                return Err(format!(
                    "a Unix socket path may have at most {MAX_UNIX_PATH} bytes, {path:?} has {}",
                    path.len()
                ));
            }
            if path.ends_with('/') || path.contains('\0') {
                return Err(format!("expected a socket file path, got {path:?}"));
            }
            let mode = match mode {
                None => DEFAULT_LISTEN_MODE,
                Some(m) => parse_mode(m)?,
            };
            Ok(ListenAddr::Unix {
                path: PathBuf::from(path),
                mode,
            })
        }
        None => {
            if mode.is_some() {
                return Err(
                    "listen_mode applies to a Unix socket (listen = \"unix:/path\") only"
                        .to_string(),
                );
            }
            text.parse()
                .map(ListenAddr::Tcp)
                .map_err(|_| format!("expected IP:PORT or unix:/absolute/path, got {text:?}"))
        }
    }
}

/// Parses an octal permission string such as `"0660"` or `"660"` (at most `0777`).
pub fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if !digits.is_empty() && m <= 0o777 => Ok(m),
        _ => Err(format!(
            "listen_mode: expected octal permission bits such as \"0660\" (at most 0777), got {text:?}"
        )),
    }
}

/// One route: a listen address bound to a sentinel master name.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Name used in metrics, logs and /status (defaults to the master name).
    pub name: String,
    /// Sentinel master name (`sentinel monitor <name> ...`).
    pub master_name: String,
    /// Client listen address (TCP or a Unix socket).
    pub listen: ListenAddr,
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
    /// How the proxy reaches the nodes: for its `ROLE` checks, and (TLS only) the master side
    /// of every session.
    pub node: PeerAccess,
    /// TLS on the client side of the listener, if configured.
    pub listen_tls: Option<Arc<TlsServer>>,
}

/// Credentials and TLS for one kind of peer (the sentinels, or the nodes).
#[derive(Debug, Clone, Default)]
pub struct PeerAccess {
    /// Sent with `AUTH` on every connection the proxy opens itself.
    pub auth: Credentials,
    /// TLS, if the peers speak it.
    pub tls: Option<Arc<TlsClient>>,
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
    /// Credentials and TLS for the sentinels.
    pub access: PeerAccess,
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
    #[serde(default)]
    node: FileNode,
    #[serde(default)]
    tls: FileTls,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileNode {
    username: Option<String>,
    password: Option<Secret>,
    password_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    server_name: Option<String>,
    verify_server_name: Option<bool>,
    sentinels: Option<bool>,
    nodes: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRuntime {
    threads: Option<usize>,
    pin_threads: Option<bool>,
    yield_before_sleep: Option<bool>,
    #[serde(default, with = "humantime_serde::option")]
    busy_poll: Option<Duration>,
    engine: Option<Engine>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAdmin {
    listen: Option<SocketAddr>,
    enabled: Option<bool>,
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
    username: Option<String>,
    password: Option<Secret>,
    password_file: Option<PathBuf>,
}

/// A route's `listen` as written, checked while the file is parsed (so an error names its
/// line); `listen_mode` is applied afterwards.
#[derive(Debug)]
struct FileListen(String);

impl<'de> Deserialize<'de> for FileListen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_listen(&text, None).map_err(serde::de::Error::custom)?;
        Ok(FileListen(text))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRoute {
    name: Option<String>,
    master: Option<String>,
    listen: Option<FileListen>,
    listen_mode: Option<String>,
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
    sentinel_username: Option<String>,
    sentinel_password: Option<Secret>,
    sentinel_password_file: Option<PathBuf>,
    node_username: Option<String>,
    node_password: Option<Secret>,
    node_password_file: Option<PathBuf>,
    listen_tls_cert: Option<PathBuf>,
    listen_tls_key: Option<PathBuf>,
    listen_tls_client_ca: Option<PathBuf>,
}

impl Config {
    /// Loads the file named by `overrides.config` (or `./proxy.toml` if present) and applies the
    /// overrides on top.
    pub fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
        Self::load_with(overrides, false)
    }

    /// [`Config::load`] without any network step: sentinel addresses are compared for aliases
    /// only where they are IP literals (no DNS lookup). Files named by the configuration
    /// (certificates, keys, password files) are still read.
    pub fn load_offline(overrides: &Overrides) -> Result<Config, ConfigError> {
        Self::load_with(overrides, true)
    }

    fn load_with(overrides: &Overrides, offline: bool) -> Result<Config, ConfigError> {
        let mut overrides = overrides.clone();
        if overrides.sentinel_password.is_none() {
            overrides.sentinel_password = env_secret(ENV_SENTINEL_PASSWORD);
        }
        if overrides.node_password.is_none() {
            overrides.node_password = env_secret(ENV_NODE_PASSWORD);
        }
        let path = file_path(overrides.config.as_deref());
        let (text, source_name) = match &path {
            Some(p) => (
                read_capped(p, MAX_CONFIG_BYTES).map_err(|source| ConfigError::Read {
                    path: p.clone(),
                    source,
                })?,
                p.display().to_string(),
            ),
            None => (String::new(), "command line".to_string()),
        };
        let config = Self::from_toml(&text, path.as_deref(), &source_name, &overrides)?;
        if offline {
            check_sentinel_aliases(&config, &source_name, &resolve_literal)?;
        } else {
            check_sentinel_aliases(&config, &source_name, &resolve_briefly)?;
        }
        Ok(config)
    }

    /// Things that work but deserve a warning at startup (e.g. a listener reachable from
    /// other hosts).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for r in &self.routes {
            if let Some(listen) = r.listen.tcp().filter(|a| !a.ip().is_loopback()) {
                out.push(format!(
                    "route {}: listens on {}, reachable from other hosts{}",
                    r.name,
                    listen,
                    if r.listen_tls.is_some() {
                        " (with TLS)"
                    } else {
                        "; clients' traffic and AUTH passwords cross the network in plain text (see listen_tls_cert)"
                    }
                ));
            }
        }
        if let Some(a) = self.admin_listen.filter(|a| !a.ip().is_loopback()) {
            out.push(format!(
                "the admin server listens on {a}, reachable from other hosts; /status shows the topology to anyone who can connect"
            ));
        }
        out
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

/// The config file a command reads: `given`, else `./proxy.toml` if it exists, else none
/// (built-in defaults).
pub fn file_path(given: Option<&Path>) -> Option<PathBuf> {
    match given {
        Some(p) => Some(p.to_path_buf()),
        None => {
            let p = PathBuf::from(DEFAULT_CONFIG_FILE);
            p.is_file().then_some(p)
        }
    }
}

/// Where the admin server of the proxy configured by `file` (see [`file_path`]) listens, read
/// from its `[admin]` table alone (the rest of the file is not validated, and no file it names
/// is read): `Ok(None)` when it is switched off, the default when the file does not set it or
/// there is no file.
pub fn admin_listen_of(file: Option<&Path>) -> Result<Option<SocketAddr>, ConfigError> {
    #[derive(Deserialize)]
    struct OnlyAdmin {
        #[serde(default)]
        admin: FileAdmin,
    }
    let default: SocketAddr = DEFAULT_ADMIN.parse().expect("valid default");
    let Some(path) = file else {
        return Ok(Some(default));
    };
    let text = read_capped(path, MAX_CONFIG_BYTES).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let only: OnlyAdmin = toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: one_line_toml_error(&text, &e),
    })?;
    Ok(only
        .admin
        .enabled
        .unwrap_or(true)
        .then(|| only.admin.listen.unwrap_or(default)))
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
        // Only something shaped like one of our keys: inside a multi-line string, the text
        // before an `=` may be part of a secret.
        .filter(|k| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        });
    // Inside a multi-line string, the line is part of a value (perhaps a secret): no key.
    let in_string =
        before.matches("\"\"\"").count() % 2 == 1 || before.matches("\'\'\'").count() % 2 == 1;
    let key = key.filter(|_| !in_string);
    // The parser quotes the offending value; on a password's line that value is the secret.
    let message = if in_string || key.is_some_and(is_secret_key) || line_text.contains("password") {
        "invalid value (expected a quoted string; the value is not shown because it is a secret)"
            .to_string()
    } else {
        message
    };
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

/// Whether a config key holds a secret itself (not a path to one).
fn is_secret_key(key: &str) -> bool {
    key.ends_with("password")
}

/// Largest config file read (a FIFO or `/dev/zero` passed by mistake must not hang the process
/// or fill its memory).
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;
/// Largest secret file read.
const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// Reads a regular file of at most `cap` bytes as UTF-8. Refuses FIFOs, devices and
/// directories before opening them (opening a FIFO would block).
fn read_capped(path: &Path, cap: u64) -> std::io::Result<String> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(cap + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > cap {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("larger than {cap} bytes"),
        ));
    }
    Ok(text)
}

fn env_secret(name: &str) -> Option<Secret> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .map(Secret::new)
}

/// Reads a password file (one trailing newline dropped); errors never quote the content.
fn read_secret_file(path: &Path) -> Result<Secret, String> {
    let text = read_capped(path, MAX_SECRET_BYTES)
        .map_err(|e| format!("cannot read password file {}: {e}", path.display()))?;
    let value = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    if value.is_empty() {
        return Err(format!("password file {} is empty", path.display()));
    }
    Ok(Secret::new(value))
}

/// Picks one password from an inline value and a file, refusing both at once.
fn password_from(
    inline: Option<Secret>,
    file: Option<&Path>,
    key: &str,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Option<Secret>, ConfigError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(invalid(
            key,
            format!("set either {key} or {key}_file, not both"),
        )),
        (Some(p), None) if p.expose().is_empty() => {
            Err(invalid(key, "the password is empty".to_string()))
        }
        (Some(p), None) => Ok(Some(p)),
        (None, Some(f)) => read_secret_file(f)
            .map(Some)
            .map_err(|m| invalid(&format!("{key}_file"), m)),
        (None, None) => Ok(None),
    }
}

/// Checks a username and pairs it with a password.
fn credentials(
    username: Option<String>,
    password: Option<Secret>,
    key: &str,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Credentials, ConfigError> {
    if let Some(u) = &username {
        if u.is_empty() || u.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(
                &format!("{key}username"),
                format!("expected an ACL user name without spaces, got {u:?}"),
            ));
        }
        if password.is_none() {
            return Err(invalid(
                &format!("{key}username"),
                format!("user {u:?} needs a password too ({key}password or {key}password_file)"),
            ));
        }
    }
    Ok(Credentials { username, password })
}

/// The same sentinel listed under two spellings (`localhost:P`, `127.0.0.1:P`, `127.1:P`) would
/// count as two votes. Compares what each entry resolves to; an entry that does not resolve
/// now is compared by its text only (DNS may be down at startup; the watcher resolves again).
fn check_sentinel_aliases(
    config: &Config,
    source_name: &str,
    resolve: &dyn Fn(&str) -> Vec<SocketAddr>,
) -> Result<(), ConfigError> {
    for (i, r) in config.routes.iter().enumerate() {
        let resolved: Vec<Vec<SocketAddr>> =
            r.sentinel.addresses.iter().map(|a| resolve(a)).collect();
        for (j, addrs) in resolved.iter().enumerate() {
            for (k, earlier) in resolved[..j].iter().enumerate() {
                if let Some(same) = addrs.iter().find(|a| earlier.contains(a)) {
                    return Err(ConfigError::Invalid {
                        source_name: source_name.to_string(),
                        key: format!("route[{i}] sentinels"),
                        message: format!(
                            "{} and {} are the same sentinel ({same}); each sentinel must appear once",
                            r.sentinel.addresses[k], r.sentinel.addresses[j]
                        ),
                    });
                }
            }
        }
    }
    Ok(())
}

/// `host:port` as an address if the host is an IP literal; nothing otherwise (no lookup).
fn resolve_literal(addr: &str) -> Vec<SocketAddr> {
    match parse_host_port(addr) {
        Ok((host, port)) => host
            .parse::<std::net::IpAddr>()
            .map(|ip| vec![SocketAddr::new(ip, port)])
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

/// Resolves `host:port` with the system resolver, giving up after a second.
fn resolve_briefly(addr: &str) -> Vec<SocketAddr> {
    use std::net::ToSocketAddrs;
    let Ok((host, port)) = parse_host_port(addr) else {
        return Vec::new();
    };
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return vec![SocketAddr::new(ip, port)];
    }
    let (tx, rx) = std::sync::mpsc::channel();
    // A stuck resolver must not hold up startup; the thread ends on its own.
    let _ = std::thread::Builder::new()
        .name("config-resolve".into())
        .spawn(move || {
            let found: Vec<SocketAddr> = (host.as_str(), port)
                .to_socket_addrs()
                .map(|a| a.collect())
                .unwrap_or_default();
            let _ = tx.send(found);
        });
    rx.recv_timeout(Duration::from_secs(1)).unwrap_or_default()
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
    // Below these, a proxy would hammer every sentinel (and every sentinel's other clients).
    check_range(
        poll_interval,
        MIN_POLL_INTERVAL,
        MAX_DURATION,
        "sentinel.poll_interval",
        &invalid,
    )?;
    check_range(
        timeout,
        MIN_TIMEOUT,
        MAX_DURATION,
        "sentinel.timeout",
        &invalid,
    )?;
    let on_minority = sentinel.on_minority.unwrap_or_default();
    let minority_grace = sentinel.minority_grace.unwrap_or(Duration::from_secs(5));
    check_range(
        minority_grace,
        Duration::ZERO,
        MAX_DURATION,
        "sentinel.minority_grace",
        &invalid,
    )?;

    // Shared defaults for every route's credentials: flag/env over file.
    let sentinel_username = overrides
        .sentinel_username
        .clone()
        .or(sentinel.username.clone());
    let sentinel_password = match (
        overrides.sentinel_password_file.as_deref(),
        overrides.sentinel_password.clone(),
    ) {
        (Some(f), None) => {
            Some(read_secret_file(f).map_err(|m| cli_invalid("--sentinel-password-file", m))?)
        }
        (Some(_), Some(_)) => {
            return Err(cli_invalid(
                "--sentinel-password-file",
                format!("set either {ENV_SENTINEL_PASSWORD} or the password file, not both"),
            ))
        }
        (None, Some(p)) => Some(p),
        (None, None) => password_from(
            sentinel.password.clone(),
            sentinel.password_file.as_deref(),
            "sentinel.password",
            &invalid,
        )?,
    };
    let node_username = overrides
        .node_username
        .clone()
        .or(file.node.username.clone());
    let node_password = match (
        overrides.node_password_file.as_deref(),
        overrides.node_password.clone(),
    ) {
        (Some(f), None) => {
            Some(read_secret_file(f).map_err(|m| cli_invalid("--node-password-file", m))?)
        }
        (Some(_), Some(_)) => {
            return Err(cli_invalid(
                "--node-password-file",
                format!("set either {ENV_NODE_PASSWORD} or the password file, not both"),
            ))
        }
        (None, Some(p)) => Some(p),
        (None, None) => password_from(
            file.node.password.clone(),
            file.node.password_file.as_deref(),
            "node.password",
            &invalid,
        )?,
    };
    let tls = client_tls(&file.tls, overrides, &invalid)?;
    let (sentinel_tls, node_tls) = match &tls {
        Some(t) => (
            file.tls.sentinels.unwrap_or(true).then(|| t.clone()),
            file.tls.nodes.unwrap_or(true).then(|| t.clone()),
        ),
        None => (None, None),
    };

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
        let listen = match overrides.listen {
            Some(a) if r.listen_mode.is_none() => ListenAddr::Tcp(a),
            Some(_) => {
                return Err(invalid(
                    &key("listen_mode"),
                    "listen_mode applies to a Unix socket, but --listen gives a TCP address"
                        .to_string(),
                ))
            }
            None => parse_listen(
                r.listen.as_ref().map_or(DEFAULT_LISTEN, |l| l.0.as_str()),
                r.listen_mode.as_deref(),
            )
            .map_err(|m| invalid(&key("listen"), m))?,
        };
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
        if !(1..=MAX_CONNECTIONS).contains(&max_connections) {
            return Err(invalid(
                &key("max_connections"),
                format!("expected 1 to {MAX_CONNECTIONS}, got {max_connections}"),
            ));
        }
        let sentinel_password = match password_from(
            r.sentinel_password,
            r.sentinel_password_file.as_deref(),
            &key("sentinel_password"),
            &invalid,
        )? {
            Some(p) => Some(p),
            None => sentinel_password.clone(),
        };
        let sentinel_auth = credentials(
            r.sentinel_username.or(sentinel_username.clone()),
            sentinel_password,
            &key("sentinel_"),
            &invalid,
        )?;
        let node_password = match password_from(
            r.node_password,
            r.node_password_file.as_deref(),
            &key("node_password"),
            &invalid,
        )? {
            Some(p) => Some(p),
            None => node_password.clone(),
        };
        let node_auth = credentials(
            r.node_username.or(node_username.clone()),
            node_password,
            &key("node_"),
            &invalid,
        )?;
        let listen_tls = match (r.listen_tls_cert, r.listen_tls_key, r.listen_tls_client_ca) {
            (None, None, None) => None,
            (Some(_), _, _) | (_, Some(_), _) if listen.tcp().is_none() => {
                return Err(invalid(
                    &key("listen_tls_cert"),
                    "listen TLS needs a TCP listen address; a Unix socket is local already"
                        .to_string(),
                ))
            }
            (Some(cert), Some(key_file), client_ca) => Some(Arc::new(
                TlsServer::load(&ServerSettings {
                    cert,
                    key: key_file,
                    client_ca,
                })
                .map_err(|m| invalid(&key("listen_tls_cert"), m))?,
            )),
            _ => {
                return Err(invalid(
                    &key("listen_tls_cert"),
                    "listen TLS needs both listen_tls_cert and listen_tls_key".to_string(),
                ))
            }
        };
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
                access: PeerAccess {
                    auth: sentinel_auth,
                    tls: sentinel_tls.clone(),
                },
            },
            node: PeerAccess {
                auth: node_auth,
                tls: node_tls.clone(),
            },
            listen_tls,
            hold_timeout,
            max_connections,
            connect_timeout,
            keepalive,
            tcp_user_timeout,
        });
    }
    for (i, r) in routes.iter().enumerate() {
        if let Some(j) = routes[..i]
            .iter()
            .position(|o| o.listen.same_socket(&r.listen))
        {
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
    if routes.iter().any(|r| r.listen.tcp() == Some(admin_listen)) {
        return Err(invalid(
            "admin.listen",
            format!("{admin_listen} is also a route's listen address"),
        ));
    }
    let admin_listen =
        (file.admin.enabled.unwrap_or(true) && !overrides.no_admin).then_some(admin_listen);
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
    let busy_poll = file.runtime.busy_poll.unwrap_or(Duration::ZERO);
    if busy_poll > MAX_BUSY_POLL {
        return Err(invalid(
            "runtime.busy_poll",
            format!(
                "expected 0 (off) to {}, got {}",
                humantime::format_duration(MAX_BUSY_POLL),
                humantime::format_duration(busy_poll)
            ),
        ));
    }
    Ok(Config {
        admin_listen,
        shutdown_grace,
        routes,
        runtime: RuntimeConfig {
            threads,
            pin_threads: file.runtime.pin_threads.unwrap_or(false),
            yield_before_sleep: file.runtime.yield_before_sleep.unwrap_or(true),
            busy_poll,
            engine: file.runtime.engine.unwrap_or_default(),
        },
    })
}

/// The TLS client configuration, if `[tls] ca` (or `--tls-ca`) turns TLS on.
fn client_tls(
    file: &FileTls,
    overrides: &Overrides,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Option<Arc<TlsClient>>, ConfigError> {
    let ca = overrides.tls_ca.clone().or(file.ca.clone());
    let cert = overrides.tls_cert.clone().or(file.cert.clone());
    let key = overrides.tls_key.clone().or(file.key.clone());
    let server_name = overrides
        .tls_server_name
        .clone()
        .or(file.server_name.clone());
    let Some(ca) = ca else {
        let stray = [
            (cert.is_some(), "tls.cert"),
            (key.is_some(), "tls.key"),
            (server_name.is_some(), "tls.server_name"),
        ];
        if let Some((_, k)) = stray.iter().find(|(set, _)| *set) {
            return Err(invalid(
                k,
                "TLS is off until tls.ca (or --tls-ca) names the CA bundle the peers' certificates chain to".to_string(),
            ));
        }
        return Ok(None);
    };
    if cert.is_some() != key.is_some() {
        return Err(invalid(
            "tls.cert",
            "a client certificate needs both tls.cert and tls.key".to_string(),
        ));
    }
    let settings = ClientSettings {
        ca,
        cert,
        key,
        server_name,
        verify_server_name: file.verify_server_name.unwrap_or(true),
    };
    TlsClient::load(&settings)
        .map(|t| Some(Arc::new(t)))
        .map_err(|m| invalid("tls", m))
}

fn check_positive(
    d: Duration,
    key: &str,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    check_range(d, Duration::from_nanos(1), MAX_DURATION, key, invalid)
}

/// Shortest `sentinel.poll_interval`.
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Shortest `sentinel.timeout`.
const MIN_TIMEOUT: Duration = Duration::from_millis(10);
/// Most client connections one route accepts (each costs two descriptors).
const MAX_CONNECTIONS: usize = 1_000_000;

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
    fn listen_rows() {
        let unix = |p: &str, mode: u32| {
            Ok(ListenAddr::Unix {
                path: PathBuf::from(p),
                mode,
            })
        };
        let rows: &[(&str, Option<&str>, Result<ListenAddr, &str>)] = &[
            (
                "127.0.0.1:6380",
                None,
                Ok(ListenAddr::Tcp("127.0.0.1:6380".parse().unwrap())),
            ),
            (
                "[::1]:6380",
                None,
                Ok(ListenAddr::Tcp("[::1]:6380".parse().unwrap())),
            ),
            (
                "unix:/run/rfp/redis.sock",
                None,
                unix("/run/rfp/redis.sock", 0o660),
            ),
            (
                "unix:/run/rfp/redis.sock",
                Some("0600"),
                unix("/run/rfp/redis.sock", 0o600),
            ),
            ("unix:/tmp/s", Some("777"), unix("/tmp/s", 0o777)),
            ("unix:relative.sock", None, Err("absolute Unix socket path")),
            ("unix:", None, Err("absolute Unix socket path")),
            ("unix:/run/dir/", None, Err("socket file path")),
            ("unix:/tmp/s", Some("0999"), Err("octal permission bits")),
            ("unix:/tmp/s", Some("01777"), Err("octal permission bits")),
            ("unix:/tmp/s", Some(""), Err("octal permission bits")),
            ("127.0.0.1:6380", Some("0660"), Err("Unix socket")),
            (
                "localhost:6380",
                None,
                Err("IP:PORT or unix:/absolute/path"),
            ),
        ];
        for (text, mode, want) in rows {
            let got = parse_listen(text, *mode);
            match (want, &got) {
                (Ok(w), Ok(g)) => assert_eq!(g, w, "{text} {mode:?}"),
                (Err(w), Err(g)) => assert!(g.contains(w), "{text} {mode:?}: {g}"),
                _ => panic!("{text} {mode:?}: got {got:?}, want {want:?}"),
            }
        }
        let long = format!("unix:/{}", "x".repeat(MAX_UNIX_PATH));
        assert!(parse_listen(&long, None).unwrap_err().contains("at most"));
    }

    #[test]
    fn a_unix_route_in_the_file() {
        let c = parse(
            "[sentinel]\naddresses=[\"a:1\"]\n[[route]]\nlisten=\"unix:/run/rfp/redis.sock\"\nlisten_mode=\"0600\"\n",
        )
        .unwrap();
        assert_eq!(
            c.routes[0].listen,
            ListenAddr::Unix {
                path: PathBuf::from("/run/rfp/redis.sock"),
                mode: 0o600
            }
        );
        assert_eq!(c.routes[0].listen.to_string(), "unix:/run/rfp/redis.sock");
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
        let e = parse("[sentinel]\naddresses=[\"a:1\"]\n[[route]]\nlisten=\"unix:/s\"\nlisten_tls_cert=\"/c\"\nlisten_tls_key=\"/k\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("listen_tls_cert") && e.contains("TCP listen address"),
            "{e}"
        );
        let e = parse("[sentinel]\naddresses=[\"a:1\"]\n[[route]]\nlisten=\"unix:/s\"\n[[route]]\nmaster=\"m2\"\nlisten=\"unix:/s\"\nlisten_mode=\"0600\"\n");
        assert!(
            e.unwrap_err()
                .to_string()
                .contains("already the listen address"),
            "same path, different mode: still the same socket"
        );
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
    fn runtime_engine() {
        let c = parse("[sentinel]\naddresses=[\"a:1\"]\n").unwrap();
        assert_eq!(c.runtime.engine, Engine::Epoll);
        for (text, want) in [("epoll", Engine::Epoll), ("io_uring", Engine::IoUring)] {
            let c = parse(&format!(
                "[sentinel]\naddresses=[\"a:1\"]\n[runtime]\nengine=\"{text}\"\n"
            ))
            .unwrap();
            assert_eq!(c.runtime.engine, want);
            assert_eq!(want.as_str(), text);
        }
        let e =
            parse("[sentinel]\naddresses=[\"a:1\"]\n[runtime]\nengine=\"uring\"\n").unwrap_err();
        assert!(e.to_string().contains("engine"), "{e}");
    }

    #[test]
    fn runtime_busy_poll() {
        let c = parse("[sentinel]\naddresses=[\"a:1\"]\n").unwrap();
        assert_eq!(c.runtime.busy_poll, Duration::ZERO);
        let c = parse("[sentinel]\naddresses=[\"a:1\"]\n[runtime]\nbusy_poll=\"200us\"\n").unwrap();
        assert_eq!(c.runtime.busy_poll, Duration::from_micros(200));
        let e =
            parse("[sentinel]\naddresses=[\"a:1\"]\n[runtime]\nbusy_poll=\"1s\"\n").unwrap_err();
        assert!(e.to_string().contains("runtime.busy_poll"), "{e}");
        assert!(e.to_string().contains("10ms"), "{e}");
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
    fn credentials_defaults_overrides_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "from-file\n").unwrap();
        let text = format!(
            "[sentinel]\naddresses=[\"a:1\"]\nusername=\"rfp\"\npassword=\"s3cret\"\n\
             [node]\npassword_file=\"{}\"\n\
             [[route]]\nmaster=\"m1\"\nlisten=\"127.0.0.1:7001\"\n\
             [[route]]\nmaster=\"m2\"\nlisten=\"127.0.0.1:7002\"\nnode_username=\"other\"\nnode_password=\"route-pw\"\n",
            pw.display()
        );
        let c = parse(&text).unwrap();
        let (r0, r1) = (&c.routes[0], &c.routes[1]);
        assert_eq!(r0.sentinel.access.auth.username.as_deref(), Some("rfp"));
        assert_eq!(
            r0.sentinel
                .access
                .auth
                .password
                .as_ref()
                .map(Secret::expose),
            Some("s3cret")
        );
        assert_eq!(
            r0.node.auth.password.as_ref().map(Secret::expose),
            Some("from-file")
        );
        assert_eq!(r0.node.auth.username, None);
        assert_eq!(r1.node.auth.username.as_deref(), Some("other"));
        assert_eq!(
            r1.node.auth.password.as_ref().map(Secret::expose),
            Some("route-pw")
        );
        // The environment's password replaces the file's shared default.
        let o = Overrides {
            sentinel_password: Some(Secret::new("from-env")),
            ..Default::default()
        };
        let c = Config::from_toml(&text, None, "f", &o).unwrap();
        assert_eq!(
            c.routes[0]
                .sentinel
                .access
                .auth
                .password
                .as_ref()
                .map(Secret::expose),
            Some("from-env")
        );
        // Nothing prints a secret.
        let shown = format!("{c:?}");
        for secret in ["s3cret", "from-file", "route-pw", "from-env"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }

    #[test]
    fn credential_mistakes_are_errors_that_hide_the_secret() {
        let both = "[sentinel]\naddresses=[\"a:1\"]\npassword=\"x1y2\"\npassword_file=\"/p\"\n";
        let e = parse(both).unwrap_err().to_string();
        assert!(
            e.contains("either sentinel.password or sentinel.password_file"),
            "{e}"
        );
        let e = parse("[sentinel]\naddresses=[\"a:1\"]\nusername=\"u\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs a password"), "{e}");
        let e = parse("[sentinel]\naddresses=[\"a:1\"]\npassword=\"\"\"\ns3cr=et\\q\"\"\"\n")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("s3cr"), "{e}");
        let e = parse("[sentinel]\naddresses=[\"a:1\"]\npassword=987654321\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3") && e.contains("not shown"), "{e}");
        assert!(!e.contains("987654321"), "{e}");
        let e =
            parse("[node]\npassword_file=\"/nonexistent/pw\"\n[sentinel]\naddresses=[\"a:1\"]\n")
                .unwrap_err()
                .to_string();
        assert!(
            e.contains("node.password_file") && e.contains("/nonexistent/pw"),
            "{e}"
        );
    }

    /// `{:?}` of everything that holds a secret once it is loaded: the file as parsed, the
    /// overrides (environment), the validated `Config` (shared tables, per-route overrides, a
    /// password from a file) and its `Credentials`.
    #[test]
    fn debug_output_never_shows_a_secret() {
        let dir = tempfile::tempdir().unwrap();
        let pw_file = dir.path().join("node.pw");
        std::fs::write(&pw_file, "FromFileQz71\n").unwrap();
        let secrets = [
            "SharedSentinelQz71",
            "FromFileQz71",
            "RouteSentinelQz71",
            "RouteNodeQz71",
            "EnvSentinelQz71",
            "EnvNodeQz71",
        ];
        let text = format!(
            "[sentinel]\naddresses=[\"a:1\"]\nusername=\"rfp\"\npassword=\"SharedSentinelQz71\"\n\
             [node]\npassword_file={:?}\n\
             [[route]]\nname=\"one\"\nlisten=\"127.0.0.1:6380\"\n\
             [[route]]\nname=\"two\"\nlisten=\"127.0.0.1:6381\"\n\
             sentinel_password=\"RouteSentinelQz71\"\nnode_password=\"RouteNodeQz71\"\n",
            pw_file.display().to_string()
        );
        let file: FileConfig = toml::from_str(&text).unwrap();
        let from_file = parse(&text).unwrap();
        let overrides = Overrides {
            sentinel_password: Some(Secret::new("EnvSentinelQz71")),
            node_password: Some(Secret::new("EnvNodeQz71")),
            ..Default::default()
        };
        let from_env =
            Config::from_toml(&text, Some(Path::new("t.toml")), "t.toml", &overrides).unwrap();
        // The secrets did arrive where they belong ...
        let one = &from_file.routes[0];
        let two = &from_file.routes[1];
        assert_eq!(
            one.sentinel
                .access
                .auth
                .password
                .as_ref()
                .map(Secret::expose),
            Some("SharedSentinelQz71")
        );
        assert_eq!(
            one.node.auth.password.as_ref().map(Secret::expose),
            Some("FromFileQz71")
        );
        assert_eq!(
            two.sentinel
                .access
                .auth
                .password
                .as_ref()
                .map(Secret::expose),
            Some("RouteSentinelQz71")
        );
        assert_eq!(
            from_env.routes[0]
                .node
                .auth
                .password
                .as_ref()
                .map(Secret::expose),
            Some("EnvNodeQz71")
        );
        // ... and no Debug output shows one.
        let shown = [
            format!("{file:?}"),
            format!("{from_file:?}"),
            format!("{from_file:#?}"),
            format!("{overrides:?}"),
            format!("{from_env:?}"),
            format!("{:?}", one.sentinel.access.auth),
            format!("{:?}", two.node),
            format!("{:?}", from_env.routes[0].node.auth),
        ];
        for text in &shown {
            assert!(text.contains("<secret>"), "{text}");
            for s in secrets {
                assert!(!text.contains(s), "{s} in {text}");
            }
        }
    }

    #[test]
    fn admin_can_be_switched_off() {
        let c = parse("[sentinel]\naddresses=[\"a:1\"]\n").unwrap();
        assert!(c.admin_listen.is_some());
        let c = parse("[sentinel]\naddresses=[\"a:1\"]\n[admin]\nenabled=false\n").unwrap();
        assert!(c.admin_listen.is_none());
        let c =
            parse("[sentinel]\naddresses=[\"a:1\"]\n[[route]]\nlisten=\"0.0.0.0:6380\"\n").unwrap();
        assert!(c.warnings()[0].contains("reachable from other hosts"));
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

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// A config file built from known keys with arbitrary values.
        fn file_text() -> impl Strategy<Value = String> {
            let value = prop_oneof![
                any::<i64>().prop_map(|n| n.to_string()),
                any::<u64>().prop_map(|n| n.to_string()),
                "[a-z0-9 ]{0,12}".prop_map(|s| format!("{s:?}")),
                "[0-9]{1,6}(ns|ms|s|m|h|d)".prop_map(|s| format!("{s:?}")),
                Just("true".to_string()),
                Just("[\"127.0.0.1:1\", \"localhost:2\"]".to_string()),
                Just("\"127.0.0.1:6380\"".to_string()),
            ];
            let key = prop::sample::select(vec![
                "poll_interval",
                "timeout",
                "minority_grace",
                "on_minority",
                "addresses",
                "hold_timeout",
                "max_connections",
                "connect_timeout",
                "keepalive",
                "tcp_user_timeout",
                "listen",
                "master",
                "name",
                "password",
                "username",
                "threads",
                "shutdown_grace",
                "enabled",
                "verify_server_name",
            ]);
            let table = prop::sample::select(vec![
                "",
                "[sentinel]",
                "[[route]]",
                "[runtime]",
                "[admin]",
                "[node]",
            ]);
            prop::collection::vec((table, key, value), 0..12).prop_map(|lines| {
                let mut out = String::from("[sentinel]\naddresses = [\"127.0.0.1:1\"]\n");
                for (t, k, v) in lines {
                    out.push_str(&format!("{t}\n{k} = {v}\n"));
                }
                out
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(400))]

            /// Any file: a config or one error line, never a panic; a password never shows.
            #[test]
            fn any_file_is_a_config_or_one_error_line(text in file_text()) {
                match parse(&text) {
                    Ok(c) => {
                        for r in &c.routes {
                            prop_assert!(r.max_connections >= 1);
                            prop_assert!(r.sentinel.poll_interval >= MIN_POLL_INTERVAL);
                        }
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        prop_assert!(!msg.contains('\n'), "{}", msg);
                    }
                }
            }

            /// Arbitrary bytes never panic the parser.
            #[test]
            fn arbitrary_text_never_panics(text in ".{0,300}") {
                let _ = parse(&text);
            }

            /// A password's value never appears in a config error.
            #[test]
            fn password_values_stay_out_of_errors(n in 100_000_000u64.., bad in "[0-9]{9,12}") {
                for text in [
                    format!("[sentinel]\naddresses=[\"a:1\"]\npassword = {n}\n"),
                    format!("[node]\npassword = {n}\n[sentinel]\naddresses=[\"a:1\"]\n"),
                    format!("[sentinel]\naddresses=[\"a:1\"]\npassword = \"{bad}\n"),
                ] {
                    let msg = parse(&text).unwrap_err().to_string();
                    prop_assert!(!msg.contains(&n.to_string()), "{}", msg);
                    prop_assert!(!msg.contains(&bad), "{}", msg);
                }
            }
        }
    }
}
