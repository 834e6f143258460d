//! An attached driver's link to the head of its standing cluster: what the head says about the
//! job's workers, the end of the cluster, and the job's tracing counts reported to `status`.

use super::{Driver, Launcher};
use crate::WorkerStartError;
use crate::cluster::client;
use crate::cluster::proto::{ProcessStatus, ToHead};
use crate::status::{ProcessKind, ProcessTracing};
use crate::wire::{FrameReader, Outbox, ToWorker};
use std::sync::Arc;
use std::time::Duration;

/// How often an attached driver tells the head how its processes' tracing is doing (when it changed).
const STATS_INTERVAL: Duration = Duration::from_millis(500);

impl Driver {
    /// Follows what the head says about this job's workers until it goes away; then the job
    /// cannot go on, and every task waiting or to come fails, saying why.
    pub(super) fn follow_head(self: Arc<Self>, mut reader: FrameReader, address: String) {
        let cause = loop {
            match client::next_worker_failure(&mut reader, &address) {
                Ok((worker, message)) => {
                    if self.lock().sched.starting.contains_key(&worker) {
                        self.worker_start_failed(
                            worker,
                            WorkerStartError::Node { worker, message },
                        );
                    }
                }
                Err(cause) => break cause,
            }
        };
        let mut state = self.lock();
        if state.sched.shutting_down {
            return;
        }
        eprintln!("filament: {cause}; the job's tasks fail from now on");
        state.sched.cluster_lost = Some(cause.clone());
        let starting: Vec<u32> = state.sched.starting.keys().copied().collect();
        let outboxes: Vec<Outbox<ToWorker>> = state.conns.values().cloned().collect();
        state.sched.fail_if_no_workers_because(&cause, true);
        state.sched.wake = true;
        self.unlock(state);
        for worker in starting {
            self.worker_start_failed(
                worker,
                WorkerStartError::ClusterLost {
                    cause: cause.clone(),
                },
            );
        }
        // Their tasks fail as their connections end (see `on_worker_exit`).
        for outbox in outboxes {
            outbox.close();
        }
    }

    /// The driver and its live workers, with their tracing.
    pub(super) fn job_processes(&self) -> Vec<ProcessStatus> {
        let mut processes = vec![ProcessStatus {
            worker: None,
            pid: std::process::id(),
            kind: ProcessKind::Driver,
            tracing: ProcessTracing::of(self.tracing.as_ref()),
        }];
        let state = self.lock();
        processes.extend(state.sched.departed.iter().cloned());
        let mut workers: Vec<_> = state.sched.workers.iter().collect();
        workers.sort_by_key(|(id, _)| **id);
        for (id, slot) in workers {
            processes.push(state.sched.process_status(*id, slot));
        }
        processes
    }

    /// Tells the head, every [`STATS_INTERVAL`] while the driver lives, how the tracing of the
    /// job's processes is doing, when that changed.
    pub(super) fn report_stats(driver: std::sync::Weak<Driver>) {
        let mut last = Vec::new();
        loop {
            std::thread::sleep(STATS_INTERVAL);
            let Some(driver) = driver.upgrade() else {
                return;
            };
            let Launcher::Cluster { head, .. } = &driver.launcher else {
                return;
            };
            if driver.lock().sched.shutting_down {
                return;
            }
            let processes = driver.job_processes();
            if processes != last {
                if !head.send(ToHead::JobStats(processes.clone())) {
                    return;
                }
                last = processes;
            }
        }
    }
}
