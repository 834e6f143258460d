//! Object references, task arguments and task errors: what user code holds and gets back.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::marker::PhantomData;

/// The id of an object: a task's result (a task and its result share the id).
///
/// The high 16 bits name the process that made it (0 for the driver), the rest count, so every
/// process makes ids without asking anyone.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectId(pub u64);

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({self})")
    }
}

/// A future result of a task or actor call, of type `T`. Get it with [`get`](crate::get) or
/// [`ObjectRef::get`]; pass it to other tasks as an argument. The result is freed when no reference
/// to it remains.
///
/// It is `Serialize` and `Deserialize`: refs travel inside arguments and results (a
/// `Vec<ObjectRef<T>>`, a struct holding one), and `get` works on them in any process of the job.
/// A value holding refs keeps their objects alive as long as it is itself an argument or result
/// the runtime holds, and a ref deserialized from it keeps its object alive until it is dropped.
/// (A ref serialized by other means, to a file say, is only an id: it keeps nothing alive.)
pub struct ObjectRef<T> {
    pub(crate) id: ObjectId,
    pub(crate) cluster: u64,
    pub(crate) _type: PhantomData<fn() -> T>,
}

impl<T> ObjectRef<T> {
    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.id
    }
}

impl<T> ObjectRef<T> {
    /// The same object, typed as `U`: for results whose type the caller knows better than the
    /// signature says. Getting it as a type it is not is an error, not undefined behaviour.
    pub fn cast<U>(self) -> ObjectRef<U> {
        let cast = ObjectRef {
            id: self.id,
            cluster: self.cluster,
            _type: PhantomData,
        };
        std::mem::forget(self);
        cast
    }
}

impl<T: DeserializeOwned> ObjectRef<T> {
    /// Waits for the object and returns its value.
    pub fn get(&self) -> Result<T, GetError> {
        crate::get(self)
    }
}

impl<T> fmt::Debug for ObjectRef<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectRef({})", self.id)
    }
}

impl<T> Clone for ObjectRef<T> {
    fn clone(&self) -> Self {
        crate::local::add_ref(self.cluster, self.id);
        ObjectRef {
            id: self.id,
            cluster: self.cluster,
            _type: PhantomData,
        }
    }
}

impl<T> Drop for ObjectRef<T> {
    fn drop(&mut self) {
        crate::local::release(self.cluster, self.id);
    }
}

impl<T> Serialize for ObjectRef<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        contain(self.cluster, self.id);
        (self.id, self.cluster).serialize(serializer)
    }
}

impl<'de, T> Deserialize<'de> for ObjectRef<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (id, cluster) = <(ObjectId, u64)>::deserialize(deserializer)?;
        crate::local::borrow(cluster, id);
        Ok(ObjectRef {
            id,
            cluster,
            _type: PhantomData,
        })
    }
}

thread_local! {
    /// While this thread serializes a task's argument or result, the references inside it.
    static CONTAINED: std::cell::RefCell<Option<Vec<ObjectId>>> =
        const { std::cell::RefCell::new(None) };
}

/// A reference is being serialized: inside an argument or result, it takes a reference of its
/// own, which the message carrying the value hands to the driver (so that the object outlives the
/// handle that was serialized, whatever order the messages arrive in).
pub(crate) fn contain(cluster: u64, id: ObjectId) {
    CONTAINED.with(|contained| {
        if let Some(ids) = contained.borrow_mut().as_mut() {
            crate::local::add_ref(cluster, id);
            ids.push(id);
        }
    });
}

/// Runs `serialize`, returning what it made and the references serialized meanwhile (each holding
/// a reference of its own, to release once the value is handed over).
pub(crate) fn collecting<R>(serialize: impl FnOnce() -> R) -> (R, Vec<ObjectId>) {
    let outer = CONTAINED.with(|contained| contained.borrow_mut().replace(Vec::new()));
    let made = serialize();
    let ids = CONTAINED.with(|contained| std::mem::replace(&mut *contained.borrow_mut(), outer));
    (made, ids.unwrap_or_default())
}

/// A task argument as it travels: a serialized value, or a reference the driver resolves before the
/// task runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Arg {
    /// A value, serialized with postcard.
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The result of another task.
    Ref(ObjectId),
    /// The result of another task, whose reference the caller gave up with the argument: the
    /// caller releases it once the submission holds the object.
    Moved(ObjectId),
    /// A value with object references inside it: the submission holds them while it may run.
    Holding {
        /// The value, serialized with postcard.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// The references inside it.
        refs: Vec<ObjectId>,
    },
}

impl Arg {
    /// The object this argument refers to, if it is a reference.
    pub(crate) fn object(&self) -> Option<ObjectId> {
        match self {
            Arg::Value(_) | Arg::Holding { .. } => None,
            Arg::Ref(id) | Arg::Moved(id) => Some(*id),
        }
    }

    /// The references inside a value argument.
    pub(crate) fn contained(&self) -> &[ObjectId] {
        match self {
            Arg::Holding { refs, .. } => refs,
            _ => &[],
        }
    }
}

/// What a remote function or actor method accepts for a parameter of type `T`: a `T`, or an
/// [`ObjectRef<T>`] (by value or by reference) whose value the task receives once it exists.
pub trait IntoArg<T> {
    /// The argument as it travels.
    fn into_arg(self) -> Arg;
}

impl<T: Serialize> IntoArg<T> for T {
    fn into_arg(self) -> Arg {
        let (encoded, refs) = collecting(|| {
            crate::instrument::serialize::<T>(crate::instrument::ValueRole::Argument, || {
                postcard::to_stdvec(&self).map_err(|e| e.to_string())
            })
        });
        match (encoded, refs) {
            (Ok(bytes), refs) if refs.is_empty() => Arg::Value(bytes),
            (Ok(value), refs) => Arg::Holding { value, refs },
            (Err(error), _) => panic!(
                "filament: cannot serialize an argument of type {}: {error}",
                std::any::type_name::<T>()
            ),
        }
    }
}

impl<T> IntoArg<T> for &ObjectRef<T> {
    fn into_arg(self) -> Arg {
        Arg::Ref(self.id)
    }
}

impl<T> IntoArg<T> for ObjectRef<T> {
    fn into_arg(self) -> Arg {
        // Dropping the reference here could free the object before the submission holds it:
        // the reference lives on, and the submitter releases it after submitting.
        let id = self.id;
        std::mem::forget(self);
        Arg::Moved(id)
    }
}

/// Why a task produced no value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// The task's code panicked.
    #[error("task {task} panicked: {message}")]
    Panicked {
        /// The task's Rust path (`module::function`, `Type::method`).
        task: String,
        /// The panic's message.
        message: String,
    },
    /// The worker process running the task died, or its connection to the driver ended (a
    /// worker on another machine cut off from this one, say).
    #[error(
        "task {task} failed: worker {worker} (pid {pid}) was lost before it finished (it died, or its connection was cut)"
    )]
    WorkerDied {
        /// The task's Rust path.
        task: String,
        /// The worker's id in its job.
        worker: u32,
        /// The worker's process id.
        pid: u32,
    },
    /// The actor is dead: its process died, or its constructor failed.
    #[error("task {task} failed: actor {actor} is dead: {cause}")]
    ActorDied {
        /// The call's Rust path.
        task: String,
        /// The actor's class and id.
        actor: String,
        /// Why it died.
        cause: String,
    },
    /// An argument of the task failed, so the task could not run.
    #[error("task {task} did not run: its argument {index} failed: {cause}")]
    ArgumentFailed {
        /// The task's Rust path.
        task: String,
        /// The argument's position, from 0.
        index: usize,
        /// The argument's own error.
        cause: Box<TaskError>,
    },
    /// The task's arguments or result could not be (de)serialized, or the function is unknown.
    #[error("task {task}: {message}")]
    Invalid {
        /// The task's Rust path.
        task: String,
        /// What is wrong.
        message: String,
    },
    /// No worker process is left to run the task.
    #[error("task {task} cannot run: {cause}")]
    NoWorkers {
        /// The task's Rust path.
        task: String,
        /// Why no worker is left.
        cause: String,
    },
    /// The runtime shut down before the task finished.
    #[error("task {task} was cancelled: the runtime shut down")]
    Cancelled {
        /// The task's Rust path.
        task: String,
    },
}

/// Why [`get`](crate::get) returned no value.
///
/// Its `Debug` is its message: a `main` that returns `Result<(), Box<dyn Error>>` prints an error
/// through `Debug`, and the message is what names the task and the cause. Match on the variants to
/// tell the cases apart.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GetError {
    /// The task failed.
    #[error(transparent)]
    Task(#[from] TaskError),
    /// The value exists but is not a `T`.
    #[error("the result of {task} ({id}) does not deserialize as {type_name}: {cause}")]
    Deserialize {
        /// The task's Rust path.
        task: String,
        /// The object.
        id: ObjectId,
        /// The requested type.
        type_name: &'static str,
        /// The decoder's reason.
        cause: String,
    },
    /// The reference belongs to another cluster (another `init`, or one that shut down).
    #[error(
        "object {id} belongs to another cluster than this process's; object refs are only valid in the cluster that made them"
    )]
    OtherCluster {
        /// The object.
        id: ObjectId,
    },
    /// No runtime runs in this process.
    #[error("filament is not initialized in this process: call filament::init first")]
    NotInitialized,
    /// The runtime stopped while waiting.
    #[error("the runtime shut down while waiting for {id}")]
    ShutDown {
        /// The object.
        id: ObjectId,
    },
}

impl std::fmt::Debug for GetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// An object's task name and result, as `get` collects them.
pub(crate) type Fetched = (
    std::sync::Arc<str>,
    Result<std::sync::Arc<Vec<u8>>, TaskError>,
);

/// Serializes a task's result. Used by the generated code.
pub(crate) fn encode<R: Serialize>(value: &R) -> Result<Vec<u8>, String> {
    crate::instrument::serialize::<R>(crate::instrument::ValueRole::Result, || {
        postcard::to_stdvec(value).map_err(|e| {
            format!(
                "cannot serialize its result of type {}: {e}",
                std::any::type_name::<R>()
            )
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_debug_as_their_message_for_a_main_that_returns_them() {
        // What `fn main() -> Result<(), Box<dyn Error>>` prints after `Error: `.
        let error: Box<dyn std::error::Error> = Box::new(GetError::NotInitialized);
        assert_eq!(
            format!("{error:?}"),
            "filament is not initialized in this process: call filament::init first"
        );
        let error: Box<dyn std::error::Error> = Box::new(crate::InitError::AlreadyInitialized);
        assert_eq!(
            format!("{error:?}"),
            "filament is already initialized in this process"
        );
    }
}
