//! The loop judges what is true at the broker: a trickle the app keeps up with is not slowness
//! whatever its rate; a backlog produced in one call (one record batch, which the local broker lists
//! as one message) is seen whole; the instance acted on is the one whose own partitions lag; and a
//! stop during a breach leaves the app stopped.

use std::collections::BTreeSet;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use serde_json::Value;

use crate::stream::{
    get_list, instances, reading, start, stream_agreement, stream_app, upload, wait_state, wait_topic, Stream,
};
use mysimbdp_e2e::{eventually, kafka_brokers, unique, Http, TestPlatform};

/// Produces `payloads` to one partition of `topic` in a single call of the producer, so they travel as
/// one record batch (a long linger holds them together), and waits until the broker has them.
async fn produce_batch(topic: &str, partition: i32, payloads: Vec<String>) {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let producer: ThreadedProducer<DefaultProducerContext> =
            ClientConfig::new().set("bootstrap.servers", kafka_brokers()).set("linger.ms", "1000").create().unwrap();
        for p in &payloads {
            producer.send(BaseRecord::<(), _>::to(&topic).partition(partition).payload(p)).unwrap();
        }
        producer.flush(Duration::from_secs(30)).expect("every message delivered");
    })
    .await
    .unwrap();
}

/// A platform with one tenant under `s` and the example app installed with `args`, its topic ready.
struct Loop {
    p: TestPlatform,
    http: Http,
    token: String,
    zoo: String,
    topic: String,
}

impl Loop {
    async fn new(prefix: &str, s: &Stream<'_>, args: &str) -> Loop {
        let zoo = unique(prefix);
        let mut p = TestPlatform::new(&[(&zoo, stream_agreement(&zoo, s))]).await;
        p.start().await;
        let (http, token) = (p.http(), p.token(Some(&zoo)));
        upload(&http, &token, &zoo, stream_app("tortoise-stream", args)).await;
        let topic = format!("{zoo}.readings");
        wait_topic(&topic).await;
        Loop { p, http, token, zoo, topic }
    }

    /// Starts `count` instances and waits until they run.
    async fn start(&self, count: u32) -> Vec<String> {
        let (http, token, zoo) = (&self.http, &self.token, &self.zoo);
        let ids: Vec<String> = start(http, token, zoo, "tortoise-stream", count)
            .await
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .collect();
        for id in &ids {
            wait_state(http, token, zoo, id, "running", Duration::from_secs(30)).await;
        }
        ids
    }

    async fn notifications(&self) -> Vec<Value> {
        get_list(&self.http, &self.token, &format!("/v1/tenants/{}/notifications", self.zoo)).await
    }

    /// Waits for the monitor's first notification and returns them all.
    async fn notified(&self, what: &str) -> Vec<Value> {
        eventually(Duration::from_secs(20), what, async || !self.notifications().await.is_empty()).await;
        self.notifications().await
    }
}

async fn reports(http: &Http, token: &str, tenant: &str, instance: &str) -> Vec<Value> {
    get_list(http, token, &format!("/v1/tenants/{tenant}/reports?instance={instance}&limit=1000")).await
}

/// Waits until the monitor has judged and stored `n` more of the instance's reports.
async fn more_reports(http: &Http, token: &str, tenant: &str, instance: &str, n: usize) {
    let seen = reports(http, token, tenant, instance).await.len();
    eventually(Duration::from_secs(30), &format!("{n} more reports of {instance}"), async || {
        reports(http, token, tenant, instance).await.len() >= seen + n
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trickle_below_the_minimum_rate_that_the_app_keeps_up_with_is_never_acted_on() {
    let s = Stream {
        max_instances: 2,
        report_interval: "500ms",
        thresholds: "{min_processing_rate: 100, max_avg_ingestion_time: 10s, breach_reports: 2, cooldown: 30s}",
        on_breach: "scale_out",
        ..Default::default()
    };
    let l = Loop::new("trickle", &s, "").await;
    let (http, token, zoo, topic) = (&l.http, &l.token, &l.zoo, l.topic.clone());
    let id = l.start(1).await.remove(0);
    // Once it reads (joining the group takes the local broker a few seconds, while nothing is read).
    eventually(Duration::from_secs(30), "the app to be given its partitions", async || {
        assignment(http, token, zoo, &id).await.len() == 4
    })
    .await;
    // 20 messages/s for 8 s, a fifth of what the agreement asks the app to manage.
    let t = topic.clone();
    tokio::task::spawn_blocking(move || {
        let producer: ThreadedProducer<DefaultProducerContext> =
            ClientConfig::new().set("bootstrap.servers", kafka_brokers()).set("linger.ms", "0").create().unwrap();
        for n in 0..160u64 {
            producer.send(BaseRecord::<(), _>::to(&t).partition((n % 4) as i32).payload(&reading(n))).unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
        producer.flush(Duration::from_secs(30)).expect("every message delivered");
    })
    .await
    .unwrap();
    // Until the app reports it has read the trickle and caught up, then three judged reports more:
    // every verdict on the trickle has been given.
    eventually(Duration::from_secs(30), "the app to report the trickle read", async || {
        let all = reports(http, token, zoo, &id).await;
        let latest = all.iter().max_by_key(|r| r["id"].as_i64());
        all.iter().map(|r| r["messages"].as_i64().unwrap()).sum::<i64>() >= 100 && latest.is_some_and(|r| r["lag"] == 0)
    })
    .await;
    more_reports(http, token, zoo, &id, 3).await;
    let all = reports(http, token, zoo, &id).await;
    let verdicts: BTreeSet<&str> = all.iter().map(|r| r["verdict"].as_str().unwrap()).collect();
    eprintln!("verdicts: {verdicts:?}; lag > 0 in {} of {}", all.iter().filter(|r| r["lag"] != 0).count(), all.len());
    assert!(all.iter().map(|r| r["messages"].as_i64().unwrap()).sum::<i64>() >= 100, "the app wrote: {all:#?}");
    assert!(all.iter().all(|r| r["processing_rate"].as_f64().unwrap() < 100.0), "a trickle: {all:#?}");
    assert!(all.iter().all(|r| r["verdict"] == "idle" || r["verdict"] == "keeping_up"), "{all:#?}");
    assert!(l.notifications().await.is_empty());
    assert_eq!(instances(http, token, zoo).await.len(), 1);
    l.p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_produced_in_one_call_behind_a_stuck_app_is_seen_and_acted_on() {
    let s = Stream {
        partitions: 1,
        report_interval: "500ms",
        thresholds: "{min_processing_rate: 100, max_avg_ingestion_time: 10s, breach_reports: 2, cooldown: 30s}",
        on_breach: "notify",
        ..Default::default()
    };
    // Five messages a second: stuck, for a backlog of 600.
    let l = Loop::new("burst", &s, "--delay-per-record 200").await;
    let id = l.start(1).await.remove(0);
    produce_batch(&l.topic, 0, (0..600).map(reading).collect()).await;
    let note = l.notified("the backlog acted on").await.remove(0);
    assert_eq!((note["kind"].as_str(), note["instance"].as_str()), (Some("below_threshold"), Some(id.as_str())));
    let seen = reports(&l.http, &l.token, &l.zoo, &id).await;
    let most = seen.iter().filter_map(|r| r["lag"].as_i64()).max().unwrap_or(0);
    assert!(most >= 500, "the whole backlog is seen, not one batch as one message: lag at most {most}: {seen:#?}");
    l.p.cleanup().await;
}

/// The partitions an instance's log says it reads now (the SDK logs each new assignment).
async fn assignment(http: &Http, token: &str, tenant: &str, id: &str) -> Vec<i32> {
    let log = http.get(&format!("/v1/tenants/{tenant}/instances/{id}/log"), token).await.text();
    let Some(line) = log.lines().rfind(|l| l.contains(": reading ")) else { return Vec::new() };
    line.split_whitespace().filter_map(|w| w.rsplit_once('/').and_then(|(_, p)| p.parse().ok())).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_instance_acted_on_is_the_one_whose_partitions_lag() {
    let s = Stream {
        max_instances: 2,
        report_interval: "500ms",
        thresholds: "{min_processing_rate: 100, max_avg_ingestion_time: 10s, breach_reports: 2, cooldown: 30s}",
        on_breach: "notify",
        ..Default::default()
    };
    let l = Loop::new("owner", &s, "--delay-per-record 20").await;
    let (http, token, zoo) = (&l.http, &l.token, &l.zoo);
    let ids = l.start(2).await;
    // Both members hold partitions, the four between them.
    let owned = std::cell::RefCell::new(Vec::new());
    eventually(Duration::from_secs(30), "the group to split the partitions", async || {
        let mut split = Vec::new();
        for id in &ids {
            split.push(assignment(http, token, zoo, id).await);
        }
        let settled = split.iter().all(|s| !s.is_empty()) && split.iter().map(Vec::len).sum::<usize>() == 4;
        *owned.borrow_mut() = split;
        settled
    })
    .await;
    let owned = owned.into_inner();
    let (lagging, drained) = (&ids[0], &ids[1]);
    produce_batch(&l.topic, owned[0][0], (0..3_000).map(reading).collect()).await;
    l.notified("the lagging instance acted on").await;
    // Three more judged reports of the instance that keeps up: none of them is acted on.
    more_reports(http, token, zoo, drained, 3).await;
    let notes = l.notifications().await;
    assert!(notes.iter().all(|n| n["instance"] == lagging.as_str()), "{owned:?} {notes:#?}");
    let theirs = reports(http, token, zoo, drained).await;
    assert!(!theirs.is_empty() && theirs.iter().all(|r| r["verdict"] != "breach"), "{theirs:#?}");
    assert!(reports(http, token, zoo, lagging).await.iter().any(|r| r["lag"].as_i64() > Some(1000)));
    l.p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stop_during_a_breach_leaves_the_app_stopped() {
    let s = Stream {
        max_instances: 3,
        report_interval: "300ms",
        thresholds: "{min_processing_rate: 100, max_avg_ingestion_time: 10s, breach_reports: 1, cooldown: 0s}",
        on_breach: "scale_out",
        ..Default::default()
    };
    let l = Loop::new("stopped", &s, "--delay-per-record 50").await;
    let (http, token, zoo) = (&l.http, &l.token, &l.zoo);
    l.start(1).await;
    produce_batch(&l.topic, 0, (0..5_000).map(reading).collect()).await;
    l.notified("a breach under way").await;
    let r = http.call("DELETE", &format!("/v1/tenants/{zoo}/apps/tortoise-stream/instances"), Some(token), None).await;
    assert!(r.status == 202 || r.status == 200, "{}", r.text());
    let stopped_at = chrono::Utc::now();
    eventually(Duration::from_secs(30), "every instance to end", async || {
        instances(http, token, zoo).await.iter().all(|i| i["state"] == "exited" || i["state"] == "failed")
    })
    .await;
    // Notifications read after the stop change nothing: the monitor looks for silent instances and
    // the manager compares what runs with what is wanted, three times each, and nothing starts.
    tokio::join!(l.p.after_passes("monitor_sweep", 3), l.p.after_passes("stream_reconcile", 3));
    let all = instances(http, token, zoo).await;
    assert!(all.iter().all(|i| i["desired"] == "stopped" && i["state"] != "running"), "{all:#?}");
    let at = |v: &Value, k: &str| chrono::DateTime::parse_from_rfc3339(v[k].as_str().unwrap()).unwrap();
    assert!(all.iter().all(|i| at(i, "created_at") < stopped_at), "nothing created after the stop: {all:#?}");
    for a in get_list(http, token, &format!("/v1/tenants/{zoo}/actions")).await {
        if at(&a, "at") > stopped_at + chrono::Duration::milliseconds(100) {
            assert_ne!(a["outcome"], "applied", "{a}");
        }
    }
    l.p.cleanup().await;
}
