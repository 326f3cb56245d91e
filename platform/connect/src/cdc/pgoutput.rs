//! The `pgoutput` plugin's messages, protocol version 1 (PostgreSQL's "Logical Replication Message
//! Formats"), decoded from the bytes logical decoding returns. Only what change data capture needs:
//! transactions, relations and row changes; origins, types and truncates are recognised and skipped.

use anyhow::{bail, Context};

/// One column of a relation, as the `Relation` message describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
    /// Part of the replica identity (the primary key, by default).
    pub key: bool,
}

/// A table as decoding last described it. Sent before the first change to the table in each
/// decoding session, and again after its definition changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub columns: Vec<Column>,
}

/// One column's value in a row image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Datum {
    Null,
    /// A TOASTed value the update did not change: PostgreSQL does not send it again.
    Unchanged,
    Text(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Begin {
        final_lsn: u64,
        commit_ts_us: i64,
        xid: u32,
    },
    Commit {
        commit_lsn: u64,
        end_lsn: u64,
        commit_ts_us: i64,
    },
    Relation(Relation),
    Insert {
        relation: u32,
        new: Vec<Datum>,
    },
    /// `old` is the key (`K`) or the whole old row (`O`, with replica identity full), when sent.
    Update {
        relation: u32,
        old: Option<Vec<Datum>>,
        new: Vec<Datum>,
    },
    Delete {
        relation: u32,
        old: Vec<Datum>,
    },
    /// Origins, types, truncates, logical messages: nothing for the change stream.
    Other(u8),
}

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
pub const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> anyhow::Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.bytes.len());
        let Some(end) = end else { bail!("message ends after {} bytes, {n} more expected", self.bytes.len()) };
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn u8(&mut self) -> anyhow::Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn i16(&mut self) -> anyhow::Result<i16> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into()?))
    }
    fn u32(&mut self) -> anyhow::Result<u32> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into()?))
    }
    fn i32(&mut self) -> anyhow::Result<i32> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into()?))
    }
    fn u64(&mut self) -> anyhow::Result<u64> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into()?))
    }
    fn i64(&mut self) -> anyhow::Result<i64> {
        Ok(i64::from_be_bytes(self.take(8)?.try_into()?))
    }
    /// A NUL-terminated string.
    fn cstr(&mut self) -> anyhow::Result<String> {
        let rest = &self.bytes[self.at..];
        let len = rest.iter().position(|b| *b == 0).context("a string without its terminating NUL")?;
        let s = std::str::from_utf8(&rest[..len]).context("a string that is not UTF-8")?.to_owned();
        self.at += len + 1;
        Ok(s)
    }

    fn tuple(&mut self) -> anyhow::Result<Vec<Datum>> {
        let n = self.i16()?;
        (0..n)
            .map(|_| match self.u8()? {
                b'n' => Ok(Datum::Null),
                b'u' => Ok(Datum::Unchanged),
                b't' => {
                    let len = usize::try_from(self.i32()?).context("a negative value length")?;
                    let text = std::str::from_utf8(self.take(len)?).context("a value that is not UTF-8")?;
                    Ok(Datum::Text(text.to_owned()))
                }
                other => bail!("unknown column kind `{}` (binary values are not asked for)", other as char),
            })
            .collect()
    }

    /// `K`/`O` and the row image after it, or `N` and the new row.
    fn tagged_tuple(&mut self, expected: &[u8]) -> anyhow::Result<(u8, Vec<Datum>)> {
        let tag = self.u8()?;
        if !expected.contains(&tag) {
            bail!("unexpected row image tag `{}`", tag as char);
        }
        Ok((tag, self.tuple()?))
    }
}

/// Decodes one message.
pub fn decode(bytes: &[u8]) -> anyhow::Result<Message> {
    let mut r = Reader { bytes, at: 0 };
    let kind = r.u8()?;
    let message = match kind {
        b'B' => Message::Begin { final_lsn: r.u64()?, commit_ts_us: r.i64()?, xid: r.u32()? },
        b'C' => {
            let _flags = r.u8()?;
            Message::Commit { commit_lsn: r.u64()?, end_lsn: r.u64()?, commit_ts_us: r.i64()? }
        }
        b'R' => {
            let oid = r.u32()?;
            let schema = r.cstr()?;
            let name = r.cstr()?;
            let _replica_identity = r.u8()?;
            let n = r.i16()?;
            let columns = (0..n)
                .map(|_| {
                    let flags = r.u8()?;
                    let name = r.cstr()?;
                    let type_oid = r.u32()?;
                    let _type_modifier = r.i32()?;
                    Ok(Column { name, type_oid, key: flags & 1 == 1 })
                })
                .collect::<anyhow::Result<_>>()?;
            Message::Relation(Relation { oid, schema, name, columns })
        }
        b'I' => {
            let relation = r.u32()?;
            let (_, new) = r.tagged_tuple(b"N")?;
            Message::Insert { relation, new }
        }
        b'U' => {
            let relation = r.u32()?;
            let (tag, first) = r.tagged_tuple(b"KON")?;
            if tag == b'N' {
                Message::Update { relation, old: None, new: first }
            } else {
                let (_, new) = r.tagged_tuple(b"N")?;
                Message::Update { relation, old: Some(first), new }
            }
        }
        b'D' => {
            let relation = r.u32()?;
            let (_, old) = r.tagged_tuple(b"KO")?;
            Message::Delete { relation, old }
        }
        other => Message::Other(other),
    };
    Ok(message)
}

/// `X/Y`, the way PostgreSQL writes a log position.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

pub fn parse_lsn(text: &str) -> anyhow::Result<u64> {
    let (hi, lo) = text.split_once('/').with_context(|| format!("`{text}` is not a log position"))?;
    let hi = u64::from_str_radix(hi, 16).with_context(|| format!("`{text}` is not a log position"))?;
    let lo = u64::from_str_radix(lo, 16).with_context(|| format!("`{text}` is not a log position"))?;
    Ok(hi << 32 | lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(v: &str) -> Vec<u8> {
        let mut out = vec![b't'];
        out.extend((v.len() as i32).to_be_bytes());
        out.extend(v.as_bytes());
        out
    }

    #[test]
    fn a_relation_and_its_row_changes_decode() {
        let mut rel = vec![b'R'];
        rel.extend(16384u32.to_be_bytes());
        rel.extend(b"public\0orders\0d");
        rel.extend(2i16.to_be_bytes());
        rel.extend(b"\x01id\0");
        rel.extend(23u32.to_be_bytes());
        rel.extend((-1i32).to_be_bytes());
        rel.extend(b"\x00note\0");
        rel.extend(25u32.to_be_bytes());
        rel.extend((-1i32).to_be_bytes());
        let Message::Relation(r) = decode(&rel).unwrap() else { panic!("not a relation") };
        assert_eq!((r.oid, r.schema.as_str(), r.name.as_str()), (16384, "public", "orders"));
        assert_eq!(r.columns[0], Column { name: "id".into(), type_oid: 23, key: true });
        assert!(!r.columns[1].key);

        let mut update = vec![b'U'];
        update.extend(16384u32.to_be_bytes());
        update.push(b'K');
        update.extend(2i16.to_be_bytes());
        update.extend(text("7"));
        update.push(b'n');
        update.push(b'N');
        update.extend(2i16.to_be_bytes());
        update.extend(text("8"));
        update.push(b'u');
        assert_eq!(
            decode(&update).unwrap(),
            Message::Update {
                relation: 16384,
                old: Some(vec![Datum::Text("7".into()), Datum::Null]),
                new: vec![Datum::Text("8".into()), Datum::Unchanged],
            }
        );
    }

    #[test]
    fn a_cut_message_is_an_error_not_a_panic() {
        let mut insert = vec![b'I'];
        insert.extend(1u32.to_be_bytes());
        insert.push(b'N');
        insert.extend(1i16.to_be_bytes());
        insert.push(b't');
        insert.extend(100i32.to_be_bytes());
        insert.extend(b"short");
        let e = decode(&insert).unwrap_err().to_string();
        assert!(e.contains("more expected"), "{e}");
        assert!(decode(b"").is_err());
        assert!(decode(b"R\0\0\0\x01public").is_err());
    }

    #[test]
    fn log_positions_read_and_write_as_postgresql_does() {
        assert_eq!(format_lsn(0x1_6B37_4D48), "1/6B374D48");
        assert_eq!(parse_lsn("1/6B374D48").unwrap(), 0x1_6B37_4D48);
        assert!(parse_lsn("16B374D48").is_err());
    }
}
