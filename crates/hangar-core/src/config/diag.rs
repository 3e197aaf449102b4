//! Diagnostics: what is wrong (or only suspicious) in a config file, and where.
//!
//! A diagnostic is plain, serializable data so that `hangar config validate --json`
//! can print it and an editor or CI step can consume it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The file cannot be deployed as written.
    Error,
    /// The file deploys, but something in it is ignored or suspicious.
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// The class of a diagnostic, stable for tools that filter on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiagnosticKind {
    /// The file is not valid TOML, JSON or YAML.
    Syntax,
    /// A key that neither Fly nor Hangar knows (usually a typo).
    UnknownKey,
    /// A known key with a value of the wrong type.
    WrongType,
    /// A value of the right type that cannot work.
    InvalidValue,
    /// A key Hangar parses but does not act on yet.
    NotSupported,
    /// A key only Fly's retired v1 platform used; ignored.
    Legacy,
}

/// One finding in a config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The class of finding.
    pub kind: DiagnosticKind,
    /// What is wrong and, where possible, what to do, in lower case.
    pub message: String,
    /// The file, as the user named it.
    pub file: String,
    /// 1-based line.
    pub line: u32,
    /// 1-based column, in characters.
    pub column: u32,
    /// Dotted path of the key, e.g. `services[0].ports[1].port`; empty for the whole file.
    pub key_path: String,
    /// The key the user probably meant, for unknown keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suggestion: Option<String>,
}

impl Diagnostic {
    /// Whether this diagnostic fails validation: errors always, warnings under `--strict`.
    pub fn is_fatal(&self, strict: bool) -> bool {
        self.severity == Severity::Error || strict
    }
}

impl fmt::Display for Diagnostic {
    /// Prints like a compiler: `error: message` then `  --> file:line:column`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}\n  --> {}:{}:{}",
            self.severity, self.message, self.file, self.line, self.column
        )
    }
}

/// Whether any diagnostic fails validation (`strict` turns warnings into failures).
pub fn has_fatal(diagnostics: &[Diagnostic], strict: bool) -> bool {
    diagnostics.iter().any(|d| d.is_fatal(strict))
}

/// Maps byte offsets of a source text to 1-based lines and character columns.
#[derive(Debug, Clone)]
pub(crate) struct LineIndex {
    /// Byte offset at which each line starts.
    starts: Vec<usize>,
}

impl LineIndex {
    pub(crate) fn new(src: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(src.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }

    /// Line and column of `offset`; offsets past the end map to the last position.
    pub(crate) fn position(&self, src: &str, offset: usize) -> (u32, u32) {
        let offset = offset.min(src.len());
        let line = match self.starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let start = self.starts[line];
        // The offset may fall inside a multi-byte character when it comes from a
        // heuristic search; count only whole characters before it.
        let column = src.get(start..offset).map_or_else(
            || src[start..].chars().count().min(offset - start),
            |s| s.chars().count(),
        );
        (
            u32::try_from(line + 1).unwrap_or(u32::MAX),
            u32::try_from(column + 1).unwrap_or(u32::MAX),
        )
    }
}

/// The best match for an unknown key among the known ones, if one is close enough.
pub(crate) fn suggest(unknown: &str, known: &[&str]) -> Option<String> {
    let lower = unknown.to_ascii_lowercase().replace('-', "_");
    let mut best: Option<(usize, &str)> = None;
    for k in known {
        let d = strsim::damerau_levenshtein(&lower, &k.replace('-', "_"));
        // Allow about one edit per three characters, at least one, so that
        // `internal_prot` finds `internal_port` but `foo` does not find `app`.
        let limit = (k.chars().count() / 3).max(1);
        // A value that extends a known one (`rolling-eyes`) most likely meant it.
        let extends = k.len() >= 3 && lower.starts_with(&k.replace('-', "_"));
        let d = if extends { d.min(limit) } else { d };
        if (d <= limit) && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, k));
        }
    }
    best.map(|(_, k)| (*k).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let src = "a = 1\nbé = 2\n";
        let idx = LineIndex::new(src);
        assert_eq!(idx.position(src, 0), (1, 1));
        assert_eq!(idx.position(src, 6), (2, 1));
        // `=` after the two-byte `é` is the fourth character.
        assert_eq!(idx.position(src, src.find("= 2").unwrap()), (2, 4));
        assert_eq!(idx.position(src, 999), (3, 1));
    }

    #[test]
    fn suggestions_need_a_close_match() {
        let known = ["internal_port", "protocol", "processes", "app"];
        assert_eq!(
            suggest("internal_prot", &known).as_deref(),
            Some("internal_port")
        );
        assert_eq!(suggest("Protocol", &known).as_deref(), Some("protocol"));
        assert_eq!(suggest("foo", &known), None);
        assert_eq!(suggest("completely_different", &known), None);
    }
}
