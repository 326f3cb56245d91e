//! kill -9 of the platform while files are being claimed and apps are running, then restart: every
//! file ends with exactly one outcome and the coredms holds exactly one copy of each record.

use mysimbdp::domain::JobState;
use std::time::Duration;

use mysimbdp_e2e::{agreement, bin, eventually, gen_data, unique, TestPlatform};

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_and_restart_lose_nothing_and_double_nothing() {
    let t = unique("crash");
    let batch = "  routes: [{files: \"*.csv\", app: slow-tortoise, timeout: 1m, memory: 1GiB}]\n  formats: [csv]\n  max_file_size: 100MiB\n  max_files_per_hour: 1000\n  max_bytes_per_day: 10GiB\n  max_concurrent_jobs: 3\n  retries: 1";
    let mut p = TestPlatform::new(&[(&t, agreement(&t, batch))]).await;
    // The real ingest app, slowed down so that kills land while it runs and while it writes.
    p.install_bundle(&t, "slow-tortoise", "sleep 0.2; exec \"$APP/tortoise-csv\" \"$1\"", &["tortoise-csv"]).await;
    p.start_process().await;

    const FILES: u64 = 12;
    const ROWS: u64 = 20_000;
    for i in 0..FILES {
        p.drop_file(&t, &format!("part-{i:02}.csv"), &gen_data("tortoise", ROWS, 0, 100 + i));
    }
    // Kill while files are being claimed, then twice more while apps run.
    tokio::time::sleep(Duration::from_millis(150)).await;
    p.kill9();
    for _ in 0..2 {
        p.start_process().await;
        let db = p.db.clone();
        eventually(Duration::from_secs(30), "an app running", async || {
            let (n,): (i64,) =
                sqlx::query_as("select count(*) from jobs where state = 'running'").fetch_one(&db).await.unwrap();
            n > 0
        })
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        p.kill9();
    }
    p.start_process().await;

    let db = p.db.clone();
    eventually(Duration::from_secs(120), "every file in a final state", async || {
        let (open,): (i64,) =
            sqlx::query_as("select count(*) from jobs where state not in ('succeeded','rejected','failed')")
                .fetch_one(&db)
                .await
                .unwrap();
        let (total,): (i64,) = sqlx::query_as("select count(*) from jobs").fetch_one(&db).await.unwrap();
        open == 0 && total >= FILES as i64
    })
    .await;
    let jobs = p.all_jobs(&t).await;
    assert_eq!(
        jobs.len() as u64,
        FILES,
        "exactly one job per file: {:?}",
        jobs.iter().map(|j| &j.file_name).collect::<Vec<_>>()
    );
    for job in &jobs {
        assert_eq!(job.state, JobState::Succeeded, "{job:?}");
        assert_eq!(job.records_ingested, Some(ROWS as i64), "{job:?}");
    }
    assert_eq!(p.count_docs(&t, "readings").await, (FILES * ROWS) as i64, "exactly one copy of each record");
    // Nothing left in staging or in the work area; every file in the ingested area.
    for job in &jobs {
        p.wait_moved(job).await;
    }
    assert_eq!(std::fs::read_dir(p.staging_dir.join(&t)).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(p.data_dir.join("work").join(&t)).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(p.data_dir.join("ingested").join(&t)).unwrap().count() as u64, FILES);
    // The interruptions are on record.
    let (restarts,): (i64,) = sqlx::query_as(
        "select count(*) from job_events where message like 'its batch manager stopped during attempt%'",
    )
    .fetch_one(&p.db)
    .await
    .unwrap();
    assert!(restarts >= 1, "at least one running job was taken up again");
    p.cleanup().await;
}

/// Claims commit without waiting for the WAL flush, so a crash of the machine or of PostgreSQL may
/// lose a claim's row after its file was moved into the work area. Recovery adopts such a file.
#[tokio::test(flavor = "multi_thread")]
async fn a_claimed_file_whose_row_was_lost_is_adopted_at_start() {
    let t = unique("orphan");
    let batch = "  routes: [{files: \"*.csv\", app: tortoise-csv, timeout: 1m, memory: 1GiB}]\n  formats: [csv]\n  max_file_size: 10MiB\n  max_files_per_hour: 100\n  max_bytes_per_day: 1GiB\n  max_concurrent_jobs: 1";
    let mut p = TestPlatform::new(&[(&t, agreement(&t, batch))]).await;
    p.install(&t, "tortoise-csv", &bin("tortoise-csv")).await;
    // What a claim leaves when its row's commit is lost: the file in <work>/<tenant>/<job>/ and no row.
    let id = mysimbdp::domain::JobId::now();
    let dir = p.data_dir.join("work").join(&t).join(id.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("lost.csv"), gen_data("tortoise", 300, 0, 9)).unwrap();
    p.start().await;
    let job = p.wait_final(&t, "lost.csv").await;
    assert_eq!((job.id, job.state.as_str(), job.records_ingested), (id, "succeeded", Some(300)), "{job:?}");
    p.wait_moved(&job).await;
    assert_eq!(p.count_docs(&t, "readings").await, 300);
    assert_eq!(p.all_jobs(&t).await.len(), 1);
    p.cleanup().await;
}

/// What a crash can leave that cannot be taken up (here: a claimed file whose quarantine folder is
/// blocked, a tenant's work folder that is not a folder) is logged and left; every other job is
/// recovered, the platform starts and serves, and the blocked file is moved once the fault clears.
#[tokio::test(flavor = "multi_thread")]
async fn one_job_that_cannot_be_recovered_does_not_stop_the_others_or_the_start() {
    let (t, other) = (unique("recover"), unique("blocked"));
    let batch = "  routes: [{files: \"*.csv\", app: tortoise-csv, timeout: 1m, memory: 1GiB}]\n  formats: [csv]\n  max_file_size: 10MiB\n  max_files_per_hour: 100\n  max_bytes_per_day: 1GiB\n  max_concurrent_jobs: 1";
    let mut p = TestPlatform::new(&[(&t, agreement(&t, batch)), (&other, agreement(&other, batch))]).await;
    p.install(&t, "tortoise-csv", &bin("tortoise-csv")).await;
    // A claim cut short before its check: its row `detected`, its file in the work area. It is not
    // a format the agreement takes (`.txt`), so it is rejected, but its quarantine folder is a file, so the move fails.
    let stuck = uuid::Uuid::now_v7();
    let work = p.data_dir.join("work").join(&t).join(stuck.to_string());
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("stuck.txt"), "a\n1\n").unwrap();
    sqlx::query(
        "insert into jobs (id, tenant, file_name, staging_path, work_path, state) values ($1, $2, 'stuck.txt', $3, $4, 'detected')",
    )
    .bind(stuck)
    .bind(&t)
    .bind(p.staging_dir.join(&t).join("stuck.txt").to_string_lossy().as_ref())
    .bind(work.join("stuck.txt").to_string_lossy().as_ref())
    .execute(&p.db)
    .await
    .unwrap();
    std::fs::create_dir_all(p.data_dir.join("quarantine")).unwrap();
    std::fs::write(p.data_dir.join("quarantine").join(&t), "in the way").unwrap();
    // Another tenant's work folder is a file.
    std::fs::write(p.data_dir.join("work").join(&other), "not a folder").unwrap();
    // And a file left in staging while the platform was down, which must still be ingested.
    p.drop_file(&t, "waiting.csv", &gen_data("tortoise", 300, 0, 11));

    p.start().await;
    let waiting = p.wait_final(&t, "waiting.csv").await;
    assert_eq!((waiting.state.as_str(), waiting.records_ingested), ("succeeded", Some(300)), "{waiting:?}");
    let job = p.wait_final(&t, "stuck.txt").await;
    assert_eq!((job.state.as_str(), job.reason.map(|r| r.as_str())), ("rejected", Some("format")), "{job:?}");
    assert!(work.join("stuck.txt").exists(), "the file stays in the work area while it cannot be moved");

    // The fault cleared, the next start moves the file where its job says.
    p.stop().await;
    std::fs::remove_file(p.data_dir.join("quarantine").join(&t)).unwrap();
    p.start().await;
    let moved = p.wait_moved(&job).await;
    assert_eq!(std::fs::read(moved).unwrap(), b"a\n1\n");
    assert_eq!(p.all_jobs(&t).await.len(), 2, "one job per file");
    p.cleanup().await;
}
