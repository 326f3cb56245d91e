//! The seeds' pipelines as the example tenants ship them (`tenants/food.yaml`, `tenants/bank.yaml`,
//! their apps and `gen-rows`), each under a tenant name of its own, against a real PostgreSQL source
//! database, the real broker and the platform's sandbox:
//!
//! - food (seed 004): `orders` -> CDC -> the cleaning app -> `orders-clean` -> the lake by date and
//!   the coredms; the cleaner killed with `kill -9` midway, garbage in its input;
//! - bank (seeds 000, 001): `transactions` -> CDC -> two fraud agents, each in its own consumer
//!   group -> `alerts` -> the coredms;
//! - the SDK's `run_transform` (the cleaner's loop) killed with `kill -9` ten times while 30,000
//!   change events arrive: a record for every good order, a record written twice the same record;
//!   the input's offsets are committed only after the broker acknowledged what was made from them.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::Consumer;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::Message;

use serde_json::json;

use crate::cdc::SourceDb;
use crate::lake::{caught_up, read_lake, stop_when_caught_up};
use crate::stream::{get_list, instance, instances_of, produce, start, upload, wait_committed, wait_state};
use mysimbdp_e2e::*;

/// The example agreement `tenants/<name>.yaml` as tenant `tenant`'s.
fn example(name: &str, tenant: &str) -> String {
    let path = format!("{}/../tenants/{name}.yaml", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(&format!("\ntenant: {name}\n")), "{path}");
    text.replace(&format!("\ntenant: {name}\n"), &format!("\ntenant: {tenant}\n"))
}

/// `gen-rows <table> <url> <rows> 0 <seed>`: the example's generator, unpaced.
fn gen_rows(table: &str, db: &SourceDb, rows: u64, seed: u64) {
    let out = Command::new(bin("gen-rows")).args([table, &db.url, &rows.to_string(), "0", &seed.to_string()]).output();
    let out = out.unwrap();
    assert!(out.status.success(), "gen-rows: {}", String::from_utf8_lossy(&out.stderr));
}

/// Stores the tenant's secret holding the source database's URL, as its tenant.
async fn put_secret(p: &TestPlatform, tenant: &str, name: &str, db: &SourceDb) {
    let body = serde_json::to_vec(&json!({ "value": db.url })).unwrap();
    let path = format!("/v1/tenants/{tenant}/secrets/{name}");
    let r = p.http().call("PUT", &path, Some(&p.token(Some(tenant))), Some(("application/json", body))).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Uploads workspace binary `app` as the tenant's stream app and starts one instance; its id.
async fn run_app(p: &TestPlatform, tenant: &str, app: &str) -> String {
    let (http, token) = (p.http(), p.token(Some(tenant)));
    upload(&http, &token, tenant, bundle(app, "stream", &format!("exec \"$APP/{app}\""), &[app])).await;
    let id = start(&http, &token, tenant, app, 1).await[0]["id"].as_str().unwrap().to_owned();
    wait_state(&http, &token, tenant, &id, "running", Duration::from_secs(30)).await;
    id
}

async fn log_of(p: &TestPlatform, tenant: &str, id: &str) -> String {
    p.http().get(&format!("/v1/tenants/{tenant}/instances/{id}/log"), &p.token(Some(tenant))).await.text()
}

async fn ids(p: &TestPlatform, tenant: &str, collection: &str) -> BTreeSet<String> {
    let mut c = p.coredms_admin(tenant).await;
    let exists: bool =
        sqlx::query_scalar("select to_regclass($1) is not null").bind(collection).fetch_one(&mut *c).await.unwrap();
    if !exists {
        return BTreeSet::new();
    }
    let q = format!("select _id from \"{collection}\"");
    sqlx::query_scalar::<_, String>(&q).fetch_all(&mut *c).await.unwrap().into_iter().collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_food_pipeline_cleans_its_orders_into_the_lake_by_date_and_the_coredms_across_kill_9_and_garbage() {
    let db = SourceDb::new(true).await;
    gen_rows("orders", &db, 1_000, 7); // before the source starts: its snapshot
    let food = unique("food");
    let mut p = TestPlatform::new(&[(&food, example("food", &food))]).await;
    p.start().await;
    put_secret(&p, &food, "food-db", &db).await;
    let cleaner = run_app(&p, &food, "orders-cleaner").await;

    // Midway through the snapshot's orders, the cleaner is killed; the platform starts it again.
    eventually(Duration::from_secs(90), "the first clean orders in the coredms", async || {
        p.count_docs(&food, "clean_orders").await > 0
    })
    .await;
    let running = instance(&p.http(), &p.token(Some(&food)), &food, &cleaner).await;
    // SAFETY: plain syscall on a process of the test's own platform.
    unsafe { libc::kill(running["pid"].as_i64().unwrap() as i32, libc::SIGKILL) };
    // Garbage on its input topic (any producer of the tenant's may write there): refused, named.
    produce(&format!("{food}.cdc.public.orders"), vec!["not an event".into()]).await;
    gen_rows("orders", &db, 500, 8); // changes after the snapshot (op `c`)

    // The oracle: the source table itself. Good orders are those with a positive amount.
    let mut c = db.connect().await;
    let good: BTreeMap<i64, String> = sqlx::query_as::<_, (i32, String)>(
        "select order_id, created_at::date::text from orders where amount > 0 order by 1",
    )
    .fetch_all(&mut c)
    .await
    .unwrap()
    .into_iter()
    .map(|(id, day)| (i64::from(id), day))
    .collect();
    let bad_count = async |c: &mut sqlx::PgConnection, after: i32| -> i64 {
        let q = "select count(*) from orders where order_id > $1 and (amount is null or amount <= 0)";
        sqlx::query_scalar(q).bind(after).fetch_one(c).await.unwrap()
    };
    let bad = bad_count(&mut c, 0).await;
    // What the run after the kill read for certain: the orders inserted after it.
    let bad_later = bad_count(&mut c, 1_000).await;
    assert_eq!((good.len(), bad), (1_500 - 150 - 30, 180), "gen-rows' every 10th negative, every 25th null");
    let want: BTreeSet<String> = good.keys().map(i64::to_string).collect();
    eventually(Duration::from_secs(120), "every good order in the coredms, once, by order_id", async || {
        ids(&p, &food, "clean_orders").await == want
    })
    .await;
    let doc = p.doc(&food, "clean_orders", "2").await;
    assert!(doc["amount"].as_f64().unwrap() > 0.0 && doc["created_at"].as_str().unwrap().ends_with('Z'), "{doc}");

    // The lake: every good order, under its own day (pyarrow reads the files); a repeat after the
    // kill is the same order under the same day.
    let lake = p.data_dir.join("lake").join(&food).join("orders-clean");
    let mut found = BTreeMap::new();
    eventually(Duration::from_secs(60), "every good order in the lake", async || {
        if !lake.exists() {
            return false;
        }
        found = BTreeMap::new();
        for file in read_lake(&lake, ["order_id", "created_at"]).0 {
            assert_eq!(file.schema["amount"], "double", "{}", file.file);
            assert_eq!(file.schema["created_at"], "timestamp[us, tz=UTC]", "{}", file.file);
            for (id, day) in file.ids.into_iter().zip(file.days) {
                assert!(file.file.starts_with(&format!("date={day}/")), "order {id} of {day} in {}", file.file);
                found.entry(id).or_insert_with(BTreeSet::new).insert(day);
            }
        }
        found.len() >= good.len()
    })
    .await;
    let found: BTreeMap<i64, String> =
        found.into_iter().map(|(id, days)| (id, days.into_iter().next().unwrap())).collect();
    assert_eq!(found, good, "the lake's orders and days are the table's good ones");

    // What the cleaner refused, said with its reasons (a run shows its first 20); the run after the
    // kill went on past the garbage to the end of its input, and counted it with the bad orders.
    wait_committed(&format!("{food}.orders-cleaner"), &format!("{food}.cdc.public.orders"), Duration::from_secs(30))
        .await;
    let log = log_of(&p, &food, &cleaner).await;
    for reason in ["amount -", "is not positive", "amount is null"] {
        assert!(log.contains(reason), "`{reason}` not in the cleaner's log: {log}");
    }
    let reports = format!("/v1/tenants/{food}/reports?instance={cleaner}&limit=1000");
    let mut page = Vec::new();
    let counted = tokio::time::timeout(Duration::from_secs(30), async {
        // The killed run's last window died with it: the later run's rejections are certain.
        while page.iter().map(|r: &serde_json::Value| r["rejected"].as_i64().unwrap()).sum::<i64>() <= bad_later {
            tokio::time::sleep(Duration::from_millis(200)).await;
            page = get_list(&p.http(), &p.token(Some(&food)), &reports).await;
        }
    })
    .await;
    assert!(counted.is_ok(), "the bad orders and the garbage counted as rejected in the reports: {page:?}");
    // Its lag is judged on what it reads (its `inputs`), not on the topic it writes.
    eventually(Duration::from_secs(30), "a report of the cleaner with no lag", async || {
        let page = get_list(&p.http(), &p.token(Some(&food)), &reports).await;
        page.first().is_some_and(|r| r["lag"] == 0)
    })
    .await;
    let sinks = instances_of(&p, &p.token(Some(&food)), &food, "sink:orders-lake").await;
    assert!(sinks.iter().any(|i| i["state"] == "running"), "{sinks:?}");
    drop(c);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bank_pipelines_two_fraud_agents_each_read_every_transaction_and_alert_once_into_the_coredms() {
    let db = SourceDb::new(true).await;
    gen_rows("transactions", &db, 2_000, 3);
    let bank = unique("bank");
    let mut p = TestPlatform::new(&[(&bank, example("bank", &bank))]).await;
    p.start().await;
    put_secret(&p, &bank, "bank-db", &db).await;
    let amount = run_app(&p, &bank, "fraud-amount").await;
    let velocity = run_app(&p, &bank, "fraud-velocity").await;
    gen_rows("transactions", &db, 400, 4); // and changes after the snapshot

    // The oracle, from the table: amounts of 5,000 or more; an account's 4th (or later)
    // transaction within 60 seconds.
    let mut c = db.connect().await;
    let large: Vec<i64> = sqlx::query_scalar("select id from transactions where amount >= 5000 order by 1")
        .fetch_all(&mut c)
        .await
        .unwrap();
    let fast: Vec<i64> = sqlx::query_scalar(
        "select id from (select id, count(*) over (partition by account_id order by created_at \
         range between interval '60 seconds' preceding and current row) n from transactions) t where n >= 4 order by 1",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert!(large.len() >= 40 && fast.len() >= 2 * 50, "gen-rows' large amounts and bursts: {large:?} {fast:?}");
    let want: BTreeSet<String> = large
        .iter()
        .map(|id| format!("fraud-amount:{id}"))
        .chain(fast.iter().map(|id| format!("fraud-velocity:{id}")))
        .collect();
    let mut got = BTreeSet::new();
    let arrived = tokio::time::timeout(Duration::from_secs(120), async {
        while got != want {
            tokio::time::sleep(Duration::from_millis(200)).await;
            got = ids(&p, &bank, "alerts").await;
        }
    })
    .await;
    assert!(
        arrived.is_ok(),
        "alerts missing: {:?}; not expected: {:?}",
        want.difference(&got).take(20).collect::<Vec<_>>(),
        got.difference(&want).take(20).collect::<Vec<_>>()
    );
    let alert = p.doc(&bank, "alerts", &format!("fraud-amount:{}", large[0])).await;
    assert_eq!(alert["transaction_id"], large[0]);
    assert!(alert["reason"].as_str().unwrap().contains("is at or over 5000"), "{alert}");

    // Each agent read every transaction in its own consumer group, as the seeds' agents do.
    let source = format!("{bank}.cdc.public.transactions");
    for agent in ["fraud-amount", "fraud-velocity"] {
        wait_committed(&format!("{bank}.{agent}"), &source, Duration::from_secs(30)).await;
    }
    for id in [&amount, &velocity] {
        assert!(log_of(&p, &bank, id).await.contains(&format!("transforming {bank}.cdc.public.transactions")));
    }
    drop(c);
    db.drop().await;
}

/// The food example's cleaner of `tenant`, run by hand under the stream app contract, reading
/// `input` in `group`: the SDK's `run_transform` on its own, without the platform around it.
fn cleaner(tenant: &str, input: &str, group: &str) -> Connector {
    let mut cmd = Command::new(bin("orders-cleaner"));
    cmd.env_clear()
        .env("KAFKA_BROKERS", kafka_brokers())
        .env("MYSIMBDP_TENANT", tenant)
        .env("MYSIMBDP_APP", "orders-cleaner")
        .env("MYSIMBDP_INSTANCE_ID", "i-1")
        .env("MYSIMBDP_INPUT_TOPICS", input)
        .env("MYSIMBDP_CONSUMER_GROUP", group)
        // As the platform runs it: a static member, so each run takes the killed one's partitions at once.
        .env("MYSIMBDP_GROUP_INSTANCE_ID", format!("{group}-0"))
        .env("MYSIMBDP_METRICS_TOPIC", format!("{tenant}.metrics"))
        .env("MYSIMBDP_REPORT_KEY", "k")
        .env("MYSIMBDP_REPORT_INTERVAL_MS", "1000")
        // Part of the contract's environment; a transforming app writes no documents.
        .env("MYSIMBDP_COREDMS_URL", "postgres://unused")
        .env("MYSIMBDP_COREDMS_DB", "unused")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    Connector(cmd.spawn().unwrap())
}

/// Order `i`'s change event; every 10th has a negative amount (the cleaner drops it).
fn event(i: u64) -> String {
    let amount = if i % 10 == 9 { "-1.00".to_owned() } else { format!("{}.25", 1 + i % 90) };
    format!(
        r#"{{"before":null,"after":{{"order_id":{i},"customer_name":"c{i}","restaurant_name":"r","item":"x","amount":"{amount}","order_status":"PLACED","created_at":{}}},"source":{{"lsn":{i}}},"op":"c","ts_ms":0}}"#,
        1_795_824_000_000_000u64 + i * 1_000_000
    )
}

/// The records of the one-partition `topic`, key -> the values it came with, read until every key
/// of `want` came (or a minute passed). Not to the high watermark: tansu reports the last batch's
/// first offset + 1 there.
fn read_until(topic: &str, want: &[String]) -> BTreeMap<String, Vec<String>> {
    let c = partition_reader(topic);
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut missing = want.len();
    while missing > 0 && Instant::now() < deadline {
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            let text = |b: Option<&[u8]>| String::from_utf8(b.unwrap().to_vec()).unwrap();
            let values = out.entry(text(m.key())).or_default();
            if values.is_empty() && want.binary_search(&text(m.key())).is_ok() {
                missing -= 1;
            }
            values.push(text(m.payload()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn the_food_cleaner_killed_ten_times_loses_no_record_and_repeats_only_the_same_record() {
    const N: u64 = 30_000;
    let tenant = unique("xform");
    let (input, output, group) =
        (format!("{tenant}.cdc.public.orders"), format!("{tenant}.orders-clean"), format!("{tenant}.orders-cleaner"));
    create_topic(2, &input).await;
    create_topic(1, &output).await;
    let producing = {
        let input = input.clone();
        std::thread::spawn(move || {
            let producer: ThreadedProducer<DefaultProducerContext> =
                ClientConfig::new().set("bootstrap.servers", kafka_brokers()).set("linger.ms", "5").create().unwrap();
            for i in 0..N {
                let (payload, key) = (event(i), i.to_string());
                let record = BaseRecord::to(&input).partition((i % 2) as i32).key(&key).payload(&payload);
                producer.send(record).map_err(|(e, _)| e).unwrap();
                if i % 1_000 == 999 {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            producer.flush(Duration::from_secs(30)).unwrap();
        })
    };
    let mut app = cleaner(&tenant, &input, &group);
    let watch = partition_reader(&output);
    let written = || watch.fetch_watermarks(&output, 0, Duration::from_secs(5)).unwrap().1;
    let commits: rdkafka::consumer::BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", kafka_brokers()).set("group.id", &group).create().unwrap();
    let committed = || {
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition(&input, 0);
        tpl.add_partition(&input, 1);
        let got = commits.committed_offsets(tpl, Duration::from_secs(5)).unwrap();
        got.elements().iter().map(|e| e.offset().to_raw().unwrap_or(0)).sum::<i64>()
    };
    for k in 0..10u64 {
        // Half the kills the moment new records show on the output (the broker has them; the
        // commit of their input may not have happened yet), half the moment a commit shows.
        if k % 2 == 0 {
            // A run takes a few seconds to be given the partitions back (tansu). Once every event
            // was read and committed there is nothing new to see: then at once.
            let before = written();
            let deadline = Instant::now() + Duration::from_secs(20);
            while written() == before && Instant::now() < deadline && !caught_up(&group, &input, 2) {
                std::thread::sleep(Duration::from_millis(1));
            }
        } else {
            // The moment the group's commit moves: were the commit made before the acknowledgement
            // of what it covers, records would be lost here.
            let before = committed();
            let deadline = Instant::now() + Duration::from_secs(20);
            while committed() == before && Instant::now() < deadline && !caught_up(&group, &input, 2) {}
        }
        app.kill();
        app = cleaner(&tenant, &input, &group);
    }
    producing.join().unwrap();
    let mut good: Vec<String> = (0..N).filter(|i| i % 10 != 9).map(|i| i.to_string()).collect();
    good.sort();
    let records = tokio::task::spawn_blocking({
        let good = good.clone();
        move || read_until(&output, &good)
    })
    .await
    .unwrap();
    let missing: Vec<&String> = good.iter().filter(|k| !records.contains_key(*k)).take(10).collect();
    assert!(missing.is_empty(), "orders with no record: {missing:?} ({} of {} keys)", records.len(), good.len());
    assert_eq!(records.len(), good.len(), "a record for a dropped order");
    // It read everything it wrote a record for, and commits it: caught up, then a clean stop.
    stop_when_caught_up(app, &group, &input, 2, Duration::from_secs(30));
    let repeated = records.values().filter(|v| v.len() > 1).count();
    for (key, values) in &records {
        assert!(values.iter().all(|v| v == &values[0]), "order {key} written differently: {values:?}");
    }
    eprintln!("{} orders, each with its record; {repeated} written more than once across the kills", good.len());
}
