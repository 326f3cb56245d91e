//! A stream app's whole loop, by the contract: consume the tenant's topics in the app's consumer
//! group, wrangle each message into a document (or reject it), write batches idempotently into the
//! tenant's coredms, commit offsets only after the write, publish a metrics report every interval,
//! and on SIGTERM write and commit what was read, publish a last report and exit 0.
//!
//! Reading and writing overlap: the consumer thread fills the next batch while writer threads write
//! earlier ones over their own connections (`stream_writers`), committing offsets in reading order. A document's `_id`
//! is `<topic>/<partition>/<offset>` unless the app gives a business key, so a message read again after a crash or a rebalance lands on
//! the same document: no loss (offsets are committed after the write) and no duplicates. `resume`
//! checks that the broker really resumes each partition at the committed offset.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message as _, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use crate::coredms::{CoreDms, Doc};
use crate::env::var;
use crate::metrics::Window;
use crate::resume::{Resume, Verdict};
use crate::stream_writers::{collection_for, Batch, Shared, Writers};
use mysimbdp_contract::env;

/// The stream app's environment, as the platform sets it.
#[derive(Clone, Debug)]
pub struct StreamEnv {
    pub brokers: String,
    pub tenant: String,
    pub app: String,
    pub instance: String,
    pub topics: Vec<String>,
    pub group: String,
    /// The static member to join the group as (Kafka's `group.instance.id`); a replacement of this
    /// instance gets the same one and takes over its partitions at once.
    pub group_instance_id: Option<String>,
    pub metrics_topic: String,
    /// The instance's own key for signing its metrics reports (`MYSIMBDP_REPORT_KEY`).
    pub report_key: String,
    pub report_interval: Duration,
    pub coredms_url: String,
    pub coredms_db: String,
    /// Messages larger than this are rejected (the agreement's `max_message_size`).
    pub max_message_size: Option<usize>,
}

impl StreamEnv {
    pub fn from_env() -> anyhow::Result<Self> {
        let interval: u64 = var(env::REPORT_INTERVAL_MS)?
            .parse()
            .context("MYSIMBDP_REPORT_INTERVAL_MS is not a whole number of milliseconds")?;
        Ok(StreamEnv {
            brokers: var(env::KAFKA_BROKERS)?,
            tenant: var(env::TENANT)?,
            app: var(env::APP)?,
            instance: var(env::INSTANCE_ID)?,
            topics: var(env::INPUT_TOPICS)?.split(',').filter(|t| !t.is_empty()).map(str::to_owned).collect(),
            group: var(env::CONSUMER_GROUP)?,
            group_instance_id: std::env::var(env::GROUP_INSTANCE_ID).ok().filter(|v| !v.is_empty()),
            metrics_topic: var(env::METRICS_TOPIC)?,
            report_key: var(env::REPORT_KEY)?,
            report_interval: Duration::from_millis(interval.max(100)),
            coredms_url: var(env::COREDMS_URL)?,
            coredms_db: var(env::COREDMS_DB)?,
            max_message_size: std::env::var(env::MAX_MESSAGE_SIZE).ok().and_then(|v| v.parse().ok()),
        })
    }

    /// The collection a topic's documents go to: the topic's name without the tenant's prefix.
    pub fn collection_for<'a>(&self, topic: &'a str) -> &'a str {
        collection_for(&self.tenant, topic)
    }
}

/// One message as the wrangler sees it.
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
    /// The producer's (or broker's) timestamp, ms since the epoch.
    pub timestamp_ms: Option<i64>,
}

/// What the wrangler makes of a message: the document's JSON text (an object) and, if it has one, the
/// business key to use as its `_id` (otherwise `<topic>/<partition>/<offset>`).
#[derive(Clone, Debug)]
pub struct Wrangled {
    pub json: String,
    pub id: Option<String>,
}

impl Wrangled {
    pub fn new(json: String) -> Self {
        Wrangled { json, id: None }
    }

    /// Stores the document under this key: the same event delivered twice is stored once.
    pub fn with_id(mut self, id: String) -> Self {
        self.id = Some(id);
        self
    }
}

/// Tuning of the loop; the defaults suit messages of a few hundred bytes.
#[derive(Clone, Debug)]
pub struct StreamOptions {
    /// Documents per write.
    pub batch: usize,
    /// A batch that has waited this long is written even if not full.
    pub linger: Duration,
    /// Connections writing at once (offsets are still committed in order).
    pub writers: usize,
    /// The one collection every topic's documents go to; `None`: each topic's own (its name
    /// without the tenant's prefix).
    pub collection: Option<String>,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions { batch: 5_000, linger: Duration::from_millis(20), writers: 2, collection: None }
    }
}

static TERMINATE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_terminate(_: libc::c_int) {
    TERMINATE.store(true, Ordering::SeqCst);
}

fn catch_sigterm() {
    // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, on_terminate as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_terminate as *const () as libc::sighandler_t);
    }
}

/// Runs a stream app: `wrangle` turns a message into a document or says why the message is
/// rejected. Returns the exit code the contract asks for.
pub fn run_stream(
    app: &str,
    options: StreamOptions,
    wrangle: impl FnMut(&Message<'_>) -> Result<Wrangled, String>,
) -> std::process::ExitCode {
    catch_sigterm();
    match run(app, options, wrangle) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{app}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Rejection reasons printed per run; the rest are only counted.
const REJECTIONS_SHOWN: u64 = 20;

fn run(
    app: &str,
    options: StreamOptions,
    mut wrangle: impl FnMut(&Message<'_>) -> Result<Wrangled, String>,
) -> anyhow::Result<()> {
    let env = StreamEnv::from_env()?;
    let mut config = ClientConfig::new();
    if let Some(member) = &env.group_instance_id {
        // Static membership: a restarted instance (or the one replacing a stopped one) takes the
        // member's place and partitions back at once, instead of waiting for the group to give up on
        // the process that ended. The platform removes the member when the instance ends for good.
        config.set("group.instance.id", member);
    }
    let consumer: Arc<BaseConsumer> = Arc::new(
        config
            .set("bootstrap.servers", &env.brokers)
            .set("group.id", &env.group)
            .set("client.id", format!("{}-{}", env.app, env.instance))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            // tansu (the local broker) holds a fetch for this long even when data is waiting; Kafka
            // answers at once. 10 ms keeps latency low there and costs little here.
            .set("fetch.wait.max.ms", "10")
            .set("queued.min.messages", "200000")
            .create()
            .context("creating the Kafka consumer")?,
    );
    let topics: Vec<&str> = env.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).context("subscribing to the input topics")?;
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &env.brokers)
        .set("linger.ms", "5")
        .create()
        .context("creating the metrics producer")?;
    let mut coredms = CoreDms::connect(&env.coredms_url, &env.coredms_db)?;
    for t in &env.topics {
        coredms.ensure_collection(options.collection.as_deref().unwrap_or_else(|| env.collection_for(t)))?;
    }
    let window = Arc::new(Mutex::new(Window::default()));
    let member = env.group_instance_id.as_deref().map(|m| format!(" member {m}")).unwrap_or_default();
    eprintln!("{app}: instance {} consuming {} as group {}{member}", env.instance, env.topics.join(","), env.group);

    let mut connections = vec![coredms];
    for _ in 1..options.writers.max(1) {
        connections.push(CoreDms::connect(&env.coredms_url, &env.coredms_db)?);
    }
    let shared = Shared {
        app: app.to_owned(),
        tenant: env.tenant.clone(),
        collection: options.collection.clone(),
        consumer: consumer.clone(),
        window: window.clone(),
    };
    let mut writers = Writers::start(connections, shared);

    let mut batch = Batch::new();
    let mut resume = Resume::default();
    let mut assigned = String::new();
    let mut batch_started = Instant::now();
    let mut next_report = Instant::now() + env.report_interval;
    let mut rejected_total = 0u64;
    let mut writer_error = None;
    let mut out_of_reach_said = None;
    while !TERMINATE.load(Ordering::SeqCst) {
        if Instant::now() >= next_report {
            publish(&producer, &env, &window, &consumer);
            next_report += env.report_interval;
            log_assignment(app, &consumer, &mut assigned);
            resume.unstick(&consumer, app);
            // A failed writer stops the app even while no input comes (the platform restarts it).
            if let Err(e) = writers.check() {
                writer_error = Some(e);
                break;
            }
        }
        if let Some(result) = consumer.poll(Duration::from_millis(10)) {
            let m = match result {
                // librdkafka reconnects by itself: a broker out of reach (restarting, cut off) is
                // waited for, not a reason to exit and spend one of the instance's restarts.
                Err(e) if broker_out_of_reach(&e) => {
                    if out_of_reach_said.is_none_or(|at: Instant| at.elapsed() >= Duration::from_secs(10)) {
                        eprintln!("{app}: the broker is out of reach ({e}); waiting for it");
                        out_of_reach_said = Some(Instant::now());
                    }
                    continue;
                }
                other => other.context("reading from the broker")?,
            };
            out_of_reach_said = None;
            if resume.check(&consumer, app, m.topic(), m.partition(), m.offset()) == Verdict::Drop {
                continue;
            }
            let payload = m.payload().unwrap_or_default();
            let msg = Message {
                topic: m.topic(),
                partition: m.partition(),
                offset: m.offset(),
                key: m.key(),
                payload,
                timestamp_ms: m.timestamp().to_millis(),
            };
            let outcome = match env.max_message_size {
                Some(max) if payload.len() > max => {
                    Err(format!("{} bytes is over the agreement's max_message_size of {max}", payload.len()))
                }
                _ => wrangle(&msg),
            };
            match outcome {
                Ok(Wrangled { json, id }) => {
                    let id = id.unwrap_or_else(|| format!("{}/{}/{}", msg.topic, msg.partition, msg.offset));
                    let doc = Doc { id, json };
                    // Per message: no allocation beyond the document itself.
                    match batch.docs.get_mut(msg.topic) {
                        Some(docs) => docs.push(doc),
                        None => {
                            batch.docs.insert(msg.topic.to_owned(), vec![doc]);
                        }
                    }
                    batch.read_at.push((Instant::now(), payload.len() as u64));
                }
                Err(why) => {
                    rejected_total += 1;
                    window.lock().expect("window lock").reject();
                    if rejected_total <= REJECTIONS_SHOWN {
                        eprintln!("{app}: {}/{}/{} rejected: {why}", msg.topic, msg.partition, msg.offset);
                    }
                }
            }
            if batch.is_empty() {
                batch_started = Instant::now();
            }
            match batch.next_offsets.get_mut(msg.topic) {
                Some(partitions) => {
                    partitions.insert(msg.partition, msg.offset + 1);
                }
                None => {
                    batch.next_offsets.insert(msg.topic.to_owned(), HashMap::from([(msg.partition, msg.offset + 1)]));
                }
            }
        }
        let full = batch.read_at.len() >= options.batch;
        let due = !batch.is_empty() && (full || batch_started.elapsed() >= options.linger);
        if due {
            if let Err(e) = writers.send(std::mem::replace(&mut batch, Batch::new())) {
                writer_error = Some(e);
                break;
            }
        }
    }
    // SIGTERM (or a failed writer): write and commit what was read, then a last report.
    if writer_error.is_none() && !batch.is_empty() {
        writer_error = writers.send(batch).err();
    }
    let written = writers.finish();
    publish(&producer, &env, &window, &consumer);
    let _ = producer.flush(Duration::from_secs(5));
    written?;
    if let Some(e) = writer_error {
        return Err(e);
    }
    eprintln!("{app}: stopped cleanly; {rejected_total} messages rejected in this run");
    Ok(())
}

/// Prints the partitions the group gave this instance whenever they change.
fn log_assignment(app: &str, consumer: &BaseConsumer, last: &mut String) {
    let Ok(tpl) = consumer.assignment() else { return };
    let mut now: Vec<String> = tpl.elements().iter().map(|e| format!("{}/{}", e.topic(), e.partition())).collect();
    now.sort();
    let now = now.join(" ");
    if now != *last {
        eprintln!("{app}: reading {}", if now.is_empty() { "no partitions" } else { &now });
        *last = now;
    }
}

fn publish(
    producer: &ThreadedProducer<DefaultProducerContext>,
    env: &StreamEnv,
    window: &Mutex<Window>,
    consumer: &BaseConsumer,
) {
    let mut partitions: std::collections::BTreeMap<String, Vec<i32>> = Default::default();
    if let Ok(assigned) = consumer.assignment() {
        for e in assigned.elements() {
            partitions.entry(e.topic().to_owned()).or_default().push(e.partition());
        }
    }
    let report = window.lock().expect("window lock").close(&env.tenant, &env.app, &env.instance, Some(partitions));
    let key = format!("{}/{}/{}", env.tenant, env.app, env.instance);
    let payload = serde_json::to_vec(&report).expect("a report serialises");
    let signature = crate::metrics::sign(&env.report_key, &payload);
    let headers = OwnedHeaders::new().insert(Header { key: crate::metrics::SIGNATURE_HEADER, value: Some(&signature) });
    let record = BaseRecord::to(&env.metrics_topic).key(&key).payload(&payload).headers(headers);
    if let Err((e, _)) = producer.send(record) {
        eprintln!("{}: publishing the metrics report failed: {e}", env.app);
    }
}

/// Errors by which librdkafka says it cannot reach the broker for now; it keeps trying by itself.
fn broker_out_of_reach(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        e.rdkafka_error_code(),
        Some(Code::AllBrokersDown | Code::BrokerTransportFailure | Code::BrokerNotAvailable | Code::NetworkException)
    )
}
