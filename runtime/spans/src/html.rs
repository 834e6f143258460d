//! The HTML page: one self-contained file (its script, style and data inline; nothing fetched) with
//! a searchable, paginated trace list, a waterfall per trace with a lane per process, and the
//! attributes, events and resource of the span clicked. Rows are virtualised past 2,000, so a
//! trace of any size scrolls; the data is one JSON document parsed once.
//!
//! The page reads `#trace=<trace id>` and `#select=<span id>` in its URL, which select a trace or
//! click a span's row, for links and for the tests.

use crate::model::{Kind, Span, Status};
use crate::tree::Trace;
use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::Arc;

const PAGE: &str = include_str!("page.html");
const DATA_MARK: &str = "@@DATA@@";

/// Writes the page for `traces` (a JSON document, so at most 2^53 ns ≈ 104 days per trace are
/// exact).
pub fn write_html(out: &mut dyn Write, spans: &[Span], traces: &[&Trace]) -> io::Result<()> {
    let (head, tail) = PAGE
        .split_once(DATA_MARK)
        .expect("page.html holds the data mark");
    out.write_all(head.as_bytes())?;
    write_data(&mut NoScriptEnd(out), spans, traces)?;
    out.write_all(tail.as_bytes())
}

fn write_data(out: &mut dyn Write, spans: &[Span], traces: &[&Trace]) -> io::Result<()> {
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut name_list: Vec<&str> = Vec::new();
    let mut procs: HashMap<*const crate::model::Process, usize> = HashMap::new();
    let mut proc_list = Vec::new();
    let json = |out: &mut dyn Write, text: &str| -> io::Result<()> {
        serde_json::to_writer(out, text).map_err(io::Error::other)
    };
    let raw = |out: &mut dyn Write, text: &str| -> io::Result<()> {
        out.write_all(if text.is_empty() {
            b"null"
        } else {
            text.as_bytes()
        })
    };

    write!(out, "{{\"written\":")?;
    json(out, &crate::time::utc(now_ns()))?;
    write!(out, ",\n\"spans\":[")?;
    let mut first_span = true;
    let mut trace_rows = Vec::with_capacity(traces.len());
    let mut index = 0usize;
    for (t, trace) in traces.iter().enumerate() {
        let root = &spans[trace.nodes[0].span].name;
        let root_index = name_index(&mut names, &mut name_list, root);
        trace_rows.push((trace, root_index, index));
        for node in &trace.nodes {
            let span = &spans[node.span];
            let name = name_index(&mut names, &mut name_list, &span.name);
            let process = *procs.entry(Arc::as_ptr(&span.process)).or_insert_with(|| {
                proc_list.push(&span.process);
                proc_list.len() - 1
            });
            let (status, message) = match &span.status {
                Status::Unset => (0, ""),
                Status::Ok => (1, ""),
                Status::Error(message) => (2, message.as_ref()),
            };
            let kind = match span.kind {
                Kind::Unspecified => 0,
                Kind::Internal => 1,
                Kind::Server => 2,
                Kind::Client => 3,
                Kind::Producer => 4,
                Kind::Consumer => 5,
            };
            if !first_span {
                out.write_all(b",\n")?;
            }
            first_span = false;
            let parent = if span.parent_id.is_none() {
                String::new()
            } else {
                span.parent_id.to_string()
            };
            write!(
                out,
                "[{t},{},{process},{name},{kind},{status},{},{},\"{}\",\"{parent}\",",
                node.depth,
                span.start_ns.saturating_sub(trace.start_ns),
                span.duration_ns(),
                span.span_id,
            )?;
            json(out, message)?;
            match &span.details {
                Some(details) => {
                    for text in [
                        &details.attributes_json,
                        &details.events_json,
                        &details.links_json,
                    ] {
                        out.write_all(b",")?;
                        raw(out, text)?;
                    }
                    out.write_all(b",")?;
                    json(out, &details.scope)?;
                }
                None => out.write_all(b",null,null,null,\"\"")?,
            }
            write!(out, ",{}]", span.origin.line)?;
            index += 1;
        }
    }
    write!(out, "],\n\"traces\":[")?;
    for (i, (trace, root, first)) in trace_rows.iter().enumerate() {
        if i > 0 {
            out.write_all(b",\n")?;
        }
        write!(
            out,
            "{{\"id\":\"{}\",\"root\":{root},\"first\":{first},\"count\":{},\"errors\":{},\"duration\":{},\"start_ms\":{},\"start_ns\":\"{}\"}}",
            trace.id,
            trace.nodes.len(),
            trace.errors,
            trace.duration_ns(),
            trace.start_ns / 1_000_000,
            trace.start_ns,
        )?;
    }
    write!(out, "],\n\"names\":")?;
    serde_json::to_writer(&mut *out, &name_list).map_err(io::Error::other)?;
    write!(out, ",\n\"procs\":[")?;
    for (i, process) in proc_list.iter().enumerate() {
        if i > 0 {
            out.write_all(b",\n")?;
        }
        write!(out, "{{\"pid\":{},\"role\":", process.pid)?;
        json(out, &process.role)?;
        out.write_all(b",\"job\":")?;
        json(out, &process.job)?;
        out.write_all(b",\"file\":")?;
        json(out, &process.file.display().to_string())?;
        out.write_all(b",\"resource\":")?;
        out.write_all(process.resource_json.as_bytes())?;
        out.write_all(b"}")?;
    }
    out.write_all(b"]}")
}

fn name_index<'a>(
    names: &mut HashMap<&'a str, usize>,
    list: &mut Vec<&'a str>,
    name: &'a str,
) -> usize {
    *names.entry(name).or_insert_with(|| {
        list.push(name);
        list.len() - 1
    })
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Writes JSON into a `<script>` element: every `<` becomes `\u003c`, so that no text in the
/// data (a span name, an attribute) can close the element. In JSON a `<` can only be inside a
/// string, where the escape means the same.
struct NoScriptEnd<'a>(&'a mut dyn Write);

impl Write for NoScriptEnd<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while let Some(at) = buf.iter().position(|&b| b == b'<') {
            self.0.write_all(&buf[..at])?;
            self.0.write_all(b"\\u003c")?;
            buf = &buf[at + 1..];
        }
        self.0.write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::NoScriptEnd;
    use std::io::Write;

    #[test]
    fn no_text_in_the_data_can_close_the_script_element() {
        let mut out = Vec::new();
        NoScriptEnd(&mut out)
            .write_all(br#"{"name":"</script><b>"}"#)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text, r#"{"name":"\u003c/script>\u003cb>"}"#);
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["name"], "</script><b>");
    }
}
