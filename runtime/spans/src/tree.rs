//! Spans grouped into traces, and each trace into a tree: children under their parents across
//! processes, siblings by start time. A span whose parent is in no file read is a root of its
//! trace (and a problem, reported by file and line).

use crate::model::{Span, SpanId, TraceId};
use crate::problem::{Problem, ProblemKind};
use std::collections::HashMap;
use std::io::{self, Write};

/// One span's place in its trace's tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    /// The span, an index into the span slice the forest was built from.
    pub span: usize,
    /// 0 for a root.
    pub depth: usize,
}

/// A trace: its spans in tree order (depth first, siblings by start time).
#[derive(Debug, Clone)]
pub struct Trace {
    /// Its id.
    pub id: TraceId,
    /// Its spans in tree order.
    pub nodes: Vec<Node>,
    /// The earliest start of its spans, ns since the epoch.
    pub start_ns: u64,
    /// The latest end of its spans.
    pub end_ns: u64,
    /// How many of its spans have an error status.
    pub errors: usize,
}

impl Trace {
    /// From its first start to its last end.
    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }
}

/// All traces of a span slice, sorted by start time (then id).
#[derive(Debug)]
pub struct Forest<'a> {
    /// The spans the traces index into.
    pub spans: &'a [Span],
    /// The traces.
    pub traces: Vec<Trace>,
    /// Spans whose parent is in none of `spans`.
    pub orphans: Vec<Problem>,
}

impl<'a> Forest<'a> {
    /// Groups `spans` into trees.
    pub fn build(spans: &'a [Span]) -> Forest<'a> {
        let mut by_trace: HashMap<TraceId, Vec<usize>> = HashMap::new();
        for (i, span) in spans.iter().enumerate() {
            by_trace.entry(span.trace_id).or_default().push(i);
        }
        let mut orphans = Vec::new();
        let mut traces: Vec<Trace> = by_trace
            .into_iter()
            .map(|(id, members)| build_trace(spans, id, members, &mut orphans))
            .collect();
        traces.sort_by_key(|t| (t.start_ns, t.id));
        orphans.sort_by(|a: &Problem, b: &Problem| (&a.path, a.line).cmp(&(&b.path, b.line)));
        Forest {
            spans,
            traces,
            orphans,
        }
    }
}

fn build_trace(
    spans: &[Span],
    id: TraceId,
    mut members: Vec<usize>,
    orphans: &mut Vec<Problem>,
) -> Trace {
    // Siblings come out in this order: by start, then as read.
    members.sort_by_key(|&i| (spans[i].start_ns, i));
    let position: HashMap<SpanId, usize> = members
        .iter()
        .enumerate()
        .map(|(pos, &i)| (spans[i].span_id, pos))
        .collect();
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); members.len()];
    let mut roots = Vec::new();
    for (pos, &i) in members.iter().enumerate() {
        let span = &spans[i];
        match position.get(&span.parent_id) {
            _ if span.parent_id.is_none() => roots.push(pos),
            Some(&parent) if parent != pos => children[parent].push(pos),
            _ => {
                orphans.push(Problem::at(
                    &span.origin.file,
                    Some(span.origin.line),
                    ProblemKind::OrphanParent {
                        name: span.name.to_string(),
                        span_id: span.span_id.to_string(),
                        parent_id: span.parent_id.to_string(),
                    },
                ));
                roots.push(pos);
            }
        }
    }
    let mut nodes = Vec::with_capacity(members.len());
    let mut visited = vec![false; members.len()];
    let walk = |root: usize, nodes: &mut Vec<Node>, visited: &mut [bool]| {
        let mut stack = vec![(root, 0)];
        while let Some((pos, depth)) = stack.pop() {
            if std::mem::replace(&mut visited[pos], true) {
                continue;
            }
            nodes.push(Node {
                span: members[pos],
                depth,
            });
            stack.extend(children[pos].iter().rev().map(|&c| (c, depth + 1)));
        }
    };
    for root in roots {
        walk(root, &mut nodes, &mut visited);
    }
    // Parents that form a cycle leave spans unreached: show them as roots rather than lose them.
    for pos in 0..members.len() {
        if !visited[pos] {
            walk(pos, &mut nodes, &mut visited);
        }
    }
    let start_ns = members
        .iter()
        .map(|&i| spans[i].start_ns)
        .min()
        .unwrap_or(0);
    let end_ns = members.iter().map(|&i| spans[i].end_ns).max().unwrap_or(0);
    let errors = members
        .iter()
        .filter(|&&i| spans[i].status.is_error())
        .count();
    Trace {
        id,
        nodes,
        start_ns,
        end_ns,
        errors,
    }
}

/// How trees are printed.
#[derive(Debug, Clone, Copy, Default)]
pub struct TreeStyle {
    /// ANSI colours (for a terminal).
    pub colour: bool,
    /// A header line per trace with its start, span count and duration, and each span's offset
    /// from the trace's start (the `filament spans` view; the examples print without).
    pub detailed: bool,
}

const RESET: &str = "\x1b[0m";
const BOLD: &str = "\x1b[1m";
const DIM: &str = "\x1b[2m";
const RED: &str = "\x1b[31m";
const CYAN: &str = "\x1b[36m";

/// Prints each trace as a tree:
///
/// ```text
/// trace 4bf92f3577b34da6a3ce929d0e0e4736
/// └─ quickstart::my_func filament.remote (producer, 412 µs, pid 7)
///    └─ quickstart::my_func filament.remote_worker (consumer, 96 µs, pid 9)
/// ```
pub fn write_trees(
    out: &mut dyn Write,
    spans: &[Span],
    traces: &[&Trace],
    style: TreeStyle,
) -> io::Result<()> {
    let paint = |code: &'static str| if style.colour { code } else { "" };
    let reset = paint(RESET);
    for trace in traces {
        write!(out, "{}trace {}{reset}", paint(BOLD), trace.id)?;
        if style.detailed {
            write!(
                out,
                "{}  {}, {} span{}, {} µs{reset}",
                paint(DIM),
                crate::time::utc(trace.start_ns),
                trace.nodes.len(),
                if trace.nodes.len() == 1 { "" } else { "s" },
                trace.duration_ns() / 1000,
            )?;
            if trace.errors > 0 {
                write!(
                    out,
                    "  {}{} error{}{reset}",
                    paint(RED),
                    trace.errors,
                    if trace.errors == 1 { "" } else { "s" }
                )?;
            }
        }
        writeln!(out)?;
        for node in &trace.nodes {
            let span = &spans[node.span];
            let name_colour = if span.status.is_error() {
                paint(RED)
            } else {
                paint(CYAN)
            };
            write!(
                out,
                "{}└─ {name_colour}{}{reset} ({}, {} µs, pid {})",
                "   ".repeat(node.depth),
                span.name,
                span.kind.as_str(),
                span.duration_ns() / 1000,
                span.process.pid,
            )?;
            if style.detailed {
                write!(
                    out,
                    " {}+{} µs{reset}",
                    paint(DIM),
                    span.start_ns.saturating_sub(trace.start_ns) / 1000
                )?;
            }
            if let crate::model::Status::Error(message) = &span.status {
                write!(
                    out,
                    " {}{BOLD_IF}ERROR{reset}",
                    paint(RED),
                    BOLD_IF = paint(BOLD)
                )?;
                if !message.is_empty() {
                    write!(out, "{}: {message}{reset}", paint(RED))?;
                }
            }
            writeln!(out)?;
        }
    }
    Ok(())
}
