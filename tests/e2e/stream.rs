//! Stream ingestion against the real broker and coredms: instances started and stopped through the
//! API, exact counts through crashes, the restart cap, and the monitor's loop with the manager's
//! reaction.

use std::time::{Duration, Instant};

use mysimbdp_e2e::{
    agreement, bundle, eventually, kafka_brokers, stripped, tar_gz, unique, Http, Member, TestPlatform,
};
use rdkafka::producer::{
    BaseRecord, DefaultProducerContext, DeliveryResult, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::ClientConfig;
use serde_json::Value;

const NO_BATCH: &str = "  routes: [{files: \"*.csv\", app: none, timeout: 1m, memory: 1GiB}]\n  formats: [csv]\n  max_file_size: 1MiB\n  max_files_per_hour: 10\n  max_bytes_per_day: 10MiB\n  max_concurrent_jobs: 1";

/// Stream settings of a test tenant; `extra` lines go under `stream:` as they are.
pub struct Stream<'a> {
    pub partitions: u32,
    pub max_instances: u32,
    pub restart: &'a str,
    pub report_interval: &'a str,
    pub thresholds: &'a str,
    pub on_breach: &'a str,
}

impl Default for Stream<'_> {
    fn default() -> Self {
        Stream {
            partitions: 4,
            max_instances: 3,
            restart: "{policy: on-failure, max_restarts: 10, backoff: 100ms}",
            report_interval: "1s",
            thresholds: "{min_processing_rate: 1, max_avg_ingestion_time: 10s, breach_reports: 3, cooldown: 1m}",
            on_breach: "notify",
        }
    }
}

/// Every test instance runs under 256MiB of resident memory: less than the example app's threads
/// reserve (~480 MiB of address space), so the tests also show the limit is on what an app uses.
pub fn stream_agreement(tenant: &str, s: &Stream<'_>) -> String {
    agreement(tenant, NO_BATCH).replace(
        "apps:\n",
        &format!(
            "stream:\n  topics: [{{name: readings, partitions: {}}}]\n  max_instances: {}\n  restart: {}\n  report_interval: {}\n  thresholds: {}\n  on_breach: {}\n  stop_grace: 5s\n  memory: 256MiB\napps:\n",
            s.partitions, s.max_instances, s.restart, s.report_interval, s.thresholds, s.on_breach
        ),
    )
}

/// The example stream app as an archive: a start script running the built binary with `args`.
pub fn stream_app(name: &str, args: &str) -> Vec<u8> {
    bundle(name, "stream", &format!("exec \"$APP/tortoise-stream\" {args}"), &["tortoise-stream"])
}

/// A stream "app" that is any shell script.
pub fn script_app(name: &str, script: &str) -> Vec<u8> {
    let manifest = format!("name: {name}\nkind: stream\nentrypoint: run.sh\nversion: 1.0.0\n");
    let script = format!("#!/bin/sh\n{script}\n");
    tar_gz(&[Member::File("app.yaml", manifest.as_bytes(), 0o644), Member::File("run.sh", script.as_bytes(), 0o755)])
}

pub async fn upload(http: &Http, token: &str, tenant: &str, archive: Vec<u8>) {
    let r = http
        .call("POST", &format!("/v1/tenants/{tenant}/apps"), Some(token), Some(("application/gzip", archive)))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
}

pub async fn start(http: &Http, token: &str, tenant: &str, app: &str, count: u32) -> Vec<Value> {
    let body = format!("{{\"count\": {count}}}").into_bytes();
    let path = format!("/v1/tenants/{tenant}/apps/{app}/instances");
    let r = http.call("POST", &path, Some(token), Some(("application/json", body))).await;
    assert_eq!(r.status, 201, "{}", r.text());
    r.json().as_array().unwrap().clone()
}

pub async fn instances(http: &Http, token: &str, tenant: &str) -> Vec<Value> {
    get_list(http, token, &format!("/v1/tenants/{tenant}/instances")).await
}

/// The tenant's instances of app `app` (a connector's `source:<name>` or `sink:<name>` too).
pub async fn instances_of(p: &TestPlatform, token: &str, tenant: &str, app: &str) -> Vec<Value> {
    let all = instances(&p.http(), token, tenant).await;
    all.into_iter().filter(|i| i["app"] == app).collect()
}

pub async fn instance(http: &Http, token: &str, tenant: &str, id: &str) -> Value {
    let r = http.get(&format!("/v1/tenants/{tenant}/instances/{id}"), token).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// Waits until the instance is in `state`, and returns it.
pub async fn wait_state(http: &Http, token: &str, tenant: &str, id: &str, state: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let i = instance(http, token, tenant, id).await;
        if i["state"] == state {
            return i;
        }
        assert!(Instant::now() < deadline, "instance {id} not {state} within {within:?}: {i}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub use test_apps::tortoise_reading as reading;

/// Produces `payloads` to `topic` (keys spread them over the partitions) and waits for the broker to
/// have every one. The producer batches, so an app killed mid-stream resumes inside a record batch:
/// the case tansu 0.6 gets wrong and the SDK's resume check puts right.
pub async fn produce(topic: &str, payloads: Vec<String>) {
    produce_to(&kafka_brokers(), topic, payloads).await
}

/// Counts the messages the broker never acknowledged (rdkafka gave up on them): without it, a lost
/// message shows only as a consumer that seems to stall.
#[derive(Default)]
struct Undelivered(std::sync::atomic::AtomicUsize);

impl rdkafka::ClientContext for Undelivered {}

impl ProducerContext for Undelivered {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// As `produce`, on the broker at `brokers`.
pub async fn produce_to(brokers: &str, topic: &str, payloads: Vec<String>) {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let producer: ThreadedProducer<Undelivered> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "1000000")
            .create_with_context(Undelivered::default())
            .unwrap();
        for (i, p) in payloads.iter().enumerate() {
            let key = (i % 64).to_string();
            let mut record = BaseRecord::to(&topic).key(&key).payload(p);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((e, r)) => {
                        assert!(format!("{e}").contains("Queue full"), "producing to {topic}: {e}");
                        producer.poll(Duration::from_millis(10));
                        record = r;
                    }
                }
            }
        }
        producer.flush(Duration::from_secs(60)).expect("every message delivered");
        let lost = producer.context().0.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(lost, 0, "{lost} of {} messages to {topic} were never acknowledged by the broker", payloads.len());
    })
    .await
    .unwrap();
}

/// Waits until the broker lists `topic` (the platform creates it from the agreement).
pub async fn wait_topic(topic: &str) {
    wait_topic_on(&kafka_brokers(), topic).await
}

/// As `wait_topic`, on the broker at `brokers`.
pub async fn wait_topic_on(brokers: &str, topic: &str) {
    let t = topic.to_owned();
    eventually(Duration::from_secs(30), &format!("topic {topic} on the broker"), async || {
        let (t, brokers) = (t.clone(), brokers.to_owned());
        tokio::task::spawn_blocking(move || {
            use rdkafka::consumer::{BaseConsumer, Consumer};
            let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
            c.fetch_metadata(Some(&t), Duration::from_secs(5))
                .map(|m| m.topics().iter().any(|x| x.name() == t && !x.partitions().is_empty()))
                .unwrap_or(false)
        })
        .await
        .unwrap()
    })
    .await;
}

/// Waits for the instance's next run (its `field`, the pid or the container, other than `last`)
/// to be running and to have written something (or everything there is), and returns that `field`:
/// the caller kills it part way through the stream.
async fn next_run_writing(
    p: &TestPlatform,
    (http, token, tenant, id): (&Http, &str, &str, &str),
    field: &str,
    last: &str,
    total: u64,
) -> String {
    let run = std::cell::RefCell::new(String::new());
    eventually(Duration::from_secs(60), "the instance's next run", async || {
        let i = instance(http, token, tenant, id).await;
        let now = match &i[field] {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => String::new(),
        };
        *run.borrow_mut() = now.clone();
        i["state"] == "running" && !now.is_empty() && now != last
    })
    .await;
    let before = p.count_docs(tenant, "readings").await;
    eventually(Duration::from_secs(60), "the run to write", async || {
        let now = p.count_docs(tenant, "readings").await;
        now > before || now == total as i64
    })
    .await;
    run.into_inner()
}

/// Waits until the consumer group `group` has committed the end of every partition of `topic`: its
/// apps, which commit after they write, have written everything and will not read any of it again,
/// so a document count taken after this is final.
pub async fn wait_committed(group: &str, topic: &str, within: Duration) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let (group, topic) = (group.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        // Not subscribed, so it never joins the group: it only reads the group's committed offsets.
        let reader: BaseConsumer =
            ClientConfig::new().set("bootstrap.servers", kafka_brokers()).set("group.id", &group).create().unwrap();
        let timeout = Duration::from_secs(10);
        let metadata = reader.fetch_metadata(Some(&topic), timeout).unwrap();
        let partitions: Vec<i32> = metadata.topics()[0].partitions().iter().map(|p| p.id()).collect();
        assert!(!partitions.is_empty(), "{topic} has no partitions");
        let deadline = Instant::now() + within;
        loop {
            let mut asked = TopicPartitionList::new();
            for &p in &partitions {
                asked.add_partition(&topic, p);
            }
            let committed = reader.committed_offsets(asked, timeout).unwrap();
            let behind: Vec<(i32, i64, i64)> = partitions
                .iter()
                .map(|&p| {
                    let end = reader.fetch_watermarks(&topic, p, timeout).unwrap().1;
                    let at = match committed.find_partition(&topic, p).map(|e| e.offset()) {
                        Some(Offset::Offset(o)) => o,
                        _ => 0,
                    };
                    (p, at, end)
                })
                .filter(|(_, at, end)| at < end)
                .collect();
            if behind.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{group} not committed to the end of {topic}: (partition, committed, end) {behind:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap();
}

pub async fn wait_docs(p: &TestPlatform, tenant: &str, n: i64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let have = p.count_docs(tenant, "readings").await;
        if have == n {
            return;
        }
        assert!(have < n, "{have} documents for {n} messages: duplicates");
        if Instant::now() >= deadline {
            let mut c = p.coredms_admin(tenant).await;
            let by_partition: Vec<(String, i64, i64)> = sqlx::query_as(
                "select split_part(_id, '/', 2), count(*), max(split_part(_id, '/', 3)::bigint) from readings group by 1 order by 1",
            )
            .fetch_all(&mut *c)
            .await
            .unwrap();
            let gaps: Vec<(String, i64, i64)> = sqlx::query_as(
                "with o as (select split_part(_id, '/', 2) p, split_part(_id, '/', 3)::bigint o from readings),
                      n as (select p, o, lead(o) over (partition by p order by o) nx from o)
                 select p, o + 1, nx - 1 from n where nx > o + 1 order by 1, 2",
            )
            .fetch_all(&mut *c)
            .await
            .unwrap();
            eprintln!("missing offset ranges (partition, from, to): {gaps:?}");
            let logs: Vec<String> = std::fs::read_dir(p.data_dir.join("instances").join(tenant))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| std::fs::read_to_string(e.path().join("log")).unwrap_or_default())
                .collect();
            // What the broker holds: a partition whose end is past its last document was not read
            // (a consumer stalled); one whose end is its last document lost messages on the way in.
            let topic = format!("{tenant}.readings");
            let ends = tokio::task::spawn_blocking(move || {
                use rdkafka::consumer::{BaseConsumer, Consumer};
                let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create().unwrap();
                (0..8)
                    .map_while(|part| {
                        c.fetch_watermarks(&topic, part, Duration::from_secs(5)).ok().map(|w| (part, w.1))
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap();
            panic!(
                "{have} of {n} documents after {within:?}; (partition, documents, max offset): {by_partition:?}; the broker's ends (partition, next offset): {ends:?}; instance logs:\n{}\nplatform log (last lines):\n{}",
                logs.join("\n---\n"),
                p.platform_log_tail(80)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A started platform serving `zoo` under `agreement`, the example stream app uploaded and the tenant's
/// topic on the broker: the platform, a client, zoo's token and the topic.
async fn zoo_with_tortoise_stream(zoo: &str, agreement: String) -> (TestPlatform, Http, String, String) {
    let mut p = TestPlatform::new(&[(zoo, agreement)]).await;
    p.start().await;
    let (http, token) = (p.http(), p.token(Some(zoo)));
    upload(&http, &token, zoo, stream_app("tortoise-stream", "")).await;
    let topic = format!("{zoo}.readings");
    wait_topic(&topic).await;
    (p, http, token, topic)
}

/// tansu answers a fetch from inside a record batch with the batches after it; when a group's
/// committed offset lies inside a partition's last batch there are none, so an app resuming there heard
/// nothing and waited for new messages for good (in the chaos test, 295 of 20,000 stayed unread). It
/// reads the rest of that batch, and nothing before the committed offset again.
#[tokio::test(flavor = "multi_thread")]
async fn an_app_resuming_inside_the_last_batch_reads_the_rest_of_it() {
    let zoo = unique("zoo");
    let one = Stream { partitions: 1, ..Default::default() };
    let (p, http, token, topic) = zoo_with_tortoise_stream(&zoo, stream_agreement(&zoo, &one)).await;
    produce(&topic, (0..1_000).map(reading).collect()).await;
    // As if an earlier run had written all but the last ten and committed.
    let group = format!("{zoo}.tortoise-stream");
    commit(&group, &topic, 0, 990).await;
    let id = start(&http, &token, &zoo, "tortoise-stream", 1).await[0]["id"].as_str().unwrap().to_owned();
    wait_state(&http, &token, &zoo, &id, "running", Duration::from_secs(30)).await;
    wait_docs(&p, &zoo, 10, Duration::from_secs(60)).await;
    wait_committed(&group, &topic, Duration::from_secs(60)).await;
    let ids: Vec<String> = sqlx::query_scalar("select _id from readings order by _id")
        .fetch_all(&mut *p.coredms_admin(&zoo).await)
        .await
        .unwrap();
    let expected: Vec<String> = (990..1_000).map(|o| format!("{topic}/0/{o}")).collect();
    assert_eq!(ids, expected, "the ten after the committed offset, and only they");
    p.cleanup().await;
}

/// Commits `offset` for `group` on one partition of `topic`, as a run of the group's app would have.
async fn commit(group: &str, topic: &str, partition: i32, offset: i64) {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let (group, topic) = (group.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", kafka_brokers())
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, partition, Offset::Offset(offset)).unwrap();
        c.commit(&tpl, CommitMode::Sync).unwrap();
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_started_through_the_api_ingests_every_message_once_and_stops_cleanly() {
    let zoo = unique("zoo");
    let small =
        stream_agreement(&zoo, &Stream::default()).replace("  stop_grace:", "  max_message_size: 4KiB\n  stop_grace:");
    let (p, http, token, topic) = zoo_with_tortoise_stream(&zoo, small).await;
    let started = start(&http, &token, &zoo, "tortoise-stream", 1).await;
    let id = started[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(started[0]["cause"], "api");
    let running = wait_state(&http, &token, &zoo, &id, "running", Duration::from_secs(30)).await;
    assert!(running["pid"].as_i64().is_some(), "{running}");
    // The CLI reads the same through the API.
    let out = p.cli(&["instances", "list", "--tenant", &zoo]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && table.contains(&id) && table.contains("running"), "{table}");

    // 100,000 readings, and among them messages the app must reject (and count) without stopping.
    let mut payloads: Vec<String> = (0..100_000).map(reading).collect();
    let oversized = reading(2).replace("tortoise-0002", &"x".repeat(5000));
    let bad = [
        "not json at all",
        "{\"time\": 1}",
        &reading(1).replace("\"humidity\":21.5", "\"humidity\":250.5"),
        &oversized,
    ];
    for (i, b) in bad.iter().enumerate() {
        payloads.insert(i * 25_000 + 7, b.to_string());
    }
    produce(&topic, payloads).await;
    wait_docs(&p, &zoo, 100_000, Duration::from_secs(180)).await;

    // Every rejection is counted in the reports the monitor trusted.
    eventually(Duration::from_secs(15), "the four rejections in the reports", async || {
        let r = http.get(&format!("/v1/tenants/{zoo}/reports?limit=1000"), &token).await.json();
        let items = r["items"].as_array().unwrap();
        let rejected: i64 = items.iter().map(|i| i["rejected"].as_i64().unwrap()).sum();
        let messages: i64 = items.iter().map(|i| i["messages"].as_i64().unwrap()).sum();
        rejected == 4 && messages == 100_000
    })
    .await;

    // Stop through the API: SIGTERM, the app writes, commits and exits 0.
    let r = http.call("DELETE", &format!("/v1/tenants/{zoo}/instances/{id}"), Some(&token), None).await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["desired"], "stopped");
    let exited = wait_state(&http, &token, &zoo, &id, "exited", Duration::from_secs(30)).await;
    assert_eq!(exited["exit_code"], 0, "a clean exit: {exited}");
    let out = p.cli(&["reports", "--tenant", &zoo, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reports: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(reports["items"].as_array().is_some_and(|i| !i.is_empty()), "{reports}");
    let log = http.get(&format!("/v1/tenants/{zoo}/instances/{id}/log"), &token).await.text();
    assert!(log.contains("stopped cleanly; 4 messages rejected"), "{log}");
    assert!(log.contains("rejected: not a reading"), "{log}");
    // tansu takes the topic's max.message.bytes but does not enforce it (Apache Kafka does); the app
    // enforces the agreement's limit itself.
    assert!(log.contains("over the agreement's max_message_size of 4096"), "{log}");
    assert_eq!(p.count_docs(&zoo, "readings").await, 100_000);
    let doc = p.doc(&zoo, "readings", &format!("{topic}/0/0")).await;
    assert!(doc["device_id"].as_str().unwrap().starts_with("tortoise-"), "{doc}");
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_beyond_the_agreement_or_of_a_batch_app_are_refused() {
    let zoo = unique("zoo");
    let s = Stream { max_instances: 2, ..Default::default() };
    let mut p = TestPlatform::new(&[(&zoo, stream_agreement(&zoo, &s))]).await;
    p.start().await;
    let (http, token) = (p.http(), p.token(Some(&zoo)));
    upload(&http, &token, &zoo, script_app("sleeper", "exec sleep 600")).await;
    let path = format!("/v1/tenants/{zoo}/apps/sleeper/instances");
    let post =
        |body: &str| http.call("POST", &path, Some(&token), Some(("application/json", body.as_bytes().to_vec())));
    assert!(post("{\"count\": 3}").await.problem(422).contains("max_instances"));
    assert!(post("{\"count\": 0}").await.problem(422).contains("outside 1..=2"));
    assert!(post("{\"count\": \"two\"}").await.problem(422).contains("count"));
    assert_eq!(post("{\"count\": 2}").await.status, 201);
    let over = post("{}").await.problem(409);
    assert!(over.contains("max_instances of 2") && over.contains("3 instances"), "{over}");
    let r = http.call("POST", &format!("/v1/tenants/{zoo}/apps/nothing/instances"), Some(&token), None).await;
    assert!(r.problem(404).contains("no app `nothing`"));
    // A NUL character names nothing in a path and is refused in a query (schemathesis found the 500).
    assert!(http.get(&format!("/v1/tenants/{zoo}/reports?app=%00"), &token).await.problem(400).contains("NUL"));
    assert!(http.get(&format!("/v1/tenants/{zoo}/instances?app=a%00b"), &token).await.problem(400).contains("NUL"));
    let bad_state = http.get(&format!("/v1/tenants/{zoo}/instances?state=bogus"), &token).await.problem(400);
    assert!(bad_state.contains("`bogus`") && bad_state.contains("`restarting`"), "{bad_state}");
    assert!(http.get(&format!("/v1/tenants/{zoo}/instances/%00"), &token).await.problem(404).contains("NUL"));
    // Paged like every list: one instance a page, the second page the last; a forged cursor refused.
    let list = format!("/v1/tenants/{zoo}/instances?limit=1");
    let first = http.get(&list, &token).await.json();
    let cursor = first["next_cursor"].as_str().expect("a second page").to_owned();
    let second = http.get(&format!("{list}&cursor={cursor}"), &token).await.json();
    assert_eq!((first["items"].as_array().unwrap().len(), &second["next_cursor"]), (1, &Value::Null), "{second}");
    assert_ne!(first["items"][0]["id"], second["items"][0]["id"], "{first} {second}");
    assert!(http.get(&format!("{list}&cursor=bm9wZQ"), &token).await.problem(400).contains("cursor"));
    // An app in use cannot be deleted; once its instances stop, it can.
    let r = http.call("DELETE", &format!("/v1/tenants/{zoo}/apps/sleeper"), Some(&token), None).await;
    assert!(r.problem(409).contains("stop its instances first"));
    let r = http.call("DELETE", &path, Some(&token), None).await;
    assert_eq!(r.status, 202);
    assert_eq!(r.json().as_array().unwrap().len(), 2);
    for i in instances(&http, &token, &zoo).await {
        wait_state(&http, &token, &zoo, i["id"].as_str().unwrap(), "exited", Duration::from_secs(30)).await;
    }
    let r = http.call("DELETE", &format!("/v1/tenants/{zoo}/apps/sleeper"), Some(&token), None).await;
    assert_eq!(r.status, 204, "{}", r.text());
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_looping_app_is_restarted_up_to_the_cap_then_failed() {
    let zoo = unique("zoo");
    let s = Stream { restart: "{policy: on-failure, max_restarts: 3, backoff: 50ms}", ..Default::default() };
    let mut p = TestPlatform::new(&[(&zoo, stream_agreement(&zoo, &s))]).await;
    p.start().await;
    let (http, token) = (p.http(), p.token(Some(&zoo)));
    upload(&http, &token, &zoo, script_app("crasher", "echo starting; exit 3")).await;
    let id = start(&http, &token, &zoo, "crasher", 1).await[0]["id"].as_str().unwrap().to_owned();
    let failed = wait_state(&http, &token, &zoo, &id, "failed", Duration::from_secs(30)).await;
    assert_eq!(failed["restarts_total"], 3, "{failed}");
    assert_eq!(failed["exit_code"], 3, "{failed}");
    assert_eq!(failed["desired"], "stopped");
    let detail = failed["detail"].as_str().unwrap();
    assert!(detail.contains("exited with status 3") && detail.contains("max_restarts of 3"), "{detail}");
    // Four runs: the first and three restarts, each in the log.
    let log = http.get(&format!("/v1/tenants/{zoo}/instances/{id}/log"), &token).await.text();
    assert_eq!(log.matches("starting\n").count(), 4, "{log}");
    // It stays failed: nothing starts it again, however often the manager looks.
    p.after_passes("stream_reconcile", 3).await;
    assert_eq!(instance(&http, &token, &zoo, &id).await["restarts_total"], 3);
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_over_its_memory_is_killed_and_restarted_per_policy() {
    let zoo = unique("zoo");
    let s = Stream { restart: "{policy: on-failure, max_restarts: 1, backoff: 50ms}", ..Default::default() };
    let small = stream_agreement(&zoo, &s).replace("  memory: 256MiB\n", "  memory: 64MiB\n");
    let mut p = TestPlatform::new(&[(&zoo, small)]).await;
    p.start().await;
    let (http, token) = (p.http(), p.token(Some(&zoo)));
    // The memory is held by a child of the start script: the limit is the whole process group's.
    let hog = "echo holding; a=$(head -c 300000000 /dev/zero | tr '\\0' a); sleep 60";
    upload(&http, &token, &zoo, script_app("hog", hog)).await;
    let id = start(&http, &token, &zoo, "hog", 1).await[0]["id"].as_str().unwrap().to_owned();
    let failed = wait_state(&http, &token, &zoo, &id, "failed", Duration::from_secs(60)).await;
    assert_eq!((failed["restarts_total"].as_i64(), failed["exit_signal"].as_i64()), (Some(1), Some(9)), "{failed}");
    let detail = failed["detail"].as_str().unwrap();
    assert!(detail.contains("killed for resident memory of"), "{detail}");
    assert!(
        detail.contains("over the agreement's memory of 64MiB") && detail.contains("max_restarts of 1"),
        "{detail}"
    );
    let log = http.get(&format!("/v1/tenants/{zoo}/instances/{id}/log"), &token).await.text();
    assert_eq!(log.matches("holding\n").count(), 2, "{log}");
    p.cleanup().await;
}

/// The group's static members now (their `group.instance.id`s), as the broker describes them.
async fn group_members(group: &str) -> Vec<String> {
    let members = mysimbdp::messaging::groups::members(&kafka_brokers(), group).await.expect("describing the group");
    let mut ids: Vec<String> = members.iter().filter_map(|m| m.instance_id()).collect();
    ids.sort();
    ids
}

async fn stop_instance(http: &Http, token: &str, tenant: &str, id: &str) {
    let r = http.call("DELETE", &format!("/v1/tenants/{tenant}/instances/{id}"), Some(token), None).await;
    assert_eq!(r.status, 202, "{}", r.text());
    let exited = wait_state(http, token, tenant, id, "exited", Duration::from_secs(30)).await;
    assert_eq!(exited["exit_code"], 0, "{exited}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_instances_partitions_pass_at_once_to_its_replacement_or_to_the_instances_left() {
    let zoo = unique("zoo");
    let (p, http, token, topic) = zoo_with_tortoise_stream(&zoo, stream_agreement(&zoo, &Stream::default())).await;
    let group = format!("{zoo}.tortoise-stream");
    let batch = |from: u64| (from..from + 2_000).map(reading).collect::<Vec<_>>();
    // Within this, a group that waited for a stopped member to time out (45 s) would fail.
    const AT_ONCE: Duration = Duration::from_secs(30);

    let a = start(&http, &token, &zoo, "tortoise-stream", 1).await.remove(0);
    assert_eq!(a["member"], 0, "{a}");
    produce(&topic, batch(0)).await;
    wait_docs(&p, &zoo, 2_000, Duration::from_secs(60)).await;
    assert_eq!(group_members(&group).await, [format!("{group}-0")]);
    stop_instance(&http, &token, &zoo, a["id"].as_str().unwrap()).await;
    eventually(Duration::from_secs(10), "the stopped instance's member removed from the group", async || {
        group_members(&group).await.is_empty()
    })
    .await;

    // Started again: the new instance takes member 0 and reads on.
    let b = start(&http, &token, &zoo, "tortoise-stream", 1).await.remove(0);
    assert_eq!(b["member"], 0, "the lowest member no live instance holds: {b}");
    let since = Instant::now();
    produce(&topic, batch(2_000)).await;
    wait_docs(&p, &zoo, 4_000, AT_ONCE).await;
    eprintln!("stopped and started again: reading on after {:?}", since.elapsed());

    // Scaled out to two, then the first one stopped: the one left reads every partition.
    let c = start(&http, &token, &zoo, "tortoise-stream", 1).await.remove(0);
    assert_eq!(c["member"], 1, "{c}");
    let c_log = format!("/v1/tenants/{zoo}/instances/{}/log", c["id"].as_str().unwrap());
    eventually(AT_ONCE, "the second instance given partitions", async || {
        http.get(&c_log, &token).await.text().contains(&format!("reading {topic}/"))
    })
    .await;
    stop_instance(&http, &token, &zoo, b["id"].as_str().unwrap()).await;
    eventually(Duration::from_secs(10), "only the second instance's member left", async || {
        group_members(&group).await == [format!("{group}-1")]
    })
    .await;
    let since = Instant::now();
    produce(&topic, batch(4_000)).await;
    wait_docs(&p, &zoo, 6_000, AT_ONCE).await;
    eprintln!("scaled in: the instance left read on after {:?}", since.elapsed());
    // The app logs its partitions with each report (every second here).
    let all = (0..4).map(|n| format!("{topic}/{n}")).collect::<Vec<_>>().join(" ");
    eventually(Duration::from_secs(10), "the instance left logging all four partitions", async || {
        http.get(&c_log, &token).await.text().contains(&format!("reading {all}\n"))
    })
    .await;
    p.cleanup().await;
}

/// The instance ids whose programs run now, from the processes' own environments: one entry per run,
/// so an id listed twice is an instance running twice.
pub fn running_instance_ids(tenant: &str) -> Vec<String> {
    // (pid, parent pid, instance id) of every process carrying the tenant's instance environment.
    let mut carriers = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(env) = std::fs::read(entry.path().join("environ")) else { continue };
        let vars: Vec<&[u8]> = env.split(|b| *b == 0).collect();
        let has = |prefix: &str| vars.iter().find_map(|v| v.strip_prefix(prefix.as_bytes()));
        if has(&format!("MYSIMBDP_TENANT={tenant}")).is_none() {
            continue;
        }
        let Some(id) = has("MYSIMBDP_INSTANCE_ID=") else { continue };
        // The parent pid is the second field after the command, which is in parentheses.
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        carriers.push((pid, ppid, String::from_utf8_lossy(id).into_owned()));
    }
    // One per run: a process whose parent carries the same id (the start script's `$(...)` subshell,
    // a program the script starts) belongs to its parent's run.
    let mut ids: Vec<String> = carriers
        .iter()
        .filter(|(_, ppid, id)| !carriers.iter().any(|(pid, _, other)| Some(*pid) == *ppid && other == id))
        .map(|(_, _, id)| id.clone())
        .collect();
    ids.sort();
    ids
}

fn sigkill(pid: i64) {
    // SAFETY: plain syscall on a process of the test's own platform.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_killed_again_and_again_while_messages_flow_loses_and_doubles_nothing() {
    let zoo = unique("zoo");
    let (p, http, token, topic) = zoo_with_tortoise_stream(&zoo, stream_agreement(&zoo, &Stream::default())).await;
    let id = start(&http, &token, &zoo, "tortoise-stream", 1).await[0]["id"].as_str().unwrap().to_owned();
    wait_state(&http, &token, &zoo, &id, "running", Duration::from_secs(30)).await;

    let total = 60_000u64;
    // Six chunks of 10,000 messages; after every other one, the run is killed part way through it.
    let mut last = String::new();
    for chunk in 0..6u64 {
        produce(&topic, (chunk * 10_000..(chunk + 1) * 10_000).map(reading).collect()).await;
        if chunk % 2 == 0 {
            last = next_run_writing(&p, (&http, &token, &zoo, &id), "pid", &last, total).await;
            sigkill(last.parse().unwrap());
        }
    }
    wait_docs(&p, &zoo, total as i64, Duration::from_secs(120)).await;
    let i = wait_state(&http, &token, &zoo, &id, "running", Duration::from_secs(30)).await;
    assert_eq!(i["restarts_total"], 3, "each kill -9 is one restart: {i}");
    assert_eq!(running_instance_ids(&zoo), vec![id.clone()], "exactly one process for the instance");
    wait_committed(&format!("{zoo}.tortoise-stream"), &topic, Duration::from_secs(60)).await;
    assert_eq!(p.count_docs(&zoo, "readings").await, total as i64, "no late duplicates");
    p.cleanup().await;
}

/// A stream agreement for the monitor's loop: reports every 500 ms, slow below 200 messages/s.
fn watched(tenant: &str, max_instances: u32, on_breach: &str) -> String {
    let s = Stream {
        max_instances,
        report_interval: "500ms",
        thresholds: "{min_processing_rate: 200, max_avg_ingestion_time: 10s, breach_reports: 3, cooldown: 30s}",
        on_breach,
        ..Default::default()
    };
    stream_agreement(tenant, &s)
}

pub async fn get_list(http: &Http, token: &str, path: &str) -> Vec<Value> {
    let r = http.get(path, token).await;
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    r.json()["items"].as_array().unwrap().clone()
}

/// A slow app is scaled out to the bound after `breach_reports` bad reports, and nothing more
/// happens within the cooldown; the same slow app with nothing to read is never judged.
async fn slow_app_scales_out_once_within_the_cooldown(monitor_in_process: bool) {
    let (zoo, idle) = (unique("slow"), unique("idle"));
    let mut p =
        TestPlatform::new(&[(&zoo, watched(&zoo, 2, "scale_out")), (&idle, watched(&idle, 2, "scale_out"))]).await;
    p.monitor_in_process = monitor_in_process;
    p.start().await;
    let mut monitor = (!monitor_in_process).then(|| p.spawn_serve("monitor", "monitor.log"));
    let http = p.http();
    let (token, idle_token) = (p.token(Some(&zoo)), p.token(Some(&idle)));
    upload(&http, &token, &zoo, stream_app("tortoise-stream", "--delay-per-record 10")).await;
    upload(&http, &idle_token, &idle, stream_app("tortoise-stream", "--delay-per-record 10")).await;
    let topic = format!("{zoo}.readings");
    wait_topic(&topic).await;
    wait_topic(&format!("{idle}.readings")).await;
    let first = start(&http, &token, &zoo, "tortoise-stream", 1).await[0]["id"].as_str().unwrap().to_owned();
    start(&http, &idle_token, &idle, "tortoise-stream", 1).await;
    wait_state(&http, &token, &zoo, &first, "running", Duration::from_secs(30)).await;
    // About 100 messages/s per instance against 200 required: 5,000 waiting is a long backlog.
    produce(&topic, (0..5_000).map(reading).collect()).await;

    let actions_path = format!("/v1/tenants/{zoo}/actions");
    eventually(Duration::from_secs(30), "the manager to scale out", async || {
        get_list(&http, &token, &actions_path).await.iter().any(|a| a["outcome"] == "applied")
    })
    .await;
    // Three more notifications land within the cooldown; none of them changes anything.
    eventually(Duration::from_secs(20), "three notifications within the cooldown", async || {
        get_list(&http, &token, &actions_path).await.iter().filter(|a| a["outcome"] == "skipped").count() >= 3
    })
    .await;
    let actions = get_list(&http, &token, &actions_path).await;
    let applied: Vec<&Value> = actions.iter().filter(|a| a["outcome"] == "applied").collect();
    assert_eq!(applied.len(), 1, "one action within the cooldown: {actions:#?}");
    assert_eq!(applied[0]["action"], "scale_out");
    assert_eq!((applied[0]["instances_before"].as_i64(), applied[0]["instances_after"].as_i64()), (Some(1), Some(2)));
    assert!(applied[0]["detail"].as_str().unwrap().contains("from 1 to 2"), "{}", applied[0]);
    for skipped in actions.iter().filter(|a| a["outcome"] == "skipped") {
        let d = skipped["detail"].as_str().unwrap();
        assert!(d.contains("within the cooldown of 30s") || d.contains("max_instances of 2"), "{d}");
    }
    // The notification that caused it: below threshold after three bad reports, with the reasons.
    let notifications = get_list(&http, &token, &format!("/v1/tenants/{zoo}/notifications")).await;
    let cause = notifications.iter().find(|n| n["id"] == applied[0]["notification"]).expect("the cause is stored");
    assert_eq!((cause["kind"].as_str(), cause["action"].as_str()), (Some("below_threshold"), Some("scale_out")));
    let reason = &cause["reasons"][0];
    assert_eq!(reason["metric"], "processing_rate");
    assert!(reason["observed"].as_f64().unwrap() < 200.0 && reason["threshold"] == 200.0, "{reason}");
    let reports = get_list(&http, &token, &format!("/v1/tenants/{zoo}/reports?instance={first}")).await;
    assert!(reports.iter().filter(|r| r["verdict"] == "breach").count() >= 3, "{reports:#?}");
    assert!(reports.iter().all(|r| r["verdict"] != "breach" || r["lag"].as_i64().unwrap() > 0));
    // Scaled to the bound: two instances, the second caused by that notification.
    let all = instances(&http, &token, &zoo).await;
    assert_eq!(all.len(), 2, "{all:#?}");
    let second = all.iter().find(|i| i["id"] != first.as_str()).unwrap();
    assert_eq!(second["cause"], format!("scale_out: notification {}", cause["id"].as_str().unwrap()));
    wait_state(&http, &token, &zoo, second["id"].as_str().unwrap(), "running", Duration::from_secs(30)).await;

    // The idle tenant's slow app reported all along with nothing to read: never judged, never acted on.
    let idle_path = format!("/v1/tenants/{idle}/reports");
    // Under load its start may lag the busy tenant's: wait for five reports rather than assume them.
    eventually(Duration::from_secs(20), "five reports of the idle app judged idle", async || {
        get_list(&http, &idle_token, &idle_path).await.iter().filter(|r| r["verdict"] == "idle").count() >= 5
    })
    .await;
    let idle_reports = get_list(&http, &idle_token, &idle_path).await;
    // A report that reached the monitor too late is "stale" (seen under a heavily loaded machine,
    // 7 s after its window): not judged either.
    let unjudged = |r: &Value| (r["verdict"] == "idle" && r["lag"] == 0) || r["verdict"] == "stale";
    assert!(idle_reports.iter().all(unjudged), "{idle_reports:#?}");
    assert!(get_list(&http, &idle_token, &format!("/v1/tenants/{idle}/notifications")).await.is_empty());
    assert!(get_list(&http, &idle_token, &format!("/v1/tenants/{idle}/actions")).await.is_empty());
    assert_eq!(instances(&http, &idle_token, &idle).await.len(), 1);
    if let Some(m) = monitor.as_mut() {
        let _ = m.kill();
        let _ = m.wait();
    }
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_app_is_scaled_out_once_within_the_cooldown_with_monitor_and_manager_in_one_process() {
    slow_app_scales_out_once_within_the_cooldown(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_app_is_scaled_out_once_within_the_cooldown_with_the_monitor_in_its_own_process() {
    slow_app_scales_out_once_within_the_cooldown(false).await;
}

/// A report as the contract has it, with `fields` replaced.
fn report(tenant: &str, app: &str, instance: &str, fields: &[(&str, Value)]) -> String {
    let now = chrono::Utc::now();
    let mut r = serde_json::json!({
        "version": 1, "tenant": tenant, "app": app, "instance": instance,
        "window_start": (now - chrono::Duration::seconds(10)).to_rfc3339(), "window_end": now.to_rfc3339(),
        "messages": 10, "bytes": 2000, "rejected": 0, "avg_ingestion_ms": 99999.0, "p95_ingestion_ms": 99999.0,
        "processing_rate": 0.001, "throughput_bytes_per_s": 0.2
    });
    for (k, v) in fields {
        r[*k] = v.clone();
    }
    r.to_string()
}

fn publish_report(key: &str, payload: &str) {
    let producer: ThreadedProducer<DefaultProducerContext> =
        ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create().unwrap();
    producer.send(BaseRecord::to("mysimbdp.metrics").key(key).payload(payload)).unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn untrustworthy_reports_are_counted_and_dropped_and_decide_nothing() {
    let (zoo, other) = (unique("zoo"), unique("other"));
    let mut p =
        TestPlatform::new(&[(&zoo, watched(&zoo, 3, "scale_out")), (&other, watched(&other, 3, "scale_out"))]).await;
    p.start().await;
    let (http, token) = (p.http(), p.token(Some(&zoo)));
    upload(&http, &token, &zoo, stream_app("tortoise-stream", "")).await;
    wait_topic(&format!("{zoo}.readings")).await;
    let id = start(&http, &token, &zoo, "tortoise-stream", 1).await[0]["id"].as_str().unwrap().to_owned();
    wait_state(&http, &token, &zoo, &id, "running", Duration::from_secs(30)).await;
    // Messages wait in the topic while the forged reports arrive, so a trusted slow report would count.
    let key = format!("{zoo}/tortoise-stream/{id}");
    let stranger = uuid::Uuid::new_v4().to_string();
    for _ in 0..3 {
        publish_report(&key, "{\"version\": 1, \"tenant\": ");
        publish_report(&key, &report(&other, "tortoise-stream", &id, &[]));
        publish_report(&format!("{zoo}/tortoise-stream/{stranger}"), &report(&zoo, "tortoise-stream", &stranger, &[]));
        publish_report(&key, &report(&zoo, "tortoise-stream", &id, &[("processing_rate", serde_json::json!(-5.0))]));
        publish_report(&key, &report(&zoo, "tortoise-stream", &id, &[("extra", serde_json::json!(1))]));
    }
    let reports_path = format!("/v1/tenants/{zoo}/reports?limit=1000");
    eventually(Duration::from_secs(20), "every forged report counted", async || {
        let dropped = http.get(&reports_path, &token).await.json()["dropped"].clone();
        let count = |reason: &str| {
            dropped
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["reason"] == reason)
                .map_or(0, |d| d["count"].as_i64().unwrap())
        };
        count("malformed") == 6
            && count("tenant_mismatch") == 3
            && count("unknown_instance") == 3
            && count("implausible") == 3
    })
    .await;
    let r = http.get(&reports_path, &token).await.json();
    let details: Vec<&str> =
        r["dropped"].as_array().unwrap().iter().map(|d| d["last_detail"].as_str().unwrap()).collect();
    assert!(
        details.iter().any(|d| d.contains(&format!("names tenant `{other}` but its key names `{zoo}`"))),
        "{details:?}"
    );
    assert!(details.iter().any(|d| d.contains("no instance of this tenant has that id")), "{details:?}");
    // None was trusted, judged or acted on.
    let trusted = r["items"].as_array().unwrap();
    assert!(!trusted.is_empty(), "the app's own reports are trusted");
    assert!(trusted.iter().all(|t| t["instance"] == id.as_str() && t["avg_ingestion_ms"].as_f64().unwrap() < 99999.0));
    assert!(get_list(&http, &token, &format!("/v1/tenants/{zoo}/notifications")).await.is_empty());
    assert!(get_list(&http, &token, &format!("/v1/tenants/{zoo}/actions")).await.is_empty());
    assert_eq!(instances(&http, &token, &zoo).await.len(), 1);
    // The other tenant, whom the forged body named, has nothing counted against it.
    let other_token = p.token(Some(&other));
    let theirs = http.get(&format!("/v1/tenants/{other}/reports"), &other_token).await.json();
    assert_eq!(theirs["dropped"].as_array().unwrap().len(), 0, "{theirs}");
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_platform_killed_while_instances_run_restarts_each_once_and_loses_nothing() {
    let zoo = unique("zoo");
    let mut p = TestPlatform::new(&[(&zoo, stream_agreement(&zoo, &Stream::default()))]).await;
    p.start_process().await;
    let (token, topic) = (p.token(Some(&zoo)), format!("{zoo}.readings"));
    upload(&p.http(), &token, &zoo, stream_app("tortoise-stream", "")).await;
    wait_topic(&topic).await;
    let ids: Vec<String> = start(&p.http(), &token, &zoo, "tortoise-stream", 2)
        .await
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect();
    for id in &ids {
        wait_state(&p.http(), &token, &zoo, id, "running", Duration::from_secs(30)).await;
    }
    produce(&topic, (0..20_000).map(reading).collect()).await;
    p.kill9();
    // The instances die with the platform (parent-death signal): nothing runs unsupervised.
    eventually(Duration::from_secs(5), "the instances to end with the platform", async || {
        running_instance_ids(&zoo).is_empty()
    })
    .await;
    produce(&topic, (20_000..40_000).map(reading).collect()).await;
    p.start_process().await;
    let http = p.http();
    wait_docs(&p, &zoo, 40_000, Duration::from_secs(120)).await;
    for id in &ids {
        wait_state(&http, &token, &zoo, id, "running", Duration::from_secs(30)).await;
    }
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(running_instance_ids(&zoo), expected, "each instance runs exactly once again");
    assert_eq!(instances(&http, &token, &zoo).await.len(), 2, "no instance added or lost");
    wait_committed(&format!("{zoo}.tortoise-stream"), &topic, Duration::from_secs(60)).await;
    assert_eq!(p.count_docs(&zoo, "readings").await, 40_000);
    // Where the broker resumed a partition past its committed offset, the app went back for the rest.
    for id in &ids {
        let log = http.get(&format!("/v1/tenants/{zoo}/instances/{id}/log"), &token).await.text();
        let (sought, back) = (log.matches("seeking back").count(), log.matches("back at the committed offset").count());
        eprintln!("instance {id}: {sought} seeks back, {back} partitions resumed at their committed offset");
        assert!(sought == 0 || back > 0, "{log}");
    }
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_apps_environment_reaches_only_its_own_tenants_topics_and_coredms() {
    use sqlx::{Connection, PgConnection};
    let (a, b) = (unique("iso-a"), unique("iso-b"));
    // The test's apps never report; a long interval keeps the monitor from restarting them as silent.
    let s = Stream { report_interval: "1m", ..Default::default() };
    let mut p = TestPlatform::new(&[(&a, stream_agreement(&a, &s)), (&b, stream_agreement(&b, &s))]).await;
    p.start().await;
    let http = p.http();
    let (ta, tb) = (p.token(Some(&a)), p.token(Some(&b)));
    upload(&http, &ta, &a, script_app("env", "exec sleep 600")).await;
    upload(&http, &tb, &b, script_app("env", "exec sleep 600")).await;
    let ia = start(&http, &ta, &a, "env", 1).await[0]["id"].as_str().unwrap().to_owned();
    start(&http, &tb, &b, "env", 1).await;
    let running = wait_state(&http, &ta, &a, &ia, "running", Duration::from_secs(30)).await;
    // The recorded pid is the instance's sandbox (its init, with an empty environment); the app is
    // its child.
    let pid = running["pid"].as_i64().unwrap();
    let app = std::cell::RefCell::new(String::new());
    eventually(Duration::from_secs(10), "the sandbox to start the app", async || {
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        *app.borrow_mut() = children.split_whitespace().next().unwrap_or_default().to_owned();
        // Started, and past its exec (a child still building shows the init's empty environment).
        !app.borrow().is_empty()
            && std::fs::read(format!("/proc/{}/environ", app.borrow())).is_ok_and(|e| !e.is_empty())
    })
    .await;
    let app = app.into_inner();
    assert!(std::fs::read(format!("/proc/{pid}/environ")).unwrap().is_empty(), "the init holds no environment");
    let raw = std::fs::read(format!("/proc/{app}/environ")).unwrap();
    let env: std::collections::BTreeMap<String, String> = raw
        .split(|c| *c == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok()?.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .filter(|(k, _)| k != "PWD") // added by /bin/sh, which runs the test's script
        .collect();
    let keys: Vec<&str> = env.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "HOME",
            "KAFKA_BROKERS",
            "LANG",
            "MYSIMBDP_APP",
            "MYSIMBDP_CONSUMER_GROUP",
            "MYSIMBDP_COREDMS_DB",
            "MYSIMBDP_COREDMS_URL",
            "MYSIMBDP_GROUP_INSTANCE_ID",
            "MYSIMBDP_INPUT_TOPICS",
            "MYSIMBDP_INSTANCE_ID",
            "MYSIMBDP_MAX_MESSAGE_SIZE",
            "MYSIMBDP_METRICS_TOPIC",
            "MYSIMBDP_REPORT_INTERVAL_MS",
            "MYSIMBDP_REPORT_KEY",
            "MYSIMBDP_TENANT",
            "PATH",
            "SHLVL",
        ]
        .into_iter()
        .filter(|k| *k != "SHLVL" || env.contains_key("SHLVL"))
        .collect::<Vec<_>>(),
        "exactly the contract's variables"
    );
    assert_eq!(env["MYSIMBDP_INPUT_TOPICS"], format!("{a}.readings"));
    assert_eq!(env["MYSIMBDP_CONSUMER_GROUP"], format!("{a}.env"));
    assert_eq!(env["MYSIMBDP_GROUP_INSTANCE_ID"], format!("{a}.env-0"), "a static member of its own group");
    assert_eq!(env["MYSIMBDP_INSTANCE_ID"], ia);
    // Its own report key: the one the store holds for it, never shown by the API, not guessable.
    let key = &env["MYSIMBDP_REPORT_KEY"];
    let stored: String = sqlx::query_scalar("select report_key from stream_instances where id = $1::uuid")
        .bind(&ia)
        .fetch_one(&p.db)
        .await
        .unwrap();
    assert_eq!(key, &stored);
    assert!(key.len() == 64 && key.bytes().all(|c| c.is_ascii_hexdigit()), "{key}");
    let shown = http.get(&format!("/v1/tenants/{a}/instances/{ia}"), &ta).await.text();
    assert!(!shown.contains(key.as_str()) && !shown.contains("report_key"), "{shown}");
    assert!(env.values().all(|v| !v.contains(&b)), "nothing of {b} in {a}'s environment: {env:?}");
    let b_db = p.tenant(&b).coredms_name();
    let url = &env["MYSIMBDP_COREDMS_URL"];
    PgConnection::connect(url).await.expect("A's credentials open A's database");
    let err = PgConnection::connect(&mysimbdp_e2e::with_database(url, &b_db)).await.expect_err("not B's");
    assert!(err.to_string().contains("permission denied for database"), "{err}");
    // Through the API, B sees none of A's instances, reports or records.
    for path in [
        format!("/v1/tenants/{a}/instances"),
        format!("/v1/tenants/{a}/instances/{ia}"),
        format!("/v1/tenants/{a}/instances/{ia}/log"),
        format!("/v1/tenants/{a}/reports"),
        format!("/v1/tenants/{a}/notifications"),
        format!("/v1/tenants/{a}/actions"),
    ] {
        assert_eq!(http.get(&path, &tb).await.status, 404, "{path}");
    }
    let r = http.call("DELETE", &format!("/v1/tenants/{a}/instances/{ia}"), Some(&tb), None).await;
    assert_eq!(r.status, 404);
    assert_eq!(instance(&http, &ta, &a, &ia).await["desired"], "running");
    let r = http.get(&format!("/v1/tenants/{b}/instances/{ia}"), &tb).await;
    assert_eq!(r.status, 404, "A's instance id under B's own path");
    p.cleanup().await;
}

/// One request to the container engine's API over its unix socket; the JSON answer.
fn engine(method: &str, path: &str) -> (u16, Value) {
    use std::io::{Read, Write};
    let socket = mysimbdp_e2e::container_socket();
    let mut conn = std::os::unix::net::UnixStream::connect(socket.trim_start_matches("unix://")).unwrap();
    write!(conn, "{method} {path} HTTP/1.0\r\nHost: engine\r\nContent-Length: 0\r\n\r\n").unwrap();
    let mut raw = String::new();
    conn.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_container_runtime_starts_restarts_after_kill_9_and_stops_with_exact_counts() {
    // The platform's own kill -9 tests cover the process runtime; here the engine delivers the SIGKILL.
    let zoo = unique("box");
    let agreement = stream_agreement(&zoo, &Stream::default())
        .replace("  memory: 256MiB\n", "  memory: 256MiB\n  cpus: 0.5\n  runtime: container\n");
    let mut p = TestPlatform::new(&[(&zoo, agreement)]).await;
    p.start().await;
    let (http, token) = (p.http(), p.token(Some(&zoo)));
    // The real program (stripped to keep the image small) as the entrypoint: the image has no shell.
    let exe = stripped("tortoise-stream");
    let manifest = b"name: tortoise-stream\nkind: stream\nentrypoint: bin/tortoise-stream\nversion: 1.0.0\n";
    let archive =
        tar_gz(&[Member::File("app.yaml", manifest, 0o644), Member::File("bin/tortoise-stream", &exe, 0o755)]);
    upload(&http, &token, &zoo, archive).await;
    let topic = format!("{zoo}.readings");
    wait_topic(&topic).await;
    let id = start(&http, &token, &zoo, "tortoise-stream", 1).await[0]["id"].as_str().unwrap().to_owned();
    let running = wait_state(&http, &token, &zoo, &id, "running", Duration::from_secs(120)).await;
    assert_eq!(running["runtime"], "container");
    let container = running["container_id"].as_str().expect("a container id").to_owned();
    let (status, inspect) = engine("GET", &format!("/v1.41/containers/{container}/json"));
    assert_eq!(status, 200, "{inspect}");
    assert_eq!(inspect["HostConfig"]["Memory"], 256 << 20, "the agreement's memory limit");
    assert_eq!(inspect["HostConfig"]["NanoCpus"], 500_000_000, "the agreement's CPUs");
    assert_eq!(inspect["Name"].as_str().map(|n| n.trim_start_matches('/')), Some(format!("mysimbdp-{id}").as_str()));
    // The sandbox's boundary, kept by the engine: the tenant's own uid, no capabilities, no new
    // privileges, a read-only root, the agreement's process limit, an image of the tenant's own.
    let uid = mysimbdp::store::accounts::get(&p.db, &p.tenant(&zoo)).await.unwrap().expect("an account");
    assert_eq!(inspect["Config"]["User"], format!("{uid}:{uid}"), "{inspect}");
    assert!(uid >= 2_000_000_000, "{uid}");
    // What the kernel says of the running program, whatever the engine's inspect calls it.
    let pid = inspect["State"]["Pid"].as_i64().expect("the container's pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    for line in ["CapEff:\t0000000000000000", "CapBnd:\t0000000000000000", "NoNewPrivs:\t1", &format!("Uid:\t{uid}\t")]
    {
        assert!(status.contains(line), "{line}: {status}");
    }
    assert_eq!(inspect["HostConfig"]["ReadonlyRootfs"], true, "{inspect}");
    assert_eq!(inspect["HostConfig"]["PidsLimit"], 256, "the agreement's max_processes (default)");
    let image = inspect["Config"]["Image"].as_str().unwrap_or_default();
    assert!(image.contains(&format!("mysimbdp/{zoo}/")), "{image}");

    let total = 30_000u64;
    // SIGKILL to the container through the engine (`docker kill`) after each of the first two chunks
    // of 10,000 messages, part way through it.
    let mut last = String::new();
    for chunk in 0..3u64 {
        produce(&topic, (chunk * 10_000..(chunk + 1) * 10_000).map(reading).collect()).await;
        if chunk < 2 {
            last = next_run_writing(&p, (&http, &token, &zoo, &id), "container_id", &last, total).await;
            let (status, answer) = engine("POST", &format!("/v1.41/containers/{last}/kill?signal=KILL"));
            assert_eq!(status, 204, "{answer}");
        }
    }
    wait_docs(&p, &zoo, total as i64, Duration::from_secs(120)).await;
    let i = wait_state(&http, &token, &zoo, &id, "running", Duration::from_secs(60)).await;
    assert_eq!(i["restarts_total"], 2, "{i}");
    assert_eq!(running_instance_ids(&zoo), vec![id.clone()], "exactly one program for the instance");

    let r = http.call("DELETE", &format!("/v1/tenants/{zoo}/instances/{id}"), Some(&token), None).await;
    assert_eq!(r.status, 202);
    let exited = wait_state(&http, &token, &zoo, &id, "exited", Duration::from_secs(30)).await;
    assert_eq!(exited["exit_code"], 0, "SIGTERM through the engine, a clean exit: {exited}");
    let log = http.get(&format!("/v1/tenants/{zoo}/instances/{id}/log"), &token).await.text();
    assert!(log.contains("stopped cleanly"), "{log}");
    let gone = exited["container_id"].as_str().unwrap();
    assert_eq!(engine("GET", &format!("/v1.41/containers/{gone}/json")).0, 404, "the container is removed");
    assert_eq!(p.count_docs(&zoo, "readings").await, total as i64);
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let zoo = unique("zoo");
    let agreement = stream_agreement(&zoo, &Stream { report_interval: "1m", ..Default::default() })
        // Long enough for the shell to run its trap on a loaded machine (at 1 s it did not, once).
        .replace("  stop_grace: 5s", "  stop_grace: 3s");
    let mut p = TestPlatform::new(&[(&zoo, agreement)]).await;
    p.start().await;
    let (http, token) = (p.http(), p.token(Some(&zoo)));
    upload(
        &http,
        &token,
        &zoo,
        script_app("stubborn", "trap 'echo ignoring TERM' TERM\necho trapped\nwhile true; do sleep 0.1; done"),
    )
    .await;
    let id = start(&http, &token, &zoo, "stubborn", 1).await[0]["id"].as_str().unwrap().to_owned();
    wait_state(&http, &token, &zoo, &id, "running", Duration::from_secs(30)).await;
    // "running" is the program started, not yet its trap set: a SIGTERM before that ends the shell.
    let log_path = format!("/v1/tenants/{zoo}/instances/{id}/log");
    eventually(Duration::from_secs(10), "the app's trap set", async || {
        http.get(&log_path, &token).await.text().contains("trapped")
    })
    .await;
    let asked = Instant::now();
    let r = http.call("DELETE", &format!("/v1/tenants/{zoo}/instances/{id}"), Some(&token), None).await;
    assert_eq!(r.status, 202);
    let exited = wait_state(&http, &token, &zoo, &id, "exited", Duration::from_secs(30)).await;
    assert!(asked.elapsed() >= Duration::from_secs(3), "not before the grace period");
    assert_eq!(exited["exit_signal"], libc::SIGKILL, "{exited}");
    assert!(exited["detail"].as_str().unwrap().contains("killed after the grace period"), "{exited}");
    // The log is copied from the program's pipe as it comes; under load the last line may land after
    // the state change.
    eventually(Duration::from_secs(10), "SIGTERM came first: the app's trap wrote to its log", async || {
        http.get(&log_path, &token).await.text().contains("ignoring TERM")
    })
    .await;
    assert!(running_instance_ids(&zoo).is_empty());
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_that_stops_reporting_is_restarted_by_the_loop() {
    let zoo = unique("zoo");
    let s = Stream {
        report_interval: "300ms",
        on_breach: "notify",
        thresholds: "{min_processing_rate: 1, max_avg_ingestion_time: 10s, breach_reports: 3, cooldown: 1m}",
        ..Default::default()
    };
    let mut p = TestPlatform::new(&[(&zoo, stream_agreement(&zoo, &s))]).await;
    p.start().await;
    let (http, token) = (p.http(), p.token(Some(&zoo)));
    upload(&http, &token, &zoo, script_app("mute", "echo started; exec sleep 600")).await;
    let id = start(&http, &token, &zoo, "mute", 1).await[0]["id"].as_str().unwrap().to_owned();
    wait_state(&http, &token, &zoo, &id, "running", Duration::from_secs(30)).await;
    let actions_path = format!("/v1/tenants/{zoo}/actions");
    eventually(Duration::from_secs(20), "the silent instance restarted", async || {
        get_list(&http, &token, &actions_path).await.iter().any(|a| a["outcome"] == "applied")
    })
    .await;
    let notes = get_list(&http, &token, &format!("/v1/tenants/{zoo}/notifications")).await;
    let silent = notes.iter().find(|n| n["kind"] == "silent").expect("a silent notification");
    assert_eq!((silent["action"].as_str(), silent["instance"].as_str()), (Some("restart"), Some(id.as_str())));
    assert_eq!(silent["reasons"][0]["metric"], "seconds_since_report");
    let action = &get_list(&http, &token, &actions_path).await[0];
    assert_eq!(action["detail"], format!("restarted instance {id}"));
    eventually(Duration::from_secs(20), "the instance's second run", async || {
        let log = http.get(&format!("/v1/tenants/{zoo}/instances/{id}/log"), &token).await.text();
        log.matches("started\n").count() == 2
    })
    .await;
    let i = wait_state(&http, &token, &zoo, &id, "running", Duration::from_secs(30)).await;
    assert_eq!(i["restarts_total"], 1, "a restart the manager asked for counts against max_restarts: {i}");
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_business_key_stores_an_event_produced_twice_once() {
    let food = unique("food");
    let agreement = stream_agreement(&food, &Stream::default()).replace("name: readings", "name: orders");
    let mut p = TestPlatform::new(&[(&food, agreement)]).await;
    p.start().await;
    let (http, token) = (p.http(), p.token(Some(&food)));
    upload(&http, &token, &food, bundle("orders-stream", "stream", "exec \"$APP/orders-stream\"", &["orders-stream"]))
        .await;
    let topic = format!("{food}.orders");
    wait_topic(&topic).await;
    let id = start(&http, &token, &food, "orders-stream", 1).await[0]["id"].as_str().unwrap().to_owned();
    wait_state(&http, &token, &food, &id, "running", Duration::from_secs(30)).await;
    // 1,000 status changes, each produced three times (a producer retrying), and two the seed's rules drop.
    let event = |n: u64| {
        let status = ["placed", "cooking", "delivered"][(n % 3) as usize];
        format!("{{\"order_id\": {}, \"customer_name\": \"c{n}\", \"restaurant_name\": \"r\", \"item\": \"soup\", \"amount\": 12.5, \"order_status\": \"{status}\", \"created_at\": \"2026-11-21 10:00:00\"}}", n / 3)
    };
    let mut payloads: Vec<String> = (0..3).flat_map(|_| (0..1000).map(event)).collect();
    payloads.push("{\"amount\": 5, \"created_at\": \"2026-11-21 10:00:00\"}".into());
    payloads.push("{\"order_id\": 9, \"amount\": 0, \"created_at\": \"2026-11-21 10:00:00\"}".into());
    produce(&topic, payloads).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = http.get(&format!("/v1/tenants/{food}/reports?limit=1000"), &token).await.json();
        let items = r["items"].as_array().unwrap().clone();
        let sum = |k: &str| items.iter().map(|i| i[k].as_i64().unwrap()).sum::<i64>();
        if sum("messages") == 3000 && sum("rejected") == 2 {
            break;
        }
        if Instant::now() > deadline {
            let log = http.get(&format!("/v1/tenants/{food}/instances/{id}/log"), &token).await.text();
            let docs = p.count_docs(&food, "orders").await;
            panic!(
                "{} messages, {} rejected, {docs} documents; instance {}; log:\n{log}",
                sum("messages"),
                sum("rejected"),
                instance(&http, &token, &food, &id).await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(p.count_docs(&food, "orders").await, 1000, "one document per order and status");
    let doc = p.doc(&food, "orders", "5:delivered").await;
    assert_eq!((doc["amount_cents"].as_i64(), doc["status"].as_str()), (Some(1250), Some("delivered")));
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_whose_agreement_is_withdrawn_has_its_instances_stopped() {
    let zoo = unique("zoo");
    let (p, http, token, _topic) = zoo_with_tortoise_stream(&zoo, stream_agreement(&zoo, &Stream::default())).await;
    let id = start(&http, &token, &zoo, "tortoise-stream", 1).await[0]["id"].as_str().unwrap().to_owned();
    wait_state(&http, &token, &zoo, &id, "running", Duration::from_secs(30)).await;
    // The start is recorded as the program is spawned, a moment before it has its environment.
    eventually(Duration::from_secs(10), "the instance's program running", async || {
        running_instance_ids(&zoo) == vec![id.clone()]
    })
    .await;

    std::fs::remove_file(p.tenants_dir.join(format!("{zoo}.yaml"))).unwrap();
    eventually(Duration::from_secs(30), "the withdrawn tenant's instance to end", async || {
        running_instance_ids(&zoo).is_empty()
    })
    .await;
    let (db, tenant, id) = (p.db.clone(), p.tenant(&zoo), id.parse().unwrap());
    eventually(Duration::from_secs(10), "the instance recorded as stopped", async || {
        let inst = mysimbdp::store::instances::get(&db, &tenant, id).await.unwrap().unwrap();
        (inst.desired.as_str(), inst.state.as_str()) == ("stopped", "exited")
    })
    .await;
    p.cleanup().await;
}
