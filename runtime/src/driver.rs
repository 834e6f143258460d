//! The driver's side of a job: it has the worker processes started (its own executable, re-executed
//! in worker mode: by itself in an embedded cluster, by the nodes of a standing cluster), keeps every
//! object, resolves arguments, schedules tasks on workers with free slots and actor calls on their
//! actor's process in submission order, and notices workers that die.

use crate::cluster::client::{self, Attached};
use crate::cluster::proto::{ProcessStatus, ToHead};
use crate::object::{Arg, GetError, ObjectId, TaskError};
use crate::registry::registry;
use crate::status::{HookState, ProcessKind, ProcessTracing};
use crate::wire::{
    self, ActorId, Conn, Execute, FrameReader, Outbox, TaskKind, TaskSpec, ToDriver, ToWorker,
};
use crate::{InitError, WorkerStartError};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The environment variable that puts a process in worker mode: `<socket path>:<worker id>`.
pub(crate) const WORKER_ENV: &str = "FILAMENT_WORKER";

/// How long a new worker has to connect, handshake and run the tracing hook, unless
/// [`crate::Config::worker_start_timeout`] says otherwise.
pub(crate) const WORKER_START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long `get` spins, yielding, before it sleeps until a task completes.
const SPIN_BEFORE_SLEEP: Duration = Duration::from_micros(200);

/// Tasks a pool worker may hold at once: one running, the rest queued in the worker, so that it
/// never waits for the driver between two tasks, and results and new tasks travel in batches
/// (8 gave 40–65k traced tasks/s on two cores, 32 gives 75–85k). The price: tasks queued behind a
/// long one wait for it even if another worker falls idle (no work stealing yet).
const TASKS_IN_FLIGHT_PER_WORKER: i32 = 32;

/// How many times dying workers are replaced before the driver stops replacing them.
const MAX_REPLACEMENTS: u32 = 64;

/// How often an attached driver tells the head how its processes' tracing is doing (when it changed).
const STATS_INTERVAL: Duration = Duration::from_millis(500);

struct Object {
    /// The task's Rust path, for errors.
    name: String,
    value: Option<Result<Arc<Vec<u8>>, TaskError>>,
    /// References: the submitter's handles, tasks waiting for it as an argument, workers' handles.
    refs: u32,
    /// Tasks waiting for this object.
    dependents: Vec<ObjectId>,
    /// Workers' `get` requests waiting for this object.
    remote_waiters: Vec<(u32, u64)>,
}

struct WorkerSlot {
    pid: u32,
    outbox: Outbox<ToWorker>,
    /// Tasks it may still take: `TASKS_IN_FLIGHT_PER_WORKER`, plus one per task blocked in `get`.
    free: i32,
    running: HashSet<ObjectId>,
    actor: Option<ActorId>,
    /// Its tracing, as it last reported.
    stats: ProcessTracing,
}

struct ActorSlot {
    class: String,
    worker: Option<u32>,
    /// Calls not yet sent, in submission order; the head waits for its arguments.
    queue: VecDeque<TaskSpec>,
    dead: Option<String>,
}

#[derive(Default)]
struct State {
    objects: HashMap<ObjectId, Object>,
    /// Tasks waiting for arguments: how many are missing, and the actor of an actor call (whose
    /// spec waits in the actor's queue; a function's waits in `parked`).
    waiting: HashMap<ObjectId, (usize, Option<ActorId>)>,
    parked: HashMap<ObjectId, TaskSpec>,
    ready: VecDeque<TaskSpec>,
    workers: HashMap<u32, WorkerSlot>,
    actors: HashMap<ActorId, ActorSlot>,
    /// Workers' `get` requests: the objects each waits for.
    remote_gets: HashMap<(u32, u64), Vec<ObjectId>>,
    /// Workers started but not yet registered, and the actor each will host.
    starting: HashMap<u32, Option<ActorId>>,
    /// When each worker of `starting` was reserved: one that has not connected within
    /// [`Driver::start_timeout`] fails what waits for it.
    starting_since: HashMap<u32, Instant>,
    /// Why a worker failed to start (its tracing hook, usually).
    start_failures: Vec<WorkerStartError>,
    /// `init` returned: later start failures no longer fail it.
    started: bool,
    /// Why the pool has no worker left, once that happened.
    pool_lost: Option<String>,
    next_worker: u32,
    replacements: u32,
    shutting_down: bool,
    /// Objects that threads of this process wait for in `get` or `wait`, and how many threads.
    awaited: HashMap<ObjectId, u32>,
    /// Whether something a waiting thread waits for happened: the lock's release wakes them then
    /// only (a batch's results do not wake a `get` once per result).
    wake: bool,
    /// Workers reserved under the lock (and whether each hosts an actor), whose processes start
    /// once it is released.
    launches: Vec<(u32, bool)>,
    /// Connections with messages queued, to write once the lock is released: messages are queued
    /// in the order the state changed, and no thread writes to a socket holding the lock.
    outgoing: Vec<Outbox<ToWorker>>,
    /// Workers' output lines, to print once the lock is released (`true`: standard error).
    output: Vec<(bool, String)>,
    /// Why the standing cluster this driver is attached to is gone, once it is.
    cluster_lost: Option<String>,
    /// Workers that left at shutdown, with their last report: the job's final counts.
    departed: Vec<ProcessStatus>,
}

/// Where workers come from and connect.
enum Launcher {
    /// An embedded cluster: this process starts them; they connect to a Unix socket.
    Local {
        socket_dir: PathBuf,
        socket: PathBuf,
        /// The token workers present, given to each on its standard input.
        token: String,
    },
    /// A standing cluster: the head has nodes start them; they connect over TCP with the token.
    Cluster {
        head: Outbox<ToHead>,
        token: String,
        listening: SocketAddr,
        /// The cluster's TLS: workers connect with it, and plain ones are refused.
        tls: Option<Arc<crate::cluster::tls::Tls>>,
    },
}

/// How a driver's cluster is made.
pub(crate) enum Mode {
    Embedded,
    Attached(Box<Attached>),
}

enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    fn accept(&self) -> std::io::Result<Conn> {
        match self {
            Listener::Unix(l) => l.accept().map(|(s, _)| Conn::Unix(s)),
            Listener::Tcp(l) => l.accept().map(|(s, _)| Conn::tcp(s)),
        }
    }
}

/// The cluster, seen from the driver.
pub(crate) struct Driver {
    pub(crate) cluster: u64,
    next_id: AtomicU64,
    /// Tasks completed so far (changed under the state lock): waiters spin on it before sleeping.
    completions: AtomicU64,
    state: Mutex<State>,
    changed: Condvar,
    launcher: Launcher,
    /// Worker processes started and not yet reaped, by worker id.
    children: Mutex<Vec<(u32, Child)>>,
    welcome: wire::WelcomeInfo,
    /// The driver's own tracing, for the head's `status`.
    tracing: Option<crate::tracing::ReportHandle>,
    /// How long a new worker has to connect, handshake and run the tracing hook.
    start_timeout: Duration,
}

pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}

impl Driver {
    /// Starts the job's cluster: the socket workers connect to, `workers` worker processes (started
    /// here, or by the standing cluster's nodes), each running the tracing hook. Returns once every
    /// worker is ready, or the first worker's failure.
    pub(crate) fn start(
        workers: usize,
        welcome: wire::WelcomeInfo,
        mode: Mode,
        tracing: Option<crate::tracing::ReportHandle>,
        start_timeout: Duration,
    ) -> Result<Arc<Driver>, InitError> {
        let cluster = random_u64();
        let (launcher, listener, head) = match mode {
            Mode::Embedded => {
                crate::socket_dir::sweep();
                let socket =
                    crate::socket_dir::create(cluster).map_err(|source| InitError::Io {
                        what: "creating the embedded cluster's socket folder".into(),
                        source,
                    })?;
                let socket_dir = socket.parent().expect("a socket in a folder").to_owned();
                let listener = UnixListener::bind(&socket).map_err(|source| InitError::Io {
                    what: format!("listening on {}", socket.display()),
                    source,
                })?;
                (
                    Launcher::Local {
                        socket_dir,
                        socket,
                        token: crate::cluster::session::new_token().map_err(|error| {
                            InitError::Io {
                                what: "making the embedded cluster's token".into(),
                                source: std::io::Error::other(error),
                            }
                        })?,
                    },
                    Listener::Unix(listener),
                    None,
                )
            }
            Mode::Attached(attached) => {
                let listening = attached
                    .listener
                    .local_addr()
                    .map_err(|source| InitError::Io {
                        what: "reading the workers' address".into(),
                        source,
                    })?;
                (
                    Launcher::Cluster {
                        head: attached.outbox,
                        token: attached.token,
                        listening,
                        tls: attached.tls,
                    },
                    Listener::Tcp(attached.listener),
                    Some((attached.reader, attached.address)),
                )
            }
        };
        let driver = Arc::new(Driver {
            cluster,
            next_id: AtomicU64::new(1),
            completions: AtomicU64::new(0),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            launcher,
            children: Mutex::new(Vec::new()),
            welcome,
            tracing,
            start_timeout,
        });
        if let Some((reader, address)) = head {
            let listening = Arc::clone(&driver);
            std::thread::Builder::new()
                .name("filament-head-link".into())
                .spawn(move || listening.follow_head(reader, address))
                .map_err(|source| InitError::Io {
                    what: "starting the head link thread".into(),
                    source,
                })?;
            let reporting = Arc::downgrade(&driver);
            std::thread::Builder::new()
                .name("filament-job-stats".into())
                .spawn(move || Driver::report_stats(reporting))
                .map_err(|source| InitError::Io {
                    what: "starting the stats thread".into(),
                    source,
                })?;
        }
        let accepting = Arc::clone(&driver);
        std::thread::Builder::new()
            .name("filament-accept".into())
            .spawn(move || accepting.accept_loop(listener))
            .map_err(|source| InitError::Io {
                what: "starting the accept thread".into(),
                source,
            })?;

        let watching = Arc::clone(&driver);
        std::thread::Builder::new()
            .name("filament-reaper".into())
            .spawn(move || watching.watch_children())
            .map_err(|source| InitError::Io {
                what: "starting the reaper thread".into(),
                source,
            })?;
        for _ in 0..workers {
            if let Err(error) = driver.spawn_worker(None) {
                driver.shutdown(Duration::from_secs(2));
                return Err(error.into());
            }
        }
        let deadline = Instant::now() + driver.start_timeout;
        let mut state = driver.lock();
        loop {
            if let Some(failure) = state.start_failures.first() {
                let failure = failure.clone();
                drop(state);
                driver.shutdown(Duration::from_secs(2));
                return Err(InitError::WorkerStart(failure));
            }
            if state.workers.len() >= workers {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                drop(state);
                driver.shutdown(Duration::from_secs(2));
                return Err(InitError::WorkerStart(WorkerStartError::Timeout {
                    worker: None,
                    timeout: driver.start_timeout,
                }));
            }
            state = driver
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        state.started = true;
        drop(state);
        Ok(driver)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Releases the lock, wakes whoever waits for a change, and sends what was queued meanwhile.
    fn unlock(&self, mut state: MutexGuard<'_, State>) {
        let outgoing = std::mem::take(&mut state.outgoing);
        let output = std::mem::take(&mut state.output);
        let launches = std::mem::take(&mut state.launches);
        let wake = std::mem::take(&mut state.wake);
        drop(state);
        if wake {
            self.changed.notify_all();
        }
        for outbox in outgoing {
            outbox.flush();
        }
        for (stderr, line) in output {
            if stderr {
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
        }
        for (worker, actor) in launches {
            if let Err(error) = self.launch_worker(worker, actor) {
                self.worker_start_failed(worker, error);
            }
        }
    }

    pub(crate) fn next_id(&self) -> ObjectId {
        ObjectId(self.next_id.fetch_add(1, Ordering::Relaxed) & 0x0000_ffff_ffff_ffff)
    }

    /// Starts a worker process: this executable, re-executed with the worker marker.
    fn spawn_worker(&self, actor: Option<ActorId>) -> Result<u32, WorkerStartError> {
        let id = self.reserve_worker(&mut self.lock(), actor)?;
        self.launch_worker(id, actor.is_some())?;
        Ok(id)
    }

    /// Numbers a new worker and records it as starting (for `actor`, if any); the process itself
    /// is started by [`Driver::launch_worker`], outside the lock (a fork and exec take about a
    /// millisecond, which every driver thread would wait for).
    fn reserve_worker(
        &self,
        state: &mut State,
        actor: Option<ActorId>,
    ) -> Result<u32, WorkerStartError> {
        // A replacement decided just before shutdown must not start after it.
        if state.shutting_down {
            return Err(WorkerStartError::ShuttingDown);
        }
        if let Some(cause) = &state.cluster_lost {
            return Err(WorkerStartError::ClusterLost {
                cause: cause.clone(),
            });
        }
        state.next_worker += 1;
        let id = state.next_worker;
        state.starting.insert(id, actor);
        state.starting_since.insert(id, Instant::now());
        Ok(id)
    }

    /// Starts the process of a reserved worker, or asks the head to have a node start it.
    fn launch_worker(&self, id: u32, actor: bool) -> Result<(), WorkerStartError> {
        let (socket, token) = match &self.launcher {
            Launcher::Local { socket, token, .. } => (socket, token),
            Launcher::Cluster { head, .. } => {
                return if head.send(ToHead::StartWorker { worker: id, actor }) {
                    Ok(())
                } else {
                    Err(WorkerStartError::ClusterLost {
                        cause: format!("worker {id} cannot be started: the cluster's head is gone"),
                    })
                };
            }
        };
        // /proc/self/exe, not current_exe(): the path stays right even if the binary was rebuilt.
        let child = Command::new("/proc/self/exe")
            .args(std::env::args_os().skip(1))
            .env(
                WORKER_ENV,
                crate::worker::marker_for(&format!("{}:{id}", socket.display())),
            )
            .stdin(Stdio::piped())
            .spawn()
            .map_err(|source| WorkerStartError::Spawn {
                worker: id,
                source: Arc::new(source),
            })?;
        // One line, far below a pipe's buffer: the write never waits for the worker. The pipe
        // closes right after: the worker's standard input ends there, as a null one would.
        let mut child = child;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            let _ = writeln!(stdin, "{token}");
        }
        // Started after shutdown took the children, it finds no driver and exits by itself.
        self.children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, child));
        Ok(())
    }

    fn accept_loop(self: Arc<Self>, listener: Listener) {
        loop {
            let stream = match listener.accept() {
                Ok(stream) => stream,
                Err(e) => {
                    // Out of file descriptors, say: not a reason to spin.
                    eprintln!("filament: accepting a worker's connection failed: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            if self.lock().shutting_down {
                return;
            }
            let driver = Arc::clone(&self);
            if let Err(e) = std::thread::Builder::new()
                .name("filament-worker-conn".into())
                .spawn(move || driver.serve_worker(stream))
            {
                eprintln!("filament: no thread for a worker's connection: {e}");
            }
        }
    }

    /// Handshake, then the worker's messages until it goes away.
    fn serve_worker(self: Arc<Self>, stream: Conn) {
        let _ = stream.set_read_timeout(Some(self.start_timeout));
        let stream = match (&self.launcher, stream) {
            (Launcher::Cluster { tls: Some(tls), .. }, Conn::Tcp(raw)) => {
                use crate::cluster::tls::{Accepted, refuse_plain};
                let peer = raw
                    .peer_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|_| "an unknown peer".to_owned());
                match tls.accept(raw) {
                    Accepted::Tls(stream) => Conn::tls(*stream),
                    Accepted::Plain(raw) => {
                        let why = "this job's cluster requires TLS: a plain-TCP worker is refused";
                        eprintln!("filament: refused a connection from {peer}: {why}");
                        refuse_plain(raw, &ToWorker::Refused(why.into()));
                        return;
                    }
                    Accepted::Failed(e) => {
                        eprintln!(
                            "filament: refused a connection from {peer}: TLS handshake failed: {e}"
                        );
                        return;
                    }
                }
            }
            (_, stream) => stream,
        };
        let Ok(write_half) = stream.try_clone() else {
            return;
        };
        let mut reader = FrameReader::new(stream);
        let (worker, pid) = match reader.read::<ToDriver>() {
            Ok(Some(ToDriver::Hello {
                magic,
                protocol,
                fingerprint,
                token,
                worker,
                pid,
            })) => {
                let (Launcher::Cluster { token: ours, .. } | Launcher::Local { token: ours, .. }) =
                    &self.launcher;
                let wrong_token = !crate::cluster::same_token(&token, ours);
                let refusal = if magic != wire::MAGIC {
                    Some("not a Filament worker".to_owned())
                } else if protocol != wire::PROTOCOL_VERSION {
                    Some(format!(
                        "protocol version {protocol}, the driver speaks {}",
                        wire::PROTOCOL_VERSION
                    ))
                } else if wrong_token {
                    eprintln!(
                        "filament: refused a connection from {}: wrong or missing cluster token",
                        write_half.peer()
                    );
                    Some("wrong or missing cluster token".to_owned())
                } else if fingerprint != registry().fingerprint {
                    Some("its remote functions and actors differ from the driver's: a different binary".to_owned())
                } else {
                    None
                };
                if let Some(reason) = refusal {
                    let _ = wire::write_message(&write_half, &ToWorker::Refused(reason.clone()));
                    if wrong_token {
                        // Not one of this job's workers: nothing waits for it.
                        return;
                    }
                    self.worker_start_failed(
                        worker,
                        WorkerStartError::Refused {
                            worker,
                            pid,
                            reason,
                        },
                    );
                    return;
                }
                (worker, pid)
            }
            Ok(None) => return,
            other => {
                if matches!(write_half, Conn::Tcp(_)) {
                    let why = match other {
                        Err(e) => e.to_string(),
                        _ => "its first message was not a hello".to_owned(),
                    };
                    eprintln!(
                        "filament: refused a connection from {}: no Filament hello ({why})",
                        write_half.peer()
                    );
                }
                return;
            }
        };
        reader.trust();
        let outbox = Outbox::new(write_half);
        outbox.send(ToWorker::Welcome {
            job: self.welcome.clone(),
            cluster: self.cluster,
        });
        // What the worker prints while its hook runs comes before the hook's status.
        let status = loop {
            match reader.read::<ToDriver>() {
                Ok(Some(ToDriver::Output { stderr, line })) => {
                    let mut state = self.lock();
                    state.output.push((stderr, line));
                    self.unlock(state);
                }
                other => break other,
            }
        };
        match status {
            Ok(Some(ToDriver::HookStatus(Ok(())))) => {}
            Ok(Some(ToDriver::HookStatus(Err(message)))) => {
                // Kept for the head's `status`: the job's record shows which process failed, and why.
                self.lock().departed.push(ProcessStatus {
                    worker: Some(worker),
                    pid,
                    kind: ProcessKind::Worker,
                    tracing: ProcessTracing::without_spans(HookState::Failed(message.clone())),
                });
                self.worker_start_failed(
                    worker,
                    WorkerStartError::Hook {
                        worker,
                        pid,
                        message,
                    },
                );
                return;
            }
            other => {
                let why = match other {
                    Err(e) => e.to_string(),
                    _ => "it closed the connection".to_owned(),
                };
                self.worker_start_failed(
                    worker,
                    WorkerStartError::Disconnected {
                        worker,
                        pid,
                        cause: why,
                    },
                );
                return;
            }
        }
        let _ = reader.stream().set_read_timeout(None);
        {
            let mut state = self.lock();
            let Some(actor) = state.starting.remove(&worker) else {
                // Given up on (it came too late), or never asked for: what waited for it has
                // failed already.
                drop(state);
                eprintln!("filament: worker {worker} (pid {pid}) came too late; it is sent away");
                outbox.send(ToWorker::Shutdown);
                return;
            };
            state.workers.insert(
                worker,
                WorkerSlot {
                    pid,
                    outbox,
                    free: if actor.is_some() {
                        0
                    } else {
                        TASKS_IN_FLIGHT_PER_WORKER
                    },
                    running: HashSet::new(),
                    actor,
                    stats: ProcessTracing::without_spans(if self.welcome.hook.is_some() {
                        HookState::Loaded
                    } else {
                        HookState::None
                    }),
                },
            );
            if let Some(actor) = actor
                && let Some(slot) = state.actors.get_mut(&actor)
            {
                slot.worker = Some(worker);
            }
            self.dispatch(&mut state);
            if let Some(actor) = actor {
                self.dispatch_actor(&mut state, actor);
            }
            state.wake = true;
            self.unlock(state);
        }

        // Messages that arrived together are handled under one lock, and what they cause is sent
        // in one write per worker.
        // The reader spins a moment before sleeping in `read` (see `spin`): in a sequential
        // conversation the worker's next message finds it awake.
        let activity = crate::spin::Activity::new();
        'connection: while let Ok(Some(message)) = activity.read::<ToDriver>(&mut reader) {
            let mut state = self.lock();
            self.on_message(&mut state, worker, message);
            while reader.has_buffered() {
                match reader.read::<ToDriver>() {
                    Ok(Some(message)) => self.on_message(&mut state, worker, message),
                    Ok(None) | Err(_) => {
                        self.unlock(state);
                        break 'connection;
                    }
                }
            }
            self.unlock(state);
        }
        self.on_worker_exit(worker, pid);
    }

    fn worker_start_failed(&self, worker: u32, error: WorkerStartError) {
        let mut state = self.lock();
        let actor = state.starting.remove(&worker).flatten();
        if let Some(actor) = actor {
            self.kill_actor(&mut state, actor, error.to_string());
        } else {
            self.fail_if_no_workers(&mut state, &error.to_string());
            state.start_failures.push(error);
        }
        state.wake = true;
        self.unlock(state);
    }

    fn on_message(&self, state: &mut State, worker: u32, message: ToDriver) {
        match message {
            ToDriver::Done { id, result } => {
                if let Some(slot) = state.workers.get_mut(&worker)
                    && slot.running.remove(&id)
                    && slot.actor.is_none()
                {
                    slot.free += 1;
                }
                self.complete(state, id, result.map(Arc::new));
                self.dispatch(state);
            }
            ToDriver::Submit(spec) => self.submit_locked(state, spec),
            ToDriver::Get { request, ids } => {
                let missing: Vec<ObjectId> = ids
                    .iter()
                    .copied()
                    .filter(|id| state.objects.get(id).is_some_and(|o| o.value.is_none()))
                    .collect();
                if missing.is_empty() {
                    Self::answer_get(state, worker, request, &ids);
                } else {
                    for id in &missing {
                        if let Some(object) = state.objects.get_mut(id) {
                            object.remote_waiters.push((worker, request));
                        }
                    }
                    state.remote_gets.insert((worker, request), ids);
                }
            }
            ToDriver::Poll { request, ids } => {
                let ready = ids
                    .into_iter()
                    .filter(|id| state.objects.get(id).is_none_or(|o| o.value.is_some()))
                    .collect();
                if let Some(slot) = state.workers.get(&worker) {
                    slot.outbox.queue(ToWorker::Ready { request, ready });
                    let outbox = slot.outbox.clone();
                    state.outgoing.push(outbox);
                }
            }
            ToDriver::Release(ids) => {
                for id in ids {
                    Self::release_locked(state, id);
                }
            }
            ToDriver::Blocked => {
                if let Some(slot) = state.workers.get_mut(&worker) {
                    slot.free += 1;
                }
                self.dispatch(state);
            }
            ToDriver::Unblocked => {
                if let Some(slot) = state.workers.get_mut(&worker) {
                    slot.free -= 1;
                }
            }
            ToDriver::Stats(stats) => {
                if let Some(slot) = state.workers.get_mut(&worker) {
                    slot.stats = stats;
                }
            }
            ToDriver::Output { stderr, line } => state.output.push((stderr, line)),
            ToDriver::Hello { .. } | ToDriver::HookStatus(_) => {}
        }
    }

    fn answer_get(state: &mut State, worker: u32, request: u64, ids: &[ObjectId]) {
        let results = ids
            .iter()
            .map(|id| {
                let name = state
                    .objects
                    .get(id)
                    .map(|o| o.name.clone())
                    .unwrap_or_default();
                let result = match state.objects.get(id).and_then(|o| o.value.as_ref()) {
                    Some(Ok(bytes)) => Ok(bytes.as_ref().clone()),
                    Some(Err(error)) => Err(error.clone()),
                    None => Err(TaskError::Invalid {
                        task: format!("object {id}"),
                        message: "unknown to the driver (freed, or of another cluster)".into(),
                    }),
                };
                (*id, name, result)
            })
            .collect();
        if let Some(slot) = state.workers.get(&worker) {
            slot.outbox.queue(ToWorker::Got { request, results });
            let outbox = slot.outbox.clone();
            state.outgoing.push(outbox);
        }
    }

    /// Submits a task from this process; the caller holds one reference to the result.
    pub(crate) fn submit(&self, spec: TaskSpec) {
        let mut state = self.lock();
        self.submit_locked(&mut state, spec);
        self.unlock(state);
    }

    fn submit_locked(&self, state: &mut State, spec: TaskSpec) {
        let id = spec.id;
        state.objects.insert(
            id,
            Object {
                name: spec.name.clone(),
                value: None,
                refs: 1,
                dependents: Vec::new(),
                remote_waiters: Vec::new(),
            },
        );
        // Every argument is held until the task has its value; count those still running.
        let mut missing = 0;
        let mut unknown = None;
        for (index, arg) in spec.args.iter().enumerate() {
            if let Some(dep) = arg.object() {
                match state.objects.get_mut(&dep) {
                    Some(object) => {
                        object.refs += 1;
                        if object.value.is_none() {
                            object.dependents.push(id);
                            missing += 1;
                        }
                    }
                    None => unknown = Some((index, dep)),
                }
            }
        }
        if let Some((index, dep)) = unknown {
            let error = TaskError::ArgumentFailed {
                task: spec.name.clone(),
                index,
                cause: Box::new(TaskError::Invalid {
                    task: format!("object {dep}"),
                    message: "unknown to this cluster".into(),
                }),
            };
            self.release_args(state, &spec);
            self.complete(state, id, Err(error));
            return;
        }
        match &spec.kind {
            TaskKind::Function { .. } => {
                if missing == 0 {
                    state.ready.push_back(spec);
                } else {
                    state.waiting.insert(id, (missing, None));
                    state.parked.insert(id, spec);
                }
                self.dispatch(state);
                if let Some(cause) = state.pool_lost.clone() {
                    self.fail_if_no_workers(state, &cause);
                }
            }
            TaskKind::CreateActor { actor, .. } => {
                let actor = *actor;
                let class = spec.name.trim_end_matches("::new").to_owned();
                state.actors.insert(
                    actor,
                    ActorSlot {
                        class,
                        worker: None,
                        queue: VecDeque::from([spec]),
                        dead: None,
                    },
                );
                if missing > 0 {
                    state.waiting.insert(id, (missing, Some(actor)));
                }
                // The process starts once the lock is released; calls queue until it is ready.
                match self.reserve_worker(state, Some(actor)) {
                    Ok(worker) => state.launches.push((worker, true)),
                    Err(error) => self.kill_actor(state, actor, error.to_string()),
                }
            }
            TaskKind::ActorCall { actor, .. } => {
                let actor = *actor;
                if missing > 0 {
                    state.waiting.insert(id, (missing, Some(actor)));
                }
                match state.actors.get_mut(&actor) {
                    Some(slot) if slot.dead.is_none() => {
                        slot.queue.push_back(spec);
                        self.dispatch_actor(state, actor);
                    }
                    Some(slot) => {
                        let error = TaskError::ActorDied {
                            task: spec.name.clone(),
                            actor: format!("{}({actor:016x})", slot.class),
                            cause: slot.dead.clone().unwrap_or_default(),
                        };
                        state.waiting.remove(&id);
                        self.release_args(state, &spec);
                        self.complete(state, id, Err(error));
                    }
                    None => {
                        let error = TaskError::ActorDied {
                            task: spec.name.clone(),
                            actor: format!("{actor:016x}"),
                            cause: "no such actor in this cluster".into(),
                        };
                        state.waiting.remove(&id);
                        self.release_args(state, &spec);
                        self.complete(state, id, Err(error));
                    }
                }
            }
        }
    }

    /// Drops the holds a task had on its arguments.
    fn release_args(&self, state: &mut State, spec: &TaskSpec) {
        for arg in &spec.args {
            if let Some(dep) = arg.object() {
                Self::release_locked(state, dep);
            }
        }
    }

    /// The task's argument values, or the error of the first argument that failed.
    fn resolve(state: &State, spec: &TaskSpec) -> Result<Vec<Vec<u8>>, TaskError> {
        let args = spec
            .args
            .iter()
            .enumerate()
            .map(|(index, arg)| match arg {
                Arg::Value(bytes) => Ok(bytes.clone()),
                Arg::Ref(dep) | Arg::Moved(dep) => {
                    match state.objects.get(dep).and_then(|o| o.value.as_ref()) {
                        Some(Ok(bytes)) => Ok(bytes.as_ref().clone()),
                        Some(Err(error)) => Err(TaskError::ArgumentFailed {
                            task: spec.name.clone(),
                            index,
                            cause: Box::new(error.clone()),
                        }),
                        None => Err(TaskError::Invalid {
                            task: spec.name.clone(),
                            message: format!("argument {index} ({dep}) is not ready"),
                        }),
                    }
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let bytes = args.iter().map(Vec::len).sum();
        wire::check_value_size(bytes, "arguments").map_err(|message| TaskError::Invalid {
            task: spec.name.clone(),
            message,
        })?;
        Ok(args)
    }

    /// Sends ready function tasks to workers with free slots.
    fn dispatch(&self, state: &mut State) {
        while !state.ready.is_empty() {
            let Some(worker) = state
                .workers
                .iter()
                .filter(|(_, w)| w.actor.is_none() && w.free > 0)
                // Most free slots first; among equals, the one running least (a worker whose
                // slot is free only because its task is blocked in `get` comes last).
                .max_by_key(|(id, w)| {
                    (
                        w.free,
                        std::cmp::Reverse(w.running.len()),
                        std::cmp::Reverse(**id),
                    )
                })
                .map(|(id, _)| *id)
            else {
                return;
            };
            let spec = state.ready.pop_front().expect("not empty");
            self.send_to_worker(state, worker, spec);
        }
    }

    /// Resolves a task's arguments and sends it to `worker`, or fails it if an argument failed.
    fn send_to_worker(&self, state: &mut State, worker: u32, spec: TaskSpec) {
        let args = Self::resolve(state, &spec);
        self.release_args(state, &spec);
        match args {
            Ok(args) => {
                let slot = state.workers.get_mut(&worker).expect("a live worker");
                if slot.actor.is_none() {
                    slot.free -= 1;
                }
                slot.running.insert(spec.id);
                slot.outbox.queue(ToWorker::Execute(Execute {
                    id: spec.id,
                    kind: spec.kind,
                    name: spec.name,
                    args,
                    trace_context: spec.trace_context,
                }));
                let outbox = slot.outbox.clone();
                state.outgoing.push(outbox);
            }
            Err(error) => self.complete(state, spec.id, Err(error)),
        }
    }

    /// Sends an actor's queued calls, in order, while their arguments are ready.
    fn dispatch_actor(&self, state: &mut State, actor: ActorId) {
        loop {
            let Some(slot) = state.actors.get_mut(&actor) else {
                return;
            };
            let Some(worker) = slot.worker else {
                return;
            };
            let Some(head) = slot.queue.front() else {
                return;
            };
            if state.waiting.contains_key(&head.id) {
                return;
            }
            let spec = slot.queue.pop_front().expect("a head");
            self.send_to_worker(state, worker, spec);
        }
    }

    fn kill_actor(&self, state: &mut State, actor: ActorId, cause: String) {
        let Some(slot) = state.actors.get_mut(&actor) else {
            return;
        };
        slot.dead = Some(cause.clone());
        // Its process has nothing left to do.
        if let Some(worker) = slot.worker.take()
            && let Some(process) = state.workers.get(&worker)
        {
            process.outbox.queue(ToWorker::Shutdown);
            let outbox = process.outbox.clone();
            state.outgoing.push(outbox);
        }
        let Some(slot) = state.actors.get_mut(&actor) else {
            return;
        };
        let class = slot.class.clone();
        let queued: Vec<TaskSpec> = slot.queue.drain(..).collect();
        for spec in queued {
            state.waiting.remove(&spec.id);
            let error = TaskError::ActorDied {
                task: spec.name.clone(),
                actor: format!("{class}({actor:016x})"),
                cause: cause.clone(),
            };
            self.release_args(state, &spec);
            self.complete(state, spec.id, Err(error));
        }
    }

    /// Stores a task's result and moves on whatever waited for it.
    fn complete(&self, state: &mut State, id: ObjectId, result: Result<Arc<Vec<u8>>, TaskError>) {
        let Some(object) = state.objects.get_mut(&id) else {
            return;
        };
        // A failed actor creation kills the actor.
        let failed_creation = match (&result, object.name.strip_suffix("::new")) {
            (Err(error), Some(_)) => Some(error.to_string()),
            _ => None,
        };
        object.value = Some(result);
        self.completions.fetch_add(1, Ordering::Release);
        if state.awaited.contains_key(&id) {
            state.wake = true;
        }
        let dependents = std::mem::take(&mut object.dependents);
        let waiters = std::mem::take(&mut object.remote_waiters);
        let free = object.refs == 0;
        if let Some(cause) = failed_creation
            && let Some(actor) = state
                .actors
                .iter()
                .find(|(actor, _)| **actor == id.0)
                .map(|(a, _)| *a)
        {
            self.kill_actor(state, actor, format!("its constructor failed: {cause}"));
        }
        for dependent in dependents {
            let Some((missing, actor)) = state.waiting.get_mut(&dependent) else {
                continue;
            };
            *missing -= 1;
            if *missing == 0 {
                let actor = *actor;
                state.waiting.remove(&dependent);
                match actor {
                    Some(actor) => self.dispatch_actor(state, actor),
                    None => {
                        if let Some(spec) = state.parked.remove(&dependent) {
                            state.ready.push_back(spec);
                        }
                    }
                }
            }
        }
        for key in waiters {
            if let Some(ids) = state.remote_gets.get(&key)
                && ids
                    .iter()
                    .all(|id| state.objects.get(id).is_none_or(|o| o.value.is_some()))
            {
                let ids = state.remote_gets.remove(&key).expect("present");
                Self::answer_get(state, key.0, key.1, &ids);
            }
        }
        if free {
            state.objects.remove(&id);
        }
    }

    /// The process ids of the live workers (actors' included), by worker id.
    pub(crate) fn worker_pids(&self) -> Vec<(u32, u32)> {
        let mut pids: Vec<(u32, u32)> = self
            .lock()
            .workers
            .iter()
            .map(|(id, slot)| (*id, slot.pid))
            .collect();
        pids.sort_unstable();
        pids
    }

    pub(crate) fn add_ref(&self, id: ObjectId) {
        if let Some(object) = self.lock().objects.get_mut(&id) {
            object.refs += 1;
        }
    }

    pub(crate) fn release(&self, id: ObjectId) {
        Self::release_locked(&mut self.lock(), id);
    }

    fn release_locked(state: &mut State, id: ObjectId) {
        let Some(object) = state.objects.get_mut(&id) else {
            return;
        };
        object.refs = object.refs.saturating_sub(1);
        if object.refs == 0 && object.value.is_some() && object.remote_waiters.is_empty() {
            state.objects.remove(&id);
        }
    }

    /// Waits for every object and returns their names and results.
    pub(crate) fn get(&self, ids: &[ObjectId]) -> Result<Vec<crate::object::Fetched>, GetError> {
        let mut fetched = Vec::with_capacity(ids.len());
        let mut state = self.lock();
        loop {
            // Results never go back to pending: resume where the last look stopped, so that a
            // get of many costs one look per object, not one per object per wake-up.
            while let Some(id) = ids.get(fetched.len()) {
                match state.objects.get(id) {
                    None => return Err(GetError::OtherCluster { id: *id }),
                    Some(Object {
                        name,
                        value: Some(value),
                        ..
                    }) => fetched.push((name.clone(), value.clone())),
                    Some(_) => break,
                }
            }
            if fetched.len() == ids.len() {
                return Ok(fetched);
            }
            if state.shutting_down {
                return Err(GetError::ShutDown { id: ids[0] });
            }
            let awaited = ids[fetched.len()];
            let last = fetched.len() + 1 == ids.len();
            state = self.wait_for(state, &[awaited], last);
        }
    }

    /// Waits until one of `ids` completes (or the runtime stops), for at most `timeout`. When
    /// `spin`, it first spins (yielding) briefly: a result that arrives within microseconds then
    /// costs no sleep and wake-up, the dominant cost of a short round trip. Only the wait for a
    /// last result spins: a `get` of many would otherwise keep a core busy the whole batch long.
    fn wait_for<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        ids: &[ObjectId],
        spin: bool,
    ) -> MutexGuard<'a, State> {
        self.await_objects(&mut state, ids);
        let seen = self.completions.load(Ordering::Acquire);
        if spin {
            drop(state);
            let spin_until = Instant::now() + SPIN_BEFORE_SLEEP;
            while Instant::now() < spin_until && self.completions.load(Ordering::Acquire) == seen {
                std::thread::yield_now();
            }
            state = self.lock();
        }
        // Completions are counted under the lock, so none can slip between this look and the wait.
        if self.completions.load(Ordering::Acquire) == seen && !state.shutting_down {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        Self::forget_awaited(&mut state, ids);
        state
    }

    /// Registers `ids` as awaited, so that their completion wakes this thread.
    fn await_objects(&self, state: &mut State, ids: &[ObjectId]) {
        for id in ids {
            *state.awaited.entry(*id).or_insert(0) += 1;
        }
    }

    fn forget_awaited(state: &mut State, ids: &[ObjectId]) {
        for id in ids {
            if let Some(count) = state.awaited.get_mut(id) {
                *count -= 1;
                if *count == 0 {
                    state.awaited.remove(id);
                }
            }
        }
    }

    /// Which objects are done, once `num_returns` are or the timeout passed.
    pub(crate) fn wait(
        &self,
        ids: &[ObjectId],
        num_returns: usize,
        timeout: Option<Duration>,
    ) -> Vec<bool> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut state = self.lock();
        loop {
            let done: Vec<bool> = ids
                .iter()
                .map(|id| state.objects.get(id).is_none_or(|o| o.value.is_some()))
                .collect();
            if done.iter().filter(|d| **d).count() >= num_returns || state.shutting_down {
                return done;
            }
            let pending: Vec<ObjectId> = ids
                .iter()
                .zip(&done)
                .filter(|(_, done)| !**done)
                .map(|(id, _)| *id)
                .collect();
            self.await_objects(&mut state, &pending);
            match deadline {
                None => state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner()),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        Self::forget_awaited(&mut state, &pending);
                        return done;
                    }
                    state = self
                        .changed
                        .wait_timeout(state, deadline - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
            Self::forget_awaited(&mut state, &pending);
        }
    }

    /// A worker went away: its tasks fail, its actor dies, a pool worker is replaced.
    fn on_worker_exit(&self, worker: u32, pid: u32) {
        let mut state = self.lock();
        let Some(slot) = state.workers.remove(&worker) else {
            return;
        };
        let shutting_down = state.shutting_down;
        if shutting_down {
            let last = Self::process_status(&state, worker, &slot);
            state.departed.push(last);
        }
        // An actor already dead (its constructor failed, and its process was told to stop) takes
        // the calls it was sent with it: they fail for the actor's reason, not the process's.
        let dead_actor = slot.actor.and_then(|actor| {
            let actor_slot = state.actors.get(&actor)?;
            let cause = actor_slot.dead.clone()?;
            Some((format!("{}({actor:016x})", actor_slot.class), cause))
        });
        for id in slot.running {
            let name = state
                .objects
                .get(&id)
                .map(|o| o.name.clone())
                .unwrap_or_default();
            let error = match &dead_actor {
                Some((actor, cause)) => TaskError::ActorDied {
                    task: name,
                    actor: actor.clone(),
                    cause: cause.clone(),
                },
                None if shutting_down => TaskError::Cancelled { task: name },
                None if state.cluster_lost.is_some() => TaskError::NoWorkers {
                    task: name,
                    cause: state.cluster_lost.clone().unwrap_or_default(),
                },
                None => TaskError::WorkerDied {
                    task: name,
                    worker,
                    pid,
                },
            };
            self.complete(&mut state, id, Err(error));
        }
        if let Some(actor) = slot.actor {
            self.kill_actor(
                &mut state,
                actor,
                format!("its worker {worker} (pid {pid}) died"),
            );
        }
        let replace = slot.actor.is_none()
            && !shutting_down
            && state.cluster_lost.is_none()
            && state.replacements < MAX_REPLACEMENTS;
        if replace {
            state.replacements += 1;
        }
        if !replace {
            self.fail_if_no_workers(
                &mut state,
                &format!("worker {worker} (pid {pid}) died and was the last"),
            );
        }
        self.unlock(state);
        if replace && let Err(error) = self.spawn_worker(None) {
            let mut state = self.lock();
            self.fail_if_no_workers(&mut state, &error.to_string());
            self.unlock(state);
        }
    }

    /// Once the pool has no worker left or starting, tasks waiting for one fail (and so do later
    /// ones) instead of waiting forever.
    fn fail_if_no_workers(&self, state: &mut State, cause: &str) {
        self.fail_if_no_workers_because(state, cause, false);
    }

    /// [`Driver::fail_if_no_workers`]; `lost`: the pool is lost whatever is left of it.
    fn fail_if_no_workers_because(&self, state: &mut State, cause: &str, lost: bool) {
        let pool_alive = state.workers.values().any(|w| w.actor.is_none());
        let pool_starting = state.starting.values().any(Option::is_none);
        if !lost && (!state.started || pool_alive || pool_starting) {
            return;
        }
        let cause = state
            .pool_lost
            .get_or_insert_with(|| {
                if lost {
                    cause.to_owned()
                } else {
                    format!("no worker is left: {cause}")
                }
            })
            .clone();
        let parked: Vec<TaskSpec> = state.parked.drain().map(|(_, spec)| spec).collect();
        let stranded: Vec<TaskSpec> = state.ready.drain(..).chain(parked).collect();
        for spec in stranded {
            state.waiting.remove(&spec.id);
            let error = TaskError::NoWorkers {
                task: spec.name.clone(),
                cause: cause.clone(),
            };
            self.release_args(state, &spec);
            self.complete(state, spec.id, Err(error));
        }
    }

    /// Reaps worker processes that ended, every few milliseconds until shutdown. One that ended
    /// before it connected fails what waited for it (an actor's calls, `init`), rather than
    /// leaving them waiting.
    fn watch_children(self: Arc<Self>) {
        while !self.lock().shutting_down {
            let mut ended = Vec::new();
            self.children
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain_mut(|(worker, child)| match child.try_wait() {
                    Ok(Some(status)) => {
                        ended.push((*worker, child.id(), status));
                        false
                    }
                    _ => true,
                });
            for (worker, pid, status) in ended {
                if self.lock().starting.contains_key(&worker) {
                    self.worker_start_failed(
                        worker,
                        WorkerStartError::Exited {
                            worker,
                            pid,
                            status,
                        },
                    );
                }
            }
            // A worker that neither connects nor ends (a node that never started it, a process
            // stuck before `init`) must not keep an actor's calls or `init` waiting forever.
            let late: Vec<u32> = {
                let mut state = self.lock();
                let State {
                    starting,
                    starting_since,
                    ..
                } = &mut *state;
                starting_since.retain(|worker, _| starting.contains_key(worker));
                starting_since
                    .iter()
                    .filter(|(_, since)| since.elapsed() > self.start_timeout)
                    .map(|(worker, _)| *worker)
                    .collect()
            };
            for worker in late {
                self.lock().starting_since.remove(&worker);
                self.worker_start_failed(
                    worker,
                    WorkerStartError::Timeout {
                        worker: Some(worker),
                        timeout: self.start_timeout,
                    },
                );
                let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((_, child)) = children.iter_mut().find(|(id, _)| *id == worker) {
                    let _ = child.kill();
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops every worker: asks them to exit, then kills what is left after `grace`.
    pub(crate) fn shutdown(&self, grace: Duration) {
        {
            let mut state = self.lock();
            state.shutting_down = true;
            let outboxes: Vec<Outbox<ToWorker>> = state
                .workers
                .values()
                .map(|slot| slot.outbox.clone())
                .collect();
            for outbox in &outboxes {
                outbox.queue(ToWorker::Shutdown);
            }
            state.outgoing.extend(outboxes);
            state.wake = true;
            self.unlock(state);
        }
        // Wake the accept loop so it sees the flag.
        match &self.launcher {
            Launcher::Local { socket, .. } => drop(UnixStream::connect(socket)),
            Launcher::Cluster { listening, .. } => drop(TcpStream::connect(listening)),
        }
        let deadline = Instant::now() + grace;
        let mut children =
            std::mem::take(&mut *self.children.lock().unwrap_or_else(|p| p.into_inner()));
        while !children.is_empty() && Instant::now() < deadline {
            children.retain_mut(|(_, child)| !matches!(child.try_wait(), Ok(Some(_))));
            std::thread::sleep(Duration::from_millis(5));
        }
        for (_, mut child) in children {
            let _ = child.kill();
            let _ = child.wait();
        }
        match &self.launcher {
            Launcher::Local { socket_dir, .. } => drop(std::fs::remove_dir_all(socket_dir)),
            // The job ends with the connection: the head has the nodes end what is left of it.
            Launcher::Cluster { head, .. } => {
                // Workers leave once their spans are flushed, with a last report of them: the
                // head keeps the job's final counts.
                let deadline = Instant::now() + grace;
                while !self.lock().workers.is_empty() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                head.send(ToHead::JobStats(self.job_processes()));
                head.close();
            }
        }
    }

    /// Follows what the head says about this job's workers until it goes away; then the job
    /// cannot go on, and every task waiting or to come fails, saying why.
    fn follow_head(self: Arc<Self>, mut reader: FrameReader, address: String) {
        let cause = loop {
            match client::next_worker_failure(&mut reader, &address) {
                Ok((worker, message)) => {
                    if self.lock().starting.contains_key(&worker) {
                        self.worker_start_failed(
                            worker,
                            WorkerStartError::Node { worker, message },
                        );
                    }
                }
                Err(cause) => break cause,
            }
        };
        let mut state = self.lock();
        if state.shutting_down {
            return;
        }
        eprintln!("filament: {cause}; the job's tasks fail from now on");
        state.cluster_lost = Some(cause.clone());
        let starting: Vec<u32> = state.starting.keys().copied().collect();
        let outboxes: Vec<Outbox<ToWorker>> =
            state.workers.values().map(|w| w.outbox.clone()).collect();
        self.fail_if_no_workers_because(&mut state, &cause, true);
        state.wake = true;
        self.unlock(state);
        for worker in starting {
            self.worker_start_failed(
                worker,
                WorkerStartError::ClusterLost {
                    cause: cause.clone(),
                },
            );
        }
        // Their tasks fail as their connections end (see `on_worker_exit`).
        for outbox in outboxes {
            outbox.close();
        }
    }

    /// The driver and its live workers, with their tracing.
    fn job_processes(&self) -> Vec<ProcessStatus> {
        let mut processes = vec![ProcessStatus {
            worker: None,
            pid: std::process::id(),
            kind: ProcessKind::Driver,
            tracing: ProcessTracing::of(self.tracing.as_ref()),
        }];
        let state = self.lock();
        processes.extend(state.departed.iter().cloned());
        let mut workers: Vec<_> = state.workers.iter().collect();
        workers.sort_by_key(|(id, _)| **id);
        for (id, slot) in workers {
            processes.push(Self::process_status(&state, *id, slot));
        }
        processes
    }

    fn process_status(state: &State, id: u32, slot: &WorkerSlot) -> ProcessStatus {
        let kind = match slot.actor.and_then(|a| state.actors.get(&a)) {
            Some(actor) => ProcessKind::Actor {
                class: actor.class.to_string(),
            },
            None => ProcessKind::Worker,
        };
        ProcessStatus {
            worker: Some(id),
            pid: slot.pid,
            kind,
            tracing: slot.stats.clone(),
        }
    }

    /// Tells the head, every [`STATS_INTERVAL`] while the driver lives, how the tracing of the
    /// job's processes is doing, when that changed.
    fn report_stats(driver: std::sync::Weak<Driver>) {
        let mut last = Vec::new();
        loop {
            std::thread::sleep(STATS_INTERVAL);
            let Some(driver) = driver.upgrade() else {
                return;
            };
            let Launcher::Cluster { head, .. } = &driver.launcher else {
                return;
            };
            if driver.lock().shutting_down {
                return;
            }
            let processes = driver.job_processes();
            if processes != last {
                if !head.send(ToHead::JobStats(processes.clone())) {
                    return;
                }
                last = processes;
            }
        }
    }
}
