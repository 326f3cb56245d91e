//! A message read straight into its row's cells, by the known columns: no JSON map is built (the
//! allocation and hashing of one per message was most of the sink's time). Anything this path does
//! not take whole (a value of the wrong type, text that is not JSON) is read again the ordinary way
//! (`Rows::push`), which says precisely what is wrong; the two agree on every row both take.

use std::fmt;

use serde::de::{DeserializeSeed, Error as _, IgnoredAny, MapAccess, Visitor};
use serde::Deserializer;

use super::columns::{timestamp_text_us, Cell, Column, Kind};

/// A message's cells, one per column in order, and the microseconds of its date field (if asked
/// for and present); `None` if the message needs the ordinary path.
pub(super) fn row(payload: &[u8], columns: &[Column], date_field: Option<&str>) -> Option<(Vec<Cell>, Option<i64>)> {
    let mut cells: Vec<Cell> = columns.iter().map(|_| Cell::Null).collect();
    let mut date = None;
    let mut de = serde_json::Deserializer::from_slice(payload);
    Row { columns, date_field, cells: &mut cells, date: &mut date }.deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some((cells, date))
}

struct Row<'a> {
    columns: &'a [Column],
    date_field: Option<&'a str>,
    cells: &'a mut Vec<Cell>,
    date: &'a mut Option<i64>,
}

impl<'de> DeserializeSeed<'de> for Row<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Row<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some((column, is_date)) =
            map.next_key_seed(Key { columns: self.columns, date_field: self.date_field })?
        {
            match column {
                Some(i) => {
                    let cell = map.next_value_seed(Value(self.columns[i].kind))?;
                    if is_date {
                        *self.date = Some(micros_of(&cell).map_err(A::Error::custom)?);
                    }
                    self.cells[i] = cell;
                }
                None if is_date => match map.next_value_seed(Value(Kind::Timestamp))? {
                    Cell::Micros(us) => *self.date = Some(us),
                    _ => return Err(A::Error::custom("no date")),
                },
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// The date a date field's cell gives.
fn micros_of(cell: &Cell) -> Result<i64, String> {
    match cell {
        Cell::Micros(us) => Ok(*us),
        Cell::Days(d) => Ok(i64::from(*d) * 86_400_000_000),
        Cell::Text(s) => timestamp_text_us(s),
        Cell::Int(ms) => ms.checked_mul(1000).ok_or_else(|| "out of range".to_owned()),
        _ => Err("no date".into()),
    }
}

/// A key: the column it names (if any) and whether it is the date field.
struct Key<'a> {
    columns: &'a [Column],
    date_field: Option<&'a str>,
}

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = (Option<usize>, bool);
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for Key<'_> {
    type Value = (Option<usize>, bool);
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok((self.columns.iter().position(|c| c.name == key), self.date_field == Some(key)))
    }
}

/// A value read as its column's kind; a value of another type is an error (the ordinary path then
/// names it).
struct Value(Kind);

impl<'de> DeserializeSeed<'de> for Value {
    type Value = Cell;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cell, D::Error> {
        if self.0 == Kind::Json {
            let v = <serde_json::Value as serde::Deserialize>::deserialize(d)?;
            return Ok(if v.is_null() { Cell::Null } else { Cell::Text(v.to_string()) });
        }
        d.deserialize_any(self)
    }
}

impl Visitor<'_> for Value {
    type Value = Cell;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {:?}", self.0)
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Cell, E> {
        Ok(Cell::Null)
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Cell, E> {
        Ok(Cell::Null)
    }
    fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<Cell, E> {
        match self.0 {
            Kind::Boolean => Ok(Cell::Bool(b)),
            _ => Err(E::custom("type")),
        }
    }
    fn visit_i64<E: serde::de::Error>(self, i: i64) -> Result<Cell, E> {
        match self.0 {
            Kind::Int64 => Ok(Cell::Int(i)),
            Kind::Float64 => Ok(Cell::Float(i as f64)),
            Kind::Timestamp => i.checked_mul(1000).map(Cell::Micros).ok_or_else(|| E::custom("range")),
            Kind::Date => i
                .checked_mul(1000)
                .map(|us| Cell::Days(us.div_euclid(86_400_000_000) as i32))
                .ok_or_else(|| E::custom("range")),
            _ => Err(E::custom("type")),
        }
    }
    fn visit_u64<E: serde::de::Error>(self, u: u64) -> Result<Cell, E> {
        match i64::try_from(u) {
            Ok(i) => self.visit_i64(i),
            Err(_) if self.0 == Kind::Float64 => Ok(Cell::Float(u as f64)),
            Err(_) => Err(E::custom("range")),
        }
    }
    fn visit_f64<E: serde::de::Error>(self, f: f64) -> Result<Cell, E> {
        match self.0 {
            Kind::Float64 => Ok(Cell::Float(f)),
            _ => Err(E::custom("type")),
        }
    }
    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Cell, E> {
        match self.0 {
            Kind::String => Ok(Cell::Text(s.to_owned())),
            Kind::Timestamp => timestamp_text_us(s).map(Cell::Micros).map_err(E::custom),
            Kind::Date => {
                timestamp_text_us(s).map(|us| Cell::Days(us.div_euclid(86_400_000_000) as i32)).map_err(E::custom)
            }
            _ => Err(E::custom("type")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::columns::{Columns, Rows};
    use super::*;

    fn columns() -> Columns {
        let c = |name: &str, kind| Column { name: name.into(), kind };
        Columns(vec![
            c("id", Kind::Int64),
            c("at", Kind::Timestamp),
            c("v", Kind::Float64),
            c("name", Kind::String),
            c("ok", Kind::Boolean),
            c("day", Kind::Date),
            c("tags", Kind::Json),
        ])
    }

    /// Both paths give the same rows for what the fast one takes, and the fast one refuses what the
    /// ordinary one refuses.
    #[test]
    fn the_fast_path_agrees_with_the_ordinary_one() {
        let columns = columns();
        let messages = [
            r#"{"id": 1, "at": "2026-12-01T10:00:00+02:00", "v": 2, "name": "a\"b", "ok": true, "day": "2026-12-01", "tags": ["x", {"y": null}], "extra": {"deep": [1]}}"#,
            r#"{"id": 2, "at": 1764583200000, "v": 2.5, "name": null}"#,
            r#"{"name": "dup", "name": "last", "id": 3, "at": "2026-12-01 10:00:00"}"#,
            r#"{"id": "4"}"#,
            r#"{"id": 5.5}"#,
            r#"{"id": 18446744073709551615}"#,
            r#"{"at": "yesterday"}"#,
            r#"[1, 2]"#,
            r#"{"id": 1} trailing"#,
        ];
        for m in messages {
            let object: Result<serde_json::Map<String, serde_json::Value>, _> = serde_json::from_str(m);
            let mut ordinary = Rows::new(&columns);
            let took = object.map_err(|e| e.to_string()).and_then(|o| ordinary.push(&columns, &o));
            match row(m.as_bytes(), &columns.0, Some("at")) {
                Some((cells, _)) => {
                    assert!(took.is_ok(), "{m}: the fast path took what the ordinary one refuses: {took:?}");
                    let mut fast = Rows::new(&columns);
                    fast.push_cells(cells);
                    assert_eq!(fast.finish().unwrap(), ordinary.finish().unwrap(), "{m}");
                }
                None => assert!(took.is_err() || m.contains("\"at\": null") || !m.contains("\"at\""), "{m}: {took:?}"),
            }
        }
        let (_, date) = row(br#"{"id": 1, "at": "1970-01-02"}"#, &columns.0, Some("at")).unwrap();
        assert_eq!(date, Some(86_400_000_000));
        let (_, date) = row(br#"{"id": 1, "when": 86400000}"#, &columns.0, Some("when")).unwrap();
        assert_eq!(date, Some(86_400_000_000), "a date field that is no column");
        assert!(
            row(br#"{"id": 1, "when": null}"#, &columns.0, Some("when")).is_none(),
            "a null date: the ordinary path says so"
        );
    }
}
