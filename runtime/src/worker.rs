//! A worker process: the program's own executable in worker mode. It connects to its driver, runs
//! the tracing hook, then runs the tasks it is sent until the driver says stop or goes away (end of
//! stream on the socket: a worker never outlives its driver).

use crate::object::{GetError, ObjectId, TaskError};
use crate::registry::{Args, registry};
use crate::spans;
use crate::spin::{Activity, Turns};
use crate::status::ProcessTracing;
use crate::wire::{
    self, Conn, Execute, FrameReader, Outbox, TaskKind, TaskSpec, ToDriver, ToWorker,
};
use crossbeam_channel::Sender;
use filament_plugin_api::TaskOutcome;
use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The worker's side of the connection, shared by its threads.
pub(crate) struct WorkerCore {
    pub(crate) cluster: u64,
    worker: u32,
    next_id: AtomicU64,
    outbox: Outbox<ToDriver>,
    /// Pending `get`/poll requests, by request id.
    requests: Mutex<HashMap<u64, Sender<ToWorker>>>,
    next_request: AtomicU64,
    /// Local reference counts of objects this process holds; at zero the driver is told.
    refs: Mutex<HashMap<ObjectId, u32>>,
    /// The connection's reading end. Threads take turns: the one holding it reads one message and,
    /// if it is a task it may run, runs it itself while another thread takes over reading (no
    /// hand-off between a reader and an executor on the way from the socket to the task).
    turns: Turns,
    execution: Mutex<RunQueue>,
    /// Threads not running a task (reading, or waiting to read).
    idle: AtomicUsize,
    /// The actor this process hosts, once created.
    actor: Mutex<Option<Box<dyn Any + Send>>>,
    hosts_actor: AtomicBool,
    /// Set when the driver says stop or goes away; the main thread waits for it.
    stopped: (Mutex<bool>, Condvar),
    /// Signalled, once stopping, when a task has finished, span included: stopping waits for
    /// running tasks' spans.
    finished: Condvar,
    stopping: AtomicBool,
    /// Threads ending a finished task's span.
    exporting: AtomicUsize,
    /// When the connection last carried a message: its reader spins a moment after that.
    activity: Activity,
}

/// Which tasks run: at most `allowed` at once (1, plus one per task blocked in `get`; always 1 in
/// an actor's process), the rest queued in arrival order.
#[derive(Default)]
struct RunQueue {
    queue: VecDeque<Execute>,
    running: usize,
    allowed: usize,
}

/// The environment variable that puts a process in worker mode: `<socket path>:<worker id>`.
pub(crate) const WORKER_ENV: &str = "FILAMENT_WORKER";

/// How long a worker of a standing cluster tries to reach its driver.
const WORKER_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a worker told to stop (by its driver, or by its node when its job ended) has before
/// it is killed: a second for the tasks still running to end their spans, its tracing's shutdown
/// timeout to flush them (an exporter that hangs takes all of it), and a second to say what was
/// lost.
pub(crate) const STOP_GRACE: Duration =
    Duration::from_secs(2).saturating_add(filament_tracing::DEFAULT_SHUTDOWN_TIMEOUT);

/// How often a worker tells its driver how its tracing is doing (when that changed).
const STATS_INTERVAL: Duration = Duration::from_millis(500);

/// Runs this process as worker `marker` (`<socket>:<id>` or `tcp:<host:port>:<id>`) and exits;
/// never returns.
pub(crate) fn run(marker: &str) -> ! {
    let served = serve(marker);
    // A driver killed (even by SIGKILL) cannot remove its socket's folder: its workers do.
    if let Some((socket, _)) = marker.rsplit_once(':')
        && !socket.starts_with("tcp:")
    {
        crate::socket_dir::remove_if_driver_gone(std::path::Path::new(socket));
    }
    if let Err(message) = &served {
        eprintln!("filament worker: {message}");
    }
    // What the worker printed last reaches the driver before the process ends.
    crate::output::finish();
    std::process::exit(if served.is_ok() { 0 } else { 1 })
}

/// The value of the worker marker for a worker that this process starts and that connects to
/// `address` (`<socket>:<id>` or `tcp:<host:port>:<id>`): it names this process as the parent.
pub(crate) fn marker_for(address: &str) -> String {
    format!("{}@{address}", std::process::id())
}

/// This process's worker marker (its address part), if this process is a worker.
///
/// Every child inherits the variable, so the marker names the process that started the worker:
/// a worker's parent is that process (or, if it died already, no longer an ancestor at all, and the
/// worker finds no driver and exits). A program started from inside a task has it as an ancestor
/// further up, through the worker: it runs as the ordinary program it is. (Removing the variable
/// from the worker's environment would need `unsafe` in this crate, which forbids it.)
pub(crate) fn marker() -> Option<String> {
    let value = std::env::var(WORKER_ENV).ok()?;
    let Some((parent, address)) = value
        .split_once('@')
        .and_then(|(parent, address)| Some((parent.parse::<u32>().ok()?, address)))
    else {
        // Malformed: a worker all the same, which says so and exits.
        return Some(value);
    };
    let mut ancestors = std::iter::successors(parent_of(std::process::id()), |pid| parent_of(*pid));
    match ancestors.next() {
        Some(direct) if direct == parent => Some(address.to_owned()),
        _ if ancestors.any(|pid| pid == parent) => None,
        _ => Some(address.to_owned()),
    }
}

/// The parent of process `pid`, from `/proc/<pid>/stat`; `None` past the first process.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = crate::proc_stat::read(pid)?;
    let ppid: u32 = crate::proc_stat::after_comm(&stat)?.nth(1)?.parse().ok()?;
    (ppid > 1).then_some(ppid)
}

fn serve(marker: &str) -> Result<(), String> {
    let mut startup = crate::instrument::WorkerStartup {
        started: std::time::SystemTime::now(),
        hooks: None,
    };
    let (socket, worker) = marker
        .rsplit_once(':')
        .and_then(|(socket, id)| Some((socket, id.parse::<u32>().ok()?)))
        .ok_or_else(|| format!("{} is malformed: {marker:?}", WORKER_ENV))?;
    // The first line of standard input is the token: a standing cluster's node gives it (and the
    // end of its pipe later means the job ended or the node is gone), and so does an embedded
    // cluster's driver (the socket's folder is not the only wall).
    // A node of a TLS cluster gives the TLS files next, for the connection to the driver.
    let pipe = std::env::var(crate::cluster::node::NODE_PIPE_ENV).ok();
    let mut token = String::new();
    let mut tls = None;
    if pipe.is_some() || !socket.starts_with("tcp:") {
        let mut input = std::io::stdin().lock();
        std::io::BufRead::read_line(&mut input, &mut token)
            .map_err(|e| format!("reading the cluster token: {e}"))?;
        token = token.trim().to_owned();
        if pipe.as_deref() == Some(crate::cluster::node::NODE_PIPE_TLS) {
            let pem = crate::cluster::tls::TlsPem::from_lines(&mut input)
                .map_err(|e| format!("reading the TLS files from the node: {e}"))?;
            tls = Some(
                crate::cluster::tls::Tls::from_pem(pem, None, "its node's TLS files".into())
                    .map_err(|e| e.to_string())?,
            );
        }
    }
    let stream = match socket.strip_prefix("tcp:") {
        Some(address) => {
            let raw = address
                .parse()
                .map_err(|e| format!("the driver address {address:?} is not ip:port: {e}"))
                .and_then(|addr| {
                    TcpStream::connect_timeout(&addr, WORKER_CONNECT_TIMEOUT)
                        .map_err(|e| format!("the driver at {address} is gone ({e}); exiting"))
                })?;
            match &tls {
                Some(tls) => Conn::tls(
                    tls.connect(raw)
                        .map_err(|e| format!("TLS with the driver at {address} failed: {e}"))?,
                ),
                None => Conn::tcp(raw),
            }
        }
        None => Conn::Unix(
            UnixStream::connect(socket)
                .map_err(|e| format!("the driver at {socket} is gone ({e}); exiting"))?,
        ),
    };
    wire::write_message(
        &stream,
        &ToDriver::Hello {
            magic: wire::MAGIC,
            protocol: wire::PROTOCOL_VERSION,
            fingerprint: registry().fingerprint,
            token,
            worker,
            pid: std::process::id(),
        },
    )
    .map_err(|e| e.to_string())?;
    let write_half = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader = FrameReader::new(stream);
    // Its own driver, whose address it was given.
    reader.trust();
    let (
        wire::WelcomeInfo {
            hook,
            config,
            environment,
            forward_output,
            job_id,
            node_id,
        },
        cluster,
    ) = match reader.read::<ToWorker>() {
        Ok(Some(ToWorker::Welcome { job, cluster })) => (job, cluster),
        Ok(Some(ToWorker::Refused(reason))) => {
            return Err(format!("refused by the driver: {reason}"));
        }
        other => return Err(format!("no welcome from the driver: {other:?}")),
    };
    let outbox = Outbox::new(write_half);
    // A node's worker belongs to that node, not the driver's machine.
    let node_id = std::env::var(crate::cluster::node::NODE_ID_ENV).unwrap_or(node_id);
    // From here on what this process prints goes to the driver (the hook's words included).
    if forward_output {
        crate::output::forward(&outbox, worker, &node_id)
            .map_err(|e| format!("cannot forward the worker's output: {e}"))?;
    }

    let worker_id = format!("{worker}");
    let mut tracing_guard = None;
    if let Some(hook) = &hook {
        let mut tracing = crate::tracing::Tracing::new(hook.clone())
            .role(crate::tracing::ProcessRole::Worker)
            .job_id(job_id.clone())
            .node_id(node_id.clone())
            .worker_id(worker_id.clone())
            .environment(environment);
        for (key, value) in config {
            tracing = tracing.config(key, value);
        }
        let hooks_started = std::time::SystemTime::now();
        let installed = tracing.install();
        startup.hooks = Some((hooks_started, std::time::SystemTime::now()));
        match installed {
            Ok(guard) => tracing_guard = Some(guard),
            Err(error) => {
                outbox.send(ToDriver::HookStatus(Err(error.to_string())));
                // Leave once the driver has read it (it then sends this worker away or closes),
                // not before: a worker that ended first would be reported as one that died
                // before it connected, and the hook's error lost.
                let deadline = Instant::now() + Duration::from_secs(5);
                while let Some(left) = deadline
                    .checked_duration_since(Instant::now())
                    .filter(|left| !left.is_zero())
                {
                    let _ = reader.stream().set_read_timeout(Some(left));
                    match reader.read::<ToWorker>() {
                        Ok(Some(ToWorker::Shutdown)) | Ok(None) | Err(_) => break,
                        Ok(Some(_)) => {}
                    }
                }
                return Err(error.to_string());
            }
        }
        spans::enable(spans::ProcessFacts {
            pid: std::process::id(),
            job_id,
            node_id,
            worker_id: Some(worker_id),
        });
    }
    outbox.send(ToDriver::HookStatus(Ok(())));

    let core = Arc::new(WorkerCore {
        cluster,
        worker,
        next_id: AtomicU64::new(1),
        outbox,
        requests: Mutex::new(HashMap::new()),
        next_request: AtomicU64::new(1),
        refs: Mutex::new(HashMap::new()),
        turns: Turns::new(reader),
        execution: Mutex::new(RunQueue {
            allowed: 1,
            ..RunQueue::default()
        }),
        idle: AtomicUsize::new(0),
        actor: Mutex::new(None),
        hosts_actor: AtomicBool::new(false),
        stopped: (Mutex::new(false), Condvar::new()),
        finished: Condvar::new(),
        stopping: AtomicBool::new(false),
        exporting: AtomicUsize::new(0),
        activity: Activity::new(),
    });
    crate::local::set(Some(crate::local::LocalRuntime::Worker(Arc::clone(&core))));
    if pipe.is_some() {
        // The node closed the pipe: the job ended, or the node is gone. The worker stops as when
        // its driver says so, flushing its spans (the node kills it if that takes too long).
        let watching = Arc::clone(&core);
        std::thread::Builder::new()
            .name("filament-node-watch".into())
            .spawn(move || {
                let mut sink = [0u8; 64];
                while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
                watching.stop();
            })
            .map_err(|e| format!("cannot watch the node: {e}"))?;
    }
    // Two threads: one runs a task while the other reads the next message.
    core.start_thread();
    core.start_thread();
    if let Some(hook) = &hook {
        crate::instrument::worker_ready(startup, hook);
    }
    // Only a standing cluster's `filament status` reads these: an embedded driver is not asked.
    let attached = socket.starts_with("tcp:");
    let reporter = tracing_guard
        .as_ref()
        .filter(|_| attached)
        .map(|g| g.report_handle());
    let mut reported = ProcessTracing::of(None);
    let (stopped, changed) = &core.stopped;
    let mut done = stopped.lock().unwrap_or_else(|p| p.into_inner());
    while !*done {
        done = changed
            .wait_timeout(done, STATS_INTERVAL)
            .unwrap_or_else(|p| p.into_inner())
            .0;
        if reporter.is_some() {
            let stats = ProcessTracing::of(reporter.as_ref());
            if stats != reported {
                core.outbox.send(ToDriver::Stats(stats.clone()));
                reported = stats;
            }
        }
    }
    drop(done);
    // Tasks whose results went out may still be ending their spans: let them, briefly.
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut execution = core.lock_run_queue();
    while (execution.running > 0 || core.exporting.load(Ordering::Acquire) > 0)
        && Instant::now() < deadline
    {
        execution = core
            .finished
            .wait_timeout(execution, Duration::from_millis(10))
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
    drop(execution);

    crate::local::set(None);
    if let Some(guard) = tracing_guard {
        let _ = guard.shutdown();
        // The last word on this process's spans, flushed ones included.
        if reporter.is_some() {
            core.outbox
                .send(ToDriver::Stats(ProcessTracing::of(reporter.as_ref())));
        }
    }
    Ok(())
}

impl WorkerCore {
    pub(crate) fn next_id(&self) -> ObjectId {
        let counter = self.next_id.fetch_add(1, Ordering::Relaxed) & 0x0000_ffff_ffff_ffff;
        ObjectId((u64::from(self.worker & 0xffff) << 48) | counter)
    }

    fn start_thread(self: &Arc<Self>) {
        let core = Arc::clone(self);
        self.idle.fetch_add(1, Ordering::AcqRel);
        let _ = std::thread::Builder::new()
            .name("filament-worker".into())
            .spawn(move || core.thread_loop());
    }

    /// A worker thread: runs queued tasks while it may, else reads the next message.
    fn thread_loop(self: &Arc<Self>) {
        loop {
            if let Some(task) = self.claim_queued() {
                self.run(task);
                continue;
            }
            if self.retire_if_surplus() {
                return;
            }
            let mut reader = self.turns.take(&self.activity);
            let message = self.activity.read::<ToWorker>(&mut reader);
            match message {
                Ok(Some(ToWorker::Execute(task))) => {
                    if matches!(task.kind, TaskKind::CreateActor { .. }) {
                        self.hosts_actor.store(true, Ordering::Relaxed);
                    }
                    // Claimed or queued before the next reader can read the next task: tasks
                    // start in the order they arrived (an actor's calls, after its creation).
                    let mut execution = self.lock_run_queue();
                    if execution.running < execution.allowed && execution.queue.is_empty() {
                        execution.running += 1;
                        drop(execution);
                        drop(reader);
                        self.run(task);
                    } else {
                        execution.queue.push_back(task);
                    }
                }
                Ok(Some(reply @ (ToWorker::Got { .. } | ToWorker::Ready { .. }))) => {
                    drop(reader);
                    let request = match &reply {
                        ToWorker::Got { request, .. } | ToWorker::Ready { request, .. } => *request,
                        _ => unreachable!("matched above"),
                    };
                    let waiter = self
                        .requests
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&request);
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(reply);
                    }
                }
                Ok(Some(ToWorker::GiveBack(count))) => {
                    drop(reader);
                    self.give_back(count as usize);
                }
                Ok(Some(ToWorker::Shutdown)) | Ok(None) | Err(_) => {
                    self.stop();
                    return;
                }
                Ok(Some(ToWorker::Welcome { .. } | ToWorker::Refused(_))) => {}
            }
        }
    }

    /// The driver said stop, or went away, or the node did: the main thread winds the worker up.
    fn stop(&self) {
        let (stopped, changed) = &self.stopped;
        self.stopping.store(true, Ordering::Release);
        *stopped.lock().unwrap_or_else(|p| p.into_inner()) = true;
        changed.notify_all();
    }

    fn lock_run_queue(&self) -> std::sync::MutexGuard<'_, RunQueue> {
        self.execution.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next queued task, if one may run now (it then counts as running).
    fn claim_queued(&self) -> Option<Execute> {
        let mut execution = self.lock_run_queue();
        if execution.running < execution.allowed {
            let task = execution.queue.pop_front()?;
            execution.running += 1;
            Some(task)
        } else {
            None
        }
    }

    /// Gives the driver back up to `count` queued tasks, the last queued first (another worker is
    /// idle): they leave the queue under its lock, so none of them has started or will.
    fn give_back(&self, count: usize) {
        let mut execution = self.lock_run_queue();
        let movable = execution
            .queue
            .iter()
            .rev()
            .take(count)
            .take_while(|task| matches!(task.kind, TaskKind::Function { .. }))
            .count();
        let keep = execution.queue.len() - movable;
        let returned: Vec<ObjectId> = execution.queue.drain(keep..).map(|task| task.id).collect();
        drop(execution);
        self.outbox.send(ToDriver::Returned(returned));
    }

    /// Threads kept when idle: one reading, one ready to run what it reads.
    const IDLE_THREADS: usize = 2;

    /// Ends this thread if more than [`Self::IDLE_THREADS`] are idle (after a burst of tasks
    /// blocked in `get`, which each lent a thread).
    fn retire_if_surplus(&self) -> bool {
        self.idle
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |idle| {
                (idle > Self::IDLE_THREADS).then(|| idle - 1)
            })
            .is_ok()
    }

    /// Runs a claimed task and reports its result.
    fn run(self: &Arc<Self>, task: Execute) {
        // The last idle thread is the one that reads: if it is this one, another takes over, or a
        // task blocked in `get` would never see its answer.
        if self.idle.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.start_thread();
        }
        let id = task.id;
        // References serialized into the result (and only those: a task's own submissions
        // collect theirs apart) travel with it; the driver's result holds them from then on.
        let ((result, span), refs) = crate::object::collecting(|| self.execute(task));
        // Sent now, whatever runs next: a result must not wait for the next task to finish.
        // (Results of threads finishing together still go out in one write.)
        self.outbox.send(ToDriver::Done {
            id,
            result,
            refs: refs.clone(),
        });
        for id in refs {
            self.release(id);
        }
        self.activity.note();
        // The task is over: the next one may start (an actor's next call included) while this
        // thread ends and exports the span, and the result travels.
        self.exporting.fetch_add(1, Ordering::AcqRel);
        self.lock_run_queue().running -= 1;
        self.idle.fetch_add(1, Ordering::AcqRel);
        drop(span);
        self.exporting.fetch_sub(1, Ordering::AcqRel);
        // Only a stopping worker waits for this; a condvar's notify is a system call otherwise
        // spent on every task.
        if self.stopping.load(Ordering::Acquire) {
            self.finished.notify_all();
        }
    }

    /// Runs a task; returns its result and its still open CONSUMER span, which the caller ends
    /// once the result is on its way.
    fn execute(&self, task: Execute) -> (Result<Vec<u8>, TaskError>, spans::FinishedConsumerSpan) {
        let execution = spans::on_execute(
            task.id,
            &task.name,
            &task.kind,
            &task.trace_context,
            task.attempt,
        );
        let name: &str = &task.name;
        let started = crate::instrument::task_started(
            task.id,
            name,
            &task.kind,
            &task.trace_context,
            &execution,
        );
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let args = Args::new(name, &task.args);
            match &task.kind {
                TaskKind::Function { function } => {
                    match registry().functions.get(function.as_ref()) {
                        Some(f) => (f.invoke)(args),
                        None => Err(TaskError::Invalid {
                            task: name.to_owned(),
                            message: format!("no remote function {function} in this binary"),
                        }),
                    }
                }
                TaskKind::CreateActor { class, .. } => match registry().classes.get(class.as_str())
                {
                    Some(c) => {
                        crate::output::hosting_actor(class);
                        let instance = (c.construct)(args)?;
                        *self.actor.lock().unwrap_or_else(|p| p.into_inner()) = Some(instance);
                        crate::object::encode(&()).map_err(|message| TaskError::Invalid {
                            task: name.to_owned(),
                            message,
                        })
                    }
                    None => Err(TaskError::Invalid {
                        task: name.to_owned(),
                        message: format!("no actor type {class} in this binary"),
                    }),
                },
                TaskKind::ActorCall {
                    method,
                    actor: actor_id,
                } => match registry().methods.get(method.as_str()) {
                    Some(m) => {
                        let mut actor = self.actor.lock().unwrap_or_else(|p| p.into_inner());
                        match actor.as_mut() {
                            Some(instance) => (m.call)(instance.as_mut(), args),
                            // Calls sent on before the driver learnt that the constructor failed.
                            None => Err(TaskError::ActorDied {
                                task: name.to_owned(),
                                actor: format!(
                                    "{}({actor_id:016x})",
                                    name.rsplit_once("::").map_or(name, |(class, _)| class)
                                ),
                                cause: "its constructor failed".into(),
                            }),
                        }
                    }
                    None => Err(TaskError::Invalid {
                        task: name.to_owned(),
                        message: format!("no actor method {method} in this binary"),
                    }),
                },
            }
        }));
        crate::instrument::task_ended(
            started,
            task.id,
            name,
            &task.kind,
            match &outcome {
                Ok(Ok(_)) => TaskOutcome::Ok,
                Ok(Err(_)) => TaskOutcome::Failed,
                Err(_) => TaskOutcome::Panicked,
            },
            &execution,
        );
        match outcome {
            Ok(Ok(value)) if let Err(message) = wire::check_value_size(value.len(), "result") => {
                let error = TaskError::Invalid {
                    task: name.to_owned(),
                    message,
                };
                let finished = execution.finish(Some(&error.to_string()));
                (Err(error), finished)
            }
            Ok(result) => (result, execution.finish(None)),
            Err(payload) => {
                let message = filament_plugin_api::processor::panic_message(&*payload);
                let finished = execution.finish(Some(&message));
                let error = TaskError::Panicked {
                    task: name.to_owned(),
                    message,
                };
                (Err(error), finished)
            }
        }
    }

    pub(crate) fn submit(&self, spec: TaskSpec) {
        self.refs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(spec.id, 1);
        self.outbox.send(ToDriver::Submit(spec));
    }

    pub(crate) fn add_ref(&self, id: ObjectId) {
        *self
            .refs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id)
            .or_insert(0) += 1;
    }

    /// A reference deserialized here: the driver learns that this process holds the object if it
    /// did not already (before any later message of this process, a release or a result).
    pub(crate) fn borrow(&self, id: ObjectId) {
        let first = {
            let mut refs = self.refs.lock().unwrap_or_else(|p| p.into_inner());
            let count = refs.entry(id).or_insert(0);
            *count += 1;
            *count == 1
        };
        if first {
            self.outbox.send(ToDriver::Borrow(vec![id]));
        }
    }

    pub(crate) fn release(&self, id: ObjectId) {
        let released = {
            let mut refs = self.refs.lock().unwrap_or_else(|p| p.into_inner());
            match refs.get_mut(&id) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    false
                }
                Some(_) => refs.remove(&id).is_some(),
                None => false,
            }
        };
        if released {
            self.outbox.send(ToDriver::Release(vec![id]));
        }
    }

    /// Sends a request and waits for its answer; while waiting, this task's slot is lent out.
    fn request(&self, make: impl FnOnce(u64) -> ToDriver) -> Option<ToWorker> {
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (sender, answer) = crossbeam_channel::bounded(1);
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(request, sender);
        self.outbox.send(make(request));
        answer.recv().ok()
    }

    /// Blocks in `get`: makes sure a thread is left to read the answer and, except in an actor's
    /// process (whose calls run one at a time), lets one more task run meanwhile and tells the driver
    /// it may send one.
    fn blocked<T>(self: &Arc<Self>, wait: impl FnOnce() -> T) -> T {
        let actor = self.hosts_actor.load(Ordering::Relaxed);
        let mut queued = false;
        if !actor {
            let mut execution = self.lock_run_queue();
            execution.allowed += 1;
            queued = !execution.queue.is_empty();
            drop(execution);
            self.outbox.send(ToDriver::Blocked);
        }
        // A task queued here may be the very one this task waits for: a new thread runs it (the
        // idle ones may all be waiting for a message that only its result would bring). And a
        // thread must be idle to read the answer (`run` keeps one).
        if queued || self.idle.load(Ordering::Acquire) == 0 {
            self.start_thread();
        }
        // A thread waiting for its turn to read may be between two looks: the answer is read now.
        self.turns.wake_all();
        let result = wait();
        if !actor {
            self.lock_run_queue().allowed -= 1;
            self.outbox.send(ToDriver::Unblocked);
        }
        result
    }

    pub(crate) fn get(
        self: &Arc<Self>,
        ids: &[ObjectId],
    ) -> Result<Vec<crate::object::Fetched>, GetError> {
        let ids = ids.to_vec();
        let answer = self.blocked(|| {
            self.request(|request| ToDriver::Get {
                request,
                ids: ids.clone(),
            })
        });
        match answer {
            Some(ToWorker::Got { results, .. }) => Ok(results
                .into_iter()
                .map(|(_, name, result)| (name.into(), result.map(Arc::new)))
                .collect()),
            _ => Err(GetError::ShutDown { id: ids[0] }),
        }
    }

    pub(crate) fn wait(
        self: &Arc<Self>,
        ids: &[ObjectId],
        num_returns: usize,
        timeout: Option<Duration>,
    ) -> Result<Vec<bool>, GetError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        self.blocked(|| {
            loop {
                let answer = self.request(|request| ToDriver::Poll {
                    request,
                    ids: ids.to_vec(),
                });
                let Some(ToWorker::Ready { ready, .. }) = answer else {
                    return Err(GetError::ShutDown { id: ids[0] });
                };
                let done: Vec<bool> = ids.iter().map(|id| ready.contains(id)).collect();
                let count = done.iter().filter(|d| **d).count();
                if count >= num_returns || deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(done);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    }
}
