//! The command-line contract: exit codes and one-line messages for bad configuration, and the
//! `check` subcommand against real sentinels.

mod support;

use support::*;

fn assert_config_error(args: &[&str], file: Option<&str>, expect: &[&str]) {
    let dir = tempdir();
    if let Some(text) = file {
        std::fs::write(dir.path().join("bad.toml"), text).unwrap();
    }
    let (code, _out, err) = run_bin(dir.path(), args);
    assert_eq!(code, 64, "args {args:?}: stderr {err}");
    assert!(!err.contains("panicked"), "{err}");
    for e in expect {
        assert!(err.contains(e), "expected {e:?} in {err:?}");
    }
    if file.is_some() {
        assert_eq!(err.trim().lines().count(), 1, "message not one line: {err}");
    }
}

#[test]
fn bad_configuration_exits_64_naming_file_key_and_expectation() {
    assert_config_error(
        &["--config", "bad.toml"],
        Some("[sentinel]\naddresses = [\"127.0.0.1:1\"]\npoll = \"1s\"\n"),
        &["bad.toml", "line 3", "poll"],
    );
    assert_config_error(
        &["--config", "bad.toml"],
        Some("[sentinel]\naddresses = [\"127.0.0.1:1\"]\ntimeout = \"soon\"\n"),
        &["bad.toml", "line 3", "timeout"],
    );
    assert_config_error(
        &["--config", "bad.toml"],
        Some("[sentinel]\naddresses = [\"no-port\"]\n"),
        &["bad.toml", "sentinel.addresses", "HOST:PORT"],
    );
    assert_config_error(
        &["--config", "bad.toml"],
        Some("[[route]]\nmaster = \"redis-ha\"\n"),
        &["bad.toml", "sentinel.addresses", "at least one sentinel"],
    );
    assert_config_error(
        &["--config", "bad.toml"],
        Some("[sentinel]\naddresses = [\"a:1\"]\n[[route]]\nlisten = \"localhost\"\n"),
        &["bad.toml", "line 4", "listen"],
    );
    assert_config_error(
        &["--config", "bad.toml"],
        Some("[sentinel\n"),
        &["bad.toml", "line 1"],
    );
    assert_config_error(
        &["--config", "bad.toml"],
        Some("[sentinel]\naddresses = [\"a:1\"]\n[[route]]\nmax_connections = 0\n"),
        &["route[0].max_connections", "expected 1 to"],
    );
    assert_config_error(
        &["--config", "missing.toml"],
        None,
        &["missing.toml", "cannot read"],
    );
    assert_config_error(&["--listen", "not-an-address"], None, &["--listen"]);
    assert_config_error(
        &["--sentinel", "127.0.0.1:1", "--bogus"],
        None,
        &["--bogus"],
    );
    assert_config_error(&["check", "--sentinel", "nope"], None, &["HOST:PORT"]);
}

/// What an attacker or a slip of the hand feeds the config loader: each is a clear one-line
/// error and exit 64, never a panic, a hang or a memory blow-up.
#[test]
fn hostile_configuration_is_refused_cleanly() {
    assert_config_error(
        &["--config", "bad.toml"],
        Some("[sentinel]\naddresses = [\"127.0.0.1:1\"]\n[[route]]\nmax_connections = 9223372036854775807\n"),
        &["route[0].max_connections", "expected 1 to 1000000"],
    );
    assert_config_error(
        &["--config", "bad.toml"],
        Some("[sentinel]\naddresses = [\"127.0.0.1:1\"]\npoll_interval = \"1ns\"\n"),
        &["sentinel.poll_interval", "at least 100ms"],
    );
    // One sentinel under three spellings would be three votes.
    for (a, b) in [("127.0.0.1", "localhost"), ("127.0.0.1", "127.1")] {
        let text = format!("[sentinel]\naddresses = [\"{a}:26355\", \"{b}:26355\"]\n");
        assert_config_error(
            &["--config", "bad.toml"],
            Some(&text),
            &["the same sentinel", "127.0.0.1:26355"],
        );
    }
    // Not regular files: a FIFO would block the reader forever, /dev/zero never ends.
    assert_config_error(
        &["--config", "/dev/zero"],
        None,
        &["/dev/zero", "not a regular file"],
    );
    let dir = tempdir();
    let fifo = dir.path().join("fifo.toml");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if made.is_ok_and(|s| s.success()) {
        let f = fifo.to_string_lossy().into_owned();
        let start = std::time::Instant::now();
        assert_config_error(&["--config", &f], None, &["not a regular file"]);
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    } else {
        skip_part("the FIFO case: mkfifo failed");
    }
    let big = dir.path().join("big.toml");
    std::fs::write(&big, vec![b'#'; 2 * 1024 * 1024]).unwrap();
    assert_config_error(
        &["--config", &big.to_string_lossy()],
        None,
        &["larger than 1048576 bytes"],
    );
    assert_config_error(
        &["--config", "bad.toml"],
        Some("[sentinel]\naddresses = [\"a:1\"]\n[tls]\ncert = \"c.pem\"\n"),
        &["tls.cert", "tls.ca"],
    );
    assert_config_error(
        &["--config", "bad.toml"],
        Some("[sentinel]\naddresses = [\"a:1\"]\n[tls]\nca = \"/nonexistent/ca.pem\"\n"),
        &["tls", "/nonexistent/ca.pem"],
    );
}

#[test]
fn the_admin_server_can_be_switched_off() {
    let dir = tempdir();
    let (listen, admin) = (free_port(), free_port());
    let mut child = std::process::Command::new(BIN)
        .args(["--sentinel", "127.0.0.1:1", "--no-admin"])
        .args(["--listen", &format!("127.0.0.1:{listen}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .current_dir(dir.path())
        .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
        .spawn()
        .expect("spawn proxy");
    let log = || std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    wait_until(
        std::time::Duration::from_secs(10),
        "route listening",
        || log().contains("route listening"),
    );
    assert!(log().contains("admin server switched off"), "{}", log());
    assert!(http_get(admin, "/healthz").is_none(), "admin answered");
    assert!(std::net::TcpStream::connect(("127.0.0.1", listen)).is_ok());
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn the_shipped_proxy_toml_is_valid() {
    let dir = tempdir();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy.toml");
    let text = std::fs::read_to_string(&shipped).expect("proxy.toml at the top level");
    assert!(text.contains("[[route]]"), "proxy.toml defines no route");
    std::fs::write(dir.path().join("proxy.toml"), &text).unwrap();
    // Validation only: point the sentinels at a closed port so `check` fails with 69, not 64.
    let (code, out, err) = run_bin(dir.path(), &["check", "--sentinel", "127.0.0.1:1"]);
    assert_eq!(code, 69, "stdout {out} stderr {err}");
    assert!(out.contains("sentinels reachable: 0/1"), "{out}");
    assert!(out.contains("master: NONE verified"), "{out}");
}

#[test]
fn check_prints_the_topology_and_exits_zero_with_a_verified_master() {
    if !require("redis-sentinel") {
        return;
    }
    let t = Topology::start(5000);
    let dir = tempdir();
    let mut args = vec!["check".to_string()];
    for p in t.sentinel_ports() {
        args.push("--sentinel".into());
        args.push(format!("127.0.0.1:{p}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = run_bin(dir.path(), &args);
    assert_eq!(code, 0, "stdout {out} stderr {err}");
    let master = format!("127.0.0.1:{}", t.nodes[0].port);
    assert!(
        out.contains(&format!("master: {master} ({master}) verified by ROLE")),
        "{out}"
    );
    assert!(out.contains("sentinels reachable: 3/3"), "{out}");
    assert!(out.contains("replica 127.0.0.1:"), "{out}");
    assert!(out.contains("other sentinel 127.0.0.1:"), "{out}");
    assert!(out.contains("quorum 2"), "{out}");

    let (code, out, _) = run_bin(
        dir.path(),
        &["check", "--sentinel", "127.0.0.1:1", "--master", "redis-ha"],
    );
    assert_eq!(code, 69, "{out}");
    let first = format!("127.0.0.1:{}", t.sentinels[0].port);
    let (code, out, _) = run_bin(
        dir.path(),
        &["check", "--sentinel", &first, "--master", "nope"],
    );
    assert_eq!(code, 69, "{out}");
    assert!(out.contains("unknown_master"), "{out}");
}

#[test]
fn check_offline_validates_without_contacting_anything() {
    let dir = tempdir();
    // Host names that resolve nowhere: offline, nothing is looked up.
    std::fs::write(
        dir.path().join("p.toml"),
        "[admin]\nlisten = \"127.0.0.1:8400\"\n[sentinel]\naddresses = [\"redis1.invalid:16355\", \"redis2.invalid:26355\", \"10.255.255.1:36355\"]\n\
         [[route]]\nmaster = \"redis-ha\"\nlisten = \"127.0.0.1:6380\"\n",
    )
    .unwrap();
    let (code, out, err) = run_bin(dir.path(), &["check", "--offline", "--config", "p.toml"]);
    assert_eq!(code, 0, "stdout {out} stderr {err}");
    for want in [
        "configuration OK: p.toml (offline",
        "admin: 127.0.0.1:8400",
        "route redis-ha: listen 127.0.0.1:6380, sentinel master name \"redis-ha\"",
        "sentinels (3, majority 2): redis1.invalid:16355, redis2.invalid:26355, 10.255.255.1:36355",
    ] {
        assert!(out.contains(want), "{want:?} in {out}");
    }
    // Errors are the proxy's: one line, exit 64. Two IP literals of one sentinel are found
    // without a lookup.
    std::fs::write(
        dir.path().join("bad.toml"),
        "[sentinel]\naddresses = [\"[::1]:26355\", \"[0::1]:26355\"]\n",
    )
    .unwrap();
    assert_config_error(
        &["check", "--offline", "--config", "bad.toml"],
        None,
        &["bad.toml"],
    );
    assert_config_error(
        &["check", "--offline", "--config", "bad.toml"],
        Some("[sentinel]\naddresses = [\"127.0.0.1:1\"]\ntimeout = \"soon\"\n"),
        &["bad.toml", "line 3", "timeout"],
    );
    assert_config_error(
        &[
            "check",
            "--offline",
            "--sentinel",
            "[::1]:1",
            "--sentinel",
            "[0:0::1]:1",
        ],
        None,
        &["the same sentinel"],
    );
    // The shipped file passes as it is.
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy.toml");
    let (code, out, err) = run_bin(
        dir.path(),
        &["check", "--offline", "--config", &shipped.to_string_lossy()],
    );
    assert_eq!(code, 0, "stdout {out} stderr {err}");
    assert!(out.contains("admin: 127.0.0.1:8379"), "{out}");
}

/// Runs the proxy (no reachable sentinel) with `args` and `env`, stderr into `log` in `dir`,
/// until it logged that no sentinel is reachable; returns the log.
fn run_until_blind(dir: &std::path::Path, args: &[&str], env: &[(&str, String)]) -> String {
    let log_path = dir.join("log");
    let (listen, admin) = (free_port(), free_port());
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["--sentinel", "127.0.0.1:1"])
        .args(["--listen", &format!("127.0.0.1:{listen}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(args)
        .current_dir(dir)
        .env_remove("JOURNAL_STREAM")
        .env_remove("REDIS_FAILOVER_PROXY_LOG_FORMAT")
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log_path).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn proxy");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    wait_until(
        std::time::Duration::from_secs(10),
        "route listening and no sentinel reachable",
        || log().contains("route listening") && log().contains("no sentinel reachable"),
    );
    let _ = child.kill();
    let _ = child.wait();
    log()
}

#[test]
fn json_log_lines_are_json() {
    let dir = tempdir();
    let log = run_until_blind(dir.path(), &["--log-format", "json"], &[]);
    let mut levels = std::collections::BTreeSet::new();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["timestamp"].is_string(), "{line}");
        assert!(v["fields"]["message"].is_string(), "{line}");
        levels.insert(v["level"].as_str().unwrap_or("").to_string());
    }
    assert!(
        levels.contains("INFO") && levels.contains("ERROR"),
        "{levels:?}\n{log}"
    );
    let listening = log.lines().find(|l| l.contains("route listening")).unwrap();
    let v: serde_json::Value = serde_json::from_str(listening).unwrap();
    assert_eq!(v["fields"]["route"], "redis-ha", "{listening}");
    // The environment variable does the same; a bad value is a usage error.
    let log = run_until_blind(
        dir.path(),
        &[],
        &[("REDIS_FAILOVER_PROXY_LOG_FORMAT", "json".into())],
    );
    assert!(log.lines().all(|l| l.starts_with('{')), "{log}");
    let (code, _, err) = run_bin(dir.path(), &["--log-format", "xml", "--sentinel", "a:1"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("xml") && err.contains("json"), "{err}");
}

#[test]
fn under_journald_lines_carry_their_priority() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempdir();
    // The child's stderr is this file; JOURNAL_STREAM names it as systemd would name the
    // journal's stream.
    let log_path = dir.path().join("log");
    std::fs::File::create(&log_path).unwrap();
    let meta = std::fs::metadata(&log_path).unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let log = run_until_blind(dir.path(), &[], &[("JOURNAL_STREAM", stream.clone())]);
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let p = line.get(..3).unwrap_or("");
        assert!(
            ["<3>", "<4>", "<6>", "<7>"].contains(&p),
            "no priority prefix: {line}"
        );
        // No timestamp: the journal records its own.
        assert!(!line[3..].trim_start().starts_with("20"), "{line}");
    }
    let with = |needle: &str| {
        log.lines()
            .find(|l| l.contains(needle))
            .unwrap()
            .to_string()
    };
    assert!(with("route listening").starts_with("<6>"), "{log}");
    assert!(with("no sentinel reachable").starts_with("<3>"), "{log}");
    assert!(with("sentinel query failed").starts_with("<4>"), "{log}");
    // JSON lines too, the prefix before the object (journald strips it).
    let log = run_until_blind(
        dir.path(),
        &["--log-format", "json"],
        &[("JOURNAL_STREAM", stream.clone())],
    );
    let line = with_in(&log, "no sentinel reachable");
    assert!(line.starts_with("<3>{"), "{line}");
    serde_json::from_str::<serde_json::Value>(&line[3..]).expect("JSON after the prefix");
    // A JOURNAL_STREAM that names another file (inherited, stderr redirected): plain lines.
    let log = run_until_blind(dir.path(), &[], &[("JOURNAL_STREAM", "1:1".to_string())]);
    assert!(
        with_in(&log, "route listening")
            .trim_start()
            .starts_with("20"),
        "{log}"
    );
    // A fatal error outside the log lines is an error too.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = busy.local_addr().map(|a| (busy, a)).unwrap();
    let err_path = dir.path().join("err");
    let err_file = std::fs::File::create(&err_path).unwrap();
    let m = std::fs::metadata(&err_path).unwrap();
    let status = std::process::Command::new(BIN)
        .args(["--sentinel", "127.0.0.1:1", "--no-admin"])
        .args(["--listen", &busy.1.to_string()])
        .env("JOURNAL_STREAM", format!("{}:{}", m.dev(), m.ino()))
        .current_dir(dir.path())
        .stderr(err_file)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));
    let err = std::fs::read_to_string(&err_path).unwrap();
    assert!(
        err.lines()
            .any(|l| l.starts_with("<3>redis-failover-proxy: cannot listen")),
        "{err}"
    );
}

fn with_in(log: &str, needle: &str) -> String {
    log.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in {log}"))
        .to_string()
}

/// An admin server on a non-loopback address (0.0.0.0) serves, and the startup log warns
/// that it is reachable from other hosts, naming the address; a loopback one does not warn.
#[test]
fn a_non_loopback_admin_address_logs_a_warning() {
    let dir = tempdir();
    let (listen, admin) = (free_port(), free_port());
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["--sentinel", "127.0.0.1:1"])
        .args(["--listen", &format!("127.0.0.1:{listen}")])
        .args(["--admin", &format!("0.0.0.0:{admin}")])
        .env_remove("REDIS_FAILOVER_PROXY_LOG_FORMAT");
    let proxy = Proxy::spawn(
        cmd,
        dir,
        std::net::Ipv4Addr::LOCALHOST.into(),
        listen,
        admin,
    );
    let warning = format!(
        "the admin server listens on 0.0.0.0:{admin}, reachable from other hosts; \
         /status shows the topology to anyone who can connect"
    );
    wait_until(
        std::time::Duration::from_secs(10),
        "the warning is logged",
        || proxy.log().contains(&warning),
    );
    let log = proxy.log();
    let line = log
        .lines()
        .find(|l| l.contains(&warning))
        .unwrap_or_default();
    assert!(line.contains("WARN"), "{line}");
    assert_eq!(
        log.matches("reachable from other hosts").count(),
        1,
        "{log}"
    );
    assert_eq!(proxy.http("/healthz").map(|r| r.0), Some(200));

    let quiet = run_until_blind(tempdir().path(), &[], &[]);
    assert!(!quiet.contains("reachable from other hosts"), "{quiet}");
}
