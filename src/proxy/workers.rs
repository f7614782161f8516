//! The session threads. Each runs its own single-threaded tokio runtime, so a session's two
//! sockets, its wakeups and its task stay on one thread with one epoll instance, like HAProxy's
//! threads: no work stealing, no cross-thread wakeups on the hot path. Every session thread
//! runs an accept loop on each route's listening socket and keeps the clients it accepts; to
//! keep pooled clients spread evenly, a thread accepts only while it is at most a few clients
//! ahead of the thread with the fewest ([`Turns::wait_turn`]). The watchers run on the control
//! runtime, the admin server on a thread of its own. Measured on 2 cores: see bench/README.md.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::{oneshot, Notify};
use tracing::{info, warn};

use super::busy_poll::{self, Poller};
use crate::config::{Engine, RuntimeConfig};

/// Sets up session thread `thread`'s io_uring and spawns its driver on the thread's runtime;
/// false (said once per process) where the kernel cannot.
fn start_ring(rt: &tokio::runtime::Runtime, thread: usize) -> bool {
    #[cfg(target_os = "linux")]
    {
        static SAID: std::sync::Once = std::sync::Once::new();
        let _entered = rt.enter();
        match super::uring::install() {
            Ok(driver) => {
                rt.spawn(driver);
                true
            }
            Err(e) => {
                SAID.call_once(|| {
                    warn!(thread, error = %e, "runtime.engine = \"io_uring\": cannot set up an io_uring (Linux 6.1 or later, kernel.io_uring_disabled = 0, not gVisor); falling back to epoll");
                });
                false
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (rt, thread);
        warn!("runtime.engine = \"io_uring\" needs Linux; falling back to epoll");
        false
    }
}

/// The running session threads. Dropping this stops them (after their sessions are
/// dropped); [`Workers::stop`] also waits for that.
#[derive(Debug)]
pub struct Workers {
    workers: Vec<Worker>,
    turns: Arc<Turns>,
}

#[derive(Debug)]
struct Worker {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    /// Fires when the thread has dropped its runtime.
    exited: Option<oneshot::Receiver<()>>,
}

/// Whose turn it is to accept: clients (held or in a session) per session thread, and per
/// thread a wakeup for its accept loops when their turn may have come. The accept loops hold
/// this, not [`Workers`], so that dropping `Workers` still stops the threads.
#[derive(Debug)]
pub struct Turns {
    per_thread: Vec<AtomicUsize>,
    turn: Vec<Notify>,
}

/// Counts one client on a session thread until dropped.
pub struct LoadGuard {
    turns: Arc<Turns>,
    thread: usize,
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.turns.per_thread[self.thread].fetch_sub(1, Ordering::SeqCst);
        // Fewer clients here can only bring this thread's own turn (dropped on this thread:
        // no cross-thread wakeup).
        self.turns.turn[self.thread].notify_waiters();
    }
}

impl Workers {
    /// Starts `cfg.threads` session threads, pinned to CPUs if `cfg.pin_threads`.
    pub fn start(cfg: RuntimeConfig) -> io::Result<Workers> {
        let cores = if cfg.pin_threads {
            match core_affinity::get_core_ids() {
                Some(c) if !c.is_empty() => c,
                _ => {
                    warn!("runtime.pin_threads: cannot read this process's CPU set; not pinning");
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };
        let yield_before_sleep = cfg.yield_before_sleep;
        let busy_poll = cfg.busy_poll;
        let engine = cfg.engine;
        // At least one, whatever a library caller passes.
        let threads = cfg.threads.max(1);
        let mut workers = Vec::with_capacity(threads);
        let mut rings = 0;
        for i in 0..threads {
            let core = (!cores.is_empty()).then(|| cores[i % cores.len()]);
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            let (exited_tx, exited_rx) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("session-{i}"))
                .spawn(move || {
                    if let Some(core) = core {
                        if !core_affinity::set_for_current(core) {
                            warn!(thread = i, cpu = core.id, "cannot pin session thread");
                        }
                    }
                    let mut builder = tokio::runtime::Builder::new_current_thread();
                    let poller = (!busy_poll.is_zero()).then(|| Poller::new(busy_poll));
                    if let Some(p) = poller.clone() {
                        // Spins (yielding between polls) before every sleep: see busy_poll.rs.
                        builder.on_thread_park(move || {
                            p.spin();
                        });
                    } else if yield_before_sleep {
                        // Before sleeping in epoll_wait, let whoever this thread just woke (the
                        // master, a client) run first: their answers are then often already
                        // queued and the thread handles them without a sleep and a wakeup.
                        builder.on_thread_park(std::thread::yield_now);
                    }
                    // Only busy polling needs the runtime's epoll descriptor (a scan of
                    // /proc/self/fd under a process-wide lock).
                    let (built, epoll_fds) = if poller.is_some() {
                        busy_poll::with_new_epoll_fds(|| builder.enable_all().build())
                    } else {
                        (builder.enable_all().build(), Vec::new())
                    };
                    let rt = match built {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    if let Some(p) = &poller {
                        if epoll_fds.is_empty() {
                            warn!(thread = i, "runtime.busy_poll: cannot find this session thread's epoll instance; it sleeps without polling first");
                        }
                        p.watch(epoll_fds);
                    }
                    let on_ring = engine == Engine::IoUring && start_ring(&rt, i);
                    if ready_tx.send(Ok((rt.handle().clone(), on_ring))).is_err() {
                        return;
                    }
                    // Runs the sessions spawned onto it until told to stop (or the
                    // `Workers` is gone).
                    let _ = rt.block_on(stop_rx);
                    rt.shutdown_timeout(Duration::from_secs(1));
                    // The ring's sessions were dropped with the runtime: their sockets close
                    // now, before the thread says it exited.
                    #[cfg(target_os = "linux")]
                    super::uring::uninstall();
                    let _ = exited_tx.send(());
                })?;
            let (handle, on_ring) = ready_rx
                .recv()
                .map_err(|_| io::Error::other("session thread exited at start"))??;
            rings += usize::from(on_ring);
            workers.push(Worker {
                handle,
                stop: Some(stop_tx),
                exited: Some(exited_rx),
            });
        }
        info!(
            threads,
            pinned = !cores.is_empty(),
            yield_before_sleep,
            busy_poll_us = busy_poll.as_micros() as u64,
            engine = if rings == threads {
                Engine::IoUring
            } else {
                Engine::Epoll
            }
            .as_str(),
            "session threads started"
        );
        let turns = Arc::new(Turns {
            per_thread: (0..threads).map(|_| AtomicUsize::new(0)).collect(),
            turn: (0..threads).map(|_| Notify::new()).collect(),
        });
        Ok(Workers { workers, turns })
    }

    /// Whose turn it is to accept; for the accept loops.
    pub fn turns(&self) -> Arc<Turns> {
        self.turns.clone()
    }

    /// How many session threads there are.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Always false: [`Workers::start`] starts at least one session thread.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// The runtime of session thread `thread`.
    pub fn handle(&self, thread: usize) -> &Handle {
        &self.workers[thread].handle
    }

    /// Stops every session thread (dropping whatever still runs there) and waits up to
    /// `timeout` for them to exit.
    pub async fn stop(mut self, timeout: Duration) {
        for w in &mut self.workers {
            if let Some(tx) = w.stop.take() {
                let _ = tx.send(());
            }
        }
        let exits = self.workers.iter_mut().filter_map(|w| w.exited.take());
        let all = futures_util::future::join_all(exits);
        if tokio::time::timeout(timeout, all).await.is_err() {
            warn!("a session thread did not stop in time");
        }
    }
}

impl Turns {
    /// Resolves once it is session thread `thread`'s turn to accept: it has at most a few
    /// clients more than the thread with the fewest (1 + 1/16 of that). Strict turns would
    /// make a burst of connections (a pool opening, a reconnect storm) ping-pong between the
    /// threads for every accept, too slow to keep the listen backlog from overflowing; the
    /// slack keeps accepting fast while clients stay spread within a few percent. Threads
    /// within the slack may all accept (the kernel gives a pending connection to one of them;
    /// the others' accept finds nothing).
    pub async fn wait_turn(&self, thread: usize) {
        loop {
            // Registered before the check, so a change between the check and the await
            // still wakes us.
            let changed = self.turn[thread].notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let mine = self.per_thread[thread].load(Ordering::SeqCst);
            let fewest = self
                .per_thread
                .iter()
                .map(|l| l.load(Ordering::SeqCst))
                .min()
                .unwrap_or(0);
            if mine <= fewest + 1 + fewest / 16 {
                return;
            }
            changed.await;
        }
    }

    /// Counts a client accepted on session thread `thread` until the guard is dropped.
    pub fn count(self: &Arc<Self>, thread: usize) -> LoadGuard {
        let before = self.per_thread[thread].fetch_add(1, Ordering::SeqCst);
        // Others' turn may come only if this thread alone had the fewest clients (the fewest
        // just went up); otherwise nothing changed for them.
        let others_fewest = (0..self.per_thread.len())
            .filter(|&t| t != thread)
            .map(|t| self.per_thread[t].load(Ordering::SeqCst))
            .min();
        if others_fewest.is_some_and(|f| before < f) {
            for (t, turn) in self.turn.iter().enumerate() {
                if t != thread {
                    turn.notify_waiters();
                }
            }
        }
        LoadGuard {
            turns: self.clone(),
            thread,
        }
    }
}
