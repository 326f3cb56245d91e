//! Consumer lag measured at the broker, not taken from the app: for the app's consumer group, the
//! messages between its committed offsets and the end of each partition of its topics.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(5);

/// One client per consumer group (the group is part of a client's configuration); none of them
/// joins its group, they only ask for its committed offsets.
#[derive(Default)]
pub struct Lag {
    brokers: String,
    clients: HashMap<String, BaseConsumer>,
}

impl Lag {
    pub fn new(brokers: &str) -> Self {
        Lag { brokers: brokers.to_owned(), clients: HashMap::new() }
    }

    /// Messages waiting for `group` in `topics`; blocking (call it off the async threads).
    pub fn measure(&mut self, group: &str, topics: &[String]) -> anyhow::Result<u64> {
        if !self.clients.contains_key(group) {
            let client: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &self.brokers)
                .set("group.id", group)
                .set("enable.auto.commit", "false")
                .create()?;
            self.clients.insert(group.to_owned(), client);
        }
        let client = &self.clients[group];
        let metadata = client.fetch_metadata(None, TIMEOUT)?;
        let mut tpl = TopicPartitionList::new();
        for t in metadata.topics().iter().filter(|t| topics.iter().any(|w| w == t.name())) {
            for p in t.partitions() {
                tpl.add_partition(t.name(), p.id());
            }
        }
        let committed = client.committed_offsets(tpl, TIMEOUT)?;
        let mut lag = 0u64;
        for e in committed.elements() {
            let (low, high) = client.fetch_watermarks(e.topic(), e.partition(), TIMEOUT)?;
            let from = match e.offset() {
                Offset::Offset(o) => o,
                _ => low, // nothing committed yet: everything retained is waiting
            };
            lag += (high - from).max(0) as u64;
        }
        Ok(lag)
    }
}
