//! Apps that crash, hang, exhaust their memory or flood their output are each recorded as failed with
//! a bounded log, and the platform keeps ingesting other files.

use mysimbdp::domain::JobState;
use std::time::Duration;

use mysimbdp_e2e::{agreement, unique, TestPlatform};

#[tokio::test(flavor = "multi_thread")]
async fn failures_are_recorded_and_the_platform_keeps_going() {
    let t = unique("bad");
    let batch = r#"  routes:
    - {files: "crash-*.csv", app: crash, timeout: 1m, memory: 256MiB}
    - {files: "hang-*.csv", app: hang, timeout: 1s, memory: 256MiB}
    - {files: "mem-*.csv", app: memory, timeout: 1m, memory: 256MiB}
    - {files: "flood-*.csv", app: flood, timeout: 1m, memory: 256MiB}
    - {files: "retry-*.csv", app: flaky, timeout: 1m, memory: 256MiB}
    - {files: "*.csv", app: ok, timeout: 1m, memory: 256MiB}
  formats: [csv]
  max_file_size: 1MiB
  max_files_per_hour: 100
  max_bytes_per_day: 1GiB
  max_concurrent_jobs: 4
  retries: 0"#;
    let mut p = TestPlatform::new(&[(&t, agreement(&t, batch))]).await;
    p.start().await;
    let m = "\"$APP/misbehave\"";
    p.install_bundle(&t, "crash", &format!("exec {m} crash"), &["misbehave"]).await;
    p.install_bundle(&t, "hang", &format!("{m} hang & {m} hang; wait"), &["misbehave"]).await;
    p.install_bundle(&t, "memory", &format!("exec {m} memory"), &["misbehave"]).await;
    p.install_bundle(&t, "flood", &format!("exec {m} flood"), &["misbehave"]).await;
    p.install_script(&t, "ok", "echo ingested; exit 0").await;

    for (i, name) in ["crash-1.csv", "hang-1.csv", "mem-1.csv", "flood-1.csv"].iter().enumerate() {
        p.drop_file(&t, name, format!("a,b\n{i},1\n").as_bytes());
    }

    let crash = p.wait_final(&t, "crash-1.csv").await;
    assert_eq!(
        (crash.state.as_str(), crash.reason.map(|r| r.as_str()), crash.exit_code),
        ("failed", Some("app_error"), Some(3))
    );
    assert_eq!(crash.detail.as_deref(), Some("exited with status 3"));
    assert!(crash.log.as_deref().unwrap().contains("crashing on purpose"));

    let hang = p.wait_final(&t, "hang-1.csv").await;
    assert_eq!((hang.state.as_str(), hang.reason.map(|r| r.as_str())), ("failed", Some("timeout")), "{hang:?}");
    assert!(hang.detail.as_deref().unwrap().contains("timeout of 1s"), "{hang:?}");
    assert!(hang.run_ms.unwrap() < 5_000, "SIGTERM then SIGKILL within the grace period: {hang:?}");
    // The whole process group is gone, including the background child.
    let leftovers = std::process::Command::new("pgrep").args(["-f", "misbehave hang"]).output().unwrap();
    assert!(leftovers.stdout.is_empty(), "hang processes survived: {}", String::from_utf8_lossy(&leftovers.stdout));

    let mem = p.wait_final(&t, "mem-1.csv").await;
    assert_eq!((mem.state.as_str(), mem.reason.map(|r| r.as_str())), ("failed", Some("memory_limit")), "{mem:?}");
    assert!(mem.detail.as_deref().unwrap().contains("memory limit of 256MiB"), "{mem:?}");

    let flood = p.wait_final(&t, "flood-1.csv").await;
    assert_eq!(flood.state, JobState::Failed);
    let log = flood.log.as_deref().unwrap();
    assert!(flood.log_dropped_bytes > 19_000_000, "{}", flood.log_dropped_bytes);
    assert!(log.len() < 17 << 10, "log is bounded by the configured 16KiB: {}", log.len());
    // stdout and stderr share one pipe, so the log is in the order written: first lines and last line kept.
    assert!(log.contains("bytes dropped") && log.ends_with("flood finished\n"), "the end of the output is kept");
    assert!(log.starts_with("0 xxx"), "the start of the output is kept");

    // Each failed file is quarantined with its log beside it.
    let q = p.wait_moved(&flood).await;
    let sidecar: serde_json::Value =
        serde_json::from_slice(&std::fs::read(mysimbdp::layout::reason_file(&q)).unwrap()).unwrap();
    assert!(sidecar["log"].as_str().unwrap().contains("bytes dropped"));

    // The platform keeps going.
    p.drop_file(&t, "good.csv", b"a,b\n1,2\n");
    let good = p.wait_final(&t, "good.csv").await;
    assert_eq!(good.state, JobState::Succeeded);
    assert_eq!(good.log.as_deref(), Some("ingested\n"));
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_follow_the_agreement_and_exit_75_means_try_later() {
    let t = unique("retry");
    let batch = r#"  routes:
    - {files: "later-*.csv", app: later, timeout: 1m, memory: 256MiB}
    - {files: "*.csv", app: flaky, timeout: 1m, memory: 256MiB}
  formats: [csv]
  max_file_size: 1MiB
  max_files_per_hour: 100
  max_bytes_per_day: 1GiB
  max_concurrent_jobs: 2
  retries: 2"#;
    let mut p = TestPlatform::new(&[(&t, agreement(&t, batch))]).await;
    p.start().await;
    // Fails twice, then succeeds: each attempt counts itself in the app's own database, the one
    // place it can keep anything between attempts.
    let count = "psql \"$MYSIMBDP_COREDMS_URL\" -qtAc 'create table if not exists attempts (n serial); insert into attempts default values; select count(*) from attempts'";
    p.install_script(&t, "flaky", &format!("[ $({count}) -ge 3 ]")).await;
    p.install_script(&t, "later", "echo 'coredms busy' >&2; exit 75").await;
    p.drop_file(&t, "flaky.csv", b"a\n1\n");
    p.drop_file(&t, "later-1.csv", b"a\n2\n");

    let job = p.wait_final(&t, "flaky.csv").await;
    assert_eq!((job.state.as_str(), job.attempts), ("succeeded", 3), "{job:?}");
    let states: Vec<String> = p.events(&t, &job).await.into_iter().map(|(s, _)| s).collect();
    assert_eq!(
        states,
        [
            "detected",
            "queued",
            "running",
            "retry_wait",
            "queued",
            "running",
            "retry_wait",
            "queued",
            "running",
            "succeeded"
        ]
    );

    let later = p.wait_final_within(&t, "later-1.csv", Duration::from_secs(30)).await;
    assert_eq!(
        (later.state.as_str(), later.reason.map(|r| r.as_str()), later.attempts),
        ("failed", Some("try_later"), 3),
        "{later:?}"
    );
    p.cleanup().await;
}
