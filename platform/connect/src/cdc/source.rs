//! The tenant's PostgreSQL, as change data capture uses it: the session's settings that fix values'
//! text forms, the tables' shapes, the publication, and the replication slots read through logical
//! decoding's SQL functions.

use anyhow::{bail, Context};
use postgres::{Client, NoTls};

use super::pgoutput::{format_lsn, parse_lsn, Column, Relation};

/// A captured table: its shape in the catalog and its primary key.
pub struct Table {
    pub relation: Relation,
    pub key: Vec<String>,
}

pub fn connect(url: &str) -> anyhow::Result<Client> {
    let mut client = Client::connect(url, NoTls).context("connecting to the source database")?;
    // Decoding writes values with the session's output settings; these fix the forms `values` reads.
    client.batch_execute(
        "set DateStyle = 'ISO, MDY'; set TimeZone = 'UTC'; set IntervalStyle = 'iso_8601'; \
         set extra_float_digits = 3; set application_name = 'mysimbdp-connect'",
    )?;
    Ok(client)
}

pub fn database_name(pg: &mut Client) -> anyhow::Result<String> {
    Ok(pg.query_one("select current_database()", &[])?.get(0))
}

/// The tables, as the catalog describes them; a table that is not there is named.
pub fn describe(pg: &mut Client, tables: &[(String, String)]) -> anyhow::Result<Vec<Table>> {
    let mut out = Vec::new();
    for (schema, name) in tables {
        let found = pg.query_opt(
            "select c.oid from pg_class c join pg_namespace n on n.oid = c.relnamespace \
             where n.nspname = $1 and c.relname = $2 and c.relkind in ('r', 'p')",
            &[schema, name],
        )?;
        let Some(row) = found else { bail!("table {schema}.{name} does not exist (or this login cannot see it)") };
        let oid: u32 = row.get(0);
        let columns = pg.query(
            "select a.attname::text, a.atttypid, coalesce(a.attnum = any(i.indkey), false) \
             from pg_attribute a left join pg_index i on i.indrelid = a.attrelid and i.indisprimary \
             where a.attrelid = $1 and a.attnum > 0 and not a.attisdropped order by a.attnum",
            &[&oid],
        )?;
        let columns: Vec<Column> =
            columns.iter().map(|r| Column { name: r.get(0), type_oid: r.get(1), key: r.get(2) }).collect();
        let key = columns.iter().filter(|c| c.key).map(|c| c.name.clone()).collect();
        out.push(Table { relation: Relation { oid, schema: schema.clone(), name: name.clone(), columns }, key });
    }
    Ok(out)
}

fn quoted(table: &Table) -> String {
    let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    format!("{}.{}", q(&table.relation.schema), q(&table.relation.name))
}

/// The publication holds exactly the source's tables (inserts, updates and deletes), made or
/// corrected; with `full`, updates and deletes carry the whole old row.
pub fn ensure_publication(pg: &mut Client, name: &str, tables: &[Table], full: bool) -> anyhow::Result<()> {
    let list: Vec<String> = tables.iter().map(quoted).collect();
    let list = list.join(", ");
    let exists = pg.query_opt("select 1 from pg_publication where pubname = $1", &[&name])?.is_some();
    let sql = if exists {
        format!("alter publication {name} set table {list}")
    } else {
        format!("create publication {name} for table {list} with (publish = 'insert, update, delete')")
    };
    pg.batch_execute(&sql).with_context(|| format!("setting up publication {name} (the login must own the tables)"))?;
    if full {
        for t in tables {
            pg.batch_execute(&format!("alter table {} replica identity full", quoted(t)))
                .with_context(|| format!("setting replica identity full on {}", quoted(t)))?;
        }
    }
    Ok(())
}

pub fn slot_exists(pg: &mut Client, slot: &str) -> anyhow::Result<bool> {
    Ok(pg.query_opt("select 1 from pg_replication_slots where slot_name = $1", &[&slot])?.is_some())
}

/// Makes a `pgoutput` slot; returns where it starts.
pub fn create_slot(pg: &mut Client, slot: &str, temporary: bool) -> anyhow::Result<u64> {
    let row = pg
        .query_one("select lsn::text from pg_create_logical_replication_slot($1, 'pgoutput', $2)", &[&slot, &temporary])
        .with_context(|| {
            format!(
                "creating replication slot {slot} (the login needs the REPLICATION attribute and wal_level=logical)"
            )
        })?;
    parse_lsn(row.get(0))
}

/// Moves the slot's confirmed position to `lsn`: PostgreSQL may then recycle the log before it.
pub fn advance(pg: &mut Client, slot: &str, lsn: u64) -> anyhow::Result<()> {
    pg.query_one("select pg_replication_slot_advance($1, $2::text::pg_lsn)", &[&slot, &format_lsn(lsn)])
        .with_context(|| format!("advancing replication slot {slot}"))?;
    Ok(())
}

/// One decoded message as logical decoding returns it: its position, its transaction, its bytes.
pub struct Change {
    pub lsn: u64,
    pub data: Vec<u8>,
}

/// The messages of the transactions after the slot's confirmed position, whole transactions of
/// about `max` messages, committed before `upto` if given. The slot does not move.
pub fn peek(
    pg: &mut Client,
    slot: &str,
    publication: &str,
    upto: Option<u64>,
    max: i32,
) -> anyhow::Result<Vec<Change>> {
    let upto = upto.map(format_lsn);
    let rows = pg.query(
        "select lsn::text, data from pg_logical_slot_peek_binary_changes($1, $2::text::pg_lsn, $3, \
         'proto_version', '1', 'publication_names', $4)",
        &[&slot, &upto, &max, &publication],
    )?;
    rows.iter().map(|r| Ok(Change { lsn: parse_lsn(r.get(0))?, data: r.get(1) })).collect()
}

/// The rows a transaction snapshot sees: `xmin:xmax:xip,...` as `pg_current_snapshot` writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    xmin: u32,
    xmax: u32,
    in_progress: Vec<u32>,
}

/// `a` comes before `b` in transaction ids' circular order.
fn precedes(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

impl Snapshot {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        // 64-bit ids with their epoch; decoding gives 32-bit ones, compared in circular order.
        let low = |s: &str| s.parse::<u64>().map(|x| x as u32).with_context(|| format!("`{text}` is not a snapshot"));
        let mut parts = text.split(':');
        let (Some(xmin), Some(xmax), Some(xip)) = (parts.next(), parts.next(), parts.next()) else {
            bail!("`{text}` is not a snapshot")
        };
        let in_progress = xip.split(',').filter(|s| !s.is_empty()).map(low).collect::<anyhow::Result<_>>()?;
        Ok(Snapshot { xmin: low(xmin)?, xmax: low(xmax)?, in_progress })
    }

    /// Whether a committed transaction's changes are in what the snapshot saw.
    pub fn sees(&self, xid: u32) -> bool {
        precedes(xid, self.xmin) || (precedes(xid, self.xmax) && !self.in_progress.contains(&xid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_sees_what_committed_before_it() {
        let s = Snapshot::parse("100:105:101,103").unwrap();
        assert!(s.sees(99) && s.sees(100) && s.sees(102) && s.sees(104));
        assert!(!s.sees(101) && !s.sees(103) && !s.sees(105) && !s.sees(200));
        // Across the 32-bit wrap: ids taken after the snapshot are not seen.
        let wrapped = Snapshot::parse("4294967290:4294967300:").unwrap();
        assert!(wrapped.sees(4294967295) && !wrapped.sees(4) && wrapped.sees(3));
        assert!(Snapshot::parse("100:105").is_err());
    }
}
