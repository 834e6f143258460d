//! What went wrong with the input: each problem names the file (and line) and the cause. Reading
//! goes on past every one of them; the command's exit code says whether there were any.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// A problem with the input, and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file or folder.
    pub path: Arc<PathBuf>,
    /// The 1-based line, when the problem is on one line.
    pub line: Option<u64>,
    /// What is wrong.
    pub kind: ProblemKind,
}

/// What is wrong with an input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProblemKind {
    /// A folder or file given on the command line does not exist.
    #[error("no such file or folder")]
    Missing,
    /// A folder holds no file.
    #[error("no span files in this folder")]
    EmptyFolder,
    /// A file or folder could not be read.
    #[error("cannot read: {0}")]
    Unreadable(String),
    /// A file holds binary data, not text.
    #[error("not a text file (a NUL byte at offset {offset}); file skipped")]
    NotText {
        /// Where the first NUL byte is.
        offset: u64,
    },
    /// The last line has no newline and is not a whole OTLP/JSON line: the process that wrote it
    /// was probably killed while writing.
    #[error(
        "truncated last line (no newline at the end; was its process killed while writing?): \
         {cause}; line skipped"
    )]
    Truncated {
        /// The JSON parser's complaint.
        cause: String,
    },
    /// A line that is not an OTLP/JSON `TracesData`.
    #[error("not an OTLP/JSON TracesData line: {cause}; line skipped")]
    NotOtlp {
        /// What is wrong with it.
        cause: String,
    },
    /// A line longer than the reader accepts.
    #[error("line longer than {limit} bytes; line skipped")]
    LineTooLong {
        /// The limit, in bytes.
        limit: usize,
    },
    /// A span whose parent is in none of the files read; it is shown as a root.
    #[error(
        "span {name:?} ({span_id}) has parent {parent_id}, which is in no file read; shown as a root"
    )]
    OrphanParent {
        /// The span's trace id, hex.
        trace_id: String,
        /// The span's name.
        name: String,
        /// The span's id, hex.
        span_id: String,
        /// Its parent's id, hex.
        parent_id: String,
    },
}

impl Problem {
    pub(crate) fn at(path: &Arc<PathBuf>, line: Option<u64>, kind: ProblemKind) -> Problem {
        Problem {
            path: Arc::clone(path),
            line,
            kind,
        }
    }

    /// Whether input was left out because of it (everything but an orphan parent, whose span is
    /// still shown).
    pub fn skipped_input(&self) -> bool {
        !matches!(self.kind, ProblemKind::OrphanParent { .. })
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.path.display(), self.kind),
            None => write!(f, "{}: {}", self.path.display(), self.kind),
        }
    }
}
