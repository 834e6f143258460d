//! Messages between the driver and its workers, and how they travel: `[u32 length][postcard body]`
//! frames over a Unix socket, a size cap checked before allocating, a handshake with magic, protocol
//! version and registry fingerprint on every connection, and a writer thread per connection that
//! sends everything queued in one `write`.

use crate::object::{Arg, ObjectId, TaskError};
use crossbeam_channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::net::UnixStream;

/// The first bytes of every connection.
pub(crate) const MAGIC: [u8; 8] = *b"filament";
/// Bumped on any incompatible change of the messages.
pub(crate) const PROTOCOL_VERSION: u32 = 1;
/// No frame may be larger than this (1 GiB): a corrupt length is an error, not an allocation.
pub(crate) const MAX_FRAME: usize = 1 << 30;

/// The id of an actor.
pub(crate) type ActorId = u64;

/// What a task is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum TaskKind {
    /// A remote function, by id.
    Function { function: String },
    /// Creating an actor of a class, by id.
    CreateActor { class: String, actor: ActorId },
    /// Calling an actor's method, by id.
    ActorCall { actor: ActorId, method: String },
}

/// A task as it travels: the envelope (ids, kind, trace context) and its arguments.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TaskSpec {
    /// The task's id, which is also its result's.
    pub(crate) id: ObjectId,
    pub(crate) kind: TaskKind,
    /// The Rust path that names it in spans and errors (`module::function`, `Type::method`).
    pub(crate) name: String,
    pub(crate) args: Vec<Arg>,
    /// The W3C trace context (`traceparent`, `tracestate`) of the submitting span: part of the
    /// envelope, never of the user's arguments. Empty when tracing is off.
    pub(crate) trace_context: Vec<(String, String)>,
}

/// A task whose arguments the driver has resolved, sent to a worker to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Execute {
    pub(crate) id: ObjectId,
    pub(crate) kind: TaskKind,
    pub(crate) name: String,
    pub(crate) args: Vec<Vec<u8>>,
    pub(crate) trace_context: Vec<(String, String)>,
}

/// Driver → worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToWorker {
    /// The handshake's answer: go on, with the tracing hook to run (if any) and its configuration.
    Welcome {
        hook: Option<String>,
        config: Vec<(String, String)>,
        job_id: String,
        node_id: String,
        cluster: u64,
    },
    /// The handshake's answer: refused, and why.
    Refused(String),
    Execute(Execute),
    /// Answer to [`ToDriver::Get`].
    Got {
        request: u64,
        /// Each object's id, task name and result.
        results: Vec<(ObjectId, String, Result<Vec<u8>, TaskError>)>,
    },
    /// Answer to [`ToDriver::Poll`]: which of the asked objects are done.
    Ready {
        request: u64,
        ready: Vec<ObjectId>,
    },
    Shutdown,
}

/// Worker → driver.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToDriver {
    Hello {
        magic: [u8; 8],
        protocol: u32,
        fingerprint: u64,
        worker: u32,
        pid: u32,
    },
    /// The tracing hook ran (or there was none), or failed with this message.
    HookStatus(Result<(), String>),
    Done {
        id: ObjectId,
        result: Result<Vec<u8>, TaskError>,
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
    /// A task of the worker is blocked in `get`: the worker can run one more meanwhile.
    Blocked,
    /// A blocked task goes on.
    Unblocked,
}

/// Writes one frame into a buffer.
pub(crate) fn encode_frame<T: Serialize>(message: &T, out: &mut Vec<u8>) -> io::Result<()> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    let mut out_writer = std::mem::take(out);
    out_writer = postcard::to_extend(message, out_writer).map_err(io::Error::other)?;
    *out = out_writer;
    let length = out.len() - start - 4;
    if length > MAX_FRAME {
        return Err(io::Error::other(format!(
            "message of {length} bytes exceeds the {MAX_FRAME}-byte frame limit"
        )));
    }
    out[start..start + 4].copy_from_slice(&(length as u32).to_le_bytes());
    Ok(())
}

/// Reads frames from a stream.
pub(crate) struct FrameReader {
    reader: BufReader<UnixStream>,
    buffer: Vec<u8>,
}

impl FrameReader {
    pub(crate) fn new(stream: UnixStream) -> Self {
        FrameReader {
            reader: BufReader::with_capacity(64 * 1024, stream),
            buffer: Vec::new(),
        }
    }

    /// The underlying stream.
    pub(crate) fn stream(&self) -> &UnixStream {
        self.reader.get_ref()
    }

    /// The next message; `Ok(None)` at a clean end of stream.
    pub(crate) fn read<T: for<'de> Deserialize<'de>>(&mut self) -> io::Result<Option<T>> {
        let mut length = [0u8; 4];
        match self.reader.read_exact(&mut length) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let length = u32::from_le_bytes(length) as usize;
        if length > MAX_FRAME {
            return Err(io::Error::other(format!(
                "frame of {length} bytes exceeds the {MAX_FRAME}-byte limit"
            )));
        }
        self.buffer.resize(length, 0);
        self.reader.read_exact(&mut self.buffer)?;
        postcard::from_bytes(&self.buffer)
            .map(Some)
            .map_err(|e| io::Error::other(format!("undecodable message: {e}")))
    }
}

/// Sends messages on a connection from any thread: a queue and a writer thread that writes
/// everything queued at once.
#[derive(Debug, Clone)]
pub(crate) struct Outbox<T> {
    queue: Sender<T>,
}

impl<T: Serialize + Send + 'static> Outbox<T> {
    /// Starts the writer thread of `stream`. It ends when every `Outbox` clone is dropped or the
    /// stream fails.
    pub(crate) fn start(stream: UnixStream, name: String) -> io::Result<Self> {
        let (queue, messages) = crossbeam_channel::unbounded::<T>();
        std::thread::Builder::new()
            .name(name)
            .spawn(move || write_loop(stream, messages))?;
        Ok(Outbox { queue })
    }

    /// Queues a message; false if the connection is gone.
    pub(crate) fn send(&self, message: T) -> bool {
        self.queue.send(message).is_ok()
    }
}

fn write_loop<T: Serialize>(mut stream: UnixStream, messages: Receiver<T>) {
    let mut buffer = Vec::with_capacity(64 * 1024);
    while let Ok(first) = messages.recv() {
        buffer.clear();
        let mut next = Some(first);
        while let Some(message) = next {
            if encode_frame(&message, &mut buffer).is_err() {
                return;
            }
            next = if buffer.len() < 1 << 20 {
                messages.try_recv().ok()
            } else {
                None
            };
        }
        if stream.write_all(&buffer).is_err() {
            return;
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
}
