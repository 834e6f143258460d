//! The driver's scheduler: objects and their references, dependency resolution, the ready queue,
//! worker and actor slots, placement, work stealing and retries, as a state machine. It takes events
//! (a submission, a message from worker `w`, worker `w` connected or went away, a reference
//! dropped) and records the effects to carry out (send a message to a worker, launch a worker, wake
//! the threads waiting for results); the I/O shell in [`super`] owns the sockets, the processes and
//! the clock, and carries the effects out. Nothing here blocks, reads the clock or touches a socket,
//! so every line of it is tested in milliseconds (see the tests at the bottom).

use crate::WorkerStartError;
use crate::object::{Arg, ObjectId, TaskError};
use crate::status::{HookState, ProcessKind, ProcessStatus, ProcessTracing};
use crate::wire::{self, ActorId, Execute, TaskKind, TaskSpec, ToDriver, ToWorker};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

/// Tasks a pool worker may hold at once: one running, the rest queued in the worker, so that it
/// never waits for the driver between two tasks, and results and new tasks travel in batches
/// (8 gave 40–65k traced tasks/s on two cores, 32 gives 75–85k). Tasks queued behind a long one
/// are not stuck there: a worker that falls idle takes them back (see [`Scheduler::steal`]).
pub(super) const TASKS_IN_FLIGHT_PER_WORKER: i32 = 32;

/// How many times dying workers are replaced before the driver stops replacing them.
const MAX_REPLACEMENTS: u32 = 64;

/// What the shell must do once the scheduler has handled an event, in this order.
#[derive(Debug)]
pub(super) enum Effect {
    /// Send a message to a connected worker.
    Send(u32, ToWorker),
    /// Start the process of a reserved worker (`true`: it will host an actor).
    Launch(u32, bool),
    /// An attempt of a task was lost with its worker: record its span, ended with ERROR.
    AttemptLost(LostAttempt),
}

/// A task's attempt that died with its worker, for its span.
#[derive(Debug)]
pub(crate) struct LostAttempt {
    pub(crate) name: String,
    pub(crate) kind: TaskKind,
    pub(crate) trace_context: Vec<(String, String)>,
    pub(crate) attempt: u32,
    pub(crate) started: Option<SystemTime>,
    pub(crate) error: TaskError,
}

pub(super) struct Object {
    /// The task's Rust path, for errors.
    pub(super) name: String,
    pub(super) value: Option<Result<Arc<Vec<u8>>, TaskError>>,
    /// References: the submitter's handles, tasks holding it as an argument, workers' handles.
    refs: u32,
    /// Tasks waiting for this object.
    dependents: Vec<ObjectId>,
    /// Workers' `get` requests waiting for this object.
    remote_waiters: Vec<(u32, u64)>,
    /// The references inside its value, which it holds while it lives.
    contained: Vec<ObjectId>,
}

/// A task a worker holds (running or queued there).
struct Held {
    /// The task as submitted, for a retry or to hand it to another worker; `None` for actor
    /// tasks, which neither move nor retry. A held spec keeps its arguments referenced.
    spec: Option<TaskSpec>,
    /// When it was sent, if the shell gave a clock (tracing on): a lost attempt's span starts there.
    sent: Option<SystemTime>,
}

pub(super) struct WorkerSlot {
    pub(super) pid: u32,
    /// Tasks it may still take: `TASKS_IN_FLIGHT_PER_WORKER`, plus one per task blocked in `get`.
    free: i32,
    held: HashMap<ObjectId, Held>,
    pub(super) actor: Option<ActorId>,
    /// Its tracing, as it last reported.
    pub(super) stats: ProcessTracing,
    /// It was asked to give tasks back and has not answered yet.
    giving_back: bool,
    /// The references it holds (the results of tasks it submitted, until it releases them):
    /// released for it if it dies.
    holds: HashSet<ObjectId>,
}

pub(super) struct ActorSlot {
    pub(super) class: String,
    worker: Option<u32>,
    /// Calls not yet sent, in submission order; the head waits for its arguments.
    queue: VecDeque<TaskSpec>,
    dead: Option<String>,
    /// Its creation, kept (with its arguments referenced) while it may restart.
    creation: Option<TaskSpec>,
    /// Restarts left, and how many times a call in flight when its process died runs again.
    restarts_left: u32,
    max_task_retries: u32,
    /// Every handle to it was dropped: it stops once its calls are done.
    unused: bool,
}

/// The scheduler's whole state. See the module's documentation.
#[derive(Default)]
pub(super) struct Scheduler {
    pub(super) objects: HashMap<ObjectId, Object>,
    /// Tasks waiting for arguments: how many are missing, and the actor of an actor call (whose
    /// spec waits in the actor's queue; a function's waits in `parked`).
    waiting: HashMap<ObjectId, (usize, Option<ActorId>)>,
    parked: HashMap<ObjectId, TaskSpec>,
    ready: VecDeque<TaskSpec>,
    pub(super) workers: HashMap<u32, WorkerSlot>,
    pub(super) actors: HashMap<ActorId, ActorSlot>,
    /// Workers' `get` requests: the objects each waits for.
    remote_gets: HashMap<(u32, u64), Vec<ObjectId>>,
    /// Workers started but not yet registered, and the actor each will host.
    pub(super) starting: HashMap<u32, Option<ActorId>>,
    /// Why a worker failed to start (its tracing hook, usually).
    pub(super) start_failures: Vec<WorkerStartError>,
    /// `init` returned: later start failures no longer fail it.
    pub(super) started: bool,
    /// Why the pool has no worker left, once that happened.
    pool_lost: Option<String>,
    next_worker: u32,
    replacements: u32,
    pub(super) shutting_down: bool,
    /// Objects that threads of this process wait for in `get` or `wait`, and how many threads.
    awaited: HashMap<ObjectId, u32>,
    /// Whether something a waiting thread waits for happened: the shell wakes them then only (a
    /// batch's results do not wake a `get` once per result).
    pub(super) wake: bool,
    /// Tasks completed so far: waiters spin on the shell's copy before sleeping.
    pub(super) completions: u64,
    /// What to do once this event is handled.
    pub(super) effects: Vec<Effect>,
    /// Why the standing cluster this driver is attached to is gone, once it is.
    pub(super) cluster_lost: Option<String>,
    /// Workers that left at shutdown, with their last report: the job's final counts.
    pub(super) departed: Vec<ProcessStatus>,
    /// The time of the event being handled, when the shell wants task attempts timed (tracing on).
    pub(super) clock: Option<SystemTime>,
}

impl Scheduler {
    fn send(&mut self, worker: u32, message: ToWorker) {
        self.effects.push(Effect::Send(worker, message));
    }

    /// Numbers a new worker and records it as starting (for `actor`, if any); the shell starts
    /// its process (see [`Effect::Launch`]).
    pub(super) fn reserve_worker(
        &mut self,
        actor: Option<ActorId>,
    ) -> Result<u32, WorkerStartError> {
        // A replacement decided just before shutdown must not start after it.
        if self.shutting_down {
            return Err(WorkerStartError::ShuttingDown);
        }
        if let Some(cause) = &self.cluster_lost {
            return Err(WorkerStartError::ClusterLost {
                cause: cause.clone(),
            });
        }
        self.next_worker += 1;
        let id = self.next_worker;
        self.starting.insert(id, actor);
        Ok(id)
    }

    /// Reserves a worker and has the shell launch it; what waits for it fails if it cannot be.
    fn launch_new_worker(&mut self, actor: Option<ActorId>) {
        match self.reserve_worker(actor) {
            Ok(worker) => self.effects.push(Effect::Launch(worker, actor.is_some())),
            Err(error) => match actor {
                Some(actor) => self.kill_actor(actor, error.to_string()),
                None => self.fail_if_no_workers(&error.to_string()),
            },
        }
    }

    /// A reserved worker connected and its hook ran: it takes tasks (or its actor's calls).
    /// `None` if nothing waits for it any more (it came too late): the shell sends it away.
    pub(super) fn worker_ready(&mut self, worker: u32, pid: u32, hook: bool) -> Option<()> {
        let actor = self.starting.remove(&worker)?;
        self.workers.insert(
            worker,
            WorkerSlot {
                pid,
                free: if actor.is_some() {
                    0
                } else {
                    TASKS_IN_FLIGHT_PER_WORKER
                },
                held: HashMap::new(),
                actor,
                stats: ProcessTracing::without_spans(if hook {
                    HookState::Loaded
                } else {
                    HookState::None
                }),
                giving_back: false,
                holds: HashSet::new(),
            },
        );
        if let Some(actor) = actor
            && let Some(slot) = self.actors.get_mut(&actor)
        {
            slot.worker = Some(worker);
        }
        self.dispatch();
        if let Some(actor) = actor {
            self.dispatch_actor(actor);
        }
        self.wake = true;
        Some(())
    }

    /// A reserved worker will not come: what waits for it fails.
    pub(super) fn worker_start_failed(&mut self, worker: u32, error: WorkerStartError) {
        let actor = self.starting.remove(&worker).flatten();
        if let Some(actor) = actor {
            self.kill_actor(actor, error.to_string());
        } else {
            self.fail_if_no_workers(&error.to_string());
            self.start_failures.push(error);
        }
        self.wake = true;
    }

    /// A message from a connected worker.
    pub(super) fn on_message(&mut self, worker: u32, message: ToDriver) {
        match message {
            ToDriver::Done { id, result, refs } => {
                self.hold_contained(id, &refs);
                let held = self.workers.get_mut(&worker).and_then(|slot| {
                    let held = slot.held.remove(&id)?;
                    if slot.actor.is_none() {
                        slot.free += 1;
                    }
                    Some(held)
                });
                match held.and_then(|held| held.spec) {
                    Some(spec) => self.finish_held(spec, result),
                    None => self.complete(id, result.map(Arc::new)),
                }
                if let Some(actor) = self.workers.get(&worker).and_then(|w| w.actor) {
                    self.stop_if_unused(actor);
                }
                self.dispatch();
            }
            ToDriver::Returned(ids) => {
                let Some(slot) = self.workers.get_mut(&worker) else {
                    return;
                };
                slot.giving_back = false;
                let mut returned = Vec::with_capacity(ids.len());
                for id in ids {
                    if let Some(Held {
                        spec: Some(spec), ..
                    }) = slot.held.remove(&id)
                    {
                        slot.free += 1;
                        returned.push(spec);
                    }
                }
                // They were the first in line once: they go first again, in their order.
                for spec in returned.into_iter().rev() {
                    self.ready.push_front(spec);
                }
                self.dispatch();
            }
            ToDriver::Submit(spec) => {
                if let Some(slot) = self.workers.get_mut(&worker) {
                    slot.holds.insert(spec.id);
                }
                self.submit(spec);
            }
            ToDriver::Get { request, ids } => {
                let missing: Vec<ObjectId> = ids
                    .iter()
                    .copied()
                    .filter(|id| self.objects.get(id).is_some_and(|o| o.value.is_none()))
                    .collect();
                if missing.is_empty() {
                    self.answer_get(worker, request, &ids);
                } else {
                    for id in &missing {
                        if let Some(object) = self.objects.get_mut(id) {
                            object.remote_waiters.push((worker, request));
                        }
                    }
                    self.remote_gets.insert((worker, request), ids);
                }
            }
            ToDriver::Poll { request, ids } => {
                let ready = ids
                    .into_iter()
                    .filter(|id| self.objects.get(id).is_none_or(|o| o.value.is_some()))
                    .collect();
                if self.workers.contains_key(&worker) {
                    self.send(worker, ToWorker::Ready { request, ready });
                }
            }
            ToDriver::Borrow(ids) => {
                for id in ids {
                    if let Some(slot) = self.workers.get_mut(&worker)
                        && slot.holds.insert(id)
                    {
                        self.add_ref(id);
                    }
                }
            }
            ToDriver::Release(ids) => {
                for id in ids {
                    if let Some(slot) = self.workers.get_mut(&worker) {
                        slot.holds.remove(&id);
                    }
                    self.release(id);
                }
            }
            ToDriver::Blocked => {
                if let Some(slot) = self.workers.get_mut(&worker) {
                    slot.free += 1;
                }
                self.dispatch();
            }
            ToDriver::Unblocked => {
                if let Some(slot) = self.workers.get_mut(&worker) {
                    slot.free -= 1;
                }
            }
            ToDriver::Stats(stats) => {
                if let Some(slot) = self.workers.get_mut(&worker) {
                    slot.stats = stats;
                }
            }
            ToDriver::Output { .. } | ToDriver::Hello { .. } | ToDriver::HookStatus(_) => {}
        }
    }

    /// A held task's attempt ended: its value, or a retry if it panicked and may retry.
    fn finish_held(&mut self, mut spec: TaskSpec, result: Result<Vec<u8>, TaskError>) {
        let retry = matches!(result, Err(TaskError::Panicked { .. }))
            && spec.retry.retry_exceptions
            && spec.attempt < spec.retry.max_retries
            && !self.shutting_down;
        if retry {
            spec.attempt += 1;
            self.ready.push_front(spec);
            return;
        }
        self.release_args(&spec);
        self.complete(spec.id, result.map(Arc::new));
    }

    fn answer_get(&mut self, worker: u32, request: u64, ids: &[ObjectId]) {
        let results = ids
            .iter()
            .map(|id| {
                let object = self.objects.get(id);
                let name = object.map(|o| o.name.clone()).unwrap_or_default();
                let result = match object.and_then(|o| o.value.as_ref()) {
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
        if self.workers.contains_key(&worker) {
            self.send(worker, ToWorker::Got { request, results });
        }
    }

    /// A task submitted by this process or a worker; the submitter holds one reference to its
    /// result.
    pub(super) fn submit(&mut self, spec: TaskSpec) {
        let id = spec.id;
        self.objects.insert(
            id,
            Object {
                name: spec.name.clone(),
                value: None,
                refs: 1,
                dependents: Vec::new(),
                remote_waiters: Vec::new(),
                contained: Vec::new(),
            },
        );
        // Every argument is held until the task has its value; count those still running.
        let mut missing = 0;
        let mut unknown = None;
        for arg in &spec.args {
            for contained in arg.contained() {
                self.add_ref(*contained);
            }
        }
        for (index, arg) in spec.args.iter().enumerate() {
            if let Some(dep) = arg.object() {
                match self.objects.get_mut(&dep) {
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
            self.release_args(&spec);
            self.complete(id, Err(error));
            return;
        }
        match &spec.kind {
            TaskKind::Function { .. } => {
                if missing == 0 {
                    self.ready.push_back(spec);
                } else {
                    self.waiting.insert(id, (missing, None));
                    self.parked.insert(id, spec);
                }
                self.dispatch();
                if let Some(cause) = self.pool_lost.clone() {
                    self.fail_if_no_workers(&cause);
                }
            }
            TaskKind::CreateActor {
                actor, restarts, ..
            } => {
                let (actor, restarts) = (*actor, *restarts);
                let class = spec.name.trim_end_matches("::new").to_owned();
                // Kept for restarts, holding its arguments once more (the queued one releases
                // its own when sent).
                let creation = (restarts.max_restarts > 0).then(|| {
                    for dep in spec.args.iter().filter_map(Arg::object) {
                        self.add_ref(dep);
                    }
                    spec.clone()
                });
                self.actors.insert(
                    actor,
                    ActorSlot {
                        class,
                        worker: None,
                        queue: VecDeque::from([spec]),
                        dead: None,
                        creation,
                        restarts_left: restarts.max_restarts,
                        max_task_retries: restarts.max_task_retries,
                        unused: false,
                    },
                );
                if missing > 0 {
                    self.waiting.insert(id, (missing, Some(actor)));
                }
                // Calls queue until its process is ready.
                self.launch_new_worker(Some(actor));
            }
            TaskKind::ActorCall { actor, .. } => {
                let actor = *actor;
                if missing > 0 {
                    self.waiting.insert(id, (missing, Some(actor)));
                }
                let dead = match self.actors.get_mut(&actor) {
                    Some(slot) if slot.dead.is_none() => {
                        slot.queue.push_back(spec);
                        self.dispatch_actor(actor);
                        return;
                    }
                    Some(slot) => (
                        format!("{}({actor:016x})", slot.class),
                        slot.dead.clone().unwrap_or_default(),
                    ),
                    None => (
                        format!("{actor:016x}"),
                        "no such actor in this cluster".to_owned(),
                    ),
                };
                let error = TaskError::ActorDied {
                    task: spec.name.clone(),
                    actor: dead.0,
                    cause: dead.1,
                };
                self.waiting.remove(&id);
                self.release_args(&spec);
                self.complete(id, Err(error));
            }
        }
    }

    /// Drops the holds a task had on its arguments.
    fn release_args(&mut self, spec: &TaskSpec) {
        for arg in &spec.args {
            if let Some(dep) = arg.object() {
                self.release(dep);
            }
            for contained in arg.contained() {
                self.release(*contained);
            }
        }
    }

    /// A result holds the references inside it (the worker's serialization took one each, which
    /// it releases after the result is sent): taken now, before that release arrives.
    fn hold_contained(&mut self, id: ObjectId, refs: &[ObjectId]) {
        if refs.is_empty() || !self.objects.contains_key(&id) {
            return;
        }
        for dep in refs {
            self.add_ref(*dep);
        }
        if let Some(object) = self.objects.get_mut(&id) {
            object.contained.extend_from_slice(refs);
        }
    }

    /// Frees an object nobody references any more: what it held goes too, and an actor whose
    /// creation it was (whose handles are all gone) stops once its calls are done.
    fn free(&mut self, id: ObjectId) {
        let Some(object) = self.objects.remove(&id) else {
            return;
        };
        for dep in object.contained {
            self.release(dep);
        }
        if let Some(actor) = self.actors.get_mut(&id.0) {
            actor.unused = true;
            self.stop_if_unused(id.0);
        }
    }

    /// Stops an actor nobody holds a handle to once it has no call left to run.
    fn stop_if_unused(&mut self, actor: ActorId) {
        let Some(slot) = self.actors.get(&actor) else {
            return;
        };
        let busy = slot
            .worker
            .and_then(|w| self.workers.get(&w))
            .is_some_and(|w| !w.held.is_empty());
        if !slot.unused || !slot.queue.is_empty() || busy {
            return;
        }
        let starting = slot.worker.is_none() && slot.dead.is_none();
        if starting {
            // Its process is not up yet: it stops once it has run its queue (the constructor).
            return;
        }
        self.kill_actor(actor, "every handle to it was dropped".into());
        // Nobody can name it any more: it leaves no trace once its process is gone.
        if self.actors.get(&actor).is_some_and(|a| a.worker.is_none()) {
            self.actors.remove(&actor);
        }
    }

    /// The task's argument values, or the error of the first argument that failed.
    fn resolve(&self, spec: &TaskSpec) -> Result<Vec<Vec<u8>>, TaskError> {
        let args = spec
            .args
            .iter()
            .enumerate()
            .map(|(index, arg)| match arg {
                Arg::Value(bytes) | Arg::Holding { value: bytes, .. } => Ok(bytes.clone()),
                Arg::Ref(dep) | Arg::Moved(dep) => {
                    match self.objects.get(dep).and_then(|o| o.value.as_ref()) {
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

    /// Sends ready function tasks to workers with free slots; once none is ready, has a worker
    /// that fell idle take back tasks queued on a busy one.
    fn dispatch(&mut self) {
        while !self.ready.is_empty() {
            let Some(worker) = self
                .workers
                .iter()
                .filter(|(_, w)| w.actor.is_none() && w.free > 0)
                // Most free slots first; among equals, the one holding least (a worker whose
                // slot is free only because its task is blocked in `get` comes last).
                .max_by_key(|(id, w)| {
                    (
                        w.free,
                        std::cmp::Reverse(w.held.len()),
                        std::cmp::Reverse(**id),
                    )
                })
                .map(|(id, _)| *id)
            else {
                return;
            };
            let spec = self.ready.pop_front().expect("not empty");
            self.send_to_worker(worker, spec);
        }
        self.steal();
    }

    /// No head-of-line blocking: while a pool worker holds nothing and another holds tasks queued
    /// behind the one it runs, the busy one is asked to give back half of those it has not started
    /// (the worker decides which it still can: a task is never run twice). They come back through
    /// [`ToDriver::Returned`] and go to the idle worker.
    fn steal(&mut self) {
        let idle = self
            .workers
            .values()
            .filter(|w| w.actor.is_none() && w.held.is_empty() && w.free > 0)
            .count();
        if idle == 0 {
            return;
        }
        let mut victims: Vec<(u32, usize)> = self
            .workers
            .iter()
            .filter(|(_, w)| w.actor.is_none() && !w.giving_back && w.held.len() > 1)
            .map(|(id, w)| (*id, w.held.len()))
            .collect();
        // The busiest first; one request per idle worker.
        victims.sort_by_key(|(id, held)| (std::cmp::Reverse(*held), *id));
        for (victim, held) in victims.into_iter().take(idle) {
            // Half of the queued ones (all held but the running one), at least one.
            let count = held.div_ceil(2).max(1) as u32;
            if let Some(slot) = self.workers.get_mut(&victim) {
                slot.giving_back = true;
            }
            self.send(victim, ToWorker::GiveBack(count));
        }
    }

    /// Resolves a task's arguments and sends it to `worker`, or fails it if an argument failed.
    fn send_to_worker(&mut self, worker: u32, spec: TaskSpec) {
        let args = match self.resolve(&spec) {
            Ok(args) => args,
            Err(error) => {
                self.release_args(&spec);
                self.complete(spec.id, Err(error));
                return;
            }
        };
        let sent = self.clock;
        let execute = Execute {
            id: spec.id,
            kind: spec.kind.clone(),
            name: spec.name.clone(),
            args,
            trace_context: spec.trace_context.clone(),
            attempt: spec.attempt,
        };
        let slot = self.workers.get_mut(&worker).expect("a live worker");
        // A pool worker's task may move to another worker or run again: the driver keeps it (and
        // its arguments) until it is done. So does an actor's call that may run again on its
        // restarted actor, and an actor task whose arguments hold references (the worker borrows
        // them as it deserializes them); other actor tasks go for good.
        let holding = spec.args.iter().any(|arg| !arg.contained().is_empty());
        let keep = match slot.actor {
            None => {
                slot.free -= 1;
                true
            }
            Some(actor) => {
                holding
                    || matches!(spec.kind, TaskKind::ActorCall { .. })
                        && self
                            .actors
                            .get(&actor)
                            .is_some_and(|a| a.max_task_retries > 0)
            }
        };
        let slot = self.workers.get_mut(&worker).expect("a live worker");
        let (kept, gone) = if keep {
            (Some(spec), None)
        } else {
            (None, Some(spec))
        };
        slot.held.insert(execute.id, Held { spec: kept, sent });
        self.send(worker, ToWorker::Execute(execute));
        if let Some(spec) = gone {
            self.release_args(&spec);
        }
    }

    /// Sends an actor's queued calls, in order, while their arguments are ready.
    fn dispatch_actor(&mut self, actor: ActorId) {
        loop {
            let Some(slot) = self.actors.get_mut(&actor) else {
                return;
            };
            let Some(worker) = slot.worker else {
                return;
            };
            let Some(head) = slot.queue.front() else {
                return;
            };
            if self.waiting.contains_key(&head.id) {
                return;
            }
            let spec = slot.queue.pop_front().expect("a head");
            self.send_to_worker(worker, spec);
        }
    }

    /// The actor is dead for `cause`: its queued calls fail, its process is told to stop.
    fn kill_actor(&mut self, actor: ActorId, cause: String) {
        let Some(slot) = self.actors.get_mut(&actor) else {
            return;
        };
        slot.dead = Some(cause.clone());
        let worker = slot.worker.take();
        let class = slot.class.clone();
        let queued: Vec<TaskSpec> = slot.queue.drain(..).collect();
        if let Some(creation) = slot.creation.take() {
            self.release_args(&creation);
        }
        // Its process has nothing left to do.
        if let Some(worker) = worker
            && self.workers.contains_key(&worker)
        {
            self.send(worker, ToWorker::Shutdown);
        }
        for spec in queued {
            self.waiting.remove(&spec.id);
            let error = TaskError::ActorDied {
                task: spec.name.clone(),
                actor: format!("{class}({actor:016x})"),
                cause: cause.clone(),
            };
            self.release_args(&spec);
            self.complete(spec.id, Err(error));
        }
    }

    /// Stores a task's result and moves on whatever waited for it.
    fn complete(&mut self, id: ObjectId, result: Result<Arc<Vec<u8>>, TaskError>) {
        // A failed actor creation (an actor's id is its creation's) kills the actor, a restart's
        // too, whose object nobody holds any more.
        let failed_creation = match &result {
            Err(error) if self.actors.contains_key(&id.0) => Some(error.to_string()),
            _ => None,
        };
        let Some(object) = self.objects.get_mut(&id) else {
            if let Some(cause) = failed_creation {
                self.kill_actor(id.0, format!("its constructor failed: {cause}"));
            }
            return;
        };
        object.value = Some(result);
        self.completions += 1;
        let dependents = std::mem::take(&mut object.dependents);
        let waiters = std::mem::take(&mut object.remote_waiters);
        let free = object.refs == 0;
        if self.awaited.contains_key(&id) {
            self.wake = true;
        }
        if let Some(cause) = failed_creation {
            self.kill_actor(id.0, format!("its constructor failed: {cause}"));
        }
        for dependent in dependents {
            let Some((missing, actor)) = self.waiting.get_mut(&dependent) else {
                continue;
            };
            *missing -= 1;
            if *missing == 0 {
                let actor = *actor;
                self.waiting.remove(&dependent);
                match actor {
                    Some(actor) => self.dispatch_actor(actor),
                    None => {
                        if let Some(spec) = self.parked.remove(&dependent) {
                            self.ready.push_back(spec);
                        }
                    }
                }
            }
        }
        for key in waiters {
            if let Some(ids) = self.remote_gets.get(&key)
                && ids
                    .iter()
                    .all(|id| self.objects.get(id).is_none_or(|o| o.value.is_some()))
            {
                let ids = self.remote_gets.remove(&key).expect("present");
                self.answer_get(key.0, key.1, &ids);
            }
        }
        if free {
            self.free(id);
        }
    }

    /// One more reference to an object (a handle cloned in this process).
    pub(super) fn add_ref(&mut self, id: ObjectId) {
        if let Some(object) = self.objects.get_mut(&id) {
            object.refs += 1;
        }
    }

    /// One reference fewer; the object is freed at none, once it has its value.
    pub(super) fn release(&mut self, id: ObjectId) {
        let Some(object) = self.objects.get_mut(&id) else {
            return;
        };
        object.refs = object.refs.saturating_sub(1);
        if object.refs == 0 && object.value.is_some() && object.remote_waiters.is_empty() {
            self.free(id);
        }
    }

    /// Registers `ids` as awaited by a thread of this process, so that their completion wakes it.
    pub(super) fn await_objects(&mut self, ids: &[ObjectId]) {
        for id in ids {
            *self.awaited.entry(*id).or_insert(0) += 1;
        }
    }

    /// Undoes [`Scheduler::await_objects`].
    pub(super) fn forget_awaited(&mut self, ids: &[ObjectId]) {
        for id in ids {
            if let Some(count) = self.awaited.get_mut(id) {
                *count -= 1;
                if *count == 0 {
                    self.awaited.remove(id);
                }
            }
        }
    }

    /// A worker went away: its tasks run again elsewhere if they may retry, else fail; its actor
    /// dies; a pool worker is replaced. `false` if it was not connected.
    pub(super) fn worker_exited(&mut self, worker: u32, pid: u32) -> bool {
        let Some(mut slot) = self.workers.remove(&worker) else {
            return false;
        };
        for id in std::mem::take(&mut slot.holds) {
            self.release(id);
        }
        let shutting_down = self.shutting_down;
        if let Some(actor) = slot.actor
            && self.restart_actor(actor, worker, pid, &mut slot)
        {
            self.wake = true;
            return true;
        }
        if shutting_down {
            let last = self.process_status(worker, &slot);
            self.departed.push(last);
        }
        // An actor already dead (its constructor failed, and its process was told to stop) takes
        // the calls it was sent with it: they fail for the actor's reason, not the process's.
        let dead_actor = slot.actor.and_then(|actor| {
            let actor_slot = self.actors.get(&actor)?;
            let cause = actor_slot.dead.clone()?;
            Some((format!("{}({actor:016x})", actor_slot.class), cause))
        });
        // In the order they were submitted: retries keep it.
        let mut held: Vec<(ObjectId, Held)> = slot.held.into_iter().collect();
        held.sort_by_key(|(id, _)| *id);
        let mut retries = Vec::new();
        for (id, held) in held {
            let name = self
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
                None if self.cluster_lost.is_some() => TaskError::NoWorkers {
                    task: name,
                    cause: self.cluster_lost.clone().unwrap_or_default(),
                },
                None => TaskError::WorkerDied {
                    task: name,
                    worker,
                    pid,
                },
            };
            let Some(mut spec) = held.spec else {
                self.complete(id, Err(error));
                continue;
            };
            let died = matches!(error, TaskError::WorkerDied { .. });
            if died {
                // Whether it ran or waited in the worker's queue is unknown: it counts as an
                // attempt, and its span (which died with the worker) is recorded here.
                self.effects.push(Effect::AttemptLost(LostAttempt {
                    name: spec.name.clone(),
                    kind: spec.kind.clone(),
                    trace_context: spec.trace_context.clone(),
                    attempt: spec.attempt,
                    started: held.sent,
                    error: error.clone(),
                }));
            }
            if died && spec.attempt < spec.retry.max_retries {
                spec.attempt += 1;
                retries.push(spec);
            } else {
                self.release_args(&spec);
                self.complete(id, Err(error));
            }
        }
        for spec in retries.into_iter().rev() {
            self.ready.push_front(spec);
        }
        if let Some(actor) = slot.actor {
            self.kill_actor(actor, format!("its worker {worker} (pid {pid}) died"));
            if self.actors.get(&actor).is_some_and(|a| a.unused) {
                self.actors.remove(&actor);
            }
        }
        let replace = slot.actor.is_none()
            && !shutting_down
            && self.cluster_lost.is_none()
            && self.replacements < MAX_REPLACEMENTS;
        if replace {
            self.replacements += 1;
            self.launch_new_worker(None);
        } else {
            self.fail_if_no_workers(&format!(
                "worker {worker} (pid {pid}) died and was the last"
            ));
        }
        self.dispatch();
        self.wake = true;
        true
    }

    /// The process of `actor` died: if it may restart, its constructor goes first in its queue,
    /// then the calls that were in flight and may run again (the others fail), then those that
    /// waited; a new process is launched. `false` if it may not restart.
    fn restart_actor(
        &mut self,
        actor: ActorId,
        worker: u32,
        pid: u32,
        slot: &mut WorkerSlot,
    ) -> bool {
        let (shutting_down, lost) = (self.shutting_down, self.cluster_lost.is_some());
        let Some(actor_slot) = self.actors.get_mut(&actor) else {
            return false;
        };
        if actor_slot.dead.is_some() || actor_slot.restarts_left == 0 || shutting_down || lost {
            return false;
        }
        let Some(kept) = &mut actor_slot.creation else {
            return false;
        };
        kept.attempt += 1;
        let creation = kept.clone();
        actor_slot.restarts_left -= 1;
        actor_slot.worker = None;
        let actor_name = format!("{}({actor:016x})", actor_slot.class);
        let max_task_retries = actor_slot.max_task_retries;
        let mut held: Vec<(ObjectId, Held)> = slot.held.drain().collect();
        held.sort_by_key(|(id, _)| *id);
        let mut again = Vec::new();
        for (id, held) in held {
            if id.0 == actor {
                // The constructor itself: it runs again below (from the actor's own copy).
                if let Some(spec) = &held.spec {
                    self.release_args(spec);
                }
                continue;
            }
            match held.spec {
                Some(mut spec)
                    if matches!(spec.kind, TaskKind::ActorCall { .. })
                        && spec.attempt < max_task_retries =>
                {
                    spec.attempt += 1;
                    again.push(spec);
                }
                spec => {
                    if let Some(spec) = &spec {
                        self.release_args(spec);
                    }
                    let name = self
                        .objects
                        .get(&id)
                        .map(|o| o.name.clone())
                        .unwrap_or_default();
                    let error = TaskError::ActorDied {
                        task: name,
                        actor: actor_name.clone(),
                        cause: format!(
                            "its worker {worker} (pid {pid}) died while the call ran; the actor restarts"
                        ),
                    };
                    self.complete(id, Err(error));
                }
            }
        }
        // The creation's own arguments are held by the kept copy: this run holds them again.
        for dep in creation.args.iter().filter_map(Arg::object) {
            self.add_ref(dep);
        }
        let actor_slot = self.actors.get_mut(&actor).expect("looked up above");
        for spec in again.into_iter().rev() {
            actor_slot.queue.push_front(spec);
        }
        actor_slot.queue.push_front(creation);
        self.launch_new_worker(Some(actor));
        true
    }

    /// Once the pool has no worker left or starting, tasks waiting for one fail (and so do later
    /// ones) instead of waiting forever.
    pub(super) fn fail_if_no_workers(&mut self, cause: &str) {
        self.fail_if_no_workers_because(cause, false);
    }

    /// [`Scheduler::fail_if_no_workers`]; `lost`: the pool is lost whatever is left of it.
    pub(super) fn fail_if_no_workers_because(&mut self, cause: &str, lost: bool) {
        let pool_alive = self.workers.values().any(|w| w.actor.is_none());
        let pool_starting = self.starting.values().any(Option::is_none);
        if !lost && (!self.started || pool_alive || pool_starting) {
            return;
        }
        let cause = self
            .pool_lost
            .get_or_insert_with(|| {
                if lost {
                    cause.to_owned()
                } else {
                    format!("no worker is left: {cause}")
                }
            })
            .clone();
        let parked: Vec<TaskSpec> = self.parked.drain().map(|(_, spec)| spec).collect();
        let stranded: Vec<TaskSpec> = self.ready.drain(..).chain(parked).collect();
        for spec in stranded {
            self.waiting.remove(&spec.id);
            let error = TaskError::NoWorkers {
                task: spec.name.clone(),
                cause: cause.clone(),
            };
            self.release_args(&spec);
            self.complete(spec.id, Err(error));
        }
    }

    /// A worker's process as the head's `status` shows it.
    pub(super) fn process_status(&self, id: u32, slot: &WorkerSlot) -> ProcessStatus {
        let kind = match slot.actor.and_then(|a| self.actors.get(&a)) {
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
}

#[cfg(test)]
mod tests {
    //! The scheduler alone: events in, effects out, no process, socket or clock.

    use super::*;
    use crate::wire::RetryPolicy;
    use std::collections::{BTreeMap, HashSet};

    fn task(id: u64, args: Vec<Arg>, max_retries: u32) -> TaskSpec {
        TaskSpec {
            id: ObjectId(id),
            kind: TaskKind::Function {
                function: "f".into(),
            },
            name: format!("f{id}"),
            args,
            trace_context: Vec::new(),
            retry: RetryPolicy {
                max_retries,
                retry_exceptions: false,
            },
            attempt: 0,
        }
    }

    fn call(id: u64, actor: ActorId, args: Vec<Arg>) -> TaskSpec {
        TaskSpec {
            id: ObjectId(id),
            kind: TaskKind::ActorCall {
                actor,
                method: "m".into(),
            },
            name: format!("A::m{id}"),
            args,
            trace_context: Vec::new(),
            retry: RetryPolicy::NEVER,
            attempt: 0,
        }
    }

    /// A started scheduler with `n` pool workers connected (ids 1..=n).
    fn with_workers(n: u32) -> Scheduler {
        let mut s = Scheduler::default();
        for _ in 0..n {
            let w = s.reserve_worker(None).expect("reserved");
            s.worker_ready(w, 1000 + w, false).expect("ready");
        }
        s.started = true;
        s.effects.clear();
        s
    }

    /// The tasks sent to each worker since the last call, in order, with their attempt.
    fn sent(s: &mut Scheduler) -> Vec<(u32, u64, u32)> {
        s.effects
            .drain(..)
            .filter_map(|e| match e {
                Effect::Send(w, ToWorker::Execute(x)) => Some((w, x.id.0, x.attempt)),
                _ => None,
            })
            .collect()
    }

    /// The workers launched for actors since the last call.
    fn launched(s: &mut Scheduler) -> Vec<u32> {
        s.effects
            .drain(..)
            .filter_map(|e| match e {
                Effect::Launch(w, true) => Some(w),
                _ => None,
            })
            .collect()
    }

    /// Creates actor `actor` (with `restarts`) and connects its process; returns the process.
    fn actor_up(s: &mut Scheduler, actor: ActorId, restarts: wire::ActorRestarts) -> u32 {
        s.submit(TaskSpec {
            kind: TaskKind::CreateActor {
                class: "A".into(),
                actor,
                restarts,
            },
            name: "A::new".into(),
            ..task(actor, vec![], 0)
        });
        let w = launched(s)[0];
        s.worker_ready(w, 2000 + w, false)
            .expect("the actor's process");
        assert_eq!(sent(s), vec![(w, actor, 0)], "the constructor");
        done(s, w, actor);
        w
    }

    fn done(s: &mut Scheduler, worker: u32, id: u64) {
        s.on_message(
            worker,
            ToDriver::Done {
                id: ObjectId(id),
                result: Ok(vec![id as u8]),
                refs: Vec::new(),
            },
        );
    }

    #[test]
    fn an_actors_calls_keep_their_order_when_an_argument_resolves_late() {
        let mut s = with_workers(1);
        s.submit(task(1, vec![], 0));
        assert_eq!(sent(&mut s), vec![(1, 1, 0)]);
        let actor = 50;
        s.submit(TaskSpec {
            kind: TaskKind::CreateActor {
                class: "A".into(),
                actor,
                restarts: Default::default(),
            },
            name: "A::new".into(),
            ..task(actor, vec![], 0)
        });
        let launched = launched(&mut s);
        assert_eq!(launched.len(), 1, "one process for the actor");
        // The first call waits for task 1's result; the second has no argument.
        s.submit(call(2, actor, vec![Arg::Ref(ObjectId(1))]));
        s.submit(call(3, actor, vec![]));
        s.worker_ready(launched[0], 2000, false)
            .expect("the actor's process");
        assert_eq!(
            sent(&mut s),
            vec![(launched[0], actor, 0)],
            "only the constructor: call 3 must not overtake call 2"
        );
        done(&mut s, 1, 1);
        assert_eq!(
            sent(&mut s),
            vec![(launched[0], 2, 0), (launched[0], 3, 0)],
            "both calls, in submission order, once the argument exists"
        );
    }

    #[test]
    fn a_dead_worker_retries_exactly_the_tasks_it_held_and_fails_those_out_of_retries() {
        let mut s = with_workers(2);
        for id in 1..=6 {
            s.submit(task(id, vec![], if id % 2 == 0 { 1 } else { 0 }));
        }
        let first = sent(&mut s);
        let on_1: HashSet<u64> = first
            .iter()
            .filter(|(w, ..)| *w == 1)
            .map(|(_, id, _)| *id)
            .collect();
        assert_eq!(first.len(), 6);
        assert!(!on_1.is_empty() && on_1.len() < 6, "both workers got tasks");
        assert!(s.worker_exited(1, 1001));
        // Its even tasks run again (attempt 1) on worker 2; its odd ones fail.
        let again: HashSet<(u64, u32)> = sent(&mut s)
            .into_iter()
            .inspect(|(w, ..)| assert_eq!(*w, 2, "only worker 2 is left"))
            .map(|(_, id, attempt)| (id, attempt))
            .collect();
        let expected: HashSet<(u64, u32)> = on_1
            .iter()
            .filter(|id| *id % 2 == 0)
            .map(|id| (*id, 1))
            .collect();
        assert_eq!(again, expected);
        for id in &on_1 {
            let value = s.objects[&ObjectId(*id)].value.as_ref();
            if id % 2 == 1 {
                assert!(
                    matches!(value, Some(Err(TaskError::WorkerDied { worker: 1, .. }))),
                    "task {id}: {value:?}"
                );
            } else {
                assert!(value.is_none(), "task {id} runs again");
            }
        }
        // Worker 2's own tasks were not touched, and a replacement was launched.
        assert!(s.starting.contains_key(&3));
    }

    #[test]
    fn an_idle_worker_takes_back_tasks_queued_behind_a_long_one_and_none_runs_twice() {
        let mut s = with_workers(1);
        for id in 1..=10 {
            s.submit(task(id, vec![], 3));
        }
        assert_eq!(sent(&mut s).len(), 10, "all on worker 1");
        let w = s.reserve_worker(None).expect("reserved");
        s.worker_ready(w, 1002, false).expect("ready");
        let asked: Vec<(u32, u32)> = s
            .effects
            .drain(..)
            .filter_map(|e| match e {
                Effect::Send(w, ToWorker::GiveBack(n)) => Some((w, n)),
                _ => None,
            })
            .collect();
        assert_eq!(asked, vec![(1, 5)], "half of what worker 1 holds");
        // Meanwhile worker 1 finished task 10, then gives back what it had not started: 6..=9
        // (and 10, which it ran: a stale id the driver must ignore).
        done(&mut s, 1, 10);
        s.effects.clear();
        s.on_message(1, ToDriver::Returned((6..=10).map(ObjectId).collect()));
        let moved = sent(&mut s);
        assert_eq!(
            moved,
            (6..=9).map(|id| (w, id, 0)).collect::<Vec<_>>(),
            "the given-back tasks, in order, on the idle worker; task 10 not again"
        );
        assert!(matches!(
            s.objects[&ObjectId(10)].value,
            Some(Ok(ref v)) if v.as_slice() == [10]
        ));
    }

    #[test]
    fn a_panic_is_retried_only_with_retry_exceptions() {
        let mut s = with_workers(1);
        let mut retried = task(1, vec![], 2);
        retried.retry.retry_exceptions = true;
        s.submit(retried);
        s.submit(task(2, vec![], 2));
        sent(&mut s);
        let panic = |id: u64| ToDriver::Done {
            id: ObjectId(id),
            result: Err(TaskError::Panicked {
                task: format!("f{id}"),
                message: "boom".into(),
            }),
            refs: Vec::new(),
        };
        for attempt in 1..=2 {
            s.on_message(1, panic(1));
            assert_eq!(sent(&mut s), vec![(1, 1, attempt)]);
        }
        s.on_message(1, panic(1));
        s.on_message(1, panic(2));
        assert!(
            sent(&mut s).is_empty(),
            "out of retries, and 2 never retries"
        );
        for id in [1, 2] {
            assert!(matches!(
                s.objects[&ObjectId(id)].value,
                Some(Err(TaskError::Panicked { .. }))
            ));
        }
    }

    #[test]
    fn an_actor_with_max_restarts_comes_back_its_calls_in_flight_failing_and_later_ones_served() {
        let mut s = with_workers(1);
        let actor = 50;
        let restarts = wire::ActorRestarts {
            max_restarts: 1,
            max_task_retries: 0,
        };
        let w = actor_up(&mut s, actor, restarts);
        s.submit(call(51, actor, vec![]));
        assert_eq!(sent(&mut s), vec![(w, 51, 0)]);
        assert!(s.worker_exited(w, 2000 + w));
        assert!(matches!(
            &s.objects[&ObjectId(51)].value,
            Some(Err(TaskError::ActorDied { cause, .. })) if cause.contains("restarts")
        ));
        // Calls made while it restarts wait for it, behind the constructor's second run.
        s.submit(call(52, actor, vec![]));
        let again = launched(&mut s);
        assert_eq!(again.len(), 1, "a new process for the actor");
        s.worker_ready(again[0], 3000, false).expect("ready");
        assert_eq!(sent(&mut s), vec![(again[0], actor, 1), (again[0], 52, 0)]);
        done(&mut s, again[0], actor);
        done(&mut s, again[0], 52);
        assert!(matches!(s.objects[&ObjectId(52)].value, Some(Ok(_))));
        // No restart left: the next death is final.
        s.submit(call(53, actor, vec![]));
        sent(&mut s);
        assert!(s.worker_exited(again[0], 3000));
        assert!(launched(&mut s).is_empty());
        s.submit(call(54, actor, vec![]));
        assert!(matches!(
            s.objects[&ObjectId(53)].value,
            Some(Err(TaskError::WorkerDied { .. }))
        ));
        assert!(matches!(
            s.objects[&ObjectId(54)].value,
            Some(Err(TaskError::ActorDied { .. }))
        ));
    }

    #[test]
    fn with_max_task_retries_a_call_in_flight_runs_again_on_the_restarted_actor() {
        let mut s = with_workers(1);
        let actor = 50;
        let restarts = wire::ActorRestarts {
            max_restarts: 2,
            max_task_retries: 1,
        };
        let w = actor_up(&mut s, actor, restarts);
        s.submit(call(51, actor, vec![]));
        s.submit(call(52, actor, vec![]));
        sent(&mut s);
        assert!(s.worker_exited(w, 2000 + w));
        let again = launched(&mut s)[0];
        s.worker_ready(again, 3000, false).expect("ready");
        assert_eq!(
            sent(&mut s),
            vec![(again, actor, 1), (again, 51, 1), (again, 52, 1)],
            "the constructor, then the calls in their order"
        );
    }

    #[test]
    fn a_dead_workers_references_are_released() {
        let mut s = with_workers(2);
        // Worker 1 submits a task (it holds the result's reference), which runs on worker 2.
        s.on_message(1, ToDriver::Submit(task(7, vec![], 0)));
        let placed = sent(&mut s);
        let (runner, ..) = placed[0];
        done(&mut s, runner, 7);
        assert!(s.objects.contains_key(&ObjectId(7)), "held by worker 1");
        s.worker_exited(1, 1001);
        assert!(
            !s.objects.contains_key(&ObjectId(7)),
            "released with worker 1"
        );
    }

    #[test]
    fn an_actor_whose_last_handle_is_dropped_stops_after_its_calls_and_leaves_nothing() {
        let mut s = with_workers(1);
        let actor = 50;
        let w = actor_up(&mut s, actor, Default::default());
        s.submit(call(51, actor, vec![]));
        s.submit(call(52, actor, vec![]));
        sent(&mut s);
        // The last handle goes while two calls are in flight: they finish first.
        s.release(ObjectId(actor));
        assert!(s.actors.contains_key(&actor));
        done(&mut s, w, 51);
        assert!(sent(&mut s).is_empty());
        assert!(
            !s.effects
                .iter()
                .any(|e| matches!(e, Effect::Send(_, ToWorker::Shutdown)))
        );
        done(&mut s, w, 52);
        assert!(
            s.effects
                .iter()
                .any(|e| matches!(e, Effect::Send(x, ToWorker::Shutdown) if *x == w)),
            "its process is told to stop"
        );
        assert!(!s.actors.contains_key(&actor), "no trace of the actor");
        s.worker_exited(w, 2000 + w);
        assert!(!s.workers.contains_key(&w));
        for id in [51, 52] {
            s.release(ObjectId(id));
        }
        assert!(
            s.objects.is_empty(),
            "{:?}",
            s.objects.keys().collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_result_holding_references_keeps_them_until_it_is_freed() {
        let mut s = with_workers(1);
        s.submit(task(1, vec![], 0));
        s.on_message(1, ToDriver::Submit(task(2, vec![], 0)));
        sent(&mut s);
        done(&mut s, 1, 2);
        // Task 1 returns a value holding a reference to 2; worker 1 then drops its own.
        s.on_message(
            1,
            ToDriver::Done {
                id: ObjectId(1),
                result: Ok(vec![]),
                refs: vec![ObjectId(2)],
            },
        );
        s.on_message(1, ToDriver::Release(vec![ObjectId(2)]));
        assert!(s.objects.contains_key(&ObjectId(2)), "held by result 1");
        // A task submitted with a value holding it keeps it too, until it is done.
        s.submit(TaskSpec {
            args: vec![Arg::Holding {
                value: vec![],
                refs: vec![ObjectId(2)],
            }],
            ..task(3, vec![], 0)
        });
        s.release(ObjectId(1));
        assert!(!s.objects.contains_key(&ObjectId(1)));
        assert!(
            s.objects.contains_key(&ObjectId(2)),
            "held by task 3's argument"
        );
        sent(&mut s);
        done(&mut s, 1, 3);
        s.release(ObjectId(3));
        assert!(
            s.objects.is_empty(),
            "{:?}",
            s.objects.keys().collect::<Vec<_>>()
        );
    }

    #[test]
    fn an_actor_calls_argument_holding_a_reference_keeps_it_until_the_call_is_done() {
        let mut s = with_workers(1);
        let actor = 50;
        let w = actor_up(&mut s, actor, Default::default());
        s.submit(task(1, vec![], 0));
        sent(&mut s);
        done(&mut s, 1, 1);
        s.submit(call(
            51,
            actor,
            vec![Arg::Holding {
                value: vec![],
                refs: vec![ObjectId(1)],
            }],
        ));
        // The submitter drops its handle; the call is on its way, not yet deserialized.
        s.release(ObjectId(1));
        assert_eq!(sent(&mut s), vec![(w, 51, 0)]);
        assert!(
            s.objects.contains_key(&ObjectId(1)),
            "held by the call in flight"
        );
        s.on_message(w, ToDriver::Borrow(vec![ObjectId(1)]));
        done(&mut s, w, 51);
        assert!(
            s.objects.contains_key(&ObjectId(1)),
            "borrowed by the actor's process"
        );
        s.on_message(w, ToDriver::Release(vec![ObjectId(1)]));
        assert!(!s.objects.contains_key(&ObjectId(1)));
    }

    /// A worker as the property test plays it: what it received, in order; the first runs.
    #[derive(Default)]
    struct FakeWorker {
        queue: VecDeque<(u64, u32)>,
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// Random submissions (with arguments on earlier results), completions, give-backs,
        /// worker deaths and released handles: no task attempt runs twice, no object is freed
        /// while referenced, and once every task is done and every handle dropped, nothing is
        /// left.
        #[test]
        fn references_count_to_zero_on_every_path(ops in proptest::collection::vec((0u8..7, 0usize..64), 1..200)) {
            let mut s = with_workers(2);
            let mut fakes: BTreeMap<u32, FakeWorker> = BTreeMap::new();
            fakes.insert(1, FakeWorker::default());
            fakes.insert(2, FakeWorker::default());
            let mut handles: Vec<u64> = Vec::new();
            let mut runs: HashSet<(u64, u32)> = HashSet::new();
            let mut next = 1u64;
            let mut deaths = 0;
            // The references inside each task's arguments: the worker running it borrows them
            // (as deserializing them would) and releases them when done.
            let mut inside: HashMap<u64, Vec<ObjectId>> = HashMap::new();
            let apply = |s: &mut Scheduler, fakes: &mut BTreeMap<u32, FakeWorker>| {
                // Carry out the effects the way the shell and the workers would.
                while !s.effects.is_empty() {
                    for effect in std::mem::take(&mut s.effects) {
                        match effect {
                            Effect::Send(w, ToWorker::Execute(x)) => {
                                fakes.get_mut(&w).expect("a live worker").queue.push_back((x.id.0, x.attempt));
                            }
                            Effect::Send(w, ToWorker::GiveBack(n)) => {
                                let fake = fakes.get_mut(&w).expect("a live worker");
                                let keep = fake.queue.len().saturating_sub(n as usize).max(1.min(fake.queue.len()));
                                let back: Vec<ObjectId> = fake.queue.drain(keep..).map(|(id, _)| ObjectId(id)).collect();
                                s.on_message(w, ToDriver::Returned(back));
                            }
                            Effect::Launch(w, false) => {
                                fakes.insert(w, FakeWorker::default());
                                s.worker_ready(w, 1000 + w, false).expect("ready");
                            }
                            _ => {}
                        }
                    }
                }
            };
            for (op, pick) in ops {
                match op {
                    0 | 1 => {
                        let args = handles
                            .iter()
                            .rev()
                            .take(pick % 3)
                            .map(|id| Arg::Ref(ObjectId(*id)))
                            .collect();
                        s.submit(task(next, args, (pick % 3) as u32));
                        handles.push(next);
                        next += 1;
                    }
                    6 => {
                        // A value holding references to earlier results.
                        let refs: Vec<ObjectId> = handles.iter().rev().take(1 + pick % 3).map(|id| ObjectId(*id)).collect();
                        inside.insert(next, refs.clone());
                        s.submit(task(next, vec![Arg::Holding { value: vec![], refs }], (pick % 2) as u32));
                        handles.push(next);
                        next += 1;
                    }
                    2 | 3 => {
                        // A worker runs the task at the head of its queue and finishes it.
                        let ids: Vec<u32> = fakes.keys().copied().collect();
                        let w = ids[pick % ids.len()];
                        if let Some((id, attempt)) = fakes.get_mut(&w).expect("listed").queue.pop_front() {
                            proptest::prop_assert!(runs.insert((id, attempt)), "task {id} attempt {attempt} ran twice");
                            let borrowed = inside.get(&id).cloned().unwrap_or_default();
                            for dep in &borrowed {
                                proptest::prop_assert!(s.objects.contains_key(dep), "task {id}'s argument holds {dep}, freed");
                            }
                            s.on_message(w, ToDriver::Borrow(borrowed.clone()));
                            done(&mut s, w, id);
                            s.on_message(w, ToDriver::Release(borrowed));
                        }
                    }
                    4 if deaths < 5 => {
                        let ids: Vec<u32> = fakes.keys().copied().collect();
                        let w = ids[pick % ids.len()];
                        // What it ran or held is lost with it; each counts as an attempt.
                        let fake = fakes.remove(&w).expect("listed");
                        for (id, attempt) in fake.queue {
                            runs.insert((id, attempt));
                        }
                        s.worker_exited(w, 1000 + w);
                        deaths += 1;
                    }
                    _ => {
                        if !handles.is_empty() {
                            let id = handles.swap_remove(pick % handles.len());
                            s.release(ObjectId(id));
                        }
                    }
                }
                apply(&mut s, &mut fakes);
                for id in &handles {
                    proptest::prop_assert!(s.objects.contains_key(&ObjectId(*id)), "object {id} freed while referenced");
                }
            }
            // Drain: the workers finish everything, then every handle is dropped.
            while let Some((&w, _)) = fakes.iter().find(|(_, f)| !f.queue.is_empty()) {
                let (id, attempt) = fakes.get_mut(&w).expect("found").queue.pop_front().expect("not empty");
                proptest::prop_assert!(runs.insert((id, attempt)), "task {id} attempt {attempt} ran twice");
                let borrowed = inside.get(&id).cloned().unwrap_or_default();
                s.on_message(w, ToDriver::Borrow(borrowed.clone()));
                done(&mut s, w, id);
                s.on_message(w, ToDriver::Release(borrowed));
                apply(&mut s, &mut fakes);
            }
            for id in handles.drain(..) {
                let value = s.objects.get(&ObjectId(id)).and_then(|o| o.value.as_ref());
                proptest::prop_assert!(value.is_some(), "task {id} never finished");
                s.release(ObjectId(id));
            }
            proptest::prop_assert!(s.objects.is_empty(), "leaked: {:?}", s.objects.keys().collect::<Vec<_>>());
            proptest::prop_assert!(s.ready.is_empty() && s.parked.is_empty() && s.waiting.is_empty());
        }
    }
}
