//! A node: starts the worker processes of jobs on this machine, notices when they end, and ends them
//! with their job. The head runs one for its own machine; `filament start --address` runs one that
//! takes its orders from the head over TCP.

use super::proto::JobRequest;
use crate::child_watch::{Alarm, Pidfds};
use crate::worker::WORKER_ENV;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The variable that tells a worker its node's id.
pub(crate) const NODE_ID_ENV: &str = "FILAMENT_NODE_ID";
/// Set in workers a node starts: their standard input is a pipe from the node. Its first line is
/// the cluster token (kept out of the environment, which every process a task starts would
/// inherit); its end means the job ended or the node is gone (a worker never outlives its node).
pub(crate) const NODE_PIPE_ENV: &str = "FILAMENT_NODE_PIPE";
/// [`NODE_PIPE_ENV`]'s value when the TLS files follow the token on the pipe.
pub(crate) const NODE_PIPE_TLS: &str = "tls";

/// Something a node's workers did, for the head.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) enum NodeEvent {
    Spawned {
        job: String,
        worker: u32,
        pid: u32,
    },
    SpawnFailed {
        job: String,
        worker: u32,
        message: String,
    },
    Exited {
        job: String,
        worker: u32,
        pid: u32,
        status: String,
    },
}

struct Running {
    job: String,
    worker: u32,
    child: Child,
    /// The worker's standard input: dropping it tells the worker its node is gone.
    pipe: Option<ChildStdin>,
    /// When it was told to go (its job ended); killed if still there a while later.
    ending: Option<Instant>,
}

/// How long a worker whose job ended may take to exit before it is killed: as long as its driver
/// would give it, time to flush its spans included.
const END_GRACE: Duration = crate::worker::STOP_GRACE;

/// The worker processes of one machine.
pub(crate) struct NodeAgent {
    pub(crate) node_id: String,
    token: String,
    /// The TLS files workers connect to their driver with, after the token on their input.
    tls: Option<super::tls::TlsPem>,
    running: Mutex<Vec<Running>>,
    events: Box<dyn Fn(NodeEvent) + Send + Sync>,
    /// Wakes the reaper for a worker started or a job ended.
    alarm: Alarm,
}

impl NodeAgent {
    pub(crate) fn new(
        node_id: String,
        token: String,
        tls: Option<super::tls::TlsPem>,
        events: Box<dyn Fn(NodeEvent) + Send + Sync>,
    ) -> NodeAgent {
        NodeAgent {
            node_id,
            token,
            tls,
            running: Mutex::new(Vec::new()),
            events,
            alarm: Alarm::new(),
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, Vec<Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts worker `worker` of `job`: the job's executable in worker mode, connecting to its
    /// driver. The outcome is reported as an event.
    pub(crate) fn spawn(&self, job: String, worker: u32, request: &JobRequest) {
        let cwd = if request.cwd.is_dir() {
            request.cwd.clone()
        } else {
            std::env::temp_dir()
        };
        let mut command = Command::new(&request.exe);
        // The job's configuration is the driver's: none of the daemon's own `OTEL_*`,
        // `FILAMENT_*` or `RUST_*` variables may leak into its workers.
        for (key, _) in std::env::vars_os() {
            if key.to_str().is_some_and(|k| {
                super::client::JOB_ENV_PREFIXES
                    .iter()
                    .any(|p| k.starts_with(p))
            }) {
                command.env_remove(key);
            }
        }
        let spawned = command
            .args(&request.args)
            .current_dir(cwd)
            .envs(request.env.iter().map(|(k, v)| (k, v)))
            .env(
                WORKER_ENV,
                crate::worker::marker_for(&format!("tcp:{}:{worker}", request.worker_address)),
            )
            .env_remove(super::session::TOKEN_ENV)
            .env(NODE_ID_ENV, &self.node_id)
            .env(
                NODE_PIPE_ENV,
                if self.tls.is_some() {
                    NODE_PIPE_TLS
                } else {
                    "1"
                },
            )
            .stdin(Stdio::piped())
            .spawn();
        match spawned {
            Ok(mut child) => {
                use std::io::Write;
                let pid = child.id();
                let mut pipe = child.stdin.take();
                // A few lines, far below a pipe's buffer: the write never waits for the worker.
                let tls = self
                    .tls
                    .as_ref()
                    .map(|tls| tls.to_lines())
                    .unwrap_or_default();
                if let Some(pipe) = &mut pipe
                    && let Err(e) = write!(pipe, "{}\n{tls}", self.token)
                {
                    super::log(&format!("job {job}: worker {worker} (pid {pid}): {e}"));
                }
                self.running().push(Running {
                    job: job.clone(),
                    worker,
                    child,
                    pipe,
                    ending: None,
                });
                self.alarm.ring();
                (self.events)(NodeEvent::Spawned { job, worker, pid });
            }
            Err(e) => (self.events)(NodeEvent::SpawnFailed {
                job,
                worker,
                message: format!(
                    "node {} could not start {}: {e}",
                    self.node_id,
                    request.exe.display()
                ),
            }),
        }
    }

    /// The job ended: its workers are told (their pipe closes) and killed if they linger.
    pub(crate) fn end_job(&self, job: &str) {
        let now = Instant::now();
        for running in self.running().iter_mut().filter(|r| r.job == job) {
            running.pipe = None;
            running.ending.get_or_insert(now);
        }
        self.alarm.ring();
    }

    /// Reaps workers that ended and kills those that outstayed their job, forever (run it on a
    /// thread of its own). Between rounds it sleeps until a worker ends, one outstays its job, or
    /// one is started or told to go: an idle node does not wake.
    pub(crate) fn watch(&self) {
        let mut pidfds = Pidfds::default();
        loop {
            let next_deadline = self.reap();
            // A worker is in `running` until reaped: its pid is still its own.
            pidfds.watch(self.running().iter().map(|r| r.child.id()));
            pidfds.sleep(&self.alarm, next_deadline);
        }
    }

    /// Reaps the workers that ended, kills those that outstayed their job; returns when the next
    /// one will have (just past its grace).
    fn reap(&self) -> Option<Instant> {
        let mut ended = Vec::new();
        let mut running = self.running();
        running.retain_mut(|running| {
            if running
                .ending
                .is_some_and(|since| since.elapsed() > END_GRACE)
            {
                let _ = running.child.kill();
            }
            match running.child.try_wait() {
                Ok(Some(status)) => {
                    ended.push(NodeEvent::Exited {
                        job: running.job.clone(),
                        worker: running.worker,
                        pid: running.child.id(),
                        status: status.to_string(),
                    });
                    false
                }
                _ => true,
            }
        });
        // Those killed already are watched for their end.
        let next_deadline = running
            .iter()
            .filter_map(|r| r.ending)
            .map(|since| since + END_GRACE + Duration::from_millis(1))
            .filter(|at| *at > Instant::now())
            .min();
        drop(running);
        for event in ended {
            (self.events)(event);
        }
        next_deadline
    }

    /// Kills every worker and waits for them (the node stops).
    pub(crate) fn kill_all(&self) {
        let mut running = std::mem::take(&mut *self.running());
        for r in &mut running {
            let _ = r.child.kill();
        }
        for r in &mut running {
            let _ = r.child.wait();
        }
    }
}
