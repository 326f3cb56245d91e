//! Every constraint violation is rejected before any app runs, quarantined, and logged with a reason
//! naming the limit and the value.

use mysimbdp::domain::JobState;
use std::time::Duration;

use mysimbdp_e2e::{agreement, eventually, unique, TestPlatform};

fn batch(limits: &str) -> String {
    format!("  routes: [{{files: \"*.csv\", app: ok, timeout: 1m, memory: 256MiB}}]\n  formats: [csv]\n{limits}\n  max_concurrent_jobs: 1")
}

#[tokio::test(flavor = "multi_thread")]
async fn each_violation_is_rejected_before_the_app_runs() {
    let (small, rate, volume) = (unique("small"), unique("rate"), unique("volume"));
    let mut p = TestPlatform::new(&[
        (
            &small,
            agreement(&small, &batch("  max_file_size: 1KiB\n  max_files_per_hour: 100\n  max_bytes_per_day: 1MiB")),
        ),
        (&rate, agreement(&rate, &batch("  max_file_size: 1KiB\n  max_files_per_hour: 2\n  max_bytes_per_day: 1MiB"))),
        (
            &volume,
            agreement(&volume, &batch("  max_file_size: 1KiB\n  max_files_per_hour: 100\n  max_bytes_per_day: 1000B")),
        ),
    ])
    .await;
    p.start().await;
    for t in [&small, &rate, &volume] {
        p.install_script(t, "ok", "exit 0").await;
    }
    let row = |i: usize| format!("a,b\n{i},2\n");

    p.drop_file(&small, "data.json", b"{\"a\":1}\n");
    p.drop_file(&small, "json-inside.csv", b"{\"a\": 1}\n{\"a\": 2}\n");
    p.drop_file(&small, "ragged.csv", b"a,b,c\n1,2\n");
    p.drop_file(&small, "big.csv", format!("a,b\n{}", "1,2\n".repeat(400)).as_bytes());
    p.drop_file(&small, "empty.csv", b"");
    p.drop_file(&small, "fine.csv", row(0).as_bytes());
    let expectations = [
        ("data.json", "format", "json files are not allowed (formats: csv)"),
        ("json-inside.csv", "content_mismatch", "looks like JSON, not csv"),
        ("ragged.csv", "content_mismatch", "row at line 2 has 2 fields but the header has 3"),
        ("big.csv", "max_file_size", "file is 1.57KiB (1604 bytes), over max_file_size 1KiB"),
        ("empty.csv", "empty_file", "the file is empty"),
    ];
    for (file, reason, detail) in expectations {
        let job = p.wait_final(&small, file).await;
        assert_eq!((job.state.as_str(), job.reason.map(|r| r.as_str())), ("rejected", Some(reason)), "{file}: {job:?}");
        assert!(job.detail.as_deref().unwrap().contains(detail), "{file}: {:?} should contain {detail}", job.detail);
        assert_eq!((job.attempts, job.started_at), (0, None), "{file}: the app must not have run");
        let events: Vec<String> = p.events(&small, &job).await.into_iter().map(|(s, _)| s).collect();
        assert!(!events.contains(&"running".to_owned()), "{file}: {events:?}");
        // Quarantined, with the reason beside it.
        let q = p.wait_moved(&job).await;
        assert!(q.starts_with(p.data_dir.join("quarantine").join(&small)), "{q:?}");
        let sidecar: serde_json::Value =
            serde_json::from_slice(&std::fs::read(mysimbdp::layout::reason_file(&q)).unwrap()).unwrap();
        assert_eq!(sidecar["reason"], reason);
        assert!(!p.staging_dir.join(&small).join(file).exists());
    }
    assert_eq!(p.wait_final(&small, "fine.csv").await.state, JobState::Succeeded);

    // Files per hour: two admitted, the third refused.
    for i in 0..3 {
        p.drop_file(&rate, &format!("r{i}.csv"), row(i).as_bytes());
        p.wait_final(&rate, &format!("r{i}.csv")).await;
    }
    let third = p.wait_final(&rate, "r2.csv").await;
    assert_eq!(third.reason.map(|r| r.as_str()), Some("max_files_per_hour"), "{third:?}");
    assert_eq!(third.detail.as_deref(), Some("2 files admitted in the last hour, max_files_per_hour is 2"));
    assert_eq!(third.attempts, 0);

    // Bytes per day: 600 + 600 > 1000.
    let body = |i: usize| format!("a,b\n{}", format!("{i},2\n").repeat(148)).into_bytes();
    p.drop_file(&volume, "v0.csv", &body(0));
    assert_eq!(p.wait_final(&volume, "v0.csv").await.state, JobState::Succeeded);
    p.drop_file(&volume, "v1.csv", &body(1));
    let second = p.wait_final(&volume, "v1.csv").await;
    assert_eq!(second.reason.map(|r| r.as_str()), Some("max_bytes_per_day"), "{second:?}");
    assert!(second.detail.as_deref().unwrap().ends_with("over max_bytes_per_day 1000B"), "{second:?}");
    assert_eq!(second.attempts, 0);
    p.cleanup().await;
}

/// A burst of files is admitted together (see `batch::grouped`), and judged exactly as the same files
/// one by one: no more than the hourly limit gets in, and of identical files only one.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_is_judged_as_its_files_one_by_one() {
    let (rate, copies) = (unique("burst"), unique("copies"));
    let limits = "  max_file_size: 1KiB\n  max_files_per_hour: 10\n  max_bytes_per_day: 1MiB";
    let unlimited = "  max_file_size: 1KiB\n  max_files_per_hour: 1000\n  max_bytes_per_day: 1MiB";
    let mut p = TestPlatform::new(&[
        (&rate, agreement(&rate, &batch(limits).replace("max_concurrent_jobs: 1", "max_concurrent_jobs: 4"))),
        (&copies, agreement(&copies, &batch(unlimited).replace("max_concurrent_jobs: 1", "max_concurrent_jobs: 4"))),
    ])
    .await;
    p.start().await;
    for t in [&rate, &copies] {
        p.install_script(t, "ok", "exit 0").await;
    }
    for i in 0..30 {
        p.drop_file(&rate, &format!("b{i:02}.csv"), format!("a,b\n{i},2\n").as_bytes());
        p.drop_file(&copies, &format!("c{i:02}.csv"), b"a,b\n1,2\n");
    }
    let (mut admitted, mut over) = (0, 0);
    for i in 0..30 {
        let job = p.wait_final(&rate, &format!("b{i:02}.csv")).await;
        match (job.state, job.reason.map(|r| r.as_str())) {
            (JobState::Succeeded, None) => admitted += 1,
            (JobState::Rejected, Some("max_files_per_hour")) => {
                assert_eq!(job.detail.as_deref(), Some("10 files admitted in the last hour, max_files_per_hour is 10"));
                over += 1;
            }
            other => panic!("b{i:02}.csv: {other:?} {job:?}"),
        }
    }
    assert_eq!((admitted, over), (10, 20));
    let mut kept = Vec::new();
    let mut duplicates = Vec::new();
    for i in 0..30 {
        let job = p.wait_final(&copies, &format!("c{i:02}.csv")).await;
        match (job.state, job.reason.map(|r| r.as_str())) {
            (JobState::Succeeded, None) => kept.push(job),
            (JobState::Rejected, Some("duplicate")) => duplicates.push(job),
            other => panic!("c{i:02}.csv: {other:?} {job:?}"),
        }
    }
    assert_eq!((kept.len(), duplicates.len()), (1, 29), "one copy ingested, the rest refused: {kept:?}");
    assert!(duplicates.iter().all(|d| d.duplicate_of == Some(kept[0].id)), "each names the one ingested");
    let usage: Vec<(String, i64)> = sqlx::query_as(
        "select tenant, sum(files)::bigint from tenant_usage where tenant = any($1) group by tenant order by tenant",
    )
    .bind(vec![rate.clone(), copies.clone()])
    .fetch_all(&p.db)
    .await
    .unwrap();
    let mut expected = vec![(rate.clone(), 10), (copies.clone(), 1)];
    expected.sort();
    assert_eq!(usage, expected, "the usage counts what was admitted");
    p.cleanup().await;
}

/// A retry is admitted again: it counts against the hourly file and daily byte limits like a new file,
/// and one over them is refused with the figures, so retrying cannot get around the agreement.
#[tokio::test(flavor = "multi_thread")]
async fn retries_count_against_the_rate_limits() {
    let t = unique("retries");
    let batch = "  routes: [{files: \"*.csv\", app: fails, timeout: 1m, memory: 256MiB}]\n  formats: [csv]\n  max_file_size: 1MiB\n  max_files_per_hour: 2\n  max_bytes_per_day: 1GiB\n  max_concurrent_jobs: 1";
    let mut p = TestPlatform::new(&[(&t, agreement(&t, batch))]).await;
    p.start().await;
    p.install_script(&t, "fails", "exit 1").await;
    p.drop_file(&t, "once.csv", b"a\n1\n");
    let failed = p.wait_final(&t, "once.csv").await;
    assert_eq!(failed.state, JobState::Failed, "{failed:?}");
    let (http, token) = (p.http(), p.token(Some(&t)));
    let retry = format!("/v1/tenants/{t}/ingestions/{}/retry", failed.id);

    // The second admission in the hour: allowed, and it runs (and fails) again.
    assert_eq!(http.call("POST", &retry, Some(&token), None).await.status, 202);
    let db = p.db.clone();
    eventually(Duration::from_secs(30), "the retried job failed again", async || {
        let job = mysimbdp::store::jobs::get(&db, &p.tenant(&t), failed.id).await.unwrap().unwrap();
        job.state().is_final() && job.finished_at > failed.finished_at
    })
    .await;
    // The third: over max_files_per_hour, refused with the figures, the job left as it was.
    let r = http.call("POST", &retry, Some(&token), None).await;
    let detail = r.problem(429);
    assert!(detail.contains("2 files admitted in the last hour, max_files_per_hour is 2"), "{detail}");
    let job = p.wait_final(&t, "once.csv").await;
    assert_eq!(job.state, JobState::Failed, "{job:?}");
    let (files,): (i64,) = sqlx::query_as("select coalesce(sum(files), 0)::bigint from tenant_usage where tenant = $1")
        .bind(&t)
        .fetch_one(&p.db)
        .await
        .unwrap();
    assert_eq!(files, 2, "the first admission and the retry");
    p.cleanup().await;
}

/// The disk quota covers what the tenant's files take on the platform: a file that would pass it is
/// refused with the figures and not kept, an upload that says it would pass it is refused before a
/// byte is written, and an app's old versions beyond `max_versions` go.
#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_over_its_disk_quota_gets_disk_quota_with_the_figures() {
    let t = unique("quota");
    let text = agreement(&t, "  routes: [{files: \"*.csv\", app: fails, timeout: 1m, memory: 256MiB}]\n  formats: [csv]\n  max_file_size: 1MiB\n  max_files_per_hour: 100\n  max_bytes_per_day: 1GiB\n  max_concurrent_jobs: 1")
        .replace("apps:\n", "disk_quota: 2KiB\napps:\n  max_versions: 2\n");
    let mut p = TestPlatform::new(&[(&t, text)]).await;
    p.start().await;
    for round in 1..=3 {
        p.install_script(&t, "fails", &format!("# version {round}\nexit 1")).await;
    }
    let versions: Vec<(i32, String)> =
        sqlx::query_as("select version, dir from apps where tenant = $1 order by version")
            .bind(&t)
            .fetch_all(&p.db)
            .await
            .unwrap();
    assert_eq!(versions.iter().map(|v| v.0).collect::<Vec<_>>(), vec![2, 3], "max_versions keeps the newest two");
    assert!(!p.data_dir.join("apps").join(&t).join("fails").join("1").exists(), "the oldest version's folder went");

    let row = |n: usize| format!("{n:0>63}\n");
    let content: String = (0..20).map(row).collect(); // 1,280 bytes
    p.drop_file(&t, "kept.csv", content.as_bytes());
    let kept = p.wait_final(&t, "kept.csv").await;
    assert_eq!(kept.state, JobState::Failed, "{kept:?}");
    p.wait_moved(&kept).await; // quarantined: it counts

    let other: String = (20..40).map(row).collect();
    p.drop_file(&t, "over.csv", other.as_bytes());
    let over = p.wait_final(&t, "over.csv").await;
    assert_eq!((over.state.as_str(), over.reason.map(|r| r.as_str())), ("rejected", Some("disk_quota")), "{over:?}");
    let detail = over.detail.clone().unwrap();
    assert!(detail.contains("this file's 1.25KiB") && detail.contains("over disk_quota 2KiB"), "{detail}");
    assert!(over.final_path.is_none(), "a file over the quota is not kept: {over:?}");
    let work = p.data_dir.join("work").join(&t).join(over.id.to_string());
    eventually(Duration::from_secs(10), "the refused file gone", async || !work.exists()).await;

    let (http, token) = (p.http(), p.token(Some(&t)));
    let r = http
        .call("PUT", &format!("/v1/tenants/{t}/staging/more.csv"), Some(&token), Some(("text/csv", other.into_bytes())))
        .await;
    assert!(r.problem(507).contains("over disk_quota 2KiB"), "{}", r.text());
    p.cleanup().await;
}

/// Files waiting in the tenant's staging folder (an upload under way, a file written in place) count
/// against the quota at upload: a tenant cannot fill the disk with files the platform has not yet
/// claimed. Once they go, uploads are taken again.
#[tokio::test(flavor = "multi_thread")]
async fn files_waiting_in_staging_count_against_the_disk_quota() {
    let t = unique("quota");
    let text = agreement(&t, "  routes: [{files: \"*.csv\", app: ok, timeout: 1m, memory: 256MiB}]\n  formats: [csv]\n  max_file_size: 1MiB\n  max_files_per_hour: 100\n  max_bytes_per_day: 1GiB\n  max_concurrent_jobs: 1")
        .replace("apps:\n", "disk_quota: 64KiB\napps:\n");
    let mut p = TestPlatform::new(&[(&t, text)]).await;
    p.start().await;
    // Never claimed: `.part` files are still being written.
    let waiting = p.drop_file(&t, "big.csv.part", &vec![b'1'; 60 << 10]);
    let (http, token) = (p.http(), p.token(Some(&t)));
    let put = async |name: &str| {
        let body = format!("a\n{}", "2\n".repeat(4 << 10)).into_bytes(); // 8 KiB
        http.call("PUT", &format!("/v1/tenants/{t}/staging/{name}"), Some(&token), Some(("text/csv", body))).await
    };
    let refused = put("one.csv").await.problem(507);
    assert!(refused.contains("take 60KiB") && refused.contains("over disk_quota 64KiB"), "{refused}");
    std::fs::remove_file(waiting).unwrap();
    assert_eq!(put("one.csv").await.status, 202);
    p.cleanup().await;
}
