//! The stream loop's writers: batches are written over several connections at once (PostgreSQL runs
//! one backend per connection, and one backend writing JSONB was the stream app's bound), while offsets
//! are committed strictly in the order the batches were read: a batch's offsets are committed only
//! once it and every batch before it are written, so a crash never skips an unwritten message.

use std::collections::{BTreeMap, HashMap};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::coredms::{CoreDms, Doc};
use crate::metrics::Window;

/// A batch on its way to the writers: documents per topic, the offsets to commit once written (per
/// topic and partition), and when each document's message was read.
pub(crate) struct Batch {
    pub docs: HashMap<String, Vec<Doc>>,
    pub read_at: Vec<(Instant, u64)>,
    pub next_offsets: HashMap<String, HashMap<i32, i64>>,
}

impl Batch {
    pub fn new() -> Self {
        Batch { docs: HashMap::new(), read_at: Vec::new(), next_offsets: HashMap::new() }
    }
    pub fn is_empty(&self) -> bool {
        self.next_offsets.is_empty()
    }
}

/// The collection a topic's documents go to: the topic's name without the tenant's prefix.
pub(crate) fn collection_for<'a>(tenant: &str, topic: &'a str) -> &'a str {
    topic.strip_prefix(tenant).and_then(|t| t.strip_prefix('.')).unwrap_or(topic)
}

pub(crate) struct Writers {
    tx: Option<mpsc::SyncSender<(u64, Batch)>>,
    writers: Vec<JoinHandle<anyhow::Result<()>>>,
    committer: Option<JoinHandle<()>>,
    failed: Arc<Mutex<Option<String>>>,
    seq: u64,
}

pub(crate) struct Shared {
    pub app: String,
    pub tenant: String,
    /// Every topic's documents into this collection, if set.
    pub collection: Option<String>,
    pub consumer: Arc<BaseConsumer>,
    pub window: Arc<Mutex<Window>>,
}

impl Writers {
    /// One writer thread per connection, all taking batches from one queue (two batches per writer
    /// at most: the backpressure that keeps memory flat), and one committer.
    pub fn start(connections: Vec<CoreDms>, shared: Shared) -> Self {
        let shared = Arc::new(shared);
        let (tx, rx) = mpsc::sync_channel::<(u64, Batch)>(connections.len().max(1));
        let rx = Arc::new(Mutex::new(rx));
        let (done_tx, done_rx) = mpsc::channel::<(u64, Batch)>();
        let failed: Arc<Mutex<Option<String>>> = Arc::default();
        let writers = connections
            .into_iter()
            .map(|mut coredms| {
                let (rx, done_tx, failed, shared) = (rx.clone(), done_tx.clone(), failed.clone(), shared.clone());
                std::thread::spawn(move || -> anyhow::Result<()> {
                    loop {
                        let next = rx.lock().expect("writer queue").recv();
                        let Ok((seq, mut batch)) = next else { return Ok(()) };
                        for docs in batch.docs.values_mut() {
                            // Every writer takes the rows' locks in one order: batches sharing ids wait
                            // for each other instead of deadlocking.
                            docs.sort_unstable_by(|a, b| a.id.cmp(&b.id));
                        }
                        for (topic, docs) in &batch.docs {
                            if let Err(e) = coredms.insert_batch(
                                shared.collection.as_deref().unwrap_or_else(|| collection_for(&shared.tenant, topic)),
                                docs,
                            ) {
                                *failed.lock().expect("failed lock") = Some(format!("{e:#}"));
                                return Err(e);
                            }
                        }
                        batch.docs.clear();
                        if done_tx.send((seq, batch)).is_err() {
                            return Ok(());
                        }
                    }
                })
            })
            .collect();
        drop(done_tx); // the committer ends when the last writer does
        let committer = std::thread::spawn(move || commit_in_order(done_rx, &shared));
        Writers { tx: Some(tx), writers, committer: Some(committer), failed, seq: 0 }
    }

    /// An error once a writer has failed: nothing after its batch can be committed any more.
    pub fn check(&self) -> anyhow::Result<()> {
        match self.failed.lock().expect("failed lock").clone() {
            Some(e) => anyhow::bail!("writing to coredms: {e}"),
            None => Ok(()),
        }
    }

    /// Hands a batch to the writers; an error once a writer has failed.
    pub fn send(&mut self, batch: Batch) -> anyhow::Result<()> {
        self.check()?;
        let tx = self.tx.as_ref().expect("send after finish");
        if tx.send((self.seq, batch)).is_err() {
            anyhow::bail!("the writers stopped");
        }
        self.seq += 1;
        Ok(())
    }

    /// Writes and commits everything sent; the first writer's error, if any.
    pub fn finish(mut self) -> anyhow::Result<()> {
        self.tx.take();
        let mut first = None;
        for w in self.writers.drain(..) {
            match w.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first.get_or_insert(e);
                }
                Err(_) => {
                    first.get_or_insert(anyhow::anyhow!("a writer thread panicked"));
                }
            }
        }
        if let Some(c) = self.committer.take() {
            let _ = c.join();
        }
        first.map_or(Ok(()), Err)
    }
}

/// Commits the offsets of written batches in the order they were read, and counts their documents.
fn commit_in_order(done: mpsc::Receiver<(u64, Batch)>, shared: &Shared) {
    let mut next = 0u64;
    let mut written: BTreeMap<u64, Batch> = BTreeMap::new();
    for (seq, batch) in done {
        written.insert(seq, batch);
        let mut offsets: HashMap<String, HashMap<i32, i64>> = HashMap::new();
        let now = Instant::now();
        while let Some(batch) = written.remove(&next) {
            next += 1;
            let mut w = shared.window.lock().expect("window lock");
            for (read_at, bytes) in &batch.read_at {
                w.record(*bytes, now.duration_since(*read_at).as_secs_f64() * 1000.0);
            }
            for (topic, partitions) in batch.next_offsets {
                let merged = offsets.entry(topic).or_default();
                for (p, o) in partitions {
                    let e = merged.entry(p).or_insert(o);
                    *e = (*e).max(o);
                }
            }
        }
        if offsets.is_empty() {
            continue;
        }
        let mut tpl = TopicPartitionList::new();
        for (topic, partitions) in &offsets {
            for (p, o) in partitions {
                let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(*o));
            }
        }
        // After a rebalance the partition may be another instance's now; it reads the same messages
        // again and writes the same `_id`s, so a failed commit loses nothing.
        if let Err(e) = shared.consumer.commit(&tpl, CommitMode::Sync) {
            eprintln!("{}: committing offsets failed (messages will be read again): {e}", shared.app);
        }
    }
}
