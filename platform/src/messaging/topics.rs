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

/// Every topic the agreements in force ask for, with its partitions.
pub fn wanted(snapshot: &Snapshot) -> BTreeMap<String, i32> {
    let mut out = BTreeMap::from([
        (METRICS_TOPIC.to_owned(), PLATFORM_PARTITIONS),
        (CONTROL_TOPIC.to_owned(), PLATFORM_PARTITIONS),
    ]);
    for (tenant, agreement) in &snapshot.in_force {
        for topic in agreement.stream.iter().flat_map(|s| &s.topics) {
            out.insert(tenant_topic(tenant, &topic.name), topic.partitions.min(i32::MAX as u64) as i32);
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
    pub async fn ensure(&self, wanted: &BTreeMap<String, i32>) -> anyhow::Result<Vec<String>> {
        let existing = self.existing().await?;
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let mut changed = Vec::new();
        let missing: Vec<NewTopic<'_>> = wanted
            .iter()
            .filter(|(name, _)| !existing.contains_key(*name))
            .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
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
            .filter(|(name, partitions)| existing.get(*name).is_some_and(|have| have < *partitions))
            .map(|(name, partitions)| NewPartitions::new(name, *partitions as usize))
            .collect();
        if !grow.is_empty() {
            for result in self.admin.create_partitions(&grow, &options).await? {
                match result {
                    Ok(name) => changed.push(format!("raised the partitions of {name} to {}", wanted[&name])),
                    // tansu 0.6 (the local broker) cannot add partitions; Apache Kafka can. The topic
                    // keeps working with the partitions it has.
                    Err((name, RDKafkaErrorCode::UnsupportedFeature)) => tracing::warn!(
                        topic = %name,
                        has = existing[&name],
                        wanted = wanted[&name],
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
