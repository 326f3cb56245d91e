//! Agreements are picked up while running; an invalid edit is reported precisely and the previous
//! version stays in force.

use mysimbdp::domain::JobState;
use std::time::Duration;

use mysimbdp_e2e::{agreement, bin, eventually, unique, TestPlatform};

fn batch(max_file_size: &str) -> String {
    format!("  routes: [{{files: \"*.csv\", app: ok, timeout: 1m, memory: 256MiB}}]\n  formats: [csv]\n  max_file_size: {max_file_size}\n  max_files_per_hour: 100\n  max_bytes_per_day: 1GiB\n  max_concurrent_jobs: 1")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_edit_keeps_the_previous_agreement_in_force() {
    let t = unique("agree");
    let mut p = TestPlatform::new(&[(&t, agreement(&t, &batch("1KiB")))]).await;
    p.start().await;
    p.install_script(&t, "ok", "exit 0").await;
    let file = p.tenants_dir.join(format!("{t}.yaml"));
    let two_kib = |seed: u8| format!("a,b\n{}", format!("{seed},2\n").repeat(512)).into_bytes();

    // An edit with two mistakes: both reported, file and field named; the 1KiB limit stays.
    std::fs::write(
        &file,
        agreement(&t, &batch("lots")).replace("  max_concurrent_jobs: 1", "  max_concurrent_jobs: 1\n  colour: red"),
    )
    .unwrap();
    let check = std::process::Command::new(bin("mysimbdp")).args(["agreement", "check"]).arg(&file).output().unwrap();
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(!check.status.success());
    assert!(report.contains(&format!("{}: 2 errors", file.display())), "{report}");
    assert!(report.contains("batch.max_file_size: `lots` is not a size"), "{report}");
    assert!(report.contains("batch.colour: unknown field"), "{report}");
    // The platform read the edit: the tenant sees both mistakes, and the agreement in force is the
    // previous one.
    let (http, token) = (p.http(), p.token(Some(&t)));
    let shown = async || http.get(&format!("/v1/tenants/{t}"), &token).await.json();
    eventually(Duration::from_secs(10), "the edit's errors shown to the tenant", async || {
        shown().await["agreement_errors"].as_array().is_some_and(|e| e.len() == 2)
    })
    .await;
    let detail = shown().await;
    let errors = detail["agreement_errors"].to_string();
    assert!(
        errors.contains("\"field\":\"batch.max_file_size\"") && errors.contains("`lots` is not a size"),
        "{errors}"
    );
    assert!(errors.contains("\"field\":\"batch.colour\""), "{errors}");
    assert_eq!(detail["agreement"]["batch"]["max_file_size"], "1KiB", "{detail}");
    p.drop_file(&t, "a.csv", &two_kib(1));
    let job = p.wait_final(&t, "a.csv").await;
    assert_eq!(job.reason.map(|r| r.as_str()), Some("max_file_size"), "{job:?}");
    assert!(job.detail.as_deref().unwrap().contains("over max_file_size 1KiB"), "{job:?}");

    // A valid edit takes effect while running.
    std::fs::write(&file, agreement(&t, &batch("1MiB"))).unwrap();
    eventually(Duration::from_secs(10), "the valid edit in force, its errors gone", async || {
        let d = shown().await;
        d["agreement"]["batch"]["max_file_size"] == "1MiB" && d["agreement_errors"] == serde_json::json!([])
    })
    .await;
    p.drop_file(&t, "b.csv", &two_kib(2));
    assert_eq!(p.wait_final(&t, "b.csv").await.state, JobState::Succeeded);

    // A tenant added while running is provisioned and served.
    let new = unique("added");
    std::fs::write(p.tenants_dir.join(format!("{new}.yaml")), agreement(&new, &batch("1MiB"))).unwrap();
    eventually(Duration::from_secs(10), "the new tenant's staging folder", async || p.staging_dir.join(&new).is_dir())
        .await;
    p.install_script(&new, "ok", "exit 0").await;
    p.drop_file(&new, "c.csv", b"a\n1\n");
    assert_eq!(p.wait_final(&new, "c.csv").await.state, JobState::Succeeded);
    p.cleanup().await;
    let name = mysimbdp::tenant::TenantId::parse(&new).unwrap().coredms_name();
    let mut admin = mysimbdp_e2e::connect_admin(&mysimbdp_e2e::pg_url()).await;
    for sql in [format!("drop database if exists {name} with (force)"), format!("drop role if exists {name}")] {
        sqlx::raw_sql(&sql).execute(&mut admin).await.unwrap();
    }
}
