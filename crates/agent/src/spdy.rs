//! A server-side SPDY/3.1 session: the multiplexing protocol that kubectl's SPDY transport
//! (Go's `moby/spdystream` on the `x/net/spdy` framer, version 3) speaks for `kubectl exec`,
//! `attach` and `port-forward` after `Upgrade: SPDY/3.1` (or tunnelled in WebSocket binary
//! messages by kubectl 1.31+ port-forward).
//!
//! [`serve`] takes the upgraded connection and spawns two tasks: a reader that decodes frames and
//! answers what the protocol requires (SYN_REPLY to every SYN_STREAM, PING echo, WINDOW_UPDATE as
//! data is consumed), and a writer that drains one queue of encoded frames into the connection.
//! Each stream the client opens is yielded by [`Incoming::next`] and split into an
//! [`tokio::io::AsyncRead`] half and an [`tokio::io::AsyncWrite`] half.
//!
//! Wire details that matter for interoperability:
//! - header blocks are zlib streams primed with the SPDY/3 dictionary, one compression context
//!   per direction for the whole session (a later block refers to bytes of earlier ones), each
//!   block ended with a sync flush; counts and lengths in the block are 32-bit;
//! - spdystream does no flow control (it ignores WINDOW_UPDATE and SETTINGS and never sends
//!   them), so this session only limits what it sends by the peer's window once the peer shows it
//!   keeps one (a WINDOW_UPDATE or a SETTINGS_INITIAL_WINDOW_SIZE); it always grants window
//!   (per stream and, as SPDY/3.1 does, for the session) as the application reads. Windows are
//!   counted from the start, so a peer that enforces them but has sent no WINDOW_UPDATE yet can
//!   see more than its initial window on a stream: the one case this heuristic gets wrong.
//!
//! Memory is bounded: the outgoing queue makes writers wait past 256 KiB, each stream buffers at
//! most 1 MiB of unread data before the reader stops reading the connection (backpressure to the
//! client, which is how spdystream's own server behaves), and a header block may not inflate past
//! 256 KiB. A malformed frame ends the session with a GOAWAY and a `tracing`
//! warning; nothing here panics on input.
//!
//! Depends only on tokio, bytes and flate2 (zlib-rs backend, for preset dictionaries); it knows
//! nothing of Kubernetes stream types, which are the caller's business.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter, ReadBuf,
};
use tokio::sync::{Notify, mpsc};
use tokio::task::{AbortHandle, JoinHandle};

const VERSION: u16 = 3;

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

const FLAG_FIN: u8 = 0x01;
const FLAG_UNIDIRECTIONAL: u8 = 0x02;

const RST_PROTOCOL_ERROR: u32 = 1;
const RST_REFUSED_STREAM: u32 = 3;
const RST_CANCEL: u32 = 5;

const GOAWAY_OK: u32 = 0;
const GOAWAY_PROTOCOL_ERROR: u32 = 1;

const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;

/// The initial flow-control window of SPDY/3 (per stream, and per session in 3.1).
const DEFAULT_WINDOW: i64 = 64 * 1024;
const MAX_WINDOW: i64 = 0x7fff_ffff;
/// Largest DATA frame this side sends.
const MAX_DATA_FRAME: usize = 64 * 1024;
/// Window is granted back once this many bytes were consumed (half the initial window).
const WINDOW_UPDATE_THRESHOLD: u64 = 32 * 1024;
/// Encoded frames waiting for the connection beyond which writers wait.
const OUT_QUEUE_LIMIT: usize = 256 * 1024;
/// Queued bytes beyond which the reader stops reading the client (PING floods and the like).
const CONTROL_BACKLOG_LIMIT: usize = 1024 * 1024;
/// Unread bytes of one stream beyond which the reader stops reading the client.
const STREAM_RECV_LIMIT: usize = 1024 * 1024;
/// Largest control frame accepted (header blocks of kubectl are a few dozen bytes).
const MAX_CONTROL_FRAME: usize = 1024 * 1024;
/// Largest inflated header block accepted.
const MAX_HEADER_BLOCK: usize = 256 * 1024;
/// How long [`Incoming::close`] waits for pending frames to reach a client that does not read.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Streams opened by the client and not yet taken by [`Incoming::next`].
const INCOMING_BACKLOG: usize = 32;

/// The zlib dictionary of SPDY/3 header blocks (draft 3 section 2.6.10.1): length-prefixed
/// header names and values, then common value fragments. 1423 bytes, adler32 0xe3c6a7c2, no
/// trailing NUL (the bytes Go's `spdy` package uses).
pub(crate) const SPDY_DICTIONARY: &[u8] = b"\
    \x00\x00\x00\x07options\x00\x00\x00\x04head\x00\x00\x00\x04post\x00\x00\x00\x03put\
    \x00\x00\x00\x06delete\x00\x00\x00\x05trace\x00\x00\x00\x06accept\
    \x00\x00\x00\x0eaccept-charset\x00\x00\x00\x0faccept-encoding\
    \x00\x00\x00\x0faccept-language\x00\x00\x00\x0daccept-ranges\x00\x00\x00\x03age\
    \x00\x00\x00\x05allow\x00\x00\x00\x0dauthorization\x00\x00\x00\x0dcache-control\
    \x00\x00\x00\x0aconnection\x00\x00\x00\x0ccontent-base\x00\x00\x00\x10content-encoding\
    \x00\x00\x00\x10content-language\x00\x00\x00\x0econtent-length\
    \x00\x00\x00\x10content-location\x00\x00\x00\x0bcontent-md5\x00\x00\x00\x0dcontent-range\
    \x00\x00\x00\x0ccontent-type\x00\x00\x00\x04date\x00\x00\x00\x04etag\x00\x00\x00\x06expect\
    \x00\x00\x00\x07expires\x00\x00\x00\x04from\x00\x00\x00\x04host\x00\x00\x00\x08if-match\
    \x00\x00\x00\x11if-modified-since\x00\x00\x00\x0dif-none-match\x00\x00\x00\x08if-range\
    \x00\x00\x00\x13if-unmodified-since\x00\x00\x00\x0dlast-modified\x00\x00\x00\x08location\
    \x00\x00\x00\x0cmax-forwards\x00\x00\x00\x06pragma\x00\x00\x00\x12proxy-authenticate\
    \x00\x00\x00\x13proxy-authorization\x00\x00\x00\x05range\x00\x00\x00\x07referer\
    \x00\x00\x00\x0bretry-after\x00\x00\x00\x06server\x00\x00\x00\x02te\x00\x00\x00\x07trailer\
    \x00\x00\x00\x11transfer-encoding\x00\x00\x00\x07upgrade\x00\x00\x00\x0auser-agent\
    \x00\x00\x00\x04vary\x00\x00\x00\x03via\x00\x00\x00\x07warning\
    \x00\x00\x00\x10www-authenticate\x00\x00\x00\x06method\x00\x00\x00\x03get\
    \x00\x00\x00\x06status\x00\x00\x00\x06200 OK\x00\x00\x00\x07version\
    \x00\x00\x00\x08HTTP/1.1\x00\x00\x00\x03url\x00\x00\x00\x06public\
    \x00\x00\x00\x0aset-cookie\x00\x00\x00\x0akeep-alive\x00\x00\x00\x06origin\
    100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505\
    203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Una\
    uthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Servic\
    e UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu\
    , Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,application/xml,applic\
    ation/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=u\
    tf-8charset=iso-8859-1,utf-,*,enq=0.\
";

/// Why a session ended abnormally.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("connection i/o")]
    Io(#[from] io::Error),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("header block compression: {0}")]
    Compression(&'static str),
}

// ---------------------------------------------------------------------------------------------
// Frames (sans-IO)
// ---------------------------------------------------------------------------------------------

/// One frame as read from the wire.
#[derive(Debug)]
enum Frame {
    Data {
        stream_id: u32,
        flags: u8,
        data: Bytes,
    },
    Control {
        kind: u16,
        flags: u8,
        payload: Bytes,
    },
}

/// The 8-byte frame header, validated before its payload (`len` more bytes) is read.
#[derive(Debug, PartialEq, Eq)]
enum FrameHead {
    Data {
        stream_id: u32,
        flags: u8,
        len: usize,
    },
    Control {
        kind: u16,
        flags: u8,
        len: usize,
    },
}

fn parse_frame_head(head: [u8; 8]) -> Result<FrameHead, SessionError> {
    let first = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let flags = head[4];
    let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    if first & 0x8000_0000 != 0 {
        let version = ((first >> 16) & 0x7fff) as u16;
        let kind = (first & 0xffff) as u16;
        if version != VERSION {
            return Err(SessionError::Protocol("unsupported SPDY version"));
        }
        if len > MAX_CONTROL_FRAME {
            return Err(SessionError::Protocol("control frame too large"));
        }
        let fixed = match kind {
            TYPE_RST_STREAM | TYPE_GOAWAY | TYPE_WINDOW_UPDATE => Some(8),
            TYPE_PING => Some(4),
            _ => None,
        };
        if fixed.is_some_and(|want| want != len) {
            return Err(SessionError::Protocol("control frame of the wrong length"));
        }
        Ok(FrameHead::Control { kind, flags, len })
    } else {
        if first == 0 {
            return Err(SessionError::Protocol("data frame on stream 0"));
        }
        if flags & !FLAG_FIN != 0 {
            return Err(SessionError::Protocol("data frame with unknown flags"));
        }
        Ok(FrameHead::Data {
            stream_id: first,
            flags,
            len,
        })
    }
}

fn be32(b: &[u8], at: usize) -> Result<u32, SessionError> {
    b.get(at..at + 4)
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .map(u32::from_be_bytes)
        .ok_or(SessionError::Protocol("truncated control frame"))
}

fn control_frame(kind: u16, flags: u8, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(8 + payload.len());
    b.put_u16(0x8000 | VERSION);
    b.put_u16(kind);
    b.put_u8(flags);
    b.put_uint(payload.len() as u64, 3);
    b.put_slice(payload);
    b.freeze()
}

fn data_frame(stream_id: u32, flags: u8, data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(8 + data.len());
    b.put_u32(stream_id & 0x7fff_ffff);
    b.put_u8(flags);
    b.put_uint(data.len() as u64, 3);
    b.put_slice(data);
    b.freeze()
}

fn two_words(kind: u16, a: u32, b: u32) -> Bytes {
    let mut p = [0u8; 8];
    p[..4].copy_from_slice(&a.to_be_bytes());
    p[4..].copy_from_slice(&b.to_be_bytes());
    control_frame(kind, 0, &p)
}

fn rst_stream_frame(stream_id: u32, status: u32) -> Bytes {
    two_words(TYPE_RST_STREAM, stream_id & 0x7fff_ffff, status)
}

fn window_update_frame(stream_id: u32, delta: u32) -> Bytes {
    two_words(
        TYPE_WINDOW_UPDATE,
        stream_id & 0x7fff_ffff,
        delta & 0x7fff_ffff,
    )
}

fn goaway_frame(last_stream_id: u32, status: u32) -> Bytes {
    two_words(TYPE_GOAWAY, last_stream_id & 0x7fff_ffff, status)
}

fn ping_frame(id: u32) -> Bytes {
    control_frame(TYPE_PING, 0, &id.to_be_bytes())
}

/// Encodes a (not yet compressed) SPDY/3 header block: 32-bit count, then 32-bit length-prefixed
/// names and values. Names are lowercased as the protocol requires.
fn encode_header_block(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    for (name, value) in headers {
        b.extend_from_slice(&(name.len() as u32).to_be_bytes());
        b.extend(name.bytes().map(|c| c.to_ascii_lowercase()));
        b.extend_from_slice(&(value.len() as u32).to_be_bytes());
        b.extend_from_slice(value.as_bytes());
    }
    b
}

/// Parses an inflated header block. A value holding NUL-separated parts (how SPDY carries a
/// repeated header) becomes one pair per part. Names are lowercased.
fn parse_header_block(block: &[u8]) -> Result<Vec<(String, String)>, SessionError> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], SessionError> {
        if b.len() < n {
            return Err(SessionError::Protocol("truncated header block"));
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head)
    }
    fn take_len(b: &mut &[u8]) -> Result<usize, SessionError> {
        let raw = take(b, 4)?;
        Ok(u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize)
    }
    let mut b = block;
    let count = take_len(&mut b)?;
    // Every pair needs at least its two lengths: refuse counts the block cannot hold.
    if count > b.len() / 8 {
        return Err(SessionError::Protocol("header count exceeds the block"));
    }
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let n = take_len(&mut b)?;
        let name = take(&mut b, n)?;
        if name.is_empty() {
            return Err(SessionError::Protocol("empty header name"));
        }
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        let n = take_len(&mut b)?;
        let value = take(&mut b, n)?;
        for part in value.split(|&c| c == 0) {
            headers.push((name.clone(), String::from_utf8_lossy(part).into_owned()));
        }
    }
    if !b.is_empty() {
        return Err(SessionError::Protocol(
            "trailing bytes after the header block",
        ));
    }
    Ok(headers)
}

/// The inflating side of the session's header compression (client to server).
struct HeaderInflater {
    z: Decompress,
}

impl HeaderInflater {
    fn new() -> Self {
        Self {
            z: Decompress::new(true),
        }
    }

    /// Inflates one frame's compressed header block, continuing the session's zlib stream.
    fn inflate(&mut self, input: &[u8]) -> Result<Vec<u8>, SessionError> {
        let mut out: Vec<u8> = Vec::with_capacity((input.len() * 4).clamp(256, MAX_HEADER_BLOCK));
        let mut pos = 0;
        loop {
            if out.len() == out.capacity() {
                if out.len() >= MAX_HEADER_BLOCK {
                    return Err(SessionError::Protocol("header block too large"));
                }
                out.reserve(out.len().clamp(256, MAX_HEADER_BLOCK - out.len()));
            }
            let (in_before, out_before) = (self.z.total_in(), self.z.total_out());
            let res = self
                .z
                .decompress_vec(&input[pos..], &mut out, FlushDecompress::Sync);
            let consumed = (self.z.total_in() - in_before) as usize;
            let produced = (self.z.total_out() - out_before) as usize;
            pos += consumed;
            match res {
                Ok(Status::StreamEnd) => break,
                Ok(Status::Ok | Status::BufError) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.z
                        .set_dictionary(SPDY_DICTIONARY)
                        .map_err(|_| SessionError::Compression("wrong preset dictionary"))?;
                    continue;
                }
                Err(_) => return Err(SessionError::Compression("corrupt zlib data")),
            }
            if pos >= input.len() && out.len() < out.capacity() {
                break;
            }
            if consumed == 0 && produced == 0 {
                if pos >= input.len() {
                    break;
                }
                return Err(SessionError::Compression("zlib stream stalled"));
            }
        }
        if pos < input.len() {
            return Err(SessionError::Compression(
                "bytes after the end of the zlib stream",
            ));
        }
        Ok(out)
    }
}

/// The deflating side of the session's header compression (server to client).
struct HeaderDeflater {
    z: Compress,
    primed: bool,
}

impl HeaderDeflater {
    fn new() -> Self {
        Self {
            z: Compress::new(Compression::best(), true),
            primed: false,
        }
    }

    /// Compresses one header block and ends it with a sync flush, so the peer can inflate it
    /// from this frame alone (given the earlier ones).
    fn deflate(&mut self, input: &[u8]) -> Result<Vec<u8>, SessionError> {
        if !self.primed {
            self.z
                .set_dictionary(SPDY_DICTIONARY)
                .map_err(|_| SessionError::Compression("cannot set the dictionary"))?;
            self.primed = true;
        }
        let mut out = Vec::with_capacity(input.len() + 64);
        let mut pos = 0;
        loop {
            if out.len() == out.capacity() {
                out.reserve(256);
            }
            let in_before = self.z.total_in();
            self.z
                .compress_vec(&input[pos..], &mut out, FlushCompress::Sync)
                .map_err(|_| SessionError::Compression("deflate failed"))?;
            pos += (self.z.total_in() - in_before) as usize;
            if pos >= input.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Session state shared by the reader task, the writer task and the stream halves
// ---------------------------------------------------------------------------------------------

struct Shared {
    state: Mutex<State>,
    /// Wakes the writer task: frames were queued or the session is closing.
    writer_wake: Notify,
    /// Wakes the reader task when it waits for room (a stream buffer or the outgoing queue).
    progress: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Default)]
struct State {
    /// Encoded frames not yet handed to the connection, in order.
    out: VecDeque<Bytes>,
    out_bytes: usize,
    /// Bytes the writer task took from `out` and is writing now.
    in_flight: usize,
    /// Sequence number of the last frame queued / written (flushed) to the connection.
    queued_seq: u64,
    written_seq: u64,
    /// Writers waiting for room in `out`, and flushers waiting for `written_seq`.
    out_waiters: Vec<Waker>,
    flush_waiters: Vec<Waker>,
    streams: HashMap<u32, StreamState>,
    /// The highest stream id the client opened.
    last_stream_id: u32,
    /// The connection gave no more frames (EOF, error, or the session ended).
    read_closed: bool,
    /// The writer task ended: nothing more reaches the client.
    write_closed: bool,
    /// A GOAWAY was queued (or the client left): the writer stops once the queue is empty.
    closing: bool,
    incoming_dropped: bool,
    /// The client keeps flow-control windows (it sent WINDOW_UPDATE or an initial window).
    peer_flow_control: bool,
    /// The client keeps a session window (SPDY/3.1: it sent WINDOW_UPDATE for stream 0).
    peer_session_flow_control: bool,
    initial_send_window: i64,
    session_send_window: i64,
    /// Bytes received on the session and consumed but not yet granted back.
    session_unacked: u64,
    reader_task: Option<AbortHandle>,
}

struct StreamState {
    recv: VecDeque<Bytes>,
    recv_len: usize,
    /// The client finished sending (FIN, RST_STREAM) or this side reset the stream.
    recv_closed: bool,
    recv_unacked: u64,
    reader_waker: Option<Waker>,
    reader_alive: bool,
    send_window: i64,
    /// This side sent FIN (or the stream was opened unidirectional).
    send_closed: bool,
    /// RST_STREAM was sent or received.
    reset: bool,
    writer_waker: Option<Waker>,
    writer_alive: bool,
    /// Sequence number of this stream's last queued frame.
    last_seq: u64,
}

impl State {
    fn new() -> Self {
        Self {
            initial_send_window: DEFAULT_WINDOW,
            session_send_window: DEFAULT_WINDOW,
            ..Self::default()
        }
    }

    /// Queues an encoded frame; the caller wakes the writer task.
    fn push(&mut self, frame: Bytes) -> u64 {
        self.out_bytes += frame.len();
        self.out.push_back(frame);
        self.queued_seq += 1;
        self.queued_seq
    }

    fn can_send(&self) -> bool {
        !self.write_closed && !self.closing
    }

    /// Counts `n` bytes of `stream_id` as consumed (read or discarded) and queues the
    /// WINDOW_UPDATEs that are due. Returns whether a frame was queued.
    fn credit(&mut self, stream_id: Option<u32>, n: usize) -> bool {
        if n == 0 || !self.can_send() {
            return false;
        }
        let mut frames = Vec::new();
        if let Some(s) = stream_id.and_then(|id| self.streams.get_mut(&id).map(|s| (id, s))) {
            let (id, s) = s;
            s.recv_unacked += n as u64;
            if s.recv_unacked >= WINDOW_UPDATE_THRESHOLD && !s.recv_closed {
                let delta = s.recv_unacked.min(MAX_WINDOW as u64) as u32;
                s.recv_unacked -= u64::from(delta);
                frames.push(window_update_frame(id, delta));
            }
        }
        self.session_unacked += n as u64;
        if self.session_unacked >= WINDOW_UPDATE_THRESHOLD {
            let delta = self.session_unacked.min(MAX_WINDOW as u64) as u32;
            self.session_unacked -= u64::from(delta);
            frames.push(window_update_frame(0, delta));
        }
        let queued = !frames.is_empty();
        for f in frames {
            self.push(f);
        }
        queued
    }

    /// Wakes every task parked on this session (after it ended, or a window opened).
    fn wake_all(&mut self) {
        for s in self.streams.values_mut() {
            if let Some(w) = s.reader_waker.take() {
                w.wake();
            }
            if let Some(w) = s.writer_waker.take() {
                w.wake();
            }
        }
        self.wake_queue_waiters();
    }

    fn wake_queue_waiters(&mut self) {
        for w in self
            .out_waiters
            .drain(..)
            .chain(self.flush_waiters.drain(..))
        {
            w.wake();
        }
    }

    fn wake_writers(&mut self) {
        for s in self.streams.values_mut() {
            if let Some(w) = s.writer_waker.take() {
                w.wake();
            }
        }
    }

    /// Starts closing: queues GOAWAY once. Returns whether the writer must be woken.
    fn go_away(&mut self, status: u32) -> bool {
        if self.closing || self.write_closed {
            return false;
        }
        let frame = goaway_frame(self.last_stream_id, status);
        self.push(frame);
        self.closing = true;
        true
    }

    /// Forgets a stream once both halves are gone; ends the session when nobody can use it
    /// any more (the [`Incoming`] was dropped and no stream is left).
    fn release(&mut self, stream_id: u32) -> bool {
        if let Some(s) = self.streams.get(&stream_id)
            && !s.reader_alive
            && !s.writer_alive
        {
            self.streams.remove(&stream_id);
        }
        if self.incoming_dropped && self.streams.is_empty() {
            return self.go_away(GOAWAY_OK);
        }
        false
    }
}

// ---------------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------------

/// Serve a SPDY/3.1 session over `io` (the connection after `101 Switching Protocols`, or a
/// WebSocket adapter).
/// Spawns the connection task; every SYN_STREAM from the client is answered with SYN_REPLY and
/// yielded.
pub fn serve<T>(io: T) -> Incoming
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let shared = Arc::new(Shared {
        state: Mutex::new(State::new()),
        writer_wake: Notify::new(),
        progress: Notify::new(),
    });
    let (rd, wr) = tokio::io::split(io);
    let (tx, rx) = mpsc::channel(INCOMING_BACKLOG);
    let reader = tokio::spawn(run_reader(shared.clone(), rd, tx));
    shared.lock().reader_task = Some(reader.abort_handle());
    let writer = tokio::spawn(run_writer(shared.clone(), wr));
    Incoming {
        rx,
        shared,
        writer: Some(writer),
    }
}

/// The streams a client opens on one session.
pub struct Incoming {
    rx: mpsc::Receiver<SpdyStream>,
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

impl Incoming {
    /// The next stream the client opened; None once the connection is closed.
    pub async fn next(&mut self) -> Option<SpdyStream> {
        self.rx.recv().await
    }

    /// Send GOAWAY and close the connection (after pending writes are flushed).
    pub async fn close(mut self) {
        if self.shared.lock().go_away(GOAWAY_OK) {
            self.shared.writer_wake.notify_one();
        }
        let Some(mut writer) = self.writer.take() else {
            return;
        };
        match tokio::time::timeout(CLOSE_TIMEOUT, &mut writer).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "spdy writer task failed"),
            Err(_) => {
                tracing::debug!("spdy client does not read; dropping the connection");
                writer.abort();
                end_session(&self.shared);
            }
        }
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.incoming_dropped = true;
        let wake = st.streams.is_empty() && st.go_away(GOAWAY_OK);
        drop(st);
        if wake {
            self.shared.writer_wake.notify_one();
        }
    }
}

/// A stream the client opened, with the headers of its SYN_STREAM.
pub struct SpdyStream {
    id: u32,
    headers: Vec<(String, String)>,
    reader: SpdyReader,
    writer: SpdyWriter,
}

impl std::fmt::Debug for SpdyStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpdyStream")
            .field("id", &self.id)
            .field("headers", &self.headers)
            .finish()
    }
}

impl SpdyStream {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// A header of the SYN_STREAM, name case-insensitive (SPDY header names are lowercase on
    /// the wire; kubectl sends `streamtype`, `port`, `requestid`).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    pub fn split(self) -> (SpdyReader, SpdyWriter) {
        (self.reader, self.writer)
    }
}

/// The receiving half of a stream: the payload of its DATA frames. EOF when the client sends
/// FIN or RST_STREAM, or the connection closes.
pub struct SpdyReader {
    id: u32,
    shared: Arc<Shared>,
}

/// The sending half of a stream: DATA frames of at most 64 KiB, within the client's
/// flow-control window when it keeps one. `poll_shutdown` sends FIN; dropping it without
/// shutdown sends FIN too.
pub struct SpdyWriter {
    id: u32,
    shared: Arc<Shared>,
}

/// Adds `waker` to a wait list unless it is already there (a future polled again while it
/// waits must not grow the list).
fn park(list: &mut Vec<Waker>, waker: &Waker) {
    if !list.iter().any(|w| w.will_wake(waker)) {
        list.push(waker.clone());
    }
}

fn closed_error() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "spdy connection closed")
}

impl AsyncRead for SpdyReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        let read_closed = st.read_closed;
        let Some(s) = st.streams.get_mut(&self.id) else {
            return Poll::Ready(Ok(()));
        };
        if s.recv_len == 0 {
            if s.recv_closed || read_closed {
                return Poll::Ready(Ok(()));
            }
            s.reader_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let was_full = s.recv_len >= STREAM_RECV_LIMIT;
        let mut copied = 0;
        while buf.remaining() > 0 {
            let Some(front) = s.recv.front_mut() else {
                break;
            };
            let n = front.len().min(buf.remaining());
            buf.put_slice(&front[..n]);
            front.advance(n);
            if front.is_empty() {
                s.recv.pop_front();
            }
            copied += n;
        }
        s.recv_len -= copied;
        let queued = st.credit(Some(self.id), copied);
        drop(guard);
        if queued {
            self.shared.writer_wake.notify_one();
        }
        if was_full {
            self.shared.progress.notify_one();
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for SpdyReader {
    fn drop(&mut self) {
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        let mut discarded = 0;
        if let Some(s) = st.streams.get_mut(&self.id) {
            s.reader_alive = false;
            s.reader_waker = None;
            discarded = s.recv_len;
            s.recv.clear();
            s.recv_len = 0;
        }
        let mut wake = st.credit(Some(self.id), discarded);
        wake |= st.release(self.id);
        drop(guard);
        if wake {
            self.shared.writer_wake.notify_one();
        }
        // The reader task may be waiting for this stream's buffer to drain.
        self.shared.progress.notify_one();
    }
}

impl SpdyWriter {
    /// Sends RST_STREAM CANCEL: the stream ends at once in both directions.
    pub fn reset(&self) {
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        let can_send = !st.write_closed;
        let Some(s) = st.streams.get_mut(&self.id) else {
            return;
        };
        if s.reset {
            return;
        }
        s.reset = true;
        s.recv_closed = true;
        let discarded = s.recv_len;
        s.recv.clear();
        s.recv_len = 0;
        for w in [s.reader_waker.take(), s.writer_waker.take()]
            .into_iter()
            .flatten()
        {
            w.wake();
        }
        if can_send {
            let seq = st.push(rst_stream_frame(self.id, RST_CANCEL));
            if let Some(s) = st.streams.get_mut(&self.id) {
                s.last_seq = seq;
            }
        }
        st.credit(None, discarded);
        drop(guard);
        self.shared.writer_wake.notify_one();
        self.shared.progress.notify_one();
    }

    /// Queues FIN once; returns whether a frame was queued.
    fn queue_fin(st: &mut State, id: u32) -> bool {
        if st.write_closed {
            return false;
        }
        let Some(s) = st.streams.get_mut(&id) else {
            return false;
        };
        if s.send_closed || s.reset {
            return false;
        }
        s.send_closed = true;
        let seq = st.push(data_frame(id, FLAG_FIN, &[]));
        if let Some(s) = st.streams.get_mut(&id) {
            s.last_seq = seq;
        }
        true
    }
}

impl AsyncWrite for SpdyWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        if !st.can_send() {
            return Poll::Ready(Err(closed_error()));
        }
        let queue_full = st.out_bytes >= OUT_QUEUE_LIMIT;
        let flow_control = st.peer_flow_control;
        let session_window = if st.peer_session_flow_control {
            st.session_send_window
        } else {
            i64::MAX
        };
        let Some(s) = st.streams.get_mut(&self.id) else {
            return Poll::Ready(Err(closed_error()));
        };
        if s.reset {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "spdy stream reset",
            )));
        }
        if s.send_closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "spdy stream already finished",
            )));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut n = buf.len().min(MAX_DATA_FRAME);
        if flow_control {
            let window = s.send_window.min(session_window);
            if window <= 0 {
                s.writer_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            n = n.min(usize::try_from(window).unwrap_or(usize::MAX));
        }
        if queue_full {
            park(&mut st.out_waiters, cx.waker());
            return Poll::Pending;
        }
        if let Some(s) = st.streams.get_mut(&self.id) {
            s.send_window -= n as i64;
        }
        st.session_send_window -= n as i64;
        let seq = st.push(data_frame(self.id, 0, &buf[..n]));
        if let Some(s) = st.streams.get_mut(&self.id) {
            s.last_seq = seq;
        }
        drop(guard);
        self.shared.writer_wake.notify_one();
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut st = self.shared.lock();
        let last = st.streams.get(&self.id).map_or(0, |s| s.last_seq);
        if st.written_seq >= last {
            return Poll::Ready(Ok(()));
        }
        if st.write_closed {
            return Poll::Ready(Err(closed_error()));
        }
        park(&mut st.flush_waiters, cx.waker());
        Poll::Pending
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let queued = Self::queue_fin(&mut self.shared.lock(), self.id);
        if queued {
            self.shared.writer_wake.notify_one();
        }
        self.poll_flush(cx)
    }
}

impl Drop for SpdyWriter {
    fn drop(&mut self) {
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        let mut wake = Self::queue_fin(st, self.id);
        if let Some(s) = st.streams.get_mut(&self.id) {
            s.writer_alive = false;
            s.writer_waker = None;
        }
        wake |= st.release(self.id);
        drop(guard);
        if wake {
            self.shared.writer_wake.notify_one();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The connection tasks
// ---------------------------------------------------------------------------------------------

/// Reads `buf.len()` bytes; `Ok(false)` on a clean EOF before the first byte.
async fn read_head<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = r.read(&mut buf[filled..]).await?;
        if n == 0 {
            if filled == 0 {
                return Ok(false);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        filled += n;
    }
    Ok(true)
}

/// Reads the next frame; `None` at a clean end of the connection.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>, SessionError> {
    let mut head = [0u8; 8];
    if !read_head(r, &mut head).await? {
        return Ok(None);
    }
    let (len, frame_head) = match parse_frame_head(head)? {
        h @ FrameHead::Data { len, .. } => (len, h),
        h @ FrameHead::Control { len, .. } => (len, h),
    };
    let mut payload = BytesMut::zeroed(len);
    r.read_exact(&mut payload).await?;
    let payload = payload.freeze();
    Ok(Some(match frame_head {
        FrameHead::Data {
            stream_id, flags, ..
        } => Frame::Data {
            stream_id,
            flags,
            data: payload,
        },
        FrameHead::Control { kind, flags, .. } => Frame::Control {
            kind,
            flags,
            payload,
        },
    }))
}

/// Waits until `ready` holds for the session state (or the session ended).
async fn wait_for(shared: &Shared, ready: impl Fn(&State) -> bool) {
    loop {
        {
            let st = shared.lock();
            if st.write_closed || ready(&st) {
                return;
            }
        }
        shared.progress.notified().await;
    }
}

struct Reader {
    shared: Arc<Shared>,
    inflater: HeaderInflater,
    deflater: HeaderDeflater,
    incoming: mpsc::Sender<SpdyStream>,
}

async fn run_reader<R: AsyncRead + Unpin>(
    shared: Arc<Shared>,
    rd: R,
    incoming: mpsc::Sender<SpdyStream>,
) {
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let mut reader = Reader {
        shared: shared.clone(),
        inflater: HeaderInflater::new(),
        deflater: HeaderDeflater::new(),
        incoming,
    };
    let result = loop {
        wait_for(&shared, |st| st.out_bytes < CONTROL_BACKLOG_LIMIT).await;
        match read_frame(&mut rd).await {
            Ok(Some(frame)) => {
                if let Err(e) = reader.handle(frame).await {
                    break Err(e);
                }
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    let mut st = shared.lock();
    match result {
        Ok(()) => tracing::debug!("spdy client closed the connection"),
        Err(SessionError::Io(e)) => tracing::debug!(error = %e, "spdy connection read failed"),
        Err(e) => {
            tracing::warn!(error = %e, "malformed spdy frame, closing the session");
            st.go_away(GOAWAY_PROTOCOL_ERROR);
        }
    }
    st.read_closed = true;
    st.closing = true;
    st.wake_all();
    drop(st);
    shared.writer_wake.notify_one();
}

impl Reader {
    async fn handle(&mut self, frame: Frame) -> Result<(), SessionError> {
        match frame {
            Frame::Data {
                stream_id,
                flags,
                data,
            } => self.on_data(stream_id, flags, data).await,
            Frame::Control {
                kind,
                flags,
                payload,
            } => self.on_control(kind, flags, &payload).await,
        }
    }

    async fn on_data(&mut self, id: u32, flags: u8, data: Bytes) -> Result<(), SessionError> {
        // Backpressure: a stream whose reader lags holds the whole connection (spdystream does
        // not keep windows, so this is the only bound on a fast client).
        wait_for(&self.shared, |st| match st.streams.get(&id) {
            Some(s) => !s.reader_alive || s.recv_closed || s.recv_len < STREAM_RECV_LIMIT,
            None => true,
        })
        .await;
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        let len = data.len();
        let mut consumed_now = len;
        let mut credited_stream = None;
        if let Some(s) = st.streams.get_mut(&id) {
            if s.reader_alive && !s.recv_closed {
                if len > 0 {
                    s.recv.push_back(data);
                    s.recv_len += len;
                    consumed_now = 0;
                }
            } else {
                credited_stream = Some(id);
            }
            if flags & FLAG_FIN != 0 {
                s.recv_closed = true;
            }
            if let Some(w) = s.reader_waker.take() {
                w.wake();
            }
        } else {
            tracing::debug!(stream = id, len, "spdy data for an unknown stream dropped");
        }
        let queued = consumed_now > 0 && st.credit(credited_stream, consumed_now);
        drop(guard);
        if queued {
            self.shared.writer_wake.notify_one();
        }
        Ok(())
    }

    /// Queues a control frame answering the client.
    fn send(&self, frame: Bytes) {
        let mut st = self.shared.lock();
        if st.write_closed {
            return;
        }
        st.push(frame);
        drop(st);
        self.shared.writer_wake.notify_one();
    }

    async fn on_control(&mut self, kind: u16, flags: u8, p: &[u8]) -> Result<(), SessionError> {
        match kind {
            TYPE_SYN_STREAM => self.on_syn_stream(flags, p).await,
            TYPE_SYN_REPLY | TYPE_HEADERS => {
                let id = be32(p, 0)? & 0x7fff_ffff;
                // Inflate even what is ignored: the zlib context spans the session.
                let headers = parse_header_block(&self.inflater.inflate(&p[4..])?)?;
                if kind == TYPE_SYN_REPLY {
                    tracing::debug!(stream = id, "spdy SYN_REPLY from the client ignored");
                    return Ok(());
                }
                tracing::debug!(stream = id, ?headers, "spdy HEADERS from the client");
                if flags & FLAG_FIN != 0 {
                    let mut st = self.shared.lock();
                    if let Some(s) = st.streams.get_mut(&id) {
                        s.recv_closed = true;
                        if let Some(w) = s.reader_waker.take() {
                            w.wake();
                        }
                    }
                }
                Ok(())
            }
            TYPE_RST_STREAM => {
                let id = be32(p, 0)? & 0x7fff_ffff;
                let status = be32(p, 4)?;
                tracing::debug!(stream = id, status, "spdy stream reset by the client");
                let mut st = self.shared.lock();
                if let Some(s) = st.streams.get_mut(&id) {
                    s.reset = true;
                    s.recv_closed = true;
                    for w in [s.reader_waker.take(), s.writer_waker.take()]
                        .into_iter()
                        .flatten()
                    {
                        w.wake();
                    }
                }
                Ok(())
            }
            TYPE_SETTINGS => self.on_settings(p),
            TYPE_PING => {
                let id = be32(p, 0)?;
                // Odd ids are the client's own pings; even ones would answer ours (none sent).
                if !id.is_multiple_of(2) {
                    self.send(ping_frame(id));
                }
                Ok(())
            }
            TYPE_GOAWAY => {
                tracing::debug!(last = be32(p, 0)?, "spdy GOAWAY from the client");
                Ok(())
            }
            TYPE_WINDOW_UPDATE => {
                let id = be32(p, 0)? & 0x7fff_ffff;
                let delta = i64::from(be32(p, 4)? & 0x7fff_ffff);
                let mut st = self.shared.lock();
                st.peer_flow_control = true;
                if id == 0 {
                    st.peer_session_flow_control = true;
                    st.session_send_window = (st.session_send_window + delta).min(MAX_WINDOW);
                    st.wake_writers();
                } else if let Some(s) = st.streams.get_mut(&id) {
                    s.send_window = (s.send_window + delta).min(MAX_WINDOW);
                    if let Some(w) = s.writer_waker.take() {
                        w.wake();
                    }
                }
                Ok(())
            }
            other => {
                // SPDY/3: unknown control frames are ignored (NOOP, CREDENTIAL, ...).
                tracing::debug!(kind = other, "spdy control frame ignored");
                Ok(())
            }
        }
    }

    fn on_settings(&mut self, p: &[u8]) -> Result<(), SessionError> {
        let count = be32(p, 0)? as usize;
        if p.len() != 4 + count.saturating_mul(8) {
            return Err(SessionError::Protocol("SETTINGS of the wrong length"));
        }
        let mut st = self.shared.lock();
        for i in 0..count {
            let id = be32(p, 4 + 8 * i)? & 0x00ff_ffff;
            let value = be32(p, 8 + 8 * i)?;
            if id == SETTINGS_INITIAL_WINDOW_SIZE {
                let value = i64::from(value).min(MAX_WINDOW);
                let delta = value - st.initial_send_window;
                st.initial_send_window = value;
                st.peer_flow_control = true;
                for s in st.streams.values_mut() {
                    s.send_window += delta;
                }
                st.wake_writers();
            }
        }
        Ok(())
    }

    /// Registers a new client stream and queues its SYN_REPLY, or refuses it with RST_STREAM.
    /// Returns whether the stream was accepted.
    fn accept_stream(&mut self, id: u32, flags: u8) -> Result<bool, SessionError> {
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        if st.write_closed {
            return Ok(false);
        }
        let refusal = if id.is_multiple_of(2) || id <= st.last_stream_id {
            tracing::debug!(stream = id, "spdy SYN_STREAM with an invalid stream id");
            Some(RST_PROTOCOL_ERROR)
        } else if st.incoming_dropped || st.closing {
            Some(RST_REFUSED_STREAM)
        } else {
            None
        };
        if !id.is_multiple_of(2) {
            st.last_stream_id = st.last_stream_id.max(id);
        }
        if let Some(status) = refusal {
            st.push(rst_stream_frame(id, status));
            drop(guard);
            self.shared.writer_wake.notify_one();
            return Ok(false);
        }
        // The reply goes into the queue before the application can write on the stream:
        // spdystream drops data that arrives before the SYN_REPLY.
        let reply = self.deflater.deflate(&encode_header_block(&[]))?;
        let mut payload = Vec::with_capacity(4 + reply.len());
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&reply);
        let seq = st.push(control_frame(TYPE_SYN_REPLY, 0, &payload));
        st.streams.insert(
            id,
            StreamState {
                recv: VecDeque::new(),
                recv_len: 0,
                recv_closed: flags & FLAG_FIN != 0,
                recv_unacked: 0,
                reader_waker: None,
                reader_alive: true,
                send_window: st.initial_send_window,
                send_closed: flags & FLAG_UNIDIRECTIONAL != 0,
                reset: false,
                writer_waker: None,
                writer_alive: true,
                last_seq: seq,
            },
        );
        drop(guard);
        self.shared.writer_wake.notify_one();
        Ok(true)
    }

    async fn on_syn_stream(&mut self, flags: u8, p: &[u8]) -> Result<(), SessionError> {
        if p.len() < 10 {
            return Err(SessionError::Protocol("SYN_STREAM too short"));
        }
        let id = be32(p, 0)? & 0x7fff_ffff;
        // Inflate before anything else can reject the stream: the context spans the session.
        let headers = parse_header_block(&self.inflater.inflate(&p[10..])?)?;
        if id == 0 {
            return Err(SessionError::Protocol("SYN_STREAM for stream 0"));
        }
        if !self.accept_stream(id, flags)? {
            return Ok(());
        }
        let stream = SpdyStream {
            id,
            headers,
            reader: SpdyReader {
                id,
                shared: self.shared.clone(),
            },
            writer: SpdyWriter {
                id,
                shared: self.shared.clone(),
            },
        };
        tracing::debug!(stream = id, headers = ?stream.headers, "spdy stream opened");
        // A dropped `Incoming` gives the stream back; dropping it finishes it.
        let _ = self.incoming.send(stream).await;
        Ok(())
    }
}

async fn run_writer<W: AsyncWrite + Unpin>(shared: Arc<Shared>, wr: W) {
    let mut wr = BufWriter::with_capacity(64 * 1024, wr);
    let result: io::Result<()> = async {
        loop {
            let batch = {
                let mut st = shared.lock();
                if st.out.is_empty() {
                    if st.closing {
                        break;
                    }
                    None
                } else {
                    st.in_flight = st.out_bytes;
                    st.out_bytes = 0;
                    let batch: Vec<Bytes> = st.out.drain(..).collect();
                    Some((batch, st.queued_seq))
                }
            };
            let Some((batch, upto)) = batch else {
                shared.writer_wake.notified().await;
                continue;
            };
            for frame in &batch {
                wr.write_all(frame).await?;
            }
            wr.flush().await?;
            let mut st = shared.lock();
            st.written_seq = upto;
            st.in_flight = 0;
            st.wake_queue_waiters();
            drop(st);
            shared.progress.notify_one();
        }
        wr.shutdown().await
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "spdy connection write failed");
    }
    end_session(&shared);
}

/// Marks the session over: every stream half sees EOF or `BrokenPipe`, the reader task stops.
fn end_session(shared: &Shared) {
    let mut st = shared.lock();
    st.write_closed = true;
    st.read_closed = true;
    st.closing = true;
    st.out.clear();
    st.out_bytes = 0;
    st.in_flight = 0;
    st.wake_all();
    let reader = st.reader_task.take();
    drop(st);
    if let Some(reader) = reader {
        reader.abort();
    }
    shared.progress.notify_one();
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{DuplexStream, duplex};
    use tokio::time::timeout;

    const T: Duration = Duration::from_secs(10);

    /// A frame as the test client sees it.
    #[derive(Debug, PartialEq)]
    enum Seen {
        Data {
            id: u32,
            fin: bool,
            data: Vec<u8>,
        },
        SynReply {
            id: u32,
            headers: Vec<(String, String)>,
        },
        Rst {
            id: u32,
            status: u32,
        },
        Ping(u32),
        GoAway {
            last: u32,
            status: u32,
        },
        WindowUpdate {
            id: u32,
            delta: u32,
        },
        Other(u16),
    }

    /// A minimal SPDY/3 client: its own frame codec and its own zlib contexts.
    struct Client {
        io: DuplexStream,
        deflate: Compress,
        inflate: Decompress,
    }

    fn be(v: u32) -> [u8; 4] {
        v.to_be_bytes()
    }

    fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x80, 0x03, (kind >> 8) as u8, kind as u8, flags];
        f.extend_from_slice(&be(payload.len() as u32)[1..]);
        f.extend_from_slice(payload);
        f
    }

    fn data(id: u32, fin: bool, bytes: &[u8]) -> Vec<u8> {
        let mut f = be(id).to_vec();
        f.push(if fin { 1 } else { 0 });
        f.extend_from_slice(&be(bytes.len() as u32)[1..]);
        f.extend_from_slice(bytes);
        f
    }

    fn rst(id: u32, status: u32) -> Vec<u8> {
        control(3, 0, &[be(id), be(status)].concat())
    }

    fn ping(id: u32) -> Vec<u8> {
        control(6, 0, &be(id))
    }

    fn window_update(id: u32, delta: u32) -> Vec<u8> {
        control(9, 0, &[be(id), be(delta)].concat())
    }

    fn settings(entries: &[(u32, u32)]) -> Vec<u8> {
        let mut p = be(entries.len() as u32).to_vec();
        for (id, v) in entries {
            p.extend_from_slice(&be(*id));
            p.extend_from_slice(&be(*v));
        }
        control(4, 0, &p)
    }

    fn adler32(b: &[u8]) -> u32 {
        let (mut a, mut s) = (1u32, 0u32);
        for &c in b {
            a = (a + u32::from(c)) % 65521;
            s = (s + a) % 65521;
        }
        (s << 16) | a
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    impl Client {
        fn new(io: DuplexStream) -> Self {
            let mut deflate = Compress::new(Compression::default(), true);
            deflate.set_dictionary(SPDY_DICTIONARY).unwrap();
            Self {
                io,
                deflate,
                inflate: Decompress::new(true),
            }
        }

        fn compress(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
            let mut block = be(headers.len() as u32).to_vec();
            for (n, v) in headers {
                block.extend_from_slice(&be(n.len() as u32));
                block.extend_from_slice(n.as_bytes());
                block.extend_from_slice(&be(v.len() as u32));
                block.extend_from_slice(v.as_bytes());
            }
            let mut out = Vec::with_capacity(block.len() + 128);
            self.deflate
                .compress_vec(&block, &mut out, FlushCompress::Sync)
                .unwrap();
            out
        }

        fn syn_stream(&mut self, id: u32, flags: u8, headers: &[(&str, &str)]) -> Vec<u8> {
            let mut p = [be(id), be(0)].concat();
            p.extend_from_slice(&[0, 0]);
            p.extend_from_slice(&self.compress(headers));
            control(1, flags, &p)
        }

        async fn send(&mut self, bytes: &[u8]) {
            timeout(T, self.io.write_all(bytes)).await.unwrap().unwrap();
        }

        async fn open(&mut self, id: u32, headers: &[(&str, &str)]) {
            let f = self.syn_stream(id, 0, headers);
            self.send(&f).await;
        }

        fn inflate_block(&mut self, input: &[u8]) -> Vec<(String, String)> {
            let mut out = Vec::with_capacity(4096);
            let mut pos = 0;
            loop {
                let before = self.inflate.total_in();
                match self
                    .inflate
                    .decompress_vec(&input[pos..], &mut out, FlushDecompress::Sync)
                {
                    Ok(_) => {}
                    Err(e) if e.needs_dictionary().is_some() => {
                        self.inflate.set_dictionary(SPDY_DICTIONARY).unwrap();
                    }
                    Err(e) => panic!("client inflate: {e}"),
                }
                pos += (self.inflate.total_in() - before) as usize;
                if pos == input.len() {
                    break;
                }
            }
            parse_header_block(&out).unwrap()
        }

        /// The next frame from the server; None at EOF.
        async fn frame(&mut self) -> Option<Seen> {
            let mut head = [0u8; 8];
            match timeout(T, self.io.read_exact(&mut head)).await.unwrap() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return None,
                Err(e) => panic!("client read: {e}"),
            }
            let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
            let mut p = vec![0u8; len];
            timeout(T, self.io.read_exact(&mut p))
                .await
                .unwrap()
                .unwrap();
            let w = |i: usize| u32::from_be_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
            if head[0] & 0x80 == 0 {
                return Some(Seen::Data {
                    id: u32::from_be_bytes([head[0], head[1], head[2], head[3]]),
                    fin: head[4] & 1 != 0,
                    data: p,
                });
            }
            assert_eq!(&head[..2], &[0x80, 0x03], "version 3 control frame");
            Some(match u16::from_be_bytes([head[2], head[3]]) {
                2 => {
                    let id = w(0);
                    let headers = self.inflate_block(&p[4..]);
                    Seen::SynReply { id, headers }
                }
                3 => Seen::Rst {
                    id: w(0),
                    status: w(4),
                },
                6 => Seen::Ping(w(0)),
                7 => Seen::GoAway {
                    last: w(0),
                    status: w(4),
                },
                9 => Seen::WindowUpdate {
                    id: w(0),
                    delta: w(4),
                },
                other => Seen::Other(other),
            })
        }

        /// The next frame that is not a WINDOW_UPDATE.
        async fn frame_skip_wu(&mut self) -> Option<Seen> {
            loop {
                match self.frame().await {
                    Some(Seen::WindowUpdate { .. }) => continue,
                    other => return other,
                }
            }
        }
    }

    fn session() -> (Client, Incoming) {
        let (a, b) = duplex(64 * 1024);
        (Client::new(a), serve(b))
    }

    async fn next(incoming: &mut Incoming) -> Option<SpdyStream> {
        timeout(T, incoming.next()).await.expect("next() timed out")
    }

    /// Polls `f` until it gives a value (at most `T`).
    async fn until<V>(mut f: impl FnMut() -> Option<V>) -> V {
        timeout(T, async {
            loop {
                if let Some(v) = f() {
                    return v;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("condition not reached")
    }

    async fn read_all(r: &mut SpdyReader) -> Vec<u8> {
        let mut v = Vec::new();
        timeout(T, r.read_to_end(&mut v)).await.unwrap().unwrap();
        v
    }

    #[test]
    fn dictionary_is_the_spdy3_one() {
        assert_eq!(SPDY_DICTIONARY.len(), 1423);
        assert_eq!(adler32(SPDY_DICTIONARY), 0xe3c6_a7c2);
        assert!(SPDY_DICTIONARY.starts_with(b"\x00\x00\x00\x07options\x00\x00\x00\x04head"));
        assert!(SPDY_DICTIONARY.ends_with(b",*,enq=0."));
    }

    #[tokio::test]
    async fn streams_with_headers_are_answered_and_yielded() {
        let (mut c, mut incoming) = session();
        let kinds = ["error", "data", "data"];
        for (i, kind) in kinds.iter().enumerate() {
            let id = 2 * i as u32 + 1;
            let rid = i.to_string();
            c.open(
                id,
                &[("streamtype", kind), ("port", "8080"), ("requestid", &rid)],
            )
            .await;
        }
        for (i, kind) in kinds.iter().enumerate() {
            let s = next(&mut incoming).await.unwrap();
            assert_eq!(s.id(), 2 * i as u32 + 1);
            assert_eq!(s.header("streamType"), Some(*kind));
            assert_eq!(s.header("port"), Some("8080"));
            assert_eq!(s.header("requestid"), Some(i.to_string().as_str()));
            assert_eq!(s.headers().len(), 3);
            assert_eq!(
                c.frame().await,
                Some(Seen::SynReply {
                    id: s.id(),
                    headers: vec![]
                })
            );
        }
    }

    #[tokio::test]
    async fn data_flows_both_ways_with_fin() {
        let (mut c, mut incoming) = session();
        c.open(1, &[("streamtype", "stdin")]).await;
        let s = next(&mut incoming).await.unwrap();
        let (mut r, mut w) = s.split();
        c.send(&data(1, false, b"hello ")).await;
        c.send(&data(1, false, b"")).await;
        c.send(&data(1, true, b"world")).await;
        assert_eq!(read_all(&mut r).await, b"hello world");
        w.write_all(b"pong").await.unwrap();
        w.shutdown().await.unwrap();
        assert!(matches!(
            c.frame().await,
            Some(Seen::SynReply { id: 1, .. })
        ));
        assert_eq!(
            c.frame_skip_wu().await,
            Some(Seen::Data {
                id: 1,
                fin: false,
                data: b"pong".to_vec()
            })
        );
        assert_eq!(
            c.frame_skip_wu().await,
            Some(Seen::Data {
                id: 1,
                fin: true,
                data: vec![]
            })
        );
        assert!(w.write_all(b"late").await.is_err(), "write after FIN fails");
    }

    #[tokio::test]
    async fn ping_is_echoed_with_the_same_id() {
        let (mut c, _incoming) = session();
        c.send(&ping(1)).await;
        assert_eq!(c.frame().await, Some(Seen::Ping(1)));
        // An even id would be the answer to a server ping: not echoed.
        c.send(&ping(2)).await;
        c.send(&ping(0x7fff_ffff)).await;
        assert_eq!(c.frame().await, Some(Seen::Ping(0x7fff_ffff)));
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[tokio::test]
    async fn window_updates_keep_a_1mib_upload_flowing() {
        let (mut c, mut incoming) = session();
        c.open(1, &[("streamtype", "data")]).await;
        let s = next(&mut incoming).await.unwrap();
        let (mut r, _w) = s.split();
        let total = 1024 * 1024;
        let payload = pattern(total);
        let server = tokio::spawn(async move { read_all(&mut r).await });
        assert!(matches!(
            c.frame().await,
            Some(Seen::SynReply { id: 1, .. })
        ));
        // The client keeps SPDY/3.1 windows: 64 KiB for the stream and for the session.
        let (mut stream_window, mut session_window) = (64 * 1024i64, 64 * 1024i64);
        let (mut sent, mut stream_updates, mut session_updates) = (0usize, 0, 0);
        while sent < total {
            while sent < total && stream_window.min(session_window) > 0 {
                let n = (16 * 1024).min(total - sent);
                let n = n.min(stream_window.min(session_window) as usize);
                let fin = sent + n == total;
                c.send(&data(1, fin, &payload[sent..sent + n])).await;
                sent += n;
                stream_window -= n as i64;
                session_window -= n as i64;
            }
            if sent == total {
                break;
            }
            match c.frame().await {
                Some(Seen::WindowUpdate { id: 1, delta }) => {
                    stream_updates += 1;
                    stream_window += i64::from(delta);
                }
                Some(Seen::WindowUpdate { id: 0, delta }) => {
                    session_updates += 1;
                    session_window += i64::from(delta);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        let got = timeout(T, server).await.unwrap().unwrap();
        assert_eq!(got.len(), total);
        assert!(got == payload, "payload corrupted");
        assert!(stream_updates >= 10, "stream updates: {stream_updates}");
        assert!(session_updates >= 10, "session updates: {session_updates}");
    }

    #[tokio::test]
    async fn download_respects_the_client_window() {
        let (mut c, mut incoming) = session();
        // The client announces a 32 KiB initial window: from now on the server must keep to it.
        c.send(&settings(&[(SETTINGS_INITIAL_WINDOW_SIZE, 32 * 1024)]))
            .await;
        c.open(1, &[("streamtype", "data")]).await;
        let s = next(&mut incoming).await.unwrap();
        let (_r, mut w) = s.split();
        let total = 1024 * 1024;
        let payload = pattern(total);
        let expected = payload.clone();
        let server = tokio::spawn(async move {
            w.write_all(&payload).await.unwrap();
            w.shutdown().await.unwrap();
        });
        assert!(matches!(
            c.frame().await,
            Some(Seen::SynReply { id: 1, .. })
        ));
        let (mut got, mut outstanding, mut unacked) = (Vec::new(), 0usize, 0usize);
        loop {
            match c.frame().await {
                Some(Seen::Data { id: 1, fin, data }) => {
                    assert!(data.len() <= MAX_DATA_FRAME);
                    outstanding += data.len();
                    assert!(outstanding <= 32 * 1024, "window overrun: {outstanding}");
                    unacked += data.len();
                    got.extend_from_slice(&data);
                    if fin {
                        break;
                    }
                    if unacked >= 8 * 1024 {
                        c.send(&window_update(1, unacked as u32)).await;
                        outstanding -= unacked;
                        unacked = 0;
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        timeout(T, server).await.unwrap().unwrap();
        assert!(got == expected, "payload corrupted");
    }

    #[tokio::test]
    async fn download_without_client_windows_does_not_stall() {
        // spdystream (kubectl) never sends WINDOW_UPDATE: the server must not wait for one.
        let (mut c, mut incoming) = session();
        c.open(1, &[("streamtype", "stdout")]).await;
        let s = next(&mut incoming).await.unwrap();
        let (_r, mut w) = s.split();
        let total = 1024 * 1024 + 17;
        let payload = pattern(total);
        let expected = payload.clone();
        let server = tokio::spawn(async move {
            w.write_all(&payload).await.unwrap();
            w.shutdown().await.unwrap();
        });
        assert!(matches!(
            c.frame().await,
            Some(Seen::SynReply { id: 1, .. })
        ));
        let mut got = Vec::new();
        loop {
            match c.frame().await {
                Some(Seen::Data { id: 1, fin, data }) => {
                    assert!(data.len() <= MAX_DATA_FRAME, "frame of {}", data.len());
                    got.extend_from_slice(&data);
                    if fin {
                        break;
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        timeout(T, server).await.unwrap().unwrap();
        assert!(got == expected, "payload corrupted");
    }

    #[tokio::test]
    async fn a_lagging_reader_holds_the_client_back() {
        let (mut c, mut incoming) = session();
        c.open(1, &[("streamtype", "data")]).await;
        let s = next(&mut incoming).await.unwrap();
        let shared = incoming.shared.clone();
        let (mut r, _w) = s.split();
        let total = 3 * 1024 * 1024;
        let payload = pattern(total);
        let expected = payload.clone();
        // spdystream ignores windows: it just keeps writing 32 KiB frames.
        let client = tokio::spawn(async move {
            for (i, chunk) in payload.chunks(32 * 1024).enumerate() {
                let fin = (i + 1) * 32 * 1024 >= total;
                c.send(&data(1, fin, chunk)).await;
            }
            c
        });
        let buffered = until(|| {
            let n = shared.lock().streams.get(&1).map_or(0, |s| s.recv_len);
            (n >= STREAM_RECV_LIMIT).then_some(n)
        })
        .await;
        // Give the reader task time to (wrongly) read on.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let buffered = buffered.max(shared.lock().streams.get(&1).map_or(0, |s| s.recv_len));
        assert!(
            buffered <= STREAM_RECV_LIMIT + 32 * 1024,
            "buffer grew past its cap: {buffered}"
        );
        assert!(!client.is_finished(), "the client was not held back");
        assert!(read_all(&mut r).await == expected, "payload corrupted");
        timeout(T, client).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn the_outgoing_queue_is_bounded_when_the_client_does_not_read() {
        let (mut c, mut incoming) = session();
        c.open(1, &[("streamtype", "stdout")]).await;
        let s = next(&mut incoming).await.unwrap();
        let shared = incoming.shared.clone();
        let (_r, mut w) = s.split();
        let writer = tokio::spawn(async move {
            let chunk = vec![7u8; 1024 * 1024];
            for _ in 0..8 {
                w.write_all(&chunk).await.unwrap();
            }
            w.shutdown().await.unwrap();
        });
        let queued_now = || {
            let st = shared.lock();
            st.out_bytes + st.in_flight
        };
        until(|| (queued_now() >= OUT_QUEUE_LIMIT).then_some(())).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        // At most one full queue waits while another is being written.
        let queued = queued_now();
        assert!(
            queued <= 2 * (OUT_QUEUE_LIMIT + MAX_DATA_FRAME + 8),
            "queue grew past its cap: {queued}"
        );
        assert!(!writer.is_finished());
        // Once the client reads, everything arrives.
        let mut got = 0;
        loop {
            match c.frame().await {
                Some(Seen::SynReply { .. }) => {}
                Some(Seen::Data { fin, data, .. }) => {
                    got += data.len();
                    if fin {
                        break;
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got, 8 * 1024 * 1024);
        timeout(T, writer).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn rst_from_the_client_ends_the_stream() {
        let (mut c, mut incoming) = session();
        c.open(1, &[("streamtype", "data")]).await;
        let s = next(&mut incoming).await.unwrap();
        let (mut r, mut w) = s.split();
        c.send(&data(1, false, b"abc")).await;
        c.send(&rst(1, RST_CANCEL)).await;
        // What arrived before the reset is still read, then EOF.
        assert_eq!(read_all(&mut r).await, b"abc");
        let err = w.write_all(b"x").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }

    #[tokio::test]
    async fn reset_sends_rst_cancel() {
        let (mut c, mut incoming) = session();
        c.open(1, &[("streamtype", "data")]).await;
        let s = next(&mut incoming).await.unwrap();
        let (mut r, w) = s.split();
        w.reset();
        assert!(matches!(
            c.frame().await,
            Some(Seen::SynReply { id: 1, .. })
        ));
        assert_eq!(
            c.frame().await,
            Some(Seen::Rst {
                id: 1,
                status: RST_CANCEL
            })
        );
        assert_eq!(read_all(&mut r).await, b"", "a reset stream reads EOF");
        drop(w);
        // No FIN follows a reset: the next frame is the answer to a ping.
        c.send(&ping(5)).await;
        assert_eq!(c.frame().await, Some(Seen::Ping(5)));
    }

    #[tokio::test]
    async fn dropping_both_halves_sends_fin() {
        let (mut c, mut incoming) = session();
        c.open(1, &[("streamtype", "error")]).await;
        c.open(3, &[("streamtype", "data")]).await;
        let s1 = next(&mut incoming).await.unwrap();
        let s3 = next(&mut incoming).await.unwrap();
        let (r, w) = s1.split();
        drop(w);
        drop(r);
        drop(s3);
        let mut fins = Vec::new();
        while fins.len() < 2 {
            match c.frame().await {
                Some(Seen::SynReply { .. }) => {}
                Some(Seen::Data {
                    id,
                    fin: true,
                    data,
                }) if data.is_empty() => fins.push(id),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(fins, vec![1, 3]);
    }

    #[tokio::test]
    async fn header_compression_context_spans_frames() {
        let (mut c, mut incoming) = session();
        let headers = [("streamtype", "data"), ("port", "8080"), ("requestid", "0")];
        let first = c.syn_stream(1, 0, &headers);
        let second = c.syn_stream(3, 0, &headers);
        let third = c.syn_stream(5, 0, &headers);
        // The later blocks only refer back to the first: a decoder with a fresh context per
        // frame could not read them.
        assert!(
            second.len() < first.len(),
            "{} vs {}",
            second.len(),
            first.len()
        );
        let mut fresh = HeaderInflater::new();
        assert!(
            fresh
                .inflate(&second[18..])
                .and_then(|b| parse_header_block(&b))
                .is_err()
        );
        for f in [&first, &second, &third] {
            c.send(f).await;
        }
        for id in [1, 3, 5] {
            let s = next(&mut incoming).await.unwrap();
            assert_eq!(s.id(), id);
            assert_eq!(s.header("streamtype"), Some("data"));
            assert_eq!(s.header("port"), Some("8080"));
            assert_eq!(s.header("requestid"), Some("0"));
        }
        // The replies share the server's context the same way.
        for id in [1, 3, 5] {
            assert_eq!(
                c.frame().await,
                Some(Seen::SynReply {
                    id,
                    headers: vec![]
                })
            );
        }
    }

    /// SYN_STREAM frames written by Go's SPDY framer (github.com/docker/spdystream/spdy, the
    /// framer moby/spdystream and kubectl use: zlib level 9 with the SPDY/3 dictionary), captured
    /// from `Framer.WriteFrame` for stream 1 `{Streamtype: error}` then stream 3
    /// `{Streamtype: data}` on one framer.
    const GO_SYN_STREAMS: [&str; 2] = [
        "80030001000000290000000100000000000078f9e3c6a7c26260606004a7b392a2d4c45c6851c29a0a0a6800000000ffff",
        "800300010000001600000003000000000000c22a052a651201000000ffff",
    ];

    #[tokio::test]
    async fn go_encoded_syn_streams_are_read() {
        let (mut c, mut incoming) = session();
        for f in GO_SYN_STREAMS {
            c.send(&hex(f)).await;
        }
        let s1 = next(&mut incoming).await.unwrap();
        assert_eq!(s1.id(), 1);
        assert_eq!(
            s1.headers(),
            &[("streamtype".to_string(), "error".to_string())]
        );
        let s3 = next(&mut incoming).await.unwrap();
        assert_eq!(s3.id(), 3);
        assert_eq!(s3.header("StreamType"), Some("data"));
    }

    #[test]
    fn another_implementations_header_block_is_read() {
        // SYN_STREAM from node's spdy-transport test suite (`:method: GET`, `:path: /`).
        let frame = hex(concat!(
            "800300010000002c0000000100000000000078",
            "f9e3c6a7c202e50e507ab442a45a77d7105006",
            "b32a4804974d8cfa00000000ffff"
        ));
        let mut inflater = HeaderInflater::new();
        let headers = parse_header_block(&inflater.inflate(&frame[18..]).unwrap()).unwrap();
        assert!(headers.contains(&(":method".to_string(), "GET".to_string())));
        assert!(headers.contains(&(":path".to_string(), "/".to_string())));
    }

    #[test]
    fn header_blocks_round_trip_and_split_nul_values() {
        let block = encode_header_block(&[("Accept", "a\0b"), ("x", "")]);
        let mut d = HeaderDeflater::new();
        let mut i = HeaderInflater::new();
        for _ in 0..3 {
            let parsed = parse_header_block(&i.inflate(&d.deflate(&block).unwrap()).unwrap());
            assert_eq!(
                parsed.unwrap(),
                vec![
                    ("accept".to_string(), "a".to_string()),
                    ("accept".to_string(), "b".to_string()),
                    ("x".to_string(), String::new()),
                ]
            );
        }
    }

    /// Feeds `input` to a fresh session and checks that it ends (with GOAWAY PROTOCOL_ERROR
    /// when `protocol_error`).
    async fn session_rejects(input: &[u8], protocol_error: bool) {
        let (mut c, mut incoming) = session();
        c.send(input).await;
        assert!(next(&mut incoming).await.is_none(), "session still open");
        let mut saw_goaway = false;
        while let Some(f) = c.frame().await {
            if f == (Seen::GoAway { last: 0, status: 1 }) {
                saw_goaway = true;
            }
        }
        assert_eq!(saw_goaway, protocol_error, "input {input:02x?}");
    }

    #[tokio::test]
    async fn garbage_closes_the_session_without_panic() {
        let mut c = Client::new(duplex(1).0);
        let mut too_many = be(1000).to_vec();
        too_many.extend_from_slice(&be(1));
        let bad_count = {
            let mut p = [be(1), be(0)].concat();
            p.extend_from_slice(&[0, 0]);
            let mut z = Compress::new(Compression::default(), true);
            z.set_dictionary(SPDY_DICTIONARY).unwrap();
            let mut out = Vec::with_capacity(256);
            z.compress_vec(&too_many, &mut out, FlushCompress::Sync)
                .unwrap();
            p.extend_from_slice(&out);
            control(1, 0, &p)
        };
        let corrupt_zlib = {
            let mut f = c.syn_stream(1, 0, &[("a", "b")]);
            let n = f.len();
            f[n - 6] ^= 0xff;
            f[20] ^= 0x55;
            f
        };
        let version_2_ping = {
            let mut f = ping(1);
            f[1] = 2;
            f
        };
        let cases: Vec<Vec<u8>> = vec![
            // HTTP instead of SPDY: a data frame with undefined flags.
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            version_2_ping,
            // PING of 3 bytes, RST_STREAM of 12.
            control(6, 0, &[0, 0, 1]),
            control(3, 0, &[0; 12]),
            data(0, false, b"x"),
            // DATA with the (SPDY/2) compressed flag.
            {
                let mut f = data(1, false, b"x");
                f[4] = 0x02;
                f
            },
            // SYN_STREAM shorter than its fixed fields.
            control(1, 0, &[0, 0, 0, 1, 0, 0, 0, 0, 0]),
            bad_count,
            corrupt_zlib,
            // SETTINGS announcing two entries but carrying one.
            control(4, 0, &[be(2), be(7), be(1)].concat()),
        ];
        for case in &cases {
            session_rejects(case, true).await;
        }
        // A frame cut short by the end of the connection ends the session quietly.
        let (mut c, mut incoming) = session();
        c.send(&ping(1)[..6]).await;
        drop(c);
        assert!(next(&mut incoming).await.is_none());
    }

    #[tokio::test]
    async fn random_input_never_panics() {
        // Deterministic xorshift bytes, some behind a valid SYN_STREAM so they reach deeper.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..64u32 {
            let len = (rnd() % 300) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
            // Sans-IO decoders on the raw bytes.
            let _ = parse_header_block(&bytes);
            let _ = HeaderInflater::new().inflate(&bytes);
            if bytes.len() >= 8 {
                let _ = parse_frame_head(bytes[..8].try_into().unwrap());
            }
            let (mut c, mut incoming) = session();
            if round.is_multiple_of(2) {
                let mut f = c.syn_stream(1, 0, &[("streamtype", "data")]);
                f.append(&mut bytes);
                bytes = f;
            }
            c.send(&bytes).await;
            drop(c);
            // Whatever happens, the session ends once the client is gone.
            while let Some(s) = next(&mut incoming).await {
                drop(s);
            }
        }
    }

    #[tokio::test]
    async fn close_sends_goaway_and_ends_the_connection() {
        let (mut c, mut incoming) = session();
        c.open(1, &[("streamtype", "data")]).await;
        let s = next(&mut incoming).await.unwrap();
        let (mut r, mut w) = s.split();
        w.write_all(b"bye").await.unwrap();
        timeout(T, incoming.close()).await.unwrap();
        let mut frames = Vec::new();
        while let Some(f) = c.frame().await {
            frames.push(f);
        }
        assert_eq!(
            frames,
            vec![
                Seen::SynReply {
                    id: 1,
                    headers: vec![]
                },
                Seen::Data {
                    id: 1,
                    fin: false,
                    data: b"bye".to_vec()
                },
                Seen::GoAway { last: 1, status: 0 },
            ]
        );
        assert_eq!(read_all(&mut r).await, b"", "readers see EOF after close");
        assert!(w.write_all(b"x").await.is_err());
    }

    #[tokio::test]
    async fn client_eof_ends_incoming_and_streams() {
        let (mut c, mut incoming) = session();
        c.open(1, &[("streamtype", "data")]).await;
        c.send(&data(1, false, b"partial")).await;
        let s = next(&mut incoming).await.unwrap();
        drop(c);
        assert!(next(&mut incoming).await.is_none());
        let (mut r, mut w) = s.split();
        assert_eq!(read_all(&mut r).await, b"partial");
        assert!(w.write_all(b"x").await.is_err());
    }

    #[tokio::test]
    async fn invalid_stream_ids_are_refused_and_unknown_frames_ignored() {
        let (mut c, mut incoming) = session();
        c.open(3, &[("streamtype", "a")]).await;
        c.open(1, &[("streamtype", "b")]).await; // not increasing
        c.open(4, &[("streamtype", "c")]).await; // even: server-initiated
        c.send(&control(5, 0, &[])).await; // NOOP (SPDY/2) is ignored
        c.send(&data(9, false, b"nobody")).await; // unknown stream: dropped
        c.open(5, &[("streamtype", "d")]).await;
        assert_eq!(
            next(&mut incoming).await.unwrap().header("streamtype"),
            Some("a")
        );
        assert_eq!(
            next(&mut incoming).await.unwrap().header("streamtype"),
            Some("d")
        );
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(c.frame().await.unwrap());
        }
        assert!(seen.contains(&Seen::Rst { id: 1, status: 1 }), "{seen:?}");
        assert!(seen.contains(&Seen::Rst { id: 4, status: 1 }), "{seen:?}");
    }

    #[tokio::test]
    async fn a_dropped_incoming_refuses_streams_and_closes_when_idle() {
        let (mut c, mut incoming) = session();
        c.open(1, &[("streamtype", "data")]).await;
        let s = next(&mut incoming).await.unwrap();
        drop(incoming);
        c.open(3, &[("streamtype", "late")]).await;
        assert!(matches!(
            c.frame().await,
            Some(Seen::SynReply { id: 1, .. })
        ));
        assert_eq!(c.frame().await, Some(Seen::Rst { id: 3, status: 3 }));
        drop(s);
        assert_eq!(
            c.frame().await,
            Some(Seen::Data {
                id: 1,
                fin: true,
                data: vec![]
            })
        );
        assert_eq!(c.frame().await, Some(Seen::GoAway { last: 3, status: 0 }));
        assert_eq!(c.frame().await, None);
    }

    /// A kubectl-like client on Go's spdystream (Debian `golang-github-docker-spdystream-dev`,
    /// the same code as moby/spdystream that kubectl vendors): ping, an error and a data stream
    /// as port-forward opens them, 1 MiB up in 32 KiB DATA frames, half-close, echo back.
    const GO_CLIENT: &str = r#"// A kubectl-like SPDY/3.1 client on spdystream: pings, opens an error and a data stream the way
// port-forward does, uploads 1 MiB, half-closes, and expects the server to echo it back.
package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/docker/spdystream"
)

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}

func main() {
	nc, err := net.Dial("tcp", os.Args[1])
	if err != nil {
		fail("dial: %v", err)
	}
	conn, err := spdystream.NewConnection(nc, false)
	if err != nil {
		fail("connection: %v", err)
	}
	go conn.Serve(spdystream.NoOpStreamHandler)
	if _, err := conn.Ping(); err != nil {
		fail("ping: %v", err)
	}
	errStream, err := conn.CreateStream(http.Header{"Streamtype": {"error"}, "Port": {"80"}, "Requestid": {"0"}}, nil, false)
	if err != nil {
		fail("error stream: %v", err)
	}
	if err := errStream.WaitTimeout(10 * time.Second); err != nil {
		fail("error stream reply: %v", err)
	}
	dataStream, err := conn.CreateStream(http.Header{"Streamtype": {"data"}, "Port": {"80"}, "Requestid": {"0"}}, nil, false)
	if err != nil {
		fail("data stream: %v", err)
	}
	if err := dataStream.WaitTimeout(10 * time.Second); err != nil {
		fail("data stream reply: %v", err)
	}
	payload := make([]byte, 1<<20)
	for i := range payload {
		payload[i] = byte(i*7 + i/251)
	}
	go func() {
		// kubectl copies with io.Copy: 32 KiB writes, one DATA frame each.
		if _, err := io.Copy(dataStream, bytes.NewReader(payload)); err != nil {
			fail("upload: %v", err)
		}
		if err := dataStream.Close(); err != nil {
			fail("half-close: %v", err)
		}
	}()
	echo, err := io.ReadAll(dataStream)
	if err != nil {
		fail("download: %v", err)
	}
	if !bytes.Equal(echo, payload) {
		fail("echo differs: %d bytes back", len(echo))
	}
	msg, err := io.ReadAll(errStream)
	if err != nil {
		fail("error stream read: %v", err)
	}
	if string(msg) != "no error" {
		fail("error stream said %q", msg)
	}
	if err := conn.Close(); err != nil {
		fail("close: %v", err)
	}
	fmt.Println("ok")
}
"#;

    const GO_PATH: &str = "/usr/share/gocode";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_go_spdystream_client_interoperates() {
        let package = format!("{GO_PATH}/src/github.com/docker/spdystream");
        let go = std::process::Command::new("go").arg("version").output();
        if go.is_err() || !std::path::Path::new(&package).exists() {
            eprintln!(
                "SKIPPED a_go_spdystream_client_interoperates: needs `go` and {package} \
                 (apt-get install golang-go golang-github-docker-spdystream-dev)"
            );
            return;
        }
        let dir = std::env::temp_dir().join(format!("spdy-go-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("main.go"), GO_CLIENT).unwrap();
        let bin = dir.join("client");
        let build = std::process::Command::new("go")
            .args(["build", "-o"])
            .arg(&bin)
            .arg(".")
            .current_dir(&dir)
            .env("GO111MODULE", "off")
            .env("GOPATH", GO_PATH)
            .env("GOCACHE", dir.join("cache"))
            .output()
            .unwrap();
        assert!(
            build.status.success(),
            "go build: {}",
            String::from_utf8_lossy(&build.stderr)
        );

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut incoming = serve(tcp);
            let error = next(&mut incoming).await.unwrap();
            assert_eq!(error.header("streamtype"), Some("error"));
            assert_eq!(error.header("port"), Some("80"));
            assert_eq!(error.header("requestid"), Some("0"));
            let data = next(&mut incoming).await.unwrap();
            assert_eq!(data.header("streamtype"), Some("data"));
            let (mut r, mut w) = data.split();
            let got = read_all(&mut r).await;
            w.write_all(&got).await.unwrap();
            w.shutdown().await.unwrap();
            let (_er, mut ew) = error.split();
            ew.write_all(b"no error").await.unwrap();
            ew.shutdown().await.unwrap();
            // The client ends with GOAWAY and closes; the session then ends.
            assert!(next(&mut incoming).await.is_none());
            got.len()
        });
        let run = tokio::task::spawn_blocking(move || {
            std::process::Command::new(&bin)
                .arg(addr.to_string())
                .output()
                .unwrap()
        });
        let out = timeout(Duration::from_secs(60), run)
            .await
            .unwrap()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            out.status.success(),
            "go client: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
        assert_eq!(timeout(T, server).await.unwrap().unwrap(), 1 << 20);
    }

    #[test]
    fn halves_are_send_and_static() {
        fn check<T: Send + 'static>() {}
        check::<SpdyReader>();
        check::<SpdyWriter>();
        check::<SpdyStream>();
        check::<Incoming>();
    }
}
