//! The HTML status page the admin server serves at `/`: the same [`StatusDoc`] as `/status`,
//! rendered for a person by a pure function ([`render`]). Self-contained: its stylesheet is
//! served from the binary at [`CSS_PATH`], it refreshes itself with `<meta http-equiv=refresh>`
//! (no script), and [`CSP`] forbids everything else. Every value is HTML-escaped, since sentinel
//! and master names, addresses and error texts come from peers.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use crate::status::{HistoryEntry, HistoryKind, RouteState, RouteView, SentinelStatus, StatusDoc};

/// Seconds between the page's refreshes.
pub const REFRESH_SECS: u32 = 2;

/// Where the page's stylesheet is served.
pub const CSS_PATH: &str = "/status.css";

/// The page's Content-Security-Policy: its own stylesheet and nothing else (no script, no
/// images, no frames, no forms).
pub const CSP: &str = "default-src 'none'; style-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The page's stylesheet.
pub const CSS: &str = r#"body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.2em 2em;color:#1d2430;background:#f6f7f9}
h1{font-size:1.3em;margin:0 0 .2em}
h2{font-size:1.15em;margin:0}
h3{font-size:1em;margin:1em 0 .3em;color:#4a5568}
.meta{color:#5a6577;margin-bottom:1em}
section.route{overflow-x:auto;background:#fff;border:1px solid #d8dde5;border-radius:6px;padding:1em 1.2em;margin-bottom:1.2em}
.head{display:flex;align-items:center;gap:.8em}
.state{font-weight:600;padding:.1em .6em;border-radius:1em;font-size:.85em;text-transform:uppercase;letter-spacing:.03em}
.routing{background:#d7f5df;color:#135c2a}.untrusted{background:#fdeccc;color:#7a4a00}.holding{background:#fbd9d9;color:#8a1c1c}
.draining{background:#fbd9d9;color:#8a1c1c;padding:.1em .5em;border-radius:4px}
dl.facts{display:grid;grid-template-columns:max-content 1fr max-content 1fr;gap:.25em 1em;margin:.8em 0 0}
dt{color:#5a6577}dd{margin:0;font-family:ui-monospace,monospace}
table{border-collapse:collapse;width:100%;font-size:.92em}
th,td{text-align:left;padding:.25em .6em;border-bottom:1px solid #e6e9ee;vertical-align:top}
th{color:#5a6577;font-weight:600;background:#fafbfc}
td.mono{font-family:ui-monospace,monospace}
td.nowrap,td.mono{white-space:nowrap}td.flags{white-space:normal}td.error{overflow-wrap:anywhere}
.ok{color:#135c2a;font-weight:600}.bad{color:#8a1c1c;font-weight:600}
.err{color:#8a1c1c}.muted{color:#8a93a3}
.fence{background:#fff6f6}.switch{background:#f4fbf6}
"#;

/// Escapes `s` for HTML text and double- or single-quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A Unix time as RFC 3339 UTC (seconds) and how long before `now` it was.
fn when(at: f64, now: f64) -> String {
    if !at.is_finite() || at <= 0.0 {
        return "-".to_string();
    }
    let t = UNIX_EPOCH + Duration::from_secs_f64(at);
    format!(
        "{} ({} ago)",
        humantime::format_rfc3339_seconds(t),
        ago(now - at)
    )
}

/// How long before `now` a Unix time was, with the time itself as a tooltip.
fn since(at: f64, now: f64) -> String {
    if !at.is_finite() || at <= 0.0 {
        return "-".to_string();
    }
    let t = UNIX_EPOCH + Duration::from_secs_f64(at);
    format!(
        "<span title=\"{}\">{} ago</span>",
        humantime::format_rfc3339_seconds(t),
        ago(now - at)
    )
}

/// A duration in seconds, coarse and short: `850ms`, `12s`, `4m 10s`, `3h 5m`, `2d 1h`.
fn ago(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "0s".to_string();
    }
    if secs < 1.0 {
        return format!("{}ms", (secs * 1000.0) as u64);
    }
    let s = secs as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

fn opt(v: Option<&str>) -> String {
    v.map_or_else(|| "-".to_string(), escape)
}

fn state_label(s: RouteState) -> &'static str {
    match s {
        RouteState::Routing => "routing",
        RouteState::Untrusted => "untrusted",
        RouteState::Holding => "holding",
    }
}

/// The page for `doc`, as of `now_unix` (seconds since the Unix epoch; for the "ago" texts).
pub fn render(doc: &StatusDoc, now_unix: f64) -> String {
    let mut h = String::with_capacity(8 * 1024);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>redis-failover-proxy status</title>\
         <link rel=\"stylesheet\" href=\"{CSS_PATH}\"></head><body>\n\
         <h1>redis-failover-proxy</h1>\n<div class=\"meta\">version {} &middot; {} route{} &middot; \
         as of {} &middot; refreshes every {REFRESH_SECS}s{}</div>\n",
        escape(doc.version),
        doc.routes.len(),
        if doc.routes.len() == 1 { "" } else { "s" },
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs_f64(now_unix.max(0.0))),
        if doc.draining {
            " &middot; <span class=\"draining\" id=\"draining\">shutting down</span>"
        } else {
            ""
        }
    );
    for r in &doc.routes {
        route(&mut h, r, now_unix);
    }
    h.push_str("</body></html>\n");
    h
}

fn route(h: &mut String, r: &RouteView, now: f64) {
    let state = state_label(r.state);
    let name = escape(&r.name);
    let _ = write!(
        h,
        "<section class=\"route\" data-route=\"{name}\">\n<div class=\"head\"><h2>route {name}</h2>\
         <span class=\"state {state}\" data-state=\"{state}\">{state}</span></div>\n<dl class=\"facts\">"
    );
    let fact = |h: &mut String, label: &str, class: &str, value: String| {
        let _ = write!(h, "<dt>{label}</dt><dd class=\"{class}\">{value}</dd>");
    };
    match &r.master {
        Some(m) => {
            fact(h, "master", "master-addr", escape(&m.addr));
            fact(h, "announced as", "master-announced", escape(&m.announced));
            fact(h, "epoch", "epoch", m.epoch.to_string());
            fact(
                h,
                "config-epoch",
                "config-epoch",
                m.config_epoch.to_string(),
            );
            fact(h, "verified", "verified", when(m.verified_unix, now));
            fact(h, "sessions", "sessions", m.sessions.to_string());
        }
        None => {
            fact(
                h,
                "master",
                "master-addr",
                "<span class=\"bad\">none verified</span>".to_string(),
            );
            fact(h, "epoch", "epoch", "-".to_string());
        }
    }
    fact(
        h,
        "clients open",
        "clients-open",
        r.clients_open.to_string(),
    );
    fact(
        h,
        "clients held",
        "clients-held",
        r.clients_held.to_string(),
    );
    fact(
        h,
        "sentinel master name",
        "master-name",
        escape(&r.master_name),
    );
    fact(h, "listen", "listen", escape(&r.listen));
    fact(
        h,
        "sentinels reachable",
        "sentinels-reachable",
        format!(
            "{}/{}{}",
            r.sentinels_reachable,
            r.sentinels.len(),
            if r.sentinel_majority {
                " (majority)"
            } else {
                " <span class=\"bad\">(no majority)</span>"
            }
        ),
    );
    if let Some(e) = &r.last_node_error {
        fact(
            h,
            "last ROLE check error",
            "node-error",
            format!("<span class=\"err\">{}</span>", escape(e)),
        );
    }
    h.push_str("</dl>\n");
    sentinels(h, &r.sentinels, now);
    history(h, &r.history, now);
    h.push_str("</section>\n");
}

fn sentinels(h: &mut String, all: &[SentinelStatus], now: f64) {
    h.push_str(
        "<h3>Sentinels</h3>\n<table class=\"sentinels\"><thead><tr><th>address</th><th>health</th>\
         <th>names master</th><th>config-epoch</th><th>flags</th><th>other sentinels</th>\
         <th>replicas</th><th>events</th><th>last answer</th><th>last error</th></tr></thead><tbody>\n",
    );
    for s in all {
        let health = if s.reachable {
            "<span class=\"ok\">reachable</span>"
        } else {
            "<span class=\"bad\">unreachable</span>"
        };
        let _ = write!(
            h,
            "<tr><td class=\"mono\">{}</td><td class=\"nowrap\">{health}</td><td class=\"mono sentinel-master\">{}</td>\
             <td>{}</td><td class=\"mono flags\">{}</td><td>{}</td><td>{}</td><td class=\"nowrap\">{}</td><td class=\"nowrap\">{}</td>\
             <td class=\"error{}\">{}</td></tr>",
            escape(&s.address),
            opt(s.master.as_deref()),
            s.config_epoch.map_or("-".to_string(), |e| e.to_string()),
            // Room to wrap between flags.
            opt(s.flags.as_deref()).replace(',', ", "),
            s.other_sentinels.map_or("-".to_string(), |e| e.to_string()),
            s.replicas.map_or("-".to_string(), |e| e.to_string()),
            if s.subscribed {
                "subscribed"
            } else {
                "<span class=\"muted\">not subscribed</span>"
            },
            s.last_ok_unix.map_or("-".to_string(), |t| since(t, now)),
            if s.last_error.is_some() {
                " err"
            } else {
                ""
            },
            opt(s.last_error.as_deref()),
        );
        h.push('\n');
    }
    h.push_str("</tbody></table>\n");
}

fn history(h: &mut String, all: &[HistoryEntry], now: f64) {
    h.push_str("<h3>Recent switches and fences</h3>\n");
    if all.is_empty() {
        h.push_str("<p class=\"muted history-empty\">none yet</p>\n");
        return;
    }
    h.push_str(
        "<table class=\"history\"><thead><tr><th>when</th><th>event</th><th>epoch</th>\
         <th>master</th><th>reason</th><th>sessions closed</th><th>fence took</th></tr></thead><tbody>\n",
    );
    for e in all {
        let (kind, master) = match e.kind {
            HistoryKind::Switch => (
                "switch",
                format!("{} &rarr; {}", opt(e.from.as_deref()), opt(e.to.as_deref())),
            ),
            HistoryKind::Fence => ("fence", opt(e.from.as_deref())),
        };
        let took = match (e.kind, e.duration_ms) {
            (HistoryKind::Fence, Some(ms)) => format!("{ms:.1} ms"),
            (HistoryKind::Fence, None) => "<span class=\"muted\">sessions closing</span>".into(),
            (HistoryKind::Switch, _) => "-".into(),
        };
        let _ = write!(
            h,
            "<tr class=\"{kind}\" data-kind=\"{kind}\"><td>{}</td><td>{kind}</td><td>{}</td>\
             <td class=\"mono\">{master}</td><td>{}</td><td>{}</td><td>{took}</td></tr>",
            when(e.at_unix, now),
            e.epoch,
            opt(e.reason.as_deref()),
            e.sessions.map_or("-".to_string(), |n| n.to_string()),
        );
        h.push('\n');
    }
    h.push_str("</tbody></table>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{History, MasterView};

    fn doc(name: &str, sentinel: SentinelStatus, master: Option<MasterView>) -> StatusDoc {
        let mut history = History::default();
        history.switch(1_700_000_000.0, 1, "10.0.0.1:6379".into());
        history.fence(
            1_700_000_100.0,
            1,
            "10.0.0.1:6379".into(),
            "switch_event",
            4,
        );
        history.fence_drained(1, 12.5);
        history.switch(1_700_000_101.0, 2, "10.0.0.2:6379".into());
        StatusDoc {
            version: "0.1.0",
            draining: false,
            routes: vec![RouteView {
                name: name.into(),
                master_name: "redis-ha".into(),
                listen: "127.0.0.1:6380".into(),
                state: if master.is_some() {
                    RouteState::Routing
                } else {
                    RouteState::Holding
                },
                master,
                clients_open: 7,
                clients_held: 2,
                last_fence: None,
                last_node_error: Some("connection refused <&>".into()),
                sentinels_reachable: 1,
                sentinel_majority: true,
                sentinels: vec![sentinel],
                history: history.newest_first(),
            }],
        }
    }

    fn master() -> MasterView {
        MasterView {
            addr: "10.0.0.2:6379".into(),
            announced: "redis2:6379".into(),
            epoch: 2,
            config_epoch: 5,
            verified_unix: 1_700_000_101.0,
            sessions: 3,
        }
    }

    #[test]
    fn escape_rows() {
        let rows = [
            ("plain", "plain"),
            ("<script>", "&lt;script&gt;"),
            ("a&b", "a&amp;b"),
            ("\"x\" 'y'", "&quot;x&quot; &#39;y&#39;"),
            ("ünïcode", "ünïcode"),
            ("", ""),
        ];
        for (input, want) in rows {
            assert_eq!(escape(input), want, "{input}");
        }
    }

    #[test]
    fn ago_rows() {
        let rows = [
            (0.25, "250ms"),
            (5.0, "5s"),
            (250.0, "4m 10s"),
            (11_100.0, "3h 5m"),
            (176_400.0, "2d 1h"),
            (-3.0, "0s"),
            (f64::NAN, "0s"),
        ];
        for (secs, want) in rows {
            assert_eq!(ago(secs), want, "{secs}");
        }
    }

    #[test]
    fn the_page_shows_master_epoch_sessions_sentinels_and_history() {
        let s = SentinelStatus {
            address: "127.0.0.1:26379".into(),
            reachable: true,
            master: Some("10.0.0.2:6379".into()),
            config_epoch: Some(5),
            flags: Some("master".into()),
            other_sentinels: Some(2),
            replicas: Some(2),
            last_ok_unix: Some(1_700_000_200.0),
            last_error: None,
            subscribed: true,
            subscription_error: None,
        };
        let page = render(&doc("main", s, Some(master())), 1_700_000_210.0);
        for want in [
            "<meta http-equiv=\"refresh\" content=\"2\">",
            "<dd class=\"master-addr\">10.0.0.2:6379</dd>",
            "<dd class=\"epoch\">2</dd>",
            "<dd class=\"sessions\">3</dd>",
            "<dd class=\"clients-held\">2</dd>",
            "data-state=\"routing\"",
            "10.0.0.1:6379 &rarr; 10.0.0.2:6379",
            "<td>switch_event</td><td>4</td><td>12.5 ms</td>",
            "data-kind=\"fence\"",
            "<span title=\"2023-11-14T22:16:40Z\">10s ago</span>",
            "(1m 49s ago)",
            "<span class=\"ok\">reachable</span>",
            "connection refused &lt;&amp;&gt;",
        ] {
            assert!(page.contains(want), "missing {want:?} in\n{page}");
        }
        // Newest first: the second switch precedes the fence, which precedes the first.
        let second = page.find("10.0.0.1:6379 &rarr; 10.0.0.2:6379").unwrap();
        let fence = page.find("data-kind=\"fence\"").unwrap();
        let first = page.find("- &rarr; 10.0.0.1:6379").unwrap();
        assert!(second < fence && fence < first);
        assert!(!page.contains("<script"), "no script at all");
        assert!(
            !page.contains("http://") && !page.contains("https://"),
            "no external assets"
        );
    }

    #[test]
    fn every_peer_value_is_escaped() {
        let evil = "<img src=x onerror=alert(1)>\"'&";
        let s = SentinelStatus {
            address: evil.into(),
            reachable: false,
            master: Some(evil.into()),
            config_epoch: None,
            flags: Some(evil.into()),
            other_sentinels: None,
            replicas: None,
            last_ok_unix: None,
            last_error: Some(evil.into()),
            subscribed: false,
            subscription_error: Some(evil.into()),
        };
        let mut m = master();
        m.addr = evil.into();
        m.announced = evil.into();
        let mut d = doc(evil, s, Some(m));
        d.routes[0].master_name = evil.into();
        d.routes[0].listen = evil.into();
        d.routes[0].last_node_error = Some(evil.into());
        d.routes[0].history[0].from = Some(evil.into());
        d.routes[0].history[0].to = Some(evil.into());
        d.routes[0].history[1].reason = Some(evil.into());
        let page = render(&d, 1_700_000_210.0);
        assert!(!page.contains("<img"), "{page}");
        assert!(!page.contains("alert(1)>"), "{page}");
        assert!(!page.contains("\"'&"), "{page}");
        let escaped = "&lt;img src=x onerror=alert(1)&gt;&quot;&#39;&amp;";
        // Route name (twice), master name, listen, addr, announced, node error, sentinel
        // address, its master, flags, error, history from, to, reason.
        assert!(page.matches(escaped).count() >= 14, "{page}");
    }

    #[test]
    fn a_route_without_master_and_a_draining_proxy_say_so() {
        let mut d = doc("main", SentinelStatus::default(), None);
        d.draining = true;
        d.routes[0].sentinel_majority = false;
        d.routes[0].history.clear();
        let page = render(&d, 0.0);
        for want in [
            "none verified",
            "data-state=\"holding\"",
            "id=\"draining\"",
            "(no majority)",
            "history-empty",
            "<span class=\"bad\">unreachable</span>",
        ] {
            assert!(page.contains(want), "missing {want:?} in\n{page}");
        }
    }
}
