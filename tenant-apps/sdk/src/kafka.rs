//! What both of the SDK's loops ([`crate::run_stream`], [`crate::run_transform`]) do with the broker
//! alike: the consumer as the contract wants it, reading with the broker's outages waited out and
//! `Resume`'s check, the signed metrics reports, and SIGTERM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Header, Message as _, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, ThreadedProducer};

use crate::metrics::Window;
use crate::resume::{Resume, Verdict};
use crate::stream::StreamEnv;

static TERMINATE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_terminate(_: libc::c_int) {
    TERMINATE.store(true, Ordering::SeqCst);
}

/// From here on SIGTERM and SIGINT only ask the loop to finish ([`terminating`]).
pub(crate) fn catch_sigterm() {
    // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, on_terminate as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_terminate as *const () as libc::sighandler_t);
    }
}

/// The contract's exit: 0 after a clean stop, else 1 with the error said (the platform restarts it).
pub(crate) fn exit_code(app: &str, result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{app}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

pub(crate) fn terminating() -> bool {
    TERMINATE.load(Ordering::SeqCst)
}

/// The app's consumer in its group, subscribed to its input topics, committing only by hand.
pub(crate) fn consumer(env: &StreamEnv) -> anyhow::Result<Arc<BaseConsumer>> {
    let mut config = ClientConfig::new();
    if let Some(member) = &env.group_instance_id {
        // Static membership: a restarted instance (or the one replacing a stopped one) takes the
        // member's place and partitions back at once, instead of waiting for the group to give up on
        // the process that ended. The platform removes the member when the instance ends for good.
        config.set("group.instance.id", member);
    }
    let consumer: BaseConsumer = config
        .set("bootstrap.servers", &env.brokers)
        .set("group.id", &env.group)
        .set("client.id", format!("{}-{}", env.app, env.instance))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        // tansu (the local broker) holds a fetch for this long even when data is waiting; Kafka
        // answers at once. 10 ms keeps latency low there and costs little here.
        .set("fetch.wait.max.ms", "10")
        .set("queued.min.messages", "200000")
        // Fetching pauses while a partition's queue is full (the app is slower than the fetcher);
        // the default pause of a second can leave the app idle once it has drained the queue (seen
        // in the lake sink: 0.85 s of nothing in a 1.6 s run).
        .set("fetch.queue.backoff.ms", "10")
        .create()
        .context("creating the Kafka consumer")?;
    let topics: Vec<&str> = env.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).context("subscribing to the input topics")?;
    Ok(Arc::new(consumer))
}

/// The producer of the app's metrics reports.
pub(crate) fn metrics_producer(env: &StreamEnv) -> anyhow::Result<ThreadedProducer<DefaultProducerContext>> {
    ClientConfig::new()
        .set("bootstrap.servers", &env.brokers)
        .set("linger.ms", "5")
        .create()
        .context("creating the metrics producer")
}

/// Reads the next message: a broker out of reach is waited for (and said every 10 s), a message the
/// broker hands out of place is dropped (`Resume`).
#[derive(Default)]
pub(crate) struct Reader {
    resume: Resume,
    out_of_reach_said: Option<Instant>,
}

impl Reader {
    pub(crate) fn next<'c>(
        &mut self,
        consumer: &'c BaseConsumer,
        app: &str,
    ) -> anyhow::Result<Option<BorrowedMessage<'c>>> {
        let Some(result) = consumer.poll(Duration::from_millis(10)) else { return Ok(None) };
        let m = match result {
            // librdkafka reconnects by itself: a broker out of reach (restarting, cut off) is
            // waited for, not a reason to exit and spend one of the instance's restarts.
            Err(e) if broker_out_of_reach(&e) => {
                if self.out_of_reach_said.is_none_or(|at: Instant| at.elapsed() >= Duration::from_secs(10)) {
                    eprintln!("{app}: the broker is out of reach ({e}); waiting for it");
                    self.out_of_reach_said = Some(Instant::now());
                }
                return Ok(None);
            }
            other => other.context("reading from the broker")?,
        };
        self.out_of_reach_said = None;
        if self.resume.check(consumer, app, m.topic(), m.partition(), m.offset()) == Verdict::Drop {
            return Ok(None);
        }
        Ok(Some(m))
    }

    /// Between reports: seeks a partition the broker left stuck (see `Resume::unstick`).
    pub(crate) fn unstick(&mut self, consumer: &BaseConsumer, app: &str) {
        self.resume.unstick(consumer, app);
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

/// The contract's refusal of a message over the agreement's `max_message_size`.
pub(crate) fn too_large(env: &StreamEnv, payload: &[u8]) -> Option<String> {
    let max = env.max_message_size?;
    (payload.len() > max).then(|| format!("{} bytes is over the agreement's max_message_size of {max}", payload.len()))
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

/// What a poll loop does every report interval: sends the report, says when its partitions
/// changed, and unsticks those the broker answers nothing for.
pub(crate) struct Chores {
    /// The name the app's log lines start with.
    app: String,
    next: Instant,
    assigned: String,
}

impl Chores {
    pub(crate) fn new(app: &str, env: &StreamEnv) -> Self {
        Chores { app: app.to_owned(), next: Instant::now() + env.report_interval, assigned: String::new() }
    }

    /// Does the chores if they are due; whether they were.
    pub(crate) fn due(
        &mut self,
        env: &StreamEnv,
        consumer: &BaseConsumer,
        reader: &mut Reader,
        producer: &ThreadedProducer<DefaultProducerContext>,
        window: &Mutex<Window>,
    ) -> bool {
        if Instant::now() < self.next {
            return false;
        }
        publish(producer, env, window, consumer);
        self.next += env.report_interval;
        log_assignment(&self.app, consumer, &mut self.assigned);
        reader.unstick(consumer, &self.app);
        true
    }
}

/// Closes the window into a signed report on the metrics topic.
pub(crate) fn publish(
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

/// Rejection reasons printed per run; the rest are only counted.
const REJECTIONS_SHOWN: u64 = 20;

/// The messages a run refused: counted in the reports, the first few said with their reason.
#[derive(Default)]
pub(crate) struct Rejections {
    pub(crate) total: u64,
}

impl Rejections {
    pub(crate) fn note(&mut self, app: &str, msg: &crate::Message<'_>, why: &str, window: &Mutex<Window>) {
        self.total += 1;
        window.lock().expect("window lock").reject();
        if self.total <= REJECTIONS_SHOWN {
            eprintln!("{app}: {}/{}/{} rejected: {why}", msg.topic, msg.partition, msg.offset);
        }
    }
}
