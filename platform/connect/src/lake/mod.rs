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

use std::collections::{BTreeMap, HashMap};
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
use columns::{Columns, Rows};
use mysimbdp_contract::env as contract;
use mysimbdp_sdk::resume::{Resume, Verdict};

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
    days: i32,
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
    dates: BTreeMap<i32, Rows>,
    /// Size and timestamp of each message bound for a file, for the report.
    written: Vec<(usize, i64)>,
}

struct Sink {
    cfg: Config,
    /// What the sink's files take now, in bytes.
    used: u64,
    topics: HashMap<String, Topic>,
    /// By partition, the last offset taken in this run.
    taken: HashMap<String, HashMap<i32, i64>>,
    /// By topic, then partition: looked up by `&str`, so a message costs no allocation for its key.
    pending: BTreeMap<String, BTreeMap<i32, Pending>>,
    dead: Vec<Outgoing>,
    gathered: usize,
    since: Option<Instant>,
    publisher: Publisher,
    reporter: Option<Reporter>,
}

/// Runs until SIGTERM (then writes what it gathered) or an error.
pub fn run(cfg: Config) -> anyhow::Result<()> {
    stop_on_sigterm();
    let mut topics = HashMap::new();
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
        topics.insert(full.clone(), Topic { name: name.to_owned(), dir, columns, sampled: 0 });
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
        .create()
        .context("creating the Kafka consumer")?;
    let start = positions(&consumer, &topics)?;
    consumer.assign(&start).context("assigning the topics' partitions")?;
    // tansu answers a fetch from inside a record batch with the batches after it: the guard seeks
    // back to each partition's start (see the SDK's `resume`).
    let mut resume = Resume::starting_at(&start);
    let publisher = Publisher::new(&cfg.brokers)?;
    let reporter = Reporter::from_env(&cfg.brokers)?;
    eprintln!("parquet-lake: sink {} writing {} partitions into {}", cfg.sink, start.count(), cfg.lake_dir.display());
    let mut used = 0;
    for t in topics.values() {
        used += files::size_of(&t.dir, &t.name)?;
    }
    let mut sink = Sink {
        used,
        cfg,
        topics,
        taken: HashMap::new(),
        pending: BTreeMap::new(),
        dead: Vec::new(),
        gathered: 0,
        since: None,
        publisher,
        reporter,
    };
    let mut unstick_at = Instant::now();
    while !terminating() {
        if unstick_at.elapsed() >= Duration::from_secs(1) {
            resume.unstick(&consumer, "parquet-lake");
            unstick_at = Instant::now();
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(m)) => {
                let (topic, partition, offset) = (m.topic(), m.partition(), m.offset());
                // A message delivered again within this run is taken once; one before the
                // partition's start (a seek back's batch) is not taken at all.
                let again = sink.taken.get(topic).and_then(|t| t.get(&partition)).is_some_and(|t| offset <= *t);
                if !again && resume.check(&consumer, "parquet-lake", topic, partition, offset) == Verdict::Take {
                    match sink.taken.get_mut(topic) {
                        Some(t) => {
                            t.insert(partition, offset);
                        }
                        None => {
                            sink.taken.insert(topic.to_owned(), HashMap::from([(partition, offset)]));
                        }
                    }
                    sink.take(&m)?;
                }
            }
            // The client reconnects by itself; what it could not do is retried by the next poll.
            Some(Err(e)) => eprintln!("parquet-lake: {e}"),
        }
        let due = sink.since.is_some_and(|s| s.elapsed() >= sink.cfg.flush);
        if sink.gathered >= sink.cfg.flush_rows || due {
            sink.flush(&consumer)?;
        }
    }
    sink.flush(&consumer)?;
    eprintln!("parquet-lake: stopping");
    Ok(())
}

/// Where each partition starts: after its last whole flush in the files, or where the group's
/// commit says if that is further (a flush with no row for the files), or the beginning.
fn positions(consumer: &BaseConsumer, topics: &HashMap<String, Topic>) -> anyhow::Result<TopicPartitionList> {
    let mut all = TopicPartitionList::new();
    let mut from_files = HashMap::new();
    for (full, topic) in topics {
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
    /// Gathers one message into its partition's rows, or its dead letters.
    fn take(&mut self, m: &BorrowedMessage<'_>) -> anyhow::Result<()> {
        let (topic, partition, offset) = (m.topic(), m.partition(), m.offset());
        let at_ms = m.timestamp().to_millis().unwrap_or_else(now_ms);
        if !self.pending.contains_key(topic) {
            self.pending.insert(topic.to_owned(), BTreeMap::new());
        }
        let partitions = self.pending.get_mut(topic).expect("inserted above");
        let p = partitions.entry(partition).or_insert_with(|| Pending {
            first: offset,
            last: offset,
            early: Vec::new(),
            dates: BTreeMap::new(),
            written: Vec::new(),
        });
        p.last = offset;
        self.since.get_or_insert_with(Instant::now);
        // A tombstone (a deleted key) has no row to keep.
        let Some(payload) = m.payload() else { return Ok(()) };
        let Some(t) = self.topics.get(topic) else { return Ok(()) };
        let date_field = self.cfg.date_field.as_deref();
        // Most messages: straight into their cells. The rest below, which also names what is wrong.
        if let Some(columns) = &t.columns {
            if let Some((cells, date)) = fast::row(payload, &columns.0, date_field) {
                let us = match (date_field, date) {
                    (None, _) => Some(at_ms.saturating_mul(1000)),
                    (Some(_), us) => us,
                };
                if let Some(us) = us {
                    let days = us.div_euclid(86_400_000_000) as i32;
                    p.dates.entry(days).or_insert_with(|| Rows::new(columns)).push_cells(cells);
                    p.written.push((payload.len(), at_ms));
                    self.gathered += 1;
                    return Ok(());
                }
            }
        }
        let mut sampled = false;
        let parsed = serde_json::from_slice::<Map<String, Value>>(payload)
            .map_err(|e| format!("not a JSON object: {e}"))
            .and_then(|object| Ok((day_of(&object, date_field, at_ms)?, object)));
        let outcome = match (parsed, &t.columns) {
            (Err(why), _) => Err(why),
            (Ok((days, object)), Some(columns)) => {
                p.dates.entry(days).or_insert_with(|| Rows::new(columns)).push(columns, &object)
            }
            (Ok((days, object)), None) => {
                let key = m.key().map(<[u8]>::to_vec);
                p.early.push(Early { offset, days, object, key, payload: payload.to_vec(), at_ms });
                sampled = true;
                Ok(())
            }
        };
        match outcome {
            Ok(()) => {
                p.written.push((payload.len(), at_ms));
                self.gathered += 1;
            }
            Err(why) => {
                let letter = self.dead_letter(topic, partition, offset, m.key(), payload, at_ms, why);
                self.dead.push(letter);
            }
        }
        if sampled {
            let t = self.topics.get_mut(topic).expect("a topic of the sink");
            t.sampled += 1;
            if t.sampled >= INFER_FROM {
                // Nothing to infer from yet (no field seen): another sample later.
                t.sampled = 0;
                self.settle_columns()?;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn dead_letter(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: &[u8],
        at_ms: i64,
        reason: String,
    ) -> Outgoing {
        Outgoing {
            topic: format!("{topic}.dlq"),
            key: key.map(<[u8]>::to_vec),
            value: Some(payload.to_vec()),
            at_ms,
            headers: vec![
                (dead_letter::REASON, reason),
                (dead_letter::TOPIC, topic.to_owned()),
                (dead_letter::PARTITION, partition.to_string()),
                (dead_letter::OFFSET, offset.to_string()),
                (dead_letter::SINK, self.cfg.sink.clone()),
            ],
        }
    }

    /// Writes what was gathered: the dead letters (acknowledged), then each partition's files, then
    /// the group's offsets.
    fn flush(&mut self, consumer: &BaseConsumer) -> anyhow::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.settle_columns()?;
        self.publisher.send_all(&self.dead)?;
        if let Some(r) = &self.reporter {
            self.dead.iter().for_each(|_| r.reject());
        }
        self.dead.clear();
        let mut commit = TopicPartitionList::new();
        let now = now_ms();
        let pending = std::mem::take(&mut self.pending);
        for (topic, partition, p) in
            pending.into_iter().flat_map(|(t, ps)| ps.into_iter().map(move |(n, p)| (t.clone(), n, p)))
        {
            let t = &self.topics[&topic];
            // A date whose only rows were refused has no file.
            let dates = p
                .dates
                .into_iter()
                .filter(|(_, rows)| rows.len > 0)
                .map(|(d, rows)| Ok((d, rows.finish()?)))
                .collect::<anyhow::Result<_>>()?;
            let room = self.cfg.max_bytes.saturating_sub(self.used);
            match files::write_flush(&t.dir, &t.name, partition, (p.first, p.last), dates, room)? {
                Ok(size) => self.used += size,
                // Stopped before the lake outgrows the agreement: the messages wait in the topic
                // (nothing committed), and the instance fails saying why.
                Err(size) => bail!(
                    "sink {}: the next files ({size} bytes) would take its lake past the agreement's max_size of {} bytes (it holds {}); its messages wait in the topic",
                    self.cfg.sink,
                    self.cfg.max_bytes,
                    self.used
                ),
            }
            commit.add_partition_offset(&topic, partition, Offset::Offset(p.last + 1))?;
            if let Some(r) = &self.reporter {
                p.written.iter().for_each(|(bytes, at)| r.record(*bytes, (now - at) as f64));
            }
        }
        // The files already say how far each partition got; the commit only shows the group's lag.
        if let Err(e) = consumer.commit(&commit, CommitMode::Sync) {
            eprintln!("parquet-lake: committing the group's offsets failed (the files hold the progress): {e}");
        }
        self.gathered = 0;
        self.since = None;
        Ok(())
    }

    /// Infers the columns of topics that have none from the messages gathered so far, keeps them
    /// beside the topic's files, and moves those messages into rows.
    fn settle_columns(&mut self) -> anyhow::Result<()> {
        let waiting: Vec<String> =
            self.topics.iter().filter(|(_, t)| t.columns.is_none()).map(|(n, _)| n.clone()).collect();
        for full in waiting {
            let objects = self
                .pending
                .get(&full)
                .into_iter()
                .flat_map(|ps| ps.values())
                .flat_map(|p| p.early.iter().map(|e| &e.object));
            let inferred = Columns::infer(objects);
            if inferred.0.is_empty() {
                continue;
            }
            let t = self.topics.get_mut(&full).expect("a topic of the sink");
            files::write_atomically(&t.dir.join(COLUMNS_FILE), &serde_json::to_vec_pretty(&inferred)?)?;
            eprintln!("parquet-lake: topic {} has columns {}", t.name, serde_json::to_string(&inferred)?);
            t.columns = Some(inferred);
        }
        let mut dead = Vec::new();
        for (topic, partitions) in &mut self.pending {
            let Some(columns) = &self.topics[topic].columns else { continue };
            for (partition, p) in partitions {
                for e in std::mem::take(&mut p.early) {
                    if let Err(why) =
                        p.dates.entry(e.days).or_insert_with(|| Rows::new(columns)).push(columns, &e.object)
                    {
                        dead.push((topic.clone(), *partition, e, why));
                    }
                }
            }
        }
        for (topic, partition, e, why) in dead {
            let letter = self.dead_letter(&topic, partition, e.offset, e.key.as_deref(), &e.payload, e.at_ms, why);
            self.dead.push(letter);
        }
        Ok(())
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
