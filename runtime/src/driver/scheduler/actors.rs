//! Actors in the scheduler: their calls in order on their process, restarts, and the end of an
//! actor (its constructor failed, its process died for good, or every handle to it was dropped).

use super::{Held, Scheduler, WorkerSlot};
use crate::object::{ObjectId, TaskError};
use crate::wire::{ActorId, TaskKind, TaskSpec, ToWorker};

impl Scheduler {
    /// Stops an actor nobody holds a handle to once it has no call left to run.
    pub(super) fn stop_if_unused(&mut self, actor: ActorId) {
        let Some(slot) = self.actors.get(&actor) else {
            return;
        };
        let busy = slot
            .worker
            .and_then(|w| self.workers.get(&w))
            .is_some_and(|w| !w.held.is_empty());
        if !slot.unused || !slot.queue.is_empty() || busy {
            return;
        }
        let starting = slot.worker.is_none() && slot.dead.is_none();
        if starting {
            // Its process is not up yet: it stops once it has run its queue (the constructor).
            return;
        }
        self.kill_actor(actor, "every handle to it was dropped".into());
        // Nobody can name it any more: it leaves no trace once its process is gone.
        if self.actors.get(&actor).is_some_and(|a| a.worker.is_none()) {
            self.actors.remove(&actor);
        }
    }

    /// Sends an actor's queued calls, in order, while their arguments are ready.
    pub(super) fn dispatch_actor(&mut self, actor: ActorId) {
        loop {
            let Some(slot) = self.actors.get_mut(&actor) else {
                return;
            };
            let Some(worker) = slot.worker else {
                return;
            };
            let Some(head) = slot.queue.front() else {
                return;
            };
            if self.waiting.contains_key(&head.id) {
                return;
            }
            let spec = slot.queue.pop_front().expect("a head");
            self.send_to_worker(worker, spec);
        }
    }

    /// The actor is dead for `cause`: its queued calls fail, its process is told to stop.
    pub(super) fn kill_actor(&mut self, actor: ActorId, cause: String) {
        let Some(slot) = self.actors.get_mut(&actor) else {
            return;
        };
        slot.dead = Some(cause.clone());
        let worker = slot.worker.take();
        let class = slot.class.clone();
        let queued: Vec<TaskSpec> = slot.queue.drain(..).collect();
        if let Some(creation) = slot.creation.take() {
            self.release_args(&creation);
        }
        // Its process has nothing left to do.
        if let Some(worker) = worker
            && self.workers.contains_key(&worker)
        {
            self.send(worker, ToWorker::Shutdown);
        }
        for spec in queued {
            self.waiting.remove(&spec.id);
            let error = TaskError::ActorDied {
                task: spec.name.to_string(),
                actor: format!("{class}({actor:016x})"),
                cause: cause.clone(),
            };
            self.release_args(&spec);
            self.complete(spec.id, Err(error));
        }
    }

    /// The process of `actor` died: if it may restart, its constructor goes first in its queue,
    /// then the calls that were in flight and may run again (the others fail), then those that
    /// waited; a new process is launched. `false` if it may not restart.
    pub(super) fn restart_actor(
        &mut self,
        actor: ActorId,
        worker: u32,
        pid: u32,
        slot: &mut WorkerSlot,
    ) -> bool {
        let (shutting_down, lost) = (self.shutting_down, self.cluster_lost.is_some());
        let Some(actor_slot) = self.actors.get_mut(&actor) else {
            return false;
        };
        // An actor nobody holds a handle to is not brought back.
        let wanted = actor_slot.dead.is_none() && !actor_slot.unused;
        if !wanted || actor_slot.restarts_left == 0 || shutting_down || lost {
            return false;
        }
        let Some(kept) = &mut actor_slot.creation else {
            return false;
        };
        kept.attempt += 1;
        let creation = kept.clone();
        actor_slot.restarts_left -= 1;
        actor_slot.worker = None;
        let actor_name = format!("{}({actor:016x})", actor_slot.class);
        let max_task_retries = actor_slot.max_task_retries;
        let mut held: Vec<(ObjectId, Held)> = slot.held.drain().collect();
        held.sort_by_key(|(id, _)| *id);
        let mut again = Vec::new();
        for (id, held) in held {
            if id.0 == actor {
                // The constructor itself: it runs again below (from the actor's own copy).
                if let Some(spec) = &held.spec {
                    self.release_args(spec);
                }
                continue;
            }
            match held.spec {
                Some(mut spec)
                    if matches!(spec.kind, TaskKind::ActorCall { .. })
                        && spec.attempt < max_task_retries =>
                {
                    spec.attempt += 1;
                    again.push(spec);
                }
                spec => {
                    if let Some(spec) = &spec {
                        self.release_args(spec);
                    }
                    let name = self
                        .objects
                        .get(&id)
                        .map(|o| o.name.clone())
                        .unwrap_or_default();
                    let error = TaskError::ActorDied {
                        task: name.to_string(),
                        actor: actor_name.clone(),
                        cause: format!(
                            "its worker {worker} (pid {pid}) died while the call ran; the actor restarts"
                        ),
                    };
                    self.complete(id, Err(error));
                }
            }
        }
        // The creation's own arguments are held by the kept copy: this run holds them again.
        self.hold_args(&creation);
        let actor_slot = self.actors.get_mut(&actor).expect("looked up above");
        for spec in again.into_iter().rev() {
            actor_slot.queue.push_front(spec);
        }
        actor_slot.queue.push_front(creation);
        self.launch_new_worker(Some(actor));
        true
    }
}
