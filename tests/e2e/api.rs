//! The control plane over real HTTP: a tenant with nothing but a token does everything; tenants never
//! see each other; bad input gets a precise problem document and changes nothing.

use mysimbdp::domain::JobState;
use std::time::Duration;

use mysimbdp_e2e::{agreement, bin, eventually, gen_data, tar_gz, unique, Member, Reply, TestPlatform};

const ORDERS_BATCH: &str = "  routes: [{files: \"*.jsonl\", app: orders, timeout: 1m, memory: 1GiB}]\n  formats: [jsonl]\n  max_file_size: 1MiB\n  max_files_per_hour: 100\n  max_bytes_per_day: 100MiB\n  max_concurrent_jobs: 2";

fn orders_archive() -> Vec<u8> {
    let exe = std::fs::read(bin("orders-jsonl")).unwrap();
    let manifest = b"name: orders\nkind: batch\nentrypoint: bin/orders-jsonl\nversion: 1.0.0\n";
    tar_gz(&[Member::File("app.yaml", manifest, 0o644), Member::File("bin/orders-jsonl", &exe, 0o755)])
}

const GZIP: &str = "application/gzip";
const BYTES: &str = "application/octet-stream";

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_with_only_a_token_uploads_its_app_and_files_and_reads_its_log_and_stats() {
    let food = unique("food");
    let mut p = TestPlatform::new(&[(&food, agreement(&food, ORDERS_BATCH))]).await;
    p.start().await;

    // The operator mints the tenant's token with the CLI; from here on only HTTP.
    let out = std::process::Command::new(bin("mysimbdp"))
        .args(["token", "--role", "tenant", "--tenant", &food, "--ttl", "10m", "--sub", "food-ci"])
        .env("MYSIMBDP_JWT_SECRET", &p.jwt_secret)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let http = p.http();

    let me = http.get("/v1/whoami", &token).await.json();
    assert_eq!((me["role"].as_str(), me["tenant"].as_str()), (Some("tenant"), Some(food.as_str())));

    let up = http.call("POST", &format!("/v1/tenants/{food}/apps"), Some(&token), Some((GZIP, orders_archive()))).await;
    assert_eq!(up.status, 201, "{}", up.text());
    assert_eq!((up.json()["name"].as_str(), up.json()["version"].as_i64()), (Some("orders"), Some(1)));
    let apps = http.get(&format!("/v1/tenants/{food}/apps"), &token).await.json();
    assert_eq!(apps[0]["name"], "orders");

    let data = gen_data("orders", 600, 20, 5);
    let put = http
        .call("PUT", &format!("/v1/tenants/{food}/staging/orders-1.jsonl"), Some(&token), Some((BYTES, data.clone())))
        .await;
    assert_eq!(put.status, 202, "{}", put.text());
    assert_eq!(put.json()["size_bytes"].as_u64(), Some(data.len() as u64));
    let follow = put.json()["ingestions"].as_str().unwrap().to_owned();

    let mut job = serde_json::Value::Null;
    eventually(Duration::from_secs(60), "the uploaded file ingested", async || {
        let page = http.get(&follow, &token).await.json();
        job = page["items"].get(0).cloned().unwrap_or_default();
        job["state"] == "succeeded"
    })
    .await;
    assert_eq!((job["records_ingested"].as_i64(), job["records_rejected"].as_i64()), (Some(570), Some(30)), "{job}");
    let id = job["id"].as_str().unwrap();
    let detail = http.get(&format!("/v1/tenants/{food}/ingestions/{id}"), &token).await.json();
    let states: Vec<&str> = detail["events"].as_array().unwrap().iter().map(|e| e["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["detected", "queued", "running", "succeeded"]);
    let log = http.get(&format!("/v1/tenants/{food}/ingestions/{id}/log"), &token).await;
    assert!(log.content_type.starts_with("text/plain"), "{log:?}");
    assert!(log.text().contains("rejected"), "{}", log.text());

    let stats = http.get(&format!("/v1/tenants/{food}/stats"), &token).await.json();
    let totals = &stats["totals"][0];
    assert_eq!((totals["files"].as_i64(), totals["succeeded"].as_i64()), (Some(1), Some(1)), "{stats}");
    assert_eq!((totals["records_ingested"].as_i64(), totals["records_rejected"].as_i64()), (Some(570), Some(30)));
    assert!(totals["run_ms_p95"].as_f64().is_some() && totals["throughput_bytes_per_s"].as_f64().is_some(), "{stats}");
    assert_eq!(stats["by_day"].as_array().unwrap().len(), 1);

    assert_eq!(p.count_docs(&food, "orders").await, 570);

    // Repeat reads are answered from the page cache until any of the tenant's jobs changes.
    let list = format!("/v1/tenants/{food}/ingestions");
    let first = http.get(&list, &token).await;
    assert_eq!(http.get(&list, &token).await, first);
    p.drop_file(&food, "orders-2.jsonl", &gen_data("orders", 10, 0, 6));
    p.wait_final(&food, "orders-2.jsonl").await;
    let now = http.get(&list, &token).await.json();
    assert_eq!(now["items"].as_array().unwrap().len(), 2, "{now}");
    assert_eq!(now["items"][0]["file_name"], "orders-2.jsonl");

    // Operators see the platform: health, readiness, metrics with this tenant's outcome, platform stats.
    let op = p.token(None);
    assert_eq!(http.call("GET", "/healthz", None, None).await.status, 200);
    assert_eq!(http.call("GET", "/readyz", None, None).await.json()["status"], "ready");
    let metrics = http.get("/metrics", &op).await.text();
    let line = format!("mysimbdp_batch_jobs_finished_total{{tenant=\"{food}\",outcome=\"succeeded\",reason=\"\"}} 2");
    assert!(metrics.contains(&line), "{metrics}");
    assert_eq!(http.get("/metrics", &token).await.status, 403);
    let all = http.get("/v1/stats", &op).await.json();
    assert!(all["totals"].as_array().unwrap().iter().any(|t| t["tenant"] == food.as_str()));
    let doc = http.call("GET", "/openapi.json", None, None).await.json();
    assert!(doc["paths"]["/v1/tenants/{tenant}/ingestions"]["get"].is_object());
    p.cleanup().await;
}

/// Tenant B's token on tenant A's resources: every endpoint and method answers exactly as for a tenant
/// that does not exist, and nothing of A's changes.
#[tokio::test(flavor = "multi_thread")]
async fn another_tenants_resources_look_absent_and_stay_unchanged() {
    let (a, b) = (unique("ta"), unique("tb"));
    let mut p = TestPlatform::new(&[(&a, agreement(&a, ORDERS_BATCH)), (&b, agreement(&b, ORDERS_BATCH))]).await;
    p.start().await;
    let http = p.http();
    let (ta, tb) = (p.token(Some(&a)), p.token(Some(&b)));
    // A has an app, a failed job (its app crashes) and a file waiting in staging (no route takes `.csv`).
    let crash = b"#!/bin/sh\necho crashing\nexit 3\n".to_vec();
    let up = http.call("POST", &format!("/v1/tenants/{a}/apps?name=orders"), Some(&ta), Some((BYTES, crash))).await;
    assert_eq!(up.status, 201, "{}", up.text());
    let put = http
        .call("PUT", &format!("/v1/tenants/{a}/staging/o.jsonl"), Some(&ta), Some((BYTES, gen_data("orders", 5, 0, 1))))
        .await;
    assert_eq!(put.status, 202, "{}", put.text());
    let failed = p.wait_final(&a, "o.jsonl").await;
    assert_eq!(failed.state, JobState::Failed, "{failed:?}");
    p.wait_moved(&failed).await;
    std::fs::write(p.staging_dir.join(&a).join("waiting.csv"), b"x").unwrap();
    let id = failed.id.to_string();

    let snapshot = async || {
        let s = [
            http.get(&format!("/v1/tenants/{a}/apps/orders"), &ta).await.text(),
            http.get(&format!("/v1/tenants/{a}/staging"), &ta).await.text(),
            http.get(&format!("/v1/tenants/{a}/ingestions"), &ta).await.text(),
            http.get(&format!("/v1/tenants/{a}/ingestions/{id}"), &ta).await.text(),
        ];
        s.join("\n")
    };
    let before = snapshot().await;

    let nobody = unique("nobody");
    let small = || Some((BYTES, b"data".to_vec()));
    let json = || Some(("application/json", br#"{"allow_duplicate": true}"#.to_vec()));
    type Body = Option<(&'static str, Vec<u8>)>;
    let requests: Vec<(&str, String, Body)> = vec![
        ("GET", "/v1/tenants/{t}".into(), None),
        ("GET", "/v1/tenants/{t}/apps".into(), None),
        ("POST", "/v1/tenants/{t}/apps?name=orders".into(), small()),
        ("GET", "/v1/tenants/{t}/apps/orders".into(), None),
        ("DELETE", "/v1/tenants/{t}/apps/orders".into(), None),
        ("GET", "/v1/tenants/{t}/staging".into(), None),
        ("PUT", "/v1/tenants/{t}/staging/intruder.jsonl".into(), small()),
        ("GET", "/v1/tenants/{t}/ingestions".into(), None),
        ("GET", format!("/v1/tenants/{{t}}/ingestions/{id}"), None),
        ("GET", format!("/v1/tenants/{{t}}/ingestions/{id}/log"), None),
        ("POST", format!("/v1/tenants/{{t}}/ingestions/{id}/retry"), json()),
        ("GET", "/v1/tenants/{t}/stats".into(), None),
    ];
    for (method, path, body) in requests {
        let on_a = http.call(method, &path.replace("{t}", &a), Some(&tb), body.clone()).await;
        let on_nobody = http.call(method, &path.replace("{t}", &nobody), Some(&tb), body).await;
        assert_eq!(on_a.status, 404, "{method} {path}: {}", on_a.text());
        assert_eq!(on_a.text().replace(&a, "T"), on_nobody.text().replace(&nobody, "T"), "{method} {path}");
        assert_eq!(on_a.content_type, on_nobody.content_type);
    }
    // A's job id under B's own tenant is simply not B's.
    let r = http.get(&format!("/v1/tenants/{b}/ingestions/{id}"), &tb).await;
    assert!(r.problem(404).contains("has no ingestion"));
    // B's listings hold nothing of A's; the platform-wide view is for operators.
    let own = http.get(&format!("/v1/tenants/{b}/ingestions"), &tb).await.json();
    assert_eq!(own["items"].as_array().unwrap().len(), 0);
    let tenants = http.get("/v1/tenants", &tb).await.json();
    assert_eq!(tenants.as_array().unwrap().len(), 1, "{tenants}");
    assert_eq!(tenants[0]["tenant"], b.as_str());
    assert!(http.get("/v1/stats", &tb).await.problem(403).contains("operator"));

    assert_eq!(snapshot().await, before, "B's requests changed A's resources");
    assert!(!p.staging_dir.join(&a).join("intruder.jsonl").exists());
    assert!(!p.staging_dir.join(&b).join("intruder.jsonl").exists());
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_precise_problem_and_changes_nothing() {
    let t = unique("bad");
    let small_apps = agreement(&t, ORDERS_BATCH).replace("max_app_size: 1GiB", "max_app_size: 64KiB");
    let mut p = TestPlatform::new(&[(&t, small_apps)]).await;
    p.start().await;
    let http = p.http();
    let tok = p.token(Some(&t));
    let apps = format!("/v1/tenants/{t}/apps?name=orders");
    let upload = async |bytes: Vec<u8>| http.call("POST", &apps, Some(&tok), Some((GZIP, bytes))).await;
    let manifest = b"name: orders\nkind: batch\nentrypoint: run.sh\nversion: '1'\n".as_slice();
    let script = b"#!/bin/sh\nexit 0\n".as_slice();

    // Apps.
    // Refused for its Content-Length before a byte is read; the client, still sending, must get the
    // answer rather than a reset connection (again and again: it was a race).
    for _ in 0..20 {
        let d = upload(vec![0u8; 1 << 20]).await.problem(413);
        assert!(d.contains("max_app_size of 64KiB"), "{d}");
    }
    let d = upload(tar_gz(&[
        Member::File("app.yaml", manifest, 0o644),
        Member::File("run.sh", script, 0o755),
        Member::File("../evil.sh", script, 0o755),
    ]))
    .await
    .problem(422);
    assert!(d.contains("`../evil.sh` contains `..`"), "{d}");
    let d = upload(tar_gz(&[Member::File("/tmp/evil.sh", script, 0o755)])).await.problem(422);
    assert!(d.contains("absolute path"), "{d}");
    let d = upload(tar_gz(&[Member::File("app.yaml", manifest, 0o644), Member::Symlink("run.sh", "/etc/passwd")]))
        .await
        .problem(422);
    assert!(d.contains("`run.sh` links to `/etc/passwd`, outside the app folder"), "{d}");
    let zeros = vec![0u8; 4 << 20];
    let bomb = tar_gz(&[Member::File("app.yaml", manifest, 0o644), Member::File("run.sh", &zeros, 0o755)]);
    assert!(bomb.len() < 64 << 10, "the bomb itself is small: {}", bomb.len());
    let d = upload(bomb).await.problem(413);
    assert!(d.contains("unpacked"), "{d}");
    let d = upload(tar_gz(&[Member::File("run.sh", script, 0o755)])).await.problem(422);
    assert!(d.contains("app.yaml: missing"), "{d}");
    let d = upload(tar_gz(&[
        Member::File("app.yaml", b"name: orders\nkind: sideways\n", 0o644),
        Member::File("run.sh", script, 0o755),
    ]))
    .await
    .problem(422);
    assert!(d.contains("app.yaml") && d.contains("kind"), "{d}");
    let d = http
        .call("POST", &format!("/v1/tenants/{t}/apps?name=Bad/Name"), Some(&tok), Some((BYTES, script.to_vec())))
        .await
        .problem(400);
    assert!(d.contains("not a valid app name"), "{d}");
    let apps_now = http.get(&format!("/v1/tenants/{t}/apps"), &tok).await.json();
    assert_eq!(apps_now.as_array().unwrap().len(), 0, "nothing installed: {apps_now}");

    // Staging names.
    for (name, expect) in [
        ("a%2Fb.jsonl", "path separator"),
        (".hidden.jsonl", "hidden or temporary"),
        ("x.jsonl.part", "hidden or temporary"),
        ("", "empty"),
        (&"n".repeat(300), "at most 255"),
    ] {
        let r = http
            .call("PUT", &format!("/v1/tenants/{t}/staging/{name}"), Some(&tok), Some((BYTES, b"{}".to_vec())))
            .await;
        assert_eq!(r.status, 400, "{name}: {}", r.text());
        assert!(r.problem(400).contains(expect), "{name}: {}", r.text());
    }
    // URL libraries fold `..` away before sending; a hostile client sends it as it is.
    let raw = raw_put(&p.api_url(), &format!("/v1/tenants/{t}/staging/%2E%2E"), &tok).await;
    assert!(raw.starts_with("HTTP/1.1 400") && raw.contains("is not a file name"), "{raw}");
    let big = vec![b'x'; (1 << 20) + 1];
    let d = http
        .call("PUT", &format!("/v1/tenants/{t}/staging/big.jsonl"), Some(&tok), Some((BYTES, big)))
        .await
        .problem(413);
    assert!(d.contains("max_file_size of 1MiB"), "{d}");
    let staged: Vec<_> = std::fs::read_dir(p.staging_dir.join(&t)).unwrap().collect();
    assert!(staged.is_empty(), "nothing written to staging: {staged:?}");

    // Query strings and JSON bodies.
    let ingestions = format!("/v1/tenants/{t}/ingestions");
    let d = http.get(&format!("{ingestions}?status=sideways"), &tok).await.problem(400);
    assert!(d.contains("unknown variant `sideways`") && d.contains("succeeded"), "{d}");
    let d = http.get(&format!("{ingestions}?limit=0"), &tok).await.problem(400);
    assert!(d.contains("between 1 and 1000"), "{d}");
    let d = http.get(&format!("{ingestions}?since=yesterday"), &tok).await.problem(400);
    assert!(d.contains("since"), "{d}");
    let d = http.get(&format!("{ingestions}?cursor=bm9wZQ"), &tok).await.problem(400);
    assert!(d.contains("cursor"), "{d}");
    let d = http.get(&format!("{ingestions}?colour=red"), &tok).await.problem(400);
    assert!(d.contains("unknown field `colour`"), "{d}");
    // A real failed job to aim retries at.
    let crash = http
        .call(
            "POST",
            &format!("/v1/tenants/{t}/apps?name=orders"),
            Some(&tok),
            Some((BYTES, b"#!/bin/sh\nexit 1\n".to_vec())),
        )
        .await;
    assert_eq!(crash.status, 201, "{}", crash.text());
    p.drop_file(&t, "f.jsonl", b"{}\n");
    let failed = p.wait_final(&t, "f.jsonl").await;
    p.wait_moved(&failed).await;
    let retry = format!("/v1/tenants/{t}/ingestions/{}/retry", failed.id);
    let d = http
        .call("POST", &retry, Some(&tok), Some(("application/json", b"{\"allow_duplicate\": tru".to_vec())))
        .await
        .problem(400);
    assert!(d.contains("not valid JSON"), "{d}");
    let d = http
        .call("POST", &retry, Some(&tok), Some(("application/json", b"{\"allow_duplicates\": true}".to_vec())))
        .await
        .problem(422);
    assert!(d.contains("unknown field `allow_duplicates`"), "{d}");
    let d = http.call("POST", &retry, Some(&tok), Some(("text/plain", b"please".to_vec()))).await.problem(415);
    assert!(d.contains("application/json"), "{d}");
    let after = p.wait_final(&t, "f.jsonl").await;
    assert_eq!((after.state.as_str(), after.attempts), ("failed", failed.attempts), "no retry happened");

    // Tokens.
    let path = format!("/v1/tenants/{t}");
    let mut forged = tok.clone();
    forged.pop();
    forged.push(if tok.ends_with('A') { 'B' } else { 'A' });
    let cases: Vec<(String, &str)> = vec![
        (forged, "signature"),
        (expired(&p.jwt_secret, &t), "expired"),
        (alg_none(&t), "HS256"),
        ("not-a-jwt".into(), "not a valid JWT"),
    ];
    for (token, expect) in cases {
        let d = http.get(&path, &token).await.problem(401);
        assert!(d.contains(expect), "{expect}: {d}");
    }
    assert!(http.call("GET", &path, None, None).await.problem(401).contains("Authorization"));
    let r: Reply = http.call("GET", "/v1/nowhere", Some(&tok), None).await;
    assert!(r.problem(404).contains("no such endpoint"));
    p.cleanup().await;
}

fn b64(v: serde_json::Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

fn expired(secret: &str, tenant: &str) -> String {
    use base64::Engine;
    use hmac::Mac;
    let header = b64(serde_json::json!({"alg": "HS256", "typ": "JWT"}));
    let claims = b64(serde_json::json!({"role": "tenant", "tenant": tenant, "exp": 1_600_000_000}));
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{header}.{claims}").as_bytes());
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{header}.{claims}.{sig}")
}

fn alg_none(tenant: &str) -> String {
    let header = b64(serde_json::json!({"alg": "none", "typ": "JWT"}));
    let claims = b64(serde_json::json!({"role": "tenant", "tenant": tenant, "exp": 4_000_000_000u64}));
    format!("{header}.{claims}.")
}

async fn raw_put(base: &str, path: &str, token: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(base.trim_start_matches("http://")).await.unwrap();
    let req = format!(
        "PUT {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Readiness asks the platform store and the Kafka-API broker for real, and says which one failed.
#[tokio::test(flavor = "multi_thread")]
async fn readiness_checks_the_store_and_the_broker() {
    let t = unique("ready");
    let mut p = TestPlatform::new(&[(&t, agreement(&t, ORDERS_BATCH))]).await;
    p.start().await;
    let ready = p.http().call("GET", "/readyz", None, None).await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    let checks = ready.json()["checks"].clone();
    assert_eq!(checks[0]["name"], "platform_store");
    assert_eq!(checks[1]["name"], "broker");
    assert!(checks[1]["detail"].as_str().unwrap().contains("answered ApiVersions"), "{checks}");
    p.stop().await;

    // The same platform pointed at a port where no broker listens is not ready, and says why.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let mut config = p.config();
    config.kafka_brokers = Some(closed.clone());
    // Unconfined: a confined platform would close the port to tenants' uids for good (a firewall rule
    // for a broker that is not there); readiness is the same either way.
    config.sandbox = None;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let platform = mysimbdp::Platform::build(config, shutdown.clone()).await.unwrap();
    let http = mysimbdp_e2e::Http::new(format!("http://{}", platform.api_addr().unwrap()));
    let handle = tokio::spawn(platform.run_until_stopped());
    let not_ready = http.call("GET", "/readyz", None, None).await;
    assert_eq!(not_ready.status, 503, "{}", not_ready.text());
    let body = not_ready.json();
    assert_eq!((body["checks"][0]["ok"].as_bool(), body["checks"][1]["ok"].as_bool()), (Some(true), Some(false)));
    assert!(body["checks"][1]["detail"].as_str().unwrap().contains(&closed), "{body}");
    shutdown.cancel();
    handle.await.unwrap().unwrap();
    p.cleanup().await;
}
