//! The HTML status page at the admin server's `/`, loaded in headless Chromium (Debian's
//! `chromium`) against a real topology and proxy: it shows the sentinels' master, and after
//! `SENTINEL FAILOVER` the new one with the switch in its history. A screenshot is kept at
//! `target/test-artifacts/status-page.png`. Also: `/status` carries the same history.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// Chromium may take long to start on a busy machine; this bounds one run.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs headless Chromium on `url` with `extra` args and a fresh profile; returns its stdout.
/// Panics if it does not finish within [`CHROMIUM_TIMEOUT`] or fails.
fn chromium(url: &str, extra: &[&str]) -> String {
    let profile = tempdir();
    let out_path = profile.path().join("stdout");
    let err_path = profile.path().join("stderr");
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!(
            "--user-data-dir={}",
            profile.path().join("profile").display()
        ))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("spawn chromium");
    let start = Instant::now();
    let status = exit_within(&mut child, CHROMIUM_TIMEOUT).unwrap_or_else(|| {
        panic!(
            "chromium did not finish within {CHROMIUM_TIMEOUT:?}; stderr:\n{}",
            std::fs::read_to_string(&err_path).unwrap_or_default()
        )
    });
    assert!(
        status.success(),
        "chromium failed ({status}); stderr:\n{}",
        std::fs::read_to_string(&err_path).unwrap_or_default()
    );
    eprintln!("chromium {extra:?} took {:?}", start.elapsed());
    std::fs::read_to_string(&out_path).expect("chromium stdout")
}

/// The DOM of the status page as Chromium renders it.
fn dump_dom(proxy: &Proxy) -> String {
    chromium(
        &format!("http://127.0.0.1:{}/", proxy.admin),
        &["--dump-dom"],
    )
}

/// The headers and body of GET `path` on the admin server.
fn get_with_headers(port: u16, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect admin");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").expect("a response");
    (head.to_ascii_lowercase(), body.to_string())
}

fn artifacts_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is <target>/tmp.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

fn master_shown(dom: &str, port: u16) -> bool {
    dom.contains(&format!("<dd class=\"master-addr\">127.0.0.1:{port}</dd>"))
}

#[test]
fn the_status_page_shows_the_master_and_follows_a_failover() {
    if !require("chromium") {
        return;
    }
    let Some((t, proxy)) = ready_lab(|| Topology::start(5000), ProxyOpts::default()) else {
        return;
    };
    let old = t.master_port().expect("a master");

    let (head, body) = get_with_headers(proxy.admin, "/");
    assert!(head.starts_with("http/1.0 200"), "{head}");
    assert!(
        head.contains("content-type: text/html; charset=utf-8"),
        "{head}"
    );
    assert!(
        head.contains("content-security-policy: default-src 'none'; style-src 'self'"),
        "{head}"
    );
    assert!(body.contains("http-equiv=\"refresh\""), "{body}");
    let (css_head, css) = get_with_headers(proxy.admin, "/status.css");
    assert!(css_head.contains("content-type: text/css"), "{css_head}");
    assert!(css.contains("section.route"), "{css}");

    let dom = dump_dom(&proxy);
    assert!(
        master_shown(&dom, old),
        "the page should show the sentinels' master 127.0.0.1:{old}:\n{dom}"
    );
    assert!(dom.contains("data-state=\"routing\""), "{dom}");

    // A few sessions, fenced by the failover.
    let mut clients: Vec<Client> = (0..3).map(|_| Client::connect(proxy.port)).collect();
    for c in &mut clients {
        assert_eq!(c.cmd(&["PING"]).unwrap(), "+PONG");
    }
    let new = t.failover();
    proxy.wait_routes_to(&format!("127.0.0.1:{new}"));
    // The fence's duration is known once its sessions closed.
    wait_until(
        Duration::from_secs(20),
        "/status history has the fence with its duration",
        || {
            proxy.status()["routes"][0]["history"]
                .as_array()
                .is_some_and(|h| {
                    h.iter()
                        .any(|e| e["kind"] == "fence" && e["duration_ms"].is_f64())
                })
        },
    );
    let status = proxy.status();
    let history = status["routes"][0]["history"].as_array().unwrap().clone();
    let switch = &history[0];
    assert_eq!(switch["kind"], "switch", "{history:?}");
    assert_eq!(switch["from"], format!("127.0.0.1:{old}"), "{history:?}");
    assert_eq!(switch["to"], format!("127.0.0.1:{new}"), "{history:?}");
    assert_eq!(switch["epoch"], 2, "{history:?}");
    let fence = history
        .iter()
        .find(|e| e["kind"] == "fence")
        .expect("a fence");
    assert_eq!(fence["from"], format!("127.0.0.1:{old}"), "{history:?}");
    assert_eq!(fence["epoch"], 1, "{history:?}");
    assert!(fence["reason"].is_string(), "{history:?}");
    assert_eq!(fence["sessions"], 3, "{history:?}");
    assert_eq!(history.last().unwrap()["kind"], "switch");
    assert!(history.last().unwrap()["from"].is_null(), "{history:?}");
    for c in &mut clients {
        assert!(c.closed_within(Duration::from_secs(5)), "session fenced");
    }
    // New sessions to show on the page.
    let mut clients: Vec<Client> = (0..2).map(|_| Client::connect(proxy.port)).collect();
    for c in &mut clients {
        assert_eq!(c.cmd(&["PING"]).unwrap(), "+PONG");
    }

    let dom = dump_dom(&proxy);
    assert!(
        master_shown(&dom, new),
        "the page should show the new master 127.0.0.1:{new}:\n{dom}"
    );
    assert!(
        dom.contains(&format!("127.0.0.1:{old} → 127.0.0.1:{new}")),
        "the switch should be in the page's history:\n{dom}"
    );
    assert!(dom.contains("data-kind=\"fence\""), "{dom}");

    let shot = artifacts_dir().join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    chromium(
        &format!("http://127.0.0.1:{}/", proxy.admin),
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1200,800",
            "--hide-scrollbars",
        ],
    );
    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    eprintln!("screenshot: {}", shot.display());
}
