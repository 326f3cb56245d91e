//! Tenants' secrets over the API and the CLI: values go in and never come out, are sealed in the
//! store, and are one tenant's alone.

use sqlx::Connection;

use mysimbdp_e2e::{unique, TestPlatform};

const JSON: &str = "application/json";

fn agreement(tenant: &str) -> String {
    format!("version: 1\ntenant: {tenant}\nname: Secrets {tenant}\nsecrets:\n  max_secrets: 2\n  max_size: 1KiB\n")
}

fn value(v: &str) -> Option<(&'static str, Vec<u8>)> {
    Some((JSON, serde_json::to_vec(&serde_json::json!({ "value": v })).unwrap()))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_goes_in_sealed_never_comes_out_and_is_its_tenants_alone() {
    let (bank, thief) = (unique("bank"), unique("thief"));
    let mut p = TestPlatform::new(&[(&bank, agreement(&bank)), (&thief, agreement(&thief))]).await;
    p.start().await;
    let http = p.http();
    let (bank_token, thief_token) = (p.token(Some(&bank)), p.token(Some(&thief)));
    let url = "postgres://bank_cdc:s3cr3t-pw@db.bank.internal:5432/ledger";

    let put = http.call("PUT", &format!("/v1/tenants/{bank}/secrets/ledger-db"), Some(&bank_token), value(url)).await;
    assert_eq!(put.status, 200, "{}", put.text());
    assert_eq!(put.json()["name"], "ledger-db");
    assert_eq!(put.json()["size_bytes"], url.len());
    assert!(!put.text().contains("s3cr3t"), "the answer holds no value: {}", put.text());
    let list = http.get(&format!("/v1/tenants/{bank}/secrets"), &bank_token).await;
    assert_eq!(list.json().as_array().unwrap().len(), 1);
    assert!(!list.text().contains("s3cr3t"), "{}", list.text());
    let operator = http.get(&format!("/v1/tenants/{bank}/secrets"), &p.token(None)).await;
    assert!(!operator.text().contains("s3cr3t"), "not even to an operator: {}", operator.text());

    // In the store: ciphertext only.
    let mut store = sqlx::PgConnection::connect(&p.database_url).await.unwrap();
    let (cipher,): (Vec<u8>,) = sqlx::query_as("select ciphertext from tenant_secrets where tenant = $1")
        .bind(&bank)
        .fetch_one(&mut store)
        .await
        .unwrap();
    assert!(!cipher.windows(6).any(|w| w == b"s3cr3t"), "the value is sealed at rest");

    // Another tenant sees, writes and deletes nothing of bank's, and learns not even that it exists.
    for (method, body) in [("GET", None), ("PUT", value("postgres://evil")), ("DELETE", None)] {
        let path = if method == "GET" {
            format!("/v1/tenants/{bank}/secrets")
        } else {
            format!("/v1/tenants/{bank}/secrets/ledger-db")
        };
        let r = http.call(method, &path, Some(&thief_token), body).await;
        assert_eq!(r.problem(404), format!("there is no tenant `{bank}`"), "{method} {path}");
    }
    let theirs = http.get(&format!("/v1/tenants/{thief}/secrets"), &thief_token).await;
    assert_eq!(theirs.json(), serde_json::json!([]));
    // A row moved to another tenant in the store does not open for it (checked in `secrets`' unit
    // tests); a secret of the same name is the other tenant's own.
    let same =
        http.call("PUT", &format!("/v1/tenants/{thief}/secrets/ledger-db"), Some(&thief_token), value("x")).await;
    assert_eq!(same.status, 200);
    let (n,): (i64,) = sqlx::query_as("select count(*) from tenant_secrets where name = 'ledger-db' and tenant = $1")
        .bind(&bank)
        .fetch_one(&mut store)
        .await
        .unwrap();
    assert_eq!(n, 1);

    // Bad requests: each named, nothing stored.
    let big = "x".repeat(1025);
    let r = http.call("PUT", &format!("/v1/tenants/{bank}/secrets/big"), Some(&bank_token), value(&big)).await;
    assert_eq!(r.problem(413), "the value is 1025 bytes, over the agreement's secrets.max_size of 1KiB");
    let r = http.call("PUT", &format!("/v1/tenants/{bank}/secrets/..%2Fx"), Some(&bank_token), value("v")).await;
    assert_eq!(r.problem(422), "`../x` is not a valid secret name (1-64 characters of a-z, 0-9, `.`, `_`, `-`)");
    let r = http.call("PUT", &format!("/v1/tenants/{bank}/secrets/two"), Some(&bank_token), value("v")).await;
    assert_eq!(r.status, 200);
    let r = http.call("PUT", &format!("/v1/tenants/{bank}/secrets/three"), Some(&bank_token), value("v")).await;
    assert_eq!(r.problem(409), format!("tenant `{bank}` has 2 secrets, the agreement's max_secrets; delete one first"));
    let r = http.call("PUT", &format!("/v1/tenants/{bank}/secrets/two"), Some(&bank_token), value("replaced")).await;
    assert_eq!(r.status, 200, "replacing one is not one more");
    let r = http
        .call(
            "PUT",
            &format!("/v1/tenants/{bank}/secrets/two"),
            Some(&bank_token),
            Some((JSON, b"{\"value\": 1}".to_vec())),
        )
        .await;
    assert_eq!(
        r.problem(422),
        "the JSON body does not fit: value: invalid type: integer `1`, expected a string at line 1 column 11"
    );

    // The CLI: the value from a file, never on the command line.
    let file = p.dir.path().join("value");
    std::fs::write(&file, "postgres://rotated\n").unwrap();
    let out = p.cli(&["--tenant", &bank, "secrets", "put", "ledger-db", "--from-file", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("stored secret ledger-db"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = p.cli(&["--tenant", &bank, "secrets", "list"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("ledger-db") && listed.contains("two") && !listed.contains("rotated"), "{listed}");
    let out = p.cli(&["--tenant", &bank, "secrets", "delete", "two"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r = http.call("DELETE", &format!("/v1/tenants/{bank}/secrets/two"), Some(&bank_token), None).await;
    assert_eq!(r.problem(404), format!("tenant `{bank}` has no secret `two`"));
    p.cleanup().await;
}
