//! A stream app that writes to the tenant's topics instead of the coredms: consume the app's input
//! topics in its group, turn each message into zero or more records (or reject it), produce them, and
//! commit the input's offsets only once the broker has acknowledged every record produced from what
//! was read before them. Killed anywhere, the next run reads again from the last commit: nothing is
//! lost, and a record produced twice is the same record with the same key, so a keyed reader (a
//! coredms sink, an agent storing by key) keeps it once.
//!
//! The records go to `<tenant>.<topic>`: an app names only its own tenant's topics (the platform's
//! broker gateway refuses any other all the same).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{Message as _, Offset, TopicPartitionList};

use crate::kafka;
use crate::metrics::Window;
use crate::stream::{Message, StreamEnv};

/// A record for one of the tenant's topics.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    /// Without the tenant's prefix, as the agreement's `stream.topics` names it.
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
}

impl Output {
    /// A record whose value is `value` as JSON; `Err` names what cannot be JSON (a map whose keys
    /// are not text, a failing `Serialize`), so a transform can reject the message with `?`.
    pub fn json(topic: &str, key: Option<String>, value: &impl serde::Serialize) -> Result<Self, String> {
        let value = serde_json::to_vec(value).map_err(|e| format!("the record for {topic} cannot be JSON: {e}"))?;
        Ok(Output { topic: topic.to_owned(), key: key.map(String::into_bytes), value })
    }
}

/// Tuning of the loop.
#[derive(Clone, Debug)]
pub struct TransformOptions {
    /// Input messages read before their records are waited for and their offsets committed.
    pub batch: usize,
    /// The longest a message read waits for that.
    pub linger: Duration,
}

impl Default for TransformOptions {
    fn default() -> Self {
        TransformOptions { batch: 2_000, linger: Duration::from_millis(50) }
    }
}

/// Runs a transforming stream app: `transform` turns a message into records for the tenant's
/// topics (none: the message is consumed and nothing written) or says why it is rejected. Returns
/// the exit code the contract asks for.
pub fn run_transform(
    app: &str,
    options: TransformOptions,
    transform: impl FnMut(&Message<'_>) -> Result<Vec<Output>, String>,
) -> std::process::ExitCode {
    kafka::catch_sigterm();
    kafka::exit_code(app, run(app, options, transform))
}

/// Records the first record the broker refused; the loop stops on it before committing anything
/// read after it.
#[derive(Default)]
struct Acks {
    failed: Mutex<Option<String>>,
}

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, m)) = result {
            let mut failed = self.failed.lock().expect("acks lock");
            failed.get_or_insert_with(|| format!("writing to topic {}: {e}", m.topic()));
        }
    }
}

/// What was read since the last commit.
#[derive(Default)]
struct Pending {
    /// The offset to commit per topic and partition: the next one to read.
    next: HashMap<(String, i32), i64>,
    /// Each message's read time and size, recorded in the report once its records are acknowledged.
    read_at: Vec<(Instant, u64)>,
    /// Messages read, rejected ones included, and when the first was.
    count: usize,
    since: Option<Instant>,
}

fn run(
    app: &str,
    options: TransformOptions,
    mut transform: impl FnMut(&Message<'_>) -> Result<Vec<Output>, String>,
) -> anyhow::Result<()> {
    let env = StreamEnv::from_env()?;
    let consumer = kafka::consumer(&env)?;
    let reports = kafka::metrics_producer(&env)?;
    let producer: ThreadedProducer<Acks> = ClientConfig::new()
        .set("bootstrap.servers", &env.brokers)
        .set("acks", "all")
        .set("linger.ms", "5")
        // A broker out of reach this long fails the run; the platform restarts it.
        .set("message.timeout.ms", "120000")
        .create_with_context(Acks::default())
        .context("creating the producer")?;
    let window = Arc::new(Mutex::new(Window::default()));
    eprintln!("{app}: instance {} transforming {} as group {}", env.instance, env.topics.join(","), env.group);

    let mut reader = kafka::Reader::default();
    let mut rejections = kafka::Rejections::default();
    let mut pending = Pending::default();
    let mut chores = kafka::Chores::new(app, &env);
    while !kafka::terminating() {
        chores.due(&env, &consumer, &mut reader, &reports, &window);
        if let Some(m) = reader.next(&consumer, app)? {
            let msg = Message::of(&m);
            let outcome = match kafka::too_large(&env, msg.payload) {
                Some(why) => Err(why),
                None => transform(&msg),
            };
            match outcome {
                Ok(records) => {
                    for r in records {
                        send(&producer, &format!("{}.{}", env.tenant, r.topic), &r)?;
                    }
                    pending.read_at.push((Instant::now(), msg.payload.len() as u64));
                }
                Err(why) => rejections.note(app, &msg, &why, &window),
            }
            pending.next.insert((msg.topic.to_owned(), msg.partition), msg.offset + 1);
            pending.count += 1;
            pending.since.get_or_insert_with(Instant::now);
        }
        if pending.since.is_some_and(|t| pending.count >= options.batch || t.elapsed() >= options.linger) {
            settle(&producer, &consumer, &window, std::mem::take(&mut pending), app)?;
        }
    }
    // SIGTERM: what was read is produced, acknowledged and committed before the last report.
    let settled = settle(&producer, &consumer, &window, pending, app);
    kafka::publish(&reports, &env, &window, &consumer);
    let _ = reports.flush(Duration::from_secs(5));
    settled?;
    eprintln!("{app}: stopped cleanly; {} messages rejected in this run", rejections.total);
    Ok(())
}

/// Hands a record to the producer, waiting while its queue is full.
fn send(producer: &ThreadedProducer<Acks>, topic: &str, r: &Output) -> anyhow::Result<()> {
    loop {
        let mut record = BaseRecord::to(topic).payload(&r.value);
        if let Some(key) = &r.key {
            record = record.key(key);
        }
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((e, _)) if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err((e, _)) => bail!("producing to topic {topic}: {e}"),
        }
    }
}

/// Waits for the broker's acknowledgement of every record produced so far, then commits what was
/// read: the order that makes a crash between the two repeat records rather than lose them.
fn settle(
    producer: &ThreadedProducer<Acks>,
    consumer: &BaseConsumer,
    window: &Mutex<Window>,
    pending: Pending,
    app: &str,
) -> anyhow::Result<()> {
    if pending.next.is_empty() {
        return Ok(());
    }
    producer.flush(rdkafka::util::Timeout::Never).context("waiting for the broker's acknowledgements")?;
    if let Some(failed) = producer.context().failed.lock().expect("acks lock").take() {
        // Nothing read since the last commit is committed: the next run reads it again.
        bail!("{failed}; the messages read since the last commit will be read again");
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), next) in &pending.next {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*next)).expect("a valid offset");
    }
    if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
        // A partition given to another member meanwhile: that member reads the messages again and
        // produces the same records (the contract's at least once); nothing is lost.
        eprintln!("{app}: committing offsets failed (messages will be read again): {e}");
    }
    let mut window = window.lock().expect("window lock");
    for (at, bytes) in pending.read_at {
        window.record(bytes, at.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Output;

    #[test]
    fn a_value_that_cannot_be_json_is_an_error_naming_the_topic_not_a_panic() {
        let out = Output::json("clean", Some("7".into()), &serde_json::json!({"id": 7})).unwrap();
        assert_eq!(
            (out.topic.as_str(), out.key.as_deref(), out.value.as_slice()),
            ("clean", Some(&b"7"[..]), &br#"{"id":7}"#[..])
        );
        let keyed_by_pairs = std::collections::BTreeMap::from([((1, 2), "x")]);
        let err = Output::json("clean", None, &keyed_by_pairs).unwrap_err();
        assert!(err.starts_with("the record for clean cannot be JSON: key must be a string"), "{err}");
    }
}
