//! The start-up registry of remote functions and actors, by stable id (their Rust paths), and the
//! fingerprint processes compare in their handshake so that a different binary is refused.

use crate::object::TaskError;
use std::any::Any;
use std::collections::HashMap;
use std::sync::OnceLock;

/// The result of running a remote function or actor method: its serialized result.
pub type InvokeResult = Result<Vec<u8>, TaskError>;

/// A task's arguments as the generated code reads them, one by one, in order.
#[derive(Debug)]
pub struct Args<'a> {
    task: &'a str,
    values: std::slice::Iter<'a, Vec<u8>>,
    index: usize,
}

impl<'a> Args<'a> {
    pub(crate) fn new(task: &'a str, values: &'a [Vec<u8>]) -> Self {
        Args {
            task,
            values: values.iter(),
            index: 0,
        }
    }

    /// The next argument, as a `T`.
    #[allow(clippy::should_implement_trait)]
    pub fn next<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, TaskError> {
        let index = self.index;
        self.index += 1;
        let bytes = self.values.next().ok_or_else(|| TaskError::Invalid {
            task: self.task.to_owned(),
            message: format!("argument {index} is missing"),
        })?;
        crate::instrument::deserialize(crate::instrument::ValueRole::Argument, bytes, |bytes| {
            postcard::from_bytes(bytes)
        })
        .map_err(|e| TaskError::Invalid {
            task: self.task.to_owned(),
            message: format!(
                "argument {index} does not deserialize as {}: {e}",
                std::any::type_name::<T>()
            ),
        })
    }

    /// Checks that no argument is left over.
    pub fn finish(self) -> Result<(), TaskError> {
        let extra = self.values.len();
        if extra == 0 {
            Ok(())
        } else {
            Err(TaskError::Invalid {
                task: self.task.to_owned(),
                message: format!("{extra} more arguments than the function takes"),
            })
        }
    }
}

/// A remote function, registered by `#[filament::remote]`.
#[derive(Debug)]
pub struct RemoteFunction {
    /// Its Rust path.
    pub id: &'static str,
    /// Runs it on serialized arguments.
    pub invoke: fn(Args<'_>) -> InvokeResult,
}

/// An actor type's constructor, registered by `#[filament::actor]`.
#[derive(Debug)]
pub struct ActorClass {
    /// The type's Rust path.
    pub id: &'static str,
    /// Builds an instance from serialized constructor arguments.
    pub construct: fn(Args<'_>) -> Result<Box<dyn Any + Send>, TaskError>,
}

/// An actor method, registered by `#[filament::actor]`.
#[derive(Debug)]
pub struct ActorMethod {
    /// `<type path>::<method>`.
    pub id: &'static str,
    /// Calls it on an instance.
    pub call: fn(&mut (dyn Any + Send), Args<'_>) -> InvokeResult,
}

inventory::collect!(RemoteFunction);
inventory::collect!(ActorClass);
inventory::collect!(ActorMethod);

/// Everything registered in this binary, by id.
pub(crate) struct Registry {
    pub(crate) functions: HashMap<&'static str, &'static RemoteFunction>,
    pub(crate) classes: HashMap<&'static str, &'static ActorClass>,
    pub(crate) methods: HashMap<&'static str, &'static ActorMethod>,
    pub(crate) fingerprint: u64,
    /// Ids registered more than once (two versions of a crate in one binary, say): calls to them
    /// could reach the wrong code, so `init` refuses to start.
    pub(crate) duplicates: Vec<String>,
}

/// The entries of `items` by id, and the ids met more than once.
fn by_id<T>(
    items: impl IntoIterator<Item = &'static T>,
    id: impl Fn(&T) -> &'static str,
    duplicates: &mut Vec<String>,
) -> HashMap<&'static str, &'static T> {
    let mut map = HashMap::new();
    for item in items {
        if map.insert(id(item), item).is_some() {
            duplicates.push(id(item).to_owned());
        }
    }
    map
}

pub(crate) fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut duplicates = Vec::new();
        let functions = by_id(inventory::iter::<RemoteFunction>, |f| f.id, &mut duplicates);
        let classes = by_id(inventory::iter::<ActorClass>, |c| c.id, &mut duplicates);
        let methods = by_id(inventory::iter::<ActorMethod>, |m| m.id, &mut duplicates);
        let mut ids: Vec<String> = functions
            .keys()
            .map(|id| format!("fn {id}"))
            .chain(classes.keys().map(|id| format!("actor {id}")))
            .chain(methods.keys().map(|id| format!("method {id}")))
            .collect();
        ids.sort();
        Registry {
            fingerprint: fnv1a(ids.join("\n").as_bytes()),
            functions,
            classes,
            methods,
            duplicates,
        }
    })
}

/// FNV-1a: a stable hash (std's `DefaultHasher` may differ between builds of the toolchain).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Borrows an actor instance as its concrete type. Used by the generated code.
pub fn downcast_actor<T: 'static>(this: &mut (dyn Any + Send)) -> Result<&mut T, TaskError> {
    this.downcast_mut::<T>().ok_or_else(|| TaskError::Invalid {
        task: std::any::type_name::<T>().to_owned(),
        message: "the actor instance is of another type".to_owned(),
    })
}
