//! clientbatchingestapp for the zoo tenant: tortoise IoT readings as CSV (seed 002's schema:
//! `time,readable_time,acceleration,acceleration_x,acceleration_y,acceleration_z,battery,humidity,
//! pressure,temperature,dev-id`) into the `readings` collection.
//!
//! Wrangling: columns found by header name in any order, then the zoo's reading model
//! (`tortoise-model`: typed numbers, `device_id`, RFC 3339 time, nested acceleration and environment);
//! rows with missing or out-of-range values rejected and counted. Streams the file in constant memory and
//! writes batches of 10,000 with `_id = <device>:<time>`, so a re-run leaves one copy. Files of 64 MiB
//! or more are written over two connections (two server cores).

use std::process::ExitCode;

use anyhow::{bail, Context};
use mysimbdp_sdk::{BatchEnv, Batcher, CoreDms, Doc, JobResult, PipelinedWriter, Source};
use tortoise_model::Measurements;

const COLLECTION: &str = "readings";
const BATCH: usize = 10_000;
/// Files at least this big are written over two connections.
const LARGE_FILE: u64 = 64 << 20;
const COLUMNS: [&str; 10] = [
    "time",
    "acceleration",
    "acceleration_x",
    "acceleration_y",
    "acceleration_z",
    "battery",
    "humidity",
    "pressure",
    "temperature",
    "dev-id",
];

fn main() -> ExitCode {
    mysimbdp_sdk::run_batch("tortoise-csv", ingest)
}

fn ingest(env: &BatchEnv, coredms: CoreDms) -> anyhow::Result<JobResult> {
    let file = std::fs::File::open(&env.input_file).with_context(|| format!("opening {}", env.input_file.display()))?;
    let mut reader =
        csv::ReaderBuilder::new().has_headers(true).flexible(true).buffer_capacity(1 << 20).from_reader(file);
    let header = reader.byte_headers().context("reading the header")?.clone();
    let mut index = [0usize; COLUMNS.len()];
    let mut missing = Vec::new();
    for (i, col) in COLUMNS.iter().enumerate() {
        match header.iter().position(|h| h == col.as_bytes()) {
            Some(p) => index[i] = p,
            None => missing.push(*col),
        }
    }
    if !missing.is_empty() {
        bail!("the header lacks required columns: {}", missing.join(", "));
    }

    // PostgreSQL runs one backend process per connection; a large file gets a second connection so
    // the load uses a second server core. Small files keep one: a connection costs more than it saves.
    let size = std::fs::metadata(&env.input_file)?.len();
    let writers = if size >= LARGE_FILE { 2 } else { 1 };
    let mut connections = vec![coredms];
    for _ in 1..writers {
        connections.push(CoreDms::connect(&env.coredms_url, &env.coredms_db)?);
    }
    let mut batcher = Batcher::new("tortoise-csv", PipelinedWriter::start_many(connections, COLLECTION)?, BATCH);
    let file_name = env.input_name();
    let mut record = csv::ByteRecord::new();
    while reader.read_byte_record(&mut record).context("reading CSV")? {
        let line = record.position().map_or(0, |p| p.line());
        batcher.add(line, wrangle(&record, &index, &file_name, line))?;
    }
    let (stats, rejected) = batcher.finish()?;
    let bytes_read = reader.position().byte();
    Ok(JobResult {
        records_ingested: stats.sent,
        records_rejected: rejected,
        bytes_read,
        message: format!(
            "{} readings ({} new, {} already present), {rejected} rows rejected",
            stats.sent,
            stats.inserted,
            stats.sent - stats.inserted
        ),
    })
}

fn field<'r>(record: &'r csv::ByteRecord, i: usize, name: &str) -> Result<&'r str, String> {
    let raw = record.get(i).ok_or_else(|| format!("missing {name}"))?;
    let s = std::str::from_utf8(raw).map_err(|_| format!("{name} is not UTF-8"))?.trim();
    if s.is_empty() {
        Err(format!("{name} is empty"))
    } else {
        Ok(s)
    }
}

fn number<T: std::str::FromStr>(record: &csv::ByteRecord, i: usize, name: &str) -> Result<T, String> {
    let s = field(record, i, name)?;
    s.parse().map_err(|_| format!("{name} `{s}` is not a number"))
}

fn wrangle(record: &csv::ByteRecord, ix: &[usize; COLUMNS.len()], file: &str, line: u64) -> Result<Doc, String> {
    let m = Measurements {
        time: number(record, ix[0], "time")?,
        acceleration: number(record, ix[1], "acceleration")?,
        acceleration_x: number(record, ix[2], "acceleration_x")?,
        acceleration_y: number(record, ix[3], "acceleration_y")?,
        acceleration_z: number(record, ix[4], "acceleration_z")?,
        battery: number(record, ix[5], "battery")?,
        humidity: number(record, ix[6], "humidity")?,
        pressure: number(record, ix[7], "pressure")?,
        temperature: number(record, ix[8], "temperature")?,
    };
    let device_id = field(record, ix[9], "dev-id")?;
    let (json, epoch_ms) = tortoise_model::document(device_id, &m, Source { file, line })?;
    Ok(Doc { id: format!("{device_id}:{epoch_ms}"), json })
}
