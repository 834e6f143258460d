//! Filament: a task runtime in the spirit of Ray whose tracing is a plugin.
//!
//! [`init`] starts an embedded cluster: worker processes that are this program's own executable,
//! re-executed in worker mode, so every remote function exists in every worker. `#[remote]`
//! functions submit to them and return [`ObjectRef`]s; `#[actor]` types live in a worker process of
//! their own. [`get`], [`get_all`] and [`wait`] collect results.
//!
//! A *tracing startup hook* — a `library:symbol` string given in [`Config`] or by
//! `FILAMENT_TRACING_STARTUP_HOOK` — names a shared object built against [`filament_plugin_api`]
//! that configures OpenTelemetry in every process of the cluster. It is checked in the driver before
//! any worker starts and run in every worker before its first task. Then every submission makes a
//! PRODUCER span and every execution a CONSUMER span, linked by the W3C trace context carried in the
//! task's envelope (never in your arguments); spans your task code makes are children of its
//! CONSUMER span, and tasks it submits continue the trace. See [`tracing`] for the hook machinery.
//!
//! ```no_run
//! #[filament::remote]
//! fn my_function() -> i32 { 1 }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let _runtime = filament::init(filament::Config::default())?; // workers serve from here
//!     let one = my_function::remote();
//!     println!("{}", filament::get(&one)?);
//!     Ok(())
//! }
//! ```

#![warn(missing_docs)]
#![forbid(unsafe_code)]

// The README's examples compile as doctests of this crate (`cargo test --doc -p filament`).
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

mod child_watch;
pub mod cli;
pub mod cluster;
mod driver;
mod instrument;
mod local;
mod object;
mod output;
mod plugins;
mod proc_stat;
mod registry;
mod socket_dir;
mod spans;
mod spin;
mod status;
mod wire;
mod worker;

pub use filament_macros::{actor, remote};
pub use filament_plugin_api as plugin_api;
pub use filament_tracing as tracing;
/// The `opentelemetry` crate this runtime records spans with, for your spans: each version of the
/// crate has a global tracer provider of its own, and only this version's is the one the tracing
/// hook configured. A span made through another version in your manifest goes nowhere.
pub use filament_tracing::opentelemetry;
pub use local::ActorHandle;
pub use object::{Arg, GetError, IntoArg, ObjectId, ObjectRef, TaskError};
pub use status::{HookState, JobState, ProcessKind};

use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::time::Duration;

/// What the generated code of `#[remote]` and `#[actor]` uses. Not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::local::{create_actor, submit_function};
    pub use crate::registry::{
        ActorClass, ActorMethod, Args, InvokeResult, RemoteFunction, downcast_actor,
    };
    pub use inventory;
    pub use serde;

    /// Serializes a task's result.
    pub fn encode<R: serde::Serialize>(value: &R) -> InvokeResult {
        crate::object::encode(value).map_err(|message| crate::TaskError::Invalid {
            task: std::any::type_name::<R>().to_owned(),
            message,
        })
    }
}

/// How to start a cluster.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Worker processes to start; by default as many as the machine has cores.
    pub num_workers: Option<usize>,
    /// The tracing startup hook(s), `library:symbol[,library:symbol…]`; by default
    /// `FILAMENT_TRACING_STARTUP_HOOK`. `None`: no tracing work at all.
    pub tracing_startup_hook: Option<String>,
    /// Configuration values hooks read through their handle in every process (before the
    /// environment), e.g. `FILAMENT_SPANS_DIR`.
    pub tracing_config: BTreeMap<String, String>,
    /// A standing cluster to attach to instead of starting an embedded one: `auto` (the one
    /// `filament start` started on this machine) or the head's `host:port`. By default
    /// `FILAMENT_ADDRESS`; `None`: an embedded cluster.
    pub address: Option<String>,
    /// The standing cluster's token; by default `FILAMENT_CLUSTER_TOKEN`, else the one in this
    /// machine's session folder.
    pub cluster_token: Option<String>,
    /// The TLS files a driver attaching to a standing cluster started with `--tls` presents; by
    /// default those `FILAMENT_TLS_CA`, `FILAMENT_TLS_CERT` and `FILAMENT_TLS_KEY` name, else this
    /// machine's session's (see the README's security section).
    pub cluster_tls: Option<cluster::tls::TlsFiles>,
    /// How long a new worker process has to connect and run the tracing hook before what waits
    /// for it (`init`, an actor's calls) fails; by default 30 seconds.
    pub worker_start_timeout: Option<Duration>,
    /// Whether what workers print (task output, panics, anything on their standard output and
    /// error) is printed by the driver, each line prefixed with the worker: `(worker 2 pid=4242
    /// node=…) …`; by default yes.
    pub forward_worker_output: bool,
    /// Variables `Config::default` read that are not UTF-8 (the name and the value, lossily): an
    /// error at `init`, unless the setting they give is set in code.
    unreadable_env: Vec<(&'static str, String)>,
}

/// The value of environment variable `name` if it is set and not blank; one that is not UTF-8 is
/// recorded in `unreadable`, not taken as unset.
fn env_setting(name: &'static str, unreadable: &mut Vec<(&'static str, String)>) -> Option<String> {
    match std::env::var(name) {
        Ok(value) => Some(value).filter(|value| !value.trim().is_empty()),
        Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(raw)) => {
            unreadable.push((name, raw.to_string_lossy().into_owned()));
            None
        }
    }
}

impl Default for Config {
    /// Workers for every core; the hook from `FILAMENT_TRACING_STARTUP_HOOK`, if set and not empty.
    fn default() -> Self {
        let mut unreadable_env = Vec::new();
        Config {
            num_workers: None,
            tracing_startup_hook: env_setting(
                tracing::TRACING_STARTUP_HOOK_ENV,
                &mut unreadable_env,
            ),
            tracing_config: BTreeMap::new(),
            address: env_setting(cluster::session::ADDRESS_ENV, &mut unreadable_env),
            cluster_token: None,
            cluster_tls: None,
            worker_start_timeout: None,
            forward_worker_output: true,
            unreadable_env,
        }
    }
}

impl Config {
    /// Sets the number of worker processes.
    pub fn num_workers(mut self, workers: usize) -> Self {
        self.num_workers = Some(workers);
        self
    }

    /// Sets the tracing startup hook(s).
    pub fn tracing_startup_hook(mut self, hook: impl Into<String>) -> Self {
        self.unreadable_env
            .retain(|(name, _)| *name != tracing::TRACING_STARTUP_HOOK_ENV);
        self.tracing_startup_hook = Some(hook.into());
        self
    }

    /// Attaches to a standing cluster (`auto`, or the head's `host:port`).
    pub fn address(mut self, address: impl Into<String>) -> Self {
        self.unreadable_env
            .retain(|(name, _)| *name != cluster::session::ADDRESS_ENV);
        self.address = Some(address.into());
        self
    }

    /// Sets how long a new worker has to start (see [`Config::worker_start_timeout`]).
    pub fn worker_start_timeout(mut self, timeout: Duration) -> Self {
        self.worker_start_timeout = Some(timeout);
        self
    }

    /// Whether the driver prints what workers print (see [`Config::forward_worker_output`]).
    pub fn forward_worker_output(mut self, forward: bool) -> Self {
        self.forward_worker_output = forward;
        self
    }

    /// Sets the standing cluster's token (see [`Config::cluster_token`]).
    pub fn cluster_token(mut self, token: impl Into<String>) -> Self {
        self.cluster_token = Some(token.into());
        self
    }

    /// Sets the TLS files to attach with (see [`Config::cluster_tls`]).
    pub fn cluster_tls(mut self, files: cluster::tls::TlsFiles) -> Self {
        self.cluster_tls = Some(files);
        self
    }

    /// Adds a configuration value for the hooks.
    pub fn tracing_config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tracing_config.insert(key.into(), value.into());
        self
    }
}

/// A tracer of the tracer provider the tracing hook configured, for spans in tasks and in the
/// driver; they are children of the current span (a task's CONSUMER span, inside a task).
///
/// ```no_run
/// use filament::opentelemetry::trace::Tracer as _;
///
/// #[filament::remote]
/// fn my_func() -> String {
///     filament::tracer("my_crate").in_span("foo", |_cx| "done".to_owned())
/// }
/// # fn main() {}
/// ```
pub fn tracer(name: &'static str) -> opentelemetry::global::BoxedTracer {
    opentelemetry::global::tracer(name)
}

/// Why [`init`] failed. Nothing is left running. Its `Debug` is its message (see
/// [`GetError`]'s).
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// The tracing hook was refused in the driver; no worker was started.
    #[error(transparent)]
    Hook(#[from] tracing::HookError),
    /// A worker did not start: its hook failed there, it did not connect in time, it ended, or
    /// the cluster went away.
    #[error(transparent)]
    WorkerStart(#[from] WorkerStartError),
    /// The standing cluster could not be attached to: no head, a wrong token, no session.
    #[error("cannot attach to the cluster: {0}")]
    Attach(#[from] cluster::AttachError),
    /// The standing cluster's tracing hook, given to `filament start`, was refused in this
    /// driver (a bare library name is searched for on each machine: this one may not have it).
    #[error(
        "the cluster's tracing hook (given to `filament start`) was refused in this driver: \
         {source}. A library given by bare name is searched for on each machine of the cluster: \
         install it for this user here (`filament plugins install <path to the library>`), name \
         its folder in FILAMENT_PLUGIN_PATH, or start the cluster with the library's path"
    )]
    ClusterHook {
        /// Why the hook was refused.
        source: tracing::HookError,
    },
    /// The driver asked for a tracing hook other than the one the cluster was started with.
    #[error(
        "this driver's tracing hook {driver:?} differs from the cluster's ({cluster}); \
         drop it to use the cluster's, or start the cluster with it"
    )]
    HookMismatch {
        /// The hook the driver was given.
        driver: String,
        /// The cluster's hook (`none` if it has none).
        cluster: String,
    },
    /// The runtime is already running in this process.
    #[error("filament is already initialized in this process")]
    AlreadyInitialized,
    /// Two remote functions or actors of this program have the same Rust path (two versions of one
    /// crate, say): a call could reach the wrong one.
    #[error(
        "{id} is registered twice (two versions of the crate that defines it?): \
         calls to it could reach either; make the program hold one"
    )]
    DuplicateRemote {
        /// The path registered twice.
        id: String,
    },
    /// An environment variable that configures `init` is set but not UTF-8: it is not taken as
    /// unset (which would silently run untraced, or embedded instead of attached).
    #[error(
        "the environment variable {variable} is not UTF-8 ({value:?}); set it in UTF-8 or unset it"
    )]
    UnreadableEnv {
        /// The variable.
        variable: &'static str,
        /// Its value, with what is not UTF-8 replaced.
        value: String,
    },
    /// The operating system refused something.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The system's reason.
        #[source]
        source: std::io::Error,
    },
}

/// Why a worker process did not start serving tasks. `init` returns it for its pool's workers
/// ([`InitError::WorkerStart`]); an actor whose process fails to start fails its calls with it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerStartError {
    /// The tracing startup hook failed in the worker (it had loaded in the driver).
    #[error("the tracing hook failed in worker {worker} (pid {pid}): {message}")]
    Hook {
        /// The worker's id.
        worker: u32,
        /// Its process id.
        pid: u32,
        /// The hook's error, as the worker reported it.
        message: String,
    },
    /// The worker did not connect and run its hook within the start timeout
    /// ([`Config::worker_start_timeout`]).
    #[error("{} did not connect within {timeout:?}", who(.worker))]
    Timeout {
        /// The worker that was late; `None` when `init` gave up waiting for its pool.
        worker: Option<u32>,
        /// The start timeout.
        timeout: Duration,
    },
    /// The worker's process ended before it connected.
    #[error("worker {worker} (pid {pid}) ended ({status}) before it connected")]
    Exited {
        /// The worker's id.
        worker: u32,
        /// Its process id.
        pid: u32,
        /// How it ended.
        status: std::process::ExitStatus,
    },
    /// The worker's connection broke before it was ready.
    #[error("worker {worker} (pid {pid}) failed to start: {cause}")]
    Disconnected {
        /// The worker's id.
        worker: u32,
        /// Its process id.
        pid: u32,
        /// What happened to the connection.
        cause: String,
    },
    /// The driver refused the worker (another binary, say).
    #[error("worker {worker} (pid {pid}) was refused: {reason}")]
    Refused {
        /// The worker's id.
        worker: u32,
        /// Its process id.
        pid: u32,
        /// Why.
        reason: String,
    },
    /// The operating system could not start the worker's process.
    #[error("starting worker {worker}: {source}")]
    Spawn {
        /// The worker's id.
        worker: u32,
        /// The system's reason.
        #[source]
        source: std::sync::Arc<std::io::Error>,
    },
    /// The node the head placed the worker on could not start it.
    #[error("{message}")]
    Node {
        /// The worker's id.
        worker: u32,
        /// The head's words.
        message: String,
    },
    /// The standing cluster's head is gone: no worker can start any more.
    #[error("{cause}")]
    ClusterLost {
        /// How the head went away.
        cause: String,
    },
    /// The runtime is shutting down.
    #[error("the cluster is shutting down")]
    ShuttingDown,
}

fn who(worker: &Option<u32>) -> String {
    match worker {
        Some(worker) => format!("worker {worker}"),
        None => "the workers".to_owned(),
    }
}

/// The running cluster. Dropping it stops the workers and flushes tracing.
#[must_use = "dropping the runtime stops the cluster"]
pub struct Runtime {
    driver: std::sync::Arc<driver::Driver>,
    tracing: Option<tracing::TracingGuard>,
    job_id: String,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

impl Runtime {
    /// The job's id (`filament.job_id` in spans and resources).
    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    /// The process ids of the live worker processes (actors' included), by worker id.
    pub fn worker_pids(&self) -> Vec<(u32, u32)> {
        self.driver.worker_pids()
    }

    /// The tracing of the driver process, if a hook was given.
    pub fn tracing(&self) -> Option<&tracing::TracingGuard> {
        self.tracing.as_ref()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        local::set(None);
        spans::disable();
        // The driver's spans flush while its workers flush theirs: an exporter that hangs costs
        // the exit one shutdown timeout, not two.
        let tracing = self.tracing.take().and_then(|guard| {
            std::thread::Builder::new()
                .name("filament-driver-tracing-shutdown".into())
                .spawn(move || drop(guard.shutdown()))
                .ok()
        });
        self.driver.stop_workers(worker::STOP_GRACE);
        if let Some(tracing) = tracing {
            let _ = tracing.join();
        }
        // The head's last report of the job then has the driver's final counts.
        self.driver.leave();
    }
}

/// Starts an embedded cluster and returns it; in a worker process (this executable re-executed by
/// the driver) it serves tasks instead and never returns. Call it first thing in `main`.
///
/// The tracing hook is checked and run in the driver before any worker starts, then run in every
/// worker before its first task; a hook that fails in a worker fails `init` with the worker and the
/// cause, without retrying.
pub fn init(config: Config) -> Result<Runtime, InitError> {
    if let Some(marker) = worker::marker() {
        worker::run(&marker);
    }
    if local::current().is_some() {
        return Err(InitError::AlreadyInitialized);
    }
    if let Some(id) = registry::registry().duplicates.first() {
        return Err(InitError::DuplicateRemote { id: id.clone() });
    }
    if let Some((variable, value)) = config.unreadable_env.first() {
        return Err(InitError::UnreadableEnv {
            variable,
            value: value.clone(),
        });
    }
    let mut config = config;
    let mut hook_of_the_cluster = false;
    let attached = match &config.address {
        Some(address) => {
            let attached = cluster::client::attach(
                address,
                config.cluster_token.as_deref(),
                config.cluster_tls.as_ref(),
            )?;
            config.tracing_startup_hook =
                cluster_hook(config.tracing_startup_hook.take(), attached.hook.clone())?;
            hook_of_the_cluster = attached.hook.is_some();
            Some(attached)
        }
        None => None,
    };
    let job_id = match &attached {
        Some(attached) => attached.job_id.clone(),
        None => cluster::new_job_id(),
    };
    // A driver on a machine of the cluster is on that node, as its workers there are.
    let node_id = attached
        .as_ref()
        .and_then(|attached| attached.node_id.clone())
        .unwrap_or_else(node_id);
    let mut tracing_guard = None;
    if let Some(hook) = &config.tracing_startup_hook {
        let mut tracing = tracing::Tracing::new(hook.clone())
            .role(tracing::ProcessRole::Driver)
            .job_id(job_id.clone())
            .node_id(node_id.clone());
        for (key, value) in &config.tracing_config {
            tracing = tracing.config(key.clone(), value.clone());
        }
        tracing_guard = Some(tracing.install().map_err(|source| {
            if hook_of_the_cluster {
                InitError::ClusterHook { source }
            } else {
                InitError::Hook(source)
            }
        })?);
        spans::enable(spans::ProcessFacts {
            pid: std::process::id(),
            job_id: job_id.clone(),
            node_id: node_id.clone(),
            worker_id: None,
        });
    }
    let workers = config.num_workers.unwrap_or_else(|| match &attached {
        Some(attached) => attached.cpus.max(1) as usize,
        None => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2),
    });
    let mode = match attached {
        Some(attached) => driver::Mode::Attached(Box::new(attached)),
        None => driver::Mode::Embedded,
    };
    let driver = driver::Driver::start(
        workers,
        wire::WelcomeInfo {
            hook: config.tracing_startup_hook.clone(),
            config: config.tracing_config.into_iter().collect(),
            environment: cluster::client::hook_environment(),
            forward_output: config.forward_worker_output,
            job_id: job_id.clone(),
            node_id,
        },
        mode,
        tracing_guard
            .as_ref()
            .map(tracing::TracingGuard::report_handle),
        config
            .worker_start_timeout
            .unwrap_or(driver::WORKER_START_TIMEOUT),
    )
    .inspect_err(|_| spans::disable())?;
    local::set(Some(local::LocalRuntime::Driver(std::sync::Arc::clone(
        &driver,
    ))));
    Ok(Runtime {
        driver,
        tracing: tracing_guard,
        job_id,
    })
}

impl std::fmt::Debug for InitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// The hook of a driver attached to a cluster: the cluster's. A driver may name it too (the same
/// libraries and symbols, however spelled), but not another one.
fn cluster_hook(
    driver: Option<String>,
    cluster: Option<String>,
) -> Result<Option<String>, InitError> {
    let Some(driver) = driver else {
        return Ok(cluster);
    };
    let same = match &cluster {
        Some(cluster) => tracing::resolve(&driver)? == tracing::resolve(cluster)?,
        None => false,
    };
    if same {
        Ok(cluster)
    } else {
        Err(InitError::HookMismatch {
            driver,
            cluster: cluster.unwrap_or_else(|| "none".into()),
        })
    }
}

/// This machine's id: `/etc/machine-id` when there is one.
fn node_id() -> String {
    std::fs::read_to_string("/etc/machine-id")
        .ok()
        .map(|id| id.trim().to_owned())
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| "local".to_owned())
}

fn decode<T: DeserializeOwned>(
    id: ObjectId,
    name: std::sync::Arc<str>,
    result: Result<std::sync::Arc<Vec<u8>>, TaskError>,
) -> Result<T, GetError> {
    let bytes = result?;
    instrument::deserialize(instrument::ValueRole::Result, &bytes, |bytes| {
        postcard::from_bytes(bytes)
    })
    .map_err(|e| GetError::Deserialize {
        task: name.to_string(),
        id,
        type_name: std::any::type_name::<T>(),
        cause: e.to_string(),
    })
}

/// Waits for an object and returns its value.
pub fn get<T: DeserializeOwned>(object: &ObjectRef<T>) -> Result<T, GetError> {
    let (name, result) = local::get_raw(object.cluster, &[object.id])?
        .pop()
        .expect("one result per id");
    decode(object.id, name, result)
}

/// Waits for every object and returns their values in order; the first failure is returned.
pub fn get_all<T: DeserializeOwned>(objects: &[ObjectRef<T>]) -> Result<Vec<T>, GetError> {
    let Some(first) = objects.first() else {
        return Ok(Vec::new());
    };
    let ids: Vec<ObjectId> = objects.iter().map(|o| o.id).collect();
    local::get_raw(first.cluster, &ids)?
        .into_iter()
        .zip(ids)
        .map(|((name, result), id)| decode(id, name, result))
        .collect()
}

/// What [`wait`] returns: the objects done, and those not.
pub type WaitResult<T> = (Vec<ObjectRef<T>>, Vec<ObjectRef<T>>);

/// Splits `objects` once `num_returns` are done or `timeout` passed (`None`: no limit): at most
/// `num_returns` done objects, and the rest (pending, or done beyond `num_returns`), each list in
/// the original order, as Ray's `wait` does.
pub fn wait<T>(
    objects: Vec<ObjectRef<T>>,
    num_returns: usize,
    timeout: Option<Duration>,
) -> Result<WaitResult<T>, GetError> {
    let Some(first) = objects.first() else {
        return Ok((Vec::new(), Vec::new()));
    };
    let ids: Vec<ObjectId> = objects.iter().map(|o| o.id).collect();
    let num_returns = num_returns.min(ids.len());
    let done = local::wait_raw(first.cluster, &ids, num_returns, timeout)?;
    let mut ready = Vec::with_capacity(num_returns);
    let mut rest = Vec::new();
    for (object, done) in objects.into_iter().zip(done) {
        if done && ready.len() < num_returns {
            ready.push(object);
        } else {
            rest.push(object);
        }
    }
    Ok((ready, rest))
}

/// A random number for ids (clusters, jobs, tokens' words): the standard library's hasher keys,
/// the time and the pid.
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}
