//! The `parquet_lake` sink (`mysimbdp-connect parquet-lake`) against the real broker: messages into
//! Parquet files by date, each exactly once across `kill -9`, read back by another Parquet reader
//! (pyarrow), rows that do not fit sent to the dead-letter topic with their reason.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mysimbdp_e2e::*;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::{json, Value};

/// The Python with pyarrow that `scripts/test.sh` installs (`MYSIMBDP_TEST_PYTHON`).
fn pyarrow_python() -> PathBuf {
    let python = std::env::var("MYSIMBDP_TEST_PYTHON").map(PathBuf::from).unwrap_or_else(|_| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/mysimbdp/pyarrow-venv/bin/python")
    });
    assert!(python.exists(), "no Python with pyarrow at {} (scripts/test.sh installs it)", python.display());
    python
}

/// Every finished file under a lake folder, as pyarrow reads it: its path, and each row's id (the
/// column named second) and the UTC day of its time (the column named third).
const READ_LAKE: &str = r#"
import json, os, sys
import pyarrow.parquet as pq
root, id_column, at_column = sys.argv[1:4]
out = []
for folder, _, names in sorted(os.walk(root)):
    for name in sorted(names):
        if not name.endswith(".parquet") or name.startswith("."):
            continue
        table = pq.ParquetFile(os.path.join(folder, name)).read()
        out.append({
            "file": os.path.relpath(os.path.join(folder, name), root),
            "schema": {f.name: str(f.type) for f in table.schema},
            "ids": table.column(id_column).to_pylist(),
            # A declared timestamp column, or (inferred from JSON) the text it was written as.
            "days": [t.date().isoformat() if hasattr(t, "date") else str(t)[:10] for t in table.column(at_column).to_pylist()],
        })
# And the whole folder as one dataset, its `date=` folders read as a column (a folder with no file
# yet, only the inferred columns' `_columns.json`, has no `date`).
if not out:
    json.dump({"files": [], "dataset_rows": 0, "dataset_dates": []}, sys.stdout)
    sys.exit(0)
dataset = pq.read_table(root)
dates = sorted(set(str(d) for d in dataset.column("date").to_pylist()))
json.dump({"files": out, "dataset_rows": dataset.num_rows, "dataset_dates": dates}, sys.stdout)
"#;

#[derive(Debug)]
pub struct LakeRead {
    pub file: String,
    pub schema: BTreeMap<String, String>,
    pub ids: Vec<i64>,
    pub days: Vec<String>,
}

/// The lake under `root` read by pyarrow: file by file (rows by their columns `id` and `at`), and
/// the rows and dates of the whole folder read as one dataset.
pub fn read_lake(root: &Path, [id, at]: [&str; 2]) -> (Vec<LakeRead>, u64, Vec<String>) {
    let out = Command::new(pyarrow_python()).arg("-c").arg(READ_LAKE).arg(root).args([id, at]).output().unwrap();
    assert!(out.status.success(), "pyarrow could not read the lake: {}", String::from_utf8_lossy(&out.stderr));
    let read: Value = serde_json::from_slice(&out.stdout).unwrap();
    let files = read["files"].as_array().unwrap();
    let strings =
        |v: &Value| -> Vec<String> { v.as_array().unwrap().iter().map(|d| d.as_str().unwrap().to_owned()).collect() };
    let files = files
        .iter()
        .map(|f| LakeRead {
            file: f["file"].as_str().unwrap().to_owned(),
            schema: f["schema"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect(),
            ids: f["ids"].as_array().unwrap().iter().map(|i| i.as_i64().unwrap()).collect(),
            days: strings(&f["days"]),
        })
        .collect();
    (files, read["dataset_rows"].as_u64().unwrap(), strings(&read["dataset_dates"]))
}

/// A lake sink of `topic` writing into `lake`.
fn lake_sink(tenant: &str, topic: &str, group: &str, lake: &Path, extra: &[(&str, &str)]) -> Connector {
    let mut cmd = Command::new(bin("mysimbdp-connect"));
    cmd.arg("parquet-lake")
        .env_clear()
        .env("KAFKA_BROKERS", kafka_brokers())
        .env("MYSIMBDP_TENANT", tenant)
        .env("MYSIMBDP_SINK", "lake")
        .env("MYSIMBDP_INPUT_TOPICS", topic)
        .env("MYSIMBDP_CONSUMER_GROUP", group)
        .env("MYSIMBDP_LAKE_DIR", lake)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    Connector(cmd.spawn().unwrap())
}

const COLUMNS: &str = r#"[{"name":"id","type":"int64"},{"name":"at","type":"timestamp"},{"name":"amount","type":"float64"},{"name":"name","type":"string"}]"#;

/// Why message `i` is refused, if it is.
fn refused(i: u64) -> Option<&'static str> {
    match () {
        _ if i % 4999 == 7 => Some("not a JSON object"),
        _ if i % 997 == 500 => Some("column `amount`: expected float64, found a string"),
        _ if i % 1999 == 1000 => Some("date field `at` is missing"),
        _ => None,
    }
}

/// Message `i`: 1.7 s after the one before from 2026-11-28T00:00:00Z, its time written three ways.
fn event(i: u64) -> Vec<u8> {
    let base = chrono::DateTime::parse_from_rfc3339("2026-11-28T00:00:00Z").unwrap().to_utc();
    let at = base + chrono::Duration::milliseconds(i as i64 * 1700);
    let at = match i % 7 {
        0 => json!(at.timestamp_millis()),
        1 => json!(at.with_timezone(&chrono::FixedOffset::east_opt(3600).unwrap()).to_rfc3339()),
        _ => json!(at.to_rfc3339()),
    };
    let mut v = json!({"id": i, "at": at, "amount": i as f64 / 2.0, "name": format!("n{i}")});
    match refused(i) {
        Some("not a JSON object") => return format!("garbage {i}").into_bytes(),
        Some(r) if r.starts_with("column") => v["amount"] = json!("lots"),
        Some(_) => {
            v.as_object_mut().unwrap().remove("at");
        }
        None => {}
    }
    serde_json::to_vec(&v).unwrap()
}

/// The UTC day of message `i`.
fn day_of(i: u64) -> String {
    let base = chrono::DateTime::parse_from_rfc3339("2026-11-28T00:00:00Z").unwrap().to_utc();
    (base + chrono::Duration::milliseconds(i as i64 * 1700)).date_naive().to_string()
}

/// Whether `group` has committed every partition of `topic` up to its end.
pub fn caught_up(group: &str, topic: &str, partitions: i32) -> bool {
    let c: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", kafka_brokers()).set("group.id", group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let Ok(committed) = c.committed_offsets(tpl, Duration::from_secs(5)) else { return false };
    committed.elements().iter().all(|e| {
        let (_, high) = c.fetch_watermarks(topic, e.partition(), Duration::from_secs(5)).unwrap();
        matches!(e.offset(), Offset::Offset(o) if o >= high)
    })
}

/// Once `group` has committed every partition of `topic` (or `within` passed: a failure), a
/// connector or app is stopped with SIGTERM and must exit 0; its log.
pub fn stop_when_caught_up(c: Connector, group: &str, topic: &str, partitions: i32, within: Duration) -> String {
    let deadline = Instant::now() + within;
    while !caught_up(group, topic, partitions) {
        assert!(Instant::now() < deadline, "{group} did not commit the end of {topic} within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: plain syscall on the test's own child.
    unsafe { libc::kill(c.0.id() as i32, libc::SIGTERM) };
    let (status, log) = c.output_at_exit();
    assert!(status.success(), "{status}: {log}");
    log
}

/// The files under `root` whose names end with `suffix`.
fn files_ending(root: &Path, suffix: &str) -> usize {
    let mut n = 0;
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else if e.file_name().to_string_lossy().ends_with(suffix) {
                n += 1;
            }
        }
    }
    n
}

/// What the dead-letter topic holds: by message id, the reasons given.
fn dead_letters(topic: &str, within: Duration, want: usize) -> BTreeMap<u64, BTreeSet<String>> {
    let c = partition_reader(topic);
    let mut out: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    let deadline = Instant::now() + within;
    while out.len() < want && Instant::now() < deadline {
        let Some(m) = c.poll(Duration::from_millis(100)) else { continue };
        let m = m.unwrap();
        let payload = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
        let id = serde_json::from_str::<Value>(&payload)
            .ok()
            .and_then(|v| v["id"].as_u64())
            .or_else(|| payload.strip_prefix("garbage ").and_then(|i| i.parse().ok()))
            .unwrap_or_else(|| panic!("a dead letter that is no message of the test: {payload}"));
        let headers = m.headers().expect("a dead letter has headers");
        let header = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(header("mysimbdp.dlq.topic").as_deref(), Some(topic.trim_end_matches(".dlq")));
        assert!(header("mysimbdp.dlq.offset").is_some_and(|o| o.parse::<i64>().is_ok()));
        out.entry(id).or_default().insert(header("mysimbdp.dlq.reason").expect("a reason"));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_ten_times_during_200000_messages_the_lake_holds_each_once_under_its_date() {
    const N: u64 = 200_000;
    let tenant = unique("lake");
    let topic = format!("{tenant}.events");
    create_topic(3, &topic).await;
    create_topic(1, &format!("{topic}.dlq")).await;
    let (group, scratch) = (format!("{tenant}.sink:lake"), scratch_dir());
    let lake = scratch.path().join("lake");
    std::fs::create_dir(&lake).unwrap();
    let extra = [
        ("MYSIMBDP_LAKE_COLUMNS", COLUMNS),
        ("MYSIMBDP_LAKE_DATE_FIELD", "at"),
        ("MYSIMBDP_LAKE_FLUSH_ROWS", "4000"),
        ("MYSIMBDP_LAKE_FLUSH_MS", "300"),
    ];

    // Written at about 25,000 a second while the sink runs and is killed.
    let produced = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let producing = {
        let (topic, produced) = (topic.clone(), produced.clone());
        std::thread::spawn(move || {
            let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
                .set("bootstrap.servers", kafka_brokers())
                .set("linger.ms", "5")
                .set("queue.buffering.max.messages", "1000000")
                .create()
                .unwrap();
            for i in 0..N {
                let payload = event(i);
                let key = i.to_string();
                let record = BaseRecord::to(&topic).partition((i % 3) as i32).key(&key).payload(&payload);
                producer.send(record).map_err(|(e, _)| e).unwrap();
                produced.store(i + 1, std::sync::atomic::Ordering::Relaxed);
                if i % 2_500 == 2_499 {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            producer.flush(Duration::from_secs(30)).unwrap();
        })
    };
    let mut sink = lake_sink(&tenant, &topic, &group, &lake, &extra);
    for k in 0..10u64 {
        // Half the kills the moment a new file shows (between its rename and the next ones, or the
        // commit); the others in the middle of gathering, a varying number of messages later.
        if k % 2 == 0 {
            let before = files_ending(&lake, ".parquet");
            let deadline = Instant::now() + Duration::from_secs(20);
            while files_ending(&lake, ".parquet") == before && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
        } else {
            let target = (produced.load(std::sync::atomic::Ordering::Relaxed) + 1_500 * k).min(N);
            let deadline = Instant::now() + Duration::from_secs(20);
            while produced.load(std::sync::atomic::Ordering::Relaxed) < target && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        sink.kill();
        sink = lake_sink(&tenant, &topic, &group, &lake, &extra);
    }
    producing.join().unwrap();
    // SIGTERM: it writes what it gathered and exits 0.
    let log = stop_when_caught_up(sink, &group, &topic, 3, Duration::from_secs(180));
    assert_eq!(files_ending(&lake, ".tmp"), 0, "no temporary file is left");

    let (read, dataset_rows, dataset_dates) = read_lake(&lake.join("events"), ["id", "at"]);
    let mut seen: BTreeMap<i64, usize> = BTreeMap::new();
    for f in &read {
        assert_eq!(
            f.schema,
            BTreeMap::from([
                ("id".into(), "int64".into()),
                ("at".into(), "timestamp[us, tz=UTC]".into()),
                ("amount".into(), "double".into()),
                ("name".into(), "string".into())
            ]),
            "{}",
            f.file
        );
        let folder = f.file.split('/').next().unwrap();
        for (id, day) in f.ids.iter().zip(&f.days) {
            *seen.entry(*id).or_default() += 1;
            assert_eq!(folder, format!("date={day}"), "row {id} is in {}", f.file);
            assert_eq!(*day, day_of(*id as u64), "row {id}'s date");
        }
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    if let Some((id, _)) = twice.first() {
        let holding: Vec<_> = read.iter().filter(|f| f.ids.contains(id)).map(|f| (&f.file, f.ids.len())).collect();
        eprintln!("row {id} is in {holding:?}; the sink's last run:\n{log}");
    }
    assert!(twice.is_empty(), "rows in more than one file: {twice:?} (of {} files)", read.len());
    let want: BTreeSet<i64> = (0..N).filter(|i| refused(*i).is_none()).map(|i| i as i64).collect();
    let got: BTreeSet<i64> = seen.keys().copied().collect();
    let missing: Vec<_> = want.difference(&got).take(5).collect();
    assert!(
        missing.is_empty(),
        "rows missing from the lake: {missing:?} ({} of {})",
        want.len() - got.len(),
        want.len()
    );
    assert_eq!(got, want);
    let days: BTreeSet<&str> = read.iter().map(|f| f.file.split('/').next().unwrap()).collect();
    assert!(days.len() >= 4, "the rows span four days at least: {days:?}");
    assert_eq!(dataset_rows, want.len() as u64, "read as one dataset");
    let folders: Vec<String> = days.iter().map(|d| d.trim_start_matches("date=").to_owned()).collect();
    assert_eq!(dataset_dates, folders, "the dataset's date column is its folders'");

    // Every refused message is in the dead-letter topic with its reason (sent again after a kill, a
    // letter may come twice: the dead letters are at least once, the lake exactly once).
    let bad: BTreeMap<u64, &str> = (0..N).filter_map(|i| refused(i).map(|r| (i, r))).collect();
    let letters = dead_letters(&format!("{topic}.dlq"), Duration::from_secs(60), bad.len());
    assert_eq!(letters.keys().copied().collect::<Vec<_>>(), bad.keys().copied().collect::<Vec<_>>());
    for (id, reasons) in &letters {
        assert!(reasons.iter().all(|r| r.starts_with(bad[id])), "message {id}: {reasons:?}, not {}", bad[id]);
    }
    eprintln!("{} rows in {} files over {} days; {} dead letters", got.len(), read.len(), days.len(), letters.len());
}

fn with_sinks(tenant: &str, sinks: &str) -> String {
    let stream =
        crate::stream::stream_agreement(tenant, &crate::stream::Stream { partitions: 2, ..Default::default() });
    stream.replace("apps:\n", &format!("sinks:\n{sinks}apps:\n"))
}

const LAKE_AND_DOCS: &str = "  - {name: lake, kind: parquet_lake, topics: [readings], date_field: at, flush_interval: 300ms}\n  - {name: docs, kind: coredms, topics: [readings]}\n";
const LAKE_ONLY: &str =
    "  - {name: lake, kind: parquet_lake, topics: [readings], date_field: at, flush_interval: 300ms}\n";

/// `payloads` as they are, unkeyed; returns once the broker has all.
async fn produce_raw(topic: &str, payloads: Vec<String>) {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let producer: ThreadedProducer<DefaultProducerContext> =
            ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create().unwrap();
        for payload in &payloads {
            producer.send(BaseRecord::<(), _>::to(&topic).payload(payload)).map_err(|(e, _)| e).unwrap();
        }
        producer.flush(Duration::from_secs(60)).unwrap();
    })
    .await
    .unwrap();
}

/// Readings `ids`, their `at` on three days, each keyed `id-<id>`; returns once the broker has all.
async fn produce_keyed(topic: &str, ids: std::ops::Range<u64>) {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let producer: ThreadedProducer<DefaultProducerContext> =
            ClientConfig::new().set("bootstrap.servers", kafka_brokers()).set("linger.ms", "5").create().unwrap();
        for i in ids {
            let payload =
                json!({"id": i, "at": format!("2026-11-2{}T12:00:00Z", i % 3), "v": i as f64 / 4.0}).to_string();
            let key = format!("id-{i}");
            producer.send(BaseRecord::to(&topic).key(&key).payload(&payload)).map_err(|(e, _)| e).unwrap();
        }
        producer.flush(Duration::from_secs(60)).unwrap();
    })
    .await
    .unwrap();
}

/// The rows of a tenant's lake topic, as pyarrow reads its files.
fn lake_ids(p: &TestPlatform, tenant: &str, topic: &str) -> Vec<i64> {
    let dir = p.data_dir.join("lake").join(tenant).join(topic);
    if !dir.exists() {
        return Vec::new();
    }
    let mut ids: Vec<i64> = read_lake(&dir, ["id", "at"]).0.iter().flat_map(|f| f.ids.clone()).collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn declared_sinks_fan_a_topic_out_to_the_lake_and_the_coredms_each_at_its_own_pace() {
    let (shop, thief) = (unique("shop"), unique("thief"));
    let mut p =
        TestPlatform::new(&[(&shop, with_sinks(&shop, LAKE_AND_DOCS)), (&thief, with_sinks(&thief, LAKE_ONLY))]).await;
    p.start().await;
    let http = p.http();
    let (token, thief_token) = (p.token(Some(&shop)), p.token(Some(&thief)));
    crate::stream::wait_topic(&format!("{shop}.readings")).await;
    crate::stream::wait_topic(&format!("{thief}.readings")).await;
    produce_keyed(&format!("{shop}.readings"), 0..1000).await;
    produce_keyed(&format!("{thief}.readings"), 5000..5010).await;

    // Both sinks, each its own instance and consumer group, take every reading.
    eventually(Duration::from_secs(90), "1,000 rows in the lake and 1,000 documents", async || {
        lake_ids(&p, &shop, "readings").len() == 1000 && p.count_docs(&shop, "readings").await == 1000
    })
    .await;
    assert_eq!(lake_ids(&p, &shop, "readings"), (0..1000).collect::<Vec<_>>(), "each once");
    // Messages that do not fit (the thief's: its columns were inferred from its first ten) go to its
    // dead-letter topic with their reason, through the gateway like everything its sink writes.
    eventually(Duration::from_secs(60), "the thief's ten rows", async || lake_ids(&p, &thief, "readings").len() == 10)
        .await;
    let thief_topic = format!("{thief}.readings");
    produce_raw(
        &thief_topic,
        vec![r#"{"id": 5010, "at": "2026-11-20T00:00:00Z", "v": "lots"}"#.into(), "garbage 5011".into()],
    )
    .await;
    produce_keyed(&thief_topic, 5012..5013).await;
    let letters =
        tokio::task::spawn_blocking(move || dead_letters(&format!("{thief_topic}.dlq"), Duration::from_secs(60), 2))
            .await
            .unwrap();
    assert_eq!(letters.keys().copied().collect::<Vec<_>>(), [5010, 5011]);
    assert!(letters[&5010].iter().all(|r| r == "column `v`: expected float64, found a string"), "{letters:?}");
    assert!(letters[&5011].iter().all(|r| r.starts_with("not a JSON object")), "{letters:?}");
    eventually(Duration::from_secs(60), "the thief's row after the bad ones", async || {
        lake_ids(&p, &thief, "readings").len() == 11
    })
    .await;
    assert_eq!(lake_ids(&p, &thief, "readings"), (5000..5010).chain([5012]).collect::<Vec<_>>());
    let columns = p.data_dir.join("lake").join(&shop).join("readings/_columns.json");
    let inferred: Value = serde_json::from_slice(&std::fs::read(columns).unwrap()).unwrap();
    assert_eq!(
        inferred,
        json!([{"name": "id", "type": "int64"}, {"name": "at", "type": "string"}, {"name": "v", "type": "float64"}])
    );
    // The coredms sink keys documents by the message's key.
    assert_eq!(p.doc(&shop, "readings", "id-7").await["id"], 7);

    // The lake over the API: listed by topic and date, each file served as written.
    let listed = http.get(&format!("/v1/tenants/{shop}/lake?topic=readings"), &token).await.json();
    let files = listed.as_array().unwrap().clone();
    let dates: BTreeSet<&str> = files.iter().map(|f| f["date"].as_str().unwrap()).collect();
    assert_eq!(dates, BTreeSet::from(["2026-11-20", "2026-11-21", "2026-11-22"]), "{listed}");
    let f = &files[0];
    let path = format!("readings/{}/{}", f["date"], f["name"]).replace('"', "");
    let got = http
        .get(
            &format!(
                "/v1/tenants/{shop}/lake/readings/{}/{}",
                f["date"].as_str().unwrap(),
                f["name"].as_str().unwrap()
            ),
            &token,
        )
        .await;
    assert_eq!(got.status, 200, "{}", got.text());
    let on_disk =
        std::fs::read(p.data_dir.join("lake").join(&shop).join(path.replace("readings/", "readings/date="))).unwrap();
    assert_eq!(got.body, on_disk);
    assert!(got.body.starts_with(b"PAR1") && got.body.ends_with(b"PAR1"));

    // The thief sees none of shop's lake: not the listing, not a file, not through a link planted in
    // its own lake (the sinks run as their tenant's user; the API follows no link they leave).
    let theirs = format!("/v1/tenants/{shop}/lake");
    assert_eq!(http.get(&theirs, &thief_token).await.problem(404), format!("there is no tenant `{shop}`"));
    let file_path =
        format!("/v1/tenants/{shop}/lake/readings/{}/{}", f["date"].as_str().unwrap(), f["name"].as_str().unwrap());
    assert_eq!(http.get(&file_path, &thief_token).await.status, 404);
    let own = http.get(&format!("/v1/tenants/{thief}/lake"), &thief_token).await.json();
    assert!(
        own.as_array().unwrap().iter().all(|f| f["topic"] == "readings") && !own.to_string().contains(&shop),
        "{own}"
    );
    let planted = p.data_dir.join("lake").join(&thief).join("readings/date=2026-11-20/readings-p9-o0-0-1of1.parquet");
    std::fs::create_dir_all(planted.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(
        p.data_dir
            .join("lake")
            .join(&shop)
            .join("readings")
            .join(format!("date={}", f["date"].as_str().unwrap()))
            .join(f["name"].as_str().unwrap()),
        &planted,
    )
    .unwrap();
    let r = http
        .get(&format!("/v1/tenants/{thief}/lake/readings/2026-11-20/readings-p9-o0-0-1of1.parquet"), &thief_token)
        .await;
    assert_eq!(r.status, 404, "a planted link is not followed");
    let operator = p.token(None);
    assert_eq!(
        http.get(&theirs, &operator).await.json().as_array().unwrap().len(),
        files.len(),
        "operators see every tenant's lake"
    );

    // Reports: each sink reports like an app, kept, not judged.
    for app in ["sink:lake", "sink:docs"] {
        let mut of = Vec::new();
        eventually(Duration::from_secs(30), &format!("{app}'s reports of 1,000 messages"), async || {
            let reports = crate::stream::get_list(&http, &token, &format!("/v1/tenants/{shop}/reports")).await;
            of = reports.into_iter().filter(|r| r["app"] == app).collect::<Vec<_>>();
            of.iter().map(|r| r["messages"].as_i64().unwrap()).sum::<i64>() >= 1000
        })
        .await;
        assert!(of.iter().all(|r| r["verdict"] == "unjudged"), "{app}: {of:?}");
    }

    // The coredms sink undeclared: its instance stops, and the lake goes on alone.
    let docs_id = crate::stream::instances_of(&p, &token, &shop, "sink:docs")
        .await
        .iter()
        .find(|i| i["desired"] == "running")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    std::fs::write(p.tenants_dir.join(format!("{shop}.yaml")), with_sinks(&shop, LAKE_ONLY)).unwrap();
    crate::stream::wait_state(&http, &token, &shop, &docs_id, "exited", Duration::from_secs(60)).await;
    produce_keyed(&format!("{shop}.readings"), 1000..1500).await;
    eventually(Duration::from_secs(60), "1,500 rows in the lake", async || {
        lake_ids(&p, &shop, "readings").len() == 1500
    })
    .await;
    assert_eq!(p.count_docs(&shop, "readings").await, 1000, "the stopped sink took nothing");
    // Declared again, it goes on from its own group's position.
    std::fs::write(p.tenants_dir.join(format!("{shop}.yaml")), with_sinks(&shop, LAKE_AND_DOCS)).unwrap();
    eventually(Duration::from_secs(60), "1,500 documents", async || p.count_docs(&shop, "readings").await == 1500)
        .await;
    assert_eq!(lake_ids(&p, &shop, "readings"), (0..1500).collect::<Vec<_>>());
    p.cleanup().await;
}

/// A tenant flooding its topic cannot fill the platform's disk through its lake: the sink stops
/// before its files would pass the agreement's `max_size`, and says so; the messages stay in the topic.
#[tokio::test(flavor = "multi_thread")]
async fn a_lake_stops_at_its_max_size_and_says_so() {
    let flood = unique("flood");
    let sink = "  - {name: lake, kind: parquet_lake, topics: [readings], date_field: at, flush_interval: 200ms, max_size: 4KiB}\n";
    // One restart: the test waits for the instance to fail for good.
    let restart = crate::stream::Stream {
        partitions: 2,
        restart: "{policy: on-failure, max_restarts: 1, backoff: 100ms}",
        ..Default::default()
    };
    let agreement =
        crate::stream::stream_agreement(&flood, &restart).replace("apps:\n", &format!("sinks:\n{sink}apps:\n"));
    let mut p = TestPlatform::new(&[(&flood, agreement)]).await;
    p.start().await;
    let (http, token) = (p.http(), p.token(Some(&flood)));
    crate::stream::wait_topic(&format!("{flood}.readings")).await;
    let mut failed = Value::Null;
    let mut next = 0;
    eventually(Duration::from_secs(90), "the lake sink to stop at its max_size", async || {
        // Ten readings at a time: each flush a small file, until the lake is full.
        produce_keyed(&format!("{flood}.readings"), next..next + 10).await;
        next += 10;
        failed = crate::stream::instances_of(&p, &token, &flood, "sink:lake").await.pop().unwrap_or_default();
        failed["state"] == "failed"
    })
    .await;
    let id = failed["id"].as_str().unwrap();
    let log = http.get(&format!("/v1/tenants/{flood}/instances/{id}/log"), &token).await.text();
    assert!(log.contains("would take its lake past the agreement's max_size of 4096 bytes"), "{log}");
    let held: u64 = http
        .get(&format!("/v1/tenants/{flood}/lake"), &token)
        .await
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["size"].as_u64().unwrap())
        .sum();
    assert!(held > 0 && held <= 4096, "the lake holds {held} bytes");
    p.cleanup().await;
}

/// When the platform stops, a sink still has rows gathered for its next flush: told to stop, it
/// writes them and commits through the broker gateway, which must still be there (it was cut at once,
/// so the sink's last commit waited for a broker that was gone until the grace period killed it).
/// What it had not read yet waits in the topic: started again, the sink writes the rest, each once.
#[tokio::test(flavor = "multi_thread")]
async fn a_platform_stopping_lets_its_lake_sink_write_its_last_rows_commit_and_exit() {
    let shop = unique("shop");
    let sink = |flush: &str| {
        format!("  - {{name: lake, kind: parquet_lake, topics: [readings], date_field: at, flush_interval: {flush}}}\n")
    };
    let mut p = TestPlatform::new(&[(&shop, with_sinks(&shop, &sink("60s")))]).await;
    p.start().await;
    let (http, token) = (p.http(), p.token(Some(&shop)));
    let topic = format!("{shop}.readings");
    crate::stream::wait_topic(&topic).await;
    produce_keyed(&topic, 0..200).await;
    let mut instance = Value::Null;
    eventually(Duration::from_secs(60), "the sink to take the first readings", async || {
        instance = crate::stream::instances_of(&p, &token, &shop, "sink:lake").await.pop().unwrap_or_default();
        let Some(id) = instance["id"].as_str() else { return false };
        http.get(&format!("/v1/tenants/{shop}/instances/{id}/log"), &token).await.text().contains("taking from offset")
    })
    .await;
    assert!(lake_ids(&p, &shop, "readings").is_empty(), "nothing flushed yet: the flush interval is a minute");

    p.stop().await;
    let id = instance["id"].as_str().unwrap();
    let log = std::fs::read_to_string(p.data_dir.join("instances").join(&shop).join(id).join("log")).unwrap();
    assert!(log.trim_end().ends_with("parquet-lake: stopping"), "the sink ended its run itself:\n{log}");
    // What it took is in its files, and its group committed exactly that far.
    let lake = p.data_dir.join("lake").join(&shop).join("readings");
    let (group, t) = (format!("{shop}.sink:lake"), topic.clone());
    let committed = tokio::task::spawn_blocking(move || {
        let c: BaseConsumer =
            ClientConfig::new().set("bootstrap.servers", kafka_brokers()).set("group.id", &group).create().unwrap();
        let mut tpl = TopicPartitionList::new();
        (0..2).for_each(|p| {
            tpl.add_partition(&t, p);
        });
        let got = c.committed_offsets(tpl, Duration::from_secs(5)).unwrap();
        got.elements().iter().map(|e| (e.partition(), e.offset())).collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let written = read_lake(&lake, ["id", "at"]).0;
    assert!(!written.is_empty(), "the rows it had read are written at the stop");
    // A file's name: `readings-p<partition>-o<first>-<last>-<k>of<n>.parquet`.
    let partition_and_last = |file: &str| -> (i32, i64) {
        let name = Path::new(file).file_name().unwrap().to_str().unwrap();
        let (partition, rest) = name.strip_prefix("readings-p").unwrap().split_once("-o").unwrap();
        let last = rest.split('-').nth(1).unwrap();
        (partition.parse().unwrap(), last.parse().unwrap())
    };
    for (partition, offset) in committed {
        let end =
            written.iter().map(|f| partition_and_last(&f.file)).filter(|(p, _)| *p == partition).map(|(_, l)| l + 1);
        let want = end.max().map_or(Offset::Invalid, Offset::Offset);
        assert_eq!(offset, want, "partition {partition}: the commit matches the files");
    }
    // Started again (flushing quickly now), it writes the rest: every reading once.
    std::fs::write(p.tenants_dir.join(format!("{shop}.yaml")), with_sinks(&shop, &sink("300ms"))).unwrap();
    p.start().await;
    eventually(Duration::from_secs(60), "all 200 readings in the lake", async || {
        lake_ids(&p, &shop, "readings").len() >= 200
    })
    .await;
    assert_eq!(lake_ids(&p, &shop, "readings"), (0..200).collect::<Vec<_>>(), "each once");
    p.cleanup().await;
}
