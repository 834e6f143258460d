//! What a span file holds once read: spans, the processes that made them, and where each came from.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// A trace id (16 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TraceId(pub [u8; 16]);

/// A span id (8 bytes); all zeros means "none" (a root's parent).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SpanId(pub [u8; 8]);

impl SpanId {
    /// Whether this is the all-zero id, which OTLP uses for "no parent".
    pub fn is_none(&self) -> bool {
        self.0 == [0; 8]
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

/// Parses `N` bytes of lowercase or uppercase hex; `None` if the text is not exactly that.
pub(crate) fn parse_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let bytes = text.as_bytes();
    if bytes.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

/// OTLP's span kinds, by their protobuf numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// 0, or a number OTLP does not define.
    Unspecified,
    /// 1.
    Internal,
    /// 2.
    Server,
    /// 3.
    Client,
    /// 4: a task submission in Filament.
    Producer,
    /// 5: a task execution in Filament.
    Consumer,
}

impl Kind {
    /// The kind with this OTLP number.
    pub fn from_otlp(number: i32) -> Kind {
        match number {
            1 => Kind::Internal,
            2 => Kind::Server,
            3 => Kind::Client,
            4 => Kind::Producer,
            5 => Kind::Consumer,
            _ => Kind::Unspecified,
        }
    }

    /// Lowercase name, as the trees print it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Unspecified => "unspecified",
            Kind::Internal => "internal",
            Kind::Server => "server",
            Kind::Client => "client",
            Kind::Producer => "producer",
            Kind::Consumer => "consumer",
        }
    }
}

/// A span's status.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Status {
    /// Unset (OTLP 0).
    #[default]
    Unset,
    /// Ok (OTLP 1).
    Ok,
    /// Error (OTLP 2), with the status message (may be empty).
    Error(Box<str>),
}

impl Status {
    /// Whether this is an error.
    pub fn is_error(&self) -> bool {
        matches!(self, Status::Error(_))
    }
}

/// The process (more exactly: the OTLP resource) that made spans.
#[derive(Debug, Clone, PartialEq)]
pub struct Process {
    /// `process.pid` of the resource, else the number the file is named for, else 0.
    pub pid: u32,
    /// `filament.role` of the resource (`driver`, `worker`), else `service.name`, else `unknown`.
    pub role: String,
    /// `filament.job_id` of the resource; empty when there is none.
    pub job: String,
    /// The resource as OTLP/JSON (`{"attributes":[…]}`), exactly as it was in the file.
    pub resource_json: Box<str>,
    /// The file the spans were read from.
    pub file: Arc<PathBuf>,
}

/// Where a span was read: a file and a 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file.
    pub file: Arc<PathBuf>,
    /// The line, from 1.
    pub line: u64,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// Details kept only when they will be shown (the HTML page): the span's attributes, events and
/// links as the OTLP/JSON text found in the file (already checked to be JSON).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Details {
    /// `attributes`: an OTLP/JSON array of key-values, or empty.
    pub attributes_json: Box<str>,
    /// `events`: an OTLP/JSON array of events, or empty.
    pub events_json: Box<str>,
    /// `links`: an OTLP/JSON array of links, or empty.
    pub links_json: Box<str>,
    /// The instrumentation scope's name.
    pub scope: Arc<str>,
}

/// One span, as read.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// Its trace.
    pub trace_id: TraceId,
    /// Its id.
    pub span_id: SpanId,
    /// Its parent's id, or the zero id for a root.
    pub parent_id: SpanId,
    /// Its name (shared between spans of the same name).
    pub name: Arc<str>,
    /// Its kind.
    pub kind: Kind,
    /// Start, nanoseconds since the Unix epoch.
    pub start_ns: u64,
    /// End, nanoseconds since the Unix epoch.
    pub end_ns: u64,
    /// Its status.
    pub status: Status,
    /// The process that made it.
    pub process: Arc<Process>,
    /// Where it was read.
    pub origin: Origin,
    /// Attributes, events and links, when the reader was asked to keep them.
    pub details: Option<Box<Details>>,
}

impl Span {
    /// End minus start, never negative.
    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_ids_parse_only_at_their_exact_length() {
        assert_eq!(parse_hex::<2>("0aFf"), Some([0x0a, 0xff]));
        assert_eq!(parse_hex::<2>("0aF"), None);
        assert_eq!(parse_hex::<2>("0aFf00"), None);
        assert_eq!(parse_hex::<2>("0g00"), None);
        assert_eq!(
            SpanId(*b"\x01\x02\x03\x04\x05\x06\x07\x08").to_string(),
            "0102030405060708"
        );
    }
}
