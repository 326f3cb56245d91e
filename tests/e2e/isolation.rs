//! Tenant isolation: an app's environment holds only the contract's variables and its own tenant's
//! coredms credentials, and those credentials reach no other tenant's database nor the platform store.

use mysimbdp::domain::JobState;
use std::collections::BTreeMap;

use sqlx::{Connection, PgConnection};

use mysimbdp_e2e::{agreement, pg_url, unique, with_database, TestPlatform};

#[tokio::test(flavor = "multi_thread")]
async fn apps_see_only_their_own_tenant() {
    let (a, b) = (unique("iso-a"), unique("iso-b"));
    let batch = "  routes: [{files: \"*.csv\", app: env, timeout: 1m, memory: 256MiB}]\n  formats: [csv]\n  max_file_size: 1MiB\n  max_files_per_hour: 100\n  max_bytes_per_day: 1GiB\n  max_concurrent_jobs: 1";
    let mut p = TestPlatform::new(&[(&a, agreement(&a, batch)), (&b, agreement(&b, batch))]).await;
    p.start().await;
    p.install_bundle(&a, "env", "exec \"$APP/misbehave\" env", &["misbehave"]).await;
    p.drop_file(&a, "x.csv", b"a\n1\n");
    let job = p.wait_final(&a, "x.csv").await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");

    let env: BTreeMap<String, String> = job
        .log
        .as_deref()
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    // `/bin/sh`, which runs the test's wrapper script, adds PWD itself, and the script sets APP; the
    // platform passes neither.
    let keys: Vec<&str> = env.keys().map(String::as_str).filter(|k| !["PWD", "APP"].contains(k)).collect();
    assert_eq!(
        keys,
        [
            "HOME",
            "LANG",
            "MYSIMBDP_COREDMS_DB",
            "MYSIMBDP_COREDMS_URL",
            "MYSIMBDP_INPUT_FILE",
            "MYSIMBDP_JOB_ID",
            "MYSIMBDP_RESULT_FILE",
            "MYSIMBDP_TENANT",
            "PATH",
        ],
        "exactly the contract's variables; nothing of the platform's environment"
    );
    let a_db = p.tenant(&a).coredms_name();
    let b_db = p.tenant(&b).coredms_name();
    assert_eq!(env["MYSIMBDP_TENANT"], a);
    assert_eq!(env["MYSIMBDP_COREDMS_DB"], a_db);
    assert_eq!(env["MYSIMBDP_JOB_ID"], job.id.to_string());
    let url = &env["MYSIMBDP_COREDMS_URL"];
    assert!(url.starts_with(&format!("postgres://{a_db}:")) && url.ends_with(&format!("/{a_db}")), "{url}");
    let admin_password = pg_url().split(':').nth(2).unwrap().split('@').next().unwrap().to_owned();
    assert!(!url.contains(&admin_password), "the platform's admin password must not reach apps");
    assert!(!url.contains(&b_db));
    // The sandbox's own paths: nothing of the host's layout.
    assert_eq!(env["HOME"], "/work");
    assert_eq!(env["MYSIMBDP_INPUT_FILE"], "/input/x.csv");
    assert_eq!(env["MYSIMBDP_RESULT_FILE"], "/work/result.json");

    // A's credentials work on A's database...
    let mut own = PgConnection::connect(url).await.expect("own database");
    sqlx::raw_sql("create table t (_id text primary key, doc jsonb not null)").execute(&mut own).await.unwrap();
    // ...and reach neither B's database nor the platform store.
    for other in [b_db.as_str(), p.database.as_str()] {
        let err = PgConnection::connect(&with_database(url, other))
            .await
            .err()
            .unwrap_or_else(|| panic!("{a}'s login opened {other}"));
        assert!(err.to_string().contains("permission denied for database"), "{err}");
    }
    // B's credentials are not A's.
    let b_url = p.tenant_coredms_url(&b).await;
    assert_ne!(b_url.split('@').next(), url.split('@').next());
    let err = PgConnection::connect(&with_database(&b_url, &a_db)).await.expect_err("B cannot open A's database");
    assert!(err.to_string().contains("permission denied for database"), "{err}");
    p.cleanup().await;
}
