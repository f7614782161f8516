//! Sets `RFP_BUILD_REVISION` for `redis_failover_proxy_build_info{revision}`: the variable
//! itself if set at build time (packagers building from a tarball), else the git commit
//! (`git rev-parse --short HEAD`), else `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}

/// Only characters a label value and a log line can carry as they are.
fn clean(rev: &str) -> String {
    let kept: String = rev
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'))
        .take(64)
        .collect();
    if kept.is_empty() {
        "unknown".to_string()
    } else {
        kept
    }
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=RFP_BUILD_REVISION");
    let revision = match std::env::var("RFP_BUILD_REVISION") {
        Ok(v) if !v.trim().is_empty() => clean(&v),
        _ => {
            // Rebuild when HEAD moves: HEAD itself (a checkout) and the branch it points at (a
            // commit). In a worktree the branch refs live in the common directory.
            // (A missing file would make cargo run this on every build: only existing ones.)
            let mut watch = Vec::new();
            if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
                watch.push(format!("{dir}/HEAD"));
            }
            if let (Some(common), Some(head)) = (
                git(&["rev-parse", "--git-common-dir"]),
                git(&["symbolic-ref", "-q", "HEAD"]),
            ) {
                watch.push(format!("{common}/{head}"));
                watch.push(format!("{common}/packed-refs"));
            }
            for path in watch.iter().filter(|p| std::path::Path::new(p).exists()) {
                println!("cargo:rerun-if-changed={path}");
            }
            git(&["rev-parse", "--short", "HEAD"])
                .map_or_else(|| "unknown".to_string(), |r| clean(&r))
        }
    };
    println!("cargo:rustc-env=RFP_BUILD_REVISION={revision}");
}
