//! The platform creates each tenant's topics on the real broker from its agreement, and follows
//! agreement changes; tenants without a stream section get none.

use std::collections::BTreeMap;
use std::time::Duration;

use mysimbdp_e2e::{agreement, eventually, kafka_brokers, unique, TestPlatform};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

fn with_stream(tenant: &str, topics: &str) -> String {
    let batch = "  routes: [{files: \"*.csv\", app: a, timeout: 1m, memory: 1GiB}]\n  formats: [csv]\n  max_file_size: 1MiB\n  max_files_per_hour: 10\n  max_bytes_per_day: 10MiB\n  max_concurrent_jobs: 1";
    agreement(tenant, batch).replace(
        "apps:\n",
        &format!("stream:\n  topics:\n{topics}\n  max_instances: 2\n  restart: {{policy: on-failure, max_restarts: 3, backoff: 1s}}\n  report_interval: 5s\n  thresholds: {{min_processing_rate: 100, max_avg_ingestion_time: 50ms, breach_reports: 3, cooldown: 30s}}\n  on_breach: scale_out\napps:\n"),
    )
}

/// Topics on the broker whose names start with `prefix`, with their partition counts.
async fn topics(prefix: &str) -> BTreeMap<String, usize> {
    let (brokers, prefix) = (kafka_brokers(), prefix.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
        let md = consumer.fetch_metadata(None, Duration::from_secs(10)).unwrap_or_else(|e| {
            panic!("the broker at {brokers} did not answer ({e}): run `scripts/services.sh up` first")
        });
        md.topics()
            .iter()
            .filter(|t| t.name().starts_with(&prefix))
            .map(|t| (t.name().to_owned(), t.partitions().len()))
            .collect()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_tenants_topics_follow_its_agreement() {
    let (zoo, food) = (unique("zoo"), unique("food"));
    let batch_only = "  routes: [{files: \"*.csv\", app: a, timeout: 1m, memory: 1GiB}]\n  formats: [csv]\n  max_file_size: 1MiB\n  max_files_per_hour: 10\n  max_bytes_per_day: 10MiB\n  max_concurrent_jobs: 1";
    let mut p = TestPlatform::new(&[
        (&zoo, with_stream(&zoo, "    - {name: readings, partitions: 3}")),
        (&food, agreement(&food, batch_only)),
    ])
    .await;
    p.start().await;
    let wanted = BTreeMap::from([(format!("{zoo}.readings"), 3)]);
    let mut seen = BTreeMap::new();
    eventually(Duration::from_secs(30), "the tenant's topic created", async || {
        seen = topics(&format!("{zoo}.")).await;
        seen == wanted
    })
    .await;
    let platform = topics("mysimbdp.").await;
    assert!(platform.contains_key("mysimbdp.metrics") && platform.contains_key("mysimbdp.control"), "{platform:?}");
    assert!(topics(&format!("{food}.")).await.is_empty(), "a tenant without streams gets no topics");

    // A live edit adds a topic. (It also asks for more partitions of the first: tansu 0.6 cannot add
    // partitions, so the platform warns and the topic keeps its three; Apache Kafka would grow it.)
    std::fs::write(
        p.tenants_dir.join(format!("{zoo}.yaml")),
        with_stream(&zoo, "    - {name: readings, partitions: 5}\n    - {name: alerts, partitions: 2}"),
    )
    .unwrap();
    let wanted = BTreeMap::from([(format!("{zoo}.alerts"), 2), (format!("{zoo}.readings"), 3)]);
    eventually(Duration::from_secs(30), "the edited agreement's topics", async || {
        seen = topics(&format!("{zoo}.")).await;
        seen == wanted
    })
    .await;
    p.cleanup().await;
}
