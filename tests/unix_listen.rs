//! A route listening on a Unix socket (`listen = "unix:/path"`, `listen_mode`), against real
//! redis-server / redis-sentinel processes and the proxy binary: clients reach the master,
//! the mode is applied, a failover fences the Unix-socket session too, a stale socket file is
//! replaced, anything else at the path refuses the start, and a clean exit removes the file.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// A proxy whose one route listens on `sock` (with `mode_line`, e.g. `listen_mode = "0600"`).
fn start_unix_proxy(sentinel_ports: &[u16], sock: &Path, mode_line: &str) -> Proxy {
    let (dir, cmd, admin) = unix_proxy_command(sentinel_ports, sock, mode_line);
    Proxy::spawn(cmd, dir, IpAddr::V4(Ipv4Addr::LOCALHOST), 0, admin)
}

fn unix_proxy_command(
    sentinel_ports: &[u16],
    sock: &Path,
    mode_line: &str,
) -> (tempfile::TempDir, Command, u16) {
    let dir = tempdir();
    let admin = free_port();
    let sentinels: Vec<String> = sentinel_ports
        .iter()
        .map(|p| format!("\"127.0.0.1:{p}\""))
        .collect();
    let conf = dir.path().join("proxy.toml");
    std::fs::write(
        &conf,
        format!(
            "shutdown_grace = \"5s\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
             [sentinel]\naddresses = [{}]\npoll_interval = \"250ms\"\ntimeout = \"500ms\"\n\
             [[route]]\nmaster = \"{MASTER_NAME}\"\nlisten = \"unix:{}\"\n{mode_line}\nhold_timeout = \"10s\"\n",
            sentinels.join(", "),
            sock.display()
        ),
    )
    .expect("proxy.toml");
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(&conf);
    (dir, cmd, admin)
}

/// A RESP client over a Unix socket.
struct UnixClient {
    r: BufReader<UnixStream>,
}

impl UnixClient {
    fn connect(path: &Path) -> UnixClient {
        let s = UnixStream::connect(path).expect("connect to the Unix socket");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        UnixClient {
            r: BufReader::new(s),
        }
    }

    /// Sends a command; returns the reply's first line, or a bulk string's contents.
    fn cmd(&mut self, args: &[&str]) -> std::io::Result<String> {
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.r.get_mut().write_all(req.as_bytes())?;
        let mut line = String::new();
        if self.r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end().to_string();
        if let Some(len) = line.strip_prefix('$') {
            let len: i64 = len.parse().unwrap_or(-1);
            if len < 0 {
                return Ok("(nil)".into());
            }
            let mut body = vec![0u8; len as usize + 2];
            self.r.read_exact(&mut body)?;
            body.truncate(len as usize);
            return Ok(String::from_utf8_lossy(&body).into_owned());
        }
        Ok(line)
    }

    /// Whether the proxy closed the connection (EOF or reset) within `timeout`.
    fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut b = [0u8; 1024];
        while Instant::now() < deadline {
            match self.r.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(_) => return true,
            }
        }
        false
    }
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("socket file")
        .permissions()
        .mode()
        & 0o7777
}

fn sock_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("redis.sock")
}

#[test]
fn a_unix_socket_client_reaches_the_master_and_is_fenced_on_failover() {
    if !require("redis-sentinel") {
        return;
    }
    let t = Topology::start(5000);
    let sockdir = tempdir();
    let sock = sock_path(&sockdir);
    let mut proxy = start_unix_proxy(&t.sentinel_ports(), &sock, "listen_mode = \"0600\"");
    proxy.wait_ready();
    assert!(std::fs::symlink_metadata(&sock)
        .unwrap()
        .file_type()
        .is_socket());
    assert_eq!(mode_of(&sock), 0o600, "listen_mode applied");
    assert_eq!(
        proxy.status()["routes"][0]["listen"],
        format!("unix:{}", sock.display())
    );

    let old = t.master_port().expect("a master");
    let mut c = UnixClient::connect(&sock);
    assert_eq!(c.cmd(&["SET", "unix-key", "v1"]).unwrap(), "+OK");
    assert_eq!(c.cmd(&["GET", "unix-key"]).unwrap(), "v1");
    // It really is the master that has it.
    assert_eq!(
        value_text(&redis_cmd(old, &["GET", "unix-key"]).unwrap()),
        "v1"
    );
    proxy.wait_metric(
        Duration::from_secs(5),
        "the Unix-socket session counts as a session",
        "redis_failover_proxy_connections_active",
        &[],
        |v| v >= 1.0,
    );

    let new = t.failover();
    assert!(
        c.closed_within(Duration::from_secs(15)),
        "the failover fences the Unix-socket session"
    );
    proxy.wait_routes_to(&format!("127.0.0.1:{new}"));
    let mut c = UnixClient::connect(&sock);
    assert_eq!(c.cmd(&["SET", "unix-key", "v2"]).unwrap(), "+OK");
    assert_eq!(
        value_text(&redis_cmd(new, &["GET", "unix-key"]).unwrap()),
        "v2",
        "the new session reaches the new master"
    );
    drop(c);

    // A clean exit removes the socket file.
    proxy.signal("TERM");
    assert_eq!(proxy.wait_exit(Duration::from_secs(20)), Some(0));
    assert!(!sock.exists(), "socket file removed at exit");
}

#[test]
fn a_stale_socket_is_replaced_with_the_default_mode() {
    if !require("redis-sentinel") {
        return;
    }
    let t = Topology::single();
    let sockdir = tempdir();
    let sock = sock_path(&sockdir);
    // Left behind by a process that ended (nobody accepts on it).
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let proxy = start_unix_proxy(&t.sentinel_ports(), &sock, "");
    proxy.wait_ready();
    assert_eq!(mode_of(&sock), 0o660, "default listen_mode");
    let mut c = UnixClient::connect(&sock);
    assert_eq!(c.cmd(&["PING"]).unwrap(), "+PONG");
}

/// Runs a proxy that must refuse to start; returns (exit code, stderr).
fn refused(sentinel_ports: &[u16], sock: &Path) -> (Option<i32>, String) {
    let (dir, mut cmd, _) = unix_proxy_command(sentinel_ports, sock, "");
    let err = dir.path().join("stderr");
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("spawn proxy");
    let code = exit_within(&mut child, Duration::from_secs(20))
        .expect("the proxy started although it should have refused")
        .code();
    (code, std::fs::read_to_string(&err).unwrap_or_default())
}

#[test]
fn anything_but_a_stale_socket_at_the_path_refuses_the_start() {
    if !require("redis-sentinel") {
        return;
    }
    let t = Topology::single();
    let sockdir = tempdir();
    let sock = sock_path(&sockdir);

    // A regular file: somebody's data, never removed.
    std::fs::write(&sock, b"precious").unwrap();
    let (code, err) = refused(&t.sentinel_ports(), &sock);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&sock).unwrap(), b"precious");
    std::fs::remove_file(&sock).unwrap();

    // A live socket: another process's service.
    let live = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let (code, err) = refused(&t.sentinel_ports(), &sock);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("listening on this socket already"), "{err}");
    drop(live);
}
