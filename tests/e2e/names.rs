//! Names a tenant can give a file, down to what the file system allows: each file ends with exactly
//! one outcome, whatever its name, and the platform starts again afterwards.

use mysimbdp::domain::JobState;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use mysimbdp_e2e::{agreement, unique, TestPlatform};

const BATCH: &str = "  routes: [{files: \"*\", app: count, timeout: 1m, memory: 256MiB}]\n  formats: [csv]\n  max_file_size: 1MiB\n  max_files_per_hour: 100\n  max_bytes_per_day: 1GiB\n  max_concurrent_jobs: 2";

/// Drops `content` under the raw name `name`, written aside and renamed into place.
fn drop_raw(dir: &Path, name: &[u8], content: &[u8]) {
    let part = dir.join(".incoming.part");
    std::fs::write(&part, content).unwrap();
    std::fs::rename(&part, dir.join(OsStr::from_bytes(name))).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn long_undecodable_and_control_character_names_each_end_once_and_the_platform_restarts() {
    let t = unique("names");
    let mut p = TestPlatform::new(&[(&t, agreement(&t, BATCH))]).await;
    p.start().await;
    p.install_script(&t, "count", "wc -l < \"$1\"").await;
    let dir = p.staging_dir.join(&t);

    // The longest name the file system takes: 255 bytes. Ingested, and kept under its whole name.
    let long = format!("{}.csv", "n".repeat(251));
    drop_raw(&dir, long.as_bytes(), b"a\n1\n2\n");
    let job = p.wait_final(&t, &long).await;
    assert_eq!((job.state.as_str(), job.log.as_deref()), ("succeeded", Some("3\n")), "{job:?}");
    let kept = p.wait_moved(&job).await;
    assert_eq!(kept.file_name().unwrap().len(), 255, "{kept:?}");
    assert_eq!(kept.parent().unwrap().file_name().unwrap().to_str(), Some(job.id.to_string().as_str()));

    // Not UTF-8, and a newline: claimed and rejected with the reason, shown escaped, bytes kept.
    let cases: [(&[u8], &str, &str); 3] = [
        (b"bad\xffname.csv", "bad\\xffname.csv", "not UTF-8 (byte 0xff at offset 3)"),
        (b"two\nlines.csv", "two\\nlines.csv", "control character (U+000A at offset 3)"),
        (&[0xfe; 255], &"\\xfe".repeat(255), "not UTF-8 (byte 0xfe at offset 0)"),
    ];
    for (raw, _, _) in &cases {
        drop_raw(&dir, raw, b"a\n1\n");
    }
    for (raw, shown, why) in &cases {
        let job = p.wait_final(&t, shown).await;
        assert_eq!((job.state.as_str(), job.reason.map(|r| r.as_str())), ("rejected", Some("bad_name")), "{job:?}");
        assert!(job.detail.as_deref().unwrap().contains(why), "{job:?}");
        assert_eq!(job.raw_name(), *raw, "the name's bytes are kept");
        let quarantined = p.wait_moved(&job).await;
        assert_eq!(std::fs::read(&quarantined).unwrap(), b"a\n1\n", "the file itself is kept");
        let reason: serde_json::Value =
            serde_json::from_slice(&std::fs::read(mysimbdp::layout::reason_file(&quarantined)).unwrap()).unwrap();
        assert_eq!(reason["reason"], "bad_name", "{reason}");
        assert_eq!(p.jobs_for(&t, shown).await.len(), 1, "one outcome, not one per rescan");
    }
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "nothing left waiting in staging");

    // Over the API the same names are refused up front, each with what is wrong.
    let (http, token) = (p.http(), p.token(Some(&t)));
    let put = async |name: &str| {
        let path = format!("/v1/tenants/{t}/staging/{name}");
        http.call("PUT", &path, Some(&token), Some(("application/octet-stream", b"a\n1\n".to_vec()))).await
    };
    let r = put("two%0Alines.csv").await;
    assert!(r.problem(400).contains("control character (U+000A at offset 3)"), "{}", r.text());
    let r = put(&format!("{}.csv", "m".repeat(252))).await;
    assert!(r.problem(400).contains("256 bytes; at most 255"), "{}", r.text());
    let longest = format!("{}.csv", "u".repeat(251));
    assert_eq!(put(&longest).await.status, 202, "255 bytes fit");
    let job = p.wait_final(&t, &longest).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");

    // The platform starts again after all of it, and every file still has its one outcome.
    p.stop().await;
    p.start().await;
    let jobs = p.all_jobs(&t).await;
    assert_eq!(jobs.len(), 5, "{jobs:?}");
    assert!(jobs.iter().all(|j| j.state().is_final()), "{jobs:?}");
    p.cleanup().await;
}
