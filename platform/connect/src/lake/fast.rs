//! A message read straight into its row's cells, by the known columns: no JSON map is built (the
//! allocation and hashing of one per message was most of the sink's time), and the common tokens of
//! a flat object (text without escapes, numbers, literals) are read here byte by byte: ~350 ns for
//! the benchmark's ~200-byte message, against ~480 through serde_json's visitor. Text with escapes,
//! nested values and numbers beyond `fraction`'s reach are handed to serde_json for that one token.
//! Anything this path does not take whole (a value of the wrong type, text that is not JSON, a
//! number it would have to round) is read again the ordinary way (`Rows::push`), which says
//! precisely what is wrong; the two agree on every row both take
//! (`the_fast_path_agrees_with_the_ordinary_one`).

use std::borrow::Cow;

use serde::de::Deserialize;

use super::columns::{timestamp_text_us, Cell, Column, Kind};

/// A message's cells, one per column in order (into `cells`, emptied first), and the microseconds of
/// its date field (if asked for and present); `None` if the message needs the ordinary path.
pub(super) fn row<'p>(
    payload: &'p [u8],
    columns: &[Column],
    date_field: Option<&str>,
    cells: &mut Vec<Cell<'p>>,
) -> Option<Option<i64>> {
    cells.clear();
    cells.resize_with(columns.len(), || Cell::Null);
    let mut date = None;
    let mut r = Reader { b: payload, at: 0 };
    r.space();
    r.eat(b'{')?;
    r.space();
    if r.peek() == Some(b'}') {
        r.at += 1;
    } else {
        // Messages of a topic mostly spell their fields in one order, the columns' (inferred ones
        // are in first-seen order): the column after the last one found is tried first.
        let mut next = 0;
        loop {
            let key = r.text()?;
            let k = key.bytes();
            r.space();
            r.eat(b':')?;
            r.space();
            let column = match columns.get(next) {
                Some(c) if c.name.as_bytes() == k => Some(next),
                _ => columns.iter().position(|c| c.name.as_bytes() == k),
            };
            let is_date = date_field.is_some_and(|f| f.as_bytes() == k);
            if column.is_none() && !is_date {
                // Matched no name, so not known to be text yet.
                key.into_str()?;
            }
            match column {
                Some(i) => {
                    next = i + 1;
                    let cell = r.value(columns[i].kind)?;
                    if is_date {
                        date = Some(micros_of(&cell)?);
                    }
                    cells[i] = cell;
                }
                None if is_date => match r.value(Kind::Timestamp)? {
                    Cell::Micros(us) => date = Some(us),
                    _ => return None,
                },
                None => r.skip()?,
            }
            r.space();
            match r.next()? {
                b',' => r.space(),
                b'}' => break,
                _ => return None,
            }
        }
    }
    r.space();
    (r.at == payload.len()).then_some(date)
}

/// An emptied row of cells, ready for the next message's (its allocation is kept: the same layout).
pub(super) fn recycle<'q>(mut cells: Vec<Cell<'_>>) -> Vec<Cell<'q>> {
    cells.clear();
    cells.into_iter().map(|_| Cell::Null).collect()
}

/// The date a date field's cell gives.
fn micros_of(cell: &Cell<'_>) -> Option<i64> {
    match cell {
        Cell::Micros(us) => Some(*us),
        Cell::Days(d) => Some(i64::from(*d) * 86_400_000_000),
        Cell::Text(s) => timestamp_text_us(s).ok(),
        Cell::Int(ms) => ms.checked_mul(1000),
        _ => None,
    }
}

/// A JSON string's text.
enum Text<'p> {
    /// Without escapes: its bytes between the quotes, not yet checked as UTF-8.
    Plain(&'p [u8]),
    /// With escapes: as serde_json read it.
    Escaped(Cow<'p, str>),
}

impl<'p> Text<'p> {
    fn bytes(&self) -> &[u8] {
        match self {
            Text::Plain(b) => b,
            Text::Escaped(s) => s.as_bytes(),
        }
    }

    fn into_str(self) -> Option<Cow<'p, str>> {
        match self {
            Text::Plain(b) => std::str::from_utf8(b).ok().map(Cow::Borrowed),
            Text::Escaped(s) => Some(s),
        }
    }
}

/// A number as JSON spells it.
enum Number {
    /// Whole, and within `i64` (not `-0`, which serde_json reads as a float).
    Whole(i64),
    /// With a fraction or an exponent: left unread, for `fraction` or serde_json.
    Fraction,
}

struct Reader<'p> {
    b: &'p [u8],
    at: usize,
}

impl<'p> Reader<'p> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.at += 1;
        Some(c)
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    fn space(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// The next token read by serde_json (text with escapes, a fraction, a nested value).
    fn serde<T: Deserialize<'p>>(&mut self) -> Option<T> {
        let mut tokens = serde_json::Deserializer::from_slice(&self.b[self.at..]).into_iter::<T>();
        let value = tokens.next()?.ok()?;
        self.at += tokens.byte_offset();
        Some(value)
    }

    /// A JSON string: the payload's own bytes when it has no escapes.
    fn text(&mut self) -> Option<Text<'p>> {
        if self.peek()? != b'"' {
            return None;
        }
        let rest = &self.b[self.at + 1..];
        let n = rest.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
        match rest[n] {
            b'"' => {
                self.at += n + 2;
                Some(Text::Plain(&rest[..n]))
            }
            b'\\' => self.serde().map(Text::Escaped),
            // A control character, which must be escaped: serde_json refuses it.
            _ => None,
        }
    }

    fn str(&mut self) -> Option<Cow<'p, str>> {
        self.text()?.into_str()
    }

    /// A number's token: whole numbers read here, the rest left to serde_json.
    fn number(&mut self) -> Option<Number> {
        let start = self.at;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.at += 1;
        }
        let digits = self.at;
        let mut magnitude: u64 = 0;
        while let Some(c @ b'0'..=b'9') = self.peek() {
            magnitude = magnitude.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
            self.at += 1;
        }
        let count = self.at - digits;
        // JSON: at least one digit, and no leading zero.
        if count == 0 || (count > 1 && self.b[digits] == b'0') {
            return None;
        }
        if let Some(b'.' | b'e' | b'E') = self.peek() {
            self.at = start;
            return Some(Number::Fraction);
        }
        let whole = match (negative, magnitude) {
            (true, 0) => return None,
            (true, m) => i64::try_from(-i128::from(m)).ok()?,
            (false, m) => i64::try_from(m).ok()?,
        };
        Some(Number::Whole(whole))
    }

    /// The next value as a cell of `kind`; `None` if it is not one (the ordinary path says why).
    fn value(&mut self, kind: Kind) -> Option<Cell<'p>> {
        if kind == Kind::Json {
            let v: serde_json::Value = self.serde()?;
            return Some(if v.is_null() { Cell::Null } else { Cell::Text(v.to_string().into()) });
        }
        let cell = match (self.peek()?, kind) {
            (b'n', _) => self.literal(b"null", Cell::Null)?,
            (b't', Kind::Boolean) => self.literal(b"true", Cell::Bool(true))?,
            (b'f', Kind::Boolean) => self.literal(b"false", Cell::Bool(false))?,
            (b'"', Kind::String) => Cell::Text(self.str()?),
            (b'"', Kind::Timestamp) => Cell::Micros(timestamp_text_us(&self.str()?).ok()?),
            (b'"', Kind::Date) => Cell::Days(days(timestamp_text_us(&self.str()?).ok()?)),
            (b'-' | b'0'..=b'9', _) => match (self.number()?, kind) {
                (Number::Whole(i), Kind::Int64) => Cell::Int(i),
                (Number::Whole(i), Kind::Float64) => Cell::Float(i as f64),
                (Number::Whole(ms), Kind::Timestamp) => Cell::Micros(ms.checked_mul(1000)?),
                (Number::Whole(ms), Kind::Date) => Cell::Days(days(ms.checked_mul(1000)?)),
                (Number::Fraction, Kind::Float64) => Cell::Float(self.fraction().or_else(|| self.serde())?),
                _ => return None,
            },
            _ => return None,
        };
        Some(cell)
    }

    /// A number with a fraction or an exponent, where one multiplication or division computes it
    /// exactly rounded (a significand under 2^53, a power of ten up to 10^22): serde_json computes
    /// these the same way, with or without its `float_roundtrip` feature, so the two paths agree.
    /// `None` (and nothing read) for the rest.
    fn fraction(&mut self) -> Option<f64> {
        const POW10: [f64; 23] = [
            1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18,
            1e19, 1e20, 1e21, 1e22,
        ];
        let mut at = self.at;
        let negative = self.b.get(at) == Some(&b'-');
        at += usize::from(negative);
        let (mut significand, mut exponent) = (0u64, 0i64);
        let digits = |at: &mut usize, significand: &mut u64, exponent: &mut i64, scale: i64| -> Option<usize> {
            let from = *at;
            while let Some(c @ b'0'..=b'9') = self.b.get(*at).copied() {
                *significand = significand.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
                *exponent += scale;
                *at += 1;
            }
            Some(*at - from)
        };
        // The whole part was checked by `number`.
        digits(&mut at, &mut significand, &mut exponent, 0)?;
        if self.b.get(at) == Some(&b'.') {
            at += 1;
            if digits(&mut at, &mut significand, &mut exponent, -1)? == 0 {
                return None;
            }
        }
        if let Some(b'e' | b'E') = self.b.get(at) {
            at += 1;
            let sign = match self.b.get(at) {
                Some(b'-') => -1,
                Some(b'+') => 1,
                _ => 0,
            };
            at += usize::from(sign != 0);
            let (mut power, mut none) = (0u64, 0i64);
            if digits(&mut at, &mut power, &mut none, 0)? == 0 || power > 1000 {
                return None;
            }
            exponent += if sign < 0 { -(power as i64) } else { power as i64 };
        }
        if significand >= 1 << 53 || exponent.unsigned_abs() > 22 {
            return None;
        }
        let f = significand as f64;
        let f = if exponent >= 0 { f * POW10[exponent as usize] } else { f / POW10[-exponent as usize] };
        self.at = at;
        Some(if negative { -f } else { f })
    }

    fn literal(&mut self, word: &[u8], cell: Cell<'p>) -> Option<Cell<'p>> {
        self.b[self.at..].starts_with(word).then(|| {
            self.at += word.len();
            cell
        })
    }

    /// Passes over the value of a field that is no column, checked as the ordinary path checks it:
    /// read into a `serde_json::Value` where this reader does not take it itself (serde's
    /// `IgnoredAny` lets through what a `Value` refuses: a number out of range, text that is not
    /// UTF-8 inside a nested value).
    fn skip(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.str().map(drop),
            b'n' => self.literal(b"null", Cell::Null).map(drop),
            b't' => self.literal(b"true", Cell::Null).map(drop),
            b'f' => self.literal(b"false", Cell::Null).map(drop),
            b'-' | b'0'..=b'9' => match self.number()? {
                Number::Whole(_) => Some(()),
                Number::Fraction => self.serde::<serde_json::Value>().map(drop),
            },
            _ => self.serde::<serde_json::Value>().map(drop),
        }
    }
}

/// Days since the epoch of a time in microseconds.
fn days(us: i64) -> i32 {
    us.div_euclid(86_400_000_000) as i32
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
    /// ordinary one refuses. `takes`: whether the fast path must take it (common shapes), may (edge
    /// cases it may leave to the ordinary path), or must not (the ordinary path refuses it).
    #[test]
    fn the_fast_path_agrees_with_the_ordinary_one() {
        #[derive(Debug, PartialEq)]
        enum Takes {
            Must,
            May,
            MustNot,
        }
        use Takes::*;
        let columns = columns();
        let messages = [
            (
                Must,
                r#"{"id": 1, "at": "2026-12-01T10:00:00+02:00", "v": 2, "name": "ab", "ok": true, "day": "2026-12-01", "tags": ["x", {"y": null}], "extra": {"deep": [1]}}"#,
            ),
            (Must, r#"{"id": 2, "at": 1764583200000, "v": 2.5, "name": null}"#),
            (Must, r#"{"name": "dup", "name": "last", "id": 3, "at": "2026-12-01 10:00:00"}"#),
            (Must, "{\"id\":-7,\"at\":\"2026-12-01\",\"v\":-1.25e-3,\"ok\":false}"),
            (Must, " \t{ \"at\" : 0 ,\r\n \"v\" : 1E+2 , \"skip\": -3.5e1, \"n\": null, \"t\": true } \n"),
            (Must, r#"{"at": 0, "v": 0.1, "w": 123456789.987654321, "x": 1e22, "y": 1e-22, "z": 9007199254740991.5}"#),
            (Must, r#"{"at": 0, "name": "é ü 漢字 🙂", "v": -0.0, "odd key é": [1, "\"", {"a": [{}]}]}"#),
            (Must, r#"{"at": 0, "name": "tab\tquote\" slash\/ \u00e9 \ud83d\ude42"}"#),
            (Must, r#"{"a\u0074": 86400000, "id": -9223372036854775808}"#),
            (May, r#"{"at": 0, "v": 1e23, "w": 12345678901234567890.5, "x": 9007199254740993.0, "y": 4.9e-324}"#),
            (May, r#"{"at": 0, "v": 18446744073709551615, "skip": 99999999999999999999999}"#),
            (May, r#"{"at": 0, "v": -9223372036854775809}"#),
            (MustNot, r#"{"id": "4", "at": 0}"#),
            (MustNot, r#"{"id": 5.5, "at": 0}"#),
            (MustNot, r#"{"id": 18446744073709551615, "at": 0}"#),
            (MustNot, r#"{"id": -0, "at": 0}"#),
            (MustNot, r#"{"id": 01, "at": 0}"#),
            (MustNot, r#"{"v": 1., "at": 0}"#),
            (MustNot, r#"{"v": .5, "at": 0}"#),
            (MustNot, r#"{"v": 1e, "at": 0}"#),
            (MustNot, r#"{"at": "yesterday"}"#),
            (MustNot, r#"{"at": 1.5}"#),
            (MustNot, r#"{"at": 0, "ok": "true"}"#),
            (MustNot, r#"{"at": 0, "skip": [1, 2,]}"#),
            (MustNot, r#"{"at": 0, "skip": 1e400}"#),
            (MustNot, r#"{"at": 0, "skip": [1, {"deep": -1e400}]}"#),
            (MustNot, r#"{"at": 0, "skip": nul}"#),
            (MustNot, r#"{"at": 0, "skip": truex}"#),
            (MustNot, "{\"at\": 0, \"name\": \"a\u{1}b\"}"),
            (MustNot, r#"{"at": 0,}"#),
            (MustNot, r#"{"at": 0 "id": 1}"#),
            (MustNot, r#"[1, 2]"#),
            (MustNot, r#"{"id": 1, "at": 0} trailing"#),
            (MustNot, r#"{"id": 1, "at": 0"#),
            (MustNot, r#"{"id": 1, "at": null}"#),
            (MustNot, r#"{"id": 1}"#),
        ];
        let mut bad_utf8 = br#"{"at": 0, "k"#.to_vec();
        bad_utf8.extend_from_slice(&[0xff, b'"', b':', b'1', b'}']);
        let mut bad_text = br#"{"at": 0, "name": ""#.to_vec();
        bad_text.extend_from_slice(&[0xc3, b'"', b'}']);
        let mut bad_nested = br#"{"at": 0, "skip": ["a\n"#.to_vec();
        bad_nested.extend_from_slice(&[0xff, b'"', b']', b'}']);
        let all = messages.iter().map(|(takes, m)| (takes, m.as_bytes().to_vec())).chain([
            (&MustNot, bad_utf8),
            (&MustNot, bad_text),
            (&MustNot, bad_nested),
        ]);
        for (takes, m) in all {
            let text = String::from_utf8_lossy(&m);
            let object: Result<serde_json::Map<String, serde_json::Value>, _> = serde_json::from_slice(&m);
            let mut ordinary = Rows::new(&columns);
            let took = object.map_err(|e| e.to_string()).and_then(|o| {
                super::super::day_of(&o, Some("at"), 0)?;
                ordinary.push(&columns, &o)
            });
            let mut cells = Vec::new();
            // With a date field, a row without a date is left to the ordinary path (which names it).
            match row(&m, &columns.0, Some("at"), &mut cells) {
                Some(Some(_)) => {
                    assert!(took.is_ok(), "{text}: the fast path took what the ordinary one refuses: {took:?}");
                    assert_ne!(*takes, MustNot, "{text}: expected the ordinary path to refuse it");
                    let mut fast = Rows::new(&columns);
                    fast.push_cells(cells);
                    assert_eq!(fast.finish().unwrap(), ordinary.finish().unwrap(), "{text}");
                }
                Some(None) | None => {
                    assert_ne!(*takes, Must, "{text}: the fast path left a common shape to the ordinary one");
                    assert!(*takes == May || took.is_err(), "{text}: the ordinary path took it: {took:?}");
                }
            }
        }
        let mut cells = Vec::new();
        let date = row(br#"{"id": 1, "at": "1970-01-02"}"#, &columns.0, Some("at"), &mut cells).unwrap();
        assert_eq!(date, Some(86_400_000_000));
        let date = row(br#"{"id": 1, "when": 86400000}"#, &columns.0, Some("when"), &mut cells).unwrap();
        assert_eq!(date, Some(86_400_000_000), "a date field that is no column");
        assert!(
            row(br#"{"id": 1, "when": null}"#, &columns.0, Some("when"), &mut cells).is_none(),
            "a null date: the ordinary path says so"
        );
    }
}
