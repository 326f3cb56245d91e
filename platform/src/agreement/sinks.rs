//! The agreement's sinks (`sinks:`): connectors that copy the tenant's topics out, each as one of
//! its stream instances in a consumer group of its own, so several sinks of one topic (fan-out) keep
//! their own progress and one stopped does not hold the others.

use std::collections::HashSet;
use std::time::Duration;

use serde_yaml::Value;

use super::fields::{duration, integer, size, string, Errors, Section};
use crate::units::ByteSize;
pub use mysimbdp_connect::lake::columns::{Column, Columns, Kind as ColumnKind};

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Sink {
    /// `[a-z0-9-]`, unique among the sinks; names its instance (`sink:<name>`) and consumer group.
    pub name: String,
    /// Without the tenant prefix; each is in `stream.topics` or written by a source.
    pub topics: Vec<String>,
    pub kind: SinkKind,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    /// Parquet files under the platform's lake folder, `<tenant>/<topic>/date=YYYY-MM-DD/`.
    ParquetLake(Lake),
    /// JSON messages as documents of the tenant's coredms.
    Coredms {
        /// Absent: each topic's documents go to the collection named after the topic.
        collection: Option<String>,
    },
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Lake {
    /// Absent: inferred from the first messages, then kept.
    pub columns: Option<Columns>,
    /// The field whose timestamp dates each row; absent: the message's own timestamp.
    pub date_field: Option<String>,
    /// Messages gathered before files are written.
    pub flush_rows: u64,
    /// The longest a message waits before its file is written.
    #[serde(serialize_with = "crate::units::serialize_duration")]
    pub flush_interval: Duration,
    /// The most the sink's files may take; the sink stops (its messages waiting in the topic) before
    /// it would write past it.
    pub max_size: ByteSize,
}

const SINK_FIELDS: [&str; 9] =
    ["name", "kind", "topics", "columns", "date_field", "flush_rows", "flush_interval", "max_size", "collection"];

/// `known`: the tenant's topics (its stream's and its sources').
pub(super) fn parse_sinks(s: &Section<'_>, known: &HashSet<String>, errors: &mut Errors) -> Option<Vec<Sink>> {
    let mut names = HashSet::new();
    let sinks: Vec<Option<Sink>> = s
        .list("sinks", errors, false)
        .into_iter()
        .map(|(field, v)| parse_sink(v, &field, known, &mut names, errors))
        .collect();
    // One lake folder per topic: two lake sinks of one topic would write each other's files.
    let mut laked: HashSet<&str> = HashSet::new();
    for (i, sink) in sinks.iter().enumerate() {
        let Some(sink) = sink.as_ref().filter(|s| matches!(s.kind, SinkKind::ParquetLake(_))) else { continue };
        for t in &sink.topics {
            if !laked.insert(t) {
                errors.push(
                    format!("sinks[{i}].topics"),
                    format!("topic `{t}` already goes to another parquet_lake sink (one lake folder per topic)"),
                );
            }
        }
    }
    sinks.into_iter().collect()
}

fn parse_sink(
    v: &Value,
    field: &str,
    known: &HashSet<String>,
    names: &mut HashSet<String>,
    errors: &mut Errors,
) -> Option<Sink> {
    let s = Section::new(v, field, &SINK_FIELDS, errors)?;
    let name = s.required("name", errors, |v| {
        let n = super::connectors::connector_name(v)?;
        if !names.insert(n.clone()) {
            return Err(format!("sink `{n}` is declared twice"));
        }
        Ok(n)
    });
    let kind = s.required("kind", errors, |v| match string(v)?.as_str() {
        k @ ("parquet_lake" | "coredms") => Ok(k == "parquet_lake"),
        other => Err(format!("unknown sink kind `{other}` (parquet_lake, coredms)")),
    });
    let topics = parse_topics(&s, known, errors);
    let lake_only = ["columns", "date_field", "flush_rows", "flush_interval", "max_size"];
    let coredms_only = ["collection"];
    let misplaced = match kind {
        Some(true) => coredms_only.as_slice(),
        Some(false) => lake_only.as_slice(),
        None => &[],
    };
    for f in misplaced {
        if s.get(f).is_some() {
            errors.push(
                s.field(f),
                format!("not a field of a {} sink", if kind == Some(true) { "parquet_lake" } else { "coredms" }),
            );
        }
    }
    let kind = if kind? {
        SinkKind::ParquetLake(parse_lake(&s, errors)?)
    } else {
        let collection = match s.get("collection") {
            Some(_) => Some(s.required("collection", errors, collection_name)?),
            None => None,
        };
        SinkKind::Coredms { collection }
    };
    Some(Sink { name: name?, topics: topics?, kind })
}

fn parse_topics(s: &Section<'_>, known: &HashSet<String>, errors: &mut Errors) -> Option<Vec<String>> {
    let items = s.list("topics", errors, true);
    if items.is_empty() && s.get("topics").is_some() {
        errors.push(s.field("topics"), "at least one topic is needed to copy anything");
    }
    let topics: Vec<Option<String>> = items
        .into_iter()
        .map(|(field, v)| {
            let parsed = string(v).and_then(|t| if known.contains(&t) { Ok(t) } else { Err(super::unknown_topic(&t)) });
            parsed.map_err(|m| errors.push(field, m)).ok()
        })
        .collect();
    topics.into_iter().collect()
}

fn parse_lake(s: &Section<'_>, errors: &mut Errors) -> Option<Lake> {
    let columns = match s.get("columns") {
        Some(_) => parse_columns(s, errors).map(Some),
        None => Some(None),
    };
    let date_field = match s.get("date_field") {
        Some(_) => s.required("date_field", errors, string).map(Some),
        None => Some(None),
    };
    let flush_rows = s.optional("flush_rows", 100_000, errors, integer(1, 10_000_000));
    let flush_interval = s.optional("flush_interval", Duration::from_secs(10), errors, |v| {
        let d = duration(v)?;
        if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
            return Err("must be between 100ms and 1h".into());
        }
        Ok(d)
    });
    let max_size = s.optional("max_size", ByteSize(10 << 30), errors, size);
    Some(Lake {
        columns: columns?,
        date_field: date_field?,
        flush_rows: flush_rows?,
        flush_interval: flush_interval?,
        max_size: max_size?,
    })
}

fn parse_columns(s: &Section<'_>, errors: &mut Errors) -> Option<Columns> {
    let mut names = HashSet::new();
    let items = s.list("columns", errors, true);
    if items.is_empty() {
        errors.push(s.field("columns"), "at least one column (or leave `columns` out to infer them)");
    }
    let columns: Vec<Option<Column>> = items
        .into_iter()
        .map(|(field, v)| {
            let c = Section::new(v, &field, &["name", "type"], errors)?;
            let name = c.required("name", errors, |v| {
                let n = string(v)?;
                if n.len() > 128 {
                    return Err(format!("`{n}` is longer than 128 bytes"));
                }
                if !names.insert(n.clone()) {
                    return Err(format!("column `{n}` is listed twice"));
                }
                Ok(n)
            });
            let kind = c.required("type", errors, |v| {
                let t = string(v)?;
                ColumnKind::parse(&t).ok_or_else(|| {
                    format!("unknown column type `{t}` (string, int64, float64, boolean, timestamp, date, json)")
                })
            });
            Some(Column { name: name?, kind: kind? })
        })
        .collect();
    columns.into_iter().collect::<Option<Vec<_>>>().map(Columns)
}

/// A coredms collection: `[a-z0-9_]`, starting with a letter, up to 63.
fn collection_name(v: &Value) -> Result<String, String> {
    super::connectors::lowercase_name(v, 63, '_', "collection name")
}
