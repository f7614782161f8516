//! `redis-failover-proxy status`: asks a running proxy's admin server for `/status` and prints
//! it as tables. The request is a plain blocking HTTP/1.0 GET with timeouts ([`fetch`]); the
//! rendering is a pure function of the JSON document and the time ([`render`]), so it is
//! table-tested, and it tolerates fields it does not know and fields that are missing (an
//! older or newer proxy).

use std::fmt::Write as _;
use std::io::{Read, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::Value;

use crate::config::{self, ConfigError, StatusArgs};

/// How long connecting, and then each read or write, may take.
pub const TIMEOUT: Duration = Duration::from_secs(3);
/// Largest answer read (a `/status` of many routes is a few hundred KiB at most).
const MAX_ANSWER: u64 = 16 * 1024 * 1024;

/// Why `status` could not print a status.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The config file that names the admin address is unreadable or invalid.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The config file switches the admin server off.
    #[error(
        "{file}: the admin server is switched off ([admin] enabled = false); pass --admin ADDR"
    )]
    AdminOff {
        /// The file.
        file: PathBuf,
    },
    /// Nothing answered at the address (refused, timed out, reset).
    #[error("cannot reach the proxy's admin server at {addr} ({from}): {source}")]
    Unreachable {
        /// Where it was asked.
        addr: SocketAddr,
        /// Where the address came from (`--admin`, the file, the default).
        from: String,
        /// Why.
        source: std::io::Error,
    },
    /// Something answered, but not with a `/status` document.
    #[error("{addr} ({from}) answered, but not with the proxy's /status: {message}")]
    BadAnswer {
        /// Where it was asked.
        addr: SocketAddr,
        /// Where the address came from.
        from: String,
        /// What was wrong.
        message: String,
    },
}

/// The admin address to ask and where it came from: `--admin` (or its environment variable),
/// else the config file's `[admin] listen`, else the default, as the proxy resolves it.
pub fn target(args: &StatusArgs) -> Result<(SocketAddr, String), StatusError> {
    if let Some(a) = args.admin {
        return Ok((connect_addr(a), "--admin".to_string()));
    }
    let file = config::file_path(args.config.as_deref());
    match config::admin_listen_of(file.as_deref())? {
        Some(a) => Ok((
            connect_addr(a),
            match &file {
                Some(f) => format!("[admin] listen of {}", f.display()),
                None => "the default admin address".to_string(),
            },
        )),
        None => Err(StatusError::AdminOff {
            file: file.unwrap_or_default(),
        }),
    }
}

/// The address to connect to for a listen address: a wildcard (`0.0.0.0`, `::`) is reached on
/// loopback.
pub fn connect_addr(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), listen.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), listen.port())
        }
        _ => listen,
    }
}

/// GETs `path` from `addr` (HTTP/1.0, so the answer ends when the connection does); returns
/// the raw answer.
pub fn fetch(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: application/json\r\nUser-Agent: redis-failover-proxy-status\r\n\r\n"
    );
    let written = s.write_all(request.as_bytes());
    let mut raw = Vec::new();
    let read = s.take(MAX_ANSWER).read_to_end(&mut raw);
    // A peer that answered without reading the whole request (and so reset the connection)
    // still answered: judge what arrived.
    if !raw.is_empty() {
        return Ok(raw);
    }
    written?;
    read?;
    Ok(raw)
}

/// Splits a raw HTTP answer into its status code and body.
pub fn parse_answer(raw: &[u8]) -> Result<(u16, String), String> {
    let text = String::from_utf8_lossy(raw);
    let status = text.lines().next().unwrap_or("");
    let mut parts = status.split_whitespace();
    let code = match (parts.next(), parts.next()) {
        (Some(v), Some(c)) if v.starts_with("HTTP/") => c
            .parse::<u16>()
            .map_err(|_| format!("bad status line {:?}", clean(status)))?,
        _ => return Err(format!("not HTTP (first line {:?})", clean(status))),
    };
    let (_, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "the HTTP answer ended inside its head".to_string())?;
    Ok((code, body.to_string()))
}

/// Asks the proxy and returns what to print: the raw JSON with `json`, else [`render`]'s
/// tables.
pub fn run(args: &StatusArgs) -> Result<String, StatusError> {
    let (addr, from) = target(args)?;
    let raw = fetch(addr, "/status", TIMEOUT).map_err(|source| StatusError::Unreachable {
        addr,
        from: from.clone(),
        source,
    })?;
    let bad = |message: String| StatusError::BadAnswer {
        addr,
        from: from.clone(),
        message,
    };
    let (code, body) = parse_answer(&raw).map_err(bad)?;
    if code != 200 {
        return Err(bad(format!(
            "HTTP {code}: {}",
            clean(body.lines().next().unwrap_or(""))
        )));
    }
    let doc: Value = serde_json::from_str(&body).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    if args.json {
        let mut out = body;
        if !out.ends_with('\n') {
            out.push('\n');
        }
        return Ok(out);
    }
    let now = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let mut out = format!("admin server {addr} ({from})\n");
    out.push_str(&render(&doc, now).map_err(bad)?);
    Ok(out)
}

/// Peer-supplied text made safe for a terminal: control characters escaped.
fn clean(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let esc: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            esc
        })
        .collect()
}

/// A JSON value as a cell: strings cleaned, numbers as they are, `null` or missing as `-`.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::String(s) if s.is_empty() => "-".to_string(),
        Value::String(s) => clean(s),
        Value::Bool(b) => if *b { "yes" } else { "no" }.to_string(),
        other => clean(&other.to_string()),
    }
}

/// Seconds since the Unix epoch as RFC 3339 UTC, whole seconds.
fn timestamp(unix: f64) -> String {
    if !unix.is_finite() || unix <= 0.0 || unix > 1e11 {
        return "-".to_string();
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs_f64(unix)).to_string()
}

/// How long ago `unix` was, at `now`, in the largest two units.
fn ago(unix: f64, now: f64) -> String {
    if !unix.is_finite() || unix <= 0.0 {
        return "-".to_string();
    }
    let secs = now - unix;
    if secs < 0.0 {
        return "just now".to_string();
    }
    if secs < 10.0 {
        return format!("{secs:.1}s ago");
    }
    let s = secs as u64;
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m{:02}s ago", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m ago", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h ago", s / 86400, s % 86400 / 3600),
    }
}

/// A duration in milliseconds, in a readable unit.
fn millis(ms: f64) -> String {
    if !ms.is_finite() || ms < 0.0 {
        "-".to_string()
    } else if ms < 1.0 {
        format!("{ms:.3} ms")
    } else if ms < 1000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

/// Rows as columns padded to their widest cell, each line indented by `indent`.
fn table(out: &mut String, indent: &str, rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = indent.to_string();
        for (c, s) in r.iter().enumerate() {
            line.push_str(s);
            if c + 1 < r.len() {
                let pad = widths[c] - s.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|s| s.to_string()).collect()
}

/// The `/status` document as tables, at time `now` (seconds since the Unix epoch): one line
/// per route, then per route its master, its sentinels and its recent switches and fences
/// (the `history` array, newest first, or `last_fence` from a proxy without one).
pub fn render(doc: &Value, now: f64) -> Result<String, String> {
    let routes = doc
        .get("routes")
        .and_then(Value::as_array)
        .ok_or_else(|| "no \"routes\" array in the document".to_string())?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "proxy version {}{}",
        cell(&doc["version"]),
        if doc["draining"].as_bool() == Some(true) {
            "; DRAINING (shutting down: not accepting, /readyz 503)"
        } else {
            ""
        }
    );
    out.push('\n');
    let mut rows = vec![row(&[
        "ROUTE",
        "LISTEN",
        "STATE",
        "MASTER",
        "EPOCH",
        "SESSIONS",
        "OPEN",
        "HELD",
        "SENTINELS",
    ])];
    for r in routes {
        let m = &r["master"];
        let configured = r["sentinels"].as_array().map_or(0, Vec::len);
        let majority = match r["sentinel_majority"].as_bool() {
            Some(true) => "",
            Some(false) => " NO MAJORITY",
            None => "",
        };
        rows.push(vec![
            cell(&r["name"]),
            cell(&r["listen"]),
            cell(&r["state"]),
            cell(&m["addr"]),
            cell(&m["epoch"]),
            cell(&m["sessions"]),
            cell(&r["clients_open"]),
            cell(&r["clients_held"]),
            format!("{}/{configured}{majority}", cell(&r["sentinels_reachable"])),
        ]);
    }
    table(&mut out, "", &rows);
    for r in routes {
        render_route(&mut out, r, now);
    }
    Ok(out)
}

fn render_route(out: &mut String, r: &Value, now: f64) {
    let _ = writeln!(
        out,
        "\nroute {} (sentinel master name {}, listen {})",
        cell(&r["name"]),
        cell(&r["master_name"]),
        cell(&r["listen"])
    );
    let m = &r["master"];
    if m.is_object() {
        let verified = m["verified_unix"].as_f64().unwrap_or(0.0);
        let _ = writeln!(
            out,
            "  master {} (announced {}), epoch {}, config-epoch {}, verified {} ({}), {} sessions",
            cell(&m["addr"]),
            cell(&m["announced"]),
            cell(&m["epoch"]),
            cell(&m["config_epoch"]),
            timestamp(verified),
            ago(verified, now),
            cell(&m["sessions"]),
        );
    } else {
        let _ = writeln!(
            out,
            "  master: none verified; new clients are held ({} held)",
            cell(&r["clients_held"])
        );
    }
    if !r["last_node_error"].is_null() {
        let _ = writeln!(out, "  last ROLE error: {}", cell(&r["last_node_error"]));
    }
    let sentinels = r["sentinels"].as_array().cloned().unwrap_or_default();
    let mut rows = vec![row(&[
        "SENTINEL",
        "HEALTH",
        "NAMES MASTER",
        "CONFIG-EPOCH",
        "FLAGS",
        "LAST OK",
        "SUBSCRIBED",
        "ERROR",
    ])];
    for s in &sentinels {
        let health = match s["reachable"].as_bool() {
            Some(true) => "ok",
            Some(false) => "DOWN",
            None => "-",
        };
        rows.push(vec![
            cell(&s["address"]),
            health.to_string(),
            cell(&s["master"]),
            cell(&s["config_epoch"]),
            cell(&s["flags"]),
            ago(s["last_ok_unix"].as_f64().unwrap_or(0.0), now),
            cell(&s["subscribed"]),
            cell(&s["last_error"]),
        ]);
    }
    let _ = writeln!(
        out,
        "  sentinels: {}/{} reachable{}",
        cell(&r["sentinels_reachable"]),
        sentinels.len(),
        match r["sentinel_majority"].as_bool() {
            Some(true) => " (a majority)",
            Some(false) => " (NOT a majority)",
            None => "",
        }
    );
    table(out, "    ", &rows);
    match r["history"].as_array() {
        Some(h) if !h.is_empty() => {
            let _ = writeln!(out, "  recent switches and fences (newest first):");
            let mut rows = vec![row(&[
                "WHEN", "AGO", "KIND", "EPOCH", "FROM", "TO", "REASON", "DURATION", "SESSIONS",
            ])];
            for e in h {
                let at = e["at_unix"].as_f64().unwrap_or(0.0);
                rows.push(vec![
                    timestamp(at),
                    ago(at, now),
                    cell(&e["kind"]),
                    cell(&e["epoch"]),
                    cell(&e["from"]),
                    cell(&e["to"]),
                    cell(&e["reason"]),
                    e["duration_ms"].as_f64().map_or("-".to_string(), millis),
                    cell(&e["sessions"]),
                ]);
            }
            table(out, "    ", &rows);
        }
        Some(_) => {
            let _ = writeln!(out, "  recent switches and fences: none yet");
        }
        None => match &r["last_fence"] {
            f if f.is_object() => {
                let at = f["unix"].as_f64().unwrap_or(0.0);
                let _ = writeln!(
                    out,
                    "  last fence: {} ({}): epoch {}, master {}, reason {}",
                    timestamp(at),
                    ago(at, now),
                    cell(&f["epoch"]),
                    cell(&f["master"]),
                    cell(&f["reason"]),
                );
            }
            _ => {
                let _ = writeln!(out, "  last fence: none");
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: f64 = 1_700_000_200.0;

    fn route() -> Value {
        json!({
            "name": "redis-ha", "master_name": "redis-ha", "listen": "127.0.0.1:6380",
            "state": "routing",
            "master": {"addr": "127.0.0.1:16300", "announced": "127.0.0.1:16300", "epoch": 2,
                       "config_epoch": 1, "verified_unix": 1_700_000_000.0, "sessions": 5},
            "clients_open": 6, "clients_held": 1,
            "last_fence": {"unix": 1_699_999_990.0, "reason": "switch_event", "epoch": 1,
                           "master": "127.0.0.1:26300"},
            "last_node_error": null,
            "sentinels_reachable": 2, "sentinel_majority": true,
            "sentinels": [
                {"address": "127.0.0.1:16355", "reachable": true, "master": "127.0.0.1:16300",
                 "config_epoch": 1, "flags": "master", "other_sentinels": 2, "replicas": 2,
                 "last_ok_unix": 1_700_000_199.5, "last_error": null, "subscribed": true},
                {"address": "127.0.0.1:26355", "reachable": false, "master": null,
                 "config_epoch": null, "flags": null, "last_ok_unix": 1_700_000_000.0,
                 "last_error": "sentinel 127.0.0.1:26355: connection refused\u{1b}[31m",
                 "subscribed": false}
            ]
        })
    }

    fn lines_with<'a>(text: &'a str, needle: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.contains(needle)).collect()
    }

    #[test]
    fn summary_table_and_details() {
        let doc = json!({"version": "0.1.0", "draining": false, "routes": [route()]});
        let out = render(&doc, NOW).unwrap();
        assert!(out.starts_with("proxy version 0.1.0\n"), "{out}");
        let header = lines_with(&out, "ROUTE")[0];
        let line = lines_with(&out, "redis-ha  127.0.0.1:6380")[0];
        // Aligned columns: each value starts where its header does.
        for (h, v) in [
            ("STATE", "routing"),
            ("MASTER", "127.0.0.1:16300"),
            ("SENTINELS", "2/2"),
        ] {
            assert_eq!(header.find(h), line.find(v), "{h}\n{header}\n{line}");
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            fields,
            [
                "redis-ha",
                "127.0.0.1:6380",
                "routing",
                "127.0.0.1:16300",
                "2",
                "5",
                "6",
                "1",
                "2/2"
            ]
        );
        for want in [
            "route redis-ha (sentinel master name redis-ha, listen 127.0.0.1:6380)",
            "  master 127.0.0.1:16300 (announced 127.0.0.1:16300), epoch 2, config-epoch 1, verified 2023-11-14T22:13:20Z (3m20s ago), 5 sessions",
            "  sentinels: 2/2 reachable (a majority)",
            // No history array: the last fence.
            "  last fence: 2023-11-14T22:13:10Z (3m30s ago): epoch 1, master 127.0.0.1:26300, reason switch_event",
        ] {
            assert!(out.contains(want), "{want:?} in\n{out}");
        }
        let up = lines_with(&out, "127.0.0.1:16355  ok")[0];
        assert!(
            up.contains("master") && up.contains("0.5s ago") && up.contains("yes"),
            "{up}"
        );
        let down = lines_with(&out, "127.0.0.1:26355  DOWN")[0];
        // Peer text cannot drive the terminal.
        assert!(
            !down.contains('\u{1b}') && down.contains("\\u{1b}[31m"),
            "{down}"
        );
        assert!(down.contains("3m20s ago"), "{down}");
    }

    #[test]
    fn history_is_rendered_when_present() {
        let mut r = route();
        r["history"] = json!([
            {"at_unix": 1_700_000_000.0, "kind": "switch", "epoch": 2, "from": "127.0.0.1:26300",
             "to": "127.0.0.1:16300", "reason": null, "duration_ms": null, "sessions": null},
            {"at_unix": 1_699_999_990.0, "kind": "fence", "epoch": 1, "from": "127.0.0.1:26300",
             "to": null, "reason": "switch_event", "duration_ms": 0.4321, "sessions": 12},
            {"at_unix": 1_699_999_000.0, "kind": "fence", "epoch": 0, "from": "x", "to": null,
             "reason": "role_replica", "duration_ms": 2500.0, "sessions": 0}
        ]);
        let out = render(&json!({"version": "0.1.0", "routes": [r]}), NOW).unwrap();
        assert!(!out.contains("last fence:"), "{out}");
        assert!(
            out.contains("recent switches and fences (newest first):"),
            "{out}"
        );
        let switch = lines_with(&out, "  switch  ")[0];
        let f: Vec<&str> = switch.split_whitespace().collect();
        assert_eq!(
            f,
            [
                "2023-11-14T22:13:20Z",
                "3m20s",
                "ago",
                "switch",
                "2",
                "127.0.0.1:26300",
                "127.0.0.1:16300",
                "-",
                "-",
                "-"
            ]
        );
        let fence = lines_with(&out, "switch_event")[0];
        assert!(
            fence.contains("0.432 ms") && fence.trim_end().ends_with("12"),
            "{fence}"
        );
        assert!(
            lines_with(&out, "role_replica")[0].contains("2.50 s"),
            "{out}"
        );
        let mut empty = route();
        empty["history"] = json!([]);
        let out = render(&json!({"routes": [empty]}), NOW).unwrap();
        assert!(
            out.contains("recent switches and fences: none yet"),
            "{out}"
        );
    }

    #[test]
    fn holding_route_draining_proxy_and_missing_fields() {
        let r = json!({"name": "r2", "state": "holding", "master": null, "clients_held": 3,
                       "sentinels_reachable": 0, "sentinel_majority": false, "sentinels": [],
                       "last_fence": null, "last_node_error": "node 10.0.0.1:6379: NOAUTH"});
        let out = render(
            &json!({"version": "9", "draining": true, "routes": [r]}),
            NOW,
        )
        .unwrap();
        for want in [
            "DRAINING",
            "master: none verified; new clients are held (3 held)",
            "last ROLE error: node 10.0.0.1:6379: NOAUTH",
            "0/0 NO MAJORITY",
            "last fence: none",
        ] {
            assert!(out.contains(want), "{want:?} in\n{out}");
        }
        let line = lines_with(&out, "r2 ")[0];
        assert_eq!(line.split_whitespace().nth(3), Some("-"), "{line}");
        assert!(render(&json!({"version": "1"}), NOW).is_err());
        assert!(render(&json!([1, 2]), NOW).is_err());
    }

    #[test]
    fn answers_and_addresses() {
        assert_eq!(
            parse_answer(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{\"a\":1}"),
            Ok((200, "{\"a\":1}".to_string()))
        );
        assert_eq!(
            parse_answer(b"HTTP/1.0 404 Not Found\r\n\r\nnope").map(|a| a.0),
            Ok(404)
        );
        assert!(parse_answer(b"-ERR unknown command\r\n").is_err());
        assert!(parse_answer(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_answer(b"").is_err());
        let c = |s: &str| connect_addr(s.parse().unwrap()).to_string();
        assert_eq!(c("0.0.0.0:8379"), "127.0.0.1:8379");
        assert_eq!(c("[::]:8379"), "[::1]:8379");
        assert_eq!(c("10.1.2.3:8379"), "10.1.2.3:8379");
    }

    #[test]
    fn ages_and_durations() {
        let rows: &[(f64, &str)] = &[
            (NOW - 0.3, "0.3s ago"),
            (NOW - 42.0, "42s ago"),
            (NOW - 125.0, "2m05s ago"),
            (NOW - 7300.0, "2h01m ago"),
            (NOW - 90_000.0, "1d01h ago"),
            (NOW + 5.0, "just now"),
            (0.0, "-"),
        ];
        for (at, want) in rows {
            assert_eq!(ago(*at, NOW), *want, "{at}");
        }
        assert_eq!(millis(0.05), "0.050 ms");
        assert_eq!(millis(28.04), "28.0 ms");
        assert_eq!(millis(1500.0), "1.50 s");
        assert_eq!(millis(f64::NAN), "-");
        assert_eq!(timestamp(-1.0), "-");
    }
}
