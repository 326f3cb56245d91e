//! Column values from `pgoutput`'s text form to the JSON that Debezium's PostgreSQL connector writes
//! with Kafka Connect's JSON converter, with the Connect schema of each type: a consumer written for
//! Debezium reads them unchanged. Debezium's defaults except two modes chosen for JSON readers:
//! `decimal.handling.mode=string` (numerics as exact strings rather than base64 bytes) and
//! `interval.handling.mode=string` (ISO 8601 durations).
//!
//! The decoding session runs with `DateStyle=ISO`, `TimeZone=UTC`, `IntervalStyle=iso_8601` and
//! `extra_float_digits=3` (see `super::source`), which fixes the text forms parsed here.

use anyhow::{anyhow, bail, Context};
use base64::Engine;
use chrono::{NaiveDate, NaiveDateTime, NaiveTime, SecondsFormat};
use serde_json::{json, Value};

/// A Connect schema type and, for logical types, its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Boolean,
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    String,
    Bytes,
    /// Days since the epoch (`io.debezium.time.Date`).
    Date,
    /// Microseconds since midnight (`io.debezium.time.MicroTime`).
    MicroTime,
    /// Microseconds since the epoch, no zone (`io.debezium.time.MicroTimestamp`).
    MicroTimestamp,
    /// ISO 8601 with the offset, in UTC (`io.debezium.time.ZonedTimestamp`).
    ZonedTimestamp,
    /// JSON text (`io.debezium.data.Json`).
    Json,
    Uuid,
    /// An exact decimal as text (`decimal.handling.mode=string`).
    Decimal,
    /// ISO 8601 duration text (`interval.handling.mode=string`).
    Interval,
    Array(Element),
}

/// An array's element kind (no arrays of arrays in Connect: PostgreSQL's nested arrays are lists of lists).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Element(pub &'static Kind);

impl Kind {
    /// The kind of a PostgreSQL type; unknown types travel as their text.
    pub fn of(type_oid: u32) -> Kind {
        match type_oid {
            16 => Kind::Boolean,
            17 => Kind::Bytes,
            20 => Kind::Int64,
            21 => Kind::Int16,
            23 | 26 => Kind::Int32,
            114 | 3802 => Kind::Json,
            700 => Kind::Float32,
            701 => Kind::Float64,
            1082 => Kind::Date,
            1083 => Kind::MicroTime,
            1114 => Kind::MicroTimestamp,
            1184 => Kind::ZonedTimestamp,
            1186 => Kind::Interval,
            1700 => Kind::Decimal,
            2950 => Kind::Uuid,
            1000 => Kind::Array(Element(&Kind::Boolean)),
            1005 => Kind::Array(Element(&Kind::Int16)),
            1007 => Kind::Array(Element(&Kind::Int32)),
            1016 => Kind::Array(Element(&Kind::Int64)),
            1021 => Kind::Array(Element(&Kind::Float32)),
            1022 => Kind::Array(Element(&Kind::Float64)),
            1231 => Kind::Array(Element(&Kind::Decimal)),
            1182 => Kind::Array(Element(&Kind::Date)),
            1115 => Kind::Array(Element(&Kind::MicroTimestamp)),
            1185 => Kind::Array(Element(&Kind::ZonedTimestamp)),
            2951 => Kind::Array(Element(&Kind::Uuid)),
            199 | 3807 => Kind::Array(Element(&Kind::Json)),
            // text[], varchar[], bpchar[] and every other array: arrays of text.
            1009 | 1014 | 1015 => Kind::Array(Element(&Kind::String)),
            _ => Kind::String,
        }
    }

    /// The Connect schema of a field of this kind.
    pub fn schema(self, field: Option<&str>, optional: bool) -> Value {
        let (ty, name) = match self {
            Kind::Boolean => ("boolean", None),
            Kind::Int16 => ("int16", None),
            Kind::Int32 => ("int32", None),
            Kind::Int64 => ("int64", None),
            Kind::Float32 => ("float", None),
            Kind::Float64 => ("double", None),
            Kind::String | Kind::Decimal => ("string", None),
            Kind::Bytes => ("bytes", None),
            Kind::Date => ("int32", Some("io.debezium.time.Date")),
            Kind::MicroTime => ("int64", Some("io.debezium.time.MicroTime")),
            Kind::MicroTimestamp => ("int64", Some("io.debezium.time.MicroTimestamp")),
            Kind::ZonedTimestamp => ("string", Some("io.debezium.time.ZonedTimestamp")),
            Kind::Json => ("string", Some("io.debezium.data.Json")),
            Kind::Uuid => ("string", Some("io.debezium.data.Uuid")),
            Kind::Interval => ("string", Some("io.debezium.time.Interval")),
            Kind::Array(_) => ("array", None),
        };
        let mut s = json!({"type": ty, "optional": optional});
        if let Some(name) = name {
            s["name"] = json!(name);
            s["version"] = json!(1);
        }
        if let Kind::Array(Element(item)) = self {
            s["items"] = item.schema(None, true);
        }
        if let Some(field) = field {
            s["field"] = json!(field);
        }
        s
    }

    /// The JSON value of `text`, PostgreSQL's text form of a value of this kind.
    pub fn convert(self, text: &str) -> anyhow::Result<Value> {
        let bad = || anyhow!("`{text}` is not a {self:?} value");
        Ok(match self {
            Kind::Boolean => match text {
                "t" => json!(true),
                "f" => json!(false),
                _ => return Err(bad()),
            },
            Kind::Int16 | Kind::Int32 | Kind::Int64 => json!(text.parse::<i64>().map_err(|_| bad())?),
            Kind::Float32 | Kind::Float64 => match text.parse::<f64>() {
                Ok(f) if f.is_finite() => json!(f),
                // JSON has no NaN or infinity: the text, as Connect's converter would fail to write them.
                Ok(_) => json!(text),
                Err(_) => return Err(bad()),
            },
            Kind::String | Kind::Decimal | Kind::Uuid | Kind::Interval | Kind::Json => json!(text),
            Kind::Bytes => {
                let hex = text.strip_prefix("\\x").ok_or_else(bad)?;
                let bytes = hex::decode(hex).map_err(|_| bad())?;
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            }
            Kind::Date => {
                let d = NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| bad())?;
                json!((d - NaiveDate::from_ymd_opt(1970, 1, 1).expect("the epoch")).num_days())
            }
            Kind::MicroTime => {
                let t = NaiveTime::parse_from_str(text, "%H:%M:%S%.f").map_err(|_| bad())?;
                json!((t - NaiveTime::MIN).num_microseconds().ok_or_else(bad)?)
            }
            Kind::MicroTimestamp => match text {
                "infinity" => json!(i64::MAX),
                "-infinity" => json!(i64::MIN),
                _ => {
                    let t = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f").map_err(|_| bad())?;
                    json!(t.and_utc().timestamp_micros())
                }
            },
            Kind::ZonedTimestamp => match text {
                "infinity" | "-infinity" => json!(text),
                _ => {
                    let t = chrono::DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z").map_err(|_| bad())?;
                    json!(t.to_utc().to_rfc3339_opts(SecondsFormat::AutoSi, true))
                }
            },
            Kind::Array(Element(item)) => {
                let parsed = parse_array(text).with_context(|| format!("`{text}` is not an array"))?;
                convert_elements(*item, parsed)?
            }
        })
    }
}

/// An array literal's structure before its elements are converted.
#[derive(Debug, PartialEq)]
enum Literal {
    Null,
    Item(String),
    List(Vec<Literal>),
}

fn convert_elements(item: Kind, literal: Literal) -> anyhow::Result<Value> {
    Ok(match literal {
        Literal::Null => Value::Null,
        Literal::Item(text) => item.convert(&text)?,
        Literal::List(items) => {
            Value::Array(items.into_iter().map(|l| convert_elements(item, l)).collect::<anyhow::Result<_>>()?)
        }
    })
}

/// PostgreSQL's array literal: `{a,"b c",NULL,{1,2}}`, with `\` escapes inside quotes.
fn parse_array(text: &str) -> anyhow::Result<Literal> {
    // A lower bound other than 1 is written first: `[0:1]={a,b}`.
    let text = match text.split_once("]={") {
        Some((_, rest)) if text.starts_with('[') => &text[text.len() - rest.len() - 1..],
        _ => text,
    };
    let chars: Vec<char> = text.chars().collect();
    let mut at = 0;
    let list = parse_list(&chars, &mut at)?;
    if at != chars.len() {
        bail!("text after the closing brace");
    }
    Ok(list)
}

fn parse_list(chars: &[char], at: &mut usize) -> anyhow::Result<Literal> {
    if chars.get(*at) != Some(&'{') {
        bail!("expected `{{` at {}", *at);
    }
    *at += 1;
    let mut items = Vec::new();
    if chars.get(*at) == Some(&'}') {
        *at += 1;
        return Ok(Literal::List(items));
    }
    loop {
        let item = match chars.get(*at) {
            Some('{') => parse_list(chars, at)?,
            Some('"') => {
                *at += 1;
                let mut s = String::new();
                loop {
                    match chars.get(*at) {
                        Some('\\') => {
                            s.push(*chars.get(*at + 1).context("an escape at the end")?);
                            *at += 2;
                        }
                        Some('"') => {
                            *at += 1;
                            break;
                        }
                        Some(c) => {
                            s.push(*c);
                            *at += 1;
                        }
                        None => bail!("an unterminated quoted element"),
                    }
                }
                Literal::Item(s)
            }
            Some(_) => {
                let start = *at;
                while chars.get(*at).is_some_and(|c| *c != ',' && *c != '}') {
                    *at += 1;
                }
                let s: String = chars[start..*at].iter().collect();
                if s.eq_ignore_ascii_case("NULL") {
                    Literal::Null
                } else {
                    Literal::Item(s)
                }
            }
            None => bail!("an unterminated array"),
        };
        items.push(item);
        match chars.get(*at) {
            Some(',') => *at += 1,
            Some('}') => {
                *at += 1;
                return Ok(Literal::List(items));
            }
            _ => bail!("expected `,` or `}}` at {}", *at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_convert_as_debezium_writes_them() {
        let c = |oid, text| Kind::of(oid).convert(text).unwrap();
        assert_eq!(c(16, "t"), json!(true));
        assert_eq!(c(20, "-9007199254740993"), json!(-9007199254740993i64));
        assert_eq!(c(701, "2.5"), json!(2.5));
        assert_eq!(c(701, "NaN"), json!("NaN"));
        assert_eq!(c(1700, "12345678901234567890.000001"), json!("12345678901234567890.000001"));
        assert_eq!(c(1082, "2026-12-01"), json!(20788));
        assert_eq!(c(1114, "2026-12-01 10:00:00.5"), json!(1_796_119_200_500_000i64));
        assert_eq!(c(1184, "2026-12-01 10:00:00.25+00"), json!("2026-12-01T10:00:00.250Z"));
        assert_eq!(c(1083, "00:00:01.5"), json!(1_500_000));
        assert_eq!(c(17, "\\x00ff"), json!("AP8="));
        assert_eq!(c(3802, r#"{"a": [1, 2]}"#), json!(r#"{"a": [1, 2]}"#));
        assert_eq!(c(1009, r#"{a,"b c",NULL,"q\"uote"}"#), json!(["a", "b c", null, "q\"uote"]));
        assert_eq!(c(1007, "{{1,2},{3,4}}"), json!([[1, 2], [3, 4]]));
        assert_eq!(c(1009, "{}"), json!([]));
        assert_eq!(c(1007, "[0:1]={7,8}"), json!([7, 8]));
    }

    #[test]
    fn a_value_that_is_not_its_type_names_itself() {
        let e = Kind::of(23).convert("seven").unwrap_err().to_string();
        assert_eq!(e, "`seven` is not a Int32 value");
        assert!(Kind::of(1009).convert("{a,b").is_err());
        assert!(Kind::of(1009).convert("{a}b").is_err());
    }

    #[test]
    fn schemas_name_debeziums_logical_types() {
        assert_eq!(
            Kind::of(1114).schema(Some("at"), true),
            json!({"type": "int64", "optional": true, "name": "io.debezium.time.MicroTimestamp", "version": 1, "field": "at"})
        );
        assert_eq!(
            Kind::of(1009).schema(Some("tags"), true),
            json!({"type": "array", "optional": true, "items": {"type": "string", "optional": true}, "field": "tags"})
        );
    }
}
