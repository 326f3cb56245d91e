//! A lake table's columns: declared in the agreement or inferred from the first messages (then kept
//! in the topic's folder, so every later file has the same columns), each message's JSON object
//! checked against them and gathered column by column until its file is written.

use std::sync::Arc;

use anyhow::Context;
use arrow_array::builder::TimestampMicrosecondBuilder;
use arrow_array::builder::{BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde_json::{Map, Value};

/// A column's type in the lake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    String,
    Int64,
    Float64,
    Boolean,
    /// Microseconds, UTC: from RFC 3339 text (a naive one taken as UTC) or milliseconds since the epoch.
    Timestamp,
    /// From `YYYY-MM-DD` (or the date of a timestamp).
    Date,
    /// Any JSON value, kept as its text.
    Json,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        serde_json::from_value(Value::String(s.to_owned())).ok()
    }

    fn arrow(self) -> DataType {
        match self {
            Kind::String | Kind::Json => DataType::Utf8,
            Kind::Int64 => DataType::Int64,
            Kind::Float64 => DataType::Float64,
            Kind::Boolean => DataType::Boolean,
            Kind::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Kind::Date => DataType::Date32,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: Kind,
}

/// The columns a topic's files have. Every column is nullable: a missing field is a null.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Columns(pub Vec<Column>);

/// The type a JSON value suggests, for inference.
fn suggested(v: &Value) -> Option<Kind> {
    match v {
        Value::Null => None,
        Value::Bool(_) => Some(Kind::Boolean),
        Value::Number(n) if n.is_i64() => Some(Kind::Int64),
        Value::Number(_) => Some(Kind::Float64),
        Value::String(_) => Some(Kind::String),
        Value::Array(_) | Value::Object(_) => Some(Kind::Json),
    }
}

impl Columns {
    /// The columns the first objects suggest, in their fields' first-seen order: an integer field
    /// that is also seen with fractions is a float64; a field seen with two other types is JSON text;
    /// one seen only as null is a string.
    pub fn infer<'a>(objects: impl IntoIterator<Item = &'a Map<String, Value>>) -> Columns {
        let mut found: Vec<(String, Option<Kind>)> = Vec::new();
        for o in objects {
            for (name, v) in o {
                let seen = match found.iter_mut().find(|(n, _)| n == name) {
                    Some((_, k)) => k,
                    None => {
                        found.push((name.clone(), None));
                        &mut found.last_mut().expect("just pushed").1
                    }
                };
                *seen = match (*seen, suggested(v)) {
                    (k, None) => k,
                    (None, k) => k,
                    (Some(a), Some(b)) if a == b => Some(a),
                    (Some(Kind::Int64), Some(Kind::Float64)) | (Some(Kind::Float64), Some(Kind::Int64)) => {
                        Some(Kind::Float64)
                    }
                    _ => Some(Kind::Json),
                };
            }
        }
        Columns(found.into_iter().map(|(name, k)| Column { name, kind: k.unwrap_or(Kind::String) }).collect())
    }

    pub fn schema(&self) -> Arc<Schema> {
        Arc::new(Schema::new(self.0.iter().map(|c| Field::new(&c.name, c.kind.arrow(), true)).collect::<Vec<_>>()))
    }

    /// Reads the columns kept beside a topic's files.
    pub fn load(path: &std::path::Path) -> anyhow::Result<Option<Columns>> {
        match std::fs::read(path) {
            Ok(bytes) => {
                Ok(Some(serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))?))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
}

/// A timestamp's microseconds since the epoch, from RFC 3339 text, `YYYY-MM-DD[ T]HH:MM:SS[.f]`
/// (UTC), `YYYY-MM-DD` (its midnight, UTC), or an integer of milliseconds since the epoch.
pub fn timestamp_us(v: &Value) -> Result<i64, String> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .and_then(|ms| ms.checked_mul(1000))
            .ok_or_else(|| format!("{n} is not a whole number of milliseconds since the epoch")),
        Value::String(s) => timestamp_text_us(s),
        other => Err(format!("{} is not a timestamp", kind_of(other))),
    }
}

/// `timestamp_us` of a JSON string's text.
pub fn timestamp_text_us(s: &str) -> Result<i64, String> {
    let parsed = DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").map(|t| t.and_utc()))
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f").map(|t| t.and_utc()))
        .or_else(|_| {
            NaiveDate::parse_from_str(s, "%Y-%m-%d").map(|d| d.and_hms_opt(0, 0, 0).expect("midnight").and_utc())
        });
    parsed.map(|t| t.timestamp_micros()).map_err(|_| format!("`{s}` is not a timestamp"))
}

/// Days since the epoch, as Parquet's DATE counts them.
fn date_days(v: &Value) -> Result<i32, String> {
    let us = timestamp_us(v)?;
    Ok(us.div_euclid(86_400_000_000) as i32)
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// One column's values, gathered until its file is written.
enum Values {
    Text(StringBuilder),
    Int(Int64Builder),
    Float(Float64Builder),
    Bool(BooleanBuilder),
    Timestamp(TimestampMicrosecondBuilder),
    Date(Date32Builder),
}

/// One value checked against its column's type.
#[derive(Debug)]
pub(super) enum Cell<'p> {
    Null,
    Text(std::borrow::Cow<'p, str>),
    Int(i64),
    Float(f64),
    Bool(bool),
    Micros(i64),
    Days(i32),
}

fn cell(kind: Kind, v: Option<&Value>) -> Result<Cell<'_>, String> {
    let v = match v {
        None | Some(Value::Null) => return Ok(Cell::Null),
        Some(v) => v,
    };
    let wrong = || {
        format!("expected {}, found {}", serde_json::to_value(kind).expect("a kind").as_str().unwrap_or(""), kind_of(v))
    };
    Ok(match kind {
        Kind::String => Cell::Text(v.as_str().ok_or_else(wrong)?.into()),
        Kind::Json => Cell::Text(v.to_string().into()),
        Kind::Int64 => Cell::Int(v.as_i64().ok_or_else(wrong)?),
        Kind::Float64 => Cell::Float(v.as_f64().ok_or_else(wrong)?),
        Kind::Boolean => Cell::Bool(v.as_bool().ok_or_else(wrong)?),
        Kind::Timestamp => Cell::Micros(timestamp_us(v)?),
        Kind::Date => Cell::Days(date_days(v)?),
    })
}

/// The rows of one file being gathered.
pub struct Rows {
    columns: Arc<Schema>,
    values: Vec<Values>,
    pub len: usize,
}

impl Rows {
    pub fn new(columns: &Columns) -> Rows {
        let values = columns
            .0
            .iter()
            .map(|c| match c.kind {
                Kind::String | Kind::Json => Values::Text(StringBuilder::new()),
                Kind::Int64 => Values::Int(Int64Builder::new()),
                Kind::Float64 => Values::Float(Float64Builder::new()),
                Kind::Boolean => Values::Bool(BooleanBuilder::new()),
                Kind::Timestamp => Values::Timestamp(TimestampMicrosecondBuilder::new().with_timezone("UTC")),
                Kind::Date => Values::Date(Date32Builder::new()),
            })
            .collect();
        Rows { columns: columns.schema(), values, len: 0 }
    }

    /// Checks every column of `object` first and adds the row only if all fit, so a rejected
    /// message leaves no partial row. `Err` names the column and what is wrong with it.
    pub fn push(&mut self, columns: &Columns, object: &Map<String, Value>) -> Result<(), String> {
        let cells = columns
            .0
            .iter()
            .map(|c| cell(c.kind, object.get(&c.name)).map_err(|why| format!("column `{}`: {why}", c.name)))
            .collect::<Result<Vec<_>, _>>()?;
        self.push_cells(cells);
        Ok(())
    }

    /// Adds a row of checked cells, one per column in order.
    pub(super) fn push_cells<'p>(&mut self, cells: impl IntoIterator<Item = Cell<'p>>) {
        for (values, cell) in self.values.iter_mut().zip(cells) {
            match (values, cell) {
                (Values::Text(b), Cell::Text(s)) => b.append_value(s),
                (Values::Int(b), Cell::Int(i)) => b.append_value(i),
                (Values::Float(b), Cell::Float(f)) => b.append_value(f),
                (Values::Bool(b), Cell::Bool(x)) => b.append_value(x),
                (Values::Timestamp(b), Cell::Micros(t)) => b.append_value(t),
                (Values::Date(b), Cell::Days(d)) => b.append_value(d),
                (Values::Text(b), _) => b.append_null(),
                (Values::Int(b), _) => b.append_null(),
                (Values::Float(b), _) => b.append_null(),
                (Values::Bool(b), _) => b.append_null(),
                (Values::Timestamp(b), _) => b.append_null(),
                (Values::Date(b), _) => b.append_null(),
            }
        }
        self.len += 1;
    }

    pub fn finish(mut self) -> anyhow::Result<RecordBatch> {
        let arrays: Vec<ArrayRef> = self
            .values
            .iter_mut()
            .map(|v| -> ArrayRef {
                match v {
                    Values::Text(b) => Arc::new(b.finish()),
                    Values::Int(b) => Arc::new(b.finish()),
                    Values::Float(b) => Arc::new(b.finish()),
                    Values::Bool(b) => Arc::new(b.finish()),
                    Values::Timestamp(b) => Arc::new(b.finish()),
                    Values::Date(b) => Arc::new(b.finish()),
                }
            })
            .collect();
        Ok(RecordBatch::try_new(self.columns.clone(), arrays)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Array;
    use serde_json::json;

    fn object(v: Value) -> Map<String, Value> {
        v.as_object().expect("an object").clone()
    }

    #[test]
    fn inference_widens_integers_to_floats_and_mixed_fields_to_json() {
        let rows = [
            object(json!({"id": 1, "amount": 3, "name": null, "tags": ["a"], "odd": 1})),
            object(json!({"id": 2, "amount": 2.5, "name": "x", "odd": "one", "ok": true})),
        ];
        let c = Columns::infer(&rows);
        let kinds: Vec<(&str, Kind)> = c.0.iter().map(|c| (c.name.as_str(), c.kind)).collect();
        assert_eq!(
            kinds,
            [
                ("id", Kind::Int64),
                ("amount", Kind::Float64),
                ("name", Kind::String),
                ("tags", Kind::Json),
                ("odd", Kind::Json),
                ("ok", Kind::Boolean)
            ]
        );
    }

    #[test]
    fn a_row_that_does_not_fit_is_refused_whole_with_its_column_named() {
        let columns = Columns(vec![
            Column { name: "id".into(), kind: Kind::Int64 },
            Column { name: "at".into(), kind: Kind::Timestamp },
        ]);
        let mut rows = Rows::new(&columns);
        rows.push(&columns, &object(json!({"id": 1, "at": "2026-12-01T10:00:00+02:00"}))).unwrap();
        assert_eq!(
            rows.push(&columns, &object(json!({"id": "2", "at": "2026-12-01"}))),
            Err("column `id`: expected int64, found a string".into())
        );
        assert_eq!(
            rows.push(&columns, &object(json!({"id": 3, "at": "yesterday"}))),
            Err("column `at`: `yesterday` is not a timestamp".into())
        );
        rows.push(&columns, &object(json!({"id": 4}))).unwrap();
        let batch = rows.finish().unwrap();
        assert_eq!(batch.num_rows(), 2, "the refused rows left nothing behind");
        let at = batch.column(1).as_any().downcast_ref::<arrow_array::TimestampMicrosecondArray>().unwrap();
        assert_eq!(at.value(0), DateTime::parse_from_rfc3339("2026-12-01T08:00:00Z").unwrap().timestamp_micros());
        assert!(at.is_null(1));
    }

    #[test]
    fn timestamps_are_read_from_text_or_epoch_milliseconds() {
        let day = |v: Value| date_days(&v).unwrap();
        assert_eq!(day(json!("1970-01-02")), 1);
        assert_eq!(day(json!("1969-12-31T23:59:59Z")), -1);
        assert_eq!(day(json!(86_400_000)), 1);
        assert_eq!(day(json!("2026-12-01 23:30:00")), day(json!("2026-12-01T23:30:00.5")));
        assert!(timestamp_us(&json!(1.5)).is_err());
    }
}
