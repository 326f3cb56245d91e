//! Metrics reports prove where they come from. Anything on the broker can write to
//! `mysimbdp.metrics` and read its keys (so instance ids are no secret); what a tenant's app holds
//! and no one else does is its own `MYSIMBDP_REPORT_KEY`. With only that, a hostile tenant reports
//! for another tenant's instance (signed with its own key), sends unsigned reports, and signs absurd
//! figures for its own instance; each is dropped and counted, the other tenant is untouched, and a
//! real breach afterwards is still acted on within a second.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};

use crate::stream::{
    get_list, instances, produce, reading, script_app, start, stream_agreement, stream_app, upload, wait_state,
    wait_topic, Stream,
};
use mysimbdp_e2e::{eventually, kafka_brokers, unique, TestPlatform};
use mysimbdp_sdk::metrics::{sign, SIGNATURE_HEADER};

/// A contract report for `instance`, slow enough to be a breach if it were trusted, with `fields`
/// replaced.
fn report(tenant: &str, app: &str, instance: &str, fields: &[(&str, Value)]) -> Vec<u8> {
    let now = chrono::Utc::now();
    let mut r = json!({
        "version": 1, "tenant": tenant, "app": app, "instance": instance,
        "window_start": now - chrono::Duration::milliseconds(500), "window_end": now,
        "messages": 0, "bytes": 0, "rejected": 0, "avg_ingestion_ms": 99999.0, "p95_ingestion_ms": 99999.0,
        "processing_rate": 0.0, "throughput_bytes_per_s": 0.0
    });
    for (k, v) in fields {
        r[*k] = v.clone();
    }
    r.to_string().into_bytes()
}

/// Publishes a report keyed for `instance`, signed with `key` if given.
async fn publish(
    producer: &FutureProducer,
    tenant: &str,
    app: &str,
    instance: &str,
    payload: &[u8],
    key: Option<&str>,
) {
    let record_key = format!("{tenant}/{app}/{instance}");
    let signature = key.map(|k| sign(k, payload));
    let mut record = FutureRecord::to("mysimbdp.metrics").key(&record_key).payload(payload);
    if let Some(s) = &signature {
        record = record.headers(OwnedHeaders::new().insert(Header { key: SIGNATURE_HEADER, value: Some(s) }));
    }
    producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).expect("the broker takes it");
}

async fn dropped(p: &TestPlatform, token: &str, tenant: &str, reason: &str) -> i64 {
    let r = p.http().get(&format!("/v1/tenants/{tenant}/reports?limit=1000"), token).await.json();
    r["dropped"].as_array().unwrap().iter().find(|d| d["reason"] == reason).map_or(0, |d| d["count"].as_i64().unwrap())
}

async fn report_key(p: &TestPlatform, instance: &str) -> String {
    sqlx::query_scalar("select report_key from stream_instances where id = $1::uuid")
        .bind(instance)
        .fetch_one(&p.db)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_unsigned_and_absurd_reports_are_dropped_and_a_real_breach_still_acts() {
    let (victim, hostile) = (unique("victim"), unique("hostile"));
    // The victim's slow app (about 100 messages/s against 200 required), scaled out on breach.
    let watched = Stream {
        max_instances: 2,
        report_interval: "500ms",
        thresholds: "{min_processing_rate: 200, max_avg_ingestion_time: 10s, breach_reports: 3, cooldown: 30s}",
        on_breach: "scale_out",
        ..Default::default()
    };
    // The hostile tenant's app only holds its environment; a long interval keeps it from going silent.
    let quiet = Stream { report_interval: "1m", ..Default::default() };
    let mut p = TestPlatform::new(&[
        (&victim, stream_agreement(&victim, &watched)),
        (&hostile, stream_agreement(&hostile, &quiet)),
    ])
    .await;
    p.start().await;
    let http = p.http();
    let (tv, th) = (p.token(Some(&victim)), p.token(Some(&hostile)));
    upload(&http, &tv, &victim, stream_app("tortoise-stream", "--delay-per-record 10")).await;
    upload(&http, &th, &hostile, script_app("spy", "exec sleep 600")).await;
    wait_topic(&format!("{victim}.readings")).await;
    let victim_id = start(&http, &tv, &victim, "tortoise-stream", 1).await[0]["id"].as_str().unwrap().to_owned();
    let own_id = start(&http, &th, &hostile, "spy", 1).await[0]["id"].as_str().unwrap().to_owned();
    wait_state(&http, &tv, &victim, &victim_id, "running", Duration::from_secs(30)).await;
    wait_state(&http, &th, &hostile, &own_id, "running", Duration::from_secs(30)).await;
    let reports_path = format!("/v1/tenants/{victim}/reports?limit=1000");
    eventually(Duration::from_secs(30), "the victim's own signed reports trusted", async || {
        !get_list(&http, &tv, &reports_path).await.is_empty()
    })
    .await;
    // What the hostile app's environment holds.
    let own_key = report_key(&p, &own_id).await;

    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create().unwrap();
    let app = "tortoise-stream";
    for _ in 0..3 {
        // For the victim's instance: signed with the hostile app's key, and unsigned.
        publish(&producer, &victim, app, &victim_id, &report(&victim, app, &victim_id, &[]), Some(&own_key)).await;
        publish(&producer, &victim, app, &victim_id, &report(&victim, app, &victim_id, &[]), None).await;
    }
    let own = |fields: &[(&str, Value)]| report(&hostile, "spy", &own_id, fields);
    let now = chrono::Utc::now();
    let absurd = [
        own(&[("messages", json!(1_000_000_000_000_000_000u64)), ("processing_rate", json!(1e18))]),
        own(&[("messages", json!(10)), ("processing_rate", json!(1e300))]),
        own(&[("window_start", json!("1970-01-01T00:00:00Z"))]),
        // 5,000 messages in a 1 ms window: a rate of 5e6 that the window allows, from an empty topic.
        own(&[
            ("window_start", json!(now - chrono::Duration::milliseconds(1))),
            ("window_end", json!(now)),
            ("messages", json!(5000)),
            ("processing_rate", json!(5e6)),
        ]),
    ];
    for payload in &absurd {
        publish(&producer, &hostile, "spy", &own_id, payload, Some(&own_key)).await;
    }
    publish(&producer, &hostile, "spy", &own_id, &own(&[]), None).await;

    eventually(Duration::from_secs(20), "every forged report dropped and counted", async || {
        dropped(&p, &tv, &victim, "bad_signature").await == 3
            && dropped(&p, &tv, &victim, "unsigned").await == 3
            && dropped(&p, &th, &hostile, "implausible").await == absurd.len() as i64
            && dropped(&p, &th, &hostile, "unsigned").await == 1
    })
    .await;
    let details: Vec<String> = p.http().get(&format!("/v1/tenants/{hostile}/reports"), &th).await.json()["dropped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["last_detail"].as_str().unwrap().to_owned())
        .collect();
    assert!(details.iter().any(|d| d.contains("the broker held at most")), "{details:?}");
    // Nothing forged was trusted: the victim's stored reports are its app's own, none acted on.
    let trusted = get_list(&http, &tv, &reports_path).await;
    assert!(trusted
        .iter()
        .all(|r| r["instance"] == victim_id.as_str() && r["avg_ingestion_ms"].as_f64() < Some(99999.0)));
    assert!(get_list(&http, &tv, &format!("/v1/tenants/{victim}/notifications")).await.is_empty());
    assert_eq!(instances(&http, &tv, &victim).await.len(), 1);
    assert!(get_list(&http, &th, &format!("/v1/tenants/{hostile}/reports")).await.is_empty());

    // A real breach: a backlog behind the slow app. Acted on within a second of its notification.
    produce(&format!("{victim}.readings"), (0..5_000).map(reading).collect()).await;
    let actions_path = format!("/v1/tenants/{victim}/actions");
    eventually(Duration::from_secs(30), "the real breach acted on", async || {
        get_list(&http, &tv, &actions_path).await.iter().any(|a| a["outcome"] == "applied")
    })
    .await;
    let action = get_list(&http, &tv, &actions_path).await.into_iter().find(|a| a["outcome"] == "applied").unwrap();
    let notes = get_list(&http, &tv, &format!("/v1/tenants/{victim}/notifications")).await;
    let note = notes.iter().find(|n| n["id"] == action["notification"]).expect("its notification is stored");
    assert_eq!(note["instance"], victim_id.as_str());
    let at = |v: &Value| chrono::DateTime::parse_from_rfc3339(v["at"].as_str().unwrap()).unwrap();
    let delay = at(&action) - at(note);
    assert!(delay < chrono::Duration::seconds(1), "acted {delay} after the notification: {note} {action}");

    // The report an instance sends as it stops is its own and is kept, not judged.
    let r = http.call("DELETE", &format!("/v1/tenants/{victim}/instances/{victim_id}"), Some(&tv), None).await;
    assert_eq!(r.status, 202);
    wait_state(&http, &tv, &victim, &victim_id, "exited", Duration::from_secs(30)).await;
    let mine = format!("/v1/tenants/{victim}/reports?instance={victim_id}&limit=1000");
    eventually(Duration::from_secs(10), "the stopping instance's last report kept", async || {
        get_list(&http, &tv, &mine).await.iter().any(|r| r["verdict"] == "final")
    })
    .await;
    assert_eq!(dropped(&p, &tv, &victim, "unknown_instance").await, 0);
    p.cleanup().await;
}
