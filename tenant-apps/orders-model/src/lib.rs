//! The food tenant's order event (seed 004's schema: `order_id, customer_name, restaurant_name, item,
//! amount, order_status, created_at`) as both of its apps store it: the seed's cleaning rules (no
//! `order_id`, or a non-positive `amount`: rejected), `amount` as integer `amount_cents`, the status
//! lower-cased, customer and restaurant nested, `created_at` in UTC RFC 3339 plus a `date` for
//! partitioning, and the event's source kept for lineage. The document's key is `<order_id>:<status>`:
//! one document per status change of an order, whatever delivers it twice.

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct OrderEvent {
    order_id: Option<i64>,
    customer_name: Option<String>,
    restaurant_name: Option<String>,
    item: Option<String>,
    amount: Option<f64>,
    order_status: Option<String>,
    created_at: Option<String>,
}

#[derive(Serialize)]
struct Order<'a, S> {
    order_id: i64,
    status: &'a str,
    customer: Party<'a>,
    restaurant: Party<'a>,
    item: Option<&'a str>,
    amount_cents: i64,
    created_at: String,
    date: String,
    source: S,
}

#[derive(Serialize)]
struct Party<'a> {
    name: Option<&'a str>,
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
        .map(|t| t.and_utc())
        .map_err(|_| format!("created_at `{s}` is not a timestamp"))
}

/// The document's key (`<order_id>:<status>`) and JSON text for one event, or why it is rejected.
pub fn document<S: Serialize>(event: &[u8], source: S) -> Result<(String, String), String> {
    let e: OrderEvent = serde_json::from_slice(event).map_err(|err| format!("not an order event: {err}"))?;
    let order_id = e.order_id.ok_or("order_id is missing")?;
    let amount = e.amount.ok_or("amount is missing")?;
    if !(amount > 0.0 && amount.is_finite()) {
        return Err(format!("amount {amount} is not positive"));
    }
    let status = e.order_status.as_deref().unwrap_or("unknown").trim().to_ascii_lowercase();
    let created = parse_time(e.created_at.as_deref().ok_or("created_at is missing")?)?;
    let order = Order {
        order_id,
        status: &status,
        customer: Party { name: e.customer_name.as_deref() },
        restaurant: Party { name: e.restaurant_name.as_deref() },
        item: e.item.as_deref(),
        amount_cents: (amount * 100.0).round() as i64,
        created_at: created.to_rfc3339_opts(SecondsFormat::Secs, true),
        date: created.format("%Y-%m-%d").to_string(),
        source,
    };
    let json = serde_json::to_string(&order).map_err(|err| err.to_string())?;
    Ok((format!("{order_id}:{status}"), json))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_becomes_the_stored_order() {
        let e = br#"{"order_id": 7, "customer_name": "Ann", "restaurant_name": "Pho", "item": "soup",
                     "amount": 12.5, "order_status": " Delivered ", "created_at": "2026-11-21 10:00:00"}"#;
        let (id, json) = document(e, ()).unwrap();
        assert_eq!(id, "7:delivered");
        let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!((doc["amount_cents"].as_i64(), doc["date"].as_str()), (Some(1250), Some("2026-11-21")));
        assert_eq!(doc["created_at"], "2026-11-21T10:00:00Z");
    }

    #[test]
    fn the_seeds_cleaning_rules_reject_with_the_reason() {
        assert_eq!(
            document(br#"{"amount": 1, "created_at": "2026-01-01T00:00:00Z"}"#, ()).unwrap_err(),
            "order_id is missing"
        );
        let free = br#"{"order_id": 1, "amount": 0, "created_at": "2026-01-01T00:00:00Z"}"#;
        assert_eq!(document(free, ()).unwrap_err(), "amount 0 is not positive");
        assert!(document(b"[1, 2]", ()).unwrap_err().starts_with("not an order event"));
    }
}
