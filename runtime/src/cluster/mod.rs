//! A standing cluster: a head (`filament start --head`) that outlives drivers, nodes that join it
//! over TCP (`filament start --address`), and drivers that attach to it (`Config::address`,
//! `FILAMENT_ADDRESS`).
//!
//! The head keeps the cluster's token and tracing hook and places workers; each job's driver keeps
//! its own objects and schedules its own tasks, as in an embedded cluster: the job's workers are
//! processes of the driver's executable that the nodes start and that connect to the driver
//! directly, presenting the cluster token. With `--tls` every one of these connections is TLS with
//! certificates of the cluster's CA on both ends ([`tls`]).

pub(crate) mod client;
mod error;
mod gate;
pub(crate) mod head;
pub(crate) mod node;
pub(crate) mod proto;
pub mod session;
pub mod tls;

pub use crate::status::{HookState, JobState, ProcessKind};
pub use error::{AttachError, ConnectError, SessionError, StartError, TlsError};
pub use proto::{ClusterStatus, JobProcess, JobStatus, NodeStatus};

use node::NodeAgent;
use proto::{FromHead, Peer, ToHead, Welcome};
use std::path::PathBuf;
use std::sync::Arc;

/// A line in the daemon's log (its standard error, which the CLI points at the session's log).
pub(crate) fn log(message: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    eprintln!(
        "[{}.{:03}] filament[{}]: {message}",
        now.as_secs(),
        now.subsec_millis(),
        std::process::id()
    );
}

/// Whether a presented token is the cluster's, in a time that does not depend on where they differ.
pub(crate) fn same_token(presented: &str, ours: &str) -> bool {
    presented.len() == ours.len()
        && presented
            .bytes()
            .zip(ours.bytes())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

/// A new node id: 8 random bytes, in hex.
pub(crate) fn new_node_id() -> String {
    random_hex::<8>()
}

/// A new job id: 16 random bytes, in hex. Random, not the driver's pid: two drivers in different
/// pid namespaces (containers) share pids, and a job id names span files.
pub(crate) fn new_job_id() -> String {
    random_hex::<16>()
}

/// `N` random bytes, in hex.
fn random_hex<const N: usize>() -> String {
    let mut bytes = [0u8; N];
    if getrandom::fill(&mut bytes).is_err() {
        // No system randomness (it does not happen on Linux): the hasher's per-process keys.
        for (i, chunk) in bytes.chunks_mut(8).enumerate() {
            let word = crate::random_u64() ^ i as u64;
            chunk.copy_from_slice(&word.to_le_bytes()[..chunk.len()]);
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How a node joins.
#[derive(Debug, Clone)]
pub(crate) struct NodeOptions {
    pub(crate) session: PathBuf,
    pub(crate) address: String,
    pub(crate) token: String,
    pub(crate) num_cpus: u32,
    /// TLS to the head (and for this node's workers), or plain TCP.
    pub(crate) tls: Option<tls::TlsSetup>,
}

/// Joins the head at `options.address`, checks the cluster's hook loads here, reports `Ok(node
/// id)` or the failure through `ready`, then starts and ends workers as the head says. Returns when
/// the head goes away, having killed this node's workers.
pub(crate) fn run_node(options: NodeOptions, ready: impl FnOnce(Result<String, StartError>)) {
    // The node's certificate (its own if the CA's key is at hand) in its session, for the drivers
    // of its machine too.
    let tls = match options
        .tls
        .as_ref()
        .map(|setup| setup.make(&options.session, true))
    {
        Some(Ok(tls)) => Some(tls),
        Some(Err(error)) => {
            ready(Err(error.into()));
            return;
        }
        None => None,
    };
    let joined = proto::connect(&options.address, &options.token, tls.as_ref(), |_| {
        let node = Peer::Node {
            pid: std::process::id(),
            num_cpus: options.num_cpus,
        };
        Ok((node, None))
    });
    let (node_id, hook, conn, mut reader) = match joined {
        Ok((Welcome::Node { node_id, hook }, conn, reader)) => (node_id, hook, conn, reader),
        Ok((other, _, _)) => {
            ready(Err(ConnectError::Unexpected {
                address: options.address.clone(),
                answer: format!("{other:?} to a node"),
            }
            .into()));
            return;
        }
        Err(error) => {
            ready(Err(error.into()));
            return;
        }
    };
    // The node runs no task itself, but its workers run the hook: it must load here.
    if let Some(hook) = &hook
        && let Err(e) = crate::tracing::check(hook)
    {
        ready(Err(StartError::HookUnusable(e)));
        return;
    }
    let dir = &options.session;
    let recorded = session::write_private(dir, "address", &options.address)
        .and_then(|()| session::write_private(dir, "token", &options.token))
        .and_then(|()| session::write_private(dir, "role", "node"))
        .and_then(|()| session::write_private(dir, "node_id", &node_id))
        .and_then(|()| session::write_private(dir, "daemon.pid", &std::process::id().to_string()));
    if let Err(error) = recorded {
        ready(Err(error.into()));
        return;
    }
    // Drivers of this machine attach through the node's session, unless a daemon runs in the
    // one `session_latest` points to (a head on the same machine).
    let root = dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(session::root);
    if session::live_daemon(&session::latest(&root)).is_none()
        && let Err(why) = session::set_latest(&root, dir)
    {
        log(&format!(
            "drivers of this machine cannot attach with `auto`: {why}"
        ));
    }

    let outbox = crate::wire::Outbox::<ToHead>::new(match conn.try_clone() {
        Ok(conn) => conn,
        Err(source) => {
            ready(Err(StartError::Io {
                what: "cloning the connection to the head",
                source,
            }));
            return;
        }
    });
    let events_outbox = outbox.clone();
    let agent = Arc::new(NodeAgent::new(
        node_id.clone(),
        options.token.clone(),
        tls.map(|tls| tls.pem),
        Box::new(move |event| {
            events_outbox.send(ToHead::Node(event));
        }),
    ));
    let watching = Arc::clone(&agent);
    if let Err(source) = std::thread::Builder::new()
        .name("filament-node-reaper".into())
        .spawn(move || watching.watch())
    {
        ready(Err(StartError::Io {
            what: "starting the reaper thread",
            source,
        }));
        return;
    }
    ready(Ok(node_id.clone()));
    log(&format!(
        "node {node_id} joined the head at {}, {} CPUs",
        options.address, options.num_cpus
    ));
    loop {
        match reader.read::<FromHead>() {
            Ok(Some(FromHead::Spawn {
                job,
                worker,
                request,
            })) => agent.spawn(job, worker, &request),
            Ok(Some(FromHead::EndJob { job })) => agent.end_job(&job),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    log(&format!(
        "the head at {} is gone: node {node_id} stops, with its workers",
        options.address
    ));
    agent.kill_all();
    let _ = std::fs::remove_file(dir.join("daemon.pid"));
}
