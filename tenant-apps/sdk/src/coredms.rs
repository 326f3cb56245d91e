//! Idempotent writes into the tenant's coredms database.
//!
//! PostgreSQL: a collection is a table `(_id text primary key, doc jsonb not null, ingested_at
//! timestamptz)`. A batch is first written with binary `COPY` (the fastest way in); if any `_id` is
//! already there (a re-run after a crash) the batch is rolled back and written again through a
//! temporary table with `INSERT .. ON CONFLICT DO NOTHING`, so a re-run leaves one copy. After such a
//! conflict the writer stays on the idempotent path until a batch goes in without conflicts.
//!
//! MongoDB: unordered `insertMany`, duplicate-key errors ignored.

use std::sync::mpsc;
use std::thread::JoinHandle;

use anyhow::Context;
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{to_sql_checked, IsNull, ToSql, Type};

/// One document: its deterministic id and its JSON text (an object).
#[derive(Clone, Debug)]
pub struct Doc {
    pub id: String,
    pub json: String,
}

/// What a writer did: documents sent and documents that were new.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    pub sent: u64,
    pub inserted: u64,
}

enum Backend {
    Postgres { client: Box<postgres::Client>, idempotent_mode: bool },
    Mongo(mongodb::sync::Database),
}

pub struct CoreDms {
    backend: Backend,
}

/// JSON text sent as JSONB in binary COPY: a version byte then the text, with no parse on our side.
#[derive(Debug)]
struct RawJsonb<'a>(&'a str);

impl ToSql for RawJsonb<'_> {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut postgres::types::private::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&[1]);
        out.extend_from_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }
    to_sql_checked!();
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn is_unique_violation(e: &postgres::Error) -> bool {
    e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION)
}

fn is_deadlock(e: &postgres::Error) -> bool {
    e.code() == Some(&postgres::error::SqlState::T_R_DEADLOCK_DETECTED)
}

impl CoreDms {
    /// Connects with the tenant's own credentials (`MYSIMBDP_COREDMS_URL`) to its database.
    pub fn connect(url: &str, database: &str) -> anyhow::Result<Self> {
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let client = postgres::Client::connect(url, postgres::NoTls).context("connecting to coredms (postgres)")?;
            Backend::Postgres { client: Box::new(client), idempotent_mode: false }
        } else if url.starts_with("mongodb://") || url.starts_with("mongodb+srv://") {
            let client = mongodb::sync::Client::with_uri_str(url).context("connecting to coredms (mongodb)")?;
            Backend::Mongo(client.database(database))
        } else {
            anyhow::bail!("coredms url has an unsupported scheme (postgres:// or mongodb://)");
        };
        Ok(CoreDms { backend })
    }

    /// Creates the collection if it does not exist.
    pub fn ensure_collection(&mut self, name: &str) -> anyhow::Result<()> {
        if let Backend::Postgres { client, .. } = &mut self.backend {
            let sql = format!(
                "create table if not exists {} (_id text primary key, doc jsonb not null, ingested_at timestamptz not null default now())",
                quote_ident(name)
            );
            // Two apps creating the same table at once can collide in the catalog (a unique violation on
            // pg_type, or "type already exists"); the second try sees the table.
            if let Err(e) = client.batch_execute(&sql) {
                let collided =
                    [&postgres::error::SqlState::UNIQUE_VIOLATION, &postgres::error::SqlState::DUPLICATE_OBJECT];
                if !e.code().is_some_and(|c| collided.contains(&c)) {
                    return Err(e).context("creating collection");
                }
                client.batch_execute(&sql).context("creating collection")?;
            }
        }
        Ok(())
    }

    /// Writes `docs` (one transaction on PostgreSQL); returns how many were new.
    pub fn insert_batch(&mut self, collection: &str, docs: &[Doc]) -> anyhow::Result<u64> {
        if docs.is_empty() {
            return Ok(0);
        }
        match &mut self.backend {
            Backend::Postgres { client, idempotent_mode } => {
                if !*idempotent_mode {
                    match copy_direct(client, collection, docs) {
                        Ok(n) => return Ok(n),
                        Err(e) if is_unique_violation(&e) || is_deadlock(&e) => *idempotent_mode = true,
                        Err(e) => return Err(e).context("writing to coredms"),
                    }
                }
                // Two connections writing batches that share ids (a business key delivered twice) can
                // wait on each other; PostgreSQL then aborts one of them, which simply tries again.
                let mut tries = 0;
                let inserted = loop {
                    match copy_idempotent(client, collection, docs) {
                        Ok(n) => break n,
                        Err(e) if is_deadlock(&e) && tries < 5 => tries += 1,
                        Err(e) => return Err(e).context("writing to coredms"),
                    }
                };
                if inserted == docs.len() as u64 {
                    *idempotent_mode = false; // past the part written before; back to the fast path
                }
                Ok(inserted)
            }
            Backend::Mongo(db) => insert_mongo(db, collection, docs),
        }
    }

    /// Counts documents in a collection (tests and tools).
    pub fn count(&mut self, collection: &str) -> anyhow::Result<u64> {
        match &mut self.backend {
            Backend::Postgres { client, .. } => {
                let row = client.query_one(&format!("select count(*) from {}", quote_ident(collection)), &[])?;
                Ok(row.get::<_, i64>(0) as u64)
            }
            Backend::Mongo(db) => Ok(db
                .collection::<mongodb::bson::Document>(collection)
                .count_documents(mongodb::bson::doc! {})
                .run()?),
        }
    }
}

fn copy_rows(client: &mut postgres::Transaction<'_>, target: &str, docs: &[Doc]) -> Result<u64, postgres::Error> {
    let sink = client.copy_in(&format!("copy {target} (_id, doc) from stdin (format binary)"))?;
    let mut writer = BinaryCopyInWriter::new(sink, &[Type::TEXT, Type::JSONB]);
    for d in docs {
        writer.write(&[&d.id, &RawJsonb(&d.json)])?;
    }
    writer.finish()
}

fn copy_direct(client: &mut postgres::Client, collection: &str, docs: &[Doc]) -> Result<u64, postgres::Error> {
    let mut tx = client.transaction()?;
    let n = copy_rows(&mut tx, &quote_ident(collection), docs)?;
    tx.commit()?;
    Ok(n)
}

fn copy_idempotent(client: &mut postgres::Client, collection: &str, docs: &[Doc]) -> Result<u64, postgres::Error> {
    let mut tx = client.transaction()?;
    tx.batch_execute("create temp table if not exists mysimbdp_stage (_id text, doc jsonb) on commit delete rows")?;
    copy_rows(&mut tx, "mysimbdp_stage", docs)?;
    let n = tx.execute(
        &format!(
            "insert into {} (_id, doc) select _id, doc from mysimbdp_stage on conflict (_id) do nothing",
            quote_ident(collection)
        ),
        &[],
    )?;
    tx.commit()?;
    Ok(n)
}

fn insert_mongo(db: &mongodb::sync::Database, collection: &str, docs: &[Doc]) -> anyhow::Result<u64> {
    let mut batch = Vec::with_capacity(docs.len());
    for d in docs {
        let mut doc: mongodb::bson::Document =
            serde_json::from_str(&d.json).context("document is not a JSON object")?;
        doc.insert("_id", d.id.clone());
        batch.push(doc);
    }
    let coll = db.collection::<mongodb::bson::Document>(collection);
    match coll.insert_many(batch).ordered(false).run() {
        Ok(r) => Ok(r.inserted_ids.len() as u64),
        Err(e) => match *e.kind {
            mongodb::error::ErrorKind::InsertMany(ref failure)
                if failure.write_errors.as_ref().is_some_and(|w| w.iter().all(|we| we.code == 11000))
                    && failure.write_concern_error.is_none() =>
            {
                let duplicates = failure.write_errors.as_ref().map_or(0, |w| w.len());
                Ok((docs.len() - duplicates) as u64)
            }
            _ => Err(e).context("writing to coredms (mongodb)"),
        },
    }
}

/// Writes batches on its own thread so the app can parse the next batch meanwhile. The bounded
/// channel (two batches) is the backpressure: a slow database slows the parser, memory stays flat.
pub struct PipelinedWriter {
    tx: Option<mpsc::SyncSender<Vec<Doc>>>,
    handles: Vec<JoinHandle<anyhow::Result<WriteStats>>>,
}

impl PipelinedWriter {
    pub fn start(coredms: CoreDms, collection: &str) -> anyhow::Result<Self> {
        Self::start_many(vec![coredms], collection)
    }

    /// One writer thread per connection, all taking batches from one queue: PostgreSQL runs one backend
    /// process per connection, so a second connection lets a bulk load use a second core.
    pub fn start_many(connections: Vec<CoreDms>, collection: &str) -> anyhow::Result<Self> {
        let writers = connections.len().max(1);
        let (tx, rx) = mpsc::sync_channel::<Vec<Doc>>(2 * writers);
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        let mut handles = Vec::with_capacity(writers);
        for (i, mut coredms) in connections.into_iter().enumerate() {
            if i == 0 {
                coredms.ensure_collection(collection)?;
            }
            let (rx, collection) = (rx.clone(), collection.to_owned());
            handles.push(std::thread::spawn(move || {
                let mut stats = WriteStats::default();
                loop {
                    let next = rx.lock().expect("writer queue").recv();
                    let Ok(batch) = next else { break };
                    stats.inserted += coredms.insert_batch(&collection, &batch)?;
                    stats.sent += batch.len() as u64;
                }
                Ok(stats)
            }));
        }
        Ok(PipelinedWriter { tx: Some(tx), handles })
    }

    pub fn send(&mut self, batch: Vec<Doc>) -> anyhow::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let tx = self.tx.as_ref().expect("send after finish");
        if tx.send(batch).is_err() {
            // The writer thread ended early: its error says why.
            return Err(self.join().err().unwrap_or_else(|| anyhow::anyhow!("writer stopped")));
        }
        Ok(())
    }

    /// Waits for everything sent to be written.
    pub fn finish(mut self) -> anyhow::Result<WriteStats> {
        self.tx.take();
        self.join()
    }

    fn join(&mut self) -> anyhow::Result<WriteStats> {
        self.tx.take();
        anyhow::ensure!(!self.handles.is_empty(), "writer already finished");
        let mut total = WriteStats::default();
        let mut first_error = None;
        for h in self.handles.drain(..) {
            match h.join().map_err(|_| anyhow::anyhow!("writer thread panicked")).and_then(|r| r) {
                Ok(s) => {
                    total.sent += s.sent;
                    total.inserted += s.inserted;
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(total), Err)
    }
}

/// Turns a file's records into batches for a [`PipelinedWriter`] and counts the records the app
/// rejected, printing the first few reasons to the job's log (stderr) with their line numbers.
pub struct Batcher {
    app: String,
    writer: PipelinedWriter,
    batch: Vec<Doc>,
    batch_size: usize,
    rejected: u64,
}

/// Rejection reasons printed per file; the rest are only counted.
const REJECTIONS_SHOWN: u64 = 10;

impl Batcher {
    pub fn new(app: &str, writer: PipelinedWriter, batch_size: usize) -> Self {
        Batcher { app: app.to_owned(), writer, batch: Vec::with_capacity(batch_size), batch_size, rejected: 0 }
    }

    /// One record: a document to write, or why it was rejected.
    pub fn add(&mut self, line: u64, record: Result<Doc, String>) -> anyhow::Result<()> {
        match record {
            Ok(doc) => self.batch.push(doc),
            Err(why) => {
                self.rejected += 1;
                if self.rejected <= REJECTIONS_SHOWN {
                    eprintln!("{}: line {line} rejected: {why}", self.app);
                }
            }
        }
        if self.batch.len() == self.batch_size {
            let full = std::mem::replace(&mut self.batch, Vec::with_capacity(self.batch_size));
            self.writer.send(full)?;
        }
        Ok(())
    }

    /// Writes what is left and waits for the writer: what was written, and how many were rejected.
    pub fn finish(mut self) -> anyhow::Result<(WriteStats, u64)> {
        self.writer.send(std::mem::take(&mut self.batch))?;
        Ok((self.writer.finish()?, self.rejected))
    }
}
