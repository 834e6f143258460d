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

/// The most workers [`Scheduler::holder`] looks through (a look per worker; tasks are not indexed
/// by worker, which would cost every task a map entry).
const HOLDER_LOOKUP_LIMIT: usize = 64;

/// How many times dying workers are replaced before the driver stops replacing them.
const MAX_REPLACEMENTS: u32 = 64;

/// The objects a task's arguments hold: those passed by reference, and the references inside
/// serialized values.
fn arg_refs(spec: &TaskSpec) -> impl Iterator<Item = ObjectId> + '_ {
    spec.args.iter().flat_map(|arg| {
        arg.object()
            .into_iter()
            .chain(arg.contained().iter().copied())
    })
}

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
    pub(crate) name: Arc<str>,
    pub(crate) kind: TaskKind,
    pub(crate) trace_context: Vec<(String, String)>,
    pub(crate) attempt: u32,
    pub(crate) started: Option<SystemTime>,
    pub(crate) error: TaskError,
}

pub(super) struct Object {
    /// The task's Rust path, for errors.
    pub(super) name: Arc<str>,
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
                let name = object.map(|o| o.name.to_string()).unwrap_or_default();
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
                task: spec.name.to_string(),
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
                    self.hold_args(&spec);
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
                    task: spec.name.to_string(),
                    actor: dead.0,
                    cause: dead.1,
                };
                self.waiting.remove(&id);
                self.release_args(&spec);
                self.complete(id, Err(error));
            }
        }
    }

    /// Holds a copy's arguments (and the references inside them) once more: what
    /// [`Scheduler::release_args`] drops.
    fn hold_args(&mut self, spec: &TaskSpec) {
        for id in arg_refs(spec) {
            self.add_ref(id);
        }
    }

    /// Drops the holds a task had on its arguments.
    fn release_args(&mut self, spec: &TaskSpec) {
        for id in arg_refs(spec) {
            self.release(id);
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
                            task: spec.name.to_string(),
                            index,
                            cause: Box::new(error.clone()),
                        }),
                        None => Err(TaskError::Invalid {
                            task: spec.name.to_string(),
                            message: format!("argument {index} ({dep}) is not ready"),
                        }),
                    }
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let bytes = args.iter().map(Vec::len).sum();
        wire::check_value_size(bytes, "arguments").map_err(|message| TaskError::Invalid {
            task: spec.name.to_string(),
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

    /// The worker that holds the task of `id` (running or queued there), if the cluster is small
    /// enough to look: a hint for a thread about to wait for it.
    pub(super) fn holder(&self, id: ObjectId) -> Option<u32> {
        if self.workers.len() > HOLDER_LOOKUP_LIMIT {
            return None;
        }
        self.workers
            .iter()
            .find(|(_, slot)| slot.held.contains_key(&id))
            .map(|(worker, _)| *worker)
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
            // `Driver::stop_workers` waits for the last one.
            self.wake = true;
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
                .map(|o| o.name.to_string())
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
            // Lost with its worker, or with the cluster (the head is gone, and with it every
            // worker's connection): whether it ran or waited in the worker's queue is unknown. It
            // counts as an attempt, and its span (which never reached the driver) is recorded here.
            if died || matches!(error, TaskError::NoWorkers { .. }) {
                self.effects.push(Effect::AttemptLost(LostAttempt {
                    name: Arc::clone(&spec.name),
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
                task: spec.name.to_string(),
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

mod actors;
#[cfg(test)]
mod tests;
