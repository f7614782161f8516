//! Busy polling for the session threads (`runtime.busy_poll`): before a session thread sleeps
//! in `epoll_wait`, it keeps asking its epoll instance whether anything is ready, yielding the
//! CPU between asks, for up to the configured time. A reply that arrives within that time is
//! handled without the thread having slept, so neither the sleep nor the wakeup (on a virtual
//! machine, an idle vCPU's halt and the interrupt that ends it) is on the request's path.
//! It costs CPU: under a steady trickle of requests a session thread never sleeps. Hence off
//! by default; measured in bench/README.md.
//!
//! Tokio does not expose its epoll instance, so the thread finds it: the epoll descriptors that
//! appeared in `/proc/self/fd` while the thread built its runtime. An unrelated descriptor
//! caught in that window (another thread building a runtime at the same moment) can only end
//! a spin early, after which the thread sleeps in `epoll_wait` as it would without this.

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// At most this many epoll descriptors are watched (tokio's runtime has one or two).
const MAX_FDS: usize = 4;

/// Serialises "list epoll fds, build a runtime, list again" across the session threads, so
/// one thread's runtime is not taken for another's.
static BUILDING: Mutex<()> = Mutex::new(());

/// The epoll descriptors this process has open.
fn epoll_fds() -> Vec<RawFd> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == "anon_inode:[eventpoll]")
        })
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Runs `build` (which builds a runtime) and returns its result with the epoll descriptors
/// that appeared meanwhile (at most [`MAX_FDS`]).
pub fn with_new_epoll_fds<T>(build: impl FnOnce() -> T) -> (T, Vec<RawFd>) {
    let _one_at_a_time = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    let before = epoll_fds();
    let built = build();
    let mut new: Vec<RawFd> = epoll_fds()
        .into_iter()
        .filter(|fd| !before.contains(fd))
        .collect();
    new.truncate(MAX_FDS);
    (built, new)
}

/// What a session thread's park hook polls: set once the runtime is built (the hook is
/// registered before). Until then, and if no descriptor was found, the hook does nothing.
#[derive(Debug, Clone)]
pub struct Poller {
    fds: Arc<OnceLock<Vec<RawFd>>>,
    budget: Duration,
}

impl Poller {
    /// A poller that spins for up to `budget` once given its descriptors.
    pub fn new(budget: Duration) -> Self {
        Poller {
            fds: Arc::new(OnceLock::new()),
            budget,
        }
    }

    /// Gives the poller the descriptors to watch (the runtime's epoll instance).
    pub fn watch(&self, fds: Vec<RawFd>) {
        let _ = self.fds.set(fds);
    }

    /// Polls until one of the descriptors is readable (an event is ready) or the budget is
    /// spent, yielding the CPU between polls; returns whether an event is ready.
    pub fn spin(&self) -> bool {
        let Some(fds) = self.fds.get().filter(|f| !f.is_empty()) else {
            return false;
        };
        let mut set = [libc::pollfd {
            fd: -1,
            events: 0,
            revents: 0,
        }; MAX_FDS];
        for (p, &fd) in set.iter_mut().zip(fds) {
            p.fd = fd;
            p.events = libc::POLLIN;
        }
        let n = fds.len().min(MAX_FDS);
        let start = Instant::now();
        loop {
            // SAFETY: `set` holds `n` initialised pollfd entries; a zero timeout never blocks.
            let ready = unsafe { libc::poll(set.as_mut_ptr(), n as libc::nfds_t, 0) };
            // An error (EINTR, a closed descriptor) ends the spin: the thread then sleeps as
            // it would without busy polling.
            if ready != 0 {
                return ready > 0;
            }
            if start.elapsed() >= self.budget {
                return false;
            }
            // Whoever this thread just woke (the master, a client) may be waiting for this
            // CPU: let it run, then look again.
            std::thread::yield_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    /// An epoll instance watching one end of a Unix socket pair.
    struct Epoll {
        ep: std::os::fd::OwnedFd,
        tx: std::os::unix::net::UnixStream,
        _rx: std::os::unix::net::UnixStream,
    }

    fn epoll() -> Epoll {
        use std::os::fd::FromRawFd;
        let (tx, rx) = std::os::unix::net::UnixStream::pair().unwrap();
        // SAFETY: epoll_create1 returns a new descriptor that we own (checked below).
        let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(raw >= 0);
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let ep = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 0,
        };
        // SAFETY: valid descriptors and event.
        let r = unsafe { libc::epoll_ctl(raw, libc::EPOLL_CTL_ADD, rx.as_raw_fd(), &mut ev) };
        assert_eq!(r, 0);
        Epoll { ep, tx, _rx: rx }
    }

    #[test]
    fn spins_for_the_budget_when_nothing_is_ready() {
        let e = epoll();
        let p = Poller::new(Duration::from_millis(20));
        p.watch(vec![e.ep.as_raw_fd()]);
        let t = Instant::now();
        assert!(!p.spin());
        assert!(t.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn returns_at_once_when_an_event_is_ready() {
        let mut e = epoll();
        e.tx.write_all(b"x").unwrap();
        let p = Poller::new(Duration::from_secs(10));
        p.watch(vec![e.ep.as_raw_fd()]);
        let t = Instant::now();
        assert!(p.spin());
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn does_nothing_without_descriptors() {
        let p = Poller::new(Duration::from_secs(10));
        assert!(!p.spin(), "not given any yet");
        p.watch(Vec::new());
        let t = Instant::now();
        assert!(!p.spin());
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn finds_the_epoll_instance_a_runtime_builds() {
        let (rt, fds) = with_new_epoll_fds(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        });
        assert!(!fds.is_empty(), "no epoll descriptor found");
        drop(rt);
    }
}
