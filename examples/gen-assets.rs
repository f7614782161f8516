//! Writes the man page and the shell completions of `redis-failover-proxy`, generated from
//! its clap definition, for the Debian package (scripts/build-deb.sh runs this first):
//!
//!     cargo run --example gen-assets [-- OUT_DIR]      # default OUT_DIR: target/assets
//!
//! Files: `redis-failover-proxy.1` (plus `redis-failover-proxy-SUBCOMMAND.1` per subcommand),
//! `redis-failover-proxy.bash`, `_redis-failover-proxy` (zsh), `redis-failover-proxy.fish`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;
use redis_failover_proxy::config::Cli;

const BIN: &str = "redis-failover-proxy";

fn main() -> ExitCode {
    let out = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/assets"));
    match generate(&out) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gen-assets: {}: {e}", out.display());
            ExitCode::FAILURE
        }
    }
}

fn generate(out: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out)?;
    let mut files = Vec::new();
    let mut cmd = Cli::command();
    cmd.build();
    // The page of the binary itself, then one per subcommand (`check`, ...), as git does.
    files.push(man_page(&cmd, BIN, out)?);
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("{BIN}-{}", sub.get_name());
        let sub = sub
            .clone()
            .display_name(name.clone())
            .version(env!("CARGO_PKG_VERSION"));
        files.push(man_page(&sub, &name, out)?);
    }
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        files.push(clap_complete::generate_to(shell, &mut cmd, BIN, out)?);
    }
    Ok(files)
}

fn man_page(cmd: &clap::Command, name: &str, out: &std::path::Path) -> std::io::Result<PathBuf> {
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
    let path = out.join(format!("{name}.1"));
    std::fs::write(&path, page)?;
    Ok(path)
}
