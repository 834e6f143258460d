//! The runtime of this process: the driver's cluster, or the worker's connection to it. Every public
//! operation (submit, get, wait, reference counting) goes through here to one or the other.

use crate::driver::Driver;
use crate::object::{Arg, GetError, ObjectId, ObjectRef};
use crate::wire::{ActorId, ActorRestarts, RetryPolicy, TaskKind, TaskSpec};
use crate::worker::WorkerCore;
use serde::{Deserialize, Serialize};
use std::marker::PhantomData;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The runtime this process talks to (not to be confused with OpenTelemetry's `Context`).
#[derive(Clone)]
pub(crate) enum LocalRuntime {
    Driver(Arc<Driver>),
    Worker(Arc<WorkerCore>),
}

static LOCAL: RwLock<Option<LocalRuntime>> = RwLock::new(None);

pub(crate) fn set(context: Option<LocalRuntime>) {
    *LOCAL.write().unwrap_or_else(|p| p.into_inner()) = context;
}

pub(crate) fn current() -> Option<LocalRuntime> {
    LOCAL.read().unwrap_or_else(|p| p.into_inner()).clone()
}

fn current_or_panic() -> LocalRuntime {
    current().expect("filament: no runtime in this process; call filament::init first")
}

impl LocalRuntime {
    pub(crate) fn cluster(&self) -> u64 {
        match self {
            LocalRuntime::Driver(d) => d.cluster,
            LocalRuntime::Worker(w) => w.cluster,
        }
    }

    fn next_id(&self) -> ObjectId {
        match self {
            LocalRuntime::Driver(d) => d.next_id(),
            LocalRuntime::Worker(w) => w.next_id(),
        }
    }

    /// Submits a task; the caller holds one reference to its result.
    fn submit(&self, mut spec: TaskSpec) {
        let _producer = crate::spans::on_submit(&mut spec);
        // References given up with the arguments, and those the serialized values took.
        let moved: Vec<ObjectId> = spec
            .args
            .iter()
            .flat_map(|arg| match arg {
                Arg::Moved(id) => std::slice::from_ref(id),
                arg => arg.contained(),
            })
            .copied()
            .collect();
        match self {
            LocalRuntime::Driver(d) => d.submit(spec),
            LocalRuntime::Worker(w) => w.submit(spec),
        }
        // The submission holds them now: the references given with the arguments can go.
        for id in moved {
            release(self.cluster(), id);
        }
    }
}

pub(crate) fn add_ref(cluster: u64, id: ObjectId) {
    match current() {
        Some(LocalRuntime::Driver(d)) if d.cluster == cluster => d.add_ref(id),
        Some(LocalRuntime::Worker(w)) if w.cluster == cluster => w.add_ref(id),
        _ => {}
    }
}

/// A reference deserialized in this process (from an argument or a result): it holds its object
/// from now on, until dropped.
pub(crate) fn borrow(cluster: u64, id: ObjectId) {
    match current() {
        Some(LocalRuntime::Driver(d)) if d.cluster == cluster => d.add_ref(id),
        Some(LocalRuntime::Worker(w)) if w.cluster == cluster => w.borrow(id),
        _ => {}
    }
}

pub(crate) fn release(cluster: u64, id: ObjectId) {
    match current() {
        Some(LocalRuntime::Driver(d)) if d.cluster == cluster => d.release(id),
        Some(LocalRuntime::Worker(w)) if w.cluster == cluster => w.release(id),
        _ => {}
    }
}

fn object_ref<T>(context: &LocalRuntime, id: ObjectId) -> ObjectRef<T> {
    ObjectRef {
        id,
        cluster: context.cluster(),
        _type: PhantomData,
    }
}

/// Submits a remote function. Used by the code `#[filament::remote]` generates.
///
/// `max_retries` and `retry_exceptions` are the function's `#[filament::remote(…)]` options: how
/// many times it runs again if its worker dies (or, with `retry_exceptions`, if it panics).
pub fn submit_function<T>(
    function: &'static str,
    args: Vec<Arg>,
    max_retries: u32,
    retry_exceptions: bool,
) -> ObjectRef<T> {
    let context = current_or_panic();
    let id = context.next_id();
    let function: Arc<str> = Arc::from(function);
    context.submit(TaskSpec {
        id,
        kind: TaskKind::Function {
            function: Arc::clone(&function),
        },
        name: function,
        args,
        trace_context: Vec::new(),
        retry: RetryPolicy {
            max_retries,
            retry_exceptions,
        },
        attempt: 0,
    });
    object_ref(&context, id)
}

/// A handle to an actor: its id and class. Typed handles (`<Type>Handle`) wrap it.
///
/// Handles are counted like [`ObjectRef`]s (they hold the actor's creation): once the last one is
/// dropped, in the driver and in every worker, the actor finishes the calls it was given, then
/// stops, and its process ends. A handle passed to a task (it is `Serialize`) counts while the
/// task may run and from the moment the task deserializes it.
#[derive(Debug)]
pub struct ActorHandle {
    id: ActorId,
    class: String,
    cluster: u64,
}

impl Clone for ActorHandle {
    fn clone(&self) -> Self {
        add_ref(self.cluster, ObjectId(self.id));
        ActorHandle {
            id: self.id,
            class: self.class.clone(),
            cluster: self.cluster,
        }
    }
}

impl Drop for ActorHandle {
    fn drop(&mut self) {
        release(self.cluster, ObjectId(self.id));
    }
}

impl Serialize for ActorHandle {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        crate::object::contain(self.cluster, ObjectId(self.id));
        (self.id, &self.class, self.cluster).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ActorHandle {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (id, class, cluster) = <(ActorId, String, u64)>::deserialize(deserializer)?;
        borrow(cluster, ObjectId(id));
        Ok(ActorHandle { id, class, cluster })
    }
}

impl ActorHandle {
    /// The actor's id: its creation's, as spans (`filament.actor_id`), errors and
    /// `filament status` show it (16 hex digits).
    pub fn id(&self) -> ObjectId {
        ObjectId(self.id)
    }

    /// The actor's type, by its Rust path (`my_crate::Counter`).
    pub fn class(&self) -> &str {
        &self.class
    }

    /// Calls a method. Used by the generated handle types.
    pub fn call<T>(&self, method_id: &'static str, method: &str, args: Vec<Arg>) -> ObjectRef<T> {
        let context = current_or_panic();
        let id = context.next_id();
        let spec = TaskSpec {
            id,
            kind: TaskKind::ActorCall {
                actor: self.id,
                method: method_id.to_owned(),
            },
            name: format!("{}::{method}", self.class).into(),
            args,
            trace_context: Vec::new(),
            retry: RetryPolicy::NEVER,
            attempt: 0,
        };
        // A handle of another cluster names no actor here: the driver fails the call saying so.
        context.submit(spec);
        object_ref(&context, id)
    }
}

/// Creates an actor. Used by the code `#[filament::actor]` generates. Its spans and errors name it
/// by its Rust path, `class_id` (two `Counter`s of two modules never share a name).
///
/// `max_restarts` and `max_task_retries` are the type's `#[filament::actor(…)]` options.
pub fn create_actor(
    class_id: &'static str,
    _class: &str,
    args: Vec<Arg>,
    max_restarts: u32,
    max_task_retries: u32,
) -> ActorHandle {
    let context = current_or_panic();
    let id = context.next_id();
    context.submit(TaskSpec {
        id,
        kind: TaskKind::CreateActor {
            class: class_id.to_owned(),
            actor: id.0,
            restarts: ActorRestarts {
                max_restarts,
                max_task_retries,
            },
        },
        name: format!("{class_id}::new").into(),
        args,
        trace_context: Vec::new(),
        retry: RetryPolicy::NEVER,
        attempt: 0,
    });
    // The handle holds the creation's reference (its result is never got: errors surface on the
    // actor's calls).
    ActorHandle {
        id: id.0,
        class: class_id.to_owned(),
        cluster: context.cluster(),
    }
}

/// Raw results of objects, in order, waiting as long as it takes.
pub(crate) fn get_raw(
    cluster: u64,
    ids: &[ObjectId],
) -> Result<Vec<crate::object::Fetched>, GetError> {
    let context = current().ok_or(GetError::NotInitialized)?;
    if context.cluster() != cluster {
        return Err(GetError::OtherCluster { id: ids[0] });
    }
    let span = crate::instrument::get(ids);
    let fetched = match context {
        LocalRuntime::Driver(d) => d.get(ids),
        LocalRuntime::Worker(w) => w.get(ids),
    };
    crate::instrument::got(&span, &fetched);
    fetched
}

/// Which of `ids` are done, waiting until `num_returns` are or the timeout passes.
pub(crate) fn wait_raw(
    cluster: u64,
    ids: &[ObjectId],
    num_returns: usize,
    timeout: Option<Duration>,
) -> Result<Vec<bool>, GetError> {
    let context = current().ok_or(GetError::NotInitialized)?;
    if context.cluster() != cluster {
        return Err(GetError::OtherCluster { id: ids[0] });
    }
    let span = crate::instrument::wait(ids, num_returns, timeout);
    let done = match context {
        LocalRuntime::Driver(d) => Ok(d.wait(ids, num_returns, timeout)),
        LocalRuntime::Worker(w) => w.wait(ids, num_returns, timeout),
    };
    crate::instrument::waited(&span, &done);
    done
}
