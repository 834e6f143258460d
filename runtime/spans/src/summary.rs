//! Figures per span name and process role: how many, how many failed, how long (p50, p95, p99,
//! max), and for task spans how long a task waited between its submission (PRODUCER start) and
//! the start of its execution (CONSUMER start): queueing and transport.

use crate::model::{Kind, Span};
use crate::time::human;
use crate::tree::Trace;
use serde::Serialize;
use std::collections::HashMap;
use std::io::{self, Write};

/// The figures of a set of traces.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Traces counted.
    pub traces: usize,
    /// Spans counted.
    pub spans: usize,
    /// One row per (name, role), sorted by name then role.
    pub rows: Vec<Row>,
}

/// The figures of the spans of one name made by processes of one role.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// The span name.
    pub name: String,
    /// The role of the processes that made them (`driver`, `worker`, …).
    pub role: String,
    /// How many.
    pub count: usize,
    /// How many with an error status.
    pub errors: usize,
    /// Their durations.
    pub duration: Stats,
    /// For CONSUMER spans whose parent is a PRODUCER span: consumer start − producer start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_gap: Option<Stats>,
}

/// Order statistics of a set of durations, in nanoseconds (nearest-rank percentiles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// The 50th percentile.
    pub p50_ns: i64,
    /// The 95th percentile.
    pub p95_ns: i64,
    /// The 99th percentile.
    pub p99_ns: i64,
    /// The largest.
    pub max_ns: i64,
}

impl Stats {
    /// The statistics of `values` (sorted in place); `None` when empty.
    pub fn of(values: &mut [i64]) -> Option<Stats> {
        if values.is_empty() {
            return None;
        }
        values.sort_unstable();
        // Nearest rank: the smallest value with at least p% of the values at or below it.
        let rank = |p: usize| values[(values.len() * p).div_ceil(100).max(1) - 1];
        Some(Stats {
            p50_ns: rank(50),
            p95_ns: rank(95),
            p99_ns: rank(99),
            max_ns: values[values.len() - 1],
        })
    }
}

impl Summary {
    /// The figures of the spans of `traces`.
    pub fn of(spans: &[Span], traces: &[&Trace]) -> Summary {
        #[derive(Default)]
        struct Acc {
            durations: Vec<i64>,
            gaps: Vec<i64>,
            errors: usize,
        }
        let mut index: HashMap<(&str, &str), usize> = HashMap::new();
        let mut groups: Vec<((&str, &str), Acc)> = Vec::new();
        let mut count = 0;
        for node in traces.iter().flat_map(|t| &t.nodes) {
            let span = &spans[node.span];
            count += 1;
            let key = (&*span.name, span.process.role.as_str());
            let at = *index.entry(key).or_insert_with(|| {
                groups.push((key, Acc::default()));
                groups.len() - 1
            });
            let acc = &mut groups[at].1;
            acc.durations
                .push(i64::try_from(span.duration_ns()).unwrap_or(i64::MAX));
            acc.errors += usize::from(span.status.is_error());
            if span.kind == Kind::Consumer
                && let Some(parent) = node.parent.map(|p| &spans[p])
                && parent.kind == Kind::Producer
            {
                acc.gaps.push(span.start_ns as i64 - parent.start_ns as i64);
            }
        }
        groups.sort_by(|a, b| a.0.cmp(&b.0));
        let rows = groups
            .into_iter()
            .filter_map(|((name, role), mut acc)| {
                Some(Row {
                    name: name.to_owned(),
                    role: role.to_owned(),
                    count: acc.durations.len(),
                    errors: acc.errors,
                    duration: Stats::of(&mut acc.durations)?,
                    start_gap: Stats::of(&mut acc.gaps),
                })
            })
            .collect();
        Summary {
            traces: traces.len(),
            spans: count,
            rows,
        }
    }

    /// Writes the figures as a table.
    pub fn write_table(&self, out: &mut dyn Write) -> io::Result<()> {
        let header = [
            "name", "role", "count", "errors", "p50", "p95", "p99", "max", "gap p50", "gap p95",
            "gap max",
        ];
        let mut table: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
        for row in &self.rows {
            let d = row.duration;
            let mut cells = vec![
                row.name.clone(),
                row.role.clone(),
                row.count.to_string(),
                row.errors.to_string(),
                human(d.p50_ns.into()),
                human(d.p95_ns.into()),
                human(d.p99_ns.into()),
                human(d.max_ns.into()),
            ];
            match row.start_gap {
                Some(g) => cells.extend([g.p50_ns, g.p95_ns, g.max_ns].map(|v| human(v.into()))),
                None => cells.extend(["", "", ""].map(String::from)),
            }
            table.push(cells);
        }
        let widths: Vec<usize> = (0..header.len())
            .map(|c| {
                table
                    .iter()
                    .map(|r| r[c].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in &table {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                let pad = widths[c] - cell.chars().count();
                if c < 2 {
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad));
                } else {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(cell);
                }
                line.push_str("  ");
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        writeln!(
            out,
            "{} trace{}, {} span{}",
            self.traces,
            plural(self.traces),
            self.spans,
            plural(self.spans)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::Stats;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut values: Vec<i64> = (1..=100).rev().collect();
        let stats = Stats::of(&mut values).unwrap();
        assert_eq!(
            (stats.p50_ns, stats.p95_ns, stats.p99_ns, stats.max_ns),
            (50, 95, 99, 100)
        );
        let stats = Stats::of(&mut [7]).unwrap();
        assert_eq!((stats.p50_ns, stats.p99_ns, stats.max_ns), (7, 7, 7));
        assert_eq!(Stats::of(&mut []), None);
    }
}
