//! The zoo tenant's tortoise reading (seed 002's fields) as both of its apps store it: typed numbers,
//! `dev-id` renamed `device_id`, epoch `time` (seconds, or milliseconds when larger than 1e11) turned
//! into an RFC 3339 timestamp, acceleration nested as `{magnitude, x, y, z}` and the weather as
//! `environment`, and the reading's source (a file line, or a topic offset) kept for lineage. Readings
//! with missing or out-of-range values are rejected with the reason.

use chrono::{DateTime, SecondsFormat};
use serde::Serialize;

/// The measurements of one reading, as the sensor sent them.
#[derive(Clone, Copy, Debug)]
pub struct Measurements {
    pub time: f64,
    pub acceleration: f64,
    pub acceleration_x: i64,
    pub acceleration_y: i64,
    pub acceleration_z: i64,
    pub battery: i64,
    pub humidity: f64,
    pub pressure: f64,
    pub temperature: f64,
}

#[derive(Serialize)]
struct Reading<'a, S> {
    device_id: &'a str,
    ts: String,
    epoch_ms: i64,
    acceleration: Acceleration,
    battery_mv: i64,
    environment: Environment,
    source: S,
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

/// The stored document (JSON text) and its epoch milliseconds, or why the reading is rejected.
pub fn document<S: Serialize>(device_id: &str, m: &Measurements, source: S) -> Result<(String, i64), String> {
    let epoch_ms = if m.time > 1e11 { m.time as i64 } else { (m.time * 1000.0) as i64 };
    let ts = DateTime::from_timestamp_millis(epoch_ms)
        .ok_or("time is out of range")?
        .to_rfc3339_opts(SecondsFormat::Millis, true);
    if device_id.is_empty() {
        return Err("dev-id is empty".into());
    }
    if !(0.0..=100.0).contains(&m.humidity) {
        return Err(format!("humidity {} is outside 0..100", m.humidity));
    }
    if m.battery < 0 {
        return Err(format!("battery {} is negative", m.battery));
    }
    if !m.acceleration.is_finite() || !m.temperature.is_finite() || !m.pressure.is_finite() {
        return Err("a measurement is not a finite number".into());
    }
    let reading = Reading {
        device_id,
        ts,
        epoch_ms,
        acceleration: Acceleration {
            magnitude: m.acceleration,
            x: m.acceleration_x,
            y: m.acceleration_y,
            z: m.acceleration_z,
        },
        battery_mv: m.battery,
        environment: Environment { humidity: m.humidity, pressure: m.pressure, temperature: m.temperature },
        source,
    };
    Ok((serde_json::to_string(&reading).map_err(|e| e.to_string())?, epoch_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: Measurements = Measurements {
        time: 1_525_000_000.5,
        acceleration: 1.01,
        acceleration_x: -12,
        acceleration_y: 3,
        acceleration_z: 1003,
        battery: 2950,
        humidity: 40.5,
        pressure: 1012.3,
        temperature: 21.25,
    };

    #[test]
    fn a_reading_becomes_the_stored_document() {
        let (json, ms) = document("tortoise-1", &M, serde_json::json!({"line": 7})).unwrap();
        assert_eq!(ms, 1_525_000_000_500);
        let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(doc["ts"], "2018-04-29T11:06:40.500Z");
        assert_eq!(doc["acceleration"]["z"], 1003);
        assert_eq!(doc["environment"]["humidity"], 40.5);
        assert_eq!(doc["source"]["line"], 7);
    }

    #[test]
    fn out_of_range_readings_are_rejected_with_the_reason() {
        let wet = Measurements { humidity: 250.0, ..M };
        assert_eq!(document("d", &wet, ()).unwrap_err(), "humidity 250 is outside 0..100");
        let flat = Measurements { battery: -1, ..M };
        assert_eq!(document("d", &flat, ()).unwrap_err(), "battery -1 is negative");
        assert_eq!(document("", &M, ()).unwrap_err(), "dev-id is empty");
    }
}
