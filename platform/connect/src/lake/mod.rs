//! The `parquet_lake` sink: a tenant's topics into Parquet files under its lake folder, one folder
//! per topic and date (`<topic>/date=YYYY-MM-DD/`), each message in exactly one file.
//!
//! The files are the sink's own record of progress (`files`): each partition starts again after its
//! last whole flush, whatever the consumer group had committed (the commit comes after the files, so
//! it can only lag behind them; it is kept for the group's lag). A message that does not fit the
//! columns, or has no date, goes to the topic's dead-letter topic `<topic>.dlq` with the reason in
//! its headers, and is counted as rejected in the metrics report; the ones around it carry on.

pub mod columns;
mod fast;
pub mod files;
mod writer;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Map, Value};

use crate::process::{now_ms, stop_on_sigterm, terminating, var};
use crate::publish::{Outgoing, Publisher};
use crate::report::Reporter;
use columns::Columns;
use mysimbdp_contract::env as contract;
use mysimbdp_sdk::resume::{Resume, Verdict};
use writer::{Chunk, Flush, Raw, Writer};

/// The environment a lake sink is given (beside the stream app contract's topics and group).
pub mod env {
    /// The sink's name in the agreement.
    pub const SINK: &str = "MYSIMBDP_SINK";
    /// The tenant's lake folder, where each topic has its own.
    pub const LAKE_DIR: &str = "MYSIMBDP_LAKE_DIR";
    /// The declared columns as JSON (`[{"name": …, "type": …}]`); unset: inferred from the first messages.
    pub const COLUMNS: &str = "MYSIMBDP_LAKE_COLUMNS";
    /// The field whose timestamp dates each row; unset: the message's own timestamp.
    pub const DATE_FIELD: &str = "MYSIMBDP_LAKE_DATE_FIELD";
    /// Messages gathered before the files are written.
    pub const FLUSH_ROWS: &str = "MYSIMBDP_LAKE_FLUSH_ROWS";
    /// The longest a message waits before its file is written.
    pub const FLUSH_MS: &str = "MYSIMBDP_LAKE_FLUSH_MS";
    /// The most the sink's files may take, in bytes (the agreement's `max_size`).
    pub const MAX_BYTES: &str = "MYSIMBDP_LAKE_MAX_BYTES";
}

/// The headers a dead letter carries.
pub mod dead_letter {
    pub const REASON: &str = "mysimbdp.dlq.reason";
    pub const TOPIC: &str = "mysimbdp.dlq.topic";
    pub const PARTITION: &str = "mysimbdp.dlq.partition";
    pub const OFFSET: &str = "mysimbdp.dlq.offset";
    pub const SINK: &str = "mysimbdp.dlq.sink";
}

/// Where a topic's inferred columns are kept, beside its date folders.
pub const COLUMNS_FILE: &str = "_columns.json";

#[derive(Clone, Debug)]
pub struct Config {
    pub tenant: String,
    pub sink: String,
    pub brokers: String,
    /// Full topic names (`<tenant>.<name>`).
    pub topics: Vec<String>,
    pub group: String,
    pub lake_dir: PathBuf,
    pub columns: Option<Columns>,
    pub date_field: Option<String>,
    pub flush_rows: usize,
    pub flush: Duration,
    pub max_bytes: u64,
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        let number = |name: &str, default: u64| -> anyhow::Result<u64> {
            match std::env::var(name) {
                Ok(v) => v.parse().with_context(|| format!("{name}: `{v}` is not a whole number")),
                Err(_) => Ok(default),
            }
        };
        let columns = match std::env::var(env::COLUMNS).ok().filter(|c| !c.is_empty()) {
            Some(c) => {
                Some(serde_json::from_str(&c).with_context(|| format!("{}: not a list of columns", env::COLUMNS))?)
            }
            None => None,
        };
        Ok(Config {
            tenant: var(contract::TENANT)?,
            sink: var(env::SINK)?,
            brokers: var(contract::KAFKA_BROKERS)?,
            topics: var(contract::INPUT_TOPICS)?.split(',').filter(|t| !t.is_empty()).map(str::to_owned).collect(),
            group: var(contract::CONSUMER_GROUP)?,
            lake_dir: var(env::LAKE_DIR)?.into(),
            columns,
            date_field: std::env::var(env::DATE_FIELD).ok().filter(|f| !f.is_empty()),
            flush_rows: number(env::FLUSH_ROWS, 100_000)?.max(1) as usize,
            flush: Duration::from_millis(number(env::FLUSH_MS, 10_000)?.max(10)),
            max_bytes: number(env::MAX_BYTES, 10 << 30)?,
        })
    }
}

/// One of the sink's topics.
struct Topic {
    /// With the tenant's prefix, as the broker names it.
    full: String,
    /// Without the tenant's prefix: its folder's and files' name.
    name: String,
    dir: PathBuf,
    columns: Option<Columns>,
    /// Messages gathered while its columns are not known yet.
    sampled: usize,
}

/// Messages a topic's columns are inferred from (or those of its first flush, if fewer): enough to
/// see each field's type, few enough that the rest take the fast path straight into cells (inferring
/// from a whole first flush of 100,000 took half the benchmark's time).
const INFER_FROM: usize = 1_000;

/// A message read before its topic's columns were known (they are inferred from the first ones).
struct Early {
    offset: i64,
    object: Map<String, Value>,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    at_ms: i64,
}

/// What one partition gathered since its last flush.
struct Pending {
    first: i64,
    last: i64,
    early: Vec<Early>,
    /// The messages read once the columns were known (and the early ones then), as read, until they
    /// go to the writer, which reads them into rows.
    raw: Raw,
}

/// Messages handed to the writer at a time: it reads them into rows while the next ones arrive, so
/// a flush waits only for the last few to be read.
const CHUNK: usize = 8_192;

/// One assigned partition in this run.
struct Part {
    /// Its topic's place in `Sink::topics`.
    topic: usize,
    partition: i32,
    /// The last offset taken in this run.
    taken: Option<i64>,
    pending: Option<Pending>,
}

struct Sink {
    cfg: Config,
    topics: Vec<Topic>,
    /// Found by a scan, from the one the last message came from (a fetch's messages come in runs of
    /// one partition): a message costs no hashing or allocation for its topic's name.
    parts: Vec<Part>,
    last_part: usize,
    dead: Vec<Outgoing>,
    gathered: usize,
    since: Option<Instant>,
}

/// Runs until SIGTERM (then writes what it gathered) or an error.
pub fn run(cfg: Config) -> anyhow::Result<()> {
    stop_on_sigterm();
    let mut topics = Vec::new();
    for full in &cfg.topics {
        let prefix = format!("{}.", cfg.tenant);
        let name =
            full.strip_prefix(&prefix).with_context(|| format!("topic {full} is not tenant {}'s", cfg.tenant))?;
        if name.starts_with('.') || name.contains('/') {
            bail!("topic {full} cannot name a folder");
        }
        let dir = cfg.lake_dir.join(name);
        let columns = match &cfg.columns {
            Some(c) => Some(c.clone()),
            None => Columns::load(&dir.join(COLUMNS_FILE))?,
        };
        topics.push(Topic { full: full.clone(), name: name.to_owned(), dir, columns, sampled: 0 });
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.brokers)
        .set("group.id", &cfg.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // tansu holds a fetch for this long even when data is waiting (Kafka answers at once): the
        // default 500 ms made the sink wait on the broker, not work (as in the SDK's stream loop).
        .set("fetch.wait.max.ms", "10")
        .set("queued.min.messages", "200000")
        // Fetching pauses while a partition's queue is full (the sink is slower than the fetcher);
        // the default pause of a second left the sink idle for most of it once the queue drained.
        .set("fetch.queue.backoff.ms", "10")
        .create()
        .context("creating the Kafka consumer")?;
    let start = positions(&consumer, &topics)?;
    consumer.assign(&start).context("assigning the topics' partitions")?;
    // tansu answers a fetch from inside a record batch with the batches after it: the guard seeks
    // back to each partition's start (see the SDK's `resume`).
    let mut resume = Resume::starting_at(&start);
    let mut used = 0;
    for t in &topics {
        used += files::size_of(&t.dir, &t.name)?;
    }
    let writer = Writer::start(&cfg, used, Publisher::new(&cfg.brokers)?, Reporter::from_env(&cfg.brokers)?);
    eprintln!("parquet-lake: sink {} writing {} partitions into {}", cfg.sink, start.count(), cfg.lake_dir.display());
    let mut sink = Sink { cfg, topics, parts: Vec::new(), last_part: 0, dead: Vec::new(), gathered: 0, since: None };
    let mut unstick_at = Instant::now();
    let mut read = 0u32;
    while !terminating() {
        let idle = match consumer.poll(Duration::from_millis(100)) {
            None => true,
            Some(Ok(m)) => {
                let (topic, partition, offset) = (m.topic(), m.partition(), m.offset());
                let part = sink.part(topic, partition)?;
                // A message delivered again within this run is taken once; one before the
                // partition's start (a seek back's batch) is not taken at all.
                let again = sink.parts[part].taken.is_some_and(|t| offset <= t);
                if !again && resume.check(&consumer, "parquet-lake", topic, partition, offset) == Verdict::Take {
                    if sink.parts[part].taken.is_none() {
                        // Where each partition goes on from (after a crash: past its last whole flush).
                        eprintln!("parquet-lake: {topic}/{partition}: taking from offset {offset}");
                    }
                    sink.parts[part].taken = Some(offset);
                    sink.take(part, &m, &writer)?;
                }
                false
            }
            // The client reconnects by itself; what it could not do is retried by the next poll.
            Some(Err(e)) => {
                eprintln!("parquet-lake: {e}");
                true
            }
        };
        // The clock and the writer are looked at every 16 messages, not for each (a flush due by time
        // is late by at most 16 messages of a slow stream).
        read = read.wrapping_add(1);
        if idle || read.is_multiple_of(16) {
            for commit in writer.written()? {
                // The files already say how far each partition got; the commit only shows the group's lag.
                if let Err(e) = consumer.commit(&commit, CommitMode::Async) {
                    eprintln!("parquet-lake: committing the group's offsets failed (the files hold the progress): {e}");
                }
            }
            if unstick_at.elapsed() >= Duration::from_secs(1) {
                resume.unstick(&consumer, "parquet-lake");
                unstick_at = Instant::now();
            }
            if sink.since.is_some_and(|s| s.elapsed() >= sink.cfg.flush) {
                sink.flush(&writer)?;
            }
        }
        if sink.gathered >= sink.cfg.flush_rows {
            sink.flush(&writer)?;
        }
    }
    sink.flush(&writer)?;
    for commit in writer.finish()? {
        if let Err(e) = consumer.commit(&commit, CommitMode::Sync) {
            eprintln!("parquet-lake: committing the group's offsets failed (the files hold the progress): {e}");
        }
    }
    eprintln!("parquet-lake: stopping");
    Ok(())
}

/// Where each partition starts: after its last whole flush in the files, or where the group's
/// commit says if that is further (a flush with no row for the files), or the beginning.
fn positions(consumer: &BaseConsumer, topics: &[Topic]) -> anyhow::Result<TopicPartitionList> {
    let mut all = TopicPartitionList::new();
    let mut from_files = HashMap::new();
    for topic in topics {
        let full = &topic.full;
        let metadata = consumer
            .fetch_metadata(Some(full), Duration::from_secs(10))
            .with_context(|| format!("reading topic {full}'s partitions"))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            bail!("topic {full} does not exist");
        }
        for p in partitions {
            all.add_partition(full, p);
        }
        from_files.insert(full.clone(), files::recover(&topic.dir, &topic.name)?);
    }
    let committed =
        consumer.committed_offsets(all.clone(), Duration::from_secs(10)).context("reading the group's offsets")?;
    let mut start = TopicPartitionList::new();
    for e in committed.elements() {
        let by_commit = match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        };
        let by_files = from_files.get(e.topic()).and_then(|f| f.get(&e.partition())).copied();
        let offset = by_commit.max(by_files).map_or(Offset::Beginning, Offset::Offset);
        start.add_partition_offset(e.topic(), e.partition(), offset)?;
    }
    Ok(start)
}

impl Sink {
    /// The place in `parts` of a topic's partition (added at its first message).
    fn part(&mut self, topic: &str, partition: i32) -> anyhow::Result<usize> {
        let is = |p: &Part| p.partition == partition && self.topics[p.topic].full == topic;
        if self.parts.get(self.last_part).is_some_and(is) {
            return Ok(self.last_part);
        }
        let found = match self.parts.iter().position(is) {
            Some(i) => i,
            None => {
                let t = self.topics.iter().position(|t| t.full == topic).with_context(|| {
                    format!("the broker handed over a message of {topic}, which the sink does not read")
                })?;
                self.parts.push(Part { topic: t, partition, taken: None, pending: None });
                self.parts.len() - 1
            }
        };
        self.last_part = found;
        Ok(found)
    }

    /// Gathers one message: as read, once its topic's columns are known (the writer reads it into
    /// rows); before that, parsed for inference, or a dead letter if it cannot be a row.
    fn take(&mut self, part: usize, m: &BorrowedMessage<'_>, writer: &Writer) -> anyhow::Result<()> {
        let offset = m.offset();
        let at_ms = m.timestamp().to_millis().unwrap_or_else(now_ms);
        let Part { topic, partition, pending, .. } = &mut self.parts[part];
        let (topic, partition) = (*topic, *partition);
        let p = pending.get_or_insert_with(|| Pending {
            first: offset,
            last: offset,
            early: Vec::new(),
            raw: Raw::default(),
        });
        p.last = offset;
        self.since.get_or_insert_with(Instant::now);
        // A tombstone (a deleted key) has no row to keep.
        let Some(payload) = m.payload() else { return Ok(()) };
        let t = &mut self.topics[topic];
        if let Some(columns) = &t.columns {
            p.raw.push(offset, at_ms, m.key(), payload);
            self.gathered += 1;
            if p.raw.len() >= CHUNK {
                let raw = std::mem::take(&mut p.raw);
                let (topic, name, dir, columns) = (t.full.clone(), t.name.clone(), t.dir.clone(), columns.clone());
                writer.read(Chunk { topic, name, dir, partition, columns, raw })?;
            }
            return Ok(());
        }
        let parsed = serde_json::from_slice::<Map<String, Value>>(payload)
            .map_err(|e| format!("not a JSON object: {e}"))
            .and_then(|object| day_of(&object, self.cfg.date_field.as_deref(), at_ms).map(|_| object));
        match parsed {
            Ok(object) => {
                let key = m.key().map(<[u8]>::to_vec);
                p.early.push(Early { offset, object, key, payload: payload.to_vec(), at_ms });
                self.gathered += 1;
                t.sampled += 1;
                if t.sampled >= INFER_FROM {
                    // Nothing to infer from yet (no field seen): another sample later.
                    t.sampled = 0;
                    self.settle_columns()?;
                }
            }
            Err(why) => {
                let origin = Origin { topic: &t.full, partition, offset, key: m.key(), payload, at_ms };
                self.dead.push(origin.dead_letter(&self.cfg.sink, why));
            }
        }
        Ok(())
    }

    /// Hands the rest of what was gathered to the writer and asks it to write: the dead letters
    /// (acknowledged), then each partition's files, and only then the group's offsets back to
    /// commit. The next messages are gathered meanwhile.
    fn flush(&mut self, writer: &Writer) -> anyhow::Result<()> {
        if self.parts.iter().all(|p| p.pending.is_none()) {
            return Ok(());
        }
        self.settle_columns()?;
        let mut flush = Flush { dead: std::mem::take(&mut self.dead), partitions: Vec::new() };
        for part in &mut self.parts {
            let Some(p) = part.pending.take() else { continue };
            let t = &self.topics[part.topic];
            if !p.raw.is_empty() {
                let columns = t.columns.clone().context("a flush settles its topics' columns")?;
                let (topic, name, dir, partition) = (t.full.clone(), t.name.clone(), t.dir.clone(), part.partition);
                writer.read(Chunk { topic, name, dir, partition, columns, raw: p.raw })?;
            }
            flush.partitions.push(writer::Partition {
                topic: t.full.clone(),
                name: t.name.clone(),
                partition: part.partition,
                offsets: (p.first, p.last),
            });
        }
        writer.write(flush)?;
        self.gathered = 0;
        self.since = None;
        Ok(())
    }

    /// Infers the columns of topics that have none from the messages gathered so far, keeps them
    /// beside the topic's files, and moves those messages into rows.
    fn settle_columns(&mut self) -> anyhow::Result<()> {
        for (i, t) in self.topics.iter_mut().enumerate().filter(|(_, t)| t.columns.is_none()) {
            let objects = self
                .parts
                .iter()
                .filter(|p| p.topic == i)
                .flat_map(|p| p.pending.iter())
                .flat_map(|p| p.early.iter().map(|e| &e.object));
            let inferred = Columns::infer(objects);
            if inferred.0.is_empty() {
                continue;
            }
            files::write_atomically(&t.dir.join(COLUMNS_FILE), &serde_json::to_vec_pretty(&inferred)?)?;
            eprintln!("parquet-lake: topic {} has columns {}", t.name, serde_json::to_string(&inferred)?);
            t.columns = Some(inferred);
        }
        // The early messages are read again by the writer, as every later one is: they come first.
        for part in &mut self.parts {
            if self.topics[part.topic].columns.is_none() {
                continue;
            }
            let Some(p) = &mut part.pending else { continue };
            for e in std::mem::take(&mut p.early) {
                p.raw.push(e.offset, e.at_ms, e.key.as_deref(), &e.payload);
            }
        }
        Ok(())
    }
}

/// Where a message came from, for its dead letter.
struct Origin<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    key: Option<&'a [u8]>,
    payload: &'a [u8],
    at_ms: i64,
}

impl Origin<'_> {
    fn dead_letter(&self, sink: &str, reason: String) -> Outgoing {
        Outgoing {
            topic: format!("{}.dlq", self.topic),
            key: self.key.map(<[u8]>::to_vec),
            value: Some(self.payload.to_vec()),
            at_ms: self.at_ms,
            headers: vec![
                (dead_letter::REASON, reason),
                (dead_letter::TOPIC, self.topic.to_owned()),
                (dead_letter::PARTITION, self.partition.to_string()),
                (dead_letter::OFFSET, self.offset.to_string()),
                (dead_letter::SINK, sink.to_owned()),
            ],
        }
    }
}

/// The day (since the epoch, UTC) a row belongs to: its date field's, or its message's.
fn day_of(object: &Map<String, Value>, field: Option<&str>, at_ms: i64) -> Result<i32, String> {
    let us = match field {
        None => at_ms.saturating_mul(1000),
        Some(f) => match object.get(f) {
            None | Some(Value::Null) => return Err(format!("date field `{f}` is missing")),
            Some(v) => columns::timestamp_us(v).map_err(|why| format!("date field `{f}`: {why}"))?,
        },
    };
    Ok(us.div_euclid(86_400_000_000) as i32)
}
