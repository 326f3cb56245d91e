//! Tenants' topics on the broker: `<tenant>.<name>` for every topic of every agreement in force, with
//! the agreement's partitions, plus the platform's own `mysimbdp.metrics` and `mysimbdp.control`.
//! Created when a tenant appears or its agreement changes (and retried every 30 s until the broker
//! agrees); partitions are only ever raised, as Kafka cannot lower them. Tenant ids hold no `.`, so
//! the prefix cannot collide: no tenant's topic name can fall under another tenant's prefix.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;
use tokio_util::sync::CancellationToken;

use crate::agreement::registry::{Agreements, Snapshot};
use crate::tenant::TenantId;

pub const METRICS_TOPIC: &str = "mysimbdp.metrics";
pub const CONTROL_TOPIC: &str = "mysimbdp.control";
/// Partitions of the platform's own topics.
const PLATFORM_PARTITIONS: i32 = 4;
const RETRY: Duration = Duration::from_secs(30);

pub fn tenant_topic(tenant: &TenantId, name: &str) -> String {
    format!("{tenant}.{name}")
}

/// What a topic should be: its partitions and, for tenants' topics, the largest message the broker
/// takes (the agreement's `max_message_size`, as the topic's `max.message.bytes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopicSpec {
    pub partitions: i32,
    pub max_message_bytes: Option<u64>,
}

/// Every topic the agreements in force ask for.
pub fn wanted(snapshot: &Snapshot) -> BTreeMap<String, TopicSpec> {
    let platform = TopicSpec { partitions: PLATFORM_PARTITIONS, max_message_bytes: None };
    let mut out = BTreeMap::from([(METRICS_TOPIC.to_owned(), platform), (CONTROL_TOPIC.to_owned(), platform)]);
    for (tenant, agreement) in &snapshot.in_force {
        let Some(stream) = &agreement.stream else { continue };
        for topic in &stream.topics {
            let spec = TopicSpec {
                partitions: topic.partitions.min(i32::MAX as u64) as i32,
                max_message_bytes: Some(stream.max_message_size.0),
            };
            out.insert(tenant_topic(tenant, &topic.name), spec);
        }
        // The topics the tenant's sources write (the agreement checked that one also in
        // stream.topics has the same partitions).
        for source in &agreement.sources {
            let spec = TopicSpec {
                partitions: source.partitions.min(i32::MAX as u64) as i32,
                max_message_bytes: Some(stream.max_message_size.0),
            };
            for topic in source.topics() {
                out.insert(tenant_topic(tenant, &topic), spec);
            }
        }
        // Each lake sink's dead letters, one per topic; a letter is its message and a few headers.
        for sink in agreement.sinks.iter().filter(|s| matches!(s.kind, crate::agreement::SinkKind::ParquetLake(_))) {
            let spec = TopicSpec { partitions: 1, max_message_bytes: Some(stream.max_message_size.0 + (4 << 10)) };
            for topic in &sink.topics {
                out.entry(tenant_topic(tenant, &format!("{topic}.dlq"))).or_insert(spec);
            }
        }
    }
    out
}

pub struct Topics {
    admin: AdminClient<DefaultClientContext>,
}

impl Topics {
    pub fn new(brokers: &str) -> anyhow::Result<Self> {
        let admin = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("client.id", "mysimbdp-topics")
            .create()
            .map_err(|e| anyhow::anyhow!("Kafka admin client for {brokers}: {e}"))?;
        Ok(Topics { admin })
    }

    /// Partitions of every topic on the broker.
    async fn existing(&self) -> anyhow::Result<BTreeMap<String, i32>> {
        // librdkafka's metadata call blocks; the platform's runtime is multi-threaded.
        let metadata =
            tokio::task::block_in_place(|| self.admin.inner().fetch_metadata(None, Duration::from_secs(10)))?;
        Ok(metadata.topics().iter().map(|t| (t.name().to_owned(), t.partitions().len() as i32)).collect())
    }

    /// Creates missing topics and raises partition counts; returns what it changed.
    pub async fn ensure(&self, wanted: &BTreeMap<String, TopicSpec>) -> anyhow::Result<Vec<String>> {
        let existing = self.existing().await?;
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let mut changed = Vec::new();
        let max_bytes: BTreeMap<&str, String> = wanted
            .iter()
            .filter_map(|(name, spec)| spec.max_message_bytes.map(|m| (name.as_str(), m.to_string())))
            .collect();
        let missing: Vec<NewTopic<'_>> = wanted
            .iter()
            .filter(|(name, _)| !existing.contains_key(*name))
            .map(|(name, spec)| {
                let topic = NewTopic::new(name, spec.partitions, TopicReplication::Fixed(1));
                match max_bytes.get(name.as_str()) {
                    Some(m) => topic.set("max.message.bytes", m),
                    None => topic,
                }
            })
            .collect();
        if !missing.is_empty() {
            for result in self.admin.create_topics(&missing, &options).await? {
                match result {
                    Ok(name) => changed.push(format!("created {name}")),
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((name, code)) => anyhow::bail!("creating topic {name}: {code}"),
                }
            }
        }
        let grow: Vec<NewPartitions<'_>> = wanted
            .iter()
            .filter(|(name, spec)| existing.get(*name).is_some_and(|have| *have < spec.partitions))
            .map(|(name, spec)| NewPartitions::new(name, spec.partitions as usize))
            .collect();
        if !grow.is_empty() {
            for result in self.admin.create_partitions(&grow, &options).await? {
                match result {
                    Ok(name) => {
                        changed.push(format!("raised the partitions of {name} to {}", wanted[&name].partitions))
                    }
                    // tansu 0.6 (the local broker) cannot add partitions; Apache Kafka can. The topic
                    // keeps working with the partitions it has.
                    Err((name, RDKafkaErrorCode::UnsupportedFeature)) => tracing::warn!(
                        topic = %name,
                        has = existing[&name],
                        wanted = wanted[&name].partitions,
                        "the broker cannot add partitions; the topic keeps the ones it has"
                    ),
                    Err((name, code)) => anyhow::bail!("raising the partitions of {name}: {code}"),
                }
            }
        }
        Ok(changed)
    }

    /// Keeps the broker's topics in line with the agreements until `shutdown`.
    pub async fn reconcile(self, agreements: Agreements, shutdown: CancellationToken) {
        let mut rx = agreements.subscribe();
        loop {
            let wanted = wanted(&rx.borrow_and_update());
            match self.ensure(&wanted).await {
                Ok(changes) => {
                    for change in changes {
                        tracing::info!(change, "topics");
                    }
                }
                Err(e) => tracing::error!(error = %e, "topics are not as the agreements ask; retrying"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = rx.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
    }
}
