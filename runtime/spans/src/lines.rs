//! The lines of one span file, read in a bounded buffer: a file is never loaded whole, a line is
//! capped, and a file that is not text is refused at its first NUL byte.

use crate::problem::{Problem, ProblemKind};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::sync::Arc;

/// The longest line read (a span with huge attributes is still far below it).
pub const MAX_LINE: usize = 64 << 20;
const BUFFER: usize = 256 << 10;

/// One line of a file.
#[derive(Debug)]
pub(crate) struct Line<'a> {
    /// 1-based.
    pub(crate) number: u64,
    /// Without its newline.
    pub(crate) bytes: &'a [u8],
    /// Whether the file ended before a newline did.
    pub(crate) unterminated: bool,
}

/// Reads a file line by line.
pub(crate) struct Lines<R> {
    reader: BufReader<R>,
    path: Arc<PathBuf>,
    line: Vec<u8>,
    number: u64,
    offset: u64,
    /// Bytes of the buffer lent as the last line, consumed at the next call.
    lent: usize,
    done: bool,
}

impl Lines<File> {
    pub(crate) fn open(path: &Arc<PathBuf>) -> Result<Lines<File>, Problem> {
        File::open(path.as_path())
            .map(|file| Lines::new(file, path))
            .map_err(|e| Problem::at(path, None, ProblemKind::Unreadable(e.to_string())))
    }
}

impl<R: Read> Lines<R> {
    pub(crate) fn new(reader: R, path: &Arc<PathBuf>) -> Lines<R> {
        Lines::with_buffer(reader, path, BUFFER)
    }

    fn with_buffer(reader: R, path: &Arc<PathBuf>, buffer: usize) -> Lines<R> {
        Lines {
            reader: BufReader::with_capacity(buffer, reader),
            path: Arc::clone(path),
            line: Vec::new(),
            number: 0,
            offset: 0,
            lent: 0,
            done: false,
        }
    }

    /// Bytes consumed so far.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// The next line; `None` at the end. A problem that ends the file (unreadable, not text) is
    /// returned once, then `None`; a line too long is reported and skipped.
    pub(crate) fn next_line(&mut self) -> Option<Result<Line<'_>, Problem>> {
        if self.lent > 0 {
            self.reader.consume(std::mem::take(&mut self.lent));
        }
        if self.done {
            return None;
        }
        self.line.clear();
        // A whole line in the buffer is lent as it is, not copied (consumed at the next call).
        let whole = match self.reader.fill_buf() {
            Ok(chunk) => memchr::memchr(b'\n', chunk),
            Err(_) => None, // the loop below reports it
        };
        if let Some(end) = whole {
            if let Some(nul) = memchr::memchr(0, &self.reader.buffer()[..end]) {
                self.done = true;
                return Some(Err(Problem::at(
                    &self.path,
                    None,
                    ProblemKind::NotText {
                        offset: self.offset + nul as u64,
                    },
                )));
            }
            self.lent = end + 1;
            self.offset += self.lent as u64;
            self.number += 1;
            return Some(Ok(Line {
                number: self.number,
                bytes: &self.reader.buffer()[..end],
                unterminated: false,
            }));
        }
        let mut too_long = false;
        loop {
            let chunk = match self.reader.fill_buf() {
                Ok(chunk) => chunk,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.done = true;
                    return Some(Err(Problem::at(
                        &self.path,
                        Some(self.number + 1),
                        ProblemKind::Unreadable(e.to_string()),
                    )));
                }
            };
            if chunk.is_empty() {
                self.done = true;
                if self.line.is_empty() && !too_long {
                    return None;
                }
                self.number += 1;
                if too_long {
                    return Some(Err(self.too_long()));
                }
                return Some(Ok(Line {
                    number: self.number,
                    bytes: &self.line,
                    unterminated: true,
                }));
            }
            let newline = memchr::memchr(b'\n', chunk);
            let take = newline.map_or(chunk.len(), |i| i + 1);
            let body = newline.map_or(chunk, |i| &chunk[..i]);
            if let Some(nul) = memchr::memchr(0, body) {
                self.done = true;
                return Some(Err(Problem::at(
                    &self.path,
                    None,
                    ProblemKind::NotText {
                        offset: self.offset + nul as u64,
                    },
                )));
            }
            if !too_long && self.line.len() + body.len() <= MAX_LINE {
                self.line.extend_from_slice(body);
            } else {
                too_long = true;
                self.line.clear();
            }
            self.reader.consume(take);
            self.offset += take as u64;
            if newline.is_some() {
                self.number += 1;
                if too_long {
                    return Some(Err(self.too_long()));
                }
                return Some(Ok(Line {
                    number: self.number,
                    bytes: &self.line,
                    unterminated: false,
                }));
            }
        }
    }

    fn too_long(&self) -> Problem {
        Problem::at(
            &self.path,
            Some(self.number),
            ProblemKind::LineTooLong { limit: MAX_LINE },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(text: &[u8]) -> Vec<Result<(u64, String, bool), String>> {
        all_with_buffer(text, BUFFER)
    }

    fn all_with_buffer(text: &[u8], buffer: usize) -> Vec<Result<(u64, String, bool), String>> {
        let path = Arc::new(PathBuf::from("f.json"));
        let mut lines = Lines::with_buffer(text, &path, buffer);
        let mut out = Vec::new();
        while let Some(line) = lines.next_line() {
            out.push(
                line.map(|l| {
                    (
                        l.number,
                        String::from_utf8_lossy(l.bytes).into_owned(),
                        l.unterminated,
                    )
                })
                .map_err(|p| p.to_string()),
            );
        }
        out
    }

    #[test]
    fn lines_are_numbered_and_the_unterminated_last_one_is_marked() {
        assert_eq!(
            all(b"a\n\nbc\nd"),
            vec![
                Ok((1, "a".into(), false)),
                Ok((2, "".into(), false)),
                Ok((3, "bc".into(), false)),
                Ok((4, "d".into(), true)),
            ]
        );
        assert_eq!(all(b""), vec![]);
    }

    #[test]
    fn lines_across_the_buffer_edge_are_whole_whatever_the_buffer() {
        let text: String = (0..40)
            .map(|i| "x".repeat(i * 7 % 23) + "\n")
            .collect::<String>()
            + "end";
        let expected: Vec<_> = text
            .split('\n')
            .enumerate()
            .map(|(i, l)| Ok((i as u64 + 1, l.to_owned(), l == "end")))
            .collect();
        for buffer in [1, 2, 5, 8, 23, 24, 100, 4096] {
            assert_eq!(
                all_with_buffer(text.as_bytes(), buffer),
                expected,
                "buffer {buffer}"
            );
        }
        let with_nul = "ab\ncdef\ngh\0\n";
        for buffer in [1, 3, 4096] {
            assert_eq!(
                all_with_buffer(with_nul.as_bytes(), buffer).last().unwrap(),
                &Err("f.json: not a text file (a NUL byte at offset 10); file skipped".into()),
                "buffer {buffer}"
            );
        }
    }

    #[test]
    fn a_nul_byte_ends_the_file_with_its_offset() {
        assert_eq!(
            all(b"ab\ncd\0ef\ngh\n"),
            vec![
                Ok((1, "ab".into(), false)),
                Err("f.json: not a text file (a NUL byte at offset 5); file skipped".into()),
            ]
        );
    }
}
