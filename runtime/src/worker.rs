//! A worker process: the program's own executable in worker mode. It connects to its driver, runs
//! the tracing hook, then runs the tasks it is sent until the driver says stop or goes away (end of
//! stream on the socket: a worker never outlives its driver).

use crate::object::{GetError, ObjectId, TaskError};
use crate::registry::{Args, registry};
use crate::spans;
use crate::wire::{self, Execute, FrameReader, Outbox, TaskKind, TaskSpec, ToDriver, ToWorker};
use crossbeam_channel::{Receiver, Sender};
use std::any::Any;
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
    /// Executor threads waiting for a task; a task that blocks in `get` starts another when none is.
    idle: AtomicUsize,
    tasks: Receiver<Execute>,
    /// The actor this process hosts, once created.
    actor: Mutex<Option<Box<dyn Any + Send>>>,
    hosts_actor: std::sync::atomic::AtomicBool,
}

/// Runs this process as worker `marker` (`<socket>:<id>`) and exits; never returns.
pub(crate) fn run(marker: &str) -> ! {
    match serve(marker) {
        Ok(()) => std::process::exit(0),
        Err(message) => {
            eprintln!("filament worker: {message}");
            std::process::exit(1);
        }
    }
}

fn serve(marker: &str) -> Result<(), String> {
    let (socket, worker) = marker
        .rsplit_once(':')
        .and_then(|(socket, id)| Some((socket, id.parse::<u32>().ok()?)))
        .ok_or_else(|| format!("{} is malformed: {marker:?}", crate::driver::WORKER_ENV))?;
    let mut stream = UnixStream::connect(socket)
        .map_err(|e| format!("the driver at {socket} is gone ({e}); exiting"))?;
    let mut hello = Vec::new();
    wire::encode_frame(
        &ToDriver::Hello {
            magic: wire::MAGIC,
            protocol: wire::PROTOCOL_VERSION,
            fingerprint: registry().fingerprint,
            worker,
            pid: std::process::id(),
        },
        &mut hello,
    )
    .map_err(|e| e.to_string())?;
    stream.write_all(&hello).map_err(|e| e.to_string())?;
    let write_half = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader = FrameReader::new(stream);
    let (hook, config, job_id, node_id, cluster) = match reader.read::<ToWorker>() {
        Ok(Some(ToWorker::Welcome {
            hook,
            config,
            job_id,
            node_id,
            cluster,
        })) => (hook, config, job_id, node_id, cluster),
        Ok(Some(ToWorker::Refused(reason))) => {
            return Err(format!("refused by the driver: {reason}"));
        }
        other => return Err(format!("no welcome from the driver: {other:?}")),
    };
    let outbox = Outbox::new(write_half);

    let worker_id = format!("{worker}");
    let mut tracing_guard = None;
    if let Some(hook) = &hook {
        let mut tracing = crate::tracing::Tracing::new(hook.clone())
            .role(crate::tracing::ProcessRole::Worker)
            .job_id(job_id.clone())
            .node_id(node_id.clone())
            .worker_id(worker_id.clone());
        for (key, value) in config {
            tracing = tracing.config(key, value);
        }
        match tracing.install() {
            Ok(guard) => tracing_guard = Some(guard),
            Err(error) => {
                outbox.send(ToDriver::HookStatus(Err(error.to_string())));
                return Err(error.to_string());
            }
        }
        spans::enable(spans::ProcessFacts {
            job_id,
            node_id,
            worker_id: Some(worker_id),
        });
    }
    outbox.send(ToDriver::HookStatus(Ok(())));

    let (task_sender, tasks) = crossbeam_channel::unbounded();
    let core = Arc::new(WorkerCore {
        cluster,
        worker,
        next_id: AtomicU64::new(1),
        outbox,
        requests: Mutex::new(HashMap::new()),
        next_request: AtomicU64::new(1),
        refs: Mutex::new(HashMap::new()),
        idle: AtomicUsize::new(0),
        tasks,
        actor: Mutex::new(None),
        hosts_actor: std::sync::atomic::AtomicBool::new(false),
    });
    crate::context::set(Some(crate::context::Context::Worker(Arc::clone(&core))));
    core.start_executor();

    loop {
        match reader.read::<ToWorker>() {
            Ok(Some(ToWorker::Execute(task))) => {
                if matches!(task.kind, TaskKind::CreateActor { .. }) {
                    core.hosts_actor.store(true, Ordering::Relaxed);
                }
                if task_sender.send(task).is_err() {
                    break;
                }
            }
            Ok(Some(reply @ (ToWorker::Got { .. } | ToWorker::Ready { .. }))) => {
                let request = match &reply {
                    ToWorker::Got { request, .. } | ToWorker::Ready { request, .. } => *request,
                    _ => unreachable!("matched above"),
                };
                let waiter = core
                    .requests
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&request);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(reply);
                }
            }
            Ok(Some(ToWorker::Shutdown)) | Ok(None) | Err(_) => break,
            Ok(Some(ToWorker::Welcome { .. } | ToWorker::Refused(_))) => {}
        }
    }
    crate::context::set(None);
    if let Some(guard) = tracing_guard {
        let _ = guard.shutdown();
    }
    Ok(())
}

impl WorkerCore {
    pub(crate) fn next_id(&self) -> ObjectId {
        let counter = self.next_id.fetch_add(1, Ordering::Relaxed) & 0x0000_ffff_ffff_ffff;
        ObjectId((u64::from(self.worker & 0xffff) << 48) | counter)
    }

    fn start_executor(self: &Arc<Self>) {
        let core = Arc::clone(self);
        let _ = std::thread::Builder::new()
            .name("filament-executor".into())
            .spawn(move || core.execute_loop());
    }

    fn execute_loop(self: Arc<Self>) {
        loop {
            self.idle.fetch_add(1, Ordering::AcqRel);
            let task = self.tasks.recv();
            self.idle.fetch_sub(1, Ordering::AcqRel);
            let Ok(task) = task else {
                return;
            };
            let id = task.id;
            let result = self.execute(task);
            self.outbox.send(ToDriver::Done { id, result });
        }
    }

    fn execute(&self, task: Execute) -> Result<Vec<u8>, TaskError> {
        let execution = spans::on_execute(task.id, &task.name, &task.kind, &task.trace_context);
        let name = task.name.as_str();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let args = Args::new(name, &task.args);
            match &task.kind {
                TaskKind::Function { function } => {
                    match registry().functions.get(function.as_str()) {
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
                TaskKind::ActorCall { method, .. } => match registry().methods.get(method.as_str())
                {
                    Some(m) => {
                        let mut actor = self.actor.lock().unwrap_or_else(|p| p.into_inner());
                        match actor.as_mut() {
                            Some(instance) => (m.call)(instance.as_mut(), args),
                            None => Err(TaskError::Invalid {
                                task: name.to_owned(),
                                message: "the actor was not created in this process".into(),
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
        match outcome {
            Ok(result) => {
                execution.finish(None);
                result
            }
            Err(payload) => {
                let message = filament_plugin_api::processor::panic_message(&*payload);
                execution.finish(Some(&message));
                Err(TaskError::Panicked {
                    task: name.to_owned(),
                    message,
                })
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

    pub(crate) fn release(&self, id: ObjectId) {
        let mut refs = self.refs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = refs.get_mut(&id) {
            *count -= 1;
            if *count == 0 {
                refs.remove(&id);
                self.outbox.send(ToDriver::Release(vec![id]));
            }
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

    /// Blocks in `get`: lets the driver send this process another task meanwhile (not to an actor,
    /// whose calls run one at a time), with a thread to run it.
    fn blocked<T>(self: &Arc<Self>, wait: impl FnOnce() -> T) -> T {
        if self.hosts_actor.load(Ordering::Relaxed) {
            return wait();
        }
        if self.idle.load(Ordering::Acquire) == 0 {
            self.start_executor();
        }
        self.outbox.send(ToDriver::Blocked);
        let result = wait();
        self.outbox.send(ToDriver::Unblocked);
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
                .map(|(_, name, result)| (name, result.map(Arc::new)))
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
