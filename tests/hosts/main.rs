//! A standing cluster over a real network: two hosts, each a network namespace of its own with
//! its own address, joined by a virtual Ethernet link (`ip netns`, `ip link … type veth`). The
//! head and a node run on different hosts, drivers attach from either, and workers connect back
//! across the link; then the link is cut (not a process killed: the peers see silence, not a
//! closed connection) and the cluster must notice, fail over and stop what it cannot reach.
//!
//! Network namespaces need root. Without root this suite says so and passes, unless
//! `FILAMENT_TEST_NETNS=required` (set by `.ci/run`), which makes it fail instead.

use filament_tests::{
    Run, filament_bin, group_members, output_text, plugin_path, slow_task_pids, wait_for_submitted,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use serde_json::Value as Json;
use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const CLUSTER_PROGRAM: &str = env!("CARGO_BIN_EXE_cluster-program");

/// Runs `ip` with `args`; panics with its output if it fails.
fn ip(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip {}: {e} (iproute2 is needed)", args.join(" ")));
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        output_text(&output)
    );
}

/// Whether this suite can make network namespaces here; if not, whether that fails the test.
fn namespaces_available() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Uid:"))?;
            Some(line.split_whitespace().nth(2)? == "0")
        })
        .unwrap_or(false);
    let ip = match Command::new("ip").arg("-V").output() {
        Ok(output) => {
            assert!(output.status.success(), "ip -V: {}", output_text(&output));
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => panic!("running `ip -V`: {e}"),
    };
    if root && ip {
        return true;
    }
    let why = if root {
        "`ip` (iproute2) is not installed"
    } else {
        "network namespaces need root"
    };
    assert_ne!(
        std::env::var("FILAMENT_TEST_NETNS").as_deref(),
        Ok("required"),
        "FILAMENT_TEST_NETNS=required, but {why}"
    );
    eprintln!("NOT RUN: {why}; the multi-host tests need both");
    false
}

/// One host: a network namespace with an address on the link, and a session folder of its own
/// (`FILAMENT_TEMP_DIR`), as a machine of its own would have. The file system is shared, as a
/// cluster's machines share the program's and the plugins' paths.
struct Host {
    ns: String,
    ip: String,
    temp: tempfile::TempDir,
}

impl Host {
    /// `program` run on this host, with its session folder and none of the test's cluster
    /// variables.
    fn command(&self, program: &Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.ns]).arg(program);
        filament_tests::in_session(&mut command, self.temp.path());
        command
    }

    fn filament(&self, args: &[&str]) -> Output {
        self.command(&filament_bin()).args(args).output().unwrap()
    }

    fn session_file(&self, name: &str) -> String {
        let path = self.temp.path().join("session_latest").join(name);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .to_owned()
    }

    /// The pid of this host's daemon (its head or node).
    fn daemon_pid(&self) -> u32 {
        self.session_file("daemon.pid").parse().unwrap()
    }

    /// `cluster-program` on this host, attached to the head at `address` with `token`, its
    /// spans (and its workers', wherever they run) in `spans`.
    fn program(&self, address: &str, token: &str, spans: &Path, args: &[&str]) -> Command {
        let mut command = self.command(Path::new(CLUSTER_PROGRAM));
        command
            .args(args)
            .env("FILAMENT_ADDRESS", address)
            .env("FILAMENT_CLUSTER_TOKEN", token)
            .env("FILAMENT_SPANS_DIR", spans);
        command
    }
}

/// Two hosts on one link: `head` (10.a.b.1) and `node` (10.a.b.2). Dropping it stops every
/// daemon started on either and removes the namespaces (their link goes with them).
struct Network {
    head: Host,
    node: Host,
    /// The head's end of the link, in the head's namespace.
    link: String,
}

impl Network {
    fn new() -> Network {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{}{n}", pid % 100_000);
        let subnet = format!("10.{}.{}", 100 + pid % 150, (pid / 150 % 50) * 5 + n % 5);
        let host = |side: &str, last: u8| Host {
            ns: format!("filament-{tag}{side}"),
            ip: format!("{subnet}.{last}"),
            temp: tempfile::tempdir().unwrap(),
        };
        let network = Network {
            head: host("h", 1),
            node: host("n", 2),
            link: format!("fv{tag}h"),
        };
        let peer = format!("fv{tag}n");
        for host in [&network.head, &network.node] {
            ip(&["netns", "add", &host.ns]);
            ip(&["-n", &host.ns, "link", "set", "lo", "up"]);
        }
        ip(&[
            "link",
            "add",
            &network.link,
            "netns",
            &network.head.ns,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "netns",
            &network.node.ns,
        ]);
        for (host, dev) in [(&network.head, &network.link), (&network.node, &peer)] {
            ip(&[
                "-n",
                &host.ns,
                "addr",
                "add",
                &format!("{}/24", host.ip),
                "dev",
                dev,
            ]);
            ip(&["-n", &host.ns, "link", "set", dev, "up"]);
            // A default route, as a machine on a network has: what `--host 0.0.0.0` advertises.
            ip(&["-n", &host.ns, "route", "add", "default", "dev", dev]);
        }
        network
    }

    /// A network with its cluster started (see [`Network::start`]); `None` where network
    /// namespaces cannot be made (see [`namespaces_available`]).
    fn started(cpus: u32) -> Option<(Network, String, String)> {
        if !namespaces_available() {
            return None;
        }
        let net = Network::new();
        let (address, token) = net.start(cpus);
        Some((net, address, token))
    }

    /// Cuts the link: from now on, neither host hears the other (no reset, no close: silence).
    fn cut(&self) {
        ip(&["-n", &self.head.ns, "link", "set", &self.link, "down"]);
    }

    /// Starts the head (on every interface of its host) with the local-file hook and `cpus`
    /// CPUs, and joins the node with `cpus`; returns the head's address and the cluster token.
    fn start(&self, cpus: u32) -> (String, String) {
        let hook = format!(
            "{}:setup_tracing",
            plugin_path("filament_local_file").display()
        );
        let cpus = cpus.to_string();
        let output = self.head.filament(&[
            "start",
            "--head",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "--num-cpus",
            &cpus,
            "--tracing-startup-hook",
            &hook,
        ]);
        assert!(
            output.status.success(),
            "start --head: {}",
            output_text(&output)
        );
        let address = self.head.session_file("address");
        let token = self.head.session_file("token");
        // What `start` says to do on another machine is what this suite does there.
        let said = String::from_utf8_lossy(&output.stdout);
        assert!(
            said.contains(&format!(
                "FILAMENT_CLUSTER_TOKEN=<token> filament start --address {address}\n"
            )) && !said.contains("loopback only"),
            "{said}"
        );
        let output = self
            .node
            .command(&filament_bin())
            .args(["start", "--address", &address, "--num-cpus", &cpus])
            .env("FILAMENT_CLUSTER_TOKEN", &token)
            .output()
            .unwrap();
        assert!(output.status.success(), "join: {}", output_text(&output));
        (address, token)
    }

    /// `filament status --json`, asked from the head's host.
    fn status(&self) -> Json {
        let output = self.head.filament(&["status", "--json"]);
        assert!(output.status.success(), "status: {}", output_text(&output));
        serde_json::from_slice(&output.stdout).unwrap()
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for host in [&self.head, &self.node] {
            if host.temp.path().join("session_latest").exists() {
                let _ = host.filament(&["stop"]);
            }
        }
        for host in [&self.head, &self.node] {
            let _ = Command::new("ip").args(["netns", "del", &host.ns]).status();
        }
    }
}

fn node_ids(status: &Json) -> Vec<(String, String)> {
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["node_id"].as_str().unwrap().to_owned(),
                n["address"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The nodes the run's tasks ran on: the `filament.node_id` of its CONSUMER spans.
fn consumer_nodes(run: &Run) -> BTreeSet<String> {
    run.all()
        .iter()
        .filter(|s| SpanKind::try_from(s.span.kind) == Ok(SpanKind::Consumer))
        .map(|span| match span.attribute("filament.node_id") {
            Some(Value::StringValue(node)) => node.clone(),
            other => panic!("{}: node id {other:?}", span.name()),
        })
        .collect()
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < timeout,
            "{what}: not within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    started.elapsed()
}

#[test]
fn drivers_on_either_host_run_one_trace_across_the_link() {
    let Some((net, address, token)) = Network::started(2) else {
        return;
    };
    // Listening on every interface, the head tells its address on the network, not loopback.
    assert_eq!(
        address.rsplit_once(':').unwrap().0,
        net.head.ip,
        "the head's advertised address"
    );
    let status = net.status();
    let nodes = node_ids(&status);
    assert_eq!(nodes.len(), 2, "{status}");
    assert!(
        nodes[1].1.starts_with(&format!("{}:", net.node.ip)),
        "the node joined from its own host: {status}"
    );
    // `status` answers from the node's host too, given the head's address and the token.
    let output = net
        .node
        .command(&filament_bin())
        .args(["status", "--json", "--address", &address])
        .env("FILAMENT_CLUSTER_TOKEN", &token)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "status from the node: {}",
        output_text(&output)
    );

    let all_nodes: BTreeSet<String> = nodes.iter().map(|(id, _)| id.clone()).collect();
    for (driver_host, which) in [(&net.head, "head"), (&net.node, "node")] {
        let spans = tempfile::tempdir().unwrap();
        let output = driver_host
            .program(&address, &token, spans.path(), &["fan-out"])
            .output()
            .unwrap();
        let run = Run::new(output, spans.path()).ok();
        // The fan-out task and its 8 tasks, 18 spans in one trace, whichever host each ran on:
        // the context crossed the link both ways.
        run.assert_one_tree();
        assert_eq!(
            run.all().len(),
            18,
            "driver on the {which}'s host: {:?}",
            run.names()
        );
        assert_eq!(
            consumer_nodes(&run),
            all_nodes,
            "driver on the {which}'s host: tasks ran on both hosts"
        );
    }
}

#[test]
fn a_host_cut_off_mid_task_is_noticed_its_tasks_run_again_and_it_stops_its_workers() {
    let Some((net, address, token)) = Network::started(2) else {
        return;
    };
    let spans = tempfile::tempdir().unwrap();
    // Four 2-second tasks: two on each host.
    let mut driver = net
        .head
        .program(&address, &token, spans.path(), &["under-fire", "2000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = wait_for_submitted(&mut driver);
    let node_daemon = net.node.daemon_pid();
    let node_workers = group_members(node_daemon);
    assert!(
        node_workers.len() > 1,
        "the node's host runs some of the job's workers: {node_workers:?}"
    );
    let cut_at = Instant::now();
    net.cut();

    // The driver hears nothing more from the node's workers: keepalive tells it they are gone,
    // their tasks run again on the head's host, and every caller gets a result.
    let lines: Vec<String> = stdout.lines().map(Result::unwrap).collect();
    let status = driver.wait().unwrap();
    let took = cut_at.elapsed();
    let output = lines.join("\n");
    assert!(status.success(), "{output}");
    let pids = slow_task_pids(&lines);
    assert!(
        pids.iter().all(|pid| !node_workers.contains(pid)),
        "every result came from the head's host: {pids:?}, the node's workers {node_workers:?}"
    );
    for i in 0..4 {
        assert!(
            lines.contains(&format!("after{i}=ok {}", i + 1)),
            "{output}"
        );
    }
    assert!(
        took < Duration::from_secs(45),
        "the job took {took:?} after the cut: {output}"
    );
    eprintln!("the driver was done {took:?} after the cut");

    // The head drops the node; the node, hearing nothing from its head, stops with its workers.
    let dropped = wait_until(
        "the head drops the node it cannot hear",
        Duration::from_secs(45),
        || node_ids(&net.status()).len() == 1,
    );
    let stopped = wait_until(
        "the cut-off node stops with its workers",
        Duration::from_secs(45),
        || group_members(node_daemon).is_empty(),
    );
    eprintln!(
        "after the cut: the head dropped the node within {:?}; the node stopped within {:?}",
        took + dropped,
        took + dropped + stopped
    );
    // On the node's host, `auto` now says what happened to its node and how to rejoin.
    let output = net.node.filament(&["status"]);
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success()
            && said.contains(&format!(
                "this machine's node of the cluster at {address} is not running"
            ))
            && said.contains(&format!("rejoin with `filament start --address {address}`")),
        "{}",
        output_text(&output)
    );
    let log = net.node.temp.path().join("session_latest/logs/daemon.log");
    eprintln!("{}", std::fs::read_to_string(log).unwrap_or_default());
    // Every span file written on either host is whole.
    for entry in std::fs::read_dir(spans.path()).unwrap().flatten() {
        filament_tests::read_span_file(&entry.path());
    }
}

#[test]
fn a_driver_cut_off_from_the_head_fails_its_tasks_naming_the_head_and_ends() {
    let Some((net, address, token)) = Network::started(2) else {
        return;
    };
    let spans = tempfile::tempdir().unwrap();
    // The driver runs on the node's host, and its tasks cannot be run again once the head's host
    // is out of reach: those on the node's host finish, those on the head's fail.
    let mut driver = net
        .node
        .program(
            &address,
            &token,
            spans.path(),
            &["under-fire", "2000", "no-retry"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = wait_for_submitted(&mut driver);
    let cut_at = Instant::now();
    net.cut();
    let lines: Vec<String> = stdout.lines().map(Result::unwrap).collect();
    let status = driver.wait().unwrap();
    let took = cut_at.elapsed();
    let output = lines.join("\n");
    eprintln!("the driver was done {took:?} after the cut:\n{output}");
    assert!(status.success(), "{output}");
    let slow: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("slow") && !l.starts_with("slow_done"))
        .collect();
    assert_eq!(slow.len(), 4, "{output}");
    let failed: Vec<&&String> = slow.iter().filter(|l| l.contains("=error ")).collect();
    assert!(
        !failed.is_empty() && failed.len() < 4,
        "the tasks on the head's host fail, those on the node's finish: {output}"
    );
    for line in failed {
        assert!(
            line.contains(&address) || line.contains("worker"),
            "the error names what was lost: {line}"
        );
    }
    // Later tasks fail at once, naming the head.
    for i in 0..4 {
        let line = lines
            .iter()
            .find(|l| l.starts_with(&format!("after{i}=")))
            .unwrap_or_else(|| panic!("after{i}: {output}"));
        assert!(
            line.contains("the cluster's head") && line.contains(&address),
            "{line}"
        );
    }
    assert!(
        took < Duration::from_secs(45),
        "the driver ended {took:?} after the cut: {output}"
    );
}

#[test]
fn a_driver_that_reaches_the_head_over_loopback_is_told_its_workers_stay_on_the_heads_host() {
    let Some((net, address, token)) = Network::started(2) else {
        return;
    };
    // The head listens on every interface, so loopback reaches it too; but the driver then
    // listens for its workers on loopback, where the node's host cannot connect.
    let port = address.rsplit_once(':').unwrap().1;
    let spans = tempfile::tempdir().unwrap();
    let output = net
        .head
        .program(
            &format!("127.0.0.1:{port}"),
            &token,
            spans.path(),
            &["fan-out"],
        )
        .output()
        .unwrap();
    let run = Run::new(output, spans.path()).ok();
    let stderr = String::from_utf8_lossy(&run.output.stderr);
    assert!(
        stderr.contains("reached the head over loopback")
            && stderr.contains("not on the 1 node(s) elsewhere")
            && stderr.contains(&address),
        "the driver says why, and what to attach at: {stderr}"
    );
    let status = net.status();
    let head_node = &node_ids(&status)[0].0;
    assert_eq!(
        consumer_nodes(&run),
        BTreeSet::from([head_node.clone()]),
        "{status}"
    );
    assert_eq!(run.all().len(), 18, "{:?}", run.names());
}
