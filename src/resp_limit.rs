//! Bounds what a sentinel or Redis peer can make us buffer. [`Bounded`] wraps every peer stream
//! before it reaches the `redis` crate and passes each byte it reads through a [`FrameScanner`],
//! which follows RESP2/RESP3 frame structure only far enough to enforce [`RespLimits`].
//! Invariant: the `redis` crate never receives the bytes that break a limit nor any after them
//! (a declared size is refused at its header, before its payload), and every later read fails.

use std::error::Error;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How much one peer reply may declare or contain.
///
/// The defaults leave wide headroom over what this proxy ever reads: `SENTINEL MASTER`,
/// `SENTINEL REPLICAS` / `SENTINELS` (about 1.5 KiB per listed node), `ROLE`, `HELLO` maps and
/// the sentinels' pub/sub messages are a few KiB, with at most a few hundred elements per
/// aggregate and at most 3 levels of nesting (4 with a RESP3 attribute). Against that:
/// - `max_frame_bytes` = 1 MiB caps what the `redis` crate buffers per connection at about
///   1 MiB (it holds a reply until the reply is complete) where a hostile peer took 3.2 GB;
/// - `max_elements` = 100 000 values per aggregate (a map counts keys and values) is a sanity
///   bound: the `redis` crate preallocates at most 4096 values per aggregate whatever the count
///   says, and with the 1 MiB frame limit, at least 3 bytes per value, a reply cannot hold more
///   than about 350 000 values in total, which bounds its decoded form too;
/// - `max_depth` = 16 nested aggregates stays far below the `redis` crate's own recursion limit
///   of 100, so a deep reply is refused here before it costs stack there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RespLimits {
    /// Bytes of one top-level reply, everything included (headers, payloads, CRLFs, nested
    /// values). A string may declare at most this many bytes.
    pub max_frame_bytes: usize,
    /// Values in one aggregate: elements of an array, set or push; keys plus values of a map;
    /// keys plus values plus the annotated value of an attribute.
    pub max_elements: usize,
    /// Aggregates nested inside one another (a top-level array is at depth 1).
    pub max_depth: usize,
}

impl Default for RespLimits {
    fn default() -> Self {
        RespLimits {
            max_frame_bytes: 1024 * 1024,
            max_elements: 100_000,
            max_depth: 16,
        }
    }
}

/// A peer reply broke a [`RespLimits`] limit or the RESP framing the limits rely on.
///
/// The message says what was exceeded, with numbers; it never quotes the peer's payload.
/// Every message starts with [`MARKER`] (see [`is_oversized`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Oversized {
    /// A string (`$`, `!`, `=`) declares more bytes than a whole reply may have.
    #[error("peer reply declares a {declared}-byte string; the limit is {limit}")]
    String {
        /// The declared length.
        declared: u64,
        /// [`RespLimits::max_frame_bytes`].
        limit: usize,
    },
    /// The reply is, or as declared so far must become, larger than a reply may be.
    #[error("peer reply is at least {at_least} bytes long; the limit is {limit}")]
    Frame {
        /// Bytes received plus the least the declared rest can take.
        at_least: u64,
        /// [`RespLimits::max_frame_bytes`].
        limit: usize,
    },
    /// An aggregate declares more values than allowed.
    #[error("peer reply declares an aggregate of {declared} values; the limit is {limit}")]
    Elements {
        /// Declared values (twice the pair count for a map).
        declared: u64,
        /// [`RespLimits::max_elements`].
        limit: usize,
    },
    /// Aggregates are nested deeper than allowed.
    #[error("peer reply nests aggregates deeper than {limit} levels")]
    Depth {
        /// [`RespLimits::max_depth`].
        limit: usize,
    },
    /// A value starts with a byte that is no RESP2 or RESP3 type.
    #[error("peer reply has unknown type byte 0x{byte:02x}")]
    UnknownType {
        /// The byte.
        byte: u8,
    },
    /// A RESP3 streamed string or aggregate (`$?`, `*?`, ...): Redis never sends them to
    /// clients, and their size is unknown up front.
    #[error("peer reply is a RESP3 streamed string or aggregate, which is not accepted")]
    Streamed,
    /// A header is not what RESP allows (or what Redis sends), so the structure cannot be
    /// followed.
    #[error("peer reply is malformed: {what}")]
    Malformed {
        /// What is wrong.
        what: &'static str,
    },
}

/// The start of every [`Oversized`] message; [`is_oversized`] looks for it when an error chain
/// kept only the text.
pub const MARKER: &str = "peer reply ";

/// Whether `err`, or an error in its `source()` chain, is an [`Oversized`] that [`Bounded`]
/// returned, also after the `redis` crate wrapped it into a `redis::RedisError`.
///
/// redis-rs 1.8 turns the `io::Error` into `RedisError { kind: Io, Arc<dyn Error + Send +
/// Sync> }` whose `source()` is that `Arc` itself, and `io::Error::source()` skips the error it
/// carries, so plain downcasting along the chain never meets [`Oversized`]: each link is also
/// opened as an `Arc` and as an `io::Error` (`get_ref`). Where only the text survived, an
/// `InvalidData` `io::Error` or an `Io`-kind `RedisError` whose message has [`MARKER`] counts
/// too; other errors never do by their text, since a peer chooses the text of its error replies.
pub fn is_oversized(err: &(dyn Error + 'static)) -> bool {
    let mut link = Some(err);
    while let Some(e) = link {
        if carries_oversized(e) {
            return true;
        }
        link = e.source();
    }
    false
}

fn carries_oversized(e: &(dyn Error + 'static)) -> bool {
    if e.is::<Oversized>() {
        return true;
    }
    if let Some(shared) = e.downcast_ref::<Arc<dyn Error + Send + Sync>>() {
        let inner: &(dyn Error + 'static) = &**shared;
        return carries_oversized(inner);
    }
    if let Some(io_err) = e.downcast_ref::<io::Error>() {
        return io_err
            .get_ref()
            .is_some_and(|inner| inner.is::<Oversized>())
            || (io_err.kind() == io::ErrorKind::InvalidData
                && io_err.to_string().starts_with(MARKER));
    }
    if let Some(redis_err) = e.downcast_ref::<redis::RedisError>() {
        return redis_err.kind() == redis::ErrorKind::Io && redis_err.to_string().contains(MARKER);
    }
    false
}

/// The least bytes any value takes (`_\r\n`, `+\r\n`): what a declared but not yet received
/// value is charged against the frame limit.
const MIN_VALUE_BYTES: u64 = 3;

/// Digits a length may have; 20 hold any `u64`, and Redis sends at most 19.
const MAX_DIGITS: u8 = 20;

#[derive(Debug, Clone, Copy)]
enum State {
    /// Expecting the type byte of a value.
    Type,
    /// In the length (or count) line of a `$ ! = * ~ > % |` header.
    Number {
        kind: u8,
        negative: bool,
        digits: u8,
        value: u64,
        cr: bool,
    },
    /// In the line of a simple type (`+ - : , ( # _`), which ends at the first CRLF as the
    /// `redis` crate reads it; `cr` when the previous byte was `\r`.
    Line { cr: bool },
    /// In a string's payload, `left` bytes to go.
    Payload { left: usize },
    /// After a payload: `\r` expected, or `\n` when `cr`.
    Trailer { cr: bool },
}

/// Follows the structure of a RESP2/RESP3 byte stream, fed in pieces of any size, and refuses
/// what breaks [`RespLimits`]: not a parser (the `redis` crate parses), it keeps only a small
/// state per open aggregate and never holds peer bytes.
///
/// It refuses as early as the bytes allow: a string's or aggregate's declared size when its
/// header line ends, before any payload; a simple line at the byte that makes its reply too
/// long; an unknown type or malformed header at the offending byte. After a refusal every
/// `feed` fails with the same error.
#[derive(Debug, Clone)]
pub struct FrameScanner {
    limits: RespLimits,
    state: State,
    /// Bytes of the current top-level reply received so far; 0 between replies.
    frame_bytes: usize,
    /// Per open aggregate, its values not started yet.
    open: Vec<usize>,
    /// The sum of `open`: values declared but not started, each charged `MIN_VALUE_BYTES`.
    pending: usize,
    failed: Option<Oversized>,
}

/// A refusal by [`FrameScanner::scan`].
#[derive(Debug)]
struct Rejected {
    /// Bytes at the start of the fed piece that end complete replies, all before the refused one.
    clean: usize,
    err: Oversized,
}

impl FrameScanner {
    /// A scanner between replies.
    pub fn new(limits: RespLimits) -> FrameScanner {
        FrameScanner {
            limits,
            state: State::Type,
            frame_bytes: 0,
            open: Vec::new(),
            pending: 0,
            failed: None,
        }
    }

    /// Takes the next bytes of the stream; `Err` once they break a limit (and ever after).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), Oversized> {
        self.scan(bytes).map_err(|r| r.err)
    }

    /// The error that poisoned this scanner, if any.
    pub fn failure(&self) -> Option<&Oversized> {
        self.failed.as_ref()
    }

    /// [`FrameScanner::feed`], also telling on refusal how many leading bytes of `bytes` end
    /// complete replies before the refused one (which can still be handed on).
    fn scan(&mut self, bytes: &[u8]) -> Result<(), Rejected> {
        if let Some(err) = &self.failed {
            return Err(Rejected {
                clean: 0,
                err: err.clone(),
            });
        }
        let mut clean = 0;
        let mut at = 0;
        while let Some(rest) = bytes.get(at..) {
            let Some(&b) = rest.first() else { break };
            if let State::Payload { left } = &mut self.state {
                // A payload's size was checked against the frame limit at its header: skip it
                // whole.
                let n = (*left).min(rest.len());
                *left -= n;
                self.frame_bytes = self.frame_bytes.saturating_add(n);
                at += n;
                if *left == 0 {
                    self.state = State::Trailer { cr: false };
                }
                continue;
            }
            at += 1;
            self.frame_bytes = self.frame_bytes.saturating_add(1);
            // Every byte counts against the frame limit; a reply that just ended was checked
            // whole by `end_value`.
            let stepped = self.step(b).and_then(|()| match self.frame_bytes {
                0 => Ok(()),
                _ => self.check_budget(0),
            });
            if let Err(err) = stepped {
                self.failed = Some(err.clone());
                return Err(Rejected { clean, err });
            }
            if self.frame_bytes == 0 {
                clean = at;
            }
        }
        Ok(())
    }

    /// One byte outside a payload (already counted in `frame_bytes`; `scan` checks the budget
    /// after it).
    fn step(&mut self, b: u8) -> Result<(), Oversized> {
        match self.state {
            State::Type => {
                if let Some(left) = self.open.last_mut() {
                    // Non-zero: an aggregate is closed as soon as its last value ends.
                    *left = left.saturating_sub(1);
                    self.pending = self.pending.saturating_sub(1);
                }
                self.state = match b {
                    b'$' | b'!' | b'=' | b'*' | b'~' | b'>' | b'%' | b'|' => State::Number {
                        kind: b,
                        negative: false,
                        digits: 0,
                        value: 0,
                        cr: false,
                    },
                    b'+' | b'-' | b':' | b',' | b'(' | b'#' | b'_' => State::Line { cr: false },
                    _ => return Err(Oversized::UnknownType { byte: b }),
                };
                Ok(())
            }
            State::Line { cr } => {
                if cr && b == b'\n' {
                    self.end_value()
                } else {
                    self.state = State::Line { cr: b == b'\r' };
                    Ok(())
                }
            }
            State::Number {
                kind,
                negative,
                digits,
                value,
                cr,
            } => {
                if cr {
                    return if b == b'\n' {
                        self.end_header(kind, negative, value)
                    } else {
                        Err(malformed("a length line does not end in CRLF"))
                    };
                }
                // Only `-?[0-9]+`, as Redis sends: stricter than the `redis` crate (which trims
                // and takes a `+`), so that whatever passes here it reads as the same length.
                let (negative, digits, value, cr) = match b {
                    b'0'..=b'9' => {
                        let value = value
                            .checked_mul(10)
                            .and_then(|v| v.checked_add(u64::from(b - b'0')))
                            .filter(|_| digits < MAX_DIGITS)
                            .ok_or(malformed("a length is out of range"))?;
                        if negative && value != 1 {
                            return Err(malformed("a negative length other than -1"));
                        }
                        (negative, digits + 1, value, false)
                    }
                    b'\r' if digits > 0 => (negative, digits, value, true),
                    b'-' if digits == 0 && !negative => {
                        // RESP2's null string and null array; Redis sends no other negatives.
                        if kind != b'$' && kind != b'*' {
                            return Err(malformed("a negative length"));
                        }
                        (true, digits, value, false)
                    }
                    b'?' if digits == 0 && !negative => return Err(Oversized::Streamed),
                    _ => return Err(malformed("a length is not a decimal number")),
                };
                self.state = State::Number {
                    kind,
                    negative,
                    digits,
                    value,
                    cr,
                };
                Ok(())
            }
            State::Trailer { cr } => match (cr, b) {
                (false, b'\r') => {
                    self.state = State::Trailer { cr: true };
                    Ok(())
                }
                (true, b'\n') => self.end_value(),
                _ => Err(malformed("a string is not followed by CRLF")),
            },
            // `scan` skips payloads itself.
            State::Payload { .. } => Ok(()),
        }
    }

    /// A header line ended: check what it declares, before any of it arrives.
    fn end_header(&mut self, kind: u8, negative: bool, value: u64) -> Result<(), Oversized> {
        let limits = self.limits;
        if negative {
            // `$-1` or `*-1`: a null, not an aggregate.
            return self.end_value();
        }
        if matches!(kind, b'$' | b'!' | b'=') {
            let len = usize::try_from(value)
                .ok()
                .filter(|&len| len <= limits.max_frame_bytes)
                .ok_or(Oversized::String {
                    declared: value,
                    limit: limits.max_frame_bytes,
                })?;
            self.check_budget(value.saturating_add(2))?;
            self.state = State::Payload { left: len };
            // A zero-length payload goes straight to its trailer on the next byte.
            if len == 0 {
                self.state = State::Trailer { cr: false };
            }
            return Ok(());
        }
        let values = match kind {
            b'%' => value.saturating_mul(2),
            // The attribute's pairs, then the value they annotate.
            b'|' => value.saturating_mul(2).saturating_add(1),
            _ => value,
        };
        let values = usize::try_from(values)
            .ok()
            .filter(|&n| n <= limits.max_elements)
            .ok_or(Oversized::Elements {
                declared: values,
                limit: limits.max_elements,
            })?;
        if self.open.len() >= limits.max_depth {
            return Err(Oversized::Depth {
                limit: limits.max_depth,
            });
        }
        if values == 0 {
            return self.end_value();
        }
        self.open.push(values);
        self.pending = self.pending.saturating_add(values);
        self.state = State::Type;
        Ok(())
    }

    /// A value ended: close the aggregates it completes, and the reply if it completes that
    /// (after a last check of its size: the reply's count starts over from there).
    fn end_value(&mut self) -> Result<(), Oversized> {
        self.check_budget(0)?;
        while self.open.last() == Some(&0) {
            self.open.pop();
        }
        if self.open.is_empty() {
            self.frame_bytes = 0;
        }
        self.state = State::Type;
        Ok(())
    }

    /// Refuses when the bytes received, plus `extra` bytes now declared, plus the least the
    /// declared values still to come can take, exceed the frame limit.
    fn check_budget(&self, extra: u64) -> Result<(), Oversized> {
        let at_least = (self.frame_bytes as u64)
            .saturating_add(extra)
            .saturating_add((self.pending as u64).saturating_mul(MIN_VALUE_BYTES));
        if at_least > self.limits.max_frame_bytes as u64 {
            return Err(Oversized::Frame {
                at_least,
                limit: self.limits.max_frame_bytes,
            });
        }
        Ok(())
    }
}

fn malformed(what: &'static str) -> Oversized {
    Oversized::Malformed { what }
}

/// A peer stream whose reads pass through a [`FrameScanner`]; writes pass through unchanged.
///
/// When the bytes read break a limit, nothing more of the reply they belong to is handed on:
/// the read hands on the complete replies before it, if any (and the next read fails), or
/// fails with an `io::ErrorKind::InvalidData` error carrying the [`Oversized`]. Every later read
/// fails the same way without touching the inner stream. Bytes of that reply handed on by
/// earlier reads were within the limits.
#[derive(Debug)]
pub struct Bounded<S> {
    inner: S,
    scanner: FrameScanner,
    refusal: Refusal,
}

impl<S> Bounded<S> {
    /// Wraps `inner`, a fresh connection (the scanner starts between replies).
    pub fn new(inner: S, limits: RespLimits) -> Bounded<S> {
        Bounded {
            inner,
            scanner: FrameScanner::new(limits),
            refusal: Refusal::default(),
        }
    }

    /// The wrapped stream (reading from it directly would bypass the limits, so no `get_mut`).
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// A handle that learns this stream's refusal, still readable after the stream was handed
    /// away (and dropped).
    pub fn refusal(&self) -> Refusal {
        self.refusal.clone()
    }
}

/// What a [`Bounded`] stream refused, if it refused anything, seen from outside it.
///
/// The `redis` crate's pub/sub connection ends its message stream without saying why when a
/// read fails with no request waiting; the owner of the subscription asks this instead, so an
/// oversized event is told apart from a lost connection.
#[derive(Debug, Clone, Default)]
pub struct Refusal(Arc<OnceLock<Oversized>>);

impl Refusal {
    /// The limit the stream's peer broke, once it has.
    pub fn get(&self) -> Option<&Oversized> {
        self.0.get()
    }
}

fn invalid_data(err: Oversized) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err)
}

impl<S: AsyncRead + Unpin> AsyncRead for Bounded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(err) = this.scanner.failure() {
            return Poll::Ready(Err(invalid_data(err.clone())));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let read = buf.filled().get(before..).unwrap_or_default();
        let scanned = this.scanner.scan(read);
        if let Err(Rejected { err, .. }) = &scanned {
            let _ = this.refusal.0.set(err.clone());
        }
        match scanned {
            Ok(()) => Poll::Ready(Ok(())),
            Err(Rejected { clean: 0, err }) => Poll::Ready(Err(invalid_data(err))),
            Err(Rejected { clean, .. }) => {
                // Hand on the complete replies; the scanner is poisoned, so the next read fails.
                buf.set_filled(before + clean);
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Bounded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use futures_util::StreamExt;
    use proptest::prelude::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    fn small() -> RespLimits {
        RespLimits {
            max_frame_bytes: 64,
            max_elements: 4,
            max_depth: 3,
        }
    }

    fn between_replies(s: &FrameScanner) -> bool {
        s.frame_bytes == 0 && s.open.is_empty() && s.pending == 0 && matches!(s.state, State::Type)
    }

    /// One of every type, each within `small()`.
    const VALID: &[(&str, &[u8])] = &[
        ("simple string", b"+OK\r\n"),
        ("error", b"-ERR unknown command\r\n"),
        ("integer", b":-42\r\n"),
        ("double", b",3.14\r\n"),
        (
            "big number",
            b"(3492890328409238509324850943850943825024385\r\n",
        ),
        ("boolean", b"#t\r\n"),
        ("null", b"_\r\n"),
        ("line with a lone CR and LF", b"+a\rb\nc\r\r\n"),
        ("bulk string", b"$5\r\nhello\r\n"),
        ("bulk string holding CRLFs", b"$4\r\n\r\n\r\n\r\n"),
        ("empty bulk string", b"$0\r\n\r\n"),
        ("null bulk string", b"$-1\r\n"),
        ("blob error", b"!21\r\nSYNTAX invalid syntax\r\n"),
        ("verbatim string", b"=15\r\ntxt:Some string\r\n"),
        ("array", b"*2\r\n$3\r\nfoo\r\n:1\r\n"),
        ("empty array", b"*0\r\n"),
        ("null array", b"*-1\r\n"),
        ("set", b"~2\r\n+a\r\n+b\r\n"),
        ("map", b"%2\r\n+first\r\n:1\r\n+second\r\n:2\r\n"),
        ("empty map", b"%0\r\n"),
        (
            "attribute and its value",
            b"|1\r\n+key-popularity\r\n:1\r\n*1\r\n:2\r\n",
        ),
        ("push", b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n"),
        ("empty push", b">0\r\n"),
        ("nested to the depth limit", b"*1\r\n*1\r\n*1\r\n:1\r\n"),
        ("elements at the limit", b"*4\r\n_\r\n_\r\n_\r\n_\r\n"),
    ];

    #[test]
    fn every_type_passes_whole_and_byte_by_byte() {
        for (name, bytes) in VALID {
            let mut whole = FrameScanner::new(small());
            assert_eq!(whole.feed(bytes), Ok(()), "{name}");
            assert!(between_replies(&whole), "{name}: not at a reply boundary");

            let mut bytewise = FrameScanner::new(small());
            for (i, b) in bytes.iter().enumerate() {
                assert_eq!(bytewise.feed(&[*b]), Ok(()), "{name}: byte {i}");
                let last = i + 1 == bytes.len();
                assert_eq!(between_replies(&bytewise), last, "{name}: byte {i}");
            }
        }
    }

    #[test]
    fn pipelined_replies_pass_in_any_split() {
        let stream: Vec<u8> = VALID.iter().flat_map(|(_, b)| b.iter().copied()).collect();
        for size in [1, 2, 3, 7, 64, stream.len()] {
            let mut s = FrameScanner::new(small());
            for chunk in stream.chunks(size) {
                assert_eq!(s.feed(chunk), Ok(()), "chunks of {size}");
            }
            assert!(between_replies(&s), "chunks of {size}");
        }
    }

    fn bulk(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(format!("${}\r\n{s}\r\n", s.len()).as_bytes());
    }

    /// What the proxy reads from sentinels, in the sizes real ones send.
    fn sentinel_replies() -> Vec<(&'static str, Vec<u8>)> {
        let fields = [
            ("name", "mymaster"),
            ("ip", "10.0.0.1"),
            ("port", "6379"),
            ("runid", "8b2d3e1c6d0f4a9b8c7d6e5f4a3b2c1d0e9f8a7b"),
            ("flags", "master"),
            ("link-pending-commands", "0"),
            ("link-refcount", "1"),
            ("last-ping-sent", "0"),
            ("last-ok-ping-reply", "534"),
            ("last-ping-reply", "534"),
            ("down-after-milliseconds", "5000"),
            ("info-refresh", "8418"),
            ("role-reported", "master"),
            ("role-reported-time", "3254301"),
            ("config-epoch", "17"),
            ("num-slaves", "2"),
            ("num-other-sentinels", "2"),
            ("quorum", "2"),
            ("failover-timeout", "60000"),
            ("parallel-syncs", "1"),
        ];
        let mut master = format!("*{}\r\n", fields.len() * 2).into_bytes();
        for (k, v) in fields {
            bulk(&mut master, k);
            bulk(&mut master, v);
        }
        let mut replicas = b"*50\r\n".to_vec();
        for _ in 0..50 {
            replicas.extend_from_slice(&master);
        }
        let mut role = b"*3\r\n$6\r\nmaster\r\n:3129659\r\n*2\r\n".to_vec();
        for port in ["6380", "6381"] {
            role.extend_from_slice(b"*3\r\n");
            bulk(&mut role, "10.0.0.2");
            bulk(&mut role, port);
            bulk(&mut role, "3129242");
        }
        let mut message = b"*3\r\n".to_vec();
        bulk(&mut message, "message");
        bulk(&mut message, "+switch-master");
        bulk(&mut message, "mymaster 10.0.0.1 6379 10.0.0.2 6380");
        let mut hello = b"%7\r\n".to_vec();
        for (k, v) in [
            ("server", "redis"),
            ("version", "7.2.4"),
            ("mode", "sentinel"),
        ] {
            bulk(&mut hello, k);
            bulk(&mut hello, v);
        }
        hello.extend_from_slice(b"$5\r\nproto\r\n:3\r\n$2\r\nid\r\n:11\r\n$4\r\nrole\r\n");
        hello.extend_from_slice(b"$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n");
        let mut push = b">3\r\n".to_vec();
        bulk(&mut push, "message");
        bulk(&mut push, "__sentinel__:hello");
        bulk(
            &mut push,
            "10.0.0.9,26379,4f1c,17,mymaster,10.0.0.1,6379,17",
        );
        vec![
            ("SENTINEL MASTER", master),
            ("SENTINEL REPLICAS of 50", replicas),
            ("ROLE", role),
            ("pub/sub message", message),
            ("HELLO 3", hello),
            ("RESP3 push", push),
        ]
    }

    #[test]
    fn real_sentinel_replies_pass_the_defaults() {
        for (name, bytes) in sentinel_replies() {
            let mut whole = FrameScanner::new(RespLimits::default());
            assert_eq!(whole.feed(&bytes), Ok(()), "{name}");
            assert!(between_replies(&whole), "{name}");
            let mut bytewise = FrameScanner::new(RespLimits::default());
            for b in &bytes {
                assert_eq!(bytewise.feed(&[*b]), Ok(()), "{name}");
            }
            assert!(between_replies(&bytewise), "{name}");
        }
    }

    struct Violation {
        name: &'static str,
        limits: RespLimits,
        bytes: Vec<u8>,
        /// Bytes accepted before the one that must be refused.
        accepted: usize,
        want: Oversized,
    }

    fn violation(
        name: &'static str,
        limits: RespLimits,
        bytes: impl AsRef<[u8]>,
        accepted: usize,
        want: Oversized,
    ) -> Violation {
        Violation {
            name,
            limits,
            bytes: bytes.as_ref().to_vec(),
            accepted,
            want,
        }
    }

    fn malformed_any() -> Oversized {
        Oversized::Malformed { what: "" }
    }

    fn violations() -> Vec<Violation> {
        let d = RespLimits::default();
        let s = small();
        let tiny_frame = RespLimits {
            max_frame_bytes: 16,
            max_elements: 100,
            max_depth: 3,
        };
        let frame = |at_least, limit| Oversized::Frame { at_least, limit };
        let elements = |declared, limit| Oversized::Elements { declared, limit };
        let mut long_line = b"+".to_vec();
        long_line.extend_from_slice(&[b'a'; 62]);
        long_line.extend_from_slice(b"\r\n");
        vec![
            violation(
                "2 GiB string",
                d,
                b"$2147483648\r\nxx",
                12,
                Oversized::String {
                    declared: 2_147_483_648,
                    limit: 1_048_576,
                },
            ),
            violation(
                "string over the frame limit",
                s,
                b"$65\r\n",
                4,
                Oversized::String {
                    declared: 65,
                    limit: 64,
                },
            ),
            violation(
                "blob error over the frame limit",
                s,
                b"!65\r\n",
                4,
                Oversized::String {
                    declared: 65,
                    limit: 64,
                },
            ),
            violation(
                "verbatim string over the frame limit",
                s,
                b"=65\r\n",
                4,
                Oversized::String {
                    declared: 65,
                    limit: 64,
                },
            ),
            violation(
                "u64::MAX string",
                s,
                b"$18446744073709551615\r\n",
                22,
                Oversized::String {
                    declared: u64::MAX,
                    limit: 64,
                },
            ),
            violation(
                "string past the rest of the frame",
                s,
                b"*2\r\n$58\r\nxx",
                8,
                frame(72, 64),
            ),
            violation(
                "string of exactly the frame limit",
                s,
                b"$64\r\n",
                4,
                frame(71, 64),
            ),
            violation(
                "2e9-element array",
                d,
                b"*2000000000\r\n",
                12,
                elements(2_000_000_000, 100_000),
            ),
            violation(
                "array over the element limit",
                s,
                b"*5\r\n",
                3,
                elements(5, 4),
            ),
            violation(
                "set over the element limit",
                s,
                b"~5\r\n",
                3,
                elements(5, 4),
            ),
            violation(
                "push over the element limit",
                s,
                b">5\r\n",
                3,
                elements(5, 4),
            ),
            violation(
                "map over the element limit",
                s,
                b"%3\r\n",
                3,
                elements(6, 4),
            ),
            violation(
                "attribute over the element limit",
                s,
                b"|2\r\n",
                3,
                elements(5, 4),
            ),
            violation(
                "aggregate that cannot fit the frame",
                tiny_frame,
                b"*5\r\n",
                3,
                frame(19, 16),
            ),
            violation(
                "nested too deep",
                s,
                b"*1\r\n*1\r\n*1\r\n*1\r\n",
                15,
                Oversized::Depth { limit: 3 },
            ),
            violation(
                "empty aggregate too deep",
                s,
                b"*1\r\n~1\r\n>1\r\n%0\r\n",
                15,
                Oversized::Depth { limit: 3 },
            ),
            violation(
                "line past the frame limit",
                s,
                &long_line,
                64,
                frame(65, 64),
            ),
            violation(
                "empty array past the frame limit",
                RespLimits {
                    max_frame_bytes: 3,
                    ..s
                },
                b"*0\r\n",
                3,
                frame(4, 3),
            ),
            violation(
                "unknown type byte",
                s,
                b"?x\r\n",
                0,
                Oversized::UnknownType { byte: b'?' },
            ),
            violation(
                "RESP3 streamed chunk",
                s,
                b";4\r\nHell\r\n",
                0,
                Oversized::UnknownType { byte: b';' },
            ),
            violation(
                "RESP3 streamed end",
                s,
                b".\r\n",
                0,
                Oversized::UnknownType { byte: b'.' },
            ),
            violation(
                "unknown type inside an array",
                s,
                b"*2\r\n+a\r\n\x00",
                8,
                Oversized::UnknownType { byte: 0 },
            ),
            violation(
                "streamed string",
                s,
                b"$?\r\n;4\r\nHell\r\n",
                1,
                Oversized::Streamed,
            ),
            violation("streamed array", s, b"*?\r\n", 1, Oversized::Streamed),
            violation("streamed map", s, b"%?\r\n", 1, Oversized::Streamed),
            violation("non-numeric length", s, b"$abc\r\n", 1, malformed_any()),
            violation("empty length", s, b"$\r\n", 1, malformed_any()),
            violation("length with a sign", s, b"$+5\r\n", 1, malformed_any()),
            violation("length with a space", s, b"$ 5\r\n", 1, malformed_any()),
            violation(
                "negative length other than -1",
                s,
                b"$-2\r\n",
                2,
                malformed_any(),
            ),
            violation("null map", s, b"%-1\r\n", 1, malformed_any()),
            violation("null blob error", s, b"!-1\r\n", 1, malformed_any()),
            violation("lone CR in a length", s, b"$5\rx", 3, malformed_any()),
            violation(
                "LF without CR after a length",
                s,
                b"$5\n",
                2,
                malformed_any(),
            ),
            violation(
                "21-digit length",
                s,
                format!("${}", "1".repeat(21)),
                21,
                malformed_any(),
            ),
            violation(
                "length over u64",
                s,
                b"$18446744073709551616\r\n",
                20,
                malformed_any(),
            ),
            violation(
                "string not followed by CRLF",
                s,
                b"$1\r\naXY",
                5,
                malformed_any(),
            ),
        ]
    }

    fn same(got: &Oversized, want: &Oversized) -> bool {
        match want {
            Oversized::Malformed { .. } => matches!(got, Oversized::Malformed { .. }),
            want => got == want,
        }
    }

    #[test]
    fn every_violation_is_refused_at_its_byte() {
        for v in violations() {
            let mut whole = FrameScanner::new(v.limits);
            let got = whole.feed(&v.bytes).expect_err(v.name);
            assert!(same(&got, &v.want), "{}: {got:?}", v.name);

            let mut bytewise = FrameScanner::new(v.limits);
            for (i, b) in v.bytes.iter().enumerate().take(v.accepted) {
                assert_eq!(bytewise.feed(&[*b]), Ok(()), "{}: byte {i}", v.name);
            }
            let got = bytewise
                .feed(&v.bytes[v.accepted..=v.accepted])
                .expect_err(v.name);
            assert!(same(&got, &v.want), "{}: {got:?}", v.name);
            // Poisoned: anything after fails the same way.
            assert_eq!(bytewise.feed(b"+OK\r\n"), Err(got.clone()), "{}", v.name);
            assert_eq!(bytewise.failure(), Some(&got), "{}", v.name);
        }
    }

    #[test]
    fn the_frame_limit_is_inclusive() {
        let s = small();
        let mut fits = b"$57\r\n".to_vec();
        fits.extend_from_slice(&[b'x'; 57]);
        fits.extend_from_slice(b"\r\n");
        assert_eq!(fits.len(), 64);
        let mut line = b"+".to_vec();
        line.extend_from_slice(&[b'a'; 61]);
        line.extend_from_slice(b"\r\n");
        assert_eq!(line.len(), 64);
        for reply in [fits, line] {
            let mut scanner = FrameScanner::new(s);
            // Twice: the count starts over with each reply.
            assert_eq!(scanner.feed(&reply), Ok(()));
            assert_eq!(scanner.feed(&reply), Ok(()));
        }
    }

    #[test]
    fn messages_give_numbers_and_never_peer_bytes() {
        let big = FrameScanner::new(RespLimits::default())
            .feed(b"$2147483648\r\n")
            .expect_err("over the limit");
        assert_eq!(
            big.to_string(),
            "peer reply declares a 2147483648-byte string; the limit is 1048576"
        );
        let mut secret = b"*1\r\n+".to_vec();
        secret.extend(b"secret-token ".iter().cycle().take(100));
        let long = FrameScanner::new(small())
            .feed(&secret)
            .expect_err("over the limit");
        assert_eq!(
            long.to_string(),
            "peer reply is at least 65 bytes long; the limit is 64"
        );
        for v in violations() {
            let err = FrameScanner::new(v.limits)
                .feed(&v.bytes)
                .expect_err(v.name);
            let text = err.to_string();
            assert!(text.starts_with(MARKER), "{}: {text}", v.name);
            assert!(!text.contains("secret") && !text.contains("Hell"), "{text}");
        }
        assert_eq!(
            FrameScanner::new(small())
                .feed(b"?")
                .map_err(|e| e.to_string()),
            Err("peer reply has unknown type byte 0x3f".to_string())
        );
    }

    #[test]
    fn complete_replies_before_a_refused_one_are_clean() {
        let mut s = FrameScanner::new(small());
        let r = s.scan(b"+OK\r\n:1\r\n$99\r\n").expect_err("over");
        assert_eq!(r.clean, 9);

        // The refused reply began in an earlier piece: nothing of this one is clean.
        let mut s = FrameScanner::new(small());
        assert!(s.scan(b"*2\r\n+a\r\n").is_ok());
        assert_eq!(
            s.scan(b"$99\r\n").map_err(|r| r.clean).expect_err("over"),
            0
        );

        // A reply that began earlier and ends in this piece is clean.
        let mut s = FrameScanner::new(small());
        assert!(s.scan(b"*2\r\n+a\r\n").is_ok());
        assert_eq!(
            s.scan(b"+b\r\n$99\r\n")
                .map_err(|r| r.clean)
                .expect_err("over"),
            4
        );
    }

    #[test]
    fn bounded_is_send_and_unpin() {
        fn check<T: Send + Unpin + AsyncRead + AsyncWrite>() {}
        check::<Bounded<DuplexStream>>();
        check::<Bounded<tokio::net::TcpStream>>();
    }

    #[tokio::test]
    async fn bounded_passes_replies_through_and_writes_unchanged() {
        let (ours, mut peer) = tokio::io::duplex(64 * 1024);
        let mut bounded = Bounded::new(ours, small());
        let stream: Vec<u8> = VALID.iter().flat_map(|(_, b)| b.iter().copied()).collect();
        peer.write_all(&stream).await.expect("peer write");
        bounded
            .write_all(b"*1\r\n$4\r\nPING\r\n")
            .await
            .expect("write");
        drop(peer.shutdown().await);
        let mut got = Vec::new();
        bounded.read_to_end(&mut got).await.expect("valid replies");
        assert_eq!(got, stream);
        let mut sent = [0u8; 14];
        peer.read_exact(&mut sent).await.expect("peer read");
        assert_eq!(&sent, b"*1\r\n$4\r\nPING\r\n");
        assert!(bounded.get_ref().is_write_vectored() == bounded.is_write_vectored());
    }

    #[tokio::test]
    async fn bounded_refuses_then_stays_poisoned() {
        let (ours, mut peer) = tokio::io::duplex(64 * 1024);
        let mut bounded = Bounded::new(ours, small());
        let refusal = bounded.refusal();
        peer.write_all(b"+OK\r\n$65\r\nxxxx")
            .await
            .expect("peer write");
        let mut buf = [0u8; 64];
        // The complete reply before the refused one still arrives.
        let n = bounded.read(&mut buf).await.expect("the clean reply");
        assert_eq!(&buf[..n], b"+OK\r\n");
        // The refusal is known as soon as it is made, before the read that reports it.
        assert_eq!(
            refusal.get(),
            Some(&Oversized::String {
                declared: 65,
                limit: 64
            })
        );
        for _ in 0..3 {
            let err = bounded.read(&mut buf).await.expect_err("poisoned");
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            let inner = err.get_ref().and_then(|e| e.downcast_ref::<Oversized>());
            assert_eq!(
                inner,
                Some(&Oversized::String {
                    declared: 65,
                    limit: 64
                })
            );
            assert!(is_oversized(&err));
        }
    }

    #[test]
    fn is_oversized_follows_the_chains_redis_builds() {
        let over = Oversized::Depth { limit: 16 };
        let as_io = || io::Error::new(io::ErrorKind::InvalidData, over.clone());
        // How redis-rs 1.8 wraps the read error (`From<io::Error> for RedisError`).
        let redis_err = redis::RedisError::from(as_io());
        assert_eq!(redis_err.kind(), redis::ErrorKind::Io);
        assert_eq!(redis_err.to_string(), over.to_string());
        let source = redis_err.source().expect("RedisError has a source");
        // The source is the Arc that redis-rs keeps, not the io::Error ...
        assert!(source.downcast_ref::<io::Error>().is_none());
        assert!(source
            .downcast_ref::<Arc<dyn Error + Send + Sync>>()
            .is_some());
        // ... and io::Error's own source skips the error it carries: the chain ends there.
        assert!(source.source().is_none());
        assert!(is_oversized(&redis_err));
        assert!(is_oversized(&over));
        assert!(is_oversized(&as_io()));
        // Only the text survived.
        let text_only = io::Error::new(io::ErrorKind::InvalidData, over.to_string());
        assert!(is_oversized(&text_only));
        assert!(is_oversized(&redis::RedisError::from(text_only)));

        assert!(!is_oversized(&io::Error::from(io::ErrorKind::BrokenPipe)));
        assert!(!is_oversized(&redis::RedisError::from(io::Error::from(
            io::ErrorKind::InvalidData
        ))));
        // Text alone counts only where a peer cannot choose it: not in an error reply.
        let spoof = redis::parse_redis_value(
            b"-ERR peer reply declares a 5-byte string; the limit is 1\r\n",
        )
        .expect("an error reply")
        .extract_error()
        .expect_err("an error reply");
        assert!(!is_oversized(&spoof));
        let other_kind = io::Error::other(over.to_string());
        assert!(!is_oversized(&other_kind));
    }

    /// Counts the bytes a stream hands on: what the `redis` crate received.
    struct Counted<S> {
        inner: S,
        delivered: Arc<AtomicUsize>,
    }

    impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            this.delivered
                .fetch_add(buf.filled().len() - before, Ordering::SeqCst);
            Poll::Ready(Ok(()))
        }
    }

    impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
        }
        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().inner).poll_flush(cx)
        }
        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
        }
    }

    /// A client end for the `redis` crate, bounded by the defaults and counted, and the peer end.
    fn wire() -> (
        Counted<Bounded<DuplexStream>>,
        DuplexStream,
        Arc<AtomicUsize>,
    ) {
        let (ours, peer) = tokio::io::duplex(64 * 1024);
        let delivered = Arc::new(AtomicUsize::new(0));
        let stream = Counted {
            inner: Bounded::new(ours, RespLimits::default()),
            delivered: delivered.clone(),
        };
        (stream, peer, delivered)
    }

    /// No handshake: RESP2, no password, db 0, no `CLIENT SETINFO`.
    fn info() -> redis::RedisConnectionInfo {
        redis::RedisConnectionInfo::default().set_skip_set_lib_name()
    }

    const WAIT: Duration = Duration::from_secs(10);
    const HUGE: &str = "peer reply declares a 2147483648-byte string; the limit is 1048576";

    async fn expect_request(peer: &mut DuplexStream, want: &[u8]) {
        let mut got = vec![0u8; want.len()];
        peer.read_exact(&mut got).await.expect("the request");
        assert_eq!(got, want);
    }

    /// The peer's side ends: the client dropped the connection.
    async fn expect_closed(peer: &mut DuplexStream) {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(WAIT, peer.read_to_end(&mut rest)).await;
        assert!(matches!(read, Ok(Ok(0))), "{read:?}");
    }

    #[tokio::test]
    async fn multiplexed_connection_fails_the_query_at_a_huge_string_header() {
        let (stream, mut peer, delivered) = wire();
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
        let (mut conn, driver) =
            redis::aio::MultiplexedConnection::new_with_config(&info(), stream, config)
                .await
                .expect("no handshake to fail");
        let driver = tokio::spawn(driver);
        let peer = tokio::spawn(async move {
            expect_request(&mut peer, b"*1\r\n$4\r\nPING\r\n").await;
            // Only the header; no payload ever follows.
            peer.write_all(b"$2147483648\r\n").await.expect("header");
            expect_closed(&mut peer).await;
        });
        let ping_cmd = redis::cmd("PING");
        let ping = ping_cmd.query_async::<redis::Value>(&mut conn);
        let err = tokio::time::timeout(WAIT, ping)
            .await
            .expect("refused at the header, not waiting for 2 GiB")
            .expect_err("refused");
        assert!(is_oversized(&err), "{err}");
        assert_eq!(err.kind(), redis::ErrorKind::Io);
        assert_eq!(err.to_string(), HUGE);
        // redis-rs never saw a byte of the reply, so it cannot have sized anything by it.
        assert_eq!(delivered.load(Ordering::SeqCst), 0);
        // And it dropped the connection.
        tokio::time::timeout(WAIT, driver)
            .await
            .expect("the driver ends")
            .expect("driver task");
        peer.await.expect("peer task");
        let again = ping_cmd.query_async::<redis::Value>(&mut conn);
        assert!(tokio::time::timeout(WAIT, again)
            .await
            .expect("fails at once")
            .is_err());
    }

    const SUBSCRIBE: &[u8] = b"*2\r\n$9\r\nSUBSCRIBE\r\n$2\r\nch\r\n";
    const CONFIRMED: &[u8] = b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n";
    const HUGE_MESSAGE: &[u8] = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2147483648\r\n";

    #[tokio::test]
    async fn pubsub_ends_at_a_huge_message_header() {
        let (stream, mut peer, delivered) = wire();
        let refusal = stream.inner.refusal();
        let mut pubsub = redis::aio::PubSub::new(&info(), stream)
            .await
            .expect("no handshake to fail");
        let peer = tokio::spawn(async move {
            expect_request(&mut peer, SUBSCRIBE).await;
            // In one write: the confirmation reaches the client, the message does not.
            peer.write_all(&[CONFIRMED, HUGE_MESSAGE].concat())
                .await
                .expect("reply");
            expect_closed(&mut peer).await;
        });
        tokio::time::timeout(WAIT, pubsub.subscribe("ch"))
            .await
            .expect("in time")
            .expect("the confirmation before the message is handed on");
        // With no request waiting, redis-rs has nobody to give the error to: the stream ends.
        let next = tokio::time::timeout(WAIT, pubsub.on_message().next()).await;
        assert!(matches!(next, Ok(None)), "{next:?}");
        assert_eq!(delivered.load(Ordering::SeqCst), CONFIRMED.len());
        // ... but the stream's owner can still tell why.
        assert_eq!(
            refusal.get(),
            Some(&Oversized::String {
                declared: 2_147_483_648,
                limit: RespLimits::default().max_frame_bytes
            })
        );
        peer.await.expect("peer task");
    }

    #[tokio::test]
    async fn pubsub_fails_the_waiting_request_at_a_huge_message_header() {
        let (stream, mut peer, delivered) = wire();
        let mut pubsub = redis::aio::PubSub::new(&info(), stream)
            .await
            .expect("no handshake to fail");
        let peer = tokio::spawn(async move {
            expect_request(&mut peer, SUBSCRIBE).await;
            peer.write_all(CONFIRMED).await.expect("confirmation");
            expect_request(&mut peer, b"*1\r\n$4\r\nPING\r\n").await;
            peer.write_all(HUGE_MESSAGE).await.expect("message");
            expect_closed(&mut peer).await;
        });
        tokio::time::timeout(WAIT, pubsub.subscribe("ch"))
            .await
            .expect("in time")
            .expect("subscribed");
        let err = tokio::time::timeout(WAIT, pubsub.ping::<redis::Value>())
            .await
            .expect("refused at the header")
            .expect_err("refused");
        assert!(is_oversized(&err), "{err}");
        assert_eq!(err.to_string(), HUGE);
        assert_eq!(delivered.load(Ordering::SeqCst), CONFIRMED.len());
        let next = tokio::time::timeout(WAIT, pubsub.on_message().next()).await;
        assert!(matches!(next, Ok(None)), "{next:?}");
        peer.await.expect("peer task");
    }

    // Property tests: random values, serialised, fed in random pieces.

    /// A RESP value as the tests build it.
    #[derive(Debug, Clone)]
    enum V {
        /// A simple type and its line (without a CRLF in it).
        Line(u8, Vec<u8>),
        /// `$ ! =` and a payload; `None` is `$-1`.
        Str(u8, Option<Vec<u8>>),
        /// `* ~ > % |` and its values (pairs flattened, an attribute's annotated value last);
        /// `None` is `*-1`.
        Agg(u8, Option<Vec<V>>),
        /// Over a limit: serialising writes its header(s) and stops the stream there.
        Hostile(Hostile),
    }

    #[derive(Debug, Clone)]
    enum Hostile {
        /// A string declaring this many bytes.
        Str(u8, u64),
        /// An aggregate declaring this count (pairs for `%` and `|`).
        Agg(u8, u64),
        /// This many nested `*1`.
        Deep(usize),
    }

    /// Writes `v`; false when a hostile header ended the stream.
    fn put(v: &V, out: &mut Vec<u8>) -> bool {
        match v {
            V::Line(kind, text) => {
                out.push(*kind);
                out.extend_from_slice(text);
                out.extend_from_slice(b"\r\n");
            }
            V::Str(_, None) => out.extend_from_slice(b"$-1\r\n"),
            V::Str(kind, Some(payload)) => {
                out.extend_from_slice(format!("{}{}\r\n", *kind as char, payload.len()).as_bytes());
                out.extend_from_slice(payload);
                out.extend_from_slice(b"\r\n");
            }
            V::Agg(_, None) => out.extend_from_slice(b"*-1\r\n"),
            V::Agg(kind, Some(items)) => {
                let count = match kind {
                    b'%' => items.len() / 2,
                    b'|' => (items.len() - 1) / 2,
                    _ => items.len(),
                };
                out.extend_from_slice(format!("{}{count}\r\n", *kind as char).as_bytes());
                for item in items {
                    if !put(item, out) {
                        return false;
                    }
                }
            }
            V::Hostile(Hostile::Str(kind, n) | Hostile::Agg(kind, n)) => {
                out.extend_from_slice(format!("{}{n}\r\n", *kind as char).as_bytes());
                return false;
            }
            V::Hostile(Hostile::Deep(n)) => {
                for _ in 0..*n {
                    out.extend_from_slice(b"*1\r\n");
                }
                return false;
            }
        }
        true
    }

    fn serialise(v: &V) -> Vec<u8> {
        let mut out = Vec::new();
        put(v, &mut out);
        out
    }

    fn depth(v: &V) -> usize {
        match v {
            V::Agg(_, Some(items)) => 1 + items.iter().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }

    fn widest(v: &V) -> usize {
        match v {
            V::Agg(_, Some(items)) => items.iter().map(widest).fold(items.len(), usize::max),
            _ => 0,
        }
    }

    /// The tightest limits `values` pass.
    fn tight(values: &[V]) -> RespLimits {
        RespLimits {
            max_frame_bytes: values.iter().map(|v| serialise(v).len()).max().unwrap_or(0),
            max_elements: values.iter().map(widest).max().unwrap_or(0),
            max_depth: values.iter().map(depth).max().unwrap_or(0),
        }
    }

    fn within(values: &[V], limits: RespLimits) -> bool {
        let t = tight(values);
        t.max_frame_bytes <= limits.max_frame_bytes
            && t.max_elements <= limits.max_elements
            && t.max_depth <= limits.max_depth
    }

    fn line_text() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![
            Just(b'\r'),
            Just(b'\n'),
            Just(b' '),
            b'a'..=b'z',
            b'0'..=b'9'
        ];
        prop::collection::vec(byte, 0..24).prop_map(|mut text| {
            // A line ends at its first CRLF.
            for i in 1..text.len() {
                if text[i - 1] == b'\r' && text[i] == b'\n' {
                    text[i] = b'n';
                }
            }
            text
        })
    }

    fn value() -> impl Strategy<Value = V> {
        let leaf = prop_oneof![
            (prop::sample::select(&b"+-:,(#_"[..]), line_text()).prop_map(|(k, t)| V::Line(k, t)),
            (
                prop::sample::select(&b"$!="[..]),
                prop::collection::vec(any::<u8>(), 0..40)
            )
                .prop_map(|(k, p)| V::Str(k, Some(p))),
            Just(V::Str(b'$', None)),
            Just(V::Agg(b'*', None)),
        ];
        leaf.prop_recursive(5, 48, 6, |inner| {
            let pairs = |n| prop::collection::vec((inner.clone(), inner.clone()), 0..n);
            let flat = |pairs: Vec<(V, V)>| pairs.into_iter().flat_map(|(k, v)| [k, v]).collect();
            prop_oneof![
                (
                    prop::sample::select(&b"*~>"[..]),
                    prop::collection::vec(inner.clone(), 0..7)
                )
                    .prop_map(|(k, items)| V::Agg(k, Some(items))),
                pairs(4).prop_map(move |p| V::Agg(b'%', Some(flat(p)))),
                (pairs(3), inner.clone()).prop_map(move |(p, data)| {
                    let mut items: Vec<V> = flat(p);
                    items.push(data);
                    V::Agg(b'|', Some(items))
                }),
            ]
        })
    }

    /// Values at most this big are generated whole; hostile ones go past it.
    fn host_limits() -> RespLimits {
        RespLimits {
            max_frame_bytes: 4096,
            max_elements: 8,
            max_depth: 6,
        }
    }

    fn hostile() -> impl Strategy<Value = Hostile> {
        let l = host_limits();
        let frame = l.max_frame_bytes as u64;
        let elements = l.max_elements as u64;
        prop_oneof![
            (prop::sample::select(&b"$!="[..]), frame + 1..=u64::MAX)
                .prop_map(|(k, n)| Hostile::Str(k, n)),
            (prop::sample::select(&b"$!="[..]), frame + 1..frame + 100)
                .prop_map(|(k, n)| Hostile::Str(k, n)),
            // Within the string limit, but no frame holding it also holds anything else.
            Just(Hostile::Str(b'$', frame)),
            (prop::sample::select(&b"*~>"[..]), elements + 1..=u64::MAX)
                .prop_map(|(k, n)| Hostile::Agg(k, n)),
            (
                prop::sample::select(&b"*~>"[..]),
                elements + 1..elements + 3
            )
                .prop_map(|(k, n)| Hostile::Agg(k, n)),
            (
                prop::sample::select(&b"%|"[..]),
                elements / 2 + 1..=u64::MAX / 2
            )
                .prop_map(|(k, n)| Hostile::Agg(k, n)),
            Just(Hostile::Deep(l.max_depth + 1)),
        ]
    }

    /// Where a value can go in `v`: anywhere in an array, set or push; first in a map or
    /// attribute (as a key, with a null for its value).
    fn slots(v: &V) -> usize {
        match v {
            V::Agg(kind, Some(items)) => {
                let here = if matches!(kind, b'%' | b'|') {
                    1
                } else {
                    items.len() + 1
                };
                here + items.iter().map(slots).sum::<usize>()
            }
            _ => 0,
        }
    }

    fn insert(v: &mut V, slot: &mut usize, new: &V) -> bool {
        if let V::Agg(kind, Some(items)) = v {
            let pairs = matches!(kind, b'%' | b'|');
            let here = if pairs { 1 } else { items.len() + 1 };
            if *slot < here {
                if pairs {
                    items.insert(0, V::Line(b'_', Vec::new()));
                    items.insert(0, new.clone());
                } else {
                    items.insert(*slot, new.clone());
                }
                return true;
            }
            *slot -= here;
            return items.iter_mut().any(|item| insert(item, slot, new));
        }
        false
    }

    /// `bytes` in pieces of the sizes in `cuts` (cycled), each with its offset.
    fn pieces<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<(usize, &'a [u8])> {
        let mut out = Vec::new();
        let mut at = 0;
        for cut in cuts.iter().cycle() {
            if at >= bytes.len() {
                break;
            }
            let end = (at + cut).min(bytes.len());
            out.push((at, &bytes[at..end]));
            at = end;
        }
        out
    }

    fn config() -> ProptestConfig {
        ProptestConfig {
            cases: 256,
            // Nothing written into src/; a failure prints its minimal case.
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    proptest! {
        #![proptest_config(config())]

        /// Values at exactly the tightest limits they fit pass, in any pieces.
        #[test]
        fn values_within_the_limits_pass_in_any_pieces(
            values in prop::collection::vec(value(), 1..4),
            cuts in prop::collection::vec(1usize..48, 1..16),
        ) {
            let limits = tight(&values);
            let stream: Vec<u8> = values.iter().flat_map(serialise).collect();
            let mut scanner = FrameScanner::new(limits);
            for (at, piece) in pieces(&stream, &cuts) {
                prop_assert_eq!(scanner.feed(piece), Ok(()), "at {}", at);
            }
            prop_assert!(between_replies(&scanner));
        }

        /// One less on any limit the values reach refuses them.
        #[test]
        fn one_below_a_reached_limit_is_refused(
            values in prop::collection::vec(value(), 1..4),
            which in 0usize..3,
            cuts in prop::collection::vec(1usize..48, 1..16),
        ) {
            let mut limits = tight(&values);
            let reached = match which {
                0 => &mut limits.max_frame_bytes,
                1 => &mut limits.max_elements,
                _ => &mut limits.max_depth,
            };
            prop_assume!(*reached > 0);
            *reached -= 1;
            let stream: Vec<u8> = values.iter().flat_map(serialise).collect();
            let mut scanner = FrameScanner::new(limits);
            let refused = pieces(&stream, &cuts).into_iter().any(|(_, p)| scanner.feed(p).is_err());
            prop_assert!(refused);
        }

        /// A value over a limit, anywhere among valid ones, is refused by the end of its header:
        /// before any payload (the stream ends with the header; 64 payload bytes follow).
        #[test]
        fn a_value_over_a_limit_is_refused_by_its_header(
            before in prop::collection::vec(value(), 0..3),
            host in value(),
            slot in any::<prop::sample::Index>(),
            bad in hostile(),
            cuts in prop::collection::vec(1usize..48, 1..16),
        ) {
            prop_assume!(within(&before, host_limits()) && within(std::slice::from_ref(&host), host_limits()));
            let bad = V::Hostile(bad);
            let mut stream: Vec<u8> = before.iter().flat_map(serialise).collect();
            let mut host = host;
            let mut slot = slot.index(slots(&host) + 1);
            if insert(&mut host, &mut slot, &bad) {
                put(&host, &mut stream);
            } else {
                put(&host, &mut stream);
                put(&bad, &mut stream);
            }
            let header_end = stream.len();
            stream.extend_from_slice(&[b'x'; 64]);
            let mut scanner = FrameScanner::new(host_limits());
            let refused_at = pieces(&stream, &cuts)
                .into_iter()
                .find(|(_, p)| scanner.feed(p).is_err())
                .map(|(at, _)| at);
            prop_assert!(refused_at.is_some_and(|at| at < header_end), "{:?} vs {}", refused_at, header_end);
            let err = scanner.failure().cloned();
            prop_assert!(err.is_some());
            prop_assert_eq!(scanner.feed(b"+OK\r\n").err(), err);
        }
    }
}
