//! clientbatchingestapp for the food tenant: food-delivery order events as JSON lines (seed 004's
//! schema: `order_id, customer_name, restaurant_name, item, amount, order_status, created_at`) into the
//! `orders` collection.
//!
//! Wrangling: the food tenant's order model (`orders-model`: the seed's cleaning rules, `amount_cents`,
//! lower-cased status, nested parties, UTC times and a `date`). Lines that are not JSON objects are
//! rejected and counted. `_id = <order_id>:<status>`: one document per status change of an order, and a
//! re-run leaves one copy.

use std::io::BufRead;
use std::process::ExitCode;

use anyhow::Context;
use mysimbdp_sdk::{BatchEnv, Batcher, CoreDms, Doc, JobResult, PipelinedWriter, Source};

const COLLECTION: &str = "orders";
const BATCH: usize = 5_000;

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

fn wrangle(line: &str, file: &str, line_no: u64) -> Result<Doc, String> {
    let (id, json) = orders_model::document(line.as_bytes(), Source { file, line: line_no })?;
    Ok(Doc { id, json })
}
