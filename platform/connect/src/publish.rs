//! Writes to the tenant's topics and waits for the broker to acknowledge every message: a
//! connector moves its source's position only past what the broker holds.

use std::time::Duration;

use anyhow::Context;
use futures::future::join_all;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

pub struct Publisher {
    producer: FutureProducer,
}

/// One message to write.
pub struct Outgoing {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    /// `None`: a tombstone.
    pub value: Option<Vec<u8>>,
    /// When its source happened (a commit, a snapshot's read), in ms since the epoch: reports say
    /// how long each message took from there to the broker's acknowledgement.
    pub at_ms: i64,
    /// Header names and values (a dead letter's reason and origin).
    pub headers: Vec<(&'static str, String)>,
}

impl Publisher {
    pub fn new(brokers: &str) -> anyhow::Result<Self> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("acks", "all")
            // Retries never reorder a partition's messages: a change never overtakes an earlier one.
            .set("max.in.flight.requests.per.connection", "1")
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "1000000")
            .set("message.timeout.ms", "60000")
            .create()
            .context("creating the Kafka producer")?;
        Ok(Publisher { producer })
    }

    /// Writes `batch` and returns once the broker acknowledged every message, or with the first error.
    pub fn send_all(&self, batch: &[Outgoing]) -> anyhow::Result<()> {
        let mut pending = Vec::with_capacity(batch.len());
        for m in batch {
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&m.topic);
            if let Some(k) = &m.key {
                record = record.key(k.as_slice());
            }
            if let Some(v) = &m.value {
                record = record.payload(v.as_slice());
            }
            if !m.headers.is_empty() {
                let headers = m.headers.iter().fold(OwnedHeaders::new(), |h, (key, value)| {
                    h.insert(Header { key, value: Some(value.as_bytes()) })
                });
                record = record.headers(headers);
            }
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err((e, _)) => return Err(e).with_context(|| format!("writing to {}", m.topic)),
                }
            }
        }
        for (outcome, m) in futures::executor::block_on(join_all(pending)).into_iter().zip(batch) {
            match outcome {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => {
                    return Err(e).with_context(|| format!("the broker refused a message to {}", m.topic))
                }
                Err(_) => anyhow::bail!("the producer went away before {} acknowledged", m.topic),
            }
        }
        Ok(())
    }
}
