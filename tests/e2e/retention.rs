//! Retention: finished work older than the setting is forgotten, rows and files alike, and the API
//! stops showing it at once (no cached page outlives it); work still in progress is never touched.

use mysimbdp::domain::JobState;
use std::time::Duration;

use mysimbdp_e2e::{agreement, eventually, unique, TestPlatform};

const BATCH: &str = "  routes: [{files: \"*.csv\", app: count, timeout: 1m, memory: 256MiB}]\n  formats: [csv]\n  max_file_size: 1MiB\n  max_files_per_hour: 100\n  max_bytes_per_day: 1GiB\n  max_concurrent_jobs: 2";

#[tokio::test(flavor = "multi_thread")]
async fn finished_work_past_retention_is_forgotten_and_work_in_progress_is_kept() {
    let t = unique("retain");
    let mut p = TestPlatform::new(&[(&t, agreement(&t, BATCH))]).await;
    let keep = Duration::from_secs(3);
    p.retention = Some(keep);
    p.start().await;
    p.install_script(&t, "count", "case \"$1\" in *slow*) sleep 6;; esac; wc -l < \"$1\"").await;
    let (http, token) = (p.http(), p.token(Some(&t)));
    let list = format!("/v1/tenants/{t}/ingestions");

    p.drop_file(&t, "done.csv", b"a\n1\n");
    p.drop_file(&t, "refused.txt", b"a\n1\n");
    let done = p.wait_final(&t, "done.csv").await;
    let refused = p.wait_final(&t, "refused.txt").await;
    let (kept, quarantined) = (p.wait_moved(&done).await, p.wait_moved(&refused).await);
    let reason = mysimbdp::layout::reason_file(&quarantined);
    assert!(reason.exists());
    // The listing is read (and cached) while both are there.
    assert_eq!(http.get(&list, &token).await.json()["items"].as_array().unwrap().len(), 2);
    // A report the monitor dropped long ago.
    sqlx::query("insert into dropped_reports (tenant, key, reason, detail, received_at) values ($1, null, 'unsigned', 'x', now() - interval '1 hour')")
        .bind(&t)
        .execute(&p.db)
        .await
        .unwrap();

    // A job still running when the others are forgotten.
    p.drop_file(&t, "slow.csv", b"a\n1\n2\n");
    eventually(Duration::from_secs(30), "the finished jobs forgotten", async || p.all_jobs(&t).await.len() == 1).await;
    let open = p.all_jobs(&t).await;
    assert_eq!((open[0].file_name.as_str(), open[0].state().is_final()), ("slow.csv", false), "{open:?}");
    for gone in [&kept, &quarantined, &reason] {
        assert!(!gone.exists(), "{} outlived retention", gone.display());
    }
    assert!(!kept.parent().unwrap().exists(), "the job's folder goes with its file");
    let items = http.get(&list, &token).await.json()["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1, "no cached page shows forgotten jobs: {items:?}");
    let (dropped,): (i64,) = sqlx::query_as("select count(*) from dropped_reports where tenant = $1")
        .bind(&t)
        .fetch_one(&p.db)
        .await
        .unwrap();
    assert_eq!(dropped, 0);
    let events: (i64,) = sqlx::query_as("select count(*) from job_events where tenant = $1 and job_id <> $2")
        .bind(&t)
        .bind(open[0].id)
        .fetch_one(&p.db)
        .await
        .unwrap();
    assert_eq!(events.0, 0, "events go with their jobs");

    // The slow job finishes with its outcome and is kept for the retention from then.
    let slow = p.wait_final(&t, "slow.csv").await;
    assert_eq!(slow.state, JobState::Succeeded, "{slow:?}");
    assert!(p.wait_moved(&slow).await.exists());
    p.cleanup().await;
}
