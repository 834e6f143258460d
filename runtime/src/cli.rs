//! The `filament` command: `start` a head or a node, `status`, `stop`. The binary calls [`main`].

use crate::cluster::proto::{self, FromHead, Peer};
use crate::cluster::{self, ClusterStatus, ConnectError, SessionError, session, tls};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// How long `start` waits for its daemon to be ready.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `stop` lets daemons and their workers exit after SIGTERM before killing them.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// Why a `filament` command failed.
#[derive(Debug, thiserror::Error)]
enum CommandError {
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Tls(#[from] cluster::TlsError),
    #[error(
        "--tls: no TLS files for this node: give --tls-ca, --tls-cert and --tls-key (or {}, {} \
         and {}), or start it on the machine of the TLS cluster's head",
        tls::CA_ENV,
        tls::CERT_ENV,
        tls::KEY_ENV
    )]
    NoTlsFiles,
    #[error(transparent)]
    Plugin(#[from] crate::plugins::PluginError),
    #[error("--tracing-startup-hook is empty; give library:symbol")]
    EmptyHook,
    #[error(
        "a head is already running on this machine (pid {pid}, address {address}, session {}); \
         `filament stop` stops it",
        session.display()
    )]
    HeadRunning {
        pid: u32,
        address: String,
        session: PathBuf,
    },
    #[error("cannot {action} {}: {source}", path.display())]
    Log {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the daemon: {0}")]
    Spawn(#[source] std::io::Error),
    /// The daemon's own words (it wrote them to its session's `failed` file).
    #[error("{message} (the daemon's log: {})", log.display())]
    DaemonFailed { message: String, log: PathBuf },
    #[error("the daemon ended ({status}) before it was ready; its log says:\n{log}")]
    DaemonEnded {
        status: std::process::ExitStatus,
        log: String,
    },
    #[error("the daemon was not ready within {timeout:?}; see {}", log.display())]
    DaemonNotReady { timeout: Duration, log: PathBuf },
    #[error("the head at {address} sent no status: {answer}")]
    NoStatus { address: String, answer: String },
    #[error(
        "nothing to stop: no Filament head or node runs on this machine (sessions in {})",
        root.display()
    )]
    NothingToStop { root: PathBuf },
    #[error("processes {0:?} survived SIGKILL (run `filament stop` again, or see `ps`)")]
    Survivors(Vec<u32>),
}

impl CommandError {
    /// The same error, pointing at the daemon's log where it now is.
    fn with_log(self, moved: PathBuf) -> CommandError {
        match self {
            CommandError::DaemonFailed { message, .. } => CommandError::DaemonFailed {
                message,
                log: moved,
            },
            CommandError::DaemonNotReady { timeout, .. } => CommandError::DaemonNotReady {
                timeout,
                log: moved,
            },
            other => other,
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "filament",
    version,
    about = "A standing Filament cluster: a head that drivers attach to, nodes that join it",
    after_help = "Session files (address, token, logs) live in $FILAMENT_TEMP_DIR, \
                  else /tmp/filament; session_latest links to the current one."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Starts the head of a cluster (--head), or a node that joins one (--address).
    Start(StartArgs),
    /// Shows the cluster: nodes, jobs, and each process's tracing.
    Status(StatusArgs),
    /// Stops the heads and nodes of the sessions in $FILAMENT_TEMP_DIR (else /tmp/filament) that
    /// still run, with their workers: SIGTERM to each daemon's process group, then SIGKILL after
    /// 3 seconds. Daemons started with another FILAMENT_TEMP_DIR are not touched.
    Stop,
    /// Reads span files (default: $FILAMENT_SPANS_DIR, else /tmp/spans): tree, summary, html, export.
    Spans(filament_spans::cli::SpansArgs),
    /// Installs hook plugins where every program of this user finds them by name, and lists them.
    #[command(subcommand)]
    Plugins(PluginsCmd),
    /// Runs a head or node in the foreground (what `start` runs in the background).
    #[command(name = "__daemon", hide = true)]
    Daemon(DaemonArgs),
}

#[derive(Debug, Subcommand)]
enum PluginsCmd {
    /// Copies a plugin library into this user's plugin home ($XDG_DATA_HOME/filament/plugins, else
    /// ~/.local/share/filament/plugins), once every hook in it loads: `libfoo.so` is then the hook
    /// `foo:<symbol>` for every program.
    Install {
        /// The plugin library (`lib<name>.so`).
        path: PathBuf,
    },
    /// Lists the plugins in $FILAMENT_PLUGIN_PATH, the plugin home and beside this command: each
    /// hook's symbol, the ABI version it was built against, and whether it loads.
    List,
}

#[derive(Debug, clap::Args)]
struct StartArgs {
    /// Start the head of a new cluster.
    #[arg(long, required_unless_present = "address", conflicts_with = "address")]
    head: bool,
    /// Join the cluster whose head listens at HOST:PORT (token: $FILAMENT_CLUSTER_TOKEN, else
    /// this machine's session).
    #[arg(long, value_name = "HOST:PORT")]
    address: Option<String>,
    /// The interface the head listens on.
    #[arg(long, default_value = "127.0.0.1", conflicts_with = "address")]
    host: String,
    /// The port the head listens on (0: any free port).
    #[arg(long, default_value_t = 6379, conflicts_with = "address")]
    port: u16,
    /// CPUs this node offers (default: the machine's).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    num_cpus: Option<u32>,
    /// The tracing startup hook(s) of the cluster, `library:symbol[,library:symbol…]`: checked
    /// and run now, then in every process of every job.
    #[arg(long, value_name = "HOOK", conflicts_with = "address")]
    tracing_startup_hook: Option<String>,
    /// TLS with mutual authentication for every connection of the cluster. A head makes a cluster
    /// CA and its certificates in its session (unless --tls-ca/--tls-cert/--tls-key give an
    /// organisation's own); a node takes the CA of this machine's session or those options.
    #[arg(long)]
    tls: bool,
    #[command(flatten)]
    tls_files: TlsArgs,
}

/// An organisation's own PKI (each implies --tls). Every certificate must name `filament-cluster`
/// (DNS) and allow client and server authentication.
#[derive(Debug, Clone, clap::Args)]
struct TlsArgs {
    /// The cluster CA's certificate (PEM): peers must present certificates it signed.
    #[arg(long, value_name = "PEM", requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<PathBuf>,
    /// This machine's certificate (PEM), signed by the cluster CA.
    #[arg(long, value_name = "PEM", requires_all = ["tls_ca", "tls_key"])]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "PEM", requires_all = ["tls_ca", "tls_cert"])]
    tls_key: Option<PathBuf>,
}

impl TlsArgs {
    fn files(&self) -> Option<tls::TlsFiles> {
        Some(tls::TlsFiles {
            ca: std::path::absolute(self.tls_ca.as_ref()?).ok()?,
            cert: std::path::absolute(self.tls_cert.as_ref()?).ok()?,
            key: std::path::absolute(self.tls_key.as_ref()?).ok()?,
        })
    }
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    /// The head: `auto` (this machine's session) or HOST:PORT.
    #[arg(long, default_value = "auto")]
    address: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct DaemonArgs {
    #[arg(long)]
    session: PathBuf,
    #[arg(long)]
    head: bool,
    #[arg(long)]
    address: Option<String>,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 6379)]
    port: u16,
    #[arg(long)]
    num_cpus: u32,
    #[arg(long)]
    tracing_startup_hook: Option<String>,
    /// Make a new cluster CA (a head).
    #[arg(long)]
    tls: bool,
    #[command(flatten)]
    tls_files: TlsArgs,
}

/// Runs the `filament` command line.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let (name, outcome) = match cli.command {
        Cmd::Start(args) => ("start", start(args)),
        Cmd::Status(args) => ("status", status(&args.address, args.json)),
        Cmd::Stop => ("stop", stop()),
        Cmd::Spans(args) => return filament_spans::cli::run(args),
        Cmd::Plugins(PluginsCmd::Install { path }) => (
            "plugins install",
            crate::plugins::install(&path).map_err(CommandError::from),
        ),
        Cmd::Plugins(PluginsCmd::List) => (
            "plugins list",
            crate::plugins::list().map_err(CommandError::from),
        ),
        Cmd::Daemon(args) => ("daemon", daemon(args)),
    };
    match outcome {
        Ok(message) => {
            if !message.is_empty() {
                println!("{message}");
            }
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("filament {name}: error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn default_cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

fn start(args: StartArgs) -> Result<String, CommandError> {
    let root = session::checked_root()?.unwrap_or_else(session::root);
    if let Some(hook) = &args.tracing_startup_hook
        && hook.trim().is_empty()
    {
        return Err(CommandError::EmptyHook);
    }
    let mut command = Command::new("/proc/self/exe");
    // Shown by `ps` as the command that started it.
    if let Some(name) = std::env::args_os().next() {
        std::os::unix::process::CommandExt::arg0(&mut command, name);
    }
    command.arg("__daemon");
    let num_cpus = args.num_cpus.unwrap_or_else(default_cpus);
    if args.head {
        if let Some(daemon) = session::live_daemon(&session::latest(&root))
            && daemon.role == "head"
        {
            return Err(CommandError::HeadRunning {
                pid: daemon.pid,
                address: session::read(&daemon.dir, "address").unwrap_or_default(),
                session: daemon.dir,
            });
        }
        command
            .arg("--head")
            .args(["--host", &args.host])
            .args(["--port", &args.port.to_string()]);
        if let Some(hook) = &args.tracing_startup_hook {
            command.args(["--tracing-startup-hook", hook]);
        }
        match args.tls_files.files() {
            Some(files) => pass_tls_files(&mut command, &files),
            None if args.tls => {
                command.arg("--tls");
            }
            None => {}
        }
    } else {
        let address = args.address.as_deref().expect("clap: --head or --address");
        let (address, token) = session::resolve(address)?;
        command
            .args(["--address", &address])
            .env(session::TOKEN_ENV, token);
        // A node speaks TLS with the files given, else those of the variables, else those of
        // this machine's session (where the head's CA is, with its key, on the head's machine).
        let files = match args.tls_files.files() {
            Some(files) => Some(files),
            None => match tls::TlsFiles::from_env()? {
                Some(files) => Some(files),
                None => tls::TlsFiles::of_session(&session::latest(&root)),
            },
        };
        match files {
            Some(files) => pass_tls_files(&mut command, &files),
            None if args.tls => return Err(CommandError::NoTlsFiles),
            None => {}
        }
    }
    command.args(["--num-cpus", &num_cpus.to_string()]);
    let dir = session::create(&root)?;
    let outcome = launch(command, &dir).map_err(|error| {
        // The error points at the daemon's log: keep it, and nothing else of the session.
        match keep_log_of_failed_session(&root, &dir) {
            Some(log) => error.with_log(log),
            None => error,
        }
    });
    let ready = outcome?;
    let tls = if tls::TlsFiles::of_session(&dir).is_some() {
        format!(
            "\nTLS: every connection, with the certificates in {} (another machine's node: copy \
             ca.pem, cert.pem and key.pem, and give them as --tls-ca, --tls-cert and --tls-key)",
            dir.join(tls::SESSION_FOLDER).display()
        )
    } else {
        String::new()
    };
    Ok(if args.head {
        let tls_flags = if tls.is_empty() {
            ""
        } else {
            " --tls-ca ca.pem --tls-cert cert.pem --tls-key key.pem"
        };
        let loopback = ready
            .parse::<std::net::SocketAddr>()
            .is_ok_and(|a| a.ip().is_loopback());
        let reach = if loopback {
            "\nIt listens on loopback only: nodes and drivers on other machines cannot reach it. For a \
             cluster across machines, start it with --host 0.0.0.0 (or this machine's address)."
        } else {
            ""
        };
        format!(
            "Started the head of a Filament cluster at {ready} ({num_cpus} CPUs, tracing hook {}).\n\
             Session: {}{reach}\n\n\
             Attach a driver on this machine:  FILAMENT_ADDRESS=auto your-program\n\
             Join another node:                FILAMENT_CLUSTER_TOKEN=<token> filament start --address {ready}{tls_flags}\n\
             \x20                                 (<token>: the contents of {} on this machine)\n\
             See the cluster:                  filament status\n\
             Stop it:                          filament stop{tls}",
            args.tracing_startup_hook.as_deref().unwrap_or("none"),
            dir.display(),
            dir.join("token").display()
        )
    } else {
        format!(
            "Node {ready} joined the cluster at {} with {num_cpus} CPUs.\nSession: {}{tls}",
            args.address.unwrap_or_default(),
            dir.display()
        )
    })
}

/// Gives the daemon its TLS files.
fn pass_tls_files(command: &mut Command, files: &tls::TlsFiles) {
    command
        .arg("--tls-ca")
        .arg(&files.ca)
        .arg("--tls-cert")
        .arg(&files.cert)
        .arg("--tls-key")
        .arg(&files.key);
}

/// Removes the folder of a session whose daemon failed to start, keeping its log as
/// `<root>/failed/<session>.log`; returns where the log is now.
fn keep_log_of_failed_session(root: &Path, dir: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let failed = root.join("failed");
    let kept = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&failed)
        .ok()
        .and_then(|()| {
            let log = failed.join(format!("{}.log", dir.file_name()?.to_string_lossy()));
            std::fs::rename(dir.join("logs").join("daemon.log"), &log).ok()?;
            Some(log)
        });
    let _ = std::fs::remove_dir_all(dir);
    kept
}

/// Starts a daemon in the background (its own process group, output in the session's log) and
/// waits until it says it is ready (`ready` file) or failed (`failed` file, or its exit).
fn launch(mut command: Command, dir: &Path) -> Result<String, CommandError> {
    use std::os::unix::process::CommandExt;
    let log_path = dir.join("logs").join("daemon.log");
    let log_error = |action| {
        let path = log_path.clone();
        move |source| CommandError::Log {
            action,
            path,
            source,
        }
    };
    let log = std::fs::File::create(&log_path).map_err(log_error("create"))?;
    let log_err = log.try_clone().map_err(log_error("use"))?;
    let mut child = command
        .arg("--session")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .process_group(0)
        .spawn()
        .map_err(CommandError::Spawn)?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(address) = session::read(dir, "ready") {
            return Ok(address);
        }
        if let Some(why) = session::read(dir, "failed") {
            let _ = child.wait();
            return Err(CommandError::DaemonFailed {
                message: why,
                log: log_path,
            });
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(CommandError::DaemonEnded {
                status,
                log: log.trim_end().to_owned(),
            });
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(CommandError::DaemonNotReady {
                timeout: START_TIMEOUT,
                log: log_path,
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The daemon itself: runs the head or a node until stopped.
fn daemon(args: DaemonArgs) -> Result<String, CommandError> {
    let dir = args.session.clone();
    let ready = |outcome: Result<String, cluster::StartError>| match outcome {
        Ok(address) => {
            if let Err(why) = session::write_private(&dir, "ready", &address) {
                // `start` sees the daemon end, and this in its log.
                cluster::log(&why.to_string());
                std::process::exit(1);
            }
        }
        Err(why) => {
            // The daemon's error reaches `start` as text: it crosses processes.
            let why = why.to_string();
            cluster::log(&why);
            let _ = session::write_private(&dir, "failed", &why);
            std::process::exit(1);
        }
    };
    let tls = match args.tls_files.files() {
        Some(files) => Some(tls::TlsSetup::Files(files)),
        None if args.tls => Some(tls::TlsSetup::Generate),
        None => None,
    };
    if args.head {
        cluster::head::run(
            cluster::head::HeadOptions {
                session: args.session.clone(),
                host: args.host,
                port: args.port,
                num_cpus: args.num_cpus,
                hook: args.tracing_startup_hook,
                tls,
            },
            ready,
        );
    } else {
        let token = std::env::var(session::TOKEN_ENV).unwrap_or_default();
        cluster::run_node(
            cluster::NodeOptions {
                session: args.session.clone(),
                address: args.address.unwrap_or_default(),
                token,
                num_cpus: args.num_cpus,
                tls,
            },
            ready,
        );
    }
    Ok(String::new())
}

fn status(address: &str, json: bool) -> Result<String, CommandError> {
    let (address, token) = session::resolve(address)?;
    let tls = session::resolve_tls()?;
    let (_, _, mut reader) =
        proto::connect(&address, &token, tls.as_ref(), |_| Ok((Peer::Status, None)))?;
    let status = match reader.read::<FromHead>() {
        Ok(Some(FromHead::Status(status))) => status,
        other => {
            return Err(CommandError::NoStatus {
                address,
                answer: format!("{other:?}"),
            });
        }
    };
    if json {
        // Status is plain data: strings, numbers and enums that serialize as strings.
        Ok(serde_json::to_string_pretty(&status).expect("a status serializes"))
    } else {
        Ok(render(&status))
    }
}

fn render(status: &ClusterStatus) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Filament cluster at {} (up {} s)\ntracing startup hook: {}",
        status.address,
        status.uptime_secs,
        status.hook.as_deref().unwrap_or("none")
    );
    let _ = writeln!(out, "\nNodes ({}):", status.nodes.len());
    for node in &status.nodes {
        let _ = writeln!(
            out,
            "  {}  {:<21}  pid {:<7}  {} CPUs  {} workers  hook {}  spans exported {} dropped {}",
            node.node_id,
            node.address,
            node.pid,
            node.num_cpus,
            node.workers,
            node.hook,
            node.spans_exported,
            node.spans_dropped
        );
    }
    let _ = writeln!(out, "\nJobs ({}):", status.jobs.len());
    for job in &status.jobs {
        let _ = writeln!(
            out,
            "  job {}  {}  driver pid {}  {}",
            job.job_id, job.state, job.driver_pid, job.exe
        );
        for p in &job.processes {
            let who = match p.worker {
                Some(worker) => format!("{} {worker}", p.kind),
                None => p.kind.to_string(),
            };
            let _ = writeln!(
                out,
                "    {who:<24} pid {:<7} node {:<16}  hook {}  spans exported {} dropped {}",
                p.pid,
                p.node_id.as_deref().unwrap_or("-"),
                p.hook,
                p.spans_exported,
                p.spans_dropped
            );
        }
    }
    out.trim_end().to_owned()
}

/// The processes of process group `group` that still run (zombies do not).
fn group_members(group: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // pid (comm) state ppid pgrp …; comm may hold spaces and parentheses.
            let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
            let state = fields.next()?;
            let pgrp: u32 = fields.nth(1)?.parse().ok()?;
            (pgrp == group && state != "Z" && state != "X").then_some(pid)
        })
        .collect()
}

fn signal_group(group: u32, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(group as i32) {
        let _ = rustix::process::kill_process_group(pid, signal);
    }
}

fn stop() -> Result<String, CommandError> {
    let root = session::checked_root()?.unwrap_or_else(session::root);
    let daemons = session::live_daemons(&root);
    if daemons.is_empty() {
        return Err(CommandError::NothingToStop { root });
    }
    // Each daemon leads a process group of its own with its workers: the group goes.
    for daemon in &daemons {
        signal_group(daemon.pid, rustix::process::Signal::TERM);
    }
    let deadline = Instant::now() + STOP_GRACE;
    let running = || {
        daemons
            .iter()
            .filter(|d| !group_members(d.pid).is_empty())
            .count()
    };
    while running() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut killed = 0;
    for daemon in &daemons {
        if !group_members(daemon.pid).is_empty() {
            signal_group(daemon.pid, rustix::process::Signal::KILL);
            killed += 1;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    while running() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut survivors = Vec::new();
    for daemon in &daemons {
        let left = group_members(daemon.pid);
        if left.is_empty() {
            let _ = std::fs::remove_file(daemon.dir.join("daemon.pid"));
        } else {
            survivors.extend(left);
        }
    }
    if !survivors.is_empty() {
        return Err(CommandError::Survivors(survivors));
    }
    let list: Vec<String> = daemons
        .iter()
        .map(|d| format!("{} (pid {})", d.role, d.pid))
        .collect();
    Ok(format!(
        "Stopped {}{}.",
        list.join(", "),
        if killed > 0 {
            format!("; {killed} needed SIGKILL")
        } else {
            String::new()
        }
    ))
}
