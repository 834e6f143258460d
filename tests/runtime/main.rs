//! The task runtime, traced end to end: real driver and worker processes (`cluster-program`), the
//! local-file hook in every process, spans read back from the files with the OTLP decoder.

use filament_tests::{ReadSpan, Run, assert_child_of, read_spans_dir};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};
use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

const LOCAL_FILE: &str = "filament_local_file:setup_tracing";

fn run_program(args: &[&str], hook: Option<&str>, envs: &[(&str, &str)]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_cluster-program"));
    command
        .args(args)
        .env("FILAMENT_SPANS_DIR", dir.path())
        .env("TEST_WORKERS", "2")
        .env("RUST_BACKTRACE", "0");
    match hook {
        Some(hook) => command.env("FILAMENT_TRACING_STARTUP_HOOK", hook),
        None => command.env_remove("FILAMENT_TRACING_STARTUP_HOOK"),
    };
    for (key, value) in envs {
        command.env(key, value);
    }
    Run::new(command.output().expect("cluster-program runs"), dir.path())
}

fn run(args: &[&str]) -> Run {
    let run = run_program(args, Some(LOCAL_FILE), &[]);
    assert!(
        run.output.status.success(),
        "{args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&run.output.stdout),
        String::from_utf8_lossy(&run.output.stderr)
    );
    run
}

fn string(s: &str) -> Value {
    Value::StringValue(s.to_owned())
}

fn attr<'a>(span: &'a ReadSpan, key: &str) -> &'a Value {
    span.attribute(key)
        .unwrap_or_else(|| panic!("{} has no {key}: {:?}", span.name(), span.span.attributes))
}

#[test]
fn one_task_makes_a_producer_span_in_the_driver_and_a_consumer_span_in_a_worker() {
    let run = run(&["one-task"]);
    assert_eq!(run.value("result"), "3");
    assert_eq!(run.all().len(), 2, "{:?}", run.names());
    let (producer_pid, producer) = run.span("cluster_program::add filament.remote");
    let (consumer_pid, consumer) = run.span("cluster_program::add filament.remote_worker");
    assert_eq!(producer_pid, run.driver_pid());
    assert_ne!(consumer_pid, run.driver_pid());
    assert_eq!(producer.span.kind, SpanKind::Producer as i32);
    assert_eq!(consumer.span.kind, SpanKind::Consumer as i32);
    assert_eq!(
        producer.parent_span_id(),
        "",
        "a top-level call starts a trace"
    );
    assert_child_of(consumer, producer);

    assert_eq!(attr(producer, "filament.remote"), &string("function"));
    assert_eq!(
        attr(producer, "filament.function"),
        &string("cluster_program::add")
    );
    assert_eq!(
        attr(producer, "filament.pid"),
        &Value::IntValue(producer_pid.into())
    );
    assert_eq!(
        attr(producer, "filament.job_id"),
        &string(run.value("job_id"))
    );
    assert!(
        producer.attribute("filament.task_id").is_none(),
        "no task in the driver"
    );
    assert_eq!(
        attr(consumer, "filament.pid"),
        &Value::IntValue(consumer_pid.into())
    );
    assert!(matches!(
        attr(consumer, "filament.worker_id"),
        Value::StringValue(_)
    ));
    assert!(matches!(
        attr(consumer, "filament.task_id"),
        Value::StringValue(_)
    ));
    assert_eq!(
        attr(consumer, "filament.node_id"),
        attr(producer, "filament.node_id")
    );
    assert_eq!(
        consumer.resource_attribute("filament.role"),
        Some(&string("worker"))
    );
    assert_eq!(
        producer.resource_attribute("filament.role"),
        Some(&string("driver"))
    );
}

#[test]
fn creating_an_actor_and_calling_it_once_makes_four_spans() {
    let run = run(&["actor-one-call"]);
    assert_eq!(run.value("result"), "1");
    assert_eq!(
        run.names(),
        [
            "cluster_program::Counter::incr filament.remote",
            "cluster_program::Counter::incr filament.remote_worker",
            "cluster_program::Counter::new filament.remote",
            "cluster_program::Counter::new filament.remote_worker",
        ]
    );
    let (_, create) = run.span("cluster_program::Counter::new filament.remote");
    let (actor_pid, created) = run.span("cluster_program::Counter::new filament.remote_worker");
    let (_, call) = run.span("cluster_program::Counter::incr filament.remote");
    let (call_pid, called) = run.span("cluster_program::Counter::incr filament.remote_worker");
    assert_child_of(created, create);
    assert_child_of(called, call);
    assert_ne!(
        create.trace_id(),
        call.trace_id(),
        "each top-level call is its own trace"
    );
    assert_eq!(actor_pid, call_pid, "the actor lives in one process");
    for span in [create, created, call, called] {
        assert_eq!(attr(span, "filament.remote"), &string("actor"));
        assert_eq!(
            attr(span, "filament.actor_class"),
            &string("cluster_program::Counter")
        );
    }
    assert_eq!(attr(called, "filament.actor_method"), &string("incr"));
    assert_eq!(
        attr(called, "filament.function"),
        &string("cluster_program::Counter::incr")
    );
    assert_eq!(
        attr(called, "filament.actor_id"),
        attr(create, "filament.actor_id")
    );
    // The handle names the actor as its spans do.
    assert_eq!(
        attr(called, "filament.actor_id"),
        &string(run.value("actor_id"))
    );
    assert_eq!(
        attr(called, "filament.actor_class"),
        &string(run.value("actor_class"))
    );
}

#[test]
fn four_calls_run_in_submission_order_and_make_ten_spans_with_the_creation() {
    let run = run(&["actor-four-calls"]);
    assert_eq!(run.value("results"), "[11, 13, 16, 20]");
    assert_eq!(run.all().len(), 10, "{:?}", run.names());
}

#[test]
fn a_custom_span_made_in_a_task_is_a_child_of_its_consumer_span() {
    let run = run(&["custom-span"]);
    assert_eq!(run.value("result"), "inside foo");
    let (consumer_pid, consumer) =
        run.span("cluster_program::with_custom_span filament.remote_worker");
    let (foo_pid, foo) = run.span("foo");
    assert_eq!(foo_pid, consumer_pid);
    assert_child_of(foo, consumer);
    assert_eq!(foo.span.kind, 1, "INTERNAL");
}

#[test]
fn nested_tasks_are_one_trace_across_three_processes() {
    let run = run(&["nested"]);
    assert_eq!(run.value("result"), "50");
    let (p0, outer_producer) = run.span("cluster_program::outer filament.remote");
    let (p1, outer_consumer) = run.span("cluster_program::outer filament.remote_worker");
    let (p2, inner_producer) = run.span("cluster_program::add filament.remote");
    let (p3, inner_consumer) = run.span("cluster_program::add filament.remote_worker");
    assert_child_of(outer_consumer, outer_producer);
    assert_child_of(inner_producer, outer_consumer);
    assert_child_of(inner_consumer, inner_producer);
    assert_eq!(p0, run.driver_pid());
    assert_eq!(
        p1, p2,
        "the nested submission happens in the outer task's worker"
    );
    assert_ne!(p3, p1, "the inner task runs in another worker");
    assert_ne!(p3, p0);
    // On a nested PRODUCER, filament.task_id is the enclosing task's.
    assert_eq!(
        attr(inner_producer, "filament.task_id"),
        attr(outer_consumer, "filament.task_id")
    );
}

#[test]
fn tasks_submitted_inside_a_user_span_continue_its_trace() {
    let run = run(&["in-user-span"]);
    assert_eq!(run.value("result"), "5");
    let (_, user) = run.span("driver-work");
    let (_, producer) = run.span("cluster_program::add filament.remote");
    let (_, consumer) = run.span("cluster_program::add filament.remote_worker");
    assert_child_of(producer, user);
    assert_child_of(consumer, producer);
}

#[test]
fn object_refs_as_arguments_run_once_their_inputs_exist() {
    let run = run(&["object-ref-argument"]);
    assert_eq!(run.value("result"), "11");
    assert_eq!(run.all().len(), 6);
}

#[test]
fn a_ref_passed_by_value_after_its_result_arrived_still_reaches_the_task() {
    let run = run(&["moved-ref"]);
    assert_eq!(run.value("driver"), "4");
    assert_eq!(run.value("worker"), "4");
}

#[test]
fn a_panicking_task_fails_get_and_marks_its_consumer_span_error() {
    let run = run(&["panic"]);
    assert_eq!(
        run.value("error"),
        "task cluster_program::fails panicked: it broke"
    );
    let (_, producer) = run.span("cluster_program::fails filament.remote");
    let (_, consumer) = run.span("cluster_program::fails filament.remote_worker");
    let status = consumer.span.status.as_ref().unwrap();
    assert_eq!(status.code, StatusCode::Error as i32);
    assert_eq!(status.message, "it broke");
    let event = &consumer.span.events[0];
    assert_eq!(event.name, "exception");
    assert_eq!(
        filament_tests::find(&event.attributes, "exception.message"),
        Some(&string("it broke"))
    );
    let producer_status = producer.span.status.as_ref().map_or(0, |s| s.code);
    assert_eq!(
        producer_status,
        StatusCode::Unset as i32,
        "the PRODUCER stays UNSET"
    );
}

#[test]
fn a_task_whose_argument_failed_fails_with_the_arguments_error() {
    let run = run(&["argument-failed"]);
    assert_eq!(
        run.value("error"),
        "task cluster_program::add did not run: its argument 0 failed: task cluster_program::fails panicked: first"
    );
}

#[test]
fn a_worker_dying_mid_task_fails_the_task_naming_it_and_the_pool_replaces_the_worker() {
    let run = run(&["worker-dies"]);
    let error = run.value("error");
    assert!(
        error.starts_with("task cluster_program::dies failed: worker "),
        "{error}"
    );
    assert!(
        error.ends_with("was lost before it finished (it died, or its connection was cut)"),
        "{error}"
    );
    assert_eq!(run.value("after"), "42");
}

#[test]
fn tasks_of_a_worker_killed_under_a_batch_run_again_each_lost_attempt_a_span_with_error() {
    let run = run(&["retry-under-kill"]);
    assert_eq!(run.value("results"), "1000 correct=true");
    let killed: u32 = run.value("killed").parse().unwrap();
    let consumers: Vec<(u32, &ReadSpan)> = run
        .with_pids()
        .into_iter()
        .filter(|(_, s)| s.span.kind == SpanKind::Consumer as i32)
        .filter(|(_, s)| s.name().starts_with("cluster_program::square_slowly "))
        .collect();
    let lost: Vec<&ReadSpan> = consumers
        .iter()
        .filter(|(_, s)| s.attribute("filament.recorded_by") == Some(&string("driver")))
        .map(|(_, s)| *s)
        .collect();
    assert!(
        !lost.is_empty(),
        "the killed worker {killed} held tasks: their attempts' spans are recorded by the driver"
    );
    for attempt in &lost {
        let status = attempt.span.status.as_ref().expect("a status");
        assert_eq!(status.code, StatusCode::Error as i32);
        assert!(
            status
                .message
                .contains(&format!("(pid {killed}) was lost before it finished")),
            "{}",
            status.message
        );
        assert_eq!(
            attr(attempt, "filament.attempt"),
            &Value::IntValue(0),
            "the first attempt died"
        );
        // The retry: a CONSUMER span of the same PRODUCER, in a live worker, attempt 1.
        let retry: Vec<&(u32, &ReadSpan)> = consumers
            .iter()
            .filter(|(_, s)| {
                s.trace_id() == attempt.trace_id()
                    && s.parent_span_id() == attempt.parent_span_id()
                    && s.attribute("filament.recorded_by").is_none()
            })
            .collect();
        assert_eq!(retry.len(), 1, "one retry of {}", attempt.span_id());
        let (pid, retry) = retry[0];
        assert_ne!(*pid, killed);
        assert_eq!(attr(retry, "filament.attempt"), &Value::IntValue(1));
        assert!(retry.span.start_time_unix_nano >= attempt.span.start_time_unix_nano);
    }
    // Every task has exactly one CONSUMER span that ran to the end (its own, or its retry's).
    let finished = consumers
        .iter()
        .filter(|(_, s)| s.attribute("filament.recorded_by").is_none())
        .count();
    assert_eq!(finished, 1000);
}

#[test]
fn an_actor_killed_with_max_restarts_1_comes_back_once_with_its_constructor_run_again() {
    let run = run(&["actor-restart"]);
    assert_eq!(run.value("before"), "11");
    // The constructor ran again (state 10), then the call: 11.
    assert_eq!(run.value("after_restart"), "11");
    assert_eq!(run.value("new_process"), "true");
    let error = run.value("final_error");
    assert!(
        error.contains("actor cluster_program::Phoenix(")
            && error.contains(") is dead: its worker"),
        "{error}"
    );
    // The constructor's second run is its own CONSUMER span, attempt 1, in the creation's trace.
    let creations: Vec<&ReadSpan> = run
        .all()
        .into_iter()
        .filter(|s| s.name() == "cluster_program::Phoenix::new filament.remote_worker")
        .collect();
    assert_eq!(creations.len(), 2, "{:?}", run.names());
    assert_eq!(creations[0].trace_id(), creations[1].trace_id());
    let mut attempts: Vec<Option<&Value>> = creations
        .iter()
        .map(|s| s.attribute("filament.attempt"))
        .collect();
    attempts.sort_by_key(Option::is_some);
    assert_eq!(attempts, vec![None, Some(&Value::IntValue(1))]);
}

#[test]
fn refs_inside_a_vec_and_a_struct_travel_through_three_tasks_and_back() {
    let run = run(&["nested-refs"]);
    // 100 + 101 + 102 + 103.
    assert_eq!(run.value("label"), "4 refs sum=406");
    assert_eq!(run.value("driver_values"), "[100, 101, 102, 103]");
}

#[test]
fn actors_whose_handles_are_all_dropped_stop_and_their_processes_end() {
    let run = run(&["actors-dropped", "1000"]);
    assert_eq!(run.value("processes_left"), "2 pool=2");
    let pids: Vec<u32> = run
        .value("actor_pids")
        .split(',')
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(pids.len() >= 20, "{pids:?}");
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|stat| stat.contains(") Z ")),
            "actor process {pid} still runs"
        );
    }
}

#[test]
fn a_task_with_max_retries_0_fails_at_its_workers_first_death() {
    let run = run(&["no-retry"]);
    let error = run.value("error");
    assert!(
        error.starts_with("task cluster_program::dies_once_only failed: worker "),
        "{error}"
    );
    assert_eq!(run.value("after"), "42");
    // One attempt only: its span, recorded by the driver, and no retry.
    let attempts = run
        .all()
        .into_iter()
        .filter(|s| {
            s.name()
                .starts_with("cluster_program::dies_once_only filament.remote_worker")
        })
        .count();
    assert_eq!(attempts, 1);
}

#[test]
fn calls_to_a_dead_actor_fail_with_a_clear_error() {
    let run = run(&["dead-actor"]);
    assert_eq!(run.value("first"), "1");
    assert!(
        run.value("exit_error")
            .starts_with("task cluster_program::Counter::exit failed: worker ")
    );
    let error = run.value("error");
    assert!(
        error.starts_with(
            "task cluster_program::Counter::incr failed: actor cluster_program::Counter("
        ) && error.contains(") is dead: its worker "),
        "{error}"
    );
}

#[test]
fn calls_to_an_actor_whose_constructor_panicked_fail_naming_the_actor() {
    let run = run(&["failing-constructor"]);
    for i in 0..3 {
        let error = run.value(&format!("error{i}"));
        assert!(
            error.starts_with(
                "task cluster_program::Fragile::value failed: actor cluster_program::Fragile("
            ) && error.contains(") is dead: its constructor failed"),
            "{error}"
        );
    }
}

#[test]
fn calls_to_an_actor_whose_process_died_before_connecting_fail() {
    // Workers 1 and 2 are the pool; the actor's process is worker 3.
    let run = run_program(
        &["actor-one-call"],
        Some(LOCAL_FILE),
        &[("TEST_CRASH_WORKER", "3")],
    );
    let stderr = String::from_utf8_lossy(&run.output.stderr);
    // The program unwraps the call's result: the error's debug form, its message, is on
    // standard error.
    assert!(
        stderr.contains(
            "task cluster_program::Counter::incr failed: actor cluster_program::Counter("
        ) && stderr.contains(" is dead: worker 3 (pid ")
            && stderr.contains("ended (exit status: 1) before it connected"),
        "{stderr}"
    );
}

#[test]
fn calls_to_an_actor_whose_process_never_connects_fail_after_the_start_timeout() {
    // Workers 1 and 2 are the pool; the actor's process is worker 3, which hangs before `init`.
    let started = Instant::now();
    let run = run_program(
        &["stalled-actor"],
        Some(LOCAL_FILE),
        &[
            ("TEST_STALL_WORKER", "3"),
            ("TEST_WORKER_START_TIMEOUT_MS", "500"),
        ],
    );
    assert!(
        run.output.status.success(),
        "{}",
        String::from_utf8_lossy(&run.output.stderr)
    );
    let error = run.value("error");
    assert!(
        error.starts_with(
            "task cluster_program::Counter::incr failed: actor cluster_program::Counter("
        ) && error.contains("worker 3 did not connect within 500ms"),
        "{error}"
    );
    // The pool goes on; the program did not wait for the stalled process's two minutes.
    assert_eq!(run.value("after"), "42");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn embedded_job_ids_are_random_not_the_drivers_pid() {
    let first = run(&["one-task"]);
    let second = run(&["one-task"]);
    for run in [&first, &second] {
        let id = run.value("job_id");
        assert_eq!(id.len(), 32, "128 random bits in hex: {id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        let pid: u32 = run.value("driver_pid").parse().unwrap();
        assert!(
            !id.contains(&format!("{pid:08x}")),
            "{id} holds the pid {pid}"
        );
    }
    assert_ne!(first.value("job_id"), second.value("job_id"));
}

#[test]
fn a_result_and_an_argument_of_one_and_a_half_gigabytes_arrive_intact() {
    // Past the 1 GiB frame: each travels as two frames and is joined again.
    let bytes = 1_500_000_000u64;
    let run = run_program(
        &["big-values", &bytes.to_string()],
        None,
        &[("TEST_WORKERS", "1")],
    )
    .ok();
    assert_eq!(run.value("result_len"), bytes.to_string());
    assert_eq!(run.value("result_intact"), "true");
    assert_eq!(run.value("argument_len"), bytes.to_string());
    assert_eq!(run.value("argument_intact"), "true");
}

#[test]
fn what_workers_print_reaches_the_driver_prefixed_with_the_worker() {
    let run = run(&["prints"]);
    filament_tests::assert_worker_output_forwarded(&run);
    // Switched off, the driver prints none of it.
    let quiet = run_program(&["prints"], Some(LOCAL_FILE), &[("TEST_NO_FORWARD", "1")]).ok();
    assert!(
        !quiet.text().contains(") hello from a task"),
        "{}",
        quiet.text()
    );
}

#[test]
fn a_filament_program_started_from_inside_a_task_runs_its_own_main() {
    let run = run_program(&["runs-a-program"], Some(LOCAL_FILE), &[]).ok();
    // The child inherited the worker's environment, marker included, and still ran as a program:
    // its own cluster, its own task.
    assert_eq!(run.value("child_child_sum"), "42", "{}", run.text());
    assert_ne!(run.value("child_driver_pid"), run.value("driver_pid"));
}

#[test]
fn init_refuses_a_hook_or_address_variable_that_is_not_utf8() {
    use std::os::unix::ffi::OsStrExt;
    let not_utf8 = std::ffi::OsStr::from_bytes(b"filament_local_file:setup_\xff");
    for variable in ["FILAMENT_TRACING_STARTUP_HOOK", "FILAMENT_ADDRESS"] {
        let output = Command::new(env!("CARGO_BIN_EXE_cluster-program"))
            .arg("one-task")
            .env(variable, not_utf8)
            .env_remove(if variable == "FILAMENT_ADDRESS" {
                "FILAMENT_TRACING_STARTUP_HOOK"
            } else {
                "FILAMENT_ADDRESS"
            })
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(3), "{variable}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!("the environment variable {variable} is not UTF-8")),
            "{variable}: {stderr}"
        );
    }
}

#[test]
fn a_pool_worker_that_never_connects_fails_init_as_a_start_timeout() {
    let run = run_program(
        &["one-task"],
        Some(LOCAL_FILE),
        &[
            ("TEST_WORKERS", "2"),
            ("TEST_STALL_WORKER", "2"),
            ("TEST_WORKER_START_TIMEOUT_MS", "500"),
        ],
    );
    assert_eq!(run.output.status.code(), Some(3), "{:?}", run.output);
    assert_eq!(run.value("init_error"), "worker-start-timeout");
    let stderr = String::from_utf8_lossy(&run.output.stderr);
    // (Whichever noticed first: the reaper, naming worker 2, or `init`, naming the workers.)
    assert!(stderr.contains("did not connect within 500ms"), "{stderr}");
}

#[test]
fn an_actor_handle_passed_to_a_task_continues_the_callers_trace() {
    let run = run(&["actor-handle-in-task"]);
    assert_eq!(
        (run.value("first"), run.value("result"), run.value("last")),
        ("101", "106", "107"),
        "calls run in order, from the driver and from the task"
    );
    let (_, task) = run.span("cluster_program::call_counter filament.remote_worker");
    let calls: Vec<&ReadSpan> = run
        .all()
        .into_iter()
        .filter(|s| {
            s.name() == "cluster_program::Counter::incr filament.remote"
                && s.parent_span_id() == task.span_id()
        })
        .collect();
    assert_eq!(calls.len(), 1, "the task's call is a child of the task");
    let executed: Vec<&ReadSpan> = run
        .all()
        .into_iter()
        .filter(|s| s.parent_span_id() == calls[0].span_id())
        .collect();
    assert_eq!(executed.len(), 1);
    assert_eq!(
        executed[0].name(),
        "cluster_program::Counter::incr filament.remote_worker"
    );
    assert_eq!(executed[0].trace_id(), task.trace_id());
}

#[test]
fn getting_a_result_as_the_wrong_type_is_a_clear_error() {
    let run = run(&["wrong-type"]);
    let error = run.value("error");
    assert!(
        error.starts_with("the result of cluster_program::add (")
            && error.contains(") does not deserialize as cluster_program::Triple: "),
        "{error}"
    );
}

#[test]
fn getting_a_ref_of_another_cluster_is_a_clear_error() {
    let run = run(&["other-cluster"]);
    assert!(run.value("error").contains("belongs to another cluster"));
}

#[test]
fn wait_splits_done_from_pending_and_honours_its_timeout() {
    let run = run(&["wait"]);
    assert_eq!(run.value("first_ready"), "1 first_pending=1");
    assert_eq!(
        run.value("ready_value"),
        "2",
        "the done one is the quick task"
    );
    assert_eq!(run.value("then_ready"), "2 then_pending=0");
    assert_eq!(run.value("capped_ready"), "[1] capped_rest=[2, 3]");
}

#[test]
fn with_no_hook_no_tracing_work_is_done() {
    let run = run_program(&["nested"], None, &[]);
    assert!(run.output.status.success(), "{:?}", run.output);
    assert_eq!(run.value("result"), "50");
    assert!(
        run.spans.is_empty(),
        "no span files: {:?}",
        run.spans.keys()
    );
}

#[test]
fn a_broken_hook_fails_init_in_the_driver_before_any_worker_starts() {
    let run = run_program(&["one-task"], Some("filament_test_hooks:not_a_hook"), &[]);
    assert_eq!(run.output.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&run.output.stderr);
    assert!(
        stderr.contains("error: hook \"filament_test_hooks:not_a_hook\": `not_a_hook` is not a Filament tracing hook"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("filament worker"),
        "no worker ran: {stderr}"
    );
}

#[test]
fn a_hook_that_fails_only_in_workers_fails_init_within_seconds_without_retrying() {
    let started = Instant::now();
    let run = run_program(
        &["one-task"],
        Some("filament_test_hooks:fails_in_workers"),
        &[],
    );
    assert_eq!(run.output.status.code(), Some(3), "{:?}", run.output);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let stderr = String::from_utf8_lossy(&run.output.stderr);
    assert!(
        stderr.contains("error: the tracing hook failed in worker ")
            && stderr.contains("hook \"filament_test_hooks:fails_in_workers\": setup failed: no collector is reachable from worker processes"),
        "{stderr}"
    );
    // A program can tell this case from the others by matching on the error.
    assert_eq!(run.value("init_error"), "worker-hook");
    let attempts = stderr.matches("filament worker: ").count();
    assert!(
        attempts <= 2,
        "each of the 2 workers tried once, no crash loop: {stderr}"
    );
}

/// Whether a process is alive (and not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z')
        })
        .unwrap_or(false)
}

#[test]
fn workers_exit_when_the_runtime_stops_and_when_the_driver_is_killed() {
    // A normal end: no worker left.
    let run = run(&["workers"]);
    assert_eq!(run.value("task_pids"), "2", "tasks ran in both workers");
    let pids = worker_pids(&String::from_utf8_lossy(&run.output.stdout));
    assert_eq!(pids.len(), 2);
    for pid in &pids {
        assert!(!alive(*pid), "worker {pid} outlived its driver");
    }

    // Killed: the workers notice the end of their socket and exit.
    let dir = tempfile::tempdir().unwrap();
    let (mut child, pids) = start_hanging(
        Command::new(env!("CARGO_BIN_EXE_cluster-program"))
            .args(["workers", "hang"])
            .env("FILAMENT_SPANS_DIR", dir.path())
            .env("FILAMENT_TRACING_STARTUP_HOOK", LOCAL_FILE)
            .env("TEST_WORKERS", "2"),
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for pid in pids {
        assert!(!alive(pid), "worker {pid} survived its killed driver");
    }
    // The spans they wrote before are intact.
    for spans in read_spans_dir(dir.path()).values() {
        assert!(spans.iter().all(|s| !s.span_id().is_empty()));
    }
}

/// Starts `cluster-program workers hang` as `command` says, and waits until it hangs with its
/// workers up; returns it and its workers' pids.
fn start_hanging(command: &mut Command) -> (std::process::Child, Vec<u32>) {
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut pids = Vec::new();
    loop {
        let mut line = String::new();
        assert!(std::io::BufRead::read_line(&mut stdout, &mut line).unwrap() > 0);
        if let Some(rest) = line.trim().strip_prefix("worker=") {
            pids.push(rest.split(" pid=").nth(1).unwrap().parse::<u32>().unwrap());
        }
        if line.trim() == "hanging" {
            break;
        }
    }
    (child, pids)
}

/// The embedded cluster's socket folders in `tmp`: `(name, mode)`. A folder removed while this
/// looks (a worker cleaning up) is not listed.
fn socket_folders(tmp: &std::path::Path) -> Vec<(String, u32)> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::read_dir(tmp)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("filament-"))
        .filter_map(|e| {
            let mode = e.metadata().ok()?.permissions().mode() & 0o777;
            Some((e.file_name().to_string_lossy().into_owned(), mode))
        })
        .collect()
}

#[test]
fn a_killed_drivers_socket_folder_is_private_and_removed_by_its_workers_or_the_next_init() {
    let tmp = tempfile::tempdir().unwrap();
    let spans = tempfile::tempdir().unwrap();
    // Under umask 000 the folder is still the user's alone.
    let (mut child, pids) = start_hanging(
        Command::new("sh")
            .args(["-c", "umask 000; exec \"$0\" workers hang"])
            .arg(env!("CARGO_BIN_EXE_cluster-program"))
            .env("TMPDIR", tmp.path())
            .env("FILAMENT_SPANS_DIR", spans.path())
            .env("FILAMENT_TRACING_STARTUP_HOOK", LOCAL_FILE)
            .env("TEST_WORKERS", "2"),
    );
    let folders = socket_folders(tmp.path());
    assert_eq!(folders.len(), 1, "{folders:?}");
    assert!(
        folders[0]
            .0
            .starts_with(&format!("filament-{}-", child.id())),
        "{folders:?}"
    );
    assert_eq!(folders[0].1, 0o700, "{folders:?}");

    // SIGKILL: the driver cannot clean up; its workers, seeing it gone, do.
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while (!socket_folders(tmp.path()).is_empty() || pids.iter().any(|p| alive(*p)))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(socket_folders(tmp.path()), Vec::new());

    // A folder left by a driver that died before any worker could notice: the next init sweeps it.
    let mut gone = Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    let stale = tmp.path().join(format!("filament-{dead}-0000abcd"));
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("driver.sock"), "").unwrap();
    // One that is not a socket folder, and one of a driver that runs (this test), stay.
    let other = tmp.path().join("filament-notes");
    std::fs::create_dir(&other).unwrap();
    let running = tmp
        .path()
        .join(format!("filament-{}-0000abcd", std::process::id()));
    std::fs::create_dir(&running).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_cluster-program"))
        .arg("one-task")
        .env("TMPDIR", tmp.path())
        .env("FILAMENT_SPANS_DIR", spans.path())
        .env("FILAMENT_TRACING_STARTUP_HOOK", LOCAL_FILE)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(!stale.exists(), "the dead driver's folder was swept");
    assert!(other.exists() && running.exists());
}

#[test]
fn a_process_speaking_the_worker_protocol_without_the_token_is_refused_by_an_embedded_driver() {
    let tmp = tempfile::tempdir().unwrap();
    let spans = tempfile::tempdir().unwrap();
    let (mut driver, _) = start_hanging(
        Command::new(env!("CARGO_BIN_EXE_cluster-program"))
            .args(["workers", "hang"])
            .env("TMPDIR", tmp.path())
            .env("FILAMENT_SPANS_DIR", spans.path())
            .env("TEST_WORKERS", "1")
            .env_remove("FILAMENT_TRACING_STARTUP_HOOK"),
    );
    let (folder, _) = socket_folders(tmp.path()).remove(0);
    let socket = tmp.path().join(folder).join("driver.sock");
    // The same program, posing as the driver's worker 99 (its marker names this test as the
    // parent that started it), but with no token on its standard input.
    let stranger = Command::new(env!("CARGO_BIN_EXE_cluster-program"))
        .env(
            "FILAMENT_WORKER",
            format!("{}@{}:99", std::process::id(), socket.display()),
        )
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    driver.kill().unwrap();
    driver.wait().unwrap();
    assert_eq!(stranger.status.code(), Some(1), "{stranger:?}");
    let stderr = String::from_utf8_lossy(&stranger.stderr);
    assert!(
        stderr.contains("refused by the driver: wrong or missing cluster token"),
        "{stderr}"
    );
}

#[test]
fn workers_exit_when_the_driver_panics() {
    let run = run_program(&["driver-panics"], Some(LOCAL_FILE), &[]);
    assert!(!run.output.status.success());
    assert!(String::from_utf8_lossy(&run.output.stderr).contains("the driver panics"));
    let pids = worker_pids(&String::from_utf8_lossy(&run.output.stdout));
    assert_eq!(pids.len(), 2);
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for pid in pids {
        assert!(!alive(pid), "worker {pid} survived its panicked driver");
    }
}

#[test]
fn an_idle_cluster_burns_no_cpu_after_sequential_calls() {
    // Readers spin briefly after a message, and threads waiting for their turn to read look every
    // millisecond while the connection is busy: none of that may go on once the cluster is idle.
    let run = run(&["idle-after-calls"]);
    let stdout = String::from_utf8_lossy(&run.output.stdout);
    let idle: Vec<(u32, u64, u64)> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("idle pid="))
        .map(|l| {
            let field = |name: &str| {
                let at = l.find(name).unwrap() + name.len();
                l[at..].split(' ').next().unwrap().parse::<u64>().unwrap()
            };
            (
                l.split(' ').next().unwrap().parse().unwrap(),
                field("cpu_ms="),
                field("switches="),
            )
        })
        .collect();
    // The driver, two pool workers and the actor's process.
    assert_eq!(idle.len(), 4, "{stdout}");
    for (pid, cpu_ms, switches) in idle {
        // A thread left spinning would use most of the second, one left polling would wake a
        // thousand times, a reaper looking for ended workers every 20 ms fifty times. What is
        // left: a worker reports its tracing's counts every 500 ms.
        assert!(
            cpu_ms < 100 && switches < 40,
            "process {pid} used {cpu_ms} ms of CPU and was woken {switches} times in an idle second"
        );
    }
}

fn worker_pids(stdout: &str) -> Vec<u32> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("worker="))
        .map(|l| l.split(" pid=").nth(1).unwrap().parse().unwrap())
        .collect()
}

#[test]
fn no_span_is_lost_or_duplicated_over_ten_thousand_traced_tasks() {
    let run = run(&["many", "10000"]);
    assert_eq!(run.value("sum"), "50005000 expected=50005000");
    let spans = run.all();
    assert_eq!(spans.len(), 20_000);
    let ids: HashSet<String> = spans.iter().map(|s| s.span_id()).collect();
    assert_eq!(ids.len(), 20_000, "span ids are unique");
    let producers: HashSet<String> = spans
        .iter()
        .filter(|s| s.span.kind == SpanKind::Producer as i32)
        .map(|s| s.span_id())
        .collect();
    assert_eq!(producers.len(), 10_000);
    for consumer in spans
        .iter()
        .filter(|s| s.span.kind == SpanKind::Consumer as i32)
    {
        assert!(
            producers.contains(&consumer.parent_span_id()),
            "every CONSUMER's PRODUCER is present"
        );
    }
}
