//! Network namespaces for fault tests. A [`Net`] is a set of isolated hosts (one network
//! namespace each) joined by a bridge that lives in a namespace of its own, plus one veth from
//! the test's namespace to the bridge, so the test reaches every host directly and is never cut
//! off. Addresses: one /24 per `Net` out of 198.18.0.0/15 (RFC 2544, benchmarking), hosts
//! `.1, .2, ...` in the order given, the test `.254`. Faults are nftables drop rules inside the
//! hosts' namespaces: a blackhole (no RST, no ICMP). Dropping a `Net` kills every process left
//! in its namespaces and deletes them and the test's veth, also when the test panicked; what a
//! killed test run left behind is removed by the next test process that builds a `Net`.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::Host;

/// How many /24s 198.18.0.0/15 holds.
const SUBNETS: u32 = 512;

pub struct Net {
    /// `rfp<N>`: prefix of every namespace name and the test's veth.
    tag: String,
    hosts: Vec<(String, Host)>,
}

impl Net {
    /// Hosts named `names` (short: they become interface names), or `None` after printing
    /// `SKIPPED: <why>` when this machine cannot build them.
    pub fn new(names: &[&str]) -> Option<Net> {
        if let Err(why) = capable() {
            super::skip(&why.to_string());
            return None;
        }
        if !super::require("redis-sentinel") {
            return None;
        }
        let (idx, tag) = match claim() {
            Ok(c) => c,
            Err(why) => {
                super::skip(&format!("cannot create a network namespace: {why}"));
                return None;
            }
        };
        let mut net = Net {
            tag,
            hosts: Vec::new(),
        };
        // The third and second octets of this Net's /24 inside 198.18.0.0/15.
        let prefix = [198, 18 + (idx >> 8) as u8, (idx & 0xff) as u8];
        let ip = |last: u8| Ipv4Addr::new(prefix[0], prefix[1], prefix[2], last);
        if let Err(why) = net.build(names, &ip) {
            super::skip(&format!("cannot build the test network: {why}"));
            return None; // `net` is dropped: whatever was built is deleted.
        }
        Some(net)
    }

    fn build(&mut self, names: &[&str], ip: &dyn Fn(u8) -> Ipv4Addr) -> Result<(), String> {
        let sw = self.switch();
        let root = self.tag.clone();
        run("ip", &["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        run("ip", &["-n", &sw, "link", "set", "br0", "up"])?;
        run(
            "ip",
            &[
                "link", "add", &root, "type", "veth", "peer", "name", "root", "netns", &sw,
            ],
        )?;
        run(
            "ip",
            &["-n", &sw, "link", "set", "root", "master", "br0", "up"],
        )?;
        run(
            "ip",
            &["addr", "add", &format!("{}/24", ip(254)), "dev", &root],
        )?;
        run("ip", &["link", "set", &root, "up"])?;
        for (i, name) in names.iter().enumerate() {
            assert!(
                name.len() <= 12 && name.chars().all(|c| c.is_ascii_alphanumeric()),
                "host name {name:?}: up to 12 letters or digits"
            );
            let ns = format!("{}-{name}", self.tag);
            run("ip", &["netns", "add", &ns])?;
            let host = Host {
                netns: Some(ns.clone()),
                ip: IpAddr::V4(ip(i as u8 + 1)),
            };
            self.hosts.push((name.to_string(), host.clone()));
            let port = format!("h-{name}");
            run(
                "ip",
                &[
                    "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                    "netns", &ns,
                ],
            )?;
            run(
                "ip",
                &["-n", &sw, "link", "set", &port, "master", "br0", "up"],
            )?;
            run(
                "ip",
                &[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{}/24", host.ip),
                    "dev",
                    "eth0",
                ],
            )?;
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
            run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
            nft(
                &ns,
                "table inet rfp {\n\
                 chain input { type filter hook input priority 0; policy accept; }\n\
                 chain output { type filter hook output priority 0; policy accept; }\n}\n",
            )?;
        }
        Ok(())
    }

    fn switch(&self) -> String {
        format!("{}-sw", self.tag)
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, h)| h)
            .unwrap_or_else(|| panic!("no host {name:?} in this Net"))
    }

    pub fn ip(&self, name: &str) -> IpAddr {
        self.host(name).ip
    }

    fn ns(&self, name: &str) -> String {
        self.host(name)
            .netns
            .clone()
            .expect("a Net host has a namespace")
    }

    /// Cuts every host of a group off from every host of the other groups, both directions
    /// (hosts in no group, and the test itself, keep reaching everyone). Adds to earlier faults.
    pub fn partition(&self, groups: &[&[&str]]) {
        for (gi, group) in groups.iter().enumerate() {
            let peers: Vec<String> = groups
                .iter()
                .enumerate()
                .filter(|(gj, _)| *gj != gi)
                .flat_map(|(_, g)| g.iter().map(|h| self.ip(h).to_string()))
                .collect();
            if peers.is_empty() {
                continue;
            }
            let set = peers.join(", ");
            for h in group.iter() {
                nft(
                    &self.ns(h),
                    &format!(
                        "add rule inet rfp input ip saddr {{ {set} }} drop\n\
                         add rule inet rfp output ip daddr {{ {set} }} drop\n"
                    ),
                )
                .expect("nft partition rules");
            }
        }
    }

    /// Drops, on `host`, the packets of the one TCP connection between its `local_port` and
    /// `remote`, both directions; the connection is neither closed nor reset.
    pub fn blackhole_flow(&self, host: &str, local_port: u16, remote: SocketAddr) {
        let (rip, rport) = (remote.ip(), remote.port());
        nft(
            &self.ns(host),
            &format!(
                "add rule inet rfp output ip daddr {rip} tcp sport {local_port} tcp dport {rport} drop\n\
                 add rule inet rfp input ip saddr {rip} tcp sport {rport} tcp dport {local_port} drop\n"
            ),
        )
        .expect("nft flow rules");
    }

    /// Removes every fault.
    pub fn heal(&self) {
        for (_, h) in &self.hosts {
            let ns = h.netns.as_deref().expect("namespace");
            nft(
                ns,
                "flush chain inet rfp input\nflush chain inet rfp output\n",
            )
            .expect("nft flush");
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        remove(&self.tag);
    }
}

/// Root, `ip` and `nft`, or why not.
fn capable() -> Result<(), String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| e.to_string())?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Err("network namespace tests need root".into());
    }
    for (bin, pkg) in [("ip", "iproute2"), ("nft", "nftables")] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {bin}"))
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Err(format!(
                "{bin} is not installed (Debian package {pkg}; scripts/test.sh installs it)"
            ));
        }
    }
    Ok(())
}

/// Claims a /24 by creating the switch namespace `rfp<N>-sw` (creation fails if another Net,
/// in this process or another, has it) and recording our pid as its owner; returns N and the
/// tag. First, once per process, removes what dead owners left (a killed test run).
fn claim() -> Result<(u32, String), String> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static SWEEP: std::sync::Once = std::sync::Once::new();
    SWEEP.call_once(|| {
        for tag in namespaces("rfp")
            .iter()
            .filter_map(|n| n.strip_suffix("-sw"))
        {
            let owner = std::fs::read_to_string(owner_file(tag)).unwrap_or_default();
            let pid = owner.trim().parse::<u32>();
            if pid.is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
                remove(tag);
            }
        }
    });
    let start = std::process::id().wrapping_mul(7);
    for _ in 0..SUBNETS {
        let idx = start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % SUBNETS;
        let tag = format!("rfp{idx}");
        match run("ip", &["netns", "add", &format!("{tag}-sw")]) {
            Ok(()) => {
                let _ = std::fs::write(owner_file(&tag), std::process::id().to_string());
                return Ok((idx, tag));
            }
            Err(e) if e.contains("exists") => continue,
            Err(e) => return Err(e),
        }
    }
    Err("every test subnet is taken (stale rfp* namespaces? see `ip netns list`)".into())
}

/// Names of the network namespaces starting with `prefix`.
fn namespaces(prefix: &str) -> Vec<String> {
    let list = Command::new("ip").args(["netns", "list"]).output();
    let list = list.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    list.unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

fn owner_file(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{tag}-net.pid"))
}

/// Kills every process in the namespaces `<tag>-*`, deletes them and the veth `<tag>`.
fn remove(tag: &str) {
    let namespaces = namespaces(&format!("{tag}-"));
    for ns in &namespaces {
        // Processes outlive their namespace's name: kill them first.
        if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
    }
    // Deleting the switch namespace would also take the veth, but asynchronously.
    let _ = run("ip", &["link", "del", tag]);
    for ns in &namespaces {
        let _ = run("ip", &["netns", "del", ns]);
    }
    let _ = std::fs::remove_file(owner_file(tag));
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs an nft script inside namespace `ns`.
fn nft(ns: &str, script: &str) -> Result<(), String> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("nft: {e}"))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(script.as_bytes())
        .map_err(|e| format!("nft: {e}"))?;
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft in {ns}: {}: {script}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
