//! What the benchmarks share: statistics of samples, and counting the lines of span files.

#![warn(missing_docs)]

use std::fs::File;
use std::io::Read;
use std::path::Path;

/// The median of some samples (NaN for none).
pub fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.is_empty() {
        f64::NAN
    } else if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

/// The smallest sample (infinity for none).
pub fn min(samples: &[f64]) -> f64 {
    samples.iter().copied().fold(f64::INFINITY, f64::min)
}

/// The newlines and bytes of a file, read in large blocks. Panics naming the file if it cannot
/// be read: a benchmark that cannot check its output has nothing to say.
pub fn count_lines(path: &Path) -> (u64, u64) {
    let mut file =
        File::open(path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let mut buffer = vec![0u8; 1 << 20];
    let (mut lines, mut bytes) = (0u64, 0u64);
    loop {
        let read = file
            .read(&mut buffer)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        if read == 0 {
            return (lines, bytes);
        }
        bytes += read as u64;
        lines += buffer[..read].iter().filter(|&&b| b == b'\n').count() as u64;
    }
}

/// The spans in span file text, one line per span or many: a span is counted by its `"kind":`
/// field, which every span has (and events and links have not).
pub fn count_spans(text: &[u8]) -> u64 {
    text.windows(7).filter(|w| w == b"\"kind\":").count() as u64
}

/// The driver's resident set, in KiB.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line in /proc/self/status")
}
