//! Keeps `bench/run.sh` from rotting: with `RFP_BENCH_SMOKE=1` it runs the benchmark in
//! `--quick` mode (tiny request counts, 200 idle sessions, the TLS scenario included) against
//! this test build's binary and checks that a report came out. Off by default, so the suite stays
//! as fast as it was.

mod support;

use std::path::Path;
use std::process::Command;

#[test]
fn bench_quick_run_writes_a_report() {
    if std::env::var("RFP_BENCH_SMOKE").as_deref() != Ok("1") {
        support::skip("set RFP_BENCH_SMOKE=1 to run bench/run.sh --quick");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().unwrap();
    let status = Command::new(root.join("bench/run.sh"))
        .args(["--quick", "--idle", "200", "--out"])
        .arg(out.path())
        // The debug binary cargo built for this test: no release build (and no wait for the
        // target dir's lock) inside the test run.
        .env("RFP_BENCH_BIN", env!("CARGO_BIN_EXE_redis-failover-proxy"))
        .current_dir(root)
        .status()
        .expect("bench/run.sh starts");
    assert!(status.success(), "bench/run.sh --quick failed: {status}");
    let md = std::fs::read_to_string(out.path().join("latest.md")).unwrap();
    for expect in [
        "proxy / direct",
        "HAProxy / direct",
        "per session",
        "CPU per million",
        // The TLS scenario ran (with a binary without `[tls]`: direct and HAProxy, and
        // "proxy: not available (...)").
        "## TLS: mutual TLS to the master",
    ] {
        assert!(
            md.contains(expect),
            "{expect:?} missing from the report:\n{md}"
        );
    }
    let csv = std::fs::read_to_string(out.path().join("latest.csv")).unwrap();
    assert!(csv.lines().count() > 10, "CSV too short:\n{csv}");
}
