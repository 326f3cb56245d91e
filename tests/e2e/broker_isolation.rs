//! Tenants are isolated at the broker, on the local broker that has no authorization of its own: a
//! tenant's stream app tries the broker's own address, then through what it was given lists, describes,
//! writes, reads and commits another tenant's topic and group. Each is refused; its own topic still
//! takes its writes; and the other tenant's app, restarted after the attack, holds every one of its
//! messages exactly once (in the attack that found this, a commit in the victim's group lost 400).

use std::time::Duration;

use crate::stream::{
    produce, reading, start, stream_agreement, stream_app, upload, wait_committed, wait_docs, wait_state, wait_topic,
    Stream,
};
use mysimbdp_e2e::{bundle, eventually, kafka_brokers, unique, TestPlatform};

#[tokio::test(flavor = "multi_thread")]
async fn a_tenants_app_cannot_see_write_read_or_commit_another_tenants_topics_and_groups() {
    let (evil, good) = (unique("evil"), unique("good"));
    let s = Stream { report_interval: "1m", ..Default::default() };
    let mut p = TestPlatform::new(&[(&evil, stream_agreement(&evil, &s)), (&good, stream_agreement(&good, &s))]).await;
    p.start().await;
    let http = p.http();
    let (te, tg) = (p.token(Some(&evil)), p.token(Some(&good)));
    let topic = format!("{good}.readings");
    wait_topic(&topic).await;
    wait_topic(&format!("{evil}.readings")).await;
    // The victim: the example app, named like the attacker's so the attacker knows its group.
    upload(&http, &tg, &good, stream_app("ingest", "")).await;
    let victim = start(&http, &tg, &good, "ingest", 1).await[0]["id"].as_str().unwrap().to_owned();
    wait_state(&http, &tg, &good, &victim, "running", Duration::from_secs(30)).await;
    produce(&topic, (0..2_000).map(reading).collect()).await;
    wait_docs(&p, &good, 2_000, Duration::from_secs(60)).await;

    let direct = kafka_brokers().split(',').next().unwrap().to_owned();
    let script = format!("\"$APP/hostile\" broker {good} {direct}; exec \"$APP/hostile\" linger");
    let archive = bundle("ingest", "stream", &script, &["hostile"]);
    upload(&http, &te, &evil, archive).await;
    let spy = start(&http, &te, &evil, "ingest", 1).await[0]["id"].as_str().unwrap().to_owned();
    let log_path = format!("/v1/tenants/{evil}/instances/{spy}/log");
    let log = std::cell::RefCell::new(String::new());
    // The attack takes about 15 s alone on 2 cores (its refused commit waits out its 6 s session
    // timeout, its surplus connections their 2 s read timeout).
    eventually(Duration::from_secs(120), "the attack to finish", async || {
        *log.borrow_mut() = http.get(&log_path, &te).await.text();
        log.borrow().contains("DONE broker")
    })
    .await;
    let log = log.into_inner();
    assert!(!log.contains("LEAK"), "the attack got through: {log}");
    eprintln!("{log}");
    for attempt in ["direct", "describe", "produce", "read", "read as itself", "commit", "group", "connections"] {
        assert!(log.contains(&format!("DENIED {attempt}:")), "{attempt} was not refused: {log}");
    }
    assert!(log.contains("OK list:") && log.contains("OK produce own:"), "the controls: {log}");
    // At most the gateway's per-tenant limit, less what its own clients held at the time.
    let answered: usize =
        log.lines().find_map(|l| l.strip_prefix("DENIED connections: ")?.split(' ').next()?.parse().ok()).unwrap();
    let limit = mysimbdp::messaging::gateway::MAX_CONNECTIONS_PER_TENANT;
    assert!((limit - 16..=limit).contains(&answered), "{answered} of 300 answered: {log}");

    // The victim's app, restarted, resumes where it really was: nothing skipped, nothing doubled.
    let r = http.call("DELETE", &format!("/v1/tenants/{good}/instances/{victim}"), Some(&tg), None).await;
    assert_eq!(r.status, 202);
    wait_state(&http, &tg, &good, &victim, "exited", Duration::from_secs(30)).await;
    produce(&topic, (2_000..3_000).map(reading).collect()).await;
    let again = start(&http, &tg, &good, "ingest", 1).await[0]["id"].as_str().unwrap().to_owned();
    wait_state(&http, &tg, &good, &again, "running", Duration::from_secs(30)).await;
    wait_docs(&p, &good, 3_000, Duration::from_secs(60)).await;
    wait_committed(&format!("{good}.ingest"), &topic, Duration::from_secs(60)).await;
    assert_eq!(p.count_docs(&good, "readings").await, 3_000);
    p.cleanup().await;
}
