//! The coredms contract, run against every backend that is reachable: PostgreSQL always, MongoDB when
//! `MYSIMBDP_TEST_MONGODB_URL` points at one (no MongoDB server can be installed on these machines;
//! the test says so plainly when it skips it).

use mysimbdp::coredms::CoreDms as Provisioner;
use mysimbdp_e2e::{pg_url, unique, with_database, TestPlatform};
use mysimbdp_sdk::{CoreDms, Doc, PipelinedWriter};

fn docs(range: std::ops::Range<u32>) -> Vec<Doc> {
    range
        .map(|i| Doc {
            id: format!("doc-{i}"),
            json: format!("{{\"n\": {i}, \"nested\": {{\"s\": \"x\\\\y\\ttab\"}}}}"),
        })
        .collect()
}

/// Provision two tenants on `admin_url`, write idempotently as one, and check the other cannot read it.
async fn conformance(admin_url: &str) {
    let (a, b) = (unique("conf-a"), unique("conf-b"));
    let p = TestPlatform::new(&[]).await;
    let provisioner = Provisioner::connect(admin_url).await.expect("connect coredms admin");
    let (ta, tb) = (p.tenant(&a), p.tenant(&b));
    let view_a = provisioner.provision(&p.db, &ta).await.expect("provision a");
    let again = provisioner.provision(&p.db, &ta).await.expect("provisioning twice is fine");
    assert_eq!(view_a.url, again.url);
    let view_b = provisioner.provision(&p.db, &tb).await.expect("provision b");

    let (url, db) = (view_a.url.clone(), view_a.database.clone());
    let written = tokio::task::spawn_blocking(move || {
        let mut c = CoreDms::connect(&url, &db).unwrap();
        c.ensure_collection("things").unwrap();
        let first = c.insert_batch("things", &docs(0..100)).unwrap();
        // Overlapping re-run (as after a crash) and duplicates inside one batch: one copy each.
        let second = c.insert_batch("things", &docs(50..150)).unwrap();
        let mut dup = docs(150..160);
        dup.extend(docs(150..160));
        let third = c.insert_batch("things", &dup).unwrap();
        let fourth = c.insert_batch("things", &docs(160..170)).unwrap(); // back on the fast path
        (first, second, third, fourth, c.count("things").unwrap())
    })
    .await
    .unwrap();
    assert_eq!(written, (100, 50, 10, 10, 170));

    // Several writer connections sharing one queue (what large files use), over ids partly present.
    let (url, db) = (view_a.url.clone(), view_a.database.clone());
    let (stats, count) = tokio::task::spawn_blocking(move || {
        let connections = (0..2).map(|_| CoreDms::connect(&url, &db).unwrap()).collect();
        let mut writer = PipelinedWriter::start_many(connections, "things").unwrap();
        for start in (0..5000).step_by(500) {
            writer.send(docs(start..start + 500)).unwrap();
        }
        let stats = writer.finish().unwrap();
        (stats, CoreDms::connect(&url, &db).unwrap().count("things").unwrap())
    })
    .await
    .unwrap();
    assert_eq!((stats.sent, stats.inserted, count), (5000, 5000 - 170, 5000));

    let (url_b, db_a) = (view_b.url.clone(), view_a.database.clone());
    let cross = tokio::task::spawn_blocking(move || {
        let target = if url_b.starts_with("mongodb") {
            url_b.replace(
                &format!("/{}?", url_b.rsplit('/').next().unwrap().split('?').next().unwrap()),
                &format!("/{db_a}?"),
            )
        } else {
            with_database(&url_b, &db_a)
        };
        CoreDms::connect(&target, &db_a).and_then(|mut c| c.count("things"))
    })
    .await
    .unwrap();
    assert!(cross.is_err(), "tenant b read tenant a's documents");

    provisioner.drop_tenant(&ta).await.unwrap();
    provisioner.drop_tenant(&tb).await.unwrap();
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_backend_conforms() {
    conformance(&pg_url()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mongodb_backend_conforms_when_reachable() {
    match std::env::var("MYSIMBDP_TEST_MONGODB_URL") {
        Ok(url) => conformance(&url).await,
        Err(_) => eprintln!("SKIPPED: MongoDB coredms conformance (MYSIMBDP_TEST_MONGODB_URL is not set; no MongoDB server is installable here)"),
    }
}

/// A tenant's login is provisioned again and given its agreement's limits from several places at once
/// when the platform starts (the tenant manager, each declared connector's instance). Each must
/// succeed: PostgreSQL refuses two concurrent changes of one role with "tuple concurrently updated".
#[tokio::test(flavor = "multi_thread")]
async fn one_tenant_provisioned_and_limited_from_many_places_at_once_never_fails() {
    let p = TestPlatform::new(&[]).await;
    let provisioner = std::sync::Arc::new(Provisioner::connect(&pg_url()).await.expect("connect coredms admin"));
    let tenant = p.tenant(&unique("race"));
    let limits = mysimbdp::agreement::CoreDmsAgreement::default();
    // The login exists before it is limited (the tenant manager provisions, then limits).
    provisioner.provision(&p.db, &tenant).await.expect("provision");
    for round in 0..5 {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..8 {
            let (provisioner, db, tenant, limits) = (provisioner.clone(), p.db.clone(), tenant.clone(), limits.clone());
            tasks.spawn(async move {
                let outcome = if i % 2 == 0 {
                    provisioner.provision(&db, &tenant).await.map(drop)
                } else {
                    provisioner.limit(&tenant, &limits).await
                };
                outcome.map_err(|e| format!("round {round}, task {i}: {e}"))
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap().unwrap();
        }
    }
    provisioner.drop_tenant(&tenant).await.unwrap();
    p.cleanup().await;
}
