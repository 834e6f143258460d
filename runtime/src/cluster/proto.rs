//! Messages to and from the head of a standing cluster. Every connection opens with a [`Hello`]
//! carrying the cluster token; the head answers [`FromHead::Welcome`] or [`FromHead::Refused`].

use super::error::ConnectError;
use super::node::NodeEvent;
use crate::status::{HookState, JobState, ProcessKind};
use crate::wire::{self, Conn, FrameReader};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The first message of every connection to the head.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Hello {
    pub(crate) magic: [u8; 8],
    pub(crate) protocol: u32,
    pub(crate) token: String,
    pub(crate) peer: Peer,
}

impl Hello {
    pub(crate) fn new(token: &str, peer: Peer) -> Hello {
        Hello {
            magic: wire::MAGIC,
            protocol: wire::PROTOCOL_VERSION,
            token: token.to_owned(),
            peer,
        }
    }
}

/// Who connects.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Peer {
    /// A node joining (`filament start --address`).
    Node { pid: u32, num_cpus: u32 },
    /// A driver starting a job; its [`ToHead::Job`] follows the hello (a request may be large:
    /// it is read only once the token checked out).
    Driver,
    /// `filament status`.
    Status,
}

/// What a driver asks for its job: where its workers come from and where they connect.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct JobRequest {
    pub(crate) pid: u32,
    /// The driver's executable: the job's workers are processes of it.
    pub(crate) exe: PathBuf,
    pub(crate) args: Vec<String>,
    pub(crate) cwd: PathBuf,
    /// The driver's `OTEL_*`, `FILAMENT_*` and `RUST_*` variables, given to its workers.
    pub(crate) env: Vec<(String, String)>,
    /// Where the job's workers connect (the driver listens there).
    pub(crate) worker_address: String,
}

/// The head's answer to a [`Hello`], then what it sends on.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromHead {
    Welcome(Welcome),
    Refused(String),
    /// To a node: start a worker of a job.
    Spawn {
        job: String,
        worker: u32,
        request: JobRequest,
    },
    /// To a node: the job ended; its processes go.
    EndJob {
        job: String,
    },
    /// To a driver: a worker could not start, or ended before it connected.
    WorkerFailed {
        worker: u32,
        message: String,
    },
    /// To `filament status`.
    Status(ClusterStatus),
}

/// What the head tells a peer it accepted.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Welcome {
    Node {
        node_id: String,
        hook: Option<String>,
    },
    Driver {
        job_id: String,
        hook: Option<String>,
        /// CPUs of every node together: the default number of workers.
        cpus: u32,
        /// The node of the driver's machine, if it is one of the cluster's: the driver's spans
        /// then carry the same `filament.node_id` as its workers' there.
        node_id: Option<String>,
        /// What the driver should tell its user about how its job will run (a driver that
        /// reached the head over loopback gets workers on the head's machine only, say).
        notice: Option<String>,
    },
    Status,
}

/// Sent to the head after the hello.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToHead {
    /// A driver's job, right after its hello.
    Job(JobRequest),
    /// A driver wants a worker (a pool worker, or an actor's process).
    StartWorker { worker: u32, actor: bool },
    /// A driver's processes and their tracing, when it changed.
    JobStats(Vec<ProcessStatus>),
    /// What a node's workers did.
    Node(NodeEvent),
}

pub(crate) use crate::status::ProcessStatus;

/// The whole cluster, for `filament status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The head's address.
    pub address: String,
    /// The tracing startup hook stored with the cluster.
    pub hook: Option<String>,
    /// Seconds since the head started.
    pub uptime_secs: u64,
    /// Every node, the head's first.
    pub nodes: Vec<NodeStatus>,
    /// Jobs running, then the last jobs that ended.
    pub jobs: Vec<JobStatus>,
}

/// A node of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's id (`filament.node_id` in its workers' spans).
    pub node_id: String,
    /// Where it connected from (`head` for the head's own node).
    pub address: String,
    /// The daemon's process id.
    pub pid: u32,
    /// CPUs it offers.
    pub num_cpus: u32,
    /// Worker processes of jobs running on it.
    pub workers: u32,
    /// Tracing in the daemon process: the head runs the hook; a node only checks it loads.
    pub hook: HookState,
    /// Spans the daemon exported.
    pub spans_exported: u64,
    /// Spans the daemon dropped.
    pub spans_dropped: u64,
}

/// A job: one driver and its workers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobStatus {
    /// The job's id (`filament.job_id` in spans).
    pub job_id: String,
    /// Running, or how it ended.
    pub state: JobState,
    /// The driver's process id.
    pub driver_pid: u32,
    /// The driver's executable.
    pub exe: String,
    /// Where its workers connect to the driver.
    pub worker_address: String,
    /// Its processes.
    pub processes: Vec<JobProcess>,
}

/// A process of a job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobProcess {
    /// What the process is.
    pub kind: ProcessKind,
    /// The worker's id in the job; none for the driver.
    pub worker: Option<u32>,
    /// The process id.
    pub pid: u32,
    /// The node it runs on (none for the driver, which is not a node's).
    pub node_id: Option<String>,
    /// Its tracing hook's state.
    pub hook: HookState,
    /// Spans its tracing exported.
    pub spans_exported: u64,
    /// Spans its tracing dropped.
    pub spans_dropped: u64,
}

const REFUSED_CERTIFICATE: &str =
    ": the head refused this certificate (not signed by the cluster's CA?)";

/// Connects to the head at `address`, says hello as the peer `peer` makes of the connection
/// (sending the message it may add right after), and returns the welcome and the connection.
pub(crate) fn connect(
    address: &str,
    token: &str,
    tls: Option<&super::tls::Tls>,
    peer: impl FnOnce(&std::net::TcpStream) -> Result<(Peer, Option<ToHead>), ConnectError>,
) -> Result<(Welcome, Conn, FrameReader), ConnectError> {
    use std::net::ToSocketAddrs;
    let addrs: Vec<_> = address
        .to_socket_addrs()
        .map_err(|source| ConnectError::Resolve {
            address: address.to_owned(),
            source,
        })?
        .collect();
    let mut last = None;
    let mut stream = None;
    for addr in addrs {
        match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5)) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let stream = stream.ok_or_else(|| ConnectError::Unreachable {
        address: address.to_owned(),
        source: last.unwrap_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the address resolves to nothing",
            )
        }),
    })?;
    let broken = |source| ConnectError::Broken {
        address: address.to_owned(),
        source,
    };
    let (peer, then) = peer(&stream)?;
    let conn = match tls {
        None => Conn::tcp(stream),
        Some(tls) => Conn::tls(tls.connect(stream).map_err(|source| {
            let text = source.to_string();
            let hint = if text.contains("UnknownIssuer") || text.contains("BadSignature") {
                ": the head's certificate is not signed by this CA (another cluster's?)"
            } else if text.contains("alert") {
                REFUSED_CERTIFICATE
            } else {
                ": does the head speak TLS (started with --tls)?"
            };
            ConnectError::Tls {
                address: address.to_owned(),
                origin: tls.origin.clone(),
                source,
                hint,
            }
        })?),
    };
    wire::write_message(&conn, &Hello::new(token, peer))
        .and_then(|()| match &then {
            Some(message) => wire::write_message(&conn, message),
            None => Ok(()),
        })
        .map_err(broken)?;
    const WELCOME_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
    let _ = conn.set_read_timeout(Some(WELCOME_TIMEOUT));
    let mut reader = FrameReader::new(conn.try_clone().map_err(broken)?);
    // The head this process chose to connect to.
    reader.trust();
    let welcome = match reader.read::<FromHead>() {
        Ok(Some(FromHead::Welcome(welcome))) => welcome,
        Ok(Some(FromHead::Refused(reason))) => {
            return Err(ConnectError::Refused {
                address: address.to_owned(),
                reason,
            });
        }
        Ok(Some(other)) => {
            return Err(ConnectError::Unexpected {
                address: address.to_owned(),
                answer: format!("{other:?}"),
            });
        }
        Ok(None) => {
            return Err(ConnectError::Closed {
                address: address.to_owned(),
            });
        }
        // In TLS 1.3 the client's handshake ends before the head has checked its certificate:
        // a refusal comes as an alert on the first read.
        Err(source) if tls.is_some() && source.to_string().contains("alert") => {
            return Err(ConnectError::Tls {
                address: address.to_owned(),
                origin: tls.map(|t| t.origin.clone()).unwrap_or_default(),
                source,
                hint: REFUSED_CERTIFICATE,
            });
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            return Err(ConnectError::NotAHead {
                address: address.to_owned(),
                why: format!("no answer to the hello within {WELCOME_TIMEOUT:?}"),
            });
        }
        // A length past every limit, or bytes that are no message: another protocol answered
        // (an HTTP server's "HTTP/1.1 400" read as a frame's length, say).
        Err(e) if e.kind() == std::io::ErrorKind::Other => {
            return Err(ConnectError::NotAHead {
                address: address.to_owned(),
                why: format!("it answered with something else ({e})"),
            });
        }
        Err(e) => return Err(broken(e)),
    };
    let _ = conn.set_read_timeout(None);
    Ok((welcome, conn, reader))
}
