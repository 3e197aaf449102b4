//! Renders any serializable value (the app config, the resolved app) as TOML.
//!
//! Values go through `serde_json::Value` and are laid out the way people write
//! fly.toml: scalars first, then `[tables]`, arrays of tables as `[[tables]]`.

use serde::Serialize;
use serde_json::Value;
use toml_edit::{ArrayOfTables, DocumentMut, Item, Table};

/// Why a value cannot be written as TOML.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The value did not serialize.
    #[error("cannot serialize the config: {0}")]
    Serialize(#[from] serde_json::Error),
    /// TOML documents are tables at the top.
    #[error("cannot write a {0} as a TOML document; only tables can be")]
    NotATable(&'static str),
    /// TOML has no integer above i64::MAX.
    #[error("cannot write the number {0} in TOML")]
    Number(String),
}

/// The value as a TOML document.
pub fn to_toml_string<T: Serialize>(value: &T) -> Result<String, RenderError> {
    let json = serde_json::to_value(value)?;
    let Value::Object(map) = json else {
        return Err(RenderError::NotATable(kind(&json)));
    };
    let mut doc = DocumentMut::new();
    fill_table(doc.as_table_mut(), &map)?;
    Ok(doc.to_string())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn fill_table(table: &mut Table, map: &serde_json::Map<String, Value>) -> Result<(), RenderError> {
    // Scalars and plain arrays first so they stay under this table's header.
    for (k, v) in map {
        if is_table_like(v) {
            continue;
        }
        if let Some(value) = to_value(v)? {
            table.insert(k, Item::Value(value));
        }
    }
    for (k, v) in map {
        match v {
            Value::Object(inner) => {
                let mut t = Table::new();
                fill_table(&mut t, inner)?;
                t.set_implicit(!inner.is_empty() && inner.values().all(is_table_like));
                table.insert(k, Item::Table(t));
            }
            Value::Array(items) if is_table_like(v) => {
                let mut aot = ArrayOfTables::new();
                for item in items {
                    if let Value::Object(inner) = item {
                        let mut t = Table::new();
                        fill_table(&mut t, inner)?;
                        aot.push(t);
                    }
                }
                table.insert(k, Item::ArrayOfTables(aot));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Objects become `[tables]`; non-empty arrays of objects become `[[tables]]`.
fn is_table_like(v: &Value) -> bool {
    match v {
        Value::Object(_) => true,
        Value::Array(items) => !items.is_empty() && items.iter().all(Value::is_object),
        _ => false,
    }
}

fn to_value(v: &Value) -> Result<Option<toml_edit::Value>, RenderError> {
    Ok(Some(match v {
        Value::Null => return Ok(None),
        Value::Bool(b) => (*b).into(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into()
            } else if n.is_u64() {
                return Err(RenderError::Number(n.to_string()));
            } else {
                n.as_f64().unwrap_or(f64::NAN).into()
            }
        }
        Value::String(s) => s.as_str().into(),
        Value::Array(items) => {
            let mut arr = toml_edit::Array::new();
            for item in items {
                if let Some(value) = to_value(item)? {
                    arr.push(value);
                }
            }
            toml_edit::Value::Array(arr)
        }
        Value::Object(map) => {
            let mut t = toml_edit::InlineTable::new();
            for (k, v) in map {
                if let Some(value) = to_value(v)? {
                    t.insert(k, value);
                }
            }
            toml_edit::Value::InlineTable(t)
        }
    }))
}
