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
