//! Moving large payloads without copying them through the proxy: `splice(2)` from the source
//! socket into a pipe and from the pipe into the destination socket, so the bytes stay in the
//! kernel (page references move, not copies). Measured on 16 KiB values (bench/README.md):
//! about a quarter less CPU per request than read + write, while for small requests it costs a
//! little more; hence [`Mode`] switches a direction of a session to it only while it carries
//! large reads.
//!
//! A pipe is needed only while bytes are in flight: each session thread keeps a few empty
//! pipes and lends one per splice; a session keeps it only while its destination cannot take
//! what the pipe holds. So idle sessions hold no pipe, and no descriptors beyond their sockets.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A read of at least this many bytes switches a direction to splicing.
const SPLICE_MIN: usize = 4096;
/// After this many splices in a row that each moved less than [`SPLICE_MIN`], the direction
/// goes back to read + write.
const SMALL_STREAK: u32 = 16;
/// Most bytes asked for in one splice: a pipe's default capacity (16 pages).
const SPLICE_MAX: usize = 64 * 1024;
/// Empty pipes a session thread keeps for reuse.
const POOL: usize = 8;

/// Which way a direction of a session moves its bytes, and when it changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// read + write through the thread's buffer.
    Copy,
    /// splice through a pipe; `small` splices in a row moved less than [`SPLICE_MIN`].
    Splice {
        /// Small splices in a row.
        small: u32,
    },
    /// Splicing failed here (no pipe, or the kernel refused): read + write for good.
    CopyOnly,
}

impl Mode {
    /// The mode after a read or splice that moved `n` bytes (0 < n).
    pub fn after(self, n: usize) -> Mode {
        match self {
            Mode::CopyOnly => Mode::CopyOnly,
            _ if n >= SPLICE_MIN => Mode::Splice { small: 0 },
            Mode::Copy => Mode::Copy,
            Mode::Splice { small } if small + 1 >= SMALL_STREAK => Mode::Copy,
            Mode::Splice { small } => Mode::Splice { small: small + 1 },
        }
    }

    /// Whether the next transfer splices.
    pub fn splices(self) -> bool {
        matches!(self, Mode::Splice { .. })
    }
}

/// A pipe lent to one direction of a session, with how many bytes it holds.
#[derive(Debug)]
pub struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    /// Bytes spliced in and not yet out.
    pub held: usize,
}

thread_local! {
    static PIPES: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

impl Pipe {
    /// An empty pipe: one of this thread's, or a new one.
    pub fn take() -> io::Result<Pipe> {
        if let Some(p) = PIPES.with(|p| p.borrow_mut().pop()) {
            return Ok(p);
        }
        let mut fds = [-1; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both are new descriptors owned by nobody else.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(Pipe { r, w, held: 0 })
    }

    /// Gives an empty pipe back to this thread; one that still holds bytes (its session
    /// ended mid-transfer) is closed instead.
    pub fn give(self) {
        if self.held == 0 {
            PIPES.with(|p| {
                let mut p = p.borrow_mut();
                if p.len() < POOL {
                    p.push(self);
                }
            });
        }
    }

    /// Moves up to [`SPLICE_MAX`] bytes from socket `from` into the pipe (empty before).
    /// `Ok(0)`: EOF. `WouldBlock`: nothing to read.
    pub fn fill(&mut self, from: RawFd) -> io::Result<usize> {
        let n = splice(from, self.w.as_raw_fd(), SPLICE_MAX)?;
        self.held += n;
        Ok(n)
    }

    /// Moves what the pipe holds into socket `to`, as much as it takes now. `WouldBlock`:
    /// it takes nothing now.
    pub fn drain(&mut self, to: RawFd) -> io::Result<usize> {
        let n = splice(self.r.as_raw_fd(), to, self.held)?;
        self.held -= n;
        Ok(n)
    }
}

/// One non-blocking `splice(2)` of up to `len` bytes between two descriptors, one a pipe.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are open for the duration of the call (borrowed from live
    // sockets and pipes); null offsets are what splice takes for sockets and pipes.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn mode_switches_on_large_reads_and_back_after_a_run_of_small_ones() {
        // (mode before, bytes moved, mode after)
        let rows = [
            (Mode::Copy, 100, Mode::Copy),
            (Mode::Copy, SPLICE_MIN - 1, Mode::Copy),
            (Mode::Copy, SPLICE_MIN, Mode::Splice { small: 0 }),
            (Mode::Copy, 16 * 1024, Mode::Splice { small: 0 }),
            (
                Mode::Splice { small: 0 },
                16 * 1024,
                Mode::Splice { small: 0 },
            ),
            (
                Mode::Splice { small: 5 },
                SPLICE_MIN,
                Mode::Splice { small: 0 },
            ),
            (Mode::Splice { small: 0 }, 5, Mode::Splice { small: 1 }),
            (
                Mode::Splice {
                    small: SMALL_STREAK - 2,
                },
                5,
                Mode::Splice {
                    small: SMALL_STREAK - 1,
                },
            ),
            (
                Mode::Splice {
                    small: SMALL_STREAK - 1,
                },
                5,
                Mode::Copy,
            ),
            (Mode::CopyOnly, 1 << 20, Mode::CopyOnly),
        ];
        for (before, n, after) in rows {
            assert_eq!(before.after(n), after, "{before:?} after {n} bytes");
        }
        assert!(Mode::Splice { small: 3 }.splices());
        assert!(!Mode::Copy.splices() && !Mode::CopyOnly.splices());
    }

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    #[test]
    fn bytes_move_socket_to_socket_through_a_pipe_and_the_pipe_is_reused() {
        let (mut src_peer, src) = pair();
        let (dst, mut dst_peer) = pair();
        src.set_nonblocking(true).unwrap();
        dst.set_nonblocking(true).unwrap();
        let data: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        src_peer.write_all(&data).unwrap();
        let mut got = Vec::new();
        let mut pipe = Pipe::take().unwrap();
        while got.len() < data.len() {
            match pipe.fill(src.as_raw_fd()) {
                Ok(n) => assert!(n > 0),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            while pipe.held > 0 {
                pipe.drain(dst.as_raw_fd()).unwrap();
            }
            let mut buf = [0u8; 65536];
            dst_peer
                .set_read_timeout(Some(std::time::Duration::from_millis(200)))
                .unwrap();
            if let Ok(n) = dst_peer.read(&mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
        }
        assert_eq!(got, data);
        let fd = pipe.r.as_raw_fd();
        pipe.give();
        let again = Pipe::take().unwrap();
        assert_eq!(again.r.as_raw_fd(), fd, "the empty pipe was reused");
        assert_eq!(again.held, 0);
    }

    #[test]
    fn a_pipe_that_still_holds_bytes_is_not_reused() {
        let (mut src_peer, src) = pair();
        src.set_nonblocking(true).unwrap();
        src_peer.write_all(b"leftover").unwrap();
        let mut pipe = Pipe::take().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while pipe.held == 0 && std::time::Instant::now() < deadline {
            let _ = pipe.fill(src.as_raw_fd());
        }
        assert_eq!(pipe.held, 8);
        let pooled = PIPES.with(|p| p.borrow().len());
        pipe.give();
        assert_eq!(
            PIPES.with(|p| p.borrow().len()),
            pooled,
            "a pipe with bytes in it went back to the pool"
        );
    }

    #[test]
    fn eof_reads_as_zero() {
        let (src_peer, src) = pair();
        src.set_nonblocking(true).unwrap();
        drop(src_peer);
        let mut pipe = Pipe::take().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match pipe.fill(src.as_raw_fd()) {
                Ok(0) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(std::time::Instant::now() < deadline, "no EOF");
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
