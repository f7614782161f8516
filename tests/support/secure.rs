//! Password-, ACL- and TLS-protected Redis nodes and sentinels ([`SecureTopology`]), the
//! harness's own admin queries through `redis-cli` ([`Cli`]: `--tls`, `--user`, the password
//! in `REDISCLI_AUTH`), and a proxy configuration builder with `[node]` and `[tls]` tables and
//! environment variables ([`ProxyConf`]).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::tls::{CertPair, Certs};
use super::{free_port, kill, tempdir, wait_until, Proxy, BIN, MASTER_NAME};

// ---------------------------------------------------------------------------------------------
// redis-cli
// ---------------------------------------------------------------------------------------------

/// TLS options of a [`Cli`].
#[derive(Clone, Debug)]
pub struct CliTls {
    /// `--cacert`, ignored when `insecure`.
    pub ca: PathBuf,
    /// `--cert`/`--key`.
    pub cert: Option<CertPair>,
    /// `--insecure`: no certificate verification (for servers with a deliberately bad one).
    pub insecure: bool,
}

/// How `redis-cli` reaches one process: port, TLS, user and password (`REDISCLI_AUTH`, so it
/// never shows in `ps`).
#[derive(Clone, Debug)]
pub struct Cli {
    pub port: u16,
    pub tls: Option<CliTls>,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl Cli {
    pub fn plain(port: u16) -> Cli {
        Cli {
            port,
            tls: None,
            user: None,
            password: None,
        }
    }

    /// The same target as another user (`None`: the default user).
    pub fn as_user(&self, user: Option<&str>, password: Option<&str>) -> Cli {
        Cli {
            user: user.map(str::to_string),
            password: password.map(str::to_string),
            ..self.clone()
        }
    }

    /// The same target over TLS with `tls`.
    pub fn with_tls(&self, tls: Option<CliTls>) -> Cli {
        Cli {
            tls,
            ..self.clone()
        }
    }

    /// `redis-cli` (under `timeout 5`) with the connection options and `-e` (an error reply
    /// exits 1), without the command.
    pub fn command(&self) -> Command {
        let mut c = Command::new("timeout");
        c.args(["-k", "1", "5", "redis-cli", "-e", "-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string());
        if let Some(t) = &self.tls {
            c.arg("--tls");
            if t.insecure {
                c.arg("--insecure");
            } else {
                c.arg("--cacert").arg(&t.ca);
            }
            if let Some(p) = &t.cert {
                c.arg("--cert").arg(&p.cert).arg("--key").arg(&p.key);
            }
        }
        if let Some(u) = &self.user {
            c.args(["--user", u]);
        }
        match &self.password {
            Some(p) => c.env("REDISCLI_AUTH", p),
            None => c.env_remove("REDISCLI_AUTH"),
        };
        c.stdin(Stdio::null());
        c
    }

    /// One command (raw output): Ok(stdout), or Err(stderr and stdout) when redis-cli failed
    /// (cannot connect, TLS handshake failed, error reply).
    pub fn run(&self, args: &[&str]) -> Result<String, String> {
        let out = self
            .command()
            .args(args)
            .output()
            .expect("run redis-cli (install redis-tools)");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            Ok(stdout.trim_end_matches('\n').to_string())
        } else {
            Err(format!("{}{}", stderr.trim(), stdout.trim()))
        }
    }

    /// One command with `--json` (RESP3: maps come back as objects).
    pub fn json(&self, args: &[&str]) -> Result<serde_json::Value, String> {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        let text = self.run(&full)?;
        serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))
    }
}

/// A JSON reply that is a map (RESP3) or a flat `[k, v, ...]` array (RESP2) as a field map.
pub fn json_fields(v: &serde_json::Value) -> Option<HashMap<String, String>> {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match v {
        serde_json::Value::Object(m) => Some(m.iter().map(|(k, v)| (k.clone(), text(v))).collect()),
        serde_json::Value::Array(items) => Some(
            items
                .chunks(2)
                .filter_map(|kv| match kv {
                    [k, v] => Some((text(k), text(v))),
                    _ => None,
                })
                .collect(),
        ),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// What protects the processes
// ---------------------------------------------------------------------------------------------

/// TLS on the Redis processes: TLS-only (`port 0`, `tls-port P`), `tls-replication yes` so
/// replication, sentinel-to-node and sentinel-to-sentinel links use TLS too.
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// `tls-ca-cert-file`: whom the processes trust, as servers (client certificates) and as
    /// clients of each other.
    pub ca: PathBuf,
    /// `tls-cert-file`/`tls-key-file` of the nodes (also their client certificate on links).
    pub node_cert: CertPair,
    /// The same for the sentinels.
    pub sentinel_cert: CertPair,
    /// `tls-auth-clients`: `yes`, `no` or `optional`.
    pub auth_clients: &'static str,
    /// What the harness's `redis-cli` presents.
    pub admin_cert: CertPair,
    /// `false`: the sentinels listen on a plain port (no `tls-port`) but still reach the
    /// nodes over TLS (`tls-replication yes`). Sentinel-to-sentinel links then fail (a
    /// sentinel with `tls-replication` speaks TLS to every peer): use one sentinel.
    pub sentinels_listen_tls: bool,
}

/// How the processes of a [`SecureTopology`] are protected. `Default` is nothing at all.
#[derive(Clone, Debug, Default)]
pub struct Security {
    /// `requirepass` and `masterauth` on the nodes; `sentinel auth-pass` on the sentinels.
    pub node_password: Option<String>,
    /// ACL rules on the nodes, one user each, without the leading `user`:
    /// `rfp on >pw -@all +role`.
    pub node_users: Vec<String>,
    /// `requirepass` on the sentinels, and `sentinel sentinel-pass` so they reach each other.
    pub sentinel_password: Option<String>,
    /// ACL rules on the sentinels (as `node_users`).
    pub sentinel_users: Vec<String>,
    /// `sentinel auth-user` and `auth-pass`: the user and password the sentinels log in to the
    /// nodes with, instead of the default user and `node_password`.
    pub sentinel_auth_user: Option<(String, String)>,
    pub tls: Option<ServerTls>,
    /// Sentinels monitor the master as `localhost` with `resolve-hostnames` and
    /// `announce-hostnames`, and nodes announce themselves as `localhost`: every master the
    /// sentinels name is a hostname.
    pub announce_hostnames: bool,
}

impl Security {
    /// `requirepass` on the nodes and on the sentinels (either may be `None`).
    pub fn passwords(node: Option<&str>, sentinel: Option<&str>) -> Security {
        Security {
            node_password: node.map(str::to_string),
            sentinel_password: sentinel.map(str::to_string),
            ..Default::default()
        }
    }

    /// TLS-only processes with `tls-auth-clients yes`, every one with `certs.server`.
    pub fn tls(certs: &Certs) -> Security {
        Security {
            tls: Some(ServerTls {
                ca: certs.ca.clone(),
                node_cert: certs.server.clone(),
                sentinel_cert: certs.server.clone(),
                auth_clients: "yes",
                admin_cert: certs.client.clone(),
                sentinels_listen_tls: true,
            }),
            ..Default::default()
        }
    }

    pub fn with_passwords(mut self, node: Option<&str>, sentinel: Option<&str>) -> Security {
        self.node_password = node.map(str::to_string);
        self.sentinel_password = sentinel.map(str::to_string);
        self
    }

    /// Adds an ACL user to the nodes: `node_user("rfp on >pw -@all +role")`.
    pub fn node_user(mut self, rule: &str) -> Security {
        self.node_users.push(rule.to_string());
        self
    }

    /// Adds an ACL user to the sentinels.
    pub fn sentinel_user(mut self, rule: &str) -> Security {
        self.sentinel_users.push(rule.to_string());
        self
    }

    /// `sentinel auth-user` / `auth-pass`: the sentinels log in to the nodes as this user
    /// (which must exist on the nodes, see [`Security::node_user`]).
    pub fn sentinels_log_in_as(mut self, user: &str, password: &str) -> Security {
        self.sentinel_auth_user = Some((user.to_string(), password.to_string()));
        self
    }

    fn tls_mut(&mut self) -> &mut ServerTls {
        self.tls.as_mut().expect("Security::tls first")
    }

    /// `tls-auth-clients` on every process.
    pub fn auth_clients(mut self, mode: &'static str) -> Security {
        self.tls_mut().auth_clients = mode;
        self
    }

    /// See [`Security::announce_hostnames`].
    pub fn hostnames(mut self) -> Security {
        self.announce_hostnames = true;
        self
    }

    pub fn node_cert(mut self, pair: &CertPair) -> Security {
        self.tls_mut().node_cert = pair.clone();
        self
    }

    /// Sentinels on a plain port, TLS to the nodes only (see [`ServerTls::sentinels_listen_tls`]).
    pub fn plain_sentinels(mut self) -> Security {
        self.tls_mut().sentinels_listen_tls = false;
        self
    }

    pub fn sentinel_cert(mut self, pair: &CertPair) -> Security {
        self.tls_mut().sentinel_cert = pair.clone();
        self
    }

    /// The harness's `redis-cli` for a process whose certificate is `cert`.
    fn cli(&self, port: u16, cert: Option<&CertPair>, password: Option<&String>) -> Cli {
        Cli {
            port,
            tls: self.tls.as_ref().map(|t| CliTls {
                ca: t.ca.clone(),
                cert: Some(t.admin_cert.clone()),
                insecure: !cert.is_some_and(|c| c.chain_valid),
            }),
            user: None,
            password: password.cloned(),
        }
    }

    /// The config lines every process gets for TLS (`cert` is its own), or the plain port.
    fn listen_lines(&self, port: u16, cert: &CertPair) -> String {
        match &self.tls {
            None => format!("port {port}\n"),
            Some(t) => format!(
                "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\n\
                 tls-ca-cert-file {}\ntls-auth-clients {}\ntls-replication yes\n",
                cert.cert.display(),
                cert.key.display(),
                t.ca.display(),
                t.auth_clients,
            ),
        }
    }
}

/// A Redis config value in double quotes (passwords may hold anything but quotes here).
fn quoted(s: &str) -> String {
    assert!(
        !s.contains(['"', '\\', '\n']),
        "test secrets must not need escaping: {s:?}"
    );
    format!("\"{s}\"")
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// One protected `redis-server`, started from a config file in its own dir.
pub struct SecureNode {
    pub port: u16,
    pub dir: PathBuf,
    sec: Security,
    conf: PathBuf,
    child: Option<Child>,
    /// `redis-cli` as the default user (with `node_password`).
    pub cli: Cli,
}

impl SecureNode {
    pub fn start(dir: &Path, sec: &Security, replica_of: Option<u16>) -> SecureNode {
        let port = free_port();
        let dir = dir.join(format!("node-{port}"));
        std::fs::create_dir_all(&dir).expect("node dir");
        let cert = sec.tls.as_ref().map(|t| t.node_cert.clone());
        let cli = sec.cli(port, cert.as_ref(), sec.node_password.as_ref());
        let mut n = SecureNode {
            port,
            conf: dir.join("redis.conf"),
            dir,
            sec: sec.clone(),
            child: None,
            cli,
        };
        n.spawn(replica_of);
        n
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    fn spawn(&mut self, replica_of: Option<u16>) {
        let sec = &self.sec;
        let mut conf = match &sec.tls {
            Some(t) => sec.listen_lines(self.port, &t.node_cert),
            None => sec.listen_lines(self.port, &dummy_pair()),
        };
        conf.push_str(&format!(
            "bind 127.0.0.1\nprotected-mode no\nsave \"\"\nappendonly no\ndaemonize no\n\
             repl-diskless-sync-delay 0\ndir {dir}\nlogfile {dir}/redis.log\n",
            dir = self.dir.display()
        ));
        if let Some(p) = &sec.node_password {
            conf.push_str(&format!("requirepass {p}\nmasterauth {p}\n", p = quoted(p)));
        }
        for u in &sec.node_users {
            conf.push_str(&format!("user {u}\n"));
        }
        if let Some(m) = replica_of {
            conf.push_str(&format!("replicaof 127.0.0.1 {m}\n"));
        }
        if sec.announce_hostnames {
            conf.push_str("replica-announce-ip localhost\n");
        }
        std::fs::write(&self.conf, conf).expect("redis.conf");
        self.child = Some(
            Command::new("redis-server")
                .arg(&self.conf)
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn redis-server"),
        );
        let cli = self.cli.clone();
        wait_until(Duration::from_secs(10), "redis-server answers PING", || {
            cli.run(&["PING"]).is_ok_and(|r| r == "PONG")
        });
    }

    /// One admin command as the default user.
    pub fn cmd(&self, args: &[&str]) -> Result<String, String> {
        self.cli.run(args)
    }

    /// First element of `ROLE` (`master`, `slave`) or `error`.
    pub fn role(&self) -> String {
        match self.cli.run(&["ROLE"]) {
            Ok(out) => out.lines().next().unwrap_or_default().to_string(),
            Err(_) => "error".into(),
        }
    }

    /// `INFO section` (empty on error).
    pub fn info(&self, section: &str) -> String {
        self.cli.run(&["INFO", section]).unwrap_or_default()
    }

    /// How often the node ran `command` (lowercase, e.g. `echo`): `INFO commandstats`.
    pub fn calls(&self, command: &str) -> u64 {
        let key = format!("cmdstat_{command}:calls=");
        self.info("commandstats")
            .lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The `INFO commandstats` line of `command` (lowercase), if the node ever saw it: run,
    /// failed or rejected (a command refused with NOAUTH counts as `rejected_calls`).
    pub fn commandstat(&self, command: &str) -> Option<String> {
        let key = format!("cmdstat_{command}:");
        self.info("commandstats")
            .lines()
            .find(|l| l.starts_with(&key))
            .map(str::to_string)
    }

    /// `run_id` from `INFO server` (it changes on restart).
    pub fn run_id(&self) -> String {
        self.info("server")
            .lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c);
        }
    }

    /// Starts it again on the same port, as a master unless `replica_of`.
    pub fn restart(&mut self, replica_of: Option<u16>) {
        self.kill();
        self.spawn(replica_of);
    }
}

impl Drop for SecureNode {
    fn drop(&mut self) {
        self.kill();
    }
}

fn dummy_pair() -> CertPair {
    CertPair {
        cert: PathBuf::new(),
        key: PathBuf::new(),
        chain_valid: false,
    }
}

/// One protected `redis-sentinel` monitoring `127.0.0.1:master_port` as `redis-ha`, quorum 2.
pub struct SecureSentinel {
    pub port: u16,
    pub dir: PathBuf,
    conf: PathBuf,
    child: Option<Child>,
    /// `redis-cli` as the default user (with `sentinel_password`).
    pub cli: Cli,
}

impl SecureSentinel {
    pub fn start(dir: &Path, sec: &Security, master_port: u16, down_after_ms: u64) -> Self {
        let port = free_port();
        let dir = dir.join(format!("sentinel-{port}"));
        std::fs::create_dir_all(&dir).expect("sentinel dir");
        let conf_path = dir.join("sentinel.conf");
        let mut conf = match &sec.tls {
            Some(t) if !t.sentinels_listen_tls => format!(
                "port {port}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n\
                 tls-replication yes\n",
                t.sentinel_cert.cert.display(),
                t.sentinel_cert.key.display(),
                t.ca.display(),
            ),
            Some(t) => sec.listen_lines(port, &t.sentinel_cert),
            None => sec.listen_lines(port, &dummy_pair()),
        };
        conf.push_str(&format!(
            "bind 127.0.0.1\nprotected-mode no\ndaemonize no\ndir {dir}\nlogfile {dir}/sentinel.log\n",
            dir = dir.display()
        ));
        if let Some(p) = &sec.sentinel_password {
            conf.push_str(&format!(
                "requirepass {p}\nsentinel sentinel-pass {p}\n",
                p = quoted(p)
            ));
        }
        for u in &sec.sentinel_users {
            conf.push_str(&format!("user {u}\n"));
        }
        if sec.announce_hostnames {
            conf.push_str("sentinel resolve-hostnames yes\nsentinel announce-hostnames yes\n");
        }
        let master_host = if sec.announce_hostnames {
            "localhost"
        } else {
            "127.0.0.1"
        };
        conf.push_str(&format!(
            "sentinel monitor {MASTER_NAME} {master_host} {master_port} 2\n\
             sentinel down-after-milliseconds {MASTER_NAME} {down_after_ms}\n\
             sentinel failover-timeout {MASTER_NAME} 6000\n\
             sentinel parallel-syncs {MASTER_NAME} 2\n"
        ));
        match (&sec.sentinel_auth_user, &sec.node_password) {
            (Some((u, p)), _) => conf.push_str(&format!(
                "sentinel auth-user {MASTER_NAME} {u}\nsentinel auth-pass {MASTER_NAME} {}\n",
                quoted(p)
            )),
            (None, Some(p)) => {
                conf.push_str(&format!("sentinel auth-pass {MASTER_NAME} {}\n", quoted(p)))
            }
            (None, None) => {}
        }
        std::fs::write(&conf_path, conf).expect("sentinel.conf");
        let cert = sec.tls.as_ref().map(|t| t.sentinel_cert.clone());
        let mut cli = sec.cli(port, cert.as_ref(), sec.sentinel_password.as_ref());
        if sec.tls.as_ref().is_some_and(|t| !t.sentinels_listen_tls) {
            cli.tls = None;
        }
        let mut s = SecureSentinel {
            port,
            dir,
            conf: conf_path,
            child: None,
            cli,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        self.child = Some(
            Command::new("redis-sentinel")
                .arg(&self.conf)
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn redis-sentinel"),
        );
        let cli = self.cli.clone();
        wait_until(Duration::from_secs(10), "sentinel answers PING", || {
            cli.run(&["PING"]).is_ok_and(|r| r == "PONG")
        });
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// One admin command as the default user.
    pub fn cmd(&self, args: &[&str]) -> Result<String, String> {
        self.cli.run(args)
    }

    /// `SENTINEL MASTER redis-ha` as a field map.
    pub fn master_fields(&self) -> Option<HashMap<String, String>> {
        let v = self.cli.json(&["SENTINEL", "MASTER", MASTER_NAME]).ok()?;
        json_fields(&v)
    }

    /// The master port this sentinel names.
    pub fn master_port(&self) -> Option<u16> {
        self.master_fields()?.get("port")?.parse().ok()
    }

    /// Gives the default user (what `requirepass` set) another password, live; the harness's
    /// own `redis-cli` follows. Links the sentinel already has stay authenticated.
    pub fn set_password(&mut self, password: &str) {
        self.cli
            .run(&[
                "ACL",
                "SETUSER",
                "default",
                "resetpass",
                &format!(">{password}"),
            ])
            .expect("ACL SETUSER default on the sentinel");
        self.cli.password = Some(password.to_string());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sentinel.log")).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c);
        }
    }

    /// Starts it again from its (sentinel-rewritten) config file.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for SecureSentinel {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Protected nodes (the first is master) and sentinels, converged. The counterpart of
/// [`super::Topology`].
pub struct SecureTopology {
    pub dir: tempfile::TempDir,
    pub sec: Security,
    pub nodes: Vec<SecureNode>,
    pub sentinels: Vec<SecureSentinel>,
}

impl SecureTopology {
    /// Three nodes and three sentinels.
    pub fn start(sec: &Security, down_after_ms: u64) -> SecureTopology {
        SecureTopology::start_sized(sec, 3, 3, down_after_ms)
    }

    /// One node and one sentinel: for tests that never fail over.
    pub fn single(sec: &Security) -> SecureTopology {
        SecureTopology::start_sized(sec, 1, 1, 60_000)
    }

    pub fn start_sized(
        sec: &Security,
        n_nodes: usize,
        n_sentinels: usize,
        down_after_ms: u64,
    ) -> SecureTopology {
        let dir = tempdir();
        let master = SecureNode::start(dir.path(), sec, None);
        let mp = master.port;
        let mut nodes = vec![master];
        for _ in 1..n_nodes {
            nodes.push(SecureNode::start(dir.path(), sec, Some(mp)));
        }
        for n in &nodes[1..] {
            wait_until(Duration::from_secs(15), "replica linked to master", || {
                n.info("replication").contains("master_link_status:up")
            });
        }
        let sentinels = (0..n_sentinels)
            .map(|_| SecureSentinel::start(dir.path(), sec, mp, down_after_ms))
            .collect();
        let t = SecureTopology {
            dir,
            sec: sec.clone(),
            nodes,
            sentinels,
        };
        t.wait_converged();
        t
    }

    /// Every sentinel knows the others and the replicas.
    pub fn wait_converged(&self) {
        let others = (self.sentinels.len() - 1).to_string();
        let replicas = (self.nodes.len() - 1).to_string();
        for s in &self.sentinels {
            wait_until(
                Duration::from_secs(20),
                "sentinels discover each other and the replicas",
                || {
                    s.master_fields().is_some_and(|f| {
                        f.get("num-other-sentinels") == Some(&others)
                            && f.get("num-slaves") == Some(&replicas)
                    })
                },
            );
        }
    }

    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|s| s.port).collect()
    }

    pub fn sentinel_addrs(&self) -> Vec<SocketAddr> {
        self.sentinels.iter().map(|s| s.addr()).collect()
    }

    pub fn node_by_port(&self, port: u16) -> &SecureNode {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .expect("node with that port")
    }

    pub fn node_by_port_mut(&mut self, port: u16) -> &mut SecureNode {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("node with that port")
    }

    /// The master port a majority of answering sentinels name.
    pub fn master_port(&self) -> Option<u16> {
        let named: Vec<u16> = self
            .sentinels
            .iter()
            .filter_map(|s| s.master_port())
            .collect();
        named
            .iter()
            .copied()
            .find(|p| named.iter().filter(|q| *q == p).count() > named.len() / 2)
    }

    /// The port of the node a client connection reaches (by `run_id`: a TLS-only node says
    /// `tcp_port:0` in `INFO server`). The client must be logged in if the nodes want it.
    pub fn node_reached_by(&self, c: &mut super::Client) -> std::io::Result<u16> {
        let info = c.cmd(&["INFO", "server"])?;
        let id = info
            .lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(|s| s.trim().to_string())
            .ok_or_else(|| std::io::Error::other(format!("no run_id in {info:?}")))?;
        self.nodes
            .iter()
            .find(|n| n.run_id() == id)
            .map(|n| n.port)
            .ok_or_else(|| std::io::Error::other(format!("no node has run_id {id}")))
    }

    /// The node the sentinels name as master.
    pub fn master(&self) -> &SecureNode {
        self.node_by_port(self.master_port().expect("a master"))
    }

    /// `SENTINEL FAILOVER` (to sentinel 0) and wait until the sentinels name a new master
    /// that says ROLE master; returns its port.
    pub fn failover(&self) -> u16 {
        self.failover_via(0)
    }

    pub fn failover_via(&self, i: usize) -> u16 {
        let old = self.master_port().expect("a master");
        let s = &self.sentinels[i];
        wait_until(
            Duration::from_secs(20),
            "SENTINEL FAILOVER accepted",
            || s.cmd(&["SENTINEL", "FAILOVER", MASTER_NAME]).is_ok(),
        );
        self.wait_new_master(old)
    }

    /// Waits until a majority of sentinels name a master other than `old` that says ROLE
    /// master; returns its port.
    pub fn wait_new_master(&self, old: u16) -> u16 {
        let mut new = 0;
        wait_until(
            Duration::from_secs(30),
            "sentinels name a new master",
            || match self.master_port() {
                Some(p) if p != old && self.node_by_port(p).role() == "master" => {
                    new = p;
                    true
                }
                _ => false,
            },
        );
        new
    }
}

// ---------------------------------------------------------------------------------------------
// The proxy
// ---------------------------------------------------------------------------------------------

/// A proxy configuration beyond [`super::ProxyOpts`]: lines for `[sentinel]`, `[node]`,
/// `[tls]` and `[[route]]`, environment variables and extra flags.
#[derive(Clone, Debug)]
pub struct ProxyConf {
    pub sentinels: Vec<SocketAddr>,
    pub hold_timeout: String,
    pub poll_interval: String,
    /// `sentinel.timeout` (connect + one query; covers a TLS handshake).
    pub timeout: String,
    pub sentinel: Vec<String>,
    pub node: Vec<String>,
    pub tls: Vec<String>,
    pub route: Vec<String>,
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
    /// `RUST_LOG` of the proxy (default `info`, or `RFP_TEST_LOG`).
    pub log_level: String,
}

/// A TOML basic string.
pub fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("string")
}

impl ProxyConf {
    pub fn new(sentinels: &[SocketAddr]) -> ProxyConf {
        ProxyConf {
            sentinels: sentinels.to_vec(),
            hold_timeout: "10s".into(),
            poll_interval: "250ms".into(),
            timeout: "1s".into(),
            sentinel: vec![],
            node: vec![],
            tls: vec![],
            route: vec![],
            env: vec![],
            args: vec![],
            log_level: std::env::var("RFP_TEST_LOG").unwrap_or_else(|_| "info".into()),
        }
    }

    /// For the sentinels of `t`.
    pub fn for_topology(t: &SecureTopology) -> ProxyConf {
        ProxyConf::new(&t.sentinel_addrs())
    }

    pub fn hold_timeout(mut self, d: &str) -> Self {
        self.hold_timeout = d.into();
        self
    }

    /// A raw line for `[sentinel]`, e.g. `password_file = "/x"`.
    pub fn sentinel_line(mut self, line: &str) -> Self {
        self.sentinel.push(line.into());
        self
    }

    /// A raw line for `[node]`.
    pub fn node_line(mut self, line: &str) -> Self {
        self.node.push(line.into());
        self
    }

    /// A raw line for `[tls]`.
    pub fn tls_line(mut self, line: &str) -> Self {
        self.tls.push(line.into());
        self
    }

    /// A raw line for the `[[route]]`.
    pub fn route_line(mut self, line: &str) -> Self {
        self.route.push(line.into());
        self
    }

    /// `[sentinel] username`/`password`.
    pub fn sentinel_auth(self, user: Option<&str>, password: &str) -> Self {
        let s = match user {
            Some(u) => self.sentinel_line(&format!("username = {}", toml_str(u))),
            None => self,
        };
        s.sentinel_line(&format!("password = {}", toml_str(password)))
    }

    /// `[node] username`/`password`.
    pub fn node_auth(self, user: Option<&str>, password: &str) -> Self {
        let s = match user {
            Some(u) => self.node_line(&format!("username = {}", toml_str(u))),
            None => self,
        };
        s.node_line(&format!("password = {}", toml_str(password)))
    }

    /// `[tls] ca` only (no client certificate).
    pub fn tls_ca(self, ca: &Path) -> Self {
        self.tls_line(&format!("ca = {}", toml_str(&ca.display().to_string())))
    }

    /// `[tls] ca`, `cert`, `key`: `certs.ca` and `certs.client`.
    pub fn tls_client(self, certs: &Certs) -> Self {
        self.tls_ca(&certs.ca)
            .tls_line(&format!(
                "cert = {}",
                toml_str(&certs.client.cert.display().to_string())
            ))
            .tls_line(&format!(
                "key = {}",
                toml_str(&certs.client.key.display().to_string())
            ))
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.into();
        self
    }

    /// The TOML text with these listen and admin ports.
    pub fn toml(&self, port: u16, admin: u16) -> String {
        let sentinels: Vec<String> = self
            .sentinels
            .iter()
            .map(|a| toml_str(&a.to_string()))
            .collect();
        let mut t = format!(
            "shutdown_grace = \"2s\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
             [sentinel]\naddresses = [{}]\npoll_interval = {}\ntimeout = {}\n",
            sentinels.join(", "),
            toml_str(&self.poll_interval),
            toml_str(&self.timeout),
        );
        for l in &self.sentinel {
            t.push_str(l);
            t.push('\n');
        }
        if !self.node.is_empty() {
            t.push_str("[node]\n");
            for l in &self.node {
                t.push_str(l);
                t.push('\n');
            }
        }
        if !self.tls.is_empty() {
            t.push_str("[tls]\n");
            for l in &self.tls {
                t.push_str(l);
                t.push('\n');
            }
        }
        t.push_str(&format!(
            "[[route]]\nmaster = \"{MASTER_NAME}\"\nlisten = \"127.0.0.1:{port}\"\nhold_timeout = {}\n",
            toml_str(&self.hold_timeout)
        ));
        for l in &self.route {
            t.push_str(l);
            t.push('\n');
        }
        t
    }

    /// The proxy binary with this config's environment and flags (no `--config`).
    fn command(&self, dir: &Path) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.current_dir(dir)
            .env("RUST_LOG", &self.log_level)
            .stdin(Stdio::null());
        for (k, _) in std::env::vars() {
            if k.starts_with("REDIS_FAILOVER_PROXY_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts the proxy and waits for `/healthz` (not for `/readyz`).
    pub fn start(&self) -> Proxy {
        let dir = tempdir();
        let port = free_port();
        let admin = free_port();
        let conf = dir.path().join("proxy.toml");
        std::fs::write(&conf, self.toml(port, admin)).expect("proxy.toml");
        let log = dir.path().join("proxy.log");
        let child = self
            .command(dir.path())
            .arg("--config")
            .arg(&conf)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn proxy");
        let p = Proxy {
            port,
            admin,
            ip: Ipv4Addr::LOCALHOST.into(),
            dir,
            child: Some(child),
            log,
        };
        wait_until(Duration::from_secs(10), "proxy /healthz answers", || {
            p.http("/healthz").is_some_and(|(code, _)| code == 200)
        });
        p
    }

    /// Runs the binary with this config (`--config`, env, flags) and `args` before them
    /// (e.g. `["check"]`); returns (exit code, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> (i32, String, String) {
        let dir = tempdir();
        let conf = dir.path().join("proxy.toml");
        std::fs::write(&conf, self.toml(free_port(), free_port())).expect("proxy.toml");
        let out = self
            .command(dir.path())
            .args(args)
            .arg("--config")
            .arg(&conf)
            .args(&self.args)
            .output()
            .expect("run proxy binary");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `redis-failover-proxy check --config ...`.
    pub fn check(&self) -> (i32, String, String) {
        self.run(&["check"])
    }
}

/// Runs the proxy binary with `args` in `dir` and `env` (and no other `REDIS_FAILOVER_PROXY_*`
/// variables); returns (exit code, stdout, stderr).
pub fn run_bin_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("REDIS_FAILOVER_PROXY_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run proxy binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------------------------------------
// Assertions the auth and TLS tests share
// ---------------------------------------------------------------------------------------------

/// The `/status` entry of the sentinel at `addr` (`routes[0].sentinels[i]` whose `address`
/// is `addr`).
pub fn sentinel_status(proxy: &Proxy, addr: SocketAddr) -> serde_json::Value {
    let s = proxy.status();
    s["routes"][0]["sentinels"]
        .as_array()
        .and_then(|all| {
            all.iter()
                .find(|e| e["address"].as_str() == Some(&addr.to_string()))
                .cloned()
        })
        .unwrap_or(serde_json::Value::Null)
}

/// `last_error` of the sentinel at `addr` in `/status` (empty if none).
pub fn sentinel_last_error(proxy: &Proxy, addr: SocketAddr) -> String {
    sentinel_status(proxy, addr)["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Whether `text` contains any of `needles`, ignoring case.
pub fn contains_any(text: &str, needles: &[&str]) -> bool {
    let t = text.to_lowercase();
    needles.iter().any(|n| t.contains(&n.to_lowercase()))
}

/// A unique secret for this test process and call: shows up nowhere by accident.
pub fn unique_secret(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{tag}Zq{}x{}x{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

// ---------------------------------------------------------------------------------------------
// Least-privilege ACLs (found by experiment against Redis 7.0.15; see tests/secure_harness.rs)
// ---------------------------------------------------------------------------------------------

/// What the proxy's node user needs on the nodes: `ROLE`, nothing else. `AUTH` and `HELLO`
/// need no permission.
pub const NODE_ACL: &str = "resetchannels -@all +role +info";

/// The smallest node ACL the proxy routes with: without `+info` it cannot read the master's
/// `run_id`, says so once, and tells a restart by the replication offset alone.
pub const NODE_ACL_ROLE_ONLY: &str = "resetchannels -@all +role";

/// What the proxy's sentinel user needs on the sentinels: the `SENTINEL` subcommands it asks,
/// `SUBSCRIBE` and `PING` (its subscriptions are pinged), and the channels it subscribes to.
/// Redis 7.0 defaults to `acl-pubsub-default resetchannels`, so without the `&` patterns
/// `SUBSCRIBE` fails with "NOPERM this user has no permissions to access one of the channels
/// used as arguments".
pub const SENTINEL_ACL: &str = "resetchannels -@all +sentinel|master +sentinel|replicas \
     +sentinel|sentinels +sentinel|ckquorum +subscribe +ping \
     &+switch-master &+failover-state-send-slaveof-noone &+promoted-slave";

/// An ACL user rule: `rfp on >pw <rules>`.
pub fn acl_user(name: &str, password: &str, rules: &str) -> String {
    assert!(!password.contains(char::is_whitespace));
    format!("{name} on >{password} {rules}")
}

// ---------------------------------------------------------------------------------------------
// Scenarios the auth and TLS tests share
// ---------------------------------------------------------------------------------------------

/// A client of `proxy`, logged in with `AUTH <auth...>` unless `auth` is empty.
pub fn client_via(proxy: &Proxy, auth: &[&str]) -> super::Client {
    let mut c = super::Client::connect(proxy.port);
    if !auth.is_empty() {
        let mut cmd = vec!["AUTH"];
        cmd.extend_from_slice(auth);
        assert_eq!(c.cmd(&cmd).expect("AUTH through the proxy"), "+OK");
    }
    c
}

/// The core path through a ready `proxy` in front of `t` (three nodes): PING, SET and GET
/// reach the master; `SENTINEL FAILOVER` closes every old session (fence) and new sessions
/// reach the new master, which has the key. Clients log in with `auth` themselves. Returns
/// the new master's port.
pub fn serves_and_follows_failover(t: &SecureTopology, proxy: &Proxy, auth: &[&str]) -> u16 {
    let old = t.master_port().expect("a master");
    let mut c = client_via(proxy, auth);
    assert_eq!(c.cmd(&["PING"]).unwrap(), "+PONG");
    assert_eq!(c.cmd(&["SET", "k", "v"]).unwrap(), "+OK");
    assert_eq!(c.cmd(&["GET", "k"]).unwrap(), "v");
    assert_eq!(t.node_reached_by(&mut c).unwrap(), old);
    let replicas = format!(":{}", t.nodes.len() - 1);
    assert_eq!(
        c.cmd(&["WAIT", &(t.nodes.len() - 1).to_string(), "5000"])
            .unwrap(),
        replicas
    );
    let mut sessions: Vec<super::Client> = (0..5).map(|_| client_via(proxy, auth)).collect();
    for s in &mut sessions {
        assert_eq!(s.cmd(&["PING"]).unwrap(), "+PONG");
    }
    sessions.push(c);

    let new = t.failover();
    for s in &mut sessions {
        assert!(
            s.closed_within(Duration::from_secs(5)),
            "a session to the old master outlived the failover"
        );
    }
    proxy.wait_routes_to(&format!("127.0.0.1:{new}"));
    let mut c = client_via(proxy, auth);
    assert_eq!(t.node_reached_by(&mut c).unwrap(), new);
    assert_eq!(c.cmd(&["GET", "k"]).unwrap(), "v");
    assert!(proxy.metric("redis_failover_proxy_fences_total", &[]) >= 1.0);
    assert!(
        proxy.metric(
            "redis_failover_proxy_sessions_closed_total",
            &[("reason", "master_switch")]
        ) >= 6.0
    );
    new
}

/// `proxy` routes nowhere: `/readyz` 503, no master switch ever, a client is held and then
/// closed, and its command (`ECHO`) never reached any of `nodes`.
pub fn assert_not_routing(proxy: &Proxy, nodes: &[SecureNode]) {
    let (code, body) = proxy.http("/readyz").expect("admin answers");
    assert_eq!(code, 503, "/readyz: {body}");
    let mut c = super::Client::connect(proxy.port);
    use std::io::Write;
    c.stream
        .write_all(b"*2\r\n$4\r\nECHO\r\n$13\r\nvia-the-proxy\r\n")
        .expect("send to the proxy");
    assert!(
        c.closed_within(Duration::from_secs(15)),
        "a held client was never released"
    );
    assert_eq!(
        proxy.metric("redis_failover_proxy_master_switches_total", &[]),
        0.0
    );
    for n in nodes {
        assert_eq!(
            n.commandstat("echo"),
            None,
            "a client session reached node {}",
            n.port
        );
    }
}
