//! The `postgres_cdc` source: a tenant's PostgreSQL tables into the tenant's topics as Debezium
//! change events.
//!
//! Logical decoding with the built-in `pgoutput` plugin, read through its SQL functions
//! (`pg_logical_slot_peek_binary_changes`): each pass reads whole committed transactions after the
//! slot's confirmed position, writes their events, waits until the broker acknowledged every one,
//! and only then moves the slot past them (`pg_replication_slot_advance`). Killed anywhere, the next
//! run reads again from the last position the broker holds: nothing is lost, and what is written
//! twice is the same change with the same `lsn`.
//!
//! The initial snapshot is exact: it runs under a temporary slot made before the snapshot's
//! transaction, then reads the changes after that slot's start up to where the snapshot was taken,
//! dropping the transactions the snapshot already saw (by transaction id), and only then copies the
//! temporary slot into the source's own. Killed before that copy, the temporary slot dies with its
//! session and the next run takes the snapshot again; once the slot exists, the snapshot is done.

pub mod envelope;
pub mod names;
pub mod pgoutput;
pub mod source;
pub mod values;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use postgres::Client;

use crate::process::{now_ms, stop_on_sigterm, terminating, var};
use crate::publish::{Outgoing, Publisher};
use crate::report::Reporter;
use envelope::{Op, Shape, Source};
use pgoutput::{Datum, Message, Relation, PG_EPOCH_OFFSET_US};
use source::{Snapshot, Table};

/// The environment a CDC connector is given (beside the stream app contract's).
pub mod env {
    /// The source's connection URL, from the tenant's secret that the agreement names.
    pub const DATABASE_URL: &str = "MYSIMBDP_CDC_DATABASE_URL";
    /// The source's name in the agreement.
    pub const SOURCE: &str = "MYSIMBDP_CDC_SOURCE";
    /// `schema.table`, comma-separated.
    pub const TABLES: &str = "MYSIMBDP_CDC_TABLES";
    /// `<tenant>.<prefix>`: events of table `s.t` go to `<tenant>.<prefix>.s.t`.
    pub const TOPIC_PREFIX: &str = "MYSIMBDP_CDC_TOPIC_PREFIX";
    /// `initial` or `never`.
    pub const SNAPSHOT: &str = "MYSIMBDP_CDC_SNAPSHOT";
    /// `true`: events carry Connect's schema part.
    pub const SCHEMAS: &str = "MYSIMBDP_CDC_SCHEMAS";
    /// `default` or `full`: the tables' replica identity.
    pub const REPLICA_IDENTITY: &str = "MYSIMBDP_CDC_REPLICA_IDENTITY";
    /// `true`: the source is gone; drop its slot and publication, and exit.
    pub const RELEASE: &str = "MYSIMBDP_CDC_RELEASE";
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotMode {
    Initial,
    Never,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub tenant: String,
    pub source: String,
    pub database_url: String,
    pub tables: Vec<(String, String)>,
    pub topic_prefix: String,
    pub snapshot: SnapshotMode,
    pub schemas: bool,
    pub replica_identity_full: bool,
    pub brokers: String,
    /// Messages read per pass (whole transactions, so a pass may hold more).
    pub batch: i32,
    /// The pause after a pass that found nothing.
    pub idle: Duration,
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        let tables = var(env::TABLES)?
            .split(',')
            .map(|t| {
                let (s, n) = t.trim().split_once('.').with_context(|| format!("`{t}` is not schema.table"))?;
                Ok((s.to_owned(), n.to_owned()))
            })
            .collect::<anyhow::Result<_>>()?;
        let snapshot = match var(env::SNAPSHOT)?.as_str() {
            "initial" => SnapshotMode::Initial,
            "never" => SnapshotMode::Never,
            other => bail!("{}: unknown snapshot mode `{other}` (initial, never)", env::SNAPSHOT),
        };
        Ok(Config {
            tenant: var("MYSIMBDP_TENANT")?,
            source: var(env::SOURCE)?,
            database_url: var(env::DATABASE_URL)?,
            tables,
            topic_prefix: var(env::TOPIC_PREFIX)?,
            snapshot,
            schemas: var(env::SCHEMAS).is_ok_and(|v| v == "true"),
            replica_identity_full: var(env::REPLICA_IDENTITY).is_ok_and(|v| v == "full"),
            brokers: var("KAFKA_BROKERS")?,
            batch: 5_000,
            idle: Duration::from_millis(50),
        })
    }

    fn topic(&self, relation: &Relation) -> String {
        format!("{}.{}.{}", self.topic_prefix, relation.schema, relation.name)
    }
}

/// The connector's state while it runs.
struct Cdc {
    pg: Client,
    publication: String,
    publisher: Publisher,
    reporter: Option<Reporter>,
    ev: Events,
}

/// Writes `batch`, waits for the broker to hold all of it, and counts it in the report.
fn send(publisher: &Publisher, reporter: &Option<Reporter>, batch: &[Outgoing]) -> anyhow::Result<()> {
    publisher.send_all(batch)?;
    if let Some(r) = reporter {
        let now = now_ms();
        r.record_all(batch.iter().map(|m| (m.value.as_ref().map_or(0, Vec::len), (now - m.at_ms) as f64)));
    }
    Ok(())
}

/// What turns decoded changes into messages.
struct Events {
    cfg: Config,
    db: String,
    /// By table oid: the captured tables' keys and topics.
    tables: HashMap<u32, Table>,
    /// The relations decoding described, by oid.
    relations: HashMap<u32, Relation>,
    last_commit: Option<u64>,
}

/// A source the agreement no longer declares: its slot and publication are dropped, so PostgreSQL
/// stops keeping the log for it (a forgotten slot fills the tenant's disk). The slot may still be in
/// use for a moment by the source's last run, stopping.
pub fn release(tenant: &str, source_name: &str, database_url: &str) -> anyhow::Result<()> {
    let mut pg = source::connect(database_url)?;
    let (slot, publication) = (names::slot(tenant, source_name), names::publication(tenant, source_name));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let dropped = pg.query(
            "select pg_drop_replication_slot(slot_name) from pg_replication_slots \
             where slot_name = $1 and database = current_database()",
            &[&slot],
        );
        match dropped {
            Ok(rows) => {
                eprintln!("postgres-cdc: source {source_name} released: {} slot dropped", rows.len());
                break;
            }
            Err(e) if Instant::now() < deadline && e.to_string().contains("is active") => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e).with_context(|| format!("dropping replication slot {slot}")),
        }
    }
    pg.batch_execute(&format!("drop publication if exists {publication}"))
        .with_context(|| format!("dropping publication {publication}"))?;
    Ok(())
}

/// `release` for the source the environment names.
pub fn release_from_env() -> anyhow::Result<()> {
    release(&var("MYSIMBDP_TENANT")?, &var(env::SOURCE)?, &var(env::DATABASE_URL)?)
}

/// Runs until SIGTERM (then finishes the pass it is in) or an error.
pub fn run(cfg: Config) -> anyhow::Result<()> {
    stop_on_sigterm();
    let mut pg = source::connect(&cfg.database_url)?;
    let db = source::database_name(&mut pg)?;
    let tables = source::describe(&mut pg, &cfg.tables)?;
    let publication = names::publication(&cfg.tenant, &cfg.source);
    source::ensure_publication(&mut pg, &publication, &tables, cfg.replica_identity_full)?;
    let publisher = Publisher::new(&cfg.brokers)?;
    let reporter = Reporter::from_env(&cfg.brokers)?;
    let tables = tables.into_iter().map(|t| (t.relation.oid, t)).collect();
    let ev = Events { cfg, db, tables, relations: HashMap::new(), last_commit: None };
    let mut cdc = Cdc { pg, publication, publisher, reporter, ev };
    let slot = names::slot(&cdc.ev.cfg.tenant, &cdc.ev.cfg.source);
    if !source::slot_exists(&mut cdc.pg, &slot)? {
        match cdc.ev.cfg.snapshot {
            SnapshotMode::Never => {
                let at = source::create_slot(&mut cdc.pg, &slot, false)?;
                eprintln!("postgres-cdc: slot {slot} made at {}; no snapshot", pgoutput::format_lsn(at));
            }
            SnapshotMode::Initial => cdc.snapshot(&slot)?,
        }
    }
    eprintln!("postgres-cdc: streaming changes of {} tables from slot {slot}", cdc.ev.tables.len());
    while !terminating() {
        let started = Instant::now();
        if cdc.pass(&slot, None, None)? == 0 {
            std::thread::sleep(cdc.ev.cfg.idle.saturating_sub(started.elapsed()));
        }
    }
    eprintln!("postgres-cdc: stopping at {}", cdc.ev.last_commit.map(pgoutput::format_lsn).unwrap_or_default());
    Ok(())
}

impl Cdc {
    /// The initial snapshot, exact with respect to the change stream (see the module's comment).
    fn snapshot(&mut self, slot: &str) -> anyhow::Result<()> {
        let temporary = names::snapshot_slot(&self.ev.cfg.tenant, &self.ev.cfg.source);
        // A run killed in its snapshot leaves its temporary slot until the server notices its
        // session is gone: a moment, usually.
        let deadline = Instant::now() + Duration::from_secs(30);
        while source::slot_exists(&mut self.pg, &temporary)? {
            if Instant::now() > deadline {
                bail!("slot {temporary} of an earlier snapshot is still held by another session after 30s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let start = source::create_slot(&mut self.pg, &temporary, true)?;
        let mut tx = self
            .pg
            .build_transaction()
            .isolation_level(postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()?;
        let snapshot = Snapshot::parse(&tx.query_one("select pg_current_snapshot()::text", &[])?.get::<_, String>(0))?;
        let taken = pgoutput::parse_lsn(&tx.query_one("select pg_current_wal_lsn()::text", &[])?.get::<_, String>(0))?;
        let mut pending: Option<Outgoing> = None;
        let mut batch = Vec::new();
        let mut rows = 0u64;
        let ev = &self.ev;
        let oids: Vec<u32> = ev.cfg.tables.iter().filter_map(|(s, n)| ev.oid_of(s, n)).collect();
        for oid in oids {
            let table = &ev.tables[&oid];
            let columns: Vec<String> =
                table.relation.columns.iter().map(|c| format!("\"{}\"::text", c.name.replace('"', "\"\""))).collect();
            let query = format!(
                "select {} from \"{}\".\"{}\"",
                columns.join(", "),
                table.relation.schema.replace('"', "\"\""),
                table.relation.name.replace('"', "\"\"")
            );
            let portal = tx.bind(&query, &[])?;
            loop {
                let page = tx.query_portal(&portal, 2_000)?;
                if page.is_empty() {
                    break;
                }
                for row in &page {
                    let datums: Vec<Datum> = (0..row.len())
                        .map(|i| row.get::<_, Option<String>>(i).map_or(Datum::Null, Datum::Text))
                        .collect();
                    let source = ev.source_block("true", start, None, now_ms());
                    let event = ev.event(&table.relation, Op::Read, None, Some(&datums), &source)?;
                    batch.extend(pending.replace(event.into_iter().next().expect("a read has one message")));
                    rows += 1;
                }
                if batch.len() >= 5_000 {
                    send(&self.publisher, &self.reporter, &std::mem::take(&mut batch))?;
                }
            }
        }
        // The last row says so, as Debezium's does (`snapshot: last`).
        if let Some(mut last) = pending {
            if let Some(v) = &last.value {
                let mut value: serde_json::Value = serde_json::from_slice(v)?;
                let payload = if ev.cfg.schemas { &mut value["payload"] } else { &mut value };
                payload["source"]["snapshot"] = "last".into();
                last.value = Some(serde_json::to_vec(&value)?);
            }
            batch.push(last);
        }
        send(&self.publisher, &self.reporter, &batch)?;
        tx.commit()?;
        // The changes between the temporary slot's start and the snapshot: only those it did not see.
        self.pass(&temporary, Some(taken), Some(&snapshot))?;
        source::advance(&mut self.pg, &temporary, taken.max(start))?;
        self.pg
            .query_one("select pg_copy_logical_replication_slot($1, $2, false)", &[&temporary, &slot])
            .with_context(|| format!("keeping the snapshot's slot as {slot}"))?;
        self.pg.query_one("select pg_drop_replication_slot($1)", &[&temporary])?;
        eprintln!("postgres-cdc: snapshot of {rows} rows at {} done; slot {slot} made", pgoutput::format_lsn(start));
        Ok(())
    }

    /// Reads, writes and confirms the transactions after `slot`'s position (before `upto`, if
    /// given), dropping those `seen` by the snapshot. Returns the changes read.
    fn pass(&mut self, slot: &str, upto: Option<u64>, seen: Option<&Snapshot>) -> anyhow::Result<usize> {
        let mut total = 0;
        loop {
            let changes = source::peek(&mut self.pg, slot, &self.publication, upto, self.ev.cfg.batch)?;
            if changes.is_empty() {
                return Ok(total);
            }
            total += changes.len();
            let full = changes.len() >= self.ev.cfg.batch as usize;
            let mut out = Vec::with_capacity(changes.len());
            let mut tx: Option<(u32, i64, bool)> = None;
            let mut confirmed = None;
            for change in &changes {
                match pgoutput::decode(&change.data)
                    .with_context(|| format!("decoding the change at {}", pgoutput::format_lsn(change.lsn)))?
                {
                    Message::Begin { xid, commit_ts_us, .. } => {
                        let skip = seen.is_some_and(|s| s.sees(xid));
                        tx = Some((xid, (commit_ts_us + PG_EPOCH_OFFSET_US) / 1000, skip));
                    }
                    Message::Commit { end_lsn, .. } => {
                        confirmed = Some(end_lsn);
                        self.ev.last_commit = Some(end_lsn);
                        tx = None;
                    }
                    Message::Relation(r) => {
                        self.ev.relations.insert(r.oid, r);
                    }
                    Message::Insert { relation, new } => {
                        out.extend(self.ev.change(tx, change.lsn, relation, Op::Create, None, Some(&new))?);
                    }
                    Message::Update { relation, old, new } => {
                        out.extend(self.ev.change(tx, change.lsn, relation, Op::Update, old.as_deref(), Some(&new))?);
                    }
                    Message::Delete { relation, old } => {
                        out.extend(self.ev.change(tx, change.lsn, relation, Op::Delete, Some(&old), None)?);
                    }
                    Message::Other(_) => {}
                }
            }
            send(&self.publisher, &self.reporter, &out)?;
            if let Some(lsn) = confirmed {
                source::advance(&mut self.pg, slot, lsn)?;
            }
            if !full || terminating() {
                return Ok(total);
            }
        }
    }
}

impl Events {
    fn oid_of(&self, schema: &str, name: &str) -> Option<u32> {
        self.tables.values().find(|t| t.relation.schema == schema && t.relation.name == name).map(|t| t.relation.oid)
    }

    fn source_block(&self, snapshot: &'static str, lsn: u64, xid: Option<u32>, commit_ts_ms: i64) -> SourceOwned {
        SourceOwned { snapshot, lsn, xid, commit_ts_ms, last_commit: self.last_commit }
    }

    /// The messages of one change: its event, and a tombstone after a delete (as Debezium does, so
    /// a compacted topic forgets the row).
    fn event(
        &self,
        relation: &Relation,
        op: Op,
        before: Option<&[Datum]>,
        after: Option<&[Datum]>,
        s: &SourceOwned,
    ) -> anyhow::Result<Vec<Outgoing>> {
        let key_columns = self.tables.get(&relation.oid).map(|t| t.key.as_slice()).unwrap_or_default();
        let topic = self.cfg.topic(relation);
        let shape = Shape { relation, key: key_columns, topic: &topic };
        let source = Source {
            name: &self.cfg.topic_prefix,
            db: &self.db,
            snapshot: s.snapshot,
            commit_ts_ms: s.commit_ts_ms,
            xid: s.xid,
            lsn: s.lsn,
            last_commit_lsn: s.last_commit,
        };
        let (value, image) = shape.event(op, before, after, &source, now_ms(), self.cfg.schemas)?;
        let key = shape.key(&image, self.cfg.schemas).map(|k| serde_json::to_vec(&k)).transpose()?;
        let at_ms = if op == Op::Read { now_ms() } else { s.commit_ts_ms };
        let value = Some(serde_json::to_vec(&value)?);
        let mut out = vec![Outgoing { topic: topic.clone(), key: key.clone(), value, at_ms, headers: Vec::new() }];
        if op == Op::Delete {
            out.push(Outgoing { topic, key, value: None, at_ms, headers: Vec::new() });
        }
        Ok(out)
    }

    fn change(
        &self,
        tx: Option<(u32, i64, bool)>,
        lsn: u64,
        relation: u32,
        op: Op,
        before: Option<&[Datum]>,
        after: Option<&[Datum]>,
    ) -> anyhow::Result<Vec<Outgoing>> {
        let Some((xid, commit_ts_ms, skip)) = tx else {
            bail!("a change outside a transaction at {}", pgoutput::format_lsn(lsn))
        };
        if skip {
            return Ok(Vec::new());
        }
        let relation = self
            .relations
            .get(&relation)
            .with_context(|| format!("a change to relation {relation} before its description"))?;
        let s = self.source_block("false", lsn, Some(xid), commit_ts_ms);
        self.event(relation, op, before, after, &s)
    }
}

/// `Source`'s fields that are not borrowed from the connector.
struct SourceOwned {
    snapshot: &'static str,
    lsn: u64,
    xid: Option<u32>,
    commit_ts_ms: i64,
    last_commit: Option<u64>,
}
