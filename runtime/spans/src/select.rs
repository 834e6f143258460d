//! Which traces to show: by id, span name, job, age, errors, and the newest N.

use crate::model::Span;
use crate::tree::Trace;

/// A choice of traces. Every condition given must hold; `last` applies after the others.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Traces whose id starts with this (hex, any case).
    pub trace: Option<String>,
    /// Traces with a span whose name matches this glob (`*` any text, `?` one character).
    pub name: Option<String>,
    /// Traces with a span of a process of this job (`filament.job_id`).
    pub job: Option<String>,
    /// Traces that started at or after this time, ns since the epoch.
    pub since_ns: Option<u64>,
    /// Only traces with an error.
    pub errors: bool,
    /// Only the newest N traces (by start).
    pub last: Option<usize>,
}

impl Selection {
    /// The traces chosen, in the order given (which [`crate::tree::Forest`] makes by start).
    pub fn apply<'t>(&self, spans: &[Span], traces: &'t [Trace]) -> Vec<&'t Trace> {
        let trace_prefix = self.trace.as_ref().map(|t| t.to_ascii_lowercase());
        let mut chosen: Vec<&Trace> = traces
            .iter()
            .filter(|t| {
                trace_prefix
                    .as_ref()
                    .is_none_or(|p| t.id.to_string().starts_with(p.as_str()))
            })
            .filter(|t| self.since_ns.is_none_or(|since| t.start_ns >= since))
            .filter(|t| !self.errors || t.errors > 0)
            .filter(|t| {
                self.job
                    .as_ref()
                    .is_none_or(|job| t.nodes.iter().any(|n| spans[n.span].process.job == *job))
            })
            .filter(|t| {
                self.name.as_ref().is_none_or(|glob| {
                    t.nodes
                        .iter()
                        .any(|n| glob_match(glob, &spans[n.span].name))
                })
            })
            .collect();
        if let Some(last) = self.last {
            let skip = chosen.len().saturating_sub(last);
            chosen.drain(..skip);
        }
        chosen
    }
}

/// Whether `text` matches `glob`: `*` matches any text (also none), `?` one character, anything
/// else itself.
pub fn glob_match(glob: &str, text: &str) -> bool {
    let glob: Vec<char> = glob.chars().collect();
    let text: Vec<char> = text.chars().collect();
    // The classic two-pointer match with backtracking to the last star: linear in practice.
    let (mut g, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if g < glob.len() && (glob[g] == '?' || glob[g] == text[t]) {
            g += 1;
            t += 1;
        } else if g < glob.len() && glob[g] == '*' {
            star = Some((g, t));
            g += 1;
        } else if let Some((star_g, star_t)) = star {
            g = star_g + 1;
            t = star_t + 1;
            star = Some((star_g, star_t + 1));
        } else {
            return false;
        }
    }
    glob[g..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs_match_stars_and_question_marks() {
        assert!(glob_match(
            "*remote_worker",
            "quickstart::my_func filament.remote_worker"
        ));
        assert!(glob_match("quick*::my_*", "quickstart::my_func"));
        assert!(glob_match("fo?", "foo"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("fo?", "fooo"));
        assert!(!glob_match("*remote", "x filament.remote_worker"));
        assert!(glob_match("a*b*c", "aXbYbZc"));
    }
}
