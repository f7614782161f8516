//! Talking to one sentinel and checking one node's `ROLE`, through the `redis` crate.
//! Owns the connection to its sentinel (reconnected lazily after an error); knows nothing about
//! arbitration or routes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Value,
};

use crate::metrics::SentinelErrorKind;

/// A sentinel query failed.
#[derive(Debug, thiserror::Error)]
#[error("sentinel {addr}: {kind:?}: {message}")]
pub struct SentinelError {
    /// The sentinel, as configured.
    pub addr: String,
    /// What kind of failure (the metric label).
    pub kind: SentinelErrorKind,
    /// Details.
    pub message: String,
}

/// What one sentinel says about a master name (`SENTINEL MASTER <name>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterReport {
    /// Host or IP the sentinel announces for the master.
    pub host: String,
    /// Port.
    pub port: u16,
    /// The sentinel's config-epoch for this master; raised by every completed failover.
    pub config_epoch: u64,
    /// Flags such as `master`, `s_down`, `o_down`, `disconnected`.
    pub flags: String,
    /// Other sentinels this one knows.
    pub other_sentinels: u64,
    /// Replicas this one knows.
    pub replicas: u64,
    /// Configured quorum.
    pub quorum: u64,
}

impl MasterReport {
    /// `host:port` as announced (IPv6 literals bracketed).
    pub fn announced(&self) -> String {
        join_host_port(&self.host, self.port)
    }
}

/// `host:port`, bracketing IPv6 literals.
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A node's answer to `ROLE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// `master`.
    Master,
    /// `slave` (replica) of the given `host:port`.
    Replica(String),
    /// `sentinel` or anything else.
    Other(String),
}

/// Connection settings shared by sentinel and ROLE queries.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Connect and reply timeout.
    pub timeout: Duration,
}

impl Timeouts {
    fn connection_config(&self) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
    }
}

/// Builds a client for `host:port` that skips `CLIENT SETINFO` (older servers reject it).
pub fn client_for(host: &str, port: u16) -> Result<Client, redis::RedisError> {
    let info: ConnectionInfo =
        ConnectionAddr::Tcp(host.to_string(), port).into_connection_info()?;
    let redis_settings = info.redis_settings().clone().set_skip_set_lib_name();
    Client::open(info.set_redis_settings(redis_settings))
}

/// One configured sentinel and its (lazily re-established) query connection.
pub struct Sentinel {
    /// Address as configured (`host:port`).
    pub addr: String,
    client: Result<Client, String>,
    conn: Option<MultiplexedConnection>,
    timeouts: Timeouts,
}

impl Sentinel {
    /// A sentinel at `addr` (already validated as `host:port`).
    pub fn new(addr: &str, timeouts: Timeouts) -> Sentinel {
        let client = crate::config::parse_host_port(addr)
            .and_then(|(h, p)| client_for(&h, p).map_err(|e| e.to_string()));
        Sentinel {
            addr: addr.to_string(),
            client,
            conn: None,
            timeouts,
        }
    }

    /// A client for subscriptions.
    pub fn client(&self) -> Result<&Client, SentinelError> {
        self.client
            .as_ref()
            .map_err(|e| self.error(SentinelErrorKind::Connect, e.clone()))
    }

    fn error(&self, kind: SentinelErrorKind, message: impl Into<String>) -> SentinelError {
        SentinelError {
            addr: self.addr.clone(),
            kind,
            message: message.into(),
        }
    }

    /// Drops the connection so the next query reconnects.
    pub fn disconnect(&mut self) {
        self.conn = None;
    }

    async fn query(&mut self, cmd: &redis::Cmd) -> Result<Value, SentinelError> {
        if self.conn.is_none() {
            let client = self.client()?.clone();
            let config = self.timeouts.connection_config();
            let connecting = client.get_multiplexed_async_connection_with_config(&config);
            // The crate's connection timeout does not cover name resolution; bound it all.
            let conn = match tokio::time::timeout(self.timeouts.timeout * 2, connecting).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Err(self.error(SentinelErrorKind::Connect, e.to_string())),
                Err(_) => return Err(self.error(SentinelErrorKind::Connect, "connect timed out")),
            };
            self.conn = Some(conn);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(self.error(SentinelErrorKind::Connect, "not connected"));
        };
        match tokio::time::timeout(self.timeouts.timeout * 2, cmd.query_async::<Value>(conn)).await
        {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                let msg = e.to_string();
                let kind = if e.is_timeout() {
                    SentinelErrorKind::Timeout
                } else if matches!(
                    e.kind(),
                    redis::ErrorKind::Server(_) | redis::ErrorKind::Extension
                ) {
                    if msg.contains("No such master") {
                        SentinelErrorKind::UnknownMaster
                    } else {
                        SentinelErrorKind::Protocol
                    }
                } else {
                    SentinelErrorKind::Connect
                };
                // An error reply leaves the connection usable; anything else may not.
                if !matches!(
                    kind,
                    SentinelErrorKind::UnknownMaster | SentinelErrorKind::Protocol
                ) {
                    self.conn = None;
                }
                Err(self.error(kind, msg))
            }
            Err(_) => {
                self.conn = None;
                Err(self.error(SentinelErrorKind::Timeout, "no reply in time"))
            }
        }
    }

    /// `SENTINEL MASTER <name>`.
    pub async fn master(&mut self, name: &str) -> Result<MasterReport, SentinelError> {
        let v = self
            .query(redis::cmd("SENTINEL").arg("MASTER").arg(name))
            .await?;
        let fields = pairs(&v).ok_or_else(|| {
            self.error(
                SentinelErrorKind::Protocol,
                "SENTINEL MASTER reply is not a field map",
            )
        })?;
        parse_master_report(&fields).map_err(|m| self.error(SentinelErrorKind::Protocol, m))
    }

    /// `SENTINEL REPLICAS <name>` (ip:port and flags of each), for `check`.
    pub async fn replicas(&mut self, name: &str) -> Result<Vec<(String, String)>, SentinelError> {
        self.entries(name, "REPLICAS").await
    }

    /// `SENTINEL SENTINELS <name>` (ip:port and flags of each other sentinel), for `check`.
    pub async fn sentinels(&mut self, name: &str) -> Result<Vec<(String, String)>, SentinelError> {
        self.entries(name, "SENTINELS").await
    }

    async fn entries(
        &mut self,
        name: &str,
        what: &str,
    ) -> Result<Vec<(String, String)>, SentinelError> {
        let v = self
            .query(redis::cmd("SENTINEL").arg(what).arg(name))
            .await?;
        let Value::Array(items) = v else {
            return Err(self.error(
                SentinelErrorKind::Protocol,
                format!("SENTINEL {what}: not an array"),
            ));
        };
        Ok(items
            .iter()
            .filter_map(pairs)
            .map(|f| {
                let ip = f.get("ip").cloned().unwrap_or_default();
                let port = f.get("port").and_then(|p| p.parse().ok()).unwrap_or(0);
                (
                    join_host_port(&ip, port),
                    f.get("flags").cloned().unwrap_or_default(),
                )
            })
            .collect())
    }

    /// `SENTINEL CKQUORUM <name>`: the sentinel's own verdict line, for `check`.
    pub async fn ckquorum(&mut self, name: &str) -> Result<String, SentinelError> {
        match self
            .query(redis::cmd("SENTINEL").arg("CKQUORUM").arg(name))
            .await?
        {
            Value::SimpleString(s) => Ok(s),
            Value::BulkString(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
            other => Ok(format!("{other:?}")),
        }
    }
}

/// Turns a RESP2 flat `[k, v, ...]` array or a RESP3 map into a field map.
fn pairs(v: &Value) -> Option<HashMap<String, String>> {
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    };
    match v {
        Value::Array(items) if items.len() % 2 == 0 => items
            .chunks(2)
            .map(|kv| Some((text(&kv[0])?, text(&kv[1])?)))
            .collect(),
        Value::Map(kvs) => kvs
            .iter()
            .map(|(k, v)| Some((text(k)?, text(v)?)))
            .collect(),
        _ => None,
    }
}

/// Validates the fields of a `SENTINEL MASTER` reply.
fn parse_master_report(f: &HashMap<String, String>) -> Result<MasterReport, String> {
    let get = |k: &str| {
        f.get(k)
            .ok_or_else(|| format!("SENTINEL MASTER reply lacks {k:?}"))
    };
    let num = |k: &str| -> Result<u64, String> {
        f.get(k).map_or(Ok(0), |v| {
            v.parse()
                .map_err(|_| format!("SENTINEL MASTER field {k:?} is not a number: {v:?}"))
        })
    };
    let host = get("ip")?.clone();
    if host.is_empty()
        || host.len() > 255
        || host.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!("SENTINEL MASTER names an invalid host {host:?}"));
    }
    let port: u16 = get("port")?
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("SENTINEL MASTER names an invalid port {:?}", f.get("port")))?;
    Ok(MasterReport {
        host,
        port,
        config_epoch: num("config-epoch")?,
        flags: f.get("flags").cloned().unwrap_or_default(),
        other_sentinels: num("num-other-sentinels")?,
        replicas: num("num-slaves")?,
        quorum: num("quorum")?,
    })
}

/// Resolves a master address the sentinels announce, rejecting the unspecified address.
pub async fn resolve(host: &str, port: u16, timeout: Duration) -> Result<SocketAddr, String> {
    let found = tokio::time::timeout(timeout, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| format!("resolving {host:?} timed out"))?
        .map_err(|e| format!("cannot resolve {host:?}: {e}"))?
        .next();
    match found {
        Some(a) if a.ip().is_unspecified() => Err(format!("{a} is the unspecified address")),
        Some(a) => Ok(a),
        None => Err(format!("{host:?} resolves to no address")),
    }
}

/// Asks the node at `addr` for its `ROLE` on a fresh connection.
pub async fn role(addr: SocketAddr, timeouts: Timeouts) -> Result<Role, String> {
    let client = client_for(&addr.ip().to_string(), addr.port()).map_err(|e| e.to_string())?;
    let work = async {
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&timeouts.connection_config())
            .await
            .map_err(|e| e.to_string())?;
        redis::cmd("ROLE")
            .query_async::<Value>(&mut conn)
            .await
            .map_err(|e| e.to_string())
    };
    let v = tokio::time::timeout(timeouts.timeout * 2, work)
        .await
        .map_err(|_| "ROLE timed out".to_string())??;
    parse_role(&v)
}

fn parse_role(v: &Value) -> Result<Role, String> {
    let Value::Array(items) = v else {
        return Err(format!("ROLE reply is not an array: {v:?}"));
    };
    let text = |v: Option<&Value>| match v {
        Some(Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
        Some(Value::SimpleString(s)) => Some(s.clone()),
        Some(Value::Int(i)) => Some(i.to_string()),
        _ => None,
    };
    match text(items.first()).as_deref() {
        Some("master") => Ok(Role::Master),
        Some("slave") | Some("replica") => {
            let host = text(items.get(1)).unwrap_or_default();
            let port = text(items.get(2)).unwrap_or_default();
            Ok(Role::Replica(format!("{host}:{port}")))
        }
        Some(other) => Ok(Role::Other(other.to_string())),
        None => Err("ROLE reply is empty".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn master_report_from_flat_array() {
        let v = Value::Array(
            [
                "name",
                "redis-ha",
                "ip",
                "10.0.0.1",
                "port",
                "6379",
                "flags",
                "master",
                "config-epoch",
                "3",
                "num-other-sentinels",
                "2",
            ]
            .iter()
            .map(|s| bulk(s))
            .collect(),
        );
        let r = parse_master_report(&pairs(&v).unwrap()).unwrap();
        assert_eq!(r.announced(), "10.0.0.1:6379");
        assert_eq!(r.config_epoch, 3);
        assert_eq!(r.other_sentinels, 2);
    }

    #[test]
    fn hostile_master_reports_are_errors() {
        let mk = |ip: &str, port: &str, epoch: &str| {
            let v = Value::Array(
                ["ip", ip, "port", port, "config-epoch", epoch]
                    .iter()
                    .map(|s| bulk(s))
                    .collect(),
            );
            parse_master_report(&pairs(&v).unwrap())
        };
        assert!(mk("", "1", "0").is_err());
        assert!(mk("a b", "1", "0").is_err());
        assert!(mk("h", "0", "0").is_err());
        assert!(mk("h", "70000", "0").is_err());
        assert!(mk("h", "1", "-1").is_err());
        assert!(pairs(&Value::Array(vec![bulk("odd")])).is_none());
        assert!(pairs(&Value::Int(1)).is_none());
    }

    #[test]
    fn roles() {
        let v = Value::Array(vec![bulk("master"), Value::Int(0), Value::Array(vec![])]);
        assert_eq!(parse_role(&v).unwrap(), Role::Master);
        let v = Value::Array(vec![
            bulk("slave"),
            bulk("127.0.0.1"),
            Value::Int(6379),
            bulk("connected"),
            Value::Int(1),
        ]);
        assert_eq!(
            parse_role(&v).unwrap(),
            Role::Replica("127.0.0.1:6379".into())
        );
        assert!(parse_role(&Value::Array(vec![])).is_err());
        assert!(parse_role(&Value::Nil).is_err());
    }
}
