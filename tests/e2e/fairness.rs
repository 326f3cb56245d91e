//! One tenant's flood of files does not starve another tenant: each tenant has its own queue and the
//! tenants take turns for the platform's workers.

use mysimbdp::domain::JobState;
use mysimbdp_e2e::{agreement, unique, TestPlatform};

/// Two tenants, `flood` and `quiet`, whose `*.csv` files go to `app`, each with its hourly limit and
/// concurrency.
async fn two_tenants(app: &str, flood: (&str, u32, u32), quiet: (&str, u32, u32)) -> TestPlatform {
    let batch = |per_hour: u32, jobs: u32| {
        format!("  routes: [{{files: \"*.csv\", app: {app}, timeout: 1m, memory: 256MiB}}]\n  formats: [csv]\n  max_file_size: 1MiB\n  max_files_per_hour: {per_hour}\n  max_bytes_per_day: 1GiB\n  max_concurrent_jobs: {jobs}")
    };
    let tenant = |(t, per_hour, jobs): (&str, u32, u32)| (t.to_owned(), agreement(t, &batch(per_hour, jobs)));
    let (flood, quiet) = (tenant(flood), tenant(quiet));
    TestPlatform::new(&[(&flood.0, flood.1), (&quiet.0, quiet.1)]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_from_one_tenant_does_not_hold_up_another() {
    let (flood, quiet) = (unique("flood"), unique("quiet"));
    let mut p = two_tenants("slow", (&flood, 1000, 4), (&quiet, 1000, 4)).await;
    p.batch.workers = 2; // fewer workers than the flooding tenant may use
    p.start().await;
    for t in [&flood, &quiet] {
        p.install_script(t, "slow", "sleep 0.5").await;
    }
    const FLOOD: usize = 24; // 24 x 0.5 s over 2 workers: 6 s of backlog
    for i in 0..FLOOD {
        p.drop_file(&flood, &format!("f{i:02}.csv"), format!("a\n{i}\n").as_bytes());
    }
    // Let the flood be admitted and start, then the other tenant drops one file.
    mysimbdp_e2e::eventually(std::time::Duration::from_secs(10), "the flood queued", async || {
        p.all_jobs(&flood).await.iter().filter(|j| j.state == JobState::Queued).count() >= FLOOD - 4
    })
    .await;
    p.drop_file(&quiet, "q.csv", b"a\n1\n");
    let q = p.wait_final(&quiet, "q.csv").await;
    assert_eq!(q.state, JobState::Succeeded);
    let flood_jobs = p.all_jobs(&flood).await;
    let flood_done_before =
        flood_jobs.iter().filter(|j| j.finished_at.is_some_and(|f| f < q.started_at.unwrap())).count();
    let still_waiting = flood_jobs.iter().filter(|j| j.started_at.is_none_or(|s| s > q.started_at.unwrap())).count();
    // Round robin: the quiet tenant's file takes the next free worker, ahead of the flood's backlog.
    assert!(
        still_waiting >= FLOOD / 2,
        "the quiet tenant waited behind the flood: {flood_done_before} flood files finished first"
    );
    p.cleanup().await;
}

/// A hostile tenant renames in a flood of files its agreement refuses (over its hourly limit). Each
/// refusal is judged on its own under the tenant's admission lock; the flood must not take the store
/// connections another tenant's admission needs, so the quiet tenant's file is admitted while the
/// flood is still being refused.
///
/// The flood is written first as partial files (which staging ignores) and renamed in one burst just
/// before the quiet tenant's file, so the whole flood is ahead of it however fast the platform refuses.
/// What is judged is the quiet file's admission, what fairness promises; its app's run time is its own.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_refused_files_does_not_hold_up_another_tenant() {
    let (flood, quiet) = (unique("refused"), unique("quiet"));
    let mut p = two_tenants("ok", (&flood, 2, 2), (&quiet, 100, 2)).await;
    p.start().await;
    for t in [&flood, &quiet] {
        p.install_script(t, "ok", "exit 0").await;
    }
    const FLOOD: usize = 1500;
    let dir = p.staging_dir.join(&flood);
    std::fs::create_dir_all(&dir).unwrap();
    let names: Vec<String> = (0..FLOOD).map(|i| format!("f{i:04}.csv")).collect();
    for (i, name) in names.iter().enumerate() {
        std::fs::write(dir.join(format!("{name}.part")), format!("a\n{i}\n")).unwrap();
    }
    for name in &names {
        std::fs::rename(dir.join(format!("{name}.part")), dir.join(name)).unwrap();
    }
    p.drop_file(&quiet, "q.csv", b"a\n1\n");
    let q = p.wait_final(&quiet, "q.csv").await;
    assert_eq!(q.state, JobState::Succeeded);
    let mut decided = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while decided < FLOOD {
        assert!(std::time::Instant::now() < deadline, "{decided} of {FLOOD} flood files decided after 120 s");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        decided = p.all_jobs(&flood).await.iter().filter(|j| j.state.is_final()).count();
    }
    let flood_jobs = p.all_jobs(&flood).await;
    let refused = flood_jobs.iter().filter(|j| j.reason.map(|r| r.as_str()) == Some("max_files_per_hour")).count();
    assert_eq!(refused, FLOOD - 2, "all but two refused over the hourly limit");
    let admitted = q.admitted_at.expect("the quiet tenant's file was admitted");
    let after = flood_jobs.iter().filter(|j| j.finished_at.is_some_and(|f| f > admitted)).count();
    assert!(
        after >= FLOOD / 4,
        "the quiet tenant's file waited for the flood: only {after} of {FLOOD} refused after its admission"
    );
    p.cleanup().await;
}
