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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::producer::Producer;

use crate::coredms::{CoreDms, Doc};
use crate::env::var;
use crate::kafka;
use crate::metrics::Window;
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

impl<'a> Message<'a> {
    pub(crate) fn of(m: &'a BorrowedMessage<'_>) -> Self {
        Message {
            topic: m.topic(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key(),
            payload: m.payload().unwrap_or_default(),
            timestamp_ms: m.timestamp().to_millis(),
        }
    }
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

/// Runs a stream app: `wrangle` turns a message into a document or says why the message is
/// rejected. Returns the exit code the contract asks for.
pub fn run_stream(
    app: &str,
    options: StreamOptions,
    wrangle: impl FnMut(&Message<'_>) -> Result<Wrangled, String>,
) -> std::process::ExitCode {
    kafka::catch_sigterm();
    kafka::exit_code(app, run(app, options, wrangle))
}

fn run(
    app: &str,
    options: StreamOptions,
    mut wrangle: impl FnMut(&Message<'_>) -> Result<Wrangled, String>,
) -> anyhow::Result<()> {
    let env = StreamEnv::from_env()?;
    let consumer = kafka::consumer(&env)?;
    let producer = kafka::metrics_producer(&env)?;
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
    let mut reader = kafka::Reader::default();
    let mut chores = kafka::Chores::new(app, &env);
    let mut batch_started = Instant::now();
    let mut rejections = kafka::Rejections::default();
    let mut writer_error = None;
    while !kafka::terminating() {
        if chores.due(&env, &consumer, &mut reader, &producer, &window) {
            // A failed writer stops the app even while no input comes (the platform restarts it).
            if let Err(e) = writers.check() {
                writer_error = Some(e);
                break;
            }
        }
        if let Some(m) = reader.next(&consumer, app)? {
            let msg = Message::of(&m);
            let payload = msg.payload;
            let outcome = match kafka::too_large(&env, payload) {
                Some(why) => Err(why),
                None => wrangle(&msg),
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
                Err(why) => rejections.note(app, &msg, &why, &window),
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
    kafka::publish(&producer, &env, &window, &consumer);
    let _ = producer.flush(Duration::from_secs(5));
    written?;
    if let Some(e) = writer_error {
        return Err(e);
    }
    eprintln!("{app}: stopped cleanly; {} messages rejected in this run", rejections.total);
    Ok(())
}
