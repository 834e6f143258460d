//! Task interceptors: plugin code the host calls at the start and the end of every task and actor
//! call a worker runs (ABI 1.2).
//!
//! An interceptor sees which task runs ([`TaskInfo`]) and may add attributes to the task's
//! CONSUMER span through a [`TaskSpan`]. The instrument plugin uses one to put each task's CPU time
//! and peak-memory growth on its span.
//!
//! Threading contract: `on_start` and `on_end` of one task are called on the thread that runs the
//! task, `on_start` right before the task's code and `on_end` right after it, with no other task
//! of that thread in between; calls for tasks on other threads may overlap. Both are on the task's
//! path: keep them short and never block.

use crate::processor::{panic_message, quietly_after_the_first_panic};
use crate::record::{KeyValue, Value};
use abi_stable::{
    StableAbi, sabi_trait,
    sabi_types::RMut,
    std_types::{RResult, RStr, RString},
};
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// What kind of work a task is.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskKind {
    /// A remote function.
    Function,
    /// An actor's constructor.
    ActorCreation,
    /// A method call on an actor.
    ActorCall,
}

/// How a task ended.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskOutcome {
    /// It returned a value.
    Ok,
    /// It returned an error (an argument that did not deserialize, an actor that is gone).
    Failed,
    /// It panicked.
    Panicked,
}

/// The task an interceptor is called for, borrowed for the duration of the call.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct TaskInfo<'a> {
    /// The task's id, as `filament.task_id` shows it (16 hex digits).
    pub id: u64,
    /// The task's name: the function's Rust path, or `Class::method`.
    pub name: RStr<'a>,
    /// What kind of task it is.
    pub kind: TaskKind,
}

/// The host's side of [`TaskSpan`]: the attributes of the task's CONSUMER span.
#[sabi_trait]
pub trait RawTaskSpan {
    /// Sets an attribute on the span.
    #[sabi(last_prefix_field)]
    fn set_attribute(&mut self, attribute: KeyValue<'_>);
}

/// The handle type of [`RawTaskSpan`] that crosses the boundary.
pub type RawTaskSpanMut<'a> = RawTaskSpan_TO<'a, RMut<'a, ()>>;

/// The CONSUMER span of the task an interceptor is called for; valid for the duration of the call.
pub struct TaskSpan<'a> {
    raw: RawTaskSpanMut<'a>,
}

impl fmt::Debug for TaskSpan<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskSpan").finish_non_exhaustive()
    }
}

impl<'a> TaskSpan<'a> {
    /// Wraps the host's handle.
    pub fn from_raw(raw: RawTaskSpanMut<'a>) -> Self {
        TaskSpan { raw }
    }

    /// Sets an attribute on the task's span (a later value of the same key wins).
    pub fn set_attribute(&mut self, key: &str, value: Value<'_>) {
        self.raw.set_attribute(KeyValue::new(key, value));
    }
}

/// What a plugin implements to be called around every task a worker runs. Both methods default to
/// doing nothing. See the [module](self) for the threading contract.
pub trait TaskInterceptor: Send + Sync + 'static {
    /// Called right before the task's code runs.
    fn on_start(&self, _task: &TaskInfo<'_>, _span: &mut TaskSpan<'_>) {}

    /// Called right after the task's code returned or panicked, before its span ends.
    fn on_end(&self, _task: &TaskInfo<'_>, _outcome: TaskOutcome, _span: &mut TaskSpan<'_>) {}
}

/// The host's view of an interceptor, as a stable-ABI trait object. Plugin authors implement
/// [`TaskInterceptor`]; [`TracingSetup::add_task_interceptor`](crate::TracingSetup::add_task_interceptor)
/// wraps it. Errors are the message of a panic caught in the plugin.
#[sabi_trait]
pub trait RawTaskInterceptor: Send + Sync {
    /// See [`TaskInterceptor::on_start`].
    fn on_start(&self, task: &TaskInfo<'_>, span: RawTaskSpanMut<'_>) -> RResult<(), RString>;

    /// See [`TaskInterceptor::on_end`].
    #[sabi(last_prefix_field)]
    fn on_end(
        &self,
        task: &TaskInfo<'_>,
        outcome: TaskOutcome,
        span: RawTaskSpanMut<'_>,
    ) -> RResult<(), RString>;
}

/// A plugin's interceptor behind the panic guard.
#[derive(Debug)]
pub struct GuardedInterceptor<I>(pub I);

fn guard(call: impl FnOnce()) -> RResult<(), RString> {
    match quietly_after_the_first_panic(|| catch_unwind(AssertUnwindSafe(call))) {
        Ok(()) => RResult::ROk(()),
        Err(payload) => RResult::RErr(panic_message(&*payload).into()),
    }
}

impl<I: TaskInterceptor> RawTaskInterceptor for GuardedInterceptor<I> {
    fn on_start(&self, task: &TaskInfo<'_>, span: RawTaskSpanMut<'_>) -> RResult<(), RString> {
        guard(|| self.0.on_start(task, &mut TaskSpan::from_raw(span)))
    }

    fn on_end(
        &self,
        task: &TaskInfo<'_>,
        outcome: TaskOutcome,
        span: RawTaskSpanMut<'_>,
    ) -> RResult<(), RString> {
        guard(|| self.0.on_end(task, outcome, &mut TaskSpan::from_raw(span)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi_stable::sabi_trait::TD_Opaque;

    /// The host's side, as a test sees it: the attributes set, as text.
    struct Attributes(Vec<String>);

    impl RawTaskSpan for Attributes {
        fn set_attribute(&mut self, attribute: KeyValue<'_>) {
            self.0
                .push(format!("{}={:?}", attribute.key, attribute.value));
        }
    }

    struct Flaky;

    impl TaskInterceptor for Flaky {
        fn on_start(&self, task: &TaskInfo<'_>, _span: &mut TaskSpan<'_>) {
            panic!("no start for {}", task.name);
        }

        fn on_end(&self, task: &TaskInfo<'_>, outcome: TaskOutcome, span: &mut TaskSpan<'_>) {
            span.set_attribute("ended", Value::Str(task.name));
            span.set_attribute("ok", Value::Bool(outcome == TaskOutcome::Ok));
        }
    }

    fn task() -> TaskInfo<'static> {
        TaskInfo {
            id: 7,
            name: "my_crate::work".into(),
            kind: TaskKind::Function,
        }
    }

    #[test]
    fn a_panic_in_an_interceptor_comes_back_as_its_message() {
        let raw = RawTaskInterceptor_TO::from_value(GuardedInterceptor(Flaky), TD_Opaque);
        let mut attributes = Attributes(Vec::new());
        let returned = raw.on_start(
            &task(),
            RawTaskSpan_TO::from_ptr(&mut attributes, TD_Opaque),
        );
        assert_eq!(
            returned,
            RResult::RErr(RString::from("no start for my_crate::work"))
        );
        assert!(attributes.0.is_empty());
    }

    #[test]
    fn attributes_an_interceptor_sets_reach_the_host() {
        let raw = RawTaskInterceptor_TO::from_value(GuardedInterceptor(Flaky), TD_Opaque);
        let mut attributes = Attributes(Vec::new());
        let returned = raw.on_end(
            &task(),
            TaskOutcome::Ok,
            RawTaskSpan_TO::from_ptr(&mut attributes, TD_Opaque),
        );
        assert_eq!(returned, RResult::ROk(()));
        assert_eq!(
            attributes.0,
            ["ended=Str(\"my_crate::work\")", "ok=Bool(true)"]
        );
    }
}
