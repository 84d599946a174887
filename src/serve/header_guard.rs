//! The header guard: how long and how large a client's request header may be, how long an idle
//! keepalive connection may wait and how long a client may leave its answer unread, on every
//! listener.
//!
//! Pingora 0.9 bounds each *read* of a first request header (60 s) but not the header as a whole;
//! after a connection's first request it waits for the next one with no timeout at all
//! (`respect_keepalive` makes it infinite for HTTP/1.1); and with h2c on it first peeks 24 bytes
//! for the HTTP/2 preface with no timeout. A client that trickles a byte every few seconds, or
//! connects and sends nothing, or sends one request and then nothing, holds a connection and a
//! task as long as it likes (slowloris). No `ProxyHttp` phase runs before a header is complete,
//! so the guard sits below Pingora's HTTP code: `GuardedApp` wraps the accepted stream in a
//! `GuardedStream` that watches the bytes going by.
//!
//! - A request header must be complete within `client_header_timeout_ms`, counted from accept for
//!   a connection's first request and from the first byte for later keepalive requests. Past it
//!   the client gets a 408 in its API's error format and the connection closes; a connection that
//!   sent nothing is closed without a word.
//! - A request header larger than `max_request_header_bytes` gets a 431 and the connection closes
//!   (Pingora's own cap is a fixed 1 MiB).
//! - A keepalive connection idle for `client_keepalive_timeout_ms` after the last byte of a
//!   response is closed.
//! - A write the client makes no room for within `client_send_timeout_ms` (it stopped reading)
//!   fails, so the answer and its upstream request are dropped instead of held forever (Pingora
//!   sets no downstream write timeout).
//! - After a 408/431, or any 4xx answer (a 413 sent from Content-Length while the client is
//!   still writing its body), the connection closes lingeringly, so the answer is not lost to a
//!   RST.
//!
//! The guard knows only where a header ends (`HeaderScan`, pure and unit-tested against
//! httparse by the fuzz targets); it learns that a response went out from the first write of a
//! final (non-1xx) status line, after which the next bytes read are the next request's header.
//! That relies on Pingora not reading a request body after answering (it closes the connection
//! when a response goes out before the body is read, `close_on_response_before_downstream_finish`,
//! and twinroute reads every body before answering). HTTP/2 connections (preface seen by the
//! peek) pass through untouched: h2 frames have their own flow, and `h2_idle_timeout` closes
//! idle ones.

use crate::model::endpoint::{Endpoint, Family};
use crate::model::ConnectionLimits;
use crate::observe::metrics::METRICS;
use crate::serve::state::Shared;
use crate::wire::errors::{ErrorKind, GatewayError};
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The HTTP/2 connection preface (RFC 9113 §3.4); Pingora peeks exactly this many bytes.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Bytes of a header's start kept to choose the error format (the request line's path).
const REQUEST_LINE_PREFIX: usize = 64;

/// Where a header scan stands after some bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// No blank line yet; more bytes are needed.
    Incomplete,
    /// The header ended within the bytes just fed; the rest (if any) is body.
    Complete,
    /// The header passed the size limit before it ended.
    TooLarge,
}

/// Finds the end of an HTTP/1 request header (the first blank line after the request line) in
/// bytes fed in arbitrary pieces, and counts them against a size limit.
///
/// Line ends are LF with any number of CRs before it, as httparse accepts; blank lines before the
/// request line are skipped (RFC 9112 §2.2), so sending them cannot end the header early.
#[derive(Debug, Clone)]
pub struct HeaderScan {
    max_bytes: usize,
    seen: usize,
    /// The current line so far holds only CRs (or nothing).
    line_blank: bool,
    /// A non-blank line (the request line) has ended.
    started: bool,
    prefix: [u8; REQUEST_LINE_PREFIX],
    prefix_len: usize,
}

impl HeaderScan {
    pub fn new(max_bytes: usize) -> HeaderScan {
        HeaderScan {
            max_bytes,
            seen: 0,
            line_blank: true,
            started: false,
            prefix: [0; REQUEST_LINE_PREFIX],
            prefix_len: 0,
        }
    }

    /// Bytes of this header seen so far.
    pub fn seen(&self) -> usize {
        self.seen
    }

    pub fn feed(&mut self, bytes: &[u8]) -> Scan {
        let keep = (REQUEST_LINE_PREFIX - self.prefix_len).min(bytes.len());
        self.prefix[self.prefix_len..self.prefix_len + keep].copy_from_slice(&bytes[..keep]);
        self.prefix_len += keep;

        let mut line_start = 0;
        for nl in memchr::memchr_iter(b'\n', bytes) {
            let blank = self.line_blank && bytes[line_start..nl].iter().all(|&b| b == b'\r');
            if blank && self.started {
                let consumed = self.seen + nl + 1;
                self.seen = consumed;
                return if consumed > self.max_bytes {
                    Scan::TooLarge
                } else {
                    Scan::Complete
                };
            }
            if !blank {
                self.started = true;
            }
            self.line_blank = true;
            line_start = nl + 1;
            if self.seen + line_start > self.max_bytes {
                self.seen += line_start;
                return Scan::TooLarge;
            }
        }
        self.line_blank = self.line_blank && bytes[line_start..].iter().all(|&b| b == b'\r');
        self.seen += bytes.len();
        if self.seen > self.max_bytes {
            Scan::TooLarge
        } else {
            Scan::Incomplete
        }
    }

    /// The error format of the endpoint the request line names (OpenAI's when unknown).
    pub fn family(&self) -> Family {
        let head = &self.prefix[..self.prefix_len];
        let skip = head
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        let head = &head[skip..];
        let path = head
            .split(|&b| b == b' ')
            .nth(1)
            .and_then(|p| std::str::from_utf8(p).ok())
            .map(|p| p.split('?').next().unwrap_or(p));
        path.and_then(Endpoint::from_path)
            .map_or(Family::OpenAi, Endpoint::family)
    }

    /// Whether the bytes so far start like a request line (a method token), as opposed to the
    /// left-over body of a request answered early, which gets no error response of its own.
    pub fn looks_like_request(&self) -> bool {
        self.prefix[..self.prefix_len]
            .iter()
            .find(|&&b| b != b'\r' && b != b'\n')
            .is_some_and(u8::is_ascii_uppercase)
    }
}

/// The whole raw HTTP/1.1 error response the guard writes before it closes a connection: the
/// same status, headers and body `Downstream::write_error` gives through Pingora, written by hand
/// because no Pingora session exists yet, plus `Connection: close`.
pub fn error_response(kind: ErrorKind, family: Family, message: &str) -> Vec<u8> {
    let error = GatewayError::new(kind, message);
    let body = error.body(family);
    let status = http::StatusCode::from_u16(kind.status()).unwrap_or(http::StatusCode::BAD_REQUEST);
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    )
    .into_bytes();
    if let Ok(header) = error.header(body.len()) {
        for (name, value) in header.headers.iter() {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out.extend_from_slice(&body);
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a request header, which must be complete by `deadline`.
    Header,
    /// Header done: body and response flow without the guard's limits.
    Request,
    /// A final response started; the next bytes read begin the next request's header, and a
    /// read left waiting past `deadline` (armed when it starts waiting) ends the connection.
    Responded,
    /// HTTP/2, or a connection the guard already ended: no more checks.
    Passthrough,
}

/// How long a refused connection is kept open to swallow what the client still sends.
const LINGER: Duration = Duration::from_secs(2);
/// Enough to drain a body of the default `max_body_bytes` and more; the time bound is the real one.
const LINGER_BYTES: usize = 16 << 20;
/// Refused connections lingering at once; past it they close at once (under attack, descriptors
/// matter more than a polite answer).
const MAX_LINGERING: usize = 1024;
static LINGERING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// An accepted client stream with the connection limits enforced on its reads and writes.
pub struct GuardedStream {
    inner: Stream,
    limits: ConnectionLimits,
    phase: Phase,
    scan: HeaderScan,
    deadline: Instant,
    /// `Responded` only: the idle deadline is set for the current wait.
    idle_armed: bool,
    /// A 1xx response header is being written and has not ended yet.
    informational_open: bool,
    /// Armed only when a read has to wait: most headers arrive in one read.
    timer: Option<Pin<Box<Sleep>>>,
    /// When the write now waiting for the client to read must give up, and its timer.
    write_deadline: Option<Instant>,
    write_timer: Option<Pin<Box<Sleep>>>,
    /// Bytes the preface check read ahead, handed out by `poll_read` before `inner` is read.
    ahead: Vec<u8>,
    ahead_pos: usize,
    /// Set once the guard ended the connection: `Some(kind)` fails every later read with it,
    /// `None` with `ended` is a quiet end of file (idle keepalive).
    refused: Option<io::ErrorKind>,
    ended: bool,
    /// Close lingeringly on drop (we answered while the client may still be sending).
    linger: bool,
}

impl std::fmt::Debug for GuardedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedStream")
            .field("inner", &self.inner)
            .field("phase", &self.phase)
            .finish()
    }
}

impl GuardedStream {
    pub fn new(inner: Stream, limits: ConnectionLimits) -> GuardedStream {
        GuardedStream {
            inner,
            limits,
            phase: Phase::Header,
            scan: HeaderScan::new(limits.max_header_bytes),
            deadline: Instant::now() + limits.header_timeout,
            idle_armed: false,
            informational_open: false,
            timer: None,
            write_deadline: None,
            write_timer: None,
            ahead: Vec::new(),
            ahead_pos: 0,
            refused: None,
            ended: false,
            linger: false,
        }
    }

    /// Record a refusal and count it; returns the error every read now fails with.
    fn mark_refused(&mut self, kind: ErrorKind, message: String) -> io::Error {
        let (reason, io_kind) = match kind {
            ErrorKind::HeaderTooLarge => ("header_too_large", io::ErrorKind::InvalidData),
            _ => ("header_timeout", io::ErrorKind::TimedOut),
        };
        METRICS.client_cut.with_label_values(&[reason]).inc();
        self.phase = Phase::Passthrough;
        self.refused = Some(io_kind);
        self.ended = true;
        io::Error::new(io_kind, message)
    }

    /// The answer to send before closing, if the client sent something that looks like a request
    /// (a connection that sent nothing, or the tail of a body, gets no answer).
    fn answer(&self, kind: ErrorKind, message: &str) -> Option<Vec<u8>> {
        (self.scan.seen() > 0 && self.scan.looks_like_request())
            .then(|| error_response(kind, self.scan.family(), message))
    }

    /// Answer `kind` and fail the read so Pingora closes the connection. The write is best
    /// effort: a client too slow to send its header is not waited on to read our answer either.
    fn refuse(&mut self, cx: &mut Context<'_>, kind: ErrorKind, message: String) -> io::Error {
        if let Some(response) = self.answer(kind, &message) {
            let _ = Pin::new(&mut self.inner).poll_write(cx, &response);
            let _ = Pin::new(&mut self.inner).poll_flush(cx);
            self.linger = true;
        }
        self.mark_refused(kind, message)
    }

    fn timeout_message(&self) -> String {
        format!(
            "the request header did not arrive within {} ms (client_header_timeout_ms)",
            self.limits.header_timeout.as_millis()
        )
    }

    fn too_large_message(&self) -> String {
        format!(
            "the request header is larger than {} bytes (max_request_header_bytes)",
            self.limits.max_header_bytes
        )
    }

    /// A read that returned nothing yet: wait on the deadline too.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        poll_timer(&mut self.timer, self.deadline, cx)
    }

    /// A write that returned `Pending` (the client is not reading): fail it once the client has
    /// made no room for `send_timeout`. Progress of any kind clears the clock.
    fn poll_write_deadline<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if !polled.is_pending() {
            self.write_deadline = None;
            return polled;
        }
        let deadline = *self
            .write_deadline
            .get_or_insert_with(|| Instant::now() + self.limits.send_timeout);
        match poll_timer(&mut self.write_timer, deadline, cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                METRICS
                    .client_cut
                    .with_label_values(&["send_timeout"])
                    .inc();
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the client read nothing for {} ms (client_send_timeout_ms)",
                        self.limits.send_timeout.as_millis()
                    ),
                )))
            }
        }
    }

    /// Track responses from what is written: a final (non-1xx) status line means the request
    /// is answered and the next bytes read are the next request. Pingora writes each response
    /// header with one `write_all`, so a status line starts a write; a 1xx header split across
    /// writes is followed until its blank line, so its tail is not taken for a final response.
    fn saw_write(&mut self, written: &[u8]) {
        if written.is_empty() {
            return;
        }
        if self.phase == Phase::Responded {
            // Idle time counts from the last byte sent, so a read left waiting while a long
            // response streams out is never taken for an idle connection.
            self.idle_armed = false;
            return;
        }
        if !matches!(self.phase, Phase::Request | Phase::Header) {
            return;
        }
        if written.len() >= 10 && written.starts_with(b"HTTP/1.") {
            if written[9] == b'1' {
                self.informational_open = memchr::memmem::find(written, b"\r\n\r\n").is_none();
                return;
            }
        } else if self.informational_open {
            if memchr::memmem::find(written, b"\r\n\r\n").is_some() {
                self.informational_open = false;
            }
            return;
        }
        self.informational_open = false;
        self.phase = Phase::Responded;
        self.idle_armed = false;
        // A 4xx may answer a request whose body was never read (a 413 from Content-Length, a
        // 401 before the body): if the connection then closes, close it lingeringly so the
        // client, which may still be writing that body, reads the answer instead of a reset.
        if written.len() >= 10 && written.starts_with(b"HTTP/1.") && written[9] == b'4' {
            self.linger = true;
        }
    }
}

/// Poll a lazily created timer set to `deadline`: created on first use, moved when the deadline
/// changed, so a connection allocates it at most once and only if it ever has to wait.
fn poll_timer(
    timer: &mut Option<Pin<Box<Sleep>>>,
    deadline: Instant,
    cx: &mut Context<'_>,
) -> Poll<()> {
    let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
    if timer.deadline() != deadline {
        timer.as_mut().reset(deadline);
    }
    timer.as_mut().poll(cx)
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(match this.refused {
                Some(kind) => Err(io::Error::new(kind, "connection ended by the header guard")),
                None => Ok(()),
            });
        }
        let before = buf.filled().len();
        let polled = if this.ahead_pos < this.ahead.len() {
            let n = buf.remaining().min(this.ahead.len() - this.ahead_pos);
            buf.put_slice(&this.ahead[this.ahead_pos..this.ahead_pos + n]);
            this.ahead_pos += n;
            if this.ahead_pos == this.ahead.len() {
                this.ahead = Vec::new();
                this.ahead_pos = 0;
            }
            Poll::Ready(Ok(()))
        } else {
            Pin::new(&mut this.inner).poll_read(cx, buf)
        };
        match this.phase {
            Phase::Request | Phase::Passthrough => return polled,
            Phase::Responded => match polled {
                Poll::Ready(Ok(())) if buf.filled().len() > before => {
                    // The first bytes of the next request on this keepalive connection.
                    this.phase = Phase::Header;
                    this.scan = HeaderScan::new(this.limits.max_header_bytes);
                    this.deadline = Instant::now() + this.limits.header_timeout;
                }
                Poll::Pending => {
                    // Pingora 0.9 waits for a keepalive request with no timeout after the first
                    // request on a connection (`respect_keepalive` makes it infinite).
                    if !this.idle_armed {
                        this.idle_armed = true;
                        this.deadline = Instant::now() + this.limits.idle_timeout;
                    }
                    return match this.poll_deadline(cx) {
                        Poll::Ready(()) => {
                            this.ended = true;
                            this.phase = Phase::Passthrough;
                            Poll::Ready(Ok(()))
                        }
                        Poll::Pending => Poll::Pending,
                    };
                }
                other => return other,
            },
            Phase::Header => {}
        }
        match polled {
            Poll::Ready(Ok(())) => {
                let fresh = &buf.filled()[before..];
                if fresh.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                match this.scan.feed(fresh) {
                    Scan::Complete => this.phase = Phase::Request,
                    Scan::TooLarge => {
                        buf.set_filled(before);
                        let msg = this.too_large_message();
                        return Poll::Ready(Err(this.refuse(cx, ErrorKind::HeaderTooLarge, msg)));
                    }
                    Scan::Incomplete => {
                        // A client trickling bytes never leaves the read pending for long.
                        if Instant::now() >= this.deadline {
                            buf.set_filled(before);
                            let msg = this.timeout_message();
                            return Poll::Ready(Err(this.refuse(
                                cx,
                                ErrorKind::RequestTimeout,
                                msg,
                            )));
                        }
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match this.poll_deadline(cx) {
                Poll::Ready(()) => {
                    let msg = this.timeout_message();
                    Poll::Ready(Err(this.refuse(cx, ErrorKind::RequestTimeout, msg)))
                }
                Poll::Pending => Poll::Pending,
            },
            err => err,
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            this.saw_write(&buf[..n.min(buf.len())]);
        }
        this.poll_write_deadline(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            if n > 0 {
                // A status line sits at the start of one slice.
                let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| b);
                this.saw_write(&first[..n.min(first.len())]);
            }
        }
        this.poll_write_deadline(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.poll_write_deadline(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.poll_write_deadline(cx, polled)
    }
}

impl Drop for GuardedStream {
    /// After an answer to a client that may still be sending, close the way nginx's
    /// `lingering_close` does: closing a socket with unread bytes makes the kernel send a RST,
    /// which can destroy the 408/431 before the client reads it. So: FIN, then swallow what the
    /// client still sends for a bounded time and size, then close.
    fn drop(&mut self) {
        if !self.linger {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if LINGERING.fetch_add(1, Ordering::Relaxed) >= MAX_LINGERING {
            LINGERING.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let placeholder: Stream = Box::new(std::io::Cursor::new(Vec::new()));
        let mut inner = std::mem::replace(&mut self.inner, placeholder);
        runtime.spawn(async move {
            let _ = tokio::time::timeout(LINGER, async {
                let _ = AsyncWriteExt::shutdown(&mut inner).await;
                let mut sink = [0u8; 4096];
                let mut swallowed = 0;
                while swallowed < LINGER_BYTES {
                    match inner.read(&mut sink).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => swallowed += n,
                    }
                }
            })
            .await;
            LINGERING.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

#[async_trait]
impl Peek for GuardedStream {
    /// Pingora peeks for the h2c preface before anything else by reading exactly 24 bytes with no
    /// timeout: a request shorter than that (`GET / HTTP/1.0` and a blank line) would wait
    /// forever, and a silent client too. The guard answers the peek itself: it reads ahead until
    /// it has the 24 bytes or a byte that rules out the preface, within the first request's
    /// deadline, and `poll_read` hands the bytes out again.
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        if self.phase != Phase::Header || self.ahead_pos != 0 || self.refused.is_some() {
            // Pingora peeks once, first; a later peek past bytes already handed out could only
            // return later bytes, so none is offered.
            return Ok(false);
        }
        loop {
            let k = self.ahead.len().min(H2_PREFACE.len());
            if self.ahead.len() >= buf.len() || self.ahead[..k] != H2_PREFACE[..k] {
                break;
            }
            if self.ahead.capacity() == 0 {
                self.ahead.reserve(1024);
            }
            match tokio::time::timeout_at(self.deadline, self.inner.read_buf(&mut self.ahead)).await
            {
                Ok(Ok(0)) => break,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    let msg = self.timeout_message();
                    let _ = self.scan.feed(&self.ahead);
                    if let Some(response) = self.answer(ErrorKind::RequestTimeout, &msg) {
                        let _ = tokio::time::timeout(Duration::from_millis(200), async {
                            self.inner.write_all(&response).await?;
                            self.inner.flush().await
                        })
                        .await;
                        self.linger = true;
                    }
                    return Err(self.mark_refused(ErrorKind::RequestTimeout, msg));
                }
            }
        }
        let n = buf.len().min(self.ahead.len());
        buf[..n].copy_from_slice(&self.ahead[..n]);
        buf[n..].fill(0);
        if self.ahead.starts_with(H2_PREFACE) {
            self.phase = Phase::Passthrough;
        }
        Ok(true)
    }
}

#[async_trait]
impl Shutdown for GuardedStream {
    /// Pingora flushes and shuts down a connection it gives up on; a client that reads nothing
    /// must not hold that either.
    async fn shutdown(&mut self) {
        let limit = self.limits.send_timeout;
        let _ = tokio::time::timeout(limit, Shutdown::shutdown(&mut *self.inner)).await;
    }
}

impl UniqueID for GuardedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for GuardedStream {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for GuardedStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for GuardedStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for GuardedStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

/// A listener's application with the header guard in front of it.
pub struct GuardedApp<A> {
    inner: Arc<A>,
    shared: Arc<Shared>,
}

impl<A> GuardedApp<A> {
    pub fn new(inner: A, shared: Arc<Shared>) -> GuardedApp<A> {
        GuardedApp {
            inner: Arc::new(inner),
            shared,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for GuardedApp<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // Read per connection, so a reloaded config applies to the next connection.
        let limits = self.shared.runtime.load().config.connection_limits();
        let guarded = GuardedStream::new(stream, limits);
        // Pingora's HTTP app keeps a keepalive connection inside this call, so the stream is
        // wrapped once per connection.
        self.inner.process_new(Box::new(guarded), shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn scan_all(pieces: &[&[u8]], max: usize) -> Vec<Scan> {
        let mut s = HeaderScan::new(max);
        pieces.iter().map(|p| s.feed(p)).collect()
    }

    #[test]
    fn finds_the_header_end_across_any_split() {
        let req = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}";
        let end = req.len() - 2;
        for split in 0..=req.len() {
            let mut s = HeaderScan::new(1 << 20);
            let (a, b) = req.split_at(split);
            let first = s.feed(a);
            if split >= end {
                assert_eq!(first, Scan::Complete, "split {split}");
            } else {
                assert_eq!(first, Scan::Incomplete, "split {split}");
                assert_eq!(s.feed(b), Scan::Complete, "split {split}");
            }
            assert_eq!(s.seen(), end, "split {split}");
        }
        // Byte by byte.
        let mut s = HeaderScan::new(1 << 20);
        let results: Vec<Scan> = req.iter().map(|b| s.feed(&[*b])).collect();
        assert_eq!(
            results.iter().position(|r| *r == Scan::Complete),
            Some(end - 1)
        );
    }

    #[test]
    fn bare_lf_and_leading_blank_lines() {
        assert_eq!(
            scan_all(&[b"GET / HTTP/1.1\nHost: x\n\n"], 1024),
            [Scan::Complete]
        );
        // Blank lines before the request line do not end the header.
        assert_eq!(
            scan_all(&[b"\r\n\r\n\n", b"GET / HTTP/1.1\r\n", b"\r\n"], 1024),
            [Scan::Incomplete, Scan::Incomplete, Scan::Complete]
        );
        // A CR inside a line does not make it blank.
        assert_eq!(
            scan_all(&[b"GET / HTTP/1.1\r\nA: b\rc\r\n"], 1024),
            [Scan::Incomplete]
        );
    }

    #[test]
    fn size_limit_counts_every_header_byte_and_no_body_byte() {
        let head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(scan_all(&[head], head.len()), [Scan::Complete]);
        assert_eq!(scan_all(&[head], head.len() - 1), [Scan::TooLarge]);
        let mut with_body = head.to_vec();
        with_body.extend_from_slice(&[b'x'; 4096]);
        assert_eq!(scan_all(&[&with_body], head.len()), [Scan::Complete]);
        // A header that never ends is cut at the limit, whatever the read sizes.
        let endless = [b'a'; 300];
        assert_eq!(
            scan_all(&[b"GET / HTTP/1.1\r\nX: ", &endless, &endless], 500),
            [Scan::Incomplete, Scan::Incomplete, Scan::TooLarge]
        );
        assert_eq!(
            scan_all(&[b"GET / HTTP/1.1\r\nX: a\r\nY: b\r\nZ: c\r\n"], 20),
            [Scan::TooLarge]
        );
    }

    #[test]
    fn family_and_request_shape_from_the_request_line() {
        let mut s = HeaderScan::new(1024);
        s.feed(b"POST /v1/messages?beta=true HTTP/1.1\r\nHo");
        assert_eq!(s.family(), Family::Anthropic);
        assert!(s.looks_like_request());
        let mut s = HeaderScan::new(1024);
        s.feed(b"POST /v1/chat/completions HTTP/1.1\r\n");
        assert_eq!(s.family(), Family::OpenAi);
        let mut s = HeaderScan::new(1024);
        s.feed(b"{\"model\":\"x\"}");
        assert!(!s.looks_like_request());
        assert_eq!(s.family(), Family::OpenAi);
    }

    #[test]
    fn error_response_is_complete_http() {
        let r = error_response(ErrorKind::HeaderTooLarge, Family::Anthropic, "too big");
        let text = String::from_utf8(r).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        // Field names are case-insensitive; they come from GatewayError::header (lowercase).
        let head = head.to_ascii_lowercase();
        assert!(head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())));
        assert!(head.contains("\r\ncontent-type: application/json\r\n"));
        assert!(head.contains("connection: close"));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["type"], "error");
    }

    const HEADER_MS: u64 = 300;
    const IDLE_MS: u64 = 2_000;
    const SEND_MS: u64 = 1_000;

    fn guarded(max_bytes: usize) -> (GuardedStream, tokio::io::DuplexStream) {
        let (server, client) = tokio::io::duplex(1 << 16);
        let limits = ConnectionLimits {
            header_timeout: Duration::from_millis(HEADER_MS),
            max_header_bytes: max_bytes,
            idle_timeout: Duration::from_millis(IDLE_MS),
            send_timeout: Duration::from_millis(SEND_MS),
        };
        (GuardedStream::new(Box::new(server), limits), client)
    }

    async fn read_some(s: &mut GuardedStream) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await?;
        buf.truncate(n);
        Ok(buf)
    }

    async fn client_reads(client: &mut tokio::io::DuplexStream) -> String {
        let mut answer = vec![0u8; 4096];
        let n = client.read(&mut answer).await.unwrap();
        String::from_utf8_lossy(&answer[..n]).into_owned()
    }

    fn between(took: Duration, lo_ms: u64, hi_ms: u64) -> bool {
        took >= Duration::from_millis(lo_ms) && took <= Duration::from_millis(hi_ms)
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_header_is_cut_at_the_deadline_with_a_408() {
        let (mut s, mut client) = guarded(1 << 16);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                match read_some(&mut s).await {
                    Ok(b) => got.extend(b),
                    Err(e) => return (got, e, Instant::now()),
                }
            }
        });
        let start = Instant::now();
        client
            .write_all(b"POST /v1/chat/completions HTTP/1.1\r\n")
            .await
            .unwrap();
        // One byte every 50 ms keeps each read short; the header as a whole is what is timed.
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if client.write_all(b"x").await.is_err() {
                break;
            }
        }
        let (_, err, at) = reader.await.unwrap();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(
            between(at - start, HEADER_MS, HEADER_MS + 60),
            "{:?}",
            at - start
        );
        let answer = client_reads(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
        assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
    }

    #[tokio::test(start_paused = true)]
    async fn silence_is_closed_at_the_deadline_without_an_answer() {
        let (mut s, mut client) = guarded(1 << 16);
        let start = Instant::now();
        let err = read_some(&mut s).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(between(start.elapsed(), HEADER_MS, HEADER_MS + 10));
        drop(s);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn keepalive_idle_is_not_header_time_and_continue_is_not_a_response() {
        let (mut s, mut client) = guarded(1 << 16);
        client
            .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
            .await
            .unwrap();
        read_some(&mut s).await.unwrap();
        // 100 Continue (written in two pieces), then a body slower than the header timeout:
        // still the same request, so not timed.
        s.write_all(b"HTTP/1.1 100 Cont").await.unwrap();
        s.write_all(b"inue\r\n\r\n").await.unwrap();
        client.write_all(b"{").await.unwrap();
        assert_eq!(read_some(&mut s).await.unwrap(), b"{");
        let rest = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            client.write_all(b"}").await.unwrap();
            client
        });
        assert_eq!(read_some(&mut s).await.unwrap(), b"}");
        let mut client = rest.await.unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        // Idle for longer than the header timeout (less than the idle one), then a prompt
        // second request.
        let second = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(900)).await;
            client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            client
        });
        assert_eq!(read_some(&mut s).await.unwrap(), b"GET / HTTP/1.1\r\n\r\n");
        let mut client = second.await.unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        // A third that starts and stalls is cut 300 ms after its first byte.
        client.write_all(b"GET / HT").await.unwrap();
        let started = Instant::now();
        let mut got = read_some(&mut s).await.unwrap();
        let err = loop {
            match read_some(&mut s).await {
                Ok(b) => got.extend(b),
                Err(e) => break e,
            }
        };
        assert_eq!(got, b"GET / HT");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(between(started.elapsed(), HEADER_MS, HEADER_MS + 10));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_keepalive_connection_ends_quietly() {
        let (mut s, mut client) = guarded(1 << 16);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        read_some(&mut s).await.unwrap();
        // Working on the answer takes longer than the idle timeout: no read waits meanwhile.
        tokio::time::sleep(Duration::from_millis(IDLE_MS * 2)).await;
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        let waiting = Instant::now();
        assert_eq!(
            read_some(&mut s).await.unwrap(),
            b"",
            "end of file, no error"
        );
        assert!(between(waiting.elapsed(), IDLE_MS, IDLE_MS + 10));
        assert_eq!(read_some(&mut s).await.unwrap(), b"");
        assert!(client_reads(&mut client).await.starts_with("HTTP/1.1 200"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_oversized_header_gets_431_and_the_connection_is_refused() {
        let (mut s, mut client) = guarded(1024);
        let mut req = b"POST /v1/messages HTTP/1.1\r\nX-Big: ".to_vec();
        req.extend_from_slice(&[b'a'; 2000]);
        req.extend_from_slice(b"\r\n\r\n");
        client.write_all(&req).await.unwrap();
        let err = read_some(&mut s).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(read_some(&mut s).await.is_err(), "refused stays refused");
        let answer = client_reads(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
        assert!(
            answer.contains("\"type\":\"error\""),
            "Anthropic shape: {answer}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_preface_peek_is_bounded_and_short_requests_pass() {
        let mut buf = [0u8; 24];
        // Shorter than the preface, but plainly not it: answered at once, bytes kept for reads.
        let (mut s, mut client) = guarded(1 << 16);
        client.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        let start = Instant::now();
        assert!(s.try_peek(&mut buf).await.unwrap());
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_ne!(&buf[..], H2_PREFACE);
        assert_eq!(read_some(&mut s).await.unwrap(), b"GET / HTTP/1.0\r\n\r\n");
        // "G" already rules the preface out: no wait; the stalled header is then cut by reads.
        let (mut s, mut client) = guarded(1 << 16);
        client.write_all(b"GET").await.unwrap();
        let start = Instant::now();
        assert!(s.try_peek(&mut buf).await.unwrap());
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(read_some(&mut s).await.unwrap(), b"GET");
        let err = read_some(&mut s).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(between(start.elapsed(), HEADER_MS, HEADER_MS + 10));
        assert!(client_reads(&mut client).await.starts_with("HTTP/1.1 408 "));
        // Part of the preface and then nothing: the peek itself ends at the deadline.
        let (mut s, mut client) = guarded(1 << 16);
        client.write_all(&H2_PREFACE[..10]).await.unwrap();
        let start = Instant::now();
        let err = s.try_peek(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(between(start.elapsed(), HEADER_MS, HEADER_MS + 10));
        assert!(read_some(&mut s).await.is_err(), "refused stays refused");
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn http2_passes_through_untimed_and_uncounted() {
        let mut buf = [0u8; 24];
        let (mut s, mut client) = guarded(64);
        client.write_all(H2_PREFACE).await.unwrap();
        assert!(s.try_peek(&mut buf).await.unwrap());
        assert_eq!(&buf[..], H2_PREFACE);
        assert_eq!(read_some(&mut s).await.unwrap(), H2_PREFACE);
        // The server's SETTINGS frame, then client frames: 200 bytes with no blank line, slower
        // than the header timeout and larger than the 64-byte header limit.
        s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
        let writer = tokio::spawn(async move {
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_millis(HEADER_MS)).await;
                client.write_all(&[7u8; 50]).await.unwrap();
            }
            client
        });
        let mut got = 0;
        while got < 200 {
            got += read_some(&mut s).await.expect("h2 frames pass").len();
        }
        drop(writer.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_counts_from_the_last_byte_sent() {
        let (s, mut client) = guarded(1 << 16);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let (mut rd, mut wr) = tokio::io::split(s);
        let mut first = [0u8; 64];
        let n = rd.read(&mut first).await.unwrap();
        assert_eq!(&first[..n], b"GET / HTTP/1.1\r\n\r\n");
        wr.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        // A read waits for the client the whole time the answer streams: 3 idle timeouts long.
        let waiting = tokio::spawn(async move {
            let mut b = [0u8; 64];
            let n = rd.read(&mut b).await.unwrap();
            (n, Instant::now())
        });
        for _ in 0..12 {
            tokio::time::sleep(Duration::from_millis(IDLE_MS / 4)).await;
            wr.write_all(b"5\r\nhello\r\n").await.unwrap();
        }
        let last_write = Instant::now();
        assert!(
            !waiting.is_finished(),
            "idle close while the answer was still streaming"
        );
        let (n, at) = waiting.await.unwrap();
        assert_eq!(n, 0);
        let idle = at - last_write;
        // The timer re-arms on the next poll after a write: between one and two idle timeouts.
        assert!(between(idle, IDLE_MS, 2 * IDLE_MS + 10), "{idle:?}");
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_is_cut_at_the_send_timeout() {
        let (mut s, mut client) = guarded(1 << 16);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        read_some(&mut s).await.unwrap();
        // 1 MiB answer, 64 KiB of pipe, a client that never reads.
        let answer = vec![b'x'; 1 << 20];
        let start = Instant::now();
        let err = s.write_all(&answer).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(between(start.elapsed(), SEND_MS, SEND_MS + 10));
        // A client that reads slowly but steadily is not cut: each bit of room resets the clock.
        let (mut s, client) = guarded(1 << 16);
        let reader = tokio::spawn(async move {
            let mut client = client;
            let mut buf = vec![0u8; 8192];
            let mut total = 0;
            while total < (1 << 20) {
                tokio::time::sleep(Duration::from_millis(SEND_MS / 2)).await;
                total += client.read(&mut buf).await.unwrap();
            }
            total
        });
        s.write_all(&answer).await.expect("a slow reader is served");
        assert_eq!(reader.await.unwrap(), 1 << 20);
    }
}
