//! Helpers for Filament's end-to-end tests: read span files back with the OTLP decoder of the
//! `opentelemetry-proto` crate, and find the things tests start.

#![warn(missing_docs)]

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{Span, TracesData};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output};

/// One span read back from a span file, with the resource and scope of its line.
#[derive(Debug, Clone)]
pub struct ReadSpan {
    /// The span as OTLP defines it.
    pub span: Span,
    /// The resource's attributes.
    pub resource: Vec<KeyValue>,
    /// The instrumentation scope's name.
    pub scope_name: String,
}

impl ReadSpan {
    /// The span's name.
    pub fn name(&self) -> &str {
        &self.span.name
    }

    /// The trace id in lower-case hex.
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    /// The span id in lower-case hex.
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    /// The parent span id in lower-case hex; empty for a root span.
    pub fn parent_span_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    /// A span attribute.
    pub fn attribute(&self, key: &str) -> Option<&any_value::Value> {
        find(&self.span.attributes, key)
    }

    /// A resource attribute.
    pub fn resource_attribute(&self, key: &str) -> Option<&any_value::Value> {
        find(&self.resource, key)
    }
}

/// The value of `key` in a list of OTLP attributes.
pub fn find<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

/// Lower-case hex of some bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a span file: every line must be one OTLP/JSON `TracesData`. Panics, naming the file and
/// line, on anything else.
pub fn read_span_file(path: &Path) -> Vec<ReadSpan> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading span file {}: {e}", path.display()));
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "{} does not end with a newline: a line was cut",
        path.display()
    );
    let mut spans = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let data: TracesData = serde_json::from_str(line).unwrap_or_else(|e| {
            panic!(
                "{} line {}: not OTLP/JSON TracesData: {e}\n{line}",
                path.display(),
                number + 1
            )
        });
        for resource_spans in data.resource_spans {
            let resource = resource_spans
                .resource
                .map(|r| r.attributes)
                .unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                let scope_name = scope_spans.scope.map(|s| s.name).unwrap_or_default();
                for span in scope_spans.spans {
                    spans.push(ReadSpan {
                        span,
                        resource: resource.clone(),
                        scope_name: scope_name.clone(),
                    });
                }
            }
        }
    }
    spans
}

/// Reads every `<pid>.json` of a spans directory, by pid.
pub fn read_spans_dir(dir: &Path) -> BTreeMap<u32, Vec<ReadSpan>> {
    let mut by_pid = BTreeMap::new();
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        let pid = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
            .and_then(|n| n.parse::<u32>().ok());
        if let Some(pid) = pid {
            by_pid.insert(pid, read_span_file(&path));
        }
    }
    by_pid
}

/// The directory of the test executables' build profile (`target/<profile>/`), where cargo puts the
/// plugin libraries the tests depend on.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe.parent().expect("the executable's directory");
    match dir.file_name().and_then(|n| n.to_str()) {
        Some("deps" | "examples") => dir.parent().expect("target/<profile>").to_owned(),
        _ => dir.to_owned(),
    }
}

/// The path of a plugin library built for the tests (`lib<name>.so`).
pub fn plugin_path(name: &str) -> PathBuf {
    let file = format!("lib{name}.so");
    let dir = profile_dir();
    [dir.join("deps").join(&file), dir.join(&file)]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{file} was not built in {}", dir.display()))
}

/// A finished run of a test program (`cluster-program`): the `key=value` lines it printed, and the
/// spans of its job (`job_id=`) read from a spans directory.
#[derive(Debug)]
pub struct Run {
    /// What the program printed, and how it ended.
    pub output: Output,
    /// Its `key=value` lines.
    pub values: HashMap<String, String>,
    /// Spans of this run's job, by the pid of the file they were in.
    pub spans: BTreeMap<u32, Vec<ReadSpan>>,
}

impl Run {
    /// Reads the run's lines and the spans of its job from `spans_dir`.
    pub fn new(output: Output, spans_dir: &Path) -> Run {
        let values: HashMap<String, String> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let job = any_value::Value::StringValue(values.get("job_id").cloned().unwrap_or_default());
        let spans = read_spans_dir(spans_dir)
            .into_iter()
            .map(|(pid, spans)| {
                let ours: Vec<ReadSpan> = spans
                    .into_iter()
                    .filter(|s| s.resource_attribute("filament.job_id") == Some(&job))
                    .collect();
                (pid, ours)
            })
            .filter(|(_, spans)| !spans.is_empty())
            .collect();
        Run {
            output,
            values,
            spans,
        }
    }

    /// The exit status and both outputs, for assertion messages.
    pub fn text(&self) -> String {
        output_text(&self.output)
    }

    /// The run, having checked that it succeeded.
    pub fn ok(self) -> Run {
        assert!(self.output.status.success(), "{}", self.text());
        self
    }

    /// The value of a `key=value` line; panics, showing the output, if there is none.
    pub fn value(&self, key: &str) -> &str {
        self.values
            .get(key)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no {key}= in {}", self.text()))
    }

    /// The driver's pid (`driver_pid=`).
    pub fn driver_pid(&self) -> u32 {
        self.value("driver_pid").parse().unwrap()
    }

    /// Every span of the job.
    pub fn all(&self) -> Vec<&ReadSpan> {
        self.spans.values().flatten().collect()
    }

    /// Every span of the job, with the pid of the file it was in.
    pub fn with_pids(&self) -> Vec<(u32, &ReadSpan)> {
        self.spans
            .iter()
            .flat_map(|(pid, spans)| spans.iter().map(move |s| (*pid, s)))
            .collect()
    }

    /// The one span of this name, and the pid of its process.
    pub fn span(&self, name: &str) -> (u32, &ReadSpan) {
        let found: Vec<_> = self
            .with_pids()
            .into_iter()
            .filter(|(_, s)| s.name() == name)
            .collect();
        assert_eq!(found.len(), 1, "spans named {name:?}: {:?}", self.names());
        found[0]
    }

    /// The spans' names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.all().iter().map(|s| s.name().to_owned()).collect();
        names.sort();
        names
    }

    /// Every span's parent is a span of the run, or it is the one root, of one trace.
    pub fn assert_one_tree(&self) {
        let all = self.all();
        let ids: BTreeSet<String> = all.iter().map(|s| s.span_id()).collect();
        let traces: BTreeSet<String> = all.iter().map(|s| s.trace_id()).collect();
        assert_eq!(traces.len(), 1, "one trace: {:?}", self.names());
        let roots = all
            .iter()
            .filter(|s| !ids.contains(&s.parent_span_id()))
            .count();
        assert_eq!(roots, 1, "one root: {:?}", self.names());
    }
}

/// Gives `command` the session folder `temp_dir` (`FILAMENT_TEMP_DIR`) and none of the variables
/// that would attach it to another cluster or bring another hook: what a standing cluster's test
/// runs (`filament`, a driver) sees only that test's cluster.
pub fn in_session<'a>(command: &'a mut Command, temp_dir: &Path) -> &'a mut Command {
    command
        .env("FILAMENT_TEMP_DIR", temp_dir)
        .env("RUST_BACKTRACE", "0")
        .env_remove("FILAMENT_ADDRESS")
        .env_remove("FILAMENT_CLUSTER_TOKEN")
        .env_remove("FILAMENT_TRACING_STARTUP_HOOK")
}

/// Runs `command`, whose program was copied a moment ago, to its end. Another test's child may
/// still hold the copy open for writing between its fork and its exec (the descriptor is
/// close-on-exec, but not yet closed): running the copy then fails with ETXTBSY, so this tries
/// again a moment later.
pub fn output_of_copied(command: &mut std::process::Command) -> Output {
    let mut tries = 0;
    loop {
        match command.output() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            result => return result.expect("the copied program runs"),
        }
    }
}

/// A process's exit status and both outputs, for assertion messages.
pub fn output_text(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Checks that the driver of a `cluster-program prints` run printed its worker's lines (one to
/// each stream, and a panic's), prefixed with the worker.
pub fn assert_worker_output_forwarded(run: &Run) {
    let printer = run.value("printer_pid");
    let stdout = String::from_utf8_lossy(&run.output.stdout);
    let stderr = String::from_utf8_lossy(&run.output.stderr);
    let prefixed = |text: &str, output: &str| {
        output.lines().any(|line| {
            line.starts_with("(worker ")
                && line.contains(&format!(" pid={printer} node="))
                && line.ends_with(text)
        })
    };
    assert!(
        prefixed(") hello from a task on stdout", &stdout),
        "{stdout}"
    );
    assert!(
        prefixed(") hello from a task on stderr", &stderr),
        "{stderr}"
    );
    // A panic's message is a worker's output too.
    assert!(
        stderr
            .lines()
            .any(|line| line.starts_with("(worker ") && line.ends_with(") boom in a task")),
        "{stderr}"
    );
}

/// Builds `target` (`["--bin", "filament"]`, `["--example", "quickstart"]`) of `package` in this
/// test's profile and returns `relative` under the profile's folder. `cargo test --workspace` builds
/// them, but a test of one package alone would find an old one, or none.
fn cargo_built(package: &str, target: [&str; 2], relative: &str) -> PathBuf {
    let profile = profile_dir();
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .args(["build", "--quiet", "-p", package])
        .args(target)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile.file_name().is_some_and(|n| n == "release") {
        cargo.arg("--release");
    }
    let status = cargo.status().expect("cargo runs");
    assert!(status.success(), "building {package} {target:?} failed");
    let path = profile.join(relative);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// The `filament` binary, built fresh once per test process.
pub fn filament_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| cargo_built("filament", ["--bin", "filament"], "filament"))
        .clone()
}

/// The quickstart example, built fresh once per test process.
pub fn quickstart_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            cargo_built(
                "filament-examples",
                ["--example", "quickstart"],
                "examples/quickstart",
            )
        })
        .clone()
}

/// Asserts that `child` is a child of `parent`: the same trace, and `parent` as its parent span.
pub fn assert_child_of(child: &ReadSpan, parent: &ReadSpan) {
    assert_eq!(
        child.trace_id(),
        parent.trace_id(),
        "{} in the trace of {}",
        child.name(),
        parent.name()
    );
    assert_eq!(
        child.parent_span_id(),
        parent.span_id(),
        "{} is a child of {}",
        child.name(),
        parent.name()
    );
}

/// The CPU time all threads of process `pid` have used so far, in nanoseconds (the first field of
/// each thread's `schedstat`), and how many times they were given a CPU (the third: each wake-up,
/// or return after being preempted, counts one).
pub fn cpu_and_switches(pid: u32) -> (u64, u64) {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the process is alive")
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
            let mut fields = stat.split_whitespace().map(|f| f.parse::<u64>().ok());
            Some((fields.next()??, fields.nth(1)??))
        })
        .fold((0, 0), |(cpu, switches), (c, s)| (cpu + c, switches + s))
}

/// The processes of process group `group` still running (zombies are not).
pub fn group_members(group: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
            let state = fields.next()?;
            let pgrp: u32 = fields.nth(1)?.parse().ok()?;
            (pgrp == group && state != "Z").then_some(pid)
        })
        .collect()
}

/// Reads a spawned program's output up to its line `submitted`; returns a reader of the rest.
pub fn wait_for_submitted(child: &mut Child) -> BufReader<ChildStdout> {
    let mut stdout = BufReader::new(child.stdout.take().expect("a piped standard output"));
    let mut line = String::new();
    loop {
        line.clear();
        let n = stdout.read_line(&mut line).unwrap();
        assert!(n > 0, "the program ended before submitting");
        if line.trim() == "submitted" {
            return stdout;
        }
    }
}

/// The pids of the processes that ran `cluster-program under-fire`'s four slow tasks, from its
/// `slowN=ok <pid>` lines; panics, showing every line, if one of them failed.
pub fn slow_task_pids(lines: &[String]) -> Vec<u32> {
    let pids: Vec<u32> = lines
        .iter()
        .filter(|l| l.starts_with("slow") && !l.starts_with("slow_done"))
        .map(|l| {
            l.split_once("=ok ")
                .and_then(|(_, pid)| pid.parse().ok())
                .unwrap_or_else(|| panic!("{l}:\n{}", lines.join("\n")))
        })
        .collect();
    assert_eq!(pids.len(), 4, "{}", lines.join("\n"));
    pids
}
