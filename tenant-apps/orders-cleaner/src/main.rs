//! clientstreamingestapp of the food tenant's CDC pipeline (seed 004): reads Debezium's change
//! events of the `orders` table (`food.cdc.public.orders`), drops what seed 004's cleaning drops
//! (a null `order_id`, a null or non-positive `amount`; each counted as rejected with its reason),
//! and writes each order as clean JSON to `food.orders-clean`, keyed by `order_id`, with
//! `created_at` as RFC 3339 text for the lake's dates. Deletes and their tombstones write nothing.

use std::process::ExitCode;

use mysimbdp_sdk::{run_transform, Output, TransformOptions};
use serde_json::{json, Value};

/// The topic the clean orders go to (in the agreement's `stream.topics`).
const CLEAN: &str = "orders-clean";

fn main() -> ExitCode {
    run_transform("orders-cleaner", TransformOptions::default(), |m| {
        if m.payload.is_empty() {
            return Ok(Vec::new()); // a delete's tombstone
        }
        let event: Value = serde_json::from_slice(m.payload).map_err(|e| format!("not a JSON change event: {e}"))?;
        Ok(clean(&event)?.into_iter().collect())
    })
}

/// The clean order of one change event; `None` for a delete.
fn clean(event: &Value) -> Result<Option<Output>, String> {
    // With `schemas: true` the event is `{"schema": ..., "payload": ...}`.
    let event = event.get("payload").filter(|_| event.get("schema").is_some()).unwrap_or(event);
    let op = event.get("op").and_then(Value::as_str).ok_or("no `op`: not a Debezium change event")?;
    if op == "d" {
        return Ok(None);
    }
    let after = event.get("after").filter(|a| a.is_object()).ok_or_else(|| format!("op `{op}` without `after`"))?;
    let order_id = after.get("order_id").and_then(Value::as_i64).ok_or("order_id is null")?;
    let amount = match after.get("amount") {
        // Debezium writes numerics as exact strings (`decimal.handling.mode=string`).
        Some(Value::String(s)) => s.parse::<f64>().map_err(|_| format!("amount `{s}` is not a number"))?,
        Some(Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
        _ => return Err(format!("order {order_id}: amount is null")),
    };
    if amount.is_nan() || amount <= 0.0 {
        return Err(format!("order {order_id}: amount {amount} is not positive"));
    }
    let created_at = created_at(after.get("created_at")).map_err(|e| format!("order {order_id}: {e}"))?;
    let text = |f: &str| after.get(f).cloned().unwrap_or(Value::Null);
    let order = json!({
        "order_id": order_id,
        "customer_name": text("customer_name"),
        "restaurant_name": text("restaurant_name"),
        "item": text("item"),
        "amount": amount,
        "order_status": text("order_status"),
        "created_at": created_at,
    });
    Output::json(CLEAN, Some(order_id.to_string()), &order).map(Some)
}

/// A `timestamp` as Debezium writes it (microseconds since the epoch), or a `timestamptz` (ISO
/// text), as RFC 3339 text in UTC.
fn created_at(v: Option<&Value>) -> Result<String, String> {
    match v {
        Some(Value::Number(n)) => {
            let micros = n.as_i64().ok_or("created_at is not whole microseconds")?;
            let at = chrono::DateTime::from_timestamp_micros(micros).ok_or("created_at is out of range")?;
            Ok(at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        }
        Some(Value::String(s)) => Ok(s.clone()),
        _ => Err("created_at is null".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(op: &str, after: Value) -> Value {
        json!({"before": null, "after": after, "source": {"lsn": 1}, "op": op, "ts_ms": 0})
    }

    #[test]
    fn a_good_order_comes_out_clean_and_keyed_and_a_bad_one_is_refused_with_its_reason() {
        let good = json!({"order_id": 7, "customer_name": "Ann", "restaurant_name": "R", "item": "Soup",
            "amount": "12.50", "order_status": "PLACED", "created_at": 1_764_633_600_000_000_i64});
        let out = clean(&event("c", good.clone())).unwrap().unwrap();
        assert_eq!((out.topic.as_str(), out.key.as_deref()), (CLEAN, Some(&b"7"[..])));
        let v: Value = serde_json::from_slice(&out.value).unwrap();
        assert_eq!(v["amount"], 12.5);
        assert_eq!(v["created_at"], "2025-12-02T00:00:00.000000Z");
        // The same with Connect's schema part.
        let wrapped = json!({"schema": {}, "payload": event("u", good.clone())});
        assert_eq!(clean(&wrapped).unwrap().unwrap(), out);
        assert_eq!(clean(&event("d", Value::Null)).unwrap(), None);

        let with = |field: &str, v: Value| {
            let mut o = good.clone();
            o[field] = v;
            clean(&event("c", o)).unwrap_err()
        };
        assert_eq!(with("amount", json!("-3.00")), "order 7: amount -3 is not positive");
        assert_eq!(with("amount", json!("0.00")), "order 7: amount 0 is not positive");
        assert_eq!(with("amount", Value::Null), "order 7: amount is null");
        assert_eq!(with("order_id", Value::Null), "order_id is null");
        assert_eq!(with("created_at", Value::Null), "order 7: created_at is null");
        assert_eq!(clean(&json!({"after": {}})).unwrap_err(), "no `op`: not a Debezium change event");
    }
}
