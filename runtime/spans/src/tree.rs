//! Spans grouped into traces, and each trace into a tree: children under their parents across
//! processes, siblings by start time. A span whose parent is in no file read is a root of its
//! trace (and a problem, reported by file and line).

use crate::model::{Span, SpanId, TraceId};
use crate::problem::{Problem, ProblemKind};
use crate::time::human;
use std::collections::HashMap;
use std::io::{self, Write};

/// One span's place in its trace's tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    /// The span, an index into the span slice the forest was built from.
    pub span: usize,
    /// 0 for a root.
    pub depth: usize,
    /// The parent span (an index into the same slice); `None` for a root.
    pub parent: Option<usize>,
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
        // One sort puts each trace's spans together, by start then as read: no map of traces.
        let mut keys: Vec<(TraceId, u64, usize)> = spans
            .iter()
            .enumerate()
            .map(|(i, s)| (s.trace_id, s.start_ns, i))
            .collect();
        keys.sort_unstable();
        let mut orphans = Vec::new();
        let mut scratch = Scratch::default();
        let mut traces = Vec::new();
        let mut rest = keys.as_slice();
        while let Some(&(id, _, _)) = rest.first() {
            let len = rest.iter().take_while(|k| k.0 == id).count();
            let (members, tail) = rest.split_at(len);
            rest = tail;
            traces.push(scratch.trace(spans, id, members, &mut orphans));
        }
        traces.sort_by_key(|t| (t.start_ns, t.id));
        orphans.sort_by(|a: &Problem, b: &Problem| (&a.path, a.line).cmp(&(&b.path, b.line)));
        Forest {
            spans,
            traces,
            orphans,
        }
    }
}

/// Buffers reused from one trace to the next.
#[derive(Default)]
struct Scratch {
    parent: Vec<Option<usize>>,
    first_child: Vec<usize>,
    children: Vec<usize>,
    visited: Vec<bool>,
    stack: Vec<(usize, usize)>,
    roots: Vec<usize>,
}

/// Traces this small find parents by a scan rather than a map.
const SCAN_UP_TO: usize = 32;

impl Scratch {
    /// The tree of one trace; `members` are its spans' keys, by start then as read.
    fn trace(
        &mut self,
        spans: &[Span],
        id: TraceId,
        members: &[(TraceId, u64, usize)],
        orphans: &mut Vec<Problem>,
    ) -> Trace {
        let n = members.len();
        let span = |pos: usize| &spans[members[pos].2];
        let map: Option<HashMap<SpanId, usize>> =
            (n > SCAN_UP_TO).then(|| (0..n).map(|pos| (span(pos).span_id, pos)).collect());
        let find = |wanted: SpanId| match &map {
            Some(map) => map.get(&wanted).copied(),
            None => (0..n).find(|&pos| span(pos).span_id == wanted),
        };
        self.parent.clear();
        self.roots.clear();
        for pos in 0..n {
            let s = span(pos);
            let parent = if s.parent_id.is_none() {
                None
            } else {
                match find(s.parent_id) {
                    Some(parent) if parent != pos => Some(parent),
                    _ => {
                        orphans.push(Problem::at(
                            &s.origin.file,
                            Some(s.origin.line),
                            ProblemKind::OrphanParent {
                                trace_id: id.to_string(),
                                name: s.name.to_string(),
                                span_id: s.span_id.to_string(),
                                parent_id: s.parent_id.to_string(),
                            },
                        ));
                        None
                    }
                }
            };
            if parent.is_none() {
                self.roots.push(pos);
            }
            self.parent.push(parent);
        }
        // Children of `p` are children[first_child[p]..first_child[p + 1]], in start order.
        self.first_child.clear();
        self.first_child.resize(n + 1, 0);
        for parent in self.parent.iter().flatten() {
            self.first_child[parent + 1] += 1;
        }
        for p in 0..n {
            self.first_child[p + 1] += self.first_child[p];
        }
        self.children.clear();
        self.children.resize(n, 0);
        let mut fill = self.first_child.clone();
        for (pos, parent) in self.parent.iter().enumerate() {
            if let Some(parent) = *parent {
                self.children[fill[parent]] = pos;
                fill[parent] += 1;
            }
        }
        let mut nodes = Vec::with_capacity(n);
        self.visited.clear();
        self.visited.resize(n, false);
        // Roots first; then whatever a cycle of parents left unreached, as roots too.
        let starts: Vec<usize> = self.roots.iter().copied().chain(0..n).collect();
        for root in starts {
            if self.visited[root] {
                continue;
            }
            self.stack.clear();
            self.stack.push((root, 0));
            while let Some((pos, depth)) = self.stack.pop() {
                if std::mem::replace(&mut self.visited[pos], true) {
                    continue;
                }
                nodes.push(Node {
                    span: members[pos].2,
                    depth,
                    parent: self.parent[pos].filter(|_| depth > 0).map(|p| members[p].2),
                });
                let kids = &self.children[self.first_child[pos]..self.first_child[pos + 1]];
                self.stack
                    .extend(kids.iter().rev().map(|&c| (c, depth + 1)));
            }
        }
        let start_ns = members[0].1;
        let end_ns = members.iter().map(|m| spans[m.2].end_ns).max().unwrap_or(0);
        let errors = members
            .iter()
            .filter(|m| spans[m.2].status.is_error())
            .count();
        Trace {
            id,
            nodes,
            start_ns,
            end_ns,
            errors,
        }
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
/// └─ quickstart::my_func filament.remote (producer, 412.3 µs, pid 7)
///    └─ quickstart::my_func filament.remote_worker (consumer, 4.02 s, pid 9)
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
                "{}  {}, {} span{}, {}{reset}",
                paint(DIM),
                crate::time::utc(trace.start_ns),
                trace.nodes.len(),
                if trace.nodes.len() == 1 { "" } else { "s" },
                human(trace.duration_ns().into()),
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
                "{}└─ {name_colour}{}{reset} ({}, {}, pid {})",
                "   ".repeat(node.depth),
                span.name,
                span.kind.as_str(),
                human(span.duration_ns().into()),
                span.process.pid,
            )?;
            if style.detailed {
                write!(
                    out,
                    " {}+{}{reset}",
                    paint(DIM),
                    human(span.start_ns.saturating_sub(trace.start_ns).into())
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
