//! A standing cluster, end to end: the `filament` command starts a head (and nodes) in the
//! background, real drivers (`cluster-program`, the quickstart) attach with `FILAMENT_ADDRESS`, the
//! local-file hook writes every process's spans, read back with the OTLP decoder; `status` is read
//! as JSON; processes are killed with SIGKILL. Every test has session and span folders of its own
//! and stops what it started.

use filament_tests::{
    ReadSpan, Run, filament_bin, group_members, output_text, read_span_file, read_spans_dir,
    slow_task_pids, wait_for_submitted,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use serde_json::Value as Json;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const LOCAL_FILE: &str = "filament_local_file:setup_tracing";

/// A cluster's folders; dropping it runs `filament stop` for them.
struct Cluster {
    temp: tempfile::TempDir,
    spans: tempfile::TempDir,
    /// `FILAMENT_TEMP_DIR`: `temp`, or a link to it.
    root: PathBuf,
}

impl Cluster {
    fn new() -> Cluster {
        let temp = tempfile::tempdir().unwrap();
        Cluster {
            root: temp.path().to_owned(),
            temp,
            spans: tempfile::tempdir().unwrap(),
        }
    }

    /// A cluster whose `FILAMENT_TEMP_DIR` is a symbolic link to its folder.
    fn behind_a_link() -> (Cluster, tempfile::TempDir) {
        let mut cluster = Cluster::new();
        let links = tempfile::tempdir().unwrap();
        let link = links.path().join("filament-root");
        std::os::unix::fs::symlink(cluster.temp.path(), &link).unwrap();
        cluster.root = link;
        (cluster, links)
    }

    fn command(&self, program: &Path) -> Command {
        let mut command = Command::new(program);
        filament_tests::in_session(&mut command, &self.root)
            .env("FILAMENT_SPANS_DIR", self.spans.path());
        command
    }

    fn filament(&self, args: &[&str]) -> Output {
        self.command(&filament_bin()).args(args).output().unwrap()
    }

    fn start_head(&self, hook: Option<&str>, cpus: u32) -> String {
        let cpus = cpus.to_string();
        let mut args = vec!["start", "--head", "--port", "0", "--num-cpus", &cpus];
        if let Some(hook) = hook {
            args.extend(["--tracing-startup-hook", hook]);
        }
        let output = self.filament(&args);
        assert!(
            output.status.success(),
            "start --head: {}",
            output_text(&output)
        );
        // On loopback, as by default: `start` says other machines cannot join, and how they could.
        let said = String::from_utf8_lossy(&output.stdout);
        assert!(
            said.contains("It listens on loopback only")
                && said.contains("start it with --host 0.0.0.0"),
            "{said}"
        );
        self.session_file("address")
    }

    fn join_node(&self, address: &str, cpus: u32) -> Output {
        let cpus = cpus.to_string();
        self.filament(&["start", "--address", address, "--num-cpus", &cpus])
    }

    fn session_file(&self, name: &str) -> String {
        let path = self.temp.path().join("session_latest").join(name);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .to_owned()
    }

    /// The daemons' pids, from every session's pid file.
    fn daemon_pids(&self) -> Vec<(String, u32)> {
        let mut pids = Vec::new();
        for entry in std::fs::read_dir(self.temp.path()).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == "session_latest" || !name.starts_with("session_") {
                continue;
            }
            let role = std::fs::read_to_string(entry.path().join("role")).unwrap_or_default();
            if let Ok(pid) = std::fs::read_to_string(entry.path().join("daemon.pid")) {
                pids.push((role.trim().to_owned(), pid.trim().parse().unwrap()));
            }
        }
        pids
    }

    fn status(&self) -> Json {
        let output = self.filament(&["status", "--json"]);
        assert!(output.status.success(), "status: {}", output_text(&output));
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// Runs `cluster-program` attached to the cluster.
    fn run_program(&self, args: &[&str], envs: &[(&str, &str)]) -> Run {
        let mut command = self.command(Path::new(env!("CARGO_BIN_EXE_cluster-program")));
        command.args(args).env("FILAMENT_ADDRESS", "auto");
        for (key, value) in envs {
            command.env(key, value);
        }
        Run::new(command.output().unwrap(), self.spans.path())
    }

    fn spawn_program(&self, args: &[&str]) -> Child {
        self.command(Path::new(env!("CARGO_BIN_EXE_cluster-program")))
            .args(args)
            .env("FILAMENT_ADDRESS", "auto")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let pids = self.daemon_pids();
        if !pids.is_empty() {
            let _ = self.filament(&["stop"]);
        }
    }
}

fn attr<'a>(span: &'a ReadSpan, key: &str) -> &'a Value {
    span.attribute(key)
        .unwrap_or_else(|| panic!("{} has no {key}", span.name()))
}

fn kind(span: &ReadSpan) -> SpanKind {
    SpanKind::try_from(span.span.kind).unwrap()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat[stat.rfind(')')? + 1..]
                .split_whitespace()
                .next()?
                .to_owned();
            Some(state != "Z")
        })
        .unwrap_or(false)
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn kill(pid: u32) {
    let status = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -KILL {pid}");
}

#[test]
fn the_seed_cli_path_gives_the_embedded_span_trees() {
    let cluster = Cluster::new();
    cluster.start_head(Some(LOCAL_FILE), 2);
    let head_pid = cluster.session_file("daemon.pid").parse::<u32>().unwrap();
    // The head ran the hook to check it, and records no span: no file of its own.
    assert!(
        !cluster
            .spans
            .path()
            .join(format!("{head_pid}.json"))
            .exists(),
        "the head left a span file"
    );

    // A task: a PRODUCER in the driver's file, its CONSUMER in a worker's.
    let run = cluster.run_program(&["one-task"], &[]).ok();
    assert_eq!(run.value("result"), "3");
    let driver: u32 = run.value("driver_pid").parse().unwrap();
    assert_eq!(run.all().len(), 2, "{:?}", run.names());
    let (producer_pid, producer) = run.span("cluster_program::add filament.remote");
    let (consumer_pid, consumer) = run.span("cluster_program::add filament.remote_worker");
    assert_eq!(producer_pid, driver);
    assert_ne!(consumer_pid, driver);
    assert_eq!(kind(producer), SpanKind::Producer);
    assert_eq!(kind(consumer), SpanKind::Consumer);
    assert_eq!(consumer.parent_span_id(), producer.span_id());
    // The worker is a node's: its node id is the head's node, not the driver's machine id.
    let status = cluster.status();
    let head_node = status["nodes"][0]["node_id"].as_str().unwrap();
    assert_eq!(
        attr(consumer, "filament.node_id"),
        &Value::StringValue(head_node.to_owned())
    );
    // The driver runs on the head's machine: one node id for the whole job.
    assert_eq!(
        attr(producer, "filament.node_id"),
        &Value::StringValue(head_node.to_owned())
    );
    assert_eq!(
        attr(consumer, "filament.job_id"),
        &Value::StringValue(run.value("job_id").to_owned())
    );

    // An actor and a call: 4 spans.
    let run = cluster.run_program(&["actor-one-call"], &[]).ok();
    assert_eq!(run.value("result"), "1");
    assert_eq!(run.all().len(), 4, "{:?}", run.names());

    // Nested tasks: one chain across three processes.
    let run = cluster.run_program(&["nested"], &[]).ok();
    assert_eq!(run.value("result"), "50");
    run.assert_one_tree();
    assert_eq!(run.all().len(), 4);
    assert_eq!(run.spans.len(), 3, "three processes wrote spans");

    // A custom span under its CONSUMER.
    let run = cluster.run_program(&["custom-span"], &[]).ok();
    let (foo_pid, foo) = run.span("foo");
    let (consumer_pid, consumer) =
        run.span("cluster_program::with_custom_span filament.remote_worker");
    assert_eq!(foo_pid, consumer_pid);
    assert_eq!(foo.parent_span_id(), consumer.span_id());

    // The quickstart, attached: the seed's trees.
    let quickstart = filament_tests::quickstart_bin();
    let output = cluster
        .command(&quickstart)
        .env("FILAMENT_ADDRESS", "auto")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "quickstart: {}",
        output_text(&output)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("my_function returned 1"), "{stdout}");
    for line in [
        "└─ quickstart::my_func filament.remote (producer",
        "   └─ quickstart::my_func filament.remote_worker (consumer",
        "      └─ foo (internal",
        "└─ quickstart::my_function filament.remote (producer",
        "   └─ quickstart::my_function filament.remote_worker (consumer",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }

    // A job running now: status shows the hook loaded in every process, with span counts.
    let mut child = cluster.spawn_program(&["workers", "hang"]);
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let mut job = String::new();
    while !line.starts_with("hanging") {
        line.clear();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "the program ended"
        );
        if let Some(id) = line.trim().strip_prefix("job_id=") {
            job = id.to_owned();
        }
    }
    let mut seen = Json::Null;
    wait_until(
        "status shows the running job's processes",
        Duration::from_secs(20),
        || {
            seen = cluster.status();
            let Some(job) = seen["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .find(|j| j["job_id"] == job.as_str() && j["state"] == "running")
            else {
                return false;
            };
            let processes = job["processes"].as_array().unwrap();
            // The driver and 2 workers, each with its hook loaded and its spans counted.
            processes.len() == 3
                && processes.iter().all(|p| p["hook"] == "loaded")
                && processes
                    .iter()
                    .all(|p| p["spans_exported"].as_u64() > Some(0))
        },
    );
    assert_eq!(seen["nodes"][0]["hook"], "loaded");
    assert_eq!(seen["hook"], LOCAL_FILE);
    // The driver is on the head's machine: its row names that node, as its spans do.
    let driver = seen["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_id"] == job.as_str())
        .and_then(|j| j["processes"].as_array())
        .and_then(|p| p.iter().find(|p| p["kind"] == "driver"))
        .unwrap_or_else(|| panic!("{seen}"));
    assert_eq!(driver["node_id"], seen["nodes"][0]["node_id"], "{seen}");
    let text_status = cluster.filament(&["status"]);
    let text_status = String::from_utf8_lossy(&text_status.stdout).into_owned();
    assert!(
        text_status.contains(&format!("job {job}  running")),
        "{text_status}"
    );
    // The driver's port for its workers refuses anything else, and says so.
    let job_address = seen["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_id"] == job.as_str())
        .and_then(|j| j["worker_address"].as_str())
        .unwrap()
        .to_owned();
    let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let collected = std::sync::Arc::clone(&stderr);
    let driver_stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(driver_stderr).lines().map_while(Result::ok) {
            collected.lock().unwrap().push_str(&line);
        }
    });
    {
        use std::io::Write;
        let mut stranger = std::net::TcpStream::connect(&job_address).unwrap();
        stranger.write_all(&[3, 0, 0, 0, 0xff, 0xff, 0xff]).unwrap();
    }
    wait_until(
        "the driver logs the refusal",
        Duration::from_secs(10),
        || {
            stderr
                .lock()
                .unwrap()
                .contains("refused a connection from 127.0.0.1")
        },
    );
    // A process that presents the wrong token to the driver's port is refused, and the driver
    // says so.
    // (It poses as a node's worker: the token comes first on its standard input.)
    let mut fake = cluster
        .command(Path::new(env!("CARGO_BIN_EXE_cluster-program")))
        .env("FILAMENT_WORKER", format!("tcp:{job_address}:99"))
        .env("FILAMENT_NODE_PIPE", "1")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = fake.stdin.take().unwrap();
    {
        use std::io::Write;
        writeln!(pipe, "not-the-token").unwrap();
    }
    let mut fake_stderr = String::new();
    std::io::Read::read_to_string(&mut fake.stderr.take().unwrap(), &mut fake_stderr).unwrap();
    let fake_status = fake.wait().unwrap();
    drop(pipe);
    assert!(!fake_status.success(), "{fake_stderr}");
    assert!(
        fake_stderr.contains("refused by the driver: wrong or missing cluster token"),
        "{fake_stderr}"
    );
    wait_until(
        "the driver logs the wrong token",
        Duration::from_secs(10),
        || {
            stderr
                .lock()
                .unwrap()
                .contains("wrong or missing cluster token")
        },
    );

    // The driver killed: its job ends, and its workers with it.
    let workers: Vec<u32> = seen["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_id"] == job.as_str())
        .unwrap()["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["kind"] == "worker")
        .map(|p| p["pid"].as_u64().unwrap() as u32)
        .collect();
    assert_eq!(workers.len(), 2);
    // The token reached them through their node's pipe, not their environment (which every
    // process a task starts would inherit).
    let token = cluster.session_file("token");
    for pid in &workers {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let environ = String::from_utf8_lossy(&environ);
        assert!(
            !environ.contains(&token),
            "worker {pid} has the token in its environment"
        );
    }
    let _ = child.kill();
    let _ = child.wait();
    wait_until(
        "the killed driver's workers end",
        Duration::from_secs(10),
        || workers.iter().all(|pid| !alive(*pid)),
    );
    wait_until(
        "the killed driver's job ends",
        Duration::from_secs(10),
        || {
            cluster.status()["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|j| j["job_id"] == job.as_str() && j["state"] != "running")
        },
    );

    // Jobs ran in processes of their own: no span file holds two jobs' spans.
    for (pid, spans) in read_spans_dir(cluster.spans.path()) {
        let jobs: BTreeSet<String> = spans
            .iter()
            .map(|s| format!("{:?}", s.resource_attribute("filament.job_id")))
            .collect();
        assert!(jobs.len() <= 1, "{pid}.json holds spans of jobs {jobs:?}");
    }

    // Stop: nothing is left, and within 5 seconds.
    let started = Instant::now();
    let output = cluster.filament(&["stop"]);
    assert!(output.status.success(), "stop: {}", output_text(&output));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        started.elapsed()
    );
    assert!(!alive(head_pid), "the head survived stop");
    assert_eq!(
        group_members(head_pid),
        Vec::<u32>::new(),
        "processes survived stop"
    );
    let output = cluster.filament(&["status"]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("no Filament cluster runs on this machine"),
        "{}",
        output_text(&output)
    );
}

#[test]
fn two_nodes_run_one_trace() {
    // Through a link: status and stop find the daemons all the same.
    let (cluster, _links) = Cluster::behind_a_link();
    let address = cluster.start_head(Some(LOCAL_FILE), 2);
    let output = cluster.join_node(&address, 2);
    assert!(output.status.success(), "join: {}", output_text(&output));
    let status = cluster.status();
    let nodes: Vec<String> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(nodes.len(), 2, "{status}");
    assert!(
        status["nodes"][1]["hook"]
            .as_str()
            .unwrap()
            .starts_with("checked")
    );

    let run = cluster.run_program(&["fan-out"], &[]).ok();
    run.assert_one_tree();
    // The fan-out task and its 8 tasks: 18 spans, in one trace.
    assert_eq!(run.all().len(), 18, "{:?}", run.names());
    let consumer_nodes: BTreeSet<String> = run
        .all()
        .iter()
        .filter(|s| kind(s) == SpanKind::Consumer)
        .map(|s| match attr(s, "filament.node_id") {
            Value::StringValue(node) => node.clone(),
            other => panic!("node id {other:?}"),
        })
        .collect();
    assert_eq!(
        consumer_nodes,
        nodes.iter().cloned().collect::<BTreeSet<_>>(),
        "tasks ran on both nodes"
    );

    // Actors too are placed by free CPUs: with every CPU taken by the pool, one on each node.
    let run = cluster.run_program(&["two-actors"], &[]).ok();
    assert_eq!((run.value("first"), run.value("second")), ("1", "11"));
    let actor_nodes: BTreeSet<String> = run
        .all()
        .iter()
        .filter(|s| s.name() == "cluster_program::Counter::incr filament.remote_worker")
        .map(|s| format!("{:?}", attr(s, "filament.node_id")))
        .collect();
    assert_eq!(
        actor_nodes.len(),
        2,
        "actors on both nodes: {actor_nodes:?}"
    );

    let pids = cluster.daemon_pids();
    assert_eq!(pids.len(), 2);
    let output = cluster.filament(&["stop"]);
    assert!(output.status.success(), "stop: {}", output_text(&output));
    for (role, pid) in pids {
        assert!(!alive(pid), "the {role} survived stop");
        assert_eq!(group_members(pid), Vec::<u32>::new(), "{role}'s processes");
    }
}

#[test]
fn a_broken_hook_at_start_starts_nothing() {
    let cluster = Cluster::new();
    let not_a_library = cluster.temp.path().join("not-a-library.so");
    std::fs::write(&not_a_library, "not ELF").unwrap();
    let cases = [
        (
            "no_such_library:setup_tracing".to_owned(),
            "no_such_library",
        ),
        ("libc.so.6:printf".to_owned(), "printf"),
        (
            format!("{}:setup_tracing", not_a_library.display()),
            "not-a-library.so",
        ),
        ("filament_test_hooks:setup_fails".to_owned(), "setup_fails"),
        (
            "filament_test_hooks:setup_panics".to_owned(),
            "setup_panics",
        ),
        (
            "filament_test_hooks:next_major_version".to_owned(),
            "version",
        ),
        ("filament_local_file".to_owned(), "library:symbol"),
    ];
    for (hook, expected) in cases {
        let output = cluster.filament(&[
            "start",
            "--head",
            "--port",
            "0",
            "--tracing-startup-hook",
            &hook,
        ]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "{hook}: started:\n{}",
            output_text(&output)
        );
        assert!(
            stderr.contains(expected),
            "{hook}: {expected:?} not in:\n{stderr}"
        );
        assert!(stderr.contains("hook"), "{hook}: {stderr}");
        assert_eq!(
            cluster.daemon_pids(),
            Vec::new(),
            "{hook}: a daemon was left"
        );
        let sessions = std::fs::read_dir(cluster.temp.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("session_1"))
            .count();
        assert_eq!(sessions, 0, "{hook}: a session folder was left");
    }
}

#[test]
fn a_hook_whose_setup_blocks_fails_start_at_its_deadline_pointing_at_a_log_that_exists() {
    let cluster = Cluster::new();
    let started = Instant::now();
    let output = cluster
        .command(&filament_bin())
        .args(["start", "--head", "--port", "0"])
        .args(["--tracing-startup-hook", "filament_test_hooks:setup_blocks"])
        .env("FILAMENT_HOOK_SETUP_TIMEOUT", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{}", output_text(&output));
    assert!(
        stderr
            .contains("hook \"filament_test_hooks:setup_blocks\": setup did not return within 1s"),
        "{stderr}"
    );
    // Within the deadline and a little, not `start`'s own minute.
    assert!(started.elapsed() < Duration::from_secs(30), "{stderr}");
    let log = stderr
        .split("(the daemon's log: ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no log named in: {stderr}"));
    let text = std::fs::read_to_string(log).unwrap_or_else(|e| panic!("{log}: {e}"));
    assert!(text.contains("setup did not return within 1s"), "{text}");
    assert_eq!(cluster.daemon_pids(), Vec::new(), "a daemon was left");
}

#[test]
fn a_hook_that_fails_in_workers_fails_the_driver_and_shows_in_status() {
    let cluster = Cluster::new();
    cluster.start_head(Some("filament_test_hooks:fails_in_workers"), 2);
    let run = cluster.run_program(&["one-task"], &[]);
    assert_eq!(
        run.output.status.code(),
        Some(3),
        "{}",
        output_text(&run.output)
    );
    let stderr = String::from_utf8_lossy(&run.output.stderr);
    assert!(
        stderr.contains("no collector is reachable from worker processes")
            && stderr.contains("worker"),
        "{stderr}"
    );
    let status = cluster.status();
    let failed = status["jobs"][0]["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            let hook = p["hook"].as_str().unwrap();
            hook.starts_with("failed: ") && hook.contains("no collector is reachable")
        })
        .count();
    assert!(failed > 0, "{status}");
    assert_ne!(status["jobs"][0]["state"], "running");
}

#[test]
fn session_folders_others_can_write_are_refused() {
    let cluster = Cluster::new();
    let open = cluster.temp.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let output = cluster
        .command(&filament_bin())
        .args(["start", "--head", "--port", "0"])
        .env("FILAMENT_TEMP_DIR", &open)
        .output()
        .unwrap();
    assert!(!output.status.success(), "{}", output_text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("may be written by others"), "{stderr}");
    assert_eq!(std::fs::read_dir(&open).unwrap().count(), 0);
    // A driver does not trust it either.
    let run = cluster.run_program(
        &["one-task"],
        &[("FILAMENT_TEMP_DIR", open.to_str().unwrap())],
    );
    assert_eq!(
        run.output.status.code(),
        Some(3),
        "{}",
        output_text(&run.output)
    );
    assert!(
        String::from_utf8_lossy(&run.output.stderr).contains("may be written by others"),
        "{}",
        output_text(&run.output)
    );
}

#[test]
fn bad_starts_and_nothing_running() {
    let cluster = Cluster::new();
    // Nothing runs yet.
    for args in [&["stop"][..], &["status"][..]] {
        let output = cluster.filament(args);
        assert!(
            !output.status.success(),
            "{args:?}: {}",
            output_text(&output)
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("no Filament") && stderr.contains("runs on this machine"),
            "{args:?}: {stderr}"
        );
    }
    // Attaching with no head.
    let run = cluster.run_program(&["one-task"], &[]);
    assert_eq!(
        run.output.status.code(),
        Some(3),
        "{}",
        output_text(&run.output)
    );
    assert!(
        String::from_utf8_lossy(&run.output.stderr)
            .contains("no Filament cluster runs on this machine"),
        "{}",
        output_text(&run.output)
    );

    // A port in use.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let output = cluster.filament(&["start", "--head", "--port", &port]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("port {port} is in use")),
        "{stderr}"
    );
    assert_eq!(cluster.daemon_pids(), Vec::new());

    // A head already running.
    let address = cluster.start_head(None, 1);
    let output = cluster.filament(&["start", "--head", "--port", "0"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("a head is already running"), "{stderr}");
    assert_eq!(cluster.daemon_pids().len(), 1);

    // A head at an address nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let run = cluster.run_program(
        &["one-task"],
        &[
            ("FILAMENT_ADDRESS", &closed),
            ("FILAMENT_CLUSTER_TOKEN", "x"),
        ],
    );
    assert_eq!(run.output.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&run.output.stderr).contains("no head answers"),
        "{}",
        output_text(&run.output)
    );

    // Wrong tokens: a node and a driver are refused, and the head logs it.
    let output = cluster
        .command(&filament_bin())
        .args(["start", "--address", &address])
        .env("FILAMENT_CLUSTER_TOKEN", "not-the-token")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("wrong cluster token"),
        "{}",
        output_text(&output)
    );
    let run = cluster.run_program(
        &["one-task"],
        &[("FILAMENT_CLUSTER_TOKEN", "not-the-token")],
    );
    assert_eq!(run.output.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&run.output.stderr).contains("wrong cluster token"),
        "{}",
        output_text(&run.output)
    );
    // A connection that is not Filament's at all.
    {
        use std::io::Write;
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        stream.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    }
    let log_path = cluster.temp.path().join("session_latest/logs/daemon.log");
    wait_until("the head logs the refusals", Duration::from_secs(5), || {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        log.matches("refused a connection").count() >= 3
    });
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("wrong cluster token"), "{log}");
    assert!(log.contains("no Filament hello"), "{log}");
    // "GET " read as a frame length announces 517 MB: refused before anything is allocated.
    assert!(log.contains("exceeds the 65536-byte limit"), "{log}");
    // Still serving.
    assert!(cluster.status()["nodes"].as_array().unwrap().len() == 1);
}

#[test]
fn a_driver_may_not_bring_another_hook() {
    let cluster = Cluster::new();
    cluster.start_head(Some(LOCAL_FILE), 1);
    // Another hook: refused, naming both.
    let run = cluster.run_program(
        &["one-task"],
        &[(
            "FILAMENT_TRACING_STARTUP_HOOK",
            "filament_test_hooks:adds_nothing",
        )],
    );
    assert_eq!(
        run.output.status.code(),
        Some(3),
        "{}",
        output_text(&run.output)
    );
    let stderr = String::from_utf8_lossy(&run.output.stderr);
    assert!(
        stderr.contains("filament_test_hooks:adds_nothing") && stderr.contains(LOCAL_FILE),
        "{stderr}"
    );
    // The same hook, named by its path: fine.
    let same = format!(
        "{}:setup_tracing",
        filament_tests::plugin_path("filament_local_file").display()
    );
    let run = cluster
        .run_program(&["one-task"], &[("FILAMENT_TRACING_STARTUP_HOOK", &same)])
        .ok();
    assert_eq!(run.all().len(), 2);

    // A cluster without a hook refuses a driver's hook too.
    let bare = Cluster::new();
    bare.start_head(None, 1);
    let run = bare.run_program(
        &["one-task"],
        &[("FILAMENT_TRACING_STARTUP_HOOK", LOCAL_FILE)],
    );
    assert_eq!(
        run.output.status.code(),
        Some(3),
        "{}",
        output_text(&run.output)
    );
    assert!(
        String::from_utf8_lossy(&run.output.stderr).contains("cluster's (none)"),
        "{}",
        output_text(&run.output)
    );
    // And with none, a job runs untraced.
    let run = bare.run_program(&["one-task"], &[]).ok();
    assert_eq!(run.value("result"), "3");
    assert!(run.spans.is_empty());
}

#[test]
fn a_job_is_configured_by_its_driver_not_by_the_daemons() {
    let cluster = Cluster::new();
    // A relative hook path, and a variable the driver does not have, at start.
    let plugin = filament_tests::plugin_path("filament_local_file");
    let output = cluster
        .command(&filament_bin())
        .current_dir(plugin.parent().unwrap())
        .args(["start", "--head", "--port", "0", "--num-cpus", "2"])
        .args([
            "--tracing-startup-hook",
            "./libfilament_local_file.so:setup_tracing",
        ])
        .env("OTEL_SERVICE_NAME", "from-the-head")
        .output()
        .unwrap();
    assert!(output.status.success(), "start: {}", output_text(&output));
    // Stored as an absolute path: drivers run anywhere.
    let status = cluster.status();
    assert_eq!(
        status["hook"].as_str().unwrap(),
        format!("{}:setup_tracing", plugin.display())
    );

    // A driver in another folder, with a long command line (~70 KB) and no OTEL_SERVICE_NAME.
    let long = "x".repeat(70_000);
    let mut command = cluster.command(Path::new(env!("CARGO_BIN_EXE_cluster-program")));
    command
        .current_dir("/")
        .args(["one-task", &long])
        .env("FILAMENT_ADDRESS", "auto");
    let run = Run::new(command.output().unwrap(), cluster.spans.path()).ok();
    assert_eq!(run.value("result"), "3");
    let (_, producer) = run.span("cluster_program::add filament.remote");
    let (_, consumer) = run.span("cluster_program::add filament.remote_worker");
    let service = |span: &ReadSpan| format!("{:?}", span.resource_attribute("service.name"));
    assert!(
        !service(consumer).contains("from-the-head"),
        "{}",
        service(consumer)
    );
    assert_eq!(service(consumer), service(producer));
}

#[test]
fn every_process_of_a_job_reads_its_drivers_configuration_whatever_the_key() {
    let cluster = Cluster::new();
    let reports = tempfile::tempdir().unwrap();
    // The head's own values, for a key without a job prefix.
    let output = cluster
        .command(&filament_bin())
        .args(["start", "--head", "--port", "0", "--num-cpus", "2"])
        .args([
            "--tracing-startup-hook",
            "filament_test_hooks:reports_process",
        ])
        .env("FILAMENT_TEST_REPORT", reports.path().join("head.txt"))
        .env("NEWCOMER_OUT", "head.txt")
        .output()
        .unwrap();
    assert!(output.status.success(), "start: {}", output_text(&output));

    // Two drivers at once, each with its own values.
    let drivers: Vec<(&str, Child)> = ["a", "b"]
        .into_iter()
        .map(|name| {
            let child = cluster
                .command(Path::new(env!("CARGO_BIN_EXE_cluster-program")))
                .arg("one-task")
                .env("FILAMENT_ADDRESS", "auto")
                .env("TEST_WORKERS", "1")
                .env(
                    "FILAMENT_TEST_REPORT",
                    reports.path().join(format!("{name}.txt")),
                )
                .env("NEWCOMER_OUT", format!("{name}-attached.txt"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (name, child)
        })
        .collect();
    for (name, child) in drivers {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "driver {name}: {}",
            output_text(&output)
        );
        let report = std::fs::read_to_string(reports.path().join(format!("{name}.txt"))).unwrap();
        let roles: BTreeSet<&str> = report
            .lines()
            .filter_map(|line| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix("role="))
            })
            .collect();
        assert_eq!(roles, BTreeSet::from(["driver", "worker"]), "{report}");
        assert!(
            report
                .lines()
                .all(|line| line.ends_with(&format!(" newcomer={name}-attached.txt"))),
            "driver {name}'s job read another's value:\n{report}"
        );
    }
}

#[test]
fn what_an_attached_jobs_workers_print_reaches_its_driver() {
    let cluster = Cluster::new();
    cluster.start_head(Some(LOCAL_FILE), 2);
    let run = cluster.run_program(&["prints"], &[]).ok();
    filament_tests::assert_worker_output_forwarded(&run);
    // Not in the head's log, where it used to end.
    let log = std::fs::read_to_string(cluster.temp.path().join("session_latest/logs/daemon.log"))
        .unwrap();
    assert!(!log.contains("hello from a task"), "{log}");
}

#[test]
fn a_node_killed_mid_run_has_its_tasks_run_again_on_the_rest_of_the_cluster() {
    let cluster = Cluster::new();
    let address = cluster.start_head(Some(LOCAL_FILE), 2);
    assert!(cluster.join_node(&address, 2).status.success());
    let node_pid = cluster
        .daemon_pids()
        .into_iter()
        .find(|(role, _)| role == "node")
        .map(|(_, pid)| pid)
        .expect("the node's pid file");

    let mut child = cluster.spawn_program(&["under-fire", "3000"]);
    let stdout = wait_for_submitted(&mut child);
    let node_workers = group_members(node_pid);
    assert!(node_workers.len() > 1, "the node runs the job's workers");
    kill(node_pid);
    let lines: Vec<String> = stdout.lines().map(Result::unwrap).collect();
    let status = child.wait().unwrap();
    let output = lines.join("\n");
    assert!(status.success(), "{output}");
    // Two of the four ran on the node; they ran again (max_retries = 3 by default) on the head's
    // workers: every caller gets its result, from a process that is not the node's.
    let pids = slow_task_pids(&lines);
    assert!(
        pids.iter().all(|pid| !node_workers.contains(pid)),
        "{pids:?} {node_workers:?}: {output}"
    );
    // Waiting for the retries took a second run of the tasks.
    let waited: u64 = lines
        .iter()
        .find_map(|l| l.strip_prefix("slow_done_after_ms="))
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("{output}"));
    assert!(waited > 3000, "{output}");
    // The rest of the cluster keeps working.
    for i in 0..4 {
        assert!(
            lines.contains(&format!("after{i}=ok {}", i + 1)),
            "{output}"
        );
    }
    // The node's workers are gone, and every span file written is whole.
    wait_until("the node's processes end", Duration::from_secs(5), || {
        group_members(node_pid).is_empty()
    });
    for entry in std::fs::read_dir(cluster.spans.path()).unwrap().flatten() {
        read_span_file(&entry.path());
    }
    assert_eq!(cluster.status()["nodes"].as_array().unwrap().len(), 1);
}

#[test]
fn a_worker_killed_mid_run_is_replaced() {
    let cluster = Cluster::new();
    cluster.start_head(Some(LOCAL_FILE), 2);
    let mut child = cluster.spawn_program(&["under-fire", "3000", "no-retry"]);
    let stdout = wait_for_submitted(&mut child);
    let mut worker = 0;
    wait_until("status shows a worker", Duration::from_secs(10), || {
        let status = cluster.status();
        worker = status["jobs"][0]["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["kind"] == "worker")
            .and_then(|p| p["pid"].as_u64())
            .unwrap_or(0) as u32;
        worker != 0
    });
    kill(worker);
    let lines: Vec<String> = stdout.lines().map(Result::unwrap).collect();
    assert!(child.wait().unwrap().success());
    let output = lines.join("\n");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("=error") && l.contains(&format!("pid {worker}"))),
        "{output}"
    );
    for i in 0..4 {
        assert!(
            lines.contains(&format!("after{i}=ok {}", i + 1)),
            "{output}"
        );
    }
}

#[test]
fn a_head_lost_while_init_waits_for_workers_fails_init_as_cluster_lost() {
    let cluster = Cluster::new();
    cluster.start_head(Some(LOCAL_FILE), 1);
    let head_pid: u32 = cluster.session_file("daemon.pid").parse().unwrap();
    // The job's one worker hangs before it connects: `init` waits for it (a minute at most).
    let child = cluster
        .command(Path::new(env!("CARGO_BIN_EXE_cluster-program")))
        .args(["one-task"])
        .env("FILAMENT_ADDRESS", "auto")
        .env("TEST_WORKERS", "1")
        .env("FILAMENT_TEST_STALL_WORKER", "1")
        .env("TEST_WORKER_START_TIMEOUT_MS", "60000")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The driver attached once the head lists its job.
    wait_until("the driver attaches", Duration::from_secs(20), || {
        cluster.status()["jobs"]
            .as_array()
            .is_some_and(|jobs| !jobs.is_empty())
    });
    let killed = Instant::now();
    kill(head_pid);
    let output = child.wait_with_output().unwrap();
    let run = Run::new(output, cluster.spans.path());
    assert_eq!(run.output.status.code(), Some(3), "{:?}", run.output);
    assert_eq!(run.value("init_error"), "cluster-lost", "{:?}", run.output);
    assert!(
        String::from_utf8_lossy(&run.output.stderr).contains("is gone"),
        "{:?}",
        run.output
    );
    assert!(killed.elapsed() < Duration::from_secs(30));
    // The stalled worker was the head's child: it does not outlive the test.
    for pid in group_members(head_pid) {
        kill(pid);
    }
}

#[test]
fn drivers_hear_of_a_dead_head_within_seconds() {
    let cluster = Cluster::new();
    cluster.start_head(Some(LOCAL_FILE), 2);
    let head_pid: u32 = cluster.session_file("daemon.pid").parse().unwrap();
    let mut child = cluster.spawn_program(&["under-fire", "30000"]);
    let stdout = wait_for_submitted(&mut child);
    let killed = Instant::now();
    kill(head_pid);
    let lines: Vec<String> = stdout.lines().map(Result::unwrap).collect();
    child.wait().unwrap();
    let output = lines.join("\n");
    // Its 30-second tasks failed long before they would have finished.
    assert!(killed.elapsed() < Duration::from_secs(20), "{output}");
    let errors = lines
        .iter()
        .filter(|l| l.starts_with("slow") && l.contains("=error"))
        .count();
    // (Each says why: the head's end, or its worker's, which ends with the head's node.)
    assert_eq!(errors, 4, "{output}");
    // Later tasks fail at once, saying the head is gone.
    let head_gone = format!(
        "the cluster's head at {} is gone",
        cluster.session_file("address")
    );
    let after_errors = lines
        .iter()
        .filter(|l| l.starts_with("after") && l.contains("=error") && l.contains(&head_gone))
        .count();
    assert_eq!(after_errors, 4, "{output}");
    // Each of the four attempts lost with the cluster is an ERROR span the driver recorded (the
    // worker's own never came): `filament spans --errors` finds them. (The only job of this
    // cluster.)
    let lost: Vec<ReadSpan> = read_spans_dir(cluster.spans.path())
        .into_values()
        .flatten()
        .filter(|s| s.name() == "cluster_program::sleepy_pid filament.remote_worker")
        .collect();
    assert_eq!(lost.len(), 4, "{output}");
    for span in &lost {
        assert_eq!(
            span.attribute("filament.recorded_by"),
            Some(&Value::StringValue("driver".into()))
        );
        assert_eq!(span.span.status.as_ref().map(|s| s.code), Some(2), "ERROR");
    }
    // The head's workers went with it.
    wait_until("the head's workers end", Duration::from_secs(5), || {
        group_members(head_pid).is_empty()
    });
}

#[test]
fn an_installed_plugin_is_found_by_its_bare_name_from_a_program_outside_the_checkout() {
    use filament::plugin_api::hook::{ABI_MAJOR, ABI_MINOR};
    let data = tempfile::tempdir().unwrap();
    let plugins = |args: &[&str]| {
        Command::new(filament_bin())
            .args(args)
            .env("XDG_DATA_HOME", data.path())
            .env_remove("FILAMENT_PLUGIN_PATH")
            .output()
            .unwrap()
    };
    let library = filament_tests::plugin_path("filament_local_file");
    let installed = plugins(&["plugins", "install", library.to_str().unwrap()]);
    assert!(installed.status.success(), "{}", output_text(&installed));
    let home = data.path().join("filament/plugins");
    assert!(home.join("libfilament_local_file.so").is_file());

    let listed = plugins(&["plugins", "list"]);
    assert!(listed.status.success(), "{}", output_text(&listed));
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        text.contains(&format!(
            "filament_local_file:setup_tracing  ABI {ABI_MAJOR}.{ABI_MINOR}  loads"
        )),
        "{text}"
    );

    // A program elsewhere, with no plugin beside it: the bare name is found in the plugin home.
    let elsewhere = tempfile::tempdir().unwrap();
    let program = elsewhere.path().join("traced-program");
    std::fs::copy(env!("CARGO_BIN_EXE_traced-program"), &program).unwrap();
    let spans = tempfile::tempdir().unwrap();
    let output = filament_tests::output_of_copied(
        Command::new(&program)
            .args([
                "--hooks",
                "filament_local_file:setup_tracing",
                "--spans",
                "3",
            ])
            .env("XDG_DATA_HOME", data.path())
            .env("FILAMENT_SPANS_DIR", spans.path())
            .env_remove("FILAMENT_PLUGIN_PATH"),
    );
    assert!(output.status.success(), "{}", output_text(&output));
    let files = read_spans_dir(spans.path());
    assert_eq!(files.values().map(Vec::len).sum::<usize>(), 3);

    // Something that is not a plugin is refused, and nothing is installed.
    let not_a_plugin = elsewhere.path().join("libnotes.so");
    std::fs::write(&not_a_plugin, "notes").unwrap();
    let refused = plugins(&["plugins", "install", not_a_plugin.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("is not a shared object"),
        "{}",
        output_text(&refused)
    );
    assert!(!home.join("libnotes.so").exists());
}

#[test]
fn strangers_holding_or_dripping_connections_lock_nobody_out_of_the_head() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let cluster = Cluster::new();
    // A head with few file descriptors: 400 strangers would take them all.
    let output = cluster
        .command(Path::new("sh"))
        .args(["-c", "ulimit -n 256; exec \"$0\" \"$@\""])
        .arg(filament_bin())
        .args(["start", "--head", "--port", "0", "--num-cpus", "2"])
        .args(["--tracing-startup-hook", LOCAL_FILE])
        .output()
        .unwrap();
    assert!(output.status.success(), "start: {}", output_text(&output));
    let address = cluster.session_file("address");

    let started = Instant::now();
    let held: Vec<TcpStream> = (0..400)
        .filter_map(|_| TcpStream::connect(&address).ok())
        .collect();
    assert!(held.len() > 300, "{} connections", held.len());
    // Slowloris: a frame announced, then a byte every 300 ms.
    let drippers: Vec<_> = (0..10)
        .map(|_| {
            let address = address.clone();
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(&address).unwrap();
                let dripped = Instant::now();
                let mut ok = stream.write_all(&200u32.to_le_bytes()).is_ok();
                while ok && dripped.elapsed() < Duration::from_secs(10) {
                    std::thread::sleep(Duration::from_millis(300));
                    ok = stream.write_all(b"x").is_ok();
                }
                dripped.elapsed()
            })
        })
        .collect();

    // Meanwhile the cluster serves: status, and a real driver.
    cluster.status();
    let run = cluster.run_program(&["one-task"], &[]).ok();
    assert_eq!(run.value("result"), "3");

    // The drippers were cut off at the deadline, long before they were done.
    for dripper in drippers {
        let lasted = dripper.join().unwrap();
        assert!(
            lasted < Duration::from_secs(9),
            "a dripper lasted {lasted:?}"
        );
    }
    // Every held connection is closed by now.
    let deadline = started + Duration::from_secs(8);
    std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
    for mut stream in held {
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("a stranger's connection is still open after 8 s: {e}"),
            Ok(_) => panic!("the head sent a stranger something"),
        }
    }
    // And the log stayed short: a few lines a second, the rest summed up.
    let log = std::fs::read_to_string(cluster.temp.path().join("session_latest/logs/daemon.log"))
        .unwrap();
    let refusals = log
        .lines()
        .filter(|l| l.contains("cut off") || l.contains("refused"))
        .count();
    assert!(refusals < 120, "{refusals} lines:\n{log}");
    assert!(log.contains("were not logged"), "{log}");
}

impl Cluster {
    /// Starts a TLS head (`--tls`: a cluster CA made in its session); returns its address.
    fn start_tls_head(&self, cpus: u32) -> String {
        let cpus = cpus.to_string();
        let output = self.filament(&[
            "start",
            "--head",
            "--tls",
            "--port",
            "0",
            "--num-cpus",
            &cpus,
            "--tracing-startup-hook",
            LOCAL_FILE,
        ]);
        assert!(
            output.status.success(),
            "start --head --tls: {}",
            output_text(&output)
        );
        self.session_file("address")
    }

    /// The head's log.
    fn head_log(&self) -> String {
        std::fs::read_to_string(self.temp.path().join("session_latest/logs/daemon.log")).unwrap()
    }

    /// A TLS file of the current session.
    fn tls_file(&self, name: &str) -> PathBuf {
        std::fs::canonicalize(self.temp.path().join("session_latest/tls"))
            .unwrap()
            .join(name)
    }
}

#[test]
fn a_tls_cluster_of_two_nodes_runs_the_seed_trees_and_answers_status() {
    use std::os::unix::fs::PermissionsExt;
    let cluster = Cluster::new();
    let address = cluster.start_tls_head(2);
    // The cluster's CA and the head's certificate, the keys readable by their user only.
    for (name, mode) in [
        ("ca.pem", None),
        ("cert.pem", None),
        ("ca.key", Some(0o600)),
        ("key.pem", Some(0o600)),
    ] {
        let meta = std::fs::metadata(cluster.tls_file(name)).unwrap();
        if let Some(mode) = mode {
            assert_eq!(meta.permissions().mode() & 0o777, mode, "{name}");
        }
    }
    // A node of this machine finds the CA in the head's session and issues itself a certificate.
    let output = cluster.filament(&["start", "--address", &address, "--num-cpus", "2", "--tls"]);
    assert!(output.status.success(), "join: {}", output_text(&output));
    let node_cert = std::fs::read_dir(cluster.temp.path())
        .unwrap()
        .flatten()
        .map(|e| e.path().join("tls/cert.pem"))
        .filter(|p| p.exists())
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect::<BTreeSet<_>>();
    assert_eq!(node_cert.len(), 2, "a certificate per node");

    // `filament status` over TLS.
    let status = cluster.status();
    assert_eq!(status["nodes"].as_array().unwrap().len(), 2, "{status}");

    // The seed's trees, as on plain TCP: driver ↔ head, node ↔ head, worker ↔ driver all TLS.
    let run = cluster.run_program(&["one-task"], &[]).ok();
    assert_eq!(run.value("result"), "3");
    assert_eq!(run.all().len(), 2, "{:?}", run.names());
    let (_, producer) = run.span("cluster_program::add filament.remote");
    let (_, consumer) = run.span("cluster_program::add filament.remote_worker");
    assert_eq!(consumer.parent_span_id(), producer.span_id());
    let run = cluster.run_program(&["nested"], &[]).ok();
    assert_eq!(run.value("result"), "50");
    run.assert_one_tree();
    assert_eq!(run.all().len(), 4);
    // Tasks on both nodes: workers of the joined node connected to the driver over TLS too.
    let run = cluster.run_program(&["fan-out"], &[]).ok();
    run.assert_one_tree();
    assert_eq!(run.all().len(), 18, "{:?}", run.names());
    let consumer_nodes: BTreeSet<String> = run
        .all()
        .iter()
        .filter(|s| kind(s) == SpanKind::Consumer)
        .map(|s| format!("{:?}", attr(s, "filament.node_id")))
        .collect();
    assert_eq!(consumer_nodes.len(), 2, "tasks ran on both nodes");
    // A result and an argument of 48 MiB: many TLS records each way, sealed piece by piece.
    let run = cluster.run_program(&["big-values", &(48u64 << 20).to_string()], &[]);
    assert_eq!(run.value("result_len"), (48u64 << 20).to_string());
    assert_eq!(run.value("result_intact"), "true");
    assert_eq!(run.value("argument_intact"), "true");
    assert!(
        !cluster.head_log().contains("refused"),
        "{}",
        cluster.head_log()
    );
}

#[test]
fn a_tls_cluster_refuses_plain_peers_and_other_cas_with_clear_errors() {
    let cluster = Cluster::new();
    let address = cluster.start_tls_head(1);
    let token = cluster.session_file("token");
    // Peers from elsewhere: no session of theirs, the token given.
    let elsewhere = tempfile::tempdir().unwrap();
    let status_from_elsewhere = |envs: &[(&str, &Path)]| {
        let mut command = cluster.command(&filament_bin());
        command
            .args(["status", "--address", &address])
            .env("FILAMENT_TEMP_DIR", elsewhere.path())
            .env("FILAMENT_CLUSTER_TOKEN", &token);
        for (key, value) in envs {
            command.env(key, value);
        }
        let output = command.output().unwrap();
        assert!(!output.status.success(), "{}", output_text(&output));
        output_text(&output)
    };

    // Plain TCP, with the right token: refused, and told why.
    let text = status_from_elsewhere(&[]);
    assert!(
        text.contains("refused the connection: this cluster requires TLS"),
        "{text}"
    );
    // A plain driver too.
    let run = cluster
        .command(Path::new(env!("CARGO_BIN_EXE_cluster-program")))
        .arg("one-task")
        .env("FILAMENT_ADDRESS", &address)
        .env("FILAMENT_TEMP_DIR", elsewhere.path())
        .env("FILAMENT_CLUSTER_TOKEN", &token)
        .output()
        .unwrap();
    assert!(!run.status.success());
    assert!(
        output_text(&run).contains("this cluster requires TLS"),
        "{}",
        output_text(&run)
    );

    // Another cluster's CA and certificate.
    let other = Cluster::new();
    other.start_tls_head(1);
    let (ca, cert, key) = (
        other.tls_file("ca.pem"),
        other.tls_file("cert.pem"),
        other.tls_file("key.pem"),
    );
    let text = status_from_elsewhere(&[
        ("FILAMENT_TLS_CA", &ca),
        ("FILAMENT_TLS_CERT", &cert),
        ("FILAMENT_TLS_KEY", &key),
    ]);
    assert!(
        text.contains(&format!("TLS with the head at {address} failed")),
        "{text}"
    );
    assert!(text.contains("not signed by this CA"), "{text}");
    // This cluster's CA, but a certificate of another's: the head refuses it.
    let ours = cluster.tls_file("ca.pem");
    let text = status_from_elsewhere(&[
        ("FILAMENT_TLS_CA", &ours),
        ("FILAMENT_TLS_CERT", &cert),
        ("FILAMENT_TLS_KEY", &key),
    ]);
    assert!(text.contains("the head refused this certificate"), "{text}");

    // Files missing or half given: the file or variable is named.
    let missing = elsewhere.path().join("no-such-ca.pem");
    let text = status_from_elsewhere(&[
        ("FILAMENT_TLS_CA", &missing),
        ("FILAMENT_TLS_CERT", &cert),
        ("FILAMENT_TLS_KEY", &key),
    ]);
    assert!(
        text.contains(&format!(
            "cannot use the cluster CA's certificate {}",
            missing.display()
        )),
        "{text}"
    );
    let text = status_from_elsewhere(&[("FILAMENT_TLS_CA", &ours)]);
    assert!(
        text.contains("FILAMENT_TLS_CA is set but FILAMENT_TLS_CERT is not"),
        "{text}"
    );

    // The head logged each refusal with its cause, and still serves its own machine.
    let log = cluster.head_log();
    assert!(
        log.contains("refused a connection from 127.0.0.1")
            && log.contains("this cluster requires TLS"),
        "{log}"
    );
    assert!(
        log.contains("TLS handshake failed") && log.contains("UnknownIssuer"),
        "{log}"
    );
    cluster.status();

    // And a TLS peer at a plain cluster: refused too, both ends saying why.
    let plain = Cluster::new();
    let plain_address = plain.start_head(None, 1);
    let output = plain
        .command(&filament_bin())
        .args(["status", "--address", &plain_address])
        .env("FILAMENT_CLUSTER_TOKEN", plain.session_file("token"))
        .env("FILAMENT_TLS_CA", &ours)
        .env("FILAMENT_TLS_CERT", cluster.tls_file("cert.pem"))
        .env("FILAMENT_TLS_KEY", cluster.tls_file("key.pem"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = output_text(&output);
    assert!(
        text.contains("does the head speak TLS (started with --tls)?"),
        "{text}"
    );
    let log = plain.head_log();
    assert!(
        log.contains("it speaks TLS and this cluster does not"),
        "{log}"
    );
}

#[test]
fn an_idle_standing_cluster_does_not_wake_after_a_job() {
    // The reapers sleep until a worker ends or must be ended, the head's gate until a connection
    // is due to say hello: after a job, nothing polls.
    let cluster = Cluster::new();
    let address = cluster.start_head(Some(LOCAL_FILE), 2);
    let output = cluster.join_node(&address, 2);
    assert!(output.status.success(), "join: {}", output_text(&output));
    let run = cluster.run_program(&["one-task"], &[]).ok();
    assert_eq!(run.value("result"), "3");
    // The job's workers end with it.
    let daemons = cluster.daemon_pids();
    assert_eq!(daemons.len(), 2, "{daemons:?}");
    let children = |pid: u32| -> String {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
            .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
            .collect()
    };
    wait_until("the job's workers end", Duration::from_secs(10), || {
        daemons
            .iter()
            .all(|(_, pid)| children(*pid).trim().is_empty())
    });
    std::thread::sleep(Duration::from_millis(200));
    let before: Vec<(u64, u64)> = daemons
        .iter()
        .map(|(_, pid)| filament_tests::cpu_and_switches(*pid))
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    for ((role, pid), (cpu, switches)) in daemons.iter().zip(before) {
        let (cpu_after, switches_after) = filament_tests::cpu_and_switches(*pid);
        let (cpu_ms, switches) = ((cpu_after - cpu) / 1_000_000, switches_after - switches);
        eprintln!("{role} pid={pid} cpu_ms={cpu_ms} switches={switches}");
        // A reaper looking every 20 ms would wake fifty times, a gate looking for late hellos
        // every 200 ms five times: both sleep until something is due.
        assert!(
            cpu_ms < 100 && switches < 5,
            "the {role} (pid {pid}) used {cpu_ms} ms of CPU and was woken {switches} times in an idle second"
        );
    }
}

#[test]
fn a_driver_that_cannot_load_the_clusters_hook_is_told_it_is_the_clusters_and_how_to_install_it() {
    // The head finds `filament_local_file` beside the `filament` command; a program elsewhere,
    // with no plugin home and no FILAMENT_PLUGIN_PATH, does not.
    let cluster = Cluster::new();
    cluster.start_head(Some(LOCAL_FILE), 2);
    let elsewhere = tempfile::tempdir().unwrap();
    let program = elsewhere.path().join("user-program");
    std::fs::copy(env!("CARGO_BIN_EXE_cluster-program"), &program).unwrap();
    let output = filament_tests::output_of_copied(
        cluster
            .command(&program)
            .arg("one-task")
            .env("FILAMENT_ADDRESS", "auto")
            .env("XDG_DATA_HOME", elsewhere.path())
            .env("PATH", "/usr/bin:/bin")
            .env_remove("FILAMENT_PLUGIN_PATH"),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("init_error=cluster-hook"),
        "{}",
        output_text(&output)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    for words in [
        "the cluster's tracing hook (given to `filament start`) was refused in this driver",
        "hook \"filament_local_file:setup_tracing\": library not found (searched: ",
        "filament plugins install",
    ] {
        assert!(stderr.contains(words), "{words:?} not in: {stderr}");
    }
}

#[test]
fn an_address_where_something_else_listens_is_called_not_a_filament_head() {
    // An HTTP server where the head should be: it answers the hello with "HTTP/1.1 400 …".
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            use std::io::{Read, Write};
            let mut request = [0u8; 512];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
        }
    });
    let cluster = Cluster::new();
    let expected =
        format!("{address} does not answer as a Filament head: it answered with something else");
    let status = cluster
        .command(&filament_bin())
        .args(["status", "--address", &address])
        .env("FILAMENT_CLUSTER_TOKEN", "x")
        .output()
        .unwrap();
    let join = cluster
        .command(&filament_bin())
        .args(["start", "--address", &address])
        .env("FILAMENT_CLUSTER_TOKEN", "x")
        .output()
        .unwrap();
    let driver = cluster
        .command(Path::new(env!("CARGO_BIN_EXE_cluster-program")))
        .arg("one-task")
        .env("FILAMENT_ADDRESS", &address)
        .env("FILAMENT_CLUSTER_TOKEN", "x")
        .output()
        .unwrap();
    for (what, output) in [("status", status), ("start", join), ("a driver", driver)] {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains(&expected),
            "{what}: {}",
            output_text(&output)
        );
    }
}
