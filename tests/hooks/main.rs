//! Giving, loading, checking and running tracing startup hooks: every bad input is a clear error
//! naming the hook and the cause; a misbehaving plugin never takes the host down.
//!
//! Tests here build tracing without installing it globally (`Tracing::build`), so they can run side
//! by side in one process; what needs a process of its own runs `traced-program`.

use filament::tracing::{self, HookError, ProcessRole, ShutdownError, Tracing};
use filament_tests::{plugin_path, read_span_file};
use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const LOCAL_FILE: &str = "filament_local_file:setup_tracing";

fn test_hooks(symbol: &str) -> String {
    format!("filament_test_hooks:{symbol}")
}

fn refused(hooks: &str) -> HookError {
    match Tracing::new(hooks).build() {
        Ok(_) => panic!("hook {hooks:?} was accepted"),
        Err(error) => error,
    }
}

/// Makes `count` spans on the guard's provider.
fn make_spans(guard: &tracing::TracingGuard, count: usize) {
    let tracer = guard.provider().expect("a provider").tracer("hooks-test");
    for i in 0..count {
        let mut span = tracer.start(format!("span-{i}"));
        span.end();
    }
}

/// Tracing through `hooks` with the local-file plugin writing into `dir`.
fn with_spans_dir(hooks: &str, dir: &Path) -> Tracing {
    Tracing::new(hooks).config("FILAMENT_SPANS_DIR", dir.to_str().unwrap())
}

fn own_span_file(dir: &Path) -> PathBuf {
    dir.join(format!("{}.json", std::process::id()))
}

fn traced_program(hooks: &str, envs: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_traced-program"));
    command.args(["--hooks", hooks]).args(args);
    for (key, value) in envs {
        command.env(key, value);
    }
    command.output().expect("traced-program runs")
}

// ---- malformed hook strings -------------------------------------------------------------------

#[test]
fn malformed_hook_strings_are_refused_with_the_string_and_the_cause() {
    let cases = [
        ("", "is empty"),
        ("filament_local_file", "has no colon"),
        (":setup_tracing", "names no library"),
        ("filament_local_file:", "names no symbol"),
        (
            "filament_local_file:setup_tracing,,x:y",
            "item 2 of the list is empty",
        ),
        ("filament_local_file:setup-tracing", "is not a symbol name"),
    ];
    for (hooks, cause) in cases {
        let error = refused(hooks);
        assert!(
            matches!(error, HookError::Malformed { .. }),
            "{hooks:?}: {error:?}"
        );
        let message = error.to_string();
        assert!(message.contains(cause), "{hooks:?}: {message}");
        assert!(
            message.contains(&format!("{hooks:?}")),
            "{hooks:?}: {message}"
        );
    }
}

// ---- libraries --------------------------------------------------------------------------------

#[test]
fn missing_library_by_name_lists_every_path_searched() {
    let message = refused("no_such_plugin:setup_tracing").to_string();
    assert!(
        message.starts_with("hook \"no_such_plugin:setup_tracing\": library not found (searched: "),
        "{message}"
    );
    assert!(message.contains("libno_such_plugin.so"), "{message}");
    assert!(message.contains("no_such_plugin.so"), "{message}");
    // The cargo target directory the tests run from is searched.
    let profile = filament_tests::profile_dir();
    assert!(
        message.contains(&profile.display().to_string()),
        "{message}"
    );
}

#[test]
fn missing_library_by_path_names_the_path() {
    let error = refused("/nonexistent/dir/libfoo.so:setup_tracing");
    assert!(
        matches!(error, HookError::LibraryNotFound { .. }),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "hook \"/nonexistent/dir/libfoo.so:setup_tracing\": library not found (searched: /nonexistent/dir/libfoo.so)"
    );
}

#[test]
fn plugin_path_env_is_searched_for_bare_names() {
    // FILAMENT_PLUGIN_PATH is process-wide: check it in a process of its own.
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("libmy_renamed_plugin.so");
    std::fs::copy(plugin_path("filament_local_file"), &lib).unwrap();
    let spans = tempfile::tempdir().unwrap();
    let output = traced_program(
        "my_renamed_plugin:setup_tracing",
        &[
            ("FILAMENT_PLUGIN_PATH", dir.path().to_str().unwrap()),
            ("FILAMENT_SPANS_DIR", spans.path().to_str().unwrap()),
        ],
        &["--spans", "2"],
    );
    assert!(output.status.success(), "{output:?}");
    let files = filament_tests::read_spans_dir(spans.path());
    assert_eq!(files.values().map(Vec::len).sum::<usize>(), 2, "{files:?}");
}

#[test]
fn unreadable_library_is_refused_with_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the library should be: unreadable as a file, even for root.
    let as_dir = dir.path().join("libdir.so");
    std::fs::create_dir(&as_dir).unwrap();
    let hooks = format!("{}:setup_tracing", as_dir.display());
    let error = refused(&hooks);
    assert!(matches!(error, HookError::LoadFailed { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("it is a directory, not a shared object"),
        "{error}"
    );
    assert!(error.to_string().contains(&hooks), "{error}");
}

/// `check(hooks)` on a thread of its own, so that a hang fails the test instead of stalling it.
fn check_within(hooks: &str, limit: Duration) -> Result<(), HookError> {
    let (done, answer) = std::sync::mpsc::channel();
    let hooks = hooks.to_owned();
    std::thread::spawn(move || {
        let _ = done.send(tracing::check(&hooks).map(|_| ()));
    });
    answer
        .recv_timeout(limit)
        .expect("checking the hook returned in time")
}

#[test]
fn a_fifo_given_as_the_library_is_refused_without_opening_it() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("libfifo.so");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let hooks = format!("{}:setup_tracing", fifo.display());
    // Opening a FIFO for reading blocks until a writer comes: no one ever will.
    let error = check_within(&hooks, Duration::from_secs(10)).unwrap_err();
    assert!(matches!(error, HookError::LoadFailed { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("it is a FIFO, not a shared object"),
        "{error}"
    );
    // A link to it is refused the same way.
    let link = dir.path().join("liblink.so");
    std::os::unix::fs::symlink(&fifo, &link).unwrap();
    let error = check_within(
        &format!("{}:setup_tracing", link.display()),
        Duration::from_secs(10),
    )
    .unwrap_err();
    assert!(error.to_string().contains("it is a FIFO"), "{error}");
}

#[test]
fn a_hook_whose_setup_blocks_fails_at_its_deadline_naming_the_hook() {
    let hooks = test_hooks("setup_blocks");
    let started = Instant::now();
    let error = match Tracing::new(&hooks)
        .setup_timeout(Duration::from_millis(300))
        .build()
    {
        Ok(_) => panic!("a blocking hook was accepted"),
        Err(error) => error,
    };
    assert!(
        matches!(error, HookError::SetupTimeout { ref hook, timeout } if *hook == hooks && timeout == Duration::from_millis(300)),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("setup did not return within 300ms"),
        "{error}"
    );
    // Not the hook's hour: the deadline, and a little.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_malformed_setup_deadline_is_an_error_naming_the_variable() {
    let output = traced_program(LOCAL_FILE, &[("FILAMENT_HOOK_SETUP_TIMEOUT", "soon")], &[]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("FILAMENT_HOOK_SETUP_TIMEOUT=\"soon\" is not valid"),
        "{stderr}"
    );
}

#[test]
fn a_file_that_is_not_a_shared_object_is_refused_with_the_loaders_reason() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("libfake.so");
    std::fs::write(&fake, "this is not an ELF file, it is text\n".repeat(40)).unwrap();
    let error = refused(&format!("{}:setup_tracing", fake.display()));
    assert!(matches!(error, HookError::LoadFailed { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains(&format!("cannot load {}", fake.display())),
        "{message}"
    );
    assert!(
        message.contains("invalid ELF header") || message.contains("file too short"),
        "the loader's own reason is kept: {message}"
    );
}

// ---- symbols ----------------------------------------------------------------------------------

#[test]
fn missing_symbol_is_refused_naming_symbol_and_library() {
    let error = refused(&test_hooks("no_such_symbol"));
    assert!(
        matches!(error, HookError::SymbolMissing { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.starts_with(
            "hook \"filament_test_hooks:no_such_symbol\": symbol `no_such_symbol` not found in "
        ),
        "{message}"
    );
    assert!(message.contains("libfilament_test_hooks.so"), "{message}");
}

#[test]
fn libc_printf_is_refused_and_never_called() {
    let error = refused("libc.so.6:printf");
    assert!(matches!(error, HookError::NotAHook { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.starts_with("hook \"libc.so.6:printf\": `printf` is not a Filament tracing hook"),
        "{message}"
    );
    assert!(message.contains("it was not called"), "{message}");
    assert!(message.contains("export_hook!"), "{message}");
}

#[test]
fn an_ordinary_exported_function_of_a_plugin_is_refused_and_never_called() {
    // `not_a_hook` aborts the process if it is ever called.
    let error = refused(&test_hooks("not_a_hook"));
    assert!(matches!(error, HookError::NotAHook { .. }), "{error:?}");
    assert!(error.to_string().contains("it was not called"), "{error}");
}

#[test]
fn check_loads_and_verifies_without_calling_anything() {
    // `setup_panics` would fail if called; `check` must not call it.
    let specs = tracing::check(&format!("{},{LOCAL_FILE}", test_hooks("setup_panics"))).unwrap();
    assert_eq!(specs.len(), 2);
    assert_eq!(specs[1].to_string(), LOCAL_FILE);
    assert!(matches!(
        tracing::check(&test_hooks("not_a_hook")),
        Err(HookError::NotAHook { .. })
    ));
}

// ---- running hooks ----------------------------------------------------------------------------

#[test]
fn a_hook_that_returns_an_error_is_refused_with_its_message() {
    let error = refused(&test_hooks("setup_fails"));
    assert!(matches!(error, HookError::SetupFailed { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        "hook \"filament_test_hooks:setup_fails\": setup failed: the collector address is not configured"
    );
}

#[test]
fn a_hook_that_panics_is_an_error_and_the_host_survives() {
    let error = refused(&test_hooks("setup_panics"));
    assert_eq!(
        error.to_string(),
        "hook \"filament_test_hooks:setup_panics\": setup failed: the hook panicked: boom in setup"
    );
    // The host goes on: another hook still works in this process.
    let dir = tempfile::tempdir().unwrap();
    let guard = with_spans_dir(LOCAL_FILE, dir.path()).build().unwrap();
    make_spans(&guard, 1);
    guard.shutdown().unwrap();
    assert_eq!(read_span_file(&own_span_file(dir.path())).len(), 1);
}

#[test]
fn a_failing_hook_in_a_list_fails_the_list_after_the_earlier_hooks_ran() {
    let dir = tempfile::tempdir().unwrap();
    let hooks = format!("{LOCAL_FILE},{}", test_hooks("setup_fails"));
    let error = with_spans_dir(&hooks, dir.path()).build().unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("hook \"filament_test_hooks:setup_fails\""),
        "the failing hook is named, not the list: {error}"
    );
}

#[test]
fn hooks_in_a_list_all_take_effect() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.txt");
    let hooks = format!("{},{LOCAL_FILE}", test_hooks("reports_process"));
    let guard = with_spans_dir(&hooks, dir.path())
        .config("FILAMENT_TEST_REPORT", report.to_str().unwrap())
        .build()
        .unwrap();
    assert_eq!(guard.hooks().len(), 2);
    make_spans(&guard, 3);
    guard.shutdown().unwrap();
    assert!(
        std::fs::read_to_string(&report)
            .unwrap()
            .contains("role=other")
    );
    assert_eq!(read_span_file(&own_span_file(dir.path())).len(), 3);
}

#[test]
fn hooks_in_a_list_run_in_the_order_given() {
    // Both configure the provider; whichever runs second is refused, and says so.
    let first = test_hooks("configure_twice");
    let second = test_hooks("configure_resource");
    let error = refused(&format!("{first},{second}"));
    assert_eq!(
        error.to_string(),
        format!(
            "hook \"{second}\": setup failed: the tracer provider was already configured in this process; the first configuration is kept"
        )
    );
    let error = refused(&format!("{second},{first}"));
    assert!(
        error
            .to_string()
            .starts_with(&format!("hook \"{first}\": setup failed: ")),
        "{error}"
    );
}

#[test]
fn the_handle_tells_the_hook_about_its_process_and_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.txt");
    let guard = Tracing::new(test_hooks("reports_process"))
        .role(ProcessRole::Worker)
        .job_id("job-7")
        .node_id("node-1")
        .worker_id("worker-3")
        .config("FILAMENT_TEST_REPORT", report.to_str().unwrap())
        .config("FILAMENT_TEST_GREETING", "hello")
        .build()
        .unwrap();
    drop(guard);
    assert_eq!(
        std::fs::read_to_string(&report).unwrap(),
        format!(
            "pid={} role=worker job=job-7 node=node-1 worker=worker-3 greeting=hello newcomer=\n",
            std::process::id()
        )
    );
}

#[test]
fn configuring_the_provider_twice_keeps_the_first_and_warns() {
    // `configure_twice` sets always_off, then always_on (refused, or the hook fails).
    let dir = tempfile::tempdir().unwrap();
    let hooks = format!("{},{LOCAL_FILE}", test_hooks("configure_twice"));
    let guard = with_spans_dir(&hooks, dir.path()).build().unwrap();
    make_spans(&guard, 5);
    guard.shutdown().unwrap();
    // always_off, the first configuration, is in force: no span, and so no file left.
    assert!(!own_span_file(dir.path()).exists());

    let output = traced_program(
        &hooks,
        &[("FILAMENT_SPANS_DIR", dir.path().to_str().unwrap())],
        &[],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{output:?}");
    assert!(
        stderr.contains("hook \"filament_test_hooks:configure_twice\": the tracer provider was already configured by hook \"filament_test_hooks:configure_twice\"; this configuration is ignored"),
        "{stderr}"
    );
}

#[test]
fn an_invalid_provider_configuration_is_refused_with_the_reason() {
    let error = refused(&test_hooks("invalid_sampler"));
    assert_eq!(
        error.to_string(),
        "hook \"filament_test_hooks:invalid_sampler\": setup failed: invalid provider configuration: sampling ratio 2 is not between 0 and 1"
    );
}

#[test]
fn resource_and_span_limits_from_a_hook_reach_the_exported_spans() {
    let dir = tempfile::tempdir().unwrap();
    let hooks = format!("{},{LOCAL_FILE}", test_hooks("configure_resource"));
    let guard = with_spans_dir(&hooks, dir.path()).build().unwrap();
    let tracer = guard.provider().unwrap().tracer("limits");
    let mut span = tracer.start("three-attributes");
    span.set_attribute(opentelemetry::KeyValue::new("a", 1));
    span.set_attribute(opentelemetry::KeyValue::new("b", 2));
    span.set_attribute(opentelemetry::KeyValue::new("c", 3));
    span.end();
    guard.shutdown().unwrap();

    let spans = read_span_file(&own_span_file(dir.path()));
    assert_eq!(spans.len(), 1);
    let span = &spans[0];
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    assert_eq!(
        span.resource_attribute("service.name"),
        Some(&Value::StringValue("hooked-service".into()))
    );
    assert_eq!(
        span.resource_attribute("test.hook"),
        Some(&Value::StringValue("configure_resource".into()))
    );
    assert_eq!(
        span.resource_attribute("process.pid"),
        Some(&Value::IntValue(i64::from(std::process::id())))
    );
    assert_eq!(
        span.span.attributes.len(),
        2,
        "the limit of 2 attributes holds"
    );
    assert_eq!(span.span.dropped_attributes_count, 1);
}

#[test]
fn a_hook_that_sets_nothing_up_is_warned_about() {
    let output = traced_program(&test_hooks("adds_nothing"), &[], &[]);
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr
            .contains("added no span processor: spans of this process are recorded but go nowhere"),
        "{stderr}"
    );
}

// ---- misbehaving processors -------------------------------------------------------------------

#[test]
fn a_processor_that_panics_in_on_end_is_counted_and_the_others_keep_receiving_spans() {
    let dir = tempfile::tempdir().unwrap();
    let hooks = format!("{},{LOCAL_FILE}", test_hooks("on_end_panics"));
    let guard = with_spans_dir(&hooks, dir.path()).build().unwrap();
    make_spans(&guard, 3);

    let reports = guard.processors();
    assert_eq!(reports.len(), 2);
    let panicking = &reports[0];
    assert_eq!(panicking.name, "panicking-processor");
    assert_eq!(panicking.hook, test_hooks("on_end_panics"));
    assert_eq!((panicking.delivered, panicking.failures), (0, 3));
    assert_eq!(
        panicking.first_failure.as_deref(),
        Some(
            "span processor \"panicking-processor\" failed in on_end: panicked: on_end panicked on span span-0"
        )
    );
    let file = &reports[1];
    assert_eq!((file.delivered, file.failures), (3, 0));
    assert_eq!((file.plugin.exported, file.plugin.dropped), (3, 0));
    guard.shutdown().unwrap();
    assert_eq!(read_span_file(&own_span_file(dir.path())).len(), 3);
}

#[test]
fn a_panicking_processor_is_reported_once_on_standard_error() {
    let dir = tempfile::tempdir().unwrap();
    let hooks = format!("{},{LOCAL_FILE}", test_hooks("on_end_panics"));
    let output = traced_program(
        &hooks,
        &[("FILAMENT_SPANS_DIR", dir.path().to_str().unwrap())],
        &["--spans", "50"],
    );
    assert!(output.status.success(), "the host survives: {output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let reports = stderr
        .lines()
        .filter(|l| l.contains("failed in on_end"))
        .count();
    assert_eq!(reports, 1, "{stderr}");
    // The panics themselves print once too, not once per span; the count stays exact.
    assert_eq!(stderr.matches("panicked at").count(), 1, "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("processor \"panicking-processor\" delivered=0 failures=50"),
        "{stdout}"
    );
    let files = filament_tests::read_spans_dir(dir.path());
    assert_eq!(files.values().map(Vec::len).sum::<usize>(), 50);
}

#[test]
fn a_processor_that_panics_in_force_flush_is_an_error_not_a_crash() {
    let guard = Tracing::new(test_hooks("flush_panics")).build().unwrap();
    make_spans(&guard, 1);
    let error = guard.force_flush().unwrap_err();
    assert!(
        error
            .to_string()
            .contains("span processor \"panicking-processor\" failed in force_flush: panicked: force_flush panicked"),
        "{error}"
    );
    assert_eq!(guard.processors()[0].delivered, 1);
}

#[test]
fn a_processor_that_panics_in_shutdown_is_an_error_not_a_crash() {
    let guard = Tracing::new(test_hooks("shutdown_panics")).build().unwrap();
    make_spans(&guard, 1);
    match guard.shutdown() {
        Err(ShutdownError::Failed(message)) => {
            assert!(message.contains("panicked: shutdown panicked"), "{message}")
        }
        other => panic!("expected a shutdown failure, got {other:?}"),
    }
}

#[test]
fn shutdown_is_bounded_even_when_a_plugin_ignores_its_timeout() {
    // The plugin sleeps 60 s in shutdown.
    let guard = Tracing::new(test_hooks("shutdown_hangs"))
        .shutdown_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let started = Instant::now();
    assert_eq!(
        guard.shutdown(),
        Err(ShutdownError::Timeout(Duration::from_millis(200)))
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

// ---- the OpenTelemetry environment ------------------------------------------------------------

#[test]
fn otel_sdk_disabled_checks_the_hooks_but_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let spans_dir = dir.path().to_str().unwrap();
    let envs = [
        ("OTEL_SDK_DISABLED", "true"),
        ("FILAMENT_SPANS_DIR", spans_dir),
    ];
    let output = traced_program(LOCAL_FILE, &envs, &["--spans", "3"]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no file");

    let output = traced_program(&test_hooks("not_a_hook"), &envs, &[]);
    assert_eq!(
        output.status.code(),
        Some(3),
        "a broken hook is still refused"
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not a Filament tracing hook"));
}

#[test]
fn otel_environment_variables_mean_what_the_spec_says() {
    let dir = tempfile::tempdir().unwrap();
    let spans_dir = dir.path().to_str().unwrap();
    let output = traced_program(
        LOCAL_FILE,
        &[
            ("FILAMENT_SPANS_DIR", spans_dir),
            ("OTEL_SERVICE_NAME", "checkout"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment.name=staging,team=core",
            ),
            ("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "0"),
        ],
        &["--spans", "2"],
    );
    assert!(output.status.success(), "{output:?}");
    let spans: Vec<_> = filament_tests::read_spans_dir(dir.path())
        .into_values()
        .flatten()
        .collect();
    assert_eq!(spans.len(), 2);
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let s = &spans[0];
    assert_eq!(
        s.resource_attribute("service.name"),
        Some(&Value::StringValue("checkout".into()))
    );
    assert_eq!(
        s.resource_attribute("deployment.environment.name"),
        Some(&Value::StringValue("staging".into()))
    );
    assert_eq!(
        s.resource_attribute("team"),
        Some(&Value::StringValue("core".into()))
    );
    assert!(s.span.attributes.is_empty(), "attribute limit 0");
    assert_eq!(s.span.dropped_attributes_count, 1);

    let off = tempfile::tempdir().unwrap();
    let output = traced_program(
        LOCAL_FILE,
        &[
            ("FILAMENT_SPANS_DIR", off.path().to_str().unwrap()),
            ("OTEL_TRACES_SAMPLER", "always_off"),
        ],
        &["--spans", "4"],
    );
    assert!(output.status.success(), "{output:?}");
    let sampled: usize = filament_tests::read_spans_dir(off.path())
        .values()
        .map(Vec::len)
        .sum();
    assert_eq!(sampled, 0, "OTEL_TRACES_SAMPLER=always_off records nothing");
}

// ---- the template users copy ------------------------------------------------------------------

#[test]
fn the_hook_template_writes_one_line_per_span() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("console.txt");
    let guard = Tracing::new("filament_hook_template:setup_tracing")
        .config("CONSOLE_SPANS_FILE", out.to_str().unwrap())
        .config("CONSOLE_SPANS_ENVIRONMENT", "staging")
        .build()
        .unwrap();
    make_spans(&guard, 2);
    let reports = guard.processors();
    guard.shutdown().unwrap();
    assert_eq!(reports[0].name, "console");
    assert_eq!(reports[0].plugin.exported, 2);
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].starts_with(&format!("[pid {}] span-0 Internal ", std::process::id())),
        "{text}"
    );
}

#[test]
fn the_hook_templates_file_keeps_every_line_whole_across_a_four_worker_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("console.txt");
    let output = Command::new(env!("CARGO_BIN_EXE_cluster-program"))
        .args(["many", "2000"])
        .env(
            "FILAMENT_TRACING_STARTUP_HOOK",
            "filament_hook_template:setup_tracing",
        )
        .env("CONSOLE_SPANS_FILE", &out)
        .env("TEST_WORKERS", "4")
        .env_remove("FILAMENT_ADDRESS")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    // Five processes append to one file: no line truncated away, none glued to another.
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4000, "2,000 PRODUCER and 2,000 CONSUMER spans");
    assert!(
        lines.iter().all(|line| line.starts_with("[pid ")
            && line.matches("[pid ").count() == 1
            && line.contains(" trace=")),
        "a line is not whole"
    );
    let pids: std::collections::HashSet<&str> = lines
        .iter()
        .map(|line| line.split(']').next().unwrap())
        .collect();
    assert_eq!(pids.len(), 5, "the driver and four workers: {pids:?}");
}
