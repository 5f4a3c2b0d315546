//! The host <-> guest wire protocol over one virtio-serial port: length-prefixed binary frames,
//! multiplexed by process id (0 = the container, 1.. = exec sessions, chosen by the host).
//!
//! A frame is `len: u32 LE` (of what follows), `kind: u8`, `id: u32 LE`, then the payload.
//! Pure (std only, no I/O beyond `Read`/`Write`), shared verbatim by the guest agent and the
//! host side (which includes this file), so both ends always agree.
//!
//! Version 2 ([`VERSION`]) adds resumable output: a container's output comes in
//! [`Frame::Output`] frames numbered by byte offset per stream; the host acknowledges what it
//! wrote to the log ([`Frame::Ack`]), the guest keeps what is not acknowledged (at most
//! [`RESEND_LIMIT`] bytes a stream), and a host that takes a running VM back sends
//! [`Frame::Resume`] with the offsets its logs have: the guest answers [`Frame::Sync`] (the host
//! drops every byte before it, see [`Decoder::seek_sync`]) and sends again what follows those
//! offsets, then the exit of a process that ended meanwhile. [`Frame::Exit`] carries how long
//! ago the process ended by the guest's monotonic clock, so a host that learns of it late
//! still knows when it ended. An older peer's frames decode (no offsets, no end time).

use std::io::{self, Read, Write};

/// Largest frame accepted (payload plus header); bigger ones are a protocol error.
pub const MAX_FRAME: usize = 1 << 20;

/// The data of output frames is cut into chunks of at most this many bytes.
pub const CHUNK: usize = 32 * 1024;

/// The protocol version of this file. The guest says its own in [`Frame::Ready`]; the host
/// records it with the VM (its state file) and acknowledges output to and resumes only a guest
/// of version 2 or later (the ends of an older one's processes are queried as before).
pub const VERSION: u32 = 2;

/// Output of a container process (not of an exec session) the guest keeps until the host
/// acknowledges it, per stream: past this, the oldest unacknowledged bytes are dropped, and a
/// host that resumes from before them gets a gap (it logs how many bytes were lost).
pub const RESEND_LIMIT: usize = 1 << 20;

/// What to run: a process in the container's root filesystem.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Spec {
    pub args: Vec<String>,
    /// `KEY=VALUE` entries, the whole environment.
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    /// Whether the host sends stdin (else the process reads /dev/null).
    pub stdin: bool,
    /// Run on a terminal (a pty in the container's /dev/pts): one output stream, resizable.
    pub tty: bool,
    /// The root filesystem to run in: 0 is the single container's (`/dev/vda`, mounted at
    /// boot); n > 0 is one a [`Frame::Prepare`] made (a container of a pod).
    pub root: u32,
    /// Memory limit of the process and its children in bytes (a cgroup of its own in the
    /// guest); 0 is none. Over it, the kernel's OOM killer ends it: [`Frame::OomKilled`].
    pub memory_limit: u64,
    /// The supplementary groups (`setgroups`), besides `gid`.
    pub groups: Vec<u32>,
    /// CPU limit in thousandths of a CPU (`cpu.max` of its cgroup); 0 is none.
    pub cpu_limit_millis: u64,
    /// The PID namespace it runs in.
    pub pid_ns: PidNs,
}

/// The PID namespace of a process. Whichever it is, the guest agent is not in it: a container
/// never sees nor signals the agent. Every process of the VM shares one IPC namespace (and
/// one /dev/shm), the pod's, which is not the agent's either.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PidNs {
    /// A new one whose PID 1 is the process (a container's process, as Kubernetes runs it).
    #[default]
    Own,
    /// The one of process `id` (an exec session in its container).
    Join(u32),
    /// The pod's shared one (`shareProcessNamespace`), whose PID 1 is a pause process.
    Pod,
}

/// A container root filesystem of a pod, made by [`Frame::Prepare`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Setup {
    /// The serial of the container's disk (`-device virtio-blk-device,serial=...`).
    pub serial: String,
    pub mounts: Vec<MountSpec>,
    /// The size of the container's writable layer in bytes (the `size=` of its tmpfs: a write
    /// past it fails with ENOSPC), its `ephemeral-storage` limit; 0 is none. A host of an older
    /// version sends none (0); a guest of an older version ignores it.
    pub writable_limit: u64,
}

/// One mount into a container's root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// The absolute path in the container.
    pub target: String,
    pub read_only: bool,
    pub source: MountSource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSource {
    /// A pod volume by name: a directory on the VM's tmpfs, shared by every container mounting it.
    Volume(String),
    /// A file with these contents (mode 0644), e.g. /etc/hosts.
    File(Vec<u8>),
}

/// The state of one process as the guest sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Unknown,
    Running {
        pid: u32,
    },
    /// Exit code, or 128 + signal number when killed by a signal.
    Exited {
        code: i32,
    },
}

/// What the pod's writable layers and volumes hold in the guest (bytes in use), the answer to
/// [`Frame::QueryUsage`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Per root filesystem (0: the single container's): its writable layer's tmpfs.
    pub roots: Vec<(u32, u64)>,
    /// Per pod volume (a directory of the volumes' tmpfs) by name.
    pub volumes: Vec<(String, u64)>,
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    // Host -> guest.
    /// Start the container (id 0) or an exec session (id > 0).
    Run(u32, Spec),
    /// Bytes for the process's stdin; an empty payload closes it.
    Stdin(u32, Vec<u8>),
    /// Send a signal to the process. SIGKILL to a container's process that is PID 1 of its own
    /// PID namespace ([`PidNs::Own`]) goes to every process of that namespace (`kill --all`);
    /// any other signal to the main process only, as kubelet sends the stop signal.
    Signal(u32, i32),
    /// Ask for the process's state; answered with [`Frame::Status`].
    Query(u32),
    /// Set the terminal size (rows, columns) of a process started with `tty`.
    Resize(u32, u16, u16),
    /// Make root filesystem n (> 0) of a pod; answered with [`Frame::Prepared`].
    Prepare(u32, Setup),
    /// Unmount root filesystem n (> 0), made by [`Frame::Prepare`], and free what it held (a
    /// restarted container's last root); no answer.
    Release(u32),
    /// The host has the process's stdout and stderr up to these offsets (written to its log):
    /// the guest may forget them.
    Ack(u32, [u64; 2]),
    /// A host took the VM back (id 0): the guest answers [`Frame::Sync`] with this nonce, then
    /// for each (process, [stdout, stderr] offsets) sends its kept output from those offsets
    /// and, if it ended, its `OomKilled` and `Exit` again ([`Frame::Status`] `Unknown` for a
    /// process it does not know).
    Resume(u64, Vec<(u32, [u64; 2])>),
    /// Ask what the writable layers and volumes use (id 0); answered with [`Frame::Usage`].
    QueryUsage,
    // Guest -> host.
    /// The agent is up (root filesystem mounted), sent once in answer to the host's first
    /// frame, with its protocol version ([`VERSION`]; 1 from a guest that sends none).
    Ready(u32),
    Started(u32, u32),
    /// Output of a guest of version 1 (a version 2 guest sends [`Frame::Output`]).
    Stdout(u32, Vec<u8>),
    Stderr(u32, Vec<u8>),
    /// Output of the process: (id, stderr, offset of the first byte in that stream, data).
    Output(u32, bool, u64, Vec<u8>),
    /// The process ended with this code; all its output was sent before. The last field is
    /// how many milliseconds ago it ended, by the guest's monotonic clock, when the frame was
    /// made (none from a guest of version 1).
    Exit(u32, i32, Option<u64>),
    /// The answer to [`Frame::Resume`] with its nonce: what follows is sent after the resume.
    Sync(u64),
    Usage(Usage),
    /// Running failed (no such program, bad cwd...) or the agent hit an error.
    Error(u32, String),
    Status(u32, State),
    /// Root filesystem n is ready (empty message) or could not be made (the error).
    Prepared(u32, String),
    /// The process's cgroup hit its memory limit and the OOM killer killed in it; sent before
    /// its `Exit`.
    OomKilled(u32),
}

/// Protocol errors.
#[derive(Debug)]
pub enum ProtoError {
    Io(io::Error),
    TooLarge(usize),
    UnknownKind(u8),
    Truncated,
    Utf8,
}

impl std::fmt::Display for ProtoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProtoError::Io(e) => write!(f, "channel I/O: {e}"),
            ProtoError::TooLarge(n) => write!(f, "frame of {n} bytes exceeds the limit"),
            ProtoError::UnknownKind(k) => write!(f, "unknown frame kind {k}"),
            ProtoError::Truncated => write!(f, "truncated frame"),
            ProtoError::Utf8 => write!(f, "string is not UTF-8"),
        }
    }
}

impl std::error::Error for ProtoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProtoError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for ProtoError {
    fn from(e: io::Error) -> Self {
        ProtoError::Io(e)
    }
}

mod kind {
    pub const RUN: u8 = 1;
    pub const STDIN: u8 = 2;
    pub const SIGNAL: u8 = 3;
    pub const QUERY: u8 = 4;
    pub const RESIZE: u8 = 5;
    pub const PREPARE: u8 = 6;
    pub const RELEASE: u8 = 7;
    pub const READY: u8 = 10;
    pub const STARTED: u8 = 11;
    pub const STDOUT: u8 = 12;
    pub const STDERR: u8 = 13;
    pub const EXIT: u8 = 14;
    pub const ERROR: u8 = 15;
    pub const STATUS: u8 = 16;
    pub const PREPARED: u8 = 17;
    pub const OOM_KILLED: u8 = 18;
    pub const ACK: u8 = 8;
    pub const RESUME: u8 = 9;
    pub const OUTPUT: u8 = 19;
    pub const SYNC: u8 = 20;
    pub const QUERY_USAGE: u8 = 21;
    pub const USAGE: u8 = 22;
}

fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    put_u32(b, s.len() as u32);
    b.extend_from_slice(s.as_bytes());
}

fn put_strs(b: &mut Vec<u8>, v: &[String]) {
    put_u32(b, v.len() as u32);
    for s in v {
        put_str(b, s);
    }
}

/// A cursor over a payload.
struct Cur<'a>(&'a [u8]);

impl Cur<'_> {
    fn bytes(&mut self, n: usize) -> Result<&[u8], ProtoError> {
        if self.0.len() < n {
            return Err(ProtoError::Truncated);
        }
        let (a, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32, ProtoError> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, ProtoError> {
        let lo = self.u32()?;
        let hi = self.u32()?;
        Ok(u64::from(lo) | (u64::from(hi) << 32))
    }
    fn i32(&mut self) -> Result<i32, ProtoError> {
        Ok(self.u32()? as i32)
    }
    fn string(&mut self) -> Result<String, ProtoError> {
        let n = self.u32()? as usize;
        let b = self.bytes(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| ProtoError::Utf8)
    }
    fn blob(&mut self) -> Result<Vec<u8>, ProtoError> {
        let n = self.u32()? as usize;
        Ok(self.bytes(n)?.to_vec())
    }
    fn strings(&mut self) -> Result<Vec<String>, ProtoError> {
        let n = self.u32()? as usize;
        // Each string takes at least 4 bytes: refuse counts the payload cannot hold.
        if n > self.0.len() / 4 {
            return Err(ProtoError::Truncated);
        }
        (0..n).map(|_| self.string()).collect()
    }
}

impl Frame {
    /// The frame's bytes, header included.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; 4];
        let (k, id) = match self {
            Frame::Run(id, _) => (kind::RUN, *id),
            Frame::Stdin(id, _) => (kind::STDIN, *id),
            Frame::Signal(id, _) => (kind::SIGNAL, *id),
            Frame::Query(id) => (kind::QUERY, *id),
            Frame::Resize(id, ..) => (kind::RESIZE, *id),
            Frame::Ready(_) => (kind::READY, 0),
            Frame::Started(id, _) => (kind::STARTED, *id),
            Frame::Stdout(id, _) => (kind::STDOUT, *id),
            Frame::Stderr(id, _) => (kind::STDERR, *id),
            Frame::Exit(id, ..) => (kind::EXIT, *id),
            Frame::Error(id, _) => (kind::ERROR, *id),
            Frame::Status(id, _) => (kind::STATUS, *id),
            Frame::Prepare(id, _) => (kind::PREPARE, *id),
            Frame::Release(id) => (kind::RELEASE, *id),
            Frame::Prepared(id, _) => (kind::PREPARED, *id),
            Frame::OomKilled(id) => (kind::OOM_KILLED, *id),
            Frame::Ack(id, _) => (kind::ACK, *id),
            Frame::Resume(..) => (kind::RESUME, 0),
            Frame::Output(id, ..) => (kind::OUTPUT, *id),
            Frame::Sync(_) => (kind::SYNC, 0),
            Frame::QueryUsage => (kind::QUERY_USAGE, 0),
            Frame::Usage(_) => (kind::USAGE, 0),
        };
        b.push(k);
        put_u32(&mut b, id);
        match self {
            Frame::Run(_, s) => {
                put_strs(&mut b, &s.args);
                put_strs(&mut b, &s.env);
                put_str(&mut b, &s.cwd);
                put_u32(&mut b, s.uid);
                put_u32(&mut b, s.gid);
                b.push(u8::from(s.stdin));
                b.push(u8::from(s.tty));
                put_u32(&mut b, s.root);
                b.extend_from_slice(&s.memory_limit.to_le_bytes());
                put_u32(&mut b, s.groups.len() as u32);
                for g in &s.groups {
                    put_u32(&mut b, *g);
                }
                b.extend_from_slice(&s.cpu_limit_millis.to_le_bytes());
                let (tag, v) = match s.pid_ns {
                    PidNs::Own => (0, 0),
                    PidNs::Join(id) => (1, id),
                    PidNs::Pod => (2, 0),
                };
                b.push(tag);
                put_u32(&mut b, v);
            }
            Frame::Prepare(_, setup) => {
                put_str(&mut b, &setup.serial);
                put_u32(&mut b, setup.mounts.len() as u32);
                for m in &setup.mounts {
                    put_str(&mut b, &m.target);
                    b.push(u8::from(m.read_only));
                    match &m.source {
                        MountSource::Volume(name) => {
                            b.push(0);
                            put_str(&mut b, name);
                        }
                        MountSource::File(data) => {
                            b.push(1);
                            put_u32(&mut b, data.len() as u32);
                            b.extend_from_slice(data);
                        }
                    }
                }
                b.extend_from_slice(&setup.writable_limit.to_le_bytes());
            }
            Frame::Prepared(_, m) => b.extend_from_slice(m.as_bytes()),
            Frame::Resize(_, rows, cols) => {
                b.extend_from_slice(&rows.to_le_bytes());
                b.extend_from_slice(&cols.to_le_bytes());
            }
            Frame::Stdin(_, d) | Frame::Stdout(_, d) | Frame::Stderr(_, d) => {
                b.extend_from_slice(d)
            }
            Frame::Signal(_, v) => put_u32(&mut b, *v as u32),
            // Version 1 sent none.
            Frame::Ready(v) if *v > 1 => put_u32(&mut b, *v),
            Frame::Exit(_, v, ago) => {
                put_u32(&mut b, *v as u32);
                if let Some(ms) = ago {
                    b.extend_from_slice(&ms.to_le_bytes());
                }
            }
            Frame::Ack(_, [out, err]) => {
                b.extend_from_slice(&out.to_le_bytes());
                b.extend_from_slice(&err.to_le_bytes());
            }
            Frame::Resume(nonce, list) => {
                b.extend_from_slice(&nonce.to_le_bytes());
                put_u32(&mut b, list.len() as u32);
                for (id, [out, err]) in list {
                    put_u32(&mut b, *id);
                    b.extend_from_slice(&out.to_le_bytes());
                    b.extend_from_slice(&err.to_le_bytes());
                }
            }
            Frame::Output(_, stderr, offset, d) => {
                b.push(u8::from(*stderr));
                b.extend_from_slice(&offset.to_le_bytes());
                b.extend_from_slice(d);
            }
            Frame::Sync(nonce) => b.extend_from_slice(&nonce.to_le_bytes()),
            Frame::Usage(u) => {
                put_u32(&mut b, u.roots.len() as u32);
                for (root, bytes) in &u.roots {
                    put_u32(&mut b, *root);
                    b.extend_from_slice(&bytes.to_le_bytes());
                }
                put_u32(&mut b, u.volumes.len() as u32);
                for (name, bytes) in &u.volumes {
                    put_str(&mut b, name);
                    b.extend_from_slice(&bytes.to_le_bytes());
                }
            }
            Frame::Started(_, pid) => put_u32(&mut b, *pid),
            Frame::Error(_, m) => b.extend_from_slice(m.as_bytes()),
            Frame::Status(_, st) => match st {
                State::Unknown => b.push(0),
                State::Running { pid } => {
                    b.push(1);
                    put_u32(&mut b, *pid);
                }
                State::Exited { code } => {
                    b.push(2);
                    put_u32(&mut b, *code as u32);
                }
            },
            Frame::Query(_)
            | Frame::Ready(_)
            | Frame::OomKilled(_)
            | Frame::Release(_)
            | Frame::QueryUsage => {}
        }
        let len = (b.len() - 4) as u32;
        b[..4].copy_from_slice(&len.to_le_bytes());
        b
    }

    /// Decodes one frame body (what follows the length prefix).
    pub fn decode(body: &[u8]) -> Result<Frame, ProtoError> {
        let mut c = Cur(body);
        let k = c.bytes(1)?[0];
        let id = c.u32()?;
        let f = match k {
            kind::RUN => Frame::Run(
                id,
                Spec {
                    args: c.strings()?,
                    env: c.strings()?,
                    cwd: c.string()?,
                    uid: c.u32()?,
                    gid: c.u32()?,
                    stdin: c.bytes(1)?[0] != 0,
                    tty: c.bytes(1)?[0] != 0,
                    root: c.u32()?,
                    memory_limit: c.u64()?,
                    // A host of an older version sends none of what follows.
                    groups: if c.0.is_empty() {
                        Vec::new()
                    } else {
                        let n = c.u32()? as usize;
                        if n > c.0.len() / 4 {
                            return Err(ProtoError::Truncated);
                        }
                        (0..n).map(|_| c.u32()).collect::<Result<_, _>>()?
                    },
                    cpu_limit_millis: if c.0.is_empty() { 0 } else { c.u64()? },
                    pid_ns: if c.0.is_empty() {
                        PidNs::Own
                    } else {
                        let tag = c.bytes(1)?[0];
                        let v = c.u32()?;
                        match tag {
                            0 => PidNs::Own,
                            1 => PidNs::Join(v),
                            2 => PidNs::Pod,
                            other => return Err(ProtoError::UnknownKind(other)),
                        }
                    },
                },
            ),
            kind::PREPARE => {
                let serial = c.string()?;
                let n = c.u32()? as usize;
                // Each mount takes at least 10 bytes.
                if n > c.0.len() / 10 {
                    return Err(ProtoError::Truncated);
                }
                let mut mounts = Vec::with_capacity(n);
                for _ in 0..n {
                    let target = c.string()?;
                    let read_only = c.bytes(1)?[0] != 0;
                    let source = match c.bytes(1)?[0] {
                        0 => MountSource::Volume(c.string()?),
                        1 => MountSource::File(c.blob()?),
                        other => return Err(ProtoError::UnknownKind(other)),
                    };
                    mounts.push(MountSpec {
                        target,
                        read_only,
                        source,
                    });
                }
                // A host of an older version sends no writable limit.
                let writable_limit = if c.0.is_empty() { 0 } else { c.u64()? };
                Frame::Prepare(
                    id,
                    Setup {
                        serial,
                        mounts,
                        writable_limit,
                    },
                )
            }
            kind::PREPARED => Frame::Prepared(id, String::from_utf8_lossy(c.0).into_owned()),
            kind::OOM_KILLED => Frame::OomKilled(id),
            kind::RELEASE => Frame::Release(id),
            kind::RESIZE => {
                let r = c.bytes(4)?;
                Frame::Resize(
                    id,
                    u16::from_le_bytes([r[0], r[1]]),
                    u16::from_le_bytes([r[2], r[3]]),
                )
            }
            kind::STDIN => Frame::Stdin(id, c.0.to_vec()),
            kind::SIGNAL => Frame::Signal(id, c.i32()?),
            kind::QUERY => Frame::Query(id),
            kind::READY => Frame::Ready(if c.0.is_empty() { 1 } else { c.u32()? }),
            kind::STARTED => Frame::Started(id, c.u32()?),
            kind::STDOUT => Frame::Stdout(id, c.0.to_vec()),
            kind::STDERR => Frame::Stderr(id, c.0.to_vec()),
            kind::EXIT => Frame::Exit(
                id,
                c.i32()?,
                if c.0.is_empty() { None } else { Some(c.u64()?) },
            ),
            kind::ACK => Frame::Ack(id, [c.u64()?, c.u64()?]),
            kind::RESUME => {
                let nonce = c.u64()?;
                let n = c.u32()? as usize;
                // Each entry takes 20 bytes.
                if n > c.0.len() / 20 {
                    return Err(ProtoError::Truncated);
                }
                let list = (0..n)
                    .map(|_| Ok((c.u32()?, [c.u64()?, c.u64()?])))
                    .collect::<Result<_, ProtoError>>()?;
                Frame::Resume(nonce, list)
            }
            kind::OUTPUT => {
                let stderr = c.bytes(1)?[0] != 0;
                let offset = c.u64()?;
                Frame::Output(id, stderr, offset, c.0.to_vec())
            }
            kind::SYNC => Frame::Sync(c.u64()?),
            kind::QUERY_USAGE => Frame::QueryUsage,
            kind::USAGE => {
                let n = c.u32()? as usize;
                // A root takes 12 bytes, a volume at least 12.
                if n > c.0.len() / 12 {
                    return Err(ProtoError::Truncated);
                }
                let roots = (0..n)
                    .map(|_| Ok((c.u32()?, c.u64()?)))
                    .collect::<Result<_, ProtoError>>()?;
                let n = c.u32()? as usize;
                if n > c.0.len() / 12 {
                    return Err(ProtoError::Truncated);
                }
                let volumes = (0..n)
                    .map(|_| Ok((c.string()?, c.u64()?)))
                    .collect::<Result<_, ProtoError>>()?;
                Frame::Usage(Usage { roots, volumes })
            }
            kind::ERROR => Frame::Error(id, String::from_utf8_lossy(c.0).into_owned()),
            kind::STATUS => Frame::Status(
                id,
                match c.bytes(1)?[0] {
                    1 => State::Running { pid: c.u32()? },
                    2 => State::Exited { code: c.i32()? },
                    _ => State::Unknown,
                },
            ),
            other => return Err(ProtoError::UnknownKind(other)),
        };
        Ok(f)
    }

    /// Writes the frame in one `write_all`.
    pub fn write_to(&self, w: &mut impl Write) -> Result<(), ProtoError> {
        w.write_all(&self.encode())?;
        w.flush()?;
        Ok(())
    }

    /// Reads one frame; `Ok(None)` on a clean end of stream between frames.
    pub fn read_from(r: &mut impl Read) -> Result<Option<Frame>, ProtoError> {
        let mut len = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match r.read(&mut len[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(ProtoError::Truncated),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        let n = u32::from_le_bytes(len) as usize;
        if n > MAX_FRAME {
            return Err(ProtoError::TooLarge(n));
        }
        let mut body = vec![0u8; n];
        r.read_exact(&mut body).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => ProtoError::Truncated,
            _ => ProtoError::Io(e),
        })?;
        Frame::decode(&body).map(Some)
    }
}

/// Splits a byte buffer into frames: feed bytes with [`Decoder::push`], take complete frames
/// with [`Decoder::next_frame`]. For readers that are not blocking `Read`s (the host's async side).
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
    /// The bytes of the [`Frame::Sync`] to skip to, while seeking it.
    seek: Option<Vec<u8>>,
}

impl Decoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Drops every byte (whole frames, or the rest of one whose start went elsewhere) up to
    /// `Frame::Sync(nonce)`, which is the next frame returned: a host that resumes a VM starts
    /// at a frame boundary whatever the channel held.
    pub fn seek_sync(&mut self, nonce: u64) {
        self.seek = Some(Frame::Sync(nonce).encode());
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ProtoError> {
        if let Some(pattern) = &self.seek {
            match self
                .buf
                .windows(pattern.len())
                .position(|w| w == &pattern[..])
            {
                Some(at) => {
                    self.buf.drain(..at);
                    self.seek = None;
                }
                None => {
                    // Keep what could be the start of the pattern.
                    let keep = (pattern.len() - 1).min(self.buf.len());
                    self.buf.drain(..self.buf.len() - keep);
                    return Ok(None);
                }
            }
        }
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let n = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if n > MAX_FRAME {
            return Err(ProtoError::TooLarge(n));
        }
        if self.buf.len() < 4 + n {
            return Ok(None);
        }
        let f = Frame::decode(&self.buf[4..4 + n]);
        self.buf.drain(..4 + n);
        f.map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resuming host drops whatever precedes the guest's Sync (the rest of a frame cut in
    /// two, whole frames sent before the resume), even when it arrives a byte at a time.
    #[test]
    fn the_decoder_skips_to_the_sync_of_its_resume() {
        let before = Frame::Output(1, false, 0, b"old output".to_vec()).encode();
        let mut wire = before[7..].to_vec();
        wire.extend(Frame::Exit(1, 0, Some(5)).encode());
        wire.extend(Frame::Sync(41).encode());
        wire.extend(Frame::Sync(42).encode());
        let after = [
            Frame::Output(1, false, 3, b"again".to_vec()),
            Frame::Exit(1, 0, Some(9)),
        ];
        for f in &after {
            wire.extend(f.encode());
        }
        for step in [1, 3, wire.len()] {
            let mut d = Decoder::default();
            d.seek_sync(42);
            let mut got = Vec::new();
            for part in wire.chunks(step) {
                d.push(part);
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(f);
                }
            }
            let mut want = vec![Frame::Sync(42)];
            want.extend(after.iter().cloned());
            assert_eq!(got, want, "fed {step} bytes at a time");
        }
    }

    fn all() -> Vec<Frame> {
        vec![
            Frame::Run(
                0,
                Spec {
                    args: vec!["sh".into(), "-c".into(), "echo hi".into()],
                    env: vec!["PATH=/bin".into()],
                    cwd: "/".into(),
                    uid: 65534,
                    gid: 65534,
                    stdin: true,
                    tty: false,
                    root: 0,
                    memory_limit: 0,
                    groups: vec![65534, 10, 4],
                    cpu_limit_millis: 250,
                    pid_ns: PidNs::Own,
                },
            ),
            Frame::Run(
                5,
                Spec {
                    args: vec!["sh".into()],
                    tty: true,
                    pid_ns: PidNs::Pod,
                    ..Default::default()
                },
            ),
            Frame::Resize(5, 40, 120),
            Frame::Run(
                9,
                Spec {
                    args: vec!["true".into()],
                    root: 2,
                    memory_limit: (5 << 32) | 7,
                    pid_ns: PidNs::Join(3),
                    ..Default::default()
                },
            ),
            Frame::Prepare(
                2,
                Setup {
                    serial: "c2".into(),
                    mounts: vec![
                        MountSpec {
                            target: "/data".into(),
                            read_only: false,
                            source: MountSource::Volume("cache".into()),
                        },
                        MountSpec {
                            target: "/etc/hosts".into(),
                            read_only: true,
                            source: MountSource::File(b"127.0.0.1 localhost\n".to_vec()),
                        },
                    ],
                    writable_limit: 4 << 20,
                },
            ),
            Frame::Prepared(2, String::new()),
            Frame::Prepared(3, "no disk".into()),
            Frame::Release(2),
            Frame::OomKilled(4),
            Frame::Stdin(3, b"data".to_vec()),
            Frame::Stdin(3, vec![]),
            Frame::Signal(0, 15),
            Frame::Query(7),
            Frame::Ready(1),
            Frame::Ready(VERSION),
            Frame::Started(1, 42),
            Frame::Stdout(0, b"hello\n".to_vec()),
            Frame::Stderr(0, b"err\n".to_vec()),
            Frame::Exit(2, -1, None),
            Frame::Exit(0, 137, Some(4321)),
            Frame::Ack(3, [7, 1 << 40]),
            Frame::Resume(99, vec![(1, [0, 5]), (4, [1 << 33, 2])]),
            Frame::Resume(1, vec![]),
            Frame::Output(2, false, 0, b"out".to_vec()),
            Frame::Output(2, true, 1 << 35, b"err".to_vec()),
            Frame::Sync(0xfeed),
            Frame::QueryUsage,
            Frame::Usage(Usage::default()),
            Frame::Usage(Usage {
                roots: vec![(1, 4096), (3, 5 << 30)],
                volumes: vec![("cache".into(), 8192)],
            }),
            Frame::Error(4, "no such file".into()),
            Frame::Status(0, State::Unknown),
            Frame::Status(0, State::Running { pid: 9 }),
            Frame::Status(0, State::Exited { code: 3 }),
        ]
    }

    #[test]
    fn every_frame_round_trips_through_read_and_decoder() {
        let mut wire = Vec::new();
        for f in all() {
            f.write_to(&mut wire).unwrap();
        }
        let mut r = &wire[..];
        let mut back = Vec::new();
        while let Some(f) = Frame::read_from(&mut r).unwrap() {
            back.push(f);
        }
        assert_eq!(back, all());

        // Byte by byte through the decoder.
        let mut d = Decoder::default();
        let mut back = Vec::new();
        for b in &wire {
            d.push(std::slice::from_ref(b));
            while let Some(f) = d.next_frame().unwrap() {
                back.push(f);
            }
        }
        assert_eq!(back, all());
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(matches!(Frame::decode(&[]), Err(ProtoError::Truncated)));
        assert!(matches!(
            Frame::decode(&[99, 0, 0, 0, 0]),
            Err(ProtoError::UnknownKind(99))
        ));
        // A Run whose argv count claims more strings than there are bytes.
        let mut body = vec![kind::RUN, 0, 0, 0, 0];
        body.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(Frame::decode(&body), Err(ProtoError::Truncated)));
        // A Run as an older host sends it (nothing after the memory limit) still decodes.
        let full = Frame::Run(
            1,
            Spec {
                args: vec!["true".into()],
                memory_limit: 9,
                ..Default::default()
            },
        )
        .encode();
        let old = &full[4..full.len() - (4 + 8 + 5)];
        match Frame::decode(old).unwrap() {
            Frame::Run(1, s) => assert_eq!((s.memory_limit, s.pid_ns), (9, PidNs::Own)),
            other => panic!("{other:?}"),
        }
        // A Prepare as an older host sends it (no writable limit) decodes with none, and an
        // older guest (which stops after the mounts) is not upset by the limit.
        let setup = Setup {
            serial: "c1".into(),
            mounts: vec![MountSpec {
                target: "/data".into(),
                read_only: false,
                source: MountSource::Volume("v".into()),
            }],
            writable_limit: 8 << 20,
        };
        let full = Frame::Prepare(1, setup.clone()).encode();
        let old = &full[4..full.len() - 8];
        match Frame::decode(old).unwrap() {
            Frame::Prepare(1, s) => {
                assert_eq!(s.writable_limit, 0);
                assert_eq!(s.mounts, setup.mounts);
            }
            other => panic!("{other:?}"),
        }
        // An Exit as an older guest sends it (no end time); an older host reads the code.
        let full = Frame::Exit(3, 9, Some(77)).encode();
        assert_eq!(
            Frame::decode(&full[4..full.len() - 8]).unwrap(),
            Frame::Exit(3, 9, None)
        );
        let huge = ((MAX_FRAME + 1) as u32).to_le_bytes();
        assert!(matches!(
            Frame::read_from(&mut &huge[..]),
            Err(ProtoError::TooLarge(_))
        ));
        let mut d = Decoder::default();
        d.push(&huge);
        assert!(d.next_frame().is_err());
        // Truncated after the length prefix.
        let mut w = Frame::Ready(VERSION).encode();
        w.pop();
        assert!(matches!(
            Frame::read_from(&mut &w[..]),
            Err(ProtoError::Truncated)
        ));
    }
}
