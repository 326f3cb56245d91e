//! One tenant's flood of files does not starve another tenant: each tenant has its own queue and the
//! tenants take turns for the platform's workers.

use mysimbdp::domain::JobState;
use mysimbdp_e2e::{agreement, unique, TestPlatform};

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_from_one_tenant_does_not_hold_up_another() {
    let (flood, quiet) = (unique("flood"), unique("quiet"));
    let batch = |jobs: u32| {
        format!("  routes: [{{files: \"*.csv\", app: slow, timeout: 1m, memory: 256MiB}}]\n  formats: [csv]\n  max_file_size: 1MiB\n  max_files_per_hour: 1000\n  max_bytes_per_day: 1GiB\n  max_concurrent_jobs: {jobs}")
    };
    let mut p =
        TestPlatform::new(&[(&flood, agreement(&flood, &batch(4))), (&quiet, agreement(&quiet, &batch(4)))]).await;
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
