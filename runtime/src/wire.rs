//! Messages between the driver and its workers, and how they travel: `[u32 length][postcard body]`
//! frames over a Unix socket (embedded cluster) or TCP (standing cluster), a size cap checked before
//! allocating, a handshake with magic, protocol version, registry fingerprint and (over TCP) the
//! cluster token on every connection, and writes that batch what queues up.
//!
//! A message larger than a frame (a task's argument or result of gigabytes) travels as several
//! frames, each but the last marked [`CONTINUED`]; the reader joins them, up to [`MAX_MESSAGE`].
//! Task values are byte strings on the wire (`serde_bytes`): copied whole, not byte by byte.

use crate::cluster::tls::TlsStream;
use crate::object::{Arg, ObjectId, TaskError};
use serde::{Deserialize, Serialize};
use std::io::{self, BufReader, Read, Write};
use std::marker::PhantomData;
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The first bytes of every connection.
pub(crate) const MAGIC: [u8; 8] = *b"filament";
/// Bumped on any incompatible change of the messages.
pub(crate) const PROTOCOL_VERSION: u32 = 3;
/// No frame may be larger than this (1 GiB): a corrupt length is an error, not an allocation.
pub(crate) const MAX_FRAME: usize = 1 << 30;
/// The most a task's arguments (together) or its result may weigh: a message, less room for its
/// envelope.
pub(crate) const MAX_VALUE: usize = MAX_MESSAGE - (1 << 20);

/// Why `bytes` of a task's `what` ("result", "arguments") cannot travel, if they cannot.
pub(crate) fn check_value_size(bytes: usize, what: &str) -> Result<(), String> {
    if bytes <= MAX_VALUE {
        return Ok(());
    }
    Err(format!(
        "its {what} of {bytes} bytes exceed the {MAX_VALUE} bytes a task's {what} may have"
    ))
}

/// Set in a frame's length when more frames of the same message follow.
const CONTINUED: u32 = 1 << 31;
/// No message may be larger than this (16 GiB), whatever the frames it travels in: a task's
/// arguments or its result beyond it fail with an error naming the size.
pub(crate) const MAX_MESSAGE: usize = 16 << 30;
/// No frame of a peer not yet trusted (before its hello and token are checked) may be larger than
/// this: a stranger cannot make a process allocate much by announcing a large frame.
pub(crate) const MAX_UNTRUSTED_FRAME: usize = 64 * 1024;

/// A connection: a Unix socket within a machine, TCP between machines, TLS over TCP in a cluster
/// started with `--tls` (shared by its clones: one reader, any writers).
#[derive(Debug)]
pub(crate) enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
    Tls(Arc<TlsStream>),
}

impl Conn {
    /// A TCP connection, with Nagle's delay off (frames are small and latency matters), and a
    /// peer whose machine vanished noticed in seconds, not hours: keepalive probes while the
    /// connection is quiet, and a limit on how long sent data may stay unacknowledged. Measured
    /// over a link taken down (`tests/hosts`): a quiet connection fails ~20 s after the cut; one
    /// that sends after the cut fails 20 s after that send, so within ~40 s.
    pub(crate) fn tcp(stream: TcpStream) -> Conn {
        tune(&stream);
        Conn::Tcp(stream)
    }

    /// A TLS connection over `stream` (tuned as [`Conn::tcp`]), once its handshake is done.
    pub(crate) fn tls(stream: TlsStream) -> Conn {
        tune(stream.socket());
        Conn::Tls(Arc::new(stream))
    }
}

/// Nagle's delay off, keepalive and a limit on unacknowledged data: see [`Conn::tcp`].
fn tune(stream: &TcpStream) {
    use rustix::net::sockopt;
    let _ = stream.set_nodelay(true);
    let _ = sockopt::set_socket_keepalive(stream, true);
    let _ = sockopt::set_tcp_keepidle(stream, Duration::from_secs(5));
    let _ = sockopt::set_tcp_keepintvl(stream, Duration::from_secs(2));
    let _ = sockopt::set_tcp_keepcnt(stream, 4);
    let _ = sockopt::set_tcp_user_timeout(stream, 20_000);
}

impl Conn {
    pub(crate) fn try_clone(&self) -> io::Result<Conn> {
        Ok(match self {
            Conn::Unix(s) => Conn::Unix(s.try_clone()?),
            Conn::Tcp(s) => Conn::Tcp(s.try_clone()?),
            Conn::Tls(s) => Conn::Tls(Arc::clone(s)),
        })
    }

    pub(crate) fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.set_read_timeout(timeout),
            Conn::Tcp(s) => s.set_read_timeout(timeout),
            Conn::Tls(s) => s.socket().set_read_timeout(timeout),
        }
    }

    /// Ends both directions: a thread blocked reading it sees the end of the stream.
    pub(crate) fn shutdown(&self) {
        let _ = match self {
            Conn::Unix(s) => s.shutdown(Shutdown::Both),
            Conn::Tcp(s) => s.shutdown(Shutdown::Both),
            Conn::Tls(s) => {
                s.shutdown();
                Ok(())
            }
        };
    }

    /// The peer, for logs.
    pub(crate) fn peer(&self) -> String {
        match self {
            Conn::Unix(_) => "a local process".to_owned(),
            Conn::Tcp(s) => s
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "an unknown peer".to_owned()),
            Conn::Tls(s) => s
                .socket()
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "an unknown peer".to_owned()),
        }
    }
}

impl std::os::fd::AsFd for Conn {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Conn::Unix(s) => s.as_fd(),
            Conn::Tcp(s) => s.as_fd(),
            Conn::Tls(s) => s.socket().as_fd(),
        }
    }
}

impl Read for &Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => (&*s).read(buf),
            Conn::Tcp(s) => (&*s).read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}

impl Write for &Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => (&*s).write(buf),
            Conn::Tcp(s) => (&*s).write(buf),
            Conn::Tls(s) => s.write_all(buf).map(|()| buf.len()),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Conn::Tls(s) => s.write_all(buf),
            _ => {
                let mut rest = buf;
                while !rest.is_empty() {
                    match self.write(rest) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => rest = &rest[n..],
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes one message as a frame, directly (handshakes, one-off requests).
pub(crate) fn write_message<T: Serialize>(conn: &Conn, message: &T) -> io::Result<()> {
    let mut out = Vec::new();
    encode_frame(message, &mut out)?;
    let mut writer = conn;
    writer.write_all(&out)
}

/// The id of an actor.
pub(crate) type ActorId = u64;

/// What a task is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum TaskKind {
    /// A remote function, by id.
    Function { function: Arc<str> },
    /// Creating an actor of a class, by id.
    CreateActor {
        class: String,
        actor: ActorId,
        restarts: ActorRestarts,
    },
    /// Calling an actor's method, by id.
    ActorCall { actor: ActorId, method: String },
}

/// A task as it travels: the envelope (ids, kind, trace context) and its arguments.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TaskSpec {
    /// The task's id, which is also its result's.
    pub(crate) id: ObjectId,
    pub(crate) kind: TaskKind,
    /// The Rust path that names it in spans and errors (`module::function`, `Type::method`),
    /// shared by the copies the driver keeps.
    pub(crate) name: Arc<str>,
    pub(crate) args: Vec<Arg>,
    /// The W3C trace context (`traceparent`, `tracestate`) of the submitting span: part of the
    /// envelope, never of the user's arguments. Empty when tracing is off.
    pub(crate) trace_context: Vec<(String, String)>,
    /// When the task runs again after a failed attempt.
    pub(crate) retry: RetryPolicy,
    /// Which attempt this is: 0 for the first run, 1 for the first retry, …
    pub(crate) attempt: u32,
}

/// When a task runs again after an attempt failed, as Ray's `max_retries` and `retry_exceptions`
/// say: up to `max_retries` more times if its worker died, and if it panicked too when
/// `retry_exceptions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RetryPolicy {
    pub(crate) max_retries: u32,
    pub(crate) retry_exceptions: bool,
}

impl RetryPolicy {
    /// Never again: actor creations and calls (restarts are the actor's business).
    pub(crate) const NEVER: RetryPolicy = RetryPolicy {
        max_retries: 0,
        retry_exceptions: false,
    };
}

/// What happens when an actor's process dies, as Ray's `max_restarts` and `max_task_retries` say:
/// the constructor runs again in a new process up to `max_restarts` times, and each call that was
/// in flight runs again up to `max_task_retries` times (else it fails with `ActorDied`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub(crate) struct ActorRestarts {
    pub(crate) max_restarts: u32,
    pub(crate) max_task_retries: u32,
}

/// A task whose arguments the driver has resolved, sent to a worker to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Execute {
    pub(crate) id: ObjectId,
    pub(crate) kind: TaskKind,
    pub(crate) name: Arc<str>,
    #[serde(with = "byte_strings")]
    pub(crate) args: Vec<Vec<u8>>,
    pub(crate) trace_context: Vec<(String, String)>,
    /// See [`TaskSpec::attempt`].
    pub(crate) attempt: u32,
}

/// What every worker of a job is told when it connects.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WelcomeInfo {
    /// The tracing startup hook(s) to run, if any.
    pub(crate) hook: Option<String>,
    /// The job's configuration values for the hooks.
    pub(crate) config: Vec<(String, String)>,
    /// The driver's environment, where the hooks read what `config` lacks.
    pub(crate) environment: Vec<(String, String)>,
    /// Whether the worker sends its standard output and error to the driver.
    pub(crate) forward_output: bool,
    pub(crate) job_id: String,
    pub(crate) node_id: String,
}

/// Driver → worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToWorker {
    /// The handshake's answer: go on, with the tracing hook to run (if any) and its configuration.
    Welcome {
        job: WelcomeInfo,
        cluster: u64,
    },
    /// The handshake's answer: refused, and why.
    Refused(String),
    Execute(Execute),
    /// Answer to [`ToDriver::Get`].
    Got {
        request: u64,
        /// Each object's id, task name and result.
        #[serde(with = "named_results")]
        results: Vec<(ObjectId, String, Result<Vec<u8>, TaskError>)>,
    },
    /// Answer to [`ToDriver::Poll`]: which of the asked objects are done.
    Ready {
        request: u64,
        ready: Vec<ObjectId>,
    },
    /// Give back up to this many tasks that have not started (the last queued first): another
    /// worker is idle. Answered with [`ToDriver::Returned`].
    GiveBack(u32),
    Shutdown,
}

/// Worker → driver.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToDriver {
    Hello {
        magic: [u8; 8],
        protocol: u32,
        fingerprint: u64,
        /// The cluster token: a standing cluster's, or the one an embedded cluster's driver gave
        /// its workers on their standard input.
        token: String,
        worker: u32,
        pid: u32,
    },
    /// The tracing hook ran (or there was none), or failed with this message.
    HookStatus(Result<(), String>),
    Done {
        id: ObjectId,
        #[serde(with = "byte_result")]
        result: Result<Vec<u8>, TaskError>,
        /// The object references inside the result: the result holds them while it lives.
        refs: Vec<ObjectId>,
    },
    Submit(TaskSpec),
    Get {
        request: u64,
        ids: Vec<ObjectId>,
    },
    Poll {
        request: u64,
        ids: Vec<ObjectId>,
    },
    /// The worker no longer references these objects.
    Release(Vec<ObjectId>),
    /// The worker deserialized references to these objects (inside an argument or a result) and
    /// holds them from now on.
    Borrow(Vec<ObjectId>),
    /// A task of the worker is blocked in `get`: the worker can run one more meanwhile.
    Blocked,
    /// A blocked task goes on.
    Unblocked,
    /// Answer to [`ToWorker::GiveBack`]: the tasks this worker gave back unstarted (perhaps none);
    /// it will not run them.
    Returned(Vec<ObjectId>),
    /// What the worker's tracing did so far (sent when it changed, at most twice a second).
    Stats(crate::status::ProcessTracing),
    /// A line the worker wrote to its standard output (or error), prefixed with who wrote it.
    Output {
        stderr: bool,
        line: String,
    },
}

/// `Vec<Vec<u8>>` as a sequence of byte strings.
mod byte_strings {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    pub(super) fn serialize<S: Serializer>(values: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(values.iter().map(|value| Bytes::new(value)))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let values = Vec::<ByteBuf>::deserialize(d)?;
        Ok(values.into_iter().map(ByteBuf::into_vec).collect())
    }
}

/// A task's result, its value a byte string.
mod byte_result {
    use crate::object::TaskError;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    pub(super) fn serialize<S: Serializer>(
        result: &Result<Vec<u8>, TaskError>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        result.as_ref().map(|value| Bytes::new(value)).serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Result<Vec<u8>, TaskError>, D::Error> {
        Ok(Result::<ByteBuf, TaskError>::deserialize(d)?.map(ByteBuf::into_vec))
    }
}

/// Results with their ids and task names, the values byte strings.
mod named_results {
    use crate::object::{ObjectId, TaskError};
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    type Named = (ObjectId, String, Result<Vec<u8>, TaskError>);

    pub(super) fn serialize<S: Serializer>(results: &[Named], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(
            results.iter().map(|(id, name, result)| {
                (id, name, result.as_ref().map(|value| Bytes::new(value)))
            }),
        )
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Named>, D::Error> {
        let results = Vec::<(ObjectId, String, Result<ByteBuf, TaskError>)>::deserialize(d)?;
        Ok(results
            .into_iter()
            .map(|(id, name, result)| (id, name, result.map(ByteBuf::into_vec)))
            .collect())
    }
}

/// Appends one message to a buffer, as one frame or, past [`MAX_FRAME`], as several. On failure
/// the buffer is as it was: frames queued before are kept whole.
pub(crate) fn encode_frame<T: Serialize>(message: &T, out: &mut Vec<u8>) -> io::Result<()> {
    /// Lets postcard append to a borrowed buffer.
    struct Append<'a>(&'a mut Vec<u8>);
    impl Extend<u8> for Append<'_> {
        fn extend<I: IntoIterator<Item = u8>>(&mut self, bytes: I) {
            self.0.extend(bytes);
        }
    }
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    if let Err(error) = postcard::to_extend(message, Append(out)) {
        out.truncate(start);
        return Err(io::Error::other(error));
    }
    let length = out.len() - start - 4;
    if length <= MAX_FRAME {
        out[start..start + 4].copy_from_slice(&(length as u32).to_le_bytes());
        return Ok(());
    }
    if length > MAX_MESSAGE {
        out.truncate(start);
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a message of {length} bytes exceeds the {MAX_MESSAGE}-byte limit"),
        ));
    }
    // Rare and large: copy the body once more, into frames.
    let body = out.split_off(start + 4);
    out.truncate(start);
    out.reserve(body.len() + 4 * body.len().div_ceil(MAX_FRAME));
    let mut frames = body.chunks(MAX_FRAME).peekable();
    while let Some(frame) = frames.next() {
        let more = if frames.peek().is_some() {
            CONTINUED
        } else {
            0
        };
        out.extend_from_slice(&(frame.len() as u32 | more).to_le_bytes());
        out.extend_from_slice(frame);
    }
    Ok(())
}

/// The largest read buffer a reader keeps between messages.
const MAX_KEPT_BUFFER: usize = 64 << 20;

/// Reads frames from a stream.
pub(crate) struct FrameReader {
    reader: BufReader<Conn>,
    buffer: Vec<u8>,
    /// The largest frame accepted: [`MAX_UNTRUSTED_FRAME`] until [`FrameReader::trust`].
    limit: usize,
}

impl FrameReader {
    pub(crate) fn new(stream: Conn) -> Self {
        FrameReader {
            reader: BufReader::with_capacity(64 * 1024, stream),
            buffer: Vec::new(),
            limit: MAX_UNTRUSTED_FRAME,
        }
    }

    /// The peer proved who it is (or is the one this process chose to connect to): frames up to
    /// [`MAX_FRAME`] are read from now on.
    pub(crate) fn trust(&mut self) {
        self.limit = MAX_FRAME;
    }

    /// The underlying stream.
    pub(crate) fn stream(&self) -> &Conn {
        self.reader.get_ref()
    }

    /// Whether bytes of a next message are already read from the socket.
    pub(crate) fn has_buffered(&self) -> bool {
        !self.reader.buffer().is_empty()
            || matches!(self.reader.get_ref(), Conn::Tls(s) if s.has_buffered())
    }

    /// The next message; `Ok(None)` at a clean end of stream.
    pub(crate) fn read<T: for<'de> Deserialize<'de>>(&mut self) -> io::Result<Option<T>> {
        // A peer not trusted yet gets one small frame; a trusted one, frames up to a message.
        let message_limit = if self.limit == MAX_FRAME {
            MAX_MESSAGE
        } else {
            self.limit
        };
        self.buffer.clear();
        loop {
            let mut header = [0u8; 4];
            match self.reader.read_exact(&mut header) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && self.buffer.is_empty() => {
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
            let header = u32::from_le_bytes(header);
            let length = (header & !CONTINUED) as usize;
            if length > self.limit {
                return Err(io::Error::other(format!(
                    "frame of {length} bytes exceeds the {}-byte limit",
                    self.limit
                )));
            }
            let at = self.buffer.len();
            if at + length > message_limit {
                return Err(io::Error::other(format!(
                    "a message of more than {message_limit} bytes exceeds the limit"
                )));
            }
            self.buffer.resize(at + length, 0);
            self.reader.read_exact(&mut self.buffer[at..])?;
            if header & CONTINUED == 0 {
                break;
            }
        }
        let message = postcard::from_bytes(&self.buffer)
            .map(Some)
            .map_err(|e| io::Error::other(format!("undecodable message: {e}")));
        // Do not hold on to the memory of a message of gigabytes.
        if self.buffer.capacity() > MAX_KEPT_BUFFER {
            self.buffer = Vec::new();
        }
        message
    }
}

/// Sends messages on a connection from any thread, without a thread of its own: the sender writes
/// its frame itself when nobody else is writing, and while someone is, frames queue behind and go
/// out with theirs in one `write` (batching under load, no thread hop when idle).
#[derive(Debug)]
pub(crate) struct Outbox<T> {
    inner: Arc<OutboxInner>,
    _messages: PhantomData<fn(T)>,
}

impl<T> Clone for Outbox<T> {
    fn clone(&self) -> Self {
        Outbox {
            inner: Arc::clone(&self.inner),
            _messages: PhantomData,
        }
    }
}

#[derive(Debug)]
struct OutboxInner {
    stream: Conn,
    state: Mutex<Pending>,
}

#[derive(Debug, Default)]
struct Pending {
    frames: Vec<u8>,
    /// A spare buffer, to swap with `frames` instead of allocating.
    spare: Vec<u8>,
    writing: bool,
    broken: bool,
}

impl<T: Serialize> Outbox<T> {
    pub(crate) fn new(stream: Conn) -> Self {
        Outbox {
            inner: Arc::new(OutboxInner {
                stream,
                state: Mutex::new(Pending::default()),
            }),
            _messages: PhantomData,
        }
    }

    /// Ends the connection: the peer sees the end of the stream, and so does a thread of this
    /// process reading it.
    pub(crate) fn close(&self) {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .broken = true;
        self.inner.stream.shutdown();
    }

    /// Sends a message; false if the connection is gone.
    pub(crate) fn send(&self, message: T) -> bool {
        self.queue(message) && self.flush()
    }

    /// Queues a message without writing it: cheap enough to call holding other locks, and messages
    /// queued in some order go out in that order. [`Outbox::flush`] writes them.
    pub(crate) fn queue(&self, message: T) -> bool {
        let mut pending = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        !pending.broken && encode_frame(&message, &mut pending.frames).is_ok()
    }

    /// Writes what is queued, unless another thread is writing (it writes these too); false if the
    /// connection is gone.
    pub(crate) fn flush(&self) -> bool {
        let mut pending = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        if pending.broken {
            return false;
        }
        if pending.writing || pending.frames.is_empty() {
            return true;
        }
        pending.writing = true;
        loop {
            let mut batch = std::mem::take(&mut pending.frames);
            pending.frames = std::mem::take(&mut pending.spare);
            drop(pending);
            let written = (&self.inner.stream).write_all(&batch);
            batch.clear();
            pending = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
            pending.spare = batch;
            if written.is_err() {
                pending.broken = true;
                pending.writing = false;
                return false;
            }
            if pending.frames.is_empty() {
                pending.writing = false;
                return true;
            }
        }
    }
}
