//! The job's worker processes: started here (an embedded cluster) or by the nodes of a standing
//! cluster at the head's request, reaped, and given up on when they do not connect in time.

use super::{Driver, State};
use crate::WorkerStartError;
use crate::child_watch::Pidfds;
use crate::cluster::proto::ToHead;
use crate::wire::Outbox;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where workers come from and connect.
pub(super) enum Launcher {
    /// An embedded cluster: this process starts them; they connect to a Unix socket.
    Local {
        socket_dir: PathBuf,
        socket: PathBuf,
        /// The token workers present, given to each on its standard input.
        token: String,
    },
    /// A standing cluster: the head has nodes start them; they connect over TCP with the token.
    Cluster {
        head: Outbox<ToHead>,
        token: String,
        listening: SocketAddr,
        /// The cluster's TLS: workers connect with it, and plain ones are refused.
        tls: Option<Arc<crate::cluster::tls::Tls>>,
    },
}

impl Driver {
    /// Starts a worker process: this executable, re-executed with the worker marker.
    pub(super) fn spawn_worker(&self) -> Result<u32, WorkerStartError> {
        let id = {
            let mut state = self.lock();
            let id = state.sched.reserve_worker(None)?;
            state.starting_since.insert(id, Instant::now());
            id
        };
        self.launch_worker(id, false)?;
        Ok(id)
    }

    /// Starts the process of a reserved worker, or asks the head to have a node start it.
    pub(super) fn launch_worker(&self, id: u32, actor: bool) -> Result<(), WorkerStartError> {
        let (socket, token) = match &self.launcher {
            Launcher::Local { socket, token, .. } => (socket, token),
            Launcher::Cluster { head, .. } => {
                // Its start deadline is the reaper's to watch.
                self.alarm.ring();
                return if head.send(ToHead::StartWorker { worker: id, actor }) {
                    Ok(())
                } else {
                    Err(WorkerStartError::ClusterLost {
                        cause: format!("worker {id} cannot be started: the cluster's head is gone"),
                    })
                };
            }
        };
        // /proc/self/exe, not current_exe(): the path stays right even if the binary was rebuilt.
        // Its argv[0] is the driver's, so that `ps` shows the program's name.
        let mut args = std::env::args_os();
        let mut command = Command::new("/proc/self/exe");
        if let Some(name) = args.next() {
            std::os::unix::process::CommandExt::arg0(&mut command, name);
        }
        let child = command
            .args(args)
            .env(
                crate::worker::WORKER_ENV,
                crate::worker::marker_for(&format!("{}:{id}", socket.display())),
            )
            .stdin(Stdio::piped())
            .spawn()
            .map_err(|source| WorkerStartError::Spawn {
                worker: id,
                source: Arc::new(source),
            })?;
        // One line, far below a pipe's buffer: the write never waits for the worker. The pipe
        // closes right after: the worker's standard input ends there, as a null one would.
        let mut child = child;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            let _ = writeln!(stdin, "{token}");
        }
        // Started after shutdown took the children, it finds no driver and exits by itself.
        self.children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, child));
        self.alarm.ring();
        Ok(())
    }

    pub(super) fn worker_start_failed(&self, worker: u32, error: WorkerStartError) {
        let mut state = self.lock();
        state.starting_since.remove(&worker);
        state.sched.worker_start_failed(worker, error);
        self.unlock(state);
    }

    /// Reaps worker processes that ended, until shutdown. One that ended before it connected
    /// fails what waited for it (an actor's calls, `init`), rather than leaving them waiting; one
    /// that neither connects nor ends in time is given up on. Between rounds it sleeps until a
    /// child ends, a start deadline passes or the alarm rings: an idle driver does not wake.
    pub(super) fn watch_children(self: Arc<Self>) {
        let mut pidfds = Pidfds::default();
        while !self.lock().sched.shutting_down {
            let mut ended = Vec::new();
            self.children
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain_mut(|(worker, child)| match child.try_wait() {
                    Ok(Some(status)) => {
                        ended.push((*worker, child.id(), status));
                        false
                    }
                    _ => true,
                });
            for (worker, pid, status) in ended {
                if self.lock().sched.starting.contains_key(&worker) {
                    self.worker_start_failed(
                        worker,
                        WorkerStartError::Exited {
                            worker,
                            pid,
                            status,
                        },
                    );
                }
            }
            // A worker that neither connects nor ends (a node that never started it, a process
            // stuck before `init`) must not keep an actor's calls or `init` waiting forever.
            let (late, next_deadline) = {
                let mut state = self.lock();
                let State {
                    sched,
                    starting_since,
                    ..
                } = &mut *state;
                starting_since.retain(|worker, _| sched.starting.contains_key(worker));
                let late: Vec<u32> = starting_since
                    .iter()
                    .filter(|(_, since)| since.elapsed() > self.start_timeout)
                    .map(|(worker, _)| *worker)
                    .collect();
                // Just past the first deadline, when that worker is late.
                let next = starting_since
                    .values()
                    .map(|since| *since + self.start_timeout + Duration::from_millis(1))
                    .min();
                (late, next)
            };
            for worker in late {
                self.lock().starting_since.remove(&worker);
                self.worker_start_failed(
                    worker,
                    WorkerStartError::Timeout {
                        worker: Some(worker),
                        timeout: self.start_timeout,
                    },
                );
                let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((_, child)) = children.iter_mut().find(|(id, _)| *id == worker) {
                    let _ = child.kill();
                }
            }
            // A child is in `children` until reaped: its pid is still its own.
            pidfds.watch(
                self.children
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .map(|(_, child)| child.id()),
            );
            pidfds.sleep(&self.alarm, next_deadline);
        }
    }
}
