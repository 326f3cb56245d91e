//! The lake sink's writer: a thread of its own that reads the messages into rows as they arrive and
//! writes each flush's rows as Parquet files, while the sink's reading thread takes the next messages
//! from the broker (reading JSON and encoding Parquet were most of the sink's time, and reading the
//! broker waited for both).
//!
//! The sink hands over chunks of messages as read (`Chunk`), then at each flush what to write
//! (`Flush`). Flushes are written one at a time, in the order they were gathered: a flush's dead
//! letters (acknowledged), then its files (each renamed into place), and only then are its offsets
//! handed back for the group's commit. The first error stops the writer; nothing after it is
//! written, and the sink fails with it.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::thread::JoinHandle;

use anyhow::{bail, Context};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Map, Value};

use super::columns::{Cell, Columns, Rows};
use super::{day_of, fast, files, Origin};
use crate::process::now_ms;
use crate::publish::{Outgoing, Publisher};
use crate::report::Reporter;

/// Messages of one partition to read into rows, in offset order.
pub(super) struct Chunk {
    pub topic: String,
    /// Its name in the lake, and its folder.
    pub name: String,
    pub dir: PathBuf,
    pub partition: i32,
    pub columns: Columns,
    pub raw: Raw,
}

/// What to write now: the dead letters the sink found itself (not JSON, no date), and each
/// partition's files for the messages handed over since its last flush.
pub(super) struct Flush {
    pub dead: Vec<Outgoing>,
    pub partitions: Vec<Partition>,
}

pub(super) struct Partition {
    /// The topic's full name, for the commit.
    pub topic: String,
    /// Its name in the lake.
    pub name: String,
    pub partition: i32,
    /// The first and last offsets read (the files' names), whatever became of them.
    pub offsets: (i64, i64),
}

/// Messages as read, their bytes in one buffer (a copy each, no allocation each).
#[derive(Default)]
pub(super) struct Raw {
    bytes: Vec<u8>,
    messages: Vec<RawMessage>,
}

struct RawMessage {
    offset: i64,
    at_ms: i64,
    key: Option<Range<usize>>,
    payload: Range<usize>,
}

impl Raw {
    pub fn push(&mut self, offset: i64, at_ms: i64, key: Option<&[u8]>, payload: &[u8]) {
        let mut copy = |b: &[u8]| {
            let start = self.bytes.len();
            self.bytes.extend_from_slice(b);
            start..self.bytes.len()
        };
        let key = key.map(&mut copy);
        let payload = copy(payload);
        self.messages.push(RawMessage { offset, at_ms, key, payload });
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}

enum Job {
    Read(Chunk),
    Flush(Flush),
}

pub(super) struct Writer {
    jobs: SyncSender<Job>,
    written: Receiver<anyhow::Result<TopicPartitionList>>,
    thread: JoinHandle<()>,
}

/// What the writer thread keeps.
struct State {
    sink: String,
    date_field: Option<String>,
    max_bytes: u64,
    /// What the sink's files take now, in bytes.
    used: u64,
    publisher: Publisher,
    reporter: Option<Reporter>,
    /// By topic and partition, the rows read since its last flush.
    gathered: Vec<Gathered>,
    /// Dead letters found while reading, sent with the next flush.
    dead: Vec<Outgoing>,
    /// Scratch space for a row's cells.
    cells: Vec<Cell<'static>>,
}

struct Gathered {
    topic: String,
    partition: i32,
    /// By day since the epoch, the file of that date, written a chunk's rows at a time (so a flush
    /// waits only for its last chunk to be encoded).
    files: BTreeMap<i32, files::Open>,
    /// Size and timestamp of each message in those files, for the report.
    written: Vec<(usize, i64)>,
}

/// Jobs that may wait for the writer before the reading thread waits too: with chunks of 8,192
/// messages, ~130,000 messages' bytes (~30 MB of ~200-byte messages) besides the open files.
const WAITING: usize = 16;

impl Writer {
    pub fn start(cfg: &super::Config, used: u64, publisher: Publisher, reporter: Option<Reporter>) -> Writer {
        let (jobs, to_do) = mpsc::sync_channel::<Job>(WAITING);
        let (done, written) = mpsc::channel();
        let mut state = State {
            sink: cfg.sink.clone(),
            date_field: cfg.date_field.clone(),
            max_bytes: cfg.max_bytes,
            used,
            publisher,
            reporter,
            gathered: Vec::new(),
            dead: Vec::new(),
            cells: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("lake-writer".into())
            .spawn(move || {
                for job in to_do {
                    let outcome = match job {
                        Job::Read(chunk) => match state.read(chunk) {
                            Ok(()) => continue,
                            Err(e) => Err(e),
                        },
                        Job::Flush(flush) => state.write(flush),
                    };
                    let failed = outcome.is_err();
                    if done.send(outcome).is_err() || failed {
                        return;
                    }
                }
            })
            .expect("starting the lake writer thread");
        Writer { jobs, written, thread }
    }

    /// Hands messages over to be read into rows (waiting while many wait already).
    pub fn read(&self, chunk: Chunk) -> anyhow::Result<()> {
        self.send(Job::Read(chunk))
    }

    /// Asks for everything handed over so far to be written.
    pub fn write(&self, flush: Flush) -> anyhow::Result<()> {
        self.send(Job::Flush(flush))
    }

    fn send(&self, job: Job) -> anyhow::Result<()> {
        if self.jobs.send(job).is_err() {
            // The writer stopped: its error says why.
            self.written()?;
            bail!("the lake writer stopped");
        }
        Ok(())
    }

    /// The offsets of the flushes written since the last call, to commit; the writer's error if it
    /// failed.
    pub fn written(&self) -> anyhow::Result<Vec<TopicPartitionList>> {
        let mut all = Vec::new();
        loop {
            match self.written.try_recv() {
                Ok(outcome) => all.push(outcome?),
                Err(TryRecvError::Empty) => return Ok(all),
                Err(TryRecvError::Disconnected) => bail!("the lake writer stopped"),
            }
        }
    }

    /// Waits until every flush asked for is written; their offsets, to commit.
    pub fn finish(self) -> anyhow::Result<Vec<TopicPartitionList>> {
        let Writer { jobs, written, thread } = self;
        drop(jobs);
        thread.join().map_err(|_| anyhow::anyhow!("the lake writer panicked"))?;
        written.try_iter().collect()
    }
}

impl State {
    /// Where a partition's rows since its last flush are kept, if it has any.
    fn gathered(&self, topic: &str, partition: i32) -> Option<usize> {
        self.gathered.iter().position(|g| g.partition == partition && g.topic == topic)
    }

    /// Reads a chunk's messages into rows and writes them into their dates' files.
    fn read(&mut self, chunk: Chunk) -> anyhow::Result<()> {
        let Some(first) = chunk.raw.messages.first().map(|m| m.offset) else { return Ok(()) };
        let i = match self.gathered(&chunk.topic, chunk.partition) {
            Some(i) => i,
            None => {
                let (topic, partition) = (chunk.topic.clone(), chunk.partition);
                self.gathered.push(Gathered { topic, partition, files: BTreeMap::new(), written: Vec::new() });
                self.gathered.len() - 1
            }
        };
        let g = &mut self.gathered[i];
        let raw = &chunk.raw;
        let mut dates = BTreeMap::new();
        for m in &raw.messages {
            let payload = &raw.bytes[m.payload.clone()];
            let date_field = self.date_field.as_deref();
            match read_row(&chunk.columns, date_field, payload, m.at_ms, &mut dates, &mut self.cells) {
                Ok(()) => g.written.push((payload.len(), m.at_ms)),
                Err(why) => {
                    let key = m.key.clone().map(|k| &raw.bytes[k]);
                    let (topic, partition, offset, at_ms) = (&chunk.topic, chunk.partition, m.offset, m.at_ms);
                    let origin = Origin { topic, partition, offset, key, payload, at_ms };
                    self.dead.push(origin.dead_letter(&self.sink, why));
                }
            }
        }
        // A date whose only rows were refused has no file.
        for (days, rows) in dates.into_iter().filter(|(_, rows)| rows.len > 0) {
            let rows = rows.finish().with_context(|| format!("gathering the rows of {}/{}", g.topic, g.partition))?;
            let file = match g.files.entry(days) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    e.insert(files::Open::create(&chunk.dir, &chunk.name, chunk.partition, first, days, &rows)?)
                }
            };
            file.write(&rows)?;
        }
        Ok(())
    }

    fn write(&mut self, flush: Flush) -> anyhow::Result<TopicPartitionList> {
        let mut dead = flush.dead;
        dead.append(&mut self.dead);
        self.publisher.send_all(&dead)?;
        if let Some(r) = &self.reporter {
            r.reject_all(dead.len());
        }
        let mut commit = TopicPartitionList::new();
        let now = now_ms();
        for p in flush.partitions {
            // None: only tombstones and dead letters since the last flush.
            let gathered = self.gathered(&p.topic, p.partition).map(|i| self.gathered.swap_remove(i));
            let (open, written) = gathered.map(|g| (g.files.into_values().collect(), g.written)).unwrap_or_default();
            let room = self.max_bytes.saturating_sub(self.used);
            match files::finish_flush(&p.name, p.partition, p.offsets, open, room)? {
                Ok(size) => self.used += size,
                // Stopped before the lake outgrows the agreement: the messages wait in the topic
                // (nothing committed), and the instance fails saying why.
                Err(size) => bail!(
                    "sink {}: the next files ({size} bytes) would take its lake past the agreement's max_size of {} bytes (it holds {}); its messages wait in the topic",
                    self.sink,
                    self.max_bytes,
                    self.used
                ),
            }
            commit.add_partition_offset(&p.topic, p.partition, Offset::Offset(p.offsets.1 + 1))?;
            if let Some(r) = &self.reporter {
                r.record_all(written.iter().map(|(bytes, at)| (*bytes, (now - at) as f64)));
            }
        }
        Ok(commit)
    }
}

/// Reads one message into its date's rows: straight into its cells for most (`fast`), the ordinary
/// way for the rest, which also names what is wrong. `cells` is scratch space kept between calls.
fn read_row(
    columns: &Columns,
    date_field: Option<&str>,
    payload: &[u8],
    at_ms: i64,
    dates: &mut BTreeMap<i32, Rows>,
    cells: &mut Vec<Cell<'static>>,
) -> Result<(), String> {
    let mut row = fast::recycle(std::mem::take(cells));
    let fast = fast::row(payload, &columns.0, date_field, &mut row);
    let us = match (date_field, fast) {
        (_, None) => None,
        (None, Some(_)) => Some(at_ms.saturating_mul(1000)),
        (Some(_), Some(us)) => us,
    };
    if let Some(us) = us {
        let days = us.div_euclid(86_400_000_000) as i32;
        dates.entry(days).or_insert_with(|| Rows::new(columns)).push_cells(row.drain(..));
    }
    *cells = fast::recycle(row);
    if us.is_some() {
        return Ok(());
    }
    let object =
        serde_json::from_slice::<Map<String, Value>>(payload).map_err(|e| format!("not a JSON object: {e}"))?;
    let days = day_of(&object, date_field, at_ms)?;
    dates.entry(days).or_insert_with(|| Rows::new(columns)).push(columns, &object)
}
