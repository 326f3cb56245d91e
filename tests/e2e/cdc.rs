//! The `postgres_cdc` connector (`mysimbdp-connect postgres-cdc`) against a real PostgreSQL with
//! logical decoding and the real broker: a table's snapshot and changes as Debezium's change events,
//! the position kept across `kill -9`, and sources that never share a slot or see what their login
//! cannot.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mysimbdp_e2e::*;

use rdkafka::Message;
use serde_json::{json, Value};
use sqlx::Connection;

/// A database of its own on the test server, owned by a login of its own that may replicate.
pub struct SourceDb {
    name: String,
    login: String,
    pub url: String,
    dropped: bool,
}

impl SourceDb {
    pub async fn new(replication: bool) -> Self {
        let name = unique("cdc_src").replace('-', "_");
        let login = format!("{name}_login");
        let password = uuid::Uuid::new_v4().simple().to_string();
        let mut admin = connect_admin(&pg_url()).await;
        let attr = if replication { "replication" } else { "noreplication" };
        sqlx::raw_sql(&format!("create role {login} login {attr} password '{password}'"))
            .execute(&mut admin)
            .await
            .unwrap();
        sqlx::raw_sql(&format!("create database {name} owner {login}")).execute(&mut admin).await.unwrap();
        let base = pg_url();
        let host = base.split('@').nth(1).and_then(|h| h.split('/').next()).unwrap().to_owned();
        let url = format!("postgres://{login}:{password}@{host}/{name}");
        SourceDb { name, login, url, dropped: false }
    }

    pub async fn sql(&self, statements: &str) {
        let mut c = sqlx::PgConnection::connect(&self.url).await.unwrap();
        sqlx::raw_sql(statements).execute(&mut c).await.unwrap_or_else(|e| panic!("{statements}: {e}"));
    }

    /// A connection as the database's own login.
    pub async fn connect(&self) -> sqlx::PgConnection {
        sqlx::PgConnection::connect(&self.url).await.unwrap()
    }

    /// The confirmed position of each slot in this database.
    async fn slots(&self) -> BTreeMap<String, Option<String>> {
        let mut admin = connect_admin(&pg_url()).await;
        sqlx::query_as::<_, (String, Option<String>)>(
            "select slot_name::text, confirmed_flush_lsn::text from pg_replication_slots where database = $1",
        )
        .bind(&self.name)
        .fetch_all(&mut admin)
        .await
        .unwrap()
        .into_iter()
        .collect()
    }

    /// Drops the database, its slots and its login. A slot left behind holds the server's log and its
    /// catalog's oldest row versions (every later test's catalog then only grows): a failed test
    /// drops them too, as it unwinds (`Drop`).
    pub async fn drop(mut self) {
        remove_source_db(&self.name, &self.login).await;
        self.dropped = true;
    }
}

impl Drop for SourceDb {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let (name, login) = (self.name.clone(), self.login.clone());
        block_on_aside(move || async move { remove_source_db(&name, &login).await });
    }
}

async fn remove_source_db(name: &str, login: &str) {
    let mut admin = connect_admin(&pg_url()).await;
    // Sessions still using a slot (a connector of a failed test, or one a platform restarts and
    // which comes back between the two steps) end, and then the slots go; again until both hold.
    let end = "select pg_terminate_backend(active_pid) from pg_replication_slots where database = $1 and active_pid is not null";
    let drop = "select pg_drop_replication_slot(slot_name) from pg_replication_slots where database = $1";
    eventually(Duration::from_secs(10), "the slots to be dropped", async || {
        sqlx::query(end).bind(name).execute(&mut admin).await.unwrap();
        sqlx::query(drop).bind(name).execute(&mut admin).await.is_ok()
    })
    .await;
    sqlx::raw_sql(&format!("drop database if exists {name} with (force)")).execute(&mut admin).await.unwrap();
    sqlx::raw_sql(&format!("drop role if exists {login}")).execute(&mut admin).await.unwrap();
}

/// A connector of `tenant`'s source `source` on `db`'s tables.
fn connector(
    tenant: &str,
    source: &str,
    db: &SourceDb,
    tables: &str,
    prefix: &str,
    extra: &[(&str, &str)],
) -> Connector {
    let mut cmd = Command::new(bin("mysimbdp-connect"));
    cmd.arg("postgres-cdc")
        .env_clear()
        .env("KAFKA_BROKERS", kafka_brokers())
        .env("MYSIMBDP_TENANT", tenant)
        .env("MYSIMBDP_CDC_SOURCE", source)
        .env("MYSIMBDP_CDC_DATABASE_URL", &db.url)
        .env("MYSIMBDP_CDC_TABLES", tables)
        .env("MYSIMBDP_CDC_TOPIC_PREFIX", prefix)
        .env("MYSIMBDP_CDC_SNAPSHOT", "initial")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    Connector(cmd.spawn().unwrap())
}

/// A message read back: its offset, key and value (`None`: a tombstone).
#[derive(Debug)]
struct Read {
    offset: i64,
    key: Option<Value>,
    value: Option<Value>,
}

/// Reads `topic` from the start until `want` messages came, or `within` passed.
fn read_topic(topic: &str, want: usize, within: Duration) -> Vec<Read> {
    let c = partition_reader(topic);
    let mut out = Vec::new();
    let deadline = Instant::now() + within;
    while out.len() < want && Instant::now() < deadline {
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            let parse = |b: &[u8]| serde_json::from_slice::<Value>(b).unwrap();
            out.push(Read { offset: m.offset(), key: m.key().map(parse), value: m.payload().map(parse) });
        }
    }
    out
}

const ORDERS: &str = "create table orders (id int primary key, amount numeric(12,2), placed_at timestamp, \
     placed_tz timestamptz, details jsonb, tags text[], note text)";

#[tokio::test(flavor = "multi_thread")]
async fn a_tables_snapshot_and_changes_arrive_as_debezium_events_in_commit_order() {
    let db = SourceDb::new(true).await;
    db.sql(ORDERS).await;
    db.sql(
        "insert into orders values (1, 12.50, '2026-12-01 10:00:00.5', '2026-12-01 10:00:00.25+02', \
         '{\"rush\": true, \"items\": [1, 2]}', '{a,\"b c\",NULL}', 'first'); \
         insert into orders (id) values (2)",
    )
    .await;
    let tenant = unique("cdct");
    let prefix = format!("{tenant}.shop");
    let topic = format!("{prefix}.public.orders");
    create_topic(1, &topic).await;
    let plain = connector(&tenant, "orders", &db, "public.orders", &prefix, &[]);
    let snapshot = tokio::task::spawn_blocking({
        let topic = topic.clone();
        move || read_topic(&topic, 2, Duration::from_secs(60))
    })
    .await
    .unwrap();
    assert_eq!(snapshot.len(), 2, "the snapshot's two rows");
    let first = snapshot[0].value.as_ref().unwrap();
    assert_eq!(first["op"], "r");
    assert_eq!(first["source"]["snapshot"], "true");
    assert_eq!(snapshot[1].value.as_ref().unwrap()["source"]["snapshot"], "last");
    assert_eq!(
        first["after"],
        json!({"id": 1, "amount": "12.50", "placed_at": 1_796_119_200_500_000i64, "placed_tz": "2026-12-01T08:00:00.250Z",
               "details": "{\"rush\": true, \"items\": [1, 2]}", "tags": ["a", "b c", null], "note": "first"})
    );
    assert_eq!(
        snapshot[1].value.as_ref().unwrap()["after"],
        json!({"id": 2, "amount": null, "placed_at": null,
        "placed_tz": null, "details": null, "tags": null, "note": null})
    );
    assert_eq!(snapshot[0].key, Some(json!({"id": 1})));

    db.sql("insert into orders (id, amount, tags) values (3, -1, '{}')").await;
    db.sql("update orders set amount = 99.99 where id = 1").await;
    db.sql("delete from orders where id = 2").await;
    db.sql("begin; insert into orders (id, note) values (4, 'x'); update orders set note = 'y' where id = 4; commit")
        .await;
    let all = tokio::task::spawn_blocking({
        let topic = topic.clone();
        move || read_topic(&topic, 8, Duration::from_secs(60))
    })
    .await
    .unwrap();
    let log = plain.output();
    assert_eq!(all.len(), 8, "snapshot 2 + 5 changes + 1 tombstone; the connector said:\n{log}");
    let ops: Vec<(Option<Value>, Option<String>)> = all[2..]
        .iter()
        .map(|r| (r.key.clone(), r.value.as_ref().map(|v| v["op"].as_str().unwrap().to_owned())))
        .collect();
    let op = |id: i32, op: &str| (Some(json!({"id": id})), Some(op.to_owned()));
    assert_eq!(ops, [op(3, "c"), op(1, "u"), op(2, "d"), (Some(json!({"id": 2})), None), op(4, "c"), op(4, "u")]);
    let update = all[3].value.as_ref().unwrap();
    assert_eq!(update["after"]["amount"], "99.99");
    assert_eq!(update["before"], Value::Null, "replica identity default sends no old row");
    let delete = all[4].value.as_ref().unwrap();
    assert_eq!(delete["before"]["id"], 2);
    assert_eq!(delete["after"], Value::Null);
    // Commit order: each change's log position after the one before; one transaction, one txId.
    let lsns: Vec<u64> =
        all[2..].iter().filter_map(|r| r.value.as_ref()).map(|v| v["source"]["lsn"].as_u64().unwrap()).collect();
    assert!(lsns.windows(2).all(|w| w[0] < w[1]), "{lsns:?}");
    let (c4, u4) = (all[6].value.as_ref().unwrap(), all[7].value.as_ref().unwrap());
    assert_eq!(c4["source"]["txId"], u4["source"]["txId"]);
    assert_ne!(c4["source"]["txId"], update["source"]["txId"]);
    assert!(all[2].value.as_ref().unwrap()["source"]["ts_ms"].as_i64().unwrap() > 1_700_000_000_000);

    // The same changes with Connect's schema part, from a second source of the same tenant: its own
    // slot, its own snapshot (the table as it is now), the same payloads.
    let schema_topic = format!("{prefix}2.public.orders");
    create_topic(1, &schema_topic).await;
    let with = connector(
        &tenant,
        "orders-with-schema",
        &db,
        "public.orders",
        &format!("{prefix}2"),
        &[("MYSIMBDP_CDC_SCHEMAS", "true")],
    );
    let read =
        tokio::task::spawn_blocking(move || read_topic(&schema_topic, 3, Duration::from_secs(60))).await.unwrap();
    // The snapshot's events reach the topic before its temporary slot becomes the source's own
    // (the copy follows the acknowledgement), so the slots are judged while the connector runs.
    eventually(Duration::from_secs(30), "one slot per source, the snapshots' temporary ones gone", async || {
        let slots = db.slots().await;
        slots.len() == 2 && slots.keys().all(|s| !s.ends_with("_init"))
    })
    .await;
    with.output();
    assert_eq!(read.len(), 3, "rows 1, 3 and 4 as the snapshot sees them");
    // A snapshot reads in the table's physical order: the updated row 1 now comes after row 3.
    let one = read.iter().find(|r| r.key.as_ref().unwrap()["payload"] == json!({"id": 1})).expect("row 1");
    let v = one.value.as_ref().unwrap();
    assert_eq!(v["schema"]["name"], format!("{prefix}2.public.orders.Envelope"));
    assert_eq!(v["schema"]["fields"][1]["fields"][2]["name"], "io.debezium.time.MicroTimestamp");
    assert_eq!(v["payload"]["after"]["amount"], "99.99");
    assert_eq!(one.key.as_ref().unwrap()["schema"]["name"], format!("{prefix}2.public.orders.Key"));
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_login_that_may_not_replicate_or_see_the_table_is_told_so() {
    let db = SourceDb::new(false).await;
    db.sql(ORDERS).await;
    let tenant = unique("cdct");
    let child = connector(&tenant, "orders", &db, "public.orders", &tenant, &[]);
    let (status, log) = tokio::task::spawn_blocking(move || child.output_at_exit()).await.unwrap();
    assert!(!status.success());
    assert!(log.contains("the login needs the REPLICATION attribute"), "{log}");
    let other = SourceDb::new(true).await;
    let child = connector(&tenant, "orders", &other, "public.orders", &tenant, &[]);
    let (_, log) = tokio::task::spawn_blocking(move || child.output_at_exit()).await.unwrap();
    assert!(log.contains("table public.orders does not exist (or this login cannot see it)"), "{log}");
    assert!(other.slots().await.is_empty(), "no slot made for a source that cannot run");
    db.drop().await;
    other.drop().await;
}

/// Reads `topic` from the start on a thread of its own, keeping every message, until dropped.
struct Tail {
    read: std::sync::Arc<std::sync::Mutex<Vec<Read>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Tail {
    fn start(topic: &str) -> Self {
        let read: std::sync::Arc<std::sync::Mutex<Vec<Read>>> = std::sync::Arc::default();
        let stop: std::sync::Arc<std::sync::atomic::AtomicBool> = std::sync::Arc::default();
        let thread = std::thread::spawn({
            let (topic, read, stop) = (topic.to_owned(), std::sync::Arc::clone(&read), std::sync::Arc::clone(&stop));
            move || {
                let c = partition_reader(&topic);
                let parse = |b: &[u8]| serde_json::from_slice::<Value>(b).unwrap();
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    if let Some(m) = c.poll(Duration::from_millis(50)) {
                        let m = m.unwrap();
                        let r = Read { offset: m.offset(), key: m.key().map(parse), value: m.payload().map(parse) };
                        read.lock().unwrap().push(r);
                    }
                }
            }
        });
        Tail { read, stop, thread: Some(thread) }
    }

    fn len(&self) -> usize {
        self.read.lock().unwrap().len()
    }

    /// Waits until `n` messages were read, or `within` passed (the writer may be done).
    async fn wait_for(&self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.len() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Waits until nothing new came for `quiet`; returns how many messages were read.
    async fn settle(&self, quiet: Duration) -> usize {
        let mut last = (self.len(), Instant::now());
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let n = self.len();
            if n != last.0 {
                last = (n, Instant::now());
            } else if last.1.elapsed() >= quiet {
                return n;
            }
        }
    }

    fn finish(mut self) -> Vec<Read> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        std::mem::take(&mut *self.read.lock().unwrap())
    }
}

/// The slot's confirmed position, as a number.
async fn confirmed(db: &SourceDb, slot: &str) -> u64 {
    let text = db.slots().await.remove(slot).flatten().expect("the slot exists");
    let (hi, lo) = text.split_once('/').unwrap();
    u64::from_str_radix(hi, 16).unwrap() << 32 | u64::from_str_radix(lo, 16).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_ten_times_during_100000_changes_the_connector_loses_none_and_repeats_only_same_lsns() {
    const TXNS: i64 = 1_000;
    const INSERTS: i64 = 80; // and 20 updates of the same rows: 100 changes a transaction
    let db = SourceDb::new(true).await;
    db.sql("create table events (id bigint primary key, v int not null, note text)").await;
    let tenant = unique("cdck");
    let topic = format!("{tenant}.db.public.events");
    create_topic(1, &topic).await;
    let tail = Tail::start(&topic);
    let start = || connector(&tenant, "events", &db, "public.events", &format!("{tenant}.db"), &[]);
    let mut running = start();
    // The slot exists once the (empty) snapshot is done.
    let slot = eventually_slot(&db).await;

    let writer = {
        let url = db.url.clone();
        async move {
            let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
            for t in 0..TXNS {
                let (lo, hi) = (t * INSERTS + 1, (t + 1) * INSERTS);
                let sql = format!(
                    "begin; insert into events select g, 0, 'n' || g from generate_series({lo}, {hi}) g; \
                     update events set v = 1 where id between {lo} and {} ; commit",
                    lo + 19
                );
                sqlx::raw_sql(&sql).execute(&mut c).await.unwrap();
            }
        }
    };
    let started = Instant::now();
    let killer = async {
        let mut checks = Vec::new();
        for k in 0..10 {
            // Killed while it writes, the moment new messages show: the window where a slot moved
            // before the broker acknowledged would lose them. Every other kill a varying number of
            // messages later, anywhere in a pass.
            let seen = tail.len();
            let more = if k % 2 == 0 { 1 } else { 700 * k as usize };
            tail.wait_for(seen + more, Duration::from_secs(10)).await;
            running.kill();
            let at = confirmed(&db, &slot).await;
            let read = tail.settle(Duration::from_millis(700)).await;
            checks.push((at, read));
            running = start();
        }
        checks
    };
    let ((), checks) = tokio::join!(writer, killer);
    let expected = (TXNS * 100) as usize;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut distinct = BTreeMap::new();
    while Instant::now() < deadline {
        distinct = changes_by_identity(&tail.read.lock().unwrap());
        if distinct.len() >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = running.output();
    let all = tail.finish();
    eprintln!("{} messages for {expected} changes in {:?}, kills at {checks:?}", all.len(), started.elapsed());
    assert_eq!(distinct.len(), expected, "every change, once at least; the last run said:\n{log}");
    for ((id, op), lsns) in &distinct {
        assert_eq!(lsns.len(), 1, "change {op} of row {id} written with different positions: {lsns:?}");
    }
    // After each kill, everything before the slot's position was already in the topic.
    for (at, read_then) in checks {
        let late: Vec<&Read> = all
            .iter()
            .filter(|r| r.value.as_ref().is_some_and(|v| v["source"]["lsn"].as_u64().unwrap() < at))
            .filter(|r| r.offset >= read_then as i64)
            .collect();
        // A message before the position may come again later (a duplicate): what matters is
        // that its first copy was there.
        let missing: Vec<&&Read> = late
            .iter()
            .filter(|r| {
                !all[..read_then].iter().any(|e| {
                    e.value.as_ref().map(|v| &v["source"]["lsn"]) == r.value.as_ref().map(|v| &v["source"]["lsn"])
                })
            })
            .collect();
        assert!(
            missing.is_empty(),
            "the slot was at {at} while {} changes before it were not in the topic",
            missing.len()
        );
    }
    db.drop().await;
}

/// Each change (row, op) with the positions it was written with.
fn changes_by_identity(read: &[Read]) -> BTreeMap<(i64, String), std::collections::BTreeSet<u64>> {
    let mut out: BTreeMap<(i64, String), std::collections::BTreeSet<u64>> = BTreeMap::new();
    for v in read.iter().filter_map(|r| r.value.as_ref()) {
        let image = if v["after"].is_null() { &v["before"] } else { &v["after"] };
        let id = image["id"].as_i64().unwrap();
        out.entry((id, v["op"].as_str().unwrap().to_owned())).or_default().insert(v["source"]["lsn"].as_u64().unwrap());
    }
    out
}

async fn eventually_slot(db: &SourceDb) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let slots = db.slots().await;
        if let Some(s) = slots.keys().find(|s| !s.ends_with("_init")) {
            return s.clone();
        }
        assert!(Instant::now() < deadline, "no slot after 30s: {slots:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The table as the events say it is: each row's last image, deletes removing it.
fn fold(read: &[Read]) -> BTreeMap<i64, Value> {
    let mut rows = BTreeMap::new();
    for v in read.iter().filter_map(|r| r.value.as_ref()) {
        match v["op"].as_str().unwrap() {
            "d" => rows.remove(&v["before"]["id"].as_i64().unwrap()),
            _ => rows.insert(v["after"]["id"].as_i64().unwrap(), v["after"].clone()),
        };
    }
    rows
}

/// `field` of each event with `op`.
fn of_op<T: Ord>(read: &[Read], op: &str, field: impl Fn(&Value) -> T) -> BTreeSet<T> {
    read.iter().filter_map(|r| r.value.as_ref()).filter(|v| v["op"] == op).map(field).collect()
}

fn lsn(v: &Value) -> u64 {
    v["source"]["lsn"].as_u64().unwrap()
}

/// Equal maps, or a panic naming the first few rows that differ.
fn assert_same(got: &BTreeMap<i64, Value>, want: &BTreeMap<i64, Value>, what: &str) {
    let keys: BTreeSet<&i64> = got.keys().chain(want.keys()).collect();
    let differ: Vec<(&i64, Option<&Value>, Option<&Value>)> =
        keys.into_iter().map(|k| (k, got.get(k), want.get(k))).filter(|(_, g, w)| g != w).collect();
    assert!(
        differ.is_empty(),
        "{} rows differ (row, events, table), first: {:?}; {what}",
        differ.len(),
        &differ[..differ.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_taken_while_rows_change_is_exact_and_one_killed_halfway_is_taken_again() {
    let db = SourceDb::new(true).await;
    db.sql(
        "create table items (id bigint primary key, v int not null); \
            insert into items select g, 0 from generate_series(1, 100000) g",
    )
    .await;
    let tenant = unique("cdcs");
    let (exact, killed) = (format!("{tenant}.a"), format!("{tenant}.b"));
    for prefix in [&exact, &killed] {
        create_topic(1, &format!("{prefix}.public.items")).await;
    }
    let (tail_a, tail_b) =
        (Tail::start(&format!("{exact}.public.items")), Tail::start(&format!("{killed}.public.items")));
    let writer = {
        let url = db.url.clone();
        async move {
            let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
            for t in 0..300i64 {
                let sql = format!(
                    "begin; insert into items values ({}, 0); update items set v = v + 1 where id % 3000 = {t}; \
                     delete from items where id = {}; commit",
                    100_001 + t,
                    t * 50 + 7
                );
                sqlx::raw_sql(&sql).execute(&mut c).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    let a = connector(&tenant, "a", &db, "public.items", &exact, &[]);
    let mut b = connector(&tenant, "b", &db, "public.items", &killed, &[]);
    let killer = async {
        // At its snapshot's first rows (a pass writes 5,000 at a time): well before its last.
        tail_b.wait_for(1, Duration::from_secs(60)).await;
        b.kill();
        let during = db.slots().await;
        b = connector(&tenant, "b", &db, "public.items", &killed, &[]);
        during
    };
    let ((), during) = tokio::join!(writer, killer);
    assert!(
        during.keys().all(|s| !s.contains("_b_") || s.ends_with("_init")),
        "a source killed in its snapshot has no slot of its own yet (its temporary one dies with its session): {during:?}"
    );
    let mut truth = BTreeMap::new();
    {
        let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
        for (id, v) in sqlx::query_as::<_, (i64, i32)>("select id, v from items").fetch_all(&mut c).await.unwrap() {
            truth.insert(id, json!({"id": id, "v": v}));
        }
    }
    // Both connectors poll every 50 ms: two quiet seconds after the last write, they are done.
    tail_a.settle(Duration::from_secs(2)).await;
    tail_b.settle(Duration::from_secs(2)).await;
    let (log_a, log_b) = (a.output(), b.output());
    let (read_a, read_b) = (tail_a.finish(), tail_b.finish());
    assert_same(
        &fold(&read_a),
        &truth,
        &format!("the snapshot and the changes after it make the table; connector a said:\n{log_a}"),
    );
    // Killed in its snapshot, b took it again from the start. The first attempt's reads stay in the
    // topic (as Debezium's do): rows it read that were deleted before the second attempt are never
    // deleted there. From the second snapshot on, the events make the table.
    let snapshots: Vec<u64> = of_op(&read_b, "r", lsn).into_iter().collect();
    assert_eq!(snapshots.len(), 2, "b was killed during its snapshot and took it again");
    let second: Vec<Read> = read_b
        .into_iter()
        .filter(|r| {
            r.value.as_ref().is_none_or(|v| v["op"] != "r" || v["source"]["lsn"].as_u64() == Some(snapshots[1]))
        })
        .collect();
    assert_same(&fold(&second), &truth, &format!("after a second snapshot too; connector b said:\n{log_b}"));
    // Exact: a row is in the snapshot or created after it, never both; every change once.
    let id = |v: &Value| v["after"]["id"].as_i64().unwrap();
    let (reads, created) = (of_op(&read_a, "r", id), of_op(&read_a, "c", id));
    assert!(
        reads.is_disjoint(&created),
        "rows both in the snapshot and created after it: {:?}",
        reads.intersection(&created).take(5).collect::<Vec<_>>()
    );
    let identities = changes_by_identity(&read_a);
    let events = read_a.iter().filter(|r| r.value.as_ref().is_some_and(|v| v["op"] != "r")).count();
    let snapshot_lsn = of_op(&read_a, "r", lsn);
    assert_eq!(snapshot_lsn.len(), 1, "one snapshot, one position");
    assert_eq!(identities.values().map(BTreeSet::len).sum::<usize>(), identities.len(), "no change written twice");
    assert!(events > 0 && reads.len() + created.len() >= truth.len());
    db.drop().await;
}

/// An agreement whose stream section runs `sources` (YAML list items, indented four spaces).
fn with_sources(tenant: &str, sources: &str) -> String {
    let stream = crate::stream::stream_agreement(tenant, &crate::stream::Stream::default());
    if sources.is_empty() {
        stream
    } else {
        stream.replace("apps:\n", &format!("sources:\n{sources}apps:\n"))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_declared_source_runs_as_its_tenants_instance_with_its_secret_alone_and_stops_when_undeclared() {
    let db = SourceDb::new(true).await;
    db.sql(ORDERS).await;
    db.sql("insert into orders (id, note) values (1, 'before')").await;
    let (shop, thief) = (unique("shop"), unique("thief"));
    let source =
        "  - {name: orders, kind: postgres_cdc, secret: shop-db, tables: [public.orders], topic_prefix: cdc}\n";
    let mut p =
        TestPlatform::new(&[(&shop, with_sources(&shop, source)), (&thief, with_sources(&thief, source))]).await;
    p.start().await;
    let http = p.http();
    let (token, thief_token) = (p.token(Some(&shop)), p.token(Some(&thief)));

    // Declared before its secret is stored: the instance fails, saying what is missing.
    let mut first = Value::Null;
    eventually(Duration::from_secs(30), "the source's first instance to fail", async || {
        first = crate::stream::instances_of(&p, &token, &shop, "source:orders").await.pop().unwrap_or_default();
        first["state"] == "failed"
    })
    .await;
    assert_eq!(
        first["detail"],
        format!("source `orders` needs secret `shop-db`, which tenant `{shop}` has not stored (PUT /v1/tenants/{shop}/secrets/shop-db)")
    );
    let body = serde_json::to_vec(&json!({ "value": db.url })).unwrap();
    let r = http
        .call("PUT", &format!("/v1/tenants/{shop}/secrets/shop-db"), Some(&token), Some(("application/json", body)))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // The stored secret starts a new instance, in the tenant's sandbox, writing the tenant's topic.
    let topic = format!("{shop}.cdc.public.orders");
    let read = tokio::task::spawn_blocking({
        let topic = topic.clone();
        move || read_topic(&topic, 1, Duration::from_secs(60))
    })
    .await
    .unwrap();
    let running = crate::stream::instances_of(&p, &token, &shop, "source:orders").await;
    assert_eq!(read.len(), 1, "the snapshot's row; instances: {running:?}");
    assert_eq!(read[0].value.as_ref().unwrap()["after"]["note"], "before");
    assert_eq!(read[0].value.as_ref().unwrap()["source"]["name"], format!("{shop}.cdc"));
    let live: Vec<&Value> = running.iter().filter(|i| i["desired"] == "running").collect();
    assert_eq!(live.len(), 1, "{running:?}");
    assert_ne!(live[0]["id"], first["id"], "a new instance for the new secret");
    db.sql("insert into orders (id, note) values (2, 'after')").await;
    let read = tokio::task::spawn_blocking({
        let topic = topic.clone();
        move || read_topic(&topic, 2, Duration::from_secs(60))
    })
    .await
    .unwrap();
    assert_eq!(read[1].value.as_ref().unwrap()["op"], "c");
    // It reports like an app: signed, kept, its silence watched; not judged (nothing it reads is a topic).
    let id = live[0]["id"].as_str().unwrap().to_owned();
    let mut reports = Vec::new();
    eventually(Duration::from_secs(30), "the connector's reports", async || {
        let page = crate::stream::get_list(&http, &token, &format!("/v1/tenants/{shop}/reports?instance={id}")).await;
        reports = page;
        reports.iter().map(|r| r["messages"].as_i64().unwrap()).sum::<i64>() >= 2
    })
    .await;
    assert!(reports.iter().all(|r| r["verdict"] == "unjudged" && r["app"] == "source:orders"), "{reports:?}");
    let log = http.get(&format!("/v1/tenants/{shop}/instances/{}/log", live[0]["id"].as_str().unwrap()), &token).await;
    assert!(log.text().contains("postgres-cdc: streaming changes of 1 tables"), "{}", log.text());
    assert!(!log.text().contains(&db.url), "the log shows no secret");

    // The thief declares the same source: shop's secret is not its own, so its instance fails the
    // same way, and with a secret of its own that guesses shop's database it cannot log in.
    let mut theirs = Value::Null;
    eventually(Duration::from_secs(30), "the thief's source to fail", async || {
        theirs = crate::stream::instances_of(&p, &thief_token, &thief, "source:orders").await.pop().unwrap_or_default();
        theirs["state"] == "failed"
    })
    .await;
    assert!(theirs["detail"].as_str().unwrap().contains(&format!("which tenant `{thief}` has not stored")), "{theirs}");
    let guessed = db.url.replace(db.url.split(':').nth(2).unwrap().split('@').next().unwrap(), "guessed");
    let body = serde_json::to_vec(&json!({ "value": guessed })).unwrap();
    let r = http
        .call(
            "PUT",
            &format!("/v1/tenants/{thief}/secrets/shop-db"),
            Some(&thief_token),
            Some(("application/json", body)),
        )
        .await;
    assert_eq!(r.status, 200);
    eventually(Duration::from_secs(60), "the thief's connector to fail to log in", async || {
        let latest = crate::stream::instances_of(&p, &thief_token, &thief, "source:orders").await;
        let id = latest.iter().find(|i| i["desired"] == "running").map(|i| i["id"].as_str().unwrap().to_owned());
        match id {
            Some(id) => http
                .get(&format!("/v1/tenants/{thief}/instances/{id}/log"), &thief_token)
                .await
                .text()
                .contains("password authentication failed"),
            None => false,
        }
    })
    .await;
    assert!(
        db.slots().await.keys().all(|s| !s.contains(&thief.replace('-', "_"))),
        "no slot of the thief's on shop's database"
    );

    // Undeclared: its instance stops, and one last run releases its slot and publication (a slot
    // left behind would keep the database's log for ever).
    let shop_slot =
        |slots: &BTreeMap<String, Option<String>>| slots.keys().any(|s| s.contains(&shop.replace('-', "_")));
    assert!(shop_slot(&db.slots().await));
    std::fs::write(p.tenants_dir.join(format!("{shop}.yaml")), with_sources(&shop, "")).unwrap();
    let id = live[0]["id"].as_str().unwrap().to_owned();
    crate::stream::wait_state(&http, &token, &shop, &id, "exited", Duration::from_secs(60)).await;
    let mut release = Value::Null;
    eventually(Duration::from_secs(60), "the source's release to run", async || {
        let all = crate::stream::instances_of(&p, &token, &shop, "source:orders").await;
        release =
            all.iter().find(|i| i["cause"].as_str().unwrap().starts_with("release ")).cloned().unwrap_or_default();
        assert_ne!(release["state"], "failed", "{all:?}");
        release["state"] == "exited"
    })
    .await;
    assert!(!shop_slot(&db.slots().await), "the slot is gone: {:?}", db.slots().await);
    let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let publications: i64 = sqlx::query_scalar("select count(*) from pg_publication").fetch_one(&mut c).await.unwrap();
    assert_eq!(publications, 0, "the publication is gone");
    assert!(crate::stream::instances_of(&p, &token, &shop, "source:orders")
        .await
        .iter()
        .all(|i| i["desired"] == "stopped"));
    p.cleanup().await;
    db.drop().await;
}
