//! clientstreamingestapp for the zoo tenant: tortoise IoT readings as JSON messages on
//! `zoo.readings` (seed 002's fields: `time, acceleration, acceleration_x, acceleration_y,
//! acceleration_z, battery, humidity, pressure, temperature, dev-id`) into the `readings` collection.
//!
//! Wrangling is the batch app's (`tortoise-model`): numbers typed, `dev-id` renamed `device_id`,
//! epoch `time` turned into an RFC 3339 timestamp, acceleration and weather nested, out-of-range
//! readings rejected and counted. Each document keeps where it came from (topic, partition, offset)
//! and when the producer wrote it. The SDK's loop does the rest (batches, idempotent `_id` from
//! topic/partition/offset, commit after write, metrics reports, clean SIGTERM).
//!
//! `--delay-per-record <ms>` makes the app deliberately slow (a test of the monitor's loop).

use std::process::ExitCode;
use std::time::Duration;

use mysimbdp_sdk::{run_stream, Message, StreamOptions, Wrangled};
use serde::{Deserialize, Serialize};
use tortoise_model::Measurements;

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
struct Source<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    produced_at_ms: Option<i64>,
}

fn wrangle(m: &Message<'_>) -> Result<Wrangled, String> {
    let r: Input<'_> = serde_json::from_slice(m.payload).map_err(|e| format!("not a reading: {e}"))?;
    let measurements = Measurements {
        time: r.time,
        acceleration: r.acceleration,
        acceleration_x: r.acceleration_x,
        acceleration_y: r.acceleration_y,
        acceleration_z: r.acceleration_z,
        battery: r.battery,
        humidity: r.humidity,
        pressure: r.pressure,
        temperature: r.temperature,
    };
    let source = Source { topic: m.topic, partition: m.partition, offset: m.offset, produced_at_ms: m.timestamp_ms };
    Ok(Wrangled::new(tortoise_model::document(r.dev_id, &measurements, source)?.0))
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
