//! The io_uring session engine (`runtime.engine = "io_uring"`): plain TCP sessions move their
//! bytes through one io_uring instance per session thread instead of a `recv` and a `send`
//! system call per chunk and an `epoll_wait` per wakeup. Everything else about a session (the
//! hold, the connect, the fence, the half-close and last-reply rules, timers) stays in its
//! tokio task; the ring only pumps bytes and reports when a direction ends.
//!
//! Per session thread: a ring set up with `SINGLE_ISSUER | DEFER_TASKRUN` (Linux 6.1 or later:
//! completions are processed only when this thread asks, in batches), an eventfd the kernel
//! signals when completions wait (registered with the thread's tokio reactor, so the thread
//! still sleeps in one place), and a registered ring of receive buffers the kernel picks from
//! when data arrives: an idle session holds no buffer, only one multishot `recv` per direction.
//! Received chunks are sent on in order, one send per direction at a time; sends never wait in
//! the kernel, and a destination that is full gets the rest from the session's heap (see
//! [`Direction`]). The driver task submits what sessions queued and handles completions in one
//! `io_uring_enter` per pass.
//!
//! Closing a session cancels its requests (each by its user_data) and closes the sockets once
//! none is left in the kernel; the master's side with linger 0 when the session was fenced, as
//! the epoll engine does. Where the ring cannot be set up (gVisor, `kernel.io_uring_disabled`,
//! a seccomp profile that blocks io_uring, a kernel before 6.1), the session threads log it
//! once and use epoll.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use metrics::Counter;
use socket2::SockRef;
use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::session::Side;

/// Receive buffers per session thread, and their size. A direction holds pool buffers only
/// while its chunks wait to be sent (at most [`MAX_QUEUED`] and what the kernel receives
/// before a pause lands; a full destination moves them to the session's heap), so the pool
/// bounds how many directions can be mid-transfer at once, not how many sessions there are; a
/// `recv` that finds the pool empty waits until a buffer comes back. 128 × 32 KiB = 4 MiB per
/// thread (a 16 KiB value and its header arrive in one buffer).
const BUFFERS: u16 = 128;
const BUF_LEN: usize = 32 * 1024;
/// The buffer group the pool is registered as (a buffer ring: the kernel takes buffers from
/// it and this thread gives them back by writing the ring, no system call).
const GROUP: u16 = 0;
/// Submission queue entries; the completion queue gets four times as many.
const ENTRIES: u32 = 1024;
/// Passes of the driver before it lets the thread's other tasks run.
const PASSES: usize = 32;
/// `IORING_ENTER_GETEVENTS` (linux/io_uring.h; the crate keeps its `sys` module private).
const ENTER_GETEVENTS: u32 = 1;

// What a completion is about: the low 3 bits of its user_data, the session's slot above.
const RECV: u64 = 0; // + direction (0: client to master, 1: master to client)
const RECV_C2M: u64 = RECV;
const RECV_M2C: u64 = RECV + 1;
const SEND: u64 = 2; // + direction
const SEND_C2M: u64 = SEND;
const SEND_M2C: u64 = SEND + 1;
const CANCEL: u64 = 4;
const POLL: u64 = 6; // + direction: the destination became writable

/// Which way bytes flow: client to master (0) or master to client (1).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dir {
    C2m = 0,
    M2c = 1,
}

impl Dir {
    fn from_bits(bits: u64) -> Dir {
        if bits & 1 == 0 {
            Dir::C2m
        } else {
            Dir::M2c
        }
    }
    /// The side this direction reads from.
    fn reads(self) -> Side {
        match self {
            Dir::C2m => Side::Client,
            Dir::M2c => Side::Master,
        }
    }
    fn writes(self) -> Side {
        match self {
            Dir::C2m => Side::Master,
            Dir::M2c => Side::Client,
        }
    }
}

/// Most received chunks a direction queues in pool buffers before it stops receiving (its
/// multishot `recv` is cancelled, and armed again once the queue has drained).
const MAX_QUEUED: usize = 4;

/// A received chunk not yet sent on: bytes `[sent, len)` of pool buffer `bid`.
#[derive(Clone, Copy)]
struct Chunk {
    bid: u16,
    sent: usize,
    len: usize,
}

/// The multishot `recv` of a direction.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Recv {
    /// In the kernel, posting a completion per chunk received.
    Armed,
    /// In the kernel, a cancel on its way (the queue is full, or the destination is).
    Pausing,
    /// Not in the kernel: paused, or the pool was empty (then the direction is in
    /// `Ring::starved`).
    Off,
    /// Done: EOF or a failed read, reported once everything before it was sent.
    Done,
}

/// One way of a session. Bytes go out in the order they came in: from the pool chunks while
/// the destination takes them at once; once it does not (a send is short or would block:
/// sends never wait in the kernel), the rest moves to `spill` on the heap, the pool buffers go
/// back at once, receiving pauses, and a poll for writability takes over. So a peer that does
/// not read costs its own session memory (bounded by what the kernel receives before the pause
/// lands) and never the thread's pool.
struct Direction {
    recv: Recv,
    queue: VecDeque<Chunk>,
    /// Bytes the destination could not take yet, in order; the first segment's first
    /// `spill_sent` bytes are sent. A segment is never touched while a send of it is in the
    /// kernel.
    spill: VecDeque<Box<[u8]>>,
    spill_sent: usize,
    /// A send (of the first chunk, or of the first spilled segment) is in the kernel.
    sending: bool,
    /// A poll for writability of the destination is in the kernel.
    polling: bool,
    /// How the receiving ended (EOF, or the side that failed), once it has.
    finish: Option<Result<(), Side>>,
    /// What the session is told: the direction has ended.
    ended: Option<Result<(), Side>>,
    bytes: Counter,
    waker: Option<Waker>,
}

impl Direction {
    /// Nothing left to send.
    fn drained(&self) -> bool {
        self.queue.is_empty() && self.spill.is_empty() && !self.sending
    }
}

struct Slot {
    client: Option<OwnedFd>,
    master: Option<OwnedFd>,
    dirs: [Direction; 2],
    /// Requests of this session in the kernel: multishot `recv`s until their last completion,
    /// sends, polls, cancels.
    inflight: usize,
    closing: bool,
    closed: bool,
    closer: Option<Waker>,
    /// The session's handle is gone: free the slot once closed.
    detached: bool,
    /// The master's epoch: once it is fenced, nothing more is sent either way (the session's
    /// task closes the session; until then the ring must not forward what a client wrote
    /// after the fence, which the epoll engine guarantees by forwarding in that task).
    fenced: CancellationToken,
}

impl Slot {
    fn fd(&self, side: Side) -> RawFd {
        let fd = match side {
            Side::Client => &self.client,
            Side::Master => &self.master,
        };
        fd.as_ref().map_or(-1, |f| f.as_raw_fd())
    }
}

/// One session thread's ring, its buffer pool and its sessions.
pub(super) struct Ring {
    // Dropped first: tearing the ring down cancels whatever is still in the kernel, before
    // the buffers it may write into and the sockets go.
    ring: IoUring,
    bufs: BufRing,
    pool: Box<[u8]>,
    /// Pool buffers the kernel handed out (seen in a completion) and not given back yet.
    held: usize,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    /// Entries waiting to be submitted, in order; a send carries its session and direction,
    /// so that it can be dropped at the last moment if the epoch was fenced meanwhile.
    backlog: VecDeque<(squeue::Entry, Option<(usize, Dir)>)>,
    /// Directions waiting for a pool buffer to arm their `recv`: (slot, direction).
    starved: VecDeque<(usize, Dir)>,
    /// Completions taken from the queue, reused between passes.
    cqes: Vec<cqueue::Entry>,
    /// Wakes the driver when a session queued work.
    kick: Arc<Notify>,
}

thread_local! {
    static RING: RefCell<Option<Ring>> = const { RefCell::new(None) };
}

/// Sets up this thread's ring and returns its driver, to be spawned on this thread's
/// (current-thread) runtime. Call from inside that runtime (the eventfd registers with its
/// reactor).
pub(super) fn install() -> io::Result<impl Future<Output = ()> + Send + 'static> {
    let ring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_taskrun_flag()
        .setup_cqsize(ENTRIES * 4)
        .build(ENTRIES)?;
    // SAFETY: plain syscall; the result is checked.
    let evfd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if evfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just created, owned by nobody else.
    let evfd = unsafe { OwnedFd::from_raw_fd(evfd) };
    ring.submitter().register_eventfd(evfd.as_raw_fd())?;
    // SAFETY: the AsyncFd owns the eventfd, so it stays open for as long as it is registered.
    let evfd = unsafe { AsyncFd::register_with_interest(evfd, tokio::io::Interest::READABLE) }?;
    let kick = Arc::new(Notify::new());
    let mut pool = vec![0u8; BUFFERS as usize * BUF_LEN].into_boxed_slice();
    let bufs = BufRing::new(&ring, &mut pool)?;
    let r = Ring {
        ring,
        bufs,
        pool,
        held: 0,
        slots: Vec::new(),
        free: Vec::new(),
        backlog: VecDeque::new(),
        starved: VecDeque::new(),
        cqes: Vec::with_capacity(256),
        kick: kick.clone(),
    };
    RING.with(|cell| *cell.borrow_mut() = Some(r));
    Ok(drive(evfd, kick))
}

/// Drops this thread's ring, if any: its sessions' sockets close now, not after the thread
/// has said it exited.
pub(super) fn uninstall() {
    let _ = RING.try_with(|cell| cell.borrow_mut().take());
}

/// Runs the thread's ring until the runtime stops: submits what sessions queued, handles
/// completions, and sleeps in the reactor until the kernel signals the eventfd or a session
/// kicks.
async fn drive(evfd: AsyncFd<OwnedFd>, kick: Arc<Notify>) {
    loop {
        let guard = tokio::select! {
            biased;
            g = evfd.readable() => g.ok(),
            _ = kick.notified() => None,
        };
        let busy = RING.with(|cell| match cell.borrow_mut().as_mut() {
            Some(r) => r.turn(),
            None => false,
        });
        if let Some(mut g) = guard {
            // Cleared only if the kernel did not signal again meanwhile. The eventfd is never
            // read (one system call per wakeup saved): every signal wakes the reactor's
            // edge-triggered epoll again whatever the counter holds, and a u64 counter that
            // saturates after 2^64 signals still wakes.
            g.clear_ready();
        }
        if busy {
            // Still work after PASSES passes: let the thread's other tasks run first.
            kick.notify_one();
            tokio::task::yield_now().await;
        }
    }
}

fn user_data(slot: usize, kind: u64) -> u64 {
    ((slot as u64) << 3) | kind
}

impl Ring {
    /// Queues an entry for the next submission (after every entry queued before it).
    fn push(&mut self, e: squeue::Entry) {
        self.backlog.push_back((e, None));
    }

    /// Moves queued entries into the submission queue, in order, until it is full. A send
    /// whose session is closing or whose epoch is fenced is dropped here, right before the
    /// kernel would see it: whatever a client wrote after a fence never reaches the old
    /// master, whether or not its send was already queued when the fence came.
    fn flush_backlog(&mut self) {
        while let Some((e, send)) = self.backlog.pop_front() {
            if let Some((slot, dir)) = send {
                if let Some(s) = self.slots[slot].as_mut() {
                    if s.closing || s.fenced.is_cancelled() {
                        s.inflight = s.inflight.saturating_sub(1);
                        s.dirs[dir as usize].sending = false;
                        self.maybe_closed(slot);
                        continue;
                    }
                }
            }
            // SAFETY: every entry points into the pool, into a spilled segment that stays put
            // while its send is in the kernel, or at nothing; all outlive the ring's use.
            if unsafe { self.ring.submission().push(&e) }.is_err() {
                self.backlog.push_front((e, send));
                break;
            }
        }
    }

    /// Submits what is queued and handles the completions, until a pass leaves nothing to
    /// submit and the kernel reports no deferred work left (`IORING_SQ_TASKRUN`: since Linux
    /// 6.13 one enter runs a bounded number of deferred items and does not signal the eventfd
    /// for the rest), at most [`PASSES`] times; true if work was left. Completions that arrive
    /// later signal the eventfd again.
    fn turn(&mut self) -> bool {
        for _ in 0..PASSES {
            self.flush_backlog();
            let to_submit = self.ring.submission().len();
            // GETEVENTS with no minimum: runs the completions the kernel deferred to this
            // thread (DEFER_TASKRUN) without waiting for more.
            // SAFETY: no timeout argument.
            let entered = unsafe {
                self.ring.submitter().enter::<libc::sigset_t>(
                    to_submit as u32,
                    0,
                    ENTER_GETEVENTS,
                    None,
                )
            };
            match entered {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EBUSY)) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBADR) => {
                    // The kernel dropped completions it could not store: the sessions they
                    // belonged to cannot close cleanly any more (their sockets stay open).
                    tracing::error!(error = %e, "io_uring lost completions (out of memory)");
                }
                Err(e) => tracing::warn!(error = %e, "io_uring_enter failed"),
            }
            let mut cqes = std::mem::take(&mut self.cqes);
            loop {
                cqes.clear();
                cqes.extend(self.ring.completion().take(256));
                if cqes.is_empty() {
                    break;
                }
                for c in &cqes {
                    self.complete(c.user_data(), c.result(), c.flags());
                }
            }
            self.cqes = cqes;
            let left = {
                let sq = self.ring.submission();
                sq.taskrun() || sq.cq_overflow()
            };
            if self.backlog.is_empty() && self.ring.submission().is_empty() && !left {
                return false;
            }
        }
        true
    }

    /// Arms the multishot `recv` of a direction.
    fn arm(&mut self, slot: usize, dir: Dir) {
        let Some(s) = self.slots[slot].as_mut() else {
            return;
        };
        let fd = s.fd(dir.reads());
        s.dirs[dir as usize].recv = Recv::Armed;
        s.inflight += 1;
        let e = opcode::RecvMulti::new(types::Fd(fd), GROUP)
            .build()
            .user_data(user_data(slot, RECV + dir as u64));
        self.push(e);
    }

    /// Stops a direction's `recv` (it is armed again by [`Ring::rearm_if_room`]).
    fn pause(&mut self, slot: usize, dir: Dir) {
        let Some(s) = self.slots[slot].as_mut() else {
            return;
        };
        if s.dirs[dir as usize].recv != Recv::Armed {
            return;
        }
        s.dirs[dir as usize].recv = Recv::Pausing;
        s.inflight += 1;
        let e = opcode::AsyncCancel::new(user_data(slot, RECV + dir as u64))
            .build()
            .user_data(user_data(slot, CANCEL));
        self.push(e);
    }

    /// Sends what comes first in a direction: the first spilled segment if any, else the
    /// first pool chunk (what is left of either). Sends never wait in the kernel
    /// (`MSG_DONTWAIT`): a destination that is full answers `EAGAIN` or takes part.
    fn send_front(&mut self, slot: usize, dir: Dir) {
        let Some(s) = self.slots[slot].as_mut() else {
            return;
        };
        let fd = s.fd(dir.writes());
        let d = &mut s.dirs[dir as usize];
        let (ptr, len) = if let Some(seg) = d.spill.front() {
            (seg[d.spill_sent..].as_ptr(), seg.len() - d.spill_sent)
        } else if let Some(c) = d.queue.front() {
            let at = c.bid as usize * BUF_LEN + c.sent;
            (self.pool[at..].as_ptr(), c.len - c.sent)
        } else {
            return;
        };
        d.sending = true;
        s.inflight += 1;
        let e = opcode::Send::new(types::Fd(fd), ptr, len as u32)
            .flags(libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
            .build()
            .user_data(user_data(slot, SEND + dir as u64));
        self.backlog.push_back((e, Some((slot, dir))));
    }

    /// Gives pool buffer `bid` back to the kernel, and arms a direction that was waiting
    /// for one.
    fn give_back(&mut self, bid: u16) {
        self.bufs.give(&mut self.pool, bid);
        self.held = self.held.saturating_sub(1);
        while let Some((slot, dir)) = self.starved.pop_front() {
            let waiting = self.slots[slot].as_ref().is_some_and(|s| {
                let d = &s.dirs[dir as usize];
                !s.closing
                    && d.recv == Recv::Off
                    && d.queue.len() < MAX_QUEUED
                    && d.spill.is_empty()
            });
            if waiting {
                self.arm(slot, dir);
                break;
            }
        }
    }

    /// Tells the session a direction ended, once: a failed send at once; EOF or a failed
    /// read only after every byte received before it was sent on.
    fn settle(&mut self, slot: usize, dir: Dir, failed_send: bool) {
        let Some(s) = self.slots[slot].as_mut() else {
            return;
        };
        let d = &mut s.dirs[dir as usize];
        if d.ended.is_some() {
            return;
        }
        let how = if failed_send {
            Err(dir.writes())
        } else {
            match d.finish {
                Some(how) if d.drained() => how,
                _ => return,
            }
        };
        d.ended = Some(how);
        if let Some(w) = d.waker.take() {
            w.wake();
        }
    }

    fn complete(&mut self, user_data: u64, res: i32, flags: u32) {
        let kind = user_data & 7;
        let slot = (user_data >> 3) as usize;
        let picked = cqueue::buffer_select(flags);
        if picked.is_some() {
            self.held += 1;
        }
        let Some(s) = self.slots.get_mut(slot).and_then(|s| s.as_mut()) else {
            // Cannot happen (a slot is freed only when nothing of it is in the kernel), but a
            // buffer must never be lost.
            if let Some(bid) = picked {
                self.give_back(bid);
            }
            return;
        };
        let dir = Dir::from_bits(kind);
        match kind {
            CANCEL => {
                s.inflight = s.inflight.saturating_sub(1);
                self.maybe_closed(slot);
            }
            RECV_C2M | RECV_M2C => self.received(slot, dir, res, picked, cqueue::more(flags)),
            SEND_C2M | SEND_M2C => self.sent(slot, dir, res),
            _ => self.writable(slot, dir, res),
        }
    }

    /// A completion of a direction's multishot `recv`.
    fn received(&mut self, slot: usize, dir: Dir, res: i32, picked: Option<u16>, more: bool) {
        let Some(s) = self.slots[slot].as_mut() else {
            return;
        };
        if !more {
            // The kernel is done with this recv.
            s.inflight = s.inflight.saturating_sub(1);
        }
        let closing = s.closing;
        let d = &mut s.dirs[dir as usize];
        if !more && d.recv != Recv::Done {
            d.recv = Recv::Off;
        }
        match picked {
            Some(bid) if res > 0 && !closing && d.finish.is_none() => {
                let n = res as usize;
                d.bytes.increment(n as u64);
                if !d.spill.is_empty() {
                    // The destination is full: after what waits, on the heap.
                    let at = bid as usize * BUF_LEN;
                    d.spill.push_back(self.pool[at..at + n].into());
                    self.give_back(bid);
                } else {
                    d.queue.push_back(Chunk {
                        bid,
                        sent: 0,
                        len: n,
                    });
                    let full = d.queue.len() >= MAX_QUEUED;
                    let idle = !d.sending;
                    if full {
                        self.pause(slot, dir);
                    }
                    if idle {
                        self.send_front(slot, dir);
                    }
                }
            }
            Some(bid) => self.give_back(bid),
            None if closing => {}
            None if res == 0 => {
                d.recv = Recv::Done;
                d.finish = Some(Ok(()));
                self.settle(slot, dir, false);
            }
            // The pool ran dry. If buffers came back meanwhile (their completions were
            // handled before this one), arm again at once; else wait for one.
            None if res == -libc::ENOBUFS => {
                if self.held < BUFFERS as usize {
                    self.rearm_if_room(slot, dir);
                } else {
                    self.starved.push_back((slot, dir));
                }
            }
            // Our pause; armed again when there is room.
            None if res == -libc::ECANCELED => {}
            None if res < 0 => {
                d.recv = Recv::Done;
                d.finish = Some(Err(dir.reads()));
                self.settle(slot, dir, false);
            }
            None => {}
        }
        if closing {
            self.maybe_closed(slot);
            return;
        }
        self.rearm_if_room(slot, dir);
    }

    /// Arms a direction's `recv` again if it is off and has room: fewer than
    /// [`MAX_QUEUED`] chunks and nothing spilled.
    fn rearm_if_room(&mut self, slot: usize, dir: Dir) {
        let Some(s) = self.slots[slot].as_ref() else {
            return;
        };
        let d = &s.dirs[dir as usize];
        let room = d.queue.len() < MAX_QUEUED && d.spill.is_empty();
        if !s.closing && d.recv == Recv::Off && room && !self.starved.contains(&(slot, dir)) {
            self.arm(slot, dir);
        }
    }

    /// A completion of a direction's send.
    fn sent(&mut self, slot: usize, dir: Dir, res: i32) {
        let Some(s) = self.slots[slot].as_mut() else {
            return;
        };
        s.inflight = s.inflight.saturating_sub(1);
        let closing = s.closing;
        let d = &mut s.dirs[dir as usize];
        d.sending = false;
        if closing || (res <= 0 && res != -libc::EAGAIN) {
            // Failed (or the session is closing): every queued buffer goes back.
            let bids: Vec<u16> = d.queue.drain(..).map(|c| c.bid).collect();
            d.spill.clear();
            for bid in bids {
                self.give_back(bid);
            }
            if closing {
                self.maybe_closed(slot);
            } else {
                self.settle(slot, dir, true);
            }
            return;
        }
        let n = res.max(0) as usize;
        // Account what went, and whether the piece it came from is done.
        let short = if let Some(seg) = d.spill.front() {
            d.spill_sent += n;
            if d.spill_sent >= seg.len() {
                d.spill.pop_front();
                d.spill_sent = 0;
                false
            } else {
                true
            }
        } else if let Some(front) = d.queue.front_mut() {
            front.sent += n;
            if front.sent >= front.len {
                let bid = front.bid;
                d.queue.pop_front();
                self.give_back(bid);
                false
            } else {
                true
            }
        } else {
            false
        };
        if short {
            self.block(slot, dir);
            return;
        }
        let d = match self.slots[slot].as_ref() {
            Some(s) => &s.dirs[dir as usize],
            None => return,
        };
        if !d.queue.is_empty() || !d.spill.is_empty() {
            self.send_front(slot, dir);
        } else {
            self.settle(slot, dir, false);
        }
        self.rearm_if_room(slot, dir);
    }

    /// The destination of a direction is full: the pool chunks still queued move to the
    /// heap (their buffers go back at once), receiving pauses, and a poll waits until the
    /// destination can take more.
    fn block(&mut self, slot: usize, dir: Dir) {
        let Some(s) = self.slots[slot].as_mut() else {
            return;
        };
        let fd = s.fd(dir.writes());
        let d = &mut s.dirs[dir as usize];
        let mut bids = Vec::with_capacity(d.queue.len());
        for c in d.queue.drain(..) {
            let at = c.bid as usize * BUF_LEN;
            d.spill.push_back(self.pool[at + c.sent..at + c.len].into());
            bids.push(c.bid);
        }
        if d.spill.len() == bids.len() {
            // Only the moved chunks: sending starts at their first byte.
            d.spill_sent = 0;
        }
        d.polling = true;
        s.inflight += 1;
        for bid in bids {
            self.give_back(bid);
        }
        self.pause(slot, dir);
        let e = opcode::PollAdd::new(types::Fd(fd), libc::POLLOUT as u32)
            .build()
            .user_data(user_data(slot, POLL + dir as u64));
        self.push(e);
    }

    /// A completion of the poll for a direction's destination: send the spilled bytes.
    fn writable(&mut self, slot: usize, dir: Dir, res: i32) {
        let Some(s) = self.slots[slot].as_mut() else {
            return;
        };
        s.inflight = s.inflight.saturating_sub(1);
        s.dirs[dir as usize].polling = false;
        if s.closing {
            self.maybe_closed(slot);
        } else if res < 0 {
            self.settle(slot, dir, true);
        } else {
            // An error or hang-up on the destination shows as a failed send.
            self.send_front(slot, dir);
        }
    }

    /// Closes a closing session's sockets once none of its requests is left in the kernel.
    fn maybe_closed(&mut self, slot: usize) {
        let Some(s) = self.slots[slot].as_mut() else {
            return;
        };
        if !s.closing || s.inflight > 0 || s.closed {
            return;
        }
        let bids: Vec<u16> = s
            .dirs
            .iter_mut()
            .flat_map(|d| {
                d.spill.clear();
                d.queue.drain(..).map(|c| c.bid)
            })
            .collect();
        s.client = None;
        s.master = None;
        s.closed = true;
        if let Some(w) = s.closer.take() {
            w.wake();
        }
        if s.detached {
            self.slots[slot] = None;
            self.free.push(slot);
        }
        self.starved.retain(|&(s, _)| s != slot);
        for bid in bids {
            self.give_back(bid);
        }
    }

    fn open(
        &mut self,
        client: OwnedFd,
        master: OwnedFd,
        fenced: CancellationToken,
        c2m: Counter,
        m2c: Counter,
    ) -> usize {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        let dir = |bytes| Direction {
            recv: Recv::Off,
            queue: VecDeque::new(),
            spill: VecDeque::new(),
            spill_sent: 0,
            sending: false,
            polling: false,
            finish: None,
            ended: None,
            bytes,
            waker: None,
        };
        self.slots[slot] = Some(Slot {
            client: Some(client),
            master: Some(master),
            dirs: [dir(c2m), dir(m2c)],
            inflight: 0,
            closing: false,
            closed: false,
            closer: None,
            detached: false,
            fenced,
        });
        self.arm(slot, Dir::C2m);
        self.arm(slot, Dir::M2c);
        self.kick.notify_one();
        slot
    }

    /// Starts closing a session: cancels its requests; its sockets close when none is left.
    fn close(&mut self, slot: usize, abort_master: bool) {
        let Some(s) = self.slots[slot].as_mut() else {
            return;
        };
        if s.closing {
            return;
        }
        s.closing = true;
        if abort_master {
            if let Some(m) = &s.master {
                let _ = SockRef::from(m).set_linger(Some(Duration::ZERO));
            }
        }
        // Each request still in the kernel is cancelled by its user_data (a hash lookup; a
        // cancel by descriptor walks every request of the ring, which made a fence of 1,000
        // sessions take 37-46 ms instead of ~25). Sends never wait in the kernel, and one
        // still queued is dropped before submission (`flush_backlog`). Cancels are counted in
        // `inflight`: the slot and its sockets stay until they have run, so none can hit a
        // reused slot.
        let mut targets = Vec::with_capacity(4);
        for dir in [Dir::C2m, Dir::M2c] {
            let d = &s.dirs[dir as usize];
            if matches!(d.recv, Recv::Armed | Recv::Pausing) {
                targets.push(user_data(slot, RECV + dir as u64));
            }
            if d.polling {
                targets.push(user_data(slot, POLL + dir as u64));
            }
        }
        s.inflight += targets.len();
        for target in &targets {
            let e = opcode::AsyncCancel::new(*target)
                .build()
                .user_data(user_data(slot, CANCEL));
            self.push(e);
        }
        if !targets.is_empty() {
            self.kick.notify_one();
        }
        self.maybe_closed(slot);
    }
}

/// The ring of free pool buffers shared with the kernel (`IORING_REGISTER_PBUF_RING`): one
/// page of [`BUFFERS`] entries; the kernel consumes from the head, this thread appends at the
/// tail (the tail is the `resv` field of the first entry).
struct BufRing {
    base: *mut types::BufRingEntry,
    tail: u16,
}

impl BufRing {
    const LAYOUT_SIZE: usize = BUFFERS as usize * std::mem::size_of::<types::BufRingEntry>();

    fn layout() -> std::alloc::Layout {
        // One page-aligned block, as the kernel requires.
        std::alloc::Layout::from_size_align(Self::LAYOUT_SIZE.max(4096), 4096)
            .expect("a valid layout")
    }

    /// Registers the ring with `ring` and offers every buffer of `pool`.
    fn new(ring: &IoUring, pool: &mut [u8]) -> io::Result<BufRing> {
        // SAFETY: a non-zero size; checked for null below.
        let base =
            unsafe { std::alloc::alloc_zeroed(Self::layout()) }.cast::<types::BufRingEntry>();
        if base.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        let mut b = BufRing { base, tail: 0 };
        // SAFETY: the block stays allocated until this BufRing is dropped, which `Ring` does
        // only after the io_uring itself is gone.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(base as u64, BUFFERS, GROUP, 0)?;
        }
        for bid in 0..BUFFERS {
            b.give(pool, bid);
        }
        Ok(b)
    }

    /// Appends buffer `bid` of `pool` and publishes the new tail.
    fn give(&mut self, pool: &mut [u8], bid: u16) {
        let mask = BUFFERS - 1;
        // SAFETY: the index is masked into the ring; the entry is plain data the kernel reads
        // only once the tail below includes it.
        let entry = unsafe { &mut *self.base.add((self.tail & mask) as usize) };
        entry.set_addr(pool[bid as usize * BUF_LEN..].as_mut_ptr() as u64);
        entry.set_len(BUF_LEN as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail field of the first entry, inside the block; the kernel reads it
        // with acquire ordering.
        unsafe {
            let tail = types::BufRingEntry::tail(self.base).cast_mut();
            std::sync::atomic::AtomicU16::from_ptr(tail)
                .store(self.tail, std::sync::atomic::Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.base.cast(), Self::layout()) };
    }
}

/// A session's two sockets, lent to this thread's ring.
pub(super) struct Conn {
    slot: usize,
}

/// Whether this thread runs sessions on a ring.
pub(super) fn available() -> bool {
    RING.with(|cell| cell.borrow().is_some())
}

impl Conn {
    /// Lends both sockets of an established plain TCP session to this thread's ring, which
    /// starts pumping at once. Errors (no ring here, a socket tokio cannot give up) return
    /// nothing usable: the caller should have checked [`available`].
    pub(super) fn open(
        client: TcpStream,
        master: TcpStream,
        fenced: CancellationToken,
        c2m: Counter,
        m2c: Counter,
    ) -> io::Result<Conn> {
        // Out of tokio's reactor; the ring polls them from now on.
        let client: OwnedFd = client.into_std()?.into();
        let master: OwnedFd = master.into_std()?.into();
        RING.with(|cell| match cell.borrow_mut().as_mut() {
            Some(r) => Ok(Conn {
                slot: r.open(client, master, fenced, c2m, m2c),
            }),
            None => Err(io::Error::other("no io_uring on this thread")),
        })
    }

    /// Resolves when the direction reading from `side` has ended: EOF, or the side that
    /// failed.
    pub(super) fn ended(&self, side: Side) -> Ended<'_> {
        let dir = match side {
            Side::Client => Dir::C2m,
            Side::Master => Dir::M2c,
        };
        Ended { conn: self, dir }
    }

    /// Shuts down writing to `side` (passes a half-close on).
    pub(super) fn shutdown_write(&self, side: Side) {
        RING.with(|cell| {
            if let Some(s) = cell
                .borrow()
                .as_ref()
                .and_then(|r| r.slots[self.slot].as_ref())
            {
                let fd = s.fd(side);
                if fd >= 0 {
                    // SAFETY: a socket this session owns; shutdown has no memory arguments.
                    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
                }
            }
        });
    }

    /// Closes the session (the master's side with a reset if `abort_master`) and resolves
    /// once both sockets are closed.
    pub(super) async fn close(self, abort_master: bool) {
        RING.with(|cell| {
            if let Some(r) = cell.borrow_mut().as_mut() {
                r.close(self.slot, abort_master);
            }
        });
        std::future::poll_fn(|cx| {
            RING.with(|cell| match cell.borrow_mut().as_mut() {
                Some(r) => match r.slots[self.slot].as_mut() {
                    Some(s) if !s.closed => {
                        s.closer = Some(cx.waker().clone());
                        Poll::Pending
                    }
                    _ => Poll::Ready(()),
                },
                None => Poll::Ready(()),
            })
        })
        .await;
        // Drop frees the slot.
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let slot = self.slot;
        let _ = RING.try_with(|cell| {
            if let Ok(mut cell) = cell.try_borrow_mut() {
                if let Some(r) = cell.as_mut() {
                    r.close(slot, false);
                    match r.slots[slot].as_mut() {
                        Some(s) if s.closed => {
                            r.slots[slot] = None;
                            r.free.push(slot);
                        }
                        Some(s) => s.detached = true,
                        None => {}
                    }
                }
            }
        });
    }
}

/// See [`Conn::ended`].
pub(super) struct Ended<'a> {
    conn: &'a Conn,
    dir: Dir,
}

impl Future for Ended<'_> {
    type Output = Result<(), Side>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        RING.with(|cell| {
            let mut cell = cell.borrow_mut();
            let Some(s) = cell.as_mut().and_then(|r| r.slots[self.conn.slot].as_mut()) else {
                return Poll::Ready(Err(Side::Client));
            };
            let d = &mut s.dirs[self.dir as usize];
            match d.ended {
                Some(how) => Poll::Ready(how),
                None => {
                    d.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
    }
}
