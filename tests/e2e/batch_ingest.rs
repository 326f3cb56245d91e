//! A CSV and a JSONL file for two tenants end as documents in each tenant's own coredms database.

use mysimbdp::domain::JobState;
use mysimbdp_e2e::{agreement, bin, gen_data, unique, TestPlatform};

#[tokio::test(flavor = "multi_thread")]
async fn csv_and_jsonl_of_two_tenants_land_in_their_own_coredms() {
    let (zoo, food) = (unique("zoo"), unique("food"));
    let zoo_batch = "  routes: [{files: \"*.csv\", app: tortoise-csv, timeout: 1m, memory: 1GiB}]\n  formats: [csv]\n  max_file_size: 10MiB\n  max_files_per_hour: 100\n  max_bytes_per_day: 1GiB\n  max_concurrent_jobs: 2";
    let food_batch = "  routes: [{files: \"orders-*.jsonl\", app: orders-jsonl, timeout: 1m, memory: 1GiB}]\n  formats: [jsonl]\n  max_file_size: 1MiB\n  max_files_per_hour: 10\n  max_bytes_per_day: 10MiB\n  max_concurrent_jobs: 1";
    let mut p = TestPlatform::new(&[(&zoo, agreement(&zoo, zoo_batch)), (&food, agreement(&food, food_batch))]).await;
    p.start().await;
    p.install(&zoo, "tortoise-csv", &bin("tortoise-csv")).await;
    p.install(&food, "orders-jsonl", &bin("orders-jsonl")).await;

    // 5,000 rows with every 50th malformed; 900 order events with every 30th malformed.
    p.drop_file(&zoo, "readings.csv", &gen_data("tortoise", 5000, 50, 1));
    p.drop_file(&food, "orders-1.jsonl", &gen_data("orders", 900, 30, 2));

    let job = p.wait_final(&zoo, "readings.csv").await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert_eq!((job.records_ingested, job.records_rejected), (Some(4900), Some(100)));
    assert!(
        job.log
            .as_deref()
            .unwrap_or_default()
            .contains("line 51 rejected: acceleration `not-a-number` is not a number"),
        "{:?}",
        job.log
    );
    let job = p.wait_final(&food, "orders-1.jsonl").await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert_eq!((job.records_ingested, job.records_rejected), (Some(870), Some(30)));
    let events: Vec<String> = p.events(&food, &job).await.into_iter().map(|(s, _)| s).collect();
    assert_eq!(events, ["detected", "queued", "running", "succeeded"]);

    assert_eq!(p.count_docs(&zoo, "readings").await, 4900);
    assert_eq!(p.count_docs(&food, "orders").await, 870);
    assert_eq!(p.count_docs(&zoo, "orders").await, 0, "no food data in the zoo's database");
    assert_eq!(p.count_docs(&food, "readings").await, 0, "no zoo data in the food database");

    // The wrangled shapes: typed, renamed, nested.
    let doc = p.doc(&zoo, "readings", "tortoise-00:1700000000000").await;
    assert_eq!(doc["device_id"], "tortoise-00");
    assert_eq!(doc["ts"], "2023-11-14T22:13:20.000Z");
    assert!(doc["acceleration"]["x"].is_i64() && doc["acceleration"]["magnitude"].is_f64(), "{doc}");
    assert!(doc["environment"]["humidity"].is_f64(), "{doc}");
    assert!(doc.get("dev-id").is_none());
    let doc = p.doc(&food, "orders", "1800000000:placed").await;
    assert_eq!(doc["status"], "placed");
    assert!(doc["amount_cents"].is_i64() && doc["customer"]["name"].is_string(), "{doc}");
    assert_eq!(doc["date"], "2025-01-18");

    // Ingested files leave staging for the ingested area.
    let zoo_job = p.wait_final(&zoo, "readings.csv").await;
    let moved = p.wait_moved(&zoo_job).await;
    assert!(moved.starts_with(p.data_dir.join("ingested").join(&zoo)), "{moved:?}");
    assert!(!p.staging_dir.join(&zoo).join("readings.csv").exists());

    // The same content dropped again is recognised and not ingested twice.
    p.drop_file(&zoo, "readings-copy.csv", &gen_data("tortoise", 5000, 50, 1));
    let dup = p.wait_final(&zoo, "readings-copy.csv").await;
    assert_eq!((dup.state.as_str(), dup.reason.map(|r| r.as_str())), ("rejected", Some("duplicate")));
    assert!(dup.detail.as_deref().unwrap().contains("`readings.csv`"), "{dup:?}");
    assert_eq!(dup.attempts, 0);
    assert_eq!(p.count_docs(&zoo, "readings").await, 4900);

    // Unless asked: an operator forces the duplicate through; the app runs, the coredms keeps one copy.
    p.wait_moved(&dup).await;
    let out = p.cli(&["ingestions", "retry", &dup.id.to_string(), "--allow-duplicate", "--tenant", &zoo]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let db = p.db.clone();
    mysimbdp_e2e::eventually(std::time::Duration::from_secs(30), "the forced duplicate ingested", async || {
        let state: String =
            sqlx::query_scalar("select state from jobs where id = $1").bind(dup.id).fetch_one(&db).await.unwrap();
        state == "succeeded"
    })
    .await;
    let forced = p.wait_final(&zoo, "readings-copy.csv").await;
    assert_eq!((forced.records_ingested, forced.attempts), (Some(4900), 1), "{forced:?}");
    // Taken back from quarantine by the run, its reason file with it.
    let quarantined = std::path::PathBuf::from(dup.final_path.as_deref().unwrap());
    assert!(p.wait_moved(&forced).await.starts_with(p.data_dir.join("ingested").join(&zoo)));
    assert!(!quarantined.exists() && !mysimbdp::layout::reason_file(&quarantined).exists(), "{quarantined:?}");
    let events: Vec<String> = p.events(&zoo, &forced).await.into_iter().map(|(_, m)| m).collect();
    assert!(events.contains(&"retry asked, duplicate content allowed".to_owned()), "{events:?}");
    assert_eq!(p.count_docs(&zoo, "readings").await, 4900);
    // A succeeded job is not retried.
    let out = p.cli(&["ingestions", "retry", &zoo_job.id.to_string(), "--tenant", &zoo]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is succeeded; only failed jobs"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    p.cleanup().await;
}
