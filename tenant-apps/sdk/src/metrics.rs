//! The metrics report a stream app publishes every `MYSIMBDP_REPORT_INTERVAL_MS` to
//! `MYSIMBDP_METRICS_TOPIC`, keyed `<tenant>/<app>/<instance>`, signed with the instance's
//! `MYSIMBDP_REPORT_KEY` in the `mysimbdp-signature` header.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

pub use mysimbdp_contract::signature::{sign, HEADER as SIGNATURE_HEADER};
pub use mysimbdp_contract::Report;

/// Accumulates one reporting window.
#[derive(Debug)]
pub struct Window {
    start: DateTime<Utc>,
    messages: u64,
    bytes: u64,
    rejected: u64,
    ingestion_ms: Vec<f64>,
}

impl Default for Window {
    fn default() -> Self {
        Window { start: Utc::now(), messages: 0, bytes: 0, rejected: 0, ingestion_ms: Vec::new() }
    }
}

impl Window {
    pub fn record(&mut self, bytes: u64, ingestion_ms: f64) {
        self.messages += 1;
        self.bytes += bytes;
        self.ingestion_ms.push(ingestion_ms);
    }

    pub fn reject(&mut self) {
        self.rejected += 1;
    }

    /// Closes the window into a report and starts the next one.
    pub fn close(
        &mut self,
        tenant: &str,
        app: &str,
        instance: &str,
        partitions: Option<BTreeMap<String, Vec<i32>>>,
    ) -> Report {
        let end = Utc::now();
        let secs = ((end - self.start).num_milliseconds().max(1)) as f64 / 1000.0;
        let mut times = std::mem::take(&mut self.ingestion_ms);
        times.sort_by(f64::total_cmp);
        let avg = if times.is_empty() { 0.0 } else { times.iter().sum::<f64>() / times.len() as f64 };
        let p95 = times.get(((times.len() as f64 * 0.95).ceil() as usize).saturating_sub(1)).copied().unwrap_or(0.0);
        let report = Report {
            version: 1,
            tenant: tenant.into(),
            app: app.into(),
            instance: instance.into(),
            window_start: self.start,
            window_end: end,
            messages: self.messages,
            bytes: self.bytes,
            rejected: self.rejected,
            avg_ingestion_ms: avg,
            p95_ingestion_ms: p95,
            processing_rate: self.messages as f64 / secs,
            throughput_bytes_per_s: self.bytes as f64 / secs,
            partitions,
        };
        *self = Window { start: end, ..Default::default() };
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_becomes_the_contract_report() {
        let mut w = Window::default();
        for i in 1..=100 {
            w.record(200, i as f64);
        }
        w.reject();
        let r = w.close("zoo", "tortoise-stream", "i1", None);
        assert_eq!((r.messages, r.bytes, r.rejected), (100, 20_000, 1));
        assert_eq!(r.avg_ingestion_ms, 50.5);
        assert_eq!(r.p95_ingestion_ms, 95.0);
        let json = serde_json::to_value(&r).unwrap();
        for key in [
            "version",
            "tenant",
            "app",
            "instance",
            "window_start",
            "window_end",
            "processing_rate",
            "throughput_bytes_per_s",
        ] {
            assert!(json.get(key).is_some(), "{key}");
        }
    }
}
