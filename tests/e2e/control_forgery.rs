//! The control topic is writable by anything that reaches the broker, so the stream manager treats a
//! message there as a pointer to a notification its own monitor stored. Forged notifications (for
//! another tenant, naming another tenant's instance, replaying a stored id with another action),
//! messages that are not notifications at all, and oversized ones are dropped and recorded with their
//! reason; the other tenant's instances are untouched; and a real notification afterwards is acted on
//! at once.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};

use crate::stream::{get_list, script_app, start, stream_agreement, upload, wait_state, Stream};
use mysimbdp::store::stream as stream_store;
use mysimbdp_e2e::{eventually, kafka_brokers, unique, TestPlatform};

async fn send(producer: &FutureProducer, payload: &[u8]) {
    let record = FutureRecord::to("mysimbdp.control").key("forged").payload(payload);
    producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).expect("the broker takes it");
}

fn notification(id: uuid::Uuid, tenant: &str, app: &str, instance: Option<&str>, kind: &str, action: &str) -> Vec<u8> {
    json!({"version": 1, "id": id, "tenant": tenant, "app": app, "instance": instance, "kind": kind,
           "at": chrono::Utc::now(), "action": action, "reasons": []})
    .to_string()
    .into_bytes()
}

async fn dropped(p: &TestPlatform, reason: &str) -> i64 {
    let counts = stream_store::control_dropped(&p.db).await.unwrap();
    counts.iter().find(|(r, _)| r == reason).map_or(0, |(_, n)| *n)
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_and_poison_control_messages_are_dropped_and_real_ones_still_act() {
    let (victim, mute) = (unique("victim"), unique("mute"));
    // The victim's instance never reports and has a long interval: nothing real happens to it.
    let quiet = Stream { report_interval: "1m", on_breach: "scale_out", ..Default::default() };
    // Another tenant's instance that stops reporting: the monitor's real notification, later.
    let loud = Stream { report_interval: "300ms", on_breach: "notify", ..Default::default() };
    let mut p =
        TestPlatform::new(&[(&victim, stream_agreement(&victim, &quiet)), (&mute, stream_agreement(&mute, &loud))])
            .await;
    p.start().await;
    let http = p.http();
    let (tv, tm) = (p.token(Some(&victim)), p.token(Some(&mute)));
    upload(&http, &tv, &victim, script_app("app", "exec sleep 600")).await;
    let victim_id = start(&http, &tv, &victim, "app", 1).await[0]["id"].as_str().unwrap().to_owned();
    wait_state(&http, &tv, &victim, &victim_id, "running", Duration::from_secs(30)).await;

    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create().unwrap();
    // The manager reads the topic from its latest offset once it joined its group: probe until it drops.
    eventually(Duration::from_secs(30), "the manager reading the control topic", async || {
        send(&producer, &notification(uuid::Uuid::new_v4(), &victim, "app", None, "below_threshold", "scale_out"))
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        dropped(&p, "unknown_notification").await > 0
    })
    .await;
    let before = dropped(&p, "unknown_notification").await;

    // Forged notifications: never stored by the monitor, each of every kind and action.
    let forged = [
        notification(uuid::Uuid::new_v4(), &victim, "app", Some(&victim_id), "below_threshold", "scale_out"),
        notification(uuid::Uuid::new_v4(), &victim, "app", Some(&victim_id), "below_threshold", "restart"),
        notification(uuid::Uuid::new_v4(), &victim, "app", Some(&victim_id), "silent", "restart"),
        notification(uuid::Uuid::new_v4(), &victim, "app", None, "below_threshold", "notify"),
        // The victim named with an instance of another tenant, and an app name holding a NUL.
        notification(
            uuid::Uuid::new_v4(),
            &victim,
            "app",
            Some(&uuid::Uuid::new_v4().to_string()),
            "silent",
            "restart",
        ),
        notification(uuid::Uuid::new_v4(), &victim, "x\u{0}y", None, "below_threshold", "scale_out"),
    ];
    for f in &forged {
        send(&producer, f).await;
    }
    // Poison: not JSON, JSON that is not a notification, and too large.
    send(&producer, b"\x00\xff\xfe not json \x00").await;
    send(&producer, br#"{"version": 1, "id": "not-a-uuid"}"#).await;
    send(&producer, &vec![b'x'; 100 << 10]).await;
    eventually(Duration::from_secs(20), "every forged and poison message dropped", async || {
        dropped(&p, "unknown_notification").await >= before + forged.len() as i64
            && dropped(&p, "malformed").await >= 2
            && dropped(&p, "too_large").await >= 1
    })
    .await;

    // The victim's app is as it was: one instance, never restarted, and no action taken for it.
    let instances = get_list(&http, &tv, &format!("/v1/tenants/{victim}/instances")).await;
    assert_eq!(instances.len(), 1, "{instances:?}");
    assert_eq!((instances[0]["restarts_total"].as_i64(), instances[0]["state"].as_str()), (Some(0), Some("running")));
    assert!(get_list(&http, &tv, &format!("/v1/tenants/{victim}/actions")).await.is_empty());

    // The loop still works: a real notification (an instance gone silent) is acted on at once.
    upload(&http, &tm, &mute, script_app("mute", "exec sleep 600")).await;
    start(&http, &tm, &mute, "mute", 1).await;
    let actions_path = format!("/v1/tenants/{mute}/actions");
    let notes_path = format!("/v1/tenants/{mute}/notifications");
    eventually(Duration::from_secs(30), "the silent instance acted on", async || {
        !get_list(&http, &tm, &actions_path).await.is_empty()
    })
    .await;
    let note: Value = get_list(&http, &tm, &notes_path).await.remove(0);
    let action: Value = get_list(&http, &tm, &actions_path).await.remove(0);
    let at = |v: &Value| chrono::DateTime::parse_from_rfc3339(v["at"].as_str().unwrap()).unwrap();
    let delay = at(&action) - at(&note);
    assert!(delay < chrono::Duration::seconds(1), "acted {delay} after the notification: {note} {action}");

    // A stored notification's id replayed with another action is not the stored one.
    let id: uuid::Uuid = note["id"].as_str().unwrap().parse().unwrap();
    let instance = note["instance"].as_str();
    send(&producer, &notification(id, &mute, "mute", instance, "silent", "scale_out")).await;
    eventually(Duration::from_secs(20), "the replay dropped", async || dropped(&p, "mismatch").await >= 1).await;
    assert_eq!(get_list(&http, &tm, &actions_path).await.len(), 1, "acted on once only");
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stop_wins_over_any_notification() {
    let zoo = unique("zoo");
    let s = Stream { report_interval: "1m", on_breach: "scale_out", ..Default::default() };
    let mut p = TestPlatform::new(&[(&zoo, stream_agreement(&zoo, &s))]).await;
    p.start().await;
    let (http, token) = (p.http(), p.token(Some(&zoo)));
    upload(&http, &token, &zoo, script_app("app", "exec sleep 600")).await;
    let id = start(&http, &token, &zoo, "app", 1).await[0]["id"].as_str().unwrap().to_owned();
    wait_state(&http, &token, &zoo, &id, "running", Duration::from_secs(30)).await;
    let r = http.call("DELETE", &format!("/v1/tenants/{zoo}/instances/{id}"), Some(&token), None).await;
    assert_eq!(r.status, 202);
    wait_state(&http, &token, &zoo, &id, "exited", Duration::from_secs(30)).await;
    // Notifications the monitor stored about the app just before its stop, read after it.
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create().unwrap();
    let mut sent = Vec::new();
    for (kind, action) in [("silent", "restart"), ("below_threshold", "scale_out")] {
        let n = stream_store::Notification {
            version: 1,
            id: mysimbdp::domain::NotificationId::now(),
            tenant: mysimbdp::tenant::TenantId::parse(&zoo).unwrap(),
            app: "app".into(),
            instance: Some(id.parse().unwrap()),
            kind: kind.into(),
            at: chrono::Utc::now(),
            action: action.into(),
            reasons: vec![],
        };
        stream_store::insert_notification(&p.db, &n).await.unwrap();
        sent.push(n);
    }
    let actions_path = format!("/v1/tenants/{zoo}/actions");
    eventually(Duration::from_secs(30), "both notifications decided", async || {
        for n in &sent {
            send(&producer, &serde_json::to_vec(n).unwrap()).await;
        }
        get_list(&http, &token, &actions_path).await.len() >= 2
    })
    .await;
    for action in get_list(&http, &token, &actions_path).await {
        assert_eq!(action["outcome"], "skipped", "{action}");
        assert!(action["detail"].as_str().unwrap().contains("a stop wins over any notification"), "{action}");
    }
    let instances = get_list(&http, &token, &format!("/v1/tenants/{zoo}/instances")).await;
    assert_eq!(instances.len(), 1, "nothing started again: {instances:?}");
    assert_eq!(instances[0]["state"], "exited");
    p.cleanup().await;
}
