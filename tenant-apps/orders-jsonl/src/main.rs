//! clientbatchingestapp for the food tenant: food-delivery order events as JSON lines (seed 004's
//! schema: `order_id, customer_name, restaurant_name, item, amount, order_status, created_at`) into the
//! `orders` collection.
//!
//! Wrangling: the seed's cleaning rules (drop events without `order_id` or with a non-positive
//! `amount`), `amount` turned into integer `amount_cents`, the status lower-cased, customer and
//! restaurant nested, `created_at` normalised to UTC RFC 3339 plus a `date` for partitioning. Lines that
//! are not JSON objects are rejected and counted. `_id = <order_id>:<status>`: one document per status
//! change of an order, and a re-run leaves one copy.

use std::io::BufRead;
use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use mysimbdp_sdk::{BatchEnv, Batcher, CoreDms, Doc, JobResult, PipelinedWriter, Source};
use serde::{Deserialize, Serialize};

const COLLECTION: &str = "orders";
const BATCH: usize = 5_000;

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
struct Order<'a> {
    order_id: i64,
    status: String,
    customer: Party<'a>,
    restaurant: Party<'a>,
    item: Option<&'a str>,
    amount_cents: i64,
    created_at: String,
    date: String,
    source: Source<'a>,
}

#[derive(Serialize)]
struct Party<'a> {
    name: Option<&'a str>,
}

fn main() -> ExitCode {
    mysimbdp_sdk::run_batch("orders-jsonl", ingest)
}

fn ingest(env: &BatchEnv, coredms: CoreDms) -> anyhow::Result<JobResult> {
    let file = std::fs::File::open(&env.input_file).with_context(|| format!("opening {}", env.input_file.display()))?;
    let mut batcher = Batcher::new("orders-jsonl", PipelinedWriter::start(coredms, COLLECTION)?, BATCH);
    let file_name = env.input_name();
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let (mut line_no, mut bytes_read) = (0u64, 0u64);
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).context("reading input")?;
        if n == 0 {
            break;
        }
        bytes_read += n as u64;
        line_no += 1;
        if line.trim().is_empty() {
            continue;
        }
        batcher.add(line_no, wrangle(&line, &file_name, line_no))?;
    }
    let (stats, rejected) = batcher.finish()?;
    Ok(JobResult {
        records_ingested: stats.sent,
        records_rejected: rejected,
        bytes_read,
        message: format!("{} order events ({} new), {rejected} lines rejected", stats.sent, stats.inserted),
    })
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
        .map(|t| t.and_utc())
        .map_err(|_| format!("created_at `{s}` is not a timestamp"))
}

fn wrangle(line: &str, file: &str, line_no: u64) -> Result<Doc, String> {
    let e: OrderEvent = serde_json::from_str(line).map_err(|err| format!("not an order event: {err}"))?;
    let order_id = e.order_id.ok_or("order_id is missing")?;
    let amount = e.amount.ok_or("amount is missing")?;
    if !(amount > 0.0 && amount.is_finite()) {
        return Err(format!("amount {amount} is not positive"));
    }
    let status = e.order_status.as_deref().unwrap_or("unknown").trim().to_ascii_lowercase();
    let created = parse_time(e.created_at.as_deref().ok_or("created_at is missing")?)?;
    let order = Order {
        order_id,
        status: status.clone(),
        customer: Party { name: e.customer_name.as_deref() },
        restaurant: Party { name: e.restaurant_name.as_deref() },
        item: e.item.as_deref(),
        amount_cents: (amount * 100.0).round() as i64,
        created_at: created.to_rfc3339_opts(SecondsFormat::Secs, true),
        date: created.format("%Y-%m-%d").to_string(),
        source: Source { file, line: line_no },
    };
    Ok(Doc { id: format!("{order_id}:{status}"), json: serde_json::to_string(&order).map_err(|err| err.to_string())? })
}
