//! The bank tenant's fraud-detection agents (seeds 000 and 001): each a stream app in its own
//! consumer group reading Debezium's change events of the `transactions` table
//! (`bank.cdc.public.transactions`), each writing its alerts to `bank.alerts`, keyed
//! `<agent>:<transaction id>` so an alert raised twice (a run killed before its commit) is one alert
//! to a keyed reader such as the agreement's coredms sink.

use serde::Serialize;
use serde_json::Value;

/// The topic alerts go to (in the agreement's `stream.topics`).
pub const ALERTS: &str = "alerts";

/// One transaction as the agents see it.
#[derive(Clone, Debug, PartialEq)]
pub struct Transaction {
    pub id: i64,
    pub account_id: i64,
    pub amount: f64,
    pub country: String,
    /// Milliseconds since the epoch.
    pub at_ms: i64,
}

/// What an agent raises.
#[derive(Debug, Serialize)]
pub struct Alert<'a> {
    pub agent: &'a str,
    pub transaction_id: i64,
    pub account_id: i64,
    pub amount: f64,
    pub reason: String,
}

impl Alert<'_> {
    pub fn output(&self) -> Result<mysimbdp_sdk::Output, String> {
        mysimbdp_sdk::Output::json(ALERTS, Some(format!("{}:{}", self.agent, self.transaction_id)), self)
    }
}

/// The new transaction of a change event: `None` for a delete, its tombstone, or an update (a
/// transaction judged once, when it was made or first read).
pub fn transaction(payload: &[u8]) -> Result<Option<Transaction>, String> {
    if payload.is_empty() {
        return Ok(None);
    }
    let event: Value = serde_json::from_slice(payload).map_err(|e| format!("not a JSON change event: {e}"))?;
    let event = event.get("payload").filter(|_| event.get("schema").is_some()).unwrap_or(&event);
    match event.get("op").and_then(Value::as_str) {
        Some("c" | "r") => {}
        Some(_) => return Ok(None),
        None => return Err("no `op`: not a Debezium change event".into()),
    }
    let after = event.get("after").ok_or("a new row without `after`")?;
    let int =
        |f: &str| after.get(f).and_then(Value::as_i64).ok_or_else(|| format!("`{f}` is missing or not a whole number"));
    let amount = match after.get("amount") {
        Some(Value::String(s)) => s.parse().map_err(|_| format!("amount `{s}` is not a number"))?,
        Some(Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
        _ => return Err("amount is missing".into()),
    };
    let country = after.get("country").and_then(Value::as_str).ok_or("country is missing")?.trim().to_owned();
    // A `timestamptz` is ISO text in UTC.
    let at = after.get("created_at").and_then(Value::as_str).ok_or("created_at is missing")?;
    let at_ms =
        chrono::DateTime::parse_from_rfc3339(at).map_err(|e| format!("created_at `{at}`: {e}"))?.timestamp_millis();
    Ok(Some(Transaction { id: int("id")?, account_id: int("account_id")?, amount, country, at_ms }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_transaction_is_read_from_its_event_and_other_events_pass() {
        let event = |op: &str| {
            serde_json::json!({"op": op, "after": {"id": 3, "account_id": 9, "amount": "7300.00", "merchant": "m",
                "country": "SE", "created_at": "2026-12-02T10:00:00.5Z"}})
            .to_string()
        };
        let t = transaction(event("c").as_bytes()).unwrap().unwrap();
        assert_eq!(
            t,
            Transaction { id: 3, account_id: 9, amount: 7300.0, country: "SE".into(), at_ms: 1_796_205_600_500 }
        );
        assert_eq!(transaction(event("r").as_bytes()).unwrap(), Some(t));
        assert_eq!(transaction(event("u").as_bytes()).unwrap(), None);
        assert_eq!(transaction(b"").unwrap(), None);
        assert!(transaction(b"{\"after\": {}}").unwrap_err().contains("no `op`"));
        assert!(transaction(b"[1").unwrap_err().starts_with("not a JSON change event"));
    }
}
