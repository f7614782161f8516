//! The session threads. Each runs its own single-threaded tokio runtime, so a session's two
//! sockets, its wakeups and its task stay on one thread with one epoll instance, like HAProxy's
//! threads: no work stealing, no cross-thread wakeups on the hot path. The accept loops (on the
//! control runtime with the watchers and the admin server) hand each accepted client to the
//! least-loaded session thread. Measured on 2 cores, c=50 P=1 GET: about 11 % more requests/s
//! than one multi-thread runtime for everything (bench/README.md).

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::config::RuntimeConfig;

/// The running session threads.
#[derive(Debug)]
pub struct Workers {
    workers: Vec<Worker>,
    /// Round-robin start for ties, so equal loads spread.
    next: AtomicUsize,
}

#[derive(Debug)]
struct Worker {
    handle: Handle,
    /// Sessions (and held clients) on this thread now.
    load: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    /// Fires when the thread has dropped its runtime.
    exited: Option<oneshot::Receiver<()>>,
}

/// A place to run one session: its runtime, and a guard that counts it as load while alive.
pub struct Slot {
    /// The session thread's runtime.
    pub handle: Handle,
    /// Keep alive for the session's lifetime.
    pub load: LoadGuard,
}

/// Counts one session on a thread until dropped.
pub struct LoadGuard(Arc<AtomicUsize>);

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
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
        let mut workers = Vec::with_capacity(cfg.threads);
        for i in 0..cfg.threads {
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
                    if yield_before_sleep {
                        // Before sleeping in epoll_wait, let whoever this thread just woke (the
                        // master, a client) run first: their answers are then often already
                        // queued and the thread handles them without a sleep and a wakeup.
                        builder.on_thread_park(std::thread::yield_now);
                    }
                    let rt = match builder.enable_all().build() {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    if ready_tx.send(Ok(rt.handle().clone())).is_err() {
                        return;
                    }
                    // Runs the sessions spawned onto it until told to stop (or the
                    // `Workers` is gone).
                    let _ = rt.block_on(stop_rx);
                    rt.shutdown_timeout(Duration::from_secs(1));
                    let _ = exited_tx.send(());
                })?;
            let handle = ready_rx
                .recv()
                .map_err(|_| io::Error::other("session thread exited at start"))??;
            workers.push(Worker {
                handle,
                load: Arc::new(AtomicUsize::new(0)),
                stop: Some(stop_tx),
                exited: Some(exited_rx),
            });
        }
        info!(
            threads = cfg.threads,
            pinned = !cores.is_empty(),
            yield_before_sleep,
            "session threads started"
        );
        Ok(Workers {
            workers,
            next: AtomicUsize::new(0),
        })
    }

    /// The least-loaded session thread (ties: round-robin), with its load already counted.
    pub fn pick(&self) -> Slot {
        let n = self.workers.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut best = &self.workers[start];
        let mut best_load = best.load.load(Ordering::Relaxed);
        for k in 1..n {
            let w = &self.workers[(start + k) % n];
            let l = w.load.load(Ordering::Relaxed);
            if l < best_load {
                (best, best_load) = (w, l);
            }
        }
        best.load.fetch_add(1, Ordering::Relaxed);
        Slot {
            handle: best.handle.clone(),
            load: LoadGuard(best.load.clone()),
        }
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
