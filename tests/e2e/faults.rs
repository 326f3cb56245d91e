//! Faults of what the platform runs on. A full data disk: readiness says so, files wait in staging
//! (a claim that cannot be copied leaves nothing behind), and once there is room every file is
//! ingested with exactly one outcome.

use std::process::Command;
use std::time::Duration;

use mysimbdp_e2e::{agreement, eventually, unique, TestPlatform};

const BATCH: &str = "  routes: [{files: \"*.csv\", app: count, timeout: 1m, memory: 256MiB}]\n  formats: [csv]\n  max_file_size: 8MiB\n  max_files_per_hour: 100\n  max_bytes_per_day: 1GiB\n  max_concurrent_jobs: 2";

/// A small tmpfs mounted over `dir`, unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &std::path::Path, size: &str) -> Self {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(ok.success(), "mounting a tmpfs on {} (the tests run as root)", dir.display());
        SmallDisk(dir.to_owned())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_data_disk_is_reported_and_every_file_is_ingested_once_there_is_room() {
    let t = unique("full");
    let mut p = TestPlatform::new(&[(&t, agreement(&t, BATCH))]).await;
    let disk = SmallDisk::mount(&p.data_dir, "16m");
    p.start().await;
    p.install_script(&t, "count", "wc -l < \"$1\"").await;
    let http = p.http();
    let ready = http.call("GET", "/readyz", None, None).await;
    assert_eq!(ready.status, 200, "{}", ready.text());

    // Fill the disk to the last block.
    let filler = p.data_dir.join("filler");
    let out =
        Command::new("dd").arg("if=/dev/zero").arg(format!("of={}", filler.display())).arg("bs=64k").output().unwrap();
    assert!(!out.status.success(), "dd stops at a full disk");
    let full = http.call("GET", "/readyz", None, None).await;
    assert_eq!(full.status, 503, "{}", full.text());
    let data_disk =
        full.json()["checks"].as_array().unwrap().iter().find(|c| c["name"] == "data_disk").cloned().unwrap();
    assert_eq!(data_disk["ok"], false, "{data_disk}");
    assert!(data_disk["detail"].as_str().unwrap().contains("free of 16MiB"), "{data_disk}");

    // Files dropped now cannot be claimed into the work area: they wait in staging, with no job.
    for f in 0..5 {
        let content: String = (0..20_000).map(|i| format!("{i},{f}\n")).collect();
        p.drop_file(&t, &format!("wait-{f}.csv"), content.as_bytes());
    }
    // Three rescans later, each of which would have claimed them.
    p.after_passes("batch_rescan", 3).await;
    let staged = std::fs::read_dir(p.staging_dir.join(&t)).unwrap().count();
    assert_eq!(staged, 5, "the files wait where they were dropped");
    assert!(
        p.all_jobs(&t).await.iter().all(|j| !j.state().is_final()),
        "no file has an outcome while it cannot be taken"
    );

    // Room again: every file ingested, once.
    std::fs::remove_file(&filler).unwrap();
    let db = p.db.clone();
    let tenant = p.tenant(&t);
    eventually(Duration::from_secs(60), "every file succeeded", async || {
        let jobs = mysimbdp::store::jobs::list(
            &db,
            &tenant,
            &mysimbdp::store::jobs::ListFilter { limit: 100, ..Default::default() },
        )
        .await
        .unwrap();
        jobs.len() == 5 && jobs.iter().all(|j| j.state() == mysimbdp::store::jobs::JobState::Succeeded)
    })
    .await;
    for job in p.all_jobs(&t).await {
        assert_eq!(job.log.as_deref(), Some("20000\n"), "{job:?}");
        p.wait_moved(&job).await;
    }
    assert_eq!(http.call("GET", "/readyz", None, None).await.status, 200);
    let leftovers: Vec<_> = walk(&p.data_dir.join("work")).into_iter().filter(|f| f.contains(".moving")).collect();
    assert!(leftovers.is_empty(), "a copy cut short left {leftovers:?}");
    p.stop().await;
    drop(disk);
    p.cleanup().await;
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path().display().to_string());
        }
    }
    out
}

/// PostgreSQL (the platform store and the coredms) stopped as by a crash while files are claimed and
/// apps run, and started again: readiness says so meanwhile, the platform keeps running, and every
/// file ends with exactly one outcome and its records once each.
#[tokio::test(flavor = "multi_thread")]
async fn the_store_restarted_during_ingestion_leaves_every_file_one_outcome() {
    let pg = mysimbdp_e2e::PrivatePg::start();
    let t = unique("pgdown");
    let batch = "  routes: [{files: \"*.csv\", app: tortoise-csv, timeout: 1m, memory: 1GiB}]\n  formats: [csv]\n  max_file_size: 10MiB\n  max_files_per_hour: 1000\n  max_bytes_per_day: 1GiB\n  max_concurrent_jobs: 3\n  retries: 8";
    let mut p = TestPlatform::on(&pg.admin_url(), &pg.store_url(), &[(&t, agreement(&t, batch))]).await;
    p.install(&t, "tortoise-csv", &mysimbdp_e2e::bin("tortoise-csv")).await;
    p.start().await;

    const FILES: u64 = 60;
    const ROWS: u64 = 2_000;
    for i in 0..FILES {
        p.drop_file(&t, &format!("part-{i:02}.csv"), &mysimbdp_e2e::gen_data("tortoise", ROWS, 0, 500 + i));
        if i == FILES / 3 {
            pg.stop();
        }
    }
    let http = p.http();
    let down = http.call("GET", "/readyz", None, None).await;
    assert_eq!(down.status, 503, "{}", down.text());
    assert_eq!(down.json()["checks"][0]["ok"], false, "{}", down.text());
    // The metrics still answer, and say the same.
    let metrics = http.get("/metrics", &p.token(None)).await;
    assert_eq!(metrics.status, 200, "{}", metrics.text());
    assert!(metrics.text().contains("mysimbdp_dependency_up{check=\"platform_store\"} 0"), "{}", metrics.text());
    // Down for ten rescans of the staging folders, each finding files it cannot claim.
    p.after_passes("batch_rescan", 10).await;
    pg.start_again();

    let db = p.db.clone();
    eventually(Duration::from_secs(180), "every file in a final state", async || {
        let row: Result<(i64, i64), _> = sqlx::query_as(
            "select count(*) filter (where state in ('succeeded', 'rejected', 'failed')), count(*) from jobs",
        )
        .fetch_one(&db)
        .await;
        matches!(row, Ok((done, total)) if done == total && total == FILES as i64)
    })
    .await;
    let jobs = p.all_jobs(&t).await;
    assert_eq!(jobs.len() as u64, FILES, "one job per file");
    for job in &jobs {
        assert_eq!((job.state.as_str(), job.records_ingested), ("succeeded", Some(ROWS as i64)), "{job:?}");
        p.wait_moved(job).await;
    }
    assert_eq!(p.count_docs(&t, "readings").await, (FILES * ROWS) as i64, "each record once");
    assert_eq!(http.call("GET", "/readyz", None, None).await.status, 200);
    p.cleanup().await;
    drop(pg);
}

/// The broker killed (`kill -9`) while two instances consume, and started again: readiness says so
/// meanwhile, the instances carry on once it is back (no restart of theirs is needed), and every
/// message produced before and after is in the coredms exactly once. The broker is the test's own,
/// with storage that outlives it, as a production broker's does.
#[tokio::test(flavor = "multi_thread")]
async fn the_broker_restarted_during_streaming_loses_and_doubles_nothing() {
    use crate::stream::{produce_to, reading, start, stream_agreement, stream_app, upload, wait_docs, wait_state};
    let mut broker = mysimbdp_e2e::PrivateBroker::start();
    let zoo = unique("brokerdown");
    let mut p = TestPlatform::new(&[(&zoo, stream_agreement(&zoo, &Default::default()))]).await;
    p.brokers = broker.addr();
    p.start().await;
    let (http, token) = (p.http(), p.token(Some(&zoo)));
    upload(&http, &token, &zoo, stream_app("tortoise-stream", "")).await;
    let topic = format!("{zoo}.readings");
    crate::stream::wait_topic_on(&broker.addr(), &topic).await;
    let started = start(&http, &token, &zoo, "tortoise-stream", 2).await;
    let ids: Vec<String> = started.iter().map(|i| i["id"].as_str().unwrap().to_owned()).collect();
    for id in &ids {
        wait_state(&http, &token, &zoo, id, "running", Duration::from_secs(30)).await;
    }

    const HALF: u64 = 20_000;
    produce_to(&broker.addr(), &topic, (0..HALF).map(reading).collect()).await;
    eventually(Duration::from_secs(60), "the apps ingesting", async || p.count_docs(&zoo, "readings").await >= 2_000)
        .await;
    broker.kill9();
    let at_kill = p.count_docs(&zoo, "readings").await;
    assert!(at_kill < HALF as i64, "the broker is killed mid-stream: {at_kill} of {HALF} documents");
    let broker_check = async || {
        let r = http.call("GET", "/readyz", None, None).await;
        let check = r.json()["checks"].as_array().unwrap().iter().find(|c| c["name"] == "broker").cloned().unwrap();
        (r.status, check["ok"].as_bool().unwrap())
    };
    eventually(Duration::from_secs(15), "readiness saying the broker is down", async || {
        broker_check().await == (503, false)
    })
    .await;
    let metrics = http.get("/metrics", &p.token(None)).await.text();
    assert!(metrics.contains("mysimbdp_dependency_up{check=\"broker\"} 0"), "{metrics}");
    assert!(metrics.contains("mysimbdp_dependency_up{check=\"platform_store\"} 1"), "{metrics}");
    broker.start_again();
    produce_to(&broker.addr(), &topic, (HALF..2 * HALF).map(reading).collect()).await;
    wait_docs(&p, &zoo, 2 * HALF as i64, Duration::from_secs(180)).await;
    eventually(Duration::from_secs(15), "readiness back", async || broker_check().await == (200, true)).await;
    // The monitor reads the apps' reports again: their count grows.
    let reports = async || {
        let r = http.get(&format!("/v1/tenants/{zoo}/reports?limit=1000"), &token).await.json();
        r["items"].as_array().unwrap().len()
    };
    let before = reports().await;
    eventually(Duration::from_secs(15), "reports read after the restart", async || reports().await > before).await;
    for id in &ids {
        let i = wait_state(&http, &token, &zoo, id, "running", Duration::from_secs(30)).await;
        let log = http.get(&format!("/v1/tenants/{zoo}/instances/{id}/log"), &token).await.text();
        // The app waited for the broker: no run of it ended.
        assert_eq!((&i["desired"], &i["restarts_total"]), (&"running".into(), &0.into()), "{i}\n{log}");
        assert!(log.contains("the broker is out of reach"), "{log}");
    }
    p.cleanup().await;
}

/// A retry is a request recorded in the store: the file stays in quarantine until the batch manager
/// runs the job and takes it back. Recorded while no batch manager runs, it is carried out at the next
/// start, on the same file, once.
#[tokio::test(flavor = "multi_thread")]
async fn a_retry_recorded_while_the_platform_is_down_runs_at_the_next_start() {
    let t = unique("retrydown");
    let batch = BATCH.replace("app: count", "app: fails");
    let mut p = TestPlatform::new(&[(&t, agreement(&t, &batch))]).await;
    p.start().await;
    p.install_script(&t, "fails", "cat \"$1\"; exit 1").await;
    p.drop_file(&t, "once.csv", b"a\n41\n");
    let failed = p.wait_final(&t, "once.csv").await;
    assert_eq!((failed.state.as_str(), failed.attempts), ("failed", 1), "{failed:?}");
    let quarantined = p.wait_moved(&failed).await;
    p.stop().await;

    // What the API records for a retry, with no batch manager to carry it out.
    mysimbdp::store::jobs::retry(&p.db, &p.tenant(&t), &failed, false, 1, |_| Ok(())).await.unwrap();
    assert!(quarantined.exists(), "the file stays where it is until the job runs");
    p.start().await;
    let db = p.db.clone();
    eventually(Duration::from_secs(30), "the retried job ran again", async || {
        let job = mysimbdp::store::jobs::get(&db, &p.tenant(&t), failed.id).await.unwrap().unwrap();
        job.state().is_final() && job.finished_at > failed.finished_at
    })
    .await;
    let again = p.wait_final(&t, "once.csv").await;
    assert_eq!((again.state.as_str(), again.attempts), ("failed", 1), "one attempt on the retry: {again:?}");
    assert_eq!(again.log.as_deref(), Some("a\n41\n"), "the app read the file taken back from quarantine");
    assert_eq!(p.wait_moved(&again).await, quarantined, "back in quarantine, with its reason");
    assert!(mysimbdp::layout::reason_file(&quarantined).exists());
    let started: Vec<String> =
        p.events(&t, &again).await.into_iter().map(|(_, m)| m).filter(|m| m.starts_with("attempt")).collect();
    assert_eq!(started.len(), 2, "one attempt before the retry, one after: {started:?}");
    p.cleanup().await;
}
