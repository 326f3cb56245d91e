//! Debezium's change event (`before`, `after`, `source`, `op`, `ts_ms`) and key, as its PostgreSQL
//! connector writes them through Kafka Connect's JSON converter, with the schema part
//! (`schemas.enable=true`) or without it.

use serde_json::{json, Map, Value};

use super::pgoutput::{Datum, Relation};
use super::values::Kind;

/// What Debezium writes for a TOASTed column an update left unchanged (`unavailable.value.placeholder`).
pub const UNAVAILABLE: &str = "__debezium_unavailable_value";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// A row read by the initial snapshot.
    Read,
    Create,
    Update,
    Delete,
}

impl Op {
    pub fn code(self) -> &'static str {
        match self {
            Op::Read => "r",
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
        }
    }
}

/// Where a change comes from: Debezium's `source` block.
#[derive(Clone, Debug)]
pub struct Source<'a> {
    /// The topic prefix (Debezium's `topic.prefix`, its logical server name).
    pub name: &'a str,
    pub db: &'a str,
    /// `true`, `last` (the snapshot's last row) or `false`.
    pub snapshot: &'a str,
    pub commit_ts_ms: i64,
    pub xid: Option<u32>,
    pub lsn: u64,
    /// The last commit's position before this change, for Debezium's `sequence`.
    pub last_commit_lsn: Option<u64>,
}

/// A table as the events describe it: its columns, and which make its key.
pub struct Shape<'a> {
    pub relation: &'a Relation,
    /// The primary key's columns, by name; empty: the table has none, and events have no key.
    pub key: &'a [String],
    pub topic: &'a str,
}

impl Shape<'_> {
    fn row(&self, datums: &[Datum]) -> anyhow::Result<Value> {
        let mut row = Map::new();
        for (column, datum) in self.relation.columns.iter().zip(datums) {
            let value = match datum {
                Datum::Null => Value::Null,
                Datum::Unchanged => json!(UNAVAILABLE),
                Datum::Text(text) => Kind::of(column.type_oid).convert(text).map_err(|e| {
                    anyhow::anyhow!("{}.{}.{}: {e}", self.relation.schema, self.relation.name, column.name)
                })?,
            };
            row.insert(column.name.clone(), value);
        }
        Ok(Value::Object(row))
    }

    fn row_schema(&self, name: &str, field: Option<&str>) -> Value {
        let fields: Vec<Value> = self
            .relation
            .columns
            .iter()
            .filter(|c| field.is_some() || self.key.contains(&c.name))
            .map(|c| Kind::of(c.type_oid).schema(Some(&c.name), !self.key.contains(&c.name)))
            .collect();
        let mut s = json!({"type": "struct", "fields": fields, "optional": field.is_some(), "name": name});
        if let Some(field) = field {
            s["field"] = json!(field);
        }
        s
    }

    /// The event's key: the primary key's columns of `image`, or none.
    pub fn key(&self, image: &Value, schemas: bool) -> Option<Value> {
        if self.key.is_empty() {
            return None;
        }
        let payload: Map<String, Value> = self.key.iter().map(|k| (k.clone(), image[k].clone())).collect();
        let payload = Value::Object(payload);
        Some(if schemas {
            json!({"schema": self.row_schema(&format!("{}.Key", self.topic), None), "payload": payload})
        } else {
            payload
        })
    }

    /// The change event, and the row image its key comes from.
    pub fn event(
        &self,
        op: Op,
        before: Option<&[Datum]>,
        after: Option<&[Datum]>,
        source: &Source<'_>,
        now_ms: i64,
        schemas: bool,
    ) -> anyhow::Result<(Value, Value)> {
        let before = before.map(|d| self.row(d)).transpose()?;
        let after = after.map(|d| self.row(d)).transpose()?;
        let image = after.clone().or_else(|| before.clone()).unwrap_or(Value::Null);
        let source_block = json!({
            "version": concat!("mysimbdp-", env!("CARGO_PKG_VERSION")),
            "connector": "postgresql",
            "name": source.name,
            "ts_ms": source.commit_ts_ms,
            "snapshot": source.snapshot,
            "db": source.db,
            "sequence": json!([source.last_commit_lsn.map(|l| l.to_string()), source.lsn.to_string()]).to_string(),
            "schema": self.relation.schema,
            "table": self.relation.name,
            "txId": source.xid,
            "lsn": source.lsn,
            "xmin": null,
        });
        let payload = json!({
            "before": before,
            "after": after,
            "source": source_block,
            "op": op.code(),
            "ts_ms": now_ms,
            "transaction": null,
        });
        let value = if schemas { json!({"schema": self.envelope_schema(), "payload": payload}) } else { payload };
        Ok((value, image))
    }

    fn envelope_schema(&self) -> Value {
        let value = format!("{}.Value", self.topic);
        json!({
            "type": "struct",
            "fields": [
                self.row_schema(&value, Some("before")),
                self.row_schema(&value, Some("after")),
                source_schema(),
                {"type": "string", "optional": false, "field": "op"},
                {"type": "int64", "optional": true, "field": "ts_ms"},
                {"type": "struct", "optional": true, "field": "transaction", "name": "event.block", "version": 1, "fields": [
                    {"type": "string", "optional": false, "field": "id"},
                    {"type": "int64", "optional": false, "field": "total_order"},
                    {"type": "int64", "optional": false, "field": "data_collection_order"},
                ]},
            ],
            "optional": false,
            "name": format!("{}.Envelope", self.topic),
            "version": 1,
        })
    }
}

fn source_schema() -> Value {
    let field = |ty: &str, name: &str, optional: bool| json!({"type": ty, "optional": optional, "field": name});
    json!({
        "type": "struct",
        "fields": [
            field("string", "version", false),
            field("string", "connector", false),
            field("string", "name", false),
            field("int64", "ts_ms", false),
            {"type": "string", "optional": true, "name": "io.debezium.data.Enum", "version": 1,
             "parameters": {"allowed": "true,last,false,incremental"}, "default": "false", "field": "snapshot"},
            field("string", "db", false),
            field("string", "sequence", true),
            field("string", "schema", false),
            field("string", "table", false),
            field("int64", "txId", true),
            field("int64", "lsn", true),
            field("int64", "xmin", true),
        ],
        "optional": false,
        "name": "io.debezium.connector.postgresql.Source",
        "field": "source",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdc::pgoutput::Column;

    fn orders() -> Relation {
        let col = |name: &str, type_oid, key| Column { name: name.into(), type_oid, key };
        Relation {
            oid: 1,
            schema: "public".into(),
            name: "orders".into(),
            columns: vec![col("id", 23, true), col("amount", 1700, false), col("note", 25, false)],
        }
    }

    fn source() -> Source<'static> {
        Source {
            name: "food.cdc",
            db: "shop",
            snapshot: "false",
            commit_ts_ms: 1_700_000_000_000,
            xid: Some(771),
            lsn: 0x1_0000_0010,
            last_commit_lsn: Some(0x1_0000_0000),
        }
    }

    #[test]
    fn an_update_is_debeziums_envelope() {
        let rel = orders();
        let key = ["id".to_owned()];
        let shape = Shape { relation: &rel, key: &key, topic: "food.cdc.public.orders" };
        let new = [Datum::Text("7".into()), Datum::Text("12.50".into()), Datum::Unchanged];
        let (value, image) = shape.event(Op::Update, None, Some(&new), &source(), 5, false).unwrap();
        assert_eq!(value["op"], "u");
        assert_eq!(value["before"], Value::Null);
        assert_eq!(value["after"], json!({"id": 7, "amount": "12.50", "note": UNAVAILABLE}));
        assert_eq!(value["source"]["lsn"], json!(0x1_0000_0010u64));
        assert_eq!(value["source"]["txId"], json!(771));
        assert_eq!(value["source"]["table"], "orders");
        assert_eq!(value["source"]["sequence"], json!(r#"["4294967296","4294967312"]"#));
        assert_eq!(shape.key(&image, false), Some(json!({"id": 7})));
        let keyed = shape.key(&image, true).unwrap();
        assert_eq!(keyed["payload"], json!({"id": 7}));
        assert_eq!(keyed["schema"]["fields"][0], json!({"type": "int32", "optional": false, "field": "id"}));
    }

    #[test]
    fn with_schemas_the_payload_is_the_same_event() {
        let rel = orders();
        let key = ["id".to_owned()];
        let shape = Shape { relation: &rel, key: &key, topic: "t" };
        let old = [Datum::Text("7".into()), Datum::Null, Datum::Null];
        let (plain, _) = shape.event(Op::Delete, Some(&old), None, &source(), 5, false).unwrap();
        let (with, _) = shape.event(Op::Delete, Some(&old), None, &source(), 5, true).unwrap();
        assert_eq!(with["payload"], plain);
        assert_eq!(with["schema"]["name"], "t.Envelope");
        assert_eq!(
            with["schema"]["fields"][1]["fields"][1],
            json!({"type": "string", "optional": true, "field": "amount"})
        );
    }

    #[test]
    fn a_value_that_does_not_parse_names_its_column() {
        let rel = orders();
        let shape = Shape { relation: &rel, key: &[], topic: "t" };
        let bad = [Datum::Text("x".into()), Datum::Null, Datum::Null];
        let e = shape.event(Op::Create, None, Some(&bad), &source(), 5, false).unwrap_err().to_string();
        assert_eq!(e, "public.orders.id: `x` is not a Int32 value");
        assert_eq!(shape.key(&json!({"id": 1}), false), None);
    }
}
