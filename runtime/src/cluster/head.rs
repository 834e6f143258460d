//! The head of a standing cluster: it keeps the cluster's token and tracing hook, admits nodes and
//! drivers, places each job's workers on the node with the most free CPUs, tells drivers about
//! workers that failed to start, and answers `filament status`. It is also the first node.

use super::error::StartError;
use super::gate::{Gate, Pass};
use super::node::{NodeAgent, NodeEvent};
use super::proto::{
    ClusterStatus, FromHead, Hello, JobProcess, JobRequest, JobStatus, NodeStatus, Peer,
    ProcessStatus, ToHead, Welcome,
};
use super::{log, session};
use crate::status::{HookState, JobState, ProcessKind, ProcessTracing};
use crate::wire::{self, Conn, FrameReader, Outbox};
use std::collections::{BTreeMap, VecDeque};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

/// How many ended jobs `filament status` still shows.
const ENDED_JOBS_KEPT: usize = 16;

/// How the head is started.
#[derive(Debug, Clone)]
pub(crate) struct HeadOptions {
    pub(crate) session: PathBuf,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) num_cpus: u32,
    pub(crate) hook: Option<String>,
    /// TLS for every connection, or plain TCP.
    pub(crate) tls: Option<super::tls::TlsSetup>,
}

#[derive(Clone)]
enum NodeLink {
    Local(Arc<NodeAgent>),
    Remote(Outbox<FromHead>),
}

struct NodeEntry {
    node_id: String,
    address: String,
    pid: u32,
    num_cpus: u32,
    link: NodeLink,
}

struct WorkerPlace {
    node: String,
    pid: Option<u32>,
}

struct JobEntry {
    request: JobRequest,
    outbox: Outbox<FromHead>,
    /// The workers started and not ended.
    workers: BTreeMap<u32, WorkerPlace>,
    /// The node of every worker ever started: status still says where a worker ran after it
    /// ended (they end before their job does, once their spans are flushed).
    ran_on: BTreeMap<u32, String>,
    /// The node of the driver's machine, if the cluster has one there (its spans carry it).
    driver_node: Option<String>,
    processes: Vec<ProcessStatus>,
}

#[derive(Default)]
struct HeadState {
    nodes: Vec<NodeEntry>,
    jobs: BTreeMap<String, JobEntry>,
    ended: VecDeque<JobStatus>,
}

struct Head {
    token: String,
    hook: Option<String>,
    address: String,
    started: Instant,
    tracing: Option<crate::tracing::ReportHandle>,
    state: Mutex<HeadState>,
    /// Connections not yet authenticated: deadline, caps and a bounded log.
    gate: Arc<Gate>,
    /// The cluster's TLS, if it has it: plain peers are refused.
    tls: Option<Arc<super::tls::Tls>>,
}

/// Starts the head: listens, runs the hook (a broken one fails the start), records the session,
/// reports `Ok(address)` or the failure through `ready`, then serves forever.
pub(crate) fn run(options: HeadOptions, ready: impl FnOnce(Result<String, StartError>)) {
    let started = match start(&options) {
        Ok(started) => started,
        Err(error) => {
            ready(Err(error));
            return;
        }
    };
    let (head, listener, guard) = started;
    // The hook ran in full to prove it works; the head runs no task and records no span, so its
    // tracing ends here (a file-writing hook leaves no empty file of the head's behind).
    if let Some(guard) = guard
        && let Err(error) = guard.shutdown()
    {
        log(&format!(
            "the head's own tracing did not shut down cleanly: {error}"
        ));
    }
    ready(Ok(head.address.clone()));
    log(&format!(
        "head listening on {}, {} CPUs, tracing hook {}",
        head.address,
        options.num_cpus,
        head.hook.as_deref().unwrap_or("none")
    ));
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                // Out of file descriptors, say: not a reason to spin.
                log(&format!("accepting a connection failed: {e}"));
                std::thread::sleep(std::time::Duration::from_millis(50));
                continue;
            }
        };
        // Past the limit of strangers waiting to say hello, the longest-waiting one is cut off.
        let Some(pass) = head.gate.admit(&stream) else {
            continue;
        };
        let head = Arc::clone(&head);
        if let Err(e) = std::thread::Builder::new()
            .name("filament-head-conn".into())
            .spawn(move || head.serve(stream, pass))
        {
            log(&format!("no thread for a connection: {e}"));
        }
    }
}

type Started = (Arc<Head>, TcpListener, Option<crate::tracing::TracingGuard>);

fn start(options: &HeadOptions) -> Result<Started, StartError> {
    let listener = TcpListener::bind((options.host.as_str(), options.port)).map_err(|source| {
        let (host, port) = (options.host.clone(), options.port);
        if source.kind() == std::io::ErrorKind::AddrInUse {
            StartError::PortInUse { host, port }
        } else {
            StartError::Listen { host, port, source }
        }
    })?;
    let mut listening = listener.local_addr().map_err(|source| StartError::Io {
        what: "reading the listening address",
        source,
    })?;
    // Listening on every interface: tell nodes and drivers an address they can reach.
    if listening.ip().is_unspecified() {
        listening.set_ip(routable_ip());
    }
    let address = listening.to_string();
    let node_id = super::new_node_id();
    let hook = options.hook.as_deref().map(absolute_hook).transpose()?;
    // The hook is run here, in full: one that cannot be loaded, is not a hook, or fails or panics
    // in setup fails the start, before any driver relies on it.
    let guard = match &hook {
        Some(hook) => Some(
            crate::tracing::Tracing::new(hook.clone())
                .node_id(node_id.clone())
                .install()
                .map_err(StartError::Hook)?,
        ),
        None => None,
    };
    let token = session::new_token()?;
    let dir = &options.session;
    session::write_private(dir, "token", &token)?;
    let tls = match &options.tls {
        Some(setup) => Some(Arc::new(setup.make(dir, false)?)),
        None => None,
    };
    session::write_private(dir, "address", &address)?;
    session::write_private(dir, "role", "head")?;
    session::write_private(dir, "hook", hook.as_deref().unwrap_or(""))?;
    session::write_private(dir, "daemon.pid", &std::process::id().to_string())?;
    let root = dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(session::root);
    session::set_latest(&root, dir)?;

    let head = Arc::new(Head {
        token: token.clone(),
        hook,
        address,
        started: Instant::now(),
        tracing: guard.as_ref().map(|g| g.report_handle()),
        state: Mutex::new(HeadState::default()),
        gate: Arc::new(Gate::default()),
        tls: tls.clone(),
    });
    head.gate.start().map_err(|source| StartError::Io {
        what: "starting the thread that cuts off late hellos",
        source,
    })?;
    let weak: Weak<Head> = Arc::downgrade(&head);
    let local_id = node_id.clone();
    let agent = Arc::new(NodeAgent::new(
        node_id.clone(),
        token,
        tls.map(|tls| tls.pem.clone()),
        Box::new(move |event| {
            if let Some(head) = weak.upgrade() {
                head.on_node_event(&local_id, event);
            }
        }),
    ));
    head.lock().nodes.push(NodeEntry {
        node_id,
        address: "head".into(),
        pid: std::process::id(),
        num_cpus: options.num_cpus,
        link: NodeLink::Local(Arc::clone(&agent)),
    });
    std::thread::Builder::new()
        .name("filament-node-reaper".into())
        .spawn(move || agent.watch())
        .map_err(|source| StartError::Io {
            what: "starting the reaper thread",
            source,
        })?;
    Ok((head, listener, guard))
}

/// `hooks` with every library given as a path made absolute: drivers and nodes run elsewhere, and a
/// path relative to where `start` ran would mean another file, or none, to them. Bare library names
/// stay: each machine searches for them.
fn absolute_hook(hooks: &str) -> Result<String, StartError> {
    let specs = crate::tracing::parse_hooks(hooks).map_err(StartError::Hook)?;
    let absolute: Vec<String> = specs
        .into_iter()
        .map(|spec| {
            let library = std::path::Path::new(&spec.library);
            if spec.library.contains('/') && library.is_relative() {
                match std::path::absolute(library) {
                    Ok(path) => format!("{}:{}", path.display(), spec.symbol),
                    Err(_) => spec.to_string(),
                }
            } else {
                spec.to_string()
            }
        })
        .collect();
    Ok(absolute.join(","))
}

/// Whether workers started by `node` can connect back to the driver of `request`. A driver that
/// reached the head over loopback listens there: only nodes of the head's machine reach it.
fn reaches(request: &JobRequest, node: &NodeEntry) -> bool {
    let loopback = |address: &str| {
        address
            .parse::<std::net::SocketAddr>()
            .is_ok_and(|a| a.ip().is_loopback())
    };
    !loopback(&request.worker_address)
        || matches!(node.link, NodeLink::Local(_))
        || loopback(&node.address)
}

/// This machine's address on its default route (no packet is sent: a UDP socket is only
/// connected); loopback if it has none.
fn routable_ip() -> std::net::IpAddr {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|socket| {
            socket.connect("192.0.2.1:9")?;
            socket.local_addr()
        })
        .map(|addr| addr.ip())
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
}

impl Head {
    fn lock(&self) -> std::sync::MutexGuard<'_, HeadState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn serve(self: Arc<Self>, stream: std::net::TcpStream, pass: Pass) {
        let peer_address = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "an unknown peer".to_owned());
        let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(10)));
        let Some(conn) = self.secure(stream, &peer_address) else {
            return;
        };
        let Ok(read_half) = conn.try_clone() else {
            return;
        };
        let mut reader = FrameReader::new(read_half);
        let hello = match reader.read::<Hello>() {
            Ok(Some(hello)) => hello,
            Ok(None) => return,
            Err(e) => {
                self.gate.log_refusal(&format!(
                    "refused a connection from {peer_address}: no Filament hello ({e})"
                ));
                return;
            }
        };
        let refusal = if hello.magic != wire::MAGIC {
            Some("not a Filament peer".to_owned())
        } else if hello.protocol != wire::PROTOCOL_VERSION {
            Some(format!(
                "protocol version {}, the head speaks {}",
                hello.protocol,
                wire::PROTOCOL_VERSION
            ))
        } else if hello.token.is_empty() {
            Some("no cluster token was presented".to_owned())
        } else if !super::same_token(&hello.token, &self.token) {
            Some("wrong cluster token".to_owned())
        } else {
            None
        };
        if let Some(why) = refusal {
            self.gate
                .log_refusal(&format!("refused a connection from {peer_address}: {why}"));
            let _ = wire::write_message(&conn, &FromHead::Refused(why));
            return;
        }
        pass.authenticated();
        reader.trust();
        let _ = conn.set_read_timeout(None);
        let outbox = Outbox::new(conn);
        match hello.peer {
            Peer::Status => {
                outbox.send(FromHead::Welcome(Welcome::Status));
                outbox.send(FromHead::Status(self.status()));
            }
            Peer::Node { pid, num_cpus } => {
                self.serve_node(outbox, reader, peer_address, pid, num_cpus)
            }
            Peer::Driver => match reader.read::<ToHead>() {
                Ok(Some(ToHead::Job(request))) => {
                    self.serve_driver(outbox, reader, request, &peer_address)
                }
                other => {
                    let why = format!("a driver sent no job after its hello: {other:?}");
                    log(&format!("refused a connection from {peer_address}: {why}"));
                    outbox.send(FromHead::Refused(why));
                }
            },
        }
    }

    /// The connection as the cluster speaks it: TLS (a plain peer is told, in plain words, and
    /// refused), or plain TCP (a TLS peer is refused). `None` if refused; the gate logs why.
    fn secure(&self, stream: std::net::TcpStream, peer_address: &str) -> Option<Conn> {
        use super::tls::{self, Accepted};
        let Some(tls) = &self.tls else {
            if tls::speaks_tls(&stream) {
                self.gate.log_refusal(&format!(
                    "refused a connection from {peer_address}: it speaks TLS and this cluster \
                     does not (start the head with --tls for a TLS cluster)"
                ));
                return None;
            }
            return Some(Conn::tcp(stream));
        };
        match tls.accept(stream) {
            Accepted::Tls(stream) => Some(Conn::tls(*stream)),
            Accepted::Plain(stream) => {
                let why = "this cluster requires TLS: a plain-TCP peer is refused (give it the \
                           cluster's CA, certificate and key)";
                self.gate
                    .log_refusal(&format!("refused a connection from {peer_address}: {why}"));
                tls::refuse_plain(stream, &FromHead::Refused(why.into()));
                None
            }
            Accepted::Failed(e) => {
                self.gate.log_refusal(&format!(
                    "refused a connection from {peer_address}: TLS handshake failed: {e}"
                ));
                None
            }
        }
    }

    fn serve_node(
        &self,
        outbox: Outbox<FromHead>,
        mut reader: FrameReader,
        address: String,
        pid: u32,
        num_cpus: u32,
    ) {
        let node_id = super::new_node_id();
        outbox.send(FromHead::Welcome(Welcome::Node {
            node_id: node_id.clone(),
            hook: self.hook.clone(),
        }));
        self.lock().nodes.push(NodeEntry {
            node_id: node_id.clone(),
            address: address.clone(),
            pid,
            num_cpus,
            link: NodeLink::Remote(outbox),
        });
        log(&format!(
            "node {node_id} joined from {address} (pid {pid}, {num_cpus} CPUs)"
        ));
        loop {
            match reader.read::<ToHead>() {
                Ok(Some(ToHead::Node(event))) => self.on_node_event(&node_id, event),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        log(&format!("node {node_id} at {address} left the cluster"));
        let mut state = self.lock();
        state.nodes.retain(|n| n.node_id != node_id);
        // Workers that had not connected yet will not: their drivers must not wait for them.
        let mut failed = Vec::new();
        for job in state.jobs.values_mut() {
            job.workers.retain(|worker, place| {
                if place.node == node_id {
                    failed.push((
                        job.outbox.clone(),
                        FromHead::WorkerFailed {
                            worker: *worker,
                            message: format!("its node {node_id} at {address} left the cluster"),
                        },
                    ));
                    false
                } else {
                    true
                }
            });
        }
        drop(state);
        for (outbox, message) in failed {
            outbox.send(message);
        }
    }

    /// The node of the machine at `peer` (`ip:port`), if the cluster has one there: a node that
    /// connected from that address, or the head's own for the head's machine.
    fn node_at(&self, nodes: &[NodeEntry], peer: &str) -> Option<String> {
        let ip_of = |address: &str| address.parse::<std::net::SocketAddr>().ok().map(|a| a.ip());
        let ip = ip_of(peer)?;
        nodes
            .iter()
            .find(|node| match node.address.as_str() {
                "head" => ip.is_loopback() || ip_of(&self.address) == Some(ip),
                address => ip_of(address) == Some(ip),
            })
            .map(|node| node.node_id.clone())
    }

    fn serve_driver(
        &self,
        outbox: Outbox<FromHead>,
        mut reader: FrameReader,
        request: JobRequest,
        peer: &str,
    ) {
        let (job_id, cpus, node_id, notice) = {
            let mut state = self.lock();
            let job_id = std::iter::repeat_with(super::new_job_id)
                .find(|id| {
                    !state.jobs.contains_key(id) && !state.ended.iter().any(|j| j.job_id == *id)
                })
                .expect("an endless supply of ids");
            let cpus = state
                .nodes
                .iter()
                .filter(|node| reaches(&request, node))
                .map(|n| n.num_cpus)
                .sum::<u32>();
            let elsewhere = state.nodes.iter().filter(|n| !reaches(&request, n)).count();
            let notice = (elsewhere > 0).then(|| {
                format!(
                    "this driver reached the head over loopback, so its workers can run only on \
                     the head's machine, not on the {elsewhere} node(s) elsewhere; to use the \
                     whole cluster, attach at the head's address on the network ({})",
                    self.address
                )
            });
            let node_id = self.node_at(&state.nodes, peer);
            state.jobs.insert(
                job_id.clone(),
                JobEntry {
                    request: request.clone(),
                    outbox: outbox.clone(),
                    workers: BTreeMap::new(),
                    ran_on: BTreeMap::new(),
                    driver_node: node_id.clone(),
                    processes: Vec::new(),
                },
            );
            (job_id, cpus, node_id, notice)
        };
        log(&format!(
            "job {job_id} started: driver pid {} ({})",
            request.pid,
            request.exe.display()
        ));
        outbox.send(FromHead::Welcome(Welcome::Driver {
            job_id: job_id.clone(),
            hook: self.hook.clone(),
            cpus,
            node_id,
            notice,
        }));
        let end = loop {
            match reader.read::<ToHead>() {
                Ok(Some(ToHead::StartWorker { worker, actor })) => {
                    self.start_worker(&job_id, worker, actor, &request)
                }
                Ok(Some(ToHead::JobStats(processes))) => {
                    if let Some(job) = self.lock().jobs.get_mut(&job_id) {
                        job.processes = processes;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break JobState::Ended,
                Err(e) => break JobState::Lost(e.to_string()),
            }
        };
        self.end_job(&job_id, end);
    }

    /// Places a worker of a job on the node with the most free CPUs (CPUs less the workers of
    /// every job already there) and has that node start it.
    fn start_worker(&self, job_id: &str, worker: u32, actor: bool, request: &JobRequest) {
        let mut state = self.lock();
        let mut load: BTreeMap<&str, i64> = BTreeMap::new();
        for job in state.jobs.values() {
            for place in job.workers.values() {
                *load.entry(place.node.as_str()).or_default() += 1;
            }
        }
        let chosen = state
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, node)| reaches(request, node))
            .max_by_key(|(index, node)| {
                let free = i64::from(node.num_cpus) - load.get(node.node_id.as_str()).unwrap_or(&0);
                (free, std::cmp::Reverse(*index))
            })
            .map(|(index, _)| index);
        let Some(index) = chosen else {
            let outbox = state.jobs.get(job_id).map(|j| j.outbox.clone());
            drop(state);
            if let Some(outbox) = outbox {
                outbox.send(FromHead::WorkerFailed {
                    worker,
                    message: "the cluster has no node this driver's workers can reach".into(),
                });
            }
            return;
        };
        let node_id = state.nodes[index].node_id.clone();
        if let Some(job) = state.jobs.get_mut(job_id) {
            job.workers.insert(
                worker,
                WorkerPlace {
                    node: node_id.clone(),
                    pid: None,
                },
            );
            job.ran_on.insert(worker, node_id.clone());
        }
        let link = state.nodes[index].link.clone();
        drop(state);
        let what = if actor { "an actor's worker" } else { "worker" };
        log(&format!("job {job_id}: {what} {worker} on node {node_id}"));
        match link {
            NodeLink::Local(agent) => agent.spawn(job_id.to_owned(), worker, request),
            NodeLink::Remote(outbox) => {
                outbox.send(FromHead::Spawn {
                    job: job_id.to_owned(),
                    worker,
                    request: request.clone(),
                });
            }
        }
    }

    fn on_node_event(&self, node_id: &str, event: NodeEvent) {
        let mut state = self.lock();
        let message = match event {
            NodeEvent::Spawned { job, worker, pid } => {
                if let Some(place) = state
                    .jobs
                    .get_mut(&job)
                    .and_then(|j| j.workers.get_mut(&worker))
                {
                    place.pid = Some(pid);
                }
                None
            }
            NodeEvent::SpawnFailed {
                job,
                worker,
                message,
            } => {
                log(&format!("job {job}: worker {worker}: {message}"));
                Some((job, worker, message))
            }
            NodeEvent::Exited {
                job,
                worker,
                pid,
                status,
            } => Some((
                job,
                worker,
                format!("worker {worker} (pid {pid}) on node {node_id} ended ({status})"),
            )),
        };
        let Some((job, worker, message)) = message else {
            return;
        };
        let Some(entry) = state.jobs.get_mut(&job) else {
            return;
        };
        entry.workers.remove(&worker);
        let outbox = entry.outbox.clone();
        drop(state);
        // The driver acts on it only for a worker that has not connected: one that has, it
        // already saw go.
        outbox.send(FromHead::WorkerFailed { worker, message });
    }

    fn end_job(&self, job_id: &str, end: JobState) {
        let mut state = self.lock();
        let Some(job) = state.jobs.remove(job_id) else {
            return;
        };
        let status = Self::job_status(job_id, &job, &state.nodes, end.clone());
        state.ended.push_front(status);
        state.ended.truncate(ENDED_JOBS_KEPT);
        let links: Vec<NodeLink> = state.nodes.iter().map(|n| n.link.clone()).collect();
        drop(state);
        log(&format!("job {job_id} {end}"));
        for link in links {
            match link {
                NodeLink::Local(agent) => agent.end_job(job_id),
                NodeLink::Remote(outbox) => {
                    outbox.send(FromHead::EndJob {
                        job: job_id.to_owned(),
                    });
                }
            }
        }
    }

    fn job_status(job_id: &str, job: &JobEntry, nodes: &[NodeEntry], state: JobState) -> JobStatus {
        let node_of = |worker: Option<u32>| {
            let node = match worker {
                Some(worker) => job.ran_on.get(&worker)?,
                None => job.driver_node.as_ref()?,
            };
            nodes
                .iter()
                .any(|n| &n.node_id == node)
                .then(|| node.clone())
        };
        let mut processes: Vec<JobProcess> = job
            .processes
            .iter()
            .map(|p| JobProcess {
                kind: p.kind.clone(),
                worker: p.worker,
                pid: p.pid,
                node_id: node_of(p.worker),
                hook: p.tracing.hook.clone(),
                spans_exported: p.tracing.exported,
                spans_dropped: p.tracing.dropped,
            })
            .collect();
        // Workers started but not yet reported by the driver.
        for (worker, place) in &job.workers {
            if !job.processes.iter().any(|p| p.worker == Some(*worker)) {
                processes.push(JobProcess {
                    kind: ProcessKind::StartingWorker,
                    worker: Some(*worker),
                    pid: place.pid.unwrap_or(0),
                    node_id: Some(place.node.clone()),
                    hook: HookState::NotReported,
                    spans_exported: 0,
                    spans_dropped: 0,
                });
            }
        }
        JobStatus {
            job_id: job_id.to_owned(),
            state,
            driver_pid: job.request.pid,
            exe: job.request.exe.display().to_string(),
            worker_address: job.request.worker_address.clone(),
            processes,
        }
    }

    fn status(&self) -> ClusterStatus {
        let state = self.lock();
        let head_tracing = ProcessTracing::of(self.tracing.as_ref());
        let nodes = state
            .nodes
            .iter()
            .map(|node| {
                let workers = state
                    .jobs
                    .values()
                    .flat_map(|j| j.workers.values())
                    .filter(|p| p.node == node.node_id)
                    .count() as u32;
                let (hook, exported, dropped) = match &node.link {
                    NodeLink::Local(_) => (
                        head_tracing.hook.clone(),
                        head_tracing.exported,
                        head_tracing.dropped,
                    ),
                    NodeLink::Remote(_) => (
                        if self.hook.is_some() {
                            HookState::Checked
                        } else {
                            HookState::None
                        },
                        0,
                        0,
                    ),
                };
                NodeStatus {
                    node_id: node.node_id.clone(),
                    address: node.address.clone(),
                    pid: node.pid,
                    num_cpus: node.num_cpus,
                    workers,
                    hook,
                    spans_exported: exported,
                    spans_dropped: dropped,
                }
            })
            .collect();
        let mut jobs: Vec<JobStatus> = state
            .jobs
            .iter()
            .map(|(id, job)| Self::job_status(id, job, &state.nodes, JobState::Running))
            .collect();
        jobs.extend(state.ended.iter().cloned());
        ClusterStatus {
            address: self.address.clone(),
            hook: self.hook.clone(),
            uptime_secs: self.started.elapsed().as_secs(),
            nodes,
            jobs,
        }
    }
}
