//! The scheduler alone: events in, effects out, no process, socket or clock.

use super::*;
use crate::wire::RetryPolicy;
use std::collections::{BTreeMap, HashSet};

fn task(id: u64, args: Vec<Arg>, max_retries: u32) -> TaskSpec {
    TaskSpec {
        id: ObjectId(id),
        kind: TaskKind::Function {
            function: "f".into(),
        },
        name: format!("f{id}").into(),
        args,
        trace_context: Vec::new(),
        retry: RetryPolicy {
            max_retries,
            retry_exceptions: false,
        },
        attempt: 0,
    }
}

fn call(id: u64, actor: ActorId, args: Vec<Arg>) -> TaskSpec {
    TaskSpec {
        id: ObjectId(id),
        kind: TaskKind::ActorCall {
            actor,
            method: "m".into(),
        },
        name: format!("A::m{id}").into(),
        args,
        trace_context: Vec::new(),
        retry: RetryPolicy::NEVER,
        attempt: 0,
    }
}

/// A started scheduler with `n` pool workers connected (ids 1..=n).
fn with_workers(n: u32) -> Scheduler {
    let mut s = Scheduler::default();
    for _ in 0..n {
        let w = s.reserve_worker(None).expect("reserved");
        s.worker_ready(w, 1000 + w, false).expect("ready");
    }
    s.started = true;
    s.effects.clear();
    s
}

/// The tasks sent to each worker since the last call, in order, with their attempt.
fn sent(s: &mut Scheduler) -> Vec<(u32, u64, u32)> {
    s.effects
        .drain(..)
        .filter_map(|e| match e {
            Effect::Send(w, ToWorker::Execute(x)) => Some((w, x.id.0, x.attempt)),
            _ => None,
        })
        .collect()
}

/// The workers launched for actors since the last call.
fn launched(s: &mut Scheduler) -> Vec<u32> {
    s.effects
        .drain(..)
        .filter_map(|e| match e {
            Effect::Launch(w, true) => Some(w),
            _ => None,
        })
        .collect()
}

/// Creates actor `actor` (with `restarts`) and connects its process; returns the process.
fn actor_up(s: &mut Scheduler, actor: ActorId, restarts: wire::ActorRestarts) -> u32 {
    s.submit(TaskSpec {
        kind: TaskKind::CreateActor {
            class: "A".into(),
            actor,
            restarts,
        },
        name: "A::new".into(),
        ..task(actor, vec![], 0)
    });
    let w = launched(s)[0];
    s.worker_ready(w, 2000 + w, false)
        .expect("the actor's process");
    assert_eq!(sent(s), vec![(w, actor, 0)], "the constructor");
    done(s, w, actor);
    w
}

fn done(s: &mut Scheduler, worker: u32, id: u64) {
    s.on_message(
        worker,
        ToDriver::Done {
            id: ObjectId(id),
            result: Ok(vec![id as u8]),
            refs: Vec::new(),
        },
    );
}

#[test]
fn an_actors_calls_keep_their_order_when_an_argument_resolves_late() {
    let mut s = with_workers(1);
    s.submit(task(1, vec![], 0));
    assert_eq!(sent(&mut s), vec![(1, 1, 0)]);
    let actor = 50;
    s.submit(TaskSpec {
        kind: TaskKind::CreateActor {
            class: "A".into(),
            actor,
            restarts: Default::default(),
        },
        name: "A::new".into(),
        ..task(actor, vec![], 0)
    });
    let launched = launched(&mut s);
    assert_eq!(launched.len(), 1, "one process for the actor");
    // The first call waits for task 1's result; the second has no argument.
    s.submit(call(2, actor, vec![Arg::Ref(ObjectId(1))]));
    s.submit(call(3, actor, vec![]));
    s.worker_ready(launched[0], 2000, false)
        .expect("the actor's process");
    assert_eq!(
        sent(&mut s),
        vec![(launched[0], actor, 0)],
        "only the constructor: call 3 must not overtake call 2"
    );
    done(&mut s, 1, 1);
    assert_eq!(
        sent(&mut s),
        vec![(launched[0], 2, 0), (launched[0], 3, 0)],
        "both calls, in submission order, once the argument exists"
    );
}

#[test]
fn a_dead_worker_retries_exactly_the_tasks_it_held_and_fails_those_out_of_retries() {
    let mut s = with_workers(2);
    for id in 1..=6 {
        s.submit(task(id, vec![], if id % 2 == 0 { 1 } else { 0 }));
    }
    let first = sent(&mut s);
    let on_1: HashSet<u64> = first
        .iter()
        .filter(|(w, ..)| *w == 1)
        .map(|(_, id, _)| *id)
        .collect();
    assert_eq!(first.len(), 6);
    assert!(!on_1.is_empty() && on_1.len() < 6, "both workers got tasks");
    assert!(s.worker_exited(1, 1001));
    // Its even tasks run again (attempt 1) on worker 2; its odd ones fail.
    let again: HashSet<(u64, u32)> = sent(&mut s)
        .into_iter()
        .inspect(|(w, ..)| assert_eq!(*w, 2, "only worker 2 is left"))
        .map(|(_, id, attempt)| (id, attempt))
        .collect();
    let expected: HashSet<(u64, u32)> = on_1
        .iter()
        .filter(|id| *id % 2 == 0)
        .map(|id| (*id, 1))
        .collect();
    assert_eq!(again, expected);
    for id in &on_1 {
        let value = s.objects[&ObjectId(*id)].value.as_ref();
        if id % 2 == 1 {
            assert!(
                matches!(value, Some(Err(TaskError::WorkerDied { worker: 1, .. }))),
                "task {id}: {value:?}"
            );
        } else {
            assert!(value.is_none(), "task {id} runs again");
        }
    }
    // Worker 2's own tasks were not touched, and a replacement was launched.
    assert!(s.starting.contains_key(&3));
}

#[test]
fn an_idle_worker_takes_back_tasks_queued_behind_a_long_one_and_none_runs_twice() {
    let mut s = with_workers(1);
    for id in 1..=10 {
        s.submit(task(id, vec![], 3));
    }
    assert_eq!(sent(&mut s).len(), 10, "all on worker 1");
    let w = s.reserve_worker(None).expect("reserved");
    s.worker_ready(w, 1002, false).expect("ready");
    let asked: Vec<(u32, u32)> = s
        .effects
        .drain(..)
        .filter_map(|e| match e {
            Effect::Send(w, ToWorker::GiveBack(n)) => Some((w, n)),
            _ => None,
        })
        .collect();
    assert_eq!(asked, vec![(1, 5)], "half of what worker 1 holds");
    // Meanwhile worker 1 finished task 10, then gives back what it had not started: 6..=9
    // (and 10, which it ran: a stale id the driver must ignore).
    done(&mut s, 1, 10);
    s.effects.clear();
    s.on_message(1, ToDriver::Returned((6..=10).map(ObjectId).collect()));
    let moved = sent(&mut s);
    assert_eq!(
        moved,
        (6..=9).map(|id| (w, id, 0)).collect::<Vec<_>>(),
        "the given-back tasks, in order, on the idle worker; task 10 not again"
    );
    assert!(matches!(
        s.objects[&ObjectId(10)].value,
        Some(Ok(ref v)) if v.as_slice() == [10]
    ));
}

#[test]
fn a_panic_is_retried_only_with_retry_exceptions() {
    let mut s = with_workers(1);
    let mut retried = task(1, vec![], 2);
    retried.retry.retry_exceptions = true;
    s.submit(retried);
    s.submit(task(2, vec![], 2));
    sent(&mut s);
    let panic = |id: u64| ToDriver::Done {
        id: ObjectId(id),
        result: Err(TaskError::Panicked {
            task: format!("f{id}"),
            message: "boom".into(),
        }),
        refs: Vec::new(),
    };
    for attempt in 1..=2 {
        s.on_message(1, panic(1));
        assert_eq!(sent(&mut s), vec![(1, 1, attempt)]);
    }
    s.on_message(1, panic(1));
    s.on_message(1, panic(2));
    assert!(
        sent(&mut s).is_empty(),
        "out of retries, and 2 never retries"
    );
    for id in [1, 2] {
        assert!(matches!(
            s.objects[&ObjectId(id)].value,
            Some(Err(TaskError::Panicked { .. }))
        ));
    }
}

#[test]
fn an_actor_with_max_restarts_comes_back_its_calls_in_flight_failing_and_later_ones_served() {
    let mut s = with_workers(1);
    let actor = 50;
    let restarts = wire::ActorRestarts {
        max_restarts: 1,
        max_task_retries: 0,
    };
    let w = actor_up(&mut s, actor, restarts);
    s.submit(call(51, actor, vec![]));
    assert_eq!(sent(&mut s), vec![(w, 51, 0)]);
    assert!(s.worker_exited(w, 2000 + w));
    assert!(matches!(
        &s.objects[&ObjectId(51)].value,
        Some(Err(TaskError::ActorDied { cause, .. })) if cause.contains("restarts")
    ));
    // Calls made while it restarts wait for it, behind the constructor's second run.
    s.submit(call(52, actor, vec![]));
    let again = launched(&mut s);
    assert_eq!(again.len(), 1, "a new process for the actor");
    s.worker_ready(again[0], 3000, false).expect("ready");
    assert_eq!(sent(&mut s), vec![(again[0], actor, 1), (again[0], 52, 0)]);
    done(&mut s, again[0], actor);
    done(&mut s, again[0], 52);
    assert!(matches!(s.objects[&ObjectId(52)].value, Some(Ok(_))));
    // No restart left: the next death is final.
    s.submit(call(53, actor, vec![]));
    sent(&mut s);
    assert!(s.worker_exited(again[0], 3000));
    assert!(launched(&mut s).is_empty());
    s.submit(call(54, actor, vec![]));
    assert!(matches!(
        s.objects[&ObjectId(53)].value,
        Some(Err(TaskError::WorkerDied { .. }))
    ));
    assert!(matches!(
        s.objects[&ObjectId(54)].value,
        Some(Err(TaskError::ActorDied { .. }))
    ));
}

#[test]
fn with_max_task_retries_a_call_in_flight_runs_again_on_the_restarted_actor() {
    let mut s = with_workers(1);
    let actor = 50;
    let restarts = wire::ActorRestarts {
        max_restarts: 2,
        max_task_retries: 1,
    };
    let w = actor_up(&mut s, actor, restarts);
    s.submit(call(51, actor, vec![]));
    s.submit(call(52, actor, vec![]));
    sent(&mut s);
    assert!(s.worker_exited(w, 2000 + w));
    let again = launched(&mut s)[0];
    s.worker_ready(again, 3000, false).expect("ready");
    assert_eq!(
        sent(&mut s),
        vec![(again, actor, 1), (again, 51, 1), (again, 52, 1)],
        "the constructor, then the calls in their order"
    );
}

#[test]
fn a_dead_workers_references_are_released() {
    let mut s = with_workers(2);
    // Worker 1 submits a task (it holds the result's reference), which runs on worker 2.
    s.on_message(1, ToDriver::Submit(task(7, vec![], 0)));
    let placed = sent(&mut s);
    let (runner, ..) = placed[0];
    done(&mut s, runner, 7);
    assert!(s.objects.contains_key(&ObjectId(7)), "held by worker 1");
    s.worker_exited(1, 1001);
    assert!(
        !s.objects.contains_key(&ObjectId(7)),
        "released with worker 1"
    );
}

#[test]
fn an_actor_whose_last_handle_is_dropped_stops_after_its_calls_and_leaves_nothing() {
    let mut s = with_workers(1);
    let actor = 50;
    let w = actor_up(&mut s, actor, Default::default());
    s.submit(call(51, actor, vec![]));
    s.submit(call(52, actor, vec![]));
    sent(&mut s);
    // The last handle goes while two calls are in flight: they finish first.
    s.release(ObjectId(actor));
    assert!(s.actors.contains_key(&actor));
    done(&mut s, w, 51);
    assert!(sent(&mut s).is_empty());
    assert!(
        !s.effects
            .iter()
            .any(|e| matches!(e, Effect::Send(_, ToWorker::Shutdown)))
    );
    done(&mut s, w, 52);
    assert!(
        s.effects
            .iter()
            .any(|e| matches!(e, Effect::Send(x, ToWorker::Shutdown) if *x == w)),
        "its process is told to stop"
    );
    assert!(!s.actors.contains_key(&actor), "no trace of the actor");
    s.worker_exited(w, 2000 + w);
    assert!(!s.workers.contains_key(&w));
    for id in [51, 52] {
        s.release(ObjectId(id));
    }
    assert!(
        s.objects.is_empty(),
        "{:?}",
        s.objects.keys().collect::<Vec<_>>()
    );
}

#[test]
fn a_result_holding_references_keeps_them_until_it_is_freed() {
    let mut s = with_workers(1);
    s.submit(task(1, vec![], 0));
    s.on_message(1, ToDriver::Submit(task(2, vec![], 0)));
    sent(&mut s);
    done(&mut s, 1, 2);
    // Task 1 returns a value holding a reference to 2; worker 1 then drops its own.
    s.on_message(
        1,
        ToDriver::Done {
            id: ObjectId(1),
            result: Ok(vec![]),
            refs: vec![ObjectId(2)],
        },
    );
    s.on_message(1, ToDriver::Release(vec![ObjectId(2)]));
    assert!(s.objects.contains_key(&ObjectId(2)), "held by result 1");
    // A task submitted with a value holding it keeps it too, until it is done.
    s.submit(TaskSpec {
        args: vec![Arg::Holding {
            value: vec![],
            refs: vec![ObjectId(2)],
        }],
        ..task(3, vec![], 0)
    });
    s.release(ObjectId(1));
    assert!(!s.objects.contains_key(&ObjectId(1)));
    assert!(
        s.objects.contains_key(&ObjectId(2)),
        "held by task 3's argument"
    );
    sent(&mut s);
    done(&mut s, 1, 3);
    s.release(ObjectId(3));
    assert!(
        s.objects.is_empty(),
        "{:?}",
        s.objects.keys().collect::<Vec<_>>()
    );
}

#[test]
fn an_actor_calls_argument_holding_a_reference_keeps_it_until_the_call_is_done() {
    let mut s = with_workers(1);
    let actor = 50;
    let w = actor_up(&mut s, actor, Default::default());
    s.submit(task(1, vec![], 0));
    sent(&mut s);
    done(&mut s, 1, 1);
    s.submit(call(
        51,
        actor,
        vec![Arg::Holding {
            value: vec![],
            refs: vec![ObjectId(1)],
        }],
    ));
    // The submitter drops its handle; the call is on its way, not yet deserialized.
    s.release(ObjectId(1));
    assert_eq!(sent(&mut s), vec![(w, 51, 0)]);
    assert!(
        s.objects.contains_key(&ObjectId(1)),
        "held by the call in flight"
    );
    s.on_message(w, ToDriver::Borrow(vec![ObjectId(1)]));
    done(&mut s, w, 51);
    assert!(
        s.objects.contains_key(&ObjectId(1)),
        "borrowed by the actor's process"
    );
    s.on_message(w, ToDriver::Release(vec![ObjectId(1)]));
    assert!(!s.objects.contains_key(&ObjectId(1)));
}

#[test]
fn an_actor_that_restarts_holds_the_references_inside_its_constructors_arguments_just_once() {
    let mut s = with_workers(1);
    s.submit(task(1, vec![], 0));
    sent(&mut s);
    done(&mut s, 1, 1);
    let actor = 50;
    // The constructor's argument holds a reference to 1: the submitter's serialization took one,
    // which it drops once the submission is made.
    s.add_ref(ObjectId(1));
    s.submit(TaskSpec {
        kind: TaskKind::CreateActor {
            class: "A".into(),
            actor,
            restarts: wire::ActorRestarts {
                max_restarts: 1,
                max_task_retries: 0,
            },
        },
        name: "A::new".into(),
        args: vec![Arg::Holding {
            value: vec![],
            refs: vec![ObjectId(1)],
        }],
        ..task(actor, vec![], 0)
    });
    s.release(ObjectId(1));
    let w = launched(&mut s)[0];
    s.worker_ready(w, 2000, false).expect("ready");
    sent(&mut s);
    done(&mut s, w, actor);
    assert!(s.worker_exited(w, 2000));
    let again = launched(&mut s)[0];
    s.worker_ready(again, 3000, false).expect("ready");
    assert_eq!(sent(&mut s), vec![(again, actor, 1)]);
    done(&mut s, again, actor);
    // The last handle goes: the actor stops, and the kept constructor lets go of 1.
    s.release(ObjectId(actor));
    s.worker_exited(again, 3000);
    assert!(
        s.objects.contains_key(&ObjectId(1)),
        "still the submitter's"
    );
    s.release(ObjectId(1));
    assert!(
        s.objects.is_empty(),
        "{:?}",
        s.objects.keys().collect::<Vec<_>>()
    );
}

/// A worker as the property test plays it: what it received, in order; the first runs.
#[derive(Default)]
struct FakeWorker {
    queue: VecDeque<(u64, u32)>,
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

    /// Random submissions (with arguments on earlier results), completions, give-backs,
    /// worker deaths and released handles: no task attempt runs twice, no object is freed
    /// while referenced, and once every task is done and every handle dropped, nothing is
    /// left.
    #[test]
    fn references_count_to_zero_on_every_path(ops in proptest::collection::vec((0u8..7, 0usize..64), 1..200)) {
        let mut s = with_workers(2);
        let mut fakes: BTreeMap<u32, FakeWorker> = BTreeMap::new();
        fakes.insert(1, FakeWorker::default());
        fakes.insert(2, FakeWorker::default());
        let mut handles: Vec<u64> = Vec::new();
        let mut runs: HashSet<(u64, u32)> = HashSet::new();
        let mut next = 1u64;
        let mut deaths = 0;
        // The references inside each task's arguments: the worker running it borrows them
        // (as deserializing them would) and releases them when done.
        let mut inside: HashMap<u64, Vec<ObjectId>> = HashMap::new();
        let apply = |s: &mut Scheduler, fakes: &mut BTreeMap<u32, FakeWorker>| {
            // Carry out the effects the way the shell and the workers would.
            while !s.effects.is_empty() {
                for effect in std::mem::take(&mut s.effects) {
                    match effect {
                        Effect::Send(w, ToWorker::Execute(x)) => {
                            fakes.get_mut(&w).expect("a live worker").queue.push_back((x.id.0, x.attempt));
                        }
                        Effect::Send(w, ToWorker::GiveBack(n)) => {
                            let fake = fakes.get_mut(&w).expect("a live worker");
                            let keep = fake.queue.len().saturating_sub(n as usize).max(1.min(fake.queue.len()));
                            let back: Vec<ObjectId> = fake.queue.drain(keep..).map(|(id, _)| ObjectId(id)).collect();
                            s.on_message(w, ToDriver::Returned(back));
                        }
                        Effect::Launch(w, false) => {
                            fakes.insert(w, FakeWorker::default());
                            s.worker_ready(w, 1000 + w, false).expect("ready");
                        }
                        _ => {}
                    }
                }
            }
        };
        for (op, pick) in ops {
            match op {
                0 | 1 => {
                    let args = handles
                        .iter()
                        .rev()
                        .take(pick % 3)
                        .map(|id| Arg::Ref(ObjectId(*id)))
                        .collect();
                    s.submit(task(next, args, (pick % 3) as u32));
                    handles.push(next);
                    next += 1;
                }
                6 => {
                    // A value holding references to earlier results.
                    let refs: Vec<ObjectId> = handles.iter().rev().take(1 + pick % 3).map(|id| ObjectId(*id)).collect();
                    inside.insert(next, refs.clone());
                    s.submit(task(next, vec![Arg::Holding { value: vec![], refs }], (pick % 2) as u32));
                    handles.push(next);
                    next += 1;
                }
                2 | 3 => {
                    // A worker runs the task at the head of its queue and finishes it.
                    let ids: Vec<u32> = fakes.keys().copied().collect();
                    let w = ids[pick % ids.len()];
                    if let Some((id, attempt)) = fakes.get_mut(&w).expect("listed").queue.pop_front() {
                        proptest::prop_assert!(runs.insert((id, attempt)), "task {id} attempt {attempt} ran twice");
                        let borrowed = inside.get(&id).cloned().unwrap_or_default();
                        for dep in &borrowed {
                            proptest::prop_assert!(s.objects.contains_key(dep), "task {id}'s argument holds {dep}, freed");
                        }
                        s.on_message(w, ToDriver::Borrow(borrowed.clone()));
                        done(&mut s, w, id);
                        s.on_message(w, ToDriver::Release(borrowed));
                    }
                }
                4 if deaths < 5 => {
                    let ids: Vec<u32> = fakes.keys().copied().collect();
                    let w = ids[pick % ids.len()];
                    // What it ran or held is lost with it; each counts as an attempt.
                    let fake = fakes.remove(&w).expect("listed");
                    for (id, attempt) in fake.queue {
                        runs.insert((id, attempt));
                    }
                    s.worker_exited(w, 1000 + w);
                    deaths += 1;
                }
                _ => {
                    if !handles.is_empty() {
                        let id = handles.swap_remove(pick % handles.len());
                        s.release(ObjectId(id));
                    }
                }
            }
            apply(&mut s, &mut fakes);
            for id in &handles {
                proptest::prop_assert!(s.objects.contains_key(&ObjectId(*id)), "object {id} freed while referenced");
            }
        }
        // Drain: the workers finish everything, then every handle is dropped.
        while let Some((&w, _)) = fakes.iter().find(|(_, f)| !f.queue.is_empty()) {
            let (id, attempt) = fakes.get_mut(&w).expect("found").queue.pop_front().expect("not empty");
            proptest::prop_assert!(runs.insert((id, attempt)), "task {id} attempt {attempt} ran twice");
            let borrowed = inside.get(&id).cloned().unwrap_or_default();
            s.on_message(w, ToDriver::Borrow(borrowed.clone()));
            done(&mut s, w, id);
            s.on_message(w, ToDriver::Release(borrowed));
            apply(&mut s, &mut fakes);
        }
        for id in handles.drain(..) {
            let value = s.objects.get(&ObjectId(id)).and_then(|o| o.value.as_ref());
            proptest::prop_assert!(value.is_some(), "task {id} never finished");
            s.release(ObjectId(id));
        }
        proptest::prop_assert!(s.objects.is_empty(), "leaked: {:?}", s.objects.keys().collect::<Vec<_>>());
        proptest::prop_assert!(s.ready.is_empty() && s.parked.is_empty() && s.waiting.is_empty());
    }
}
