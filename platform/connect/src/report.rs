//! The metrics report a connector sends, as a stream app does (DESIGN.md, "Metrics report"): every
//! interval, signed with its instance's key, what it wrote in the window and how long each message
//! took from its source (a commit, a snapshot's read) to the broker's acknowledgement. Run outside
//! the platform (no report topic in its environment) it sends none.
//!
//! Reports go out from a thread of their own: one pass of a connector can take longer than several
//! intervals (a snapshot's large table, a bulk load's one transaction), and a connector that stops
//! reporting is restarted by the monitor as silent, which would start that pass again and again.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mysimbdp_contract::env;
use mysimbdp_sdk::metrics::{sign, Window, SIGNATURE_HEADER};
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, ThreadedProducer};

/// Counts what the connector wrote; a thread sends the window's report every interval.
pub struct Reporter {
    window: Arc<Mutex<Window>>,
}

struct Sender {
    producer: ThreadedProducer<DefaultProducerContext>,
    topic: String,
    key: String,
    report_key: String,
    tenant: String,
    app: String,
    instance: String,
}

impl Reporter {
    /// The reporter the platform's environment asks for, if it does.
    pub fn from_env(brokers: &str) -> anyhow::Result<Option<Self>> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let (Some(topic), Some(report_key), Some(tenant), Some(app), Some(instance)) =
            (var(env::METRICS_TOPIC), var(env::REPORT_KEY), var(env::TENANT), var(env::APP), var(env::INSTANCE_ID))
        else {
            return Ok(None);
        };
        let interval = var(env::REPORT_INTERVAL_MS).and_then(|v| v.parse().ok()).unwrap_or(10_000u64);
        let interval = Duration::from_millis(interval.max(100));
        let producer = ClientConfig::new().set("bootstrap.servers", brokers).set("linger.ms", "5").create()?;
        let key = format!("{tenant}/{app}/{instance}");
        let sender = Sender { producer, topic, key, report_key, tenant, app, instance };
        let window = Arc::new(Mutex::new(Window::default()));
        let shared = window.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(interval);
            let report = {
                let mut w = shared.lock().expect("window lock");
                w.close(&sender.tenant, &sender.app, &sender.instance, None)
            };
            sender.send(&report);
        });
        Ok(Some(Reporter { window }))
    }

    /// Messages the broker acknowledged: the size of each and how long it took from its source
    /// (ms), counted under one lock.
    pub fn record_all(&self, messages: impl IntoIterator<Item = (usize, f64)>) {
        let mut w = self.window.lock().expect("window lock");
        messages.into_iter().for_each(|(bytes, ms)| w.record(bytes as u64, ms.max(0.0)));
    }

    /// Messages refused (a lake sink's dead letters).
    pub fn reject_all(&self, n: usize) {
        let mut w = self.window.lock().expect("window lock");
        (0..n).for_each(|_| w.reject());
    }
}

impl Sender {
    fn send(&self, report: &mysimbdp_contract::Report) {
        let payload = serde_json::to_vec(report).expect("a report serialises");
        let signature = sign(&self.report_key, &payload);
        let headers = OwnedHeaders::new().insert(Header { key: SIGNATURE_HEADER, value: Some(&signature) });
        let record = BaseRecord::to(&self.topic).key(&self.key).payload(&payload).headers(headers);
        if let Err((e, _)) = self.producer.send(record) {
            eprintln!("{}: sending the metrics report failed: {e}", self.app);
        }
    }
}
