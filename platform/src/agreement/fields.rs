//! A small walker over a YAML tree that collects *every* error in a document instead of stopping at the
//! first, each with the dotted path of the field it concerns (`batch.routes[0].timeout`). serde's derive
//! stops at the first problem, which makes fixing an agreement a loop of edit-and-retry.

use serde_yaml::{Mapping, Value};

use crate::units::{parse_duration, ByteSize};

/// One problem in a document: which field and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// Collects errors while a document is walked.
#[derive(Default)]
pub struct Errors(pub Vec<FieldError>);

impl Errors {
    pub fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError { field: field.into(), message: message.into() });
    }
}

/// A mapping at a known path, remembering which keys the schema allows so that typos are reported.
pub struct Section<'a> {
    pub path: String,
    map: &'a Mapping,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

impl<'a> Section<'a> {
    /// Views `value` as a mapping, or records that it is not one.
    pub fn new(value: &'a Value, path: &str, allowed: &[&str], errors: &mut Errors) -> Option<Self> {
        match value {
            Value::Mapping(map) => {
                for key in map.keys() {
                    match key.as_str() {
                        Some(k) if allowed.contains(&k) => {}
                        Some(k) => errors
                            .push(join(path, k), format!("unknown field (expected one of: {})", allowed.join(", "))),
                        None => errors.push(path, format!("keys must be strings, found {}", kind(key))),
                    }
                }
                Some(Section { path: path.to_owned(), map })
            }
            other => {
                errors.push(
                    if path.is_empty() { "(document)" } else { path },
                    format!("expected a mapping, found {}", kind(other)),
                );
                None
            }
        }
    }

    pub fn field(&self, key: &str) -> String {
        join(&self.path, key)
    }

    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// A field that must be present; `parse` turns it into a value or a message.
    pub fn required<T>(
        &self,
        key: &str,
        errors: &mut Errors,
        parse: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Option<T> {
        match self.get(key) {
            Some(v) => self.parsed(key, v, errors, parse),
            None => {
                errors.push(self.field(key), "missing required field");
                None
            }
        }
    }

    /// A field with a default when absent. `None` only when present and invalid.
    pub fn optional<T>(
        &self,
        key: &str,
        default: T,
        errors: &mut Errors,
        parse: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Option<T> {
        match self.get(key) {
            Some(v) => self.parsed(key, v, errors, parse),
            None => Some(default),
        }
    }

    fn parsed<T>(
        &self,
        key: &str,
        v: &Value,
        errors: &mut Errors,
        parse: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Option<T> {
        match parse(v) {
            Ok(t) => Some(t),
            Err(message) => {
                errors.push(self.field(key), message);
                None
            }
        }
    }

    /// A list field: yields each element with its path (`routes[2]`).
    pub fn list(&self, key: &str, errors: &mut Errors, required: bool) -> Vec<(String, &'a Value)> {
        match self.get(key) {
            Some(Value::Sequence(items)) => {
                items.iter().enumerate().map(|(i, v)| (format!("{}[{i}]", self.field(key)), v)).collect()
            }
            Some(other) => {
                errors.push(self.field(key), format!("expected a list, found {}", kind(other)));
                Vec::new()
            }
            None => {
                if required {
                    errors.push(self.field(key), "missing required field");
                }
                Vec::new()
            }
        }
    }
}

pub fn string(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Ok(s.clone()),
        Value::String(_) => Err("must not be empty".into()),
        other => Err(format!("expected a string, found {}", kind(other))),
    }
}

pub fn integer(min: u64, max: u64) -> impl Fn(&Value) -> Result<u64, String> {
    move |v| match v.as_u64() {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        Some(n) => Err(format!("{n} is out of range (allowed {min}..={max})")),
        None => Err(format!("expected a whole number, found {}", describe(v))),
    }
}

pub fn positive_number(v: &Value) -> Result<f64, String> {
    match v.as_f64() {
        Some(n) if n.is_finite() && n >= 0.0 => Ok(n),
        _ => Err(format!("expected a non-negative number, found {}", describe(v))),
    }
}

pub fn size(v: &Value) -> Result<ByteSize, String> {
    match v {
        Value::String(s) => ByteSize::parse(s),
        Value::Number(n) => n.as_u64().map(ByteSize).ok_or_else(|| format!("`{n}` is not a size")),
        other => Err(format!("expected a size such as 200MiB, found {}", kind(other))),
    }
}

pub fn duration(v: &Value) -> Result<std::time::Duration, String> {
    match v {
        Value::String(s) => parse_duration(s),
        other => Err(format!("expected a duration such as 10s or 5m, found {}", describe(other))),
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("`{s}`"),
        Value::Number(n) => format!("`{n}`"),
        other => kind(other).to_owned(),
    }
}
