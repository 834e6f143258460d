//! The driver's side of a job, in two parts: the [`scheduler`] (a state machine: objects, arguments,
//! placement, work stealing, retries) and this I/O shell, which owns the sockets, the worker
//! processes (its own executable, re-executed in worker mode: by itself in an embedded cluster, by
//! the nodes of a standing cluster), the head link and the clock, feeds the scheduler events and
//! carries out the effects it returns.

mod scheduler;

use crate::cluster::client::{self, Attached};
use crate::cluster::proto::{ProcessStatus, ToHead};
use crate::object::{GetError, ObjectId};
use crate::registry::registry;
use crate::status::{HookState, ProcessKind, ProcessTracing};
use crate::wire::{self, Conn, FrameReader, Outbox, TaskSpec, ToDriver, ToWorker};
use crate::{InitError, WorkerStartError};
pub(crate) use scheduler::LostAttempt;
use scheduler::{Effect, Scheduler};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a new worker has to connect, handshake and run the tracing hook, unless
/// [`crate::Config::worker_start_timeout`] says otherwise.
pub(crate) const WORKER_START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long `get` spins, yielding, before it sleeps until a task completes.
const SPIN_BEFORE_SLEEP: Duration = Duration::from_micros(200);

/// How often an attached driver tells the head how its processes' tracing is doing (when it changed).
const STATS_INTERVAL: Duration = Duration::from_millis(500);

/// The scheduler and what only the shell knows, under one lock.
#[derive(Default)]
struct State {
    sched: Scheduler,
    /// Connected workers' connections.
    conns: HashMap<u32, Outbox<ToWorker>>,
    /// When each starting worker was launched: one that has not connected within
    /// [`Driver::start_timeout`] fails what waits for it.
    starting_since: HashMap<u32, Instant>,
    /// Workers' output lines, to print once the lock is released (`true`: standard error).
    output: Vec<(bool, String)>,
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
        let cluster = crate::random_u64();
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
            if let Err(error) = driver.spawn_worker() {
                driver.shutdown(Duration::from_secs(2));
                return Err(error.into());
            }
        }
        let deadline = Instant::now() + driver.start_timeout;
        let mut state = driver.lock();
        loop {
            if let Some(failure) = state.sched.start_failures.first() {
                let failure = failure.clone();
                drop(state);
                driver.shutdown(Duration::from_secs(2));
                return Err(InitError::WorkerStart(failure));
            }
            if state.sched.workers.len() >= workers {
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
        state.sched.started = true;
        drop(state);
        Ok(driver)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Carries out what the scheduler decided, releases the lock, wakes whoever waits for a change,
    /// and sends what was queued meanwhile. Messages are queued in the order the state changed,
    /// and no thread writes to a socket holding the lock.
    fn unlock(&self, mut state: MutexGuard<'_, State>) {
        let effects = std::mem::take(&mut state.sched.effects);
        let mut flush: Vec<Outbox<ToWorker>> = Vec::new();
        let mut launches = Vec::new();
        let mut lost = Vec::new();
        for effect in effects {
            match effect {
                Effect::Send(worker, message) => {
                    if let Some(outbox) = state.conns.get(&worker) {
                        outbox.queue(message);
                        flush.push(outbox.clone());
                    }
                }
                Effect::Launch(worker, actor) => {
                    state.starting_since.insert(worker, Instant::now());
                    launches.push((worker, actor));
                }
                Effect::AttemptLost(attempt) => lost.push(attempt),
            }
        }
        self.completions
            .store(state.sched.completions, Ordering::Release);
        let output = std::mem::take(&mut state.output);
        let wake = std::mem::take(&mut state.sched.wake);
        drop(state);
        if wake {
            self.changed.notify_all();
        }
        for outbox in flush {
            outbox.flush();
        }
        for (stderr, line) in output {
            if stderr {
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
        }
        for attempt in lost {
            crate::spans::on_attempt_lost(attempt);
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
    fn spawn_worker(&self) -> Result<u32, WorkerStartError> {
        let id = {
            let mut state = self.lock();
            let id = state.sched.reserve_worker(None)?;
            state.starting_since.insert(id, Instant::now());
            id
        };
        self.launch_worker(id, false)?;
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
                crate::worker::WORKER_ENV,
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
            if self.lock().sched.shutting_down {
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
                self.lock().sched.departed.push(ProcessStatus {
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
            state.conns.insert(worker, outbox.clone());
            state.starting_since.remove(&worker);
            if state
                .sched
                .worker_ready(worker, pid, self.welcome.hook.is_some())
                .is_none()
            {
                // Given up on (it came too late), or never asked for: what waited for it has
                // failed already.
                state.conns.remove(&worker);
                drop(state);
                eprintln!("filament: worker {worker} (pid {pid}) came too late; it is sent away");
                outbox.send(ToWorker::Shutdown);
                return;
            }
            self.unlock(state);
        }

        // Messages that arrived together are handled under one lock, and what they cause is sent
        // in one write per worker.
        // The reader spins a moment before sleeping in `read` (see `spin`): in a sequential
        // conversation the worker's next message finds it awake.
        let activity = crate::spin::Activity::new();
        'connection: while let Ok(Some(message)) = activity.read::<ToDriver>(&mut reader) {
            let mut state = self.lock();
            Self::on_message(&mut state, worker, message);
            while reader.has_buffered() {
                match reader.read::<ToDriver>() {
                    Ok(Some(message)) => Self::on_message(&mut state, worker, message),
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
        state.starting_since.remove(&worker);
        state.sched.worker_start_failed(worker, error);
        self.unlock(state);
    }

    /// A worker's message, to the scheduler (its output, printed by the shell).
    fn on_message(state: &mut State, worker: u32, message: ToDriver) {
        match message {
            ToDriver::Output { stderr, line } => state.output.push((stderr, line)),
            message => {
                if crate::spans::enabled() {
                    state.sched.clock = Some(std::time::SystemTime::now());
                }
                state.sched.on_message(worker, message);
            }
        }
    }

    /// Submits a task from this process; the caller holds one reference to the result.
    pub(crate) fn submit(&self, spec: TaskSpec) {
        let mut state = self.lock();
        if crate::spans::enabled() {
            state.sched.clock = Some(std::time::SystemTime::now());
        }
        state.sched.submit(spec);
        self.unlock(state);
    }

    /// The process ids of the live workers (actors' included), by worker id.
    pub(crate) fn worker_pids(&self) -> Vec<(u32, u32)> {
        let mut pids: Vec<(u32, u32)> = self
            .lock()
            .sched
            .workers
            .iter()
            .map(|(id, slot)| (*id, slot.pid))
            .collect();
        pids.sort_unstable();
        pids
    }

    pub(crate) fn add_ref(&self, id: ObjectId) {
        self.lock().sched.add_ref(id);
    }

    /// Drops a reference of this process; what that frees (an actor whose last handle it was)
    /// is carried out.
    pub(crate) fn release(&self, id: ObjectId) {
        let mut state = self.lock();
        state.sched.release(id);
        self.unlock(state);
    }

    /// Waits for every object and returns their names and results.
    pub(crate) fn get(&self, ids: &[ObjectId]) -> Result<Vec<crate::object::Fetched>, GetError> {
        let mut fetched = Vec::with_capacity(ids.len());
        let mut state = self.lock();
        loop {
            // Results never go back to pending: resume where the last look stopped, so that a
            // get of many costs one look per object, not one per object per wake-up.
            while let Some(id) = ids.get(fetched.len()) {
                match state.sched.objects.get(id) {
                    None => return Err(GetError::OtherCluster { id: *id }),
                    Some(object) => match &object.value {
                        Some(value) => fetched.push((object.name.clone(), value.clone())),
                        None => break,
                    },
                }
            }
            if fetched.len() == ids.len() {
                return Ok(fetched);
            }
            if state.sched.shutting_down {
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
        state.sched.await_objects(ids);
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
        if self.completions.load(Ordering::Acquire) == seen && !state.sched.shutting_down {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.sched.forget_awaited(ids);
        state
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
                .map(|id| {
                    state
                        .sched
                        .objects
                        .get(id)
                        .is_none_or(|o| o.value.is_some())
                })
                .collect();
            if done.iter().filter(|d| **d).count() >= num_returns || state.sched.shutting_down {
                return done;
            }
            let pending: Vec<ObjectId> = ids
                .iter()
                .zip(&done)
                .filter(|(_, done)| !**done)
                .map(|(id, _)| *id)
                .collect();
            state.sched.await_objects(&pending);
            match deadline {
                None => state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner()),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        state.sched.forget_awaited(&pending);
                        return done;
                    }
                    state = self
                        .changed
                        .wait_timeout(state, deadline - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
            state.sched.forget_awaited(&pending);
        }
    }

    /// A worker went away: the scheduler retries or fails its tasks, and replaces it.
    fn on_worker_exit(&self, worker: u32, pid: u32) {
        let mut state = self.lock();
        state.conns.remove(&worker);
        if crate::spans::enabled() {
            state.sched.clock = Some(std::time::SystemTime::now());
        }
        state.sched.worker_exited(worker, pid);
        self.unlock(state);
    }

    /// Reaps worker processes that ended, every few milliseconds until shutdown. One that ended
    /// before it connected fails what waited for it (an actor's calls, `init`), rather than
    /// leaving them waiting.
    fn watch_children(self: Arc<Self>) {
        while !self.lock().sched.shutting_down {
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
                if self.lock().sched.starting.contains_key(&worker) {
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
                    sched,
                    starting_since,
                    ..
                } = &mut *state;
                starting_since.retain(|worker, _| sched.starting.contains_key(worker));
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
            state.sched.shutting_down = true;
            let workers: Vec<u32> = state.conns.keys().copied().collect();
            for worker in workers {
                state
                    .sched
                    .effects
                    .push(Effect::Send(worker, ToWorker::Shutdown));
            }
            state.sched.wake = true;
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
                while !self.lock().sched.workers.is_empty() && Instant::now() < deadline {
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
                    if self.lock().sched.starting.contains_key(&worker) {
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
        if state.sched.shutting_down {
            return;
        }
        eprintln!("filament: {cause}; the job's tasks fail from now on");
        state.sched.cluster_lost = Some(cause.clone());
        let starting: Vec<u32> = state.sched.starting.keys().copied().collect();
        let outboxes: Vec<Outbox<ToWorker>> = state.conns.values().cloned().collect();
        state.sched.fail_if_no_workers_because(&cause, true);
        state.sched.wake = true;
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
        processes.extend(state.sched.departed.iter().cloned());
        let mut workers: Vec<_> = state.sched.workers.iter().collect();
        workers.sort_by_key(|(id, _)| **id);
        for (id, slot) in workers {
            processes.push(state.sched.process_status(*id, slot));
        }
        processes
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
            if driver.lock().sched.shutting_down {
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
