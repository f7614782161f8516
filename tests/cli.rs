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
        &["route[0].max_connections", "positive"],
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
