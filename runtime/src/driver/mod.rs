//! The driver's side of a job, in two parts: the [`scheduler`] (a state machine: objects, arguments,
//! placement, work stealing, retries) and this I/O shell, which owns the sockets, the worker
//! processes (its own executable, re-executed in worker mode: by itself in an embedded cluster, by
//! the nodes of a standing cluster), the head link and the clock, feeds the scheduler events and
//! carries out the effects it returns.

mod conn;
mod head_link;
mod processes;
mod scheduler;

use crate::cluster::client::Attached;
use crate::cluster::proto::ToHead;
use crate::object::{GetError, ObjectId};
use crate::wire::{self, Outbox, TaskSpec, ToWorker};
use crate::{InitError, WorkerStartError};
use conn::Listener;
use processes::Launcher;
pub(crate) use scheduler::LostAttempt;
use scheduler::{Effect, Scheduler};
use std::collections::HashMap;
use std::net::TcpStream;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a new worker has to connect, handshake and run the tracing hook, unless
/// [`crate::Config::worker_start_timeout`] says otherwise.
pub(crate) const WORKER_START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long `get` spins, yielding, before it sleeps until a task completes.
const SPIN_BEFORE_SLEEP: Duration = Duration::from_micros(200);

/// The scheduler and what only the shell knows, under one lock.
#[derive(Default)]
struct State {
    sched: Scheduler,
    /// Connected workers' connections: their sending ends, and their reading ends.
    conns: HashMap<u32, Outbox<ToWorker>>,
    readers: HashMap<u32, Arc<conn::Reading>>,
    /// When each starting worker was launched: one that has not connected within
    /// [`Driver::start_timeout`] fails what waits for it.
    starting_since: HashMap<u32, Instant>,
    /// Workers' output lines, to print once the lock is released (`true`: standard error).
    output: Vec<(bool, String)>,
}

/// How a driver's cluster is made.
pub(crate) enum Mode {
    Embedded,
    Attached(Box<Attached>),
}

/// The cluster, seen from the driver.
pub(crate) struct Driver {
    pub(crate) cluster: u64,
    next_id: AtomicU64,
    /// Tasks completed so far (changed under the state lock): waiters spin on it before sleeping.
    completions: AtomicU64,
    state: Mutex<State>,
    changed: Condvar,
    /// Held, from before the state's lock is released, by a thread printing what workers printed
    /// or recording lost attempts' spans: taking it after seeing the state waits for them.
    reporting: Mutex<()>,
    launcher: Launcher,
    /// Worker processes started and not yet reaped, by worker id.
    children: Mutex<Vec<(u32, Child)>>,
    /// Wakes the reaper for a child launched, or for shutdown.
    alarm: crate::child_watch::Alarm,
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
            reporting: Mutex::new(()),
            launcher,
            children: Mutex::new(Vec::new()),
            alarm: crate::child_watch::Alarm::new(),
            welcome,
            tracing,
            start_timeout,
        });
        if let Some((reader, address)) = head {
            let listening = Arc::clone(&driver);
            spawn("filament-head-link", move || {
                listening.follow_head(reader, address)
            })?;
            let reporting = Arc::downgrade(&driver);
            spawn("filament-job-stats", move || {
                Driver::report_stats(reporting)
            })?;
        }
        let accepting = Arc::clone(&driver);
        spawn("filament-accept", move || accepting.accept_loop(listener))?;
        let watching = Arc::clone(&driver);
        spawn("filament-reaper", move || watching.watch_children())?;
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

    /// Takes the state's lock. With tracing on, the scheduler is told the time: what it handles
    /// next happens now (a task sent now, if lost with its worker, has its span start here).
    fn lock(&self) -> MutexGuard<'_, State> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if crate::spans::enabled() {
            state.sched.clock = Some(std::time::SystemTime::now());
        }
        state
    }

    /// Carries out what the scheduler decided, releases the lock, wakes whoever waits for a change,
    /// and sends what was queued meanwhile. Messages are queued in the order the state changed,
    /// and no thread writes to a socket holding the lock.
    fn unlock(&self, mut state: MutexGuard<'_, State>) {
        let effects = std::mem::take(&mut state.sched.effects);
        let mut flush: Vec<(u32, Outbox<ToWorker>)> = Vec::new();
        let mut launches = Vec::new();
        let mut lost = Vec::new();
        for effect in effects {
            match effect {
                Effect::Send(worker, message) => {
                    if let Some(outbox) = state.conns.get(&worker) {
                        outbox.queue(message);
                        // One flush per connection (a batch's messages mostly go to a few).
                        if !flush.iter().any(|(to, _)| *to == worker) {
                            flush.push((worker, outbox.clone()));
                        }
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
        let reporting = (!output.is_empty() || !lost.is_empty())
            .then(|| self.reporting.lock().unwrap_or_else(|p| p.into_inner()));
        drop(state);
        // What workers printed and the spans of lost attempts come before the wake-up, and under
        // `reporting`: whoever saw this state change (the driver's shutdown, say) can wait for
        // them to be out.
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
        drop(reporting);
        if wake {
            self.changed.notify_all();
        }
        for (_, outbox) in flush {
            outbox.flush();
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

    /// Submits a task from this process; the caller holds one reference to the result.
    pub(crate) fn submit(&self, spec: TaskSpec) {
        let mut state = self.lock();
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

    /// Waits until one of `ids` completes (or the runtime stops). When `spin`, it first spins
    /// (yielding) briefly: a result that arrives within microseconds then costs no sleep and
    /// wake-up, the dominant cost of a short round trip. If a single awaited task is on a worker,
    /// it spins reading that worker's connection itself, as its thread would (see
    /// [`Driver::read_while_waiting`]). Only the wait for a last result spins: a `get` of many
    /// would otherwise keep a core busy the whole batch long.
    fn wait_for<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        ids: &[ObjectId],
        spin: bool,
    ) -> MutexGuard<'a, State> {
        state.sched.await_objects(ids);
        let seen = self.completions.load(Ordering::Acquire);
        if spin {
            let holder = match ids {
                [id] => state.sched.holder(*id),
                _ => None,
            };
            let reading = holder.and_then(|w| Some((w, Arc::clone(state.readers.get(&w)?))));
            drop(state);
            let spin_until = Instant::now() + SPIN_BEFORE_SLEEP;
            if let Some((worker, reading)) = reading {
                self.read_while_waiting(worker, &reading, seen, spin_until);
            }
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

    /// Stops every worker and leaves the cluster: [`Driver::stop_workers`], then
    /// [`Driver::leave`].
    pub(crate) fn shutdown(&self, grace: Duration) {
        self.stop_workers(grace);
        self.leave();
    }

    /// Stops every worker: asks them to exit (they flush their spans first), then kills what is
    /// left after `grace`.
    pub(crate) fn stop_workers(&self, grace: Duration) {
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
        self.alarm.ring();
        // Wake the accept loop so it sees the flag.
        match &self.launcher {
            Launcher::Local { socket, .. } => drop(UnixStream::connect(socket)),
            Launcher::Cluster { listening, .. } => drop(TcpStream::connect(listening)),
        }
        let deadline = Instant::now() + grace;
        let mut children =
            std::mem::take(&mut *self.children.lock().unwrap_or_else(|p| p.into_inner()));
        let mut pidfds = crate::child_watch::Pidfds::default();
        loop {
            children.retain_mut(|(_, child)| !matches!(child.try_wait(), Ok(Some(_))));
            if children.is_empty() || Instant::now() >= deadline {
                break;
            }
            pidfds.watch(children.iter().map(|(_, child)| child.id()));
            pidfds.sleep(&self.alarm, Some(deadline));
        }
        for (_, mut child) in children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Workers leave once their spans are flushed, with a last report of them and their last
        // words (a summary of lost spans, say): read them before going on.
        let mut state = self.lock();
        while !state.sched.workers.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(state);
        // The thread that saw the last worker go may still be printing its last words.
        drop(self.reporting.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Leaves the cluster: an embedded one's socket folder is removed; a standing one's head is
    /// given the job's final counts (the driver's own included: leave after its tracing shut
    /// down) and the connection closes, which ends the job (the head has the nodes end what is
    /// left of it).
    pub(crate) fn leave(&self) {
        match &self.launcher {
            Launcher::Local { socket_dir, .. } => drop(std::fs::remove_dir_all(socket_dir)),
            Launcher::Cluster { head, .. } => {
                head.send(ToHead::JobStats(self.job_processes()));
                head.close();
            }
        }
    }
}

/// Starts a thread of the driver, named `name`; `init` fails naming it if it cannot.
fn spawn(name: &str, run: impl FnOnce() + Send + 'static) -> Result<(), InitError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(run)
        .map(drop)
        .map_err(|source| InitError::Io {
            what: format!("starting the {name} thread"),
            source,
        })
}
