//! Parsing a hook list: `library:symbol[,library:symbol…]`.

use super::HookError;
use std::fmt;

/// One hook of a hook list: a library (a path or a bare name) and a symbol in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HookSpec {
    /// The library as given: a path (`./libfoo.so`, `/opt/x/libfoo.so`) or a bare name
    /// (`filament_local_file`, `libfoo.so`) to search for.
    pub library: String,
    /// The exported hook symbol.
    pub symbol: String,
}

impl fmt::Display for HookSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.library, self.symbol)
    }
}

/// Parses a comma-separated list of `library:symbol` hooks, split at the last colon of each.
///
/// Surrounding whitespace of an item is ignored; an empty item, a missing colon, an empty library or
/// symbol, or a symbol that cannot be a C identifier is an error naming the whole string.
pub fn parse_hooks(hooks: &str) -> Result<Vec<HookSpec>, HookError> {
    let malformed = |reason: String| HookError::Malformed {
        hooks: hooks.to_owned(),
        reason,
    };
    if hooks.trim().is_empty() {
        return Err(malformed(
            "it is empty; expected `library:symbol`, e.g. `filament_local_file:setup_tracing`"
                .into(),
        ));
    }
    let mut specs = Vec::new();
    for (index, item) in hooks.split(',').enumerate() {
        let item = item.trim();
        let position = index + 1;
        if item.is_empty() {
            return Err(malformed(format!(
                "item {position} of the list is empty (a stray comma?)"
            )));
        }
        let Some((library, symbol)) = item.rsplit_once(':') else {
            return Err(malformed(format!(
                "{item:?} has no colon; expected `library:symbol`"
            )));
        };
        if library.is_empty() {
            return Err(malformed(format!(
                "{item:?} names no library before the colon"
            )));
        }
        if symbol.is_empty() {
            return Err(malformed(format!(
                "{item:?} names no symbol after the colon"
            )));
        }
        if !is_c_identifier(symbol) {
            return Err(malformed(format!(
                "{symbol:?} in {item:?} is not a symbol name (letters, digits and `_`, not starting with a digit)"
            )));
        }
        specs.push(HookSpec {
            library: library.to_owned(),
            symbol: symbol.to_owned(),
        });
    }
    Ok(specs)
}

fn is_c_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(hooks: &str) -> String {
        parse_hooks(hooks).unwrap_err().to_string()
    }

    #[test]
    fn splits_a_list_at_the_last_colon_of_each_item() {
        let specs =
            parse_hooks("/opt/a:b/libx.so:setup, filament_local_file:setup_tracing").unwrap();
        assert_eq!(specs[0].library, "/opt/a:b/libx.so");
        assert_eq!(specs[0].symbol, "setup");
        assert_eq!(specs[1].to_string(), "filament_local_file:setup_tracing");
    }

    #[test]
    fn malformed_strings_are_refused_with_the_string_and_the_cause() {
        assert!(reason("").contains("is empty"));
        assert!(reason("   ").contains("is empty"));
        assert!(reason("libfoo.so").contains("\"libfoo.so\" has no colon"));
        assert!(reason(":setup").contains("names no library"));
        assert!(reason("libfoo.so:").contains("names no symbol"));
        assert!(reason("a:b,,c:d").contains("item 2 of the list is empty"));
        assert!(reason("a:b,").contains("item 2 of the list is empty"));
        assert!(reason("a:set-up").contains("is not a symbol name"));
        assert!(reason("a:b,,c:d").contains("\"a:b,,c:d\""));
    }
}
