//! A format-neutral document tree whose every key and value knows where it came from.
//!
//! TOML, JSON and YAML files are all converted into this tree first, so the schema
//! walker (and its diagnostics) exists once. TOML positions are exact (from
//! `toml_edit`'s spans); JSON and YAML positions are found by searching the text
//! for each key below its parent, which is exact for ordinary files and falls back
//! to the parent's position otherwise.

use super::diag::{Diagnostic, DiagnosticKind, LineIndex, Severity};

/// A value and the byte offset of its start in the source.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub(crate) value: NodeValue,
    pub(crate) offset: usize,
}

/// The value of a node.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum NodeValue {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// A TOML date or time, kept as written.
    Datetime(String),
    Array(Vec<Node>),
    Table(Vec<Entry>),
    /// JSON `null` / YAML `~`.
    Null,
}

/// One key of a table.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub(crate) key: String,
    pub(crate) key_offset: usize,
    pub(crate) node: Node,
}

impl NodeValue {
    /// The type name used in "expected X, found Y" messages.
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            NodeValue::Str(_) => "a string",
            NodeValue::Int(_) => "an integer",
            NodeValue::Float(_) => "a float",
            NodeValue::Bool(_) => "a boolean",
            NodeValue::Datetime(_) => "a date-time",
            NodeValue::Array(_) => "an array",
            NodeValue::Table(_) => "a table",
            NodeValue::Null => "null",
        }
    }
}

/// The source formats flyctl accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `fly.toml`, `hangar.toml`.
    Toml,
    /// `fly.json`.
    Json,
    /// `fly.yaml`, `fly.yml`.
    Yaml,
}

impl Format {
    /// The format a file name implies: `.json`, `.yaml`/`.yml`, else TOML.
    pub fn from_path(path: &str) -> Format {
        let lower = path.to_ascii_lowercase();
        if lower.ends_with(".json") {
            Format::Json
        } else if lower.ends_with(".yaml") || lower.ends_with(".yml") {
            Format::Yaml
        } else {
            Format::Toml
        }
    }
}

/// Parses `src` into a tree, or returns the syntax error with its position.
pub(crate) fn parse(
    src: &str,
    format: Format,
    file: &str,
    lines: &LineIndex,
) -> Result<Node, Diagnostic> {
    let syntax = |offset: usize, message: String| {
        let (line, column) = lines.position(src, offset);
        Diagnostic {
            severity: Severity::Error,
            kind: DiagnosticKind::Syntax,
            message,
            file: file.to_owned(),
            line,
            column,
            key_path: String::new(),
            suggestion: None,
        }
    };
    match format {
        Format::Toml => {
            let doc = toml_edit::Document::parse(src).map_err(|e| {
                let offset = e.span().map_or(0, |s| s.start);
                let mut message = format!("invalid TOML: {}", first_line(e.message()));
                if e.message().starts_with("duplicate key") {
                    // Name the key: toml_edit's message does not.
                    let key: String = src
                        .get(offset..)
                        .unwrap_or_default()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '"' | '\''))
                        .collect();
                    if !key.is_empty() {
                        message = format!(
                            "invalid TOML: duplicate key {key}: it is defined more than once; keep one definition"
                        );
                    }
                }
                syntax(offset, message)
            })?;
            Ok(from_toml_table(doc.as_table(), 0))
        }
        Format::Json => {
            let value: serde_json::Value = serde_json::from_str(src).map_err(|e| {
                let offset = offset_of(lines, src, e.line(), e.column());
                syntax(
                    offset,
                    format!("invalid JSON: {}", strip_position(&e.to_string())),
                )
            })?;
            Ok(from_json(&value, src, 0))
        }
        Format::Yaml => {
            let value: serde_yaml::Value = serde_yaml::from_str(src).map_err(|e| {
                let offset = e.location().map_or(0, |l| l.index());
                syntax(
                    offset,
                    format!("invalid YAML: {}", strip_position(&e.to_string())),
                )
            })?;
            let json = yaml_to_json(value);
            Ok(from_json(&json, src, 0))
        }
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s).trim()
}

/// serde_json and serde_yaml append " at line X column Y"; the diagnostic carries that already.
fn strip_position(s: &str) -> String {
    match s.find(" at line ") {
        Some(i) => s[..i].to_owned(),
        None => s.to_owned(),
    }
}

fn offset_of(lines: &LineIndex, src: &str, line: usize, column: usize) -> usize {
    // serde_json counts columns in bytes, 1-based; walk forward from the start of the line.
    let mut offset = 0;
    for (i, l) in src.split_inclusive('\n').enumerate() {
        if i + 1 == line {
            return (offset + column.saturating_sub(1)).min(src.len());
        }
        offset += l.len();
    }
    let _ = lines;
    src.len()
}

fn from_toml_table(table: &toml_edit::Table, fallback: usize) -> Node {
    let offset = table.span().map_or(fallback, |s| s.start);
    let mut entries = Vec::new();
    for (key, item) in table.iter() {
        let key_offset = table
            .key(key)
            .and_then(toml_edit::Key::span)
            .map_or(offset, |s| s.start);
        if let Some(node) = from_toml_item(item, key_offset) {
            entries.push(Entry {
                key: key.to_owned(),
                key_offset,
                node,
            });
        }
    }
    Node {
        value: NodeValue::Table(entries),
        offset,
    }
}

fn from_toml_item(item: &toml_edit::Item, fallback: usize) -> Option<Node> {
    match item {
        toml_edit::Item::None => None,
        toml_edit::Item::Value(v) => Some(from_toml_value(v, fallback)),
        toml_edit::Item::Table(t) => Some(from_toml_table(t, fallback)),
        toml_edit::Item::ArrayOfTables(a) => {
            let offset = a.span().map_or(fallback, |s| s.start);
            let items = a.iter().map(|t| from_toml_table(t, offset)).collect();
            Some(Node {
                value: NodeValue::Array(items),
                offset,
            })
        }
    }
}

fn from_toml_value(value: &toml_edit::Value, fallback: usize) -> Node {
    use toml_edit::Value as V;
    let offset = value.span().map_or(fallback, |s| s.start);
    let value = match value {
        V::String(s) => NodeValue::Str(s.value().clone()),
        V::Integer(i) => NodeValue::Int(*i.value()),
        V::Float(f) => NodeValue::Float(*f.value()),
        V::Boolean(b) => NodeValue::Bool(*b.value()),
        V::Datetime(d) => NodeValue::Datetime(d.value().to_string()),
        V::Array(a) => NodeValue::Array(a.iter().map(|v| from_toml_value(v, offset)).collect()),
        V::InlineTable(t) => {
            let mut entries = Vec::new();
            for (key, v) in t.iter() {
                let key_offset = t
                    .key(key)
                    .and_then(toml_edit::Key::span)
                    .map_or(offset, |s| s.start);
                entries.push(Entry {
                    key: key.to_owned(),
                    key_offset,
                    node: from_toml_value(v, key_offset),
                });
            }
            NodeValue::Table(entries)
        }
    };
    Node { value, offset }
}

fn yaml_to_json(value: serde_yaml::Value) -> serde_json::Value {
    use serde_json::Value as J;
    use serde_yaml::Value as Y;
    match value {
        Y::Null => J::Null,
        Y::Bool(b) => J::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                J::from(i)
            } else if let Some(u) = n.as_u64() {
                J::from(u)
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map_or(J::Null, J::Number)
            }
        }
        Y::String(s) => J::String(s),
        Y::Sequence(items) => J::Array(items.into_iter().map(yaml_to_json).collect()),
        Y::Mapping(map) => {
            let mut out = serde_json::Map::new();
            for (k, v) in map {
                let key = match k {
                    Y::String(s) => s,
                    Y::Bool(b) => b.to_string(),
                    Y::Number(n) => n.to_string(),
                    other => serde_yaml::to_string(&other)
                        .unwrap_or_default()
                        .trim()
                        .to_owned(),
                };
                out.insert(key, yaml_to_json(v));
            }
            J::Object(out)
        }
        Y::Tagged(t) => yaml_to_json(t.value),
    }
}

/// Converts a JSON value; `offset` is where it starts in the source (best effort).
fn from_json(value: &serde_json::Value, src: &str, offset: usize) -> Node {
    use serde_json::Value as J;
    let value = match value {
        J::Null => NodeValue::Null,
        J::Bool(b) => NodeValue::Bool(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => NodeValue::Int(i),
            None => NodeValue::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => NodeValue::Str(s.clone()),
        J::Array(items) => {
            NodeValue::Array(items.iter().map(|v| from_json(v, src, offset)).collect())
        }
        J::Object(map) => NodeValue::Table(
            map.iter()
                .map(|(k, v)| {
                    let key_offset = find_key(src, offset, k).unwrap_or(offset);
                    Entry {
                        key: k.clone(),
                        key_offset,
                        node: from_json(v, src, key_offset),
                    }
                })
                .collect(),
        ),
    };
    Node { value, offset }
}

/// The first place after `from` where `key` appears as a key (`"key"` or `key:`).
fn find_key(src: &str, from: usize, key: &str) -> Option<usize> {
    let rest = src.get(from..)?;
    let quoted = format!("\"{key}\"");
    if let Some(i) = rest.find(&quoted) {
        return Some(from + i);
    }
    let bare = format!("{key}:");
    let mut search = 0;
    while let Some(i) = rest[search..].find(&bare) {
        let at = search + i;
        // A bare YAML key starts a line (after indentation) or follows "- ".
        let before = rest[..at].chars().next_back();
        if matches!(before, None | Some(' ' | '\n' | '\t' | '-' | '{' | ',')) {
            return Some(from + at);
        }
        search = at + bare.len();
    }
    None
}
