//! clientstreamingestapp for the zoo tenant: tortoise IoT readings as JSON messages on
//! `zoo.readings` (seed 002's fields: `time, acceleration, acceleration_x, acceleration_y,
//! acceleration_z, battery, humidity, pressure, temperature, dev-id`) into the `readings` collection.
//!
//! Wrangling is the batch app's (`tortoise-csv`): numbers typed, `dev-id` renamed `device_id`,
//! epoch `time` turned into an RFC 3339 timestamp, acceleration and weather nested, out-of-range
//! readings rejected and counted. Each document keeps where it came from (topic, partition, offset)
//! and when the producer wrote it. The SDK's loop does the rest (batches, idempotent `_id` from
//! topic/partition/offset, commit after write, metrics reports, clean SIGTERM).
//!
//! `--delay-per-record <ms>` makes the app deliberately slow (a test of the monitor's loop).

use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat};
use mysimbdp_sdk::{run_stream, Message, StreamOptions};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Input<'a> {
    time: f64,
    acceleration: f64,
    acceleration_x: i64,
    acceleration_y: i64,
    acceleration_z: i64,
    battery: i64,
    humidity: f64,
    pressure: f64,
    temperature: f64,
    #[serde(rename = "dev-id", borrow)]
    dev_id: &'a str,
}

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

#[derive(Serialize)]
struct Source<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    produced_at_ms: Option<i64>,
}

fn wrangle(m: &Message<'_>) -> Result<String, String> {
    let r: Input<'_> = serde_json::from_slice(m.payload).map_err(|e| format!("not a reading: {e}"))?;
    let epoch_ms = if r.time > 1e11 { r.time as i64 } else { (r.time * 1000.0) as i64 };
    let ts = DateTime::from_timestamp_millis(epoch_ms)
        .ok_or("time is out of range")?
        .to_rfc3339_opts(SecondsFormat::Millis, true);
    if !(0.0..=100.0).contains(&r.humidity) {
        return Err(format!("humidity {} is outside 0..100", r.humidity));
    }
    if r.battery < 0 {
        return Err(format!("battery {} is negative", r.battery));
    }
    if r.dev_id.is_empty() {
        return Err("dev-id is empty".into());
    }
    let reading = Reading {
        device_id: r.dev_id,
        ts,
        epoch_ms,
        acceleration: Acceleration {
            magnitude: r.acceleration,
            x: r.acceleration_x,
            y: r.acceleration_y,
            z: r.acceleration_z,
        },
        battery_mv: r.battery,
        environment: Environment { humidity: r.humidity, pressure: r.pressure, temperature: r.temperature },
        source: Source { topic: m.topic, partition: m.partition, offset: m.offset, produced_at_ms: m.timestamp_ms },
    };
    serde_json::to_string(&reading).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let mut delay = Duration::ZERO;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next().and_then(|v| v.parse::<u64>().ok())) {
            ("--delay-per-record", Some(ms)) => delay = Duration::from_millis(ms),
            _ => {
                eprintln!("tortoise-stream: usage: tortoise-stream [--delay-per-record <ms>]");
                return ExitCode::from(2);
            }
        }
    }
    run_stream("tortoise-stream", StreamOptions::default(), move |m| {
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        wrangle(m)
    })
}
