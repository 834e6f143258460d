//! `filament spans`: the command line of this crate, as clap arguments the `filament` command
//! embeds ([`SpansArgs`]) and [`run`], which does the work and says by its exit code whether all
//! input was read: 0 yes, 2 some input was skipped or incomplete (each problem printed with its
//! file and line), 1 nothing could be done (no span file, an output that cannot be written, a
//! batch the endpoint did not take).

use crate::export::{ExportOptions, export};
use crate::problem::{Problem, ProblemKind};
use crate::read::{ReadOptions, SpanSet, read};
use crate::select::Selection;
use crate::summary::Summary;
use crate::tree::{Forest, Trace, TreeStyle, write_trees};
use std::collections::HashSet;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// The variable that names the span folder (the local-file plugin writes there).
pub const SPANS_DIR_ENV: &str = "FILAMENT_SPANS_DIR";
/// The span folder when [`SPANS_DIR_ENV`] is unset.
pub const DEFAULT_SPANS_DIR: &str = "/tmp/spans";
/// Exit code: something in the input was skipped or is incomplete; the rest was shown.
pub const EXIT_INCOMPLETE: u8 = 2;
/// Problems printed before the rest are only counted.
const PROBLEMS_SHOWN: usize = 20;

/// The span folder: `$FILAMENT_SPANS_DIR`, else `/tmp/spans`.
pub fn default_spans_dir() -> PathBuf {
    std::env::var_os(SPANS_DIR_ENV)
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_SPANS_DIR), PathBuf::from)
}

/// `filament spans [DIR…]`: reads span files (OTLP/JSON lines, one file per process) and shows
/// their traces.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SpansArgs {
    /// What to show (default: `tree`).
    #[command(subcommand)]
    pub command: Option<SpansCommand>,
    /// `tree`'s arguments, when no command is named.
    #[command(flatten)]
    pub tree: TreeArgs,
}

/// The views of `filament spans`.
#[derive(Debug, clap::Subcommand)]
pub enum SpansCommand {
    /// Each trace as a tree across processes: name, kind, duration, pid, offset, status.
    Tree(TreeArgs),
    /// Per span name and process role: count, errors, p50/p95/p99/max duration, and the time from
    /// a task's submission to the start of its execution.
    Summary(SummaryArgs),
    /// One self-contained HTML page: trace list with search, a waterfall per trace, span details.
    Html(HtmlArgs),
    /// Replays the spans to an OTLP/HTTP endpoint (a collector, Jaeger), in batches.
    Export(ExportArgs),
}

/// Where the span files are.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Inputs {
    /// Span folders or files [default: $FILAMENT_SPANS_DIR, else /tmp/spans].
    #[arg(value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
}

/// A command's name given where span folders go (`filament spans --last 1 tree`), when no such
/// file or folder exists.
fn misplaced_command(inputs: &Inputs) -> Option<&str> {
    use clap::Subcommand;
    inputs.dirs.iter().find_map(|dir| {
        let name = dir.to_str()?;
        (SpansCommand::has_subcommand(name) && !dir.exists()).then_some(name)
    })
}

impl Inputs {
    fn paths(&self) -> Vec<PathBuf> {
        if self.dirs.is_empty() {
            vec![default_spans_dir()]
        } else {
            self.dirs.clone()
        }
    }
}

/// Which traces to show.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SelectArgs {
    /// Only the trace whose id starts with this.
    #[arg(long, value_name = "ID")]
    pub trace: Option<String>,
    /// Only traces with a span whose name matches this glob (`*`, `?`).
    #[arg(long, value_name = "GLOB")]
    pub name: Option<String>,
    /// Only traces with spans of this job (`filament.job_id`).
    #[arg(long, value_name = "ID")]
    pub job: Option<String>,
    /// Only traces that started within this time before now (90s, 10m, 2h, 1d).
    #[arg(long, value_name = "DURATION", value_parser = crate::time::parse_duration)]
    pub since: Option<u64>,
    /// Only the newest N traces.
    #[arg(long, value_name = "N")]
    pub last: Option<usize>,
    /// Only traces with a span whose status is ERROR.
    #[arg(long)]
    pub errors: bool,
}

impl SelectArgs {
    /// The selection these arguments ask for.
    pub fn selection(&self) -> Selection {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Selection {
            trace: self.trace.clone(),
            name: self.name.clone(),
            job: self.job.clone(),
            since_ns: self.since.map(|d| now.saturating_sub(d)),
            errors: self.errors,
            last: self.last,
        }
    }
}

/// When to colour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Colour {
    /// When standard output is a terminal and `NO_COLOR` is unset.
    #[default]
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// `filament spans tree`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TreeArgs {
    /// Where the span files are.
    #[command(flatten)]
    pub inputs: Inputs,
    /// Which traces.
    #[command(flatten)]
    pub select: SelectArgs,
    /// Colour the output.
    #[arg(long, value_enum, default_value_t = Colour::Auto, value_name = "WHEN")]
    pub color: Colour,
}

/// `filament spans summary`.
#[derive(Debug, Clone, clap::Args)]
pub struct SummaryArgs {
    /// Where the span files are.
    #[command(flatten)]
    pub inputs: Inputs,
    /// Which traces.
    #[command(flatten)]
    pub select: SelectArgs,
    /// Print JSON (durations in nanoseconds) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `filament spans html`.
#[derive(Debug, Clone, clap::Args)]
pub struct HtmlArgs {
    /// Where the span files are.
    #[command(flatten)]
    pub inputs: Inputs,
    /// Which traces.
    #[command(flatten)]
    pub select: SelectArgs,
    /// The page to write.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
}

/// `filament spans export`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// Where the span files are.
    #[command(flatten)]
    pub inputs: Inputs,
    /// The OTLP/HTTP endpoint: http(s)://host:port (`/v1/traces` is added) or the full traces
    /// URL [default: $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else $OTEL_EXPORTER_OTLP_ENDPOINT +
    /// /v1/traces].
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// Spans per request.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// Retries of a batch the endpoint asks to retry (429, 502, 503, 504) or cannot take.
    #[arg(long, default_value_t = 4)]
    pub retries: u32,
    /// Seconds one request may take.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub timeout: u64,
}

/// The OTLP exporter variables of the OpenTelemetry specification.
const OTLP_TRACES_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

impl ExportArgs {
    fn endpoint(&self) -> Result<String, String> {
        let var = |name| {
            std::env::var(name)
                .ok()
                .filter(|v: &String| !v.trim().is_empty())
        };
        if let Some(endpoint) = &self.endpoint {
            Ok(endpoint.clone())
        } else if let Some(url) = var(OTLP_TRACES_ENDPOINT_ENV) {
            Ok(url)
        } else if let Some(base) = var(OTLP_ENDPOINT_ENV) {
            Ok(format!(
                "{}{}",
                base.trim_end_matches('/'),
                crate::export::TRACES_PATH
            ))
        } else {
            Err(format!(
                "no endpoint: give --endpoint http://host:4318, or set {OTLP_ENDPOINT_ENV}"
            ))
        }
    }
}

/// Runs `filament spans` with parsed arguments, the views written to standard output.
pub fn run(args: SpansArgs) -> ExitCode {
    let colour = io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let mut out = BufWriter::new(io::stdout().lock());
    run_to(args, &mut out, colour)
}

/// Runs `filament spans` with the views written to `out` (problems and reports still go to
/// standard error); `terminal` says whether `out` is a terminal (colour by default).
pub fn run_to(args: SpansArgs, out: &mut dyn Write, terminal: bool) -> ExitCode {
    let outcome = match args.command {
        None => match misplaced_command(&args.tree.inputs) {
            Some(command) => Err(format!(
                "{command:?} is taken as a span folder, which does not exist: options go after \
                 the command (`filament spans {command} --last 1`, say)"
            )),
            None => tree(&args.tree, out, terminal),
        },
        Some(SpansCommand::Tree(args)) => tree(&args, out, terminal),
        Some(SpansCommand::Summary(args)) => summary(&args, out),
        Some(SpansCommand::Html(args)) => html(&args),
        Some(SpansCommand::Export(args)) => export_command(&args),
    };
    match outcome {
        Ok(code) => code,
        Err(message) => {
            eprintln!("filament spans: error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn load(inputs: &Inputs, details: bool) -> SpanSet {
    read(
        &inputs.paths(),
        ReadOptions {
            details,
            progress: true,
            threads: 0,
        },
    )
}

/// Prints the problems to standard error and says how the command ends.
fn finish(problems: &[Problem], spans: usize, files: usize) -> ExitCode {
    for problem in problems.iter().take(PROBLEMS_SHOWN) {
        eprintln!("filament spans: {problem}");
    }
    if problems.len() > PROBLEMS_SHOWN {
        eprintln!(
            "filament spans: … and {} more problems",
            problems.len() - PROBLEMS_SHOWN
        );
    }
    if spans == 0 && files == 0 {
        eprintln!("filament spans: no span file read");
        return ExitCode::FAILURE;
    }
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        let skipped = problems.iter().filter(|p| p.skipped_input()).count();
        eprintln!(
            "filament spans: {spans} spans read from {files} files; {} problem{} ({skipped} with input skipped)",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
        );
        ExitCode::from(EXIT_INCOMPLETE)
    }
}

/// Runs a view with the chosen traces; orphans are added to the problems.
fn with_traces(
    inputs: &Inputs,
    select: &SelectArgs,
    details: bool,
    view: impl FnOnce(&SpanSet, &[&Trace]) -> io::Result<()>,
) -> Result<ExitCode, String> {
    let set = load(inputs, details);
    let forest = Forest::build(&set.spans);
    let chosen = select.selection().apply(&set.spans, &forest.traces);
    // Orphans matter where they are shown: in the traces chosen.
    let chosen_ids: HashSet<String> = chosen.iter().map(|t| t.id.to_string()).collect();
    let mut problems = set.problems.clone();
    problems.extend(
        forest
            .orphans
            .iter()
            .filter(|p| match &p.kind {
                ProblemKind::OrphanParent { trace_id, .. } => chosen_ids.contains(trace_id),
                _ => true,
            })
            .cloned(),
    );
    // No file read at all: the problems say why, and an empty view would only look like an
    // answer.
    let shown = if set.files.is_empty() {
        Ok(())
    } else {
        view(&set, &chosen)
    };
    match shown {
        Ok(()) => {}
        // `filament spans | head` is not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        Err(e) => return Err(e.to_string()),
    }
    if set.spans.is_empty() && !set.files.is_empty() && set.problems.is_empty() {
        eprintln!(
            "filament spans: the {} files read hold no span",
            set.files.len()
        );
    } else if chosen.is_empty() && !set.spans.is_empty() {
        eprintln!(
            "filament spans: none of the {} traces read is chosen",
            forest.traces.len()
        );
    }
    Ok(finish(&problems, set.spans.len(), set.files.len()))
}

fn tree(args: &TreeArgs, out: &mut dyn Write, terminal: bool) -> Result<ExitCode, String> {
    let colour = match args.color {
        Colour::Always => true,
        Colour::Never => false,
        Colour::Auto => terminal,
    };
    with_traces(&args.inputs, &args.select, false, |set, traces| {
        let style = TreeStyle {
            colour,
            detailed: true,
        };
        write_trees(out, &set.spans, traces, style)?;
        out.flush()
    })
}

fn summary(args: &SummaryArgs, out: &mut dyn Write) -> Result<ExitCode, String> {
    with_traces(&args.inputs, &args.select, false, |set, traces| {
        let summary = Summary::of(&set.spans, traces);
        if args.json {
            serde_json::to_writer_pretty(&mut *out, &summary).map_err(io::Error::other)?;
            writeln!(out)?;
        } else {
            summary.write_table(out)?;
        }
        out.flush()
    })
}

fn html(args: &HtmlArgs) -> Result<ExitCode, String> {
    let path = &args.output;
    let mut written = None;
    let code = with_traces(&args.inputs, &args.select, true, |set, traces| {
        let file = std::fs::File::create(path)?;
        let mut out = BufWriter::new(file);
        crate::html::write_html(&mut out, &set.spans, traces)?;
        out.flush()?;
        written = Some((
            traces.len(),
            traces.iter().map(|t| t.nodes.len()).sum::<usize>(),
        ));
        Ok(())
    })
    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    if let Some((traces, spans)) = written {
        eprintln!(
            "filament spans: wrote {} ({traces} traces, {spans} spans)",
            path.display()
        );
    }
    Ok(code)
}

fn export_command(args: &ExportArgs) -> Result<ExitCode, String> {
    let options = ExportOptions {
        endpoint: args.endpoint()?,
        batch_spans: args.batch_size as usize,
        retries: args.retries,
        timeout: Duration::from_secs(args.timeout.max(1)),
        progress: true,
        ..ExportOptions::default()
    };
    let report = export(&args.inputs.paths(), &options)?;
    let code = finish(&report.problems, report.spans_read as usize, report.files);
    eprintln!(
        "filament spans: {} sent to {} in {}{}",
        count(report.spans_sent, "span"),
        report.url,
        count(report.batches_sent, "batch"),
        if report.spans_rejected > 0 {
            format!(
                " ({} of them rejected by the endpoint)",
                report.spans_rejected
            )
        } else {
            String::new()
        }
    );
    if !report.failed.is_empty() {
        eprintln!(
            "filament spans: error: {} in {} not sent{}",
            count(report.spans_not_sent(), "span"),
            count(report.failed.len() as u64, "batch"),
            if report.gave_up {
                format!(
                    "; stopped after {} failed batches in a row, the spans after them were not read",
                    crate::export::FAILURES_IN_A_ROW
                )
            } else {
                String::new()
            }
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(code)
}

/// `1 span`, `2 spans`, `1 batch`, `3 batches`.
fn count(n: u64, noun: &str) -> String {
    match (n, noun.ends_with("ch")) {
        (1, _) => format!("1 {noun}"),
        (_, true) => format!("{n} {noun}es"),
        (_, false) => format!("{n} {noun}s"),
    }
}
