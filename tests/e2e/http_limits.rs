//! The API under clients that hold it: a slowloris flood (headers a byte at a time) is cut off and does
//! not stop other clients; one tenant's stalled uploads take at most its own share of requests.

use std::time::Duration;

use mysimbdp::api::concurrency::PER_TENANT;
use mysimbdp::api::connections::HEADER_TIMEOUT;
use mysimbdp_e2e::{agreement, eventually, unique, TestPlatform};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BATCH: &str = "  routes: [{files: \"*.csv\", app: none, timeout: 1m, memory: 256MiB}]\n  formats: [csv]\n  max_file_size: 1MiB\n  max_files_per_hour: 1000\n  max_bytes_per_day: 1GiB\n  max_concurrent_jobs: 1";

fn api_addr(p: &TestPlatform) -> String {
    p.api_url().trim_start_matches("http://").to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slowloris_flood_is_cut_off_and_other_clients_are_served_meanwhile() {
    let t = unique("loris");
    let mut p = TestPlatform::new(&[(&t, agreement(&t, BATCH))]).await;
    p.start().await;
    let addr = api_addr(&p);

    // 300 connections that each send a request line and then one header byte every 300 ms.
    const SLOW: usize = 300;
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        let mut c = TcpStream::connect(&addr).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        slow.push(c);
    }
    let trickle = tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let mut open = slow;
        while started.elapsed() < HEADER_TIMEOUT + Duration::from_secs(3) {
            for c in &mut open {
                let _ = c.write_all(b"X").await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Every one of them was answered 408 or closed by the server: none is still waiting.
        let mut cut = 0;
        for mut c in open {
            let mut buf = Vec::new();
            if tokio::time::timeout(Duration::from_secs(2), c.read_to_end(&mut buf)).await.is_ok() {
                cut += 1;
            }
        }
        cut
    });

    // Meanwhile other clients are served as usual.
    let (http, token) = (p.http(), p.token(Some(&t)));
    for _ in 0..20 {
        let r = tokio::time::timeout(Duration::from_secs(5), http.get(&format!("/v1/tenants/{t}"), &token))
            .await
            .expect("served while the flood holds its connections");
        assert_eq!(r.status, 200, "{}", r.text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(trickle.await.unwrap(), SLOW, "every slow connection was cut off after the header timeout");
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_tenants_stalled_uploads_take_only_its_own_share_of_requests() {
    let (a, b) = (unique("greedy"), unique("patient"));
    let mut p = TestPlatform::new(&[(&a, agreement(&a, BATCH)), (&b, agreement(&b, BATCH))]).await;
    p.start().await;
    let addr = api_addr(&p);
    let (token_a, token_b) = (p.token(Some(&a)), p.token(Some(&b)));

    // As many uploads as a tenant may have in progress, each sending a few bytes of 100,000.
    let mut stalled = Vec::new();
    for i in 0..PER_TENANT {
        let mut c = TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "PUT /v1/tenants/{a}/staging/f{i}.csv HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token_a}\r\nContent-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\na,b\n"
        );
        c.write_all(head.as_bytes()).await.unwrap();
        stalled.push(c);
    }
    let http = p.http();
    let path_a = format!("/v1/tenants/{a}");
    // Each upload holding its slot writes a hidden `.part` file: wait for all 64 before asking anything
    // as the tenant (a request sent meanwhile would hold a slot itself, and an upload would be the one
    // refused). Within the uploads' 30 s grace, after which the platform gives them up.
    let staging = p.staging_dir.join(&a);
    let parts = || {
        std::fs::read_dir(&staging).map_or(0, |d| {
            d.filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().ends_with(".part")).count()
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(25);
    while parts() < PER_TENANT {
        if std::time::Instant::now() > deadline {
            // Fewer than 64 held their slot: say what the server answered the ones that ended.
            let mut answered = Vec::new();
            for (i, c) in stalled.iter_mut().enumerate() {
                let mut buf = [0u8; 200];
                if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(20), c.read(&mut buf)).await {
                    answered.push(format!("upload {i}: {:?}", String::from_utf8_lossy(&buf[..n])));
                }
            }
            panic!("{} of {PER_TENANT} uploads under way; answered early:\n{}", parts(), answered.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = http.get(&path_a, &token_a).await;
    assert!(r.problem(429).contains(&format!("{PER_TENANT} requests in progress")), "{}", r.text());
    // Another tenant and the operator are served.
    assert_eq!(http.get(&format!("/v1/tenants/{b}"), &token_b).await.status, 200);
    assert_eq!(http.get("/v1/tenants", &p.token(None)).await.status, 200);

    // Once the uploads are gone, the tenant is served again, and nothing half-written is left.
    drop(stalled);
    eventually(Duration::from_secs(10), "the tenant served again", async || {
        http.get(&path_a, &token_a).await.status == 200
    })
    .await;
    // One freed slot serves the tenant; the other 63 uploads end as their connections' closes reach
    // the server, each removing its half-written file.
    let staging = p.staging_dir.join(&a);
    eventually(Duration::from_secs(10), "no half-written upload left", async || {
        std::fs::read_dir(&staging).unwrap().next().is_none()
    })
    .await;
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_slower_than_the_minimum_rate_is_given_up_and_leaves_nothing() {
    let t = unique("trickle");
    let mut p = TestPlatform::new(&[(&t, agreement(&t, BATCH))]).await;
    p.min_upload_rate = mysimbdp::api::upload::MinRate { bytes_per_s: 4096.0, grace: Duration::from_secs(1) };
    p.start().await;
    let token = p.token(Some(&t));

    // Bytes keep coming (never idle), but far slower than 4 KiB/s.
    let mut c = TcpStream::connect(api_addr(&p)).await.unwrap();
    let head = format!(
        "PUT /v1/tenants/{t}/staging/slow.csv HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: text/csv\r\nContent-Length: 100000\r\n\r\na,b\n"
    );
    c.write_all(head.as_bytes()).await.unwrap();
    let (mut reader, mut writer) = c.into_split();
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            if writer.write_all(b"1").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(8), async {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&answer).contains("}") {
            let n = reader.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    trickle.abort();
    assert!(read.is_ok(), "the slow upload was answered: {}", String::from_utf8_lossy(&answer));
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("slower than the minimum of 4 KiB/s"), "{answer}");
    let left: Vec<_> = std::fs::read_dir(p.staging_dir.join(&t)).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "nothing half-written is left: {left:?}");

    // A client sending at its own pace is not bothered.
    let body: Vec<u8> = (0..20_000).flat_map(|i| format!("{i},x\n").into_bytes()).collect();
    let r = p
        .http()
        .call("PUT", &format!("/v1/tenants/{t}/staging/fast.csv"), Some(&token), Some(("text/csv", body)))
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    p.cleanup().await;
}
