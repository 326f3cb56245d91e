//! clientbatchingestapp for the zoo tenant: tortoise IoT readings as CSV (seed 002's schema:
//! `time,readable_time,acceleration,acceleration_x,acceleration_y,acceleration_z,battery,humidity,
//! pressure,temperature,dev-id`) into the `readings` collection.
//!
//! Wrangling: columns found by header name in any order; numbers typed; `dev-id` renamed
//! `device_id`; epoch `time` (seconds, or milliseconds when larger than 1e11) turned into an RFC 3339
//! timestamp; acceleration nested as `{magnitude, x, y, z}` and the weather as `environment`; rows
//! with missing or out-of-range values rejected and counted. Streams the file in constant memory and
//! writes batches of 10,000 with `_id = <device>:<time>`, so a re-run leaves one copy. Files of 64 MiB
//! or more are written over two connections (two server cores).

use std::process::ExitCode;

use anyhow::{bail, Context};
use chrono::{DateTime, SecondsFormat};
use mysimbdp_sdk::{BatchEnv, Batcher, CoreDms, Doc, JobResult, PipelinedWriter, Source};
use serde::Serialize;

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

#[derive(Serialize)]
struct Reading<'a> {
    device_id: &'a str,
    ts: String,
    epoch_ms: i64,
    acceleration: Acceleration,
    battery_mv: i64,
    environment: Environment,
    source: Source<'a>,
}

#[derive(Serialize)]
struct Acceleration {
    magnitude: f64,
    x: i64,
    y: i64,
    z: i64,
}

#[derive(Serialize)]
struct Environment {
    humidity: f64,
    pressure: f64,
    temperature: f64,
}

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
    let time: f64 = number(record, ix[0], "time")?;
    let epoch_ms = if time > 1e11 { time as i64 } else { (time * 1000.0) as i64 };
    let ts = DateTime::from_timestamp_millis(epoch_ms)
        .ok_or("time is out of range")?
        .to_rfc3339_opts(SecondsFormat::Millis, true);
    let magnitude: f64 = number(record, ix[1], "acceleration")?;
    let x: i64 = number(record, ix[2], "acceleration_x")?;
    let y: i64 = number(record, ix[3], "acceleration_y")?;
    let z: i64 = number(record, ix[4], "acceleration_z")?;
    let battery_mv: i64 = number(record, ix[5], "battery")?;
    let humidity: f64 = number(record, ix[6], "humidity")?;
    let pressure: f64 = number(record, ix[7], "pressure")?;
    let temperature: f64 = number(record, ix[8], "temperature")?;
    let device_id = field(record, ix[9], "dev-id")?;
    if !(0.0..=100.0).contains(&humidity) {
        return Err(format!("humidity {humidity} is outside 0..100"));
    }
    if battery_mv < 0 {
        return Err(format!("battery {battery_mv} is negative"));
    }
    if !magnitude.is_finite() || !temperature.is_finite() || !pressure.is_finite() {
        return Err("a measurement is not a finite number".into());
    }
    let reading = Reading {
        device_id,
        ts,
        epoch_ms,
        acceleration: Acceleration { magnitude, x, y, z },
        battery_mv,
        environment: Environment { humidity, pressure, temperature },
        source: Source { file, line },
    };
    Ok(Doc { id: format!("{device_id}:{epoch_ms}"), json: serde_json::to_string(&reading).map_err(|e| e.to_string())? })
}
