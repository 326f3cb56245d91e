//! The `postgres_cdc` connector (`mysimbdp-connect postgres-cdc`) against a real PostgreSQL with
//! logical decoding and the real broker: a table's snapshot and changes as Debezium's change events,
//! the position kept across `kill -9`, and sources that never share a slot or see what their login
//! cannot.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mysimbdp_e2e::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::{json, Value};
use sqlx::Connection;

/// A database of its own on the test server, owned by a login of its own that may replicate.
struct SourceDb {
    name: String,
    login: String,
    url: String,
}

impl SourceDb {
    async fn new(replication: bool) -> Self {
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
        SourceDb { name, login, url }
    }

    async fn sql(&self, statements: &str) {
        let mut c = sqlx::PgConnection::connect(&self.url).await.unwrap();
        sqlx::raw_sql(statements).execute(&mut c).await.unwrap_or_else(|e| panic!("{statements}: {e}"));
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

    async fn drop(self) {
        let mut admin = connect_admin(&pg_url()).await;
        // A slot keeps its database (and the server's log) alive: drop them first.
        let slots = "select pg_terminate_backend(active_pid) from pg_replication_slots where database = $1 and active_pid is not null";
        sqlx::query(slots).bind(&self.name).execute(&mut admin).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        sqlx::query("select pg_drop_replication_slot(slot_name) from pg_replication_slots where database = $1")
            .bind(&self.name)
            .execute(&mut admin)
            .await
            .unwrap();
        sqlx::raw_sql(&format!("drop database if exists {} with (force)", self.name))
            .execute(&mut admin)
            .await
            .unwrap();
        sqlx::raw_sql(&format!("drop role if exists {}", self.login)).execute(&mut admin).await.unwrap();
    }
}

async fn create_topic(topic: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create().unwrap();
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(1));
    let made = admin.create_topics([&new], &AdminOptions::new()).await;
    for r in made.unwrap() {
        r.unwrap_or_else(|(t, e)| panic!("creating {t}: {e}"));
    }
}

/// A connector of `tenant`'s source `source` on `db`'s tables.
fn connector(tenant: &str, source: &str, db: &SourceDb, tables: &str, prefix: &str, extra: &[(&str, &str)]) -> Child {
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
    cmd.spawn().unwrap()
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
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", unique("cdc-reader"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning).unwrap();
    c.assign(&tpl).unwrap();
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

fn stderr_of(mut child: Child) -> String {
    use std::io::Read as _;
    let _ = child.kill();
    let _ = child.wait();
    let mut s = String::new();
    child.stderr.take().unwrap().read_to_string(&mut s).unwrap();
    s
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
    create_topic(&topic).await;
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
    let log = stderr_of(plain);
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
    create_topic(&schema_topic).await;
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
    stderr_of(with);
    assert_eq!(read.len(), 3, "rows 1, 3 and 4 as the snapshot sees them");
    // A snapshot reads in the table's physical order: the updated row 1 now comes after row 3.
    let one = read.iter().find(|r| r.key.as_ref().unwrap()["payload"] == json!({"id": 1})).expect("row 1");
    let v = one.value.as_ref().unwrap();
    assert_eq!(v["schema"]["name"], format!("{prefix}2.public.orders.Envelope"));
    assert_eq!(v["schema"]["fields"][1]["fields"][2]["name"], "io.debezium.time.MicroTimestamp");
    assert_eq!(v["payload"]["after"]["amount"], "99.99");
    assert_eq!(one.key.as_ref().unwrap()["schema"]["name"], format!("{prefix}2.public.orders.Key"));
    assert_eq!(db.slots().await.len(), 2, "one slot per source, the snapshots' temporary ones gone");
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_login_that_may_not_replicate_or_see_the_table_is_told_so() {
    let db = SourceDb::new(false).await;
    db.sql(ORDERS).await;
    let tenant = unique("cdct");
    let child = connector(&tenant, "orders", &db, "public.orders", &tenant, &[]);
    let (status, log) = tokio::task::spawn_blocking(move || {
        let mut child = child;
        let status = child.wait().unwrap();
        (status, stderr_of(child))
    })
    .await
    .unwrap();
    assert!(!status.success());
    assert!(log.contains("the login needs the REPLICATION attribute"), "{log}");
    let other = SourceDb::new(true).await;
    let child = connector(&tenant, "orders", &other, "public.orders", &tenant, &[]);
    let log = tokio::task::spawn_blocking(move || stderr_of_exit(child)).await.unwrap();
    assert!(log.contains("table public.orders does not exist (or this login cannot see it)"), "{log}");
    assert!(other.slots().await.is_empty(), "no slot made for a source that cannot run");
    db.drop().await;
    other.drop().await;
}

fn stderr_of_exit(mut child: Child) -> String {
    child.wait().unwrap();
    stderr_of(child)
}
