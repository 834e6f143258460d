//! What `filament status` says of a process: its kind, the state of its tracing hook, and its
//! span counts; and of a job, its state. Workers send these to their driver, drivers to the head.
//!
//! The kinds, hook states and job states are enums to a program and plain strings in `filament status --json`
//! (`"driver"`, `"actor Counter"`, `"loaded"`, `"failed: why"`), as they have always read there.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What a process of a job is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
#[non_exhaustive]
pub enum ProcessKind {
    /// The job's driver, the user's program: `"driver"`.
    Driver,
    /// A pool worker: `"worker"`.
    Worker,
    /// A worker the head placed and the driver has not reported yet: `"worker (starting)"`.
    StartingWorker,
    /// The process of an actor: `"actor <Class>"`.
    Actor {
        /// The actor's class (its Rust type's name).
        class: String,
    },
}

impl fmt::Display for ProcessKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProcessKind::Driver => f.write_str("driver"),
            ProcessKind::Worker => f.write_str("worker"),
            ProcessKind::StartingWorker => f.write_str("worker (starting)"),
            ProcessKind::Actor { class } => write!(f, "actor {class}"),
        }
    }
}

impl From<ProcessKind> for String {
    fn from(kind: ProcessKind) -> String {
        kind.to_string()
    }
}

impl TryFrom<String> for ProcessKind {
    type Error = String;

    fn try_from(text: String) -> Result<ProcessKind, String> {
        Ok(match text.as_str() {
            "driver" => ProcessKind::Driver,
            "worker" => ProcessKind::Worker,
            "worker (starting)" => ProcessKind::StartingWorker,
            _ => match text.strip_prefix("actor ") {
                Some(class) => ProcessKind::Actor {
                    class: class.to_owned(),
                },
                None => return Err(format!("{text:?} is not a kind of process")),
            },
        })
    }
}

/// The state of a process's tracing startup hook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
#[non_exhaustive]
pub enum HookState {
    /// The cluster has no hook: `"none"`.
    None,
    /// The hook ran in the process: `"loaded"`.
    Loaded,
    /// The hook failed in the process: `"failed: <why>"`.
    Failed(String),
    /// The process has not reported yet: `"not yet reported"`.
    NotReported,
    /// A node's daemon, which runs no task, checked that the hook loads there:
    /// `"checked (nodes run no tasks)"`.
    Checked,
}

const CHECKED: &str = "checked (nodes run no tasks)";

impl fmt::Display for HookState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookState::None => f.write_str("none"),
            HookState::Loaded => f.write_str("loaded"),
            HookState::Failed(why) => write!(f, "failed: {why}"),
            HookState::NotReported => f.write_str("not yet reported"),
            HookState::Checked => f.write_str(CHECKED),
        }
    }
}

impl From<HookState> for String {
    fn from(state: HookState) -> String {
        state.to_string()
    }
}

impl TryFrom<String> for HookState {
    type Error = String;

    fn try_from(text: String) -> Result<HookState, String> {
        Ok(match text.as_str() {
            "none" => HookState::None,
            "loaded" => HookState::Loaded,
            "not yet reported" => HookState::NotReported,
            CHECKED => HookState::Checked,
            _ => match text.strip_prefix("failed: ") {
                Some(why) => HookState::Failed(why.to_owned()),
                None => return Err(format!("{text:?} is not a hook state")),
            },
        })
    }
}

/// Where a job of a standing cluster is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
#[non_exhaustive]
pub enum JobState {
    /// Its driver is attached: `"running"`.
    Running,
    /// Its driver detached: `"ended"`.
    Ended,
    /// Its driver's connection failed: `"lost: <why>"`.
    Lost(String),
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobState::Running => f.write_str("running"),
            JobState::Ended => f.write_str("ended"),
            JobState::Lost(why) => write!(f, "lost: {why}"),
        }
    }
}

impl From<JobState> for String {
    fn from(state: JobState) -> String {
        state.to_string()
    }
}

impl TryFrom<String> for JobState {
    type Error = String;

    fn try_from(text: String) -> Result<JobState, String> {
        Ok(match text.as_str() {
            "running" => JobState::Running,
            "ended" => JobState::Ended,
            _ => match text.strip_prefix("lost: ") {
                Some(why) => JobState::Lost(why.to_owned()),
                None => return Err(format!("{text:?} is not a job state")),
            },
        })
    }
}

/// A process's tracing: its hook's state and its spans so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProcessTracing {
    pub(crate) hook: HookState,
    /// See [`SpanCounts`](crate::tracing::SpanCounts).
    pub(crate) exported: u64,
    pub(crate) dropped: u64,
}

impl ProcessTracing {
    /// A process with no hook, or whose hook has not run yet.
    pub(crate) fn without_spans(hook: HookState) -> ProcessTracing {
        ProcessTracing {
            hook,
            exported: 0,
            dropped: 0,
        }
    }

    /// The tracing of a process now: its hook ran if it has reports to read.
    pub(crate) fn of(reports: Option<&crate::tracing::ReportHandle>) -> ProcessTracing {
        let Some(reports) = reports else {
            return ProcessTracing::without_spans(HookState::None);
        };
        let counts = reports.span_counts();
        ProcessTracing {
            hook: HookState::Loaded,
            exported: counts.exported,
            dropped: counts.dropped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_hook_and_job_states_read_back_from_their_status_strings() {
        for kind in [
            ProcessKind::Driver,
            ProcessKind::Worker,
            ProcessKind::StartingWorker,
            ProcessKind::Actor {
                class: "Counter".into(),
            },
        ] {
            assert_eq!(ProcessKind::try_from(kind.to_string()), Ok(kind));
        }
        for state in [
            HookState::None,
            HookState::Loaded,
            HookState::Failed("no collector: refused".into()),
            HookState::NotReported,
            HookState::Checked,
        ] {
            assert_eq!(HookState::try_from(state.to_string()), Ok(state));
        }
        for state in [
            JobState::Running,
            JobState::Ended,
            JobState::Lost("connection reset by peer".into()),
        ] {
            assert_eq!(JobState::try_from(state.to_string()), Ok(state));
        }
        assert!(JobState::try_from("stopped".to_owned()).is_err());
        assert_eq!(
            serde_json::to_string(&ProcessKind::Actor {
                class: "Counter".into()
            })
            .unwrap(),
            "\"actor Counter\""
        );
        assert!(HookState::try_from("loading".to_owned()).is_err());
    }
}

/// One process of a job, as its driver sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProcessStatus {
    /// `None` for the driver.
    pub(crate) worker: Option<u32>,
    pub(crate) pid: u32,
    pub(crate) kind: ProcessKind,
    pub(crate) tracing: ProcessTracing,
}
