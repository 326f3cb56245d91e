//! Every constraint violation is rejected before any app runs, quarantined, and logged with a reason
//! naming the limit and the value.

use mysimbdp_e2e::{agreement, unique, TestPlatform};

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
        assert_eq!((job.state.as_str(), job.reason.as_deref()), ("rejected", Some(reason)), "{file}: {job:?}");
        assert!(job.detail.as_deref().unwrap().contains(detail), "{file}: {:?} should contain {detail}", job.detail);
        assert_eq!((job.attempts, job.started_at), (0, None), "{file}: the app must not have run");
        let events: Vec<String> = p.events(&small, &job).await.into_iter().map(|(s, _)| s).collect();
        assert!(!events.contains(&"running".to_owned()), "{file}: {events:?}");
        // Quarantined, with the reason beside it.
        let q = p.wait_moved(&job).await;
        assert!(q.starts_with(p.data_dir.join("quarantine").join(&small)), "{q:?}");
        let sidecar: serde_json::Value =
            serde_json::from_slice(&std::fs::read(mysimbdp::batch::layout::reason_file(&q)).unwrap()).unwrap();
        assert_eq!(sidecar["reason"], reason);
        assert!(!p.staging_dir.join(&small).join(file).exists());
    }
    assert_eq!(p.wait_final(&small, "fine.csv").await.state, "succeeded");

    // Files per hour: two admitted, the third refused.
    for i in 0..3 {
        p.drop_file(&rate, &format!("r{i}.csv"), row(i).as_bytes());
        p.wait_final(&rate, &format!("r{i}.csv")).await;
    }
    let third = p.wait_final(&rate, "r2.csv").await;
    assert_eq!(third.reason.as_deref(), Some("max_files_per_hour"), "{third:?}");
    assert_eq!(third.detail.as_deref(), Some("2 files admitted in the last hour, max_files_per_hour is 2"));
    assert_eq!(third.attempts, 0);

    // Bytes per day: 600 + 600 > 1000.
    let body = |i: usize| format!("a,b\n{}", format!("{i},2\n").repeat(148)).into_bytes();
    p.drop_file(&volume, "v0.csv", &body(0));
    assert_eq!(p.wait_final(&volume, "v0.csv").await.state, "succeeded");
    p.drop_file(&volume, "v1.csv", &body(1));
    let second = p.wait_final(&volume, "v1.csv").await;
    assert_eq!(second.reason.as_deref(), Some("max_bytes_per_day"), "{second:?}");
    assert!(second.detail.as_deref().unwrap().ends_with("over max_bytes_per_day 1000B"), "{second:?}");
    assert_eq!(second.attempts, 0);
    p.cleanup().await;
}
